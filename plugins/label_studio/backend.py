"""The Label Studio backend's logic, without HTTP (see app.py): predictions from cached or
freshly computed engine results, interactive refinement from an annotator's box or click, and
fine-tuning from annotations (training.py).

Whole videos rarely fit Label Studio's 100 s ``/predict`` deadline: ``/predict`` serves results
already computed (by ``auralsam2 labelstudio prelabel`` or earlier calls), computes what fits in
``predict_budget`` seconds, and queues the rest in the background. A task that cannot be
predicted (no media, no audio, Label Studio unreachable) gets no prediction and a clear log
line; the other tasks of the request are still answered.

With a Ref-AVS model (``AURALSAM2_VARIANT=refavs``) the project's labels are its classes: each
is a query (its ``hint`` attribute, else the label), and each class that sounds gets its own
box track, timeline ranges and keyframe masks under its own label (:meth:`Backend.classes`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from auralsam2_core.errors import BadRequest
from auralsam2_core.inference.engine import NoAudioError, PrelabelOptions, class_queries
from auralsam2_core.inference.feature_cache import FeatureCache
from auralsam2_core.inference.instances import connected_parts
from auralsam2_core.inference.results import (
    ResultsWriter,
    read_results,
    track,
    with_frames_replaced,
)
from auralsam2_core.media.video import MediaError, probe
from auralsam2_core.model_spec import ModelSpec, load_model
from auralsam2_core.modeling.model import PointPrompt
from auralsam2_core.serving.engines import (
    LocalEngine,
    RemoteEngine,
    RemoteError,
    remote_from_env,
    start_worker,
)

from . import predictions as P
from .client import LabelStudioClient, LabelStudioError, MediaRefused
from .config import LabelStudioBackendSettings
from .errors import OutOfTime, TaskError, is_id
from .labelconfig import LabelConfigError, ProjectConfig, parse

_log = logging.getLogger("auralsam2.labelstudio")


@dataclass(frozen=True)
class TaskMedia:
    video: Path  # the file with the sound
    key: str  # cache key of the video (task id + URL hash)
    image: Path | None = None  # keyframe tasks: the image being labelled
    frame: int | None = None  # keyframe tasks: 0-based frame of ``video``


class Backend:
    def __init__(self, settings: LabelStudioBackendSettings,
                 served: ModelSpec | None = None, *, model=None,
                 client: LabelStudioClient | None = None,
                 remote: RemoteEngine | None = None) -> None:
        from .training import FineTuner

        self.settings = settings
        self.served = served or ModelSpec.from_env()
        # AURALSAM2_SERVER_URL set: the shared service runs the model; none is loaded here.
        # Else the model loads on first use, with the current fine-tuned weights.
        self.engine: LocalEngine | RemoteEngine = remote or remote_from_env() or LocalEngine(
            model, load=lambda: load_model(self.served),
            on_load=lambda m: self.finetune.apply_current(m))
        self._client = client
        self.stats: Counter = Counter()
        self.seconds_per_frame: float | None = None
        # The loaded model's per-clip features from first passes, for refinements (it empties
        # itself when the model's weights change, e.g. after fine-tuning).
        self.features = FeatureCache.from_mb(settings.refine_cache_mb)
        self.work = Path(settings.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.finetune = FineTuner(
            self.work / "finetune", settings, self.served, model=lambda: self.model,
            run_lock=self.engine.turns, task_media=self.task_media,
            cached_results=self.cached, model_version=self.model_version,
            shared_service=isinstance(self.engine, RemoteEngine), classes=self.classes)
        self._queue: dict[str, dict] = {}  # background pre-labelling, by media key
        self._queue_cv = threading.Condition()
        start_worker("auralsam2-ls-background", self._queue_cv,
                     lambda: next(iter(self._queue.items()), None), self._background)

    # ------------------------------------------------------------------ model

    @property
    def client(self) -> LabelStudioClient:
        if self._client is None:
            self._client = LabelStudioClient(self.settings)
        return self._client

    def model_version(self, cfg: ProjectConfig | None = None) -> str:
        """The predictions' version. With the Ref-AVS model and a project's ``cfg``, it also
        names the project's classes (``-q`` + a hash of them), so that predictions made for
        other classes count as another version (re-labelled by ``labelstudio prelabel``)."""
        if isinstance(self.engine, RemoteEngine):
            base = self.engine.model_version
        else:
            gen = self.finetune.generation
            base = f"auralsam2-{self.served.identity()}" + (f"-ft{gen}" if gen else "")
        if cfg is None or not self.refer:
            return base
        classes = {kind: self.classes(cfg, keyframe=kind == "keyframe")
                   for kind, used in (("video", cfg.video_box or cfg.timeline),
                                      ("keyframe", cfg.brush)) if used}
        digest = hashlib.sha256(json.dumps(classes, sort_keys=True).encode()).hexdigest()
        return f"{base}-q{digest[:8]}"

    @property
    def model(self):
        """The local model (loaded on first use); the shared service's has none here."""
        return self.engine.model

    @property
    def refer(self) -> bool:
        """Ref-AVS: the project's classes are the queries (AVS: one sounding object)."""
        return self.served.variant == "refavs"

    def classes(self, cfg: ProjectConfig, keyframe: bool = False) -> dict[str, str]:
        """``{query: label}`` of the project's classes for the Ref-AVS model (empty for the
        AVS model); LabelConfigError naming what is wrong with the labels."""
        if not self.refer:
            return {}
        try:
            return class_queries(cfg.classes(keyframe))
        except LabelConfigError:
            raise
        except ValueError as e:
            raise LabelConfigError(f"the project's labels cannot be the Ref-AVS model's "
                                   f"queries: {e}") from None

    def check_classes(self, cfg: ProjectConfig) -> None:
        """LabelConfigError when the project's labels cannot be the Ref-AVS model's queries."""
        if cfg.video_box or cfg.timeline:
            self.classes(cfg)
        if cfg.brush:
            self.classes(cfg, keyframe=True)

    def options(self, queries=(), **kw) -> PrelabelOptions:
        return PrelabelOptions(clip_len=self.settings.clip_len,
                               audio_track=self.settings.audio_track, queries=tuple(queries),
                               **kw)

    def warm_up(self) -> None:
        """Load the model now (in the background at start) so the first /predict is fast."""
        if isinstance(self.engine, RemoteEngine):
            return
        try:
            _ = self.model
        except Exception:  # noqa: BLE001 - reported by /health
            _log.exception("loading the model failed")

    # ------------------------------------------------------------------ protocol

    def health(self) -> dict:
        return {"status": "UP", "model_class": "AuralSAM2", "model_version":
                self.model_version(), "model_loaded": self.engine.loaded}

    def setup(self, body: dict) -> dict:
        # Label Studio calls /setup before every predict and gives it 3 s: never load here.
        cfg = None
        if body.get("schema") is not None:
            try:
                cfg = parse(body["schema"])
                self.check_classes(cfg)
            except LabelConfigError as e:
                raise BadRequest(str(e)) from None
        return {"model_version": self.model_version(cfg)}

    def metrics(self) -> dict:
        return {"model_version": self.model_version(), **self.stats,
                "queued": len(self._queue), "seconds_per_frame": self.seconds_per_frame,
                **{f"refine_cache_{k}": v for k, v in self.features.stats().items()}}

    def jobs(self) -> dict:
        return {"queued": sorted(self._queue), "training": self.finetune.snapshot()}

    def webhook(self, body: dict) -> dict:
        action = body.get("action")
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return self.finetune.collect(body)
        if action == "ANNOTATIONS_DELETED":
            return self.finetune.forget(body)
        if action == "START_TRAINING":
            if self.refer and self.served.bundled:
                raise BadRequest("the bundled Ref-AVS demo model cannot be fine-tuned from "
                                 "Label Studio (its trainer spec is the AVS demo's); serve the "
                                 "published Ref-AVS model to fine-tune its fuser here")
            return self.finetune.start(body.get("project") or {})
        return {"status": "ignored", "action": action}

    def predict(self, body: dict) -> dict:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        for i, task in enumerate(tasks):
            if not isinstance(task.get("data", {}), dict):
                raise BadRequest(f"tasks[{i}].data must be an object")
            if task.get("id") is not None and not is_id(task["id"]):
                raise BadRequest(f"tasks[{i}].id must be a task id (an integer >= 0)")
        try:
            cfg = parse(body.get("label_config") or "")
            self.check_classes(cfg)
        except LabelConfigError as e:
            raise BadRequest(str(e)) from None
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        context = params.get("context")
        if context is not None and not (isinstance(context, dict) and isinstance(
                context.get("result", []), list)):
            raise BadRequest("'params.context' must be an object with a 'result' list")
        deadline = time.monotonic() + self.settings.predict_budget
        version = self.model_version(cfg)
        out = []
        for task in tasks:
            try:
                if context and context.get("result"):
                    result, score = self.refine(task, cfg, context, deadline)
                else:
                    result, score = self.predict_task(task, cfg, deadline)
                out.append({"result": result, "score": score, "model_version": version})
                self.stats["predicted"] += 1
            except TaskError as e:
                # No "result" key: Label Studio stores nothing for this task.
                _log.warning("task %s: no prediction: %s", task.get("id"), e)
                out.append({"error": str(e), "task": task.get("id")})
                self.stats["failed"] += 1
        return {"results": out, "model_version": version}

    # ------------------------------------------------------------------ tasks

    def task_media(self, task: dict, cfg: ProjectConfig) -> TaskMedia:
        data = task.get("data") or {}
        media_dir = self.work / "media"
        tid = task.get("id")
        try:
            if cfg.brush is not None and cfg.brush.data_key in data:
                if cfg.audio_key not in data or "frame" not in data:
                    raise TaskError(f"keyframe task needs '{cfg.audio_key}' (its video, for the "
                                    "sound) and 'frame' (1-based) in its data")
                raw = data["frame"]
                if isinstance(raw, str) and raw.isdigit() and len(raw) < 12:
                    raw = int(raw)  # task data imported from CSV is text
                if not is_id(raw) or raw < 1:
                    raise TaskError(f"'frame' must be a 1-based frame number, got "
                                    f"{str(raw)[:40]!r}")
                frame = raw - 1
                video = self.client.download(data[cfg.audio_key], media_dir, tid)
                image = self.client.download(data[cfg.brush.data_key], media_dir, tid)
                return TaskMedia(video, _key(tid, data[cfg.audio_key],
                                             self.client.media_version(video)), image, frame)
            key = cfg.video_key
            if key is None or key not in data:
                raise TaskError(f"the task has no '{key or 'video'}' in its data")
            video = self.client.download(data[key], media_dir, tid)
            return TaskMedia(video, _key(tid, data[key], self.client.media_version(video)))
        except (MediaRefused, LabelStudioError, ValueError) as e:
            raise TaskError(str(e)) from None

    def cached(self, key: str, queries=()) -> dict | None:
        w = self._writer(_doc_key(key, queries), store=True)
        return read_results(w.final) if w.is_complete() else None

    def _writer(self, key: str, store: bool) -> ResultsWriter:
        """Where a run's results go: the cache (what :meth:`cached` reads), or a scratch name
        of their own, removed after use (keyframes, refinements)."""
        if store:
            return ResultsWriter(self._results_dir(), key)
        return ResultsWriter(self.work / "scratch" / self.model_version(),
                             f"{key}-{time.time_ns()}")

    def _results_dir(self) -> Path:
        """Cached results per model version (and per audio track when one is chosen)."""
        track = self.settings.audio_track
        name = self.model_version() + (f"-track{track}" if track is not None else "")
        return self.work / "results" / name

    def compute(self, media: TaskMedia, *, deadline: float | None = None,
                options: PrelabelOptions | None = None, prompts=None,
                store: bool = True) -> dict | None:
        """Run the engine on ``media.video``; None when ``deadline`` passes first."""
        opts = options or self.options()
        try:
            info = probe(media.video)
            if deadline is not None and self.seconds_per_frame and info.num_frames:
                frames = (opts.stop_frame or info.num_frames) - opts.start_frame
                if time.monotonic() + frames * self.seconds_per_frame > deadline:
                    return None
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.engine.turns.acquire(timeout=wait):  # one model run at a time
                return None
            try:
                return self._run(media, info, opts, prompts, deadline, store)
            finally:
                self.engine.turns.release()
        except NoAudioError:
            raise TaskError("the video has no audio track: AuralSAM2 segments what makes the "
                            "sound, so there is nothing to pre-label") from None
        except (MediaError, ValueError) as e:
            raise TaskError(str(e)) from None

    def _run(self, media, info, opts, prompts, deadline, store) -> dict | None:
        """The engine's results document (the local model, or the shared service, which must
        see ``AURALSAM2_LS_WORK_DIR/media`` under the same path, e.g. a shared volume)."""
        writer = self._writer(_doc_key(media.key, opts.queries), store)
        started, done = time.perf_counter(), [0]

        def on_frame(n: int) -> None:
            done[0] = n
            if deadline is not None and time.monotonic() > deadline:
                raise OutOfTime

        try:
            doc = self.engine.to_results(media.video, writer, opts, info=info, prompts=prompts,
                                         on_frame=on_frame, cache=self.features,
                                         deadline=deadline)
        except OutOfTime:
            return None
        except RemoteError as e:
            raise TaskError(str(e)) from None
        finally:
            if done[0] and not prompts:  # first passes (refinements reuse their features)
                spf = (time.perf_counter() - started) / done[0]
                self.seconds_per_frame = spf if self.seconds_per_frame is None else \
                    0.7 * self.seconds_per_frame + 0.3 * spf
        if not store:
            writer.final.unlink(missing_ok=True)
        return doc

    def video_doc(self, media: TaskMedia, deadline: float | None, queries=()) -> dict:
        doc = self.cached(media.key, queries)
        if doc is None:
            doc = self.compute(media, deadline=deadline, options=self.options(queries))
        if doc is None:
            self.enqueue(media, queries)
            raise TaskError("the video does not fit Label Studio's 100 s request; it is being "
                            "pre-labelled in the background: retrieve predictions again later, "
                            "or run `auralsam2 labelstudio prelabel --project N`")
        return doc

    def predict_task(self, task: dict, cfg: ProjectConfig, deadline: float | None
                     ) -> tuple[list[dict], float]:
        media = self.task_media(task, cfg)
        classes = self.classes(cfg, keyframe=media.image is not None)
        if media.image is None:
            doc = self.video_doc(media, deadline, tuple(classes))
            return self.video_results(doc, cfg, classes), self.score(doc)
        doc = self.cached(media.key, tuple(classes)) or self.compute(
            media, deadline=deadline, store=False,
            options=self.keyframe_options(media.frame, tuple(classes)))
        if doc is None:
            raise TaskError("no time left in this request for this keyframe")
        return self.keyframe_results(doc, media, cfg)

    def keyframe_options(self, frame: int, queries=(), **kw) -> PrelabelOptions:
        """A keyframe's run: SAM2's memory starts some frames before it (AVS: 8 or more;
        Ref-AVS, conditioned on the middle of its first clip: two clips), at the start of one
        of the whole video's clips, and runs whole clips, so that the keyframe's fuser clip
        is the one a whole pass has, and a click on it finds its features in
        ``self.features``."""
        opts = self.options(queries, **kw)
        t_len = opts.clip_len
        back = 2 * t_len if queries else 8
        return replace(opts, start_frame=max(0, (frame - back) // t_len * t_len),
                       stop_frame=frame + 1, clip_origin=0)

    def score(self, doc: dict) -> float:
        return P.prediction_score(doc, self.settings.threshold)

    def video_results(self, doc: dict, cfg: ProjectConfig,
                      classes: dict[str, str] | None = None) -> list[dict]:
        """The AVS model's one sounding object (the label AURALSAM2_LS_LABEL or the first),
        or each class's object under its label, on the controls that have that label."""
        s = self.settings
        warning = P.framerate_warning(doc["video"], cfg.framerate)
        if warning:
            _log.warning("%s", warning)
        kw = dict(framerate=cfg.framerate, threshold=s.threshold,
                  tolerance=s.keyframe_tolerance, instance_min_area=s.instance_min_area)
        try:
            if not classes:
                return P.video_results(doc, cfg.video_box, cfg.timeline, label=s.label, **kw)

            def having(c, lab):
                return c if c is not None and lab in c.labels else None

            return [r for q, lab in classes.items()
                    for r in P.video_results(doc, having(cfg.video_box, lab),
                                             having(cfg.timeline, lab), label=lab, query=q,
                                             **kw)]
        except LabelConfigError as e:
            raise TaskError(str(e)) from None

    def keyframe_results(self, doc: dict, media: TaskMedia, cfg: ProjectConfig,
                         classes: dict[str, str] | None = None) -> tuple[list[dict], float]:
        """The keyframe's brush masks: the AVS model's one, or one per class (``classes``:
        those to give, by default all the project's)."""
        from PIL import Image

        from auralsam2_core.inference import rle

        with Image.open(media.image) as im:
            size = im.size
        s = self.settings
        classes = classes or self.classes(cfg, keyframe=True) or {None: s.label}
        result, scores = [], []
        for query, label in classes.items():
            frame = next((f for f in track(doc, query)["frames"] if f["index"] == media.frame),
                         None)
            if frame is None:
                raise TaskError(f"frame {media.frame + 1} is past the end of the video")
            mask = rle.decode(frame["mask"])
            if (mask.shape[1], mask.shape[0]) != size:
                mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
            if s.instance_min_area is None:
                result += P.brush_results(mask, frame, cfg.brush, label=label,
                                          threshold=s.threshold, query=query)
            else:  # one brush mask per instance
                result += [r for i, part in enumerate(
                    connected_parts(mask, s.instance_min_area), 1)
                    for r in P.brush_results(part, frame, cfg.brush, label=label,
                                             threshold=s.threshold, part=i, query=query)]
            scores.append(P.frame_confidence(frame, s.threshold))
        return result, round(float(np.mean(scores)), 4)

    # ------------------------------------------------------------------ refinement

    def refine(self, task: dict, cfg: ProjectConfig, context: dict, deadline: float
               ) -> tuple[list[dict], float]:
        """Re-run from the annotator's box or click (plus the audio) and re-propagate. The run
        keeps the first pass's fuser clips (from frame 0), so the features it kept
        (``self.features``, per query) serve the frames re-propagated: only SAM2's tracking
        runs."""
        media = self.task_media(task, cfg)
        classes = self.classes(cfg, keyframe=media.image is not None)
        refined = _refined_class(context, classes) if classes else {}
        try:
            info = probe(media.video)
        except MediaError as e:
            raise TaskError(str(e)) from None
        frame, prompt = _context_prompt(context, media, cfg, info)
        stop = frame + 1 if media.image is not None else \
            min(frame + self.settings.refine_frames, info.num_frames or frame + 1)
        # The whole video's clips, whose features the first pass kept (per query; keyframes
        # too); Ref-AVS: the one class refined.
        opts = self.options(tuple(refined), start_frame=frame, stop_frame=max(stop, frame + 1),
                            clip_origin=0)
        part = self.compute(media, deadline=deadline, options=opts, prompts={frame: prompt},
                            store=False)
        if part is None:
            raise TaskError("no time left in this request to refine")
        if media.image is not None:
            return self.keyframe_results(part, media, cfg, refined or None)
        base = self.cached(media.key, tuple(classes))
        query = next(iter(refined), None)
        doc = with_frames_replaced(base, part, query) if base else part
        return self.video_results(doc, cfg, classes if base else refined), self.score(doc)

    # ------------------------------------------------------------------ background

    def enqueue(self, media: TaskMedia, queries=()) -> None:
        with self._queue_cv:
            self._queue.setdefault(_doc_key(media.key, queries),
                                   {"media": media, "queries": tuple(queries)})
            self._queue_cv.notify()

    def _background(self, item: tuple[str, dict]) -> None:
        """One queued video (it stays queued, so not queued twice, until done)."""
        key, job = item
        media, queries = job["media"], job["queries"]
        try:
            if self.cached(media.key, queries) is None:
                self.compute(media, options=self.options(queries))
            self.stats["background_done"] += 1
        except Exception as e:  # noqa: BLE001 - logged, the queue goes on
            _log.warning("background pre-labelling of %s failed: %s", key, e)
            self.stats["background_failed"] += 1
        finally:
            with self._queue_cv:
                self._queue.pop(key, None)


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value):
        raise TaskError(f"{what} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def _key(task_id, url: str, version: str = "") -> str:
    """Cache key of a task's media: its link, and the copy's version when the server gave
    one (results computed from an older file behind the same link are not reused)."""
    key = f"task-{task_id}-{hashlib.sha1(str(url).encode()).hexdigest()[:8]}"
    return key + (f"-{hashlib.sha1(version.encode()).hexdigest()[:8]}" if version else "")


def _doc_key(key: str, queries=()) -> str:
    """Name of a task's results: its media key, and the queries asked (Ref-AVS), which decide
    what the results hold (a project whose classes change is labelled anew)."""
    if not queries:
        return key
    return f"{key}-q{hashlib.sha1(chr(0).join(queries).encode()).hexdigest()[:8]}"


def _context_prompt(context: dict, media: TaskMedia, cfg: ProjectConfig, info
                    ) -> tuple[int, PointPrompt]:
    """(0-based video frame, prompt in display pixels) from Label Studio's context; a
    malformed one is a :class:`TaskError` naming what is wrong."""
    items = [r for r in context.get("result", []) if isinstance(r, dict)]
    if not items:
        raise TaskError("the context has no result (draw a box or click on the object)")
    w, h = info.width, info.height

    def box_of(v: dict, what: str) -> tuple[float, float, float, float]:
        x, y = _number(v.get("x"), f"{what}.x"), _number(v.get("y"), f"{what}.y")
        bw, bh = _number(v.get("width"), f"{what}.width"), _number(v.get("height"),
                                                                   f"{what}.height")
        clip = lambda p: min(100.0, max(0.0, p))  # percent of the frame, as drawn
        return clip(x), clip(y), clip(x + bw), clip(y + bh)

    clicks, labels, frame, box = [], [], None, None
    for r in items:
        v = r.get("value") or {}
        if not isinstance(v, dict):
            raise TaskError("a context result's 'value' must be an object")
        kind = r.get("type", "")
        if kind == "videorectangle":
            seq = v.get("sequence") or []
            if not isinstance(seq, list) or not all(isinstance(s, dict) for s in seq):
                raise TaskError("a VideoRectangle's 'sequence' must be a list of objects")
            for s in seq:
                if not is_id(s.get("frame")) or s["frame"] < 1:
                    raise TaskError("a VideoRectangle keyframe needs a 1-based 'frame'")
            if not seq:
                continue
            s = max(seq, key=lambda s: s["frame"])
            # The file frame on screen at that Label Studio frame (see predictions.py).
            seek = (s["frame"] - 1) / cfg.framerate + P.LS_SEEK_OFFSET
            frame = int(seek * (info.fps or cfg.framerate) + 1e-6)
            box = box_of(s, "the box")
        elif kind in ("rectanglelabels", "rectangle"):
            box = box_of(v, "the rectangle")
        elif kind in ("keypointlabels", "keypoint"):
            clicks.append((_number(v.get("x"), "a keypoint's x") * w / 100.0,
                           _number(v.get("y"), "a keypoint's y") * h / 100.0))
            labels.append(0 if r.get("is_positive") is False else 1)
    if media.image is not None:
        frame = media.frame
    if frame is None:
        raise TaskError("a video refinement needs a box drawn on a frame (VideoRectangle)")
    if info.num_frames and not 0 <= frame < info.num_frames:
        raise TaskError(f"frame {frame + 1} is outside the video")
    try:
        if box is not None:
            x0, y0, x1, y1 = box
            coords = [(x0 * w / 100.0, y0 * h / 100.0), (x1 * w / 100.0, y1 * h / 100.0)]
            return frame, PointPrompt(tuple(coords) + tuple(clicks), (2, 3, *labels))
        if not clicks:
            raise TaskError("the context has no box or keypoint to refine with")
        return frame, PointPrompt(tuple(clicks), tuple(labels))
    except ValueError as e:  # e.g. more points than a prompt may hold
        raise TaskError(f"cannot refine with this context: {e}") from None


def _refined_class(context: dict, classes: dict[str, str]) -> dict[str, str]:
    """``{query: label}`` of the class an annotator's box or click refines: the label on it
    (the only class when it has none); TaskError when it names none of the classes."""
    labels = {lab for r in context.get("result", []) if isinstance(r, dict)
              for k, v in (r.get("value") or {}).items()
              if k.endswith("labels") and isinstance(v, list) for lab in v}
    by_label = {lab: q for q, lab in classes.items()}
    chosen = [lab for lab in by_label if lab in labels]
    if not chosen and len(classes) == 1:
        return dict(classes)
    if len(chosen) != 1:
        raise TaskError(f"refining needs the class of the region: label the box or click "
                        f"with one of {list(by_label)} (got {sorted(labels) or 'no label'})")
    return {by_label[chosen[0]]: chosen[0]}
