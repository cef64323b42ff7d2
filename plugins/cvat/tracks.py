"""Pre-labels as CVAT mask tracks, and replacing the adapter's own earlier tracks.

A track covers one run of consecutive (non-deleted) task frames that sound; it has a mask
shape on each of them and an ``outside`` shape on the frame after the run (CVAT's way to end a
track). Score attributes are written when the task's label defines them: ``confidence``
(sounding probability) and ``review_priority``, as numbers 0..100 (or text); mutable ones per
frame, immutable ones once per track (mean confidence, highest priority).

Own tracks: the adapter's label, ``source == "auto"`` and mask shapes only. Annotators' tracks
are ``manual``, and CVAT marks an automatic track an annotator edited ``semi-auto``; neither is
ever touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from auralsam2_core import rle

from .api import CvatApi, CvatError
from .masks import resize_mask, to_cvat_points

SCORES = {"confidence": "sounding_prob", "review_priority": "review_priority"}
MAX_SHAPES_PER_PATCH = 500


def sounding_runs(frames: Sequence[int], sounding: Callable[[int], bool]) -> list[list[int]]:
    """Runs of consecutive entries of ``frames`` for which ``sounding`` holds."""
    runs: list[list[int]] = []
    current: list[int] = []
    for f in frames:
        if sounding(f):
            current.append(f)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def attribute_value(attr, x: float) -> str | None:
    """A 0..1 score as the value of a CVAT attribute (number: 0..100 within its range)."""
    kind = str(getattr(attr.input_type, "value", attr.input_type))
    if kind == "number":
        try:
            lo, hi = float(attr.values[0]), float(attr.values[1])
        except (IndexError, TypeError, ValueError):
            lo, hi = 0.0, 100.0
        return str(int(min(max(round(100 * x), lo), hi)))
    if kind == "text":
        return f"{x:.3f}"
    return None


def _is_sounding(rec: dict | None, threshold: float) -> bool:
    return bool(rec) and rec["sounding_prob"] >= threshold and rle.area(rec["mask"]) > 0


def build_tracks(frames: Sequence[int], records: dict[int, dict], label, threshold: float,
                 width: int, height: int) -> list:
    """``LabeledTrackRequest``s for the task frames ``frames`` (in order)."""
    from cvat_sdk import models

    attrs = {a.name: a for a in (label.attributes or []) if a.name in SCORES}
    runs = sounding_runs(frames, lambda f: _is_sounding(records.get(f), threshold))
    position = {f: i for i, f in enumerate(frames)}
    tracks = []
    for run in runs:
        shapes, points = [], None
        for f in run:
            rec = records[f]
            mask = resize_mask(rle.decode(rec["mask"]), width, height)
            points = to_cvat_points(mask)
            shape_attrs = [models.AttributeValRequest(spec_id=a.id, value=v)
                           for name, a in attrs.items() if a.mutable
                           and (v := attribute_value(a, rec[SCORES[name]])) is not None]
            shapes.append(models.TrackedShapeRequest(
                type=models.ShapeType("mask"), frame=f, points=points, outside=False,
                occluded=False, z_order=0, rotation=0.0, attributes=shape_attrs))
        nxt = position[run[-1]] + 1
        if nxt < len(frames):  # end the track where the sound stops
            shapes.append(models.TrackedShapeRequest(
                type=models.ShapeType("mask"), frame=frames[nxt], points=points, outside=True,
                occluded=False, z_order=0, rotation=0.0, attributes=[]))
        summary = {"sounding_prob": float(np.mean([records[f]["sounding_prob"] for f in run])),
                   "review_priority": max(records[f]["review_priority"] for f in run)}
        track_attrs = [models.AttributeValRequest(spec_id=a.id, value=v)
                       for name, a in attrs.items() if not a.mutable
                       and (v := attribute_value(a, summary[SCORES[name]])) is not None]
        tracks.append(models.LabeledTrackRequest(
            label_id=label.id, frame=run[0], shapes=shapes, group=0, source="auto",
            attributes=track_attrs, elements=[]))
    return tracks


def is_own(track, label_id: int) -> bool:
    return (track.label_id == label_id and str(getattr(track, "source", "")) == "auto"
            and all(str(getattr(s.type, "value", s.type)) == "mask" for s in track.shapes))


def _chunks(tracks: list) -> list[list]:
    out, cur, n = [], [], 0
    for t in tracks:
        if cur and n + len(t.shapes) > MAX_SHAPES_PER_PATCH:
            out.append(cur)
            cur, n = [], 0
        cur.append(t)
        n += len(t.shapes)
    if cur:
        out.append(cur)
    return out


def replace_own_tracks(api: CvatApi, task_id: int, label_id: int, tracks: list, *,
                       attempts: int = 4, delay: float = 1.0, log=None) -> dict:
    """Delete this adapter's earlier tracks of the task, then create ``tracks``.

    The whole read-delete-create is retried on transient failures, so an answer lost after
    CVAT applied a create cannot leave duplicates: the retry deletes what it finds first.
    """
    from cvat_sdk import models

    for attempt in range(1, max(1, attempts) + 1):
        try:
            current = api.annotations(task_id)
            old = [t for t in (current.tracks or []) if is_own(t, label_id)]
            if old:
                api.patch_annotations(task_id, "delete",
                                      [models.LabeledTrackRequest(**t.to_dict()) for t in old])
            for chunk in _chunks(tracks):
                api.patch_annotations(task_id, "create", chunk)
            return {"tracks_deleted": len(old), "tracks_created": len(tracks),
                    "shapes_created": sum(len(t.shapes) for t in tracks)}
        except CvatError as e:
            if not e.transient or attempt >= attempts:
                raise
            if log:
                log("warning", f"task {task_id}: {e}; redoing the upload ({attempt}/"
                               f"{attempts - 1})")
            time.sleep(delay * attempt)
    raise AssertionError("unreachable")
