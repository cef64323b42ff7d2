"""Band-limited resampling with a Kaiser-windowed sinc, in plain torch.

Why our own: the VGGish front end needs one resampler (to 16 kHz), and torchaudio, the usual
source, is in maintenance mode with no release that matches the CPU torch builds our CI
installs. A polyphase windowed sinc is a few lines of math:

Reduce the rates by their gcd to ``orig -> new``. Output sample ``j * new + i`` lies at time
``j + i / new`` (time unit: ``orig`` input samples); input sample ``j * orig + k`` at
``j + k / orig``. Its weight is ``c * sinc(c * d) * kaiser(c * d / zeros) / orig`` with
``d`` the time difference, ``c = min(orig, new) * rolloff`` the cut-off, and the Kaiser
window ``I0(beta * sqrt(1 - u**2)) / I0(beta)`` spanning ``zeros`` zero crossings of the
rolled-off sinc each side. One strided ``conv1d`` with a ``(new, 1, taps)`` kernel then
computes all ``new`` phases at once.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ["kaiser_sinc_resample"]


@functools.lru_cache(maxsize=16)
def _kernel(
    orig: int, new: int, zeros: float, rolloff: float, beta: float, dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """``(new, 1, taps)`` kernel (built in float64, then cast) and its one-sided reach."""
    cutoff = min(orig, new) * rolloff
    reach = math.ceil(zeros * orig / cutoff)  # input samples each side of an output sample
    k = torch.arange(-reach, reach + orig, dtype=torch.float64) / orig
    phase = torch.arange(new, dtype=torch.float64)[:, None] / new
    t = ((k[None, :] - phase) * cutoff).clamp(-zeros, zeros)
    window = torch.i0(beta * torch.sqrt(1.0 - (t / zeros) ** 2)) / torch.i0(
        torch.tensor(beta, dtype=torch.float64)
    )
    kernel = torch.sinc(t) * window * (cutoff / orig)
    return kernel[:, None, :].to(device=device, dtype=dtype), reach


def kaiser_sinc_resample(
    waveform: torch.Tensor, orig_rate: int, new_rate: int, *, zeros: float, rolloff: float,
    beta: float,
) -> torch.Tensor:
    """Resample ``(..., S)`` from ``orig_rate`` to ``new_rate``; returns ``ceil(S * new / orig)``
    samples (callers truncate to their own length convention). Works in the input's dtype."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    length = waveform.shape[-1]
    if orig == new or length == 0:
        return waveform
    kernel, reach = _kernel(orig, new, float(zeros), float(rolloff), float(beta),
                            waveform.dtype, waveform.device)
    x = waveform.reshape(-1, 1, length)
    x = F.pad(x, (reach, reach + orig))
    y = F.conv1d(x, kernel, stride=orig)  # (B, new, blocks): phase i of block j
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    n_out = math.ceil(new * length / orig)
    return y[:, :n_out].reshape(*waveform.shape[:-1], n_out)
