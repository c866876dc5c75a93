"""Resident cards without a node: the card CA, the certificate, the lapse rule, the
trust that takes CRLs, and the proof of identity's checks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jukinet import card, pki
from jukinet.errors import FailedPrecondition, JukinetError, Unavailable
from jukinet.identity import Identity
from jukinet.login import Challenge
from jukinet.reasons import Reason
from jukinet.residentcard import (
    LAPSED,
    PROOF_TAG,
    CardState,
    CardTrust,
    card_so_pin,
    card_state,
    carry,
    check_continuation,
    check_special_move_in,
    filing_message,
    special_move_in_deadline,
    verify_card_proof,
    verify_filing,
)
from tests.cards import require_softhsm

TOTTORI = "312011"
YONAGO = "312029"
TERMINAL = Identity.terminal(YONAGO, "desk1")
D = dt.date


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation PKI of Tottori and Yonago, resident card CAs included."""
    directory = tmp_path_factory.mktemp("pki")
    pki.issue_federation(directory, pki.FederationSpec(municipalities=[TOTTORI, YONAGO]))
    return directory


def ca_of(pki_dir: Path, code: str) -> Path:
    return pki.resident_card_ca_dir(pki_dir, code)


def trust_of(pki_dir: Path, *codes: str) -> CardTrust:
    """A trust holding the current CRL of each municipality of ``codes``."""
    trust = CardTrust.from_files(pki_dir / pki.CA_CERT, pki_dir / pki.CRL_FILE)
    for code in codes:
        where = ca_of(pki_dir, code)
        assert trust.accept(
            carry(
                x509.load_pem_x509_certificate((where / pki.CA_CERT).read_bytes()),
                x509.load_pem_x509_crl((where / pki.CRL_FILE).read_bytes()),
            )
        )
    return trust


def challenge(now: dt.datetime, tag: bytes = PROOF_TAG) -> Challenge:
    return Challenge(TERMINAL, "", now + dt.timedelta(minutes=2), b"n" * 32, tag)


def issued(
    pki_dir: Path, code: str = TOTTORI
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert, _ = pki.issue_resident_card_certificate(ca_of(pki_dir, code), code, key.public_key())
    return key, cert


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def sign(key: ec.EllipticCurvePrivateKey, c: Challenge) -> bytes:
    return key.sign(c.message(), ec.ECDSA(hashes.SHA256()))


def reason_of(exc: pytest.ExceptionInfo[JukinetError]) -> Reason:
    return exc.value.reason


def test_the_card_ca_is_a_constrained_sub_ca_of_its_municipality(pki_dir: Path) -> None:
    cert = x509.load_pem_x509_certificate((ca_of(pki_dir, TOTTORI) / pki.CA_CERT).read_bytes())
    assert pki.sub_ca_org(cert, pki.SubCaKind.RESIDENT_CARD) == TOTTORI
    with pytest.raises(ValueError, match="not constrained"):
        pki.sub_ca_org(cert, pki.SubCaKind.OPERATOR)
    assert (ca_of(pki_dir, TOTTORI) / pki.CARD_SECRET_FILE).stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError):
        pki.resident_card_ca_dir(pki_dir, "31")  # a prefecture issues no resident card


def test_a_certificate_names_the_card_and_never_its_holder(pki_dir: Path) -> None:
    _, cert = issued(pki_dir)
    (uri,) = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    code, card_id = pki.parse_resident_card_uri(uri)
    assert code == TOTTORI and len(card_id) == 32
    # Only the card id, the municipality and fixed names: nothing of a resident.
    texts = [str(a.value) for a in cert.subject] + [uri]
    assert all(t in (card_id, TOTTORI, "jukinet") or t == uri for t in texts)


def test_a_municipality_s_card_is_not_issued_by_another_s_ca(pki_dir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="does not serve municipality 312011"):
        pki.issue_resident_card_certificate(ca_of(pki_dir, YONAGO), TOTTORI, key.public_key())


