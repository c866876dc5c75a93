"""Running a node: one grpc.aio server with mutual TLS, the identity
interceptor, gRPC health, server reflection and a Prometheus endpoint, stopped
cleanly on SIGTERM; optionally a plaintext port serving gRPC health only, for
probes that cannot present a client certificate (a kubelet's).
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import pkgutil
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import jukinet.v1
from jukinet.config import NodeConfig
from jukinet.errors import ConfigError
from jukinet.interceptors import AuditHook, AuthInterceptor, Rule, SessionHook, authenticated
from jukinet.metrics import NodeMetrics, stop_metrics_server
from jukinet.tls import SERVER_OPTIONS, RevocationList, revocation_source, server_credentials

log = logging.getLogger("jukinet.server")

MAX_MESSAGE = 64 * 1024 * 1024
"""The largest message a node's client channels accept (export pages, relayed answers)."""

_MIB = 1024 * 1024
RECEIVE_LIMITS: dict[str, int] = {
    # Agencies send claims: a VerifyBatch message of at most 10,000 items of a
    # few hundred bytes each.
    "jukinet.v1.GatewayService": 4 * _MIB,
    # Operators send one resident's change, or an import batch (1,000 rows by
    # default, 10,000 at most, about 1 KB a row).
    "jukinet.v1.MunicipalService": 16 * _MIB,
    # The tiers above take push batches of up to 10,000 notifications of at
    # most about 3 KB each (every text field at its longest).
    "jukinet.v1.PrefectureService": 32 * _MIB,
    "jukinet.v1.NationalService": 32 * _MIB,
}
"""The largest request message each node's server accepts, by the service it serves.

gRPC reads a unary request whole before any handler (and so before the
caller's right to call is checked) runs; this limit is what bounds the memory
an identity without a right to call can make a node spend. A larger message is
refused with RESOURCE_EXHAUSTED (tests/integration/test_hostile_requests.py
bounds the memory three refused 60 MB calls cost).
"""
DEFAULT_RECEIVE_LIMIT = 4 * _MIB
"""The receive limit of a server whose services are not listed above."""


def receive_limit(service_names: list[str]) -> int:
    """The receive limit of a server serving ``service_names``: the largest any of them needs."""
    return max(
        (RECEIVE_LIMITS.get(name, DEFAULT_RECEIVE_LIMIT) for name in service_names),
        default=DEFAULT_RECEIVE_LIMIT,
    )


REFLECTION_METHOD = f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"
"""The one method of gRPC server reflection (v1alpha, which grpcurl and buf curl speak)."""


def _load_service_descriptors(service_names: list[str]) -> None:
    """Put the files that declare the node's services into the default descriptor pool.

    Reflection answers from that pool, and a generated ``*_pb2_grpc`` module
    imports only the files of its messages, not the one declaring its service
    (``national.proto`` holds nothing but the service): without this the
    services are listed but cannot be described.
    """
    for module in pkgutil.iter_modules(jukinet.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"jukinet.v1.{module.name}")
    pool = descriptor_pool.Default()
    for name in service_names:
        pool.FindServiceByName(name)  # KeyError: a name no proto declares


