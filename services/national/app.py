"""Wiring of the national node."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from jukinet.audit import NodeLog, log_key_path, verifiers_path
from jukinet.cardcrl import CardCrlRelay, NationalCardCrls
from jukinet.clock import SYSTEM_CLOCK, Clock
from jukinet.config import NationalConfig
from jukinet.db import Database
from jukinet.delivery.certificates import MoveInPolicy
from jukinet.delivery.receiver import Receiver
from jukinet.delivery.store import IdentityStore
from jukinet.identity import Identity
from jukinet.metrics import NationalMetrics
from jukinet.purposes import PurposeRegistry, load_registry
from jukinet.relay.node import (
    Channels,
    NodeKeys,
    RelayHop,
    RelayRecorder,
    RelayServicer,
    SigningKeeper,
)
from jukinet.relay.route import national_next
from jukinet.relay.store import DirectoryStore
from jukinet.residentcard import CardTrust
from jukinet.server import RunningServer, start_server
from jukinet.v1 import card_pb2_grpc, national_pb2_grpc, relay_pb2_grpc
from services.national import models
from services.national.access import audited, card_crl_publisher, rules
from services.national.connections import KeptConnections
from services.national.logic import authorize_prefecture_origin
from services.national.provisions import ProvisionLog, retention_job
from services.national.service import NationalService
from services.national.servicer import NationalServicer

SERVICE = "jukinet.v1.NationalService"
RELAY_SERVICE = "jukinet.v1.RelayService"
CARD_CRL_SERVICE = "jukinet.v1.NationalCardRevocationService"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Lookups for agencies at once on kept connections (the gateway sends a few
# calls at a time; more wait for a connection).
KEPT_READ_CONNECTIONS = 4


class NationalApp:
    """The national node: database, identity records, provision log, server.
    ``registry`` replaces the configured purpose registry file and ``clock`` the
    system clock (tests)."""

    def __init__(
        self,
        config: NationalConfig,
        *,
        registry: PurposeRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        # Loaded here so that a bad registry stops the start with one clear line.
        self.registry = (
            registry
            if registry is not None
            else load_registry(Path(config.purposes) if config.purposes else None)
        )
        # Labels name registered agencies and purposes only.
        self.metrics = NationalMetrics(
            agencies=self.registry.agency_codes,
            purposes=[p.code for p in self.registry],
        )
        self.db = Database(config.database_url, on_storage_full=self.metrics.storage.count_full)
        self.store = IdentityStore(models.identities)
        self.log = NodeLog(
            identity=Identity.national(),
            db=self.db,
            tables=models.oplog,
            audited=audited(),
            clock=clock,
            log_key=log_key_path(config.log_key, config.tls.key),
            verifiers=verifiers_path(config.log_verifiers, config.tls.ca),
            interval=config.checkpoint_interval,
        )
        self.receiver = Receiver(
            db=self.db,
            store=self.store,
            metrics=self.metrics.receiver,
            authorize_origin=authorize_prefecture_origin,
            clock=clock,
            move_in=MoveInPolicy.from_tls(config.tls),
        )
        self.provisions = ProvisionLog(self.db, self.log.oplog)
        self.kept = KeptConnections(self.db, KEPT_READ_CONNECTIONS)
        self.service = NationalService(
            db=self.db,
            store=self.store,
            receiver=self.receiver,
            provisions=self.provisions,
            oplog=self.log.oplog,
            kept=self.kept,
            metrics=self.metrics,
            max_pool_size=config.max_pool_size,
            registry=self.registry,
        )
        # Relayed requests between prefectures, on the directory this node signs.
        self.directory = SigningKeeper(
            path=Path(config.directory) if config.directory else None,
            keys=NodeKeys.from_tls(config.tls),
            db=self.db,
            store=DirectoryStore(models.relay_directory),
            clock=clock,
            interval=config.directory_refresh_interval,
        )
        self.relay_channels = Channels(config.tls)
        self.relay = RelayHop(
            route=national_next,
            directory=self.directory,
            recorder=RelayRecorder(self.db, self.log.oplog, self.metrics.relay, clock),
            channels=self.relay_channels,
            clock=clock,
        )
        # The top tier: it keeps every municipality's card CRL, and passes none up.
        self.card_crls = CardCrlRelay(
            CardTrust.from_files(config.tls.ca, config.tls.crl), card_crl_publisher
        )
        self._retention: asyncio.Task[None] | None = None
        self._directory_task: asyncio.Task[None] | None = None
        self._server: RunningServer | None = None

    def _register(self, server: grpc.aio.Server) -> None:
        national_pb2_grpc.add_NationalServiceServicer_to_server(
            NationalServicer(self.receiver, self.service, self.log.witness, self.log.keeper), server
        )
        relay_pb2_grpc.add_RelayServiceServicer_to_server(
            RelayServicer(self.relay.relay, self.directory), server
        )
        card_pb2_grpc.add_NationalCardRevocationServiceServicer_to_server(
            NationalCardCrls(self.card_crls), server
        )

    async def start(self) -> int:
        """Migrate, start the provision log, its retention job and the server; returns the port."""
        await self.db.migrate(MIGRATIONS)
        await self.directory.load()
        # A bad directory file stops the start with one clear line.
        await self.directory.refresh()
        self.provisions.start()
        self._retention = asyncio.create_task(retention_job(self.db), name="provision-retention")
        self._server = await start_server(
            config=self.config,
            rules=rules(),
            register=self._register,
            service_names=[SERVICE, RELAY_SERVICE, CARD_CRL_SERVICE],
            metrics=self.metrics,
            audit=self.log.recorder,
        )
        self.log.start()
        self._directory_task = asyncio.create_task(self.directory.run(), name="relay-directory")
        return self._server.port

    async def stop(self) -> None:
        """Stop the server and the background work; close the database."""
        if self._directory_task is not None:
            self._directory_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._directory_task
        if self._server is not None:
            await self._server.stop()
        await self.relay_channels.close()
        await self.log.stop()
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        await self.provisions.stop()
        await self.kept.close()
        await self.db.close()
