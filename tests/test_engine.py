"""The streaming engine (engine.py), the results format (results.py), batch jobs with resume
(jobs.py), review renders (review.py) and ``auralsam2 prelabel`` on real (tiny) media.

The model has random weights: these tests check plumbing, frame coverage, timing and files,
not mask quality. Documented behaviours chosen here (see also tests/test_media.py):

* no audio track: :class:`NoAudioError` naming ``no_audio='silent'``; with "silent" every
  frame is reported, not sounding (p = 0) with an empty display-size mask;
* audio shorter than the video (even < 0.96 s): frames past its end get silence examples;
  audio longer than the video: only the video's frames are reported;
* unusable files fail before any frame, as :class:`MediaError`; a cut file that still
  decodes gives results for the frames that decode;
* in a batch, a failing video is reported ("failed" + message, no partial file left) and the
  others still run; a killed run leaves only ``<name>.partial.jsonl``, which the next run
  replaces by redoing the video from its first frame.
"""

from __future__ import annotations

import json
import threading

import av
import numpy as np
import pytest
import torch

from auralsam2_core.cli import main
from auralsam2_core.inference import rle
from auralsam2_core.inference.engine import FrameResult, NoAudioError, PrelabelOptions, prelabel
from auralsam2_core.inference.prelabel_videos import OutputOptions, prelabel_videos
from auralsam2_core.inference.results import (
    FORMAT,
    Hysteresis,
    ResultsWriter,
    frame_masks,
    read_results,
    sounding_intervals,
)
from auralsam2_core.inference.results import track as sounding_track
from auralsam2_core.media.audio_track import SILENCE, AudioStream
from auralsam2_core.media.video import MediaError, probe

from helpers import media_factory as mf

pytestmark = pytest.mark.skipif(mf.FFMPEG is None, reason="needs the ffmpeg command")


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture
def spy(monkeypatch):
    """Records the times (and examples) the engine asks the audio track for, clip by clip."""
    calls: list[tuple[list[float], torch.Tensor]] = []
    original = AudioStream.examples_at

    def examples_at(self, times):
        out = original(self, times)
        calls.append((list(times), out))
        return out

    monkeypatch.setattr(AudioStream, "examples_at", examples_at)
    return calls


def run(model, video, **options) -> list[FrameResult]:
    return list(prelabel(model, video, PrelabelOptions(**options)))


def check_coverage(results, indices, times, shape):
    assert [r.index for r in results] == list(indices)
    assert [r.time for r in results] == pytest.approx(list(times), abs=2e-3)
    for r in results:
        assert r.mask.shape == shape and r.mask.dtype == np.bool_
        assert 0.0 <= r.sounding_prob <= 1.0 and 0.0 <= r.review_priority <= 1.0


# --------------------------------------------------------------------------------- audio


def test_no_audio_is_an_error_by_default(tmp_path, model):
    p = mf.make_video(tmp_path / "mute.mp4", frames=4, fps=5, audio=False)
    with pytest.raises(NoAudioError, match="no_audio='silent'") as e:
        next(prelabel(model, p))
    assert str(p) in str(e.value) and isinstance(e.value, MediaError)


def test_no_audio_silent_reports_every_frame_not_sounding(tmp_path, model, spy):
    p = mf.make_video(tmp_path / "mute.mp4", frames=7, fps=5, size=(40, 30), audio=False)
    progress = []
    results = list(prelabel(model, p, PrelabelOptions(no_audio="silent"),
                            on_progress=progress.append))
    check_coverage(results, range(7), [i / 5 for i in range(7)], (30, 40))
    for r in results:
        assert r.sounding_prob == 0.0 and not r.mask.any()
    assert progress == list(range(1, 8))
    assert spy == []  # the model never ran
    strided = run(model, p, no_audio="silent", stride=3)
    assert [r.index for r in strided] == [0, 3, 6]


