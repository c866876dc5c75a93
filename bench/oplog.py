"""The operation log's own cost: appends/s of ``OperationLog.append``.

Each backend gets a fresh database with the log's tables only. Two ways of
appending are measured, one after the other, on the node's
:class:`~jukinet.db.Database` (its write lock, its pool):

- **one entry per transaction**: what the entry of a read, a refusal, or a
  call naming no resident costs (``Recorder.record`` in a transaction of its
  own): read the frontier ``FOR UPDATE``, insert the entry, update the
  frontier, commit;
- **in a write's transaction**: the statements an operation's write adds to
  its own transaction (:meth:`jukinet.db.Database.operation`), measured as 100
  appends per commit, so that the commit's cost, which the write pays anyway,
  is spread out.

Entries name one resident code and an operator and a terminal of realistic
length. CPU time of this process and of PostgreSQL (every postgres process on the
machine) is read from /proc around each phase.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData

from bench.common import progress
from bench.processes import postgres_cpu, self_cpu
from jukinet.db import Database
from jukinet.oplog import note
from jukinet.oplog.entry import Operation
from jukinet.oplog.log import OperationLog, define_oplog_tables
from tools.localfed import Databases

ORIGIN = "jukinet/municipality/312011"
PER_TRANSACTION = 100


def _operation(i: int) -> Operation:
    return Operation(
        time=dt.datetime(2026, 4, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=i),
        operator="jukinet://operator/312011/clerk1",
        terminal="jukinet://terminal/312011/counter-03",
        operation="GetResident",
        resident_codes=(f"{10_000_000_000 + i}",),
        outcome="ok",
        reason="",
    )


async def _phase(
    db: Database, log: OperationLog, entries: int, per_transaction: int, start: int
) -> dict[str, float]:
    cpu_before, pg_before = self_cpu(), postgres_cpu()
    t0 = time.perf_counter()
    for first in range(start, start + entries, per_transaction):
        async with db.write() as conn:
            for i in range(first, first + per_transaction):
                await log.append(conn, _operation(i))
    elapsed = time.perf_counter() - t0
    cpu, pg_cpu = self_cpu() - cpu_before, postgres_cpu() - pg_before
    return {
        "entries": entries,
        "seconds": elapsed,
        "appends_per_s": entries / elapsed,
        "us_per_append_bench_cpu": cpu / entries * 1e6,
        # Every postgres process of the machine: other work on it counts too.
        "us_per_append_postgresql_cpu": pg_cpu / entries * 1e6 if not db.is_sqlite else 0.0,
    }


async def bench_backend(backend: str, entries: int) -> dict[str, Any]:
    """Both phases on one backend."""
    with tempfile.TemporaryDirectory(prefix="jukinet-bench-oplog-") as folder:
        dbs = Databases(backend, Path(folder), templates=False)
        db = Database(await dbs.url("oplog-bench"))
        try:
            metadata = MetaData()
            tables = define_oplog_tables(metadata)
            async with db.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            log = OperationLog(tables, ORIGIN, note.Signer.generate(ORIGIN))
            await _phase(db, log, 200, 1, 0)  # warm-up: pool, statement caches
            progress(f"oplog {backend}: {entries} appends, one per transaction")
            single = await _phase(db, log, entries, 1, 1_000)
            progress(f"oplog {backend}: {entries * 10} appends, {PER_TRANSACTION} per transaction")
            batched = await _phase(db, log, entries * 10, PER_TRANSACTION, 1_000 + entries)
        finally:
            await db.close()
            await dbs.drop_all()
    return {"one_per_transaction": single, "in_a_write": batched}


def run(backends: list[str], entries: int) -> dict[str, Any]:
    """The figures of every backend, for the results file."""
    return {
        "parameters": {"entries": entries, "per_transaction": PER_TRANSACTION},
        "backends": {b: asyncio.run(bench_backend(b, entries)) for b in backends},
    }
