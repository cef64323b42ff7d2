"""``build_*`` functions: assemble SAM2, the fuser and AuralSAM2 from configs and weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from sam2.build_sam import build_sam2
from sam2.modeling.sam2_base import SAM2Base

from auralsam2_core.model_spec import BUNDLED, DEFAULT_SAM2_CONFIG
from auralsam2_core.modeling.fuser import AuralFuser
from auralsam2_core.modeling.model import AuralSAM2, MaskChoice
from auralsam2_core.modeling.text_encoder import TEXT_ENCODER_NAME, TextEncoder

#: Short names for the configs the ``sam2`` package ships (Hiera t/s/b+/l, SAM2 and SAM2.1).
SAM2_CONFIGS: dict[str, str] = {
    f"{family}_hiera_{size}": f"configs/{family}/{family}_hiera_{size}.yaml"
    for family in ("sam2", "sam2.1") for size in ("t", "s", "b+", "l")
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is available; "
                           "use --device cpu (or auto)")
    return device


def _config_name(config: str) -> str:
    if config in SAM2_CONFIGS:
        return SAM2_CONFIGS[config]
    if config in SAM2_CONFIGS.values():
        return config
    raise ValueError(f"unknown SAM2 config {config!r}; choose one of {sorted(SAM2_CONFIGS)} "
                     "or give a path to a .yaml file")


def _compose_external(path: Path, overrides: list[str]):
    """Build from a yaml outside the sam2 package, then restore sam2's own Hydra search path."""
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(path.parent.resolve()), version_base="1.2"):
            return build_sam2(path.name, device="cpu", mode="eval",
                              hydra_overrides_extra=overrides, apply_postprocessing=False)
    finally:
        GlobalHydra.instance().clear()
        initialize_config_module("sam2", version_base="1.2")


def build_sam2_model(config: str = DEFAULT_SAM2_CONFIG, checkpoint: str | os.PathLike | None
                     = None, *, image_size: int | None = None,
                     device: str | torch.device = "cpu") -> SAM2Base:
    """A SAM2 from a shipped config name (``sam2_hiera_t`` ... ``sam2.1_hiera_l``) or a yaml
    path, optionally at another ``image_size`` (a multiple of 32; tests use small sizes), with
    Meta's checkpoint (``{"model": state_dict}``) loaded strictly when given."""
    overrides: list[str] = []
    if image_size is not None:
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        g = image_size // 16
        overrides = [f"++model.image_size={image_size}",
                     f"++model.memory_attention.layer.self_attention.feat_sizes=[{g},{g}]",
                     f"++model.memory_attention.layer.cross_attention.feat_sizes=[{g},{g}]"]
    if str(config).endswith((".yaml", ".yml")) and Path(config).is_file():
        sam2 = _compose_external(Path(config), overrides)
    else:
        sam2 = build_sam2(_config_name(str(config)), device="cpu", mode="eval",
                          hydra_overrides_extra=overrides, apply_postprocessing=False)
    if checkpoint is not None:
        from auralsam2_core.modeling.checkpoint import (
            load_into,
            read_state_dict,
            sam2_checkpoint_filter,
        )

        load_into(sam2, sam2_checkpoint_filter(read_state_dict(checkpoint)),
                  what=f"SAM2 ({config})", source=str(checkpoint))
    return sam2.to(resolve_device(device)).eval()


def build_fuser(checkpoint: str | os.PathLike | None = None, config: dict | None = None,
                variant: str = "avs") -> AuralFuser:
    """The AuralFuser (authors' configuration unless ``config`` says otherwise; ``variant``
    ``"avs"`` or ``"refavs"``), with a released or trained checkpoint loaded strictly when
    given, through the variant's checkpoint filter."""
    fuser = AuralFuser.from_official_config(config, variant=variant)
    if checkpoint is not None:
        from auralsam2_core.modeling.checkpoint import (
            fuser_checkpoint_filter,
            load_into,
            read_state_dict,
            refavs_fuser_checkpoint_filter,
        )

        refavs = variant == "refavs"
        sd_filter = refavs_fuser_checkpoint_filter if refavs else fuser_checkpoint_filter
        load_into(fuser, sd_filter(read_state_dict(checkpoint)),
                  what="AuralFuser (Ref-AVS)" if refavs else "AuralFuser", source=str(checkpoint))
    return fuser


