"""Deterministic synthetic sounding-object clips (video + stereo audio + ground-truth masks).

Why: every part of the project (model, plugins, training demo) needs clips whose sounding
objects are known exactly, without downloading a dataset. Each clip shows 2-3 moving shapes;
every shape has its own sound, so a model can only solve the task by tying *sound to shape*:

===========  =================================================  ====================
shape        sound signature                                    dominant frequency
===========  =================================================  ====================
``disc``     tone A: ~450 Hz with harmonics (1, 1/2, 1/4, 1/8)   ~450 Hz
``square``   tone B: ~1 kHz square-ish (odd harmonics, 1/n)      ~1 kHz
``triangle`` tone C: buzz, ~2.5 kHz carrier + band noise, AM    ~2.5 kHz
===========  =================================================  ====================

Colours, sizes, pitch (+-4 %), loudness, motion and background are random per clip, so
neither colour nor size gives the answer away. Objects overlap freely; the object drawn on top
wins the pixel and ``object_masks`` hold *visible* pixels only (an occluded object's mask
shrinks, possibly to empty). Audio pans (constant power) with the object's horizontal position.

With ``colours="named"`` (the Ref-AVS demo) each object instead takes a distinct colour from
:data:`COLOUR_NAMES` (slightly jittered), so an expression can name it: "the red triangle"
(:func:`referring_expression`). The ``"all"`` schedule makes every object sound throughout.

Everything is a pure function of the seed: ``make_clip(seed)`` gives identical arrays on every
call. Frames depend only on ``(seed, size, fps, seconds, num_objects)``; the ``schedule`` draws
from its own random stream, so the same seed with another schedule shows the same video.

Writing (``write_clip``) uses PyAV: H.264 ``yuv420p`` video plus AAC audio in one mp4. H.264
4:2:0 needs even width and height: odd sizes are padded by one row / column at the bottom /
right (edge pixels repeated) and the PNG masks get the same padding (zeros), so video and
masks always align; ``meta.json`` records the clip's own ``size`` and the ``video_size``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = [
    "COLOUR_NAMES",
    "SHAPES",
    "SIGNATURE_HZ",
    "SCHEDULES",
    "SyntheticClip",
    "clip_meta",
    "make_clip",
    "make_dataset",
    "referring_expression",
    "silence",
    "swap_audio",
    "write_clip",
]

SHAPES: tuple[str, ...] = ("disc", "square", "triangle")
"""Shape names; the shape fixes the object's sound (see the module docstring)."""

SIGNATURE_HZ: dict[str, float] = {"disc": 450.0, "square": 1000.0, "triangle": 2500.0}
"""Nominal dominant frequency of each shape's sound (per-clip pitch jitter is +-4 %)."""

SCHEDULES = ("mixed", "one", "silent", "all")

#: Named colours (``colours="named"``): RGB centres, jittered by up to +-12 per channel.
COLOUR_NAMES: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (40, 170, 60), "blue": (35, 75, 215),
    "yellow": (235, 215, 40), "orange": (245, 135, 25), "purple": (135, 55, 185),
    "white": (245, 245, 245), "black": (20, 20, 20)}
_COLOUR_JITTER = 12

_RADIUS_RANGE = (0.09, 0.16)  # equal-area disc radius, as a fraction of min(H, W)
_PITCH_JITTER = 0.04
_OBJECT_GAIN = 0.3  # per-object peak before panning: 3 objects at once stay below 1
_FADE_S = 0.01  # on/off ramps, so switching a sound does not click
_MIN_COLOUR_DIST = 90.0  # RGB distance of every object colour from the background base colour


