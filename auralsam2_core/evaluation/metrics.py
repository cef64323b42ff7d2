"""AVSBench J (mIoU) and F-score, computed the way the official AVSBench test script does.

Reference: OpenNLPLab/AVSBench ``avs_scripts/avs_s4/utils/utility.py`` (``mask_iou``,
``Eval_Fmeasure``) driven by ``avs_s4/test.py`` / ``avs_ms3/test.py`` with batch size 1, so
**each call scores one video** (see ``docs/metrics.md``). In short:

* **J** per frame: foreground is ``prob > 0.5`` (strict: 0.5 is background). With a non-empty
  ground truth, ``|P∩G| / (|P∪G| + 1e-7)``; with an empty ground truth the frame is *not*
  skipped but scores the background IoU ``#(¬P∧¬G) / (H·W + 1e-7)``. Per-video J is the mean
  over the video's frames.
* **F** per frame: 255 thresholds ``torch.linspace(0, 1 - 1e-10, 255)`` in float32 (``k/254``
  to within one ulp; the last one is exactly 1.0; th = 0 selects every pixel), a pixel counts
  when ``prob >= th``; ``P = TP/(#pred + 1e-20)``, ``R = TP/(#gt + 1e-20)``,
  ``F = 1.3·P·R / (0.3·P + R)``, NaN → 0. Frames with an empty ground truth are skipped; the
  F *curves* of the remaining frames are averaged and the **max over thresholds is taken per
  video**. A video whose ground truth is empty in every frame scores F = 0 and still counts.
* Dataset J and F are the plain means over videos (not over frames).

Arithmetic is float32 by default, in the same operation order as the reference, so the numbers
agree with the official script to float32 rounding (including its eps quirks, e.g. a one-pixel
hit scores ``1 - 2**-23``). ``dtype=torch.float64`` gives the "ideal" values instead (they differ
by ~1e-7). Inputs are probabilities; pass ``logits=True`` to apply ``torch.sigmoid`` first like
the reference does.

Thresholds are handled without materialising a ``(255, H, W)`` tensor: each pixel's threshold
index is found with ``searchsorted`` (the number of thresholds ``<=`` its probability), and the
per-threshold counts are reverse cumulative sums of a 256-bin histogram. This gives exactly the
counts of the ``>=`` comparisons, vectorised over all thresholds, with memory O(H·W).

:func:`dataset_level_j_f` is a different protocol used by some papers (pooled IoU); see there.

Ref-AVS (``docs/metrics.md``): :func:`refavs_j_f` groups clips into the
authors' 4-clip evaluation batches; the null split's S (fraction of pixels predicted as
foreground where nothing is referred; lower is better) comes in two definitions that are not
comparable — :func:`null_s_pooled` (AuralSAM2's published S) and :func:`null_s_sqrt_per_clip`
(the GeWu-Lab Ref-AVS baseline's); :class:`NullSAccumulator` gives both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "NUM_THRESHOLDS",
    "BETA2",
    "IOU_EPS",
    "MetricsReport",
    "MetricsAccumulator",
    "NullSAccumulator",
    "avsbench_j_f",
    "dataset_level_j_f",
    "evaluate",
    "evaluate_dirs",
    "f_thresholds",
    "load_mask_dir",
    "null_s_pooled",
    "null_s_sqrt_per_clip",
    "refavs_j_f",
    "video_f",
    "video_f_curve",
    "video_j",
]

#: Number of F-measure thresholds in the official code (``pr_num=255``).
NUM_THRESHOLDS = 255
#: beta^2 of the F-measure (weights precision over recall).
BETA2 = 0.3
#: eps added to the IoU denominator by ``mask_iou``.
IOU_EPS = 1e-7
#: eps added to the precision / recall denominators by ``_eval_pr``.
PR_EPS = 1e-20
#: Probabilities within this distance outside [0, 1] are accepted (and clamped).
PROB_TOLERANCE = 1e-6
#: Pixels per chunk when histogramming threshold indices (bounds the int64 index buffer).
_CHUNK_PIXELS = 1 << 22


def f_thresholds() -> torch.Tensor:
    """The 255 F-measure thresholds, built with the same call as the reference.

    ``torch.linspace`` differs from ``float32(k/254)`` by one ulp at ten indices; pixels lying
    exactly on a threshold are classified as the reference classifies them only with these.
    """
    return torch.linspace(0, 1 - 1e-10, NUM_THRESHOLDS, dtype=torch.float32)


# --------------------------------------------------------------------------- validation


def _label(index: int, name: str | None) -> str:
    return f"video {index}" + (f" ({name!r})" if name is not None else "")


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{what}: expected a torch.Tensor or numpy array, got {type(x).__name__}")


def _check_pred(prob: Any, what: str, logits: bool) -> torch.Tensor:
    """Validate one video's prediction ``(T, H, W)``; returns probabilities in [0, 1]."""
    p = _as_tensor(prob, f"{what} prediction")
    if p.dim() != 3:
        raise ValueError(f"{what}: prediction must be (T, H, W), got shape {tuple(p.shape)}")
    if p.numel() == 0:
        raise ValueError(f"{what}: empty video (shape {tuple(p.shape)})")
    if p.is_complex():
        raise ValueError(f"{what}: complex tensors are not supported")
    if not p.is_floating_point():
        p = p.to(torch.float32)
    if logits:
        if torch.isnan(p).any():
            raise ValueError(f"{what}: logits contain NaN")
        # The reference applies sigmoid in the logits' own dtype (float32 there).
        return torch.sigmoid(p)
    if torch.isnan(p).any():
        raise ValueError(f"{what}: probabilities contain NaN")
    lo, hi = p.min().item(), p.max().item()
    if lo < -PROB_TOLERANCE or hi > 1 + PROB_TOLERANCE:
        raise ValueError(f"{what}: probabilities must lie in [0, 1], found range "
                         f"[{lo:.6g}, {hi:.6g}] (pass logits=True for raw logits)")
    return p.clamp(0, 1)


