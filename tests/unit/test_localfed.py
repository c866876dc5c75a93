"""The shared harness without processes: waiting for delivery, databases, CPU time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from jukinet.db import Database
from jukinet.migrate import alembic_config
from tools import localfed
from tools.localfed import (
    PG_SERVER,
    Cursors,
    Databases,
    Delivery,
    DeliveryTimeout,
    _digest,
    process_cpu_seconds,
    tier_migrations,
    wait_delivered,
)


def test_delivery_counts_what_is_applied_of_what_was_recorded() -> None:
    d = Delivery(want={"312011": 10, "131016": 5}, applied={"312011": 12, "999999": 3})
    assert d.total == 15
    assert d.done == 10  # beyond a municipality's last sequence does not count
    assert not d.complete
    assert d.behind() == {"312011": "12/10", "131016": "0/5"}
    assert Delivery(want={"312011": 10}, applied={"312011": 10}).complete


async def test_wait_delivered_returns_once_applied_catches_up() -> None:
    readings = iter([{}, {"312011": 4}, {"312011": 9}, {"312011": 10}])
    seen: list[int] = []

    async def applied() -> Cursors:
        return next(readings)

    got = await wait_delivered(
        {"312011": 10}, applied, within=5, poll=0, on_progress=lambda d: seen.append(d.done)
    )
    assert got.complete and got.applied == {"312011": 10}
    assert seen == [0, 4, 9, 10]


async def test_wait_delivered_reads_a_moving_target_each_time() -> None:
    wants = iter([{"312011": 1}, {"312011": 2}])

    async def want() -> Cursors:
        return next(wants)

    async def applied() -> Cursors:
        return {"312011": 2}

    # The first reading (want 1) is already complete: the target is read once.
    got = await wait_delivered(want, applied, within=5, poll=0)
    assert got.want == {"312011": 1}


async def test_wait_delivered_times_out_with_how_far_it_got() -> None:
    async def applied() -> Cursors:
        return {"312011": 3}

    with pytest.raises(DeliveryTimeout) as caught:
        await wait_delivered({"312011": 10, "131016": 1}, applied, within=0.05, poll=0.01)
    assert caught.value.delivery.done == 3
    assert "still behind after 0.05 s" in str(caught.value)
    assert "'312011': '3/10'" in str(caught.value)


async def test_sqlite_databases_are_files_in_the_folder(tmp_path: Path) -> None:
    dbs = Databases("sqlite", tmp_path / "data")
    url = await dbs.url("municipality-312011")
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'municipality-312011.db'}"
    assert (tmp_path / "data").is_dir()
    await dbs.drop_all()  # nothing to drop: the files stay
    assert dbs.created == []


def test_an_unknown_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown database backend 'mysql'"):
        Databases("mysql", tmp_path)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_cpu_seconds_of_a_process_and_of_one_that_is_gone() -> None:
    sum(i * i for i in range(200_000))  # some CPU time of our own
    assert process_cpu_seconds(os.getpid()) > 0
    assert process_cpu_seconds(2**22 + 1) == 0.0  # above any pid_max: no such process


async def migrated_heads(url: str) -> set[str]:
    """The Alembic revisions a database is at."""
    db = Database(url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
            return {r[0] for r in rows}
    finally:
        await db.close()


def head_of(migrations: Path) -> str:
    """The newest revision of a migrations folder."""
    script = ScriptDirectory.from_config(alembic_config(migrations))
    head = script.get_current_head()
    assert head is not None
    return head


async def test_a_node_database_starts_migrated_from_its_tiers_template(
    tmp_path: Path, backend: str
) -> None:
    dbs = Databases(backend, tmp_path / "data")
    try:
        for node in ("national", "prefecture-31", "municipality-312011"):
            migrations = tier_migrations(node)
            assert migrations is not None
            assert await migrated_heads(await dbs.url(node)) == {head_of(migrations)}
        # Any other name, or templates off: an empty database.
        plain = Databases(backend, tmp_path / "plain", templates=False)
        try:
            for url in (await dbs.url("other"), await plain.url("national")):
                with pytest.raises(DBAPIError):
                    await migrated_heads(url)
        finally:
            await plain.drop_all()
    finally:
        await dbs.drop_all()


def test_a_template_is_named_by_its_migrations(tmp_path: Path) -> None:
    source = tier_migrations("national")
    assert source is not None
    copy = tmp_path / "national" / "migrations"
    shutil.copytree(source, copy)
    assert _digest(copy) == _digest(source)
    (copy / "zz_new_revision.py").write_text("# a new revision\n")
    assert _digest(copy) != _digest(source)


async def test_databases_made_side_by_side_each_start_migrated_and_are_all_dropped(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No SQLite template made yet in this process: the tiers' templates are
    # migrated first, one at a time (Alembic's context is one per process).
    monkeypatch.setattr(localfed, "_templates", {})
    nodes = ["national", "prefecture-31", "municipality-312011", "municipality-312029"]
    dbs = Databases(backend, tmp_path / "data")
    try:
        urls = await dbs.urls(nodes)
        assert list(urls) == nodes
        assert len(set(urls.values())) == len(nodes)
        for node, url in urls.items():
            migrations = tier_migrations(node)
            assert migrations is not None
            assert await migrated_heads(url) == {head_of(migrations)}
    finally:
        created = list(dbs.created)
        await dbs.drop_all()
    assert dbs.created == []
    if backend == "postgres":
        assert len(created) == len(nodes)
        conn = await asyncpg.connect(PG_SERVER, timeout=10)
        try:
            left = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", created
            )
        finally:
            await conn.close()
        assert left == []
