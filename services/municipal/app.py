"""Wiring of a municipal node."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
from jukinet.server import RunningServer, start_server
from jukinet.tls import RevocationList, TlsFiles, secure_channel
from jukinet.v1 import municipal_pb2_grpc, operator_pb2_grpc, prefecture_pb2_grpc
from services.municipal import models
from services.municipal.access import audited, permissions, rules
from services.municipal.operators import MIGRATIONS, granted_roles, operator_store
from services.municipal.pool import PoolKeeper
from services.municipal.service import CertificateKeys, MunicipalService
from services.municipal.servicer import MunicipalServicer

SERVICE = "jukinet.v1.MunicipalService"
OPERATOR_SERVICE = "jukinet.v1.OperatorService"
__all__ = ["MIGRATIONS", "MunicipalApp", "certificate_keys"]


def certificate_keys(files: TlsFiles) -> CertificateKeys:
    """The node's own key and certificate (move-out certificates are signed with
    them) and the CA and CRL others' certificates are checked against."""
    material = files.load(usage="server")
    key = serialization.load_pem_private_key(material.key, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"tls.key: {files.key}: move-out certificates need an EC key")
    return CertificateKeys(
        key=key,
        certificate=x509.load_pem_x509_certificates(material.cert)[0],
        ca=x509.load_pem_x509_certificate(material.ca),
        revoked=RevocationList(files) if files.crl else frozenset(),
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
        self._channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server: RunningServer | None = None
        self.pusher: Pusher | None = None
        self.service: MunicipalService | None = None

    async def start(self) -> int:
        """Migrate the database, serve, start the pusher and the pool keeper; returns the port."""
        await self.db.migrate(MIGRATIONS)
        channel = secure_channel(self.config.prefecture_target, self.config.tls)
        self._channel = channel
        prefecture = prefecture_pb2_grpc.PrefectureServiceStub(channel)
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
            keys=certificate_keys(self.config.tls),
            clock=self.clock,
        )
        self.service = service

        def add(server: grpc.aio.Server) -> None:
            municipal_pb2_grpc.add_MunicipalServiceServicer_to_server(
                MunicipalServicer(service), server
            )
            operator_pb2_grpc.add_OperatorServiceServicer_to_server(
                OperatorServicer(
                    self.operators, self.roles, OperationLogReader(self.db, models.oplog)
                ),
                server,
            )

        self._server = await start_server(
            config=self.config,
            rules=rules(self.config.local_government_code),
            register=add,
            service_names=[SERVICE, OPERATOR_SERVICE],
            metrics=self.metrics,
            audit=self.log.recorder,
            sessions=OperatorSessions(self.operators, self.roles, permissions()),
        )
        self.log.start()
        self._tasks = [
            asyncio.create_task(pusher.run(), name="pusher"),
            asyncio.create_task(pool.run(), name="pool-keeper"),
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