@dataclass
class _Scene:
    """Everything random about a clip, so audio can be re-rendered (swap / silence) exactly."""

    seed: int
    shapes: list[str]
    radius: np.ndarray  # (K,) equal-area radius in pixels
    colours: np.ndarray  # (K, 3) uint8
    order: np.ndarray  # (K,) draw order, bottom first
    motion: np.ndarray  # (K, 2 axes, 2 terms, 2 (freq Hz, phase)) smooth trajectory
    spin: np.ndarray  # (K, 2) (angle at t=0, angular velocity rad/s)
    pitch: np.ndarray  # (K,) fundamental / carrier Hz
    gain: np.ndarray  # (K,) loudness
    audio_seed: int
    noise_level: float
    colour_names: list[str] | None = None  # with colours="named"


@dataclass
class SyntheticClip:
    """One synthetic clip held in memory.

    ``sounding[k, t]`` means object ``k``'s sound is on during frame ``t``'s interval
    ``[t / fps, (t + 1) / fps)``; the audio covers exactly ``T / fps`` seconds.
    """

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    audio: np.ndarray  # (2, S) float32 in [-1, 1]
    sample_rate: int
    fps: float
    object_masks: np.ndarray  # (K, T, H, W) bool, visible pixels of each object
    sounding: np.ndarray  # (K, T) bool, whether object k sounds at frame t
    shapes: list[str]  # shape name per object
    seed: int = -1
    schedule: str = "mixed"
    variant: str = "original"  # "original", "swap:<k>" or "silence"
    scene: _Scene | None = field(default=None, repr=False)

    @property
    def sounding_mask(self) -> np.ndarray:
        """(T, H, W) bool union of the sounding objects' visible masks: the AVS ground truth."""
        return (self.object_masks & self.sounding[:, :, None, None]).any(axis=0)

    @property
    def colour_names(self) -> list[str] | None:
        """Colour name per object (clips made with ``colours="named"``), else None."""
        return None if self.scene is None else self.scene.colour_names

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def centres(self) -> np.ndarray:
        """(K, T, 2) object centres (x, y) in pixels at each frame time (handy for tests)."""
        assert self.scene is not None
        t = np.arange(self.num_frames) / self.fps
        h, w = self.frames.shape[1:3]
        return _centres(self.scene, t, h, w)


# --------------------------------------------------------------------------- scene sampling


def _random_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A uniform random colour far enough from ``avoid`` to be visible (bounded rejection)."""
    c = rng.integers(0, 256, 3)
    for _ in range(32):
        if np.linalg.norm(c - avoid) >= _MIN_COLOUR_DIST:
            break
        c = rng.integers(0, 256, 3)
    else:  # pragma: no cover - practically unreachable; push away deterministically
        c = np.where(avoid < 128, 255, 0)
    return c.astype(np.uint8)


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain colour (half the clips) or the same colour with a low-contrast grating texture."""
    base = rng.integers(0, 256, 3).astype(np.float32)
    textured = rng.random() < 0.5
    amp = rng.uniform(6.0, 18.0, 3).astype(np.float32)
    kx, ky = rng.uniform(-6.0, 6.0, 2)
    kx2, ky2 = rng.uniform(-12.0, 12.0, 2)
    ph = rng.uniform(0, 2 * np.pi, 2)
    if not textured:
        img = np.broadcast_to(base, (h, w, 3))
    else:
        y = (np.arange(h, dtype=np.float32) / max(h, w))[:, None]
        x = (np.arange(w, dtype=np.float32) / max(h, w))[None, :]
        g = 0.65 * np.sin(2 * np.pi * (kx * x + ky * y) + ph[0])
        g += 0.35 * np.sin(2 * np.pi * (kx2 * x + ky2 * y) + ph[1])
        img = base + g[:, :, None] * amp
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), base


def _named_colours(rng: np.random.Generator, k: int, avoid: np.ndarray
                   ) -> tuple[list[str], np.ndarray]:
    """``k`` distinct named colours, those far from the background first."""
    names = list(COLOUR_NAMES)
    far = [n for n in names if np.linalg.norm(np.array(COLOUR_NAMES[n]) - avoid)
           >= _MIN_COLOUR_DIST]
    pool = far if len(far) >= k else names
    picked = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
    base = np.array([COLOUR_NAMES[n] for n in picked], dtype=np.int64)
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, (k, 3))
    return picked, np.clip(base + jitter, 0, 255).astype(np.uint8)


