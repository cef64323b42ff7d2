"""Client of the shared model service (``auralsam2 serve``), and the switch every adapter uses.

With ``AURALSAM2_SERVER_URL`` set (and ``AURALSAM2_SERVER_TOKEN`` or ``_TOKEN_FILE``),
:func:`engine_from_env` gives a :class:`RemoteEngine`: videos are submitted to the service and
the adapter never loads a model. Otherwise it gives a :class:`LocalEngine` around the model the
adapter would have loaded. Both offer ``frames(video, options, ...)`` yielding
:class:`~auralsam2_core.engine.FrameResult` and ``document(...)`` returning the results
document; the remote one rebuilds frames from the service's results file, so its numbers are
those of the results format (probabilities rounded to 5 decimals; masks identical).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path

from . import rle
from .engine import FrameResult, NoAudioError, PrelabelOptions, check_queries, prelabel
from .env import secret
from .media import MediaError
from .model import PointPrompt

OPTION_KEYS = ("clip_len", "stride", "no_audio", "start_frame", "stop_frame", "audio_track",
               "queries")
MAX_CLIP_LEN = 64  # frames the fuser sees at once: memory grows with it (the authors' T = 5)
#: Prompted frames per job: each becomes a SAM2 conditioning frame, kept for the whole video.
MAX_PROMPTED_FRAMES = 64
_FRAME_KEY = re.compile(r"0|[1-9][0-9]{0,11}")  # a decimal frame index, as JSON object keys


class OptionsError(ValueError):
    """Job options the wire format does not allow; ``field`` names the bad one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _show(value) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _count(raw: Mapping, key: str, default: int | None, minimum: int) -> int | None:
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionsError(f"options.{key}", f"must be an integer >= {minimum}, got "
                                             f"{_show(value)}")
    return value


def options_from_wire(raw, *, num_frames: int | None = None,
                      frame_size: tuple[int, int] | None = None
                      ) -> tuple[PrelabelOptions, dict[int, PointPrompt]]:
    """(engine options, prompts by frame) from a job's ``options`` object, checked strictly
    (:class:`OptionsError` naming the field): integers are integers (not 1.5, not true),
    ranges hold, prompts are bounded, and once the video is known (``num_frames``, display
    ``frame_size`` = (width, height)) every frame index and point lies inside it. The one
    check behind the service, its client and every job file read back."""
    if not isinstance(raw, Mapping):
        raise OptionsError("options", "must be an object")
    unknown = set(raw) - set(OPTION_KEYS) - {"prompts"}
    if unknown:
        raise OptionsError(f"options.{sorted(map(str, unknown))[0]}",
                           f"unknown option; known: {[*OPTION_KEYS, 'prompts']}")
    queries = raw.get("queries", [])
    if not isinstance(queries, list):
        raise OptionsError("options.queries", f"must be a list of strings, got "
                                              f"{_show(queries)}")
    try:
        queries = check_queries(queries)
    except ValueError as e:
        raise OptionsError("options.queries", str(e)) from None
    clip_len = _count(raw, "clip_len", PrelabelOptions(queries=queries).clip_len, 1)
    if clip_len > MAX_CLIP_LEN:
        raise OptionsError("options.clip_len", f"must be at most {MAX_CLIP_LEN}, got {clip_len}")
    stride = _count(raw, "stride", PrelabelOptions.stride, 1)
    start = _count(raw, "start_frame", 0, 0)
    stop = _count(raw, "stop_frame", None, start + 1)
    no_audio = raw.get("no_audio", PrelabelOptions.no_audio)
    if no_audio not in ("error", "silent") or not isinstance(no_audio, str):
        raise OptionsError("options.no_audio", f'must be "error" or "silent", got '
                                               f"{_show(no_audio)}")
    audio_track = _count(raw, "audio_track", None, 0)
    if num_frames:
        if start >= num_frames:
            raise OptionsError("options.start_frame", f"{start} is past the end of the video "
                                                      f"({num_frames} frames)")
        if stop is not None and stop > num_frames:
            raise OptionsError("options.stop_frame", f"{stop} is past the end of the video "
                                                     f"({num_frames} frames)")
    prompts = _prompts_from_wire(raw.get("prompts"), start, stop, stride, num_frames,
                                 frame_size)
    if prompts and queries:
        raise OptionsError("options.prompts", "prompts cannot be combined with queries (a "
                                              "prompt marks one object; each query is a track)")
    opts = PrelabelOptions(clip_len=clip_len, stride=stride, no_audio=no_audio,
                           start_frame=start, stop_frame=stop, audio_track=audio_track,
                           queries=queries)
    return opts, prompts


