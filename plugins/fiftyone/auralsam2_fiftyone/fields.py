"""The fields the plugin writes, and who owns them.

A field the plugin creates is marked in its ``info`` (``{"auralsam2": {...}}``, stored in the
dataset's schema, visible in the App's field tooltip together with its ``description``). The
plugin writes only into fields that carry that mark; a field of the same name that it did not
create is refused unless the caller sets ``overwrite`` (which then claims it, if its type fits).
"""

from __future__ import annotations

from dataclasses import dataclass

import fiftyone as fo

MARK = "auralsam2"
PLUGIN = "@auralsam2/auralsam2"


class FieldConflict(ValueError):
    """The target field exists and was not created by this plugin (or has another type)."""


@dataclass(frozen=True)
class Target:
    path: str  # "frames.x" for frame fields
    doc_type: type  # embedded document type the field holds
    role: str
    description: str
    #: label attributes declared in the schema (``(subpath, field type)``), so that the App's
    #: sidebar lists and filters them
    attributes: tuple = ()

    @property
    def is_frame_field(self) -> bool:
        return self.path.startswith("frames.")


def prelabel_targets(label_field: str, classes: bool = False) -> list[Target]:
    """The fields a pre-label run writes; ``classes``: a run with the project's classes
    (Ref-AVS), whose labels are the classes (the descriptions say so)."""
    what = ("one detection per class and frame, labelled with the class; Detections carry "
            "the frame's classes, class_probs and class_priorities, and their largest as "
            "sounding_prob and review_priority") if classes else \
        "one per frame; Detections carry the frame's sounding_prob and review_priority"
    return [
        Target(f"frames.{label_field}", fo.Detections, "frames",
               f"AuralSAM2 sounding-object masks ({what})"),
        Target(f"{label_field}_intervals", fo.TemporalDetections, "intervals",
               "AuralSAM2 sounding intervals" + (", per class (label = class)" if classes
                                                 else "") +
               " (hysteresis on the sounding probability). "
               "frame_range / time_range: as the App's timeline shows them (#0 = first "
               "frame); support: FiftyOne's 1-based frame numbers (#0 is support 1)",
               attributes=(("detections.frame_range", fo.StringField),
                           ("detections.time_range", fo.StringField))),
        Target(f"{label_field}_summary", fo.DynamicEmbeddedDocument, "summary",
               "AuralSAM2 run summary: status, error, frame counts, review priority"),
    ]


def eval_targets(eval_key: str) -> list[Target]:
    return [Target(eval_key, fo.DynamicEmbeddedDocument, "evaluation",
                   "AVSBench J and F of an AuralSAM2 evaluation (per video)")]


def _get_field(dataset: fo.Dataset, path: str):
    try:
        return dataset.get_field(path)
    except Exception:  # noqa: BLE001 - FiftyOne raises different errors across versions
        return None


def is_owned(field) -> bool:
    return isinstance(getattr(field, "info", None), dict) and MARK in field.info


def conflicts(dataset: fo.Dataset, targets: list[Target]) -> list[str]:
    """Paths of existing target fields this plugin did not create."""
    return [t.path for t in targets
            if (f := _get_field(dataset, t.path)) is not None and not is_owned(f)]


def claim(dataset: fo.Dataset, targets: list[Target], *, overwrite: bool,
          owner_info: dict) -> None:
    """Create (or, with ``overwrite``, take over) the target fields and mark them as ours.

    Raises :class:`FieldConflict` before anything is written when a field exists that the
    plugin did not create and ``overwrite`` is false, or when its type does not fit."""
    foreign = conflicts(dataset, targets)
    if foreign and not overwrite:
        raise FieldConflict(
            f"refusing to write into {', '.join(foreign)}: the field(s) exist and were not "
            "created by AuralSAM2. Choose another label field, or set overwrite=True to "
            "replace their values in the targeted samples.")
    for t in targets:
        f = _get_field(dataset, t.path)
        if f is not None and getattr(f, "document_type", None) is not t.doc_type:
            raise FieldConflict(f"{t.path} holds {type(f).__name__}"
                                f"({getattr(f, 'document_type', None)}), not {t.doc_type}; "
                                "choose another label field")
    for t in targets:
        f = _get_field(dataset, t.path)
        if f is None:
            add = dataset.add_frame_field if t.is_frame_field else dataset.add_sample_field
            name = t.path.removeprefix("frames.")
            add(name, fo.EmbeddedDocumentField, embedded_doc_type=t.doc_type)
            f = dataset.get_field(t.path)
        if not is_owned(f) or f.info[MARK].get("role") != t.role or \
                f.description != t.description:
            f.info = {**(f.info or {}), MARK: {"plugin": PLUGIN, "role": t.role,
                                               **owner_info}}
            f.description = t.description
            f.save()
        for sub, ftype in t.attributes:
            if _get_field(dataset, f"{t.path}.{sub}") is None:
                add = dataset.add_frame_field if t.is_frame_field else dataset.add_sample_field
                add(f"{t.path.removeprefix('frames.')}.{sub}", ftype)
