"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Everything is written to a temp file in the destination's folder (``os.replace`` is atomic
only within one file system), flushed to disk, then renamed over the destination; on any
error the temp file is removed and the old file is left as it was. Temp names end in
``.tmp`` (or keep the destination's suffix, for writers that pick a format from it) and
start with a dot, so ``*.json``-style globs never pick up a write in progress.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_MAX_NAME_BYTES = 255  # a file name on Linux file systems


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, keep_suffix: bool = False) -> Iterator[Path]:
    """A fresh temp path next to ``path`` for a writer that wants a file name (PyAV,
    safetensors, torch); renamed over ``path`` when the block ends without an error.

    The temp file is created empty first with mode ``0o666`` less the umask, so the result
    has the permissions a plain ``open(path, "w")`` would give it. ``keep_suffix`` ends the
    temp name with ``path``'s suffix (``.mp4``) for writers that choose the format by it.
    """
    dest = Path(path)
    tail = f".tmp{dest.suffix}" if keep_suffix else ".tmp"
    # ".<name>.<8 hex><tail>", the name cut so that it stays a legal file name (255 bytes)
    room = _MAX_NAME_BYTES - len(os.fsencode(f"..12345678{tail}"))
    name = os.fsdecode(os.fsencode(dest.name)[:room])
    while True:
        tmp = dest.with_name(f".{name}.{secrets.token_hex(4)}{tail}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # the data reaches the disk before the name does
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb",
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing, but ``path`` changes only when the block ends
    without an error (a stream cut short, a size limit hit: the old file stays)."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open writes a whole new file: mode 'w' or 'wb', not {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **dumps_kwargs: Any) -> Path:
    """``json.dumps(obj, **dumps_kwargs)`` written atomically; serialised before the temp
    file is made, so an unserialisable value fails without touching the disk."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - e.g. a platform without O_DIRECTORY
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)
