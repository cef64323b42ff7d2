"""Instances: one sounding mask split into connected parts with ids stable across frames."""

import numpy as np
import pytest

from auralsam2_core import env
from auralsam2_core.inference.instances import (
    DEFAULT_MIN_AREA,
    InstanceTracker,
    connected_parts,
    frame_instances,
    instance_tracks,
)


def disc(size, cx, cy, r):
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_parts_are_8_connected_largest_first_and_specks_dropped():
    m = disc((60, 80), 20, 30, 10) | disc((60, 80), 60, 30, 6)
    m[0, 0] = True  # a one-pixel speck: below min_area
    m[5, 5] = m[6, 6] = True  # diagonal neighbours: one part of 2 px, still a speck
    parts = connected_parts(m, min_area=0.002)
    assert len(parts) == 2
    assert parts[0].sum() > parts[1].sum()
    assert not (parts[0] & parts[1]).any()
    assert (parts[0] | parts[1]).sum() == m.sum() - 3
    diag = np.zeros((10, 10), bool)
    diag[2, 2] = diag[3, 3] = True
    assert len(connected_parts(diag, min_area=0.0)) == 1  # 8-connectivity


def test_ids_follow_objects_that_move_and_swap_sides_of_the_list():
    tr = InstanceTracker()
    size = (64, 96)
    seen = []
    # a small disc moves right past a large static one's position order; ids must follow
    for t in range(8):
        m = disc(size, 20, 32, 12) | disc(size, 50 + 4 * t, 32, 5)
        seen.append({int(i): p for i, p in tr.update(m)})
    big, small = seen[0].keys()
    assert seen[0][big].sum() > seen[0][small].sum()
    for frame in seen:
        assert set(frame) == {big, small}
        assert frame[big].sum() > frame[small].sum()


def test_a_flicker_keeps_the_id_and_a_new_object_gets_a_new_one():
    tr = InstanceTracker(patience=2)
    size = (50, 50)
    a = disc(size, 15, 25, 8)
    (ida, _), = tr.update(a)
    assert tr.update(np.zeros(size, bool)) == []
    (again, _), = tr.update(a)
    assert again == ida
    b = disc(size, 38, 25, 6)
    ids = [i for i, _ in tr.update(a | b)]
    assert ida in ids and len(set(ids)) == 2
    # gone for longer than patience: a new id
    for _ in range(4):
        tr.update(np.zeros(size, bool))
    (late, _), = tr.update(a)
    assert late not in ids


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(ValueError):
        InstanceTracker(min_iou=0)
    with pytest.raises(ValueError):
        connected_parts(np.zeros((2, 2, 2), bool))


def test_patience_counts_labelled_frames_not_frame_numbers():
    """With a stride of 10 the labelled frames are 0, 10, 20...: ids must survive the gaps."""
    size = (50, 80)
    a, b = disc(size, 15, 25, 8), disc(size, 60, 25, 8)
    frames = [(10 * t, a | b) for t in range(6)]
    per_frame = list(frame_instances(frames))
    assert [f for f, _ in per_frame] == [0, 10, 20, 30, 40, 50]
    assert all([i for i, _ in parts] == [1, 2] for _, parts in per_frame)


def test_instance_tracks_group_parts_by_id_and_keep_what_is_asked():
    size = (50, 80)
    a, b = disc(size, 15, 25, 8), disc(size, 60, 25, 5)
    empty = np.zeros(size, bool)
    tracks = instance_tracks([(0, a | b), (1, a), (2, empty), (3, a | b)])
    assert list(tracks) == [1, 2]
    assert [f for f, _ in tracks[1]] == [0, 1, 3]
    assert [f for f, _ in tracks[2]] == [0, 3]  # b came back within patience: same id
    assert all((m == a).all() for _, m in tracks[1])
    sums = instance_tracks([(0, a | b)], keep=lambda m: int(m.sum()))
    assert sums == {1: [(0, int(a.sum()))], 2: [(0, int(b.sum()))]}
    # a part below the minimum area is no instance
    assert list(instance_tracks([(0, a | b)], min_area=b.sum() / b.size + 1e-6)) == [1]


def test_the_setting_from_the_environment():
    assert env.instances({}) is None
    assert env.instances({"AURALSAM2_INSTANCES": "0"}) is None
    assert env.instances({"AURALSAM2_INSTANCES": "1"}) == DEFAULT_MIN_AREA
    assert env.instances({"AURALSAM2_INSTANCES": "true",
                          "AURALSAM2_MIN_INSTANCE_AREA": "0.01"}) == 0.01
    with pytest.raises(ValueError, match="AURALSAM2_INSTANCES"):
        env.instances({"AURALSAM2_INSTANCES": "maybe"})
    with pytest.raises(ValueError, match="AURALSAM2_MIN_INSTANCE_AREA"):
        env.instances({"AURALSAM2_INSTANCES": "1", "AURALSAM2_MIN_INSTANCE_AREA": "2"})
    with pytest.raises(ValueError, match="AURALSAM2_MIN_INSTANCE_AREA"):
        env.instances({"AURALSAM2_INSTANCES": "1", "AURALSAM2_MIN_INSTANCE_AREA": "big"})
