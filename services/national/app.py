"""Wiring of the national node."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from jukinet.config import NationalConfig
from jukinet.db import Database
from jukinet.delivery.receiver import HoldingService
from jukinet.delivery.store import HoldingStore
from jukinet.metrics import NodeMetrics
from jukinet.server import RunningServer, start_server
from jukinet.v1 import national_pb2_grpc
from services.national import models
from services.national.access import rules
from services.national.connections import HeldConnections
from services.national.provisions import ProvisionLog, retention_job
from services.national.servicer import NationalServicer, authorize_prefecture_origin

SERVICE = "jukinet.v1.NationalService"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Lookups for agencies at once on kept connections (the gateway sends a few
# calls at a time; more wait for a connection).
HELD_READ_CONNECTIONS = 4


class NationalApp:
    """The national node: database, holdings, server."""

    def __init__(self, config: NationalConfig) -> None:
        self.config = config
        self.metrics = NodeMetrics("national")
        self.db = Database(config.database_url)
        self.store = HoldingStore(self.db, models.holdings)
        self.holding = HoldingService(
            db=self.db,
            store=self.store,
            metrics=self.metrics,
            authorize_origin=authorize_prefecture_origin,
        )
        self.provisions = ProvisionLog(self.db)
        self.held = HeldConnections(self.db, HELD_READ_CONNECTIONS)
        self._retention: asyncio.Task[None] | None = None
        self._server: RunningServer | None = None

    def _register(self, server: grpc.aio.Server) -> None:
        national_pb2_grpc.add_NationalServiceServicer_to_server(
            NationalServicer(
                self.db,
                self.holding,
                self.metrics,
                self.config.max_pool_size,
                self.provisions,
                self.held,
            ),
            server,
        )

    async def start(self) -> int:
        await self.db.migrate(MIGRATIONS)
        self.provisions.start()
        self._retention = asyncio.create_task(retention_job(self.db), name="provision-retention")
        self._server = await start_server(
            config=self.config,
            rules=rules(),
            register=self._register,
            service_names=[SERVICE],
            metrics=self.metrics,
        )
        return self._server.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        await self.provisions.stop()
        await self.held.close()
        await self.db.close()
