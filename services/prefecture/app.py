"""Wiring of a prefecture node."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path

import grpc

from jukinet.audit import NodeLog, log_key_path, verifiers_path
from jukinet.cardcrl import CardCrlRelay, PrefectureCardCrls
from jukinet.clock import SYSTEM_CLOCK, Clock
from jukinet.config import PrefectureConfig
from jukinet.db import Database
from jukinet.delivery.certificates import MoveInPolicy
from jukinet.delivery.outbox import Outbox
from jukinet.delivery.pusher import Pusher
from jukinet.delivery.receiver import Receiver
from jukinet.delivery.store import IdentityStore
from jukinet.identity import Identity
from jukinet.localgov import all_local_governments
from jukinet.metrics import PrefectureMetrics
from jukinet.relay.node import (
    Channels,
    FetchingKeeper,
    NodeKeys,
    RelayHop,
    RelayRecorder,
    RelayServicer,
)
from jukinet.relay.route import prefecture_next
from jukinet.relay.store import DirectoryStore
from jukinet.residentcard import CardTrust
from jukinet.server import RunningServer, start_server
from jukinet.tls import secure_channel
from jukinet.v1 import card_pb2_grpc, national_pb2_grpc, prefecture_pb2_grpc, relay_pb2_grpc
from services.prefecture import models
from services.prefecture.access import audited, card_crl_publisher, rules
from services.prefecture.logic import authorize_municipal_origin
from services.prefecture.relay import OutboxRelay
from services.prefecture.repository import PrefectureRepository
from services.prefecture.service import PrefectureService
from services.prefecture.servicer import PrefectureServicer

SERVICE = "jukinet.v1.PrefectureService"
RELAY_SERVICE = "jukinet.v1.RelayService"
CARD_CRL_SERVICE = "jukinet.v1.CardRevocationService"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class PrefectureApp:
    """A prefecture node: identity records, relay outbox and its pusher, server."""

    def __init__(self, config: PrefectureConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        # Peers in labels: the prefecture's own local governments.
        self.metrics = PrefectureMetrics(
            peers=[
                g.code for g in all_local_governments() if g.code.startswith(config.prefecture_code)
            ],
        )
        self.db = Database(config.database_url, on_storage_full=self.metrics.storage.count_full)
        self.store = IdentityStore(models.identities)
        self.outbox = Outbox(models.outbox)
        self.log = NodeLog(
            identity=Identity.prefecture(config.prefecture_code),
            db=self.db,
            tables=models.oplog,
            audited=audited(),
            clock=clock,
            log_key=log_key_path(config.log_key, config.tls.key),
            verifiers=verifiers_path(config.log_verifiers, config.tls.ca),
            interval=config.checkpoint_interval,
        )
        # Relayed requests of its municipalities, on the directory from the national node.
        self.directory = FetchingKeeper(
            db=self.db,
            store=DirectoryStore(models.relay_directory),
            trust=NodeKeys.from_tls(config.tls).trust,
            clock=clock,
            interval=config.directory_refresh_interval,
        )
        self.relay_channels = Channels(config.tls)
        self.relay = RelayHop(
            route=functools.partial(prefecture_next, config.prefecture_code),
            directory=self.directory,
            recorder=RelayRecorder(self.db, self.log.oplog, self.metrics.relay, clock),
            channels=self.relay_channels,
            clock=clock,
        )
        self._channel: grpc.aio.Channel | None = None
        self._pusher: Pusher | None = None
        self._push_task: asyncio.Task[None] | None = None
        self._directory_task: asyncio.Task[None] | None = None
        self._crl_task: asyncio.Task[None] | None = None
        self._server: RunningServer | None = None
        self.card_crls: CardCrlRelay | None = None

    async def start(self) -> int:
        """Migrate, start the server and the relay pusher; returns the port."""
        await self.db.migrate(MIGRATIONS)
        channel = secure_channel(self.config.national_target, self.config.tls)
        self._channel = channel
        national = national_pb2_grpc.NationalServiceStub(channel)
        national_relay = relay_pb2_grpc.RelayServiceStub(channel)
        self.directory.fetch = national_relay.GetDirectory
        self.relay.upward = (Identity.national(), national_relay)
        await self.directory.load()
        self.log.keeper.submit = national.SubmitCheckpoint
        # The national node is the top tier: each prefecture witnesses its log.
        self.log.witness_top(Identity.national(), national.GetLogHead, national.CosignLogHead)
        self._pusher = Pusher(
            db=self.db,
            outbox=self.outbox,
            open_stream=national.PushNotifications,
            metrics=self.metrics.delivery.upstream(Identity.national().uri),
            batch_size=self.config.push_batch_size,
            window=self.config.push_window,
            clock=self.clock,
        )
        receiver = Receiver(
            db=self.db,
            store=self.store,
            metrics=self.metrics.receiver,
            authorize_origin=authorize_municipal_origin,
            relay=OutboxRelay(self.outbox, self._pusher),
            clock=self.clock,
            move_in=MoveInPolicy.from_tls(self.config.tls, self.config.prefecture_code),
        )
        service = PrefectureService(
            db=self.db,
            repository=PrefectureRepository(self.store, self.outbox),
            receiver=receiver,
            national=national,
            metrics=self.metrics,
        )

        national_crls = card_pb2_grpc.NationalCardRevocationServiceStub(channel)
        code = self.config.prefecture_code
        crls = CardCrlRelay(
            CardTrust.from_files(self.config.tls.ca, self.config.tls.crl),
            card_crl_publisher(code),
            up=(national_crls.PublishCardCrls, national_crls.ListCardCrls),
            own=lambda municipality: municipality.startswith(code),
            interval=self.config.card_crl_interval,
        )
        self.card_crls = crls

        def register(server: grpc.aio.Server) -> None:
            prefecture_pb2_grpc.add_PrefectureServiceServicer_to_server(
                PrefectureServicer(receiver, service, self.log.witness), server
            )
            relay_pb2_grpc.add_RelayServiceServicer_to_server(
                RelayServicer(self.relay.relay, self.directory), server
            )
            card_pb2_grpc.add_CardRevocationServiceServicer_to_server(
                PrefectureCardCrls(crls), server
            )

        self._server = await start_server(
            config=self.config,
            rules=rules(self.config.prefecture_code),
            register=register,
            service_names=[SERVICE, RELAY_SERVICE, CARD_CRL_SERVICE],
            metrics=self.metrics,
            audit=self.log.recorder,
        )
        self.log.start()
        self._push_task = asyncio.create_task(self._pusher.run(), name="relay-pusher")
        self._directory_task = asyncio.create_task(self.directory.run(), name="relay-directory")
        self._crl_task = asyncio.create_task(crls.run(), name="card-crls")
        return self._server.port

    async def stop(self) -> None:
        """Stop the pusher and the server; close the channel and the database."""
        for task in (self._push_task, self._directory_task, self._crl_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self._server.stop()
        await self.relay_channels.close()
        await self.log.stop()
        if self._channel is not None:
            await self._channel.close(grace=None)
        await self.db.close()
