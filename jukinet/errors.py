"""Typed domain errors and their one translation into gRPC statuses.

Domain code raises these; the server's error interceptor aborts the call with
:meth:`JukinetError.trailing_metadata`, which carries the reason twice, in the
two forms the ecosystem reads:

- ``jukinet-*`` text trailers: ``jukinet-reason`` always, ``jukinet-field``
  for bad input, ``jukinet-origin`` and ``jukinet-expected-sequence`` for a
  sequence gap;
- a ``google.rpc.Status`` in ``grpc-status-details-bin`` (``grpcio-status``)
  whose details hold a ``google.rpc.ErrorInfo`` (reason from
  :class:`~jukinet.reasons.Reason`, domain :data:`~jukinet.reasons.DOMAIN`,
  metadata such as the expected sequence), a ``google.rpc.BadRequest`` for
  bad input and a ``google.rpc.RetryInfo`` when the caller should wait.

The ErrorInfo reason always equals the ``jukinet-reason`` trailer. Anything
that is not a JukinetError becomes INTERNAL with a generic message and is
logged on the server as one line without its text (:func:`jukinet.db.describe_error`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from jukinet.reasons import DOMAIN, Reason

_log = logging.getLogger("jukinet.upstream")

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailer that carries the serialized ``google.rpc.Status``."""

# Keys of ErrorInfo metadata (lowerCamelCase, as google.rpc.ErrorInfo advises).
INFO_FIELD = "field"
INFO_ORIGIN = "origin"
INFO_EXPECTED_SEQUENCE = "expectedSequence"
INFO_RECEIVED_SEQUENCE = "receivedSequence"
INFO_SEQUENCE = "sequence"
INFO_RETRY_AFTER_MS = "retryAfterMs"
INFO_PEER = "peer"

MAX_MESSAGE_LENGTH = 512
"""The most characters of an error's message that leave a node: a status
echoing what a caller sent (a list of 200,000 names) must stay small."""


def _bounded(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """``text`` cut to ``limit`` characters, marked as cut when it was."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


Trailers = tuple[tuple[str, str | bytes], ...]
"""Trailing metadata of a refused call: text entries and the binary status."""


def _pack(messages: Sequence[Message]) -> list[any_pb2.Any]:
    packed = []
    for message in messages:
        holder = any_pb2.Any()
        holder.Pack(message)
        packed.append(holder)
    return packed


class JukinetError(Exception):
    """Base of every error a node reports to its caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata that carries the machine-readable reason."""
        return (("jukinet-reason", str(self.reason)),)

    def info(self) -> Mapping[str, str]:
        """The metadata of this error's ``google.rpc.ErrorInfo`` (none by default)."""
        return {}

    def extra_details(self) -> list[Message]:
        """Typed details beside the ErrorInfo (BadRequest, RetryInfo, ...)."""
        return []

    def status_details(self) -> list[any_pb2.Any]:
        """The details of this error's ``google.rpc.Status``, ErrorInfo first."""
        error_info = error_details_pb2.ErrorInfo(
            reason=str(self.reason), domain=DOMAIN, metadata=dict(self.info())
        )
        return _pack([error_info, *self.extra_details()])

    def rich_status(self) -> grpc.Status:
        """This error as a ``grpc.Status`` whose trailer holds the ``google.rpc.Status``."""
        return rpc_status.to_status(
            status_pb2.Status(
                code=self.code.value[0], message=self.message, details=self.status_details()
            )
        )

    def trailing_metadata(self) -> Trailers:
        """Everything the call ends with: the ``jukinet-*`` trailers and the rich status."""
        status = self.rich_status()
        return (*self.metadata(), *status.trailing_metadata)


class InvalidArgument(JukinetError):
    """Bad input: names the field and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        field, problem = _bounded(field, 200), _bounded(problem)
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The reason and the field, as text trailers."""
        return (*super().metadata(), ("jukinet-field", self.field))

    def info(self) -> Mapping[str, str]:
        """The field, so that a caller can point at it without parsing the message."""
        return {INFO_FIELD: self.field}

    def extra_details(self) -> list[Message]:
        """The one field violation, as ``google.rpc.BadRequest``."""
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.field, description=self.problem
        )
        return [error_details_pb2.BadRequest(field_violations=[violation])]


