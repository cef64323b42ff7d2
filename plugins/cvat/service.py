"""The function's state and its three entry points.

* ``{"image": <base64>, "threshold"?}`` — CVAT's Automatic annotation (see detector.py);
* ``{"task_id": N, "wait"?: seconds, "threshold"?, "action"?: "prelabel"|"status"}`` —
  pre-label the whole task and upload one mask shape per sounding frame (in the background;
  ``wait`` blocks up to ``AURALSAM2_CVAT_TASK_WAIT`` seconds, ``"status"`` reports without
  starting anything);
* a CVAT webhook payload (``create:task`` / ``update:task``) — the same, once per task,
  after the task's data has been uploaded; ``ping`` is acknowledged.

With ``AURALSAM2_CVAT_WEBHOOK_SECRET`` set, webhook payloads and direct calls must carry CVAT's
``X-Signature-256`` (see :func:`verify_signature`). ``handle`` returns ``(status, json_body)``
and never raises; messages say why and what to do and never contain credentials or image data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time

from auralsam2_core.serving.engines import as_engine

from .api import CvatApi, CvatError
from .classes import NO_CLASSES, Classes, detector_classes, task_classes
from .config import CvatFunctionSettings
from .detector import Call, active_calls, detect, header, parse_threshold
from .errors import AdapterError, CvatBadRequest, Unauthorized, Unprocessable, Upstream
from .frames import job_frames
from .masks import BadImage
from .session import TaskSession, as_adapter_error
from .upload import JobFrames, build_polygon_runs, build_shapes, replace_own

_pylog = logging.getLogger("auralsam2.cvat")


def verify_signature(secret: str, body, headers) -> None:
    """CVAT's webhook signature: ``X-Signature-256: sha256=<hex HMAC-SHA256 of the body>``
    (cvat/apps/webhooks/signals.py ``send_webhook`` signs ``json.dumps(payload)`` and posts the
    same serialisation with ``requests``' ``json=``). nuclio hands a JSON body to the handler
    already decoded (nuclio_sdk/event.py, ``content_type == "application/json"``), so the raw
    bytes are gone; ``json.dumps`` of the decoded object gives back exactly what CVAT signed
    (same key order, same default separators and escaping). Bytes or text bodies (any other
    content type) are checked as they came."""
    sent = header(headers, "X-Signature-256")
    if not sent:
        raise Unauthorized("no X-Signature-256 header, but AURALSAM2_CVAT_WEBHOOK_SECRET is set: "
                           "give the CVAT webhook the same secret (or sign direct calls)")
    if isinstance(body, bytes | bytearray):
        raw = bytes(body)
    elif isinstance(body, str):
        raw = body.encode("utf-8")
    else:
        raw = json.dumps(body).encode("utf-8")
    want = "sha256=" + hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, sent.strip()):
        raise Unauthorized("X-Signature-256 does not match AURALSAM2_CVAT_WEBHOOK_SECRET: the "
                           "webhook's secret in CVAT differs from the function's")


def connect(settings: CvatFunctionSettings, log) -> CvatApi | None:
    """The CVAT client at start-up, checked. Raises when nothing could work (CVAT older than
    the function needs, credentials refused); a CVAT not reachable yet, or settings not given,
    are only logged (and checked again on first use)."""
    try:
        api = CvatApi(settings)
    except ValueError as e:
        log("warning", f"the function is not configured yet: {e}")
        return None
    try:
        api.require_supported_server()
    except CvatError as e:
        if not e.transient:
            raise
        log("warning", f"CVAT cannot be checked yet ({e}); checked again on first use")
    return api


class TaskJob:
    """Pre-labelling one whole task and uploading its shapes (a background thread)."""

    def __init__(self, service: CvatFunctionService, task_id: int, threshold: float,
                 wait_for_data: bool):
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
        self.session = svc.session(tid, retry_failed=True, new_run=True)
        records = self.session.wait_engine()
        self.state = "uploading"
        classes = self.session.classes
        if classes:  # Ref-AVS: each object on the task label it was asked for
            by_name = {lb.name: lb for lb in svc.labels(tid)}
            labels = [by_name[name] for name in classes.names]
        else:
            labels = [svc.task_label(tid)]
        fmap, size = self.session.fmap, self.session.frame_size
        if size is None:
            raise AdapterError(f"task {tid}: CVAT reports no frame size")
        jobs = svc.annotation_jobs(tid, fmap)
        frames = fmap.task_frames()
        form: dict = {"runs": []} if svc.settings.upload == "polygon-tracks" else {"shapes": {}}
        per_label = {}
        for k, label in enumerate(labels):
            recs = {f: r[k] for f, r in records.items()}
            if "runs" in form:
                runs = build_polygon_runs(frames, recs, label, self.threshold, *size,
                                          svc.settings.instance_min_area)
                form["runs"] += runs
                n = len({s.frame for r in runs for s in r.shapes})
            else:
                shapes = build_shapes(frames, recs, label, self.threshold, *size,
                                      svc.settings.instance_min_area)
                for f, made in shapes.items():
                    form["shapes"].setdefault(f, []).extend(made)
                n = len(shapes)
            per_label[label.name] = n
        report = replace_own(api, [lb.id for lb in labels], jobs, **form,
                             attempts=svc.settings.retries, delay=svc.settings.retry_delay,
                             log=svc.log)
        self.result = {**report, "upload": svc.settings.upload, "frames": len(frames),
                       "sounding_frames": sum(per_label.values())}
        if classes:
            self.result["labels"] = per_label  # sounding frames per label
        self.state = "done"
        svc.uploaded_marker(tid).write_text(json.dumps(self.result))
        svc.log("info", f"task {tid}: uploaded {report['shapes_created']} mask shape(s) and "
                        f"{report['tracks_created']} polygon track part(s) in {report['jobs']} "
                        f"job(s), replaced {report['shapes_deleted']} shape(s) and "
                        f"{report['tracks_deleted']} track(s) made earlier")

    def snapshot(self) -> dict:
        out = {"task_id": self.task_id, "state": self.state}
        if self.session is not None:
            out.update(self.session.progress())
        if self.result:
            out.update(self.result)
        if self.error:
            out["error"] = str(self.error)
        return out


class CvatFunctionService:
    MAX_SESSIONS = 8
    RUN_MEMORY = 900.0  # s: a run that got a mask this recently may still be going on

    def __init__(self, settings: CvatFunctionSettings, engine, *, api: CvatApi | None = None,
                 logger=None) -> None:
        """``engine``: a model, or an engine from
        :func:`auralsam2_core.serving.engines.engine_from_env`
        (the shared service when ``AURALSAM2_SERVER_URL`` is set)."""
        self.settings = settings
        self.engine = as_engine(engine)
        self._api = api
        self._logger = logger
        self.lock = threading.Lock()
        self.sessions: dict[int, TaskSession] = {}
        self.jobs: dict[int, TaskJob] = {}
        self._job_ranges: dict[int, tuple] = {}
        self._label_attrs: dict[tuple, dict | None] = {}
        self._masked_runs: dict[tuple, float] = {}  # CVAT run -> when it last got a mask
        self._seen_runs: dict[tuple, None] = {}  # CVAT runs asked about, oldest first

    # ------------------------------------------------------------------ shared pieces

    def log(self, level: str, message: str) -> None:
        target = self._logger or _pylog
        fn = getattr(target, level, None) or getattr(target, {"warning": "warn"}.get(
            level, "info"), None) or target.info
        fn(f"auralsam2: {message}")

    @property
    def api(self) -> CvatApi:
        """The CVAT client, after checking once that the server is recent enough."""
        if self._api is None:
            try:
                self._api = CvatApi(self.settings)
            except ValueError as e:
                raise AdapterError(f"the function is not configured: {e}") from None
        try:
            self._api.require_supported_server()
        except CvatError as e:
            raise Upstream(str(e)) from None
        return self._api

    def session(self, task_id: int, retry_failed: bool = False,
                detector: bool = False, new_run: bool = False) -> TaskSession:
        """The task's session, started on first use; a failed one is started afresh when
        its failure may pass (CVAT unreachable) or when asked to. With a Ref-AVS model the
        Automatic annotation path (``detector``) and the task-level paths ask different
        classes (plugins/cvat/classes.py), so each has its own session; a ``new_run`` reads
        the task's labels again, and a session of other classes is replaced."""
        refavs = self.settings.variant == "refavs"
        key = (task_id, detector and refavs)
        classes = self.classes(task_id, detector) if refavs and new_run else None
        with self.lock:
            s = self.sessions.get(key)
            if s is not None and s.failed and (retry_failed or isinstance(s.error, Upstream)):
                s = None
            if s is not None and classes is not None and s.classes != classes:
                s = None  # the task's labels changed since
            if s is None:
                s = TaskSession(task_id, self.api, self.engine, self.settings, self.log,
                                classes if classes is not None
                                else self.classes(task_id, detector)).start()
                self._forget_old_sessions()
            self.sessions.pop(key, None)
            self.sessions[key] = s  # most recently used last
            return s

    def classes(self, task_id: int, detector: bool) -> Classes:
        """The queries of a run on the task: none for the AVS model; with a Ref-AVS model the
        task's labels (task-level paths) or the spec classes it maps (Automatic annotation)."""
        if self.settings.variant != "refavs":
            return NO_CLASSES
        labels = self.labels(task_id)
        return detector_classes(task_id, labels) if detector else task_classes(task_id, labels)

    def labels(self, task_id: int) -> list:
        return list(self._cvat(lambda: self.api.labels(task_id)))

    def _forget_old_sessions(self) -> None:
        """Keep memory bounded: finished sessions beyond ``MAX_SESSIONS`` are dropped (their
        results stay in the disk cache)."""
        idle = [t for t, s in self.sessions.items() if s.engine_done or s.failed]
        for task_id in idle[: max(0, len(self.sessions) - self.MAX_SESSIONS + 1)]:
            del self.sessions[task_id]

    def _cvat(self, fn):
        try:
            return fn()
        except CvatError as e:
            raise Upstream(str(e)) from None

    def job_range(self, job_id: int) -> tuple[int, int, list[int] | None]:
        """A job's task frames as ``(start, stop, included media frames or None)``: a range
        segment, or the specific frames of a ground-truth job (its data meta's
        ``included_frames``, cvat/apps/engine/views.py ``JobViewSet.metadata``)."""
        if job_id not in self._job_ranges:
            job = self._cvat(lambda: self.api.job(job_id))
            included = None
            if str(getattr(job, "type", "annotation") or "annotation") != "annotation":
                meta = self._cvat(lambda: self.api.job_meta(job_id))
                included = getattr(meta, "included_frames", None)
            self._job_ranges[job_id] = (int(job.start_frame), int(job.stop_frame), included)
        return self._job_ranges[job_id]

    def annotation_jobs(self, task_id: int, fmap) -> list[JobFrames]:
        """The task's annotation jobs (never ground-truth or consensus ones) and the task
        frames each holds."""
        out = []
        for job in self._cvat(lambda: self.api.task_jobs(task_id)):
            if str(getattr(job, "type", "annotation") or "annotation") != "annotation":
                continue
            frames = job_frames(fmap, int(job.start_frame), int(job.stop_frame))
            out.append(JobFrames(int(job.id), tuple(frames)))
        if not out:
            raise Unprocessable(f"task {task_id} has no annotation job the function's CVAT "
                                "account can see (set CVAT_ORG for an organisation's tasks)")
        return sorted(out, key=lambda j: j.frames[:1])

    def active_calls(self) -> list[Call]:
        return active_calls(self._cvat(self.api.lambda_requests), self.settings.function_name)

    def task_label(self, task_id: int):
        labels = self._cvat(lambda: self.api.labels(task_id))
        for label in labels:
            if label.name == self.settings.label:
                return label
        names = ", ".join(repr(lb.name) for lb in labels) or "none"
        raise Unprocessable(
            f"task {task_id} has no label {self.settings.label!r} (its labels: {names}); add a "
            f"label named {self.settings.label!r} (type mask or any), optionally with number "
            "attributes 'confidence' and 'review_priority' (0..100), or set "
            "AURALSAM2_CVAT_LABEL")

    def label_attrs(self, task_id: int, name: str | None = None) -> dict | None:
        """The attributes of the task's label ``name`` (default: the AVS model's label), by
        name (None when unknown): the label CVAT maps the answer to by default."""
        key = (task_id, name)
        if key not in self._label_attrs:
            try:
                if name is None:
                    label = self.task_label(task_id)
                else:
                    label = next((lb for lb in self.labels(task_id) if lb.name == name), None)
                    if label is None:
                        raise Unprocessable(f"no label {name!r}")
            except Unprocessable:  # no such label: CVAT maps the answer elsewhere
                self._label_attrs[key] = None
            except AdapterError:  # CVAT did not answer: ask again next time
                return None
            else:
                self._label_attrs[key] = {a.name: a for a in (label.attributes or [])}
        return self._label_attrs[key]

    def first_frame_of(self, run: tuple) -> bool:
        """True the first time a CVAT run asks (then the task's labels are read again)."""
        with self.lock:
            if run in self._seen_runs:
                return False
            self._seen_runs[run] = None
            while len(self._seen_runs) > 256:
                self._seen_runs.pop(next(iter(self._seen_runs)))
            return True

    # ------------------------------------------------------------------ never abort a run

    def answered(self, call: Call, with_mask: bool) -> None:
        if with_mask:
            self._masked_runs.pop(call.run, None)
            self._masked_runs[call.run] = time.monotonic()
            while len(self._masked_runs) > 256:  # oldest first
                self._masked_runs.pop(next(iter(self._masked_runs)))

    def skip(self, call: Call | None, reason: str) -> list:
        """Answer ``[]`` (CVAT goes on to the next frame) and say why in the log."""
        where = f"task {call.task}" if call else "a frame"
        self.log("warning", f"answering no mask for {where}: {reason}")
        return []

    def skip_or_fail(self, call: Call | None, err: AdapterError, what: str) -> list:
        """A failure that no later frame will get past: it ends CVAT's run only while the run
        has saved nothing (no mask answered yet), so that a rerun duplicates nothing;
        afterwards the frame is skipped and the log says why."""
        now = time.monotonic()
        if call is not None:
            masked = call.run in self._masked_runs
        else:
            masked = any(now - t < self.RUN_MEMORY for t in self._masked_runs.values())
        if masked:
            return self.skip(call, f"{what}: {err}")
        raise err

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
                return 200, detect(self, payload, headers)
            if "task_id" in payload or "event" in payload:
                if self.settings.webhook_secret:
                    verify_signature(self.settings.webhook_secret, body, headers)
                if "task_id" in payload:
                    return self._task_call(payload)
                return self._webhook(payload)
            raise CvatBadRequest(
                "expected CVAT's detector request {\"image\": <base64>}, {\"task_id\": N} or "
                f"a CVAT webhook payload; got the keys {sorted(payload)[:10]}")
        except CvatError as e:
            err: AdapterError = Upstream(str(e))
        except AdapterError as e:
            err = e
        except BadImage as e:
            err = CvatBadRequest(str(e))
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
            raise CvatBadRequest(f"'action' must be 'prelabel' or 'status', got {action!r}")
        wait = payload.get("wait", 0)
        if isinstance(wait, bool):
            wait = self.settings.task_wait_cap if wait else 0
        if not isinstance(wait, int | float) or wait < 0:
            raise CvatBadRequest(f"'wait' must be a number of seconds >= 0, got {wait!r}")
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
            raise CvatBadRequest(f"webhook '{event}' without a 'task' object")
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
            raise CvatBadRequest("the request body is not UTF-8 JSON") from None
    if isinstance(body, str):
        try:
            body = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError as e:
            raise CvatBadRequest(
                f"the request body is not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(body, dict):
        raise CvatBadRequest(
            f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _task_id(raw) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        if isinstance(raw, str) and raw.isdigit() and int(raw) > 0:
            return int(raw)
        raise CvatBadRequest(f"'task_id' must be a positive integer, got {raw!r}")
    return raw
