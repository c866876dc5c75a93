"""The move-out certificate (転出証明書) at the municipal nodes, over real mTLS:
issued by the old municipality with its move-out, re-issued unchanged, and the
only ground of a domestic move-in at the new one. Every refusal leaves the new
municipality's register and outbox as they were."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from jukinet import movecert, pki
from jukinet.client import tls_files
from jukinet.codes import new_resident_code
from jukinet.identity import Identity
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2
from jukinet.vocabulary import Person
from services.municipal.app import certificate_keys
from tests.federation import Federation, move_in, move_out, trailers

TIMEOUT = 15
C = common_pb2
M = municipal_pb2

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
ADDRESS = {
    TOTTORI: "鳥取県鳥取市東町1丁目220番地",
    YONAGO: "鳥取県米子市加茂町1丁目1番地",
    CHIYODA: "東京都千代田区永田町1丁目7番1号",
}
PLANNED = "2025-04-10"


def person(address: str = ADDRESS[TOTTORI], **kw: object) -> M.PersonDetails:
    """A person with every identity item, a former surname included."""
    values: dict[str, object] = {
        "name": "米子 花子",
        "name_kana": "ヨナゴ ハナコ",
        "former_surname": "鳥取",
        "birth_date": "1984-07-21",
        "sex": C.SEX_FEMALE,
        "address": address,
    }
    values.update(kw)
    return M.PersonDetails(**values)  # type: ignore[arg-type]


def federation_ca(fed: Federation) -> x509.Certificate:
    """The federation CA's certificate."""
    return x509.load_pem_x509_certificate((fed.pki_dir / "ca.pem").read_bytes())


async def born(fed: Federation, municipality: str = TOTTORI) -> str:
    """A resident registered at ``municipality``; their code."""
    r = await fed.operator(municipality).RegisterBirth(
        M.RegisterBirthRequest(person=person(ADDRESS[municipality])), timeout=TIMEOUT
    )
    return r.resident.resident_code


async def moved_out(
    fed: Federation, to: str = YONAGO
) -> tuple[str, common_pb2.SignedMoveOutCertificate]:
    """A Tottori resident who moved out towards ``to``, and their certificate."""
    code = await born(fed)
    return code, await move_out(fed, code, TOTTORI, to, effective_date=PLANNED)


async def register_state(fed: Federation, municipality: str) -> tuple[int, int, int]:
    """The last notification sequence and the active and removed counts of a register."""
    s = await fed.operator(municipality).GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    return s.last_sequence, s.active_residents, s.removed_residents


async def refused_with(call: object) -> tuple[grpc.StatusCode, str]:
    """The status and reason a refused call got."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), trailers(info.value)["jukinet-reason"]


def body_of(signed: common_pb2.SignedMoveOutCertificate) -> common_pb2.MoveOutCertificate:
    """The certificate's contents, as signed."""
    return common_pb2.MoveOutCertificate.FromString(signed.certificate)


def signed_with(
    pki_dir: Path, cert_name: str, body: common_pb2.MoveOutCertificate
) -> common_pb2.SignedMoveOutCertificate:
    """``body`` signed with the key of certificate ``cert_name`` of ``pki_dir``."""
    keys = certificate_keys(tls_files(pki_dir, cert_name))
    return movecert.sign(body, keys.key, keys.certificate)


# --- issuing and re-issuing ---------------------------------------------------------


