"""``auralsam2 demo --refer``: the bundled Ref-AVS demo model on held-out synthetic clips,
queried with referring expressions, scored four ways that only a model which *reads* (which
shape), *looks* (is it there) and *listens* (does it sound) can pass.

Each held-out clip (seeds from :data:`REFER_SEED_BASE`, never trained on) shows two moving
shapes in named colours, each with its own sound (:mod:`auralsam2_core.training.synthetic`). Two
videos are made of it, with the same frames:

* ``both``: both shapes sound throughout. Queried for shape A ("the red disc"), for shape B,
  and for the third shape, which the clip does not show (a *null* expression).
* ``one``: only one shape sounds. Queried for the silent shape, for the sounding one and for
  the missing one.

Reported (``summary.json``):

* ``j_referred``: J of shape A on ``both`` (ground truth: A's visible mask, as A sounds);
* ``j_other_query``: J of shape B on the *same* video: the mask has to move to B;
* ``null_s``: AuralSAM2's S (foreground pixels / pixels, pooled) over the null queries, lower
  is better (``null_s_sqrt_per_clip``: the GeWu-Lab definition, for reference);
* ``silent_low_confidence_fraction``: frames of the ``one`` video queried for its *silent*
  (but visible) shape whose sounding probability is below 0.5;
* ``j_sounding_alone``: J of the sounding shape on ``one`` (for information).

Pass marks: :data:`REFER_PASS_MARKS` (``null_s`` is a ceiling, the others floors).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from auralsam2_core.training.datasets import HELDOUT_SEED_BASE

__all__ = ["REFER_DEMO_CLIP", "REFER_PASS_MARKS", "REFER_SEED_BASE", "ReferQuery",
           "ReferVideo", "predict_in_memory", "predict_with_engine", "quick_refer_checks",
           "refer_clips", "run_refer_demo", "score_refer"]

#: How the held-out clips are generated (make_clip keywords; the schedule is per video).
REFER_DEMO_CLIP = {"fps": 5.0, "seconds": 2.0, "num_objects": 2, "colours": "named"}
#: Held-out seeds of the referring demo (apart from the AVS demo's, which start at the base).
REFER_SEED_BASE = HELDOUT_SEED_BASE + 2_000_000
#: Thresholds of the demo protocol: floors, except ``null_s`` (a ceiling).
REFER_PASS_MARKS = {"j_referred": 0.8, "j_other_query": 0.75, "null_s": 0.02,
                    "silent_low_confidence_fraction": 0.95}
CEILINGS = ("null_s",)
#: The frames per model clip: Ref-AVS's T = 10, one clip per demo video.
REFER_CLIP_LEN = 10


@dataclass
class ReferQuery:
    kind: str  # "referred", "other", "null", "silent" or "alone"
    expression: str
    target: np.ndarray  # (T, H, W) bool ground truth


@dataclass
class ReferVideo:
    name: str  # e.g. "clip03_both"
    clip: object  # SyntheticClip
    queries: list[ReferQuery] = field(default_factory=list)


def refer_clips(n: int, size: int = 128, seed_base: int = REFER_SEED_BASE) -> list[ReferVideo]:
    """``n`` held-out clips x 2 videos (``both``, ``one``) with their queries (module
    docstring). Expressions name the shape, with its colour for every other clip."""
    from auralsam2_core.training.datasets import referred_target
    from auralsam2_core.training.synthetic import SHAPES, make_clip, referring_expression

    if seed_base < HELDOUT_SEED_BASE:
        raise ValueError(f"held-out seeds start at {HELDOUT_SEED_BASE}")
    videos = []
    for i in range(n):
        seed = seed_base + i
        rng = np.random.default_rng([seed, 3])
        both = make_clip(seed, size=(size, size), schedule="all", **REFER_DEMO_CLIP)
        one = make_clip(seed, size=(size, size), schedule="one", **REFER_DEMO_CLIP)
        colour = i % 2 == 1

        def say(clip, k, colour=colour, rng=rng):
            return referring_expression(clip.shapes[k], clip.colour_names[k] if colour
                                        else None, rng)

        missing = next(s for s in SHAPES if s not in both.shapes)
        null_expr = referring_expression(missing, "red" if colour else None, rng)
        sounder = int(np.flatnonzero(one.sounding.any(axis=1))[0])
        quiet = 1 - sounder
        videos.append(ReferVideo(f"clip{i:02d}_both", both, [
            ReferQuery("referred", say(both, 0), referred_target(both, 0)),
            ReferQuery("other", say(both, 1), referred_target(both, 1)),
            ReferQuery("null", null_expr, referred_target(both, None))]))
        videos.append(ReferVideo(f"clip{i:02d}_one", one, [
            ReferQuery("silent", say(one, quiet), referred_target(one, quiet)),
            ReferQuery("alone", say(one, sounder), referred_target(one, sounder)),
            ReferQuery("null", null_expr, referred_target(one, None))]))
    return videos


def score_refer(preds: dict[tuple[str, int], np.ndarray],
                probs: dict[tuple[str, int], list[float]], videos: list[ReferVideo]) -> dict:
    """Summary numbers from predicted masks ``(T, H, W)`` and per-frame sounding
    probabilities, keyed by ``(video name, query index)``."""
    from auralsam2_core.evaluation.metrics import NullSAccumulator, evaluate

    groups: dict[str, list[tuple[str, int, ReferQuery]]] = {}
    for v in videos:
        for k, q in enumerate(v.queries):
            groups.setdefault(q.kind, []).append((v.name, k, q))
    summary: dict = {}
    for kind, key in (("referred", "referred"), ("other", "other_query"),
                      ("alone", "sounding_alone")):
        if kind in groups:
            g = groups[kind]
            rep = evaluate([torch.from_numpy(preds[(n, k)].astype(np.float32)) for n, k, _ in g],
                           [torch.from_numpy(q.target.astype(np.float32)) for _, _, q in g],
                           [f"{n}:{kind}" for n, _, _ in g])
            summary[f"j_{key}"], summary[f"f_{key}"] = rep.J, rep.F
    if "null" in groups:
        acc = NullSAccumulator()
        for n, k, _ in groups["null"]:
            acc.add(preds[(n, k)].astype(np.float32), f"{n}:null")
        summary["null_s"] = acc.pooled()
        summary["null_s_sqrt_per_clip"] = acc.sqrt_per_clip()
        frames = np.concatenate([np.asarray(probs[(n, k)]) for n, k, _ in groups["null"]])
        summary["null_low_confidence_fraction"] = float((frames < 0.5).mean())
    if "silent" in groups:
        frames = np.concatenate([np.asarray(probs[(n, k)]) for n, k, _ in groups["silent"]])
        summary["silent_low_confidence_fraction"] = float((frames < 0.5).mean())
    summary["passed"] = {k: bool(summary[k] <= v if k in CEILINGS else summary[k] >= v)
                         for k, v in REFER_PASS_MARKS.items() if k in summary}
    per_query = []
    for v in videos:
        for k, q in enumerate(v.queries):
            p, pr = preds[(v.name, k)], np.asarray(probs[(v.name, k)])
            inter = np.logical_and(p, q.target).sum()
            union = np.logical_or(p, q.target).sum()
            per_query.append({"video": v.name, "query": k, "kind": q.kind,
                              "expression": q.expression, "seed": v.clip.seed,
                              "shapes": list(v.clip.shapes),
                              "colours": list(v.clip.colour_names or []),
                              "iou": float(inter / union) if union else 1.0,
                              "foreground_fraction": float(p.mean()),
                              "mean_sounding_prob": float(pr.mean()),
                              "low_confidence_frames": float((pr < 0.5).mean())})
    summary["per_query"] = per_query
    return summary


def predict_in_memory(model, videos: list[ReferVideo], size: int
                      ) -> tuple[dict, dict]:
    """Masks at ``size`` and sounding probabilities per ``(video, query)``, straight from the
    model (frames scaled and audio examples taken as the engine does; one model clip per
    video, its image features shared by the queries)."""
    from auralsam2_core.evaluation.demo import held_out
    from auralsam2_core.modeling.model import upsample_logits
    from auralsam2_core.training.datasets import clip_sample

    preds, probs = {}, {}
    with held_out(model):
        for v in videos:
            s = clip_sample(v.clip, model.image_size, name=v.name)
            outs = model.forward_queries(s.frames.to(model.device), s.log_mel.to(model.device),
                                         [q.expression for q in v.queries])
            for k, out in enumerate(outs):
                m = upsample_logits(out.mask_logits, (size, size))[:, 0] > 0
                preds[(v.name, k)] = m.cpu().numpy()
                probs[(v.name, k)] = out.object_score_logits.sigmoid().flatten().tolist()
    return preds, probs


def predict_with_engine(model, videos: list[ReferVideo], clips_dir: Path, results_dir: Path
                        ) -> tuple[dict, dict]:
    """What a user gets: each video's mp4 pre-labelled by the engine with its queries
    (``prelabel --query ...``), masks and probabilities read back from the results files
    (``results_dir/<video>.json``, version 2, one object per query)."""
    from auralsam2_core.inference.engine import PrelabelOptions
    from auralsam2_core.inference.prelabel_videos import OutputOptions, prelabel_videos
    from auralsam2_core.inference.results import frame_masks, read_results, track

    preds, probs = {}, {}
    for v in videos:
        exprs = tuple(q.expression for q in v.queries)
        [o] = prelabel_videos(model, [clips_dir / f"{v.name}.mp4"], results_dir,
                              PrelabelOptions(queries=exprs, clip_len=REFER_CLIP_LEN),
                              OutputOptions(overwrite=True), progress=False)
        if o.status == "failed":
            raise RuntimeError(f"pre-labelling failed: {o.video}: {o.error}")
        doc = read_results(o.results)
        for k, expr in enumerate(exprs):
            preds[(v.name, k)] = np.stack([m for _, m in frame_masks(doc, expr)])
            probs[(v.name, k)] = [f["sounding_prob"] for f in track(doc, expr)["frames"]]
    return preds, probs


def quick_refer_checks(model, n: int = 8, size: int = 96,
                       seed_base: int = REFER_SEED_BASE + 500_000) -> dict:
    """The demo's numbers in memory (no files, no engine), on other held-out clips than the
    demo's: used to watch training."""
    videos = refer_clips(n, size, seed_base)
    res = score_refer(*predict_in_memory(model, videos, size), videos)
    res.pop("per_query")
    return res


