"""Which model runs: the one description the CLI, the deployments' environment, the service,
every platform adapter and training use, and the one rule that fills in what is not given.

A :class:`ModelSpec` names the SAM2 config, the input size, the checkpoints, the fuser config,
the mask choice, the variant (``avs`` / ``refavs``) and the text encoder. Entry points read it
from their own inputs (:meth:`ModelSpec.from_env` for ``AURALSAM2_*``, the CLI from its flags,
FiftyOne from operator params) and complete it with :meth:`ModelSpec.resolved`, whose
:class:`Defaults` say, per entry point, what "no SAM2 config" means. :meth:`ModelSpec.identity`
names the weights the same way everywhere (model versions, result caches).

This module imports neither torch nor sam2: :meth:`ModelSpec.build` imports them when a model
is needed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

#: ``sam2_config`` of the tiny demo model shipped inside the package (weights included).
BUNDLED = "bundled"
#: ``sam2_config`` for training: the bundled demo model's architecture (its SAM2 yaml), with
#: the weights the spec's checkpoints give (random without).
DEMO = "demo"
#: The bundled demo model's SAM2 yaml, shipped in ``auralsam2_core/configs``.
DEMO_SAM2_YAML = "auralsam2_demo_tiny.yaml"
#: The published AuralSAM2 backbone (the released fusers pair with ``sam2_hiera_large``).
DEFAULT_SAM2_CONFIG = "sam2_hiera_l"
VARIANTS = ("avs", "refavs")
#: The variables :meth:`ModelSpec.from_env` reads, by field.
ENV_VARS = {
    "sam2_config": "AURALSAM2_SAM2_CONFIG",
    "sam2_checkpoint": "AURALSAM2_SAM2_CHECKPOINT",
    "fuser_checkpoint": "AURALSAM2_FUSER_CHECKPOINT",
    "fuser_config": "AURALSAM2_FUSER_CONFIG",
    "image_size": "AURALSAM2_IMAGE_SIZE",
    "device": "AURALSAM2_DEVICE",
    "variant": "AURALSAM2_VARIANT",
    "text_encoder": "AURALSAM2_TEXT_ENCODER",
}


@dataclass(frozen=True)
class Defaults:
    """What an entry point builds when no SAM2 config is given: the bundled demo model, unless
    weights are named (or, with ``image_size_selects_config``, an input size alone), then
    ``config_with_weights``; a built (not bundled) model without an input size gets
    ``image_size`` (None: the config's own)."""

    config_with_weights: str = DEFAULT_SAM2_CONFIG
    image_size_selects_config: bool = False
    image_size: int | None = None


#: Deployments (``AURALSAM2_*``, the service, the CVAT / Label Studio adapters, batch) and
#: FiftyOne's "released weights": checkpoints mean the published backbone.
ENV_DEFAULTS = Defaults()
#: ``auralsam2 check`` / ``prelabel`` / ``demo`` (AVS): checkpoints or ``--image-size`` alone
#: build the smallest published architecture, ``sam2_hiera_t`` (the command's size applies).
CLI_DEFAULTS = Defaults("sam2_hiera_t", image_size_selects_config=True)
#: ``auralsam2 prelabel --query`` (Ref-AVS): the released Ref-AVS fuser pairs with hiera-L.
CLI_REFAVS_DEFAULTS = Defaults(DEFAULT_SAM2_CONFIG)


@dataclass(frozen=True)
class ModelSpec:
    """Frozen and hashable (it keys the model cache); ``fuser_config`` is JSON text (a dict
    given here is converted)."""

    sam2_config: str = BUNDLED  # "bundled", "demo", a shipped name (sam2_hiera_l ...) or a yaml
    sam2_checkpoint: str | None = None  # path, URL or weight-registry name
    fuser_checkpoint: str | None = None  # path, URL or weight-registry name
    fuser_config: str | None = None  # JSON text; None: the authors' fuser of the variant
    image_size: int | None = None  # None: the config's own (1024 for the published model)
    device: str = "auto"  # auto (CUDA when available), cpu, cuda
    mask_choice: str | None = None  # None: the model's own (iou_select; the bundled model.json)
    variant: str = "avs"  # "avs" (audio only) or "refavs" (audio + a referring expression)
    text_encoder: str | None = None  # refavs: registry name or folder (None: distilroberta)
    fuser_init: str | None = None  # training refavs: start the fuser from an AVS fuser's weights

    def __post_init__(self) -> None:
        if isinstance(self.fuser_config, Mapping):
            object.__setattr__(self, "fuser_config", json.dumps(self.fuser_config))
        elif self.fuser_config is not None:
            try:
                parsed = json.loads(self.fuser_config)
            except ValueError as e:
                raise ValueError(f"fuser_config must be a JSON object, got "
                                 f"{self.fuser_config!r} ({e})") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"fuser_config must be a JSON object, got {self.fuser_config!r}")
        if not self.sam2_config:
            raise ValueError("sam2_config must name a config, 'bundled' or 'demo'")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be 'avs' or 'refavs', got {self.variant!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool)
                                            or not isinstance(self.image_size, int)
                                            or self.image_size <= 0):
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")

    # ------------------------------------------------------------------ reading it

    @classmethod
    def resolved(cls, defaults: Defaults = ENV_DEFAULTS, **values) -> ModelSpec:
        """The spec ``values`` name (None = not given), completed by THE defaulting rule with
        an entry point's ``defaults`` (see :class:`Defaults`)."""
        values = {k: v for k, v in values.items() if v is not None}
        if "sam2_config" not in values:
            selects = [values.get("sam2_checkpoint"), values.get("fuser_checkpoint")]
            if defaults.image_size_selects_config:
                selects.append(values.get("image_size"))
            values["sam2_config"] = defaults.config_with_weights if any(selects) else BUNDLED
        if values["sam2_config"] != BUNDLED and "image_size" not in values \
                and defaults.image_size:
            values["image_size"] = defaults.image_size
        return cls(**values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 defaults: Defaults = ENV_DEFAULTS, **overrides) -> ModelSpec:
        """``AURALSAM2_SAM2_CONFIG`` (default: the bundled demo model when no checkpoint is
        given, else the published ``sam2_hiera_l``), ``AURALSAM2_SAM2_CHECKPOINT``,
        ``AURALSAM2_FUSER_CHECKPOINT`` (paths, URLs or registry names),
        ``AURALSAM2_FUSER_CONFIG`` (JSON), ``AURALSAM2_IMAGE_SIZE``, ``AURALSAM2_DEVICE``
        (default auto), ``AURALSAM2_VARIANT`` (avs, refavs; default avs),
        ``AURALSAM2_TEXT_ENCODER``; ``overrides`` that are not None win."""
        env = os.environ if env is None else env
        values = {field: env.get(var) or None for field, var in ENV_VARS.items()}
        size = values["image_size"]
        if size is not None:
            try:
                values["image_size"] = int(size)
            except ValueError:
                raise ValueError(f"AURALSAM2_IMAGE_SIZE must be an integer, got {size!r}") \
                    from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.resolved(defaults, **values)

    def replace(self, **changes) -> ModelSpec:
        return replace(self, **changes)

    # ------------------------------------------------------------------ naming it

    @property
    def bundled(self) -> bool:
        return self.sam2_config == BUNDLED

    @property
    def fuser_config_dict(self) -> dict | None:
        return json.loads(self.fuser_config) if self.fuser_config else None

    def identity(self) -> str:
        """A short, stable name for these weights (model versions, cache keys), computed
        without loading anything: the bundled model's weight hash, else a hash of the spec's
        names (a checkpoint at a new path or with new contents should be given a new name by
        the deployment). The device does not count; the mask choice and ``fuser_init`` count
        only when given (so the names deployments already have stay the same)."""
        if self.bundled:
            from auralsam2_core.modeling.build import bundled_model_info, refer_model_dir

            refer = self.variant == "refavs"
            info = bundled_model_info(verify=False, root=refer_model_dir() if refer else None)
            sha = info['files'][info['weights']['fuser']]['sha256'][:8]
            return f"bundled-{'refavs-' if refer else ''}{sha}"
        names = [self.sam2_config, self.sam2_checkpoint, self.fuser_checkpoint,
                 self.fuser_config, self.image_size]
        if self.variant != "avs":
            names += [self.variant, self.text_encoder]
        extra = {k: v for k, v in (("mask_choice", self.mask_choice),
                                   ("fuser_init", self.fuser_init)) if v is not None}
        if extra:
            names.append(extra)
        stem = os.path.splitext(os.path.basename(self.sam2_config))[0]
        return f"{stem}-{hashlib.sha1(json.dumps(names).encode()).hexdigest()[:8]}"

    @property
    def key(self) -> str:
        """The in-process cache key: :meth:`identity` plus the device."""
        return f"{self.identity()}@{self.device}"

    def describe(self) -> str:
        """For people: ``bundled demo model`` or ``sam2_hiera_l, sam2=..., fuser=...``."""
        if self.bundled:
            return "bundled demo model"
        parts = [self.sam2_config]
        parts += [f"{k}={v}" for k, v in (("sam2", self.sam2_checkpoint),
                                          ("fuser", self.fuser_checkpoint)) if v]
        if not (self.sam2_checkpoint or self.fuser_checkpoint):
            parts.append("random weights")
        if self.variant != "avs":
            parts.append(f"variant={self.variant}")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        """The fields, ``fuser_config`` as a dict (JSON-able)."""
        return {**asdict(self), "fuser_config": self.fuser_config_dict}

    # ------------------------------------------------------------------ building it

    def sam2_yaml(self) -> str:
        """The SAM2 config to build: ``demo`` is the bundled model's yaml in the package."""
        if self.sam2_config != DEMO:
            return self.sam2_config
        from importlib.resources import files

        return str(files("auralsam2_core").joinpath("configs", DEMO_SAM2_YAML))

    def check_bundled(self) -> None:
        """The bundled demo models come with their own weights, size and text encoder."""
        if self.bundled and (self.sam2_checkpoint or self.fuser_checkpoint or self.image_size
                             or self.fuser_config or self.text_encoder or self.fuser_init):
            raise ValueError("the bundled demo model has its own weights, fuser config, input "
                             "size and text encoder; set AURALSAM2_SAM2_CONFIG (--sam2-config) "
                             "to use other ones")

    def build(self, device: str | None = None, **build_kwargs):
        """The :class:`~auralsam2_core.modeling.model.AuralSAM2` this spec names, in eval mode on
        ``device`` (default: the spec's). Checkpoints may be registry names or URLs
        (:func:`~auralsam2_core.modeling.weights.fetch`); ``build_kwargs`` go to
        :func:`~auralsam2_core.modeling.build.build_auralsam2` (e.g. a ``text_encoder`` object)."""
        from auralsam2_core.modeling.build import build_auralsam2
        from auralsam2_core.modeling.weights import fetch

        device = device or self.device
        mask_choice = self.mask_choice or "iou_select"
        self.check_bundled()
        if self.fuser_init:
            raise ValueError("fuser_init is a training start (auralsam2 train --fuser-init)")
        if self.bundled:
            return build_auralsam2(BUNDLED, device=device, mask_choice=mask_choice,
                                   variant=self.variant, **build_kwargs)
        if self.text_encoder is not None:
            build_kwargs.setdefault("text_encoder", self.text_encoder)
        return build_auralsam2(
            self.sam2_yaml(),
            sam2_checkpoint=fetch(self.sam2_checkpoint) if self.sam2_checkpoint else None,
            fuser_checkpoint=fetch(self.fuser_checkpoint) if self.fuser_checkpoint else None,
            fuser_config=self.fuser_config_dict, image_size=self.image_size, device=device,
            mask_choice=mask_choice, variant=self.variant, **build_kwargs)

    def for_fine_tuning(self, fuser_checkpoint: str | os.PathLike,
                        mask_choice: str | None = None) -> ModelSpec:
        """The spec training starts from to fine-tune the weights this spec serves: the same
        SAM2 (its file; the bundled model's own for the demo), the fuser from
        ``fuser_checkpoint`` (e.g. the live, possibly already fine-tuned, one)."""
        from auralsam2_core.modeling.weights import fetch

        if self.bundled:
            from auralsam2_core.modeling.build import bundled_model_dir, bundled_model_info

            info = bundled_model_info(verify=False)
            return ModelSpec(DEMO, image_size=info["image_size"],
                             fuser_config=info["fuser_config"],
                             sam2_checkpoint=str(bundled_model_dir() / info["weights"]["sam2"]),
                             fuser_checkpoint=str(fuser_checkpoint),
                             mask_choice=info["mask_choice"])
        return ModelSpec(self.sam2_config, image_size=self.image_size,
                         fuser_config=self.fuser_config,
                         sam2_checkpoint=str(fetch(self.sam2_checkpoint))
                         if self.sam2_checkpoint else None,
                         fuser_checkpoint=str(fuser_checkpoint),
                         mask_choice=mask_choice or self.mask_choice or "iou_select",
                         variant=self.variant, text_encoder=self.text_encoder)


