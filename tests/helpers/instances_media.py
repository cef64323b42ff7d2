"""The clip the instance tests share: two separated shapes (a disc and a triangle) that sound
at the same time in every frame, which the bundled demo model segments as two parts. Nothing
here is a test."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auralsam2_core.training.synthetic import SyntheticClip, make_clip, write_clip

#: seed 1 at this size keeps the two shapes at least 34 px apart in every frame
SEED, SIZE, FPS, SECONDS = 1, (96, 128), 5.0, 1.6  # 8 frames


def two_sounding_shapes(fps: float = FPS) -> SyntheticClip:
    clip = make_clip(SEED, size=SIZE, fps=fps, seconds=SECONDS, num_objects=2, schedule="all")
    assert clip.sounding.all() and len(clip.shapes) == 2
    return clip


def write_two_sounding_shapes(path: str | Path, fps: float = FPS) -> tuple[Path, SyntheticClip]:
    clip = two_sounding_shapes(fps)
    return write_clip(clip, path), clip


def box_area(box) -> float:
    """Area of an ``(x0, y0, x1, y1)`` inclusive pixel box."""
    x0, y0, x1, y1 = box
    return float((x1 - x0 + 1) * (y1 - y0 + 1))


def object_of(clip: SyntheticClip, frame: int, centre_xy: tuple[float, float]) -> int | None:
    """Which object's ground-truth mask holds a point at ``frame`` (None: neither)."""
    x, y = (int(round(v)) for v in centre_xy)
    h, w = clip.frames.shape[1:3]
    x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
    hits = [k for k in range(len(clip.shapes)) if clip.object_masks[k, frame, y, x]]
    return hits[0] if hits else None


def nearest_object(clip: SyntheticClip, frame: int, centre_xy) -> int:
    """The object whose centre is closest to ``centre_xy`` at ``frame``."""
    d = np.linalg.norm(clip.centres[:, frame] - np.asarray(centre_xy, float), axis=1)
    return int(np.argmin(d))
