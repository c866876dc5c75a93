"""Copies of resident records issued at any municipality (広域交付) over real nodes:
the issuing municipality asks the home municipality over the relay (across
prefectures and within one), prints and signs the copy; the home municipality
checks the applicant and the household, leaves out the domicile always and the
relationship and resident code unless asked, and lists the copy in the
resident's disclosure; both operation logs hold the request."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from jukinet import copydoc
from jukinet.cli.main import main
from jukinet.errors import InvalidArgument
from jukinet.reasons import Reason
from jukinet.v1 import card_pb2, common_pb2, municipal_pb2, operator_pb2, provision_pb2, relay_pb2
from services.municipal.copies import ANSWER_OPERATION
from tests.federation import Federation, run_cli, session_options, trailers
from tests.integration.test_resident_cards import (
    PIN,
    PROPAGATION,
    Reader,
    cards_of,
    crl_held,
    reader,
    until,
)

__all__ = ["reader"]  # the fixture, used by name

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"  # another prefecture
TIMEOUT = 30
M = municipal_pb2
ADDRESS = {
    TOTTORI: "鳥取県鳥取市東町1丁目220番地",
    CHIYODA: "東京都千代田区永田町1丁目7番1号",
}
DOMICILE = "京都府京都市上京区京都御苑3番地"
DOMICILE_HEAD = "千代田　一郎"


async def verified(fed: Federation, document: bytes) -> copydoc.VerifiedCopy:
    """The copy checked against the federation's root CA (pyHanko runs a loop of its own)."""
    ca = x509.load_pem_x509_certificate((fed.pki_dir / "ca.pem").read_bytes())
    return await asyncio.to_thread(copydoc.verify_copy, document, ca=ca)


async def household(fed: Federation, code: str) -> tuple[str, str, str]:
    """A household of two at ``code`` with a registered domicile: the head's code,
    the wife's, and a resident of another household there."""
    clerk = fed.operator(code)
    register = M.RegisterItems(domicile=DOMICILE, domicile_head=DOMICILE_HEAD)
    head = await clerk.RegisterBirth(
        M.RegisterBirthRequest(
            person=M.PersonDetails(
                name="千代田 一郎",
                name_kana="チヨダ イチロウ",
                birth_date="1970-01-02",
                sex=common_pb2.SEX_MALE,
                address=ADDRESS[code],
            ),
            register=register,
        ),
        timeout=TIMEOUT,
    )
    wife = await clerk.RegisterBirth(
        M.RegisterBirthRequest(
            person=M.PersonDetails(
                name="千代田 花子",
                name_kana="チヨダ ハナコ",
                former_surname="髙橋",
                birth_date="1972-03-04",
                sex=common_pb2.SEX_FEMALE,
                address=ADDRESS[code],
            ),
            household_id=head.resident.household_id,
            register=M.RegisterItems(
                relationship=M.RELATIONSHIP_WIFE, domicile=DOMICILE, domicile_head=DOMICILE_HEAD
            ),
        ),
        timeout=TIMEOUT,
    )
    other = await clerk.RegisterBirth(
        M.RegisterBirthRequest(
            person=M.PersonDetails(
                name="隣 太郎",
                name_kana="トナリ タロウ",
                birth_date="1980-05-06",
                sex=common_pb2.SEX_MALE,
                address=ADDRESS[code],
            )
        ),
        timeout=TIMEOUT,
    )
    return head.resident.resident_code, wife.resident.resident_code, other.resident.resident_code


def photo_id(applicant: str, home: str, *members: str, **kw: Any) -> M.IssueCopyRequest:
    """A copy request of an applicant identified by a photo ID."""
    return M.IssueCopyRequest(
        resident_code=applicant,
        home_local_government_code=home,
        member_resident_codes=list(members),
        identification=M.APPLICANT_IDENTIFICATION_PHOTO_ID,
        **kw,
    )


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and reason of a refused call."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), trailers(info.value).get("jukinet-reason", "")


async def entries(fed: Federation, code: str, operation: str) -> list[Any]:
    """The operation log entries of ``operation`` at municipality ``code``."""
    app = fed.municipalities[code]
    async with app.db.read() as conn:
        rows = await app.log.oplog.rows(conn)
    return [r for r in rows if r.operation == operation]


