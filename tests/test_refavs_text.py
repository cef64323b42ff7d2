"""Ref-AVS text encoder: tokenisation and hidden states as the authors use them
(docs/numerics.md, Ref-AVS), loading from the Hugging Face hub cache (offline, tiny random RoBERTa
repos made by tests/helpers/text_model_factory.py), and the registry entry."""

from __future__ import annotations

import json

import pytest
import torch

from auralsam2_core.modeling import weights
from auralsam2_core.modeling.text_encoder import (
    MAX_TOKENS,
    TextEncoder,
    load_text_encoder,
    tiny_random_text_encoder,
)
from auralsam2_core.modeling.weights import REGISTRY, fetch, hf_snapshot

from helpers.text_model_factory import make_hf_cache

REPO = "distilbert/distilroberta-base"
PHRASE = "The sounding object."


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf"


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    return tiny_random_text_encoder(seed=0)


def _check_ids(ids: list[int], mask: list[int]) -> int:
    """<s> ... </s> <pad>...: returns the real length."""
    assert len(ids) == len(mask) == MAX_TOKENS
    n = sum(mask)
    assert ids[0] == 0 and ids[n - 1] == 2 and all(i == 1 for i in ids[n:])
    assert mask == [1] * n + [0] * (MAX_TOKENS - n)
    assert 1 not in ids[:n] and 2 not in ids[1:n - 1]
    return n


def test_tokenisation_like_the_authors(tiny):
    enc = tiny.tokenize(PHRASE)
    ids, mask = enc["input_ids"][0].tolist(), enc["attention_mask"][0].tolist()
    n = _check_ids(ids, mask)
    assert n == len(PHRASE.encode()) + 2  # byte-level, no merges: one id per byte
    long = tiny.tokenize("the man on the left playing a very loud electric guitar solo")
    ids = long["input_ids"][0].tolist()
    assert _check_ids(ids, long["attention_mask"][0].tolist()) == MAX_TOKENS  # truncated
    assert ids[-1] == 2


def test_hidden_states_all_25_positions(tiny):
    out = tiny(PHRASE)
    assert out.shape == (1, MAX_TOKENS, 768) and out.dtype == torch.float32
    enc = tiny.tokenize(PHRASE)
    with torch.no_grad():
        direct = tiny.model(input_ids=enc["input_ids"],
                            attention_mask=enc["attention_mask"]).last_hidden_state
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=0)
    n = int(enc["attention_mask"].sum())
    pads = out[0, n:]
    assert pads.abs().amax() > 0.1  # pad positions still carry states (they go to the fuser)
    # RoBERTa gives every pad the padding position id, so the pad rows are alike
    torch.testing.assert_close(pads[0], pads[-1], atol=1e-5, rtol=0)
    assert (pads[0] - out[0, n - 1]).abs().amax() > 1e-3
    assert not out.requires_grad and not any(p.requires_grad for p in tiny.parameters())


def test_batch_equals_single_calls_and_mask_acts_inside(tiny):
    phrases = [PHRASE, "the dog", "a woman singing on the right side of the stage"]
    batch = tiny(phrases)
    assert batch.shape == (3, MAX_TOKENS, 768)
    for k, p in enumerate(phrases):
        torch.testing.assert_close(batch[k:k + 1], tiny(p), atol=1e-5, rtol=0)
    # the attention mask matters inside RoBERTa: without it the real tokens change
    enc = tiny.tokenize(PHRASE)
    with torch.no_grad():
        unmasked = tiny.model(input_ids=enc["input_ids"]).last_hidden_state
    assert (unmasked - batch[:1]).abs().amax() > 1e-3


def test_frozen_even_in_training_mode(tiny):
    tiny.train()
    try:
        assert not tiny.model.training  # dropout off: the authors keep RoBERTa in eval
        torch.testing.assert_close(tiny(PHRASE), tiny(PHRASE), atol=0, rtol=0)
    finally:
        tiny.eval()


@pytest.mark.parametrize("bad", ["", "   ", [], ["ok", 3]])
def test_bad_expressions_are_clear_errors(tiny, bad):
    with pytest.raises((ValueError, TypeError), match="expression"):
        tiny(bad)


# --------------------------------------------------------------------------- hub cache


@pytest.mark.parametrize("tokenizer_json", [True, False])
def test_loads_from_the_hub_cache(hf_home, tokenizer_json):
    snap, masked_lm = make_hf_cache(hf_home / "hub", tokenizer_json=tokenizer_json)
    entry = REGISTRY["distilroberta-base"]
    assert entry.is_cached() and entry.cache_path == snap and hf_snapshot(REPO) == snap
    enc = load_text_encoder("distilroberta-base")
    assert enc.source == str(snap) and enc.model.pooler is None
    ids = enc.tokenize(PHRASE)
    _check_ids(ids["input_ids"][0].tolist(), ids["attention_mask"][0].tolist())
    with torch.no_grad():
        ref = masked_lm.roberta(**ids).last_hidden_state
    torch.testing.assert_close(enc(PHRASE), ref, atol=1e-5, rtol=0)
    # a folder path loads the same, and fetch() finds the cached snapshot without a network
    assert load_text_encoder(snap).tokenize(PHRASE)["input_ids"].tolist() == \
        ids["input_ids"].tolist()
    assert fetch("distilroberta-base") == snap


def test_hf_hub_cache_env(hf_home, monkeypatch, tmp_path):
    assert weights.hf_hub_cache() == hf_home / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert weights.hf_hub_cache() == tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.hf_hub_cache() == tmp_path / "home" / ".cache" / "huggingface" / "hub"


def test_not_cached_is_a_clear_error(hf_home):
    assert not REGISTRY["distilroberta-base"].is_cached()
    with pytest.raises(FileNotFoundError, match="auralsam2 download distilroberta-base"):
        load_text_encoder()
    with pytest.raises(ValueError, match="not a text encoder"):
        load_text_encoder("auralsam2_refavs_best")


def test_incomplete_snapshot_is_refused(hf_home):
    snap, _ = make_hf_cache(hf_home / "hub")
    (snap / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no text encoder weights"):
        load_text_encoder()


def test_remote_code_in_a_repo_is_never_run(hf_home, tmp_path):
    """A config that points AutoModel at code shipped in the repo: the code never runs."""
    snap, _ = make_hf_cache(hf_home / "hub")
    marker = tmp_path / "ran.txt"
    (snap / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                  "from transformers import RobertaModel as EvilModel\n")
    cfg = json.loads((snap / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilModel"}
    (snap / "config.json").write_text(json.dumps(cfg))
    try:
        enc = load_text_encoder()
    except (ValueError, OSError):
        enc = None  # refusing is fine too
    assert not marker.exists()
    if enc is not None:
        assert type(enc.model).__module__.startswith("transformers.models.roberta")


def test_registry_entry():
    e = REGISTRY["distilroberta-base"]
    assert e.kind == "hf_model" and e.hf_repo == REPO
    assert "model.safetensors" in e.hf_files and "pytorch_model.bin" not in e.hf_files
    assert e.sha256 is None and "no checksum" in e.note


def test_wrong_width_model_is_refused():
    from transformers import RobertaConfig, RobertaModel

    small = RobertaModel(RobertaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, intermediate_size=64,
                                       max_position_embeddings=27))
    with pytest.raises(ValueError, match="768-d"):
        TextEncoder(small, None)