def bundled_model_dir() -> Path:
    """Folder of the bundled demo model (``auralsam2_core/data/demo_model``)."""
    from importlib.resources import files

    return Path(str(files("auralsam2_core").joinpath("data", "demo_model")))


def refer_model_dir() -> Path:
    """Folder of the bundled Ref-AVS demo model (``auralsam2_core/data/refer_demo_model``)."""
    from importlib.resources import files

    return Path(str(files("auralsam2_core").joinpath("data", "refer_demo_model")))


def bundled_model_info(verify: bool = True, root: Path | None = None) -> dict:
    """The bundled model's ``model.json`` (``root``: another bundle folder, e.g. the Ref-AVS
    one); with ``verify``, every file it lists is checked against its sha256 first (a
    damaged install fails loudly, never silently)."""
    import json

    from auralsam2_core.modeling.weights import sha256_file

    root = bundled_model_dir() if root is None else Path(root)
    meta_path = root / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"the bundled demo model is missing ({meta_path}); reinstall "
                                "the package or give --sam2-config/--fuser-checkpoint")
    info = json.loads(meta_path.read_text())
    if verify:
        for name, rec in info["files"].items():
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"bundled model file missing: {path}")
            digest = sha256_file(path)
            if digest != rec["sha256"]:
                raise RuntimeError(f"bundled model file {path} is damaged: sha256 {digest} "
                                   f"!= {rec['sha256']} recorded in {meta_path}")
    return info


def build_demo_model(device: str | torch.device = "auto",
                     mask_choice: MaskChoice | None = None) -> AuralSAM2:
    """The tiny AuralSAM2 shipped in the package (trained on synthetic clips; see
    ``data/demo_model/model.json``), sha256-verified, in eval mode. Runs offline."""
    from importlib.resources import files

    from auralsam2_core.modeling.checkpoint import (
        load_into,
        read_state_dict,
        sam2_checkpoint_filter,
    )

    info = bundled_model_info(verify=True)
    root = bundled_model_dir()
    yaml = Path(str(files("auralsam2_core").joinpath("configs", info["sam2_config"])))
    sam2 = build_sam2_model(str(yaml), None, image_size=info["image_size"], device="cpu")
    sam2_file = root / info["weights"]["sam2"]
    load_into(sam2, sam2_checkpoint_filter(read_state_dict(sam2_file)), what="SAM2 (bundled)",
              source=sam2_file)
    fuser = build_fuser(root / info["weights"]["fuser"], info["fuser_config"])
    choice = mask_choice or info.get("mask_choice", "iou_select")
    device = resolve_device(device)
    model = AuralSAM2(sam2, fuser, mask_choice=choice).to(device).eval()
    model.meta = {"sam2_config": f"{BUNDLED}:{info['name']}", "image_size": model.image_size,
                  "mask_choice": choice, "fuser_config": info["fuser_config"],
                  "checkpoints": {"sam2": _describe(sam2_file),
                                  "fuser": _describe(root / info["weights"]["fuser"])}}
    return model


def build_refer_demo_model(device: str | torch.device = "auto",
                           mask_choice: MaskChoice | None = None,
                           root: str | os.PathLike | None = None) -> AuralSAM2:
    """The tiny Ref-AVS AuralSAM2 shipped in the package (``data/refer_demo_model``: SAM2,
    fuser and its tiny word-level text encoder, trained on synthetic clips with expressions
    naming a shape; see its ``model.json``), every file sha256-verified before it is read,
    in eval mode. Runs offline. ``root``: another bundle folder of the same format."""
    from importlib.resources import files

    from auralsam2_core.modeling.checkpoint import (
        load_into,
        read_state_dict,
        sam2_checkpoint_filter,
    )
    from auralsam2_core.modeling.text_encoder import TextEncoder

    root = refer_model_dir() if root is None else Path(root)
    if not (root / "model.json").is_file():
        raise FileNotFoundError(
            f"the Ref-AVS demo model is not installed ({root}): reinstall the package (it "
            "ships there), train it with scripts/train_refer_demo_model.sh, or use the "
            "published Ref-AVS model (--variant refavs with its checkpoints)")
    info = bundled_model_info(verify=True, root=root)
    if info.get("variant") != "refavs":
        raise ValueError(f"{root} is not a Ref-AVS demo model (variant {info.get('variant')!r})")
    yaml = Path(str(files("auralsam2_core").joinpath("configs", info["sam2_config"])))
    sam2 = build_sam2_model(str(yaml), None, image_size=info["image_size"], device="cpu")
    sam2_file = root / info["weights"]["sam2"]
    load_into(sam2, sam2_checkpoint_filter(read_state_dict(sam2_file)), what="SAM2 (bundled)",
              source=sam2_file)
    fuser_file = root / info["weights"]["fuser"]
    fuser = build_fuser(fuser_file, info["fuser_config"], variant="refavs")
    encoder = TextEncoder.from_pretrained(root / info["text_encoder"]["folder"])
    encoder.source = f"{BUNDLED}:{info['name']}/text_encoder"
    choice = mask_choice or info.get("mask_choice", "iou_select")
    model = AuralSAM2(sam2, fuser, mask_choice=choice,
                      text_encoder=encoder).to(resolve_device(device)).eval()
    model.meta = {"sam2_config": f"{BUNDLED}:{info['name']}", "image_size": model.image_size,
                  "mask_choice": choice, "fuser_config": info["fuser_config"],
                  "variant": "refavs", "text_encoder": encoder.source,
                  "checkpoints": {"sam2": _describe(sam2_file), "fuser": _describe(fuser_file)}}
    return model