@pytest.mark.parametrize(("home", "issuer"), [(CHIYODA, YONAGO), (TOTTORI, YONAGO)])
async def test_a_copy_issued_at_another_municipality(
    fed: Federation, home: str, issuer: str
) -> None:
    head, wife, _ = await household(fed, home)
    answer = await fed.operator(issuer).IssueCopy(photo_id(head, home), timeout=TIMEOUT)
    checked = await verified(fed, answer.document)
    assert checked.signer_code == issuer
    copy = checked.answer
    assert copy.local_government_code == home
    assert [e.name for e in copy.entries] == ["千代田 一郎"]
    assert copy.head_name == "千代田 一郎" and copy.household_address == ADDRESS[home]
    # Neither the relationship nor the code unless asked; the domicile never.
    assert (copy.entries[0].relationship, copy.entries[0].resident_code) == ("", "")
    assert DOMICILE.encode() not in answer.document
    assert DOMICILE not in str(copy) and DOMICILE_HEAD not in str(copy)

    # A household member's, with the relationship and the code asked for.
    answer = await fed.operator(issuer).IssueCopy(
        photo_id(head, home, head, wife, include_relationship=True, include_resident_code=True),
        timeout=TIMEOUT,
    )
    copy = (await verified(fed, answer.document)).answer
    assert [(e.name, e.relationship, e.resident_code) for e in copy.entries] == [
        ("千代田 一郎", "世帯主", head),
        ("千代田 花子", "妻", wife),
    ]
    assert copy.entries[1].former_surname == "髙橋"
    assert DOMICILE not in str(copy)

    # Both operation logs hold the request, with the residents, operator and terminal.
    issued = await entries(fed, issuer, "IssueCopy")
    assert [r.outcome for r in issued] == ["ok", "ok"]
    assert wife in issued[1].resident_codes
    answered = await entries(fed, home, ANSWER_OPERATION)
    assert [r.outcome for r in answered] == ["ok", "ok"]
    assert answered[1].operator == f"jukinet://operator/{issuer}/counter"
    assert answered[1].terminal == f"jukinet://terminal/{issuer}/desk1"
    assert head in answered[1].resident_codes and wife in answered[1].resident_codes


async def test_the_disclosure_at_home_lists_who_asked_where_and_when(fed: Federation) -> None:
    head, wife, _ = await household(fed, CHIYODA)
    before = dt.datetime.now(dt.UTC)
    await fed.operator(YONAGO).IssueCopy(
        photo_id(head, CHIYODA, wife, include_relationship=True), timeout=TIMEOUT
    )
    await fed.wait_delivered()
    disclosed = await fed.operator(CHIYODA).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=wife), timeout=TIMEOUT
    )
    (given,) = disclosed.copies
    assert given.issuing_local_government_code == YONAGO
    assert given.operator == f"jukinet://operator/{YONAGO}/counter"
    assert given.terminal == f"jukinet://terminal/{YONAGO}/desk1"
    assert given.applicant_code == head
    assert given.relationship_shown and not given.code_shown and not given.resident_card
    assert before <= dt.datetime.fromisoformat(given.requested_at) <= dt.datetime.now(dt.UTC)
    # The applicant's own disclosure lists none: the copy did not show their entry.
    own = await fed.operator(CHIYODA).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=head), timeout=TIMEOUT
    )
    assert list(own.copies) == []
    from gateway.disclosure import format_disclosure

    text = format_disclosure(disclosed)
    assert "米子市" in text and f"jukinet://operator/{YONAGO}/counter" in text


async def test_a_copy_at_home_is_answered_without_the_relay(fed: Federation) -> None:
    head, wife, _ = await household(fed, TOTTORI)
    answer = await fed.operator(TOTTORI).IssueCopy(
        photo_id(wife, TOTTORI, wife, head), timeout=TIMEOUT
    )
    copy = (await verified(fed, answer.document)).answer
    assert [e.name for e in copy.entries] == ["千代田 花子", "千代田 一郎"]
    relayed = [r for r in await entries(fed, TOTTORI, "Relay")]
    assert relayed == []
    (answered,) = await entries(fed, TOTTORI, ANSWER_OPERATION)
    assert answered.operator == f"jukinet://operator/{TOTTORI}/counter"


