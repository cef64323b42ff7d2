"""Independent numerical oracle for the AuralFuser and the decoder prompt injection.

NOT a test module: plain functions used by ``test_fuser_numerics.py`` / ``test_prompting.py``.

Written from the facts in ``docs/numerics.md`` and the authors' configuration
(``tests/data/authors_release.json``; their eval-mode forward), in a deliberately different
style from ``auralsam2_core``: no ``nn.Module`` of ours is called. Everything is computed from
a ``state_dict()`` (a plain ``dict`` of tensors) with explicit functional ops — ``F.conv*``,
``F.linear``, ``F.layer_norm``, ``F.batch_norm`` on running statistics, a hand-written
softmax attention (no ``scaled_dot_product_attention``) and explicit index arithmetic for the
authors' raw ``reshape``/``view`` quirks. The only foreign component used is SAM2's
``PositionEmbeddingSine`` (the authors' own PE) and, for the decoder, the ``sam2``
``TwoWayTransformer``'s layer modules (the authors' decoder is SAM2's, only its ``forward``
differs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from sam2.modeling.position_encoding import PositionEmbeddingSine
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

StateDict = Mapping[str, Tensor]

C = 256  # model width
CI = 128  # fusion inter channels
HEADS = 4  # heads of the PVT / 1-D blocks
AUDIO_BLOCKS = 3  # a_blocks per level (hard-coded by the authors)
LN_EPS = 1e-5
BN_EPS = 1e-5

# torchvggish ``features`` indices of the 3x3 convs, and after which of them a 2x2 max-pool
# follows (plan [64, M, 128, M, 256, 256, M, 512, 512, M]).
VGG_CONVS = (0, 3, 6, 8, 11, 13)
VGG_POOL_AFTER = {0, 3, 8, 13}


# --------------------------------------------------------------------------- small helpers


def _w(sd: StateDict, name: str) -> Tensor:
    return sd[name + ".weight"]


def _b(sd: StateDict, name: str) -> Tensor:
    return sd[name + ".bias"]


def linear(sd: StateDict, name: str, x: Tensor) -> Tensor:
    return F.linear(x, _w(sd, name), _b(sd, name))


def layer_norm(sd: StateDict, name: str, x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), _w(sd, name), _b(sd, name), LN_EPS)


def batch_norm_eval(sd: StateDict, name: str, x: Tensor) -> Tensor:
    """BatchNorm with the running statistics (eval mode), over dim 1."""
    return F.batch_norm(x, sd[name + ".running_mean"], sd[name + ".running_var"],
                        _w(sd, name), _b(sd, name), training=False, eps=BN_EPS)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``softmax(q k^T * scale) v`` for (B, heads, L, hd) tensors, softmax written out."""
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    s = (s - s.amax(dim=-1, keepdim=True)).exp()
    p = s / s.sum(dim=-1, keepdim=True)
    return torch.einsum("bhqk,bhkd->bhqd", p, v)


def audio_pos(dtype: torch.dtype, device=None) -> Tensor:
    """The authors' 1-D PE of length 1: [sin 0, cos 0, sin 0, ...] = [0, 1, 0, 1, ...]."""
    return torch.tensor([float(i % 2) for i in range(C)], dtype=dtype, device=device)


def sine_pe_tokens(x: Tensor) -> Tensor:
    """SAM2's PositionEmbeddingSine(256, normalize=True) of the (N, C, h, w) map ``x``, as
    tokens (N, h*w, C) in ``x``'s dtype (the PE itself is computed in float32, as theirs)."""
    pe = PositionEmbeddingSine(C, normalize=True, warmup_cache=False)(x)
    return pe.flatten(2).permute(0, 2, 1).to(x.dtype)


# --------------------------------------------------------------------------- VGGish


def vggish(sd: StateDict, x: Tensor, prefix: str = "vgg.") -> Tensor:
    """(N, 1, 96, 64) log-mel -> (N, 128), torchvggish without PCA."""
    for idx in VGG_CONVS:
        x = F.relu(F.conv2d(x, _w(sd, f"{prefix}features.{idx}"),
                            _b(sd, f"{prefix}features.{idx}"), padding=1))
        if idx in VGG_POOL_AFTER:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
    n = x.shape[0]
    x = x.transpose(1, 3).transpose(1, 2).contiguous().view(n, -1)  # (N,6,4,512) -> (N,12288)
    for idx in (0, 2, 4):
        x = F.relu(linear(sd, f"{prefix}embeddings.{idx}", x))
    return x


