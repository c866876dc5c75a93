"""Shared fixtures: the database backends, a PKI per session, federations."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from jukinet import card, pki
from tests.cards import ORG, OTHER_ORG, Cards, require_softhsm
from tests.federation import (
    PG_ADMIN_DSN,
    Federation,
    OperatorCards,
    federation,
    issue_certificates,
)

MUNICIPALITIES = ["312011", "312029", "131016"]
AGENCIES = ["nenkin", "mofa-passport"]


def _pg_wanted() -> bool:
    return os.environ.get("JUKINET_TEST_PG", "").lower() != "skip"


def _pg_dsn() -> str:
    return PG_ADMIN_DSN


@pytest.fixture(scope="session")
def pg_available() -> None:
    """PostgreSQL must answer; it is never silently skipped unless asked."""

    async def ping() -> None:
        conn = await asyncpg.connect(_pg_dsn(), timeout=5)
        await conn.close()

    try:
        asyncio.run(ping())
    except Exception as exc:  # pragma: no cover - reported as a failure
        pytest.fail(
            f"PostgreSQL at {_pg_dsn()} is unreachable ({exc}); start it, or set "
            "JUKINET_TEST_PG=skip to run the SQLite path only",
            pytrace=False,
        )


def backends() -> list[str]:
    """The database backends to run on: SQLite, and PostgreSQL unless JUKINET_TEST_PG=skip."""
    return ["sqlite", "postgres"] if _pg_wanted() else ["sqlite"]


@pytest.fixture(params=backends())
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn; PostgreSQL must then be reachable."""
    if request.param == "postgres":
        request.getfixturevalue("pg_available")
    return str(request.param)


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One federation PKI for the session: every node, operator and test agency."""
    d = tmp_path_factory.mktemp("pki")
    issue_certificates(d, MUNICIPALITIES, AGENCIES)
    return d


@pytest.fixture(scope="session")
def operator_cards(pki_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> OperatorCards:
    """The session's card reader (SoftHSM2): operators' cards, made once per session."""
    require_softhsm()
    return OperatorCards.create(pki_dir, tmp_path_factory.mktemp("operator-cards"))


@pytest.fixture
async def fed(
    tmp_path: Path, backend: str, pki_dir: Path, operator_cards: OperatorCards
) -> AsyncIterator[Federation]:
    """A running federation (national, two prefectures, three municipalities) on ``backend``,
    each municipality's counter operator logged in (:meth:`Federation.operator`)."""
    async for f in federation(tmp_path, backend, MUNICIPALITIES, pki_dir, operator_cards):
        yield f


@pytest.fixture
def cards(tmp_path: Path) -> Iterator[Cards]:
    """A fresh PKI and an empty card reader (SoftHSM2 token directory) for one test."""
    require_softhsm()
    directory = tmp_path / "pki"
    pki.create_ca(directory)
    pki.create_operator_ca(directory, ORG)
    pki.create_operator_ca(directory, OTHER_ORG)
    saved = os.environ.get("SOFTHSM2_CONF")
    hsm = card.SoftHsm.create(tmp_path / "hsm")
    hsm.activate()
    try:
        yield Cards(directory, hsm)
    finally:
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved
        card.rescan()
