"""auralsam2_core.atomic: a write either lands whole or leaves the old file as it was."""
import json
import os
import stat
import subprocess
import sys

import pytest

from auralsam2_core.atomic import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def test_writes_land_whole_and_leave_no_temp(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo", encoding="utf-8")
    atomic_write_json(tmp_path / "c.json", {"k": [1, 2]}, indent=1)
    atomic_write_json(tmp_path / "c.json", {"k": 3})  # over an existing file
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]


def test_an_error_mid_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    dest = tmp_path / "doc.json"
    dest.write_text("old")
    with pytest.raises(RuntimeError, match="stream cut"), atomic_open(dest, "w") as fh:
        fh.write("half of the new")
        raise RuntimeError("stream cut")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_a_writer_failing_on_the_temp_path_keeps_the_old_file(tmp_path):
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"old weights")
    with pytest.raises(OSError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")
    assert dest.read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_unserialisable_json_touches_nothing(tmp_path):
    dest = tmp_path / "state.json"
    dest.write_text('{"ok": 1}')
    with pytest.raises(TypeError):
        atomic_write_json(dest, {"bad": object()})
    assert dest.read_text() == '{"ok": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_killed_process_leaves_the_old_file_and_a_temp_no_glob_picks_up(tmp_path):
    """SIGKILL cannot be cleaned up after: the old file must survive, and the leftover temp
    must not look like a finished file to the ``*.json`` globs the adapters scan with."""
    dest = tmp_path / "task-1.json"
    dest.write_text('{"old": true}')
    script = (
        "import os, sys\n"
        "from auralsam2_core.atomic import atomic_open\n"
        "with atomic_open(sys.argv[1], 'w') as fh:\n"
        "    fh.write('{\"new\": ')\n"
        "    fh.flush()\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(dest)], timeout=60)
    assert proc.returncode == -9
    assert json.loads(dest.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.glob("*.json")] == ["task-1.json"]
    leftovers = [p.name for p in tmp_path.iterdir() if p != dest]
    assert len(leftovers) == 1 and leftovers[0].startswith(".task-1.json.")
    assert leftovers[0].endswith(".tmp")


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_new_files_get_the_permissions_a_plain_open_would(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "x.json", "{}")
        with atomic_path(tmp_path / "y.pt"):
            pass
        (tmp_path / "plain").write_text("{}")
    finally:
        os.umask(old)
    for name in ("x.json", "y.pt", "plain"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_keep_suffix_ends_the_temp_name_with_the_destinations(tmp_path):
    dest = tmp_path / "clip.review.mp4"
    with atomic_path(dest, keep_suffix=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".clip.review.mp4.")
        assert tmp.name.endswith(".tmp.mp4")
        tmp.write_bytes(b"video")
        assert not dest.exists()  # nothing under the final name until the block ends
    assert dest.read_bytes() == b"video"


def test_atomic_open_refuses_modes_that_would_not_write_a_whole_file(tmp_path):
    for mode in ("a", "ab", "r+", "x"):
        with pytest.raises(ValueError, match="whole new file"), atomic_open(tmp_path / "f", mode):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_name_near_the_file_system_limit_still_gets_a_temp(tmp_path):
    dest = tmp_path / ("é" * 125 + ".mp4")  # 254 bytes: no room for a suffix
    atomic_write_bytes(dest, b"ok")
    assert dest.read_bytes() == b"ok" and [p.name for p in tmp_path.iterdir()] == [dest.name]
    with atomic_path(dest, keep_suffix=True) as tmp:
        assert len(os.fsencode(tmp.name)) <= 255 and tmp.name.endswith(".tmp.mp4")
