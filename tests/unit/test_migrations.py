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


def test_households_migration_keeps_entries_made_before(tmp_path: Path) -> None:
    """Entries made before the household table keep their households, each
    household recorded once without a head, and their new items empty."""
    from alembic import command
    from sqlalchemy import text

    from jukinet.migrate import alembic_config

    versions = ROOT / "services" / "municipal" / "migrations"
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(versions, conn), "e0b6cda34b7a")
        for i, household in enumerate(["aaaa", "aaaa", "bbbb"]):
            conn.execute(
                text(
                    "INSERT INTO residents (resident_code, name, name_kana, former_surname, "
                    "alias, birth_date, sex, address, household_id, status, registered_on, "
                    "removed_on, last_reason, updated_at) VALUES (:code, '鳥取 太郎', '', '', "
                    "'', '1990-01-01', 1, :address, :household, 1, '1990-01-01', '', 3, "
                    "'2026-01-01 00:00:00')"
                ),
                {
                    "code": f"0000000000{i}",
                    "address": f"鳥取県鳥取市{i}番地",
                    "household": household,
                },
            )
        upgrade(conn, versions)
        households = conn.execute(
            text("SELECT household_id, head_resident_id, address FROM households ORDER BY 1")
        ).all()
        entries = conn.execute(
            text(
                "SELECT relationship, previous_address, domicile, domicile_head, entry_reason "
                "FROM residents"
            )
        ).all()
    assert households == [("aaaa", None, "鳥取県鳥取市0番地"), ("bbbb", None, "鳥取県鳥取市2番地")]
    assert entries == [(0, "", "", "", 0)] * 3
