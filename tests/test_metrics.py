"""AVSBench J / F (auralsam2_core.evaluation.metrics) on hand-computed tiny masks, a brute-force
threshold loop, input validation and PNG folders.

Shorthand used in the comments (beta^2 = 0.3):  F(P, R) = 1.3 P R / (0.3 P + R)
  F(1, 1)   = 1
  F(1/2, 1) = 0.65 / 1.15  = 13/23  = 0.565217...
  F(1/4, 1) = 0.325 / 1.075 = 13/43 = 0.302325...
  F(1, 1/2) = 0.65 / 0.8   = 0.8125
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from auralsam2_core.evaluation import metrics
from auralsam2_core.evaluation.metrics import (
    MetricsAccumulator,
    avsbench_j_f,
    dataset_level_j_f,
    evaluate,
    evaluate_dirs,
    f_thresholds,
    load_mask_dir,
    video_f,
    video_f_curve,
    video_j,
)

F_HALF = 0.65 / 1.15  # F(1/2, 1)
F_QUARTER = 0.325 / 1.075  # F(1/4, 1)
ATOL = 1e-6  # float32 rounding (the reference computes in float32)



def t(*frames) -> torch.Tensor:
    """(T, H, W) float32 tensor from nested lists, one per frame."""
    return torch.tensor(frames, dtype=torch.float32)


# --------------------------------------------------------------------------- hand-computed


def test_perfect_prediction():
    gt = t([[1, 1], [0, 0]])
    # J: |P∩G| = 2, |P∪G| = 2 -> 2 / (2 + 1e-7); in float32 2 + 1e-7 == 2, so exactly 1.
    assert video_j(gt, gt) == 1.0
    # F: th = 0 takes all 4 pixels -> P = 2/4, R = 1 -> 13/23; every th in (0, 1] (1.0 included,
    # since 1.0 >= 1.0) takes exactly the 2 foreground pixels -> F(1, 1) = 1. Max = 1.
    curve = video_f_curve(gt, gt)
    assert curve[0].item() == pytest.approx(F_HALF, abs=ATOL)
    assert torch.allclose(curve[1:], torch.ones(254), atol=ATOL)
    assert video_f(gt, gt) == pytest.approx(1.0, abs=ATOL)
    assert avsbench_j_f([gt], [gt]) == pytest.approx((1.0, 1.0), abs=ATOL)


def test_one_pixel_hit_shows_float32_eps():
    gt = t([[1, 0], [0, 0]])
    # 1 / (1 + 1e-7): float32(1 + 1e-7) = 1 + 2^-23, so J = 1 - 2^-23 = 0.99999988 (as the
    # official script prints); in float64 it is 1 / (1 + 1e-7).
    assert video_j(gt, gt) == 1 - 2**-23
    assert video_j(gt, gt, dtype=torch.float64) == pytest.approx(1 / (1 + 1e-7), abs=1e-15)


def test_empty_prediction_on_nonempty_gt():
    gt = t([[1, 0], [0, 0]])
    pred = torch.zeros_like(gt)
    # J: intersection 0 -> 0 / (1 + eps) = 0.
    assert video_j(pred, gt) == 0.0
    # F: th = 0 still selects every pixel (0 >= 0): TP = 1, P = 1/4, R = 1 -> 13/43 = 0.3023.
    # th > 0 selects nothing: P = 0 / (0 + 1e-20) = 0, R = 0 -> 0/0 = NaN -> 0. Max = 0.3023.
    assert video_f(pred, gt) == pytest.approx(F_QUARTER, abs=ATOL)
    assert video_f_curve(pred, gt)[1:].abs().max().item() == 0.0


def test_empty_gt_frame_scores_background_iou_for_j_and_is_skipped_for_f():
    # Frame 0: empty GT, empty prediction.  Frame 1: GT = 2 pixels, prediction hits 1 of them.
    pred = t([[0, 0], [0, 0]], [[1, 0], [0, 0]])
    gt = t([[0, 0], [0, 0]], [[1, 1], [0, 0]])
    # J frame 0 (empty GT): #(¬P∧¬G) / (H·W + 1e-7) = 4 / (4 + 1e-7) -> 1.0 in float32.
    # J frame 1: |P∩G| / |P∪G| = 1 / 2.  Video J = (1 + 0.5) / 2 = 0.75.
    assert video_j(pred, gt) == 0.75
    # F: frame 0 skipped. Frame 1: th = 0 -> all 4 px, P = 2/4, R = 1 -> 13/23;
    # th in (0, 1] -> the one predicted px, P = 1, R = 1/2 -> 0.8125. Max = 0.8125.
    # (Counting frame 0 as a zero curve would give 0.40625 instead.)
    assert video_f(pred, gt) == pytest.approx(0.8125, abs=ATOL)


def test_empty_gt_frame_with_false_positives():
    gt = t([[0, 0], [0, 0]])
    pred = t([[0.9, 0], [0, 0]])
    # Background IoU = 3 true-background px / 4 = 0.75 (1 minus the predicted fraction).
    assert video_j(pred, gt) == 0.75
    # The eps matters in float64 only: 4 / (4 + 1e-7) for an all-correct empty frame.
    empty = torch.zeros(1, 2, 2)
    assert video_j(empty, empty) == 1.0
    assert video_j(empty, empty, dtype=torch.float64) == pytest.approx(4 / (4 + 1e-7), abs=1e-15)


def test_all_empty_video_counts_f_zero():
    empty = torch.zeros(2, 2, 2)
    perfect = t([[1, 1], [0, 0]])
    # All-empty video: J = 1 (both frames background IoU 1), F = 0 (no frame to score).
    assert video_j(empty, empty) == 1.0
    assert video_f(empty, empty) == 0.0
    assert torch.equal(video_f_curve(empty, empty), torch.zeros(255))
    # It still counts in the mean: J = (1 + 1) / 2 = 1, F = (0 + 1) / 2 = 0.5.
    r = evaluate([empty, perfect], [empty, perfect], names=["silent", "perfect"])
    j, f = r.J, r.F
    assert j == 1.0
    assert f == pytest.approx(0.5, abs=ATOL)
    assert [v["F"] for v in r.per_video] == [0.0, pytest.approx(1.0, abs=ATOL)]
    assert r.per_video[0]["empty_gt_frames"] == 2


def test_probability_exactly_half_is_background_for_j():
    gt = t([[1, 0], [0, 0]])
    pred = t([[0.5, 0], [0, 0]])
    # J: 0.5 > 0.5 is false -> empty prediction -> 0.
    assert video_j(pred, gt) == 0.0
    # F uses >=: thresholds k/254 <= 0.5 (k = 1..127; linspace[127] is exactly 0.5) select the
    # one px -> F(1, 1) = 1. So F = 1 while J = 0.
    assert f_thresholds()[127].item() == 0.5
    curve = video_f_curve(pred, gt)
    assert curve[127].item() == pytest.approx(1.0, abs=ATOL)
    assert curve[128].item() == 0.0
    assert video_f(pred, gt) == pytest.approx(1.0, abs=ATOL)
    # Just above 0.5 is foreground: J = 1 / (1 + eps) = 1 - 2^-23.
    above = t([[float(np.nextafter(np.float32(0.5), np.float32(1))), 0], [0, 0]])
    assert video_j(above, gt) == 1 - 2**-23


def test_threshold_ge_at_exact_boundaries():
    th = f_thresholds()
    # The official thresholds: linspace(0, 1 - 1e-10, 255) in float32 = k/254 (within 1 ulp),
    # the last exactly 1.0.
    assert th.dtype == torch.float32 and th[0].item() == 0.0 and th[-1].item() == 1.0
    assert torch.allclose(th.double(), torch.arange(255).double() / 254, atol=1e-7, rtol=0)
    for k in (9, 100, 104, 253):  # 9 and 104 are indices where linspace != float32(k/254)
        # px A: foreground, prob 1.0.  px B: background, prob exactly th[k].  Others: 0.
        gt = t([[1, 0], [0, 0]])
        pred = torch.zeros(1, 2, 2)
        pred[0, 0, 0] = 1.0
        pred[0, 0, 1] = th[k]
        curve = video_f_curve(pred, gt)
        # th[j], 1 <= j <= k: B is counted (th[k] >= th[j]) -> P = 1/2, R = 1 -> 13/23.
        assert torch.allclose(curve[1:k + 1], torch.full((k,), F_HALF), atol=ATOL)
        # th[j], j > k: only A (1.0 >= 1.0 at the last threshold too) -> F = 1.
        assert torch.allclose(curve[k + 1:], torch.ones(254 - k), atol=ATOL)
        # th = 0: all 4 px -> P = 1/4 -> 13/43.
        assert curve[0].item() == pytest.approx(F_QUARTER, abs=ATOL)
    # A foreground px just below 1.0 misses the last threshold (1.0): P = 0 there -> F = 0.
    below = t([[float(np.nextafter(np.float32(1), np.float32(0))), 0], [0, 0]])
    curve = video_f_curve(below, t([[1, 0], [0, 0]]))
    assert curve[-1].item() == 0.0 and curve[-2].item() == pytest.approx(1.0, abs=ATOL)


# Two single-frame "views" with different best thresholds (used by the next two tests).
#   a: GT = px A; prob A = 0.3, B = 0.8 (B is background)
#      th in (0, 0.3]: {A, B} -> 13/23;  (0.3, 0.8]: {B} -> TP 0 -> 0;  > 0.8: none -> 0
#   b: GT = px A; prob A = 0.9, B = 0.6
#      th in (0, 0.6]: {A, B} -> 13/23;  (0.6, 0.9]: {A} -> 1;          > 0.9: none -> 0
#   th = 0 in both: all 4 px -> 13/43.
FRAME_A = ([[0.3, 0.8], [0, 0]], [[1, 0], [0, 0]])
FRAME_B = ([[0.9, 0.6], [0, 0]], [[1, 0], [0, 0]])


def test_max_over_thresholds_is_per_video_not_per_frame():
    pred = t(FRAME_A[0], FRAME_B[0])
    gt = t(FRAME_A[1], FRAME_B[1])
    # Mean curve: (0, 0.3]: (13/23 + 13/23)/2 = 13/23; (0.3, 0.6]: (0 + 13/23)/2;
    # (0.6, 0.9]: (0 + 1)/2 = 0.5; th = 0: 13/43. Max = 13/23 = 0.5652.
    # (Max per frame then mean would be (13/23 + 1)/2 = 0.7826.)
    assert video_f(pred, gt) == pytest.approx(F_HALF, abs=ATOL)
    assert video_f(pred[:1], gt[:1]) == pytest.approx(F_HALF, abs=ATOL)
    assert video_f(pred[1:], gt[1:]) == pytest.approx(1.0, abs=ATOL)


def test_dataset_f_takes_one_global_max():
    a, b = t(FRAME_A[0]), t(FRAME_B[0])
    ga, gb = t(FRAME_A[1]), t(FRAME_B[1])
    # Per video: F_a = 13/23, F_b = 1 -> mean 0.7826.  Dataset level: one mean curve over both
    # frames, one max -> 13/23 (the same as the 2-frame video above).
    assert avsbench_j_f([a, b], [ga, gb])[1] == pytest.approx((F_HALF + 1) / 2, abs=ATOL)
    assert dataset_level_j_f([a, b], [ga, gb])[1] == pytest.approx(F_HALF, abs=ATOL)


def test_mean_over_videos_not_frames():
    gt1 = t([[1, 0], [0, 0]])
    miss = torch.zeros_like(gt1)  # J = 0
    gt3 = t([[1, 1], [0, 0]], [[0, 1], [1, 0]], [[1, 1], [1, 1]])  # 3 frames, predicted exactly
    # Per video: J = (0 + 1) / 2 = 0.5.  A mean over the 4 frames would be 3/4.
    j, f = avsbench_j_f([miss, gt3], [gt1, gt3])
    assert j == 0.5
    # F: (13/43 + 1) / 2 (empty prediction still gets the th = 0 score).
    assert f == pytest.approx((F_QUARTER + 1) / 2, abs=ATOL)


def test_dataset_level_j_differs_on_unbalanced_videos():
    big = torch.ones(1, 3, 3)  # 9-px object, predicted exactly: I = 9, U = 9, J = 1
    small_gt = torch.zeros(1, 3, 3)
    small_gt[0, 1, 1] = 1  # 1-px object, missed: I = 0, U = 1, J = 0
    probs, gts = [big, torch.zeros(1, 3, 3)], [big, small_gt]
    j, _ = avsbench_j_f(probs, gts)
    dj, _ = dataset_level_j_f(probs, gts)
    assert j == 0.5  # (1 + 0) / 2
    assert dj == 0.9  # pooled (9 + 0) / (9 + 1)
    # Empty-GT frames: background IoU per video, but only their false positives when pooled.
    fp = torch.zeros(1, 2, 2)
    fp[0, 0, 0] = 1  # 1 false-positive px on an empty frame
    assert avsbench_j_f([fp], [torch.zeros(1, 2, 2)])[0] == 0.75  # 3 / 4
    assert dataset_level_j_f([fp], [torch.zeros(1, 2, 2)])[0] == 0.0  # 0 / 1
    assert dataset_level_j_f([torch.zeros(1, 2, 2)], [torch.zeros(1, 2, 2)]) == (1.0, 0.0)


# --------------------------------------------------------------------------- brute force


def _official_style(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    """The reference semantics written as plain loops (float32), for cross-checking."""
    fg = (pred > 0.5).float()
    n = pred.shape[0]
    ious = []
    for i in range(n):
        if gt[i].sum() == 0:
            ious.append(((1 - gt[i]) * (1 - fg[i])).sum() / (pred[i].numel() + 1e-7))
        else:
            ious.append((fg[i] * gt[i]).sum() / (torch.maximum(fg[i], gt[i]).sum() + 1e-7))
    j = (torch.stack(ious).sum() / n).item()
    ths = torch.linspace(0, 1 - 1e-10, 255)
    total, count, score = 0.0, 0, torch.zeros(255)
    for i in range(n):
        if gt[i].mean() == 0:
            continue
        prec, rec = torch.zeros(255), torch.zeros(255)
        for k in range(255):
            sel = (pred[i] >= ths[k]).float()
            tp = (sel * gt[i]).sum()
            prec[k], rec[k] = tp / (sel.sum() + 1e-20), tp / (gt[i].sum() + 1e-20)
        f = 1.3 * prec * rec / (0.3 * prec + rec)
        f[f != f] = 0
        total = total + f
        count += 1
        score = total / count
    return j, score.max().item()


def test_matches_brute_force_on_random_videos():
    gen = torch.Generator().manual_seed(0)
    th = f_thresholds()
    probs, gts = [], []
    for v in range(3):
        p = torch.rand(3, 6, 7, generator=gen)
        # Plant exact thresholds, exact 0.5, 0 and 1 to exercise every boundary.
        flat = p.view(-1)
        flat[:8] = th[torch.randint(0, 255, (8,), generator=gen)]
        flat[8:12] = torch.tensor([0.5, 0.0, 1.0, 127 / 254])
        g = (torch.rand(3, 6, 7, generator=gen) < 0.4).float()
        if v == 1:
            g[0] = 0  # one empty-GT frame
        probs.append(p)
        gts.append(g)
    js, fs = [], []
    for p, g in zip(probs, gts, strict=True):
        j_ref, f_ref = _official_style(p, g)
        assert video_j(p, g) == pytest.approx(j_ref, abs=1e-7)
        assert video_f(p, g) == pytest.approx(f_ref, abs=1e-7)
        js.append(j_ref)
        fs.append(f_ref)
    j, f = avsbench_j_f(probs, gts)
    assert j == pytest.approx(sum(js) / 3, abs=ATOL)
    assert f == pytest.approx(sum(fs) / 3, abs=ATOL)
    # float64 differs from the float32 reference only by rounding.
    j64, f64 = avsbench_j_f(probs, gts, dtype=torch.float64)
    assert (j64, f64) == pytest.approx((j, f), abs=ATOL)


def test_chunked_histogram_and_logits(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 6, generator=gen) * 3
    logits[0, 0, :3] = torch.tensor([0.0, 1e-9, -1e-9])  # sigmoid gives exactly 0.5
    g = (torch.rand(4, 5, 6, generator=gen) < 0.5).float()
    probs = torch.sigmoid(logits)
    whole = (video_j(probs, g), video_f(probs, g))
    monkeypatch.setattr(metrics, "_CHUNK_PIXELS", 31)  # one frame (30 px) per chunk
    assert (video_j(probs, g), video_f(probs, g)) == whole
    assert (video_j(logits, g, logits=True), video_f(logits, g, logits=True)) == whole
    assert whole == pytest.approx(_official_style(probs, g), abs=1e-7)


# --------------------------------------------------------------------------- API / validation


def test_report_fields_and_inputs():
    gt = t([[1, 1], [0, 0]])
    r = evaluate([gt, torch.zeros(1, 2, 2)], [gt.bool(), gt.to(torch.uint8)], names=["a", "b"])
    d = r.to_dict()
    json.dumps(d)
    assert d["protocol"] == "avsbench-per-video" and d["num_videos"] == 2 and d["num_frames"] == 2
    assert set(d["per_video"][0]) >= {"name", "J", "F", "frames"}
    assert [v["name"] for v in r.per_video] == ["a", "b"]
    assert d["J&F"] == pytest.approx((r.J + r.F) / 2)
    assert "J=" in r.summary()
    # A 4-D tensor (videos, T, H, W), numpy inputs and int/bool predictions are accepted.
    stacked = torch.stack([gt, gt])
    assert avsbench_j_f(stacked, stacked) == avsbench_j_f([gt, gt], [gt, gt])
    assert avsbench_j_f([gt.numpy()], [gt.numpy()]) == avsbench_j_f([gt], [gt])
    assert video_j(gt.bool(), gt) == 1.0
    # Streaming gives the same numbers.
    acc = MetricsAccumulator()
    acc.add(gt, gt, "a")
    acc.add(torch.zeros(1, 2, 2), gt, "b")
    assert acc.report().J == r.J and acc.report().F == r.F


def test_tiny_overshoot_is_accepted():
    gt = t([[1, 0], [0, 0]])
    p = t([[1 + 1e-7, -1e-7], [0, 0]])
    assert video_j(p, gt) == 1 - 2**-23
    assert video_f(p, gt) == pytest.approx(1.0, abs=ATOL)


@pytest.mark.parametrize(
    ("probs", "gts", "match"),
    [
        ([], [], "no videos"),
        ([torch.zeros(1, 2, 2)], [], "1 predicted videos but 0"),
        ([torch.zeros(1, 2, 2)], [torch.zeros(1, 2, 3)], "shape"),
        ([torch.zeros(2, 2)], [torch.zeros(2, 2)], r"\(T, H, W\)"),
        ([torch.full((1, 2, 2), 1.1)], [torch.zeros(1, 2, 2)], r"\[0, 1\]"),
        ([torch.full((1, 2, 2), -0.01)], [torch.zeros(1, 2, 2)], r"\[0, 1\]"),
        ([torch.full((1, 2, 2), float("nan"))], [torch.zeros(1, 2, 2)], "NaN"),
        ([torch.zeros(1, 2, 2)], [torch.full((1, 2, 2), 255.0)], "binary"),
        ([torch.zeros(1, 2, 2)], [torch.full((1, 2, 2), 0.5)], "binary"),
        ([torch.zeros(0, 2, 2)], [torch.zeros(0, 2, 2)], "empty video"),
    ],
)
def test_validation_errors(probs, gts, match):
    with pytest.raises(ValueError, match=match):
        avsbench_j_f(probs, gts)


def test_more_validation_errors():
    x = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="2 names for 1 videos"):
        evaluate([x], [x], names=["a", "b"])
    with pytest.raises(ValueError, match="dtype"):
        video_j(x, x, dtype=torch.float16)
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        video_j([[[0.0]]], x)
    with pytest.raises(ValueError, match="'clip7'"):
        evaluate([x], [x + 2], names=["clip7"])


# --------------------------------------------------------------------------- PNG folders


def _write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(folder / name)


def test_load_mask_dir_scaling_and_natural_order(tmp_path):
    d = tmp_path / "v"
    _write(d, "f_10.png", [[255, 0]])
    _write(d, "f_2.png", [[0, 255]])
    m = load_mask_dir(d)
    assert m.dtype == torch.float32 and m.shape == (2, 1, 2)
    assert m.tolist() == [[[0.0, 1.0]], [[1.0, 0.0]]]  # f_2 before f_10
    d01 = tmp_path / "v01"
    _write(d01, "a.png", [[1, 0]])
    assert load_mask_dir(d01).tolist() == [[[1.0, 0.0]]]
    assert torch.equal(load_mask_dir(d01, scale=255), torch.tensor([[[1 / 255, 0.0]]]))
    grey = tmp_path / "grey"
    _write(grey, "a.png", [[128, 127]])
    assert torch.equal(load_mask_dir(grey), torch.tensor([[[128 / 255, 127 / 255]]]))
    pal = tmp_path / "pal"  # AVSBench's save_mask: 0/255 grey converted to mode P
    pal.mkdir()
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("P").save(pal / "0.png")
    assert load_mask_dir(pal).tolist() == [[[0.0, 1.0]]]
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no PNG"):
        load_mask_dir(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError):
        load_mask_dir(tmp_path / "missing")


def test_evaluate_dirs_matches_tensor_evaluation(tmp_path):
    gen = torch.Generator().manual_seed(2)
    pred_root, gt_root = tmp_path / "pred", tmp_path / "gt"
    probs, gts = [], []
    for v in ("vid_b", "vid_a"):
        g = (torch.rand(2, 4, 5, generator=gen) < 0.5).to(torch.uint8)
        q = torch.randint(0, 256, (2, 4, 5), generator=gen, dtype=torch.uint8)
        for i in range(2):
            _write(gt_root / "cat" / v, f"{v}_{i + 1}.png", g[i].numpy() * 255)
            _write(pred_root / v, f"{v}_{i}.png", q[i].numpy())  # grey probabilities
        probs.append(q.float() / 255)
        gts.append(g)
    r = evaluate_dirs(pred_root, gt_root)  # flat preds vs category/video GT: matched by name
    assert [v["name"] for v in r.per_video] == ["vid_a", "vid_b"]
    expect = evaluate(probs[::-1], gts[::-1])
    got = (r.J, r.F)
    assert got == pytest.approx((expect.J, expect.F), abs=1e-7)
    assert r.per_video[0]["frames"] == 2


def test_evaluate_dirs_errors(tmp_path):
    pred_root, gt_root = tmp_path / "pred", tmp_path / "gt"
    _write(gt_root / "a", "0.png", [[255, 0]])
    _write(gt_root / "b", "0.png", [[255, 0]])
    _write(pred_root / "a", "0.png", [[255, 0]])
    _write(pred_root / "c", "0.png", [[255, 0]])
    with pytest.raises(ValueError, match=r"have no prediction folder: b;.*no ground truth: c"):
        evaluate_dirs(pred_root, gt_root)
    _write(pred_root / "b", "0.png", [[255, 0, 0]])
    (pred_root / "c" / "0.png").unlink()
    (pred_root / "c").rmdir()
    with pytest.raises(ValueError, match="ground-truth resolution"):
        evaluate_dirs(pred_root, gt_root)
    _write(pred_root / "b", "0.png", [[255, 0]])
    _write(pred_root / "b", "1.png", [[255, 0]])
    with pytest.raises(ValueError, match="2 predicted frames"):
        evaluate_dirs(pred_root, gt_root)
    (pred_root / "b" / "1.png").unlink()
    _write(gt_root / "b", "0.png", [[255, 100]])
    with pytest.raises(ValueError, match="not binary"):
        evaluate_dirs(pred_root, gt_root)
    _write(gt_root / "b", "0.png", [[255, 0]])
    r = evaluate_dirs(pred_root, gt_root)
    assert r.J == 1 - 2**-23 and r.num_videos == 2  # one-pixel hits