async def test_refusals(fed: Federation) -> None:
    head, wife, other = await household(fed, CHIYODA)
    clerk = fed.operator(YONAGO)
    # Someone outside the applicant's household.
    assert await refused(
        clerk.IssueCopy(photo_id(head, CHIYODA, head, other), timeout=TIMEOUT)
    ) == (grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_HOUSEHOLD_MEMBER)
    # An unknown applicant: NOT_FOUND, from the home municipality.
    unknown = "12345678903"
    assert await refused(clerk.IssueCopy(photo_id(unknown, CHIYODA), timeout=TIMEOUT)) == (
        grpc.StatusCode.NOT_FOUND,
        Reason.NOT_FOUND,
    )
    # Bad input, before any relay.
    sent = len(await entries(fed, YONAGO, "Relay"))
    for request in (
        photo_id("1234567890", CHIYODA),
        photo_id(head, "131017"),
        photo_id(head, CHIYODA, "12345678904"),
        photo_id(head, CHIYODA, wife, wife),
        M.IssueCopyRequest(resident_code=head, home_local_government_code=CHIYODA),
        photo_id(head, CHIYODA, card_proof=M.CardProof(nonce=b"x")),
        M.IssueCopyRequest(
            resident_code=head,
            home_local_government_code=CHIYODA,
            identification=M.APPLICANT_IDENTIFICATION_RESIDENT_CARD,
        ),
    ):
        code, reason = await refused(clerk.IssueCopy(request, timeout=TIMEOUT))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT)
    assert len(await entries(fed, YONAGO, "Relay")) == sent
    # A caller without the role (an auditor).
    auditor = await fed.session(YONAGO, [operator_pb2.ROLE_AUDITOR])
    assert await refused(auditor.municipal.IssueCopy(photo_id(head, CHIYODA), timeout=TIMEOUT)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.ROLE_MISSING,
    )
    # The refusals at home are logged with the residents asked for; nothing was recorded.
    answered = await entries(fed, CHIYODA, ANSWER_OPERATION)
    assert [(r.outcome, r.reason) for r in answered] == [
        ("refused", Reason.NOT_HOUSEHOLD_MEMBER),
        ("refused", Reason.NOT_FOUND),
    ]
    assert other in answered[0].resident_codes
    await fed.wait_delivered()
    disclosed = await fed.operator(CHIYODA).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=other), timeout=TIMEOUT
    )
    assert list(disclosed.copies) == []


async def card_proof(fed: Federation, at: str, reader: Reader, label: str) -> M.CardProof:
    """The card's proof of identity at municipality ``at``'s counter."""
    begun = await cards_of(fed, at).BeginCardProof(
        card_pb2.BeginCardProofRequest(), timeout=TIMEOUT
    )
    signature = await asyncio.to_thread(reader.sign, label, PIN, begun.challenge)
    return M.CardProof(
        nonce=begun.nonce, card_certificate=reader.certificate(label), signature=signature
    )


async def test_with_the_resident_card(fed: Federation, reader: Reader) -> None:
    head, wife, _ = await household(fed, TOTTORI)
    await reader.issue(fed, TOTTORI, head, "r-head")
    await reader.issue(fed, TOTTORI, wife, "r-wife")
    await until(crl_held(fed, YONAGO, TOTTORI), PROPAGATION)
    clerk = fed.operator(YONAGO)

    def with_card(applicant: str, proof: M.CardProof) -> M.IssueCopyRequest:
        return M.IssueCopyRequest(
            resident_code=applicant,
            home_local_government_code=TOTTORI,
            identification=M.APPLICANT_IDENTIFICATION_RESIDENT_CARD,
            card_proof=proof,
        )

    answer = await clerk.IssueCopy(
        with_card(head, await card_proof(fed, YONAGO, reader, "r-head")), timeout=TIMEOUT
    )
    assert (await verified(fed, answer.document)).answer.entries[0].name == ("千代田 一郎")
    # The wife's card is not the head's.
    proof = await card_proof(fed, YONAGO, reader, "r-wife")
    assert await refused(clerk.IssueCopy(with_card(head, proof), timeout=TIMEOUT)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.CARD_NOT_HOLDERS,
    )
    # The same proof again: its challenge was used.
    assert await refused(clerk.IssueCopy(with_card(wife, proof), timeout=TIMEOUT)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.CHALLENGE_INVALID,
    )
    # A card of the applicant's, but the applicant says they live elsewhere.
    proof = await card_proof(fed, YONAGO, reader, "r-head")
    request = with_card(head, proof)
    request.home_local_government_code = CHIYODA
    assert await refused(clerk.IssueCopy(request, timeout=TIMEOUT)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.CARD_NOT_HOLDERS,
    )
    await fed.wait_delivered()
    disclosed = await fed.operator(TOTTORI).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=head), timeout=TIMEOUT
    )
    assert [c.resident_card for c in disclosed.copies] == [True]


