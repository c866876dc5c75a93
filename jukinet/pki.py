"""The federation's private PKI: one root CA, leaf certificates, a CRL.

Everything is ECDSA P-256 with SHA-256. A PKI directory holds

    ca.pem, ca.key          the root CA (10 years, may sign leaves only)
    crl.pem                 the CA-signed revocation list (always present)
    <name>.pem, <name>.key  one leaf per node, agency, operator or terminal
    operator-ca-<org>/      an organisation's operator CA (see below)

Each leaf carries its caller identity as a ``jukinet://`` URI SAN (the only
thing a node trusts about its caller), serverAuth + clientAuth, and for nodes
the DNS ``localhost`` and IP ``127.0.0.1`` SANs so that a local federation
verifies host names without turning verification off.

Terminals (``jukinet://terminal/<org>/<id>``, the counter computers) get a
leaf like a node's, for client authentication only.

An organisation's operator CA signs the certificates on its operators' IC
cards (``jukinet://operator/<org>/<id>``, digitalSignature only, no extended
key usage: they sign login challenges and never serve in TLS). Its directory
has the layout of the root's (``ca.pem``, ``ca.key``, ``crl.pem``, and one
``<name>.pem`` per card certificate, kept so that it can be revoked by name);
its certificate is signed by the root, pathLen 0, and name-constrained to
URIs of host ``operator``; it issues for its own organisation only. The
root's own pathLen 0 is left as it is: TLS verification (OpenSSL) enforces it
and so never accepts a chain through an operator CA, which is what keeps card
certificates out of mTLS; the login verifier (:mod:`jukinet.login`) checks
the two links of a card's chain itself, the root being its trust anchor
(RFC 5280, 6.1: a trust anchor's own constraints do not bind the path).

Each municipality also gets a document-signing certificate
(``<node>.doc.pem`` / ``<node>.doc.key`` beside its TLS files) for the copies
of resident records it issues (:mod:`jukinet.copydoc`). Its one URI SAN is
``jukinet://document-signer/<code>``, a name :func:`parse_identity_uri` does
not know, and its only extended key usage is documentSigning (RFC 9336), so
that it can never stand for a caller in TLS, and a node's TLS certificate is
never taken for a document signer. Key usage digitalSignature and
nonRepudiation (contentCommitment), as PAdES signers carry.

A municipality's resident card CA (``resident-card-ca-<code>/``: ``ca.pem``,
``ca.key``, ``crl.pem`` and ``card-secret.key``) is made the same way
(:func:`create_sub_ca`), constrained to URIs of host ``resident-card``. Its
key lives on the municipal node's host: the node signs the certificate of
every card it issues, keeps the record of its cards in its database, and
re-signs the CRL from that record. A resident card certificate names the card
(``jukinet://resident-card/<code>/<random card id>``), never its holder. A
URI name constraint binds the host only (RFC 5280, 4.2.1.10), so that the
card's municipality in the URI is the CA's own (its OU) is checked by the
verifier (:mod:`jukinet.residentcard`).

Private keys are written with mode 0600 via a temporary file and an atomic
rename, so a crash never leaves a half-written or world-readable key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jukinet import audit
from jukinet.identity import NATIONAL_ORG, Identity, Kind, parse_identity_uri

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CRL_FILE = "crl.pem"

CA_DAYS = 3650
# 397 days: the longest lifetime browsers accept for TLS leaves; a habit worth
# keeping even in a private PKI, because it forces rotation to be routine.
NODE_DAYS = 397
CRL_DAYS = 30
# A certificate with less than this left is treated as due for renewal by
# issue_federation, so that re-running it before expiry rotates in time.
RENEW_BEFORE = dt.timedelta(days=30)
# Back-date notBefore a little: freshly issued certificates must verify on a
# peer whose clock is slightly behind.
_CLOCK_SKEW = dt.timedelta(minutes=5)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESERVED_NAMES = frozenset({"ca", "crl"})
_SERVER_KINDS = frozenset({Kind.MUNICIPALITY, Kind.PREFECTURE, Kind.NATIONAL, Kind.GATEWAY})
# Leaves that only ever call: their certificate allows clientAuth alone.
_CLIENT_ONLY_KINDS = frozenset({Kind.TERMINAL})
# The nodes requests between municipalities are sealed to (jukinet.relay.seal).
_NODE_KINDS = frozenset({Kind.MUNICIPALITY, Kind.PREFECTURE, Kind.NATIONAL})
_LOCAL_HOSTS = ("localhost", "127.0.0.1")
# RFC 9336: the extended key usage of a certificate that signs documents.
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
DOCUMENT_SIGNER_PREFIX = "jukinet://document-signer/"
# The suffix of a node's document-signing files: municipality-312011.doc.pem/.key.
_DOCUMENT_SUFFIX = ".doc"
_ORGANIZATION = "jukinet"


@dataclass(frozen=True)
class Issued:
    """One leaf certificate written (or kept) in a PKI directory."""

    name: str
    identity: Identity
    cert_path: Path
    key_path: Path
    serial: int
    not_after: dt.datetime
    created: bool = True

    def describe(self) -> str:
        """One human-readable line for the CLI."""
        verb = "wrote" if self.created else "kept "
        return (
            f"{verb} {self.cert_path} ({self.identity.uri}, serial {self.serial:x}, "
            f"expires {self.not_after:%Y-%m-%d})"
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp already creates 0600; fchmod anyway so the mode never
        # depends on the platform or on a later change of that default.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_public(path: Path, data: bytes) -> None:
    """Write a certificate or CRL atomically, readable by everyone."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_name(name: str) -> None:
    # The name becomes a file name: refuse anything that could leave the
    # directory or clobber the CA's own files.
    if _NAME_RE.fullmatch(name) is None or name.lower() in _RESERVED_NAMES:
        raise ValueError(f"bad certificate name {name!r}: use letters, digits, '.', '_', '-'")


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise FileNotFoundError(f"no CA in {directory} (run `jukinet pki init --dir {directory}`)")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: CA key is not an EC key")
    return cert, key


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def create_ca(
    directory: Path | str, common_name: str = "jukinet root CA", *, days: int = CA_DAYS
) -> x509.Certificate:
    """Create the root CA (``ca.pem``, ``ca.key``) and an empty ``crl.pem``.

    Refuses (FileExistsError) to replace an existing CA: every certificate
    of the federation would silently stop verifying.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists: refusing to replace the CA")
    key = _new_key()
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        # pathlen 0: the root signs leaves directly; no intermediate can be
        # minted from a leaf key or from a stolen intermediate.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    # Key first: a ca.pem without its key would make the directory look
    # initialised while being unable to issue anything.
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write_crl(directory, cert, key, [], crl_number=1)
    return cert


def issue(
    directory: Path | str,
    identity: Identity,
    name: str,
    days: int = NODE_DAYS,
    *,
    hosts: Sequence[str] | None = None,
    force: bool = False,
) -> Issued:
    """Issue a leaf for ``identity`` as ``<name>.pem`` / ``<name>.key`` next to ``ca.pem``.

    A certificate or key already under ``name`` is refused (FileExistsError)
    unless ``force``; then the old certificate's serial is added to the CRL
    before it is replaced, so the key it certified stops working too.

    ``hosts`` are the DNS names / IP addresses the certificate may serve as;
    by default ``localhost`` and ``127.0.0.1`` for nodes (which run servers)
    and none for agencies and operators (which are only clients). The
    lifetime is clipped to the CA's: a leaf cannot outlive its issuer.
    """
    directory = Path(directory)
    _check_name(name)
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    ca_cert, ca_key = _load_ca(directory)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    existing = [path for path in (cert_path, key_path) if path.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{existing[0]} already exists: refusing to replace it "
            "(use --force to revoke the old certificate and issue a new one)"
        )
    if cert_path.exists():
        _revoke_replaced(directory, cert_path, ca_cert, ca_key)
    if hosts is None:
        # Nodes also answer to their certificate name, which is the service name
        # in deploy/ (compose and Kubernetes): national, prefecture-31 ...
        hosts = (*_LOCAL_HOSTS, name) if identity.kind in _SERVER_KINDS else ()
    key = _new_key()
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(identity.uri),
        *_host_names(hosts),
    ]
    cert = _sign_leaf(
        ca_cert,
        ca_key,
        common_name=name,
        public_key=key.public_key(),
        not_after=not_after,
        # ECDHE supplies the TLS key exchange; a node's key also agrees keys
        # (ECDH) for the bodies relayed to it sealed (jukinet.relay.seal).
        key_usage=_key_usage(sign=True, ca=False, agree=identity.kind in _NODE_KINDS),
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH]
        if identity.kind in _CLIENT_ONLY_KINDS
        else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        sans=sans,
    )
    # Key before certificate: readers pair them by name, and a new
    # certificate next to an old key would fail every handshake.
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return Issued(name, identity, cert_path, key_path, cert.serial_number, not_after)


def _sign_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    not_after: dt.datetime,
    key_usage: x509.KeyUsage,
    extended: Sequence[x509.ObjectIdentifier],
    sans: Sequence[x509.GeneralName],
) -> x509.Certificate:
    """A leaf certificate of the root: what TLS leaves and document signers share."""
    now = _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            # X.509 caps commonName at 64 characters; the URI SAN, not the
            # CN, is what identifies the holder, so truncating is harmless.
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(extended), critical=False)
        # Critical: the URI SAN is the identity, and the subject carries no
        # host name, so a verifier that cannot read SANs must refuse it.
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_cert)),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def certificate_identity(cert: x509.Certificate) -> Identity:
    """The identity in a certificate's single ``jukinet://`` URI SAN; ValueError otherwise."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no subjectAltName") from None
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.lower().startswith("jukinet:")
    ]
    if len(uris) != 1:
        raise ValueError(f"certificate has {len(uris)} jukinet URI SANs, expected exactly 1")
    return parse_identity_uri(uris[0])


