"""The one server interceptor: who is calling, may they, and how errors leave.

:class:`AuthInterceptor` wraps every method handler (all four cardinalities,
async behaviours: a synchronous one is refused, never run) so that, when a
call runs, it

1. reads the verified peer certificate from ``context.auth_context()``,
2. refuses it (UNAUTHENTICATED) if it is missing, revoked, or does not carry
   exactly one valid ``jukinet://`` URI SAN,
3. checks the per-method rule table, deny by default (PERMISSION_DENIED with
   ``jukinet-reason`` in the trailing metadata); the gRPC health service is
   open to any authenticated caller. Nodes build their tables from the rule
   combinators below with :func:`service_rules`, which names every key after
   a method of the service's descriptor,
4. at a node whose operators log in (``sessions``, a :class:`SessionHook`):
   a counter terminal's call carries the ``jukinet-session`` token, but for
   the login itself (UNAUTHENTICATED ``session-required`` without one); the
   hook resolves it to the operator logged in at that terminal and checks
   the operator's roles for the method; the acting identity, and the
   operation log's entry, are then the operator's, and
   :func:`current_terminal` names the terminal. An operator certificate the
   table would admit is refused there (PERMISSION_DENIED ``login-required``),
5. makes the caller's :class:`~jukinet.identity.Identity` available to the
   handler through :func:`current_identity`, and
6. translates what the handler raises: a :class:`~jukinet.errors.JukinetError`
   becomes its status, its ``jukinet-*`` trailers and a ``google.rpc.Status``
   with an ErrorInfo of the same reason; anything else becomes INTERNAL
   "internal error" and is logged on ``jukinet.rpc`` as one line without its text.

Authorization failures are raised as JukinetErrors too, so every status a
caller can see leaves through the same translation code.

The check has to run inside the wrapped behaviour rather than in
``intercept_service`` itself: grpc.aio hands interceptors only the method
name and metadata, the peer certificate is reachable only from the call's
ServicerContext.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import re
import time
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeAlias

import grpc
import grpc.aio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from jukinet.db import describe_error, storage_refusal
from jukinet.errors import (
    InvalidArgument,
    JukinetError,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
)
from jukinet.identity import (
    NATIONAL_ORG,
    Identity,
    Kind,
    is_municipality_code,
    is_prefecture_code,
    parse_identity_uri,
)
from jukinet.reasons import Reason
from jukinet.tls import SESSION_METADATA, certificate_policy_problem
from jukinet.validation import check_list_sizes

Rule: TypeAlias = Callable[[Identity], bool]
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
RevokedSource: TypeAlias = "frozenset[int] | Callable[[], frozenset[int]]"
DenialHook: TypeAlias = Callable[[str, str], None]

HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"

_log = logging.getLogger("jukinet.rpc")

_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "jukinet_identity", default=None
)
_terminal: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "jukinet_terminal", default=None
)
_session_token: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jukinet_session_token", default=None
)
_call_audit: contextvars.ContextVar[_CallAudit | None] = contextvars.ContextVar(
    "jukinet_call_audit", default=None
)

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    # grpc.aio.ServerInterceptor is generic only in the type stubs.
    _ServerInterceptor = grpc.aio.ServerInterceptor


def current_identity() -> Identity:
    """The authenticated caller of the RPC being handled.

    Raises RuntimeError outside a handler reached through AuthInterceptor:
    that is a wiring bug, and guessing an identity would be a security bug.
    """
    identity = _identity.get()
    if identity is None:
        raise RuntimeError("no authenticated caller: not inside an RPC behind AuthInterceptor")
    return identity


def current_terminal() -> Identity | None:
    """The counter terminal the call comes from (its certificate), or None for a node's call."""
    return _terminal.get()


def current_session_token() -> str | None:
    """The session token the call carried, once the node resolved it; None without one."""
    return _session_token.get()


def name_operator(operator: Identity) -> None:
    """Name the operator a call is about in its log entry (a login, before any session)."""
    audit = _call_audit.get()
    if audit is not None:
        audit.identity = operator


