"""Batch pre-labelling of a manifest of videos, on this machine or on a Ray cluster.

Both ways write exactly the files of ``auralsam2 prelabel`` (``<name>.json`` per video, through
:func:`auralsam2_core.inference.prelabel_videos.prelabel_one`, named by
:func:`auralsam2_core.inference.prelabel_videos.plan_outputs`),
reuse results only when they are up to date (same file, options and model; so a killed run
resumes), and report a failing video without stopping the others.

With Ray, Ray Data maps the videos over a pool of model actors: one per GPU when the cluster
has GPUs (else one per CPU), each loading the model once. Actors write their results straight
into ``out_dir``, so **the videos and ``out_dir`` must be on a filesystem that every Ray node
sees at the same path** (NFS, a shared PersistentVolume, or a single machine); only small status
rows travel back to the driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from auralsam2_core.inference.engine import PrelabelOptions
from auralsam2_core.inference.prelabel_videos import (
    MAX_NAME_BYTES,
    OutputOptions,
    VideoOutcome,
    plan_outputs,
    prelabel_one,
    prepare_out_dir,
)
from auralsam2_core.inference.results import ResultsWriter
from auralsam2_core.media.video import file_problem
from auralsam2_core.model_spec import ModelSpec, load_model
from auralsam2_core.serving.engines import LocalEngine


class ManifestError(ValueError):
    """The manifest cannot be used as it is (the message lists every problem found)."""


@dataclass(frozen=True)
class BatchItem:
    video: Path
    name: str | None = None  # results go to <out_dir>/<name>.json; None: the file's stem
    # (or stem-<hash> when another video's results have the stem: jobs.plan_outputs)


@dataclass
class BatchReport:
    done: list[VideoOutcome] = field(default_factory=list)
    skipped: list[VideoOutcome] = field(default_factory=list)
    failed: list[VideoOutcome] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    backend: str = "local"

    def as_dict(self) -> dict:
        def rows(outcomes):
            return [{"video": str(o.video), "results": str(o.results) if o.results else None,
                     **({"error": o.error} if o.error else {}),
                     **({"note": o.note} if o.note else {})} for o in outcomes]
        return {"backend": self.backend, "workers": self.workers,
                "seconds": round(self.seconds, 2), "done": rows(self.done),
                "skipped": rows(self.skipped), "failed": rows(self.failed)}


def read_manifest(path: str | os.PathLike) -> list[BatchItem]:
    """Videos from a manifest: ``.jsonl`` / ``.ndjson`` lines ``{"video": path, "name"?: str}``,
    anything else a list of paths, one per line (blank lines and ``#`` lines ignored).
    Relative paths are relative to the manifest's folder. Raises :class:`ManifestError` naming
    every missing or unusable file (a folder, a named pipe, a link loop...), duplicate video
    or name and bad line at once. Videos without a name get theirs when the batch runs."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    entries: list[tuple[int, Path, str | None]] = []
    problems: list[str] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        video, name = line, None
        if jsonl:
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("video"), str):
                    raise ValueError('expected {"video": "path", "name": "optional"}')
                if set(rec) - {"video", "name"}:
                    raise ValueError(f"unknown keys {sorted(set(rec) - {'video', 'name'})}")
                video, name = rec["video"], rec.get("name")
                if name is not None and (not isinstance(name, str) or not _safe_name(name)):
                    raise ValueError(f"name {name!r} must be a plain file name of at most "
                                     f"{MAX_NAME_BYTES} bytes")
            except ValueError as e:
                problems.append(f"line {lineno}: {e}")
                continue
        p = Path(video).expanduser()
        p = p if p.is_absolute() else path.parent / p
        problem = file_problem(p)
        if problem:
            problems.append(f"line {lineno}: {video}: {problem}")
            continue
        entries.append((lineno, p.resolve(), name))
    seen: dict[Path, int] = {}
    for lineno, p, _ in entries:
        if p in seen:
            problems.append(f"line {lineno}: {p} repeats line {seen[p]}")
        seen.setdefault(p, lineno)
    if problems:
        raise ManifestError(f"manifest {path}: " + "; ".join(problems))
    if not entries:
        raise ManifestError(f"manifest {path} lists no videos")
    items = [BatchItem(p, name) for _, p, name in entries]
    _check_unique_names(items)
    return items


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name and len(os.fsencode(name)) <= MAX_NAME_BYTES


