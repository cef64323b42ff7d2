"""What the audio encoder costs, and how much batching or sharing its examples changes the masks
(issue #16, point 2: measure before changing anything).

The engine runs the audio encoder (VGGish) once per frame on a 0.96 s window centred on the
frame, although at 30 fps neighbouring windows are 33 ms apart. Variants, each run through the
real engine (``prelabel``) with the audio encoder's input or output swapped by a patch:

- ``batched``: every example of the video embedded in ONE call (same math, other batch size:
  exact up to floating-point reassociation);
- ``share_clip``: one example per clip (its middle frame's) for all ``T`` frames
  (an approximation: audio encoder cost / T);
- ``grid<N>ms``: window starts snapped to an N ms grid and identical windows embedded once
  (an approximation: at 30 fps a 100 ms grid shares one example between ~3 frames).

For each: the fraction of audio-encoder examples saved, the mask IoU against the faithful run
(mean and worst frame) and the largest change of a raw decoder logit. The effect on J is
measured with the bundled demo model (trained; tiny audio encoder) on held-out synthetic clips
with ground truth, faithful vs each approximation.

    .venv/bin/python benchmarks/bench_audio_sharing.py --size 256 --seconds 2 --demo-clips 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StageTimer, add_output_args, apply_quick, finish, make_video  # noqa: E402

from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.media import audio_track  # noqa: E402
from auralsam2_core.media.video import iter_frames  # noqa: E402
from auralsam2_core.modeling.build import build_auralsam2  # noqa: E402

GRID_MS = 100


@contextlib.contextmanager
def _patched_embed(model, embed):
    original = model.fuser.embed_audio
    model.fuser.embed_audio = lambda lm: embed(original, lm)
    try:
        yield
    finally:
        del model.fuser.embed_audio


@contextlib.contextmanager
def _snapped_starts(grid_hops: int):
    original = audio_track._example_starts

    def snapped(times):
        return torch.div(original(times) + grid_hops // 2, grid_hops,
                         rounding_mode="floor") * grid_hops

    audio_track._example_starts = snapped
    try:
        yield
    finally:
        audio_track._example_starts = original


class _Counter:
    def __init__(self) -> None:
        self.examples = 0
        self.frames = 0


def _faithful(counter):
    def embed(original, lm):
        counter.examples += len(lm)
        counter.frames += len(lm)
        return original(lm)
    return embed


def _batched(model, video, counter):
    """All examples of the video embedded in one call, handed out clip by clip."""
    times = [f.time for f in iter_frames(video, size=16)]
    every = audio_track.AudioTrack.from_file(video).examples_at(times).to(model.device)
    with torch.inference_mode(), model._autocast():
        all_emb = model.fuser.embed_audio(every)
    cursor = [0]
    counter.examples = len(every)

    def embed(original, lm):
        i = cursor[0]
        if not torch.equal(lm, every[i:i + len(lm)]):
            raise RuntimeError("the engine's audio examples differ from AudioTrack's")
        cursor[0] += len(lm)
        counter.frames += len(lm)
        return all_emb[i:i + len(lm)]
    return embed


def _share_clip(counter):
    def embed(original, lm):
        mid = len(lm) // 2
        counter.examples += 1
        counter.frames += len(lm)
        return original(lm[mid:mid + 1]).expand(len(lm), -1)
    return embed


def _dedupe(counter):
    """Identical examples (snapped windows) embedded once, also across clips."""
    cache: dict[bytes, torch.Tensor] = {}

    def embed(original, lm):
        counter.frames += len(lm)
        keys = [x.cpu().numpy().tobytes() for x in lm]
        new = [k for k in dict.fromkeys(keys) if k not in cache]
        if new:
            rows = [keys.index(k) for k in new]
            cache.update(zip(new, original(lm[rows]), strict=True))
            counter.examples += len(rows)
        out = torch.stack([cache[k] for k in keys])
        for k in list(cache)[:-16]:  # windows only move forward: keep the recent ones
            del cache[k]
        return out
    return embed


def run(model, video, opts, embed_factory=None, grid_hops: int | None = None) -> dict:
    """The engine over ``video``; per-frame masks, raw decoder logits, and timings."""
    counter = _Counter()
    embed = embed_factory(counter) if embed_factory else _faithful(counter)
    raw: list[torch.Tensor] = []
    original = model.track_features  # the engine's tracking of each clip

    def track_features(*a, **k):
        out = original(*a, **k)
        raw.append(out.raw_multimask_logits.float().cpu())
        return out

    model.track_features = track_features
    try:
        with _patched_embed(model, embed), (_snapped_starts(grid_hops) if grid_hops
                                            else contextlib.nullcontext()):
            t0 = time.perf_counter()
            masks = [r.mask for r in prelabel(model, video, opts)]
            seconds = time.perf_counter() - t0
    finally:
        del model.track_features
    return {"masks": np.stack(masks), "raw": torch.cat(raw), "seconds": seconds,
            "examples_per_frame": counter.examples / max(counter.frames, 1)}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def variants(model, video):
    grid = GRID_MS // 10  # 10 ms log-mel hops
    return {
        "batched": (lambda c: _batched(model, video, c), None),
        "share_clip": (_share_clip, None),
        f"grid{GRID_MS}ms": (_dedupe, grid),
    }


def demo_j(n_clips: int, size: int, opts) -> dict[str, float]:
    """Mean J of the bundled demo model on held-out synthetic clips, per variant."""
    from auralsam2_core.evaluation.demo import heldout_clips
    from auralsam2_core.evaluation.metrics import video_j
    from auralsam2_core.training.synthetic import write_clip

    model = build_auralsam2("bundled", device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="auralsam2-audio-share-"))
    clips = [c for c in heldout_clips(n_clips, size=size) if c.variant == "sounding"]
    j: dict[str, list[float]] = {}
    for c in clips:
        video = write_clip(c.clip, tmp / f"{c.name}.mp4")
        runs = {"faithful": run(model, video, opts)}
        for name, (factory, grid) in variants(model, video).items():
            runs[name] = run(model, video, opts, factory, grid)
        for name, r in runs.items():
            target = torch.from_numpy(c.target[:len(r["masks"])].astype(np.float32))
            j.setdefault(name, []).append(video_j(torch.from_numpy(
                r["masks"][:, :target.shape[1], :target.shape[2]].astype(np.float32)), target))
    return {k: float(np.mean(v)) for k, v in j.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--clip-len", type=int, default=5)
    p.add_argument("--fuser-config", help="JSON fuser config (default: the authors')")
    p.add_argument("--demo-clips", type=int, default=4,
                   help="held-out synthetic clips for the J of the demo model (0: skip)")
    p.add_argument("--demo-size", type=int, default=128)
    add_output_args(p)
    args = apply_quick(p, {"size": 64, "seconds": 0.4, "fps": 10, "demo_clips": 1,
                           "demo_size": 64, "fuser_config": '{"f_depths": [1, 1, 1]}'})
    torch.manual_seed(0)
    fuser_config = json.loads(args.fuser_config) if args.fuser_config else None
    model = build_auralsam2(args.config, image_size=args.size, fuser_config=fuser_config,
                            device="cpu")
    video = make_video(Path(tempfile.gettempdir()) / "auralsam2-bench" /
                       f"clip_{args.seconds:g}s_{args.fps}fps.mp4", args.seconds, args.fps)
    opts = PrelabelOptions(clip_len=args.clip_len)

    list(prelabel(model, video, opts))  # warm-up
    timer = StageTimer(model)
    with timer.attached():
        list(prelabel(model, video, opts))
    audio_share = timer.shares()["audio_encoder"]
    base = run(model, video, opts)
    print(f"config={args.config} size={args.size} frames={len(base['masks'])} "
          f"T={args.clip_len}: audio encoder {audio_share:.1%} of the engine's time, "
          f"{base['examples_per_frame']:.2f} examples per frame")
    ratios = {"audio_encoder_time_share": audio_share}
    notes = {"audio_encoder_time_share": "of the engine's time, faithful"}
    details = {}
    for name, (factory, grid) in variants(model, video).items():
        r = run(model, video, opts, factory, grid)
        iou = _iou(r["masks"], base["masks"])
        dlogit = float((r["raw"] - base["raw"]).abs().max())
        saved = 1 - r["examples_per_frame"] / base["examples_per_frame"]
        print(f"{name:11s}: examples saved {saved:.0%}, mask IoU vs faithful mean "
              f"{iou.mean():.4f} worst {iou.min():.4f}, max |raw logit change| {dlogit:.3g}, "
              f"engine time {r['seconds'] / base['seconds']:.2f}x faithful")
        ratios[f"{name}_mask_iou_mean"] = float(iou.mean())
        ratios[f"{name}_mask_iou_worst"] = float(iou.min())
        details[name] = {"examples_saved": saved, "max_abs_raw_logit_change": dlogit,
                         "time_vs_faithful": r["seconds"] / base["seconds"]}
    if args.demo_clips:
        j = demo_j(args.demo_clips, args.demo_size, opts)
        print("demo model J on held-out synthetic clips: "
              + ", ".join(f"{k} {v:.4f}" for k, v in j.items()))
        for k, v in j.items():
            if k != "faithful":
                ratios[f"demo_j_change_{k}"] = v - j["faithful"]
        details["demo_j"] = j
    finish(args, ratios, notes, variants=details)


if __name__ == "__main__":
    main()
