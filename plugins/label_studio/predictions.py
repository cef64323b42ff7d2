"""The engine's results -> Label Studio prediction results (and back, for training).

Video tasks get a ``VideoRectangle`` track and ``TimelineLabels`` ranges for the sounding
stretches, both placed **by timestamp** on Label Studio's frames (numbered with the config's
``<Video framerate>``, whatever the file's rate): Label Studio frame ``f`` shows the video at
``(f - 1) / framerate`` seconds (its frame seek, see :func:`shown_frames`), so each Label Studio
frame gets the box of the file frame on screen there. Between keyframes Label Studio
interpolates linearly (and holds the last keyframe's box after it); a Label Studio frame
becomes a keyframe when interpolation would miss its box by more than ``tolerance`` percent,
and ``enabled: false`` on the last frame of each stretch hides the box after it. Keyframe
images get a ``BrushLabels`` mask. With instances on (``AURALSAM2_INSTANCES``), each connected
part of the mask is its own ``VideoRectangle`` track (ids stable across frames, see
:mod:`auralsam2_core.inference.instances`), hidden on the frames where that part is absent; a
keyframe image gets one brush mask per part. With a Ref-AVS model each of the project's classes is a
query and gets all of the above under its own label (``query``: the results object read).

Scores are the model's own confidence (see :func:`frame_confidence`); the review priority
(what to look at first) is a separate number, in each region's meta text and
:func:`review_priority`.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import threading

import numpy as np

from auralsam2_core.inference import rle
from auralsam2_core.inference.instances import instance_tracks
from auralsam2_core.inference.results import frame_masks, objects
from auralsam2_core.inference.results import track as sounding_track

from . import brush
from .labelconfig import Control

Box = tuple[float, float, float, float]  # x, y, width, height in percent
MAX_KEYFRAME_GAP = 120  # frames: bounds the cost of choosing keyframes
# Label Studio 1.23 seeks frame f to (f - 1) / framerate + 0.002 s (Video goToFrame with the
# frame-seek-precision flag, on by default) and numbers round(duration * framerate) frames.
LS_SEEK_OFFSET = 0.002


def mask_box(mask: np.ndarray) -> Box | None:
    """Percent box of a (H, W) mask's extent, or None when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    h, w = mask.shape
    return (100.0 * cols[0] / w, 100.0 * rows[0] / h, 100.0 * (cols[-1] + 1 - cols[0]) / w,
            100.0 * (rows[-1] + 1 - rows[0]) / h)


def rle_box(mask: dict) -> Box | None:
    """:func:`mask_box` of an RLE mask, from its runs (no decoding), remembered by the mask's
    digest: a click's answer is the whole video's track again, and all but the re-propagated
    frames' masks are those of the previous answer (a 10-minute video's boxes took seconds)."""
    h, w = mask["size"]
    counts = mask["counts"]
    if not isinstance(counts, str):
        return _box_of(mask, h, w)
    key = (hashlib.blake2b(counts.encode("ascii", "replace"), digest_size=16).digest(), h, w)
    with _BOXES_LOCK:
        box = _BOXES.get(key, _MISSING)
    if box is _MISSING:
        box = _box_of(mask, h, w)
        with _BOXES_LOCK:
            _BOXES[key] = box
            if len(_BOXES) > _BOXES_MAX:
                del _BOXES[next(iter(_BOXES))]  # the oldest (insertion order)
    return box


_BOXES: dict[tuple, Box | None] = {}  # mask digest -> box (~150 bytes an entry)
_BOXES_MAX = 1 << 17  # frames: 70 minutes at 30 fps, ~20 MB
_BOXES_LOCK = threading.Lock()
_MISSING = object()


def _box_of(mask: dict, h: int, w: int) -> Box | None:
    x, y, bw, bh = rle.to_bbox(mask)
    if not bw:
        return None
    return 100.0 * x / w, 100.0 * y / h, 100.0 * bw / w, 100.0 * bh / h