def _read_crl(directory: Path) -> x509.CertificateRevocationList | None:
    path = directory / CRL_FILE
    if not path.exists():
        return None
    return x509.load_pem_x509_crl(path.read_bytes())


def _write_crl(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: Iterable[x509.RevokedCertificate],
    *,
    crl_number: int,
) -> None:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _CLOCK_SKEW)
        # Informational: nodes read the file on change and do not refuse a
        # stale CRL (that would take the whole federation down when nobody
        # re-signs it); `jukinet pki revoke` re-signs it whenever it runs.
        .next_update(now + dt.timedelta(days=CRL_DAYS))
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_cert)),
            critical=False,
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_public(directory / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))


def _crl_entries(directory: Path) -> tuple[list[x509.RevokedCertificate], int]:
    """The CRL's entries and the number the next CRL must carry."""
    crl = _read_crl(directory)
    entries: list[x509.RevokedCertificate] = list(crl) if crl is not None else []
    number = 1
    if crl is not None:
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            number = 1
    return entries, number


def _add_revoked(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serial: int,
) -> None:
    """Add ``serial`` to the CRL (once) and re-sign it."""
    entries, number = _crl_entries(directory)
    if all(e.serial_number != serial for e in entries):
        entries.append(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_now()).build()
        )
    _write_crl(directory, ca_cert, ca_key, entries, crl_number=number)


