"""The operation log in SQL, on SQLite and PostgreSQL: appends, heads, witnessing, and
tampering done directly in the database, each caught and named by the verifier."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Executable, MetaData, delete, insert, select, update

from jukinet.db import Database
from jukinet.oplog import entry as entries
from jukinet.oplog import merkle, note
from jukinet.oplog.entry import Entry, Operation
from jukinet.oplog.log import OperationLog, OplogTables, WitnessLog, define_oplog_tables
from jukinet.oplog.merkle import Frontier
from jukinet.oplog.verify import Verdict, WitnessError, verify_log
from tests.federation import Databases

ORIGIN = "jukinet/municipality/312011"
T0 = dt.datetime(2026, 4, 1, 9, 0, tzinfo=dt.UTC)


def operation(i: int, outcome: str = "ok") -> Operation:
    return Operation(
        time=T0 + dt.timedelta(seconds=i),
        operator=f"op-{i % 3}",
        terminal="312011/t1",
        operation="read-resident" if i % 2 else "register-birth",
        resident_codes=(f"{10000000000 + i}",),
        outcome=outcome,
        reason="" if outcome == "ok" else "permission-denied",
    )


@dataclass
class Node:
    """A node's log and the witness above it, each with its own database."""

    db: Database
    log: OperationLog
    tables: OplogTables
    signer: note.Signer
    witness_db: Database
    witness: WitnessLog
    sent: int = 0  # the size of the last head sent upward

    async def append(self, n: int) -> None:
        """Log ``n`` operations, one transaction each."""
        for _ in range(n):
            async with self.db.write() as conn:
                size = (await self.log.frontier(conn)).size
                await self.log.append(conn, operation(size))

    async def sign_and_send(self) -> None:
        """Sign the current head, have the tier above witness it, keep its cosignature."""
        async with self.db.write() as conn:
            signed = await self.log.sign_head(conn, T0)
            size = note.parse_checkpoint(signed.text).size
            proof = await self.log.consistency_proof(conn, self.sent, size)
        async with self.witness_db.write() as wconn:
            cosig = await self.witness.witness(wconn, signed, proof, self.log.verifier, T0)
        async with self.db.write() as conn:
            cosigned = signed.with_signature(cosig)
            await self.log.record_cosignature(conn, cosigned, self.witness.verifier)
        self.sent = size

    async def verify(self, *, upstream: bool = False) -> Verdict:
        """Verify the log from its rows and heads, and against the witness's if asked."""
        async with self.db.read() as conn:
            rows = await self.log.rows(conn)
            heads = await self.log.heads(conn)
            state = await self.log.frontier(conn)
        held: list[note.Note] = []
        if upstream:
            async with self.witness_db.read() as wconn:
                held = await self.witness.held(wconn, ORIGIN)
        return verify_log(
            rows,
            heads,
            self.log.verifier,
            state=state,
            upstream=held,
            witnesses=[self.witness.verifier] if upstream else [],
        )

    async def sql(self, statement: Executable) -> None:
        """Run one statement directly on the node's database, as a tamperer would."""
        async with self.db.write() as conn:
            await conn.execute(statement)


async def _database(dbs: Databases, name: str) -> tuple[Database, OplogTables]:
    db = Database(await dbs.url(name))
    metadata = MetaData()
    tables = define_oplog_tables(metadata)
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return db, tables


@pytest.fixture
async def node(tmp_path: Path, backend: str) -> AsyncIterator[Node]:
    dbs = Databases(backend, tmp_path)
    db, tables = await _database(dbs, "oplog")
    witness_db, witness_tables = await _database(dbs, "witness")
    signer = note.Signer.generate(ORIGIN)
    witness = WitnessLog(witness_tables, note.Signer.generate("jukinet/prefecture/31", 0x04))
    n = Node(db, OperationLog(tables, ORIGIN, signer), tables, signer, witness_db, witness)
    try:
        yield n
    finally:
        await db.close()
        await witness_db.close()
        await dbs.drop_all()


async def test_an_untouched_log_verifies_with_its_heads_and_proofs(node: Node) -> None:
    await node.append(5)
    await node.sign_and_send()
    await node.append(6)
    async with node.db.write() as conn:
        await node.log.append(conn, operation(11, "refused"))
    await node.sign_and_send()
    verdict = await node.verify(upstream=True)
    assert verdict.ok, verdict.problem
    assert verdict.size == 12
    async with node.db.read() as conn:
        head = await node.log.head(conn, 12)
        leaves = await node.log.leaf_hashes(conn, 12)
        proof = await node.log.inclusion_proof(conn, 7, 12)
        rows = await node.log.rows(conn)
    assert head is not None and note.cosigners(head, [node.witness.verifier])
    checkpoint = note.parse_checkpoint(head.text)
    merkle.verify_inclusion(7, 12, leaves[7], proof, checkpoint.root)
    assert entries.decode(rows[11].entry).operation.outcome == "refused"


