"""AuralSAM2 pre-labelling vs plain SAM2 propagation over the same frames (one run, ratios).

Prints:
- overhead = (AuralSAM2 engine time / plain SAM2 time) - 1, both from the video file to
  full-resolution masks, decoding on a background thread, same config, same device; the two
  are timed alternately ``--repeats`` times and the fastest run of each is kept (on a shared
  machine, interference only ever adds time);
- the FLOP share: FLOPs of fuser + audio encoder / FLOPs of plain SAM2 (encoder + tracking),
  both counted over the same frames as the timed runs (a short video never fills SAM2's
  memory bank, so steady-state figures would understate the share), and overhead / FLOP
  share (target <= 1.05: no waste beyond the added arithmetic);
- the engine's time per stage (hooks on the real engine's modules, a separate pass): image
  encoder, audio encoder (VGGish), rest of the fuser, tracking, and the engine's own work.

    .venv/bin/python benchmarks/bench_prelabel.py --config sam2.1_hiera_t --size 256 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    StageTimer,
    add_output_args,
    apply_quick,
    finish,
    make_video,
    plain_sam2_prelabel,
    sync,
)

from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.media.video import probe  # noqa: E402
from auralsam2_core.modeling.build import build_auralsam2  # noqa: E402


def engine_run(model, video, opts) -> int:
    n = sum(1 for _ in prelabel(model, video, opts))
    sync(model.device)
    return n


def time_alternately(model, video, opts, shape, repeats: int) -> tuple[float, float, int]:
    """Fastest of ``repeats`` alternating runs of the engine and of plain SAM2."""
    engine_run(model, video, opts)  # warm-up (and compilation, if any)
    plain_sam2_prelabel(model, video, opts.clip_len, shape)
    t_aural = t_plain = float("inf")
    n = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = engine_run(model, video, opts)
        t_aural = min(t_aural, time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_sam2_prelabel(model, video, opts.clip_len, shape)
        sync(model.device)
        t_plain = min(t_plain, time.perf_counter() - t0)
    return t_aural, t_plain, n


def flops_of_runs(model, video, opts, shape) -> dict[str, float]:
    """GFLOP per frame actually done by the engine and by plain SAM2 over this video (same
    frames, so the memory bank fills the same way; a short video never reaches SAM2's steady
    state), with the fuser's and the audio encoder's part of the engine's."""
    with FlopCounterMode(display=False) as fc:
        n = engine_run(model, video, opts)
    by_module = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    fuser = type(model.fuser).__name__
    attr = "vgg" if hasattr(model.fuser, "vgg") else "audio_encoder"
    # The engine embeds each clip's audio once, outside the fuser's forward
    # (AuralSAM2.query_features), so its FLOPs are not in the fuser's total. The counter names
    # the audio encoder by its class until the fuser first runs, then "AuralFuser.vgg".
    own = type(getattr(model.fuser, attr)).__name__
    audio = by_module.get(f"{fuser}.{attr}", 0) + by_module.get(own, 0)
    engine = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        plain_sam2_prelabel(model, video, opts.clip_len, shape)
    return {k: v / n / 1e9 for k, v in (
        ("engine", engine), ("plain_sam2", fc.get_total_flops()),
        ("fuser_with_audio", by_module.get(fuser, 0) + audio),
        ("audio_encoder", audio))}


def stage_breakdown(model, video, opts) -> dict[str, float]:
    timer = StageTimer(model)
    with timer.attached():
        engine_run(model, video, opts)
    return timer.shares()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--frames", type=int, help="video length in frames (instead of --seconds)")
    p.add_argument("--clip-len", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--fuser-config", help="JSON fuser config (default: the authors')")
    p.add_argument("--device", default="auto")
    p.add_argument("--video", help="use this video instead of a generated one")
    add_output_args(p)
    args = apply_quick(p, {"size": 64, "seconds": 0.4, "fps": 10, "repeats": 1,
                                        "fuser_config": '{"f_depths": [1, 1, 1]}'})

    if args.frames:
        args.seconds = args.frames / args.fps
    torch.manual_seed(0)
    fuser_config = json.loads(args.fuser_config) if args.fuser_config else None
    model = build_auralsam2(args.config, image_size=args.size, fuser_config=fuser_config,
                            device=args.device)
    tmp = Path(tempfile.gettempdir()) / "auralsam2-bench"
    video = Path(args.video) if args.video else make_video(
        tmp / f"clip_{args.seconds:g}s_{args.fps}fps.mp4", args.seconds, args.fps)
    info = probe(video)
    shape = (info.height, info.width)
    opts = PrelabelOptions(clip_len=args.clip_len)

    t_aural, t_plain, n = time_alternately(model, video, opts, shape, args.repeats)
    gflop = flops_of_runs(model, video, opts, shape)
    parts = stage_breakdown(model, video, opts)

    overhead = t_aural / t_plain - 1
    share = gflop["fuser_with_audio"] / gflop["plain_sam2"]
    print(f"device={model.device} config={args.config} size={args.size} frames={n} "
          f"({info.width}x{info.height} @ {info.fps:g} fps) T={args.clip_len} "
          f"threads={torch.get_num_threads()} best of {args.repeats}")
    print("GFLOP per frame: " + ", ".join(f"{k} {v:.2f}" for k, v in gflop.items()))
    print("engine time split: " + ", ".join(f"{k} {v:.0%}" for k, v in parts.items()))
    finish(args, {"overhead": overhead, "flop_share": share,
                  "overhead_over_flop_share": overhead / share},
           {"overhead_over_flop_share": "target <= 1.05"},
           figures={"engine_fps": n / t_aural, "plain_sam2_fps": n / t_plain},
           frames=n, gflop_per_frame=gflop, time_split=parts)


if __name__ == "__main__":
    main()