def run_refer_demo(out_dir: str | os.PathLike, *, n_clips: int = 6, size: int = 128,
                   model=None, device: str = "cpu", seed_base: int = REFER_SEED_BASE) -> dict:
    """Generate the held-out clips (``out/clips``, ``out/gt/<video>_q<k>/`` per query),
    pre-label them with ``model`` (default: the bundled Ref-AVS demo model) through the
    engine, as ``auralsam2 prelabel --query`` does (``out/results``), score, write
    ``out/summary.json``; returns the summary."""
    from PIL import Image

    from auralsam2_core.training.synthetic import clip_meta, write_clip

    if size % 2:
        raise ValueError("size must be even (H.264 4:2:0)")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        from auralsam2_core.modeling.build import build_refer_demo_model

        model = build_refer_demo_model(device=device)
    videos = refer_clips(n_clips, size, seed_base)
    for v in videos:
        write_clip(v.clip, out / "clips" / f"{v.name}.mp4")
        for k, q in enumerate(v.queries):
            gt = out / "gt" / f"{v.name}_q{k}"
            gt.mkdir(parents=True, exist_ok=True)
            for i, m in enumerate(q.target):
                Image.fromarray(m.astype(np.uint8) * 255).save(gt / f"{i:05d}.png")
            (gt / "meta.json").write_text(json.dumps(
                {**clip_meta(v.clip), "expression": q.expression, "kind": q.kind}, indent=1))
    t1 = time.perf_counter()
    preds, probs = predict_with_engine(model, videos, out / "clips", out / "results")
    t2 = time.perf_counter()
    summary = {"model": {k: v for k, v in model.meta.items() if k != "fuser_config"},
               "clips": n_clips, "size": size, "seed_base": seed_base,
               "clip_kwargs": REFER_DEMO_CLIP, "pass_marks": REFER_PASS_MARKS,
               "pass_mark_ceilings": list(CEILINGS), "path": "engine",
               **score_refer(preds, probs, videos)}
    summary["seconds"] = {"generate": round(t1 - t0, 2), "prelabel": round(t2 - t1, 2),
                          "total": round(time.perf_counter() - t0, 2)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
