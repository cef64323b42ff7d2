"""Parity and behaviour tests for the VGGish log-mel front end (``auralsam2_core.media.log_mel``).

The reference is ``torchvggish.vggish_input.waveform_to_examples`` (numpy, float64, resampy
``kaiser_best``); only its front end is used, never its model (that downloads weights).
Run with ``-s`` to see the measured differences.

Tolerances, from measurements on these signals:
* native 16 kHz: float64 input agrees to ~2.4e-7, float32 input to ~6e-4 (float32 FFT
  leakage in near-empty bands, where ``log(mel + 0.01)`` magnifies small absolute errors).
* resampled input: our Kaiser sinc (auralsam2_core.media.resample) with resampy's ``kaiser_best``
has
  the same passband (gain within ~5e-5) but is cleaner than resampy, whose table
  interpolation leaves spurs ~-105 dB at non-integer ratios (44.1k, 22.05k). Those spurs are
  only visible in near-silent bands (values near ``log(0.01)``), so the max difference is up
  to ~0.15 there, while bands carrying energy agree to ~1e-3.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from auralsam2_core.media import log_mel as lm
from auralsam2_core.media.log_mel import (
    VGGISH_SAMPLE_RATE,
    frames_to_examples,
    log_mel_examples,
    log_mel_frames,
    resample_to_16k,
)

vggish_input = pytest.importorskip("torchvggish.vggish_input")
mel_features = pytest.importorskip("torchvggish.mel_features")

FLOOR = math.log(0.01)  # log-mel of silence
DURATION_S = 3.0
NATIVE_ATOL_F64 = 1e-6
NATIVE_ATOL_F32 = 2e-3
RESAMPLED_ATOL = 0.25  # near-silent bands, dominated by resampy's own spurs
RESAMPLED_MEAN_ATOL = 2e-2
RESAMPLED_LOUD_ATOL = 1e-2  # bands with mel >= 0.04 (log-mel > -3.2)
LOUD = math.log(0.04)

SIGNALS = ["tone440", "tone1000", "tone3000", "tone6000", "noise", "chirp", "speech"]
RESAMPLED_RATES = [8000, 22050, 44100, 48000]


# ----------------------------------------------------------------------------- signals


def _tone(freq: float, sr: int, dur: float = DURATION_S) -> np.ndarray:
    t = np.arange(int(dur * sr)) / sr
    return 0.5 * np.sin(2 * np.pi * freq * t)


def _noise(sr: int, dur: float = DURATION_S, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.0, 0.2, int(dur * sr)), -1.0, 1.0)


def _chirp(sr: int, dur: float = DURATION_S) -> np.ndarray:
    """Linear sweep from 100 Hz to 7 kHz (or 0.45 * sr when that is lower)."""
    f0, f1 = 100.0, min(7000.0, 0.45 * sr)
    t = np.arange(int(dur * sr)) / sr
    return 0.5 * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / dur * t * t))


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """Speech from espeak-ng, read as int16 / 32768 like the authors' loader."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        text = "The quick brown fox jumps over the lazy dog while the band plays."
        subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True)
        with wave.open(str(path), "rb") as w:
            assert w.getsampwidth() == 2 and w.getnchannels() == 1
            sr = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm / 32768.0, sr


def _signal(name: str, sr: int, request: pytest.FixtureRequest) -> np.ndarray:
    if name.startswith("tone"):
        freq = float(name[4:])
        if freq >= 0.45 * sr:
            pytest.skip(f"{freq:g} Hz is above the Nyquist band of {sr} Hz")
        return _tone(freq, sr)
    if name == "noise":
        return _noise(sr)
    if name == "chirp":
        return _chirp(sr)
    pcm, pcm_sr = request.getfixturevalue("speech")
    if pcm_sr == sr:
        return pcm
    import resampy

    return resampy.resample(pcm, pcm_sr, sr)


def _reference(x: np.ndarray, sr: int) -> np.ndarray:
    return vggish_input.waveform_to_examples(x, sr, return_tensor=False)


# ----------------------------------------------------------------------------- parity


