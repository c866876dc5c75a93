"""Resident cards over real mTLS with real SoftHSM2 tokens: issued at the home
municipality, proving their holder at any counter, locked by three wrong PINs
wherever they are used, unlocked at the counter, revoked (the CRL reaches the
nodes of another prefecture), lapsed by a move-out, and continued at the new
municipality within 90 days."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from jukinet import card
from jukinet.v1 import card_pb2, card_pb2_grpc, municipal_pb2
from tests.federation import (
    CARD_CRL_INTERVAL,
    Federation,
    activated,
    move_in,
    move_out,
    run_cli,
    session_options,
    trailers,
)
from tests.integration.test_move_out_certificate import ADDRESS, person

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"  # another prefecture
TIMEOUT = 15
PIN = "1234"
BLANK_SO_PIN = "blank-so-2468"
C = card_pb2
PROPAGATION = 3 * CARD_CRL_INTERVAL + 5
"""The stated time within which a CRL re-signed at one municipality is held by the
node of a municipality of another prefecture: the home node publishes at once,
its prefecture passes it up at once, and the other prefecture and its
municipality each fetch every interval (so two intervals, plus a margin)."""


def cards_of(fed: Federation, code: str) -> card_pb2_grpc.ResidentCardServiceAsyncStub:
    """Municipality ``code``'s ResidentCardService in its counter operator's session."""
    return card_pb2_grpc.ResidentCardServiceStub(
        fed.terminal_channel(code, session=fed.sessions[code])
    )


async def born(fed: Federation, code: str = TOTTORI) -> str:
    """A resident of ``code``; their resident code."""
    r = await fed.operator(code).RegisterBirth(
        municipal_pb2.RegisterBirthRequest(person=person(ADDRESS[code])), timeout=TIMEOUT
    )
    return r.resident.resident_code


class Reader:
    """A counter's card reader (its own SoftHSM2 token folder) with residents' cards."""

    def __init__(self, directory: Path) -> None:
        self.hsm = card.SoftHsm.create(directory)

    def blank(self, label: str, pin: str = PIN) -> None:
        """A blank card, initialised with the resident's PIN."""
        with activated(self.hsm):
            self.hsm.init_token(label, BLANK_SO_PIN, pin)

    async def issue(
        self, fed: Federation, code: str, resident: str, label: str
    ) -> x509.Certificate:
        """Issue ``label`` to ``resident`` at ``code``: key on the card, certificate by the node."""
        self.blank(label)
        loop = asyncio.get_running_loop()
        stub = cards_of(fed, code)

        async def ask(public_key: bytes) -> card_pb2.IssueCardResponse:
            answer: card_pb2.IssueCardResponse = await stub.IssueCard(
                C.IssueCardRequest(resident_code=resident, public_key=public_key),
                timeout=TIMEOUT,
            )
            return answer

        def certify(key: Any) -> tuple[x509.Certificate, str]:
            der = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            answer = asyncio.run_coroutine_threadsafe(ask(der), loop).result(TIMEOUT)
            return x509.load_der_x509_certificate(answer.certificate), answer.security_officer_pin

        def provision() -> x509.Certificate:
            with activated(self.hsm) as lib:
                return card.provision_resident_card(lib, PIN, BLANK_SO_PIN, certify, label=label)

        return await asyncio.to_thread(provision)

    def sign(self, label: str, pin: str, data: bytes) -> bytes:
        """The card's signature of ``data`` after ``pin`` (counted on the card)."""
        with activated(self.hsm) as lib, card.open_resident_card(lib, pin, label=label) as c:
            return c.sign(data)

    def certificate(self, label: str) -> bytes:
        """The certificate on the card, DER."""
        with activated(self.hsm) as lib:
            cert = card.resident_card_certificate(lib, label=label)
        return cert.public_bytes(serialization.Encoding.DER)

    def unlock(self, label: str, so_pin: str, new_pin: str) -> None:
        """Set a new PIN with the card's security officer PIN."""
        with activated(self.hsm) as lib:
            card.unlock_resident_card(lib, so_pin, new_pin, label=label)


@pytest.fixture
def reader(tmp_path: Path) -> Reader:
    """A fresh card reader."""
    return Reader(tmp_path / "reader")


async def prove(
    fed: Federation,
    at: str,
    reader: Reader,
    label: str,
    *,
    pin: str = PIN,
    certificate: bytes | None = None,
) -> card_pb2.ProveCardResponse:
    """The card's proof of identity at municipality ``at``'s counter."""
    stub = cards_of(fed, at)
    begun = await stub.BeginCardProof(C.BeginCardProofRequest(), timeout=TIMEOUT)
    signature = await asyncio.to_thread(reader.sign, label, pin, begun.challenge)
    answer: card_pb2.ProveCardResponse = await stub.ProveCard(
        C.ProveCardRequest(
            nonce=begun.nonce,
            card_certificate=certificate or reader.certificate(label),
            signature=signature,
        ),
        timeout=TIMEOUT,
    )
    return answer


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and reason of a refused call."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), trailers(info.value).get("jukinet-reason", "")


