"""The shared model service (``auralsam2 serve``) and its client (auralsam2_core.serving.engines).

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

from auralsam2_core.inference.engine import NoAudioError, PrelabelOptions  # noqa: E402
from auralsam2_core.inference.results import track as sounding_track  # noqa: E402
from auralsam2_core.model_spec import ModelSpec  # noqa: E402
from auralsam2_core.modeling.model import PointPrompt  # noqa: E402
from auralsam2_core.serving.engines import LocalEngine, RemoteEngine, RemoteError  # noqa: E402
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402
from auralsam2_service.app import create_app  # noqa: E402
from auralsam2_service.config import ServiceSettings  # noqa: E402
from auralsam2_service.job_service import JobService  # noqa: E402

from helpers import service_env as se  # noqa: E402


@pytest.fixture(scope="module")
def model(bundled_model):
    return bundled_model


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-media")
    return {"root": root,
            "clip": write_clip(make_clip(11, size=(64, 80), fps=10, seconds=1.5), root / "a.mp4"),
            "silent": write_clip(make_clip(12, size=(64, 80), fps=10, seconds=0.5),
                                 root / "quiet.mp4", audio=False)}


def comparable(doc: dict) -> dict:
    """A results document without its timings."""
    return {"objects": doc["objects"],
            "video": {k: v for k, v in doc["video"].items() if k != "path"},
            "model": {k: v for k, v in doc["model"].items()
                      if k in ("sam2_config", "image_size", "mask_choice", "clip_len")}}


def client_for(tmp_path, media, model, **kw):
    settings = ServiceSettings(token=se.TOKEN, media_roots=(media["root"].resolve(),),
                               state_dir=tmp_path / "state", **kw)
    service = JobService(settings, ModelSpec(), model=model)
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
        JobService(ServiceSettings(state_dir=tmp_path), ModelSpec(), start_worker=False)
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


def test_a_refinement_job_reuses_the_first_pass_features(tmp_path, media, model,
                                                         monkeypatch):
    """A refinement job after a first pass on the same file (Label Studio's click through the
    service: clip_origin 0, a box) runs only SAM2's tracking, and equals the local refinement
    computed from scratch; AURALSAM2_REFINE_CACHE_MB=0 keeps nothing."""
    encoded = []
    encode = type(model).encode_images
    monkeypatch.setattr(type(model), "encode_images",
                        lambda self, x: encoded.append(len(x)) or encode(self, x))
    box = {"coords": [[10, 10], [50, 40]], "labels": [2, 3]}
    click = {"clip_len": 3, "start_frame": 4, "stop_frame": 9, "clip_origin": 0,
             "prompts": {"4": box}}
    local = LocalEngine(model).document(media["clip"], PrelabelOptions(
        clip_len=3, start_frame=4, stop_frame=9, clip_origin=0),
        prompts={4: PointPrompt.box(10, 10, 50, 40)})
    for mb, encoded_by_click in ((None, []), (0, [3, 3])):
        kw = {} if mb is None else {"refine_cache_mb": mb}  # None: the default bound
        service, client = client_for(tmp_path / f"mb{mb}", media, model, **kw)
        first = client.post("/v1/jobs", json={"video": str(media["clip"]),
                                              "options": {"clip_len": 3}}, headers=AUTH)
        assert wait_done(client, first.json()["id"])["status"] == "done"
        encoded.clear()
        r = client.post("/v1/jobs", json={"video": str(media["clip"]), "options": click},
                        headers=AUTH)
        assert wait_done(client, r.json()["id"])["status"] == "done"
        assert encoded == encoded_by_click  # clips 3-5 and 6-8, or nothing
        doc = client.get(f"/v1/jobs/{r.json()['id']}/results", headers=AUTH).json()
        assert comparable(doc) == comparable(local)
        text = client.get("/metrics", headers=AUTH).text
        assert f"auralsam2_refine_cache_hits {2 if mb is None else 0}" in text
    with pytest.raises(ValueError, match="AURALSAM2_REFINE_CACHE_MB"):
        ServiceSettings.from_env({"AURALSAM2_REFINE_CACHE_MB": "-1"})


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
    service = JobService(settings, ModelSpec(), model=model, start_worker=False)
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
            assert len(sounding_track(doc)["frames"]) == 300
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
        service = JobService(settings, ModelSpec(), model=model)
        client = starlette_testclient.TestClient(create_app(service))
        r = client.post("/v1/jobs", json={"video": f"{base}/clip.mp4"}, headers=AUTH)
        assert r.status_code == 202, r.json()
        assert wait_done(client, r.json()["id"])["status"] == "done"
        local = LocalEngine(model).document(media["clip"])
        got = client.get(f"/v1/jobs/{r.json()['id']}/results", headers=AUTH).json()
        assert sounding_track(got)["frames"] == sounding_track(local)["frames"]
        r = client.post("/v1/jobs", json={"video": f"{base}/moved.mp4"}, headers=AUTH)
        assert r.status_code == 502 and "cannot download" in r.json()["error"]
        r = client.post("/v1/jobs", json={"video": str(media["clip"])}, headers=AUTH)
        assert r.status_code == 403  # no media roots configured: no local paths at all
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- hardening (#13)


def state_files(service) -> set[str]:
    return {str(p.relative_to(service.dir)) for p in service.dir.rglob("*") if p.is_file()}


def test_options_are_checked_strictly_and_the_field_is_named(tmp_path, media, model):
    """stride 1.5, clip_len 2.5, stride true, start_frame past the end, a prompt on frame
    10^9, label 1.9, NaN / Infinity coordinates, prompts as a list: 400 naming the field,
    and no job or file is created."""
    service, client = client_for(tmp_path, media, model)
    video = str(media["clip"])  # 15 frames, 80 x 64
    box = {"coords": [[1, 1], [20, 20]], "labels": [2, 3]}
    cases = [({"stride": 1.5}, "options.stride"), ({"clip_len": 2.5}, "options.clip_len"),
             ({"stride": True}, "options.stride"), ({"clip_len": 0}, "options.clip_len"),
             ({"clip_len": 100000}, "options.clip_len"), ({"start_frame": -1},
                                                          "options.start_frame"),
             ({"start_frame": 1000}, "options.start_frame"),
             ({"stop_frame": 1000}, "options.stop_frame"),
             ({"start_frame": 5, "stop_frame": 5}, "options.stop_frame"),
             ({"no_audio": "loud"}, "options.no_audio"), ({"no_audio": 1}, "options.no_audio"),
             ({"prompts": {"1000000000": box}}, "options.prompts.1000000000"),
             ({"stride": 2, "prompts": {"3": box}}, "options.prompts.3"),
             ({"prompts": {"x": box}}, "options.prompts.x"),
             ({"prompts": {"01": box}}, "options.prompts.01"),
             ({"prompts": {"2": {"coords": [[5, 5]], "labels": [1.9]}}}, "options.prompts.2"),
             ({"prompts": {"2": {"coords": [[5, 5]], "labels": [True]}}}, "options.prompts.2"),
             ({"prompts": {"2": {"coords": [[5, 5]], "labels": [4]}}}, "options.prompts.2"),
             ({"prompts": {"2": {"coords": [["5", 5]], "labels": [1]}}}, "options.prompts.2"),
             ({"prompts": {"2": {"coords": [[500, 5]], "labels": [1]}}}, "options.prompts.2"),
             ({"prompts": {"2": {"coords": [[5, 5]], "labels": [2]}}}, "options.prompts.2"),
             ({"prompts": [box]}, "options.prompts"), ({"prompts": {"2": [1, 2]}},
                                                       "options.prompts.2"),
             ({"bogus": 1}, "options.bogus"), ([1, 2], "options")]
    before = state_files(service)
    for options, field in cases:
        r = client.post("/v1/jobs", json={"video": video, "options": options}, headers=AUTH)
        assert r.status_code == 400 and r.json()["field"] == field, (options, r.json())
        assert field in r.json()["error"]
    # NaN and Infinity are not JSON (Python's json module would take them).
    for constant in ("NaN", "Infinity", "-Infinity"):
        raw = json.dumps({"video": video, "options": {"prompts": {"2": {
            "coords": [["X", 5]], "labels": [1]}}}}).replace('"X"', constant)
        r = client.post("/v1/jobs", content=raw.encode(), headers=AUTH)
        assert r.status_code == 400, (constant, r.text)
    r = client.post("/v1/jobs", json={"video": video, "priority": 1}, headers=AUTH)
    assert r.status_code == 400 and r.json()["field"] == "priority"
    assert service.jobs == {} and state_files(service) == before
    assert client.get("/metrics", headers=AUTH).status_code == 200  # still answers
    # The client checks the same rules before sending anything.
    with pytest.raises(ValueError, match="options.stride"):
        RemoteEngine("http://127.0.0.1:9", se.TOKEN).submit(video, PrelabelOptions(stride=1.5))


def test_start_frame_past_the_end_of_a_video_that_hides_its_length(tmp_path, media, model):
    """An MKV does not say how many frames it has: start_frame past its end gave a "done" job
    with no frame and frames_total -970. Now the job fails and says why."""
    mkv = write_clip(make_clip(15, size=(64, 80), fps=10, seconds=0.5),
                     media["root"] / "short.mkv")
    service, client = client_for(tmp_path, media, model)
    r = client.post("/v1/jobs", json={"video": str(mkv), "options": {"start_frame": 1000}},
                    headers=AUTH)
    assert r.status_code == 202, r.json()  # the length is not known before decoding
    st = wait_done(client, r.json()["id"])
    assert st["status"] == "failed" and st["error_kind"] == "media", st
    assert "shorter" in st["error"] and st["progress"]["frames_total"] is None
    assert client.get(f"/v1/jobs/{st['id']}/results", headers=AUTH).status_code == 409


def test_prompts_are_bounded_everywhere(tmp_path, media, model):
    """8,000 points in one prompt took the service from 346 MB to 4.9 GB: now 400 before
    anything is built; prompted frames per job are bounded too; and no PointPrompt (the
    engine's and Label Studio's input) can hold more than the bound."""
    from auralsam2_core.modeling.model import MAX_PROMPT_POINTS
    from auralsam2_core.serving.wire import MAX_PROMPTED_FRAMES

    service, client = client_for(tmp_path, media, model, max_body_bytes=1 << 20)
    many = {"coords": [[5, 5]] * 8000, "labels": [1] * 8000}
    r = client.post("/v1/jobs", json={"video": str(media["clip"]),
                                      "options": {"prompts": {"2": many}}}, headers=AUTH)
    assert r.status_code == 400 and f"at most {MAX_PROMPT_POINTS} points" in r.json()["error"]
    click = {"coords": [[5, 5]], "labels": [1]}
    r = client.post("/v1/jobs", json={"video": str(media["clip"]), "options": {
        "prompts": {str(i): click for i in range(MAX_PROMPTED_FRAMES + 1)}}}, headers=AUTH)
    assert r.status_code == 400 and r.json()["field"] == "options.prompts"
    assert service.jobs == {}
    with pytest.raises(ValueError, match="at most"):
        PointPrompt(((1.0, 1.0),) * (MAX_PROMPT_POINTS + 1), (1,) * (MAX_PROMPT_POINTS + 1))
    with pytest.raises(ValueError, match="finite"):
        PointPrompt(((float("nan"), 1.0),), (1,))
    ok = PointPrompt(((1.0, 1.0),) * MAX_PROMPT_POINTS, (1,) * MAX_PROMPT_POINTS)
    assert len(ok.coords) == MAX_PROMPT_POINTS


def test_bad_paths_are_400_with_a_reason(tmp_path, media, model):
    """A NUL byte, a symlink loop, a component over 255 bytes, a 5,000-character path:
    400 naming 'video' (they were 500s)."""
    service, client = client_for(tmp_path, media, model)
    root = media["root"]
    loop = root / "loop.mp4"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    for video in (f"{root}/a\x00.mp4", str(loop), f"{root}/{'n' * 300}.mp4",
                  f"{root}/{'d/' * 2500}a.mp4"):
        r = client.post("/v1/jobs", json={"video": video}, headers=AUTH)
        assert r.status_code == 400 and r.json()["field"] == "video", (video[:60], r.text)
    assert service.jobs == {}


def test_body_limit_stops_reading_a_chunked_body(tmp_path, media, model):
    """A chunked body (no Content-Length) 1,000 times the limit: the 413 arrives while the
    client is still sending, long before the body is through (it was buffered whole)."""
    limit = 64 << 10
    with se.ServiceThread(tmp_path / "state", [media["root"]], model=model,
                          max_body_bytes=limit) as srv:
        total = 1000 * limit
        sent, answer = se.stream_chunked(srv.port, "/v1/jobs", AUTH, total)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
        assert sent < total // 8, f"the server read {sent} of {total} bytes before answering"
        # Without the token: 401 without reading the body at all.
        sent, answer = se.stream_chunked(srv.port, "/v1/jobs", {}, total)
        assert answer.startswith(b"HTTP/1.1 401") and sent < total // 8
        assert srv.service.jobs == {}


def test_url_media_are_fetched_per_job_not_cached(tmp_path, media, model):
    """After the file behind a URL changed, the next job ran on the old copy: now every job
    downloads its own copy and removes it when it ends."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    clips = [media["clip"].read_bytes(),
             write_clip(make_clip(21, size=(64, 80), fps=10, seconds=1.0),
                        tmp_path / "other.mp4").read_bytes()]
    serving = {"data": clips[0]}

    class Media(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            data = serving["data"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Media)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
    try:
        settings = ServiceSettings(token=se.TOKEN, media_hosts=("127.0.0.1",),
                                   state_dir=tmp_path / "state")
        service = JobService(settings, ModelSpec(), model=model)
        client = starlette_testclient.TestClient(create_app(service))
        docs = []
        for data in clips:
            serving["data"] = data
            r = client.post("/v1/jobs", json={"video": url}, headers=AUTH)
            assert r.status_code == 202, r.json()
            assert wait_done(client, r.json()["id"])["status"] == "done"
            docs.append(client.get(f"/v1/jobs/{r.json()['id']}/results", headers=AUTH).json())
        assert docs[0]["summary"]["frames"] == 15 and docs[1]["summary"]["frames"] == 10
        assert docs[1]["objects"] == LocalEngine(model).document(tmp_path / "other.mp4")["objects"]
        assert list((service.dir / "media").iterdir()) == []  # each copy went with its job
        # A refused request leaves no download behind either (start_frame past the end).
        r = client.post("/v1/jobs", json={"video": url, "options": {"start_frame": 500}},
                        headers=AUTH)
        assert r.status_code == 400 and list((service.dir / "media").iterdir()) == []
    finally:
        server.shutdown()


@pytest.mark.slow
def test_a_second_serve_on_the_same_state_dir_refuses_and_touches_nothing(tmp_path, media,
                                                                          model):
    """A second `auralsam2 serve` on a live state directory "recovered" the running job,
    truncated its partial file and the job ended failed, even when the second one then could
    not bind its port. Now it refuses before reading any job, and the job finishes."""
    long = write_clip(make_clip(14, size=(64, 80), fps=25, seconds=30),
                      media["root"] / "long-lock.mp4")
    port = se.free_port()
    proc, engine = _serve(tmp_path, media, port)
    try:
        job = engine.submit(long, PrelabelOptions())
        deadline = time.monotonic() + 120
        while engine._call("GET", f"/v1/jobs/{job}")["progress"]["frames_done"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        state = tmp_path / "state"
        job_file = state / "jobs" / f"{job}.json"
        before = job_file.read_bytes()
        env = {**os.environ, "AURALSAM2_SERVER_TOKEN": se.TOKEN,
               "AURALSAM2_SERVER_MEDIA_ROOTS": str(media["root"]), "OMP_NUM_THREADS": "1"}
        second = subprocess.run([sys.executable, "-m", "auralsam2_core.cli", "serve", "--port",
                                 str(port), "--state-dir", str(state)], env=env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by auralsam2 serve, pid {proc.pid}" in second.stderr
        assert json.loads(before)["status"] == "running"
        # untouched by the second one: still running as it was, or (on a busy machine, where
        # the refusal can take longer than the job) finished by its owner on attempt 1
        now = json.loads(job_file.read_bytes())
        assert now["attempts"] == 1 and now["status"] in ("running", "done"), now
        if now["status"] == "running":
            assert job_file.read_bytes() == before
        deadline = time.monotonic() + 600
        while (st := engine._call("GET", f"/v1/jobs/{job}"))["status"] not in ("done",
                                                                               "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert st["status"] == "done" and st["attempts"] == 1, st
        assert engine._call("GET", f"/v1/jobs/{job}/results")["summary"]["frames"] == 750
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    # The owner gone, the directory is free again (and a job it left is recovered).
    settings = ServiceSettings(token=se.TOKEN, state_dir=tmp_path / "state")
    JobService(settings, ModelSpec(), model=model, start_worker=False).close()


def test_state_dir_lock_in_process(tmp_path, model):
    from auralsam2_service.job_service import StateDirBusy

    settings = ServiceSettings(token=se.TOKEN, state_dir=tmp_path)
    first = JobService(settings, ModelSpec(), model=model, start_worker=False)
    with pytest.raises(StateDirBusy, match=f"pid {os.getpid()}"):
        JobService(settings, ModelSpec(), model=model, start_worker=False)
    first.close()
    JobService(settings, ModelSpec(), model=model, start_worker=False).close()
