"""Where AuralSAM2's prompts enter SAM2: the mask decoder's two-way transformer.

Per frame, the fuser's visual prompts ``[c, b, a]`` are added to the image keys and its audio
prompts ``[d3, d2, d1]`` to the four mask tokens, before transformer layer 0, layer 1 and the
final token-to-image attention. We drive the ``sam2`` package's own layers; nothing of SAM2 is
re-implemented here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from torch.nn.attention import SDPBackend, sdpa_kernel

#: Token layout of SAM2's decoder with object scores: [obj_score, iou, mask0..mask3, sparse...]
MASK_TOKENS = slice(2, 6)
NUM_OUTPUT_TOKENS = 6


def _add_to_mask_tokens(tokens: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    return torch.cat([tokens[:, :MASK_TOKENS.start], tokens[:, MASK_TOKENS] + vec,
                      tokens[:, MASK_TOKENS.stop:]], dim=1)


def _exact_attention_kernel(device: torch.device):
    # The authors' decoder attention selects PyTorch's MATH kernel on CPU; the default CPU
    # kernel differs by ~1e-6. Keep theirs there; on GPU let PyTorch choose (flash).
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()


def run_prompted_transformer(transformer: TwoWayTransformer, image_embedding: torch.Tensor,
                             image_pe: torch.Tensor, point_embedding: torch.Tensor,
                             visual_prompts: Sequence[torch.Tensor],
                             audio_prompts: Sequence[torch.Tensor]
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM2's ``TwoWayTransformer.forward`` with AuralSAM2's prompts added.

    ``image_embedding``/``image_pe``: ``(B, C, h, w)``; ``point_embedding``: ``(B, tokens, C)``;
    ``visual_prompts = [c, b, a]`` each ``(h*w, C)`` (or ``(B, h*w, C)``) and
    ``audio_prompts = [d3, d2, d1]`` each ``(C,)`` (or ``(B, 1, C)``), one more than the depth.
    Returns ``(queries, keys)`` like the original; arguments are not modified.
    """
    depth = len(transformer.layers)
    if len(visual_prompts) != depth + 1 or len(audio_prompts) != depth + 1:
        raise ValueError(f"need {depth + 1} visual and audio prompts for a depth-{depth} "
                         f"decoder, got {len(visual_prompts)} and {len(audio_prompts)}")
    keys = image_embedding.flatten(2).transpose(1, 2)
    key_pe = image_pe.flatten(2).transpose(1, 2)
    with _exact_attention_kernel(image_embedding.device):
        # Quirk: the authors add d3 in place into the token tensor that is also the query PE,
        # so the PE of every later attention carries d3 as well. Reproduced without mutation.
        query_pe = _add_to_mask_tokens(point_embedding, audio_prompts[0])
        queries = query_pe
        for i, layer in enumerate(transformer.layers):
            if i > 0:
                queries = _add_to_mask_tokens(queries, audio_prompts[i])
            keys = keys + visual_prompts[i]
            queries, keys = layer(queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe)
        queries = _add_to_mask_tokens(queries, audio_prompts[-1])
        keys = keys + visual_prompts[-1]
        attn_out = transformer.final_attn_token_to_image(q=queries + query_pe, k=keys + key_pe,
                                                         v=keys)
        queries = transformer.norm_final_attn(queries + attn_out)
    return queries, keys


@dataclass
class FramePrompts:
    """One frame's prompts; ``keep_sparse=False`` drops SAM2's padding point tokens, as the
    authors' prompt encoder returns no sparse tokens at all."""

    visual: Sequence[torch.Tensor]
    audio: Sequence[torch.Tensor]
    keep_sparse: bool = False


class PromptedTwoWayTransformer(TwoWayTransformer):
    """sam2's ``TwoWayTransformer`` that applies the current :class:`FramePrompts`, if any.

    Same parameters and state-dict keys as the original, so SAM2 checkpoints load unchanged;
    with no prompts set it behaves exactly like the original.
    """

    frame_prompts: FramePrompts | None = None

    def forward(self, image_embedding, image_pe, point_embedding):
        p = self.frame_prompts
        if p is None:
            return super().forward(image_embedding, image_pe, point_embedding)
        if not p.keep_sparse:
            point_embedding = point_embedding[:, :NUM_OUTPUT_TOKENS]
        return run_prompted_transformer(self, image_embedding, image_pe, point_embedding,
                                        p.visual, p.audio)

    @contextlib.contextmanager
    def prompts(self, frame_prompts: FramePrompts) -> Iterator[None]:
        previous, self.frame_prompts = self.frame_prompts, frame_prompts
        try:
            yield
        finally:
            self.frame_prompts = previous


def install_prompted_transformer(decoder: MaskDecoder) -> PromptedTwoWayTransformer:
    """Make ``decoder.transformer`` prompt-aware in place (keeps its weights and keys)."""
    if not decoder.pred_obj_scores:
        raise ValueError("AuralSAM2 needs a SAM2 decoder with object scores "
                         "(pred_obj_scores=True), as in every config the sam2 package ships")
    transformer = decoder.transformer
    if not isinstance(transformer, TwoWayTransformer):
        raise TypeError(f"unexpected SAM2 decoder transformer {type(transformer).__name__}")
    transformer.__class__ = PromptedTwoWayTransformer
    return transformer
