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

from auralsam2_core.model_spec import BUNDLED, DEFAULT_SAM2_CONFIG, VARIANTS, ModelSpec, load_model

__all__ = ["BUNDLED", "ModelSpec", "describe", "resolve_model", "spec_from_params",
           "spec_to_params", "variant_from_params"]


def variant_from_params(params: dict[str, Any]) -> str:
    """``variant``: ``avs`` (one ``sounding`` label) or ``refavs`` (the project's classes);
    not given: ``refavs`` when classes (or a field to take them from) are given, else
    ``avs``."""
    variant = params.get("variant")
    if variant in (None, ""):
        return "refavs" if params.get("classes") or params.get("classes_field") else "avs"
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'avs' (one 'sounding' label) or 'refavs' (the "
                         f"dataset's classes), got {variant!r}")
    return variant


def spec_from_params(params: dict[str, Any]) -> ModelSpec:
    """From operator params: ``model`` ("bundled" | "checkpoints"), the paths, and
    ``variant`` (:func:`variant_from_params`; ``refavs`` with the bundled choice is the bundled
    Ref-AVS demo model; with checkpoints, ``text_encoder`` names its text encoder). Without
    any checkpoint the weights would be random: refused unless ``allow_random_weights``."""
    def text(key):
        v = params.get(key)
        return (str(v).strip() or None) if v is not None else None

    variant = variant_from_params(params)
    if (params.get("model") or BUNDLED) == BUNDLED:
        return ModelSpec(variant=variant)
    size = params.get("image_size")
    spec = ModelSpec(sam2_config=text("sam2_config") or DEFAULT_SAM2_CONFIG,
                     sam2_checkpoint=text("sam2_checkpoint"),
                     fuser_checkpoint=text("fuser_checkpoint"),
                     image_size=int(size) if size else None,
                     fuser_config=params.get("fuser_config") or None, variant=variant,
                     text_encoder=text("text_encoder") if variant == "refavs" else None)
    if not (spec.sam2_checkpoint or spec.fuser_checkpoint) and \
            not params.get("allow_random_weights"):
        raise ValueError("give sam2_checkpoint and fuser_checkpoint (paths to released "
                         "weights), or choose the bundled model")
    return spec


def spec_to_params(spec: ModelSpec) -> dict[str, Any]:
    """The operator params that select ``spec`` (its device is the operator's own param)."""
    variant = {"variant": spec.variant} if spec.variant != "avs" else {}
    if spec.bundled:
        return {"model": BUNDLED, **variant}
    params = {"model": "checkpoints", **variant, **{k: getattr(spec, k) for k in (
        "sam2_config", "sam2_checkpoint", "fuser_checkpoint", "image_size", "text_encoder")
        if getattr(spec, k) is not None}}
    if spec.fuser_config:
        params["fuser_config"] = spec.fuser_config_dict
    if not (spec.sam2_checkpoint or spec.fuser_checkpoint):
        params["allow_random_weights"] = True
    return params


def check_available(spec: ModelSpec) -> None:
    """FileNotFoundError, said plainly, when ``spec`` is the bundled Ref-AVS demo model and
    its folder is missing."""
    if spec.bundled and spec.variant == "refavs":
        from auralsam2_core.modeling.build import refer_model_dir

        if not (refer_model_dir() / "model.json").is_file():
            raise FileNotFoundError(
                "the bundled Ref-AVS demo model is not installed (reinstall the package): choose "
                "released weights (model: checkpoints, with a Ref-AVS fuser and its text "
                "encoder), or pre-label without classes")


def describe(spec: ModelSpec) -> str:
    """For people (the run summary's ``model``): which model, Ref-AVS said so."""
    if spec.bundled and spec.variant == "refavs":
        return "bundled Ref-AVS demo model"
    return spec.describe()


def resolve_model(spec: ModelSpec | None = None, device: str = "auto"):
    """The :class:`~auralsam2_core.modeling.model.AuralSAM2` for ``spec`` on ``device`` (cached)."""
    return load_model((spec or ModelSpec()).replace(device=device))
