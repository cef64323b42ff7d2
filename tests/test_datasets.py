"""The training datasets: synthetic clips, the AVSBench layouts (S4, MS3, v2) on small fake
trees, WAV reading, corrected pre-label results as training data, and scoring predictions
(results files or PNG trees) against a ground-truth tree."""

from __future__ import annotations

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auralsam2_core.inference import rle
from auralsam2_core.training.datasets import (
    HELDOUT_SEED_BASE,
    AVSBenchMS3,
    AVSBenchS4,
    AVSBenchV2,
    CorrectedResultsDataset,
    SyntheticClipDataset,
    evaluate_predictions,
    read_wav,
)

SIZE = 96  # the demo model's input size


def test_synthetic_dataset_items():
    tiny_data = SyntheticClipDataset(4, image_size=SIZE, clip_len=3, seconds=1.0)
    a, b = tiny_data[1], tiny_data[1]
    assert a.frames.shape == (3, 3, SIZE, SIZE) and a.log_mel.shape == (3, 2, 96, 64)
    assert a.gt.shape == (3, SIZE, SIZE) and a.valid.all()
    assert torch.equal(a.frames, b.frames) and torch.equal(a.log_mel, b.log_mel)
    assert set(a.gt.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(IndexError):
        tiny_data[4]
    data = SyntheticClipDataset(40, image_size=64, clip_len=2, seconds=1.0)
    schedules = {data.clip(i)[0].schedule for i in range(40)}
    assert schedules == {"one", "silent", "mixed"}
    silent = next(i for i in range(40) if data.clip(i)[0].schedule == "silent")
    assert not data[silent].sounding.any()
    assert data.seed_base < HELDOUT_SEED_BASE


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _wav(path: Path, seconds: float = 5.0, channels: int = 2, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(x[:, None], channels, axis=1).tobytes())


def _frame(i: int) -> np.ndarray:
    img = np.zeros((24, 32, 3), np.uint8)
    img[..., 0] = (40 * i) % 256
    return img


def _mask(on: bool) -> np.ndarray:
    m = np.zeros((24, 32), np.uint8)
    if on:
        m[4:12, 8:20] = 255
    return m


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_avsbench_s4_layout(tmp_path):
    root = tmp_path / "Single-source"
    _csv(root / "s4_meta_data.csv", ["name", "a_obj", "category", "split"],
         [["vidA", "dog", "dog_barking", "train"], ["vidB", "x", "guitar", "test"]])
    base = root / "s4_data"
    for name, cat, split in (("vidA", "dog_barking", "train"), ("vidB", "guitar", "test")):
        for i in range(1, 6):
            _png(base / "visual_frames" / split / cat / name / f"{name}_{i}.png", _frame(i))
        for i in range(1, 2 if split == "train" else 6):
            _png(base / "gt_masks" / split / cat / name / f"{name}_{i}.png", _mask(True))
        _wav(base / "audio_wav" / split / cat / f"{name}.wav", channels=1)
    train_set = AVSBenchS4(root, "train", image_size=32)
    assert len(train_set) == 1
    s = train_set[0]
    assert s.name == "dog_barking/vidA"
    assert s.frames.shape == (5, 3, 32, 32) and s.log_mel.shape == (5, 2, 96, 64)
    assert s.valid.tolist() == [True, False, False, False, False]  # train: frame 1 only
    assert s.gt[0].sum() > 0 and s.gt[1:].sum() == 0
    assert torch.equal(s.log_mel[:, 0], s.log_mel[:, 1])  # mono duplicated
    test_set = AVSBenchS4(root, "test", image_size=32)
    assert test_set[0].valid.all()
    with pytest.raises(FileNotFoundError):
        AVSBenchS4(tmp_path / "nowhere")


def test_avsbench_ms3_layout(tmp_path):
    root = tmp_path / "Multi-sources"
    _csv(root / "ms3_meta_data.csv", ["video_id", "fps", "split"], [["m1", "1", "val"]])
    base = root / "ms3_data"
    for i in range(1, 6):
        _png(base / "visual_frames" / "m1" / f"m1.mp4_{i}.png", _frame(i))
        _png(base / "gt_masks" / "val" / "m1" / f"m1_{i}.png", _mask(i % 2 == 1))
    _wav(base / "audio_wav" / "val" / "m1.wav")
    s = AVSBenchMS3(root, "val", image_size=32)[0]
    assert s.valid.all() and s.sounding.tolist() == [True, False, True, False, True]


def test_avsbench_v2_layout_binarises_colour_maps(tmp_path):
    root = tmp_path / "avsbench_semantic"
    _csv(root / "metadata.csv", ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"],
         [["a", "u1", "0", "0", "x", "train", "v2"], ["b", "u2", "0", "0", "x", "train", "v1s"],
          ["c", "u3", "0", "0", "x", "test", "v2"]])
    for label, uid, frames, masks in (("v2", "u1", 10, 10), ("v1s", "u2", 5, 1),
                                      ("v2", "u3", 10, 10)):
        d = root / label / uid
        for i in range(frames):
            img = Image.fromarray(_frame(i))
            (d / "frames").mkdir(parents=True, exist_ok=True)
            img.save(d / "frames" / f"{i}.jpg")
        for i in range(masks):
            colour = np.zeros((24, 32, 3), np.uint8)
            colour[4:12, 8:20] = [128, 0, 64]  # a palette colour, not white
            _png(d / "labels_rgb" / f"{i}.png", colour)
        _wav(d / "audio.wav", seconds=frames)
    ds = AVSBenchV2(root, "train", image_size=32)
    assert [it["uid"] for it in ds.items] == ["u1", "u2"]
    v2, v1s = ds[0], ds[1]
    assert v2.frames.shape[0] == 10 and v2.log_mel.shape[0] == 10 and v2.valid.all()
    assert v2.gt.sum() > 0 and set(v2.gt.unique().tolist()) == {0.0, 1.0}
    assert v1s.valid.tolist() == [True, False, False, False, False]
    assert len(AVSBenchV2(root, "train", subsets=("v1s",), image_size=32)) == 1
    (root / "avss_index").mkdir()
    (root / "metadata.csv").rename(root / "avss_index" / "metadata.csv")  # authors' layout
    assert len(AVSBenchV2(root, "test", image_size=32)) == 1


def test_read_wav_formats(tmp_path):
    _wav(tmp_path / "a.wav", seconds=0.5, channels=2, rate=8000)
    x, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and x.shape == (2, 4000) and x.abs().max() <= 1.0
    assert x.max().item() == pytest.approx(0.3, abs=1e-3)


def _results_doc(video: Path, masks: np.ndarray, fps: float) -> dict:
    frames = [{"index": i, "time": i / fps, "sounding_prob": float(m.any()),
               "predicted_iou": 1.0, "mask_score": 1.0, "review_priority": 0.0,
               "mask": rle.encode(m)} for i, m in enumerate(masks)]
    return {"format": "auralsam2-prelabel", "format_version": 1, "status": "complete",
            "video": {"path": str(video), "name": video.name, "fps": fps},
            "model": {}, "frames": frames, "intervals": [], "summary": {}}


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    """A synthetic video and a "corrected" results file whose masks are the ground truth."""
    from auralsam2_core.training.synthetic import make_clip, write_clip

    root = tmp_path_factory.mktemp("corrected")
    clip = make_clip(5, size=(48, 64), fps=5, seconds=1.4, num_objects=2, schedule="one")
    video = write_clip(clip, root / "videos" / "clip.mp4", gt_dir=root / "gt" / "clip")
    doc = _results_doc(video, clip.sounding_mask, clip.fps)
    (root / "results").mkdir()
    (root / "results" / "clip.json").write_text(json.dumps(doc))
    return root, clip


def test_corrected_results_dataset(corrected):
    root, clip = corrected
    ds = CorrectedResultsDataset(root / "results", image_size=32, clip_len=3)
    assert len(ds) == 2  # 7 frames -> two clips of 3 (the remainder is dropped)
    s = ds[1]
    assert s.frames.shape == (3, 3, 32, 32) and s.log_mel.shape == (3, 2, 96, 64)
    assert s.valid.all() and s.name == "clip@3"
    want = torch.nn.functional.interpolate(
        torch.from_numpy(clip.sounding_mask[3:6].astype(np.float32))[:, None], size=(32, 32),
        mode="nearest")[:, 0]
    assert torch.equal(s.gt, want)
    # the engine's audio alignment: examples centred on each frame's time
    from auralsam2_core.media.audio_track import AudioTrack

    track = AudioTrack.from_file(root / "videos" / "clip.mp4")
    assert torch.equal(s.log_mel, track.examples_at([0.6, 0.8, 1.0]))


def test_evaluate_predictions_on_results_and_png_trees(corrected, tmp_path):
    root, clip = corrected
    perfect = evaluate_predictions(root / "results", root / "gt")
    j_perfect = perfect.J
    assert j_perfect == pytest.approx(1.0, abs=1e-6) and perfect.num_videos == 1
    # a PNG tree with one frame wrong
    pred = tmp_path / "pred" / "clip"
    for i, m in enumerate(clip.sounding_mask):
        _png(pred / f"{i:05d}.png", (m if i else np.zeros_like(m)).astype(np.uint8) * 255)
    rep = evaluate_predictions(tmp_path / "pred", root / "gt")
    j_one_wrong = rep.J
    assert j_one_wrong == pytest.approx(6 / 7, abs=1e-5)
    _png(tmp_path / "other_gt" / "other" / "00000.png", np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="no ground truth"):
        evaluate_predictions(root / "results", tmp_path / "other_gt")
