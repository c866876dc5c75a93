"""Operators at a node's counter terminals over gRPC: roles, sessions per call, the service.

- **Roles** (:class:`Roles`): the roles an administrator granted, one row per
  (organisation, operator, role) with who granted it and when. Role values
  are those of the ``jukinet.v1.Role`` enum. They are read on every call, so
  a role granted or withdrawn takes effect on the next call of every open
  session.
- **Permissions**: a node's table of which roles may call each method
  (:data:`Permissions`): a set of roles (any one of them will do), the empty
  set for "any operator in a session", or :data:`NO_SESSION` for the methods
  a terminal calls before it has one (BeginLogin, Login).
- **Sessions per call** (:class:`OperatorSessions`): the interceptor's
  session hook (:class:`jukinet.interceptors.SessionHook`). It resolves the
  ``jukinet-session`` token of a terminal's call to the operator logged in
  there, and refuses a method none of the operator's roles allows
  (``role-missing``, naming the roles that would).
- **The service** (:class:`OperatorServicer`): ``jukinet.v1.OperatorService``
  on top of :class:`~jukinet.login.OperatorStore`, :class:`Roles` and the
  node's operation log. Object-level rules: nobody grants or withdraws a role
  of their own nor resets their own password (``self-grant``), the target
  account must exist (NOT_FOUND) and the last administrator keeps the role
  (``last-administrator``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography import x509
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    delete,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.exc import IntegrityError

from jukinet.clock import Clock
from jukinet.db import Database
from jukinet.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from jukinet.identity import Identity
from jukinet.interceptors import (
    current_identity,
    current_session_token,
    current_terminal,
    name_operator,
)
from jukinet.login import OperatorStore, Session, as_utc
from jukinet.oplog.entry import Operation
from jukinet.oplog.log import OperationLog, OplogTables
from jukinet.pki import certificate_identity
from jukinet.reasons import Reason
from jukinet.v1 import operator_pb2, operator_pb2_grpc

Context: TypeAlias = Any

ROLES: tuple[int, ...] = (
    operator_pb2.ROLE_CLERK,
    operator_pb2.ROLE_SUPERVISOR,
    operator_pb2.ROLE_AUDITOR,
    operator_pb2.ROLE_ADMINISTRATOR,
)
"""Every role an operator can hold."""

NO_SESSION: None = None
"""In a permission table: a terminal calls the method without a session."""

ANY_OPERATOR: frozenset[int] = frozenset()
"""In a permission table: any operator in a session."""

Permissions: TypeAlias = Mapping[str, "frozenset[int] | None"]
"""Full method name -> the roles that may call it (one of them), :data:`ANY_OPERATOR`
or :data:`NO_SESSION`."""

READ_PAGE = 100
READ_PAGE_MAX = 1000
HOST_TERMINAL = "host"
"""The terminal of an entry written on the node's host rather than at a terminal."""


def role_name(role: int) -> str:
    """The enum name of ``role`` (``ROLE_CLERK``)."""
    return str(operator_pb2.Role.Name(operator_pb2.Role.ValueType(role)))


def check_roles(roles: Iterable[int], field: str = "roles") -> tuple[int, ...]:
    """``roles`` as distinct valid values, in order; InvalidArgument otherwise."""
    out: list[int] = []
    for role in roles:
        if role not in ROLES:
            raise InvalidArgument(field, f"{role} is not a role")
        if role not in out:
            out.append(role)
    return tuple(out)


class RoleMissing(PermissionDenied):
    """No role of the operator allows the method; ErrorInfo ``roles`` names those that would."""

    reason = Reason.ROLE_MISSING

    def __init__(self, operator: Identity, method: str, allowed: Iterable[int]) -> None:
        self.allowed = tuple(sorted(allowed))
        names = ", ".join(role_name(r) for r in self.allowed)
        super().__init__(
            f"{operator.uri} may not call {method.rsplit('/', 1)[-1]}: it needs the role {names}"
            if len(self.allowed) == 1
            else f"{operator.uri} may not call {method.rsplit('/', 1)[-1]}: "
            f"it needs one of the roles {names}"
        )

    def info(self) -> Mapping[str, str]:
        """The roles that would allow the call, comma-separated."""
        return {"roles": ",".join(role_name(r) for r in self.allowed)}


