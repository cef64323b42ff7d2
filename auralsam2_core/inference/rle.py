"""COCO run-length encoding of binary masks (our own implementation of the public format).

A mask of shape ``(H, W)`` is flattened in column-major (Fortran) order and stored as the
lengths of its alternating runs, starting with a run of 0s (so ``counts[0]`` is 0 when the
first pixel is set). ``{"size": [H, W], "counts": [...]}`` is the *uncompressed* form.

The *compressed* form (what COCO json and the engine's results store) writes the counts as one
ASCII string: each count ``x`` (for ``i > 2`` the difference ``counts[i] - counts[i - 2]``,
which may be negative) is written as little-endian 5-bit groups; a group's bit ``0x20``
says another group follows, the last group's bit ``0x10`` is the sign, and each char is
``group + 48``. :func:`encode` gives the very string ``pycocotools.mask.encode`` gives.

Everything is vectorised over runs with numpy, so a 2160x3840 frame encodes / decodes in a
few tens of milliseconds whatever its content.

Why our own: the format is small and public, and the core and every adapter's environment need
it; ``pycocotools`` is a compiled package, so it stays in the test extra, where it checks this
module byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["area", "decode", "decode_counts", "encode", "encode_uncompressed", "to_bbox"]

_MAX_GROUPS = 13  # a decoded value has fewer 5-bit groups than this (it must fit int64)


# --------------------------------------------------------------------------------------------
# runs <-> mask


def _as_mask(mask: Any) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got an array of shape {m.shape}")
    if m.dtype != np.bool_:
        m = m != 0  # nonzero is foreground
    return m


def _runs(mask: Any) -> tuple[np.ndarray, int, int]:
    """Run lengths (int64, starting with 0s) of a mask in column-major order, and its H, W."""
    m = _as_mask(mask)
    h, w = m.shape
    n = h * w
    if n == 0:
        return np.zeros(1, np.int64), h, w
    flat = m.T.reshape(-1)  # Fortran order; a view when the input is Fortran-contiguous
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    first = 1 if flat[0] else 0  # a leading empty run of 0s when the first pixel is set
    bounds = np.empty(change.size + 2 + first, np.int64)
    bounds[: 1 + first] = 0
    bounds[1 + first : -1] = change
    bounds[-1] = n
    return np.diff(bounds), h, w


def _mask_from_runs(counts: np.ndarray, h: int, w: int) -> np.ndarray:
    values = np.zeros(counts.size, np.bool_)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape(w, h).T)


# --------------------------------------------------------------------------------------------
# counts <-> compressed string


def _compress(counts: np.ndarray) -> str:
    x = counts.astype(np.int64, copy=True)
    if x.size > 3:
        x[3:] -= counts[1:-2]
    groups: list[np.ndarray] = []
    keep: list[np.ndarray] = []
    alive = np.ones(x.size, np.bool_)  # this value still writes a char at group k
    while alive.any():
        c = (x & 0x1F).astype(np.uint8)
        x >>= 5  # arithmetic: negative values run to -1
        more = np.where(c & 0x10, x != -1, x != 0) & alive
        groups.append(c | (more.astype(np.uint8) << 5))
        keep.append(alive)
        alive = more
    if not groups:
        return ""
    out = np.stack(groups, axis=1)[np.stack(keep, axis=1)] + np.uint8(48)
    return out.tobytes().decode("ascii")


def decode_counts(s: str | bytes) -> np.ndarray:
    """The run lengths (int64) stored in a compressed COCO ``counts`` string."""
    if isinstance(s, str):
        try:
            s = s.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("corrupt RLE counts string: non-ASCII characters") from None
    c = np.frombuffer(bytes(s), np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("corrupt RLE counts string: characters outside '0'..'o'")
    last = np.flatnonzero((c & 0x20) == 0)  # the final char of each value
    if last.size == 0 or last[-1] != c.size - 1:
        raise ValueError("corrupt RLE counts string: it ends inside a value")
    starts = np.empty_like(last)
    starts[0] = 0
    starts[1:] = last[:-1] + 1
    k = np.arange(c.size) - np.repeat(starts, last - starts + 1)  # group index in its value
    if k.max() >= _MAX_GROUPS - 1:
        raise ValueError("corrupt RLE counts string: a value is too long")
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    sign = (c[last] & 0x10) != 0
    x[sign] |= np.int64(-1) << (5 * (k[last][sign] + 1))
    counts = x.copy()
    if counts.size > 3:  # counts[i] = x[i] + counts[i - 2] for i > 2
        counts[2::2] = np.cumsum(x[2::2])
        counts[1::2] = np.cumsum(x[1::2])
    return counts


# --------------------------------------------------------------------------------------------
# public API


def encode_uncompressed(mask: Any) -> dict:
    """``(H, W)`` mask (nonzero = foreground) -> ``{"size": [H, W], "counts": [ints]}``."""
    counts, h, w = _runs(mask)
    return {"size": [h, w], "counts": counts.tolist()}


def encode(mask: Any) -> dict:
    """``(H, W)`` mask (nonzero = foreground) -> ``{"size": [H, W], "counts": str}``.

    ``counts`` is the same string as ``pycocotools.mask.encode`` gives (there as bytes).
    """
    counts, h, w = _runs(mask)
    return {"size": [h, w], "counts": _compress(counts)}


def _parse(rle: Mapping) -> tuple[np.ndarray, int, int]:
    """Validated (counts, H, W) of a compressed or uncompressed RLE dict."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a mapping with 'size' and 'counts'")
    size = rle["size"]
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"RLE 'size' must be [H, W], got {size!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"RLE 'size' must be non-negative, got {size!r}")
    raw = rle["counts"]
    if isinstance(raw, str | bytes | bytearray):
        counts = decode_counts(raw)
    elif isinstance(raw, Sequence | np.ndarray):
        counts = np.asarray(raw)
        if counts.size == 0:
            counts = np.zeros(0, np.int64)
        elif counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
            raise ValueError("uncompressed RLE 'counts' must be a flat list of integers")
        counts = counts.astype(np.int64, copy=False)
    else:
        raise ValueError(f"RLE 'counts' must be a str, bytes or list, got {type(raw).__name__}")
    if counts.size and counts.min() < 0:
        raise ValueError("corrupt RLE counts: negative run length")
    total = int(counts.sum())
    if total != h * w:
        raise ValueError(f"corrupt RLE: runs cover {total} pixels but size {h}x{w} has {h * w}")
    return counts, h, w


