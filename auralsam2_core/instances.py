"""Split one sounding mask into instances, tracked across frames with stable ids.

The AVS model predicts one mask per frame: the union of everything that sounds. When two
objects sound at once, a single box around that union spans the empty space between them.
:class:`InstanceTracker` cuts each frame's mask into its connected parts (8-connected, at
least ``min_area`` of the frame) and gives each part the id of the previous frame's part it
overlaps most (IoU at least ``min_iou``, one-to-one, largest overlaps first), else a new id.
A part that disappears keeps its id for ``patience`` frames, so a flicker does not renumber.
The text-referred model (Ref-AVS) is the way to get objects *by class*; this only separates
them by space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


def connected_parts(mask: np.ndarray, min_area: float = 0.002) -> list[np.ndarray]:
    """The 8-connected parts of a boolean ``(H, W)`` mask covering at least ``min_area``
    (a fraction of the frame), largest first."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = [i + 1 for i in np.argsort(-areas, kind="stable")
            if areas[i] >= min_area * mask.size]
    return [labels == k for k in keep]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    return float(inter / (a.sum() + b.sum() - inter)) if inter else 0.0


@dataclass
class InstanceTracker:
    min_area: float = 0.002  # fraction of the frame a part must cover
    min_iou: float = 0.1  # overlap with the previous part that keeps its id
    patience: int = 5  # frames a vanished instance's id waits for it to come back
    _last: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict, repr=False)
    _next_id: int = field(default=1, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.min_area < 1 or not 0 < self.min_iou <= 1 or self.patience < 0:
            raise ValueError("min_area must be in [0, 1), min_iou in (0, 1], patience >= 0")

    def update(self, frame: int, mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(instance id, part mask)`` for this frame's mask, ids stable across frames."""
        parts = connected_parts(mask, self.min_area)
        self._last = {i: (f, m) for i, (f, m) in self._last.items()
                      if frame - f <= self.patience + 1}
        pairs = sorted(((_iou(p, m), j, i) for j, p in enumerate(parts)
                        for i, (_f, m) in self._last.items()), reverse=True)
        taken_parts: set[int] = set()
        taken_ids: set[int] = set()
        ids: dict[int, int] = {}
        for iou, j, i in pairs:
            if iou < self.min_iou:
                break
            if j in taken_parts or i in taken_ids:
                continue
            ids[j] = i
            taken_parts.add(j)
            taken_ids.add(i)
        out = []
        for j, part in enumerate(parts):
            if j not in ids:
                ids[j] = self._next_id
                self._next_id += 1
            self._last[ids[j]] = (frame, part)
            out.append((ids[j], part))
        return sorted(out, key=lambda x: x[0])
