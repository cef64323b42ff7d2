"""``auralsam2 weights`` / ``auralsam2 download``: the known weight files and the cache."""

from __future__ import annotations


def cmd_weights(args) -> int:
    from auralsam2_core.modeling.weights import REGISTRY, cache_dir

    print(f"cache: {cache_dir()}  (set AURALSAM2_HOME to move it)")
    for name, w in REGISTRY.items():
        state = "cached" if w.is_cached() else "-"
        print(f"{name:26s} {w.kind:22s} {state:7s} {w.url}")
    return 0


def cmd_download(args) -> int:
    from auralsam2_core.modeling.weights import fetch

    for name in args.names:
        print(fetch(name))
    return 0


def register(sub) -> None:
    w = sub.add_parser("weights", help="list the known weight files and the cache")
    w.set_defaults(func=cmd_weights)
    d = sub.add_parser("download", help="download weight files into the cache")
    d.add_argument("names", nargs="+", help="registry names or URLs")
    d.set_defaults(func=cmd_download)
