"""The assembled model: layout against the authors' fuser, SAM2 configs, clip forward, memory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from auralsam2_core.cli import main
from auralsam2_core.cli.check import _fuser_layout_report
from auralsam2_core.modeling.build import SAM2_CONFIGS, build_fuser, build_sam2_model
from auralsam2_core.modeling.checkpoint import CheckpointError, save_state_dict
from auralsam2_core.modeling.fuser import AuralFuser
from auralsam2_core.modeling.model import AuralSAM2, TrackState, choose_masks

ROOT = Path(__file__).resolve().parents[1]
RELEASE = json.loads((ROOT / "tests/data/authors_release.json").read_text())
SMALL_FUSER = {"f_depths": [1, 1, 1]}
SIZE = 64  # SAM2 input size for tests: 16x16 / 8x8 / 4x4 FPN maps


@pytest.fixture(scope="module")
def official_fuser() -> AuralFuser:
    return AuralFuser.from_official_config().eval()


@pytest.fixture(scope="module")
def model(tiny_fused_model):
    return tiny_fused_model


def _clip(t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 3, SIZE, SIZE, generator=g), torch.randn(t, 2, 96, 64, generator=g)


def test_state_dict_equals_official_key_list(official_fuser):
    report = _fuser_layout_report(official_fuser)
    assert report["keys"] == report["official_keys"] == 754
    assert report["same_keys_in_order"]
    assert report["mismatches"] == []
    assert report["fuser_params"] == 58_279_424
    assert report["vggish_params"] == 72_141_184
    assert all(not p.requires_grad for p in official_fuser.vgg.parameters())


def test_bundled_key_list_is_the_reference_one():
    bundled = ROOT / "auralsam2_core/data/official_fuser_keys.tsv"
    assert hashlib.sha256(bundled.read_bytes()).hexdigest() == \
        RELEASE["key_lists_sha256"]["official_fuser_keys.tsv"]


def test_from_official_config_accepts_authors_json(official_fuser):
    cfg = RELEASE["aural_fuser"]
    fuser = AuralFuser.from_official_config(cfg)
    assert {k: v.shape for k, v in fuser.state_dict().items()} == \
        {k: v.shape for k, v in official_fuser.state_dict().items()}
    with pytest.raises(ValueError, match="unknown AuralFuser config keys"):
        AuralFuser.from_official_config({**cfg, "depths": [1]})


@pytest.mark.parametrize("layout", ["plain", "aural_fuser.", "wrapped"])
def test_released_checkpoint_formats_load_strictly(tmp_path, official_fuser, layout):
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v
          for k, v in official_fuser.state_dict().items()}
    if layout == "aural_fuser.":  # the authors' whole-model layout (SAM2 under v_model.)
        saved = {f"aural_fuser.{k}": v for k, v in sd.items()}
        saved["v_model.image_encoder.trunk.pos_embed"] = torch.zeros(1)
    elif layout == "wrapped":
        saved = {"model": sd}
    else:
        saved = sd
    path = tmp_path / "auralsam2_avs.pth"
    torch.save(saved, path)
    fuser = build_fuser(path)
    for k, v in fuser.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_wrong_shape_checkpoint_is_a_clear_error(tmp_path, official_fuser):
    sd = dict(official_fuser.state_dict())
    sd["patch_embeds.0.weight"] = torch.zeros(256, 256, 2, 2)
    path = save_state_dict(sd, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"patch_embeds\.0\.weight") as e:
        build_fuser(path)
    assert "bad.safetensors" in str(e.value) and "AuralFuser" in str(e.value)


@pytest.mark.parametrize("config", sorted(SAM2_CONFIGS))
def test_every_shipped_sam2_config_runs(config):
    fuser = AuralFuser.from_official_config(SMALL_FUSER).eval()
    m = AuralSAM2(build_sam2_model(config, image_size=SIZE), fuser)
    frames, log_mel = _clip(2)
    with torch.inference_mode():
        out = m.forward_clip(frames, log_mel)
    assert out.mask_logits.shape == (2, 1, SIZE // 4, SIZE // 4)
    assert out.multimask_logits.shape == (2, 3, SIZE // 4, SIZE // 4)
    assert out.ious.shape == (2, 3) and out.object_score_logits.shape == (2, 1)


def test_sam2_checkpoint_loads_and_changes_the_model(tmp_path):
    sam2 = build_sam2_model("sam2.1_hiera_t", image_size=SIZE)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v
          for k, v in sam2.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "sam2.1_hiera_tiny.pt")
    loaded = build_sam2_model("sam2.1_hiera_t", tmp_path / "sam2.1_hiera_tiny.pt", image_size=SIZE)
    assert torch.equal(loaded.state_dict()["no_mem_embed"], sd["no_mem_embed"])
    with pytest.raises(CheckpointError, match="SAM2"):
        build_sam2_model("sam2.1_hiera_s", tmp_path / "sam2.1_hiera_tiny.pt", image_size=SIZE)


def test_unknown_config_and_bad_size_are_clear_errors():
    with pytest.raises(ValueError, match="unknown SAM2 config"):
        build_sam2_model("sam3_hiera_t")
    with pytest.raises(ValueError, match="multiple of 32"):
        build_sam2_model("sam2_hiera_t", image_size=100)


def test_fuser_sees_raw_fpn_and_decoder_gets_conv_s0_s1(model):
    """FPN maps go to the fuser BEFORE conv_s0/conv_s1; the decoder's skips get them after."""
    frames, log_mel = _clip(2)
    seen = {}

    def grab_fpn(_m, args):
        seen.setdefault("fpn", [x.clone() for x in args[0]])

    def grab_skips(_m, _args, kwargs):
        seen.setdefault("high_res", kwargs["high_res_features"])

    h1 = model.fuser.register_forward_pre_hook(grab_fpn)
    h2 = model.sam2.sam_mask_decoder.register_forward_pre_hook(grab_skips, with_kwargs=True)
    try:
        with torch.inference_mode():
            model.forward_clip(frames, log_mel)
            raw = model.sam2.image_encoder(frames)["backbone_fpn"]
            s0 = model.sam2.sam_mask_decoder.conv_s0(raw[0][:1])
    finally:
        h1.remove()
        h2.remove()
    for a, b in zip(seen["fpn"], raw, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(seen["high_res"][0], s0)


def test_clip_forward_memory_and_prompts(model):
    frames, log_mel = _clip(5)
    with torch.inference_mode():
        fresh = model.forward_clip(frames, log_mel)
        state = model.new_state()
        model.forward_clip(frames, log_mel, state)
        continued = model.forward_clip(frames, log_mel, state)
        silent = model.forward_clip(frames, torch.zeros_like(log_mel))
    assert state.next_frame == 10
    assert list(state.output_dict["cond_frame_outputs"]) == [0]
    # SAM2 memory from the first clip changes the second clip's frames.
    assert not torch.allclose(fresh.raw_multimask_logits, continued.raw_multimask_logits)
    # The audio reaches the masks.
    assert not torch.allclose(fresh.raw_multimask_logits, silent.raw_multimask_logits)
    # Same input, same state -> same output (eval mode is deterministic).
    with torch.inference_mode():
        again = model.forward_clip(frames, log_mel)
    torch.testing.assert_close(again.raw_multimask_logits, fresh.raw_multimask_logits)


def test_memory_state_is_bounded(model):
    frames, log_mel = _clip(4)
    state = model.new_state()
    with torch.inference_mode():
        for _ in range(8):
            model.forward_clip(frames, log_mel, state)
    kept = state.output_dict["non_cond_frame_outputs"]
    assert state.next_frame == 32
    assert len(kept) <= model._memory_horizon() + 1
    assert max(kept) == 31 and set(next(iter(kept.values()))) <= {
        "maskmem_features", "maskmem_pos_enc", "obj_ptr", "object_score_logits"}


def test_memory_encoder_gets_binarised_mask(model):
    masks = []

    def grab(_m, args):
        masks.append(args[1].clone())

    handle = model.sam2.memory_encoder.register_forward_pre_hook(grab)
    try:
        with torch.inference_mode():
            model.forward_clip(*_clip(3))
    finally:
        handle.remove()
    assert len(masks) == 3
    scale, bias = model.sam2.sigmoid_scale_for_mem_enc, model.sam2.sigmoid_bias_for_mem_enc
    for m in masks:  # binarised, then SAM2's scale and bias: two values, not a sigmoid ramp
        assert set(m.unique().tolist()) <= {bias, scale + bias}


def test_a_last_clip_skips_only_its_final_frames_memory(model):
    """track_features(last=True): the same outputs, one memory encoding fewer (the final
    frame's, which nothing would read), and a state that refuses to go on."""
    frames, log_mel = _clip(3)
    calls = []
    handle = model.sam2.memory_encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with torch.inference_mode():
            enc = model.encode_images(frames)
            features, _ = model.clip_features(enc, log_mel)
            full = model.track_features(features, model.new_state())
            n_full = len(calls)
            state = model.new_state()
            ended = model.track_features(features, state, last=True)
    finally:
        handle.remove()
    assert (n_full, len(calls) - n_full) == (3, 2)
    for a, b in zip(ended.__dict__.values(), full.__dict__.values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    assert state.ended and 2 not in state.output_dict["non_cond_frame_outputs"]
    with pytest.raises(ValueError, match="ended"), torch.inference_mode():
        model.track_features(features, state)


def test_mask_choices():
    # (T=3, M=3, 4, 4): frame t, candidate i holds the value i
    multi = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(3)], 1)
    ious = torch.tensor([[0.1, 0.9, 0.2], [0.8, 0.1, 0.3], [0.1, 0.2, 0.7]])
    obj = torch.tensor([[1.0], [-2.0], [0.5]])
    first, idx = choose_masks(multi, ious, obj, "first")
    assert idx.tolist() == [0, 0, 0] and first[:, 0, 0, 0].tolist() == [0.0, 0.0, 0.0]
    best, idx = choose_masks(multi, ious, obj, "iou_select")
    assert idx.tolist() == [1, 0, 2] and best[:, 0, 0, 0].tolist() == [1.0, 0.0, 2.0]
    occ, _ = choose_masks(multi, ious, obj, "iou_occ_select")
    assert occ[1].max() < -1000 and occ[0, 0, 0, 0] == 1.0 and occ[2, 0, 0, 0] == 2.0
    with pytest.raises(ValueError, match="mask_choice"):
        choose_masks(multi, ious, obj, "best")


