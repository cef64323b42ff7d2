"""CVAT's Automatic annotation calls: ``{"image": <base64>, "threshold"?}`` and nothing else.

Which task? CVAT lists its running automatic-annotation requests at ``/api/lambda/requests``
(function id, task, job, progress). The requests for this function give the candidate tasks;
the image is then compared with small thumbnails of each candidate's frames, decoded from the
task's original video. The closest frame (within a tolerance) names both the task and the
frame; when frames look alike, the one after the last frame answered for that task wins (CVAT
asks for frames in order). The answer is that frame's pre-label, waited for if the model has
not reached it yet.
"""

from __future__ import annotations

import math
import time

from auralsam2_core import rle

from . import masks
from .errors import AdapterError, BadRequest, NotIdentified
from .frames import job_frames

SPEC_LABEL = "sounding"  # the label in function.yaml's spec


def parse_threshold(body: dict, default: float) -> float:
    raw = body.get("threshold")
    if raw is None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"'threshold' must be a number in [0, 1], got {raw!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise BadRequest(f"'threshold' must be in [0, 1], got {value}")
    return value


def answer(rec: dict, threshold: float, frame_size: tuple[int, int] | None) -> list[dict]:
    """A frame's pre-label as CVAT detector results (empty when nothing sounds)."""
    prob = float(rec["sounding_prob"])
    if prob < threshold:
        return []
    mask = rle.decode(rec["mask"])
    if frame_size:
        mask = masks.resize_mask(mask, *frame_size)
    flat = masks.to_detector_mask(mask)
    if flat is None:
        return []
    return [{
        "label": SPEC_LABEL, "type": "mask", "confidence": f"{prob:.4f}", "mask": flat,
        "attributes": [
            {"name": "confidence", "value": str(int(round(100 * prob)))},
            {"name": "review_priority", "value": str(int(round(100 * rec["review_priority"])))},
        ],
    }]


def detect(service, body: dict) -> list[dict]:
    image = masks.decode_image(body.get("image"))
    threshold = parse_threshold(body, service.settings.threshold)
    thumb = masks.thumbnail(image)
    deadline = time.monotonic() + service.settings.frame_wait
    name = service.settings.function_name

    calls = service.active_calls()
    if not calls:
        raise NotIdentified(
            f"cannot tell which task this image belongs to: CVAT lists no running Automatic "
            f"annotation request for the function '{name}'. This function hears the video, so "
            "it only answers CVAT's Automatic annotation (Actions > Automatic annotation) of a "
            "video task, or {\"task_id\": N}; check that AURALSAM2_CVAT_FUNCTION / "
            "NUCLIO_FUNCTION_NAME is the function's name in CVAT and that the function's CVAT "
            "user can see the task")

    sessions = [service.session(call["task"]) for call in calls]  # all start fetching now
    best_miss, failures, found = math.inf, [], []
    for call, session in zip(calls, sessions, strict=True):
        try:
            fmap = session.wait_ready(deadline)
            if call["job"] is not None:
                job = service.job(call["job"])
                frames = job_frames(fmap, job.start_frame, job.stop_frame)
            else:
                frames = fmap.task_frames()
            frame, dist = session.match(thumb, frames, call["job"], call["progress"], deadline)
        except AdapterError as e:
            failures.append(e)
            continue
        if frame is None:
            best_miss = min(best_miss, dist)
        else:
            found.append((dist, session, call["job"], frame))
    if not found:
        if failures:
            raise failures[0]
        tasks = ", ".join(str(c["task"]) for c in calls)
        raise NotIdentified(
            f"the image matches no frame of the task(s) being annotated with '{name}' "
            f"({tasks}): closest distance {best_miss:.1f}, tolerance "
            f"{service.settings.match_tolerance:g} (AURALSAM2_CVAT_MATCH_TOLERANCE)")
    dist, session, job, frame = min(found, key=lambda x: x[0])
    session.cursor[job] = frame
    rec = session.wait_record(frame, deadline)
    service.log("info", f"task {session.task_id} frame {frame} (match {dist:.1f}): "
                        f"p={rec['sounding_prob']:.2f}")
    return answer(rec, threshold, session.frame_size)


def active_calls(requests: list, function_name: str) -> list[dict]:
    """Running lambda requests of this function as ``{task, job, progress}``."""
    out, seen = [], set()
    for r in requests:
        fn = r.function
        status = str(getattr(r, "status", "") or "").lower()
        if getattr(fn, "id", None) != function_name or status not in (
                "queued", "started", "deferred", "scheduled"):
            continue
        task = getattr(fn, "task", None)
        if task is None:
            continue
        job = getattr(fn, "job", None) if "job" in fn else None
        key = (int(task), job)
        if key not in seen:
            seen.add(key)
            out.append({"task": int(task), "job": int(job) if job else None,
                        "progress": getattr(r, "progress", None)})
    return out
