"""Use cases of a municipal node, the register's operations: each checks its
input, changes the register and writes its notification in one transaction,
then wakes the pusher. Resident codes come from the pool the prefecture
handed down (:class:`services.municipal.pool.PoolKeeper`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.codes import check_resident_code
from jukinet.db import Database
from jukinet.delivery.outbox import Outbox, PendingEntry
from jukinet.delivery.pusher import Pusher
from jukinet.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_upstream,
)
from jukinet.metrics import MunicipalMetrics
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, municipal_pb2, prefecture_pb2_grpc, provision_pb2
from jukinet.validation import (
    check_address,
    check_birth_date,
    check_effective_date,
    check_kana,
    check_known_local_government,
    check_name,
)
from jukinet.vocabulary import Person, person_values
from services.municipal import repository as repo
from services.municipal.logic import (
    ACTIVE,
    REMOVED,
    Change,
    ResidentState,
    build_notification,
    check_amended_birth,
    check_dated_change,
    check_not_before_birth,
    check_person,
    check_return,
    move_in_reason,
    removal_reason,
)
from services.municipal.pool import PoolKeeper

log = logging.getLogger("jukinet.municipal")

R = common_pb2
MAX_IMPORT_BATCH = 10_000
MAX_PAGE = 5_000


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_household() -> str:
    return secrets.token_hex(8)


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
    ) -> None:
        self.db = db
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
        now = _now()
        entries = []
        for i, change in enumerate(changes):
            n = build_notification(self.municipality, first + i, change, now)
            entries.append(
                PendingEntry(self.municipality, 0, change.resident_code, n.SerializeToString())
            )
        await self.outbox.append(conn, first, entries)
        self.metrics.notifications_written.inc(len(changes))
        return first + len(changes) - 1

    def _committed(self, codes_used: int = 0) -> None:
        self._pusher.wake()
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

    # -- creations -----------------------------------------------------------

    async def register_birth(
        self, req: municipal_pb2.RegisterBirthRequest
    ) -> tuple[ResidentState, int]:
        """Register a birth (出生) with a fresh code from the pool."""
        person = check_person(req.person, self.municipality)
        await self.pool.ensure(1)
        async with self.db.write() as conn:
            household = await self._household(conn, req.household_id)
            code = await self._take_code(conn)
            resident = await repo.insert_resident(
                conn, code, person, household, person.birth_date, R.CHANGE_REASON_BIRTH
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
        effective = check_effective_date(req.effective_date).isoformat()
        check_not_before_birth(effective, person, "effective_date")
        await self.pool.ensure(1)
        async with self.db.write() as conn:
            household = await self._household(conn, req.household_id)
            code = await self._take_code(conn)
            reason = R.CHANGE_REASON_EX_OFFICIO_ENTRY
            resident = await repo.insert_resident(conn, code, person, household, effective, reason)
            seq = await self._announce(conn, [Change(code, person, reason, effective)])
        self._committed(codes_used=1)
        return resident, seq

    async def move_in(self, req: municipal_pb2.MoveInRequest) -> tuple[ResidentState, int]:
        """Register a move-in (転入) from another municipality or from abroad."""
        person = check_person(req.person, self.municipality)
        reason = move_in_reason(req.origin)
        effective = check_effective_date(req.effective_date).isoformat()
        check_not_before_birth(effective, person, "effective_date")
        domestic = req.origin != municipal_pb2.MOVE_IN_ORIGIN_ABROAD
        if domestic:
            if not req.resident_code:
                raise InvalidArgument(
                    "resident_code", "required for a move from another municipality"
                )
            check_known_local_government(
                req.previous_local_government_code, "previous_local_government_code"
            )
            if req.previous_local_government_code == self.municipality:
                raise InvalidArgument(
                    "previous_local_government_code", "a move within the municipality is Relocate"
                )
        elif req.previous_local_government_code:
            raise InvalidArgument("previous_local_government_code", "not for a move from abroad")
        if req.resident_code:
            check_resident_code(req.resident_code)
        else:
            await self.pool.ensure(1)
        async with self.db.write() as conn:
            household = await self._household(conn, req.household_id)
            code = req.resident_code or await self._take_code(conn)
            existing = await repo.resident_by_code(conn, code) if req.resident_code else None
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
                )
                resident = ResidentState(
                    existing.id, code, person, household, ACTIVE, effective, "", reason
                )
            else:
                resident = await repo.insert_resident(
                    conn, code, person, household, effective, reason
                )
            seq = await self._announce(conn, [Change(code, person, reason, effective)])
        self._committed(codes_used=0 if req.resident_code else 1)
        return resident, seq

    # -- amendments ----------------------------------------------------------

    async def relocate(self, req: municipal_pb2.RelocateRequest) -> tuple[list[ResidentState], int]:
        """Move a resident (or their whole household) to a new address here (転居)."""
        address = check_address(req.new_address, "new_address", self.municipality)
        effective = check_effective_date(req.effective_date).isoformat()
        async with self.db.write() as conn:
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
            seq = await self._announce(conn, changes)
        self._committed()
        return updated, seq

    async def change_name(self, req: municipal_pb2.ChangeNameRequest) -> tuple[ResidentState, int]:
        """Change a resident's name, reading or former surname."""
        name = check_name(req.name, "name")
        kana = check_kana(req.name_kana, "name_kana")
        former = check_name(req.former_surname, "former_surname", required=False)
        effective = check_effective_date(req.effective_date).isoformat()
        reason = R.CHANGE_REASON_NAME_CHANGE
        async with self.db.write() as conn:
            resident = await self._resident(conn, req.resident_code)
            resident.require_active()
            check_dated_change(effective, resident)
            person = dataclasses.replace(
                resident.person, name=name, name_kana=kana, former_surname=former
            )
            await repo.update_resident(
                conn, resident.id, **person_values(person), last_reason=reason
            )
            seq = await self._announce(
                conn, [Change(resident.resident_code, person, reason, effective)]
            )
        self._committed()
        return dataclasses.replace(resident, person=person, last_reason=reason), seq

    async def amend(self, req: municipal_pb2.AmendRequest) -> tuple[ResidentState, int]:
        """Correct a resident's details ex officio (職権修正)."""
        person = check_person(req.person, self.municipality)
        effective = check_effective_date(req.effective_date).isoformat()
        reason = R.CHANGE_REASON_EX_OFFICIO_AMENDMENT
        async with self.db.write() as conn:
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
            seq = await self._announce(
                conn, [Change(resident.resident_code, person, reason, effective)]
            )
        self._committed()
        amended = dataclasses.replace(
            resident, person=person, registered_on=registered, last_reason=reason
        )
        return amended, seq

    async def change_code(
        self, req: municipal_pb2.ChangeResidentCodeRequest
    ) -> tuple[ResidentState, str, int]:
        """Give a resident a new code from the pool (住民票コード変更)."""
        effective = check_effective_date(req.effective_date).isoformat()
        reason = R.CHANGE_REASON_CODE_CHANGE
        await self.pool.ensure(1)
        async with self.db.write() as conn:
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

    async def _remove(
        self,
        code: str,
        reason: common_pb2.ChangeReason.ValueType,
        effective: str,
        field: str = "effective_date",
    ) -> tuple[ResidentState, int]:
        async with self.db.write() as conn:
            resident = await self._resident(conn, code)
            resident.require_active()
            check_dated_change(effective, resident, field)
            await repo.update_resident(
                conn, resident.id, status=REMOVED, removed_on=effective, last_reason=reason
            )
            seq = await self._announce(
                conn, [Change(resident.resident_code, resident.person, reason, effective)]
            )
        self._committed()
        return dataclasses.replace(
            resident, status=REMOVED, removed_on=effective, last_reason=reason
        ), seq

    async def move_out(self, req: municipal_pb2.MoveOutRequest) -> tuple[ResidentState, int]:
        """Remove a resident who moves out (転出) or abroad."""
        effective = check_effective_date(req.effective_date).isoformat()
        if req.abroad:
            if req.destination_local_government_code:
                raise InvalidArgument("destination_local_government_code", "not for a move abroad")
            reason = R.CHANGE_REASON_MOVE_ABROAD
        else:
            check_known_local_government(
                req.destination_local_government_code, "destination_local_government_code"
            )
            if req.destination_local_government_code == self.municipality:
                raise InvalidArgument(
                    "destination_local_government_code",
                    "a move within the municipality is Relocate",
                )
            reason = R.CHANGE_REASON_MOVE_OUT
        return await self._remove(req.resident_code, reason, effective)

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
        effective = check_effective_date(req.effective_date).isoformat()
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
        for row in rows:
            try:
                if not row.source_id or len(row.source_id) > 64:
                    raise InvalidArgument("source_id", "must be 1 to 64 characters")
                if row.source_id in seen:
                    raise InvalidArgument("source_id", "appears twice in the batch")
                person = check_person(row.person, self.municipality)
                registered = check_effective_date(
                    row.registered_on or person.birth_date, "registered_on"
                ).isoformat()
                check_not_before_birth(registered, person, "registered_on")
                if row.household_id and len(row.household_id) > 32:
                    raise InvalidArgument("household_id", "at most 32 characters")
            except InvalidArgument as exc:
                rejected.append(
                    municipal_pb2.RejectedRow(
                        line=row.line, source_id=row.source_id, field=exc.field, reason=exc.problem
                    )
                )
                continue
            seen.add(row.source_id)
            good.append((row, person, registered))
        if good:
            await self.pool.ensure(len(good))
        async with self.db.write() as conn:
            present = await repo.existing_source_ids(conn, [r.source_id for r, _, _ in good])
            todo = [g for g in good if g[0].source_id not in present]
            codes = await repo.take_codes(conn, len(todo))
            if len(codes) < len(todo):
                raise Unavailable("the resident-code pool ran short; retry the batch")
            reason = R.CHANGE_REASON_EX_OFFICIO_ENTRY
            await repo.insert_residents(
                conn,
                [
                    {
                        "resident_code": code,
                        "source_id": row.source_id,
                        **person_values(person),
                        "household_id": row.household_id or _new_household(),
                        "status": ACTIVE,
                        "registered_on": registered,
                        "removed_on": "",
                        "last_reason": reason,
                    }
                    for code, (row, person, registered) in zip(codes, todo, strict=True)
                ],
            )
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

    # -- reads ---------------------------------------------------------------

    async def get(self, code: str) -> tuple[ResidentState, list[common_pb2.Notification]]:
        """One resident and every notification written about them (all their codes)."""
        async with self.db.read() as conn:
            resident = await self._resident(conn, code)
            codes = await repo.codes_of(conn, resident)
            payloads = await self.outbox.payloads_for(conn, codes)
        return resident, [common_pb2.Notification.FromString(p) for p in payloads]

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
        and who received it (asked through the prefecture). Only for a resident
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
                    resident_code=resident.resident_code, municipality_code=self.municipality
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_upstream(exc, "prefecture node") from exc
        return response
