"""IC cards as PKCS#11 tokens: operators' and residents'; provision one, open one, sign.

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

A resident card (住民基本台帳カード) is the same kind of token, certified by its
municipality's resident card CA, with a PIN of exactly four digits. SoftHSM2
does not count wrong PINs, so the card counts them itself, in a public data
object on the token that every terminal reads and writes before and after
presenting the PIN (:func:`open_resident_card`): three in a row lock the
card wherever it is used, until the counter of its municipality sets a new
PIN with the card's security officer PIN (:func:`unlock_resident_card`). A
real card counts in its chip as well, and whichever count runs out first locks it.

python-pkcs11 is synchronous and a card operation can take a while on real
hardware: async callers run these functions in a thread
(``await asyncio.to_thread(...)``), and one card is used by one thread at a
time.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

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
from jukinet.pki import certificate_identity, parse_resident_card_uri, resident_card_uri

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
    """Log in with ``pin``; on a card that counts its wrong PINs (a resident card),
    counted (:func:`_open_counted`), whoever opens it."""
    if _counts(token):
        return _open_counted(token, pin, rw=rw)
    return _login(token, pin, rw=rw)


def _login(token: pkcs11.Token, pin: str, *, rw: bool = False) -> pkcs11.Session:
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


class _OpenCard:
    """An open, PIN-unlocked card: its one key, its one certificate, and signing.

    Subclasses check whose card it is (:meth:`_check`); use as a context
    manager, or call :meth:`close`.
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
            self._check()
        except BaseException:
            session.close()
            raise

    def _check(self) -> None:
        """Refuse (CardError) a card whose certificate is not of this kind of card."""

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

    def __enter__(self) -> Self:
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


class Card(_OpenCard):
    """An open operator card: its certificate, its operator, and signing.

    Made by :func:`open_card`.
    """

    identity: Identity

    def _check(self) -> None:
        """Refuse a card whose certificate names no operator."""
        try:
            self.identity = certificate_identity(self.certificate)
        except ValueError as exc:
            raise CardError(f"card {self.label!r}: {exc}") from None
        if self.identity.kind is not Kind.OPERATOR:
            raise CardError(
                f"card {self.label!r}: its certificate names {self.identity.uri}, not an operator"
            )


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


def _make_key(
    session: pkcs11.Session, label: str, what: str
) -> tuple[bytes, Any, Any, ec.EllipticCurvePublicKey]:
    """A new P-256 key pair on the card (sensitive, never extractable): its id, both
    objects and the public key."""
    if any(True for _ in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
        raise AlreadyProvisioned(f"card {label!r} holds a key already")
    key_id = secrets.token_bytes(16)
    parameters = session.create_domain_parameters(
        KeyType.EC,
        {Attribute.EC_PARAMS: encode_named_curve_parameters(_P256_OID)},
        local=True,
    )
    public, private = parameters.generate_keypair(
        id=key_id,
        label=what,
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
        raise CardError(f"card {label!r} made a key that is not EC")
    return key_id, public, private, loaded


def _store_certificate(
    session: pkcs11.Session, key_id: bytes, what: str, cert: x509.Certificate
) -> None:
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.CERTIFICATE,
            Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.LABEL: what,
            Attribute.ID: key_id,
            Attribute.SUBJECT: cert.subject.public_bytes(),
            Attribute.ISSUER: cert.issuer.public_bytes(),
            Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
        }
    )


def _certified(
    session: pkcs11.Session,
    label: str,
    what: str,
    certify: Callable[[ec.EllipticCurvePublicKey], x509.Certificate],
) -> x509.Certificate:
    """Make the card's key, have it certified and store the certificate; a refused
    certification leaves the card blank again."""
    key_id, public, private, loaded = _make_key(session, label, what)
    try:
        cert = certify(loaded)
        if cert.public_key() != loaded:
            raise CardError("the certificate returned does not certify the card's key")
        _store_certificate(session, key_id, what, cert)
    except BaseException:
        for obj in (private, public):
            obj.destroy()
        raise
    return cert


def provision_card(
    lib: Module, pin: str, certify: Certify, *, label: str | None = None
) -> x509.Certificate:
    """Generate the operator's key pair on a blank card, have it certified, store the certificate.

    The private key is made on the card, sensitive and not extractable: it
    can sign and can never be read out. ``certify`` gets the public key and
    returns its certificate (from the operator CA), which is written to the
    card under the key's id. A card that holds a key already is refused
    (:class:`AlreadyProvisioned`); a refused certification leaves the card blank.
    """
    token = find_card(lib, label)
    with _open(token, pin, rw=True) as session:
        return _certified(session, token.label, "operator", certify)


