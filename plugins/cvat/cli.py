"""``auralsam2 cvat prelabel --url URL --task N``: pre-label a CVAT task from the command line
(one mask shape per sounding frame, uploaded job by job through the API, replacing only this
tool's earlier shapes).

Registered with the core command through the ``auralsam2.commands`` entry-point group.
Credentials come from ``CVAT_ACCESS_TOKEN`` or ``CVAT_USERNAME``/``CVAT_PASSWORD`` (never from
the command line, where other users could read them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from auralsam2_core.model_spec import add_model_arguments, spec_from_args


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cvat", help="CVAT: pre-label video tasks with sounding-object "
                                           "masks")
    sub = p.add_subparsers(dest="cvat_command", required=True)
    c = sub.add_parser(
        "prelabel", help="pre-label a CVAT video task and upload its masks",
        description="Fetch the task's original video (with its audio), run AuralSAM2 and "
                    "upload one mask shape per sounding frame, job by job. Re-running replaces "
                    "only the masks this tool made (its label, source 'auto', type mask); "
                    "annotators' work is kept. With --variant refavs (a Ref-AVS model) each of "
                    "the task's mask labels is pre-labelled as a query (its name, or its "
                    "'query' attribute), on its own label. Credentials: CVAT_ACCESS_TOKEN (or "
                    "_FILE), or CVAT_USERNAME and CVAT_PASSWORD; CVAT_ORG for an "
                    "organisation's tasks.")
    c.add_argument("--url", default=None, help="CVAT server URL (default: $CVAT_URL)")
    c.add_argument("--org", default=None,
                   help="organisation slug of the task (default: $CVAT_ORG; none: the "
                        "account's own tasks)")
    c.add_argument("--task", type=int, required=True, action="append",
                   help="task id (repeat for several tasks)")
    c.add_argument("--label", default=None, help="task label to use (default 'sounding')")
    c.add_argument("--as", dest="upload", choices=("shapes", "polygon-tracks"), default=None,
                   help="upload one mask shape per sounding frame (default), or polygon "
                        "tracks that CVAT can interpolate")
    c.add_argument("--threshold", type=float, default=None,
                   help="sounding probability from which a frame gets a mask (default 0.5)")
    c.add_argument("--cache-dir", default=None,
                   help="media and results cache (default ~/.cache/auralsam2/cvat)")
    c.add_argument("--media", choices=("auto", "backup", "share"), default=None,
                   help="where the original video comes from (default auto: the share when "
                        "--share-root has it, else the task backup)")
    c.add_argument("--share-root", default=None, help="local path of CVAT's share")
    add_model_arguments(c)
    c.add_argument("--clip-len", type=int, default=None,
                   help="frames per fuser clip (5; 10 with --variant refavs)")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(func=cmd_prelabel)
    return p


def cmd_prelabel(args) -> int:
    from pathlib import Path

    from auralsam2_core.model_spec import load_model
    from auralsam2_core.serving.engines import engine_from_env

    from .api import CvatError
    from .config import CvatFunctionSettings
    from .service import CvatFunctionService, connect

    def say(_level: str, message: str) -> None:
        print(f"auralsam2 cvat: {message}", file=sys.stderr)

    try:
        spec = spec_from_args(args)  # --variant refavs: the task's labels are the queries
        settings = CvatFunctionSettings.from_env(
            variant=spec.variant,
            url=args.url, org=args.org, label=args.label, threshold=args.threshold,
            upload=args.upload,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            media_source=args.media,
            share_root=Path(args.share_root) if args.share_root else None,
            clip_len=args.clip_len)
        api = connect(settings, say)  # before loading the model: a CVAT too old stops here
    except (ValueError, CvatError) as e:
        say("error", str(e))
        return 2
    if api is None:
        return 2
    service = CvatFunctionService(settings, engine_from_env(lambda: load_model(spec)),
                                  api=api)
    failed = False
    for task_id in args.task:
        job, _ = service.start_task(task_id, settings.threshold)
        last = 0.0
        while not job.done.wait(1.0):
            if not args.quiet and time.monotonic() - last > 10:
                last = time.monotonic()
                snap = job.snapshot()
                print(f"auralsam2 cvat: task {task_id}: {snap['state']} "
                      f"{snap.get('frames_done', 0)}/{snap.get('frames_total') or '?'} frames",
                      file=sys.stderr)
        print(json.dumps(job.snapshot()))
        failed |= job.error is not None
    return 1 if failed else 0