def test_the_so_pin_is_the_issuing_node_s_alone(pki_dir: Path) -> None:
    pin = card_so_pin(ca_of(pki_dir, TOTTORI), "0" * 32)
    assert pin == card_so_pin(ca_of(pki_dir, TOTTORI), "0" * 32)
    assert pin != card_so_pin(ca_of(pki_dir, YONAGO), "0" * 32)
    assert pin != card_so_pin(ca_of(pki_dir, TOTTORI), "1" * 32)


@pytest.mark.parametrize(
    ("kwargs", "state"),
    [
        ({"revoked": True, "removed_on": None}, CardState.REVOKED),
        ({"revoked": False, "removed_on": None}, CardState.VALID),
        ({"revoked": False, "removed_on": D(2026, 4, 1)}, CardState.LAPSED),
        (
            {"revoked": False, "removed_on": D(2026, 4, 1), "moved_in_on": D(2026, 4, 2)},
            CardState.CONTINUABLE,
        ),
        (
            {
                "revoked": False,
                "removed_on": D(2026, 4, 1),
                "moved_in_on": D(2026, 4, 2),
                "continued_on": D(2026, 7, 1),
            },
            CardState.VALID,
        ),
        (
            {
                "revoked": False,
                "removed_on": D(2026, 4, 1),
                "moved_in_on": D(2026, 4, 2),
                "continued_on": D(2026, 7, 2),
            },
            CardState.LAPSED,
        ),
        (
            {"revoked": True, "removed_on": D(2026, 4, 1), "moved_in_on": D(2026, 4, 2)},
            CardState.REVOKED,
        ),
    ],
)
def test_card_state(kwargs: dict[str, object], state: CardState) -> None:
    assert card_state(today=D(2026, 6, 1), **kwargs) is state  # type: ignore[arg-type]


def test_continuation_within_90_days_of_the_move_in() -> None:
    check_continuation(D(2026, 4, 2), D(2026, 7, 1))  # day 90
    with pytest.raises(FailedPrecondition) as info:
        check_continuation(D(2026, 4, 2), D(2026, 7, 2))
    assert info.value.reason is Reason.CONTINUATION_TOO_LATE


@pytest.mark.parametrize(
    ("planned", "moved_in", "last"),
    [
        # 14 days after the move-in come first.
        (D(2026, 4, 1), D(2026, 4, 1), D(2026, 4, 15)),
        # 30 days after the planned date come first (a move-in long after it).
        (D(2026, 4, 1), D(2026, 4, 25), D(2026, 5, 1)),
        # A move-in before the planned date: its 14 days.
        (D(2026, 4, 10), D(2026, 4, 5), D(2026, 4, 19)),
    ],
)
def test_the_special_move_in_deadline(planned: D, moved_in: D, last: D) -> None:
    assert special_move_in_deadline(planned, moved_in) == last
    check_special_move_in(planned, moved_in, last)
    check_special_move_in(planned, moved_in, moved_in)
    with pytest.raises(FailedPrecondition) as info:
        check_special_move_in(planned, moved_in, last + dt.timedelta(days=1))
    assert info.value.reason is Reason.SPECIAL_MOVE_IN_TOO_LATE
    assert str(last) in str(info.value)


def test_a_filing_signature_serves_no_proof_and_no_proof_serves_a_filing(pki_dir: Path) -> None:
    key, cert = issued(pki_dir)
    now = dt.datetime.now(dt.UTC)
    trust = trust_of(pki_dir, TOTTORI)
    filing = b"a serialized MoveOutFiling"
    signature = key.sign(filing_message(filing), ec.ECDSA(hashes.SHA256()))
    holder = verify_filing(filing, signature, der(cert), trust=trust, now=now)
    assert (holder.municipality, holder.serial) == (TOTTORI, cert.serial_number)
    with pytest.raises(JukinetError) as info:
        verify_filing(filing + b"!", signature, der(cert), trust=trust, now=now)
    assert info.value.reason is Reason.FILING_SIGNATURE_INVALID
    c = challenge(now)
    with pytest.raises(JukinetError) as info:
        verify_filing(c.message(), sign(key, c), der(cert), trust=trust, now=now)
    assert info.value.reason is Reason.FILING_SIGNATURE_INVALID
    with pytest.raises(JukinetError) as info:
        verify_card_proof(der(cert), c, signature, trust=trust, now=now)
    assert info.value.reason is Reason.CHALLENGE_INVALID


