"""Wiring of the agency gateway: purpose registry, quotas, one channel to the
national node, the spool of refusals to record, server. The gateway keeps no
data of its own beyond that spool."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from gateway.access import rules
from gateway.national import NationalClient
from gateway.quotas import Clock, Quotas
from gateway.service import GatewayService
from gateway.servicer import GatewayServicer
from gateway.spool import DenialSpool, SpooledDenial
from jukinet.config import GatewayConfig
from jukinet.metrics import GatewayMetrics
from jukinet.purposes import PurposeRegistry, load_registry
from jukinet.server import MAX_MESSAGE, RunningServer, start_server
from jukinet.tls import secure_channel
from jukinet.v1 import gateway_pb2_grpc, national_pb2_grpc

SERVICE = "jukinet.v1.GatewayService"


class GatewayApp:
    """The gateway node. ``registry`` and ``clock`` replace the configured
    registry file and the quota clock (tests)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        registry: PurposeRegistry | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        # Loaded here so that a bad registry stops the start with one clear line.
        self.registry = (
            registry
            if registry is not None
            else load_registry(Path(config.purposes) if config.purposes else None)
        )
        # Labels name registered agencies and purposes only.
        self.metrics = GatewayMetrics(
            agencies=self.registry.agency_codes,
            purposes=[p.code for p in self.registry],
        )
        self.quotas = Quotas(clock=clock)
        # Read at start-up: refusals spooled before a restart are recorded once
        # the national node answers.
        self.spool = DenialSpool(Path(config.denial_spool))
        self._channel: grpc.aio.Channel | None = None
        self._service: GatewayService | None = None
        self._server: RunningServer | None = None

    async def start(self) -> int:
        """Open the channel to the national node and serve agencies; returns the port."""
        # One long-lived channel to the national node, shared by every call.
        channel = secure_channel(
            self.config.national_target,
            self.config.tls,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self._channel = channel
        national = NationalClient(national_pb2_grpc.NationalServiceStub(channel))

        async def record(denial: SpooledDenial) -> None:
            await national.record_denial(
                denial.agency_code,
                denial.purpose_code,
                denial.operation,
                denial.resident_code,
                denial.reason,
            )

        self.spool.start(record)
        service = GatewayService(
            registry=self.registry,
            national=national,
            quotas=self.quotas,
            metrics=self.metrics,
            spool=self.spool,
            batch_pipeline=self.config.batch_pipeline,
        )
        self._service = service

        def register(server: grpc.aio.Server) -> None:
            gateway_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(service), server)

        self._server = await start_server(
            config=self.config,
            rules=rules(),
            register=register,
            service_names=[SERVICE],
            metrics=self.metrics,
        )
        return self._server.port

    async def stop(self) -> None:
        """Stop serving, cancel the national calls still in flight, close the channel."""
        if self._server is not None:
            await self._server.stop()
        if self._service is not None:
            await self._service.close()
        await self.spool.stop()
        if self._channel is not None:
            await self._channel.close(grace=None)
