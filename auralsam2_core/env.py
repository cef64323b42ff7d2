"""Reading settings from the environment, the same way in every adapter and the service.

Secrets may come from ``NAME`` or from a file named by ``NAME_FILE`` (a mounted Kubernetes or
Docker secret); numbers fail with the variable's name in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def secret(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value:
        return value
    path = env.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip() or None
    return None


def number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    try:
        return float(raw) if raw not in (None, "") else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def audio_track(env: Mapping[str, str]) -> int | None:
    """``AURALSAM2_AUDIO_TRACK``: which audio track every adapter hears (0-based among the
    file's audio tracks); unset = the track marked default, else the first."""
    raw = env.get("AURALSAM2_AUDIO_TRACK")
    if raw in (None, ""):
        return None
    if not raw.strip().isdigit():
        raise ValueError(f"AURALSAM2_AUDIO_TRACK must be an audio track index (0, 1, ...), "
                         f"got {raw!r}")
    return int(raw)
