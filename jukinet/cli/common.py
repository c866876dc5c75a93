"""What every command group shares: connection options, one call, output and errors.

Output is JSON on stdout; times in it are shown in Japan Standard Time with
their offset (``2026-11-27T09:30:00+09:00``), as a person at the counter reads
them. An error is one line on stderr naming what to fix, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jukinet.cli import session as sessions
from jukinet.client import connect, describe_error
from jukinet.errors import ConfigError, error_metadata
from jukinet.v1 import common_pb2, municipal_pb2

SEX: dict[str, common_pb2.Sex.ValueType] = {
    "male": common_pb2.SEX_MALE,
    "female": common_pb2.SEX_FEMALE,
}

RELATIONSHIPS: dict[str, municipal_pb2.Relationship.ValueType] = {
    name.removeprefix("RELATIONSHIP_").lower().replace("_", "-"): value
    for name, value in municipal_pb2.Relationship.items()
    if value != municipal_pb2.RELATIONSHIP_UNSPECIFIED
}
"""続柄 as options and files name them: the enum's names without their prefix,
e.g. ``wife``, ``childs-wife``."""

JST = dt.timezone(dt.timedelta(hours=9), "JST")
"""The zone every time the CLI prints is shown in."""

# Each node serves one of these (besides health); used to say who answers at
# --target when a command meets the wrong tier.
SERVICES: dict[str, str] = {
    "jukinet.v1.MunicipalService": "a municipal node",
    "jukinet.v1.PrefectureService": "a prefecture node",
    "jukinet.v1.NationalService": "the national node",
    "jukinet.v1.GatewayService": "the agency gateway",
}

# Request fields as the user typed them: proto field -> option. Commands add
# their own (``resident_code`` is ``CODE`` for some and ``--code`` for others).
PERSON_FLAGS: dict[str, str] = {
    "person.name": "--name",
    "person.name_kana": "--kana",
    "person.former_surname": "--former-surname",
    "person.alias": "--alias",
    "person.birth_date": "--birth-date",
    "person.sex": "--sex",
    "person.address": "--address",
}


_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def in_jst(stamp: str) -> str:
    """An RFC 3339 time as JST with its offset; anything else unchanged."""
    if not _RFC3339.match(stamp):
        return stamp
    try:
        at = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return at.astimezone(JST).isoformat()


def _times_in_jst(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _times_in_jst(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_times_in_jst(v) for v in value]
    if isinstance(value, str):
        return in_jst(value)
    return value


def print_message(message: Message, *, all_fields: bool = False) -> None:
    """``message`` as indented JSON, times in JST; ``all_fields`` also prints
    false, zero and empty fields."""
    body = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=all_fields,
    )
    print(json.dumps(_times_in_jst(body), ensure_ascii=False, indent=2))


def connection_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--target``, ``--pki`` and ``--as`` (defaults from JUKINET_* variables)."""
    env = os.environ
    parser.add_argument("--target", default=env.get("JUKINET_TARGET"), help="host:port of the node")
    parser.add_argument("--pki", default=env.get("JUKINET_PKI", "pki"), help="PKI folder")
    parser.add_argument(
        "--as",
        dest="identity",
        default=env.get("JUKINET_AS"),
        help="certificate name in the PKI folder, e.g. operator-312011-admin",
    )


def counter_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of a command an operator runs at a counter terminal:
    ``--target`` (the municipal node), ``--pki``, ``--as`` (the terminal's
    certificate) and ``--session`` (the session file ``jukinet login`` wrote).

    Defaults come from JUKINET_TARGET, JUKINET_PKI, JUKINET_TERMINAL (else
    JUKINET_AS) and JUKINET_SESSION.
    """
    env = os.environ
    parser.add_argument(
        "--target", default=env.get("JUKINET_TARGET"), help="host:port of the municipal node"
    )
    parser.add_argument("--pki", default=env.get("JUKINET_PKI", "pki"), help="PKI folder")
    parser.add_argument(
        "--as",
        "--terminal",
        dest="identity",
        default=env.get("JUKINET_TERMINAL") or env.get("JUKINET_AS"),
        help="the counter terminal's certificate name in the PKI folder, "
        "e.g. terminal-312011-desk1",
    )
    parser.add_argument(
        "--session",
        dest="session_file",
        default=env.get(sessions.SESSION_ENV),
        metavar="FILE",
        help="the session file (default: one per node and terminal in "
        "$XDG_STATE_HOME/jukinet/, else ~/.local/state/jukinet/)",
    )
    parser.set_defaults(counter=True)


def login_command(args: argparse.Namespace) -> str:
    """The ``jukinet login`` line for this command's node and terminal."""
    line = f"jukinet login --target {args.target} --pki {args.pki} --as {args.identity}"
    if getattr(args, "session_file", None):
        line += f" --session {args.session_file}"
    return line


def load_session(args: argparse.Namespace) -> sessions.SavedSession:
    """The session of this command's node and terminal; SessionFileError says what to do."""
    path = sessions.chosen_path(args)
    saved = sessions.load(path, login_hint=login_command(args))
    if saved.target != args.target or saved.terminal != args.identity:
        raise sessions.NoSession(
            f"the session in {path} is of {saved.terminal} at {saved.target}, not of "
            f"{args.identity} at {args.target}: log in first: {login_command(args)}"
        )
    return saved


