"""Resident cards at a municipal node: issue, prove, unlock, revoke, lapse, continue;
and the keeper that re-signs the card CA's CRL and trades CRLs with the prefecture.

The card CA's key lives on this node's host, in ``resident-card-ca-<code>/``
of the card trust folder (:meth:`jukinet.config.MunicipalConfig.resident_card_ca_dir`),
beside the secret the cards' security officer PINs derive from. The node's
database is the record of its cards; the CRL is re-signed from it (at start,
and after every revocation or lapse), so a CRL can never miss a card the
database has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet import pki
from jukinet.clock import SYSTEM_CLOCK, Clock
from jukinet.db import Database
from jukinet.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from jukinet.identity import Identity
from jukinet.login import Challenge, ChallengeBook, as_utc, chain_problem
from jukinet.reasons import Reason
from jukinet.residentcard import (
    LAPSED,
    PROOF_TAG,
    CardCrl,
    CardHolder,
    CardTrust,
    card_of_certificate,
    card_so_pin,
    carry,
    check_continuation,
    verify_card_proof,
)
from jukinet.v1 import card_pb2, common_pb2
from services.municipal import models
from services.municipal import repository as repo
from services.municipal.logic import ResidentState

log = logging.getLogger(__name__)

PROOF_TTL = dt.timedelta(minutes=2)
"""How long a proof-of-identity challenge may be answered."""
REVOCATION_REASONS: dict[int, tuple[str, x509.ReasonFlags]] = {
    card_pb2.CARD_REVOCATION_REASON_LOST: ("lost", x509.ReasonFlags.key_compromise),
    card_pb2.CARD_REVOCATION_REASON_STOLEN: ("stolen", x509.ReasonFlags.key_compromise),
    card_pb2.CARD_REVOCATION_REASON_RETURNED: ("returned", x509.ReasonFlags.superseded),
}
"""A counter's reason -> what the record says and the CRL reason."""
_LAPSE_REASON = "lapsed"
_CRL_REASONS = {name: flag for name, flag in REVOCATION_REASONS.values()} | {_LAPSE_REASON: LAPSED}
# Every removal from the register lapses the card: its holder left (moved out,
# abroad), died, or was removed.
_MOVED_IN = (common_pb2.CHANGE_REASON_MOVE_IN, common_pb2.CHANGE_REASON_SPECIAL_MOVE_IN)


