"""Resident cards (住民基本台帳カード): the rules, the trust, the proof of identity.

A resident card is a PKCS#11 token (:mod:`jukinet.card`) holding a P-256 key
made on it, and the certificate its municipality's resident card CA signed
(:func:`jukinet.pki.issue_resident_card_certificate`): the certificate names
the card (``jukinet://resident-card/<code>/<random card id>``), never its
holder. Which resident holds which card is known only to the issuing node.

Proof of identity at any counter: the node gives a challenge bound to the
terminal, with a nonce and an expiry (:class:`jukinet.login.ChallengeBook`);
the card signs it after its PIN; :func:`verify_card_proof` checks the
signature, the chain to the federation root through the resident card CA of
the card's own municipality, and that neither the card nor that CA is
revoked, or the card lapsed.

Revocation reaches every node as the CA's CRL, carried with the CA's
certificate (:class:`CardCrl`): both are signed (by the CA, by the root), so
any path may carry them and a node takes a CRL only when it verifies and is
newer than the one it holds (:meth:`CardTrust.accept`). A lost card is on its
CRL with reason keyCompromise (or superseded, returned); a lapsed one (its
holder moved out, abroad, died, was removed) with cessationOfOperation.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from jukinet.errors import FailedPrecondition, Unauthenticated, Unavailable
from jukinet.login import Challenge, chain_problem
from jukinet.pki import (
    CARD_SECRET_FILE,
    SubCaKind,
    load_revoked_serials,
    parse_resident_card_uri,
    sub_ca_org,
)
from jukinet.reasons import Reason
from jukinet.v1 import municipal_pb2

CONTINUE_WITHIN = dt.timedelta(days=90)
"""Assumed: a card stays usable after its holder moved only if continued at the new
municipality within this time of the move-in (継続利用)."""
PROOF_TAG = b"jukinet resident card proof v1"
"""What a card's signature of a proof-of-identity challenge is for."""
LAPSED = x509.ReasonFlags.cessation_of_operation
"""The CRL reason of a lapsed card."""


class CardState(enum.Enum):
    """What a card is worth now."""

    VALID = "valid"
    REVOKED = "revoked"  # lost, stolen or returned: on the CRL for good
    LAPSED = "lapsed"  # its holder moved out (or was removed) and it was not continued
    CONTINUABLE = "continuable"  # lapsed, but the new municipality may still continue it


def card_state(
    *,
    revoked: bool,
    removed_on: dt.date | None,
    moved_in_on: dt.date | None = None,
    continued_on: dt.date | None = None,
    today: dt.date,
) -> CardState:
    """The state of a card from its holder's story (one rule, in one place).

    ``removed_on``: when the holder left the issuing municipality's register
    (moved out, abroad, died, removed), None while they live there.
    ``moved_in_on``: their move-in at the new municipality, once known there;
    ``continued_on``: when the new municipality continued the card. A card
    lapses with its holder's removal, unless continued within
    :data:`CONTINUE_WITHIN` of the move-in; until then it may be.
    """
    if revoked:
        return CardState.REVOKED
    if removed_on is None:
        return CardState.VALID
    if moved_in_on is None:
        return CardState.LAPSED
    deadline = moved_in_on + CONTINUE_WITHIN
    if continued_on is not None:
        return CardState.VALID if continued_on <= deadline else CardState.LAPSED
    return CardState.CONTINUABLE if today <= deadline else CardState.LAPSED


def check_continuation(moved_in_on: dt.date, today: dt.date) -> None:
    """Refuse (``continuation-too-late``) a continuation past :data:`CONTINUE_WITHIN`."""
    state = card_state(revoked=False, removed_on=today, moved_in_on=moved_in_on, today=today)
    if state is not CardState.CONTINUABLE:
        raise FailedPrecondition(
            f"the card can be continued until {moved_in_on + CONTINUE_WITHIN} "
            f"({CONTINUE_WITHIN.days} days after the move-in on {moved_in_on})",
            reason=Reason.CONTINUATION_TOO_LATE,
        )


