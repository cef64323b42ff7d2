"""CVAT's Automatic annotation calls: ``{"image": <base64>, "threshold"?}`` and nothing else.

Which task? CVAT lists its running automatic-annotation requests at ``/api/lambda/requests``
(function id, task, job, progress). The requests for this function give the candidate tasks;
the image is then compared with small thumbnails of each candidate's frames, decoded from the
task's original video. The closest frame (within a tolerance) names both the task and the
frame; when frames look alike, the one after the last frame answered in that run wins (CVAT
asks for frames in order). The answer is that frame's pre-label, waited for if the model has
not reached it yet.

Never abort CVAT's run. CVAT calls ``raise_for_status()`` on every answer
(cvat/apps/lambda_manager/views.py ``LambdaGateway._http``): one non-2xx answer ends the whole
run, results are saved only every 100 frames, and a rerun duplicates what was saved. So a frame
the function cannot place, or whose pre-label is not ready within CVAT's invoke timeout, gets
``[]`` and a log line. A run may only fail while it has received no mask yet (nothing saved, so
nothing to duplicate): when nothing can work at all (no audio, CVAT refuses the function's
account, the function is not configured), the first frame says so with a 4xx/5xx.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from auralsam2_core.inference import rle
from auralsam2_core.inference.instances import connected_parts

from . import masks
from .errors import AdapterError, CvatBadRequest, NotIdentified, NotReady
from .frames import job_frames
from .upload import SCORES, attribute_value

SPEC_LABEL = "sounding"  # the label in function.yaml's spec
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


@dataclass(frozen=True)
class Call:
    """One running Automatic annotation request of this function, as CVAT lists it."""

    task: int
    job: int | None
    progress: int | None
    run: tuple  # tells runs apart: CVAT reuses a task's request id for its next run


def parse_threshold(body: dict, default: float) -> float:
    raw = body.get("threshold")
    if raw is None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise CvatBadRequest(f"'threshold' must be a number in [0, 1], got {raw!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise CvatBadRequest(f"'threshold' must be in [0, 1], got {value}")
    return value


def invoke_timeout(headers) -> float | None:
    """Seconds CVAT waits for this answer, from ``X-Nuclio-Invoke-Timeout`` ("120s"), which CVAT
    sends with ``CVAT_NUCLIO_DEFAULT_TIMEOUT`` (cvat/apps/lambda_manager/views.py); None when the
    header did not reach the function."""
    raw = header(headers, "X-Nuclio-Invoke-Timeout")
    m = _DURATION.match(raw or "")
    if not m:
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def header(headers, name: str) -> str | None:
    """A request header by case-insensitive name; nuclio hands them as str or bytes."""
    for k, v in (headers or {}).items():
        key = k.decode("latin-1") if isinstance(k, bytes) else str(k)
        if key.lower() == name.lower():
            return v.decode("latin-1") if isinstance(v, bytes) else str(v)
    return None


def score_attributes(rec: dict, label_attrs: dict | None) -> list[dict]:
    """``confidence`` / ``review_priority`` as CVAT accepts them: fitted to the range and step
    of the task label's attribute of the same name (what CVAT maps them to by default), else
    0..100 as in function.yaml's spec. An attribute whose bounds CVAT cannot read is left out:
    CVAT's check would raise and end the whole run."""
    out = []
    for name, key in SCORES.items():
        x = float(rec[key])
        attr = (label_attrs or {}).get(name)
        value = str(int(round(100 * x))) if attr is None else attribute_value(attr, x)
        if value is not None:
            out.append({"name": name, "value": value})
    return out


def answer(rec: dict, threshold: float, frame_size: tuple[int, int] | None,
           label_attrs: dict | None = None, instance_min_area: float | None = None,
           label: str = SPEC_LABEL) -> list[dict]:
    """One object's pre-label on a frame as CVAT detector results (empty when nothing
    sounds), under ``label`` (a label of function.yaml's spec): one mask, or with
    ``instance_min_area`` one per connected part of at least that fraction of the frame."""
    prob = float(rec["sounding_prob"])
    if prob < threshold:
        return []
    mask = rle.decode(rec["mask"])
    if frame_size:
        mask = masks.resize_mask(mask, *frame_size)
    parts = [mask] if instance_min_area is None else connected_parts(mask, instance_min_area)
    flats = [flat for part in parts if (flat := masks.to_detector_mask(part)) is not None]
    return [{"label": label, "type": "mask", "confidence": f"{prob:.4f}", "mask": flat,
             "attributes": score_attributes(rec, label_attrs)} for flat in flats]


