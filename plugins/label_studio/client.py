"""The few Label Studio REST calls the backend makes, over ``requests``, and media downloads
restricted to Label Studio itself and the configured storage hosts (no arbitrary URLs).

Auth: a legacy API token is sent as ``Authorization: Token ...``; a personal access token (a
JWT refresh token, Label Studio >= 1.14) is exchanged at ``/api/token/refresh`` for a short-lived
access token sent as ``Bearer``. Tokens go to Label Studio's host only, never to a storage host,
and never into logs or error messages.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests

from auralsam2_core.atomic import atomic_open

from .config import LabelStudioBackendSettings

#: The only paths fetched from Label Studio (with its key): uploads, local-files storage and the
#: storage resolve / presign endpoints (Label Studio 1.23's data_import/urls.py and
#: io_storages/urls.py). Never its API or any other page, whatever a task's data says.
_LS_MEDIA_PATH = re.compile(r"/data/upload/[^?#]+|/data/local-files/|/storage-data/uploaded/"
                            r"|/(?:tasks|projects)/[0-9]+/(?:presign|resolve)/")


def is_media_path(path: str) -> bool:
    """Whether ``path`` (a URL's path, relative to Label Studio's root) is media."""
    decoded = unquote(path)
    if "\\" in decoded or any(seg in (".", "..") for seg in decoded.split("/")):
        return False  # a client normalises dot segments: /data/upload/../../api/...
    return _LS_MEDIA_PATH.fullmatch(path) is not None


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused a request (message safe to show)."""


class MediaRefused(ValueError):
    """A task's media URL points somewhere this backend may not fetch from."""


