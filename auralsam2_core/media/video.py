"""Reading real media with PyAV: probe, stream video frames with timestamps, stream audio.

Nothing here holds a whole video in memory: frames are yielded one at a time (already scaled
to the model's input size), and audio is decoded in chunks, converted to stereo, resampled to
16 kHz block by block and handed on.

Channel policy: stereo is kept as is; mono is duplicated to left and right; more channels are
downmixed to left/right (left-side channels to L, right-side to R, centre and unpaired
channels at -3 dB to both, LFE dropped; each output normalised so its weights sum to 1); a
track that does not name its channels (PCM in Matroska, plain WAV) gets FFmpeg's default
layout for its channel count, as the ffmpeg command line does.

Track policy: the audio track asked for, else the one marked *default* (what a player plays),
else the first (:func:`audio_stream`); :class:`MediaInfo` says which one and how many there are.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from auralsam2_core.media.log_mel import VGGISH_SAMPLE_RATE, resample_to_16k


class MediaError(ValueError):
    """A file that cannot be used as a video (missing, empty, corrupt, no video stream...)."""


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    width: int  # display size, after rotation metadata is applied
    height: int
    rotation: int  # degrees clockwise applied to decoded frames to display them (0/90/180/270)
    fps: float  # average frame rate (frame times come from timestamps, not from this)
    num_frames: int | None  # from the container; None when it does not say
    duration: float | None  # seconds
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None
    audio_track: int | None = None  # the audio track used: its index among the audio tracks
    audio_tracks: int = 0  # how many audio tracks the file has
    audio_stream: int | None = None  # the used track's stream index in the container
    audio_language: str | None = None  # the used track's language tag, when it has one
    audio_title: str | None = None  # the used track's title, when it has one


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a video file (a sentence naming it), or None.

    Checked before FFmpeg sees the path: opening a named pipe would block forever, and a
    symbolic-link loop or an over-long name must not read as "not found"."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            longest = max((len(os.fsencode(part)) for part in p.parts), default=0)
            return (f"{p}: file name too long ({longest} bytes in one name; the file system "
                    "allows 255)" if longest > 255 else f"{p}: path too long")
        if e.errno == errno.ELOOP:
            return f"{p} is a symbolic link loop"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            if p.is_symlink():
                return f"{p} is a broken symbolic link (to {os.readlink(p)})"
            return f"video not found: {p}"
        return f"cannot read {p}: {e.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"{p} is a directory, not a video file"
    for is_kind, kind in _NOT_REGULAR:
        if is_kind(st.st_mode):
            return f"{p} is {kind}, not a video file"
    if st.st_size == 0:
        return f"{p} is empty (0 bytes)"
    if not os.access(p, os.R_OK):
        return f"cannot read {p}: permission denied"
    return None


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise MediaError(problem)
    try:
        c = av.open(str(p))
    except av.error.InvalidDataError as e:
        raise MediaError(f"{p} is not a readable media file ({e})") from e
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot open {p}: {e}") from e
    if c.format.name == "tty":  # FFmpeg renders .txt/.nfo/.ans files as ANSI-art "video"
        c.close()
        raise MediaError(f"{p} is a text file, not a video")
    return c


def probe(path: str | os.PathLike, audio_track: int | None = None) -> MediaInfo:
    """Describe a video file, or raise :class:`MediaError` saying what is wrong with it.
    ``audio_track`` picks the audio track (see :func:`audio_stream`).

    A file probed before and unchanged since (the same inode, size and modification time) is
    described from memory: probing decodes a frame (~4 ms), and an annotator's click probes
    its video twice, in a click of ~15 ms."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return _probe(Path(path), audio_track)  # it says what is wrong
    return _probed(os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                   audio_track)


@functools.lru_cache(maxsize=256)
def _probed(path: str, _dev: int, _ino: int, _size: int, _mtime_ns: int,
            audio_track: int | None) -> MediaInfo:
    """:func:`_probe`, remembered per file state (errors are not remembered)."""
    return _probe(Path(path), audio_track)


