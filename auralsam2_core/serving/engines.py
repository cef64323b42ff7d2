"""One engine interface for every caller (adapters, the shared service, batch), local or remote.

With ``AURALSAM2_SERVER_URL`` set (and ``AURALSAM2_SERVER_TOKEN`` or ``_TOKEN_FILE``),
:func:`engine_from_env` gives a :class:`RemoteEngine`: videos are submitted to the service and
the adapter never loads a model. Otherwise it gives a :class:`LocalEngine`: the model in this
process, loaded on first use (thread-safe) and shared in turns (:class:`ModelTurns`). Both
offer ``frames(video, options, ...)`` yielding
:class:`~auralsam2_core.inference.engine.FrameResult`, ``document(...)`` returning the results
document and ``to_results(video, writer, ...)`` writing
it through a :class:`~auralsam2_core.inference.results.ResultsWriter`; the remote one rebuilds
frames from the service's results file, so its numbers are those of the results format
(probabilities rounded to 5 decimals; masks identical). The options travel in the wire format
of :mod:`auralsam2_core.serving.wire`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from auralsam2_core.env import secret
from auralsam2_core.inference.engine import FrameResult, NoAudioError, PrelabelOptions, prelabel
from auralsam2_core.inference.results import (
    frame_records,
    frame_results,
    intervals_stale,
    with_intervals,
)
from auralsam2_core.media.video import MediaError
from auralsam2_core.modeling.model import PointPrompt
from auralsam2_core.serving.wire import options_to_wire


class ModelTurns:
    """One model shared by every thread that runs it: a run holds it (between frames it may
    :meth:`pass_turn`), and the caller waiting longest goes next (a plain lock may hand it
    straight back to the same thread, starving a second caller, e.g. a second CVAT task)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._busy = False

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the model (up to ``timeout`` seconds; None: as long as it takes)."""
        ticket = object()
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiting.append(ticket)
            while self._busy or self._waiting[0] is not ticket:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
                    return False
                self._cond.wait(left)
            self._waiting.popleft()
            self._busy = True
            return True

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def pass_turn(self) -> None:
        """Between two frames: let a waiting caller have the model first."""
        with self._cond:
            if not self._waiting:
                return
        self.release()
        self.acquire()

    def __enter__(self) -> ModelTurns:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def start_worker(name: str, cv: threading.Condition, take: Callable[[], object | None],
                 run: Callable[[object], None]) -> threading.Thread:
    """The daemon thread that feeds queued work to an engine, one item at a time: under
    ``cv`` it waits until ``take()`` gives an item (None: nothing queued; whoever queues
    notifies ``cv``), then calls ``run(item)`` outside the lock. ``run`` reports its own
    failures: the thread must outlive them."""

    def loop() -> None:
        while True:
            with cv:
                while (item := take()) is None:
                    cv.wait()
            run(item)

    thread = threading.Thread(target=loop, daemon=True, name=name)
    thread.start()
    return thread


class _NoTurns:
    """The remote engine's turns: the service queues the jobs, nothing to wait for here."""

    def acquire(self, timeout: float | None = None) -> bool:
        return True

    def release(self) -> None:
        pass

    def pass_turn(self) -> None:
        pass

    def __enter__(self) -> _NoTurns:
        return self

    def __exit__(self, *exc) -> None:
        pass



class RemoteError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteEngine:
    """The shared service (``auralsam2 serve``) as an engine."""

    turns = _NoTurns()
    loaded = False  # no model in this process

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

    def to_results(self, video, writer, options: PrelabelOptions | None = None, *, info=None,
                   prompts: Mapping[int, PointPrompt] | None = None, on_frame=None,
                   on_record: Callable[[dict], None] | None = None, cache=None,
                   deadline: float | None = None, hysteresis=None) -> dict | None:
        """The service's results document stored through ``writer`` (None, and nothing
        stored, when the monotonic ``deadline`` passes first), its intervals recomputed for
        another ``hysteresis``. The frames arrive at once at the end: ``on_record`` then gets
        each; ``on_frame`` is not called (no frame is written here while the service runs)."""
        doc = self.document(video, options, prompts=prompts, deadline=deadline)
        if doc is None:
            return None
        if hysteresis is not None and intervals_stale(doc, hysteresis):
            doc = with_intervals(doc, hysteresis)
        writer.replace_final(doc)
        if on_record:
            for record in frame_records(doc):
                on_record(record)
        return doc


class LocalEngine:
    """The same interface around the model in this process: given, or built by ``load`` on
    first use (once, under a lock: building a SAM2 with hydra is not thread-safe; ``on_load``
    then sees it first, e.g. to apply fine-tuned weights). Runs take :attr:`turns`."""

    def __init__(self, model=None, *, load: Callable[[], object] | None = None,
                 on_load: Callable[[object], None] | None = None) -> None:
        if model is None and load is None:
            raise TypeError("LocalEngine needs a model or a function that loads one")
        self._model, self._load, self._on_load = model, load, on_load
        self._load_lock = threading.Lock()
        self.turns = ModelTurns()  # one run at a time, in turns

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self):
        with self._load_lock:
            if self._model is None:
                model = self._load()
                if self._on_load:
                    self._on_load(model)
                self._model = model
            return self._model

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

        from auralsam2_core.inference.results import ResultsWriter

        with tempfile.TemporaryDirectory(prefix="auralsam2-") as tmp:
            return self.to_results(video, ResultsWriter(tmp, "doc"), options, prompts=prompts,
                                   on_frame=on_progress)

    def to_results(self, video, writer, options: PrelabelOptions | None = None, *, info=None,
                   prompts: Mapping[int, PointPrompt] | None = None,
                   on_frame: Callable[[int], None] | None = None,
                   on_record: Callable[[dict], None] | None = None, cache=None,
                   deadline: float | None = None, hysteresis=None) -> dict:
        """The one results loop
        (:func:`auralsam2_core.inference.prelabel_videos.prelabel_to_results`) into ``writer``;
        the caller holds :attr:`turns` when the model is shared. ``deadline`` is the caller's
        to enforce (``on_frame`` may raise)."""
        from auralsam2_core.inference.prelabel_videos import prelabel_to_results

        return prelabel_to_results(self.model, video, writer, options, info=info,
                                   prompts=prompts, on_frame=on_frame, on_record=on_record,
                                   cache=cache, hysteresis=hysteresis)


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


def engine_from_env(load_model: Callable[[], object], env: Mapping[str, str] | None = None,
                    *, lazy: bool = False, on_load: Callable[[object], None] | None = None
                    ) -> RemoteEngine | LocalEngine:
    """The service when ``AURALSAM2_SERVER_URL`` is set, else ``load_model()`` in-process
    (called only then, so adapters that use the service never load a model; with ``lazy``
    on first use rather than now)."""
    remote = remote_from_env(env)
    if remote is not None:
        return remote
    engine = LocalEngine(load=load_model, on_load=on_load)
    if not lazy:
        _ = engine.model
    return engine