async def test_a_move_out_issues_a_certificate_that_verifies(fed: Federation) -> None:
    code = await born(fed)
    out = await fed.operator(TOTTORI).MoveOut(
        M.MoveOutRequest(
            resident_code=code, destination_local_government_code=YONAGO, effective_date=PLANNED
        ),
        timeout=TIMEOUT,
    )
    verified = movecert.verify(out.certificate, ca=federation_ca(fed), revoked=frozenset())
    cert = verified.certificate
    assert cert.certificate_number.startswith(f"{TOTTORI}-")
    assert cert.issuing_local_government_code == TOTTORI
    assert (cert.resident_code, cert.planned_move_out_date) == (code, PLANNED)
    assert cert.destination_local_government_code == YONAGO
    # The certificate names the sequence of the move-out notification it goes with.
    assert cert.move_out_sequence == out.notification_sequence
    assert Person.of(cert) == Person.of(person())
    assert movecert.document(cert).startswith("転出証明書")

    # A move abroad issues none.
    other = await born(fed)
    abroad = await fed.operator(TOTTORI).MoveOut(
        M.MoveOutRequest(resident_code=other, abroad=True, effective_date=PLANNED),
        timeout=TIMEOUT,
    )
    assert not abroad.HasField("certificate")


async def test_a_reissued_certificate_keeps_its_number_and_contents(fed: Federation) -> None:
    code, signed = await moved_out(fed)
    again = await fed.operator(TOTTORI).ReissueMoveOutCertificate(
        M.ReissueMoveOutCertificateRequest(resident_code=code), timeout=TIMEOUT
    )
    assert again.certificate.certificate == signed.certificate  # the very bytes
    verified = movecert.verify(again.certificate, ca=federation_ca(fed), revoked=frozenset())
    assert verified.certificate.certificate_number == body_of(signed).certificate_number


async def test_a_reissue_is_refused_for_a_resident_who_did_not_move_out(fed: Federation) -> None:
    op = fed.operator(TOTTORI)

    def reissue(code: str) -> object:
        return op.ReissueMoveOutCertificate(
            M.ReissueMoveOutCertificateRequest(resident_code=code), timeout=TIMEOUT
        )

    assert await refused_with(reissue(new_resident_code())) == (
        grpc.StatusCode.NOT_FOUND,
        Reason.NOT_FOUND,
    )
    living = await born(fed)
    assert await refused_with(reissue(living)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.NOT_MOVED_OUT,
    )
    abroad = await born(fed)
    await op.MoveOut(
        M.MoveOutRequest(resident_code=abroad, abroad=True, effective_date=PLANNED),
        timeout=TIMEOUT,
    )
    assert await refused_with(reissue(abroad)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.NOT_MOVED_OUT,
    )
    # Moved out to Yonago, then in again: no longer moved out.
    back, signed = await moved_out(fed)
    await move_in(fed, signed, YONAGO, address=ADDRESS[YONAGO], effective_date=PLANNED)
    returned = await move_out(fed, back, YONAGO, TOTTORI, effective_date="2025-06-01")
    await move_in(fed, returned, TOTTORI, address=ADDRESS[TOTTORI], effective_date="2025-06-01")
    assert await refused_with(reissue(back)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.NOT_MOVED_OUT,
    )


# --- the move-in that rests on it -----------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [M.MOVE_IN_ORIGIN_DOMESTIC, M.MOVE_IN_ORIGIN_DOMESTIC_SPECIAL],
    ids=["move-in", "special-move-in"],
)
async def test_a_move_in_registers_the_certificates_items_and_carries_it(
    fed: Federation, origin: M.MoveInOrigin.ValueType
) -> None:
    code, signed = await moved_out(fed, to=CHIYODA)
    # Only the new address: code, previous municipality and identity items
    # come from the certificate.
    moved = await fed.operator(CHIYODA).MoveIn(
        M.MoveInRequest(
            person=M.PersonDetails(address=ADDRESS[CHIYODA]),
            origin=origin,
            move_out_certificate=signed,
            effective_date=PLANNED,
        ),
        timeout=TIMEOUT,
    )
    assert moved.resident.resident_code == code
    expected = person(ADDRESS[CHIYODA])
    assert moved.resident.person == expected
    held = await fed.operator(CHIYODA).GetResident(
        M.GetResidentRequest(resident_code=code), timeout=TIMEOUT
    )
    (notification,) = held.notifications
    assert notification.move_out_certificate == signed
    assert notification.reason == (
        C.CHANGE_REASON_MOVE_IN
        if origin == M.MOVE_IN_ORIGIN_DOMESTIC
        else C.CHANGE_REASON_SPECIAL_MOVE_IN
    )
    await fed.wait_delivered()
    national = await fed.national_operator().GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=code), timeout=TIMEOUT
    )
    assert national.identity.record.local_government_code == CHIYODA
    assert national.identity.record.name == expected.name
    # The two halves of the move reach the national node in either order.
    (move_in,) = [h.notification for h in national.history if h.notification.origin_code == CHIYODA]
    assert move_in.move_out_certificate == signed