def _public_key(der: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except ValueError:
        raise InvalidArgument("public_key", "not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidArgument("public_key", "a card key is EC P-256")
    return key


class ResidentCards:
    """The resident cards of one municipality: its use cases, each one transaction."""

    def __init__(
        self,
        *,
        db: Database,
        municipality: str,
        ca_dir: Path,
        trust: CardTrust,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.municipality = municipality
        self.ca_dir = ca_dir
        self.trust = trust
        self.clock = clock
        self.challenges = ChallengeBook(
            db,
            models.card_challenges,
            subject_column="subject",
            tag=PROOF_TAG,
            ttl=PROOF_TTL,
            clock=clock,
            what="card proof challenge",
        )
        # Set when a card ended: the keeper re-signs and publishes the CRL.
        self.changed = asyncio.Event()
        self._ca_lock = asyncio.Lock()

    def _today(self) -> str:
        return self.clock.now().date().isoformat()

    async def _resident(self, conn: AsyncConnection, code: str) -> Any:
        resident = await repo.resident_by_code(conn, code)
        if resident is None:
            raise NotFound(f"no resident {code} in the register of {self.municipality}")
        return resident

    # issue

    async def issue(self, resident_code: str, public_key: bytes) -> tuple[str, bytes, str]:
        """Certify a card key for a resident of this register who holds no valid card;
        the card id, its certificate (DER) and its security officer PIN."""
        key = _public_key(public_key)
        async with self.db.operation() as conn:
            resident = await self._resident(conn, resident_code)
            resident.require_active()
            if await repo.valid_card_of(conn, resident.id) is not None:
                raise FailedPrecondition(
                    f"resident {resident_code} holds a valid card: revoke it first",
                    reason=Reason.CARD_HELD,
                )
            async with self._ca_lock:
                cert, card_id = await asyncio.to_thread(
                    pki.issue_resident_card_certificate, self.ca_dir, self.municipality, key
                )
            try:
                await repo.insert_card(
                    conn,
                    card_id=card_id,
                    serial=cert.serial_number,
                    resident_id=resident.id,
                    issued_on=self._today(),
                )
            except IntegrityError:
                raise FailedPrecondition(
                    f"resident {resident_code} holds a valid card", reason=Reason.CARD_HELD
                ) from None
        so_pin = await asyncio.to_thread(card_so_pin, self.ca_dir, card_id)
        return card_id, cert.public_bytes(serialization.Encoding.DER), so_pin

    # proof of identity

    async def begin_proof(self, terminal: Identity) -> Challenge:
        """A proof-of-identity challenge for a card at ``terminal``."""
        return await self.challenges.issue(terminal, "")

    async def prove(
        self, terminal: Identity, nonce: bytes, certificate: bytes, signature: bytes
    ) -> tuple[CardHolder, str]:
        """The card that answered the challenge of ``nonce`` at ``terminal`` and, for a
        card of this node's record, its holder's resident code."""
        challenge = await self.challenges.take(terminal, nonce)
        holder = verify_card_proof(
            certificate, challenge, signature, trust=self.trust, now=self.clock.now()
        )
        if holder.municipality != self.municipality:
            return holder, ""
        async with self.db.read() as conn:
            resident = await self.holder_of(conn, holder.card_id)
        return holder, resident.resident_code

    async def holder_of(self, conn: AsyncConnection, card_id: str) -> ResidentState:
        """The resident (current or removed) who holds card ``card_id`` of this node's
        record, for a card the record says is valid. The record is ahead of the CRL:
        a card ended here is refused at once (``card-revoked``, ``card-lapsed``)."""
        row = await repo.card_by_id(conn, card_id)
        resident = None if row is None else await repo.resident_by_id(conn, row.resident_id)
        if row is None or resident is None or row.status != repo.CARD_VALID:
            status = "unknown" if row is None else row.status
            raise PermissionDenied(
                f"resident card {card_id} is {status} in the record of {self.municipality}",
                reason=Reason.CARD_LAPSED if status == repo.CARD_LAPSED else Reason.CARD_REVOKED,
            )
        return resident

    async def lapse_card_in(self, conn: AsyncConnection, card_id: str) -> None:
        """Inside a transaction: card ``card_id`` lapses if valid (the caller then calls
        :meth:`lapsed` after the commit)."""
        await repo.end_card(conn, card_id, repo.CARD_LAPSED, _LAPSE_REASON, self.clock.now())

    # unlock

    async def unlock(self, card_id: str) -> str:
        """The security officer PIN of a valid card of this node's record (to unlock it)."""
        async with self.db.operation() as conn:
            row = await repo.card_by_id(conn, card_id)
        if row is None:
            raise NotFound(f"no resident card {card_id} in the record of {self.municipality}")
        if row.status != repo.CARD_VALID or row.continued_from:
            raise FailedPrecondition(
                f"resident card {card_id} is {row.status}"
                + (", continued from another municipality" if row.continued_from else "")
                + ": it cannot be unlocked here",
                reason=Reason.CARD_LAPSED
                if row.status == repo.CARD_LAPSED
                else Reason.CARD_REVOKED,
            )
        return await asyncio.to_thread(card_so_pin, self.ca_dir, card_id)

    # revoke and lapse

    async def revoke(
        self, resident_code: str, reason: card_pb2.CardRevocationReason.ValueType
    ) -> tuple[str, int, int]:
        """Revoke a resident's valid card; its id, serial and the number of the CRL
        that lists it (re-signed before the answer, published at once)."""
        if reason not in REVOCATION_REASONS:
            raise InvalidArgument("reason", "lost, stolen or returned")
        async with self.db.operation() as conn:
            resident = await self._resident(conn, resident_code)
            row = await repo.valid_card_of(conn, resident.id)
            if row is None:
                raise NotFound(f"resident {resident_code} holds no valid card")
            await repo.end_card(
                conn,
                row.card_id,
                repo.CARD_REVOKED,
                REVOCATION_REASONS[reason][0],
                self.clock.now(),
            )
        crl = await self.resign()
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        return row.card_id, int(row.serial, 16), number

    async def lapse_in(self, conn: AsyncConnection, resident_id: int) -> bool:
        """Inside a removal's transaction: the resident's valid card lapses. True if
        there was one (the caller then calls :meth:`lapsed` after the commit)."""
        row = await repo.valid_card_of(conn, resident_id)
        if row is None:
            return False
        await repo.end_card(conn, row.card_id, repo.CARD_LAPSED, _LAPSE_REASON, self.clock.now())
        return True

    def lapsed(self) -> None:
        """A card lapsed (committed): the keeper re-signs and publishes the CRL."""
        self.changed.set()

    async def resign(self) -> x509.CertificateRevocationList:
        """Re-sign the card CA's CRL from the record and take it into the node's trust."""
        async with self.db.read() as conn:
            ended = await repo.ended_cards(conn)
        entries = [
            (
                int(row.serial, 16),
                as_utc(row.revoked_at) if row.revoked_at is not None else self.clock.now(),
                _CRL_REASONS.get(row.revocation_reason, x509.ReasonFlags.unspecified),
            )
            for row in ended
        ]
        async with self._ca_lock:
            crl = await asyncio.to_thread(pki.write_card_crl, self.ca_dir, entries)
        self.trust.accept(self.own_crl(crl))
        return crl

    def own_crl(self, crl: x509.CertificateRevocationList | None = None) -> CardCrl:
        """This municipality's card CA certificate and CRL, as they travel."""
        ca_cert = x509.load_pem_x509_certificate((self.ca_dir / pki.CA_CERT).read_bytes())
        if crl is None:
            crl = x509.load_pem_x509_crl((self.ca_dir / pki.CRL_FILE).read_bytes())
        return carry(ca_cert, crl)

    # continuation after a move-in

    async def continue_card(self, resident_code: str, certificate: bytes) -> tuple[str, bytes]:
        """Continue the card of a resident who moved in here at most 90 days ago: its
        key, certified by this node's card CA; the new card id and certificate."""
        continuing = self.continuable(certificate)
        async with self.db.operation() as conn:
            return await self.continue_in(conn, resident_code, continuing)

    def continuable(self, certificate: bytes, field: str = "card_certificate") -> Continuing:
        """Another municipality's card this node may continue: its certificate (the
        request's ``field``) a resident card's of a card CA whose CRL this node holds,
        neither revoked (a lapsed card is what is continued) nor failing its chain."""
        try:
            old, former, card_id = card_of_certificate(certificate)
        except Unauthenticated as exc:
            raise InvalidArgument(field, exc.message) from None
        if former == self.municipality:
            raise InvalidArgument(field, "a card of this municipality needs no continuation")
        authority = self.trust.authorities.get(former)
        if authority is None:
            raise FailedPrecondition(
                f"no CRL of the card CA of {former} has reached this node yet: try again later",
                reason=Reason.CARD_INVALID,
            )
        problem = chain_problem(
            old,
            authority.certificate,
            self.trust.root,
            self.clock.now(),
            ca_name="resident card CA",
            issuer=f"the resident card CA of {former}",
        )
        if problem:
            raise PermissionDenied(f"the card of {former}: {problem}", reason=Reason.CARD_INVALID)
        ended = authority.revoked.get(old.serial_number)
        if ended is not None and ended is not LAPSED:
            raise PermissionDenied(
                f"the card is revoked by {former} ({ended.value})", reason=Reason.CARD_REVOKED
            )
        key = old.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return Continuing(key, pki.resident_card_uri(former, card_id))

    async def continue_in(
        self, conn: AsyncConnection, resident_code: str, continuing: Continuing
    ) -> tuple[str, bytes]:
        """Inside ``conn``'s transaction (a continuation's own, or a special move-in's):
        certify the card of :meth:`continuable` for a resident who moved in here."""
        resident = await self._resident(conn, resident_code)
        resident.require_active()
        if resident.entry_reason not in _MOVED_IN:
            raise FailedPrecondition(
                f"resident {resident_code} did not move in here", reason=Reason.NOT_REGISTERED
            )
        check_continuation(dt.date.fromisoformat(resident.registered_on), self.clock.now().date())
        if await repo.valid_card_of(conn, resident.id) is not None:
            raise FailedPrecondition(
                f"resident {resident_code} holds a valid card here", reason=Reason.CARD_HELD
            )
        async with self._ca_lock:
            cert, card_id = await asyncio.to_thread(
                pki.issue_resident_card_certificate, self.ca_dir, self.municipality, continuing.key
            )
        await repo.insert_card(
            conn,
            card_id=card_id,
            serial=cert.serial_number,
            resident_id=resident.id,
            issued_on=self._today(),
            continued_from=continuing.uri,
        )
        return card_id, cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Continuing:
    """A card another municipality issued, checked to be continued here: its key and URI."""

    key: ec.EllipticCurvePublicKey
    uri: str


class CardCrlKeeper:
    """Keeps this node's card trust current: publishes its own CRL to the prefecture
    (at once after a change, and every ``interval`` seconds) and fetches the CRLs it
    lacks, of every municipality, every ``interval`` seconds."""

    def __init__(
        self,
        cards: ResidentCards,
        publish: Callable[..., Awaitable[Any]],
        fetch: Callable[..., Awaitable[Any]],
        *,
        interval: float,
        timeout: float = 10.0,
    ) -> None:
        self.cards = cards
        self._publish = publish
        self._fetch = fetch
        self.interval = interval
        self.timeout = timeout

    async def round(self) -> int:
        """One exchange with the prefecture; how many CRLs were taken."""
        if self.cards.changed.is_set():
            self.cards.changed.clear()
            await self.cards.resign()
        own = self.cards.own_crl()
        await self._publish(
            card_pb2.PublishCardCrlsRequest(
                crls=[card_pb2.CardCrl(ca_certificate=own.ca_certificate, crl=own.crl)]
            ),
            timeout=self.timeout,
        )
        answer = await self._fetch(
            card_pb2.ListCardCrlsRequest(known=self.cards.trust.known()), timeout=self.timeout
        )
        return self.cards.trust.accept_all(CardCrl(c.ca_certificate, c.crl) for c in answer.crls)

    async def run(self) -> None:
        """Exchange until cancelled; a failed round is retried at the next."""
        while True:
            try:
                await self.round()
            except Exception as exc:  # the prefecture may be down: try again later
                log.warning("card CRL exchange with the prefecture failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cards.changed.wait(), self.interval)
