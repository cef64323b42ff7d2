"""A video's audio as VGGish log-mel frames, and the 0.96 s example that belongs to each frame.

The track is turned into 10 ms log-mel frames as it decodes. :class:`AudioStream` (what the
engine uses) keeps only the frames that later video frames can still need, so memory does not
grow with the video's length; :class:`AudioTrack` keeps all of them (30 MB for ten minutes),
for training data and tests. The example for a video frame at time ``t`` is the 96 log-mel frames
(0.96 s) **centred on t**; where that window leaves the track it is padded with silence frames
(``log(0.01)``). AVSBench pairs each 1 fps frame with the preceding second's example instead;
centring is our choice for arbitrary frame rates (the sound at the instant shown sits in the middle
of the window).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from auralsam2_core.media.log_mel import EXAMPLE_FRAMES, NUM_BANDS, log_mel_frames

HOP_SECONDS = 0.01
WINDOW_SAMPLES = 400
HOP_SAMPLES = 160
SILENCE = math.log(0.01)  # log-mel value of digital silence
_CENTRE_OFFSET = (EXAMPLE_FRAMES - 1) * HOP_SECONDS / 2 + 0.025 / 2  # example start -> centre


class _LogMelFramer:
    """Turns ``(2, n)`` 16 kHz chunks into log-mel frames on the global 10 ms grid."""

    def __init__(self) -> None:
        self.tail = np.zeros((2, 0), np.float32)

    def push(self, chunk: np.ndarray) -> torch.Tensor:
        buf = np.concatenate([self.tail, chunk], axis=1)
        if buf.shape[1] < WINDOW_SAMPLES:
            self.tail = buf
            return torch.zeros(0, 2, NUM_BANDS)
        n = 1 + (buf.shape[1] - WINDOW_SAMPLES) // HOP_SAMPLES
        used = (n - 1) * HOP_SAMPLES + WINDOW_SAMPLES
        frames = log_mel_frames(torch.from_numpy(buf[:, :used])).transpose(0, 1)
        self.tail = buf[:, n * HOP_SAMPLES:].copy()
        return frames.float()


def _example_starts(times: Sequence[float]) -> torch.Tensor:
    return torch.tensor([round((t - _CENTRE_OFFSET) / HOP_SECONDS) for t in times],
                        dtype=torch.long)


def _gather(frames: torch.Tensor, base: int, starts: torch.Tensor) -> torch.Tensor:
    """Examples starting at ``starts`` from ``frames`` (global indices from ``base``);
    outside the available frames: silence. Returns ``(T, 2, 96, 64)``."""
    idx = starts[:, None] + torch.arange(EXAMPLE_FRAMES) - base  # (T, 96)
    inside = (idx >= 0) & (idx < len(frames))
    out = torch.full((len(starts), EXAMPLE_FRAMES, 2, NUM_BANDS), SILENCE)
    if len(frames):
        out[inside] = frames[idx[inside]]
    return out.permute(0, 2, 1, 3).contiguous()


class AudioTrack:
    """All log-mel frames ``(F, 2, 64)`` of a stereo 16 kHz track, in memory."""

    def __init__(self, frames: torch.Tensor) -> None:
        if frames.dim() != 3 or frames.shape[1:] != (2, NUM_BANDS):
            raise ValueError(f"frames must be (F, 2, {NUM_BANDS}), got {tuple(frames.shape)}")
        self.frames = frames

    @classmethod
    def from_chunks(cls, chunks: Iterable[np.ndarray]) -> AudioTrack:
        """Build from ``(2, n)`` float32 16 kHz chunks, keeping only log-mel frames."""
        framer = _LogMelFramer()
        parts = [framer.push(chunk) for chunk in chunks]
        frames = torch.cat(parts) if parts else torch.zeros(0, 2, NUM_BANDS)
        return cls(frames.contiguous())

    @classmethod
    def from_file(cls, path: str | os.PathLike, track: int | None = None) -> AudioTrack:
        """Audio track ``track`` of the file (default: :func:`~.media.audio_stream`)."""
        from auralsam2_core.media.video import iter_audio_16k

        return cls.from_chunks(iter_audio_16k(path, track))

    @classmethod
    def silent(cls) -> AudioTrack:
        return cls(torch.zeros(0, 2, NUM_BANDS))

    @property
    def duration(self) -> float:
        return len(self.frames) * HOP_SECONDS

    def examples_at(self, times: Sequence[float]) -> torch.Tensor:
        """``(T, 2, 96, 64)`` examples centred on each time (seconds), silence-padded."""
        return _gather(self.frames, 0, _example_starts(times))


class AudioStream:
    """The same examples as :class:`AudioTrack`, decoded on demand and forgotten once used.

    Requests must come in non-decreasing time order (video frames do); frames before the
    earliest example of the last request are dropped, so memory stays a few seconds of
    log-mel whatever the video's length.
    """

    def __init__(self, chunks: Iterable[np.ndarray]) -> None:
        self._chunks = iter(chunks)
        self._framer = _LogMelFramer()
        self._frames = torch.zeros(0, 2, NUM_BANDS)
        self._base = 0  # global index of self._frames[0]
        self._ended = False

    @classmethod
    def from_file(cls, path: str | os.PathLike, track: int | None = None) -> AudioStream:
        """Audio track ``track`` of the file (default: :func:`~.media.audio_stream`)."""
        from auralsam2_core.media.video import iter_audio_16k

        return cls(iter_audio_16k(path, track))

    def _pull(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is None:
            self._ended = True
            return
        new = self._framer.push(chunk)
        if len(new):
            self._frames = torch.cat([self._frames, new])

    def examples_at(self, times: Sequence[float]) -> torch.Tensor:
        starts = _example_starts(times)
        if len(starts) == 0:
            return torch.zeros(0, 2, EXAMPLE_FRAMES, NUM_BANDS)
        first = int(starts.min())
        if first < self._base and self._base > 0:
            raise ValueError("AudioStream examples must be requested in time order "
                             f"(asked for frame {first}, already past {self._base})")
        need = int(starts.max()) + EXAMPLE_FRAMES
        while not self._ended and self._base + len(self._frames) < need:
            self._pull()
        out = _gather(self._frames, self._base, starts)
        drop = min(max(first - self._base, 0), len(self._frames))
        if drop:
            self._frames = self._frames[drop:].clone()
            self._base += drop
        return out
