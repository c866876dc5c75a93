"""Who may call each method of a prefecture node.

Its own municipalities deliver, draw resident codes and relay disclosure
requests; its own operators read. The keys come from the service descriptor
(:func:`jukinet.interceptors.service_rules`).
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.descriptor import ServiceDescriptor

from jukinet.audit import Extractor, audit_table, no_residents, resident_codes_in
from jukinet.identity import Identity, Kind
from jukinet.interceptors import (
    Rule,
    any_of,
    exactly,
    municipality_of_prefecture,
    operator_of,
    service_rules,
)
from jukinet.v1 import card_pb2, prefecture_pb2, relay_pb2

SERVICE: ServiceDescriptor = prefecture_pb2.DESCRIPTOR.services_by_name["PrefectureService"]
RELAY_SERVICE: ServiceDescriptor = relay_pb2.DESCRIPTOR.services_by_name["RelayService"]
CARD_CRL_SERVICE: ServiceDescriptor = card_pb2.DESCRIPTOR.services_by_name["CardRevocationService"]
SERVICES: tuple[ServiceDescriptor, ...] = (SERVICE, RELAY_SERVICE, CARD_CRL_SERVICE)
"""Every service a prefecture node serves."""


def rules(prefecture_code: str) -> dict[str, Rule]:
    """Who may call each method of prefecture ``prefecture_code``."""
    own_municipality = municipality_of_prefecture(prefecture_code)
    own_operator = operator_of(prefecture_code)
    card_crls = service_rules(
        CARD_CRL_SERVICE,
        # Its municipalities publish their own CRL (the relay checks whose) and fetch all.
        {"PublishCardCrls": own_municipality, "ListCardCrls": own_municipality},
    )
    return (
        card_crls
        | service_rules(
            SERVICE,
            {
                "PushNotifications": own_municipality,
                "AllocateCodePool": own_municipality,
                "GetIdentity": own_operator,
                "ExportIdentities": own_operator,
                "GetDeliveryStatus": own_operator,
                "Disclose": own_municipality,
                # A municipality's own log; the witness checks the head is of the caller's.
                "SubmitCheckpoint": own_municipality,
                # The national node reads the heads of its own log this prefecture
                # witnessed (`jukinet audit verify national --witness`).
                "GetCheckpoints": any_of(
                    own_municipality, own_operator, exactly(Identity.national())
                ),
            },
        )
        | service_rules(
            RELAY_SERVICE,
            {
                # Its municipalities send (as the header's source), the national node
                # brings requests for them (jukinet.relay.route.prefecture_next).
                "Relay": any_of(own_municipality, exactly(Identity.national())),
                "GetDirectory": own_municipality,
            },
        )
    )


def card_crl_publisher(prefecture_code: str) -> Callable[[Identity, str], bool]:
    """Who may publish a card CA's CRL here: the municipality itself, of this prefecture."""

    def may(caller: Identity, municipality: str) -> bool:
        return (
            caller.kind is Kind.MUNICIPALITY
            and caller.code == municipality
            and municipality.startswith(prefecture_code)
        )

    return may


def audited() -> dict[str, Extractor]:
    """How each method's messages name residents; operators' calls are logged."""
    codes = resident_codes_in
    card_crls = audit_table(
        CARD_CRL_SERVICE, {"PublishCardCrls": no_residents, "ListCardCrls": no_residents}
    )
    return (
        card_crls
        | audit_table(
            SERVICE,
            {
                "PushNotifications": codes,
                "AllocateCodePool": no_residents,
                "GetIdentity": codes,
                "ExportIdentities": codes,
                "GetDeliveryStatus": no_residents,
                "Disclose": codes,
                "SubmitCheckpoint": no_residents,
                "GetCheckpoints": no_residents,
            },
        )
        | audit_table(
            RELAY_SERVICE,
            # A hop sees only the envelope; each is logged by the relay itself.
            {"Relay": no_residents, "GetDirectory": no_residents},
        )
    )
