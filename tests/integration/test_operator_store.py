"""Operator logins with a real card (SoftHSM2) and a password, and their sessions,
on SQLite and PostgreSQL: lockout, expiry, change, idle and absolute session
expiry, a token from another terminal, challenges used once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import MetaData, select

from jukinet import card, pki
from jukinet.clock import Clock
from jukinet.db import Database
from jukinet.errors import JukinetError
from jukinet.identity import Identity
from jukinet.login import CardTrust, LoginPolicy, Opened, OperatorStore, define_operator_tables
from jukinet.reasons import Reason
from tests.cards import FOREIGN_TERMINAL, ORG, OTHER_TERMINAL, PIN, TANAKA, TERMINAL, Cards
from tests.federation import Databases

FIRST = "Initial-pass-0001"
SECOND = "Counter-desk-2026"
THIRD = "Tottori sand dunes 3"
POLICY = LoginPolicy()


@dataclass
class Setup:
    """A store on one backend, its clock, and the PKI and reader of its cards."""

    store: OperatorStore
    clock: Clock
    cards: Cards

    def advance(self, delta: dt.timedelta) -> None:
        """Move the store's clock forward."""
        self.clock.offset += delta

    async def login(
        self,
        password: str,
        *,
        new_password: str | None = None,
        terminal: Identity = TERMINAL,
        sign_for: Identity | None = None,
    ) -> Opened:
        """Log Tanaka in with the card in the reader (``sign_for``: sign something else)."""
        challenge = await self.store.issue_challenge(terminal, TANAKA)
        message = challenge.message() if sign_for is None else b"something else"

        def sign() -> tuple[bytes, bytes]:
            with card.open_card(card.load_module(), PIN) as opened:
                return opened.certificate.public_bytes(Encoding.DER), opened.sign(message)

        certificate, signature = await asyncio.to_thread(sign)
        return await self.store.login(
            terminal, challenge.nonce, certificate, signature, password, new_password=new_password
        )


async def refused(awaitable: object) -> JukinetError:
    with pytest.raises(JukinetError) as caught:
        await awaitable  # type: ignore[misc]
    return caught.value


@pytest.fixture
async def setup(tmp_path: Path, backend: str, cards: Cards) -> AsyncIterator[Setup]:
    dbs = Databases(backend, tmp_path / "db")
    db = Database(await dbs.url("operators"))
    metadata = MetaData()
    tables = define_operator_tables(metadata)
    try:
        async with db.write() as conn:
            await conn.run_sync(metadata.create_all)
        cards.provision("tanaka", TANAKA)
        clock = Clock()
        store = OperatorStore(db, tables, CardTrust.load(cards.pki), ORG, clock=clock)
        await store.add_operator(TANAKA, FIRST)
        yield Setup(store, clock, cards)
    finally:
        await db.close()
        await dbs.drop_all()


async def test_the_first_login_changes_the_administrators_password(setup: Setup) -> None:
    error = await refused(setup.login(FIRST))
    assert error.reason is Reason.PASSWORD_EXPIRED
    assert (await refused(setup.login(FIRST, new_password="short"))).reason is Reason.WEAK_PASSWORD
    error = await refused(setup.login(FIRST, new_password=FIRST))
    assert error.reason is Reason.PASSWORD_REUSED
    opened = await setup.login(FIRST, new_password=SECOND)
    assert opened.session.operator == TANAKA and opened.session.terminal == TERMINAL
    assert (await refused(setup.login(FIRST))).reason is Reason.WRONG_PASSWORD
    assert (await setup.login(SECOND)).session.operator == TANAKA


async def test_wrong_passwords_lock_the_account_for_a_while(setup: Setup) -> None:
    await setup.login(FIRST, new_password=SECOND)
    for _ in range(POLICY.max_failures - 1):
        assert (await refused(setup.login("Wrong-password-1"))).reason is Reason.WRONG_PASSWORD
    error = await refused(setup.login("Wrong-password-1"))
    assert error.reason is Reason.LOCKED_OUT and "now locked out" in error.message
    # While locked, even the right password is refused (and not checked).
    assert (await refused(setup.login(SECOND))).reason is Reason.LOCKED_OUT
    setup.advance(POLICY.lockout - dt.timedelta(seconds=5))
    assert (await refused(setup.login(SECOND))).reason is Reason.LOCKED_OUT
    setup.advance(dt.timedelta(seconds=10))
    assert (await setup.login(SECOND)).session.operator == TANAKA
    # A right password set the count back: four more wrong ones do not lock.
    for _ in range(POLICY.max_failures - 1):
        assert (await refused(setup.login("Wrong-password-1"))).reason is Reason.WRONG_PASSWORD
    await setup.login(SECOND)


async def test_a_password_expires_and_a_change_refuses_the_previous_one(setup: Setup) -> None:
    opened = await setup.login(FIRST, new_password=SECOND)
    await setup.store.logout(opened.token)
    setup.advance(POLICY.password_max_age - dt.timedelta(minutes=1))
    opened = await setup.login(SECOND)
    setup.advance(dt.timedelta(minutes=2))
    assert (await refused(setup.login(SECOND))).reason is Reason.PASSWORD_EXPIRED
    opened = await setup.login(SECOND, new_password=THIRD)
    store = setup.store
    # Voluntary change within a session: neither the current nor the previous password.
    error = await refused(store.change_password(opened.token, TERMINAL, THIRD, SECOND))
    assert error.reason is Reason.PASSWORD_REUSED
    error = await refused(store.change_password(opened.token, TERMINAL, THIRD, THIRD))
    assert error.reason is Reason.PASSWORD_REUSED
    error = await refused(store.change_password(opened.token, TERMINAL, "Not-the-old-1", FIRST))
    assert error.reason is Reason.WRONG_PASSWORD
    await store.change_password(opened.token, TERMINAL, THIRD, "A new one, 4th")
    await setup.login("A new one, 4th")


