"""Pre-labels as CVAT mask shapes, one per sounding frame (or, as an option, polygon tracks),
written job by job.

Why shapes and not tracks: CVAT has no mask tracks. Its UI refuses to open a job holding one
(cvat-core/src/annotations-objects/index.ts ``trackFactory``: ``An unexpected type of track
"mask"``) and its server cannot interpolate them (cvat/apps/dataset_manager/annotation.py
``TrackManager`` raises ``NotImplementedError``, so dataset exports fail and a track crossing a
job boundary fails the upload). A mask shape per frame is what CVAT's own Automatic annotation
writes too.

Why job by job: CVAT stores annotations per job; overlapping segments each hold their own copy
of a frame's objects. Reading, deleting and creating in each job keeps the ids exact and
never touches ground-truth or consensus jobs (only ``annotation`` jobs are written).

Polygon tracks (``AURALSAM2_CVAT_UPLOAD=polygon-tracks``) are for users who want CVAT's
interpolation: one track per stretch of consecutive sounding frames, a polygon (the outline of
the mask's largest part, see polygons.py) on each of its frames and an ``outside`` shape on the
frame after it. Each job gets the part of a track on its frames (every frame is a keyframe, so
no interpolation is needed to cut it).

Instances (``AURALSAM2_INSTANCES=1``): each connected part of a frame's mask is its own mask
shape; with polygon tracks, each instance (parts tracked across frames, see
:mod:`auralsam2_core.inference.instances`) gets its own tracks, one per stretch of frames it is on.

Own annotations: the adapter's label, ``source == "auto"``, and type ``mask`` (shapes) or
``polygon`` (tracks); both are replaced on every upload, whichever form it writes. Annotators'
objects are ``manual``, and CVAT marks an automatic one an annotator edited ``semi-auto``;
neither is ever touched. Score attributes are written when the task's label defines them:
``confidence`` (sounding probability) and ``review_priority``, as numbers within the
attribute's range and step (or as text); tracks carry mutable ones per frame and immutable ones
once per track (mean confidence, highest priority).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from auralsam2_core.inference import rle
from auralsam2_core.inference.instances import connected_parts, instance_tracks

from .api import CvatApi, CvatError
from .masks import resize_mask, to_cvat_points
from .polygons import outline

UPLOAD_FORMS = ("shapes", "polygon-tracks")

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
                 width: int, height: int, instance_min_area: float | None = None
                 ) -> dict[int, list]:
    """``LabeledShapeRequest`` mask shapes of the sounding frames among ``frames``, by frame:
    one per frame, or with ``instance_min_area`` one per connected part."""
    from cvat_sdk import models

    attrs = {a.name: a for a in (label.attributes or []) if a.name in SCORES}
    shapes = {}
    for f in frames:
        rec = records.get(f)
        if not _is_sounding(rec, threshold):
            continue
        mask = resize_mask(rle.decode(rec["mask"]), width, height)
        parts = [mask] if instance_min_area is None else connected_parts(mask,
                                                                         instance_min_area)
        values = [models.AttributeValRequest(spec_id=a.id, value=v) for name, a in attrs.items()
                  if (v := attribute_value(a, rec[SCORES[name]])) is not None]
        if parts:
            shapes[f] = [models.LabeledShapeRequest(
                type=models.ShapeType("mask"), frame=f, label_id=label.id,
                points=to_cvat_points(part), source="auto", occluded=False, outside=False,
                z_order=0, rotation=0.0, group=0, attributes=list(values), elements=[])
                for part in parts]
    return shapes


@dataclass(frozen=True)
class PolygonRun:
    """One stretch of consecutive sounding frames: a polygon per frame, ``end`` the frame of
    its ``outside`` shape (None when it lasts to the task's last frame)."""

    shapes: tuple  # TrackedShapeRequest, by frame
    end: int | None
    attributes: tuple  # AttributeValRequest of the track
    label_id: int | None = None  # the task label it goes on


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


def build_polygon_runs(frames: Sequence[int], records: dict[int, dict], label,
                       threshold: float, width: int, height: int,
                       instance_min_area: float | None = None) -> list[PolygonRun]:
    """Polygon tracks, before they are cut into jobs (with ``instance_min_area``: each
    instance's own tracks, instance after instance)."""
    if instance_min_area is None:
        polygons = {}
        for f in frames:
            rec = records.get(f)
            if _is_sounding(rec, threshold):
                points = outline(resize_mask(rle.decode(rec["mask"]), width, height))
                if points is not None:
                    polygons[f] = points
        return _polygon_runs(frames, polygons, records, label)

    def masks():
        for f in frames:
            rec = records.get(f)
            yield f, (resize_mask(rle.decode(rec["mask"]), width, height)
                      if _is_sounding(rec, threshold) else np.zeros((height, width), bool))

    tracks = instance_tracks(masks(), min_area=instance_min_area, keep=outline)
    return [run for track in tracks.values() for run in _polygon_runs(
        frames, {f: points for f, points in track if points is not None}, records, label)]


def _polygon_runs(frames: Sequence[int], polygons: dict[int, list[float]],
                  records: dict[int, dict], label) -> list[PolygonRun]:
    """The runs of consecutive ``frames`` that have a polygon, as tracks."""
    from cvat_sdk import models

    attrs = {a.name: a for a in (label.attributes or []) if a.name in SCORES}
    position = {f: i for i, f in enumerate(frames)}
    runs = []
    for run in sounding_runs(frames, lambda f: f in polygons):
        shapes = []
        for f in run:
            values = [models.AttributeValRequest(spec_id=a.id, value=v)
                      for name, a in attrs.items() if a.mutable
                      and (v := attribute_value(a, records[f][SCORES[name]])) is not None]
            shapes.append(models.TrackedShapeRequest(
                type=models.ShapeType("polygon"), frame=f, points=polygons[f], outside=False,
                occluded=False, z_order=0, rotation=0.0, attributes=values))
        nxt = position[run[-1]] + 1
        summary = {"sounding_prob": float(np.mean([records[f]["sounding_prob"] for f in run])),
                   "review_priority": max(records[f]["review_priority"] for f in run)}
        track_attrs = [models.AttributeValRequest(spec_id=a.id, value=v)
                       for name, a in attrs.items() if not a.mutable
                       and (v := attribute_value(a, summary[SCORES[name]])) is not None]
        runs.append(PolygonRun(tuple(shapes), frames[nxt] if nxt < len(frames) else None,
                               tuple(track_attrs), label.id))
    return runs


def job_tracks(runs: Sequence[PolygonRun], job: JobFrames, label_id: int | None = None
               ) -> list:
    """The parts of the polygon tracks on a job's frames, as ``LabeledTrackRequest``s (on
    each run's label, else ``label_id``)."""
    from cvat_sdk import models

    frames = set(job.frames)
    out = []
    for run in runs:
        shapes = [s for s in run.shapes if s.frame in frames]
        if not shapes:
            continue
        if run.end is not None and run.end in frames and shapes[-1] is run.shapes[-1]:
            last = shapes[-1]
            shapes.append(models.TrackedShapeRequest(
                type=models.ShapeType("polygon"), frame=run.end, points=last.points,
                outside=True, occluded=False, z_order=0, rotation=0.0, attributes=[]))
        out.append(models.LabeledTrackRequest(
            label_id=run.label_id if run.label_id is not None else label_id,
            frame=shapes[0].frame, shapes=shapes, group=0, source="auto",
            attributes=list(run.attributes), elements=[]))
    return out


def _kind(obj) -> str:
    return str(getattr(obj.type, "value", obj.type))


def _ids(label_ids: int | Collection[int]) -> Collection[int]:
    return (label_ids,) if isinstance(label_ids, int) else label_ids


def is_own(shape, label_ids: int | Collection[int]) -> bool:
    """A mask shape this adapter made (or CVAT's Automatic annotation, on its labels)."""
    return (shape.label_id in _ids(label_ids) and str(getattr(shape, "source", "")) == "auto"
            and _kind(shape) == "mask")


def is_own_track(track, label_ids: int | Collection[int]) -> bool:
    """A polygon track this adapter made."""
    return (track.label_id in _ids(label_ids) and str(getattr(track, "source", "")) == "auto"
            and bool(track.shapes) and all(_kind(s) == "polygon" for s in track.shapes))


def _chunks(items: list, size: int = MAX_SHAPES_PER_PATCH) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _track_chunks(tracks: list) -> list[list]:
    out, cur, n = [], [], 0
    for t in tracks:
        if cur and n + len(t.shapes) > MAX_SHAPES_PER_PATCH:
            out.append(cur)
            cur, n = [], 0
        cur.append(t)
        n += len(t.shapes)
    return out + ([cur] if cur else [])


def replace_own(api: CvatApi, label_ids: int | Collection[int], jobs: Sequence[JobFrames], *,
                shapes: dict[int, list] | None = None,
                runs: Sequence[PolygonRun] | None = None, attempts: int = 4,
                delay: float = 1.0, log=None) -> dict:
    """In each job: delete this adapter's earlier masks and polygon tracks (on ``label_ids``,
    the labels it writes), then create the mask ``shapes`` of its frames, or the parts of the
    polygon tracks ``runs`` on them.

    Each job's read-delete-create is retried as a whole on transient failures, so an answer
    lost after CVAT applied a create cannot leave duplicates: the retry deletes what it finds
    first.
    """
    report = {"jobs": len(jobs), "shapes_deleted": 0, "shapes_created": 0,
              "tracks_deleted": 0, "tracks_created": 0}
    for job in jobs:
        new_shapes = [s for f in job.frames for s in shapes.get(f, ())] if shapes else []
        new_tracks = job_tracks(runs, job) if runs else []
        done = _replace_in_job(api, label_ids, job, new_shapes, new_tracks, attempts, delay, log)
        for key, n in zip(("shapes_deleted", "tracks_deleted"), done, strict=True):
            report[key] += n
        report["shapes_created"] += len(new_shapes)
        report["tracks_created"] += len(new_tracks)
    return report


def _replace_in_job(api: CvatApi, label_ids: int | Collection[int], job: JobFrames,
                    new_shapes: list, new_tracks: list, attempts: int, delay: float,
                    log) -> tuple[int, int]:
    from cvat_sdk import models

    for attempt in range(1, max(1, attempts) + 1):
        try:
            current = api.job_annotations(job.job_id)
            old = [s for s in (current.shapes or []) if is_own(s, label_ids)]
            old_tracks = [t for t in (current.tracks or []) if is_own_track(t, label_ids)]
            for chunk in _chunks(old):
                api.patch_job(job.job_id, "delete",
                              shapes=[models.LabeledShapeRequest(**s.to_dict()) for s in chunk])
            for chunk in _track_chunks(old_tracks):
                api.patch_job(job.job_id, "delete",
                              tracks=[models.LabeledTrackRequest(**t.to_dict()) for t in chunk])
            for chunk in _chunks(new_shapes):
                api.patch_job(job.job_id, "create", shapes=chunk)
            for chunk in _track_chunks(new_tracks):
                api.patch_job(job.job_id, "create", tracks=chunk)
            return len(old), len(old_tracks)
        except CvatError as e:
            if not e.transient or attempt >= attempts:
                raise
            if log:
                log("warning", f"job {job.job_id}: {e}; redoing its upload ({attempt}/"
                               f"{attempts - 1})")
            time.sleep(delay * attempt)
    raise AssertionError("unreachable")