# --- resident cards (住民基本台帳カード) ---------------------------------------------

RESIDENT_PIN_TRIES = 3
"""Wrong PINs in a row that lock a resident card (until the counter unlocks it)."""
_RESIDENT_PIN_RE = re.compile(r"[0-9]{4}")
_RESIDENT_LABEL = "resident-card"
# The card's own count of wrong PINs in a row, a public data object on the token.
_FAILURES_LABEL = "pin-failures"
_APPLICATION = "jukinet"

ResidentCertify = Callable[[ec.EllipticCurvePublicKey], tuple[x509.Certificate, str]]
"""Certifies a resident card's public key: its certificate and the card's new
security officer PIN (the issuing node gives both)."""


class BadPin(CardError):
    """A resident card's new PIN is not exactly four digits."""


def check_resident_pin(pin: str) -> str:
    """``pin`` if it is exactly four ASCII digits, else :class:`BadPin`."""
    if _RESIDENT_PIN_RE.fullmatch(pin) is None:
        raise BadPin("a resident card's PIN is exactly 4 digits (0-9)")
    return pin


class ResidentCard(_OpenCard):
    """An open resident card: its certificate, the card it names, and signing.

    Made by :func:`open_resident_card`, which counts wrong PINs on the card.
    """

    municipality: str
    card_id: str

    def _check(self) -> None:
        """Refuse a card whose certificate names no resident card."""
        try:
            san = self.certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
            if len(uris) != 1:
                raise ValueError(f"certificate has {len(uris)} URI SANs, expected 1")
            self.municipality, self.card_id = parse_resident_card_uri(uris[0])
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise CardError(f"card {self.label!r} is not a resident card: {exc}") from None

    @property
    def uri(self) -> str:
        """The card's URI, ``jukinet://resident-card/<code>/<card id>``."""
        return resident_card_uri(self.municipality, self.card_id)


def _failure_objects(session: pkcs11.Session) -> list[Any]:
    # Bounded: a card holds one, or two for a moment (see _set_failures).
    found = []
    for obj in session.get_objects(
        {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: _FAILURES_LABEL}
    ):
        found.append(obj)
        if len(found) >= _MAX_SLOTS:
            break
    return found


def _count(obj: Any) -> int:
    value = bytes(obj[Attribute.VALUE])
    # An unreadable count is a tampered one: count it as locked.
    return value[0] if len(value) == 1 else RESIDENT_PIN_TRIES


def _counts(token: pkcs11.Token) -> bool:
    """Whether the card keeps its own count of wrong PINs."""
    try:
        with token.open() as session:
            return bool(_failure_objects(session))
    except p11.PKCS11Error:
        return False


def pin_failures(session: pkcs11.Session) -> int:
    """The wrong PINs in a row the card has counted (0 on a card that never counted)."""
    return max((_count(obj) for obj in _failure_objects(session)), default=0)


def _set_failures(session: pkcs11.Session, count: int) -> None:
    """Write the count: a new object first, then the old ones go.

    Tokens may keep a data object's value read-only, so the count is replaced
    rather than changed; a card pulled out in between holds both, and the
    higher one counts.
    """
    old = _failure_objects(session)
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.DATA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.LABEL: _FAILURES_LABEL,
            Attribute.APPLICATION: _APPLICATION,
            Attribute.VALUE: bytes([min(count, 255)]),
        }
    )
    for obj in old:
        obj.destroy()


def _locked(token: pkcs11.Token) -> CardLocked:
    return CardLocked(
        f"card {token.label!r} is locked after {RESIDENT_PIN_TRIES} wrong PINs: "
        "the holder takes it to the counter of the municipality that issued it"
    )


def _open_counted(token: pkcs11.Token, pin: str, *, rw: bool = False) -> pkcs11.Session:
    """Log in to a resident card with ``pin``, counting the try on the card itself.

    The count is a public data object on the token, so it travels with the
    card: a card locked at one terminal is locked at every other. The try is
    counted before the PIN is presented and forgiven after it was right, so
    that a card pulled out in between has spent it. A card whose count
    reached :data:`RESIDENT_PIN_TRIES` is not even asked: it signs nothing.
    """
    try:
        public = token.open(rw=True)
    except p11.PKCS11Error as exc:
        raise CardError(f"card {token.label!r} cannot be read: {type(exc).__name__}") from None
    with public:
        failures = pin_failures(public)
        if failures >= RESIDENT_PIN_TRIES:
            raise _locked(token)
        _set_failures(public, failures + 1)
        try:
            session = _login(token, pin, rw=rw)
        except WrongPin:
            left = RESIDENT_PIN_TRIES - failures - 1
            if left <= 0:
                raise _locked(token) from None
            raise WrongPin(
                f"card {token.label!r}: wrong PIN ({left} {'try' if left == 1 else 'tries'} "
                "left before the card locks)"
            ) from None
        _set_failures(public, 0)
    return session


