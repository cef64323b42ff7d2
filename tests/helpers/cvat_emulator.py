"""An emulated CVAT server on 127.0.0.1 for the CVAT adapter's tests, as strict as CVAT.

It serves the REST endpoints the adapter calls and enforces the rules CVAT enforces on them;
it runs CVAT's own Automatic annotation loop against the function, and CVAT's webhook sender
through an emulated SSRF proxy; it also stands in for nuclio's HTTP trigger. Each rule names the
file of CVAT's (or nuclio's, smokescreen's) source it follows: cvat-ai/cvat 2.x, whose API
the pinned cvat-sdk 2.80 models describe.

* Bodies: every response is built from cvat-sdk's own models and every PATCH body is validated
  with them (the API shape the SDK knows).
* Who may do what: CVAT's OPA rules, object by object (cvat/apps/engine/rules/tasks.rego,
  jobs.rego) with the object's organisation as context (cvat/apps/iam/permissions.py
  ``get_organization(request, obj)``), and list filters with the request's organisation context
  (``X-Organization`` / ``org`` / ``org_id``, cvat/apps/iam/middleware.py): the running lambda
  requests as lambda.rego's ``filter`` (cvat/apps/lambda_manager/rules/lambda.rego, applied by
  cvat/apps/lambda_manager/views.py ``RequestViewSet.list``), the jobs list as jobs.rego's.
* Annotations: stored per job; a task-level PATCH is sliced into the jobs
  (cvat/apps/dataset_manager/task.py ``TaskAnnotation._patch_data``), and a track that has to be
  cut at a job boundary is interpolated, which masks cannot be
  (cvat/apps/dataset_manager/annotation.py ``_slice_track`` -> ``TrackManager``:
  ``NotImplementedError``, a 500). ``ui_load_job`` is what CVAT's UI does when it opens a job
  (cvat-core/src/annotations-objects/index.ts ``trackFactory``: no mask tracks) and
  ``export_dataset`` what every export does (``TrackManager.to_shapes`` interpolates every
  track). Label and attribute ids are checked as task.py ``JobAnnotation`` does.
* Automatic annotation: :meth:`CvatEmulator.auto_annotation` is ``LambdaJob._call_detector``
  (cvat/apps/lambda_manager/views.py): one frame after another, ``raise_for_status`` on every
  answer (the first non-2xx ends the run), results converted as ``DetectionResultConverter``
  does and saved every 100 frames.
* Webhooks: :meth:`CvatEmulator.send_webhook` is cvat/apps/webhooks/signals.py ``send_webhook``
  (``X-Signature-256`` HMAC of ``json.dumps(payload)``, ``requests.post(json=...)``, 10 s),
  through :class:`Smokescreen` (stripe/smokescreen pkg/smokescreen/ip_policy.go).

Not emulated (the adapter does not depend on them): merging of objects in overlapping segments
on task-level reads (masks never merge: annotation.py gives them similarity 0), interpolation of
non-mask tracks, projects (a task's project staff is given on the task), GT-pool validation.

Nothing here is a test; ``tests/test_cvat_function.py`` imports it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import io
import ipaddress
import itertools
import json
import re
import shlex
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import numpy as np
from cvat_sdk.api_client import Configuration, models
from cvat_sdk.api_client.api_client import ApiClient
from cvat_sdk.api_client.model_utils import deserialize_model
from PIL import Image

from auralsam2_core.media.video import iter_frames

NOW = "2026-11-27T00:00:00Z"
VERSION = "2.58.1"
# cvat/apps/iam/rules/utils.rego get_priority; organizations.rego role priorities
PRIVILEGE = {"admin": 0, "business": 50, "user": 75, "worker": 100, None: 1000}
ROLE = {"owner": 0, "maintainer": 50, "supervisor": 75, "worker": 100, None: 1000}
VIEW_SCOPES = {"view", "view:annotations", "view:data", "view:metadata", "export:backup"}
UPDATE_SCOPES = {"update:annotations", "delete:annotations"}
# cvat-core/src/annotations-objects/index.ts: shapeFactory / trackFactory cases
UI_SHAPES = {"rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask",
             "skeleton"}
UI_TRACKS = UI_SHAPES - {"mask"}
# cvat/apps/dataset_manager/annotation.py TrackManager interpolation: everything else raises
INTERPOLATED = {"rectangle", "ellipse", "cuboid", "skeleton", "points", "polygon", "polyline"}


def to_model(model_class, data: dict):
    """``data`` (JSON, as CVAT sends it) as a cvat-sdk model, validated."""
    return deserialize_model(copy.deepcopy(data), model_class, ["body"], True, Configuration(),
                             True)


def model_json(model_class, data: dict):
    """``data`` validated as ``model_class`` (cvat-sdk), back as JSON-ready data."""
    return ApiClient.sanitize_for_serialization(to_model(model_class, data))


class HttpError(Exception):
    """An answer other than 200, as CVAT gives it."""

    def __init__(self, status: int, detail):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class CvatUiError(Exception):
    """What CVAT's UI shows instead of a job it cannot open (cvat-core ``DataError``)."""


@dataclass
class EmuUser:
    id: int
    username: str
    token: str
    privilege: str | None = "user"  # the CVAT group: admin, user or worker


@dataclass
class EmuOrg:
    id: int
    slug: str
    owner_id: int
    roles: dict[int, str] = field(default_factory=dict)  # user id -> owner/maintainer/...


@dataclass
class EmuJob:
    id: int
    task_id: int
    start: int  # task frames of its segment (JobRead.start_frame / stop_frame)
    stop: int
    type: str = "annotation"  # or ground_truth
    frames: list[int] | None = None  # media frames of a specific-frames segment
    assignee_id: int | None = None
    shapes: list[dict] = field(default_factory=list)
    tracks: list[dict] = field(default_factory=list)