def keyframes(boxes: list[tuple[int, Box]], tolerance: float) -> list[tuple[int, Box]]:
    """Keep the first and last box and every box that linear interpolation between the kept
    neighbours would miss by more than ``tolerance`` (percent, any coordinate).

    Greedy: from a kept box, the next one kept is the farthest (up to MAX_KEYFRAME_GAP
    frames on) such that every box on the way, and every farther candidate before it, is
    interpolated within ``tolerance``. Candidates are checked in array operations over
    windows that double (8, 16, ... boxes): box by box, a 10-minute video took seconds per
    refinement click, and a jittery track fails within the first window."""
    if len(boxes) <= 2 or tolerance <= 0:
        return list(boxes)
    frame = np.array([f for f, _ in boxes], np.float64)
    box = np.array([b for _, b in boxes], np.float64)
    kept = [boxes[0]]
    i = 0
    while i < len(boxes) - 1:
        end = min(len(boxes), i + 1 + MAX_KEYFRAME_GAP)  # candidates c = i+2 .. end-1
        j = max(i + 1, end - 1)  # the next box is always acceptable; all may pass
        lo, width = i + 2, 8
        while lo < end:
            cand = np.arange(lo, min(end, lo + width))
            between = np.arange(i + 1, cand[-1])  # boxes f = i+1 .. c-1 for each c
            t = (frame[between][None, :] - frame[i]) / (frame[cand] - frame[i])[:, None]
            interp = box[i] + t[..., None] * (box[cand][:, None, :] - box[i])
            err = np.abs(interp - box[between][None]).max(axis=2)
            err[between[None, :] >= cand[:, None]] = 0.0  # f is not before c
            bad = np.flatnonzero(~(err <= tolerance).all(axis=1))
            if bad.size:
                j = int(cand[bad[0]]) - 1
                break
            lo, width = lo + width, width * 2
        kept.append(boxes[j])
        i = j
    return kept


