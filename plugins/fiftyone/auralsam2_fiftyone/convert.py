"""FiftyOne-independent conversions: engine results -> label dicts, and back to masks.

The FiftyOne modules turn these plain dicts into ``fo.Detection`` / ``fo.TemporalDetection``;
keeping the arithmetic here lets it be tested without a database.

Conventions (FiftyOne's): frame numbers are 1-based (``frame_number = engine index + 1``);
bounding boxes are ``[x, y, w, h]`` relative to the frame; an instance mask is the boolean
crop of the box; a temporal support is ``[first, last]`` frame numbers, both inclusive. What a
person reads (an interval's ``frame_range`` / ``time_range``) is in the App's timeline terms
(:mod:`.timeline`: ``#0`` is frame 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from auralsam2_core.inference.results import Hysteresis, sounding_intervals

from .timeline import interval_terms

LABEL = "sounding"
TRACK_INDEX = 1  # one sounding-object track per video (AVS ground truth is one union mask),
# unless instances are on: then each connected part is its own track
# (auralsam2_core.inference.instances)


def frame_number(index: int) -> int:
    """FiftyOne frame number of the engine's 0-based frame index."""
    return int(index) + 1


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight pixel box ``(x0, y0, x1, y1)`` (inclusive) of a boolean mask; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def detection_dict(mask: np.ndarray, *, confidence: float, predicted_iou: float,
                   review_priority: float, mask_score: float, index: int = TRACK_INDEX,
                   label: str = LABEL) -> dict | None:
    """``fo.Detection`` keyword arguments for a frame mask (None for an empty mask): the box
    is the mask's tight box, the mask is cropped to it; ``index`` is the object's track id,
    ``label`` its class (``sounding`` for the AVS model)."""
    box = mask_box(mask)
    if box is None:
        return None
    h, w = mask.shape
    x0, y0, x1, y1 = box
    return {"label": label, "index": int(index),
            "bounding_box": [x0 / w, y0 / h, (x1 - x0 + 1) / w, (y1 - y0 + 1) / h],
            "mask": np.ascontiguousarray(mask[y0:y1 + 1, x0:x1 + 1], dtype=bool),
            "confidence": float(confidence), "predicted_iou": float(predicted_iou),
            "review_priority": float(review_priority), "mask_score": float(mask_score)}


def frame_dict(result, instances: list[tuple[int, np.ndarray]] | None = None) -> dict:
    """What one frame stores: frame-level scores (kept even when the mask is empty, so
    intervals and review order can be recomputed from the dataset) and at most one
    detection; with ``instances`` (``(instance id, part mask)`` from
    :mod:`auralsam2_core.inference.instances`), one detection per instance, its ``index`` the
    instance id. ``result`` is an engine ``FrameResult``."""
    parts = [(TRACK_INDEX, result.mask)] if instances is None else instances
    scores = {"confidence": result.sounding_prob, "predicted_iou": result.predicted_iou,
              "review_priority": result.review_priority, "mask_score": result.mask_score}
    dets = [detection_dict(mask, index=i, **scores) for i, mask in parts]
    return {"frame_number": frame_number(result.index),
            "sounding_prob": round(float(result.sounding_prob), 6),
            "review_priority": round(float(result.review_priority), 6),
            "detections": [d for d in dets if d]}


def by_frame(results: Iterable, queries: int) -> Iterator[list]:
    """The engine's results grouped by frame (it yields a frame's results together): lists
    of one result (AVS) or of one per query, in the queries' order."""
    frame: list = []
    for r in results:
        frame.append(r)
        if len(frame) == max(queries, 1):
            yield frame
            frame = []


def class_frame_dict(results: Sequence, classes: Mapping[str, str]) -> dict:
    """What one frame stores with classes (Ref-AVS): ``results`` are the engine's results of
    one frame, one per query; ``classes`` maps each query to its class
    (:func:`auralsam2_core.inference.engine.class_queries`). One detection per class with a
    non-empty mask, labelled with the class, its ``index`` the class's position + 1 (its
    track); the frame keeps every class's scores, also for empty masks (``classes``,
    ``class_probs``, ``class_priorities``, in the classes' order), and as ``sounding_prob`` /
    ``review_priority`` the largest of them (what the review order and the sound panel
    read)."""
    if [r.query for r in results] != list(classes) or \
            len({r.index for r in results}) != 1:
        raise ValueError(f"expected one result per query {list(classes)} for one frame, got "
                         f"{[(r.index, r.query) for r in results]}")
    dets = [detection_dict(r.mask, index=k + 1, label=classes[r.query],
                           confidence=r.sounding_prob, predicted_iou=r.predicted_iou,
                           review_priority=r.review_priority, mask_score=r.mask_score)
            for k, r in enumerate(results)]
    probs = [round(float(r.sounding_prob), 6) for r in results]
    prios = [round(float(r.review_priority), 6) for r in results]
    return {"frame_number": frame_number(results[0].index),
            "sounding_prob": max(probs), "review_priority": max(prios),
            "classes": [classes[r.query] for r in results], "class_probs": probs,
            "class_priorities": prios, "detections": [d for d in dets if d]}


