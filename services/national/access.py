"""Who may call each method of the national node.

Prefectures deliver, draw resident codes and relay disclosure requests; the
gateway alone asks for provisions on an agency's behalf; national operators
read and disclose. The keys come from the service descriptor
(:func:`jukinet.interceptors.service_rules`).
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from jukinet.audit import Extractor, audit_table, no_residents, resident_codes_in
from jukinet.identity import NATIONAL_ORG, Identity, Kind
from jukinet.interceptors import Rule, allow, any_of, operator_of, service_rules
from jukinet.v1 import card_pb2, national_pb2, relay_pb2

SERVICE: ServiceDescriptor = national_pb2.DESCRIPTOR.services_by_name["NationalService"]
RELAY_SERVICE: ServiceDescriptor = relay_pb2.DESCRIPTOR.services_by_name["RelayService"]
CARD_CRL_SERVICE: ServiceDescriptor = card_pb2.DESCRIPTOR.services_by_name[
    "NationalCardRevocationService"
]
SERVICES: tuple[ServiceDescriptor, ...] = (SERVICE, RELAY_SERVICE, CARD_CRL_SERVICE)
"""Every service the national node serves."""


def rules() -> dict[str, Rule]:
    """Who may call each method."""
    prefecture = allow(Kind.PREFECTURE)
    national_operator = operator_of(NATIONAL_ORG)
    gateway = allow(Kind.GATEWAY)
    card_crls = service_rules(
        CARD_CRL_SERVICE,
        # A prefecture publishes its municipalities' CRLs (the relay checks whose), fetches all.
        {"PublishCardCrls": prefecture, "ListCardCrls": prefecture},
    )
    return (
        card_crls
        | service_rules(
            SERVICE,
            {
                "PushNotifications": prefecture,
                "AllocateCodePool": prefecture,
                "GetIdentity": national_operator,
                "ExportIdentities": national_operator,
                "GetDeliveryStatus": national_operator,
                "ProvideVerification": gateway,
                "ProvideRecord": gateway,
                "ProvideSearch": gateway,
                "RecordDenial": gateway,
                # A prefecture relays a municipal counter's request; national
                # operators disclose at the national level.
                "Disclose": any_of(prefecture, national_operator),
                # A prefecture's own log; the witness checks the head is of the caller's.
                "SubmitCheckpoint": prefecture,
                "GetCheckpoints": any_of(prefecture, national_operator),
                # Each prefecture witnesses the national log (the top tier's).
                "GetLogHead": prefecture,
                "CosignLogHead": prefecture,
            },
        )
        | service_rules(
            RELAY_SERVICE,
            # Between prefectures only; the source's own (jukinet.relay.route.national_next).
            {"Relay": prefecture, "GetDirectory": prefecture},
        )
    )


def audited() -> dict[str, Extractor]:
    """How each method's messages name residents; operators' calls are logged.

    The gateway is not an operator: its calls are not logged here. Each
    provision and denial it asks for is logged instead by the provision log
    (:mod:`services.national.provisions`), in the transaction of its
    provision row, with the agency as operator and the gateway as terminal.
    """
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
                "ProvideVerification": codes,
                "ProvideRecord": codes,
                "ProvideSearch": codes,
                "RecordDenial": codes,
                "Disclose": codes,
                "SubmitCheckpoint": no_residents,
                "GetCheckpoints": no_residents,
                "GetLogHead": no_residents,
                "CosignLogHead": no_residents,
            },
        )
        | audit_table(
            RELAY_SERVICE,
            # A hop sees only the envelope; each is logged by the relay itself.
            {"Relay": no_residents, "GetDirectory": no_residents},
        )
    )


def card_crl_publisher(caller: Identity, municipality: str) -> bool:
    """Who may publish a card CA's CRL here: the prefecture of its municipality."""
    return caller.kind is Kind.PREFECTURE and municipality.startswith(caller.code)
