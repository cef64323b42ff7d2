"""Re-running ``auralsam2 prelabel`` into a results folder that already holds results
(auralsam2_core/inference/prelabel_videos.py, results.py): nothing is lost, overwritten by mistake
or wrongly reused.

Documented behaviours chosen here:

* a results name is locked (``<name>.lock``, flock) while it is written; a second run on it
  refuses that video ("being written by another run (pid ...)"), the first is untouched;
* results are reused only when made from the same file (path, size, modification time), with
  the same options (stride, clip length, frame range, audio track, no-audio policy) and the
  same model (config, input size, mask choice, fuser config, weight hashes); otherwise they
  are redone and the outcome says why. Only a new hysteresis: the intervals are recomputed
  from the stored frames, no model run. Renders asked for and missing are added;
* a results name that holds another video's results (``day1/cam.mp4`` then
  ``day2/cam.mp4``) or a file that is not results is never overwritten: the video gets
  ``<stem>-<hash of its path>``; a file listed twice is labelled once;
* version-1 files written before the file time and audio track were recorded are matched on
  path and size, and count as made from the first audio track.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from auralsam2_core.inference.engine import PrelabelOptions
from auralsam2_core.inference.prelabel_videos import OutputOptions, prelabel_videos
from auralsam2_core.inference.results import Hysteresis, ResultsWriter, read_results
from auralsam2_core.inference.results import track as sounding_track
from auralsam2_core.modeling.build import build_auralsam2

from helpers import media_factory as mf

pytestmark = pytest.mark.skipif(mf.FFMPEG is None, reason="needs the ffmpeg command")
CLI = [sys.executable, "-m", "auralsam2_core.cli"]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


def label(model, videos, out, outputs=None, **options):
    return prelabel_videos(model, videos, out, PrelabelOptions(**options), outputs,
                           progress=False)


def indices(path) -> list[int]:
    return [f["index"] for f in sounding_track(read_results(path))["frames"]]


# ----------------------------------------------------------------------------- locking


def test_a_second_process_on_the_same_output_refuses_and_the_first_finishes(tmp_path):
    """Two real ``auralsam2 prelabel`` processes: the second is started while the first is
    writing (the first is paused with SIGSTOP there, so the timing is certain)."""
    video = mf.make_video(tmp_path / "talk.mp4", frames=100, fps=25)
    out = tmp_path / "out"
    cmd = [*CLI, "prelabel", str(video), "--out", str(out), "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = out / "talk.partial.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not partial.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # mid-video, holding the lock
        before = partial.read_bytes()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr
        assert second.stdout.startswith("failed")
        assert f"talk.json is being written by another run (pid {first.pid} on" in \
            second.stderr
        assert "Traceback" not in second.stderr
        assert partial.read_bytes() == before  # the first run's file is untouched
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert stdout.startswith("done")
    assert indices(out / "talk.json") == list(range(100))
    assert sorted(p.name for p in out.iterdir()) == ["talk.json"]  # no lock, no partial left
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("skipped"), again.stderr


def test_lock_is_refused_in_process_and_a_dead_runs_lock_file_does_not_block(tmp_path, model):
    video = mf.make_video(tmp_path / "clip.mp4", frames=2)
    out = tmp_path / "out"
    with ResultsWriter(out, "clip").lock():
        [o] = label(model, [video], out)
    assert o.status == "failed" and "is being written by another run (pid" in o.error
    assert not (out / "clip.json").exists() and not (out / "clip.lock").exists()
    (out / "clip.lock").write_text("pid 999999 on a host that was switched off")  # a SIGKILL
    [o] = label(model, [video], out)
    assert o.status == "done" and indices(o.results) == [0, 1]
    assert not (out / "clip.lock").exists()


# ----------------------------------------------------------------------- what is reused


def test_another_video_with_the_same_name_never_takes_over_its_results(tmp_path, model):
    day1 = mf.make_video(tmp_path / "day1" / "cam.mp4", frames=3)
    day2 = mf.make_video(tmp_path / "day2" / "cam.mp4", frames=5, pattern="rgbtestsrc")
    out = tmp_path / "out"
    [o1] = label(model, [day1], out)
    assert o1.status == "done" and o1.results == out / "cam.json"
    kept = (out / "cam.json").read_bytes()
    [o2] = label(model, [day2], out)  # a later run, same stem
    assert o2.status == "done" and o2.results.name.startswith("cam-")
    assert (out / "cam.json").read_bytes() == kept  # day1's results are untouched
    assert read_results(o2.results)["video"]["path"] == str(day2.resolve())
    assert indices(o2.results) == list(range(5))
    # both together, in either order: each finds its own results
    both = label(model, [day2, day1], out)
    assert [(o.status, o.results) for o in both] == [("skipped", o2.results),
                                                     ("skipped", o1.results)]
    # in one run into a fresh folder: the first keeps the plain name
    fresh = label(model, [day1, day2, day1], tmp_path / "fresh")
    assert [o.results.name for o in fresh] == ["cam.json", o2.results.name, "cam.json"]
    assert [o.status for o in fresh] == ["done", "done", "done"]
    assert fresh[2].note == "listed twice; labelled once"
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == sorted(
        ["cam.json", o2.results.name])


def test_a_file_that_is_not_results_is_kept(tmp_path, model):
    video = mf.make_video(tmp_path / "clip.mp4", frames=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.json").write_text('{"images": [], "annotations": []}')  # someone's COCO file
    [o] = label(model, [video], out)
    assert o.status == "done" and o.results.name.startswith("clip-")
    assert (out / "clip.json").read_text() == '{"images": [], "annotations": []}'


def test_changed_options_video_or_model_are_redone_and_say_why(tmp_path, model):
    video = mf.make_video(tmp_path / "clip.mp4", frames=6)
    out = tmp_path / "out"
    [o] = label(model, [video], out)
    assert o.status == "done"
    [o] = label(model, [video], out, stride=3)
    assert o.status == "done" and indices(o.results) == [0, 3]
    assert o.note == "redone: options changed: stride 1 -> 3"
    [o] = label(model, [video], out, stride=3)
    assert (o.status, o.note) == ("skipped", "same video, options and model")
    [o] = label(model, [video], out, stride=3, clip_len=2)
    assert o.note == "redone: options changed: clip_len 5 -> 2"

    os.utime(video, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: mtime only
    [o] = label(model, [video], out, stride=3, clip_len=2)
    assert o.note == "redone: the video file changed (size or modification time)"
    mf.make_video(video, frames=4)  # replaced by another video at the same path
    [o] = label(model, [video], out, stride=3, clip_len=2)
    assert o.note == "redone: the video file changed (size or modification time)"
    assert indices(o.results) == [0, 3]
    assert read_results(o.results)["video"]["num_frames"] == 4

    other = build_auralsam2("sam2_hiera_t", image_size=64, mask_choice="first",
                            fuser_config={"f_depths": [1, 1, 1]}, device="cpu")
    [o] = label(other, [video], out, stride=3, clip_len=2)
    assert o.note == "redone: another model (mask_choice differ)"
    [o] = label(other, [video], out, OutputOptions(overwrite=True), stride=3, clip_len=2)
    assert (o.status, o.note) == ("done", "redone: --overwrite")

    two = mf.make_two_track_video(tmp_path / "two.mkv", frames=3, default=1)
    [o] = label(model, [two], out)
    [o] = label(model, [two], out, audio_track=1)  # the default track, named: the same
    assert o.status == "skipped"
    [o] = label(model, [two], out, audio_track=0)
    assert o.note == "redone: options changed: audio track 1 -> 0"
    assert read_results(o.results)["model"]["audio_track"] == 0


def test_a_new_hysteresis_recomputes_intervals_without_the_model(tmp_path, model,
                                                                 monkeypatch):
    video = mf.make_video(tmp_path / "clip.mp4", frames=6)
    out = tmp_path / "out"
    [o] = label(model, [video], out)
    before = read_results(o.results)
    monkeypatch.setattr(type(model), "encode_images", lambda *a, **k: pytest.fail("model ran"))
    rule = Hysteresis(enter=0.0, exit=0.0, min_frames=1)  # everything is one interval
    [o] = label(model, [video], out, OutputOptions(hysteresis=rule, timeline=True))
    assert o.status == "done"
    assert o.note == ("intervals recomputed for the new hysteresis; rendered "
                      "clip_timeline.png")
    after = read_results(o.results)
    assert sounding_track(after)["frames"] == sounding_track(before)["frames"]
    assert after["hysteresis"] == {"enter": 0.0, "exit": 0.0, "min_frames": 1}
    intervals = sounding_track(after)["intervals"]
    assert [(i["start_frame"], i["end_frame"]) for i in intervals] == [(0, 5)]
    assert after["summary"]["intervals"] == 1
    [o] = label(model, [video], out, OutputOptions(hysteresis=rule, timeline=True,
                                                   png_masks=True))
    assert (o.status, o.note) == ("done", "same video, options and model; rendered "
                                  "clip_masks")  # only the missing render
    assert len(list((out / "clip_masks").iterdir())) == 6
    [o] = label(model, [video], out, OutputOptions(hysteresis=rule, timeline=True))
    assert o.status == "skipped"


def test_results_written_before_fingerprints_are_still_understood(tmp_path, model):
    """Version-1 files from before this change: no mtime, no audio track, fewer options."""
    video = mf.make_video(tmp_path / "clip.mp4", frames=3)
    two = mf.make_two_track_video(tmp_path / "two.mkv", frames=3, default=1)
    out = tmp_path / "out"
    label(model, [video, two], out)

    def make_old(name: str) -> None:
        path = out / f"{name}.json"
        doc = read_results(path)
        del doc["video"]["mtime_ns"]
        for key in ("track", "tracks", "stream_index", "language", "title"):
            doc["video"]["audio"].pop(key, None)
        for key in ("audio_track", "start_frame", "stop_frame"):
            del doc["model"][key]
        path.write_text(json.dumps(doc))

    make_old("clip")
    make_old("two")
    os.utime(video, ns=(1, 1))  # same size; the unrecorded time is not compared
    outcomes = label(model, [video, two], out)
    assert outcomes[0].status == "skipped"
    # the old code heard track 0 of two.mkv; the default track (1) is a different run
    assert outcomes[1].note == "redone: options changed: audio track 0 -> 1"


def test_a_video_name_too_long_for_the_results_gets_a_shorter_one(tmp_path, model):
    long_video = mf.make_video(tmp_path / ("é" * 120 + ".mp4"), frames=2)  # 244 bytes
    short = mf.make_video(tmp_path / "next.mp4", frames=2)
    out = tmp_path / "out"
    first, second = label(model, [long_video, short], out, OutputOptions(overlay=True))
    assert first.status == "done" and second.status == "done"
    name = first.results.name.removesuffix(".json")
    assert len(name.encode()) <= 200 and name.startswith("é" * 95)  # jobs.MAX_NAME_BYTES
    assert (out / f"{name}_overlay.mp4").is_file()
    [again] = label(model, [long_video], out)
    assert again.status == "skipped" and again.results == first.results
