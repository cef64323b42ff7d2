"""``auralsam2 eval``: AVSBench J and F of predictions against ground truth."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_eval(args) -> int:
    from auralsam2_core.training.datasets import evaluate_predictions

    report = evaluate_predictions(args.pred, args.gt)
    d = report.to_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(d, indent=1))
    for v in d["per_video"]:
        print(f"{v['name']:40s} J={v['J']:.4f} F={v['F']:.4f} frames={v['frames']}")
    print(f"overall ({d['protocol']}): J={d['J']:.4f} F={d['F']:.4f} J&F={d['J&F']:.4f} "
          f"over {d['num_videos']} videos, {d['num_frames']} frames")
    return 0


def register(sub) -> None:
    ev = sub.add_parser("eval", help="AVSBench J and F of predictions against ground truth")
    ev.add_argument("pred", help="results folder (engine JSON files) or PNG tree "
                                 "(<video>/<frame>.png)")
    ev.add_argument("gt", help="ground-truth PNG tree (<video>/<frame>.png, 0/255)")
    ev.add_argument("--json", help="also write the full report here")
    ev.set_defaults(func=cmd_eval)
