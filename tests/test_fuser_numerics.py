"""AuralFuser vs an independent oracle of the authors' numerics (tests/helpers/numerics_oracle.py),
plus the properties that a "clean" reimplementation would get wrong.

Small sizes on CPU: the real widths (C=256, ci=128, VGGish) but depths [1, 2, 1], a token
grid h = 8 (FPN maps 32/16/8) and N = 2..5 frames. Every parameter and BatchNorm statistic is
randomised (the fusion BatchNorm weights are zero by design, which would switch the fusion
attention off and test nothing). Run with ``pytest -s`` to see the measured differences.
"""

from __future__ import annotations

import copy

import pytest
import torch

from auralsam2_core.modeling import fuser as fuser_module
from auralsam2_core.modeling.fuser import OFFICIAL_AVS_CONFIG, AuralFuser, audio_position_vector

from helpers import numerics_oracle as oracle

CFG = {
    "patch_cfgs": [[4, 4], [2, 2], [1, 1]],
    "f_depths": [1, 2, 1],
    "block_kw": dict(OFFICIAL_AVS_CONFIG["block_kw"]),
    "one_d_kw": dict(OFFICIAL_AVS_CONFIG["one_d_kw"]),
}
FPN_SIDES = (32, 16, 8)  # -> h = 8 tokens per side at every level
H = 8
NAMES = ("a", "b", "c", "d1", "d2", "d3")
TOL32 = 1e-4
TOL64 = 1e-10

# Registered (the checkpoints carry them) but never used in forward: docs/numerics.md.
UNUSED_PATTERNS = ("attn.sr.", "attn.norm.", "mlp.dwconv.")  # under a_blocks.*
UNUSED_FUSION = (".g.", ".align_channel_back.")  # under fusion_modules.*
UNUSED_PARAMS_OFFICIAL = 9_733_632  # docs/numerics.md (independent of the f_depths)


def _is_unused(name: str) -> bool:
    if name.startswith("a_blocks."):
        return any(p in name for p in UNUSED_PATTERNS)
    return name.startswith("fusion_modules.") and any(p in name for p in UNUSED_FUSION)



@pytest.fixture(scope="module")
def fuser() -> AuralFuser:
    torch.manual_seed(0)
    f = AuralFuser.from_official_config(CFG)
    oracle.randomize_(f, seed=0)
    return f.eval()


