"""A failed statement's parameters (a person's record) never reach its error text."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc
import pytest
from sqlalchemy import CheckConstraint, Column, MetaData, String, Table, Text, insert
from sqlalchemy.exc import IntegrityError

from jukinet.db import Database, describe_error, is_transient, null_pool_engine
from jukinet.interceptors import _translate
from tools.localfed import Databases

SECRET = "鳥取 花子 1990-01-01"
CODE = "12345678901"
NAME = "秘密 花子"
ADDRESS = "鳥取県鳥取市秘密町一丁目"


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


class _Aborted(Exception):
    """What the test context raises where gRPC would end the call."""


class _Context:
    """The one method of a servicer context that the translation calls."""

    async def abort(self, code: grpc.StatusCode, details: str, trailers: object) -> NoReturn:
        raise _Aborted(code, details)


async def test_a_refused_row_is_described_without_its_values(
    tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dbs = Databases(backend, tmp_path)
    db = Database(await dbs.url("describe"))
    person = Table(
        "person",
        MetaData(),
        Column("code", String(11), primary_key=True),
        Column("name", Text, nullable=False),
        Column("address", Text, nullable=False),
        CheckConstraint(f"name <> '{NAME}'", name="no_such_name"),
    )
    row = {"code": CODE, "name": NAME, "address": ADDRESS}
    try:
        async with db.write() as conn:
            await conn.run_sync(person.metadata.create_all)
        with pytest.raises(IntegrityError) as caught:
            async with db.write() as conn:
                await conn.execute(insert(person).values(row))
        exc = caught.value
        if backend == "postgres":
            # The driver's error quotes the row: what must never be logged.
            detail = str(getattr(getattr(exc.orig, "__cause__", None), "detail", ""))
            assert NAME in detail and "Failing row contains" in detail
            assert describe_error(exc) == (
                "IntegrityError (CheckViolationError, SQLSTATE 23514, "
                "constraint no_such_name, table person)"
            )
        else:
            assert describe_error(exc) == (
                "IntegrityError (IntegrityError, SQLITE_CONSTRAINT_CHECK, "
                "constraint on no_such_name)"
            )
        assert not is_transient(exc)
        # The interceptor's log of an unhandled error, and the status it sends.
        with pytest.raises(_Aborted) as aborted:
            await _translate(exc, "/jukinet.v1.Test/Write", cast(Any, _Context()))
        assert aborted.value.args[0] is grpc.StatusCode.INTERNAL
        logged = caplog.text + str(aborted.value)
        assert "unhandled IntegrityError" in logged and "no_such_name" in logged
        for value in row.values():
            assert value not in logged, value
    finally:
        await db.close()
        await dbs.drop_all()


def test_a_database_that_cannot_work_now_is_transient() -> None:
    assert is_transient(OSError("connection refused"))
    assert not is_transient(ValueError(NAME))
    assert describe_error(ValueError(NAME)) == "ValueError"
