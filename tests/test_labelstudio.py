"""The Label Studio ML backend (plugins/label_studio) against a real Label Studio 1.23.2.

One Label Studio server (SQLite, 127.0.0.1) runs for the module; media are generated clips
uploaded to it, so the backend fetches them the way it does in production. The protocol is
exercised through Starlette's test client with the JSON Label Studio sends; the end-to-end
tests connect the backend (uvicorn on a free port) and drive Label Studio's own API: retrieve
predictions, interactive annotating, annotation webhooks and "Start training".

The model is the bundled demo model (real weights, masks that follow the sound).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import subprocess
import threading
import time

import numpy as np
import pytest

from helpers import label_studio_server as lss
from helpers import service_env as se

pytestmark = pytest.mark.skipif(not lss.available(), reason="needs .venv-labelstudio "
                                "(scripts/setup.d/40-labelstudio.sh) and ffmpeg")

starlette_testclient = pytest.importorskip("starlette.testclient")
uvicorn = pytest.importorskip("uvicorn")

from auralsam2_core.inference import rle  # noqa: E402
from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.inference.results import Hysteresis, sounding_intervals  # noqa: E402
from auralsam2_core.inference.results import track as sounding_track  # noqa: E402
from auralsam2_core.model_spec import ModelSpec  # noqa: E402
from auralsam2_core.modeling.model import PointPrompt  # noqa: E402
from auralsam2_core.serving.engines import RemoteEngine  # noqa: E402
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402
from auralsam2_plugins.label_studio import brush  # noqa: E402
from auralsam2_plugins.label_studio import predictions as P  # noqa: E402
from auralsam2_plugins.label_studio.app import create_app  # noqa: E402
from auralsam2_plugins.label_studio.backend import Backend  # noqa: E402
from auralsam2_plugins.label_studio.config import LabelStudioBackendSettings  # noqa: E402
from auralsam2_plugins.label_studio.labelconfig import LabelConfigError, parse  # noqa: E402
from auralsam2_plugins.label_studio.prelabel import prelabel_project  # noqa: E402

VIDEO_CONFIG, KEYFRAME_CONFIG = lss.VIDEO_CONFIG, lss.KEYFRAME_CONFIG  # the templates
FPS = 25.0  # = the template's framerate, so Label Studio frame = engine index + 1
BASIC = ("label-studio", "basic-auth-pass-for-tests")  # the backend's HTTP Basic credentials
BOX_LABEL, RANGE_LABEL = "Sounding object (box)", "Sound on (time range)"  # the template's


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    return lss.shared_server(tmp_path_factory.getbasetemp() / "label-studio")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("ls-media")
    clip = make_clip(3, size=(96, 128), fps=FPS, seconds=1.6, num_objects=2, schedule="mixed")
    silent = make_clip(4, size=(96, 128), fps=FPS, seconds=0.8, num_objects=2)
    return {"clip": write_clip(clip, d / "sounding clip.mp4"),
            "no_audio": write_clip(silent, d / "no_audio.mp4", audio=False), "dir": d}


@pytest.fixture(scope="module")
def model(bundled_model):
    return bundled_model


@pytest.fixture(scope="module")
def engine(model, media):
    """The engine's own frames for the clip (what every prediction must equal)."""
    return list(prelabel(model, media["clip"], PrelabelOptions()))


@pytest.fixture(scope="module")
def project(ls, media):
    p = ls.create_project("sounding objects", VIDEO_CONFIG)
    [task_id] = ls.upload(p["id"], media["clip"])
    [silent_id] = ls.upload(p["id"], media["no_audio"])
    return {"id": p["id"], "task": task_id, "silent": silent_id}


def make_backend(ls, tmp_path, model, **kw) -> Backend:
    settings = LabelStudioBackendSettings(url=ls.url, api_key=lss.TOKEN, work_dir=tmp_path / "work",
                                          **kw)
    return Backend(settings, ModelSpec(), model=model)


def ls_task(ls, task_id: int) -> dict:
    return ls.api("GET", f"/api/tasks/{task_id}")


def predict_body(tasks: list[dict], config: str = VIDEO_CONFIG, context=None) -> dict:
    # What Label Studio 1.23 posts to /predict (ml/api_connector.py).
    return {"tasks": tasks, "project": "1.1764201600", "label_config": config,
            "params": {"login": None, "password": None, "context": context}}


def expected_boxes(engine_frames, threshold=0.5) -> dict[int, tuple]:
    intervals = sounding_intervals([{"index": r.index, "time": r.time,
                                     "sounding_prob": r.sounding_prob}
                                    for r in engine_frames], FPS, Hysteresis())
    out = {}
    for iv in intervals:
        for r in engine_frames[iv["start_frame"]:iv["end_frame"] + 1]:
            b = P.mask_box(r.mask)
            if r.sounding_prob >= threshold and b is not None:
                out[r.index + 1] = b
    return out, intervals


