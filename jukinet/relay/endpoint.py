"""A municipality's two ends of a relayed request.

- :class:`RelayClient` (municipality A) seals a request to B's node key (from the
  directory), signs it with A's, hands it to A's prefecture, and opens and
  verifies B's answer: the inner answer's bytes, or :class:`RelayRefused` with
  B's reason.
- :class:`RelayEndpoint` (municipality B) takes an envelope from its own
  prefecture addressed to itself, opens it, checks A's signature and
  certificate, runs the handler registered for its kind
  (:class:`RelayHandlers`) and seals the answer to A's certificate. The answer
  is stored by request id (``relay_answers``) in the transaction of its log
  entry: the same request again gets the answer already given and the
  handler does not run twice. A handler's effect and that row are two
  transactions, so a handler must itself be idempotent for the same inner
  request (a crash between them runs it again).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError, Message
from sqlalchemy.exc import IntegrityError

from jukinet.clock import Clock
from jukinet.codes import check_local_government_code
from jukinet.db import Database
from jukinet.errors import FailedPrecondition, JukinetError, Unavailable
from jukinet.identity import Identity
from jukinet.reasons import Reason
from jukinet.relay import header as headers
from jukinet.relay.header import Header
from jukinet.relay.node import DirectoryKeeper, NodeKeys, RelayRecorder, upstream_error
from jukinet.relay.route import municipal_accept
from jukinet.relay.seal import (
    Direction,
    SealInvalid,
    check_signer,
    open_sealed,
    seal,
    sign_body,
    verify_body,
)
from jukinet.relay.store import AnswerStore, GivenAnswer
from jukinet.v1 import relay_pb2, relay_pb2_grpc

log = logging.getLogger("jukinet.relay")

SEND_TIMEOUT = 30.0
"""Seconds municipality A waits for B's answer through the hops."""

# Not refusals but a node's passing trouble: the caller retries, nothing is stored.
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL}
)

Handler = Callable[[Header, bytes], Awaitable[Message]]
"""A relayed request's handler at B: (the verified header: source, request id,
sending time; the inner request bytes) -> the inner answer; a
:class:`~jukinet.errors.JukinetError` raised becomes a refusal answer with its
reason (an unavailable or internal one fails the call instead)."""


class RelayRefused(JukinetError):
    """Municipality B answered with a refusal: its reason and message."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, reason: str, message: str) -> None:
        known = reason in Reason.__members__.values()
        super().__init__(message, reason=Reason(reason) if known else Reason.UPSTREAM)
        self.wire_reason = reason

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """B's reason as it came."""
        return (("jukinet-reason", self.wire_reason),)


class RelayRequestConflict(FailedPrecondition):
    """A request id seen before with another source, kind or body."""

    reason = Reason.RELAY_REQUEST_CONFLICT


class RelayHandlers:
    """The handler of each kind of relayed request a municipality answers."""

    def __init__(self) -> None:
        self._handlers: dict[int, Handler] = {}

    def register(
        self, kind: relay_pb2.RelayKind.ValueType, handler: Handler, *, replace: bool = False
    ) -> None:
        """Answer requests of ``kind`` with ``handler`` (one handler a kind; ``replace``:
        in the place of the one registered, as a test's stand-in)."""
        if kind not in headers.KIND_LABELS:
            raise ValueError(f"{kind} is not a relayed kind")
        if kind in self._handlers and not replace:
            raise ValueError(f"kind {headers.KIND_LABELS[kind]} has a handler already")
        self._handlers[kind] = handler

    def withdraw(self, kind: relay_pb2.RelayKind.ValueType) -> None:
        """Answer ``kind`` no more (a node of an older release that does not know it)."""
        self._handlers.pop(kind, None)

    def get(self, kind: int) -> Handler | None:
        """The handler of ``kind``, if registered."""
        return self._handlers.get(kind)


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


