"""The move-out certificate (転出証明書): issued and signed by the old
municipality's node, checked by the new municipality, the prefecture and the
national node before a domestic move-in is accepted.

Pure rules and cryptography: the caller hands in the node key, the CA
certificate and the revoked serials it already loads. The signature covers a
fixed prefix and the serialized certificate bytes as carried, so the signed
bytes are never re-serialized (protobuf serialization is not canonical).
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.message import DecodeError

from jukinet.errors import InvalidArgument, JukinetError
from jukinet.identity import Kind
from jukinet.pki import certificate_identity
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2
from jukinet.vocabulary import Person, person_values

DOMAIN_PREFIX = b"jukinet move-out certificate v1\x00"
"""Prefixed to the certificate bytes before signing: a node key's signature
over anything else (a TLS handshake, another document) is never one of these."""

ISSUED_AHEAD = dt.timedelta(minutes=5)
"""How far ahead of the checking node's clock a certificate's issue time may be
(the issuing node's clock may run ahead)."""

ARMOR_BEGIN = "-----BEGIN JUKINET MOVE-OUT CERTIFICATE-----"
ARMOR_END = "-----END JUKINET MOVE-OUT CERTIFICATE-----"

_STATUS: dict[Reason, grpc.StatusCode] = {
    Reason.MOVE_OUT_CERTIFICATE_INVALID: grpc.StatusCode.PERMISSION_DENIED,
    Reason.MOVE_OUT_CERTIFICATE_FOREIGN: grpc.StatusCode.PERMISSION_DENIED,
    Reason.MOVE_OUT_CERTIFICATE_REPLAYED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.MOVE_OUT_CERTIFICATE_NOT_HELD: grpc.StatusCode.PERMISSION_DENIED,
    Reason.MOVE_OUT_CERTIFICATE_MISMATCH: grpc.StatusCode.FAILED_PRECONDITION,
}


class CertificateRefused(JukinetError):
    """A move-out certificate was missing, invalid or does not fit the move-in."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message, reason=reason)
        self.code = _STATUS[reason]


class CertificateMissing(InvalidArgument):
    """A domestic move-in (or its notification) carries no move-out certificate."""

    reason = Reason.MOVE_OUT_CERTIFICATE_MISSING

    def __init__(self, field: str = "move_out_certificate") -> None:
        super().__init__(field, "a domestic move-in requires the move-out certificate")


def new_certificate_number(issuer: str) -> str:
    """A unique certificate number: the issuer's code and a random id."""
    return f"{issuer}-{secrets.token_hex(8)}"


def build(
    *,
    issuer: str,
    resident_code: str,
    person: Person,
    planned_date: str,
    destination: str,
    move_out_sequence: int,
    issued_at: dt.datetime,
    number: str | None = None,
) -> common_pb2.MoveOutCertificate:
    """The certificate for one move-out notification of ``issuer``."""
    return common_pb2.MoveOutCertificate(
        certificate_number=number or new_certificate_number(issuer),
        issuing_local_government_code=issuer,
        resident_code=resident_code,
        **person_values(person),
        planned_move_out_date=planned_date,
        destination_local_government_code=destination,
        move_out_sequence=move_out_sequence,
        issued_at=issued_at.astimezone(dt.UTC).isoformat(),
    )


def sign(
    certificate: common_pb2.MoveOutCertificate,
    key: ec.EllipticCurvePrivateKey,
    signer: x509.Certificate,
) -> common_pb2.SignedMoveOutCertificate:
    """Sign ``certificate`` with the issuing node's key (ECDSA P-256, SHA-256)."""
    body = certificate.SerializeToString()
    signature = key.sign(DOMAIN_PREFIX + body, ec.ECDSA(hashes.SHA256()))
    return common_pb2.SignedMoveOutCertificate(
        certificate=body, signature=signature, signer_certificate=signer.public_bytes(Encoding.DER)
    )


@dataclass(frozen=True)
class Verified:
    """A certificate whose signature, chain and issuer were checked."""

    certificate: common_pb2.MoveOutCertificate
    signer_serial: int


def _invalid(message: str) -> CertificateRefused:
    return CertificateRefused(Reason.MOVE_OUT_CERTIFICATE_INVALID, message)


def _parse_time(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _invalid("issued_at is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise _invalid("issued_at has no time zone")
    return when


def verify(
    signed: common_pb2.SignedMoveOutCertificate,
    *,
    ca: x509.Certificate,
    revoked: Callable[[], frozenset[int]] | frozenset[int],
    now: dt.datetime | None = None,
) -> Verified:
    """Check the signer's chain to ``ca``, its validity and revocation, that it
    is the node of the issuing municipality, and the signature."""
    if not signed.certificate and not signed.signature:
        raise CertificateMissing()
    now = now or dt.datetime.now(dt.UTC)
    try:
        cert = common_pb2.MoveOutCertificate.FromString(signed.certificate)
        signer = x509.load_der_x509_certificate(signed.signer_certificate)
    except (DecodeError, ValueError):
        raise _invalid("the certificate or its signer cannot be read") from None
    try:
        signer.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise _invalid("the signer is not issued by the federation CA") from None
    # The signer must be valid when the certificate is presented: a re-issue
    # keeps the contents (issued_at included) and is signed by the node's
    # current key, which may be younger than the first issue.
    if _parse_time(cert.issued_at) > now + ISSUED_AHEAD:
        raise _invalid("issued_at lies in the future")
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        raise _invalid("the signer's certificate is not valid now")
    serials = revoked() if callable(revoked) else revoked
    if signer.serial_number in serials:
        raise _invalid("the signer's certificate is revoked")
    try:
        identity = certificate_identity(signer)
    except ValueError:
        raise _invalid("the signer's certificate names no identity") from None
    if (
        identity.kind is not Kind.MUNICIPALITY
        or identity.code != cert.issuing_local_government_code
    ):
        raise CertificateRefused(
            Reason.MOVE_OUT_CERTIFICATE_FOREIGN,
            f"signed by {identity.uri}, not by the issuing municipality",
        )
    public = signer.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise _invalid("the signer's key is not an EC key")
    try:
        public.verify(
            signed.signature, DOMAIN_PREFIX + signed.certificate, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise _invalid("the signature does not match the certificate") from None
    return Verified(cert, signer.serial_number)


def check_fits(
    cert: common_pb2.MoveOutCertificate,
    *,
    resident_code: str,
    previous: str,
    destination: str,
    person: Person | None = None,
) -> None:
    """The certificate is for this code, from ``previous``, to ``destination``
    (if it names one) and, when given, carries exactly ``person``'s identity
    items other than the address (which changes with the move)."""
    if cert.resident_code != resident_code:
        raise CertificateRefused(
            Reason.MOVE_OUT_CERTIFICATE_MISMATCH, "the certificate is for another resident code"
        )
    if cert.issuing_local_government_code != previous:
        raise CertificateRefused(
            Reason.MOVE_OUT_CERTIFICATE_MISMATCH,
            "the certificate is not from the previous municipality",
        )
    if cert.destination_local_government_code not in ("", destination):
        raise CertificateRefused(
            Reason.MOVE_OUT_CERTIFICATE_MISMATCH, "the certificate names another destination"
        )
    if person is not None:
        ours = {k: v for k, v in person_values(person).items() if k != "address"}
        theirs = {k: v for k, v in person_from(cert).items() if k != "address"}
        if ours != theirs:
            raise CertificateRefused(
                Reason.MOVE_OUT_CERTIFICATE_MISMATCH,
                "the identity items differ from the certificate's",
            )


def person_from(cert: common_pb2.MoveOutCertificate) -> dict[str, object]:
    """The identity items the certificate carries, by vocabulary field."""
    return dict(person_values(cert))


def armor(signed: common_pb2.SignedMoveOutCertificate) -> str:
    """The signed certificate as a text file a person can carry."""
    body = base64.b64encode(signed.SerializeToString()).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([ARMOR_BEGIN, *lines, ARMOR_END]) + "\n"


def dearmor(text: str) -> common_pb2.SignedMoveOutCertificate:
    """Read a file written by :func:`armor`; refused as invalid otherwise."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise _invalid("not a move-out certificate file")
    try:
        raw = base64.b64decode("".join(lines[1:-1]), validate=True)
        return common_pb2.SignedMoveOutCertificate.FromString(raw)
    except (ValueError, DecodeError):
        raise _invalid("the certificate file is damaged") from None


_SEX = {1: "男", 2: "女"}


def document(cert: common_pb2.MoveOutCertificate) -> str:
    """The certificate as a document a person reads (Japanese labels)."""
    rows = [
        ("証明書番号", cert.certificate_number),
        ("発行市区町村", cert.issuing_local_government_code),
        ("住民票コード", cert.resident_code),
        ("氏名", cert.name),
        ("フリガナ", cert.name_kana),
        ("旧氏", cert.former_surname),
        ("通称", cert.alias),
        ("生年月日", cert.birth_date),
        ("性別", _SEX.get(cert.sex, "")),
        ("住所", cert.address),
        ("転出予定年月日", cert.planned_move_out_date),
        ("転出先", cert.destination_local_government_code or "(記載なし)"),
        ("発行日時", cert.issued_at),
    ]
    return "\n".join(["転出証明書", *(f"{label}: {value}" for label, value in rows if value)])
