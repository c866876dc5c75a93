"""Who may call each method of a municipal node: its own operators, and no one else.

The keys come from the service descriptor (:func:`jukinet.interceptors.service_rules`),
so a rule for a method the proto does not have stops the node at start-up;
the unit tests check that no method of :data:`SERVICES` is left without a rule.
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from jukinet.audit import Extractor, audit_table, no_residents, resident_codes_in
from jukinet.interceptors import Rule, operator_of, service_rules
from jukinet.v1 import municipal_pb2

SERVICE: ServiceDescriptor = municipal_pb2.DESCRIPTOR.services_by_name["MunicipalService"]
SERVICES: tuple[ServiceDescriptor, ...] = (SERVICE,)
"""Every service a municipal node serves."""


def rules(local_government_code: str) -> dict[str, Rule]:
    """Operators of this municipality, and no one else, run the register."""
    own_operator = operator_of(local_government_code)
    # Listed one by one rather than "every method": a new method must get a
    # rule of its own, chosen on purpose, or the rule-coverage test fails.
    return service_rules(
        SERVICE,
        {
            "RegisterBirth": own_operator,
            "MoveIn": own_operator,
            "Relocate": own_operator,
            "ChangeName": own_operator,
            "MoveOut": own_operator,
            "ReissueMoveOutCertificate": own_operator,
            "RecordDeath": own_operator,
            "ChangeResidentCode": own_operator,
            "EnterExOfficio": own_operator,
            "Amend": own_operator,
            "RemoveExOfficio": own_operator,
            "GetResident": own_operator,
            "GetHousehold": own_operator,
            "ChangeHousehold": own_operator,
            "ChangeDomicile": own_operator,
            "ExportResidents": own_operator,
            "ImportResidents": own_operator,
            "GetStatus": own_operator,
            "DiscloseProvisions": own_operator,
        },
    )


def audited() -> dict[str, Extractor]:
    """How each method's messages name the residents an operation log entry records."""
    codes = resident_codes_in
    return audit_table(
        SERVICE,
        {
            "RegisterBirth": codes,
            "MoveIn": codes,
            "Relocate": codes,
            "ChangeName": codes,
            "MoveOut": codes,
            "ReissueMoveOutCertificate": codes,
            "RecordDeath": codes,
            "ChangeResidentCode": codes,
            "EnterExOfficio": codes,
            "Amend": codes,
            "RemoveExOfficio": codes,
            "GetResident": codes,
            "GetHousehold": codes,
            "ChangeHousehold": codes,
            "ChangeDomicile": codes,
            "ExportResidents": codes,
            "ImportResidents": codes,
            "GetStatus": no_residents,
            "DiscloseProvisions": codes,
        },
    )