def check_video_prediction(result: list[dict], engine_frames, tolerance: float) -> None:
    boxes, intervals = expected_boxes(engine_frames)
    assert intervals, "the test clip should sound somewhere"
    track = [r for r in result if r["type"] == "videorectangle"]
    ranges = [r for r in result if r["type"] == "timelinelabels"]
    assert len(track) == 1 and track[0]["from_name"] == "box" and \
        track[0]["to_name"] == "video" and track[0]["value"]["labels"] == [BOX_LABEL]
    seq = track[0]["value"]["sequence"]
    assert track[0]["value"]["framesCount"] == len(engine_frames)
    frames = [s["frame"] for s in seq]
    assert frames == sorted(frames) and set(frames) <= set(boxes)
    for s in seq:  # keyframes are the engine's boxes, at 1-based frames
        assert (s["x"], s["y"], s["width"], s["height"]) == pytest.approx(boxes[s["frame"]],
                                                                           abs=1e-3)
    for f, b in boxes.items():  # every other frame interpolates within the tolerance
        got = box_at(seq, f)
        assert got is not None and max(abs(p - q) for p, q in zip(got, b, strict=True)) \
            <= tolerance + 1e-3
    assert [(r["value"]["ranges"][0]["start"], r["value"]["ranges"][0]["end"])
            for r in ranges] == [(iv["start_frame"] + 1, iv["end_frame"] + 1)
                                 for iv in intervals]
    ends = {iv["end_frame"] + 1 for iv in intervals}
    assert all(s["enabled"] == (s["frame"] not in ends) for s in seq)


def box_at(seq, frame):
    """The box Label Studio's editor shows on ``frame`` (training.box_track's rules)."""
    from auralsam2_plugins.label_studio.training import box_track

    return box_track([{"type": "videorectangle", "value": {"sequence": seq}}]).get(frame)


# --------------------------------------------------------------------------- formats


def test_brush_rle_equals_label_studio_sdk(tmp_path):
    rng = np.random.default_rng(0)
    masks = [np.zeros((7, 9), bool), np.ones((5, 4), bool), rng.random((33, 47)) > 0.5,
             np.pad(np.ones((300, 290), bool), ((10, 30), (5, 400)))]
    (tmp_path / "masks.json").write_text(json.dumps([m.astype(int).tolist() for m in masks]))
    script = ("import json, sys, numpy as np\n"
              "from label_studio_sdk.converter.brush import mask2rle, decode_rle\n"
              "ms = json.load(open(sys.argv[1]))\n"
              "print(json.dumps([mask2rle((np.array(m) * 255).astype(np.uint8)) for m in ms]))\n")
    out = subprocess.run([str(lss.LS_VENV / "bin" / "python"), "-c", script,
                          str(tmp_path / "masks.json")], capture_output=True, text=True,
                         check=True)
    theirs = json.loads(out.stdout)
    for m, ref in zip(masks, theirs, strict=True):
        ours = brush.encode(m)
        assert ours == ref  # byte for byte what Label Studio's own encoder writes
        assert np.array_equal(brush.decode(ours, *m.shape), m)
    with pytest.raises(ValueError, match="2-D"):
        brush.encode(np.zeros((2, 2, 2)))


def test_label_configs():
    video = parse(VIDEO_CONFIG)
    assert (video.video_box.name, video.video_box.to_name, video.video_box.labels) == \
        ("box", "video", (BOX_LABEL,))
    assert video.timeline.name == "sounding" and video.framerate == 25.0 and not video.brush
    key = parse(KEYFRAME_CONFIG)
    assert key.brush.data_key == "image" and key.audio_key == "video" and not key.video_box
    for bad in ("<View><Text name='t' value='$text'/></View>", "<View", ""):
        with pytest.raises(LabelConfigError):
            parse(bad)
    with pytest.raises(LabelConfigError, match="Dog"):
        video.video_box.label("Dog")


def _greedy_keyframes(boxes, tolerance):
    """The keyframe rule box by box, as its definition reads (P.keyframes checks all of a
    kept box's candidates at once)."""
    if len(boxes) <= 2 or tolerance <= 0:
        return list(boxes)
    kept, i = [boxes[0]], 0
    while i < len(boxes) - 1:
        j = i + 1
        while j + 1 < len(boxes) and j + 1 - i <= P.MAX_KEYFRAME_GAP:
            (fa, a), (fc, c) = boxes[i], boxes[j + 1]
            if all(max(abs(x + (f - fa) / (fc - fa) * (y - x) - q)
                       for x, y, q in zip(a, c, b, strict=True)) <= tolerance
                   for f, b in boxes[i + 1:j + 1]):
                j += 1
            else:
                break
        kept.append(boxes[j])
        i = j
    return kept


