"""The rule tables of the nodes: every RPC has a rule, every rule names an RPC,
and each table admits exactly the callers the security model names."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest
from google.protobuf.descriptor import ServiceDescriptor

import jukinet.v1
from gateway.servicer import GatewayServicer
from jukinet import audit
from jukinet.cardcrl import NationalCardCrls, PrefectureCardCrls
from jukinet.identity import Kind
from jukinet.interceptors import allow, method_path, service_rules
from jukinet.operators import OperatorServicer
from jukinet.relay.node import RelayServicer
from services.municipal import access as municipal_access
from services.municipal.servicer import MunicipalServicer, ResidentCardServicer
from services.national import access as national_access
from services.national.servicer import NationalServicer
from services.prefecture import access as prefecture_access
from services.prefecture.servicer import PrefectureServicer
from tests.authz import CALLERS, NODES, Node

ALL_MUNICIPAL = {
    "RegisterBirth",
    "MoveIn",
    "Relocate",
    "ChangeName",
    "MoveOut",
    "ReissueMoveOutCertificate",
    "RecordDeath",
    "ChangeResidentCode",
    "EnterExOfficio",
    "Amend",
    "RemoveExOfficio",
    "GetResident",
    "GetHousehold",
    "ChangeHousehold",
    "ChangeDomicile",
    "ExportResidents",
    "ImportResidents",
    "GetStatus",
    "DiscloseProvisions",
    "ListUnconfirmedMoveOuts",
    "MoveOutByPost",
    "SpecialMoveIn",
    "IssueCopy",
    # ResidentCardService
    "IssueCard",
    "BeginCardProof",
    "ProveCard",
    "UnlockCard",
    "RevokeCard",
    "ContinueCard",
}
# Called from a counter terminal in a session: the rule sees the operator logged in.
ALL_OPERATOR_SERVICE = {
    "Logout",
    "WhoAmI",
    "ChangePassword",
    "AddOperator",
    "ResetPassword",
    "GrantRole",
    "WithdrawRole",
    "ListOperators",
    "ReadOperationLog",
}
# A terminal before its session: no caller class below is a terminal.
LOGIN = {"BeginLogin", "Login"}
OWN_MUNICIPALITIES = {"municipality", "municipality-same-prefecture"}

# The security model, written down a second time and on its own: the matrix
# of negative tests is generated from the rule tables, so a table that let
# too many callers in would shrink its own matrix; this catches that.
POLICY: dict[str, dict[str, set[str]]] = {
    "municipal": {
        **{method: {"operator-of-municipality"} for method in ALL_MUNICIPAL | ALL_OPERATOR_SERVICE},
        **{method: set() for method in LOGIN},
        # From its own prefecture only (the envelope's checks: jukinet.relay.route).
        "Relay": {"prefecture"},
        "GetDirectory": {"prefecture"},
    },
    "prefecture": {
        "PushNotifications": OWN_MUNICIPALITIES,
        "AllocateCodePool": OWN_MUNICIPALITIES,
        "Disclose": OWN_MUNICIPALITIES,
        "GetIdentity": {"operator-of-prefecture"},
        "ExportIdentities": {"operator-of-prefecture"},
        "GetDeliveryStatus": {"operator-of-prefecture"},
        "SubmitCheckpoint": OWN_MUNICIPALITIES,
        # The national node reads the heads its witnesses hold of its own log.
        "GetCheckpoints": OWN_MUNICIPALITIES | {"operator-of-prefecture", "national"},
        "Relay": OWN_MUNICIPALITIES | {"national"},
        "GetDirectory": OWN_MUNICIPALITIES,
        # CardRevocationService: its municipalities publish their CRL, fetch everyone's.
        "PublishCardCrls": OWN_MUNICIPALITIES,
        "ListCardCrls": OWN_MUNICIPALITIES,
    },
    "national": {
        "PushNotifications": {"prefecture", "prefecture-other"},
        "AllocateCodePool": {"prefecture", "prefecture-other"},
        "GetIdentity": {"operator-of-national"},
        "ExportIdentities": {"operator-of-national"},
        "GetDeliveryStatus": {"operator-of-national"},
        "ProvideVerification": {"gateway"},
        "ProvideRecord": {"gateway"},
        "ProvideSearch": {"gateway"},
        "RecordDenial": {"gateway"},
        "Disclose": {"prefecture", "prefecture-other", "operator-of-national"},
        "SubmitCheckpoint": {"prefecture", "prefecture-other"},
        "GetCheckpoints": {"prefecture", "prefecture-other", "operator-of-national"},
        "GetLogHead": {"prefecture", "prefecture-other"},
        "CosignLogHead": {"prefecture", "prefecture-other"},
        "Relay": {"prefecture", "prefecture-other"},
        "GetDirectory": {"prefecture", "prefecture-other"},
        # NationalCardRevocationService: every prefecture.
        "PublishCardCrls": {"prefecture", "prefecture-other"},
        "ListCardCrls": {"prefecture", "prefecture-other"},
    },
    "gateway": {method: {"agency"} for method in ("Verify", "Retrieve", "Search", "VerifyBatch")},
}

SERVICERS: dict[str, Any] = {
    "municipal": (MunicipalServicer, OperatorServicer, ResidentCardServicer, RelayServicer),
    "prefecture": (PrefectureServicer, PrefectureCardCrls, RelayServicer),
    "national": (NationalServicer, NationalCardCrls, RelayServicer),
    "gateway": GatewayServicer,
}
SERVICERS = {k: v if isinstance(v, tuple) else (v,) for k, v in SERVICERS.items()}


def proto_services() -> dict[str, ServiceDescriptor]:
    """Every service of every generated module of the wire protocol."""
    found: dict[str, ServiceDescriptor] = {}
    for info in pkgutil.iter_modules(jukinet.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"jukinet.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found[service.full_name] = service
    return found


def node_ids(node: Node) -> str:
    return node.name


# Served by every node that relays requests between municipalities, each with its
# own rules (jukinet.relay): the one service more than one node serves.
SHARED = {"jukinet.v1.RelayService": {"municipal", "prefecture", "national"}}


def test_every_service_of_the_protocol_is_served_by_exactly_one_node() -> None:
    served = [service.full_name for node in NODES for service in node.services]
    assert sorted(set(served)) == sorted(proto_services())
    for name in set(served):
        serving = {node.name for node in NODES if name in {s.full_name for s in node.services}}
        assert serving == SHARED.get(name, serving) and (len(serving) == 1 or name in SHARED)


@pytest.mark.parametrize("node", NODES, ids=node_ids)
def test_every_rpc_of_every_service_has_a_rule(node: Node) -> None:
    wanted = {method_path(service, method.name) for service, method in node.methods()}
    assert wanted, node.name
    missing = sorted(wanted - set(node.rules))
    assert missing == []
    # And no rule for anything else: a key the node does not serve is a mistake.
    assert sorted(set(node.rules) - wanted) == []


@pytest.mark.parametrize("node", NODES, ids=node_ids)
def test_the_rule_tables_admit_exactly_the_policy(node: Node) -> None:
    policy = POLICY[node.name]
    assert set(policy) == {method.name for _, method in node.methods()}
    admitted = {
        method.name: {caller.label for caller in CALLERS if node.admits(service, method, caller)}
        for service, method in node.methods()
    }
    assert admitted == policy


@pytest.mark.parametrize("node", NODES, ids=node_ids)
def test_every_rpc_is_implemented_by_an_async_handler(node: Node) -> None:
    # The interceptor never runs a synchronous handler: one left here would
    # answer UNIMPLEMENTED (the generated stub) or INTERNAL, not serve.
    servicers = SERVICERS[node.name]
    for _, method in node.methods():
        found = [getattr(s, method.name) for s in servicers if hasattr(s, method.name)]
        handler = found[0]
        assert inspect.iscoroutinefunction(handler) or inspect.isasyncgenfunction(handler), (
            node.name,
            method.name,
        )


def test_a_rule_for_a_method_the_service_lacks_stops_the_table() -> None:
    service = NODES[0].services[0]
    anyone = allow(*Kind)
    with pytest.raises(ValueError, match="RegisterBirthday"):
        service_rules(service, {"RegisterBirth": anyone, "RegisterBirthday": anyone})
    with pytest.raises(ValueError, match="no method"):
        method_path(service, "registerBirth")
    table = service_rules(service, {"GetStatus": anyone})
    assert list(table) == [f"/{service.full_name}/GetStatus"]


AUDITED = {
    "municipal": municipal_access.audited(),
    "prefecture": prefecture_access.audited(),
    "national": national_access.audited(),
}


@pytest.mark.parametrize("node", NODES[:3], ids=node_ids)
def test_every_rpc_of_a_logging_node_says_which_residents_it_touches(node: Node) -> None:
    wanted = {method_path(service, method.name) for service, method in node.methods()}
    assert set(AUDITED[node.name]) == wanted


def test_an_audit_table_without_a_method_stops_the_node() -> None:
    table = dict.fromkeys(
        (m.name for m in municipal_access.SERVICE.methods), audit.resident_codes_in
    )
    del table["GetResident"]
    with pytest.raises(ValueError, match="no extractor for \\['GetResident'\\]"):
        audit.audit_table(municipal_access.SERVICE, table)
    table["GetResident"] = audit.no_residents
    table["Unheard"] = audit.no_residents
    with pytest.raises(ValueError, match="not methods \\['Unheard'\\]"):
        audit.audit_table(municipal_access.SERVICE, table)


def test_resident_codes_are_found_at_any_depth() -> None:
    from jukinet.v1 import delivery_pb2, municipal_pb2

    answer = municipal_pb2.ChangeResidentCodeResponse(previous_resident_code="12345678903")
    assert list(audit.resident_codes_in(answer)) == ["12345678903"]
    pool = delivery_pb2.AllocateCodePoolResponse(resident_codes=["1", "2"])
    assert list(audit.resident_codes_in(pool)) == ["1", "2"]
    empty = municipal_pb2.GetResidentRequest()
    assert list(audit.resident_codes_in(empty)) == []
