"""Delivers a node's outbox to the next tier over one long-lived stream.

Batches go out back to back, up to ``window`` unacknowledged at a time; each
acknowledgement is recorded durably before the window moves. After any break
(the receiver down, a restart of either side) the pusher reconnects with
backoff and resumes after the last recorded acknowledgement; the receiver
ignores what it already has. When the receiver reports a gap it names the
origin sequence it expects, and the pusher rewinds to the entry that carried it.
When the receiver reports an entry it cannot apply (``notification-unappliable``:
an obstacle on its side that an operator must remove), the pusher says so once
and retries with a longer backoff, doubling up to ``max_stuck_backoff``, until
the entry is acknowledged.

Beside the stream, the pusher keeps its upstream's delivery gauges true
whether or not the upstream answers: it reads the outbox state (two lookups by
key) after every commit it is woken for, after every acknowledgement it
records, and every ``status_every`` seconds, and the connected gauge reads
:attr:`Pusher.connected` at each scrape.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import grpc

from jukinet.clock import SYSTEM_CLOCK, Clock, wait_for_event
from jukinet.db import Database, describe_error
from jukinet.delivery.outbox import Outbox
from jukinet.errors import INFO_EXPECTED_SEQUENCE, INFO_ORIGIN, INFO_SEQUENCE, error_info
from jukinet.metrics import UpstreamDelivery
from jukinet.reasons import DOMAIN, Reason
from jukinet.v1 import common_pb2, delivery_pb2

log = logging.getLogger("jukinet.delivery.pusher")

# grpc.aio.EOF is missing from the type stubs.
_EOF: Any = cast(Any, grpc.aio).EOF

StreamOpener = Callable[..., Any]
"""Opens one PushNotifications stream-stream call (a grpc.aio call object)."""


class Pusher:
    """Pushes one outbox to one receiver until stopped."""

    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        open_stream: StreamOpener,
        metrics: UpstreamDelivery,
        batch_size: int = 500,
        window: int = 4,
        idle_poll: float = 1.0,
        max_backoff: float = 5.0,
        stuck_backoff: float = 1.0,
        max_stuck_backoff: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
        status_every: float = 1.0,
    ) -> None:
        self._db = db
        self._clock = clock
        self._outbox = outbox
        self._open_stream = open_stream
        self._metrics = metrics
        self._batch_size = batch_size
        self._window = window
        self._idle_poll = idle_poll
        self._max_backoff = max_backoff
        self._first_stuck_backoff = stuck_backoff
        self._stuck_backoff = stuck_backoff
        self._max_stuck_backoff = max_stuck_backoff
        # The (origin, sequence) the receiver cannot apply, while it cannot.
        self.stuck: tuple[str, int] | None = None
        self._status_every = status_every
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self.connected = False
        """True while the stream to the upstream is established."""
        metrics.connected_by(lambda: self.connected)

    def wake(self) -> None:
        """Tell the pusher there is something new (called after an outbox commit)."""
        self._wake.set()
        self._changed.set()

    async def run(self) -> None:
        """Push until cancelled, keeping the delivery gauges true meanwhile."""
        watch = asyncio.create_task(self._watch_outbox())
        try:
            await self._deliver()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _watch_outbox(self) -> None:
        """Publish the outbox backlog and its oldest entry's time, on change and on a tick."""
        failing = False
        while True:
            self._changed.clear()
            try:
                async with self._db.read() as conn:
                    status = await self._outbox.status(conn)
                    oldest = (
                        await self._outbox.written_at(conn, status.acknowledged_through + 1)
                        if status.backlog
                        else None
                    )
                self._metrics.set_outbox(status.backlog, oldest)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:  # once per failing stretch, not every tick
                    log.warning("cannot read the outbox state: %s", describe_error(exc))
                failing = True
            await wait_for_event(self._changed, self._status_every)

    async def _deliver(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._session()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.connected = False
                if await self._handle_refusal(exc):
                    backoff = 0.05
                    continue
                if self._unappliable(exc):
                    self._metrics.reconnects.inc()
                    await asyncio.sleep(self._stuck_backoff * (0.5 + random.random()))
                    self._stuck_backoff = min(self._stuck_backoff * 2, self._max_stuck_backoff)
                    continue
                log.warning("push stream broke: %s %s", exc.code().name, exc.details())
            except Exception as exc:
                self.connected = False
                log.error("push stream failed: %s", describe_error(exc))
            self._metrics.reconnects.inc()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._max_backoff)

    def _unappliable(self, exc: grpc.aio.AioRpcError) -> bool:
        """True when the receiver cannot apply an entry; said once per entry."""
        info = error_info(exc)
        if info is None or info.domain != DOMAIN or info.reason != Reason.NOTIFICATION_UNAPPLIABLE:
            return False
        try:
            stuck = (info.metadata[INFO_ORIGIN], int(info.metadata[INFO_SEQUENCE]))
        except (KeyError, ValueError):
            stuck = ("", 0)
        if stuck != self.stuck:
            self.stuck = stuck
            self._stuck_backoff = self._first_stuck_backoff
            log.warning(
                "the next tier cannot apply %s #%d; retrying at most every %.0f s until it can",
                *stuck,
                self._max_stuck_backoff,
            )
        return True

    def _delivered(self) -> None:
        """An acknowledgement came: an entry that was stuck is through."""
        if self.stuck is not None:
            log.warning("the next tier applied %s #%d; delivery resumed", *self.stuck)
            self.stuck = None
            self._stuck_backoff = self._first_stuck_backoff

    async def _handle_refusal(self, exc: grpc.aio.AioRpcError) -> bool:
        """Rewind after a sequence gap; True when delivery can resume at once."""
        info = error_info(exc)
        if info is None or info.domain != DOMAIN or info.reason != Reason.SEQUENCE_GAP:
            return False
        origin = info.metadata.get(INFO_ORIGIN, "")
        try:
            expected = int(info.metadata[INFO_EXPECTED_SEQUENCE])
        except (KeyError, ValueError):
            log.error("receiver reports a sequence gap without a usable expected sequence")
            return False
        async with self._db.write() as conn:
            located = await self._outbox.locate(conn, origin, expected)
            if located is None:
                log.error(
                    "receiver expects %s #%d, which this outbox never carried", origin, expected
                )
                return False
            await self._outbox.rewind(conn, located - 1)
        self._changed.set()
        log.warning("receiver expects %s #%d: rewinding to entry %d", origin, expected, located)
        return True

    async def _acknowledge(self, through: int) -> None:
        async with self._db.write() as conn:
            await self._outbox.acknowledge(conn, through)
        self._changed.set()

    async def _session(self) -> None:
        call = self._open_stream()
        async with self._db.read() as conn:
            status = await self._outbox.status(conn)
        next_after = status.acknowledged_through
        try:
            # Established once its headers are out; raises if the upstream is unreachable.
            await call.wait_for_connection()
        except BaseException:
            call.cancel()
            raise
        self.connected = True
        in_flight: deque[int] = deque()
        room = asyncio.Condition()

        async def receive() -> None:
            try:
                while True:
                    response = await call.read()
                    if response is _EOF:
                        raise ConnectionError("receiver closed the stream")
                    ack = response.acknowledged_through
                    # Shielded: ending the session must not cut this write short.
                    await self._db.complete(self._acknowledge(ack))
                    self.connected = True
                    self._delivered()
                    self._metrics.pushed.inc(response.applied + response.duplicates)
                    async with room:
                        while in_flight and in_flight[0] <= ack:
                            in_flight.popleft()
                        room.notify_all()
            finally:
                # Wake the sender if it waits for room in a full window: it
                # checks receiver.done() only when notified, and would
                # otherwise wait for ever once the stream broke.
                async with room:
                    room.notify_all()

        receiver = asyncio.create_task(receive())
        try:
            while True:
                async with room:
                    await room.wait_for(lambda: len(in_flight) < self._window or receiver.done())
                if receiver.done():
                    receiver.result()
                # Cleared before reading: a commit that lands during the read
                # sets it again, so it is never missed.
                self._wake.clear()
                async with self._db.read() as conn:
                    rows = await self._outbox.read_after(conn, next_after, self._batch_size)
                if not rows:
                    waiter = asyncio.create_task(self._wake.wait())
                    await asyncio.wait(
                        {waiter, receiver},
                        timeout=self._idle_poll,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    waiter.cancel()
                    continue
                request = delivery_pb2.PushNotificationsRequest(
                    entries=[
                        delivery_pb2.OutboxEntry(
                            outbox_sequence=seq,
                            notification=common_pb2.Notification.FromString(payload),
                        )
                        for seq, payload in rows
                    ],
                    # The receiver measures this node's clock by it.
                    sent_at=self._clock.now().isoformat(),
                )
                try:
                    await call.write(request)
                except Exception:
                    # A refusal (a gap, bad input) ends the stream while we write;
                    # its real status arrives on the read side, so wait for it.
                    done, _ = await asyncio.wait({receiver}, timeout=5)
                    if done and not receiver.cancelled() and receiver.exception() is not None:
                        receiver.result()
                    raise
                next_after = rows[-1][0]
                async with room:
                    in_flight.append(next_after)
        finally:
            receiver.cancel()
            call.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
