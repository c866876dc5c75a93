"""The municipal node's login settings: read from a file and JUKINET_* variables,
refused with one line when out of range, and turned into the login policy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from jukinet.config import MunicipalConfig, load_config
from jukinet.errors import ConfigError
from jukinet.login import LoginPolicy
from jukinet.passwords import HASHER, make_hasher

BASE = """
listen = "127.0.0.1:50100"
database_url = "sqlite+aiosqlite:///m.db"
local_government_code = "312011"
prefecture_target = "127.0.0.1:50131"
[tls]
ca = "pki/ca.pem"
cert = "pki/municipality-312011.pem"
key = "pki/municipality-312011.key"
"""


def write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "node.toml"
    path.write_text(extra + BASE, encoding="utf-8")
    return path


def test_the_defaults_are_the_login_policy_defaults(tmp_path: Path) -> None:
    config = load_config(MunicipalConfig, write(tmp_path), environ={})
    default = LoginPolicy()
    policy = config.login_policy()
    assert policy == default
    assert config.card_trust_dir() == tmp_path / "pki"
    hasher = make_hasher(
        time_cost=config.password_hash_time_cost, memory_kib=config.password_hash_memory_kib
    )
    assert hasher is HASHER


def test_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    extra = 'card_trust = "cards"\nsession_idle = 60\nlogin_failures = 3\n'
    config = load_config(
        MunicipalConfig,
        write(tmp_path, extra),
        environ={"JUKINET_SESSION_MAX": "600", "JUKINET_PASSWORD_MAX_AGE_DAYS": "30"},
    )
    policy = config.login_policy()
    assert policy.session_idle == dt.timedelta(seconds=60)
    assert policy.session_max == dt.timedelta(seconds=600)
    assert policy.max_failures == 3
    assert policy.password_max_age == dt.timedelta(days=30)
    # A relative card_trust is taken from the config file's folder.
    assert config.card_trust_dir() == tmp_path / "cards"


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("session_idle = 0", "session_idle"),
        ("session_idle = 600\nsession_max = 60", "session_max"),
        ("login_failures = 0", "login_failures"),
        ("lockout = 0", "lockout"),
        ("password_max_age_days = 0", "password_max_age_days"),
        ("password_hash_time_cost = 0", "password_hash_time_cost"),
        ("password_hash_memory_kib = 8", "password_hash_memory_kib"),
    ],
)
def test_a_bad_login_setting_stops_the_node(tmp_path: Path, setting: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(MunicipalConfig, write(tmp_path, setting + "\n"), environ={})