def detect(service, body: dict, headers=None) -> list[dict]:
    image = masks.decode_image(body.get("image"))
    threshold = parse_threshold(body, service.settings.threshold)
    thumb = masks.thumbnail(image)
    budget = service.settings.frame_wait
    timeout = invoke_timeout(headers)
    if timeout is not None:
        budget = max(1.0, min(budget, timeout - service.settings.invoke_margin))
    deadline = time.monotonic() + budget
    name = service.settings.function_name

    try:
        calls = service.active_calls()
    except AdapterError as e:
        return service.skip_or_fail(None, e, "listing CVAT's running requests failed")
    if not calls:
        err = NotIdentified(
            f"cannot tell which task this image belongs to: CVAT lists no running Automatic "
            f"annotation request for the function '{name}' that the function's CVAT account "
            "can see. This function hears the video, so it only answers CVAT's Automatic "
            "annotation of a video task (Actions > Automatic annotation), or {\"task_id\": N}. "
            "Check that AURALSAM2_CVAT_FUNCTION / NUCLIO_FUNCTION_NAME is the function's name "
            "in CVAT, and that its account sees the task: a CVAT admin, or a maintainer or "
            "owner of the task's organisation with CVAT_ORG set to that organisation's slug")
        return service.skip_or_fail(None, err, "no running request is visible")

    try:
        # all start fetching now; a run's first frame reads the task's labels again
        sessions = [service.session(call.task, detector=True,
                                    new_run=service.first_frame_of(call.run))
                    for call in calls]
    except AdapterError as e:
        return service.skip_or_fail(calls[0], e, "CVAT could not be asked about the task")
    best_miss, failures, found, waiting = math.inf, [], [], []
    for call, session in zip(calls, sessions, strict=True):
        try:
            fmap = session.wait_ready(deadline)
            frames = job_frames(fmap, *service.job_range(call.job)) if call.job is not None \
                else fmap.task_frames()
            expected = session.expected(frames, call.run, call.progress)
            frame, dist = session.match(thumb, frames, expected, deadline)
        except NotReady as e:
            waiting.append((call, e))
            continue
        except AdapterError as e:
            failures.append((call, e))
            continue
        if frame is None:
            best_miss = min(best_miss, dist)
            if expected is not None:
                session.cursor[call.run] = expected  # CVAT asked for it; the next one follows
        else:
            found.append((dist, session, call, frame))
    if not found:
        if len(failures) == len(calls):  # every candidate failed for good (with two tasks
            call, err = failures[0]     # running, one's failure must not end the other's run)
            return service.skip_or_fail(call, err, "the task cannot be pre-labelled")
        if waiting:
            return service.skip(waiting[0][0], str(waiting[0][1]))
        tasks = ", ".join(str(c.task) for c in calls)
        return service.skip(calls[0], (
            f"the image matches no frame of the task(s) being annotated with '{name}' "
            f"({tasks}): closest distance {best_miss:.1f}, tolerance "
            f"{service.settings.match_tolerance:g} (AURALSAM2_CVAT_MATCH_TOLERANCE)"))
    dist, session, call, frame = min(found, key=lambda x: x[0])
    session.cursor[call.run] = frame
    try:
        recs = session.wait_record(frame, deadline)
    except NotReady as e:
        return service.skip(call, str(e))
    except AdapterError as e:
        if session.error or session.engine_error:  # the whole task, not just this frame
            return service.skip_or_fail(call, e, f"frame {frame} cannot be pre-labelled")
        return service.skip(call, str(e))
    # the AVS model's one object ("sounding", scored as the task's AURALSAM2_CVAT_LABEL), or
    # one per spec class (scored as the task label of that name, CVAT's default mapping)
    names = session.classes.names or (None,)
    result = []
    for rec, name in zip(recs, names, strict=True):
        result += answer(rec, threshold, session.frame_size,
                         service.label_attrs(session.task_id, name),
                         service.settings.instance_min_area, label=name or SPEC_LABEL)
    service.answered(call, bool(result))
    probs = ", ".join(f"{name or SPEC_LABEL} p={rec['sounding_prob']:.2f}"
                      for rec, name in zip(recs, names, strict=True))
    service.log("info", f"task {session.task_id} frame {frame} (match {dist:.1f}): {probs}")
    return result


def active_calls(requests: list, function_name: str) -> list[Call]:
    """Running lambda requests of this function."""
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
        job = int(job) if job else None
        run = (int(task), job, str(getattr(r, "id", "")), str(getattr(r, "enqueued", "")),
               str(getattr(r, "started", "")))
        if run not in seen:
            seen.add(run)
            out.append(Call(int(task), job, getattr(r, "progress", None), run))
    return out
