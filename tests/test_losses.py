"""Training losses on hand-made tensors: known values, best-mask selection, empty frames,
gradients, and the contrastive sampler's indexing."""

from __future__ import annotations

import math

import pytest
import torch

from auralsam2_core.modeling.model import ClipOutput
from auralsam2_core.training.losses import (
    LossWeights,
    contrastive_loss,
    dice_loss,
    mask_iou,
    sam2_mask_losses,
    sample_contrastive_pixels,
    sigmoid_focal_loss,
    total_loss,
)

BIG = 30.0  # a logit that is "certain"


def _square(t: int = 1, size: int = 8, lo: int = 2, hi: int = 6) -> torch.Tensor:
    gt = torch.zeros(t, size, size)
    gt[:, lo:hi, lo:hi] = 1
    return gt


def test_focal_known_values():
    # p = 0.5 everywhere: CE = ln 2, (1 - p_t)^2 = 1/4, alpha 0.25 (positives) / 0.75.
    logits = torch.zeros(2, 2)
    pos = sigmoid_focal_loss(logits, torch.ones(2, 2))
    neg = sigmoid_focal_loss(logits, torch.zeros(2, 2))
    assert pos.item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    assert neg.item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)
    # alpha < 0 and gamma 0: plain BCE
    bce = sigmoid_focal_loss(torch.tensor([[2.0]]), torch.tensor([[1.0]]), alpha=-1, gamma=0)
    assert bce.item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)


def test_dice_and_iou_known_values():
    gt = _square()[0]
    perfect = (gt * 2 - 1) * BIG
    assert dice_loss(perfect, gt).item() == pytest.approx(0.0, abs=1e-6)
    assert mask_iou(perfect, gt).item() == 1.0
    # p = 0.5 everywhere over 64 px, 16 px target: 1 - (2*8 + 1) / (32 + 16 + 1)
    assert dice_loss(torch.zeros(8, 8), gt).item() == pytest.approx(1 - 17 / 49, rel=1e-6)
    half = torch.full((8, 8), -BIG)
    half[2:6, 2:4] = BIG  # 8 of the 16 target pixels
    assert mask_iou(half, gt).item() == pytest.approx(0.5)
    assert mask_iou(torch.full((8, 8), -BIG), torch.zeros(8, 8)).item() == 0.0


@pytest.mark.parametrize("all_iou", [True, False])
def test_best_of_three_is_selected_and_only_it_trains(all_iou):
    gt = _square(t=2)
    good = (gt * 2 - 1) * 5  # (2, 8, 8)
    wrong = -good
    blank = torch.full_like(good, -5.0)
    raw = torch.stack([torch.stack([wrong[0], blank[0], good[0]]),
                       torch.stack([good[1], wrong[1], blank[1]])]).requires_grad_(True)
    ious = torch.full((2, 3), 0.5, requires_grad=True)
    obj = torch.full((2, 1), 3.0, requires_grad=True)
    out = sam2_mask_losses(raw, ious, obj, gt, weights=LossWeights(supervise_all_iou=all_iou))
    assert out["best"].tolist() == [2, 0]
    out["loss"].backward()
    trained = raw.grad.flatten(2).abs().sum(-1) > 0  # (T, M)
    assert trained.tolist() == [[False, False, True], [True, False, False]]
    # IoU head: predicted 0.5; actual 1.0 on the best masks, 0.0 on the others -> L1 0.5
    # per candidate, so 0.5 per frame either way
    assert out["iou"].item() == pytest.approx(1.0, abs=1e-6)
    if all_iou:  # every candidate is supervised: the wrong ones are pushed down
        assert ious.grad[0, 2].item() == pytest.approx(-1 / 3)
        assert ious.grad[0, 0].item() == pytest.approx(1 / 3)
    else:
        assert ious.grad[0, 2].item() == pytest.approx(-1.0) and ious.grad[0, 0].item() == 0.0


def test_loss_values_sum_over_frames_with_weights():
    gt = _square(t=3)
    raw = torch.zeros(3, 3, 8, 8)
    ious = torch.zeros(3, 3)
    obj = torch.zeros(3, 1)
    out = sam2_mask_losses(raw, ious, obj, gt)
    focal = sigmoid_focal_loss(torch.zeros(8, 8), gt[0]).item()
    dice = dice_loss(torch.zeros(8, 8), gt[0]).item()
    assert out["focal"].item() == pytest.approx(3 * 20 * focal, rel=1e-5)
    assert out["dice"].item() == pytest.approx(3 * dice, rel=1e-5)
    assert out["object_score"].item() == pytest.approx(3 * math.log(2), rel=1e-5)
    # actual IoU of an all-positive... logits 0 are not > 0: empty prediction, IoU 0
    assert out["iou"].item() == pytest.approx(0.0, abs=1e-7)
    total = out["focal"] + out["dice"] + out["iou"] + out["object_score"]
    assert out["loss"].item() == pytest.approx(total.item())
    w = sam2_mask_losses(raw, ious, obj, gt, weights=LossWeights(focal=1.0))
    assert w["focal"].item() == pytest.approx(3 * focal, rel=1e-5)


