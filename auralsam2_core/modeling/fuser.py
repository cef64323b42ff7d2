"""AuralFuser: the audio-visual add-on that turns SAM2's FPN maps and VGGish audio into prompts.

Written from the published description and the numerics documented in
``docs/numerics.md`` so that the authors' released checkpoints load
strictly and give the authors' outputs. Module and parameter names are therefore fixed by the
checkpoints (``f_blocks``, ``a_blocks``, ``fusion_modules``, ``W_z``...), and several
behaviours that look like bugs are kept on purpose; each is marked ``Quirk``.

Shapes: ``N`` frames (the whole clip, all videos of a batch flattened), ``h`` the token grid
side (image_size / 16), ``C = 256``.

Two variants share this code (``variant=``): ``"avs"`` (AVSBench) and ``"refavs"`` (Ref-AVS,
referring expressions; ``docs/numerics.md``, Ref-AVS). The Ref-AVS fuser projects
RoBERTa's 25 token states with ``text_proj`` and appends them as extra rows of the audio
stream, so the audio side carries ``M = n_audio + 25`` rows; it also has other projection heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.position_encoding import PositionEmbeddingSine
from torch import nn

from auralsam2_core.modeling.tiny_audio import TinyAudioEncoder
from auralsam2_core.modeling.vggish import VGGish

#: The released AVS configuration, under the authors' names (official_arch.json).
OFFICIAL_AVS_CONFIG: dict[str, Any] = {
    "patch_cfgs": [[4, 4], [2, 2], [1, 1]],
    "f_depths": [3, 6, 12],
    "block_kw": {
        "dim": 256, "num_heads": 4, "mlp_ratio": 4, "qkv_bias": True, "qk_scale": None,
        "drop": 0.1, "attn_drop": 0.1, "drop_path": 0.0, "sr_ratio": 4, "linear": False,
    },
    "one_d_kw": {
        "dim": 256, "num_heads": 4, "mlp_ratio": 4, "qkv_bias": True, "qk_scale": None,
        "drop": 0.1, "attn_drop": 0.1, "drop_path": 0.0, "sr_ratio": 4, "linear": False,
    },
}

CHANNELS = 256  # FPN width of every shipped SAM2 config, and the released fuser's width
AUDIO_LEVEL_DEPTH = 3  # audio blocks per level, hard-coded by the authors

VARIANTS = ("avs", "refavs")
TEXT_DIM = 768  # hidden size of distilroberta-base, the Ref-AVS text encoder
TEXT_PROJ_HIDDEN = 1024
#: Quirk (Ref-AVS): the audio projection head takes the first 10 rows of d1..d3, hard-coded
#: (the audio rows when T = 10), whatever the clip length.
REFAVS_AUDIO_PROJ_ROWS = 10


def _init_block_weights(m: nn.Module) -> None:
    """The authors' initialisation of transformer blocks (PVTv2 style)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _check_block_kw(kw: Mapping[str, Any], dim: int) -> dict[str, Any]:
    kw = dict(kw)
    if kw.pop("linear", False):
        raise ValueError("linear=True (PVTv2-li attention) is not part of AuralSAM2")
    if kw.pop("drop_path", 0.0):
        raise ValueError("drop_path > 0 is not supported (the released configuration uses 0)")
    kw.setdefault("dim", dim)
    if kw["dim"] != dim:
        raise ValueError(f"block dim {kw['dim']} must equal the fuser width {dim} "
                         "(the SAM2 FPN width)")
    return kw


def _onednn_ops_available() -> bool:
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_linear_pointwise", "_convolution_pointwise"))


_ONEDNN_OPS = _onednn_ops_available()


