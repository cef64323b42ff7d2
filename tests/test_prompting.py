"""Prompt injection into SAM2's two-way transformer vs the authors' literal in-place forward
(tests/helpers/numerics_oracle.py), on a real ``sam2`` TwoWayTransformer / MaskDecoder with random
weights. Run with ``pytest -s`` to see the measured differences."""

from __future__ import annotations

import pytest
import torch
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from torch.nn.attention import SDPBackend, sdpa_kernel

from auralsam2_core.modeling.prompting import (
    FramePrompts,
    PromptedTwoWayTransformer,
    install_prompted_transformer,
    run_prompted_transformer,
)

from helpers import numerics_oracle as oracle

C = 256
H = 8
TOKENS = 6



def make_transformer(seed: int = 0, dtype=torch.float32) -> TwoWayTransformer:
    torch.manual_seed(seed)
    t = TwoWayTransformer(depth=2, embedding_dim=C, num_heads=8, mlp_dim=2048)
    return oracle.randomize_(t, seed=seed).to(dtype).eval()


@pytest.fixture(scope="module")
def transformer() -> TwoWayTransformer:
    return make_transformer()


def make_inputs(seed: int = 1, dtype=torch.float32, batch: int = 1, tokens: int = TOKENS):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    image, image_pe, points = r(batch, C, H, H), r(batch, C, H, H), r(batch, tokens, C)
    visual = [r(H * H, C) for _ in range(3)]  # [c, b, a]
    audio = [r(C) for _ in range(3)]  # [d3, d2, d1]
    return image, image_pe, points, visual, audio


