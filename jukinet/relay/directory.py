"""The federation's directory: which node serves which municipality and prefecture,
where, and with which certificate. The national node signs it; every node checks
it before use. Pure rules and cryptography.

The content comes from a file the national node's administrator keeps (setting
``directory``), one table per node::

    [[node]]
    identity = "jukinet://municipality/312011"
    address = "10.0.31.11:50111"
    certificate = "pki/municipality-312011.pem"   # relative to the file's folder

The signature (ECDSA P-256 / SHA-256 with the national node's key) covers a
fixed prefix and the directory bytes as carried, so they are never
re-serialized before checking (the pattern of :mod:`jukinet.movecert`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.message import DecodeError

from jukinet.clock import MAX_CLOCK_SKEW
from jukinet.errors import ConfigError, PermissionDenied, Unavailable
from jukinet.identity import Identity, Kind, parse_identity_uri
from jukinet.pki import certificate_identity
from jukinet.reasons import Reason
from jukinet.relay.seal import Trust
from jukinet.v1 import relay_pb2

DOMAIN_PREFIX = b"jukinet directory v1\x00"
"""Prefixed to the directory bytes before signing."""

VALIDITY = dt.timedelta(hours=24)
"""How long a directory the national node signs is valid."""
RESIGN_BEFORE = dt.timedelta(hours=12)
"""The national node signs a new serial when the current one expires within this."""
GRACE = dt.timedelta(hours=72)
"""How long after its expiry a node keeps relaying on the directory it holds (the
national node may be away); past that it refuses (``directory-expired``)."""

_LISTED_KINDS = frozenset({Kind.MUNICIPALITY, Kind.PREFECTURE, Kind.NATIONAL})


class DirectoryInvalid(PermissionDenied):
    """A directory that is not the national node's, or cannot be read."""

    reason = Reason.DIRECTORY_INVALID


class DirectoryExpired(Unavailable):
    """No directory is held, or it is past its expiry and grace."""

    reason = Reason.DIRECTORY_EXPIRED


@dataclass(frozen=True)
class Source:
    """The administered file's entries and a fingerprint of everything they were read from."""

    entries: tuple[relay_pb2.DirectoryEntry, ...]
    fingerprint: bytes


def read_source(path: Path) -> Source:
    """The entries of the directory file ``path``; :class:`ConfigError` naming the problem."""
    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"directory: {path}: not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"directory: {path}: cannot read: {exc}") from None
    nodes = doc.get("node", [])
    if set(doc) - {"node"} or not isinstance(nodes, list):
        raise ConfigError(f"directory: {path}: expected [[node]] tables only")
    digest = hashlib.sha256(raw)
    entries: list[relay_pb2.DirectoryEntry] = []
    seen: set[str] = set()
    for number, node in enumerate(nodes, 1):
        where = f"directory: {path}: node {number}"
        if not isinstance(node, dict) or set(node) != {"identity", "address", "certificate"}:
            raise ConfigError(f"{where}: needs identity, address and certificate, nothing else")
        if not all(isinstance(v, str) for v in node.values()):
            raise ConfigError(f"{where}: every value is text")
        try:
            identity = parse_identity_uri(node["identity"])
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if identity.kind not in _LISTED_KINDS:
            raise ConfigError(f"{where}: {identity.uri} is not a node that relays")
        if identity.uri in seen:
            raise ConfigError(f"{where}: {identity.uri} is listed twice")
        seen.add(identity.uri)
        cert_path = Path(node["certificate"])
        cert_path = cert_path if cert_path.is_absolute() else path.parent / cert_path
        try:
            pem = cert_path.read_bytes()
            cert = x509.load_pem_x509_certificate(pem)
        except OSError as exc:
            raise ConfigError(f"{where}: certificate {cert_path}: {exc.strerror or exc}") from None
        except ValueError:
            raise ConfigError(f"{where}: {cert_path} is not a PEM certificate") from None
        digest.update(pem)
        entries.append(
            relay_pb2.DirectoryEntry(
                identity=identity.uri,
                address=node["address"],
                certificate=cert.public_bytes(Encoding.DER),
            )
        )
    return Source(tuple(entries), digest.digest())


