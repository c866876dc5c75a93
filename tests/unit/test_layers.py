"""The import contracts cover the whole core library, and they hold.

A module added directly under ``jukinet/`` is core by its place; unless it is
listed as a source module of the ``core`` contract, it could import a node or
a tool and no contract would notice.
"""

from __future__ import annotations

import configparser
import pkgutil
import subprocess
import sys
from pathlib import Path

import jukinet

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / ".importlinter"
# Not core: the command line sits above the nodes (its own contract), and
# the generated code imports nothing of ours.
NOT_CORE = {"cli", "v1"}


def core_contract_sources() -> set[str]:
    config = configparser.ConfigParser()
    config.read(CONTRACTS, encoding="utf-8")
    section = config["importlinter:contract:core"]
    return {line.strip() for line in section["source_modules"].splitlines() if line.strip()}


def test_every_core_module_is_a_source_of_the_core_contract() -> None:
    core = {
        f"jukinet.{info.name}"
        for info in pkgutil.iter_modules(jukinet.__path__)
        if info.name not in NOT_CORE
    }
    assert "jukinet.interceptors" in core  # the walk found the package
    assert sorted(core - core_contract_sources()) == []


def test_the_core_contract_lists_no_module_that_is_gone() -> None:
    # A stale entry is harmless to the check but says the list is not kept.
    present = {f"jukinet.{info.name}" for info in pkgutil.iter_modules(jukinet.__path__)}
    assert sorted(core_contract_sources() - present) == []


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", str(CONTRACTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
