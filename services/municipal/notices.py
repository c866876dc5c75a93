"""The notice sender: delivers the requests a change queued for other municipalities
(a move-in's notice to the old municipality, 転入通知) through the relay.

Each row of ``relay_outbox`` was written in the transaction of its change, so it
survives any crash after the commit. The sender sends the due rows in order with
their fixed request id (the destination answers an id once, so a resend after a
crash is the same request), marks a row ``delivered`` on an answer and
``refused`` on a refusal (kept with its reason and message, for an operator),
and on any other failure (the destination or a hop away, no directory) waits
and tries again, the wait doubling from :data:`FIRST_WAIT` up to
:data:`MAX_WAIT`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from jukinet.clock import Clock, wait_for_event
from jukinet.db import Database
from jukinet.errors import JukinetError
from jukinet.login import as_utc
from jukinet.relay.endpoint import RelayClient, RelayRefused
from jukinet.v1 import relay_pb2
from services.municipal import repository as repo

log = logging.getLogger("jukinet.notices")

FIRST_WAIT = dt.timedelta(seconds=0.5)
"""The wait after a first failed attempt."""
MAX_WAIT = dt.timedelta(seconds=30)
"""The longest wait between two attempts at one request."""
IDLE_WAIT = 30.0
"""Seconds the sender sleeps with nothing due (a new row wakes it at once)."""
BATCH = 50
"""Rows taken per round."""

_MESSAGES: dict[int, type[relay_pb2.MoveInNotice]] = {
    relay_pb2.RELAY_KIND_MOVE_IN_NOTICE: relay_pb2.MoveInNotice
}


def backoff(attempts: int) -> dt.timedelta:
    """The wait after ``attempts`` failed attempts (1 or more)."""
    factor: int = 2 ** min(attempts - 1, 20)
    return min(FIRST_WAIT * factor, MAX_WAIT)


class NoticeSender:
    """Sends the relay outbox (see the module)."""

    def __init__(self, *, db: Database, client: RelayClient, clock: Clock) -> None:
        self.db = db
        self.client = client
        self.clock = clock
        self._wake = asyncio.Event()
        self._warned: dict[int, str] = {}

    def wake(self) -> None:
        """A row was queued: look now."""
        self._wake.set()

    async def run(self) -> None:
        """Send what is due, then sleep until the next row is due or one is queued."""
        while True:
            try:
                await self.round()
                async with self.db.read() as conn:
                    due = await repo.next_relay_attempt(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: the next round tries again
                log.warning("relay outbox not read: %s", type(exc).__name__)
                due = self.clock.now() + MAX_WAIT
            wait = IDLE_WAIT
            if due is not None:
                wait = max(0.0, min(IDLE_WAIT, (as_utc(due) - self.clock.now()).total_seconds()))
            self._wake.clear()
            if wait > 0:
                await wait_for_event(self._wake, wait)

    async def round(self) -> int:
        """Attempt every row due now; how many were answered (delivered or refused)."""
        async with self.db.read() as conn:
            rows = await repo.due_relay_requests(conn, self.clock.now(), BATCH)
        done = 0
        for row in rows:
            done += await self._attempt(row)
        return done

    async def _attempt(self, row: repo.OutgoingRequest) -> int:
        message = _MESSAGES[row.kind].FromString(row.body)
        kind = relay_pb2.RelayKind.ValueType(row.kind)
        try:
            await self.client.send(row.destination, kind, message, request_id=row.request_id)
        except RelayRefused as refused:
            log.warning(
                "request %s to %s refused: %s", row.request_id, row.destination, refused.wire_reason
            )
            async with self.db.write() as conn:
                await repo.finish_relay_request(
                    conn,
                    row.id,
                    state=repo.REFUSED,
                    now=self.clock.now(),
                    reason=refused.wire_reason,
                    message=refused.message,
                )
            return 1
        except JukinetError as exc:
            attempts = row.attempts + 1
            problem = f"{exc.reason}: {exc.message}"
            if self._warned.get(row.id) != problem:
                log.warning(
                    "request %s to %s not delivered (attempt %d): %s",
                    row.request_id,
                    row.destination,
                    attempts,
                    problem,
                )
                self._warned[row.id] = problem
            async with self.db.write() as conn:
                await repo.postpone_relay_request(
                    conn, row.id, attempts=attempts, until=self.clock.now() + backoff(attempts)
                )
            return 0
        async with self.db.write() as conn:
            await repo.finish_relay_request(
                conn, row.id, state=repo.DELIVERED, now=self.clock.now()
            )
        self._warned.pop(row.id, None)
        return 1
