"""The durable outbox a node pushes upward from (municipality → prefecture,
prefecture → national).

Entries are numbered 1, 2, 3 ... with no gaps, in the same transaction as the
change they announce. The receiver's acknowledgement advances
``acknowledged_through``; entries are kept after that (they are the node's own
record of what it announced, and the way to rewind if a receiver asks).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.db import one_of


@dataclass(frozen=True)
class OutboxTables:
    """A node's two outbox tables: the numbered entries and the one-row delivery state."""

    entries: Table
    state: Table


def define_outbox(metadata: MetaData) -> OutboxTables:
    """Add the outbox tables to a node's metadata."""
    entries = Table(
        "outbox",
        metadata,
        Column(
            "sequence",
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        Column("origin_code", String(6), nullable=False),
        Column("origin_sequence", BigInteger, nullable=False),
        Column("resident_code", String(11), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_outbox_origin", "origin_code", "origin_sequence", unique=True),
        Index("ix_outbox_resident", "resident_code"),
    )
    state = Table(
        "outbox_state",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("last_sequence", BigInteger, nullable=False),
        Column("acknowledged_through", BigInteger, nullable=False),
    )
    return OutboxTables(entries, state)


@dataclass(frozen=True)
class PendingEntry:
    """One entry to append: who it is about, where it came from, the bytes to send."""

    origin_code: str
    origin_sequence: int  # 0: this node is the origin; the outbox sequence is used
    resident_code: str
    payload: bytes


@dataclass(frozen=True)
class OutboxStatus:
    """How far the outbox has numbered its entries, and how far the receiver acknowledged."""

    last_sequence: int
    acknowledged_through: int

    @property
    def backlog(self) -> int:
        """Entries written but not yet acknowledged."""
        return self.last_sequence - self.acknowledged_through


class Outbox:
    """Queries on one node's outbox. Writers pass the connection of their transaction."""

    def __init__(self, tables: OutboxTables) -> None:
        self.tables = tables

    async def _ensure_state(self, conn: AsyncConnection) -> None:
        exists = await conn.scalar(
            select(self.tables.state.c.id).where(self.tables.state.c.id == 1)
        )
        if exists is None:
            await conn.execute(
                insert(self.tables.state).values(id=1, last_sequence=0, acknowledged_through=0)
            )

    async def reserve(self, conn: AsyncConnection, count: int) -> int:
        """Reserve ``count`` sequence numbers; returns the first. Call inside a write."""
        state = self.tables.state
        last = await conn.scalar(
            update(state)
            .where(state.c.id == 1)
            .values(last_sequence=state.c.last_sequence + count)
            .returning(state.c.last_sequence)
        )
        if last is None:
            await self._ensure_state(conn)
            return await self.reserve(conn, count)
        return int(last) - count + 1

    async def append(
        self, conn: AsyncConnection, first: int, entries: Sequence[PendingEntry]
    ) -> None:
        """Write entries numbered from ``first`` (obtained from :meth:`reserve`)."""
        if not entries:
            return
        await conn.execute(
            insert(self.tables.entries),
            [
                {
                    "sequence": first + i,
                    "origin_code": e.origin_code,
                    "origin_sequence": e.origin_sequence or first + i,
                    "resident_code": e.resident_code,
                    "payload": e.payload,
                }
                for i, e in enumerate(entries)
            ],
        )

    async def read_after(
        self, conn: AsyncConnection, after: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Entries with sequence > ``after``, in order, at most ``limit``."""
        t = self.tables.entries
        rows = await conn.execute(
            select(t.c.sequence, t.c.payload)
            .where(t.c.sequence > after)
            .order_by(t.c.sequence)
            .limit(limit)
        )
        return [(int(r[0]), bytes(r[1])) for r in rows]

    async def status(self, conn: AsyncConnection) -> OutboxStatus:
        """The last sequence written and the last acknowledged (both 0 before any entry)."""
        row = (
            await conn.execute(
                select(self.tables.state.c.last_sequence, self.tables.state.c.acknowledged_through)
            )
        ).first()
        if row is None:
            return OutboxStatus(0, 0)
        return OutboxStatus(int(row[0]), int(row[1]))

    async def written_at(self, conn: AsyncConnection, sequence: int) -> dt.datetime | None:
        """When entry ``sequence`` was written (UTC), or None if there is no such entry."""
        t = self.tables.entries
        value = await conn.scalar(select(t.c.created_at).where(t.c.sequence == sequence))
        if not isinstance(value, dt.datetime):
            return None
        # SQLite hands back CURRENT_TIMESTAMP without a zone; it is UTC.
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)

    async def acknowledge(self, conn: AsyncConnection, through: int) -> None:
        """Record the receiver's acknowledgement (never moves backwards)."""
        state = self.tables.state
        await self._ensure_state(conn)
        await conn.execute(
            update(state)
            .where(state.c.id == 1, state.c.acknowledged_through < through)
            .values(acknowledged_through=through)
        )

    async def rewind(self, conn: AsyncConnection, to_after: int) -> None:
        """Move the acknowledgement back so that delivery resumes after ``to_after``."""
        state = self.tables.state
        await self._ensure_state(conn)
        await conn.execute(
            update(state).where(state.c.id == 1).values(acknowledged_through=to_after)
        )

    async def locate(
        self, conn: AsyncConnection, origin_code: str, origin_sequence: int
    ) -> int | None:
        """The outbox sequence that carried (origin, origin_sequence), if any."""
        t = self.tables.entries
        value = await conn.scalar(
            select(t.c.sequence).where(
                t.c.origin_code == origin_code, t.c.origin_sequence == origin_sequence
            )
        )
        return None if value is None else int(value)

    async def payloads_for(
        self, conn: AsyncConnection, resident_codes: Sequence[str]
    ) -> list[bytes]:
        """Every entry about these residents, in order."""
        t = self.tables.entries
        rows = await conn.execute(
            select(t.c.payload)
            .where(one_of(conn, t.c.resident_code, resident_codes))
            .order_by(t.c.sequence)
        )
        return [bytes(p) for p in rows.scalars()]
