"""The module's old path (before the sub-packages): :mod:`auralsam2_core.inference.engine`, kept so
that existing imports of ``auralsam2_core.engine`` keep working."""

from auralsam2_core.inference.engine import *  # noqa: F403
