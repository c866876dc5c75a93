"""Every refusal carries a ``google.rpc.Status`` whose ErrorInfo reason equals the
``jukinet-reason`` trailer, over real mutual TLS.

Two kinds of server answer here: the real nodes of a federation, refusing real
requests for every reason a node can be brought to give from outside; and a
small server behind the real interceptor that raises, on request, the error of
any reason in the catalogue (among them those no well-behaved caller can
provoke: internal faults, a missing client certificate, a method without a
rule). Together they cover the whole catalogue, and a new reason fails the
test until it is added to the table of the second server.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from gateway.quotas import QuotaExceeded
from jukinet.client import tls_files
from jukinet.codes import new_resident_code
from jukinet.errors import (
    INFO_EXPECTED_SEQUENCE,
    INFO_FIELD,
    INFO_ORIGIN,
    INFO_PEER,
    INFO_RETRY_AFTER_MS,
    INFO_SEQUENCE,
    AlreadyExists,
    BeforeRegistration,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SequenceGap,
    Unappliable,
    Unauthenticated,
    Unavailable,
    Upstream,
    error_info,
    error_metadata,
    rich_status,
)
from jukinet.identity import Identity
from jukinet.interceptors import AuthInterceptor
from jukinet.login import PasswordReused, WeakPassword
from jukinet.movecert import CertificateMissing, CertificateRefused
from jukinet.purposes import Operation, PurposeDenied
from jukinet.reasons import DOMAIN, Reason
from jukinet.relay.directory import DirectoryExpired, DirectoryInvalid
from jukinet.relay.endpoint import RelayRequestConflict
from jukinet.relay.node import UnknownDestination
from jukinet.relay.route import WrongHop
from jukinet.relay.seal import SealInvalid
from jukinet.tls import secure_channel, server_credentials
from jukinet.v1 import (
    common_pb2,
    delivery_pb2,
    gateway_pb2,
    municipal_pb2,
    municipal_pb2_grpc,
    prefecture_pb2_grpc,
)
from tests.federation import Federation
from tests.integration.test_bad_input import batch, notification, pool_code

TIMEOUT = 15
# grpc.aio.EOF is missing from the type stubs.
EOF: Any = cast(Any, grpc.aio).EOF
G = gateway_pb2
M = municipal_pb2

TOTTORI = "312011"
YONAGO = "312029"
EFFECTIVE = "2025-04-01"
NENKIN = "nenkin"
EXISTENCE = "NENKIN-EXISTENCE-CHECK"  # nenkin: verify, verify_batch
ADDRESS_CHANGE = "NENKIN-ADDRESS-CHANGE"  # nenkin: verify, retrieve; address only
PASSPORT = "MOFA-PASSPORT-ISSUE"  # mofa-passport only


def unpack(detail: any_pb2.Any, message: Any) -> Any:
    assert detail.Unpack(message), detail.type_url
    return message


def checked(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The refusal's ErrorInfo, after checking it agrees with the trailers."""
    meta = error_metadata(exc)
    status = rich_status(exc)
    assert status is not None, f"no google.rpc.Status in {exc.code().name}: {exc.details()}"
    assert (status.code, status.message) == (exc.code().value[0], exc.details())
    info = error_info(exc)
    assert info is not None, status
    assert info.domain == DOMAIN
    assert info.reason == meta["jukinet-reason"], (info, meta)
    assert info.reason in set(Reason), info.reason
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        (bad_request,) = [
            unpack(d, error_details_pb2.BadRequest())
            for d in status.details
            if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)  # type: ignore[arg-type]
        ]
        (violation,) = bad_request.field_violations
        assert violation.field == meta["jukinet-field"] == info.metadata[INFO_FIELD]
        assert violation.description and violation.description in (exc.details() or "")
    return info


async def refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# --- the catalogue through the real interceptor -------------------------------------

SERVICE = "jukinet.test.Refusals"
REFUSE = f"/{SERVICE}/Refuse"
REFUSE_STREAM = f"/{SERVICE}/RefuseStream"
FORBIDDEN = f"/{SERVICE}/Forbidden"
UNRULED = f"/{SERVICE}/Unruled"