def card_so_pin(ca_dir: Path | str, card_id: str) -> str:
    """The security officer PIN of card ``card_id``, from its CA's card secret.

    Only the issuing node (which holds the secret beside its card CA key) can
    work it out, to set it at issue and to unlock the card at its counter.
    """
    secret = (Path(ca_dir) / CARD_SECRET_FILE).read_bytes().strip()
    return hmac.new(secret, card_id.encode(), hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class CardHolder:
    """Who proved their identity: a card, by its id and its issuing municipality.

    The resident behind it is known only to that municipality's node.
    """

    card_id: str
    municipality: str
    serial: int


# --- the trust: the root and every municipality's card CA with its CRL --------------


@dataclass(frozen=True)
class CardCrl:
    """A resident card CA's certificate and its CRL, both DER: what travels between nodes."""

    ca_certificate: bytes
    crl: bytes


@dataclass(frozen=True)
class CardAuthority:
    """One municipality's resident card CA, and the CRL of it a node holds."""

    municipality: str
    certificate: x509.Certificate
    crl_number: int
    revoked: Mapping[int, x509.ReasonFlags]
    carried: CardCrl


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return x509.ReasonFlags.unspecified


def read_card_crl(carried: CardCrl, root: x509.Certificate) -> CardAuthority:
    """Check a carried CRL: its CA is a resident card CA the root signed, and signed it.

    ValueError says what does not verify.
    """
    try:
        ca = x509.load_der_x509_certificate(carried.ca_certificate)
        crl = x509.load_der_x509_crl(carried.crl)
    except ValueError as exc:
        raise ValueError(f"unreadable card CA certificate or CRL: {exc}") from None
    try:
        ca.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError("the card CA is not issued by the federation root") from None
    municipality = sub_ca_org(ca, SubCaKind.RESIDENT_CARD)
    key = ca.public_key()
    if crl.issuer != ca.subject or not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"the CRL is not of the card CA of {municipality}")
    if not crl.is_signature_valid(key):
        raise ValueError(
            f"the CRL's signature does not verify against the card CA of {municipality}"
        )
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise ValueError("the CRL has no number") from None
    revoked = {entry.serial_number: _reason(entry) for entry in crl}
    return CardAuthority(municipality, ca, number, revoked, carried)


def carry(ca_certificate: x509.Certificate, crl: x509.CertificateRevocationList) -> CardCrl:
    """A CA certificate and its CRL as they travel."""
    return CardCrl(
        ca_certificate.public_bytes(serialization.Encoding.DER),
        crl.public_bytes(serialization.Encoding.DER),
    )


@dataclass
class CardTrust:
    """What resident cards are checked against at a node: the root, its CRL, and the
    newest verified CRL of each municipality's card CA (with the CA's certificate)."""

    root: x509.Certificate
    root_revoked: frozenset[int] = frozenset()
    authorities: dict[str, CardAuthority] = field(default_factory=dict)

    @classmethod
    def from_files(cls, ca: Path | str, crl: Path | str | None = None) -> CardTrust:
        """A trust of no card CA yet, from the root's certificate (and its CRL) files."""
        root = x509.load_pem_x509_certificate(Path(ca).read_bytes())
        revoked = load_revoked_serials(crl, ca=ca) if crl else frozenset()
        return cls(root, revoked)

    def accept(self, carried: CardCrl) -> bool:
        """Take ``carried`` if it verifies and is newer than the CRL held of its CA.

        True if it was taken; ValueError if it does not verify. A CRL of the
        same number as the one held is a repetition (False); an older one
        never replaces a newer. A new CA of the municipality (a renewed one)
        replaces the old with its own CRL.
        """
        authority = read_card_crl(carried, self.root)
        held = self.authorities.get(authority.municipality)
        if held is not None and held.certificate == authority.certificate:
            if authority.crl_number <= held.crl_number:
                return False
        elif held is not None and (
            authority.certificate.not_valid_before_utc <= held.certificate.not_valid_before_utc
        ):
            return False
        self.authorities[authority.municipality] = authority
        return True

    def accept_all(self, carried: Iterable[CardCrl]) -> int:
        """:meth:`accept` each; how many were taken (one that does not verify is skipped)."""
        taken = 0
        for one in carried:
            try:
                taken += self.accept(one)
            except ValueError:
                continue
        return taken

    def known(self) -> dict[str, int]:
        """Municipality code -> the number of the CRL held of its card CA."""
        return {code: a.crl_number for code, a in self.authorities.items()}

    def newer_than(
        self, known: Mapping[str, int], municipalities: Iterable[str] | None = None
    ) -> list[CardCrl]:
        """The CRLs held that are newer than ``known`` says (of ``municipalities`` only)."""
        wanted = None if municipalities is None else frozenset(municipalities)
        return [
            a.carried
            for code, a in sorted(self.authorities.items())
            if (wanted is None or code in wanted) and a.crl_number > known.get(code, 0)
        ]


