"""Old names of :mod:`auralsam2_core.model_spec` (``ServedModel`` is :class:`ModelSpec`), kept
for code written against them; new code imports :mod:`auralsam2_core.model_spec`."""

from .model_spec import ModelSpec as ServedModel
from .model_spec import add_model_arguments
from .model_spec import load_model as load_served_model
from .model_spec import spec_from_args as served_model_from_args

__all__ = ["ServedModel", "add_model_arguments", "load_served_model", "served_model_from_args"]
