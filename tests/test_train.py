"""Trainer (batched forward, loss goes down, resume, determinism, saved formats) and the
training datasets (synthetic, AVSBench layouts on fake trees, corrected results)."""

from __future__ import annotations

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auralsam2_core import rle
from auralsam2_core.build import build_fuser
from auralsam2_core.checkpoint import read_state_dict
from auralsam2_core.datasets import (
    HELDOUT_SEED_BASE,
    AVSBenchMS3,
    AVSBenchS4,
    AVSBenchV2,
    CorrectedResultsDataset,
    SyntheticClipDataset,
    collate,
    evaluate_predictions,
    read_wav,
)
from auralsam2_core.fuser import AuralFuser
from auralsam2_core.train import (
    DEMO_FUSER_CONFIG,
    ModelSpec,
    TrainConfig,
    build_model,
    forward_batch,
    load_trained,
    lr_factor,
    param_groups,
    train,
)

SIZE = 96  # the demo model's input size


@pytest.fixture(scope="module")
def tiny_data() -> SyntheticClipDataset:
    return SyntheticClipDataset(4, image_size=SIZE, clip_len=3, seconds=1.0)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = {"steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "seed": 3,
            "checkpoint_every": 2, "unfreeze_sam2": True, "progress": False, "device": "cpu"}
    return TrainConfig(out=str(out), **{**base, **kw})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    sd = {f"fuser.{k}": v for k, v in read_state_dict(out / "fuser.pth").items()}
    if (out / "sam2.pt").is_file():
        sd.update({f"sam2.{k}": v for k, v in read_state_dict(out / "sam2.pt")["model"].items()})
    return sd


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- forward


def test_forward_batch_equals_forward_clip(tiny_data):
    torch.manual_seed(0)
    model = build_model(ModelSpec()).eval()
    for fm in model.fuser.fusion_modules:  # non-zero fusion residuals
        for bn in (fm.W_z[1], fm.W_z2[1]):
            bn.weight.data.fill_(0.5)
    batch = collate([tiny_data[i] for i in range(3)])
    with torch.no_grad():
        outs = forward_batch(model, batch["frames"], batch["log_mel"])
        for i, o in enumerate(outs):
            ref = model.forward_clip(batch["frames"][i], batch["log_mel"][i])
            for name in ("raw_multimask_logits", "multimask_logits", "ious",
                         "object_score_logits"):
                torch.testing.assert_close(getattr(o, name), getattr(ref, name),
                                           atol=1e-4, rtol=1e-4)
            assert torch.equal(o.chosen, ref.chosen)


def test_param_groups_and_schedule():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups([lin], 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3  # linear bias, norm weight and bias
    assert lr_factor(0, 100, 10, 0.9) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.9) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.9) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, 100, 10, 0.9) == 0.0


# ----------------------------------------------------------------------------- training


def test_a_few_steps_decrease_the_loss(tmp_path):
    data = SyntheticClipDataset(2, image_size=SIZE, clip_len=3, seconds=1.0,
                                schedules=("one",), schedule_weights=(1.0,))
    losses = []
    train(_cfg(tmp_path, steps=12, checkpoint_every=0, lr=2e-3), data,
          on_step=lambda s, rec: losses.append(rec["loss"]))
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 12


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("run_a")
    train(_cfg(out), tiny_data)
    return out


def test_same_seed_same_weights(tmp_path, tiny_data, reference_run):
    train(_cfg(tmp_path), tiny_data)
    assert _same(_weights(tmp_path), _weights(reference_run))
    other = tmp_path / "other_seed"
    train(_cfg(other, seed=4), tiny_data)
    assert not _same(_weights(other), _weights(reference_run))


def test_resume_gives_the_uninterrupted_weights(tmp_path, tiny_data, reference_run):
    partial = train(_cfg(tmp_path), tiny_data, stop_after=1)  # "killed" after step 1
    assert partial.steps == 1 and not (tmp_path / "fuser.pth").exists()
    assert (tmp_path / "checkpoints" / "latest.pt").is_file()
    done = train(_cfg(tmp_path, resume=True), tiny_data)
    assert done.steps == 4
    assert _same(_weights(tmp_path), _weights(reference_run))
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 4