def test_audio_shorter_than_one_example(tmp_path, model, spy):
    # 0.3 s of audio on a 2 s video: works, and frames past the audio get silence examples
    p = mf.make_video(tmp_path / "short.mkv", seconds=2.0, fps=5, audio_seconds=0.3,
                      channels=(mf.tone(1000),), vcodec="mpeg4", acodec="pcm_s16le")
    results = run(model, p)
    check_coverage(results, range(10), [i / 5 for i in range(10)], (48, 64))
    times = [t for ts, _ in spy for t in ts]
    examples = torch.cat([ex for _, ex in spy])
    assert times == [r.time for r in results]
    for t, ex in zip(times, examples, strict=True):
        if t - 0.49 > 0.3:  # the whole window is after the audio's end
            assert torch.all(ex == SILENCE), t
        if t < 0.3:
            assert float(ex.max()) > SILENCE + 1, t


def test_audio_longer_than_the_video(tmp_path, model, spy):
    p = mf.make_video(tmp_path / "long.mp4", seconds=1.0, fps=5, audio_seconds=3.0)
    results = run(model, p)
    check_coverage(results, range(5), [0.0, 0.2, 0.4, 0.6, 0.8], (48, 64))
    assert all(float(ex.max()) > SILENCE + 1 for _, ex in spy)  # all frames hear the tone


def test_the_default_audio_track_is_heard_and_recorded(tmp_path, model, spy, caplog):
    """Track 0 silent, track 1 (default) a tone: the engine hears the tone, says which
    track it used in the results, and warns that the file has several."""
    video = mf.make_two_track_video(tmp_path / "two.mkv", frames=4, default=1)
    with caplog.at_level("WARNING", logger="auralsam2"):
        [o] = prelabel_videos(model, [video], tmp_path / "out", PrelabelOptions(clip_len=4),
                              progress=False)
    assert o.status == "done"
    assert all(float(ex.max()) > SILENCE + 1 for _, ex in spy)  # the tone, on every frame
    audio = read_results(o.results)["video"]["audio"]
    assert audio == {"sample_rate": 16000, "channels": 1, "track": 1, "tracks": 2,
                     "stream_index": 2, "language": "fra", "title": "Tone"}
    assert "has 2 audio tracks; using track 1, the default one" in caplog.text
    assert "--audio-track" in caplog.text

    spy.clear()
    silent = run(model, video, clip_len=4, audio_track=0)  # the other track, on request
    assert len(silent) == 4 and all(torch.all(ex == SILENCE) for _, ex in spy)
    with pytest.raises(MediaError, match=r"no audio track 5; it has 2 audio tracks"):
        run(model, video, audio_track=5)
    # info probed for the default track is not reused for another one
    spy.clear()
    list(prelabel(model, video, PrelabelOptions(audio_track=0), info=probe(video)))
    assert all(torch.all(ex == SILENCE) for _, ex in spy)
    caplog.clear()
    with caplog.at_level("WARNING", logger="auralsam2"):
        run(model, mf.make_video(tmp_path / "one.mp4", frames=2))
    assert "audio tracks" not in caplog.text  # one track: nothing to warn about


# ----------------------------------------------------------------------- frames and files


def test_one_frame_video(tmp_path, model):
    p = mf.make_video(tmp_path / "one.mp4", frames=1, fps=5)
    results = run(model, p)
    check_coverage(results, [0], [0.0], (48, 64))
    # a still image is a 1-frame video without audio
    png = tmp_path / "still.png"
    mf.ffmpeg(*mf.video_src(frames=1, size=(40, 30)), "-frames:v", "1", png)
    with pytest.raises(NoAudioError):
        run(model, png)
    check_coverage(run(model, png, no_audio="silent"), [0], [0.0], (30, 40))


def test_unusable_files_fail_before_any_frame(tmp_path, model):
    zero = mf.zero_frame_video(tmp_path / "zero.mkv")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    empty = tmp_path / "empty.mp4"
    empty.touch()
    cut = mf.cut(mf.make_video(tmp_path / "full.mp4", frames=5), tmp_path / "cut.mp4")
    for p in (zero, junk, empty, cut, tmp_path / "missing.mp4"):
        with pytest.raises(MediaError) as e:
            next(prelabel(model, p))
        assert str(p) in str(e.value)