def _sample_scene(seed: int, num_objects: int | None, h: int, w: int, noise_level: float,
                  colours: str = "random", shapes: Sequence[str] | None = None):
    ss = np.random.SeedSequence(seed)
    scene_ss, schedule_ss, audio_ss = ss.spawn(3)
    rng = np.random.default_rng(scene_ss)
    k = int(rng.integers(2, 4)) if num_objects is None else int(num_objects)
    if not 1 <= k <= len(SHAPES):
        raise ValueError(f"num_objects must be 1..{len(SHAPES)} (or None), got {num_objects}")
    bg, base = _background(rng, h, w)
    drawn = [SHAPES[i] for i in rng.choice(len(SHAPES), size=k, replace=False)]
    # Given shapes replace the drawn ones (in the drawn order's places), nothing else changes.
    shapes = drawn if shapes is None else list(shapes)
    radius = rng.uniform(*_RADIUS_RANGE, size=k) * min(h, w)
    colour_names = None
    if colours == "named":
        colour_names, rgb = _named_colours(rng, k, base)
    else:
        rgb = np.stack([_random_colour(rng, base) for _ in range(k)])
    order = rng.permutation(k)
    # Slow + faster term; peak speed <= 2 pi (0.35 * 0.25 + 0.15 * 0.5) ~ 1 travel range / s.
    freq = np.stack([rng.uniform(0.05, 0.25, (k, 2)), rng.uniform(0.15, 0.5, (k, 2))], axis=2)
    phase = rng.uniform(0, 2 * np.pi, (k, 2, 2))
    motion = np.stack([freq, phase], axis=3)  # (K, axis, term, (f, phase))
    spin = np.stack([rng.uniform(0, 2 * np.pi, k), rng.uniform(-1.0, 1.0, k)], axis=1)
    jitter = rng.uniform(1 - _PITCH_JITTER, 1 + _PITCH_JITTER, k)
    pitch = np.array([SIGNATURE_HZ[s] for s in shapes]) * jitter
    gain = rng.uniform(0.7, 1.0, k)
    audio_seed = int(np.random.default_rng(audio_ss).integers(2**63))
    scene = _Scene(seed, shapes, radius, rgb, order, motion, spin, pitch, gain, audio_seed,
                   float(noise_level), colour_names)
    return scene, bg, np.random.default_rng(schedule_ss)


def _trajectory(scene: _Scene, t: np.ndarray) -> np.ndarray:
    """(K, 2, N) positions in [0, 1]: two slow sinusoids per axis, so the motion is smooth."""
    f = scene.motion[..., 0][..., None]  # (K, 2, 2, 1)
    ph = scene.motion[..., 1][..., None]
    s = np.sin(2 * np.pi * f * t + ph)  # (K, axis, term, N)
    return 0.5 + 0.35 * s[:, :, 0] + 0.15 * s[:, :, 1]


def _centres(scene: _Scene, t: np.ndarray, h: int, w: int) -> np.ndarray:
    """(K, N, 2) pixel centres (x, y); a margin of the shape's extent keeps objects in frame."""
    u = _trajectory(scene, t)  # (K, 2, N)
    ext = np.minimum(scene.radius * 1.2, 0.45 * min(h, w))[:, None]  # covers every shape
    x = ext + u[:, 0] * (w - 1 - 2 * ext)
    y = ext + u[:, 1] * (h - 1 - 2 * ext)
    return np.stack([x, y], axis=-1)


# --------------------------------------------------------------------------- drawing


