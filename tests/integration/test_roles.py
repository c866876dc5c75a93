"""Roles at the municipal node over gRPC, from real counter terminals with real
SoftHSM2 cards: every role against every method (the matrix is built from the
permission table, so a method added later fails until it is listed), the
administrator who cannot read residents, the supervisor's own operations, the
auditor who reads the log and nothing else, no self-grant, and a role change
that takes effect on the next call. Every refusal asserts its status, its
reason and that nothing was written."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from jukinet.errors import error_info
from jukinet.identity import Identity
from jukinet.interceptors import method_path
from jukinet.operators import ANY_OPERATOR, NO_SESSION
from jukinet.v1 import common_pb2, municipal_pb2, operator_pb2
from services.municipal import access
from tests.authz import call_method
from tests.federation import Federation, OperatorSession, trailers

TOTTORI = "312011"
TIMEOUT = 15
CLERK = operator_pb2.ROLE_CLERK
SUPERVISOR = operator_pb2.ROLE_SUPERVISOR
AUDITOR = operator_pb2.ROLE_AUDITOR
ADMINISTRATOR = operator_pb2.ROLE_ADMINISTRATOR
ROLES = (CLERK, SUPERVISOR, AUDITOR, ADMINISTRATOR)

# What a refusal may leave behind: the log entry of the refusal, and the
# session's last use.
VOLATILE = ("oplog_", "operator_sessions", "operator_challenges")
SESSION_REFUSALS = (
    "role-missing",
    "no-rule",
    "wrong-identity",
    "session-required",
    "session-invalid",
    "session-expired",
    "login-required",
)


async def register_state(fed: Federation, code: str = TOTTORI) -> dict[str, list[str]]:
    """Every row of every table of the municipal node but the log and the sessions."""
    db = fed.municipalities[code].db
    async with db.read() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        out: dict[str, list[str]] = {}
        for name in sorted(n for n in names if not n.startswith(VOLATILE)):
            rows = (await conn.execute(sa.text(f'SELECT * FROM "{name}"'))).all()
            out[name] = sorted(repr(tuple(r)) for r in rows)
    return out


def person() -> municipal_pb2.PersonDetails:
    """A newborn of Tottori."""
    return municipal_pb2.PersonDetails(
        name="鳥取 太郎",
        name_kana="トットリ タロウ",
        birth_date="2025-05-17",
        sex=common_pb2.SEX_MALE,
        address="鳥取県鳥取市東町1丁目220番地",
    )


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    """The error a call ends with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def methods() -> list[tuple[Any, Any]]:
    """Every method of the node; Logout last, since it ends the session."""
    found = [(s, m) for s in access.OPERATOR_SERVICES for m in s.methods]
    return sorted(found, key=lambda sm: sm[1].name == "Logout")


def allowed(roles: frozenset[int], path: str) -> bool:
    """Whether an operator holding ``roles`` gets past the permission table."""
    table = access.permissions()
    assert path in table, f"{path} has no entry in the permission table"
    wanted = table[path]
    if wanted is NO_SESSION:
        return True
    return wanted == ANY_OPERATOR or bool(wanted & roles)


def test_every_method_is_in_the_permission_table_and_the_tables_agree() -> None:
    table = access.permissions()
    rules = access.rules(TOTTORI)
    for service in access.OPERATOR_SERVICES:
        for method in service.methods:
            path = method_path(service, method.name)
            assert path in table, path
            assert path in rules, path
    # Node to node: no operator calls it, whatever their roles.
    for method in access.RELAY_SERVICE.methods:
        path = method_path(access.RELAY_SERVICE, method.name)
        assert path not in table and path in rules, path
        assert not rules[path](Identity.operator(TOTTORI, "admin")), path
    # The administrator never reaches a resident by that role alone.
    for name in access.ADMINISTRATOR:
        assert name not in access.SERVICE.methods_by_name or name == "GetStatus"
    assert {"ReadOperationLog"} == access.AUDITOR
    assert access.CLERK < access.SUPERVISOR
    assert {"ChangeResidentCode", "RemoveExOfficio"} <= access.SUPERVISOR - access.CLERK