def test_cut_stream_gives_results_for_the_frames_that_decode(tmp_path, model):
    full = mf.make_video(tmp_path / "full.ts", frames=12, fps=10)
    cut = mf.cut(full, tmp_path / "cut.ts")
    results = run(model, cut)
    n = len(results)
    assert 2 <= n < 12
    check_coverage(results, range(n), [i / 10 for i in range(n)], (48, 64))


def test_vfr_times_are_the_frames_own_timestamps(tmp_path, model, spy):
    times = [0.0, 0.1, 0.15, 0.6, 1.3, 1.35, 1.4]
    p = mf.make_vfr(tmp_path / "vfr.mkv", times, audio_seconds=1.5)
    results = run(model, p, clip_len=3)
    check_coverage(results, range(len(times)), times, (48, 64))
    assert all(b.time > a.time for a, b in zip(results, results[1:], strict=False))
    # each frame's example is asked for at its own time (centring: tests/test_media.py)
    assert [ts for ts, _ in spy] == [[r.time for r in results[i:i + 3]] for i in (0, 3, 6)]


@pytest.mark.parametrize("kind", ["odd", "portrait", "rotated"])
def test_masks_are_at_display_size(tmp_path, model, kind):
    if kind == "odd":
        p = mf.make_video(tmp_path / "odd.mkv", frames=2, size=(321, 239), vcodec="mjpeg",
                          pix_fmt="yuvj444p")
        shape = (239, 321)
    elif kind == "portrait":
        p = mf.make_video(tmp_path / "portrait.mp4", frames=2, size=(240, 426))
        shape = (426, 240)
    else:
        plain = mf.make_video(tmp_path / "plain.mp4", frames=2, size=(64, 48))
        p = mf.rotated_copy(plain, tmp_path / "rotated.mp4", 90)
        shape = (64, 48)
    info = probe(p)
    assert (info.height, info.width) == shape
    check_coverage(run(model, p), [0, 1], [0.0, 0.2], shape)


def test_4k_masks_and_rle_round_trip(tmp_path, model):
    p = mf.make_video(tmp_path / "uhd.mp4", frames=2, size=(3840, 2160), pattern="testsrc2")
    results = run(model, p)
    check_coverage(results, [0, 1], [0.0, 0.2], (2160, 3840))
    for r in results:
        enc = rle.encode(r.mask)
        assert enc["size"] == [2160, 3840]
        assert np.array_equal(rle.decode(enc), r.mask)
    # a non-trivial mask of that size round-trips too
    m = np.zeros((2160, 3840), bool)
    m[100:1900:3, 7:3800] = True
    assert np.array_equal(rle.decode(rle.encode(m)), m)


def test_stride_and_short_final_clip(tmp_path, model, spy):
    p = mf.make_video(tmp_path / "ten.mp4", frames=10, fps=10)
    strided = run(model, p, stride=3, clip_len=5)
    check_coverage(strided, [0, 3, 6, 9], [0.0, 0.3, 0.6, 0.9], (48, 64))
    spy.clear()
    seven = mf.make_video(tmp_path / "seven.mp4", frames=7, fps=10)
    results = run(model, seven, clip_len=2)
    check_coverage(results, range(7), [i / 10 for i in range(7)], (48, 64))
    assert [len(ts) for ts, _ in spy] == [2, 2, 2, 1]


def test_abandoned_run_stops_its_decoder_thread(tmp_path, model):
    p = mf.make_video(tmp_path / "v.mp4", frames=20, fps=10)
    before = set(threading.enumerate())
    gen = prelabel(model, p, PrelabelOptions(clip_len=2, prefetch_clips=1))
    first = next(gen)
    assert first.index == 0
    started = set(threading.enumerate()) - before
    assert len(started) == 1  # the decoder, blocked on its bounded queue
    gen.close()
    for t in started:
        t.join(timeout=5)
        assert not t.is_alive()


