"""AuralSAM2 pre-labelling vs plain SAM2 propagation over the same frames (one run, ratios).

Prints:
- overhead = (AuralSAM2 engine time / plain SAM2 time) - 1, both from decoded file to
  full-resolution masks, same config, same device;
- the FLOP share of fuser + VGGish relative to SAM2's per-frame FLOPs (encoder + tracking),
  and overhead / FLOP share (target <= 1.05: no waste beyond the added arithmetic);
- a breakdown of the engine's time per stage (decode, audio, encoder, fuser, tracking,
  results writing), to show the bottleneck.

    .venv/bin/python benchmarks/bench_prelabel.py --config sam2.1_hiera_t --size 256 --seconds 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import count_flops, make_video, plain_sam2_step  # noqa: E402

from auralsam2_core.audio_track import AudioTrack  # noqa: E402
from auralsam2_core.build import build_auralsam2  # noqa: E402
from auralsam2_core.engine import IMAGENET_MEAN, IMAGENET_STD, prelabel  # noqa: E402
from auralsam2_core.media import iter_frames, probe  # noqa: E402
from auralsam2_core.model import upsample_logits  # noqa: E402
from auralsam2_core.results import frame_record  # noqa: E402


def _clips(video, size, clip_len):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    batch = []
    for f in iter_frames(video, size=size):
        batch.append(f)
        if len(batch) == clip_len:
            yield batch, _norm(batch, mean, std)
            batch = []
    if batch:
        yield batch, _norm(batch, mean, std)


def _norm(batch, mean, std):
    import numpy as np

    rgb = torch.from_numpy(np.stack([f.rgb for f in batch])).permute(0, 3, 1, 2).float()
    return (rgb - mean) / std


def plain_sam2(model, video, clip_len: int, shape) -> float:
    t0 = time.perf_counter()
    state = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    n = 0
    with torch.inference_mode(), model._autocast():
        for batch, clip in _clips(video, model.image_size, clip_len):
            enc = model.encode_images(clip.to(model.device))
            for low in plain_sam2_step(model.sam2, enc, state, n):
                (upsample_logits(low, shape)[0, 0] > 0).cpu().numpy()
            n += len(batch)
    return time.perf_counter() - t0


def breakdown(model, video, clip_len: int, shape) -> dict[str, float]:
    t = dict.fromkeys(("decode", "audio", "encoder", "fuser", "tracking", "write"), 0.0)
    s = time.perf_counter()
    track = AudioTrack.from_file(video)
    t["audio"] = time.perf_counter() - s
    clips = []
    s = time.perf_counter()
    for batch, clip in _clips(video, model.image_size, clip_len):
        clips.append(([f.time for f in batch], clip))
    t["decode"] = time.perf_counter() - s
    state = model.new_state()
    with torch.inference_mode(), model._autocast():
        for times, clip in clips:
            s = time.perf_counter()
            enc = model.encode_images(clip)
            t["encoder"] += time.perf_counter() - s
            s = time.perf_counter()
            lm = track.examples_at(times)
            visual, audio, _ = model.fuser(enc["backbone_fpn"], lm)
            t["fuser"] += time.perf_counter() - s
            s = time.perf_counter()
            outs = model._track(enc, visual, audio, state)
            t["tracking"] += time.perf_counter() - s
            s = time.perf_counter()
            for multi, *_ in outs:
                mask = (upsample_logits(multi[:, :1], shape)[0, 0] > 0).cpu().numpy()
                frame_record(_Fake(mask))
            t["write"] += time.perf_counter() - s
    return t


class _Fake:
    def __init__(self, mask):
        self.index, self.time, self.mask = 0, 0.0, mask
        self.sounding_prob = self.predicted_iou = self.mask_score = self.review_priority = 0.5


def flops_per_frame(model, clip_len: int) -> tuple[float, float]:
    s = model.image_size
    frames = torch.randn(clip_len, 3, s, s, device=model.device)
    lm = torch.randn(clip_len, 2, 96, 64, device=model.device)
    with torch.inference_mode():
        enc = model.encode_images(frames)
        f_enc = count_flops(lambda: model.encode_images(frames))
        f_fuser = count_flops(lambda: model.fuser(enc["backbone_fpn"], lm))
        state = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        for i in range(0, 16, clip_len):  # reach steady state (full memory bank)
            plain_sam2_step(model.sam2, enc, state, i)
        f_track = count_flops(lambda: plain_sam2_step(model.sam2, enc, state, 16))
    return f_fuser / clip_len, (f_enc + f_track) / clip_len


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--clip-len", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--video", help="use this video instead of a generated one")
    args = p.parse_args()

    torch.manual_seed(0)
    model = build_auralsam2(args.config, image_size=args.size, device=args.device)
    tmp = Path(tempfile.gettempdir()) / "auralsam2-bench"
    video = Path(args.video) if args.video else make_video(
        tmp / f"clip_{args.seconds:g}s_{args.fps}fps.mp4", args.seconds, args.fps)
    info = probe(video)
    shape = (info.height, info.width)
    from auralsam2_core.engine import PrelabelOptions

    opts = PrelabelOptions(clip_len=args.clip_len)
    list(prelabel(model, video, opts))  # warm-up
    t0 = time.perf_counter()
    n = sum(1 for _ in prelabel(model, video, opts))
    t_aural = time.perf_counter() - t0
    t_plain = plain_sam2(model, video, args.clip_len, shape)
    f_add, f_sam2 = flops_per_frame(model, args.clip_len)
    parts = breakdown(model, video, args.clip_len, shape)

    overhead = t_aural / t_plain - 1
    share = f_add / f_sam2
    print(f"device={model.device} config={args.config} size={args.size} frames={n} "
          f"({info.width}x{info.height} @ {info.fps:g} fps) T={args.clip_len}")
    print(f"AuralSAM2 engine: {n / t_aural:.1f} frames/s; plain SAM2: {n / t_plain:.1f} frames/s")
    print(f"overhead (time ratio - 1): {overhead:.3f}")
    print(f"FLOP share of fuser+VGGish: {share:.3f} ({f_add / 1e9:.2f} of "
          f"{f_sam2 / 1e9:.2f} GFLOP per frame)")
    print(f"overhead / FLOP share: {overhead / share:.2f} (target <= 1.05)")
    total = sum(parts.values())
    print("breakdown: " + ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