def test_saved_fuser_is_a_plain_state_dict_in_the_authors_format(reference_run):
    sd = torch.load(reference_run / "fuser.pth", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert not any(k.startswith(("module.", "aural_fuser.", "fuser.")) for k in sd)
    AuralFuser.from_official_config(DEMO_FUSER_CONFIG).load_state_dict(sd, strict=True)
    fuser = build_fuser(reference_run / "fuser.pth", DEMO_FUSER_CONFIG)
    assert torch.equal(fuser.state_dict()["patch_embeds.0.weight"], sd["patch_embeds.0.weight"])
    sam2 = torch.load(reference_run / "sam2.pt", map_location="cpu", weights_only=True)
    assert set(sam2) == {"model"}
    info = json.loads((reference_run / "train.json").read_text())
    assert info["model"]["fuser_config"] == DEMO_FUSER_CONFIG
    assert info["train_config"]["steps"] == 4 and info["outputs"]["sam2"] == "sam2.pt"
    model = load_trained(reference_run)
    assert torch.equal(model.fuser.state_dict()["patch_embeds.0.weight"],
                       sd["patch_embeds.0.weight"])


def test_frozen_sam2_does_not_change(tmp_path, tiny_data):
    torch.manual_seed(3)  # the run's seed: same initial weights as inside train()
    init = build_model(ModelSpec())
    before = init.sam2.state_dict()
    seen = {}

    def grab(model, step):  # called once at the end of training
        seen["sam2"] = {k: v.clone() for k, v in model.sam2.state_dict().items()}
        seen["fuser"] = model.fuser.state_dict()["patch_embeds.0.weight"].clone()
        return {}

    train(_cfg(tmp_path, steps=2, unfreeze_sam2=False, checkpoint_every=0), tiny_data,
          evaluate=grab)
    assert not (tmp_path / "sam2.pt").exists()
    assert _same(before, seen["sam2"])  # same seed -> same init, and SAM2 was not trained
    assert not torch.equal(seen["fuser"], init.fuser.state_dict()["patch_embeds.0.weight"])


# ----------------------------------------------------------------------------- datasets


def test_synthetic_dataset_items(tiny_data):
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
    from auralsam2_core.synthetic import make_clip, write_clip

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
    from auralsam2_core.audio_track import AudioTrack

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


def test_audio_batchnorm_calibration(tiny_data):
    from auralsam2_core.train import calibrate_audio_batchnorm

    fuser = build_fuser(None, DEMO_FUSER_CONFIG).eval()
    mels = [torch.cat([tiny_data[i].log_mel for i in range(4)])]
    assert calibrate_audio_batchnorm(fuser, mels) == 4
    first = fuser.audio_encoder.features[1]
    assert not first.training and first.momentum == 0.1
    assert first.running_mean.abs().sum() > 0 and not torch.allclose(
        first.running_var, torch.ones_like(first.running_var))
    # frozen afterwards: eval-mode outputs do not depend on the batch
    x = mels[0]
    with torch.no_grad():
        torch.testing.assert_close(fuser.embed_audio(x)[:3], fuser.embed_audio(x[:3]))
    assert calibrate_audio_batchnorm(AuralFuser.from_official_config(
        {"f_depths": [1, 1, 1]}), mels) == 0  # VGGish has no BatchNorm


def test_fine_tuning_keeps_a_trained_audio_encoders_statistics(tmp_path, tiny_data,
                                                                reference_run):
    """From a fuser checkpoint no BN calibration runs: the encoder's weights were learnt with
    the statistics it carries (frozen BN: they stay exactly as loaded)."""
    start = read_state_dict(reference_run / "fuser.pth")
    seen = {}

    def grab(model, step):
        seen.update({k: v.clone() for k, v in model.fuser.state_dict().items()
                     if "running_" in k})
        return {}

    spec = ModelSpec(fuser_checkpoint=str(reference_run / "fuser.pth"))
    train(_cfg(tmp_path, steps=1, checkpoint_every=0), tiny_data, spec, evaluate=grab)
    assert seen and all(torch.equal(seen[k], start[k]) for k in seen)


def test_demo_bundle_export_records_the_whole_recipe(tmp_path, tiny_data, reference_run):
    """export_demo_bundle: plain float32 files with their sha256, the command, and for a run
    that continued a bundle, that bundle's training record under ``started_from``."""
    from auralsam2_core.train import export_demo_bundle
    from auralsam2_core.weights import sha256_file

    first = export_demo_bundle(reference_run, tmp_path / "stage1", demo_clips=1, demo_size=64)
    for name, rec in first["files"].items():
        assert sha256_file(tmp_path / "stage1" / name) == rec["sha256"]
    assert "started_from" not in first["training"]
    assert set(first["measured"]) >= {"j_sounding", "j_swapped_audio", "passed"}
    spec = ModelSpec(sam2_checkpoint=str(tmp_path / "stage1" / "sam2.safetensors"),
                     fuser_checkpoint=str(tmp_path / "stage1" / "fuser.safetensors"))
    train(_cfg(tmp_path / "run2", steps=1, checkpoint_every=0), tiny_data, spec,
          command="auralsam2 train --synthetic (stage 2)")
    second = export_demo_bundle(tmp_path / "run2", tmp_path / "stage2", demo_clips=1,
                                demo_size=64)
    assert second["training"]["command"] == "auralsam2 train --synthetic (stage 2)"
    assert second["training"]["started_from"] == first["training"]
    saved = json.loads((tmp_path / "stage2" / "model.json").read_text())
    assert saved["training"]["started_from"]["steps"] == 4


@pytest.mark.slow
def test_demo_model_recipe_script_runs_both_stages(tmp_path):
    """scripts/train_demo_model.sh (README's recipe for the bundled model), stages shortened:
    stage 2 starts from stage 1's bundle and the final model.json records both commands."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "AURALSAM2_STAGE1_STEPS": "2", "AURALSAM2_STAGE2_STEPS": "1"}
    subprocess.run(["bash", str(root / "scripts" / "train_demo_model.sh"), str(tmp_path)],
                   cwd=root, env=env, check=True, capture_output=True, timeout=600)
    info = json.loads((tmp_path / "bundle" / "model.json").read_text())
    first = info["training"]["started_from"]
    assert first["steps"] == 2 and info["training"]["steps"] == 1
    assert "--sam2-checkpoint" not in first["command"]
    assert f"--sam2-checkpoint {tmp_path}/stage1/bundle/sam2.safetensors" in \
        info["training"]["command"]
    assert info["training"]["train_config"]["lr"] == 3e-4
    from auralsam2_core.weights import sha256_file
    for name, rec in info["files"].items():
        assert sha256_file(tmp_path / "bundle" / name) == rec["sha256"]
