"""Who may call the Label Studio backend and what it may fetch (issue #13, points 1, 2, 11),
without a Label Studio server: the backend's app under Starlette's test client and under
uvicorn on 127.0.0.1, its command line, its media-link rules against a recording HTTP server
standing in for Label Studio, and the deployment files. The real Label Studio checks (basic
auth set in a project, predictions arriving) are in tests/test_labelstudio.py."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

starlette_testclient = pytest.importorskip("starlette.testclient")
pytest.importorskip("uvicorn")

from auralsam2_core.model_spec import ModelSpec  # noqa: E402
from auralsam2_plugins.label_studio.app import create_app  # noqa: E402
from auralsam2_plugins.label_studio.backend import Backend  # noqa: E402
from auralsam2_plugins.label_studio.client import LabelStudioClient, MediaRefused  # noqa: E402
from auralsam2_plugins.label_studio.config import LabelStudioBackendSettings  # noqa: E402

from helpers import service_env as se  # noqa: E402
from helpers.label_studio_backend import (  # noqa: E402
    CONFIG,
    GOOD,
    PASSWORD,
    USER,
    RecordingServer,
    basic,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def backend(tmp_path):
    return Backend(LabelStudioBackendSettings(work_dir=tmp_path / "work", basic_auth_user=USER,
                                              basic_auth_pass=PASSWORD, max_body_bytes=64 << 10),
                   ModelSpec())


def test_every_endpoint_but_liveness_needs_basic_auth(backend):
    """Anyone could POST /predict and /webhook START_TRAINING (201): now 401 without Label
    Studio's credentials, and the request is not acted on. Only the liveness probe is open."""
    client = starlette_testclient.TestClient(create_app(backend))
    calls = [("POST", "/setup", {"schema": CONFIG}),
             ("POST", "/predict", {"tasks": [], "label_config": CONFIG}),
             ("POST", "/webhook", {"action": "START_TRAINING", "project": {"id": 1}}),
             ("GET", "/metrics", None), ("GET", "/jobs", None), ("GET", "/health", None)]
    wrong = [{}, basic(USER, "nope"), basic("other", PASSWORD), basic(USER, PASSWORD + "x"),
             {"Authorization": f"Bearer {PASSWORD}"}, {"Authorization": "Basic !!notb64"},
             {"Authorization": "Basic " + base64.b64encode(USER.encode()).decode()}]
    for method, path, body in calls:
        for headers in wrong:
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["www-authenticate"].startswith("Basic")
        assert client.request(method, path, json=body, headers=GOOD).status_code < 300, path
    assert backend.finetune.snapshot()["project"] == 1  # only the authenticated call counted
    assert client.get("/").json() == {"status": "UP"}  # the liveness probe, nothing else


def test_credentials_come_in_pairs_and_from_files(tmp_path):
    with pytest.raises(ValueError, match="both"):
        LabelStudioBackendSettings(basic_auth_user="u")
    secret = tmp_path / "pass"
    secret.write_text("from-a-file\n")
    s = LabelStudioBackendSettings.from_env({"BASIC_AUTH_USER": "u",
                                     "BASIC_AUTH_PASS_FILE": str(secret)})
    assert s.basic_auth == ("u", "from-a-file") and "from-a-file" not in repr(s)


def test_serve_refuses_to_listen_beyond_loopback_without_credentials(tmp_path):
    from auralsam2_plugins.label_studio.cli import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and \
        not is_loopback("backend.example.com")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASIC_AUTH")}
    env.update(AURALSAM2_LS_WORK_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "auralsam2_core.cli", "labelstudio", "serve",
                          "--host", "0.0.0.0", "--port", str(se.free_port())], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "BASIC_AUTH_USER" in out.stderr and "0.0.0.0" in out.stderr
    out = subprocess.run([sys.executable, "-m", "auralsam2_core.cli", "labelstudio", "serve"],
                         env={**env, "BASIC_AUTH_USER": "only-a-user"}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "both" in out.stderr


def test_body_limit_stops_reading_a_chunked_body(backend):
    """The backend buffered a whole chunked body before its 413 (+480 MB, unauthenticated)."""
    limit = backend.settings.max_body_bytes
    total = 1000 * limit
    with se.UvicornThread(create_app(backend)) as srv:
        sent, answer = se.stream_chunked(srv.port, "/predict", GOOD, total)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
        assert sent < total // 8, f"the backend read {sent} of {total} bytes before answering"
        sent, answer = se.stream_chunked(srv.port, "/predict", {}, total)
        assert answer.startswith(b"HTTP/1.1 401") and sent < total // 8


def test_malformed_requests_are_400_not_500(backend):
    client = starlette_testclient.TestClient(create_app(backend))
    for path, body in [("/setup", {"schema": 12345}), ("/setup", {"schema": ["<View/>"]}),
                       ("/predict", {"tasks": [], "label_config": 5}),
                       ("/predict", {"tasks": [], "label_config": CONFIG, "params": "x"}),
                       ("/predict", {"tasks": [], "label_config": CONFIG,
                                     "params": {"context": [1]}}),
                       ("/predict", {"tasks": [{"id": "7", "data": {}}], "label_config": CONFIG}),
                       ("/predict", {"tasks": [{"id": 7, "data": []}], "label_config": CONFIG}),
                       ("/predict", {"tasks": [], "label_config": CONFIG.replace(
                           'framerate="25"', 'framerate="0"')}),
                       ("/webhook", {"action": "START_TRAINING", "project": "x"}),
                       ("/webhook", {"action": "START_TRAINING", "project": {"id": True}}),
                       ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": {},
                                     "task": {"id": "../../x"}, "project": {"id": 1}}),
                       ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": {},
                                     "task": {"id": 1}, "project": {"id": 10 ** 400}}),
                       ("/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": 3}),
                       ("/webhook", {"action": "ANNOTATIONS_DELETED",
                                     "annotations": [{"id": [1]}], "project": {"id": "1"}})]:
        r = client.post(path, json=body, headers=GOOD)
        assert r.status_code == 400 and r.json()["message"], (path, body, r.text)
    r = client.post("/predict", content=b'{"tasks": [], "label_config": NaN}', headers=GOOD)
    assert r.status_code == 400
    r = client.post("/predict", content=b"[" * 60000, headers=GOOD)
    assert r.status_code == 400
    assert not list((backend.work / "finetune").rglob("*.json"))  # nothing was stored