def _shape_masks(scene: _Scene, t: np.ndarray, h: int, w: int) -> np.ndarray:
    """(K, T, H, W) bool full (unoccluded) masks, vectorised over frames and pixels."""
    centres = _centres(scene, t, h, w).astype(np.float32)  # (K, T, 2)
    ys = np.arange(h, dtype=np.float32)[None, :, None]
    xs = np.arange(w, dtype=np.float32)[None, None, :]
    out = np.empty((len(scene.shapes), t.size, h, w), dtype=bool)
    for k, shape in enumerate(scene.shapes):
        dx = xs - centres[k, :, 0, None, None]  # (T, 1, W)
        dy = ys - centres[k, :, 1, None, None]  # (T, H, 1)
        r = float(scene.radius[k])
        if shape == "disc":
            out[k] = dx * dx + dy * dy <= r * r
            continue
        ang = (scene.spin[k, 0] + scene.spin[k, 1] * t).astype(np.float32)[:, None, None]
        if shape == "square":  # equal area to the disc: half side r * sqrt(pi) / 2
            c, s = np.cos(ang), np.sin(ang)
            half = r * np.sqrt(np.pi) / 2
            out[k] = np.maximum(np.abs(dx * c + dy * s), np.abs(dy * c - dx * s)) <= half
        else:  # equilateral triangle of equal area; inside <=> within the inradius of all edges
            circ = r * np.sqrt(4 * np.pi / (3 * np.sqrt(3)))
            inside = None
            for i in range(3):
                a = ang + np.float32(np.pi / 3 + 2 * np.pi * i / 3)
                e = dx * np.cos(a) + dy * np.sin(a) <= circ / 2
                inside = e if inside is None else inside & e
            out[k] = inside
    return out


def _render(scene: _Scene, bg: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames and visible masks: draw bottom-to-top, then peel each mask by those above it."""
    h, w = bg.shape[:2]
    full = _shape_masks(scene, t, h, w)
    frames = np.repeat(bg[None], t.size, axis=0)
    for k in scene.order:
        frames[full[k]] = scene.colours[k]
    visible = np.empty_like(full)
    covered = np.zeros(full.shape[1:], dtype=bool)
    for k in scene.order[::-1]:  # top first
        np.logical_and(full[k], ~covered, out=visible[k])
        covered |= full[k]
    return frames, visible


# --------------------------------------------------------------------------- schedules


def _schedule(rng: np.random.Generator, kind: str, k: int, t: int) -> np.ndarray:
    """(K, T) on/off table. "mixed": random segments, each silent (~30 %) or with 1-2 sounders."""
    table = np.zeros((k, t), dtype=bool)
    if kind == "silent":
        return table
    if kind == "all":
        table[:] = True
        return table
    if kind == "one":
        table[int(rng.integers(k))] = True
        return table
    if kind != "mixed":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    start = 0
    max_len = max(1, t // 3)
    while start < t:
        n = int(rng.integers(1, max_len + 1))
        if rng.random() >= 0.3:
            size = 1 if (k == 1 or rng.random() < 0.7) else 2
            table[rng.choice(k, size=size, replace=False), start : start + n] = True
        start += n
    if not table.any():  # "mixed" always has sound somewhere; force one random segment on
        a = int(rng.integers(t))
        table[int(rng.integers(k)), a : a + max_len] = True
    return table


# --------------------------------------------------------------------------- audio


def _sin(freq: float, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    """(n,) float32 ``sin(2 pi freq t + phase)``, fast and accurate for long clips.

    float32 ``sin`` is ~30x faster than float64 here, but a float32 phase loses precision after
    a few seconds; so the phase is split into per-block offsets (float64, wrapped) plus a short
    in-block ramp (float32).
    """
    block = 1024
    c = freq / sr  # cycles per sample
    nb = -(-n // block)
    off = np.mod(np.arange(nb) * (block * c) + phase / (2 * np.pi), 1.0).astype(np.float32)
    ramp = np.arange(block, dtype=np.float32) * np.float32(c)
    cycles = (off[:, None] + ramp[None, :]).reshape(-1)[:n]
    return np.sin(np.float32(2 * np.pi) * cycles)


def _signature(shape: str, f0: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32, the shape's sound at peak 1; partials above 0.45 * sr are dropped."""
    ph = float(rng.uniform(0, 2 * np.pi))
    if shape in ("disc", "square"):
        parts = [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.125)] if shape == "disc" else [
            (1, 1.0), (3, 1 / 3), (5, 1 / 5), (7, 1 / 7)]
        x = np.zeros(n, dtype=np.float32)
        for m, a in parts:
            if m * f0 < 0.45 * sr:
                x += np.float32(a) * _sin(m * f0, n, sr, m * ph)
    else:  # buzz: carrier + band noise (+-250 Hz, made in the frequency domain), AM ~25 Hz
        freqs = np.fft.rfftfreq(n, 1 / sr)
        band = np.abs(freqs - f0) <= 250.0
        spec = np.zeros(freqs.size, dtype=np.complex128)
        spec[band] = rng.standard_normal(band.sum()) + 1j * rng.standard_normal(band.sum())
        noise = np.fft.irfft(spec, n).astype(np.float32)
        noise /= np.abs(noise).max() + 1e-12
        am = 0.55 + 0.45 * _sin(float(rng.uniform(20.0, 30.0)), n, sr)
        x = am * (0.7 * _sin(f0, n, sr, ph) + 0.5 * noise)
    return x / (np.abs(x).max() + np.float32(1e-12))


