"""What the CVAT function's tests share: its nuclio spec, the CVAT token it runs with, its
environment pointed at a :class:`helpers.cvat_emulator.CvatEmulator`, a nuclio call of its
handler, and waiting for its background threads (the ``emu`` and
``cvat_function_threads_joined`` fixtures in ``tests/conftest.py`` use them)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import nuclio_sdk
import yaml

from auralsam2_plugins.cvat import main

ROOT = Path(__file__).resolve().parents[2]
FUNCTION = "pth-auralsam2-sounding"
TOKEN = "s3cr3t-token-do-not-log"  # the function's CVAT token (tests check it is never logged)
SPEC = json.loads(yaml.safe_load((ROOT / "plugins/cvat/function.yaml").read_text())[
    "metadata"]["annotations"]["spec"])
# Settings a developer's shell may hold that would change what the function does.
_CLEARED = ("NUCLIO_FUNCTION_NAME", "AURALSAM2_CVAT_FUNCTION", "CVAT_USERNAME",
            "CVAT_PASSWORD", "AURALSAM2_CVAT_LABEL", "CVAT_ORG", "CVAT_ACCESS_TOKEN_FILE",
            "AURALSAM2_CVAT_WEBHOOK_SECRET", "AURALSAM2_SAM2_CONFIG", "AURALSAM2_IMAGE_SIZE",
            "AURALSAM2_FUSER_CONFIG", "AURALSAM2_SERVER_URL", "AURALSAM2_CVAT_UPLOAD",
            "AURALSAM2_VARIANT", "AURALSAM2_CLIP_LEN")


def function_env(monkeypatch, cvat_url: str, cache: Path, **extra: str) -> dict[str, str]:
    """The function's environment (as nuclio's ``spec.env`` gives it) for a CVAT at
    ``cvat_url``, with short waits and polls; ``extra`` adds or overrides variables."""
    values = {"CVAT_URL": cvat_url, "CVAT_ACCESS_TOKEN": TOKEN,
              "AURALSAM2_CVAT_CACHE": str(cache), "AURALSAM2_CVAT_POLL": "0.05",
              "AURALSAM2_CVAT_RETRY_DELAY": "0.05", "AURALSAM2_CVAT_FRAME_WAIT": "60",
              "AURALSAM2_CVAT_TASK_WAIT": "60", **extra}
    for k in _CLEARED:
        monkeypatch.delenv(k, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def call(platform, body, headers=None) -> tuple[int, object]:
    """The handler called through nuclio's test platform; every answer is JSON."""
    r = platform.call_handler(main.handler, nuclio_sdk.Event(body=body, headers=headers or {}))
    assert r.content_type == "application/json"
    return r.status_code, json.loads(r.body)


def join_function_threads() -> None:
    """Wait for the function's background threads (the model must not be running when the
    interpreter exits)."""
    for t in threading.enumerate():
        if t.name.startswith("auralsam2-cvat"):
            t.join(timeout=60)