def _region_id(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- scores


def frame_confidence(frame: dict, threshold: float = 0.5) -> float:
    """How sure the model is of its pre-label on one frame: on a frame it calls sounding,
    ``sounding_prob × predicted_iou`` (that the object sounds, times SAM2's own estimate of
    the mask's IoU); on a frame it calls silent, ``1 − sounding_prob``."""
    p = float(frame["sounding_prob"])
    return p * float(frame["predicted_iou"]) if p >= threshold else 1.0 - p


def region_confidence(frames: list[dict]) -> float:
    """A region's score: the mean ``sounding_prob × predicted_iou`` of its frames."""
    if not frames:
        return 0.0
    return round(float(np.mean([f["sounding_prob"] * f["predicted_iou"] for f in frames])), 4)


def prediction_score(doc: dict, threshold: float = 0.5) -> float:
    """The task's prediction score: the mean :func:`frame_confidence` of its frames (of every
    object's frames, with several queries)."""
    frames = [f for obj in objects(doc) for f in obj["frames"]]
    if not frames:
        return 0.0
    return round(float(np.mean([frame_confidence(f, threshold) for f in frames])), 4)


def review_priority(frames: list[dict]) -> float:
    """What to look at first (0-1, higher first): the frames' mean ``review_priority``."""
    if not frames:
        return 0.0
    return round(float(np.mean([f["review_priority"] for f in frames])), 4)


def _meta(text: str) -> dict:
    return {"text": [text]}  # a region's meta text, shown in Label Studio's region details


def _of_class(kind: str, label: str | None, query: str | None) -> str:
    """``kind`` naming the class and the text the model read for it (Ref-AVS)."""
    return kind if query is None else f"{kind} of {label!r} (query {query!r})"


def _region_note(kind: str, frames: list[dict], warning: str | None) -> str:
    p = np.mean([f["sounding_prob"] for f in frames])
    iou = np.mean([f["predicted_iou"] for f in frames])
    note = (f"AuralSAM2 {kind}: confidence {region_confidence(frames):.2f} = mean over "
            f"{len(frames)} frame(s) of sounding probability ({p:.2f}) × predicted mask IoU "
            f"({iou:.2f}); review priority {review_priority(frames):.2f} (higher: look first).")
    return f"{warning}\n{note}" if warning else note


# --------------------------------------------------------------------------- frames


def ls_frame_count(duration: float, framerate: float) -> int:
    """How many frames Label Studio numbers for a video: round(duration × framerate)."""
    return max(1, int(round(duration * framerate)))


def ls_frame(time: float, framerate: float) -> int:
    """The first Label Studio frame (1-based) that shows the video at or after ``time``."""
    return max(1, math.ceil((time - LS_SEEK_OFFSET) * framerate - 1e-9) + 1)


def shown_frames(times: list[float], framerate: float, count: int) -> list[int]:
    """For each Label Studio frame 1..count, the position in ``times`` (sorted frame times of
    the results) of the frame on screen there: the last one that starts at or before the
    frame's seek time ``(f - 1) / framerate + 0.002`` (the first frame before it starts)."""
    return [max(0, bisect.bisect_right(times, (f - 1) / framerate + LS_SEEK_OFFSET + 1e-9) - 1)
            for f in range(1, count + 1)]


def framerate_warning(video: dict, framerate: float) -> str | None:
    """A clear sentence when the config's ``<Video framerate>`` is not the video's rate."""
    fps = video.get("fps")
    if not fps or abs(fps - framerate) <= 0.01 * fps:
        return None
    return (f"Frame rate mismatch: the labelling config says <Video framerate=\"{framerate:g}\"> "
            f"but this video is {fps:g} fps, so Label Studio numbers its frames at "
            f"{framerate:g} per second (frame numbers are not the file's). The "
            "pre-labels are placed by timestamp and are right at every frame; set "
            f"framerate=\"{fps:g}\" in the labelling config to step through the file's frames.")


def video_results(doc: dict, box: Control | None, timeline: Control | None, *,
                  framerate: float, label: str | None, threshold: float = 0.5,
                  tolerance: float = 0.5, instance_min_area: float | None = None,
                  query: str | None = None) -> list[dict]:
    """Label Studio results for a video task from one results document (with
    ``instance_min_area``: one box track per instance, see :func:`instance_box_tracks`):
    the AVS model's one sounding object, or the object of ``query`` (Ref-AVS), labelled
    ``label``."""
    video = doc["video"]
    obj = sounding_track(doc, query)
    cls = () if query is None else (label,)  # keeps the classes' region ids apart
    frames = obj["frames"]
    fps = video.get("fps") or framerate
    n = video.get("num_frames") or (frames[-1]["index"] + 1 if frames else 0)
    duration = video.get("duration") or (n / fps if fps else 0.0)
    n_ls = ls_frame_count(duration, framerate)
    warning = framerate_warning(video, framerate)
    pos = {f["index"]: k for k, f in enumerate(frames)}
    shown = shown_frames([f["time"] for f in frames], framerate, n_ls) if frames else []
    stretches = []  # (first, last) positions in ``frames``, Label Studio frames showing them
    for iv in obj["intervals"]:
        a, b = pos[iv["start_frame"]], pos[iv["end_frame"]]
        ls = [f for f, k in enumerate(shown, 1) if a <= k <= b]
        stretches.append((a, b, ls or [min(n_ls, ls_frame(frames[a]["time"], framerate))]))
    out: list[dict] = []
    if box is not None and instance_min_area is not None:
        out += instance_box_tracks(doc, box, stretches, shown, n_ls=n_ls, duration=duration,
                                   framerate=framerate, label=label, threshold=threshold,
                                   tolerance=tolerance, min_area=instance_min_area,
                                   warning=warning, query=query)
    elif box is not None:
        boxes: dict[int, Box | None] = {}

        def box_of(k: int) -> Box | None:
            if k not in boxes:
                f = frames[k]
                boxes[k] = rle_box(f["mask"]) if f["sounding_prob"] >= threshold else None
            return boxes[k]

        sequence, used = [], []
        for a, b, ls in stretches:
            track = [(f, box_of(k if a <= (k := shown[f - 1]) <= b else a)) for f in ls]
            track = [(f, bx) for f, bx in track if bx is not None]
            used += [frames[k] for k in range(a, b + 1) if box_of(k) is not None]
            kept = keyframes(track, tolerance)
            if sequence and kept and kept[0][0] <= sequence[-1]["frame"]:
                kept = kept[1:]  # never two keyframes on one Label Studio frame
            sequence += [_seq_item(f, bx, framerate, enabled=k < len(kept) - 1)
                         for k, (f, bx) in enumerate(kept)]  # the stretch ends: disabled
        if sequence:
            value = {"sequence": sequence, "framesCount": n_ls, "duration": round(duration, 6)}
            lab = box.label(label)
            if lab:
                value["labels"] = [lab]
            out.append({"id": _region_id("box", video.get("name"), *cls, len(sequence)),
                        "from_name": box.name, "to_name": box.to_name,
                        "type": "videorectangle", "origin": "prediction", "value": value,
                        "score": region_confidence(used),
                        "meta": _meta(_region_note(_of_class("box track", lab, query), used,
                                                     warning))})
    if timeline is not None:
        lab = timeline.label(label)
        for a, b, ls in stretches:
            part = frames[a:b + 1]
            out.append({"id": _region_id("sounding", video.get("name"), *cls,
                                         frames[a]["index"], frames[b]["index"]),
                        "from_name": timeline.name, "to_name": timeline.to_name,
                        "type": "timelinelabels", "origin": "prediction",
                        "value": {"ranges": [{"start": ls[0], "end": ls[-1]}],
                                  "timelinelabels": [lab] if lab else []},
                        "score": region_confidence(part),
                        "meta": _meta(_region_note(_of_class("sounding stretch", lab, query),
                                                     part, warning))})
    return out


def instance_box_tracks(doc: dict, box: Control, stretches: list, shown: list[int], *,
                        n_ls: int, duration: float, framerate: float, label: str | None,
                        threshold: float, tolerance: float, min_area: float,
                        warning: str | None, query: str | None = None) -> list[dict]:
    """One ``VideoRectangle`` per instance: the sounding frames' masks split into connected
    parts tracked across frames. Within each sounding stretch, each run of Label Studio frames
    on which the instance is present gets its keyframes, the last one ``enabled: false`` (so
    the box is hidden where the instance is not, instead of interpolated across the gap)."""
    frames = sounding_track(doc, query)["frames"]
    masks = ((k, mask if frames[k]["sounding_prob"] >= threshold else np.zeros_like(mask))
             for k, (_, mask) in enumerate(frame_masks(doc, query)))
    tracks = instance_tracks(masks, min_area=min_area, keep=mask_box)
    lab = box.label(label)
    out = []
    for iid, positions in tracks.items():
        at = dict(positions)
        sequence, used = [], []
        for a, b, ls in stretches:
            track = [(f, at.get(k if a <= (k := shown[f - 1]) <= b else a)) for f in ls]
            runs, run = [], []
            for f, bx in track + [(None, None)]:
                if bx is None:
                    if run:
                        runs.append(run)
                    run = []
                else:
                    run.append((f, bx))
            for run in runs:
                kept = keyframes(run, tolerance)
                if sequence and kept and kept[0][0] <= sequence[-1]["frame"]:
                    kept = kept[1:]  # never two keyframes on one Label Studio frame
                sequence += [_seq_item(f, bx, framerate, enabled=k < len(kept) - 1)
                             for k, (f, bx) in enumerate(kept)]
            used += [frames[k] for k in range(a, b + 1) if k in at]
        if not sequence:
            continue
        value = {"sequence": sequence, "framesCount": n_ls, "duration": round(duration, 6)}
        if lab:
            value["labels"] = [lab]
        cls = () if query is None else (lab,)
        out.append({"id": _region_id("box", doc["video"].get("name"), *cls, "instance", iid,
                                     len(sequence)),
                    "from_name": box.name, "to_name": box.to_name,
                    "type": "videorectangle", "origin": "prediction", "value": value,
                    "score": region_confidence(used),
                    "meta": _meta(_region_note(
                        _of_class(f"box track of instance {iid}", lab, query), used, warning))})
    return out


def _seq_item(frame: int, b: Box, framerate: float, enabled: bool) -> dict:
    # Label Studio's editor writes time = frame / framerate; so do we.
    return {"frame": frame, "x": round(b[0], 4), "y": round(b[1], 4),
            "width": round(b[2], 4), "height": round(b[3], 4), "rotation": 0,
            "enabled": enabled, "time": round(frame / framerate, 6)}


def brush_results(mask: np.ndarray, frame: dict, control: Control, *,
                  label: str | None, threshold: float = 0.5, part: int | None = None,
                  query: str | None = None) -> list[dict]:
    """A keyframe image's mask as one ``BrushLabels`` region (none when not sounding);
    ``part``: which instance of the frame it is (keeps region ids apart)."""
    if frame["sounding_prob"] < threshold or not mask.any():
        return []
    h, w = mask.shape
    lab = control.label(label)
    ident = ("mask", h, w, int(mask.sum())) + (() if part is None else (part,)) + \
        (() if query is None else (lab,))
    return [{"id": _region_id(*ident), "from_name": control.name,
             "to_name": control.to_name, "type": "brushlabels", "origin": "prediction",
             "original_width": w, "original_height": h, "image_rotation": 0,
             "value": {"format": "rle", "rle": brush.encode(mask),
                       "brushlabels": [lab] if lab else []},
             "score": region_confidence([frame]),
             "meta": _meta(_region_note(_of_class("mask", lab, query), [frame], None))}]
