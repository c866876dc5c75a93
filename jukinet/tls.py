"""Mutual-TLS helpers: load a node's certificate files, build gRPC credentials.

Every connection in the federation is mutual TLS against the one private CA:
servers demand a client certificate, clients verify the server's host name
against its SANs. Loading is done once at start-up and fails with one clear
:class:`~jukinet.errors.ConfigError` line (missing file, not PEM, expired,
key not matching, not issued by the CA, revoked) instead of a handshake
failure much later.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from jukinet.errors import ConfigError

ChannelOption = tuple[str, Any]

# Long-lived streams (the pusher's PushNotifications) can sit idle for a long
# time, and a peer can vanish without closing (a half-open connection: the
# host froze, a NAT or load balancer dropped its state, a black hole in the
# network). The client pings every KEEPALIVE_TIME_MS and drops the transport
# when a ping is not answered within KEEPALIVE_TIMEOUT_MS, so a dead upstream
# is noticed within DEAD_PEER_NOTICED_MS of the last sign of life; the call on
# it then fails UNAVAILABLE and the caller reconnects.
KEEPALIVE_TIME_MS = 4_000
KEEPALIVE_TIMEOUT_MS = 5_000
DEAD_PEER_NOTICED_MS = KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS

CLIENT_OPTIONS: tuple[ChannelOption, ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Keep probing an idle channel too, so a reconnect happens before the
    # next notification has to wait for it.
    ("grpc.keepalive_permit_without_calls", 1),
    # Default 2: after two pings without data the client stops pinging, which
    # defeats keepalive on a quiet stream.
    ("grpc.http2.max_pings_without_data", 0),
    # Only one ping is in flight at a time: a keepalive ping waits behind any
    # other (gRPC's bandwidth probe pings as data arrives), and an unanswered
    # ping of another kind closes the transport only after this timeout, one
    # minute by default. Without it, a hole that opens while a probe is in
    # flight is noticed after a minute.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC's reconnect backoff grows to 120 s by default: a node that comes
    # back after an outage would then wait up to two minutes for its peers to
    # try again. Ten seconds at most keeps recovery prompt. gRPC core also
    # takes the minimum backoff as the shortest time it gives one connection
    # attempt (20 s by default), and an attempt into a black hole hangs until
    # then: with 500 ms, an attempt lasts as long as the current backoff.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 10_000),
)

# Servers must tolerate the clients' ping rate, or they count each early ping
# as a strike and, after two, answer GOAWAY "too_many_pings", tearing down the
# very streams keepalive protects. A server's minimum interval between pings
# without data (gRPC's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
# five minutes by default) is half the clients' ping interval, to leave room
# for timer jitter. Servers ping their callers less often: a dead caller only
# costs a stream, not delivery.
SERVER_KEEPALIVE_TIME_MS = 30_000
SERVER_KEEPALIVE_TIMEOUT_MS = 10_000

SERVER_OPTIONS: tuple[ChannelOption, ...] = (
    ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.max_pings_without_data", 0),
)


# The weakest keys a peer may hold: EC on P-256 or a larger NIST curve, RSA of
# 2048 bits or more (the PKI issues P-256 only; RSA is for keys made elsewhere).
_EC_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
MIN_RSA_BITS = 2048


def certificate_policy_problem(cert: x509.Certificate, *, usage: str = "client") -> str:
    """Why ``cert`` may not serve as a federation leaf for ``usage``, or "" if it may.

    A leaf is no CA (else it could sign certificates the handshake would then
    chain under it), carries the extended key usage of its role
    (``clientAuth`` for a caller, ``serverAuth`` for a server), and holds a key
    at least as strong as EC P-256 or RSA-2048.
    """
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            return "certificate is a CA certificate (CA:TRUE), not a leaf"
    except x509.ExtensionNotFound:
        pass
    except ValueError:
        return "certificate has malformed basic constraints"
    wanted = (
        ExtendedKeyUsageOID.CLIENT_AUTH if usage == "client" else ExtendedKeyUsageOID.SERVER_AUTH
    )
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return f"certificate has no extended key usage (needs {usage}Auth)"
    except ValueError:
        return "certificate has a malformed extended key usage"
    if wanted not in usages:
        return f"certificate does not allow {usage}Auth in its extended key usage"
    try:
        key = cert.public_key()
    except (ValueError, TypeError):
        return "certificate key cannot be read"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _EC_CURVES:
            return f"certificate key is on curve {key.curve.name}; P-256 or stronger required"
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"certificate key is RSA-{key.key_size}; at least RSA-{MIN_RSA_BITS} required"
    else:
        return f"certificate key type {type(key).__name__} is not accepted (EC P-256 or RSA)"
    return ""


def _check_ca(path: Path, ca: x509.Certificate) -> None:
    """The root must be a CA that signs leaves only (pathLen 0), as `pki init` makes it."""
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        raise ConfigError(f"tls.ca: {path}: not a CA certificate (no basic constraints)") from None
    if not constraints.ca:
        raise ConfigError(f"tls.ca: {path}: not a CA certificate (CA:FALSE)")
    if constraints.path_length != 0:
        raise ConfigError(
            f"tls.ca: {path}: the root CA must have pathLen 0 (sign leaves only); "
            "re-create the PKI with `jukinet pki init`"
        )


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes of a node's TLS files, checked for consistency."""

    ca: bytes
    cert: bytes
    key: bytes
    crl: bytes | None
    revoked_serials: frozenset[int]
    not_after: dt.datetime


