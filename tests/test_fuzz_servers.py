"""Property-based: random JSON (and some not-JSON) at every endpoint of the shared service and
of the Label Studio backend. Whatever arrives, the answer is 2xx or 4xx, never a 500, and a
refused request leaves no job and no file behind (issue #13).

The requests are built from the real wire formats with every field replaced, now and then, by
anything JSON can hold (NaN and Infinity included, which Python's json writes), so that they
get past the first checks and reach the deeper ones. No model runs: the service's worker is
not started and the backend's Label Studio is a closed port.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

import pytest

hypothesis = pytest.importorskip("hypothesis")
starlette_testclient = pytest.importorskip("starlette.testclient")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from auralsam2_core.model_spec import ModelSpec, load_model  # noqa: E402
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402
from auralsam2_plugins.label_studio.app import create_app as backend_app  # noqa: E402
from auralsam2_plugins.label_studio.backend import Backend  # noqa: E402
from auralsam2_plugins.label_studio.config import LabelStudioBackendSettings  # noqa: E402
from auralsam2_service.app import create_app as service_app  # noqa: E402
from auralsam2_service.config import ServiceSettings  # noqa: E402
from auralsam2_service.job_service import JobService  # noqa: E402

from helpers import service_env as se  # noqa: E402
from helpers.label_studio_backend import CONFIG, GOOD, PASSWORD, USER, RecordingServer  # noqa: E402

RAW = st.one_of(*[st.just(None)] * 4, st.binary(max_size=64))  # mostly JSON; sometimes not
RUNS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                        max_leaves=25)


def sometimes(strategy):
    """The field as the wire format has it, or anything at all."""
    return strategy | anything


def maybe_dict(fields: dict) -> st.SearchStrategy:
    """Objects with some of ``fields`` (each value from its strategy) and maybe extra keys."""
    return st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda d: st.dictionaries(st.text(max_size=8), anything, max_size=2).map(
            lambda extra: {**extra, **d})) | anything


frames = st.integers(-3, 40) | st.integers(0, 10 ** 12)
numbers = st.integers(-5, 200) | st.floats(allow_nan=True, allow_infinity=True)
point_prompt = maybe_dict({"coords": sometimes(st.lists(sometimes(st.lists(
    sometimes(numbers), min_size=2, max_size=2)), max_size=70)),
    "labels": sometimes(st.lists(sometimes(st.integers(-1, 4) | st.floats()), max_size=70))})


def state_files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def body_of(value) -> bytes:
    return json.dumps(value).encode()  # NaN / Infinity written as Python writes them


# --------------------------------------------------------------------------- the service


def test_service_answers_anything_with_2xx_or_4xx(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    clip = write_clip(make_clip(5, size=(32, 48), fps=10, seconds=1.0), media / "a.mp4")
    service = JobService(ServiceSettings(token=se.TOKEN, media_roots=(media.resolve(),),
                                      state_dir=tmp_path / "state", max_queue=100000,
                                      max_body_bytes=256 << 10), ModelSpec(),
                      start_worker=False)
    client = starlette_testclient.TestClient(service_app(service), raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {se.TOKEN}"}
    options = maybe_dict({"clip_len": sometimes(st.integers(-2, 80)),
                          "stride": sometimes(st.integers(-2, 5)),
                          "no_audio": sometimes(st.sampled_from(["error", "silent"])),
                          "start_frame": sometimes(frames), "stop_frame": sometimes(frames),
                          "prompts": sometimes(st.dictionaries(
                              st.from_regex(r"-?[0-9]{1,3}|x", fullmatch=True) | st.text(
                                  max_size=4), point_prompt, max_size=4))})
    video = sometimes(st.sampled_from([str(clip), str(media / "missing.mp4"), "/etc/passwd",
                                       f"{media}/../a.mp4", "a.mp4", "file:///etc/passwd",
                                       "http://169.254.169.254/x", f"{media}/\x00.mp4",
                                       f"{media}/{'n' * 300}"]))
    near_valid = st.fixed_dictionaries({}, optional={
        "clip_len": st.integers(1, 8), "stride": st.integers(1, 3),
        "start_frame": st.integers(0, 4), "stop_frame": st.none() | st.integers(5, 12),
        "no_audio": st.sampled_from(["error", "silent"]),
        "prompts": st.dictionaries(st.sampled_from(["4", "6", "12"]), point_prompt,
                                   max_size=2)})
    job_body = st.one_of(
        st.fixed_dictionaries({"video": st.just(str(clip)), "options": near_valid}),
        st.fixed_dictionaries({"video": video, "options": near_valid}),
        st.fixed_dictionaries({"video": st.just(str(clip)), "options": options}),
        maybe_dict({"video": video, "options": options}))
    # Mostly job submissions with the token: that is where the checks are.
    endpoints = st.sampled_from(["/v1/jobs"] * 6 + ["/v1/jobs/{id}", "/v1/jobs/{id}/results",
                                                    "/metrics", "/health"])

    @RUNS
    @given(endpoint=endpoints, body=job_body,
           raw=RAW,
           job_id=st.text(max_size=20), method=st.sampled_from(["GET"] * 4 + ["POST", "PUT"]),
           with_token=st.sampled_from([True] * 5 + [False]))
    def check(endpoint, body, raw, job_id, method, with_token):
        path = endpoint.replace("{id}", quote(job_id, safe="") or "x")
        if endpoint == "/v1/jobs":
            method = "POST"
        jobs, files = dict(service.jobs), state_files(service.dir)
        r = client.request(method, path, content=raw if raw is not None else body_of(body),
                           headers=auth if with_token else {})
        assert r.status_code < 500, (method, path, body, r.text)
        if r.status_code >= 400 or method != "POST":
            assert service.jobs == jobs and state_files(service.dir) == files, (path, body)
        else:
            assert r.status_code == 202 and set(service.jobs) - set(jobs) == {r.json()["id"]}
            job = service.jobs[r.json()["id"]]
            assert client.get(f"/v1/jobs/{job.id}", headers=auth).status_code == 200

    check()
    assert service.counters["submitted"] > 0  # some requests were valid (the test reached far)


# --------------------------------------------------------------------------- the backend


def test_label_studio_backend_answers_anything_with_2xx_or_4xx(tmp_path):
    """Label Studio here is a stand-in that serves one clip at /data/upload/1/a.mp4 (so that
    predictions and refinements with random contexts really run) and 404 elsewhere."""
    clip = write_clip(make_clip(6, size=(32, 48), fps=10, seconds=0.8),
                      tmp_path / "a.mp4").read_bytes()
    ls = RecordingServer(lambda path: (200, {}, clip) if path == "/data/upload/1/a.mp4"
                         else (404, {}, b"no"))
    ls.__enter__()
    try:
        _fuzz_backend(tmp_path, ls.url)
    finally:
        ls.__exit__()
    from auralsam2_plugins.label_studio.client import is_media_path

    assert ls.seen and all(is_media_path(urlsplit(path).path) for path, _ in ls.seen)


def _fuzz_backend(tmp_path, ls_url: str) -> None:
    settings = LabelStudioBackendSettings(url=ls_url, api_key="k", work_dir=tmp_path / "work",
                                          basic_auth_user=USER, basic_auth_pass=PASSWORD,
                                          max_body_bytes=256 << 10, predict_budget=30)
    backend = Backend(settings, ModelSpec(), model=load_model(ModelSpec()))
    client = starlette_testclient.TestClient(backend_app(backend), raise_server_exceptions=False)
    links = st.sampled_from(["/data/upload/1/a.mp4", "/api/projects", "s3://b/a.mp4",
                             "http://127.0.0.1:1/data/upload/../../api/x", "file:///etc/x",
                             "//evil/x", "http://[::1/x", "http://h:port/x"])
    task = maybe_dict({"id": sometimes(st.integers(-1, 10 ** 20)),
                       "data": maybe_dict({"video": sometimes(links),
                                           "image": sometimes(links),
                                           "frame": sometimes(st.integers(-1, 100)
                                                              | st.text(max_size=3))})})
    region = maybe_dict({"type": sometimes(st.sampled_from(
        ["videorectangle", "rectanglelabels", "keypointlabels"])),
        "is_positive": anything, "value": maybe_dict({
            "x": sometimes(numbers), "y": sometimes(numbers), "width": sometimes(numbers),
            "height": sometimes(numbers), "sequence": sometimes(st.lists(maybe_dict({
                "frame": sometimes(frames), "x": sometimes(numbers),
                "y": sometimes(numbers), "width": sometimes(numbers),
                "height": sometimes(numbers)}), max_size=3))})})
    project = maybe_dict({"id": sometimes(st.integers(-1, 10 ** 20)),
                          "label_config": sometimes(st.just(CONFIG))})
    bodies = {
        "/setup": maybe_dict({"schema": sometimes(st.just(CONFIG)), "project": anything}),
        "/predict": maybe_dict({"tasks": sometimes(st.lists(task, max_size=3)),
                                "label_config": sometimes(st.just(CONFIG)),
                                "params": maybe_dict({"context": maybe_dict({
                                    "result": sometimes(st.lists(region, max_size=70))})})}),
        "/webhook": maybe_dict({"action": sometimes(st.sampled_from([
            "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
            "START_TRAINING"])), "project": project, "task": task,
            "annotation": maybe_dict({"id": sometimes(st.integers()),
                                      "result": sometimes(st.lists(region, max_size=3))}),
            "annotations": sometimes(st.lists(maybe_dict({"id": anything}), max_size=3))}),
    }
    served = st.just("/data/upload/1/a.mp4") | links
    percent = st.floats(0, 100) | st.integers(-10, 110)
    keyframe = st.fixed_dictionaries({"frame": st.integers(1, 30), "x": percent,
                                      "y": percent, "width": percent, "height": percent})
    good_region = st.fixed_dictionaries({
        "type": st.just("videorectangle"),
        "value": st.fixed_dictionaries({"sequence": st.lists(keyframe, min_size=1,
                                                             max_size=2)})}) | \
        st.fixed_dictionaries({"type": st.just("keypointlabels"),
                               "is_positive": st.booleans(),
                               "value": st.fixed_dictionaries({"x": percent, "y": percent})})
    near_valid = st.fixed_dictionaries({
        "tasks": st.lists(st.fixed_dictionaries({
            "id": st.integers(0, 5),
            "data": st.fixed_dictionaries({"video": served})}), min_size=1, max_size=2),
        "label_config": st.just(CONFIG)}, optional={"params": st.fixed_dictionaries(
            {"context": st.fixed_dictionaries({"result": st.lists(
                good_region | region, min_size=1, max_size=70)})})})
    requests = st.one_of(
        *[st.tuples(st.just("POST"), st.just("/predict"), near_valid)] * 3,
        *[st.tuples(st.just("POST"), st.just(p), b) for p, b in bodies.items()],
        st.tuples(st.sampled_from(["GET"]), st.sampled_from(["/", "/health", "/metrics",
                                                             "/jobs"]), st.none()))

    @RUNS
    @given(request=requests, raw=RAW,
           with_auth=st.sampled_from([True] * 5 + [False]))
    def check(request, raw, with_auth):
        method, path, body = request
        files = state_files(backend.work)
        content = raw if raw is not None else (body_of(body) if body is not None else None)
        r = client.request(method, path, content=content, headers=GOOD if with_auth else {})
        assert r.status_code < 500, (path, body, r.text)
        if r.status_code >= 400:
            assert state_files(backend.work) == files, (path, body)
        if not with_auth and path != "/":
            assert r.status_code == 401

    check()
    assert backend.stats["predicted"] > 0 and backend.stats["failed"] > 0