@dataclass
class RunningServer:
    """A started server and what to stop with it."""

    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    metrics_server: WSGIServer | None
    health_server: grpc.aio.Server | None = None
    """The plaintext health-only server (``health_listen``), if any."""
    health_port: int = 0

    async def stop(self, grace: float = 2.0) -> None:
        """Report NOT_SERVING, let calls in flight finish for ``grace`` seconds, stop metrics."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        # Stopped last, so a probe sees NOT_SERVING (not a refused connection)
        # while the calls in flight finish.
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.metrics_server is not None:
            stop_metrics_server(self.metrics_server)


async def start_server(
    *,
    config: NodeConfig,
    rules: Mapping[str, Rule],
    register: Callable[[grpc.aio.Server], None],
    service_names: list[str],
    metrics: NodeMetrics,
    audit: AuditHook | None = None,
    sessions: SessionHook | None = None,
) -> RunningServer:
    """Bind the node's port with mTLS and start serving; ``audit`` logs operator calls;
    ``sessions`` resolves the operator sessions of terminals' calls."""
    revoked = revocation_source(config.tls)
    material = config.tls.load(usage="server")
    metrics.watch_certificates(
        node_cert=material.cert,
        ca_cert=material.ca,
        crl_next_update=revoked.next_update if isinstance(revoked, RevocationList) else None,
    )
    server = grpc.aio.server(
        interceptors=[
            AuthInterceptor(
                # Reflection shows the schema only (the protos are public), so
                # any federation member may list and describe the services
                # with its certificate, as with grpcurl or buf curl.
                {REFLECTION_METHOD: authenticated(), **rules},
                revoked=revoked,
                on_denied=lambda method, reason: metrics.denials.labels(method, reason).inc(),
                on_finished=metrics.observe_rpc,
                ca=material.ca,
                audit=audit,
                sessions=sessions,
            )
        ],
        options=[
            ("grpc.max_receive_message_length", receive_limit(service_names)),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # Keepalive: the clients' ping rate is allowed (jukinet.tls).
            *SERVER_OPTIONS,
            # gRPC sets SO_REUSEPORT by default, so a second node started on a
            # taken port would bind it too and share its calls: refuse instead.
            ("grpc.so_reuseport", 0),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _load_service_descriptors(service_names)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    check_port_free(config.listen)
    if config.health_listen:
        check_port_free(config.health_listen, setting="health_listen")
    try:
        port = server.add_secure_port(config.listen, server_credentials(config.tls))
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(
            f"listen: cannot bind {config.listen} (is another process using the port?)"
        )
    metrics_server = None
    if config.metrics_listen:
        try:
            metrics_server = metrics.serve(config.metrics_listen)
        except OSError as exc:
            raise ConfigError(
                f"metrics_listen: cannot bind {config.metrics_listen}: {exc.strerror or exc}"
            ) from None
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(server, port, health_servicer, metrics_server)
    if config.health_listen:
        await _add_health_server(running, config.health_listen)
    return running


async def _add_health_server(running: RunningServer, listen: str) -> None:
    """Start the health-only port once the node serves; stop everything if it cannot bind."""
    try:
        running.health_server, running.health_port = await start_health_server(
            listen, running.health
        )
    except ConfigError:
        await running.stop(0)
        raise


async def start_health_server(listen: str, health_servicer: Any) -> tuple[grpc.aio.Server, int]:
    """Serve ``health_servicer`` alone, without TLS, on host:port ``listen``; (server, port).

    A kubelet's gRPC probe cannot present a client certificate, so it cannot
    reach the node's mTLS port. This port answers grpc.health.v1.Health and
    nothing else (every other method, reflection included, is UNIMPLEMENTED):
    it tells whoever reaches it only whether the node serves. It shares the
    servicer of the mTLS port, so both report NOT_SERVING from the start of
    a shutdown.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    check_port_free(listen, setting="health_listen")
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(
            f"health_listen: cannot bind {listen} (is another process using the port?)"
        )
    await server.start()
    return server, port


def check_port_free(listen: str, *, setting: str = "listen") -> None:
    """Raise ConfigError (naming ``setting``) if host:port ``listen`` cannot be bound.

    gRPC would say so too, but in a multi-line log of its own core; this
    probe makes the common case (a node already running there) one line.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        addresses = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{setting}: cannot resolve {listen}: {exc}") from None
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # Like gRPC's own socket: a port left in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"{setting}: {listen} is already in use (is another node running there?)"
                    ) from None
                raise ConfigError(
                    f"{setting}: cannot bind {listen}: {exc.strerror or exc}"
                ) from None


class App(Protocol):
    """What a node's app.py provides."""

    async def start(self) -> int:
        """Start the node's server and background tasks; returns the port it listens on."""
        ...

    async def stop(self) -> None:
        """Stop serving and the background tasks, and release what the node holds."""
        ...


async def run_until_signalled(app: App, name: str) -> None:
    """Start ``app``, log where it listens, and stop it on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = await app.start()
    log.info("%s listening on port %d", name, port)
    print(f"{name} ready on port {port}", flush=True)
    await stop.wait()
    log.info("%s stopping", name)
    await app.stop()
