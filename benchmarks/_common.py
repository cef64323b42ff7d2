"""Shared pieces of the benchmark scripts: test media, FLOP counting, the plain-SAM2 baseline,
stage timing of the real engine, and the common output format.

Every script ends its output with its headline figures (``figure <name> = <value>``: rates,
memory) and then its ratios (``ratio <name> = <value>``), one per line, each optionally followed
by a note in brackets, so that the test suite and ``report.py`` can read them; with
``--json PATH`` it also writes everything it measured to PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

PREFIXES = ("figure ", "ratio ")


def _sdpa_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    b, h, lq, d = q_shape
    lk = k_shape[-2]
    return 2 * b * h * lq * lk * (d + v_shape[-1])


# PyTorch counts no FLOPs for the CPU flash-attention kernel (docs/performance.md): register one.
with contextlib.suppress(RuntimeError, ValueError):  # already registered (a newer torch)
    register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda query, key, value, *a, out_val=None, **k: _sdpa_flops(
            query.shape if hasattr(query, "shape") else query,
            key.shape if hasattr(key, "shape") else key,
            value.shape if hasattr(value, "shape") else value))


def _linear_pointwise_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _conv_pointwise_flops(x_shape, w_shape, b_shape, padding, stride, dilation, groups, *args,
                          out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False)


# The fuser's CPU inference runs oneDNN's fused kernels (bias / GELU in the epilogue), which
# PyTorch's counter does not know: count them as the matmul / conv they are.
with contextlib.suppress(AttributeError, RuntimeError, ValueError):
    register_flop_formula(torch.ops.mkldnn._linear_pointwise)(_linear_pointwise_flops)
with contextlib.suppress(AttributeError, RuntimeError, ValueError):
    register_flop_formula(torch.ops.mkldnn._convolution_pointwise)(
        _conv_pointwise_flops)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


# ----------------------------------------------------------------------------- output format

def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--quick`` (the test suite's tiny size: seconds) and ``--json PATH``."""
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (a few seconds on 2 CPU cores): checks the script runs")
    p.add_argument("--json", metavar="PATH", help="also write all results to PATH as JSON")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own choice)")


def apply_quick(p: argparse.ArgumentParser, tiny: dict) -> argparse.Namespace:
    """Parse the arguments; with ``--quick``, the ones named in ``tiny`` that were left at
    not given on the command line take the tiny values (so ``--quick --device cuda`` still runs
    on CUDA, although ``cuda`` is ``--device``'s default)."""
    args = p.parse_args()
    if args.quick:
        given = _given_on_command_line(p)
        for k, v in tiny.items():
            if k not in given:
                setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def _given_on_command_line(p: argparse.ArgumentParser) -> set[str]:
    """The destinations the command line set, a default-valued one included."""
    saved = {a.dest: a.default for a in p._actions}
    try:
        for a in p._actions:
            a.default = argparse.SUPPRESS
        return set(vars(p.parse_args()))
    finally:
        for a in p._actions:
            a.default = saved[a.dest]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def finish(args: argparse.Namespace, ratios: dict[str, float], notes: dict[str, str] | None = None,
           *, figures: dict[str, float] | None = None, **details) -> None:
    """Print the figures, then the ratios, as the script's last lines
    (``figure|ratio <name> = <value>  (<note>)``) and write everything to ``--json``."""
    notes = notes or {}
    figures = figures or {}
    for prefix, values in zip(PREFIXES, (figures, ratios), strict=True):
        for name, value in values.items():
            note = f"  ({notes[name]})" if name in notes else ""
            print(f"{prefix}{name} = {value:.4g}{note}", flush=True)
    if getattr(args, "json", None):
        doc = {"script": Path(sys.argv[0]).name,
               "args": {k: v for k, v in vars(args).items() if k != "json"},
               "machine": machine(), "figures": figures, "ratios": ratios, "notes": notes,
               "date": time.strftime("%Y-%m-%d"), **details}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))


