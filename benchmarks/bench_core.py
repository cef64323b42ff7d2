"""Cost of AuralSAM2's additions relative to plain SAM2, measured in one run (ratios).

Prints, per frame at the chosen size: SAM2 image encoder, AuralFuser + VGGish, SAM2 tracking
step (memory attention + decoder + memory encoder), and the ratios
``fuser / encoder`` and ``AuralSAM2 clip / (encoder + plain SAM2 tracking)``.
Baselines: docs/performance.md (fuser/encoder 0.80-0.94 on CPU with Hiera-t;
FLOP floor of the fuser's share: 18.6 % of a Hiera-t frame, 6.95 % of a Hiera-L frame).

    .venv/bin/python benchmarks/bench_core.py --config sam2.1_hiera_t --size 256 --frames 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_args, apply_quick, finish, plain_sam2_step  # noqa: E402

from auralsam2_core.modeling.build import build_auralsam2  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    add_output_args(p)
    args = apply_quick(p, {"size": 64, "frames": 2, "repeats": 1})

    torch.manual_seed(0)
    model = build_auralsam2(args.config, image_size=args.size, device=args.device)
    dev = model.device
    frames = torch.randn(args.frames, 3, args.size, args.size, device=dev)
    log_mel = torch.randn(args.frames, 2, 96, 64, device=dev)
    with torch.inference_mode(), model._autocast():
        enc = model.encode_images(frames)
        t_enc = _median_time(lambda: model.encode_images(frames), args.repeats)
        t_fuser = _median_time(lambda: model.fuser(enc["backbone_fpn"], log_mel), args.repeats)
        t_vgg = _median_time(lambda: model.fuser.embed_audio(log_mel), args.repeats)
        t_clip = _median_time(lambda: model.forward_clip(frames, log_mel), args.repeats)
        t_plain = _median_time(lambda: _plain_sam2_tracking(model, enc), args.repeats)

    n = args.frames
    print(f"device={dev} config={args.config} size={args.size} T={n} (median of {args.repeats})")
    print(f"per frame: encoder {t_enc / n:.3f}s  fuser+vggish {t_fuser / n:.3f}s "
          f"(vggish {t_vgg / n:.3f}s)  plain tracking {t_plain / n:.3f}s  "
          f"AuralSAM2 clip {t_clip / n:.3f}s")
    finish(args, {"fuser_over_encoder": t_fuser / t_enc,
                  "clip_over_plain_sam2": t_clip / (t_enc + t_plain)},
           {"fuser_over_encoder": "fuser + VGGish time / image encoder time",
            "clip_over_plain_sam2": "forward_clip / (encoder + plain SAM2 tracking)"},
           seconds_per_frame={"encoder": t_enc / n, "fuser_with_audio": t_fuser / n,
                              "audio_encoder": t_vgg / n, "plain_tracking": t_plain / n,
                              "clip": t_clip / n})


def _plain_sam2_tracking(model, enc) -> None:
    """SAM2's own tracking of the same frames with no prompts (the baseline to beat)."""
    plain_sam2_step(model.sam2, enc, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                    0)


if __name__ == "__main__":
    main()
