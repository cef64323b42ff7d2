"""AVSBench J and F of a prediction frame field against a ground-truth frame field.

Scores come from :mod:`auralsam2_core.evaluation.metrics` (the official per-video protocol); this
module only turns FiftyOne labels into ``(T, H, W)`` arrays. Only frames whose ground truth is set
are scored (AVSBench annotates some frames only); a missing prediction on such a frame is an
empty mask. Videos without any ground-truth frame, or without any prediction, are skipped
and listed.
"""

from __future__ import annotations

import numpy as np

import fiftyone as fo
from auralsam2_core.evaluation.metrics import MetricsAccumulator
from auralsam2_core.media.video import probe

from . import convert, fields

INFO_KEY = "auralsam2_evaluations"


def label_mask(label, size: tuple[int, int] | None, cls: str | None = None,
               targets: dict | None = None) -> np.ndarray | None:
    """Binary (or, for heatmaps, [0, 1]) ``(H, W)`` array of a frame label; None for None.
    ``size`` is required for detections (relative boxes) and used to resize others. ``cls``:
    only that class (detections labelled ``cls``; a segmentation's pixels whose value
    ``targets``, the field's mask targets, names ``cls``)."""
    if label is None:
        return None if size is None else np.zeros(size, bool)
    if isinstance(label, fo.Segmentation):
        m = label.get_mask()
        if m is not None and cls is not None:
            values = [int(v) for v, name in (targets or {}).items() if name == cls]
            if m.ndim == 3 or not values:
                raise ValueError(f"per-class evaluation needs the ground truth's mask targets "
                                 f"to name class {cls!r} (dataset.mask_targets)")
            m = np.isin(m, values)
        out = np.zeros(size, bool) if m is None else (m.any(axis=-1) if m.ndim == 3 else m) != 0
    elif isinstance(label, fo.Heatmap):
        m = label.get_map().astype(np.float32)
        lo, hi = label.range if label.range else (0.0, max(float(m.max()), 1.0))
        out = np.clip((m - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    elif isinstance(label, fo.Detections | fo.Detection):
        if size is None:
            raise ValueError("detections need the frame size")
        dets = label.detections if isinstance(label, fo.Detections) else [label]
        dets = [d for d in dets if cls is None or d.label == cls]
        out = np.zeros(size, bool)
        for d in dets:
            crop = d.get_mask()
            if crop is None:  # no instance mask: the box is the mask
                h, w = size
                crop = np.ones((max(1, round(d.bounding_box[3] * h)),
                                max(1, round(d.bounding_box[2] * w))), bool)
            convert.paste(d.bounding_box, crop, size, out=out)
        return out
    else:
        raise ValueError(f"cannot score a {type(label).__name__} label as a mask")
    if size is not None and out.shape != tuple(size):
        out = convert._resize_nearest(out, *size) if out.dtype == bool else \
            _resize_float(out, size)
    return out


def _resize_float(a: np.ndarray, size) -> np.ndarray:
    rows = np.minimum((np.arange(size[0]) + 0.5) * a.shape[0] / size[0], a.shape[0] - 1)
    cols = np.minimum((np.arange(size[1]) + 0.5) * a.shape[1] / size[1], a.shape[1] - 1)
    return a[rows.astype(int)][:, cols.astype(int)]


def _frame_size(sample) -> tuple[int, int]:
    md = sample.metadata
    if md is not None and getattr(md, "frame_height", None) and getattr(md, "frame_width", None):
        return int(md.frame_height), int(md.frame_width)
    info = probe(sample.filepath)
    return info.height, info.width


def video_arrays(sample, pred_field: str, gt_field: str, cls: str | None = None,
                 targets: dict | None = None):
    """``(probs, gts, frame_numbers)`` of one video's ground-truth frames (of class ``cls``
    only, when given), or None when it has no ground-truth frame or no prediction at all."""
    frames = [(n, f[gt_field], f[pred_field]) for n, f in sample.frames.items()
              if f[gt_field] is not None]
    if not frames or all(p is None for _, _, p in frames):
        return None
    size = None
    if any(isinstance(g, fo.Segmentation) for _, g, _ in frames):
        size = next(label_mask(g, None).shape for _, g, _ in frames
                    if isinstance(g, fo.Segmentation))
    size = size or _frame_size(sample)
    gts = np.stack([label_mask(g, size, cls, targets) for _, g, _ in frames]).astype(bool)
    probs = np.stack([label_mask(p, size, cls) for _, _, p in frames]).astype(np.float32)
    return probs, gts, [n for n, _, _ in frames]


def evaluate_collection(collection, pred_field: str, gt_field: str, *,
                        eval_key: str | None = None, overwrite: bool = False,
                        classes: list[str] | bool | None = None) -> dict:
    """Score every video; store ``<eval_key>`` = {J, F, frames, ...} on each scored sample
    and the overall numbers in ``dataset.info["auralsam2_evaluations"][eval_key]``. Returns
    the overall report (``metrics.MetricsReport.to_dict()`` plus ``skipped``).

    ``classes`` (a list, or True for every label the predictions hold): score each class on
    its own (its predicted detections against its ground truth: detections with its label,
    or the segmentation pixels the field's mask targets name it by). The report's and each
    sample's ``per_class`` list the classes' J and F; the overall J and F are then their
    means over the classes."""
    eval_key = eval_key or f"{pred_field}_avs"
    dataset = collection._root_dataset
    for name in (pred_field, gt_field):
        if dataset.get_field(f"frames.{name}") is None:
            raise ValueError(f"no frame field {name!r} in {dataset.name}")
    if classes is True:
        classes = sorted(v for v in collection.distinct(f"frames.{pred_field}.detections.label")
                         if v)
        if not classes:
            raise ValueError(f"per class: {pred_field!r} holds no labelled detections")
    fields.claim(dataset, fields.eval_targets(eval_key), overwrite=overwrite,
                 owner_info={"pred_field": pred_field, "gt_field": gt_field})
    targets = dataset.get_mask_targets(f"frames.{gt_field}") or \
        dataset.get_mask_targets(gt_field) if classes else None
    accs = {c: MetricsAccumulator() for c in (classes or [None])}
    stored, skipped = {}, []
    view = collection.select_fields([f"frames.{pred_field}", f"frames.{gt_field}", "metadata"])
    for sample in view.iter_samples(progress=False):
        rows = {}
        for cls, acc in accs.items():
            arrays = video_arrays(sample, pred_field, gt_field, cls, targets)
            if arrays is not None:
                rows[cls] = acc.add(arrays[0], arrays[1], name=sample.filepath)
        if not rows:
            skipped.append(sample.filepath)
            continue
        first = next(iter(rows.values()))
        doc = {"J": float(np.mean([r["J"] for r in rows.values()])),
               "F": float(np.mean([r["F"] for r in rows.values()])),
               "frames": first["frames"], "empty_gt_frames": first["empty_gt_frames"],
               "pred_field": pred_field, "gt_field": gt_field}
        if classes:
            doc["per_class"] = [fo.DynamicEmbeddedDocument(
                **{"class": c, "J": r["J"], "F": r["F"], "empty_gt_frames": r["empty_gt_frames"]})
                for c, r in rows.items()]
        stored[sample.id] = fo.DynamicEmbeddedDocument(**doc)
    if not stored:
        raise ValueError(f"nothing to evaluate: no video has both {gt_field!r} frames and "
                         f"{pred_field!r} predictions")
    dataset.set_values(eval_key, stored, key_field="id", dynamic=True)
    reports = {c: acc.report().to_dict() for c, acc in accs.items()}
    report = dict(reports[None]) if not classes else _class_means(reports)
    overall = {k: report[k] for k in ("protocol", "J", "F", "J&F", "num_videos", "num_frames",
                                      "dataset_level")}
    overall.update(pred_field=pred_field, gt_field=gt_field, skipped=len(skipped))
    if classes:
        overall["per_class"] = report["per_class"]
    info = dict(dataset.info or {})
    info[INFO_KEY] = {**info.get(INFO_KEY, {}), eval_key: overall}
    dataset.info = info
    dataset.save()
    return {**report, "eval_key": eval_key, "skipped": skipped}


def _class_means(reports: dict[str, dict]) -> dict:
    """One report over classes: each class's J, F, J&F (``per_class``, in order) and their
    means as the overall numbers (mJ, mF)."""
    per_class = [{"class": c, **{k: r[k] for k in ("J", "F", "J&F", "num_videos",
                                                   "num_frames")}}
                 for c, r in reports.items()]
    first = next(iter(reports.values()))
    return {"protocol": first["protocol"] + " (mean over classes)",
            **{k: float(np.mean([p[k] for p in per_class])) for k in ("J", "F", "J&F")},
            "num_videos": max(p["num_videos"] for p in per_class),
            "num_frames": max(p["num_frames"] for p in per_class),
            "dataset_level": None, "per_class": per_class}
