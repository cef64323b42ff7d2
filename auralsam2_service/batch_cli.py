"""``auralsam2 batch MANIFEST --out DIR [--ray]``: pre-label a manifest of videos, here or on a
Ray cluster (:mod:`.batch`). Registered through the ``auralsam2.commands`` entry-point group.

The model comes from the flags below or the ``AURALSAM2_*`` variables of
:mod:`auralsam2_core.model_spec` (default: the bundled demo model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from auralsam2_core.model_spec import add_model_arguments, spec_from_args


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch", help="pre-label a manifest of videos (resumable; --ray: on a Ray cluster)",
        description="MANIFEST is a text file with one video path per line ('#' comments) or a "
                    ".jsonl file of {\"video\": path, \"name\": optional} lines; relative paths "
                    "are relative to the manifest. Writes the same <name>.json files as "
                    "'auralsam2 prelabel' and reuses results made from the same file with the "
                    "same options and model (others are redone). With --ray, "
                    "Ray Data runs one model per GPU (else per CPU) on the cluster at "
                    "RAY_ADDRESS (or a local one); the videos and --out must then be on a "
                    "filesystem every Ray node sees at the same path.")
    p.add_argument("manifest", help="video list (.txt) or .jsonl manifest")
    p.add_argument("--out", required=True, help="results directory (created if needed)")
    p.add_argument("--ray", action="store_true", help="run on Ray (Ray Data model actors)")
    p.add_argument("--workers", type=int, default=None,
                   help="model actors with --ray (default: one per GPU, else per CPU)")
    p.add_argument("--stride", type=int, default=1, help="pre-label every N-th frame")
    p.add_argument("--clip-len", type=int, default=None,
                   help="frames per fuser clip (default: the authors' 5, or 10 with --query)")
    p.add_argument("--query", action="append", default=None, metavar="TEXT",
                   help="Ref-AVS: an object to segment (repeat for several; one track each); "
                        "implies --variant refavs")
    p.add_argument("--no-audio", choices=("error", "silent"), default="error",
                   help="video without audio: error (default) or mark every frame silent")
    p.add_argument("--audio-track", type=int, default=None, metavar="N",
                   help="audio track to hear: the N-th audio track of each file, 0-based "
                        "(default: the track marked default, else the first)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo videos whose results are up to date")
    add_model_arguments(p)
    p.add_argument("--report", default=None, help="also write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_batch)
    return p


def cmd_batch(args) -> int:
    from auralsam2_core.inference.engine import PrelabelOptions
    from auralsam2_core.inference.prelabel_videos import OutputOptions, outcome_line

    from .batch import read_manifest, run_batch

    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be >= 1")
    if args.report and (Path(args.report).is_dir() or not Path(args.report).parent.is_dir()):
        raise ValueError(f"--report {args.report}: give a file in an existing folder")
    items = read_manifest(args.manifest)
    opts = PrelabelOptions(clip_len=args.clip_len, stride=args.stride, no_audio=args.no_audio,
                           audio_track=args.audio_track, queries=args.query or ())
    if opts.queries and args.variant is None:
        args.variant = "refavs"  # queries name objects: the Ref-AVS model reads them
    served = spec_from_args(args)
    report = run_batch(items, args.out, opts, ray=args.ray, num_workers=args.workers,
                       served=served, outputs=OutputOptions(overwrite=args.overwrite),
                       progress=not args.quiet)
    for o in report.done + report.skipped + report.failed:
        print(outcome_line(o))
    print(f"auralsam2 batch: {len(report.done)} done, {len(report.skipped)} skipped, "
          f"{len(report.failed)} failed in {report.seconds:.1f} s ({report.backend}, "
          f"{report.workers} worker(s))", file=sys.stderr)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(report.as_dict(), fh, indent=2)
    return 1 if report.failed else 0