def _probe(p: Path, audio_track: int | None) -> MediaInfo:
    with _open(p) as c:
        v = video_stream(c)
        if v is None:
            kinds = ", ".join("cover art" if _is_cover(s) else s.type for s in c.streams)
            raise MediaError(f"{p} has no video stream ({kinds or 'no streams'})")
        rotation = _first_frame_rotation(c, v)
        width, height = v.codec_context.width, v.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = float(rate) if rate else 0.0
        duration = None
        if v.duration is not None and v.time_base is not None:
            duration = float(v.duration * v.time_base)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        a = audio_stream(c, audio_track)
        tracks = list(c.streams.audio)
        return MediaInfo(
            path=p, width=width, height=height, rotation=rotation, fps=fps,
            num_frames=v.frames or None, duration=duration, has_audio=a is not None,
            audio_sample_rate=a.codec_context.sample_rate if a else None,
            audio_channels=a.codec_context.channels if a else None,
            audio_track=tracks.index(a) if a else None, audio_tracks=len(tracks),
            audio_stream=a.index if a else None,
            audio_language=_language(a) if a else None,
            audio_title=(a.metadata.get("title") or None) if a else None,
        )


def audio_stream(container: av.container.InputContainer, track: int | None = None):
    """The audio track to use: number ``track`` among the audio tracks (0-based, in file
    order) when given, else the one marked *default* (a player's choice), else the first.
    None when the file has no audio; :class:`MediaError` naming the tracks when ``track``
    does not exist."""
    tracks = list(container.streams.audio)
    if track is not None:
        if not 0 <= track < len(tracks):
            raise MediaError(f"{container.name} has no audio track {track}; "
                             f"{describe_audio_tracks(tracks)}")
        return tracks[track]
    default = [s for s in tracks if s.disposition & av.stream.Disposition.default]
    return (default or tracks or [None])[0]


def describe_audio_tracks(tracks) -> str:
    """'it has 2 audio tracks: 0 (eng), 1 (default, fra, Commentary)' for messages."""
    if not tracks:
        return "it has no audio track"
    parts = []
    for n, s in enumerate(tracks):
        tags = ["default"] if s.disposition & av.stream.Disposition.default else []
        tags += [t for t in (_language(s), s.metadata.get("title")) if t]
        parts.append(f"{n} ({', '.join(tags)})" if tags else str(n))
    return f"it has {len(tracks)} audio track{'s' if len(tracks) > 1 else ''}: " + \
        ", ".join(parts)


def _language(stream) -> str | None:
    lang = stream.metadata.get("language")
    return lang if lang and lang != "und" else None


def _is_cover(stream) -> bool:
    return stream.type == "video" and bool(stream.disposition
                                           & av.stream.Disposition.attached_pic)


def video_stream(container: av.container.InputContainer):
    """The first real video stream: embedded cover art / thumbnails (attached pictures,
    as in music files or downloaded MP4s) are not the video. None when there is none."""
    return next((s for s in container.streams.video if not _is_cover(s)), None)


def _first_frame_rotation(container, stream) -> int:
    try:
        for frame in container.decode(stream):
            return _clockwise(frame.rotation)
    except av.error.FFmpegError as e:
        raise MediaError(f"{container.name}: cannot decode video ({e})") from e
    raise MediaError(f"{container.name} has a video stream but no decodable frame")


def _clockwise(rotation: float | int | None) -> int:
    """PyAV reports the display matrix rotation counter-clockwise; we rotate clockwise."""
    return int(round(-(rotation or 0) / 90.0)) % 4 * 90


@dataclass
class Frame:
    index: int  # 0-based, presentation order
    time: float  # seconds, from the frame's own timestamp (correct for VFR)
    rgb: np.ndarray  # (S, S, 3) uint8 when a size was asked for, else (H, W, 3) display size