@dataclass
class EmuTask:
    id: int
    video: Path
    start: int = 0
    stop: int | None = None  # inclusive media frame; None: the last one
    step: int = 1
    deleted: list[int] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    owner_id: int = 1
    assignee_id: int | None = None
    org_id: int | None = None
    project_owner_id: int | None = None
    project_assignee_id: int | None = None
    segment_size: int | None = None  # None: one job
    overlap: int = 0
    jobs: list[EmuJob] = field(default_factory=list)
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

    def media_frame(self, task_frame: int) -> int:
        return self.start + task_frame * self.step

    def frame_jpeg(self, task_frame: int, quality: int = 75) -> bytes:
        rgb = self.media_frames[self.media_frame(task_frame)]
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    def frame_b64(self, task_frame: int) -> str:
        return base64.b64encode(self.frame_jpeg(task_frame)).decode()

    def job_frames(self, job: EmuJob) -> list[int]:
        """Task frames of a job in the order CVAT visits them (lambda_manager/views.py
        ``_get_frame_set``: ``sorted((abs - start) // step for abs in segment.frame_set)``)."""
        frames = range(job.start, min(job.stop, self.size - 1) + 1)
        if job.frames is not None:
            media = set(job.frames)
            frames = [f for f in frames if self.media_frame(f) in media]
        return list(frames)

    def annotation_jobs(self) -> list[EmuJob]:
        return [j for j in self.jobs if j.type == "annotation"]

    @property
    def shapes(self) -> list[dict]:
        return [s for j in self.annotation_jobs() for s in j.shapes]

    @property
    def tracks(self) -> list[dict]:
        return [t for j in self.annotation_jobs() for t in j.tracks]

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


def segments(size: int, segment_size: int | None, overlap: int) -> list[tuple[int, int]]:
    """The task's segments as CVAT cuts a video task (start, stop) with ``overlap`` frames
    shared by neighbours."""
    seg = segment_size or size
    out, start = [], 0
    while True:
        stop = min(start + seg - 1, size - 1)
        out.append((start, stop))
        if stop >= size - 1:
            return out
        start = stop + 1 - overlap


@dataclass
class FrameCall:
    frame: int
    status: int
    body: object


@dataclass
class AutoAnnotationRun:
    """One Automatic annotation run: what the function answered, how it ended."""

    request: dict
    calls: list[FrameCall] = field(default_factory=list)
    status: str = "started"  # finished or failed
    error: str | None = None
    submits: int = 0  # how many times results were saved

    @property
    def answers(self) -> dict[int, object]:
        return {c.frame: c.body for c in self.calls}