def test_bad_options():
    for bad in ({"clip_len": 0}, {"stride": 0}, {"no_audio": "ignore"}, {"audio_track": -1},
                {"audio_track": "1"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PrelabelOptions(**bad)
    for bad in ({"start_frame": -1}, {"start_frame": 4, "stop_frame": 4}):
        with pytest.raises(ValueError, match="start_frame"):
            PrelabelOptions(**bad)


def test_frame_range_labels_only_those_frames(tmp_path, model, spy):
    """[start, stop) with a stride labels exactly those frames, with their own times and the
    audio at those times (SAM2's memory starts at ``start``)."""
    p = mf.make_video(tmp_path / "v.mp4", frames=12, fps=10)
    part = run(model, p, clip_len=3, start_frame=5, stop_frame=11, stride=2)
    check_coverage(part, [5, 7, 9], [0.5, 0.7, 0.9], (48, 64))
    assert [t for ts, _ in spy for t in ts] == pytest.approx([0.5, 0.7, 0.9], abs=2e-3)
    assert [r.index for r in run(model, p, start_frame=10)] == [10, 11]  # to the end


def test_point_prompt_changes_that_frame_and_propagates(tmp_path, model):
    from auralsam2_core.modeling.model import PointPrompt

    p = mf.make_video(tmp_path / "v.mp4", frames=8, fps=10)
    plain = run(model, p, clip_len=4)
    box = PointPrompt.box(5, 5, 40, 30)
    prompted = list(prelabel(model, p, PrelabelOptions(clip_len=4), prompts={2: box}))
    assert [r.index for r in prompted] == list(range(8))
    same = [np.array_equal(a.mask, b.mask) and a.sounding_prob == b.sounding_prob
            for a, b in zip(plain, prompted, strict=True)]
    assert same[:2] == [True, True]  # before the prompt: untouched
    assert not same[2]  # the prompted frame
    assert not all(same[3:])  # later frames see it through memory
    with pytest.raises(ValueError, match="outside"):
        list(prelabel(model, p, prompts={0: PointPrompt(((65.0, 10.0),), (1,))}))
    with pytest.raises(ValueError, match="not among the frames"):
        list(prelabel(model, p, PrelabelOptions(start_frame=3), prompts={1: box}))
    with pytest.raises(ValueError, match="labels"):
        PointPrompt(((1.0, 1.0),), (5,))


# ------------------------------------------------------------------------- results format


def test_results_file_matches_a_direct_run(tmp_path, model):
    video = mf.make_video(tmp_path / "vidéo clip ü" / "fichier 1.mp4", frames=6, fps=5,
                          sample_rate=44100, channels=(mf.tone(440), mf.tone(660)))
    out = tmp_path / "résultats"
    [outcome] = prelabel_videos(model, [video], out, PrelabelOptions(clip_len=4),
                                progress=False)
    assert outcome.status == "done" and outcome.results == out / "fichier 1.json"
    assert sorted(p.name for p in out.iterdir()) == ["fichier 1.json"]
    doc = read_results(outcome.results)
    assert doc["format"] == FORMAT and doc["format_version"] == 2
    assert doc["status"] == "complete"
    assert {"video", "model", "objects", "summary", "hysteresis"} <= set(doc)
    v = doc["video"]
    assert v["name"] == "fichier 1.mp4" and v["path"] == str(video.resolve())
    assert (v["width"], v["height"], v["rotation"], v["num_frames"]) == (64, 48, 0, 6)
    assert v["audio"] == {"sample_rate": 44100, "channels": 2, "track": 0, "tracks": 1,
                          "stream_index": 1}
    assert v["size_bytes"] == video.stat().st_size
    assert v["mtime_ns"] == video.stat().st_mtime_ns
    m = doc["model"]
    assert (m["sam2_config"], m["image_size"], m["clip_len"], m["stride"]) == (
        "sam2_hiera_t", 64, 4, 1)
    assert (m["audio_track"], m["start_frame"], m["stop_frame"]) == (None, 0, None)
    assert m["checkpoints"] == {"sam2": None, "fuser": None}
    obj = sounding_track(doc)
    assert (obj["label"], obj["query"], doc["model"]["queries"]) == ("sounding", None, [])
    assert doc["summary"]["frames"] == 6 and doc["summary"]["intervals"] == len(
        obj["intervals"])
    keys = {"index", "time", "sounding_prob", "predicted_iou", "mask_score",
            "review_priority", "mask"}
    assert all(set(f) == keys for f in obj["frames"])
    direct = run(model, video, clip_len=4)
    assert [f["index"] for f in obj["frames"]] == [r.index for r in direct]
    for (index, mask), f, r in zip(frame_masks(doc), obj["frames"], direct, strict=True):
        assert index == r.index and f["mask"]["size"] == [48, 64]
        assert np.array_equal(mask, r.mask)
        assert f["time"] == pytest.approx(r.time, abs=1e-6)
        assert f["sounding_prob"] == pytest.approx(r.sounding_prob, abs=1e-4)
    assert obj["intervals"] == sounding_intervals(obj["frames"], v["fps"], Hysteresis())


def _frames(probs, step=0.1):
    return [{"index": i, "time": round(i * step, 6), "sounding_prob": p}
            for i, p in enumerate(probs)]


def test_sounding_intervals_hysteresis():
    probs = [0.1, 0.7, 0.5, 0.45, 0.3, 0.55, 0.65, 0.2, 0.9]
    got = sounding_intervals(_frames(probs), fps=10)
    # enters at >= 0.6, stays while >= 0.4 (0.5, 0.45), leaves below 0.4; 0.55 does not enter
    assert [(i["start_frame"], i["end_frame"]) for i in got] == [(1, 3), (6, 6), (8, 8)]
    assert got[0]["start_time"] == pytest.approx(0.1)
    assert got[0]["end_time"] == pytest.approx(0.4)  # exclusive: last frame + 1/fps
    assert got[0]["mean_prob"] == pytest.approx((0.7 + 0.5 + 0.45) / 3, abs=1e-4)
    assert got[-1]["end_time"] == pytest.approx(0.9)  # open at the end: closed there
    longer = sounding_intervals(_frames(probs), fps=10, rule=Hysteresis(min_frames=2))
    assert [(i["start_frame"], i["end_frame"]) for i in longer] == [(1, 3)]
    assert sounding_intervals(_frames([0.59] * 5), fps=10) == []
    assert sounding_intervals([], fps=10) == []
    strict = sounding_intervals(_frames(probs), 10, Hysteresis(enter=0.5, exit=0.5))
    assert [(i["start_frame"], i["end_frame"]) for i in strict] == [(1, 2), (5, 6), (8, 8)]
    # strided frames keep their own indices
    strided = [{"index": 3 * i, "time": 0.3 * i, "sounding_prob": p}
               for i, p in enumerate([0.9, 0.9, 0.1])]
    [iv] = sounding_intervals(strided, fps=10)
    assert (iv["start_frame"], iv["end_frame"]) == (0, 3)


def test_refined_frames_replace_one_objects_and_its_intervals():
    """A refinement's frames go into the object refined: its intervals and the summary counts
    follow them; the other objects and frames stay as they were."""
    from auralsam2_core.inference.results import make_object, with_frames_replaced

    rule = Hysteresis()
    dog, gtr = _frames([0.9, 0.9, 0.1, 0.1]), _frames([0.1, 0.1, 0.1, 0.1])
    objs = [make_object("dog", dog, 10, rule), make_object("guitar", gtr, 10, rule)]
    doc = {"video": {"fps": 10}, "hysteresis": {"enter": 0.6, "exit": 0.4, "min_frames": 1},
           "objects": objs, "summary": {"frames": 4, "objects": 2, "sounding_frames": 2,
                                        "intervals": 1, "seconds": 1.0}}
    part = {"video": {"fps": 10},
            "objects": [make_object("guitar", _frames([0.9, 0.9], 0.1)[1:] + [
                {"index": 2, "time": 0.2, "sounding_prob": 0.8}], 10, rule)]}
    got = with_frames_replaced(doc, part, "guitar")
    assert got["objects"][0] == objs[0]
    assert [f["sounding_prob"] for f in got["objects"][1]["frames"]] == [0.1, 0.9, 0.8, 0.1]
    assert [(i["start_frame"], i["end_frame"]) for i in got["objects"][1]["intervals"]] == \
        [(1, 2)]
    assert got["summary"]["intervals"] == 2 and got["summary"]["seconds"] == 1.0
    assert doc["objects"][1]["frames"] == gtr  # the input is not changed


def test_read_results_rejects_foreign_json(tmp_path):
    foreign = tmp_path / "coco.json"
    foreign.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="not an AuralSAM2 results file"):
        read_results(foreign)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"format": FORMAT, "format_version": 99}))
    with pytest.raises(ValueError, match="format 99"):
        read_results(future)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError):
        read_results(garbage)
    # and a results directory holding such files does not count them as finished
    assert not ResultsWriter(tmp_path, "coco").is_complete()
    assert not ResultsWriter(tmp_path, "garbage").is_complete()


