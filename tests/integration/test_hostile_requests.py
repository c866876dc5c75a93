"""Hostile request bytes over real mTLS against real nodes: malformed protobuf,
oversized messages and oversized lists are refused with a short, typed status,
without a traceback in the node's log and without the node's memory growing
with the size of what was sent."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from jukinet.errors import MAX_MESSAGE_LENGTH, InvalidArgument, NotFound
from jukinet.server import RECEIVE_LIMITS
from jukinet.v1 import delivery_pb2, gateway_pb2
from tests.federation import EOF, Federation, trailers

TIMEOUT = 30
MALFORMED = b"\xff\xff\xff\xff"  # a field tag whose varint never ends
RETRIEVE = "/jukinet.v1.GatewayService/Retrieve"
PUSH = "/jukinet.v1.PrefectureService/PushNotifications"


def _rss_bytes() -> int:
    """This process's resident set size (the nodes run in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert all(record.exc_info is None for record in caplog.records)
    assert "Traceback" not in caplog.text
    assert "DecodeError" not in caplog.text


async def _delivery_status(fed: Federation) -> Any:
    return await fed.prefecture_operator("31").GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )


async def test_malformed_unary_request_is_invalid_argument(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    await fed.start_gateway()
    caplog.set_level(logging.INFO)
    channel: Any = fed.channel(fed.gateway_port, "agency-nenkin")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(RETRIEVE)(MALFORMED, timeout=TIMEOUT)
    err = info.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert trailers(err)["jukinet-reason"] == "invalid-argument"
    assert trailers(err)["jukinet-field"] == "request"
    _no_traceback(caplog)
    lines = [r for r in caplog.records if r.name == "jukinet.rpc" and RETRIEVE in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO


async def test_malformed_request_of_a_caller_without_a_right_is_permission_denied(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    await fed.start_gateway()
    channel: Any = fed.channel(fed.gateway_port, "municipality-312011")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(RETRIEVE)(MALFORMED, timeout=TIMEOUT)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    _no_traceback(caplog)


async def test_malformed_stream_message_is_invalid_argument(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = await _delivery_status(fed)
    channel: Any = fed.channel(fed.prefecture_ports["31"], "municipality-312011")
    call = channel.stream_stream(PUSH)(timeout=TIMEOUT)
    await call.write(MALFORMED)
    await call.done_writing()
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while (reply := await call.read()) is not EOF:
            replies.append(reply)
    err = info.value
    assert replies == []
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert trailers(err)["jukinet-reason"] == "invalid-argument"
    _no_traceback(caplog)
    assert await _delivery_status(fed) == before


async def test_oversized_message_is_refused_and_memory_stays_bounded(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    await fed.start_gateway()
    # 60 MB from an identity with no right to call the gateway at all.
    payload = gateway_pb2.RetrieveRequest(purpose_code="x" * (60 * 1024 * 1024)).SerializeToString()
    assert len(payload) > RECEIVE_LIMITS["jukinet.v1.GatewayService"]
    channel: Any = fed.channel(fed.gateway_port, "municipality-312011")
    gc.collect()
    before = _rss_bytes()
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(RETRIEVE)(payload, timeout=TIMEOUT)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    gc.collect()
    grown = _rss_bytes() - before
    # The client's own copies of the 60 MB (this process sends it too) stay
    # within this bound; a server buffering it would add hundreds of MB.
    print(f"RSS grew by {grown / 2**20:.0f} MiB over three refused 60 MB calls")
    assert grown < 200 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"
    _no_traceback(caplog)


async def test_a_retrieve_naming_200000_fields_is_refused_with_a_short_status(
    fed: Federation,
) -> None:
    await fed.start_gateway()
    stub = fed.agency("nenkin")
    request = gateway_pb2.RetrieveRequest(
        purpose_code="nenkin-benefit",
        resident_code="123456789012",
        fields=[f"field{i}" for i in range(200_000)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Retrieve(request, timeout=TIMEOUT)
    err = info.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err) == {"jukinet-reason": "invalid-argument", "jukinet-field": "fields"}
    assert "200000" in (err.details() or "")
    entries: list[tuple[str, str | bytes]] = list(err.trailing_metadata() or ())  # type: ignore[arg-type]
    size = len(err.details() or "") + sum(len(value) for _, value in entries)
    assert size < 2 * MAX_MESSAGE_LENGTH + 1024


def test_error_messages_are_bounded() -> None:
    assert len(NotFound("x" * 100_000).message) == MAX_MESSAGE_LENGTH
    long = InvalidArgument("fields", ", ".join(["name"] * 100_000))
    assert len(long.problem) == MAX_MESSAGE_LENGTH
    # The message and the field violation each carry the bounded text once.
    assert len(long.rich_status().trailing_metadata[0][1]) < 3 * MAX_MESSAGE_LENGTH
