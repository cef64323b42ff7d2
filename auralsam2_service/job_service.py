"""The service's state: one model, a bounded queue of video jobs and one worker thread.

Every job is a JSON file under ``state_dir/jobs`` written at each change, and its results go
through :class:`~auralsam2_core.inference.results.ResultsWriter` (partial, then final, atomically).
One process owns a state directory (an OS lock held for its lifetime; a second service on it
refuses to start and touches nothing). When the owner dies mid-job, the next owner finds the
job "running" and queues it again (up to ``max_attempts`` runs, then it is marked failed with
the reason): a job is never lost, and never taken from a live owner.

Requests are checked completely before anything is created: a refused request leaves no job
and no file behind. A video given as a URL is downloaded for that job alone and removed when
the job ends, so a changed file behind the same URL is never mistaken for the old one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from auralsam2_core.atomic import atomic_open, atomic_write_json
from auralsam2_core.inference.engine import NoAudioError
from auralsam2_core.inference.feature_cache import FeatureCache
from auralsam2_core.inference.results import ResultsWriter, read_results
from auralsam2_core.media.video import MediaError, probe
from auralsam2_core.model_spec import ModelSpec, load_model
from auralsam2_core.serving.engines import LocalEngine, start_worker
from auralsam2_core.serving.wire import OptionsError, options_from_wire, options_record

from .config import ServiceSettings

_log = logging.getLogger("auralsam2.service")


class Refused(Exception):
    """A request the service will not take; ``status`` is the HTTP answer, ``field`` the
    request field at fault (when one is)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, *,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after, self.field = status, retry_after, field


class StateDirBusy(RuntimeError):
    """Another live process owns the state directory."""


