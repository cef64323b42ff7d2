"""``auralsam2 demo``: the bundled demo models on held-out synthetic clips, scored."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .model_args import add_model_options, build_model


def cmd_refer_demo(args) -> int:
    """``demo --refer``: the bundled Ref-AVS demo model queried with referring expressions."""
    from auralsam2_core.evaluation.refer_demo import REFER_PASS_MARKS, run_refer_demo
    from auralsam2_core.modeling.build import build_refer_demo_model

    if args.sam2_config or args.fuser_checkpoint or args.sam2_checkpoint:
        raise ValueError("demo --refer runs the bundled Ref-AVS demo model; drop --sam2-config "
                         "and the checkpoints")
    model = build_refer_demo_model(device=args.device)
    s = run_refer_demo(args.out, n_clips=args.clips, size=args.size, model=model)
    keys = ("j_referred", "f_referred", "j_other_query", "f_other_query", "null_s",
            "silent_low_confidence_fraction", "j_sounding_alone", "passed", "seconds")
    print(json.dumps({k: s[k] for k in keys if k in s}, indent=1))
    print(f"summary: {Path(args.out) / 'summary.json'}", file=sys.stderr)
    ok = all(s["passed"].get(k, False) for k in REFER_PASS_MARKS)
    print("demo --refer: checks PASSED" if ok else "demo --refer: checks FAILED",
          file=sys.stderr)
    return 0 if ok or not args.strict else 1


def cmd_demo(args) -> int:
    from auralsam2_core.evaluation.demo import PASS_MARKS, run_demo

    if args.refer:
        return cmd_refer_demo(args)
    if args.sam2_config or args.fuser_checkpoint or args.sam2_checkpoint:
        model = build_model(args)
    else:
        from auralsam2_core.modeling.build import build_demo_model

        model = build_demo_model(device=args.device)
    s = run_demo(args.out, n_clips=args.clips, size=args.size, model=model,
                 overlay=not args.no_overlay, timeline=not args.no_overlay,
                 progress=not args.quiet)
    keys = ("j_sounding", "f_sounding", "j_swapped_audio", "f_swapped_audio",
            "silent_low_confidence_fraction", "passed", "seconds")
    print(json.dumps({k: s[k] for k in keys}, indent=1))
    print(f"summary: {Path(args.out) / 'summary.json'}", file=sys.stderr)
    ok = all(s["passed"].get(k, False) for k in PASS_MARKS)
    print("demo: audio checks PASSED" if ok else "demo: audio checks FAILED", file=sys.stderr)
    return 0 if ok or not args.strict else 1


def register(sub) -> None:
    dm = sub.add_parser("demo", help="held-out synthetic clips pre-labelled by the bundled "
                                     "model through the engine; J with the real, swapped and "
                                     "no audio -> summary.json")
    dm.add_argument("--out", required=True)
    dm.add_argument("--clips", type=int, default=6, help="held-out clips (x3 variants)")
    dm.add_argument("--size", type=int, default=128, help="clip size in pixels (even)")
    dm.add_argument("--no-overlay", action="store_true", help="skip overlay videos/timelines")
    dm.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    dm.add_argument("--refer", action="store_true",
                    help="the Ref-AVS demo: the bundled referring-expression model queried "
                         "for each shape, a missing shape and a silent one")
    dm.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_options(dm, image_size=1024)
    dm.set_defaults(func=cmd_demo)