def audio_embedding(sd: StateDict, log_mel: Tensor) -> Tensor:
    """(N, 2, 96, 64) -> (N, 256): left and right channel through VGGish, concatenated."""
    return torch.cat([vggish(sd, log_mel[:, 0:1]), vggish(sd, log_mel[:, 1:2])], dim=1)


# --------------------------------------------------------------------------- blocks


def _multi_head(q: Tensor, kv: Tensor, heads: int) -> Tensor:
    """q (B, Lq, C); kv (B, Lk, 2C) laid out as [k | v] -> attention output (B, Lq, C)."""
    b, lq, c = q.shape
    hd = c // heads
    qh = q.reshape(b, lq, heads, hd).permute(0, 2, 1, 3)
    kvh = kv.reshape(b, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)
    out = softmax_attention(qh, kvh[0], kvh[1], hd ** -0.5)
    return out.permute(0, 2, 1, 3).reshape(b, lq, c)


def pvt_block(sd: StateDict, p: str, x: Tensor, h: int, w: int, heads: int = HEADS) -> Tensor:
    """PVTv2 block (pre-LN, spatial-reduction attention, MLP with 3x3 depthwise conv)."""
    b, n, c = x.shape
    y = layer_norm(sd, p + "norm1", x)
    q = linear(sd, p + "attn.q", y)
    sr_w = _w(sd, p + "attn.sr")
    grid = y.permute(0, 2, 1).reshape(b, c, h, w)
    red = F.conv2d(grid, sr_w, _b(sd, p + "attn.sr"), stride=sr_w.shape[-1])
    red = layer_norm(sd, p + "attn.norm", red.reshape(b, c, -1).permute(0, 2, 1))
    kv = linear(sd, p + "attn.kv", red)
    x = x + linear(sd, p + "attn.proj", _multi_head(q, kv, heads))

    y = linear(sd, p + "mlp.fc1", layer_norm(sd, p + "norm2", x))
    hid = y.shape[-1]
    y = F.conv2d(y.transpose(1, 2).reshape(b, hid, h, w), _w(sd, p + "mlp.dwconv.dwconv"),
                 _b(sd, p + "mlp.dwconv.dwconv"), padding=1, groups=hid)
    y = F.gelu(y.flatten(2).transpose(1, 2), approximate="none")
    return x + linear(sd, p + "mlp.fc2", y)


def one_d_block(sd: StateDict, p: str, d: Tensor, heads: int = HEADS) -> Tensor:
    """The audio block: d (N, C) is ONE sequence of N tokens; no sr, no dwconv."""
    seq = d.unsqueeze(0)
    y = layer_norm(sd, p + "norm1", seq)
    att = _multi_head(linear(sd, p + "attn.q", y), linear(sd, p + "attn.kv", y), heads)
    seq = seq + linear(sd, p + "attn.proj", att)
    y = F.gelu(linear(sd, p + "mlp.fc1", layer_norm(sd, p + "norm2", seq)), approximate="none")
    seq = seq + linear(sd, p + "mlp.fc2", y)
    return seq.squeeze(0)


# --------------------------------------------------------------------------- fusion


