"""Instances in the CVAT function, with the CVAT emulator at its strictest (every test ends by
opening every job and exporting every task, as CVAT would): a clip where two separated shapes
sound at once, pre-labelled by the bundled demo model. With ``AURALSAM2_INSTANCES=1`` each
shape is its own mask shape per frame (task calls), its own polygon track (polygon-tracks
mode) and its own mask in Automatic annotation answers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cvat_sdk")
nuclio_sdk = pytest.importorskip("nuclio_sdk")
yaml = pytest.importorskip("yaml")

from cvat_sdk.masks import decode_mask  # noqa: E402
from nuclio_sdk.test import Platform  # noqa: E402

from auralsam2_core import model_spec  # noqa: E402
from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.inference.instances import connected_parts  # noqa: E402
from auralsam2_plugins.cvat.masks import from_detector_mask, mask_box  # noqa: E402

from helpers import cvat_emulator as ce  # noqa: E402
from helpers.cvat_function_env import FUNCTION, SPEC, call, function_env  # noqa: E402
from helpers.instances_media import box_area, nearest_object, write_two_sounding_shapes  # noqa: E402

pytestmark = pytest.mark.usefixtures("cvat_function_threads_joined")
LABEL = {"id": 70, "name": "sounding", "type": "mask", "attributes": []}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_two_sounding_shapes(tmp_path_factory.mktemp("cvat-inst") / "two.mp4")


@pytest.fixture(scope="module")
def engine(clip):
    model_spec.load_model.cache_clear()  # the bundled model, as the function loads it
    model = model_spec.load_model(model_spec.ModelSpec.from_env({
        "AURALSAM2_DEVICE": "cpu"}))
    yield {r.index: r for r in prelabel(model, clip[0], PrelabelOptions())}
    model_spec.load_model.cache_clear()


@pytest.fixture
def env(monkeypatch, tmp_path, emu):
    return function_env(monkeypatch, emu.url, tmp_path / "cache", AURALSAM2_DEVICE="cpu",
                        AURALSAM2_INSTANCES="1")


def add_task(emu, clip):
    """All 8 frames, two jobs sharing frame 3."""
    return emu.add_task(ce.EmuTask(11, clip[0], labels=[LABEL], segment_size=4, overlap=1))


def check_parts(parts, whole, truth, frame):
    """Two disjoint parts that make up the frame's mask, each with a box much smaller than the
    whole mask's and on its own shape."""
    assert len(parts) == 2
    assert not (parts[0] & parts[1]).any() and np.array_equal(parts[0] | parts[1], whole)
    owners = set()
    for p in parts:
        assert box_area(mask_box(p)) < 0.5 * box_area(mask_box(whole))
        ys, xs = np.nonzero(p)
        owners.add(nearest_object(truth, frame, (xs.mean(), ys.mean())))
    assert owners == {0, 1}


def polygon_centre(points):
    xy = np.asarray(points, float).reshape(-1, 2)
    return tuple(xy.mean(axis=0))


def test_task_call_uploads_one_mask_shape_per_instance(emu, env, clip, engine, monkeypatch):
    task = add_task(emu, clip)
    whole = {i: r.mask for i, r in engine.items()}
    assert all(len(connected_parts(m)) == 2 for m in whole.values())
    status, report = call(Platform(), {"task_id": task.id, "wait": 60})
    assert status == 200 and report["state"] == "done", report
    for job in task.annotation_jobs():
        frames = task.job_frames(job)
        by_frame: dict[int, list] = {}
        for s in job.shapes:
            assert s["source"] == "auto" and s["type"] == "mask"
            by_frame.setdefault(s["frame"], []).append(
                decode_mask(s["points"], image_width=task.width, image_height=task.height))
        assert sorted(by_frame) == list(frames)
        for f, parts in by_frame.items():
            check_parts(parts, whole[f], clip[1], f)
    copies = sum(len(task.job_frames(j)) for j in task.annotation_jobs())  # overlaps twice
    assert report["sounding_frames"] == 8 and report["shapes_created"] == 2 * copies
    # off again: the re-run replaces them with one whole mask per frame
    monkeypatch.setenv("AURALSAM2_INSTANCES", "0")
    status, report = call(Platform(), {"task_id": task.id, "wait": 60})
    assert report["shapes_deleted"] == 2 * copies and report["shapes_created"] == copies
    for job in task.annotation_jobs():
        for s in job.shapes:
            got = decode_mask(s["points"], image_width=task.width, image_height=task.height)
            assert np.array_equal(got, whole[s["frame"]])


def test_polygon_tracks_one_track_per_instance(emu, env, clip, engine, monkeypatch):
    monkeypatch.setenv("AURALSAM2_CVAT_UPLOAD", "polygon-tracks")
    task = add_task(emu, clip)
    status, report = call(Platform(), {"task_id": task.id, "wait": 60})
    assert status == 200 and report["state"] == "done", report
    for job in task.annotation_jobs():
        tracks = [t for t in job.tracks if t["source"] == "auto"]
        assert len(tracks) == 2  # each instance sounds on every frame: one track each
        owners = []
        for t in tracks:
            shapes = [s for s in t["shapes"] if not s["outside"]]
            assert [s["frame"] for s in shapes] == list(task.job_frames(job))
            on = {nearest_object(clip[1], s["frame"], polygon_centre(s["points"]))
                  for s in shapes}
            assert len(on) == 1  # the track stays on its shape
            owners += on
        assert sorted(owners) == [0, 1]
    assert report["tracks_created"] == 2 * len(task.annotation_jobs())


def test_automatic_annotation_answers_one_mask_per_instance(emu, env, clip, engine):
    task = add_task(emu, clip)
    platform = Platform()
    done = emu.run_auto_annotation(lambda payload, headers: call(platform, payload), FUNCTION,
                                   SPEC, task, threshold=0.5)
    assert done.status == "finished", done.error
    assert [c.frame for c in done.calls] == list(range(8))
    for c in done.calls:
        assert c.status == 200
        parts = [from_detector_mask(s["mask"], task.width, task.height) for s in c.body]
        check_parts(parts, engine[c.frame].mask, clip[1], c.frame)
