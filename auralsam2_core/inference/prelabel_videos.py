"""Pre-label many videos into a results directory: resume, progress, per-video isolation.

This is what ``auralsam2 prelabel`` runs; adapters that want files rather than a stream of
:class:`~auralsam2_core.inference.engine.FrameResult` call it too.

Re-runs are safe: each video's results name is locked while it is written (a second run
refuses it), results are reused only when made from the same file with the same options and
model (else redone, saying why), and a name already holding another video's results is never
overwritten (the video gets a name with a hash of its path instead).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from auralsam2_core.inference.engine import PrelabelOptions, prelabel, probe_for
from auralsam2_core.inference.feature_cache import FeatureCache
from auralsam2_core.inference.results import (
    Hysteresis,
    OutputTaken,
    ResultsWriter,
    intervals_stale,
    model_record,
    read_results,
    video_record,
    why_stale,
    with_intervals,
)
from auralsam2_core.media.video import MediaError, MediaInfo, file_problem, probe
from auralsam2_core.modeling.model import AuralSAM2, PointPrompt
from auralsam2_core.serving.engines import LocalEngine

# A results name, so that its longest sibling file (the overlay being written,
# .<name>_overlay.mp4.<8 hex>.tmp.mp4: 30 more bytes)
# stays within the 255 bytes a file name may have on Linux file systems.
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class OutputOptions:
    png_masks: bool = False
    overlay: bool = False
    timeline: bool = False
    overwrite: bool = False  # redo videos whose results are up to date
    hysteresis: Hysteresis = field(default_factory=Hysteresis)


@dataclass
class VideoOutcome:
    video: Path
    status: str  # "done", "skipped" (up-to-date results reused) or "failed"
    results: Path | None = None
    error: str | None = None
    note: str | None = None  # why results were redone, or what was reused


class OutputDirError(ValueError):
    """The results folder cannot be created or written."""


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create the results folder, or raise :class:`OutputDirError` saying why it cannot be
    used (a file, ``/dev/null``, read-only...) before any model is loaded."""
    out = Path(out_dir)
    try:
        if out.exists() and not out.is_dir():
            kind = "a regular file" if out.is_file() else _kind(out.stat().st_mode)
            raise OutputDirError(f"results folder {out} is {kind}, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OutputDirError(f"cannot write results to {out}: {e.strerror or e}") from e
    return out


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))
    return next((k for is_kind, k in kinds if is_kind(mode)), "another kind of file")


def _os_message(e: OSError) -> str:
    if e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return e.strerror or str(e)


