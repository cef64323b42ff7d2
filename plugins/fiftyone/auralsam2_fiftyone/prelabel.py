"""Pre-label the videos of a FiftyOne collection: the I/O around
``auralsam2_core.inference.engine``.

Per video: ``probe`` the file, stream :class:`~auralsam2_core.inference.engine.FrameResult` from the
engine, write ``frames.<label_field>`` in chunks through a view that selects only that field
(no other field is read or written), then recompute the sample's intervals and summary from
what is stored. Frame numbers come from decoding the media (engine index + 1), never from the
frame documents that happen to exist. Clips views are pre-labelled on their support only
(several clips of one video share one engine pass).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import fiftyone as fo
from auralsam2_core.inference.engine import PrelabelOptions, check_model_options, class_queries
from auralsam2_core.inference.instances import InstanceTracker
from auralsam2_core.media.video import MediaError, probe
from auralsam2_core.serving.engines import as_engine
from fiftyone.core.clips import ClipsView

from . import convert, fields, labels

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class PrelabelSettings:
    label_field: str = "auralsam2"
    stride: int = 1
    clip_len: int = 5
    no_audio: str = "error"  # "error": the sample fails; "silent": every frame not sounding
    audio_track: int | None = None  # index among the audio tracks; None: the default track
    overwrite: bool = False  # re-run finished samples and write into fields we did not create
    chunk_frames: int = 64  # frames held in memory before they are saved
    #: split each frame's mask into its connected parts of at least this fraction of the frame,
    #: one detection each, tracked across frames (``index``); None: one detection per frame
    instance_min_area: float | None = None
    #: the project's classes to pre-label (Ref-AVS model): names, or ``(name, hint)`` pairs
    #: whose hint is the expression the model reads; each class gets its own track and its
    #: detections its label. Empty: the AVS model's one ``sounding`` label.
    classes: tuple = ()

    def __post_init__(self) -> None:
        if self.instance_min_area is not None and not 0 <= self.instance_min_area < 1:
            raise ValueError(f"the minimum instance area is a fraction of the frame in [0, 1), "
                             f"got {self.instance_min_area}")
        object.__setattr__(self, "classes", tuple(
            c if isinstance(c, str) else tuple(c) for c in self.classes or ()))
        self.class_of_query  # noqa: B018 - refuses bad classes now, before any run
        if self.classes and self.instance_min_area is not None:
            raise ValueError("instances and classes cannot be combined yet: with classes, "
                             "each class is one detection per frame")

    @property
    def class_of_query(self) -> dict[str, str]:
        """``{query: class name}`` the engine runs (empty without classes)."""
        return class_queries(self.classes) if self.classes else {}

    @property
    def class_names(self) -> list[str] | None:
        return list(self.class_of_query.values()) or None


@dataclass
class Outcome:
    sample_id: str
    filepath: str
    status: str  # "complete" | "partial" (clip supports only) | "skipped" | "failed"
    frames: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class _Unit:
    sample_id: str
    filepath: str
    ranges: list[tuple[int, int]] | None = None  # clip supports; None = the whole video
    outcome: Outcome | None = field(default=None, repr=False)


def check_label_field(name: str) -> str:
    name = (name or "").strip()
    if not name or "." in name or name.startswith("_") or name in ("frames", "filepath"):
        raise ValueError(f"invalid label field {name!r}: use a plain top-level field name")
    return name


def _units(collection) -> list[_Unit]:
    if collection.media_type != "video":
        raise ValueError(f"AuralSAM2 pre-labels videos; this collection holds "
                         f"{collection.media_type} samples (run it on the videos or a clips "
                         "view, not a frames or patches view)")
    if isinstance(collection, ClipsView):
        ranges: dict[str, list] = {}
        for sid, support in zip(*collection.values(["sample_id", "support"]), strict=True):
            ranges.setdefault(str(sid), []).append(support)
        root = collection._root_dataset  # the videos the clips were cut from
        paths = dict(zip(*root.select(list(ranges)).values(["id", "filepath"]), strict=True))
        return [_Unit(sid, paths[sid], convert.merge_ranges(r)) for sid, r in ranges.items()]
    ids, paths = collection.values(["id", "filepath"])
    return [_Unit(i, p) for i, p in zip(ids, paths, strict=True)]


def prelabel_collection(collection, model, settings: PrelabelSettings | None = None, *,
                        model_description: str = "", on_progress: ProgressFn | None = None
                        ) -> list[Outcome]:
    """Pre-label every video of ``collection`` (dataset, view or clips view) with ``model`` (an
    AuralSAM2, or an engine from :mod:`auralsam2_core.serving.engines`: the shared service); returns
    one
    :class:`Outcome` per source video. A failing video is recorded (``<field>_summary.status
    == "failed"`` with the error) and the others still run. Raises
    :class:`~auralsam2_fiftyone.fields.FieldConflict` before writing anything when a target
    field exists that this plugin did not create and ``overwrite`` is false."""
    settings = settings or PrelabelSettings()
    lf = check_label_field(settings.label_field)
    opts = options(settings)
    if hasattr(model, "variant"):  # a model here (an engine checks when it runs)
        check_model_options(model, opts)
    units = _units(collection)
    dataset = collection._root_dataset
    fields.claim(dataset, fields.prelabel_targets(lf, classes=bool(settings.classes)),
                 overwrite=settings.overwrite, owner_info={"label_field": lf})
    status = _statuses(dataset, [u.sample_id for u in units], lf, settings)
    progress = on_progress or (lambda fraction, label: None)
    for i, unit in enumerate(units):
        def frame_progress(frac, i=i, unit=unit):
            progress((i + frac) / len(units), f"video {i + 1}/{len(units)}: "
                     f"{unit.filepath.rsplit('/', 1)[-1]}")

        if not settings.overwrite and _finished(dataset, unit, status.get(unit.sample_id),
                                                 lf, settings.stride):
            unit.outcome = Outcome(unit.sample_id, unit.filepath, "skipped")
        else:
            unit.outcome = _run_one(dataset, model, unit, lf, opts, settings,
                                    model_description, frame_progress,
                                    stale=status.get(unit.sample_id) == "stale")
        progress((i + 1) / len(units), f"{i + 1}/{len(units)} videos")
    return [u.outcome for u in units]


def options(settings: PrelabelSettings) -> PrelabelOptions:
    """The engine's options for ``settings``: with classes, their queries (and the Ref-AVS
    clip length, T = 10, unless ``clip_len`` is set to another value than the AVS default)."""
    queries = tuple(settings.class_of_query)
    clip_len = None if queries and settings.clip_len == PrelabelSettings.clip_len \
        else settings.clip_len
    return PrelabelOptions(clip_len=clip_len, stride=settings.stride, no_audio=settings.no_audio,
                           audio_track=settings.audio_track, queries=queries)


@dataclass(frozen=True)
class RunPlan:
    """What a run with ``settings`` would do to a collection, before it runs (for the form)."""

    videos: int  # source videos in the collection (a clips view counts the videos it cuts)
    finished: int  # videos that already have results: a run skips them (overwrite off)
    frames: int  # frames to pre-label in the other videos (known from metadata, per stride)
    unknown: int  # videos to pre-label whose frame count is not in their metadata

    @property
    def to_run(self) -> int:
        return self.videos - self.finished


def plan_run(collection, settings: PrelabelSettings | None = None) -> RunPlan:
    """Count what :func:`prelabel_collection` would skip and pre-label; reads no media."""
    settings = settings or PrelabelSettings()
    lf = check_label_field(settings.label_field)
    units = _units(collection)
    dataset = collection._root_dataset
    status = {}
    if not settings.overwrite and dataset.get_field(f"{lf}_summary") is not None:
        status = _statuses(dataset, [u.sample_id for u in units], lf, settings)
    todo = [u for u in units
            if not (status and _finished(dataset, u, status.get(u.sample_id), lf,
                                         settings.stride))]
    counts = dict(zip(*dataset.select([u.sample_id for u in todo]).values(
        ["id", "metadata.total_frame_count"]), strict=True)) if todo else {}
    frames = unknown = 0
    for u in todo:
        n = sum(b - a + 1 for a, b in u.ranges) if u.ranges else counts.get(u.sample_id)
        if n:
            frames += -(-n // settings.stride)
        else:
            unknown += 1
    return RunPlan(len(units), len(units) - len(todo), frames, unknown)


def _statuses(dataset, ids: list[str], lf: str, settings: PrelabelSettings
              ) -> dict[str, str | None]:
    """Each sample's run status; ``"stale"`` where its results hold other classes (or read
    other queries) than ``settings`` (none: the AVS model's ``sounding``): a run replaces
    them."""
    want = (settings.class_names, list(settings.class_of_query) or None)
    got_ids, got, had, read = dataset.select(ids).values(
        ["id", f"{lf}_summary.status", f"{lf}_summary.classes", f"{lf}_summary.queries"])
    return {i: ("stale" if s is not None and (h or None, q or None) != want else s)
            for i, s, h, q in zip(got_ids, got, had, read, strict=True)}


def _labelled(dataset, sample_id: str, lf: str) -> list[dict]:
    """The frames of one sample that hold a pre-label: frame number and frame-level scores
    (no masks are loaded)."""
    view = dataset.select(sample_id)
    numbers, probs, prios, names, cprobs, cprios = (v[0] for v in view.values(
        ["frames.frame_number", f"frames.{lf}.sounding_prob", f"frames.{lf}.review_priority",
         f"frames.{lf}.classes", f"frames.{lf}.class_probs", f"frames.{lf}.class_priorities"]))
    return [{"frame_number": n, "sounding_prob": p, "review_priority": r or 0.0,
             **({"classes": c, "class_probs": cp, "class_priorities": cr} if c else {})}
            for n, p, r, c, cp, cr in zip(numbers, probs, prios, names, cprobs, cprios,
                                          strict=True) if p is not None]


def _finished(dataset, unit: _Unit, status: str | None, lf: str, stride: int) -> bool:
    if status == "complete":
        return True
    if unit.ranges is None or status != "partial":
        return False
    have = {f["frame_number"] for f in _labelled(dataset, unit.sample_id, lf)}
    need = {n for a, b in unit.ranges for n in range(a, b + 1) if (n - 1) % stride == 0}
    return need <= have


def _run_one(dataset, model, unit: _Unit, lf: str, opts: PrelabelOptions,
             settings: PrelabelSettings, model_description: str, progress,
             stale: bool = False) -> Outcome:
    t0 = time.perf_counter()
    classes = settings.class_of_query
    sample_view = dataset.select(unit.sample_id)
    written = 0
    try:
        info = probe(unit.filepath)
        total = -(-info.num_frames // opts.stride) if info.num_frames else None
        writer = sample_view.select_fields(f"frames.{lf}").first()
        pending: dict[int, dict] = {}
        last = max(b for _, b in unit.ranges) if unit.ranges else None
        results = as_engine(model).frames(unit.filepath, opts, info=info, on_progress=(
            (lambda n: progress(min(n / total, 1.0))) if total else None))
        tracker = None if settings.instance_min_area is None else \
            InstanceTracker(min_area=settings.instance_min_area)
        instance_ids: set[int] = set()
        for frame in convert.by_frame(results, len(opts.queries)):
            n = convert.frame_number(frame[0].index)
            if last is not None and n > last:
                results.close()
                break
            if not convert.in_ranges(n, unit.ranges):
                continue
            if written == 0 and (unit.ranges is None or stale):
                # a full re-run, or one with other classes, replaces every frame
                sample_view.clear_frame_field(lf)
                writer = sample_view.select_fields(f"frames.{lf}").first()
            if classes:
                doc = convert.class_frame_dict(frame, classes)
            else:
                parts = None if tracker is None else tracker.update(frame[0].mask)
                instance_ids.update(i for i, _ in parts or ())
                doc = convert.frame_dict(frame[0], parts)
            pending[n] = {lf: labels.detections(doc)}
            written += 1
            if len(pending) >= settings.chunk_frames:
                writer.frames.merge(pending)
                writer.save()
                pending = {}
        if pending:
            writer.frames.merge(pending)
            writer.save()
    except (MediaError, ValueError, RuntimeError, OSError) as e:
        _set_summary(dataset, unit.sample_id, lf, {
            "status": "failed", "error": f"{type(e).__name__}: {e}",
            "model": model_description, "frames_written": written})
        return Outcome(unit.sample_id, unit.filepath, "failed", written, str(e),
                       round(time.perf_counter() - t0, 2))
    whole = unit.ranges is None or (info.num_frames is not None and convert.merge_ranges(
        unit.ranges) == [(1, info.num_frames)])
    frames = _labelled(dataset, unit.sample_id, lf)
    last_frame = info.num_frames or (frames[-1]["frame_number"] + opts.stride - 1
                                     if frames else None)
    if classes:
        supports = sorted((s for name in classes.values()
                           for s in convert.interval_supports(
                               convert.class_frames(frames, name), fps=info.fps,
                               stride=opts.stride, last_frame=last_frame, label=name)),
                          key=lambda s: (s["support"][0], list(classes.values()).index(
                              s["label"])))
    else:
        supports = convert.interval_supports(frames, fps=info.fps, stride=opts.stride,
                                             last_frame=last_frame)
    dataset.set_values(f"{lf}_intervals", {unit.sample_id: labels.temporal_detections(supports)},
                       key_field="id")
    summary = {"status": "complete" if whole else "partial", "error": None,
               **convert.summary(frames), "intervals": len(supports),
               "media_frames": info.num_frames, "fps": round(info.fps, 6),
               "stride": opts.stride, "model": model_description,
               "seconds": round(time.perf_counter() - t0, 2)}
    if tracker is not None:
        summary["instances"] = len(instance_ids)
    if classes:
        summary["classes"] = list(classes.values())
        summary["queries"] = list(classes)
    if not whole:
        summary["frame_ranges"] = [list(r) for r in unit.ranges]
    _set_summary(dataset, unit.sample_id, lf, summary)
    return Outcome(unit.sample_id, unit.filepath, summary["status"], written,
                   seconds=summary["seconds"])


def _set_summary(dataset, sample_id: str, lf: str, summary: dict) -> None:
    dataset.set_values(f"{lf}_summary", {sample_id: fo.DynamicEmbeddedDocument(**summary)},
                       key_field="id", dynamic=True)