def make_inputs(n: int, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    fpn = [torch.randn(n, 256, s, s, generator=g).to(dtype) for s in FPN_SIDES]
    log_mel = torch.randn(n, 2, 96, 64, generator=g).to(dtype)
    return fpn, log_mel


@torch.no_grad()
def run_fuser(f: AuralFuser, fpn, log_mel) -> list[torch.Tensor]:
    visual, audio, proj = f(fpn, log_mel)
    assert proj is None  # eval: no contrastive projections
    return [*visual, *audio]


@torch.no_grad()
def run_oracle(f: AuralFuser, fpn, log_mel, **kw) -> list[torch.Tensor]:
    visual, audio = oracle.aural_fuser(f.state_dict(), fpn, log_mel, **kw)
    return [*visual, *audio]


def _report(tag: str, diffs) -> str:
    return f"{tag}: " + ", ".join(f"{n}={d:.3e}" for n, d in zip(NAMES, diffs, strict=True))


# --------------------------------------------------------------------------- 1. parity


def test_vggish_matches_oracle(fuser):
    _, log_mel = make_inputs(3)
    with torch.no_grad():
        ours = fuser.embed_audio(log_mel)
        ref = oracle.audio_embedding(fuser.state_dict(), log_mel)
    assert ours.shape == (3, 256)
    assert (ref > 0).any() and (ref == 0).any()  # ReLU output, not degenerate
    diff = float((ours - ref).abs().max())
    print(f"\nVGGish float32 max abs diff: {diff:.3e}")
    assert diff < TOL32


@pytest.mark.parametrize("n", [2, 5])
def test_fuser_matches_oracle_float32(fuser, n):
    fpn, log_mel = make_inputs(n)
    ours = run_fuser(fuser, fpn, log_mel)
    ref = run_oracle(fuser, fpn, log_mel)
    shapes = [(n, H * H, 256)] * 3 + [(n, 256)] * 3
    assert [tuple(t.shape) for t in ours] == shapes
    assert [tuple(t.shape) for t in ref] == shapes
    diffs = oracle.max_abs_diff(ours, ref)
    print("\n" + _report(f"float32 N={n} max abs diff", diffs))
    assert max(diffs) < TOL32, _report("float32", diffs)


def test_fuser_matches_oracle_float64(fuser):
    f64 = copy.deepcopy(fuser).double()
    fpn, log_mel = make_inputs(3, torch.float64)
    ours = run_fuser(f64, fpn, log_mel)
    ref = run_oracle(f64, fpn, log_mel)
    diffs = oracle.max_abs_diff(ours, ref)
    print("\n" + _report("float64 N=3 max abs diff", diffs))
    assert max(diffs) < TOL64, _report("float64", diffs)

    # float32 error of ours and of the oracle against the float64 oracle: both are rounding of
    # the same size (justifies TOL32: outputs are LayerNorm'd, O(1)).
    fpn32, log_mel32 = [t.float() for t in fpn], log_mel.float()
    ours32 = run_fuser(fuser, fpn32, log_mel32)
    ref32 = run_oracle(fuser, fpn32, log_mel32)
    err_ours = oracle.max_abs_diff([t.double() for t in ours32], ref)
    err_ref = oracle.max_abs_diff([t.double() for t in ref32], ref)
    print(_report("float32 ours   vs float64 oracle", err_ours))
    print(_report("float32 oracle vs float64 oracle", err_ref))
    assert max(err_ours) < TOL32 and max(err_ref) < TOL32


def test_raw_reshape_helpers_are_torch_reshape():
    """Self-check of the oracle's index arithmetic against torch's own reshape/view."""
    n, ci, h = 3, 128, H
    t = torch.randn(n, ci, 1, h, h)
    assert torch.equal(oracle.raw_tokens(t), t.reshape(1, -1, ci))
    a = torch.randn(1, n * h * h, ci)
    assert torch.equal(oracle.raw_view_frames(a, n, h, h),
                       a.permute(0, 2, 1).contiguous().view(n, ci, 1, h, h))
    b = torch.randn(1, n, ci)
    assert torch.equal(oracle.raw_view_audio(b, n), b.permute(0, 2, 1).contiguous().view(n, ci))
    # ...and they are NOT the channel-last ("clean") layout
    assert not torch.allclose(oracle.raw_tokens(t), t.permute(0, 2, 3, 4, 1).reshape(1, -1, ci))


# --------------------------------------------------------------------------- 2a. raw reshape


def test_clean_channel_last_reshape_gives_different_outputs(fuser):
    fpn, log_mel = make_inputs(3)
    ours = run_fuser(fuser, fpn, log_mel)
    quirky = run_oracle(fuser, fpn, log_mel)
    clean = run_oracle(fuser, fpn, log_mel, clean=True)
    d_quirky = oracle.max_abs_diff(ours, quirky)
    d_clean = oracle.max_abs_diff(ours, clean)
    print("\n" + _report("ours vs clean (channel-last) oracle", d_clean))
    assert max(d_quirky) < TOL32
    assert min(d_clean) > 0.1, _report("clean", d_clean)


def test_identical_frames_give_different_outputs(fuser):
    """N identical frames: the raw views hand each frame different channel slices, so the
    official outputs differ per frame; a clean channel-last version keeps them identical."""
    fpn, log_mel = make_inputs(1)
    fpn = [t.expand(3, -1, -1, -1).contiguous() for t in fpn]
    log_mel = log_mel.expand(3, -1, -1, -1).contiguous()
    ours = run_fuser(fuser, fpn, log_mel)
    clean = run_oracle(fuser, fpn, log_mel, clean=True)
    for name, o, c in zip(NAMES, ours, clean, strict=True):
        assert float((o[0] - o[1]).abs().max()) > 1e-2, name
        assert float((c[0] - c[1]).abs().max()) < 1e-4, name
        assert float((c[0] - c[2]).abs().max()) < 1e-4, name


# --------------------------------------------------------------------------- 2b. batch mixing


def _frame0(outs):
    return [t[0] for t in outs]


def test_frames_are_mixed_across_the_batch(fuser):
    n = 3
    fpn, log_mel = make_inputs(n)
    base = run_fuser(fuser, fpn, log_mel)

    lm2 = log_mel.clone()
    lm2[1] = torch.randn(2, 96, 64, generator=torch.Generator().manual_seed(7))
    other_audio = run_fuser(fuser, fpn, lm2)
    fpn2 = [t.clone() for t in fpn]
    for t in fpn2:
        t[1] = torch.randn(t[1].shape, generator=torch.Generator().manual_seed(8))
    other_image = run_fuser(fuser, fpn2, log_mel)

    d_audio = oracle.max_abs_diff(_frame0(base), _frame0(other_audio))
    d_image = oracle.max_abs_diff(_frame0(base), _frame0(other_image))
    print("\n" + _report("frame-0 change when frame 1's audio changes", d_audio))
    print(_report("frame-0 change when frame 1's image changes", d_image))
    assert min(d_audio) > 5e-3 and min(d_image) > 1e-2

    # the oracle agrees on the perturbed batches too
    assert max(oracle.max_abs_diff(other_audio, run_oracle(fuser, fpn, lm2))) < TOL32
    assert max(oracle.max_abs_diff(other_image, run_oracle(fuser, fpn2, log_mel))) < TOL32

    # A clean per-frame model (each frame alone) is blind to frame 1 by construction...
    def per_frame0(fpn_, lm_):
        return _frame0(run_oracle(fuser, [t[:1] for t in fpn_], lm_[:1], clean=True))

    clean0 = per_frame0(fpn, log_mel)
    for changed in (per_frame0(fpn, lm2), per_frame0(fpn2, log_mel)):
        assert all(torch.equal(x, y) for x, y in zip(clean0, changed, strict=True))
    # ...and the official outputs for frame 0 also change with the batch size (N=3 vs N=2).
    shorter = run_fuser(fuser, [t[:2] for t in fpn], log_mel[:2])
    assert min(oracle.max_abs_diff(_frame0(base), _frame0(shorter))) > 1e-2


# --------------------------------------------------------------------------- 2c. audio PE


def test_audio_position_vector_is_constant_0101(fuser):
    """Hooks read what our fuser actually adds to d: [0,1,0,1,...] for every frame, before the
    audio blocks and again before the fusion module, at every level."""
    expected = oracle.audio_pos(torch.float32)
    assert torch.equal(expected[:4], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.equal(audio_position_vector(256), expected)

    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i in range(3):
        hooks.append(fuser.a_blocks[i][0].register_forward_pre_hook(
            lambda m, args, i=i: seen.__setitem__(f"a_in{i}", args[0].clone())))
        hooks.append(fuser.a_blocks[i][-1].register_forward_hook(
            lambda m, args, out, i=i: seen.__setitem__(f"a_out{i}", out.clone())))
        hooks.append(fuser.fusion_modules[i].register_forward_pre_hook(
            lambda m, args, i=i: seen.__setitem__(f"fuse_in{i}", args[-1].clone())))
    try:
        fpn, log_mel = make_inputs(4)
        audio = run_fuser(fuser, fpn, log_mel)[3:]
        with torch.no_grad():
            d0 = fuser.embed_audio(log_mel)
    finally:
        for hk in hooks:
            hk.remove()
    previous = [d0, *audio[:2]]
    for i in range(3):
        before_blocks = seen[f"a_in{i}"] - previous[i]
        before_fusion = seen[f"fuse_in{i}"] - seen[f"a_out{i}"]
        for added in (before_blocks, before_fusion):
            assert added.shape == (4, 256)
            torch.testing.assert_close(added, expected.expand(4, -1), atol=1e-5, rtol=0)


def test_frame_order(fuser):
    """No temporal PE: permuting the frames permutes the level-0 audio blocks' output exactly
    (a frame-index PE would break this). The fused outputs are NOT equivariant (the raw views
    move channel slices across frames); the clean channel-last version is."""
    n = 4
    perm = torch.tensor([2, 0, 3, 1])
    fpn, log_mel = make_inputs(n)
    fpn_p, log_mel_p = [t[perm] for t in fpn], log_mel[perm]

    captured: list[torch.Tensor] = []
    hook = fuser.a_blocks[0][-1].register_forward_hook(
        lambda m, args, out: captured.append(out.clone()))
    try:
        ours = run_fuser(fuser, fpn, log_mel)
        ours_p = run_fuser(fuser, fpn_p, log_mel_p)
    finally:
        hook.remove()
    torch.testing.assert_close(captured[1], captured[0][perm], atol=1e-5, rtol=1e-5)

    d_official = oracle.max_abs_diff([t[perm] for t in ours], ours_p)
    print("\n" + _report("official: permuted outputs vs outputs of permuted input", d_official))
    assert min(d_official) > 1e-2

    clean = run_oracle(fuser, fpn, log_mel, clean=True)
    clean_p = run_oracle(fuser, fpn_p, log_mel_p, clean=True)
    assert max(oracle.max_abs_diff([t[perm] for t in clean], clean_p)) < 1e-4


# --------------------------------------------------------------------------- 2d. unused params


def test_unused_parameters_do_not_matter_and_get_no_gradient(fuser):
    names = [k for k, _ in fuser.named_parameters() if _is_unused(k)]
    assert len(names) == 3 * 3 * 6 + 3 * 4  # (sr w/b, norm w/b, dwconv w/b) x 9, (g, back) x 3
    fpn, log_mel = make_inputs(2)
    base = run_fuser(fuser, fpn, log_mel)
    params = dict(fuser.named_parameters())
    g = torch.Generator().manual_seed(3)

    saved = {k: params[k].detach().clone() for k in names}
    try:
        with torch.no_grad():
            for k in names:
                params[k].add_(torch.randn(params[k].shape, generator=g))
        after = run_fuser(fuser, fpn, log_mel)
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                params[k].copy_(v)
    assert all(torch.equal(x, y) for x, y in zip(base, after, strict=True))

    for used in ("a_blocks.0.0.attn.q.weight", "a_blocks.1.2.mlp.fc1.weight",
                 "fusion_modules.0.k_audio.weight", "fusion_modules.2.align_channel.weight",
                 "f_blocks.1.1.attn.sr.weight", "f_blocks.0.0.mlp.dwconv.dwconv.weight"):
        keep = params[used].detach().clone()
        try:
            with torch.no_grad():
                params[used].add_(0.5 * torch.randn(keep.shape, generator=g))
            changed = run_fuser(fuser, fpn, log_mel)
        finally:
            with torch.no_grad():
                params[used].copy_(keep)
        assert max(oracle.max_abs_diff(base, changed)) > 1e-3, used

    # gradients: exactly the unused ones (plus the frozen VGGish and the train-only heads)
    fuser.zero_grad(set_to_none=True)
    try:
        visual, audio, _ = fuser(fpn, log_mel)
        w = torch.Generator().manual_seed(5)
        loss = sum((t * torch.randn(t.shape, generator=w)).sum() for t in [*visual, *audio])
        loss.backward()
        no_grad = {k for k, p in fuser.named_parameters()
                   if p.requires_grad and p.grad is None and not k.startswith("train_proj_")}
        with_grad = {k for k, p in fuser.named_parameters() if p.grad is not None}
        assert no_grad == set(names)
        assert all(float(params[k].grad.abs().max()) > 0 for k in with_grad)
        assert not any(k.startswith("vgg.") for k in with_grad)  # frozen
        unused_numel = sum(params[k].numel() for k in names)
        print(f"\nunused params: {len(names)} tensors, {unused_numel:,} elements")
        assert unused_numel == UNUSED_PARAMS_OFFICIAL
    finally:
        fuser.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- 2e. eval mode


def test_eval_is_deterministic_and_train_mode_differs(fuser):
    f = copy.deepcopy(fuser)
    fpn, log_mel = make_inputs(3)
    buffers = {k: v.clone() for k, v in f.named_buffers()}
    first, second = run_fuser(f, fpn, log_mel), run_fuser(f, fpn, log_mel)
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    assert all(torch.equal(v, buffers[k]) for k, v in f.named_buffers())  # eval: no BN update

    f.train()
    with torch.no_grad():
        torch.manual_seed(11)
        t1 = f(fpn, log_mel)
        torch.manual_seed(12)
        t2 = f(fpn, log_mel)
    train1, train2 = [*t1[0], *t1[1]], [*t2[0], *t2[1]]
    assert t1[2] is not None  # training computes the contrastive projections
    assert min(oracle.max_abs_diff(first, train1)) > 1e-3
    assert min(oracle.max_abs_diff(train1, train2)) > 1e-3  # dropout is random in training
    assert int(f.fusion_modules[0].W_z[1].num_batches_tracked) == 2  # BN updated in training


def test_eval_batchnorm_uses_running_stats(fuser):
    f = copy.deepcopy(fuser)
    fpn, log_mel = make_inputs(3)
    base = run_fuser(f, fpn, log_mel)
    with torch.no_grad():
        for i in range(3):
            f.fusion_modules[i].W_z[1].running_mean.add_(0.5)
            f.fusion_modules[i].W_z2[1].running_var.mul_(3.0)
    shifted = run_fuser(f, fpn, log_mel)
    assert min(oracle.max_abs_diff(base, shifted)) > 1e-2
    assert max(oracle.max_abs_diff(shifted, run_oracle(f, fpn, log_mel))) < TOL32


# --------------------------------------------------------------------------- 2f. CPU inference


@pytest.mark.skipif(not fuser_module._ONEDNN_OPS, reason="this torch has no oneDNN fused ops")
def test_cpu_inference_uses_fused_kernels_with_the_modules_results(fuser):
    """CPU inference adds biases and the MLP's GELU inside oneDNN's kernels and embeds the NCHW
    FPN map by a patch matmul (issue #16); with gradients on, the plain modules run. Both are
    as close to the float64 oracle as the float32 oracle is (rounding only), for NCHW and
    channels-last FPN maps alike."""
    fpn, log_mel = make_inputs(3)
    f64 = copy.deepcopy(fuser).double()
    ref64 = run_oracle(f64, [t.double() for t in fpn], log_mel.double())
    rounding = max(oracle.max_abs_diff([t.double() for t in run_oracle(fuser, fpn, log_mel)],
                                       ref64))
    for maps in (fpn, [t.contiguous(memory_format=torch.channels_last) for t in fpn]):
        with torch.profiler.profile() as prof:
            fast = run_fuser(fuser, maps, log_mel)
        ops = {e.key for e in prof.key_averages()}
        assert {"mkldnn::_linear_pointwise", "mkldnn::_convolution_pointwise"} <= ops
        with torch.enable_grad():
            visual, audio, _ = fuser(maps, log_mel)
        assert visual[0].requires_grad  # the autograd path: PyTorch's modules
        modules = [t.detach() for t in [*visual, *audio]]
        for tag, out in (("fused kernels", fast), ("modules", modules)):
            err = oracle.max_abs_diff([t.double() for t in out], ref64)
            print("\n" + _report(f"{tag} vs float64 oracle (float32 oracle: {rounding:.2e})",
                                 err))
            assert max(err) < 3 * rounding, _report(tag, err)
        assert max(oracle.max_abs_diff(fast, modules)) > 0  # two paths did run