def iter_frames(path: str | os.PathLike, *, size: int | None = None, stride: int = 1,
                fps_hint: float | None = None, start: int = 0,
                stop: int | None = None) -> Iterator[Frame]:
    """Yield every ``stride``-th frame of ``[start, stop)`` with its timestamp, rotated for
    display and, when ``size`` is given, scaled (area filter) to ``size x size`` as SAM2
    expects. Frames before ``start`` are decoded (indices must stay exact) but not converted."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"bad frame range [{start}, {stop})")
    with _open(path) as c:
        v = video_stream(c)
        if v is None:
            raise MediaError(f"{path} has no video stream")
        v.thread_type = "AUTO"
        origin = float(v.start_time * v.time_base) if v.start_time is not None else 0.0
        index = 0
        try:
            for frame in c.decode(v):
                if stop is not None and index >= stop:
                    return
                if index >= start and (index - start) % stride == 0:
                    if frame.pts is not None:
                        t = float(frame.pts * v.time_base) - origin
                    else:
                        t = index / (fps_hint or 25.0)
                    yield Frame(index, max(t, 0.0), _to_rgb(frame, size))
                index += 1
        except av.error.FFmpegError as e:
            if index == 0:
                raise MediaError(f"{path}: cannot decode video ({e})") from e
            # A truncated file: keep what decoded, as players do.
            return


def _to_rgb(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    turns = _clockwise(frame.rotation) // 90
    if size is None:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.reformat(width=size, height=size, format="rgb24",
                             interpolation="AREA").to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, k=-turns)) if turns else rgb


# ----------------------------------------------------------------------------- audio

_SIDE_LEFT = ("FL", "BL", "SL", "FLC", "TFL", "TBL", "WL", "TSL")
_SIDE_RIGHT = ("FR", "BR", "SR", "FRC", "TFR", "TBR", "WR", "TSR")


def downmix_weights(channel_names: list[str]) -> np.ndarray:
    """(2, C) matrix taking C named channels to stereo (see the module docstring)."""
    c = len(channel_names)
    if c == 1:
        return np.ones((2, 1), np.float32)
    if c == 2:
        return np.eye(2, dtype=np.float32)
    w = np.zeros((2, c), np.float32)
    for i, name in enumerate(channel_names):
        name = name.upper()
        if name in _SIDE_LEFT:
            w[0, i] = 1.0 if name == "FL" else math.sqrt(0.5)
        elif name in _SIDE_RIGHT:
            w[1, i] = 1.0 if name == "FR" else math.sqrt(0.5)
        elif name.startswith("LFE"):
            continue
        else:  # centre and anything unpaired
            w[:, i] = math.sqrt(0.5)
    return w / np.maximum(w.sum(axis=1, keepdims=True), 1e-6)


def _channel_names(layout: av.AudioLayout) -> list[str]:
    """The layout's channel names; an unspecified order (PCM in Matroska or plain WAV says
    only "6 channels") gets FFmpeg's default layout for that count, as the ffmpeg CLI does."""
    names = [ch.name for ch in layout.channels]
    if "NONE" in names and len(names) > 2:
        try:
            return [ch.name for ch in av.AudioLayout(f"{len(names)}c").channels]
        except ValueError:  # no default layout for this count: all channels to both sides
            pass
    return names


