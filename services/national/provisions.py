"""Provision records, written before an answer leaves (group commit).

Every lookup for an agency must be on record before its answer is sent. One
transaction per request would cap the node at a few thousand commits a
second, so :class:`ProvisionLog` lets one transaction serve every request
waiting at that moment: a request hands its rows over and waits; the writer
commits whatever has gathered, then wakes each waiter. No answer leaves before
its row is committed. If the shared write fails, each request of it is written
again alone, so that a request whose rows the database refuses fails alone
(and returns no data) while the others are answered.

On PostgreSQL the shared write is one ``INSERT ... SELECT FROM unnest(...)``
sent straight on the asyncpg connection, outside an explicit transaction: a
single statement is its own transaction, committed (and, with the default
``synchronous_commit``, flushed to the WAL) before PostgreSQL answers, in one
round trip instead of BEGIN, INSERT and COMMIT. It needs no part of the node's
write lock, which serialises read-modify-write work (delivery, code pools):
provision records are only appended. SQLite keeps the locked transaction.

Every provision row is also an entry of the node's operation log
(:mod:`jukinet.oplog`), written in the same statement (PostgreSQL) or
transaction (SQLite), so a provision never exists without its entry nor an
entry without its provision: the agency is the entry's operator, the gateway
its terminal, the operation label (``verify``, ``retrieve`` ...) its
operation, the resident code its resident, ``ok`` (``refused`` for a denial)
its outcome, the denial's reason its reason, and the provision's id,
purpose, result and fields its ``provision``. On PostgreSQL the writer keeps
the log's frontier between writes instead of reading it (it is the only
appender but for the national operators' entries, rare): a write whose
frontier went stale fails whole on the entries' primary key and is made
again once from the frontier read afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from jukinet.db import Database, describe_error
from jukinet.errors import Unavailable
from jukinet.identity import Identity
from jukinet.oplog.entry import Operation, Provided
from jukinet.oplog.log import OperationLog, entry_rows
from jukinet.oplog.merkle import Frontier
from jukinet.v1 import provision_pb2
from jukinet.vocabulary import OperationValue, ResultValue, operation_label, result_label
from services.national.connections import KeptConnections
from services.national.repository import (
    delete_provisions_before,
    insert_logged_provisions,
    insert_provisions,
    log_frontier,
)

log = logging.getLogger("jukinet.provisions")

RETENTION = dt.timedelta(days=7 * 365 + 2)  # seven years, leap days included


@dataclass(frozen=True)
class ProvisionEntry:
    """One provision (or refusal) to record."""

    agency_code: str
    purpose_code: str
    operation: OperationValue
    resident_code: str
    fields: tuple[str, ...]
    result: ResultValue
    reason: str = ""


_GATEWAY = Identity.gateway().uri


@functools.lru_cache(maxsize=1024)
def _agency_uri(code: str) -> str:
    return Identity.agency(code).uri


def log_operation(entry: ProvisionEntry, provision_id: str, at: dt.datetime) -> Operation:
    """The operation log entry of one provision (see the module docstring)."""
    denied = entry.result == provision_pb2.PROVISION_RESULT_DENIED
    return Operation(
        time=at,
        operator=_agency_uri(entry.agency_code),
        terminal=_GATEWAY,
        operation=operation_label(entry.operation),
        resident_codes=(entry.resident_code,) if entry.resident_code else (),
        outcome="refused" if denied else "ok",
        reason=entry.reason,
        provision=Provided(
            provision_id, entry.purpose_code, result_label(entry.result), entry.fields
        ),
    )


def new_provision_id() -> str:
    """A fresh, unguessable provision id."""
    return uuid.uuid4().hex


class ProvisionLog:
    """Records provisions in shared transactions; see the module docstring."""

    def __init__(self, db: Database, oplog: OperationLog, *, max_rows: int = 20_000) -> None:
        self._db = db
        self._oplog = oplog
        # PostgreSQL: the log's frontier after this writer's last write (None: read it).
        self._frontier: Frontier | None = None
        self._max_rows = max_rows
        self._pending: deque[tuple[list[dict[str, object]], asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._kept = KeptConnections(db, 1)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="provision-log")

    async def stop(self) -> None:
        """Stop the writer; requests still waiting fail as UNAVAILABLE."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._pending:
            if not future.done():
                future.set_exception(Unavailable("the national node is stopping"))
        await self._kept.close()

    async def record(self, entries: Sequence[ProvisionEntry]) -> list[str]:
        """Commit ``entries`` (in a shared transaction) and return their ids."""
        if not entries:
            # Nothing to record (an empty batch); an empty insert would fail
            # as INSERT ... DEFAULT VALUES.
            return []
        now = dt.datetime.now(dt.UTC)
        ids = [new_provision_id() for _ in entries]
        rows: list[dict[str, object]] = [
            {
                "provision_id": pid,
                "provided_at": now,
                "agency_code": e.agency_code,
                "purpose_code": e.purpose_code,
                "operation": operation_label(e.operation),
                "resident_code": e.resident_code,
                "fields": ",".join(e.fields),
                "result": result_label(e.result),
                "reason": e.reason,
                "log_index": None,
                "operation_entry": log_operation(e, pid, now),
            }
            for pid, e in zip(ids, entries, strict=True)
        ]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        self._wake.set()
        await future
        return ids

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch: list[tuple[list[dict[str, object]], asyncio.Future[None]]] = []
                size = 0
                while self._pending and (not batch or size < self._max_rows):
                    rows, future = self._pending.popleft()
                    batch.append((rows, future))
                    size += len(rows)
                try:
                    await self._write([r for rows, _ in batch for r in rows])
                except Exception as exc:
                    if len(batch) == 1:
                        self._fail(batch[0][1], exc)
                    else:
                        # One request's rows can fail the shared write (a value the
                        # database refuses): write each request alone, so that only
                        # the one at fault fails and the others are answered.
                        await self._write_one_by_one(batch)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _write_one_by_one(
        self, batch: list[tuple[list[dict[str, object]], asyncio.Future[None]]]
    ) -> None:
        failed = 0
        for rows, future in batch:
            if future.done():  # its caller went away
                continue
            try:
                await self._write(rows)
            except Exception as exc:
                failed += 1
                self._fail(future, exc)
            else:
                future.set_result(None)
        log.warning(
            "a shared provision write failed; %d of %d requests failed alone", failed, len(batch)
        )

    @staticmethod
    def _fail(future: asyncio.Future[None], exc: Exception) -> None:
        # Never the exception's text: it can quote the rows (an agency's request).
        log.error("provision records could not be written: %s", describe_error(exc))
        if not future.done():
            future.set_exception(
                Unavailable("the provision record could not be written; nothing is returned")
            )

    async def _write(self, rows: list[dict[str, object]]) -> None:
        """Insert and commit ``rows`` and their log entries; see the module docstring."""
        operations = [r["operation_entry"] for r in rows]
        assert all(isinstance(o, Operation) for o in operations)
        logged = [o for o in operations if isinstance(o, Operation)]
        if self._db.is_sqlite:
            async with self._db.write() as conn:
                made = await self._oplog.append_many(conn, logged)
                await insert_provisions(conn, _indexed(rows, [e.index for e in made]))
            return
        async with self._kept.acquire() as conn:
            for retry in (False, True):
                cached, self._frontier = self._frontier, None
                frontier = cached if cached is not None else await log_frontier(conn)
                made, entries, grown = entry_rows(frontier, logged)
                try:
                    await insert_logged_provisions(
                        conn, _indexed(rows, [e.index for e in made]), entries, frontier, grown
                    )
                except Exception:
                    if cached is None or retry:
                        raise
                    continue  # another append moved the log: once more, from its frontier
                self._frontier = grown
                return


def _indexed(rows: list[dict[str, object]], indexes: list[int]) -> list[dict[str, object]]:
    """The provision rows with their entries' log indexes (and without the operations)."""
    return [
        {k: v for k, v in r.items() if k != "operation_entry"} | {"log_index": i}
        for r, i in zip(rows, indexes, strict=True)
    ]


async def purge_older_than(
    db: Database, now: dt.datetime, retention: dt.timedelta = RETENTION
) -> int:
    """Delete provision records past their retention; returns how many."""
    async with db.write() as conn:
        return await delete_provisions_before(conn, now - retention)


async def retention_job(db: Database, every: float = 24 * 3600) -> None:
    """Purge expired provision records once a day (and at start)."""
    while True:
        try:
            purged = await purge_older_than(db, dt.datetime.now(dt.UTC))
            if purged:
                log.info("purged %d provision records older than seven years", purged)
        except Exception as exc:
            log.error("provision retention job failed: %s", describe_error(exc))
        await asyncio.sleep(every)