class SessionHook(Protocol):
    """How a node resolves the session of a terminal's call.

    :class:`jukinet.operators.OperatorSessions` is the one nodes use.
    """

    def needs_session(self, method: str) -> bool:
        """False for the methods a terminal calls without a session (the login)."""
        ...

    async def resolve(self, token: str, terminal: Identity) -> Identity:
        """The operator of session ``token`` at ``terminal``; raises if there is none."""
        ...

    async def check(self, method: str, operator: Identity) -> None:
        """Raise if no role of ``operator`` allows ``method``."""
        ...


# --- rules ---------------------------------------------------------------------


def allow(*kinds: Kind) -> Rule:
    """Any identity of one of ``kinds``."""
    wanted = frozenset(kinds)
    if not wanted:
        raise ValueError("allow() needs at least one kind")
    return lambda identity: identity.kind in wanted


def authenticated() -> Rule:
    """Any caller with a valid federation certificate."""
    return lambda identity: True


def exactly(*identities: Identity) -> Rule:
    """Exactly these identities."""
    wanted = frozenset(identities)
    return lambda identity: identity in wanted


def municipality_of_prefecture(prefecture: str) -> Rule:
    """A municipal node whose local government code starts with ``prefecture``."""
    if not is_prefecture_code(prefecture):
        raise ValueError(f"not a prefecture code: {prefecture!r}")
    return lambda identity: (
        identity.kind is Kind.MUNICIPALITY and identity.prefecture_code == prefecture
    )


def agency(*codes: str) -> Rule:
    """An agency; with ``codes``, only those agencies."""
    wanted = frozenset(codes)
    return lambda identity: identity.kind is Kind.AGENCY and (not wanted or identity.code in wanted)


def operator_of(org: str) -> Rule:
    """An operator of ``org``: a municipality code, a prefecture code or ``national``."""
    if not (org == NATIONAL_ORG or is_prefecture_code(org) or is_municipality_code(org)):
        raise ValueError(f"not an operator organisation: {org!r}")
    return lambda identity: identity.kind is Kind.OPERATOR and identity.code == org


def operator_in_prefecture(prefecture: str) -> Rule:
    """An operator of ``prefecture`` itself or of any of its municipalities."""
    if not is_prefecture_code(prefecture):
        raise ValueError(f"not a prefecture code: {prefecture!r}")
    return lambda identity: (
        identity.kind is Kind.OPERATOR and identity.prefecture_code == prefecture
    )


def any_of(*rules: Rule) -> Rule:
    """Allowed if any of ``rules`` allows (none given: nobody)."""
    return lambda identity: any(rule(identity) for rule in rules)


def all_of(*rules: Rule) -> Rule:
    """Allowed only if every one of ``rules`` allows (none given: nobody)."""
    if not rules:
        # all() of nothing is True; an empty conjunction must not open a door.
        return lambda identity: False
    return lambda identity: all(rule(identity) for rule in rules)


def method_path(service: ServiceDescriptor, method: str) -> str:
    """The full gRPC name ``/pkg.Service/Method`` of ``method``; ValueError if there is none."""
    if method not in service.methods_by_name:
        raise ValueError(f"{service.full_name} has no method {method!r}")
    return f"/{service.full_name}/{method}"


def service_rules(service: ServiceDescriptor, rules: Mapping[str, Rule]) -> dict[str, Rule]:
    """The rule table of ``service``, keyed by full method name, from rules keyed by method.

    The names are checked against the service's descriptor, so a rule for a
    method the service does not have (a typo, a method renamed in the proto)
    stops the node at start-up instead of silently denying that method forever.
    """
    unknown = sorted(set(rules) - set(service.methods_by_name))
    if unknown:
        raise ValueError(f"rules for methods {service.full_name} does not have: {unknown}")
    return {method_path(service, method): rule for method, rule in rules.items()}


# --- peer certificates -----------------------------------------------------------


@dataclass(frozen=True)
class _Peer:
    serial: int | None
    identity: Identity | None
    problem: str