async def test_the_identity_items_may_be_entered_again_if_they_equal_the_certificates(
    fed: Federation,
) -> None:
    _code, signed = await moved_out(fed)
    # The reading in hiragana is the same reading: checked as katakana.
    again = person(ADDRESS[YONAGO], name_kana="よなご はなこ")
    moved = await move_in(
        fed, signed, YONAGO, address=ADDRESS[YONAGO], effective_date=PLANNED, person=again
    )
    assert moved.resident.person == person(ADDRESS[YONAGO])


async def test_a_move_in_may_be_dated_before_the_planned_move_out(fed: Federation) -> None:
    """The planned date is only planned: the move-in is dated the day of moving."""
    _code, signed = await moved_out(fed)
    moved = await move_in(fed, signed, YONAGO, address=ADDRESS[YONAGO], effective_date="2025-04-03")
    assert moved.resident.registered_on == "2025-04-03"


@dataclass(frozen=True)
class Case:
    """A move-in at Yonago that must be refused."""

    request: Callable[[Federation, str, common_pb2.SignedMoveOutCertificate], M.MoveInRequest]
    status: grpc.StatusCode
    reason: Reason
    to: str = YONAGO


def _request(
    signed: common_pb2.SignedMoveOutCertificate | None,
    *,
    code: str = "",
    previous: str = "",
    details: M.PersonDetails | None = None,
    origin: M.MoveInOrigin.ValueType = M.MOVE_IN_ORIGIN_DOMESTIC,
) -> M.MoveInRequest:
    request = M.MoveInRequest(
        person=details or M.PersonDetails(address=ADDRESS[YONAGO]),
        origin=origin,
        resident_code=code,
        previous_local_government_code=previous,
        effective_date=PLANNED,
    )
    if signed is not None:
        request.move_out_certificate.CopyFrom(signed)
    return request


def _forged(signed: common_pb2.SignedMoveOutCertificate) -> common_pb2.SignedMoveOutCertificate:
    body = body_of(signed)
    body.name = "偽者 花子"
    return common_pb2.SignedMoveOutCertificate(
        certificate=body.SerializeToString(),
        signature=signed.signature,
        signer_certificate=signed.signer_certificate,
    )


def _outsider(fed: Federation, signed: common_pb2.SignedMoveOutCertificate) -> M.MoveInRequest:
    """The certificate signed by a Tottori key from a CA outside the federation."""
    folder = fed.databases.folder / "outsider-ca"
    folder.mkdir(exist_ok=True)
    pki.create_ca(folder)
    pki.issue(folder, Identity.municipality(TOTTORI), f"municipality-{TOTTORI}")
    return _request(signed_with(folder, f"municipality-{TOTTORI}", body_of(signed)))


