"""The engine's results -> Label Studio prediction results (and back, for training).

Video tasks get a ``VideoRectangle`` track (one box per keyframe, from the mask's extent,
1-based frames, percent of the displayed frame; ``enabled: false`` on the last frame of each
sounding stretch, where Label Studio stops showing the box) and ``TimelineLabels`` ranges
(1-based, inclusive frames) for the sounding stretches. Between keyframes Label Studio
interpolates linearly; a frame becomes a keyframe when interpolation would miss its box by
more than ``tolerance`` percent. Keyframe images get a ``BrushLabels`` mask.
"""

from __future__ import annotations

import hashlib

import numpy as np

from auralsam2_core import rle

from . import brush
from .labelconfig import Control

Box = tuple[float, float, float, float]  # x, y, width, height in percent
MAX_KEYFRAME_GAP = 120  # frames: bounds the cost of choosing keyframes


def mask_box(mask: np.ndarray) -> Box | None:
    """Percent box of a (H, W) mask's extent, or None when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    h, w = mask.shape
    return (100.0 * cols[0] / w, 100.0 * rows[0] / h, 100.0 * (cols[-1] + 1 - cols[0]) / w,
            100.0 * (rows[-1] + 1 - rows[0]) / h)


def _interp(a: tuple[int, Box], b: tuple[int, Box], frame: int) -> Box:
    t = (frame - a[0]) / (b[0] - a[0])
    return tuple(x + t * (y - x) for x, y in zip(a[1], b[1], strict=True))


def keyframes(boxes: list[tuple[int, Box]], tolerance: float) -> list[tuple[int, Box]]:
    """Keep the first and last box and every box that linear interpolation between the kept
    neighbours would miss by more than ``tolerance`` (percent, any coordinate)."""
    if len(boxes) <= 2 or tolerance <= 0:
        return list(boxes)
    kept = [boxes[0]]
    i = 0
    while i < len(boxes) - 1:
        j = i + 1
        while j + 1 < len(boxes) and j + 1 - i <= MAX_KEYFRAME_GAP:
            cand = boxes[j + 1]
            if all(max(abs(p - q) for p, q in zip(_interp(boxes[i], cand, f), b, strict=True))
                   <= tolerance for f, b in boxes[i + 1:j + 1]):
                j += 1
            else:
                break
        kept.append(boxes[j])
        i = j
    return kept


def _region_id(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:10]


def prediction_score(doc: dict) -> float:
    """One number per task for Label Studio's ordering: 1 - mean review priority (low =
    look first)."""
    frames = doc["frames"]
    if not frames:
        return 0.0
    return round(1.0 - float(np.mean([f["review_priority"] for f in frames])), 4)


def ls_frame(time: float, framerate: float) -> int:
    """Label Studio's 1-based frame number of a frame shown at ``time`` seconds (Label Studio
    numbers frames with the ``<Video framerate>`` of the config, whatever the file's rate)."""
    return int(time * framerate + 1e-6) + 1  # the frame whose interval holds ``time``


def video_results(doc: dict, box: Control | None, timeline: Control | None, *,
                  framerate: float, label: str | None, threshold: float = 0.5,
                  tolerance: float = 0.5) -> list[dict]:
    """Label Studio results for a video task from one results document."""
    video = doc["video"]
    frames = doc["frames"]
    fps = video.get("fps") or framerate
    n = video.get("num_frames") or (frames[-1]["index"] + 1 if frames else 0)
    duration = video.get("duration") or (n / fps if fps else 0.0)
    by_index = {f["index"]: f for f in frames}
    n_ls = max(1, int(round(duration * framerate)))
    out: list[dict] = []
    stretches = [(iv["start_frame"], iv["end_frame"], iv.get("mean_prob", 1.0))
                 for iv in doc["intervals"]]
    if box is not None:
        sequence = []
        for start, end, _ in stretches:
            boxes = []
            for i in range(start, end + 1):
                f = by_index.get(i)
                if f is None or f["sounding_prob"] < threshold:
                    continue
                b = mask_box(rle.decode(f["mask"]))
                if b is not None:
                    boxes.append((i, b))
            # Several file frames can fall on one Label Studio frame: keep the first.
            mapped: dict[int, Box] = {}
            for i, b in boxes:
                mapped.setdefault(ls_frame(by_index[i]["time"], framerate), b)
            kept = keyframes(list(mapped.items()), tolerance)
            sequence += [_seq_item(f, b, framerate, enabled=k < len(kept) - 1)
                         for k, (f, b) in enumerate(kept)]  # the stretch ends: disabled
        if sequence:
            value = {"sequence": sequence, "framesCount": n_ls, "duration": round(duration, 6)}
            lab = box.label(label)
            if lab:
                value["labels"] = [lab]
            out.append({"id": _region_id("box", video.get("name"), len(sequence)),
                        "from_name": box.name, "to_name": box.to_name,
                        "type": "videorectangle", "origin": "prediction", "value": value,
                        "score": prediction_score(doc)})
    if timeline is not None:
        lab = timeline.label(label)
        for start, end, prob in stretches:
            out.append({"id": _region_id("sounding", video.get("name"), start, end),
                        "from_name": timeline.name, "to_name": timeline.to_name,
                        "type": "timelinelabels", "origin": "prediction",
                        "value": {"ranges": [{
                            "start": ls_frame(by_index[start]["time"], framerate),
                            "end": ls_frame(by_index[end]["time"], framerate)}],
                                  "timelinelabels": [lab] if lab else []},
                        "score": round(float(prob), 4)})
    return out


def _seq_item(frame: int, b: Box, framerate: float, enabled: bool) -> dict:
    # Label Studio's editor writes time = frame / framerate; so do we.
    return {"frame": frame, "x": round(b[0], 4), "y": round(b[1], 4),
            "width": round(b[2], 4), "height": round(b[3], 4), "rotation": 0,
            "enabled": enabled, "time": round(frame / framerate, 6)}


def brush_results(mask: np.ndarray, sounding_prob: float, control: Control, *,
                  label: str | None, threshold: float = 0.5) -> list[dict]:
    """A keyframe image's mask as one ``BrushLabels`` region (none when not sounding)."""
    if sounding_prob < threshold or not mask.any():
        return []
    h, w = mask.shape
    lab = control.label(label)
    return [{"id": _region_id("mask", h, w, int(mask.sum())), "from_name": control.name,
             "to_name": control.to_name, "type": "brushlabels", "origin": "prediction",
             "original_width": w, "original_height": h, "image_rotation": 0,
             "value": {"format": "rle", "rle": brush.encode(mask),
                       "brushlabels": [lab] if lab else []},
             "score": round(float(sounding_prob), 4)}]
