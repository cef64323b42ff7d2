"""Small test media made with the ``ffmpeg`` command line (lavfi sources) into tmp dirs.

Everything is tiny (tens of pixels, a few frames, a second or two of audio) so the engine
tests stay fast. Nothing here is a test; the media, engine and CLI tests import it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")


def ffmpeg(*args: object) -> None:
    """Run ``ffmpeg -y`` quietly; raise with ffmpeg's stderr when it fails."""
    cmd = [FFMPEG, "-y", "-nostdin", "-hide_banner", "-loglevel", "error", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")


def ffprobe_json(path: str | Path, *entries: str) -> dict:
    import json

    cmd = [FFPROBE, "-v", "error", "-of", "json", *entries, str(path)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def tone(freq: float = 440.0, amp: float = 0.5, start: float = 0.0) -> str:
    """An aevalsrc expression: a sine that starts (sample-exactly) at ``start`` seconds."""
    wave = f"{amp}*sin(2*PI*{freq}*t)"
    return wave if start <= 0 else f"if(gte(t\\,{start})\\,{wave}\\,0)"  # lavfi: escape ,


def audio_src(seconds: float, sample_rate: int = 16000, channels: Sequence[str] = (tone(),),
              layout: str | None = None) -> list[str]:
    """lavfi input args for an audio source with one expression per channel."""
    layout = layout or {1: "mono", 2: "stereo", 6: "5.1"}[len(channels)]
    expr = "|".join(channels)
    return ["-f", "lavfi", "-i", f"aevalsrc={expr}:c={layout}:s={sample_rate}:d={seconds}"]


def video_src(seconds: float | None = None, fps: float = 5, size: tuple[int, int] = (64, 48),
              pattern: str = "testsrc", frames: int | None = None) -> list[str]:
    """lavfi input args for a test pattern (``size`` is width x height)."""
    if frames is not None:
        seconds = frames / fps
    sep = ":" if "=" in pattern else "="  # "color=c=red" already has options
    return ["-f", "lavfi", "-i", f"{pattern}{sep}size={size[0]}x{size[1]}:rate={fps}:"
                                 f"duration={seconds}"]


def make_video(path: str | Path, *, seconds: float = 1.0, fps: float = 5,
               size: tuple[int, int] = (64, 48), frames: int | None = None,
               audio_seconds: float | None = None, audio: bool = True,
               sample_rate: int = 16000, channels: Sequence[str] = (tone(),),
               layout: str | None = None, vcodec: str = "libx264",
               pix_fmt: str | None = "yuv420p", acodec: str = "aac",
               pattern: str = "testsrc", extra: Sequence[str] = ()) -> Path:
    """A test-pattern video (``frames`` frames, or ``seconds`` long) with an optional audio
    track of ``audio_seconds`` (default: as long as the video), one expression per channel.
    Both streams are written in full (no ``-shortest``) so their lengths can differ."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args: list[str] = video_src(seconds, fps, size, pattern, frames)
    if audio:
        a_len = audio_seconds if audio_seconds is not None else (
            frames / fps if frames is not None else seconds)
        args += audio_src(a_len, sample_rate, channels, layout)
    args += ["-c:v", vcodec]
    if pix_fmt:
        args += ["-pix_fmt", pix_fmt]
    if vcodec == "libx264":
        args += ["-preset", "ultrafast"]
    if audio:
        args += ["-c:a", acodec]
    ffmpeg(*args, *extra, path)
    return path


def make_vfr(path: str | Path, times: Sequence[float], *, size: tuple[int, int] = (64, 48),
             audio_seconds: float | None = None, channels: Sequence[str] = (tone(),)) -> Path:
    """A variable-frame-rate Matroska file whose frames have exactly ``times`` (seconds) as
    timestamps (``setpts`` with a per-frame table, passed through without CFR conversion)."""
    path = Path(path)
    expr = str(times[-1])
    for n in range(len(times) - 2, -1, -1):
        expr = f"if(eq(N,{n}),{times[n]},{expr})"
    args = video_src(fps=100, size=size, frames=len(times))
    if audio_seconds:
        args += audio_src(audio_seconds, 16000, channels)
    args += ["-vf", f"setpts='{expr}/TB'", "-fps_mode", "passthrough", "-c:v", "mpeg4",
             "-q:v", "5"]
    if audio_seconds:
        args += ["-c:a", "pcm_s16le"]
    ffmpeg(*args, path)
    return path


def rotated_copy(src: str | Path, dst: str | Path, degrees: int) -> Path:
    """Stream copy with a ``rotate`` tag (FFmpeg 5.1 writes it as a display matrix)."""
    ffmpeg("-i", src, "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", dst)
    return Path(dst)


def ffmpeg_first_frame(src: str | Path, png: str | Path) -> np.ndarray:
    """The first frame as the ffmpeg CLI shows it (it applies rotation metadata)."""
    from PIL import Image

    ffmpeg("-i", src, "-frames:v", "1", png)
    return np.asarray(Image.open(png).convert("RGB"))


def cut(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of a file's bytes (a download or copy that stopped)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def zero_frame_video(path: str | Path) -> Path:
    """A Matroska file with a video and an audio stream but no video frame at all."""
    ffmpeg(*video_src(1.0, 10), *audio_src(1.0), "-vf", "trim=end_frame=0", "-c:v", "mpeg4",
           "-c:a", "aac", path)
    return Path(path)


def make_two_track_video(path: str | Path, *, frames: int = 5, fps: float = 5,
                         default: int | None = 1) -> Path:
    """A video with two audio tracks: track 0 silent, track 1 a 440 Hz tone (language
    ``fra``, title ``Tone``); ``default`` is the track with the *default* disposition (None:
    neither; use Matroska for that, MP4 marks the first track default whatever is asked)."""
    seconds = frames / fps
    args = [*video_src(frames=frames, fps=fps), *audio_src(seconds, channels=("0",)),
            *audio_src(seconds, channels=(tone(440),)), "-map", "0:v", "-map", "1:a",
            "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-metadata:s:a:1", "language=fra", "-metadata:s:a:1", "title=Tone"]
    for track in (0, 1):
        args += [f"-disposition:a:{track}", "default" if track == default else "0"]
    ffmpeg(*args, path)
    return Path(path)
