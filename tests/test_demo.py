"""The bundled demo model (files, sha256, size, the three audio checks through the engine)
and the demo / eval / check / prelabel commands that use it."""

from __future__ import annotations

import json
import shutil
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auralsam2_core.cli import main
from auralsam2_core.evaluation.demo import PASS_MARKS, run_demo
from auralsam2_core.modeling import build
from auralsam2_core.modeling.build import build_auralsam2, build_demo_model, bundled_model_info
from auralsam2_core.modeling.weights import sha256_file
from auralsam2_core.training.datasets import HELDOUT_SEED_BASE

BUNDLE = build.bundled_model_dir()
# On the demo's own clips the shipped model meets demo.PASS_MARKS (0.85 / 0.8 / 95 %). On
# other held-out clips J varies by about +-0.02 between sets of 5-30 clips (measured 0.85-0.89
# sounding, 0.86-0.92 swapped, 100 % silent; pooled over 57 clips 0.872 / 0.871; README):
# on CI's 5 clips (0.849 / 0.916 / 100 %) it asserts this floor.
LISTENS_FLOOR = {"j_sounding": 0.82, "j_swapped_audio": 0.82,
                 "silent_low_confidence_fraction": 0.95}
SUMMARY_KEYS = {"j_sounding", "f_sounding", "j_swapped_audio", "f_swapped_audio",
                "silent_low_confidence_fraction", "passed", "per_clip"}


@pytest.fixture(scope="module")
def demo_model():
    return build_demo_model(device="cpu")


def test_bundle_files_sha256_and_size():
    info = json.loads((BUNDLE / "model.json").read_text())
    total = 0
    for name, rec in info["files"].items():
        path = BUNDLE / name
        assert path.is_file()
        assert sha256_file(path) == rec["sha256"]
        assert path.stat().st_size == rec["bytes"]
        total += rec["bytes"]
    assert total <= 25 * 2**20
    assert set(info["weights"].values()) <= set(info["files"])
    assert info["training"]["command"].startswith("auralsam2 train --synthetic")
    assert info["training"]["wall_seconds"] > 0
    measured = info["measured"]
    assert all(measured["passed"].values()), measured
    assert all(measured[k] >= v for k, v in PASS_MARKS.items()), measured
    yaml = Path(str(files("auralsam2_core").joinpath("configs", info["sam2_config"])))
    assert sha256_file(yaml) == info["sam2_config_sha256"]