class RelayEndpoint:
    """``Relay`` at municipality B (see the module)."""

    def __init__(
        self,
        *,
        municipality: str,
        keys: NodeKeys,
        handlers: RelayHandlers,
        answers: AnswerStore,
        db: Database,
        recorder: RelayRecorder,
        clock: Clock,
    ) -> None:
        self.municipality = municipality
        self.keys = keys
        self.handlers = handlers
        self.answers = answers
        self.db = db
        self.recorder = recorder
        self.clock = clock

    async def relay(
        self, caller: Identity, request: relay_pb2.RelayRequest
    ) -> relay_pb2.RelayResponse:
        """Open, check, answer (once per request id) and seal the answer to the source."""
        header: Header | None = None
        try:
            now = self.clock.now()
            header = headers.parse(request.header, now)
            municipal_accept(self.municipality, caller, header)
            source = Identity.municipality(header.source)
            signed = open_sealed(
                Direction.REQUEST, header.raw, request.sealed, self.keys.key, self.keys.certificate
            )
            source_cert = verify_body(
                Direction.REQUEST, header.raw, signed, source, self.keys.trust, now
            )
            answer = await self._answer(caller, header, signed.body)
        except JukinetError as exc:
            await self.recorder.record(self.recorder.operation(caller, header, exc))
            raise
        body = sign_body(Direction.ANSWER, header.raw, answer, self.keys.key, self.keys.certificate)
        return relay_pb2.RelayResponse(
            header=request.header, sealed=seal(Direction.ANSWER, header.raw, body, source_cert)
        )

    async def _answer(self, caller: Identity, header: Header, body: bytes) -> bytes:
        """The answer to this request: the one given before, or the handler's, stored."""
        digest = _digest(body)
        async with self.db.read() as conn:
            given = await self.answers.given(conn, header.request_id)
        if given is not None:
            return self._again(header, digest, given)
        handler = self.handlers.get(header.kind)
        answer = relay_pb2.RelayAnswer()
        if handler is None:
            answer.refusal_reason = str(Reason.UNIMPLEMENTED)
            answer.refusal_message = f"{self.municipality} answers no {header.kind_label} requests"
        else:
            try:
                answer.body = (await handler(header, body)).SerializeToString()
            except JukinetError as exc:
                if exc.code in _TRANSIENT:
                    raise
                answer.refusal_reason = str(exc.reason)
                answer.refusal_message = exc.message
        raw = answer.SerializeToString()
        stored = GivenAnswer(header.source, header.kind, digest, raw)
        operation = self.recorder.operation(caller, header, None, refusal=answer.refusal_reason)
        try:
            async with self.db.write() as conn:
                await self.answers.give(conn, header.request_id, stored, self.clock.now())
                await self.recorder.record(operation, conn)
        except IntegrityError:
            # The same request answered meanwhile (a retry overtook this call).
            async with self.db.read() as conn:
                given = await self.answers.given(conn, header.request_id)
            if given is None:
                raise
            return self._again(header, digest, given)
        return raw

    def _again(self, header: Header, digest: bytes, given: GivenAnswer) -> bytes:
        if (given.source, given.kind, given.body_sha256) != (header.source, header.kind, digest):
            raise RelayRequestConflict(
                f"request {header.request_id} was answered before for another request"
            )
        return given.answer


class RelayClient:
    """Sends relayed requests from this municipality (see the module)."""

    def __init__(
        self,
        *,
        municipality: str,
        keys: NodeKeys,
        directory: DirectoryKeeper,
        recorder: RelayRecorder,
        clock: Clock,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.municipality = municipality
        self.identity = Identity.municipality(municipality)
        self.keys = keys
        self.directory = directory
        self.prefecture: relay_pb2_grpc.RelayServiceAsyncStub | None = None
        """The prefecture's RelayService, set once the node's channel to it is open."""
        self.recorder = recorder
        self.clock = clock
        self.timeout = timeout

    async def send(
        self,
        destination: str,
        kind: relay_pb2.RelayKind.ValueType,
        body: Message,
        *,
        request_id: str | None = None,
    ) -> bytes:
        """Send ``body`` to municipality ``destination``; the inner answer's bytes.

        ``request_id`` (default: a new one) is what makes a retry the same request:
        the destination answers it once. Raises :class:`RelayRefused` when the
        destination refused, and the hops' errors otherwise.
        """
        check_local_government_code(destination, "destination")
        request_id = request_id or headers.new_request_id()
        header: Header | None = None
        error: JukinetError | None = None
        refusal = ""
        try:
            target = Identity.municipality(destination)
            entry = await self.directory.entry(target)
            now = self.clock.now()
            recipient = check_signer(entry.certificate, target, self.keys.trust, now)
            raw = headers.build(
                request_id=request_id,
                kind=kind,
                source=self.municipality,
                destination=destination,
                sent_at=now,
            )
            header = headers.parse(raw, now)
            signed = sign_body(
                Direction.REQUEST,
                raw,
                body.SerializeToString(),
                self.keys.key,
                self.keys.certificate,
            )
            request = relay_pb2.RelayRequest(
                header=raw, sealed=seal(Direction.REQUEST, raw, signed, recipient)
            )
            if self.prefecture is None:
                raise Unavailable("the node is not started: no channel to its prefecture")
            try:
                response = await self.prefecture.Relay(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise upstream_error(exc, Identity.prefecture(self.municipality[:2])) from None
            answer = self._open(raw, response, target)
            if answer.refusal_reason:
                refusal = answer.refusal_reason
                raise RelayRefused(answer.refusal_reason, answer.refusal_message)
            return answer.body
        except RelayRefused:
            raise
        except JukinetError as exc:
            error = exc
            raise
        finally:
            await self.recorder.record(
                self.recorder.operation(self.identity, header, error, refusal=refusal)
            )

    def _open(
        self, raw: bytes, response: relay_pb2.RelayResponse, target: Identity
    ) -> relay_pb2.RelayAnswer:
        if response.header != raw:
            raise SealInvalid("the answer is for another envelope")
        signed = open_sealed(
            Direction.ANSWER, raw, response.sealed, self.keys.key, self.keys.certificate
        )
        verify_body(Direction.ANSWER, raw, signed, target, self.keys.trust, self.clock.now())
        try:
            return relay_pb2.RelayAnswer.FromString(signed.body)
        except DecodeError:
            raise SealInvalid("the answer inside the seal cannot be read") from None


__all__ = [
    "Handler",
    "RelayClient",
    "RelayEndpoint",
    "RelayHandlers",
    "RelayRefused",
    "RelayRequestConflict",
]
