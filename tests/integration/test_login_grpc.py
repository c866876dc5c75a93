"""Operator logins and sessions over gRPC at the municipal node, with real
SoftHSM2 cards and real counter terminal certificates: idle and maximum
session expiry (on the node's clock), lockout, password expiry, a revoked
card, a card and a terminal of another municipality, a session token replayed
from another terminal, a call without a session, an operator certificate.
Every refusal asserts its status and reason, and that nothing was written;
every login attempt is in the operation log."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from jukinet import login, pki
from jukinet.client import log_in
from jukinet.clock import Clock
from jukinet.identity import Identity
from jukinet.v1 import municipal_pb2, municipal_pb2_grpc, operator_pb2, operator_pb2_grpc
from tests.federation import INITIAL_PASSWORD, PASSWORD, Federation, trailers

TOTTORI = "312011"
YONAGO = "312029"
TIMEOUT = 15
CLERK = operator_pb2.ROLE_CLERK
STATUS = municipal_pb2.GetMunicipalStatusRequest()


async def register_state(fed: Federation) -> dict[str, list[str]]:
    """The register's tables (log, accounts and sessions aside: a login writes those)."""
    db = fed.municipalities[TOTTORI].db
    async with db.read() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        out: dict[str, list[str]] = {}
        for name in sorted(n for n in names if not n.startswith(("oplog_", "operator"))):
            rows = (await conn.execute(sa.text(f'SELECT * FROM "{name}"'))).all()
            out[name] = sorted(repr(tuple(r)) for r in rows)
    return out


async def sessions_of(fed: Federation, operator_id: str) -> int:
    """How many sessions ``operator_id`` has open at Tottori."""
    db = fed.municipalities[TOTTORI].db
    async with db.read() as conn:
        return int(
            (
                await conn.execute(
                    sa.text("SELECT count(*) FROM operator_sessions WHERE operator_id = :o"),
                    {"o": operator_id},
                )
            ).scalar_one()
        )


