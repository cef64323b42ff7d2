"""auralsam2_core.model_spec: the one description of which model runs, the one defaulting rule
(with each entry point's defaults), the AURALSAM2_* variables, identities and building."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from auralsam2_core import cli
from auralsam2_core.cli import model_args
from auralsam2_core.model_spec import (
    BUNDLED,
    CLI_DEFAULTS,
    CLI_REFAVS_DEFAULTS,
    DEMO,
    ENV_DEFAULTS,
    ModelSpec,
    add_model_arguments,
    load_model,
    spec_from_args,
)
from auralsam2_core.training.train import DEMO_FUSER_CONFIG, demo_spec, official_spec, spec_record

CKPT = {"AURALSAM2_FUSER_CHECKPOINT": "auralsam2_avs_v1m"}


# ------------------------------------------------------------------ the rule, per entry point


def test_the_rule_with_the_environment_defaults():
    assert ModelSpec.from_env({}) == ModelSpec() and ModelSpec().bundled
    assert ModelSpec.from_env(CKPT).sam2_config == "sam2_hiera_l"
    assert ModelSpec.from_env({"AURALSAM2_SAM2_CHECKPOINT": "x.pt"}).sam2_config == \
        "sam2_hiera_l"
    # a size alone does not pick a config here: the bundled model then refuses it
    alone = ModelSpec.from_env({"AURALSAM2_IMAGE_SIZE": "64"})
    assert alone.bundled and alone.image_size == 64
    with pytest.raises(ValueError, match="bundled demo model has its own"):
        alone.build(device="cpu")
    # and no input size is filled in: the config's own
    assert ModelSpec.from_env(CKPT).image_size is None
    # an explicit config always wins, 'bundled' included
    assert ModelSpec.from_env({**CKPT, "AURALSAM2_SAM2_CONFIG": "sam2_hiera_s"}).sam2_config \
        == "sam2_hiera_s"
    assert ModelSpec.from_env({"AURALSAM2_SAM2_CONFIG": "bundled"}).bundled


def test_the_rule_with_the_command_line_defaults():
    """``auralsam2 check`` / ``prelabel`` / ``demo``: checkpoints or a size alone build
    sam2_hiera_t at the command's size; ``prelabel --query``: sam2_hiera_l."""
    parser = cli.build_parser()

    def spec(*argv, refavs=False):
        return model_args.model_spec(parser.parse_args(list(argv)), refavs)

    assert spec("prelabel", "v.mp4", "--out", "o").bundled
    assert spec("prelabel", "v.mp4", "--out", "o").image_size is None
    with_ckpt = spec("prelabel", "v.mp4", "--out", "o", "--fuser-checkpoint", "f.pth")
    assert (with_ckpt.sam2_config, with_ckpt.image_size) == ("sam2_hiera_t", 1024)
    assert (spec("check", "--image-size", "64").sam2_config,
            spec("check", "--image-size", "64").image_size) == ("sam2_hiera_t", 64)
    assert spec("check", "--sam2-checkpoint", "s.pt").image_size == 256
    assert spec("check", "--mask-choice", "first").mask_choice == "first"
    query = ["prelabel", "v.mp4", "--out", "o", "--query", "dog"]
    assert spec(*query, "--fuser-checkpoint", "f.pth", refavs=True).sam2_config == \
        "sam2_hiera_l"
    assert spec(*query, "--fuser-checkpoint", "f.pth", refavs=True).variant == "refavs"
    assert spec(*query, "--image-size", "64", refavs=True).bundled  # refused when built
    assert spec(*query, "--text-encoder", "enc", "--sam2-config", "sam2_hiera_t",
                refavs=True).text_encoder == "enc"
    # the same words give different configs on purpose: the difference is a parameter
    assert CLI_DEFAULTS.config_with_weights == "sam2_hiera_t"
    assert CLI_REFAVS_DEFAULTS.config_with_weights == ENV_DEFAULTS.config_with_weights


def test_command_line_refuses_flags_the_bundled_model_ignores(capsys):
    argv = ["check", "--sam2-config", "bundled", "--device", "cpu"]
    assert cli.main(argv + ["--image-size", "64"]) != 0
    assert "runs at its own input size; drop --image-size" in capsys.readouterr().err
    assert cli.main(argv + ["--fuser-checkpoint", str(_bundled_fuser_file())]) != 0
    assert "has its own weights; give --sam2-config" in capsys.readouterr().err


def test_service_flags_override_the_environment():
    import argparse

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    env = {**CKPT, "AURALSAM2_IMAGE_SIZE": "512", "AURALSAM2_DEVICE": "cpu"}
    spec = spec_from_args(parser.parse_args([]), env)
    assert (spec.sam2_config, spec.image_size, spec.device) == ("sam2_hiera_l", 512, "cpu")
    spec = spec_from_args(parser.parse_args(["--image-size", "64", "--sam2-config",
                                             "sam2_hiera_t", "--variant", "refavs"]), env)
    assert (spec.sam2_config, spec.image_size, spec.variant) == ("sam2_hiera_t", 64, "refavs")
    assert spec.fuser_checkpoint == "auralsam2_avs_v1m"  # not overridden: kept