async def test_concurrent_appends_take_distinct_indexes(node: Node) -> None:
    async def one(i: int) -> int:
        if node.db.is_sqlite:  # one writer at a time: the node's write lock
            async with node.db.write() as conn:
                return (await node.log.append(conn, operation(i))).index
        async with node.db.engine.begin() as conn:  # PostgreSQL: the frontier row lock
            return (await node.log.append(conn, operation(i))).index

    await node.append(1)  # the frontier row exists
    indexes = await asyncio.gather(*(one(i) for i in range(12)))
    assert sorted(indexes) == list(range(1, 13))
    assert (await node.verify()).ok


async def _tampered(node: Node) -> None:
    await node.append(10)
    await node.sign_and_send()


async def test_an_edited_column_is_named(node: Node) -> None:
    await _tampered(node)
    t = node.tables.entries
    await node.sql(update(t).where(t.c.idx == 4).values(operator="someone-else"))
    problem = (await node.verify()).problem
    assert problem is not None and (problem.kind, problem.index) == ("altered", 4)
    assert "operator" in problem.detail


async def test_a_row_rewritten_to_agree_with_itself_is_named_by_the_next_entry(
    node: Node,
) -> None:
    await _tampered(node)
    t = node.tables.entries
    async with node.db.read() as conn:
        row = (await conn.execute(select(t).where(t.c.idx == 3))).one()
    old = entries.decode(row.entry)
    forged = Entry(3, Operation(**{**old.operation.__dict__, "outcome": "refused"}), old.prev_root)
    data = entries.encode(forged)
    await node.sql(
        update(t)
        .where(t.c.idx == 3)
        .values(outcome="refused", entry=data, leaf_hash=merkle.leaf_hash(data))
    )
    problem = (await node.verify()).problem
    assert problem is not None and (problem.kind, problem.index) == ("altered", 3)


async def test_a_deleted_row_is_named(node: Node) -> None:
    await _tampered(node)
    t = node.tables.entries
    await node.sql(delete(t).where(t.c.idx == 6))
    problem = (await node.verify()).problem
    assert problem is not None and (problem.kind, problem.index) == ("removed", 6)


async def test_a_deleted_row_with_the_rest_renumbered_is_named(node: Node) -> None:
    await _tampered(node)
    t = node.tables.entries
    await node.sql(delete(t).where(t.c.idx == 6))
    for i in range(7, 10):  # one by one, upward: the index stays unique throughout
        await node.sql(update(t).where(t.c.idx == i).values(idx=i - 1))
    problem = (await node.verify()).problem
    assert problem is not None and (problem.kind, problem.index) == ("removed", 6)


async def test_the_last_rows_deleted_are_named_by_the_head(node: Node) -> None:
    await _tampered(node)
    t = node.tables.entries
    await node.sql(delete(t).where(t.c.idx >= 8))
    problem = (await node.verify()).problem
    assert problem is not None and (problem.kind, problem.index) == ("removed", 8)


async def _forge_insert(node: Node, at: int) -> None:
    """Shift rows at ``at`` and after up by one, and put a self-consistent row at ``at``."""
    t = node.tables.entries
    async with node.db.read() as conn:
        rows = await node.log.rows(conn)
    for i in range(len(rows) - 1, at - 1, -1):
        await node.sql(update(t).where(t.c.idx == i).values(idx=i + 1))
    frontier = Frontier()
    for r in rows[:at]:
        frontier = frontier.append(r.leaf_hash)
    forged = Entry(at, operation(99), frontier.root())
    data = entries.encode(forged)
    op = forged.operation
    await node.sql(
        insert(t).values(
            idx=at,
            recorded_us=op.time_us,
            operator=op.operator,
            terminal=op.terminal,
            operation=op.operation,
            resident_codes=",".join(op.resident_codes),
            outcome=op.outcome,
            reason=op.reason,
            prev_root=forged.prev_root,
            entry=data,
            leaf_hash=merkle.leaf_hash(data),
        )
    )


async def test_an_inserted_row_is_named(node: Node) -> None:
    await _tampered(node)
    await _forge_insert(node, 5)
    problem = (await node.verify()).problem
    assert problem is not None and (problem.kind, problem.index) == ("inserted", 5)


