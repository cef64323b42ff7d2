"""Label Studio's brush RLE (``BrushLabels`` with ``format: "rle"``), written from the format.

Label Studio stores a brush mask as an RGBA image (``H x W x 4``, uint8, row-major) packed
with thi.ng's *rle-pack*: a 32-bit value count, the word size minus one (5 bits), four run-
length field sizes minus one (4 bits each), then runs. A run is ``1`` (repeat), a 2-bit index
into the field sizes, ``length - 1`` in that many bits and the repeated word. Bits are written
most significant first. A mask must be 0/255 (0/1 renders invisible); all four channels carry
it, as Label Studio's own exporter does; the bytes equal those of label-studio-sdk's
``mask2rle`` (checked by the tests).
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
RUN_FIELDS = (3, 4, 8, 16)  # bits of the four run-length field sizes
_MAX_RUN = 1 << RUN_FIELDS[-1]


def _field(length: int) -> int:
    for k, bits in enumerate(RUN_FIELDS):
        if length - 1 < (1 << bits):
            return k
    raise AssertionError("run longer than the largest field")


def encode(mask: np.ndarray) -> list[int]:
    """``(H, W)`` mask (bool, or uint8 where nonzero is foreground) -> RLE as a list of bytes,
    the JSON form Label Studio expects in ``value.rle``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a brush mask must be 2-D (H, W), got shape {m.shape}")
    flat = np.repeat(np.where(m.ravel() != 0, 255, 0).astype(np.uint8), 4)
    n = flat.size
    # Runs of equal values in the flattened RGBA array.
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [n]]))
    fields: list[tuple[int, int]] = [(n, 32), (WORD_BITS - 1, 5)]
    fields += [(bits - 1, 4) for bits in RUN_FIELDS]
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        value = int(flat[start])
        while length > 0:
            chunk = min(length, _MAX_RUN)
            k = _field(chunk)
            # A single value is written as a literal run of one, as Label Studio does.
            fields += [(int(chunk > 1), 1), (k, 2), (chunk - 1, RUN_FIELDS[k]),
                       (value, WORD_BITS)]
            length -= chunk
    bits = "".join(format(v, f"0{w}b") for v, w in fields)
    bits += "0" * (8 - len(bits) % 8)  # Label Studio pads 1-8 bits (a whole byte if even)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big")) if bits else []


def decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """RLE -> ``(H, W)`` bool mask (the alpha channel), for tests and for training on
    annotators' brush corrections."""
    data = bytes(rle)
    bits = "".join(format(b, "08b") for b in data)
    pos = 0

    def read(k: int) -> int:
        nonlocal pos
        v = int(bits[pos:pos + k], 2) if k else 0
        pos += k
        return v

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if num != height * width * 4:
        raise ValueError(f"brush RLE holds {num} values, expected {height}x{width}x4")
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out.reshape(height, width, 4)[:, :, 3] > 0