def test_mel_matrix_matches_reference():
    ref = mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=64,
        num_spectrogram_bins=257,
        audio_sample_rate=16000,
        lower_edge_hertz=125.0,
        upper_edge_hertz=7500.0,
    )
    ours = lm._mel_matrix(torch.device("cpu"), torch.float64).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    window = lm._periodic_hann(torch.device("cpu"), torch.float64).numpy()
    np.testing.assert_allclose(window, mel_features.periodic_hann(400), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", SIGNALS)
def test_parity_native_16k(name, request):
    x = _signal(name, VGGISH_SAMPLE_RATE, request)
    ref = _reference(x, VGGISH_SAMPLE_RATE)
    for dtype, atol in ((torch.float64, NATIVE_ATOL_F64), (torch.float32, NATIVE_ATOL_F32)):
        ours = log_mel_examples(torch.from_numpy(x).to(dtype), VGGISH_SAMPLE_RATE)
        assert ours.shape == (ref.shape[0], 2, 96, 64)
        diff = np.abs(ours[:, 0].double().numpy() - ref)
        print(
            f"[parity 16k {name:8s} {str(dtype)[6:]}] max {diff.max():.2e} mean {diff.mean():.2e}"
        )
        assert diff.max() <= atol
        assert torch.equal(ours[:, 0], ours[:, 1])


@pytest.mark.parametrize("sr", RESAMPLED_RATES)
@pytest.mark.parametrize("name", SIGNALS)
def test_parity_resampled(name, sr, request):
    x = _signal(name, sr, request)
    ref = _reference(x, sr)
    ours = log_mel_examples(torch.from_numpy(x).float(), sr)
    assert ours.shape == (ref.shape[0], 2, 96, 64)  # same length rule as resampy
    diff = np.abs(ours[:, 0].double().numpy() - ref)
    loud = ref > LOUD
    loud_max = diff[loud].max() if loud.any() else 0.0
    print(
        f"[parity {sr:5d} {name:8s}] max {diff.max():.2e} mean {diff.mean():.2e} "
        f"max(bands with energy) {loud_max:.2e}"
    )
    assert diff.max() <= RESAMPLED_ATOL
    assert diff.mean() <= RESAMPLED_MEAN_ATOL
    assert loud_max <= RESAMPLED_LOUD_ATOL


def test_stereo_parity_per_channel():
    sr = 44100
    left, right = _tone(440.0, sr), _noise(sr, seed=1)
    ours = log_mel_examples(torch.from_numpy(np.stack([left, right])), sr)
    for ch, x in enumerate((left, right)):
        ref = _reference(x, sr)
        diff = np.abs(ours[:, ch].double().numpy() - ref)
        assert diff[ref > LOUD].max() <= RESAMPLED_LOUD_ATOL


# ----------------------------------------------------------------------------- channels


def test_stereo_channels_stay_separate():
    sr = 16000
    left, right = _tone(440.0, sr), _chirp(sr)
    stereo = torch.from_numpy(np.stack([left, right])).float()
    out = log_mel_examples(stereo, sr)
    assert out.shape == (3, 2, 96, 64)
    assert not torch.allclose(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 0], log_mel_examples(stereo[0], sr)[:, 0])
    torch.testing.assert_close(out[:, 1], log_mel_examples(stereo[1], sr)[:, 0])
    # Swapping the inputs swaps the outputs: nothing is mixed across channels.
    swapped = log_mel_examples(stereo.flip(0), sr)
    torch.testing.assert_close(swapped, out.flip(1))


def test_mono_is_duplicated():
    x = torch.from_numpy(_chirp(16000)).float()
    flat, one_channel = log_mel_examples(x, 16000), log_mel_examples(x[None], 16000)
    assert flat.shape == (3, 2, 96, 64)
    assert torch.equal(flat, one_channel)
    assert torch.equal(flat[:, 0], flat[:, 1])


@pytest.mark.parametrize("shape", [(3, 16000), (6, 16000), (16000, 2), (1, 1, 16000)])
def test_bad_channel_layouts_raise(shape):
    with pytest.raises(ValueError, match="mono or stereo"):
        log_mel_examples(torch.zeros(shape), 16000)


def test_integer_pcm_is_rejected():
    with pytest.raises(TypeError, match="float PCM"):
        log_mel_examples(torch.zeros(16000, dtype=torch.int16), 16000)


@pytest.mark.parametrize("sr", [0, -16000, 44100.5])
def test_bad_sample_rate_raises(sr):
    with pytest.raises(ValueError, match="sample_rate"):
        resample_to_16k(torch.zeros(1000), sr)


# ----------------------------------------------------------------------------- shapes, padding


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_output_is_float32(dtype):
    out = log_mel_examples(torch.zeros(2, 16000, dtype=dtype), 16000)
    assert out.dtype == torch.float32 and out.is_contiguous()


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
@pytest.mark.parametrize("seconds", [5, 10])
def test_one_example_per_second_for_avsbench_clips(seconds, sr):
    out = log_mel_examples(torch.zeros(2, seconds * sr), sr)
    assert out.shape == (seconds, 2, 96, 64)


