"""Plain dicts from :mod:`~auralsam2_fiftyone.convert` -> FiftyOne label objects."""

from __future__ import annotations

import fiftyone as fo


def detections(frame: dict) -> fo.Detections:
    """A frame's ``fo.Detections`` (with the frame-level ``sounding_prob`` and
    ``review_priority`` attributes) from :func:`convert.frame_dict`."""
    return fo.Detections(detections=[fo.Detection(**d) for d in frame["detections"]],
                         sounding_prob=frame["sounding_prob"],
                         review_priority=frame["review_priority"])


def temporal_detections(supports: list[dict]) -> fo.TemporalDetections:
    return fo.TemporalDetections(detections=[fo.TemporalDetection(**s) for s in supports])
