"""Training data: synthetic clips, AVSBench (S4 / MS3 / AVSBench-semantic "v2") and
pre-labelling results corrected on an annotation platform.

Every dataset yields :class:`ClipSample` s at the model's input size: ``frames`` normalised
with ImageNet mean/std, one stereo log-mel example per frame, ground-truth masks at the
model's size and a per-frame ``valid`` flag (frames without annotation get no loss).

Audio alignment. Synthetic clips and corrected results use the **engine's** alignment
(:meth:`~auralsam2_core.media.audio_track.AudioTrack.examples_at`: the 0.96 s example centred on
each frame's time), so what the model learns is what ``auralsam2 prelabel`` shows it.
AVSBench uses the authors' alignment: its 1 fps frame ``i`` gets the ``i``-th non-overlapping
0.96 s example of the clip's wav (``log_mel_examples(..., min_examples=T)``).

No augmentation is applied (synthetic clips are random already; for AVSBench the authors'
hflip / affine / square-resize augmentation is not reproduced: frames are square-resized).
"""

from __future__ import annotations

import csv
import os
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from auralsam2_core.inference.engine import normalise_pixels

__all__ = [
    "ClipSample",
    "SyntheticClipDataset",
    "ReferringClipDataset",
    "AVSBenchS4",
    "AVSBenchMS3",
    "AVSBenchV2",
    "CorrectedResultsDataset",
    "normalise_frames",
    "read_wav",
    "collate",
    "HELDOUT_SEED_BASE",
]

#: Seeds at or above this are never used for training clips (held-out demo / test clips).
HELDOUT_SEED_BASE = 1_000_000_000


@dataclass
class ClipSample:
    """One training clip of ``T`` frames at the model's input size ``S``."""

    frames: torch.Tensor  # (T, 3, S, S) float32, ImageNet-normalised
    log_mel: torch.Tensor  # (T, 2, 96, 64) float32
    gt: torch.Tensor  # (T, S, S) float32 0/1 sounding-object mask
    valid: torch.Tensor  # (T,) bool: frame has an annotation
    name: str = ""
    expression: str | None = None  # Ref-AVS: the referring expression gt belongs to
    # Synthetic clips: (T, len(SHAPES)) 0/1, which shape sounds in each frame (whatever the
    # query); the target of the training-only sound-identity loss (--sound-id-weight).
    sources: torch.Tensor | None = None

    @property
    def sounding(self) -> torch.Tensor:
        """(T,) bool: the frame's ground truth is not empty."""
        return self.gt.flatten(1).any(-1)


def collate(samples: Sequence[ClipSample]) -> dict:
    """Stack clips of equal length: frames (B, T, 3, S, S), log_mel (B, T, 2, 96, 64),
    gt (B, T, S, S), valid (B, T), names, expressions (None each for AVS), sources
    (B, T, len(SHAPES), or None unless every clip is synthetic)."""
    return {"frames": torch.stack([s.frames for s in samples]),
            "log_mel": torch.stack([s.log_mel for s in samples]),
            "gt": torch.stack([s.gt for s in samples]),
            "valid": torch.stack([s.valid for s in samples]),
            "names": [s.name for s in samples],
            "expressions": [s.expression for s in samples],
            "sources": (torch.stack([s.sources for s in samples])
                        if all(s.sources is not None for s in samples) else None)}


# --------------------------------------------------------------------------- helpers