def test_a_challenge_reads_back_from_the_bytes_a_card_signed() -> None:
    c = challenge(dt.datetime.now(dt.UTC))
    assert Challenge.parse(c.message()) == c
    for bad in (
        b"",
        c.message() + b"\nmore",
        c.message().replace(b"jukinet://", b"http://"),
        c.message().replace(b"+00:00", b""),
        c.message()[:-1] + b"x",
    ):
        with pytest.raises(ValueError):
            Challenge.parse(bad)


@pytest.mark.parametrize("pin", ["123", "12345", "12a4", "１２３４", " 1234", ""])
def test_a_resident_pin_is_exactly_four_digits(pin: str) -> None:
    with pytest.raises(card.BadPin):
        card.check_resident_pin(pin)
    assert card.check_resident_pin("0042") == "0042"


def test_a_proof_verifies_at_another_municipality(pki_dir: Path) -> None:
    key, cert = issued(pki_dir)
    now = dt.datetime.now(dt.UTC)
    c = challenge(now)
    holder = verify_card_proof(
        der(cert), c, sign(key, c), trust=trust_of(pki_dir, TOTTORI), now=now
    )
    assert (holder.municipality, holder.serial) == (TOTTORI, cert.serial_number)


def test_refused_proofs(pki_dir: Path) -> None:
    key, cert = issued(pki_dir)
    now = dt.datetime.now(dt.UTC)
    trust = trust_of(pki_dir, TOTTORI, YONAGO)
    c = challenge(now)
    good = sign(key, c)

    def refusal(**overrides: object) -> Reason:
        args: dict[str, object] = {"cert": der(cert), "c": c, "sig": good, "now": now}
        args.update(overrides)
        with pytest.raises(JukinetError) as info:
            verify_card_proof(
                args["cert"],  # type: ignore[arg-type]
                args["c"],  # type: ignore[arg-type]
                args["sig"],  # type: ignore[arg-type]
                trust=trust,
                now=args["now"],  # type: ignore[arg-type]
            )
        return info.value.reason

    assert refusal(sig=sign(key, challenge(now - dt.timedelta(seconds=1)))) is (
        Reason.CHALLENGE_INVALID
    )
    assert refusal(c=challenge(now, b"jukinet operator login v1")) is Reason.CHALLENGE_INVALID
    assert refusal(now=now + dt.timedelta(minutes=3)) is Reason.CHALLENGE_INVALID
    assert refusal(cert=b"junk") is Reason.CARD_INVALID
    # Yonago's CA signs a certificate that claims to be a Tottori card.
    yonago_ca, yonago_key = pki.load_ca(ca_of(pki_dir, YONAGO))
    forged = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(yonago_ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(cert.extensions.get_extension_for_class(x509.KeyUsage).value, True)
        .add_extension(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, True
        )
        .sign(yonago_key, hashes.SHA256())
    )
    assert refusal(cert=der(forged)) is Reason.CARD_INVALID
    # Unknown CA: no CRL of it here yet, and nothing is taken on trust.
    with pytest.raises(Unavailable):
        verify_card_proof(der(cert), c, good, trust=trust_of(pki_dir, YONAGO), now=now)


