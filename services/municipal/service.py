"""Use cases of a municipal node, the register's operations: each checks its
input, changes the register and writes its notification in one transaction
(:meth:`jukinet.db.Database.operation`, which commits the call's operation
log entry with them), then wakes the pusher. Resident codes come from the pool the prefecture
handed down (:class:`services.municipal.pool.PoolKeeper`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet import movecert
from jukinet.clock import SYSTEM_CLOCK, Clock, japan_date
from jukinet.codes import check_resident_code
from jukinet.db import Database, touched
from jukinet.delivery.outbox import Outbox, PendingEntry
from jukinet.delivery.pusher import Pusher
from jukinet.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_upstream,
)
from jukinet.identity import Identity, Kind
from jukinet.interceptors import current_identity
from jukinet.login import Challenge
from jukinet.metrics import MunicipalMetrics
from jukinet.reasons import Reason
from jukinet.relay.endpoint import RelayClient
from jukinet.relay.header import Header, new_request_id
from jukinet.residentcard import (
    card_of_certificate,
    check_special_move_in,
    verify_card_proof,
    verify_filing,
)
from jukinet.v1 import common_pb2, municipal_pb2, prefecture_pb2_grpc, provision_pb2, relay_pb2
from jukinet.validation import (
    check_address,
    check_birth_date,
    check_date,
    check_effective_date,
    check_kana,
    check_known_local_government,
    check_name,
    check_notification,
)
from jukinet.vocabulary import Person, person_values
from services.municipal import repository as repo
from services.municipal.cards import ResidentCards
from services.municipal.copies import Copies
from services.municipal.logic import (
    ACTIVE,
    HEAD,
    RELATIONSHIP_LABELS,
    REMOVED,
    UNRECORDED,
    Change,
    Register,
    RelationshipValue,
    ResidentState,
    build_notification,
    changed_fields,
    check_amended_birth,
    check_dated_change,
    check_domicile,
    check_not_before_birth,
    check_notice_fits,
    check_person,
    check_register,
    check_relationship,
    check_return,
    event_changes,
    move_in_person,
    move_in_reason,
    overdue_since,
    removal_reason,
)
from services.municipal.pool import PoolKeeper

log = logging.getLogger("jukinet.municipal")

R = common_pb2
MAX_IMPORT_BATCH = 10_000
MAX_PAGE = 5_000
MAX_CERTIFICATE_NUMBER = 64  # the column's width; the issuers' numbers are 23 characters


def _new_household() -> str:
    return secrets.token_hex(8)


def as_utc(value: dt.datetime) -> dt.datetime:
    """A stored time as UTC (SQLite gives it back without its zone)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class CertificateKeys:
    """What the node signs its move-out certificates with (its own TLS key and
    certificate) and checks other municipalities' against (the federation CA
    and the revoked serials it already loads)."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca: x509.Certificate
    revoked: Callable[[], frozenset[int]] | frozenset[int]


@dataclass(frozen=True)
class MunicipalStatus:
    """How far the municipality's notifications have gone, and what it holds."""

    last_sequence: int
    acknowledged_through: int
    codes_in_pool: int
    active_residents: int
    removed_residents: int


