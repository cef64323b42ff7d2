"""Ref-AVS fuser checkpoints (docs/numerics.md): the released plain layout with the
authors' 752 keys loads strictly; so do the whole-AVmodel layout (aural_fuser. kept, v_model.
and t_model. dropped) and the legacy layouts the authors' remap tool maps. Files are made by
the tests (same keys, random values)."""

from __future__ import annotations

import pytest
import torch

from auralsam2_core.modeling.build import build_fuser
from auralsam2_core.modeling.checkpoint import (
    CheckpointError,
    load_into,
    read_state_dict,
    refavs_fuser_checkpoint_filter,
)
from auralsam2_core.modeling.fuser import AuralFuser

SMALL = {"f_depths": [1, 1, 1]}
# The remap tool's `training_layers.<i>` order (docs/numerics.md), written out by level.
LEGACY_INDEX = {"patch_embeds.0": 0, "patch_embeds.1": 1, "patch_embeds.2": 2,
                "f_blocks.0": 3, "a_blocks.0": 4, "fusion_modules.0": 5,
                "f_blocks.1": 6, "a_blocks.1": 7, "fusion_modules.1": 8,
                "f_blocks.2": 9, "a_blocks.2": 10, "fusion_modules.2": 11,
                "smooth_convs.0": 12, "smooth_convs.1": 13,
                "train_proj_v1": 14, "train_proj_a1": 15, "text_proj": 16}


def _random_sd(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 5)
            for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def small_sd():
    return _random_sd(AuralFuser.from_official_config(SMALL, variant="refavs"))


def _legacy_name(key: str) -> str:
    if key.startswith("vgg."):
        return "finetuning_layers.0." + key[4:]
    for name, i in LEGACY_INDEX.items():
        if key.startswith(name + "."):
            return f"training_layers.{i}." + key[len(name) + 1:]
    raise AssertionError(key)


def _load_small(sd_in) -> AuralFuser:
    fuser = AuralFuser.from_official_config(SMALL, variant="refavs")
    load_into(fuser, refavs_fuser_checkpoint_filter(sd_in), what="Ref-AVS fuser", source="test")
    return fuser


def _assert_equal(fuser, sd):
    got = fuser.state_dict()
    assert got.keys() == sd.keys()
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_released_layout_loads_strictly(tmp_path):
    """The full 752-key fuser, saved plain as the authors release it."""
    fuser = AuralFuser.from_official_config(variant="refavs")
    sd = {k: v.clone() for k, v in fuser.state_dict().items()}
    del fuser
    path = tmp_path / "auralsam2_refavs_best.pth"
    torch.save(sd, path)
    loaded = build_fuser(path, variant="refavs")
    assert len(sd) == 752
    _assert_equal(loaded, sd)


LAYOUTS = {
    "aural_fuser_prefix": lambda sd: {f"aural_fuser.{k}": v for k, v in sd.items()},
    "whole_avmodel": lambda sd: {"v_model.image_encoder.trunk.pos_embed": torch.zeros(1, 2),
                                 "t_model.embeddings.word_embeddings.weight": torch.zeros(3, 2),
                                 **{f"aural_fuser.{k}": v for k, v in sd.items()}},
    "ddp_wrapped": lambda sd: {"model": {f"module.aural_fuser.{k}": v for k, v in sd.items()}},
    "legacy_training_layers": lambda sd: {f"aural_fuser.{_legacy_name(k)}": v
                                          for k, v in sd.items()},
    "legacy_audio_prompter": lambda sd: {f"audio_prompter.{_legacy_name(k)}": v
                                         for k, v in sd.items()},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_other_layouts_load_strictly(layout, small_sd, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(LAYOUTS[layout](small_sd), path)
    _assert_equal(_load_small(read_state_dict(path)), small_sd)


def test_flat_legacy_names(small_sd):
    flat = {}
    for k, v in small_sd.items():
        for i in range(3):
            k = k.replace(f"patch_embeds.{i}.", f"train_f_patch_embed{i + 1}.")
            k = k.replace(f"fusion_modules.{i}.", f"train_f_a_block{i + 1}.")
        flat[f"audio_prompter.{k}"] = v
    assert any("train_f_a_block2" in k for k in flat)
    _assert_equal(_load_small(flat), small_sd)


def test_own_names_win_over_legacy_duplicates(small_sd):
    """Old exports carry both the named layers and the training_layers list (same tensors);
    if they disagree, the named key is the one loaded."""
    both = {f"aural_fuser.{k}": v for k, v in small_sd.items()}
    both.update({f"aural_fuser.{_legacy_name(k)}": torch.zeros_like(v) if v.is_floating_point()
                 else v for k, v in small_sd.items()})
    _assert_equal(_load_small(both), small_sd)


def test_unknown_legacy_index_is_named(small_sd):
    sd = dict(small_sd)
    sd["training_layers.17.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"training_layers\.17\.weight"):
        _load_small(sd)


def test_avs_checkpoint_is_a_clear_error(tmp_path):
    avs = _random_sd(AuralFuser.from_official_config(SMALL))
    path = tmp_path / "auralsam2_avs_v1m.pth"
    torch.save(avs, path)
    with pytest.raises(CheckpointError, match="AVS fuser checkpoint"):
        build_fuser(path, SMALL, variant="refavs")


def test_refavs_checkpoint_into_avs_fuser_names_the_differences(small_sd, tmp_path):
    path = tmp_path / "auralsam2_refavs_best.pth"
    torch.save(small_sd, path)
    with pytest.raises(CheckpointError, match=r"text_proj\.0\.weight") as e:
        build_fuser(path, SMALL)  # variant avs
    assert "train_proj_v1.proj.0.weight" in str(e.value)  # shape mismatch listed


def test_sam2_checkpoint_is_a_clear_error():
    with pytest.raises(CheckpointError, match="SAM2 checkpoint"):
        refavs_fuser_checkpoint_filter({"model": {"image_encoder.trunk.pos_embed": torch.zeros(1)}})