def parse_results(stdout: str) -> dict[str, dict[str, float]]:
    """``{"figure": {...}, "ratio": {...}}`` from the lines that end a benchmark's output."""
    found: dict[str, dict[str, float]] = {"figure": {}, "ratio": {}}
    lines = stdout.strip().splitlines()
    while lines and lines[-1].startswith(PREFIXES):
        kind, _, rest = lines.pop().partition(" ")
        name, _, value = rest.partition(" = ")
        found[kind][name] = float(value.split()[0])
    return {k: dict(reversed(v.items())) for k, v in found.items()}


def isfinite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


# ----------------------------------------------------------------------------- media

def make_video(path: Path, seconds: float, fps: int = 30, size: tuple[int, int] = (128, 128),
               sample_rate: int = 48000) -> Path:
    """A test clip written with PyAV (no ffmpeg binary needed, e.g. on a bare GPU machine):
    a moving colour pattern with a square, and a stereo tone that comes and goes."""
    import av

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    n = max(1, round(seconds * fps))
    tmp = path.with_suffix(".part.mp4")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    with av.open(str(tmp), "w") as c:
        vs = c.add_stream("libx264", rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "23"}
        aus = c.add_stream("aac", rate=sample_rate, layout="stereo")
        for i in range(n):
            rgb = np.empty((h, w, 3), np.uint8)
            rgb[..., 0] = (xx + 4 * i) % 256
            rgb[..., 1] = (yy + 2 * i) % 256
            rgb[..., 2] = 128
            cx = int((0.5 + 0.3 * math.sin(i / fps * 2)) * w)
            rgb[h // 3:h // 3 + h // 4, max(cx - w // 8, 0):cx + w // 8] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
        t = np.arange(round(seconds * sample_rate)) / sample_rate
        gate = (np.floor(t * 2) % 2 == 0).astype(np.float32)  # on half a second, off half
        tone = 0.3 * np.sin(2 * np.pi * 440 * t) * gate
        pcm = np.stack([tone, 0.5 * tone]).astype(np.float32)
        af = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="stereo")
        af.sample_rate, af.pts, af.time_base = sample_rate, 0, Fraction(1, sample_rate)
        c.mux(aus.encode(af))
        c.mux(aus.encode())
    tmp.rename(path)
    return path


def _prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run ``it`` on a background thread (as the engine decodes), ``depth`` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def run():
        try:
            for x in it:
                q.put(x)
            q.put(end)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    threading.Thread(target=run, daemon=True).start()
    while (x := q.get()) is not end:
        if isinstance(x, BaseException):
            raise x
        yield x


def decoded_clips(video, size: int, clip_len: int) -> Iterator[tuple[list, torch.Tensor]]:
    """(frames, uint8 (T, 3, S, S) clip) as the engine makes them, without threading (the
    consumer normalises on the model's device: ``engine.normalise_pixels``)."""
    from auralsam2_core.inference.engine import clip_pixels
    from auralsam2_core.media.video import iter_frames

    batch = []
    for f in iter_frames(video, size=size):
        batch.append(f)
        if len(batch) == clip_len:
            yield batch, clip_pixels(batch)
            batch = []
    if batch:
        yield batch, clip_pixels(batch)


# ----------------------------------------------------------------------------- plain SAM2

def plain_sam2_step(sam2, enc: dict, state: dict, first_index: int) -> list[torch.Tensor]:
    """SAM2's own tracking of already-encoded frames, without any prompt (the baseline)."""
    fpn = list(enc["backbone_fpn"])
    dec = sam2.sam_mask_decoder
    fpn[0], fpn[1] = dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1])
    _, feats, pos, sizes = sam2._prepare_backbone_features(
        {"backbone_fpn": fpn, "vision_pos_enc": enc["vision_pos_enc"]})
    masks = []
    for t in range(fpn[0].shape[0]):
        idx = first_index + t
        out = sam2.track_step(idx, idx == 0, [x[:, t:t + 1] for x in feats],
                              [x[:, t:t + 1] for x in pos], sizes, None, None, state,
                              1 << 30)
        bucket = "cond_frame_outputs" if idx == 0 else "non_cond_frame_outputs"
        state[bucket][idx] = out
        state["non_cond_frame_outputs"].pop(idx - 16, None)
        masks.append(out["pred_masks"])
    return masks