def test_damaged_bundle_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "demo_model"
    shutil.copytree(BUNDLE, copy)
    monkeypatch.setattr(build, "bundled_model_dir", lambda: copy)
    assert bundled_model_info()["name"]
    data = bytearray((copy / "fuser.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "fuser.safetensors").write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="damaged"):
        build_demo_model(device="cpu")
    (copy / "fuser.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        bundled_model_info()


def test_bundled_model_builds(demo_model):
    assert demo_model.image_size == 96 and not demo_model.training
    assert demo_model.meta["sam2_config"].startswith("bundled:")
    assert demo_model.meta["checkpoints"]["fuser"]["sha256"]
    params = sum(p.numel() for p in demo_model.parameters())
    assert params < 4_000_000
    via_build = build_auralsam2("bundled", device="cpu")
    assert via_build.meta["sam2_config"] == demo_model.meta["sam2_config"]
    with pytest.raises(ValueError, match="bundled"):
        build_auralsam2("bundled", image_size=128)


def test_demo_clips_meet_the_pass_marks_through_the_engine(tmp_path, demo_model):
    """`auralsam2 demo`'s protocol (its 6 held-out clips x 3 variants, 128 px, through the
    engine): the three audio checks hold at the project's pass marks."""
    s = run_demo(tmp_path, n_clips=6, size=128, model=demo_model, overlay=False,
                 timeline=False)
    print({k: s[k] for k in PASS_MARKS})
    for key, mark in PASS_MARKS.items():
        assert s[key] >= mark, s
    assert all(s["passed"].values())


def test_audio_checks_hold_on_heldout_clips_through_the_engine(tmp_path, demo_model):
    """The point of the demo model: it listens. Held-out clips (seeds never trained on,
    and not the ones `auralsam2 demo` reports), pre-labelled through the engine."""
    s = run_demo(tmp_path, n_clips=5, size=128, model=demo_model,
                 seed_base=HELDOUT_SEED_BASE + 1000, overlay=False, timeline=False)
    print({k: s[k] for k in LISTENS_FLOOR})
    for key, floor in LISTENS_FLOOR.items():
        assert s[key] >= floor, s
    assert set(s["passed"]) == set(PASS_MARKS)
    assert len(s["per_clip"]) == 15


def test_cli_demo_writes_summary_and_renders(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--clips", "2", "--quiet", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["model"]["sam2_config"].startswith("bundled:")
    names = {p.name for p in (out / "results").iterdir()}
    assert {"clip00_sounding.json", "clip00_sounding_overlay.mp4",
            "clip00_sounding_timeline.png", "clip01_silent.json"} <= names
    assert (out / "clips" / "clip01_swapped.mp4").is_file()
    assert len(list((out / "gt" / "clip00_sounding").glob("*.png"))) == 10
    printed = json.loads(capsys.readouterr().out)
    assert "j_sounding" in printed
    # `auralsam2 eval` on the demo's own outputs: engine JSON vs the GT PNG tree
    assert main(["eval", str(out / "results"), str(out / "gt"), "--json",
                 str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["num_videos"] == 6
    j = {v["name"]: v["J"] for v in report["per_video"]}
    by_clip = {c["name"]: c["J"] for c in summary["per_clip"]}
    assert j == pytest.approx(by_clip, abs=1e-6)
    assert "overall" in capsys.readouterr().out


def test_cli_eval_png_trees(tmp_path, capsys):
    for root, shift in (("gt", 0), ("pred", 1)):
        for v in ("a", "b"):
            for i in range(3):
                m = np.zeros((8, 8), np.uint8)
                m[2:6, 2 + shift * (v == "b"):6] = 255
                d = tmp_path / root / v
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(m).save(d / f"{i}.png")
    assert main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 0
    out = capsys.readouterr().out
    assert "J=1.0000" in out.splitlines()[0]  # video a: identical
    assert "overall" in out and "J=0.8750" in out  # b: 12/16 -> mean (1 + 0.75) / 2
    assert main(["eval", str(tmp_path / "missing"), str(tmp_path / "gt")]) == 2


def test_cli_check_and_prelabel_default_to_the_bundled_model(tmp_path, capsys):
    assert main(["check", "--frames", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["sam2_config"].startswith("bundled:") and report["image_size"] == 96
    assert "check: OK" in out.err and "bundled demo model" in out.err
    from auralsam2_core.training.synthetic import make_clip, write_clip

    video = write_clip(make_clip(HELDOUT_SEED_BASE + 7, size=(64, 64), fps=5, seconds=1.0),
                       tmp_path / "v.mp4")
    assert main(["prelabel", str(video), "--out", str(tmp_path / "res"), "--quiet",
                 "--device", "cpu"]) == 0
    doc = json.loads((tmp_path / "res" / "v.json").read_text())
    assert doc["model"]["sam2_config"].startswith("bundled:")
    assert doc["model"]["checkpoints"]["sam2"]["sha256"] == \
        bundled_model_info()["files"]["sam2.safetensors"]["sha256"]


# ----------------------------------------------------------------------------- Ref-AVS demo

REFER_BUNDLE = build.refer_model_dir()
needs_refer_bundle = pytest.mark.skipif(
    not (REFER_BUNDLE / "model.json").is_file(),
    reason="the bundled Ref-AVS demo model is not installed (refer_model_dir()/model.json)")
REFER_SUMMARY_KEYS = {"j_referred", "f_referred", "j_other_query", "f_other_query", "null_s",
                      "null_s_sqrt_per_clip", "silent_low_confidence_fraction",
                      "j_sounding_alone", "passed", "per_query"}


@pytest.fixture(scope="module")
def refer_model():
    from auralsam2_core.modeling.build import build_refer_demo_model

    return build_refer_demo_model(device="cpu")


@needs_refer_bundle
def test_refer_bundle_files_sha256_size_and_recipe():
    info = json.loads((REFER_BUNDLE / "model.json").read_text())
    total = 0
    for name, rec in info["files"].items():
        path = REFER_BUNDLE / name
        assert sha256_file(path) == rec["sha256"] and path.stat().st_size == rec["bytes"]
        total += rec["bytes"]
    assert total <= 25 * 2**20
    assert info["variant"] == "refavs" and info["text_encoder"]["folder"] == "text_encoder"
    assert info["training"]["command"].startswith("auralsam2 train --synthetic --variant refavs")
    assert info["training"]["started_from"]["name"] == bundled_model_info()["name"]
    from auralsam2_core.evaluation.refer_demo import CEILINGS, REFER_PASS_MARKS

    measured = info["measured"]
    for key, mark in REFER_PASS_MARKS.items():
        assert (measured[key] <= mark) if key in CEILINGS else (measured[key] >= mark), measured


@needs_refer_bundle
def test_damaged_refer_bundle_is_refused(tmp_path):
    from auralsam2_core.modeling.build import build_refer_demo_model

    copy = tmp_path / "refer"
    shutil.copytree(REFER_BUNDLE, copy)
    tok = copy / "text_encoder" / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"disc"', '"dish"'))
    with pytest.raises(RuntimeError, match="damaged"):
        build_refer_demo_model(device="cpu", root=copy)
    with pytest.raises(ValueError, match="not a Ref-AVS demo model"):
        build_refer_demo_model(device="cpu", root=BUNDLE)


@needs_refer_bundle
def test_bundled_refer_model_builds(refer_model):
    assert refer_model.variant == "refavs" and not refer_model.training
    assert refer_model.meta["sam2_config"].startswith("bundled:")
    assert refer_model.meta["text_encoder"].endswith("/text_encoder")
    via_build = build_auralsam2("bundled", variant="refavs", device="cpu")
    assert via_build.meta["sam2_config"] == refer_model.meta["sam2_config"]
    with pytest.raises(ValueError, match="own text encoder"):
        build_auralsam2("bundled", variant="refavs", text_encoder="distilroberta-base")


@needs_refer_bundle
def test_cli_demo_refer_meets_the_marks(tmp_path, capsys):
    """`auralsam2 demo --refer --out DIR`: the demo's 6 held-out clips, each queried for shape
    A, shape B (the mask must move), a missing shape and a silent one."""
    from auralsam2_core.evaluation.refer_demo import CEILINGS, REFER_PASS_MARKS

    out = tmp_path / "refer"
    assert main(["demo", "--refer", "--out", str(out), "--quiet", "--device", "cpu",
                 "--strict"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s) >= REFER_SUMMARY_KEYS
    print({k: s[k] for k in REFER_PASS_MARKS})
    for key, mark in REFER_PASS_MARKS.items():
        assert (s[key] <= mark) if key in CEILINGS else (s[key] >= mark), s
    assert "checks PASSED" in capsys.readouterr().err
    assert len(s["per_query"]) == 6 * 2 * 3
    assert (out / "clips" / "clip05_one.mp4").is_file()
    assert len(list((out / "gt" / "clip00_both_q1").glob("*.png"))) == 10
    # Text matters: on the same video, the queries for A and for B give masks on different
    # objects (each query's IoU with its own shape is high, so they cannot be the same mask).
    by = {(q["video"], q["kind"]): q for q in s["per_query"]}
    for i in range(6):
        assert by[(f"clip{i:02d}_both", "referred")]["iou"] > 0.5
        assert by[(f"clip{i:02d}_both", "other")]["iou"] > 0.5


def test_held_out_checks_leave_a_training_model_as_it_was(bundled_model):
    """The checks that watch a training run score in eval mode without gradients and hand
    the model back in training mode (so the run goes on training)."""
    import torch

    from auralsam2_core.evaluation.demo import held_out, quick_audio_checks

    bundled_model.train()
    try:
        with held_out(bundled_model) as m:
            assert not m.training and not torch.is_grad_enabled()
        assert bundled_model.training and torch.is_grad_enabled()
        r = quick_audio_checks(bundled_model, n=2)
        assert bundled_model.training
        assert r["j_sounding"] > 0.6 and r["silent_low_confidence_fraction"] == 1.0
    finally:
        bundled_model.eval()
