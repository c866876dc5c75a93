"""Operator IC cards as PKCS#11 tokens: provision one, open one, sign with it.

An operator proves who they are with two factors: the card (a PKCS#11 token
holding an EC P-256 key that never leaves it, and the certificate the
organisation's operator CA issued for that key, see :mod:`jukinet.pki`) and
a password the server checks (:mod:`jukinet.login`). The card's PIN unlocks
the card on the terminal; it never travels.

The same code drives a real smart card reader (its vendor's PKCS#11 module)
and SoftHSM2, the software token used in tests and in the demo: the module
is the shared library named by ``JUKINET_PKCS11_MODULE``, else Debian's
SoftHSM2 module. SoftHSM2 reads its configuration (``SOFTHSM2_CONF``: where
its token directory is) and the tokens in it when the module is initialised,
so after changing either, :func:`rescan` re-initialises it (closing every
session of the process on it).

python-pkcs11 is synchronous and a card operation can take a while on real
hardware: async callers run these functions in a thread
(``await asyncio.to_thread(...)``), and one card is used by one thread at a
time.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pkcs11
import pkcs11.exceptions as p11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11.constants import CertificateType
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from jukinet.identity import Identity, Kind
from jukinet.pki import certificate_identity

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Module

MODULE_ENV = "JUKINET_PKCS11_MODULE"
"""The environment variable naming the PKCS#11 module (a shared library) to use."""