def test_keyframes_and_boxes_equal_their_definitions():
    """Keyframes of straight, jittering, jumping and gappy tracks longer than the keyframe
    gap, and boxes from RLE runs (no decoding, remembered): exactly the definitions'."""
    rng = np.random.default_rng(0)
    for case in range(60):
        n = int(rng.choice([0, 1, 2, 3, 7, 150, 300]))
        frames = np.cumsum(rng.choice([1, 1, 1, 2, 5], n)) + 1
        step = rng.choice([0.0, 0.3]) + rng.uniform(-1, 1, (n, 4)) * rng.choice([0, 0.3, 1])
        step[rng.random(n) < 0.03] += 10  # jumps
        track = 20 + np.cumsum(step, axis=0)
        boxes = [(int(f), tuple(float(v) for v in b)) for f, b in zip(frames, track, strict=True)]
        for tolerance in (0.0, 0.25, 0.5, 2.0):
            assert P.keyframes(boxes, tolerance) == _greedy_keyframes(boxes, tolerance), case
    still = [(f, (10.0, 10.0, 5.0, 5.0)) for f in range(1, 301)]  # kept every MAX_KEYFRAME_GAP
    assert [f for f, _ in P.keyframes(still, 0.5)] == [1, 121, 241, 300]
    assert P.keyframes(still, 0.5) == _greedy_keyframes(still, 0.5)
    for case in range(80):
        h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        mask = rng.random((h, w)) < rng.choice([0.0, 0.01, 0.3])
        if case % 3 == 0:  # a block, often wrapping column to column in RLE order
            mask[rng.integers(h):, rng.integers(w):rng.integers(w) + 2] = True
        encoded = rle.encode(mask)
        assert P.rle_box(encoded) == P.mask_box(mask), case
        assert P.rle_box(rle.encode(mask)) == P.mask_box(mask)  # remembered: the same


def test_keyframes_and_label_studio_frame_numbers():
    line = [(f, (f * 1.0, 10.0, 20.0, 20.0)) for f in range(1, 11)]  # moves linearly
    assert P.keyframes(line, 0.5) == [line[0], line[-1]]
    jump = line[:5] + [(6, (40.0, 10.0, 20.0, 20.0))] + line[6:]
    kept = [f for f, _ in P.keyframes(jump, 0.5)]
    assert 6 in kept and kept[0] == 1 and kept[-1] == 10
    assert P.keyframes(line, 0) == line
    # A 10 fps file in a project whose <Video framerate="25">: Label Studio seeks frame f to
    # (f - 1) / 25 + 0.002 s, so frame 3 (t = 0.3 s) is first on screen at Label Studio frame
    # 9 (0.322 s; frame 8 is 0.282 s), and frames 1-3 show file frame 0.
    assert P.ls_frame(0.3, 25.0) == 9 and P.ls_frame(0.0, 25.0) == 1
    times = [i / 10 for i in range(10)]
    assert P.shown_frames(times, 25.0, 25)[:10] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert P.ls_frame_count(1.0, 25.0) == 25


# --------------------------------------------------------------------------- protocol


def test_health_and_setup_answer_without_loading_the_model(tmp_path):
    b = Backend(LabelStudioBackendSettings(work_dir=tmp_path), ModelSpec())
    client = starlette_testclient.TestClient(create_app(b))
    t0 = time.perf_counter()
    h = client.get("/health").json()
    s = client.post("/setup", json={"project": "1.17", "schema": VIDEO_CONFIG,
                                    "hostname": "http://x", "access_token": "t",
                                    "extra_params": None}).json()
    assert time.perf_counter() - t0 < 3.0  # Label Studio gives /setup 3 s
    assert h["status"] == "UP" and not h["model_loaded"]
    assert s["model_version"] == h["model_version"].strip() and \
        s["model_version"].startswith("auralsam2-bundled-")
    bad = client.post("/setup", json={"schema": "<View><Text name='a' value='$a'/></View>"})
    assert bad.status_code == 400 and "nothing for AuralSAM2" in bad.json()["message"]
    assert client.post("/predict", content=b"{nope").status_code == 400
    assert client.post("/predict", json={"tasks": "x", "label_config": VIDEO_CONFIG}
                       ).status_code == 400
    big = client.post("/predict", content=b"x" * (17 << 20))
    assert big.status_code == 413
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).json()["status"] == \
        "ignored"


def test_predict_video_task_equals_the_engine(ls, project, tmp_path, model, engine):
    b = make_backend(ls, tmp_path, model)
    client = starlette_testclient.TestClient(create_app(b))
    task = ls_task(ls, project["task"])
    assert task["data"]["video"].startswith("/data/upload/")
    out = client.post("/predict", json=predict_body([task])).json()
    [pred] = out["results"]
    assert pred["model_version"] == b.model_version()
    check_video_prediction(pred["result"], engine, b.settings.keyframe_tolerance)
    assert 0.0 <= pred["score"] <= 1.0
    # Every frame as a keyframe when the tolerance is 0.
    exact = make_backend(ls, tmp_path / "exact", model, keyframe_tolerance=0.0)
    res = exact.predict(predict_body([task]))["results"][0]["result"]
    boxes, _ = expected_boxes(engine)
    assert [s["frame"] for s in res[0]["value"]["sequence"]] == sorted(boxes)
    # Cached: a second call does not run the model again.
    calls = b.stats["predicted"]
    before = b.seconds_per_frame
    again = client.post("/predict", json=predict_body([task])).json()["results"][0]
    assert again["result"] == pred["result"] and b.stats["predicted"] == calls + 1
    assert b.seconds_per_frame == before


