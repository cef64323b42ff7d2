"""Instances in the FiftyOne plugin, against real FiftyOne and its own database: a clip where
two separated shapes sound at once, pre-labelled by the bundled demo model through the
operator and through ``apply_model``. With Instances on, each shape is its own detection (its
own box, not one box over both and the empty space between) with an ``index`` that follows the
shape across frames; off, the output is what the engine yields, one detection per frame."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import fiftyone_env
from helpers.instances_media import box_area, nearest_object, write_two_sounding_shapes

fiftyone_env.prepare()

fo = pytest.importorskip(
    "fiftyone", reason="fiftyone is not installed (bash scripts/setup.d/20-fiftyone.sh)")

from auralsam2_fiftyone import convert  # noqa: E402
from auralsam2_fiftyone.model import AuralSAM2VideoModel  # noqa: E402
from auralsam2_fiftyone.spec import ModelSpec, resolve_model  # noqa: E402
from fiftyone.operators import execute_operator  # noqa: E402
from fiftyone.operators.executor import ExecutionError  # noqa: E402

from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402

PRELABEL = "@auralsam2/auralsam2/prelabel_sounding_objects"
PARAMS = {"model": "bundled", "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def fiftyone_setup(tmp_path_factory):
    with fiftyone_env.plugin_installed(tmp_path_factory.mktemp("fo_plugins")):
        yield


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_two_sounding_shapes(tmp_path_factory.mktemp("inst") / "two.mp4")


@pytest.fixture(scope="module")
def dataset(clip):
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(clip[0])))
    ds.compute_metadata()
    for field, extra in (("whole", {}), ("inst", {"instances": True})):
        result = execute_operator(PRELABEL, dataset=ds,
                                  params={**PARAMS, "label_field": field, **extra})
        assert result.error is None, result.error
    return ds


def boxes(dets, size):
    """index -> (x0, y0, x1, y1) pixel box of each detection."""
    h, w = size
    out = {}
    for d in dets.detections:
        x, y, bw, bh = d.bounding_box
        out[d.index] = (x * w, y * h, (x + bw) * w - 1, (y + bh) * h - 1)
    return out


def test_instances_give_one_detection_per_shape_with_a_stable_index(dataset, clip):
    video, truth = clip
    size = truth.frames.shape[1:3]
    sample = dataset.first()
    ids_to_object: dict[int, set[int]] = {}
    for n, frame in sample.frames.items():
        inst, whole = frame["inst"], frame["whole"]
        assert len(inst.detections) == 2 and len(whole.detections) == 1
        union = boxes(whole, size)[convert.TRACK_INDEX]
        for index, box in boxes(inst, size).items():
            assert box_area(box) < 0.5 * box_area(union)  # one shape, not the span of both
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            ids_to_object.setdefault(index, set()).add(nearest_object(truth, n - 1, centre))
        # the two instances' masks, pasted back, are the frame's mask (no speck here)
        pasted = np.zeros(size, bool)
        for d in inst.detections:
            convert.paste(d.bounding_box, d.mask, size, out=pasted)
        assert (pasted == convert.paste(whole.detections[0].bounding_box,
                                        whole.detections[0].mask, size)).all()
    # two ids, each always on the same shape, and the two on different shapes
    assert len(ids_to_object) == 2
    assert all(len(objs) == 1 for objs in ids_to_object.values())
    assert {o for objs in ids_to_object.values() for o in objs} == {0, 1}
    assert sample.inst_summary.instances == 2
    assert "instances" not in sample.whole_summary  # off: the summary as before
    # the sounding intervals do not depend on the option
    assert [d.support for d in sample.inst_intervals.detections] == \
        [d.support for d in sample.whole_intervals.detections]


def test_instances_off_writes_what_the_engine_yields(dataset, clip):
    model = resolve_model(ModelSpec(), "cpu")
    results = list(prelabel(model, str(clip[0]), PrelabelOptions()))
    sample = dataset.first()
    size = clip[1].frames.shape[1:3]
    for r in results:
        (det,) = sample.frames[r.index + 1]["whole"].detections
        assert det.index == convert.TRACK_INDEX
        assert det.confidence == pytest.approx(r.sounding_prob)
        assert (convert.paste(det.bounding_box, det.mask, size) == r.mask).all()


def test_apply_model_with_instances_matches_the_operator(dataset, clip):
    model = resolve_model(ModelSpec(), "cpu")
    dataset.apply_model(AuralSAM2VideoModel(model=model, instances=True), label_field="am")
    sample = dataset.first()
    for _, frame in sample.frames.items():
        got = {d.index: d.bounding_box for d in frame["am"].detections}
        want = {d.index: d.bounding_box for d in frame["inst"].detections}
        assert got == want
    # a minimum area above both shapes: no instance at all
    dataset.apply_model(AuralSAM2VideoModel(model=model, instances=True,
                                            min_instance_area=0.5), label_field="big")
    assert all(len(f["big"].detections) == 0 for _, f in dataset.first().frames.items())
    with pytest.raises(ValueError, match="min_instance_area"):
        AuralSAM2VideoModel(model=model, instances=True, min_instance_area=2)


def test_a_bad_minimum_area_is_refused_with_its_name(dataset):
    with pytest.raises(ExecutionError, match="min_instance_area"):
        execute_operator(PRELABEL, dataset=dataset, params={
            **PARAMS, "label_field": "bad", "instances": True, "min_instance_area": 5})