class NotFound(JukinetError):
    """The resident or record asked for is not held here."""

    code = grpc.StatusCode.NOT_FOUND
    reason = Reason.NOT_FOUND


class AlreadyExists(JukinetError):
    """What the request would create is there already (a resident registered twice)."""

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
        """The reason, the origin and the expected sequence, as text trailers."""
        return (
            *super().metadata(),
            ("jukinet-origin", self.origin),
            ("jukinet-expected-sequence", str(self.expected)),
        )

    def info(self) -> Mapping[str, str]:
        """Where the sender must resume: the origin and the sequence expected next."""
        return {
            INFO_ORIGIN: self.origin,
            INFO_EXPECTED_SEQUENCE: str(self.expected),
            INFO_RECEIVED_SEQUENCE: str(self.got),
        }


class Unappliable(FailedPrecondition):
    """An entry this tier cannot apply although it is valid: the store refused it
    for a reason of its own. Nothing of its batch is stored; the sender backs off
    and retries, and delivery resumes once an operator removed the obstacle."""

    reason = Reason.NOTIFICATION_UNAPPLIABLE

    def __init__(self, origin: str, sequence: int) -> None:
        super().__init__(
            f"origin {origin}: notification {sequence} cannot be applied here now; "
            "the operator of this node is alerted"
        )
        self.origin = origin
        self.sequence = sequence

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The reason and the origin, as text trailers."""
        return (*super().metadata(), ("jukinet-origin", self.origin))

    def info(self) -> Mapping[str, str]:
        """Which entry is stuck: its origin and sequence."""
        return {INFO_ORIGIN: self.origin, INFO_SEQUENCE: str(self.sequence)}


class PermissionDenied(JukinetError):
    """The caller is known, but may not call this method or act on this object."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.PERMISSION_DENIED


class Unauthenticated(JukinetError):
    """The caller's certificate is missing, revoked, or names no identity."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class ResourceExhausted(JukinetError):
    """A limit was reached; with ``retry_after_ms`` set, the caller may retry then."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.RESOURCE_EXHAUSTED
    retry_after_ms: int | None = None

    def info(self) -> Mapping[str, str]:
        """The wait, when there is one."""
        if self.retry_after_ms is None:
            return {}
        return {INFO_RETRY_AFTER_MS: str(self.retry_after_ms)}

    def extra_details(self) -> list[Message]:
        """The wait as ``google.rpc.RetryInfo``, when there is one."""
        if self.retry_after_ms is None:
            return []
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(self.retry_after_ms)
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


class StorageFull(ResourceExhausted):
    """The node's database (its disk, its quota) has no room: nothing was stored,
    and the same call succeeds once space is freed."""

    reason = Reason.STORAGE_FULL
    retry_after_ms = 10_000

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "the node's database storage is full: nothing was stored; retry once space is freed"
        )


class Unavailable(JukinetError):
    """A dependency (the next tier, the database) cannot be reached now."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.UNAVAILABLE


class Unimplemented(JukinetError):
    """This node does not serve the method (the generated base class answered)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = Reason.UNIMPLEMENTED


