"""GPU throughput of the published configuration (Hiera-L, 1024 px, bf16): AuralSAM2 engine
frames/s, plain SAM2 propagation of the same frames, their ratio, the FLOP share of the fuser,
peak GPU memory, and how fast the video decodes alone (the engine cannot beat that), optionally
with ``torch.compile`` on the image encoder and the fuser (shared by both paths, so the ratio
stays fair). Results print as they come; ``benchmarks/gpu_suite.sh`` runs it with a time budget.

    .venv/bin/python benchmarks/gpu_prelabel.py --seconds 6 [--compile]

Weights are random (speed does not depend on them); pass --sam2-checkpoint /
--fuser-checkpoint to use real ones. ``--quick`` is a CPU dry run at a tiny size (the test
suite runs it so the script cannot rot without a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_output_args,
    apply_quick,
    decoded_clips,
    finish,
    make_video,
    sync,
)
from bench_prelabel import engine_run, flops_of_runs, stage_breakdown  # noqa: E402

from auralsam2_core.inference.engine import PrelabelOptions  # noqa: E402
from auralsam2_core.media.video import probe  # noqa: E402
from auralsam2_core.modeling.build import build_auralsam2  # noqa: E402


def _peak_gib(device) -> float:
    """Peak GPU memory allocated by torch; on a CPU dry run, the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2_hiera_l")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--clip-len", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the image encoder and the fuser")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--breakdown", action="store_true",
                   help="one more pass with per-stage timing hooks (synchronising)")
    p.add_argument("--profile-ops", type=int, default=0, metavar="N",
                   help="one more pass under torch.profiler: device time per engine stage and "
                        "the N ops that take the most (what to attack next)")
    p.add_argument("--fuser-config", help="JSON fuser config (default: the authors')")
    p.add_argument("--sam2-checkpoint")
    p.add_argument("--fuser-checkpoint")
    add_output_args(p)
    args = apply_quick(p, {
        "config": "sam2.1_hiera_t", "size": 64, "seconds": 0.4, "fps": 10, "device": "cpu",
        "compile_backend": "eager", "fuser_config": '{"f_depths": [1, 1, 1]}'})
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"gpu_prelabel.py needs a CUDA GPU: torch {torch.__version__} "
                 f"(CUDA build: {torch.version.cuda or 'no'}) sees none")

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    t0 = time.perf_counter()
    fuser_config = json.loads(args.fuser_config) if args.fuser_config else None
    model = build_auralsam2(args.config, image_size=args.size, device=device,
                            fuser_config=fuser_config, sam2_checkpoint=args.sam2_checkpoint,
                            fuser_checkpoint=args.fuser_checkpoint)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    dtype = "bf16" if device.type == "cuda" else "fp32"
    print(f"{name} {args.config} {args.size}px {dtype} compile={args.compile} "
          f"(model built in {time.perf_counter() - t0:.0f} s)", flush=True)
    video = make_video(Path(tempfile.gettempdir()) / f"gpu_{args.seconds:g}s_{args.fps}fps.mp4",
                       args.seconds, args.fps, size=(1280, 720) if not args.quick else (128, 96))
    info = probe(video)
    shape = (info.height, info.width)
    opts = PrelabelOptions(clip_len=args.clip_len)

    t0 = time.perf_counter()
    n_dec = sum(len(b) for b, _ in decoded_clips(video, args.size, args.clip_len))
    decode_fps = n_dec / (time.perf_counter() - t0)
    print(f"decode + scale alone (uint8 clips): {decode_fps:.1f} frames/s "
          f"({info.width}x{info.height} -> {args.size}px)", flush=True)

    gflop = flops_of_runs(model, video, opts, shape)  # before compiling (eager FLOPs)
    share = gflop["fuser_with_audio"] / gflop["plain_sam2"]
    print("GFLOP per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in gflop.items())
          + f"; fuser FLOP share {share:.4f}", flush=True)

    parts = None
    if args.breakdown:  # eager, before compiling: hooks inside compiled modules do not fire
        engine_run(model, video, opts)  # warm-up
        parts = stage_breakdown(model, video, opts)
        print("engine time split (eager): "
              + ", ".join(f"{k} {v:.0%}" for k, v in parts.items()), flush=True)
    if args.compile:
        model.sam2.image_encoder.compile(dynamic=False, backend=args.compile_backend)
        model.fuser.compile(dynamic=False, backend=args.compile_backend)
    from _common import plain_sam2_prelabel

    t0 = time.perf_counter()
    engine_run(model, video, opts)  # warm-up (compilation happens here)
    plain_sam2_prelabel(model, video, opts.clip_len, shape)
    print(f"warm-up{' and compilation' if args.compile else ''}: "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    _reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    n = engine_run(model, video, opts)
    t_aural = time.perf_counter() - t0
    peak_aural = _peak_gib(device)
    memory = "peak GPU memory allocated" if device.type == "cuda" else "CPU dry run: peak RSS"
    print(f"AuralSAM2 engine: {n / t_aural:.2f} frames/s, {memory} {peak_aural:.2f} GiB",
          flush=True)
    _reset_peak(device)
    t0 = time.perf_counter()
    plain_sam2_prelabel(model, video, opts.clip_len, shape)
    sync(device)
    t_plain = time.perf_counter() - t0
    peak_plain = _peak_gib(device)
    print(f"plain SAM2: {n / t_plain:.2f} frames/s, {memory} {peak_plain:.2f} GiB",
          flush=True)
    overhead = t_aural / t_plain - 1
    profile = op_profile(model, video, opts, args.profile_ops) if args.profile_ops else None
    finish(args, {"overhead": overhead, "flop_share": share,
                  "overhead_over_flop_share": overhead / share},
           {"engine_fps": "goal >= 50 on one H100 with bf16 + compile",
            "peak_memory_gib": memory, "overhead_over_flop_share": "target <= 1.05"},
           figures={"engine_fps": n / t_aural, "plain_sam2_fps": n / t_plain,
                    "decode_fps": decode_fps, "peak_memory_gib": peak_aural},
           device_name=name, dtype=dtype, compile=args.compile, frames=n,
           gflop_per_frame=gflop, peak_memory_gib_plain=peak_plain, time_split=parts,
           op_profile=profile)


#: The engine's calls on the model, named as the stages of bench_prelabel's time split.
STAGES = {"encode_images": "encoder", "query_features": "audio_encoder + fuser",
          "track_features": "tracking"}


def op_profile(model, video, opts, top: int) -> dict:
    """One engine pass under torch.profiler (after timing: it slows the run). Prints and
    returns the device time (CUDA; CPU on a dry run) per stage, marked with record_function
    around the engine's calls on the model, and the ``top`` ops by their own device time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = model.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def marked(name, fn):
        def call(*a, **k):
            with record_function(name):
                return fn(*a, **k)
        return call

    for method, stage in STAGES.items():
        setattr(model, method, marked(f"stage: {stage}", getattr(model, method)))
    try:
        with profile(activities=activities) as prof:
            n = engine_run(model, video, opts)
            sync(model.device)
    finally:
        for method in STAGES:
            delattr(model, method)
    events = prof.key_averages()

    def total(e) -> float:  # microseconds on the device (self time for ops, total for stages)
        return e.device_time_total if cuda else e.cpu_time_total

    def own(e) -> float:
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    whole = sum(own(e) for e in events)
    stages = {e.key.removeprefix("stage: "): total(e) / n / 1e3 for e in events
              if e.key.startswith("stage: ")}
    ops = sorted((e for e in events if not e.key.startswith("stage: ")), key=own,
                 reverse=True)[:top]
    rows = [{"op": e.key, "ms_per_frame": own(e) / n / 1e3, "share": own(e) / whole,
             "calls_per_frame": e.count / n} for e in ops]
    where = "device" if cuda else "CPU (dry run)"
    print(f"op profile ({where} time per frame, one pass of {n} frames): " + ", ".join(
        f"{k} {v:.2f} ms" for k, v in stages.items()), flush=True)
    for r in rows:
        print(f"  {r['ms_per_frame']:8.3f} ms {r['share']:6.1%} {r['calls_per_frame']:7.1f} "
              f"calls  {r['op'][:90]}", flush=True)
    return {"device": where, "stages_ms_per_frame": stages, "top_ops": rows}


if __name__ == "__main__":
    main()