def name_candidates(video: Path) -> list[str]:
    """Results names for ``video``, preferred first: its file stem, then the stem and a
    short hash of its full path (for when another video with that stem has the first).
    A stem too long for the file system is cut to fit and always gets the hash."""
    digest = hashlib.sha1(os.fsencode(video.resolve())).hexdigest()[:8]
    raw = os.fsencode(video.stem)
    if len(raw) <= MAX_NAME_BYTES:
        return [video.stem, f"{video.stem}-{digest}"]
    cut = raw[:MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", errors="ignore")
    return [f"{cut}-{digest}"]


@dataclass
class PlannedOutput:
    video: Path
    name: str | None  # None when ``error`` says why the video has no usable name
    error: str | None = None
    same_as: int | None = None  # position of an earlier entry for the same file


def _owner(final: Path) -> str | None:
    """Whose results ``final`` holds: "" when free, the video path, None for a file that is
    not results (never overwritten)."""
    if not final.exists():
        return ""
    try:
        doc = read_results(final)
    except (OSError, ValueError):
        return None
    return str((doc.get("video") or {}).get("path"))


def plan_outputs(out_dir: str | os.PathLike, videos: Sequence[Path],
                 names: Sequence[str | None] | None = None) -> list[PlannedOutput]:
    """A results name for each video in ``out_dir``, so that nothing already there is lost.

    A name given in ``names`` is used as is, and fails when it holds another video's
    results. Otherwise a video takes the first of :func:`name_candidates` that holds its own
    results, else the first that is free and not given to an earlier video (``day1/cam.mp4``
    gets ``cam``, a later ``day2/cam.mp4`` gets ``cam-<hash>``, in one run or in two). A
    file listed twice is planned once: the repeat points at the first (``same_as``)."""
    out = Path(out_dir)
    names = list(names) if names is not None else [None] * len(videos)
    taken = {n for n in names if n}
    first: dict[str, int] = {}
    plans: list[PlannedOutput] = []
    for i, (video, name) in enumerate(zip(videos, names, strict=True)):
        key = str(video.resolve())
        if key in first:
            plans.append(PlannedOutput(video, plans[first[key]].name, same_as=first[key]))
            continue
        first[key] = i
        candidates = [name] if name else [c for c in name_candidates(video) if c not in taken]
        owners = {c: _owner(out / f"{c}.json") for c in candidates}
        chosen = next((c for c in candidates if owners[c] == key), None) or \
            next((c for c in candidates if owners[c] == ""), None)
        if chosen is None:
            held = "; ".join(f"{out / c}.json holds " + (f"the results of {owners[c]}"
                                                          if owners[c] else "another file")
                             for c in candidates)
            error = f"{held}; not overwriting it, give this video another name" if name \
                else f"no free results name: {held}"
            plans.append(PlannedOutput(video, None, error=error))
            continue
        taken.add(chosen)
        plans.append(PlannedOutput(video, chosen))
    return plans


def prelabel_videos(model: AuralSAM2 | LocalEngine | Callable[[], AuralSAM2],
                    videos: list[str | os.PathLike], out_dir: str | os.PathLike,
                    options: PrelabelOptions | None = None,
                    outputs: OutputOptions | None = None, *, progress: bool = True
                    ) -> list[VideoOutcome]:
    """Pre-label each video into ``out_dir/<name>.json`` (+ optional renders); one outcome
    per video, in order.

    A video that fails (missing, not a regular file, corrupt, no audio, its results name
    busy...) is reported and the others still run. ``model`` may be an engine
    (:class:`~auralsam2_core.serving.engines.LocalEngine`) or a function that builds the model,
    called only when the first usable video comes up. :class:`OutputDirError` when
    ``out_dir`` cannot be written."""
    opts = options or PrelabelOptions()
    outs = outputs or OutputOptions()
    out = prepare_out_dir(out_dir)
    paths = [Path(v) for v in videos]
    outcomes: list[VideoOutcome | None] = [None] * len(paths)
    usable = []
    for i, path in enumerate(paths):
        problem = file_problem(path)
        if problem:
            print(f"auralsam2: {problem}", file=sys.stderr)
            outcomes[i] = VideoOutcome(path, "failed", error=problem)
        else:
            usable.append(i)
    plans = plan_outputs(out, [paths[i] for i in usable])
    engine = model if isinstance(model, LocalEngine) else \
        LocalEngine(model) if isinstance(model, AuralSAM2) else LocalEngine(load=model)
    for i, plan in zip(usable, plans, strict=True):
        if plan.error:
            print(f"auralsam2: {plan.video}: {plan.error}", file=sys.stderr)
            outcomes[i] = VideoOutcome(plan.video, "failed", error=plan.error)
        elif plan.same_as is not None:
            o = outcomes[usable[plan.same_as]]
            outcomes[i] = VideoOutcome(plan.video, o.status, o.results, o.error,
                                       note="listed twice; labelled once")
        else:
            _ = engine.model  # loaded here: a model that cannot load stops the run
            outcomes[i] = prelabel_one(engine, plan.video, ResultsWriter(out, plan.name),
                                       opts, outs, progress)
    return outcomes


def outcome_line(o: VideoOutcome) -> str:
    """One line per video for the commands: status, video, results or error, and why."""
    detail = o.error if o.status == "failed" else o.results
    return f"{o.status:8s} {o.video}  {detail}" + (f"  ({o.note})" if o.note else "")


def prelabel_one(engine: LocalEngine, path: Path, writer: ResultsWriter,
                 opts: PrelabelOptions, outs: OutputOptions, progress: bool = True
                 ) -> VideoOutcome:
    """One video of :func:`prelabel_videos`, public so that batch runners (Ray workers) write
    exactly the same files. Holds the name's lock throughout; reuses up-to-date results;
    a failure is reported rather than raised."""
    try:
        with writer.lock():
            return _prelabel_locked(engine, path, writer, opts, outs, progress)
    except (MediaError, ValueError, RuntimeError, OSError) as e:  # incl. OutputBusy/Taken
        msg = _os_message(e) if isinstance(e, OSError) else str(e)
        print(f"auralsam2: {path}: {msg}", file=sys.stderr)
        return VideoOutcome(path, "failed", error=msg)


def _prelabel_locked(engine: LocalEngine, path: Path, writer: ResultsWriter, opts: PrelabelOptions,
                     outs: OutputOptions, progress: bool) -> VideoOutcome:
    info = probe(path, audio_track=opts.audio_track)
    existing = writer.existing()
    note = None
    if existing is not None:
        video = video_record(info)
        owner = (existing.get("video") or {}).get("path")
        if owner != video["path"]:  # another run gave this name away meanwhile
            raise OutputTaken(f"{writer.final} holds the results of {owner}; not "
                              "overwriting them")
        reason = "--overwrite" if outs.overwrite else why_stale(
            existing, video, model_record(engine.meta, opts))
        if reason is None:
            return _reuse(path, existing, writer, outs)
        note = f"redone: {reason}"
    doc = _run_one(engine, path, writer, opts, outs, progress, info)
    try:
        _render(path, doc, writer, outs)
    except (MediaError, ValueError, RuntimeError, OSError) as e:  # results are kept
        print(f"auralsam2: {path}: rendering failed: {e}", file=sys.stderr)
        return VideoOutcome(path, "failed", writer.final,
                            error=f"results written, but rendering failed: {e}", note=note)
    return VideoOutcome(path, "done", writer.final, note=note)


def _reuse(path: Path, doc: dict, writer: ResultsWriter, outs: OutputOptions) -> VideoOutcome:
    """Up-to-date results: new intervals when only the hysteresis changed (no model run),
    and the renders asked for that are missing."""
    status, notes = "skipped", ["same video, options and model"]
    if intervals_stale(doc, outs.hysteresis):
        doc = with_intervals(doc, outs.hysteresis)
        writer.replace_final(doc)
        status, notes = "done", ["intervals recomputed for the new hysteresis"]
    try:
        made = _render(path, doc, writer, outs, only_missing=status == "skipped")
    except (MediaError, ValueError, RuntimeError, OSError) as e:
        return VideoOutcome(path, "failed", writer.final,
                            error=f"results kept, but rendering failed: {e}")
    if made:
        status = "done"
        notes.append(f"rendered {', '.join(made)}")
    return VideoOutcome(path, status, writer.final, note="; ".join(notes))


def _run_one(engine: LocalEngine, path: Path, writer: ResultsWriter, opts: PrelabelOptions,
             outs: OutputOptions, progress: bool, info: MediaInfo) -> dict:
    total = None
    if info.num_frames:
        total = -(-info.num_frames // opts.stride)
    bar = tqdm(total=total, unit="frame", desc=path.name, disable=not progress,
               dynamic_ncols=True, leave=True)
    with bar:
        return engine.to_results(path, writer, opts, info=info,
                                 on_frame=lambda _n: bar.update(1), hysteresis=outs.hysteresis)


def prelabel_to_results(model: AuralSAM2, video: str | os.PathLike, writer: ResultsWriter,
                        options: PrelabelOptions | None = None, *,
                        info: MediaInfo | None = None,
                        prompts: Mapping[int, PointPrompt] | None = None,
                        on_frame: Callable[[int], None] | None = None,
                        hysteresis: Hysteresis | None = None,
                        cache: FeatureCache | None = None,
                        on_record: Callable[[dict], None] | None = None) -> dict:
    """Run the engine on one video into ``writer`` and return the finished results document:
    the one loop behind ``auralsam2 prelabel``, the service's jobs and the adapters' caches.

    ``on_frame(n)`` is called after the n-th frame is written (with queries: all of its
    objects); it may raise to give up (a deadline). ``on_record(record)`` gets each frame
    record as it is written, for adapters that stream results to waiting requests. A run that
    fails or is given up leaves no partial file (a killed process leaves one, which the next
    run replaces). ``cache``: see :func:`prelabel`."""
    opts = options or PrelabelOptions()
    info = probe_for(video, opts, info)
    video_block = video_record(info)  # the file as it was when the run started
    last = opts.queries[-1] if opts.queries else None  # a frame is done with its last query
    try:
        with writer, contextlib.closing(prelabel(model, video, opts, info=info,
                                                 prompts=prompts, cache=cache)) as frames:
            n = 0
            for result in frames:
                record = writer.add(result)
                if on_record:
                    on_record(record)
                if result.query == last:
                    n += 1
                    if on_frame:
                        on_frame(n)
            return writer.finish(video_block, model_record(model.meta, opts),
                                 hysteresis or Hysteresis())
    except Exception:
        writer.partial.unlink(missing_ok=True)
        raise


def _render(path: Path, doc: dict, writer: ResultsWriter, outs: OutputOptions,
            only_missing: bool = False) -> list[str]:
    """The review renders asked for (all of them, or only those not there yet); returns
    what was written."""
    from auralsam2_core.inference.review import write_overlay, write_png_masks, write_timeline

    stem = writer.final.with_suffix("")
    wanted = [(outs.png_masks, Path(f"{stem}_masks"), write_png_masks),
              (outs.timeline, Path(f"{stem}_timeline.png"), write_timeline),
              (outs.overlay, Path(f"{stem}_overlay.mp4"),
               lambda d, target: write_overlay(path, d, target))]
    made = []
    for asked, target, write in wanted:
        if asked and not (only_missing and target.exists()):
            write(doc, target)
            made.append(target.name)
    return made
