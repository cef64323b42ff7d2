"""Fine-tune AuralSAM2 (the fuser; optionally SAM2 too) on synthetic clips, AVSBench or
corrected pre-labels.

What a run does (``train(TrainConfig(...), dataset)`` or ``auralsam2 train``):

* **Model.** SAM2 from a shipped config name or a yaml, the fuser from a config dict; either
  may start from a checkpoint. SAM2 is frozen unless ``unfreeze_sam2`` (needed when SAM2
  itself starts from random weights, as for the bundled demo model). SAM2 always stays in
  eval mode (no dropout; memory encoder fed the binarised mask, as at inference), so
  training sees exactly the inference path. The fuser's BatchNorm layers are frozen by
  default (``freeze_batchnorm``): the fuser runs one clip at a time (its attention mixes all
  frames it is given), and statistics of 5 near-identical frames would normalise the audio
  away; frozen, they are per-channel affine layers that still train.
* **Batches.** ``batch_size`` clips per step. All clips go through the image encoder together
  and SAM2's tracking runs batched over clips (SAM2 trains the same way), while the fuser
  runs per clip (its outputs depend on every frame it sees, so batching clips would change
  them). :func:`forward_batch` gives the same outputs as ``AuralSAM2.forward_clip`` per clip.
* **Loss.** :func:`auralsam2_core.training.losses.total_loss` per clip (summed over frames),
averaged
  over the batch.
* **Optimiser.** AdamW (weight decay 0.05, none on norms, biases and other 1-d parameters),
  linear warm-up then poly decay (power 0.9) to 0, gradient clipping, bf16 autocast on CUDA.
* **Reproducible.** Batch ``k`` is a pure function of ``(seed, k)``, model initialisation of
  ``seed``, and the contrastive sampler of ``(seed, k)``; so the same command gives the same
  weights on the same machine, and a run resumed from a checkpoint (model, optimiser,
  scheduler, step, torch RNG states) ends with the same weights as an uninterrupted one.
* **Outputs** in ``out``: ``fuser.pth`` (plain state dict, no prefix: the authors' release
  format, loads wherever theirs do), ``sam2.pt`` (``{"model": state_dict}``, Meta's format,
  only when SAM2 was trained), ``train.json`` (configs, command, timings, final losses),
  ``log.jsonl`` (per-step losses) and ``checkpoints/`` (``latest.pt`` + every N steps).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auralsam2_core import __version__
from auralsam2_core.atomic import atomic_open
from auralsam2_core.model_spec import DEFAULT_SAM2_CONFIG, DEMO, DEMO_SAM2_YAML, ModelSpec
from auralsam2_core.modeling.checkpoint import load_into, read_state_dict, save_state_dict
from auralsam2_core.modeling.model import AuralSAM2, ClipOutput, choose_masks
from auralsam2_core.training.datasets import collate
from auralsam2_core.training.losses import LossWeights, total_loss

__all__ = [
    "DEMO_FUSER_CONFIG",
    "DEMO_SAM2_CONFIG",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "demo_spec",
    "official_spec",
    "spec_record",
    "forward_batch",
    "param_groups",
    "train",
]

#: The bundled demo model's SAM2 (a yaml shipped in the package) and its input size.
DEMO_SAM2_CONFIG = DEMO_SAM2_YAML
DEMO_IMAGE_SIZE = 96
_DEMO_BLOCK = {"dim": 64, "num_heads": 2, "mlp_ratio": 4, "qkv_bias": True, "qk_scale": None,
               "drop": 0.0, "attn_drop": 0.0, "drop_path": 0.0, "sr_ratio": 1,
               "linear": False}
#: The bundled demo model's compact fuser: the published architecture at width 64, one
#: visual and one audio block per level, full attention on the 6 x 6 token grid (sr_ratio 1)
#: and the small conv audio encoder instead of VGGish.
DEMO_FUSER_CONFIG: dict = {"f_depths": [1, 1, 1], "dim": 64, "audio_depth": 1,
                           "audio_encoder": "tiny", "block_kw": dict(_DEMO_BLOCK),
                           "one_d_kw": dict(_DEMO_BLOCK)}


def packaged_config(name: str) -> Path:
    """Path of a yaml shipped in ``auralsam2_core/configs``."""
    from importlib.resources import files

    return Path(str(files("auralsam2_core").joinpath("configs", name)))


def demo_spec(**changes) -> ModelSpec:
    """The demo model to train from scratch: its tiny SAM2 yaml at :data:`DEMO_IMAGE_SIZE`
    and the compact :data:`DEMO_FUSER_CONFIG`, random weights (``changes`` override)."""
    return ModelSpec(**{"sam2_config": DEMO, "image_size": DEMO_IMAGE_SIZE,
                        "fuser_config": DEMO_FUSER_CONFIG, "mask_choice": "iou_select",
                        **changes})


def official_spec(**changes) -> ModelSpec:
    """The published architecture to fine-tune: ``sam2_hiera_l`` at 1024 and the authors'
    fuser (``changes`` override)."""
    return ModelSpec(**{"sam2_config": DEFAULT_SAM2_CONFIG, "image_size": 1024,
                        "mask_choice": "iou_select", **changes})


def spec_record(spec: ModelSpec) -> dict:
    """The spec as ``run.json`` keeps it (``ModelSpec(**record)`` reads it back)."""
    return {"sam2_config": spec.sam2_config, "image_size": spec.image_size,
            "fuser_config": spec.fuser_config_dict, "sam2_checkpoint": spec.sam2_checkpoint,
            "fuser_checkpoint": spec.fuser_checkpoint,
            "mask_choice": spec.mask_choice or "iou_select", "variant": spec.variant,
            "text_encoder": spec.text_encoder, "fuser_init": spec.fuser_init}


def build_model(spec: ModelSpec, device: str | torch.device = "cpu") -> AuralSAM2:
    from auralsam2_core.modeling.build import build_fuser, build_sam2_model, resolve_device

    if (spec.text_encoder or spec.fuser_init) and spec.variant != "refavs":
        raise ValueError("text_encoder and fuser_init are for variant 'refavs'")
    if spec.fuser_init and spec.fuser_checkpoint:
        raise ValueError("give fuser_checkpoint (a Ref-AVS fuser) or fuser_init (an AVS one), "
                         "not both")
    device = resolve_device(device)
    encoder = _text_encoder(spec.text_encoder) if spec.variant == "refavs" else None
    sam2 = build_sam2_model(spec.sam2_yaml(), spec.sam2_checkpoint,
                            image_size=spec.image_size, device="cpu")
    fuser = build_fuser(spec.fuser_checkpoint, spec.fuser_config_dict, variant=spec.variant)
    if spec.fuser_init:
        init_refavs_fuser_from_avs(fuser, spec.fuser_init)
    mask_choice = spec.mask_choice or "iou_select"
    model = AuralSAM2(sam2, fuser, mask_choice=mask_choice, text_encoder=encoder)
    model.meta = {"sam2_config": spec.sam2_config, "image_size": model.image_size,
                  "mask_choice": mask_choice, "fuser_config": spec.fuser_config_dict}
    if encoder is not None:
        model.meta.update(variant=spec.variant, text_encoder=encoder.source)
    return model.to(device)


def _text_encoder(name: str | None):
    from auralsam2_core.modeling.text_encoder import (
        DEMO_TEXT_ENCODER,
        TEXT_ENCODER_NAME,
        load_text_encoder,
        tiny_word_text_encoder,
    )

    if name == DEMO_TEXT_ENCODER:
        return tiny_word_text_encoder()
    return load_text_encoder(name or TEXT_ENCODER_NAME)


#: Ref-AVS fuser keys an AVS fuser does not have (or has in another shape).
_REFAVS_ONLY = ("text_proj.", "train_proj_v1.", "train_proj_a1.")


def init_refavs_fuser_from_avs(fuser: nn.Module, avs_checkpoint: str | os.PathLike) -> int:
    """Load every key a Ref-AVS ``fuser`` shares with an AVS fuser checkpoint (same name and
    shape: the audio encoder, visual/audio blocks, fusion modules); ``text_proj`` and the
    projection heads keep their fresh initialisation. Anything else missing is an error (a
    fuser of another configuration). Returns the number of tensors loaded."""
    from auralsam2_core.modeling.checkpoint import fuser_checkpoint_filter

    sd = fuser_checkpoint_filter(read_state_dict(avs_checkpoint))
    own = fuser.state_dict()
    shared = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape
              and not k.startswith(_REFAVS_ONLY)}
    missing = [k for k in own if k not in shared and not k.startswith(_REFAVS_ONLY)]
    if missing:
        raise ValueError(f"{avs_checkpoint} is not an AVS fuser of this configuration: "
                         f"{len(missing)} shared keys missing or of another shape, e.g. "
                         f"{missing[:3]}")
    fuser.load_state_dict(shared, strict=False)
    return len(shared)


@dataclass
class TrainConfig:
    out: str
    steps: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    poly_power: float = 0.9
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: bool = False  # keep step_N.pt files next to latest.pt
    unfreeze_sam2: bool = False
    freeze_batchnorm: bool = True
    calibrate_audio_bn: int = 4  # batches used to set the tiny audio encoder's BN statistics
    loss_weights: LossWeights = field(default_factory=LossWeights)
    train_candidate: str = "best"  # "best" of 3 (published) or "first" (demo model)
    device: str = "auto"
    log_every: int = 10
    progress: bool = True
    resume: bool = False
    threads: int | None = None  # torch CPU threads (None: torch's default)
    text_lr_scale: float = 1.0  # Ref-AVS: text_proj's learning rate, as a multiple of lr
    # Synthetic data: weight of the training-only sound-identity loss (SoundIdentityHead).
    sound_id_weight: float = 0.0
    sound_id_rows: str = "embedding"  # what the head reads: "embedding" or "prompts"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_weights"] = self.loss_weights.to_dict()
        return d


@dataclass
class TrainResult:
    out: Path
    fuser: Path
    sam2: Path | None
    steps: int
    seconds: float
    last_losses: dict


# --------------------------------------------------------------------------- forward


def forward_batch(model: AuralSAM2, frames: torch.Tensor, log_mel: torch.Tensor,
                  texts: torch.Tensor | None = None) -> list[ClipOutput]:
    """``AuralSAM2.forward_clip`` for ``B`` clips at once, each a new video (its conditioning
    frame: the first, Ref-AVS the middle one). ``frames``: ``(B, T, 3, S, S)``; ``log_mel``:
    ``(B, T, 2, 96, 64)``; ``texts`` (Ref-AVS): the expressions' hidden states ``(B, L, D)``.
    The image encoder runs on all ``B*T`` frames, the fuser once per clip, SAM2's tracking
    batched over clips (:meth:`AuralSAM2.track_clips`). Returns one :class:`ClipOutput` per
    clip."""
    b, t_len = frames.shape[:2]
    if (texts is not None) != (model.variant == "refavs"):
        raise ValueError("texts go with (and are needed by) the Ref-AVS model")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if frames.device.type == "cuda" \
        else contextlib.nullcontext()
    with autocast:
        enc = model.encode_images(frames.flatten(0, 1))
        raw_fpn = list(enc["backbone_fpn"])
        per_clip = [model.fuser([f[i * t_len:(i + 1) * t_len] for f in raw_fpn], log_mel[i],
                                None if texts is None else texts[i:i + 1])
                    for i in range(b)]
        # (levels) x (B, T, ...) prompts
        visual = [torch.stack([pc[0][lvl] for pc in per_clip]) for lvl in range(3)]
        audio = [torch.stack([pc[1][lvl] for pc in per_clip]) for lvl in range(3)]
        tracked = model.track_clips(enc, visual, audio, model.new_state(t_len))
    outputs = []
    for (multi, raw, ious, obj), pc in zip(tracked, per_clip, strict=True):
        ious, obj = ious.float(), obj.float()
        chosen_logits, chosen = choose_masks(multi, ious, obj, model.mask_choice)
        outputs.append(ClipOutput(multi, raw, ious, obj, chosen_logits, chosen, pc[2]))
    return outputs


# --------------------------------------------------------------------------- sound identity


class SoundIdentityHead(nn.Module):
    """Training-only auxiliary: a linear read-out of the fuser's per-frame audio predicting
    which synthetic shapes sound in the frame (multi-label BCE against ``ClipSample.sources``).
    Not part of the model and never saved in a bundle. ``rows``: ``"embedding"`` reads the
    audio encoder's output (``embed_audio``, before any text; computed again here),
    ``"prompts"`` the fuser's audio rows that reach SAM2's decoder (rows 0..T-1 of d1..d3,
    concatenated; taken from the training forward pass by a hook).

    Why: the Ref-AVS demo reads a shape's name mostly through its *sound*, and the AVS demo's
    tiny audio encoder, trained where the stereo pan alone finds the sounding shape, keeps the
    disc's and the square's tones almost together; and where the embedding does tell them
    apart, the fuser's audio path loses it level by level (disc-square distance over the
    within-class spread: 4.95 in the embedding, 1.27 / 0.36 / 0.12 in d1 / d2 / d3; the
    triangle's buzz keeps 1.04 in d3)."""

    ROWS = ("embedding", "prompts")

    def __init__(self, fuser: nn.Module, rows: str = "embedding") -> None:
        from auralsam2_core.training.synthetic import SHAPES

        super().__init__()
        if rows not in self.ROWS:
            raise ValueError(f"rows must be one of {self.ROWS}, got {rows!r}")
        self.rows = rows
        self.fuser = [fuser]  # not a submodule: its weights belong to the model
        levels = len(fuser.fusion_modules) if rows == "prompts" else 1
        self.linear = nn.Linear(levels * fuser.dim, len(SHAPES))
        self._seen: list = []  # the fuser's audio outputs since reset() (rows="prompts")
        self._hook = fuser.register_forward_hook(self._record) if rows == "prompts" else None

    def _record(self, _module, _args, out) -> None:
        # Only calls that can train (evaluations run without grad and are not the batch's).
        if torch.is_grad_enabled():
            self._seen.append(out[1])

    def close(self) -> None:
        """Detach from the fuser (the end of training): later calls are not recorded."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._seen.clear()

    def reset(self) -> None:
        """Forget the fuser calls seen so far (before each training forward pass)."""
        self._seen.clear()

    def loss(self, log_mel: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """``log_mel`` (B, T, 2, 96, 64), ``sources`` (B, T, len(SHAPES)) 0/1."""
        b, t_len = sources.shape[:2]
        if self.rows == "embedding":
            feats = self.fuser[0].embed_audio(log_mel.flatten(0, 1))
        else:  # one fuser call per clip, in order
            if len(self._seen) != b:
                raise RuntimeError(f"expected {b} fuser calls since reset(), saw "
                                   f"{len(self._seen)}")
            feats = torch.cat([torch.cat([d[:t_len] for d in audio], dim=-1)
                               for audio in self._seen])
        return F.binary_cross_entropy_with_logits(self.linear(feats), sources.flatten(0, 1))


# --------------------------------------------------------------------------- optimiser


def param_groups(modules: Sequence[nn.Module], weight_decay: float,
                 own: nn.Module | None = None, own_lr: float | None = None) -> list[dict]:
    """AdamW groups: decay on weight matrices / conv kernels, none on 1-d parameters
    (norm scales and shifts, biases); with ``own_lr``, ``own``'s parameters in groups of
    their own at that rate (a LambdaLR schedule scales every group's rate alike)."""
    groups = []
    seen = set()
    if own is not None and own_lr is not None:
        groups = [{**g, "lr": own_lr} for g in param_groups([own], weight_decay)]
        seen = {id(p) for g in groups for p in g["params"]}
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}, *groups]


