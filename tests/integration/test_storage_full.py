"""A municipal node whose disk is full, for real: a small tmpfs holds its
database (SQLite: the file; PostgreSQL: a tablespace), and a file fills the
rest. The operator is refused with RESOURCE_EXHAUSTED, reason
``storage-full`` and a RetryInfo (not INTERNAL), nothing of the change is
stored, the node counts it, and once the file is removed the same request
succeeds and is delivered.

Mounting needs root (CAP_SYS_ADMIN), as CI has: without it the test fails,
unless ``JUKINET_TEST_FULL_DISK=skip`` says to leave it out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import text

from jukinet.errors import error_info, rich_status
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, municipal_pb2
from tests.federation import PG_ADMIN_DSN, Databases, Federation, OperatorCards

M = municipal_pb2
TOTTORI = "312011"
TIMEOUT = 30
DISK = "16m"  # a PostgreSQL database with the municipal schema is about 8 MB
ATTEMPTS = 60  # births until a write needs a page the disk does not have


def _wanted() -> bool:
    return os.environ.get("JUKINET_TEST_FULL_DISK", "").lower() != "skip"


@contextlib.contextmanager
def small_disk(owner: str = "root") -> Iterator[Path]:
    """A tmpfs of :data:`DISK`, owned by ``owner``, at a path ``owner`` can reach
    (pytest's own folders are root's alone, and PostgreSQL runs as postgres)."""
    if not _wanted():
        pytest.skip("JUKINET_TEST_FULL_DISK=skip")
    base = Path(tempfile.mkdtemp(prefix="jukinet-full-disk-"))
    base.chmod(0o711)
    where = base / "disk"
    where.mkdir()
    user = pwd.getpwnam(owner)
    options = f"size={DISK},mode=0700,uid={user.pw_uid},gid={user.pw_gid}"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "jukinet-full-disk", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        base.joinpath("disk").rmdir()
        base.rmdir()
        pytest.fail(
            f"cannot mount a tmpfs at {where} ({mounted.stderr.strip()}): this test needs "
            "root; set JUKINET_TEST_FULL_DISK=skip to leave it out",
            pytrace=False,
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()
            base.rmdir()


def fill(disk: Path) -> Path:
    """Write a file until the disk has no room left; the file."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    for size in (4096, 512, 1):  # what is left of the last chunk's pages
        with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:
            while True:
                out.write(b"\0" * size)
    return filler


@contextlib.asynccontextmanager
async def postgres_on(disk: Path) -> AsyncIterator[str]:
    """A fresh PostgreSQL database whose tables live on ``disk`` (a tablespace); its URL."""
    tag = uuid.uuid4().hex[:10]
    space, name = f"jk_full_{tag}", f"jk_full_{tag}_municipality"
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f"CREATE TABLESPACE {space} LOCATION '{disk}'")
        # FILE_COPY writes the new database's files at once: no page of it
        # waits in shared buffers for room on the disk (a checkpoint that
        # cannot write them fails for every database of the server).
        await conn.execute(f'CREATE DATABASE "{name}" TABLESPACE {space} STRATEGY FILE_COPY')
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f"DROP TABLESPACE IF EXISTS {space}")
        await conn.close()


def birth(i: int) -> M.RegisterBirthRequest:
    return M.RegisterBirthRequest(
        person=M.PersonDetails(
            name=f"鳥取 {'花子' if i % 2 else '太郎'}{chr(0x4E00 + i)}",
            name_kana="トットリ ハナコ",
            birth_date="2025-04-01",
            sex=common_pb2.SEX_FEMALE,
            address="鳥取県鳥取市東町1丁目220番地",
        )
    )


def stored(status: M.GetMunicipalStatusResponse) -> tuple[int, int, int, int]:
    """What the register holds (the pusher's progress aside)."""
    return (
        status.last_sequence,
        status.codes_in_pool,
        status.active_residents,
        status.removed_residents,
    )


def sample(fed: Federation, name: str) -> float:
    value = fed.municipalities[TOTTORI].metrics.registry.get_sample_value(name)
    return float(value or 0.0)


