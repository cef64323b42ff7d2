"""The operator's model choice as :class:`~auralsam2_core.model_spec.ModelSpec` (the one spec
every entry point uses) and back, and the model it names.

``ModelSpec()`` is the bundled demo model that ships inside ``auralsam2_core``; released
weights are ``ModelSpec("sam2_hiera_l", sam2_checkpoint=..., fuser_checkpoint=...)`` (paths,
or names that ``auralsam2_core.modeling.weights.fetch`` knows). Built models are cached per process
(:func:`~auralsam2_core.model_spec.load_model`), so repeated operator runs in the App or a
delegated worker do not rebuild them.
"""

from __future__ import annotations

from typing import Any

from auralsam2_core.model_spec import BUNDLED, DEFAULT_SAM2_CONFIG, ModelSpec, load_model

__all__ = ["BUNDLED", "ModelSpec", "resolve_model", "spec_from_params", "spec_to_params"]


def spec_from_params(params: dict[str, Any]) -> ModelSpec:
    """From operator params: ``model`` ("bundled" | "checkpoints") and the paths. Without any
    checkpoint the weights would be random: refused unless ``allow_random_weights``."""
    def text(key):
        v = params.get(key)
        return (str(v).strip() or None) if v is not None else None

    if (params.get("model") or BUNDLED) == BUNDLED:
        return ModelSpec()
    size = params.get("image_size")
    spec = ModelSpec(sam2_config=text("sam2_config") or DEFAULT_SAM2_CONFIG,
                     sam2_checkpoint=text("sam2_checkpoint"),
                     fuser_checkpoint=text("fuser_checkpoint"),
                     image_size=int(size) if size else None,
                     fuser_config=params.get("fuser_config") or None)
    if not (spec.sam2_checkpoint or spec.fuser_checkpoint) and \
            not params.get("allow_random_weights"):
        raise ValueError("give sam2_checkpoint and fuser_checkpoint (paths to released "
                         "weights), or choose the bundled model")
    return spec


def spec_to_params(spec: ModelSpec) -> dict[str, Any]:
    """The operator params that select ``spec`` (its device is the operator's own param)."""
    if spec.bundled:
        return {"model": BUNDLED}
    params = {"model": "checkpoints", **{k: getattr(spec, k) for k in (
        "sam2_config", "sam2_checkpoint", "fuser_checkpoint", "image_size")
        if getattr(spec, k) is not None}}
    if spec.fuser_config:
        params["fuser_config"] = spec.fuser_config_dict
    if not (spec.sam2_checkpoint or spec.fuser_checkpoint):
        params["allow_random_weights"] = True
    return params


def resolve_model(spec: ModelSpec | None = None, device: str = "auto"):
    """The :class:`~auralsam2_core.modeling.model.AuralSAM2` for ``spec`` on ``device`` (cached)."""
    return load_model((spec or ModelSpec()).replace(device=device))