def _check_unique_names(items: Sequence[BatchItem]) -> None:
    first: dict[str, Path] = {}
    clashes = [f"{it.name!r} ({first[it.name]} and {it.video})" for it in items
               if it.name and first.setdefault(it.name, it.video) != it.video]
    if clashes:
        raise ManifestError(f"two videos would write the same results: {', '.join(clashes)}")


def as_items(videos: Sequence[BatchItem | str | os.PathLike]) -> list[BatchItem]:
    """Items as given; bare paths are named as ``auralsam2 prelabel`` names them."""
    items = [v if isinstance(v, BatchItem) else BatchItem(Path(v)) for v in videos]
    _check_unique_names(items)
    return items


def run_batch(videos: Sequence[BatchItem | str | os.PathLike], out_dir: str | os.PathLike,
              options: PrelabelOptions | None = None, *, ray: bool = False,
              num_workers: int | None = None, served: ModelSpec | None = None,
              outputs: OutputOptions | None = None, progress: bool = True) -> BatchReport:
    """Pre-label ``videos`` into ``out_dir``, here (one model) or on Ray (a pool of actors).

    Whether a video's results are up to date is decided where its model is (the model is
    part of the key), so a run loads the model even when every video turns out skipped."""
    opts = options or PrelabelOptions()
    outs = outputs or OutputOptions()
    served = served or ModelSpec.from_env()
    if bool(opts.queries) != (served.variant == "refavs"):
        raise ValueError("queries go with the Ref-AVS model (--variant refavs), and the Ref-AVS "
                         "model needs queries" + (f" (got {len(opts.queries)} queries and "
                                                  f"variant {served.variant})"))
    items = as_items(videos)
    out_dir = prepare_out_dir(out_dir)
    report = BatchReport(backend="ray" if ray else "local")
    outcomes: list[VideoOutcome | None] = [None] * len(items)
    usable = []
    for i, it in enumerate(items):
        problem = file_problem(it.video)
        if problem:
            outcomes[i] = VideoOutcome(it.video, "failed", error=problem)
        else:
            usable.append(i)
    plans = plan_outputs(out_dir, [items[i].video for i in usable],
                         [items[i].name for i in usable])
    todo: list[tuple[int, BatchItem]] = []
    for i, plan in zip(usable, plans, strict=True):
        if plan.error:
            outcomes[i] = VideoOutcome(plan.video, "failed", error=plan.error)
        elif plan.same_as is None:
            todo.append((i, BatchItem(plan.video, plan.name)))
    started = time.perf_counter()
    if todo and ray:
        done, report.workers = _run_on_ray([it for _, it in todo], out_dir, opts, outs,
                                           served, num_workers, progress)
    elif todo:
        engine = LocalEngine(load_model(served))
        done = [_one(engine, it, out_dir, opts, outs, progress) for _, it in todo]
    else:
        done = []
    for (i, _), o in zip(todo, done, strict=True):
        outcomes[i] = o
    for i, plan in zip(usable, plans, strict=True):
        if plan.same_as is not None:  # the same file listed twice: labelled once
            o = outcomes[usable[plan.same_as]]
            outcomes[i] = VideoOutcome(plan.video, o.status, o.results, o.error,
                                       note="listed twice; labelled once")
    report.seconds = time.perf_counter() - started
    for o in outcomes:
        getattr(report, o.status).append(o)
    return report


def _one(engine: LocalEngine, item: BatchItem, out_dir, opts, outs, progress: bool
         ) -> VideoOutcome:
    """One video; any exception becomes a failed outcome (a worker must outlive bad input).
    No partial file is left: :func:`~auralsam2_core.inference.prelabel_videos.prelabel_to_results`
    removes it."""
    try:
        return prelabel_one(engine, item.video, ResultsWriter(out_dir, item.name), opts, outs,
                            progress)
    except Exception as e:  # noqa: BLE001 - reported per video, the batch goes on
        print(f"auralsam2: {item.video}: {type(e).__name__}: {e}", file=sys.stderr)
        return VideoOutcome(item.video, "failed", error=f"{type(e).__name__}: {e}")