def test_training_specs_and_their_run_json_record():
    demo = demo_spec()
    assert (demo.sam2_config, demo.image_size, demo.fuser_config_dict) == \
        (DEMO, 96, DEMO_FUSER_CONFIG)
    official = official_spec(sam2_checkpoint="s.pt")
    assert (official.sam2_config, official.image_size, official.fuser_config) == \
        ("sam2_hiera_l", 1024, None)
    record = spec_record(demo_spec(variant="refavs", text_encoder="demo-words"))
    # the keys and order run.json always had (the old dataclass's asdict)
    assert list(record) == ["sam2_config", "image_size", "fuser_config", "sam2_checkpoint",
                            "fuser_checkpoint", "mask_choice", "variant", "text_encoder",
                            "fuser_init"]
    assert record["fuser_config"] == DEMO_FUSER_CONFIG
    assert list(record["fuser_config"]) == list(DEMO_FUSER_CONFIG)  # order kept
    assert ModelSpec(**json.loads(json.dumps(record))) == \
        demo_spec(variant="refavs", text_encoder="demo-words")


# ------------------------------------------------------------------ the environment, errors


def test_every_variable_is_read_and_empty_means_unset():
    env = {"AURALSAM2_SAM2_CONFIG": "sam2_hiera_b+", "AURALSAM2_SAM2_CHECKPOINT": "s.pt",
           "AURALSAM2_FUSER_CHECKPOINT": "f.pth", "AURALSAM2_FUSER_CONFIG": '{"dim": 64}',
           "AURALSAM2_IMAGE_SIZE": "512", "AURALSAM2_DEVICE": "cpu",
           "AURALSAM2_VARIANT": "refavs", "AURALSAM2_TEXT_ENCODER": "/enc"}
    assert ModelSpec.from_env(env) == ModelSpec(
        "sam2_hiera_b+", sam2_checkpoint="s.pt", fuser_checkpoint="f.pth",
        fuser_config={"dim": 64}, image_size=512, device="cpu", variant="refavs",
        text_encoder="/enc")
    assert ModelSpec.from_env({k: "" for k in env}) == ModelSpec()
    assert ModelSpec.from_env(env, image_size=None, device="cuda").device == "cuda"


@pytest.mark.parametrize(("env", "message"), [
    ({"AURALSAM2_VARIANT": "avsx"}, "variant must be 'avs' or 'refavs'"),
    ({"AURALSAM2_IMAGE_SIZE": "big"}, "AURALSAM2_IMAGE_SIZE must be an integer, got 'big'"),
    ({"AURALSAM2_IMAGE_SIZE": "-5"}, "image_size must be a positive integer"),
    ({"AURALSAM2_FUSER_CONFIG": "{dim: 64"}, "fuser_config must be a JSON object"),
    ({"AURALSAM2_FUSER_CONFIG": "[1, 2]"}, "fuser_config must be a JSON object"),
])
def test_bad_values_are_refused_naming_them(env, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_env(env)


def test_bundled_with_other_weights_is_refused_when_built():
    for bad in ({"sam2_checkpoint": "s.pt"}, {"fuser_config": {"dim": 64}},
                {"text_encoder": "x", "variant": "refavs"}):
        with pytest.raises(ValueError, match="AURALSAM2_SAM2_CONFIG"):
            ModelSpec(BUNDLED, **bad).build(device="cpu")


# ------------------------------------------------------------------ identity


def test_identity_is_stable_and_names_the_weights():
    spec = ModelSpec.from_env({**CKPT, "AURALSAM2_SAM2_CHECKPOINT": "sam2_hiera_large",
                               "AURALSAM2_IMAGE_SIZE": "1024"})
    # the names deployments already have (model versions, caches) stay what they were
    old = json.dumps(["sam2_hiera_l", "sam2_hiera_large", "auralsam2_avs_v1m", None, 1024])
    assert spec.identity() == f"sam2_hiera_l-{hashlib.sha1(old.encode()).hexdigest()[:8]}"
    assert spec.identity() == spec.replace(device="cuda").identity()  # device not part
    assert spec.key != spec.replace(device="cuda").key  # but the in-process cache's key
    others = [spec.replace(image_size=512), spec.replace(fuser_checkpoint="other"),
              spec.replace(mask_choice="first"), spec.replace(variant="refavs"),
              spec.replace(fuser_config={"dim": 64})]
    names = {spec.identity()} | {o.identity() for o in others}
    assert len(names) == 1 + len(others)
    assert ModelSpec().identity().startswith("bundled-")
    assert ModelSpec().identity() == ModelSpec(device="cpu").identity()


# ------------------------------------------------------------------ building


def test_load_model_builds_once_per_spec():
    a = load_model(ModelSpec(device="cpu"))
    assert load_model(ModelSpec.from_env({"AURALSAM2_DEVICE": "cpu"})) is a
    assert str(a.meta["sam2_config"]).startswith(BUNDLED)


def test_demo_architecture_with_the_bundled_weights_is_the_bundled_model():
    """``demo`` + checkpoints (how fine-tuning starts from the bundled model) builds the same
    network as ``bundled``: the yaml, the fuser config and the weights all come through."""
    served = ModelSpec(device="cpu")
    spec = served.for_fine_tuning(_bundled_fuser_file())
    assert spec.sam2_config == DEMO
    built = spec.build()
    bundled = load_model(served)
    torch.manual_seed(0)
    frames, log_mel = torch.randn(2, 3, 96, 96), torch.randn(2, 2, 96, 64)
    with torch.inference_mode():
        a = built.forward_clip(frames, log_mel)
        b = bundled.forward_clip(frames, log_mel)
    torch.testing.assert_close(a.mask_logits, b.mask_logits)


def _bundled_fuser_file():
    from auralsam2_core.modeling.build import bundled_model_dir, bundled_model_info

    return bundled_model_dir() / bundled_model_info(verify=False)["weights"]["fuser"]