def test_empty_ground_truth_trains_only_the_object_score():
    gt = _square(t=2)
    gt[1] = 0  # frame 1: silent / source out of view
    raw = torch.randn(2, 3, 4, 4, requires_grad=True)  # low-res: upsampled to 8 x 8
    ious = torch.rand(2, 3, requires_grad=True)
    obj = torch.tensor([[0.3], [0.7]], requires_grad=True)
    out = sam2_mask_losses(raw, ious, obj, gt)
    out["loss"].backward()
    assert raw.grad[1].abs().sum() == 0 and ious.grad[1].abs().sum() == 0
    assert raw.grad[0].abs().sum() > 0
    # object score: target 1 for frame 0, 0 for frame 1
    want = math.log1p(math.exp(-0.3)) + math.log1p(math.exp(0.7))
    assert out["object_score"].item() == pytest.approx(want, rel=1e-5)
    assert obj.grad[1].item() > 0  # pushed down


def test_unannotated_frames_get_no_loss():
    gt = _square(t=2)
    raw = torch.randn(2, 3, 8, 8, requires_grad=True)
    obj = torch.zeros(2, 1, requires_grad=True)
    out = sam2_mask_losses(raw, torch.rand(2, 3), obj, gt, valid=torch.tensor([True, False]))
    out["loss"].backward()
    assert raw.grad[1].abs().sum() == 0 and obj.grad[1].item() == 0
    assert out["object_score"].item() == pytest.approx(math.log(2), rel=1e-5)


def test_upsampling_to_ground_truth_size():
    gt = _square(t=1, size=16, lo=4, hi=12)
    raw = torch.full((1, 3, 4, 4), -BIG)
    raw[0, 1, 1:3, 1:3] = BIG  # the matching square at 1/4 resolution
    out = sam2_mask_losses(raw, torch.zeros(1, 3), torch.zeros(1, 1), gt)
    assert out["best"].item() == 1
    assert out["dice"].item() < 0.2


# ----------------------------------------------------------------------------- contrastive


def test_sampler_takes_everything_when_small_and_hardest_when_large():
    labels = torch.tensor([1, 1, 0, 0, 0])
    sim = torch.tensor([0.9, -0.9, 0.1, 0.8, -0.5])
    idx = sample_contrastive_pixels(sim, labels, audio_label=1, per_class=4)
    assert sorted(idx.tolist()) == [0, 1, 2, 3, 4]
    # 300 positive pixels; the 10 least similar to the audio must be among the hard ones
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(300, generator=g)
    labels = torch.ones(300, dtype=torch.long)
    low = torch.argsort(sim)[:10]
    idx = sample_contrastive_pixels(sim, labels, audio_label=1, per_class=128,
                                    generator=torch.Generator().manual_seed(1))
    assert idx.numel() == 256 and len(set(idx.tolist())) == 256
    assert set(low.tolist()) <= set(idx[:128].tolist())
    # negatives: the most similar to the audio are the hard ones
    idx = sample_contrastive_pixels(sim, torch.zeros(300, dtype=torch.long), audio_label=1,
                                    per_class=128, generator=torch.Generator().manual_seed(1))
    high = torch.argsort(sim, descending=True)[:10]
    assert set(high.tolist()) <= set(idx[:128].tolist())


def _embeddings(aligned: bool, t: int = 2, d: int = 4, side: int = 4):
    """Pixel embeddings: object cells along e0, background along e1; audio along e0 when
    the frame sounds (aligned) or along e1 (misaligned)."""
    gt = torch.zeros(t, side * 2, side * 2)
    gt[:, :4, :4] = 1  # top-left quarter -> 2 x 2 cells of the 4 x 4 grid
    cells = torch.nn.functional.avg_pool2d(gt[:, None], 2)[:, 0] >= 0.5  # (t, 4, 4)
    pix = torch.zeros(t, d, side, side)
    pix[:, 0][cells] = 1
    pix[:, 1][~cells] = 1
    audio = torch.zeros(t, d, 1)
    audio[:, 0 if aligned else 1] = 1
    return pix, audio, gt


def test_contrastive_aligned_lower_than_misaligned_and_gradients_flow():
    pix_a, aud_a, gt = _embeddings(True)
    pix_m, aud_m, _ = _embeddings(False)
    pix_m.requires_grad_(True)
    aud_m.requires_grad_(True)
    good = contrastive_loss([pix_a] * 3, [aud_a] * 3, gt)
    bad = contrastive_loss([pix_m] * 3, [aud_m] * 3, gt)
    assert good.item() < 0.01 < 1.0 < bad.item()
    bad.backward()
    assert pix_m.grad.abs().sum() > 0 and aud_m.grad.abs().sum() > 0


