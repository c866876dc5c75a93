r"""``jukinet login | logout | whoami | passwd``: an operator's session at a counter terminal.

::

    jukinet login --target 127.0.0.1:50311 --pki pki --as terminal-312011-desk1 [--card LABEL]
    jukinet whoami --target 127.0.0.1:50311 --pki pki --as terminal-312011-desk1
    jukinet passwd ...
    jukinet logout ...

The login reads the operator's IC card through PKCS#11 (the module named by
``JUKINET_PKCS11_MODULE``, else SoftHSM2's; ``--card LABEL`` picks one card
when several are in the reader), unlocks it with its PIN, has it sign the
node's challenge and sends the password. PIN and password are asked on the
terminal (never echoed); scripts give them in a file (``--pin-file``,
``--password-file``, ``--new-password-file``: the first line, the file best
mode 0600) or in the environment (``JUKINET_CARD_PIN``, ``JUKINET_PASSWORD``,
``JUKINET_NEW_PASSWORD``), a file winning over the environment. An expired
password (or one an administrator set) must be changed to log in: the login
asks for a new one (twice) and logs in with it.

The session goes to the session file (:mod:`jukinet.cli.session`); every
counter command then uses it. ``logout`` ends the session on the node and
removes the file; ``whoami`` asks the node who is logged in (``--local``:
what the file says, without a call); ``passwd`` changes the password.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from jukinet import card as cards
from jukinet.cli import session as sessions
from jukinet.cli.common import (
    counter_options,
    counter_trouble,
    in_jst,
    load_session,
    login_command,
    plain,
    print_message,
)
from jukinet.client import connect, describe_error, log_in
from jukinet.errors import ConfigError, error_metadata
from jukinet.v1 import operator_pb2, operator_pb2_grpc

PIN_ENV = "JUKINET_CARD_PIN"
PASSWORD_ENV = "JUKINET_PASSWORD"
NEW_PASSWORD_ENV = "JUKINET_NEW_PASSWORD"


class SecretUnavailable(ConfigError):
    """A PIN or password was needed and there is no file, variable or terminal to get it from."""


def read_secret(
    what: str,
    *,
    file: str | None,
    env: str,
    file_option: str,
    confirm: bool = False,
    environ: Any = None,
) -> str:
    """A PIN or password: from ``file`` (its first line), else ``$env``, else asked
    on the terminal (``confirm``: asked twice, the two must match)."""
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{file_option}: {file}: {exc.strerror}") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise ConfigError(f"{file_option}: {file}: its first line is empty")
        return lines[0]
    values = os.environ if environ is None else environ
    if values.get(env):
        return str(values[env])
    if not sys.stdin.isatty():
        raise SecretUnavailable(
            f"the {what} is needed: no terminal to ask on; give {file_option} FILE or set {env}"
        )
    value = getpass.getpass(f"{what}: ")
    if confirm and getpass.getpass(f"{what} again: ") != value:
        raise ConfigError(f"the two {what}s differ: nothing changed")
    if not value:
        raise ConfigError(f"an empty {what}: nothing done")
    return value


def open_card(args: argparse.Namespace) -> cards.Card:
    """The operator's card, unlocked with its PIN (:class:`jukinet.card.CardError` if not)."""
    lib = cards.load_module()
    # Make sure a token inserted since the module was loaded is seen.
    cards.find_card(lib, args.card)
    pin = read_secret("card PIN", file=args.pin_file, env=PIN_ENV, file_option="--pin-file")
    return cards.open_card(lib, pin, label=args.card)


def _reason(exc: grpc.aio.AioRpcError) -> str:
    return error_metadata(exc).get("jukinet-reason", "")


def _describe_session(saved: sessions.SavedSession) -> str:
    roles = ", ".join(saved.roles) or "no role yet"
    until = in_jst(saved.expires_at) if saved.expires_at else "?"
    idle = in_jst(saved.idle_expires_at) if saved.idle_expires_at else "?"
    return (
        f"{saved.operator} at {saved.terminal_uri} (roles: {roles}); session until {until}, "
        f"ends if idle past {idle}"
    )


async def _log_in(args: argparse.Namespace, card: cards.Card, password: str) -> Any:
    channel = connect(args.target, args.pki, args.identity)
    try:
        try:
            return await log_in(channel, card, password)
        except grpc.aio.AioRpcError as exc:
            if _reason(exc) != "password-expired":
                raise
        print(
            "jukinet login: the password has expired (or was set by an administrator): "
            "choose a new one",
            file=sys.stderr,
        )
        new = read_secret(
            "new password",
            file=args.new_password_file,
            env=NEW_PASSWORD_ENV,
            file_option="--new-password-file",
            confirm=True,
        )
        return await log_in(channel, card, password, new_password=new)
    finally:
        await channel.close(grace=None)


def _cmd_login(args: argparse.Namespace) -> int:
    if not args.target or not args.identity:
        print("jukinet login: --target and --as (the terminal) are required", file=sys.stderr)
        return 2
    path = sessions.chosen_path(args)
    try:
        with open_card(args) as card:
            password = read_secret(
                "password", file=args.password_file, env=PASSWORD_ENV, file_option="--password-file"
            )
            answer = asyncio.run(_log_in(args, card, password))
        saved = sessions.SavedSession.from_login(args.target, args.identity, answer)
        sessions.save(path, saved)
    except cards.CardError as exc:
        print(f"jukinet login: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"jukinet login: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"jukinet login: {describe_error(exc)}", file=sys.stderr)
        return 1
    print(f"logged in: {_describe_session(saved)}")
    print(f"session kept in {path}")
    return 0