def _envelope(on: np.ndarray, n: int, fps: float, sr: int) -> np.ndarray:
    """(n,) float32 per-sample on/off from a per-frame table, with ~10 ms linear ramps centred
    on each switch (and at the clip's ends), so switching a sound never clicks."""
    idx = np.minimum((np.arange(n) * fps / sr).astype(np.int64), on.size - 1)
    env = on[idx].astype(np.float32)
    m = max(2, int(round(_FADE_S * sr)))
    levels = np.concatenate([[False], on, [False]]).astype(np.float32)
    for j in np.flatnonzero(levels[1:] != levels[:-1]):  # switch before frame j (j = T: end)
        b = min(int(round(j * sr / fps)), n)
        lo = max(0, min(b - m // 2, n - m))
        ramp = (np.arange(m, dtype=np.float32) + 0.5) / m
        a, z = levels[j], levels[j + 1]
        env[lo : lo + m] = a + (z - a) * ramp
    return env


def _render_audio(scene: _Scene, sounding: np.ndarray, *, sources: np.ndarray, h: int, w: int,
                  fps: float, sr: int, n: int) -> np.ndarray:
    """(2, n) float32 mix. ``sources[k]``: whose signature object ``k`` plays (itself normally).

    The pan follows the *sounding* object's position, so a swapped sound comes from the new
    object. Deterministic: per-object random parts come from the scene's audio seed.
    """
    root = np.random.SeedSequence(scene.audio_seed)
    obj_ss = root.spawn(len(scene.shapes) + 1)
    mix = np.zeros((2, n), dtype=np.float32)
    # Pan positions at a 100 Hz control rate, linearly interpolated (smooth and cheap).
    tc = np.arange(int(np.ceil(n / sr * 100)) + 2) / 100.0
    xc = _centres(scene, tc, h, w)[:, :, 0] / max(w - 1, 1)  # (K, Nc) in [0, 1]
    t = np.arange(n) / sr
    for k in range(len(scene.shapes)):
        if not sounding[k].any():
            continue
        src = int(sources[k])
        rng = np.random.default_rng(obj_ss[src])
        sig = _signature(scene.shapes[src], float(scene.pitch[src]), n, sr, rng)
        sig *= _envelope(sounding[k], n, fps, sr) * np.float32(_OBJECT_GAIN * scene.gain[src])
        theta = np.interp(t, tc, xc[k]).astype(np.float32) * np.float32(np.pi / 2)
        mix[0] += sig * np.cos(theta)  # constant-power pan: x = 0 hard left, x = 1 hard right
        mix[1] += sig * np.sin(theta)
    if scene.noise_level > 0:
        noise = np.random.default_rng(obj_ss[-1]).standard_normal((2, n), dtype=np.float32)
        mix += np.float32(scene.noise_level) * noise
    peak = float(np.abs(mix).max())
    if peak > 0.95:  # never clip (rare: gains are chosen so it is not needed)
        mix *= np.float32(0.95 / peak)
    return mix


# --------------------------------------------------------------------------- public API


def make_clip(seed: int, *, size: tuple[int, int] = (128, 128), fps: float = 5.0,
              seconds: float = 2.0, sample_rate: int = 16000, num_objects: int | None = None,
              schedule: str = "mixed", noise_level: float = 0.002,
              colours: str = "random", shapes: Sequence[str] | None = None) -> SyntheticClip:
    """Generate one clip, deterministically from ``seed``.

    ``size`` is ``(H, W)``; ``T = max(1, round(seconds * fps))`` frames and exactly
    ``round(T / fps * sample_rate)`` audio samples (audio and video end together).
    ``num_objects``: 1-3, ``None`` picks 2 or 3 from the seed; objects have distinct shapes.
    ``schedule``: ``"mixed"`` (objects turn on and off, often with silent stretches; never
    silent throughout), ``"one"`` (one object, chosen by the seed, sounds in every frame) or
    ``"silent"`` or ``"all"`` (every object sounds in every frame). ``noise_level``: std of the
    light, deterministic background noise. ``colours``: ``"random"`` RGB or ``"named"``
    (distinct colours of :data:`COLOUR_NAMES`, for referring expressions). ``shapes``: these
    shapes (distinct, in this order) instead of those the seed draws (each with its own
    sound; sizes, colours and motion from the seed, as for ``num_objects=len(shapes)``).
    """
    h, w = int(size[0]), int(size[1])
    if shapes is not None:
        if len(set(shapes)) != len(shapes) or not set(shapes) <= set(SHAPES) or not shapes:
            raise ValueError(f"shapes must be distinct ones of {SHAPES}, got {shapes!r}")
        if num_objects is not None and num_objects != len(shapes):
            raise ValueError(f"{len(shapes)} shapes but num_objects={num_objects}")
        num_objects = len(shapes)
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8x8, got {size}")
    if fps <= 0 or seconds <= 0 or sample_rate < 8000:
        raise ValueError("fps and seconds must be positive and sample_rate >= 8000")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if colours not in ("random", "named"):
        raise ValueError(f"colours must be 'random' or 'named', got {colours!r}")
    num_t = max(1, int(round(seconds * fps)))
    n = int(round(num_t / fps * sample_rate))
    scene, bg, sched_rng = _sample_scene(int(seed), num_objects, h, w, noise_level, colours,
                                         shapes)
    t = np.arange(num_t) / fps
    frames, masks = _render(scene, bg, t)
    k = len(scene.shapes)
    sounding = _schedule(sched_rng, schedule, k, num_t)
    audio = _render_audio(scene, sounding, sources=np.arange(k), h=h, w=w, fps=fps,
                          sr=sample_rate, n=n)
    return SyntheticClip(frames, audio, int(sample_rate), float(fps), masks, sounding,
                         list(scene.shapes), int(seed), schedule, "original", scene)


def swap_audio(clip: SyntheticClip, other_object: int) -> SyntheticClip:
    """Same frames; the audio becomes ``other_object``'s own sound, on whenever *any* object
    sounded in ``clip`` (same on/off times), panned with ``other_object``. The ground truth
    follows: only ``other_object`` sounds. Why: a model that ignores audio cannot pass both.
    """
    k = len(clip.shapes)
    if not 0 <= other_object < k:
        raise ValueError(f"other_object must be in 0..{k - 1}, got {other_object}")
    if clip.scene is None:
        raise ValueError("swap_audio needs a clip made by make_clip (it re-renders the audio)")
    sounding = np.zeros_like(clip.sounding)
    sounding[other_object] = clip.sounding.any(axis=0)
    h, w = clip.frames.shape[1:3]
    audio = _render_audio(clip.scene, sounding, sources=np.arange(k), h=h, w=w, fps=clip.fps,
                          sr=clip.sample_rate, n=clip.audio.shape[1])
    return replace(clip, audio=audio, sounding=sounding, variant=f"swap:{other_object}")


def silence(clip: SyntheticClip) -> SyntheticClip:
    """Same frames, silent audio (only the light noise floor) and empty ground truth."""
    audio = np.zeros_like(clip.audio)
    if clip.scene is not None and clip.scene.noise_level > 0:
        h, w = clip.frames.shape[1:3]
        none = np.zeros_like(clip.sounding)
        audio = _render_audio(clip.scene, none, sources=np.arange(len(clip.shapes)), h=h, w=w,
                              fps=clip.fps, sr=clip.sample_rate, n=clip.audio.shape[1])
    return replace(clip, audio=audio, sounding=np.zeros_like(clip.sounding), variant="silence")


#: Phrasings of a referring expression: {c} colour name, {s} shape word.
_EXPRESSIONS_SHAPE = ("the {s}", "a {s}", "the sounding {s}", "the {s} that is sounding",
                      "the {s} making a sound", "the {s} shape")
_EXPRESSIONS_COLOUR = ("the {c} {s}", "a {c} {s}", "the sounding {c} {s}",
                       "the {c} {s} that is making a noise", "the {c} one which is a {s}")
_SHAPE_WORDS = {"disc": ("disc", "disc", "circle"), "square": ("square",),
                "triangle": ("triangle",)}


def referring_expression(shape: str, colour: str | None, rng: np.random.Generator) -> str:
    """A referring expression naming ``shape`` (and ``colour`` when given), phrased at random
    ("the disc", "the red triangle", "the sounding circle", ...). Its words are those of
    :data:`auralsam2_core.modeling.text_encoder.DEMO_WORDS`."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    words = _SHAPE_WORDS[shape]
    s = words[int(rng.integers(len(words)))]
    forms = _EXPRESSIONS_COLOUR if colour is not None else _EXPRESSIONS_SHAPE
    return forms[int(rng.integers(len(forms)))].format(s=s, c=colour)


def _pad_even(a: np.ndarray, mode: str) -> np.ndarray:
    """Pad axes 1 and 2 (H, W) of a (T, H, W, ...) array up to even sizes (bottom / right)."""
    ph, pw = a.shape[1] % 2, a.shape[2] % 2
    if not (ph or pw):
        return a
    pad = [(0, 0), (0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 3)
    return np.pad(a, pad, mode=mode)


def clip_meta(clip: SyntheticClip) -> dict:
    """The JSON-able description written to ``meta.json`` (ground truth tables + parameters)."""
    t, h, w = clip.frames.shape[:3]
    meta = {
        "seed": clip.seed,
        "schedule": clip.schedule,
        "variant": clip.variant,
        "fps": clip.fps,
        "num_frames": t,
        "size": [h, w],
        "video_size": [h + h % 2, w + w % 2],
        "sample_rate": clip.sample_rate,
        "audio_samples": int(clip.audio.shape[1]),
        "shapes": list(clip.shapes),
        "sounding": clip.sounding.astype(int).tolist(),
        "signature_hz": {s: SIGNATURE_HZ[s] for s in clip.shapes},
    }
    if clip.scene is not None:
        meta["colours"] = clip.scene.colours.tolist()
        meta["draw_order"] = clip.scene.order.tolist()
        meta["pitch_hz"] = [round(float(p), 2) for p in clip.scene.pitch]
        if clip.scene.colour_names:
            meta["colour_names"] = list(clip.scene.colour_names)
    return meta


def write_clip(clip: SyntheticClip, video_path: str | Path, *, gt_dir: str | Path | None = None,
               audio: bool = True, channels: int = 2) -> Path:
    """Write an mp4 (H.264 yuv420p, crf 18; AAC audio) and optionally the ground truth.

    ``gt_dir`` gets ``00000.png ...`` (8-bit, 0 / 255) of ``clip.sounding_mask``, one per frame,
    and ``meta.json`` (``clip_meta``). ``channels``: 2 (stereo, keeps the panning) or 1 (mono
    average). Odd sizes are padded to even (see the module docstring). Returns the video path.
    """
    import av  # local: the in-memory generator must not need PyAV

    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    video_path = Path(video_path)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    frames = _pad_even(clip.frames, "edge")
    t, h, w = frames.shape[:3]
    rate = Fraction(clip.fps).limit_denominator(1001)
    with av.open(str(video_path), "w") as container:
        vs = container.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "18", "preset": "veryfast"}
        aus = None
        if audio:
            layout = "stereo" if channels == 2 else "mono"
            aus = container.add_stream("aac", rate=clip.sample_rate, layout=layout)
            aus.bit_rate = 96000 * channels
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(vs.encode(frame))
        container.mux(vs.encode())
        if aus is not None:
            samples = clip.audio if channels == 2 else clip.audio.mean(axis=0, keepdims=True)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32),
                                            format="fltp", layout=aus.layout.name)
            af.sample_rate, af.pts = clip.sample_rate, 0
            af.time_base = Fraction(1, clip.sample_rate)
            container.mux(aus.encode(af))
            container.mux(aus.encode())
    if gt_dir is not None:
        from PIL import Image  # pillow comes with torchvision

        gt_dir = Path(gt_dir)
        gt_dir.mkdir(parents=True, exist_ok=True)
        masks = _pad_even(clip.sounding_mask, "constant")
        for i, m in enumerate(masks):
            Image.fromarray(m.astype(np.uint8) * 255).save(gt_dir / f"{i:05d}.png")
        (gt_dir / "meta.json").write_text(json.dumps(clip_meta(clip), indent=1))
    return video_path


def make_dataset(root: str | Path, n_clips: int, seed: int = 0, **kw) -> list[Path]:
    """Write ``n_clips`` clips: ``root/videos/clip_00000.mp4`` and ``root/gt/clip_00000/``.

    Clip ``i`` uses seed ``seed * 1_000_000 + i`` (datasets with different ``seed`` do not
    share clips). ``audio`` / ``channels`` go to ``write_clip``, other keywords to
    ``make_clip``. Also writes ``root/dataset.json`` (clip names, seeds, keywords).
    """
    if not 0 <= n_clips < 1_000_000:
        raise ValueError("n_clips must be in 0..999999")
    write_kw = {k: kw.pop(k) for k in ("audio", "channels") if k in kw}
    root = Path(root)
    paths, index = [], []
    for i in range(n_clips):
        clip_seed = seed * 1_000_000 + i
        name = f"clip_{i:05d}"
        clip = make_clip(clip_seed, **kw)
        paths.append(write_clip(clip, root / "videos" / f"{name}.mp4", gt_dir=root / "gt" / name,
                                **write_kw))
        index.append({"name": name, "seed": clip_seed, "shapes": clip.shapes})
    root.mkdir(parents=True, exist_ok=True)
    kw_json = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}
    (root / "dataset.json").write_text(json.dumps({"seed": seed, "make_clip": kw_json,
                                                   "write_clip": write_kw, "clips": index},
                                                  indent=1))
    return paths