def test_bad_inputs_are_clear_errors(model):
    frames, log_mel = _clip(3)
    with pytest.raises(ValueError, match="frames must be"):
        model.forward_clip(frames[:, :, :32], log_mel)
    with pytest.raises(ValueError, match="one log-mel example per frame"):
        model.forward_clip(frames, log_mel[:2])
    with pytest.raises(ValueError, match=r"\(N, 2, 96, 64\)"):
        model.fuser.embed_audio(log_mel[:, :1])


def test_training_mode_keeps_sam2_frozen_and_returns_projections(model):
    frames, log_mel = _clip(2)
    model.train()
    try:
        assert not model.sam2.training and model.fuser.training
        out = model.forward_clip(frames, log_mel)
        assert out.projections is not None and out.projections[0][0].shape[1] == 128
        loss = out.raw_multimask_logits.mean() + out.projections[1][0].sum()
        loss.backward()
        assert all(p.grad is None for p in model.sam2.parameters())
        assert model.fuser.patch_embeds[0].weight.grad is not None
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert isinstance(model.new_state(100), TrackState)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_matches_cpu(model):
    frames, log_mel = _clip(3)
    with torch.inference_mode():
        cpu = model.forward_clip(frames, log_mel)
        model.cuda()
        try:
            gpu = model.forward_clip(frames.cuda(), log_mel.cuda())
        finally:
            model.cpu()
    assert gpu.mask_logits.dtype == torch.float32
    agree = ((gpu.mask_logits.cpu() > 0) == (cpu.mask_logits > 0)).float().mean()
    assert agree > 0.9


def test_cli_check_runs_offline(capsys):
    assert main(["check", "--image-size", "64", "--frames", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["fuser_layout"]["same_keys_in_order"] and report["frames"] == 2
    assert "check: OK" in out.err