def class_frames(frames: Sequence[Mapping], name: str) -> list[dict]:
    """The frames that hold class ``name``'s scores, each as ``{frame_number,
    sounding_prob, review_priority}`` of that class (for :func:`interval_supports`)."""
    out = []
    for f in frames:
        names = f.get("classes") or ()
        if name in names:
            k = list(names).index(name)
            out.append({"frame_number": f["frame_number"],
                        "sounding_prob": f["class_probs"][k],
                        "review_priority": (f.get("class_priorities") or [0.0] * len(names))[k]})
    return out


def paste(bounding_box: Sequence[float], crop: np.ndarray, size: tuple[int, int],
          out: np.ndarray | None = None) -> np.ndarray:
    """Paste an instance mask crop back into an ``(H, W)`` frame (OR-ed into ``out``)."""
    h, w = size
    canvas = np.zeros((h, w), bool) if out is None else out
    x0 = int(round(bounding_box[0] * w))
    y0 = int(round(bounding_box[1] * h))
    crop = np.asarray(crop) != 0
    ch, cw = crop.shape
    if (ch, cw) != (int(round(bounding_box[3] * h)), int(round(bounding_box[2] * w))):
        crop = _resize_nearest(crop, int(round(bounding_box[3] * h)),
                               int(round(bounding_box[2] * w)))
        ch, cw = crop.shape
    ys, xs = slice(max(y0, 0), min(y0 + ch, h)), slice(max(x0, 0), min(x0 + cw, w))
    canvas[ys, xs] |= crop[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return canvas


def _resize_nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize (for masks from other tools whose crop != box size)."""
    if h <= 0 or w <= 0:
        return np.zeros((max(h, 0), max(w, 0)), bool)
    rows = np.minimum((np.arange(h) + 0.5) * mask.shape[0] / h, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * mask.shape[1] / w, mask.shape[1] - 1).astype(int)
    return mask[rows][:, cols]


def interval_supports(frames: Sequence[Mapping], *, fps: float, stride: int = 1,
                      last_frame: int | None = None,
                      rule: Hysteresis | None = None, label: str = LABEL) -> list[dict]:
    """Sounding intervals as ``fo.TemporalDetection`` keyword arguments: ``support`` (1-based,
    what the App draws from), ``confidence`` (mean probability), and ``frame_range`` /
    ``time_range``, the interval as the App's timeline shows it (``#0–#6``, ``0:00.00–0:01.40``).

    ``frames``: the labelled frames in order, dicts with ``frame_number`` and
    ``sounding_prob``. With ``stride > 1`` an interval also covers the unlabelled frames after
    its last labelled frame, up to the next labelled frame (at most ``stride - 1`` frames and
    never past ``last_frame``). ``label``: the intervals' class."""
    recs = [{"index": int(f["frame_number"]) - 1,
             "time": (int(f["frame_number"]) - 1) / fps if fps else 0.0,
             "sounding_prob": float(f["sounding_prob"])} for f in frames]
    labelled = [r["index"] for r in recs]
    out = []
    for iv in sounding_intervals(recs, fps or 0.0, rule or Hysteresis()):
        end = iv["end_frame"] + stride - 1
        later = [i for i in labelled if i > iv["end_frame"]]
        if later:
            end = min(end, later[0] - 1)
        if last_frame is not None:
            end = min(end, last_frame - 1)
        support = [frame_number(iv["start_frame"]), frame_number(end)]
        terms = {k: v for k, v in interval_terms(support, fps).items() if v is not None}
        out.append({"label": label, "support": support, "confidence": iv["mean_prob"],
                    **terms})
    return out


def summary(frames: Sequence[Mapping]) -> dict:
    """Sample-level numbers over the labelled frames (``sounding_prob``/``review_priority``)."""
    probs = np.array([float(f["sounding_prob"]) for f in frames], float)
    prio = np.array([float(f["review_priority"]) for f in frames], float)
    n = int(probs.size)
    return {"labelled_frames": n,
            "sounding_frames": int((probs >= 0.5).sum()),
            "sounding_fraction": round(float((probs >= 0.5).mean()), 6) if n else 0.0,
            "max_review_priority": round(float(prio.max()), 6) if n else 0.0,
            "mean_review_priority": round(float(prio.mean()), 6) if n else 0.0}


def merge_ranges(ranges: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """Union of inclusive ``[first, last]`` frame ranges, sorted and merged."""
    out: list[list[int]] = []
    for a, b in sorted((int(r[0]), int(r[1])) for r in ranges):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def in_ranges(n: int, ranges: Sequence[tuple[int, int]] | None) -> bool:
    return ranges is None or any(a <= n <= b for a, b in ranges)
