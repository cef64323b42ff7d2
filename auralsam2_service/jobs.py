"""The service's state: one model, a bounded queue of video jobs and one worker thread.

Every job is a JSON file under ``state_dir/jobs`` written at each change, and its results go
through :class:`~auralsam2_core.results.ResultsWriter` (partial, then final, atomically). When
the process dies mid-job, the next start finds the job "running" and queues it again (up to
``max_attempts`` runs, then it is marked failed with the reason): a job is never lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from auralsam2_core.engine import NoAudioError, PrelabelOptions
from auralsam2_core.jobs import prelabel_to_results
from auralsam2_core.media import MediaError, probe
from auralsam2_core.model import PointPrompt
from auralsam2_core.model_env import ServedModel, load_served_model
from auralsam2_core.remote import OPTION_KEYS
from auralsam2_core.results import ResultsWriter, read_results

from .config import ServiceSettings

_log = logging.getLogger("auralsam2.service")


class Refused(Exception):
    """A request the service will not take; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


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


def parse_options(raw: dict) -> tuple[PrelabelOptions, dict]:
    """(engine options, prompts) from a job request; ValueError with the reason."""
    if not isinstance(raw, dict):
        raise ValueError("'options' must be an object")
    unknown = set(raw) - set(OPTION_KEYS) - {"prompts"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {list(OPTION_KEYS)}")
    opts = PrelabelOptions(**{k: raw[k] for k in OPTION_KEYS if k in raw})
    prompts = {int(frame): PointPrompt.from_dict(p)
               for frame, p in (raw.get("prompts") or {}).items()}
    return opts, prompts


class Service:
    def __init__(self, settings: ServiceSettings, served: ServedModel | None = None, *,
                 model=None, start_worker: bool = True) -> None:
        if not settings.token:
            raise ValueError("AURALSAM2_SERVER_TOKEN (or AURALSAM2_SERVER_TOKEN_FILE) must be "
                             "set: the service accepts only requests that carry it")
        self.settings = settings
        self.served = served or ServedModel.from_env()
        self._model = model
        self.dir = Path(settings.state_dir)
        for sub in ("jobs", "results", "media"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.cv = threading.Condition()
        self.counters = {"submitted": 0, "done": 0, "failed": 0, "refused_full": 0,
                         "frames": 0, "retried": 0}
        self.seconds_running = 0.0
        self._model_lock = threading.Lock()
        self._recover()
        if start_worker:
            self.start_worker()

    def start_worker(self) -> None:
        threading.Thread(target=self._work, daemon=True, name="auralsam2-worker").start()

    # ------------------------------------------------------------------ model

    @property
    def model(self):
        with self._model_lock:  # building a SAM2 (hydra) is not thread-safe
            if self._model is None:
                self._model = load_served_model(self.served)
            return self._model

    def model_version(self) -> str:
        return f"auralsam2-{self.served.identity()}"

    # ------------------------------------------------------------------ persistence

    def _save(self, job: Job) -> None:
        path = self.dir / "jobs" / f"{job.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(job)))
        os.replace(tmp, path)

    def _recover(self) -> None:
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
                else:
                    job.status = "queued"
                    self.counters["retried"] += 1
                self._save(job)
            self.jobs[job.id] = job
            if job.status == "queued":
                self.queue.append(job.id)

    # ------------------------------------------------------------------ requests

    def resolve_media(self, video: str) -> Path:
        """The local file for a submitted path or URL, or :class:`Refused`."""
        if not isinstance(video, str) or not video:
            raise Refused(400, "'video' must be a path or an http(s) URL")
        parts = urlsplit(video)
        if parts.scheme in ("http", "https"):
            host = (parts.hostname or "").lower()
            if host not in self.settings.media_hosts:
                raise Refused(403, f"host {host!r} is not in AURALSAM2_SERVER_MEDIA_HOSTS")
            return self._download(video)
        if parts.scheme and len(parts.scheme) > 1:  # (a Windows drive letter is not a scheme)
            raise Refused(400, f"URL scheme {parts.scheme!r} is not supported")
        path = Path(video)
        if not path.is_absolute():
            raise Refused(400, "video paths must be absolute (as the service sees them)")
        real = path.resolve()
        if not any(real.is_relative_to(root) for root in self.settings.media_roots):
            raise Refused(403, f"{video} is outside the media roots the service may read "
                               "(AURALSAM2_SERVER_MEDIA_ROOTS)")
        if not real.is_file():
            raise Refused(404, f"{video} does not exist")
        return real

    def _download(self, url: str) -> Path:
        import urllib.request

        name = Path(urlsplit(url).path).name or "video"
        dest = self.dir / "media" / f"{hashlib.sha1(url.encode()).hexdigest()[:12]}-{name}"
        if dest.is_file():
            return dest

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):  # a redirect could leave the hosts
                return None

        opener = urllib.request.build_opener(NoRedirect)
        tmp = dest.with_suffix(".part")
        try:
            with opener.open(url, timeout=60) as r, open(tmp, "wb") as fh:
                size = 0
                while chunk := r.read(1 << 20):
                    size += len(chunk)
                    if size > self.settings.max_download_bytes:
                        raise Refused(413, "the video is larger than the download limit")
                    fh.write(chunk)
            os.replace(tmp, dest)
        except OSError as e:
            raise Refused(502, f"cannot download the video: {e}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def submit(self, video: str, options: dict | None = None) -> Job:
        try:
            opts, prompts = parse_options(options or {})
        except (ValueError, TypeError, KeyError) as e:
            raise Refused(400, f"bad options: {e}") from None
        with self.cv:
            if len(self.queue) >= self.settings.max_queue:
                self.counters["refused_full"] += 1
                raise Refused(429, f"the queue is full ({len(self.queue)} jobs waiting); "
                                   "retry later", retry_after=5)
        path = self.resolve_media(video)
        job = Job(uuid.uuid4().hex[:16], str(path), {k: getattr(opts, k) for k in OPTION_KEYS},
                  {str(k): p.as_dict() for k, p in prompts.items()})
        with self.cv:
            if len(self.queue) >= self.settings.max_queue:  # filled while we downloaded
                self.counters["refused_full"] += 1
                raise Refused(429, "the queue is full; retry later", retry_after=5)
            self.jobs[job.id] = job
            self._save(job)
            self.queue.append(job.id)
            self.counters["submitted"] += 1
            self.cv.notify_all()
        return job

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
        return read_results(self.dir / "results" / f"{job.id}.json")

    def health(self) -> dict:
        return {"status": "UP", "model_version": self.model_version(),
                "model_loaded": self._model is not None, "queued": len(self.queue),
                "running": sum(j.status == "running" for j in self.jobs.values())}

    def metrics_text(self) -> str:
        lines = [f'auralsam2_jobs_total{{event="{k}"}} {v}' for k, v in self.counters.items()
                 if k != "frames"]
        lines += [f"auralsam2_frames_total {self.counters['frames']}",
                  f"auralsam2_queue_depth {len(self.queue)}",
                  f"auralsam2_running_seconds_total {self.seconds_running:.3f}"]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            with self.cv:
                while not self.queue:
                    self.cv.wait()
                job = self.jobs[self.queue.popleft()]
            self.run_job(job)

    def run_job(self, job: Job) -> None:
        job.status, job.attempts, job.frames_done = "running", job.attempts + 1, 0
        self._save(job)
        started = time.perf_counter()
        writer = ResultsWriter(self.dir / "results", job.id)
        try:
            opts, prompts = parse_options({**job.options, "prompts": job.prompts})
            info = probe(job.video)
            job.frames_total = -(-((opts.stop_frame or info.num_frames or 0)
                                   - opts.start_frame) // opts.stride) or None
            def progress(n: int) -> None:
                job.frames_done = n
                self.counters["frames"] += 1

            prelabel_to_results(self.model, job.video, writer, opts, info=info,
                                prompts=prompts, on_frame=progress)
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
            self.seconds_running += time.perf_counter() - started
            self._save(job)
            with self.cv:
                self.cv.notify_all()