class MunicipalService:
    """The operations on one municipality's register."""

    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        pool: PoolKeeper,
        pusher: Pusher,
        prefecture: prefecture_pb2_grpc.PrefectureServiceAsyncStub,
        municipality: str,
        metrics: MunicipalMetrics,
        keys: CertificateKeys,
        clock: Clock = SYSTEM_CLOCK,
        notices_queued: Callable[[], None] | None = None,
        cards: ResidentCards | None = None,
        relay: RelayClient | None = None,
        copies: Copies | None = None,
    ) -> None:
        self.db = db
        # Sends requests to other municipalities (a special move-in's pull).
        self._relay = relay
        # The copies answered for issue elsewhere, listed in a resident's disclosure.
        self.copies = copies
        # Told when a move-in queued its notice to the old municipality (the sender).
        self._notices_queued = notices_queued
        self.keys = keys
        # A removal lapses the resident's card in its transaction; the CRL is
        # re-signed after the commit.
        self.cards = cards
        self._lapse_pending = False
        self._clock = clock
        self.outbox = outbox
        self.pool = pool
        self.municipality = municipality
        self.metrics = metrics
        self._pusher = pusher
        self._prefecture = prefecture

    # -- plumbing ------------------------------------------------------------

    async def _announce(self, conn: AsyncConnection, changes: Sequence[Change]) -> int:
        """Write the notifications of ``changes``; returns the last sequence."""
        if not changes:
            return 0
        first = await self.outbox.reserve(conn, len(changes))
        now = self._clock.now()
        entries = []
        for i, change in enumerate(changes):
            n = build_notification(self.municipality, first + i, change, now)
            # The rules every tier checks a notification by: what the
            # prefecture would refuse is refused here, and nothing is written.
            check_notification(n, "notification", now=now)
            entries.append(
                PendingEntry(self.municipality, 0, change.resident_code, n.SerializeToString())
            )
        await self.outbox.append(conn, first, entries)
        self.metrics.notifications_written.inc(len(changes))
        return first + len(changes) - 1

    def _committed(self, codes_used: int = 0) -> None:
        self._pusher.wake()
        if self._lapse_pending and self.cards is not None:
            self._lapse_pending = False
            self.cards.lapsed()
        if codes_used:
            self.pool.consumed(codes_used)

    async def _take_code(self, conn: AsyncConnection) -> str:
        codes = await repo.take_codes(conn, 1)
        if not codes:
            raise Unavailable("the resident-code pool is empty; it is being refilled")
        return codes[0]

    async def _resident(
        self, conn: AsyncConnection, code: str, field: str = "resident_code"
    ) -> ResidentState:
        check_resident_code(code, field)
        resident = await repo.resident_by_code(conn, code)
        if resident is None:
            raise NotFound(f"no resident with code {code} in {self.municipality}")
        return resident

    async def _household(self, conn: AsyncConnection, household_id: str) -> str:
        if not household_id:
            return _new_household()
        if len(household_id) > 32 or not await repo.household_exists(conn, household_id):
            raise InvalidArgument("household_id", f"no current household {household_id!r}")
        return household_id

    async def _placement(
        self, conn: AsyncConnection, household_id: str, register: Register
    ) -> tuple[str, Register, bool]:
        """The household a new entry goes into and its relationship there:
        a new household with the person as its head, or an existing one with
        a relationship to its current head (or none recorded). Returns the
        household, the items and whether the household is new."""
        relationship = register.relationship
        field = "register.relationship"
        if not household_id:
            if relationship not in (UNRECORDED, HEAD):
                raise InvalidArgument(
                    field,
                    f"{RELATIONSHIP_LABELS[relationship]} of no one: the founder of a new "
                    "household is its head (give household_id to join one)",
                )
            return _new_household(), dataclasses.replace(register, relationship=HEAD), True
        household = await self._household(conn, household_id)
        if relationship == HEAD:
            raise InvalidArgument(
                field,
                f"household {household} has its members already: join with a relationship "
                "to its head, then ChangeHousehold to make a new head",
            )
        if relationship != UNRECORDED and await repo.household_head(conn, household) is None:
            raise InvalidArgument(
                field,
                f"household {household} has no current head to be related to "
                "(make a member its head with ChangeHousehold first)",
            )
        return household, register, False

    @staticmethod
    def _operator() -> str:
        """The identity of the operator making the change (the RPC's caller)."""
        return current_identity().uri

    async def _events(
        self,
        conn: AsyncConnection,
        pairs: Sequence[tuple[ResidentState | None, ResidentState]],
        effective: str,
        reason: common_pb2.ChangeReason.ValueType = R.CHANGE_REASON_UNSPECIFIED,
        register_change: municipal_pb2.RegisterChange.ValueType = (
            municipal_pb2.REGISTER_CHANGE_UNSPECIFIED
        ),
    ) -> None:
        """Record the change of each (before, after) pair as an event of its entry."""
        operator = self._operator()
        touched(after.resident_code for _, after in pairs)
        await repo.insert_events(
            conn,
            [
                {
                    "resident_id": after.id,
                    "resident_code": after.resident_code,
                    "reason": reason,
                    "register_change": register_change,
                    "effective_date": effective,
                    "operator": operator,
                    "changes": changed_fields(before, after),
                }
                for before, after in pairs
            ],
        )

    async def _enter(
        self,
        conn: AsyncConnection,
        code: str,
        person: Person,
        placement: tuple[str, Register, bool],
        effective: str,
        reason: common_pb2.ChangeReason.ValueType,
    ) -> ResidentState:
        """Insert a new active entry in its household (from :meth:`_placement`;
        a new household is recorded with the entry as its head) and its event."""
        household, register, new = placement
        resident = await repo.insert_resident(
            conn, code, person, household, effective, reason, register=register
        )
        if new:
            await repo.insert_household(conn, household, resident.id, person.address)
        await self._events(conn, [(None, resident)], effective, reason)
        return resident

    # -- creations -----------------------------------------------------------

    async def register_birth(
        self, req: municipal_pb2.RegisterBirthRequest
    ) -> tuple[ResidentState, int]:
        """Register a birth (出生) with a fresh code from the pool."""
        person = check_person(req.person, self.municipality)
        register = check_register(req.register, previous_address=False)
        await self.pool.ensure(1)
        async with self.db.operation() as conn:
            placement = await self._placement(conn, req.household_id, register)
            code = await self._take_code(conn)
            resident = await self._enter(
                conn,
                code,
                person,
                placement,
                person.birth_date,
                R.CHANGE_REASON_BIRTH,
            )
            seq = await self._announce(
                conn, [Change(code, person, R.CHANGE_REASON_BIRTH, person.birth_date)]
            )
        self._committed(codes_used=1)
        return resident, seq

    async def enter_ex_officio(
        self, req: municipal_pb2.EnterExOfficioRequest
    ) -> tuple[ResidentState, int]:
        """Enter a person ex officio (職権記載) with a fresh code from the pool."""
        person = check_person(req.person, self.municipality)
        reason = R.CHANGE_REASON_EX_OFFICIO_ENTRY
        effective = check_effective_date(req.effective_date, reason=reason).isoformat()
        check_not_before_birth(effective, person, "effective_date")
        register = check_register(req.register)
        await self.pool.ensure(1)
        async with self.db.operation() as conn:
            placement = await self._placement(conn, req.household_id, register)
            code = await self._take_code(conn)
            resident = await self._enter(conn, code, person, placement, effective, reason)
            seq = await self._announce(conn, [Change(code, person, reason, effective)])
        self._committed(codes_used=1)
        return resident, seq

    def _certificate_of(self, req: municipal_pb2.MoveInRequest) -> movecert.Verified:
        """The move-out certificate a domestic move-in rests on: signed by the
        federation's node of its issuer, for the code and previous municipality
        the request names (each may be left empty) and for this municipality."""
        if not req.HasField("move_out_certificate"):
            raise movecert.CertificateMissing()
        keys = self.keys
        verified = movecert.verify(req.move_out_certificate, ca=keys.ca, revoked=keys.revoked)
        cert = verified.certificate
        if not cert.certificate_number or len(cert.certificate_number) > MAX_CERTIFICATE_NUMBER:
            raise movecert.CertificateRefused(
                Reason.MOVE_OUT_CERTIFICATE_INVALID, "the certificate number is malformed"
            )
        movecert.check_fits(
            cert,
            resident_code=req.resident_code or cert.resident_code,
            previous=req.previous_local_government_code or cert.issuing_local_government_code,
            destination=self.municipality,
        )
        check_resident_code(cert.resident_code)
        check_known_local_government(
            cert.issuing_local_government_code, "previous_local_government_code"
        )
        if cert.issuing_local_government_code == self.municipality:
            raise InvalidArgument(
                "previous_local_government_code", "a move within the municipality is Relocate"
            )
        return verified

    async def move_in(
        self,
        req: municipal_pb2.MoveInRequest,
        *,
        then: Callable[[AsyncConnection, str], Awaitable[None]] | None = None,
    ) -> tuple[ResidentState, int]:
        """Register a move-in (転入) from another municipality or from abroad.

        From another municipality (転入, 特例転入) it rests on the old
        municipality's move-out certificate: the person is registered with the
        certificate's identity items and the operator's new address, the
        certificate is used once here, and the notification carries it.
        ``then`` (the connection, the resident code) runs last in the move-in's
        transaction: what it refuses undoes the move-in.
        """
        reason = move_in_reason(req.origin)
        effective = check_effective_date(req.effective_date, reason=reason).isoformat()
        domestic = req.origin != municipal_pb2.MOVE_IN_ORIGIN_ABROAD
        if req.resident_code:
            check_resident_code(req.resident_code)
        signed: common_pb2.SignedMoveOutCertificate | None = None
        cert: common_pb2.MoveOutCertificate | None = None
        if domestic:
            if req.previous_local_government_code:
                check_known_local_government(
                    req.previous_local_government_code, "previous_local_government_code"
                )
            cert = self._certificate_of(req).certificate
            signed = req.move_out_certificate
            person = move_in_person(cert, req.person, self.municipality)
            given_code = cert.resident_code
            register = check_register(req.register, default_previous=cert.address)
        else:
            if req.previous_local_government_code:
                raise InvalidArgument(
                    "previous_local_government_code", "not for a move from abroad"
                )
            if req.HasField("move_out_certificate"):
                raise InvalidArgument("move_out_certificate", "not for a move from abroad")
            person = check_person(req.person, self.municipality)
            given_code = req.resident_code
            register = check_register(req.register)
        check_not_before_birth(effective, person, "effective_date")
        if not given_code:
            await self.pool.ensure(1)
        async with self.db.operation() as conn:
            if cert is not None and await repo.certificate_used(
                conn,
                cert.certificate_number,
                cert.issuing_local_government_code,
                cert.move_out_sequence,
            ):
                raise movecert.CertificateRefused(
                    Reason.MOVE_OUT_CERTIFICATE_REPLAYED,
                    f"certificate {cert.certificate_number} was used for a move-in here before",
                )
            placement = await self._placement(conn, req.household_id, register)
            household, register, new_household = placement
            code = given_code or await self._take_code(conn)
            existing = await repo.resident_by_code(conn, code) if given_code else None
            if existing is not None and existing.resident_code != code:
                raise InvalidArgument(
                    "resident_code", f"{code} was replaced by {existing.resident_code}"
                )
            if existing is not None and existing.status == ACTIVE:
                raise AlreadyExists(
                    f"resident {code} is already registered here", reason=Reason.ALREADY_REGISTERED
                )
            if existing is not None:
                check_return(effective, existing)
                # Moving back: the old entry is reopened rather than duplicated.
                await repo.update_resident(
                    conn,
                    existing.id,
                    **person_values(person),
                    household_id=household,
                    status=ACTIVE,
                    registered_on=effective,
                    removed_on="",
                    last_reason=reason,
                    entry_reason=reason,
                    **repo.register_values(register),
                )
                resident = ResidentState(
                    existing.id,
                    code,
                    person,
                    household,
                    ACTIVE,
                    effective,
                    "",
                    reason,
                    register,
                    reason,
                )
                if new_household:
                    await repo.insert_household(conn, household, resident.id, person.address)
                await self._events(conn, [(existing, resident)], effective, reason)
            else:
                resident = await self._enter(conn, code, person, placement, effective, reason)
            seq = await self._announce(
                conn, [Change(code, person, reason, effective, certificate=signed)]
            )
            if cert is not None:
                # 転入通知: to the old municipality, delivered once this commits.
                notice = relay_pb2.MoveInNotice(
                    certificate_number=cert.certificate_number,
                    resident_code=code,
                    move_in_date=effective,
                    new_address=person.address,
                    move_in_sequence=seq,
                )
                await repo.queue_relay_request(
                    conn,
                    request_id=new_request_id(),
                    kind=relay_pb2.RELAY_KIND_MOVE_IN_NOTICE,
                    destination=cert.issuing_local_government_code,
                    body=notice.SerializeToString(),
                    now=self._clock.now(),
                )
                try:
                    await repo.use_certificate(
                        conn,
                        number=cert.certificate_number,
                        issuer=cert.issuing_local_government_code,
                        move_out_sequence=cert.move_out_sequence,
                        resident_code=code,
                        move_in_sequence=seq,
                    )
                except IntegrityError:
                    # A concurrent move-in on the same certificate committed first.
                    raise movecert.CertificateRefused(
                        Reason.MOVE_OUT_CERTIFICATE_REPLAYED,
                        f"certificate {cert.certificate_number} was used for a move-in here",
                    ) from None
            if then is not None:
                await then(conn, code)
        self._committed(codes_used=0 if given_code else 1)
        if cert is not None and self._notices_queued is not None:
            self._notices_queued()
        return resident, seq

    async def move_in_noticed(self, header: Header, body: bytes) -> relay_pb2.MoveInNoticeAnswer:
        """The new municipality ``header.source`` (verified by the relay) noticed a move-in resting
        on a certificate issued here: the move-out is made final (転出確定) once, with
        a register event by ``source``'s node; the same notice again answers the same day."""
        source = header.source
        try:
            notice = relay_pb2.MoveInNotice.FromString(body)
        except DecodeError:
            raise InvalidArgument("body", "is not a MoveInNotice") from None
        check_resident_code(notice.resident_code)
        moved_in_on = check_date(notice.move_in_date, "move_in_date").isoformat()
        number = notice.certificate_number
        async with self.db.write() as conn:
            issued = await repo.issued_certificate(conn, number)
            if issued is None:
                raise FailedPrecondition(
                    f"no move-out certificate {number} was issued by {self.municipality}",
                    reason=Reason.MOVE_IN_NOTICE_MISMATCH,
                )
            cert = common_pb2.MoveOutCertificate.FromString(issued.certificate)
            check_notice_fits(
                notice.resident_code,
                issued.resident_code,
                cert.destination_local_government_code,
                source,
                number,
            )
            if issued.confirmed_on is not None:
                return relay_pb2.MoveInNoticeAnswer(confirmed_on=issued.confirmed_on)
            today = japan_date(self._clock.now()).isoformat()
            await repo.confirm_certificate(
                conn, number, confirmed_on=today, by=source, moved_in_on=moved_in_on
            )
            # A move-out filed by post kept its card for the move-in: it lapses now.
            posted_card = await repo.posted_card_of_certificate(conn, number)
            if posted_card is not None and self.cards is not None:
                await self.cards.lapse_card_in(conn, posted_card)
            await repo.insert_events(
                conn,
                [
                    {
                        "resident_id": issued.resident_id,
                        "resident_code": issued.resident_code,
                        "reason": R.CHANGE_REASON_MOVE_OUT,
                        "register_change": municipal_pb2.REGISTER_CHANGE_MOVE_OUT_CONFIRMED,
                        "effective_date": cert.planned_move_out_date,
                        "operator": Identity.municipality(source).uri,
                        "changes": json.dumps(
                            [{"field": "move_in", "before": "", "after": moved_in_on}]
                        ),
                    }
                ],
            )
        if posted_card is not None and self.cards is not None:
            self.cards.lapsed()
        log.info("move-out %s made final by %s's move-in notice", number, source)
        return relay_pb2.MoveInNoticeAnswer(confirmed_on=today)

    async def unconfirmed_move_outs(self, as_of: str) -> list[municipal_pb2.UnconfirmedMoveOut]:
        """Move-outs from here without a move-in notice past the statutory period on
        ``as_of`` (empty: today in Japan)."""
        day = check_date(as_of, "as_of") if as_of else japan_date(self._clock.now())
        async with self.db.read() as conn:
            rows = await repo.unconfirmed_move_outs(conn)
        found = []
        for code, name, planned, body in rows:
            since = overdue_since(planned)
            if since > day:
                continue
            cert = common_pb2.MoveOutCertificate.FromString(body)
            found.append(
                municipal_pb2.UnconfirmedMoveOut(
                    resident_code=code,
                    name=name,
                    certificate_number=cert.certificate_number,
                    planned_move_out_date=planned,
                    destination_local_government_code=cert.destination_local_government_code,
                    overdue_since=since.isoformat(),
                )
            )
        touched(m.resident_code for m in found)
        return found

    # -- amendments ----------------------------------------------------------

    async def relocate(self, req: municipal_pb2.RelocateRequest) -> tuple[list[ResidentState], int]:
        """Move a resident (or their whole household) to a new address here (転居)."""
        address = check_address(req.new_address, "new_address", self.municipality)
        effective = check_effective_date(
            req.effective_date, reason=R.CHANGE_REASON_RELOCATION
        ).isoformat()
        async with self.db.operation() as conn:
            resident = await self._resident(conn, req.resident_code)
            resident.require_active()
            movers = (
                await repo.household_members(conn, resident.household_id)
                if req.whole_household
                else [resident]
            )
            changes = []
            updated = []
            for m in movers:
                check_dated_change(effective, m)
                person = dataclasses.replace(m.person, address=address)
                await repo.update_resident(
                    conn, m.id, address=address, last_reason=R.CHANGE_REASON_RELOCATION
                )
                changes.append(
                    Change(m.resident_code, person, R.CHANGE_REASON_RELOCATION, effective)
                )
                updated.append(
                    dataclasses.replace(m, person=person, last_reason=R.CHANGE_REASON_RELOCATION)
                )
            head = await repo.household_head(conn, resident.household_id)
            if req.whole_household or (head is not None and head.id == resident.id):
                await repo.set_household(conn, resident.household_id, address=address)
            await self._events(
                conn, list(zip(movers, updated, strict=True)), effective, R.CHANGE_REASON_RELOCATION
            )
            seq = await self._announce(conn, changes)
        self._committed()
        return updated, seq

    async def change_name(self, req: municipal_pb2.ChangeNameRequest) -> tuple[ResidentState, int]:
        """Change a resident's name, reading or former surname."""
        name = check_name(req.name, "name")
        kana = check_kana(req.name_kana, "name_kana")
        former = check_name(req.former_surname, "former_surname", required=False)
        reason = R.CHANGE_REASON_NAME_CHANGE
        effective = check_effective_date(req.effective_date, reason=reason).isoformat()
        async with self.db.operation() as conn:
            resident = await self._resident(conn, req.resident_code)
            resident.require_active()
            check_dated_change(effective, resident)
            person = dataclasses.replace(
                resident.person, name=name, name_kana=kana, former_surname=former
            )
            await repo.update_resident(
                conn, resident.id, **person_values(person), last_reason=reason
            )
            renamed = dataclasses.replace(resident, person=person, last_reason=reason)
            await self._events(conn, [(resident, renamed)], effective, reason)
            seq = await self._announce(
                conn, [Change(resident.resident_code, person, reason, effective)]
            )
        self._committed()
        return renamed, seq

    async def amend(self, req: municipal_pb2.AmendRequest) -> tuple[ResidentState, int]:
        """Correct a resident's details ex officio (職権修正)."""
        person = check_person(req.person, self.municipality)
        reason = R.CHANGE_REASON_EX_OFFICIO_AMENDMENT
        effective = check_effective_date(req.effective_date, reason=reason).isoformat()
        async with self.db.operation() as conn:
            resident = await self._resident(conn, req.resident_code)
            resident.require_active()
            registered = resident.registered_on
            if registered == resident.person.birth_date:
                # Registered since birth: the entry's date is the birth date, so a
                # corrected birth date corrects it too.
                registered = person.birth_date
            else:
                check_amended_birth(person, resident, "person.birth_date")
            check_dated_change(effective, dataclasses.replace(resident, person=person))
            await repo.update_resident(
                conn,
                resident.id,
                **person_values(person),
                registered_on=registered,
                last_reason=reason,
            )
            amended = dataclasses.replace(
                resident, person=person, registered_on=registered, last_reason=reason
            )
            await self._events(conn, [(resident, amended)], effective, reason)
            seq = await self._announce(
                conn, [Change(resident.resident_code, person, reason, effective)]
            )
        self._committed()
        return amended, seq

    async def change_code(
        self, req: municipal_pb2.ChangeResidentCodeRequest
    ) -> tuple[ResidentState, str, int]:
        """Give a resident a new code from the pool (住民票コード変更)."""
        reason = R.CHANGE_REASON_CODE_CHANGE
        effective = check_effective_date(req.effective_date, reason=reason).isoformat()
        await self.pool.ensure(1)
        async with self.db.operation() as conn:
            resident = await self._resident(conn, req.resident_code)
            resident.require_active()
            if resident.resident_code != req.resident_code:
                raise InvalidArgument(
                    "resident_code", f"was already replaced by {resident.resident_code}"
                )
            check_dated_change(effective, resident)
            new = await self._take_code(conn)
            await repo.update_resident(conn, resident.id, resident_code=new, last_reason=reason)
            await repo.record_code_change(conn, resident.id, resident.resident_code, new, effective)
            await self._events(
                conn,
                [(resident, dataclasses.replace(resident, resident_code=new, last_reason=reason))],
                effective,
                reason,
            )
            seq = await self._announce(
                conn, [Change(new, resident.person, reason, effective, resident.resident_code)]
            )
        self._committed(codes_used=1)
        return (
            dataclasses.replace(resident, resident_code=new, last_reason=reason),
            resident.resident_code,
            seq,
        )

    # -- removals ------------------------------------------------------------

    async def _removal(
        self,
        conn: AsyncConnection,
        code: str,
        reason: common_pb2.ChangeReason.ValueType,
        effective: str,
        field: str = "effective_date",
        *,
        keep_card: bool = False,
    ) -> tuple[ResidentState, int]:
        """Remove a resident inside ``conn``'s transaction and write its notification.

        The resident's card lapses with it, unless ``keep_card`` (a move-out filed
        by post: the card is presented at the new municipality's counter, and
        lapses when the move-in notice makes the move-out final)."""
        resident = await self._resident(conn, code)
        resident.require_active()
        check_dated_change(effective, resident, field)
        await repo.update_resident(
            conn, resident.id, status=REMOVED, removed_on=effective, last_reason=reason
        )
        if (
            not keep_card
            and self.cards is not None
            and await self.cards.lapse_in(conn, resident.id)
        ):
            self._lapse_pending = True
        removed = dataclasses.replace(
            resident, status=REMOVED, removed_on=effective, last_reason=reason
        )
        await self._events(conn, [(resident, removed)], effective, reason)
        seq = await self._announce(
            conn, [Change(resident.resident_code, resident.person, reason, effective)]
        )
        return removed, seq

    async def _remove(
        self,
        code: str,
        reason: common_pb2.ChangeReason.ValueType,
        effective: str,
        field: str = "effective_date",
    ) -> tuple[ResidentState, int]:
        async with self.db.operation() as conn:
            removed, seq = await self._removal(conn, code, reason, effective, field)
        self._committed()
        return removed, seq

    async def move_out(
        self, req: municipal_pb2.MoveOutRequest
    ) -> tuple[ResidentState, int, common_pb2.SignedMoveOutCertificate | None]:
        """Remove a resident who moves out (転出) or abroad.

        A move to another municipality issues the move-out certificate (転出証明書)
        in the same transaction: the resident's identity items, the planned date
        (the effective date given, which may lie ahead), the destination and
        the sequence of the move-out notification, signed with this node's key.
        """
        reason = R.CHANGE_REASON_MOVE_ABROAD if req.abroad else R.CHANGE_REASON_MOVE_OUT
        effective = check_effective_date(req.effective_date, reason=reason).isoformat()
        if req.abroad:
            if req.destination_local_government_code:
                raise InvalidArgument("destination_local_government_code", "not for a move abroad")
            return (
                *await self._remove(req.resident_code, R.CHANGE_REASON_MOVE_ABROAD, effective),
                None,
            )
        destination = self._destination(
            req.destination_local_government_code, "destination_local_government_code"
        )
        async with self.db.operation() as conn:
            removed, seq, signed = await self._move_out_to(
                conn, req.resident_code, destination, effective
            )
        self._committed()
        return removed, seq, signed

    def _destination(self, destination: str, field: str) -> str:
        """The destination of a move-out: another municipality the federation knows."""
        check_known_local_government(destination, field)
        if destination == self.municipality:
            raise InvalidArgument(field, "a move within the municipality is Relocate")
        return destination

    async def _move_out_to(
        self,
        conn: AsyncConnection,
        code: str,
        destination: str,
        effective: str,
        *,
        keep_card: bool = False,
    ) -> tuple[ResidentState, int, common_pb2.SignedMoveOutCertificate]:
        """Inside ``conn``'s transaction: remove ``code`` moving to ``destination``
        on ``effective``, and issue and keep the signed move-out certificate."""
        removed, seq = await self._removal(
            conn, code, R.CHANGE_REASON_MOVE_OUT, effective, keep_card=keep_card
        )
        cert = movecert.build(
            issuer=self.municipality,
            resident_code=removed.resident_code,
            person=removed.person,
            planned_date=effective,
            destination=destination,
            move_out_sequence=seq,
            issued_at=self._clock.now(),
        )
        signed = movecert.sign(cert, self.keys.key, self.keys.certificate)
        await repo.insert_certificate(
            conn,
            number=cert.certificate_number,
            resident_id=removed.id,
            resident_code=removed.resident_code,
            move_out_sequence=seq,
            certificate=signed.certificate,
        )
        return removed, seq, signed

    async def reissue_certificate(self, code: str) -> common_pb2.SignedMoveOutCertificate:
        """The latest move-out certificate of a resident who moved from here to
        another municipality, with its number and contents unchanged, signed
        again with this node's key (a lost certificate, a renewed key)."""
        async with self.db.read() as conn:
            resident = await self._resident(conn, code)
            body: bytes | None = None
            if resident.status == REMOVED and resident.last_reason == R.CHANGE_REASON_MOVE_OUT:
                body = await repo.latest_certificate(conn, resident.id)
        if body is None:
            raise FailedPrecondition(
                f"resident {code} has not moved out from {self.municipality} to another "
                "municipality (no move-out certificate to re-issue)",
                reason=Reason.NOT_MOVED_OUT,
            )
        return self._signed_again(body)

    def _signed_again(self, body: bytes) -> common_pb2.SignedMoveOutCertificate:
        """A stored move-out certificate, signed again with this node's current key."""
        signed = movecert.sign(
            common_pb2.MoveOutCertificate.FromString(body), self.keys.key, self.keys.certificate
        )
        if signed.certificate != body:
            # The stored bytes are what was certified; never sign anything else.
            raise RuntimeError("a stored move-out certificate does not re-serialize to itself")
        return signed

    # -- moving with the resident card (転出・転入の特例) -------------------------

    def _cards(self) -> ResidentCards:
        if self.cards is None:
            raise Unavailable(f"{self.municipality} serves no resident cards")
        return self.cards

    async def move_out_by_post(
        self, req: municipal_pb2.MoveOutByPostRequest
    ) -> tuple[ResidentState, int, str]:
        """A move-out filed by post with the resident card's signature (付記転出届).

        The filing must be signed by a valid card of this municipality that
        the named resident holds, for a move to another municipality (a move
        abroad is filed at the counter). The move-out is the one a counter
        records (:meth:`_move_out_to`: the resident leaves the register, the
        notification goes upward, the certificate is issued and kept), with
        nothing handed out: the certificate waits for the new municipality to
        pull it with the card (:meth:`move_out_data`), and the card stays valid
        until the move-in notice makes the move-out final. Returns the removed
        entry, the notification's sequence and the certificate's number.
        """
        cards = self._cards()
        check_resident_code(req.resident_code)
        if not req.filing.filing:
            raise InvalidArgument("filing.filing", "required: the filing the card signed")
        try:
            filing = municipal_pb2.MoveOutFiling.FromString(req.filing.filing)
        except DecodeError:
            raise InvalidArgument("filing.filing", "is not a MoveOutFiling") from None
        if filing.abroad:
            raise FailedPrecondition(
                "a move abroad is filed at the counter, not by post",
                reason=Reason.MOVE_ABROAD_BY_POST,
            )
        destination = self._destination(
            filing.destination_local_government_code, "filing.destination_local_government_code"
        )
        effective = check_effective_date(
            filing.planned_move_out_date,
            "filing.planned_move_out_date",
            reason=R.CHANGE_REASON_MOVE_OUT,
        ).isoformat()
        new_address = check_address(filing.new_address, "filing.new_address", destination)
        if filing.signed_on:
            check_date(filing.signed_on, "filing.signed_on")
        holder = verify_filing(
            req.filing.filing,
            req.filing.signature,
            filing.card_certificate,
            trust=cards.trust,
            now=self._clock.now(),
        )
        if holder.municipality != self.municipality:
            raise PermissionDenied(
                f"the filing is signed by a card of {holder.municipality}, not of "
                f"{self.municipality}",
                reason=Reason.CARD_INVALID,
            )
        async with self.db.operation() as conn:
            resident = await self._resident(conn, req.resident_code)
            held_by = await cards.holder_of(conn, holder.card_id)
            if held_by.id != resident.id:
                raise PermissionDenied(
                    f"resident card {holder.card_id} is not the card of resident "
                    f"{req.resident_code}",
                    reason=Reason.CARD_NOT_HOLDERS,
                )
            removed, seq, signed = await self._move_out_to(
                conn, req.resident_code, destination, effective, keep_card=True
            )
            number = common_pb2.MoveOutCertificate.FromString(signed.certificate).certificate_number
            await repo.insert_posted_move_out(
                conn,
                number=number,
                card_id=holder.card_id,
                resident_id=removed.id,
                destination=destination,
                planned_on=effective,
                new_address=new_address,
                filing=req.filing.filing,
                signature=req.filing.signature,
                at=self._clock.now(),
            )
        self._committed()
        log.info("move-out %s filed by post with a resident card", number)
        return removed, seq, number

    async def move_out_data(self, header: Header, body: bytes) -> relay_pb2.MoveOutDataAnswer:
        """The new municipality ``header.source`` (verified by the relay) pulls the
        move-out filed by post with a card of this municipality (転出証明書情報),
        with the card's signature of a challenge of one of its terminals: the
        signed move-out certificate, for the filed destination only. Reads only,
        so the same request answers the same again."""
        cards = self._cards()
        try:
            req = relay_pb2.MoveOutDataRequest.FromString(body)
        except DecodeError:
            raise InvalidArgument("body", "is not a MoveOutDataRequest") from None
        try:
            challenge = Challenge.parse(req.challenge)
        except ValueError as exc:
            raise InvalidArgument("challenge", f"not a card proof's challenge: {exc}") from None
        terminal = challenge.terminal
        if terminal.kind is not Kind.TERMINAL or terminal.code != header.source:
            raise PermissionDenied(
                f"the challenge is of {terminal.uri}, not of a terminal of {header.source}",
                reason=Reason.CHALLENGE_INVALID,
            )
        holder = verify_card_proof(
            req.card_certificate,
            challenge,
            req.card_signature,
            trust=cards.trust,
            now=self._clock.now(),
        )
        if holder.municipality != self.municipality:
            raise PermissionDenied(
                f"a card of {holder.municipality}: ask that municipality",
                reason=Reason.CARD_INVALID,
            )
        async with self.db.read() as conn:
            await cards.holder_of(conn, holder.card_id)
            posted = await repo.posted_move_out_of_card(conn, holder.card_id)
        if posted is None:
            raise FailedPrecondition(
                f"no move-out was filed by post with this card at {self.municipality}: move "
                "in with the move-out certificate",
                reason=Reason.NO_MOVE_OUT_FILED,
            )
        if posted.destination != header.source:
            log.warning(
                "move-out data of %s asked by %s, filed for %s",
                posted.certificate_number,
                header.source,
                posted.destination,
            )
            raise PermissionDenied(
                f"the move-out was filed for another municipality than {header.source}",
                reason=Reason.NOT_FILED_DESTINATION,
            )
        return relay_pb2.MoveOutDataAnswer(
            certificate=self._signed_again(posted.certificate), new_address=posted.new_address
        )

    async def special_move_in(
        self, req: municipal_pb2.SpecialMoveInRequest, terminal: Identity
    ) -> tuple[ResidentState, int, str, str, bytes]:
        """A card holder who filed their move-out by post moves in here (特例転入).

        The card signed this terminal's challenge after its PIN; the challenge,
        the card's certificate and signature go to the card's municipality over
        the relay, which answers the signed move-out certificate it keeps
        (:meth:`move_out_data`). Within the deadlines
        (:func:`jukinet.residentcard.check_special_move_in`) the resident is
        registered through :meth:`move_in` with that certificate, as a special
        move-in: the same code, the same checks above, the move-in notice to
        the old municipality. With ``continue_card`` the card is continued
        here, in the move-in's transaction (:meth:`ResidentCards.continue_in`).
        Returns the entry, the notification's sequence, the certificate number
        and, when continued, the new card id and certificate.
        """
        cards = self._cards()
        if self._relay is None:
            raise Unavailable(f"{self.municipality} sends no relayed requests")
        moved_in = check_effective_date(req.effective_date, reason=R.CHANGE_REASON_SPECIAL_MOVE_IN)
        proof = req.card_proof
        if not proof.nonce:
            raise InvalidArgument("card_proof.nonce", "required: the challenge the card signed")
        _, old, _ = card_of_certificate(proof.card_certificate)
        if old == self.municipality:
            raise InvalidArgument(
                "card_proof.card_certificate",
                "a card of this municipality: a move within it is Relocate",
            )
        # Checked before anything is asked, so that the continuation cannot fail
        # for want of the old card CA's CRL once the move-in is made.
        continuing = (
            cards.continuable(proof.card_certificate, "card_proof.card_certificate")
            if req.continue_card
            else None
        )
        challenge = await cards.challenges.take(terminal, proof.nonce)
        try:
            answered = await self._relay.send(
                old,
                relay_pb2.RELAY_KIND_MOVE_OUT_DATA,
                relay_pb2.MoveOutDataRequest(
                    card_certificate=proof.card_certificate,
                    challenge=challenge.message(),
                    card_signature=proof.signature,
                ),
            )
            data = relay_pb2.MoveOutDataAnswer.FromString(answered)
            planned = check_date(
                common_pb2.MoveOutCertificate.FromString(
                    data.certificate.certificate
                ).planned_move_out_date,
                "planned_move_out_date",
            )
        except (DecodeError, InvalidArgument):
            raise movecert.CertificateRefused(
                Reason.MOVE_OUT_CERTIFICATE_INVALID, f"{old} answered no move-out certificate"
            ) from None
        check_special_move_in(planned, moved_in, japan_date(self._clock.now()))
        person = municipal_pb2.PersonDetails()
        person.CopyFrom(req.person)
        person.address = person.address or data.new_address
        continued: list[tuple[str, bytes]] = []

        async def continue_card(conn: AsyncConnection, code: str) -> None:
            assert continuing is not None
            continued.append(await cards.continue_in(conn, code, continuing))

        resident, seq = await self.move_in(
            municipal_pb2.MoveInRequest(
                person=person,
                origin=municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC_SPECIAL,
                previous_local_government_code=old,
                household_id=req.household_id,
                effective_date=moved_in.isoformat(),
                move_out_certificate=data.certificate,
                register=req.register,
            ),
            then=continue_card if continuing is not None else None,
        )
        number = common_pb2.MoveOutCertificate.FromString(
            data.certificate.certificate
        ).certificate_number
        card_id, certificate = continued[0] if continued else ("", b"")
        return resident, seq, number, card_id, certificate

    async def record_death(
        self, req: municipal_pb2.RecordDeathRequest
    ) -> tuple[ResidentState, int]:
        """Remove a resident who died (死亡)."""
        date = check_birth_date(req.date_of_death, "date_of_death").isoformat()
        return await self._remove(req.resident_code, R.CHANGE_REASON_DEATH, date, "date_of_death")

    async def remove_ex_officio(
        self, req: municipal_pb2.RemoveExOfficioRequest
    ) -> tuple[ResidentState, int]:
        """Remove a resident ex officio (職権消除) or declared missing."""
        reason = removal_reason(req.ground)
        effective = check_effective_date(req.effective_date, reason=reason).isoformat()
        return await self._remove(req.resident_code, reason, effective)

    # -- bulk import ---------------------------------------------------------

    async def import_rows(
        self, rows: Sequence[municipal_pb2.ImportRow]
    ) -> municipal_pb2.ImportResidentsResponse:
        """Load a batch of an existing register in one transaction.

        Rows already loaded (same source_id) are skipped, so an interrupted import
        resumes by sending the file again; a bad row is reported with its line and
        the good rows still load. Each row becomes an ex-officio entry (職権記載)
        with a fresh code from the pool.
        """
        if len(rows) > MAX_IMPORT_BATCH:
            raise InvalidArgument("rows", f"at most {MAX_IMPORT_BATCH} per message")
        rejected: list[municipal_pb2.RejectedRow] = []
        good: list[tuple[municipal_pb2.ImportRow, Person, str]] = []
        seen: set[str] = set()
        registers: dict[str, Register] = {}
        heads: dict[str, int] = {}  # household -> line of its head in the batch
        for row in rows:
            try:
                if not row.source_id or len(row.source_id) > 64:
                    raise InvalidArgument("source_id", "must be 1 to 64 characters")
                if row.source_id in seen:
                    raise InvalidArgument("source_id", "appears twice in the batch")
                person = check_person(row.person, self.municipality)
                registered = check_effective_date(
                    row.registered_on or person.birth_date,
                    "registered_on",
                    reason=R.CHANGE_REASON_EX_OFFICIO_ENTRY,
                ).isoformat()
                check_not_before_birth(registered, person, "registered_on")
                if row.household_id and len(row.household_id) > 32:
                    raise InvalidArgument("household_id", "at most 32 characters")
                register = check_register(row.register)
                if not row.household_id:
                    if register.relationship not in (UNRECORDED, HEAD):
                        raise InvalidArgument(
                            "register.relationship",
                            "a row without a household_id heads a household of its own",
                        )
                    register = dataclasses.replace(register, relationship=HEAD)
                elif register.relationship == HEAD and row.household_id in heads:
                    raise InvalidArgument(
                        "register.relationship",
                        f"household {row.household_id} has its head on line "
                        f"{heads[row.household_id]} of the batch",
                    )
            except InvalidArgument as exc:
                rejected.append(
                    municipal_pb2.RejectedRow(
                        line=row.line, source_id=row.source_id, field=exc.field, reason=exc.problem
                    )
                )
                continue
            seen.add(row.source_id)
            registers[row.source_id] = register
            if row.household_id and register.relationship == HEAD:
                heads[row.household_id] = row.line
            good.append((row, person, registered))
        if good:
            await self.pool.ensure(len(good))
        async with self.db.operation() as conn:
            present = await repo.existing_source_ids(conn, [r.source_id for r, _, _ in good])
            todo = [g for g in good if g[0].source_id not in present]
            codes = await repo.take_codes(conn, len(todo))
            if len(codes) < len(todo):
                raise Unavailable("the resident-code pool ran short; retry the batch")
            reason = R.CHANGE_REASON_EX_OFFICIO_ENTRY
            households = {row.source_id: row.household_id or _new_household() for row, _, _ in todo}
            await repo.insert_residents(
                conn,
                [
                    {
                        "resident_code": code,
                        "source_id": row.source_id,
                        **person_values(person),
                        "household_id": households[row.source_id],
                        "status": ACTIVE,
                        "registered_on": registered,
                        "removed_on": "",
                        "last_reason": reason,
                        "entry_reason": reason,
                        **repo.register_values(registers[row.source_id]),
                    }
                    for code, (row, person, registered) in zip(codes, todo, strict=True)
                ],
            )
            await self._imported(conn, codes, todo, households, registers)
            await self._announce(
                conn,
                [
                    Change(code, person, reason, registered)
                    for code, (_, person, registered) in zip(codes, todo, strict=True)
                ],
            )
        if todo:
            self._committed(codes_used=len(codes))
        return municipal_pb2.ImportResidentsResponse(
            imported=len(todo), already_present=len(good) - len(todo), rejected=rejected
        )

    async def _imported(
        self,
        conn: AsyncConnection,
        codes: Sequence[str],
        todo: Sequence[tuple[municipal_pb2.ImportRow, Person, str]],
        households: dict[str, str],
        registers: dict[str, Register],
    ) -> None:
        """The households (with the head the rows name) and the entry events
        of an imported batch just inserted."""
        if not todo:
            return
        ids = await repo.ids_by_source(conn, [row.source_id for row, _, _ in todo])
        reason = R.CHANGE_REASON_EX_OFFICIO_ENTRY
        entries = [
            ResidentState(
                ids[row.source_id],
                code,
                person,
                households[row.source_id],
                ACTIVE,
                registered,
                "",
                reason,
                registers[row.source_id],
                reason,
            )
            for code, (row, person, registered) in zip(codes, todo, strict=True)
        ]
        heads = {e.household_id: e.id for e in entries if e.register.relationship == HEAD}
        known = await repo.insert_missing_households(
            conn, {e.household_id: e.person.address for e in entries}, heads
        )
        for household in known:
            if household in heads:
                # The old system names the head of a household entered before.
                await repo.set_household(conn, household, head=heads[household])
        operator = self._operator()
        touched(codes)
        await repo.insert_events(
            conn,
            [
                {
                    "resident_id": e.id,
                    "resident_code": e.resident_code,
                    "reason": reason,
                    "register_change": municipal_pb2.REGISTER_CHANGE_UNSPECIFIED,
                    "effective_date": e.registered_on,
                    "operator": operator,
                    "changes": changed_fields(None, e),
                }
                for e in entries
            ],
        )

    # -- reads ---------------------------------------------------------------

    async def get(
        self, code: str
    ) -> tuple[ResidentState, list[common_pb2.Notification], list[municipal_pb2.RegisterEvent]]:
        """One resident (current or removed), every notification written about
        them (all their codes) and every change of their entry."""
        async with self.db.read() as conn:
            resident = await self._resident(conn, code)
            codes = await repo.codes_of(conn, resident)
            payloads = await self.outbox.payloads_for(conn, codes)
            rows = await repo.events_of(conn, resident.id)
        events = [
            municipal_pb2.RegisterEvent(
                id=r.id,
                resident_code=r.resident_code,
                reason=r.reason,
                register_change=r.register_change,
                effective_date=r.effective_date,
                recorded_at=as_utc(r.recorded_at).isoformat(),
                operator=r.operator,
                changes=event_changes(r.changes),
            )
            for r in rows
        ]
        return resident, [common_pb2.Notification.FromString(p) for p in payloads], events

    async def _household_of(
        self, conn: AsyncConnection, household_id: str
    ) -> municipal_pb2.Household:
        members = await repo.household_members(conn, household_id)
        row = await repo.household_row(conn, household_id)
        if row is None and not members:
            raise NotFound(f"no household {household_id} in {self.municipality}")
        head = await repo.household_head(conn, household_id)
        return municipal_pb2.Household(
            household_id=household_id,
            head_resident_code=head.resident_code if head is not None else "",
            address=row[1] if row is not None else "",
            members=[
                municipal_pb2.HouseholdMember(
                    resident_code=m.resident_code,
                    name=m.person.name,
                    relationship=m.register.relationship,
                )
                for m in members
            ],
        )

    async def household(self, req: municipal_pb2.GetHouseholdRequest) -> municipal_pb2.Household:
        """A household, by its id or by a resident's code: head, address, current members."""
        if bool(req.household_id) == bool(req.resident_code):
            raise InvalidArgument("household_id", "give exactly one of household_id, resident_code")
        async with self.db.read() as conn:
            if req.resident_code:
                household_id = (await self._resident(conn, req.resident_code)).household_id
            else:
                if len(req.household_id) > 32:
                    raise InvalidArgument("household_id", "at most 32 characters")
                household_id = req.household_id
            return await self._household_of(conn, household_id)

    # -- register-only changes (nothing goes upward) ---------------------------

    async def change_household(
        self, req: municipal_pb2.ChangeHouseholdRequest
    ) -> tuple[municipal_pb2.Household, list[ResidentState], int]:
        """Move a resident to another household (世帯合併), found one of their
        own (世帯分離), make them the head of theirs (世帯主変更) or correct
        their relationship. Nothing of it goes upward, unless the resident
        moves with it (a new household at a new address, or one at another
        address joined): that move is a relocation (転居) and announced as one.
        Returns the household after, the entries touched and the relocation's
        notification sequence (0: none)."""
        relationship = check_relationship(req.relationship, "relationship")
        new_address = ""
        if req.new_address:
            if not req.new_household:
                raise InvalidArgument("new_address", "only with new_household")
            new_address = check_address(req.new_address, "new_address", self.municipality)
        effective = check_effective_date(
            req.effective_date, reason=R.CHANGE_REASON_RELOCATION
        ).isoformat()
        restated: dict[str, RelationshipValue] = {}
        for i, given in enumerate(req.relationships):
            field = f"relationships[{i}]"
            check_resident_code(given.resident_code, f"{field}.resident_code")
            value = check_relationship(given.relationship, f"{field}.relationship")
            if value in (UNRECORDED, HEAD):
                raise InvalidArgument(f"{field}.relationship", "must be a relationship to the head")
            if given.resident_code in restated:
                raise InvalidArgument(f"{field}.resident_code", "appears twice")
            restated[given.resident_code] = value
        if req.new_household and req.household_id:
            raise InvalidArgument("household_id", "not with new_household")
        if restated and relationship != HEAD:
            raise InvalidArgument("relationships", "only with a change of head (relationship HEAD)")
        if len(req.household_id) > 32:
            raise InvalidArgument("household_id", "at most 32 characters")
        async with self.db.operation() as conn:
            resident = await self._resident(conn, req.resident_code)
            resident.require_active()
            check_dated_change(effective, resident)
            pairs: list[tuple[ResidentState, ResidentState]] = []

            def moved(
                who: ResidentState, household: str, value: RelationshipValue
            ) -> ResidentState:
                after = dataclasses.replace(
                    who,
                    household_id=household,
                    register=dataclasses.replace(who.register, relationship=value),
                )
                pairs.append((who, after))
                return after

            if req.new_household:
                if relationship not in (UNRECORDED, HEAD):
                    raise InvalidArgument(
                        "relationship", "the founder of a new household is its head"
                    )
                target = _new_household()
                moved(resident, target, HEAD)
                await repo.insert_household(
                    conn, target, resident.id, new_address or resident.person.address
                )
                kind = municipal_pb2.REGISTER_CHANGE_HOUSEHOLD_SEPARATION
            elif req.household_id and req.household_id != resident.household_id:
                target = await self._household(conn, req.household_id)
                head = await repo.household_head(conn, target)
                if relationship == UNRECORDED:
                    raise InvalidArgument("relationship", "required to join a household")
                if relationship == HEAD and head is not None:
                    raise InvalidArgument(
                        "relationship",
                        f"household {target} has a head ({head.resident_code}): join with a "
                        "relationship to them, then make a new head",
                    )
                if relationship != HEAD and head is None:
                    raise InvalidArgument(
                        "relationship",
                        f"household {target} has no current head to be related to "
                        "(make a member its head first)",
                    )
                moved(resident, target, relationship)
                if relationship == HEAD:
                    await repo.set_household(conn, target, head=resident.id)
                kind = municipal_pb2.REGISTER_CHANGE_HOUSEHOLD_JOIN
            else:
                target = resident.household_id
                head = await repo.household_head(conn, target)
                if relationship == UNRECORDED:
                    raise InvalidArgument("relationship", "required")
                if head is not None and head.id == resident.id:
                    raise InvalidArgument(
                        "relationship",
                        f"{resident.resident_code} is the head of household {target} "
                        "(make another member its head instead)",
                    )
                if relationship == HEAD:
                    members = {
                        m.resident_code: m for m in await repo.household_members(conn, target)
                    }
                    if head is not None and head.resident_code not in restated:
                        raise InvalidArgument(
                            "relationships",
                            f"the current head {head.resident_code} needs a relationship "
                            "to the new head",
                        )
                    for i, (code, value) in enumerate(restated.items()):
                        member = members.get(code)
                        if member is None or code == resident.resident_code:
                            raise InvalidArgument(
                                f"relationships[{i}].resident_code",
                                f"{code} is not another current member of household {target}",
                            )
                        moved(member, target, value)
                    await repo.set_household(conn, target, head=resident.id)
                    kind = municipal_pb2.REGISTER_CHANGE_HEAD
                else:
                    if head is None:
                        raise InvalidArgument(
                            "relationship",
                            f"household {target} has no current head to be related to "
                            "(make a member its head first)",
                        )
                    kind = municipal_pb2.REGISTER_CHANGE_RELATIONSHIP
                moved(resident, target, relationship)
            for _, after in pairs:
                await repo.update_resident(
                    conn,
                    after.id,
                    household_id=after.household_id,
                    relationship=after.register.relationship,
                )
            # The resident's own change is the last pair.
            before, after = pairs.pop()
            await self._events(conn, pairs, effective, register_change=kind)
            found = await repo.household_row(conn, target)
            address = new_address or (found[1] if found is not None and found[1] else "")
            seq = 0
            relocation = R.CHANGE_REASON_RELOCATION
            if address and address != after.person.address:
                after = dataclasses.replace(
                    after,
                    person=dataclasses.replace(after.person, address=address),
                    last_reason=relocation,
                )
                await repo.update_resident(conn, after.id, address=address, last_reason=relocation)
                await self._events(
                    conn, [(before, after)], effective, relocation, register_change=kind
                )
                seq = await self._announce(
                    conn, [Change(after.resident_code, after.person, relocation, effective)]
                )
            else:
                await self._events(conn, [(before, after)], effective, register_change=kind)
            pairs.append((before, after))
            household = await self._household_of(conn, target)
        if seq:
            self._committed()
        return household, [a for _, a in pairs], seq

    async def change_domicile(self, req: municipal_pb2.ChangeDomicileRequest) -> ResidentState:
        """Change a resident's registered domicile (本籍) and its head (筆頭者);
        nothing goes upward."""
        domicile, head = check_domicile(req.domicile, req.domicile_head)
        effective = check_effective_date(
            req.effective_date, reason=R.CHANGE_REASON_RELOCATION
        ).isoformat()
        async with self.db.operation() as conn:
            resident = await self._resident(conn, req.resident_code)
            resident.require_active()
            check_dated_change(effective, resident)
            after = dataclasses.replace(
                resident,
                register=dataclasses.replace(
                    resident.register, domicile=domicile, domicile_head=head
                ),
            )
            if after == resident:
                raise InvalidArgument("domicile", "is the domicile already registered")
            await repo.update_resident(conn, resident.id, domicile=domicile, domicile_head=head)
            await self._events(
                conn,
                [(resident, after)],
                effective,
                register_change=municipal_pb2.REGISTER_CHANGE_DOMICILE,
            )
        return after

    async def export(self, page_size: int) -> AsyncIterator[list[ResidentState]]:
        """Every resident, page by page (one read each), in register order."""
        if page_size > MAX_PAGE:
            raise InvalidArgument("page_size", f"at most {MAX_PAGE}")
        page = page_size or 1000
        after = 0
        while True:
            async with self.db.read() as conn:
                residents = await repo.export_page(conn, after, page)
            if not residents:
                return
            yield residents
            after = residents[-1].id

    async def status(self) -> MunicipalStatus:
        """The outbox's progress, the free codes and the residents counted."""
        async with self.db.read() as conn:
            status = await self.outbox.status(conn)
            free = await repo.free_codes(conn)
            active, removed = await repo.resident_counts(conn)
        return MunicipalStatus(
            status.last_sequence, status.acknowledged_through, free, active, removed
        )

    async def disclose(
        self, request: provision_pb2.DiscloseRequest
    ) -> provision_pb2.DiscloseResponse:
        """For a resident of this municipality at the counter: the national record
        and who received it (asked through the prefecture), and the copies of
        their record this register answered (who asked, where, when). Only for a resident
        in this register (registered now, or removed from it): the national node
        then answers only if no other municipality registers them since."""
        if request.municipality_code and request.municipality_code != self.municipality:
            raise PermissionDenied(
                f"municipality_code: {self.municipality} may not ask for disclosures of "
                f"{request.municipality_code}",
                reason=Reason.FOREIGN_ORIGIN,
            )
        async with self.db.read() as conn:
            resident = await self._resident(conn, request.resident_code)
        try:
            response: provision_pb2.DiscloseResponse = await self._prefecture.Disclose(
                provision_pb2.DiscloseRequest(
                    resident_code=resident.resident_code,
                    municipality_code=self.municipality,
                    with_proofs=request.with_proofs,
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_upstream(exc, "prefecture node") from exc
        if self.copies is not None:
            response.copies.extend(await self.copies.disclosed(resident))
        return response