def _session_call(
    args: argparse.Namespace, call: Any, command: str
) -> tuple[int, Any, sessions.SavedSession | None]:
    """Run ``call(stub)`` with the saved session: (exit status, answer, session)."""
    saved: sessions.SavedSession | None = None
    try:
        saved = load_session(args)
    except ConfigError as exc:
        print(f"jukinet {command}: {exc}", file=sys.stderr)
        return 2, None, None

    async def go() -> Any:
        assert saved is not None
        channel = connect(args.target, args.pki, args.identity, session=saved.token)
        try:
            return await call(operator_pb2_grpc.OperatorServiceStub(channel))
        finally:
            await channel.close(grace=None)

    try:
        return 0, asyncio.run(go()), saved
    except ConfigError as exc:
        print(f"jukinet {command}: {exc}", file=sys.stderr)
        return 2, None, saved
    except grpc.aio.AioRpcError as exc:
        print(f"jukinet {command}: {describe_error(exc)}", file=sys.stderr)
        hint = counter_trouble(args, exc, saved)
        if hint:
            print(f"jukinet {command}: {hint}", file=sys.stderr)
        return 1, exc, saved


def _cmd_logout(args: argparse.Namespace) -> int:
    path = sessions.chosen_path(args)

    async def logout(stub: Any) -> Any:
        return await stub.Logout(operator_pb2.LogoutRequest())

    status, answer, saved = _session_call(args, logout, "logout")
    if status == 2 and saved is None:
        return status
    if (
        status == 1
        and isinstance(answer, grpc.aio.AioRpcError)
        and answer.code() != grpc.StatusCode.UNAUTHENTICATED
    ):
        return status  # the session may still be open: keep the file to try again
    sessions.remove(path)
    print(f"logged out: {saved.operator if saved else 'the session'}; removed {path}")
    return 0


def _cmd_whoami(args: argparse.Namespace) -> int:
    if args.local:
        try:
            saved = load_session(args)
        except ConfigError as exc:
            print(f"jukinet whoami: {exc}", file=sys.stderr)
            return 2
        print(_describe_session(saved))
        return 0

    async def whoami(stub: Any) -> Any:
        return await stub.WhoAmI(operator_pb2.WhoAmIRequest())

    status, answer, _ = _session_call(args, whoami, "whoami")
    if status == 0:
        print_message(answer.session)
    return status


def _cmd_passwd(args: argparse.Namespace) -> int:
    try:
        old = read_secret(
            "current password",
            file=args.password_file,
            env=PASSWORD_ENV,
            file_option="--password-file",
        )
        new = read_secret(
            "new password",
            file=args.new_password_file,
            env=NEW_PASSWORD_ENV,
            file_option="--new-password-file",
            confirm=True,
        )
    except ConfigError as exc:
        print(f"jukinet passwd: {exc}", file=sys.stderr)
        return 2

    async def change(stub: Any) -> Any:
        return await stub.ChangePassword(
            operator_pb2.ChangePasswordRequest(old_password=old, new_password=new)
        )

    status, _, saved = _session_call(args, change, "passwd")
    if status == 0 and saved is not None:
        print(f"password changed for {saved.operator}")
    return status


def secret_options(
    parser: argparse.ArgumentParser, *, pin: bool = False, new: bool = False
) -> None:
    """``--pin-file``, ``--password-file`` and ``--new-password-file``."""
    if pin:
        parser.add_argument(
            "--pin-file", metavar="FILE", help=f"the card PIN's file (else ${PIN_ENV}, else asked)"
        )
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"the password's file, first line (else ${PASSWORD_ENV}, else asked)",
    )
    if new:
        parser.add_argument(
            "--new-password-file",
            metavar="FILE",
            help=f"the new password's file (else ${NEW_PASSWORD_ENV}, else asked twice)",
        )


def register_cli(sub: Any) -> None:
    """Add ``login``, ``logout``, ``whoami`` and ``passwd`` to the ``jukinet`` parser."""
    login = sub.add_parser(
        "login",
        help="log an operator in at this counter terminal (IC card + password)",
        description=plain(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    counter_options(login)
    login.add_argument(
        "--card", metavar="LABEL", help="the card's label, when several are in the reader"
    )
    secret_options(login, pin=True, new=True)
    login.set_defaults(func=_cmd_login)

    logout = sub.add_parser("logout", help="end the session at this terminal")
    counter_options(logout)
    logout.set_defaults(func=_cmd_logout)

    whoami = sub.add_parser("whoami", help="who is logged in at this terminal")
    counter_options(whoami)
    whoami.add_argument(
        "--local", action="store_true", help="what the session file says, without asking the node"
    )
    whoami.set_defaults(func=_cmd_whoami)

    passwd = sub.add_parser("passwd", help="change the logged-in operator's password")
    counter_options(passwd)
    secret_options(passwd, new=True)
    passwd.set_defaults(func=_cmd_passwd)


__all__ = ["login_command", "open_card", "read_secret", "register_cli", "secret_options"]
