"""Prototype rewrites of the fuser's slow parts, timed against the faithful modules on the
same inputs, with the largest output difference (issue #16 point 2; see ../PROFILE.md).

Nothing here is used by the package: each variant is a candidate for
``auralsam2_core/modeling/fuser.py``
and shows what it would save and that it computes the same thing (differences at float32
rounding level, from a different summation order).

- ``dwconv_channels_last``: ``_DWConv`` on a channels-last view of the token grid (no
  transpose copies in or out) instead of the NCHW reshape;
- ``fusion_linear``: ``AudioVisualFusion``'s 1x1x1 ``Conv3d`` projections of the frame
  tokens as one ``F.linear`` on the tokens (q, k, v weights stacked), then the channel-first
  layout the quirky reshapes need;
- ``attention_contiguous_heads``: ``_Attention`` with the kv projection split into k and v by
  a view and the heads made contiguous once before SDPA;
- with ``--compile``: the whole fuser under ``torch.compile`` (inductor's C++ CPU backend:
  fused elementwise ops and layouts; needs a C++ compiler; compilation time not counted).

    .venv/bin/python benchmarks/prototypes/fuser_variants.py --size 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import add_output_args, apply_quick, finish  # noqa: E402

from auralsam2_core.modeling.fuser import AudioVisualFusion, Block  # noqa: E402


def dwconv_channels_last(mod, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n, _, c = x.shape
    grid = x.view(n, h, w, c).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory
    y = mod.dwconv(grid)
    return y.permute(0, 2, 3, 1).reshape(n, h * w, c)


def fusion_frame_qkv_linear(mod: AudioVisualFusion, tokens: torch.Tensor, hw):
    """q_f, k_f, v_f exactly as the faithful module lays them out: (1, N*h*w, ci)."""
    n, _, c = tokens.shape
    ci = mod.inter
    weight = torch.cat([m.weight.view(ci, c) for m in (mod.q_frame, mod.k_frame, mod.v_frame)])
    bias = torch.cat([m.bias for m in (mod.q_frame, mod.k_frame, mod.v_frame)])
    qkv = F.linear(tokens, weight, bias)  # (n, hw, 3ci)
    # Channel-first (n, ci, hw) memory, as the Conv3d output, before the quirky reshape.
    return [t.transpose(1, 2).contiguous().reshape(1, -1, ci) for t in qkv.split(ci, dim=-1)]


def fusion_frame_qkv_faithful(mod: AudioVisualFusion, tokens: torch.Tensor, hw):
    n, _, c = tokens.shape
    frame = tokens.transpose(1, 2).reshape(n, c, 1, *hw)
    return [m(frame).reshape(1, -1, mod.inter) for m in (mod.q_frame, mod.k_frame, mod.v_frame)]


def attention_contiguous(attn, x: torch.Tensor, hw) -> torch.Tensor:
    b, n, c = x.shape
    heads = attn.num_heads
    grid = attn.sr(x.transpose(1, 2).reshape(b, c, *hw))
    kv_in = attn.norm(grid.flatten(2).transpose(1, 2))
    q = attn.q(x).view(b, n, heads, c // heads).transpose(1, 2).contiguous()
    kv = attn.kv(kv_in).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).contiguous()
    out = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


def _best(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _compare(name, faithful, variant, repeats, results):
    t_f, out_f = _best(faithful, repeats)
    t_v, out_v = _best(variant, repeats)
    outs_f = out_f if isinstance(out_f, list) else [out_f]
    outs_v = out_v if isinstance(out_v, list) else [out_v]
    diff = max(float((a - b).abs().max()) for a, b in zip(outs_f, outs_v, strict=True))
    scale = max(float(a.abs().max()) for a in outs_f)
    print(f"{name:28s} faithful {t_f * 1e3:8.1f} ms  variant {t_v * 1e3:8.1f} ms  "
          f"speed-up {t_f / t_v:5.2f}x  max |diff| {diff:.2e} (of max |out| {scale:.2e})")
    results[name] = {"speedup": t_f / t_v, "max_abs_diff": diff, "max_abs_out": scale,
                     "faithful_ms": t_f * 1e3, "variant_ms": t_v * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="image size (tokens: (size/16)^2)")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time the compiled fuser")
    add_output_args(p)
    args = apply_quick(p, {"size": 128, "repeats": 1, "frames": 2})
    torch.manual_seed(0)
    side = args.size // 16
    hw, n, c = (side, side), args.frames, 256
    tokens = torch.randn(n, side * side, c)
    block = Block(sr_ratio=4).eval()
    fusion = AudioVisualFusion().eval()
    for m in fusion.modules():  # non-zero BN so that nothing is trivially zero
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data.normal_()
    hidden = torch.randn(n, side * side, 4 * c)
    results: dict = {}
    with torch.inference_mode():
        _compare("dwconv_channels_last", lambda: block.mlp.dwconv(hidden, *hw),
                 lambda: dwconv_channels_last(block.mlp.dwconv, hidden, *hw), args.repeats,
                 results)
        _compare("fusion_linear", lambda: fusion_frame_qkv_faithful(fusion, tokens, hw),
                 lambda: fusion_frame_qkv_linear(fusion, tokens, hw), args.repeats, results)
        _compare("attention_contiguous_heads", lambda: block.attn(tokens, hw),
                 lambda: attention_contiguous(block.attn, tokens, hw), args.repeats, results)
        if args.compile:
            from auralsam2_core.modeling.fuser import AuralFuser

            fuser = AuralFuser().eval()
            fpn = [torch.randn(n, c, args.size // k, args.size // k) for k in (4, 8, 16)]
            lm = torch.randn(n, 2, 96, 64)
            compiled = torch.compile(fuser, dynamic=False)
            t0 = time.perf_counter()
            compiled(fpn, lm)
            print(f"compiling the fuser: {time.perf_counter() - t0:.0f} s")
            _compare("fuser_compiled", lambda: list(fuser(fpn, lm)[0]),
                     lambda: list(compiled(fpn, lm)[0]), args.repeats, results)
    finish(args, {f"{k}_speedup": v["speedup"] for k, v in results.items()},
           {f"{k}_speedup": f"max |diff| {v['max_abs_diff']:.1e}" for k, v in results.items()},
           variants=results)


if __name__ == "__main__":
    main()
