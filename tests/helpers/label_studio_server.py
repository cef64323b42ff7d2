"""A real Label Studio 1.23.2 server on 127.0.0.1 for the Label Studio tests (SQLite, its own
data folder), started once per test session from ``.venv-labelstudio`` (made by
scripts/setup.d/40-labelstudio.sh), plus small REST helpers the tests use to act as a user.

Nothing here is a test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import requests

from . import service_env as se

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("AURALSAM2_LS_VENV", ROOT / ".venv-labelstudio"))
LS_BIN = LS_VENV / "bin" / "label-studio"
TOKEN = "auralsam2-test-token-0123456789"
USER = "annotator@example.com"
PASSWORD = "auralsam2-test-pw"
TEMPLATES = ROOT / "plugins" / "label_studio" / "templates"
VIDEO_CONFIG = (TEMPLATES / "video_sounding.xml").read_text()
KEYFRAME_CONFIG = (TEMPLATES / "keyframe_brush.xml").read_text()
CLASSES_CONFIG = (TEMPLATES / "video_classes.xml").read_text()  # Ref-AVS: a class per label
KEYFRAME_CLASSES_CONFIG = (TEMPLATES / "keyframe_classes.xml").read_text()


class LabelStudioServer:
    def __init__(self, data_dir: Path, files_root: Path) -> None:
        self.port = se.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.files_root = data_dir, files_root
        self.log = data_dir / "label-studio.log"
        self.proc: subprocess.Popen | None = None
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {TOKEN}"

    def start(self, timeout: float = 900.0) -> LabelStudioServer:
        env = {**os.environ, "LABEL_STUDIO_HOST": self.url, "ML_BLOCK_LOCAL_IP": "false",
               "SSRF_PROTECTION_ENABLED": "false", "LOCAL_FILES_SERVING_ENABLED": "true",
               "LOCAL_FILES_DOCUMENT_ROOT": str(self.files_root),
               "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "PYTHONUNBUFFERED": "1",
               "COLLECT_ANALYTICS": "false"}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log, "wb")  # noqa: SIM115 - outlives this call
        self.proc = subprocess.Popen(
            [str(LS_BIN), "start", "--no-browser", "--data-dir", str(self.data_dir),
             "--host", "127.0.0.1", "--port", str(self.port), "--username", USER,
             "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"],
            stdout=self._log_fh, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited ({self.proc.returncode}); see "
                                   f"{self.log}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.http.get(f"{self.url}/health", timeout=2).ok and \
                        self.http.get(f"{self.url}/api/projects", timeout=10).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"Label Studio did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        if getattr(self, "_log_fh", None):
            self._log_fh.close()

    # ------------------------------------------------------------------ acting as a user

    def api(self, method: str, path: str, **kw):
        r = self.http.request(method, self.url + path, timeout=120, **kw)
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def create_project(self, title: str, label_config: str) -> dict:
        return self.api("POST", "/api/projects/", json={"title": title,
                                                        "label_config": label_config})

    def upload(self, project_id: int, path: Path) -> list[int]:
        with open(path, "rb") as fh:
            body = self.api("POST", f"/api/projects/{project_id}/import?return_task_ids=true",
                            files={"file": (path.name, fh)})
        return body["task_ids"]

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        body = self.api("POST", f"/api/projects/{project_id}/import?return_task_ids=true",
                        json=tasks)
        return body["task_ids"]

    def keyframe_task(self, title: str, video: Path, frame: int, png: Path,
                      size: tuple[int, int], config: str = KEYFRAME_CONFIG,
                      **data) -> tuple[int, int]:
        """A keyframe-template project holding one task: file frame ``frame`` (0-based) of
        ``video``, written to ``png`` at ``size`` (width, height), next to the video. Both
        are uploaded to a files project first, so the task links them as Label Studio's own
        uploads; ``data`` adds task fields. Returns (project id, task id)."""
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-vf",
                        f"select=eq(n\\,{frame}),scale={size[0]}:{size[1]}", "-frames:v", "1",
                        str(png)], check=True)
        files = self.create_project(f"{title} (files)", VIDEO_CONFIG)
        [vid] = self.upload(files["id"], video)
        [img] = self.upload(files["id"], png)
        url = {t: self.api("GET", f"/api/tasks/{t}")["data"]["video"] for t in (vid, img)}
        project = self.create_project(title, config)
        [tid] = self.import_tasks(project["id"], [{"data": {
            "image": url[img], "video": url[vid], "frame": frame + 1, **data}}])
        return project["id"], tid

    def tasks(self, project_id: int) -> list[dict]:
        return self.api("GET", "/api/tasks", params={"project": project_id, "fields": "all",
                                                     "page_size": 1000})["tasks"]

    def predictions(self, task_id: int) -> list[dict]:
        return self.api("GET", "/api/predictions/", params={"task": task_id})


_shared: LabelStudioServer | None = None


def shared_server(root: Path) -> LabelStudioServer:
    """One server for the whole test session (its first start migrates SQLite for minutes):
    started under ``root`` on the first call, stopped when the interpreter exits.
    ``AURALSAM2_TEST_LS_URL`` names a running one (started by this module's class with its
    user and token) to reuse instead, e.g. while iterating on one test."""
    global _shared
    if _shared is None and os.environ.get("AURALSAM2_TEST_LS_URL"):
        _shared = LabelStudioServer(root / "data", root)
        _shared.url = os.environ["AURALSAM2_TEST_LS_URL"]
    if _shared is None or (_shared.proc and _shared.proc.poll() is not None):
        import atexit

        server = LabelStudioServer(root / "data", root).start()
        atexit.register(server.stop)
        _shared = server
    return _shared


def available() -> bool:
    return LS_BIN.is_file() and shutil.which("ffmpeg") is not None


def open_task_in_editor(page, url: str, project: int, task: int) -> None:
    """Log ``page`` (a Playwright page) into the Label Studio at ``url`` and open ``task`` in
    the labelling editor, waiting until its prediction's regions are loaded."""
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/login" not in u, timeout=60_000)
    page.goto(f"{url}/projects/{project}/data?task={task}")
    page.wait_for_function("() => window.Htx && Htx.annotationStore.selected && "
                           "Htx.annotationStore.selected.regions.length > 0", timeout=120_000)
