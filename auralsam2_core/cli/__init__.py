"""The ``auralsam2`` command: one module per subcommand (each has ``register(sub)``, as the
platform adapters' commands do), the platforms' commands added through entry points."""

from __future__ import annotations

import argparse
import sys

from auralsam2_core import __version__

from . import check, demo, evaluate, prelabel, train, weights

DESCRIPTION = "AuralSAM2: pre-label the sounding objects of videos (SAM2 that hears)."
COMMANDS = (check, prelabel, train, demo, evaluate, weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="auralsam2", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    _register_plugin_commands(sub)
    return p


def _register_plugin_commands(sub) -> None:
    """Platform adapters add their subcommands (e.g. ``auralsam2 cvat``) through the
    ``auralsam2.commands`` entry-point group, so this core module imports no platform."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="auralsam2.commands"):
        try:
            register = ep.load()
        except ImportError as e:  # the platform's extra is not installed
            stub = sub.add_parser(ep.name, help=f"(unavailable: {e})")
            stub.set_defaults(func=lambda _a, e=e, n=ep.name: _unavailable(n, e))
            continue
        register(sub)


def _unavailable(name: str, error: Exception) -> int:
    print(f"auralsam2 {name}: this command needs its platform package ({error}); install the "
          f"matching extra, e.g. pip install -e '.[{name}]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "sam2_checkpoint", None) or getattr(args, "fuser_checkpoint", None):
            from auralsam2_core.modeling.weights import fetch

            args.sam2_checkpoint = args.sam2_checkpoint and str(fetch(args.sam2_checkpoint))
            args.fuser_checkpoint = args.fuser_checkpoint and str(fetch(args.fuser_checkpoint))
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # OSError: a path that cannot be used
        if isinstance(e, OSError) and e.strerror and e.filename:
            e = f"{e.strerror}: {e.filename}"
        print(f"auralsam2 {args.command}: error: {e}", file=sys.stderr)
        return 2
