"""Wiring of the national node."""

from __future__ import annotations

from pathlib import Path

import grpc

from jukinet.config import NationalConfig
from jukinet.db import Database
from jukinet.holding_service import HoldingService
from jukinet.holdings import HoldingStore
from jukinet.identity import Identity, Kind
from jukinet.interceptors import Rule
from jukinet.metrics import NodeMetrics
from jukinet.server import RunningServer, start_server
from jukinet.v1 import national_pb2_grpc
from services.national import models
from services.national.servicer import NationalServicer, authorize_prefecture_origin

SERVICE = "jukinet.v1.NationalService"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _prefecture(identity: Identity) -> bool:
    return identity.kind is Kind.PREFECTURE


def _national_operator(identity: Identity) -> bool:
    return identity.kind is Kind.OPERATOR and identity.code == "national"


def rules() -> dict[str, Rule]:
    """Who may call each method."""
    m = f"/{SERVICE}/"
    return {
        m + "PushNotifications": _prefecture,
        m + "AllocateCodePool": _prefecture,
        m + "GetIdentity": _national_operator,
        m + "ExportIdentities": _national_operator,
        m + "GetDeliveryStatus": _national_operator,
    }


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
        self._server: RunningServer | None = None

    def _register(self, server: grpc.aio.Server) -> None:
        national_pb2_grpc.add_NationalServiceServicer_to_server(
            NationalServicer(self.db, self.holding, self.metrics, self.config.max_pool_size),
            server,
        )

    async def start(self) -> int:
        await self.db.migrate(MIGRATIONS)
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
        await self.db.close()
