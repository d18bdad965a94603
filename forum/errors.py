"""Typed errors of the Matrix gateway. Callers catch these, never inspect nio results."""

from __future__ import annotations


class MatrixError(Exception):
    """A request to the homeserver failed."""

    def __init__(self, message: str, *, status: int | None = None, errcode: str | None = None):
        self.status = status
        self.errcode = errcode
        super().__init__(message)


class Forbidden(MatrixError):
    """M_FORBIDDEN (403): we lack the power or the membership."""


class NotFound(MatrixError):
    """404: no such room, alias, event or state."""


class RateLimited(MatrixError):
    """429 after every allowed retry. ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: float, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class Unauthorized(MatrixError):
    """401: the access token is unknown or expired."""


class Conflict(MatrixError):
    """409 or M_ROOM_IN_USE: the alias or resource is taken."""


class BadRequest(MatrixError):
    """400: the homeserver refused the request's content."""


class HomeserverUnavailable(MatrixError):
    """The homeserver cannot be reached or answers 5xx after every retry."""
