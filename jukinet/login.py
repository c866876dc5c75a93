"""The server side of an operator's login at a counter terminal, and its sessions.

Two factors, and the computer:

- the terminal is known from its mTLS certificate
  (``jukinet://terminal/<org>/<id>``, issued by the federation CA): it must be
  of the organisation whose node it logs in to (else ``foreign-terminal``);
- the card: the node issues a random challenge bound to the terminal, the
  operator named, an expiry and a nonce (:meth:`OperatorStore.issue_challenge`);
  the card signs it (:meth:`jukinet.card.Card.sign`); the node verifies the
  signature with the card's certificate, which must chain to the operator CA
  of the terminal's own organisation (else ``foreign-card``), itself signed by
  the federation root, neither revoked (``card-revoked``);
- the password, checked against its Argon2id hash (:mod:`jukinet.passwords`):
  a number of wrong ones in a row locks the account for a while
  (``locked-out``); a password past its maximum age, or set by an
  administrator, must be changed to log in (``password-expired``; the terminal
  then logs in again with ``new_password``); a change refuses the current and
  the previous password.

A login opens a session: an opaque random token (only its SHA-256 is stored)
bound to the terminal, which ends when idle for :attr:`LoginPolicy.session_idle`
and at :attr:`LoginPolicy.session_max` after the login whatever happens. A
token presented from another terminal is refused (``wrong-terminal``) and the
session ended, since the token has left the computer it was given to.

No gRPC here: every refusal is a :class:`~jukinet.errors.JukinetError` with
its :class:`~jukinet.reasons.Reason`, which a node raises as is. Time comes
from the node's :class:`~jukinet.clock.Clock`. The card trust (root, operator
CAs, CRLs) is read from a PKI directory by :meth:`CardTrust.load`; given
``reload_trust``, the store reads it again at every login, so a revoked card
is refused at once, and at most every :data:`TRUST_RECHECK` seconds while
sessions are used: a session remembers the serial of the card that opened
it and ends (``card-revoked``) once that card or its operator CA is revoked.
:meth:`OperatorStore.end_sessions` ends an operator's sessions at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)

from jukinet import passwords
from jukinet.clock import SYSTEM_CLOCK, Clock
from jukinet.db import Database
from jukinet.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from jukinet.identity import Identity, Kind, parse_identity_uri
from jukinet.pki import (
    CA_CERT,
    CRL_FILE,
    certificate_identity,
    operator_ca_dir,
    operator_ca_org,
)
from jukinet.reasons import Reason

NONCE_BYTES = 32
TOKEN_BYTES = 32
TRUST_RECHECK = 5.0
"""Seconds a session call trusts the card trust it read last: a card revoked
(its CRL updated) ends its open sessions within this time."""
_CHALLENGE_TAG = b"jukinet operator login v1"


@dataclass(frozen=True)
class LoginPolicy:
    """The limits of logins and sessions (defaults: a municipal office's working day)."""

    challenge_ttl: dt.timedelta = dt.timedelta(minutes=2)
    max_failures: int = 5
    lockout: dt.timedelta = dt.timedelta(minutes=15)
    password_max_age: dt.timedelta = dt.timedelta(days=90)
    session_idle: dt.timedelta = dt.timedelta(minutes=15)
    session_max: dt.timedelta = dt.timedelta(hours=9)


# --- refusals ------------------------------------------------------------------


class WeakPassword(InvalidArgument):
    """A new password does not meet the strength rule."""

    reason = Reason.WEAK_PASSWORD


class PasswordReused(InvalidArgument):
    """A new password is the current or the previous one."""

    reason = Reason.PASSWORD_REUSED


def _refuse_card(reason: Reason, message: str) -> Unauthenticated | PermissionDenied:
    if reason in (Reason.FOREIGN_CARD, Reason.FOREIGN_TERMINAL):
        return PermissionDenied(message, reason=reason)
    return Unauthenticated(message, reason=reason)


# --- the challenge -------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """What a card signs: bound to a terminal, a subject, an expiry and a nonce.

    The subject is the URI of whose card is to sign (an operator's), or
    empty when any card may answer (a resident card's proof of identity);
    the tag says what the signature is for, so that a signature made for one
    purpose never serves another.
    """

    terminal: Identity
    subject: str
    expires_at: dt.datetime
    nonce: bytes
    tag: bytes = _CHALLENGE_TAG

    @property
    def operator(self) -> Identity:
        """The operator whose card is to sign (a login's subject)."""
        return parse_identity_uri(self.subject)

    @classmethod
    def parse(cls, message: bytes) -> Challenge:
        """The challenge whose :meth:`message` is ``message`` (ValueError if none is):
        what a node that did not issue it reads from the signed bytes."""
        parts = message.split(b"\n")
        if len(parts) != 5:
            raise ValueError(f"{len(parts)} lines, expected 5")
        tag, terminal, subject, expires, nonce = parts
        try:
            parsed = cls(
                parse_identity_uri(terminal.decode()),
                subject.decode(),
                dt.datetime.fromisoformat(expires.decode()),
                bytes.fromhex(nonce.decode()),
                tag,
            )
        except UnicodeDecodeError as exc:
            raise ValueError(f"not text: {exc}") from None
        if parsed.expires_at.tzinfo is None or parsed.message() != message:
            raise ValueError("not in the form a node writes")
        return parsed

    def message(self) -> bytes:
        """The exact bytes the card signs (one field a line, nothing left to interpret)."""
        return b"\n".join(
            (
                self.tag,
                self.terminal.uri.encode(),
                self.subject.encode(),
                self.expires_at.astimezone(dt.UTC).isoformat(timespec="microseconds").encode(),
                self.nonce.hex().encode(),
            )
        )


def define_challenge_table(metadata: MetaData, name: str, subject_column: str) -> Table:
    """A table of single-use challenges (:class:`ChallengeBook`) in a node's metadata."""
    return Table(
        name,
        metadata,
        # SHA-256 of the nonce: the nonce itself is only in the signed message.
        Column("nonce_hash", LargeBinary(32), primary_key=True),
        Column("terminal", String(120), nullable=False),
        Column(subject_column, String(120), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Index(f"ix_{name}_expires", "expires_at"),
    )


class ChallengeBook:
    """Single-use challenges of one purpose (its ``tag``), kept in one table.

    :meth:`issue` makes one for a terminal and a subject; :meth:`take`
    removes it (a challenge is used once, right or wrong) and checks that it
    is the presenting terminal's and has not expired.
    """

    def __init__(
        self,
        db: Database,
        table: Table,
        *,
        subject_column: str,
        tag: bytes,
        ttl: dt.timedelta,
        clock: Clock = SYSTEM_CLOCK,
        what: str = "login challenge",
    ) -> None:
        self.db = db
        self.table = table
        self._subject = table.c[subject_column]
        self.tag = tag
        self.ttl = ttl
        self.clock = clock
        self.what = what

    async def issue(self, terminal: Identity, subject: str) -> Challenge:
        """A new challenge for ``subject``'s card at ``terminal``.

        Expired challenges are purged at the same time, so the table holds
        at most what was issued within one ``ttl``.
        """
        now = self.clock.now()
        challenge = Challenge(
            terminal, subject, now + self.ttl, secrets.token_bytes(NONCE_BYTES), self.tag
        )
        async with self.db.write() as conn:
            await conn.execute(delete(self.table).where(self.table.c.expires_at < now))
            await conn.execute(
                insert(self.table).values(
                    {
                        self.table.c.nonce_hash: _digest(challenge.nonce),
                        self.table.c.terminal: terminal.uri,
                        self._subject: subject,
                        self.table.c.expires_at: challenge.expires_at,
                    }
                )
            )
        return challenge

    async def take(self, terminal: Identity, nonce: bytes) -> Challenge:
        """The challenge of ``nonce``, removed (used once) and checked for ``terminal``."""
        c = self.table.c
        async with self.db.write() as conn:
            row = (
                await conn.execute(select(self.table).where(c.nonce_hash == _digest(nonce)))
            ).first()
            if row is not None:
                await conn.execute(delete(self.table).where(c.nonce_hash == row.nonce_hash))
        if row is None:
            raise Unauthenticated(
                f"{self.what} unknown or already used: ask for a new one",
                reason=Reason.CHALLENGE_INVALID,
            )
        challenge = Challenge(
            parse_identity_uri(row.terminal),
            row._mapping[self._subject],
            as_utc(row.expires_at),
            nonce,
            self.tag,
        )
        if challenge.terminal != terminal:
            raise Unauthenticated(
                f"{self.what} was issued to another terminal", reason=Reason.CHALLENGE_INVALID
            )
        if self.clock.now() > challenge.expires_at:
            raise Unauthenticated(
                f"{self.what} expired: ask for a new one", reason=Reason.CHALLENGE_INVALID
            )
        return challenge


# --- the card's certificate ----------------------------------------------------


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` with its time zone; a naive one (SQLite gives them) is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _signed_crl_serials(path: Path, issuer: x509.Certificate) -> frozenset[int]:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    key = issuer.public_key()
    if crl.issuer != issuer.subject or not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path}: CRL was not issued by {issuer.subject.rfc4514_string()}")
    if not crl.is_signature_valid(key):
        raise ValueError(f"{path}: CRL signature does not verify")
    return frozenset(entry.serial_number for entry in crl)


@dataclass(frozen=True)
class OperatorCa:
    """One organisation's operator CA and the serials its CRL revokes."""

    certificate: x509.Certificate
    revoked: frozenset[int]


@dataclass(frozen=True)
class CardTrust:
    """What card certificates are checked against: the root, its CRL, the operator CAs."""

    root: x509.Certificate
    root_revoked: frozenset[int]
    operator_cas: Mapping[str, OperatorCa]

    @classmethod
    def load(cls, directory: Path | str, orgs: tuple[str, ...] | None = None) -> CardTrust:
        """Read the root and the operator CAs (of ``orgs``, default all) with their CRLs.

        Every CRL's signature is checked (ValueError otherwise): an unsigned
        CRL could un-revoke a card. An operator CA the root did not sign is
        refused here too.
        """
        directory = Path(directory)
        root = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        root_revoked = _signed_crl_serials(directory / CRL_FILE, root)
        if orgs is None:
            found = sorted(
                p.name.removeprefix("operator-ca-") for p in directory.glob("operator-ca-*")
            )
        else:
            found = list(orgs)
        cas: dict[str, OperatorCa] = {}
        for org in found:
            where = operator_ca_dir(directory, org)
            cert = x509.load_pem_x509_certificate((where / CA_CERT).read_bytes())
            try:
                cert.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                raise ValueError(f"{where}: operator CA not issued by the root") from None
            if operator_ca_org(cert) != org:
                raise ValueError(f"{where}: operator CA names another organisation")
            cas[org] = OperatorCa(cert, _signed_crl_serials(where / CRL_FILE, cert))
        return cls(root, root_revoked, cas)

    def verify_card(
        self, certificate: bytes | x509.Certificate, terminal: Identity, now: dt.datetime
    ) -> tuple[Identity, x509.Certificate]:
        """The operator a card certificate (DER) names, checked for a login at ``terminal``.

        Raises :class:`~jukinet.errors.Unauthenticated` (``card-invalid``,
        ``card-revoked``) or :class:`~jukinet.errors.PermissionDenied`
        (``foreign-card``).
        """
        if isinstance(certificate, x509.Certificate):
            cert = certificate
        else:
            try:
                cert = x509.load_der_x509_certificate(certificate)
            except ValueError:
                raise _refuse_card(Reason.CARD_INVALID, "card certificate unreadable") from None
        try:
            operator = certificate_identity(cert)
        except ValueError as exc:
            raise _refuse_card(Reason.CARD_INVALID, f"card certificate: {exc}") from None
        if operator.kind is not Kind.OPERATOR:
            raise _refuse_card(
                Reason.CARD_INVALID, f"card certificate names {operator.uri}, not an operator"
            )
        if operator.org != terminal.org:
            raise _refuse_card(
                Reason.FOREIGN_CARD,
                f"card of {operator.uri} is not of the terminal's organisation {terminal.org}",
            )
        ca = self.operator_cas.get(operator.org)
        if ca is None:
            raise _refuse_card(
                Reason.CARD_INVALID, f"no operator CA of organisation {operator.org} is known here"
            )
        problem = chain_problem(cert, ca.certificate, self.root, now)
        if problem:
            raise _refuse_card(Reason.CARD_INVALID, f"card of {operator.uri}: {problem}")
        if ca.certificate.serial_number in self.root_revoked:
            raise _refuse_card(
                Reason.CARD_REVOKED, f"the operator CA of organisation {operator.org} is revoked"
            )
        if cert.serial_number in ca.revoked:
            raise _refuse_card(
                Reason.CARD_REVOKED,
                f"card of {operator.uri} is revoked (serial {cert.serial_number:x})",
            )
        return operator, cert


def _validity_problem(what: str, cert: x509.Certificate, now: dt.datetime) -> str:
    if now < cert.not_valid_before_utc:
        return f"{what} not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return ""


def chain_problem(
    card: x509.Certificate,
    ca: x509.Certificate,
    root: x509.Certificate,
    now: dt.datetime,
    *,
    ca_name: str = "operator CA",
    issuer: str = "its organisation's operator CA",
) -> str:
    """Why ``card`` -> ``ca`` -> ``root`` is not a card chain at ``now``, or "".

    ``ca_name`` and ``issuer`` name the CA in the answer (an operator CA, a
    resident card CA).
    """
    try:
        ca.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return f"its {ca_name} is not issued by the federation root"
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return f"its {ca_name} has no basic constraints"
    if not constraints.ca or constraints.path_length != 0:
        return f"its {ca_name} is not a CA of pathLen 0"
    try:
        card.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"certificate not issued by {issuer}"
    for what, cert in ((ca_name, ca), ("certificate", card)):
        problem = _validity_problem(what, cert, now)
        if problem:
            return problem
    try:
        card_constraints = card.extensions.get_extension_for_class(x509.BasicConstraints).value
        if card_constraints.ca:
            return "certificate is a CA certificate"
        usage = card.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return "certificate lacks basic constraints or key usage"
    if not usage.digital_signature:
        return "certificate does not allow digitalSignature"
    key = card.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return "certificate key is not EC P-256"
    return ""


# --- storage -------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorTables:
    """The tables of operator accounts, login challenges and sessions."""

    operators: Table
    challenges: Table
    sessions: Table


def define_operator_tables(metadata: MetaData) -> OperatorTables:
    """Add the operator tables (accounts, challenges, sessions) to a node's metadata."""
    operators = Table(
        "operators",
        metadata,
        Column("org", String(8), nullable=False),
        Column("operator_id", String(64), nullable=False),
        # Argon2id PHC strings (salt and parameters included).
        Column("password_hash", Text, nullable=False),
        Column("previous_hash", Text, nullable=False, server_default=""),
        Column("password_changed_at", DateTime(timezone=True), nullable=False),
        # Set by an administrator's reset: the password must be changed at login.
        Column("must_change", Boolean, nullable=False),
        # Wrong passwords in a row; set back to 0 by a right one or a lockout.
        Column("failures", Integer, nullable=False, server_default="0"),
        Column("locked_until", DateTime(timezone=True), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("org", "operator_id", name="pk_operators"),
    )
    challenges = define_challenge_table(metadata, "operator_challenges", "operator")
    sessions = Table(
        "operator_sessions",
        metadata,
        # SHA-256 of the token: a copy of the table opens no session.
        Column("token_hash", LargeBinary(32), primary_key=True),
        Column("org", String(8), nullable=False),
        Column("operator_id", String(64), nullable=False),
        Column("terminal", String(120), nullable=False),
        # The serial (hex) of the card that logged in: a revoked card ends the session.
        Column("card_serial", String(48), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("last_seen_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Index("ix_operator_sessions_operator", "org", "operator_id"),
    )
    return OperatorTables(operators, challenges, sessions)


@dataclass(frozen=True)
class Session:
    """An open session: who, at which computer, since when."""

    operator: Identity
    terminal: Identity
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True)
class Opened:
    """A login's result: the token (given to the terminal once) and its session."""

    token: str
    session: Session


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _token_hash(token: str) -> bytes:
    return _digest(token.encode("utf-8", "surrogatepass"))


class OperatorStore:
    """Operator accounts, logins and sessions of one organisation's node.

    ``org`` is the node's organisation (a municipality code, a prefecture
    code or ``national``): only its terminals and its cards log in here.
    """

    def __init__(
        self,
        db: Database,
        tables: OperatorTables,
        trust: CardTrust,
        org: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        policy: LoginPolicy | None = None,
        hasher: PasswordHasher = passwords.HASHER,
        reload_trust: Callable[[], CardTrust] | None = None,
    ) -> None:
        Identity.operator(org, "x")  # validates org
        self.hasher = hasher
        # Read again at every login (a few small files), so that a card revoked
        # in the operator CA's CRL is refused at once, without a restart.
        self.reload_trust = reload_trust
        self._trust_read = time.monotonic()
        self.db = db
        self.t = tables
        self.trust = trust
        self.org = org
        self.clock = clock
        self.policy = policy or LoginPolicy()
        self.challenges = ChallengeBook(
            db,
            tables.challenges,
            subject_column="operator",
            tag=_CHALLENGE_TAG,
            ttl=self.policy.challenge_ttl,
            clock=clock,
        )

    def _check_terminal(self, terminal: Identity) -> None:
        if terminal.kind is not Kind.TERMINAL:
            raise PermissionDenied(
                f"{terminal.uri} is not a counter terminal", reason=Reason.WRONG_IDENTITY
            )
        if terminal.org != self.org:
            raise PermissionDenied(
                f"terminal {terminal.uri} is not of organisation {self.org}",
                reason=Reason.FOREIGN_TERMINAL,
            )

    # accounts

    async def add_operator(
        self, operator: Identity, password: str, *, must_change: bool = True
    ) -> None:
        """Create ``operator``'s account with an initial password (changed at first login).

        :class:`WeakPassword` if it does not meet the rule; AlreadyExists-like
        integrity errors of the database propagate.
        """
        self._check_operator(operator)
        _check_strength(password, operator)
        hashed = await asyncio.to_thread(passwords.hash_password, password, self.hasher)
        now = self.clock.now()
        async with self.db.write() as conn:
            await conn.execute(
                insert(self.t.operators).values(
                    org=operator.org,
                    operator_id=operator.operator_id,
                    password_hash=hashed,
                    previous_hash="",
                    password_changed_at=now,
                    must_change=must_change,
                    failures=0,
                    locked_until=None,
                    created_at=now,
                )
            )

    async def account(self, operator: Identity) -> Any:
        """The account row of ``operator``, or None."""
        async with self.db.read() as conn:
            return (
                await conn.execute(select(self.t.operators).where(*self._account(operator)))
            ).first()

    async def accounts(self) -> list[Any]:
        """Every account row of the organisation, by operator id."""
        c = self.t.operators.c
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(self.t.operators).where(c.org == self.org).order_by(c.operator_id)
            )
            return list(rows)

    async def reset_password(self, operator: Identity, password: str) -> None:
        """An administrator's reset: a password to change at the next login, lockout lifted,
        the operator's open sessions ended."""
        self._check_operator(operator)
        _check_strength(password, operator)
        hashed = await asyncio.to_thread(passwords.hash_password, password, self.hasher)
        async with self.db.write() as conn:
            await conn.execute(
                update(self.t.operators)
                .where(*self._account(operator))
                .values(
                    password_hash=hashed,
                    password_changed_at=self.clock.now(),
                    must_change=True,
                    failures=0,
                    locked_until=None,
                )
            )
        await self.end_sessions(operator)

    def _check_operator(self, operator: Identity) -> None:
        if operator.kind is not Kind.OPERATOR or operator.org != self.org:
            raise PermissionDenied(
                f"{operator.uri} is not an operator of organisation {self.org}",
                reason=Reason.FOREIGN_CARD,
            )

    # challenges

    async def issue_challenge(self, terminal: Identity, operator: Identity) -> Challenge:
        """A new single-use challenge for ``operator``'s card at ``terminal``."""
        self._check_terminal(terminal)
        self._check_operator(operator)
        return await self.challenges.issue(terminal, operator.uri)

    # login

    async def login(
        self,
        terminal: Identity,
        nonce: bytes,
        card_certificate: bytes,
        signature: bytes,
        password: str,
        *,
        new_password: str | None = None,
    ) -> Opened:
        """Verify the card's signed challenge and the password; open a session at ``terminal``.

        ``new_password`` changes the password in the same step, which an
        expired (or administrator-set) password requires.
        """
        self._check_terminal(terminal)
        challenge = await self.challenges.take(terminal, nonce)
        await self._reload_trust()
        now = self.clock.now()
        operator, cert = self.trust.verify_card(card_certificate, terminal, now)
        if operator != challenge.operator:
            raise Unauthenticated(
                f"login challenge was for {challenge.operator.uri}, the card is {operator.uri}'s",
                reason=Reason.CHALLENGE_INVALID,
            )
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # checked by verify_card
        try:
            key.verify(signature, challenge.message(), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise Unauthenticated(
                "the card's signature of the login challenge does not verify",
                reason=Reason.CHALLENGE_INVALID,
            ) from None
        account = await self._check_password(operator, password)
        expired = bool(account.must_change) or (
            now >= as_utc(account.password_changed_at) + self.policy.password_max_age
        )
        if new_password is not None:
            await self._change(operator, account, new_password)
        elif expired:
            raise FailedPrecondition(
                f"the password of {operator.uri} has expired: log in again with a new one",
                reason=Reason.PASSWORD_EXPIRED,
            )
        elif passwords.needs_rehash(account.password_hash, self.hasher):
            hashed = await asyncio.to_thread(passwords.hash_password, password, self.hasher)
            async with self.db.write() as conn:
                await conn.execute(
                    update(self.t.operators)
                    .where(*self._account(operator))
                    .values(password_hash=hashed)
                )
        return await self._open_session(operator, terminal, cert.serial_number)

    def _account(self, operator: Identity) -> tuple[Any, Any]:
        c = self.t.operators.c
        return (c.org == operator.org, c.operator_id == operator.operator_id)

    async def _check_password(self, operator: Identity, password: str) -> Any:
        """The account row if ``password`` is right; records a failure and refuses otherwise."""
        async with self.db.read() as conn:
            account = (
                await conn.execute(select(self.t.operators).where(*self._account(operator)))
            ).first()
        if account is None:
            raise Unauthenticated(
                f"no account for {operator.uri} at organisation {self.org}",
                reason=Reason.WRONG_PASSWORD,
            )
        now = self.clock.now()
        if account.locked_until is not None and now < as_utc(account.locked_until):
            raise PermissionDenied(
                f"{operator.uri} is locked out after {self.policy.max_failures} wrong passwords "
                f"until {as_utc(account.locked_until):%Y-%m-%d %H:%M} UTC",
                reason=Reason.LOCKED_OUT,
            )
        if await asyncio.to_thread(
            passwords.verify_password, account.password_hash, password, self.hasher
        ):
            if account.failures or account.locked_until is not None:
                async with self.db.write() as conn:
                    await conn.execute(
                        update(self.t.operators)
                        .where(*self._account(operator))
                        .values(failures=0, locked_until=None)
                    )
            return account
        locked = await self._record_failure(operator, now)
        if locked:
            raise PermissionDenied(
                f"wrong password; {operator.uri} is now locked out for {self.policy.lockout}",
                reason=Reason.LOCKED_OUT,
            )
        raise Unauthenticated(f"wrong password for {operator.uri}", reason=Reason.WRONG_PASSWORD)

    async def _record_failure(self, operator: Identity, now: dt.datetime) -> bool:
        """Count a wrong password; True if it locked the account."""
        c = self.t.operators.c
        async with self.db.write() as conn:
            await conn.execute(
                update(self.t.operators)
                .where(*self._account(operator))
                .values(failures=c.failures + 1)
            )
            failures = (
                await conn.execute(select(c.failures).where(*self._account(operator)))
            ).scalar_one()
            if failures < self.policy.max_failures:
                return False
            await conn.execute(
                update(self.t.operators)
                .where(*self._account(operator))
                .values(failures=0, locked_until=now + self.policy.lockout)
            )
            return True

    async def _change(self, operator: Identity, account: Any, new: str) -> None:
        _check_strength(new, operator)
        for stored in (account.password_hash, account.previous_hash):
            if stored and await asyncio.to_thread(
                passwords.verify_password, stored, new, self.hasher
            ):
                raise PasswordReused(
                    "new_password", "the new password is the current or the previous one"
                )
        hashed = await asyncio.to_thread(passwords.hash_password, new, self.hasher)
        async with self.db.write() as conn:
            await conn.execute(
                update(self.t.operators)
                .where(*self._account(operator))
                .values(
                    password_hash=hashed,
                    previous_hash=account.password_hash,
                    password_changed_at=self.clock.now(),
                    must_change=False,
                )
            )

    async def change_password(self, token: str, terminal: Identity, old: str, new: str) -> None:
        """Change the password of the operator of session ``token``, who types the old one again.

        A wrong ``old`` counts as a failure towards the lockout.
        """
        session = await self.session(token, terminal)
        account = await self._check_password(session.operator, old)
        await self._change(session.operator, account, new)

    # sessions

    async def _reload_trust(self) -> None:
        """Read the card trust again (a login does, and a session call at most every
        :data:`TRUST_RECHECK`), so that a card revoked since is refused."""
        if self.reload_trust is None:
            return
        try:
            self.trust = await asyncio.to_thread(self.reload_trust)
        except (OSError, ValueError) as exc:
            # Fail closed: a CRL that cannot be read could hide a revocation.
            raise Unavailable(f"the card trust cannot be read: {exc}") from None
        self._trust_read = time.monotonic()

    async def _revoked(self, operator: Identity, card_serial: str) -> bool:
        """Whether the card a session was opened with (or its operator CA) is revoked now."""
        if time.monotonic() - self._trust_read >= TRUST_RECHECK:
            await self._reload_trust()
        ca = self.trust.operator_cas.get(operator.org)
        if ca is None or ca.certificate.serial_number in self.trust.root_revoked:
            return True
        return int(card_serial, 16) in ca.revoked

    async def _open_session(
        self, operator: Identity, terminal: Identity, card_serial: int
    ) -> Opened:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock.now()
        session = Session(operator, terminal, now, now, now + self.policy.session_max)
        async with self.db.write() as conn:
            await conn.execute(
                insert(self.t.sessions).values(
                    token_hash=_token_hash(token),
                    org=operator.org,
                    operator_id=operator.operator_id,
                    terminal=terminal.uri,
                    card_serial=f"{card_serial:x}",
                    created_at=now,
                    last_seen_at=now,
                    expires_at=session.expires_at,
                )
            )
        return Opened(token, session)

    async def session(self, token: str, terminal: Identity) -> Session:
        """The session of ``token`` presented from ``terminal``, marked as used (at most
        once a minute, or a tenth of the idle limit).

        Refuses an unknown or ended token (``session-invalid``), one idle too
        long or past its maximum (``session-expired``, and ends it) and one
        from another terminal (``wrong-terminal``, and ends it).
        """
        self._check_terminal(terminal)
        c = self.t.sessions.c
        key = _token_hash(token)
        now = self.clock.now()
        refusal: Exception | None = None
        # Read first: a session in use is marked at most every _touch_interval,
        # so that a read stays a read (and succeeds on a full disk); the idle
        # limit is that much longer at worst.
        async with self.db.read() as conn:
            row = (await conn.execute(select(self.t.sessions).where(c.token_hash == key))).first()
        if row is None:
            refusal = Unauthenticated(
                "no such session: log in again", reason=Reason.SESSION_INVALID
            )
        elif row.terminal != terminal.uri:
            refusal = PermissionDenied(
                f"the session belongs to another terminal ({row.terminal}); it is ended",
                reason=Reason.WRONG_TERMINAL,
            )
        elif now >= as_utc(row.expires_at):
            refusal = Unauthenticated(
                "the session reached its maximum length: log in again",
                reason=Reason.SESSION_EXPIRED,
            )
        elif now >= as_utc(row.last_seen_at) + self.policy.session_idle:
            refusal = Unauthenticated(
                "the session was idle too long: log in again", reason=Reason.SESSION_EXPIRED
            )
        elif await self._revoked(Identity.operator(row.org, row.operator_id), row.card_serial):
            refusal = Unauthenticated(
                f"the card this session was opened with (serial {row.card_serial}) is "
                "revoked; the session is ended",
                reason=Reason.CARD_REVOKED,
            )
        last_seen = as_utc(row.last_seen_at) if row is not None else now
        if refusal is not None and row is not None:
            async with self.db.write() as conn:
                await conn.execute(delete(self.t.sessions).where(c.token_hash == key))
        elif refusal is None and now - last_seen >= self._touch_interval():
            async with self.db.write() as conn:
                await conn.execute(
                    update(self.t.sessions).where(c.token_hash == key).values(last_seen_at=now)
                )
            last_seen = now
        if refusal is not None:
            raise refusal
        assert row is not None
        return Session(
            Identity.operator(row.org, row.operator_id),
            terminal,
            as_utc(row.created_at),
            last_seen,
            as_utc(row.expires_at),
        )

    def _touch_interval(self) -> dt.timedelta:
        return min(dt.timedelta(seconds=60), self.policy.session_idle / 10)

    async def logout(self, token: str) -> bool:
        """End the session of ``token``; False if there was none."""
        async with self.db.write() as conn:
            done = await conn.execute(
                delete(self.t.sessions).where(self.t.sessions.c.token_hash == _token_hash(token))
            )
        return bool(done.rowcount)

    async def end_sessions(self, operator: Identity) -> int:
        """End every session of ``operator`` (after a card is revoked); how many there were."""
        c = self.t.sessions.c
        async with self.db.write() as conn:
            done = await conn.execute(
                delete(self.t.sessions).where(
                    c.org == operator.org, c.operator_id == operator.operator_id
                )
            )
        return int(done.rowcount)

    async def purge_expired(self) -> int:
        """Remove challenges and sessions that can no longer be used; how many rows went."""
        now = self.clock.now()
        sessions = self.t.sessions.c
        async with self.db.write() as write:
            gone = await write.execute(
                delete(self.t.challenges).where(self.t.challenges.c.expires_at < now)
            )
            ended = await write.execute(
                delete(self.t.sessions).where(
                    (sessions.expires_at <= now)
                    | (sessions.last_seen_at <= now - self.policy.session_idle)
                )
            )
        return int(gone.rowcount) + int(ended.rowcount)


def _check_strength(password: str, operator: Identity) -> None:
    problem = passwords.password_problem(password, operator_id=operator.operator_id)
    if problem is not None:
        raise WeakPassword("new_password", problem)
