"""Settings of the Label Studio backend, from the environment (a compose file, a Kubernetes
secret or the shell).

``LABEL_STUDIO_URL`` is the only host media and annotations are fetched from (plus the
storage hosts named in ``AURALSAM2_LS_STORAGE_HOSTS``, for cloud-storage links that Label Studio
presigns). ``LABEL_STUDIO_API_KEY`` (or ``LABEL_STUDIO_API_KEY_FILE``) is kept out of ``repr``
and never logged. ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` (or their ``_FILE`` forms; the
names label-studio-ml-backend uses) are the HTTP Basic credentials Label Studio must send
(Settings -> Model -> "Use basic authentication"). The model comes from the ``AURALSAM2_*``
variables of :mod:`auralsam2_core.model_spec`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from auralsam2_core.env import audio_track, instances, number, secret

LABEL_STUDIO_PREDICT_TIMEOUT = 100.0  # seconds Label Studio waits for /predict


@dataclass(frozen=True)
class LabelStudioBackendSettings:
    url: str | None = None  # Label Studio, e.g. http://localhost:8080
    api_key: str | None = field(default=None, repr=False)
    storage_hosts: tuple[str, ...] = ()  # hosts presigned cloud-storage links may point to
    work_dir: Path = Path.home() / ".cache" / "auralsam2" / "label_studio"
    predict_budget: float = 80.0  # seconds /predict may compute (Label Studio waits 100)
    threshold: float = 0.5  # sounding probability from which a frame gets a box
    keyframe_tolerance: float = 0.5  # % of the frame a box may drift before a new keyframe
    refine_frames: int = 50  # frames re-propagated after an annotator's click
    #: AURALSAM2_REFINE_CACHE_MB: bound of the first pass's features kept for refinements
    refine_cache_mb: float = 1024.0
    train_steps: int = 60  # fine-tuning steps per START_TRAINING
    max_download_bytes: int = 4 << 30
    clip_len: int | None = None  # AURALSAM2_CLIP_LEN; None: 5 (AVS), 10 (Ref-AVS)
    audio_track: int | None = None  # AURALSAM2_AUDIO_TRACK (default: the default track)
    label: str | None = None  # label to predict (default: the first in the label config)
    #: AURALSAM2_INSTANCES / AURALSAM2_MIN_INSTANCE_AREA: one box track (and brush mask) per
    #: connected part of at least this fraction of the frame; None: one for the whole mask
    instance_min_area: float | None = None
    basic_auth_user: str | None = field(default=None, repr=False)
    basic_auth_pass: str | None = field(default=None, repr=False)
    max_body_bytes: int = 16 << 20  # request bodies (Label Studio's largest: /predict)

    def __post_init__(self) -> None:
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.basic_auth_user and ":" in self.basic_auth_user:
            raise ValueError("BASIC_AUTH_USER cannot contain ':' (HTTP Basic auth splits there)")
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"LABEL_STUDIO_URL must be an http(s) URL, got {self.url!r}")
        if not (self.refine_cache_mb >= 0 and math.isfinite(self.refine_cache_mb)):
            raise ValueError("AURALSAM2_REFINE_CACHE_MB must be a number of megabytes >= 0 "
                             f"(0: no cache), got {self.refine_cache_mb}")
        if isinstance(self.refine_frames, bool) or not isinstance(self.refine_frames, int) \
                or self.refine_frames < 1:
            raise ValueError("AURALSAM2_LS_REFINE_FRAMES must be a whole number of frames >= 1 "
                             f"(1: a click re-labels its own frame only), got "
                             f"{self.refine_frames}")
        if not 0 < self.predict_budget < LABEL_STUDIO_PREDICT_TIMEOUT:
            raise ValueError("AURALSAM2_LS_PREDICT_BUDGET must be between 0 and 100 seconds "
                             "(Label Studio gives up on /predict after 100 s)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 **overrides) -> LabelStudioBackendSettings:
        env = os.environ if env is None else env
        hosts = env.get("AURALSAM2_LS_STORAGE_HOSTS", "")
        values = dict(
            url=(env.get("LABEL_STUDIO_URL") or "").rstrip("/") or None,
            api_key=secret(env, "LABEL_STUDIO_API_KEY"),
            storage_hosts=tuple(h.strip().lower() for h in hosts.split(",") if h.strip()),
            work_dir=Path(env.get("AURALSAM2_LS_WORK_DIR") or cls.work_dir),
            predict_budget=number(env, "AURALSAM2_LS_PREDICT_BUDGET", cls.predict_budget),
            threshold=number(env, "AURALSAM2_LS_THRESHOLD", cls.threshold),
            keyframe_tolerance=number(env, "AURALSAM2_LS_KEYFRAME_TOLERANCE",
                                       cls.keyframe_tolerance),
            refine_frames=_whole(number(env, "AURALSAM2_LS_REFINE_FRAMES", cls.refine_frames)),
            refine_cache_mb=number(env, "AURALSAM2_REFINE_CACHE_MB", cls.refine_cache_mb),
            train_steps=int(number(env, "AURALSAM2_LS_TRAIN_STEPS", cls.train_steps)),
            max_download_bytes=int(number(env, "AURALSAM2_LS_MAX_DOWNLOAD_BYTES",
                                           cls.max_download_bytes)),
            clip_len=_clip_len(env),
            audio_track=audio_track(env),
            label=env.get("AURALSAM2_LS_LABEL") or None,
            instance_min_area=instances(env),
            basic_auth_user=secret(env, "BASIC_AUTH_USER"),
            basic_auth_pass=secret(env, "BASIC_AUTH_PASS"),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """(user, password) Label Studio must send, or None (loopback only, see the CLI)."""
        if self.basic_auth_user and self.basic_auth_pass:
            return self.basic_auth_user, self.basic_auth_pass
        return None


def _whole(x: float) -> int | float:
    """``x`` as an int when it is a whole number (else as is, for the check to refuse)."""
    return int(x) if math.isfinite(x) and x == int(x) else x


def _clip_len(env: Mapping[str, str]) -> int | None:
    raw = number(env, "AURALSAM2_CLIP_LEN", 0)
    if raw != int(raw) or raw < 0:
        raise ValueError(f"AURALSAM2_CLIP_LEN must be a whole number of frames, got {raw:g}")
    return int(raw) or None
