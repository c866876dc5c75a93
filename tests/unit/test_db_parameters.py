"""A failed statement's parameters (a person's record) never reach its error text."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert
from sqlalchemy.exc import IntegrityError

from jukinet.db import Database, null_pool_engine

SECRET = "鳥取 花子 1990-01-01"


def _table() -> Table:
    return Table("t", MetaData(), Column("k", String(20), primary_key=True))


async def test_node_engine_hides_parameters(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'n.db'}")
    table = _table()
    try:
        async with db.write() as conn:
            await conn.run_sync(table.metadata.create_all)
            await conn.execute(insert(table).values(k=SECRET))
        with pytest.raises(IntegrityError) as caught:
            async with db.write() as conn:
                await conn.execute(insert(table).values(k=SECRET))
        assert SECRET not in str(caught.value)
        assert "hidden" in str(caught.value)
    finally:
        await db.close()


async def test_administrative_engine_hides_parameters(tmp_path: Path) -> None:
    engine = null_pool_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    table = _table()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
            await conn.execute(insert(table).values(k=SECRET))
        with pytest.raises(IntegrityError) as caught:
            async with engine.begin() as conn:
                await conn.execute(insert(table).values(k=SECRET))
        assert SECRET not in str(caught.value)
    finally:
        await engine.dispose()