class Upstream(JukinetError):
    """The next tier refused or could not be reached; its status is passed on,
    with its machine-readable reason, its text trailers and its typed details."""

    reason = Reason.UPSTREAM

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: tuple[tuple[str, str], ...] = (),
        status_details: Sequence[any_pb2.Any] = (),
        *,
        peer: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.peer = peer
        self._details = details
        self._status_details = list(status_details)
        upstream_info = _first_error_info(self._status_details)
        trailer = dict(details).get("jukinet-reason")
        # The reason the caller sees: the upstream's own, in whichever form it
        # came; "upstream" only when it gave none.
        self.wire_reason = (
            trailer or (upstream_info.reason if upstream_info else "") or str(Reason.UPSTREAM)
        )
        if self.wire_reason in Reason.__members__.values():
            self.reason = Reason(self.wire_reason)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The upstream's ``jukinet-*`` trailers, with its reason (or ``upstream``)."""
        rest = tuple((k, v) for k, v in self._details if k != "jukinet-reason")
        return (("jukinet-reason", self.wire_reason), *rest)

    def status_details(self) -> list[any_pb2.Any]:
        """The upstream's typed details as they came, with an ErrorInfo if it sent none."""
        if _first_error_info(self._status_details) is not None:
            return list(self._status_details)
        error_info = error_details_pb2.ErrorInfo(
            reason=self.wire_reason, domain=DOMAIN, metadata={INFO_PEER: self.peer}
        )
        return [*_pack([error_info]), *self._status_details]


_NEUTRAL = {
    grpc.StatusCode.UNAVAILABLE: "unavailable now; try again later",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the call was too large or too many",
    grpc.StatusCode.UNAUTHENTICATED: "the connection was refused",
}


def from_upstream(exc: grpc.aio.AioRpcError, peer: str) -> Upstream:
    """Relay a failed call to ``peer``: its refusals keep their status, reason,
    field and typed details; an unreachable peer is UNAVAILABLE (never INTERNAL:
    the caller should retry) with a neutral message, the transport's own text
    (addresses, socket errors) only in this server's log."""
    code = exc.code()
    if code in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ):
        code = grpc.StatusCode.UNAVAILABLE
    details = tuple((k, v) for k, v in error_metadata(exc).items() if k.startswith("jukinet-"))
    status = rich_status(exc)
    if details or status is not None:
        # The peer's own answer: its message is written for the caller.
        message = f"{peer}: {exc.details()}"
    else:
        # Made by the gRPC client (no connection, a reset, a deadline): its text
        # names the peer's address and the transport's fault, which are no
        # business of the caller's. They go to this server's log only.
        _log.warning("%s failed: %s %s", peer, exc.code().name, exc.details())
        message = f"{peer}: {_NEUTRAL.get(code, 'the call failed')}"
    return Upstream(
        code,
        message,
        details,
        list(status.details) if status is not None else [],
        peer=peer,
    )


def error_metadata(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    """The text entries of a failed call's trailing metadata."""
    out: dict[str, str] = {}
    for item in exc.trailing_metadata() or ():
        key, value = cast(tuple[str, str | bytes], item)
        if isinstance(value, str):
            out[key] = value
    return out


def rich_status(exc: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a failed call carries, if any (and consistent with it)."""
    try:
        # AioRpcError has the three methods from_call reads (code, details,
        # trailing_metadata) but is no grpc.Call in the stubs.
        found = rpc_status.from_call(cast(grpc.Call, exc))
    except (ValueError, DecodeError):
        # A status whose code or message contradicts the call's, or bytes
        # that are no Status: not something to act on.
        return None
    return found if isinstance(found, status_pb2.Status) else None


def _first_error_info(details: Sequence[any_pb2.Any]) -> error_details_pb2.ErrorInfo | None:
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        # Unpack is False (and leaves info alone) when the detail is another type.
        if detail.Unpack(info):
            return info
    return None


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``google.rpc.ErrorInfo`` of a failed call, if it carries one."""
    status = rich_status(exc)
    return None if status is None else _first_error_info(status.details)


class ConfigError(Exception):
    """A node cannot start: one clear line says why."""


class BeforeRegistration(InvalidArgument):
    """A date that precedes the resident's current registration: names the field."""

    reason = Reason.BEFORE_REGISTRATION
