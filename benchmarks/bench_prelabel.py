"""AuralSAM2 pre-labelling vs plain SAM2 propagation over the same frames (one run, ratios).

Prints:
- overhead = (AuralSAM2 engine time / plain SAM2 time) - 1, both from the video file to
  full-resolution masks, decoding on a background thread, same config, same device; the two
  are timed alternately ``--repeats`` times and the fastest run of each is kept (on a shared
  machine, interference only ever adds time);
- the FLOP share of fuser + audio encoder relative to SAM2's per-frame FLOPs (encoder +
  steady-state tracking), and overhead / FLOP share (target <= 1.05: no waste beyond the
  added arithmetic);
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    StageTimer,
    add_output_args,
    apply_quick,
    count_flops,
    finish,
    make_video,
    plain_sam2_prelabel,
    plain_sam2_step,
    sync,
)

from auralsam2_core.build import build_auralsam2  # noqa: E402
from auralsam2_core.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.media import probe  # noqa: E402


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


def flops_per_frame(model, clip_len: int) -> dict[str, float]:
    """GFLOP per frame of the image encoder, SAM2 tracking at steady state (full memory bank,
    no prompts), the fuser and its audio encoder."""
    s = model.image_size
    dev = model.device
    frames = torch.randn(clip_len, 3, s, s, device=dev)
    lm = torch.randn(clip_len, 2, 96, 64, device=dev)
    with torch.inference_mode(), model._autocast():
        enc = model.encode_images(frames)
        f_enc = count_flops(lambda: model.encode_images(frames))
        f_fuser = count_flops(lambda: model.fuser(enc["backbone_fpn"], lm))
        f_audio = count_flops(lambda: model.fuser.embed_audio(lm))
        state = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        for i in range(0, 16, clip_len):  # reach steady state (full memory bank)
            plain_sam2_step(model.sam2, enc, state, i)
        f_track = count_flops(lambda: plain_sam2_step(model.sam2, enc, state, 16))
    return {k: v / clip_len / 1e9 for k, v in (("encoder", f_enc), ("tracking", f_track),
                                               ("fuser_with_audio", f_fuser),
                                               ("audio_encoder", f_audio))}


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
    gflop = flops_per_frame(model, args.clip_len)
    parts = stage_breakdown(model, video, opts)

    overhead = t_aural / t_plain - 1
    share = gflop["fuser_with_audio"] / (gflop["encoder"] + gflop["tracking"])
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
