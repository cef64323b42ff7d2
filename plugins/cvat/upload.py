"""Pre-labels as CVAT mask shapes, one per sounding frame, written job by job.

Why shapes and not tracks: CVAT has no mask tracks. Its UI refuses to open a job holding one
(cvat-core/src/annotations-objects/index.ts ``trackFactory``: ``An unexpected type of track
"mask"``) and its server cannot interpolate them (cvat/apps/dataset_manager/annotation.py
``TrackManager`` raises ``NotImplementedError``, so dataset exports fail and a track crossing a
job boundary fails the upload). A mask shape per frame is what CVAT's own Automatic annotation
writes too.

Why job by job: CVAT stores annotations per job; overlapping segments each hold their own copy
of a frame's objects. Reading, deleting and creating in each job keeps the ids exact and
never touches ground-truth or consensus jobs (only ``annotation`` jobs are written).

Own shapes: the adapter's label, ``source == "auto"`` and type ``mask``. Annotators' shapes are
``manual``, and CVAT marks an automatic shape an annotator edited ``semi-auto``; neither is ever
touched. Score attributes are written when the task's label defines them: ``confidence``
(sounding probability) and ``review_priority``, as numbers within the attribute's range and
step (or as text).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from auralsam2_core import rle

from .api import CvatApi, CvatError
from .masks import resize_mask, to_cvat_points

SCORES = {"confidence": "sounding_prob", "review_priority": "review_priority"}
MAX_SHAPES_PER_PATCH = 500


@dataclass(frozen=True)
class JobFrames:
    """An annotation job and the task frames it holds."""

    job_id: int
    frames: tuple[int, ...]


def number_range(attr) -> tuple[int, int, int] | None:
    """``(min, max, step)`` of a CVAT number attribute, read the way CVAT checks a detector's
    values (cvat/apps/lambda_manager/views.py ``check_attr_value``: ``map(int, values)``);
    None when CVAT itself could not read them."""
    try:
        lo, hi, step = (int(str(v)) for v in list(attr.values)[:3])
    except (TypeError, ValueError):
        return None
    if step < 1 or hi < lo:
        return None
    return lo, hi, step


def attribute_value(attr, x: float) -> str | None:
    """A 0..1 score as the value of a CVAT attribute: a number attribute gets the score placed
    on its range (``0..100`` step 1: ``100 * x``) and snapped to its step, as CVAT requires
    (``min <= v <= max`` and ``(v - min) % step == 0``); text gets the score; other kinds (and a
    number attribute whose bounds CVAT cannot read) get nothing."""
    kind = str(getattr(attr.input_type, "value", attr.input_type))
    if kind == "number":
        bounds = number_range(attr)
        if bounds is None:
            return None
        lo, hi, step = bounds
        v = lo + round(min(max(x, 0.0), 1.0) * (hi - lo) / step) * step
        return str(int(v if v <= hi else v - step))
    if kind == "text":
        return f"{x:.3f}"
    return None


def _is_sounding(rec: dict | None, threshold: float) -> bool:
    return bool(rec) and rec["sounding_prob"] >= threshold and rle.area(rec["mask"]) > 0


def build_shapes(frames: Sequence[int], records: dict[int, dict], label, threshold: float,
                 width: int, height: int) -> dict[int, object]:
    """``LabeledShapeRequest`` mask shapes of the sounding frames among ``frames``, by frame."""
    from cvat_sdk import models

    attrs = {a.name: a for a in (label.attributes or []) if a.name in SCORES}
    shapes = {}
    for f in frames:
        rec = records.get(f)
        if not _is_sounding(rec, threshold):
            continue
        mask = resize_mask(rle.decode(rec["mask"]), width, height)
        values = [models.AttributeValRequest(spec_id=a.id, value=v) for name, a in attrs.items()
                  if (v := attribute_value(a, rec[SCORES[name]])) is not None]
        shapes[f] = models.LabeledShapeRequest(
            type=models.ShapeType("mask"), frame=f, label_id=label.id,
            points=to_cvat_points(mask), source="auto", occluded=False, outside=False,
            z_order=0, rotation=0.0, group=0, attributes=values, elements=[])
    return shapes


def is_own(shape, label_id: int) -> bool:
    return (shape.label_id == label_id and str(getattr(shape, "source", "")) == "auto"
            and str(getattr(shape.type, "value", shape.type)) == "mask")


def _chunks(items: list, size: int = MAX_SHAPES_PER_PATCH) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def replace_own_shapes(api: CvatApi, label_id: int, jobs: Sequence[JobFrames],
                       shapes: dict[int, object], *, attempts: int = 4, delay: float = 1.0,
                       log=None) -> dict:
    """In each job: delete this adapter's earlier shapes, then create those of its frames.

    Each job's read-delete-create is retried as a whole on transient failures, so an answer
    lost after CVAT applied a create cannot leave duplicates: the retry deletes what it finds
    first.
    """
    report = {"jobs": len(jobs), "shapes_deleted": 0, "shapes_created": 0}
    for job in jobs:
        done = _replace_in_job(api, label_id, job, shapes, attempts, delay, log)
        report["shapes_deleted"] += done[0]
        report["shapes_created"] += done[1]
    return report


def _replace_in_job(api: CvatApi, label_id: int, job: JobFrames, shapes: dict[int, object],
                    attempts: int, delay: float, log) -> tuple[int, int]:
    from cvat_sdk import models

    new = [shapes[f] for f in job.frames if f in shapes]
    for attempt in range(1, max(1, attempts) + 1):
        try:
            current = api.job_annotations(job.job_id)
            old = [s for s in (current.shapes or []) if is_own(s, label_id)]
            for chunk in _chunks(old):
                api.patch_job_shapes(job.job_id, "delete",
                                     [models.LabeledShapeRequest(**s.to_dict()) for s in chunk])
            for chunk in _chunks(new):
                api.patch_job_shapes(job.job_id, "create", chunk)
            return len(old), len(new)
        except CvatError as e:
            if not e.transient or attempt >= attempts:
                raise
            if log:
                log("warning", f"job {job.job_id}: {e}; redoing its upload ({attempt}/"
                               f"{attempts - 1})")
            time.sleep(delay * attempt)
    raise AssertionError("unreachable")
