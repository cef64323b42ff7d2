"""The results format: one JSON file per video, written crash-safely.

While a video runs, frames are appended to ``<name>.partial.jsonl``; when it finishes, the
complete ``<name>.json`` is written atomically and the partial file removed. A killed run
therefore leaves no half-written results, and re-running skips finished videos and restarts
unfinished ones from their first frame (SAM2's memory cannot be resumed mid-video).

Layout of ``<name>.json`` (``format: "auralsam2-prelabel"``, ``format_version: 1``)::

    video:     path, name, width, height (display), rotation, fps, num_frames, duration,
               audio {sample_rate, channels} or null, size_bytes
    model:     package version, sam2_config, image_size, mask_choice, clip_len, stride,
               checkpoints {sam2, fuser}: {path, sha256} or null (random init)
    frames:    [{index, time, sounding_prob, predicted_iou, mask_score, review_priority,
                 mask: COCO RLE {size: [H, W], counts}}]   (frame order; index 0-based)
    intervals: [{start_frame, end_frame, start_time, end_time, mean_prob}]  (end inclusive
               for frames, exclusive for time)
    summary:   {frames, sounding_frames, intervals, seconds}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__, rle
from .engine import FrameResult
from .media import MediaInfo

FORMAT = "auralsam2-prelabel"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Hysteresis:
    """A sounding interval starts when the probability reaches ``enter`` and ends when it
    falls below ``exit``; intervals shorter than ``min_frames`` are dropped."""

    enter: float = 0.6
    exit: float = 0.4
    min_frames: int = 1


def sounding_intervals(frames: Sequence[dict], fps: float, rule: Hysteresis = Hysteresis()
                       ) -> list[dict]:
    """Intervals from per-frame ``sounding_prob`` (dicts as stored in the results)."""
    out: list[dict] = []
    start = None
    probs: list[float] = []
    step = 1.0 / fps if fps else 0.0

    def close(last: int) -> None:
        # Exclusive end: the next labelled frame's own time (right for VFR and strides).
        end = frames[last + 1]["time"] if last + 1 < len(frames) else frames[last]["time"] + step
        if last - start + 1 >= rule.min_frames:
            out.append({"start_frame": frames[start]["index"],
                        "end_frame": frames[last]["index"],
                        "start_time": frames[start]["time"],
                        "end_time": round(end, 6),
                        "mean_prob": round(float(np.mean(probs)), 4)})

    for i, f in enumerate(frames):
        p = f["sounding_prob"]
        if start is None and p >= rule.enter:
            start, probs = i, []
        elif start is not None and p < rule.exit:
            close(i - 1)
            start = None
        if start is not None:
            probs.append(p)
    if start is not None:
        close(len(frames) - 1)
    return out


def frame_record(r: FrameResult) -> dict:
    return {"index": r.index, "time": round(r.time, 6),
            "sounding_prob": round(r.sounding_prob, 5),
            "predicted_iou": round(r.predicted_iou, 5), "mask_score": round(r.mask_score, 5),
            "review_priority": round(r.review_priority, 5), "mask": rle.encode(r.mask)}


def video_record(info: MediaInfo) -> dict:
    d = asdict(info)
    path = Path(d.pop("path"))
    audio = {"sample_rate": d.pop("audio_sample_rate"), "channels": d.pop("audio_channels")}
    has_audio = d.pop("has_audio")
    return {"path": str(path.resolve()), "name": path.name, **d,
            "audio": audio if has_audio else None, "size_bytes": path.stat().st_size}


class ResultsWriter:
    """Writes one video's results: partial JSONL while running, final JSON at the end."""

    def __init__(self, out_dir: str | os.PathLike, name: str) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.final = self.dir / f"{name}.json"
        self.partial = self.dir / f"{name}.partial.jsonl"
        self._fh = None

    def is_complete(self) -> bool:
        if not self.final.is_file():
            return False
        try:
            return read_results(self.final).get("status") == "complete"
        except (OSError, ValueError):
            return False

    def __enter__(self) -> ResultsWriter:
        self._fh = open(self.partial, "w", encoding="utf-8")  # restart: drop any old partial
        self._started = time.perf_counter()
        return self

    def add(self, r: FrameResult) -> dict:
        rec = frame_record(r)
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        return rec

    def finish(self, video: dict, model: dict, rule: Hysteresis = Hysteresis()) -> dict:
        self._fh.close()
        with open(self.partial, encoding="utf-8") as fh:
            frames = [json.loads(line) for line in fh]
        intervals = sounding_intervals(frames, video.get("fps") or 0.0, rule)
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "status": "complete",
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "video": video, "model": {"package_version": __version__, **model},
               "frames": frames, "intervals": intervals,
               "summary": {"frames": len(frames),
                           "sounding_frames": sum(f["sounding_prob"] >= 0.5 for f in frames),
                           "intervals": len(intervals),
                           "seconds": round(time.perf_counter() - self._started, 2)},
               "hysteresis": asdict(rule)}
        tmp = self.final.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        os.replace(tmp, self.final)
        self.partial.unlink()
        return doc

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fh and not self._fh.closed:
            self._fh.close()


def read_results(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not an AuralSAM2 results file (format={doc.get('format')})")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has results format {doc['format_version']}; this version "
                         f"reads up to {FORMAT_VERSION}")
    return doc


def frame_masks(doc: dict) -> Iterable[tuple[int, np.ndarray]]:
    """(frame index, (H, W) bool mask) for every frame of a results document."""
    for f in doc["frames"]:
        yield f["index"], rle.decode(f["mask"])