def _purpose_denied(reason: Reason) -> Callable[[], BaseException]:
    return lambda: PurposeDenied(
        reason,
        f"refused: {reason}",
        agency_code=NENKIN,
        purpose_code=EXISTENCE,
        operation=Operation.VERIFY,
    )


# What a handler raises for each reason, and the status code the caller sees.
RAISED: dict[Reason, tuple[Callable[[], BaseException], grpc.StatusCode]] = {
    Reason.INTERNAL: (
        lambda: RuntimeError("resident 123456789012"),
        grpc.StatusCode.INTERNAL,
    ),
    Reason.UNIMPLEMENTED: (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
    Reason.INVALID_ARGUMENT: (
        lambda: InvalidArgument("items[3].claim.birth_date", "not a date"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Reason.NOT_FOUND: (
        lambda: NotFound("該当する住民票はありません (no such resident)"),
        grpc.StatusCode.NOT_FOUND,
    ),
    Reason.ALREADY_EXISTS: (lambda: AlreadyExists("exists"), grpc.StatusCode.ALREADY_EXISTS),
    Reason.FAILED_PRECONDITION: (
        lambda: FailedPrecondition("not now"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.PERMISSION_DENIED: (
        lambda: PermissionDenied("no"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.UNAUTHENTICATED: (
        lambda: Unauthenticated("who?"),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.RESOURCE_EXHAUSTED: (
        lambda: ResourceExhausted("full"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    Reason.UNAVAILABLE: (lambda: Unavailable("database down"), grpc.StatusCode.UNAVAILABLE),
    # The driver's own error, as a handler meets it: the interceptor maps it
    # like Database.write does (a real full disk: tests/integration/test_storage_full.py).
    Reason.STORAGE_FULL: (
        lambda: sqlite3.OperationalError("database or disk is full"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    Reason.UPSTREAM: (
        lambda: Upstream(
            grpc.StatusCode.UNAVAILABLE, "national node: connection refused", peer="national node"
        ),
        grpc.StatusCode.UNAVAILABLE,
    ),
    Reason.NO_CLIENT_CERTIFICATE: (
        lambda: Unauthenticated("no client certificate", reason=Reason.NO_CLIENT_CERTIFICATE),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.BAD_CERTIFICATE: (
        lambda: Unauthenticated("two URI SANs", reason=Reason.BAD_CERTIFICATE),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.REVOKED_CERTIFICATE: (
        lambda: Unauthenticated("revoked", reason=Reason.REVOKED_CERTIFICATE),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.WRONG_IDENTITY: (
        lambda: PermissionDenied("not you", reason=Reason.WRONG_IDENTITY),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.NO_RULE: (
        lambda: PermissionDenied("no rule", reason=Reason.NO_RULE),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.SEQUENCE_GAP: (
        lambda: SequenceGap(TOTTORI, 4, 9),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.FOREIGN_ORIGIN: (
        lambda: PermissionDenied("not yours", reason=Reason.FOREIGN_ORIGIN),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.NOT_HELD: (
        lambda: PermissionDenied("not held", reason=Reason.NOT_HELD),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.NOTIFICATION_UNAPPLIABLE: (
        lambda: Unappliable(TOTTORI, 7),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.NOTIFICATION_CONFLICT: (
        lambda: FailedPrecondition("conflict", reason=Reason.NOTIFICATION_CONFLICT),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.ALREADY_REGISTERED: (
        lambda: AlreadyExists("registered", reason=Reason.ALREADY_REGISTERED),
        grpc.StatusCode.ALREADY_EXISTS,
    ),
    Reason.NOT_REGISTERED: (
        lambda: FailedPrecondition("gone", reason=Reason.NOT_REGISTERED),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.NOT_MOVED_OUT: (
        lambda: FailedPrecondition("still here", reason=Reason.NOT_MOVED_OUT),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.BEFORE_REGISTRATION: (
        lambda: BeforeRegistration("effective_date", "before the registration began"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Reason.MOVE_OUT_CERTIFICATE_MISSING: (
        CertificateMissing,
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Reason.MOVE_OUT_CERTIFICATE_INVALID: (
        lambda: CertificateRefused(Reason.MOVE_OUT_CERTIFICATE_INVALID, "refused"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.MOVE_OUT_CERTIFICATE_FOREIGN: (
        lambda: CertificateRefused(Reason.MOVE_OUT_CERTIFICATE_FOREIGN, "refused"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.MOVE_OUT_CERTIFICATE_REPLAYED: (
        lambda: CertificateRefused(Reason.MOVE_OUT_CERTIFICATE_REPLAYED, "refused"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.MOVE_OUT_CERTIFICATE_NOT_HELD: (
        lambda: CertificateRefused(Reason.MOVE_OUT_CERTIFICATE_NOT_HELD, "refused"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.MOVE_OUT_CERTIFICATE_MISMATCH: (
        lambda: CertificateRefused(Reason.MOVE_OUT_CERTIFICATE_MISMATCH, "refused"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.UNKNOWN_PURPOSE: (
        _purpose_denied(Reason.UNKNOWN_PURPOSE),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.AGENCY_NOT_ALLOWED: (
        _purpose_denied(Reason.AGENCY_NOT_ALLOWED),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.OPERATION_NOT_ALLOWED: (
        _purpose_denied(Reason.OPERATION_NOT_ALLOWED),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.FIELD_NOT_ALLOWED: (
        _purpose_denied(Reason.FIELD_NOT_ALLOWED),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.UNKNOWN_AGENCY: (
        lambda: PermissionDenied("not an agency", reason=Reason.UNKNOWN_AGENCY),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.QUOTA_EXCEEDED: (
        lambda: QuotaExceeded(NENKIN, EXISTENCE, 1.5),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    Reason.CARD_INVALID: (
        lambda: Unauthenticated("refused", reason=Reason.CARD_INVALID),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.CARD_REVOKED: (
        lambda: Unauthenticated("refused", reason=Reason.CARD_REVOKED),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.CARD_LAPSED: (
        lambda: Unauthenticated("refused", reason=Reason.CARD_LAPSED),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.CARD_HELD: (
        lambda: FailedPrecondition("refused", reason=Reason.CARD_HELD),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.CONTINUATION_TOO_LATE: (
        lambda: FailedPrecondition("refused", reason=Reason.CONTINUATION_TOO_LATE),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.FOREIGN_CARD: (
        lambda: PermissionDenied("refused", reason=Reason.FOREIGN_CARD),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.FOREIGN_TERMINAL: (
        lambda: PermissionDenied("refused", reason=Reason.FOREIGN_TERMINAL),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.CHALLENGE_INVALID: (
        lambda: Unauthenticated("refused", reason=Reason.CHALLENGE_INVALID),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.WRONG_PASSWORD: (
        lambda: Unauthenticated("refused", reason=Reason.WRONG_PASSWORD),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.LOCKED_OUT: (
        lambda: PermissionDenied("refused", reason=Reason.LOCKED_OUT),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.PASSWORD_EXPIRED: (
        lambda: FailedPrecondition("refused", reason=Reason.PASSWORD_EXPIRED),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.SESSION_INVALID: (
        lambda: Unauthenticated("refused", reason=Reason.SESSION_INVALID),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.SESSION_EXPIRED: (
        lambda: Unauthenticated("refused", reason=Reason.SESSION_EXPIRED),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.WRONG_TERMINAL: (
        lambda: PermissionDenied("refused", reason=Reason.WRONG_TERMINAL),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.SESSION_REQUIRED: (
        lambda: Unauthenticated("refused", reason=Reason.SESSION_REQUIRED),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.LOGIN_REQUIRED: (
        lambda: PermissionDenied("refused", reason=Reason.LOGIN_REQUIRED),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.ROLE_MISSING: (
        lambda: PermissionDenied("refused", reason=Reason.ROLE_MISSING),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.SELF_GRANT: (
        lambda: PermissionDenied("refused", reason=Reason.SELF_GRANT),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.LAST_ADMINISTRATOR: (
        lambda: FailedPrecondition("refused", reason=Reason.LAST_ADMINISTRATOR),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.CHECKPOINT_FOREIGN: (
        lambda: PermissionDenied("refused", reason=Reason.CHECKPOINT_FOREIGN),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.CHECKPOINT_INCONSISTENT: (
        lambda: FailedPrecondition("refused", reason=Reason.CHECKPOINT_INCONSISTENT),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.LOG_KEY_UNKNOWN: (
        lambda: FailedPrecondition("refused", reason=Reason.LOG_KEY_UNKNOWN),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.WEAK_PASSWORD: (
        lambda: WeakPassword("new_password", "too short"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Reason.PASSWORD_REUSED: (
        lambda: PasswordReused("new_password", "the previous one"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    Reason.CHECKPOINT_FOREIGN: (
        lambda: PermissionDenied("refused", reason=Reason.CHECKPOINT_FOREIGN),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.CHECKPOINT_INCONSISTENT: (
        lambda: FailedPrecondition("refused", reason=Reason.CHECKPOINT_INCONSISTENT),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.LOG_KEY_UNKNOWN: (
        lambda: FailedPrecondition("refused", reason=Reason.LOG_KEY_UNKNOWN),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    # Relayed requests (tests/integration/test_relay.py provokes them through real hops).
    Reason.DIRECTORY_INVALID: (
        lambda: DirectoryInvalid("signed by another key"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.DIRECTORY_EXPIRED: (
        lambda: DirectoryExpired("past grace"),
        grpc.StatusCode.UNAVAILABLE,
    ),
    Reason.RELAY_WRONG_HOP: (lambda: WrongHop("not the source"), grpc.StatusCode.PERMISSION_DENIED),
    Reason.RELAY_UNKNOWN_DESTINATION: (
        lambda: UnknownDestination("not listed"),
        grpc.StatusCode.NOT_FOUND,
    ),
    Reason.RELAY_SEAL_INVALID: (
        lambda: SealInvalid("does not open"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.RELAY_REQUEST_CONFLICT: (
        lambda: RelayRequestConflict("answered before"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.MOVE_IN_NOTICE_MISMATCH: (
        lambda: FailedPrecondition("not issued here", reason=Reason.MOVE_IN_NOTICE_MISMATCH),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    # Moving with the card (tests/integration/test_special_move.py provokes them).
    Reason.MOVE_ABROAD_BY_POST: (
        lambda: FailedPrecondition("abroad", reason=Reason.MOVE_ABROAD_BY_POST),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.FILING_SIGNATURE_INVALID: (
        lambda: Unauthenticated("tampered", reason=Reason.FILING_SIGNATURE_INVALID),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    Reason.CARD_NOT_HOLDERS: (
        lambda: PermissionDenied("another's card", reason=Reason.CARD_NOT_HOLDERS),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.NO_MOVE_OUT_FILED: (
        lambda: FailedPrecondition("none filed", reason=Reason.NO_MOVE_OUT_FILED),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    Reason.NOT_FILED_DESTINATION: (
        lambda: PermissionDenied("another destination", reason=Reason.NOT_FILED_DESTINATION),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    Reason.SPECIAL_MOVE_IN_TOO_LATE: (
        lambda: FailedPrecondition("too late", reason=Reason.SPECIAL_MOVE_IN_TOO_LATE),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    # Copies issued anywhere (tests/integration/test_wide_area_copy.py provokes it).
    Reason.NOT_HOUSEHOLD_MEMBER: (
        lambda: PermissionDenied("not of the household", reason=Reason.NOT_HOUSEHOLD_MEMBER),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
}


def test_every_reason_of_the_catalogue_has_a_row() -> None:
    assert set(RAISED) == set(Reason)
    # Values are the wire contract: distinct, lower-case words joined by dashes.
    assert len({r.value for r in Reason}) == len(Reason)
    assert all(r.value.replace("-", "").isalpha() and r.value.islower() for r in Reason)


async def _refuse(request: bytes, context: Any) -> bytes:
    make, _ = RAISED[Reason(request.decode())]
    raise make()


async def _refuse_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    make, _ = RAISED[Reason(request.decode())]
    raise make()


async def _never(request: bytes, context: Any) -> bytes:
    raise AssertionError("the interceptor lets nobody in here")


def _everyone(identity: Identity) -> bool:
    return True


def _no_one(identity: Identity) -> bool:
    return False


@pytest.fixture
async def refusals(pki_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    """A server behind the real interceptor, and an operator's channel to it."""
    server = grpc.aio.server(
        interceptors=[
            AuthInterceptor({REFUSE: _everyone, REFUSE_STREAM: _everyone, FORBIDDEN: _no_one})
        ]
    )
    handlers = {
        "Refuse": grpc.unary_unary_rpc_method_handler(_refuse),
        "RefuseStream": grpc.unary_stream_rpc_method_handler(_refuse_stream),
        "Forbidden": grpc.unary_unary_rpc_method_handler(_never),
        "Unruled": grpc.unary_unary_rpc_method_handler(_never),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls_files(pki_dir, "national")))
    await server.start()
    channel = secure_channel(f"127.0.0.1:{port}", tls_files(pki_dir, f"operator-{TOTTORI}-admin"))
    try:
        yield channel
    finally:
        await channel.close(None)
        await server.stop(None)


@pytest.mark.parametrize("reason", list(Reason), ids=str)
async def test_every_reason_leaves_with_an_equal_error_info(
    refusals: grpc.aio.Channel, reason: Reason
) -> None:
    _, code = RAISED[reason]
    for streaming in (False, True):
        if streaming:
            call: Any = refusals.unary_stream(REFUSE_STREAM, None, None)(
                reason.encode(), timeout=TIMEOUT
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                assert [r async for r in call] == [b"first"]
            exc = caught.value
        else:
            exc = await refusal(
                refusals.unary_unary(REFUSE, None, None)(reason.encode(), timeout=TIMEOUT)
            )
        assert exc.code() == code, exc
        info = checked(exc)
        assert info.reason == reason
    if reason is Reason.INTERNAL:
        # The fault's own text stays in the server's log.
        assert "123456789012" not in (exc.details() or "")


async def test_typed_details_beside_the_error_info(refusals: grpc.aio.Channel) -> None:
    def call(reason: Reason) -> Awaitable[Any]:
        return refusals.unary_unary(REFUSE, None, None)(reason.encode(), timeout=TIMEOUT)

    gap = checked(await refusal(call(Reason.SEQUENCE_GAP)))
    assert dict(gap.metadata) == {
        INFO_ORIGIN: TOTTORI,
        INFO_EXPECTED_SEQUENCE: "4",
        "receivedSequence": "9",
    }

    stuck = checked(await refusal(call(Reason.NOTIFICATION_UNAPPLIABLE)))
    assert dict(stuck.metadata) == {INFO_ORIGIN: TOTTORI, INFO_SEQUENCE: "7"}

    quota = await refusal(call(Reason.QUOTA_EXCEEDED))
    assert checked(quota).metadata[INFO_RETRY_AFTER_MS] == "1500"
    assert error_metadata(quota)["retry-after-ms"] == "1500"
    status = rich_status(quota)
    assert status is not None
    (retry,) = [
        unpack(d, error_details_pb2.RetryInfo())
        for d in status.details
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)  # type: ignore[arg-type]
    ]
    assert retry.retry_delay.ToMilliseconds() == 1500

    full = await refusal(call(Reason.STORAGE_FULL))
    assert checked(full).metadata[INFO_RETRY_AFTER_MS] == "10000"
    assert "database or disk is full" not in (full.details() or "")
    status = rich_status(full)
    assert status is not None
    assert [
        unpack(d, error_details_pb2.RetryInfo()).retry_delay.ToMilliseconds()
        for d in status.details
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)  # type: ignore[arg-type]
    ] == [10_000]

    upstream = checked(await refusal(call(Reason.UPSTREAM)))
    assert upstream.metadata[INFO_PEER] == "national node"


async def test_refusals_of_the_interceptor_itself(refusals: grpc.aio.Channel) -> None:
    forbidden = await refusal(refusals.unary_unary(FORBIDDEN, None, None)(b"", timeout=TIMEOUT))
    assert forbidden.code() == grpc.StatusCode.PERMISSION_DENIED
    assert checked(forbidden).reason == Reason.WRONG_IDENTITY
    unruled = await refusal(refusals.unary_unary(UNRULED, None, None)(b"", timeout=TIMEOUT))
    assert unruled.code() == grpc.StatusCode.PERMISSION_DENIED
    assert checked(unruled).reason == Reason.NO_RULE


# --- real nodes ---------------------------------------------------------------------------


def operator_of(fed: Federation, code: str) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
    """The municipal register of ``code``, as its counter operator in a session."""
    return fed.operator(code)


def person(name: str = "鳥取 花子", **kw: Any) -> M.PersonDetails:
    values: dict[str, Any] = {
        "name": name,
        "name_kana": "トットリ ハナコ",
        "birth_date": "1990-02-03",
        "sex": common_pb2.SEX_FEMALE,
        "address": "鳥取県鳥取市東町1丁目220番地",
    }
    values.update(kw)
    return M.PersonDetails(**values)


async def test_real_nodes_refuse_with_an_equal_error_info(fed: Federation) -> None:
    """Each reason a caller can provoke from outside, at the node that gives it."""
    await fed.start_gateway()
    seen: dict[Reason, grpc.StatusCode] = {}

    async def expect(reason: Reason, call: Awaitable[Any]) -> error_details_pb2.ErrorInfo:
        exc = await refusal(call)
        info = checked(exc)
        assert info.reason == reason, (exc.code(), exc.details(), info)
        seen[reason] = exc.code()
        return info

    operator = operator_of(fed, TOTTORI)
    born = await operator.RegisterBirth(M.RegisterBirthRequest(person=person()), timeout=TIMEOUT)
    code = born.resident.resident_code
    await fed.wait_delivered()

    # The interceptor: an agency may not run a municipal register.
    as_agency = municipal_pb2_grpc.MunicipalServiceStub(
        fed.channel(fed.municipal_ports[TOTTORI], f"agency-{NENKIN}")
    )
    await expect(
        Reason.WRONG_IDENTITY, as_agency.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    )

    # The municipal register.
    info = await expect(
        Reason.INVALID_ARGUMENT,
        operator.RegisterBirth(
            M.RegisterBirthRequest(person=person(birth_date="1990-02-30")), timeout=TIMEOUT
        ),
    )
    assert info.metadata[INFO_FIELD].endswith("birth_date")
    await expect(
        Reason.ALREADY_REGISTERED,
        operator.MoveIn(
            M.MoveInRequest(
                person=person(),
                origin=M.MOVE_IN_ORIGIN_ABROAD,
                resident_code=code,
                effective_date=EFFECTIVE,
            ),
            timeout=TIMEOUT,
        ),
    )
    await expect(
        Reason.NOT_MOVED_OUT,
        operator.ReissueMoveOutCertificate(
            M.ReissueMoveOutCertificateRequest(resident_code=code), timeout=TIMEOUT
        ),
    )

    # The move-out certificate a domestic move-in at Yonago rests on.
    yonago = operator_of(fed, YONAGO)
    leaving = await operator.RegisterBirth(
        M.RegisterBirthRequest(person=person("鳥取 次郎")), timeout=TIMEOUT
    )
    out = await operator.MoveOut(
        M.MoveOutRequest(
            resident_code=leaving.resident.resident_code,
            destination_local_government_code=YONAGO,
            effective_date=EFFECTIVE,
        ),
        timeout=TIMEOUT,
    )

    def move_in(**kw: Any) -> Awaitable[Any]:
        values: dict[str, Any] = {
            "person": M.PersonDetails(address="鳥取県米子市加茂町1丁目1番地"),
            "origin": M.MOVE_IN_ORIGIN_DOMESTIC,
            "effective_date": EFFECTIVE,
            "move_out_certificate": out.certificate,
        }
        values.update(kw)
        return yonago.MoveIn(M.MoveInRequest(**values), timeout=TIMEOUT)

    info = await expect(Reason.MOVE_OUT_CERTIFICATE_MISSING, move_in(move_out_certificate=None))
    assert info.metadata[INFO_FIELD] == "move_out_certificate"
    await expect(
        Reason.MOVE_OUT_CERTIFICATE_INVALID,
        move_in(
            move_out_certificate=common_pb2.SignedMoveOutCertificate(
                certificate=out.certificate.certificate + b"\x00",
                signature=out.certificate.signature,
                signer_certificate=out.certificate.signer_certificate,
            )
        ),
    )
    await expect(
        Reason.MOVE_OUT_CERTIFICATE_FOREIGN,
        move_in(
            move_out_certificate=common_pb2.SignedMoveOutCertificate(
                certificate=out.certificate.certificate,
                signature=out.certificate.signature,
                signer_certificate=x509.load_pem_x509_certificate(
                    (fed.pki_dir / f"municipality-{YONAGO}.pem").read_bytes()
                ).public_bytes(Encoding.DER),
            )
        ),
    )
    await expect(Reason.MOVE_OUT_CERTIFICATE_MISMATCH, move_in(resident_code=code))
    await move_in()
    await yonago.MoveOut(
        M.MoveOutRequest(
            resident_code=leaving.resident.resident_code, abroad=True, effective_date=EFFECTIVE
        ),
        timeout=TIMEOUT,
    )
    await expect(Reason.MOVE_OUT_CERTIFICATE_REPLAYED, move_in())

    await operator.RecordDeath(
        M.RecordDeathRequest(resident_code=code, date_of_death=EFFECTIVE), timeout=TIMEOUT
    )
    await expect(
        Reason.NOT_REGISTERED,
        operator.RecordDeath(
            M.RecordDeathRequest(resident_code=code, date_of_death=EFFECTIVE), timeout=TIMEOUT
        ),
    )

    # The prefecture: a municipality asks for another's codes.
    as_tottori = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{TOTTORI}")
    )
    await expect(
        Reason.FOREIGN_ORIGIN,
        as_tottori.AllocateCodePool(
            delivery_pb2.AllocateCodePoolRequest(
                municipality_code=YONAGO, count=1, request_id="rich-errors-foreign"
            ),
            timeout=TIMEOUT,
        ),
    )

    # The gateway's purpose registry, and a refusal of the national node relayed
    # by the gateway with the national node's own details.
    nenkin = fed.agency(NENKIN)
    claim = G.ClaimedIdentity(resident_code=code)
    await expect(
        Reason.UNKNOWN_PURPOSE,
        nenkin.Verify(
            G.VerifyRequest(purpose_code="NO-SUCH-PURPOSE", claim=claim), timeout=TIMEOUT
        ),
    )
    await expect(
        Reason.AGENCY_NOT_ALLOWED,
        nenkin.Verify(G.VerifyRequest(purpose_code=PASSPORT, claim=claim), timeout=TIMEOUT),
    )
    await expect(
        Reason.OPERATION_NOT_ALLOWED,
        nenkin.Retrieve(
            G.RetrieveRequest(purpose_code=EXISTENCE, resident_code=code), timeout=TIMEOUT
        ),
    )
    await expect(
        Reason.FIELD_NOT_ALLOWED,
        nenkin.Retrieve(
            G.RetrieveRequest(purpose_code=ADDRESS_CHANGE, resident_code=code, fields=["name"]),
            timeout=TIMEOUT,
        ),
    )
    relayed = await refusal(
        nenkin.Retrieve(
            G.RetrieveRequest(purpose_code=ADDRESS_CHANGE, resident_code=new_resident_code()),
            timeout=TIMEOUT,
        )
    )
    info = checked(relayed)
    assert relayed.code() == grpc.StatusCode.NOT_FOUND
    seen[Reason(info.reason)] = relayed.code()
    # The national node's ErrorInfo, passed on as it was (a synthesized one names a peer).
    assert INFO_PEER not in info.metadata

    # A relay whose next tier is down: the prefecture cannot reach the national node.
    assert fed.national is not None
    await fed.stop_gateway()
    await fed.national.stop()
    fed.national = None
    info = await expect(
        Reason.UPSTREAM,
        as_tottori.AllocateCodePool(
            delivery_pb2.AllocateCodePoolRequest(
                municipality_code=TOTTORI, count=1, request_id="rich-errors-upstream"
            ),
            timeout=TIMEOUT,
        ),
    )
    assert seen[Reason.UPSTREAM] == grpc.StatusCode.UNAVAILABLE
    assert info.metadata[INFO_PEER] == "national node"

    assert set(seen) >= {
        Reason.WRONG_IDENTITY,
        Reason.INVALID_ARGUMENT,
        Reason.ALREADY_REGISTERED,
        Reason.NOT_REGISTERED,
        Reason.NOT_MOVED_OUT,
        Reason.MOVE_OUT_CERTIFICATE_MISSING,
        Reason.MOVE_OUT_CERTIFICATE_INVALID,
        Reason.MOVE_OUT_CERTIFICATE_FOREIGN,
        Reason.MOVE_OUT_CERTIFICATE_MISMATCH,
        Reason.MOVE_OUT_CERTIFICATE_REPLAYED,
        Reason.FOREIGN_ORIGIN,
        Reason.UNKNOWN_PURPOSE,
        Reason.AGENCY_NOT_ALLOWED,
        Reason.OPERATION_NOT_ALLOWED,
        Reason.FIELD_NOT_ALLOWED,
        Reason.NOT_FOUND,
        Reason.UPSTREAM,
    }


async def test_sequence_gap_names_where_to_resume(fed: Federation) -> None:
    """The prefecture refuses a skipped sequence with origin and expected sequence typed."""
    await fed.municipalities.pop(YONAGO).stop()
    fed.municipal_ports.pop(YONAGO)
    channel = fed.channel(fed.prefecture_ports["31"], f"municipality-{YONAGO}")
    direct = prefecture_pb2_grpc.PrefectureServiceStub(channel)
    code = await pool_code(direct, "rich-errors-gap")
    call: Any = cast(Any, direct.PushNotifications)(timeout=TIMEOUT)
    await call.write(batch((5, notification(5, code))))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not EOF:
            pass
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    meta = error_metadata(caught.value)
    info = checked(caught.value)
    assert info.reason == Reason.SEQUENCE_GAP
    assert info.metadata[INFO_ORIGIN] == YONAGO == meta["jukinet-origin"]
    assert info.metadata[INFO_EXPECTED_SEQUENCE] == "1" == meta["jukinet-expected-sequence"]


async def test_pusher_rewinds_to_the_sequence_the_receiver_expects(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    """An outbox that believes more was acknowledged than the receiver holds (its
    pointer ahead, as after a restore of the receiver) is told, by the typed
    ErrorInfo of the gap, where to resume, and delivers everything."""
    pref_port = fed.prefecture_ports["31"]
    await fed.prefectures["31"].stop()
    operator = operator_of(fed, TOTTORI)
    before = await operator.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    for i in range(3):
        await operator.RegisterBirth(
            M.RegisterBirthRequest(person=person(f"鳥取 {'一二三'[i]}子")), timeout=TIMEOUT
        )
    app = fed.municipalities[TOTTORI]
    async with app.db.write() as conn:
        status = await app.outbox.status(conn)
        # Two of the three new entries "acknowledged" without ever being sent.
        await app.outbox.acknowledge(conn, status.acknowledged_through + 2)
    caplog.set_level(logging.WARNING, logger="jukinet.delivery.pusher")
    await fed.start_prefecture("31", port=pref_port)
    await fed.wait_delivered(within=60)
    expected = before.last_sequence + 1
    assert any(
        f"receiver expects {TOTTORI} #{expected}: rewinding" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