@functools.lru_cache(maxsize=4096)
def _parse_peer(pem: bytes, ca_pem: bytes | None = None) -> _Peer:
    """Serial and identity of a PEM certificate, parsed once per distinct certificate.

    gRPC does expose URI SANs (``peer_uri``) in the auth context, but it
    flattens them together with other SAN kinds and its exact keys have varied
    across releases; parsing the certificate is the authoritative reading.
    Results are cached (bounded) because every call on a connection carries
    the same certificate bytes. Problems are returned, not raised, so that
    a bad certificate is cached like a good one.

    With ``ca_pem`` the certificate must be signed by that CA itself: the
    handshake accepts a chain through an intermediate (a trust anchor's
    pathLen is not enforced), and the auth context shows only the leaf.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return _Peer(None, None, "peer certificate cannot be parsed")
    if ca_pem is not None and not _directly_issued(cert, ca_pem):
        return _Peer(
            cert.serial_number,
            None,
            "peer certificate is not issued by the federation's root CA itself "
            "(a chain longer than root -> leaf)",
        )
    problem = certificate_policy_problem(cert, usage="client")
    if problem:
        return _Peer(cert.serial_number, None, f"peer {problem}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [
            uri
            for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.lower().startswith("jukinet:")
        ]
    except x509.ExtensionNotFound:
        uris = []
    except ValueError:
        return _Peer(cert.serial_number, None, "peer certificate has a malformed subjectAltName")
    if len(uris) != 1:
        return _Peer(
            cert.serial_number,
            None,
            f"peer certificate has {len(uris)} jukinet URI SANs, expected exactly one",
        )
    try:
        return _Peer(cert.serial_number, parse_identity_uri(uris[0]), "")
    except ValueError as exc:
        return _Peer(cert.serial_number, None, f"peer certificate identity: {exc}")


def _directly_issued(cert: x509.Certificate, ca_pem: bytes) -> bool:
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _first(values: Iterable[bytes] | None) -> bytes | None:
    for value in values or ():
        return bytes(value)
    return None


# --- the audit hook ----------------------------------------------------------------


class AuditHook(Protocol):
    """What logs operator calls (:class:`jukinet.audit.Recorder`)."""

    def extractor(
        self, method: str, identity: Identity | None
    ) -> Callable[[Message], Iterable[str]] | None:
        """How a call's messages name residents, or None if the call is not logged."""
        ...

    async def record(
        self,
        method: str,
        identity: Identity,
        terminal: str,
        codes: Iterable[str],
        status: str,
        reason: str,
    ) -> None:
        """Append the entry of one call."""
        ...


class _CallAudit:
    """The entry of one audited call in the making: the codes its messages named."""

    __slots__ = ("_extract", "_hook", "_method", "codes", "done", "identity", "terminal")

    def __init__(
        self,
        hook: AuditHook,
        method: str,
        identity: Identity,
        extract: Callable[[Message], Iterable[str]],
        terminal: str,
    ) -> None:
        self._hook = hook
        self._method = method
        self.identity = identity
        self._extract = extract
        self.terminal = terminal
        self.codes: list[str] = []
        self.done = False

    def see(self, message: Any) -> None:
        """Note the resident codes of a request or response message."""
        if isinstance(message, Message):
            self.codes.extend(self._extract(message))

    async def finish(self, exc: BaseException | None) -> None:
        """Append the call's entry (once); raises if it cannot be written."""
        if self.done:
            return
        self.done = True
        status = _status_name(exc)
        if isinstance(exc, JukinetError):
            reason = str(exc.reason)
        else:
            reason = "" if exc is None else status.lower().replace("_", "-")
        await self._hook.record(
            self._method, self.identity, self.terminal, self.codes, status, reason
        )

    async def finish_quietly(self, exc: BaseException) -> None:
        """Append the entry of a call that failed; a failure to do so is logged."""
        try:
            await self.finish(exc)
        except Exception as err:
            _log.error(
                "the operation log entry of %s could not be written: %s",
                self._method,
                describe_error(err),
            )