def test_bad_tasks_get_a_clear_error_and_no_prediction(ls, project, tmp_path, model, caplog):
    b = make_backend(ls, tmp_path, model)
    good = ls_task(ls, project["task"])
    tasks = [
        {"id": 901, "data": {"video": f"/data/upload/{project['id']}/missing.mp4"}},
        ls_task(ls, project["silent"]),  # a video without audio
        {"id": 902, "data": {"video": "http://169.254.169.254/latest/x.mp4"}},  # SSRF
        {"id": 903, "data": {"video": "file:///etc/passwd"}},
        {"id": 904, "data": {"image": "/x.png"}},  # no video key
        good,
    ]
    caplog.set_level(logging.INFO)
    out = b.predict(predict_body(tasks))["results"]
    assert len(out) == len(tasks)
    assert all("result" not in r for r in out[:-1]) and "result" in out[-1]
    msgs = [r["error"] for r in out[:-1]]
    assert "could not serve the media" in msgs[0] and "missing.mp4" in msgs[0]
    assert "no audio" in msgs[1]
    assert "not Label Studio" in msgs[2] and "arbitrary URLs" in msgs[2]
    assert "scheme 'file'" in msgs[3]
    assert "no 'video'" in msgs[4]
    assert lss.TOKEN not in caplog.text and lss.TOKEN not in json.dumps(out)
    # Label Studio unreachable: an error per task, not a crash.
    down = Backend(LabelStudioBackendSettings(url=f"http://127.0.0.1:{se.free_port()}",
                                              api_key=lss.TOKEN, work_dir=tmp_path / "down"),
                   ModelSpec(), model=model)
    [r] = down.predict(predict_body([good]))["results"]
    assert "unreachable" in r["error"] and "result" not in r
    # Wrong key: Label Studio's 401, said plainly, key not echoed.
    wrong = Backend(LabelStudioBackendSettings(url=ls.url, api_key="not-the-key",
                                               work_dir=tmp_path / "w"),
                    ModelSpec(), model=model)
    [r] = wrong.predict(predict_body([good]))["results"]
    assert "401" in r["error"] and "not-the-key" not in r["error"]
    # Nothing was computed or stored for the failed tasks.
    assert not list((tmp_path / "work" / "results").glob("*/task-90*"))


def test_task_links_never_reach_label_studio_api(ls, project, tmp_path, model):
    """A task whose video is an API path ("/api/projects", the same on Label Studio's host or
    rewritten from a foreign one, or hidden behind dot segments) made the backend fetch it
    with its key and keep the answer in its media folder. Only media paths are fetched."""
    b = make_backend(ls, tmp_path, model)
    links = ["/api/projects", f"{ls.url}/api/projects", "/api/current-user/whoami",
             "http://label-studio.example.com/api/projects",
             "http://label-studio.example.com/data/upload/../../api/projects",
             "/data/upload/%2e%2e/%2e%2e/api/projects", f"/tasks/{project['task']}/annotations/"]
    tasks = [{"id": project["task"], "data": {"video": link}} for link in links]
    out = b.predict(predict_body(tasks))["results"]
    for link, r in zip(links, out, strict=True):
        assert "result" not in r and ("not a Label Studio media link" in r["error"] or
                                      "not Label Studio" in r["error"]), (link, r)
    assert not list((b.work / "media").glob("*"))  # nothing was fetched or kept
    # The task's real upload still is.
    [r] = b.predict(predict_body([ls_task(ls, project["task"])]))["results"]
    assert r["result"]


def test_long_video_is_finished_in_the_background(ls, project, tmp_path, model, engine):
    b = make_backend(ls, tmp_path, model, predict_budget=0.001)
    task = ls_task(ls, project["task"])
    [r] = b.predict(predict_body([task]))["results"]
    assert "background" in r["error"] and "auralsam2 labelstudio prelabel" in r["error"]
    deadline = time.monotonic() + 120
    while b.jobs()["queued"] and time.monotonic() < deadline:
        time.sleep(0.2)
    [r] = b.predict(predict_body([task]))["results"]  # now served from the cache
    check_video_prediction(r["result"], engine, b.settings.keyframe_tolerance)


