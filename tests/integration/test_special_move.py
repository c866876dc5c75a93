"""Moving with the resident card (転出・転入の特例) over real nodes, real mTLS and real
SoftHSM2 cards: the move-out filed by post with the card's signature (付記転出届)
at the home municipality, and the special move-in (特例転入) at the new one with
the card and its PIN, which pulls the signed move-out certificate over the relay,
registers the resident with the same code through the move-in path and continues
the card. Each refusal: a wrong PIN, a revoked or lapsed card, a move abroad by
post, a tampered filing, a move-in past 14 or 30 days (the paper certificate
route still works), a municipality that is not the filed destination, a card
that filed nothing; and the same relayed request answered the same twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from jukinet import card
from jukinet.clock import japan_date
from jukinet.reasons import Reason
from jukinet.relay.endpoint import RelayRefused
from jukinet.residentcard import filing_message, sign_filing
from jukinet.v1 import card_pb2, common_pb2, municipal_pb2, relay_pb2
from services.municipal import repository as repo
from tests.federation import Federation, move_in, run_cli, session_options
from tests.integration.test_move_in_notice import ADDRESS, born, until_final
from tests.integration.test_resident_cards import (
    PIN,
    PROPAGATION,
    TIMEOUT,
    Reader,
    cards_of,
    crl_held,
    prove,
    refused,
    until,
)

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
M = municipal_pb2


@pytest.fixture(name="reader")
def card_reader(tmp_path: Path) -> Reader:
    """A fresh card reader."""
    return Reader(tmp_path / "reader")


def today() -> dt.date:
    """Today in Japan, as the nodes count days."""
    return japan_date(dt.datetime.now(dt.UTC))


def days(n: int) -> str:
    """The date ``n`` days from today (negative: ago)."""
    return (today() + dt.timedelta(days=n)).isoformat()


def signed_filing(
    reader: Reader,
    label: str,
    *,
    destination: str,
    planned: str,
    pin: str = PIN,
    abroad: bool = False,
) -> M.SignedMoveOutFiling:
    """The resident's card signs a move-out filing (what they post)."""
    return sign_filing(
        lambda data: reader.sign(label, pin, data),
        reader.certificate(label),
        destination="" if abroad else destination,
        planned=planned,
        new_address="" if abroad else ADDRESS[destination],
        signed_on=today().isoformat(),
        abroad=abroad,
    )


async def by_post(
    fed: Federation, code: str, filing: M.SignedMoveOutFiling
) -> M.MoveOutByPostResponse:
    """Tottori's counter enters the posted filing."""
    answer: M.MoveOutByPostResponse = await fed.operator(TOTTORI).MoveOutByPost(
        M.MoveOutByPostRequest(resident_code=code, filing=filing), timeout=TIMEOUT
    )
    return answer


async def holder(fed: Federation, reader: Reader, label: str) -> str:
    """A resident of Tottori with a card labelled ``label``; their code."""
    code = await born(fed)
    await reader.issue(fed, TOTTORI, code, label)
    return code


async def special_move_in(
    fed: Federation,
    at: str,
    reader: Reader,
    label: str,
    *,
    moved_in: str,
    pin: str = PIN,
    continue_card: bool = False,
) -> M.SpecialMoveInResponse:
    """The card holder at ``at``'s counter: the card signs the terminal's challenge
    after ``pin``, and the counter files the special move-in."""
    begun = await cards_of(fed, at).BeginCardProof(
        card_pb2.BeginCardProofRequest(), timeout=TIMEOUT
    )
    signature = await asyncio.to_thread(reader.sign, label, pin, begun.challenge)
    answer: M.SpecialMoveInResponse = await fed.operator(at).SpecialMoveIn(
        M.SpecialMoveInRequest(
            card_proof=M.CardProof(
                nonce=begun.nonce, card_certificate=reader.certificate(label), signature=signature
            ),
            effective_date=moved_in,
            continue_card=continue_card,
        ),
        timeout=TIMEOUT,
    )
    return answer