async def test_a_tampered_copy_fails_verify(
    fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head, _, _ = await household(fed, CHIYODA)
    answer = await fed.operator(YONAGO).IssueCopy(photo_id(head, CHIYODA), timeout=TIMEOUT)
    good = tmp_path / "copy.pdf"
    good.write_bytes(answer.document)
    ca = str(fed.pki_dir / "ca.pem")
    assert await asyncio.to_thread(main, ["copy", "verify", str(good), "--ca", ca]) == 0
    assert "米子市" in capsys.readouterr().out
    data = bytearray(answer.document)
    at = data.index(b"/Contents <") - 200  # a byte the signature covers
    data[at] ^= 0x01
    bad = tmp_path / "tampered.pdf"
    bad.write_bytes(bytes(data))
    assert await asyncio.to_thread(main, ["copy", "verify", str(bad), "--ca", ca]) == 1
    assert "NOT VALID" in capsys.readouterr().err


async def test_the_counter_command(
    fed: Federation,
    reader: Reader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("JUKINET_SESSION", raising=False)
    monkeypatch.setenv("JUKINET_RESIDENT_PIN", PIN)
    head, wife, other = await household(fed, TOTTORI)
    await reader.issue(fed, TOTTORI, wife, "r-cli")
    await until(crl_held(fed, CHIYODA, TOTTORI), PROPAGATION)
    target = f"127.0.0.1:{fed.municipal_ports[CHIYODA]}"
    at_counter = session_options(target, fed.pki_dir, CHIYODA, fed.sessions[CHIYODA])

    jukinet = functools.partial(run_cli, capsys, reader.hsm)

    out_file = tmp_path / "copy.pdf"
    status, out, err = await jukinet(
        "copy", "issue", "--applicant", head, "--home", TOTTORI, "--member", head,
        "--member", wife, "--relationship", "--photo-id", "--out", str(out_file), *at_counter,
    )  # fmt: skip
    assert status == 0, err
    assert "it verifies" in out and "千代田 花子" in out and "続柄 妻" in out
    assert (await verified(fed, out_file.read_bytes())).signer_code == CHIYODA
    # With the card: the home municipality is the card's.
    status, out, err = await jukinet(
        "copy", "issue", "--applicant", wife, "--card", "r-cli", "--resident-code",
        "--out", str(out_file), *at_counter,
    )  # fmt: skip
    assert status == 0, err
    assert f"住民票コード {wife}" in out
    # Refusals are one line naming the reason.
    status, out, err = await jukinet(
        "copy", "issue", "--applicant", head, "--home", TOTTORI, "--member", other,
        "--photo-id", "--out", str(out_file), *at_counter,
    )  # fmt: skip
    assert status == 1 and Reason.NOT_HOUSEHOLD_MEMBER in err, err
    status, out, err = await jukinet(
        "copy", "issue", "--applicant", "123", "--home", TOTTORI, "--photo-id",
        "--out", str(out_file), *at_counter,
    )  # fmt: skip
    assert status == 1 and "--applicant" in err, err


async def test_the_home_municipality_records_a_request_once_and_checks_its_words(
    fed: Federation,
) -> None:
    head, wife, _ = await household(fed, CHIYODA)
    home = fed.municipalities[CHIYODA].copies
    asked = relay_pb2.CopyRequest(
        resident_code=head,
        member_codes=[wife],
        operator=f"jukinet://operator/{YONAGO}/counter",
        terminal=f"jukinet://terminal/{YONAGO}/desk1",
    )
    request_id = "ab" * 16
    # The same request answered again (a retry after a crash): one record, one entry.
    first = await home.answer(asked, YONAGO, request_id)
    again = await home.answer(asked, YONAGO, request_id)
    assert first.entries == again.entries
    assert len(await entries(fed, CHIYODA, ANSWER_OPERATION)) == 1
    await fed.wait_delivered()
    disclosed = await fed.operator(CHIYODA).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=wife), timeout=TIMEOUT
    )
    assert [c.request_id for c in disclosed.copies] == [request_id]
    # An issuer names only its own operator and terminal, and a well-formed card id.
    for field, value in (
        ("operator", f"jukinet://operator/{TOTTORI}/counter"),
        ("operator", f"jukinet://terminal/{YONAGO}/desk1"),
        ("terminal", f"jukinet://terminal/{TOTTORI}/desk1"),
        ("card_id", "not-a-card"),
    ):
        forged = relay_pb2.CopyRequest()
        forged.CopyFrom(asked)
        setattr(forged, field, value)
        with pytest.raises(InvalidArgument) as caught:
            await home.answer(forged, YONAGO, "cd" * 16)
        assert caught.value.field == field
    # A resident who left is no longer answered for.
    await fed.operator(CHIYODA).RecordDeath(
        M.RecordDeathRequest(resident_code=wife, date_of_death=dt.date.today().isoformat()),
        timeout=TIMEOUT,
    )
    assert await refused(
        fed.operator(YONAGO).IssueCopy(photo_id(wife, CHIYODA), timeout=TIMEOUT)
    ) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.NOT_REGISTERED)
    assert await refused(
        fed.operator(YONAGO).IssueCopy(photo_id(head, CHIYODA, head, wife), timeout=TIMEOUT)
    ) == (grpc.StatusCode.PERMISSION_DENIED, Reason.NOT_HOUSEHOLD_MEMBER)
