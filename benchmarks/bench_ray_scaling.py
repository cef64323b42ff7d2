"""Scaling of ``auralsam2 batch --ray``: the same clips with 1 and then 2 model workers.

Starts a local Ray cluster (or joins ``RAY_ADDRESS``), pre-labels N generated clips through
:func:`auralsam2_service.batch.run_batch` into a fresh folder per run, and prints throughput
(videos/s, frames/s) and the scaling efficiency = throughput(2) / (2 x throughput(1)).
Each run's wall time includes starting its actors and loading the model in each, as a real
batch does; more or longer clips amortise that. CPU workers use one torch thread each.

    .venv/bin/python benchmarks/bench_ray_scaling.py --clips 8 --seconds 2 --size 96
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_args, apply_quick, finish  # noqa: E402


def _run(videos, out: Path, workers: int, served) -> tuple[float, int]:
    from auralsam2_service.batch import run_batch

    report = run_batch(videos, out, ray=True, num_workers=workers, served=served,
                       progress=False)
    if report.failed or len(report.done) != len(videos):
        raise SystemExit(f"run with {workers} worker(s) failed: {report.as_dict()}")
    frames = sum(json.loads(o.results.read_text())["summary"]["frames"] for o in report.done)
    return report.seconds, frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clips", type=int, default=8, help="generated clips per run")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--size", type=int, default=96, help="clip height and width (pixels)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (GPU: one per worker)")
    add_output_args(p)
    args = apply_quick(p, {"clips": 2, "seconds": 0.5, "size": 32, "fps": 5.0})

    import ray

    from auralsam2_core.model_spec import ModelSpec
    from auralsam2_core.training.synthetic import make_clip, write_clip

    served = ModelSpec(device=args.device)
    with tempfile.TemporaryDirectory(prefix="auralsam2_ray_bench_") as tmp:
        tmp = Path(tmp)
        videos = [write_clip(make_clip(1000 + i, size=(args.size, args.size), fps=args.fps,
                                       seconds=args.seconds), tmp / f"clip{i:03d}.mp4")
                  for i in range(args.clips)]
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            res = ray.cluster_resources()
            print(f"cluster: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU; "
                  f"{args.clips} clips of {args.seconds:g} s at {args.fps:g} fps, "
                  f"{args.size}x{args.size}, bundled model")
            tput, runs = {}, {}
            for workers in (1, 2):
                seconds, frames = _run(videos, tmp / f"out{workers}", workers, served)
                tput[workers] = len(videos) / seconds
                runs[workers] = {"seconds": seconds, "frames": frames}
                print(f"{workers} worker(s): {seconds:.1f} s, {len(videos) / seconds:.3f} "
                      f"videos/s, {frames / seconds:.1f} frames/s")
        finally:
            ray.shutdown()
    finish(args, {"speedup_2_vs_1_worker": tput[2] / tput[1],
                  "scaling_efficiency": tput[2] / (2 * tput[1])},
           {"scaling_efficiency": "throughput(2) / (2 x throughput(1))"}, runs=runs,
           cluster=res)


if __name__ == "__main__":
    main()