SOFTHSM_MODULES = (
    # Debian's softhsm2 package installs both; the first is a symlink.
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
"""Where SoftHSM2's module is looked for when ``JUKINET_PKCS11_MODULE`` is not set."""

SOFTHSM_UTIL = "softhsm2-util"
INSTALL_HINT = "install SoftHSM2 (Debian: apt-get install softhsm2)"

# P-256, by its OID: the curve of every key in the federation.
_P256_OID = "1.2.840.10045.3.1.7"
# Bounds a label search: a reader with more slots than this is not a terminal's.
_MAX_SLOTS = 64


class CardError(Exception):
    """A card could not be used; the message says why and what to do."""


class ModuleMissing(CardError):
    """No PKCS#11 module (or, to provision, no softhsm2-util) is installed."""


class NoCard(CardError):
    """No initialised card is in the reader (or none with the label asked for)."""


class SeveralCards(CardError):
    """More than one card is present and none was named."""


class WrongPin(CardError):
    """The card refused the PIN."""


class CardLocked(CardError):
    """The card has locked its PIN after too many wrong ones."""


class NoCertificate(CardError):
    """The card holds no certificate (or no key): it was never provisioned."""


class AlreadyProvisioned(CardError):
    """The card holds a key already; provisioning it again is refused."""


_libs: dict[str, Module] = {}
_libs_lock = threading.Lock()


def module_path(environ: Mapping[str, str] | None = None) -> str:
    """The PKCS#11 module to load: ``JUKINET_PKCS11_MODULE``, else SoftHSM2's.

    Raises :class:`ModuleMissing` when the named file, or any SoftHSM2
    module, is absent.
    """
    env = os.environ if environ is None else environ
    named = env.get(MODULE_ENV, "")
    if named:
        if not Path(named).is_file():
            raise ModuleMissing(f"{MODULE_ENV}={named}: no such PKCS#11 module")
        return named
    for candidate in SOFTHSM_MODULES:
        if Path(candidate).is_file():
            return candidate
    raise ModuleMissing(
        f"no PKCS#11 module: set {MODULE_ENV} to the card reader's module, or {INSTALL_HINT}"
    )


def load_module(path: str | None = None) -> Module:
    """The loaded (and initialised) PKCS#11 module at ``path`` (default :func:`module_path`).

    A module is loaded once per process and shared: PKCS#11 allows one
    initialisation per process.
    """
    path = module_path() if path is None else path
    with _libs_lock:
        lib = _libs.get(path)
        if lib is None:
            try:
                lib = pkcs11.lib(path)
            except p11.PKCS11Error as exc:
                raise ModuleMissing(f"cannot load the PKCS#11 module {path}: {exc}") from None
            _libs[path] = lib
        return lib


def rescan(path: str | None = None) -> Module:
    """Re-initialise the module, so that it reads its configuration and tokens anew.

    Every session of this process on the module is closed.
    """
    lib = load_module(path)
    with _libs_lock:
        lib.reinitialize()
    return lib


# --- SoftHSM2: the software card of tests and of the demo -----------------------


@dataclass(frozen=True)
class SoftHsm:
    """A SoftHSM2 configuration file and the token directory it names."""

    config: Path
    tokendir: Path

    @classmethod
    def create(cls, directory: Path | str) -> SoftHsm:
        """Write ``softhsm2.conf`` and an empty ``tokens/`` in ``directory``."""
        directory = Path(directory)
        tokendir = directory / "tokens"
        tokendir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = directory / "softhsm2.conf"
        config.write_text(
            f"directories.tokendir = {tokendir}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n",
            encoding="utf-8",
        )
        return cls(config, tokendir)

    def activate(self) -> Module:
        """Point ``SOFTHSM2_CONF`` of this process at this configuration and rescan."""
        os.environ["SOFTHSM2_CONF"] = str(self.config)
        return rescan(module_path())

    def init_token(self, label: str, so_pin: str, user_pin: str) -> None:
        """Initialise a new token (a blank card) labelled ``label`` in the next free slot.

        Real cards come initialised by their issuer's tool; SoftHSM2's is
        ``softhsm2-util``. Call :meth:`activate` afterwards to see the token.
        """
        util = shutil.which(SOFTHSM_UTIL)
        if util is None:
            raise ModuleMissing(f"{SOFTHSM_UTIL} not found: {INSTALL_HINT}")
        if not label or len(label) > 32:
            raise ValueError(f"a token label has 1 to 32 characters, got {label!r}")
        env = {**os.environ, "SOFTHSM2_CONF": str(self.config)}
        done = subprocess.run(
            [
                util,
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                so_pin,
                "--pin",
                user_pin,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise CardError(
                f"{SOFTHSM_UTIL} could not initialise token {label!r}: "
                f"{said[-1] if said else f'exit {done.returncode}'}"
            )


# --- finding and opening a card --------------------------------------------------


def present_cards(lib: Module) -> list[pkcs11.Token]:
    """The initialised tokens present in the module's slots, in slot order."""
    tokens: list[pkcs11.Token] = []
    for slot in lib.get_slots(token_present=True)[:_MAX_SLOTS]:
        try:
            token = slot.get_token()
        except (p11.TokenNotPresent, p11.TokenNotRecognised, p11.DeviceRemoved):
            continue
        if token.flags & TokenFlag.TOKEN_INITIALIZED:
            tokens.append(token)
    return tokens


def find_card(lib: Module, label: str | None = None) -> pkcs11.Token:
    """The one card present (or the one labelled ``label``).

    :class:`NoCard` when there is none, :class:`SeveralCards` when more than
    one would do.
    """
    cards = [t for t in present_cards(lib) if label is None or t.label == label]
    if not cards:
        wanted = f" labelled {label!r}" if label is not None else ""
        raise NoCard(f"no card{wanted} in the reader: insert the operator's card")
    if len(cards) > 1:
        labels = ", ".join(repr(t.label) for t in cards)
        raise SeveralCards(f"{len(cards)} cards present ({labels}): remove all but one")
    return cards[0]


def _open(token: pkcs11.Token, pin: str, *, rw: bool = False) -> pkcs11.Session:
    try:
        return token.open(rw=rw, user_pin=pin)
    except (p11.PinIncorrect, p11.PinLenRange, p11.PinInvalid):
        left = ""
        if _fresh_flags(token) & TokenFlag.USER_PIN_FINAL_TRY:
            left = " (one try left before the card locks)"
        raise WrongPin(f"card {token.label!r}: wrong PIN{left}") from None
    except p11.PinLocked:
        raise CardLocked(
            f"card {token.label!r} is locked after too many wrong PINs: "
            "take it to the card administrator"
        ) from None
    except p11.PinExpired:
        raise WrongPin(f"card {token.label!r}: its PIN has expired; set a new one") from None


def _fresh_flags(token: pkcs11.Token) -> int:
    """The token's flags now (a Token object keeps those of when it was found)."""
    try:
        return int(token.slot.get_token().flags)
    except p11.PKCS11Error:
        return 0


def _der_signature(raw: bytes) -> bytes:
    """A PKCS#11 ECDSA signature (r || s, equal halves) as DER (RFC 3279)."""
    if len(raw) != 64:
        raise CardError(f"the card returned a {len(raw)}-byte signature, expected 64 (P-256)")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


class Card:
    """An open, PIN-unlocked card: its certificate, its identity, and signing.

    Made by :func:`open_card`; use as a context manager, or call :meth:`close`.
    """

    def __init__(self, token: pkcs11.Token, session: pkcs11.Session) -> None:
        self.label: str = token.label
        self._session = session
        try:
            self._key = _only(
                session, ObjectClass.PRIVATE_KEY, "key", self.label, key_type=KeyType.EC
            )
            cert_object = _only(session, ObjectClass.CERTIFICATE, "certificate", self.label)
            try:
                self.certificate = x509.load_der_x509_certificate(cert_object[Attribute.VALUE])
            except ValueError as exc:
                raise CardError(
                    f"card {self.label!r}: its certificate is unreadable: {exc}"
                ) from None
            try:
                self.identity: Identity = certificate_identity(self.certificate)
            except ValueError as exc:
                raise CardError(f"card {self.label!r}: {exc}") from None
            if self.identity.kind is not Kind.OPERATOR:
                raise CardError(
                    f"card {self.label!r}: its certificate names {self.identity.uri}, "
                    "not an operator"
                )
        except BaseException:
            session.close()
            raise

    def sign(self, data: bytes) -> bytes:
        """An ECDSA P-256 / SHA-256 signature of ``data`` by the card's key, DER-encoded.

        The digest is computed here and the card signs it (CKM_ECDSA), which
        every PKCS#11 EC card supports; the result verifies as ordinary
        ``ECDSA(SHA256)`` over ``data``.
        """
        digest = hashes.Hash(hashes.SHA256())
        digest.update(data)
        try:
            raw = self._key.sign(digest.finalize(), mechanism=Mechanism.ECDSA)
        except p11.PKCS11Error as exc:
            raise CardError(f"card {self.label!r} could not sign: {type(exc).__name__}") from None
        return _der_signature(raw)

    def close(self) -> None:
        """Log out and close the session on the card."""
        self._session.close()

    def __enter__(self) -> Card:
        """The card itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the card's session."""
        self.close()


def _only(
    session: pkcs11.Session,
    object_class: ObjectClass,
    what: str,
    label: str,
    *,
    key_type: KeyType | None = None,
) -> Any:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class}
    if key_type is not None:
        attrs[Attribute.KEY_TYPE] = key_type
    found = []
    for obj in session.get_objects(attrs):
        found.append(obj)
        if len(found) > 1:
            raise CardError(f"card {label!r} holds more than one {what}: re-provision it")
    if not found:
        raise NoCertificate(
            f"card {label!r} holds no {what}: it has not been provisioned by the card administrator"
        )
    return found[0]


def open_card(lib: Module, pin: str, *, label: str | None = None) -> Card:
    """Find the card (:func:`find_card`), unlock it with ``pin`` and read it."""
    token = find_card(lib, label)
    return Card(token, _open(token, pin))


# --- provisioning ------------------------------------------------------------------


Certify = Callable[[ec.EllipticCurvePublicKey], x509.Certificate]
"""Certifies a card's public key: e.g. :func:`jukinet.pki.issue_card_certificate`."""


def provision_card(
    lib: Module, pin: str, certify: Certify, *, label: str | None = None
) -> x509.Certificate:
    """Generate the operator's key pair on a blank card, have it certified, store the certificate.

    The private key is made on the card, sensitive and not extractable: it
    can sign and can never be read out. ``certify`` gets the public key and
    returns its certificate (from the operator CA), which is written to the
    card under the key's id. A card that holds a key already is refused
    (:class:`AlreadyProvisioned`).
    """
    token = find_card(lib, label)
    with _open(token, pin, rw=True) as session:
        if any(True for _ in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
            raise AlreadyProvisioned(f"card {token.label!r} holds a key already")
        key_id = secrets.token_bytes(16)
        parameters = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(_P256_OID)},
            local=True,
        )
        public, _private = parameters.generate_keypair(
            id=key_id,
            label="operator",
            store=True,
            public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
            private_template={
                Attribute.SIGN: True,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            },
        )
        loaded = serialization.load_der_public_key(encode_ec_public_key(public))
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise CardError(f"card {token.label!r} made a key that is not EC")
        cert = certify(loaded)
        if cert.public_key() != loaded:
            raise CardError("the certificate returned does not certify the card's key")
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.CERTIFICATE,
                Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.LABEL: "operator",
                Attribute.ID: key_id,
                Attribute.SUBJECT: cert.subject.public_bytes(),
                Attribute.ISSUER: cert.issuer.public_bytes(),
                Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
            }
        )
        return cert
