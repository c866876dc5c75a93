"""The operation log's SQL: entries, the append frontier, signed heads, witnessed heads.

:class:`OperationLog` appends inside the caller's transaction, so an
operation and its entry commit together; a refused or failed operation's
entry is written in a transaction of its own after the rollback. Two appends
never share an index: the frontier row is read ``FOR UPDATE`` (PostgreSQL
locks it until commit; SQLite has one writer at a time), updated only from
the size it was read at, and the entry's index is the table's primary key.

An append costs two statements, not three: the log keeps the frontier it
last wrote in memory and updates the row only where it still holds exactly
that size and those hashes (which takes the row lock, as ``FOR UPDATE``
would). A frontier that is no longer there (a rolled-back transaction,
another writer) updates nothing, and the append reads the row ``FOR
UPDATE`` and tries again, so what is cached is never trusted.

Proofs are computed from the stored leaf hashes (one column read, O(n)
hashing); the frontier makes the current root O(log n).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
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
    Text,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.oplog import entry as entries
from jukinet.oplog import merkle, note
from jukinet.oplog.entry import Entry, Operation
from jukinet.oplog.merkle import Frontier
from jukinet.oplog.verify import Row, unix_seconds, witness

_STATE_ID = 1


class LogError(RuntimeError):
    """The log's own tables do not allow the operation (a lost race, a missing head)."""


@dataclass(frozen=True)
class OplogTables:
    """The operation log's tables in a node's metadata."""

    entries: Table
    state: Table
    heads: Table
    cosignatures: Table
    witnessed: Table


