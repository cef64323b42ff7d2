"""``auralsam2 prelabel`` / ``auralsam2 batch`` as a user runs them (real processes, the
bundled model) on paths that cannot be used: one clear line each, never a traceback.

Documented behaviours chosen here (README "Pre-labelling videos"):

* a video path that cannot be used (missing, a folder, a named pipe, a symbolic-link loop,
  a name too long for the file system) is reported as failed, saying what it is, and the
  other videos still run: exit code 1;
* a video whose name is too long for its results files gets a shortened results name;
* a results folder that cannot be written (a file, ``/dev/null``, read-only) is one error
  before anything runs: exit code 2, like any other wrong command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import media_factory as mf

pytestmark = pytest.mark.skipif(mf.FFMPEG is None, reason="needs the ffmpeg command")
CLI = [sys.executable, "-m", "auralsam2_core.cli"]


def auralsam2(*args, prefix=(), cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_unusable_video_paths_are_reported_and_the_others_still_run(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # FFmpeg would wait on it forever
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(tmp_path / "loop2.mp4")
    (tmp_path / "loop2.mp4").symlink_to(loop)
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    too_long = tmp_path / ("y" * 300 + ".mp4")  # no file system takes this name
    long_ok = mf.make_video(tmp_path / ("x" * 245 + ".mp4"), frames=2)  # results name won't fit
    good = mf.make_video(tmp_path / "good.mp4", frames=2)
    out = tmp_path / "out"
    run = auralsam2("prelabel", fifo, long_ok, loop, folder, tmp_path / "missing.mp4",
                    too_long, good, "--out", out, "--quiet")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["failed", "done", "failed", "failed",
                                                   "failed", "failed", "done"]
    for line, says in zip(lines, ["is a named pipe (FIFO), not a video file", "out/xxxx",
                                  "is a symbolic link loop", "is a directory",
                                  "video not found", "file name too long (304 bytes",
                                  "out/good.json"], strict=True):
        assert says in line, line
    assert (out / "good.json").is_file()
    [long_results] = [p for p in out.iterdir() if p.name.startswith("xxx")]
    assert len(long_results.name.encode()) <= 255


@pytest.fixture
def shared_dir():
    """A folder that an unprivileged user can enter (pytest's own are private)."""
    d = Path(tempfile.mkdtemp())
    d.chmod(0o755)
    yield d
    for p in d.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(d)


def test_an_unwritable_results_folder_is_one_clear_error(tmp_path, shared_dir):
    video = mf.make_video(tmp_path / "clip.mp4", frames=2)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for out, says in ((a_file, f"results folder {a_file} is a regular file, not a folder"),
                      ("/dev/null", "results folder /dev/null is a character device, not a "
                                    "folder"),
                      (a_file / "sub", f"cannot write results to {a_file / 'sub'}: Not a "
                                       "directory")):
        run = auralsam2("prelabel", video, "--out", out, "--quiet")
        assert run.returncode == 2 and run.stdout == ""
        assert f"auralsam2 prelabel: error: {says}" in run.stderr
        assert "Traceback" not in run.stderr
    assert a_file.read_text() == "not a folder"

    read_only = shared_dir / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    prefix = ()
    if os.geteuid() == 0:  # root writes anywhere: run as nobody
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv")
        prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    run = auralsam2("prelabel", video, "--out", read_only / "results", "--quiet",
                    prefix=prefix, cwd=shared_dir)
    assert run.returncode == 2
    assert f"error: cannot write results to {read_only / 'results'}: Permission denied" in \
        run.stderr
    assert "Traceback" not in run.stderr
    assert list(read_only.iterdir()) == []


def test_batch_names_what_is_wrong_with_each_manifest_path(tmp_path):
    pytest.importorskip("auralsam2_service.batch_cli")
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "folder.mp4").mkdir()
    mf.make_video(tmp_path / "good.mp4", frames=2)
    manifest = tmp_path / "videos.txt"
    manifest.write_text("good.mp4\npipe.mp4\nfolder.mp4\n")
    run = auralsam2("batch", manifest, "--out", tmp_path / "out", "--quiet")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "line 2: pipe.mp4: " in run.stderr and "is a named pipe (FIFO)" in run.stderr
    assert "line 3: folder.mp4: " in run.stderr and "is a directory" in run.stderr
    manifest.write_text("good.mp4\n")
    run = auralsam2("batch", manifest, "--out", "/dev/null", "--quiet")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "results folder /dev/null is a character device" in run.stderr
    run = auralsam2("batch", manifest, "--out", tmp_path / "out", "--report", tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--report" in run.stderr and not (tmp_path / "out").exists()  # before any work


def test_a_missing_checkpoint_is_a_clear_error_not_a_traceback(tmp_path):
    run = auralsam2("prelabel", tmp_path / "v.mp4", "--out", tmp_path / "out",
                    "--fuser-checkpoint", tmp_path / "missing.pth")
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "auralsam2 prelabel: error: weight file not found" in run.stderr
    assert not (tmp_path / "out").exists()