async def until(check: Callable[[], Any], within: float) -> float:
    """Seconds until ``check()`` (a coroutine) returns True; fails after ``within``."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"not within {within} s"
        await asyncio.sleep(0.2)


def crl_held(fed: Federation, at: str, of: str, serial: int | None = None) -> Callable[[], Any]:
    """Whether ``at``'s node holds a CRL of ``of``'s card CA (listing ``serial``)."""

    async def check() -> bool:
        authority = fed.municipalities[at].cards.trust.authorities.get(of)
        return authority is not None and (serial is None or serial in authority.revoked)

    return check


async def test_issue_and_prove_at_home_and_at_another_prefecture(
    fed: Federation, reader: Reader
) -> None:
    code = await born(fed)
    cert = await reader.issue(fed, TOTTORI, code, "r-issue")
    # The certificate names the card, never its holder.
    der = cert.public_bytes(serialization.Encoding.DER)
    assert code.encode() not in der
    assert code not in cert.subject.rfc4514_string()
    uri = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (card_uri,) = uri.get_values_for_type(x509.UniformResourceIdentifier)
    assert card_uri.startswith(f"jukinet://resident-card/{TOTTORI}/") and code not in card_uri

    home = await prove(fed, TOTTORI, reader, "r-issue")
    assert (home.issuing_local_government_code, home.resident_code) == (TOTTORI, code)
    await until(crl_held(fed, CHIYODA, TOTTORI), PROPAGATION)
    away = await prove(fed, CHIYODA, reader, "r-issue")
    assert (away.card_id, away.issuing_local_government_code) == (home.card_id, TOTTORI)
    assert away.resident_code == ""  # only the home node knows the holder

    # One valid card per resident.
    assert await refused(reader.issue(fed, TOTTORI, code, "r-second")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "card-held",
    )
    # Another municipality's node issues no card to Tottori's resident (not its register).
    assert (await refused(reader.issue(fed, YONAGO, code, "r-foreign")))[0] == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_three_wrong_pins_lock_the_card_everywhere_until_the_counter_unlocks_it(
    fed: Federation, reader: Reader
) -> None:
    code = await born(fed)
    await reader.issue(fed, TOTTORI, code, "r-lock")
    await until(crl_held(fed, YONAGO, TOTTORI), PROPAGATION)
    for left in (2, 1):
        with pytest.raises(card.WrongPin, match=f"{left} tr"):
            await prove(fed, TOTTORI, reader, "r-lock", pin="9999")
    with pytest.raises(card.CardLocked):
        await prove(fed, TOTTORI, reader, "r-lock", pin="9999")
    # Locked: the right PIN is not even presented, at another node's terminal either.
    with pytest.raises(card.CardLocked):
        await prove(fed, YONAGO, reader, "r-lock")
    # ... nor by another process (another terminal's middleware on the same card).
    other = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            "import sys; from jukinet import card\n"
            "try:\n"
            f"    card.open_resident_card(card.load_module(), {PIN!r}, label='r-lock')\n"
            "except card.CardLocked: sys.exit(3)\n",
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(reader.hsm.config)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert other.returncode == 3, other.stderr

    # Unlocked only at the counter of the issuing municipality, by a supervisor.
    subject = x509.load_der_x509_certificate(reader.certificate("r-lock")).subject
    card_id = str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    assert (await refused(cards_of(fed, YONAGO).UnlockCard(C.UnlockCardRequest(card_id=card_id))))[
        0
    ] == grpc.StatusCode.NOT_FOUND
    clerk = await fed.session(TOTTORI, [1], operator_id="card-clerk")
    clerk_cards = card_pb2_grpc.ResidentCardServiceStub(clerk.channel)
    assert await refused(clerk_cards.UnlockCard(C.UnlockCardRequest(card_id=card_id))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "role-missing",
    )
    unlocked = await cards_of(fed, TOTTORI).UnlockCard(
        C.UnlockCardRequest(card_id=card_id), timeout=TIMEOUT
    )
    with pytest.raises(card.BadPin):
        reader.unlock("r-lock", unlocked.security_officer_pin, "12345")
    reader.unlock("r-lock", unlocked.security_officer_pin, "4321")
    assert (await prove(fed, YONAGO, reader, "r-lock", pin="4321")).card_id == card_id


async def test_a_lost_card_is_refused_at_another_prefecture_within_the_stated_time(
    fed: Federation, reader: Reader
) -> None:
    code = await born(fed)
    cert = await reader.issue(fed, TOTTORI, code, "r-lost")
    await until(crl_held(fed, CHIYODA, TOTTORI), PROPAGATION)
    await prove(fed, CHIYODA, reader, "r-lost")
    revoked = await cards_of(fed, TOTTORI).RevokeCard(
        C.RevokeCardRequest(resident_code=code, reason=C.CARD_REVOCATION_REASON_LOST),
        timeout=TIMEOUT,
    )
    assert int(revoked.serial, 16) == cert.serial_number
    # At home at once: the record is ahead of any CRL.
    assert (await refused(prove(fed, TOTTORI, reader, "r-lost")))[1] == "card-revoked"
    took = await until(crl_held(fed, CHIYODA, TOTTORI, cert.serial_number), PROPAGATION)
    assert took < PROPAGATION
    assert await refused(prove(fed, CHIYODA, reader, "r-lost")) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "card-revoked",
    )
    # A new card may be issued once the old one is revoked.
    await reader.issue(fed, TOTTORI, code, "r-new")


async def test_a_card_lapses_with_the_move_out_and_is_continued_within_90_days(
    fed: Federation, reader: Reader
) -> None:
    code = await born(fed)
    old = await reader.issue(fed, TOTTORI, code, "r-move")
    today = dt.date.today().isoformat()
    certificate = await move_out(fed, code, TOTTORI, YONAGO, effective_date=today)
    await until(crl_held(fed, CHIYODA, TOTTORI, old.serial_number), PROPAGATION)
    assert await refused(prove(fed, CHIYODA, reader, "r-move")) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "card-lapsed",
    )
    await move_in(fed, certificate, YONAGO, address=ADDRESS[YONAGO], effective_date=today)
    old_der = old.public_bytes(serialization.Encoding.DER)
    # The old municipality continues nothing; the new one, for its resident.
    assert (
        await refused(
            cards_of(fed, TOTTORI).ContinueCard(
                C.ContinueCardRequest(resident_code=code, card_certificate=old_der)
            )
        )
    )[0] == grpc.StatusCode.INVALID_ARGUMENT
    continued = await cards_of(fed, YONAGO).ContinueCard(
        C.ContinueCardRequest(resident_code=code, card_certificate=old_der), timeout=TIMEOUT
    )
    new = x509.load_der_x509_certificate(continued.certificate)
    assert new.public_key() == old.public_key()
    proof = await prove(fed, YONAGO, reader, "r-move", certificate=continued.certificate)
    assert (proof.issuing_local_government_code, proof.resident_code) == (YONAGO, code)
    await until(crl_held(fed, CHIYODA, YONAGO), PROPAGATION)
    away = await prove(fed, CHIYODA, reader, "r-move", certificate=continued.certificate)
    assert away.card_id == continued.card_id


async def test_no_continuation_more_than_90_days_after_the_move_in(
    fed: Federation, reader: Reader
) -> None:
    code = await born(fed)
    old = await reader.issue(fed, TOTTORI, code, "r-late")
    long_ago = (dt.date.today() - dt.timedelta(days=91)).isoformat()
    certificate = await move_out(fed, code, TOTTORI, YONAGO, effective_date=long_ago)
    await move_in(fed, certificate, YONAGO, address=ADDRESS[YONAGO], effective_date=long_ago)
    await until(crl_held(fed, YONAGO, TOTTORI, old.serial_number), PROPAGATION)
    assert await refused(
        cards_of(fed, YONAGO).ContinueCard(
            C.ContinueCardRequest(
                resident_code=code,
                card_certificate=old.public_bytes(serialization.Encoding.DER),
            )
        )
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "continuation-too-late")


async def test_the_counter_commands(
    fed: Federation,
    reader: Reader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("JUKINET_SESSION", raising=False)
    monkeypatch.setenv("JUKINET_RESIDENT_PIN", PIN)
    monkeypatch.setenv("JUKINET_CARD_SO_PIN", BLANK_SO_PIN)
    code = await born(fed)
    reader.blank("r-cli")
    target = f"127.0.0.1:{fed.municipal_ports[TOTTORI]}"
    at_counter = session_options(target, fed.pki_dir, TOTTORI, fed.sessions[TOTTORI])

    jukinet = functools.partial(run_cli, capsys, reader.hsm)

    status, out, err = await jukinet(
        "card", "issue-resident", "--resident", code, "--card", "r-cli", *at_counter
    )
    assert status == 0, err
    assert out.startswith("issued resident card ")
    status, out, err = await jukinet("card", "verify", "--card", "r-cli", *at_counter)
    assert (status, code in out, TOTTORI in out) == (0, True, True), err
    monkeypatch.setenv("JUKINET_RESIDENT_PIN", "0000")
    assert (await jukinet("card", "verify", "--card", "r-cli", *at_counter))[0] == 1
    status, out, err = await jukinet(
        "card", "revoke-resident", "--resident", code, "--reason", "lost", *at_counter
    )
    assert status == 0, err
    monkeypatch.setenv("JUKINET_RESIDENT_PIN", PIN)
    status, out, err = await jukinet("card", "verify", "--card", "r-cli", *at_counter)
    assert status == 1 and "card-revoked" in err, err
