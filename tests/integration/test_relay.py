"""Requests relayed between municipalities over real mTLS: sealed at A, routed by
the prefectures and the national node on the directory it signs, answered once
at B, refused at every hop that is not on the envelope's route."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from jukinet.clock import Clock
from jukinet.errors import JukinetError, NotFound
from jukinet.oplog import entry as entries
from jukinet.reasons import Reason
from jukinet.relay import header as headers
from jukinet.relay.directory import GRACE, VALIDITY
from jukinet.relay.endpoint import RelayRefused
from jukinet.relay.header import Header
from jukinet.relay.seal import Direction, seal, sign_body
from jukinet.v1 import relay_pb2, relay_pb2_grpc
from tests.federation import Federation, trailers

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
KIND = relay_pb2.RELAY_KIND_COPY


class Echo:
    """A handler at B that answers the resident code it was asked about, counting calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, header: Header, body: bytes) -> Message:
        """Answer the code asked about (a refusal for the all-zero code)."""
        source = header.source
        asked = relay_pb2.CopyRequest.FromString(body)
        self.calls.append((source, asked.resident_code))
        if asked.resident_code == "00000000000":
            raise NotFound("no such resident here")
        return relay_pb2.CopyAnswer(local_government_code=source, as_of=asked.resident_code)


def echo_at(fed: Federation, code: str) -> Echo:
    handler = Echo()
    # In the place of the node's own copy handler: these tests are of the relay.
    fed.municipalities[code].relay_handlers.register(KIND, handler, replace=True)
    return handler


async def relayed_entries(fed: Federation, node: str) -> list[entries.Operation]:
    """The relay entries in the operation log of ``node`` ("31", "national", a municipality)."""
    app: Any = (
        fed.national
        if node == "national"
        else fed.prefectures.get(node) or fed.municipalities[node]
    )
    async with app.db.read() as conn:
        rows = await app.log.oplog.rows(conn)
    logged = [entries.decode(r.entry).operation for r in rows]
    return [op for op in logged if op.relay is not None]


@pytest.mark.parametrize("destination", [YONAGO, CHIYODA], ids=["same-prefecture", "other"])
async def test_a_request_is_answered_once_through_the_hops(
    fed: Federation, destination: str
) -> None:
    handler = echo_at(fed, destination)
    client = fed.municipalities[TOTTORI].relay_client
    request = relay_pb2.CopyRequest(resident_code="12345678903")
    request_id = headers.new_request_id()
    first = await client.send(destination, KIND, request, request_id=request_id)
    again = await client.send(destination, KIND, request, request_id=request_id)
    answer = relay_pb2.CopyAnswer.FromString(first)
    assert answer.local_government_code == TOTTORI and answer.as_of == "12345678903"
    assert again == first
    assert handler.calls == [(TOTTORI, "12345678903")]  # the replay got the answer given
    # The same id with another body is refused, not answered.
    with pytest.raises(JukinetError) as refused:
        await client.send(
            destination, KIND, relay_pb2.CopyRequest(resident_code="1"), request_id=request_id
        )
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == Reason.RELAY_REQUEST_CONFLICT
    hops = ["31"] if destination[:2] == "31" else ["31", "national", "13"]
    for hop in hops:
        app = fed.national if hop == "national" else fed.prefectures[hop]
        assert app is not None
        sample = app.metrics.registry.get_sample_value(
            "jukinet_relayed_requests_total", {"kind": "copy", "outcome": "ok"}
        )
        assert sample == 2, hop  # the conflict counts as refused


@pytest.mark.parametrize("destination", [YONAGO, CHIYODA], ids=["same-prefecture", "other"])
async def test_every_node_on_the_way_logs_the_envelope_and_no_body(
    fed: Federation, destination: str
) -> None:
    echo_at(fed, destination)
    request_id = headers.new_request_id()
    await fed.municipalities[TOTTORI].relay_client.send(
        destination, KIND, relay_pb2.CopyRequest(resident_code="12345678903"), request_id=request_id
    )
    hops = ["31"] if destination[:2] == "31" else ["31", "national", "13"]
    callers = dict(
        zip(
            [*hops, destination],
            [
                f"jukinet://municipality/{TOTTORI}",
                *(
                    "jukinet://national" if h == "national" else f"jukinet://prefecture/{h}"
                    for h in hops
                ),
            ],
            strict=True,
        )
    )
    for node in [TOTTORI, *hops, destination]:
        ours = [
            op
            for op in await relayed_entries(fed, node)
            if op.relay is not None and op.relay.request_id == request_id
        ]
        assert len(ours) == 1, node
        (op,) = ours
        assert op.relay == entries.Relayed(request_id, "copy", TOTTORI, destination), node
        assert op.outcome == "ok", node
        if node != TOTTORI:
            assert op.operator == callers[node], node  # who handed this node the envelope
        # The envelope only: the resident code inside the sealed body is not in a hop's entry.
        if node in hops:
            assert op.resident_codes == (), node


async def test_a_refusal_at_b_comes_back_with_its_reason(fed: Federation) -> None:
    echo_at(fed, CHIYODA)
    with pytest.raises(RelayRefused) as refused:
        await fed.municipalities[TOTTORI].relay_client.send(
            CHIYODA, KIND, relay_pb2.CopyRequest(resident_code="00000000000")
        )
    assert refused.value.wire_reason == Reason.NOT_FOUND
    assert "no such resident" in refused.value.message


