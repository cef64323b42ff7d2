"""The module's old path (before the sub-packages): :mod:`auralsam2_core.modeling.build`, kept so
that existing imports of ``auralsam2_core.build`` keep working."""

from auralsam2_core.modeling.build import *  # noqa: F403