# --------------------------------------------------------------------------- media links


def test_media_links_resolve_only_to_media():
    from auralsam2_plugins.label_studio.client import is_media_path

    s = LabelStudioBackendSettings(url="http://ls.internal:8080", api_key="k")
    c = LabelStudioClient(s)
    for ok in ("/data/upload/3/abc-clip.mp4", "/data/local-files/?d=videos/a.mp4",
               "/tasks/12/presign/?fileuri=czM6Ly9h", "/projects/3/resolve/?fileuri=x",
               "http://ls.internal:8080/data/upload/1/a.mp4",
               "http://public.example.com/data/upload/1/a.mp4"):
        assert c.media_url(ok, 12).startswith("http://ls.internal:8080/"), ok
    for bad in ("/api/projects", "/api/current-user/whoami", "http://ls.internal:8080/api/projects",
                "http://public.example.com/api/projects", "/data/upload/../../api/projects",
                "/data/upload/%2e%2e/%2E%2E/api/projects", "http://evil.com/data/upload/../../api/x",
                "/data/upload/", "/tasks/12/annotations/", "/data/local-files/../api/x",
                "//evil.com/data/upload/a.mp4", "/tasks/1/presign/../../api/projects",
                "http://[::1/data/upload/a.mp4", "http://h:port/data/upload/a.mp4"):
        with pytest.raises(MediaRefused):
            c.media_url(bad, 12)
    assert is_media_path("/data/upload/1/a b.mp4") and not is_media_path("/data/upload\\..\\x")
    under = LabelStudioClient(LabelStudioBackendSettings(url="http://h/ls", api_key="k"))
    assert under.media_url("http://h/ls/data/upload/1/a.mp4") == "http://h/ls/data/upload/1/a.mp4"
    with pytest.raises(MediaRefused):
        under.media_url("http://h/ls/api/projects")


def test_the_key_never_goes_to_a_non_media_path(tmp_path):
    """A task whose video is "/api/projects" made the backend fetch Label Studio's API with its
    key and keep the answer in its media folder; so did a storage host redirecting there."""
    key = "ls-api-key-0123"
    api = b'[{"id": 1, "title": "secret project"}]'

    def label_studio(path):
        return (200, {"Content-Type": "application/json"}, api)

    with RecordingServer(label_studio) as ls:
        def storage(path):  # an allowed storage host that redirects to Label Studio's API
            return 302, {"Location": f"{ls.url}/api/projects"}, b""

        with RecordingServer(storage) as st:
            backend = Backend(LabelStudioBackendSettings(url=ls.url, api_key=key, work_dir=tmp_path,
                                                         storage_hosts=("localhost",)),
                              ModelSpec())
            foreign = st.url.replace("127.0.0.1", "localhost") + "/bucket/a.mp4"
            tasks = [{"id": 1, "data": {"video": "/api/projects"}},
                     {"id": 2, "data": {"video": f"{ls.url}/api/projects"}},
                     {"id": 3, "data": {"video": "http://elsewhere.example/api/projects"}},
                     {"id": 4, "data": {"video": "http://x.example/data/upload/../../api/projects"}},
                     {"id": 5, "data": {"video": foreign}}]
            out = backend.predict({"tasks": tasks, "label_config": CONFIG})["results"]
            assert all("result" not in r for r in out)
            assert all("media" in r["error"] for r in out), out
            assert st.seen == [("/bucket/a.mp4", None)]  # no key to the storage host
    assert ls.seen == []  # Label Studio's API was never asked, with or without the key
    assert not list(tmp_path.glob("media/*"))  # nothing fetched, nothing kept


def test_deployments_pass_basic_auth_from_a_secret():
    compose = yaml.safe_load((ROOT / "manifests/label_studio/docker-compose.yml").read_text())
    svc = compose["services"]["auralsam2-backend"]
    assert "0.0.0.0" in svc["command"]
    env = svc["environment"]
    assert env["BASIC_AUTH_USER"] and env["BASIC_AUTH_PASS_FILE"] == "/run/secrets/basic-auth-pass"
    assert "basic-auth-pass" in svc["secrets"] and "basic-auth-pass" in compose["secrets"]
    assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"])
    docs = list(yaml.safe_load_all((ROOT / "manifests/label_studio/k8s.yaml").read_text()))
    [deploy] = [d for d in docs if d["kind"] == "Deployment"]
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
            if "valueFrom" in e}
    assert refs["BASIC_AUTH_USER"]["name"] == refs["BASIC_AUTH_PASS"]["name"] == \
        "auralsam2-label-studio"