def _host(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


class LabelStudioClient:
    def __init__(self, settings: LabelStudioBackendSettings, *, timeout: float = 30.0) -> None:
        if not settings.url:
            raise LabelStudioError("LABEL_STUDIO_URL is not set: the backend needs it to fetch "
                                   "media and to store predictions")
        if not settings.api_key:
            raise LabelStudioError("LABEL_STUDIO_API_KEY is not set (Account & Settings -> "
                                   "Access Token in Label Studio)")
        self.base = settings.url.rstrip("/")
        self.settings = settings
        self.timeout = timeout
        self.http = requests.Session()
        self._access: tuple[str, float] | None = None

    # ------------------------------------------------------------------ auth and requests

    def _is_jwt(self) -> bool:
        return self.settings.api_key.count(".") == 2

    def _auth_header(self) -> dict:
        key = self.settings.api_key
        if not self._is_jwt():
            return {"Authorization": f"Token {key}"}
        if self._access is None or self._access[1] < time.monotonic():
            r = self._send("POST", "/api/token/refresh", json={"refresh": key}, auth=False)
            self._access = (r.json()["access"], time.monotonic() + 240)
        return {"Authorization": f"Bearer {self._access[0]}"}

    def _send(self, method: str, path: str, *, auth: bool = True, **kw) -> requests.Response:
        headers = {**kw.pop("headers", {}), **(self._auth_header() if auth else {})}
        url = urljoin(self.base + "/", path.lstrip("/"))
        try:
            r = self.http.request(method, url, headers=headers, timeout=self.timeout, **kw)
        except requests.RequestException as e:
            raise LabelStudioError(f"Label Studio at {self.base} is unreachable "
                                   f"({type(e).__name__})") from None
        if r.status_code >= 400:
            detail = r.text[:300].replace(self.settings.api_key, "***")
            raise LabelStudioError(f"Label Studio answered {r.status_code} to {method} {path}: "
                                   f"{detail}")
        return r

    def get(self, path: str, **params) -> dict | list:
        return self._send("GET", path, params=params or None).json()

    def post(self, path: str, body: dict | list) -> dict | list:
        return self._send("POST", path, json=body).json()

    # ------------------------------------------------------------------ resources

    def project(self, project_id: int) -> dict:
        return self.get(f"/api/projects/{int(project_id)}")

    def task(self, task_id: int) -> dict:
        return self.get(f"/api/tasks/{int(task_id)}")

    def tasks(self, project_id: int, page_size: int = 100) -> Iterator[dict]:
        page = 1
        while True:
            try:
                body = self.get("/api/tasks", project=int(project_id), page=page,
                                page_size=page_size, fields="all")
            except LabelStudioError as e:
                if " 404 " in str(e) and page > 1:  # past the last page
                    return
                raise
            items = body.get("tasks", []) if isinstance(body, dict) else body
            yield from items
            total = body.get("total") if isinstance(body, dict) else None
            if not items or len(items) < page_size or (total is not None
                                                       and page * page_size >= total):
                return
            page += 1

    def set_model_version(self, project_id: int, version: str) -> dict:
        """Label Studio shows annotators the predictions of the project's model version."""
        return self._send("PATCH", f"/api/projects/{int(project_id)}",
                          json={"model_version": version}).json()

    def predictions(self, task_id: int) -> list[dict]:
        return self.get("/api/predictions", task=int(task_id))

    def create_prediction(self, task_id: int, result: list[dict], score: float,
                          model_version: str) -> dict:
        return self.post("/api/predictions", {"task": int(task_id), "result": result,
                                              "score": score, "model_version": model_version})

    # ------------------------------------------------------------------ media

    def _presign(self, task_id: int | None, uri: str) -> str:
        if task_id is None:
            raise MediaRefused(f"cannot resolve the storage link {uri.split('?')[0]!r} without "
                               "its task id")
        token = base64.urlsafe_b64encode(uri.encode()).decode()
        return f"{self.base}/tasks/{int(task_id)}/presign/?fileuri={token}"

    def _ls_path(self, path: str) -> str:
        """A path on Label Studio's host, relative to its root (LABEL_STUDIO_URL's path)."""
        prefix = urlsplit(self.base).path.rstrip("/")
        return path[len(prefix):] if prefix and path.startswith(prefix + "/") else path

    def _refuse_non_media(self, path: str, url: str) -> None:
        if not is_media_path(self._ls_path(path)):
            raise MediaRefused(
                f"{url.split('?')[0][:200]!r} is not a Label Studio media link (/data/upload/"
                "..., /data/local-files/..., a storage presign link): the backend fetches "
                "only media from Label Studio")

    def media_url(self, url: str, task_id: int | None = None) -> str:
        """The URL to fetch a task's media from, after the allow-list check."""
        if not isinstance(url, str) or not url:
            raise MediaRefused("the task has no media URL")
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            _ = parts.port  # a port that is not a number raises here
        except ValueError:
            raise MediaRefused(f"{url[:200]!r} is not a valid URL") from None
        if parts.scheme in ("s3", "gs", "azure-blob", "azure-spi"):
            return self._presign(task_id, url)
        if not parts.scheme:
            if not url.startswith("/") or parts.netloc:
                raise MediaRefused(f"media path {url[:200]!r} is neither a Label Studio link "
                                   "(/data/...) nor a URL")
            self._refuse_non_media(parts.path, url)
            return self.base + self._ls_path(url)
        if parts.scheme not in ("http", "https"):
            raise MediaRefused(f"media URL scheme {parts.scheme!r} is not fetched")
        if _host(url) == _host(self.base):
            self._refuse_non_media(parts.path, url)
            return url
        if host in self.settings.storage_hosts:
            return url
        if is_media_path(self._ls_path(parts.path)):
            # Label Studio writes its own links with its public host (LABEL_STUDIO_HOST), which
            # the backend may reach under another name: fetch the path from LABEL_STUDIO_URL.
            return self.base + self._ls_path(parts.path) + (f"?{parts.query}" if parts.query
                                                            else "")
        raise MediaRefused(
            f"media host {host!r} is not Label Studio ({urlsplit(self.base).hostname})"
            " or a storage host in AURALSAM2_LS_STORAGE_HOSTS; the backend does not fetch "
            "arbitrary URLs")

    @staticmethod
    def media_version(path: Path) -> str:
        """What tells this copy of a task's media from another behind the same link: the
        ETag or Last-Modified its server sent ("" when it sent neither, as for Label Studio's
        uploads, whose names are unique)."""
        f = path.with_name(path.name + ".validator")
        return f.read_text() if f.is_file() else ""

    def download(self, url: str, dest_dir: Path, task_id: int | None = None) -> Path:
        """Fetch a task's media and return the local path. A copy is kept by URL; when its
        server gave a validator (local-files storage and cloud storages do), the copy is
        revalidated each time (a 304 keeps it), so a file changed behind the same link is
        fetched again rather than labelled from the old copy."""
        src = self.media_url(url, task_id)
        name = Path(urlsplit(url).path).name or "media"
        key = hashlib.sha1(url.encode()).hexdigest()[:12]
        dest = Path(dest_dir) / f"{key}-{name}"[:200]
        cached = dest.is_file() and dest.stat().st_size > 0
        validator = self.media_version(dest) if cached else ""
        if cached and not validator:
            return dest
        kind, _, value = validator.partition(" ")
        conditional = {"If-None-Match": value} if kind == "etag" else \
            {"If-Modified-Since": value} if kind == "last-modified" else {}
        dest.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # follow redirects ourselves, checking every hop
            own = _host(src) == _host(self.base)
            try:
                r = self.http.get(src, headers={**conditional, **(self._auth_header() if own
                                                                   else {})}, stream=True,
                                  timeout=self.timeout, allow_redirects=False)
            except requests.RequestException as e:
                where = f"Label Studio at {self.base}" if own else urlsplit(src).hostname
                raise LabelStudioError(f"{where} is unreachable while fetching media "
                                       f"({type(e).__name__})") from None
            if r.is_redirect:
                nxt = urljoin(src, r.headers["location"])
                try:
                    host, own = (urlsplit(nxt).hostname or "").lower(), _host(nxt) == _host(
                        self.base)
                except ValueError:
                    raise MediaRefused("the media was redirected to an invalid URL") from None
                if own:  # the key goes there: media paths only
                    self._refuse_non_media(urlsplit(nxt).path, nxt)
                elif host not in self.settings.storage_hosts:
                    raise MediaRefused(f"Label Studio redirected the media to {host!r}, which "
                                       "is not in AURALSAM2_LS_STORAGE_HOSTS")
                src = nxt
                continue
            if r.status_code == 304 and cached:
                return dest
            if r.status_code >= 300:
                where = "Label Studio" if own else urlsplit(src).hostname
                raise LabelStudioError(
                    f"{where} could not serve the media {url.split('?')[0]!r} (HTTP "
                    f"{r.status_code}); check that the file is still in its storage and that "
                    "the API key may read this project")
            marker = dest.with_name(dest.name + ".validator")
            marker.unlink(missing_ok=True)
            self._save(r, dest)
            etag, modified = r.headers.get("ETag"), r.headers.get("Last-Modified")
            if etag or modified:
                marker.write_text(f"etag {etag}" if etag else f"last-modified {modified}")
            return dest
        raise LabelStudioError("too many redirects while fetching media")

    def _save(self, r: requests.Response, dest: Path) -> Path:
        limit = self.settings.max_download_bytes
        size = 0
        with atomic_open(dest) as fh:
            for chunk in r.iter_content(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise LabelStudioError(f"media larger than {limit} bytes "
                                           "(AURALSAM2_LS_MAX_DOWNLOAD_BYTES)")
                fh.write(chunk)
            if size == 0:
                raise LabelStudioError("Label Studio returned an empty media file")
        return dest