def lr_factor(step: int, total: int, warmup: int, power: float) -> float:
    """Linear warm-up over ``warmup`` steps, then poly(``power``) decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return max(0.0, 1.0 - (step - warmup) / span) ** power


def _batch_indices(n: int, batch: int, step: int, seed: int, shuffle: bool) -> list[int]:
    """Dataset indices of batch ``step``: a pure function of ``(seed, step)``; epochs are
    seeded permutations (or, with ``shuffle=False``, consecutive items, wrapping)."""
    out = []
    for j in range(batch):
        k = step * batch + j
        epoch, pos = divmod(k, n)
        if shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(n, generator=g)[pos]))
        else:
            out.append(pos)
    return out


def calibrate_audio_batchnorm(fuser: nn.Module, log_mels: Sequence[torch.Tensor]) -> int:
    """Data-dependent start for the compact fuser's audio encoder (``audio_encoder="tiny"``):
    its BatchNorm statistics are set to the averages over ``log_mels`` (each ``(N, 2, 96,
    64)``: whole training batches, so the statistics span many clips), then kept frozen.

    Why: the fuser sees one clip at a time, so live batch statistics would come from a few
    near-identical examples and erase the sound; frozen at their initial values (mean 0,
    variance 1) they do not normalise at all, and the sound-specific part of the embedding is
    then small next to its common part, which makes the audio slow to matter. Returns the
    number of BatchNorm layers set (0 for VGGish, which has none).
    """
    enc = getattr(fuser, "audio_encoder", None)
    if enc is None or not log_mels:
        return 0
    bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = enc.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    enc.train()
    with torch.no_grad():
        for lm in log_mels:
            fuser.embed_audio(lm)
    for bn in bns:
        bn.momentum = 0.1
    enc.train(was_training)
    return len(bns)


def _freeze_batchnorm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# --------------------------------------------------------------------------- run


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _trainable(model: AuralSAM2, cfg: TrainConfig) -> list[nn.Module]:
    model.fuser.requires_grad_(True)
    if hasattr(model.fuser, "vgg"):  # VGGish stays frozen, as published
        model.fuser.vgg.requires_grad_(False)
    if cfg.unfreeze_sam2:
        model.sam2.requires_grad_(True)
        return [model.fuser, model.sam2]
    model.sam2.requires_grad_(False)
    return [model.fuser]


def _set_train_mode(model: AuralSAM2, cfg: TrainConfig) -> None:
    model.train()  # keeps SAM2 in eval mode
    if cfg.freeze_batchnorm:
        _freeze_batchnorm(model.fuser)
    if hasattr(model.fuser, "vgg"):
        model.fuser.vgg.eval()


def train(cfg: TrainConfig, dataset: torch.utils.data.Dataset, spec: ModelSpec | None = None,
          *, shuffle: bool = True, command: str | None = None,
          on_step: Callable[[int, dict], None] | None = None,
          evaluate: Callable[[AuralSAM2, int], dict] | None = None,
          eval_every: int = 0, stop_after: int | None = None) -> TrainResult:
    """Train and write the outputs described in the module docstring.

    ``dataset`` yields :class:`~auralsam2_core.training.datasets.ClipSample` s of equal length.
    ``evaluate(model, step)`` (optional, every ``eval_every`` steps and at the end) returns
    numbers to log. ``stop_after``: stop (after checkpointing) once this step is reached,
    as if interrupted (for tests of resuming).
    """
    from tqdm import tqdm

    from auralsam2_core.modeling.build import resolve_device

    spec = spec or demo_spec()
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    model = build_model(spec, device="cpu").to(device)
    modules = _trainable(model, cfg)
    head = SoundIdentityHead(model.fuser, cfg.sound_id_rows).to(device) \
        if cfg.sound_id_weight > 0 else None
    groups = param_groups(modules + ([head] if head is not None else []), cfg.weight_decay,
                          getattr(model.fuser, "text_proj", None),
                          cfg.lr * cfg.text_lr_scale if cfg.text_lr_scale != 1.0 else None)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.poly_power))
    start = 0
    elapsed_before = 0.0
    latest = ckpt_dir / "latest.pt"
    if cfg.resume and latest.is_file():
        ck = torch.load(latest, map_location="cpu", weights_only=True)
        load_into(model.fuser, ck["fuser"], what="AuralFuser", source=latest)
        if "sam2" in ck:
            load_into(model.sam2, ck["sam2"], what="SAM2", source=latest)
        if head is not None:
            head.load_state_dict(ck["sound_id_head"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        start = int(ck["step"])
        elapsed_before = float(ck.get("seconds", 0.0))
    log_path = out / "log.jsonl"
    if start == 0:
        log_path.write_text("")
    elif log_path.is_file():  # drop lines logged after the checkpoint we resume from
        kept = [line for line in log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= start]
        log_path.write_text("".join(f"{line}\n" for line in kept))
    n = len(dataset)
    if n == 0:
        raise ValueError("empty training dataset")
    # Only a fresh audio encoder is calibrated: a trained one (--fuser-checkpoint) learnt its
    # weights against the statistics it carries, and new ones would undo that.
    if start == 0 and cfg.calibrate_audio_bn > 0 and not (spec.fuser_checkpoint
                                                           or spec.fuser_init):
        mels = [torch.cat([dataset[i].log_mel for i in
                           _batch_indices(n, cfg.batch_size, k, cfg.seed, shuffle)]).to(device)
                for k in range(cfg.calibrate_audio_bn)]
        calibrate_audio_batchnorm(model.fuser, mels)
    _set_train_mode(model, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    last: dict = {}
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.progress, unit="step",
               dynamic_ncols=True, desc="train")
    try:
        for step in range(start, cfg.steps):
            batch = collate([dataset[i] for i in
                             _batch_indices(n, cfg.batch_size, step, cfg.seed, shuffle)])
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            texts = model.encode_text(batch["expressions"]) if model.variant == "refavs" \
                else None
            if head is not None:
                head.reset()
            outs = forward_batch(model, batch["frames"].to(device), batch["log_mel"].to(device),
                                 texts)
            terms: dict[str, torch.Tensor] = {}
            for i, o in enumerate(outs):
                t = total_loss(o, batch["gt"][i].to(device), batch["valid"][i].to(device),
                               cfg.loss_weights, generator=gen,
                               candidate=cfg.train_candidate)
                for k, v in t.items():
                    if k != "best":
                        terms[k] = terms.get(k, 0.0) + v / len(outs)
            if head is not None:
                if batch["sources"] is None:
                    raise ValueError("--sound-id-weight needs synthetic clips (which shape "
                                     "sounds when)")
                terms["sound_id"] = head.loss(batch["log_mel"].to(device),
                                              batch["sources"].to(device))
                terms["loss"] = terms["loss"] + cfg.sound_id_weight * terms["sound_id"]
            loss = terms["loss"]
            if not torch.isfinite(loss):
                parts = {k: round(float(v), 5) for k, v in terms.items() if k != "loss"}
                raise RuntimeError(f"loss is {loss.item()} at step {step} ({parts})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) \
                if cfg.grad_clip > 0 else torch.tensor(0.0)
            opt.step()
            sched.step()
            last = {k: round(float(v.detach()), 5) for k, v in terms.items()}
            rec = {"step": step + 1, **last, "grad_norm": round(float(gnorm), 4),
                   "lr": opt.param_groups[0]["lr"],
                   "seconds": round(elapsed_before + time.perf_counter() - t0, 2)}
            if evaluate is not None and eval_every and (step + 1) % eval_every == 0 \
                    and step + 1 < cfg.steps:
                rec["eval"] = _run_eval(model, evaluate, step + 1, cfg)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            if on_step:
                on_step(step + 1, rec)
            bar.update(1)
            if (step + 1) % max(1, cfg.log_every) == 0:
                bar.set_postfix(loss=f"{last['loss']:.3f}", obj=f"{last['object_score']:.3f}")
            done = step + 1
            if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or
                                         done == stop_after) and done < cfg.steps:
                _save_checkpoint(ckpt_dir, model, opt, sched, done, cfg,
                                 elapsed_before + time.perf_counter() - t0, head)
            if stop_after is not None and done >= stop_after and done < cfg.steps:
                # A stage of a longer schedule: its weights are the next stage's start.
                save_state_dict(model.fuser.state_dict(), out / "fuser.pth")
                sam2_path = _save_sam2(model, out) if cfg.unfreeze_sam2 else None
                (out / "stopped.json").write_text(json.dumps({
                    "format": "auralsam2-train-stopped",
                    **_run_record(command, cfg, spec, dataset, done,
                                  elapsed_before + time.perf_counter() - t0),
                    "schedule_steps": cfg.steps}, indent=1))
                return TrainResult(out, out / "fuser.pth", sam2_path, done,
                                   elapsed_before + time.perf_counter() - t0, last)
    finally:
        bar.close()
        if head is not None:
            head.close()
    seconds = elapsed_before + time.perf_counter() - t0
    final_eval = _run_eval(model, evaluate, cfg.steps, cfg) if evaluate is not None else None
    fuser_path = save_state_dict(model.fuser.state_dict(), out / "fuser.pth")
    sam2_path = _save_sam2(model, out) if cfg.unfreeze_sam2 else None
    info = {
        "format": "auralsam2-train", "package_version": __version__,
        **_run_record(command, cfg, spec, dataset, cfg.steps, seconds),
        "last_losses": last, "final_eval": final_eval,
        "params": {"fuser": sum(p.numel() for p in model.fuser.parameters()),
                   "sam2": sum(p.numel() for p in model.sam2.parameters())},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "device": str(device), "threads": torch.get_num_threads(),
                    "platform": platform.platform()},
        "outputs": {"fuser": fuser_path.name, "sam2": sam2_path.name if sam2_path else None},
    }
    (out / "train.json").write_text(json.dumps(info, indent=1))
    return TrainResult(out, fuser_path, sam2_path, cfg.steps, seconds, last)


def _run_eval(model: AuralSAM2, evaluate, step: int, cfg: TrainConfig) -> dict:
    model.eval()
    try:
        with torch.no_grad():
            return evaluate(model, step)
    finally:
        _set_train_mode(model, cfg)


def _run_record(command: str | None, cfg: TrainConfig, spec: ModelSpec, dataset, steps: int,
                seconds: float) -> dict:
    """What a run's ``train.json`` (or a stopped stage's ``stopped.json``) says of it."""
    return {"command": command, "train_config": cfg.to_dict(), "model": spec_record(spec),
            "dataset": dataset.config() if hasattr(dataset, "config") else
            type(dataset).__name__, "steps": steps, "seconds": round(seconds, 1)}


def _save_sam2(model: AuralSAM2, out: Path) -> Path:
    """SAM2's trained weights, as Meta's checkpoints hold them (``{"model": state_dict}``)."""
    path = out / "sam2.pt"
    _atomic_save({"model": {k: v.detach().cpu() for k, v in model.sam2.state_dict().items()}},
                 path)
    return path


def _atomic_save(obj, path: Path) -> None:
    with atomic_open(path) as fh:
        torch.save(obj, fh)


def _save_checkpoint(ckpt_dir: Path, model: AuralSAM2, opt, sched, step: int,
                     cfg: TrainConfig, seconds: float, head: nn.Module | None = None) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ck = {"step": step, "seconds": seconds,
          "fuser": {k: v.detach().cpu() for k, v in model.fuser.state_dict().items()},
          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
          "rng": _rng_state(), "config": json.loads(json.dumps(cfg.to_dict()))}
    if cfg.unfreeze_sam2:
        ck["sam2"] = {k: v.detach().cpu() for k, v in model.sam2.state_dict().items()}
    if head is not None:
        ck["sound_id_head"] = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    path = ckpt_dir / "latest.pt"
    _atomic_save(ck, path)
    if cfg.keep_checkpoints:
        _atomic_save(ck, ckpt_dir / f"step_{step:06d}.pt")
    return path


def load_trained(out: str | os.PathLike, device: str | torch.device = "cpu") -> AuralSAM2:
    """The model a training run wrote to ``out`` (``train.json`` + weights), in eval mode."""
    out = Path(out)
    info = json.loads((out / "train.json").read_text())
    spec = ModelSpec(**info["model"])
    model = build_model(spec, device="cpu")
    load_into(model.fuser, read_state_dict(out / info["outputs"]["fuser"]), what="AuralFuser",
              source=out / info["outputs"]["fuser"])
    if info["outputs"].get("sam2"):
        from auralsam2_core.modeling.checkpoint import sam2_checkpoint_filter

        p = out / info["outputs"]["sam2"]
        load_into(model.sam2, sam2_checkpoint_filter(read_state_dict(p)), what="SAM2", source=p)
    from auralsam2_core.modeling.build import resolve_device

    return model.to(resolve_device(device)).eval()


def command_line() -> str:
    """The command that started this process, for the records."""
    prog = Path(sys.argv[0]).name if sys.argv else "auralsam2"
    if prog in ("cli.py", "__main__.py", "-c", ""):
        prog = "auralsam2"
    argv = [prog, *sys.argv[1:]]
    return " ".join(argv)



# --------------------------------------------------------------------------- demo bundle


def export_demo_bundle(train_out: str | os.PathLike, dest: str | os.PathLike, *,
                       name: str = "auralsam2-demo-tiny", demo_clips: int = 6,
                       demo_size: int = 128) -> dict:
    """Package a synthetic training run as the bundled demo model: ``sam2.safetensors`` and
    ``fuser.safetensors`` (float32, plain state dicts) plus ``model.json`` (configs, sha256
    and size of each file, the training command, wall time and machine), then measure the
    demo's numbers with the packaged files (through the engine) and record them too."""
    import shutil
    import tempfile

    from auralsam2_core.modeling.weights import sha256_file

    train_out, dest = Path(train_out), Path(dest)
    info = json.loads((train_out / "train.json").read_text())
    spec = ModelSpec(**info["model"])
    if spec.sam2_config != DEMO or not info["outputs"].get("sam2"):
        raise ValueError("a demo bundle needs a run of the demo model with SAM2 trained "
                         "(sam2_config 'demo', --unfreeze-sam2)")
    model = load_trained(train_out)
    # A run that continued another bundle (its weights as --*-checkpoint) records that one's
    # training too, so the whole recipe stays in one model.json (read before dest is written).
    root, _ = _lineage(spec)
    started_from = root.get("training") if root else None
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.safetensors"):
        old.unlink()
    save_state_dict(model.sam2.state_dict(), dest / "sam2.safetensors")
    save_state_dict(model.fuser.state_dict(), dest / "fuser.safetensors")
    files = {}
    for f in ("sam2.safetensors", "fuser.safetensors"):
        (dest / f).chmod(0o644)
        files[f] = {"sha256": sha256_file(dest / f), "bytes": (dest / f).stat().st_size}
    yaml = packaged_config(DEMO_SAM2_CONFIG)
    bundle = {
        "format": "auralsam2-demo-model", "format_version": 1, "name": name,
        "description": "Tiny AuralSAM2 (SAM2 Hiera embed 32 at 96 px + compact fuser, "
                       "trained from random weights on synthetic sounding-shape clips). A "
                       "demo of the pipeline, not a model for real videos.",
        "sam2_config": DEMO_SAM2_CONFIG, "sam2_config_sha256": sha256_file(yaml),
        "image_size": model.image_size, "mask_choice": spec.mask_choice,
        "fuser_config": spec.fuser_config_dict,
        "weights": {"sam2": "sam2.safetensors", "fuser": "fuser.safetensors"},
        "files": files,
        "params": info["params"],
        "training": {"command": info["command"], "wall_seconds": info["seconds"],
                     "steps": info["steps"], "train_config": info["train_config"],
                     "dataset": info["dataset"], "machine": info["machine"],
                     "last_losses": info["last_losses"],
                     "package_version": info["package_version"],
                     **({"started_from": started_from} if started_from else {})},
    }
    (dest / "model.json").write_text(json.dumps(bundle, indent=1))
    from auralsam2_core.modeling.build import build_demo_model, bundled_model_dir

    if dest.resolve() == bundled_model_dir().resolve():
        packaged = build_demo_model(device="cpu")
    else:  # measure the files just written, loaded the way the bundled loader does
        packaged = load_trained(train_out)
    from auralsam2_core.evaluation.demo import run_demo

    tmp = Path(tempfile.mkdtemp(prefix="auralsam2_demo_"))
    try:
        summary = run_demo(tmp, n_clips=demo_clips, size=demo_size, model=packaged,
                           overlay=False, timeline=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = ("j_sounding", "f_sounding", "j_swapped_audio", "f_swapped_audio", "j_silent",
            "silent_low_confidence_fraction", "passed")
    bundle["measured"] = {"protocol": f"auralsam2 demo: {demo_clips} held-out clips x 3 "
                                      f"variants at {demo_size} px through the engine",
                          **{k: summary[k] for k in keys},
                          "per_clip": summary["per_clip"]}
    (dest / "model.json").write_text(json.dumps(bundle, indent=1))
    return bundle


def _lineage(spec: ModelSpec) -> tuple[dict | None, list[dict]]:
    """Where a run's starting weights came from: the bundle (its ``model.json``) at the root of
    the chain, and the training runs in between (``train.json``, or ``stopped.json`` for a
    stage stopped early, next to the weights a stage continued from), first stage first, each
    as its command, steps and seconds."""
    earlier: list[dict] = []
    seen: set[Path] = set()
    while True:
        folders = [Path(p).parent for p in (spec.fuser_init, spec.fuser_checkpoint,
                                            spec.sam2_checkpoint) if p]
        record = next((f / name for f in folders for name in ("train.json", "stopped.json")
                       if (f / name).is_file() and f.resolve() not in seen), None)
        run = None if record is None else record.parent
        if run is None:
            bundle = next((f / "model.json" for f in folders if (f / "model.json").is_file()),
                          None)
            return (json.loads(bundle.read_text()) if bundle else None), earlier
        seen.add(run.resolve())
        info = json.loads(record.read_text())
        earlier.insert(0, {"command": info["command"], "steps": info["steps"],
                           "wall_seconds": info["seconds"],
                           **({"stopped_after": info["steps"], "of": info["schedule_steps"]}
                              if "schedule_steps" in info else {}),
                           **({"note": info["note"]} if "note" in info else {})})
        spec = ModelSpec(**info["model"])


def export_refer_demo_bundle(train_out: str | os.PathLike, dest: str | os.PathLike, *,
                             name: str = "auralsam2-refer-demo-tiny", demo_clips: int = 6,
                             demo_size: int = 128) -> dict:
    """Package a synthetic Ref-AVS run of the demo model as the bundled Ref-AVS demo model:
    ``sam2.safetensors``, ``fuser.safetensors`` and the text encoder folder
    (``text_encoder/``: config, safetensors weights, tokenizer), each file with its sha256 in
    ``model.json`` next to the configs and the training record (the AVS demo bundle it
    started from included); then measure ``auralsam2 demo --refer`` with the packaged files
    and record the numbers too."""
    import shutil
    import tempfile

    from auralsam2_core.modeling.text_encoder import save_text_encoder
    from auralsam2_core.modeling.weights import sha256_file

    train_out, dest = Path(train_out), Path(dest)
    info = json.loads((train_out / "train.json").read_text())
    spec = ModelSpec(**info["model"])
    if spec.sam2_config != DEMO or spec.variant != "refavs":
        raise ValueError("a Ref-AVS demo bundle needs a Ref-AVS run of the demo model "
                         "(sam2_config 'demo', variant 'refavs')")
    model = load_trained(train_out)
    started_from, earlier = _lineage(spec)
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / "text_encoder").is_dir():
        shutil.rmtree(dest / "text_encoder")
    for old in dest.glob("*.safetensors"):
        old.unlink()
    save_state_dict(model.sam2.state_dict(), dest / "sam2.safetensors")
    save_state_dict(model.fuser.state_dict(), dest / "fuser.safetensors")
    written = [dest / "sam2.safetensors", dest / "fuser.safetensors",
               *save_text_encoder(model.text_encoder, dest / "text_encoder")]
    files = {}
    for f in written:
        f.chmod(0o644)
        files[f.relative_to(dest).as_posix()] = {"sha256": sha256_file(f),
                                                 "bytes": f.stat().st_size}
    yaml = packaged_config(DEMO_SAM2_CONFIG)
    enc = model.text_encoder
    bundle = {
        "format": "auralsam2-refer-demo-model", "format_version": 1, "name": name,
        "variant": "refavs",
        "description": "Tiny Ref-AVS AuralSAM2 (the AVS demo model's SAM2 and fuser, plus "
                       "text_proj and a tiny word-level text encoder) trained on synthetic "
                       "clips with expressions naming a shape. A demo of the pipeline, not "
                       "a model for real videos or free text.",
        "sam2_config": DEMO_SAM2_CONFIG, "sam2_config_sha256": sha256_file(yaml),
        "image_size": model.image_size, "mask_choice": spec.mask_choice,
        "fuser_config": spec.fuser_config_dict,
        "text_encoder": {"folder": "text_encoder", "kind": "tiny word-level RoBERTa (frozen "
                         "random embeddings, one fixed bag-of-words layer; see "
                         "text_encoder.py)",
                         "vocabulary": len(enc.tokenizer), "hidden_size":
                         enc.model.config.hidden_size,
                         "layers": enc.model.config.num_hidden_layers,
                         "max_tokens": enc.max_length},
        "weights": {"sam2": "sam2.safetensors", "fuser": "fuser.safetensors"},
        "files": files,
        "params": info["params"] | {"text_encoder": sum(p.numel() for p in
                                                        enc.model.parameters())},
        "training": {"command": info["command"], "wall_seconds": info["seconds"],
                     "steps": info["steps"], "train_config": info["train_config"],
                     "model": info["model"], "dataset": info["dataset"],
                     "machine": info["machine"], "last_losses": info["last_losses"],
                     "final_eval": info.get("final_eval"),
                     "package_version": info["package_version"],
                     **({"earlier_stages": earlier} if earlier else {}),
                     **({"started_from": {"name": started_from.get("name"),
                                          "training": started_from.get("training")}}
                        if started_from else {})},
    }
    (dest / "model.json").write_text(json.dumps(bundle, indent=1))
    from auralsam2_core.modeling.build import build_refer_demo_model, refer_model_dir

    if dest.resolve() == refer_model_dir().resolve():
        packaged = build_refer_demo_model(device="cpu")
    else:
        packaged = build_refer_demo_model(device="cpu", root=dest)
    from auralsam2_core.evaluation.refer_demo import run_refer_demo

    tmp = Path(tempfile.mkdtemp(prefix="auralsam2_refer_demo_"))
    try:
        summary = run_refer_demo(tmp, n_clips=demo_clips, size=demo_size, model=packaged)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = ("j_referred", "f_referred", "j_other_query", "f_other_query", "null_s",
            "null_s_sqrt_per_clip", "silent_low_confidence_fraction", "j_sounding_alone",
            "null_low_confidence_fraction", "passed")
    bundle["measured"] = {"protocol": f"auralsam2 demo --refer: {demo_clips} held-out clips x "
                                      f"2 videos x 3 queries at {demo_size} px "
                                      f"({summary['path']})",
                          **{k: summary[k] for k in keys if k in summary},
                          "per_query": summary["per_query"]}
    (dest / "model.json").write_text(json.dumps(bundle, indent=1))
    return bundle