# ------------------------------------------------------------------------ jobs and resume


def test_killed_run_is_redone_and_finished_one_skipped(tmp_path, model, monkeypatch):
    video = mf.make_video(tmp_path / "clip.mp4", frames=4, fps=5)
    out = tmp_path / "out"
    original = ResultsWriter.add

    def add_then_die(self, r):
        rec = original(self, r)
        if r.index == 1:
            self._fh.flush()
            raise KeyboardInterrupt  # the run is killed after two frames
        return rec

    monkeypatch.setattr(ResultsWriter, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        prelabel_videos(model, [video], out, PrelabelOptions(clip_len=2), progress=False)
    monkeypatch.undo()
    partial = out / "clip.partial.jsonl"
    assert partial.is_file() and not (out / "clip.json").exists()
    assert [json.loads(x)["index"] for x in partial.read_text().splitlines()] == [0, 1]
    assert not ResultsWriter(out, "clip").is_complete()

    [o] = prelabel_videos(model, [video], out, PrelabelOptions(clip_len=2), progress=False)
    assert o.status == "done" and not partial.exists()
    indices = [f["index"] for f in sounding_track(read_results(out / "clip.json"))["frames"]]
    assert indices == [0, 1, 2, 3]  # redone from the first frame, no duplicates

    [o] = prelabel_videos(model, [video], out, PrelabelOptions(clip_len=2), progress=False)
    assert o.status == "skipped" and o.results == out / "clip.json"

    # a stale partial from some earlier kill next to a finished result changes nothing
    partial.write_text('{"index": 0}\n')
    [o] = prelabel_videos(model, [video], out, PrelabelOptions(clip_len=2), progress=False)
    assert o.status == "skipped"


def test_one_failing_video_does_not_stop_the_others(tmp_path, model, capsys):
    good = mf.make_video(tmp_path / "a.mp4", frames=3)
    mute = mf.make_video(tmp_path / "b.mp4", frames=3, audio=False)
    junk = tmp_path / "c.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    good2 = mf.make_video(tmp_path / "sub" / "a.mp4", frames=3)  # same stem as `good`
    out = tmp_path / "out"
    (out / "b.partial.jsonl").parent.mkdir()
    (out / "b.partial.jsonl").write_text('{"index": 0}\n')  # left by an older killed run
    outcomes = prelabel_videos(model, [good, mute, junk, good2], out, progress=False)
    assert [o.status for o in outcomes] == ["done", "failed", "failed", "done"]
    assert "no audio track" in outcomes[1].error and outcomes[1].results is None
    assert str(junk) in outcomes[2].error
    assert outcomes[0].results != outcomes[3].results  # stems collide: hashed names
    assert not list(out.glob("*.partial.jsonl"))
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".json"]
    err = capsys.readouterr().err
    assert str(mute) in err and str(junk) in err


