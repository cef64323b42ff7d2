"""VGGish log-mel front end in torch (parity with ``torchvggish.vggish_input``).

The released AuralSAM2 checkpoints hold a frozen VGGish that was trained on the examples the
TensorFlow/torchvggish numpy front end produces, so this module reproduces that front end
exactly rather than using the usual library mel transforms (which build the mel filters in
the Hz domain, use power spectra and pad the STFT):

* 16 kHz mono per channel; 25 ms frames (400 samples) every 10 ms (160), no centring/padding;
* periodic Hann window, 512-point FFT, **magnitude** spectrum;
* 64 HTK-mel bands over 125-7500 Hz, triangles linear in the *mel* domain, DC bin zeroed;
* ``log(mel + 0.01)``; non-overlapping examples of 96 frames (0.96 s).

Each stereo channel is processed separately (AuralSAM2 runs VGGish once per channel and
concatenates L and R). The module does no file or platform I/O: callers pass tensors.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from auralsam2_core.media.resample import kaiser_sinc_resample

__all__ = [
    "VGGISH_SAMPLE_RATE",
    "EXAMPLE_FRAMES",
    "NUM_BANDS",
    "MIN_SAMPLES_FOR_ONE_EXAMPLE",
    "log_mel_examples",
    "log_mel_frames",
    "frames_to_examples",
    "resample_to_16k",
]

VGGISH_SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512  # next power of two above the window
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s, examples do not overlap
# Shortest 16 kHz waveform that yields one full example: 96 frames of 400 samples, hop 160.
MIN_SAMPLES_FOR_ONE_EXAMPLE = WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * HOP_SAMPLES  # 15600

# resampy's ``kaiser_best`` filter (resampy >= 0.3, as shipped in 0.4.x; read off its
# kaiser_best.npz): 50 zero crossings, Kaiser beta 12.9846, rolloff 0.917347. resampy's
# window spans ``num_zeros`` crossings of the *un-rolled-off* sinc, while ours spans
# ``zeros`` crossings of the rolled-off one, hence zeros = 50 * rolloff.
# (resampy < 0.3 used 64 zeros, beta 14.7697, rolloff 0.9476, the values older docs
# quote as "kaiser_best".)
_RESAMPY_BEST_ZEROS = 50
_RESAMPY_BEST_BETA = 12.9846
_RESAMPY_BEST_ROLLOFF = 0.9173473712608761


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale, as VGGish uses it."""
    return 1127.0 * torch.log1p(hz / 700.0)


@functools.lru_cache(maxsize=16)
def _mel_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(257, 64) matrix mapping a magnitude spectrum row to VGGish mel bands.

    Built in float64 on the CPU, then cast, so every device/dtype sees the same weights.
    """
    n_bins = FFT_LENGTH // 2 + 1
    bins_mel = _hz_to_mel(torch.linspace(0.0, VGGISH_SAMPLE_RATE / 2, n_bins, dtype=torch.float64))
    lo, hi = _hz_to_mel(torch.tensor([MEL_MIN_HZ, MEL_MAX_HZ], dtype=torch.float64))
    edges = torch.linspace(float(lo), float(hi), NUM_BANDS + 2, dtype=torch.float64)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - left) / (centre - left)
    falling = (right - bins_mel[:, None]) / (right - centre)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    weights[0, :] = 0.0  # VGGish drops the DC bin
    return weights.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _periodic_hann(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """400-point periodic Hann window (one full cosine period, as VGGish uses)."""
    n = torch.arange(WINDOW_SAMPLES, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2.0 * torch.pi * n / WINDOW_SAMPLES)
    return window.to(device=device, dtype=dtype)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 input is kept in float64 (reference-grade); anything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def resample_to_16k(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Resample ``(..., S)`` audio to 16 kHz, approximating resampy's ``kaiser_best``.

    The reference front end resamples with resampy; a Kaiser-windowed sinc with resampy's
    filter parameters (auralsam2_core.media.resample) gets close (see the parity tests for the
    residual). The output length is truncated to resampy's ``int(S * 16000 / sample_rate)``
    so frame and example counts match the reference.
    """
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    if sample_rate == VGGISH_SAMPLE_RATE:
        return waveform
    n_out = int(waveform.shape[-1] * float(VGGISH_SAMPLE_RATE) / float(sample_rate))
    out = kaiser_sinc_resample(
        waveform.to(_work_dtype(waveform)),
        sample_rate,
        VGGISH_SAMPLE_RATE,
        zeros=_RESAMPY_BEST_ZEROS * _RESAMPY_BEST_ROLLOFF,
        rolloff=_RESAMPY_BEST_ROLLOFF,
        beta=_RESAMPY_BEST_BETA,
    )
    return out[..., :n_out]