class _Resampler16k:
    """Streams audio to 16 kHz with the same filter as :func:`resample_to_16k`.

    Blocks start on multiples of the input step ``sr / gcd(sr, 16000)`` and carry enough
    context on both sides for the sinc filter, so the concatenated output equals resampling
    the whole signal at once (up to float rounding).
    """

    def __init__(self, sample_rate: int, block_seconds: float = 2.0) -> None:
        self.sr = sample_rate
        g = math.gcd(sample_rate, VGGISH_SAMPLE_RATE)
        self.step_in, self.step_out = sample_rate // g, VGGISH_SAMPLE_RATE // g
        half_width = math.ceil(64 * sample_rate / (0.9 * min(sample_rate, VGGISH_SAMPLE_RATE)))
        self.margin = (half_width // self.step_in + 2) * self.step_in
        self.block = max(1, int(block_seconds * sample_rate) // self.step_in) * self.step_in
        self.buf = np.zeros((2, self.margin), np.float32)  # left context: silence
        self.consumed = 0  # input samples already turned into output
        self.total_in = 0

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        self.buf = np.concatenate([self.buf, pcm], axis=1)
        self.total_in += pcm.shape[1]
        out = []
        while self.buf.shape[1] >= 2 * self.margin + self.block:
            out.append(self._run(self.block))
        return out

    def finish(self) -> list[np.ndarray]:
        n_out_total = int(self.total_in * VGGISH_SAMPLE_RATE / self.sr)
        produced = self.consumed * self.step_out // self.step_in
        remaining = self.buf.shape[1] - self.margin
        if remaining <= 0 or n_out_total <= produced:
            return []
        self.buf = np.concatenate([self.buf, np.zeros((2, self.margin), np.float32)], axis=1)
        padded = math.ceil(remaining / self.step_in) * self.step_in
        if self.buf.shape[1] < 2 * self.margin + padded:
            extra = 2 * self.margin + padded - self.buf.shape[1]
            self.buf = np.concatenate([self.buf, np.zeros((2, extra), np.float32)], axis=1)
        return [self._run(padded)[:, : n_out_total - produced]]

    def _run(self, n_in: int) -> np.ndarray:
        if self.sr == VGGISH_SAMPLE_RATE:
            chunk = self.buf[:, self.margin: self.margin + n_in]
        else:
            seg = torch.from_numpy(self.buf[:, : 2 * self.margin + n_in])
            res = resample_to_16k(seg, self.sr).numpy()
            m_out = self.margin * self.step_out // self.step_in
            chunk = res[:, m_out: m_out + n_in * self.step_out // self.step_in]
        self.buf = self.buf[:, n_in:]
        self.consumed += n_in
        return chunk


def iter_audio_16k(path: str | os.PathLike, track: int | None = None) -> Iterator[np.ndarray]:
    """Yield an audio track (``track``, else the default one: :func:`audio_stream`) as
    ``(2, n)`` float32 chunks at 16 kHz (channel policy above). Raises :class:`MediaError`
    when there is no audio track.

    Sample 0 is at the video stream's start (the time origin of :func:`iter_frames`): audio
    that starts later (an ``-itsoffset``, a delayed track) is preceded by silence and audio
    from before the video starts is dropped, so sound and picture line up as in a player."""
    with _open(path) as c:
        a = audio_stream(c, track)
        if a is None:
            raise MediaError(f"{path} has no audio track")
        if not a.codec_context.sample_rate:
            raise MediaError(f"{path}: audio track has no sample rate")
        shift = 0
        if video_stream(c) is not None:
            offset = _start_seconds(a) - _start_seconds(video_stream(c))
            shift = round(offset * VGGISH_SAMPLE_RATE)
        yield from _shifted(_decode_16k(c, a), shift)


def _start_seconds(stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _shifted(chunks: Iterator[np.ndarray], shift: int) -> Iterator[np.ndarray]:
    """Delay ``(2, n)`` chunks by ``shift`` samples (silence first) or drop the first
    ``-shift`` samples."""
    while shift > 0:  # in bounded blocks: a broken timestamp must not allocate gigabytes
        n = min(shift, 60 * VGGISH_SAMPLE_RATE)
        yield np.zeros((2, n), np.float32)
        shift -= n
    drop = -shift
    for chunk in chunks:
        if drop:
            cut = min(drop, chunk.shape[1])
            chunk, drop = chunk[:, cut:], drop - cut
        if chunk.shape[1]:
            yield chunk


def _decode_16k(c: av.container.InputContainer, a) -> Iterator[np.ndarray]:
    to_float = av.AudioResampler(format="fltp")
    resampler: _Resampler16k | None = None
    weights = None
    try:
        for frame in c.decode(a):
            for f in to_float.resample(frame):
                if resampler is None:
                    resampler = _Resampler16k(f.sample_rate)
                    weights = downmix_weights(_channel_names(f.layout))
                pcm = f.to_ndarray().astype(np.float32, copy=False)
                yield from resampler.push(weights @ pcm)
    except av.error.FFmpegError:
        pass  # truncated audio: keep what decoded
    if resampler is not None:
        yield from resampler.finish()
