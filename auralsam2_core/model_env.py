"""Which model an adapter or service runs, chosen by environment variables (or overrides), and
the one cached function that builds it. Every platform adapter reads the same variables, so a
deployment names its weights once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ServedModel:
    sam2_config: str = "bundled"
    sam2_checkpoint: str | None = None
    fuser_checkpoint: str | None = None
    fuser_config: str | None = None  # JSON text (hashable, so specs can key a cache)
    image_size: int | None = None
    device: str = "auto"
    variant: str = "avs"  # "refavs": the text-referred model (jobs then name queries)
    text_encoder: str | None = None  # refavs: registry name or folder (default distilroberta)

    def __post_init__(self) -> None:
        if self.variant not in ("avs", "refavs"):
            raise ValueError(f"variant must be 'avs' or 'refavs', got {self.variant!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> ServedModel:
        """``AURALSAM2_SAM2_CONFIG`` (default: the bundled demo model when no checkpoint is
        given, else the published ``sam2_hiera_l``), ``AURALSAM2_SAM2_CHECKPOINT``,
        ``AURALSAM2_FUSER_CHECKPOINT`` (paths, URLs or registry names),
        ``AURALSAM2_FUSER_CONFIG`` (JSON), ``AURALSAM2_IMAGE_SIZE``, ``AURALSAM2_DEVICE``."""
        env = os.environ if env is None else env
        values = dict(
            sam2_config=env.get("AURALSAM2_SAM2_CONFIG") or None,
            sam2_checkpoint=env.get("AURALSAM2_SAM2_CHECKPOINT") or None,
            fuser_checkpoint=env.get("AURALSAM2_FUSER_CHECKPOINT") or None,
            fuser_config=env.get("AURALSAM2_FUSER_CONFIG") or None,
            image_size=int(env["AURALSAM2_IMAGE_SIZE"]) if env.get("AURALSAM2_IMAGE_SIZE")
            else None,
            device=env.get("AURALSAM2_DEVICE") or "auto",
            variant=env.get("AURALSAM2_VARIANT") or "avs",
            text_encoder=env.get("AURALSAM2_TEXT_ENCODER") or None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["sam2_config"] is None:
            weights = values["sam2_checkpoint"] or values["fuser_checkpoint"]
            values["sam2_config"] = "sam2_hiera_l" if weights else "bundled"
        return cls(**values)


    def identity(self) -> str:
        """A short, stable name for these weights (model versions, cache keys), computed
        without loading anything: the bundled model's weight hash, else a hash of the
        spec's names (a checkpoint at a new path or with new contents should be given a
        new name by the deployment)."""
        if self.sam2_config == "bundled":
            from .build import bundled_model_info, refer_model_dir

            refer = self.variant == "refavs"
            info = bundled_model_info(verify=False, root=refer_model_dir() if refer else None)
            sha = info['files'][info['weights']['fuser']]['sha256'][:8]
            return f"bundled-{'refavs-' if refer else ''}{sha}"
        key = json.dumps([self.sam2_config, self.sam2_checkpoint, self.fuser_checkpoint,
                          self.fuser_config, self.image_size]
                         + ([self.variant, self.text_encoder] if self.variant != "avs" else []))
        stem = os.path.splitext(os.path.basename(self.sam2_config))[0]
        return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def add_model_arguments(parser) -> None:
    """The model flags every command that serves a model takes (overriding ``AURALSAM2_*``)."""
    parser.add_argument("--sam2-config", default=None,
                        help="SAM2 config name or yaml, or 'bundled' (default: the bundled demo "
                             "model unless checkpoints are given, then sam2_hiera_l)")
    parser.add_argument("--sam2-checkpoint", default=None,
                        help="SAM2 checkpoint (path, URL or registry name)")
    parser.add_argument("--fuser-checkpoint", default=None,
                        help="fuser checkpoint (path, URL or registry name)")
    parser.add_argument("--fuser-config", default=None, help="fuser config as JSON")
    parser.add_argument("--image-size", type=int, default=None, help="SAM2 input size")
    parser.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    parser.add_argument("--variant", choices=("avs", "refavs"), default=None,
                        help="refavs: the Ref-AVS model, segmenting the objects each job names "
                             "(AURALSAM2_VARIANT; default avs)")
    parser.add_argument("--text-encoder", default=None,
                        help="refavs: text encoder, registry name or folder "
                             "(AURALSAM2_TEXT_ENCODER; default distilroberta-base)")


def served_model_from_args(args) -> ServedModel:
    """:class:`ServedModel` from the environment, overridden by :func:`add_model_arguments`."""
    return ServedModel.from_env(
        sam2_config=args.sam2_config, sam2_checkpoint=args.sam2_checkpoint,
        fuser_checkpoint=args.fuser_checkpoint, fuser_config=args.fuser_config,
        image_size=args.image_size, device=args.device, variant=args.variant,
        text_encoder=args.text_encoder)


@functools.lru_cache(maxsize=2)
def load_served_model(spec: ServedModel):
    """Build (once per process and spec) the model an adapter or service runs."""
    from auralsam2_core.build import build_auralsam2
    from auralsam2_core.weights import fetch

    if spec.sam2_config == "bundled":
        if spec.sam2_checkpoint or spec.fuser_checkpoint or spec.image_size or spec.fuser_config \
                or spec.text_encoder:
            raise ValueError("the bundled demo model has its own weights and input size; set "
                             "AURALSAM2_SAM2_CONFIG to use other ones")
        return build_auralsam2("bundled", device=spec.device, variant=spec.variant)
    text = {"text_encoder": spec.text_encoder} if spec.text_encoder else {}
    return build_auralsam2(
        spec.sam2_config,
        sam2_checkpoint=fetch(spec.sam2_checkpoint) if spec.sam2_checkpoint else None,
        fuser_checkpoint=fetch(spec.fuser_checkpoint) if spec.fuser_checkpoint else None,
        fuser_config=json.loads(spec.fuser_config) if spec.fuser_config else None,
        image_size=spec.image_size, device=spec.device, variant=spec.variant, **text)
