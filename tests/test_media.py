"""Reading real media (auralsam2_core/media/video.py) and the audio track (audio_track.py): every
bad input gives a clear MediaError or a documented behaviour, and odd-but-valid inputs (VFR,
rotation, odd sizes, 8-96 kHz, mono / 5.1, short audio) come out right.

Documented behaviours chosen here:

* missing / directory / 0-byte / random-bytes / text files and an audio-only file are
  :class:`MediaError` naming the path; so are named pipes, devices, symbolic-link loops and
  names too long for the file system, each saying what it is (never "not found");
* of several audio tracks the *default* one is heard (else the first) unless one is asked
  for; asking for a track that does not exist names the tracks there are;
* a still image (PNG) is a 1-frame video without audio;
* a video stream without a decodable frame is a :class:`MediaError` from ``probe``
  (``iter_frames`` then yields nothing);
* a cut MP4 whose ``moov`` index sits at the end (the ffmpeg default) cannot be read:
  :class:`MediaError`; a cut file that stays decodable (MPEG-TS, Matroska, fast-start MP4)
  yields the frames that decode, as players do;
* the audio track's time 0 is the video stream's start: a delayed audio track is padded with
  silence (and audio from before the video is dropped).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from auralsam2_core.media.audio_track import _CENTRE_OFFSET, HOP_SECONDS, SILENCE, AudioTrack
from auralsam2_core.media.log_mel import EXAMPLE_FRAMES, resample_to_16k
from auralsam2_core.media.video import (
    MediaError,
    downmix_weights,
    iter_audio_16k,
    iter_frames,
    probe,
)

from helpers import media_factory as mf

pytestmark = pytest.mark.skipif(mf.FFMPEG is None, reason="needs the ffmpeg command")


def audio_of(path) -> np.ndarray:
    chunks = list(iter_audio_16k(path))
    assert all(c.dtype == np.float32 and c.ndim == 2 and c.shape[0] == 2 for c in chunks)
    return np.concatenate(chunks, axis=1)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# ------------------------------------------------------------------------- unusable files


def test_probe_describes_a_normal_video(tmp_path):
    p = mf.make_video(tmp_path / "v.mp4", frames=5, fps=5, size=(64, 48), sample_rate=22050)
    info = probe(p)
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.fps == pytest.approx(5.0)
    assert info.num_frames == 5
    assert info.duration == pytest.approx(1.0, abs=0.05)
    assert info.has_audio and info.audio_sample_rate == 22050 and info.audio_channels == 1
    frames = list(iter_frames(p))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8], abs=1e-6)
    assert all(f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 for f in frames)
    scaled = next(iter_frames(p, size=32))
    assert scaled.rgb.shape == (32, 32, 3)


def test_probe_remembers_a_file_until_it_changes(tmp_path, monkeypatch):
    """An unchanged file is described from memory (a click probes its video twice); a file
    replaced under the same name, or the same one asked for another audio track, is probed."""
    from auralsam2_core.media import video as v

    opened = []
    real_open = v._open
    monkeypatch.setattr(v, "_open", lambda p: opened.append(p) or real_open(p))
    p = mf.make_video(tmp_path / "v.mp4", frames=5, fps=5, size=(64, 48))
    first = probe(p)
    assert probe(p) is first and probe(str(p)) is first and len(opened) == 1
    assert probe(p, audio_track=0).audio_track == 0 and len(opened) == 2
    mf.make_video(tmp_path / "other.mp4", frames=7, fps=5, size=(32, 48))
    (tmp_path / "other.mp4").replace(p)  # another file (another inode) under the same name
    assert (probe(p).width, probe(p).num_frames) == (32, 7) and len(opened) == 3
    p.write_bytes(b"not a video any more")  # changed in place: size and time differ
    with pytest.raises(MediaError, match="not a readable media file"):
        probe(p)


def test_missing_directory_and_empty_files(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaError, match="not found") as e:
        probe(missing)
    assert str(missing) in str(e.value)
    with pytest.raises(MediaError, match="directory"):
        probe(tmp_path)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    for fn in (probe, lambda p: next(iter_frames(p)), lambda p: next(iter_audio_16k(p))):
        with pytest.raises(MediaError, match=r"empty \(0 bytes\)") as e:
            fn(empty)
        assert str(empty) in str(e.value)


def test_paths_that_are_not_regular_files_say_what_they_are(tmp_path):
    """A named pipe would block FFmpeg forever; none of these is "not found"."""
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    (tmp_path / "a.mp4").symlink_to(tmp_path / "b.mp4")
    (tmp_path / "b.mp4").symlink_to(tmp_path / "a.mp4")
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    long_name = tmp_path / ("x" * 300 + ".mp4")
    cases = {fifo: "is a named pipe (FIFO), not a video file",
             tmp_path / "a.mp4": "is a symbolic link loop",
             tmp_path / "gone.mp4": "is a broken symbolic link",
             long_name: "file name too long (304 bytes in one name",
             Path("/dev/null"): "is a character device, not a video file",
             tmp_path: "is a directory"}
    for path, message in cases.items():
        with pytest.raises(MediaError, match=re.escape(message)) as e:
            probe(path)
        assert str(path) in str(e.value)


def test_random_bytes_are_a_media_error_naming_the_path(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    with pytest.raises(MediaError) as e:
        probe(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(MediaError):
        list(iter_frames(bad))


@pytest.mark.parametrize("text", ["hello\n", "Some notes about the clip.\n" * 200])
def test_text_file_is_not_a_video(tmp_path, text):
    # FFmpeg's "tty" demuxer would render a multi-line .txt as ANSI-art video frames.
    p = tmp_path / "notes.txt"
    p.write_text(text)
    with pytest.raises(MediaError) as e:
        probe(p)
    assert str(p) in str(e.value)
    with pytest.raises(MediaError):
        list(iter_frames(p))


def test_audio_only_file_is_not_a_video(tmp_path):
    wav = tmp_path / "sound.wav"
    mf.ffmpeg(*mf.audio_src(0.5), wav)
    with pytest.raises(MediaError, match=r"has no video stream \(audio\)") as e:
        probe(wav)
    assert str(wav) in str(e.value)
    with pytest.raises(MediaError, match="no video stream"):
        list(iter_frames(wav))
    assert audio_of(wav).shape == (2, 8000)  # its audio is still readable


def test_audio_file_with_cover_art_is_not_a_video(tmp_path):
    # music files (and downloaded MP4s) carry a picture as an "attached_pic" video stream
    png = tmp_path / "cover.png"
    mf.ffmpeg(*mf.video_src(frames=1, size=(40, 30)), "-frames:v", "1", png)
    song = tmp_path / "song.m4a"
    mf.ffmpeg(*mf.audio_src(0.5), "-i", png, "-map", "0", "-map", "1", "-c:a", "aac",
              "-c:v", "png", "-disposition:v", "attached_pic", song)
    with pytest.raises(MediaError, match=r"no video stream \(audio, cover art\)"):
        probe(song)
    with pytest.raises(MediaError, match="no video stream"):
        list(iter_frames(song))
    # a video with an embedded thumbnail is the video, not the thumbnail
    video = mf.make_video(tmp_path / "v.mp4", frames=4)
    thumbed = tmp_path / "thumbed.mp4"
    mf.ffmpeg("-i", png, "-i", video, "-map", "0", "-map", "1", "-c", "copy", "-c:v:0",
              "mjpeg", "-disposition:v:0", "attached_pic", thumbed)
    info = probe(thumbed)
    assert (info.width, info.height, info.num_frames) == (64, 48, 4)
    assert len(list(iter_frames(thumbed))) == 4


def test_still_image_is_a_one_frame_video_without_audio(tmp_path):
    png = tmp_path / "still.png"
    mf.ffmpeg(*mf.video_src(frames=1, size=(40, 30)), "-frames:v", "1", png)
    info = probe(png)
    assert (info.width, info.height, info.has_audio) == (40, 30, False)
    frames = list(iter_frames(png))
    assert len(frames) == 1 and frames[0].index == 0 and frames[0].time == 0.0
    assert frames[0].rgb.shape == (30, 40, 3)
    with pytest.raises(MediaError, match="no audio track"):
        list(iter_audio_16k(png))


def test_video_stream_without_frames(tmp_path):
    p = mf.zero_frame_video(tmp_path / "zero.mkv")
    with pytest.raises(MediaError, match="no decodable frame") as e:
        probe(p)
    assert str(p) in str(e.value)
    assert list(iter_frames(p)) == []


def test_one_frame_video(tmp_path):
    p = mf.make_video(tmp_path / "one.mp4", frames=1, fps=5)
    assert probe(p).num_frames == 1
    frames = list(iter_frames(p, size=64))
    assert len(frames) == 1 and frames[0].time == 0.0


def test_cut_mp4_with_index_at_the_end_is_unreadable(tmp_path):
    full = mf.make_video(tmp_path / "full.mp4", frames=10, fps=10)
    cut = mf.cut(full, tmp_path / "cut.mp4")
    with pytest.raises(MediaError, match="not a readable media file") as e:
        probe(cut)
    assert str(cut) in str(e.value)


@pytest.mark.parametrize("ext,extra", [(".ts", []), (".mkv", []),
                                       (".mp4", ["-movflags", "+faststart"])])
def test_cut_file_keeps_the_frames_that_decode(tmp_path, ext, extra):
    full = mf.make_video(tmp_path / f"full{ext}", frames=20, fps=10, extra=extra)
    cut = mf.cut(full, tmp_path / f"cut{ext}")
    info = probe(cut)
    frames = list(iter_frames(cut))
    assert 2 <= len(frames) < 20
    assert [f.index for f in frames] == list(range(len(frames)))
    assert [f.time for f in frames] == pytest.approx([i / 10 for i in range(len(frames))],
                                                     abs=2e-3)
    assert info.has_audio
    a = audio_of(cut)  # the audio that decodes, not the whole 2 s
    assert 0 < a.shape[1] < 2 * 16000


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size,vcodec,pix_fmt", [((321, 239), "mjpeg", "yuvj444p"),
                                                 ((321, 239), "mpeg4", "yuv420p"),
                                                 ((240, 426), "libx264", "yuv420p")])
def test_odd_and_portrait_sizes(tmp_path, size, vcodec, pix_fmt):
    p = mf.make_video(tmp_path / "v.mkv", frames=2, size=size, vcodec=vcodec, pix_fmt=pix_fmt,
                      audio=False)
    info = probe(p)
    assert (info.width, info.height) == size
    f = next(iter_frames(p))
    assert f.rgb.shape == (size[1], size[0], 3)
    assert next(iter_frames(p, size=64)).rgb.shape == (64, 64, 3)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_matches_the_ffmpeg_cli(tmp_path, degrees):
    plain = mf.make_video(tmp_path / "plain.mp4", frames=2, size=(64, 48), audio=False)
    rotated = mf.rotated_copy(plain, tmp_path / f"rot{degrees}.mp4", degrees)
    info = probe(rotated)
    swapped = degrees in (90, 270)
    assert (info.width, info.height) == ((48, 64) if swapped else (64, 48))
    assert info.rotation in (90, 180, 270)
    ours = next(iter_frames(rotated)).rgb
    theirs = mf.ffmpeg_first_frame(rotated, tmp_path / "ffmpeg.png")  # ffmpeg auto-rotates
    assert ours.shape == theirs.shape == (info.height, info.width, 3)
    assert np.abs(ours.astype(int) - theirs).mean() < 3
    # info.rotation is the clockwise turn applied; the pattern (asymmetric) really turned
    turns = -info.rotation // 90
    unrotated = next(iter_frames(plain)).rgb
    assert np.abs(np.rot90(unrotated, k=turns).astype(int) - theirs).mean() < 3
    assert swapped or np.abs(unrotated.astype(int) - ours).mean() > 30
    # the model-size frames are turned the same way
    small = next(iter_frames(rotated, size=32)).rgb
    small_plain = next(iter_frames(plain, size=32)).rgb
    assert np.array_equal(small, np.rot90(small_plain, k=turns))


def test_4k_frames(tmp_path):
    p = mf.make_video(tmp_path / "uhd.mp4", frames=2, size=(3840, 2160), audio=False,
                      pattern="color=c=red")
    info = probe(p)
    assert (info.width, info.height) == (3840, 2160)
    frames = list(iter_frames(p, size=64))
    assert len(frames) == 2 and frames[0].rgb.shape == (64, 64, 3)


def test_paths_with_spaces_and_non_ascii(tmp_path):
    p = mf.make_video(tmp_path / "vidéo clip ü" / "fichier 1.mp4", frames=3)
    assert probe(p).path == p
    assert len(list(iter_frames(p))) == 3
    assert audio_of(p).shape[0] == 2


def test_stride(tmp_path):
    p = mf.make_video(tmp_path / "v.mp4", frames=10, fps=10, audio=False)
    frames = list(iter_frames(p, stride=3))
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9], abs=1e-6)
    with pytest.raises(ValueError, match="stride"):
        list(iter_frames(p, stride=0))


# ----------------------------------------------------------------------- variable frame rate

VFR_TIMES = [0.0, 0.1, 0.15, 0.6, 1.3, 1.35, 1.4, 2.0]


def test_vfr_frame_times_are_the_real_timestamps(tmp_path):
    p = mf.make_vfr(tmp_path / "vfr.mkv", VFR_TIMES)
    frames = list(iter_frames(p, size=32))
    assert [f.index for f in frames] == list(range(len(VFR_TIMES)))
    times = [f.time for f in frames]
    assert times == pytest.approx(VFR_TIMES, abs=1e-3)  # not index / fps
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    fps = probe(p).fps
    assert not np.allclose(times, np.arange(len(times)) / fps, atol=0.01)


def energy(example: torch.Tensor) -> torch.Tensor:
    return example[0].mean(dim=-1)  # (96,) left channel, mean log-mel per 10 ms frame


def onset(example: torch.Tensor, tone_start: float, t: float) -> float:
    """Time (on the video's clock) where the tone appears in the example for time ``t``."""
    j = int(torch.nonzero(energy(example) > SILENCE + 0.5)[0])
    # frame j's window covers [start + j*hop, start + j*hop + 25 ms); its centre:
    return t - _CENTRE_OFFSET + j * HOP_SECONDS + 0.0125


def test_examples_are_centred_on_each_frames_own_time(tmp_path):
    # A tone that starts at exactly 1.0 s; a frame's example must show the onset at
    # (1.0 - t) after its centre, whatever the frame times (VFR).
    p = mf.make_vfr(tmp_path / "vfr_tone.mkv", VFR_TIMES, audio_seconds=2.5,
                    channels=(mf.tone(1000, 0.5, start=1.0),))
    track = AudioTrack.from_file(p)
    assert track.duration == pytest.approx(2.5, abs=0.03)
    times = [f.time for f in iter_frames(p, size=16)]
    ex = track.examples_at(times)
    assert ex.shape == (len(times), 2, EXAMPLE_FRAMES, 64)
    for t, e in zip(times, ex, strict=True):
        if abs(t - 1.0) < 0.45:  # the onset is inside this frame's 0.96 s window
            assert onset(e, 1.0, t) == pytest.approx(1.0, abs=0.015), t
        elif t < 1.0:  # before the tone: the window is quiet
            assert float(energy(e).max()) < SILENCE + 0.1
        else:  # after: all tone
            assert float(energy(e).min()) > SILENCE + 0.5


def test_delayed_audio_track_lines_up_with_the_video(tmp_path):
    # The audio stream starts 0.5 s after the video (as after ffmpeg -itsoffset 0.5) and
    # its tone starts 0.5 s into the stream: a player sounds it at 1.0 s of video time.
    p = tmp_path / "delayed.mkv"
    mf.ffmpeg(*mf.video_src(2.0, 10), "-itsoffset", "0.5",
              *mf.audio_src(1.5, 16000, (mf.tone(1000, 0.5, start=0.5),)),
              "-c:v", "mpeg4", "-c:a", "pcm_s16le", p)
    a = audio_of(p)
    first = np.flatnonzero(np.abs(a[0]) > 0.05)[0] / 16000
    assert first == pytest.approx(1.0, abs=0.002)
    assert a.shape[1] == pytest.approx(2.0 * 16000, abs=2)  # 0.5 s silence + 1.5 s of track
    ex = AudioTrack.from_file(p).examples_at([1.0])
    assert onset(ex[0], 1.0, 1.0) == pytest.approx(1.0, abs=0.015)


# --------------------------------------------------------------------------------- audio


def _sine(sr: int, seconds: float, freq: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (np.round(amp * np.sin(2 * np.pi * freq * t) * 32767) / 32768).astype(np.float32)


@pytest.mark.parametrize("sr", [8000, 44100, 96000])
def test_sample_rates_stream_to_16k(tmp_path, sr):
    # 2.5 s > one 2 s resampler block, so a block boundary is crossed.
    p = mf.make_video(tmp_path / f"a{sr}.mkv", seconds=0.4, audio_seconds=2.5,
                      sample_rate=sr, channels=(mf.tone(440), mf.tone(1000, 0.25)),
                      acodec="pcm_s16le", vcodec="mpeg4")
    info = probe(p)
    assert (info.audio_sample_rate, info.audio_channels) == (sr, 2)
    a = audio_of(p)
    assert a.shape == (2, 40000)  # int(n * 16000 / sr), the resampy length
    # the streamed blocks equal resampling the whole signal at once
    whole = resample_to_16k(torch.from_numpy(np.stack([_sine(sr, 2.5, 440),
                                                       _sine(sr, 2.5, 1000, 0.25)])), sr)
    np.testing.assert_allclose(a, whole.numpy(), atol=2e-4)
    # and it is the right signal: the analytic tones at 16 kHz (away from the edges)
    ref = np.stack([_sine(16000, 2.5, 440), _sine(16000, 2.5, 1000, 0.25)])
    np.testing.assert_allclose(a[:, 400:-400], ref[:, 400:-400], atol=5e-3)


def test_mono_goes_to_both_sides(tmp_path):
    p = mf.make_video(tmp_path / "mono.mp4", seconds=0.4, sample_rate=8000)
    assert probe(p).audio_channels == 1
    a = audio_of(p)
    assert rms(a[0]) > 0.1
    np.testing.assert_array_equal(a[0], a[1])


@pytest.mark.parametrize("side", [0, 1])
def test_stereo_left_and_right_are_kept(tmp_path, side):
    chans = [mf.tone(440), "0"] if side == 0 else ["0", mf.tone(440)]
    p = mf.make_video(tmp_path / "st.mp4", seconds=0.5, channels=chans, sample_rate=48000)
    a = audio_of(p)
    assert rms(a[side]) > 0.2
    assert rms(a[1 - side]) < 1e-3 * rms(a[side])


def test_downmix_weights():
    np.testing.assert_array_equal(downmix_weights(["FC"]), [[1.0], [1.0]])
    np.testing.assert_array_equal(downmix_weights(["FL", "FR"]), np.eye(2))
    w = downmix_weights(["FL", "FR", "FC", "LFE", "BL", "BR"])
    assert w.shape == (2, 6)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    assert w[0, 1] == w[0, 5] == w[1, 0] == w[1, 4] == 0  # left never in R, right never in L
    assert w[0, 3] == w[1, 3] == 0  # LFE dropped
    assert w[0, 2] == w[1, 2] > 0  # centre to both
    assert w[0, 0] == pytest.approx(math.sqrt(2) * w[0, 4])  # surround at -3 dB


@pytest.mark.parametrize("container,acodec", [("mp4", "aac"), ("mkv", "pcm_s16le")])
def test_51_downmix_keeps_left_left_and_right_right(tmp_path, container, acodec):
    # PCM in Matroska carries no channel layout ("6 channels"); FFmpeg's default 5.1 order
    # is assumed for it, as the ffmpeg CLI does.
    def make(name, channels):
        return mf.make_video(tmp_path / f"{name}.{container}", seconds=0.4, channels=channels,
                             layout="5.1", sample_rate=48000, acodec=acodec)

    silent = ["0"] * 6
    left = make("left", [mf.tone(440), *silent[1:]])
    right = make("right", [silent[0], mf.tone(440), *silent[2:]])
    centre = make("centre", [*silent[:2], mf.tone(440), *silent[3:]])
    assert probe(left).audio_channels == 6
    a = audio_of(left)
    assert rms(a[0]) > 0.05 and rms(a[1]) < 1e-3 * rms(a[0])
    a = audio_of(right)
    assert rms(a[1]) > 0.05 and rms(a[0]) < 1e-3 * rms(a[1])
    a = audio_of(centre)
    assert rms(a[0]) > 0.05
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)


# --------------------------------------------------------------------------- audio track


def test_audio_shorter_than_one_example(tmp_path):
    p = mf.make_video(tmp_path / "short.mkv", seconds=2.0, audio_seconds=0.3,
                      channels=(mf.tone(1000),), acodec="pcm_s16le", vcodec="mpeg4")
    track = AudioTrack.from_file(p)
    assert 0.2 < track.duration <= 0.3
    ex = track.examples_at([0.0, 0.15, 1.0, 1.9])
    assert ex.shape == (4, 2, EXAMPLE_FRAMES, 64)
    for e in ex[:2]:  # part tone, part silence padding
        assert float(e.max()) > SILENCE + 3 and float(e.min()) == pytest.approx(SILENCE)
    assert torch.all(ex[2:] == SILENCE)  # after the audio: silence examples


def test_audio_track_from_chunks_matches_one_block():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16000)).astype(np.float32) * 0.1
    whole = AudioTrack.from_chunks([x])
    pieces = AudioTrack.from_chunks([x[:, :123], x[:, 123:5000], x[:, 5000:5001], x[:, 5001:]])
    assert whole.frames.shape == (1 + (16000 - 400) // 160, 2, 64)
    torch.testing.assert_close(pieces.frames, whole.frames, atol=1e-4, rtol=1e-4)
    assert AudioTrack.from_chunks([]).frames.shape == (0, 2, 64)
    assert torch.all(AudioTrack.silent().examples_at([0.0, 5.0]) == SILENCE)


def test_audio_stream_equals_whole_track_and_keeps_a_window():
    """The engine's streaming audio gives the same examples as the whole track while holding
    only a few seconds of log-mel frames; going back in time is refused."""
    from auralsam2_core.media.audio_track import AudioStream

    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal((2, 16000 * 20))).astype(np.float32)
    chunks = [x[:, i:i + 3001] for i in range(0, x.shape[1], 3001)]
    whole = AudioTrack.from_chunks(chunks)
    stream = AudioStream(iter(chunks))
    times = np.arange(0, 21, 0.2)  # past the end too: silence
    for clip in np.array_split(times, 21):
        torch.testing.assert_close(stream.examples_at(list(clip)), whole.examples_at(list(clip)),
                                   rtol=0, atol=0)
        assert len(stream._frames) < 400  # a few seconds, not the whole 20 s (2000 frames)
    with pytest.raises(ValueError, match="time order"):
        stream.examples_at([1.0])


