"""Instances: one sounding mask split into connected parts with ids stable across frames."""

import numpy as np
import pytest

from auralsam2_core.instances import InstanceTracker, connected_parts


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
        seen.append({int(i): p for i, p in tr.update(t, m)})
    big, small = seen[0].keys()
    assert seen[0][big].sum() > seen[0][small].sum()
    for frame in seen:
        assert set(frame) == {big, small}
        assert frame[big].sum() > frame[small].sum()


def test_a_flicker_keeps_the_id_and_a_new_object_gets_a_new_one():
    tr = InstanceTracker(patience=2)
    size = (50, 50)
    a = disc(size, 15, 25, 8)
    (ida, _), = tr.update(0, a)
    assert tr.update(1, np.zeros(size, bool)) == []
    (again, _), = tr.update(2, a)
    assert again == ida
    b = disc(size, 38, 25, 6)
    ids = [i for i, _ in tr.update(3, a | b)]
    assert ida in ids and len(set(ids)) == 2
    # gone for longer than patience: a new id
    for t in range(4, 8):
        tr.update(t, np.zeros(size, bool))
    (late, _), = tr.update(8, a)
    assert late not in ids


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(ValueError):
        InstanceTracker(min_iou=0)
    with pytest.raises(ValueError):
        connected_parts(np.zeros((2, 2, 2), bool))