def open_resident_card(lib: Module, pin: str, *, label: str | None = None) -> ResidentCard:
    """Find the resident card (:func:`find_card`), unlock it with ``pin`` (counted on
    the card: :data:`RESIDENT_PIN_TRIES` wrong ones lock it) and read it."""
    token = find_card(lib, label)
    return ResidentCard(token, _open_counted(token, pin))


def provision_resident_card(
    lib: Module, pin: str, so_pin: str, certify: ResidentCertify, *, label: str | None = None
) -> x509.Certificate:
    """Make a resident card's key pair on a blank card, have it certified, store the
    certificate and give the card the security officer PIN its municipality chose.

    ``pin`` is the holder's PIN the blank card was initialised with (exactly
    four digits, :class:`BadPin` otherwise), ``so_pin`` the blank card's
    security officer PIN, checked before anything is made. ``certify`` gets
    the public key and returns the certificate and the card's new security
    officer PIN (which only the issuing node can work out again, to unlock it).
    """
    check_resident_pin(pin)
    token = find_card(lib, label)
    try:
        token.open(rw=True, so_pin=so_pin).close()
    except (p11.PinIncorrect, p11.PinLenRange, p11.PinInvalid):
        raise WrongPin(f"card {token.label!r}: wrong security officer PIN") from None
    except p11.PinLocked:
        raise CardLocked(f"card {token.label!r}: its security officer PIN is locked") from None
    new_so_pin: list[str] = []

    def certify_once(key: ec.EllipticCurvePublicKey) -> x509.Certificate:
        cert, chosen = certify(key)
        new_so_pin.append(chosen)
        return cert

    with _open_counted(token, pin, rw=True) as session:
        cert = _certified(session, token.label, _RESIDENT_LABEL, certify_once)
    with token.open(rw=True, so_pin=so_pin) as officer:
        officer.set_pin(so_pin, new_so_pin[0])
    return cert


def unlock_resident_card(
    lib: Module, so_pin: str, new_pin: str, *, label: str | None = None
) -> None:
    """At the counter: set a new PIN (four digits) with the card's security officer PIN
    and forgive its wrong PINs, which unlocks it."""
    check_resident_pin(new_pin)
    token = find_card(lib, label)
    try:
        officer = token.open(rw=True, so_pin=so_pin)
    except (p11.PinIncorrect, p11.PinLenRange, p11.PinInvalid):
        raise WrongPin(f"card {token.label!r}: wrong security officer PIN") from None
    except p11.PinLocked:
        raise CardLocked(f"card {token.label!r}: its security officer PIN is locked") from None
    with officer:
        officer.init_pin(new_pin)
        _set_failures(officer, 0)


def resident_card_certificate(lib: Module, *, label: str | None = None) -> x509.Certificate:
    """The certificate on a resident card, read without its PIN (it is public)."""
    token = find_card(lib, label)
    with token.open() as session:
        obj = _only(session, ObjectClass.CERTIFICATE, "certificate", token.label)
        try:
            return x509.load_der_x509_certificate(obj[Attribute.VALUE])
        except ValueError as exc:
            raise CardError(f"card {token.label!r}: its certificate is unreadable: {exc}") from None


def store_continued_certificate(
    lib: Module, pin: str, certificate: x509.Certificate, *, label: str | None = None
) -> None:
    """After a continuation (継続利用) at the new municipality: replace the certificate
    on the resident card with the new one, which must certify the same key.

    The new certificate is written first, then the old one goes, so a card pulled
    out in between holds both and is re-written at the next try.
    """
    token = find_card(lib, label)
    with _open_counted(token, pin, rw=True) as session:
        old = _only(session, ObjectClass.CERTIFICATE, "certificate", token.label)
        try:
            current = x509.load_der_x509_certificate(old[Attribute.VALUE])
        except ValueError as exc:
            raise CardError(f"card {token.label!r}: its certificate is unreadable: {exc}") from None
        if current.public_key() != certificate.public_key():
            raise CardError(
                f"card {token.label!r}: the continued certificate certifies another key"
            )
        if current == certificate:
            return
        _store_certificate(session, bytes(old[Attribute.ID]), _RESIDENT_LABEL, certificate)
        old.destroy()