@pytest.mark.parametrize("role", [*ROLES, None], ids=lambda r: "none" if r is None else str(r))
async def test_each_role_against_each_method(fed: Federation, role: int | None) -> None:
    roles = frozenset() if role is None else frozenset({role})
    who = await fed.session(TOTTORI, [role or AUDITOR], operator_id=f"matrix-{role or 0}")
    if role is None:
        # An account every role was withdrawn from (an enrolment grants at least one).
        await fed.municipalities[TOTTORI].roles.withdraw(who.operator.operator_id, AUDITOR)
    for service, method in methods():
        path = method_path(service, method.name)
        before = await register_state(fed)
        outcome = await call_method(who.channel, service, method)
        if allowed(roles, path):
            # Past the tables and the session: the handler's own answer (an empty
            # request is refused as such, a login's challenge is unknown).
            assert outcome.reason not in SESSION_REFUSALS, (path, outcome)
        else:
            assert (outcome.code, outcome.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "role-missing",
            ), (path, outcome)
            assert await register_state(fed) == before, path


async def test_the_administrator_cannot_read_residents(fed: Federation) -> None:
    born = await fed.operator(TOTTORI).RegisterBirth(
        municipal_pb2.RegisterBirthRequest(person=person()), timeout=TIMEOUT
    )
    admin = await fed.session(TOTTORI, [ADMINISTRATOR])
    before = await register_state(fed)
    for call in (
        admin.municipal.GetResident(
            municipal_pb2.GetResidentRequest(resident_code=born.resident.resident_code),
            timeout=TIMEOUT,
        ),
        admin.municipal.RegisterBirth(
            municipal_pb2.RegisterBirthRequest(person=person()), timeout=TIMEOUT
        ),
    ):
        err = await refusal(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert trailers(err)["jukinet-reason"] == "role-missing"
        info = error_info(err)
        assert info is not None and "ROLE_CLERK" in info.metadata["roles"]
    assert await register_state(fed) == before
    # What the role is for: accounts, and the node's status.
    listed = await admin.operators.ListOperators(
        operator_pb2.ListOperatorsRequest(), timeout=TIMEOUT
    )
    assert {a.operator_id for a in listed.operators} >= {"counter", "administrator"}
    await admin.municipal.GetStatus(municipal_pb2.GetMunicipalStatusRequest(), timeout=TIMEOUT)


async def test_only_a_supervisor_changes_a_code_or_removes_ex_officio(fed: Federation) -> None:
    born = await fed.operator(TOTTORI).RegisterBirth(
        municipal_pb2.RegisterBirthRequest(person=person()), timeout=TIMEOUT
    )
    clerk = await fed.session(TOTTORI, [CLERK])
    before = await register_state(fed)
    for call in (
        clerk.municipal.ChangeResidentCode(
            municipal_pb2.ChangeResidentCodeRequest(resident_code=born.resident.resident_code),
            timeout=TIMEOUT,
        ),
        clerk.municipal.RemoveExOfficio(
            municipal_pb2.RemoveExOfficioRequest(resident_code=born.resident.resident_code),
            timeout=TIMEOUT,
        ),
    ):
        err = await refusal(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert trailers(err)["jukinet-reason"] == "role-missing"
        info = error_info(err)
        assert info is not None and info.metadata["roles"] == "ROLE_SUPERVISOR"
    assert await register_state(fed) == before
    # The clerk still does the everyday work.
    await clerk.municipal.GetResident(
        municipal_pb2.GetResidentRequest(resident_code=born.resident.resident_code), timeout=TIMEOUT
    )


async def test_the_auditor_reads_the_log_and_nothing_else(fed: Federation) -> None:
    born = await fed.operator(TOTTORI).RegisterBirth(
        municipal_pb2.RegisterBirthRequest(person=person()), timeout=TIMEOUT
    )
    auditor = await fed.session(TOTTORI, [AUDITOR])
    before = await register_state(fed)
    err = await refusal(
        auditor.municipal.GetResident(
            municipal_pb2.GetResidentRequest(resident_code=born.resident.resident_code),
            timeout=TIMEOUT,
        )
    )
    assert (err.code(), trailers(err)["jukinet-reason"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "role-missing",
    )
    assert await register_state(fed) == before

    read = await auditor.operators.ReadOperationLog(
        operator_pb2.ReadOperationLogRequest(resident_code=born.resident.resident_code),
        timeout=TIMEOUT,
    )
    ops = [(e.operator, e.terminal, e.operation, e.outcome, e.reason) for e in read.entries]
    counter = f"jukinet://operator/{TOTTORI}/counter"
    desk1 = f"jukinet://terminal/{TOTTORI}/desk1"
    auditor_uri = auditor.operator.uri
    assert (counter, desk1, "RegisterBirth", "ok", "") in ops
    # The auditor's refused read is in the log too, under the auditor's name.
    assert (auditor_uri, desk1, "GetResident", "refused", "role-missing") in ops
    # By operator, and a page at a time.
    mine = await auditor.operators.ReadOperationLog(
        operator_pb2.ReadOperationLogRequest(operator_id="counter"), timeout=TIMEOUT
    )
    assert mine.entries and {e.operator for e in mine.entries} == {counter}
    first = await auditor.operators.ReadOperationLog(
        operator_pb2.ReadOperationLogRequest(limit=2), timeout=TIMEOUT
    )
    assert [e.index for e in first.entries] == [0, 1] and first.size > 2
    rest = await auditor.operators.ReadOperationLog(
        operator_pb2.ReadOperationLogRequest(start=2, limit=1), timeout=TIMEOUT
    )
    assert [e.index for e in rest.entries] == [2]
    # The enrolments on the host are entries too.
    enrolled = await auditor.operators.ReadOperationLog(
        operator_pb2.ReadOperationLogRequest(operator_id="auditor"), timeout=TIMEOUT
    )
    assert ("host", "EnrollOperator") in {(e.terminal, e.operation) for e in enrolled.entries}


async def admins(fed: Federation) -> tuple[OperatorSession, OperatorSession]:
    """Two administrators of Tottori, each logged in."""
    first = await fed.session(TOTTORI, [ADMINISTRATOR], operator_id="admin-a")
    second = await fed.session(TOTTORI, [ADMINISTRATOR], operator_id="admin-b", terminal="desk2")
    return first, second


async def test_nobody_grants_themselves_a_role(fed: Federation) -> None:
    admin, _ = await admins(fed)
    before = await register_state(fed)
    me = admin.operator.operator_id
    for call in (
        admin.operators.GrantRole(
            operator_pb2.GrantRoleRequest(operator_id=me, role=SUPERVISOR), timeout=TIMEOUT
        ),
        admin.operators.WithdrawRole(
            operator_pb2.WithdrawRoleRequest(operator_id=me, role=ADMINISTRATOR),
            timeout=TIMEOUT,
        ),
        admin.operators.ResetPassword(
            operator_pb2.ResetPasswordRequest(operator_id=me, new_password="Another-pass-0002"),
            timeout=TIMEOUT,
        ),
    ):
        err = await refusal(call)
        assert (err.code(), trailers(err)["jukinet-reason"]) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "self-grant",
        )
    assert await register_state(fed) == before


async def test_the_target_must_exist(fed: Federation) -> None:
    admin, _ = await admins(fed)
    before = await register_state(fed)
    for call in (
        admin.operators.GrantRole(
            operator_pb2.GrantRoleRequest(operator_id="nobody", role=CLERK), timeout=TIMEOUT
        ),
        admin.operators.WithdrawRole(
            operator_pb2.WithdrawRoleRequest(operator_id="nobody", role=CLERK), timeout=TIMEOUT
        ),
        admin.operators.ResetPassword(
            operator_pb2.ResetPasswordRequest(
                operator_id="nobody", new_password="Another-pass-0002"
            ),
            timeout=TIMEOUT,
        ),
    ):
        err = await refusal(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert trailers(err)["jukinet-reason"] == "not-found"
    assert await register_state(fed) == before


async def test_the_last_administrator_keeps_the_role(fed: Federation) -> None:
    first, second = await admins(fed)
    # One withdraws the other's role; then the one left is the last.
    await first.operators.WithdrawRole(
        operator_pb2.WithdrawRoleRequest(operator_id="admin-b", role=ADMINISTRATOR),
        timeout=TIMEOUT,
    )
    err = await refusal(
        second.operators.ListOperators(operator_pb2.ListOperatorsRequest(), timeout=TIMEOUT)
    )
    assert trailers(err)["jukinet-reason"] == "role-missing"
    # Nobody can withdraw the last one: not themselves (self-grant), and the
    # store refuses it for anyone else (the count and the delete are one transaction).
    roles = fed.municipalities[TOTTORI].roles
    before = await register_state(fed)
    with pytest.raises(Exception) as caught:
        await roles.withdraw("admin-a", ADMINISTRATOR)
    assert getattr(caught.value, "reason", None) == "last-administrator"
    assert await register_state(fed) == before


async def test_a_role_change_takes_effect_on_the_next_call(fed: Federation) -> None:
    admin, _ = await admins(fed)
    clerk = await fed.session(TOTTORI, [CLERK])
    read = operator_pb2.ReadOperationLogRequest(limit=1)
    err = await refusal(clerk.operators.ReadOperationLog(read, timeout=TIMEOUT))
    assert trailers(err)["jukinet-reason"] == "role-missing"
    granted = await admin.operators.GrantRole(
        operator_pb2.GrantRoleRequest(operator_id="clerk", role=AUDITOR), timeout=TIMEOUT
    )
    assert set(granted.account.roles) == {CLERK, AUDITOR}
    await clerk.operators.ReadOperationLog(read, timeout=TIMEOUT)
    await admin.operators.WithdrawRole(
        operator_pb2.WithdrawRoleRequest(operator_id="clerk", role=AUDITOR), timeout=TIMEOUT
    )
    err = await refusal(clerk.operators.ReadOperationLog(read, timeout=TIMEOUT))
    assert trailers(err)["jukinet-reason"] == "role-missing"


async def test_an_administrator_adds_an_operator_who_then_logs_in(fed: Federation) -> None:
    admin, _ = await admins(fed)
    added = await admin.operators.AddOperator(
        operator_pb2.AddOperatorRequest(
            operator_id="newcomer", initial_password="Initial-pass-0001", roles=[CLERK]
        ),
        timeout=TIMEOUT,
    )
    assert added.account.must_change_password and list(added.account.roles) == [CLERK]
    again = await refusal(
        admin.operators.AddOperator(
            operator_pb2.AddOperatorRequest(
                operator_id="newcomer", initial_password="Initial-pass-0001", roles=[CLERK]
            ),
            timeout=TIMEOUT,
        )
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    fed.enrolled.add(Identity.operator(TOTTORI, "newcomer"))  # by the administrator, not the host
    newcomer = await fed.session(
        TOTTORI, [CLERK], operator_id="newcomer", terminal="desk2", first=True
    )
    who = await newcomer.operators.WhoAmI(operator_pb2.WhoAmIRequest(), timeout=TIMEOUT)
    assert who.session.operator == f"jukinet://operator/{TOTTORI}/newcomer"
    assert who.session.terminal == f"jukinet://terminal/{TOTTORI}/desk2"
    assert list(who.session.roles) == [CLERK]