def define_oplog_tables(metadata: MetaData) -> OplogTables:
    """Add the operation log's tables to a node's metadata."""
    entries_t = Table(
        "oplog_entries",
        metadata,
        Column("idx", BigInteger, primary_key=True, autoincrement=False),
        Column("recorded_us", BigInteger, nullable=False),
        Column("operator", Text, nullable=False),
        Column("terminal", Text, nullable=False),
        Column("operation", Text, nullable=False),
        # Comma-separated: a resident code is digits only.
        Column("resident_codes", Text, nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("reason", Text, nullable=False),
        Column("prev_root", LargeBinary, nullable=False),
        Column("entry", LargeBinary, nullable=False),
        Column("leaf_hash", LargeBinary, nullable=False),
    )
    state = Table(
        "oplog_state",
        metadata,
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        Column("size", BigInteger, nullable=False),
        Column("frontier", LargeBinary, nullable=False),
    )
    heads = Table(
        "oplog_heads",
        metadata,
        Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
        Column("root", LargeBinary, nullable=False),
        Column("note", Text, nullable=False),
        Column("signed_at", DateTime(timezone=True), nullable=False),
    )
    cosignatures = Table(
        "oplog_cosignatures",
        metadata,
        Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
        Column("cosigner", Text, primary_key=True),
        Column("line", Text, nullable=False),
    )
    witnessed = Table(
        "oplog_witnessed",
        metadata,
        Column("origin", Text, primary_key=True),
        Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
        # The checkpoint as received, with the cosignature this node returned.
        Column("note", Text, nullable=False),
        # The consistency proof from the head held before it (hashes, concatenated).
        Column("proof", LargeBinary, nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
    )
    return OplogTables(entries_t, state, heads, cosignatures, witnessed)


class OperationLog:
    """One node's append-only operation log and the heads it signs."""

    def __init__(self, tables: OplogTables, origin: str, signer: note.Signer) -> None:
        note.check_key_name(origin)
        if signer.name != origin or signer.sig_type != note.ED25519:
            raise ValueError("the log key is an Ed25519 key named as the log's origin")
        self.tables = tables
        self.origin = origin
        self._signer = signer
        self._last: Frontier | None = None
        state = tables.state.c
        self._advance = (
            update(tables.state)
            .where(
                state.id == _STATE_ID,
                state.size == bindparam("old_size"),
                state.frontier == bindparam("old_frontier"),
            )
            .values(size=bindparam("size"), frontier=bindparam("frontier"))
        )

    @property
    def verifier(self) -> note.Verifier:
        """The public key that checks this log's heads."""
        return self._signer.verifier

    async def append(self, conn: AsyncConnection, operation: Operation) -> Entry:
        """Log ``operation`` as the next entry, inside the caller's transaction."""
        return (await self.append_many(conn, [operation]))[0]

    async def append_many(
        self, conn: AsyncConnection, operations: Sequence[Operation]
    ) -> list[Entry]:
        """Log ``operations`` as the next entries, in order, inside the caller's transaction."""
        if not operations:
            return []
        cached = self._last
        if cached is not None:
            made = await self._append_after(conn, cached, operations)
            if made is not None:
                return made
        frontier = await self._locked_frontier(conn)
        made = await self._append_after(conn, frontier, operations)
        if made is None:
            raise LogError(f"another append took index {frontier.size} first")
        return made

    async def _append_after(
        self, conn: AsyncConnection, frontier: Frontier, operations: Sequence[Operation]
    ) -> list[Entry] | None:
        """Append after ``frontier`` if the state row holds exactly it; None if not."""
        made, rows, grown = entry_rows(frontier, operations)
        result = await conn.execute(
            self._advance,
            {
                "old_size": frontier.size,
                "old_frontier": frontier.to_bytes(),
                "size": grown.size,
                "frontier": grown.to_bytes(),
            },
        )
        if result.rowcount != 1:
            self._last = None
            return None
        await conn.execute(insert(self.tables.entries), rows)
        # Written, not yet committed: the next append checks it against the row.
        self._last = grown
        return made

    async def _locked_frontier(self, conn: AsyncConnection) -> Frontier:
        t = self.tables.state
        query = select(t.c.size, t.c.frontier).where(t.c.id == _STATE_ID).with_for_update()
        row = (await conn.execute(query)).one_or_none()
        if row is None:
            await conn.execute(insert(t).values(id=_STATE_ID, size=0, frontier=b""))
            return Frontier()
        return Frontier.from_bytes(row.size, row.frontier)

    async def frontier(self, conn: AsyncConnection) -> Frontier:
        """The frontier of the log as it stands (no lock taken)."""
        t = self.tables.state
        row = (
            await conn.execute(select(t.c.size, t.c.frontier).where(t.c.id == _STATE_ID))
        ).one_or_none()
        return Frontier() if row is None else Frontier.from_bytes(row.size, row.frontier)

    async def sign_head(self, conn: AsyncConnection, now: dt.datetime) -> note.Note:
        """The signed checkpoint of the current size, kept in ``oplog_heads``.

        A size already signed keeps its head: the checkpoint has no time, so
        signing it again would give the same note.
        """
        frontier = await self.frontier(conn)
        held = await self.head(conn, frontier.size)
        if held is not None:
            return held
        checkpoint = note.Checkpoint(self.origin, frontier.size, frontier.root())
        signed = note.sign_note(checkpoint.text(), self._signer)
        await conn.execute(
            insert(self.tables.heads).values(
                tree_size=frontier.size, root=checkpoint.root, note=signed.encode(), signed_at=now
            )
        )
        return signed

    async def head(self, conn: AsyncConnection, size: int) -> note.Note | None:
        """The head signed at ``size`` with the cosignatures received for it, if any."""
        t = self.tables.heads
        text = (
            await conn.execute(select(t.c.note).where(t.c.tree_size == size))
        ).scalar_one_or_none()
        if text is None:
            return None
        signed = note.parse_note(text)
        c = self.tables.cosignatures
        lines = await conn.execute(
            select(c.c.line).where(c.c.tree_size == size).order_by(c.c.cosigner)
        )
        for (line,) in lines:
            signed = signed.with_signature(note.parse_note(signed.text + "\n" + line).signatures[0])
        return signed

    async def heads(self, conn: AsyncConnection) -> list[note.Note]:
        """Every head this node signed, smallest size first, with their cosignatures."""
        t = self.tables.heads
        sizes = (await conn.execute(select(t.c.tree_size).order_by(t.c.tree_size))).scalars()
        found = [await self.head(conn, size) for size in list(sizes)]
        return [h for h in found if h is not None]

    async def record_cosignature(
        self, conn: AsyncConnection, cosigned: note.Note, cosigner: note.Verifier
    ) -> None:
        """Keep ``cosigner``'s cosignature of one of this node's heads, once verified."""
        checkpoint = note.parse_checkpoint(cosigned.text)
        held = await self.head(conn, checkpoint.size)
        if held is None or held.text != cosigned.text:
            raise LogError(f"this log signed no head {checkpoint.size} with that root")
        note.verify_cosignature(cosigned, cosigner)
        sig = cosigned.signature_of(cosigner)
        assert sig is not None  # verify_cosignature found it
        if held.signature_of(cosigner) is None:
            await conn.execute(
                insert(self.tables.cosignatures).values(
                    tree_size=checkpoint.size, cosigner=cosigner.name, line=sig.line()
                )
            )

    async def leaf_hashes(self, conn: AsyncConnection, size: int) -> list[bytes]:
        """The stored leaf hashes of entries 0 to ``size`` - 1."""
        t = self.tables.entries
        query = select(t.c.leaf_hash).where(t.c.idx < size).order_by(t.c.idx)
        leaves = [bytes(h) for h in (await conn.execute(query)).scalars()]
        if len(leaves) != size:
            raise LogError(f"the log holds {len(leaves)} of the {size} entries asked for")
        return leaves

    async def witnessed_head(self, conn: AsyncConnection) -> note.Note | None:
        """The newest head that came back cosigned, with its cosignatures; None if none."""
        c = self.tables.cosignatures.c
        size = (await conn.execute(select(func.max(c.tree_size)))).scalar()
        return None if size is None else await self.head(conn, int(size))

    async def entries_at(self, conn: AsyncConnection, indexes: Sequence[int]) -> dict[int, bytes]:
        """The logged bytes of the entries of these indexes (those that exist)."""
        t = self.tables.entries
        found: dict[int, bytes] = {}
        wanted = sorted(set(indexes))
        for i in range(0, len(wanted), 500):
            query = select(t.c.idx, t.c.entry).where(t.c.idx.in_(wanted[i : i + 500]))
            found.update({int(idx): bytes(data) for idx, data in await conn.execute(query)})
        return found

    async def inclusion_proofs(
        self, conn: AsyncConnection, indexes: Sequence[int], size: int
    ) -> dict[int, list[bytes]]:
        """The proofs that each entry of ``indexes`` is in the tree of ``size`` entries."""
        leaves = await self.leaf_hashes(conn, size)
        return {i: merkle.inclusion_proof(i, leaves) for i in indexes}

    async def inclusion_proof(self, conn: AsyncConnection, index: int, size: int) -> list[bytes]:
        """The proof that entry ``index`` is in the tree of ``size`` entries."""
        return merkle.inclusion_proof(index, await self.leaf_hashes(conn, size))

    async def consistency_proof(
        self, conn: AsyncConnection, old_size: int, new_size: int
    ) -> list[bytes]:
        """The proof that the tree of ``old_size`` entries is a prefix of that of ``new_size``."""
        return merkle.consistency_proof(old_size, await self.leaf_hashes(conn, new_size))

    async def rows(self, conn: AsyncConnection) -> list[Row]:
        """Every entry row as stored, in index order, for the verifier."""
        t = self.tables.entries
        result = await conn.execute(select(t).order_by(t.c.idx))
        return [_row(r._mapping) for r in result]


class WitnessLog:
    """The heads a node holds for the logs of the tier below, and the cosignatures it gave."""

    def __init__(self, tables: OplogTables, signer: note.Signer) -> None:
        if signer.sig_type != note.COSIGNATURE_V1:
            raise ValueError("a witness signs with a cosignature/v1 (0x04) key")
        self.tables = tables
        self._signer = signer

    @property
    def verifier(self) -> note.Verifier:
        """The public key that checks this witness's cosignatures."""
        return self._signer.verifier

    async def latest(self, conn: AsyncConnection, origin: str) -> note.Note | None:
        """The largest head held for ``origin``, with this witness's cosignature."""
        t = self.tables.witnessed
        query = (
            select(t.c.note)
            .where(t.c.origin == origin)
            .order_by(t.c.tree_size.desc())
            .limit(1)
            .with_for_update()
        )
        text = (await conn.execute(query)).scalar_one_or_none()
        return None if text is None else note.parse_note(text)

    async def held(self, conn: AsyncConnection, origin: str) -> list[note.Note]:
        """Every head held for ``origin``, smallest size first."""
        t = self.tables.witnessed
        query = select(t.c.note).where(t.c.origin == origin).order_by(t.c.tree_size)
        return [note.parse_note(text) for text in (await conn.execute(query)).scalars()]

    async def witness(
        self,
        conn: AsyncConnection,
        signed: note.Note,
        proof: Sequence[bytes],
        log: note.Verifier,
        now: dt.datetime,
    ) -> note.Signature:
        """Check a new head of ``log`` against the one held, keep it, return the cosignature."""
        checkpoint = note.parse_checkpoint(signed.text)
        previous = await self.latest(conn, checkpoint.origin)
        held = None if previous is None else note.parse_checkpoint(previous.text)
        if previous is not None and previous.text == signed.text:
            sig = previous.signature_of(self.verifier)
            assert sig is not None  # every head held was cosigned here
            return sig
        cosignature = witness(held, signed, proof, log, self._signer, unix_seconds(now))
        await conn.execute(
            insert(self.tables.witnessed).values(
                origin=checkpoint.origin,
                tree_size=checkpoint.size,
                note=signed.with_signature(cosignature).encode(),
                proof=b"".join(proof),
                received_at=now,
            )
        )
        return cosignature


def entry_rows(
    frontier: Frontier, operations: Sequence[Operation]
) -> tuple[list[Entry], list[dict[str, object]], Frontier]:
    """The entries of ``operations`` appended after ``frontier``, their ``oplog_entries``
    rows, and the frontier after them (pure: the caller writes rows and frontier in
    one transaction)."""
    made: list[Entry] = []
    rows: list[dict[str, object]] = []
    for operation in operations:
        entry = Entry(frontier.size, operation, frontier.root())
        data = entries.encode(entry)
        leaf = merkle.leaf_hash(data)
        made.append(entry)
        rows.append(_entry_row(entry, data, leaf))
        frontier = frontier.append(leaf)
    return made, rows, frontier


STATE_ID = _STATE_ID
"""The id of the one row of ``oplog_state``."""


def _entry_row(entry: Entry, data: bytes, leaf: bytes) -> dict[str, object]:
    op = entry.operation
    return {
        "idx": entry.index,
        "recorded_us": op.time_us,
        "operator": op.operator,
        "terminal": op.terminal,
        "operation": op.operation,
        "resident_codes": ",".join(op.resident_codes),
        "outcome": op.outcome,
        "reason": op.reason,
        "prev_root": entry.prev_root,
        "entry": data,
        "leaf_hash": leaf,
    }


def _row(m: RowMapping) -> Row:
    get = m.__getitem__
    return Row(
        idx=int(get("idx")),
        recorded_us=int(get("recorded_us")),
        operator=str(get("operator")),
        terminal=str(get("terminal")),
        operation=str(get("operation")),
        resident_codes=str(get("resident_codes")),
        outcome=str(get("outcome")),
        reason=str(get("reason")),
        prev_root=bytes(get("prev_root")),
        entry=bytes(get("entry")),
        leaf_hash=bytes(get("leaf_hash")),
    )