def test_contrastive_known_value_single_pair():
    # One frame, 1 x 1 grid, one sounding cell exactly on the audio: one anchor, one
    # positive (the audio), no negatives -> -log(e^s / e^s) = 0.
    gt = torch.ones(1, 2, 2)
    pix = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    aud = torch.tensor([1.0, 0.0]).view(1, 2, 1)
    assert contrastive_loss([pix], [aud], gt).item() == pytest.approx(0.0, abs=1e-6)
    # Two cells (one object, one background): anchor object pixel, positive audio at
    # cos 1, negative background pixel at cos c: loss = log(1 + e^{(c - 1)/tau}) averaged
    # with the background anchor (no positive: silent label mismatch -> left out).
    gt = torch.zeros(1, 1, 2)
    gt[0, 0, 0] = 1
    c = 0.5
    pix = torch.tensor([[1.0, 0.0], [c, math.sqrt(1 - c * c)]]).T.reshape(1, 2, 1, 2)
    loss = contrastive_loss([pix], [aud], gt, temperature=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp((c - 1) / 0.1)), rel=1e-5)


def test_contrastive_pairs_pixels_only_with_their_own_frames_audio():
    # Frame 0 sounds with audio e0, frame 1 sounds with audio e2; object pixels of each
    # frame sit on their own frame's audio. Cross-frame pairs are not positives, so the
    # loss stays ~0 even though frame 1's pixels are far from frame 0's audio.
    gt = torch.ones(2, 1, 1)
    pix = torch.zeros(2, 3, 1, 1)
    pix[0, 0] = 1
    pix[1, 2] = 1
    aud = torch.zeros(2, 3, 1)
    aud[0, 0] = 1
    aud[1, 2] = 1
    assert contrastive_loss([pix], [aud], gt).item() == pytest.approx(0.0, abs=1e-6)


def test_contrastive_stays_finite_for_wide_similarities_and_a_silent_clip():
    # Ref-AVS visual projections are normalised over positions, not channels, so pixel
    # vectors can be longer than 1 and similarities / tau span more than float32's exp()
    # resolves. A silent (all-background) clip has no negatives at all: every anchor's
    # log-probability is 0 -> loss 0 with finite gradients (stage 2 of the Ref-AVS demo
    # recipe stopped on a NaN here).
    g = torch.Generator().manual_seed(0)
    pix = (torch.randn(4, 8, 3, 3, generator=g) * 2.0).requires_grad_(True)
    aud = torch.nn.functional.normalize(torch.randn(4, 8, 1, generator=g), dim=1)
    aud[0] = pix[0, :, 0, 0].detach().view(8, 1) * 3.0  # similarities up to ~150 / 0.1
    loss = contrastive_loss([pix], [aud], torch.zeros(4, 6, 6))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(pix.grad).all()
    # with both labels present the wide range still gives a finite loss and gradients
    pix.grad = None
    gt = torch.zeros(4, 6, 6)
    gt[:, :2, :2] = 1
    loss = contrastive_loss([pix], [aud], gt)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pix.grad).all()


def test_total_loss_adds_the_contrastive_term():
    pix, aud, gt = _embeddings(False)
    t = gt.shape[0]
    out = ClipOutput(multimask_logits=torch.zeros(t, 3, 2, 2),
                     raw_multimask_logits=torch.zeros(t, 3, 2, 2), ious=torch.zeros(t, 3),
                     object_score_logits=torch.zeros(t, 1),
                     mask_logits=torch.zeros(t, 1, 2, 2), chosen=torch.zeros(t, dtype=torch.long),
                     projections=[[pix] * 3, [aud] * 3])
    with_c = total_loss(out, gt)
    without = total_loss(out, gt, weights=LossWeights(contrastive=0.0))
    assert "contrastive" in with_c and "contrastive" not in without
    assert with_c["loss"].item() == pytest.approx(
        without["loss"].item() + with_c["contrastive"].item(), rel=1e-6)


def test_first_candidate_training_option():
    gt = _square(t=1)
    good = (gt * 2 - 1) * 5
    raw = torch.stack([-good, good, good])[:, 0][None].requires_grad_(True)  # (1, 3, 8, 8)
    out = sam2_mask_losses(raw, torch.zeros(1, 3), torch.zeros(1, 1), gt, candidate="first")
    assert out["best"].tolist() == [0]
    out["loss"].backward()
    assert raw.grad[0, 0].abs().sum() > 0 and raw.grad[0, 1:].abs().sum() == 0
    best = sam2_mask_losses(raw.detach(), torch.zeros(1, 3), torch.zeros(1, 1), gt)
    assert best["best"].tolist() == [1] and best["focal"] < out["focal"]
    with pytest.raises(ValueError):
        sam2_mask_losses(raw, torch.zeros(1, 3), torch.zeros(1, 1), gt, candidate="last")
