"""Work a caller may stop waiting for runs to its end, and a closing node waits for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from jukinet import db as jdb
from jukinet.db import Database


async def test_a_cancelled_caller_leaves_its_transaction_to_finish_and_close_waits(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'n.db'}")
    async with database.write() as conn:
        await conn.execute(text("CREATE TABLE t (v INTEGER)"))
    started = asyncio.Event()
    release = asyncio.Event()

    async def work() -> int:
        async with database.write() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            started.set()
            await release.wait()
        return 1

    caller = asyncio.create_task(database.complete(work()))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    closing = asyncio.create_task(database.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # it waits for the transaction
    release.set()
    await asyncio.wait_for(closing, 5)
    reopened = Database(f"sqlite+aiosqlite:///{tmp_path / 'n.db'}")
    try:
        async with reopened.read() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 1
    finally:
        await reopened.close()


async def test_close_cuts_short_what_outlasts_its_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(jdb, "CLOSE_GRACE", 0.1)
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'n.db'}")
    forever = asyncio.Event()
    caller = asyncio.create_task(database.complete(forever.wait()))
    await asyncio.sleep(0)
    await asyncio.wait_for(database.close(), 5)
    assert "1 transactions cut short" in caplog.text
    with pytest.raises(asyncio.CancelledError):
        await caller
