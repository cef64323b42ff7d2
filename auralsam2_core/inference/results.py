"""The results format: one JSON file per video, written crash-safely.

While a video runs, frames are appended to ``<name>.partial.jsonl``; when it finishes, the
complete ``<name>.json`` is written atomically and the partial file removed. A killed run
therefore leaves no half-written results, and re-running reuses up-to-date results
(:func:`why_stale`) and restarts unfinished ones from their first frame (SAM2's memory cannot
be resumed mid-video). ``<name>.lock`` is held while a name is written.

Layout of ``<name>.json`` (``format: "auralsam2-prelabel"``, ``format_version: 2``)::

    video:     path, name, width, height (display), rotation, fps, num_frames, duration,
               audio {sample_rate, channels, track, tracks, stream_index, language?, title?}
               or null, size_bytes, mtime_ns
    model:     package version, sam2_config, image_size, mask_choice, fuser_config,
               checkpoints {sam2, fuser}: {path, sha256} or null (random init), variant and
               text_encoder (Ref-AVS), and the run's options: clip_len, stride, no_audio,
               audio_track, start_frame, stop_frame, queries
    objects:   one per tracked object: the AVS model's one "sounding" object (query null),
               or one per Ref-AVS query, in the queries' order:
               [{label, query,
                 frames:    [{index, time, sounding_prob, predicted_iou, mask_score,
                              review_priority, mask: COCO RLE {size: [H, W], counts}}]
                            (frame order; index 0-based),
                 intervals: [{start_frame, end_frame, start_time, end_time, mean_prob}]
                            (end inclusive for frames, exclusive for time),
                 summary:   {frames, sounding_frames, intervals}}]
    summary:   {frames (per object), objects, sounding_frames, intervals (both summed over
               the objects), seconds}

Version 1 (before Ref-AVS) had one object's ``frames`` and ``intervals`` at the top level;
:func:`read_results` gives such a file in the version-2 layout. Readers take an object with
:func:`track` (and :func:`objects`) rather than walking the dict themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from auralsam2_core import __version__
from auralsam2_core.atomic import atomic_write_json
from auralsam2_core.inference import rle
from auralsam2_core.inference.engine import FrameResult, PrelabelOptions
from auralsam2_core.media.video import MediaInfo

FORMAT = "auralsam2-prelabel"
FORMAT_VERSION = 2
SOUNDING_LABEL = "sounding"  # the AVS model's one object


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
    """One frame of one object as stored (the encoding; :func:`frame_results` decodes)."""
    return {"index": r.index, "time": round(r.time, 6),
            "sounding_prob": round(r.sounding_prob, 5),
            "predicted_iou": round(r.predicted_iou, 5), "mask_score": round(r.mask_score, 5),
            "review_priority": round(r.review_priority, 5), "mask": rle.encode(r.mask)}


def video_record(info: MediaInfo) -> dict:
    """The results' ``video`` block: what the video is, and the file it was read from (path,
    size and modification time: re-runs reuse results only for the same file)."""
    d = asdict(info)
    path = Path(d.pop("path"))
    audio = {"sample_rate": d.pop("audio_sample_rate"), "channels": d.pop("audio_channels"),
             "track": d.pop("audio_track"), "tracks": d.pop("audio_tracks"),
             "stream_index": d.pop("audio_stream")}
    for key in ("language", "title"):
        value = d.pop(f"audio_{key}")
        if value:
            audio[key] = value
    has_audio = d.pop("has_audio")
    st = path.stat()
    return {"path": str(path.resolve()), "name": path.name, **d,
            "audio": audio if has_audio else None, "size_bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def model_record(meta: dict, opts: PrelabelOptions) -> dict:
    """The results' ``model`` block (``finish`` adds the package version): the model's
    provenance and the options of the run."""
    return {**meta, "clip_len": opts.clip_len, "stride": opts.stride, "no_audio": opts.no_audio,
            "audio_track": opts.audio_track, "start_frame": opts.start_frame,
            "stop_frame": opts.stop_frame, "queries": list(opts.queries)}


def _model_identity(m: dict) -> dict:
    """What makes two models give the same masks: variant, config, input size, mask choice,
    fuser config, text encoder and the weights' sha256 (not their paths: moved weights are
    the same model)."""
    ident = {k: m.get(k) for k in ("sam2_config", "image_size", "mask_choice", "fuser_config",
                                   "text_encoder")}
    ident["variant"] = m.get("variant") or "avs"
    ident["weights"] = {part: (desc or {}).get("sha256")
                        for part, desc in (m.get("checkpoints") or {}).items()}
    return json.loads(json.dumps(ident, default=str))  # tuples vs lists, as stored


def _audio_track(video: dict) -> int | None:
    audio = video.get("audio")
    return None if audio is None else audio.get("track", 0)  # unrecorded: the first one


def why_stale(doc: dict, video: dict, model: dict) -> str | None:
    """Why the results ``doc`` are not what a run recording ``video`` and ``model`` (see
    :func:`video_record`, :func:`model_record`) would write, or None when they are: the same
    file (path, size and modification time; files written before the time was recorded are
    matched on path and size), options and model. The hysteresis is checked apart, by
    :func:`intervals_stale` (new intervals need no model run)."""
    old_v, old_m = doc.get("video") or {}, doc.get("model") or {}
    if old_v.get("path") != video["path"]:
        return f"they were made from another video ({old_v.get('path')})"
    if old_v.get("size_bytes") != video["size_bytes"] or \
            old_v.get("mtime_ns", video["mtime_ns"]) != video["mtime_ns"]:
        return "the video file changed (size or modification time)"
    pairs = [(k, old_m.get(k, default), model.get(k, default))
             for k, default in (("clip_len", 5), ("stride", 1), ("start_frame", 0),
                                ("stop_frame", None), ("queries", []))]
    pairs.append(("audio track", _audio_track(old_v), _audio_track(video)))
    if video.get("audio") is None:  # the no-audio policy matters only without audio
        pairs.append(("no_audio", old_m.get("no_audio"), model.get("no_audio")))
    changed = [f"{k} {a} -> {b}" for k, a, b in pairs if a != b]
    if changed:
        return "options changed: " + ", ".join(changed)
    old_id, new_id = _model_identity(old_m), _model_identity(model)
    if old_id != new_id:
        diff = [k for k in new_id if old_id.get(k) != new_id[k]]
        return f"another model ({', '.join(diff)} differ)"
    return None


def intervals_stale(doc: dict, rule: Hysteresis) -> bool:
    return doc.get("hysteresis") != asdict(rule)


def with_intervals(doc: dict, rule: Hysteresis) -> dict:
    """``doc`` with its objects' intervals (and summary counts) recomputed for another
    hysteresis rule, from the stored per-frame probabilities."""
    fps = doc["video"].get("fps") or 0.0
    objs = [make_object(o["query"], o["frames"], fps, rule) for o in objects(doc)]
    return {**doc, "objects": objs, "hysteresis": asdict(rule),
            "summary": {**doc["summary"], **_totals(objs)}}


def with_frames_replaced(doc: dict, part: dict, query: str | None = None) -> dict:
    """``doc`` with the frames of ``part`` (e.g. a refinement's re-propagated frames) in place
    of its own in the object of ``query`` (the AVS model's one object: None), that object's
    intervals and the summary counts recomputed; the other objects kept."""
    new = {f["index"]: f for f in track(part, query)["frames"]}
    rule = Hysteresis(**doc.get("hysteresis", {}))
    fps = doc["video"].get("fps") or 0.0
    objs = [make_object(o["query"], [new.get(f["index"], f) for f in o["frames"]], fps, rule)
            if o["query"] == query else o for o in objects(doc)]
    return {**doc, "objects": objs, "summary": {**doc["summary"], **_totals(objs)}}


def make_object(query: str | None, frames: list[dict], fps: float, rule: Hysteresis) -> dict:
    """One entry of the results' ``objects``: its label and query, frames, intervals."""
    intervals = sounding_intervals(frames, fps, rule)
    return {"label": SOUNDING_LABEL if query is None else query, "query": query,
            "frames": frames, "intervals": intervals,
            "summary": {"frames": len(frames),
                        "sounding_frames": sum(f["sounding_prob"] >= 0.5 for f in frames),
                        "intervals": len(intervals)}}


def _totals(objs: list[dict]) -> dict:
    return {"frames": objs[0]["summary"]["frames"] if objs else 0, "objects": len(objs),
            "sounding_frames": sum(o["summary"]["sounding_frames"] for o in objs),
            "intervals": sum(o["summary"]["intervals"] for o in objs)}


class OutputBusy(RuntimeError):
    """Another run is writing these results right now."""


class OutputTaken(ValueError):
    """The results file name holds something that is not this video's results."""


class ResultsWriter:
    """Writes one video's results: partial JSONL while running, final JSON at the end."""

    def __init__(self, out_dir: str | os.PathLike, name: str) -> None:
        """Names the files only (nothing is created until something is written), so that
        ``ResultsWriter(dir, name).final`` is the one way to a results path."""
        self.dir = Path(out_dir)
        self.final = self.dir / f"{name}.json"
        self.partial = self.dir / f"{name}.partial.jsonl"
        self.lockfile = self.dir / f"{name}.lock"
        self._fh = None

    def is_complete(self) -> bool:
        if not self.final.is_file():
            return False
        try:
            return read_results(self.final).get("status") == "complete"
        except (OSError, ValueError):
            return False

    def existing(self) -> dict | None:
        """The complete results already at this name, or None (nothing, or only a killed
        run's partial file). :class:`OutputTaken` when the file there is not results."""
        if not self.final.exists():
            return None
        try:
            doc = read_results(self.final)
        except ValueError as e:  # foreign or damaged JSON: someone else's file, keep it
            raise OutputTaken(f"{self.final} exists and is not AuralSAM2 results ({e}); "
                              "not overwriting it") from e
        return doc if doc.get("status") == "complete" else None

    @contextlib.contextmanager
    def lock(self):
        """Hold ``<name>.lock`` (an exclusive ``flock``) while this name is written; a second
        run refuses with :class:`OutputBusy` instead of clobbering the first one's files. The
        kernel drops the lock when a process dies, so a killed run never blocks the next."""
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise OutputBusy(f"{self.final} is being written by another run ({holder}); "
                                 "wait for it to finish, or use another --out") from None
            try:  # the holder before us may have removed the file: lock the one at the path
                current = os.stat(self.lockfile)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
            yield self
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lockfile)
            os.close(fd)

    def replace_final(self, doc: dict) -> None:
        """Write ``doc`` as the final results, atomically (also how a document computed
        elsewhere, e.g. by the shared service, is stored)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.final, doc, separators=(",", ":"))

    def __enter__(self) -> ResultsWriter:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.partial, "w", encoding="utf-8")  # restart: drop any old partial
        self._started = time.perf_counter()
        return self

    def add(self, r: FrameResult) -> dict:
        rec = frame_record(r)
        line = rec if r.query is None else {**rec, "query": r.query}
        self._fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        return rec

    def finish(self, video: dict, model: dict, rule: Hysteresis = Hysteresis()) -> dict:
        """The final document: the frames added, one object per query of ``model["queries"]``
        (the AVS "sounding" object when there are none)."""
        self._fh.close()
        queries = list(model.get("queries") or []) or [None]
        by_query: dict[str | None, list[dict]] = {q: [] for q in queries}
        with open(self.partial, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                by_query[rec.pop("query", None)].append(rec)
        fps = video.get("fps") or 0.0
        objs = [make_object(q, by_query[q], fps, rule) for q in queries]
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "status": "complete",
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "video": video, "model": {"package_version": __version__, **model},
               "objects": objs,
               "summary": {**_totals(objs),
                           "seconds": round(time.perf_counter() - self._started, 2)},
               "hysteresis": asdict(rule)}
        self.replace_final(doc)
        self.partial.unlink()
        return doc

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fh and not self._fh.closed:
            self._fh.close()


def frame_results(doc: dict) -> Iterator[FrameResult]:
    """FrameResults rebuilt from a results document (the decoding of :func:`frame_record`),
    in the engine's order (per frame, one per object)."""
    objs = objects(doc)
    for recs in zip(*(o["frames"] for o in objs), strict=True):
        for o, f in zip(objs, recs, strict=True):
            yield FrameResult(f["index"], f["time"], rle.decode(f["mask"]), f["sounding_prob"],
                              f["predicted_iou"], f["mask_score"], f["review_priority"],
                              o["query"])


def frame_records(doc: dict) -> Iterator[dict]:
    """The stored frame records of a results document, in the engine's order (as the results
    loop hands them to ``on_record`` while it writes)."""
    objs = objects(doc)
    for recs in zip(*(o["frames"] for o in objs), strict=True):
        yield from recs


def targets_document(video: Path, frames: list[dict], query: str | None = None) -> dict:
    """A results-format file of corrected targets (frames with ``index``, ``time``, ``mask``,
    no model) for fine-tuning (:class:`~auralsam2_core.training.datasets.CorrectedResultsDataset`);
    ``query``: the Ref-AVS expression the masks belong to."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "status": "complete",
            "video": {"path": str(video.resolve()), "name": video.name},
            "objects": [{"label": SOUNDING_LABEL if query is None else query, "query": query,
                         "frames": frames, "intervals": []}]}


def read_results(path: str | os.PathLike) -> dict:
    """A results file in the current layout (version-1 files are upgraded in memory, see
    :func:`upgrade`); ValueError for other JSON and for newer versions."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path} is not an AuralSAM2 results file (format={found})")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has results format {doc['format_version']}; this version "
                         f"reads up to {FORMAT_VERSION}")
    return upgrade(doc)