AuditStart: TypeAlias = Callable[[Context], "_CallAudit | None"]


async def _audited_requests(requests: AsyncIterator[Any], audit: _CallAudit) -> AsyncIterator[Any]:
    async for request in requests:
        audit.see(request)
        yield request


def _seen_request(request: Any, audit: _CallAudit | None) -> Any:
    if audit is None:
        return request
    if hasattr(request, "__aiter__"):
        return _audited_requests(request, audit)
    audit.see(request)
    return request


# --- the interceptor ---------------------------------------------------------------


class AuthInterceptor(_ServerInterceptor):
    """Authenticate, authorize and translate errors for every call on a server.

    ``rules`` maps full method names (``/jukinet.v1.PrefectureService/PushNotifications``)
    to a :data:`Rule`; methods without a rule are refused, except the gRPC
    health service, which any authenticated caller may use unless the table
    says otherwise. ``revoked`` is a set of revoked serial numbers or a
    callable returning the current set (e.g. :class:`jukinet.tls.RevocationList`).
    ``on_denied(method, reason)`` is told about every refused call (metrics).
    ``ca`` (the root CA's PEM) makes every caller's certificate have to be
    signed by the root itself; nodes always give it. ``audit`` appends an
    operation log entry for each call it audits, refused ones included.
    """

    def __init__(
        self,
        rules: Mapping[str, Rule],
        *,
        revoked: RevokedSource = frozenset(),
        on_denied: DenialHook | None = None,
        on_finished: FinishHook | None = None,
        ca: bytes | None = None,
        audit: AuditHook | None = None,
        sessions: SessionHook | None = None,
    ) -> None:
        for method in rules:
            # A typo in a method name would silently deny that method forever;
            # catch the commonest one (a missing leading slash) at start-up.
            if re.fullmatch(r"/[A-Za-z0-9_.]+/[A-Za-z0-9_]+", method) is None:
                raise ValueError(
                    f"rule key {method!r} is not a full method name /pkg.Service/Method"
                )
        self._rules = dict(rules)
        self._revoked: Callable[[], frozenset[int]] = (
            revoked if callable(revoked) else (lambda: revoked)
        )
        self._on_denied = on_denied
        self._on_finished = on_finished
        self._ca = ca
        self._audit = audit
        self._sessions = sessions

    async def intercept_service(  # type: ignore[override]  # the stub omits None
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the handler so the checks run when the call does."""
        handler = await continuation(handler_call_details)
        if handler is None:
            # Nobody serves this method: gRPC answers UNIMPLEMENTED, and
            # there is no behaviour to guard.
            return None
        method = handler_call_details.method
        return _wrap_handler(
            handler,
            method,
            functools.partial(self._authorize, method),
            self._on_finished,
            None if self._audit is None else functools.partial(self._start_audit, method),
        )

    def _start_audit(self, method: str, context: Context) -> _CallAudit | None:
        """The entry of a call in the making, if its caller's call is audited.

        The caller is read from its certificate before the rule is checked,
        so that a refused call is logged under the identity it presented.
        """
        assert self._audit is not None
        pem = _first(context.auth_context().get("x509_pem_cert"))
        if pem is None:
            return None
        peer = _parse_peer(pem, self._ca)
        if peer.identity is None or (peer.serial is not None and peer.serial in self._revoked()):
            return None
        extract = self._audit.extractor(method, peer.identity)
        if extract is None:
            return None
        terminal = peer.identity.uri if peer.identity.kind is Kind.TERMINAL else context.peer()
        return _CallAudit(self._audit, method, peer.identity, extract, terminal)

    async def _authorize(self, method: str, context: Context) -> Identity:
        """The caller's identity if it may call ``method``; raises JukinetError if not."""
        try:
            return await self._check(method, context)
        except JukinetError as err:
            if self._on_denied is not None:
                self._on_denied(method, err.reason)
            raise

    async def _acting(self, method: str, identity: Identity, context: Context) -> Identity:
        """Who acts in a terminal's call: the operator of its session (none for the login)."""
        assert self._sessions is not None
        _terminal.set(identity)
        if not self._sessions.needs_session(method):
            return identity
        token = _session_of(context)
        if not token:
            raise Unauthenticated(
                f"{method.rsplit('/', 1)[-1]} needs a session: log in first",
                reason=Reason.SESSION_REQUIRED,
            )
        operator = await self._sessions.resolve(token, identity)
        _session_token.set(token)
        audit = _call_audit.get()
        if audit is not None:
            # From here on the entry is the operator's, a refusal for their roles included.
            audit.identity = operator
        await self._sessions.check(method, operator)
        return operator

    async def _check(self, method: str, context: Context) -> Identity:
        pem = _first(context.auth_context().get("x509_pem_cert"))
        if pem is None:
            # Only reachable on a server port without require_client_auth
            # (or an insecure one): refuse rather than trust the network.
            raise Unauthenticated("no client certificate", reason=Reason.NO_CLIENT_CERTIFICATE)
        peer = _parse_peer(pem, self._ca)
        if peer.serial is not None and peer.serial in self._revoked():
            raise Unauthenticated(
                f"client certificate serial {peer.serial:x} is revoked",
                reason=Reason.REVOKED_CERTIFICATE,
            )
        if peer.identity is None:
            raise Unauthenticated(peer.problem, reason=Reason.BAD_CERTIFICATE)
        identity = peer.identity
        rule = self._rules.get(method)
        if rule is None and method.startswith(HEALTH_SERVICE_PREFIX):
            return identity
        if rule is None:
            raise PermissionDenied(
                f"{identity.uri} may not call {method}: no rule allows it",
                reason=Reason.NO_RULE,
            )
        if self._sessions is not None:
            if identity.kind is Kind.TERMINAL:
                identity = await self._acting(method, identity, context)
            elif identity.kind is Kind.OPERATOR and rule(identity):
                raise PermissionDenied(
                    f"{identity.uri}: operators log in at a counter terminal with their card",
                    reason=Reason.LOGIN_REQUIRED,
                )
        if not rule(identity):
            raise PermissionDenied(
                f"{identity.uri} may not call {method}", reason=Reason.WRONG_IDENTITY
            )
        return identity


# --- handler wrapping ----------------------------------------------------------------

Authorize: TypeAlias = Callable[[Context], Awaitable[Identity]]
FinishHook: TypeAlias = Callable[[str, str, float], None]
"""Told (method, status code name, seconds) when a call ends: RPC metrics."""


def _status_name(exc: BaseException | None) -> str:
    if exc is None:
        return "OK"
    if isinstance(exc, JukinetError):
        return exc.code.name
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    if isinstance(exc, NotImplementedError):
        return "UNIMPLEMENTED"
    refusal = storage_refusal(exc)
    return refusal.code.name if refusal is not None else "INTERNAL"


class _Timer:
    """Measures one call and reports it to the finish hook, if any."""

    __slots__ = ("_hook", "_method", "_start", "failure")

    def __init__(self, hook: FinishHook | None, method: str) -> None:
        self._hook = hook
        self._method = method
        self._start = time.perf_counter()
        self.failure: BaseException | None = None

    def done(self) -> None:
        if self._hook is not None:
            self._hook(self._method, _status_name(self.failure), time.perf_counter() - self._start)


async def _abort(context: Context, err: JukinetError) -> NoReturn:
    """End the call with ``err``: its status, its ``jukinet-*`` trailers and the
    ``google.rpc.Status`` (ErrorInfo, BadRequest, ...) beside them."""
    await context.abort(err.code, err.message, err.trailing_metadata())


async def _translate(exc: BaseException, method: str, context: Context) -> NoReturn:
    """Abort the call with the status ``exc`` stands for; re-raise what is not ours."""
    if isinstance(exc, JukinetError):
        await _abort(context, exc)
    if isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
        # The handler aborted on its own, or the call is being torn down
        # (CancelledError, GeneratorExit, KeyboardInterrupt): not an error to report.
        raise exc
    if isinstance(exc, NotImplementedError):
        # The generated servicer base class raises this for methods a node
        # does not implement; that is UNIMPLEMENTED, not a server fault.
        await _abort(context, Unimplemented("method not implemented"))
    refusal = storage_refusal(exc)
    if refusal is not None:
        # A full disk or a database short of resources met outside
        # Database.write/read (which turn it into the same refusal).
        _log.warning("%s in %s: %s", type(exc).__name__, method, refusal.message)
        await _abort(context, refusal)
    caller = _identity.get()
    # Neither the exception's text nor a traceback's: a database error quotes
    # the row it failed on. Its classes, codes and where it was raised are
    # enough to find the fault. A wiring fault of our own says what it is.
    _log.error(
        "unhandled %s in %s (caller %s) at %s%s",
        describe_error(exc),
        method,
        caller.uri if caller is not None else "unknown",
        _where(exc),
        f": {exc}" if isinstance(exc, SynchronousHandler) else "",
    )
    # The message stays generic: exception text can carry personal data or
    # internals that must not reach another organisation.
    await _abort(context, JukinetError("internal error"))


def _where(exc: BaseException, depth: int = 8) -> str:
    """Where ``exc`` was raised: the innermost frames, as file:line (function)."""
    frames = traceback.extract_tb(exc.__traceback__)[-depth:]
    return " <- ".join(
        f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} ({frame.name})"
        for frame in reversed(frames)
    )