async def test_a_full_disk_is_refused_as_storage_full_and_recovers(
    tmp_path: Path, backend: str, pki_dir: Path, operator_cards: OperatorCards
) -> None:
    owner = "postgres" if backend == "postgres" else "root"
    with small_disk(owner) as disk:
        async with contextlib.AsyncExitStack() as stack:
            if backend == "postgres":
                url = await stack.enter_async_context(postgres_on(disk))
            else:
                url = f"sqlite+aiosqlite:///{disk / 'municipality.db'}"
            dbs = Databases(backend, tmp_path / "data")
            fed = Federation(pki_dir=pki_dir, databases=dbs, cards=operator_cards)
            fed._urls[f"municipality-{TOTTORI}"] = url
            try:
                await fed.start_national()
                await fed.start_prefecture("31")
                await fed.start_municipality(TOTTORI)
                await run(fed, disk, backend)
            finally:
                await fed.stop()
                await dbs.drop_all()


async def run(fed: Federation, disk: Path, backend: str) -> None:
    operator = fed.operator(TOTTORI)
    app = fed.municipalities[TOTTORI]
    await operator.RegisterBirth(birth(0), timeout=TIMEOUT)
    await fed.wait_delivered()
    if backend == "sqlite":
        # An empty write-ahead log: the next commit needs room at once.
        async with app.db.write() as conn:
            await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    else:
        # Every page written so far on disk: while it is full, PostgreSQL
        # fails only the writes that need a new page, as they happen.
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            await admin.execute("CHECKPOINT")
        finally:
            await admin.close()
    filler = fill(disk)
    try:
        await refused_then_recovered(fed, filler)
    finally:
        filler.unlink(missing_ok=True)
    await fed.wait_delivered()


async def refused_then_recovered(fed: Federation, filler: Path) -> None:
    operator = fed.operator(TOTTORI)
    assert sample(fed, "jukinet_storage_full_total") == 0

    refused: grpc.aio.AioRpcError | None = None
    for i in range(1, ATTEMPTS):
        before = await operator.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
        try:
            await operator.RegisterBirth(birth(i), timeout=TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            refused = exc
            break
    assert refused is not None, f"{ATTEMPTS} births fitted on a full disk"
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
    info = error_info(refused)
    assert info is not None and info.reason == Reason.STORAGE_FULL
    assert "storage is full" in (refused.details() or "")
    status = rich_status(refused)
    assert status is not None
    retry = [
        d
        for d in status.details
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)  # type: ignore[arg-type]
    ]
    assert len(retry) == 1
    # Nothing of the refused birth is stored: no resident, no notification, no code used.
    after = await operator.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    assert stored(after) == stored(before)
    assert sample(fed, "jukinet_storage_full_total") >= 1
    # A retry while the disk is full is refused with nothing stored, or stored whole:
    # PostgreSQL may put it in the pages the refused transaction left empty.
    app = fed.municipalities[TOTTORI]
    fitted = 0
    try:
        await operator.RegisterBirth(birth(i), timeout=TIMEOUT)
    except grpc.aio.AioRpcError as again:
        assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stored(
            await operator.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
        ) == stored(before)
    else:
        assert not app.db.is_sqlite, "SQLite stored a birth on a full disk"
        fitted = 1
        whole = await operator.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
        assert whole.last_sequence == before.last_sequence + 1
        assert whole.active_residents == before.active_residents + 1

    filler.unlink()  # noqa: ASYNC240 - one file, on a tmpfs
    born = await operator.RegisterBirth(birth(i), timeout=TIMEOUT)
    assert born.notification_sequence == before.last_sequence + 1 + fitted
    now = await operator.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    assert now.active_residents == before.active_residents + 1 + fitted
    # The log: an "ok" entry for each birth stored and none for a refused one,
    # whose refusal (kept in memory while the disk was full) is there too.
    await app.log.recorder.flush()
    assert app.log.recorder.held == []
    async with app.db.read() as conn:
        rows = await app.log.oplog.rows(conn)
    births = [(r.outcome, r.reason) for r in rows if r.operation == "RegisterBirth"]
    assert births.count(("ok", "")) == now.active_residents
    assert births.count(("refused", Reason.STORAGE_FULL)) >= 2 - fitted
    assert [r.idx for r in rows] == list(range(len(rows)))
