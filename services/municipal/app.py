"""Wiring of a municipal node."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from jukinet import copydoc
from jukinet.audit import NodeLog, log_key_path, verifiers_path
from jukinet.clock import SYSTEM_CLOCK, Clock
from jukinet.config import MunicipalConfig
from jukinet.db import Database
from jukinet.delivery.outbox import Outbox
from jukinet.delivery.pusher import Pusher
from jukinet.errors import ConfigError
from jukinet.identity import Identity
from jukinet.metrics import MunicipalMetrics
from jukinet.operators import OperationLogReader, OperatorServicer, OperatorSessions
from jukinet.relay.endpoint import RelayClient, RelayEndpoint, RelayHandlers
from jukinet.relay.node import FetchingKeeper, NodeKeys, RelayRecorder, RelayServicer
from jukinet.relay.store import AnswerStore, DirectoryStore
from jukinet.residentcard import CardTrust
from jukinet.server import RunningServer, start_server
from jukinet.tls import TlsFiles, secure_channel
from jukinet.v1 import (
    card_pb2_grpc,
    municipal_pb2_grpc,
    operator_pb2_grpc,
    prefecture_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
)
from services.municipal import models
from services.municipal.access import audited, permissions, rules
from services.municipal.cards import CardCrlKeeper, ResidentCards
from services.municipal.copies import Copies
from services.municipal.notices import NoticeSender
from services.municipal.operators import MIGRATIONS, granted_roles, operator_store
from services.municipal.pool import PoolKeeper
from services.municipal.service import CertificateKeys, MunicipalService
from services.municipal.servicer import MunicipalServicer, ResidentCardServicer

SERVICE = "jukinet.v1.MunicipalService"
OPERATOR_SERVICE = "jukinet.v1.OperatorService"
RELAY_SERVICE = "jukinet.v1.RelayService"
CARD_SERVICE = "jukinet.v1.ResidentCardService"
__all__ = ["MIGRATIONS", "MunicipalApp", "certificate_keys", "resident_cards"]


def certificate_keys(files: TlsFiles) -> CertificateKeys:
    """The node's own key and certificate (move-out certificates are signed with
    them) and the CA and CRL others' certificates are checked against."""
    return _certificate_keys(NodeKeys.from_tls(files))


def _certificate_keys(keys: NodeKeys) -> CertificateKeys:
    return CertificateKeys(
        key=keys.key, certificate=keys.certificate, ca=keys.trust.ca, revoked=keys.trust.revoked
    )


def resident_cards(
    config: MunicipalConfig, db: Database, *, clock: Clock = SYSTEM_CLOCK
) -> ResidentCards:
    """The node's resident cards: its card CA (on this host) and the card trust,
    from the root alone until the CRLs of the card CAs arrive."""
    ca_dir = config.resident_card_ca_dir()
    try:
        trust = CardTrust.from_files(config.tls.ca, config.tls.crl)
        if not (ca_dir / "ca.key").is_file():
            raise FileNotFoundError(f"no {ca_dir / 'ca.key'}")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"resident_card_ca: {ca_dir}: {exc}") from None
    return ResidentCards(
        db=db,
        municipality=config.local_government_code,
        ca_dir=ca_dir,
        trust=trust,
        clock=clock,
    )


