"""Fine-tuning from Label Studio annotations.

``/webhook`` keeps the latest annotation of every task (``ANNOTATION_CREATED`` / ``_UPDATED``;
``ANNOTATIONS_DELETED`` forgets them). ``START_TRAINING`` turns them into training targets in
the engine's results format and fine-tunes the fuser with the project's trainer (SAM2 and the
audio encoder frozen) in the background; when it finishes, the live model takes the new fuser
and the model version gains ``-ft<N>``. The state survives restarts (``finetune/state.json``).

Targets: Label Studio video has boxes, not masks. A frame the annotator marks as sounding (a
``TimelineLabels`` range, or else a visible box) gets the model's own mask clipped to the
annotated box when that covers at least ``MIN_FILL`` of the box, else the filled box; other
frames get an empty mask (not sounding). Keyframe images give exact brush masks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from auralsam2_core.atomic import atomic_write_json
from auralsam2_core.errors import BadRequest
from auralsam2_core.inference import rle
from auralsam2_core.inference.engine import AVS_CLIP_LEN, REFAVS_CLIP_LEN
from auralsam2_core.inference.results import ResultsWriter, targets_document, track

from . import brush
from .errors import TaskError, is_id
from .labelconfig import LabelConfigError, parse
from .predictions import ls_frame

if TYPE_CHECKING:
    from auralsam2_core.model_spec import ModelSpec

    from .backend import TaskMedia
    from .config import LabelStudioBackendSettings
    from .labelconfig import ProjectConfig

MIN_FILL = 0.25
_log = logging.getLogger("auralsam2.labelstudio")


def box_track(results: list[dict]) -> dict[int, tuple[float, float, float, float]]:
    """Label Studio frame -> visible (x, y, w, h) percent box, from VideoRectangle regions,
    following the editor: linear between keyframes while the earlier one is enabled; a
    disabled keyframe shows on its own frame only; an enabled last one lasts (we stop there)."""
    out: dict[int, tuple] = {}
    for r in results:
        if r.get("type") != "videorectangle":
            continue
        seq = sorted((s for s in (r.get("value") or {}).get("sequence", [])
                      if "frame" in s), key=lambda s: s["frame"])
        for a, b in zip(seq, seq[1:] + [None], strict=True):
            fa = int(a["frame"])
            box_a = (a["x"], a["y"], a["width"], a["height"])
            out[fa] = box_a
            if b is None or not a.get("enabled", True):
                continue
            fb = int(b["frame"])
            box_b = (b["x"], b["y"], b["width"], b["height"])
            for f in range(fa + 1, fb):
                t = (f - fa) / (fb - fa)
                out[f] = tuple(p + t * (q - p) for p, q in zip(box_a, box_b, strict=True))
    return out


def timeline_frames(results: list[dict]) -> set[int] | None:
    ranges = [rg for r in results if r.get("type") == "timelinelabels"
              for rg in (r.get("value") or {}).get("ranges", [])]
    if not ranges:
        return None
    return {f for rg in ranges for f in range(int(rg["start"]), int(rg["end"]) + 1)}


def _box_mask(box, shape) -> np.ndarray:
    h, w = shape
    x0, y0 = int(round(box[0] * w / 100)), int(round(box[1] * h / 100))
    x1 = int(round((box[0] + box[2]) * w / 100))
    y1 = int(round((box[1] + box[3]) * h / 100))
    m = np.zeros(shape, bool)
    m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return m


def video_targets(results: list[dict], times: list[float], shape: tuple[int, int],
                  framerate: float, predicted: dict[int, np.ndarray]) -> list[dict]:
    """Per video frame: {index, time, mask} targets from one video annotation."""
    boxes = box_track(results)
    sounding = timeline_frames(results)
    frames = []
    for i, t in enumerate(times):
        f = ls_frame(t, framerate)
        on = (f in sounding) if sounding is not None else (f in boxes)
        mask = np.zeros(shape, bool)
        if on and f in boxes:
            box = _box_mask(boxes[f], shape)
            mask = box
            pred = predicted.get(i)
            if pred is not None and pred.shape == shape:
                clipped = pred & box
                if clipped.sum() >= MIN_FILL * max(1, box.sum()):
                    mask = clipped
        elif on:
            if i not in predicted:
                continue  # sounding, but where is unknown: no target for this frame
            mask = predicted[i]
        frames.append({"index": i, "time": round(t, 6), "mask": rle.encode(mask)})
    return frames


class FineTuner:
    """Fine-tunes the served model's AuralFuser on a project's annotations, in ``folder``.

    What it needs of the backend comes in explicitly: the settings and weights being served,
    ``model`` (the live model, loaded on first call), ``run_lock`` (held while training, so the
    live model keeps serving until the swap), ``task_media`` (a task's local media) and
    ``cached_results`` (the pre-labels of a media key and queries, or None), ``classes``
    (Ref-AVS: the project's ``{query: label}``; each class its own targets, trained with its
    query; empty for the AVS model), ``model_version`` (the
    version the backend reports, for the job's record). ``shared_service``: the model runs
    in the shared service, so there is nothing here to fine-tune.
    """

    def __init__(self, folder: Path, settings: LabelStudioBackendSettings,
                 served: ModelSpec, *, model: Callable[[], Any], run_lock,
                 task_media: Callable[[dict, ProjectConfig], TaskMedia],
                 cached_results: Callable[..., dict | None],
                 model_version: Callable[[], str], shared_service: bool,
                 classes: Callable[..., dict[str, str]] = lambda cfg, keyframe=False: {}
                 ) -> None:
        self.settings, self.served = settings, served
        self._classes = classes
        self._model, self._run_lock = model, run_lock
        self._task_media, self._cached_results = task_media, cached_results
        self._model_version, self._shared_service = model_version, shared_service
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.dir / "state.json"
        self.state = self._load_state()
        self.job: dict | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ state

    def _load_state(self) -> dict:
        base = self.served.identity()
        try:
            st = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {"base": base, "generation": 0, "fuser": None}
        if st.get("base") != base:  # other weights now: earlier fine-tuning does not apply
            return {"base": base, "generation": 0, "fuser": None}
        return st

    @property
    def generation(self) -> int:
        return int(self.state.get("generation", 0))

    def apply_current(self, model) -> None:
        if self.state.get("fuser"):
            from auralsam2_core.modeling.checkpoint import load_into, read_state_dict

            p = Path(self.state["fuser"])
            load_into(model.fuser, read_state_dict(p), what="AuralFuser", source=p)

    def snapshot(self) -> dict | None:
        return dict(self.job) if self.job else None

    # ------------------------------------------------------------------ webhook events

    def _task_file(self, project_id, task_id) -> Path:
        return self.dir / "annotations" / f"project-{int(project_id)}" / f"task-{int(task_id)}.json"

    def collect(self, body: dict) -> dict:
        ann, task, project = body.get("annotation"), body.get("task"), body.get("project")
        if not (isinstance(ann, dict) and isinstance(task, dict)):
            raise BadRequest("annotation events need 'annotation' and 'task' objects")
        if project is not None and not isinstance(project, dict):
            raise BadRequest("'project' must be an object")
        pid = next((p for p in ((project or {}).get("id"), task.get("project"),
                                ann.get("project")) if p is not None), None)
        if not is_id(pid):
            raise BadRequest("annotation event without a project id (an integer >= 0)")
        if not is_id(task.get("id")):
            raise BadRequest("'task.id' must be a task id (an integer >= 0)")
        if not isinstance(task.get("data") or {}, dict) or not isinstance(
                ann.get("result") or [], list):
            raise BadRequest("'task.data' must be an object and 'annotation.result' a list")
        label_config = (project or {}).get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("'project.label_config' must be XML text")
        path = self._task_file(pid, task["id"])
        if ann.get("was_cancelled"):
            path.unlink(missing_ok=True)
            return {"status": "skipped", "reason": "cancelled annotation"}
        path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"task": {"id": task["id"], "data": task.get("data") or {}},
               "annotation": {"id": ann.get("id"), "result": ann.get("result") or []},
               "label_config": label_config}
        atomic_write_json(path, rec)
        return {"status": "stored", "task": task["id"]}

    def forget(self, body: dict) -> dict:
        annotations, project = body.get("annotations") or [], body.get("project") or {}
        if not isinstance(annotations, list) or not isinstance(project, dict):
            raise BadRequest("ANNOTATIONS_DELETED needs an 'annotations' list and a 'project' "
                             "object")
        ids = {a["id"] for a in annotations if isinstance(a, dict) and is_id(a.get("id"))}
        pid = project.get("id")
        if pid is not None and not is_id(pid):
            raise BadRequest("'project.id' must be a project id (an integer >= 0)")
        removed = 0
        folder = self.dir / "annotations" / f"project-{int(pid)}" if pid is not None else None
        for f in (folder.glob("task-*.json") if folder and folder.is_dir() else []):
            if json.loads(f.read_text())["annotation"].get("id") in ids:
                f.unlink()
                removed += 1
        return {"status": "ok", "removed": removed}

    # ------------------------------------------------------------------ training

    def start(self, project: dict) -> dict:
        if not isinstance(project, dict) or not is_id(project.get("id")):
            raise BadRequest("START_TRAINING needs 'project' with its id (an integer >= 0)")
        pid = project["id"]
        if not isinstance(project.get("label_config") or "", str):
            raise BadRequest("'project.label_config' must be XML text")
        if self._shared_service:
            raise BadRequest("fine-tuning runs where the model is: this backend uses the shared "
                             "service (AURALSAM2_SERVER_URL); run `auralsam2 train --results` "
                             "there, or run the backend without AURALSAM2_SERVER_URL")
        with self._lock:
            if self.job and self.job["state"] in ("preparing", "training"):
                return {"status": "already training", "job": self.job["id"]}
            self.job = {"id": f"ft-{int(pid)}-{int(time.time())}", "project": int(pid),
                        "state": "preparing", "error": None}
        threading.Thread(target=self._run_safely, args=(int(pid), project.get("label_config")),
                         daemon=True, name="auralsam2-ls-finetune").start()
        return {"status": "training started", "job": self.job["id"]}

    def _run_safely(self, pid: int, label_config: str | None) -> None:
        try:
            self.run(pid, label_config)
            self.job["state"] = "done"
        except Exception as e:  # noqa: BLE001 - kept for /jobs and the log
            self.job.update(state="failed", error=f"{type(e).__name__}: {e}")
            _log.warning("fine-tuning for project %s failed: %s", pid, e)

    def training_data(self, pid: int, label_config: str | None, out: Path) -> list[Path]:
        """Write one results-format target file per annotated task (Ref-AVS: per task and
        class); returns their paths."""
        from auralsam2_core.media.video import probe

        files = []
        folder = self.dir / "annotations" / f"project-{pid}"
        for f in sorted(folder.glob("task-*.json")) if folder.is_dir() else []:
            rec = json.loads(f.read_text())
            try:
                cfg = parse(rec.get("label_config") or label_config or "")
                media = self._task_media(rec["task"], cfg)
                info = probe(media.video)
            except (LabelConfigError, TaskError, ValueError) as e:
                _log.warning("task %s skipped for training: %s", rec["task"]["id"], e)
                continue
            try:
                classes = self._classes(cfg, media.image is not None) or {None: None}
            except LabelConfigError as e:
                _log.warning("task %s skipped for training: %s", rec["task"]["id"], e)
                continue
            cached = self._cached_results(media.key, tuple(q for q in classes if q))
            for query, label in classes.items():
                path = self._targets(media, cfg, info, rec["annotation"]["result"], cached,
                                     query, label, out)
                if path is not None:
                    files.append(path)
        return files

    def _targets(self, media, cfg, info, result: list[dict], cached: dict | None,
                 query: str | None, label: str | None, out: Path) -> Path | None:
        """One task's targets file: the AVS model's sounding object, or (Ref-AVS) the class
        ``label``, from the annotation's regions under that label, trained with ``query``."""
        from auralsam2_core.media.video import iter_frames

        shape = (info.height, info.width)
        if label is not None:
            result = [r for r in result if any(
                isinstance(v, list) and label in v for k, v in (r.get("value") or {}).items()
                if k.endswith("labels"))]
        if cached:
            cached_frames = track(cached, query)["frames"]
            times = [fr["time"] for fr in cached_frames]
            predicted = {fr["index"]: rle.decode(fr["mask"]) for fr in cached_frames}
        else:
            times = [fr.time for fr in iter_frames(media.video, size=16)]
            predicted = {}
        if media.image is not None:
            brushes = [r for r in result if r.get("type") == "brushlabels"]
            mask = np.zeros(shape, bool)
            for r in brushes:
                m = brush.decode(r["value"]["rle"], r["original_height"],
                                 r["original_width"])
                if m.shape != shape:
                    from PIL import Image

                    m = np.asarray(Image.fromarray(m).resize(
                        (shape[1], shape[0]), Image.NEAREST))
                mask |= m
            if media.frame >= len(times):
                return None
            frames = [{"index": media.frame, "time": times[media.frame],
                       "mask": rle.encode(mask)}]
        else:
            frames = video_targets(result, times, shape, cfg.framerate, predicted)
        if not frames:
            return None
        name = media.key if label is None else \
            f"{media.key}-{hashlib.sha1(label.encode()).hexdigest()[:8]}"
        path = ResultsWriter(out, name).final
        path.write_text(json.dumps(targets_document(media.video, frames, query)))
        return path

    def run(self, pid: int, label_config: str | None) -> None:
        from auralsam2_core.modeling.checkpoint import load_into, read_state_dict
        from auralsam2_core.training.datasets import CorrectedResultsDataset
        from auralsam2_core.training.train import TrainConfig, train

        s = self.settings
        gen = self.generation + 1
        out = self.dir / f"gen-{gen}"
        data = out / "targets"
        data.mkdir(parents=True, exist_ok=True)
        files = self.training_data(pid, label_config, data)
        if not files:
            shutil.rmtree(out, ignore_errors=True)
            raise ValueError(f"project {pid} has no usable annotations to train on")
        model = self._model()
        dataset = CorrectedResultsDataset(files, image_size=model.image_size,
                                          clip_len=s.clip_len or (
                                              REFAVS_CLIP_LEN if self.served.variant == "refavs"
                                              else AVS_CLIP_LEN))
        self.job.update(state="training", tasks=len(files), clips=len(dataset),
                        steps=s.train_steps, step=0)
        cfg = TrainConfig(out=str(out / "run"), steps=s.train_steps, batch_size=1, lr=1e-4,
                          warmup_steps=max(1, s.train_steps // 10), checkpoint_every=10 ** 9,
                          progress=False, device=self.served.device)
        with self._run_lock:  # the live model keeps serving until the swap below
            res = train(cfg, dataset, self.train_spec(model),
                        on_step=lambda step, _l: self.job.update(step=step))
            load_into(model.fuser, read_state_dict(res.fuser), what="AuralFuser",
                      source=res.fuser)
            model.eval()
        self.state = {"base": self.served.identity(), "generation": gen,
                      "fuser": str(res.fuser.resolve()), "project": pid,
                      "tasks": len(files), "steps": res.steps}
        atomic_write_json(self.state_file, self.state, indent=1)
        self.job.update(model_version=self._model_version())

    def train_spec(self, model):
        """The trainer's ModelSpec for the weights being served (starting from the current,
        possibly already fine-tuned, fuser)."""
        from auralsam2_core.modeling.checkpoint import save_state_dict

        current = self.dir / "current_fuser.safetensors"
        save_state_dict(model.fuser.state_dict(), current)
        return self.served.for_fine_tuning(current, mask_choice=model.mask_choice)