def upgrade(doc: dict) -> dict:
    """A version-1 document (one object's ``frames`` and ``intervals`` at the top level) in
    the version-2 layout, its intervals kept as stored; newer documents as they are."""
    if "objects" in doc or doc.get("format_version", 0) >= 2:
        return doc
    frames, intervals = doc.get("frames") or [], doc.get("intervals") or []
    obj = {"label": SOUNDING_LABEL, "query": None, "frames": frames, "intervals": intervals,
           "summary": {"frames": len(frames),
                       "sounding_frames": sum(f["sounding_prob"] >= 0.5 for f in frames),
                       "intervals": len(intervals)}}
    rest = {k: v for k, v in doc.items() if k not in ("frames", "intervals")}
    summary = {**(doc.get("summary") or {}), **_totals([obj])}
    return {**rest, "format_version": FORMAT_VERSION, "upgraded_from_version": 1,
            "objects": [obj], "summary": summary}


def objects(doc: dict) -> list[dict]:
    """The tracked objects of a results document (either version), in their order."""
    return upgrade(doc)["objects"]


def track(doc: dict, query: str | None = None) -> dict:
    """One object of a results document: the one following ``query``, or (None) the only
    one, e.g. the AVS model's "sounding" object. ValueError naming the choices otherwise."""
    objs = objects(doc)
    if query is None and len(objs) == 1:
        return objs[0]
    match = [o for o in objs if o["query"] == query and query is not None]
    if match:
        return match[0]
    labels = [o["label"] for o in objs]
    if query is None:
        raise ValueError(f"these results hold {len(objs)} objects ({labels}); name the query "
                         "to read")
    raise ValueError(f"no object follows the query {query!r} in these results ({labels})")


def frame_masks(doc: dict, query: str | None = None) -> Iterable[tuple[int, np.ndarray]]:
    """(frame index, (H, W) bool mask) for every frame of one object (:func:`track`)."""
    for f in track(doc, query)["frames"]:
        yield f["index"], rle.decode(f["mask"])
