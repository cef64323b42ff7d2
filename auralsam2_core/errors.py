"""Errors every front end (the adapters' HTTP servers, the shared service) answers alike."""

from __future__ import annotations


class BadRequest(ValueError):
    """A request the caller must fix: answered with ``status`` (a 4xx, 400 unless said) and
    the message, which names the field at fault; never a 500 or a traceback."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
