"""The relay of a refusal from the next tier, and the reading of rich statuses."""

from __future__ import annotations

import logging

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2

from jukinet.errors import (
    INFO_FIELD,
    INFO_PEER,
    STATUS_DETAILS_KEY,
    InvalidArgument,
    JukinetError,
    Upstream,
    error_info,
    error_metadata,
    from_upstream,
    rich_status,
)
from jukinet.reasons import DOMAIN, Reason

Metadata = tuple[tuple[str, str | bytes], ...]


def failed_call(code: grpc.StatusCode, details: str, trailers: Metadata) -> grpc.aio.AioRpcError:
    """A failed call as a client sees it."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details, None
    )


def as_received(err: JukinetError) -> grpc.aio.AioRpcError:
    """``err`` as the caller of the node that raised it receives it."""
    return failed_call(err.code, err.message, err.trailing_metadata())


def test_a_relayed_refusal_keeps_its_details_under_the_relays_message() -> None:
    upstream = as_received(InvalidArgument("claim.birth_date", "not a date"))
    relayed = as_received(from_upstream(upstream, "national node"))
    assert relayed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert relayed.details() == "national node: claim.birth_date: not a date"
    status = rich_status(relayed)
    assert status is not None
    original = rich_status(upstream)
    assert original is not None
    assert list(status.details) == list(original.details)
    info = error_info(relayed)
    assert info is not None
    assert (info.reason, info.domain) == (Reason.INVALID_ARGUMENT, DOMAIN)
    assert info.metadata[INFO_FIELD] == "claim.birth_date"
    assert error_metadata(relayed)["jukinet-reason"] == info.reason
    assert error_metadata(relayed)["jukinet-field"] == "claim.birth_date"


def test_a_fault_upstream_is_relayed_as_unavailable_with_a_consistent_status() -> None:
    upstream = as_received(JukinetError("internal error"))
    relayed_error = from_upstream(upstream, "national node")
    assert relayed_error.code == grpc.StatusCode.UNAVAILABLE
    relayed = as_received(relayed_error)
    status = rich_status(relayed)
    assert status is not None
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    info = error_info(relayed)
    assert info is not None
    assert info.reason == error_metadata(relayed)["jukinet-reason"] == Reason.INTERNAL


def test_an_unreachable_peer_is_upstream_with_an_error_info_naming_it() -> None:
    # What the gRPC client itself reports: no trailers, no details.
    relayed = as_received(
        from_upstream(
            failed_call(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ()), "prefecture"
        )
    )
    assert relayed.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(relayed)
    assert info is not None
    assert info.reason == error_metadata(relayed)["jukinet-reason"] == Reason.UPSTREAM
    assert info.metadata[INFO_PEER] == "prefecture"


def test_a_peer_with_details_but_no_trailer_keeps_its_reason_in_both() -> None:
    foreign = error_details_pb2.ErrorInfo(reason="STOCKOUT", domain="elsewhere.example")
    status = status_pb2.Status(code=grpc.StatusCode.ABORTED.value[0], message="no")
    status.details.add().Pack(foreign)
    upstream = failed_call(
        grpc.StatusCode.ABORTED, "no", ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    )
    relayed = as_received(from_upstream(upstream, "peer"))
    info = error_info(relayed)
    assert info is not None
    assert (info.reason, info.domain) == ("STOCKOUT", "elsewhere.example")
    assert error_metadata(relayed)["jukinet-reason"] == "STOCKOUT"


def test_an_inconsistent_or_garbled_status_is_not_read() -> None:
    good = InvalidArgument("f", "bad").trailing_metadata()
    assert rich_status(failed_call(grpc.StatusCode.INVALID_ARGUMENT, "f: bad", good)) is not None
    # The status says INVALID_ARGUMENT, the call says NOT_FOUND.
    assert rich_status(failed_call(grpc.StatusCode.NOT_FOUND, "f: bad", good)) is None
    # The message differs.
    assert rich_status(failed_call(grpc.StatusCode.INVALID_ARGUMENT, "other", good)) is None
    garbled = ((STATUS_DETAILS_KEY, b"\xff\xff\xff"),)
    assert rich_status(failed_call(grpc.StatusCode.INTERNAL, "x", garbled)) is None
    assert error_info(failed_call(grpc.StatusCode.INTERNAL, "x", ())) is None


def test_upstream_reason_outside_the_catalogue_is_passed_on_verbatim() -> None:
    err = Upstream(
        grpc.StatusCode.FAILED_PRECONDITION,
        "peer: later",
        (("jukinet-reason", "from-a-newer-node"),),
        peer="peer",
    )
    received = as_received(err)
    info = error_info(received)
    assert info is not None
    assert info.reason == error_metadata(received)["jukinet-reason"] == "from-a-newer-node"
    assert err.reason == Reason.UPSTREAM


def test_a_transport_failure_is_relayed_without_the_peers_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What the gRPC client reports when the peer is down: its address, the socket error.
    text = (
        "failed to connect to all addresses; last error: UNKNOWN: "
        "ipv4:10.0.3.7:50131: Failed to connect to remote host: Connection refused"
    )
    with caplog.at_level(logging.WARNING, logger="jukinet.upstream"):
        relayed = as_received(
            from_upstream(failed_call(grpc.StatusCode.UNAVAILABLE, text, ()), "national node")
        )
    assert relayed.code() == grpc.StatusCode.UNAVAILABLE
    assert relayed.details() == "national node: unavailable now; try again later"
    assert "10.0.3.7" not in str(error_metadata(relayed))
    # The detail stays in this server's log.
    assert "10.0.3.7:50131" in caplog.text