def decode(rle: Mapping) -> np.ndarray:
    """RLE dict (compressed str/bytes or uncompressed list counts) -> ``(H, W)`` bool mask."""
    counts, h, w = _parse(rle)
    return _mask_from_runs(counts, h, w)


def area(rle: Mapping | np.ndarray) -> int:
    """Foreground pixel count of an RLE dict (or of a mask)."""
    if isinstance(rle, Mapping):
        counts, _, _ = _parse(rle)
        return int(counts[1::2].sum())
    return int(np.count_nonzero(_as_mask(rle)))


def to_bbox(rle_or_mask: Mapping | np.ndarray) -> list[float]:
    """``[x, y, w, h]`` box of the foreground in pixels, as ``pycocotools.mask.toBbox``.

    ``x, y`` are the first foreground column / row and ``w, h`` span to the last one
    inclusive (a single pixel at (r, c) gives ``[c, r, 1, 1]``); an empty mask gives
    ``[0, 0, 0, 0]``.
    """
    if isinstance(rle_or_mask, Mapping):
        counts, h, _ = _parse(rle_or_mask)
    else:
        counts, h, _ = _runs(rle_or_mask)
    ends = np.cumsum(counts)
    starts = ends - counts
    fg = np.arange(counts.size) % 2 == 1
    fg &= counts > 0
    if not fg.any():
        return [0.0, 0.0, 0.0, 0.0]
    s, e = starts[fg], ends[fg] - 1  # first and last pixel of each foreground run
    xs, ys = s // h, s % h
    xe, ye = e // h, e % h
    if (xs != xe).any():  # a run wraps to the next column: it covers whole rows in between
        y0, y1 = 0, h - 1
    else:
        y0, y1 = int(ys.min()), int(ye.max())
    x0, x1 = int(xs.min()), int(xe.max())
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]
