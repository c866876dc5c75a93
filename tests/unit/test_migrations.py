"""Each node's migrations build exactly the schema its models describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from jukinet.migrate import target_metadata, upgrade

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tier", ["national", "prefecture", "municipal"])
def test_migrations_match_models(tmp_path: Path, tier: str) -> None:
    versions = ROOT / "services" / tier / "migrations"
    engine = create_engine(f"sqlite:///{tmp_path / 'scratch.db'}")
    with engine.begin() as conn:
        upgrade(conn, versions)
        upgrade(conn, versions)  # a second run is a no-op
        diff = compare_metadata(MigrationContext.configure(conn), target_metadata(versions))
    assert diff == [], f"models differ from migrations: {diff}"