CASES: dict[str, Case] = {
    "no-certificate": Case(
        lambda fed, code, signed: _request(None, code=code, previous=TOTTORI, details=person()),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MOVE_OUT_CERTIFICATE_MISSING,
    ),
    "special-move-in-without-certificate": Case(
        lambda fed, code, signed: _request(
            None,
            code=code,
            previous=TOTTORI,
            details=person(),
            origin=M.MOVE_IN_ORIGIN_DOMESTIC_SPECIAL,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MOVE_OUT_CERTIFICATE_MISSING,
    ),
    "forged-signature": Case(
        lambda fed, code, signed: _request(_forged(signed)),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.MOVE_OUT_CERTIFICATE_INVALID,
    ),
    "signer-outside-the-federation": Case(
        lambda fed, code, signed: _outsider(fed, signed),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.MOVE_OUT_CERTIFICATE_INVALID,
    ),
    "certificate-for-another-code": Case(
        lambda fed, code, signed: _request(signed, code=new_resident_code()),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MOVE_OUT_CERTIFICATE_MISMATCH,
    ),
    "issued-by-another-than-the-previous-municipality": Case(
        lambda fed, code, signed: _request(signed, code=code, previous=CHIYODA),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MOVE_OUT_CERTIFICATE_MISMATCH,
    ),
    # Chiyoda's node key signs a certificate that says Tottori issued it.
    "signer-is-not-the-issuer": Case(
        lambda fed, code, signed: _request(
            signed_with(fed.pki_dir, f"municipality-{CHIYODA}", body_of(signed))
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.MOVE_OUT_CERTIFICATE_FOREIGN,
    ),
    "another-destination": Case(
        lambda fed, code, signed: _request(signed),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MOVE_OUT_CERTIFICATE_MISMATCH,
        to=CHIYODA,
    ),
    "other-identity-items": Case(
        lambda fed, code, signed: _request(
            signed, details=person(ADDRESS[YONAGO], name="別人 花子")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MOVE_OUT_CERTIFICATE_MISMATCH,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_a_move_in_without_a_fitting_certificate_is_refused(
    fed: Federation, case: Case
) -> None:
    code, signed = await moved_out(fed, to=case.to)
    before = await register_state(fed, YONAGO)
    request = case.request(fed, code, signed)
    got = await refused_with(fed.operator(YONAGO).MoveIn(request, timeout=TIMEOUT))
    assert got == (case.status, case.reason)
    assert await register_state(fed, YONAGO) == before
    assert await refused_with(
        fed.operator(YONAGO).GetResident(M.GetResidentRequest(resident_code=code), timeout=TIMEOUT)
    ) == (grpc.StatusCode.NOT_FOUND, Reason.NOT_FOUND)


async def test_a_certificate_is_used_once(fed: Federation) -> None:
    code, signed = await moved_out(fed)
    await move_in(fed, signed, YONAGO, address=ADDRESS[YONAGO], effective_date=PLANNED)
    # Gone again from Yonago, so that only the certificate stands in the way.
    await move_out(fed, code, YONAGO, CHIYODA, effective_date="2025-06-01")
    reissued = await fed.operator(TOTTORI).ReissueMoveOutCertificate(
        M.ReissueMoveOutCertificateRequest(resident_code=code), timeout=TIMEOUT
    )
    before = await register_state(fed, YONAGO)
    held = await fed.operator(YONAGO).GetResident(
        M.GetResidentRequest(resident_code=code), timeout=TIMEOUT
    )
    for again in (signed, reissued.certificate):
        got = await refused_with(
            fed.operator(YONAGO).MoveIn(
                _request(again, details=M.PersonDetails(address="鳥取県米子市錦町1丁目1番地")),
                timeout=TIMEOUT,
            )
        )
        assert got == (grpc.StatusCode.FAILED_PRECONDITION, Reason.MOVE_OUT_CERTIFICATE_REPLAYED)
        assert await register_state(fed, YONAGO) == before
        assert (
            await fed.operator(YONAGO).GetResident(
                M.GetResidentRequest(resident_code=code), timeout=TIMEOUT
            )
            == held
        )


async def test_a_move_in_from_abroad_takes_no_certificate(fed: Federation) -> None:
    _, signed = await moved_out(fed)
    before = await register_state(fed, YONAGO)
    request = _request(signed, details=person(ADDRESS[YONAGO]), origin=M.MOVE_IN_ORIGIN_ABROAD)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fed.operator(YONAGO).MoveIn(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(info.value)["jukinet-field"] == "move_out_certificate"
    assert await register_state(fed, YONAGO) == before
