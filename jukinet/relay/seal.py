"""The body of a relayed request or answer: signed by its sender's node key,
sealed to its recipient's node certificate key. Pure cryptography.

Signing: ECDSA P-256 / SHA-256 over a fixed domain prefix (one for requests,
one for answers), the header bytes and the inner bytes, each of the two
preceded by its length, so that no split of the same bytes verifies as
another message. The signer's certificate travels inside the seal: the
hops never learn who signed, only the header's claim.

Sealing: an ephemeral P-256 key agrees a secret with the recipient's
certificate key (ECDH); HKDF-SHA256 derives a 256-bit AES-GCM key from it,
with ``info`` binding the direction, the ephemeral key, the SHA-256 of the
recipient's certificate and of the header; AES-256-GCM encrypts the
serialized :class:`~jukinet.v1.relay_pb2.SignedBody` with the header bytes
as associated data. A body taken to another envelope, another recipient or
the other direction does not open.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError

from jukinet.errors import PermissionDenied
from jukinet.identity import Identity
from jukinet.pki import certificate_identity
from jukinet.reasons import Reason
from jukinet.v1 import relay_pb2

NONCE_SIZE = 12
KEY_SIZE = 32


class Direction(Enum):
    """Which way a body travels: each has its own signing prefix and key derivation."""

    REQUEST = "request"
    ANSWER = "answer"

    @property
    def sign_prefix(self) -> bytes:
        """Prefixed to what the sender signs: a node key's signature over anything
        else (a TLS handshake, a move-out certificate) is never one of these."""
        return f"jukinet relay {self.value} v1\x00".encode()

    @property
    def seal_info(self) -> bytes:
        """The start of the HKDF ``info`` of a body travelling this way."""
        return f"jukinet relay seal {self.value} v1\x00".encode()


class SealInvalid(PermissionDenied):
    """A sealed body that does not open here, or whose signature or signer fails."""

    reason = Reason.RELAY_SEAL_INVALID


def certificate_digest(der: bytes) -> bytes:
    """The SHA-256 of a certificate's DER bytes: which certificate a body was sealed to."""
    return hashlib.sha256(der).digest()


def _framed(prefix: bytes, header: bytes, body: bytes) -> bytes:
    return prefix + struct.pack(">Q", len(header)) + header + struct.pack(">Q", len(body)) + body


def sign_body(
    direction: Direction,
    header: bytes,
    body: bytes,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
) -> relay_pb2.SignedBody:
    """``body`` signed by the sending node for the envelope of ``header``."""
    signature = key.sign(_framed(direction.sign_prefix, header, body), ec.ECDSA(hashes.SHA256()))
    return relay_pb2.SignedBody(
        body=body, signature=signature, signer_certificate=certificate.public_bytes(Encoding.DER)
    )


def _derive(
    direction: Direction, shared: bytes, ephemeral: bytes, recipient_digest: bytes, header: bytes
) -> bytes:
    info = direction.seal_info + ephemeral + recipient_digest + hashlib.sha256(header).digest()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(shared)


def _recipient_key(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise SealInvalid("the recipient's certificate holds no P-256 key")
    return public


def seal(
    direction: Direction, header: bytes, signed: relay_pb2.SignedBody, recipient: x509.Certificate
) -> relay_pb2.SealedBody:
    """``signed`` sealed to ``recipient``'s certificate key for the envelope of ``header``."""
    public = _recipient_key(recipient)
    ephemeral_key = ec.generate_private_key(ec.SECP256R1())
    ephemeral = ephemeral_key.public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )
    digest = certificate_digest(recipient.public_bytes(Encoding.DER))
    key = _derive(direction, ephemeral_key.exchange(ec.ECDH(), public), ephemeral, digest, header)
    nonce = os.urandom(NONCE_SIZE)
    ciphertext = AESGCM(key).encrypt(nonce, signed.SerializeToString(), header)
    return relay_pb2.SealedBody(
        ephemeral_public_key=ephemeral,
        nonce=nonce,
        ciphertext=ciphertext,
        recipient_certificate_sha256=digest,
    )


def open_sealed(
    direction: Direction,
    header: bytes,
    sealed: relay_pb2.SealedBody,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
) -> relay_pb2.SignedBody:
    """The signed body inside ``sealed``, opened with this node's ``key``; :class:`SealInvalid`
    if it was sealed to another certificate or another envelope, or was altered."""
    digest = certificate_digest(certificate.public_bytes(Encoding.DER))
    if sealed.recipient_certificate_sha256 != digest:
        raise SealInvalid("the body is sealed to another certificate than this node's")
    if len(sealed.nonce) != NONCE_SIZE:
        raise SealInvalid(f"the nonce is not {NONCE_SIZE} bytes")
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), sealed.ephemeral_public_key
        )
        shared = key.exchange(ec.ECDH(), ephemeral)
    except (ValueError, TypeError):
        raise SealInvalid("the ephemeral key is not a P-256 point") from None
    secret = _derive(direction, shared, sealed.ephemeral_public_key, digest, header)
    try:
        plain = AESGCM(secret).decrypt(sealed.nonce, sealed.ciphertext, header)
        return relay_pb2.SignedBody.FromString(plain)
    except InvalidTag:
        raise SealInvalid("the body does not open: altered, or of another envelope") from None
    except DecodeError:
        raise SealInvalid("the opened body is not a signed body") from None


@dataclass(frozen=True)
class Trust:
    """What a node checks a signer's certificate against: the root CA and the revoked serials."""

    ca: x509.Certificate
    revoked: Callable[[], frozenset[int]] | frozenset[int]

    def revoked_serials(self) -> frozenset[int]:
        """The serials revoked now."""
        return self.revoked() if callable(self.revoked) else self.revoked


def check_signer(
    der: bytes, expected: Identity, trust: Trust, now: dt.datetime
) -> x509.Certificate:
    """The certificate ``der`` if it chains to the root, is valid ``now``, is not revoked
    and names ``expected``; :class:`SealInvalid` otherwise."""
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.verify_directly_issued_by(trust.ca)
    except (ValueError, TypeError, InvalidSignature):
        raise SealInvalid("the signer's certificate is not issued by the federation CA") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SealInvalid("the signer's certificate is not valid now")
    if cert.serial_number in trust.revoked_serials():
        raise SealInvalid("the signer's certificate is revoked")
    try:
        identity = certificate_identity(cert)
    except ValueError:
        raise SealInvalid("the signer's certificate names no identity") from None
    if identity != expected:
        raise SealInvalid(f"signed by {identity.uri}, not by {expected.uri}")
    return cert


def verify_body(
    direction: Direction,
    header: bytes,
    signed: relay_pb2.SignedBody,
    expected: Identity,
    trust: Trust,
    now: dt.datetime,
) -> x509.Certificate:
    """Check ``signed`` was signed for ``header`` by ``expected``'s node; its certificate."""
    cert = check_signer(signed.signer_certificate, expected, trust, now)
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SealInvalid("the signer's key is not an EC key")
    try:
        public.verify(
            signed.signature,
            _framed(direction.sign_prefix, header, signed.body),
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature:
        raise SealInvalid("the signature does not match the body") from None
    return cert
