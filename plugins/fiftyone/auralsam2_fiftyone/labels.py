"""Plain dicts from :mod:`~auralsam2_fiftyone.convert` -> FiftyOne label objects."""

from __future__ import annotations

import fiftyone as fo

#: Frame-level attributes a frame dict may carry besides its detections (the class lists
#: only with classes, see :func:`convert.class_frame_dict`).
FRAME_ATTRIBUTES = ("sounding_prob", "review_priority", "classes", "class_probs",
                    "class_priorities")


def detections(frame: dict) -> fo.Detections:
    """A frame's ``fo.Detections`` (with the frame-level ``sounding_prob`` and
    ``review_priority`` attributes, and per class scores with classes) from
    :func:`convert.frame_dict` or :func:`convert.class_frame_dict`."""
    return fo.Detections(detections=[fo.Detection(**d) for d in frame["detections"]],
                         **{k: frame[k] for k in FRAME_ATTRIBUTES if k in frame})


def temporal_detections(supports: list[dict]) -> fo.TemporalDetections:
    return fo.TemporalDetections(detections=[fo.TemporalDetection(**s) for s in supports])