def test_revoked_and_lapsed_cards_and_the_crls_that_say_so(pki_dir: Path) -> None:
    lost_key, lost = issued(pki_dir)
    gone_key, gone = issued(pki_dir)
    trust = trust_of(pki_dir, TOTTORI)
    old = trust.authorities[TOTTORI].carried
    now = dt.datetime.now(dt.UTC)
    crl = pki.write_card_crl(
        ca_of(pki_dir, TOTTORI),
        [
            (lost.serial_number, now, x509.ReasonFlags.key_compromise),
            (gone.serial_number, now, LAPSED),
        ],
    )
    ca_cert = x509.load_pem_x509_certificate((ca_of(pki_dir, TOTTORI) / pki.CA_CERT).read_bytes())
    newer = carry(ca_cert, crl)
    assert trust.accept(newer)
    assert not trust.accept(newer)  # the same again
    assert not trust.accept(old)  # never rolled back
    assert trust.newer_than({TOTTORI: trust.known()[TOTTORI]}) == []
    c = challenge(now)
    for key, cert, reason in (
        (lost_key, lost, Reason.CARD_REVOKED),
        (gone_key, gone, Reason.CARD_LAPSED),
    ):
        with pytest.raises(JukinetError) as info:
            verify_card_proof(der(cert), c, sign(key, c), trust=trust, now=now)
        assert info.value.reason is reason
    # A CRL signed by another CA, carried with Tottori's certificate, is refused.
    yonago = ca_of(pki_dir, YONAGO)
    foreign = x509.load_pem_x509_crl((yonago / pki.CRL_FILE).read_bytes())
    with pytest.raises(ValueError, match="not of the card CA"):
        trust.accept(carry(ca_cert, foreign))
    # An operator CA is no resident card CA.
    operator_ca = pki.operator_ca_dir(pki_dir, TOTTORI)
    with pytest.raises(ValueError, match="not constrained"):
        trust.accept(
            carry(
                x509.load_pem_x509_certificate((operator_ca / pki.CA_CERT).read_bytes()),
                x509.load_pem_x509_crl((operator_ca / pki.CRL_FILE).read_bytes()),
            )
        )


def test_the_card_counts_wrong_pins_itself_and_unlocks_with_its_so_pin(
    pki_dir: Path, tmp_path: Path
) -> None:
    require_softhsm()
    hsm = card.SoftHsm.create(tmp_path / "hsm")
    hsm.init_token("resident", "blank-so", "1234")
    lib = hsm.activate()

    def refuse(key: ec.EllipticCurvePublicKey) -> tuple[x509.Certificate, str]:
        raise ValueError("refused by the node")

    with pytest.raises(card.BadPin):
        card.provision_resident_card(lib, "123456", "blank-so", refuse, label="resident")
    with pytest.raises(card.WrongPin, match="security officer"):
        card.provision_resident_card(lib, "1234", "wrong-so", refuse, label="resident")
    with pytest.raises(ValueError, match="refused by the node"):
        card.provision_resident_card(lib, "1234", "blank-so", refuse, label="resident")
    # A refused certification leaves the card blank: it can be issued again.
    cert = card.provision_resident_card(
        lib,
        "1234",
        "blank-so",
        lambda key: (
            pki.issue_resident_card_certificate(ca_of(pki_dir, TOTTORI), TOTTORI, key)[0],
            "card-so-pin",
        ),
        label="resident",
    )
    assert card.resident_card_certificate(lib, label="resident") == cert
    with pytest.raises(card.WrongPin):
        card.open_resident_card(lib, "0000", label="resident")
    # A right PIN forgives the wrong ones before it.
    card.open_resident_card(lib, "1234", label="resident").close()
    for _ in range(2):
        with pytest.raises(card.WrongPin):
            card.open_resident_card(lib, "0000", label="resident")
    with pytest.raises(card.CardLocked):
        card.open_resident_card(lib, "0000", label="resident")
    # The count is on the token: a fresh start of the module reads it again.
    lib = card.rescan()
    with pytest.raises(card.CardLocked):
        card.open_resident_card(lib, "1234", label="resident")
    with pytest.raises(card.WrongPin):
        card.unlock_resident_card(lib, "blank-so", "5678", label="resident")
    card.unlock_resident_card(lib, "card-so-pin", "5678", label="resident")
    with card.open_resident_card(lib, "5678", label="resident") as opened:
        assert opened.municipality == TOTTORI
        data = b"proof"
        signature = opened.sign(data)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    # A resident card is no operator's, and opened as one its PIN is counted all the same.
    with pytest.raises(card.CardError, match="resident-card"):
        card.open_card(lib, "5678", label="resident")
    for _ in range(3):
        with pytest.raises(card.CardError):
            card.open_card(lib, "0000", label="resident")
    with pytest.raises(card.CardLocked):
        card.open_resident_card(lib, "5678", label="resident")
