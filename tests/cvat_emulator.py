"""A small emulated CVAT REST server on 127.0.0.1 for the CVAT adapter's tests.

Every response body is built from cvat-sdk's own models (plain dicts deserialised into the
model class, which validates them, then serialised back), and PATCH bodies are validated the
same way, so the adapter talks to the API shape the SDK knows. Only the endpoints the adapter
calls exist. Frames are served as CVAT serves compressed frames: decoded from the original
video and JPEG-encoded; the task backup holds the original video under ``data/``.

Nothing here is a test; ``tests/test_cvat_function.py`` imports it.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from cvat_sdk.api_client import Configuration, models
from cvat_sdk.api_client.api_client import ApiClient
from cvat_sdk.api_client.model_utils import deserialize_model
from PIL import Image

from auralsam2_core.media import iter_frames

NOW = "2026-11-27T00:00:00Z"


def to_model(model_class, data: dict):
    """``data`` (JSON, as CVAT sends it) as a cvat-sdk model, validated."""
    return deserialize_model(copy.deepcopy(data), model_class, ["body"], True, Configuration(),
                             True)


def model_json(model_class, data: dict):
    """``data`` validated as ``model_class`` (cvat-sdk), back as JSON-ready data."""
    return ApiClient.sanitize_for_serialization(to_model(model_class, data))


@dataclass
class EmuTask:
    id: int
    video: Path
    start: int = 0
    stop: int | None = None  # inclusive media frame; None: the last one
    step: int = 1
    deleted: list[int] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    tracks: list[dict] = field(default_factory=list)
    shapes: list[dict] = field(default_factory=list)
    media_frames: list[np.ndarray] = field(default_factory=list, repr=False)
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        self.media_frames = [f.rgb for f in iter_frames(self.video)]
        self.height, self.width = self.media_frames[0].shape[:2]
        if self.stop is None:
            self.stop = len(self.media_frames) - 1

    @property
    def size(self) -> int:
        return (self.stop - self.start) // self.step + 1

    def frame_jpeg(self, task_frame: int, quality: int = 75) -> bytes:
        rgb = self.media_frames[self.start + task_frame * self.step]
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    def frame_b64(self, task_frame: int) -> str:
        return base64.b64encode(self.frame_jpeg(task_frame)).decode()

    def backup_zip(self) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("task.json", json.dumps({"name": f"task {self.id}", "mode":
                                                "interpolation"}))
            z.writestr("annotations.json", json.dumps([{"version": 0, "tags": [], "shapes":
                                                        [], "tracks": []}]))
            z.write(self.video, f"data/{self.video.name}")
            z.writestr("data/manifest.jsonl", '{"version":"1.1"}\n')
        return buf.getvalue()


class CvatEmulator:
    def __init__(self, token: str = "test-token-123") -> None:
        self.token = token
        self.tasks: dict[int, EmuTask] = {}
        self.jobs: dict[int, dict] = {}
        self.lambda_requests: list[dict] = []
        self.log: list[tuple[str, str]] = []  # (method, path?query)
        self.auth_failures = 0
        self.failures: list[dict] = []
        self.result_url_override: str | None = None
        self.lock = threading.RLock()
        self._next_id = 1000
        self._rq: dict[str, int] = {}
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self, method):
                emu._dispatch(self, method)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PATCH(self):
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ test set-up

    def add_task(self, task: EmuTask) -> EmuTask:
        self.tasks[task.id] = task
        return task

    def add_job(self, job_id: int, task_id: int, start: int, stop: int) -> None:
        self.jobs[job_id] = {"id": job_id, "task_id": task_id, "start_frame": start,
                             "stop_frame": stop, "frame_count": stop - start + 1}

    def start_lambda(self, function: str, task_id: int, job_id: int | None = None) -> dict:
        fn = {"id": function, "task": task_id, "threshold": 0.5}
        if job_id is not None:
            fn["job"] = job_id
        rq = {"id": f"rq-{task_id}-{job_id}", "function": fn, "status": "started",
              "enqueued": NOW, "started": NOW, "ended": None, "progress": 0, "exc_info": None}
        with self.lock:
            self.lambda_requests.append(rq)
        return rq

    def fail(self, method: str, path: str, *, status: int = 500, times: int = 1,
             after: bool = False) -> None:
        """The next ``times`` matching requests fail with ``status``; with ``after`` the
        request is applied first (an answer lost on the way back)."""
        self.failures.append({"method": method, "path": re.compile(path), "status": status,
                              "times": times, "after": after})

    def new_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    def calls(self, method: str | None = None, path: str = "") -> list[tuple[str, str]]:
        return [c for c in self.log if (method is None or c[0] == method) and path in c[1]]

    # ------------------------------------------------------------------ HTTP

    def _failure_for(self, method: str, path: str) -> dict | None:
        with self.lock:
            for f in self.failures:
                if f["times"] > 0 and f["method"] == method and f["path"].search(path):
                    f["times"] -= 1
                    return f
        return None

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.log.append((method, h.path))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            self.auth_failures += 1
            return self._send(h, 401, {"detail": "Authentication credentials were not "
                                                 "provided."})
        failure = self._failure_for(method, path)
        if failure and not failure["after"]:
            return self._send(h, failure["status"], {"detail": "emulated failure"})
        try:
            status, body, ctype, extra = self._route(method, path, query, raw)
        except KeyError as e:
            status, body, ctype, extra = 404, {"detail": f"not found: {e}"}, None, {}
        if failure:
            return self._send(h, failure["status"], {"detail": "emulated failure (applied)"})
        self._send(h, status, body, ctype, extra)

    def _send(self, h, status, body, ctype=None, extra=None) -> None:
        if isinstance(body, bytes | bytearray):
            data, ctype = bytes(body), ctype or "application/octet-stream"
        else:
            data, ctype = json.dumps(body).encode(), "application/vnd.cvat+json"
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method, path, query, raw):
        m = re.fullmatch(r"/api/tasks/(\d+)(/.*)?", path)
        if method == "GET" and path == "/api/lambda/requests":
            with self.lock:
                data = [model_json(models.FunctionCall, r) for r in self.lambda_requests]
            return 200, data, None, {}
        if method == "GET" and path == "/api/labels":
            task = self.tasks[int(query["task_id"])]
            data = {"count": len(task.labels), "next": None, "previous": None,
                    "results": task.labels}
            return 200, model_json(models.PaginatedLabelList, data), None, {}
        jm = re.fullmatch(r"/api/jobs/(\d+)", path)
        if method == "GET" and jm:
            job = self.jobs[int(jm.group(1))]
            data = {**job, "issues": {"count": 0, "url": f"{self.url}/api/issues"},
                    "labels": {"url": f"{self.url}/api/labels"}, "type": "annotation",
                    "mode": "interpolation", "dimension": "2d"}
            return 200, model_json(models.JobRead, data), None, {}
        rm = re.fullmatch(r"/api/requests/([\w.-]+)", path)
        if method == "GET" and rm:
            task_id = self._rq[rm.group(1)]
            url = self.result_url_override or \
                f"{self.url}/api/tasks/{task_id}/backup/download?rq_id={rm.group(1)}"
            data = {"status": "finished", "id": rm.group(1), "message": "",
                    "operation": {"type": "export:task-backup", "target": "task",
                                  "task_id": task_id},
                    "created_date": NOW, "progress": 1.0, "result_url": url}
            return 200, model_json(models.Request, data), None, {}
        if not m:
            raise KeyError(path)
        task = self.tasks[int(m.group(1))]
        rest = m.group(2) or ""
        if method == "GET" and rest == "":
            return 200, model_json(models.TaskRead, self._task_read(task)), None, {}
        if method == "GET" and rest == "/data/meta":
            return 200, model_json(models.DataMetaRead, self._meta(task)), None, {}
        if method == "GET" and rest == "/data":
            return 200, task.frame_jpeg(int(query["number"])), "image/jpeg", {}
        if method == "POST" and rest == "/backup/export":
            rq_id = f"export-{task.id}-{self.new_id()}"
            self._rq[rq_id] = task.id
            return 202, model_json(models.RqId, {"rq_id": rq_id}), None, {}
        if method == "GET" and rest == "/backup/download":
            return 200, task.backup_zip(), "application/zip", {
                "Content-Disposition": f'attachment; filename="task_{task.id}_backup.zip"'}
        if rest in ("/annotations", "/annotations/"):
            if method == "GET":
                return 200, self._annotations(task), None, {}
            if method == "PATCH":
                return 200, self._patch(task, query["action"], json.loads(raw)), None, {}
        raise KeyError(path)

    def _task_read(self, task: EmuTask) -> dict:
        return {"id": task.id, "name": f"task {task.id}", "size": task.size,
                "mode": "interpolation", "dimension": "2d", "data": 500 + task.id,
                "jobs": {"count": 1, "completed": 0, "validation": 0,
                         "url": f"{self.url}/api/jobs"},
                "labels": {"url": f"{self.url}/api/labels"},
                "created_date": NOW, "updated_date": NOW, "status": "annotation"}

    def _meta(self, task: EmuTask) -> dict:
        return {"chunks_updated_date": NOW, "deleted_frames": sorted(task.deleted),
                "frames": [{"name": task.video.name, "related_files": 0,
                            "width": task.width, "height": task.height}],
                "start_frame": task.start, "stop_frame": task.stop, "size": task.size,
                "frame_filter": f"step={task.step}" if task.step > 1 else "",
                "image_quality": 70, "chunk_size": 36, "storage": "local",
                "included_frames": None}

    def _annotations(self, task: EmuTask) -> dict:
        with self.lock:
            data = {"version": 0, "tags": [], "shapes": task.shapes, "tracks": task.tracks,
                    "intervals": []}
            return model_json(models.LabeledData, data)

    def _patch(self, task: EmuTask, action: str, body: dict) -> dict:
        model_json(models.PatchedLabeledDataRequest, body)  # validate the upload
        with self.lock:
            if action == "create":
                for t in body.get("tracks", []):
                    t = {**t, "id": self.new_id()}
                    t["shapes"] = [{**s, "id": self.new_id()} for s in t["shapes"]]
                    task.tracks.append(t)
            elif action == "delete":
                ids = {t["id"] for t in body.get("tracks", [])}
                task.tracks = [t for t in task.tracks if t["id"] not in ids]
            else:
                raise KeyError(action)
        return model_json(models.LabeledData, {"version": 0, "tags": [], "shapes": [],
                                               "tracks": body.get("tracks", [])})