def own_state_dir(state_dir: Path):
    """Lock ``state_dir`` for this process's lifetime (the open file holds the lock; the OS
    drops it when the process dies, however it dies) or raise :class:`StateDirBusy`."""
    fh = open(state_dir / "owner.lock", "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        fh.close()
        raise StateDirBusy(f"the state directory {state_dir} is in use by {owner}: one "
                           "service per state directory (give this one its own --state-dir "
                           "or AURALSAM2_SERVER_STATE)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"auralsam2 serve, pid {os.getpid()} on {socket.gethostname()}\n")
    fh.flush()
    return fh


def job_results(state_dir: Path, job_id: str) -> ResultsWriter:
    """The results files of a job in a state directory."""
    return ResultsWriter(state_dir / "results", job_id)


@dataclass
class Job:
    id: str
    video: str  # as submitted (path or URL)
    options: dict
    prompts: dict = field(default_factory=dict)
    status: str = "queued"  # queued, running, done, failed
    attempts: int = 0
    error: str | None = None
    error_kind: str | None = None  # no_audio, media, interrupted, internal
    frames_done: int = 0
    frames_total: int | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def public(self) -> dict:
        d = asdict(self)
        d["progress"] = {"frames_done": d.pop("frames_done"), "frames_total": d.pop("frames_total")}
        return d


class JobService:
    def __init__(self, settings: ServiceSettings, served: ModelSpec | None = None, *,
                 model=None, start_worker: bool = True) -> None:
        if not settings.token:
            raise ValueError("AURALSAM2_SERVER_TOKEN (or AURALSAM2_SERVER_TOKEN_FILE) must be "
                             "set: the service accepts only requests that carry it")
        self.settings = settings
        self.served = served or ModelSpec.from_env()
        # The model, loaded on first use (the worker's first job, or ``auralsam2 serve``).
        self.engine = LocalEngine(model, load=lambda: load_model(self.served))
        # A first pass's image features and fuser prompts, per clip: a refinement job on the
        # same file (Label Studio's clicks, clip_origin 0) then runs only SAM2's tracking.
        self.features = FeatureCache.from_mb(settings.refine_cache_mb)
        self.dir = Path(settings.state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._owner_lock = own_state_dir(self.dir)  # before reading or writing any job
        for sub in ("jobs", "results", "media"):
            (self.dir / sub).mkdir(exist_ok=True)
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.cv = threading.Condition()
        self.counters = {"submitted": 0, "done": 0, "failed": 0, "refused_full": 0,
                         "frames": 0, "retried": 0}
        self.seconds_running = 0.0
        self._recover()
        if start_worker:
            self.start_worker()

    def start_worker(self) -> None:
        start_worker("auralsam2-worker", self.cv,
                     lambda: self.jobs[self.queue.popleft()] if self.queue else None,
                     self.run_job)

    def close(self) -> None:
        """Give up the state directory (the process exiting does the same)."""
        self._owner_lock.close()

    # ------------------------------------------------------------------ model

    @property
    def model(self):
        return self.engine.model

    def model_version(self) -> str:
        return f"auralsam2-{self.served.identity()}"

    # ------------------------------------------------------------------ persistence

    def _save(self, job: Job) -> None:
        atomic_write_json(self.dir / "jobs" / f"{job.id}.json", asdict(job))

    def _recover(self) -> None:
        """Queue again the jobs a dead owner left running (we hold the lock: it is dead)."""
        for f in sorted(self.dir.glob("jobs/*.json"), key=lambda p: p.stat().st_mtime):
            try:
                job = Job(**json.loads(f.read_text()))
            except (ValueError, TypeError) as e:
                _log.warning("ignoring unreadable job file %s: %s", f.name, e)
                continue
            if job.status == "running":  # the process died while running it
                if job.attempts >= self.settings.max_attempts:
                    job.status, job.error_kind = "failed", "interrupted"
                    job.error = (f"interrupted {job.attempts} times (the service stopped "
                                 "while running it); not retried again")
                    job.finished = time.time()
                    self._drop_download(job.video)
                else:
                    job.status = "queued"
                    self.counters["retried"] += 1
                self._save(job)
            self.jobs[job.id] = job
            if job.status == "queued":
                self.queue.append(job.id)

    # ------------------------------------------------------------------ requests

    def resolve_media(self, video: str, job_id: str) -> Path:
        """The local file for a submitted path or URL, or :class:`Refused`. A URL is
        downloaded for ``job_id`` alone (see :meth:`_drop_download`)."""
        if not isinstance(video, str) or not video:
            raise Refused(400, "must be a path or an http(s) URL", field="video")
        if "\0" in video or len(video) > 4096:
            raise Refused(400, "a NUL byte or more than 4096 characters: not a path or URL",
                          field="video")
        parts = urlsplit(video)
        if parts.scheme in ("http", "https"):
            try:
                host = (parts.hostname or "").lower()
            except ValueError:  # e.g. an unbalanced [ in the host
                raise Refused(400, "not a valid URL", field="video") from None
            if host not in self.settings.media_hosts:
                raise Refused(403, f"host {host!r} is not in AURALSAM2_SERVER_MEDIA_HOSTS",
                              field="video")
            return self._download(video, job_id)
        if parts.scheme and len(parts.scheme) > 1:  # (a Windows drive letter is not a scheme)
            raise Refused(400, f"URL scheme {parts.scheme!r} is not supported", field="video")
        path = Path(video)
        if not path.is_absolute():
            raise Refused(400, "video paths must be absolute (as the service sees them)",
                          field="video")
        if any(len(os.fsencode(part)) > 255 for part in path.parts):
            raise Refused(400, "a path component is longer than 255 bytes", field="video")
        try:
            real = path.resolve()
            inside = any(real.is_relative_to(root) for root in self.settings.media_roots)
            exists = inside and real.is_file()
        except (OSError, RuntimeError) as e:  # a symlink loop, a name the OS refuses
            raise Refused(400, f"{video} cannot be resolved ({type(e).__name__}: "
                               f"{getattr(e, 'strerror', None) or e})", field="video") from None
        if not inside:
            raise Refused(403, f"{video} is outside the media roots the service may read "
                               "(AURALSAM2_SERVER_MEDIA_ROOTS)", field="video")
        if not exists:
            raise Refused(404, f"{video} does not exist", field="video")
        return real

    def _download(self, url: str, job_id: str) -> Path:
        import urllib.request

        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urlsplit(url).path).name)[-100:]
        dest = self.dir / "media" / f"{job_id}-{name or 'video'}"

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):  # a redirect could leave the hosts
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(url, timeout=60) as r, atomic_open(dest) as fh:
                size = 0
                while chunk := r.read(1 << 20):
                    size += len(chunk)
                    if size > self.settings.max_download_bytes:
                        raise Refused(413, "the video is larger than the download limit",
                                      field="video")
                    fh.write(chunk)
        except (OSError, ValueError) as e:  # ValueError: http.client's invalid URLs
            raise Refused(502, f"cannot download the video: {e}", field="video") from None
        return dest

    def _downloaded(self, video: str | Path) -> bool:
        return Path(video).parent == self.dir / "media"

    def _drop_download(self, video: str | Path) -> None:
        """A URL's file serves one job: removed when the job ends (or is refused)."""
        if self._downloaded(video):
            Path(video).unlink(missing_ok=True)

    def submit(self, video: str, options: dict | None = None) -> Job:
        """Check everything, then create the job; a refusal leaves nothing behind."""
        def bad_options(e: OptionsError) -> Refused:
            return Refused(400, f"bad options: {e}", field=e.field)

        raw = {} if options is None else options
        try:
            self._check_variant(options_from_wire(raw)[0])
        except OptionsError as e:
            raise bad_options(e) from None
        self._refuse_when_full()
        job_id = uuid.uuid4().hex[:16]
        path = self.resolve_media(video, job_id)
        try:
            try:
                info = probe(path)
            except MediaError:
                info = None  # the job reports what is wrong with the file, as it runs
            try:
                opts, prompts = options_from_wire(
                    raw, num_frames=info and info.num_frames,
                    frame_size=info and (info.width, info.height))
            except OptionsError as e:
                raise bad_options(e) from None
            job = Job(job_id, str(path), options_record(opts),
                      {str(k): p.as_dict() for k, p in prompts.items()})
            with self.cv:
                self._refuse_when_full()  # filled while we downloaded
                self.jobs[job.id] = job
                self._save(job)
                self.queue.append(job.id)
                self.counters["submitted"] += 1
                self.cv.notify_all()
            return job
        except BaseException:
            self._drop_download(path)
            raise

    @property
    def variant(self) -> str:
        """The served model's variant ("avs" or "refavs"), known without loading it."""
        return self.engine.model.variant if self.engine.loaded else self.served.variant

    def _check_variant(self, opts) -> None:
        if opts.queries and self.variant != "refavs":
            raise OptionsError("options.queries", "this service runs the AVS model, which "
                                                  "takes no queries (serve a Ref-AVS model: "
                                                  "--variant refavs)")
        if not opts.queries and self.variant == "refavs":
            raise OptionsError("options.queries", "this service runs the Ref-AVS model: "
                                                  "name at least one object to segment")

    def _refuse_when_full(self) -> None:
        with self.cv:
            if len(self.queue) >= self.settings.max_queue:
                self.counters["refused_full"] += 1
                raise Refused(429, f"the queue is full ({len(self.queue)} jobs waiting); "
                                   "retry later", retry_after=5)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise Refused(404, f"no job {job_id!r}")
        return job

    def results(self, job_id: str) -> dict:
        job = self.get(job_id)
        if job.status != "done":
            raise Refused(409, f"job {job_id} is {job.status}"
                               + (f": {job.error}" if job.error else ""))
        return read_results(job_results(self.dir, job.id).final)

    def health(self) -> dict:
        return {"status": "UP", "model_version": self.model_version(),
                "model_loaded": self.engine.loaded, "queued": len(self.queue),
                "running": sum(j.status == "running" for j in self.jobs.values())}

    def metrics_text(self) -> str:
        lines = [f'auralsam2_jobs_total{{event="{k}"}} {v}' for k, v in self.counters.items()
                 if k != "frames"]
        lines += [f"auralsam2_frames_total {self.counters['frames']}",
                  f"auralsam2_queue_depth {len(self.queue)}",
                  f"auralsam2_running_seconds_total {self.seconds_running:.3f}"]
        lines += [f"auralsam2_refine_cache_{k} {v}" for k, v in self.features.stats().items()]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ the worker

    def run_job(self, job: Job) -> None:
        job.status, job.attempts, job.frames_done = "running", job.attempts + 1, 0
        self._save(job)
        started = time.perf_counter()
        writer = job_results(self.dir, job.id)
        try:
            info = probe(job.video)
            opts, prompts = options_from_wire(
                {**job.options, "prompts": job.prompts}, num_frames=info.num_frames,
                frame_size=(info.width, info.height))
            end = opts.stop_frame or info.num_frames  # > start_frame (checked) when known
            job.frames_total = -(-(end - opts.start_frame) // opts.stride) if end else None

            def progress(n: int) -> None:
                job.frames_done = n
                self.counters["frames"] += 1

            # A URL's copy serves this job alone: nothing of it can serve a later one.
            cache = None if self._downloaded(job.video) else self.features
            doc = self.engine.to_results(job.video, writer, opts, info=info, prompts=prompts,
                                         on_frame=progress, cache=cache)
            if not doc["summary"]["frames"]:  # a container that did not tell its length
                writer.final.unlink(missing_ok=True)
                raise MediaError(f"no frame from start_frame {opts.start_frame} on: the "
                                 "video is shorter")
            job.status = "done"
            self.counters["done"] += 1
        except Exception as e:  # noqa: BLE001 - a failed job reports why; the worker goes on
            job.status, job.error = "failed", str(e)
            job.error_kind = "no_audio" if isinstance(e, NoAudioError) else \
                "media" if isinstance(e, MediaError | ValueError) else "internal"
            self.counters["failed"] += 1
            if job.error_kind == "internal":
                _log.exception("job %s failed", job.id)
        finally:
            job.finished = time.time()
            self._drop_download(job.video)
            self.seconds_running += time.perf_counter() - started
            self._save(job)
            with self.cv:
                self.cv.notify_all()
