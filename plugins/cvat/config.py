"""Settings of the CVAT adapter, from the environment (nuclio ``spec.env``, a Kubernetes secret
or the shell), and the one function that chooses the model.

Credentials: ``CVAT_ACCESS_TOKEN`` (a personal access token) or ``CVAT_USERNAME`` +
``CVAT_PASSWORD``; each may instead be read from a file named by ``<NAME>_FILE`` (a mounted
secret; what manifests/cvat/deploy.sh sets up, so that no secret lands in the nuclio function
spec). They are kept out of ``repr`` and are never logged. ``CVAT_ORG`` is the organisation
whose tasks the function serves (sent as the ``X-Organization`` header, cvat-sdk's
``organization_slug``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from auralsam2_core.env import audio_track, instances, number, secret

DEFAULT_FUNCTION_NAME = "pth-auralsam2-sounding"
DEFAULT_LABEL = "sounding"
CVAT_DEFAULT_TIMEOUT = 120  # CVAT_NUCLIO_DEFAULT_TIMEOUT when not set (seconds)


@dataclass(frozen=True)
class CvatFunctionSettings:
    url: str | None = None  # the CVAT server; the only host the adapter talks to
    token: str | None = field(default=None, repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    org: str | None = None  # organisation slug: X-Organization on every CVAT call
    webhook_secret: str | None = field(default=None, repr=False)  # checks X-Signature-256
    function_name: str = DEFAULT_FUNCTION_NAME  # this function's id in CVAT (metadata.name)
    label: str = DEFAULT_LABEL
    cache_dir: Path = Path.home() / ".cache" / "auralsam2" / "cvat"
    media_source: str = "auto"  # "auto" (share when found, else backup), "backup", "share"
    upload: str = "shapes"  # whole tasks as mask "shapes" or "polygon-tracks"
    share_root: Path | None = None  # where CVAT's share is mounted in this container
    frame_wait: float = 50.0  # longest a detector request waits for its frame (s)
    invoke_margin: float = 15.0  # kept free of CVAT's invoke timeout (X-Nuclio-Invoke-Timeout)
    task_wait_cap: float = 50.0  # longest a direct {"task_id"} call may block (s)
    data_wait: float = 1800.0  # webhooks: how long to wait for a new task's data (s)
    threshold: float = 0.5  # sounding probability from which a frame gets a mask
    match_tolerance: float = 12.0  # thumbnail distance (0..255) up to which frames match
    retries: int = 4
    retry_delay: float = 1.0
    poll_period: float = 2.0  # backup export status checks (s)
    clip_len: int | None = None  # AURALSAM2_CLIP_LEN; None: the engine's (5 AVS, 10 Ref-AVS)
    #: AURALSAM2_VARIANT (as the model's): "refavs" pre-labels the task's classes as queries
    #: (plugins/cvat/classes.py), "avs" one "sounding" object
    variant: str = "avs"
    audio_track: int | None = None  # AURALSAM2_AUDIO_TRACK (default: the default track)
    verify_ssl: bool = True
    #: AURALSAM2_INSTANCES / AURALSAM2_MIN_INSTANCE_AREA: one mask (or polygon track) per
    #: connected part of at least this fraction of the frame; None: one for the whole mask
    instance_min_area: float | None = None

    def __post_init__(self) -> None:
        if self.upload not in ("shapes", "polygon-tracks"):
            raise ValueError(f"AURALSAM2_CVAT_UPLOAD must be shapes or polygon-tracks, got "
                             f"{self.upload!r}")
        if self.variant not in ("avs", "refavs"):
            raise ValueError(f"AURALSAM2_VARIANT must be avs or refavs, got {self.variant!r}")
        if self.media_source not in ("auto", "backup", "share"):
            raise ValueError(f"media source must be auto, backup or share, got "
                             f"{self.media_source!r}")
        if self.url:
            parts = urlsplit(self.url if "://" in self.url else f"http://{self.url}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"CVAT_URL must be an http(s) URL, got {self.url!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> CvatFunctionSettings:
        env = os.environ if env is None else env
        share = env.get("AURALSAM2_CVAT_SHARE_ROOT")
        values = dict(
            url=env.get("CVAT_URL") or None,
            token=_secret(env, "CVAT_ACCESS_TOKEN"),
            username=_secret(env, "CVAT_USERNAME"),
            password=_secret(env, "CVAT_PASSWORD"),
            org=env.get("CVAT_ORG") or None,
            webhook_secret=_secret(env, "AURALSAM2_CVAT_WEBHOOK_SECRET"),
            function_name=(env.get("AURALSAM2_CVAT_FUNCTION") or env.get("NUCLIO_FUNCTION_NAME")
                           or DEFAULT_FUNCTION_NAME),
            label=env.get("AURALSAM2_CVAT_LABEL") or DEFAULT_LABEL,
            cache_dir=Path(env.get("AURALSAM2_CVAT_CACHE") or cls.cache_dir),
            media_source=env.get("AURALSAM2_CVAT_MEDIA") or "auto",
            upload=env.get("AURALSAM2_CVAT_UPLOAD") or "shapes",
            share_root=Path(share) if share else None,
            frame_wait=number(env, "AURALSAM2_CVAT_FRAME_WAIT", cls.frame_wait),
            task_wait_cap=number(env, "AURALSAM2_CVAT_TASK_WAIT", cls.task_wait_cap),
            data_wait=number(env, "AURALSAM2_CVAT_DATA_WAIT", cls.data_wait),
            threshold=number(env, "AURALSAM2_CVAT_THRESHOLD", cls.threshold),
            match_tolerance=number(env, "AURALSAM2_CVAT_MATCH_TOLERANCE", cls.match_tolerance),
            retries=int(number(env, "AURALSAM2_CVAT_RETRIES", cls.retries)),
            retry_delay=number(env, "AURALSAM2_CVAT_RETRY_DELAY", cls.retry_delay),
            poll_period=number(env, "AURALSAM2_CVAT_POLL", cls.poll_period),
            clip_len=int(number(env, "AURALSAM2_CLIP_LEN", 0)) or None,
            variant=(env.get("AURALSAM2_VARIANT") or "avs").strip().lower(),
            audio_track=audio_track(env),
            verify_ssl=env.get("CVAT_VERIFY_SSL", "true").lower() not in ("0", "false", "no"),
            instance_min_area=instances(env),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def has_credentials(self) -> bool:
        return bool(self.token or (self.username and self.password))


def _secret(env: Mapping[str, str], name: str) -> str | None:
    try:
        return secret(env, name)
    except OSError as e:
        raise ValueError(f"{name}_FILE={env.get(f'{name}_FILE')} cannot be read "
                         f"({e.strerror or e}); mount the secret file there") from None