def normalise_frames(rgb: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB -> (T, 3, size, size) float32 ImageNet-normalised.

    Downscaling uses area averaging (what the engine's decoder does), upscaling bilinear.
    """
    x = torch.as_tensor(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        mode = "area" if x.shape[-1] >= size and x.shape[-2] >= size else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        x = F.interpolate(x, size=(size, size), mode=mode, **kw)
    return normalise_pixels(x)


def resize_masks(masks: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(T, H, W) binary -> (T, size, size) float32 0/1 (nearest, as the authors' labels)."""
    m = torch.as_tensor(np.ascontiguousarray(masks)).float()
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m[:, None], size=(size, size), mode="nearest")[:, 0]
    return (m > 0.5).float()


def read_wav(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """(C, S) float32 in [-1, 1] and the sample rate. PCM WAV (8/16/24/32-bit) is read with
    the standard library (int16 / 32768, as the authors); anything else through PyAV."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError):
        return _read_audio_av(path)
    if width == 1:
        data = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        data = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        data = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / (1 << 23)
    else:
        data = np.frombuffer(raw, "<i4").astype(np.float32) / (1 << 31)
    return torch.from_numpy(data.reshape(-1, channels).T.copy()), rate


def _read_audio_av(path) -> tuple[torch.Tensor, int]:
    """Non-PCM audio: the engine's reader (stereo, 16 kHz)."""
    from auralsam2_core.media.video import iter_audio_16k

    chunks = list(iter_audio_16k(path))
    data = np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), np.float32)
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), 16000


def _to_stereo(wav: torch.Tensor) -> torch.Tensor:
    if wav.shape[0] == 1:
        return wav.expand(2, -1)
    if wav.shape[0] > 2:
        return wav[:2]
    return wav


