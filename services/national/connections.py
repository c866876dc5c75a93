"""Database connections kept for the agency path of the national node.

Every ``ProvideVerification`` reads records and has its provision record
written. Checking a connection out of SQLAlchemy's pool and returning it costs
more CPU than the lookup itself (a greenlet hop each way and the pool's
bookkeeping), twice per call. :class:`KeptConnections` checks a few
connections out once and hands them to the agency path again and again; a
connection that saw any error (a failed statement, a cancelled call, a broken
socket) is discarded, and a fresh one is checked out the next time.

On SQLite there is nothing to gain (aiosqlite runs each connection in a
thread of its own) and the node keeps its usual :meth:`Database.read`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.db import Database


class KeptConnections:
    """At most ``size`` connections, checked out of ``db``'s pool and kept."""

    def __init__(self, db: Database, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._db = db
        self._idle: list[AsyncConnection] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[AsyncConnection]:
        """A connection for a unit of work; no transaction is left open on it."""
        if self._db.is_sqlite:
            async with self._db.read() as conn:
                yield conn
            return
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._db.engine.connect()
            try:
                yield conn
                if conn.in_transaction():  # only plain driver statements belong here
                    await conn.rollback()
            except BaseException:
                # Its state is unknown (a statement interrupted half-way, a
                # dead socket): never hand it out again.
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                with contextlib.suppress(Exception):
                    await conn.close()
                raise
            if self._closed:
                await conn.close()
            else:
                self._idle.append(conn)

    async def close(self) -> None:
        """Return the idle connections to the pool (the node is stopping)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()
