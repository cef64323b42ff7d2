"""Ref-AVS metrics (docs/metrics.md): the null split's S in both definitions (AuralSAM2
pooled; GeWu-Lab per-clip sqrt) and J/F over the authors' 4-clip evaluation batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from auralsam2_core.evaluation.metrics import (
    NullSAccumulator,
    avsbench_j_f,
    null_s_pooled,
    null_s_sqrt_per_clip,
    refavs_j_f,
    video_f,
    video_j,
)

T = 10


def _logits_with_fg(k: int, t: int = T, side: int = 64, seed: int = 0) -> torch.Tensor:
    """Negative logits with exactly ``k`` pixels set positive, at random places."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.rand(t, side, side, generator=g) - 0.1
    idx = torch.randperm(x.numel(), generator=g)[:k]
    x.view(-1)[idx] = torch.rand(k, generator=g) + 0.1
    return x


def test_spec_values():
    zeros = torch.zeros(T, 32, 32)  # sigmoid(0) = 0.5 is not > 0.5
    assert null_s_pooled([zeros], logits=True) == 0.0
    assert null_s_sqrt_per_clip([zeros], logits=True) == 0.0
    ones = torch.ones(T, 32, 32)
    assert null_s_pooled([ones], logits=True) == 1.0
    assert null_s_sqrt_per_clip([ones], logits=True) == 1.0
    k = 12_345
    clip = _logits_with_fg(k, side=1024)
    assert null_s_pooled([clip], logits=True) == k / (T * 1024 * 1024)
    assert null_s_sqrt_per_clip([clip], logits=True) == pytest.approx(
        math.sqrt(k / (T * 1024 * 1024)), rel=1e-6)


def test_pooled_and_sqrt_definitions_differ():
    ks = [0, 400, 9_000, 40_960]  # clips of 10 x 64 x 64 = 40,960 pixels
    clips = [_logits_with_fg(k, seed=i) for i, k in enumerate(ks)]
    n = T * 64 * 64
    pooled = sum(ks) / (len(ks) * n)
    gewu = sum(math.sqrt(k / n) for k in ks) / len(ks)
    assert null_s_pooled(clips, logits=True) == pytest.approx(pooled, rel=1e-12)
    assert null_s_sqrt_per_clip(clips, logits=True) == pytest.approx(gewu, rel=1e-6)
    assert abs(pooled - gewu) > 0.05
    # GeWu-style groups of 2 clips: sqrt of each pair's pooled fraction
    pairs = [math.sqrt((ks[0] + ks[1]) / (2 * n)), math.sqrt((ks[2] + ks[3]) / (2 * n))]
    assert null_s_sqrt_per_clip(clips, logits=True, clips_per_group=2) == pytest.approx(
        sum(pairs) / 2, rel=1e-6)
    # one (clips, T, H, W) tensor works too
    assert null_s_pooled(torch.stack(clips), logits=True) == null_s_pooled(clips, logits=True)


def test_pooled_weights_clips_by_pixels():
    small = torch.ones(T, 8, 8)  # all foreground, 640 pixels
    big = -torch.ones(T, 32, 32)  # nothing, 10,240 pixels
    assert null_s_pooled([small, big], logits=True) == 640 / (640 + 10_240)
    assert null_s_sqrt_per_clip([small, big], logits=True) == 0.5


def test_threshold_is_sigmoid_in_the_logits_dtype():
    tiny = torch.full((T, 4, 4), 1e-9)
    assert null_s_pooled([tiny], logits=True) == 0.0  # float32: sigmoid(1e-9) == 0.5
    assert null_s_pooled([tiny.double()], logits=True) == 1.0
    probs = torch.full((T, 4, 4), 0.5)
    assert null_s_pooled([probs]) == 0.0  # probabilities: 0.5 is background
    assert null_s_pooled([np.full((T, 4, 4), 0.75, dtype=np.float32)]) == 1.0


def test_accumulator_report():
    acc = NullSAccumulator(logits=True)
    acc.add(_logits_with_fg(100), name="vid_a_null_1")
    acc.add(_logits_with_fg(0, seed=1))
    r = acc.report()
    assert r["protocol"] == "refavs-null-s" and r["num_clips"] == 2
    assert r["S_pooled"] == 100 / (2 * T * 64 * 64)
    assert r["S_sqrt_per_clip"] == pytest.approx(math.sqrt(100 / (T * 64 * 64)) / 2, rel=1e-6)
    assert [c["foreground"] for c in r["per_clip"]] == [100, 0]
    assert r["per_clip"][0]["name"] == "vid_a_null_1" and r["per_clip"][1]["name"] == "clip_1"


@pytest.mark.parametrize("bad, match", [
    ([], "no clips"),
    ([torch.zeros(4, 4)], r"\(T, H, W\)"),
    ([torch.full((2, 4, 4), 1.5)], r"\[0, 1\]"),
    ([torch.full((2, 4, 4), float("nan"))], "NaN"),
])
def test_bad_input_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        null_s_pooled(bad)


def test_refavs_j_f_groups_clips_into_batches():
    g = torch.Generator().manual_seed(0)
    probs = [torch.rand(T, 16, 16, generator=g) for _ in range(6)]
    gts = [(torch.rand(T, 16, 16, generator=g) > 0.6).float() for _ in range(6)]
    gts[2][:] = 0  # one clip with empty ground truth everywhere
    j, f = refavs_j_f(probs, gts)
    batches = [(torch.cat(probs[:4]), torch.cat(gts[:4])), (torch.cat(probs[4:]),
                                                           torch.cat(gts[4:]))]
    assert j == pytest.approx(sum(video_j(p, t) for p, t in batches) / 2, abs=1e-7)
    assert f == pytest.approx(sum(video_f(p, t) for p, t in batches) / 2, abs=1e-7)
    per_clip = avsbench_j_f(probs, gts)
    assert refavs_j_f(probs, gts, clips_per_batch=1) == per_clip
    assert abs(f - per_clip[1]) > 1e-3  # F's max per batch is not the mean of per-clip maxima
    with pytest.raises(ValueError, match="clips_per_batch"):
        refavs_j_f(probs, gts, clips_per_batch=0)
