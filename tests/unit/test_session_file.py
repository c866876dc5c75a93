"""The counter terminal's session file: where it lives, how it is written, and
that one others could read is refused."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from jukinet.cli import session as sessions
from jukinet.cli.common import load_session

SAVED = sessions.SavedSession(
    target="127.0.0.1:50311",
    terminal="terminal-312011-desk1",
    token="tok-abc",
    operator="jukinet://operator/312011/t.tanaka",
    terminal_uri="jukinet://terminal/312011/desk1",
    roles=("clerk", "supervisor"),
    expires_at="2026-11-27T09:00:00Z",
    idle_expires_at="2026-11-27T00:15:00Z",
)


def test_default_folder_follows_xdg_state_home(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    assert sessions.state_dir(env) == tmp_path / "jukinet"
    # A relative value is invalid under the XDG rules and ignored.
    assert sessions.state_dir({"XDG_STATE_HOME": "rel"}) == (
        Path.home() / ".local" / "state" / "jukinet"
    )
    assert sessions.state_dir({}) == Path.home() / ".local" / "state" / "jukinet"


def test_one_file_per_node_and_terminal(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    a = sessions.session_path("127.0.0.1:50311", "terminal-312011-desk1", env)
    b = sessions.session_path("127.0.0.1:50311", "terminal-312011-desk2", env)
    c = sessions.session_path("127.0.0.1:50312", "terminal-312011-desk1", env)
    assert len({a, b, c}) == 3
    assert all(p.parent == tmp_path / "jukinet" for p in (a, b, c))
    # Nothing in a target or a name escapes the folder.
    d = sessions.session_path("../../etc:1", "../x/y", env)
    assert d.parent == tmp_path / "jukinet" and "/" not in d.name


def test_written_0600_in_a_0700_folder_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jukinet" / "s.json"
    sessions.save(path, SAVED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sessions.load(path) == SAVED
    # No temporary file is left beside it.
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]


def test_saving_again_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    sessions.save(path, SAVED)
    later = sessions.SavedSession(**{**SAVED.__dict__, "token": "tok-new"})
    sessions.save(path, later)
    assert sessions.load(path).token == "tok-new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o606])
def test_a_file_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "s.json"
    sessions.save(path, SAVED)
    os.chmod(path, mode)
    with pytest.raises(sessions.UnsafeSessionFile, match="may be read by others"):
        sessions.load(path)


def test_a_folder_others_may_write_is_refused_for_saving(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with pytest.raises(sessions.UnsafeSessionFile, match="written by others"):
        sessions.save(folder / "s.json", SAVED)
    assert not (folder / "s.json").exists()


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    sessions.save(real, SAVED)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(sessions.SessionFileError):
        sessions.load(link)


def test_no_file_says_to_log_in(tmp_path: Path) -> None:
    with pytest.raises(sessions.NoSession, match="log in first: jukinet login --target X"):
        sessions.load(tmp_path / "none.json", login_hint="jukinet login --target X")


def test_a_damaged_or_foreign_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    for body in ("{not json", '{"format": 99}', "[]"):
        path.write_text(body)
        os.chmod(path, 0o600)
        with pytest.raises(sessions.SessionFileError, match="log in again"):
            sessions.load(path)


def test_a_session_of_another_terminal_or_node_is_no_session(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    sessions.save(path, SAVED)
    args = argparse.Namespace(
        target="127.0.0.1:50311",
        pki="pki",
        identity="terminal-312011-desk2",
        session_file=str(path),
    )
    with pytest.raises(sessions.NoSession, match="not of terminal-312011-desk2"):
        load_session(args)
    args.identity = "terminal-312011-desk1"
    assert load_session(args) == SAVED


def test_role_names_are_the_enum_without_its_prefix() -> None:
    assert list(sessions.ROLE_NAMES) == ["clerk", "supervisor", "auditor", "administrator"]
    assert sessions.role_name(sessions.ROLE_NAMES["auditor"]) == "auditor"
