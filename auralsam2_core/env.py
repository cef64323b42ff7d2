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