def log_mel_frames(waveform_16k_mono: torch.Tensor) -> torch.Tensor:
    """``(S,)`` 16 kHz audio -> ``(F, 64)`` VGGish log-mel frames, F = 1 + (S - 400) // 160.

    Leading batch dimensions are allowed: ``(..., S) -> (..., F, 64)``. Audio shorter than
    one 25 ms window gives ``F = 0``. Incomplete trailing windows are dropped, as in VGGish.
    """
    x = waveform_16k_mono.to(_work_dtype(waveform_16k_mono))
    if x.shape[-1] < WINDOW_SAMPLES:
        return x.new_zeros((*x.shape[:-1], 0, NUM_BANDS))
    frames = x.unfold(-1, WINDOW_SAMPLES, HOP_SAMPLES)  # (..., F, 400), a view
    window = _periodic_hann(x.device, x.dtype)
    magnitude = torch.fft.rfft(frames * window, n=FFT_LENGTH).abs()  # (..., F, 257)
    mel = magnitude @ _mel_matrix(x.device, x.dtype)
    return torch.log(mel + LOG_OFFSET)


def frames_to_examples(frames: torch.Tensor) -> torch.Tensor:
    """``(F, 64)`` -> ``(F // 96, 96, 64)`` non-overlapping 0.96 s examples.

    Trailing frames that do not fill an example are dropped, as in VGGish. Leading batch
    dimensions are allowed: ``(..., F, 64) -> (..., E, 96, 64)``.
    """
    n_examples = frames.shape[-2] // EXAMPLE_FRAMES
    used = frames[..., : n_examples * EXAMPLE_FRAMES, :]
    return used.reshape(*frames.shape[:-2], n_examples, EXAMPLE_FRAMES, frames.shape[-1])


def _as_two_or_one_channels(waveform: torch.Tensor) -> torch.Tensor:
    """Validate the input layout and return ``(C, S)`` with C in {1, 2}."""
    if not torch.is_floating_point(waveform):
        raise TypeError(
            f"waveform must be float PCM in [-1, 1], got dtype {waveform.dtype} "
            "(scale integer PCM first, e.g. int16 / 32768)"
        )
    if waveform.dim() == 1:
        return waveform.unsqueeze(0)
    if waveform.dim() != 2 or waveform.shape[0] not in (1, 2):
        raise ValueError(
            "waveform must be (S,) or (C, S) with C = 1 (mono) or 2 (stereo), got shape "
            f"{tuple(waveform.shape)}; downmix other layouts to mono or stereo first"
        )
    return waveform


def log_mel_examples(
    waveform: torch.Tensor, sample_rate: int, *, min_examples: int = 1
) -> torch.Tensor:
    """waveform (C, S) float (C = 1 or 2) or (S,) -> (E, 2, 96, 64) float32 log-mel examples.

    Per channel this equals ``torchvggish.vggish_input.waveform_to_examples`` (up to float
    rounding at 16 kHz, and the resampler difference otherwise). Channel 0 is left, 1 is
    right; mono input is duplicated to both channels (AuralSAM2 always expects two).

    Padding, so that every clip gets the examples AuralSAM2 needs:

    * audio shorter than one example (15600 samples at 16 kHz, i.e. 0.975 s) is zero-padded
      at the end to exactly that length, so it yields one example (where the reference front
      end would fail or return none); the padded part reads as silence, ``log(0.01)``;
    * trailing audio that does not fill a whole 0.96 s example is dropped, as in VGGish;
    * if fewer than ``min_examples`` examples result, the last example is repeated until
      there are ``min_examples`` (the authors pad to 5 this way: pass ``min_examples=5`` to
      match them; one example per annotated frame at AVSBench's 1 fps).
    """
    if min_examples < 0:
        raise ValueError(f"min_examples must be >= 0, got {min_examples}")
    x = _as_two_or_one_channels(waveform)
    x = resample_to_16k(x, sample_rate)
    if x.shape[-1] < MIN_SAMPLES_FOR_ONE_EXAMPLE:
        x = F.pad(x, (0, MIN_SAMPLES_FOR_ONE_EXAMPLE - x.shape[-1]))
    examples = frames_to_examples(log_mel_frames(x))  # (C, E, 96, 64)
    examples = examples.expand(2, *examples.shape[1:])  # mono -> both channels (a view)
    examples = examples.transpose(0, 1)  # (E, 2, 96, 64)
    missing = min_examples - examples.shape[0]
    if missing > 0:
        examples = torch.cat([examples, examples[-1:].expand(missing, *examples.shape[1:])])
    return examples.to(torch.float32).contiguous()
