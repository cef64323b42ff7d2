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


def instances(env: Mapping[str, str]) -> float | None:
    """``AURALSAM2_INSTANCES`` (1/true/yes: on) and ``AURALSAM2_MIN_INSTANCE_AREA`` (fraction
    of the frame a part must cover, default 0.002): the minimum area when every adapter splits
    a frame's mask into its connected parts (:mod:`auralsam2_core.inference.instances`), None when
    off."""
    from auralsam2_core.inference.instances import DEFAULT_MIN_AREA

    raw = (env.get("AURALSAM2_INSTANCES") or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return None
    if raw not in ("1", "true", "yes", "on"):
        raise ValueError(f"AURALSAM2_INSTANCES must be 1 or 0 (true/false), got {raw!r}")
    area = number(env, "AURALSAM2_MIN_INSTANCE_AREA", DEFAULT_MIN_AREA)
    if not 0 <= area < 1:
        raise ValueError(f"AURALSAM2_MIN_INSTANCE_AREA must be a fraction of the frame in "
                         f"[0, 1), got {area}")
    return area
