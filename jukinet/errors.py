"""Typed domain errors and their one translation into gRPC statuses.

Domain code raises these; the server's error interceptor turns them into a
status with a machine-readable reason in trailing metadata
(``jukinet-reason``, and ``jukinet-field`` for bad input). Anything else
becomes INTERNAL with a generic message and is logged in full on the server.
"""

from __future__ import annotations

from typing import cast

import grpc

from jukinet.reasons import Reason


class JukinetError(Exception):
    """Base of every error a node reports to its caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata that carries the machine-readable reason."""
        return (("jukinet-reason", str(self.reason)),)


class InvalidArgument(JukinetError):
    """Bad input: names the field and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (*super().metadata(), ("jukinet-field", self.field))


class NotFound(JukinetError):
    code = grpc.StatusCode.NOT_FOUND
    reason = Reason.NOT_FOUND


class AlreadyExists(JukinetError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = Reason.ALREADY_EXISTS


class FailedPrecondition(JukinetError):
    """The request is well formed but the current state does not allow it."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.FAILED_PRECONDITION


class SequenceGap(FailedPrecondition):
    """A delivery skipped ahead: the sender must rewind to ``expected``."""

    reason = Reason.SEQUENCE_GAP

    def __init__(self, origin: str, expected: int, got: int) -> None:
        super().__init__(f"origin {origin}: expected sequence {expected}, got {got}")
        self.origin = origin
        self.expected = expected
        self.got = got

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            *super().metadata(),
            ("jukinet-origin", self.origin),
            ("jukinet-expected-sequence", str(self.expected)),
        )


class PermissionDenied(JukinetError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.PERMISSION_DENIED


class Unauthenticated(JukinetError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class ResourceExhausted(JukinetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.RESOURCE_EXHAUSTED


class Unavailable(JukinetError):
    """A dependency (the next tier, the database) cannot be reached now."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.UNAVAILABLE


class Upstream(JukinetError):
    """The next tier refused or could not be reached; its status is passed on,
    with its machine-readable reason and field."""

    reason = Reason.UPSTREAM

    def __init__(
        self, code: grpc.StatusCode, message: str, details: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self._details = details

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if any(k == "jukinet-reason" for k, _ in self._details):
            return self._details
        return (*super().metadata(), *self._details)


def from_upstream(exc: grpc.aio.AioRpcError, peer: str) -> Upstream:
    """Relay a failed call to ``peer``: its refusals keep their status, reason and
    field; an unreachable peer is UNAVAILABLE (never INTERNAL: the caller should retry)."""
    code = exc.code()
    if code in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ):
        code = grpc.StatusCode.UNAVAILABLE
    details = tuple((k, v) for k, v in error_metadata(exc).items() if k.startswith("jukinet-"))
    return Upstream(code, f"{peer}: {exc.details()}", details)


def error_metadata(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    """The text entries of a failed call's trailing metadata."""
    out: dict[str, str] = {}
    for item in exc.trailing_metadata() or ():
        key, value = cast(tuple[str, str | bytes], item)
        if isinstance(value, str):
            out[key] = value
    return out


class ConfigError(Exception):
    """A node cannot start: one clear line says why."""
