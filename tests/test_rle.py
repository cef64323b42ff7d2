"""COCO RLE (auralsam2_core.inference.rle): round trips, and byte-for-byte parity with
pycocotools."""

from __future__ import annotations

import time

import numpy as np
import pytest

from auralsam2_core.inference import rle

try:
    from pycocotools import mask as coco
except ImportError:  # the reference is in the test extra; without it only parity is skipped
    coco = None

needs_coco = pytest.mark.skipif(coco is None, reason="pycocotools not installed")


def _coco_encode(m: np.ndarray) -> dict:
    return coco.encode(np.asfortranarray(m.astype(np.uint8)))


def _blob(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    ellipse = ((yy - 0.45 * h) / (0.3 * h)) ** 2 + ((xx - 0.5 * w) / (0.35 * w)) ** 2 < 1
    hole = ((yy - 0.45 * h) / (0.08 * h)) ** 2 + ((xx - 0.55 * w) / (0.05 * w)) ** 2 < 1
    return ellipse & ~hole


def _special_masks() -> list[np.ndarray]:
    masks = [
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
        np.zeros((1, 17), bool),
        np.ones((1, 17), bool),
        np.eye(1, 17, 5, dtype=bool),
        np.zeros((23, 1), bool),
        np.ones((23, 1), bool),
        np.eye(23, 1, -7, dtype=bool),
        np.zeros((7, 13), bool),
        np.ones((7, 13), bool),
        (np.indices((9, 11)).sum(0) % 2).astype(bool),  # checkerboard
        (np.indices((8, 8)).sum(0) % 2 == 0),
        _blob(31, 57),
        _blob(120, 90),
    ]
    corner = np.zeros((5, 6), bool)
    corner[0, 0] = corner[-1, -1] = True
    masks.append(corner)
    return masks


def _random_masks(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        density = rng.choice([0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0, rng.random()])
        m = rng.random((h, w)) < density
        if rng.random() < 0.3:  # long runs, including runs longer than 2**10
            m = np.repeat(np.repeat(m, 8, axis=0), 5, axis=1)
        out.append(m)
    return out


ALL_MASKS = _special_masks() + _random_masks(400)


# --------------------------------------------------------------------------------------------
# round trips


def test_round_trip_compressed_and_uncompressed():
    for m in ALL_MASKS:
        enc = rle.encode(m)
        assert enc["size"] == list(m.shape)
        assert isinstance(enc["counts"], str)
        got = rle.decode(enc)
        assert got.dtype == np.bool_ and got.shape == m.shape
        np.testing.assert_array_equal(got, m)
        unc = rle.encode_uncompressed(m)
        assert all(type(c) is int for c in unc["counts"])
        assert sum(unc["counts"]) == m.size
        np.testing.assert_array_equal(rle.decode(unc), m)
        # bytes counts are accepted too
        np.testing.assert_array_equal(
            rle.decode({"size": enc["size"], "counts": enc["counts"].encode()}), m
        )
        assert rle.area(enc) == rle.area(unc) == rle.area(m) == int(m.sum())


def test_uncompressed_runs_start_with_zeros():
    m = np.array([[1, 0], [1, 1]], np.uint8)  # column-major: 1 1 0 1
    assert rle.encode_uncompressed(m) == {"size": [2, 2], "counts": [0, 2, 1, 1]}
    assert rle.encode_uncompressed(np.zeros((2, 3))) == {"size": [2, 3], "counts": [6]}


def test_non_bool_input_nonzero_is_foreground():
    rng = np.random.default_rng(3)
    m = rng.random((13, 9)) < 0.4
    for arr in (m.astype(np.uint8), m.astype(np.float32), m * 255, np.asfortranarray(m)):
        assert rle.encode(arr) == rle.encode(m)
    assert rle.encode(m[::2, 1::3]) == rle.encode(np.ascontiguousarray(m[::2, 1::3]))


def test_empty_shape():
    for shape in [(0, 4), (4, 0), (0, 0)]:
        enc = rle.encode(np.zeros(shape, bool))
        assert rle.decode(enc).shape == shape
        assert rle.to_bbox(enc) == [0.0, 0.0, 0.0, 0.0]


def test_large_blob_round_trip():
    m = _blob(1080, 1920)
    enc = rle.encode(m)
    np.testing.assert_array_equal(rle.decode(enc), m)
    assert rle.area(enc) == int(m.sum())
    ys, xs = np.nonzero(m)
    assert rle.to_bbox(enc) == [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


def test_speed_4k_frame():
    m = _blob(2160, 3840)
    rle.encode(m)  # warm up
    t0 = time.perf_counter()
    enc = rle.encode(m)
    t1 = time.perf_counter()
    rle.decode(enc)
    t2 = time.perf_counter()
    print(f"\n2160x3840 blob: encode {1e3 * (t1 - t0):.1f} ms, decode {1e3 * (t2 - t1):.1f} ms")
    assert t1 - t0 < 0.5 and t2 - t1 < 0.5  # generous on shared CI; ~10 ms each when idle


# --------------------------------------------------------------------------------------------
# parity with pycocotools


@needs_coco
def test_counts_match_pycocotools_byte_for_byte():
    for m in ALL_MASKS + [_blob(1080, 1920)]:
        ref = _coco_encode(m)
        enc = rle.encode(m)
        assert enc["counts"] == ref["counts"].decode("ascii")
        assert enc["size"] == list(ref["size"])


@needs_coco
def test_decode_pycocotools_strings():
    for m in ALL_MASKS:
        ref = _coco_encode(m)
        np.testing.assert_array_equal(rle.decode(ref), m)  # bytes counts
        np.testing.assert_array_equal(
            rle.decode({"size": ref["size"], "counts": ref["counts"].decode()}), m
        )


@needs_coco
def test_area_and_bbox_match_pycocotools():
    for m in ALL_MASKS:
        ref = _coco_encode(m)
        enc = rle.encode(m)
        assert rle.area(enc) == int(coco.area(ref))
        want = coco.toBbox(ref).tolist()
        assert rle.to_bbox(enc) == want
        assert rle.to_bbox(m) == want
        assert rle.to_bbox(rle.encode_uncompressed(m)) == want


@needs_coco
def test_uncompressed_matches_pycocotools_frpyobjects():
    for m in ALL_MASKS[:60]:
        unc = rle.encode_uncompressed(m)
        ref = coco.frPyObjects(unc, *unc["size"])
        assert rle.encode(m)["counts"] == ref["counts"].decode()


# --------------------------------------------------------------------------------------------
# bad input


def test_rejects_non_2d():
    for bad in (np.zeros((2, 3, 4), bool), np.zeros(5, bool), np.bool_(True)):
        with pytest.raises(ValueError, match="2-D"):
            rle.encode(bad)
        with pytest.raises(ValueError, match="2-D"):
            rle.encode_uncompressed(bad)


def test_rejects_wrong_size():
    enc = rle.encode(_blob(20, 30))
    with pytest.raises(ValueError, match="runs cover 600 pixels but size 20x31"):
        rle.decode({"size": [20, 31], "counts": enc["counts"]})
    with pytest.raises(ValueError, match="runs cover"):
        rle.decode({"size": [3, 3], "counts": [4, 4]})
    for size in ([20], [20, 30, 1], "20x30", None, [-20, -30]):
        with pytest.raises(ValueError, match="size"):
            rle.decode({"size": size, "counts": enc["counts"]})


def test_rejects_corrupt_counts():
    enc = rle.encode(_blob(20, 30))
    s = enc["counts"]
    with pytest.raises(ValueError, match="runs cover"):
        rle.decode({"size": [20, 30], "counts": s[:-2]})
    with pytest.raises(ValueError, match="runs cover"):
        rle.area({"size": [20, 30], "counts": s + "1"})
    with pytest.raises(ValueError, match="ends inside a value"):
        rle.decode({"size": [20, 30], "counts": s + "P"})  # 'P' - 48 = 0x20: continuation
    with pytest.raises(ValueError, match="outside"):
        rle.decode({"size": [20, 30], "counts": s[:3] + "~" + s[4:]})
    with pytest.raises(ValueError, match="negative run"):
        rle.decode({"size": [2, 2], "counts": [5, -1]})
    with pytest.raises(ValueError, match="negative run"):
        rle.decode({"size": [1, 1], "counts": "0O"})  # second value is -1 (sign bit 0x10)
    with pytest.raises(ValueError, match="too long"):
        rle.decode({"size": [1, 1], "counts": "P" * 20 + "0"})
    with pytest.raises(ValueError, match="integers"):
        rle.decode({"size": [1, 1], "counts": [0.5, 0.5]})
    with pytest.raises(ValueError, match="'size' and 'counts'"):
        rle.decode({"counts": s})
    with pytest.raises(ValueError, match="str, bytes or list"):
        rle.decode({"size": [20, 30], "counts": 600})


def test_decode_counts_negative_deltas():
    # counts whose i-2 differences are negative exercise the sign bit
    counts = [0, 40, 3, 1, 2, 1000, 1, 5, 2000, 1]
    m = np.zeros(sum(counts), bool)
    pos = np.cumsum([0] + counts)
    for i in range(1, len(counts), 2):
        m[pos[i] : pos[i + 1]] = True
    m = m.reshape(1, -1)
    enc = rle.encode(m)
    assert rle.decode_counts(enc["counts"]).tolist() == counts
    if coco is not None:
        assert enc["counts"] == _coco_encode(m)["counts"].decode()
