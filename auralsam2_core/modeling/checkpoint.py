"""Reading checkpoint files and mapping foreign key layouts onto our modules.

Each ``*_checkpoint_filter`` is the one place that knows a foreign layout (wrapper dicts,
DDP/AVmodel prefixes, the authors' legacy names), in the spirit of timm's
``checkpoint_filter_fn``: modules keep their own names and never bend to a file format.
Files are always read with ``weights_only=True``; a pickle holding anything but tensors and
plain containers is refused, never executed.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auralsam2_core.atomic import atomic_path

__all__ = [
    "FILTERS",
    "CheckpointError",
    "fuser_checkpoint_filter",
    "load_into",
    "read_state_dict",
    "refavs_fuser_checkpoint_filter",
    "sam2_checkpoint_filter",
    "save_state_dict",
    "vggish_checkpoint_filter",
]

StateDict = dict[str, Any]

_WRAPPER_KEYS = ("model", "state_dict", "module")
# Top-level SAM2Base children with parameters/buffers; none of them exists in the fuser.
_SAM2_PREFIXES = (
    "image_encoder.", "memory_attention.", "memory_encoder.", "sam_prompt_encoder.",
    "sam_mask_decoder.", "obj_ptr_proj.", "mask_downsample.", "maskmem_tpos_enc",
    "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "obj_ptr_tpos_proj.",
)
_VGGISH_PREFIXES = ("features.", "embeddings.")
# Authors' tools/remap_aural_ckpt_keys.py: pre-release `audio_prompter.*` names.
_LEGACY_FUSER_NAMES = [
    *[(f"train_f_patch_embed{i + 1}", f"patch_embeds.{i}") for i in range(3)],
    *[(f"train_f_a_block{i + 1}", f"fusion_modules.{i}") for i in range(3)],
    *[(f"train_f_block{i + 1}", f"f_blocks.{i}") for i in range(3)],
    *[(f"train_a_block{i + 1}", f"a_blocks.{i}") for i in range(3)],
    *[(f"train_smooth{i + 1}", f"smooth_convs.{i}") for i in range(2)],
]
# Authors' remap tool (ref-avs.code/tools): legacy `training_layers.<i>` ModuleList order.
_LEGACY_TRAINING_LAYERS = (
    "patch_embeds.0", "patch_embeds.1", "patch_embeds.2",
    "f_blocks.0", "a_blocks.0", "fusion_modules.0",
    "f_blocks.1", "a_blocks.1", "fusion_modules.1",
    "f_blocks.2", "a_blocks.2", "fusion_modules.2",
    "smooth_convs.0", "smooth_convs.1", "train_proj_v1", "train_proj_a1", "text_proj",
)
_LEGACY_LAYER = re.compile(r"^(training_layers\.(\d+)|finetuning_layers\.0)\.(.+)$")
_SHOW = 10


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the module it is loaded into."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Also a FileNotFoundError, so callers that only handle that still catch it."""


# --------------------------------------------------------------------------- reading


def _sniff(head: bytes, size: int) -> str | None:
    """'zip', 'pickle', 'safetensors', or why the bytes cannot be a checkpoint (None: unknown)."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in {bytes([p]) for p in range(2, 6)}:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head.startswith(b"version https://git-lfs"):
        return "error:a Git LFS pointer file, not the weights (fetch the real file)"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"entry not found")):
        return "error:an HTML/text page, not weights (a failed or redirected download?)"
    return None


def _first_line(e: BaseException) -> str:
    """Torch's weights_only errors are pages long; keep the line that names the culprit."""
    msg = str(e)
    m = re.search(r"Unsupported (?:global|operand)[^\n]*", msg)
    line = m.group(0) if m else next((x for x in msg.splitlines() if x.strip()), "")
    return f"{type(e).__name__}: {line.strip()[:300]}"


