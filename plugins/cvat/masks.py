"""Masks and images in CVAT's formats, and the small thumbnails used to recognise frames.

* detector answers: the box crop of the mask as a flat row-major 0/1 list, then the
  inclusive box ``[xtl, ytl, xbr, ybr]`` (what CVAT's lambda manager turns into its RLE);
* API uploads: ``cvat_sdk.masks.encode_mask`` (CVAT's own RLE with the inclusive box).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

THUMB = 24  # thumbnail side: 1.7 kB a frame, enough to tell moving frames apart


class BadImage(ValueError):
    """The request's image is not a decodable base64 image."""


def decode_image(b64: object) -> Image.Image:
    if not isinstance(b64, str) or not b64:
        raise BadImage("'image' must be a non-empty base64 string")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage(f"'image' is not valid base64 ({e})") from None
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise BadImage(f"'image' is not a readable image ({e})") from None
    return img.convert("RGB")


def thumbnail(image: Image.Image | np.ndarray) -> np.ndarray:
    """(THUMB, THUMB, 3) uint8, area-averaged; for images as they come from CVAT."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return np.asarray(image.convert("RGB").resize((THUMB, THUMB), Image.BOX), np.uint8)


def distances(thumb: np.ndarray, thumbs: np.ndarray) -> np.ndarray:
    """Mean absolute difference (0..255) between one thumbnail and a stack of them."""
    if len(thumbs) == 0:
        return np.zeros(0)
    diff = np.abs(thumbs.astype(np.int16) - thumb.astype(np.int16)[None])
    return diff.reshape(len(thumbs), -1).mean(axis=1)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize (the engine's display size to CVAT's frame size)."""
    if mask.shape == (height, width):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(img) > 127


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive ``(xtl, ytl, xbr, ybr)`` of the foreground, None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def to_detector_mask(mask: np.ndarray) -> list[int] | None:
    """CVAT detector mask: flat 0/1 crop (row-major) + inclusive box; None when empty."""
    box = mask_box(mask)
    if box is None:
        return None
    xtl, ytl, xbr, ybr = box
    crop = mask[ytl:ybr + 1, xtl:xbr + 1].astype(np.uint8).ravel().tolist()
    return crop + [xtl, ytl, xbr, ybr]


def from_detector_mask(values: list[int], width: int, height: int) -> np.ndarray:
    """The inverse of :func:`to_detector_mask` (what CVAT does with a detector's mask)."""
    *flat, xtl, ytl, xbr, ybr = (int(v) for v in values)
    if not (0 <= xtl <= xbr < width and 0 <= ytl <= ybr < height):
        raise ValueError(f"mask box {[xtl, ytl, xbr, ybr]} outside a {width}x{height} frame")
    h, w = ybr - ytl + 1, xbr - xtl + 1
    if len(flat) != h * w:
        raise ValueError(f"mask crop has {len(flat)} values, box needs {h * w}")
    out = np.zeros((height, width), bool)
    out[ytl:ybr + 1, xtl:xbr + 1] = np.asarray(flat, np.uint8).reshape(h, w) != 0
    return out


def to_cvat_points(mask: np.ndarray) -> list[float]:
    """CVAT's mask RLE for API uploads (``cvat_sdk.masks.encode_mask``)."""
    from cvat_sdk.masks import encode_mask

    return [float(v) for v in encode_mask(np.asarray(mask, bool))]
