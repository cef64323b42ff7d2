"""Peak memory of pre-labelling a long video vs a short one (target ratio <= 1.1).

Each length runs in its own process (peak RSS is per process), through the same path as
``auralsam2 prelabel`` (engine + results writer). Prints both peaks and their ratio, and the
frames/s. Baseline: SAM2's own video predictor grows 11.7 MiB per frame (docs/performance.md).

    .venv/bin/python benchmarks/bench_memory.py --long 600 --short 30 --fps 30 --config bundled
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_args, apply_quick, finish, make_video  # noqa: E402


def _child(args) -> None:
    import torch

    from auralsam2_core.inference.prelabel_videos import OutputOptions, prelabel_videos
    from auralsam2_core.modeling.build import build_auralsam2

    torch.manual_seed(0)
    if args.config == "bundled":  # the demo model carries its own size and fuser config
        model = build_auralsam2("bundled", device="cpu")
    else:
        fuser_config = json.loads(args.fuser_config) if args.fuser_config else None
        model = build_auralsam2(args.config, image_size=args.size, fuser_config=fuser_config,
                                device="cpu")
    with tempfile.TemporaryDirectory(prefix="auralsam2-mem-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        prelabel_videos(model, [args.child], out, outputs=OutputOptions(overwrite=True),
                        progress=False)
        seconds = time.perf_counter() - t0
        # Peak before reading the results back: parsing a long video's JSON is not pre-labelling.
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        doc = json.loads((out / f"{Path(args.child).stem}.json").read_text())
        print(json.dumps({"frames": doc["summary"]["frames"], "peak_mib": peak_mib,
                          "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--long", type=float, default=600.0, help="seconds")
    p.add_argument("--short", type=float, default=30.0, help="seconds")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fuser-config", default='{"f_depths": [1, 1, 1]}',
                   help="JSON fuser config (small by default: this measures memory)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    add_output_args(p)
    args = apply_quick(p, {"long": 3.0, "short": 1.0, "fps": 10})
    if args.child:
        return _child(args)

    tmp = Path(tempfile.gettempdir()) / "auralsam2-bench"
    results = {}
    for label, seconds in (("short", args.short), ("long", args.long)):
        video = make_video(tmp / f"mem_{seconds:g}s_{args.fps}fps.mp4", seconds, args.fps,
                           size=(160, 120))
        cmd = [sys.executable, __file__, "--child", str(video), "--config", args.config,
               "--size", str(args.size), "--fuser-config", args.fuser_config]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[label] = json.loads(line.strip().splitlines()[-1])
        r = results[label]
        print(f"{label:5s} {seconds:6g}s: {r['frames']} frames, peak RSS {r['peak_mib']:.0f} MiB, "
              f"{r['frames'] / r['seconds']:.1f} frames/s", flush=True)
    ratio = results["long"]["peak_mib"] / results["short"]["peak_mib"]
    finish(args, {"peak_rss_long_over_short": ratio},
           {"peak_rss_long_over_short": f"{args.long:g} s vs {args.short:g} s; target <= 1.1"},
           runs=results)


if __name__ == "__main__":
    main()