def _read(label: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"tls.{label}: {path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"tls.{label}: {path}: is a directory, expected a PEM file") from None
    except OSError as exc:
        raise ConfigError(f"tls.{label}: {path}: cannot read ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"tls.{label}: {path}: not a PEM file")
    return data


def _check_validity(label: str, path: Path, cert: x509.Certificate, now: dt.datetime) -> None:
    if now > cert.not_valid_after_utc:
        expired = cert.not_valid_after_utc
        raise ConfigError(
            f"tls.{label}: {path}: certificate expired on {expired:%Y-%m-%d %H:%M} UTC"
        )
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"tls.{label}: {path}: certificate not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


@dataclass(frozen=True)
class TlsFiles:
    """Where a node's CA certificate, own certificate/key and (optional) CRL live."""

    ca: Path
    cert: Path
    key: Path
    crl: Path | None = None

    def load(self, *, usage: str = "client") -> TlsMaterial:
        """Read and check every file; ConfigError with one clear line if anything is off.

        ``usage`` is the role the own certificate is loaded for: ``client`` or
        ``server`` (its extended key usage must allow it).
        """
        now = dt.datetime.now(dt.UTC)
        ca_pem = _read("ca", self.ca)
        cert_pem = _read("cert", self.cert)
        key_pem = _read("key", self.key)
        try:
            ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError:
            raise ConfigError(f"tls.ca: {self.ca}: not a PEM certificate") from None
        try:
            # The first certificate in the file is the leaf; anything after
            # it would be a chain, which this single-level PKI never has.
            cert = x509.load_pem_x509_certificates(cert_pem)[0]
        except ValueError:
            raise ConfigError(f"tls.cert: {self.cert}: not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"tls.key: {self.key}: not an unencrypted PEM private key") from None
        _check_validity("ca", self.ca, ca, now)
        _check_validity("cert", self.cert, cert, now)
        _check_ca(self.ca, ca)
        problem = certificate_policy_problem(cert, usage=usage)
        if problem:
            raise ConfigError(f"tls.cert: {self.cert}: {problem}")
        if key.public_key() != cert.public_key():
            raise ConfigError(f"tls.key: {self.key}: does not match the certificate {self.cert}")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise ConfigError(f"tls.cert: {self.cert}: not issued by the CA in {self.ca}") from None
        crl_pem: bytes | None = None
        revoked: frozenset[int] = frozenset()
        if self.crl is not None:
            crl_pem = _read("crl", self.crl)
            revoked = _parse_crl(self.crl, crl_pem, ca)
            if cert.serial_number in revoked:
                raise ConfigError(f"tls.cert: {self.cert}: certificate is revoked in {self.crl}")
        return TlsMaterial(ca_pem, cert_pem, key_pem, crl_pem, revoked, cert.not_valid_after_utc)

    def revoked_serials(self) -> frozenset[int]:
        """The serials revoked by the CRL (empty without one); ConfigError if it is bad."""
        return self.read_crl()[0]

    def read_crl(self) -> tuple[frozenset[int], dt.datetime | None]:
        """The CRL's revoked serials and its next update (empty, None without one);
        ConfigError if it is bad."""
        if self.crl is None:
            return frozenset(), None
        ca = x509.load_pem_x509_certificate(_read("ca", self.ca))
        crl = _load_crl(self.crl, _read("crl", self.crl), ca)
        return frozenset(entry.serial_number for entry in crl), crl.next_update_utc


def _parse_crl(path: Path, pem: bytes, ca: x509.Certificate) -> frozenset[int]:
    return frozenset(entry.serial_number for entry in _load_crl(path, pem, ca))


def _load_crl(path: Path, pem: bytes, ca: x509.Certificate) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError:
        raise ConfigError(f"tls.crl: {path}: not a PEM CRL") from None
    ca_key = ca.public_key()
    # An unverified CRL is worse than none: a forged one could hide a
    # revocation. Only the federation's CA may speak here.
    if (
        crl.issuer != ca.subject
        or not isinstance(ca_key, ec.EllipticCurvePublicKey)
        or not crl.is_signature_valid(ca_key)
    ):
        raise ConfigError(f"tls.crl: {path}: not signed by the CA")
    return crl


class RevocationList:
    """The revoked serials of a CRL file, re-read when the file changes.

    Callable, so it can be handed to :class:`jukinet.interceptors.AuthInterceptor`
    as its ``revoked`` source: a revocation takes effect on running nodes
    without a restart. The file's mtime is checked at most every
    ``check_every`` seconds so the hot path is a clock read. A CRL that
    becomes unreadable or invalid keeps the last good list (failing open to
    "nothing revoked" would un-revoke everything; failing closed would take
    the node down over a bad copy).
    """

    def __init__(self, files: TlsFiles, *, check_every: float = 5.0) -> None:
        self._files = files
        self._check_every = check_every
        self._lock = threading.Lock()
        self._serials, self._next_update = files.read_crl()
        self._mtime = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> float | None:
        if self._files.crl is None:
            return None
        try:
            return os.stat(self._files.crl).st_mtime
        except OSError:
            return None

    def __call__(self) -> frozenset[int]:
        """The current revoked serials."""
        self._refresh()
        return self._serials

    def next_update(self) -> dt.datetime | None:
        """The next update the CRL in force announces (None: no CRL, or none announced)."""
        self._refresh()
        return self._next_update

    def _refresh(self) -> None:
        if self._files.crl is None:
            return
        now = time.monotonic()
        if now - self._checked < self._check_every:
            return
        with self._lock:
            self._checked = now
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                try:
                    self._serials, self._next_update = self._files.read_crl()
                    self._mtime = mtime
                except ConfigError:
                    pass  # keep the last good list; see the class docstring


def revocation_source(files: TlsFiles) -> RevocationList | frozenset[int]:
    """What a node checks serials against: its CRL, re-read when it changes, or
    nothing revoked when it has none."""
    return RevocationList(files) if files.crl else frozenset()


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that demand and verify a client certificate from our CA."""
    material = files.load(usage="server")
    return grpc.ssl_server_credentials(
        [(material.key, material.cert)],
        root_certificates=material.ca,
        require_client_auth=True,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client credentials: trust only our CA and present our own certificate."""
    material = files.load()
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca,
        private_key=material.key,
        certificate_chain=material.cert,
    )


def merge_options(
    defaults: Sequence[ChannelOption], overrides: Sequence[ChannelOption]
) -> list[ChannelOption]:
    """``defaults`` with any option named in ``overrides`` replaced by the override."""
    merged = dict(defaults)
    merged.update(dict(overrides))
    return list(merged.items())


SESSION_METADATA = "jukinet-session"
"""The metadata key that carries an operator's session token on every call
from a counter terminal after the login (:mod:`jukinet.login`)."""


class _SessionToken(grpc.AuthMetadataPlugin):
    """Adds the session token to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._metadata = ((SESSION_METADATA, token),)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)


def secure_channel(
    target: str,
    files: TlsFiles,
    *,
    options: Sequence[ChannelOption] = (),
    session: str | None = None,
) -> grpc.aio.Channel:
    """An mTLS ``grpc.aio`` channel to ``target`` (e.g. ``127.0.0.1:50051``).

    The server's host name is verified against its certificate's SANs with no
    override: gRPC matches an IP target against the certificate's IP SANs
    (nodes get ``127.0.0.1``) and a name against its DNS SANs (``localhost``),
    which tests/integration/test_mtls_auth.py checks for both forms.
    ``options`` override the keepalive defaults by name. ``session``, an
    operator's session token, goes with every call (:data:`SESSION_METADATA`):
    gRPC call credentials, which are sent only over the TLS channel.
    """
    credentials = channel_credentials(files)
    if session is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.metadata_call_credentials(_SessionToken(session))
        )
    return grpc.aio.secure_channel(
        target, credentials, options=merge_options(CLIENT_OPTIONS, options)
    )