# --- roles -----------------------------------------------------------------------


def define_role_table(metadata: MetaData) -> Table:
    """Add the table of granted roles to a node's metadata."""
    return Table(
        "operator_roles",
        metadata,
        Column("org", String(8), nullable=False),
        Column("operator_id", String(64), nullable=False),
        Column("role", SmallInteger, nullable=False),
        # Who granted it: an operator's URI, or "host" for an enrolment on the node's host.
        Column("granted_by", String(120), nullable=False),
        Column("granted_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("org", "operator_id", "role", name="pk_operator_roles"),
    )


class Roles:
    """The roles granted at one organisation's node."""

    def __init__(self, db: Database, table: Table, org: str, clock: Clock) -> None:
        self.db = db
        self.t = table
        self.org = org
        self.clock = clock

    async def of(self, operator_id: str) -> frozenset[int]:
        """The roles ``operator_id`` holds now."""
        c = self.t.c
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(c.role).where(c.org == self.org, c.operator_id == operator_id)
            )
            return frozenset(int(r) for (r,) in rows)

    async def all(self) -> dict[str, frozenset[int]]:
        """Every operator's roles, by operator id."""
        c = self.t.c
        out: dict[str, set[int]] = {}
        async with self.db.read() as conn:
            for operator_id, role in await conn.execute(
                select(c.operator_id, c.role).where(c.org == self.org)
            ):
                out.setdefault(str(operator_id), set()).add(int(role))
        return {k: frozenset(v) for k, v in out.items()}

    async def grant(self, operator_id: str, roles: Iterable[int], granted_by: str) -> None:
        """Grant ``roles`` (those already held stay as they were)."""
        held = await self.of(operator_id)
        now = self.clock.now()
        new = [r for r in check_roles(roles) if r not in held]
        if not new:
            return
        async with self.db.write() as conn:
            for role in new:
                await conn.execute(
                    insert(self.t).values(
                        org=self.org,
                        operator_id=operator_id,
                        role=role,
                        granted_by=granted_by,
                        granted_at=now,
                    )
                )

    async def withdraw(self, operator_id: str, role: int) -> None:
        """Withdraw ``role``; the last administrator keeps it (``last-administrator``).

        The count and the delete are one transaction, so two administrators
        withdrawing each other's role at once cannot both succeed.
        """
        c = self.t.c
        async with self.db.write() as conn:
            if role == operator_pb2.ROLE_ADMINISTRATOR:
                admins = (
                    await conn.execute(
                        select(func.count()).where(
                            c.org == self.org, c.role == operator_pb2.ROLE_ADMINISTRATOR
                        )
                    )
                ).scalar_one()
                holds = (
                    await conn.execute(
                        select(func.count()).where(
                            c.org == self.org, c.operator_id == operator_id, c.role == role
                        )
                    )
                ).scalar_one()
                if holds and admins <= 1:
                    raise FailedPrecondition(
                        f"{operator_id} is the last administrator of {self.org}: "
                        "grant the role to another operator first",
                        reason=Reason.LAST_ADMINISTRATOR,
                    )
            await conn.execute(
                delete(self.t).where(
                    c.org == self.org, c.operator_id == operator_id, c.role == role
                )
            )


# --- sessions per call -------------------------------------------------------------