def read_state_dict(path: str | os.PathLike[str]) -> StateDict:
    """Read a .pth/.pt/.bin (``weights_only=True``) or .safetensors file into a dict.

    Wrapper dicts ({"model": sd}, ...) are returned as they are; the filters unwrap them.
    Every failure becomes a :class:`CheckpointError` naming the file and what was expected.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        where = p if p.is_absolute() else f"{p} (resolved to {p.resolve()})"
        kind = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise CheckpointNotFoundError(f"checkpoint {where} {kind}")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {p} is empty (0 bytes); an interrupted download or copy? "
            "Delete it and fetch it again"
        )
    with open(p, "rb") as f:
        head = f.read(64)
    # Content, not the extension, picks the reader: renamed files are common.
    fmt = _sniff(head, size) or ("safetensors" if p.suffix == ".safetensors" else "unknown")
    if fmt.startswith("error:"):
        raise CheckpointError(f"checkpoint {p} is {fmt[6:]}")
    expected = ("a safetensors file" if fmt == "safetensors" else
                "a PyTorch checkpoint (torch.save zip or pickle holding a state dict)")

    if fmt == "zip" and not zipfile.is_zipfile(p):
        raise CheckpointError(
            f"checkpoint {p} is truncated or damaged: it starts like a torch.save zip "
            f"archive but has no central directory ({size} bytes). Delete it and fetch it again"
        )
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/zipfile/pickle/safetensors raise many unrelated types
        refused = "Weights only load failed" in str(e) and fmt in {"zip", "pickle"}
        why = (
            "it holds Python objects other than tensors and plain containers, which "
            "weights_only loading refuses to unpickle (nothing was executed); if you trust "
            "it, re-save just its state_dict()"
            if refused
            else f"it is corrupt or truncated ({size} bytes)"
        )
        raise CheckpointError(
            f"cannot read checkpoint {p}: expected {expected}, but {why}. [{_first_line(e)}]"
        ) from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {p} holds a {type(obj).__name__}, expected a state dict "
            "(a mapping of parameter names to tensors)"
        )
    return dict(obj)


# --------------------------------------------------------------------------- layouts


def _unwrap(sd: Mapping[str, Any]) -> StateDict:
    """Peel {"model": sd} / {"state_dict": sd} / {"module": sd} (trainer checkpoints)."""
    for _ in range(3):
        inner = next((sd[k] for k in _WRAPPER_KEYS
                      if k in sd and isinstance(sd[k], Mapping)), None)
        if inner is None:
            break
        sd = inner
    return dict(sd)


def _strip(sd: Mapping[str, Any], prefix: str) -> StateDict:
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def _with_prefix(sd: Mapping[str, Any], prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _example(keys, prefixes) -> str:
    return next((k for k in keys if k.startswith(prefixes)), "")


def fuser_checkpoint_filter(sd: Mapping[str, Any]) -> StateDict:
    """Map any AuralSAM2 fuser layout onto ``AuralFuser``'s own keys (no prefix).

    Accepts the released files (plain), trainer wrappers, DDP ``module.``, the authors'
    full ``AVmodel`` state (``aural_fuser.*`` kept, ``v_model.*`` = SAM2 dropped) and the
    pre-release ``audio_prompter.*`` names. SAM2 or bare-VGGish files are named as such.
    """
    sd = _strip(_unwrap(sd), "module.")
    if any(k.startswith("aural_fuser.") for k in sd):
        sd = {k: v for k, v in sd.items() if not k.startswith("v_model.")}
        sd = _strip(sd, "aural_fuser.")
    elif any(k.startswith("audio_prompter.") for k in sd):
        out = {}
        for k, v in sd.items():
            if ".training_layers." in k or ".finetuning_layers." in k:
                continue  # duplicates of the real layers in the legacy layout
            k = k.removeprefix("audio_prompter.")
            for old, new in _LEGACY_FUSER_NAMES:
                k = k.replace(old, new)
            out[k] = v
        sd = out
    else:
        sd = _strip(sd, "v_model.")

    if ex := _example(sd, _SAM2_PREFIXES):
        raise CheckpointError(
            f"this is a SAM2 checkpoint, not an AuralSAM2 fuser checkpoint (key {ex!r}); "
            "pass it as the SAM2 backbone and give an auralsam2_*.pth fuser file separately"
        )
    if sd and all(k.startswith(_VGGISH_PREFIXES) for k in sd):
        raise CheckpointError(
            "this is the standalone VGGish checkpoint (only features.*/embeddings.* keys), "
            "not an AuralSAM2 fuser checkpoint"
        )
    return sd


def _refavs_legacy_name(key: str) -> str:
    """``training_layers.<i>.x`` / ``finetuning_layers.0.x`` / flat ``train_*`` -> our name;
    an unknown layer index is kept as it is (strict loading then names it)."""
    m = _LEGACY_LAYER.match(key)
    if m and m.group(2) is None:
        return f"vgg.{m.group(3)}"
    if m and int(m.group(2)) < len(_LEGACY_TRAINING_LAYERS):
        return f"{_LEGACY_TRAINING_LAYERS[int(m.group(2))]}.{m.group(3)}"
    for old, new in _LEGACY_FUSER_NAMES:
        key = key.replace(old, new)
    return key


def refavs_fuser_checkpoint_filter(sd: Mapping[str, Any]) -> StateDict:
    """Map any Ref-AVS fuser layout onto ``AuralFuser(variant="refavs")``'s keys.

    The released ``auralsam2_refavs_best.pth`` is plain (no prefix); the authors' whole
    ``AVmodel`` state has ``aural_fuser.*`` (kept), ``v_model.*`` (SAM2) and ``t_model.*``
    (RoBERTa, fetched separately) — both dropped; legacy files use ``audio_prompter.``,
    ``training_layers.<i>`` / ``finetuning_layers.0`` (VGGish) or flat ``train_*`` names, mapped
    as the authors' remap tool does. Where a key exists under both its own and a legacy name,
    its own name wins.
    """
    sd = _strip(_unwrap(sd), "module.")
    sd = {k: v for k, v in sd.items() if not k.startswith(("v_model.", "t_model."))}
    for prefix in ("aural_fuser.", "audio_prompter."):
        if any(k.startswith(prefix) for k in sd):
            sd = _with_prefix(sd, prefix)
            break
    legacy = {k: v for k, v in sd.items() if _refavs_legacy_name(k) != k}
    out = {k: v for k, v in sd.items() if k not in legacy}
    for k, v in legacy.items():
        out.setdefault(_refavs_legacy_name(k), v)

    if ex := _example(out, _SAM2_PREFIXES):
        raise CheckpointError(f"this is a SAM2 checkpoint, not a Ref-AVS fuser checkpoint "
                              f"(key {ex!r}); give auralsam2_refavs_best.pth as the fuser")
    if out and "text_proj.0.weight" not in out and "train_proj_v1.proj.1.running_mean" in out:
        raise CheckpointError("this is an AVS fuser checkpoint (no text_proj, BatchNorm "
                              "projection heads), not a Ref-AVS one; use the AVS variant or "
                              "auralsam2_refavs_best.pth")
    return out


def sam2_checkpoint_filter(sd: Mapping[str, Any]) -> StateDict:
    """Meta's ``{"model": sd}`` (or the SAM2 part of an AuralSAM2 ``AVmodel``) -> SAM2 keys."""
    sd = _strip(_unwrap(sd), "module.")
    if any(k.startswith("v_model.") for k in sd):
        sd = _with_prefix(sd, "v_model.")
    if not _example(sd, _SAM2_PREFIXES) and _example(sd, ("vgg.", "patch_embeds.")):
        raise CheckpointError(
            "this is an AuralSAM2 fuser checkpoint, not a SAM2 checkpoint; the SAM2 "
            "backbone comes from Meta's sam2_hiera_*.pt"
        )
    return sd