class _Refused:
    """What a request deserializes to when its bytes cannot be accepted.

    The refusal is raised only after the caller is authorized, so a caller
    without a right to call learns nothing about what it sent.
    """

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _guard_deserializer(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """``deserializer``, answering malformed bytes and oversized lists with a _Refused."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            message = deserializer(data)
        except DecodeError:
            # gRPC would answer UNKNOWN and log a traceback for every such call.
            return _Refused(InvalidArgument("request", "malformed protobuf message"))
        if isinstance(message, Message):
            try:
                check_list_sizes(message)
            except InvalidArgument as err:
                return _Refused(err)
        return message

    return parse


def _refuse(refused: _Refused, method: str) -> NoReturn:
    """Raise the refusal of a request, with one quiet log line (no traceback)."""
    caller = _identity.get()
    _log.info(
        "refused a request to %s from %s: %s",
        method,
        caller.uri if caller is not None else "unknown",
        refused.error.message,
    )
    raise refused.error


async def _checked_requests(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    """A request stream that raises the refusal of the first unacceptable message."""
    async for request in requests:
        if isinstance(request, _Refused):
            _refuse(request, method)
        yield request


async def _bind(authorize: Authorize, context: Context) -> contextvars.Token[Identity | None]:
    return _identity.set(await authorize(context))


def _session_of(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_METADATA and isinstance(value, str):
            return value
    return ""


def _unbind(token: contextvars.Token[Identity | None] | None) -> None:
    if token is None:
        return
    # An async generator can be finalised from another context (gRPC closing
    # it from a fresh task), where reset() raises ValueError. Each RPC runs in
    # its own task with its own context copy, so there is nothing to restore.
    with contextlib.suppress(ValueError):
        _identity.reset(token)


class SynchronousHandler(TypeError):
    """A servicer method that is not async: a wiring fault, never run.

    Its message is written here and names only the method, so it is logged.
    """


def _is_async(behavior: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def _never_run(behavior: Callable[..., Any], method: str) -> Callable[..., Awaitable[NoReturn]]:
    """What stands in for a synchronous behaviour: it is refused, never run.

    Every servicer of a node is async. The only synchronous behaviours an
    asyncio server meets are the generated base-class stubs of methods a
    servicer does not implement (UNIMPLEMENTED); anything else is a wiring
    bug, and running it would block the event loop, so it fails as INTERNAL
    (logged by the translation). Either way it runs after the
    authorization check, so a caller the table refuses learns nothing more.
    """
    generated = getattr(behavior, "__module__", "").endswith("_pb2_grpc")

    async def refuse(request: Any, context: Context) -> NoReturn:
        if generated:
            raise NotImplementedError(f"{method} is not implemented")
        raise SynchronousHandler(
            f"the handler of {method} is synchronous; an asyncio server runs none"
        )

    return refuse


def _checked_request(request: Any, method: str) -> Any:
    """The request, refused if it could not be accepted; a stream, checked as it is read."""
    if isinstance(request, _Refused):
        _refuse(request, method)
    if hasattr(request, "__aiter__"):
        return _checked_requests(request, method)
    return request


def _unary_response(
    behavior: Callable[..., Awaitable[Any]],
    method: str,
    authorize: Authorize,
    on_finished: FinishHook | None,
    start_audit: AuditStart | None = None,
) -> Callable[..., Awaitable[Any]]:
    """Guard a coroutine behaviour: one response, or a reader/writer-style stream."""

    async def guarded(request: Any, context: Context) -> Any:
        token = None
        timer = _Timer(on_finished, method)
        audit = None if start_audit is None else start_audit(context)
        try:
            # Seen before the rule is checked: a refused attempt names whom it was about.
            request = _seen_request(request, audit)
            if audit is not None:
                _call_audit.set(audit)
            token = await _bind(authorize, context)
            response = await behavior(_checked_request(request, method), context)
            if audit is not None:
                # Before the answer leaves: a call that cannot be logged fails.
                audit.see(response)
                await audit.finish(None)
            return response
        except BaseException as exc:
            timer.failure = exc
            if audit is not None:
                await audit.finish_quietly(exc)
            await _translate(exc, method, context)
        finally:
            _unbind(token)
            timer.done()

    return guarded


def _stream_response(
    behavior: Callable[..., Any],
    method: str,
    authorize: Authorize,
    on_finished: FinishHook | None,
    start_audit: AuditStart | None = None,
) -> Callable[..., Any]:
    """Guard a behaviour with a response stream."""
    if not inspect.isasyncgenfunction(behavior):
        # A reader/writer-style handler (context.write) returns nothing;
        # keep it a coroutine so gRPC drives it the same way.
        return _unary_response(behavior, method, authorize, on_finished, start_audit)

    async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
        token = None
        responses: AsyncGenerator[Any, None] | None = None
        timer = _Timer(on_finished, method)
        audit = None if start_audit is None else start_audit(context)
        try:
            request = _seen_request(request, audit)
            if audit is not None:
                _call_audit.set(audit)
            token = await _bind(authorize, context)
            responses = behavior(_checked_request(request, method), context)
            async for response in responses:
                if audit is not None:
                    audit.see(response)
                yield response
            if audit is not None:
                await audit.finish(None)
        except BaseException as exc:
            timer.failure = exc
            if audit is not None:
                await audit.finish_quietly(exc)
            await _translate(exc, method, context)
        finally:
            timer.done()
            # Close the handler's generator here, in this call, so its own
            # cleanup (finally blocks, transactions) runs now and not at GC.
            if responses is not None:
                await responses.aclose()
            _unbind(token)

    return guarded


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    authorize: Authorize,
    on_finished: FinishHook | None = None,
    start_audit: AuditStart | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler, with every cardinality's behaviour guarded."""
    kwargs: dict[str, Any] = {
        "request_deserializer": _guard_deserializer(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }

    def behaviour(given: Callable[..., Any]) -> Callable[..., Any]:
        return given if _is_async(given) else _never_run(given, method)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary_response(
                behaviour(handler.unary_unary), method, authorize, on_finished, start_audit
            ),
            **kwargs,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary_response(
                behaviour(handler.stream_unary), method, authorize, on_finished, start_audit
            ),
            **kwargs,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream_response(
                behaviour(handler.unary_stream), method, authorize, on_finished, start_audit
            ),
            **kwargs,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream_response(
                behaviour(handler.stream_stream), method, authorize, on_finished, start_audit
            ),
            **kwargs,
        )
    # A handler with no behaviour cannot be served; refuse to pass it through
    # unguarded rather than guess.
    raise ValueError(f"method handler for {method} has no behaviour")
