"""AuralSAM2 core: the model (SAM2 + AuralFuser), the engine that runs it over videos, and
everything every adapter shares. Imports no annotation platform; the adapters in
``plugins/`` and the service build on it. Layout: ``ARCHITECTURE.md``.

The public entry points are importable from here (loaded on first use, so that importing the
package stays cheap): ``build_auralsam2``, ``prelabel``, ``PrelabelOptions``, ``ModelSpec``.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "build_auralsam2": "auralsam2_core.modeling.build",
    "prelabel": "auralsam2_core.inference.engine",
    "PrelabelOptions": "auralsam2_core.inference.engine",
    "ModelSpec": "auralsam2_core.model_spec",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'auralsam2_core' has no attribute {name!r}")
