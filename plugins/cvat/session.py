"""One CVAT task being pre-labelled: its frame map, its original media (fetched once), frame
thumbnails for recognising CVAT's images, and the engine's results as they appear.

Everything runs on background threads; request handlers only wait (with a deadline) for what
they need. The engine (local model or shared service, :mod:`auralsam2_core.serving.engines`) writes
its results into the cache directory through the core's one results loop, so a finished task is
never computed twice (and a new process picks it up from disk); each frame's record is
published to waiting requests as it is written.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np

from auralsam2_core.inference.engine import PrelabelOptions
from auralsam2_core.inference.results import ResultsWriter, frame_records, read_results
from auralsam2_core.media.video import MediaError, iter_frames, probe

from . import masks
from .api import CvatApi, CvatError, extract_video, share_path
from .classes import NO_CLASSES, Classes
from .config import CvatFunctionSettings
from .errors import AdapterError, NotReady, Unprocessable, Upstream
from .frames import FrameMap, choose_frame, expected_frame


def as_adapter_error(e: BaseException, task_id: int) -> AdapterError:
    if isinstance(e, AdapterError):
        return e
    if isinstance(e, CvatError):
        return Upstream(f"task {task_id}: {e}")
    if isinstance(e, MediaError):
        return Unprocessable(f"task {task_id}: the original media cannot be used: {e}")
    return AdapterError(f"task {task_id}: {type(e).__name__}: {e}")


_fetch_locks: dict[Path, threading.Lock] = {}
_fetch_locks_guard = threading.Lock()


def _fetch_lock(task_dir: Path) -> threading.Lock:
    """One media fetch per task folder at a time: with a Ref-AVS model a task can have two
    sessions (Automatic annotation and the task-level path ask different classes); the second
    then finds the first's copy."""
    with _fetch_locks_guard:
        return _fetch_locks.setdefault(task_dir, threading.Lock())


