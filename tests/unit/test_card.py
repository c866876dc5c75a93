"""Operator IC cards on a real PKCS#11 token (SoftHSM2): provisioning, reading,
signing, and the verifier's refusals of revoked and foreign cards."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pkcs11.exceptions as p11
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from pkcs11 import Attribute, ObjectClass

from jukinet import card, pki
from jukinet.errors import JukinetError
from jukinet.identity import Identity
from jukinet.login import CardTrust
from jukinet.reasons import Reason
from tests.cards import (
    FOREIGN_TERMINAL,
    ORG,
    OTHER_ORG,
    PIN,
    TANAKA,
    TERMINAL,
    Cards,
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def refusal(trust: CardTrust, certificate: x509.Certificate, terminal: Identity) -> JukinetError:
    with pytest.raises(JukinetError) as caught:
        trust.verify_card(certificate, terminal, now())
    return caught.value


def test_a_provisioned_card_signs_what_its_certificate_verifies(cards: Cards) -> None:
    cards.provision("tanaka", TANAKA)
    with card.open_card(card.load_module(), PIN) as opened:
        assert opened.identity == TANAKA
        assert opened.label == "tanaka"
        signature = opened.sign(b"challenge")
        certificate = opened.certificate
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, b"challenge", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(signature, b"challengf", ec.ECDSA(hashes.SHA256()))
    trust = CardTrust.load(cards.pki)
    operator, _ = trust.verify_card(certificate.public_bytes(Encoding.DER), TERMINAL, now())
    assert operator == TANAKA
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_the_private_key_is_made_on_the_card_and_cannot_leave_it(cards: Cards) -> None:
    cards.provision("tanaka", TANAKA)
    token = card.find_card(card.load_module())
    with token.open(user_pin=PIN) as session:
        key = session.get_key(ObjectClass.PRIVATE_KEY)
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.LOCAL] is True  # generated on the token, not imported
        with pytest.raises(p11.AttributeSensitive):
            key[Attribute.VALUE]


def test_a_wrong_pin_is_refused_and_softhsm_does_not_lock(cards: Cards) -> None:
    cards.provision("tanaka", TANAKA)
    lib = card.load_module()
    for _ in range(3):
        with pytest.raises(card.WrongPin, match="wrong PIN"):
            card.open_card(lib, "135790")
    # SoftHSM2 keeps no PIN retry counter (a real card does: CardLocked).
    with card.open_card(lib, PIN) as opened:
        assert opened.identity == TANAKA


def test_no_card_two_cards_and_a_label(cards: Cards) -> None:
    lib = card.load_module()
    with pytest.raises(card.NoCard, match="insert the operator's card"):
        card.open_card(lib, PIN)
    cards.provision("tanaka", TANAKA)
    cards.provision("sato", Identity.operator(ORG, "h.sato"))
    lib = card.load_module()
    with pytest.raises(card.SeveralCards, match="2 cards present"):
        card.open_card(lib, PIN)
    with card.open_card(lib, PIN, label="sato") as opened:
        assert opened.identity == Identity.operator(ORG, "h.sato")
    with pytest.raises(card.NoCard, match="labelled 'suzuki'"):
        card.open_card(lib, PIN, label="suzuki")


def test_a_blank_card_has_no_certificate_and_a_card_is_provisioned_once(cards: Cards) -> None:
    cards.blank("blank")
    lib = card.load_module()
    with pytest.raises(card.NoCertificate, match="has not been provisioned"):
        card.open_card(lib, PIN)
    cards.provision("tanaka", TANAKA)
    with pytest.raises(card.AlreadyProvisioned):
        card.provision_card(
            card.load_module(),
            PIN,
            lambda key: pki.issue_card_certificate(cards.pki, TANAKA, key, force=True),
            label="tanaka",
        )


def test_the_module_is_named_by_the_environment_or_is_softhsm() -> None:
    with pytest.raises(card.ModuleMissing, match="no such PKCS#11 module"):
        card.module_path({card.MODULE_ENV: "/nonexistent/libcard.so"})
    assert card.module_path({}) in card.SOFTHSM_MODULES
    softhsm = card.module_path({})
    assert card.module_path({card.MODULE_ENV: softhsm}) == softhsm


def test_a_revoked_card_is_refused(cards: Cards) -> None:
    cards.provision("tanaka", TANAKA)
    with card.open_card(card.load_module(), PIN) as opened:
        certificate = opened.certificate
    assert CardTrust.load(cards.pki).verify_card(certificate, TERMINAL, now())[0] == TANAKA
    serial = pki.revoke_card(cards.pki, TANAKA)
    assert serial == certificate.serial_number
    error = refusal(CardTrust.load(cards.pki), certificate, TERMINAL)
    assert error.reason is Reason.CARD_REVOKED
    assert "revoked" in error.message


def test_a_revoked_operator_ca_revokes_its_cards(cards: Cards) -> None:
    cards.provision("tanaka", TANAKA)
    with card.open_card(card.load_module(), PIN) as opened:
        certificate = opened.certificate
    pki.revoke_operator_ca(cards.pki, ORG)
    error = refusal(CardTrust.load(cards.pki), certificate, TERMINAL)
    assert error.reason is Reason.CARD_REVOKED
    assert "operator CA" in error.message


def test_a_card_of_another_municipality_is_refused(cards: Cards) -> None:
    yonago = Identity.operator(OTHER_ORG, "k.ito")
    cards.provision("ito", yonago)
    with card.open_card(card.load_module(), PIN) as opened:
        certificate = opened.certificate
    trust = CardTrust.load(cards.pki)
    error = refusal(trust, certificate, TERMINAL)
    assert error.reason is Reason.FOREIGN_CARD
    assert OTHER_ORG in error.message and ORG in error.message
    # At a terminal of its own municipality the same card is fine.
    assert trust.verify_card(certificate, FOREIGN_TERMINAL, now())[0] == yonago


def test_a_card_certified_by_another_operator_ca_is_refused(cards: Cards) -> None:
    # Yonago's operator CA signs a certificate naming a Tottori operator: the
    # policy of issue_card_certificate never does, a stolen CA key could.
    key = ec.generate_private_key(ec.SECP256R1())
    other_ca, other_key = pki._load_ca(pki.operator_ca_dir(cards.pki, OTHER_ORG))
    good = pki.issue_card_certificate(cards.pki, TANAKA, key.public_key())
    forged = (
        x509.CertificateBuilder()
        .subject_name(good.subject)
        .issuer_name(other_ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(good.not_valid_before_utc)
        .not_valid_after(good.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(good.extensions.get_extension_for_class(x509.KeyUsage).value, critical=True)
        .add_extension(
            good.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            critical=True,
        )
        .sign(other_key, hashes.SHA256())
    )
    error = refusal(CardTrust.load(cards.pki), forged, TERMINAL)
    assert error.reason is Reason.CARD_INVALID
    assert "not issued by its organisation's operator CA" in error.message


def test_an_operator_ca_issues_for_its_own_operators_only(tmp_path: Path) -> None:
    pki.create_ca(tmp_path)
    ca = pki.create_operator_ca(tmp_path, ORG)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    names = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert names.permitted_subtrees == [x509.UniformResourceIdentifier("operator")]
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ValueError, match="certifies operators only"):
        pki.issue_card_certificate(tmp_path, TERMINAL, key)
    with pytest.raises(FileNotFoundError, match="no CA"):
        pki.issue_card_certificate(tmp_path, Identity.operator(OTHER_ORG, "k.ito"), key)
    with pytest.raises(ValueError, match="P-256"):
        pki.issue_card_certificate(
            tmp_path, TANAKA, ec.generate_private_key(ec.SECP384R1()).public_key()
        )
    with pytest.raises(FileExistsError):
        pki.create_operator_ca(tmp_path, ORG)


def test_a_terminal_certificate_is_a_client_only_federation_leaf(tmp_path: Path) -> None:
    pki.create_ca(tmp_path)
    issued = pki.issue(tmp_path, TERMINAL, pki.cert_name(TERMINAL))
    assert issued.cert_path.name == "terminal-312011-desk-1.pem"
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    assert pki.certificate_identity(cert) == TERMINAL
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == []
