"""Tiny random RoBERTa repos laid out like the Hugging Face hub cache, made offline.

NOT a test module. ``make_hf_cache`` writes what ``huggingface-cli download
distilbert/distilroberta-base`` leaves in ``$HF_HOME/hub`` (``models--distilbert--
distilroberta-base/{refs/main, snapshots/<commit>/…}``) with the real repo's file kinds: a
``RobertaForMaskedLM`` checkpoint as ``model.safetensors`` (keys under ``roberta.`` plus the LM
head, as upstream), ``config.json``, a byte-level BPE ``vocab.json`` + ``merges.txt`` trained
here on a few sentences, optionally ``tokenizer.json``, and no ``tokenizer_config.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
CORPUS = [
    "the sounding object", "the man playing the guitar on the left",
    "a dog barking at the piano", "the woman singing", "the violin being played",
]
HIDDEN = 768  # the fuser's text width; everything else is tiny


def write_bpe_vocab(folder: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=320, min_frequency=1,
                            special_tokens=SPECIALS, show_progress=False)
    bpe.save_model(str(folder))


def tiny_masked_lm(vocab_size: int, seed: int = 0):
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2,
                           num_attention_heads=12, intermediate_size=96,
                           max_position_embeddings=27, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    return RobertaForMaskedLM(config).eval()


def make_hf_cache(hub: Path, repo: str = "distilbert/distilroberta-base", *,
                  tokenizer_json: bool = True, seed: int = 0):
    """Write a tiny repo into the hub cache ``hub``; returns ``(snapshot, masked_lm)``."""
    from transformers import AutoTokenizer

    commit = hashlib.sha1(f"{repo}{seed}".encode()).hexdigest()
    root = hub / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    write_bpe_vocab(snap)
    vocab_size = len(json.loads((snap / "vocab.json").read_text()))
    model = tiny_masked_lm(vocab_size, seed)
    model.save_pretrained(snap)  # config.json + model.safetensors
    if tokenizer_json:
        AutoTokenizer.from_pretrained(snap, local_files_only=True).save_pretrained(snap)
    (snap / "tokenizer_config.json").unlink(missing_ok=True)
    (snap / "special_tokens_map.json").unlink(missing_ok=True)
    assert not (snap / "pytorch_model.bin").exists()
    return snap, model