class TaskSession:
    def __init__(self, task_id: int, api: CvatApi, engine, settings: CvatFunctionSettings,
                 log, classes: Classes = NO_CLASSES) -> None:
        """``classes``: the queries to pre-label (a Ref-AVS model), none for the AVS model's
        one sounding object."""
        self.task_id, self.api, self.engine, self.settings = task_id, api, engine, settings
        self.classes = classes
        self.log = log
        self.cond = threading.Condition()
        self.fmap: FrameMap | None = None
        self.frame_size: tuple[int, int] | None = None  # CVAT's (width, height)
        self.media: Path | None = None
        self.error: AdapterError | None = None  # preparing failed: nothing can be answered
        self.engine_error: AdapterError | None = None  # the model cannot run on this media
        self.thumbs: np.ndarray | None = None  # (size, T, T, 3) uint8, by task frame
        self.have_thumb: np.ndarray | None = None
        self.thumbs_done = False
        # task frame -> its results frame records, one per query (one without queries)
        self.records: dict[int, list[dict]] = {}
        self._arriving: dict[int, list[dict]] = {}  # media frame -> its records so far
        self.engine_done = False
        self.cursor: dict[tuple, int] = {}  # CVAT run (see detector.run_key) -> last frame
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"auralsam2-cvat-task-{task_id}")

    def start(self) -> TaskSession:
        self._thread.start()
        return self

    @property
    def failed(self) -> bool:
        return self.error is not None

    # ------------------------------------------------------------------ background work

    def _run(self) -> None:
        try:
            task = self.api.task(self.task_id)
            if getattr(task, "mode", "interpolation") != "interpolation":
                raise Unprocessable(
                    f"task {self.task_id} is an image task; AuralSAM2 pre-labels video tasks "
                    "(it needs the video's sound)")
            if not getattr(task, "size", 0):
                raise Unprocessable(f"task {self.task_id} has no data yet; upload its video "
                                    "first")
            meta = self.api.data_meta(self.task_id)
            fmap = FrameMap.from_meta(meta)
            frames = getattr(meta, "frames", None) or []
            size = (int(frames[0].width), int(frames[0].height)) if frames else None
            self.dir = self.settings.cache_dir / f"task-{self.task_id}-data-{task.data}"
            with _fetch_lock(self.dir):  # another session of the task may be fetching it
                media = self._fetch_media(meta)
        except BaseException as e:  # noqa: BLE001 - reported to every waiting request
            self._fail("error", e)
            return
        with self.cond:
            self.fmap, self.frame_size, self.media = fmap, size, media
            self.thumbs = np.zeros((fmap.size, masks.THUMB, masks.THUMB, 3), np.uint8)
            self.have_thumb = np.zeros(fmap.size, bool)
            self.cond.notify_all()
        threading.Thread(target=self._thumbnails, daemon=True,
                         name=f"auralsam2-cvat-thumbs-{self.task_id}").start()
        try:
            self._run_engine()
        except BaseException as e:  # noqa: BLE001
            self._fail("engine_error", e)
        finally:
            with self.cond:
                self.engine_done = True
                self.cond.notify_all()

    def _fail(self, slot: str, e: BaseException) -> None:
        err = as_adapter_error(e, self.task_id)
        self.log("warning", str(err))
        with self.cond:
            setattr(self, slot, err)
            self.cond.notify_all()

    def _fetch_media(self, meta) -> Path:
        """The task's original video: the share copy when configured and present, else
        (once) the task backup, cached in the task's folder."""
        s = self.settings
        frames = getattr(meta, "frames", None) or []
        name = frames[0].name if frames else ""
        if s.media_source in ("auto", "share") and s.share_root and name:
            found = share_path(s.share_root, name)
            if found:
                return found
        if s.media_source == "share":
            raise Unprocessable(f"task {self.task_id}: {name!r} is not under the share root "
                                f"{s.share_root}; set AURALSAM2_CVAT_SHARE_ROOT to where CVAT's "
                                "share is mounted, or AURALSAM2_CVAT_MEDIA=auto to use the task "
                                "backup")
        source = self.dir / "media.json"
        if source.is_file():
            path = Path(json.loads(source.read_text())["path"])
            if path.is_file():
                return path
        self.log("info", f"task {self.task_id}: downloading the task backup for its "
                         "original video (audio included)")
        backup = self.api.download_backup(self.task_id, self.dir / "backup.zip")
        try:
            video = extract_video(backup, self.dir / "media")
        finally:
            backup.unlink(missing_ok=True)
        source.write_text(json.dumps({"path": str(video)}))
        return video

    def _thumbnails(self) -> None:
        fmap = self.fmap
        try:
            for n, frame in enumerate(iter_frames(self.media, size=masks.THUMB,
                                                  stride=fmap.engine_stride, start=fmap.start,
                                                  stop=fmap.last_media_frame + 1)):
                tf = fmap.task_frame(frame.index)
                if tf is not None:
                    self.thumbs[tf] = frame.rgb
                    self.have_thumb[tf] = True
                if n % 16 == 0:
                    with self.cond:
                        self.cond.notify_all()
                if frame.index >= fmap.last_media_frame:
                    break
        except Exception as e:  # noqa: BLE001 - matching then reports what it has
            self.log("warning", f"task {self.task_id}: reading frames failed: {e}")
        finally:
            with self.cond:
                self.thumbs_done = True
                self.cond.notify_all()

    def _results_key(self) -> str:
        fm, st = self.fmap, self.media.stat()
        ident = {"model": self.engine.meta, "clip_len": self.settings.clip_len,
                 "stride": fm.engine_stride, "start": fm.start, "step": fm.step,
                 "size": fm.size, "media": [self.media.name, st.st_size, st.st_mtime_ns],
                 "audio_track": self.settings.audio_track,
                 "queries": list(self.classes.queries)}
        digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode())
        return f"results-{digest.hexdigest()[:16]}"

    def _publish(self, rec: dict) -> None:
        """One frame record as the results loop writes it: per frame, one per query in the
        queries' order (results.frame_records); a frame is published with its last."""
        recs = self._arriving.setdefault(rec["index"], [])
        recs.append(rec)
        if len(recs) < max(1, len(self.classes.queries)):
            return
        del self._arriving[rec["index"]]
        tf = self.fmap.task_frame(rec["index"])
        if tf is not None:
            with self.cond:
                self.records[tf] = recs
                self.cond.notify_all()

    def _run_engine(self) -> None:
        writer = ResultsWriter(self.dir / "results", self._results_key())
        if writer.is_complete():
            for rec in frame_records(read_results(writer.final)):
                self._publish(rec)
            self.log("info", f"task {self.task_id}: results from the cache ({writer.final})")
            return
        info = probe(self.media)
        if not info.has_audio:
            raise Unprocessable(
                f"task {self.task_id}: its original video ({self.media.name}) has no audio "
                "track. AuralSAM2 segments what makes the sound, so it cannot pre-label a "
                "silent video; use a visual-only function (e.g. SAM) for this task")
        fmap = self.fmap
        # Decode and remember from the task's first frame: SAM2's memory starts there.
        opts = PrelabelOptions(clip_len=self.settings.clip_len, stride=fmap.engine_stride,
                               audio_track=self.settings.audio_track,
                               start_frame=fmap.start, stop_frame=fmap.last_media_frame + 1,
                               queries=self.classes.queries)
        turns = self.engine.turns  # one frame at a time, taking turns with other tasks
        try:
            with turns:
                self.engine.to_results(self.media, writer, opts, info=info,
                                       on_frame=lambda _n: turns.pass_turn(),
                                       on_record=self._publish)
        except ValueError as e:  # the model refuses the queries (too long, wrong variant)
            if not self.classes:
                raise
            names = ", ".join(f"{n!r}" + (f" as {q!r}" if q != n else "")
                              for q, n in zip(self.classes.queries, self.classes.names,
                                              strict=True))
            raise Unprocessable(f"task {self.task_id}: the model cannot read the classes "
                                f"({names}): {e}; shorten the label (or its 'query' "
                                "attribute)") from None

    # ------------------------------------------------------------------ waiting

    def _wait(self, ready, deadline: float | None) -> bool:
        with self.cond:
            while not ready():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(1.0 if left is None else min(left, 1.0))
            return True

    def wait_ready(self, deadline: float | None) -> FrameMap:
        if not self._wait(lambda: self.fmap is not None or self.error, deadline):
            raise NotReady(f"task {self.task_id}: still fetching its original video after "
                           f"{time.monotonic() - self.started:.0f} s (it goes on in the "
                           "background). For long videos pre-label the task first (webhook, "
                           "{\"task_id\": N} or `auralsam2 cvat prelabel`), or raise "
                           "CVAT_NUCLIO_DEFAULT_TIMEOUT")
        if self.error:
            raise self.error
        return self.fmap

    def wait_record(self, frame: int, deadline: float | None) -> list[dict]:
        """The frame's records, one per query (one without queries)."""
        ok = self._wait(lambda: frame in self.records or self.engine_done or self.error,
                        deadline)
        if frame in self.records:
            return self.records[frame]
        if self.error or self.engine_error:
            raise self.error or self.engine_error
        if not ok:
            raise NotReady(f"task {self.task_id}: frame {frame} is not pre-labelled yet "
                           f"({self.progress()['frames_done']} of {len(self.fmap.task_frames())} "
                           "frames done; the model goes on in the background). For long "
                           "videos pre-label the task first, or raise "
                           "CVAT_NUCLIO_DEFAULT_TIMEOUT")
        raise Unprocessable(f"task {self.task_id}: frame {frame} is not in the original video "
                            f"(the video decodes to fewer frames than CVAT counts)")

    def wait_engine(self, deadline: float | None = None) -> dict[int, list[dict]]:
        if not self._wait(lambda: self.engine_done or self.error, deadline):
            raise NotReady(f"task {self.task_id}: {len(self.records)} frames pre-labelled so "
                           "far")
        if self.error or self.engine_error:
            raise self.error or self.engine_error
        return dict(self.records)

    def expected(self, frames: list[int], run: tuple, progress: int | None) -> int | None:
        """The frame CVAT most likely asks for now in this run (see frames.expected_frame)."""
        return expected_frame(frames, self.cursor.get(run), progress, self.fmap.size)

    def match(self, thumb: np.ndarray, frames: list[int], expected: int | None,
              deadline: float) -> tuple[int | None, float]:
        """The frame (among ``frames``) whose thumbnail matches, waiting for thumbnails up to
        a little past the expected frame; ``(None, best distance)`` when none matches."""
        tol = self.settings.match_tolerance
        pos = frames.index(expected) if expected in frames else 0
        needed = np.asarray(frames[: pos + 3], int)
        idx = np.asarray(frames, int)
        while True:
            with self.cond:
                done = self.thumbs_done
                have = self.have_thumb[idx]
                covered = done or bool(self.have_thumb[needed].all())
                avail = idx[have]
                stack = self.thumbs[avail]
            frame, best = choose_frame(avail.tolist(), masks.distances(thumb, stack), expected,
                                       tol)
            if frame is not None and covered:
                return frame, best
            if done:
                return None, best
            if time.monotonic() >= deadline:
                raise NotReady(f"task {self.task_id}: still reading its video's frames")
            with self.cond:
                self.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))

    def progress(self) -> dict:
        if self.fmap is None:
            return {"frames_done": 0, "frames_total": None}
        frames = self.fmap.task_frames()
        with self.cond:
            done = sum(f in self.records for f in frames)
        return {"frames_done": done, "frames_total": len(frames)}
