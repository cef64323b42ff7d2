"""A video's audio as VGGish log-mel frames, and the 0.96 s example that belongs to each frame.

The whole track is turned into 10 ms log-mel frames once (streamed: 60,000 frames x 2 x 64
floats = 30 MB for ten minutes, whatever the source rate or channel count). The example for
a video frame at time ``t`` is the 96 log-mel frames (0.96 s) **centred on t**; where that
window leaves the track it is padded with silence frames (``log(0.01)``). AVSBench pairs each
1 fps frame with the preceding second's example instead; centring is our choice for
arbitrary frame rates (the sound at the instant shown sits in the middle of the window).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .log_mel import EXAMPLE_FRAMES, NUM_BANDS, log_mel_frames

HOP_SECONDS = 0.01
WINDOW_SAMPLES = 400
HOP_SAMPLES = 160
SILENCE = math.log(0.01)  # log-mel value of digital silence
_CENTRE_OFFSET = (EXAMPLE_FRAMES - 1) * HOP_SECONDS / 2 + 0.025 / 2  # example start -> centre


class AudioTrack:
    """Log-mel frames ``(F, 2, 64)`` of a stereo 16 kHz track."""

    def __init__(self, frames: torch.Tensor) -> None:
        if frames.dim() != 3 or frames.shape[1:] != (2, NUM_BANDS):
            raise ValueError(f"frames must be (F, 2, {NUM_BANDS}), got {tuple(frames.shape)}")
        self.frames = frames

    @classmethod
    def from_chunks(cls, chunks: Iterable[np.ndarray]) -> AudioTrack:
        """Build from ``(2, n)`` float32 16 kHz chunks, keeping only log-mel frames."""
        tail = np.zeros((2, 0), np.float32)
        parts: list[torch.Tensor] = []
        for chunk in chunks:
            buf = np.concatenate([tail, chunk], axis=1)
            if buf.shape[1] < WINDOW_SAMPLES:
                tail = buf
                continue
            n = 1 + (buf.shape[1] - WINDOW_SAMPLES) // HOP_SAMPLES
            used = (n - 1) * HOP_SAMPLES + WINDOW_SAMPLES
            parts.append(log_mel_frames(torch.from_numpy(buf[:, :used])).transpose(0, 1))
            tail = buf[:, n * HOP_SAMPLES:]
        frames = torch.cat(parts) if parts else torch.zeros(0, 2, NUM_BANDS)
        return cls(frames.float().contiguous())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> AudioTrack:
        from .media import iter_audio_16k

        return cls.from_chunks(iter_audio_16k(path))

    @classmethod
    def silent(cls) -> AudioTrack:
        return cls(torch.zeros(0, 2, NUM_BANDS))

    @property
    def duration(self) -> float:
        return len(self.frames) * HOP_SECONDS

    def examples_at(self, times: Sequence[float]) -> torch.Tensor:
        """``(T, 2, 96, 64)`` examples centred on each time (seconds), silence-padded."""
        starts = torch.tensor([round((t - _CENTRE_OFFSET) / HOP_SECONDS) for t in times],
                              dtype=torch.long)
        idx = starts[:, None] + torch.arange(EXAMPLE_FRAMES)  # (T, 96)
        inside = (idx >= 0) & (idx < len(self.frames))
        out = torch.full((len(times), EXAMPLE_FRAMES, 2, NUM_BANDS), SILENCE)
        if len(self.frames):
            out[inside] = self.frames[idx[inside]]
        return out.permute(0, 2, 1, 3).contiguous()
