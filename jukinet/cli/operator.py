r"""``jukinet operator``: operator accounts and their roles at a municipal node.

::

    jukinet operator enroll --config municipality-312011.toml --operator-id k.suzuki \
        --role administrator [--password-file FILE]          # on the node's host, once
    jukinet operator add t.tanaka --role clerk [--role supervisor] [--password-file FILE]
    jukinet operator grant t.tanaka supervisor
    jukinet operator withdraw t.tanaka supervisor
    jukinet operator reset-password t.tanaka [--password-file FILE]
    jukinet operator list

Every command but ``enroll`` runs in an administrator's session at a counter
terminal (``jukinet login``; the options of every counter command:
``--target``, ``--pki``, ``--as``, ``--session``). An administrator manages
accounts and roles and never reads residents; nobody grants a role to,
withdraws one from or resets the password of themselves.

``enroll`` makes the first administrator: it runs on the node's host with the
node's config (it writes to the node's database directly, no call) and is
logged in the node's operation log. The initial password (and the one ``add``
and ``reset-password`` set) comes from ``--password-file`` (first line) or
``JUKINET_INITIAL_PASSWORD``, else is asked twice; the operator must change it
at the first login.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from google.protobuf.message import Message

from jukinet.cli.common import counter_options, in_jst, plain, run_call
from jukinet.cli.counter import read_secret
from jukinet.cli.session import ROLE_NAMES, role_name
from jukinet.errors import ConfigError, JukinetError
from jukinet.textwidth import table
from jukinet.v1 import operator_pb2, operator_pb2_grpc

INITIAL_PASSWORD_ENV = "JUKINET_INITIAL_PASSWORD"
SERVICE = "jukinet.v1.OperatorService"
FLAGS = {
    "operator_id": "the operator id",
    "initial_password": "the initial password",
    "new_password": "the new password",
    "role": "the role",
    "roles": "--role",
}


def _stub(channel: Any) -> Any:
    return operator_pb2_grpc.OperatorServiceStub(channel)


def _initial_password(args: argparse.Namespace) -> str:
    return read_secret(
        "initial password",
        file=args.password_file,
        env=INITIAL_PASSWORD_ENV,
        file_option="--password-file",
        confirm=True,
    )


def _show_account(account: operator_pb2.OperatorAccount) -> None:
    roles = ", ".join(role_name(r) for r in account.roles) or "no role"
    notes = []
    if account.must_change_password:
        notes.append("must change the password at the next login")
    if account.HasField("locked_until"):
        notes.append(f"locked until {in_jst(account.locked_until.ToJsonString())}")
    print(f"{account.operator_id}: {roles}" + (f" ({'; '.join(notes)})" if notes else ""))


def _print_list(answer: operator_pb2.ListOperatorsResponse) -> None:
    headers = ("operator", "roles", "password changed", "must change", "locked until")
    rows = []
    for a in answer.operators:
        rows.append(
            (
                a.operator_id,
                ", ".join(role_name(r) for r in a.roles) or "-",
                in_jst(a.password_changed_at.ToJsonString())[:16]
                if a.HasField("password_changed_at")
                else "-",
                "yes" if a.must_change_password else "no",
                in_jst(a.locked_until.ToJsonString())[:16] if a.HasField("locked_until") else "-",
            )
        )
    print("\n".join(table(headers, rows)))


def _role(text: str) -> operator_pb2.Role.ValueType:
    if text not in ROLE_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r}: one of {', '.join(ROLE_NAMES)}")
    return ROLE_NAMES[text]


def _cmd_enroll(args: argparse.Namespace) -> int:
    from jukinet.config import MunicipalConfig, load_config
    from services.municipal.operators import enroll_operator

    try:
        config = load_config(MunicipalConfig, args.config)
        password = _initial_password(args)
        asyncio.run(enroll_operator(config, args.operator_id, password, list(args.role)))
    except (ConfigError, JukinetError) as exc:
        print(f"jukinet operator enroll: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    roles = ", ".join(role_name(r) for r in args.role)
    print(
        f"enrolled {args.operator_id} ({roles}) at {config.local_government_code}; "
        "the password must be changed at the first login"
    )
    return 0


def _role_command(rpc: str, request: Any) -> Any:
    """The command that sends ``rpc`` (GrantRole, WithdrawRole) with operator and role."""

    async def call(ch: Any, a: argparse.Namespace) -> Message:
        answer: Message = await getattr(_stub(ch), rpc)(
            request(operator_id=a.operator_id, role=a.role)
        )
        return answer

    return lambda a: run_call(
        a, call, lambda r: _show_account(r.account), service=SERVICE, flags=FLAGS
    )


def register_cli(sub: Any) -> None:
    """Add ``operator add|grant|withdraw|list|reset-password|enroll`` to the ``jukinet`` parser."""
    group = sub.add_parser(
        "operator",
        help="operator accounts and roles (an administrator's session)",
        description=plain(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = group.add_subparsers(dest="operator_command", required=True)
    role_help = "one of " + ", ".join(ROLE_NAMES)

    add = ops.add_parser("add", help="a new operator account with roles and an initial password")
    counter_options(add)
    add.add_argument("operator_id")
    add.add_argument("--role", type=_role, action="append", default=[], help=role_help)
    add.add_argument("--password-file", metavar="FILE", help="the initial password's file")

    async def do_add(ch: Any, a: argparse.Namespace) -> Message:
        answer: Message = await _stub(ch).AddOperator(
            operator_pb2.AddOperatorRequest(
                operator_id=a.operator_id, initial_password=a.initial, roles=a.role
            )
        )
        return answer

    def run_add(a: argparse.Namespace) -> int:
        try:
            a.initial = _initial_password(a)
        except ConfigError as exc:
            print(f"jukinet operator add: {exc}", file=sys.stderr)
            return 2
        return run_call(a, do_add, lambda r: _show_account(r.account), service=SERVICE, flags=FLAGS)

    add.set_defaults(func=run_add)

    for name, rpc, request, what in (
        ("grant", "GrantRole", operator_pb2.GrantRoleRequest, "grant a role to an operator"),
        (
            "withdraw",
            "WithdrawRole",
            operator_pb2.WithdrawRoleRequest,
            "withdraw a role from an operator",
        ),
    ):
        p = ops.add_parser(name, help=what)
        counter_options(p)
        p.add_argument("operator_id")
        p.add_argument("role", type=_role, help=role_help)

        p.set_defaults(func=_role_command(rpc, request))

    reset = ops.add_parser(
        "reset-password", help="set a new password, to change at the next login; lifts a lockout"
    )
    counter_options(reset)
    reset.add_argument("operator_id")
    reset.add_argument("--password-file", metavar="FILE", help="the new password's file")

    async def do_reset(ch: Any, a: argparse.Namespace) -> Message:
        answer: Message = await _stub(ch).ResetPassword(
            operator_pb2.ResetPasswordRequest(operator_id=a.operator_id, new_password=a.initial)
        )
        return answer

    def run_reset(a: argparse.Namespace) -> int:
        try:
            a.initial = _initial_password(a)
        except ConfigError as exc:
            print(f"jukinet operator reset-password: {exc}", file=sys.stderr)
            return 2
        return run_call(
            a,
            do_reset,
            lambda _: print(f"password of {a.operator_id} reset: to change at the next login"),
            service=SERVICE,
            flags=FLAGS,
        )

    reset.set_defaults(func=run_reset)

    listing = ops.add_parser("list", help="every operator account and its roles")
    counter_options(listing)

    async def do_list(ch: Any, a: argparse.Namespace) -> Message:
        answer: Message = await _stub(ch).ListOperators(operator_pb2.ListOperatorsRequest())
        return answer

    listing.set_defaults(func=lambda a: run_call(a, do_list, _print_list, service=SERVICE))

    enroll = ops.add_parser(
        "enroll", help="on the node's host: the first administrator (no call, the node's database)"
    )
    enroll.add_argument("--config", required=True, help="the municipal node's TOML config")
    enroll.add_argument("--operator-id", required=True)
    enroll.add_argument(
        "--role",
        type=_role,
        action="append",
        required=True,
        help=role_help + " (repeatable; the first account: administrator)",
    )
    enroll.add_argument("--password-file", metavar="FILE", help="the initial password's file")
    enroll.set_defaults(func=_cmd_enroll)
