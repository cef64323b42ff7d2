"""The shared model service (``auralsam2 serve``) and its client (auralsam2_core.remote).

Loopback only: the app under Starlette's test client and under uvicorn, and the real
``auralsam2 serve`` command in a subprocess for the fault tests (killed with SIGKILL mid-job,
then restarted on the same state folder). The model is the bundled demo model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

starlette_testclient = pytest.importorskip("starlette.testclient")
pytest.importorskip("uvicorn")

from auralsam2_core.engine import NoAudioError, PrelabelOptions  # noqa: E402
from auralsam2_core.model import PointPrompt  # noqa: E402
from auralsam2_core.model_env import ServedModel, load_served_model  # noqa: E402
from auralsam2_core.remote import LocalEngine, RemoteEngine, RemoteError  # noqa: E402
from auralsam2_core.synthetic import make_clip, write_clip  # noqa: E402
from auralsam2_service.app import create_app  # noqa: E402
from auralsam2_service.config import ServiceSettings  # noqa: E402
from auralsam2_service.jobs import Service  # noqa: E402

try:
    from . import service_env as se
except ImportError:
    import service_env as se


@pytest.fixture(scope="module")
def model():
    return load_served_model(ServedModel())


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-media")
    return {"root": root,
            "clip": write_clip(make_clip(11, size=(64, 80), fps=10, seconds=1.5), root / "a.mp4"),
            "silent": write_clip(make_clip(12, size=(64, 80), fps=10, seconds=0.5),
                                 root / "quiet.mp4", audio=False)}


def comparable(doc: dict) -> dict:
    """A results document without its timings."""
    return {"frames": doc["frames"], "intervals": doc["intervals"],
            "video": {k: v for k, v in doc["video"].items() if k != "path"},
            "model": {k: v for k, v in doc["model"].items()
                      if k in ("sam2_config", "image_size", "mask_choice", "clip_len")}}


def client_for(tmp_path, media, model, **kw):
    settings = ServiceSettings(token=se.TOKEN, media_roots=(media["root"].resolve(),),
                               state_dir=tmp_path / "state", **kw)
    service = Service(settings, ServedModel(), model=model)
    return service, starlette_testclient.TestClient(create_app(service))


AUTH = {"Authorization": f"Bearer {se.TOKEN}"}


def wait_done(client, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if st["status"] in ("done", "failed"):
            return st
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_settings_need_a_token(tmp_path):
    with pytest.raises(ValueError, match="AURALSAM2_SERVER_TOKEN"):
        Service(ServiceSettings(state_dir=tmp_path), ServedModel(), start_worker=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURALSAM2_SERVER")}
    out = subprocess.run([sys.executable, "-m", "auralsam2_core.cli", "serve", "--state-dir",
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "AURALSAM2_SERVER_TOKEN" in out.stderr


def test_job_results_equal_the_engine(tmp_path, media, model):
    service, client = client_for(tmp_path, media, model)
    assert client.get("/health").json()["status"] == "UP"
    r = client.post("/v1/jobs", json={"video": str(media["clip"]),
                                      "options": {"clip_len": 5, "stride": 2}}, headers=AUTH)
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    st = wait_done(client, r.json()["id"])
    assert st["status"] == "done" and st["attempts"] == 1
    assert st["progress"] == {"frames_done": 8, "frames_total": 8}
    doc = client.get(f"/v1/jobs/{st['id']}/results", headers=AUTH).json()
    local = LocalEngine(model).document(media["clip"], PrelabelOptions(clip_len=5, stride=2))
    assert comparable(doc) == comparable(local)
    text = client.get("/metrics", headers=AUTH).text
    assert 'auralsam2_jobs_total{event="done"} 1' in text and "auralsam2_frames_total 8" in text


def test_refusals(tmp_path, media, model):
    service, client = client_for(tmp_path, media, model)
    ok = {"video": str(media["clip"])}
    assert client.post("/v1/jobs", json=ok).status_code == 401
    assert client.post("/v1/jobs", json=ok, headers={"Authorization": "Bearer nope"}
                       ).status_code == 401
    assert client.get("/metrics").status_code == 401
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(media["clip"].read_bytes())
    for video, code in [(str(outside), 403), ("/etc/passwd", 403),
                        (str(media["root"] / ".." / outside.name), 403),
                        ("http://169.254.169.254/latest/meta-data", 403),
                        ("file:///etc/passwd", 400), ("relative.mp4", 400),
                        (str(media["root"] / "missing.mp4"), 404)]:
        r = client.post("/v1/jobs", json={"video": video}, headers=AUTH)
        assert r.status_code == code, (video, r.json())
    assert client.post("/v1/jobs", json={**ok, "options": {"stride": 0}},
                       headers=AUTH).status_code == 400
    assert client.post("/v1/jobs", json={**ok, "options": {"bogus": 1}},
                       headers=AUTH).status_code == 400
    assert client.post("/v1/jobs", content=b"x" * (2 << 20), headers=AUTH).status_code == 413
    assert client.post("/v1/jobs", content=b"{no", headers=AUTH).status_code == 400
    assert client.get("/v1/jobs/unknown", headers=AUTH).status_code == 404


def test_full_queue_answers_429_with_retry_after(tmp_path, media, model):
    settings = ServiceSettings(token=se.TOKEN, media_roots=(media["root"].resolve(),),
                               state_dir=tmp_path, max_queue=2)
    service = Service(settings, ServedModel(), model=model, start_worker=False)
    client = starlette_testclient.TestClient(create_app(service))
    body = {"video": str(media["clip"])}
    codes = [client.post("/v1/jobs", json=body, headers=AUTH) for _ in range(4)]
    assert [c.status_code for c in codes] == [202, 202, 429, 429]
    assert codes[2].headers["retry-after"] == "5" and "queue is full" in codes[2].json()["error"]
    assert client.get(f"/v1/jobs/{codes[0].json()['id']}/results", headers=AUTH
                      ).status_code == 409
    service.run_job(service.jobs[service.queue.popleft()])  # the worker takes one...
    assert client.post("/v1/jobs", json=body, headers=AUTH).status_code == 202  # ...room again


def test_remote_engine_over_http(tmp_path, media, model):
    with se.ServiceThread(tmp_path / "state", [media["root"]], model=model) as srv:
        remote = srv.engine()
        assert remote.model_version == srv.service.model_version()
        opts = PrelabelOptions(clip_len=3, start_frame=2, stop_frame=12)
        box = {4: PointPrompt.box(10, 10, 50, 40)}
        got = list(remote.frames(media["clip"], opts, prompts=box))
        want = list(LocalEngine(model).frames(media["clip"], opts, prompts=box))
        assert [g.index for g in got] == [w.index for w in want] == list(range(2, 12))
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g.mask, w.mask)
            assert g.sounding_prob == pytest.approx(w.sounding_prob, abs=6e-6)
        with pytest.raises(NoAudioError, match="no audio"):
            remote.document(media["silent"])
        with pytest.raises(RemoteError, match="403"):
            remote.document(tmp_path / "x.mp4")
        with pytest.raises(RemoteError, match="401"):
            RemoteEngine(srv.url, "wrong").document(media["clip"])
    with pytest.raises(RemoteError, match="unreachable"):
        RemoteEngine(srv.url, se.TOKEN, timeout=2).health()


def _serve(tmp_path, media, port, attempts=2):
    env = {**os.environ, "AURALSAM2_SERVER_TOKEN": se.TOKEN,
           "AURALSAM2_SERVER_MEDIA_ROOTS": str(media["root"]),
           "AURALSAM2_SERVER_MAX_ATTEMPTS": str(attempts), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "auralsam2_core.cli", "serve", "--port",
                             str(port), "--state-dir", str(tmp_path / "state"),
                             "--log-level", "warning"], env=env, start_new_session=True)
    engine = RemoteEngine(f"http://127.0.0.1:{port}", se.TOKEN, timeout=5)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            engine.health()
            return proc, engine
        except RemoteError:
            assert proc.poll() is None, "auralsam2 serve exited"
            time.sleep(0.3)
    raise AssertionError("auralsam2 serve did not start")


@pytest.mark.slow
@pytest.mark.parametrize("attempts", [2, 1])
def test_killed_worker_job_is_retried_or_failed_visibly(tmp_path, media, model, attempts):
    long = write_clip(make_clip(13, size=(64, 80), fps=25, seconds=12), media["root"] /
                      f"long{attempts}.mp4")
    port = se.free_port()
    proc, engine = _serve(tmp_path, media, port, attempts)
    try:
        job = engine.submit(long, PrelabelOptions())
        deadline = time.monotonic() + 120
        while engine._call("GET", f"/v1/jobs/{job}")["progress"]["frames_done"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker dies mid-job
        proc.wait(30)
    state = json.loads((tmp_path / "state" / "jobs" / f"{job}.json").read_text())
    assert state["status"] == "running"  # as the dead process left it
    proc, engine = _serve(tmp_path, media, port, attempts)
    try:
        deadline = time.monotonic() + 300
        while (st := engine._call("GET", f"/v1/jobs/{job}"))["status"] not in ("done",
                                                                               "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        if attempts == 2:
            assert st["status"] == "done" and st["attempts"] == 2, st
            doc = engine._call("GET", f"/v1/jobs/{job}/results")
            assert len(doc["frames"]) == 300
            assert comparable(doc) == comparable(LocalEngine(model).document(long))
        else:
            assert st["status"] == "failed" and st["error_kind"] == "interrupted"
            assert "not retried" in st["error"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_media_urls_only_from_allowed_hosts_without_redirects(tmp_path, media, model):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    data = media["clip"].read_bytes()

    class Media(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/clip.mp4":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:  # an allowed host redirecting elsewhere
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/secret")
                self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Media)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        settings = ServiceSettings(token=se.TOKEN, media_hosts=("127.0.0.1",),
                                   state_dir=tmp_path)
        service = Service(settings, ServedModel(), model=model)
        client = starlette_testclient.TestClient(create_app(service))
        r = client.post("/v1/jobs", json={"video": f"{base}/clip.mp4"}, headers=AUTH)
        assert r.status_code == 202, r.json()
        assert wait_done(client, r.json()["id"])["status"] == "done"
        local = LocalEngine(model).document(media["clip"])
        got = client.get(f"/v1/jobs/{r.json()['id']}/results", headers=AUTH).json()
        assert got["frames"] == local["frames"]
        r = client.post("/v1/jobs", json={"video": f"{base}/moved.mp4"}, headers=AUTH)
        assert r.status_code == 502 and "cannot download" in r.json()["error"]
        r = client.post("/v1/jobs", json={"video": str(media["clip"])}, headers=AUTH)
        assert r.status_code == 403  # no media roots configured: no local paths at all
    finally:
        server.shutdown()