def _avs_log_mel(wav_path: Path, t_len: int) -> torch.Tensor:
    """The authors' AVSBench audio: one non-overlapping 0.96 s example per 1 fps frame."""
    from auralsam2_core.media.log_mel import log_mel_examples

    wav, rate = read_wav(wav_path)
    return log_mel_examples(_to_stereo(wav), rate, min_examples=t_len)[:t_len]


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _load_binary_mask(path: Path) -> np.ndarray:
    """Any non-black pixel is foreground (AVSBench binary masks, or colour maps read
    as binary like the authors do for v1s/v1m/v2)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                for row in csv.DictReader(fh)]


# --------------------------------------------------------------------------- synthetic


class SyntheticClipDataset(torch.utils.data.Dataset):
    """Clips generated on the fly by :func:`auralsam2_core.training.synthetic.make_clip`.

    Item ``i`` uses seed ``seed_base + i`` (``seed_base`` below :data:`HELDOUT_SEED_BASE`
    for training). The seed also picks the clip's schedule (``schedules`` with
    ``schedule_weights``: by default 60 % one object sounding throughout, 20 % silent, 20 %
    objects switching on and off) and a random window of ``clip_len`` frames out of a clip of
    ``seconds`` at ``fps``; the audio examples are taken the way the engine takes them from the
    whole clip's track (centred on each frame's time). Colours, shapes, motion and pitch are
    random per clip, so only the *sound* tells which shape to segment.
    """

    def __init__(self, length: int, *, image_size: int = 96, clip_len: int = 5,
                 seed_base: int = 0, fps: float = 5.0, seconds: float = 2.0,
                 num_objects: int | None = 2,
                 schedules: Sequence[str] = ("one", "silent", "mixed"),
                 schedule_weights: Sequence[float] = (0.6, 0.2, 0.2),
                 render_size: int | None = None) -> None:
        if len(schedules) != len(schedule_weights):
            raise ValueError("schedules and schedule_weights must have the same length")
        self.length = int(length)
        self.image_size = int(image_size)
        self.clip_len = int(clip_len)
        self.seed_base = int(seed_base)
        self.fps = float(fps)
        self.seconds = float(seconds)
        if round(self.seconds * self.fps) < self.clip_len:
            raise ValueError(f"a clip of {seconds} s at {fps} fps has fewer than "
                             f"{clip_len} frames")
        self.num_objects = num_objects
        self.schedules = tuple(schedules)
        w = np.asarray(schedule_weights, np.float64)
        self.schedule_p = w / w.sum()
        self.render_size = int(render_size or image_size)

    def __len__(self) -> int:
        return self.length

    def config(self) -> dict:
        return {"kind": "synthetic", "image_size": self.image_size, "clip_len": self.clip_len,
                "seed_base": self.seed_base, "fps": self.fps, "seconds": self.seconds,
                "num_objects": self.num_objects, "schedules": list(self.schedules),
                "schedule_weights": self.schedule_p.tolist(), "render_size": self.render_size}

    def clip(self, index: int):
        """The :class:`~auralsam2_core.training.synthetic.SyntheticClip` behind item ``index`` and
        the first frame of its training window."""
        from auralsam2_core.training.synthetic import make_clip

        seed = self.seed_base + int(index)
        rng = np.random.default_rng([seed, 7])
        schedule = self.schedules[int(rng.choice(len(self.schedules), p=self.schedule_p))]
        clip = make_clip(seed, size=(self.render_size, self.render_size), fps=self.fps,
                         seconds=self.seconds, num_objects=self.num_objects,
                         schedule=schedule)
        start = int(rng.integers(0, clip.num_frames - self.clip_len + 1))
        return clip, start

    def __getitem__(self, index: int) -> ClipSample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        clip, start = self.clip(index)
        return clip_sample(clip, self.image_size, start, self.clip_len,
                           name=f"synthetic_{self.seed_base + index}")


def clip_sample(clip, image_size: int, start: int = 0, clip_len: int | None = None,
                name: str = "", target: np.ndarray | None = None,
                expression: str | None = None) -> ClipSample:
    """A :class:`~auralsam2_core.training.synthetic.SyntheticClip` window as a training sample, with
    the audio examples the engine would compute for those frames. ``target`` ``(T, H, W)``
    replaces the clip's sounding mask as ground truth (Ref-AVS: the referred object's)."""
    from auralsam2_core.media.audio_track import AudioTrack
    from auralsam2_core.media.log_mel import resample_to_16k
    from auralsam2_core.training.synthetic import SHAPES

    stop = clip.num_frames if clip_len is None else start + clip_len
    sources = torch.zeros(stop - start, len(SHAPES))
    for k, shape in enumerate(clip.shapes):
        sources[:, SHAPES.index(shape)] = torch.from_numpy(
            np.asarray(clip.sounding[k][start:stop], dtype=np.float32))
    audio = resample_to_16k(torch.from_numpy(clip.audio), clip.sample_rate)
    track = AudioTrack.from_chunks([audio.numpy().astype(np.float32)])
    times = [i / clip.fps for i in range(start, stop)]
    gt = resize_masks((clip.sounding_mask if target is None else target)[start:stop],
                      image_size)
    return ClipSample(frames=normalise_frames(clip.frames[start:stop], image_size),
                      log_mel=track.examples_at(times), gt=gt,
                      valid=torch.ones(stop - start, dtype=torch.bool), name=name,
                      expression=expression, sources=sources)


def referred_target(clip, obj: int | None) -> np.ndarray:
    """Ref-AVS ground truth ``(T, H, W)``: object ``obj``'s visible mask in the frames where it
    sounds; empty throughout for ``obj=None`` (a null expression: the shape is not there)."""
    if obj is None:
        return np.zeros(clip.object_masks.shape[1:], dtype=bool)
    return clip.object_masks[obj] & clip.sounding[obj][:, None, None]


class ReferringClipDataset(torch.utils.data.Dataset):
    """Synthetic Ref-AVS clips: 2-3 shapes in named colours, each with its own sound, and a
    referring expression naming one shape
    (:func:`~auralsam2_core.training.synthetic.referring_expression`, with its colour half of
    the time).

    Ground truth (:func:`referred_target`): the named shape's visible mask while it sounds;
    empty while it is silent, and throughout when the expression names a shape the clip does
    not show (a *null* expression, ``null_fraction`` of the clips with a shape missing). The
    seed picks the schedule (``schedules`` with ``schedule_weights``: objects switching on and
    off, one sounding throughout, all sounding throughout, silence), so the model must read
    the text (which shape), look (is it there) and listen (does it sound). Whole clips of
    ``seconds * fps`` frames (Ref-AVS: T = 10).

    ``queries_per_clip`` = k > 1: k consecutive items share one clip and name different things
    in it (its shapes in a seeded order, then a missing shape), so that a batch of consecutive
    items holds the same frames and sound with different expressions and different targets:
    only the text tells them apart.

    ``focus_shapes`` (e.g. ``("disc", "square")``, the pair hardest to tell apart by name):
    that fraction (``focus_fraction``) of the clips shows exactly these shapes, in a seeded
    order.
    """

    def __init__(self, length: int, *, image_size: int = 96, seed_base: int = 0,
                 fps: float = 5.0, seconds: float = 2.0, num_objects: int | None = None,
                 schedules: Sequence[str] = ("mixed", "one", "all", "silent"),
                 schedule_weights: Sequence[float] = (0.35, 0.3, 0.25, 0.1),
                 null_fraction: float = 0.2, colour_fraction: float = 0.5,
                 render_size: int | None = None, queries_per_clip: int = 1,
                 focus_shapes: Sequence[str] | None = None, focus_fraction: float = 0.5
                 ) -> None:
        if queries_per_clip < 1:
            raise ValueError("queries_per_clip must be at least 1")
        if len(schedules) != len(schedule_weights):
            raise ValueError("schedules and schedule_weights must have the same length")
        self.length = int(length)
        self.image_size = int(image_size)
        self.seed_base = int(seed_base)
        self.fps = float(fps)
        self.seconds = float(seconds)
        self.num_objects = num_objects
        self.schedules = tuple(schedules)
        w = np.asarray(schedule_weights, np.float64)
        self.schedule_p = w / w.sum()
        self.null_fraction = float(null_fraction)
        self.colour_fraction = float(colour_fraction)
        self.render_size = int(render_size or image_size)
        self.queries_per_clip = int(queries_per_clip)
        self.focus_shapes = tuple(focus_shapes) if focus_shapes else None
        self.focus_fraction = float(focus_fraction)
        if self.focus_shapes and num_objects not in (None, len(self.focus_shapes)):
            raise ValueError(f"focus_shapes {self.focus_shapes} with num_objects={num_objects}")

    def __len__(self) -> int:
        return self.length

    def config(self) -> dict:
        return {"kind": "synthetic-referring", "image_size": self.image_size,
                "seed_base": self.seed_base, "fps": self.fps, "seconds": self.seconds,
                "num_objects": self.num_objects, "schedules": list(self.schedules),
                "schedule_weights": self.schedule_p.tolist(),
                "null_fraction": self.null_fraction, "colour_fraction": self.colour_fraction,
                "render_size": self.render_size, "queries_per_clip": self.queries_per_clip,
                **({"focus_shapes": list(self.focus_shapes),
                    "focus_fraction": self.focus_fraction} if self.focus_shapes else {})}

    def item(self, index: int):
        """``(clip, referred object index or None for a null expression, expression)``."""
        from auralsam2_core.training.synthetic import (
            COLOUR_NAMES,
            SHAPES,
            make_clip,
            referring_expression,
        )

        k = self.queries_per_clip
        seed = self.seed_base + int(index) // k
        rng = np.random.default_rng([seed, 11])
        schedule = self.schedules[int(rng.choice(len(self.schedules), p=self.schedule_p))]
        shapes = None
        if self.focus_shapes and rng.random() < self.focus_fraction:
            shapes = [self.focus_shapes[i] for i in rng.permutation(len(self.focus_shapes))]
        clip = make_clip(seed, size=(self.render_size, self.render_size), fps=self.fps,
                         seconds=self.seconds, num_objects=self.num_objects,
                         schedule=schedule, colours="named", shapes=shapes)
        absent = [s for s in SHAPES if s not in clip.shapes]
        if k == 1:
            null = bool(absent) and rng.random() < self.null_fraction
        else:  # the clip's shapes in a seeded order, then a missing one, then again
            order = rng.permutation(len(clip.shapes)).tolist()
            role = int(index) % k % (len(order) + bool(absent))
            null = role == len(order)
            rng = np.random.default_rng([seed, 11, int(index) % k])
        with_colour = rng.random() < self.colour_fraction
        if null:
            obj, shape = None, absent[int(rng.integers(len(absent)))]
            colour = list(COLOUR_NAMES)[int(rng.integers(len(COLOUR_NAMES)))]
        else:
            obj = int(rng.integers(len(clip.shapes))) if k == 1 else order[role]
            shape, colour = clip.shapes[obj], clip.colour_names[obj]
        return clip, obj, referring_expression(shape, colour if with_colour else None, rng)

    def __getitem__(self, index: int) -> ClipSample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        clip, obj, expression = self.item(index)
        return clip_sample(clip, self.image_size, name=f"referring_{self.seed_base + index}",
                           target=referred_target(clip, obj), expression=expression)


# --------------------------------------------------------------------------- AVSBench


class _AVSBase(torch.utils.data.Dataset):
    def __init__(self, image_size: int) -> None:
        self.image_size = int(image_size)
        self.items: list[dict] = []

    def __len__(self) -> int:
        return len(self.items)

    def _sample(self, frames: list[Path], masks: list[Path | None], wav: Path, name: str
                ) -> ClipSample:
        t_len = len(frames)
        rgb = np.stack([_load_rgb(p) for p in frames])
        h, w = rgb.shape[1:3]
        gt = np.zeros((t_len, h, w), bool)
        valid = torch.zeros(t_len, dtype=torch.bool)
        for i, m in enumerate(masks):
            if m is not None and m.is_file():
                mask = _load_binary_mask(m)
                if mask.shape != (h, w):  # masks at another size than the frames
                    mask = _resize_bool(mask, h, w)
                gt[i] = mask
                valid[i] = True
        return ClipSample(frames=normalise_frames(rgb, self.image_size),
                          log_mel=_avs_log_mel(wav, t_len),
                          gt=resize_masks(gt, self.image_size), valid=valid, name=name)


def _resize_bool(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.interpolate(m, size=(h, w), mode="nearest")[0, 0] > 0.5).numpy()


def _index_rows(csv_path: Path, what: str, split: str) -> list[dict]:
    """The rows of an AVSBench index CSV that belong to ``split``."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"AVSBench {what} index not found: {csv_path}")
    return _split_rows(_read_csv(csv_path), split, csv_path)


