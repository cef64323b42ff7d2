"""Refinement latency (issue #16, P4): an annotator's click on a pre-labelled video, with and
without the first pass's kept features (auralsam2_core.inference.feature_cache), vs a first-pass
frame.

One run: the first pass over the video fills a FeatureCache (timed; its time per frame is the
unit), then a box on a frame in the video's first third is re-propagated over ``--refine-frames``
frames as the Label Studio backend does (fuser clips from frame 0), computing the features
again and taking them from the cache, alternately ``--repeats`` times (fastest kept). Both
refinements must give identical results (checked). Prints:

- ``click_cached_over_frame`` / ``click_uncached_over_frame``: a whole click (all re-propagated
  frames) / one first-pass frame;
- ``cached_frame_over_frame``: a re-propagated frame from the cache / a first-pass frame (SAM2's
  tracking only: memory attention, prompted mask decoder, memory encoder);
- ``click_own_frame_over_frame``: a click that re-labels its own frame only
  (``AURALSAM2_LS_REFINE_FRAMES=1``), from the cache / a first-pass frame (target <= 0.05);
- ``uncached_over_cached``: the speed-up of a click.

``--query TEXT``: the Ref-AVS variant (random weights, a tiny random text encoder: the text is
encoded once per run, outside what a click costs), first pass and click with that query (the
cache keeps features per query).

    .venv/bin/python benchmarks/bench_refine.py --config sam2.1_hiera_t --size 256 --frames 60
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_args, apply_quick, finish, make_video, sync  # noqa: E402

from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.inference.feature_cache import FeatureCache  # noqa: E402
from auralsam2_core.media.video import probe  # noqa: E402
from auralsam2_core.modeling.build import build_auralsam2  # noqa: E402
from auralsam2_core.modeling.model import PointPrompt  # noqa: E402


def timed_run(model, video, opts, prompts=None, cache=None) -> tuple[float, list]:
    sync(model.device)
    t0 = time.perf_counter()
    out = list(prelabel(model, video, opts, prompts=prompts, cache=cache))
    sync(model.device)
    return time.perf_counter() - t0, out


def same(a: list, b: list) -> bool:
    return [(r.index, r.mask.tobytes(), r.sounding_prob, r.predicted_iou) for r in a] == \
        [(r.index, r.mask.tobytes(), r.sounding_prob, r.predicted_iou) for r in b]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=60, help="video length")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--refine-frames", type=int, default=50,
                   help="frames a click re-propagates (AURALSAM2_LS_REFINE_FRAMES)")
    p.add_argument("--clip-len", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cache-mb", type=float, default=1024.0)
    p.add_argument("--fuser-config", help="JSON fuser config (default: the authors')")
    p.add_argument("--device", default="auto")
    p.add_argument("--query", help="Ref-AVS: the query of the first pass and the click")
    add_output_args(p)
    args = apply_quick(p, {"size": 64, "frames": 12, "fps": 10, "refine_frames": 6,
                           "clip_len": 3, "repeats": 1,
                           "fuser_config": '{"f_depths": [1, 1, 1]}'})

    torch.manual_seed(0)
    fuser_config = json.loads(args.fuser_config) if args.fuser_config else None
    refer = {}
    if args.query:
        from auralsam2_core.modeling.text_encoder import tiny_random_text_encoder

        refer = {"variant": "refavs", "text_encoder": tiny_random_text_encoder(seed=0)}
    model = build_auralsam2(args.config, image_size=args.size, fuser_config=fuser_config,
                            device=args.device, **refer)
    queries = (args.query,) if args.query else ()
    tmp = Path(tempfile.gettempdir()) / "auralsam2-bench"
    video = make_video(tmp / f"clip_{args.frames}f_{args.fps}fps.mp4", args.frames / args.fps,
                       args.fps)
    info = probe(video)
    t_len = args.clip_len
    # A click mid-clip in the first third, re-propagating up to refine_frames frames.
    frame = min(info.num_frames // 3 // t_len * t_len + t_len // 2, info.num_frames - 1)
    stop = min(frame + args.refine_frames, info.num_frames)
    opts = PrelabelOptions(clip_len=t_len, start_frame=frame, stop_frame=stop, clip_origin=0,
                           queries=queries)
    box = PointPrompt.box(info.width * 0.25, info.height * 0.25, info.width * 0.75,
                          info.height * 0.75)
    prompts = {frame: box}

    timed_run(model, video, PrelabelOptions(clip_len=t_len, stop_frame=t_len,
                                           queries=queries))  # warm-up
    cache = FeatureCache.from_mb(args.cache_mb)
    t_first, first = timed_run(model, video, PrelabelOptions(clip_len=t_len, queries=queries),
                              cache=cache)
    per_frame = t_first / len(first)
    kept = cache.stats()
    t_cached = t_uncached = float("inf")
    for _ in range(args.repeats):
        t, uncached = timed_run(model, video, opts, prompts)
        t_uncached = min(t_uncached, t)
        t, cached = timed_run(model, video, opts, prompts, cache)
        t_cached = min(t_cached, t)
        if not same(cached, uncached):
            sys.exit("refinement from the cache differs from recomputing it")
    own = replace(opts, stop_frame=frame + 1)
    t_own = min(timed_run(model, video, own, prompts, cache)[0] for _ in range(args.repeats + 1))
    n = len(cached)
    print(f"device={model.device} config={args.config} size={args.size} frames={len(first)} "
          f"T={t_len} click on frame {frame}, {n} frames re-propagated, "
          f"threads={torch.get_num_threads()} best of {args.repeats}"
          f"{f' query {args.query!r} (Ref-AVS)' if args.query else ''}")
    print(f"cache: {kept['clips']} clips, {kept['bytes'] / 2**20:.1f} MB "
          f"({kept['bytes'] / len(first) / 2**20:.2f} MB per frame), "
          f"{kept['evictions']} evicted; refinement results identical with and without it")
    finish(args, {"click_cached_over_frame": t_cached / per_frame,
                  "click_uncached_over_frame": t_uncached / per_frame,
                  "cached_frame_over_frame": t_cached / n / per_frame,
                  "click_own_frame_over_frame": t_own / per_frame,
                  "uncached_over_cached": t_uncached / t_cached},
           {"click_own_frame_over_frame": "target <= 0.05"},
           figures={"first_pass_fps": 1 / per_frame, "refined_frames": n,
                    "cache_mb_per_frame": kept["bytes"] / len(first) / 2**20},
           click_frame=frame, cache=kept)


if __name__ == "__main__":
    main()
