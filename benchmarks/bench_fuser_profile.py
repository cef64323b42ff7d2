"""Where the AuralFuser's time goes compared with its arithmetic, and what threads do
(issue #16, point 2: profile before optimising).

On one clip of ``T`` frames (random weights, random inputs) it measures, in one run:
- per fuser component (patch embeds, visual block attention / MLP / depthwise conv, audio
  blocks, fusion, audio encoder...): share of the fuser's time, GFLOP, and GFLOP/s relative to
  the SAM2 image encoder's GFLOP/s (1.0 = as efficient as the encoder; lower = waste);
- the share of the fuser's time spent in ops that do no arithmetic (copies, layout changes,
  dtype conversions, concatenations), from ``torch.profiler``;
- AuralSAM2's tracking (prompted decoder, memory) against plain SAM2 tracking of the same
  frames: the prompts add almost no FLOPs, so a ratio above 1 is overhead to remove;
- intra-op thread scaling of the encoder, the fuser and tracking (1 thread vs all).

    .venv/bin/python benchmarks/bench_fuser_profile.py --config sam2.1_hiera_t --size 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_args, apply_quick, finish, plain_sam2_step  # noqa: E402

from auralsam2_core.modeling.build import build_auralsam2  # noqa: E402

#: ops that move or convert data without arithmetic
LAYOUT_OPS = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::to",
              "aten::_to_copy", "aten::stack", "aten::expand", "aten::permute",
              "aten::transpose", "aten::reshape", "aten::view", "aten::flatten",
              "aten::_unsafe_view", "aten::empty", "aten::empty_like", "aten::as_strided")


def _components(fuser) -> dict[str, list[torch.nn.Module]]:
    """Fuser parts to time (leaf-level groups that do not nest in one another)."""
    audio = fuser.vgg if hasattr(fuser, "vgg") else fuser.audio_encoder
    parts: dict[str, list] = defaultdict(list)
    parts["audio_encoder"].append(audio)
    parts["patch_embeds"] += list(fuser.patch_embeds)
    parts["smooth_convs"] += list(fuser.smooth_convs)
    parts["fusion"] += list(fuser.fusion_modules)
    for level in fuser.f_blocks:
        for blk in level:
            parts["visual_norms"] += [blk.norm1, blk.norm2]
            parts["visual_attention"].append(blk.attn)
            parts["visual_mlp_linear"] += [blk.mlp.fc1, blk.mlp.fc2]
            # GELU runs inside the depthwise conv's kernel on CPU inference: one group.
            parts["visual_mlp_dwconv_gelu"] += [blk.mlp.dwconv, blk.mlp.act]
    for level in fuser.a_blocks:
        parts["audio_blocks"] += list(level)
    return dict(parts)


@contextlib.contextmanager
def _timed_modules(groups: dict[str, list[torch.nn.Module]]):
    times: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []
    for name, mods in groups.items():
        for m in mods:
            def pre(mod, *_):
                starts[id(mod)] = time.perf_counter()

            def post(mod, *_, name=name):
                times[name] += time.perf_counter() - starts.pop(id(mod))
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield times
    finally:
        for h in handles:
            h.remove()


def _flops_by_group(fn, fuser, groups) -> dict[str, float]:
    names = {id(m): n for n, m in fuser.named_modules()}
    with FlopCounterMode(display=False) as fc:
        fn()
    counts = fc.get_flop_counts()
    root = type(fuser).__name__
    out = {}
    for group, mods in groups.items():
        total = 0
        for m in mods:
            key = f"{root}.{names[id(m)]}"
            total += sum(counts.get(key, {}).values())
        out[group] = total / 1e9
    out["total"] = sum(counts.get(root, {}).values()) / 1e9
    return out


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--clip-len", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fuser-config", help="JSON fuser config (default: the authors')")
    add_output_args(p)
    args = apply_quick(p, {"size": 64, "repeats": 1, "clip_len": 2,
                           "fuser_config": '{"f_depths": [1, 1, 1]}'})
    torch.manual_seed(0)
    fuser_config = json.loads(args.fuser_config) if args.fuser_config else None
    model = build_auralsam2(args.config, image_size=args.size, fuser_config=fuser_config,
                            device="cpu")
    t_len, s = args.clip_len, args.size
    frames = torch.randn(t_len, 3, s, s)
    lm = torch.randn(t_len, 2, 96, 64)
    threads = torch.get_num_threads()
    fuser = model.fuser
    groups = _components(fuser)
    ratios, notes, details = {}, {}, {}
    with torch.inference_mode():
        enc = model.encode_images(frames)
        fpn = enc["backbone_fpn"]

        def run_fuser():
            return fuser(fpn, lm)

        def run_encoder():
            return model.encode_images(frames)

        visual, audio, _ = run_fuser()

        def run_aural_tracking():
            return model.track_clips(enc, [v[None] for v in visual], [d[None] for d in audio],
                                     model.new_state())

        def run_plain_tracking():
            return plain_sam2_step(model.sam2, enc, {"cond_frame_outputs": {},
                                                     "non_cond_frame_outputs": {}}, 0)

        t = {}
        for n_threads in sorted({1, threads}):
            torch.set_num_threads(n_threads)
            t[n_threads] = {name: _best(fn, args.repeats) for name, fn in (
                ("encoder", run_encoder), ("fuser", run_fuser),
                ("aural_tracking", run_aural_tracking), ("plain_tracking", run_plain_tracking))}
        torch.set_num_threads(threads)
        tt = t[threads]
        gflop_enc = FlopCounterMode(display=False)
        with gflop_enc:
            run_encoder()
        enc_rate = gflop_enc.get_total_flops() / 1e9 / tt["encoder"]
        gflop = _flops_by_group(run_fuser, fuser, groups)

        run_fuser()
        with _timed_modules(groups) as times:
            t0 = time.perf_counter()
            run_fuser()
            fuser_time = time.perf_counter() - t0

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run_fuser()
        events = prof.key_averages()
        self_total = sum(e.self_cpu_time_total for e in events)
        layout = sum(e.self_cpu_time_total for e in events if e.key in LAYOUT_OPS)
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]

    print(f"config={args.config} size={s} T={t_len} threads={threads}; encoder "
          f"{enc_rate:.1f} GFLOP/s, fuser {gflop['total'] / tt['fuser']:.1f} GFLOP/s")
    print(f"{'component':20s} {'time':>6s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'vs encoder':>10s}")
    comp = {}
    for name in groups:
        sec = times.get(name, 0.0)
        rate = gflop[name] / sec if sec else float("nan")
        comp[name] = {"time_share": sec / fuser_time, "gflop": gflop[name],
                      "efficiency_vs_encoder": rate / enc_rate}
        print(f"{name:20s} {sec / fuser_time:6.1%} {gflop[name]:8.2f} {rate:8.1f} "
              f"{rate / enc_rate:10.2f}")
    rest = fuser_time - sum(times.values())
    print(f"{'(rest of fuser)':20s} {rest / fuser_time:6.1%}")
    print("fuser's top ops by self CPU time: " + ", ".join(
        f"{e.key} {e.self_cpu_time_total / self_total:.0%}" for e in top))
    for n_threads, row in t.items():
        print(f"{n_threads} thread(s): " + ", ".join(f"{k} {v / t_len * 1e3:.1f} ms/frame"
                                                      for k, v in row.items()))
    ratios["fuser_efficiency_vs_encoder"] = gflop["total"] / tt["fuser"] / enc_rate
    notes["fuser_efficiency_vs_encoder"] = "GFLOP/s of the fuser / of the image encoder"
    ratios["fuser_layout_op_share"] = layout / self_total
    notes["fuser_layout_op_share"] = "fuser time in copies / layout / dtype ops"
    ratios["tracking_over_plain_tracking"] = tt["aural_tracking"] / tt["plain_tracking"]
    notes["tracking_over_plain_tracking"] = "AuralSAM2 tracking / plain SAM2 tracking"
    if threads > 1:
        for name in ("encoder", "fuser", "aural_tracking"):
            ratios[f"{name}_thread_speedup"] = t[1][name] / tt[name]
        notes["encoder_thread_speedup"] = f"time at 1 thread / at {threads}"
    details.update(components=comp, seconds_per_clip=t,
                   top_ops={e.key: e.self_cpu_time_total / self_total for e in top},
                   encoder_gflops_per_s=enc_rate)
    finish(args, ratios, notes, **details)


if __name__ == "__main__":
    main()
