"""Who may call each method of a prefecture node.

Its own municipalities deliver, draw resident codes and relay disclosure
requests; its own operators read. The keys come from the service descriptor
(:func:`jukinet.interceptors.service_rules`).
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from jukinet.audit import Extractor, audit_table, no_residents, resident_codes_in
from jukinet.identity import Identity
from jukinet.interceptors import (
    Rule,
    any_of,
    exactly,
    municipality_of_prefecture,
    operator_of,
    service_rules,
)
from jukinet.v1 import prefecture_pb2

SERVICE: ServiceDescriptor = prefecture_pb2.DESCRIPTOR.services_by_name["PrefectureService"]
SERVICES: tuple[ServiceDescriptor, ...] = (SERVICE,)
"""Every service a prefecture node serves."""


def rules(prefecture_code: str) -> dict[str, Rule]:
    """Who may call each method of prefecture ``prefecture_code``."""
    own_municipality = municipality_of_prefecture(prefecture_code)
    own_operator = operator_of(prefecture_code)
    return service_rules(
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
            "GetCheckpoints": any_of(own_municipality, own_operator, exactly(Identity.national())),
        },
    )


def audited() -> dict[str, Extractor]:
    """How each method's messages name residents; operators' calls are logged."""
    codes = resident_codes_in
    return audit_table(
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