def _revoke_replaced(
    directory: Path,
    cert_path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Revoke the certificate about to be replaced, if this CA issued it."""
    try:
        old = x509.load_pem_x509_certificate(cert_path.read_bytes())
        old.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        # Not a certificate of this CA: nothing this CRL could revoke.
        return
    _add_revoked(directory, ca_cert, ca_key, old.serial_number)


def revoke(directory: Path | str, name: str) -> int:
    """Add ``<name>.pem``'s serial to the CA-signed ``crl.pem``; returns the serial.

    Revoking an already revoked certificate is a no-op (the CRL is re-signed).
    """
    directory = Path(directory)
    _check_name(name)
    ca_cert, ca_key = _load_ca(directory)
    cert_path = directory / f"{name}.pem"
    if not cert_path.exists():
        raise FileNotFoundError(f"no certificate {cert_path}")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    _add_revoked(directory, ca_cert, ca_key, cert.serial_number)
    return cert.serial_number


def load_revoked_serials(path: Path | str, *, ca: Path | str | None = None) -> frozenset[int]:
    """The serial numbers listed in a PEM CRL.

    With ``ca`` (the CA certificate's path) the CRL's issuer and signature
    are checked first, and ValueError raised if they do not match: an
    unsigned or foreign CRL could otherwise un-revoke a certificate.
    """
    crl = x509.load_pem_x509_crl(Path(path).read_bytes())
    if ca is not None:
        ca_cert = x509.load_pem_x509_certificate(Path(ca).read_bytes())
        ca_public = ca_cert.public_key()
        if crl.issuer != ca_cert.subject or not isinstance(ca_public, ec.EllipticCurvePublicKey):
            raise ValueError(f"{path}: CRL was not issued by {ca}")
        if not crl.is_signature_valid(ca_public):
            raise ValueError(f"{path}: CRL signature does not verify against {ca}")
    return frozenset(entry.serial_number for entry in crl)


def cert_name(identity: Identity) -> str:
    """The conventional file name (without extension) for an identity's certificate."""
    if identity.kind in (Kind.NATIONAL, Kind.GATEWAY):
        return str(identity.kind.value)
    if identity.kind in (Kind.OPERATOR, Kind.TERMINAL):
        return f"{identity.kind.value}-{identity.code}-{identity.operator_id}"
    return f"{identity.kind.value}-{identity.code}"


@dataclass(frozen=True)
class FederationSpec:
    """Which certificates a (developer) federation needs.

    The national node and the gateway are always included; every
    municipality's prefecture is added even when not listed. With
    ``operators`` an ``admin`` operator certificate is issued for every
    municipality, every prefecture and the national node (the upper tiers'
    operators call with one; a municipal node refuses it: its operators log
    in at a terminal with their card). Every municipality also gets its
    operator CA (``operator-ca-<code>/``, which issues its cards) and a
    counter terminal certificate for each of ``terminals``
    (``terminal-<code>-desk1``, identity ``jukinet://terminal/<code>/desk1``)
    and, with ``resident_cards``, its resident card CA
    (``resident-card-ca-<code>/``, which its node signs residents' cards with).
    """

    prefectures: Sequence[str] = ()
    municipalities: Sequence[str] = ()
    agencies: Sequence[str] = ()
    operators: bool = False
    operator_id: str = "admin"
    resident_cards: bool = True
    terminals: Sequence[str] = ("desk1", "desk2")
    extra: Sequence[Identity] = field(default_factory=tuple)

    def identities(self) -> list[Identity]:
        """Every identity to issue, in a stable order, without duplicates."""
        municipalities = [Identity.municipality(c) for c in self.municipalities]
        prefecture_codes = [*self.prefectures, *(m.code[:2] for m in municipalities)]
        prefectures = [Identity.prefecture(c) for c in prefecture_codes]
        wanted: list[Identity] = [Identity.national(), Identity.gateway()]
        wanted += prefectures + municipalities
        wanted += [Identity.agency(c) for c in self.agencies]
        wanted += [Identity.terminal(m.code, t) for m in municipalities for t in self.terminals]
        if self.operators:
            orgs = [NATIONAL_ORG, *(p.code for p in prefectures), *(m.code for m in municipalities)]
            wanted += [Identity.operator(org, self.operator_id) for org in orgs]
        wanted += self.extra
        return list(dict.fromkeys(wanted))


def _still_good(
    directory: Path,
    name: str,
    identity: Identity,
    ca_cert: x509.Certificate,
    revoked: frozenset[int],
) -> Issued | None:
    """The existing ``<name>`` certificate if it can be kept as is, else None."""
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert = _keepable(cert_path, key_path, ca_cert, revoked)
    try:
        if cert is None or certificate_identity(cert) != identity:
            return None
    except ValueError:
        return None
    if identity.kind in _NODE_KINDS and not _agrees_keys(cert):
        return None  # issued before relayed bodies were sealed to node keys
    return Issued(
        name, identity, cert_path, key_path, cert.serial_number, cert.not_valid_after_utc, False
    )


def _keepable(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, revoked: frozenset[int]
) -> x509.Certificate | None:
    """The certificate at ``cert_path`` if it is this CA's, matches its key, is not
    revoked and not due for renewal; else None."""
    if not cert_path.exists() or not key_path.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return None
    if key.public_key() != cert.public_key():
        return None
    if cert.serial_number in revoked:
        return None
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return None
    return cert


def _agrees_keys(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement)
    except x509.ExtensionNotFound:
        return False


def issue_federation(
    directory: Path | str,
    spec: FederationSpec,
    *,
    days: int = NODE_DAYS,
    ca_common_name: str = "jukinet root CA",
) -> list[Issued]:
    """Create the CA if needed and every certificate ``spec`` lists.

    Every municipality also gets its document-signing certificate
    (:func:`issue_document_signer`), kept and renewed by the same rule; it is
    not among the results (it is no caller's certificate).

    Idempotent: a certificate already present, issued by this CA, for the
    same identity, with a matching key, not revoked and not close to expiry
    is kept; anything else is (re)issued, and the certificate it replaces
    revoked.
    """
    directory = Path(directory)
    if not (directory / CA_CERT).exists():
        create_ca(directory, ca_common_name)
    ca_cert, _ = _load_ca(directory)
    crl = _read_crl(directory)
    revoked = frozenset(e.serial_number for e in crl) if crl is not None else frozenset()
    results: list[Issued] = []
    for identity in spec.identities():
        name = cert_name(identity)
        kept = _still_good(directory, name, identity, ca_cert, revoked)
        results.append(
            kept if kept is not None else issue(directory, identity, name, days, force=True)
        )
        if identity.kind in (Kind.MUNICIPALITY, Kind.PREFECTURE, Kind.NATIONAL):
            _ensure_log_key(directory, name, identity)
        if identity.kind is Kind.MUNICIPALITY:
            _ensure_document_signer(directory, identity.code, ca_cert, revoked, days)
        if (
            identity.kind is Kind.MUNICIPALITY
            and not (operator_ca_dir(directory, identity.code) / CA_CERT).exists()
        ):
            create_operator_ca(directory, identity.code)
        if (
            identity.kind is Kind.MUNICIPALITY
            and spec.resident_cards
            and not (resident_card_ca_dir(directory, identity.code) / CA_CERT).exists()
        ):
            create_resident_card_ca(directory, identity.code)
    write_log_verifiers(directory)
    return results


def _ensure_log_key(directory: Path, name: str, identity: Identity) -> None:
    """Give a node a log key file beside its TLS key, unless it has one (it is kept)."""
    path = audit.default_log_key_path(directory / f"{name}.key")
    if not path.exists():
        audit.write_log_keys(path, audit.new_log_keys(audit.origin_of(identity)))


def write_log_verifiers(directory: Path | str) -> Path:
    """Write ``log-verifiers`` beside the CA: the log and witness verifier keys of every
    node here.

    Every node reads it (``log_verifiers``) to know the log keys of the tier
    below; a node checks only the origins of its own callers.
    """
    directory = Path(directory)
    lines = []
    for key_file in sorted(directory.glob("*.log.key")):
        name = key_file.name.removesuffix(".log.key")
        identity = _node_identity(name)
        if identity is not None:
            keys = audit.read_log_keys(key_file, audit.origin_of(identity))
            lines.append(keys.log.verifier.vkey + "\n")
            lines.append(keys.witness.verifier.vkey + "\n")
    path = directory / audit.VERIFIERS_FILE
    _write_public(path, "".join(lines).encode())
    return path


def _node_identity(name: str) -> Identity | None:
    """The node a conventional certificate name stands for, if it is a node's."""
    kind, _, code = name.partition("-")
    if kind == Kind.NATIONAL.value and not code:
        return Identity.national()
    if kind == Kind.PREFECTURE.value and code:
        return Identity.prefecture(code)
    if kind == Kind.MUNICIPALITY.value and code:
        return Identity.municipality(code)
    return None


# --- document signers ---------------------------------------------------------


def document_signer_uri(code: str) -> str:
    """The URI SAN of municipality ``code``'s document-signing certificate."""
    Identity.municipality(code)  # validates the code (ValueError)
    return f"{DOCUMENT_SIGNER_PREFIX}{code}"


def default_document_key_path(tls_key: Path) -> Path:
    """Where a node's document-signing key is when ``document_key`` is not set."""
    return tls_key.with_suffix(_DOCUMENT_SUFFIX + ".key")


def default_document_certificate_path(tls_cert: Path) -> Path:
    """Where a node's document-signing certificate is when ``document_certificate``
    is not set."""
    return tls_cert.with_suffix(_DOCUMENT_SUFFIX + ".pem")


def issue_document_signer(
    directory: Path | str, code: str, days: int = NODE_DAYS, *, force: bool = False
) -> x509.Certificate:
    """Issue municipality ``code``'s document-signing certificate and key as
    ``municipality-<code>.doc.pem`` / ``.doc.key`` beside ``ca.pem``.

    URI SAN ``jukinet://document-signer/<code>``, key usage digitalSignature
    and nonRepudiation, extended key usage documentSigning alone. An existing
    one is refused (FileExistsError) unless ``force``, which revokes it.
    """
    directory = Path(directory)
    uri = document_signer_uri(code)
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    ca_cert, ca_key = _load_ca(directory)
    name = cert_name(Identity.municipality(code))
    cert_path = default_document_certificate_path(directory / f"{name}.pem")
    key_path = default_document_key_path(directory / f"{name}.key")
    existing = [path for path in (cert_path, key_path) if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} already exists: refusing to replace it")
    if cert_path.exists():
        _revoke_replaced(directory, cert_path, ca_cert, ca_key)
    key = _new_key()
    cert = _sign_leaf(
        ca_cert,
        ca_key,
        common_name=f"{name} document signer",
        public_key=key.public_key(),
        not_after=min(_now() + dt.timedelta(days=days), ca_cert.not_valid_after_utc),
        key_usage=_key_usage(sign=True, ca=False, commit=True),
        extended=[DOCUMENT_SIGNING],
        sans=[x509.UniformResourceIdentifier(uri)],
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _ensure_document_signer(
    directory: Path, code: str, ca_cert: x509.Certificate, revoked: frozenset[int], days: int
) -> None:
    """Keep municipality ``code``'s document signer if it is still good, else issue it."""
    name = cert_name(Identity.municipality(code))
    cert_path = default_document_certificate_path(directory / f"{name}.pem")
    key_path = default_document_key_path(directory / f"{name}.key")
    cert = _keepable(cert_path, key_path, ca_cert, revoked)
    try:
        if cert is not None and document_signer_code(cert) == code:
            return
    except ValueError:
        pass
    issue_document_signer(directory, code, days, force=True)


def document_signer_code(cert: x509.Certificate) -> str:
    """The municipality a document-signing certificate speaks for; ValueError (saying
    why) for any certificate that is not one.

    It must be an end-entity certificate with exactly one URI SAN,
    ``jukinet://document-signer/<valid code>``, key usage digitalSignature
    and nonRepudiation, and documentSigning among its extended key usages.
    Who issued it is the caller's question (the chain to the federation's root).
    """
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError(
            "not a document-signing certificate (it lacks basic constraints, key usage, "
            "extended key usage or subjectAltName)"
        ) from None
    if basic.ca:
        raise ValueError("not a document-signing certificate (it is a CA)")
    if DOCUMENT_SIGNING not in extended:
        raise ValueError("not a document-signing certificate (no documentSigning usage)")
    if not (usage.digital_signature and usage.content_commitment):
        raise ValueError(
            "not a document-signing certificate (key usage lacks digitalSignature "
            "or nonRepudiation)"
        )
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith(DOCUMENT_SIGNER_PREFIX):
        raise ValueError("not a document-signing certificate (no document-signer URI)")
    code = uris[0].removeprefix(DOCUMENT_SIGNER_PREFIX)
    try:
        Identity.municipality(code)
    except ValueError:
        raise ValueError(f"document-signer URI names no municipality: {uris[0]!r}") from None
    return code


# --- operator CAs and card certificates ---------------------------------------

OPERATOR_CA_DAYS = 1825
# A card is lent to one person for years; its certificate is renewed with the card.
CARD_DAYS = 1095
# The subject O of an operator CA names the organisation it serves.
_OPERATOR_CA_CN = "jukinet operator CA"


def _key_usage(*, sign: bool, ca: bool, commit: bool = False, agree: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=commit,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=agree,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def operator_ca_dir(directory: Path | str, org: str) -> Path:
    """The directory of ``org``'s operator CA inside the PKI directory ``directory``."""
    return sub_ca_dir(directory, SubCaKind.OPERATOR, org)


def operator_ca_org(cert: x509.Certificate) -> str:
    """The organisation an operator CA certificate serves; ValueError if it is none.

    An operator CA names its organisation in its subject's organizational unit
    (a CA presents no caller identity, so it carries no ``jukinet://`` SAN).
    """
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(units) != 1:
        raise ValueError("operator CA certificate names no single organisation (OU)")
    org = str(units[0].value)
    Identity.operator(org, "ca")
    return org


class SubCaKind(enum.Enum):
    """The kinds of CA the root signs under itself, each for one organisation.

    The value is the host of every URI the CA may certify (its name
    constraint) and the prefix of its directory in the PKI directory.
    """

    OPERATOR = "operator"
    """An organisation's operator CA: its staff's IC cards."""
    RESIDENT_CARD = "resident-card"
    """A municipality's resident card CA (住民基本台帳カード): its residents' cards."""


_SUB_CA_CN = {
    SubCaKind.OPERATOR: _OPERATOR_CA_CN,
    SubCaKind.RESIDENT_CARD: "jukinet resident card CA",
}
_SUB_CA_DAYS = {SubCaKind.OPERATOR: OPERATOR_CA_DAYS, SubCaKind.RESIDENT_CARD: 3650}


def sub_ca_dir(directory: Path | str, kind: SubCaKind, org: str) -> Path:
    """The directory of ``org``'s CA of ``kind`` inside the PKI directory ``directory``."""
    # Validates org (ValueError) before it becomes part of a path: any
    # organisation has operators, only a municipality issues resident cards.
    if kind is SubCaKind.RESIDENT_CARD:
        Identity.municipality(org)
    else:
        Identity.operator(org, "ca")
    return Path(directory) / f"{kind.value}-ca-{org}"


def create_sub_ca(
    directory: Path | str, kind: SubCaKind, org: str, *, days: int | None = None
) -> x509.Certificate:
    """Create ``org``'s CA of ``kind`` under the root of ``directory``, with an empty CRL.

    Its certificate is signed by the root, is a CA of pathLen 0 (it signs
    card certificates only), may sign certificates and CRLs only, names its
    organisation in its subject's OU and is name-constrained to
    ``jukinet://<kind>/...`` URIs. Refuses (FileExistsError) to replace an
    existing CA.
    """
    root_cert, root_key = _load_ca(Path(directory))
    where = sub_ca_dir(directory, kind, org)
    where.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = where / CA_CERT, where / CA_KEY
    for path in (cert_path, key_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists: refusing to replace the CA")
    key = _new_key()
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{_SUB_CA_CN[kind]} {org}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    lifetime = dt.timedelta(days=_SUB_CA_DAYS[kind] if days is None else days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + lifetime, root_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=False, ca=True), critical=True)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(kind.value)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(root_cert)),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write_crl(where, cert, key, [], crl_number=1)
    return cert


def create_operator_ca(
    directory: Path | str, org: str, *, days: int = OPERATOR_CA_DAYS
) -> x509.Certificate:
    """Create ``org``'s operator CA (:func:`create_sub_ca` of kind operator)."""
    return create_sub_ca(directory, SubCaKind.OPERATOR, org, days=days)


def _card_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    uri: str,
    subject: x509.Name,
    days: int,
) -> x509.Certificate:
    """A card certificate: digitalSignature only, no extended key usage, one URI SAN."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True, ca=False), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_cert)),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _check_card_key(public_key: ec.EllipticCurvePublicKey, days: int) -> None:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise ValueError("a card key must be EC P-256")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")


def issue_card_certificate(
    directory: Path | str,
    identity: Identity,
    public_key: ec.EllipticCurvePublicKey,
    *,
    days: int = CARD_DAYS,
    force: bool = False,
) -> x509.Certificate:
    """Certify an IC card's ``public_key`` (generated on the card) for operator ``identity``.

    Issued by the operator CA of the operator's own organisation (the policy:
    an operator CA issues ``jukinet://operator/<its org>/<id>`` only), kept as
    ``<operator-ca>/<cert_name(identity)>.pem``. The certificate allows
    digitalSignature and nothing else, and carries no extended key usage, so
    no TLS stack accepts it for a handshake. An existing certificate of that
    name is refused (FileExistsError) unless ``force``, which revokes it.
    """
    if identity.kind is not Kind.OPERATOR:
        raise ValueError(f"an operator CA certifies operators only, not {identity.uri}")
    _check_card_key(public_key, days)
    where = operator_ca_dir(directory, identity.org)
    ca_cert, ca_key = _load_ca(where)
    if operator_ca_org(ca_cert) != identity.org:
        raise ValueError(f"{where}: operator CA does not serve organisation {identity.org}")
    name = cert_name(identity)
    cert_path = where / f"{name}.pem"
    if cert_path.exists():
        if not force:
            raise FileExistsError(
                f"{cert_path} already exists: refusing to replace it "
                "(use force to revoke the old card certificate)"
            )
        _revoke_replaced(where, cert_path, ca_cert, ca_key)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.org),
            x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
        ]
    )
    cert = _card_certificate(ca_cert, ca_key, public_key, identity.uri, subject, days)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert


# --- resident cards (住民基本台帳カード) ------------------------------------------

# Assumed: ten years, the validity of a resident card (a card lent for years
# is renewed with a new card, and so a new key and certificate).
RESIDENT_CARD_DAYS = 3650
CARD_SECRET_FILE = "card-secret.key"
"""Beside a resident card CA's key: the secret its cards' security officer PINs
derive from (:func:`jukinet.residentcard.card_so_pin`)."""
_CARD_ID_RE = re.compile(r"[0-9a-f]{32}")
_RESIDENT_CARD_PREFIX = f"jukinet://{SubCaKind.RESIDENT_CARD.value}/"


def resident_card_ca_dir(directory: Path | str, code: str) -> Path:
    """The directory of municipality ``code``'s resident card CA inside ``directory``."""
    return sub_ca_dir(directory, SubCaKind.RESIDENT_CARD, code)


def create_resident_card_ca(directory: Path | str, code: str) -> x509.Certificate:
    """Create municipality ``code``'s resident card CA (:func:`create_sub_ca`) and the
    secret its cards' security officer PINs derive from."""
    cert = create_sub_ca(directory, SubCaKind.RESIDENT_CARD, code)
    _write_private(
        resident_card_ca_dir(directory, code) / CARD_SECRET_FILE, os.urandom(32).hex().encode()
    )
    return cert


def resident_card_uri(code: str, card_id: str) -> str:
    """``jukinet://resident-card/<code>/<card id>``: a card, by its municipality and id."""
    Identity.municipality(code)
    if _CARD_ID_RE.fullmatch(card_id) is None:
        raise ValueError(f"a card id is 32 lowercase hex digits, got {card_id!r}")
    return f"{_RESIDENT_CARD_PREFIX}{code}/{card_id}"


def parse_resident_card_uri(uri: str) -> tuple[str, str]:
    """The municipality code and card id of a resident card URI; ValueError otherwise."""
    code, slash, card_id = uri.removeprefix(_RESIDENT_CARD_PREFIX).partition("/")
    if not uri.startswith(_RESIDENT_CARD_PREFIX) or not slash:
        raise ValueError(f"{uri!r} is not a resident card URI")
    try:
        resident_card_uri(code, card_id)
    except ValueError as exc:
        raise ValueError(f"{uri!r}: {exc}") from None
    return code, card_id


def sub_ca_org(cert: x509.Certificate, kind: SubCaKind) -> str:
    """The organisation a CA certificate of ``kind`` serves; ValueError if it is none.

    The CA names its organisation in its subject's organizational unit, and
    its name constraint permits exactly the URIs of ``kind``.
    """
    org = operator_ca_org(cert)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("CA certificate has no name constraints") from None
    if constraints.excluded_subtrees or list(constraints.permitted_subtrees or ()) != [
        x509.UniformResourceIdentifier(kind.value)
    ]:
        raise ValueError(f"CA certificate is not constrained to {kind.value} URIs")
    if kind is SubCaKind.RESIDENT_CARD:
        Identity.municipality(org)
    return org


def load_ca(directory: Path | str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The certificate and key of the CA in ``directory`` (``ca.pem``, ``ca.key``)."""
    return _load_ca(Path(directory))


def issue_resident_card_certificate(
    ca_dir: Path | str,
    code: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    days: int = RESIDENT_CARD_DAYS,
) -> tuple[x509.Certificate, str]:
    """Certify a resident card's ``public_key`` (made on the card) by municipality
    ``code``'s resident card CA in ``ca_dir``; the certificate and the card's new id.

    The card id is random (128 bits); the certificate names the card by its
    URI SAN ``jukinet://resident-card/<code>/<card id>`` and its subject
    (CN the card id), and carries nothing about its holder: no resident code,
    no name. A CA that does not serve ``code`` refuses (ValueError).
    """
    _check_card_key(public_key, days)
    ca_cert, ca_key = _load_ca(Path(ca_dir))
    if sub_ca_org(ca_cert, SubCaKind.RESIDENT_CARD) != code:
        raise ValueError(f"{ca_dir}: the resident card CA does not serve municipality {code}")
    card_id = os.urandom(16).hex()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, code),
            x509.NameAttribute(NameOID.COMMON_NAME, card_id),
        ]
    )
    uri = resident_card_uri(code, card_id)
    return _card_certificate(ca_cert, ca_key, public_key, uri, subject, days), card_id


def write_card_crl(
    ca_dir: Path | str, revoked: Iterable[tuple[int, dt.datetime, x509.ReasonFlags]]
) -> x509.CertificateRevocationList:
    """Re-sign the CRL of the CA in ``ca_dir`` listing exactly ``revoked`` (serial,
    revocation time, reason), numbered after the CRL it replaces; the new CRL."""
    where = Path(ca_dir)
    ca_cert, ca_key = _load_ca(where)
    _, number = _crl_entries(where)
    entries = [
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(when)
        .add_extension(x509.CRLReason(reason), critical=False)
        .build()
        for serial, when, reason in revoked
    ]
    _write_crl(where, ca_cert, ca_key, entries, crl_number=number)
    crl = _read_crl(where)
    assert crl is not None
    return crl


def revoke_card(directory: Path | str, identity: Identity) -> int:
    """Revoke operator ``identity``'s card certificate in its operator CA's CRL; the serial."""
    if identity.kind is not Kind.OPERATOR:
        raise ValueError(f"only operator cards are revoked here, not {identity.uri}")
    return revoke(operator_ca_dir(directory, identity.org), cert_name(identity))


def revoke_operator_ca(directory: Path | str, org: str) -> int:
    """Revoke ``org``'s operator CA in the root's CRL (every card it certified stops working)."""
    where = operator_ca_dir(directory, org)
    root_cert, root_key = _load_ca(Path(directory))
    cert = x509.load_pem_x509_certificate((where / CA_CERT).read_bytes())
    _add_revoked(Path(directory), root_cert, root_key, cert.serial_number)
    return cert.serial_number


# --- command line -------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    cert = create_ca(args.dir, args.common_name)
    print(
        f"wrote {Path(args.dir) / CA_CERT} (root CA {args.common_name!r}, "
        f"expires {cert.not_valid_after_utc:%Y-%m-%d}) and {Path(args.dir) / CRL_FILE}"
    )
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    identity = parse_identity_uri(args.identity)
    name = args.name or cert_name(identity)
    hosts = args.host if args.host else None
    issued = issue(args.dir, identity, name, args.days, hosts=hosts, force=args.force)
    print(issued.describe())
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    serial = revoke(args.dir, args.name)
    cert, crl = Path(args.dir) / f"{args.name}.pem", Path(args.dir) / CRL_FILE
    print(f"revoked {cert} (serial {serial:x}) in {crl}")
    return 0


def _cmd_federation(args: argparse.Namespace) -> int:
    spec = FederationSpec(
        prefectures=args.prefecture,
        municipalities=args.municipality,
        agencies=args.agency,
        operators=args.operators,
    )
    for issued in issue_federation(args.dir, spec, days=args.days):
        print(issued.describe())
    return 0


_Command = Callable[[argparse.Namespace], int]


def _friendly(func: _Command) -> _Command:
    """Turn expected failures (bad input, missing files) into one line and exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (ValueError, OSError) as exc:
            print(f"jukinet pki: {exc}", file=sys.stderr)
            return 1

    return run


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pki init|issue|revoke|federation`` to a ``jukinet`` subcommand parser.

    Every leaf parser sets ``func``: it takes the parsed Namespace and returns
    the exit code (0, or 1 with one line on stderr).
    """
    pki = subparsers.add_parser("pki", help="manage the federation's private PKI")
    commands = pki.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")

    def with_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--dir", required=True, type=Path, help="PKI directory")
        return parser

    init = with_dir(commands.add_parser("init", help="create the root CA and an empty CRL"))
    init.add_argument("--common-name", default="jukinet root CA", help="CA subject CN")
    init.set_defaults(func=_friendly(_cmd_init))

    one = with_dir(commands.add_parser("issue", help="issue one certificate"))
    one.add_argument("--identity", required=True, help="e.g. jukinet://municipality/312011")
    one.add_argument("--name", help="file name without .pem (default: from the identity)")
    one.add_argument("--days", type=int, default=NODE_DAYS, help=f"lifetime (default {NODE_DAYS})")
    one.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP the server answers as (repeatable; default for nodes: "
        "localhost and 127.0.0.1, none for agencies and operators)",
    )
    one.add_argument(
        "--force",
        action="store_true",
        help="replace an existing certificate of that name, revoking the old one",
    )
    one.set_defaults(func=_friendly(_cmd_issue))

    rev = with_dir(commands.add_parser("revoke", help="revoke a certificate (adds it to crl.pem)"))
    rev.add_argument("--name", required=True, help="file name without .pem")
    rev.set_defaults(func=_friendly(_cmd_revoke))

    fed = with_dir(
        commands.add_parser("federation", help="CA plus every certificate a federation needs")
    )
    fed.add_argument("--prefecture", action="append", default=[], metavar="CODE")
    fed.add_argument("--municipality", action="append", default=[], metavar="CODE")
    fed.add_argument("--agency", action="append", default=[], metavar="CODE")
    fed.add_argument(
        "--operators",
        action="store_true",
        help="also an admin operator certificate per organisation (the upper tiers')",
    )
    fed.add_argument("--days", type=int, default=NODE_DAYS, help=f"lifetime (default {NODE_DAYS})")
    fed.set_defaults(func=_friendly(_cmd_federation))
