"""The header of a relayed request: who sends what to whom, read by every hop.
Pure rules."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from jukinet.clock import MAX_CLOCK_SKEW
from jukinet.codes import check_local_government_code
from jukinet.errors import InvalidArgument
from jukinet.v1 import relay_pb2

SENT_AT_SKEW = MAX_CLOCK_SKEW
"""How far a header's ``sent_at`` may lie from the checking node's clock, either way.
A sender stamps each attempt afresh (the request id stays), so a header is
seconds old when it arrives; one older or newer than this is refused."""

KIND_LABELS: dict[int, str] = {
    relay_pb2.RELAY_KIND_MOVE_IN_NOTICE: "move-in-notice",
    relay_pb2.RELAY_KIND_MOVE_OUT_DATA: "move-out-data",
    relay_pb2.RELAY_KIND_COPY: "copy",
}
"""The label of each kind, in log entries and metrics."""

_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def new_request_id() -> str:
    """A fresh request id: 32 random lowercase hex characters."""
    return secrets.token_hex(16)


def build(
    *,
    request_id: str,
    kind: relay_pb2.RelayKind.ValueType,
    source: str,
    destination: str,
    sent_at: dt.datetime,
) -> bytes:
    """The serialized header of one attempt (as signed and as sent)."""
    return relay_pb2.RelayHeader(
        request_id=request_id,
        kind=kind,
        source=source,
        destination=destination,
        sent_at=sent_at.astimezone(dt.UTC).isoformat(),
    ).SerializeToString()


@dataclass(frozen=True)
class Header:
    """A checked header and the bytes it was read from."""

    raw: bytes
    request_id: str
    kind: relay_pb2.RelayKind.ValueType
    source: str
    destination: str
    sent_at: dt.datetime

    @property
    def kind_label(self) -> str:
        """The kind's label (``move-in-notice``)."""
        return KIND_LABELS[self.kind]


def parse(raw: bytes, now: dt.datetime) -> Header:
    """The header ``raw`` holds, checked; :class:`InvalidArgument` naming the field otherwise."""
    try:
        header = relay_pb2.RelayHeader.FromString(raw)
    except DecodeError:
        raise InvalidArgument("header", "is not a serialized RelayHeader") from None
    if not _REQUEST_ID.fullmatch(header.request_id):
        raise InvalidArgument("header.request_id", "must be 32 lowercase hex characters")
    if header.kind not in KIND_LABELS:
        raise InvalidArgument("header.kind", f"{header.kind} is not a relayed kind")
    check_local_government_code(header.source, "header.source")
    check_local_government_code(header.destination, "header.destination")
    if header.source == header.destination:
        raise InvalidArgument("header.destination", "is the source itself")
    try:
        sent_at = dt.datetime.fromisoformat(header.sent_at)
    except ValueError:
        raise InvalidArgument("header.sent_at", "is not an RFC 3339 time") from None
    if sent_at.tzinfo is None:
        raise InvalidArgument("header.sent_at", "has no time zone")
    if abs(sent_at - now) > SENT_AT_SKEW:
        raise InvalidArgument(
            "header.sent_at",
            f"lies more than {int(SENT_AT_SKEW.total_seconds())} s from this node's clock",
        )
    return Header(raw, header.request_id, header.kind, header.source, header.destination, sent_at)
