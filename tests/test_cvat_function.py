"""The CVAT adapter (plugins/cvat): the nuclio function run through nuclio_sdk.test.Platform
against an emulated CVAT REST server (tests/cvat_emulator.py), the task-level upload of mask
tracks, the command, the frame mapping, the mask formats and the two function.yaml files.

The model is the tiny random-weight SAM2 used across the tests (seeded so that its masks are
not empty); "the engine's masks" are computed by running the core engine directly.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cvat_sdk")
nuclio_sdk = pytest.importorskip("nuclio_sdk")
yaml = pytest.importorskip("yaml")

from cvat_sdk.masks import decode_mask  # noqa: E402
from nuclio_sdk.test import Platform  # noqa: E402

from auralsam2_core import model_env  # noqa: E402
from auralsam2_core.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.synthetic import make_clip, write_clip  # noqa: E402
from auralsam2_plugins.cvat import config, main  # noqa: E402
from auralsam2_plugins.cvat.cli import register  # noqa: E402
from auralsam2_plugins.cvat.frames import (  # noqa: E402
    FrameMap,
    choose_frame,
    expected_frame,
    job_frames,
    parse_frame_step,
)
from auralsam2_plugins.cvat.masks import (  # noqa: E402
    from_detector_mask,
    resize_mask,
    to_cvat_points,
    to_detector_mask,
)

try:  # tests/ as a package or as a rootdir-inserted folder
    from . import cvat_emulator as ce
except ImportError:
    import cvat_emulator as ce

ROOT = Path(__file__).resolve().parents[1]
FUNCTION = "pth-auralsam2-sounding"
TOKEN = "s3cr3t-token-do-not-log"
MODEL_ENV = {"AURALSAM2_SAM2_CONFIG": "sam2_hiera_t", "AURALSAM2_IMAGE_SIZE": "64",
             "AURALSAM2_FUSER_CONFIG": '{"f_depths": [1, 1, 1]}', "AURALSAM2_DEVICE": "cpu"}
LABEL = {"id": 70, "name": "sounding", "type": "mask", "attributes": [
    {"id": 71, "name": "confidence", "mutable": True, "input_type": "number",
     "values": ["0", "100", "1"], "default_value": "0"},
    {"id": 72, "name": "review_priority", "mutable": False, "input_type": "number",
     "values": ["0", "100", "1"], "default_value": "0"}]}
OTHER_LABEL = {"id": 80, "name": "car", "type": "any", "attributes": []}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(3)  # a random init whose masks are not empty on these clips
    model_env.load_served_model.cache_clear()
    yield model_env.load_served_model(model_env.ServedModel.from_env(MODEL_ENV))
    model_env.load_served_model.cache_clear()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("cvat_clips")
    out = {seed: write_clip(make_clip(seed, size=(48, 64), fps=5, seconds=2.0),
                            d / f"clip{seed}.mp4") for seed in (3, 4)}
    out["silent"] = write_clip(make_clip(5, size=(48, 64), fps=5, seconds=1.0),
                               d / "silent.mp4", audio=False)
    return out


@pytest.fixture(scope="module")
def reference(model, clips):
    """The engine's own results, by (clip, stride) and media frame."""
    cache = {}

    def get(clip, start, step, last):
        key = (clip, start, step, last)
        if key not in cache:
            cache[key] = {r.index: r for r in prelabel(
                model, clips[clip], PrelabelOptions(clip_len=5, stride=step, start_frame=start,
                                                    stop_frame=last + 1))}
        return cache[key]
    return get


@pytest.fixture(autouse=True)
def finish_background_work():
    """Tests end only when the function's background threads have (the model must not be
    running when the interpreter exits)."""
    yield
    for t in threading.enumerate():
        if t.name.startswith("auralsam2-cvat"):
            t.join(timeout=60)


@pytest.fixture
def emu():
    server = ce.CvatEmulator(token=TOKEN)
    yield server
    server.close()


