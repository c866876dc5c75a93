"""Who may call each method of a municipal node: its own operators, logged in at a
counter terminal, each with the roles the method needs; no one else.

Two tables, both keyed from the service descriptors (a key that is not a
method stops the node at start-up; a method missing from either is refused,
and the tests fail until it is listed):

- :func:`rules` says which kind of caller: the operator of a session at a
  terminal (:func:`jukinet.interceptors.operator_of` on the acting identity),
  or a terminal before a session (BeginLogin, Login);
- :func:`permissions` says which roles: see :data:`CLERK`, :data:`SUPERVISOR`,
  :data:`AUDITOR`, :data:`ADMINISTRATOR` and :data:`ANY_SESSION`.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from jukinet.audit import Extractor, audit_table, no_residents, resident_codes_in
from jukinet.identity import Identity, Kind
from jukinet.interceptors import Rule, allow, exactly, operator_of, service_rules
from jukinet.operators import ANY_OPERATOR, NO_SESSION, Permissions
from jukinet.v1 import card_pb2, municipal_pb2, operator_pb2, relay_pb2

SERVICE: ServiceDescriptor = municipal_pb2.DESCRIPTOR.services_by_name["MunicipalService"]
OPERATOR_SERVICE: ServiceDescriptor = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"]
CARD_SERVICE: ServiceDescriptor = card_pb2.DESCRIPTOR.services_by_name["ResidentCardService"]
RELAY_SERVICE: ServiceDescriptor = relay_pb2.DESCRIPTOR.services_by_name["RelayService"]
OPERATOR_SERVICES: tuple[ServiceDescriptor, ...] = (SERVICE, OPERATOR_SERVICE, CARD_SERVICE)
"""The services its operators call (at a terminal, with roles: :func:`permissions`)."""
SERVICES: tuple[ServiceDescriptor, ...] = (*OPERATOR_SERVICES, RELAY_SERVICE)
"""Every service a municipal node serves (RelayService: node to node, no operator)."""

CLERK: frozenset[str] = frozenset(
    {
        "RegisterBirth",
        "MoveIn",
        "Relocate",
        "ChangeName",
        "MoveOut",
        "ReissueMoveOutCertificate",
        "RecordDeath",
        "EnterExOfficio",
        "Amend",
        "GetResident",
        "GetHousehold",
        "ChangeHousehold",
        "ChangeDomicile",
        "DiscloseProvisions",
        "GetStatus",
        "ListUnconfirmedMoveOuts",
        "MoveOutByPost",
        "SpecialMoveIn",
        "IssueCopy",
        # ResidentCardService
        "IssueCard",
        "BeginCardProof",
        "ProveCard",
        "RevokeCard",
        "ContinueCard",
    }
)
"""The counter's everyday notifications and reads (MunicipalService), and its
resident cards (ResidentCardService) but for unlocking one."""
SUPERVISOR: frozenset[str] = CLERK | {
    "ChangeResidentCode",
    "RemoveExOfficio",
    "ExportResidents",
    "ImportResidents",
    "UnlockCard",
}
"""A clerk's methods, the ex-officio code change and removal, bulk work, and
unlocking a resident card."""
AUDITOR: frozenset[str] = frozenset({"ReadOperationLog"})
"""The operation log, and nothing else."""
ADMINISTRATOR: frozenset[str] = frozenset(
    {"AddOperator", "ResetPassword", "GrantRole", "WithdrawRole", "ListOperators", "GetStatus"}
)
"""Operator accounts and roles, and the node's status: never a resident."""
ANY_SESSION: frozenset[str] = frozenset({"Logout", "WhoAmI", "ChangePassword"})
"""Any operator in a session (OperatorService)."""
BEFORE_SESSION: frozenset[str] = frozenset({"BeginLogin", "Login"})
"""A terminal of this municipality without a session (OperatorService)."""

ROLE_METHODS: dict[int, frozenset[str]] = {
    operator_pb2.ROLE_CLERK: CLERK,
    operator_pb2.ROLE_SUPERVISOR: SUPERVISOR,
    operator_pb2.ROLE_AUDITOR: AUDITOR,
    operator_pb2.ROLE_ADMINISTRATOR: ADMINISTRATOR,
}
"""The methods of each role."""