def _prompts_from_wire(raw, start: int, stop: int | None, stride: int,
                       num_frames: int | None, frame_size: tuple[int, int] | None
                       ) -> dict[int, PointPrompt]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise OptionsError("options.prompts", 'must be an object {"<frame>": {"coords": '
                                              '[[x, y], ...], "labels": [...]}}')
    if len(raw) > MAX_PROMPTED_FRAMES:
        raise OptionsError("options.prompts", f"at most {MAX_PROMPTED_FRAMES} prompted "
                                              f"frames per job, got {len(raw)}")
    prompts = {}
    for key, value in raw.items():
        field = f"options.prompts.{str(key)[:20]}"
        if not isinstance(key, str) or not _FRAME_KEY.fullmatch(key):
            raise OptionsError(field, "prompt keys are frame indices (0-based decimals)")
        frame = int(key)
        ends = [n for n in (stop, num_frames) if n]
        if frame < start or (ends and frame >= min(ends)) or (frame - start) % stride:
            raise OptionsError(field, f"frame {frame} is not among the frames being labelled "
                                      f"(start_frame {start}, stop_frame {stop}, stride "
                                      f"{stride}" + (f", {num_frames} frames" if num_frames
                                                     else "") + ")")
        try:
            prompt = PointPrompt.from_dict(value)
        except ValueError as e:
            raise OptionsError(field, str(e)) from None
        if frame_size is not None:
            w, h = frame_size
            outside = next(((x, y) for x, y in prompt.coords
                            if not (0 <= x <= w and 0 <= y <= h)), None)
            if outside is not None:
                raise OptionsError(field, f"point {outside} is outside the {w}x{h} frame")
        prompts[frame] = prompt
    return prompts


def options_to_wire(options: PrelabelOptions | None = None,
                    prompts: Mapping[int, PointPrompt] | None = None) -> dict:
    """The ``options`` object of a job request, checked as the service will check it."""
    opts = options or PrelabelOptions()
    wire = {**{k: list(v) if k == "queries" else v for k, v in asdict(opts).items()
               if k in OPTION_KEYS},
            "prompts": {str(k): p.as_dict() for k, p in (prompts or {}).items()}}
    options_from_wire(wire)
    return wire


class RemoteError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def frame_results(doc: dict) -> Iterator[FrameResult]:
    """FrameResults rebuilt from a results document, in the engine's order (per frame, one
    per object)."""
    from .results import objects

    objs = objects(doc)
    for recs in zip(*(o["frames"] for o in objs), strict=True):
        for o, f in zip(objs, recs, strict=True):
            yield FrameResult(f["index"], f["time"], rle.decode(f["mask"]), f["sounding_prob"],
                              f["predicted_iou"], f["mask_score"], f["review_priority"],
                              o["query"])


