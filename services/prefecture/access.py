"""Who may call each method of a prefecture node.

Its own municipalities deliver, draw resident codes and relay disclosure
requests; its own operators read. The keys come from the service descriptor
(:func:`jukinet.interceptors.service_rules`).
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from jukinet.interceptors import Rule, municipality_of_prefecture, operator_of, service_rules
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
        },
    )
