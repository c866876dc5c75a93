"""The identity records an upper tier holds, their history, and the delivery
cursors: storage shared by the prefecture and the national node.

:meth:`HoldingStore.apply_batch` is the receiving half of delivery: in one
transaction it skips what was already applied, refuses a gap, checks codes
against the pools, folds each notification into the records
(:mod:`jukinet.delivery.rules`), appends history and advances the cursors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.db import Database, one_of
from jukinet.delivery.rules import Held, decide
from jukinet.errors import InvalidArgument, NotFound, SequenceGap
from jukinet.names import fold_kana, fold_name
from jukinet.v1 import common_pb2, delivery_pb2
from jukinet.validation import NEW_CODE_REASONS


@dataclass(frozen=True)
class HoldingTables:
    identities: Table
    history: Table
    cursors: Table
    issued_codes: Table


def define_holdings(metadata: MetaData) -> HoldingTables:
    """Add the holding tables to a node's metadata."""
    identities = Table(
        "identities",
        metadata,
        Column("resident_code", String(11), primary_key=True),
        Column("local_government_code", String(6), nullable=False),
        Column("name", String(100), nullable=False),
        Column("name_kana", String(100), nullable=False),
        Column("former_surname", String(100), nullable=False),
        Column("alias", String(100), nullable=False),
        Column("birth_date", String(10), nullable=False),
        Column("sex", SmallInteger, nullable=False),
        Column("address", String(200), nullable=False),
        Column("status", SmallInteger, nullable=False),
        Column("replaced_by", String(11), nullable=False),
        Column("registered_since", String(10), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        # Folded keys for search by the four basic items (jukinet.names); the
        # name itself keeps its original characters.
        Column("name_key", String(100), nullable=False, server_default=""),
        Column("kana_key", String(100), nullable=False, server_default=""),
        Index("ix_identities_lg", "local_government_code"),
        Index("ix_identities_name_key", "name_key", "birth_date"),
        Index("ix_identities_kana_key", "kana_key", "birth_date"),
        Index("ix_identities_replaced_by", "replaced_by"),
    )
    history = Table(
        "identity_history",
        metadata,
        Column(
            "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        Column("resident_code", String(11), nullable=False),
        Column("origin_code", String(6), nullable=False),
        Column("origin_sequence", BigInteger, nullable=False),
        Column("kind", SmallInteger, nullable=False),
        Column("reason", SmallInteger, nullable=False),
        Column("effective_date", String(10), nullable=False),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False),
        Column("changed_current", Boolean, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        # The database itself refuses a notification applied twice.
        UniqueConstraint("origin_code", "origin_sequence", name="uq_history_origin"),
        Index("ix_history_resident", "resident_code"),
    )
    cursors = Table(
        "origin_cursors",
        metadata,
        Column("origin_code", String(6), primary_key=True),
        Column("last_sequence", BigInteger, nullable=False),
    )
    issued_codes = Table(
        "issued_codes",
        metadata,
        Column("resident_code", String(11), primary_key=True),
        Column("municipality_code", String(6), nullable=False),
        Column("request_id", String(64), nullable=False),
        Column("issued_at", DateTime(timezone=True), nullable=False),
        Index("ix_issued_request", "request_id"),
    )
    return HoldingTables(identities, history, cursors, issued_codes)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _held_row(h: Held, at: dt.datetime) -> dict[str, object]:
    return {
        "resident_code": h.resident_code,
        "local_government_code": h.local_government_code,
        "name": h.name,
        "name_kana": h.name_kana,
        "former_surname": h.former_surname,
        "alias": h.alias,
        "birth_date": h.birth_date,
        "sex": h.sex,
        "address": h.address,
        "status": h.status,
        "replaced_by": h.replaced_by,
        "registered_since": h.registered_since,
        "updated_at": at,
        "name_key": fold_name(h.name),
        "kana_key": fold_kana(h.name_kana),
    }


HELD_FIELDS = tuple(f for f in Held.__dataclass_fields__)


@dataclass(frozen=True)
class BatchResult:
    applied: int
    duplicates: int
    applied_notifications: tuple[tuple[common_pb2.Notification, bytes], ...]
    lags: tuple[float, ...]


class HoldingStore:
    """Reads and writes of the holding tables."""

    def __init__(self, db: Database, tables: HoldingTables) -> None:
        self.db = db
        self.t = tables

    async def load(self, conn: AsyncConnection, codes: set[str]) -> dict[str, Held]:
        """The held records of these codes (those that exist)."""
        t = self.t.identities
        out: dict[str, Held] = {}
        code_list = sorted(codes)
        for i in range(0, len(code_list), 500):
            rows = await conn.execute(
                select(*(t.c[f] for f in HELD_FIELDS)).where(
                    one_of(conn, t.c.resident_code, code_list[i : i + 500])
                )
            )
            for row in rows:
                held = Held(*row)
                out[held.resident_code] = held
        return out

    async def _pool_owners(self, conn: AsyncConnection, codes: set[str]) -> dict[str, str]:
        t = self.t.issued_codes
        out: dict[str, str] = {}
        code_list = sorted(codes)
        for i in range(0, len(code_list), 500):
            rows = await conn.execute(
                select(t.c.resident_code, t.c.municipality_code).where(
                    one_of(conn, t.c.resident_code, code_list[i : i + 500])
                )
            )
            out.update({r[0]: r[1] for r in rows})
        return out

    async def _born(self, conn: AsyncConnection, codes: set[str]) -> set[str]:
        """Codes already created with a fresh code (birth, entry, code change)."""
        h = self.t.history
        out: set[str] = set()
        code_list = sorted(codes)
        for i in range(0, len(code_list), 500):
            rows = await conn.execute(
                select(h.c.resident_code).where(
                    one_of(conn, h.c.resident_code, code_list[i : i + 500]),
                    h.c.reason.in_(sorted(NEW_CODE_REASONS)),
                )
            )
            out.update(rows.scalars())
        return out

    async def apply_batch(
        self,
        conn: AsyncConnection,
        entries: Sequence[common_pb2.Notification],
    ) -> BatchResult:
        """Apply validated notifications in order, inside the caller's write transaction.

        A fresh code (birth, ex-officio entry, code change) must come from the
        origin's own pool; the prefecture and the national node both check it,
        so a notification the prefecture accepted is never refused above it
        (which would stall the relay of every municipality behind it).
        """
        cursors_t = self.t.cursors
        origins = sorted({n.origin_code for n in entries})
        rows = await conn.execute(
            select(cursors_t.c.origin_code, cursors_t.c.last_sequence).where(
                one_of(conn, cursors_t.c.origin_code, origins)
            )
        )
        cursor = {r[0]: int(r[1]) for r in rows}
        known_origins = set(cursor)
        fresh: list[common_pb2.Notification] = []
        duplicates = 0
        for n in entries:
            last = cursor.get(n.origin_code, 0)
            if n.sequence <= last:
                duplicates += 1
            elif n.sequence == last + 1:
                cursor[n.origin_code] = n.sequence
                fresh.append(n)
            else:
                raise SequenceGap(n.origin_code, last + 1, n.sequence)
        if not fresh:
            return BatchResult(0, duplicates, (), ())

        codes = {n.record.resident_code for n in fresh} | {
            n.previous_resident_code for n in fresh if n.previous_resident_code
        }
        states = await self.load(conn, codes)
        existed = set(states)
        owners = await self._pool_owners(conn, codes)
        born = await self._born(
            conn, {n.record.resident_code for n in fresh if n.reason in NEW_CODE_REASONS}
        )
        now = _now()
        changed: dict[str, Held] = {}
        history: list[dict[str, object]] = []
        applied: list[tuple[common_pb2.Notification, bytes]] = []
        lags: list[float] = []
        for i, n in enumerate(fresh):
            code = n.record.resident_code
            field = f"entries[{i}].notification.record.resident_code"
            owner = owners.get(code)
            if n.reason in NEW_CODE_REASONS:
                if owner != n.origin_code:
                    raise InvalidArgument(field, f"{code} is not in the pool of {n.origin_code}")
                # A fresh code is given out once. The record may exist already
                # when another municipality's move-in overtook this creation
                # (order holds per origin only): refusing it would stall the
                # stream for ever. Only a second fresh-code creation is refused.
                if code in born:
                    raise InvalidArgument(field, f"{code} is already in use")
                born.add(code)
            decision = decide(states, n)
            for held in decision.states:
                states[held.resident_code] = held
                changed[held.resident_code] = held
            payload = n.SerializeToString()
            recorded = dt.datetime.fromisoformat(n.recorded_at)
            history.append(
                {
                    "resident_code": code,
                    "origin_code": n.origin_code,
                    "origin_sequence": n.sequence,
                    "kind": n.kind,
                    "reason": n.reason,
                    "effective_date": n.effective_date,
                    "recorded_at": recorded,
                    "applied_at": now,
                    "changed_current": decision.changed_current,
                    "payload": payload,
                }
            )
            applied.append((n, payload))
            lags.append((now - recorded).total_seconds())

        await self._store(conn, changed, existed, now)
        await conn.execute(insert(self.t.history), history)
        updates = [{"o": o, "s": cursor[o]} for o in origins if o in known_origins and o in cursor]
        inserts = [
            {"origin_code": o, "last_sequence": cursor[o]}
            for o in origins
            if o not in known_origins and o in cursor
        ]
        if updates:
            await conn.execute(
                update(cursors_t)
                .where(cursors_t.c.origin_code == bindparam("o"))
                .values(last_sequence=bindparam("s")),
                updates,
            )
        if inserts:
            await conn.execute(insert(cursors_t), inserts)
        return BatchResult(len(fresh), duplicates, tuple(applied), tuple(lags))

    async def _store(
        self, conn: AsyncConnection, changed: dict[str, Held], existed: set[str], now: dt.datetime
    ) -> None:
        t = self.t.identities
        new_rows = [_held_row(h, now) for c, h in changed.items() if c not in existed]
        upd_rows = [
            {**{f"v_{k}": v for k, v in _held_row(h, now).items()}, "k": c}
            for c, h in changed.items()
            if c in existed
        ]
        if new_rows:
            await conn.execute(insert(t), new_rows)
        if upd_rows:
            values: dict[str, Any] = {col: bindparam(f"v_{col}") for col in _held_row_columns()}
            await conn.execute(
                update(t).where(t.c.resident_code == bindparam("k")).values(**values), upd_rows
            )

    async def record_issued(
        self, conn: AsyncConnection, codes: Sequence[str], municipality: str, request_id: str
    ) -> None:
        """Remember codes handed to a municipality (the pool check relies on it)."""
        if not codes:
            return
        now = _now()
        await conn.execute(
            insert(self.t.issued_codes),
            [
                {
                    "resident_code": c,
                    "municipality_code": municipality,
                    "request_id": request_id,
                    "issued_at": now,
                }
                for c in codes
            ],
        )

    async def issued_for_request(
        self, conn: AsyncConnection, request_id: str
    ) -> tuple[str, list[str]] | None:
        """The municipality and codes of an earlier pool request with this id."""
        t = self.t.issued_codes
        rows = (
            await conn.execute(
                select(t.c.resident_code, t.c.municipality_code)
                .where(t.c.request_id == request_id)
                .order_by(t.c.resident_code)
            )
        ).all()
        if not rows:
            return None
        return rows[0][1], [r[0] for r in rows]

    async def existing_codes(self, conn: AsyncConnection, codes: Sequence[str]) -> set[str]:
        t = self.t.issued_codes
        rows = await conn.execute(
            select(t.c.resident_code).where(one_of(conn, t.c.resident_code, codes))
        )
        return set(rows.scalars())

    # -- reads -------------------------------------------------------------

    async def chain(self, conn: AsyncConnection, resident_code: str) -> set[str]:
        """Every code of the person who has (or had) ``resident_code``: code changes
        are walked both ways, so an old code shows the whole life."""
        t = self.t.identities
        chain = {resident_code}
        frontier = {resident_code}
        while frontier:
            rows = await conn.execute(
                select(t.c.resident_code, t.c.replaced_by).where(
                    or_(
                        one_of(conn, t.c.resident_code, sorted(frontier)),
                        one_of(conn, t.c.replaced_by, sorted(frontier)),
                    )
                )
            )
            found = set()
            for code, replaced_by in rows:
                found.add(code)
                if replaced_by:
                    found.add(replaced_by)
            frontier = found - chain
            chain |= found
        return chain

    async def get_identity(self, resident_code: str) -> delivery_pb2.GetIdentityResponse:
        """The record as held now, with the history of every code it has had."""
        t, h = self.t.identities, self.t.history
        async with self.db.read() as conn:
            states = await self.load(conn, {resident_code})
            if resident_code not in states:
                raise NotFound(f"no identity record for {resident_code}")
            chain = await self.chain(conn, resident_code)
            history_rows = await conn.execute(
                select(h.c.payload, h.c.applied_at, h.c.changed_current)
                .where(one_of(conn, h.c.resident_code, sorted(chain)))
                .order_by(h.c.id)
            )
            history = [
                delivery_pb2.HistoryEntry(
                    notification=common_pb2.Notification.FromString(payload),
                    applied_at=_iso(applied_at),
                    changed_current=bool(changed_current),
                )
                for payload, applied_at, changed_current in history_rows
            ]
            updated = await conn.scalar(
                select(t.c.updated_at).where(t.c.resident_code == resident_code)
            )
        held = states[resident_code]
        return delivery_pb2.GetIdentityResponse(identity=_state(held, updated), history=history)

    async def export(
        self, municipality: str, page_size: int
    ) -> AsyncIterator[list[delivery_pb2.IdentityState]]:
        """Every held record (of one municipality, if given), in pages, ordered by code."""
        t = self.t.identities
        after = ""
        while True:
            query = select(*(t.c[f] for f in HELD_FIELDS), t.c.updated_at).where(
                t.c.resident_code > after
            )
            if municipality:
                query = query.where(t.c.local_government_code == municipality)
            async with self.db.read() as conn:
                rows = (
                    await conn.execute(query.order_by(t.c.resident_code).limit(page_size))
                ).all()
            if not rows:
                return
            yield [_state(Held(*r[:-1]), r[-1]) for r in rows]
            after = rows[-1][0]

    async def delivery_status(self, conn: AsyncConnection) -> tuple[list[tuple[str, int]], int]:
        c = self.t.cursors
        rows = await conn.execute(
            select(c.c.origin_code, c.c.last_sequence).order_by(c.c.origin_code)
        )
        held = await conn.scalar(select(func.count()).select_from(self.t.identities))
        return [(r[0], int(r[1])) for r in rows], int(held or 0)


def _held_row_columns() -> tuple[str, ...]:
    return (*HELD_FIELDS, "updated_at", "name_key", "kana_key")


def _iso(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def _state(held: Held, updated: dt.datetime | None) -> delivery_pb2.IdentityState:
    return delivery_pb2.IdentityState(
        record=held.to_record(),
        status=held.status,  # type: ignore[arg-type]
        replaced_by=held.replaced_by,
        updated_at=_iso(updated),
    )
