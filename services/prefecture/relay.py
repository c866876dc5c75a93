"""The prefecture's relay: every notification it applies goes on to the
national node through its own outbox."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.delivery.outbox import Outbox, PendingEntry
from jukinet.delivery.pusher import Pusher
from jukinet.v1 import common_pb2


class OutboxRelay:
    """A :class:`jukinet.delivery.receiver.Relay` into the relay outbox, pushed by ``pusher``."""

    def __init__(self, outbox: Outbox, pusher: Pusher) -> None:
        self._outbox = outbox
        self._pusher = pusher

    async def stage(
        self, conn: AsyncConnection, applied: Sequence[tuple[common_pb2.Notification, bytes]]
    ) -> None:
        """Append the applied notifications to the outbox, in the applying transaction;
        each keeps its origin (municipality, sequence) for the national node."""
        first = await self._outbox.reserve(conn, len(applied))
        await self._outbox.append(
            conn,
            first,
            [
                PendingEntry(n.origin_code, n.sequence, n.record.resident_code, payload)
                for n, payload in applied
            ],
        )

    def committed(self) -> None:
        """Wake the pusher: there is something new in the outbox."""
        self._pusher.wake()
