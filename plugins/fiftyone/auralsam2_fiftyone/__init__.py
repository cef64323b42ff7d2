"""FiftyOne adapter for AuralSAM2 (the ``@auralsam2/auralsam2`` plugin's Python package).

Python use (the plugin folder on ``sys.path``)::

    from auralsam2_fiftyone import AuralSAM2VideoModel, prelabel_collection, ModelSpec

Names are imported lazily so that :mod:`auralsam2_fiftyone.convert` and
:mod:`auralsam2_fiftyone.spec` work without FiftyOne installed.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AuralSAM2VideoModel": "model",
    "ModelSpec": "spec",
    "resolve_model": "spec",
    "PrelabelSettings": "prelabel",
    "prelabel_collection": "prelabel",
    "evaluate_collection": "evaluate",
    "videos_by_priority": "review",
    "clips_by_priority": "review",
    "frames_by_priority": "review",
    "FieldConflict": "fields",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
