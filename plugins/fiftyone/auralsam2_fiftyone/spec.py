"""Which model to run: a small, JSON-able "model spec" resolved in one place.

``ModelSpec()`` is the bundled demo model that ships inside ``auralsam2_core``; released
weights are ``ModelSpec(sam2_config="sam2_hiera_l", sam2_checkpoint=..., fuser_checkpoint=...)``
(paths, or names that ``auralsam2_core.weights.fetch`` knows). Built models are cached per
process (one at a time), so repeated operator runs in the App or a delegated worker do not
rebuild them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

BUNDLED = "bundled"


@dataclass(frozen=True)
class ModelSpec:
    sam2_config: str = BUNDLED  # "bundled", a sam2 config name (sam2_hiera_l ...) or a yaml
    sam2_checkpoint: str | None = None
    fuser_checkpoint: str | None = None
    image_size: int | None = None  # None: the config's own (1024 for the released model)
    fuser_config: dict | None = field(default=None, hash=False)  # advanced / tests

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ModelSpec:
        """From operator params: ``model`` ("bundled" | "checkpoints") and the paths. Without
        any checkpoint the weights would be random: refused unless ``allow_random_weights``."""
        def text(key):
            v = params.get(key)
            return (str(v).strip() or None) if v is not None else None

        if (params.get("model") or BUNDLED) == BUNDLED:
            return cls()
        size = params.get("image_size")
        spec = cls(sam2_config=text("sam2_config") or "sam2_hiera_l",
                   sam2_checkpoint=text("sam2_checkpoint"),
                   fuser_checkpoint=text("fuser_checkpoint"),
                   image_size=int(size) if size else None,
                   fuser_config=params.get("fuser_config") or None)
        if not (spec.sam2_checkpoint or spec.fuser_checkpoint) and \
                not params.get("allow_random_weights"):
            raise ValueError("give sam2_checkpoint and fuser_checkpoint (paths to released "
                             "weights), or choose the bundled model")
        return spec

    def to_params(self) -> dict[str, Any]:
        if self.sam2_config == BUNDLED:
            return {"model": BUNDLED}
        params = {"model": "checkpoints", **{k: v for k, v in asdict(self).items()
                                             if v is not None}}
        if not (self.sam2_checkpoint or self.fuser_checkpoint):
            params["allow_random_weights"] = True
        return params

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        if self.sam2_config == BUNDLED:
            return "bundled demo model"
        parts = [self.sam2_config]
        parts += [f"{k}={v}" for k, v in (("sam2", self.sam2_checkpoint),
                                          ("fuser", self.fuser_checkpoint)) if v]
        if not (self.sam2_checkpoint or self.fuser_checkpoint):
            parts.append("random weights")
        return ", ".join(parts)


_lock = threading.Lock()
_cache: dict[tuple[str, str], Any] = {}


def resolve_model(spec: ModelSpec | None = None, device: str = "auto"):
    """The :class:`~auralsam2_core.model.AuralSAM2` for ``spec`` on ``device`` (cached)."""
    from auralsam2_core.build import build_auralsam2, resolve_device

    spec = spec or ModelSpec()
    key = (spec.key(), str(resolve_device(device)))
    with _lock:
        if key not in _cache:
            _cache.clear()  # one model at a time: they can be large
            _cache[key] = _build(spec, device, build_auralsam2)
        return _cache[key]


def _build(spec: ModelSpec, device: str, build_auralsam2):
    if spec.sam2_config == BUNDLED:
        return build_auralsam2(BUNDLED, device=device)
    from auralsam2_core.weights import fetch

    return build_auralsam2(
        spec.sam2_config, device=device, image_size=spec.image_size,
        fuser_config=spec.fuser_config,
        sam2_checkpoint=fetch(spec.sam2_checkpoint) if spec.sam2_checkpoint else None,
        fuser_checkpoint=fetch(spec.fuser_checkpoint) if spec.fuser_checkpoint else None)
