"""One error hierarchy for the control plane, mapped to gRPC status codes and HTTP statuses in one place.

Service functions raise these; the gRPC interceptor and the gateway's exception handler translate them.
"""

from __future__ import annotations

ERROR_METADATA = "x-llmctl-error"
"""Trailing gRPC metadata on every error the control plane itself raised, so a client can tell its UNAVAILABLE
("the database is away") from the transport's ("no connection to the control plane")."""


class ControlPlaneError(Exception):
    """Base class: a message an operator can act on, plus how each edge reports it."""

    grpc_code = "INTERNAL"
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ControlPlaneError):
    grpc_code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(ControlPlaneError):
    grpc_code = "ALREADY_EXISTS"
    http_status = 409


class Conflict(ControlPlaneError):
    """A concurrent writer changed the same object first; retry after re-reading it."""

    grpc_code = "ABORTED"
    http_status = 409


class Unauthenticated(ControlPlaneError):
    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class Forbidden(ControlPlaneError):
    grpc_code = "PERMISSION_DENIED"
    http_status = 403


class InvalidArgument(ControlPlaneError):
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class Unavailable(ControlPlaneError):
    """The system cannot do it now; `retry_after` seconds is when trying again makes sense (None: unknown)."""

    grpc_code = "UNAVAILABLE"
    http_status = 503

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ResourceExhausted(ControlPlaneError):
    """A rate limit or token budget is spent; `retry_after` seconds until it refills (None: not this month)."""

    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 429

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
