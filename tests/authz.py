"""The parts of the authorization matrix: the nodes under test with their rule
tables, and one caller of every identity class.

Caller classes are named from where the nodes under test stand: the municipal
node of Tottori City (312011), the prefecture node of Tottori (31), the
national node and the gateway. "same-prefecture" is another municipality of
Tottori (Yonago, 312029); "other-prefecture" is Tokyo (13, Chiyoda 131016).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway import access as gateway_access
from jukinet import pki
from jukinet.identity import Identity
from jukinet.interceptors import Rule, method_path
from services.municipal import access as municipal_access
from services.national import access as national_access
from services.prefecture import access as prefecture_access
from tests.federation import EOF, text_metadata

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
PREFECTURE = "31"
OTHER_PREFECTURE = "13"
AGENCY = "nenkin"


@dataclass(frozen=True)
class Caller:
    """One identity class, by one certificate of it."""

    label: str
    identity: Identity

    @property
    def cert(self) -> str:
        """The certificate's file name in the PKI."""
        return pki.cert_name(self.identity)


CALLERS: tuple[Caller, ...] = (
    Caller("municipality", Identity.municipality(TOTTORI)),
    Caller("municipality-same-prefecture", Identity.municipality(YONAGO)),
    Caller("municipality-other-prefecture", Identity.municipality(CHIYODA)),
    Caller("prefecture", Identity.prefecture(PREFECTURE)),
    Caller("prefecture-other", Identity.prefecture(OTHER_PREFECTURE)),
    Caller("national", Identity.national()),
    Caller("gateway", Identity.gateway()),
    Caller("agency", Identity.agency(AGENCY)),
    Caller("operator-of-municipality", Identity.operator(TOTTORI, "admin")),
    Caller("operator-of-municipality-same-prefecture", Identity.operator(YONAGO, "admin")),
    Caller("operator-of-municipality-other-prefecture", Identity.operator(CHIYODA, "admin")),
    Caller("operator-of-prefecture", Identity.operator(PREFECTURE, "admin")),
    Caller("operator-of-prefecture-other", Identity.operator(OTHER_PREFECTURE, "admin")),
    Caller("operator-of-national", Identity.operator("national", "admin")),
)
"""Every identity class the identity parser knows, from every relevant place."""


@dataclass(frozen=True)
class Node:
    """A node under test: the services it serves and its rule table as it runs."""

    name: str
    services: tuple[ServiceDescriptor, ...]
    rules: Mapping[str, Rule]

    def methods(self) -> Iterator[tuple[ServiceDescriptor, MethodDescriptor]]:
        """Every RPC of every service of the node."""
        for service in self.services:
            for method in service.methods:
                yield service, method

    def admits(self, service: ServiceDescriptor, method: MethodDescriptor, caller: Caller) -> bool:
        """Whether the rule table lets ``caller`` call ``method`` (no rule: no)."""
        rule = self.rules.get(method_path(service, method.name))
        return rule is not None and rule(caller.identity)


NODES: tuple[Node, ...] = (
    Node("municipal", municipal_access.SERVICES, municipal_access.rules(TOTTORI)),
    Node("prefecture", prefecture_access.SERVICES, prefecture_access.rules(PREFECTURE)),
    Node("national", national_access.SERVICES, national_access.rules()),
    Node("gateway", gateway_access.SERVICES, gateway_access.rules()),
)


# --- calling any method by its descriptor ----------------------------------------------

TIMEOUT = 15


# grpc-stubs does not declare grpc.aio's end-of-stream sentinel.
@dataclass(frozen=True)
class Outcome:
    """How a call ended."""

    code: grpc.StatusCode
    meta: dict[str, str]
    details: str

    @property
    def reason(self) -> str:
        """The ``jukinet-reason`` trailer, empty if there is none."""
        return self.meta.get("jukinet-reason", "")


async def call_method(
    channel: grpc.aio.Channel,
    service: ServiceDescriptor,
    method: MethodDescriptor,
    request: Message | None = None,
    writes: Sequence[Message] = (),
) -> Outcome:
    """Call ``method`` whatever its cardinality and report the final status.

    A unary request defaults to the empty message; a request stream sends
    ``writes`` (by default nothing) and then half-closes.
    """
    path = method_path(service, method.name)
    request_class = GetMessageClass(method.input_type)
    multicallable = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    rpc: Any = multicallable(
        path,
        request_serializer=request_class.SerializeToString,
        response_deserializer=GetMessageClass(method.output_type).FromString,
    )
    if method.client_streaming:
        # Reader/writer style: a client still writing when the server ends the
        # call may see INTERNAL instead of the server's status (grpc/grpc#36066).
        call = rpc(timeout=TIMEOUT)
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            for message in writes:
                await call.write(message)
            await call.done_writing()
    else:
        call = rpc(request if request is not None else request_class(), timeout=TIMEOUT)
    with contextlib.suppress(grpc.aio.AioRpcError):
        if method.server_streaming:
            while await call.read() is not EOF:
                pass
        else:
            await call
    outcome = Outcome(
        await call.code(), text_metadata(await call.trailing_metadata()), await call.details() or ""
    )
    if writes and outcome.code == grpc.StatusCode.INTERNAL and "from Core" in outcome.details:
        # That race (grpc/grpc#36066) hid the server's status: ask again without
        # writing, which still shows whether the call is refused.
        return await call_method(channel, service, method)
    return outcome