async def test_a_kind_b_does_not_answer_is_refused(fed: Federation) -> None:
    # Yonago as a node of a release without wide-area copies.
    fed.municipalities[YONAGO].relay_handlers.withdraw(KIND)
    with pytest.raises(RelayRefused) as refused:
        await fed.municipalities[TOTTORI].relay_client.send(
            YONAGO, KIND, relay_pb2.CopyRequest(resident_code="12345678903")
        )
    assert refused.value.wire_reason == Reason.UNIMPLEMENTED


async def test_an_unknown_destination_is_not_found(fed: Federation) -> None:
    with pytest.raises(NotFound) as missing:
        await fed.municipalities[TOTTORI].relay_client.send("011002", KIND, relay_pb2.CopyRequest())
    assert missing.value.reason == Reason.RELAY_UNKNOWN_DESTINATION


def envelope(
    fed: Federation, source: str, destination: str, *, request_id: str | None = None
) -> relay_pb2.RelayRequest:
    """A request sealed to ``destination`` and signed by ``source``'s node, as A makes it."""
    keys = fed.municipalities[source].relay_keys
    recipient = fed.municipalities[destination].relay_keys.certificate
    raw = headers.build(
        request_id=request_id or headers.new_request_id(),
        kind=KIND,
        source=source,
        destination=destination,
        sent_at=dt.datetime.now(dt.UTC),
    )
    body = relay_pb2.CopyRequest(resident_code="12345678903").SerializeToString()
    signed = sign_body(Direction.REQUEST, raw, body, keys.key, keys.certificate)
    return relay_pb2.RelayRequest(
        header=raw, sealed=seal(Direction.REQUEST, raw, signed, recipient)
    )


async def refused_with(
    stub: relay_pb2_grpc.RelayServiceAsyncStub, request: relay_pb2.RelayRequest
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Relay(request, timeout=15)
    return err.value.code(), trailers(err.value).get("jukinet-reason", "")


async def test_every_hop_checks_its_caller_for_the_envelope(fed: Federation) -> None:
    echo_at(fed, YONAGO)
    echo_at(fed, CHIYODA)
    tottori_pref = relay_pb2_grpc.RelayServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{YONAGO}")
    )
    # Yonago hands its prefecture a request that says Tottori sent it.
    assert await refused_with(tottori_pref, envelope(fed, TOTTORI, CHIYODA)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.RELAY_WRONG_HOP,
    )
    # The national node takes requests from the source's prefecture only.
    national_as_13 = relay_pb2_grpc.RelayServiceStub(
        fed.channel(fed.national_port, "prefecture-13")
    )
    assert await refused_with(national_as_13, envelope(fed, TOTTORI, CHIYODA)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.RELAY_WRONG_HOP,
    )
    # A municipal node takes requests from its own prefecture only...
    chiyoda_as_31 = relay_pb2_grpc.RelayServiceStub(
        fed.channel(fed.municipal_ports[CHIYODA], "prefecture-31")
    )
    assert await refused_with(chiyoda_as_31, envelope(fed, TOTTORI, CHIYODA)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.WRONG_IDENTITY,
    )
    # ... addressed to itself.
    yonago_as_31 = relay_pb2_grpc.RelayServiceStub(
        fed.channel(fed.municipal_ports[YONAGO], "prefecture-31")
    )
    assert await refused_with(yonago_as_31, envelope(fed, TOTTORI, CHIYODA)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.RELAY_WRONG_HOP,
    )
    # A body sealed to another node does not open at B.
    misdirected = envelope(fed, TOTTORI, CHIYODA)
    header = relay_pb2.RelayHeader.FromString(misdirected.header)
    header.destination = YONAGO
    misdirected.header = header.SerializeToString()
    assert await refused_with(yonago_as_31, misdirected) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.RELAY_SEAL_INVALID,
    )
    # Its own prefecture with an envelope for it is answered.
    answered = await yonago_as_31.Relay(envelope(fed, TOTTORI, YONAGO), timeout=15)
    assert answered.header


async def test_a_bad_header_is_invalid_argument(fed: Federation) -> None:
    stub = relay_pb2_grpc.RelayServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{TOTTORI}")
    )
    request = envelope(fed, TOTTORI, YONAGO)
    header = relay_pb2.RelayHeader.FromString(request.header)
    header.sent_at = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    request.header = header.SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Relay(request, timeout=15)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err.value)["jukinet-field"] == "header.sent_at"


async def test_relaying_goes_on_without_the_national_node_until_grace_ends(
    fed: Federation,
) -> None:
    echo_at(fed, YONAGO)
    client = fed.municipalities[TOTTORI].relay_client
    await client.send(YONAGO, KIND, relay_pb2.CopyRequest(resident_code="1"))
    await fed.stop_national()
    # Within its prefecture, on the directory held, as long as it is usable.
    await client.send(YONAGO, KIND, relay_pb2.CopyRequest(resident_code="2"))
    # Restarted on a clock past expiry and grace, the same node refuses to relay.
    app = fed.municipalities[TOTTORI]
    await app.stop()
    await fed.start_municipality(TOTTORI, clock=Clock(VALIDITY + GRACE + dt.timedelta(hours=1)))
    late = fed.municipalities[TOTTORI].relay_client
    with pytest.raises(JukinetError) as refused:
        await late.send(YONAGO, KIND, relay_pb2.CopyRequest(resident_code="3"))
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == Reason.DIRECTORY_EXPIRED