@pytest.fixture
def env(monkeypatch, tmp_path, emu, model):
    values = {"CVAT_URL": emu.url, "CVAT_ACCESS_TOKEN": TOKEN,
              "AURALSAM2_CVAT_CACHE": str(tmp_path / "cache"), "AURALSAM2_CVAT_POLL": "0.05",
              "AURALSAM2_CVAT_RETRY_DELAY": "0.05", "AURALSAM2_CVAT_FRAME_WAIT": "60",
              "AURALSAM2_CVAT_TASK_WAIT": "60", **MODEL_ENV}
    for k in ("NUCLIO_FUNCTION_NAME", "AURALSAM2_CVAT_FUNCTION", "CVAT_USERNAME",
              "CVAT_PASSWORD", "AURALSAM2_CVAT_LABEL"):
        monkeypatch.delenv(k, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def platform(env):
    return Platform()  # init_context runs on the first call, with the environment above


def call(platform, body) -> tuple[int, object]:
    r = platform.call_handler(main.handler, nuclio_sdk.Event(body=body))
    assert r.content_type == "application/json"
    return r.status_code, json.loads(r.body)


def task_a(emu, clips, **kw):
    """Media frames 1, 3, 5, 7, 9 as task frames 0..4; task frame 2 deleted."""
    return emu.add_task(ce.EmuTask(7, clips[3], start=1, step=2, deleted=[2],
                                   labels=[LABEL, OTHER_LABEL], **kw))


def task_b(emu, clips):
    """Media frames 0, 2, 4, 6, 8 (stop 8) of another clip."""
    return emu.add_task(ce.EmuTask(9, clips[4], start=0, stop=8, step=2, labels=[LABEL]))


def cvat_frames(task, job=None):
    frames = range(job[0], job[1] + 1) if job else range(task.size)
    return [f for f in frames if f not in task.deleted]


def auto_annotation(emu, platform, task, job_id=None, threshold=0.5):
    """Drive the function as CVAT's Automatic annotation does: one request per frame in
    order, progress updated after each; yields (frame, status, answer)."""
    rq = emu.start_lambda(FUNCTION, task.id, job_id)
    job = emu.jobs.get(job_id)
    frames = cvat_frames(task, (job["start_frame"], job["stop_frame"]) if job else None)
    for f in frames:
        status, body = call(platform, {"image": task.frame_b64(f), "threshold": threshold})
        rq["progress"] = int((f + 1) / task.size * 100)
        yield f, status, body
    rq["status"] = "finished"


def expected_answer(ref, threshold=0.5):
    if ref.sounding_prob < threshold or not ref.mask.any():
        return None
    return ref.mask


def check_answer(task, frame, body, ref):
    want = expected_answer(ref)
    if want is None:
        assert body == [], f"frame {frame}: expected no shape"
        return
    assert len(body) == 1, f"frame {frame}: {body}"
    shape = body[0]
    assert shape["label"] == "sounding" and shape["type"] == "mask"
    got = from_detector_mask(shape["mask"], task.width, task.height)
    assert np.array_equal(got, want), f"task {task.id} frame {frame}: mask differs"
    attrs = {a["name"]: a["value"] for a in shape["attributes"]}
    assert attrs["confidence"] == str(round(100 * ref.sounding_prob))
    assert attrs["review_priority"] == str(round(100 * ref.review_priority))
    assert abs(float(shape["confidence"]) - ref.sounding_prob) < 1e-3


def own_tracks(task):
    return [t for t in task.tracks if t.get("source") == "auto" and t["label_id"] == 70]


# ----------------------------------------------------------------------------- pure parts


def test_frame_map_from_cvat_meta():
    fm = FrameMap.from_meta({"start_frame": 10, "stop_frame": 30, "frame_filter": "step=5",
                             "size": 5, "deleted_frames": [3]})
    assert [fm.media_frame(i) for i in range(5)] == [10, 15, 20, 25, 30]
    assert fm.task_frame(20) == 2 and fm.task_frame(21) is None and fm.task_frame(5) is None
    assert fm.task_frame(35) is None  # past the stop frame
    assert fm.task_frames() == [0, 1, 2, 4]
    assert fm.engine_stride == 5 and fm.last_media_frame == 30
    assert FrameMap(start=3, step=2, size=4).engine_stride == 2  # from start_frame 3
    no_size = FrameMap.from_meta({"start_frame": 2, "stop_frame": 11, "frame_filter": "step=3"})
    assert no_size.size == 4 and no_size.last_media_frame == 11
    with pytest.raises(IndexError):
        fm.media_frame(5)
    assert parse_frame_step("") == 1 and parse_frame_step("step=4") == 4
    with pytest.raises(ValueError, match="frame_filter"):
        parse_frame_step("every=2")


def test_jobs_expected_frame_and_choice():
    fm = FrameMap(start=0, step=1, size=10, deleted=frozenset({4}))
    assert job_frames(fm, 3, 6) == [3, 5, 6]
    assert job_frames(fm, 8, 20) == [8, 9]
    frames = [3, 5, 6]
    assert expected_frame(frames, None) == 3
    assert expected_frame(frames, 3) == 5
    assert expected_frame(frames, 6) == 3  # a new run starts over
    assert expected_frame(list(range(10)), None, progress=50, size=10) == 5
    # a still scene: several frames look the same; the expected one wins
    assert choose_frame([0, 1, 2, 3], [2.0, 1.0, 1.2, 9.0], expected=2, tolerance=5)[0] == 2
    assert choose_frame([0, 1, 2, 3], [2.0, 1.0, 5.0, 9.0], expected=3, tolerance=5)[0] == 1
    assert choose_frame([0, 1], [20.0, 30.0], expected=0, tolerance=5) == (None, 20.0)


def test_mask_formats_round_trip():
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 7:33] = rng.random((15, 26)) > 0.4
    flat = to_detector_mask(mask)
    assert flat[-4:] == [int(np.flatnonzero(mask.any(0))[0]), 5,
                         int(np.flatnonzero(mask.any(0))[-1]), 19]
    assert np.array_equal(from_detector_mask(flat, 40, 30), mask)
    assert to_detector_mask(np.zeros((4, 4), bool)) is None
    points = to_cvat_points(mask)
    assert np.array_equal(decode_mask(points, image_width=40, image_height=30), mask)
    big = resize_mask(mask, 80, 60)
    assert big.shape == (60, 80) and np.array_equal(big[::2, ::2], mask)