class OperatorSessions:
    """The interceptor's session hook: a terminal's token -> the operator, roles checked."""

    def __init__(self, store: OperatorStore, roles: Roles, permissions: Permissions) -> None:
        self.store = store
        self.roles = roles
        self.permissions = dict(permissions)

    def needs_session(self, method: str) -> bool:
        """False for the methods a terminal calls before a session (and unknown ones)."""
        return self.permissions.get(method, NO_SESSION) is not NO_SESSION

    async def resolve(self, token: str, terminal: Identity) -> Identity:
        """The operator of session ``token`` at ``terminal`` (the session marked as used)."""
        session = await self.store.session(token, terminal)
        return session.operator

    async def check(self, method: str, operator: Identity) -> None:
        """Refuse (``role-missing``) a method none of ``operator``'s roles allows, read now."""
        allowed = self.permissions.get(method)
        if allowed is None:
            # needs_session() said no: the interceptor does not ask then.
            raise PermissionDenied(f"{method} takes no session", reason=Reason.NO_RULE)
        if allowed:
            held = await self.roles.of(operator.operator_id)
            if not held & allowed:
                raise RoleMissing(operator, method, allowed)


# --- the service --------------------------------------------------------------------


def _timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(as_utc(value).astimezone(dt.UTC))
    return ts


@dataclass(frozen=True)
class OperationLogReader:
    """Reads a node's operation log entries (ReadOperationLog)."""

    db: Database
    tables: OplogTables

    async def read(
        self, *, operator: str = "", resident_code: str = "", start: int = 0, limit: int = 0
    ) -> tuple[list[operator_pb2.OperationLogEntry], int]:
        """Entries from index ``start`` on, filtered; and the log's size."""
        t = self.tables.entries
        limit = min(limit or READ_PAGE, READ_PAGE_MAX)
        query = select(t).where(t.c.idx >= start)
        if operator:
            query = query.where(t.c.operator == operator)
        if resident_code:
            query = query.where(
                (literal(",") + t.c.resident_codes + literal(",")).like(f"%,{resident_code},%")
            )
        query = query.order_by(t.c.idx).limit(limit)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
            size = (await conn.execute(select(func.count()).select_from(t))).scalar_one()
        entries = []
        for r in rows:
            when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                microseconds=int(r["recorded_us"])
            )
            entries.append(
                operator_pb2.OperationLogEntry(
                    index=int(r["idx"]),
                    time=_timestamp(when),
                    operator=str(r["operator"]),
                    terminal=str(r["terminal"]),
                    operation=str(r["operation"]),
                    resident_codes=[c for c in str(r["resident_codes"]).split(",") if c],
                    outcome=str(r["outcome"]),
                    reason=str(r["reason"]),
                )
            )
        return entries, int(size)