def plain_forward(transformer, image, image_pe, points):
    """sam2's own TwoWayTransformer.forward under the MATH kernel (the one used with prompts)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return TwoWayTransformer.forward(transformer, image, image_pe, points)


def _diff(a, b) -> float:
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- vs the oracle


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_literal_in_place_oracle(dtype):
    t = make_transformer(dtype=dtype)
    args = make_inputs(dtype=dtype)
    with torch.no_grad():
        q, k = run_prompted_transformer(t, *args)
        q_ref, k_ref = oracle.prompted_two_way_literal(t, *args)
    assert q.shape == (1, TOKENS, C) and k.shape == (1, H * H, C)
    dq, dk = _diff(q, q_ref), _diff(k, k_ref)
    print(f"\nprompted transformer {dtype}: max abs diff queries={dq:.3e} keys={dk:.3e}")
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert dq < tol and dk < tol


def test_batched_prompts_match_per_frame(transformer):
    """(B, h*w, C) / (B, 1, C) prompts, one frame per batch row, equal frame-by-frame runs."""
    frames = [make_inputs(seed=s) for s in (1, 2)]
    image = torch.cat([f[0] for f in frames])
    image_pe = torch.cat([f[1] for f in frames])
    points = torch.cat([f[2] for f in frames])
    visual = [torch.stack([f[3][i] for f in frames]) for i in range(3)]
    audio = [torch.stack([f[4][i] for f in frames]).unsqueeze(1) for i in range(3)]
    with torch.no_grad():
        q, k = run_prompted_transformer(transformer, image, image_pe, points, visual, audio)
        for b, f in enumerate(frames):
            q_ref, k_ref = oracle.prompted_two_way_literal(transformer, *f)
            assert _diff(q[b:b + 1], q_ref) < 1e-5 and _diff(k[b:b + 1], k_ref) < 1e-5


def test_caller_tensors_are_not_modified(transformer):
    args = make_inputs()
    flat = [args[0], args[1], args[2], *args[3], *args[4]]
    before = [t.clone() for t in flat]
    with torch.no_grad():
        run_prompted_transformer(transformer, *args)
    assert all(torch.equal(a, b) for a, b in zip(flat, before, strict=True))


def test_query_pe_carries_d3(transformer):
    """The authors' in-place add puts d3 into the query PE of every later attention; a
    version without that carry-over gives clearly different tokens."""
    args = make_inputs()
    with torch.no_grad():
        q, _ = run_prompted_transformer(transformer, *args)
        q_no_carry, _ = oracle.prompted_two_way_literal(transformer, *args, carry_pe=False)
    d = _diff(q, q_no_carry)
    print(f"\nwithout the d3 carry-over in query_pe: max abs diff {d:.3e}")
    assert d > 1e-2


def test_d3_alone_is_a_shift_of_the_mask_tokens(transformer):
    """With prompts [d3, 0, 0] / visual [c, 0, 0], the authors' forward is exactly SAM2's plain
    forward on point_embedding[:, 2:6] + d3 (tokens AND query PE shifted, nothing else) and on
    image_embedding + c. Fails if other rows were touched or the PE did not carry d3."""
    image, image_pe, points, visual, audio = make_inputs(tokens=TOKENS + 1)  # + a padding row
    zero_v, zero_a = torch.zeros(H * H, C), torch.zeros(C)
    shifted = points.clone()
    shifted[:, 2:6] += audio[0]
    image_c = image + visual[0].T.reshape(1, C, H, H)
    with torch.no_grad():
        got = run_prompted_transformer(transformer, image, image_pe, points,
                                       [visual[0], zero_v, zero_v], [audio[0], zero_a, zero_a])
    want = plain_forward(transformer, image_c, image_pe, shifted)
    print(f"\n[d3,0,0] vs shifted plain forward: {_diff(got[0], want[0]):.3e}")
    assert _diff(got[0], want[0]) < 1e-5 and _diff(got[1], want[1]) < 1e-5


def test_zero_prompts_equal_plain_forward(transformer):
    image, image_pe, points, _, _ = make_inputs()
    zeros_v = [torch.zeros(H * H, C)] * 3
    zeros_a = [torch.zeros(C)] * 3
    with torch.no_grad():
        q, k = run_prompted_transformer(transformer, image, image_pe, points, zeros_v, zeros_a)
    q_ref, k_ref = plain_forward(transformer, image, image_pe, points)
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref)


@pytest.mark.parametrize("nv,na", [(2, 3), (3, 2), (4, 4), (2, 2)])
def test_wrong_number_of_prompts_raises(transformer, nv, na):
    image, image_pe, points, visual, audio = make_inputs()
    visual = (visual * 2)[:nv]
    audio = (audio * 2)[:na]
    with pytest.raises(ValueError):
        run_prompted_transformer(transformer, image, image_pe, points, visual, audio)


# --------------------------------------------------------------------------- on a MaskDecoder


def make_decoder(seed: int = 0, pred_obj_scores: bool = True) -> MaskDecoder:
    torch.manual_seed(seed)
    dec = MaskDecoder(
        transformer_dim=C,
        transformer=TwoWayTransformer(depth=2, embedding_dim=C, num_heads=8, mlp_dim=2048),
        num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
        use_high_res_features=True, iou_prediction_use_sigmoid=True,
        pred_obj_scores=pred_obj_scores, pred_obj_scores_mlp=pred_obj_scores,
        use_multimask_token_for_obj_ptr=True,
    )
    return oracle.randomize_(dec, seed=seed).eval()


def decoder_inputs(sparse_tokens: int = 1, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return dict(
        image_embeddings=torch.randn(1, C, H, H, generator=g),
        image_pe=torch.randn(1, C, H, H, generator=g),
        sparse_prompt_embeddings=torch.randn(1, sparse_tokens, C, generator=g),
        dense_prompt_embeddings=torch.randn(1, C, H, H, generator=g),
        multimask_output=True,
        repeat_image=False,
        high_res_features=[torch.randn(1, C // 8, 4 * H, 4 * H, generator=g),
                           torch.randn(1, C // 4, 2 * H, 2 * H, generator=g)],
    )


def test_install_keeps_state_dict_and_plain_behaviour():
    dec = make_decoder()
    sd_before = {k: v.clone() for k, v in dec.state_dict().items()}
    inputs = decoder_inputs()
    with torch.no_grad():
        out_before = dec(**inputs)
    t = install_prompted_transformer(dec)
    assert t is dec.transformer
    assert isinstance(t, PromptedTwoWayTransformer) and isinstance(t, TwoWayTransformer)
    sd_after = dec.state_dict()
    assert list(sd_after) == list(sd_before)
    assert all(torch.equal(sd_after[k], v) for k, v in sd_before.items())
    assert t.frame_prompts is None
    with torch.no_grad():
        out_after = dec(**inputs)
    assert all(torch.equal(a, b) for a, b in zip(out_before, out_after, strict=True))


def test_install_rejects_decoder_without_object_scores():
    with pytest.raises(ValueError):
        install_prompted_transformer(make_decoder(pred_obj_scores=False))


def test_keep_sparse_false_drops_padding_tokens():
    dec = make_decoder()
    t = install_prompted_transformer(dec)
    image, image_pe, points7, visual, audio = make_inputs(tokens=TOKENS + 1)
    with torch.no_grad():
        with t.prompts(FramePrompts(visual, audio)):  # keep_sparse=False by default
            q6, k6 = t(image, image_pe, points7)
        with t.prompts(FramePrompts(visual, audio, keep_sparse=True)):
            q7, k7 = t(image, image_pe, points7)
        ref6 = oracle.prompted_two_way_literal(t, image, image_pe, points7[:, :TOKENS],
                                               visual, audio)
        ref7 = oracle.prompted_two_way_literal(t, image, image_pe, points7, visual, audio)
    assert q6.shape == (1, TOKENS, C) and q7.shape == (1, TOKENS + 1, C)
    assert _diff(q6, ref6[0]) < 1e-6 and _diff(k6, ref6[1]) < 1e-6
    assert _diff(q7, ref7[0]) < 1e-6 and _diff(k7, ref7[1]) < 1e-6
    assert _diff(k6, k7) > 1e-3  # the padding token does change the result when kept
    assert t.frame_prompts is None  # context restored


def test_prompted_decoder_equals_official_no_sparse_tokens():
    """The official prompt encoder returns NO sparse token; SAM2's returns one padding point.
    With keep_sparse=False the full decoder gives the official result either way."""
    dec = make_decoder()
    t = install_prompted_transformer(dec)
    _, _, _, visual, audio = make_inputs()
    with_pad, no_sparse = decoder_inputs(sparse_tokens=1), decoder_inputs(sparse_tokens=1)
    no_sparse["sparse_prompt_embeddings"] = no_sparse["sparse_prompt_embeddings"][:, :0]
    with torch.no_grad():
        plain = dec(**with_pad)
        with t.prompts(FramePrompts(visual, audio)):
            a = dec(**with_pad)
            b = dec(**no_sparse)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (1, 3, 4 * H, 4 * H)
    assert _diff(a[0], plain[0]) > 1e-3  # the prompts do reach the masks


def test_prompts_context_resets_on_error():
    dec = make_decoder()
    t = install_prompted_transformer(dec)
    _, _, _, visual, audio = make_inputs()
    with pytest.raises(RuntimeError), t.prompts(FramePrompts(visual, audio)):
        assert t.frame_prompts is not None
        raise RuntimeError("boom")
    assert t.frame_prompts is None