def test_refinement_with_a_box_repropagates(ls, project, tmp_path, model, media, engine,
                                           monkeypatch):
    b = make_backend(ls, tmp_path, model, keyframe_tolerance=0.0, refine_frames=10)
    task = ls_task(ls, project["task"])
    b.predict(predict_body([task]))  # the first pass keeps its clips' features
    assert len(b.features) == 8  # 40 frames, T = 5
    encoded = []
    encode = type(model).encode_images
    monkeypatch.setattr(type(model), "encode_images",
                        lambda self, x: encoded.append(len(x)) or encode(self, x))
    # The annotator draws a box on frame 8 (mid-clip) around the lower-right quarter.
    ctx = {"result": [{"type": "videorectangle", "from_name": "box", "to_name": "video",
                       "value": {"sequence": [{"frame": 8, "x": 50, "y": 50, "width": 50,
                                               "height": 50, "enabled": True}]}}]}
    [r] = b.predict(predict_body([task], context=ctx))["results"]
    assert encoded == []  # only SAM2's tracking ran: the features came from the first pass
    assert b.metrics()["refine_cache_hits"] == 3  # clips 5-9, 10-14 and 15-19
    # The fuser's clips stay those of the first pass (from frame 0), whatever frame is clicked.
    refined = list(prelabel(model, media["clip"], PrelabelOptions(
        start_frame=7, stop_frame=17, clip_origin=0), prompts={7: PointPrompt.box(64, 48, 128,
                                                                                96)}))
    assert [x.index for x in refined] == list(range(7, 17))
    merged = engine[:7] + refined + engine[17:]
    check_video_prediction(r["result"], merged, 0.0)
    assert any(not np.array_equal(a.mask, e.mask) for a, e in zip(refined, engine[7:17],
                                                                  strict=True))
    # AURALSAM2_LS_REFINE_FRAMES=1: the click re-labels its own frame only (from the cache;
    # its label is the first frame of the 10-frame refinement's, bit for bit).
    b.settings = dataclasses.replace(b.settings, refine_frames=1)
    encoded.clear()
    [own] = b.predict(predict_body([task], context=ctx))["results"]
    assert encoded == []
    check_video_prediction(own["result"], engine[:7] + refined[:1] + engine[8:], 0.0)
    for bad_env in ("0", "-3", "2.5", "many"):
        with pytest.raises(ValueError, match="AURALSAM2_LS_REFINE_FRAMES"):
            LabelStudioBackendSettings.from_env({"AURALSAM2_LS_REFINE_FRAMES": bad_env})
    assert LabelStudioBackendSettings.from_env(
        {"AURALSAM2_LS_REFINE_FRAMES": "1"}).refine_frames == 1
    # Without the cache (AURALSAM2_REFINE_CACHE_MB=0) the features are computed: same answer.
    nocache = make_backend(ls, tmp_path / "nocache", model, keyframe_tolerance=0.0,
                           refine_frames=10, refine_cache_mb=0)
    nocache.predict(predict_body([task]))
    encoded.clear()
    [again] = nocache.predict(predict_body([task], context=ctx))["results"]
    assert encoded == [5, 5, 5] and again["result"] == r["result"]
    bad = {"result": [{"type": "videorectangle", "value": {"sequence": []}}]}
    [r] = b.predict(predict_body([task], context=bad))["results"]
    assert "needs a box" in r["error"]
    # Malformed or oversized contexts: the task gets the reason, never a 500 (they were
    # KeyErrors / TypeErrors, and any number of clicks reached SAM2's prompt encoder).
    from auralsam2_core.modeling.model import MAX_PROMPT_POINTS

    click = {"type": "keypointlabels", "value": {"x": 10.0, "y": 10.0}}
    seq = {"frame": 6, "x": 50, "y": 50, "width": 50, "height": 50}
    for result, reason in [
            ([{"type": "videorectangle", "value": {"sequence": [seq]}}]
             + [click] * MAX_PROMPT_POINTS, f"at most {MAX_PROMPT_POINTS} points"),
            ([{"type": "videorectangle", "value": {"sequence": [{**seq, "x": "a"}]}}],
             "the box.x must be a finite number"),
            ([{"type": "videorectangle", "value": {"sequence": [{**seq, "frame": 1.5}]}}],
             "1-based 'frame'"),
            ([{"type": "videorectangle", "value": {"sequence": [{"frame": 6}]}}],
             "the box.x must be a finite number"),
            ([{"type": "videorectangle", "value": {"sequence": "x"}}], "'sequence'"),
            ([{"type": "keypointlabels", "value": {"x": None}}], "keypoint's x")]:
        [r] = b.predict(predict_body([task], context={"result": result}))["results"]
        assert reason in r["error"] and "result" not in r, (reason, r)