def _operator_of(org: str, operator_id: str, field: str = "operator_id") -> Identity:
    if not operator_id:
        raise InvalidArgument(field, "required")
    try:
        return Identity.operator(org, operator_id)
    except ValueError as exc:
        raise InvalidArgument(field, str(exc)) from None


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
    """``jukinet.v1.OperatorService`` of one organisation's node (proto <-> store and roles)."""

    def __init__(self, store: OperatorStore, roles: Roles, log: OperationLogReader) -> None:
        self.store = store
        self.roles = roles
        self.log = log

    def _operator(self, operator_id: str, field: str = "operator_id") -> Identity:
        return _operator_of(self.store.org, operator_id, field)

    async def _info(self, session: Session) -> operator_pb2.SessionInfo:
        roles = await self.roles.of(session.operator.operator_id)
        return operator_pb2.SessionInfo(
            operator=session.operator.uri,
            terminal=session.terminal.uri,
            roles=[operator_pb2.Role.ValueType(r) for r in sorted(roles)],
            created_at=_timestamp(session.created_at),
            expires_at=_timestamp(session.expires_at),
            idle_expires_at=_timestamp(
                min(session.expires_at, session.last_seen_at + self.store.policy.session_idle)
            ),
        )

    async def _account(self, operator_id: str) -> operator_pb2.OperatorAccount:
        row = await self.store.account(self._operator(operator_id))
        if row is None:
            raise NotFound(f"no operator {operator_id} at {self.store.org}")
        return _account_message(row, await self.roles.of(operator_id))

    def _check_not_self(self, operator_id: str, what: str) -> None:
        if current_identity().operator_id == operator_id:
            raise PermissionDenied(
                f"nobody {what} themselves: another administrator does it",
                reason=Reason.SELF_GRANT,
            )

    # a terminal, before a session

    async def BeginLogin(
        self, request: operator_pb2.BeginLoginRequest, context: Context
    ) -> operator_pb2.BeginLoginResponse:
        """A challenge for the card of the operator named."""
        operator = self._operator(request.operator_id)
        name_operator(operator)
        challenge = await self.store.issue_challenge(_terminal(), operator)
        return operator_pb2.BeginLoginResponse(
            challenge=challenge.message(),
            nonce=challenge.nonce,
            expires_at=_timestamp(challenge.expires_at),
        )

    async def Login(
        self, request: operator_pb2.LoginRequest, context: Context
    ) -> operator_pb2.LoginResponse:
        """Verify the signed challenge and the password; open a session."""
        # An unreadable card is refused by the store (card-invalid); the entry names the terminal.
        with contextlib.suppress(ValueError):
            card = x509.load_der_x509_certificate(request.card_certificate)
            name_operator(certificate_identity(card))
        opened = await self.store.login(
            _terminal(),
            request.nonce,
            request.card_certificate,
            request.signature,
            request.password,
            new_password=request.new_password or None,
        )
        return operator_pb2.LoginResponse(
            session_token=opened.token, session=await self._info(opened.session)
        )

    # any operator in a session

    async def Logout(
        self, request: operator_pb2.LogoutRequest, context: Context
    ) -> operator_pb2.LogoutResponse:
        """End the session of the call."""
        await self.store.logout(_token())
        return operator_pb2.LogoutResponse()

    async def WhoAmI(
        self, request: operator_pb2.WhoAmIRequest, context: Context
    ) -> operator_pb2.WhoAmIResponse:
        """The session of the call."""
        session = await self.store.session(_token(), _terminal())
        return operator_pb2.WhoAmIResponse(session=await self._info(session))

    async def ChangePassword(
        self, request: operator_pb2.ChangePasswordRequest, context: Context
    ) -> operator_pb2.ChangePasswordResponse:
        """Change the caller's own password (the old one typed again)."""
        if not request.new_password:
            raise InvalidArgument("new_password", "required")
        await self.store.change_password(
            _token(), _terminal(), request.old_password, request.new_password
        )
        return operator_pb2.ChangePasswordResponse()

    # administrators

    async def AddOperator(
        self, request: operator_pb2.AddOperatorRequest, context: Context
    ) -> operator_pb2.AddOperatorResponse:
        """A new account with an initial password (changed at the first login) and roles."""
        operator = self._operator(request.operator_id)
        roles = check_roles(request.roles)
        if not request.initial_password:
            raise InvalidArgument("initial_password", "required")
        if await self.store.account(operator) is not None:
            raise AlreadyExists(f"operator {operator.operator_id} exists already")
        try:
            await self.store.add_operator(operator, request.initial_password, must_change=True)
        except IntegrityError:
            raise AlreadyExists(f"operator {operator.operator_id} exists already") from None
        await self.roles.grant(operator.operator_id, roles, current_identity().uri)
        return operator_pb2.AddOperatorResponse(account=await self._account(operator.operator_id))

    async def ResetPassword(
        self, request: operator_pb2.ResetPasswordRequest, context: Context
    ) -> operator_pb2.ResetPasswordResponse:
        """Set a password the operator must change at the next login; lift the lockout."""
        operator = self._operator(request.operator_id)
        self._check_not_self(operator.operator_id, "resets the password of")
        if not request.new_password:
            raise InvalidArgument("new_password", "required")
        if await self.store.account(operator) is None:
            raise NotFound(f"no operator {operator.operator_id} at {self.store.org}")
        await self.store.reset_password(operator, request.new_password)
        return operator_pb2.ResetPasswordResponse()

    async def GrantRole(
        self, request: operator_pb2.GrantRoleRequest, context: Context
    ) -> operator_pb2.GrantRoleResponse:
        """Grant a role to another operator."""
        operator = self._operator(request.operator_id)
        (role,) = check_roles([request.role], "role")
        self._check_not_self(operator.operator_id, "grants a role to")
        await self._account(operator.operator_id)  # NOT_FOUND
        await self.roles.grant(operator.operator_id, [role], current_identity().uri)
        return operator_pb2.GrantRoleResponse(account=await self._account(operator.operator_id))

    async def WithdrawRole(
        self, request: operator_pb2.WithdrawRoleRequest, context: Context
    ) -> operator_pb2.WithdrawRoleResponse:
        """Withdraw a role from another operator (never the last administrator's)."""
        operator = self._operator(request.operator_id)
        (role,) = check_roles([request.role], "role")
        self._check_not_self(operator.operator_id, "withdraws a role from")
        await self._account(operator.operator_id)
        await self.roles.withdraw(operator.operator_id, role)
        return operator_pb2.WithdrawRoleResponse(account=await self._account(operator.operator_id))

    async def ListOperators(
        self, request: operator_pb2.ListOperatorsRequest, context: Context
    ) -> operator_pb2.ListOperatorsResponse:
        """Every account of the node with its roles."""
        roles = await self.roles.all()
        return operator_pb2.ListOperatorsResponse(
            operators=[
                _account_message(row, roles.get(str(row.operator_id), frozenset()))
                for row in await self.store.accounts()
            ]
        )

    # auditors

    async def ReadOperationLog(
        self, request: operator_pb2.ReadOperationLogRequest, context: Context
    ) -> operator_pb2.ReadOperationLogResponse:
        """Entries of the node's operation log, by operator or resident, a page at a time."""
        operator = self._operator(request.operator_id).uri if request.operator_id else ""
        if request.resident_code and not request.resident_code.isdigit():
            raise InvalidArgument("resident_code", "digits only")
        entries, size = await self.log.read(
            operator=operator,
            resident_code=request.resident_code,
            start=request.start,
            limit=request.limit,
        )
        return operator_pb2.ReadOperationLogResponse(entries=entries, size=size)


