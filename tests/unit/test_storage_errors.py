"""Which database and file errors are a lack of room, and what a caller is told."""

from __future__ import annotations

import errno
import sqlite3

import asyncpg
import grpc
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from jukinet.db import storage_refusal
from jukinet.errors import StorageFull, Unavailable
from jukinet.reasons import Reason


def wrapped(orig: BaseException) -> OperationalError:
    """As SQLAlchemy raises a driver's error."""
    return OperationalError("INSERT INTO residents ...", None, orig)


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("database or disk is full"),
        wrapped(sqlite3.OperationalError("database or disk is full")),
        wrapped(asyncpg.exceptions.DiskFullError("could not extend file")),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
    ],
    ids=["sqlite", "sqlite-wrapped", "postgres-53100", "enospc", "edquot"],
)
def test_a_full_disk_is_storage_full_with_a_retry(exc: BaseException) -> None:
    refusal = storage_refusal(exc)
    assert isinstance(refusal, StorageFull)
    assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal.reason == Reason.STORAGE_FULL
    assert refusal.retry_after_ms
    assert "INSERT" not in refusal.message  # nothing of the statement


def test_a_cause_further_down_the_chain_is_found() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing the spool failed") from inner
    except RuntimeError as outer:
        assert isinstance(storage_refusal(outer), StorageFull)


@pytest.mark.parametrize(
    "orig",
    [
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.OutOfMemoryError("out of memory"),
    ],
    ids=["53300", "53200"],
)
def test_other_postgres_resource_shortages_are_unavailable(orig: BaseException) -> None:
    refusal = storage_refusal(wrapped(orig))
    assert isinstance(refusal, Unavailable) and not isinstance(refusal, StorageFull)
    assert refusal.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("database is locked"),
        IntegrityError("INSERT", None, sqlite3.IntegrityError("UNIQUE constraint failed")),
        wrapped(asyncpg.exceptions.UniqueViolationError("duplicate key")),
        OSError(errno.ECONNREFUSED, "Connection refused"),
        RuntimeError("a bug"),
    ],
    ids=["locked", "unique", "pg-unique", "refused", "bug"],
)
def test_anything_else_is_not_a_lack_of_room(exc: BaseException) -> None:
    assert storage_refusal(exc) is None
