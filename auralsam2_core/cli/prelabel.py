"""``auralsam2 prelabel``: videos in, one results JSON per video out."""

from __future__ import annotations

from .model_args import add_model_options, build_model


def cmd_prelabel(args) -> int:
    """Exit 0: every video done or up to date; 1: some video failed (each is reported and
    the others still run); 2: the command itself is wrong (options, --out unusable)."""
    from auralsam2_core.inference.engine import PrelabelOptions
    from auralsam2_core.inference.prelabel_videos import (
        OutputOptions,
        outcome_line,
        prelabel_videos,
        prepare_out_dir,
    )
    from auralsam2_core.inference.results import Hysteresis

    opts = PrelabelOptions(clip_len=args.clip_len, stride=args.stride, no_audio=args.no_audio,
                           audio_track=args.audio_track, queries=args.query or ())
    if args.variant is None:  # queries name objects: only the Ref-AVS model reads them
        args.variant = "refavs" if opts.queries else "avs"
    if bool(opts.queries) != (args.variant == "refavs"):
        raise ValueError("--variant refavs needs at least one --query" if not opts.queries
                         else "--query needs the Ref-AVS model: drop --variant avs")
    if args.text_encoder and args.variant != "refavs":
        raise ValueError("--text-encoder is for the Ref-AVS model (--query)")
    outs = OutputOptions(png_masks=args.png_masks, overlay=args.overlay,
                         timeline=args.timeline, overwrite=args.overwrite,
                         hysteresis=Hysteresis(args.enter, args.exit, args.min_frames))
    out = prepare_out_dir(args.out)
    outcomes = prelabel_videos(lambda: build_model(args), args.videos, out, opts, outs,
                               progress=not args.quiet)
    for o in outcomes:
        print(outcome_line(o))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def register(sub) -> None:
    pl = sub.add_parser("prelabel", help="pre-label videos: one results JSON per video")
    pl.add_argument("videos", nargs="+", help="video files (any container/codec FFmpeg reads)")
    pl.add_argument("--out", required=True, help="results directory (created if needed)")
    add_model_options(pl, image_size=1024)
    pl.add_argument("--clip-len", type=int, default=None,
                    help="frames per fuser clip (default: the authors' T, 5; 10 with --query)")
    pl.add_argument("--query", action="append", default=None, metavar="TEXT",
                    help="Ref-AVS: name an object to segment, e.g. --query dog --query 'the "
                         "man playing the guitar' (one track each; up to 16)")
    pl.add_argument("--variant", choices=("avs", "refavs"), default=None,
                    help="model variant (default: refavs with --query, else avs)")
    pl.add_argument("--text-encoder", default=None,
                    help="Ref-AVS with checkpoints: text encoder, registry name or folder "
                         "(default distilroberta-base from the Hugging Face cache)")
    pl.add_argument("--stride", type=int, default=1, help="pre-label every N-th frame")
    pl.add_argument("--no-audio", choices=("error", "silent"), default="error",
                    help="video without audio: error (default) or mark every frame silent")
    pl.add_argument("--audio-track", type=int, default=None, metavar="N",
                    help="audio track to hear: the N-th audio track of each file, 0-based "
                         "(default: the track marked default, else the first)")
    pl.add_argument("--png-masks", action="store_true", help="also write one PNG per frame")
    pl.add_argument("--overlay", action="store_true",
                    help="also write a review video (tinted masks, original audio)")
    pl.add_argument("--timeline", action="store_true", help="also write a timeline plot PNG")
    pl.add_argument("--enter", type=float, default=0.6, help="interval starts at p >= this")
    pl.add_argument("--exit", type=float, default=0.4, help="interval ends at p < this")
    pl.add_argument("--min-frames", type=int, default=1, help="shortest interval kept")
    pl.add_argument("--overwrite", action="store_true",
                    help="redo videos whose results are up to date")
    pl.add_argument("--quiet", action="store_true", help="no progress bar")
    pl.set_defaults(func=cmd_prelabel)