def test_frame_and_example_counts():
    frames = log_mel_frames(torch.zeros(16000))
    assert frames.shape == (1 + (16000 - 400) // 160, 64)  # no STFT centring or padding
    assert log_mel_frames(torch.zeros(399)).shape == (0, 64)
    assert log_mel_frames(torch.zeros(2, 400)).shape == (2, 1, 64)
    f = torch.randn(250, 64)
    ex = frames_to_examples(f)
    assert ex.shape == (2, 96, 64)  # the 58 trailing frames are dropped
    assert torch.equal(ex[1], f[96:192])
    assert frames_to_examples(torch.randn(95, 64)).shape == (0, 96, 64)


def test_trailing_partial_example_is_dropped():
    # k examples need 400 + (96 k - 1) * 160 samples at 16 kHz; one sample less gives k - 1.
    for k in (2, 3):
        n = 400 + (96 * k - 1) * 160
        x = torch.from_numpy(_chirp(16000, 4.0)).float()
        assert log_mel_examples(x[:n], 16000).shape[0] == k
        assert log_mel_examples(x[: n - 1], 16000).shape[0] == k - 1
        torch.testing.assert_close(
            log_mel_examples(x[: n + 95 * 160], 16000), log_mel_examples(x[:n], 16000)
        )


@pytest.mark.parametrize("n_samples", [0, 1, 400, 8000, lm.MIN_SAMPLES_FOR_ONE_EXAMPLE - 1])
def test_short_audio_is_zero_padded_to_one_example(n_samples):
    x = torch.from_numpy(_noise(16000, 1.0)[:n_samples]).float()
    out = log_mel_examples(x, 16000)
    assert out.shape == (1, 2, 96, 64)
    padded = np.zeros(lm.MIN_SAMPLES_FOR_ONE_EXAMPLE)
    padded[:n_samples] = x.double().numpy()
    ref = _reference(padded, 16000)  # the reference on the same zero-padded waveform
    np.testing.assert_allclose(out[:, 0].double().numpy(), ref, rtol=0, atol=NATIVE_ATOL_F32)
    # Frames lying wholly in the padding read as silence.
    first_silent = -(-n_samples // 160)  # ceil: first frame starting in the padding
    torch.testing.assert_close(
        out[0, :, first_silent:], torch.full_like(out[0, :, first_silent:], FLOOR)
    )


@pytest.mark.parametrize(("sr", "n_samples"), [(44100, 4410), (44100, 0), (8000, 1), (48000, 0)])
def test_short_audio_at_other_rates(sr, n_samples):
    out = log_mel_examples(torch.zeros(2, n_samples), sr)
    assert out.shape == (1, 2, 96, 64)
    torch.testing.assert_close(out, torch.full_like(out, FLOOR))


def test_min_examples_repeats_the_last_example():
    x = torch.from_numpy(np.stack([_chirp(16000, 2.5), _noise(16000, 2.5)])).float()
    natural = log_mel_examples(x, 16000)
    assert natural.shape[0] == 2
    padded = log_mel_examples(x, 16000, min_examples=5)
    assert padded.shape == (5, 2, 96, 64)
    assert torch.equal(padded[:2], natural)
    for i in range(2, 5):
        assert torch.equal(padded[i], natural[-1])
    # Never truncates.
    assert log_mel_examples(x, 16000, min_examples=1).shape[0] == 2
    assert log_mel_examples(torch.zeros(10 * 16000), 16000, min_examples=5).shape[0] == 10
    with pytest.raises(ValueError):
        log_mel_examples(x, 16000, min_examples=-1)


def test_resampled_length_follows_resampy():
    for sr, n in ((44100, 44100 * 3 + 7), (8000, 12345), (22050, 1)):
        assert resample_to_16k(torch.zeros(n), sr).shape[-1] == int(n * 16000 / sr)
    x = torch.zeros(2, 1000)
    assert resample_to_16k(x, 16000) is x


def test_tables_are_cached_per_device_and_dtype():
    cpu = torch.device("cpu")
    assert lm._mel_matrix(cpu, torch.float32) is lm._mel_matrix(cpu, torch.float32)
    assert lm._mel_matrix(cpu, torch.float64).dtype == torch.float64
    assert lm._periodic_hann(cpu, torch.float32) is lm._periodic_hann(cpu, torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    x = torch.from_numpy(np.stack([_chirp(44100), _noise(44100)])).float()
    cpu = log_mel_examples(x, 44100, min_examples=5)
    gpu = log_mel_examples(x.cuda(), 44100, min_examples=5)
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=2e-3)
