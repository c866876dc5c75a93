"""The tables of a relaying node and their SQL: the newest directory it verified
(every tier) and the answers it gave (a municipality, for exactly-once)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    delete,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection


def define_directory_table(metadata: MetaData) -> Table:
    """The newest verified directory a node holds, as signed (one row).

    At the national node ``fingerprint`` is the digest of the administered file
    (and the certificates it names) the directory was signed from.
    """
    return Table(
        "relay_directory",
        metadata,
        Column("serial", BigInteger, primary_key=True, autoincrement=False),
        Column("signed", LargeBinary, nullable=False),
        Column("fingerprint", LargeBinary, nullable=False),
        Column("stored_at", DateTime(timezone=True), nullable=False),
    )


def define_answer_table(metadata: MetaData) -> Table:
    """The answer a municipality gave to each relayed request: a request id seen again
    gets the same answer, and its handler does not run twice."""
    return Table(
        "relay_answers",
        metadata,
        Column("request_id", String(32), primary_key=True),
        Column("source", String(6), nullable=False),
        Column("kind", SmallInteger, nullable=False),
        Column("body_sha256", LargeBinary(32), nullable=False),
        Column("answer", LargeBinary, nullable=False),
        Column("answered_at", DateTime(timezone=True), nullable=False),
    )


@dataclass(frozen=True)
class HeldDirectory:
    """A stored directory: its serial, signed bytes and source fingerprint."""

    serial: int
    signed: bytes
    fingerprint: bytes


class DirectoryStore:
    """The SQL of :func:`define_directory_table`."""

    def __init__(self, table: Table) -> None:
        self.table = table

    async def newest(self, conn: AsyncConnection) -> HeldDirectory | None:
        """The directory held, if any."""
        t = self.table
        row = (
            await conn.execute(
                select(t.c.serial, t.c.signed, t.c.fingerprint).order_by(t.c.serial.desc()).limit(1)
            )
        ).first()
        return None if row is None else HeldDirectory(int(row[0]), bytes(row[1]), bytes(row[2]))

    async def keep(self, conn: AsyncConnection, held: HeldDirectory, at: dt.datetime) -> None:
        """Keep ``held`` as the directory held, replacing the older ones."""
        t = self.table
        await conn.execute(delete(t).where(t.c.serial <= held.serial))
        await conn.execute(
            insert(t).values(
                serial=held.serial, signed=held.signed, fingerprint=held.fingerprint, stored_at=at
            )
        )


@dataclass(frozen=True)
class GivenAnswer:
    """An answer given to a request: whom, of which kind and body, and its bytes."""

    source: str
    kind: int
    body_sha256: bytes
    answer: bytes


class AnswerStore:
    """The SQL of :func:`define_answer_table`."""

    def __init__(self, table: Table) -> None:
        self.table = table

    async def given(self, conn: AsyncConnection, request_id: str) -> GivenAnswer | None:
        """The answer already given to ``request_id``, if any."""
        t = self.table
        row = (
            await conn.execute(
                select(t.c.source, t.c.kind, t.c.body_sha256, t.c.answer).where(
                    t.c.request_id == request_id
                )
            )
        ).first()
        if row is None:
            return None
        return GivenAnswer(str(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]))

    async def give(
        self, conn: AsyncConnection, request_id: str, answer: GivenAnswer, at: dt.datetime
    ) -> None:
        """Record the answer to ``request_id``."""
        await conn.execute(
            insert(self.table).values(
                request_id=request_id,
                source=answer.source,
                kind=answer.kind,
                body_sha256=answer.body_sha256,
                answer=answer.answer,
                answered_at=at,
            )
        )
