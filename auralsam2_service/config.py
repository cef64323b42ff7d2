"""Settings of ``auralsam2 serve``, from the environment (or overrides from the command line).

The service reads media only from ``AURALSAM2_SERVER_MEDIA_ROOTS`` (folders, separated by
``os.pathsep``) and downloads only from ``AURALSAM2_SERVER_MEDIA_HOSTS`` (host names); the token
(``AURALSAM2_SERVER_TOKEN`` or ``AURALSAM2_SERVER_TOKEN_FILE``) is required and never logged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from auralsam2_core.env import number, secret
from auralsam2_core.inference.feature_cache import DEFAULT_MB


@dataclass(frozen=True)
class ServiceSettings:
    token: str | None = field(default=None, repr=False)
    media_roots: tuple[Path, ...] = ()
    media_hosts: tuple[str, ...] = ()
    state_dir: Path = Path.home() / ".cache" / "auralsam2" / "service"
    max_queue: int = 16  # jobs waiting (not counting the one running); more -> 429
    max_attempts: int = 2  # a job interrupted (process killed) is retried this many times
    max_body_bytes: int = 1 << 20
    max_download_bytes: int = 4 << 30
    #: AURALSAM2_REFINE_CACHE_MB: what first passes computed per clip, kept (on the model's
    #: device) for the refinement jobs that follow them (as the Label Studio backend does)
    refine_cache_mb: float = DEFAULT_MB

    def __post_init__(self) -> None:
        if self.max_queue < 1 or self.max_attempts < 1:
            raise ValueError("max_queue and max_attempts must be >= 1")
        if not (self.refine_cache_mb >= 0 and math.isfinite(self.refine_cache_mb)):
            raise ValueError("AURALSAM2_REFINE_CACHE_MB must be a number of megabytes >= 0 "
                             f"(0: no cache), got {self.refine_cache_mb}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> ServiceSettings:
        env = os.environ if env is None else env
        roots = env.get("AURALSAM2_SERVER_MEDIA_ROOTS", "")
        hosts = env.get("AURALSAM2_SERVER_MEDIA_HOSTS", "")
        values = dict(
            token=secret(env, "AURALSAM2_SERVER_TOKEN"),
            media_roots=tuple(Path(r).resolve() for r in roots.split(os.pathsep) if r.strip()),
            media_hosts=tuple(h.strip().lower() for h in hosts.split(",") if h.strip()),
            state_dir=Path(env.get("AURALSAM2_SERVER_STATE") or cls.state_dir),
            max_queue=int(number(env, "AURALSAM2_SERVER_MAX_QUEUE", cls.max_queue)),
            max_attempts=int(number(env, "AURALSAM2_SERVER_MAX_ATTEMPTS", cls.max_attempts)),
            refine_cache_mb=number(env, "AURALSAM2_REFINE_CACHE_MB", cls.refine_cache_mb),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
