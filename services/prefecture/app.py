"""Wiring of a prefecture node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

import grpc
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.config import PrefectureConfig
from jukinet.db import Database
from jukinet.delivery.outbox import Outbox, PendingEntry
from jukinet.delivery.pusher import Pusher
from jukinet.delivery.receiver import HoldingService
from jukinet.delivery.store import HoldingStore
from jukinet.metrics import NodeMetrics
from jukinet.server import RunningServer, start_server
from jukinet.tls import secure_channel
from jukinet.v1 import common_pb2, national_pb2_grpc, prefecture_pb2_grpc
from services.prefecture import models
from services.prefecture.access import rules
from services.prefecture.logic import authorize_municipal_origin
from services.prefecture.servicer import PrefectureServicer

SERVICE = "jukinet.v1.PrefectureService"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class PrefectureApp:
    """A prefecture node: holdings, relay outbox and its pusher, server."""

    def __init__(self, config: PrefectureConfig) -> None:
        self.config = config
        self.metrics = NodeMetrics("prefecture")
        self.db = Database(config.database_url)
        self.store = HoldingStore(self.db, models.holdings)
        self.outbox = Outbox(models.outbox)
        self._channel: grpc.aio.Channel | None = None
        self._pusher: Pusher | None = None
        self._push_task: asyncio.Task[None] | None = None
        self.holding = HoldingService(
            db=self.db,
            store=self.store,
            metrics=self.metrics,
            authorize_origin=authorize_municipal_origin,
            on_applied=self._relay,
            after_commit=self._wake,
        )
        self._server: RunningServer | None = None

    async def _relay(
        self, conn: AsyncConnection, applied: Sequence[tuple[common_pb2.Notification, bytes]]
    ) -> None:
        """Every applied notification goes into the relay outbox, in the same transaction."""
        first = await self.outbox.reserve(conn, len(applied))
        await self.outbox.append(
            conn,
            first,
            [
                PendingEntry(n.origin_code, n.sequence, n.record.resident_code, payload)
                for n, payload in applied
            ],
        )

    def _wake(self) -> None:
        if self._pusher is not None:
            self._pusher.wake()

    async def start(self) -> int:
        await self.db.migrate(MIGRATIONS)
        channel = secure_channel(self.config.national_target, self.config.tls)
        self._channel = channel
        national = national_pb2_grpc.NationalServiceStub(channel)
        self._pusher = Pusher(
            db=self.db,
            outbox=self.outbox,
            open_stream=national.PushNotifications,
            metrics=self.metrics,
            batch_size=self.config.push_batch_size,
            window=self.config.push_window,
        )

        def register(server: grpc.aio.Server) -> None:
            prefecture_pb2_grpc.add_PrefectureServiceServicer_to_server(
                PrefectureServicer(self.db, self.holding, self.outbox, national, self.metrics),
                server,
            )

        self._server = await start_server(
            config=self.config,
            rules=rules(self.config.prefecture_code),
            register=register,
            service_names=[SERVICE],
            metrics=self.metrics,
        )
        self._push_task = asyncio.create_task(self._pusher.run(), name="relay-pusher")
        return self._server.port

    async def stop(self) -> None:
        if self._push_task is not None:
            self._push_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._push_task
        if self._server is not None:
            await self._server.stop()
        if self._channel is not None:
            await self._channel.close(grace=None)
        await self.db.close()
