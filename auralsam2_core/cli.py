"""The ``auralsam2`` command."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from . import __version__


def _synthetic_clip(frames: int, size: int, seconds_per_frame: float = 1.0):
    """A disc moving across the frame and a stereo tone: enough to exercise every layer."""
    from .log_mel import VGGISH_SAMPLE_RATE, log_mel_examples

    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    video = torch.zeros(frames, 3, size, size)
    for t in range(frames):
        cx = size * (0.25 + 0.5 * t / max(frames - 1, 1))
        disc = ((xx - cx) ** 2 + (yy - size / 2) ** 2) < (size / 6) ** 2
        video[t, 0][disc] = 1.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    n = int(frames * seconds_per_frame * VGGISH_SAMPLE_RATE)
    t_axis = torch.arange(n) / VGGISH_SAMPLE_RATE
    audio = torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t_axis),
                         0.3 * torch.sin(2 * math.pi * 880 * t_axis)])
    log_mel = log_mel_examples(audio, VGGISH_SAMPLE_RATE, min_examples=frames)[:frames]
    return (video - mean) / std, log_mel


def _fuser_layout_report(fuser) -> dict:
    from importlib.resources import files

    rows = [line.rstrip("\n").split("\t") for line in
            files("auralsam2_core").joinpath("data/official_fuser_keys.tsv").open()
            if line.strip() and not line.startswith("#")]
    sd = fuser.state_dict()
    expected = {k: (tuple(int(x) for x in shape.split(",") if x), dtype)
                for k, shape, dtype in rows}
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}
    vgg = sum(p.numel() for n, p in fuser.named_parameters() if n.startswith("vgg."))
    return {
        "keys": len(ours), "official_keys": len(expected),
        "same_keys_in_order": list(ours) == [r[0] for r in rows],
        "mismatches": sorted(k for k in expected if ours.get(k) != expected[k]),
        "fuser_params": sum(p.numel() for p in fuser.parameters()) - vgg, "vggish_params": vgg,
    }


def cmd_check(args) -> int:
    t0 = time.perf_counter()
    model = _build_model(args)
    layout = _fuser_layout_report(model.fuser)
    frames, log_mel = _synthetic_clip(args.frames, model.image_size)
    t1 = time.perf_counter()
    with torch.inference_mode():
        out = model.forward_clip(frames.to(model.device), log_mel.to(model.device))
    t2 = time.perf_counter()
    report = {
        "version": __version__, "device": str(model.device), "sam2_config": args.sam2_config,
        "image_size": model.image_size, "frames": args.frames,
        "weights": {"sam2": args.sam2_checkpoint or "random init",
                    "fuser": args.fuser_checkpoint or "random init"},
        "fuser_layout": layout,
        "outputs": {"mask_logits": list(out.mask_logits.shape),
                    "ious": [[round(x, 3) for x in row] for row in out.ious.tolist()],
                    "sounding_prob": [round(x, 3) for x in
                                      out.object_score_logits.sigmoid().flatten().tolist()]},
        "seconds": {"build": round(t1 - t0, 2), "forward_clip": round(t2 - t1, 2)},
    }
    print(json.dumps(report, indent=2))
    ok = layout["same_keys_in_order"] and not layout["mismatches"]
    print("check: OK" if ok else "check: FAILED (fuser layout differs from the authors')",
          file=sys.stderr)
    return 0 if ok else 1


def _build_model(args):
    from .build import build_auralsam2

    if not (args.sam2_checkpoint and args.fuser_checkpoint):
        print("auralsam2: warning: no --sam2-checkpoint/--fuser-checkpoint given; using random "
              "weights, so the masks are meaningless", file=sys.stderr)
    return build_auralsam2(args.sam2_config, sam2_checkpoint=args.sam2_checkpoint,
                           fuser_checkpoint=args.fuser_checkpoint, image_size=args.image_size,
                           device=args.device, mask_choice=args.mask_choice)


def cmd_prelabel(args) -> int:
    from .engine import PrelabelOptions
    from .jobs import OutputOptions, prelabel_videos
    from .results import Hysteresis

    missing = [v for v in args.videos if not Path(v).is_file()]
    if missing:
        raise FileNotFoundError(f"video(s) not found: {', '.join(missing)}")
    opts = PrelabelOptions(clip_len=args.clip_len, stride=args.stride, no_audio=args.no_audio)
    outs = OutputOptions(png_masks=args.png_masks, overlay=args.overlay,
                         timeline=args.timeline, overwrite=args.overwrite,
                         hysteresis=Hysteresis(args.enter, args.exit, args.min_frames))
    model = _build_model(args)
    outcomes = prelabel_videos(model, args.videos, args.out, opts, outs,
                               progress=not args.quiet)
    for o in outcomes:
        detail = o.results if o.status != "failed" else o.error
        print(f"{o.status:8s} {o.video}  {detail}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_weights(args) -> int:
    from .weights import REGISTRY, cache_dir

    print(f"cache: {cache_dir()}  (set AURALSAM2_HOME to move it)")
    for name, w in REGISTRY.items():
        state = "cached" if w.cache_path.is_file() else "-"
        print(f"{name:26s} {w.kind:15s} {state:7s} {w.url}")
    return 0


def cmd_download(args) -> int:
    from .weights import fetch

    for name in args.names:
        print(fetch(name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .build import DEFAULT_SAM2_CONFIG, SAM2_CONFIGS
    from .model import MASK_CHOICES

    p = argparse.ArgumentParser(prog="auralsam2", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    def model_options(c: argparse.ArgumentParser, image_size: int) -> None:
        c.add_argument("--sam2-config", default="sam2_hiera_t",
                       help=f"one of {', '.join(SAM2_CONFIGS)} or a yaml path "
                            f"(published model: {DEFAULT_SAM2_CONFIG})")
        c.add_argument("--sam2-checkpoint", help="Meta SAM2 checkpoint (path, URL or registry "
                                                 "name, e.g. sam2_hiera_large)")
        c.add_argument("--fuser-checkpoint", help="AuralSAM2 fuser checkpoint (e.g. "
                                                  "auralsam2_avs_v1m)")
        c.add_argument("--image-size", type=int, default=image_size,
                       help="SAM2 input size (published model: 1024)")
        c.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
        c.add_argument("--mask-choice", default="iou_select", choices=MASK_CHOICES)

    c = sub.add_parser("check", help="build the model, verify the authors' layout and run one "
                                     "clip end to end (no downloads)")
    model_options(c, image_size=256)
    c.add_argument("--frames", type=int, default=5, help="clip length T (authors: 5)")
    c.set_defaults(func=cmd_check)

    pl = sub.add_parser("prelabel", help="pre-label videos: one results JSON per video")
    pl.add_argument("videos", nargs="+", help="video files (any container/codec FFmpeg reads)")
    pl.add_argument("--out", required=True, help="results directory (created if needed)")
    model_options(pl, image_size=1024)
    pl.add_argument("--clip-len", type=int, default=5, help="frames per fuser clip (authors: 5)")
    pl.add_argument("--stride", type=int, default=1, help="pre-label every N-th frame")
    pl.add_argument("--no-audio", choices=("error", "silent"), default="error",
                    help="video without audio: error (default) or mark every frame silent")
    pl.add_argument("--png-masks", action="store_true", help="also write one PNG per frame")
    pl.add_argument("--overlay", action="store_true",
                    help="also write a review video (tinted masks, original audio)")
    pl.add_argument("--timeline", action="store_true", help="also write a timeline plot PNG")
    pl.add_argument("--enter", type=float, default=0.6, help="interval starts at p >= this")
    pl.add_argument("--exit", type=float, default=0.4, help="interval ends at p < this")
    pl.add_argument("--min-frames", type=int, default=1, help="shortest interval kept")
    pl.add_argument("--overwrite", action="store_true", help="redo videos already finished")
    pl.add_argument("--quiet", action="store_true", help="no progress bar")
    pl.set_defaults(func=cmd_prelabel)

    w = sub.add_parser("weights", help="list the known weight files and the cache")
    w.set_defaults(func=cmd_weights)
    d = sub.add_parser("download", help="download weight files into the cache")
    d.add_argument("names", nargs="+", help="registry names or URLs")
    d.set_defaults(func=cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "sam2_checkpoint", None) or getattr(args, "fuser_checkpoint", None):
        from .weights import fetch

        args.sam2_checkpoint = args.sam2_checkpoint and str(fetch(args.sam2_checkpoint))
        args.fuser_checkpoint = args.fuser_checkpoint and str(fetch(args.fuser_checkpoint))
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"auralsam2 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
