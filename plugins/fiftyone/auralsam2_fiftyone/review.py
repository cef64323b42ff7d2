"""Review in priority order: the least confident videos, clips and frames first."""

from __future__ import annotations

from fiftyone import ViewField as F


def videos_by_priority(collection, label_field: str = "auralsam2"):
    """Pre-labelled videos, highest review priority (least confident) first."""
    key = f"{label_field}_summary.max_review_priority"
    return collection.exists(key).sort_by(key, reverse=True)


def clips_by_priority(collection, label_field: str = "auralsam2", threshold: float = 0.5):
    """One clip per run of consecutive frames whose review priority is ``>= threshold``,
    the clip with the highest frame priority first."""
    prio = F(f"{label_field}.review_priority")
    clips = collection.to_clips(prio >= threshold)
    return clips.sort_by(F("frames").map(prio).max(), reverse=True)


def frames_by_priority(collection, label_field: str = "auralsam2", limit: int | None = None
                       ) -> list[dict]:
    """Every pre-labelled frame as ``{sample_id, filepath, frame_number, review_priority,
    sounding_prob}``, highest review priority first (ties: earlier video, earlier frame)."""
    ids, paths, numbers, prios, probs = collection.values(
        ["id", "filepath", "frames.frame_number", f"frames.{label_field}.review_priority",
         f"frames.{label_field}.sounding_prob"])
    rows = []
    for order, (sid, path, ns, rs, ps) in enumerate(zip(ids, paths, numbers, prios, probs,
                                                        strict=True)):
        for n, r, p in zip(ns, rs, ps, strict=True):
            if p is not None:
                rows.append({"sample_id": sid, "filepath": path, "frame_number": n,
                             "review_priority": r or 0.0, "sounding_prob": p, "_o": order})
    rows.sort(key=lambda d: (-d["review_priority"], d["_o"], d["frame_number"]))
    for d in rows:
        del d["_o"]
    return rows[:limit] if limit is not None else rows
