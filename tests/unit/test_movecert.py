"""The move-out certificate: signing, every refusal of verification, the file form."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jukinet import movecert, pki
from jukinet.identity import Identity
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2
from jukinet.vocabulary import Person

A, B = "131016", "312011"
CODE = "12345678901"
ISSUER = Identity.municipality(A)
PERSON = Person(
    name="山田太郎",
    name_kana="ヤマダタロウ",
    former_surname="",
    alias="",
    birth_date="1990-01-02",
    sex=common_pb2.SEX_MALE,
    address="東京都千代田区一丁目1",
)


@dataclasses.dataclass
class Pki:
    """A throwaway federation CA."""

    ca: x509.Certificate
    directory: Path


def _load(issued: pki.Issued) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


@pytest.fixture
def ca(tmp_path: Path) -> Pki:
    return Pki(pki.create_ca(tmp_path), tmp_path)


def _signed(
    ca: Pki, identity: Identity = ISSUER, **kw: object
) -> tuple[common_pb2.SignedMoveOutCertificate, int]:
    issued = pki.issue(ca.directory, identity, f"n{len(list(ca.directory.iterdir()))}")
    cert, key = _load(issued)
    args: dict[str, object] = dict(
        issuer=A,
        resident_code=CODE,
        person=PERSON,
        planned_date="2026-04-01",
        destination=B,
        move_out_sequence=7,
        issued_at=dt.datetime.now(dt.UTC),
    )
    args.update(kw)
    body = movecert.build(**args)  # type: ignore[arg-type]
    return movecert.sign(body, key, cert), issued.serial


def _refused(reason: Reason, call: object) -> movecert.CertificateRefused:
    with pytest.raises(movecert.CertificateRefused) as info:
        call()  # type: ignore[operator]
    assert info.value.reason is reason
    return info.value


def test_a_signed_certificate_verifies_and_round_trips_as_a_file(ca: Pki) -> None:
    signed, serial = _signed(ca)
    back = movecert.dearmor(movecert.armor(signed))
    assert back == signed
    verified = movecert.verify(back, ca=ca.ca, revoked=frozenset())
    assert verified.signer_serial == serial
    assert verified.certificate.resident_code == CODE
    assert verified.certificate.move_out_sequence == 7
    assert verified.certificate.certificate_number.startswith(f"{A}-")
    movecert.check_fits(
        verified.certificate, resident_code=CODE, previous=A, destination=B, person=PERSON
    )
    text = movecert.document(verified.certificate)
    assert text.startswith("転出証明書") and f"住民票コード: {CODE}" in text


def test_a_missing_certificate_is_refused(ca: Pki) -> None:
    with pytest.raises(movecert.CertificateMissing) as info:
        movecert.verify(common_pb2.SignedMoveOutCertificate(), ca=ca.ca, revoked=frozenset())
    assert info.value.reason is Reason.MOVE_OUT_CERTIFICATE_MISSING
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_a_forged_signature_is_refused(ca: Pki) -> None:
    signed, _ = _signed(ca)
    body = common_pb2.MoveOutCertificate.FromString(signed.certificate)
    body.name = "偽者"
    forged = common_pb2.SignedMoveOutCertificate(
        certificate=body.SerializeToString(),
        signature=signed.signature,
        signer_certificate=signed.signer_certificate,
    )
    _refused(
        Reason.MOVE_OUT_CERTIFICATE_INVALID,
        lambda: movecert.verify(forged, ca=ca.ca, revoked=frozenset()),
    )


def test_a_signer_from_another_ca_is_refused(ca: Pki, tmp_path: Path) -> None:
    other = Pki(pki.create_ca(tmp_path / "other"), tmp_path / "other")
    signed, _ = _signed(other)
    _refused(
        Reason.MOVE_OUT_CERTIFICATE_INVALID,
        lambda: movecert.verify(signed, ca=ca.ca, revoked=frozenset()),
    )


def test_a_revoked_signer_is_refused(ca: Pki) -> None:
    signed, serial = _signed(ca)
    _refused(
        Reason.MOVE_OUT_CERTIFICATE_INVALID,
        lambda: movecert.verify(signed, ca=ca.ca, revoked=lambda: frozenset({serial})),
    )


def test_a_reissue_by_a_renewed_node_key_verifies(ca: Pki) -> None:
    # The contents, issue time included, are kept; the signer is checked as of now.
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3650)
    signed, _ = _signed(ca, issued_at=long_ago)
    verified = movecert.verify(signed, ca=ca.ca, revoked=frozenset())
    assert verified.certificate.issued_at == long_ago.isoformat()


def test_a_certificate_issued_in_the_future_is_refused(ca: Pki) -> None:
    ahead = dt.datetime.now(dt.UTC) + movecert.ISSUED_AHEAD + dt.timedelta(minutes=1)
    signed, _ = _signed(ca, issued_at=ahead)
    _refused(
        Reason.MOVE_OUT_CERTIFICATE_INVALID,
        lambda: movecert.verify(signed, ca=ca.ca, revoked=frozenset()),
    )
    signed, _ = _signed(ca, issued_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=4))
    movecert.verify(signed, ca=ca.ca, revoked=frozenset())


def test_a_signer_that_is_not_the_issuer_is_refused(ca: Pki) -> None:
    for identity in (Identity.municipality(B), Identity.prefecture("13"), Identity.national()):
        signed, _ = _signed(ca, identity)
        _refused(
            Reason.MOVE_OUT_CERTIFICATE_FOREIGN,
            lambda s=signed: movecert.verify(s, ca=ca.ca, revoked=frozenset()),
        )


def test_a_certificate_that_does_not_fit_the_move_in_is_refused(ca: Pki) -> None:
    signed, _ = _signed(ca)
    cert = movecert.verify(signed, ca=ca.ca, revoked=frozenset()).certificate
    for kw in (
        dict(resident_code="10987654321", previous=A, destination=B),
        dict(resident_code=CODE, previous="011002", destination=B),
        dict(resident_code=CODE, previous=A, destination="011002"),
        dict(
            resident_code=CODE,
            previous=A,
            destination=B,
            person=dataclasses.replace(PERSON, name="別人"),
        ),
    ):
        _refused(
            Reason.MOVE_OUT_CERTIFICATE_MISMATCH,
            lambda kw=kw: movecert.check_fits(cert, **kw),
        )


def test_a_damaged_file_is_refused() -> None:
    _refused(Reason.MOVE_OUT_CERTIFICATE_INVALID, lambda: movecert.dearmor("hello"))
    text = f"{movecert.ARMOR_BEGIN}\n!!!\n{movecert.ARMOR_END}\n"
    _refused(Reason.MOVE_OUT_CERTIFICATE_INVALID, lambda: movecert.dearmor(text))