def _split_rows(rows: list[dict], split: str, csv_path: Path) -> list[dict]:
    if rows and "split" not in rows[0]:
        raise ValueError(f"{csv_path} has no 'split' column")
    return [r for r in rows if r.get("split") == split]


class AVSBenchS4(_AVSBase):
    """AVSBench-object single source (S4), the original release layout::

        <root>/s4_meta_data.csv                 name, ..., category, split
        <root>/s4_data/visual_frames/<split>/<category>/<name>/<name>_<1..5>.png
        <root>/s4_data/audio_wav/<split>/<category>/<name>.wav
        <root>/s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png

    ``root`` is the ``Single-source`` folder. Train clips have a mask for frame 1 only: the
    other frames are ``valid = False``.
    """

    FRAMES = 5

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 image_size: int = 1024) -> None:
        super().__init__(image_size)
        self.root = Path(root)
        for r in _index_rows(self.root / "s4_meta_data.csv", "S4", split):
            name = r.get("name") or next(iter(r.values()))
            category = r.get("category") or list(r.values())[2]
            self.items.append({"name": name, "category": category, "split": split})

    def __getitem__(self, index: int) -> ClipSample:
        it = self.items[index]
        base = self.root / "s4_data"
        rel = Path(it["split"]) / it["category"]
        frames = [base / "visual_frames" / rel / it["name"] / f"{it['name']}_{i}.png"
                  for i in range(1, self.FRAMES + 1)]
        masks = [base / "gt_masks" / rel / it["name"] / f"{it['name']}_{i}.png"
                 for i in range(1, self.FRAMES + 1)]
        return self._sample(frames, masks, base / "audio_wav" / rel / f"{it['name']}.wav",
                            f"{it['category']}/{it['name']}")


