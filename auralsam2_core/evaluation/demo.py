"""``auralsam2 demo``: held-out synthetic clips, pre-labelled by the bundled model through the
engine, scored three ways that only a model which *listens* can pass.

Each held-out clip (seeds from :data:`~auralsam2_core.training.datasets.HELDOUT_SEED_BASE`, never
used in training; colours, sizes, motion and pitch random, so the sound can only be tied to the
*shape*) shows two moving shapes while one of them sounds throughout. Three videos per clip:

* ``sounding``: the clip as generated. Ground truth: the sounding object's visible mask.
  Reported: ``j_sounding`` / ``f_sounding`` (AVSBench J and F, mean over clips).
* ``swapped``: same frames, the audio replaced by the *other* object's sound
  (:func:`~auralsam2_core.training.synthetic.swap_audio`). Ground truth: the other object. Reported:
  ``j_swapped_audio`` / ``f_swapped_audio``. A model that ignores audio scores low on one of
  ``sounding`` / ``swapped``.
* ``silent``: same frames, no sound (:func:`~auralsam2_core.training.synthetic.silence`). Ground
truth
  empty. Reported: ``silent_low_confidence_fraction``, the fraction of frames whose sounding
  probability is below 0.5 (also ``j_silent``, the background IoU).

Pass marks (``PASS_MARKS``): J >= 0.85 sounding, J >= 0.8 swapped, >= 95 % of silent frames
below 0.5. Everything is written to ``out``: ``clips/*.mp4`` (+ ``gt/<video>/*.png``,
``meta.json``), ``results/<video>.json`` (the engine's results format) with overlay videos
and timelines, and ``summary.json``.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from auralsam2_core.training.datasets import HELDOUT_SEED_BASE

__all__ = ["DEMO_CLIP", "PASS_MARKS", "DemoClip", "heldout_clips", "quick_audio_checks",
           "run_demo", "score"]

#: How held-out demo clips are generated (make_clip keywords).
DEMO_CLIP = {"fps": 5.0, "seconds": 2.0, "num_objects": 2, "schedule": "one"}
#: Thresholds of the three audio checks.
PASS_MARKS = {"j_sounding": 0.85, "j_swapped_audio": 0.8,
              "silent_low_confidence_fraction": 0.95}
VARIANTS = ("sounding", "swapped", "silent")


@dataclass
class DemoClip:
    name: str  # e.g. "clip03_swapped"
    variant: str  # "sounding", "swapped" or "silent"
    clip: object  # SyntheticClip
    target: np.ndarray  # (T, H, W) bool ground truth


def heldout_clips(n: int, size: int = 128, seed_base: int = HELDOUT_SEED_BASE
                  ) -> list[DemoClip]:
    """``n`` held-out clips x 3 variants (sounding, swapped, silent)."""
    from auralsam2_core.training.synthetic import make_clip, silence, swap_audio

    if seed_base < HELDOUT_SEED_BASE:
        raise ValueError(f"held-out seeds start at {HELDOUT_SEED_BASE}")
    out = []
    for i in range(n):
        clip = make_clip(seed_base + i, size=(size, size), **DEMO_CLIP)
        src = int(np.flatnonzero(clip.sounding.any(axis=1))[0])
        other = 1 - src if len(clip.shapes) == 2 else (src + 1) % len(clip.shapes)
        swapped = swap_audio(clip, other)
        quiet = silence(clip)
        for variant, c in (("sounding", clip), ("swapped", swapped), ("silent", quiet)):
            out.append(DemoClip(f"clip{i:02d}_{variant}", variant, c, c.sounding_mask))
    return out


def score(preds: dict[str, np.ndarray], probs: dict[str, list[float]],
          clips: list[DemoClip]) -> dict:
    """Summary numbers from predicted masks ``(T, H, W)`` and per-frame sounding
    probabilities, keyed by clip name."""
    from auralsam2_core.evaluation.metrics import evaluate

    summary: dict = {}
    per_clip = []
    for variant in VARIANTS:
        group = [c for c in clips if c.variant == variant]
        if not group:
            continue
        p = [torch.from_numpy(preds[c.name].astype(np.float32)) for c in group]
        g = [torch.from_numpy(c.target.astype(np.float32)) for c in group]
        rep = evaluate(p, g, [c.name for c in group])
        key = {"sounding": "sounding", "swapped": "swapped_audio", "silent": "silent"}[variant]
        summary[f"j_{key}"] = rep.J
        if variant != "silent":
            summary[f"f_{key}"] = rep.F
        else:
            frames = np.concatenate([np.asarray(probs[c.name]) for c in group])
            summary["silent_low_confidence_fraction"] = float((frames < 0.5).mean())
        for c, row in zip(group, rep.per_video, strict=True):
            pr = np.asarray(probs[c.name])
            per_clip.append({"name": c.name, "variant": variant, "seed": c.clip.seed,
                             "shapes": list(c.clip.shapes),
                             "sounding_object": [s for s, on in zip(c.clip.shapes,
                                                                    c.clip.sounding.any(1),
                                                                    strict=True) if on],
                             "J": row["J"], "F": row["F"] if variant != "silent" else None,
                             "mean_sounding_prob": float(pr.mean()),
                             "low_confidence_frames": float((pr < 0.5).mean())})
    summary["passed"] = {k: bool(summary[k] >= v) for k, v in PASS_MARKS.items()
                         if k in summary}
    summary["per_clip"] = per_clip
    return summary


@contextmanager
def held_out(model):
    """The model in eval mode without gradients, put back as it was (checks during training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def quick_audio_checks(model, n: int = 8, size: int = 96, seed_base: int = HELDOUT_SEED_BASE
                       + 500_000, clip_len: int = 5) -> dict:
    """The demo's three numbers computed in memory (no files, no engine): frames are scaled
    and audio examples taken like the engine does. Used to watch training."""
    from auralsam2_core.modeling.model import upsample_logits
    from auralsam2_core.training.datasets import clip_sample

    clips = heldout_clips(n, size, seed_base)
    preds, probs = {}, {}
    with held_out(model):
        for c in clips:
            s = clip_sample(c.clip, model.image_size, name=c.name)
            state = model.new_state(num_frames=s.frames.shape[0])
            masks, pr = [], []
            for a in range(0, s.frames.shape[0], clip_len):
                out = model.forward_clip(s.frames[a:a + clip_len].to(model.device),
                                         s.log_mel[a:a + clip_len].to(model.device), state)
                masks.append(upsample_logits(out.mask_logits, (size, size))[:, 0] > 0)
                pr += out.object_score_logits.sigmoid().flatten().tolist()
            preds[c.name] = torch.cat(masks).cpu().numpy()
            probs[c.name] = pr
    res = score(preds, probs, clips)
    res.pop("per_clip")
    return res


def run_demo(out_dir: str | os.PathLike, *, n_clips: int = 6, size: int = 128, model=None,
             device: str = "cpu", seed_base: int = HELDOUT_SEED_BASE, overlay: bool = True,
             timeline: bool = True, progress: bool = False) -> dict:
    """Generate held-out clips, pre-label them with ``model`` (default: the bundled demo
    model) through :func:`auralsam2_core.inference.prelabel_videos.prelabel_videos`, score, write
    ``summary.json``; returns the summary."""
    from auralsam2_core.inference.engine import PrelabelOptions
    from auralsam2_core.inference.prelabel_videos import OutputOptions, prelabel_videos
    from auralsam2_core.inference.results import frame_masks, read_results, track
    from auralsam2_core.modeling.build import build_demo_model
    from auralsam2_core.training.synthetic import write_clip

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if size % 2:
        raise ValueError("size must be even (H.264 4:2:0)")
    model = model if model is not None else build_demo_model(device=device)
    clips = heldout_clips(n_clips, size, seed_base)
    videos = []
    for c in clips:
        videos.append(write_clip(c.clip, out / "clips" / f"{c.name}.mp4",
                                 gt_dir=out / "gt" / c.name))
    t1 = time.perf_counter()
    outcomes = prelabel_videos(model, videos, out / "results", PrelabelOptions(clip_len=5),
                               OutputOptions(overlay=overlay, timeline=timeline,
                                             overwrite=True), progress=progress)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise RuntimeError(f"pre-labelling failed: {failed[0].video}: {failed[0].error}")
    t2 = time.perf_counter()
    preds, probs = {}, {}
    for c, o in zip(clips, outcomes, strict=True):
        doc = read_results(o.results)
        preds[c.name] = np.stack([m for _, m in frame_masks(doc)])
        probs[c.name] = [f["sounding_prob"] for f in track(doc)["frames"]]
    summary = {"model": {k: v for k, v in model.meta.items() if k != "fuser_config"},
               "clips": n_clips, "size": size, "seed_base": seed_base,
               "clip_kwargs": DEMO_CLIP, "pass_marks": PASS_MARKS,
               **score(preds, probs, clips)}
    summary["seconds"] = {"generate": round(t1 - t0, 2), "prelabel": round(t2 - t1, 2),
                          "total": round(time.perf_counter() - t0, 2)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