# --- the proof of identity -------------------------------------------------------------


def _refuse(reason: Reason, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def card_of_certificate(card_certificate_der: bytes) -> tuple[x509.Certificate, str, str]:
    """A resident card's certificate, its municipality and its card id, read (not checked).

    :class:`~jukinet.errors.Unauthenticated` (``card-invalid``) when it is no
    resident card's certificate.
    """
    try:
        cert = x509.load_der_x509_certificate(card_certificate_der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise ValueError(f"{len(uris)} URI SANs, expected 1")
        municipality, card_id = parse_resident_card_uri(uris[0])
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise _refuse(Reason.CARD_INVALID, f"not a resident card's certificate: {exc}") from None
    return cert, municipality, card_id


def verify_card_signature(
    card_certificate_der: bytes,
    message: bytes,
    signature: bytes,
    *,
    trust: CardTrust,
    now: dt.datetime,
    bad_signature: Reason = Reason.CHALLENGE_INVALID,
    what: str = "the signed message",
) -> CardHolder:
    """The card whose key signed ``message``, its certificate checked in full.

    The certificate must be a resident card's, issued by the card CA of the
    municipality its URI names, that CA by the root, both valid at ``now``,
    neither revoked nor the card lapsed; the signature the card key's over
    ``message``. Refusals are :class:`~jukinet.errors.Unauthenticated`:
    ``card-invalid``, ``card-revoked`` (the card or its CA), ``card-lapsed``,
    ``bad_signature``; :class:`~jukinet.errors.Unavailable` when no CRL of the
    card's CA has reached this node yet (a card is never taken on trust).
    """
    cert, municipality, card_id = card_of_certificate(card_certificate_der)
    authority = trust.authorities.get(municipality)
    if authority is None:
        raise Unavailable(
            f"no CRL of the resident card CA of {municipality} has reached this node yet"
        )
    problem = chain_problem(
        cert,
        authority.certificate,
        trust.root,
        now,
        ca_name="resident card CA",
        issuer=f"the resident card CA of {municipality}",
    )
    if problem:
        raise _refuse(Reason.CARD_INVALID, f"resident card {card_id}: {problem}")
    if authority.certificate.serial_number in trust.root_revoked:
        raise _refuse(Reason.CARD_REVOKED, f"the resident card CA of {municipality} is revoked")
    reason = authority.revoked.get(cert.serial_number)
    if reason is LAPSED:
        raise _refuse(Reason.CARD_LAPSED, f"resident card {card_id} has lapsed")
    if reason is not None:
        raise _refuse(Reason.CARD_REVOKED, f"resident card {card_id} is revoked ({reason.value})")
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # checked by chain_problem
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise _refuse(bad_signature, f"the card's signature of {what} does not verify") from None
    return CardHolder(card_id, municipality, cert.serial_number)


def verify_card_proof(
    card_certificate_der: bytes,
    challenge: Challenge,
    signature: bytes,
    *,
    trust: CardTrust,
    now: dt.datetime,
) -> CardHolder:
    """The card that signed ``challenge`` (its proof of identity), checked in full.

    The challenge must be a proof-of-identity one, not expired at ``now``;
    the card and its signature as :func:`verify_card_signature` checks them
    (a signature that does not verify: ``challenge-invalid``).
    """
    if challenge.tag != PROOF_TAG:
        raise _refuse(Reason.CHALLENGE_INVALID, "the challenge is not a card proof's")
    if now > challenge.expires_at:
        raise _refuse(Reason.CHALLENGE_INVALID, "the card proof's challenge expired")
    return verify_card_signature(
        card_certificate_der,
        challenge.message(),
        signature,
        trust=trust,
        now=now,
        what="the challenge",
    )


# --- moving with the card (転出・転入の特例) ------------------------------------------

FILING_TAG = b"jukinet move-out filing v1"
"""What a card's signature of a move-out filed by post (付記転出届) is for."""
SPECIAL_MOVE_IN_WITHIN = dt.timedelta(days=14)
"""A special move-in (特例転入) is made within this time of moving in (転入届の期間) ..."""
SPECIAL_MOVE_IN_AFTER_PLANNED = dt.timedelta(days=30)
"""... and within this time of the planned move-out date the filing gave."""


def filing_message(filing: bytes) -> bytes:
    """The exact bytes a card signs for a serialized move-out filing."""
    return FILING_TAG + b"\n" + filing


FILING_ARMOR_BEGIN = "-----BEGIN JUKINET MOVE-OUT FILING-----"
FILING_ARMOR_END = "-----END JUKINET MOVE-OUT FILING-----"


def sign_filing(
    sign: Callable[[bytes], bytes],
    card_certificate_der: bytes,
    *,
    destination: str,
    planned: str,
    new_address: str,
    signed_on: str,
    abroad: bool = False,
) -> municipal_pb2.SignedMoveOutFiling:
    """A move-out filing (付記転出届) signed by the card's ``sign`` (after its PIN)."""
    filing = municipal_pb2.MoveOutFiling(
        card_certificate=card_certificate_der,
        planned_move_out_date=planned,
        destination_local_government_code=destination,
        new_address=new_address,
        abroad=abroad,
        signed_on=signed_on,
    ).SerializeToString()
    return municipal_pb2.SignedMoveOutFiling(filing=filing, signature=sign(filing_message(filing)))


def armor_filing(signed: municipal_pb2.SignedMoveOutFiling) -> str:
    """A signed filing as the text file the resident posts."""
    body = base64.b64encode(signed.SerializeToString()).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([FILING_ARMOR_BEGIN, *lines, FILING_ARMOR_END]) + "\n"


def dearmor_filing(text: str) -> municipal_pb2.SignedMoveOutFiling:
    """Read a file written by :func:`armor_filing`; ValueError says what is wrong."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or lines[0] != FILING_ARMOR_BEGIN or lines[-1] != FILING_ARMOR_END:
        raise ValueError("not a move-out filing file")
    try:
        raw = base64.b64decode("".join(lines[1:-1]), validate=True)
        return municipal_pb2.SignedMoveOutFiling.FromString(raw)
    except (ValueError, DecodeError):
        raise ValueError("the move-out filing file is damaged") from None


def verify_filing(
    filing: bytes,
    signature: bytes,
    card_certificate_der: bytes,
    *,
    trust: CardTrust,
    now: dt.datetime,
) -> CardHolder:
    """The card that signed a move-out filing, checked as :func:`verify_card_signature`
    does (a signature that does not verify: ``filing-signature-invalid``)."""
    return verify_card_signature(
        card_certificate_der,
        filing_message(filing),
        signature,
        trust=trust,
        now=now,
        bad_signature=Reason.FILING_SIGNATURE_INVALID,
        what="the move-out filing",
    )


def special_move_in_deadline(planned: dt.date, moved_in: dt.date) -> dt.date:
    """The last day a special move-in may be made: 14 days after the move-in and
    30 days after the planned move-out date, whichever comes first."""
    return min(moved_in + SPECIAL_MOVE_IN_WITHIN, planned + SPECIAL_MOVE_IN_AFTER_PLANNED)


def check_special_move_in(planned: dt.date, moved_in: dt.date, today: dt.date) -> None:
    """Refuse (``special-move-in-too-late``) a special move-in made past its deadline;
    the signed move-out certificate (paper) route stays open."""
    deadline = special_move_in_deadline(planned, moved_in)
    if today > deadline:
        raise FailedPrecondition(
            f"the special move-in could be made until {deadline} (within "
            f"{SPECIAL_MOVE_IN_WITHIN.days} days of the move-in on {moved_in} and "
            f"{SPECIAL_MOVE_IN_AFTER_PLANNED.days} days of the planned move-out on {planned}): "
            "move in with the move-out certificate of the former municipality instead",
            reason=Reason.SPECIAL_MOVE_IN_TOO_LATE,
        )