def build_auralsam2(sam2_config: str = DEFAULT_SAM2_CONFIG, *,
                    sam2_checkpoint: str | os.PathLike | None = None,
                    fuser_checkpoint: str | os.PathLike | None = None,
                    fuser_config: dict | None = None, image_size: int | None = None,
                    device: str | torch.device = "auto",
                    mask_choice: MaskChoice = "iou_select", variant: str = "avs",
                    text_encoder: str | os.PathLike | TextEncoder | None = None) -> AuralSAM2:
    """SAM2 + AuralFuser, in eval mode on ``device`` ("auto": CUDA when available).

    ``variant="refavs"`` builds the Ref-AVS model (text-referred; e.g. with
    ``fuser_checkpoint="auralsam2_refavs_best.pth"``) with a frozen text encoder:
    ``text_encoder`` is a :class:`TextEncoder`, a folder, or a registry name (default
    ``distilroberta-base``, loaded from the Hugging Face hub cache, never downloaded here).
    ``sam2_config="bundled"`` gives the demo model shipped in the package
    (:func:`build_demo_model`; with ``variant="refavs"`` the Ref-AVS demo model,
    :func:`build_refer_demo_model`); it takes no checkpoints, configs or image size."""
    if variant not in ("avs", "refavs"):
        raise ValueError(f"variant must be 'avs' or 'refavs', got {variant!r}")
    if text_encoder is not None and variant != "refavs":
        raise ValueError("a text encoder is only for variant='refavs'")
    if sam2_config == BUNDLED:
        if sam2_checkpoint or fuser_checkpoint or fuser_config or image_size:
            raise ValueError("the bundled demo model has its own weights, fuser config and "
                             "input size; give --sam2-config to use other ones")
        if text_encoder is not None:
            raise ValueError("the bundled Ref-AVS demo model has its own text encoder")
        if variant == "refavs":
            return build_refer_demo_model(device, mask_choice)
        return build_demo_model(device, mask_choice)
    device = resolve_device(device)
    encoder = None
    if variant == "refavs":  # first: a missing text encoder fails before the big builds
        from auralsam2_core.modeling.text_encoder import load_text_encoder

        encoder = load_text_encoder(TEXT_ENCODER_NAME if text_encoder is None else text_encoder)
    sam2 = build_sam2_model(sam2_config, sam2_checkpoint, image_size=image_size, device=device)
    fuser = build_fuser(fuser_checkpoint, fuser_config, variant=variant)
    model = AuralSAM2(sam2, fuser, mask_choice=mask_choice,
                      text_encoder=encoder).to(device).eval()
    model.meta = {"sam2_config": str(sam2_config), "image_size": model.image_size,
                  "mask_choice": mask_choice, "fuser_config": fuser_config,
                  "checkpoints": {"sam2": _describe(sam2_checkpoint),
                                  "fuser": _describe(fuser_checkpoint)}}
    if encoder is not None:
        model.meta.update(variant=variant, text_encoder=encoder.source)
    return model


def _describe(checkpoint) -> dict | None:
    """Where weights came from, with their sha256, for the results' provenance."""
    if checkpoint is None:
        return None
    from auralsam2_core.modeling.weights import sha256_file

    return {"path": str(Path(checkpoint).resolve()), "sha256": sha256_file(checkpoint)}