def raw_tokens(t: Tensor) -> Tensor:
    """The authors' ``(N, ci, 1, h, w) -> (1, N*h*w, ci)`` reshape WITHOUT a permute, by index
    arithmetic: token ``l``, channel ``j`` reads flat memory index ``l*ci + j`` of ``t``."""
    n, ci, _, h, w = t.shape
    flat = torch.arange(n * h * w * ci, device=t.device).reshape(n * h * w, ci)
    frame = flat // (ci * h * w)
    chan = (flat // (h * w)) % ci
    pos = flat % (h * w)
    return t[frame, chan, 0, pos // w, pos % w].unsqueeze(0)


def raw_view_frames(a: Tensor, n: int, h: int, w: int) -> Tensor:
    """The authors' ``(1, L, ci).permute(0,2,1).contiguous().view(N, ci, 1, h, w)``: element
    ``[f, c, 0, y, x]`` has flat index ``f*ci*h*w + c*h*w + y*w + x`` in the (ci, L) layout."""
    _, length, ci = a.shape
    f, c, y, x = torch.meshgrid(torch.arange(n), torch.arange(ci), torch.arange(h),
                                torch.arange(w), indexing="ij")
    flat = (f * ci * h * w + c * h * w + y * w + x).to(a.device)
    return a[0, flat % length, flat // length].unsqueeze(2)


def raw_view_audio(a: Tensor, n: int) -> Tensor:
    """The authors' ``(1, N, ci).permute(0,2,1).contiguous().view(N, ci)``."""
    _, _, ci = a.shape
    flat = torch.arange(n * ci, device=a.device).reshape(n, ci)
    return a[0, flat % n, flat // n]


def fusion(sd: StateDict, p: str, tokens: Tensor, h: int, w: int, d: Tensor, *,
           clean: bool = False) -> tuple[Tensor, Tensor]:
    """AudioVisualFusionModule (dot mode, no softmax, divided by N*h*w).

    ``clean=True`` is the "obvious" reimplementation (channel-last tokens, matching inverse
    permutes): NOT what the authors compute; used to show the quirk matters.
    """
    n, _, c = tokens.shape
    frame = tokens.permute(0, 2, 1).reshape(n, c, 1, h, w)
    audio = F.conv1d(d.unsqueeze(-1), _w(sd, p + "align_channel"), _b(sd, p + "align_channel"))

    def conv3(name: str) -> Tensor:
        return F.conv3d(frame, _w(sd, p + name), _b(sd, p + name))

    def conv1(name: str) -> Tensor:  # (N, ci, 1) -> (N, ci) == (1, N, ci) without the 1
        return F.conv1d(audio, _w(sd, p + name), _b(sd, p + name))[:, :, 0]

    qf, kf, vf = conv3("q_frame"), conv3("k_frame"), conv3("v_frame")
    ci = qf.shape[1]
    if clean:
        qf, kf, vf = (t.permute(0, 2, 3, 4, 1).reshape(n * h * w, ci) for t in (qf, kf, vf))
    else:
        qf, kf, vf = (raw_tokens(t)[0] for t in (qf, kf, vf))
    qa, ka, va = conv1("q_audio"), conv1("k_audio"), conv1("v_audio")
    length = n * h * w

    fa = torch.einsum("lc,mc->lm", qf, ka) / length
    fa = torch.einsum("lm,mc->lc", fa, va)  # (L, ci)
    if clean:
        fa = fa.reshape(n, h, w, ci).permute(0, 3, 1, 2).unsqueeze(2)
    else:
        fa = raw_view_frames(fa.unsqueeze(0), n, h, w)
    z = F.conv3d(fa, _w(sd, p + "W_z.0"), _b(sd, p + "W_z.0"))
    z = batch_norm_eval(sd, p + "W_z.1", z) + frame
    x_out = layer_norm(sd, p + "norm_layer", z.permute(0, 2, 3, 4, 1)).reshape(n, h * w, c)

    aa = torch.einsum("mc,lc->ml", qa, kf) / length
    aa = torch.einsum("ml,lc->mc", aa, vf)  # (N, ci)
    if not clean:
        aa = raw_view_audio(aa.unsqueeze(0), n)
    z2 = F.conv1d(aa.unsqueeze(-1), _w(sd, p + "W_z2.0"), _b(sd, p + "W_z2.0"))
    z2 = batch_norm_eval(sd, p + "W_z2.1", z2) + audio
    d_out = layer_norm(sd, p + "norm_layer2", z2[:, :, 0])
    return x_out, d_out


# --------------------------------------------------------------------------- whole fuser


def level_count(sd: StateDict) -> int:
    return len({k.split(".")[1] for k in sd if k.startswith("patch_embeds.")})


def f_depth(sd: StateDict, level: int) -> int:
    pre = f"f_blocks.{level}."
    return len({k[len(pre):].split(".")[0] for k in sd if k.startswith(pre)})


def aural_fuser(sd: StateDict, fpn: Sequence[Tensor], log_mel: Tensor, *, clean: bool = False,
                pos: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Eval-mode AuralFuser: ``([a, b, c], [d1, d2, d3])``; ``pos`` overrides the audio PE
    (None: the authors' constant [0, 1, 0, 1, ...]; may be (N, 256))."""
    d = audio_embedding(sd, log_mel)
    if pos is None:
        pos = audio_pos(d.dtype, d.device)
    feats: list[Tensor] = []
    auds: list[Tensor] = []
    for i in range(level_count(sd)):
        pw = _w(sd, f"patch_embeds.{i}")
        x = F.conv2d(fpn[i], pw, _b(sd, f"patch_embeds.{i}"), stride=pw.shape[-1])
        n, c, h, w = x.shape
        pe = sine_pe_tokens(x)
        x = x.flatten(2).permute(0, 2, 1)
        if i > 0:
            x = x + feats[i - 1]
            x = F.conv2d(x.permute(0, 2, 1).reshape(n, c, h, w), _w(sd, f"smooth_convs.{i - 1}"),
                         _b(sd, f"smooth_convs.{i - 1}"))
            x = x.flatten(2).permute(0, 2, 1)
        x = x + pe
        d = d + pos
        for j in range(f_depth(sd, i)):
            x = pvt_block(sd, f"f_blocks.{i}.{j}.", x, h, w)
        for j in range(AUDIO_BLOCKS):
            d = one_d_block(sd, f"a_blocks.{i}.{j}.", d)
        x, d = fusion(sd, f"fusion_modules.{i}.", x + pe, h, w, d + pos, clean=clean)
        feats.append(x)
        auds.append(d)
    return feats, auds


# --------------------------------------------------------------------------- decoder


def prompted_two_way_literal(transformer, image_embedding: Tensor, image_pe: Tensor,
                             point_embedding: Tensor, visual: Sequence[Tensor],
                             audio: Sequence[Tensor], *, carry_pe: bool = True
                             ) -> tuple[Tensor, Tensor]:
    """The authors' ``TwoWayTransformer.forward`` with prompts, literally (in-place slice adds)
    on CLONES of the inputs, with ``transformer``'s layers, under the MATH SDPA kernel.

    ``carry_pe=False`` is the variant whose query PE does NOT carry d3 (the first in-place add
    is made on a copy of the tokens instead of on ``point_embedding`` itself).
    """
    image_embedding = image_embedding.clone()
    image_pe = image_pe.clone()
    point_embedding = point_embedding.clone()
    visual = [v.clone() for v in visual]
    audio = [a.clone() for a in audio]
    with sdpa_kernel(SDPBackend.MATH):
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding if carry_pe else point_embedding.clone()
        for i, layer in enumerate(transformer.layers):
            keys = keys + visual[i]
            queries[:, 2:6] = queries[:, 2:6] + audio[i]  # in place; at i=0 on point_embedding
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding,
                                  key_pe=key_pe)
        queries[:, 2:6] += audio[-1]
        keys = keys + visual[-1]
        q = queries + point_embedding
        k = keys + key_pe
        attn = transformer.final_attn_token_to_image(q=q, k=k, v=keys)
        queries = transformer.norm_final_attn(queries + attn)
    return queries, keys


# --------------------------------------------------------------------------- test helpers


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0, gain: float = 1.0
               ) -> torch.nn.Module:
    """Give EVERY parameter and BN running statistic a random value (eval-relevant scale).

    - weights (dim >= 2): N(0, gain^2 / fan_in); gain 1 keeps the residual streams O(1) like
      PyTorch's default init, so float32 rounding stays ~1e-5 while every path contributes
      O(1) (gain sqrt(2) inflates the float32 error to ~1e-4);
    - 1-D ``weight`` (LayerNorm / BatchNorm): 1 + 0.3 N(0,1) — the fusion BN weights are
      zero-initialised by design, which would switch the fusion attention paths off;
    - biases 0.2 N(0,1); running_mean 0.2 N(0,1); running_var U(0.5, 1.5).
    """
    g = torch.Generator().manual_seed(seed)
    for name, t in module.state_dict().items():
        if not t.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_mean":
            new = 0.2 * torch.randn(t.shape, generator=g)
        elif leaf == "running_var":
            new = 0.5 + torch.rand(t.shape, generator=g)
        elif t.dim() >= 2:
            fan_in = t[0].numel()
            new = torch.randn(t.shape, generator=g) * gain / fan_in ** 0.5
        elif leaf == "weight":
            new = 1.0 + 0.3 * torch.randn(t.shape, generator=g)
        else:
            new = 0.2 * torch.randn(t.shape, generator=g)
        t.copy_(new.to(t.dtype))
    return module


def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> list[float]:
    return [float((x - y).abs().max()) for x, y in zip(a, b, strict=True)]
