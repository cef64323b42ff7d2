"""Instances in the Label Studio backend, against the real Label Studio server the tests start:
a clip where two separated shapes sound at once, pre-labelled by the bundled demo model. With
``AURALSAM2_INSTANCES=1`` each shape gets its own ``VideoRectangle`` track (boxes on that shape
only, never one box spanning both) and, on keyframe tasks, its own brush mask; off, one track
as before."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import label_studio_server as lss
from helpers.instances_media import nearest_object, write_two_sounding_shapes

pytestmark = pytest.mark.skipif(not lss.available(), reason="needs .venv-labelstudio "
                                "(scripts/setup.d/40-labelstudio.sh) and ffmpeg")

starlette_testclient = pytest.importorskip("starlette.testclient")

from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.inference.instances import DEFAULT_MIN_AREA, connected_parts  # noqa: E402
from auralsam2_core.model_spec import ModelSpec, load_model  # noqa: E402
from auralsam2_plugins.label_studio import brush  # noqa: E402
from auralsam2_plugins.label_studio import predictions as P  # noqa: E402
from auralsam2_plugins.label_studio.app import create_app  # noqa: E402
from auralsam2_plugins.label_studio.backend import Backend  # noqa: E402
from auralsam2_plugins.label_studio.config import LabelStudioBackendSettings  # noqa: E402
from auralsam2_plugins.label_studio.prelabel import prelabel_project  # noqa: E402

VIDEO_CONFIG, KEYFRAME_CONFIG = lss.VIDEO_CONFIG, lss.KEYFRAME_CONFIG  # the templates
FPS = 25.0  # the template's framerate: Label Studio frame f shows engine frame f - 1


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    return lss.shared_server(tmp_path_factory.getbasetemp() / "label-studio")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_two_sounding_shapes(tmp_path_factory.mktemp("ls-inst") / "two shapes.mp4",
                                     fps=FPS)


@pytest.fixture(scope="module")
def model():
    return load_model(ModelSpec())


@pytest.fixture(scope="module")
def engine(model, clip):
    return list(prelabel(model, clip[0], PrelabelOptions()))


def make_backend(ls, tmp_path, model, **kw) -> Backend:
    settings = LabelStudioBackendSettings(url=ls.url, api_key=lss.TOKEN, work_dir=tmp_path / "work",
                                          **kw)
    return Backend(settings, ModelSpec(), model=model)


def predict_body(tasks, config=VIDEO_CONFIG):
    return {"tasks": tasks, "project": "1.1764201600", "label_config": config,
            "params": {"login": None, "password": None, "context": None}}


def area(b) -> float:
    return b[2] * b[3]


def test_the_setting_comes_from_the_environment():
    from_env = LabelStudioBackendSettings.from_env
    assert from_env({}).instance_min_area is None
    assert from_env({"AURALSAM2_INSTANCES": "1"}).instance_min_area == DEFAULT_MIN_AREA
    assert from_env({"AURALSAM2_INSTANCES": "1", "AURALSAM2_MIN_INSTANCE_AREA":
                     "0.01"}).instance_min_area == 0.01
    with pytest.raises(ValueError, match="AURALSAM2_MIN_INSTANCE_AREA"):
        from_env({"AURALSAM2_INSTANCES": "1", "AURALSAM2_MIN_INSTANCE_AREA": "-1"})


def test_one_box_track_per_shape_stored_in_label_studio(ls, clip, engine, model, tmp_path):
    video, truth = clip
    p = ls.create_project("two sounding shapes", VIDEO_CONFIG)
    [tid] = ls.upload(p["id"], video)
    task = ls.api("GET", f"/api/tasks/{tid}")
    off = make_backend(ls, tmp_path / "off", model, keyframe_tolerance=0.0)
    on = make_backend(ls, tmp_path / "on", model, instance_min_area=DEFAULT_MIN_AREA,
                      keyframe_tolerance=0.0)  # every frame a keyframe: each box checked
    client = starlette_testclient.TestClient(create_app(on))
    [pred] = client.post("/predict", json=predict_body([task])).json()["results"]
    tracks = [r for r in pred["result"] if r["type"] == "videorectangle"]
    assert len(tracks) == 2 and len({t["id"] for t in tracks}) == 2
    union = {r.index + 1: P.mask_box(r.mask) for r in engine}
    both = {r.index + 1 for r in engine if len(connected_parts(r.mask)) == 2}
    assert len(both) >= 0.9 * len(engine)
    [off_pred] = off.predict(predict_body([task]))["results"]
    [off_track] = [r for r in off_pred["result"] if r["type"] == "videorectangle"]
    off_seq = off_track["value"]["sequence"]
    assert len(off_seq) > 20  # the shapes sound on (nearly) every frame
    h, w = truth.frames.shape[1:3]
    shapes = []
    for t in tracks:
        seq = t["value"]["sequence"]
        # each shape is on nearly every frame the whole mask is (the demo model loses the
        # smaller one on the clip's last frames); where it is not, its box is hidden: the
        # keyframe before a gap is disabled, never interpolated across
        frames = [s["frame"] for s in seq]
        assert set(frames) <= {s["frame"] for s in off_seq}
        assert len(frames) >= 0.9 * len(off_seq)
        for s, nxt in zip(seq, frames[1:] + [None], strict=True):
            assert s["enabled"] == (nxt == s["frame"] + 1)
        on_shape = set()
        for s in seq:
            box = (s["x"], s["y"], s["width"], s["height"])
            if s["frame"] in both:
                assert area(box) < 0.5 * area(union[s["frame"]])  # one shape, not both
            centre = ((s["x"] + s["width"] / 2) * w / 100, (s["y"] + s["height"] / 2) * h / 100)
            on_shape.add(nearest_object(truth, s["frame"] - 1, centre))
        assert len(on_shape) == 1  # the track stays on its shape
        shapes += on_shape
        assert "instance" in t["meta"]["text"][0]
    assert sorted(shapes) == [0, 1]
    ranges = [r for r in pred["result"] if r["type"] == "timelinelabels"]
    # off: one track, its boxes the engine's whole-mask boxes (today's output); the time
    # ranges are the same either way
    for s in off_seq:
        assert (s["x"], s["y"], s["width"], s["height"]) == pytest.approx(union[s["frame"]],
                                                                           abs=1e-3)
    assert [r for r in off_pred["result"] if r["type"] == "timelinelabels"] == ranges
    # through Label Studio: the batch command stores the two tracks as one prediction
    report = prelabel_project(on, p["id"], progress=False)
    assert report["created"] == 1
    [stored] = ls.predictions(tid)
    assert sorted(r["id"] for r in stored["result"] if r["type"] == "videorectangle") == \
        sorted(t["id"] for t in tracks)


def test_keyframe_task_gets_one_brush_mask_per_shape(ls, clip, model, tmp_path):
    video, truth = clip
    k = 3
    _, tid = ls.keyframe_task("instance keyframes", video, k, tmp_path / "keyframe.png",
                              (256, 192))
    task = ls.api("GET", f"/api/tasks/{tid}")
    results = {}
    for name, area_ in (("off", None), ("on", DEFAULT_MIN_AREA)):
        b = make_backend(ls, tmp_path / name, model, instance_min_area=area_)
        [r] = b.predict(predict_body([task], config=KEYFRAME_CONFIG))["results"]
        results[name] = [brush.decode(x["value"]["rle"], 192, 256) for x in r["result"]]
    [whole] = results["off"]
    parts = results["on"]
    assert len(parts) == 2 and not (parts[0] & parts[1]).any()
    assert np.array_equal(parts[0] | parts[1], whole)
    # each part lies on its own shape (the image is the 128 x 96 video at twice the size)
    owners = {nearest_object(truth, k, (np.nonzero(p)[1].mean() / 2, np.nonzero(p)[0].mean() / 2))
              for p in parts}
    assert owners == {0, 1}
