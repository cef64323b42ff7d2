"""Frame numbering between CVAT and the original media (pure functions, tested directly).

CVAT numbers a video task's frames ``0 .. size-1`` ("task frames"); task frame ``i`` is frame
``start_frame + i * step`` of the uploaded video ("media frames", 0-based, presentation order,
what the engine's ``FrameResult.index`` counts). ``deleted_frames`` are task frames, and a job
covers the task frames ``start_frame .. stop_frame`` of its segment. Times always come from the
original media's own timestamps (the engine's ``FrameResult.time``), never from CVAT.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_STEP = re.compile(r"^\s*step\s*=\s*(\d+)\s*$")


def parse_frame_step(frame_filter: str | None) -> int:
    """The step of CVAT's ``frame_filter`` ("" or "step=N")."""
    if not frame_filter:
        return 1
    m = _STEP.match(frame_filter)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"unsupported CVAT frame_filter {frame_filter!r} (expected 'step=N')")
    return int(m.group(1))


@dataclass(frozen=True)
class FrameMap:
    """How a task's frames sit in its original video."""

    start: int  # media frame of task frame 0
    step: int
    size: int  # number of task frames
    deleted: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.start < 0 or self.step < 1 or self.size < 0:
            raise ValueError(f"invalid frame map: start={self.start}, step={self.step}, "
                             f"size={self.size}")

    @classmethod
    def from_meta(cls, meta) -> FrameMap:
        """From CVAT's ``DataMetaRead`` (an SDK model or a plain dict)."""
        get = meta.get if isinstance(meta, dict) else lambda k, d=None: getattr(meta, k, d)
        step = parse_frame_step(get("frame_filter", ""))
        start = int(get("start_frame", 0) or 0)
        size = get("size", None)
        stop = get("stop_frame", None)
        if size is None:
            if stop is None:
                raise ValueError("data meta has neither size nor stop_frame")
            size = (int(stop) - start) // step + 1
        return cls(start, step, int(size), frozenset(int(f) for f in get("deleted_frames", [])
                                                     or []))

    def media_frame(self, task_frame: int) -> int:
        if not 0 <= task_frame < self.size:
            raise IndexError(f"task frame {task_frame} outside 0..{self.size - 1}")
        return self.start + task_frame * self.step

    def task_frame(self, media_frame: int) -> int | None:
        """The task frame showing this media frame, or None (skipped by start/step/stop)."""
        offset = media_frame - self.start
        if offset < 0 or offset % self.step:
            return None
        i = offset // self.step
        return i if i < self.size else None

    @property
    def last_media_frame(self) -> int:
        return self.start + (self.size - 1) * self.step

    @property
    def engine_stride(self) -> int:
        """The engine's stride: it starts at the task's first media frame (``start_frame``),
        so the task's own step visits exactly the task's frames."""
        return self.step

    def task_frames(self) -> list[int]:
        """Task frames CVAT shows (deleted ones left out), in order."""
        return [i for i in range(self.size) if i not in self.deleted]


def job_frames(fmap: FrameMap, start: int, stop: int,
               included: Iterable[int] | None = None) -> list[int]:
    """Task frames of a job, in the order CVAT's automatic annotation visits them, deleted
    frames skipped: its segment's task frames ``start..stop`` (inclusive), or, for a
    ground-truth or other specific-frames job, the media frames its data meta lists as
    ``included_frames`` (cvat/apps/lambda_manager/views.py ``_get_frame_set`` walks
    ``sorted((abs - start_frame) // step for abs in segment.frame_set)``)."""
    lo, hi = max(0, start), min(stop, fmap.size - 1)
    if included is None:
        frames: Iterable[int] = range(lo, hi + 1)
    else:
        frames = sorted({tf for f in included if (tf := fmap.task_frame(int(f))) is not None
                         and lo <= tf <= hi})
    return [i for i in frames if i not in fmap.deleted]


def expected_frame(frames: Sequence[int], last: int | None, progress: int | None = None,
                   size: int | None = None) -> int | None:
    """Where CVAT most likely is: the frame after the last one answered (CVAT asks for the
    frames of a task or job in order), else the one its progress (percent done) points at."""
    if not frames:
        return None
    if last is not None:
        later = [f for f in frames if f > last]
        return later[0] if later else frames[0]  # past the end: a new run starts over
    if progress and size:
        guess = progress * size / 100.0
        return min(frames, key=lambda f: abs(f - guess))
    return frames[0]


def choose_frame(frames: Sequence[int], distances: Iterable[float], expected: int | None,
                 tolerance: float, tie: float = 1.5) -> tuple[int | None, float]:
    """Pick the frame an image shows from its distances to each candidate frame.

    Frames farther than ``tolerance`` never match. Frames within ``tie`` of the best distance
    look the same (a still scene); among them the one nearest the expected frame wins.
    Returns ``(frame or None, best distance)``.
    """
    d = np.asarray(list(distances), dtype=np.float64)
    if d.size == 0:
        return None, math.inf
    best = float(d.min())
    if best > tolerance:
        return None, best
    close = [f for f, x in zip(frames, d, strict=True) if x <= best + tie]
    if expected is None:
        return close[0], best
    return min(close, key=lambda f: (abs(f - expected), f)), best
