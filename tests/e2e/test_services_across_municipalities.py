"""The resident card, moving with it and wide-area copies over real node processes
(:class:`tools.localfed.LocalFederation`), within a prefecture (鳥取市 and 米子市,
鳥取県) and across two (鳥取市 and 千代田区, 東京都), on SQLite and on PostgreSQL.

- A card issued at 鳥取市 proves at 米子市 and at 千代田区 once the card CA's CRL
  has reached them; revoked as lost at home, it is refused at 千代田区
  (``card-revoked``).
- Two card holders of 鳥取市 file their move-outs by post (付記転出届), one to 米子市
  and one to 千代田区, and move in there with the card (特例転入), the card
  continued: each keeps their resident code, the card holds the new certificate
  and proves at the new counter, and 鳥取市 makes each move-out final exactly once.
- Copies issued at 米子市 (広域交付) of a 千代田区 record and of a 鳥取市 household
  verify against the federation CA; a copy naming someone of another household is
  refused (``not-household-member``), and 鳥取市's disclosure lists the copy 米子市
  asked for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jukinet import card, cardclient, copydoc
from jukinet.errors import error_metadata
from jukinet.v1 import (
    card_pb2,
    card_pb2_grpc,
    common_pb2,
    municipal_pb2,
    municipal_pb2_grpc,
    provision_pb2,
)
from jukinet.validation import today
from tools.localfed import RESIDENT_CARD_SO_PIN, Databases, LocalFederation

# One federation per backend for the module's tests, on the module's event loop;
# under pytest-xdist they stay on one worker (the federation starts once).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("services-across-municipalities"),
]

TOTTORI, YONAGO, CHIYODA = "312011", "312029", "131016"
MUNICIPALITIES = (TOTTORI, YONAGO, CHIYODA)
ADDRESS = {
    TOTTORI: "鳥取県鳥取市東町1丁目220番地",
    YONAGO: "鳥取県米子市加茂町二丁目180番地",
    CHIYODA: "東京都千代田区永田町1丁目7番1号",
}
PIN = "4821"
TIMEOUT = 30.0
CRL_WAIT = 30.0
"""Seconds to wait for 鳥取市's card CA's CRL at another node (CRLs travel every second)."""
CONFIRM_WAIT = 60.0
"""Seconds to wait for the move-in notice to make a move-out final at the old municipality."""
CONFIRMED = municipal_pb2.REGISTER_CHANGE_MOVE_OUT_CONFIRMED
M = municipal_pb2
T = TypeVar("T")

PG_SKIPPED = os.environ.get("JUKINET_TEST_PG", "").lower() == "skip"
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(PG_SKIPPED, reason="PostgreSQL skipped"),
        ],
    ),
]


@dataclass
class Counters:
    """A running federation and, at each municipality, its counter operator's stubs."""

    fed: LocalFederation
    municipal: dict[str, municipal_pb2_grpc.MunicipalServiceAsyncStub]
    cards: dict[str, card_pb2_grpc.ResidentCardServiceAsyncStub]


