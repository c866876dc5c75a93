"""The plaintext health-only port (``health_listen``): what a kubelet's gRPC
probe, which has no client certificate, can reach, and nothing more."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jukinet.client import tls_files
from jukinet.config import NationalConfig, load_config
from jukinet.errors import ConfigError
from jukinet.tls import secure_channel
from jukinet.v1 import national_pb2
from services.national.app import SERVICE, NationalApp

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, pki_dir: Path, **overrides: str) -> NationalConfig:
    settings: dict[str, Any] = {
        "listen": f"127.0.0.1:{_free_port()}",
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'national.db'}",
        "health_listen": f"127.0.0.1:{_free_port()}",
        **overrides,
    }
    return NationalConfig(tls=tls_files(pki_dir, "national"), **settings)


@dataclasses.dataclass
class Node:
    """A running national node with a health port, and a plaintext channel to it."""

    app: NationalApp
    config: NationalConfig
    health: grpc.aio.Channel


@pytest.fixture
async def node(tmp_path: Path, pki_dir: Path) -> AsyncIterator[Node]:
    """The national node on SQLite with ``health_listen`` set."""
    config = _config(tmp_path, pki_dir)
    app = NationalApp(config)
    await app.start()
    channel = grpc.aio.insecure_channel(config.health_listen)
    try:
        yield Node(app, config, channel)
    finally:
        await channel.close(None)
        await app.stop()


async def test_health_port_is_off_by_default(tmp_path: Path, pki_dir: Path) -> None:
    config = load_config(
        NationalConfig,
        None,
        {
            "JUKINET_LISTEN": f"127.0.0.1:{_free_port()}",
            "JUKINET_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'n.db'}",
            "JUKINET_TLS_CA": str(pki_dir / "ca.pem"),
            "JUKINET_TLS_CERT": str(pki_dir / "national.pem"),
            "JUKINET_TLS_KEY": str(pki_dir / "national.key"),
        },
    )
    assert config.health_listen == ""
    app = NationalApp(config)
    await app.start()
    try:
        assert app._server is not None
        assert app._server.health_server is None
        assert app._server.health_port == 0
    finally:
        await app.stop()


def test_health_listen_is_read_from_the_environment(pki_dir: Path, tmp_path: Path) -> None:
    config = load_config(
        NationalConfig,
        None,
        {
            "JUKINET_LISTEN": "0.0.0.0:50051",
            "JUKINET_HEALTH_LISTEN": "10.1.2.3:8081",
            "JUKINET_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'n.db'}",
            "JUKINET_TLS_CA": str(pki_dir / "ca.pem"),
            "JUKINET_TLS_CERT": str(pki_dir / "national.pem"),
            "JUKINET_TLS_KEY": str(pki_dir / "national.key"),
        },
    )
    assert config.health_listen == "10.1.2.3:8081"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8081", "health_listen: expected host:port, got '8081'"),
        ("127.0.0.1:70000", "health_listen: expected host:port, got '127.0.0.1:70000'"),
        ("127.0.0.1:50051", "health_listen: 127.0.0.1:50051 is also listen"),
        ("127.0.0.1:9100", "health_listen: 127.0.0.1:9100 is also metrics_listen"),
    ],
)
def test_a_bad_health_listen_is_refused(
    tmp_path: Path, pki_dir: Path, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(
            tmp_path,
            pki_dir,
            listen="127.0.0.1:50051",
            metrics_listen="127.0.0.1:9100",
            health_listen=value,
        )
    assert str(caught.value) == message


async def test_a_taken_health_port_is_one_line_and_nothing_keeps_serving(
    tmp_path: Path, pki_dir: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        config = _config(tmp_path, pki_dir, health_listen=busy)
        app = NationalApp(config)
        try:
            with pytest.raises(ConfigError) as caught:
                await app.start()
        finally:
            await app.stop()
    assert str(caught.value) == (
        f"health_listen: {busy} is already in use (is another node running there?)"
    )
    # The mTLS port was not left bound either.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", int(config.listen.rsplit(":", 1)[1])))


async def test_health_port_answers_serving_without_a_certificate(node: Node) -> None:
    stub = health_pb2_grpc.HealthStub(node.health)
    for service in ("", SERVICE):
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_port_serves_nothing_but_health(node: Node) -> None:
    # Every method of the node's own service, called without a certificate
    # on the health port: none is there.
    service = national_pb2.DESCRIPTOR.services_by_name[SERVICE.rsplit(".", 1)[1]]
    assert service.methods
    for method in service.methods:
        call = node.health.unary_unary(f"/{SERVICE}/{method.name}", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, method.name
    # Nor is reflection: the health port does not even say what else the node serves.
    stream = reflection_pb2_grpc.ServerReflectionStub(node.health).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_mtls_port_still_refuses_a_caller_without_a_certificate(node: Node) -> None:
    async with grpc.aio.insecure_channel(node.config.listen) as plain:
        stub = health_pb2_grpc.HealthStub(plain)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_port_reports_not_serving_during_shutdown(node: Node, pki_dir: Path) -> None:
    health = health_pb2_grpc.HealthStub(node.health)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    first = await watch.read()
    assert isinstance(first, health_pb2.HealthCheckResponse)
    assert first.status == SERVING
    # A call in flight on the mTLS port holds the shutdown in its grace period.
    mtls = secure_channel(node.config.listen, tls_files(pki_dir, "operator-national-admin"))
    held = health_pb2_grpc.HealthStub(mtls).Watch(health_pb2.HealthCheckRequest())
    try:
        first_held = await held.read()
        assert isinstance(first_held, health_pb2.HealthCheckResponse)
        assert first_held.status == SERVING
        stopping = asyncio.create_task(node.app.stop())
        changed = await asyncio.wait_for(watch.read(), 5)
        assert isinstance(changed, health_pb2.HealthCheckResponse)
        assert changed.status == NOT_SERVING
        # While the call in flight finishes, a probe still gets an answer.
        assert not stopping.done()
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == NOT_SERVING
        await asyncio.wait_for(stopping, 10)
    finally:
        held.cancel()
        await mtls.close(None)
    # Once stopped, the health port is closed too.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