def add_model_arguments(parser) -> None:
    """The model flags every command that serves a model takes (overriding ``AURALSAM2_*``)."""
    parser.add_argument("--sam2-config", default=None,
                        help="SAM2 config name or yaml, or 'bundled' (default: the bundled demo "
                             f"model unless checkpoints are given, then {DEFAULT_SAM2_CONFIG})")
    parser.add_argument("--sam2-checkpoint", default=None,
                        help="SAM2 checkpoint (path, URL or registry name)")
    parser.add_argument("--fuser-checkpoint", default=None,
                        help="fuser checkpoint (path, URL or registry name)")
    parser.add_argument("--fuser-config", default=None, help="fuser config as JSON")
    parser.add_argument("--image-size", type=int, default=None, help="SAM2 input size")
    parser.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="refavs: the Ref-AVS model, segmenting the objects each job names "
                             "(AURALSAM2_VARIANT; default avs)")
    parser.add_argument("--text-encoder", default=None,
                        help="refavs: text encoder, registry name or folder "
                             "(AURALSAM2_TEXT_ENCODER; default distilroberta-base)")


def spec_from_args(args, env: Mapping[str, str] | None = None) -> ModelSpec:
    """:meth:`ModelSpec.from_env`, overridden by the flags of :func:`add_model_arguments`."""
    return ModelSpec.from_env(
        env, sam2_config=args.sam2_config, sam2_checkpoint=args.sam2_checkpoint,
        fuser_checkpoint=args.fuser_checkpoint, fuser_config=args.fuser_config,
        image_size=args.image_size, device=args.device, variant=args.variant,
        text_encoder=args.text_encoder)


_build_lock = threading.Lock()  # building a SAM2 (Hydra) is not thread-safe


@functools.lru_cache(maxsize=2)
def _cached_build(spec: ModelSpec):
    return spec.build()


def load_model(spec: ModelSpec):
    """Build (once per process and spec, one build at a time) the model an adapter, the
    service or the FiftyOne operators run."""
    with _build_lock:
        return _cached_build(spec)


load_model.cache_clear = _cached_build.cache_clear
load_model.cache_info = _cached_build.cache_info
