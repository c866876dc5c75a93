"""Provision records are kept seven years, then purged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import insert, select

from services.national import models
from services.national.app import MIGRATIONS
from services.national.provisions import RETENTION, purge_older_than
from tests.federation import Databases


async def test_purge_removes_only_records_past_seven_years(tmp_path: Path, backend: str) -> None:
    dbs = Databases(backend, tmp_path)
    from jukinet.db import Database

    db = Database(await dbs.url("national"))
    try:
        await db.migrate(MIGRATIONS)
        now = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
        ages = {"old": RETENTION + dt.timedelta(days=1), "edge": RETENTION - dt.timedelta(days=1)}
        async with db.write() as conn:
            await conn.execute(
                insert(models.provisions),
                [
                    {
                        "provision_id": name,
                        "provided_at": now - age,
                        "agency_code": "nenkin",
                        "purpose_code": "NENKIN-EXISTENCE-CHECK",
                        "operation": "verify",
                        "resident_code": "12345678903",
                        "fields": "",
                        "result": "match",
                        "reason": "",
                    }
                    for name, age in ages.items()
                ],
            )
        assert await purge_older_than(db, now) == 1
        async with db.read() as conn:
            left = list((await conn.execute(select(models.provisions.c.provision_id))).scalars())
        assert left == ["edge"]
    finally:
        await db.close()
        await dbs.drop_all()