class AVSBenchMS3(_AVSBase):
    """AVSBench-object multiple sources (MS3), the original release layout::

        <root>/ms3_meta_data.csv                 video_id (first column), ..., split
        <root>/ms3_data/visual_frames/<name>/<name>.mp4_<1..5>.png
        <root>/ms3_data/audio_wav/<split>/<name>.wav
        <root>/ms3_data/gt_masks/<split>/<name>/<name>_<1..5>.png

    ``root`` is the ``Multi-sources`` folder; all five frames are annotated.
    """

    FRAMES = 5

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 image_size: int = 1024) -> None:
        super().__init__(image_size)
        self.root = Path(root)
        for r in _index_rows(self.root / "ms3_meta_data.csv", "MS3", split):
            name = r.get("video_id") or r.get("name") or next(iter(r.values()))
            self.items.append({"name": name, "split": split})

    def __getitem__(self, index: int) -> ClipSample:
        it = self.items[index]
        base = self.root / "ms3_data"
        name = it["name"]
        frames = [base / "visual_frames" / name / f"{name}.mp4_{i}.png"
                  for i in range(1, self.FRAMES + 1)]
        masks = [base / "gt_masks" / it["split"] / name / f"{name}_{i}.png"
                 for i in range(1, self.FRAMES + 1)]
        return self._sample(frames, masks, base / "audio_wav" / it["split"] / f"{name}.wav",
                            name)


