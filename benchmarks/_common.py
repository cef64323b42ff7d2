"""Shared pieces of the benchmark scripts: test media, FLOP counting, plain-SAM2 baseline."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula


def _sdpa_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    b, h, lq, d = q_shape
    lk = k_shape[-2]
    return 2 * b * h * lq * lk * (d + v_shape[-1])


# PyTorch counts no FLOPs for the CPU flash-attention kernel (PERFORMANCE.md): register one.
with contextlib.suppress(RuntimeError, ValueError):  # already registered (a newer torch)
    register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda query, key, value, *a, out_val=None, **k: _sdpa_flops(
            query.shape if hasattr(query, "shape") else query,
            key.shape if hasattr(key, "shape") else key,
            value.shape if hasattr(value, "shape") else value))


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def make_video(path: Path, seconds: float, fps: int = 30, size: str = "128x128",
               sample_rate: int = 48000) -> Path:
    """A test clip with ffmpeg: moving test pattern + a stereo tone that comes and goes."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}:beep_factor=4",
         "-t", str(seconds), "-ac", "2", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
        check=True)
    return path


def plain_sam2_step(sam2, enc: dict, state: dict, first_index: int) -> list[torch.Tensor]:
    """SAM2's own tracking of already-encoded frames, without any prompt (the baseline)."""
    fpn = list(enc["backbone_fpn"])
    dec = sam2.sam_mask_decoder
    fpn[0], fpn[1] = dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1])
    _, feats, pos, sizes = sam2._prepare_backbone_features(
        {"backbone_fpn": fpn, "vision_pos_enc": enc["vision_pos_enc"]})
    masks = []
    for t in range(fpn[0].shape[0]):
        idx = first_index + t
        out = sam2.track_step(idx, idx == 0, [x[:, t:t + 1] for x in feats],
                              [x[:, t:t + 1] for x in pos], sizes, None, None, state,
                              1 << 30)
        bucket = "cond_frame_outputs" if idx == 0 else "non_cond_frame_outputs"
        state[bucket][idx] = out
        state["non_cond_frame_outputs"].pop(idx - 16, None)
        masks.append(out["pred_masks"])
    return masks