def vggish_checkpoint_filter(sd: Mapping[str, Any]) -> StateDict:
    """Keys for the fuser's ``vgg`` submodule, from the standalone file or a fuser file."""
    sd = _strip(_unwrap(sd), "module.")
    for prefix in ("aural_fuser.vgg.", "vgg."):
        if any(k.startswith(prefix) for k in sd):
            return _with_prefix(sd, prefix)
    return sd


FILTERS: dict[str, Callable[[Mapping[str, Any]], StateDict]] = {
    "auralsam2_fuser": fuser_checkpoint_filter,
    "auralsam2_refavs_fuser": refavs_fuser_checkpoint_filter,
    "sam2": sam2_checkpoint_filter,
    "vggish": vggish_checkpoint_filter,
}
"""Filter per :attr:`auralsam2_core.modeling.weights.WeightFile.kind` (``hf_model`` repos are
loaded by ``transformers`` from the hub cache, not through a state-dict filter)."""


# --------------------------------------------------------------------------- loading


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"\n  {title} ({len(items)}): {', '.join(items[:_SHOW])}{more}"


def load_into(
    module: nn.Module,
    sd: Mapping[str, Any],
    *,
    what: str,
    source: str | os.PathLike[str],
    strict: bool = True,
):
    """Check keys and shapes against ``module`` first, then ``load_state_dict``.

    torch's own error stops at the first shape mismatch and never names the file; this one
    lists missing / unexpected keys and shape mismatches (first 10 of each, with counts).
    ``strict=False`` tolerates missing/unexpected keys but never a shape mismatch.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = []
    for k, v in sd.items():
        if k not in own:
            continue
        if not isinstance(v, torch.Tensor):
            mismatched.append(f"{k}: checkpoint has a {type(v).__name__}, not a tensor")
        elif v.shape != own[k].shape:
            mismatched.append(
                f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            )
    if mismatched or (strict and (missing or unexpected)):
        hint = ""
        if own and sd and len(missing) == len(own):
            hint = (f"\n  no checkpoint key matches the model (model keys look like "
                    f"{next(iter(own))!r}, the file's like {next(iter(sd))!r}): wrong file "
                    f"for {what}, or a layout its checkpoint filter does not know?")
        raise CheckpointError(
            f"{what}: checkpoint {os.fspath(source)} does not fit the model"
            + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected)
            + _listing("shape mismatches", mismatched)
            + hint
        )
    return module.load_state_dict(dict(sd), strict=strict)


# --------------------------------------------------------------------------- saving


def save_state_dict(sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Save a plain state dict (no wrapper, no prefix: the authors' release format).

    ``.safetensors`` or torch zip otherwise; written to a temp file and renamed, so a
    crash never leaves a half-written checkpoint under the final name.
    """
    p = Path(path)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"cannot save {p}: non-tensor values under {bad[:_SHOW]}")
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        if p.suffix == ".safetensors":
            from safetensors.torch import save_file

            # safetensors refuses shared storage; clones are cheap next to a crash.
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()},
                      str(tmp))
        else:
            torch.save({k: v.detach().cpu() for k, v in sd.items()}, tmp)
    return p
