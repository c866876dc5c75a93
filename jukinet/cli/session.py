"""The counter terminal's session file: where ``jukinet login`` keeps the session
token between commands, and the connection every counter command opens with it.

A municipal node serves its operators only at counter terminals: every call
comes over mTLS with the terminal's certificate (``terminal-<code>-desk1``)
and, after the login, carries the operator's session token
(:data:`jukinet.tls.SESSION_METADATA`). ``jukinet login`` writes the token
to a session file, one per node and terminal:

- default folder ``$XDG_STATE_HOME/jukinet/`` (else ``~/.local/state/jukinet/``),
  made with mode 0700; ``--session FILE`` or ``JUKINET_SESSION`` names another
  file;
- the file is mode 0600, written to a temporary file in the same folder and
  renamed into place, so that a reader never sees half a file;
- a session file that anyone but its owner may read or write (group or other
  permission bits), or that another user owns, is refused when read: the
  token is a credential, as good as the operator's presence at the terminal
  until the session ends.

The token is bound to the terminal on the server: copied to another computer
it ends the session (``wrong-terminal``). The file also keeps what the login
answered (operator, roles, expiry) so that ``jukinet whoami --local`` and
error messages can say who is logged in without a call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from jukinet.errors import ConfigError
from jukinet.v1 import operator_pb2

STATE_ENV = "XDG_STATE_HOME"
SESSION_ENV = "JUKINET_SESSION"
"""The environment variable naming the session file (instead of the default one)."""

_FORMAT = 1
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

ROLE_NAMES: dict[str, operator_pb2.Role.ValueType] = {
    name.removeprefix("ROLE_").lower(): value
    for name, value in operator_pb2.Role.items()
    if value != operator_pb2.ROLE_UNSPECIFIED
}
"""Roles as the command line names them: clerk, supervisor, auditor, administrator."""


def role_name(value: int) -> str:
    """``clerk`` for ROLE_CLERK; the number for an unknown value."""
    for name, known in ROLE_NAMES.items():
        if known == value:
            return name
    return str(value)


class SessionFileError(ConfigError):
    """The session file is missing, unreadable or unsafe; the message says what to do."""


class NoSession(SessionFileError):
    """No session file for this node and terminal: nobody is logged in here."""


class UnsafeSessionFile(SessionFileError):
    """The session file may be read or written by others (or is not the user's)."""


@dataclass(frozen=True)
class SavedSession:
    """What a session file holds."""

    target: str
    terminal: str  # the terminal certificate's name in the PKI folder
    token: str
    operator: str  # jukinet://operator/<org>/<id>
    terminal_uri: str  # jukinet://terminal/<org>/<id>
    roles: tuple[str, ...]
    expires_at: str  # RFC 3339, UTC
    idle_expires_at: str

    @classmethod
    def from_login(
        cls, target: str, terminal: str, answer: operator_pb2.LoginResponse
    ) -> SavedSession:
        """The session a login answered, to keep."""
        s = answer.session
        return cls(
            target=target,
            terminal=terminal,
            token=answer.session_token,
            operator=s.operator,
            terminal_uri=s.terminal,
            roles=tuple(role_name(r) for r in s.roles),
            expires_at=s.expires_at.ToJsonString() if s.HasField("expires_at") else "",
            idle_expires_at=(
                s.idle_expires_at.ToJsonString() if s.HasField("idle_expires_at") else ""
            ),
        )


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/jukinet``, else ``~/.local/state/jukinet``."""
    env = os.environ if environ is None else environ
    base = env.get(STATE_ENV, "")
    # The XDG rule: a relative value is invalid and ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "jukinet"


def session_path(target: str, terminal: str, environ: Mapping[str, str] | None = None) -> Path:
    """The default session file of ``terminal`` logged in to the node at ``target``."""
    name = f"session-{_UNSAFE_NAME.sub('_', target)}-{_UNSAFE_NAME.sub('_', terminal)}.json"
    return state_dir(environ) / name


def chosen_path(args: argparse.Namespace) -> Path:
    """The session file a command uses: ``--session``, else its node's and terminal's."""
    if getattr(args, "session_file", None):
        return Path(args.session_file)
    return session_path(args.target, args.identity)


def save(path: Path, session: SavedSession) -> None:
    """Write ``session`` to ``path`` atomically, mode 0600, in a folder of mode 0700.

    A folder made here is 0700; an existing folder that others may write to
    is refused (they could replace the file).
    """
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        raise SessionFileError(f"session folder {folder}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeSessionFile(
            f"session folder {folder} may be written by others: `chmod 700 {folder}` "
            "or choose another file with --session"
        )
    body = json.dumps({"format": _FORMAT, **asdict(session)}, indent=2) + "\n"
    fd, temporary = tempfile.mkstemp(prefix=".session-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def load(path: Path, *, login_hint: str = "jukinet login") -> SavedSession:
    """The session in ``path``; :class:`NoSession` when there is none,
    :class:`UnsafeSessionFile` when others may read or write it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NoSession(f"no session at this terminal: log in first: {login_hint}") from None
    except OSError as exc:
        raise SessionFileError(f"session file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        info = os.fstat(f.fileno())
        if info.st_uid != os.getuid():
            raise UnsafeSessionFile(
                f"session file {path} belongs to another user: refused; log in again"
            )
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UnsafeSessionFile(
                f"session file {path} may be read by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}): refused; remove it, log in again "
                "and tell the administrator, whose logout of that session ends it"
            )
        try:
            data = json.load(f)
        except (ValueError, UnicodeDecodeError):
            raise SessionFileError(
                f"session file {path} is damaged: remove it and log in again"
            ) from None
    try:
        if data.pop("format") != _FORMAT:
            raise ValueError
        data["roles"] = tuple(data["roles"])
        return SavedSession(**data)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SessionFileError(
            f"session file {path} is not one this version wrote: remove it and log in again"
        ) from None


def remove(path: Path) -> bool:
    """Delete the session file; whether there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