def test_keyframe_image_task_gets_a_brush_mask(ls, tmp_path, model, media, engine):
    from PIL import Image

    p = ls.create_project("keyframes", KEYFRAME_CONFIG)
    k = next(r.index for r in engine if r.sounding_prob >= 0.5 and r.mask.any())
    frame_png = media["dir"] / "keyframe.png"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media["clip"]), "-vf",
                    f"select=eq(n\\,{k}),scale=256:192", "-frames:v", "1", str(frame_png)],
                   check=True)
    # Direct upload only fills one data key: upload the files through a one-key project,
    # then import the keyframe task as JSON (as users do with storages).
    files = ls.create_project("files", VIDEO_CONFIG)
    [vid] = ls.upload(files["id"], media["clip"])
    video_url = ls_task(ls, vid)["data"]["video"]
    [img] = ls.upload(files["id"], frame_png)
    image_url = ls_task(ls, img)["data"]["video"]
    [tid] = ls.import_tasks(p["id"], [{"data": {"image": image_url, "video": video_url,
                                                "frame": k + 1}}])
    task = ls_task(ls, tid)
    b = make_backend(ls, tmp_path, model)
    [r] = b.predict(predict_body([task], config=KEYFRAME_CONFIG))["results"]
    [region] = r["result"]
    assert region["type"] == "brushlabels" and region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"]) == (256, 192)
    got = brush.decode(region["value"]["rle"], 192, 256)
    # The keyframe run restarts SAM2's memory 8 or more frames before, at the start of one of
    # the whole video's clips, and runs whole clips: compare with that run.
    origin = max(0, (k - 8) // 5 * 5)
    ref = list(prelabel(model, media["clip"], PrelabelOptions(
        start_frame=origin, stop_frame=k + 1, clip_origin=0)))[-1]
    assert ref.index == k
    want = np.asarray(Image.fromarray(ref.mask).resize((256, 192), Image.NEAREST))
    assert np.array_equal(got, want)
    # A click on the keyframe (Label Studio's smart keypoint, percent of the image): the
    # frame is re-run with that point plus the audio; the mask is that run's.
    click = {"result": [{"type": "keypointlabels", "from_name": "kp", "to_name": "image",
                         "original_width": 256, "original_height": 192, "is_positive": True,
                         "value": {"x": 25.0, "y": 50.0, "width": 1.0,
                                   "keypointlabels": ["Sounding"]}}]}
    # Its fuser clip is the one the first pass kept: the click runs SAM2's tracking only.
    before = b.features.stats()
    [r] = b.predict(predict_body([task], config=KEYFRAME_CONFIG, context=click))["results"]
    after = b.features.stats()
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    ref = list(prelabel(model, media["clip"], PrelabelOptions(start_frame=k, stop_frame=k + 1,
                                                              clip_origin=0),
                        prompts={k: PointPrompt(((32.0, 48.0),), (1,))}))[0]  # 128 x 96 video
    want = np.asarray(Image.fromarray(ref.mask).resize((256, 192), Image.NEAREST))
    got = brush.decode(r["result"][0]["value"]["rle"], 192, 256) if r["result"] else \
        np.zeros((192, 256), bool)
    assert np.array_equal(got, want) and r["score"] == round(
        ref.sounding_prob * ref.predicted_iou if ref.sounding_prob >= 0.5 else
        1 - ref.sounding_prob, 4)  # the model's confidence (predictions.frame_confidence)
    [r] = b.predict(predict_body([{"id": 778, "data": {"image": image_url}}],
                                 config=KEYFRAME_CONFIG))["results"]
    assert "needs 'video'" in r["error"]


# --------------------------------------------------------------------------- end to end


def wait_for(cond, timeout=300.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_end_to_end_with_label_studio(ls, media, tmp_path, model, engine):
    p = ls.create_project("e2e", VIDEO_CONFIG)
    [tid] = ls.upload(p["id"], media["clip"])
    [silent] = ls.upload(p["id"], media["no_audio"])
    human = [{"id": "human1", "from_name": "sounding", "to_name": "video",
              "type": "timelinelabels", "origin": "manual",
              "value": {"ranges": [{"start": 2, "end": 9}], "timelinelabels": [RANGE_LABEL]}}]
    ann = ls.api("POST", f"/api/tasks/{tid}/annotations/", json={"result": human})
    from auralsam2_core.modeling.build import build_auralsam2

    own = build_auralsam2("bundled", device="cpu")  # fine-tuning changes it: not shared
    b = make_backend(ls, tmp_path, own, train_steps=3, basic_auth_user=BASIC[0],
                     basic_auth_pass=BASIC[1])
    with se.UvicornThread(create_app(b)) as srv:  # as `auralsam2 labelstudio serve` runs it
        connect = {"url": srv.url, "project": p["id"], "title": "AuralSAM2",
                   "is_interactive": True}
        # Without the credentials (or with wrong ones) Label Studio's own check fails.
        for auth in ({}, {"auth_method": "BASIC_AUTH", "basic_auth_user": BASIC[0],
                          "basic_auth_pass": "wrong"}):
            r = ls.http.post(f"{ls.url}/api/ml/", json={**connect, **auth}, timeout=60)
            assert r.status_code == 400 and "authentication" in r.text, r.text
        # Settings -> Model -> "Use basic authentication", as ml/api.py takes it.
        ml = ls.api("POST", "/api/ml/", json={**connect, "auth_method": "BASIC_AUTH",
                                              "basic_auth_user": BASIC[0],
                                              "basic_auth_pass": BASIC[1]})
        assert ml["state"] in ("CO", "CONNECTED"), ml
        assert ml["model_version"] == b.model_version()
        # The webhook Label Studio made for the backend (ml/models.py create_ml_webhook)
        # carries no credentials: give it the header (Settings -> Webhooks), as README says.
        [hook] = [h for h in ls.api("GET", "/api/webhooks/", params={"project": p["id"]})
                  if h["url"] == f"{srv.url}/webhook"]
        token = base64.b64encode(f"{BASIC[0]}:{BASIC[1]}".encode()).decode()
        ls.api("PATCH", f"/api/webhooks/{hook['id']}/",
               json={"headers": {"Authorization": f"Basic {token}"}})
        # Anyone else gets 401, and nothing runs.
        import requests

        anon = requests.post(f"{srv.url}/predict", json=predict_body([ls_task(ls, tid)]),
                             timeout=30)
        assert anon.status_code == 401
        anon = requests.post(f"{srv.url}/webhook", timeout=30, json={
            "action": "START_TRAINING", "project": {"id": p["id"]}})
        assert anon.status_code == 401 and b.finetune.snapshot() is None
        done = ls.api("POST", f"/api/dm/actions/?id=retrieve_tasks_predictions&project={p['id']}",
                      json={"selectedItems": {"all": False, "included": [tid, silent]}})
        assert done is not None
        [pred] = ls.predictions(tid)
        assert pred["model_version"] == b.model_version()
        check_video_prediction(pred["result"], engine, b.settings.keyframe_tolerance)
        assert ls.predictions(silent) == []  # no audio: nothing stored
        # The annotator's annotation is untouched.
        [kept] = ls.api("GET", f"/api/tasks/{tid}/annotations/")
        assert kept["id"] == ann["id"] and kept["result"] == ann["result"]
        # Interactive: a box on frame 4 -> the backend answers with re-propagated results.
        ctx = {"result": [{"type": "videorectangle", "from_name": "box", "to_name": "video",
                           "value": {"sequence": [{"frame": 4, "x": 0, "y": 0, "width": 60,
                                                   "height": 60, "enabled": True}]}}]}
        inter = ls.api("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                       json={"task": tid, "context": ctx})
        assert "data" in inter and inter["data"]["result"], inter
        assert len(ls.predictions(tid)) == 1  # interactive answers are not stored
        # Training: the annotation webhooks reach the backend, "Start training" fine-tunes.
        ls.api("PATCH", f"/api/annotations/{ann['id']}/", json={"result": human})
        wait_for(lambda: list((b.work / "finetune" / "annotations").glob("*/task-*.json")),
                 30, "the annotation webhook")
        before = b.model_version()
        ls.api("POST", f"/api/ml/{ml['id']}/train")
        wait_for(lambda: (b.finetune.snapshot() or {}).get("state") in ("done", "failed"),
                 600, "fine-tuning")
        assert b.finetune.snapshot()["state"] == "done", b.finetune.snapshot()
        assert b.model_version() == before + "-ft1"
        assert ls.api("GET", f"/api/ml/{ml['id']}")["model_version"] == before + "-ft1"
        assert any((a != c).any() for a, c in zip(own.fuser.state_dict().values(),
                                                  model.fuser.state_dict().values(),
                                                  strict=True))  # the live fuser changed
    # The fine-tuned version survives a restart of the backend.
    again = Backend(b.settings, ModelSpec())
    assert again.model_version() == before + "-ft1"


def test_prelabel_command_imports_every_task_once(ls, media, tmp_path, model, engine):
    p = ls.create_project("batch", VIDEO_CONFIG)
    [tid] = ls.upload(p["id"], media["clip"])
    [silent] = ls.upload(p["id"], media["no_audio"])
    b = make_backend(ls, tmp_path, model)
    report = prelabel_project(b, p["id"], progress=False)
    assert (report["created"], report["failed"], report["skipped"]) == (1, 1, 0)
    assert "no audio" in report["errors"][str(silent)]
    [pred] = ls.predictions(tid)
    check_video_prediction(pred["result"], engine, b.settings.keyframe_tolerance)
    assert ls.api("GET", f"/api/projects/{p['id']}")["model_version"] == b.model_version()
    again = prelabel_project(b, p["id"], progress=False)  # resumable: nothing redone
    assert (again["created"], again["skipped"]) == (0, 1)
    assert len(ls.predictions(tid)) == 1
    assert rle.decode(next(iter(sounding_track(b.cached(
        f"task-{tid}-" + __import__("hashlib").sha1(
            ls_task(ls, tid)["data"]["video"].encode()).hexdigest()[:8]))["frames"]))["mask"]
    ).shape == (96, 128)


def test_backend_through_the_shared_service(ls, project, tmp_path, model, engine):
    """With the shared service the backend loads no model and predicts the same."""
    work = tmp_path / "work"
    work.mkdir()
    task = ls_task(ls, project["task"])
    mine = make_backend(ls, tmp_path / "local", model)
    local = mine.predict(predict_body([task]))
    # A refinement from a box on frame 8: the service keeps the first pass's clips too
    # (clip_origin travels in the wire options), so it answers as the local model does.
    ctx = {"result": [{"type": "videorectangle", "from_name": "box", "to_name": "video",
                       "value": {"sequence": [{"frame": 8, "x": 50, "y": 50, "width": 50,
                                               "height": 50, "enabled": True}]}}]}
    [refined] = mine.predict(predict_body([task], context=ctx))["results"]
    with se.ServiceThread(tmp_path / "service", [work], model=model) as srv:
        b = Backend(LabelStudioBackendSettings(url=ls.url, api_key=lss.TOKEN, work_dir=work),
                    ModelSpec(), remote=srv.engine())
        out = b.predict(predict_body([task]))
        assert out["results"][0]["result"] == local["results"][0]["result"]
        assert out["model_version"] == local["model_version"] == srv.service.model_version()
        check_video_prediction(out["results"][0]["result"], engine,
                               b.settings.keyframe_tolerance)
        assert isinstance(b.engine, RemoteEngine) and not b.engine.loaded
        assert srv.service.counters["done"] == 1
        [r] = b.predict(predict_body([task], context=ctx))["results"]
        assert r["result"] == refined["result"] and srv.service.counters["done"] == 2
        assert srv.service.jobs[max(srv.service.jobs, key=lambda j: srv.service.jobs[j]
                                    .created)].options["clip_origin"] == 0
        with pytest.raises(Exception, match="fine-tuning runs where the model is"):
            b.webhook({"action": "START_TRAINING", "project": {"id": project["id"]}})


def test_local_files_storage_and_cloud_links(ls, tmp_path, model, media, engine):
    """Tasks from a local-files storage are fetched through Label Studio; cloud links go
    through Label Studio's presign endpoint; a redirect off the allowed hosts is refused."""
    import shutil

    folder = ls.files_root / "local-videos"
    folder.mkdir(exist_ok=True)
    shutil.copy(media["clip"], folder / "clip.mp4")
    p = ls.create_project("local files", VIDEO_CONFIG)
    st = ls.api("POST", "/api/storages/localfiles/", json={
        "project": p["id"], "path": str(folder), "regex_filter": r".*\.mp4",
        "use_blob_urls": True, "title": "videos"})
    ls.api("POST", f"/api/storages/localfiles/{st['id']}/sync")
    [task] = ls.tasks(p["id"])
    assert "/data/local-files/?d=local-videos/clip.mp4" in task["data"]["video"]
    b = make_backend(ls, tmp_path, model)
    [r] = b.predict(predict_body([task]))["results"]
    check_video_prediction(r["result"], engine, b.settings.keyframe_tolerance)
    # Label Studio's own link under its public name: fetched from LABEL_STUDIO_URL instead.
    public = task["data"]["video"].replace("127.0.0.1", "label-studio.example.com")
    [r2] = b.predict(predict_body([{"id": task["id"], "data": {"video": public}}]))["results"]
    def no_ids(res):
        return [{k: v for k, v in x.items() if k != "id"} for x in res]

    assert no_ids(r2["result"]) == no_ids(r["result"])
    # s3:// goes to Label Studio's presign endpoint (no such storage here: a clear error).
    [r] = b.predict(predict_body([{"id": task["id"], "data": {
        "video": "s3://bucket/a.mp4"}}]))["results"]
    assert "could not serve the media 's3://bucket/a.mp4'" in r["error"]


def test_a_file_changed_behind_the_same_link_is_fetched_again(ls, tmp_path, model, media,
                                                              engine):
    """The backend kept a task's media (and its predictions) by link forever: after the file
    in a local-files storage changed, it still labelled the old one. Label Studio sends an
    ETag for such files: the copy is revalidated (304 keeps it) and a new file is fetched."""
    import os
    import shutil

    folder = ls.files_root / "changing-videos"
    folder.mkdir(exist_ok=True)
    shutil.copy(media["clip"], folder / "clip.mp4")
    p = ls.create_project("changing files", VIDEO_CONFIG)
    st = ls.api("POST", "/api/storages/localfiles/", json={
        "project": p["id"], "path": str(folder), "regex_filter": r".*\.mp4",
        "use_blob_urls": True, "title": "videos"})
    ls.api("POST", f"/api/storages/localfiles/{st['id']}/sync")
    [task] = ls.tasks(p["id"])
    b = make_backend(ls, tmp_path, model)
    [r] = b.predict(predict_body([task]))["results"]
    check_video_prediction(r["result"], engine, b.settings.keyframe_tolerance)
    runs = b.seconds_per_frame
    [again] = b.predict(predict_body([task]))["results"]  # unchanged: 304, cached results
    assert again["result"] == r["result"] and b.seconds_per_frame == runs
    shutil.copy(media["no_audio"], folder / "clip.mp4")  # same link, another file
    os.utime(folder / "clip.mp4", ns=(1, 1 << 60))  # (whatever the clock's resolution)
    [changed] = b.predict(predict_body([task]))["results"]
    assert "result" not in changed and "no audio" in changed["error"], changed


def test_redirects_are_checked_hop_by_hop(tmp_path, model):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Redirector(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(303)
            self.send_header("Location", "http://storage.invalid/x.mp4?sig=1")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        b = Backend(LabelStudioBackendSettings(url=url, api_key="k", work_dir=tmp_path),
                    ModelSpec(), model=model)
        [r] = b.predict(predict_body([{"id": 5, "data": {"video": "/data/upload/1/a.mp4"}}])
                        )["results"]
        assert "redirected the media to 'storage.invalid'" in r["error"]
        assert "AURALSAM2_LS_STORAGE_HOSTS" in r["error"]
    finally:
        server.shutdown()


def test_fine_tuner_needs_only_what_it_is_given(tmp_path):
    """FineTuner runs without a Backend: its inputs are its constructor's arguments."""
    from auralsam2_core.errors import BadRequest
    from auralsam2_plugins.label_studio.training import FineTuner

    def never(*_args):
        raise AssertionError("not needed to store an annotation or to refuse training")

    ft = FineTuner(tmp_path / "ft", LabelStudioBackendSettings(work_dir=tmp_path), ModelSpec(),
                   model=never, run_lock=threading.Lock(), task_media=never,
                   cached_results=never, model_version=never, shared_service=True)
    assert ft.generation == 0 and ft.snapshot() is None
    out = ft.collect({"annotation": {"id": 3, "result": []}, "task": {"id": 7, "data": {}},
                      "project": {"id": 2, "label_config": "<View/>"}})
    assert out == {"status": "stored", "task": 7}
    stored = json.loads((tmp_path / "ft" / "annotations" / "project-2" / "task-7.json")
                        .read_text())
    assert stored["task"]["id"] == 7 and stored["label_config"] == "<View/>"
    with pytest.raises(BadRequest, match="AURALSAM2_SERVER_URL"):
        ft.start({"id": 2})
    assert ft.snapshot() is None  # nothing started
