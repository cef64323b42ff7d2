"""Trainer: batched forward, loss goes down, resume, determinism, saved formats, calibration,
the demo bundle (the datasets it reads are in tests/test_datasets.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from auralsam2_core.modeling.build import build_fuser
from auralsam2_core.modeling.checkpoint import read_state_dict
from auralsam2_core.modeling.fuser import AuralFuser
from auralsam2_core.training.datasets import SyntheticClipDataset, collate
from auralsam2_core.training.train import (
    DEMO_FUSER_CONFIG,
    TrainConfig,
    build_model,
    demo_spec,
    forward_batch,
    load_trained,
    lr_factor,
    param_groups,
    train,
)

SIZE = 96  # the demo model's input size


@pytest.fixture(scope="module")
def tiny_data() -> SyntheticClipDataset:
    return SyntheticClipDataset(4, image_size=SIZE, clip_len=3, seconds=1.0)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = {"steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "seed": 3,
            "checkpoint_every": 2, "unfreeze_sam2": True, "progress": False, "device": "cpu"}
    return TrainConfig(out=str(out), **{**base, **kw})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    sd = {f"fuser.{k}": v for k, v in read_state_dict(out / "fuser.pth").items()}
    if (out / "sam2.pt").is_file():
        sd.update({f"sam2.{k}": v for k, v in read_state_dict(out / "sam2.pt")["model"].items()})
    return sd


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- forward


def test_forward_batch_equals_forward_clip(tiny_data):
    torch.manual_seed(0)
    model = build_model(demo_spec()).eval()
    for fm in model.fuser.fusion_modules:  # non-zero fusion residuals
        for bn in (fm.W_z[1], fm.W_z2[1]):
            bn.weight.data.fill_(0.5)
    batch = collate([tiny_data[i] for i in range(3)])
    with torch.no_grad():
        outs = forward_batch(model, batch["frames"], batch["log_mel"])
        for i, o in enumerate(outs):
            ref = model.forward_clip(batch["frames"][i], batch["log_mel"][i])
            for name in ("raw_multimask_logits", "multimask_logits", "ious",
                         "object_score_logits"):
                torch.testing.assert_close(getattr(o, name), getattr(ref, name),
                                           atol=1e-4, rtol=1e-4)
            assert torch.equal(o.chosen, ref.chosen)


def test_param_groups_and_schedule():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups([lin], 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3  # linear bias, norm weight and bias
    assert lr_factor(0, 100, 10, 0.9) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.9) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.9) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, 100, 10, 0.9) == 0.0


# ----------------------------------------------------------------------------- training


def test_a_few_steps_decrease_the_loss(tmp_path):
    data = SyntheticClipDataset(2, image_size=SIZE, clip_len=3, seconds=1.0,
                                schedules=("one",), schedule_weights=(1.0,))
    losses = []
    train(_cfg(tmp_path, steps=12, checkpoint_every=0, lr=2e-3), data,
          on_step=lambda s, rec: losses.append(rec["loss"]))
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 12


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("run_a")
    train(_cfg(out), tiny_data)
    return out


def test_same_seed_same_weights(tmp_path, tiny_data, reference_run):
    train(_cfg(tmp_path), tiny_data)
    assert _same(_weights(tmp_path), _weights(reference_run))
    other = tmp_path / "other_seed"
    train(_cfg(other, seed=4), tiny_data)
    assert not _same(_weights(other), _weights(reference_run))


def test_resume_gives_the_uninterrupted_weights(tmp_path, tiny_data, reference_run):
    partial = train(_cfg(tmp_path), tiny_data, stop_after=1)  # a stage stopped after step 1
    assert partial.steps == 1 and partial.fuser == tmp_path / "fuser.pth"  # the stage's fuser
    assert (tmp_path / "checkpoints" / "latest.pt").is_file()
    done = train(_cfg(tmp_path, resume=True), tiny_data)
    assert done.steps == 4
    assert _same(_weights(tmp_path), _weights(reference_run))
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 4


def test_saved_fuser_is_a_plain_state_dict_in_the_authors_format(reference_run):
    sd = torch.load(reference_run / "fuser.pth", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert not any(k.startswith(("module.", "aural_fuser.", "fuser.")) for k in sd)
    AuralFuser.from_official_config(DEMO_FUSER_CONFIG).load_state_dict(sd, strict=True)
    fuser = build_fuser(reference_run / "fuser.pth", DEMO_FUSER_CONFIG)
    assert torch.equal(fuser.state_dict()["patch_embeds.0.weight"], sd["patch_embeds.0.weight"])
    sam2 = torch.load(reference_run / "sam2.pt", map_location="cpu", weights_only=True)
    assert set(sam2) == {"model"}
    info = json.loads((reference_run / "train.json").read_text())
    assert info["model"]["fuser_config"] == DEMO_FUSER_CONFIG
    assert info["train_config"]["steps"] == 4 and info["outputs"]["sam2"] == "sam2.pt"
    model = load_trained(reference_run)
    assert torch.equal(model.fuser.state_dict()["patch_embeds.0.weight"],
                       sd["patch_embeds.0.weight"])


def test_frozen_sam2_does_not_change(tmp_path, tiny_data):
    torch.manual_seed(3)  # the run's seed: same initial weights as inside train()
    init = build_model(demo_spec())
    before = init.sam2.state_dict()
    seen = {}

    def grab(model, step):  # called once at the end of training
        seen["sam2"] = {k: v.clone() for k, v in model.sam2.state_dict().items()}
        seen["fuser"] = model.fuser.state_dict()["patch_embeds.0.weight"].clone()
        return {}

    train(_cfg(tmp_path, steps=2, unfreeze_sam2=False, checkpoint_every=0), tiny_data,
          evaluate=grab)
    assert not (tmp_path / "sam2.pt").exists()
    assert _same(before, seen["sam2"])  # same seed -> same init, and SAM2 was not trained
    assert not torch.equal(seen["fuser"], init.fuser.state_dict()["patch_embeds.0.weight"])


def test_audio_batchnorm_calibration(tiny_data):
    from auralsam2_core.training.train import calibrate_audio_batchnorm

    fuser = build_fuser(None, DEMO_FUSER_CONFIG).eval()
    mels = [torch.cat([tiny_data[i].log_mel for i in range(4)])]
    assert calibrate_audio_batchnorm(fuser, mels) == 4
    first = fuser.audio_encoder.features[1]
    assert not first.training and first.momentum == 0.1
    assert first.running_mean.abs().sum() > 0 and not torch.allclose(
        first.running_var, torch.ones_like(first.running_var))
    # frozen afterwards: eval-mode outputs do not depend on the batch
    x = mels[0]
    with torch.no_grad():
        torch.testing.assert_close(fuser.embed_audio(x)[:3], fuser.embed_audio(x[:3]))
    assert calibrate_audio_batchnorm(AuralFuser.from_official_config(
        {"f_depths": [1, 1, 1]}), mels) == 0  # VGGish has no BatchNorm


def test_fine_tuning_keeps_a_trained_audio_encoders_statistics(tmp_path, tiny_data,
                                                                reference_run):
    """From a fuser checkpoint no BN calibration runs: the encoder's weights were learnt with
    the statistics it carries (frozen BN: they stay exactly as loaded)."""
    start = read_state_dict(reference_run / "fuser.pth")
    seen = {}

    def grab(model, step):
        seen.update({k: v.clone() for k, v in model.fuser.state_dict().items()
                     if "running_" in k})
        return {}

    spec = demo_spec(fuser_checkpoint=str(reference_run / "fuser.pth"))
    train(_cfg(tmp_path, steps=1, checkpoint_every=0), tiny_data, spec, evaluate=grab)
    assert seen and all(torch.equal(seen[k], start[k]) for k in seen)


def test_demo_bundle_export_records_the_whole_recipe(tmp_path, tiny_data, reference_run):
    """export_demo_bundle: plain float32 files with their sha256, the command, and for a run
    that continued a bundle, that bundle's training record under ``started_from``."""
    from auralsam2_core.modeling.weights import sha256_file
    from auralsam2_core.training.train import export_demo_bundle

    first = export_demo_bundle(reference_run, tmp_path / "stage1", demo_clips=1, demo_size=64)
    for name, rec in first["files"].items():
        assert sha256_file(tmp_path / "stage1" / name) == rec["sha256"]
    assert "started_from" not in first["training"]
    assert set(first["measured"]) >= {"j_sounding", "j_swapped_audio", "passed"}
    spec = demo_spec(sam2_checkpoint=str(tmp_path / "stage1" / "sam2.safetensors"),
                     fuser_checkpoint=str(tmp_path / "stage1" / "fuser.safetensors"))
    train(_cfg(tmp_path / "run2", steps=1, checkpoint_every=0), tiny_data, spec,
          command="auralsam2 train --synthetic (stage 2)")
    second = export_demo_bundle(tmp_path / "run2", tmp_path / "stage2", demo_clips=1,
                                demo_size=64)
    assert second["training"]["command"] == "auralsam2 train --synthetic (stage 2)"
    assert second["training"]["started_from"] == first["training"]
    saved = json.loads((tmp_path / "stage2" / "model.json").read_text())
    assert saved["training"]["started_from"]["steps"] == 4


@pytest.mark.slow
def test_demo_model_recipe_script_runs_both_stages(tmp_path):
    """scripts/train_demo_model.sh (README's recipe for the bundled model), stages shortened:
    stage 2 starts from stage 1's bundle and the final model.json records both commands."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "AURALSAM2_STAGE1_STEPS": "2", "AURALSAM2_STAGE2_STEPS": "1"}
    subprocess.run(["bash", str(root / "scripts" / "train_demo_model.sh"), str(tmp_path)],
                   cwd=root, env=env, check=True, capture_output=True, timeout=600)
    info = json.loads((tmp_path / "bundle" / "model.json").read_text())
    first = info["training"]["started_from"]
    assert first["steps"] == 2 and info["training"]["steps"] == 1
    assert "--sam2-checkpoint" not in first["command"]
    assert f"--sam2-checkpoint {tmp_path}/stage1/bundle/sam2.safetensors" in \
        info["training"]["command"]
    assert info["training"]["train_config"]["lr"] == 3e-4
    from auralsam2_core.modeling.weights import sha256_file
    for name, rec in info["files"].items():
        assert sha256_file(tmp_path / "bundle" / name) == rec["sha256"]