def test_settings_from_env_and_secrets(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("file-token\n")
    s = config.Settings.from_env({"CVAT_URL": "http://cvat:8080",
                                  "CVAT_ACCESS_TOKEN_FILE": str(secret),
                                  "NUCLIO_FUNCTION_NAME": "my-fn"})
    assert s.token == "file-token" and s.function_name == "my-fn"
    assert "file-token" not in repr(s)
    with pytest.raises(ValueError, match="CVAT_URL"):
        config.Settings.from_env({"CVAT_URL": "ftp://x"})
    assert model_env.ServedModel.from_env({}).sam2_config == "bundled"
    assert model_env.ServedModel.from_env(
        {"AURALSAM2_FUSER_CHECKPOINT": "auralsam2_avs_v1m"}).sam2_config == "sam2_hiera_l"


def test_tracks_follow_sounding_runs_and_label_attributes():
    from cvat_sdk import models

    from auralsam2_core import rle
    from auralsam2_plugins.cvat.tracks import build_tracks, is_own, sounding_runs

    assert sounding_runs([0, 1, 3, 4, 5], lambda f: f in (0, 1, 5)) == [[0, 1], [5]]
    label = ce.to_model(models.Label, LABEL)
    rng = np.random.default_rng(1)
    frames = [0, 1, 3, 4, 5]  # task frame 2 deleted
    masks = {f: rng.random((12, 16)) > 0.5 for f in frames}
    masks[4][:] = False  # sounding but nothing visible: no shape
    probs = {0: 0.9, 1: 0.8, 3: 0.2, 4: 0.7, 5: 0.95}
    records = {f: {"index": f, "sounding_prob": probs[f], "review_priority": 0.1 * f,
                   "mask": rle.encode(masks[f])} for f in frames}
    tracks = build_tracks(frames, records, label, 0.5, 16, 12)
    assert [[(s.frame, s.outside) for s in t.shapes] for t in tracks] == [
        [(0, False), (1, False), (3, True)], [(5, False)]]
    first = tracks[0]
    assert first.frame == 0 and first.label_id == 70 and first.source == "auto"
    for shape in first.shapes[:2]:
        got = decode_mask(shape.points, image_width=16, image_height=12)
        assert np.array_equal(got, masks[shape.frame])
    assert first.shapes[2].points == first.shapes[1].points  # the outside shape ends it
    assert [(a.spec_id, a.value) for a in first.shapes[0].attributes] == [(71, "90")]
    assert [(a.spec_id, a.value) for a in first.attributes] == [(72, "10")]  # highest
    # a text attribute gets the score itself; labels without the attributes get none
    text = ce.to_model(models.Label, {**LABEL, "attributes": [
        {"id": 75, "name": "confidence", "mutable": True, "input_type": "text", "values": [],
         "default_value": ""}]})
    shape = build_tracks(frames, records, text, 0.5, 16, 12)[1].shapes[0]
    assert [(a.spec_id, a.value) for a in shape.attributes] == [(75, "0.950")]
    bare = ce.to_model(models.Label, {**OTHER_LABEL, "id": 70})
    assert all(not t.attributes for t in build_tracks(frames, records, bare, 0.5, 16, 12))
    # own tracks: this label, source auto, masks only
    made = ce.to_model(models.LabeledTrack, {"id": 1, "label_id": 70, "frame": 0, "source":
                                             "auto", "shapes": [{"type": "mask", "frame": 0,
                                                                 "points": [1, 0, 0, 0, 0]}]})
    assert is_own(made, 70) and not is_own(made, 71)
    for change in ({"source": "manual"}, {"source": "semi-auto"}):
        assert not is_own(ce.to_model(models.LabeledTrack, {**made.to_dict(), **change}), 70)


# ----------------------------------------------------------------------------- yaml files


@pytest.mark.parametrize("name", ["function.yaml", "function-gpu.yaml"])
def test_function_yaml(name):
    from auralsam2_core.weights import REGISTRY

    path = ROOT / "plugins" / "cvat" / name
    doc = yaml.safe_load(path.read_text())
    meta, spec = doc["metadata"], doc["spec"]
    assert meta["name"] == FUNCTION == config.DEFAULT_FUNCTION_NAME
    ann = meta["annotations"]
    assert ann["type"] == "detector" and ann["framework"] == "pytorch" and ann["name"]
    labels = json.loads(ann["spec"])
    assert [(lb["name"], lb["type"]) for lb in labels] == [("sounding", "mask")]
    attrs = {a["name"]: a for a in labels[0]["attributes"]}
    assert set(attrs) == {"confidence", "review_priority"}
    assert all(a["input_type"] == "number" and a["values"] == ["0", "100", "1"]
               for a in attrs.values())
    # python runtime matching the package, and main:handler importable from the function dir
    assert spec["runtime"] == "python:3.11" and spec["handler"] == "main:handler"
    module, fn = spec["handler"].split(":")
    assert (path.parent / f"{module}.py").is_file()
    assert callable(getattr(main, fn)) and callable(main.init_context)
    # the build installs this package (the wheel deploy.sh builds) with its CVAT extra
    directives = spec["build"]["directives"]
    runs = [d["value"] for phase in ("preCopy", "postCopy") for d in directives[phase]
            if d["kind"] == "RUN"]
    assert any("/opt/nuclio/dist/auralsam2-" in r and "[cvat]" in r for r in runs)
    assert any("sam2==1.1.0" in r for r in runs) and any("torch==2.9.1" in r for r in runs)
    deploy = (ROOT / "manifests" / "cvat" / "deploy.sh").read_text()
    assert "-w plugins/cvat/dist" in deploy and "--path plugins/cvat" in deploy
    assert "plugins/cvat/function.yaml" in deploy and "plugins/cvat/function-gpu.yaml" in deploy
    # timeouts: nuclio never cuts a waiting request; an answer comes within CVAT's timeout
    env = {e["name"]: e["value"] for e in spec["env"]}
    wait = float(env["AURALSAM2_CVAT_FRAME_WAIT"])
    assert float(spec["eventTimeout"].rstrip("s")) > wait + 10
    trigger = spec["triggers"]["myHttpTrigger"]
    queue = trigger["workerAvailabilityTimeoutMilliseconds"] / 1000
    assert queue + wait + 5 <= config.CVAT_DEFAULT_TIMEOUT
    assert trigger["kind"] == "http" and trigger["maxWorkers"] == 1
    assert trigger["attributes"]["maxRequestBodySize"] >= 32 * 2**20
    assert "CVAT_ACCESS_TOKEN" not in env  # secrets are not written into the yaml
    if "gpu" in name:
        assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env["AURALSAM2_DEVICE"] == "cuda"
        for key in ("AURALSAM2_SAM2_CHECKPOINT", "AURALSAM2_FUSER_CHECKPOINT"):
            assert env[key] in REGISTRY
            assert any("auralsam2 download" in r and env[key] in r for r in runs)
    else:
        assert "resources" not in spec and env["AURALSAM2_SAM2_CONFIG"] == "bundled"


# ----------------------------------------------------------------------------- detector path


def test_detector_answers_each_frame_in_cvat_order(emu, platform, clips, reference, capsys,
                                                   caplog):
    task = task_a(emu, clips)
    ref = reference(3, 1, 2, 9)  # the engine starts at the task's first frame, steps by 2
    seen = []
    for frame, status, body in auto_annotation(emu, platform, task):
        assert status == 200, body
        check_answer(task, frame, body, ref[1 + 2 * frame])
        seen.append(frame)
    assert seen == [0, 1, 3, 4]  # the deleted frame is never asked for
    # a job covering part of the task: frames 3..4 of task frames
    emu.add_job(31, task.id, 3, 4)
    answers = list(auto_annotation(emu, platform, task, job_id=31))
    assert [f for f, _, _ in answers] == [3, 4]
    for frame, status, body in answers:
        assert status == 200
        check_answer(task, frame, body, ref[1 + 2 * frame])
    # the original video was fetched once; only the configured host was contacted, always
    # with the token, and the token never appears in any log or answer
    assert len(emu.calls("POST", "/backup/export")) == 1
    assert emu.auth_failures == 0
    logs = capsys.readouterr().out + caplog.text
    assert TOKEN not in logs and "auralsam2" in logs


def test_results_are_cached_per_task(emu, env, clips, reference, monkeypatch):
    from auralsam2_core import remote

    runs = []
    engine = remote.prelabel
    monkeypatch.setattr(remote, "prelabel", lambda *a, **k: runs.append(a) or engine(*a, **k))
    task = task_a(emu, clips)
    for _, status, _ in auto_annotation(emu, Platform(), task):
        assert status == 200
    assert len(runs) == 1 and len(emu.calls("POST", "/backup/export")) == 1
    cache = Path(env["AURALSAM2_CVAT_CACHE"])
    deadline = time.monotonic() + 30  # the results file is written when the engine ends
    while not list(cache.glob("task-7-*/results/results-*.json")):
        assert time.monotonic() < deadline, "no cached results"
        time.sleep(0.05)
    # a new worker (fresh state, same cache) neither downloads nor runs the model again
    ref = reference(3, 1, 2, 9)
    for frame, status, body in auto_annotation(emu, Platform(), task):
        assert status == 200
        check_answer(task, frame, body, ref[1 + 2 * frame])
    assert len(runs) == 1 and len(emu.calls("POST", "/backup/export")) == 1


def test_frames_are_answered_while_the_model_still_runs(emu, env, clips, reference,
                                                       monkeypatch):
    from auralsam2_core import remote

    gate = threading.Event()
    engine = remote.prelabel

    def held_after_one_frame(*args, **kwargs):
        for n, result in enumerate(engine(*args, **kwargs)):
            if n == 1:  # the engine visits media frames 1, 3, ...: hold before frame 3
                gate.wait(60)
            yield result

    monkeypatch.setattr(remote, "prelabel", held_after_one_frame)
    monkeypatch.setenv("AURALSAM2_CVAT_FRAME_WAIT", "1")
    task = task_a(emu, clips)
    platform, ref = Platform(), reference(3, 1, 2, 9)
    emu.start_lambda(FUNCTION, task.id)
    try:
        status, body = call(platform, {"image": task.frame_b64(0)})  # media frame 1: ready
        assert status == 200
        check_answer(task, 0, body, ref[1])
        status, body = call(platform, {"image": task.frame_b64(1)})  # media frame 3: held
        assert status == 503 and "not pre-labelled yet" in body["error"], body
    finally:
        gate.set()
    status, body = call(platform, {"image": task.frame_b64(1)})
    assert status == 200
    check_answer(task, 1, body, ref[3])


def test_two_tasks_annotated_at_once_are_told_apart(emu, platform, clips, reference):
    a, b = task_a(emu, clips), task_b(emu, clips)
    ref_a, ref_b = reference(3, 1, 2, 9), reference(4, 0, 2, 8)
    runs = [(a, auto_annotation(emu, platform, a)), (b, auto_annotation(emu, platform, b))]
    done = {a.id: [], b.id: []}
    while runs:
        for item in list(runs):
            task, run = item
            step = next(run, None)
            if step is None:
                runs.remove(item)
                continue
            frame, status, body = step
            assert status == 200, body
            media = task.start + task.step * frame
            check_answer(task, frame, body, (ref_a if task is a else ref_b)[media])
            done[task.id].append(frame)
    assert done == {7: [0, 1, 3, 4], 9: [0, 1, 2, 3, 4]}


def test_malformed_payloads_get_clear_4xx(emu, platform, clips):
    task = task_a(emu, clips)
    cases = [
        (b"not json{", "not JSON"),
        ([1, 2], "JSON object"),
        ({}, "expected CVAT's detector request"),
        ({"image": ""}, "base64"),
        ({"image": "@@@not-base64@@@"}, "base64"),
        ({"image": "aGVsbG8="}, "not a readable image"),
        ({"image": task.frame_b64(0), "threshold": "high"}, "threshold"),
        ({"task_id": "seven"}, "task_id"),
        ({"task_id": 7, "wait": -1}, "wait"),
        ({"event": "create:task"}, "task"),
    ]
    emu.start_lambda(FUNCTION, task.id)
    for body, words in cases:
        status, answer = call(platform, body)
        assert status == 400, (body, answer)
        assert words in answer["error"], (words, answer)


def test_unidentifiable_and_silent_tasks_are_explained(emu, platform, clips):
    task = task_a(emu, clips)
    # no running Automatic annotation of this function: say so instead of guessing
    emu.start_lambda("some-other-function", task.id)
    status, answer = call(platform, {"image": task.frame_b64(0)})
    assert status == 409 and "no running Automatic annotation" in answer["error"]
    # an image that is no frame of the task being annotated
    emu.start_lambda(FUNCTION, task.id)
    other = ce.EmuTask(99, clips[4])
    status, answer = call(platform, {"image": other.frame_b64(5)})
    assert status == 409 and "matches no frame" in answer["error"], answer
    # a video without audio
    silent = emu.add_task(ce.EmuTask(11, clips["silent"], labels=[LABEL]))
    emu.lambda_requests.clear()
    emu.start_lambda(FUNCTION, silent.id)
    status, answer = call(platform, {"image": silent.frame_b64(0)})
    assert status == 422 and "no audio" in answer["error"], answer
    status, answer = call(platform, {"task_id": silent.id, "wait": 30})
    assert status == 422 and "no audio" in answer["error"]


def test_backup_url_on_another_host_is_refused(emu, platform, clips):
    hits = []

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        emu.result_url_override = f"http://127.0.0.1:{other.server_port}/steal"
        task = task_a(emu, clips)
        emu.start_lambda(FUNCTION, task.id)
        status, answer = call(platform, {"image": task.frame_b64(0)})
    finally:
        other.shutdown()
        other.server_close()
    assert status == 502 and "another host" in answer["error"], answer
    assert hits == []


# ----------------------------------------------------------------------------- task level


def _decoded_track_masks(task, track):
    return {s["frame"]: decode_mask(s["points"], image_width=task.width,
                                    image_height=task.height)
            for s in track["shapes"] if not s["outside"]}


def check_tracks(task, ref, threshold=0.5):
    frames = cvat_frames(task)
    want = {f: expected_answer(ref[task.start + task.step * f], threshold) for f in frames}
    got = {}
    for t in own_tracks(task):
        shapes = t["shapes"]
        assert t["frame"] == shapes[0]["frame"]
        got.update(_decoded_track_masks(task, t))
        if shapes[-1]["outside"]:  # ends on the next frame CVAT shows
            last = shapes[-2]["frame"]
            assert shapes[-1]["frame"] == frames[frames.index(last) + 1]
        assert [a["spec_id"] for a in t["attributes"]] == [72]  # immutable: per track
        assert all([a["spec_id"] for a in s["attributes"]] == [71]
                   for s in shapes if not s["outside"])
    assert set(got) == {f for f, m in want.items() if m is not None}
    for f, mask in got.items():
        assert np.array_equal(mask, want[f]), f"frame {f}"


def annotator_work(task):
    manual_track = {"id": 1, "label_id": 70, "frame": 0, "group": 0, "source": "manual",
                    "attributes": [], "elements": [],
                    "shapes": [{"id": 2, "type": "rectangle", "frame": 0, "points":
                                [1.0, 1.0, 9.0, 9.0], "outside": False, "occluded": False,
                                "z_order": 0, "rotation": 0.0, "attributes": []}]}
    edited = {"id": 3, "label_id": 70, "frame": 1, "group": 0, "source": "semi-auto",
              "attributes": [], "elements": [],
              "shapes": [{"id": 4, "type": "mask", "frame": 1, "points": to_cvat_points(
                  np.eye(task.height, task.width, dtype=bool)), "outside": False,
                          "occluded": False, "z_order": 0, "rotation": 0.0,
                          "attributes": []}]}
    shape = {"id": 5, "type": "polygon", "label_id": 80, "frame": 3, "points":
             [0.0, 0.0, 5.0, 0.0, 5.0, 5.0], "outside": False, "occluded": False,
             "z_order": 0, "rotation": 0.0, "group": 0, "source": "manual",
             "attributes": [], "elements": []}
    task.tracks.extend([manual_track, edited])
    task.shapes.append(shape)
    return json.loads(json.dumps([manual_track, edited, shape]))


def test_task_call_uploads_mask_tracks_and_reruns_replace_only_its_own(emu, platform, clips,
                                                                       reference):
    task = task_a(emu, clips)
    theirs = annotator_work(task)
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 200 and report["state"] == "done", report
    assert report["tracks_created"] == len(own_tracks(task)) >= 1
    check_tracks(task, reference(3, 1, 2, 9))
    first_ids = {t["id"] for t in own_tracks(task)}
    # annotators' annotations untouched
    assert [t for t in task.tracks if t["id"] in (1, 3)] == theirs[:2]
    assert task.shapes == [theirs[2]]
    # a re-run replaces its own tracks, never duplicates them
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 200 and report["tracks_deleted"] == len(first_ids)
    assert len(own_tracks(task)) == len(first_ids)
    assert not first_ids & {t["id"] for t in own_tracks(task)}
    check_tracks(task, reference(3, 1, 2, 9))
    assert [t for t in task.tracks if t["id"] in (1, 3)] == theirs[:2]
    status, snap = call(platform, {"task_id": task.id, "action": "status"})
    assert status == 200 and snap["state"] == "done"


def test_cvat_failing_mid_run_is_retried_or_reported(emu, platform, clips, reference):
    task = task_a(emu, clips)
    # CVAT applies the create but the answer is lost: the upload is redone from a fresh read
    emu.fail("PATCH", r"/annotations", status=500, times=1, after=True)
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 200 and report["state"] == "done", report
    n = report["tracks_created"]
    assert len(own_tracks(task)) == n and len(emu.calls("PATCH", "action=create")) == 2
    check_tracks(task, reference(3, 1, 2, 9))
    # CVAT down for longer than the retries: reported, with CVAT's status
    emu.fail("PATCH", r"/annotations", status=503, times=100)
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 502 and report["state"] == "failed" and "503" in report["error"]
    emu.failures.clear()
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 200 and len(own_tracks(task)) == n  # no duplicates after recovery
    check_tracks(task, reference(3, 1, 2, 9))


def test_webhook_prelabels_a_new_task_once(emu, platform, clips, reference):
    status, body = call(platform, {"event": "ping", "webhook_id": 1})
    assert status == 200 and body["ok"]
    status, body = call(platform, {"event": "update:job", "job": {"id": 3}})
    assert status == 200 and "ignored" in body
    task = task_a(emu, clips)
    payload = {"event": "create:task", "webhook_id": 1, "task": {"id": task.id,
                                                                 "url": "http://evil/"}}
    status, body = call(platform, payload)
    assert status == 202 and body["task_id"] == task.id and body["started"]
    status, report = call(platform, {"task_id": task.id, "action": "status", "wait": 60})
    assert status == 200 and report["state"] == "done", report
    check_tracks(task, reference(3, 1, 2, 9))
    n = len(own_tracks(task))
    status, body = call(platform, {**payload, "event": "update:task"})
    assert status == 200 and "already" in body["ignored"]
    assert len(own_tracks(task)) == n
    assert all(urlpath.startswith("/api/") for _, urlpath in emu.log)


# ----------------------------------------------------------------------------- command


def test_cli_register_and_prelabel(emu, env, clips, reference, capsys):
    parser = argparse.ArgumentParser(prog="auralsam2")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    task = task_a(emu, clips)
    args = parser.parse_args(["cvat", "prelabel", "--url", emu.url, "--task", str(task.id),
                              "--quiet"])
    assert args.command == "cvat" and args.cvat_command == "prelabel" and args.task == [7]
    assert args.func(args) == 0
    out = capsys.readouterr()
    report = json.loads(out.out.strip().splitlines()[-1])
    assert report["state"] == "done" and report["tracks_created"] == len(own_tracks(task))
    check_tracks(task, reference(3, 1, 2, 9))
    assert TOKEN not in out.out + out.err
    with pytest.raises(SystemExit):
        parser.parse_args(["cvat", "prelabel", "--url", emu.url])  # --task is required



def test_cli_prelabel_through_the_shared_service(emu, env, clips, reference, capsys, model,
                                                 monkeypatch, tmp_path):
    """AURALSAM2_SERVER_URL set: the function loads no model, the service runs the video, and
    the tracks are those of the in-process run."""
    try:
        from . import service_env as se
    except ImportError:
        import service_env as se

    with se.ServiceThread(tmp_path / "service", [tmp_path / "cache"], model=model) as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        model_env.load_served_model.cache_clear()
        parser = argparse.ArgumentParser(prog="auralsam2")
        register(parser.add_subparsers(dest="command", required=True))
        task = task_a(emu, clips)
        args = parser.parse_args(["cvat", "prelabel", "--url", emu.url, "--task",
                                  str(task.id), "--quiet"])
        assert args.func(args) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["state"] == "done"
        check_tracks(task, reference(3, 1, 2, 9))
        assert model_env.load_served_model.cache_info().currsize == 0  # no model here
        assert srv.service.counters["done"] == 1