def write_source(path: Path, nodes: list[tuple[Identity, str, Path]]) -> None:
    """Write a directory file listing ``nodes`` (identity, host:port, certificate PEM
    path), replacing it at once (a reader sees the old file or the new one); its
    folder is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# The relay directory the national node signs (README: directory).", ""]
    for identity, address, certificate in nodes:
        lines += [
            "[[node]]",
            f'identity = "{identity.uri}"',
            f'address = "{address}"',
            f"certificate = {_toml_string(str(certificate))}",
            "",
        ]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines), encoding="utf-8")
    partial.replace(path)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sign(
    source: Source,
    *,
    serial: int,
    issued_at: dt.datetime,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
) -> relay_pb2.SignedDirectory:
    """A directory of ``source``'s entries, valid for :data:`VALIDITY` from ``issued_at``."""
    body = relay_pb2.Directory(
        serial=serial,
        issued_at=issued_at.astimezone(dt.UTC).isoformat(),
        expires_at=(issued_at + VALIDITY).astimezone(dt.UTC).isoformat(),
        entries=list(source.entries),
    ).SerializeToString()
    return relay_pb2.SignedDirectory(
        directory=body,
        signature=key.sign(DOMAIN_PREFIX + body, ec.ECDSA(hashes.SHA256())),
        signer_certificate=certificate.public_bytes(Encoding.DER),
    )


@dataclass(frozen=True)
class Verified:
    """A directory whose signature and signer were checked."""

    signed: relay_pb2.SignedDirectory
    serial: int
    issued_at: dt.datetime
    expires_at: dt.datetime
    entries: dict[str, relay_pb2.DirectoryEntry]

    def usable(self, now: dt.datetime) -> bool:
        """Whether a node may still relay on it at ``now`` (expiry plus :data:`GRACE`)."""
        return now <= self.expires_at + GRACE

    def check_usable(self, now: dt.datetime) -> None:
        """Refuse (``directory-expired``) when past expiry and grace."""
        if not self.usable(now):
            raise DirectoryExpired(
                f"the directory held (serial {self.serial}) expired at "
                f"{self.expires_at.isoformat()} and its grace is over: nothing is relayed "
                "until a newer one comes from the national node"
            )

    def entry(self, identity: Identity) -> relay_pb2.DirectoryEntry | None:
        """The entry of ``identity``, if listed."""
        return self.entries.get(identity.uri)


def _time(text: str, field: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise DirectoryInvalid(f"the directory's {field} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise DirectoryInvalid(f"the directory's {field} has no time zone")
    return when


def verify(signed: relay_pb2.SignedDirectory, trust: Trust, now: dt.datetime) -> Verified:
    """Check the signer chains to the root CA, is valid and not revoked, is the national
    node, and signed these bytes; the directory, or :class:`DirectoryInvalid`."""
    try:
        signer = x509.load_der_x509_certificate(signed.signer_certificate)
        signer.verify_directly_issued_by(trust.ca)
    except (ValueError, TypeError, InvalidSignature):
        raise DirectoryInvalid(
            "the directory's signer is not issued by the federation CA"
        ) from None
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        raise DirectoryInvalid("the directory's signer certificate is not valid now")
    if signer.serial_number in trust.revoked_serials():
        raise DirectoryInvalid("the directory's signer certificate is revoked")
    try:
        identity = certificate_identity(signer)
    except ValueError:
        raise DirectoryInvalid("the directory's signer names no identity") from None
    if identity != Identity.national():
        raise DirectoryInvalid(f"the directory is signed by {identity.uri}, not the national node")
    public = signer.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise DirectoryInvalid("the directory's signer holds no EC key")
    try:
        public.verify(signed.signature, DOMAIN_PREFIX + signed.directory, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise DirectoryInvalid("the directory's signature does not match it") from None
    try:
        body = relay_pb2.Directory.FromString(signed.directory)
    except DecodeError:
        raise DirectoryInvalid("the directory cannot be read") from None
    issued_at = _time(body.issued_at, "issued_at")
    if issued_at > now + MAX_CLOCK_SKEW:
        raise DirectoryInvalid("the directory's issued_at lies in the future")
    return Verified(
        signed=signed,
        serial=body.serial,
        issued_at=issued_at,
        expires_at=_time(body.expires_at, "expires_at"),
        entries={e.identity: e for e in body.entries},
    )
