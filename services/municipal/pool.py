"""The municipality's resident-code pool: codes handed down by the prefecture,
refilled before it runs dry (and at once when an operation needs more codes
than are left)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from jukinet.clock import wait_for_event
from jukinet.db import Database, describe_error
from jukinet.errors import Unavailable
from jukinet.metrics import MunicipalMetrics
from jukinet.v1 import delivery_pb2, prefecture_pb2_grpc
from services.municipal import repository as repo

log = logging.getLogger("jukinet.municipal")

# How long an operation that needs codes now waits for the prefecture to be
# reachable (a prefecture starting up), and the deadline of a background refill.
ENSURE_WITHIN = 3.0
REFILL_WITHIN = 30.0
# Requests an operation sends at most: one left open, then one for the rest.
ENSURE_ROUNDS = 2


class PoolKeeper:
    """Keeps the resident-code pool above its low watermark."""

    def __init__(
        self,
        *,
        db: Database,
        municipality: str,
        prefecture: prefecture_pb2_grpc.PrefectureServiceAsyncStub,
        metrics: MunicipalMetrics,
        low_watermark: int,
        refill_size: int,
    ) -> None:
        self._db = db
        self._municipality = municipality
        self._prefecture = prefecture
        self._metrics = metrics
        self._low = low_watermark
        self._refill = refill_size
        self._lock = asyncio.Lock()
        self._wanted = asyncio.Event()
        # Free codes, kept in memory once counted: this process is the pool's only
        # writer, and counting on every operation would cost more than the operation.
        self._free: int | None = None

    async def _count(self) -> int:
        async with self._db.read() as conn:
            self._free = await repo.free_codes(conn)
        self._metrics.code_pool.set(self._free)
        return self._free

    def consumed(self, count: int) -> None:
        """``count`` codes were used by a committed operation."""
        if self._free is not None:
            self._free -= count
            self._metrics.code_pool.set(self._free)
            if self._free < self._low:
                self._wanted.set()

    async def ensure(self, needed: int) -> None:
        """Make sure ``needed`` codes are free, refilling now if they are not.

        A request left open (sent while the prefecture was away) is sent again
        as it was, so it may bring fewer codes than needed: then one more
        request asks for the rest.
        """
        free = self._free if self._free is not None else await self._count()
        for _ in range(ENSURE_ROUNDS):
            if free >= needed:
                return
            try:
                await self._fill(
                    max(self._refill, needed - free + self._low), within=ENSURE_WITHIN, wait=True
                )
            except Exception as exc:
                raise Unavailable(
                    f"the resident-code pool is short ({free} free, {needed} needed) and the "
                    f"prefecture could not be reached: {_brief(exc)}"
                ) from exc
            free = await self._count()
        if free < needed:
            raise Unavailable(f"the resident-code pool is short ({free} free, {needed} needed)")

    async def _fill(self, count: int, *, within: float = REFILL_WITHIN, wait: bool = False) -> None:
        """Ask the prefecture for ``count`` codes (or resend the request still open).

        With ``wait``, a prefecture that is starting up or reconnecting is
        waited for within ``within`` rather than failing at once: an operation
        that needs a code now. The background refill fails fast instead and
        retries with its backoff, so it never holds the lock for long.
        """
        async with self._lock:
            async with self._db.write() as conn:
                pending = await repo.pending_pool_request(conn)
                if pending is None:
                    pending = (uuid.uuid4().hex, count)
                    await repo.add_pool_request(conn, *pending)
            request_id, size = pending
            response = await self._prefecture.AllocateCodePool(
                delivery_pb2.AllocateCodePoolRequest(
                    municipality_code=self._municipality, count=size, request_id=request_id
                ),
                timeout=within,
                wait_for_ready=wait,
            )
            async with self._db.write() as conn:
                added = await repo.fulfil_pool_request(conn, request_id, response.resident_codes)
            free = await self._count()
            log.info("code pool refilled with %d codes (%d free)", added, free)

    async def run(self) -> None:
        """Refill whenever the pool falls below the watermark; retry with backoff."""
        backoff = 0.5
        while True:
            try:
                free = await self._count()
                if free < self._low or await self._has_pending():
                    await self._fill(self._refill)
                backoff = 0.5
                self._wanted.clear()
                await wait_for_event(self._wanted, 5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("code pool refill failed: %s", _brief(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

    async def _has_pending(self) -> bool:
        async with self._db.read() as conn:
            return await repo.pending_pool_request(conn) is not None


def _brief(exc: Exception) -> str:
    """One line for a failed refill: a gRPC error's status and details, not its dump."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return describe_error(exc)
