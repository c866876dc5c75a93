"""The prefecture's storage: the identity tables it shares with the national
node (:mod:`jukinet.delivery.store`) and its relay outbox. The SQL itself lives
in those shared modules; this names what the prefecture's use cases need."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.delivery.outbox import Outbox, OutboxStatus
from jukinet.delivery.store import IdentityStore


class PrefectureRepository:
    """Queries of a prefecture node; every method runs in the caller's transaction."""

    def __init__(self, store: IdentityStore, outbox: Outbox) -> None:
        self._store = store
        self._outbox = outbox

    async def pool_of_request(
        self, conn: AsyncConnection, request_id: str
    ) -> tuple[str, list[str]] | None:
        """The municipality and codes of an earlier pool request with this id."""
        return await self._store.issued_for_request(conn, request_id)

    async def record_pool(
        self, conn: AsyncConnection, codes: Sequence[str], municipality: str, request_id: str
    ) -> None:
        """Remember codes handed to a municipality (the pool check relies on it)."""
        await self._store.record_issued(conn, codes, municipality, request_id)

    async def relay_status(self, conn: AsyncConnection) -> OutboxStatus:
        """How far the relay outbox to the national node has been pushed."""
        return await self._outbox.status(conn)