def _fused_cpu_kernels(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` may use oneDNN's fused CPU kernels on ``x``.

    The fuser's visual blocks are memory-bound on CPU: a separate bias pass after each matmul
    and a separate GELU pass after the depthwise conv each cost a full read/write of the MLP's
    4x-wide hidden tensor. oneDNN applies both in the kernel's epilogue (the kernels PyTorch's
    own compiler uses on CPU); results differ from the modules at float32 rounding level only.
    They have no autograd, so training, gradients, other devices and dtypes take the modules.
    """
    return (_ONEDNN_OPS and not module.training and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.enabled)


class _Linear(nn.Linear):
    """``nn.Linear`` (same parameters) whose CPU inference adds the bias inside the matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_cpu_kernels(self, x):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


class _PatchEmbed(nn.Conv2d):
    """``nn.Conv2d`` (same parameters) for the fuser's non-overlapping patch embeddings.

    SAM2's finest FPN map arrives in NCHW memory, which oneDNN's conv first reorders whole
    (the largest tensor the fuser reads). On CPU inference such an input is instead gathered
    into patch rows and multiplied by the flattened weight: one pass fewer, and the result is
    already token-major (returned as an NCHW view of it). Other layouts take the conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        if not (_fused_cpu_kernels(self, x) and x.is_contiguous() and k == self.stride
                and self.padding == (0, 0) and self.groups == 1):
            return super().forward(x)
        n, c, hh, ww = x.shape
        h, w = hh // k[0], ww // k[1]
        patches = x[..., :h * k[0], :w * k[1]].reshape(n, c, h, k[0], w, k[1])
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, -1)
        tokens = torch.ops.mkldnn._linear_pointwise(
            patches, self.weight.reshape(self.out_channels, -1), self.bias, "none", [], "")
        return tokens.transpose(1, 2).reshape(n, self.out_channels, h, w)


class _DWConv(nn.Module):
    """3x3 depthwise conv over the token grid (PVTv2's positional MLP).

    The tokens ``(N, h*w, C)`` are viewed as an NCHW grid in channels-last memory, so no copy
    is made in or out. ``gelu=True`` applies the MLP's (exact, erf) GELU too, fused into the
    conv on CPU inference (see :func:`_fused_cpu_kernels`).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int, gelu: bool = False) -> torch.Tensor:
        n, _, c = x.shape
        grid = x.transpose(1, 2).reshape(n, c, h, w)
        conv = self.dwconv
        if gelu and _fused_cpu_kernels(self, x):
            y = torch.ops.mkldnn._convolution_pointwise(
                grid, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation,
                conv.groups, "gelu", [], "none")
        else:
            y = conv(grid)
            if gelu:
                y = F.gelu(y)
        return y.flatten(2).transpose(1, 2)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float, use_dwconv: bool) -> None:
        super().__init__()
        self.fc1 = _Linear(dim, hidden)
        # Registered in the audio blocks too (the checkpoints carry it) but only used on grids.
        self.dwconv = _DWConv(hidden)
        self.act = nn.GELU()  # parameter-free; on grids applied inside ``dwconv``
        self.fc2 = _Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.use_dwconv = use_dwconv

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(x, *hw, gelu=True) if self.use_dwconv else self.act(x)
        return self.drop(self.fc2(self.drop(x)))


class _Attention(nn.Module):
    """Multi-head attention with PVT's spatial reduction of keys/values.

    In the audio blocks (``spatial=False``) the reduction layers exist only for checkpoint
    compatibility; attention then runs over the rows of a 2-D input as one sequence.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_scale: float | None,
                 attn_drop: float, proj_drop: float, sr_ratio: int, spatial: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = _Linear(dim, dim, bias=qkv_bias)
        self.kv = _Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = _Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            # The tokens reach this conv as a channels-last view of the grid; a weight stored
            # in the same layout spares a copy of it on every call (values and keys as ever).
            self.sr.weight.data = self.sr.weight.data.contiguous(
                memory_format=torch.channels_last)
            self.norm = nn.LayerNorm(dim)
        self.spatial = spatial

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        if not self.spatial:
            # Quirk: the audio vectors of all N frames (every clip of the batch) form ONE
            # sequence, so frames attend across the batch.
            seq = x.unsqueeze(0)
            return self._attend(seq, seq).squeeze(0)
        kv_in = x
        if self.sr_ratio > 1:
            b, n, c = x.shape
            grid = self.sr(x.transpose(1, 2).reshape(b, c, *hw))
            kv_in = self.norm(grid.flatten(2).transpose(1, 2))
        return self._attend(x, kv_in)

    def _attend(self, x: torch.Tensor, kv_in: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self._heads(self.q(x))
        k, v = self.kv(kv_in).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(
            q, self._heads(k), self._heads(v),
            dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale,
        )
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-LN transformer block; ``spatial=True`` is the PVTv2 visual block (``f_blocks``),
    ``spatial=False`` the audio block (``a_blocks``) with the same parameters."""

    def __init__(self, dim: int = CHANNELS, num_heads: int = 4, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
                 attn_drop: float = 0.0, sr_ratio: int = 1, spatial: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop, sr_ratio,
                               spatial)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop, use_dwconv=spatial)
        self.apply(_init_block_weights)

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x), hw)


class AudioVisualFusion(nn.Module):
    """Bidirectional dot-product non-local block between a level's tokens and the audio.

    No softmax; products are divided by ``N*h*h`` (the visual token count, whatever the number
    ``M`` of audio rows). Registered-but-unused layers (``g``, ``align_channel_back``) are kept
    so checkpoints load strictly. Returns the fused tokens, the fused audio rows and the W_z
    output before the residual (the Ref-AVS visual projection head reads it).
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        inter = channels // 2
        self.inter = inter
        self.align_channel = nn.Conv1d(channels, channels, 1)
        self.align_channel_back = nn.Conv1d(channels, inter, 1)  # unused
        self.norm_layer = nn.LayerNorm(channels)
        self.g = nn.Conv3d(channels, inter, 1)  # unused
        self.W_z = nn.Sequential(nn.Conv3d(inter, channels, 1), nn.BatchNorm3d(channels))
        self.W_z2 = nn.Sequential(nn.Conv1d(inter, channels, 1), nn.BatchNorm1d(channels))
        for bn in (self.W_z[1], self.W_z2[1]):  # attention paths start as zero residuals
            nn.init.zeros_(bn.weight)
            nn.init.zeros_(bn.bias)
        self.norm_layer2 = nn.LayerNorm(channels)
        self.q_frame = nn.Conv3d(channels, inter, 1)
        self.k_frame = nn.Conv3d(channels, inter, 1)
        self.v_frame = nn.Conv3d(channels, inter, 1)
        self.q_audio = nn.Conv1d(channels, inter, 1)
        self.k_audio = nn.Conv1d(channels, inter, 1)
        self.v_audio = nn.Conv1d(channels, inter, 1)

    def _frame_qkv(self, tokens: torch.Tensor, hw: tuple[int, int]) -> list[torch.Tensor]:
        """The 1x1x1 ``q_frame/k_frame/v_frame`` convs of the token grid, ``(N, ci, 1, h, w)``
        each, computed as one matmul over the tokens with the three weights stacked (one pass
        over the tokens instead of three convs on a channels-last view), then laid out
        channel-first as the convs give them, which the quirky reshapes need."""
        n, _, c = tokens.shape
        convs = (self.q_frame, self.k_frame, self.v_frame)
        weight = torch.cat([m.weight.reshape(m.out_channels, c) for m in convs])
        bias = torch.cat([m.bias for m in convs])
        qkv = F.linear(tokens, weight, bias)
        return [x.transpose(1, 2).reshape(n, self.inter, 1, *hw)
                for x in qkv.split(self.inter, dim=-1)]

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int], audio: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, _, c = tokens.shape
        m = audio.shape[0]  # audio rows: N for AVS, n_audio + 25 text rows for Ref-AVS
        h, w = hw
        ci = self.inter
        frame = tokens.transpose(1, 2).reshape(n, c, 1, h, w)
        audio = self.align_channel(audio.unsqueeze(-1))  # (N, C, 1)

        # Quirk: channel-first conv outputs are reshaped to (1, N*h*w, ci) WITHOUT a permute,
        # so channels and positions are interleaved into "tokens". Needed for the weights.
        q_f, k_f, v_f = (x.reshape(1, -1, ci) for x in self._frame_qkv(tokens, hw))
        q_a, k_a, v_a = (m(audio).reshape(1, -1, ci) for m in (self.q_audio, self.k_audio,
                                                               self.v_audio))
        length = q_f.shape[1]  # N*h*w: the normaliser, over the whole batch

        frame_attn = ((q_f @ k_a.mT) / length) @ v_a  # (1, N*h*w, ci)
        # Quirk: raw reinterpretation of the (ci, N*h*w) layout as (N, ci, 1, h, w).
        frame_attn = frame_attn.transpose(1, 2).reshape(n, ci, 1, h, w)
        frame_z = self.W_z(frame_attn)
        frame = self.norm_layer((frame_z + frame).permute(0, 2, 3, 4, 1))
        tokens_out = frame.reshape(n, h * w, c)

        audio_attn = ((q_a @ k_f.mT) / length) @ v_f  # (1, M, ci)
        # Quirk: raw view of the (ci, M) layout as (M, ci); with Ref-AVS's text rows it mixes
        # channels across the audio AND text rows.
        audio_attn = audio_attn.transpose(1, 2).reshape(m, ci, 1)
        # The residual is the channel-aligned audio, not the module's input.
        audio_out = self.norm_layer2((self.W_z2(audio_attn) + audio).squeeze(-1))
        return tokens_out, audio_out, frame_z


class ProjectionHead(nn.Module):
    """1x1 conv -> BN -> 1x1 conv -> L2 norm; feeds only the training contrastive loss."""

    def __init__(self, dim_in: int, proj_dim: int, one_d: bool) -> None:
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if one_d else (nn.Conv2d, nn.BatchNorm2d)
        self.proj = nn.Sequential(conv(dim_in, proj_dim, 1), bn(proj_dim),
                                  conv(proj_dim, proj_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), p=2, dim=1)


class TokenProjectionHead(nn.Module):
    """Ref-AVS head: Linear -> GELU -> LayerNorm -> Linear on the last dim, then L2 norm over
    dim 1; feeds only the training contrastive loss.

    Quirk: for the visual maps, given as ``(N, h*w, C)``, dim 1 is the spatial positions, so
    each channel is normalised over the positions, not each position over the channels.
    """

    def __init__(self, dim_in: int, proj_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim_in, proj_dim), nn.GELU(), nn.LayerNorm(proj_dim),
                                  nn.Linear(proj_dim, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), p=2, dim=1)


def audio_position_vector(dim: int, device=None, dtype=None) -> torch.Tensor:
    """Quirk: the authors' "position encoding" for audio is a 1-D sine PE of length 1, i.e. the
    constant [sin 0, cos 0, ...] = [0, 1, 0, 1, ...]; it carries no temporal information."""
    pos = torch.zeros(dim, device=device, dtype=dtype)
    pos[1::2] = 1.0
    return pos


class AuralFuser(nn.Module):
    """SAM2 FPN maps + stereo log-mel (+ text for Ref-AVS) -> visual prompts [a, b, c] and audio
    prompts [d1, d2, d3].

    Outputs depend on the whole batch (all ``N`` frames are mixed in the audio blocks and the
    fusion modules), exactly as in the authors' code: feed one clip (``N = T``) at a time to
    reproduce their numbers.

    The defaults are the released AVS model; ``variant="refavs"`` is the released Ref-AVS model
    (adds ``text_proj`` and swaps the projection heads; see the module docstring). ``dim``,
    ``audio_depth`` and ``audio_encoder="tiny"`` are our extensions for compact models (the
    bundled demo model): the same architecture at another width (SAM2's FPN width), with a
    small conv audio encoder instead of VGGish.
    """

    def __init__(self, patch_cfgs: Sequence[Sequence[int]] = ((4, 4), (2, 2), (1, 1)),
                 f_depths: Sequence[int] = (3, 6, 12),
                 block_kw: Mapping[str, Any] | None = None,
                 one_d_kw: Mapping[str, Any] | None = None,
                 freeze_vggish: bool = True, *, dim: int = CHANNELS,
                 audio_depth: int = AUDIO_LEVEL_DEPTH,
                 audio_encoder: str = "vggish", variant: str = "avs") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if len(patch_cfgs) != len(f_depths):
            raise ValueError("patch_cfgs and f_depths must have one entry per FPN level")
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        self.dim = dim
        self.variant = variant
        block_kw = _check_block_kw(block_kw or OFFICIAL_AVS_CONFIG["block_kw"], dim)
        one_d_kw = _check_block_kw(one_d_kw or OFFICIAL_AVS_CONFIG["one_d_kw"], dim)
        if audio_encoder == "vggish":
            if dim != 2 * 128:
                raise ValueError("VGGish gives 2 x 128 = 256 audio channels; use dim=256 or "
                                 "audio_encoder='tiny'")
            self.vgg = VGGish()
            if freeze_vggish:
                self.vgg.requires_grad_(False)
        elif audio_encoder == "tiny":
            self.audio_encoder = TinyAudioEncoder(dim // 2)
        else:
            raise ValueError(f"audio_encoder must be 'vggish' or 'tiny', got {audio_encoder!r}")
        self.position_encoding = PositionEmbeddingSine(dim, normalize=True, warmup_cache=False)
        levels = len(f_depths)
        self.patch_embeds = nn.ModuleList(
            _PatchEmbed(dim, dim, kernel_size=k, stride=s) for k, s in patch_cfgs)
        self.f_blocks = nn.ModuleList(
            nn.ModuleList(Block(**block_kw) for _ in range(depth)) for depth in f_depths)
        self.a_blocks = nn.ModuleList(
            nn.ModuleList(Block(**one_d_kw, spatial=False) for _ in range(audio_depth))
            for _ in range(levels))
        self.fusion_modules = nn.ModuleList(AudioVisualFusion(dim) for _ in range(levels))
        self.smooth_convs = nn.ModuleList(
            nn.Conv2d(dim, dim, kernel_size=1) for _ in range(levels - 1))
        if variant == "avs":
            self.train_proj_v1 = ProjectionHead(dim, dim // 2, one_d=False)
            self.train_proj_a1 = ProjectionHead(dim, dim // 2, one_d=True)
        else:  # registered last, in the authors' order (refavs_fuser_keys.tsv)
            self.train_proj_v1 = TokenProjectionHead(dim, dim // 2)
            self.train_proj_a1 = TokenProjectionHead(dim, dim // 2)
            self.text_proj = nn.Sequential(nn.Linear(TEXT_DIM, TEXT_PROJ_HIDDEN), nn.GELU(),
                                           nn.Linear(TEXT_PROJ_HIDDEN, dim))

    #: Our extension keys, accepted next to the authors' names in config dicts.
    EXTENSION_KEYS = ("dim", "audio_depth", "audio_encoder")

    @classmethod
    def from_official_config(cls, cfg: Mapping[str, Any] | None = None, variant: str = "avs",
                             **kwargs) -> AuralFuser:
        """Build from a dict under the authors' names (``official_arch.json["aural_fuser"]``,
        the same form for both variants); no ``cfg`` gives the released configuration.
        ``variant``: ``"avs"`` or ``"refavs"`` (Ref-AVS, text-referred). Our extension keys
        ``dim``, ``audio_depth`` and ``audio_encoder`` may appear too (compact models)."""
        cfg = dict(OFFICIAL_AVS_CONFIG if cfg is None else cfg)
        unknown = set(cfg) - {"patch_cfgs", "f_depths", "block_kw", "one_d_kw",
                              *cls.EXTENSION_KEYS}
        if unknown:
            raise ValueError(f"unknown AuralFuser config keys: {sorted(unknown)}")
        extra = {k: cfg[k] for k in cls.EXTENSION_KEYS if k in cfg}
        return cls(patch_cfgs=cfg.get("patch_cfgs", OFFICIAL_AVS_CONFIG["patch_cfgs"]),
                   f_depths=cfg.get("f_depths", OFFICIAL_AVS_CONFIG["f_depths"]),
                   block_kw=cfg.get("block_kw"), one_d_kw=cfg.get("one_d_kw"),
                   variant=variant, **extra, **kwargs)

    def embed_audio(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(N, 2, 96, 64) -> (N, dim): VGGish (or the tiny encoder) on left and right
        separately, concatenated [L, R]."""
        if log_mel.dim() != 4 or log_mel.shape[1] != 2:
            raise ValueError(f"log_mel must be (N, 2, 96, 64), got {tuple(log_mel.shape)}")
        n = log_mel.shape[0]
        encoder = self.vgg if hasattr(self, "vgg") else self.audio_encoder
        emb = encoder(log_mel.transpose(0, 1).reshape(2 * n, 1, *log_mel.shape[2:]))
        return torch.cat([emb[:n], emb[n:]], dim=-1)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Ref-AVS: RoBERTa ``last_hidden_state`` ``(1, L, 768)`` (or ``(L, 768)``) -> ``(L, dim)``
        rows for the audio stream. One expression per call, as in the authors' code."""
        if text.dim() == 3 and text.shape[0] == 1:
            text = text[0]
        if text.dim() != 2 or text.shape[-1] != TEXT_DIM or text.shape[0] == 0:
            raise ValueError(f"text must be one expression's hidden states (1, L, {TEXT_DIM}), "
                             f"got {tuple(text.shape)}")
        return self.text_proj(text)

    def forward(self, backbone_fpn: Sequence[torch.Tensor], log_mel: torch.Tensor,
                text: torch.Tensor | None = None, *, projections: bool | None = None,
                audio_embedding: torch.Tensor | None = None):
        """Return ``(visual, audio, proj)``: ``visual = [a, b, c]`` each ``(N, h*h, dim)``,
        ``audio = [d1, d2, d3]`` each ``(M, dim)``; ``proj`` holds the contrastive-loss
        projections (computed in training mode or when ``projections=True``, else None).
        ``audio_embedding``: :meth:`embed_audio` of ``log_mel``, when the caller already has
        it (several expressions over one clip: the audio does not depend on the text).

        AVS: ``M = N`` (one log-mel example per frame). Ref-AVS: ``text`` is the expression's
        hidden states ``(1, 25, 768)``; ``M = n_audio + 25`` rows, audio rows first, and
        ``n_audio`` may differ from ``N`` (the authors' loader does not force it; frame ``t``
        then still takes row ``t`` in the decoder).
        """
        if len(backbone_fpn) != len(self.patch_embeds):
            raise ValueError(f"expected {len(self.patch_embeds)} FPN maps, got {len(backbone_fpn)}")
        if self.variant == "avs":
            if text is not None:
                raise ValueError("text is only for the Ref-AVS fuser (variant='refavs')")
            if backbone_fpn[0].shape[0] != log_mel.shape[0]:
                raise ValueError("backbone_fpn and log_mel must have the same number of frames")
        elif text is None:
            raise ValueError("the Ref-AVS fuser needs text: the expression's RoBERTa hidden "
                             "states (1, 25, 768)")
        d = self.embed_audio(log_mel) if audio_embedding is None else audio_embedding
        if text is not None:
            # Text tokens become extra rows ("frames") of the audio stream, after the audio.
            d = torch.cat([d, self.embed_text(text).to(d.dtype)])
        pos = audio_position_vector(d.shape[-1], d.device, d.dtype)
        visual: list[torch.Tensor] = []
        audio: list[torch.Tensor] = []
        attn_maps: list[torch.Tensor] = []
        for i, fpn in enumerate(backbone_fpn):
            x = self.patch_embeds[i](fpn)
            n, c, h, w = x.shape
            # (1, h*w, dim): the same for every frame, broadcast in the sums below.
            pe = self.position_encoding(x[:1]).flatten(2).transpose(1, 2).to(x.dtype)
            x = x.flatten(2).transpose(1, 2)
            if visual:  # coarser levels start from the previous level's fused tokens
                x = x + visual[-1]
                x = self.smooth_convs[i - 1](x.transpose(1, 2).reshape(n, c, h, w))
                x = x.flatten(2).transpose(1, 2)
            x = x + pe
            d = d + pos  # every row, text rows included (Ref-AVS), here and before the fusion
            for blk in self.f_blocks[i]:
                x = blk(x, (h, w))
            for blk in self.a_blocks[i]:
                d = blk(d)
            x, d, attn_map = self.fusion_modules[i](x + pe, (h, w), d + pos)
            visual.append(x)
            audio.append(d)
            attn_maps.append(attn_map)
        if projections is None:
            projections = self.training
        proj = self.project(visual, audio, attn_maps) if projections else None
        return visual, audio, proj

    def project(self, visual: Sequence[torch.Tensor], audio: Sequence[torch.Tensor],
                attn_maps: Sequence[torch.Tensor] | None = None):
        """Contrastive-loss embeddings ``[[pv(a), pv(b), pv(c)], [pa(d1), pa(d2), pa(d3)]]``,
        ``(N, dim/2, h, h)`` and ``(rows, dim/2, 1)``.

        Ref-AVS (authors' code): the visual head reads each fusion module's W_z output
        (``attn_maps``, before the residual), normalised over the positions, and the audio
        head only the first 10 rows of d1..d3 (Quirks)."""
        if self.variant == "refavs":
            if attn_maps is None:
                raise ValueError("the Ref-AVS projections need the fusion modules' W_z outputs")
            maps = []
            for z in attn_maps:
                n, c, _, h, w = z.shape
                tokens = self.train_proj_v1(z.flatten(2).transpose(1, 2))  # (N, h*w, dim/2)
                maps.append(tokens.reshape(n, h, w, -1).permute(0, 3, 1, 2))
            return [maps, [self.train_proj_a1(d[:REFAVS_AUDIO_PROJ_ROWS]).unsqueeze(-1)
                           for d in audio]]
        maps = []
        for x in visual:
            n, hw, c = x.shape
            side = math.isqrt(hw)  # SAM2 inputs are square
            maps.append(self.train_proj_v1(x.transpose(1, 2).reshape(n, c, side, side)))
        return [maps, [self.train_proj_a1(d.unsqueeze(-1)) for d in audio]]