class RemoteEngine:
    def __init__(self, url: str, token: str, *, poll: float = 0.5, timeout: float = 30.0,
                 busy_retries: int = 60) -> None:
        self.url, self.poll, self.timeout = url.rstrip("/"), poll, timeout
        self._token = token
        self.busy_retries = busy_retries
        self._version: str | None = None

    def __repr__(self) -> str:
        return f"RemoteEngine({self.url!r})"

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("error", "")
            except ValueError:
                detail = ""
            err = RemoteError(f"the AuralSAM2 service answered {e.code}: {detail}", e.code)
            err.retry_after = float(e.headers.get("Retry-After") or 1)
            raise err from None
        except (urllib.error.URLError, OSError) as e:
            raise RemoteError(f"the AuralSAM2 service at {self.url} is unreachable "
                              f"({getattr(e, 'reason', e)})") from None

    def health(self) -> dict:
        return self._call("GET", "/health")

    def submit(self, video: str | os.PathLike, options: PrelabelOptions | None = None,
               prompts: Mapping[int, PointPrompt] | None = None) -> str:
        body = {"video": str(Path(video).resolve()) if "://" not in str(video) else str(video),
                "options": options_to_wire(options, prompts)}
        for _ in range(self.busy_retries):
            try:
                return self._call("POST", "/v1/jobs", body)["id"]
            except RemoteError as e:
                if e.status != 429:
                    raise
                time.sleep(min(getattr(e, "retry_after", 1.0), 10.0))  # back-pressure
        raise RemoteError("the AuralSAM2 service stayed busy (429); try again later", 429)

    def document(self, video, options: PrelabelOptions | None = None, *,
                 prompts: Mapping[int, PointPrompt] | None = None,
                 on_progress: Callable[[int], None] | None = None,
                 deadline: float | None = None) -> dict | None:
        """Run a job to the end and return its results document (None if the monotonic
        ``deadline`` passes first; the job still finishes on the service)."""
        job_id = self.submit(video, options, prompts)
        while deadline is None or time.monotonic() < deadline:
            st = self._call("GET", f"/v1/jobs/{job_id}")
            if on_progress:
                on_progress(st["progress"]["frames_done"])
            if st["status"] == "done":
                return self._call("GET", f"/v1/jobs/{job_id}/results")
            if st["status"] == "failed":
                kind, msg = st.get("error_kind"), st.get("error") or "failed"
                if kind == "no_audio":
                    raise NoAudioError(msg)
                if kind == "media":
                    raise MediaError(msg)
                raise RemoteError(f"the AuralSAM2 service failed the job: {msg}")
            time.sleep(self.poll)
        return None

    @property
    def model_version(self) -> str:
        """The service's model version (asked once)."""
        if self._version is None:
            self._version = self.health()["model_version"]
        return self._version

    @property
    def meta(self) -> dict:
        """What identifies the model, for cache keys and provenance (as ``AuralSAM2.meta``)."""
        return {"service": self.url, "model_version": self.model_version}

    def frames(self, video, options: PrelabelOptions | None = None, *, info=None,
               prompts: Mapping[int, PointPrompt] | None = None,
               on_progress: Callable[[int], None] | None = None) -> Iterator[FrameResult]:
        yield from frame_results(self.document(video, options, prompts=prompts,
                                               on_progress=on_progress))


class LocalEngine:
    """The same interface around a model in this process."""

    def __init__(self, model) -> None:
        self.model = model

    @property
    def meta(self) -> dict:
        return self.model.meta

    def frames(self, video, options: PrelabelOptions | None = None, *, info=None,
               prompts=None, on_progress=None) -> Iterator[FrameResult]:
        return prelabel(self.model, video, options, info=info, prompts=prompts,
                        on_progress=on_progress)

    def document(self, video, options: PrelabelOptions | None = None, *, prompts=None,
                 on_progress=None) -> dict:
        import tempfile

        from .jobs import prelabel_to_results
        from .results import ResultsWriter

        with tempfile.TemporaryDirectory(prefix="auralsam2-") as tmp:
            return prelabel_to_results(self.model, video, ResultsWriter(tmp, "doc"), options,
                                       prompts=prompts, on_frame=on_progress)


def as_engine(model_or_engine) -> RemoteEngine | LocalEngine:
    """An engine (``frames`` / ``document``) for a model or an engine."""
    return model_or_engine if hasattr(model_or_engine, "frames") else \
        LocalEngine(model_or_engine)


def remote_from_env(env: Mapping[str, str] | None = None) -> RemoteEngine | None:
    env = os.environ if env is None else env
    url = env.get("AURALSAM2_SERVER_URL")
    if not url:
        return None
    token = secret(env, "AURALSAM2_SERVER_TOKEN")
    if not token:
        raise ValueError("AURALSAM2_SERVER_URL is set but AURALSAM2_SERVER_TOKEN (or _FILE) "
                         "is not")
    return RemoteEngine(url, token)


def engine_from_env(load_model: Callable[[], object], env: Mapping[str, str] | None = None
                    ) -> RemoteEngine | LocalEngine:
    """The service when ``AURALSAM2_SERVER_URL`` is set, else ``load_model()`` in-process
    (called only then, so adapters that use the service never load a model)."""
    remote = remote_from_env(env)
    return remote if remote is not None else LocalEngine(load_model())
