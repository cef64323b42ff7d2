"""Ref-AVS text encoder: a frozen RoBERTa turning a referring expression into 25 token states.

As the authors use it (``docs/numerics.md``): Hugging Face ``distilbert/distilroberta-base``
(``RobertaModel``, 6 layers, 768-d), frozen and in eval mode; each expression is tokenised
alone to exactly ``max_length=25`` ids (``<s> … </s> <pad>…``, truncated when longer); the
output is ``last_hidden_state`` at **all 25 positions**, pads included (the attention mask acts
only inside RoBERTa), shape ``(1, 25, 768)`` per expression. CLS and the pooler are unused.

Loading is local only: from a folder or from the Hugging Face hub cache
(:func:`auralsam2_core.modeling.weights.hf_snapshot`), with ``local_files_only=True``, never
``trust_remote_code``, safetensors preferred. ``auralsam2 download distilroberta-base`` fills
the cache. :func:`tiny_random_text_encoder` builds a small random one offline (checks, tests).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from auralsam2_core.modeling.fuser import TEXT_DIM

TEXT_ENCODER_NAME = "distilroberta-base"  # registry name (auralsam2_core.modeling.weights)
MAX_TOKENS = 25  # the authors' (and GeWu-Lab's) text_max_len

Expressions = str | Sequence[str]


def _as_list(expressions: Expressions) -> list[str]:
    texts = [expressions] if isinstance(expressions, str) else list(expressions)
    if not texts:
        raise ValueError("no referring expression given")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"expression {i} must be a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"expression {i} is empty")
    return texts


class TextEncoder(nn.Module):
    """Frozen RoBERTa + its tokenizer: expressions -> ``(K, 25, 768)`` hidden states.

    Each row is what the authors compute for that expression alone (padding to a fixed
    length makes a batch of K the same as K single calls, up to float rounding).
    """

    def __init__(self, model: nn.Module, tokenizer, *, max_length: int = MAX_TOKENS,
                 source: str | None = None) -> None:
        super().__init__()
        hidden = getattr(model.config, "hidden_size", None)
        if hidden != TEXT_DIM:
            raise ValueError(f"the Ref-AVS fuser takes {TEXT_DIM}-d text states; this model "
                             f"gives {hidden}")
        if getattr(model.config, "max_position_embeddings", 0) < max_length + 2:
            raise ValueError(f"the text model has too few positions for {max_length} tokens")
        self.model = model
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.source = source  # provenance: the folder it was loaded from, or "tiny-random"
        self.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: always in eval mode, as the authors' freeze_sam_parameters
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, expressions: Expressions) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, ``(K, 25)`` each, on the model's device."""
        enc = self.tokenizer(_as_list(expressions), max_length=self.max_length,
                             padding="max_length", truncation=True, return_tensors="pt")
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def forward(self, expressions: Expressions) -> torch.Tensor:
        """``last_hidden_state`` ``(K, 25, 768)``; row k is expression k (``(1, 25, 768)`` for
        one string: exactly the fuser's ``text`` input)."""
        return self.model(**self.tokenize(expressions)).last_hidden_state

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> TextEncoder:
        """Load tokenizer and model from a local folder (a hub-cache snapshot or a
        ``save_pretrained`` folder): local files only, no remote code, float32."""
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no text encoder in {folder} (config.json missing)")
        safetensors = (folder / "model.safetensors").is_file()
        if not safetensors and not (folder / "pytorch_model.bin").is_file():
            raise FileNotFoundError(f"no text encoder weights in {folder} (model.safetensors "
                                    "missing)")
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                      trust_remote_code=False)
            # The pooler is unused (and absent from the masked-LM checkpoint upstream).
            model = AutoModel.from_pretrained(folder, local_files_only=True,
                                              trust_remote_code=False, add_pooling_layer=False,
                                              use_safetensors=True if safetensors else None,
                                              dtype=torch.float32)
        return cls(model, tokenizer, source=str(folder))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load report (the checkpoint's unused LM head) and no progress bars while loading."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_text_encoder(source: str | os.PathLike | TextEncoder = TEXT_ENCODER_NAME
                      ) -> TextEncoder:
    """A :class:`TextEncoder` from a registry name (looked up in the Hugging Face hub cache;
    never downloaded here), a local folder, or an instance (returned as is)."""
    if isinstance(source, TextEncoder):
        return source
    from auralsam2_core.modeling.weights import REGISTRY

    entry = REGISTRY.get(os.fspath(source))
    if entry is None:
        return TextEncoder.from_pretrained(source)
    if not entry.hf_repo:
        raise ValueError(f"{entry.name} is a {entry.kind} checkpoint, not a text encoder")
    from auralsam2_core.modeling.weights import hf_hub_cache, hf_snapshot

    folder = hf_snapshot(entry.hf_repo)
    if folder is None:
        raise FileNotFoundError(
            f"text encoder {entry.hf_repo} is not in the Hugging Face cache {hf_hub_cache()}; "
            f"run `auralsam2 download {entry.name}` (or set HF_HOME to a cache that has it)")
    return TextEncoder.from_pretrained(folder)


