"""Keeps what a pre-labelling pass computed per clip, so that an annotator's click answers fast.

A click (or box) changes only SAM2's tracking: the image encoder's features and the fuser's
prompts of the frames it re-propagates are those the first pass computed
(:class:`~auralsam2_core.modeling.model.ClipFeatures`).
:func:`~auralsam2_core.inference.engine.prelabel` given a
:class:`FeatureCache` stores them per clip and reuses them; a refinement then runs only SAM2's
memory attention, prompted mask decoder and memory encoder on the frames it touches, and
needs no decoding either. Results are the same as without the cache (tests/test_feature_cache).

The cache is bounded by bytes (the tensors' storage, on the model's device), least recently
used clips go first, and it holds one model's products at a time (a fine-tuned or another model
empties it). Entries are keyed by the file (path, size, modification time), its audio track, the
clip length and stride, the clip's first frame and the query (Ref-AVS: the fuser's prompts depend
on the text; None for the AVS model).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from auralsam2_core.modeling.model import AuralSAM2, ClipFeatures

#: AURALSAM2_REFINE_CACHE_MB default: at 1024 px one frame takes ~29 MB (fp32), at 256 px ~2 MB.
DEFAULT_MB = 1024.0


@dataclass(frozen=True)
class CachedClip:
    indices: tuple[int, ...]  # frames of the clip (0-based, presentation order)
    times: tuple[float, ...]  # their times (seconds from the first frame)
    features: ClipFeatures
    nbytes: int


def nbytes(tensors: list[torch.Tensor]) -> int:
    """Bytes held by ``tensors``: each distinct storage once (views share theirs)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def model_key(model: AuralSAM2) -> tuple:
    """Changes when the model or any of its weights does (in-place updates, such as
    fine-tuning or loading a state dict, bump a tensor's version counter; a replaced tensor
    starts a new count, so its identity counts too). Read on every cache access: a plain walk
    of the module tree (``parameters()`` builds names and de-duplicates: 3.5x slower, 2 ms of a
    ~20 ms click at 256 px)."""
    versions = idents = 0
    stack: list[torch.nn.Module | None] = [model]
    while stack:
        module = stack.pop()
        if module is None:
            continue
        for t in [*module._parameters.values(), *module._buffers.values()]:
            if t is not None:
                versions += t._version
                idents += id(t)
        stack += module._modules.values()
    return (id(model), versions, idents)


def video_key(video: str | os.PathLike, audio_track: int | None) -> tuple:
    """The file as it is now (another file under the same name is another video)."""
    st = os.stat(video)
    return (os.path.realpath(video), st.st_size, st.st_mtime_ns, audio_track)


class FeatureCache:
    """LRU of :class:`CachedClip` bounded by ``max_bytes`` (0: keeps nothing)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"the cache bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._clips: OrderedDict[Hashable, CachedClip] = OrderedDict()
        self._model: tuple | None = None
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @classmethod
    def from_mb(cls, mb: float) -> FeatureCache:
        return cls(int(mb * (1 << 20)))

    def __len__(self) -> int:
        return len(self._clips)

    def _for_model(self, model: AuralSAM2) -> None:
        key = model_key(model)
        if key != self._model:
            self._clips.clear()
            self.bytes, self._model = 0, key

    def get(self, model: AuralSAM2, key: Hashable) -> CachedClip | None:
        with self._lock:
            self._for_model(model)
            clip = self._clips.get(key)
            if clip is None:
                self.misses += 1
                return None
            self._clips.move_to_end(key)
            self.hits += 1
            return clip

    def put(self, model: AuralSAM2, key: Hashable, indices, times,
            features: ClipFeatures) -> bool:
        """Keep ``features`` unless they alone exceed the bound (then False); evicts the
        least recently used clips to stay within it."""
        size = nbytes(features.tensors())
        with self._lock:
            self._for_model(model)
            if size > self.max_bytes:
                return False
            old = self._clips.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            while self._clips and self.bytes + size > self.max_bytes:
                _, gone = self._clips.popitem(last=False)
                self.bytes -= gone.nbytes
                self.evictions += 1
            self._clips[key] = CachedClip(tuple(indices), tuple(times), features, size)
            self.bytes += size
            return True

    def clear(self) -> None:
        with self._lock:
            self._clips.clear()
            self.bytes = 0

    def stats(self) -> dict:
        return {"clips": len(self._clips), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
