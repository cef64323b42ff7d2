"""Errors the function answers with: each says why and what to do, with an HTTP status."""

from __future__ import annotations

from auralsam2_core.errors import BadRequest


class AdapterError(Exception):
    status = 500


class CvatBadRequest(AdapterError, BadRequest):
    """The payload is not one the function understands (the core's :class:`BadRequest`,
    answered like the function's other errors)."""

    status = 400


class NotIdentified(AdapterError):
    """A detector request whose task (or frame) cannot be told."""

    status = 409


class Unprocessable(AdapterError):
    """The task cannot be pre-labelled: no audio, not a video task, no 'sounding' label..."""

    status = 422


class Upstream(AdapterError):
    """CVAT failed (after retries)."""

    status = 502


class NotReady(AdapterError):
    """The answer is not ready within the time CVAT waits; the work goes on in the background."""

    status = 503


class Unauthorized(AdapterError):
    """A webhook or direct call without the signature the configured secret requires."""

    status = 401
