"""Server reflection on every node, over mutual TLS with a client certificate: what
grpcurl and buf curl do to list, describe and call the services of a node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from jukinet.client import tls_files
from jukinet.tls import channel_credentials
from tests.federation import Federation, federation

TIMEOUT = 15
TOTTORI = "312011"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


@pytest.fixture
async def nodes(tmp_path: Path, pki_dir: Path) -> AsyncIterator[Federation]:
    """One node of every kind (reflection does not touch the database: SQLite only)."""
    async for fed in federation(tmp_path, "sqlite", [TOTTORI], pki_dir):
        await fed.start_gateway()
        yield fed


def _sync_channel(pki_dir: Path, port: int, cert: str) -> grpc.Channel:
    # The reflection client of grpcio-reflection is synchronous, as grpcurl is
    # a separate process: it runs in a worker thread, beside the nodes' loop.
    return grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(tls_files(pki_dir, cert)))


def _services(pki_dir: Path, port: int, cert: str) -> dict[str, list[str]]:
    """Each service a node lists, with its methods, as reflection describes them."""
    with _sync_channel(pki_dir, port, cert) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        return {
            name: [m.name for m in pool.FindServiceByName(name).methods]
            for name in database.get_services()
        }


def _call_get_delivery_status(pki_dir: Path, port: int, cert: str, service: str) -> Any:
    """Call a method knowing only what reflection told: the way grpcurl calls."""
    with _sync_channel(pki_dir, port, cert) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(service).methods_by_name["GetDeliveryStatus"]
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{service}/GetDeliveryStatus",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        return call(request(), timeout=TIMEOUT)


async def test_every_node_lists_its_services_to_a_certificate_holder(
    nodes: Federation, pki_dir: Path
) -> None:
    cases = [
        (nodes.national_port, "operator-national-admin", "jukinet.v1.NationalService"),
        (nodes.prefecture_ports["31"], "operator-31-admin", "jukinet.v1.PrefectureService"),
        # A counter terminal needs no session to read the schema.
        (
            nodes.municipal_ports[TOTTORI],
            f"terminal-{TOTTORI}-desk1",
            "jukinet.v1.MunicipalService",
        ),
        (nodes.gateway_port, "agency-nenkin", "jukinet.v1.GatewayService"),
    ]
    # The services each node serves beside its own (resident cards and their CRLs,
    # and the relay between municipalities on every node but the gateway).
    relay = "jukinet.v1.RelayService"
    besides = {
        "jukinet.v1.NationalService": {"jukinet.v1.NationalCardRevocationService", relay},
        "jukinet.v1.PrefectureService": {"jukinet.v1.CardRevocationService", relay},
        "jukinet.v1.MunicipalService": {
            "jukinet.v1.OperatorService",
            "jukinet.v1.ResidentCardService",
            relay,
        },
    }
    for port, cert, service in cases:
        services = await asyncio.to_thread(_services, pki_dir, port, cert)
        beside = besides.get(service, set())
        assert set(services) == {service, HEALTH, REFLECTION} | beside, (cert, services)
        assert {"Check", "Watch"} <= set(services[HEALTH])
        assert services[service], service

    municipal = await asyncio.to_thread(
        _services, pki_dir, nodes.municipal_ports[TOTTORI], f"terminal-{TOTTORI}-desk1"
    )
    assert {"RegisterBirth", "MoveIn", "GetResident", "ImportResidents"} <= set(
        municipal["jukinet.v1.MunicipalService"]
    )


async def test_a_method_found_by_reflection_can_be_called(nodes: Federation, pki_dir: Path) -> None:
    answer = await asyncio.to_thread(
        _call_get_delivery_status,
        pki_dir,
        nodes.national_port,
        "operator-national-admin",
        "jukinet.v1.NationalService",
    )
    assert [c.origin_code for c in answer.applied] in ([], [TOTTORI])


async def test_reflection_lists_nothing_without_a_federation_certificate(
    nodes: Federation, pki_dir: Path, tmp_path: Path
) -> None:
    # A channel that trusts the node but presents no client certificate: the
    # handshake itself fails (the port requires client auth).
    ca = (pki_dir / "ca.pem").read_bytes()

    def anonymous() -> list[str]:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(f"127.0.0.1:{nodes.national_port}", credentials) as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.to_thread(anonymous)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