def _account_message(row: Any, roles: Iterable[int]) -> operator_pb2.OperatorAccount:
    locked = row.locked_until
    return operator_pb2.OperatorAccount(
        operator_id=str(row.operator_id),
        roles=[operator_pb2.Role.ValueType(r) for r in sorted(roles)],
        password_changed_at=_timestamp(row.password_changed_at),
        must_change_password=bool(row.must_change),
        locked_until=_timestamp(locked),
    )


def _terminal() -> Identity:
    terminal = current_terminal()
    if terminal is None:
        raise PermissionDenied("only a counter terminal calls this", reason=Reason.WRONG_IDENTITY)
    return terminal


def _token() -> str:
    token = current_session_token()
    if token is None:
        raise PermissionDenied("the call carries no session", reason=Reason.SESSION_REQUIRED)
    return token


# --- enrolment on the host ---------------------------------------------------------


async def enroll(
    store: OperatorStore,
    roles: Roles,
    oplog: OperationLog,
    operator_id: str,
    password: str,
    role_values: Sequence[int],
) -> None:
    """Create an account on the node's host (no gRPC): the first administrator.

    The password must be changed at the first login. An existing operator id
    is refused (:class:`~jukinet.errors.AlreadyExists`); the enrolment is an
    entry of the operation log, at terminal ``host``.
    """
    operator = _operator_of(store.org, operator_id)
    wanted = check_roles(role_values)
    if not wanted:
        raise InvalidArgument("roles", "at least one role")
    if await store.account(operator) is not None:
        raise AlreadyExists(f"operator {operator_id} exists already at {store.org}")
    try:
        await store.add_operator(operator, password, must_change=True)
    except IntegrityError:
        raise AlreadyExists(f"operator {operator_id} exists already at {store.org}") from None
    await roles.grant(operator_id, wanted, HOST_TERMINAL)
    async with store.db.write() as conn:
        await oplog.append(
            conn,
            Operation(
                time=store.clock.now(),
                operator=operator.uri,
                terminal=HOST_TERMINAL,
                operation="EnrollOperator",
                resident_codes=(),
                outcome="ok",
                reason=",".join(role_name(r) for r in wanted),
            ),
        )