class MunicipalApp:
    """A municipal node: register, code pool keeper, pusher, server."""

    def __init__(self, config: MunicipalConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.metrics = MunicipalMetrics()
        self.db = Database(config.database_url, on_storage_full=self.metrics.storage.count_full)
        self.outbox = Outbox(models.outbox)
        self.log = NodeLog(
            identity=Identity.municipality(config.local_government_code),
            db=self.db,
            tables=models.oplog,
            audited=audited(),
            clock=clock,
            log_key=log_key_path(config.log_key, config.tls.key),
            verifiers=verifiers_path(config.log_verifiers, config.tls.ca),
            interval=config.checkpoint_interval,
        )
        self.operators = operator_store(config, self.db, clock=clock)
        self.roles = granted_roles(config, self.db, clock=clock)
        # Requests to and from other municipalities, through the prefecture.
        self.relay_keys = NodeKeys.from_tls(config.tls)
        self.directory = FetchingKeeper(
            db=self.db,
            store=DirectoryStore(models.relay_directory),
            trust=self.relay_keys.trust,
            clock=clock,
            interval=config.directory_refresh_interval,
        )
        recorder = RelayRecorder(self.db, self.log.oplog, self.metrics.relay, clock)
        self.relay_handlers = RelayHandlers()
        """Register a handler per kind of request this node answers (before start)."""
        self.relay_endpoint = RelayEndpoint(
            municipality=config.local_government_code,
            keys=self.relay_keys,
            handlers=self.relay_handlers,
            answers=AnswerStore(models.relay_answers),
            db=self.db,
            recorder=recorder,
            clock=clock,
        )
        self.relay_client = RelayClient(
            municipality=config.local_government_code,
            keys=self.relay_keys,
            directory=self.directory,
            recorder=recorder,
            clock=clock,
        )
        """Sends requests to other municipalities (once started)."""
        self.notices = NoticeSender(db=self.db, client=self.relay_client, clock=clock)
        self._channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server: RunningServer | None = None
        self.pusher: Pusher | None = None
        self.service: MunicipalService | None = None
        self.cards = resident_cards(config, self.db, clock=clock)
        self.copies = Copies(
            db=self.db,
            municipality=config.local_government_code,
            oplog=self.log.oplog,
            cards=self.cards,
            signer=copydoc.load_document_signer(*config.document_files(), Path(config.tls.ca)),
            fonts=copydoc.Fonts.load(config.copy_font_mincho, config.copy_font_gothic),
            relay=self.relay_client,
            clock=clock,
        )
        """Copies of resident records issued here, and answered for issue elsewhere."""

    async def start(self) -> int:
        """Migrate the database, serve, start the pusher, the pool keeper and the card
        CRL keeper; returns the port."""
        await self.db.migrate(MIGRATIONS)
        # The CRL from the record, before a card is checked here.
        await self.cards.resign()
        channel = secure_channel(self.config.prefecture_target, self.config.tls)
        self._channel = channel
        prefecture = prefecture_pb2_grpc.PrefectureServiceStub(channel)
        prefecture_relay = relay_pb2_grpc.RelayServiceStub(channel)
        self.directory.fetch = prefecture_relay.GetDirectory
        self.relay_client.prefecture = prefecture_relay
        await self.directory.load()
        self.log.keeper.submit = prefecture.SubmitCheckpoint
        pool = PoolKeeper(
            db=self.db,
            municipality=self.config.local_government_code,
            prefecture=prefecture,
            metrics=self.metrics,
            low_watermark=self.config.pool_low_watermark,
            refill_size=self.config.pool_refill_size,
        )
        pusher = Pusher(
            db=self.db,
            outbox=self.outbox,
            open_stream=prefecture.PushNotifications,
            metrics=self.metrics.delivery.upstream(
                Identity.prefecture(self.config.local_government_code[:2]).uri
            ),
            batch_size=self.config.push_batch_size,
            window=self.config.push_window,
            clock=self.clock,
        )
        self.pusher = pusher
        service = MunicipalService(
            db=self.db,
            outbox=self.outbox,
            pool=pool,
            pusher=pusher,
            prefecture=prefecture,
            municipality=self.config.local_government_code,
            metrics=self.metrics,
            keys=_certificate_keys(self.relay_keys),
            clock=self.clock,
            notices_queued=self.notices.wake,
            cards=self.cards,
            relay=self.relay_client,
            copies=self.copies,
        )
        self.service = service
        self.relay_handlers.register(relay_pb2.RELAY_KIND_MOVE_IN_NOTICE, service.move_in_noticed)
        self.relay_handlers.register(relay_pb2.RELAY_KIND_MOVE_OUT_DATA, service.move_out_data)
        self.relay_handlers.register(relay_pb2.RELAY_KIND_COPY, self.copies.answer_relayed)
        card_crls = card_pb2_grpc.CardRevocationServiceStub(channel)
        crl_keeper = CardCrlKeeper(
            self.cards,
            card_crls.PublishCardCrls,
            card_crls.ListCardCrls,
            interval=self.config.card_crl_interval,
        )

        def add(server: grpc.aio.Server) -> None:
            municipal_pb2_grpc.add_MunicipalServiceServicer_to_server(
                MunicipalServicer(service, self.copies), server
            )
            operator_pb2_grpc.add_OperatorServiceServicer_to_server(
                OperatorServicer(
                    self.operators, self.roles, OperationLogReader(self.db, models.oplog)
                ),
                server,
            )
            relay_pb2_grpc.add_RelayServiceServicer_to_server(
                RelayServicer(self.relay_endpoint.relay, self.directory), server
            )
            card_pb2_grpc.add_ResidentCardServiceServicer_to_server(
                ResidentCardServicer(self.cards), server
            )

        self._server = await start_server(
            config=self.config,
            rules=rules(self.config.local_government_code),
            register=add,
            service_names=[SERVICE, OPERATOR_SERVICE, CARD_SERVICE, RELAY_SERVICE],
            metrics=self.metrics,
            audit=self.log.recorder,
            sessions=OperatorSessions(self.operators, self.roles, permissions()),
        )
        self.log.start()
        self._tasks = [
            asyncio.create_task(pusher.run(), name="pusher"),
            asyncio.create_task(pool.run(), name="pool-keeper"),
            asyncio.create_task(self.directory.run(), name="relay-directory"),
            asyncio.create_task(self.notices.run(), name="notice-sender"),
            asyncio.create_task(crl_keeper.run(), name="card-crls"),
        ]
        return self._server.port

    async def stop(self) -> None:
        """Stop the pusher and the pool keeper, then the server, the channel and the database."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.stop()
        await self.log.stop()
        if self._channel is not None:
            await self._channel.close(grace=None)
        await self.db.close()