class AVSBenchV2(_AVSBase):
    """AVSBench-semantic release layout (what AuralSAM2's v1s / v1m / v2 code reads)::

        <root>/metadata.csv   (or <root>/avss_index/metadata.csv)   uid, split, label, ...
        <root>/<label>/<uid>/frames/<0..T-1>.jpg       label in v1s, v1m, v2
        <root>/<label>/<uid>/audio.wav
        <root>/<label>/<uid>/labels_rgb/<k>.png        colour maps, read as binary

    Masks are binarised like the authors' v1s / v1m / v2 code (any non-black pixel is the
    sounding object). ``subsets`` selects labels (the authors' "v2" model trains on all
    three merged). Frames without a mask file (v1s train: only frame 0) are ``valid = False``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 subsets: Sequence[str] = ("v1s", "v1m", "v2"), image_size: int = 1024
                 ) -> None:
        super().__init__(image_size)
        self.root = Path(root)
        csv_path = next((p for p in (self.root / "metadata.csv",
                                     self.root / "avss_index" / "metadata.csv") if p.is_file()),
                        None)
        if csv_path is None:
            raise FileNotFoundError(f"AVSBench-semantic index not found: {self.root}/metadata.csv"
                                    f" or {self.root}/avss_index/metadata.csv")
        for r in _split_rows(_read_csv(csv_path), split, csv_path):
            if r.get("label") in subsets:
                self.items.append({"uid": r["uid"], "label": r["label"], "split": split})

    def __getitem__(self, index: int) -> ClipSample:
        from auralsam2_core.evaluation.metrics import _natural_key

        it = self.items[index]
        base = self.root / it["label"] / it["uid"]
        frames = sorted((p for p in (base / "frames").iterdir()
                         if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                        key=lambda p: _natural_key(p.name))
        masks = [base / "labels_rgb" / f"{p.stem}.png" for p in frames]
        return self._sample(frames, masks, base / "audio.wav", f"{it['label']}/{it['uid']}")


# --------------------------------------------------------------------------- corrections


class CorrectedResultsDataset(torch.utils.data.Dataset):
    """Train on pre-labels corrected on a platform and exported back in the engine's results
    format (``<name>.json``, see :mod:`auralsam2_core.inference.results`) next to their videos.

    Each results file's frames (in order; every ``stride``-th video frame when the run used a
    stride) are cut into clips of ``clip_len`` frames (a shorter last clip is kept when the
    video has fewer frames than ``clip_len``, otherwise the remainder is dropped). A frame's
    mask is its ground truth (empty = not sounding). Frames and audio are read from the video
    exactly as the engine reads them. ``video`` per results file: the path stored in the
    file, else a file named ``doc["video"]["name"]`` next to the JSON, else ``video_dir``.
    """

    def __init__(self, results: str | os.PathLike | Sequence[str | os.PathLike], *,
                 image_size: int = 1024, clip_len: int = 5,
                 video_dir: str | os.PathLike | None = None) -> None:
        from auralsam2_core.inference.results import read_results, track

        paths = [Path(results)] if isinstance(results, str | os.PathLike) else \
            [Path(p) for p in results]
        files: list[Path] = []
        for p in paths:
            files += sorted(p.glob("*.json")) if p.is_dir() else [p]
        if not files:
            raise ValueError(f"no results JSON files in {results}")
        self.image_size = int(image_size)
        self.clip_len = int(clip_len)
        self.items: list[tuple[Path, Path, list[int]]] = []
        self._docs: dict[Path, dict] = {}
        for f in files:
            doc = read_results(f)
            video = self._find_video(f, doc, video_dir)
            self._docs[f] = doc
            n = len(track(doc)["frames"])  # the AVS model's one sounding object
            if n == 0:
                continue
            if n < self.clip_len:
                self.items.append((f, video, list(range(n))))
                continue
            for s in range(0, n - self.clip_len + 1, self.clip_len):
                self.items.append((f, video, list(range(s, s + self.clip_len))))

    @staticmethod
    def _find_video(json_path: Path, doc: dict, video_dir) -> Path:
        v = doc.get("video", {})
        candidates = [Path(v["path"])] if v.get("path") else []
        if v.get("name"):
            candidates.append(json_path.parent / v["name"])
            if video_dir is not None:
                candidates.append(Path(video_dir) / v["name"])
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(f"{json_path}: its video was not found (tried "
                                f"{', '.join(map(str, candidates)) or 'nothing'})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ClipSample:
        from auralsam2_core.inference.results import track
        from auralsam2_core.inference.rle import decode
        from auralsam2_core.media.audio_track import AudioTrack
        from auralsam2_core.media.video import iter_frames

        json_path, video, rows = self.items[index]
        doc = self._docs[json_path]
        obj = track(doc)
        recs = [obj["frames"][r] for r in rows]
        wanted = {rec["index"]: k for k, rec in enumerate(recs)}
        rgb: list[np.ndarray | None] = [None] * len(recs)
        last = max(wanted)
        for frame in iter_frames(video, size=self.image_size):
            if frame.index in wanted:
                rgb[wanted[frame.index]] = frame.rgb
            if frame.index >= last:
                break
        if any(x is None for x in rgb):
            raise ValueError(f"{video}: frames {sorted(wanted)} not all decodable")
        masks = np.stack([decode(rec["mask"]) for rec in recs])
        audio = doc["video"].get("audio") or {}
        track = AudioTrack.from_file(video, audio.get("track", 0))  # the one labelled
        times = [float(rec["time"]) for rec in recs]
        return ClipSample(frames=normalise_frames(np.stack(rgb), self.image_size),
                          log_mel=track.examples_at(times),
                          gt=resize_masks(masks, self.image_size),
                          valid=torch.ones(len(recs), dtype=torch.bool),
                          name=f"{json_path.stem}@{recs[0]['index']}",
                          expression=obj.get("query"))  # Ref-AVS targets: their query


# --------------------------------------------------------------------------- evaluation


def results_masks(path: str | os.PathLike) -> tuple[list[int], np.ndarray, list[float]]:
    """A results JSON's frame indices, masks ``(T, H, W)`` bool and sounding probabilities."""
    from auralsam2_core.inference.results import frame_masks, read_results, track

    doc = read_results(path)
    pairs = list(frame_masks(doc))
    if not pairs:
        raise ValueError(f"{path} has no frames")
    return ([i for i, _ in pairs], np.stack([m for _, m in pairs]),
            [f["sounding_prob"] for f in track(doc)["frames"]])


