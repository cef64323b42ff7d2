"""The function's state and its three entry points.

* ``{"image": <base64>, "threshold"?}`` — CVAT's Automatic annotation (see detector.py);
* ``{"task_id": N, "wait"?: seconds, "threshold"?, "action"?: "prelabel"|"status"}`` —
  pre-label the whole task and upload mask tracks (in the background; ``wait`` blocks up to
  ``AURALSAM2_CVAT_TASK_WAIT`` seconds, ``"status"`` reports without starting anything);
* a CVAT webhook payload (``create:task`` / ``update:task``) — the same, once per task,
  after the task's data has been uploaded; ``ping`` is acknowledged.

``handle`` returns ``(status, json_body)`` and never raises; messages say why and what to do
and never contain credentials or image data.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from auralsam2_core.remote import as_engine

from .api import CvatApi, CvatError
from .config import Settings
from .detector import active_calls, detect, parse_threshold
from .errors import AdapterError, BadRequest, Upstream
from .masks import BadImage
from .session import TaskSession, as_adapter_error
from .tracks import build_tracks, replace_own_tracks

_pylog = logging.getLogger("auralsam2.cvat")


class TaskJob:
    """Pre-labelling one whole task and uploading its tracks (a background thread)."""

    def __init__(self, service: Service, task_id: int, threshold: float, wait_for_data: bool):
        self.service, self.task_id = service, task_id
        self.threshold, self.wait_for_data = threshold, wait_for_data
        self.state = "queued"
        self.error: AdapterError | None = None
        self.result: dict | None = None
        self.session: TaskSession | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run_safely, daemon=True,
                                       name=f"auralsam2-cvat-job-{task_id}")

    def run_safely(self) -> None:
        try:
            self.run()
        except BaseException as e:  # noqa: BLE001 - kept for status calls
            self.error = as_adapter_error(e, self.task_id)
            self.state = "failed"
            self.service.log("error", f"task {self.task_id}: pre-labelling failed: "
                                      f"{self.error}")
        finally:
            self.done.set()

    def run(self) -> None:
        svc, api, tid = self.service, self.service.api, self.task_id
        if self.wait_for_data:
            self.state = "waiting_for_data"
            deadline = time.monotonic() + svc.settings.data_wait
            while not getattr(api.task(tid), "size", 0):
                if time.monotonic() > deadline:
                    raise AdapterError(f"task {tid} got no data within "
                                       f"{svc.settings.data_wait:.0f} s")
                time.sleep(svc.settings.poll_period)
        self.state = "running"
        self.session = svc.session(tid, retry_failed=True)
        records = self.session.wait_engine()
        self.state = "uploading"
        label = svc.task_label(tid)
        fmap, size = self.session.fmap, self.session.frame_size
        if size is None:
            raise AdapterError(f"task {tid}: CVAT reports no frame size")
        frames = fmap.task_frames()
        tracks = build_tracks(frames, records, label, self.threshold, *size)
        report = replace_own_tracks(api, tid, label.id, tracks,
                                    attempts=svc.settings.retries,
                                    delay=svc.settings.retry_delay, log=svc.log)
        self.result = {**report, "frames": len(frames),
                       "sounding_frames": sum(len(t.shapes) for t in tracks) - sum(
                           any(s.outside for s in t.shapes) for t in tracks)}
        self.state = "done"
        svc.uploaded_marker(tid).write_text(json.dumps(self.result))
        svc.log("info", f"task {tid}: uploaded {report['tracks_created']} mask track(s), "
                        f"replaced {report['tracks_deleted']} earlier one(s)")

    def snapshot(self) -> dict:
        out = {"task_id": self.task_id, "state": self.state}
        if self.session is not None:
            out.update(self.session.progress())
        if self.result:
            out.update(self.result)
        if self.error:
            out["error"] = str(self.error)
        return out


class Service:
    MAX_SESSIONS = 8

    def __init__(self, settings: Settings, engine, *, api: CvatApi | None = None,
                 logger=None) -> None:
        """``engine``: a model, or an engine from :func:`auralsam2_core.remote.engine_from_env`
        (the shared service when ``AURALSAM2_SERVER_URL`` is set)."""
        self.settings = settings
        self.engine = as_engine(engine)
        self._api = api
        self._logger = logger
        self.model_lock = threading.Lock()
        self.lock = threading.Lock()
        self.sessions: dict[int, TaskSession] = {}
        self.jobs: dict[int, TaskJob] = {}
        self._cvat_jobs: dict[int, object] = {}

    # ------------------------------------------------------------------ shared pieces

    def log(self, level: str, message: str) -> None:
        target = self._logger or _pylog
        fn = getattr(target, level, None) or getattr(target, {"warning": "warn"}.get(
            level, "info"), None) or target.info
        fn(f"auralsam2: {message}")

    @property
    def api(self) -> CvatApi:
        if self._api is None:
            try:
                self._api = CvatApi(self.settings)
            except ValueError as e:
                raise AdapterError(f"the function is not configured: {e}") from None
        return self._api

    def session(self, task_id: int, retry_failed: bool = False) -> TaskSession:
        """The task's session, started on first use; a failed one is started afresh when
        its failure may pass (CVAT unreachable) or when asked to."""
        with self.lock:
            s = self.sessions.get(task_id)
            if s is not None and s.failed and (retry_failed or isinstance(s.error, Upstream)):
                s = None
            if s is None:
                s = TaskSession(task_id, self.api, self.engine, self.settings, self.model_lock,
                                self.log).start()
                self._forget_old_sessions()
            self.sessions.pop(task_id, None)
            self.sessions[task_id] = s  # most recently used last
            return s

    def _forget_old_sessions(self) -> None:
        """Keep memory bounded: finished sessions beyond ``MAX_SESSIONS`` are dropped (their
        results stay in the disk cache)."""
        idle = [t for t, s in self.sessions.items() if s.engine_done or s.failed]
        for task_id in idle[: max(0, len(self.sessions) - self.MAX_SESSIONS + 1)]:
            del self.sessions[task_id]

    def job(self, job_id: int):
        if job_id not in self._cvat_jobs:
            self._cvat_jobs[job_id] = self.api.job(job_id)
        return self._cvat_jobs[job_id]

    def active_calls(self) -> list[dict]:
        return active_calls(self.api.lambda_requests(), self.settings.function_name)

    def task_label(self, task_id: int):
        labels = self.api.labels(task_id)
        for label in labels:
            if label.name == self.settings.label:
                return label
        names = ", ".join(repr(lb.name) for lb in labels) or "none"
        from .errors import Unprocessable

        raise Unprocessable(
            f"task {task_id} has no label {self.settings.label!r} (its labels: {names}); add a "
            f"label named {self.settings.label!r} (type mask or any), optionally with number "
            "attributes 'confidence' and 'review_priority' (0..100), or set "
            "AURALSAM2_CVAT_LABEL")

    def uploaded_marker(self, task_id: int):
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.settings.cache_dir / f"task-{task_id}.uploaded.json"

    def start_task(self, task_id: int, threshold: float, wait_for_data: bool = False,
                   only_once: bool = False) -> tuple[TaskJob, bool]:
        """The task's running job, or a new one; ``only_once`` keeps a finished one."""
        with self.lock:
            job = self.jobs.get(task_id)
            if job is not None and (not job.done.is_set() or (only_once
                                                               and job.state == "done")):
                return job, False
            job = TaskJob(self, task_id, threshold, wait_for_data)
            self.jobs[task_id] = job
        job.thread.start()
        return job, True

    # ------------------------------------------------------------------ entry point

    def handle(self, body, headers=None) -> tuple[int, object]:
        try:
            payload = _parse(body)
            if "image" in payload:
                return 200, detect(self, payload)
            if "task_id" in payload:
                return self._task_call(payload)
            if "event" in payload:
                return self._webhook(payload)
            raise BadRequest(
                "expected CVAT's detector request {\"image\": <base64>}, {\"task_id\": N} or "
                f"a CVAT webhook payload; got the keys {sorted(payload)[:10]}")
        except CvatError as e:
            err: AdapterError = Upstream(str(e))
        except AdapterError as e:
            err = e
        except BadImage as e:
            err = BadRequest(str(e))
        except Exception as e:  # noqa: BLE001 - answered as a 500 with its reason
            err = AdapterError(f"{type(e).__name__}: {e}")
            _pylog.exception("auralsam2: unexpected failure")
        self.log("warning" if err.status < 500 else "error",
                 f"answering {err.status}: {err}")
        return err.status, {"error": str(err), "status": err.status}

    def _task_call(self, payload: dict) -> tuple[int, dict]:
        task_id = _task_id(payload.get("task_id"))
        action = payload.get("action", "prelabel")
        if action not in ("prelabel", "status"):
            raise BadRequest(f"'action' must be 'prelabel' or 'status', got {action!r}")
        wait = payload.get("wait", 0)
        if isinstance(wait, bool):
            wait = self.settings.task_wait_cap if wait else 0
        if not isinstance(wait, int | float) or wait < 0:
            raise BadRequest(f"'wait' must be a number of seconds >= 0, got {wait!r}")
        if action == "status":
            job = self.jobs.get(task_id)
            if job is None:
                return 404, {"task_id": task_id, "state": "unknown",
                             "error": f"no pre-labelling of task {task_id} was started here"}
        else:
            job, _ = self.start_task(task_id, parse_threshold(payload, self.settings.threshold))
        job.done.wait(min(float(wait), self.settings.task_wait_cap))
        if job.error is not None:
            return job.error.status, job.snapshot()
        return (200 if job.state == "done" else 202), job.snapshot()

    def _webhook(self, payload: dict) -> tuple[int, dict]:
        event = str(payload.get("event"))
        if event == "ping":
            return 200, {"event": event, "ok": True}
        if event not in ("create:task", "update:task"):
            return 200, {"event": event, "ignored": "only create:task and update:task start "
                                                    "pre-labelling"}
        task = payload.get("task")
        if not isinstance(task, dict):
            raise BadRequest(f"webhook '{event}' without a 'task' object")
        task_id = _task_id(task.get("id"))
        if self.uploaded_marker(task_id).is_file():
            return 200, {"event": event, "task_id": task_id, "ignored": "already pre-labelled; "
                         "call the function with {\"task_id\": N} to run it again"}
        job, started = self.start_task(task_id, self.settings.threshold, wait_for_data=True,
                                       only_once=True)
        return 202, {"event": event, **job.snapshot(), "started": started}


def _parse(body) -> dict:
    if isinstance(body, bytes | bytearray):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the request body is not UTF-8 JSON") from None
    if isinstance(body, str):
        try:
            body = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError as e:
            raise BadRequest(f"the request body is not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _task_id(raw) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        if isinstance(raw, str) and raw.isdigit() and int(raw) > 0:
            return int(raw)
        raise BadRequest(f"'task_id' must be a positive integer, got {raw!r}")
    return raw
