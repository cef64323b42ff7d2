"""Errors of the Label Studio backend (shared by the backend and fine-tuning); a bad request
is the core's :class:`auralsam2_core.errors.BadRequest`."""

from __future__ import annotations


class OutOfTime(Exception):
    """The request's deadline passed while the engine ran."""


class TaskError(RuntimeError):
    """This task gets no prediction; the message says why (no secrets, no payloads)."""


def is_id(value) -> bool:
    """A Label Studio object id in a request: an integer in 0 .. 2**63 - 1 (a database key;
    not a bool, not 1.5)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63