def _check_prob(prob: Any, gt: Any, what: str, logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one video; returns (prob in [0,1], gt as bool) on the same device."""
    g = _as_tensor(gt, f"{what} ground truth")
    if g.is_complex():
        raise ValueError(f"{what}: complex tensors are not supported")
    p = _check_pred(prob, what, logits)
    if g.shape != p.shape:
        raise ValueError(f"{what}: prediction shape {tuple(p.shape)} != ground-truth shape "
                         f"{tuple(g.shape)}")
    g = g.to(p.device)
    if g.dtype != torch.bool:
        if g.is_floating_point() and torch.isnan(g).any():
            raise ValueError(f"{what}: ground truth contains NaN")
        bad = (g != 0) & (g != 1)
        if bad.any():
            vals = torch.unique(g[bad])[:5].tolist()
            raise ValueError(f"{what}: ground truth must be binary (0/1 or bool), found values "
                             f"{vals}; 0/255 masks must be divided by 255 first")
        g = g != 0
    return p, g


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")


def _normalise_inputs(probs: Any, gts: Any, names: Sequence[str] | None
                      ) -> tuple[list[Any], list[Any], list[str]]:
    def as_list(x: Any, what: str) -> list[Any]:
        if isinstance(x, torch.Tensor | np.ndarray):
            if x.ndim == 4:  # (videos, T, H, W)
                return list(x)
            raise ValueError(f"{what}: pass a list of (T, H, W) tensors or one "
                             f"(videos, T, H, W) tensor, got shape {tuple(x.shape)}")
        return list(x)

    p, g = as_list(probs, "probs"), as_list(gts, "gts")
    if not p:
        raise ValueError("no videos to evaluate (empty prediction list)")
    if len(p) != len(g):
        raise ValueError(f"{len(p)} predicted videos but {len(g)} ground-truth videos")
    if names is None:
        names = [f"video_{i}" for i in range(len(p))]
    else:
        names = [str(n) for n in names]
        if len(names) != len(p):
            raise ValueError(f"{len(names)} names for {len(p)} videos")
    return p, g, names


# --------------------------------------------------------------------------- per-frame math


@dataclass
class _VideoStats:
    """Everything the per-video and dataset-level metrics need from one video."""

    j: torch.Tensor  # () per-video J, computed in the working dtype
    ious: torch.Tensor  # (T,) per-frame IoU
    f_curves: torch.Tensor  # (T_valid, 255) per-frame F curves of non-empty-GT frames
    inter: int  # pooled foreground intersection (no background-IoU substitution)
    union: int  # pooled foreground union
    frames: int
    empty_gt_frames: int


def _threshold_counts(p: torch.Tensor, g: torch.Tensor, th: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame and threshold: #(p >= th) and #(p >= th and g), as int64 (T, 255)."""
    t = p.shape[0]
    cmp_dtype = torch.promote_types(p.dtype, torch.float32)  # what `p >= th` would promote to
    thc = th.to(device=p.device, dtype=cmp_dtype)
    p2 = p.reshape(t, -1).to(cmp_dtype)
    g2 = g.reshape(t, -1)
    bins = NUM_THRESHOLDS + 1
    hist_all = torch.zeros(t, bins, dtype=torch.int64, device=p.device)
    hist_pos = torch.zeros_like(hist_all)
    per_frame = p2.shape[1]
    step = max(1, _CHUNK_PIXELS // per_frame)
    for s in range(0, t, step):
        e = min(t, s + step)
        # idx = number of thresholds <= prob, so the pixel is selected at thresholds k < idx.
        idx = torch.searchsorted(thc, p2[s:e].contiguous(), right=True)
        idx = idx + torch.arange(e - s, device=p.device).unsqueeze(1) * bins
        hist_all[s:e] = torch.bincount(idx.flatten(), minlength=(e - s) * bins).view(-1, bins)
        hist_pos[s:e] = torch.bincount(idx[g2[s:e]], minlength=(e - s) * bins).view(-1, bins)
    # count at threshold k = sum of histogram bins k+1 .. 255
    n_pred = hist_all.flip(1).cumsum(1).flip(1)[:, 1:]
    n_tp = hist_pos.flip(1).cumsum(1).flip(1)[:, 1:]
    return n_pred, n_tp


def _video_stats(p: torch.Tensor, g: torch.Tensor, dtype: torch.dtype) -> _VideoStats:
    t, h, w = p.shape
    fg = p > 0.5  # strict, as `sigmoid(x) > 0.5` in the reference
    inter = (fg & g).sum(dim=(1, 2))
    union = (fg | g).sum(dim=(1, 2))
    n_gt = g.sum(dim=(1, 2))
    empty = n_gt == 0
    true_bg = (~fg & ~g).sum(dim=(1, 2))
    # Empty ground truth: the reference swaps in background intersection and H*W as union.
    num = torch.where(empty, true_bg, inter).to(dtype)
    den = torch.where(empty, torch.full_like(union, h * w), union).to(dtype)
    ious = num / (den + IOU_EPS)
    j = torch.sum(ious) / t

    valid = ~empty
    if valid.any():
        n_pred, n_tp = _threshold_counts(p[valid], g[valid], f_thresholds())
        tp = n_tp.to(dtype)
        prec = tp / (n_pred.to(dtype) + PR_EPS)
        rec = tp / (n_gt[valid].to(dtype).unsqueeze(1) + PR_EPS)
        f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
        f = torch.nan_to_num(f, nan=0.0)
    else:
        f = torch.zeros(0, NUM_THRESHOLDS, dtype=dtype, device=p.device)
    return _VideoStats(j=j, ious=ious, f_curves=f, inter=int(inter.sum()),
                       union=int(union.sum()), frames=t, empty_gt_frames=int(empty.sum()))


def _mean_curve(curves: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """Running-sum mean of F curves, frame by frame like the reference (float32 rounding)."""
    acc, n = None, 0
    for c in curves:
        acc = c.clone() if acc is None else acc + c
        n += 1
    return None if acc is None else acc / n


def _f_from_curves(curves: Iterable[torch.Tensor]) -> float:
    mean = _mean_curve(curves)
    return 0.0 if mean is None else float(mean.max().item())


# --------------------------------------------------------------------------- public per-video


def video_j(probs: Any, gt: Any, *, logits: bool = False,
            dtype: torch.dtype = torch.float32) -> float:
    """Official per-video J: mean over frames of the IoU of ``prob > 0.5`` (empty-GT frames
    score the background IoU). ``probs``/``gt``: ``(T, H, W)``."""
    _check_dtype(dtype)
    p, g = _check_prob(probs, gt, "video", logits)
    return float(_video_stats(p, g, dtype).j.item())


def video_f_curve(probs: Any, gt: Any, *, logits: bool = False,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean F curve ``(255,)`` over the video's non-empty-GT frames (zeros if none); its max
    is :func:`video_f`. Useful for plots and for checking threshold behaviour."""
    _check_dtype(dtype)
    p, g = _check_prob(probs, gt, "video", logits)
    mean = _mean_curve(_video_stats(p, g, dtype).f_curves)
    return torch.zeros(NUM_THRESHOLDS, dtype=dtype) if mean is None else mean.cpu()


def video_f(probs: Any, gt: Any, *, logits: bool = False,
            dtype: torch.dtype = torch.float32) -> float:
    """Official per-video F: max over the 255 thresholds of the frame-averaged F curve; 0.0 when
    every ground-truth frame is empty."""
    _check_dtype(dtype)
    p, g = _check_prob(probs, gt, "video", logits)
    return _f_from_curves(_video_stats(p, g, dtype).f_curves)


# --------------------------------------------------------------------------- dataset level


@dataclass
class MetricsReport:
    """Result of an evaluation: official per-video means plus per-video values.

    ``J``/``F``: AVSBench protocol (mean over videos). ``dataset_J``/``dataset_F``: the pooled
    protocol of :func:`dataset_level_j_f`, for comparison with papers that report it.
    ``per_video``: dicts ``{name, J, F, frames, empty_gt_frames}`` in evaluation order.
    """

    J: float
    F: float
    dataset_J: float
    dataset_F: float
    per_video: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_videos(self) -> int:
        return len(self.per_video)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (plain floats, ints and strings)."""
        return {
            "protocol": "avsbench-per-video",
            "J": self.J,
            "F": self.F,
            "J&F": (self.J + self.F) / 2,
            "num_videos": self.num_videos,
            "num_frames": sum(v["frames"] for v in self.per_video),
            "dataset_level": {"J": self.dataset_J, "F": self.dataset_F},
            "per_video": [dict(v) for v in self.per_video],
        }

    def summary(self) -> str:
        """One line for logs."""
        return (f"J={self.J:.4f} F={self.F:.4f} over {self.num_videos} videos "
                f"(dataset-level pooled: J={self.dataset_J:.4f} F={self.dataset_F:.4f})")


class MetricsAccumulator:
    """Streaming evaluation: ``add`` one video at a time, then ``report()``.

    Keeps only per-video numbers and F curves, so long test sets need not be held in memory.
    Aggregation replays the reference's ``AverageMeter``: per-video J values are summed as
    ``dtype`` tensors, per-video F values as Python floats.
    """

    def __init__(self, *, logits: bool = False, dtype: torch.dtype = torch.float32) -> None:
        _check_dtype(dtype)
        self.logits = logits
        self.dtype = dtype
        self._j_values: list[torch.Tensor] = []
        self._f_values: list[float] = []
        self._curves: list[torch.Tensor] = []
        self._inter = 0
        self._union = 0
        self.per_video: list[dict[str, Any]] = []

    def add(self, probs: Any, gt: Any, name: str | None = None) -> dict[str, Any]:
        """Score one video ``(T, H, W)``; returns its ``{name, J, F, frames, ...}`` row."""
        index = len(self.per_video)
        name = f"video_{index}" if name is None else str(name)
        p, g = _check_prob(probs, gt, _label(index, name), self.logits)
        st = _video_stats(p, g, self.dtype)
        f = _f_from_curves(st.f_curves)
        self._j_values.append(st.j.detach().cpu())
        self._f_values.append(f)
        self._curves.extend(st.f_curves.detach().cpu())
        self._inter += st.inter
        self._union += st.union
        row = {"name": name, "J": float(st.j.item()), "F": f, "frames": st.frames,
               "empty_gt_frames": st.empty_gt_frames}
        self.per_video.append(row)
        return row

    def report(self) -> MetricsReport:
        if not self.per_video:
            raise ValueError("no videos to evaluate")
        n = len(self.per_video)
        j_sum: Any = 0.0
        for j in self._j_values:  # AverageMeter: 0.0 + tensor + tensor ... in tensor dtype
            j_sum = j_sum + j
        f_sum = 0.0
        for f in self._f_values:
            f_sum += f
        return MetricsReport(
            J=float((j_sum / n).item()),
            F=f_sum / n,
            dataset_J=_pooled_iou(self._inter, self._union),
            dataset_F=_f_from_curves(self._curves),
            per_video=list(self.per_video),
        )


def _pooled_iou(inter: int, union: int) -> float:
    # Nothing annotated and nothing predicted anywhere: perfect agreement.
    return 1.0 if union == 0 else inter / union


def evaluate(probs: Any, gts: Any, names: Sequence[str] | None = None, *,
             logits: bool = False, dtype: torch.dtype = torch.float32) -> MetricsReport:
    """Score a list of videos (each ``(T, H, W)``) with the official AVSBench protocol.

    ``probs``: probabilities in [0, 1] (or logits with ``logits=True``); ``gts``: binary
    masks (bool or 0/1, any dtype). A single ``(videos, T, H, W)`` tensor is also accepted.
    """
    p_list, g_list, names = _normalise_inputs(probs, gts, names)
    acc = MetricsAccumulator(logits=logits, dtype=dtype)
    for p, g, n in zip(p_list, g_list, names, strict=True):
        acc.add(p, g, n)
    return acc.report()


def avsbench_j_f(probs: Any, gts: Any, *, logits: bool = False,
                 dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """``(J, F)`` as the official AVSBench S4/MS3 test script reports them (mean over videos)."""
    r = evaluate(probs, gts, logits=logits, dtype=dtype)
    return r.J, r.F


def dataset_level_j_f(probs: Any, gts: Any, *, logits: bool = False,
                      dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """``(J, F)`` pooled over all frames of all videos (a different, non-AVSBench protocol).

    Differences from :func:`avsbench_j_f`:

    * J = total foreground intersection / total foreground union over every frame of every
      video (no eps). Empty-GT frames are *not* given the background IoU: they add their
      false-positive pixels to the union and nothing to the intersection. Large objects and
      long videos weigh more, which typically inflates J. 0/0 (nothing anywhere) scores 1.0.
    * F = the official F computation applied to all frames at once (what ``Eval_Fmeasure``
      returns when called on the whole test set, or on a batch of several videos): the F
      curves of every non-empty-GT frame are averaged and one max over thresholds is taken
      for the dataset, instead of a max per video followed by a mean over videos.
    """
    p_list, g_list, names = _normalise_inputs(probs, gts, None)
    acc = MetricsAccumulator(logits=logits, dtype=dtype)
    for p, g, n in zip(p_list, g_list, names, strict=True):
        acc.add(p, g, n)
    r = acc.report()
    return r.dataset_J, r.dataset_F


# --------------------------------------------------------------------------- Ref-AVS


def refavs_j_f(probs: Any, gts: Any, *, clips_per_batch: int = 4, logits: bool = False,
               dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """``(J, F)`` as the AuralSAM2 Ref-AVS evaluation reports them (test_s / test_u).

    Clips ``(T, H, W)`` are taken in order in batches of ``clips_per_batch`` (the authors'
    loader batch: 4; the last batch may be shorter); each batch's frames are scored as one
    video with the AVSBench formulas (J: mean IoU over the batch's frames; F: max over
    thresholds of the batch's mean F curve), then the batch values are averaged.
    ``clips_per_batch=1`` is the per-clip protocol (:func:`avsbench_j_f`). The authors round
    the results to 5 decimals; these are not rounded.
    """
    if clips_per_batch < 1:
        raise ValueError(f"clips_per_batch must be >= 1, got {clips_per_batch}")
    p_list, g_list, _ = _normalise_inputs(probs, gts, None)
    batches_p, batches_g = [], []
    for s in range(0, len(p_list), clips_per_batch):
        ps = [_as_tensor(p, "prediction") for p in p_list[s:s + clips_per_batch]]
        gs = [_as_tensor(g, "ground truth") for g in g_list[s:s + clips_per_batch]]
        if len({tuple(p.shape[1:]) for p in ps}) > 1:
            raise ValueError(f"clips {s}..{s + len(ps) - 1} of one batch differ in size")
        batches_p.append(torch.cat(ps))
        batches_g.append(torch.cat(gs))
    return avsbench_j_f(batches_p, batches_g, logits=logits, dtype=dtype)


def _null_counts(pred: Any, what: str, logits: bool) -> tuple[int, int]:
    """Foreground pixels (``prob > 0.5``; from logits: ``sigmoid(logit) > 0.5`` in the
    logits' dtype, as the references) and all pixels of one clip."""
    p = _check_pred(pred, what, logits)
    return int((p > 0.5).sum()), p.numel()


class NullSAccumulator:
    """Ref-AVS null split (test_n): how much is segmented where the expression refers to
    nothing. ``add`` one clip's prediction ``(T, H, W)`` at a time; ``report()`` gives both S
    definitions. Lower is better; an all-empty prediction scores 0."""

    def __init__(self, *, logits: bool = False) -> None:
        self.logits = logits
        self.per_clip: list[dict[str, Any]] = []

    def add(self, pred: Any, name: str | None = None) -> dict[str, Any]:
        index = len(self.per_clip)
        name = f"clip_{index}" if name is None else str(name)
        fg, pixels = _null_counts(pred, f"clip {index} ({name!r})", self.logits)
        row = {"name": name, "foreground": fg, "pixels": pixels}
        self.per_clip.append(row)
        return row

    def pooled(self) -> float:
        """AuralSAM2's S (``utils/foreground_s.py``): Σ foreground pixels / Σ pixels over the
        whole split. (The authors accumulate the foreground count in float32; this sum is
        exact, so their value can differ in the 7th significant digit.)"""
        self._need_clips()
        return sum(r["foreground"] for r in self.per_clip) / sum(r["pixels"]
                                                                 for r in self.per_clip)

    def sqrt_per_clip(self, clips_per_group: int = 1) -> float:
        """The GeWu-Lab Ref-AVS baseline's S (``metric_s_for_null``): ``sqrt(fg / pixels)``
        of each call, averaged over calls; a call scores ``clips_per_group`` clips together
        (their test loader: one clip). Computed in float32 like the reference."""
        self._need_clips()
        if clips_per_group < 1:
            raise ValueError(f"clips_per_group must be >= 1, got {clips_per_group}")
        values = []
        for s in range(0, len(self.per_clip), clips_per_group):
            group = self.per_clip[s:s + clips_per_group]
            fg = torch.tensor(sum(r["foreground"] for r in group))
            values.append(float(torch.sqrt(fg / sum(r["pixels"] for r in group))))
        return sum(values) / len(values)

    def report(self) -> dict[str, Any]:
        """JSON-serialisable: both S definitions, clip and pixel counts."""
        return {"protocol": "refavs-null-s", "S_pooled": self.pooled(),
                "S_sqrt_per_clip": self.sqrt_per_clip(), "num_clips": len(self.per_clip),
                "pixels": sum(r["pixels"] for r in self.per_clip),
                "per_clip": [dict(r) for r in self.per_clip]}

    def _need_clips(self) -> None:
        if not self.per_clip:
            raise ValueError("no clips to evaluate")


def _null_accumulator(preds: Any, logits: bool) -> NullSAccumulator:
    if isinstance(preds, torch.Tensor | np.ndarray):
        if preds.ndim != 4:
            raise ValueError(f"preds: pass a list of (T, H, W) clips or one (clips, T, H, W) "
                             f"tensor, got shape {tuple(preds.shape)}")
        preds = list(preds)
    acc = NullSAccumulator(logits=logits)
    for p in preds:
        acc.add(p)
    return acc


def null_s_pooled(preds: Any, *, logits: bool = False) -> float:
    """AuralSAM2's Ref-AVS null-split S: Σ foreground pixels / Σ pixels over all clips
    (foreground: probability > 0.5). ``preds``: clips ``(T, H, W)`` or ``(clips, T, H, W)``."""
    return _null_accumulator(preds, logits).pooled()


def null_s_sqrt_per_clip(preds: Any, *, logits: bool = False, clips_per_group: int = 1
                         ) -> float:
    """The GeWu-Lab Ref-AVS baseline's null-split S: mean over clips (or groups of clips) of
    ``sqrt(foreground pixels / pixels)``. Not comparable with :func:`null_s_pooled`."""
    return _null_accumulator(preds, logits).sqrt_per_clip(clips_per_group)


# --------------------------------------------------------------------------- PNG folders


def _natural_key(name: str) -> list[Any]:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _png_files(folder: Path) -> list[Path]:
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == ".png"]
    return sorted(files, key=lambda f: _natural_key(f.name))


def _read_png(path: Path) -> tuple[np.ndarray, float]:
    """One mask as a 2-D integer array plus the value that means "1.0" for its bit depth."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":
            idx = np.asarray(im)
            # Palette indices 0/1 (e.g. VOC-style palettes) are the labels; otherwise use the
            # palette's grey level (AVSBench's save_mask writes grey palettes).
            if idx.max(initial=0) <= 1:
                return idx.astype(np.int64), 255.0
            return np.asarray(im.convert("L")).astype(np.int64), 255.0
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im).astype(np.int64), 65535.0
        if im.mode == "F":
            raise ValueError(f"{path}: floating-point PNG masks are not supported")
        return np.asarray(im.convert("L")).astype(np.int64), 255.0


def load_mask_dir(directory: str | Path, *, scale: float | None = None) -> torch.Tensor:
    """Read a folder of PNG masks into a float32 ``(T, H, W)`` tensor in [0, 1].

    Files are ``*.png`` sorted by name, numbers compared numerically (``f_2`` before ``f_10``).
    Colour images are converted to grey. Values are divided by ``scale``; by default a folder
    whose values are all 0/1 is read as a 0/1 mask, otherwise 8-bit values are divided by 255
    (16-bit by 65535), so 0/255 masks become 0/1 and grey probability maps become probabilities.
    Pass ``scale=255`` for grey probability maps that happen to contain only 0 and 1.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"mask folder not found: {folder}")
    files = _png_files(folder)
    if not files:
        raise ValueError(f"no PNG files in {folder}")
    arrays, full = [], []
    for f in files:
        a, top = _read_png(f)
        if arrays and a.shape != arrays[0].shape:
            raise ValueError(f"{f}: size {a.shape[::-1]} differs from {files[0].name} "
                             f"({arrays[0].shape[::-1]}) in the same folder")
        arrays.append(a)
        full.append(top)
    stack = np.stack(arrays)
    if scale is None:
        scale = 1.0 if stack.max(initial=0) <= 1 else max(full)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = torch.from_numpy(stack.astype(np.float64) / scale).to(torch.float32)
    if out.max() > 1 + PROB_TOLERANCE:
        raise ValueError(f"{folder}: values up to {stack.max()} exceed scale {scale}")
    return out


def _video_dirs(root: Path) -> dict[str, Path]:
    """Folders (at any depth, root included) that directly hold PNGs, keyed by relative path."""
    found: dict[str, Path] = {}
    for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if any(f.is_file() and f.suffix.lower() == ".png" for f in d.iterdir()):
            rel = d.relative_to(root).as_posix()
            found[root.name if rel == "." else rel] = d
    return found


def _by_basename(dirs: dict[str, Path]) -> dict[str, Path] | None:
    out: dict[str, Path] = {}
    for p in dirs.values():
        if p.name in out:
            return None
        out[p.name] = p
    return out


def _list_names(names: Iterable[str], limit: int = 10) -> str:
    names = sorted(names, key=_natural_key)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _match_videos(pred_root: Path, gt_root: Path) -> list[tuple[str, Path, Path]]:
    preds, gts = _video_dirs(pred_root), _video_dirs(gt_root)
    if not gts:
        raise ValueError(f"no video folders with PNG masks under {gt_root}")
    if not preds:
        raise ValueError(f"no video folders with PNG masks under {pred_root}")
    if preds.keys() != gts.keys():
        # e.g. predictions in <video>/ and ground truth in <category>/<video>/: match by the
        # video folder's own name when that is unambiguous on both sides.
        bp, bg = _by_basename(preds), _by_basename(gts)
        if bp is not None and bg is not None and bp.keys() == bg.keys():
            preds, gts = bp, bg
    missing_pred = gts.keys() - preds.keys()
    missing_gt = preds.keys() - gts.keys()
    if missing_pred or missing_gt:
        parts = []
        if missing_pred:
            parts.append(f"{len(missing_pred)} ground-truth video(s) have no prediction "
                         f"folder: {_list_names(missing_pred)}")
        if missing_gt:
            parts.append(f"{len(missing_gt)} prediction folder(s) have no ground truth: "
                         f"{_list_names(missing_gt)}")
        raise ValueError("prediction and ground-truth videos do not match; " + "; ".join(parts))
    return [(k, preds[k], gts[k]) for k in sorted(gts, key=_natural_key)]


def _iter_dir_pairs(pairs: list[tuple[str, Path, Path]], pred_scale: float | None
                    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    for name, pdir, gdir in pairs:
        pred = load_mask_dir(pdir, scale=pred_scale)
        gt = load_mask_dir(gdir)
        if not bool(((gt == 0) | (gt == 1)).all()):
            raise ValueError(f"ground truth of {name!r} ({gdir}) is not binary: expected "
                             "0/255 or 0/1 masks")
        if pred.shape[0] != gt.shape[0]:
            raise ValueError(f"video {name!r}: {pred.shape[0]} predicted frames ({pdir}) but "
                             f"{gt.shape[0]} ground-truth frames ({gdir})")
        if pred.shape != gt.shape:
            raise ValueError(f"video {name!r}: prediction size {tuple(pred.shape[1:])} != "
                             f"ground-truth size {tuple(gt.shape[1:])} (H, W); save predictions "
                             "at the ground-truth resolution")
        yield name, pred, gt


def evaluate_dirs(pred_root: str | Path, gt_root: str | Path, *,
                  pred_scale: float | None = None) -> MetricsReport:
    """Score PNG folders: each root holds one sub-folder of PNG frames per video.

    Videos are matched by folder path relative to the root (``video/`` or
    ``category/video/``), or by the video folder's own name when the layouts differ and names
    are unique. Frames are paired in name order (counts must agree). Ground truth must be
    0/255 or 0/1; predictions may be binary masks or grey probability maps (value/255), see
    :func:`load_mask_dir` and its ``scale``. Raises ``ValueError`` listing videos missing on
    either side.
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    for r in (pred_root, gt_root):
        if not r.is_dir():
            raise FileNotFoundError(f"folder not found: {r}")
    pairs = _match_videos(pred_root, gt_root)
    acc = MetricsAccumulator()
    for name, pred, gt in _iter_dir_pairs(pairs, pred_scale):
        acc.add(pred, gt, name)
    return acc.report()