# ------------------------------------------------------------------------------- renders


def test_review_renders(tmp_path, model):
    video = mf.make_video(tmp_path / "talk.mp4", frames=6, fps=5, sample_rate=44100,
                          channels=(mf.tone(440), mf.tone(660)), extra=["-b:a", "64k"])
    out = tmp_path / "out"
    outs = OutputOptions(png_masks=True, overlay=True, timeline=True)
    [o] = prelabel_videos(model, [video], out, PrelabelOptions(stride=2), outs,
                          progress=False)
    assert o.status == "done"
    pngs = sorted((out / "talk_masks").iterdir())
    assert [p.name for p in pngs] == ["000000.png", "000002.png", "000004.png"]
    from PIL import Image

    doc = read_results(o.results)
    for p, (_, mask) in zip(pngs, frame_masks(doc), strict=True):
        img = np.asarray(Image.open(p))
        assert img.shape == (48, 64) and np.array_equal(img > 0, mask)
    assert Image.open(out / "talk_timeline.png").size[0] > 100
    overlay = out / "talk_overlay.mp4"
    with av.open(str(overlay)) as c, av.open(str(video)) as src:
        a, a_src = c.streams.audio[0], src.streams.audio[0]
        assert a.codec_context.name == a_src.codec_context.name == "aac"
        assert a.codec_context.channels == a_src.codec_context.channels == 2
        assert a.codec_context.sample_rate == 44100
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (64, 48)
        times = [float(f.pts * v.time_base) for f in c.decode(v)]
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-3)  # every frame