async def test_swapped_rows_are_named_as_reordered(node: Node) -> None:
    await _tampered(node)
    t = node.tables.entries
    # Move row 5 out of the way, row 2 into 5, then the old 5 into 2.
    await node.sql(update(t).where(t.c.idx == 5).values(idx=-1))
    await node.sql(update(t).where(t.c.idx == 2).values(idx=5))
    await node.sql(update(t).where(t.c.idx == -1).values(idx=2))
    problem = (await node.verify()).problem
    assert problem is not None and (problem.kind, problem.index) == ("reordered", 2)
    assert "entry 2 is at 5" in problem.detail


async def _rewrite_from(node: Node, start: int) -> None:
    """Rewrite every row from ``start`` (a changed operator, the chain recomputed) and
    re-sign every head of the log with the node's own key."""
    t = node.tables.entries
    async with node.db.read() as conn:
        rows = await node.log.rows(conn)
    frontier = Frontier()
    roots = {0: frontier.root()}
    for r in rows:
        decoded = entries.decode(r.entry)
        if r.idx >= start:
            op = Operation(**{**decoded.operation.__dict__, "operator": "forger"})
            forged = Entry(r.idx, op, frontier.root())
            data = entries.encode(forged)
            await node.sql(
                update(t)
                .where(t.c.idx == r.idx)
                .values(
                    operator="forger",
                    prev_root=forged.prev_root,
                    entry=data,
                    leaf_hash=merkle.leaf_hash(data),
                )
            )
            frontier = frontier.append(merkle.leaf_hash(data))
        else:
            frontier = frontier.append(r.leaf_hash)
        roots[frontier.size] = frontier.root()
    await node.sql(
        update(node.tables.state).values(size=frontier.size, frontier=frontier.to_bytes())
    )
    await node.sql(delete(node.tables.cosignatures))
    async with node.db.read() as conn:
        sizes = list((await conn.execute(select(node.tables.heads.c.tree_size))).scalars())
    for size in sizes:
        text = note.Checkpoint(ORIGIN, size, roots[size]).text()
        signed = note.sign_note(text, node.signer)
        await node.sql(
            update(node.tables.heads)
            .where(node.tables.heads.c.tree_size == size)
            .values(root=roots[size], note=signed.encode())
        )


async def test_a_whole_rewrite_resigned_is_caught_only_by_the_heads_held_upstream(
    node: Node,
) -> None:
    for _ in range(3):
        await node.append(4)
        await node.sign_and_send()  # heads of 4, 8 and 12 entries, witnessed above
    await _rewrite_from(node, 6)
    assert (await node.verify()).ok  # the node's own heads were re-signed
    problem = (await node.verify(upstream=True)).problem
    assert problem is not None and problem.kind == "altered"
    assert (problem.index, problem.until) == (4, 8)  # entry 6 is among 4..7
    assert "held upstream" in problem.detail


async def test_heads_witnessed_per_entry_name_the_rewritten_entry_exactly(node: Node) -> None:
    for _ in range(8):
        await node.append(1)
        await node.sign_and_send()
    await _rewrite_from(node, 5)
    assert (await node.verify()).ok
    problem = (await node.verify(upstream=True)).problem
    assert problem is not None
    assert (problem.kind, problem.index, problem.until) == ("altered", 5, 6)


async def test_the_witness_refuses_a_head_that_does_not_extend_the_one_held(node: Node) -> None:
    await node.append(4)
    await node.sign_and_send()
    await node.append(2)
    await _rewrite_from(node, 1)
    async with node.db.write() as conn:
        signed = await node.log.sign_head(conn, T0)
        proof = await node.log.consistency_proof(conn, 4, 6)
    with pytest.raises(WitnessError, match="does not extend"):
        async with node.witness_db.write() as wconn:
            await node.witness.witness(wconn, signed, proof, node.log.verifier, T0)
    forger = note.Signer.generate(ORIGIN)
    with pytest.raises(WitnessError, match="does not verify"):
        async with node.witness_db.write() as wconn:
            await node.witness.witness(
                wconn, note.sign_note(signed.text, forger), proof, node.log.verifier, T0
            )


async def test_an_append_rolled_back_or_made_elsewhere_is_not_built_on(node: Node) -> None:
    await node.append(3)

    class RolledBack(Exception):
        pass

    with pytest.raises(RolledBack):
        async with node.db.write() as conn:
            await node.log.append(conn, operation(3))
            raise RolledBack
    # Another writer of the same tables (the frontier this log last wrote is gone).
    other = OperationLog(node.tables, ORIGIN, node.signer)
    async with node.db.write() as conn:
        assert (await other.append(conn, operation(30))).index == 3
    await node.append(2)
    verdict = await node.verify()
    assert verdict.ok, verdict.problem
    assert verdict.size == 6
