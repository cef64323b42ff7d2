"""What every model-running command shares: the model options and the one way from them to
a built model (through :class:`~auralsam2_core.model_spec.ModelSpec`)."""

from __future__ import annotations

import argparse
import sys


def add_model_options(c: argparse.ArgumentParser, image_size: int) -> None:
    from auralsam2_core.model_spec import CLI_DEFAULTS, DEFAULT_SAM2_CONFIG
    from auralsam2_core.modeling.build import SAM2_CONFIGS
    from auralsam2_core.modeling.model import MASK_CHOICES

    c.add_argument("--sam2-config", default=None,
                   help=f"one of {', '.join(SAM2_CONFIGS)}, a yaml path, or 'bundled' "
                        f"(published model: {DEFAULT_SAM2_CONFIG}). Default: the bundled "
                        "demo model when no checkpoint is given, else "
                        f"{CLI_DEFAULTS.config_with_weights}")
    c.add_argument("--sam2-checkpoint", help="Meta SAM2 checkpoint (path, URL or registry "
                                             "name, e.g. sam2_hiera_large)")
    c.add_argument("--fuser-checkpoint", help="AuralSAM2 fuser checkpoint (e.g. "
                                              "auralsam2_avs_v1m)")
    c.add_argument("--image-size", type=int, default=None,
                   help=f"SAM2 input size (default {image_size}; published model: 1024; "
                        "the bundled model has its own)")
    c.set_defaults(default_image_size=image_size)
    c.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    c.add_argument("--mask-choice", default="iou_select", choices=MASK_CHOICES)


def model_spec(args, refavs: bool = False):
    """The model the flags name: THE defaulting rule (:meth:`ModelSpec.resolved`) with the
    command line's defaults (``sam2_hiera_t`` for AVS, ``sam2_hiera_l`` for Ref-AVS, and the
    command's input size)."""
    from dataclasses import replace

    from auralsam2_core.model_spec import CLI_DEFAULTS, CLI_REFAVS_DEFAULTS, ModelSpec

    defaults = replace(CLI_REFAVS_DEFAULTS if refavs else CLI_DEFAULTS,
                       image_size=args.default_image_size)
    return ModelSpec.resolved(defaults, sam2_config=args.sam2_config,
                              sam2_checkpoint=args.sam2_checkpoint,
                              fuser_checkpoint=args.fuser_checkpoint,
                              image_size=args.image_size, device=args.device,
                              mask_choice=args.mask_choice,
                              variant="refavs" if refavs else None,
                              text_encoder=getattr(args, "text_encoder", None) if refavs else None)


def warn_random_weights(spec) -> None:
    if not (spec.sam2_checkpoint and spec.fuser_checkpoint):
        print("auralsam2: warning: no --sam2-checkpoint/--fuser-checkpoint given; using random "
              "weights, so the masks are meaningless", file=sys.stderr)


def weights_label(model, part: str, given: str | None) -> str:
    if given:
        return given
    desc = (model.meta.get("checkpoints") or {}).get(part)
    return desc["path"] if desc else "random init"


def _check_bundled_refavs(spec) -> None:
    from auralsam2_core.modeling.build import refer_model_dir

    if spec.image_size is not None or spec.sam2_checkpoint or spec.fuser_checkpoint \
            or spec.text_encoder:
        raise ValueError("the bundled Ref-AVS demo model has its own weights, input size "
                         "and text encoder; give --sam2-config with the checkpoints for "
                         "other ones")
    if not (refer_model_dir() / "model.json").is_file():
        raise ValueError("queries need a Ref-AVS model, and the bundled Ref-AVS demo model "
                         f"is not installed ({refer_model_dir()}); give the published one: "
                         "--sam2-config sam2_hiera_l --sam2-checkpoint sam2_hiera_large "
                         "--fuser-checkpoint auralsam2_refavs_best (text encoder: "
                         "`auralsam2 download distilroberta-base`)")
    print("auralsam2: using the bundled Ref-AVS demo model (tiny, trained on synthetic "
          "shapes; it knows only a few words)", file=sys.stderr)


def _check_bundled_avs(spec) -> None:
    if spec.image_size is not None:
        raise ValueError("the bundled demo model runs at its own input size; drop "
                         "--image-size, or give --sam2-config to build another model")
    if spec.sam2_checkpoint or spec.fuser_checkpoint:
        raise ValueError("the bundled demo model has its own weights; give --sam2-config "
                         "with --sam2-checkpoint/--fuser-checkpoint for other ones")
    print("auralsam2: using the bundled demo model (tiny, trained on synthetic clips; "
          "give --sam2-config/--*-checkpoint for the published model)", file=sys.stderr)


def build_model(args):
    """The bundled demo model unless a SAM2 config, a checkpoint or (AVS) an input size is
    given; ``prelabel --query`` (``--variant refavs``): the Ref-AVS one."""
    refavs = getattr(args, "variant", None) == "refavs" and args.command == "prelabel"
    spec = model_spec(args, refavs)
    if spec.bundled:
        (_check_bundled_refavs if refavs else _check_bundled_avs)(spec)
    else:
        warn_random_weights(spec)
    return spec.build()
