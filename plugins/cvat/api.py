"""The few CVAT REST calls the adapter makes, through cvat-sdk, with retries and a host check.

Only ``CvatFunctionSettings.url`` is ever contacted: URLs handed back by the server (a backup's
``result_url``) must point at the same scheme, host and port, and nothing from a request
payload is used as an address. Error messages carry the status and CVAT's reason, never
headers (so never credentials).
"""

from __future__ import annotations

import logging
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import urllib3

from auralsam2_core.atomic import atomic_open

from .config import CvatFunctionSettings

log = logging.getLogger("auralsam2.cvat")
T = TypeVar("T")

ACTIVE_LAMBDA_STATES = ("queued", "started", "deferred", "scheduled")
# CVAT 2.48.0 added personal access tokens ("[Server API] Support for API access tokens",
# cvat-ai/cvat#9680); the backup export (POST /api/tasks/{id}/backup/export), /api/requests and
# the X-Nuclio-Invoke-Timeout header the function relies on are older than that.
MIN_CVAT_VERSION = (2, 48, 0)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts",
                  ".mts", ".m2ts", ".wmv", ".flv", ".3gp", ".ogv")


class CvatError(RuntimeError):
    """CVAT could not be reached or refused a call (after retries)."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


class CvatApi:
    def __init__(self, settings: CvatFunctionSettings) -> None:
        if not settings.url:
            raise ValueError("no CVAT URL: set CVAT_URL (e.g. http://cvat-server:8080)")
        if not settings.has_credentials():
            raise ValueError("no CVAT credentials: set CVAT_ACCESS_TOKEN (a personal access "
                             "token) or CVAT_USERNAME and CVAT_PASSWORD")
        from cvat_sdk.core.client import Client, Config
        from cvat_sdk.core.utils import normalize_server_url

        self.settings = settings
        self.url = normalize_server_url(settings.url)
        self.client = Client(self.url, config=Config(status_check_period=settings.poll_period,
                                                     verify_ssl=settings.verify_ssl),
                             check_server_version=False)
        conf = self.client.api_client.configuration
        conf.retries = urllib3.util.Retry(total=2, connect=2, read=0, status=0,
                                          backoff_factor=0.2)
        if settings.token:
            conf.access_token = settings.token
        else:
            conf.username, conf.password = settings.username, settings.password
        # The organisation context of list calls (GET /api/lambda/requests, /api/jobs): without
        # it a non-admin account only sees tasks it owns or is assigned to (lambda.rego filter).
        self.client.organization_slug = settings.org
        self._version_checked = False

    # ------------------------------------------------------------------ plumbing

    @property
    def _api(self):
        return self.client.api_client

    def call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run one API call; transient failures (connection, 5xx, 429) are retried."""
        attempts = max(1, self.settings.retries) if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - classified below
                err = _as_cvat_error(what, e)
                if err is None:
                    raise
                if not err.transient or attempt == attempts:
                    raise err from None
                log.warning("%s; retrying (%d/%d)", err, attempt, attempts - 1)
                time.sleep(self.settings.retry_delay * attempt)
        raise AssertionError("unreachable")

    def same_host(self, url: str) -> str:
        """``url`` made absolute against the CVAT URL; refused unless it is on that host."""
        full = urljoin(self.url + "/", url)
        a, b = urlsplit(self.url), urlsplit(full)
        if (a.scheme, a.hostname, a.port) != (b.scheme, b.hostname, b.port):
            raise CvatError(f"CVAT handed back a URL on another host ({b.scheme}://{b.netloc}); "
                            f"the function only talks to {a.scheme}://{a.netloc}")
        return full

    # ------------------------------------------------------------------ reads

    def server_version(self) -> tuple[int, ...]:
        about = self.call("reading the server version",
                          lambda: self._api.server_api.retrieve_about()[0])
        return parse_version(str(about.version))

    def require_supported_server(self) -> None:
        """Refuses a CVAT older than :data:`MIN_CVAT_VERSION` (asked once per client)."""
        if self._version_checked:
            return
        version = self.server_version()
        if version < MIN_CVAT_VERSION:
            need = ".".join(map(str, MIN_CVAT_VERSION))
            raise CvatError(
                f"CVAT at {self.url} is version {'.'.join(map(str, version))}; the AuralSAM2 "
                f"function needs CVAT {need} or newer (personal access tokens, the backup "
                "export and /api/requests). Upgrade CVAT, or use an older AuralSAM2 release",
                status=None, transient=False)
        self._version_checked = True

    def lambda_requests(self) -> list:
        calls, _ = self.call("listing lambda requests",
                             lambda: self._api.lambda_api.list_requests())
        return list(calls or [])

    def task(self, task_id: int):
        return self.call(f"reading task {task_id}",
                         lambda: self._api.tasks_api.retrieve(task_id)[0])

    def data_meta(self, task_id: int):
        return self.call(f"reading task {task_id}'s data meta",
                         lambda: self._api.tasks_api.retrieve_data_meta(task_id)[0])

    def job(self, job_id: int):
        return self.call(f"reading job {job_id}", lambda: self._api.jobs_api.retrieve(job_id)[0])

    def labels(self, task_id: int) -> list:
        from cvat_sdk.core.helpers import get_paginated_collection

        return self.call(f"reading task {task_id}'s labels", lambda: get_paginated_collection(
            self._api.labels_api.list_endpoint, task_id=task_id))

    def task_jobs(self, task_id: int) -> list:
        from cvat_sdk.core.helpers import get_paginated_collection

        return self.call(f"listing task {task_id}'s jobs", lambda: get_paginated_collection(
            self._api.jobs_api.list_endpoint, task_id=task_id))

    def job_meta(self, job_id: int):
        return self.call(f"reading job {job_id}'s data meta",
                         lambda: self._api.jobs_api.retrieve_data_meta(job_id)[0])

    def job_annotations(self, job_id: int):
        return self.call(f"reading job {job_id}'s annotations",
                         lambda: self._api.jobs_api.retrieve_annotations(job_id)[0])

    # ------------------------------------------------------------------ writes

    def patch_job(self, job_id: int, action: str, *, shapes: list = (),
                  tracks: list = ()) -> None:
        """PATCH ``/api/jobs/{id}/annotations?action=...``; not retried here (a lost answer to
        a create would duplicate): callers retry whole operations."""
        from cvat_sdk import models

        data = models.PatchedLabeledDataRequest(version=0, tags=[], shapes=list(shapes),
                                                tracks=list(tracks))
        self.call(f"{action} of {len(shapes)} shape(s) and {len(tracks)} track(s) in job "
                  f"{job_id}",
                  lambda: self._api.jobs_api.partial_update_annotations(
                      action, job_id, patched_labeled_data_request=data), retry=False)

    # ------------------------------------------------------------------ media

    def download_backup(self, task_id: int, dest: Path) -> Path:
        """Export the task's backup (with media), wait for it and download it to ``dest``."""
        from cvat_sdk.core.downloading import Downloader

        rq, _ = self.call(f"starting the backup of task {task_id}",
                          lambda: self._api.tasks_api.create_backup_export(
                              task_id, lightweight=False, location="local"), retry=False)
        deadline = time.monotonic() + 3600
        while True:
            request = self.call(f"checking the backup of task {task_id}",
                                lambda: self._api.requests_api.retrieve(rq.rq_id)[0])
            status = str(request.status.value if hasattr(request.status, "value")
                         else request.status)
            if status == "finished":
                break
            if status == "failed":
                raise CvatError(f"CVAT failed to back up task {task_id}: {request.message}")
            if time.monotonic() > deadline:
                raise CvatError(f"the backup of task {task_id} did not finish within an hour")
            time.sleep(self.settings.poll_period)
        if not request.result_url:
            raise CvatError(f"CVAT finished the backup of task {task_id} but gave no URL")
        url = self.same_host(request.result_url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        return self.call(f"downloading the backup of task {task_id}",
                         lambda: Downloader(self.client).download_file(url, dest, timeout=600))


def extract_video(backup: Path, dest_dir: Path) -> Path:
    """The uploaded video inside a task backup (``data/<file>``), extracted to ``dest_dir``."""
    with zipfile.ZipFile(backup) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        videos = [n for n in names if PurePosixPath(n).parts[:1] == ("data",)
                  and PurePosixPath(n).suffix.lower() in VIDEO_SUFFIXES]
        if not videos:
            raise CvatError(f"the task backup holds no video under data/ (files: "
                            f"{', '.join(names[:10]) or 'none'}); is it a video task?")
        name = videos[0]
        out = dest_dir / PurePosixPath(name).name
        dest_dir.mkdir(parents=True, exist_ok=True)
        with z.open(name) as src, atomic_open(out) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return out


def share_path(root: Path, name: str) -> Path | None:
    """``root/name`` when it is a file inside ``root`` (CVAT names share files relative to the
    share), else None."""
    root = root.resolve()
    path = (root / name.lstrip("/")).resolve()
    if root != path and root not in path.parents:
        return None
    return path if path.is_file() else None


def parse_version(text: str) -> tuple[int, ...]:
    """``"2.58.1"`` (or ``"2.58.1.dev0"``) as ``(2, 58, 1)``."""
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise CvatError(f"CVAT reported an unreadable version {text!r}")
    return tuple(parts)


def _as_cvat_error(what: str, e: Exception) -> CvatError | None:
    from cvat_sdk.api_client.exceptions import ApiException

    if isinstance(e, CvatError):
        return e
    if isinstance(e, ApiException):
        status = e.status or 0
        detail = ""
        if e.body:
            text = e.body.decode("utf-8", "replace") if isinstance(e.body, bytes) else str(e.body)
            detail = f": {text.strip()[:300]}"
        transient = status >= 500 or status == 429
        return CvatError(f"CVAT answered {status} {e.reason or ''} when {what}{detail}".strip(),
                         status, transient)
    if isinstance(e, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return CvatError(f"CVAT could not be reached when {what} ({type(e).__name__})",
                         None, True)
    return None
