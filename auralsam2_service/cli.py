"""``auralsam2 serve``: run the shared model service (uvicorn, one worker process).

Registered with the core command through the ``auralsam2.commands`` entry-point group. The
token, media roots and hosts come from the environment (see :mod:`.config`); the model from
the ``AURALSAM2_*`` variables of :mod:`auralsam2_core.model_spec` or the flags below.
"""

from __future__ import annotations

import argparse
import sys

from auralsam2_core.model_spec import add_model_arguments, spec_from_args


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve the model to every adapter over HTTP (one process, one GPU)",
        description="Holds one model and runs video jobs from a bounded queue. Clients (the "
                    "FiftyOne, CVAT and Label Studio adapters) use it when "
                    "AURALSAM2_SERVER_URL is set. Needs AURALSAM2_SERVER_TOKEN and "
                    "AURALSAM2_SERVER_MEDIA_ROOTS (and/or _MEDIA_HOSTS).")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; 0.0.0.0 to serve other machines)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--state-dir", default=None, help="jobs and results (AURALSAM2_SERVER_STATE)")
    p.add_argument("--max-queue", type=int, default=None, help="waiting jobs before 429 (16)")
    add_model_arguments(p)
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args) -> int:
    from pathlib import Path

    import uvicorn

    from .app import create_app
    from .config import ServiceSettings
    from .job_service import JobService, StateDirBusy

    try:
        settings = ServiceSettings.from_env(
            state_dir=Path(args.state_dir) if args.state_dir else None,
            max_queue=args.max_queue)
        served = spec_from_args(args)
        service = JobService(settings, served, start_worker=False)
    except (ValueError, OSError, StateDirBusy) as e:  # before any job is touched
        print(f"auralsam2 serve: {e}", file=sys.stderr)
        return 2
    if not settings.media_roots and not settings.media_hosts:
        print("auralsam2 serve: warning: no AURALSAM2_SERVER_MEDIA_ROOTS or _MEDIA_HOSTS: "
              "every job will be refused", file=sys.stderr)
    _ = service.model  # load before taking jobs (recovered ones included)
    service.start_worker()
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level)
    return 0
