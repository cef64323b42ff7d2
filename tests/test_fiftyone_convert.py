"""The FiftyOne adapter's platform-independent parts (plugins/fiftyone/auralsam2_fiftyone:
convert.py, spec.py, timeline.py): run without FiftyOne installed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from auralsam2_fiftyone import convert, timeline
from auralsam2_fiftyone.spec import BUNDLED, ModelSpec, spec_from_params, spec_to_params


def _result(index, mask, prob=0.9, iou=0.8, prio=0.3, score=0.7):
    return SimpleNamespace(index=index, time=index / 5, mask=mask, sounding_prob=prob,
                           predicted_iou=iou, review_priority=prio, mask_score=score)


@pytest.mark.parametrize("shape", [(48, 64), (7, 5), (1, 1), (360, 640)])
def test_detection_round_trip_is_exact(shape):
    rng = np.random.default_rng(sum(shape))
    masks = [rng.random(shape) > 0.7, np.zeros(shape, bool), np.ones(shape, bool)]
    one = np.zeros(shape, bool)
    one[-1, -1] = True  # a single pixel in the last corner
    masks.append(one)
    for mask in masks:
        d = convert.detection_dict(mask, confidence=0.6, predicted_iou=0.5,
                                   review_priority=0.4, mask_score=0.3)
        if not mask.any():
            assert d is None
            continue
        x, y, w, h = d["bounding_box"]
        assert x >= 0 and y >= 0 and x + w <= 1 + 1e-12 and y + h <= 1 + 1e-12
        assert d["mask"].shape == (round(h * shape[0]), round(w * shape[1]))
        assert d["mask"].dtype == bool
        # The crop is tight: every border row / column holds a pixel.
        c = d["mask"]
        assert c[0].any() and c[-1].any() and c[:, 0].any() and c[:, -1].any()
        np.testing.assert_array_equal(convert.paste(d["bounding_box"], c, shape), mask)
        assert (d["label"], d["index"], d["confidence"]) == ("sounding", 1, 0.6)
        assert (d["predicted_iou"], d["review_priority"], d["mask_score"]) == (0.5, 0.4, 0.3)


def test_frame_dict_is_one_based_and_keeps_scores_of_empty_frames():
    empty = convert.frame_dict(_result(0, np.zeros((4, 6), bool), prob=0.2, prio=0.6))
    assert empty == {"frame_number": 1, "sounding_prob": 0.2, "review_priority": 0.6,
                     "detections": []}
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    full = convert.frame_dict(_result(9, mask))
    assert full["frame_number"] == 10
    (det,) = full["detections"]
    assert det["bounding_box"] == [2 / 6, 1 / 4, 3 / 6, 2 / 4]
    assert det["mask"].all() and det["mask"].shape == (2, 3)


def test_paste_resizes_foreign_crops_and_ors_into_out():
    out = np.zeros((10, 10), bool)
    out[0, 0] = True
    convert.paste([0.2, 0.2, 0.4, 0.4], np.ones((2, 2), bool), (10, 10), out=out)
    assert out[2:6, 2:6].all() and out[0, 0] and out.sum() == 17


def _frames(probs, start=1, step=1):
    return [{"frame_number": start + i * step, "sounding_prob": p, "review_priority": 1 - p}
            for i, p in enumerate(probs)]


def test_interval_supports_follow_hysteresis_with_one_based_inclusive_frames():
    frames = _frames([0.1, 0.7, 0.5, 0.3, 0.9, 0.9])
    got = convert.interval_supports(frames, fps=5.0, last_frame=6)
    assert [g["support"] for g in got] == [[2, 3], [5, 6]]
    assert got[0]["label"] == "sounding"
    assert got[0]["confidence"] == pytest.approx((0.7 + 0.5) / 2, abs=1e-4)


def test_intervals_read_as_the_app_timeline_shows_them():
    """Issue #17.6: the App's timeline shows FiftyOne frame n as #(n-1) at (n-1)/fps, so an
    interval with support [1, 7] at 5 fps reads "#0–#6", "0:00.00–0:01.40"."""
    frames = _frames([0.9] * 7 + [0.1] * 3)
    (iv,) = convert.interval_supports(frames, fps=5.0, last_frame=10)
    assert iv["support"] == [1, 7]  # FiftyOne's data model stays 1-based
    assert iv["frame_range"] == "#0\u2013#6" and iv["time_range"] == "0:00.00\u20130:01.40"
    (iv,) = convert.interval_supports(frames, fps=0.0, last_frame=10)
    assert "time_range" not in iv and iv["frame_range"] == "#0\u2013#6"


@pytest.mark.parametrize("seconds, shown", [
    (0.0, "0:00.00"), (0.2, "0:00.20"), (0.29, "0:00.29"), (1.4, "0:01.40"),
    (59.999, "0:59.99"), (61.5, "1:01.50"), (3723.456, "62:03.45"), (-0.5, "0:00.00")])
def test_app_time_format_is_the_timeline_s(seconds, shown):
    """m:ss.cc with centiseconds truncated, as the App's timeline formats time."""
    assert timeline.app_time(seconds) == shown


def test_frame_labels():
    assert timeline.app_frame(1) == "#0" and timeline.app_frame(10) == "#9"
    assert timeline.frame_label(4, 5.0) == "#3 (0:00.60)"
    assert timeline.frame_label(4, None) == "#3"
    assert timeline.frame_start(31, 29.97) == pytest.approx(30 / 29.97)


def test_interval_supports_cover_strided_gaps_but_not_past_the_video():
    frames = _frames([0.9, 0.9, 0.1, 0.9], step=3)  # frames 1, 4, 7, 10 of 11
    got = convert.interval_supports(frames, fps=5.0, stride=3, last_frame=11)
    assert [g["support"] for g in got] == [[1, 6], [10, 11]]


def test_summary_and_ranges():
    s = convert.summary(_frames([0.1, 0.6, 0.9, 0.4]))
    assert s["labelled_frames"] == 4 and s["sounding_frames"] == 2
    assert s["sounding_fraction"] == 0.5 and s["max_review_priority"] == 0.9
    assert convert.summary([])["labelled_frames"] == 0
    assert convert.merge_ranges([[5, 7], [1, 2], [3, 3], [9, 9]]) == [(1, 3), (5, 7), (9, 9)]
    assert convert.in_ranges(4, None) and not convert.in_ranges(4, [(1, 3), (5, 7)])


def test_model_spec_params_round_trip():
    assert spec_from_params({}) == ModelSpec() and ModelSpec().sam2_config == BUNDLED
    assert spec_to_params(ModelSpec()) == {"model": "bundled"}
    spec = ModelSpec("sam2_hiera_t", image_size=64, fuser_config={"f_depths": [1, 1, 1]})
    back = spec_from_params(spec_to_params(spec))
    assert back == spec and back.identity() == spec.identity()
    released = spec_from_params({"model": "checkpoints", "sam2_checkpoint": " a.pt ",
                                 "fuser_checkpoint": "b.pth", "image_size": ""})
    assert (released.sam2_config, released.sam2_checkpoint, released.image_size) == \
        ("sam2_hiera_l", "a.pt", None)
    assert "a.pt" in released.describe() and "random" in spec.describe()


def test_model_spec_refuses_silent_random_weights():
    with pytest.raises(ValueError, match="checkpoint"):
        spec_from_params({"model": "checkpoints", "sam2_config": "sam2_hiera_t"})