def test_overlay_keeps_vfr_times_and_audio_sync(tmp_path, model):
    # VFR: frames at their own times; MPEG-TS: streams start at ~1.4 s and audio a little
    # before the video. In both the overlay starts at 0 with sound and picture aligned.
    vfr = mf.make_vfr(tmp_path / "vfr.mkv", [0.0, 0.1, 0.15, 0.6, 1.3], audio_seconds=1.5)
    ts = mf.make_video(tmp_path / "clip.ts", frames=5, fps=5)
    mute = mf.make_video(tmp_path / "mute.mp4", frames=3, audio=False)
    out = tmp_path / "out"
    outcomes = prelabel_videos(model, [vfr, ts, mute], out, PrelabelOptions(no_audio="silent"),
                               OutputOptions(overlay=True), progress=False)
    assert [o.status for o in outcomes] == ["done", "done", "done"]
    with av.open(str(out / "mute_overlay.mp4")) as c:
        assert not c.streams.audio and len(list(c.decode(video=0))) == 3
    for name, want in (("vfr", [0.0, 0.1, 0.15, 0.6, 1.3]), ("clip", [0, 0.2, 0.4, 0.6, 0.8])):
        with av.open(str(out / f"{name}_overlay.mp4")) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            times = [float(f.pts * v.time_base) for f in c.decode(v)]
            assert times == pytest.approx(want, abs=2e-3)
            c.seek(0)
            first_audio = next(c.demux(a))
            assert float(first_audio.pts * a.time_base) == pytest.approx(0.0, abs=0.03)


# ------------------------------------------------------------------------------------ CLI


def test_cli_exit_codes(tmp_path, capsys):
    good = mf.make_video(tmp_path / "good clip.mp4", frames=2)
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    out = tmp_path / "out"
    base = ["--out", str(out), "--image-size", "64", "--quiet", "--sam2-config",
            "sam2_hiera_t", "--device", "cpu", "--clip-len", "2"]
    assert main(["prelabel", str(good), *base, "--png-masks"]) == 0
    assert read_results(out / "good clip.json")["summary"]["frames"] == 2
    assert len(list((out / "good clip_masks").iterdir())) == 2
    assert "done" in capsys.readouterr().out
    assert main(["prelabel", str(good), str(junk), *base]) == 1  # one failed
    printed = capsys.readouterr().out
    assert "skipped" in printed and "failed" in printed and str(junk) in printed
    assert main(["prelabel", str(tmp_path / "missing.mp4"), *base]) == 1  # a failed video
    assert "not found" in capsys.readouterr().err
    assert main(["prelabel", str(good), *base, "--stride", "0"]) == 2  # a wrong command
    assert "stride must be >= 1" in capsys.readouterr().err