async def refused(call: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    """The call fails with ``code`` and ``reason``."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert (err.code(), trailers(err).get("jukinet-reason")) == (code, reason), err.details()
    return err


async def restart(fed: Federation, clock: Clock | None = None, **settings: Any) -> None:
    """Restart Tottori with other settings (its database and sessions kept)."""
    await fed.municipalities[TOTTORI].stop()
    await fed.start_municipality(TOTTORI, clock=clock or Clock(), **settings)


def stub(channel: grpc.aio.Channel) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
    """The municipal service over ``channel``."""
    return municipal_pb2_grpc.MunicipalServiceStub(channel)


async def test_a_session_ends_when_idle(fed: Federation) -> None:
    clock = Clock()
    await restart(fed, clock, session_idle=60, session_max=600)
    who = await fed.session(TOTTORI, [CLERK])
    await who.municipal.GetStatus(STATUS, timeout=TIMEOUT)
    clock.offset += dt.timedelta(seconds=59)
    await who.municipal.GetStatus(STATUS, timeout=TIMEOUT)  # a call keeps it alive
    clock.offset += dt.timedelta(seconds=61)
    before = await register_state(fed)
    await refused(
        who.municipal.GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-expired",
    )
    assert await sessions_of(fed, "clerk") == 0
    await refused(
        who.municipal.GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-invalid",
    )
    assert await register_state(fed) == before


async def test_a_session_ends_at_its_maximum(fed: Federation) -> None:
    clock = Clock()
    await restart(fed, clock, session_idle=60, session_max=150)
    who = await fed.session(TOTTORI, [CLERK])
    for _ in range(2):
        clock.offset += dt.timedelta(seconds=50)
        await who.municipal.GetStatus(STATUS, timeout=TIMEOUT)
    clock.offset += dt.timedelta(seconds=51)
    await refused(
        who.municipal.GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-expired",
    )


async def test_wrong_passwords_lock_the_account(fed: Federation) -> None:
    clock = Clock()
    await restart(fed, clock, login_failures=3, lockout=300)
    await fed.session(TOTTORI, [CLERK])  # enrolled, password changed
    card = fed.card(Identity.operator(TOTTORI, "clerk"))
    ch = fed.terminal_channel(TOTTORI)
    before = await register_state(fed)
    for _ in range(2):
        await refused(
            log_in(ch, card, "Wrong-password-99"),
            grpc.StatusCode.UNAUTHENTICATED,
            "wrong-password",
        )
    await refused(
        log_in(ch, card, "Wrong-password-99"), grpc.StatusCode.PERMISSION_DENIED, "locked-out"
    )
    # Locked: even the right password waits.
    await refused(log_in(ch, card, PASSWORD), grpc.StatusCode.PERMISSION_DENIED, "locked-out")
    assert await register_state(fed) == before
    clock.offset += dt.timedelta(seconds=301)
    opened = await log_in(ch, card, PASSWORD)
    assert opened.session_token

    # Each attempt is in the log, under the operator named, at the terminal.
    auditor = await fed.session(TOTTORI, [operator_pb2.ROLE_AUDITOR])
    read = await auditor.operators.ReadOperationLog(
        operator_pb2.ReadOperationLogRequest(operator_id="clerk", limit=1000), timeout=TIMEOUT
    )
    logins = [(e.terminal, e.outcome, e.reason) for e in read.entries if e.operation == "Login"]
    desk1 = f"jukinet://terminal/{TOTTORI}/desk1"
    assert logins[-5:] == [
        (desk1, "refused", "wrong-password"),
        (desk1, "refused", "wrong-password"),
        (desk1, "refused", "locked-out"),
        (desk1, "refused", "locked-out"),
        (desk1, "ok", ""),
    ]


async def test_an_expired_password_must_be_changed(fed: Federation) -> None:
    clock = Clock()
    await restart(fed, clock, password_max_age_days=30)
    await fed.session(TOTTORI, [CLERK])
    card = fed.card(Identity.operator(TOTTORI, "clerk"))
    ch = fed.terminal_channel(TOTTORI)
    clock.offset += dt.timedelta(days=31)
    await refused(
        log_in(ch, card, PASSWORD), grpc.StatusCode.FAILED_PRECONDITION, "password-expired"
    )
    # The same password again is no change.
    await refused(
        log_in(ch, card, PASSWORD, new_password=PASSWORD),
        grpc.StatusCode.INVALID_ARGUMENT,
        "password-reused",
    )
    opened = await log_in(ch, card, PASSWORD, new_password="Renewed-pass-0031")
    assert opened.session_token
    # The first login after an enrolment needs a change too.
    ch2 = fed.terminal_channel(TOTTORI, "desk2")
    await fed.enroll(TOTTORI, "fresh", [CLERK])
    fresh = fed.card(Identity.operator(TOTTORI, "fresh"))
    await refused(
        log_in(ch2, fresh, INITIAL_PASSWORD),
        grpc.StatusCode.FAILED_PRECONDITION,
        "password-expired",
    )


async def test_a_revoked_card_is_refused(fed: Federation) -> None:
    operator = Identity.operator(TOTTORI, "revoked-card")
    await fed.enroll(TOTTORI, operator.operator_id, [CLERK])
    card = fed.card(operator)
    pki.revoke_card(fed.pki_dir, operator)  # the node reads the CRL again at each login
    before = await register_state(fed)
    await refused(
        log_in(fed.terminal_channel(TOTTORI), card, INITIAL_PASSWORD, new_password=PASSWORD),
        grpc.StatusCode.UNAUTHENTICATED,
        "card-revoked",
    )
    assert await register_state(fed) == before
    assert await sessions_of(fed, operator.operator_id) == 0


async def test_a_session_ends_when_its_card_is_revoked(fed: Federation, backend: str) -> None:
    lost = f"card-lost-{backend}"  # the PKI (and its CRL) is the test session's
    opened = await fed.session(TOTTORI, [CLERK], operator_id=lost)
    await opened.municipal.GetStatus(STATUS, timeout=TIMEOUT)
    pki.revoke_card(fed.pki_dir, opened.operator)
    store = fed.municipalities[TOTTORI].operators
    store._trust_read -= login.TRUST_RECHECK  # as if the recheck interval had passed
    before = await register_state(fed)
    await refused(
        opened.municipal.GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "card-revoked",
    )
    assert await sessions_of(fed, lost) == 0  # ended, not only refused
    await refused(
        opened.municipal.GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-invalid",
    )
    assert await register_state(fed) == before


async def test_a_card_of_another_municipality_is_refused(fed: Federation) -> None:
    yonago = fed.card(Identity.operator(YONAGO, "counter"))
    tottori = operator_pb2_grpc.OperatorServiceStub(fed.terminal_channel(TOTTORI))
    before = await register_state(fed)
    # The challenge is for Tottori's counter operator; Yonago's card signs it.
    begun = await tottori.BeginLogin(
        operator_pb2.BeginLoginRequest(operator_id="counter"), timeout=TIMEOUT
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    await refused(
        tottori.Login(
            operator_pb2.LoginRequest(
                nonce=begun.nonce,
                signature=yonago.sign(begun.challenge),
                card_certificate=yonago.certificate.public_bytes(Encoding.DER),
                password=PASSWORD,
            ),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "foreign-card",
    )
    assert await register_state(fed) == before


async def test_a_terminal_of_another_municipality_is_refused(fed: Federation) -> None:
    foreign = fed.channel(fed.municipal_ports[TOTTORI], f"terminal-{YONAGO}-desk1")
    card = fed.card(Identity.operator(TOTTORI, "counter"))
    before = await register_state(fed)
    await refused(
        log_in(foreign, card, PASSWORD), grpc.StatusCode.PERMISSION_DENIED, "foreign-terminal"
    )
    # With Yonago's own session token, too.
    with_token = fed.channel(
        fed.municipal_ports[TOTTORI], f"terminal-{YONAGO}-desk1", session=fed.sessions[YONAGO]
    )
    await refused(
        stub(with_token).GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.PERMISSION_DENIED,
        "foreign-terminal",
    )
    assert await register_state(fed) == before


async def test_a_token_from_another_terminal_ends_the_session(fed: Federation) -> None:
    who = await fed.session(TOTTORI, [CLERK])
    await who.municipal.GetStatus(STATUS, timeout=TIMEOUT)
    replayed = fed.terminal_channel(TOTTORI, "desk2", session=who.token)
    before = await register_state(fed)
    await refused(
        stub(replayed).RegisterBirth(municipal_pb2.RegisterBirthRequest(), timeout=TIMEOUT),
        grpc.StatusCode.PERMISSION_DENIED,
        "wrong-terminal",
    )
    # The token has left its computer: the session is over there too.
    await refused(
        who.municipal.GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-invalid",
    )
    assert await register_state(fed) == before


async def test_a_call_without_a_session_is_refused(fed: Federation) -> None:
    bare = fed.terminal_channel(TOTTORI)
    before = await register_state(fed)
    await refused(
        stub(bare).GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-required",
    )
    await refused(
        operator_pb2_grpc.OperatorServiceStub(bare).WhoAmI(
            operator_pb2.WhoAmIRequest(), timeout=TIMEOUT
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-required",
    )
    forged = fed.terminal_channel(TOTTORI, session="not-a-token")
    await refused(
        stub(forged).GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-invalid",
    )
    assert await register_state(fed) == before


async def test_an_operator_certificate_is_refused(fed: Federation) -> None:
    channel = fed.channel(fed.municipal_ports[TOTTORI], f"operator-{TOTTORI}-admin")
    before = await register_state(fed)
    for call in (
        stub(channel).GetStatus(STATUS, timeout=TIMEOUT),
        stub(channel).RegisterBirth(municipal_pb2.RegisterBirthRequest(), timeout=TIMEOUT),
    ):
        await refused(call, grpc.StatusCode.PERMISSION_DENIED, "login-required")
    assert await register_state(fed) == before


async def test_logout_and_who_am_i(fed: Federation) -> None:
    who = await fed.session(TOTTORI, [CLERK])
    me = await who.operators.WhoAmI(operator_pb2.WhoAmIRequest(), timeout=TIMEOUT)
    assert me.session.operator == who.operator.uri
    assert me.session.idle_expires_at.ToDatetime() <= me.session.expires_at.ToDatetime()
    await who.operators.ChangePassword(
        operator_pb2.ChangePasswordRequest(old_password=PASSWORD, new_password="Changed-pass-0042"),
        timeout=TIMEOUT,
    )
    await who.operators.Logout(operator_pb2.LogoutRequest(), timeout=TIMEOUT)
    await refused(
        who.municipal.GetStatus(STATUS, timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
        "session-invalid",
    )