class CvatEmulator:
    SAVE_EVERY = 100  # lambda_manager/views.py: "if frame and frame % 100 == 0: submit()"

    def __init__(self, token: str = "test-token-123", *, version: str = VERSION) -> None:
        self.version = version
        self.users: dict[str, EmuUser] = {}
        self.admin = self.add_user("admin", token, "admin")
        self.orgs: dict[str, EmuOrg] = {}
        self.tasks: dict[int, EmuTask] = {}
        self.jobs: dict[int, EmuJob] = {}
        self.lambda_requests: list[dict] = []
        self.webhooks: list[dict] = []
        self.deliveries: list[dict] = []
        self.smokescreen_opts = ""  # SMOKESCREEN_OPTS of cvat_server / cvat_worker_webhooks
        self.log: list[tuple[str, str]] = []  # (method, path?query)
        self.request_headers: list[dict] = []
        self.auth_failures = 0
        self.failures: list[dict] = []
        self.result_url_override: str | None = None
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        self._rq: dict[str, tuple[int, int]] = {}  # export rq id -> (task id, owner id)
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

    def new_id(self) -> int:
        with self.lock:
            return next(self._ids)

    def add_user(self, username: str, token: str, privilege: str | None = "user") -> EmuUser:
        user = EmuUser(len(self.users) + 1, username, token, privilege)
        self.users[token] = user
        return user

    def add_org(self, slug: str, owner: EmuUser, **members: str) -> EmuOrg:
        """``members``: username -> role (maintainer, supervisor, worker)."""
        org = EmuOrg(self.new_id(), slug, owner.id, {owner.id: "owner"})
        by_name = {u.username: u for u in self.users.values()}
        for name, role in members.items():
            org.roles[by_name[name].id] = role
        self.orgs[slug] = org
        return org

    def add_task(self, task: EmuTask) -> EmuTask:
        for start, stop in segments(task.size, task.segment_size, task.overlap):
            job = EmuJob(self.new_id(), task.id, start, stop)
            task.jobs.append(job)
            self.jobs[job.id] = job
        self.tasks[task.id] = task
        return task

    def add_gt_job(self, task: EmuTask, task_frames: list[int]) -> EmuJob:
        """A ground-truth job on specific frames (segment type specific_frames)."""
        job = EmuJob(self.new_id(), task.id, min(task_frames), max(task_frames),
                     type="ground_truth", frames=[task.media_frame(f) for f in task_frames])
        task.jobs.append(job)
        self.jobs[job.id] = job
        return job

    def put_annotations(self, job: EmuJob, *, shapes=(), tracks=()) -> None:
        """Annotations an annotator saved in a job (kept as given, ids included)."""
        with self.lock:
            job.shapes.extend(copy.deepcopy(list(shapes)))
            job.tracks.extend(copy.deepcopy(list(tracks)))

    def start_lambda(self, function: str, task_id: int, job_id: int | None = None,
                     owner: EmuUser | None = None) -> dict:
        """A running Automatic annotation request (LambdaQueue.enqueue): one per task."""
        with self.lock:
            for r in self.lambda_requests:
                if r["function"]["task"] == task_id and r["status"] not in ("finished",
                                                                             "failed"):
                    raise HttpError(409, f"Only one running request is allowed for the same "
                                         f"task #{task_id}")
            self.lambda_requests = [r for r in self.lambda_requests
                                    if r["function"]["task"] != task_id]
            fn = {"id": function, "task": task_id, "threshold": 0.5}
            if job_id is not None:
                fn["job"] = job_id
            stamp = f"2026-11-27T00:00:{next(self._ids) % 60:02d}.{next(self._ids)}Z"
            rq = {"id": f"action=autoannotate&target=task&target_id={task_id}",
                  "function": fn, "status": "started", "enqueued": stamp, "started": stamp,
                  "ended": None, "progress": 0, "exc_info": None,
                  "owner": (owner or self.admin).id}
            self.lambda_requests.append(rq)
        return rq

    def fail(self, method: str, path: str, *, status: int = 500, times: int = 1,
             after: bool = False) -> None:
        """The next ``times`` matching requests fail with ``status``; with ``after`` the
        request is applied first (an answer lost on the way back)."""
        self.failures.append({"method": method, "path": re.compile(path), "status": status,
                              "times": times, "after": after})

    def calls(self, method: str | None = None, path: str = "") -> list[tuple[str, str]]:
        return [c for c in self.log if (method is None or c[0] == method) and path in c[1]]

    # ------------------------------------------------------------------ IAM

    def _context_org(self, headers, query) -> EmuOrg | None:
        """The request's organisation (cvat/apps/iam/middleware.py ``get_organization``)."""
        slug, org_id, header = query.get("org"), query.get("org_id"), headers.get("X-Organization")
        if org_id is not None and (slug is not None or header is not None):
            raise HttpError(400, 'You cannot specify "org_id" query parameter with "org" query '
                                 'parameter or "X-Organization" HTTP header at the same time.')
        if slug is not None and header is not None and slug != header:
            raise HttpError(400, 'You cannot specify "org" query parameter and "X-Organization" '
                                 'HTTP header with different values.')
        slug = slug if slug is not None else header
        if slug:
            if slug not in self.orgs:
                raise HttpError(404, f"{slug} organization does not exist.")
            return self.orgs[slug]
        if org_id:
            for org in self.orgs.values():
                if str(org.id) == org_id:
                    return org
            raise HttpError(404, f"{org_id} organization does not exist.")
        return None

    def _org_by_id(self, org_id: int | None) -> EmuOrg | None:
        return next((o for o in self.orgs.values() if o.id == org_id), None)

    @staticmethod
    def _has_perm(user: EmuUser, group: str) -> bool:
        return PRIVILEGE[user.privilege] <= PRIVILEGE[group]

    @staticmethod
    def _has_role(org: EmuOrg | None, user: EmuUser, role: str) -> bool:
        return org is not None and ROLE[org.roles.get(user.id)] <= ROLE[role]

    @staticmethod
    def _task_staff(task: EmuTask, user: EmuUser) -> bool:
        return user.id in (task.owner_id, task.assignee_id, task.project_owner_id,
                           task.project_assignee_id)

    def _object_org(self, task: EmuTask, user: EmuUser) -> EmuOrg | None:
        """Object permissions use the object's organisation (cvat/apps/iam/permissions.py
        ``get_organization(request, obj)``) and require an active membership in it."""
        org = self._org_by_id(task.org_id)
        if org is not None and user.privilege != "admin" and user.id not in org.roles:
            raise HttpError(403, "You should be an active member in the organization")
        return org

    def check_task(self, user: EmuUser, task: EmuTask, scope: str) -> None:
        """cvat/apps/engine/rules/tasks.rego ``allow``."""
        if user.privilege == "admin":
            return
        org, staff = self._object_org(task, user), self._task_staff(task, user)
        self._check_staff_or_org_role(user, org, staff, scope)

    def check_job(self, user: EmuUser, job: EmuJob, scope: str) -> None:
        """cvat/apps/engine/rules/jobs.rego ``allow``."""
        if user.privilege == "admin":
            return
        task = self.tasks[job.task_id]
        org = self._object_org(task, user)
        staff = self._task_staff(task, user) or job.assignee_id == user.id
        self._check_staff_or_org_role(user, org, staff, scope)

    def _check_staff_or_org_role(self, user: EmuUser, org: EmuOrg | None, staff: bool,
                                 scope: str) -> None:
        """The non-admin ``allow`` rules tasks.rego and jobs.rego share
        (cvat/apps/engine/rules/tasks.rego, cvat/apps/engine/rules/jobs.rego): without an
        organisation, the object's staff (update scopes: with the worker privilege); in one,
        a maintainer (user privilege) or a worker member who is staff (update scopes: with
        the worker privilege). ``staff``: the task's people (jobs.rego adds the job's
        assignee)."""
        if scope in VIEW_SCOPES:
            ok = staff if org is None else (
                (self._has_perm(user, "user") and self._has_role(org, user, "maintainer"))
                or (self._has_role(org, user, "worker") and staff))
        elif scope in UPDATE_SCOPES:
            ok = (staff and self._has_perm(user, "worker")) if org is None else (
                (self._has_perm(user, "user") and self._has_role(org, user, "maintainer"))
                or (staff and self._has_perm(user, "worker")
                    and self._has_role(org, user, "worker")))
        else:
            raise AssertionError(scope)
        if not ok:
            raise HttpError(403, "You do not have permission to perform this action.")

    def visible_tasks(self, user: EmuUser, org: EmuOrg | None) -> set[int]:
        """Tasks a list call may show: lambda.rego's / tasks.rego's ``filter`` (the request's
        organisation context, not the objects')."""
        out = set()
        for task in self.tasks.values():
            in_org = org is not None and task.org_id == org.id
            staff = self._task_staff(task, user)
            if user.privilege == "admin":
                ok = org is None or in_org
            elif org is None:
                ok = staff
            elif self._has_perm(user, "user") and self._has_role(org, user, "maintainer"):
                ok = in_org
            elif self._has_role(org, user, "worker"):
                ok = staff and in_org
            else:
                ok = False  # no filter applies: nothing is listed
            if ok:
                out.add(task.id)
        return out

    def visible_jobs(self, user: EmuUser, org: EmuOrg | None) -> set[int]:
        """cvat/apps/engine/rules/jobs.rego ``filter``: as tasks, plus jobs assigned to the
        user."""
        tasks = self.visible_tasks(user, org)
        out = set()
        for job in self.jobs.values():
            task = self.tasks[job.task_id]
            assigned = job.assignee_id == user.id and (
                user.privilege == "admin" or org is None
                or (task.org_id == org.id and self._has_role(org, user, "worker")))
            if job.task_id in tasks or assigned:
                out.add(job.id)
        return out

    # ------------------------------------------------------------------ HTTP

    def _failure_for(self, method: str, path: str) -> dict | None:
        with self.lock:
            for f in self.failures:
                if f["times"] > 0 and f["method"] == method and f["path"].search(path):
                    f["times"] -= 1
                    return f
        return None

    def _user(self, headers) -> EmuUser | None:
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            return self.users.get(auth[len("Bearer "):])
        return None

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path, query = unquote(parts.path), {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.log.append((method, h.path))
        self.request_headers.append(dict(h.headers))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        user = self._user(h.headers)
        if user is None and path == "/api/server/about":  # public (the login page shows it)
            user = EmuUser(0, "anonymous", "", None)
        if user is None:
            self.auth_failures += 1
            return self._send(h, 401, {"detail": "Authentication credentials were not "
                                                 "provided."})
        failure = self._failure_for(method, path)
        if failure and not failure["after"]:
            return self._send(h, failure["status"], {"detail": "emulated failure"})
        try:
            org = self._context_org(h.headers, query)
            status, body, ctype, extra = self._route(user, org, method, path, query, raw)
        except HttpError as e:
            status, body, ctype, extra = e.status, {"detail": e.detail}, None, {}
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

    def _route(self, user, org, method, path, query, raw):
        if method == "GET" and path == "/api/server/about":
            data = {"name": "Computer Vision Annotation Tool", "description": "emulated",
                    "version": self.version, "logo_url": "", "subtitle": ""}
            return 200, model_json(models.About, data), None, {}
        if method == "GET" and path == "/api/lambda/requests":
            visible = self.visible_tasks(user, org)
            with self.lock:
                data = [model_json(models.FunctionCall, self._function_call(r))
                        for r in self.lambda_requests if r["function"]["task"] in visible]
            return 200, data, None, {}
        if method == "GET" and path == "/api/labels":
            task = self.tasks[int(query["task_id"])]
            self.check_task(user, task, "view")
            data = {"count": len(task.labels), "next": None, "previous": None,
                    "results": task.labels}
            return 200, model_json(models.PaginatedLabelList, data), None, {}
        if method == "GET" and path == "/api/jobs":
            return 200, self._job_list(user, org, query), None, {}
        jm = re.fullmatch(r"/api/jobs/(\d+)(/.*)?", path)
        if jm:
            return self._job_route(user, self.jobs[int(jm.group(1))], method, jm.group(2) or "",
                                   query, raw)
        rm = re.fullmatch(r"/api/requests/([\w.=&-]+)", path)
        if method == "GET" and rm:
            task_id, owner = self._rq[rm.group(1)]
            if owner != user.id:  # requests are their creator's
                raise HttpError(404, "Not found.")
            url = self.result_url_override or \
                f"{self.url}/api/tasks/{task_id}/backup/download?" + urlencode(
                    {"rq_id": rm.group(1)})
            data = {"status": "finished", "id": rm.group(1), "message": "",
                    "operation": {"type": "export:task-backup", "target": "task",
                                  "task_id": task_id},
                    "created_date": NOW, "progress": 1.0, "result_url": url}
            return 200, model_json(models.Request, data), None, {}
        m = re.fullmatch(r"/api/tasks/(\d+)(/.*)?", path)
        if not m:
            raise KeyError(path)
        task = self.tasks[int(m.group(1))]
        rest = m.group(2) or ""
        if method == "GET" and rest == "":
            self.check_task(user, task, "view")
            return 200, model_json(models.TaskRead, self.task_read(task)), None, {}
        if method == "GET" and rest == "/data/meta":
            self.check_task(user, task, "view:metadata")
            return 200, model_json(models.DataMetaRead, self._meta(task)), None, {}
        if method == "GET" and rest == "/data":
            self.check_task(user, task, "view:data")
            return 200, task.frame_jpeg(int(query["number"])), "image/jpeg", {}
        if method == "POST" and rest == "/backup/export":
            self.check_task(user, task, "export:backup")
            rq_id = f"action=export&target=task&target_id={task.id}&subresource=backup" \
                    f"&user_id={user.id}&n={self.new_id()}"
            self._rq[rq_id] = (task.id, user.id)
            return 202, model_json(models.RqId, {"rq_id": rq_id}), None, {}
        if method == "GET" and rest == "/backup/download":
            if self._rq.get(query.get("rq_id"), (None, None))[1] != user.id:
                # tasks.rego: download:exported_file only by the export's requester
                raise HttpError(403, "You do not have permission to perform this action.")
            return 200, task.backup_zip(), "application/zip", {
                "Content-Disposition": f'attachment; filename="task_{task.id}_backup.zip"'}
        if rest in ("/annotations", "/annotations/"):
            if method == "GET":
                self.check_task(user, task, "view:annotations")
                return 200, self._task_annotations(task), None, {}
            if method == "PATCH":
                self.check_task(user, task, "update:annotations")
                return 200, self.patch_task(task, query.get("action"), json.loads(raw)), None, {}
        raise KeyError(path)

    def _job_route(self, user, job, method, rest, query, raw):
        task = self.tasks[job.task_id]
        if method == "GET" and rest == "":
            self.check_job(user, job, "view")
            return 200, model_json(models.JobRead, self.job_read(job)), None, {}
        if method == "GET" and rest == "/data/meta":
            self.check_job(user, job, "view:metadata")
            return 200, model_json(models.DataMetaRead, self._job_meta(task, job)), None, {}
        if rest in ("/annotations", "/annotations/"):
            if method == "GET":
                self.check_job(user, job, "view:annotations")
                with self.lock:
                    data = {"version": 0, "tags": [], "shapes": job.shapes,
                            "tracks": job.tracks, "intervals": []}
                    return 200, model_json(models.LabeledData, data), None, {}
            if method == "PATCH":
                self.check_job(user, job, "update:annotations")
                return 200, self.patch_job(job, query.get("action"), json.loads(raw)), None, {}
        raise KeyError(rest)

    def _job_list(self, user, org, query) -> dict:
        visible = self.visible_jobs(user, org)
        jobs = [j for j in self.jobs.values() if j.id in visible
                and ("task_id" not in query or j.task_id == int(query["task_id"]))
                and ("type" not in query or j.type == query["type"])]
        size = int(query.get("page_size", 2))  # small pages: pagination is exercised
        page = int(query.get("page", 1))
        chunk = jobs[(page - 1) * size: page * size]
        nxt = f"{self.url}/api/jobs?page={page + 1}" if page * size < len(jobs) else None
        data = {"count": len(jobs), "next": nxt, "previous": None,
                "results": [self.job_read(j) for j in chunk]}
        return model_json(models.PaginatedJobReadList, data)

    def _function_call(self, r: dict) -> dict:
        """LambdaJob.to_dict (no ``owner``)."""
        return {k: v for k, v in r.items() if k != "owner"}

    def task_read(self, task: EmuTask) -> dict:
        return {"id": task.id, "name": f"task {task.id}", "size": task.size,
                "mode": "interpolation", "dimension": "2d", "data": 500 + task.id,
                "organization": task.org_id, "segment_size": task.segment_size or task.size,
                "overlap": task.overlap,
                "jobs": {"count": len(task.jobs), "completed": 0, "validation": 0,
                         "url": f"{self.url}/api/jobs?task_id={task.id}"},
                "labels": {"url": f"{self.url}/api/labels?task_id={task.id}"},
                "created_date": NOW, "updated_date": NOW, "status": "annotation"}

    def job_read(self, job: EmuJob) -> dict:
        task = self.tasks[job.task_id]
        return {"id": job.id, "task_id": job.task_id, "start_frame": job.start,
                "stop_frame": job.stop, "frame_count": len(task.job_frames(job)),
                "type": job.type, "organization": task.org_id,
                "issues": {"count": 0, "url": f"{self.url}/api/issues"},
                "labels": {"url": f"{self.url}/api/labels"}, "mode": "interpolation",
                "dimension": "2d"}

    def _meta(self, task: EmuTask) -> dict:
        return {"chunks_updated_date": NOW, "deleted_frames": sorted(task.deleted),
                "frames": [{"name": task.video.name, "related_files": 0,
                            "width": task.width, "height": task.height}],
                "start_frame": task.start, "stop_frame": task.stop, "size": task.size,
                "frame_filter": f"step={task.step}" if task.step > 1 else "",
                "image_quality": 70, "chunk_size": 36, "storage": "local",
                "included_frames": None}

    def _job_meta(self, task: EmuTask, job: EmuJob) -> dict:
        """cvat/apps/engine/views.py ``JobViewSet.metadata``: media start/stop of the segment,
        ``included_frames`` for a specific-frames segment."""
        meta = self._meta(task)
        meta.update(start_frame=task.media_frame(job.start),
                    stop_frame=min(task.stop, task.media_frame(job.stop)),
                    size=len(task.job_frames(job)), included_frames=job.frames or None,
                    deleted_frames=[f for f in task.deleted if job.start <= f <= job.stop])
        return meta

    # ------------------------------------------------------------------ annotations

    def _task_annotations(self, task: EmuTask) -> dict:
        """A task's annotations: its annotation jobs' (cvat/apps/dataset_manager/task.py
        ``TaskAnnotation.init_from_db``)."""
        with self.lock:
            data = {"version": 0, "tags": [], "shapes": task.shapes, "tracks": task.tracks,
                    "intervals": []}
            return model_json(models.LabeledData, data)

    def _validate(self, task: EmuTask, body: dict) -> None:
        """cvat/apps/dataset_manager/task.py ``JobAnnotation``: label and attribute ids must
        exist (shapes: any attribute of the label; tracks: immutable ones; tracked shapes:
        mutable ones)."""
        model_json(models.PatchedLabeledDataRequest, body)
        labels = {lb["id"]: lb for lb in task.labels}

        def check(obj, kind):
            label = labels.get(obj["label_id"])
            if label is None:
                raise HttpError(400, f"label_id `{obj['label_id']}` is invalid")
            attrs = label.get("attributes", [])
            ok = {a["id"] for a in attrs if kind == "all" or a.get("mutable") == (
                kind == "mutable")}
            return ok

        for s in body.get("shapes", []):
            ok = check(s, "all")
            for a in s.get("attributes", []):
                if a["spec_id"] not in ok:
                    raise HttpError(400, f"spec_id `{a['spec_id']}` is invalid")
        for t in body.get("tracks", []):
            immutable, mutable = check(t, "immutable"), check(t, "mutable")
            for a in t.get("attributes", []):
                if a["spec_id"] not in immutable:
                    raise HttpError(400, f"spec_id `{a['spec_id']}` is invalid")
            for s in t.get("shapes", []):
                for a in s.get("attributes", []):
                    if a["spec_id"] not in mutable:
                        raise HttpError(400, f"spec_id `{a['spec_id']}` is invalid")

    def _store(self, job: EmuJob, action: str, body: dict) -> dict:
        if action == "create":
            made = {"shapes": [], "tracks": []}
            for s in body.get("shapes", []):
                s = {"source": "manual", "group": 0, "attributes": [], "elements": [],
                     **copy.deepcopy(s), "id": self.new_id()}
                job.shapes.append(s)
                made["shapes"].append(s)
            for t in body.get("tracks", []):
                t = {"source": "manual", "group": 0, "attributes": [], "elements": [],
                     **copy.deepcopy(t), "id": self.new_id()}
                t["shapes"] = [{**s, "id": self.new_id()} for s in t["shapes"]]
                job.tracks.append(t)
                made["tracks"].append(t)
            return made
        if action == "delete":
            shape_ids = {s["id"] for s in body.get("shapes", [])}
            track_ids = {t["id"] for t in body.get("tracks", [])}
            job.shapes = [s for s in job.shapes if s["id"] not in shape_ids]
            job.tracks = [t for t in job.tracks if t["id"] not in track_ids]
            return {"shapes": [], "tracks": []}
        raise HttpError(400, "Please specify a correct 'action' for the request")

    def patch_job(self, job: EmuJob, action: str | None, body: dict) -> dict:
        """PATCH /api/jobs/{id}/annotations: stored in the job as sent (no slicing)."""
        task = self.tasks[job.task_id]
        self._validate(task, body)
        with self.lock:
            made = self._store(job, action, body)
        return model_json(models.LabeledData, {"version": 0, "tags": [], **made})

    def patch_task(self, task: EmuTask, action: str | None, body: dict) -> dict:
        """PATCH /api/tasks/{id}/annotations: sliced into the annotation jobs
        (task.py ``_patch_data`` -> annotation.py ``AnnotationIR.slice``)."""
        self._validate(task, body)
        if action not in ("create", "delete"):
            raise HttpError(400, "Please specify a correct 'action' for the request")
        with self.lock:
            sliced = [(job, self._slice(body, job.start, job.stop))
                      for job in task.annotation_jobs()]
            made = {"shapes": [], "tracks": []}
            for job, part in sliced:
                if action == "delete":
                    mine = {s["id"] for s in job.shapes} | {t["id"] for t in job.tracks}
                    part = {"shapes": [s for s in part["shapes"] if s.get("id") in mine],
                            "tracks": [t for t in part["tracks"] if t.get("id") in mine]}
                for k, v in self._store(job, action, part).items():
                    made[k] += v
        return model_json(models.LabeledData, {"version": 0, "tags": [], **made})

    @staticmethod
    def _track_inside(track: dict, start: int, stop: int) -> bool:
        """annotation.py ``AnnotationIR._is_track_inside``: a visible stretch of the track
        overlaps the segment (a track whose last shape is not ``outside`` goes on to the
        end)."""
        prev = None
        for shape in track["shapes"]:
            if prev is not None and not prev["outside"] and \
                    min(shape["frame"], stop) - max(prev["frame"], start) >= 0:
                return True
            prev = shape
        return not prev["outside"] and prev["frame"] <= stop

    @classmethod
    def _slice(cls, body: dict, start: int, stop: int) -> dict:
        """annotation.py ``AnnotationIR.slice``: shapes on the segment's frames; a track that
        the segment cuts (some of its shapes outside it) is cut by interpolation."""
        shapes = [s for s in body.get("shapes", []) if start <= s["frame"] <= stop]
        tracks = []
        for t in body.get("tracks", []):
            if not cls._track_inside(t, start, stop):
                continue
            if any(not start <= s["frame"] <= stop for s in t["shapes"]):
                kind = t["shapes"][0]["type"]
                if kind not in INTERPOLATED:
                    # _slice_track -> TrackManager.get_interpolated_shapes: a 500
                    raise HttpError(500, "NotImplementedError (interpolation of a "
                                         f"'{kind}' track at a job boundary)")
                raise HttpError(501, "emulator: cutting interpolated tracks is not emulated")
            tracks.append(t)
        return {"shapes": shapes, "tracks": tracks}

    def ui_load_job(self, job: EmuJob) -> None:
        """What CVAT's UI does when it opens the job (cvat-core annotations-objects/index.ts
        ``shapeFactory`` / ``trackFactory``): raises as the UI does."""
        for s in job.shapes:
            if s["type"] not in UI_SHAPES:
                raise CvatUiError(f'An unexpected type of shape "{s["type"]}"')
        for t in job.tracks:
            if t["shapes"] and t["shapes"][0]["type"] not in UI_TRACKS:
                raise CvatUiError(f'An unexpected type of track "{t["shapes"][0]["type"]}"')

    def export_dataset(self, task: EmuTask) -> None:
        """A dataset export: every track is turned into per-frame shapes by interpolation
        (annotation.py ``TrackManager.to_shapes``), which raises for masks (a 500)."""
        for t in task.tracks:
            if t["shapes"] and t["shapes"][0]["type"] not in INTERPOLATED:
                raise HttpError(500, "NotImplementedError")

    def check_ui_and_export(self) -> None:
        """Every job opens in CVAT's UI and every task exports (tests end with this)."""
        for task in self.tasks.values():
            for job in task.jobs:
                self.ui_load_job(job)
            self.export_dataset(task)

    # ------------------------------------------------------------------ Automatic annotation

    def auto_annotation(self, invoke: Callable[[dict, dict], tuple[int, object]],
                        function: str, spec: list[dict], task: EmuTask, *,
                        job: EmuJob | None = None, threshold: float | None = None,
                        cleanup: bool = False, timeout: int = 120,
                        save_every: int | None = None,
                        mapping: dict | None = None) -> Iterator[FrameCall]:
        """CVAT's Automatic annotation of ``task`` (or ``job``) with a detector, frame by frame
        (lambda_manager/views.py ``LambdaJob.__call__`` / ``_call_detector``); yields each
        function call as it happens (two runs can be interleaved); the run's outcome is
        ``self.last_run`` (see :meth:`run_auto_annotation`).

        ``invoke(payload, headers) -> (status, body)`` calls the function as the nuclio
        dashboard does. ``save_every`` is CVAT's 100 unless a test needs partial saves sooner.
        ``mapping`` is what CVAT's label-mapping dialog sends (``{model label: {"name": task
        label, "attributes"?: {model attr: task attr}}}``); without it, CVAT's default mapping.
        The function's spec and the mapping are checked first, as CVAT does (a 400).
        """
        mapping = self.label_mapping(spec, task, mapping)
        rq = self.start_lambda(function, task.id, job.id if job else None)
        run = AutoAnnotationRun(rq)
        self.last_run = run
        yielded = 0
        save_every = save_every or self.SAVE_EVERY
        collected: list[dict] = []

        def submit():
            if collected:
                body = {"version": 0, "tags": [], "shapes": list(collected), "tracks": []}
                if job is not None:
                    self.patch_job(job, "create", body)
                else:
                    self.patch_task(task, "create", body)
                run.submits += 1
                collected.clear()

        try:
            if cleanup:
                for j in ([job] if job else task.annotation_jobs()):
                    j.shapes, j.tracks = [], []
            frames = task.job_frames(job) if job else range(task.size)
            for frame in frames:
                if frame in task.deleted:
                    continue
                payload = {"image": task.frame_b64(frame)}
                if threshold:  # views.py: sent only ``if threshold``
                    payload["threshold"] = threshold
                # the header CVAT sends with CVAT_NUCLIO_DEFAULT_TIMEOUT (views.py _http)
                status, body = invoke(payload, {"X-Nuclio-Invoke-Timeout": f"{timeout}s"})
                run.calls.append(FrameCall(frame, status, body))
                if status >= 400:  # reply.raise_for_status()
                    raise HttpError(status, f"{status} Error for url: "
                                            "http://nuclio:8070/api/function_invocations")
                shapes = self._convert(task, mapping, body, frame)
                rq["progress"] = int((frame + 1) / task.size * 100)
                collected.extend(shapes)
                if frame and frame % save_every == 0:
                    submit()
                yielded += 1
                yield run.calls[-1]
            submit()
            rq["status"] = run.status = "finished"
        except Exception as e:  # noqa: BLE001 - the RQ job fails; CVAT keeps str(err)
            rq["status"] = run.status = "failed"
            rq["exc_info"] = run.error = str(e)
            yield from run.calls[yielded:]

    def run_auto_annotation(self, *args, **kwargs) -> AutoAnnotationRun:
        for _ in self.auto_annotation(*args, **kwargs):
            pass
        return self.last_run

    @staticmethod
    def check_spec(spec: list[dict]) -> list[dict]:
        """The function's ``metadata.annotations.spec`` as CVAT parses it
        (lambda_manager/views.py ``LambdaFunction.__init__`` / ``parse_labels``): every label
        needs a ``name`` (type defaults to "unknown"), every attribute ``name``,
        ``input_type`` and ``values`` (a KeyError otherwise); label names unique and
        attribute names unique per label (``InvalidFunctionMetadataError``)."""
        labels = []
        for lb in spec:
            attrs = [{"name": a["name"], "input_type": a["input_type"], "values": a["values"]}
                     for a in lb.get("attributes", [])]
            if len(attrs) != len({a["name"] for a in attrs}):
                raise HttpError(500, "lambda function has non-unique attributes")
            labels.append({"name": lb["name"], "type": lb.get("type", "unknown"),
                           "attributes": attrs})
        if len(labels) != len({lb["name"] for lb in labels}):
            raise HttpError(500, "lambda function has non-unique labels")
        return labels

    @staticmethod
    def labels_compatible(model_label: dict, task_label: dict) -> bool:
        """lambda_manager/views.py ``labels_compatible``: the same type, a task label of type
        any (not for skeletons), a model label of unknown type (onto a non-skeleton), or mask
        and polygon either way."""
        mt, dt = model_label["type"], task_label.get("type", "any")
        return (mt == dt or (dt == "any" and mt != "skeleton")
                or (mt == "unknown" and dt != "skeleton") or {mt, dt} <= {"mask", "polygon"})

    def label_mapping(self, spec: list[dict], task: EmuTask, mapping: dict | None) -> dict:
        """Model label -> (task label, {model attr: task attr}), as LambdaFunction.invoke
        builds it (lambda_manager/views.py): without a mapping ``make_default_mapping`` (same
        name, compatible types, attributes of the same name); a given mapping is checked by
        ``validate_labels_mapping`` (unknown model label, unknown task label, incompatible
        types, unknown attributes: a ValidationError, 400) and keeps only the attributes it
        names (``update_mapping``)."""
        model = {lb["name"]: lb for lb in self.check_spec(spec)}
        task_labels = {lb["name"]: lb for lb in task.labels}
        out = {}
        if not mapping:
            for name, ml in model.items():
                tl = task_labels.get(name)
                if tl and self.labels_compatible(ml, tl):
                    names = {a["name"] for a in tl.get("attributes", [])}
                    out[name] = (tl, {a["name"]: a["name"] for a in ml["attributes"]
                                      if a["name"] in names})
            return out
        for name, item in mapping.items():
            if name not in model:
                raise HttpError(400, f'Invalid mapping. Unknown model label "{name}"')
            tl = task_labels.get(item["name"])
            if tl is None:
                raise HttpError(400, f'Invalid mapping. Unknown db label "{item["name"]}"')
            if not self.labels_compatible(model[name], tl):
                raise HttpError(400, f'Invalid mapping. Model label "{name}" and database '
                                     f'label "{item["name"]}" are not compatible')
            attrs = item.get("attributes", {})
            for ma, ta in attrs.items():
                if ma not in {a["name"] for a in model[name]["attributes"]}:
                    raise HttpError(400, f'Invalid mapping. Unknown model attribute "{ma}"')
                if ta not in {a["name"] for a in tl.get("attributes", [])}:
                    raise HttpError(400, f'Invalid mapping. Unknown db attribute "{ta}"')
            out[name] = (tl, dict(attrs))
        return out

    def _convert(self, task: EmuTask, mapping: dict, response, frame: int) -> list[dict]:
        """``LambdaFunction.invoke`` (answers whose label is not mapped are dropped, the rest
        get the mapped task label and ``transform_attributes``) and
        ``DetectionResultConverter._parse_anno`` of one frame's answer."""
        shapes = []
        for item in response:  # a non-list answer fails the run, as in CVAT
            if item["label"] not in mapping:
                continue
            label, attr_map = mapping[item["label"]]
            attrs = []
            for a in item.get("attributes", []):
                if a["name"] not in attr_map:
                    continue
                db = next(x for x in label["attributes"] if x["name"] == attr_map[a["name"]])
                if self._check_attr_value(a["value"], db):
                    attrs.append({"spec_id": db["id"], "value": a["value"]})
            points = item.get("mask", []) if item["type"] == "mask" else item.get("points", [])
            if item["type"] == "mask":
                *cut, xtl, ytl, xbr, ybr = points
                points = run_lengths(cut) + [xtl, ytl, xbr, ybr]
            shapes.append({"frame": frame, "label_id": label["id"], "source": "auto",
                           "attributes": attrs, "group": None, "type": item["type"],
                           "occluded": False, "outside": False, "points": points,
                           "z_order": 0})
        model_json(models.LabeledDataRequest, {"version": 0, "tags": [], "shapes": shapes,
                                               "tracks": []})
        return shapes

    @staticmethod
    def _check_attr_value(value: str, db_attr: dict) -> bool:
        """views.py ``check_attr_value``: a number attribute's bounds are read with int()
        (a float bound raises and fails the whole run), the value must be an int in range
        and on the step."""
        kind = db_attr["input_type"]
        if kind == "number":
            lo, hi, step = map(int, db_attr["values"])
            try:
                v = int(value)
            except ValueError:
                return False
            return lo <= v <= hi and (v - lo) % step == 0
        if kind == "checkbox":
            return value in ("true", "false")
        if kind == "text":
            return True
        if kind in ("select", "radio"):
            return value in db_attr["values"]
        return False

    # ------------------------------------------------------------------ webhooks

    def add_webhook(self, target_url: str, *, secret: str | None = None,
                    events=("create:task",), org: EmuOrg | None = None) -> dict:
        hook = {"id": self.new_id(), "target_url": target_url, "secret": secret,
                "events": list(events), "org_id": org.id if org else None,
                "content_type": "application/json"}
        self.webhooks.append(hook)
        return hook

    def create_task(self, task: EmuTask) -> list[dict]:
        """A task created in CVAT: stored, then ``create:task`` sent to the organisation's
        webhooks (signals.py ``select_webhooks``: organisation and project webhooks only)."""
        self.add_task(task)
        sent = []
        for hook in self.webhooks:
            if "create:task" in hook["events"] and hook["org_id"] is not None \
                    and hook["org_id"] == task.org_id:
                payload = {"event": "create:task", "task": self.task_read(task),
                           "sender": {"id": self.admin.id, "username": "admin"},
                           "webhook_id": hook["id"]}
                sent.append(self.send_webhook(hook, payload))
        return sent

    def send_webhook(self, hook: dict, payload: dict) -> dict:
        """signals.py ``send_webhook``: signed ``json.dumps(payload)``, posted as JSON through
        the SSRF proxy (``PROXIES_FOR_UNTRUSTED_URLS``), 10 s timeout; the delivery keeps the
        status (502 when the connection fails)."""
        import requests

        headers = {}
        if hook["secret"]:
            headers["X-Signature-256"] = "sha256=" + hmac.new(
                hook["secret"].encode("utf-8"), json.dumps(payload).encode("utf-8"),
                digestmod=hashlib.sha256).hexdigest()
        parts = urlsplit(hook["target_url"])
        allowed, reason = Smokescreen(self.smokescreen_opts).allows(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        if not allowed:
            # smokescreen refuses with "407 Request Rejected by Proxy" (as CVAT users report
            # it; the status is not re-checked in smokescreen's source), the target never sees
            # the request
            delivery = {"webhook_id": hook["id"], "event": payload["event"],
                        "status_code": 407, "response": reason, "request": payload}
        else:
            try:
                r = requests.post(hook["target_url"], json=payload, headers=headers, timeout=10)
                status, text = r.status_code, r.text
            except requests.ConnectionError:
                status, text = 502, ""
            except requests.Timeout:
                status, text = 504, ""
            delivery = {"webhook_id": hook["id"], "event": payload["event"],
                        "status_code": status, "response": text, "request": payload}
        self.deliveries.append(delivery)
        return delivery


def run_lengths(flat) -> list[int]:
    """CVAT's mask RLE of a flat 0/1 list, runs starting with zeros (datumaro
    ``mask_to_rle`` of the column vector, as views.py ``_parse_anno`` calls it)."""
    out, current, n = [], 0, 0
    for v in flat:
        v = 1 if v else 0
        if v != current:
            out.append(n)
            current, n = v, 0
        n += 1
    out.append(n)
    return out


class Smokescreen:
    """CVAT's SSRF proxy for webhook deliveries (since CVAT 2.5, cvat-ai/cvat#6362), deciding
    by the target's address as stripe/smokescreen pkg/smokescreen/ip_policy.go
    ``allowFirstIPPolicy`` does, with ``SMOKESCREEN_OPTS`` (``--allow-address=IP[:port]``,
    ``--allow-range=CIDR``, ``--deny-range``/``--deny-address``,
    ``--unsafe-allow-private-ranges``)."""

    CGNAT = ipaddress.ip_network("100.64.0.0/10")

    def __init__(self, opts: str = "") -> None:
        self.allow, self.deny, self.unsafe_private = [], [], False
        args = shlex.split(opts or "")
        i = 0
        while i < len(args):
            flag, _, value = args[i].partition("=")
            if flag == "--unsafe-allow-private-ranges":
                self.unsafe_private = True
            elif flag in ("--allow-address", "--allow-range", "--deny-address", "--deny-range"):
                if not value:
                    i += 1
                    value = args[i]
                rule = self._rule(value, flag.endswith("address"))
                (self.allow if flag.startswith("--allow") else self.deny).append(rule)
            i += 1

    @staticmethod
    def _rule(value: str, address: bool):
        port = None
        if address and value.count(":") == 1:
            value, port = value.split(":")
            port = int(port)
        net = ipaddress.ip_network(value if not address else f"{value}/"
                                   f"{32 if ':' not in value else 128}")
        return net, port

    @staticmethod
    def _in(rules, ip, port) -> bool:
        return any(ip in net and (p is None or p == port) for net, p in rules)

    def allows(self, host: str, port: int) -> tuple[bool, str]:
        ip = ipaddress.ip_address(socket.getaddrinfo(host, port)[0][4][0])
        if not ip.is_global and (ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_unspecified):
            if self._in(self.allow, ip, port):
                return True, "allowed by SMOKESCREEN_OPTS"
            return False, f"Egress proxying is denied to host '{host}:{port}': the address " \
                          f"{ip} is not a global unicast address"
        if self._in(self.allow, ip, port):
            return True, "allowed by SMOKESCREEN_OPTS"
        if self._in(self.deny, ip, port):
            return False, f"the address {ip} is denied by SMOKESCREEN_OPTS"
        if ip.is_private and not self.unsafe_private:
            return False, f"Egress proxying is denied to host '{host}:{port}': the address " \
                          f"{ip} is in a private range"
        if ip in self.CGNAT:
            return False, f"the address {ip} is a carrier-grade NAT address"
        return True, "a public address"


class NuclioHttpTrigger:
    """The function behind nuclio's HTTP trigger, on 127.0.0.1: each request becomes a
    nuclio event through nuclio_sdk's own deserializer (nuclio_sdk/event.py; a body whose
    Content-Type is ``application/json`` reaches the handler decoded, any other as bytes) and
    is handed to ``call_handler(event) -> nuclio_sdk.Response``."""

    def __init__(self, call_handler: Callable) -> None:
        import nuclio_sdk
        from nuclio_sdk.event import EventDeserializerKinds

        trigger = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = {
                    "body": raw, "content_type": self.headers.get("Content-Type", ""),
                    "trigger": {"kind": "http", "name": "myHttpTrigger"}, "fields": {},
                    "headers": dict(self.headers), "id": str(time.time_ns()),
                    "method": "POST", "path": self.path, "size": len(raw),
                    "timestamp": time.time(), "url": "", "shard_id": 0, "num_shards": 0,
                    "type": "", "type_version": "", "version": ""}
                event = nuclio_sdk.Event.deserialize(message, EventDeserializerKinds.msgpack)
                trigger.events.append(event)
                response = call_handler(event)
                data = response.body if isinstance(response.body, bytes) else \
                    str(response.body).encode()
                self.send_response(response.status_code)
                self.send_header("Content-Type", response.content_type or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.events: list = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