@pytest.fixture(scope="module", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """Each database backend in turn; PostgreSQL must then answer."""
    if request.param == "postgres":
        request.getfixturevalue("pg_available")
    return str(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def counters(
    tmp_path_factory: pytest.TempPathFactory, backend_name: str
) -> AsyncIterator[Counters]:
    """National, 鳥取県, 東京都, 鳥取市, 米子市 and 千代田区 as processes on ``backend_name``,
    exchanging card CRLs every second; each municipality's counter logged in."""
    workdir = tmp_path_factory.mktemp(f"services-{backend_name}")
    databases = Databases(backend_name, workdir / "data", prefix="jkservices")
    every = {"card_crl_interval": 1, "directory_refresh_interval": 2}
    fed = LocalFederation(
        workdir,
        MUNICIPALITIES,
        databases=databases,
        settings={tier: every for tier in ("national", "prefecture", "municipal")},
    )
    channels: list[grpc.aio.Channel] = []
    try:
        await fed.prepare()
        await fed.start_all()
        municipal = {}
        cards = {}
        for code in MUNICIPALITIES:
            channel = fed.channel(f"municipality-{code}")
            channels.append(channel)
            municipal[code] = municipal_pb2_grpc.MunicipalServiceStub(channel)
            cards[code] = card_pb2_grpc.ResidentCardServiceStub(channel)
        yield Counters(fed, municipal, cards)
    finally:
        for channel in channels:
            await channel.close(grace=None)
        await fed.close()


async def within(seconds: float, attempt: Callable[[], Awaitable[T | None]], what: str) -> T:
    """The first answer of ``attempt`` that is not None, tried every 0.2 s for at most
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        answer = await attempt()
        if answer is not None:
            return answer
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        await asyncio.sleep(0.2)


async def born(
    c: Counters,
    code: str,
    name: str,
    kana: str,
    birth_date: str,
    *,
    household_id: str = "",
    relationship: M.Relationship.ValueType = M.RELATIONSHIP_UNSPECIFIED,
) -> M.Resident:
    """A resident registered by birth at municipality ``code``."""
    answer = await c.municipal[code].RegisterBirth(
        M.RegisterBirthRequest(
            person=M.PersonDetails(
                name=name,
                name_kana=kana,
                birth_date=birth_date,
                sex=common_pb2.SEX_FEMALE,
                address=ADDRESS[code],
            ),
            household_id=household_id,
            register=M.RegisterItems(relationship=relationship),
        ),
        timeout=TIMEOUT,
    )
    return answer.resident


async def card_holder(c: Counters, name: str, kana: str) -> tuple[str, str, str]:
    """A resident born at 鳥取市 who gets a card there: the resident code, the card's
    label in the reader and its card id."""
    resident = await born(c, TOTTORI, name, kana, "1990-06-15")
    code = resident.resident_code
    label = await c.fed.blank_resident_card(code, PIN)
    issued = await cardclient.issue_card(
        c.cards[TOTTORI],
        code,
        pin=PIN,
        so_pin=RESIDENT_CARD_SO_PIN,
        label=label,
        call_timeout=TIMEOUT,
    )
    return code, label, issued.card_id


async def prove(c: Counters, at: str, label: str) -> card_pb2.ProveCardResponse:
    """The card ``label`` proves its holder at ``at``'s counter, with its PIN."""
    return await cardclient.prove_card(c.cards[at], pin=PIN, label=label, call_timeout=TIMEOUT)


def no_crl_yet(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the node refused only because no CRL of the card's CA has reached it yet."""
    return exc.code() is grpc.StatusCode.UNAVAILABLE or (
        exc.code() is grpc.StatusCode.FAILED_PRECONDITION
        and "has reached this node yet" in (exc.details() or "")
    )


async def proved_at(c: Counters, at: str, label: str) -> card_pb2.ProveCardResponse:
    """The card's proof at ``at``, once 鳥取市's card CRL has reached that node."""

    async def attempt() -> card_pb2.ProveCardResponse | None:
        try:
            return await prove(c, at, label)
        except grpc.aio.AioRpcError as exc:
            if not no_crl_yet(exc):
                raise
            return None

    return await within(CRL_WAIT, attempt, f"the card proved at {at}")


async def refused_at(c: Counters, at: str, label: str) -> tuple[grpc.StatusCode, str]:
    """The status and reason ``at`` refuses the card with, once it no longer proves
    there (the new CRL has come)."""

    async def attempt() -> tuple[grpc.StatusCode, str] | None:
        try:
            await prove(c, at, label)
        except grpc.aio.AioRpcError as exc:
            if no_crl_yet(exc):
                return None
            return exc.code(), error_metadata(exc).get("jukinet-reason", "")
        return None  # the old CRL still: it proves

    return await within(CRL_WAIT, attempt, f"the card refused at {at}")


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The status and the ``jukinet-reason`` of a call that must be refused."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), error_metadata(info.value).get("jukinet-reason", "")


async def move_with_the_card(
    c: Counters, code: str, label: str, to: str
) -> M.SpecialMoveInResponse:
    """The card holder files the move-out to ``to`` by post, signed by the card, and
    moves in there with the card and its PIN, the card continued."""
    when = today().isoformat()
    filing = await asyncio.to_thread(
        functools.partial(
            cardclient.sign_move_out,
            pin=PIN,
            label=label,
            destination=to,
            planned=when,
            new_address=ADDRESS[to],
            signed_on=when,
        )
    )
    posted = await c.municipal[TOTTORI].MoveOutByPost(
        M.MoveOutByPostRequest(resident_code=code, filing=filing), timeout=TIMEOUT
    )
    assert posted.resident.resident_code == code
    assert posted.certificate_number

    async def attempt() -> M.SpecialMoveInResponse | None:
        try:
            return await cardclient.special_move_in(
                c.municipal[to],
                c.cards[to],
                M.SpecialMoveInRequest(effective_date=when, continue_card=True),
                pin=PIN,
                label=label,
                call_timeout=TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            if not no_crl_yet(exc):
                raise
            return None

    moved = await within(CRL_WAIT, attempt, f"the special move-in at {to}")
    assert moved.certificate_number == posted.certificate_number
    return moved


def certificate_on_card(label: str) -> bytes:
    """The certificate the card ``label`` holds now (DER); blocks (PKCS#11)."""
    with card.open_resident_card(card.load_module(), PIN, label=label) as resident_card:
        return resident_card.certificate.public_bytes(serialization.Encoding.DER)


async def confirmations(c: Counters, at: str, code: str) -> int:
    """How many times ``at``'s register made ``code``'s move-out final."""
    got = await c.municipal[at].GetResident(
        M.GetResidentRequest(resident_code=code), timeout=TIMEOUT
    )
    return sum(1 for e in got.events if e.register_change == CONFIRMED)


async def verified(c: Counters, document: bytes) -> copydoc.VerifiedCopy:
    """The signed copy, checked offline against the federation's root CA."""
    ca = x509.load_pem_x509_certificate((c.fed.pki_dir / "ca.pem").read_bytes())
    return await asyncio.to_thread(copydoc.verify_copy, document, ca=ca)


def photo_id(applicant: str, home: str, *members: str) -> M.IssueCopyRequest:
    """A copy request of an applicant the counter identified by a photo ID."""
    return M.IssueCopyRequest(
        resident_code=applicant,
        home_local_government_code=home,
        member_resident_codes=list(members),
        include_relationship=True,
        identification=M.APPLICANT_IDENTIFICATION_PHOTO_ID,
    )


async def test_the_resident_card_proves_anywhere_until_revoked_and_moves_with_its_holder(
    counters: Counters,
) -> None:
    c = counters
    # 1. A card issued at 鳥取市, proved within the prefecture and across, then lost.
    code, label, card_id = await card_holder(c, "鳥取 花子", "トットリ ハナコ")
    home = await prove(c, TOTTORI, label)
    assert (home.card_id, home.issuing_local_government_code) == (card_id, TOTTORI)
    assert home.resident_code == code
    for at in (YONAGO, CHIYODA):
        away = await proved_at(c, at, label)
        assert (away.card_id, away.issuing_local_government_code) == (card_id, TOTTORI)
        assert away.resident_code == ""  # only the home node knows the holder
    revoked = await cardclient.revoke_card(
        c.cards[TOTTORI], code, card_pb2.CARD_REVOCATION_REASON_LOST, call_timeout=TIMEOUT
    )
    assert revoked.card_id == card_id
    # At home at once: the node re-signed its CRL before it answered.
    assert (await refusal(prove(c, TOTTORI, label)))[1] == "card-revoked"
    assert await refused_at(c, CHIYODA, label) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "card-revoked",
    )

    # 2. Two card holders move with the card: within the prefecture and across.
    movers = {
        YONAGO: await card_holder(c, "鳥取 桜", "トットリ サクラ"),
        CHIYODA: await card_holder(c, "鳥取 楓", "トットリ カエデ"),
    }
    for to, (code, label, old_card) in movers.items():
        moved = await move_with_the_card(c, code, label, to)
        assert moved.resident.resident_code == code
        assert moved.resident.person.address == ADDRESS[to]
        assert moved.card_id and moved.card_id != old_card
        assert await asyncio.to_thread(certificate_on_card, label) == moved.card_certificate
        proof = await prove(c, to, label)
        assert (proof.card_id, proof.issuing_local_government_code) == (moved.card_id, to)
        assert proof.resident_code == code

    async def all_final() -> bool | None:
        counts = [await confirmations(c, TOTTORI, code) for code, _, _ in movers.values()]
        return True if all(counts) else None

    await within(CONFIRM_WAIT, all_final, "both move-outs final at 鳥取市")
    for code, _, _ in movers.values():
        assert await confirmations(c, TOTTORI, code) == 1


async def test_wide_area_copies_within_a_prefecture_and_across_two(counters: Counters) -> None:
    c = counters
    # Across: a 千代田区 resident's own record, issued at 米子市.
    chiyoda = await born(c, CHIYODA, "千代田 桃子", "チヨダ モモコ", "1985-02-03")
    across = await c.municipal[YONAGO].IssueCopy(
        photo_id(chiyoda.resident_code, CHIYODA), timeout=TIMEOUT
    )
    copy = await verified(c, across.document)
    assert copy.signer_code == YONAGO
    assert copy.answer.local_government_code == CHIYODA
    assert [e.name for e in copy.answer.entries] == ["千代田 桃子"]

    # Within: a 鳥取市 household's copy, issued at 米子市.
    head = await born(c, TOTTORI, "因幡 一郎", "イナバ イチロウ", "1970-01-02")
    wife = await born(
        c,
        TOTTORI,
        "因幡 花子",
        "イナバ ハナコ",
        "1972-03-04",
        household_id=head.household_id,
        relationship=M.RELATIONSHIP_WIFE,
    )
    other = await born(c, TOTTORI, "隣 太郎", "トナリ タロウ", "1980-05-06")
    before = dt.datetime.now(dt.UTC)
    within_prefecture = await c.municipal[YONAGO].IssueCopy(
        photo_id(head.resident_code, TOTTORI, head.resident_code, wife.resident_code),
        timeout=TIMEOUT,
    )
    copy = await verified(c, within_prefecture.document)
    assert copy.signer_code == YONAGO
    assert copy.answer.local_government_code == TOTTORI
    assert [e.name for e in copy.answer.entries] == ["因幡 一郎", "因幡 花子"]

    # Someone of another household on the copy: refused by the home municipality.
    assert await refusal(
        c.municipal[YONAGO].IssueCopy(
            photo_id(head.resident_code, TOTTORI, head.resident_code, other.resident_code),
            timeout=TIMEOUT,
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "not-household-member")

    # The disclosure at home lists who asked, where and when; the refusal showed nothing.
    await c.fed.wait_delivered(within=30)
    disclosed = await c.municipal[TOTTORI].DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=wife.resident_code), timeout=TIMEOUT
    )
    (given,) = disclosed.copies
    assert given.issuing_local_government_code == YONAGO
    assert given.operator == f"jukinet://operator/{YONAGO}/counter"
    assert given.terminal == f"jukinet://terminal/{YONAGO}/desk1"
    assert given.applicant_code == head.resident_code
    assert given.request_id == within_prefecture.request_id
    assert given.relationship_shown and not given.code_shown and not given.resident_card
    assert before <= dt.datetime.fromisoformat(given.requested_at) <= dt.datetime.now(dt.UTC)
    untouched = await c.municipal[TOTTORI].DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=other.resident_code), timeout=TIMEOUT
    )
    assert list(untouched.copies) == []