def tiny_byte_level_tokenizer():
    """A RoBERTa-style byte-level tokenizer with no merges (one token per UTF-8 byte), made
    offline: ids 0-3 are ``<s> <pad> </s> <unk>`` as in RoBERTa, then the 256 byte symbols,
    then ``<mask>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(("<s>", "<pad>", "</s>", "<unk>"))}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    vocab["<mask>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


def tiny_random_text_encoder(seed: int = 0, layers: int = 1) -> TextEncoder:
    """A random RoBERTa with the real interface (768-d states, 25 tokens) but one small layer,
    for ``auralsam2 check`` and tests when distilroberta-base is not cached. Its states carry no
    meaning."""
    from transformers import RobertaConfig, RobertaModel

    tokenizer = tiny_byte_level_tokenizer()
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM,
                           num_hidden_layers=layers, num_attention_heads=12,
                           intermediate_size=128, max_position_embeddings=MAX_TOKENS + 2,
                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaModel(config, add_pooling_layer=False)
    return TextEncoder(model, tokenizer, source="tiny-random")


#: The words of the bundled Ref-AVS demo's expressions (synthetic shapes, their colours and
#: the phrasing of :func:`auralsam2_core.training.synthetic.referring_expression`). Anything else is
#: ``<unk>``.
DEMO_WORDS: tuple[str, ...] = (
    "the", "a", "an", "one", "shape", "object", "that", "which", "is", "sounding", "making",
    "sound", "noise", "disc", "circle", "square", "triangle", "red", "green", "blue",
    "yellow", "orange", "purple", "white", "black")
#: ``ModelSpec.text_encoder`` / ``--text-encoder`` value for the demo's tiny word encoder.
DEMO_TEXT_ENCODER = "demo-words"


def word_level_tokenizer(words: Sequence[str]):
    """A RoBERTa-style tokenizer with one token per word (lower-cased; anything but letters
    separates words; unknown words become ``<unk>``): ids 0-3 are ``<s> <pad> </s> <unk>``, then
    ``words`` in order, then ``<mask>``. Made offline; saved and loaded as ``tokenizer.json``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(("<s>", "<pad>", "</s>", "<unk>"))}
    for w in words:
        if not w.isalpha() or not w.islower() or w in vocab:
            raise ValueError(f"vocabulary words must be distinct lower-case letters, got {w!r}")
        vocab[w] = len(vocab)
    vocab["<mask>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                           normalizers.Replace(Regex("[^a-z]+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


#: How strongly every position of the demo encoder's output carries the expression's mean word
#: vector (:func:`tiny_word_text_encoder`).
DEMO_CONTEXT_GAIN = 2.0


def tiny_word_text_encoder(seed: int = 0, words: Sequence[str] = DEMO_WORDS) -> TextEncoder:
    """The Ref-AVS demo's text encoder: a RoBERTa with **one fixed "bag of words" layer** over a
    word-level vocabulary (frozen; word and position embeddings random from ``seed``), giving
    the fuser's 768-d states for 25 tokens like distilroberta-base.

    Each demo word gets a fixed random 768-d vector (nearly orthogonal to the others), and the
    fuser's trainable ``text_proj`` learns what each one means. The layer is set, not random:
    uniform attention over the expression's tokens (query and key weights zero, value the
    identity, output ``DEMO_CONTEXT_GAIN`` x identity, feed-forward zero), so position ``i``
    becomes ``LayerNorm(x_i + gain * mean_j x_j)``. Why: a real RoBERTa gives *every* position,
    pads included, the sentence's context, and the fuser reads the text only as a sum over its
    25 rows; with embeddings alone the shape's word sat in 1 row of 25 and the trained demo
    collapsed "the disc" and "the square" into one meaning (README, "Ref-AVS demo model").
    It knows only :data:`DEMO_WORDS`; the published model uses distilroberta-base
    (``build_auralsam2(variant="refavs")``)."""
    from transformers import RobertaConfig, RobertaModel

    tokenizer = word_level_tokenizer(words)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM,
                           num_hidden_layers=1, num_attention_heads=12, intermediate_size=1,
                           max_position_embeddings=MAX_TOKENS + 2, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaModel(config, add_pooling_layer=False)
    layer = model.encoder.layer[0]
    eye = torch.eye(TEXT_DIM)
    with torch.no_grad():
        for lin in (layer.attention.self.query, layer.attention.self.key,
                    layer.intermediate.dense, layer.output.dense):
            lin.weight.zero_()
            lin.bias.zero_()
        layer.attention.self.value.weight.copy_(eye)
        layer.attention.self.value.bias.zero_()
        layer.attention.output.dense.weight.copy_(DEMO_CONTEXT_GAIN * eye)
        layer.attention.output.dense.bias.zero_()
    return TextEncoder(model, tokenizer, source=DEMO_TEXT_ENCODER)


def save_text_encoder(encoder: TextEncoder, folder: str | os.PathLike) -> list[Path]:
    """Write ``encoder`` as a folder :meth:`TextEncoder.from_pretrained` loads (config.json,
    model.safetensors, tokenizer files); returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        encoder.model.save_pretrained(folder, safe_serialization=True)
        encoder.tokenizer.save_pretrained(folder)
    return sorted(p for p in folder.iterdir() if p.is_file())