def _gt_for_results(name: str, indices: list[int], gt_dir: Path) -> torch.Tensor:
    from auralsam2_core.evaluation.metrics import _png_files, load_mask_dir

    files = _png_files(gt_dir)
    if len(files) == len(indices):
        return load_mask_dir(gt_dir)
    by_number = {}
    for f in files:
        digits = "".join(ch for ch in f.stem if ch.isdigit())
        if digits:
            by_number.setdefault(int(digits), f)
    for offset in (0, 1):  # frame index 0-based, or 1-based file numbers (AVSBench)
        if all(i + offset in by_number for i in indices):
            from auralsam2_core.evaluation.metrics import _read_png

            arrays = [_read_png(by_number[i + offset]) for i in indices]
            return torch.from_numpy(np.stack([a > 0 for a, _ in arrays]).astype(np.float32))
    raise ValueError(f"video {name!r}: {len(indices)} predicted frames but {len(files)} "
                     f"ground-truth PNGs in {gt_dir}, and their numbers do not match the "
                     "frame indices")


def evaluate_predictions(pred: str | os.PathLike, gt: str | os.PathLike):
    """AVSBench J and F (:class:`~auralsam2_core.evaluation.metrics.MetricsReport`) of predictions
    against a ground-truth PNG tree (``<video>/<frame>.png``).

    ``pred`` is either a results folder of the engine's ``<video>.json`` files (matched to
    ``gt/<video>/`` by name, or by the folder's own name anywhere under ``gt``), or a PNG tree
    scored by :func:`~auralsam2_core.evaluation.metrics.evaluate_dirs`. Results frames are paired
    with the ground-truth PNGs in order when the counts agree, else by the number in the PNG's
    name (= frame index, or index + 1). Predicted masks at another size than the ground
    truth are resized to it (nearest).
    """
    from auralsam2_core.evaluation.metrics import MetricsAccumulator, _video_dirs, evaluate_dirs

    pred, gt = Path(pred), Path(gt)
    if not gt.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt}")
    jsons = sorted(p for p in pred.glob("*.json")) if pred.is_dir() else \
        ([pred] if pred.suffix == ".json" else [])
    if not jsons:
        if not pred.is_dir():
            raise FileNotFoundError(f"prediction folder not found: {pred}")
        return evaluate_dirs(pred, gt)
    dirs = _video_dirs(gt)
    by_name: dict[str, Path] = {}
    for rel, d in dirs.items():
        by_name.setdefault(rel, d)
        by_name.setdefault(d.name, d)
    acc = MetricsAccumulator()
    missing = []
    for j in jsons:
        if j.stem not in by_name:
            missing.append(j.stem)
            continue
        indices, masks, _ = results_masks(j)
        g = _gt_for_results(j.stem, indices, by_name[j.stem])
        p = torch.from_numpy(masks.astype(np.float32))
        if p.shape[1:] != g.shape[1:]:
            p = F.interpolate(p[:, None], size=tuple(g.shape[1:]), mode="nearest")[:, 0]
        acc.add(p, g, j.stem)
    if missing:
        raise ValueError(f"no ground truth under {gt} for: {', '.join(missing[:10])}")
    return acc.report()
