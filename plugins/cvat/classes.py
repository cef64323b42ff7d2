"""What the CVAT function pre-labels with a Ref-AVS model (``AURALSAM2_VARIANT=refavs``): the
classes, as the engine's queries (:func:`auralsam2_core.inference.engine.class_queries`).

* Task-level paths (``{"task_id": N}``, webhooks, ``auralsam2 cvat prelabel``): the task's own
  labels that can hold a mask, each read by its name, or by the expression its ``query``
  attribute holds ("the man playing the guitar"), so pre-labels land on the project's labels.
* Automatic annotation: CVAT maps the function's own labels (``metadata.annotations.spec``)
  onto the task's, by name or in its label-mapping dialog, and drops every answer whose label
  it has not mapped; the function never learns the mapping (lambda_manager/views.py sends
  only the image). So the spec declares :data:`SPEC_CLASSES`, and a run answers with them: the
  spec classes the task's labels name (CVAT's default mapping), read through those labels'
  ``query`` attributes; when a task label names no spec class (the dialog may map any spec
  class onto it), every spec class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from auralsam2_core.inference.engine import class_queries

from .errors import Unprocessable

#: The Automatic-annotation classes declared in function.yaml's spec: common sound sources
#: of the Ref-AVS / AVSBench data (people, animals, vehicles, instruments), one query each;
#: 16 is the engine's limit of queries per run (engine.MAX_QUERIES).
SPEC_CLASSES = ("man", "woman", "child", "dog", "cat", "bird", "horse", "car", "motorcycle",
                "train", "helicopter", "guitar", "piano", "violin", "drum", "trumpet")
#: The label attribute whose value (its default value, or first value) is the expression the
#: model reads for that label instead of its name.
QUERY_ATTRIBUTE = "query"
#: Task label types a mask can be saved under (lambda_manager/views.py ``labels_compatible``
#: for a mask model label: the same type, ``any``, or polygon, which CVAT treats as
#: compatible).
MASK_LABEL_TYPES = ("mask", "polygon", "any")


@dataclass(frozen=True)
class Classes:
    """The queries of one run, in order, with the label name each object is saved under."""

    queries: tuple[str, ...]
    names: tuple[str, ...]  # per query: the task label (task paths) or spec class (detector)

    def __bool__(self) -> bool:
        return bool(self.queries)


NO_CLASSES = Classes((), ())  # the AVS model: one "sounding" object, no queries


def label_type(label) -> str:
    kind = getattr(label, "type", None) or "any"
    return str(getattr(kind, "value", kind))


def label_hint(label, attribute: str = QUERY_ATTRIBUTE) -> str | None:
    """The expression a label's ``query`` attribute holds (its default value, else its first
    value), or None."""
    for a in getattr(label, "attributes", None) or []:
        if a.name == attribute:
            values = list(getattr(a, "values", None) or [])
            text = getattr(a, "default_value", None) or (values[0] if values else None)
            return str(text).strip() or None if text is not None else None
    return None


def _classes(task_id: int, pairs: Sequence[tuple[str, str | None]], what: str) -> Classes:
    try:
        mapping = class_queries(pairs)
    except ValueError as e:
        raise Unprocessable(f"task {task_id}: {what} cannot be the model's queries: {e}. "
                            f"Rename the labels, or give them a '{QUERY_ATTRIBUTE}' attribute "
                            "holding the expression to read") from None
    return Classes(tuple(mapping), tuple(mapping.values()))


def mask_labels(labels) -> list:
    return [lb for lb in labels if label_type(lb) in MASK_LABEL_TYPES]


def task_classes(task_id: int, labels) -> Classes:
    """The task's mask-capable labels as queries (task-level paths)."""
    usable = mask_labels(labels)
    if not usable:
        names = ", ".join(f"{lb.name!r} ({label_type(lb)})" for lb in labels) or "none"
        raise Unprocessable(
            f"task {task_id} has no label a mask can be saved under (type mask, polygon or "
            f"any; its labels: {names}); with AURALSAM2_VARIANT=refavs each such label is "
            "pre-labelled as a query (its name, or its 'query' attribute)")
    return _classes(task_id, [(lb.name, label_hint(lb)) for lb in usable],
                    "the task's labels")


def detector_classes(task_id: int, labels) -> Classes:
    """The spec classes an Automatic annotation run of the task answers with (see above)."""
    by_name = {lb.name: lb for lb in mask_labels(labels)}
    named = [c for c in SPEC_CLASSES if c in by_name]
    chosen = SPEC_CLASSES if set(by_name) - set(SPEC_CLASSES) else named
    if not chosen:
        raise Unprocessable(
            f"task {task_id} has no mask, polygon or any label, so CVAT cannot save this "
            f"function's masks; add labels such as {', '.join(SPEC_CLASSES[:4])}")
    return _classes(task_id, [(c, label_hint(by_name[c]) if c in by_name else None)
                              for c in chosen], "the spec classes")
