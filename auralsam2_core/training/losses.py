"""AuralSAM2's training losses: SAM2's mask losses on the best of 3 candidates, plus the
audio-guided contrastive loss on the fuser's projection heads.

Mask losses (per frame, as SAM2's own training computes them, summed over frames)
---------------------------------------------------------------------------------
* The decoder's **raw** multimask logits (``ClipOutput.raw_multimask_logits``: before SAM2's
  ``-1024`` fill of frames whose object score is negative, which would cut the gradient) are
  upsampled bilinearly (``align_corners=False``, as SAM2 does) from ``image_size / 4`` to the
  ground truth's size. The ground truth is never resized, so a mask is scored at exactly the
  resolution it was drawn at (the authors score at 1024, their input size; pass ground truth
  at the model's ``image_size`` to do the same).
* Per candidate ``m``: sigmoid focal loss (alpha 0.25, gamma 2, mean over pixels) and Dice
  (``1 - (2|P.G| + 1) / (|P| + |G| + 1)`` on probabilities). The **best** candidate is the one
  with the lowest ``20 * focal + dice`` (chosen without gradient); only it is trained, so the
  three candidates can specialise (SAM2's multimask training).
* IoU prediction: L1 between the decoder's predicted IoU of each candidate and its actual
  IoU (``logit > 0`` vs ground truth; the target is not differentiated), averaged over the
  three candidates (``supervise_all_iou``, as in the authors' training config and SAM2.1's;
  ``supervise_all_iou=False`` scores the best candidate only). This is what teaches the IoU
  head to *rank* the candidates, i.e. what ``iou_select`` picks at inference: with the mask
  losses on the best candidate only, the three candidates may well be "object A", "object
  B" and "both", and only the IoU head (which sees the audio through the decoder's tokens)
  can then tell which one is sounding. ``iou_loss="bce"`` (our option, used for the bundled
  demo model) replaces L1 by binary cross-entropy on the (sigmoid) predicted IoU: from
  random weights most candidates have an actual IoU of 0, the sigmoid saturates near 0
  under L1 (whose gradient then vanishes) and the head never learns to rank; BCE's gradient
  w.r.t. the head's logit is ``p - IoU``, which does not vanish.
* Object score: binary cross-entropy of the object-score logit against "the ground truth is
  not empty" (here: the sounding object is visible). This is what SAM2's focal loss with
  ``alpha = -1, gamma = 0`` reduces to.
* **Frames with an empty ground truth** (silence, or the sounding object out of view) get
  *only* the object-score loss: there is no mask to learn, and SAM2 replaces such frames'
  masks by ``-1024`` at inference anyway (SAM2's convention: mask, Dice and IoU terms are
  multiplied by "object present").
* Frames without annotation (``valid = False``, e.g. AVSBench S4 train frames 2-5) get no
  loss at all; they still pass through the model, so memory carries over.

Weights: 20 focal + 1 Dice + 1 IoU + 1 object score (+ 1 contrastive), as published.

Audio-guided contrastive loss
-----------------------------
See :func:`contrastive_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "LossWeights",
    "contrastive_loss",
    "dice_loss",
    "mask_iou",
    "sample_contrastive_pixels",
    "sam2_mask_losses",
    "sigmoid_focal_loss",
    "total_loss",
]


@dataclass(frozen=True)
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object_score: float = 1.0
    contrastive: float = 1.0
    supervise_all_iou: bool = True
    iou_loss: str = "l1"  # "l1" (published) or "bce" (demo model, see the module docstring)

    def __post_init__(self) -> None:
        if self.iou_loss not in ("l1", "bce"):
            raise ValueError(f"iou_loss must be 'l1' or 'bce', got {self.iou_loss!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal loss per mask: ``(..., H, W)`` logits and 0/1 targets -> ``(...)`` (mean over
    pixels). ``alpha < 0`` disables the class weighting (then ``gamma = 0`` is plain BCE)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss per mask on probabilities (smooth 1, as SAM2): ``(..., H, W)`` -> ``(...)``."""
    prob = logits.sigmoid().flatten(-2)
    t = targets.flatten(-2)
    return 1 - (2 * (prob * t).sum(-1) + 1) / (prob.sum(-1) + t.sum(-1) + 1)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Actual IoU of ``logits > 0`` with the 0/1 ``targets`` per mask (0 when both are empty,
    as SAM2's ``iou_loss``: the union is clamped to 1)."""
    pred = (logits > 0).flatten(-2)
    gt = (targets > 0).flatten(-2)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return inter / union.clamp(min=1.0)


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.float()
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def sam2_mask_losses(raw_multimask_logits: torch.Tensor, ious: torch.Tensor,
                     object_score_logits: torch.Tensor, gt: torch.Tensor,
                     valid: torch.Tensor | None = None,
                     weights: LossWeights = LossWeights(), candidate: str = "best"
                     ) -> dict[str, torch.Tensor]:
    """SAM2's per-frame losses, summed over the clip's frames (see the module docstring).

    ``raw_multimask_logits``: ``(T, M, h, w)``; ``ious``: ``(T, M)``; ``object_score_logits``:
    ``(T, 1)``; ``gt``: ``(T, H, W)`` 0/1; ``valid``: ``(T,)`` bool, frames with annotation.
    ``candidate``: ``"best"`` (SAM2's and the authors' training) or ``"first"``.
    Returns weighted ``focal``, ``dice``, ``iou``, ``object_score`` terms, their sum ``loss``,
    and ``best`` (``(T,)`` index of the trained candidate, no gradient).
    """
    if candidate not in ("best", "first"):
        raise ValueError(f"candidate must be 'best' or 'first', got {candidate!r}")
    t_len, m = raw_multimask_logits.shape[:2]
    if gt.dim() != 3 or gt.shape[0] != t_len:
        raise ValueError(f"gt must be (T={t_len}, H, W), got {tuple(gt.shape)}")
    if valid is None:
        valid = torch.ones(t_len, dtype=torch.bool, device=gt.device)
    target = (gt > 0.5).float()
    logits = _upsample(raw_multimask_logits, tuple(gt.shape[-2:]))  # (T, M, H, W)
    targets = target[:, None].expand_as(logits)
    focal = sigmoid_focal_loss(logits, targets)  # (T, M)
    dice = dice_loss(logits, targets)
    with torch.no_grad():
        best = torch.argmin(weights.focal * focal + weights.dice * dice, dim=-1)  # (T,)
        if candidate == "first":
            best = torch.zeros_like(best)
        actual_iou = mask_iou(logits, targets)
    rows = torch.arange(t_len, device=logits.device)
    present = target.flatten(1).any(-1)  # (T,) the sounding object is in view
    has_mask = (present & valid).float()
    focal_best = focal[rows, best]
    dice_best = dice[rows, best]
    if weights.iou_loss == "bce":
        p = ious.float().clamp(1e-6, 1 - 1e-6)
        iou_err = F.binary_cross_entropy(p, actual_iou, reduction="none")  # (T, M)
    else:
        iou_err = (ious.float() - actual_iou).abs()  # (T, M)
    iou_best = iou_err.mean(-1) if weights.supervise_all_iou else iou_err[rows, best]
    obj = F.binary_cross_entropy_with_logits(object_score_logits.float().reshape(t_len),
                                             present.float(), reduction="none")
    out = {
        "focal": weights.focal * (focal_best * has_mask).sum(),
        "dice": weights.dice * (dice_best * has_mask).sum(),
        "iou": weights.iou * (iou_best * has_mask).sum(),
        "object_score": weights.object_score * (obj * valid.float()).sum(),
    }
    out["loss"] = out["focal"] + out["dice"] + out["iou"] + out["object_score"]
    out["best"] = best
    return out


def _pixel_labels(gt: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W) 0/1 -> (T, h*w) long labels: a cell is "sounding" when >= half of it is."""
    area = F.interpolate(gt[:, None].float(), size=size, mode="area")
    return (area[:, 0] >= 0.5).flatten(1).long()


def sample_contrastive_pixels(similarity: torch.Tensor, labels: torch.Tensor, audio_label: int,
                              per_class: int = 128, generator: torch.Generator | None = None
                              ) -> torch.Tensor:
    """Indices (into the frame's pixels) of the pixels one frame/level contributes.

    Per class ``c`` present in ``labels``: if the class has at most ``2 * per_class`` pixels,
    all of them; otherwise the ``per_class`` **hardest** ones plus ``per_class`` drawn at
    random from the rest ("easy"). Hardness is judged on each pixel's similarity to the
    frame's audio embedding: for a positive pixel (``c == audio_label``) low similarity is
    hard, for a negative one high similarity is hard. Indices always refer to the original
    pixel positions, so the labels gathered with them are the right ones.
    """
    chosen = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        if idx.numel() <= 2 * per_class:
            chosen.append(idx)
            continue
        hardness = -similarity[idx] if c == audio_label else similarity[idx]
        order = torch.argsort(hardness, descending=True, stable=True)
        hard, rest = idx[order[:per_class]], idx[order[per_class:]]
        pick = torch.randperm(rest.numel(), generator=generator)[:per_class].to(rest.device)
        chosen += [hard, rest[pick]]
    return torch.cat(chosen) if chosen else labels.new_zeros(0)


def contrastive_loss(pixel_embeddings: Sequence[torch.Tensor],
                     audio_embeddings: Sequence[torch.Tensor], gt: torch.Tensor,
                     valid: torch.Tensor | None = None, *, temperature: float = 0.1,
                     per_class: int = 128, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Audio-guided contrastive loss on the fuser's projections (``ClipOutput.projections``).

    ``pixel_embeddings``: per level ``(T, d, h, w)``; ``audio_embeddings``: per level
    ``(T, d, 1)`` (or ``(T, d)``), all L2-normalised (the projection heads do that); ``gt``:
    ``(T, H, W)`` 0/1.

    Labels: a pixel (cell of the level's ``h x w`` grid) is 1 when at least half of it is
    sounding-object ground truth, else 0; a frame's audio embedding is 1 when the frame's
    ground truth is not empty (the frame sounds and the source is visible), else 0.
    Per frame, level and class, up to ``per_class`` hard + ``per_class`` easy pixels are
    sampled (:func:`sample_contrastive_pixels`). Each sampled pixel is an anchor; its
    **positives** are the audio embeddings (every level) **of its own frame** with the same
    label; its **negatives** are all sampled pixels and audio embeddings of the clip with a
    different label. Per positive, ``-log(e^{s+} / (e^{s+} + sum e^{s-}))`` with ``s`` the
    cosine similarity over ``temperature``; averaged over the anchor's positives, then over
    anchors that have one.

    Where and why this differs from the authors' published code (same idea, sampling fixed):

    * *Label indexing*: their sampler gathers labels with indices taken *within* the hard /
      easy subsets (``masks[hard_chosen_indices]``), i.e. the labels of unrelated pixels; we
      keep each sampled pixel's own label.
    * *Easy/hard split*: theirs compares the ground truth with bilinearly upsampled mask
      **logits** (``masks != predictions``), which almost never equal 0/1 exactly, so nearly
      every pixel counts as "hard"; we rank pixels by their similarity to the frame's audio.
    * *Pairing*: all their audio labels carry the same offset, so a sounding pixel is pulled
      towards the sounding audio of *every* frame of the batch; we pair a pixel only with its
      own frame's audio (in a clip where two objects take turns, the other frame's sound is
      not this object's). Negatives stay clip-wide, as theirs.
    * Their cap on the total number of pixels truncates at one random index
      (``randperm(n)[limit]``); we need no cap (at most ``2 * per_class`` per frame, level
      and class). Anchors without a positive are left out of the mean rather than counted
      as 0.
    """
    t_len = gt.shape[0]
    if valid is None:
        valid = torch.ones(t_len, dtype=torch.bool, device=gt.device)
    audio_label = (gt > 0.5).flatten(1).any(-1).long()  # (T,)
    anchors, a_lab, a_frame = [], [], []
    audios, au_lab, au_frame = [], [], []
    for emb, aud in zip(pixel_embeddings, audio_embeddings, strict=True):
        t, d, h, w = emb.shape
        labels = _pixel_labels(gt, (h, w))  # (T, h*w)
        pix = emb.float().flatten(2).transpose(1, 2)  # (T, h*w, d)
        aud = aud.float().reshape(t, d)
        for f in range(t):
            if not bool(valid[f]):
                continue
            lab_f = int(audio_label[f])
            sim = (pix[f].detach() @ aud[f].detach())  # (h*w,)
            idx = sample_contrastive_pixels(sim, labels[f], lab_f, per_class, generator)
            anchors.append(pix[f, idx])
            a_lab.append(labels[f, idx])
            a_frame.append(torch.full_like(idx, f))
            audios.append(aud[f:f + 1])
            au_lab.append(audio_label[f:f + 1])
            au_frame.append(torch.full((1,), f, dtype=torch.long, device=gt.device))
    if not anchors:
        return sum(e.sum() for e in pixel_embeddings) * 0.0
    anc = torch.cat(anchors)
    contrast = torch.cat([anc, torch.cat(audios)])
    lab = torch.cat(a_lab)
    c_lab = torch.cat([lab, torch.cat(au_lab)])
    n_pix = anc.shape[0]
    c_frame = torch.cat([torch.cat(a_frame), torch.cat(au_frame)])
    frame = c_frame[:n_pix]
    logits = anc @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    neg = lab[:, None] != c_lab[None, :]
    pos = ~neg & (frame[:, None] == c_frame[None, :])
    pos[:, :n_pix] = False  # positives are pixel <-> audio pairs only
    # log(e^{s+} + sum e^{s-}) in log space: the Ref-AVS visual projections are normalised
    # over positions, not channels (fuser.TokenProjectionHead), so similarities can span more
    # than exp() resolves in float32; an anchor without negatives gets log_prob 0, not NaN.
    log_neg = torch.logsumexp(logits.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - torch.logaddexp(logits, log_neg)
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    per_anchor = log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has]
    return -per_anchor.mean()


def total_loss(out, gt: torch.Tensor, valid: torch.Tensor | None = None,
               weights: LossWeights = LossWeights(), *, generator: torch.Generator | None = None,
               candidate: str = "best") -> dict[str, torch.Tensor]:
    """All of AuralSAM2's losses for one clip's :class:`~auralsam2_core.modeling.model.ClipOutput`
    (contrastive term only when the output carries projections and its weight is > 0)."""
    terms = sam2_mask_losses(out.raw_multimask_logits, out.ious, out.object_score_logits, gt,
                             valid, weights, candidate)
    if weights.contrastive > 0 and out.projections is not None:
        c = contrastive_loss(out.projections[0], out.projections[1], gt, valid,
                             generator=generator)
        terms["contrastive"] = weights.contrastive * c
        terms["loss"] = terms["loss"] + terms["contrastive"]
    return terms
