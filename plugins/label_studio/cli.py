"""``auralsam2 labelstudio serve`` (the ML backend) and ``auralsam2 labelstudio prelabel
--project N`` (whole-video predictions for every task, imported through the API).

Registered with the core command through the ``auralsam2.commands`` entry-point group.
Label Studio's address and key come from ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``
(never from the command line, where other users could read them); the model from the
``AURALSAM2_*`` variables (default: the bundled demo model).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("labelstudio", help="Label Studio: ML backend and project "
                                                  "pre-labelling")
    sub = p.add_subparsers(dest="ls_command", required=True)
    s = sub.add_parser("serve", help="run the ML backend (uvicorn)",
                       description="Serve /health, /setup, /predict and /webhook for Label "
                                   "Studio. Connect it in Project settings -> Model.")
    s.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; 0.0.0.0 in a container, which "
                        "needs BASIC_AUTH_USER and BASIC_AUTH_PASS)")
    s.add_argument("--port", type=int, default=9090)
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)
    pl = sub.add_parser(
        "prelabel", help="pre-label every task of a project and import the predictions",
        description="Computes whole-video predictions (no 100 s limit) and stores them in "
                    "Label Studio under this model's version. Resumable: tasks that already "
                    "have this version's prediction are skipped; results are cached on disk.")
    pl.add_argument("--project", type=int, required=True)
    pl.add_argument("--task", type=int, action="append", help="only these task ids")
    pl.add_argument("--quiet", action="store_true")
    pl.set_defaults(func=cmd_prelabel)
    return p


def _backend():
    from .backend import Backend
    from .config import LabelStudioBackendSettings

    return Backend(LabelStudioBackendSettings.from_env())


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def cmd_serve(args) -> int:
    import threading

    import uvicorn

    from .app import create_app
    from .backend import Backend
    from .config import LabelStudioBackendSettings

    try:
        settings = LabelStudioBackendSettings.from_env()
    except (ValueError, OSError) as e:
        print(f"auralsam2 labelstudio serve: {e}", file=sys.stderr)
        return 2
    if settings.basic_auth is None and not is_loopback(args.host):
        print(f"auralsam2 labelstudio serve: refusing to listen on {args.host} without "
              "credentials: anyone who reaches the port could run predictions and fetch "
              "through this backend's Label Studio key. Set BASIC_AUTH_USER and "
              "BASIC_AUTH_PASS (or their _FILE forms) and give the same in Label Studio "
              "(Settings -> Model -> Use basic authentication), or bind 127.0.0.1.",
              file=sys.stderr)
        return 2
    backend = Backend(settings)
    threading.Thread(target=backend.warm_up, daemon=True).start()
    # One process: the model, the background queue and fine-tuning live in it.
    uvicorn.run(create_app(backend), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_prelabel(args) -> int:
    from .prelabel import prelabel_project

    report = prelabel_project(_backend(), args.project, task_ids=args.task,
                              progress=not args.quiet)
    print(json.dumps(report))
    return 1 if report["failed"] else 0


def main(argv: list[str] | None = None) -> int:  # python -m auralsam2_plugins.label_studio.cli
    parser = argparse.ArgumentParser(prog="auralsam2")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
