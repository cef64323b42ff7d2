"""Errors the function answers with: each says why and what to do, with an HTTP status."""

from __future__ import annotations


class AdapterError(Exception):
    status = 500


class BadRequest(AdapterError):
    """The payload is not one the function understands."""

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
