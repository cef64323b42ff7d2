"""Split one sounding mask into instances, tracked across frames with stable ids.

The AVS model predicts one mask per frame: the union of everything that sounds. When two
objects sound at once, a single box around that union spans the empty space between them.
:class:`InstanceTracker` cuts each frame's mask into its connected parts (8-connected, at
least ``min_area`` of the frame) and gives each part the id of the previous frame's part it
overlaps most (IoU at least ``min_iou``, one-to-one, largest overlaps first), else a new id.
A part that disappears keeps its id for ``patience`` labelled frames (updates, so a stride
does not shorten it), so a flicker does not renumber.
The text-referred model (Ref-AVS) is the way to get objects *by class*; this only separates
them by space.

Adapters call :func:`frame_instances` (streaming, per frame) or :func:`instance_tracks` (per
instance) on ``(frame, mask)`` pairs, e.g. ``results.frame_masks(doc)``; the setting is read by
:func:`auralsam2_core.env.instances` (``AURALSAM2_INSTANCES``, ``AURALSAM2_MIN_INSTANCE_AREA``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)
DEFAULT_MIN_AREA = 0.002  # fraction of the frame: 0.2 %, about 25 x 25 px of 640 x 480


def connected_parts(mask: np.ndarray, min_area: float = DEFAULT_MIN_AREA) -> list[np.ndarray]:
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
    min_area: float = DEFAULT_MIN_AREA  # fraction of the frame a part must cover
    min_iou: float = 0.1  # overlap with the previous part that keeps its id
    patience: int = 5  # labelled frames a vanished instance's id waits for it to come back
    _last: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict, repr=False)
    _next_id: int = field(default=1, repr=False)
    _step: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.min_area < 1 or not 0 < self.min_iou <= 1 or self.patience < 0:
            raise ValueError("min_area must be in [0, 1), min_iou in (0, 1], patience >= 0")

    def update(self, mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(instance id, part mask)`` for the next labelled frame's mask (ids ascending),
        ids stable across frames."""
        self._step += 1
        step = self._step
        parts = connected_parts(mask, self.min_area)
        self._last = {i: (s, m) for i, (s, m) in self._last.items()
                      if step - s <= self.patience + 1}
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
            self._last[ids[j]] = (step, part)
            out.append((ids[j], part))
        return sorted(out, key=lambda x: x[0])


def frame_instances(frames: Iterable[tuple[int, np.ndarray]], *,
                    min_area: float = DEFAULT_MIN_AREA
                    ) -> Iterator[tuple[int, list[tuple[int, np.ndarray]]]]:
    """``(frame, [(instance id, part mask), ...])`` for each ``(frame, mask)`` in order (a
    frame that is not sounding should come as an empty mask, so the ids' patience counts it)."""
    tracker = InstanceTracker(min_area=min_area)
    for frame, mask in frames:
        yield frame, tracker.update(mask)


def instance_tracks(frames: Iterable[tuple[int, np.ndarray]], *,
                    min_area: float = DEFAULT_MIN_AREA,
                    keep: Callable[[np.ndarray], object] | None = None
                    ) -> dict[int, list[tuple[int, object]]]:
    """``{instance id: [(frame, part mask), ...]}`` (frames in input order, ids ascending).
    ``keep`` maps each part to what is stored instead of the mask (e.g. its box, so that a long
    video holds no full-frame masks)."""
    tracks: dict[int, list[tuple[int, object]]] = {}
    for frame, parts in frame_instances(frames, min_area=min_area):
        for i, part in parts:
            tracks.setdefault(i, []).append((frame, part if keep is None else keep(part)))
    return dict(sorted(tracks.items()))
