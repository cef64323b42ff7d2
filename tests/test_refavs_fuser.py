"""Ref-AVS AuralFuser (variant="refavs") vs an independent oracle of the authors' numerics
(tests/helpers/refavs_oracle.py), the released key layout, and the quirks that a clean
reimplementation would get wrong (docs/numerics.md, Ref-AVS).

Small sizes on CPU: the real widths (C=256, ci=128, VGGish, text 768) but depths [1, 2, 1], a
token grid h = 8 (FPN maps 32/16/8), T = 10 frames and the authors' 25 text tokens (M = 35
rows). Every parameter and BatchNorm statistic is randomised. ``pytest -s`` prints the errors.
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from auralsam2_core.modeling.fuser import (
    OFFICIAL_AVS_CONFIG,
    REFAVS_AUDIO_PROJ_ROWS,
    AuralFuser,
    audio_position_vector,
)

from helpers import numerics_oracle as base
from helpers import refavs_oracle as oracle

RELEASE = json.loads((Path(__file__).parent / "data/authors_release.json").read_text())
CFG = {
    "patch_cfgs": [[4, 4], [2, 2], [1, 1]],
    "f_depths": [1, 2, 1],
    "block_kw": dict(OFFICIAL_AVS_CONFIG["block_kw"]),
    "one_d_kw": dict(OFFICIAL_AVS_CONFIG["one_d_kw"]),
}
FPN_SIDES = (32, 16, 8)
H = 8
T = 10
L = 25
NAMES = ("a", "b", "c", "d1", "d2", "d3", "pv1", "pv2", "pv3", "pa1", "pa2", "pa3")
TOL32 = 1e-4  # relative to each tensor's max magnitude (the spec's parity measure)
TOL64 = 1e-10


@pytest.fixture(scope="module")
def fuser() -> AuralFuser:
    torch.manual_seed(0)
    f = AuralFuser.from_official_config(CFG, variant="refavs")
    base.randomize_(f, seed=0)
    return f.eval()


def make_inputs(n: int = T, n_audio: int | None = None, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    fpn = [torch.randn(n, 256, s, s, generator=g).to(dtype) for s in FPN_SIDES]
    log_mel = torch.randn(n if n_audio is None else n_audio, 2, 96, 64, generator=g).to(dtype)
    text = torch.randn(1, L, 768, generator=g).to(dtype)
    return fpn, log_mel, text


@torch.no_grad()
def run_fuser(f: AuralFuser, fpn, log_mel, text) -> list[torch.Tensor]:
    visual, audio, proj = f(fpn, log_mel, text=text, projections=True)
    return [*visual, *audio, *proj[0], *proj[1]]


@torch.no_grad()
def run_oracle(f: AuralFuser, fpn, log_mel, text, **kw) -> list[torch.Tensor]:
    out = oracle.aural_fuser(f.state_dict(), fpn, log_mel, text, **kw)
    return [*out["visual"], *out["audio"], *out["proj_v"], *out["proj_a"]]


def _report(tag: str, diffs, names=NAMES) -> str:
    return f"{tag}: " + ", ".join(f"{n}={d:.2e}" for n, d in zip(names, diffs, strict=True))


# --------------------------------------------------------------------------- layout


def _key_rows(path) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in path.open()
            if line.strip() and not line.startswith("#")]


def test_state_dict_equals_refavs_key_list():
    f = AuralFuser.from_official_config(variant="refavs")
    rows = _key_rows(files("auralsam2_core").joinpath("data/refavs_fuser_keys.tsv"))
    sd = f.state_dict()
    assert len(rows) == len(sd) == 752
    assert list(sd) == [r[0] for r in rows]  # the authors' order
    for key, shape, dtype in rows:
        assert tuple(sd[key].shape) == tuple(int(x) for x in shape.split(",") if x), key
        assert str(sd[key].dtype).removeprefix("torch.") == dtype, key
    params = dict(f.named_parameters())
    assert sum(p.numel() for p in params.values()) == 131_470_464
    assert sum(p.numel() for k, p in params.items() if k.startswith("vgg.")) == 72_141_184
    assert sum(p.numel() for k, p in params.items() if k.startswith("text_proj.")) == 1_049_856
    assert sum(b.numel() for _, b in f.named_buffers()) == 3_078
    assert not any(k.startswith("train_proj_v1.proj.1.") for k in sd)  # GELU: no params
    assert all(not p.requires_grad for p in f.vgg.parameters())
    # the AVS fuser is untouched by the variant
    assert len(AuralFuser.from_official_config().state_dict()) == 754


def test_bundled_key_list_is_the_reference_one():
    bundled = files("auralsam2_core").joinpath("data/refavs_fuser_keys.tsv").read_bytes()
    expected = RELEASE["key_lists_sha256"]["refavs_fuser_keys.tsv"]
    assert hashlib.sha256(bundled).hexdigest() == expected


def test_variant_and_text_are_checked(fuser):
    fpn, log_mel, text = make_inputs(2)
    with pytest.raises(ValueError, match="variant must be one of"):
        AuralFuser.from_official_config(CFG, variant="ref")
    with pytest.raises(ValueError, match="needs text"):
        fuser(fpn, log_mel)
    with pytest.raises(ValueError, match=r"\(1, L, 768\)"):
        fuser(fpn, log_mel, text=text[:, :, :100])
    with pytest.raises(ValueError, match=r"\(1, L, 768\)"):
        fuser(fpn, log_mel, text=text.expand(2, -1, -1))  # one expression per call
    avs = AuralFuser.from_official_config({"f_depths": [1, 1, 1]}).eval()
    with pytest.raises(ValueError, match="only for the Ref-AVS fuser"):
        avs(fpn, log_mel, text=text)


# --------------------------------------------------------------------------- parity


def test_fuser_matches_oracle_float32(fuser):
    fpn, log_mel, text = make_inputs()
    ours = run_fuser(fuser, fpn, log_mel, text)
    ref = run_oracle(fuser, fpn, log_mel, text)
    shapes = ([(T, H * H, 256)] * 3 + [(T + L, 256)] * 3 + [(T, 128, H, H)] * 3
              + [(REFAVS_AUDIO_PROJ_ROWS, 128, 1)] * 3)
    assert [tuple(t.shape) for t in ours] == shapes
    assert [tuple(t.shape) for t in ref] == shapes
    rel = oracle.max_rel_diff(ours, ref)
    print("\n" + _report("float32 T=10 M=35 max rel diff", rel))
    print(_report("float32 T=10 M=35 max abs diff", base.max_abs_diff(ours, ref)))
    assert max(rel) < TOL32, _report("float32", rel)


def test_fuser_matches_oracle_float64(fuser):
    f64 = copy.deepcopy(fuser).double()
    fpn, log_mel, text = make_inputs(dtype=torch.float64)
    ours = run_fuser(f64, fpn, log_mel, text)
    ref = run_oracle(f64, fpn, log_mel, text)
    rel = oracle.max_rel_diff(ours, ref)
    print("\n" + _report("float64 max rel diff", rel))
    print(_report("float64 max abs diff", base.max_abs_diff(ours, ref)))
    assert max(rel) < TOL64, _report("float64", rel)

    # float32 error of ours and of the oracle against the float64 oracle: same size.
    fpn32, log_mel32, text32 = [t.float() for t in fpn], log_mel.float(), text.float()
    err_ours = oracle.max_rel_diff([t.double() for t in run_fuser(fuser, fpn32, log_mel32,
                                                                  text32)], ref)
    err_ref = oracle.max_rel_diff([t.double() for t in run_oracle(fuser, fpn32, log_mel32,
                                                                  text32)], ref)
    print(_report("float32 ours   vs float64 oracle (rel)", err_ours))
    print(_report("float32 oracle vs float64 oracle (rel)", err_ref))
    assert max(err_ours) < TOL32 and max(err_ref) < TOL32


@pytest.mark.parametrize("n_audio", [9, 11])
def test_audio_rows_other_than_frames_shift_the_rows(fuser, n_audio):
    """The authors' loader may give n_audio != T; nothing is forced: M = n_audio + 25 rows,
    the visual side still has T frames, and the audio head still takes the first 10 rows (with
    9 audio rows, the first text row)."""
    fpn, log_mel, text = make_inputs(n_audio=n_audio)
    ours = run_fuser(fuser, fpn, log_mel, text)
    ref = run_oracle(fuser, fpn, log_mel, text)
    assert tuple(ours[3].shape) == (n_audio + L, 256)
    assert tuple(ours[0].shape) == (T, H * H, 256)
    assert tuple(ours[-1].shape) == (REFAVS_AUDIO_PROJ_ROWS, 128, 1)
    rel = oracle.max_rel_diff(ours, ref)
    print("\n" + _report(f"n_audio={n_audio} max rel diff", rel))
    assert max(rel) < TOL32


# --------------------------------------------------------------------------- quirks


def test_raw_view_over_all_m_rows(fuser):
    """The audio-side raw view mixes channels across audio and text rows; a permute-based
    ("clean") fusion gives other audio outputs and, from level 1 on, other visual outputs."""
    fpn, log_mel, text = make_inputs()
    ours = run_fuser(fuser, fpn, log_mel, text)
    clean = run_oracle(fuser, fpn, log_mel, text, audio_view="permute")
    d = base.max_abs_diff(ours, clean)
    print("\n" + _report("ours vs permute-view oracle", d))
    assert d[0] < 1e-4  # level-0 visual output is computed before any audio-side view
    assert min(d[1:6]) > 0.1, _report("permute", d)


def test_divisor_is_visual_token_count_not_rows(fuser):
    fpn, log_mel, text = make_inputs()
    ours = run_fuser(fuser, fpn, log_mel, text)
    by_rows = run_oracle(fuser, fpn, log_mel, text, divisor=T + L)
    d = base.max_abs_diff(ours, by_rows)
    print("\n" + _report("ours vs divisor-M oracle", d))
    assert min(d[:6]) > 1e-2


def test_position_vector_on_every_row_twice(fuser):
    """Hooks read what our fuser adds: [0,1,0,1,...] on all 35 rows (text rows included),
    before the audio blocks and again before the fusion module, at every level; an oracle that
    spares the text rows differs."""
    expected = audio_position_vector(256).expand(T + L, -1)
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i in range(3):
        hooks.append(fuser.a_blocks[i][0].register_forward_pre_hook(
            lambda m, args, i=i: seen.__setitem__(f"a_in{i}", args[0].clone())))
        hooks.append(fuser.a_blocks[i][-1].register_forward_hook(
            lambda m, args, out, i=i: seen.__setitem__(f"a_out{i}", out.clone())))
        hooks.append(fuser.fusion_modules[i].register_forward_pre_hook(
            lambda m, args, i=i: seen.__setitem__(f"fuse_in{i}", args[-1].clone())))
    fpn, log_mel, text = make_inputs()
    try:
        outs = run_fuser(fuser, fpn, log_mel, text)
        with torch.no_grad():
            d0 = torch.cat([fuser.embed_audio(log_mel), fuser.embed_text(text)])
    finally:
        for hk in hooks:
            hk.remove()
    previous = [d0, *outs[3:5]]
    for i in range(3):
        for added in (seen[f"a_in{i}"] - previous[i], seen[f"fuse_in{i}"] - seen[f"a_out{i}"]):
            assert added.shape == (T + L, 256)
            torch.testing.assert_close(added, expected, atol=1e-5, rtol=0)
    no_text_pos = run_oracle(fuser, fpn, log_mel, text, text_pos="none")
    assert min(base.max_abs_diff(outs, no_text_pos)[3:6]) > 1e-2


def test_text_rows_follow_audio_rows(fuser):
    """Zeroing text_proj's output changes only rows 10..34 before the first audio block; text
    rows first would leave the level-0 visual output as it is (to rounding) but change
    everything after the first audio-side raw view."""
    fpn, log_mel, text = make_inputs()
    rows0 = []
    hook = fuser.a_blocks[0][0].register_forward_pre_hook(
        lambda m, args: rows0.append(args[0].clone()))
    zeroed = copy.deepcopy(fuser)
    with torch.no_grad():
        zeroed.text_proj[2].weight.zero_()
        zeroed.text_proj[2].bias.zero_()
    h2 = zeroed.a_blocks[0][0].register_forward_pre_hook(
        lambda m, args: rows0.append(args[0].clone()))
    try:
        run_fuser(fuser, fpn, log_mel, text)
        run_fuser(zeroed, fpn, log_mel, text)
    finally:
        hook.remove()
        h2.remove()
    assert torch.equal(rows0[0][:T], rows0[1][:T])
    assert (rows0[0][T:] - rows0[1][T:]).abs().amax(dim=1).min() > 1e-3  # every text row
    torch.testing.assert_close(rows0[1][T:], audio_position_vector(256).expand(L, -1))

    ours = run_fuser(fuser, fpn, log_mel, text)
    text_first = run_oracle(fuser, fpn, log_mel, text, text_first=True)
    d = base.max_abs_diff(ours, text_first)
    print("\n" + _report("ours vs text-first oracle", d))
    assert d[0] < 1e-4
    assert min(d[1:6]) > 1e-2


def test_projection_heads(fuser):
    """Visual head: each channel has unit norm over the h*h positions (not each position over
    the channels); audio head: the first 10 rows only, unit norm over channels."""
    fpn, log_mel, text = make_inputs()
    with torch.no_grad():
        _, audio, (pv, pa) = fuser(fpn, log_mel, text=text, projections=True)
    for v in pv:
        torch.testing.assert_close(v.pow(2).sum(dim=(2, 3)), torch.ones(T, 128))
        assert (v.pow(2).sum(dim=1) - 1).abs().max() > 0.5
    for a, d in zip(pa, audio, strict=True):
        assert a.shape == (10, 128, 1)
        torch.testing.assert_close(a.pow(2).sum(dim=1), torch.ones(10, 1))
        with torch.no_grad():
            torch.testing.assert_close(a[:, :, 0], fuser.train_proj_a1(d[:10]))
    assert fuser(fpn, log_mel, text=text)[2] is None  # eval: none unless asked


def test_training_mode_projections_and_gradients(fuser):
    """Training: projections on, gradients reach text_proj and both heads, none reach VGGish."""
    f = copy.deepcopy(fuser).train()
    fpn, log_mel, text = make_inputs(n=3, n_audio=3)
    visual, audio, (pv, pa) = f(fpn, log_mel, text=text)
    assert audio[0].shape == (3 + L, 256) and pa[0].shape == (10, 128, 1)  # [:10] of 28 rows
    loss = sum(t.sum() for t in [*visual, *audio]) + sum((t * t.detach()).sum()
                                                          for t in [*pv, *pa])
    loss.backward()
    for name in ("text_proj.0.weight", "text_proj.2.weight", "train_proj_v1.proj.3.weight",
                 "train_proj_a1.proj.0.weight"):
        grad = dict(f.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().max()) > 0, name
    assert all(p.grad is None for p in f.vgg.parameters())