def _pixels(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)


def test_clips_travel_as_uint8_and_normalise_as_imagenet():
    """The engine moves uint8 clips to the model's device and normalises them there: the same
    float32 values as ImageNet's (x - 255 mean) / (255 std) on the CPU, bit for bit."""
    from auralsam2_core.inference.engine import IMAGENET_MEAN, IMAGENET_STD, normalise_pixels

    x = _pixels()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    got = normalise_pixels(x)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, (x.float() - mean) / std)
    assert got[:, 0].mean().abs() < 2.5  # roughly centred: channels not swapped or unscaled


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_normalising_on_the_gpu_gives_the_cpu_values():
    from auralsam2_core.inference.engine import normalise_pixels

    x = _pixels(1)
    assert torch.equal(normalise_pixels(x.cuda()).cpu(), normalise_pixels(x))


def _clip_output(t: int, seed: int, device="cpu"):
    """A clip's model output with mixed masks: random logits, one frame all background."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, 1, 16, 16, generator=g) + torch.linspace(-2, 2, 16)
    logits[1] = -1.0
    scores, ious = torch.randn(t, 1, generator=g), torch.rand(t, 3, generator=g)
    scores[0], ious[0] = 10.0, 1.0  # frame 0: sure and exact, its priority is the instability
    return SimpleNamespace(mask_logits=logits.to(device), object_score_logits=scores.to(device),
                           ious=ious.to(device),
                           chosen=torch.randint(0, 3, (t,), generator=g).to(device))


def _per_frame_reference(out, j, shape, prev):
    """The engine's per-frame post-processing as it was (five device-to-host copies a frame)."""
    from auralsam2_core.inference.engine import review_priority
    from auralsam2_core.modeling.model import upsample_logits

    low = out.mask_logits[j:j + 1]
    on = low[0, 0] > 0
    inside = torch.sigmoid(low[0, 0])[on]
    union = (on | prev).sum().item() if prev is not None else 0
    stability = 1.0 if prev is None or union == 0 else (on & prev).sum().item() / union
    p = out.object_score_logits.sigmoid().flatten().tolist()[j]
    iou = out.ious.gather(1, out.chosen[:, None]).flatten().tolist()[j]
    return ((upsample_logits(low, shape)[0, 0] > 0).cpu().numpy(), p, iou,
            float(inside.mean()) if inside.numel() else 0.0, review_priority(p, iou, stability)
            ), on


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                         reason="needs a CUDA GPU")])])
def test_a_clips_results_are_the_per_frame_ones(device):
    """The engine turns a clip's output into results with two copies to the host per clip:
    the same masks, probabilities, IoUs and review priorities as frame by frame (the mean
    score inside the mask to float rounding), the stability term carried across clips."""
    from auralsam2_core.inference.engine import _clip_results

    shape = (37, 53)  # not a multiple of the 16 x 16 low-res masks
    prev = ref_prev = None
    for clip, (t, seed) in enumerate([(5, 0), (5, 1), (2, 2)]):
        out = _clip_output(t, seed, device)
        results, prev = _clip_results(out, list(range(t)), [0.1 * i for i in range(t)], shape,
                                      prev, "q")
        assert len(results) == t and {r.query for r in results} == {"q"}
        for j, r in enumerate(results):
            (mask, p, iou, score, priority), ref_prev = _per_frame_reference(out, j, shape,
                                                                             ref_prev)
            assert np.array_equal(r.mask, mask) and r.mask.shape == shape
            assert (r.sounding_prob, r.predicted_iou, r.review_priority) == (p, iou, priority)
            assert r.mask_score == pytest.approx(score, rel=1e-6, abs=1e-9)
        assert torch.equal(prev, ref_prev)
        assert results[1].mask_score == 0.0 and not results[1].mask.any()
        assert 0 < results[0].mask.mean() < 1 and len({r.review_priority for r in results}) > 1
        assert (results[0].review_priority > 0.1) == (clip > 0)  # against the previous clip