def permissions() -> Permissions:
    """Full method name -> the roles that may call it, for every method of
    :data:`OPERATOR_SERVICES` (a terminal's call to any other is refused by its rule)."""
    table: dict[str, frozenset[int] | None] = {}
    for service in OPERATOR_SERVICES:
        for method in service.methods_by_name:
            path = f"/{service.full_name}/{method}"
            if method in BEFORE_SESSION:
                table[path] = NO_SESSION
            elif method in ANY_SESSION:
                table[path] = ANY_OPERATOR
            else:
                roles = frozenset(r for r, methods in ROLE_METHODS.items() if method in methods)
                if roles:
                    table[path] = roles
                # else: no entry, and rules() has none either: refused (no-rule).
    return table


def rules(local_government_code: str) -> dict[str, Rule]:
    """Operators of this municipality in a session, and its terminals to log in."""
    own_operator = operator_of(local_government_code)
    # The login's own store refuses another organisation's terminal (foreign-terminal).
    terminal = allow(Kind.TERMINAL)
    operator_rules = service_rules(
        OPERATOR_SERVICE,
        {
            "BeginLogin": terminal,
            "Login": terminal,
            "Logout": own_operator,
            "WhoAmI": own_operator,
            "ChangePassword": own_operator,
            "AddOperator": own_operator,
            "ResetPassword": own_operator,
            "GrantRole": own_operator,
            "WithdrawRole": own_operator,
            "ListOperators": own_operator,
            "ReadOperationLog": own_operator,
        },
    )
    # Requests from other municipalities come through its own prefecture only,
    # addressed to it (jukinet.relay.route.municipal_accept); no operator calls them.
    own_prefecture = exactly(Identity.prefecture(local_government_code[:2]))
    relay_rules = service_rules(
        RELAY_SERVICE, {"Relay": own_prefecture, "GetDirectory": own_prefecture}
    )
    card_rules = service_rules(
        CARD_SERVICE,
        {
            "IssueCard": own_operator,
            "BeginCardProof": own_operator,
            # Any municipality's card, but at this municipality's own counter.
            "ProveCard": own_operator,
            "UnlockCard": own_operator,
            "RevokeCard": own_operator,
            "ContinueCard": own_operator,
        },
    )
    # Listed one by one rather than "every method": a new method must get a
    # rule of its own, chosen on purpose, or the rule-coverage test fails.
    return (
        operator_rules
        | relay_rules
        | card_rules
        | service_rules(
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
                "ListUnconfirmedMoveOuts": own_operator,
                # The posted filing entered at the counter; the card must be its resident's.
                "MoveOutByPost": own_operator,
                # Any municipality's card, at this municipality's own counter.
                "SpecialMoveIn": own_operator,
                # For a resident of any municipality: the home municipality checks them.
                "IssueCopy": own_operator,
            },
        )
    )


def copy_codes(message: Message) -> Iterable[str]:
    """The applicant's code and the household members' a copy request names."""
    yield from resident_codes_in(message)
    if isinstance(message, municipal_pb2.IssueCopyRequest):
        yield from message.member_resident_codes


def audited() -> dict[str, Extractor]:
    """How each method's messages name the residents an operation log entry records."""
    codes = resident_codes_in
    none = no_residents
    operator_methods = audit_table(
        OPERATOR_SERVICE,
        {
            "BeginLogin": none,
            "Login": none,
            "Logout": none,
            "WhoAmI": none,
            "ChangePassword": none,
            "AddOperator": none,
            "ResetPassword": none,
            "GrantRole": none,
            "WithdrawRole": none,
            "ListOperators": none,
            # The codes it asks about, not the many its answer lists.
            "ReadOperationLog": none,
        },
    )
    relay_methods = audit_table(
        RELAY_SERVICE,
        # Node-to-node: each envelope is logged by the relay itself.
        {"Relay": none, "GetDirectory": none},
    )
    card_methods = audit_table(
        CARD_SERVICE,
        {
            "IssueCard": codes,
            "BeginCardProof": none,
            # The holder's code, at the node that holds the card's record.
            "ProveCard": codes,
            "UnlockCard": none,
            "RevokeCard": codes,
            "ContinueCard": codes,
        },
    )
    return (
        operator_methods
        | relay_methods
        | card_methods
        | audit_table(
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
                "ListUnconfirmedMoveOuts": codes,
                "MoveOutByPost": codes,
                "SpecialMoveIn": codes,
                "IssueCopy": copy_codes,
            },
        )
    )
