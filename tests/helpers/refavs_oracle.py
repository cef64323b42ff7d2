"""Independent numerical oracle for the Ref-AVS AuralFuser (text-referred variant).

NOT a test module: plain functions used by ``test_refavs_fuser.py``.

Written from ``docs/numerics.md`` (Ref-AVS) on top of
the AVS oracle's building blocks (``numerics_oracle.py``: VGGish, PVT and 1-D blocks, the raw
reshape index arithmetic, BatchNorm on running statistics), in the same functional style: only
a ``state_dict()`` and explicit ops; no ``nn.Module`` of ours is called.

What differs from AVS, as the spec states it:

- ``text_proj`` (Linear 768->1024, exact GELU, Linear 1024->256) maps the 25 RoBERTa states to
  25 rows appended after the audio rows: ``M = n_audio + 25`` rows in the "audio" stream;
- the position vector [0,1,0,1,...] is added to all M rows, twice per level;
- fusion: the products are still divided by the VISUAL token count ``N*h*h``; the audio side's
  result is raw-viewed as ``(M, 128)`` from its ``(128, M)`` layout (the row count is M);
- the projection heads are Linear -> GELU -> LayerNorm -> Linear + L2 over dim 1; the visual
  head reads the W_z output before the residual, channel-last ``(N, h*h, C)``, so it
  normalises over the positions; the audio head reads the first 10 rows only.

Knobs for the "clean reimplementation" variants the tests compare against:
``audio_view="permute"`` (a proper layout instead of the raw view), ``divisor`` (another
normaliser), ``text_pos="none"`` (no position vector on text rows), ``text_first=True``
(text rows before the audio rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import numerics_oracle as base

StateDict = base.StateDict
AUDIO_PROJ_ROWS = 10  # the authors' hard-coded [:10]
NORMALIZE_EPS = 1e-12  # F.normalize's default eps, written out below


def text_rows(sd: StateDict, text: Tensor) -> Tensor:
    """(1, L, 768) -> (L, 256): Linear, exact GELU, Linear; the batch dim of 1 dropped."""
    y = F.gelu(base.linear(sd, "text_proj.0", text), approximate="none")
    return base.linear(sd, "text_proj.2", y)[0]


def l2_normalise_dim1(x: Tensor) -> Tensor:
    norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
    return x / norm.clamp_min(NORMALIZE_EPS)


def projection_head(sd: StateDict, p: str, x: Tensor) -> Tensor:
    """Linear -> GELU -> LayerNorm -> Linear on the last dim, then L2 over dim 1."""
    y = F.gelu(base.linear(sd, p + "proj.0", x), approximate="none")
    y = base.layer_norm(sd, p + "proj.2", y)
    return l2_normalise_dim1(base.linear(sd, p + "proj.3", y))


def fusion(sd: StateDict, p: str, tokens: Tensor, h: int, w: int, d: Tensor, *,
           audio_view: str = "raw", divisor: float | None = None
           ) -> tuple[Tensor, Tensor, Tensor]:
    """TPAVIModuleDIY with M audio rows: ``(tokens_out, d_out, W_z output)``."""
    n, _, c = tokens.shape
    m = d.shape[0]
    frame = tokens.permute(0, 2, 1).reshape(n, c, 1, h, w)
    audio = F.conv1d(d.unsqueeze(-1), base._w(sd, p + "align_channel"),
                     base._b(sd, p + "align_channel"))  # (M, C, 1)

    def conv3(name: str) -> Tensor:
        return F.conv3d(frame, base._w(sd, p + name), base._b(sd, p + name))

    def conv1(name: str) -> Tensor:
        return F.conv1d(audio, base._w(sd, p + name), base._b(sd, p + name))[:, :, 0]  # (M, ci)

    qf, kf, vf = (base.raw_tokens(conv3(k))[0] for k in ("q_frame", "k_frame", "v_frame"))
    qa, ka, va = conv1("q_audio"), conv1("k_audio"), conv1("v_audio")
    norm = float(n * h * w) if divisor is None else float(divisor)

    fa = torch.einsum("lc,mc->lm", qf, ka) / norm
    fa = torch.einsum("lm,mc->lc", fa, va)  # (N*h*w, ci)
    fa = base.raw_view_frames(fa.unsqueeze(0), n, h, w)
    z = base.batch_norm_eval(sd, p + "W_z.1",
                             F.conv3d(fa, base._w(sd, p + "W_z.0"), base._b(sd, p + "W_z.0")))
    x_out = base.layer_norm(sd, p + "norm_layer", (z + frame).permute(0, 2, 3, 4, 1))
    x_out = x_out.reshape(n, h * w, c)

    aa = torch.einsum("mc,lc->ml", qa, kf) / norm
    aa = torch.einsum("ml,lc->mc", aa, vf)  # (M, ci)
    if audio_view == "raw":
        aa = base.raw_view_audio(aa.unsqueeze(0), m)  # M, not the frame count N
    elif audio_view != "permute":
        raise ValueError(audio_view)
    z2 = F.conv1d(aa.unsqueeze(-1), base._w(sd, p + "W_z2.0"), base._b(sd, p + "W_z2.0"))
    z2 = base.batch_norm_eval(sd, p + "W_z2.1", z2) + audio
    d_out = base.layer_norm(sd, p + "norm_layer2", z2[:, :, 0])
    return x_out, d_out, z


def aural_fuser(sd: StateDict, fpn: Sequence[Tensor], log_mel: Tensor, text: Tensor, *,
                audio_view: str = "raw", divisor: float | None = None,
                text_pos: str = "twice", text_first: bool = False, text_rows_override=None
                ) -> dict[str, list[Tensor]]:
    """Eval-mode Ref-AVS fuser: ``{"visual": [a,b,c], "audio": [d1,d2,d3], "proj_v": [...],
    "proj_a": [...], "rows0": d before the first audio block}``."""
    audio_rows = base.audio_embedding(sd, log_mel)
    t_rows = text_rows(sd, text) if text_rows_override is None else text_rows_override
    n_a, n_t = audio_rows.shape[0], t_rows.shape[0]
    d = torch.cat([t_rows, audio_rows]) if text_first else torch.cat([audio_rows, t_rows])
    pos = base.audio_pos(d.dtype, d.device).expand(d.shape[0], -1).clone()
    if text_pos == "none":
        if text_first:
            pos[:n_t] = 0
        else:
            pos[n_a:] = 0
    elif text_pos != "twice":
        raise ValueError(text_pos)

    feats: list[Tensor] = []
    auds: list[Tensor] = []
    zs: list[Tensor] = []
    rows0 = None
    for i in range(base.level_count(sd)):
        pw = base._w(sd, f"patch_embeds.{i}")
        x = F.conv2d(fpn[i], pw, base._b(sd, f"patch_embeds.{i}"), stride=pw.shape[-1])
        n, c, h, w = x.shape
        pe = base.sine_pe_tokens(x)
        x = x.flatten(2).permute(0, 2, 1)
        if i > 0:
            x = x + feats[i - 1]
            x = F.conv2d(x.permute(0, 2, 1).reshape(n, c, h, w),
                         base._w(sd, f"smooth_convs.{i - 1}"), base._b(sd, f"smooth_convs.{i - 1}"))
            x = x.flatten(2).permute(0, 2, 1)
        x = x + pe
        d = d + pos
        if rows0 is None:
            rows0 = d.clone()
        for j in range(base.f_depth(sd, i)):
            x = base.pvt_block(sd, f"f_blocks.{i}.{j}.", x, h, w)
        for j in range(base.AUDIO_BLOCKS):
            d = base.one_d_block(sd, f"a_blocks.{i}.{j}.", d)
        x, d, z = fusion(sd, f"fusion_modules.{i}.", x + pe, h, w, d + pos,
                         audio_view=audio_view, divisor=divisor)
        feats.append(x)
        auds.append(d)
        zs.append(z)

    proj_v = []
    for z in zs:
        n, c, _, h, w = z.shape
        tokens = z.reshape(n, c, h * w).permute(0, 2, 1)  # channel-last (N, h*w, C)
        y = projection_head(sd, "train_proj_v1.", tokens)  # normalised over the h*w positions
        proj_v.append(y.reshape(n, h, w, -1).permute(0, 3, 1, 2))
    proj_a = [projection_head(sd, "train_proj_a1.", d[:AUDIO_PROJ_ROWS]).unsqueeze(-1)
              for d in auds]
    return {"visual": feats, "audio": auds, "proj_v": proj_v, "proj_a": proj_a, "rows0": rows0}


def max_rel_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> list[float]:
    """Max abs difference relative to the reference tensor's max magnitude (the spec's measure)."""
    return [float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b, strict=True)]