class _Prelabeller:
    """A Ray Data actor: loads the model once, then pre-labels one video per call."""

    def __init__(self, served: ModelSpec, out_dir: str, opts: PrelabelOptions,
                 outs: OutputOptions) -> None:
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(1)  # one CPU per actor: more threads only oversubscribe
        self.engine = LocalEngine(load_model(served))
        self.out_dir, self.opts, self.outs = out_dir, opts, outs

    def __call__(self, batch: dict) -> dict:
        rows: dict[str, list] = {"video": [], "name": [], "status": [], "results": [],
                                 "error": [], "note": []}
        for video, name in zip(batch["video"], batch["name"], strict=True):
            o = _one(self.engine, BatchItem(Path(str(video)), str(name)), self.out_dir,
                     self.opts, self.outs, progress=False)
            rows["video"].append(str(video))
            rows["name"].append(str(name))
            rows["status"].append(o.status)
            rows["results"].append(str(o.results) if o.results else "")
            rows["error"].append(o.error or "")
            rows["note"].append(o.note or "")
        return rows


def _run_on_ray(items: list[BatchItem], out_dir, opts, outs, served: ModelSpec,
                num_workers: int | None, progress: bool) -> tuple[list[VideoOutcome], int]:
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--ray needs ray[data] (bash scripts/setup.d/50-ray.sh)") from e

    started_here = not ray.is_initialized()
    if started_here:  # RAY_ADDRESS: an existing cluster (KubeRay sets it); else a local one
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=progress)
    try:
        resources = ray.cluster_resources()
        use_gpu = resources.get("GPU", 0) >= 1 and served.device != "cpu"
        slots = int(resources.get("GPU", 0)) if use_gpu else max(1, int(resources.get("CPU", 1)))
        workers = max(1, min(num_workers or slots, len(items)))
        with _data_context(progress):
            rows = _ray_rows(items, out_dir, opts, outs, served, workers, use_gpu)
    finally:
        if started_here:
            ray.shutdown()
    by_name = {r["name"]: r for r in rows}
    outcomes = []
    for it in items:  # in manifest order
        r = by_name.get(it.name)
        if r is None:
            ResultsWriter(out_dir, it.name).partial.unlink(missing_ok=True)
            outcomes.append(VideoOutcome(it.video, "failed", error=(
                "its Ray worker died twice on it (out of memory? a crash?); see the Ray logs")))
            continue
        outcomes.append(VideoOutcome(it.video, r["status"], Path(r["results"])
                                     if r["results"] else None, r["error"] or None,
                                     r["note"] or None))
    return outcomes, workers


def _ray_rows(items, out_dir, opts, outs, served, workers: int, use_gpu: bool) -> list[dict]:
    """One block per video through a fixed pool of model actors; the status rows back."""
    import ray.data

    ds = ray.data.from_items([{"video": str(it.video), "name": it.name} for it in items],
                             override_num_blocks=len(items))
    per_actor = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
    with warnings.catch_warnings():
        # Ray Data's default retries a task on a dead actor forever (a video that kills its
        # worker would hang the batch); Ray 2.60 has no named parameter for the limit yet and
        # warns about the generic one. Revisit when the pin (50-ray.sh) passes Ray 2.63.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            _Prelabeller, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"served": served, "out_dir": str(out_dir), "opts": opts,
                                   "outs": outs},
            max_task_retries=1, **per_actor)
    return ds.take_all()


@contextlib.contextmanager
def _data_context(progress: bool):
    """Ray Data settings for one batch: progress bars as asked, and a video whose worker dies
    (out of memory, a crash in a decoder) is retried once on a restarted actor, then dropped
    (reported by the driver) instead of failing every video."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    names = ("enable_progress_bars", "enable_operator_progress_bars", "max_errored_blocks")
    saved = {n: getattr(ctx, n) for n in names}
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = progress
    ctx.max_errored_blocks = -1
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(ctx, n, v)