async def test_a_session_ends_when_idle_and_at_its_maximum(setup: Setup) -> None:
    store = setup.store
    opened = await setup.login(FIRST, new_password=SECOND)
    assert (await store.session(opened.token, TERMINAL)).operator == TANAKA
    setup.advance(POLICY.session_idle + dt.timedelta(seconds=1))
    assert (await refused(store.session(opened.token, TERMINAL))).reason is Reason.SESSION_EXPIRED
    # Ended: asking again finds nothing.
    assert (await refused(store.session(opened.token, TERMINAL))).reason is Reason.SESSION_INVALID

    opened = await setup.login(SECOND)
    step = POLICY.session_idle - dt.timedelta(minutes=1)
    steps = 0
    while steps < 100:
        setup.advance(step)
        steps += 1
        if setup.clock.now() >= opened.session.expires_at:
            break
        await store.session(opened.token, TERMINAL)
    assert steps < 100
    error = await refused(store.session(opened.token, TERMINAL))
    assert error.reason is Reason.SESSION_EXPIRED and "maximum" in error.message


async def test_a_token_from_another_terminal_is_refused_and_ends_the_session(
    setup: Setup,
) -> None:
    store = setup.store
    opened = await setup.login(FIRST, new_password=SECOND)
    error = await refused(store.session(opened.token, OTHER_TERMINAL))
    assert error.reason is Reason.WRONG_TERMINAL
    assert (await refused(store.session(opened.token, TERMINAL))).reason is Reason.SESSION_INVALID
    opened = await setup.login(SECOND)
    error = await refused(store.session(opened.token, FOREIGN_TERMINAL))
    assert error.reason is Reason.FOREIGN_TERMINAL
    assert (await refused(store.session("made-up", TERMINAL))).reason is Reason.SESSION_INVALID
    assert await store.logout(opened.token)
    assert not await store.logout(opened.token)


async def test_only_the_token_hash_is_stored(setup: Setup) -> None:
    opened = await setup.login(FIRST, new_password=SECOND)
    async with setup.store.db.read() as conn:
        rows = (await conn.execute(select(setup.store.t.sessions))).all()
    assert len(rows) == 1
    assert opened.token.encode() not in rows[0].token_hash
    assert rows[0].terminal == TERMINAL.uri


async def test_challenges_are_used_once_at_their_terminal_before_they_expire(
    setup: Setup,
) -> None:
    store = setup.store
    await setup.login(FIRST, new_password=SECOND)
    challenge = await store.issue_challenge(TERMINAL, TANAKA)

    def sign(message: bytes) -> tuple[bytes, bytes]:
        with card.open_card(card.load_module(), PIN) as opened:
            return opened.certificate.public_bytes(Encoding.DER), opened.sign(message)

    certificate, signature = await asyncio.to_thread(sign, challenge.message())
    await store.login(TERMINAL, challenge.nonce, certificate, signature, SECOND)
    error = await refused(store.login(TERMINAL, challenge.nonce, certificate, signature, SECOND))
    assert error.reason is Reason.CHALLENGE_INVALID and "already used" in error.message

    challenge = await store.issue_challenge(TERMINAL, TANAKA)
    certificate, signature = await asyncio.to_thread(sign, challenge.message())
    error = await refused(
        store.login(OTHER_TERMINAL, challenge.nonce, certificate, signature, SECOND)
    )
    assert error.reason is Reason.CHALLENGE_INVALID and "another terminal" in error.message

    challenge = await store.issue_challenge(TERMINAL, TANAKA)
    certificate, signature = await asyncio.to_thread(sign, challenge.message())
    setup.advance(POLICY.challenge_ttl + dt.timedelta(seconds=1))
    error = await refused(store.login(TERMINAL, challenge.nonce, certificate, signature, SECOND))
    assert error.reason is Reason.CHALLENGE_INVALID and "expired" in error.message

    error = await refused(setup.login(SECOND, sign_for=TANAKA))
    assert error.reason is Reason.CHALLENGE_INVALID and "does not verify" in error.message
    error = await refused(store.issue_challenge(FOREIGN_TERMINAL, TANAKA))
    assert error.reason is Reason.FOREIGN_TERMINAL


async def test_a_revoked_card_no_longer_logs_in(setup: Setup) -> None:
    opened = await setup.login(FIRST, new_password=SECOND)
    pki.revoke_card(setup.cards.pki, TANAKA)
    setup.store.trust = CardTrust.load(setup.cards.pki)
    assert (await refused(setup.login(SECOND))).reason is Reason.CARD_REVOKED
    assert await setup.store.end_sessions(TANAKA) == 1
    assert (await refused(setup.store.session(opened.token, TERMINAL))).reason is (
        Reason.SESSION_INVALID
    )
