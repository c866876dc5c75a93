"""Every node answers gRPC health checks and exports Prometheus metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jukinet.v1 import municipal_pb2
from tests.federation import Federation
from tests.integration.test_smoke import person


async def test_health_on_every_node(fed: Federation) -> None:
    ports = {
        "operator-national-admin": (fed.national_port, "jukinet.v1.NationalService"),
        "operator-31-admin": (fed.prefecture_ports["31"], "jukinet.v1.PrefectureService"),
        "operator-312011-admin": (fed.municipal_ports["312011"], "jukinet.v1.MunicipalService"),
    }
    for cert, (port, service) in ports.items():
        stub = health_pb2_grpc.HealthStub(fed.channel(port, cert))
        for name in ("", service):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_rpc_and_delivery_metrics(fed: Federation) -> None:
    op = fed.operator("312011")
    await op.RegisterBirth(municipal_pb2.RegisterBirthRequest(person=person()))
    try:
        await op.RegisterBirth(municipal_pb2.RegisterBirthRequest(person=person(name="")))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
    await fed.wait_delivered()
    municipal = fed.municipalities["312011"].metrics.registry
    method = "/jukinet.v1.MunicipalService/RegisterBirth"
    assert municipal.get_sample_value("jukinet_rpcs_total", {"method": method, "code": "OK"}) == 1
    assert (
        municipal.get_sample_value(
            "jukinet_rpcs_total", {"method": method, "code": "INVALID_ARGUMENT"}
        )
        == 1
    )
    assert municipal.get_sample_value("jukinet_notifications_written_total") == 1
    national = fed.national.metrics.registry if fed.national else None
    assert national is not None
    assert national.get_sample_value("jukinet_notifications_total", {"outcome": "applied"}) == 1
    assert national.get_sample_value("jukinet_delivery_lag_seconds_count") == 1


async def test_metrics_endpoint_serves_text(fed: Federation) -> None:
    registry_port = fed.municipalities["312011"].metrics
    server = registry_port.serve("127.0.0.1:0")
    try:
        port = server.server_port
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        )
        assert b"jukinet_outbox_backlog" in body
    finally:
        server.shutdown()
        server.server_close()
