"""Pre-label a whole Label Studio project: every video (or keyframe) task gets this model
version's prediction, computed without Label Studio's 100 s limit and imported through the API.

Resumable: tasks that already hold a prediction with this model version are skipped (with the
Ref-AVS model the version names the project's classes: changing them re-labels every task), and
engine results are cached on disk, so an interrupted run redoes at most one video. Set the
project's model version to this one (done here) so annotators see these predictions.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

from .backend import Backend
from .client import LabelStudioError
from .errors import TaskError
from .labelconfig import LabelConfigError, parse

_log = logging.getLogger("auralsam2.labelstudio")


def prelabel_project(backend: Backend, project_id: int, *, task_ids: list[int] | None = None,
                     progress: bool = True) -> dict:
    client = backend.client
    project = client.project(project_id)
    try:
        cfg = parse(project.get("label_config") or "")
        backend.check_classes(cfg)
    except LabelConfigError as e:
        raise SystemExit(f"auralsam2 labelstudio: project {project_id}: {e}") from None
    version = backend.model_version(cfg)
    tasks = [t for t in client.tasks(project_id) if not task_ids or t["id"] in task_ids]
    report = {"project": project_id, "model_version": version, "tasks": len(tasks),
              "created": 0, "skipped": 0, "failed": 0, "errors": {}}
    for task in tqdm(tasks, unit="task", disable=not progress, desc=f"project {project_id}"):
        if any(p.get("model_version") == version for p in task.get("predictions") or []):
            report["skipped"] += 1
            continue
        try:
            result, score = backend.predict_task(task, cfg, deadline=None)
            client.create_prediction(task["id"], result, score, version)
            report["created"] += 1
        except (TaskError, LabelStudioError) as e:
            report["failed"] += 1
            report["errors"][str(task["id"])] = str(e)
            print(f"auralsam2 labelstudio: task {task['id']}: {e}", file=sys.stderr)
    if project.get("model_version") != version:
        try:  # show these predictions to annotators
            client.set_model_version(project_id, version)
        except LabelStudioError as e:
            _log.warning("could not set the project's model version: %s", e)
    return report