async def status_at(fed: Federation, at: str, code: str) -> int | None:
    """The resident's status in ``at``'s register (None: not in it)."""
    try:
        got = await fed.operator(at).GetResident(
            M.GetResidentRequest(resident_code=code), timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return None
    return int(got.resident.status)


async def card_status(fed: Federation, code: str) -> list[str]:
    """The statuses of the cards Tottori's record holds for ``code``."""
    db = fed.municipalities[TOTTORI].db
    async with db.read() as conn:
        resident = await repo.resident_by_code(conn, code)
        assert resident is not None
        rows = await conn.execute(
            repo.CARDS.select().where(repo.CARDS.c.resident_id == resident.id)
        )
        return [r.status for r in rows]


@pytest.mark.parametrize("new", [YONAGO, CHIYODA], ids=["same-prefecture", "other-prefecture"])
async def test_move_out_by_post_and_special_move_in_with_the_card(
    fed: Federation, reader: Reader, new: str
) -> None:
    code = await holder(fed, reader, "s-move")
    old_cert = x509.load_der_x509_certificate(reader.certificate("s-move"))
    posted = await by_post(
        fed, code, signed_filing(reader, "s-move", destination=new, planned=days(0))
    )
    assert posted.resident.status == M.RESIDENT_STATUS_REMOVED
    assert posted.resident.last_reason == common_pb2.CHANGE_REASON_MOVE_OUT
    assert posted.certificate_number
    # The card stays valid for the move-in at the new counter.
    assert await card_status(fed, code) == ["valid"]

    # The new municipality continues the card: it needs the card CA's CRL of Tottori.
    await until(crl_held(fed, new, TOTTORI), PROPAGATION)
    moved = await special_move_in(fed, new, reader, "s-move", moved_in=days(0), continue_card=True)
    assert moved.resident.resident_code == code
    assert moved.resident.entry_reason == common_pb2.CHANGE_REASON_SPECIAL_MOVE_IN
    assert moved.resident.person.address == ADDRESS[new]
    assert moved.certificate_number == posted.certificate_number
    # The move-in notice reached Tottori: the move-out is final, the old card lapsed.
    await until_final(fed, code)
    await until(lambda: _statuses(fed, code, ["lapsed"]), 10)
    # The continued card: the same key, certified by the new municipality.
    continued = x509.load_der_x509_certificate(moved.card_certificate)
    assert continued.public_key() == old_cert.public_key()
    proof = await prove(fed, new, reader, "s-move", certificate=moved.card_certificate)
    assert (proof.issuing_local_government_code, proof.resident_code) == (new, code)
    # The notification carried the certificate to the upper tiers like a paper move-in.
    got = await fed.operator(new).GetResident(M.GetResidentRequest(resident_code=code))
    assert got.notifications[-1].HasField("move_out_certificate")
    # Each counter's operation log names the resident of its operation.
    for at, operation in ((TOTTORI, "MoveOutByPost"), (new, "SpecialMoveIn")):
        async with fed.municipalities[at].db.read() as conn:
            rows = await fed.municipalities[at].log.oplog.rows(conn)
        assert [
            r.outcome for r in rows if r.operation == operation and code in r.resident_codes
        ] == ["ok"], (at, operation)


async def _statuses(fed: Federation, code: str, expected: list[str]) -> bool:
    return await card_status(fed, code) == expected


async def test_a_wrong_pin_signs_nothing_and_the_right_one_moves_in(
    fed: Federation, reader: Reader
) -> None:
    code = await holder(fed, reader, "s-pin")
    await by_post(fed, code, signed_filing(reader, "s-pin", destination=YONAGO, planned=days(0)))
    with pytest.raises(card.WrongPin):
        await special_move_in(fed, YONAGO, reader, "s-pin", moved_in=days(0), pin="9999")
    assert await status_at(fed, YONAGO, code) is None
    moved = await special_move_in(fed, YONAGO, reader, "s-pin", moved_in=days(0))
    assert moved.resident.resident_code == code and moved.card_id == ""


async def test_a_revoked_card_neither_files_nor_moves_in(fed: Federation, reader: Reader) -> None:
    code = await holder(fed, reader, "s-revoked")
    filing = signed_filing(reader, "s-revoked", destination=YONAGO, planned=days(0))
    other = await holder(fed, reader, "s-revoked-later")
    later = signed_filing(reader, "s-revoked-later", destination=YONAGO, planned=days(0))
    lost = card_pb2.CARD_REVOCATION_REASON_LOST
    await cards_of(fed, TOTTORI).RevokeCard(
        card_pb2.RevokeCardRequest(resident_code=code, reason=lost), timeout=TIMEOUT
    )
    assert (await refused(by_post(fed, code, filing)))[1] == Reason.CARD_REVOKED
    assert await status_at(fed, TOTTORI, code) == M.RESIDENT_STATUS_ACTIVE
    # Revoked after the filing: the new municipality's pull is refused.
    await by_post(fed, other, later)
    await cards_of(fed, TOTTORI).RevokeCard(
        card_pb2.RevokeCardRequest(resident_code=other, reason=lost), timeout=TIMEOUT
    )
    assert await refused(
        special_move_in(fed, YONAGO, reader, "s-revoked-later", moved_in=days(0))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.CARD_REVOKED)
    assert await status_at(fed, YONAGO, other) is None


async def test_a_lapsed_card_files_nothing(fed: Federation, reader: Reader) -> None:
    code = await holder(fed, reader, "s-lapsed")
    filing = signed_filing(reader, "s-lapsed", destination=CHIYODA, planned=days(0))
    # Moved out at the counter meanwhile: the card lapsed with it.
    await fed.operator(TOTTORI).MoveOut(
        M.MoveOutRequest(
            resident_code=code, destination_local_government_code=YONAGO, effective_date=days(0)
        ),
        timeout=TIMEOUT,
    )
    assert (await refused(by_post(fed, code, filing)))[1] == Reason.CARD_LAPSED
    assert await refused(special_move_in(fed, CHIYODA, reader, "s-lapsed", moved_in=days(0))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.CARD_LAPSED,
    )


async def test_a_move_abroad_is_not_filed_by_post(fed: Federation, reader: Reader) -> None:
    code = await holder(fed, reader, "s-abroad")
    filing = signed_filing(reader, "s-abroad", destination=YONAGO, planned=days(0), abroad=True)
    assert await refused(by_post(fed, code, filing)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MOVE_ABROAD_BY_POST,
    )
    assert await status_at(fed, TOTTORI, code) == M.RESIDENT_STATUS_ACTIVE


async def test_a_tampered_filing_or_another_residents_card_is_refused(
    fed: Federation, reader: Reader
) -> None:
    code = await holder(fed, reader, "s-tamper")
    filing = signed_filing(reader, "s-tamper", destination=YONAGO, planned=days(0))
    changed = M.MoveOutFiling.FromString(filing.filing)
    changed.destination_local_government_code = CHIYODA
    changed.new_address = ADDRESS[CHIYODA]
    tampered = M.SignedMoveOutFiling(filing=changed.SerializeToString(), signature=filing.signature)
    assert await refused(by_post(fed, code, tampered)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.FILING_SIGNATURE_INVALID,
    )
    other = await born(fed)
    assert await refused(by_post(fed, other, filing)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.CARD_NOT_HOLDERS,
    )
    assert await status_at(fed, TOTTORI, code) == M.RESIDENT_STATUS_ACTIVE
    assert await status_at(fed, TOTTORI, other) == M.RESIDENT_STATUS_ACTIVE
    # A filing is not a card proof's challenge, nor the other way round.
    begun = await cards_of(fed, TOTTORI).BeginCardProof(card_pb2.BeginCardProofRequest())
    proof = reader.sign("s-tamper", PIN, begun.challenge)
    assert (
        await refused(
            by_post(fed, code, M.SignedMoveOutFiling(filing=filing.filing, signature=proof))
        )
    )[1] == Reason.FILING_SIGNATURE_INVALID


@pytest.mark.parametrize(
    ("planned", "moved_in"),
    [(-20, -15), (-31, -5)],
    ids=["15-days-after-the-move-in", "31-days-after-the-planned-date"],
)
async def test_past_the_deadline_the_card_route_is_refused_and_the_certificate_route_works(
    fed: Federation, reader: Reader, planned: int, moved_in: int
) -> None:
    code = await holder(fed, reader, "s-late")
    await by_post(
        fed, code, signed_filing(reader, "s-late", destination=CHIYODA, planned=days(planned))
    )
    assert await refused(
        special_move_in(fed, CHIYODA, reader, "s-late", moved_in=days(moved_in))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.SPECIAL_MOVE_IN_TOO_LATE)
    assert await status_at(fed, CHIYODA, code) is None
    # The resident asks Tottori for the certificate and moves in with it.
    paper = await fed.operator(TOTTORI).ReissueMoveOutCertificate(
        M.ReissueMoveOutCertificateRequest(resident_code=code), timeout=TIMEOUT
    )
    moved = await move_in(
        fed, paper.certificate, CHIYODA, address=ADDRESS[CHIYODA], effective_date=days(moved_in)
    )
    assert moved.resident.resident_code == code
    assert moved.resident.entry_reason == common_pb2.CHANGE_REASON_MOVE_IN
    await until_final(fed, code)
    await until(lambda: _statuses(fed, code, ["lapsed"]), 10)


async def test_only_the_filed_destination_gets_the_move_out_data(
    fed: Federation, reader: Reader
) -> None:
    code = await holder(fed, reader, "s-forged")
    await by_post(
        fed, code, signed_filing(reader, "s-forged", destination=CHIYODA, planned=days(0))
    )
    # Yonago asks with the card's real proof at its own counter: not its move-out.
    assert await refused(special_move_in(fed, YONAGO, reader, "s-forged", moved_in=days(0))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.NOT_FILED_DESTINATION,
    )
    # Yonago replays a proof made at Chiyoda's counter: not a challenge of its terminals.
    begun = await cards_of(fed, CHIYODA).BeginCardProof(card_pb2.BeginCardProofRequest())
    request = relay_pb2.MoveOutDataRequest(
        card_certificate=reader.certificate("s-forged"),
        challenge=begun.challenge,
        card_signature=reader.sign("s-forged", PIN, begun.challenge),
    )
    with pytest.raises(RelayRefused) as replayed:
        await fed.municipalities[YONAGO].relay_client.send(
            TOTTORI, relay_pb2.RELAY_KIND_MOVE_OUT_DATA, request
        )
    assert replayed.value.wire_reason == Reason.CHALLENGE_INVALID
    # Chiyoda's own request, sent twice with one id and once more with another:
    # the same certificate each time, and the move-out stays as it was.
    client = fed.municipalities[CHIYODA].relay_client
    answers = [
        relay_pb2.MoveOutDataAnswer.FromString(
            await client.send(
                TOTTORI, relay_pb2.RELAY_KIND_MOVE_OUT_DATA, request, request_id=request_id
            )
        )
        for request_id in ("ab" * 16, "ab" * 16, "cd" * 16)
    ]
    assert answers[0] == answers[1]
    assert {a.certificate.certificate for a in answers} == {answers[0].certificate.certificate}
    assert answers[0].new_address == ADDRESS[CHIYODA]
    # The card still moves in once, at Chiyoda; again it is refused (the certificate
    # was used here, or the move-in notice already made the card lapse).
    moved = await special_move_in(fed, CHIYODA, reader, "s-forged", moved_in=days(0))
    assert moved.resident.resident_code == code
    assert (await refused(special_move_in(fed, CHIYODA, reader, "s-forged", moved_in=days(0))))[
        1
    ] in {Reason.MOVE_OUT_CERTIFICATE_REPLAYED, Reason.ALREADY_REGISTERED, Reason.CARD_LAPSED}


async def test_a_card_that_filed_nothing_is_sent_to_the_certificate_route(
    fed: Federation, reader: Reader
) -> None:
    code = await holder(fed, reader, "s-none")
    assert await refused(special_move_in(fed, YONAGO, reader, "s-none", moved_in=days(0))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.NO_MOVE_OUT_FILED,
    )
    assert await status_at(fed, TOTTORI, code) == M.RESIDENT_STATUS_ACTIVE
    # Tottori's own card at Tottori's counter: a move within is a relocation.
    assert (await refused(special_move_in(fed, TOTTORI, reader, "s-none", moved_in=days(0))))[
        0
    ] == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_commands_sign_post_and_move_in_with_the_card(
    fed: Federation,
    reader: Reader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("JUKINET_SESSION", raising=False)
    monkeypatch.setenv("JUKINET_RESIDENT_PIN", PIN)
    code = await holder(fed, reader, "s-cli")
    old = reader.certificate("s-cli")

    def counter(at: str) -> list[str]:
        target = f"127.0.0.1:{fed.municipal_ports[at]}"
        return session_options(target, fed.pki_dir, at, fed.sessions[at])

    jukinet = functools.partial(run_cli, capsys, reader.hsm)

    filing = tmp_path / "filing.txt"
    status, out, err = await jukinet(
        "card", "sign-move-out", "--card", "s-cli", "--to", YONAGO, "--date", days(0),
        "--address", ADDRESS[YONAGO], "--out", str(filing),
    )  # fmt: skip
    assert status == 0 and filing.read_text().startswith("-----BEGIN JUKINET MOVE-OUT FILING"), err
    status, out, err = await jukinet(
        "resident", "move-out-by-post", code, "--filing", str(filing), *counter(TOTTORI)
    )
    assert status == 0 and "certificate_number" in out, err
    # A wrong PIN: one line, nothing registered.
    monkeypatch.setenv("JUKINET_RESIDENT_PIN", "9999")
    status, out, err = await jukinet(
        "resident", "special-move-in", "--card", "s-cli", "--date", days(0), *counter(YONAGO)
    )
    assert status == 1 and "PIN" in err and "Traceback" not in err, err
    monkeypatch.setenv("JUKINET_RESIDENT_PIN", PIN)
    await until(crl_held(fed, YONAGO, TOTTORI), PROPAGATION)
    status, out, err = await jukinet(
        "resident", "special-move-in", "--card", "s-cli", "--date", days(0), "--continue-card",
        *counter(YONAGO),
    )  # fmt: skip
    assert status == 0 and code in out, err
    # The card now carries the certificate of Yonago's card CA, for the same key.
    renewed = reader.certificate("s-cli")
    assert renewed != old
    proof = await prove(fed, YONAGO, reader, "s-cli")
    assert (proof.issuing_local_government_code, proof.resident_code) == (YONAGO, code)


async def test_bad_input_is_refused_with_its_field_and_writes_nothing(
    fed: Federation, reader: Reader
) -> None:
    code = await holder(fed, reader, "s-bad")
    good = signed_filing(reader, "s-bad", destination=YONAGO, planned=days(0))

    def filing(**change: object) -> M.SignedMoveOutFiling:
        """``good`` with fields changed, signed again by the card."""
        f = M.MoveOutFiling.FromString(good.filing)
        for name, value in change.items():
            setattr(f, name, value)
        raw = f.SerializeToString()
        return M.SignedMoveOutFiling(
            filing=raw, signature=reader.sign("s-bad", PIN, filing_message(raw))
        )

    for bad, field in [
        (M.SignedMoveOutFiling(), "filing.filing"),
        (M.SignedMoveOutFiling(filing=b"\xff\xff", signature=good.signature), "filing.filing"),
        (filing(destination_local_government_code=TOTTORI), "filing."),
        (filing(destination_local_government_code="999999"), "filing."),
        (filing(new_address=ADDRESS[CHIYODA]), "filing.new_address"),
        (filing(planned_move_out_date="2026-02-30"), "filing.planned_move_out_date"),
        (filing(signed_on="yesterday"), "filing.signed_on"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await by_post(fed, code, bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert field in (info.value.details() or ""), info.value.details()
    # A card of another municipality signs nothing for Tottori.
    yonago = await born(fed, YONAGO)
    await reader.issue(fed, YONAGO, yonago, "s-bad-yonago")
    await until(crl_held(fed, TOTTORI, YONAGO), PROPAGATION)
    foreign = signed_filing(reader, "s-bad-yonago", destination=CHIYODA, planned=days(0))
    assert await refused(by_post(fed, code, foreign)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.CARD_INVALID,
    )
    assert await status_at(fed, TOTTORI, code) == M.RESIDENT_STATUS_ACTIVE

    # The special move-in's own input.
    chiyoda = fed.operator(CHIYODA)
    certificate = reader.certificate("s-bad")
    for request, status, reason in [
        (
            M.SpecialMoveInRequest(
                card_proof=M.CardProof(card_certificate=certificate), effective_date=days(0)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_ARGUMENT,
        ),
        (
            M.SpecialMoveInRequest(
                card_proof=M.CardProof(nonce=b"n" * 32, card_certificate=certificate),
                effective_date="2026-13-01",
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_ARGUMENT,
        ),
        (
            M.SpecialMoveInRequest(
                card_proof=M.CardProof(nonce=b"n" * 32, card_certificate=b"junk"),
                effective_date=days(0),
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            Reason.CARD_INVALID,
        ),
        (
            M.SpecialMoveInRequest(
                card_proof=M.CardProof(nonce=b"n" * 32, card_certificate=certificate),
                effective_date=days(0),
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            Reason.CHALLENGE_INVALID,
        ),
    ]:
        assert await refused(chiyoda.SpecialMoveIn(request, timeout=TIMEOUT)) == (
            status,
            reason,
        ), request

    # The relayed request's own input, as Tottori answers it.
    client = fed.municipalities[CHIYODA].relay_client
    begun = await cards_of(fed, CHIYODA).BeginCardProof(card_pb2.BeginCardProofRequest())
    for raw, reason in [
        (b"\xff\xff", Reason.INVALID_ARGUMENT),
        (
            relay_pb2.MoveOutDataRequest(
                card_certificate=certificate, challenge=b"not a challenge"
            ).SerializeToString(),
            Reason.INVALID_ARGUMENT,
        ),
        (
            relay_pb2.MoveOutDataRequest(
                card_certificate=reader.certificate("s-bad-yonago"),
                challenge=begun.challenge,
                card_signature=reader.sign("s-bad-yonago", PIN, begun.challenge),
            ).SerializeToString(),
            Reason.CARD_INVALID,
        ),
    ]:
        with pytest.raises(RelayRefused) as caught:
            await client.send(
                TOTTORI,
                relay_pb2.RELAY_KIND_MOVE_OUT_DATA,
                _Raw(raw),  # type: ignore[arg-type]
            )
        assert caught.value.wire_reason == reason, raw


class _Raw:
    """Bytes sent as they are, where the relay client takes a message."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        """The bytes, as the protobuf method is named."""
        return self.data