def plain_sam2_prelabel(model, video, clip_len: int, shape: tuple[int, int]) -> int:
    """Plain SAM2 propagation from the video file to full-resolution masks, decoding on a
    background thread like the engine: the baseline the engine's overhead is measured against.
    Returns the number of frames."""
    from auralsam2_core.inference.engine import normalise_pixels
    from auralsam2_core.modeling.model import upsample_logits

    state = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    n = 0
    with torch.inference_mode(), model._autocast():
        for batch, clip in _prefetch(decoded_clips(video, model.image_size, clip_len)):
            enc = model.encode_images(normalise_pixels(clip.to(model.device)))
            for low in plain_sam2_step(model.sam2, enc, state, n):
                (upsample_logits(low[:, :1], shape)[0, 0] > 0).cpu().numpy()
            n += len(batch)
    return n


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device="cpu") -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


# ----------------------------------------------------------------------------- engine stages

class StageTimer:
    """Splits the real engine's time into stages with hooks on the model's modules, so the
    breakdown follows whatever the engine calls (no copy of its code to rot):
    ``encoder`` (SAM2 image encoder), ``audio_encoder`` (VGGish or the tiny one),
    ``fuser`` (the AuralFuser's forward), ``tracking`` (the rest of the model's clip methods
    ``encode_images``, ``query_features`` and ``track_features``: SAM2 memory attention,
    prompted decoder, memory encoder) and ``engine_other`` (everything outside them on the
    engine's thread: audio examples, upsampling, scores).
    On CUDA each hook synchronises, so run it on a separate pass from the timed one."""

    def __init__(self, model) -> None:
        self.model = model
        self.t: dict[str, float] = dict.fromkeys(
            ("encoder", "audio_encoder", "fuser", "tracking", "engine_other"), 0.0)
        self._handles: list = []
        self._start: dict[str, float] = {}

    def _now(self) -> float:
        sync(self.model.device)
        return time.perf_counter()

    def _hook(self, module, name: str) -> None:
        def pre(*_):
            self._start[name] = self._now()

        def post(*_):
            self.t[name] += self._now() - self._start.pop(name)

        self._handles += [module.register_forward_pre_hook(pre),
                          module.register_forward_hook(post)]

    @contextlib.contextmanager
    def attached(self) -> Iterator[StageTimer]:
        m = self.model
        fuser = m.fuser
        audio = fuser.vgg if hasattr(fuser, "vgg") else fuser.audio_encoder
        self._hook(m.sam2.image_encoder, "encoder")
        self._hook(fuser, "fuser_total")
        self._hook(audio, "audio_encoder")
        self.t.setdefault("fuser_total", 0.0)
        clip_time = [0.0]
        methods = ("encode_images", "query_features", "track_features")  # what the engine calls

        def timed_method(original):
            def method(*a, **k):
                s = self._now()
                try:
                    return original(*a, **k)
                finally:
                    clip_time[0] += self._now() - s
            return method

        for name in methods:
            setattr(m, name, timed_method(getattr(m, name)))
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            total = time.perf_counter() - t0
            for name in methods:
                delattr(m, name)  # back to the class's methods
            for h in self._handles:
                h.remove()
            fuser_total = self.t.pop("fuser_total")
            # The model embeds each clip's audio once, outside the fuser's forward
            # (AuralSAM2.query_features).
            self.t["fuser"] = fuser_total
            self.t["tracking"] = (clip_time[0] - fuser_total - self.t["encoder"]
                                  - self.t["audio_encoder"])
            self.t["engine_other"] = total - clip_time[0]

    def shares(self) -> dict[str, float]:
        total = sum(self.t.values())
        return {k: v / total for k, v in self.t.items()}
