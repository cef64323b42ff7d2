"""The Ref-AVS demo's parts: the tiny word-level text encoder, the referring clips and their
ground truth, starting a Ref-AVS fuser from an AVS one, batched training forward with text,
the demo protocol's scoring, and the recipe script (shortened)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from auralsam2_core.evaluation.refer_demo import REFER_PASS_MARKS, refer_clips, score_refer
from auralsam2_core.modeling.checkpoint import read_state_dict
from auralsam2_core.modeling.text_encoder import (
    DEMO_WORDS,
    MAX_TOKENS,
    TextEncoder,
    save_text_encoder,
    tiny_word_text_encoder,
)
from auralsam2_core.training.datasets import ReferringClipDataset, collate, referred_target
from auralsam2_core.training.synthetic import COLOUR_NAMES, SHAPES
from auralsam2_core.training.train import (
    DEMO_FUSER_CONFIG,
    TrainConfig,
    build_model,
    demo_spec,
    forward_batch,
    init_refavs_fuser_from_avs,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
AVS_BUNDLE = ROOT / "auralsam2_core" / "data" / "demo_model"


# ----------------------------------------------------------------------------- text encoder


def test_word_encoder_tokens_and_states():
    enc = tiny_word_text_encoder()
    ids = enc.tokenize(["The RED disc.", "a purple hexagon!"])["input_ids"]
    vocab = enc.tokenizer.get_vocab()
    assert ids.shape == (2, MAX_TOKENS)
    assert ids[0, :5].tolist() == [0, vocab["the"], vocab["red"], vocab["disc"], 2]
    assert ids[1, :5].tolist() == [0, vocab["a"], vocab["purple"], vocab["<unk>"], 2]
    assert (ids[:, 5:] == 1).all()  # <pad>
    assert set(DEMO_WORDS) <= set(vocab)
    states = enc(["the red disc", "the blue disc"])
    assert states.shape == (2, MAX_TOKENS, 768)
    assert not torch.allclose(states[0, 2], states[1, 2])  # "red" vs "blue"
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.model.config.num_hidden_layers == 1
    # the same seed gives the same encoder, another seed another one
    torch.testing.assert_close(tiny_word_text_encoder()("a square"), enc("a square"))
    assert not torch.allclose(tiny_word_text_encoder(seed=1)("a square"), enc("a square"))


def test_word_encoder_gives_every_position_the_expression():
    """The fixed layer: position i = LayerNorm(x_i + gain * mean of the expression's tokens), so
    the shape's word reaches all 25 rows (pads included), as a real RoBERTa's context does."""
    from auralsam2_core.modeling.text_encoder import DEMO_CONTEXT_GAIN

    enc = tiny_word_text_encoder()
    tok = enc.tokenize(["the disc", "the square"])
    with torch.no_grad():
        x = enc.model.embeddings(input_ids=tok["input_ids"])  # (2, 25, 768), before the layer
    mask = tok["attention_mask"].unsqueeze(-1).to(x.dtype)
    mean = (x * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
    expected = torch.nn.functional.layer_norm(x + DEMO_CONTEXT_GAIN * mean, (768,), eps=1e-12)
    states = enc(["the disc", "the square"])
    torch.testing.assert_close(states, expected, atol=1e-4, rtol=1e-4)
    # every row differs between the two expressions, the pads' rows by a good share
    diff = (states[0] - states[1]).norm(dim=-1) / states[0].norm(dim=-1)
    assert (diff > 0.1).all(), diff



def test_word_encoder_saves_and_loads_offline(tmp_path):
    enc = tiny_word_text_encoder()
    files = {p.name for p in save_text_encoder(enc, tmp_path / "te")}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    back = TextEncoder.from_pretrained(tmp_path / "te")
    e = ["the sounding green triangle", "a circle"]
    assert torch.equal(back.tokenize(e)["input_ids"], enc.tokenize(e)["input_ids"])
    torch.testing.assert_close(back(e), enc(e))


# ----------------------------------------------------------------------------- clips


def test_referring_dataset_targets_follow_the_named_shape_and_its_sound():
    data = ReferringClipDataset(40, image_size=64, render_size=64)
    kinds = set()
    for i in range(len(data)):
        clip, obj, expression = data.item(i)
        words = expression.split()
        target = referred_target(clip, obj)
        if obj is None:  # null: names a shape the clip does not show; nothing to segment
            named = next(s for s in SHAPES if s in words or (s == "disc" and "circle" in words))
            assert named not in clip.shapes and not target.any()
            kinds.add("null")
            continue
        shape = clip.shapes[obj]
        assert shape in words or (shape == "disc" and "circle" in words)
        colour = next((c for c in COLOUR_NAMES if c in words), None)
        assert colour in (None, clip.colour_names[obj])
        for t in range(clip.num_frames):
            expected = clip.object_masks[obj, t] if clip.sounding[obj, t] else False
            np.testing.assert_array_equal(target[t], expected)
        silent_named = ~clip.sounding[obj] & clip.sounding.any(axis=0)
        kinds.add("silent named" if silent_named.any() else "sounding")
    assert kinds == {"null", "silent named", "sounding"}
    s = data[0]
    assert s.frames.shape == (10, 3, 64, 64) and s.log_mel.shape == (10, 2, 96, 64)
    assert s.expression == data.item(0)[2]
    assert collate([data[0], data[1]])["expressions"] == [data.item(0)[2], data.item(1)[2]]


def test_queries_per_clip_name_different_things_in_one_clip():
    """k consecutive items: the same frames and sound, each naming something else (the clip's
    shapes, then a missing one), so their targets differ and only the text tells them apart."""
    k = 3
    data = ReferringClipDataset(8 * k, image_size=64, render_size=64, queries_per_clip=k)
    assert data.config()["queries_per_clip"] == k
    nulls = 0
    for c in range(8):
        items = [data.item(c * k + r) for r in range(k)]
        clips = [clip for clip, _, _ in items]
        assert len({clip.seed for clip in clips}) == 1
        np.testing.assert_array_equal(clips[0].frames, clips[-1].frames)
        np.testing.assert_array_equal(clips[0].audio, clips[-1].audio)
        objs = [obj for _, obj, _ in items]
        assert len(set(objs)) == k  # k different referents: each shape once, a missing one
        nulls += objs.count(None)
        for clip, obj, expression in items:
            if obj is None:
                assert len(clip.shapes) < len(SHAPES)
            else:
                shape = clip.shapes[obj]
                assert shape in expression or (shape == "disc" and "circle" in expression)
    assert nulls, "two-shape clips get a null query"
    with pytest.raises(ValueError, match="at least 1"):
        ReferringClipDataset(3, queries_per_clip=0)
    # k = 1 is the dataset the earlier stages were trained on, item for item
    one, default = ReferringClipDataset(6, image_size=64, render_size=64, queries_per_clip=1), \
        ReferringClipDataset(6, image_size=64, render_size=64)
    assert [one.item(i)[1:] for i in range(6)] == [default.item(i)[1:] for i in range(6)]


def test_demo_protocol_queries():
    videos = refer_clips(2, size=64)
    assert [v.name for v in videos] == ["clip00_both", "clip00_one", "clip01_both",
                                        "clip01_one"]
    both, one = videos[0], videos[1]
    np.testing.assert_array_equal(both.clip.frames, one.clip.frames)
    assert both.clip.sounding.all() and (one.clip.sounding.sum(axis=0) == 1).all()
    assert [q.kind for q in both.queries] == ["referred", "other", "null"]
    assert [q.kind for q in one.queries] == ["silent", "alone", "null"]
    ref, other, null = both.queries
    np.testing.assert_array_equal(ref.target, both.clip.object_masks[0])
    np.testing.assert_array_equal(other.target, both.clip.object_masks[1])
    assert not null.target.any() and not one.queries[0].target.any()
    assert one.queries[1].target.any()


def test_scoring_of_perfect_empty_and_full_predictions():
    videos = refer_clips(2, size=32)
    preds = {(v.name, k): q.target.copy() for v in videos for k, q in enumerate(v.queries)}
    probs = {(v.name, k): [0.9 if q.target[t].any() else 0.1 for t in range(len(q.target))]
             for v in videos for k, q in enumerate(v.queries)}
    s = score_refer(preds, probs, videos)
    assert s["j_referred"] == s["j_other_query"] == s["j_sounding_alone"] == 1.0
    assert s["null_s"] == 0.0 and s["silent_low_confidence_fraction"] == 1.0
    assert all(s["passed"].values()) and set(s["passed"]) == set(REFER_PASS_MARKS)
    # the null queries fully segmented: S = 1 (a ceiling mark, so it fails)
    for v in videos:
        preds[(v.name, 2)] = np.ones_like(v.queries[2].target)
    # the "other" query answered with the referred mask: the mask did not move
    for v in videos[::2]:
        preds[(v.name, 1)] = v.queries[0].target.copy()
    s = score_refer(preds, probs, videos)
    assert s["null_s"] == 1.0 and not s["passed"]["null_s"]
    assert s["j_other_query"] < 0.5 and not s["passed"]["j_other_query"]
    assert s["passed"]["j_referred"]
    assert len(s["per_query"]) == 12


# ----------------------------------------------------------------------------- model


def test_refavs_fuser_starts_from_the_avs_fuser():
    torch.manual_seed(0)
    model = build_model(demo_spec(variant="refavs", text_encoder="demo-words",
                                  fuser_init=str(AVS_BUNDLE / "fuser.safetensors")))
    avs = read_state_dict(AVS_BUNDLE / "fuser.safetensors")
    own = model.fuser.state_dict()
    shared = [k for k in own if not k.startswith(("text_proj.", "train_proj_"))]
    assert shared and all(torch.equal(own[k], avs[k]) for k in shared)
    assert "text_proj.0.weight" in own and "text_proj.0.weight" not in avs
    assert model.variant == "refavs" and model.meta["text_encoder"] == "demo-words"
    other = dict(DEMO_FUSER_CONFIG, f_depths=[1, 1, 2])
    from auralsam2_core.modeling.build import build_fuser

    with pytest.raises(ValueError, match="not an AVS fuser of this configuration"):
        init_refavs_fuser_from_avs(build_fuser(None, other, variant="refavs"),
                                   AVS_BUNDLE / "fuser.safetensors")
    with pytest.raises(ValueError, match="for variant 'refavs'"):
        build_model(demo_spec(fuser_init=str(AVS_BUNDLE / "fuser.safetensors")))


def test_forward_batch_with_text_equals_forward_clip():
    torch.manual_seed(0)
    model = build_model(demo_spec(variant="refavs", text_encoder="demo-words",
                                  sam2_checkpoint=str(AVS_BUNDLE / "sam2.safetensors"),
                                  fuser_init=str(AVS_BUNDLE / "fuser.safetensors"))).eval()
    data = ReferringClipDataset(3, image_size=96)
    batch = collate([data[i] for i in range(3)])
    with torch.no_grad():
        texts = model.encode_text(batch["expressions"])
        outs = forward_batch(model, batch["frames"], batch["log_mel"], texts)
        for i, o in enumerate(outs):
            ref = model.forward_clip(batch["frames"][i], batch["log_mel"][i],
                                     text=batch["expressions"][i])
            for name in ("raw_multimask_logits", "multimask_logits", "ious",
                         "object_score_logits"):
                torch.testing.assert_close(getattr(o, name), getattr(ref, name),
                                           atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="texts"):
            forward_batch(model, batch["frames"], batch["log_mel"])


def _refer_cfg(out: Path, **kw) -> TrainConfig:
    from auralsam2_core.training.losses import LossWeights

    base = {"steps": 2, "batch_size": 2, "lr": 5e-4, "warmup_steps": 1, "seed": 3,
            "checkpoint_every": 1, "progress": False, "device": "cpu",
            "loss_weights": LossWeights(iou_loss="bce")}
    return TrainConfig(out=str(out), **{**base, **kw})


def test_refavs_training_is_reproducible_and_resumable(tmp_path):
    spec = demo_spec(variant="refavs", text_encoder="demo-words",
                     sam2_checkpoint=str(AVS_BUNDLE / "sam2.safetensors"),
                     fuser_init=str(AVS_BUNDLE / "fuser.safetensors"))
    data = ReferringClipDataset(4, image_size=96)
    train(_refer_cfg(tmp_path / "a"), data, spec)
    train(_refer_cfg(tmp_path / "b"), data, spec, stop_after=1)
    train(_refer_cfg(tmp_path / "b", resume=True), data, spec)
    a = read_state_dict(tmp_path / "a" / "fuser.pth")
    b = read_state_dict(tmp_path / "b" / "fuser.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = read_state_dict(AVS_BUNDLE / "fuser.safetensors")
    assert not torch.equal(a["a_blocks.0.0.attn.q.weight"], start["a_blocks.0.0.attn.q.weight"])
    assert not (tmp_path / "a" / "sam2.pt").exists()  # SAM2 frozen: not written
    info = json.loads((tmp_path / "a" / "train.json").read_text())
    assert info["model"]["variant"] == "refavs"
    assert info["dataset"]["kind"] == "synthetic-referring"


@pytest.mark.slow
def test_refer_recipe_script_writes_a_verified_bundle(tmp_path):
    """scripts/train_refer_demo_model.sh (README's recipe), every stage shortened
    (AURALSAM2_REFER_SHORT: stopped stages 1 step of 3, the others 2 steps): the bundle loads
    through build_refer_demo_model (sha256 of every file) and records the recipe and its
    chain of stages back to the AVS bundle; each stage starts from the previous one."""
    from auralsam2_core.modeling.build import build_refer_demo_model
    from auralsam2_core.modeling.weights import sha256_file

    env = {**os.environ, "AURALSAM2_REFER_SHORT": "1", "AURALSAM2_REFER_EVAL_EVERY": "0"}
    subprocess.run(["bash", str(ROOT / "scripts" / "train_refer_demo_model.sh"),
                    str(tmp_path)], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=1500)
    bundle = tmp_path / "bundle"
    info = json.loads((bundle / "model.json").read_text())
    assert info["variant"] == "refavs" and info["training"]["steps"] == 2
    last = info["training"]["command"]
    assert "--text-encoder demo-words " in last and "--sound-id-weight 5" in last
    assert "--unfreeze-sam2" in last and "--queries-per-clip 3" in last
    assert f"{tmp_path}/stage2/fuser.pth" in last
    stage1 = json.loads((tmp_path / "stage1" / "log.jsonl").read_text().splitlines()[-1])
    assert stage1["step"] == 1 and (tmp_path / "stage1" / "fuser.pth").is_file()
    assert not (tmp_path / "stage1" / "train.json").exists()  # stopped, not finished
    assert info["training"]["started_from"]["name"] == "auralsam2-demo-tiny"
    earlier = info["training"]["earlier_stages"]
    assert len(earlier) == 2 and "--fuser-init" in earlier[0]["command"]
    assert "--unfreeze-sam2" not in earlier[0]["command"]
    assert f"{tmp_path}/stage1/fuser.pth" in earlier[1]["command"]
    assert [e.get("stopped_after") for e in earlier] == [1, 1]
    assert {"text_encoder/model.safetensors", "text_encoder/tokenizer.json",
            "fuser.safetensors", "sam2.safetensors"} <= set(info["files"])
    for name, rec in info["files"].items():
        assert sha256_file(bundle / name) == rec["sha256"]
    assert set(info["measured"]) >= {"j_referred", "j_other_query", "null_s",
                                     "silent_low_confidence_fraction", "per_query"}
    model = build_refer_demo_model(device="cpu", root=bundle)
    assert model.variant == "refavs" and model.meta["sam2_config"].startswith("bundled:")


# ----------------------------------------------------------------------------- demo path


def test_refer_demo_runs_through_the_engine_and_scores_its_results_files(tmp_path):
    """`demo --refer` pre-labels each clip's mp4 with its queries as `prelabel --query` does:
    the summary is computed from the version-2 results files it leaves behind."""
    from auralsam2_core.evaluation.refer_demo import run_refer_demo
    from auralsam2_core.inference.results import frame_masks, objects, read_results
    from auralsam2_core.modeling.build import build_auralsam2

    torch.manual_seed(0)
    model = build_auralsam2("sam2_hiera_t", image_size=64, fuser_config={"f_depths": [1, 1, 1]},
                            device="cpu", variant="refavs",
                            text_encoder=tiny_word_text_encoder())
    s = run_refer_demo(tmp_path, n_clips=1, size=64, model=model)
    assert s["path"] == "engine" and len(s["per_query"]) == 6
    for v in refer_clips(1, size=64):
        doc = read_results(tmp_path / "results" / f"{v.name}.json")
        assert doc["format_version"] == 2
        assert [o["query"] for o in objects(doc)] == [q.expression for q in v.queries]
        rows = [r for r in s["per_query"] if r["video"] == v.name]
        for k, q in enumerate(v.queries):
            m = np.stack([m for _, m in frame_masks(doc, q.expression)])
            assert m.shape == q.target.shape
            union = np.logical_or(m, q.target).sum()
            iou = np.logical_and(m, q.target).sum() / union if union else 1.0
            assert rows[k]["iou"] == pytest.approx(iou)
            assert rows[k]["foreground_fraction"] == pytest.approx(m.mean())


def test_bundle_records_the_chain_of_stages_back_to_the_avs_bundle(tmp_path):
    """A stage that continued another run's weights records that run (and the runs before it)
    and, at the root of the chain, the bundle the first stage started from."""
    from auralsam2_core.model_spec import ModelSpec
    from auralsam2_core.training.train import _lineage, spec_record

    avs = tmp_path / "avs"
    avs.mkdir()
    (avs / "model.json").write_text(json.dumps({"name": "the-avs-demo", "training": {}}))

    def stage(name, sam2, fuser, steps):
        run = tmp_path / name
        run.mkdir()
        spec = ModelSpec(sam2_config="demo", variant="refavs", sam2_checkpoint=str(sam2),
                         fuser_checkpoint=str(fuser))
        (run / "train.json").write_text(json.dumps({
            "command": f"auralsam2 train ... --out {name}", "steps": steps, "seconds": 1.0,
            "model": spec_record(spec)}))
        return run

    one = stage("one", avs / "sam2.safetensors", avs / "fuser.safetensors", 10)
    two = stage("two", avs / "sam2.safetensors", one / "fuser.pth", 20)
    three = ModelSpec(sam2_config="demo", variant="refavs", sam2_checkpoint=str(two / "sam2.pt"),
                      fuser_checkpoint=str(two / "fuser.pth"))
    root, earlier = _lineage(three)
    assert root["name"] == "the-avs-demo"
    assert [e["steps"] for e in earlier] == [10, 20]
    assert earlier[-1]["command"].endswith("--out two")
    assert _lineage(ModelSpec(sam2_config="demo", variant="refavs")) == (None, [])


def test_schedule_weights_and_objects_reach_the_dataset(tmp_path):
    """`auralsam2 train --synthetic --variant refavs --schedule-weights ... --num-objects 2`:
    the referring clips are drawn with those schedules and that many shapes; bad weights are
    refused with the schedules named."""
    import argparse

    from auralsam2_core.cli.train import _dataset_from_args, _schedule_weights

    args = argparse.Namespace(synthetic=True, variant="refavs", steps=4, batch_size=3, seed=1,
                              render_size=64, queries_per_clip=3, num_objects=2,
                              schedule_weights="all=1,silent=0", focus_shapes=None,
                              focus_fraction=0.5)
    data, shuffle = _dataset_from_args(args, 64)
    assert not shuffle and data.config()["schedules"] == ["all", "silent"]
    for i in range(len(data)):
        clip, _, _ = data.item(i)
        assert len(clip.shapes) == 2 and clip.sounding.all()  # every shape sounds throughout
    for bad in ("all=x", "loud=1", "all=0,one=0", "all"):
        with pytest.raises(ValueError, match="--schedule-weights"):
            _schedule_weights(bad)


def test_a_stopped_stage_keeps_its_trained_sam2_and_says_where_it_stopped(tmp_path):
    """A stage stopped early (--stop-after) with SAM2 unfrozen leaves both weights for the next
    stage and a stopped.json the bundle's lineage reads (not a train.json: it did not finish)."""
    from auralsam2_core.model_spec import ModelSpec
    from auralsam2_core.training.train import _lineage

    spec = demo_spec(variant="refavs", text_encoder="demo-words",
                     sam2_checkpoint=str(AVS_BUNDLE / "sam2.safetensors"),
                     fuser_init=str(AVS_BUNDLE / "fuser.safetensors"))
    data = ReferringClipDataset(6, image_size=96, queries_per_clip=2)
    out = tmp_path / "stage"
    result = train(_refer_cfg(out, steps=3, unfreeze_sam2=True), data, spec, stop_after=1,
                   command="auralsam2 train ... --stop-after 1")
    assert result.steps == 1 and result.sam2 == out / "sam2.pt" and result.sam2.is_file()
    assert not (out / "train.json").exists()
    stopped = json.loads((out / "stopped.json").read_text())
    assert (stopped["steps"], stopped["schedule_steps"]) == (1, 3)
    assert stopped["dataset"]["queries_per_clip"] == 2
    sam2 = torch.load(out / "sam2.pt", map_location="cpu", weights_only=True)["model"]
    start = read_state_dict(AVS_BUNDLE / "sam2.safetensors")
    assert any(not torch.equal(sam2[k], start[k]) for k in start if k in sam2)  # trained
    root, earlier = _lineage(ModelSpec(sam2_config="demo", variant="refavs",
                                       sam2_checkpoint=str(out / "sam2.pt"),
                                       fuser_checkpoint=str(out / "fuser.pth")))
    assert root["name"] == "auralsam2-demo-tiny"
    assert earlier == [{"command": "auralsam2 train ... --stop-after 1", "steps": 1,
                        "wall_seconds": stopped["seconds"], "stopped_after": 1, "of": 3}]


def test_clips_with_given_shapes_and_a_focus_pair():
    """make_clip(shapes=...) draws those shapes, each with its own sound; a referring dataset
    with focus_shapes shows that pair in about focus_fraction of its clips."""
    from auralsam2_core.training.synthetic import SIGNATURE_HZ, clip_meta, make_clip

    c = make_clip(5, size=(64, 64), seconds=1.0, colours="named", shapes=("square", "disc"))
    assert c.shapes == ["square", "disc"] and c.object_masks.shape[0] == 2
    assert clip_meta(c)["signature_hz"] == {s: SIGNATURE_HZ[s] for s in ("square", "disc")}
    for bad in (("disc", "disc"), ("star",), ()):
        with pytest.raises(ValueError, match="shapes"):
            make_clip(5, size=(64, 64), shapes=bad)
    with pytest.raises(ValueError, match="num_objects"):
        make_clip(5, size=(64, 64), shapes=("disc", "square"), num_objects=3)
    data = ReferringClipDataset(120, image_size=64, render_size=64, queries_per_clip=2,
                                num_objects=2, focus_shapes=("disc", "square"),
                                focus_fraction=0.6)
    pairs = [sorted(data.item(i)[0].shapes) for i in range(0, 120, 2)]
    share = pairs.count(["disc", "square"]) / len(pairs)
    assert 0.6 <= share <= 0.95  # 0.6 forced + a third of the rest by chance
    assert data.config()["focus_shapes"] == ["disc", "square"]
    with pytest.raises(ValueError, match="focus_shapes"):
        ReferringClipDataset(4, num_objects=3, focus_shapes=("disc", "square"))


def test_text_proj_can_learn_faster_than_the_rest():
    """--text-lr-scale X: text_proj's parameters sit in their own AdamW groups (decay / no
    decay kept) at X times the rate; every parameter is in exactly one group."""
    from auralsam2_core.modeling.fuser import AuralFuser
    from auralsam2_core.training.train import param_groups

    fuser = AuralFuser.from_official_config(DEMO_FUSER_CONFIG, variant="refavs")
    groups = param_groups([fuser], 0.05, fuser.text_proj, 10 * 1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in fuser.parameters())
    scaled = [g for g in groups if g.get("lr") == 10 * 1e-4]
    assert {id(p) for g in scaled for p in g["params"]} == {id(p) for p in
                                                            fuser.text_proj.parameters()}
    assert sorted(g["weight_decay"] for g in scaled) == [0.0, 0.05]
    assert len(param_groups([fuser], 0.05, fuser.text_proj, None)) == 2  # default: as before


def test_synthetic_samples_say_which_shape_sounds_when():
    """ClipSample.sources: (T, len(SHAPES)), 1 where that shape's own sound is on, whatever the
    query; collate stacks them (None when a clip has none, e.g. AVSBench)."""
    from auralsam2_core.training.datasets import ClipSample, clip_sample
    from auralsam2_core.training.synthetic import SHAPES, make_clip

    c = make_clip(7, size=(64, 64), seconds=2.0, colours="named", shapes=("square", "disc"),
                  schedule="one")
    s = clip_sample(c, 64)
    assert s.sources.shape == (c.num_frames, len(SHAPES))
    for k, shape in enumerate(c.shapes):
        assert s.sources[:, SHAPES.index(shape)].tolist() == c.sounding[k].astype(float).tolist()
    assert s.sources[:, SHAPES.index("triangle")].sum() == 0  # not in the clip
    assert collate([s, s])["sources"].shape == (2, c.num_frames, len(SHAPES))
    bare = ClipSample(frames=s.frames, log_mel=s.log_mel, gt=s.gt, valid=s.valid)
    assert collate([s, bare])["sources"] is None


def test_sound_identity_loss_trains_the_audio_encoder_and_resumes(tmp_path):
    """--sound-id-weight: a training-only head reads the fuser's audio embedding; its loss is
    logged, reaches the audio encoder, is kept in the checkpoint for resuming (same result as
    an uninterrupted run) and never enters the model's weights."""
    from auralsam2_core.training.train import SoundIdentityHead

    spec = demo_spec(variant="refavs", text_encoder="demo-words",
                     sam2_checkpoint=str(AVS_BUNDLE / "sam2.safetensors"),
                     fuser_init=str(AVS_BUNDLE / "fuser.safetensors"))
    data = ReferringClipDataset(8, image_size=96, render_size=96, queries_per_clip=2,
                                num_objects=2)
    full = train(_refer_cfg(tmp_path / "full", steps=2, sound_id_weight=3.0,
                            checkpoint_every=1), data, spec)
    logged = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all(r["sound_id"] > 0 for r in logged)
    plain = train(_refer_cfg(tmp_path / "plain", steps=2), data, spec)
    a, b = read_state_dict(full.fuser), read_state_dict(plain.fuser)
    assert a.keys() == b.keys()  # no head in the model's weights
    enc = [k for k in a if k.startswith("audio_encoder.") and a[k].is_floating_point()]
    assert any(not torch.equal(a[k], b[k]) for k in enc)
    ck = torch.load(tmp_path / "full" / "checkpoints" / "latest.pt", weights_only=True)
    assert set(ck["sound_id_head"]) == {"linear.weight", "linear.bias"}
    train(_refer_cfg(tmp_path / "resumed", steps=2, sound_id_weight=3.0, checkpoint_every=1),
          data, spec, stop_after=1)
    resumed = train(_refer_cfg(tmp_path / "resumed", steps=2, sound_id_weight=3.0,
                               checkpoint_every=1, resume=True), data, spec)
    c = read_state_dict(resumed.fuser)
    assert all(torch.equal(a[k], c[k]) for k in a)
    fuser = build_model(spec).fuser
    assert not any(p is q for p in SoundIdentityHead(fuser).parameters()
                   for q in fuser.parameters())
    # rows="prompts": the head reads the fuser's decoder-facing audio rows of every level
    prompts = train(_refer_cfg(tmp_path / "prompts", steps=2, sound_id_weight=3.0,
                               sound_id_rows="prompts"), data, spec)
    logged = [json.loads(x) for x in (tmp_path / "prompts" / "log.jsonl").read_text()
              .splitlines()]
    assert all(r["sound_id"] > 0 for r in logged)
    d = read_state_dict(prompts.fuser)
    assert any(not torch.equal(d[k], a[k]) for k in a)
    head = SoundIdentityHead(fuser, "prompts")
    assert head.linear.in_features == 3 * fuser.dim
    # only calls that train are recorded (evaluations run without grad); close() unhooks
    with torch.no_grad():
        head._record(fuser, (), (None, "evaluation"))
    assert head._seen == []
    head._record(fuser, (), (None, "training"))
    assert head._seen == ["training"] and len(fuser._forward_hooks) == 1
    head.close()
    assert head._seen == [] and len(fuser._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="fuser calls"):
        head.loss(torch.zeros(2, 10, 2, 96, 64), torch.zeros(2, 10, len(SHAPES)))
    with pytest.raises(ValueError, match="rows"):
        SoundIdentityHead(fuser, "pixels")
