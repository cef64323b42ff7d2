"""auralsam2_core.media.resample: the polyphase conv equals the textbook per-sample sum, keeps the
passband and removes what would alias (resampy parity is in test_log_mel.py)."""

from __future__ import annotations

import math

import pytest
import torch

from auralsam2_core.media.resample import kaiser_sinc_resample

ZEROS, ROLLOFF, BETA = 16.0, 0.9, 8.0


def _direct(x: torch.Tensor, orig: int, new: int, j: int) -> float:
    """Output sample j by the definition: sum over input n of x[n] * h(t_j - t_n) (seconds)."""
    cutoff = min(orig, new) * ROLLOFF
    total = 0.0
    for n in range(x.shape[-1]):
        t = (j / new - n / orig) * cutoff
        if abs(t) > ZEROS:
            continue
        w = torch.i0(torch.tensor(BETA * math.sqrt(1 - (t / ZEROS) ** 2), dtype=torch.float64))
        w = w / torch.i0(torch.tensor(BETA, dtype=torch.float64))
        total += float(x[n]) * float(torch.sinc(torch.tensor(t, dtype=torch.float64))) * float(w)
    return total * cutoff / orig


@pytest.mark.parametrize(("orig", "new"), [(441, 160), (3, 1), (160, 441), (22050, 16000)])
def test_polyphase_equals_direct_sum(orig, new):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=g, dtype=torch.float64)
    y = kaiser_sinc_resample(x, orig, new, zeros=ZEROS, rolloff=ROLLOFF, beta=BETA)
    assert y.shape[-1] == math.ceil(400 * new / orig)
    ratio_g = math.gcd(orig, new)
    o, n = orig // ratio_g, new // ratio_g
    last = y.shape[-1] - 1
    for j in sorted({0, 1, min(n - 1, last), min(n, last), last // 2, last}):
        assert float(y[j]) == pytest.approx(_direct(x, o, n, j), abs=1e-10)


def test_passband_kept_and_alias_removed():
    sr, new = 44100, 16000
    t = torch.arange(sr, dtype=torch.float64) / sr
    low = torch.sin(2 * math.pi * 1000 * t)
    high = torch.sin(2 * math.pi * 12000 * t)  # above 8 kHz: would alias to 4 kHz
    y_low = kaiser_sinc_resample(low, sr, new, zeros=ZEROS, rolloff=ROLLOFF, beta=BETA)
    y_high = kaiser_sinc_resample(high, sr, new, zeros=ZEROS, rolloff=ROLLOFF, beta=BETA)
    mid = slice(2000, -2000)  # away from the zero-padded edges
    assert y_low[mid].abs().max().item() == pytest.approx(1.0, abs=2e-3)
    assert y_high[mid].abs().max().item() < 1e-3


def test_batch_dims_dtype_and_identity():
    x = torch.randn(2, 3, 1000)
    y = kaiser_sinc_resample(x, 48000, 16000, zeros=ZEROS, rolloff=ROLLOFF, beta=BETA)
    assert y.shape == (2, 3, 334) and y.dtype == torch.float32
    single = kaiser_sinc_resample(x[1, 2], 48000, 16000, zeros=ZEROS, rolloff=ROLLOFF, beta=BETA)
    assert torch.allclose(y[1, 2], single, atol=1e-6)
    assert kaiser_sinc_resample(x, 16000, 16000, zeros=ZEROS, rolloff=ROLLOFF, beta=BETA) is x
    with pytest.raises(ValueError, match="positive"):
        kaiser_sinc_resample(x, 0, 16000, zeros=ZEROS, rolloff=ROLLOFF, beta=BETA)