# --------------------------------------------------------------------------- audio tracks


def test_the_default_audio_track_is_used_and_any_track_can_be_chosen(tmp_path):
    video = mf.make_two_track_video(tmp_path / "two.mkv", default=1)  # track 0 is silent
    assert rms(audio_of(video)) > 0.2  # the tone on the default track, not track 0
    info = probe(video)
    assert (info.audio_track, info.audio_tracks, info.audio_stream) == (1, 2, 2)
    assert (info.audio_language, info.audio_title) == ("fra", "Tone")
    assert rms(np.concatenate(list(iter_audio_16k(video, track=0)), axis=1)) < 1e-4
    assert rms(np.concatenate(list(iter_audio_16k(video, track=1)), axis=1)) > 0.2
    chosen = probe(video, audio_track=0)
    assert (chosen.audio_track, chosen.audio_stream, chosen.audio_language) == (0, 1, None)
    with pytest.raises(MediaError, match=re.escape(
            "has no audio track 2; it has 2 audio tracks: 0, 1 (default, fra, Tone)")):
        probe(video, audio_track=2)
    with pytest.raises(MediaError, match="has no audio track 2"):
        next(iter_audio_16k(video, track=2))
    # no track marked default: the first one
    assert probe(mf.make_two_track_video(tmp_path / "none.mkv", default=None)).audio_track == 0
    one = probe(mf.make_video(tmp_path / "one.mp4", frames=2))
    assert (one.audio_track, one.audio_tracks) == (0, 1)