# Reasons of a refused session: the operator has to log in (again).
_LOG_IN_AGAIN = {
    "session-required": "log in first",
    "session-invalid": "the session has ended: log in again",
    "session-expired": "the session has expired: log in again",
    "wrong-terminal": "the session was ended (its token came from another terminal): log in again",
}


def counter_trouble(
    args: argparse.Namespace, exc: grpc.aio.AioRpcError, saved: sessions.SavedSession | None
) -> str:
    """What the operator should do about a refused counter call ("" if nothing to add).

    A session the node no longer knows is removed from the session file.
    """
    reason = error_metadata(exc).get("jukinet-reason", "")
    if reason in _LOG_IN_AGAIN:
        if reason != "session-required":
            sessions.remove(sessions.chosen_path(args))
        return f"{_LOG_IN_AGAIN[reason]}: {login_command(args)}"
    if reason == "login-required":
        return (
            "an operator works at a counter terminal: give the terminal's certificate "
            "(--as terminal-<code>-desk1) and log in with the card: jukinet login ..."
        )
    if reason == "role-missing" and saved is not None:
        roles = ", ".join(saved.roles) or "none"
        return (
            f"{saved.operator} holds: {roles}; an administrator grants roles "
            "(jukinet operator grant ID ROLE)"
        )
    return ""


# Stub calls are typed loosely by the generated stubs; each returns a response message.
Call = Callable[[grpc.aio.Channel, argparse.Namespace], Any]


async def serving_services(channel: grpc.aio.Channel, wait: float = 3.0) -> list[str]:
    """The jukinet services the node behind ``channel`` reports SERVING (gRPC health)."""
    stub = health_pb2_grpc.HealthStub(channel)
    found = []
    for name in SERVICES:
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=wait)
        except grpc.aio.AioRpcError:
            continue
        if answer.status == health_pb2.HealthCheckResponse.SERVING:
            found.append(name)
    return found


async def wrong_tier(channel: grpc.aio.Channel, target: str, expected: str) -> str:
    """One line for a call that met UNIMPLEMENTED: who answers at ``target`` instead."""
    want = SERVICES.get(expected, expected)
    there = await serving_services(channel)
    if not there:
        return (
            f"UNIMPLEMENTED: {target} does not serve {expected}; is --target the address of {want}?"
        )
    if expected in there:
        return (
            f"UNIMPLEMENTED: {target} ({want}) does not know this method; is it older than the CLI?"
        )
    who = " and ".join(SERVICES[s] for s in there)
    return f"UNIMPLEMENTED: {target} is {who}, not {want}; point --target at {want}"


async def explain(
    channel: grpc.aio.Channel,
    target: str,
    exc: grpc.aio.AioRpcError,
    service: str,
    flags: Mapping[str, str] | None = None,
) -> str:
    """One line for a failed call: who answers at ``target`` when it was the
    wrong tier, else the status, the message (fields named as options) and the reason."""
    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
        return await wrong_tier(channel, target, service)
    return describe_error(exc, flags)


def explain_now(
    args: argparse.Namespace,
    exc: grpc.aio.AioRpcError,
    service: str,
    flags: Mapping[str, str] | None = None,
) -> str:
    """:func:`explain` outside an event loop, on a channel of its own."""
    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
        return describe_error(exc, flags)

    async def ask() -> str:
        channel = connect(args.target, args.pki, args.identity)
        try:
            return await wrong_tier(channel, args.target, service)
        finally:
            await channel.close(grace=None)

    return asyncio.run(ask())


def run_call(
    args: argparse.Namespace,
    call: Call,
    show: Callable[[Any], None] = print_message,
    *,
    service: str,
    flags: Mapping[str, str] | None = None,
) -> int:
    """Run one unary call of ``service`` and print its answer; an error is one line.

    ``flags`` maps request fields to the options that set them, so that a bad
    input is reported as the option the user typed.
    """
    if not args.target or not args.identity:
        print(
            "jukinet: --target and --as are required (or JUKINET_TARGET / JUKINET_AS)",
            file=sys.stderr,
        )
        return 2

    saved: sessions.SavedSession | None = None

    async def go() -> int:
        channel = connect(
            args.target, args.pki, args.identity, session=saved.token if saved else None
        )
        try:
            result = await call(channel, args)
        except grpc.aio.AioRpcError as exc:
            line = await explain(channel, args.target, exc, service, flags)
            print(f"jukinet: {line}", file=sys.stderr)
            if getattr(args, "counter", False):
                hint = counter_trouble(args, exc, saved)
                if hint:
                    print(f"jukinet: {hint}", file=sys.stderr)
            return 1
        finally:
            await channel.close(grace=None)
        if result is not None:
            show(result)
        return 0

    try:
        if getattr(args, "counter", False):
            saved = load_session(args)
        return asyncio.run(go())
    except ConfigError as exc:
        print(f"jukinet: {exc}", file=sys.stderr)
        return 2


_REST_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]+\.)?([^`]+)`")
_REST_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str) -> str:
    """A reST docstring as plain text for ``--help``: no roles, no literal
    markers, ``::`` as a colon."""
    text = _REST_ROLE.sub(r"\1", text)
    text = _REST_LITERAL.sub(r"\1", text)
    text = re.sub(r"(?m)^::\n", "", text)
    # The rules of a simple table, drawn as a plain-text table draws them.
    text = re.sub(r"(?m)^[= ]*==[= ]*$", lambda m: m[0].replace("=", "-"), text)
    return re.sub(r"(?m)\s*::$", ":", text)
