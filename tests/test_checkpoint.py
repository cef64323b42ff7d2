"""Reading checkpoints in the authors' and Meta's layouts, and failing clearly on bad files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from auralsam2_core.modeling import weights
from auralsam2_core.modeling.checkpoint import (
    FILTERS,
    CheckpointError,
    CheckpointNotFoundError,
    fuser_checkpoint_filter,
    load_into,
    read_state_dict,
    sam2_checkpoint_filter,
    save_state_dict,
    vggish_checkpoint_filter,
)


class TinyVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        self.embeddings = nn.Sequential(nn.Linear(4, 3))


class TinyFuser(nn.Module):
    """Same top-level names as AuralFuser (vgg, patch_embeds, ...), toy sizes."""

    def __init__(self):
        super().__init__()
        self.vgg = TinyVGG()
        self.patch_embeds = nn.ModuleList(nn.Conv2d(2, 2, 1) for _ in range(2))
        self.fusion_modules = nn.ModuleList([nn.Sequential(nn.Conv1d(2, 2, 1),
                                                           nn.BatchNorm1d(2))])
        self.train_proj_v1 = nn.Linear(2, 2)


class TinySAM2(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Linear(2, 2)
        self.memory_attention = nn.Linear(2, 2)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, 2))


def _random_sd(module: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 3)
            for k, v in module.state_dict().items()}


@pytest.fixture
def fuser_sd():
    return _random_sd(TinyFuser())


def _assert_loaded(module: nn.Module, sd: dict[str, torch.Tensor]):
    got = module.state_dict()
    assert got.keys() == sd.keys()
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


# --------------------------------------------------------------------------- layouts


LAYOUTS = {
    "plain": lambda sd: sd,
    "aural_fuser_prefix": lambda sd: _prefixed(sd, "aural_fuser."),
    "v_model_prefix": lambda sd: _prefixed(sd, "v_model."),
    "full_avmodel": lambda sd: {**_prefixed(_random_sd(TinySAM2()), "v_model."),
                                **_prefixed(sd, "aural_fuser.")},
    "ddp_module": lambda sd: _prefixed(sd, "module.aural_fuser."),
    "wrapped_model": lambda sd: {"model": sd},
    "wrapped_state_dict": lambda sd: {"state_dict": sd, "epoch": 7, "best_miou": 0.5},
    "wrapped_twice": lambda sd: {"model": {"module": _prefixed(sd, "module.")}},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_fuser_layouts_load_strictly(layout, suffix, fuser_sd, tmp_path):
    path = tmp_path / f"ckpt{suffix}"
    torch.save(LAYOUTS[layout](fuser_sd), path)
    fuser = TinyFuser()
    load_into(fuser, fuser_checkpoint_filter(read_state_dict(path)), what="AuralFuser",
              source=path)
    _assert_loaded(fuser, fuser_sd)


def test_legacy_pickle_format(fuser_sd, tmp_path):
    path = tmp_path / "old.pth"
    torch.save(fuser_sd, path, _use_new_zipfile_serialization=False)
    fuser = TinyFuser()
    load_into(fuser, fuser_checkpoint_filter(read_state_dict(path)), what="AuralFuser",
              source=path)
    _assert_loaded(fuser, fuser_sd)


@pytest.mark.parametrize("name", ["ckpt.safetensors", "renamed.pth"])
def test_safetensors(name, fuser_sd, tmp_path):
    path = tmp_path / name
    save_file(_prefixed(fuser_sd, "aural_fuser."), str(path))
    fuser = TinyFuser()
    load_into(fuser, fuser_checkpoint_filter(read_state_dict(path)), what="AuralFuser",
              source=path)
    _assert_loaded(fuser, fuser_sd)


def test_legacy_audio_prompter_names():
    sd = {
        "audio_prompter.train_f_patch_embed1.weight": torch.zeros(1),
        "audio_prompter.train_smooth2.bias": torch.zeros(1),
        "audio_prompter.train_f_a_block3.g.weight": torch.zeros(1),
        "audio_prompter.training_layers.0.weight": torch.zeros(1),
        "audio_prompter.vgg.features.0.weight": torch.zeros(1),
    }
    assert set(fuser_checkpoint_filter(sd)) == {
        "patch_embeds.0.weight", "smooth_convs.1.bias", "fusion_modules.2.g.weight",
        "vgg.features.0.weight",
    }


@pytest.mark.parametrize("wrap", [
    lambda sd: {"model": sd},  # Meta's file
    lambda sd: _prefixed(sd, "v_model."),  # SAM2 half of an AVmodel state
])
def test_sam2_checkpoint_given_as_fuser(wrap, tmp_path):
    path = tmp_path / "sam2_hiera_large.pt"
    torch.save(wrap(_random_sd(TinySAM2())), path)
    with pytest.raises(CheckpointError, match="this is a SAM2 checkpoint, not an AuralSAM2"):
        fuser_checkpoint_filter(read_state_dict(path))


def test_vggish_checkpoint_given_as_fuser(fuser_sd):
    vgg = {k[4:]: v for k, v in fuser_sd.items() if k.startswith("vgg.")}
    with pytest.raises(CheckpointError, match="standalone VGGish"):
        fuser_checkpoint_filter(vgg)


def test_sam2_filter(tmp_path, fuser_sd):
    sam_sd = _random_sd(TinySAM2())
    path = tmp_path / "sam2.pt"
    torch.save({"model": sam_sd}, path)
    sam = TinySAM2()
    load_into(sam, sam2_checkpoint_filter(read_state_dict(path)), what="SAM2", source=path)
    _assert_loaded(sam, sam_sd)

    full = {**_prefixed(sam_sd, "v_model."), **_prefixed(fuser_sd, "aural_fuser.")}
    assert sam2_checkpoint_filter(full).keys() == sam_sd.keys()
    with pytest.raises(CheckpointError, match="fuser checkpoint, not a SAM2"):
        sam2_checkpoint_filter(fuser_sd)


@pytest.mark.parametrize("layout", ["standalone", "from_fuser", "from_avmodel"])
def test_vggish_filter(layout, fuser_sd, tmp_path):
    vgg_sd = {k[4:]: v for k, v in fuser_sd.items() if k.startswith("vgg.")}
    src = {"standalone": vgg_sd, "from_fuser": fuser_sd,
           "from_avmodel": _prefixed(fuser_sd, "aural_fuser.")}[layout]
    path = tmp_path / "vggish-10086976.pth"
    torch.save(src, path)
    fuser = TinyFuser()
    load_into(fuser.vgg, vggish_checkpoint_filter(read_state_dict(path)),
              what="VGGish", source=path)
    _assert_loaded(fuser.vgg, vgg_sd)


def test_filters_cover_registry_kinds():
    # Hugging Face repos (the Ref-AVS text encoder) are loaded by transformers, not filtered.
    assert set(FILTERS) == {w.kind for w in weights.REGISTRY.values() if not w.hf_repo}


# --------------------------------------------------------------------------- bad files


def _check_names_file(excinfo, path: Path):
    assert str(path) in str(excinfo.value)


def test_missing_file_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFoundError) as ei:
        read_state_dict("ckpts/nope.pth")
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, CheckpointError)
    assert str(tmp_path / "ckpts" / "nope.pth") in str(ei.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        read_state_dict(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(CheckpointError, match="empty") as ei:
        read_state_dict(path)
    _check_names_file(ei, path)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_truncated_file(fmt, fuser_sd, tmp_path):
    path = tmp_path / ("cut.safetensors" if fmt == "safetensors" else "cut.pth")
    if fmt == "safetensors":
        save_file(fuser_sd, str(path))
    else:
        torch.save(fuser_sd, path, _use_new_zipfile_serialization=fmt == "zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as ei:
        read_state_dict(path)
    _check_names_file(ei, path)


@pytest.mark.parametrize("content,match", [
    (os.urandom(4096), "corrupt"),
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
    (b"Entry not found", "HTML/text"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n", "Git LFS"),
])
def test_not_a_checkpoint(content, match, tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as ei:
        read_state_dict(path)
    _check_names_file(ei, path)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_object_is_refused_not_executed(legacy, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="weights_only") as ei:
        read_state_dict(path)
    _check_names_file(ei, path)
    assert not marker.exists()


def test_not_a_mapping(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        read_state_dict(path)


# --------------------------------------------------------------------------- load_into


def test_wrong_keys_are_listed(fuser_sd):
    sd = dict(fuser_sd)
    sd["extra.weight"] = sd.pop("train_proj_v1.weight")
    del sd["patch_embeds.1.bias"]
    with pytest.raises(CheckpointError) as ei:
        load_into(TinyFuser(), sd, what="AuralFuser", source="/ckpts/x.pth")
    msg = str(ei.value)
    assert msg.startswith("AuralFuser: checkpoint /ckpts/x.pth does not fit the model")
    assert "missing keys (2): patch_embeds.1.bias, train_proj_v1.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg


def test_wrong_shapes_are_listed(fuser_sd):
    sd = dict(fuser_sd)
    sd["train_proj_v1.weight"] = torch.zeros(5, 2)
    sd["vgg.embeddings.0.bias"] = 1  # not even a tensor
    with pytest.raises(CheckpointError) as ei:
        load_into(TinyFuser(), sd, what="AuralFuser", source="f.pth")
    msg = str(ei.value)
    assert "shape mismatches (2)" in msg
    assert "train_proj_v1.weight: checkpoint (5, 2) vs model (2, 2)" in msg
    assert "vgg.embeddings.0.bias: checkpoint has a int, not a tensor" in msg
    # a shape mismatch is an error even when missing/unexpected keys are tolerated
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_into(TinyFuser(), sd, what="AuralFuser", source="f.pth", strict=False)


def test_long_lists_are_cut_with_counts(fuser_sd):
    sd = {f"junk.{i}": torch.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointError) as ei:
        load_into(TinyFuser(), sd, what="AuralFuser", source="f.pth")
    msg = str(ei.value)
    assert f"missing keys ({len(fuser_sd)})" in msg
    assert "unexpected keys (25): junk.0," in msg and "(15 more)" in msg
    assert "no checkpoint key matches the model" in msg
    listed = msg.split("unexpected keys")[1].split("\n")[0]
    assert len(re.findall(r"junk\.", listed)) == 10


def test_non_strict_loads_the_overlap(fuser_sd):
    sd = {k: v for k, v in fuser_sd.items() if k.startswith("vgg.")}
    fuser = TinyFuser()
    result = load_into(fuser, sd, what="AuralFuser", source="f.pth", strict=False)
    assert "train_proj_v1.weight" in result.missing_keys
    assert torch.equal(fuser.vgg.features[0].weight, sd["vgg.features.0.weight"])


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name", ["out.pth", "sub/out.safetensors"])
def test_save_roundtrip_in_release_format(name, fuser_sd, tmp_path):
    path = save_state_dict(fuser_sd, tmp_path / name)
    assert not list(path.parent.glob("*.tmp"))
    raw = read_state_dict(path)
    assert raw.keys() == fuser_sd.keys()  # plain: no wrapper, no prefix
    fuser = TinyFuser()
    load_into(fuser, fuser_checkpoint_filter(raw), what="AuralFuser", source=path)
    _assert_loaded(fuser, fuser_sd)


def test_save_tied_weights_to_safetensors(tmp_path):
    w = torch.randn(3, 3)
    path = save_state_dict({"a": w, "b": w, "c": w[0]}, tmp_path / "tied.safetensors")
    sd = read_state_dict(path)
    assert torch.equal(sd["b"], w) and torch.equal(sd["c"], w[0])


def test_save_rejects_non_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="epoch"):
        save_state_dict({"w": torch.zeros(1), "epoch": 3}, tmp_path / "x.pth")
