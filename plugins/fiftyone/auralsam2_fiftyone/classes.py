"""Which classes a run pre-labels: given, or the dataset's own.

The Ref-AVS model segments the object each class names (its query,
:func:`auralsam2_core.inference.engine.class_queries`), so a run with classes labels every
detection with its class. Where the classes come from, first match wins: the ``classes``
given; the classes of a chosen label field (``dataset.classes[field]``, else the labels the
field holds); the dataset's ``default_classes``.
"""

from __future__ import annotations

import fiftyone as fo

#: Label types whose ``label`` values are a field's classes, and the path to them.
_LABEL_PATHS = ((fo.Detections, "detections.label"), (fo.TemporalDetections, "detections.label"),
                (fo.Classifications, "classifications.label"), (fo.Polylines, "polylines.label"),
                (fo.Keypoints, "keypoints.label"), (fo.Detection, "label"),
                (fo.Classification, "label"), (fo.TemporalDetection, "label"),
                (fo.Polyline, "label"), (fo.Keypoint, "label"))


def label_fields(dataset) -> list[str]:
    """The dataset's label fields that can give classes: sample fields by name, frame fields
    as ``frames.<name>``."""
    if dataset is None:
        return []
    types_ = [t for t, _ in _LABEL_PATHS]
    out = sorted(dataset.get_field_schema(embedded_doc_type=types_) or {})
    if dataset.media_type == "video":
        out += [f"frames.{f}" for f in sorted(
            dataset.get_frame_field_schema(embedded_doc_type=types_) or {})]
    return out


def field_classes(dataset, field: str) -> list[str]:
    """A label field's classes: declared in ``dataset.classes`` (under ``field`` or its name
    without ``frames.``), else the labels it holds, sorted. ValueError for an unknown field."""
    declared = dataset.classes or {}
    for key in (field, field.removeprefix("frames.")):
        if declared.get(key):
            return list(declared[key])
    f = dataset.get_field(field) if field else None
    doc_type = getattr(f, "document_type", None)
    path = next((p for t, p in _LABEL_PATHS if doc_type is t), None)
    if path is None:
        raise ValueError(f"classes_field: {field!r} is not a label field of {dataset.name} "
                         f"(choose one of {label_fields(dataset)})")
    return sorted(str(v) for v in dataset.distinct(f"{field}.{path}") if v)


def run_classes(dataset, params: dict) -> list:
    """The classes a run pre-labels (names, or ``[name, hint]`` pairs as given); ValueError
    naming where to give them when there are none."""
    given = params.get("classes")
    if isinstance(given, str):  # "guitar, dog"
        given = [c.strip() for c in given.split(",") if c.strip()]
    if given:
        return list(given)
    if params.get("classes_field"):
        found = field_classes(dataset, params["classes_field"])
        if not found:
            raise ValueError(f"classes_field: {params['classes_field']!r} has no classes "
                             "(none declared in dataset.classes and no labels yet)")
        return found
    if dataset is not None and dataset.default_classes:
        return list(dataset.default_classes)
    raise ValueError("classes: no classes to pre-label: give classes, choose a label field "
                     "whose classes to use (classes_field), or set the dataset's "
                     "default_classes")
