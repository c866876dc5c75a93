"""Who may call each method of the agency gateway: agencies, and no one else.

A node or operator certificate is refused. The keys come from the service
descriptor (:func:`jukinet.interceptors.service_rules`).
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from jukinet.interceptors import Rule, agency, service_rules
from jukinet.v1 import gateway_pb2

SERVICE: ServiceDescriptor = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
SERVICES: tuple[ServiceDescriptor, ...] = (SERVICE,)
"""Every service the gateway serves."""


def rules() -> dict[str, Rule]:
    """Agencies only, for every method."""
    any_agency = agency()
    return service_rules(
        SERVICE,
        {
            "Verify": any_agency,
            "Retrieve": any_agency,
            "Search": any_agency,
            "VerifyBatch": any_agency,
        },
    )
