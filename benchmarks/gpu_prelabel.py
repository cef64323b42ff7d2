"""GPU throughput of the published configuration (Hiera-L, 1024 px, bf16): AuralSAM2 engine
frames/s and its ratio to plain SAM2 tracking of the same frames, optionally with
``torch.compile`` on the image encoder and the fuser. One command on a CUDA machine:

    .venv/bin/python benchmarks/gpu_prelabel.py --seconds 20 [--compile]

Weights are random (speed does not depend on them); pass --sam2-checkpoint /
--fuser-checkpoint to use real ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_video  # noqa: E402
from bench_prelabel import plain_sam2  # noqa: E402

from auralsam2_core.build import build_auralsam2  # noqa: E402
from auralsam2_core.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.media import probe  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2_hiera_l")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--sam2-checkpoint")
    p.add_argument("--fuser-checkpoint")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_prelabel.py needs a CUDA GPU")

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = build_auralsam2(args.config, image_size=args.size, device="cuda",
                            sam2_checkpoint=args.sam2_checkpoint,
                            fuser_checkpoint=args.fuser_checkpoint)
    if args.compile:
        model.sam2.image_encoder = torch.compile(model.sam2.image_encoder, dynamic=False)
        model.fuser = torch.compile(model.fuser, dynamic=False)
    video = make_video(Path(tempfile.gettempdir()) / f"gpu_{args.seconds:g}s.mp4", args.seconds,
                       args.fps, size="1280x720")
    info = probe(video)
    opts = PrelabelOptions()
    list(prelabel(model, video, opts))  # warm-up (and compilation)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n = sum(1 for _ in prelabel(model, video, opts))
    torch.cuda.synchronize()
    t_aural = time.perf_counter() - t0
    t_plain = plain_sam2(model, video, opts.clip_len, (info.height, info.width))
    print(f"{torch.cuda.get_device_name()} {args.config} {args.size}px bf16 "
          f"compile={args.compile} frames={n}")
    print(f"AuralSAM2 engine: {n / t_aural:.2f} frames/s, plain SAM2: {n / t_plain:.2f} frames/s, "
          f"ratio {t_aural / t_plain:.3f}; peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
