"""The parts of the authorization matrix: the nodes under test with their rule
tables, and one caller of every identity class.

Caller classes are named from where the nodes under test stand: the municipal
node of Tottori City (312011), the prefecture node of Tottori (31), the
national node and the gateway. "same-prefecture" is another municipality of
Tottori (Yonago, 312029); "other-prefecture" is Tokyo (13, Chiyoda 131016).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from gateway import access as gateway_access
from jukinet import pki
from jukinet.identity import Identity
from jukinet.interceptors import Rule, method_path
from services.municipal import access as municipal_access
from services.national import access as national_access
from services.prefecture import access as prefecture_access

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
