"""Pre-label many videos into a results directory: resume, progress, per-video isolation.

This is what ``auralsam2 prelabel`` runs; adapters that want files rather than a stream of
:class:`~auralsam2_core.engine.FrameResult` call it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .engine import PrelabelOptions, prelabel
from .media import MediaError, MediaInfo, probe
from .model import AuralSAM2, PointPrompt
from .results import Hysteresis, ResultsWriter, video_record


@dataclass(frozen=True)
class OutputOptions:
    png_masks: bool = False
    overlay: bool = False
    timeline: bool = False
    overwrite: bool = False  # re-run videos whose results already exist
    hysteresis: Hysteresis = field(default_factory=Hysteresis)


@dataclass
class VideoOutcome:
    video: Path
    status: str  # "done", "skipped" (already complete) or "failed"
    results: Path | None = None
    error: str | None = None


def output_names(videos: list[Path]) -> list[str]:
    """Readable, unique result names: the file stem, plus a short path hash on collisions."""
    stems = [v.stem for v in videos]
    names = []
    for v, stem in zip(videos, stems, strict=True):
        if stems.count(stem) > 1:
            stem = f"{stem}-{hashlib.sha1(str(v.resolve()).encode()).hexdigest()[:8]}"
        names.append(stem)
    return names


def prelabel_videos(model: AuralSAM2, videos: list[str | os.PathLike],
                    out_dir: str | os.PathLike, options: PrelabelOptions | None = None,
                    outputs: OutputOptions | None = None, *, progress: bool = True
                    ) -> list[VideoOutcome]:
    """Pre-label each video into ``out_dir/<name>.json`` (+ optional renders).

    A video that fails (corrupt, no audio...) is reported and the others still run.
    """
    opts = options or PrelabelOptions()
    outs = outputs or OutputOptions()
    paths = [Path(v) for v in videos]
    return [prelabel_one(model, path, ResultsWriter(out_dir, name), opts, outs, progress)
            for path, name in zip(paths, output_names(paths), strict=True)]


def prelabel_one(model: AuralSAM2, path: Path, writer: ResultsWriter, opts: PrelabelOptions,
                 outs: OutputOptions, progress: bool = True) -> VideoOutcome:
    """One video of :func:`prelabel_videos`, public so that batch runners (Ray workers) write
    exactly the same files: skipped when complete, a failure reported rather than raised."""
    if writer.is_complete() and not outs.overwrite:
        return VideoOutcome(path, "skipped", writer.final)
    try:
        doc = _run_one(model, path, writer, opts, outs, progress)
    except (MediaError, ValueError, RuntimeError) as e:
        print(f"auralsam2: {path}: {e}", file=sys.stderr)
        return VideoOutcome(path, "failed", error=str(e))
    try:
        _render(path, doc, writer, outs)
    except (MediaError, ValueError, RuntimeError, OSError) as e:  # results are kept
        print(f"auralsam2: {path}: rendering failed: {e}", file=sys.stderr)
        return VideoOutcome(path, "failed", writer.final,
                            error=f"results written, but rendering failed: {e}")
    return VideoOutcome(path, "done", writer.final)


def _run_one(model, path: Path, writer: ResultsWriter, opts: PrelabelOptions,
             outs: OutputOptions, progress: bool) -> dict:
    info = probe(path)
    total = None
    if info.num_frames:
        total = -(-info.num_frames // opts.stride)
    bar = tqdm(total=total, unit="frame", desc=path.name, disable=not progress,
               dynamic_ncols=True, leave=True)
    with bar:
        return prelabel_to_results(model, path, writer, opts, info=info,
                                   on_frame=lambda _n: bar.update(1),
                                   hysteresis=outs.hysteresis)


def prelabel_to_results(model: AuralSAM2, video: str | os.PathLike, writer: ResultsWriter,
                        options: PrelabelOptions | None = None, *,
                        info: MediaInfo | None = None,
                        prompts: Mapping[int, PointPrompt] | None = None,
                        on_frame: Callable[[int], None] | None = None,
                        hysteresis: Hysteresis | None = None) -> dict:
    """Run the engine on one video into ``writer`` and return the finished results document:
    the one loop behind ``auralsam2 prelabel``, the service's jobs and the adapters' caches.

    ``on_frame(n)`` is called after the n-th frame is written; it may raise to give up (a
    deadline). A run that fails or is given up leaves no partial file (a killed process
    leaves one, which the next run replaces)."""
    opts = options or PrelabelOptions()
    info = info or probe(video)
    try:
        with writer, contextlib.closing(prelabel(model, video, opts, info=info,
                                                 prompts=prompts)) as frames:
            for n, result in enumerate(frames, start=1):
                writer.add(result)
                if on_frame:
                    on_frame(n)
            meta = {**model.meta, "clip_len": opts.clip_len, "stride": opts.stride,
                    "no_audio": opts.no_audio}
            return writer.finish(video_record(info), meta, hysteresis or Hysteresis())
    except Exception:
        writer.partial.unlink(missing_ok=True)
        raise


def _render(path: Path, doc: dict, writer: ResultsWriter, outs: OutputOptions) -> None:
    from .review import write_overlay, write_png_masks, write_timeline

    stem = writer.final.with_suffix("")
    if outs.png_masks:
        write_png_masks(doc, f"{stem}_masks")
    if outs.timeline:
        write_timeline(doc, f"{stem}_timeline.png")
    if outs.overlay:
        write_overlay(path, doc, f"{stem}_overlay.mp4")
