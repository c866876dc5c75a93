"""An operation's log entry commits in the same transaction as its write, on SQLite
and PostgreSQL: a committed write has exactly one entry, a write that fails after
its rows leaves neither rows nor an "ok" entry, and concurrent writers and
readers neither deadlock nor share an index."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from jukinet.oplog.verify import Row, verify_log
from jukinet.v1 import common_pb2 as C
from jukinet.v1 import municipal_pb2 as M
from services.municipal.app import MunicipalApp
from tests.federation import Federation

TOTTORI = "312011"
TIMEOUT = 30


def person(i: int = 0) -> M.PersonDetails:
    """A valid person's details, told apart by ``i``."""
    return M.PersonDetails(
        name=f"鳥取 太郎{chr(0x4E00 + i)}",
        name_kana="トットリ タロウ",
        birth_date="2020-05-17",
        sex=C.SEX_MALE,
        address="鳥取県鳥取市東町1丁目220番地",
    )


async def rows_of(app: MunicipalApp) -> list[Row]:
    """The log rows of the node, as stored."""
    async with app.db.read() as conn:
        return await app.log.oplog.rows(conn)


async def verified(app: MunicipalApp) -> int:
    """The size of the node's log, checked end to end (rows, heads, recorded size)."""
    async with app.db.read() as conn:
        rows = await app.log.oplog.rows(conn)
        heads = await app.log.oplog.heads(conn)
        state = await app.log.oplog.frontier(conn)
    verdict = verify_log(rows, heads, app.log.oplog.verifier, state=state)
    assert verdict.ok, verdict.problem
    return verdict.size


async def test_each_committed_write_has_exactly_one_entry(fed: Federation) -> None:
    town = fed.municipalities[TOTTORI]
    clerk = fed.operator(TOTTORI)
    before = len(await rows_of(town))  # the operator's enrolment and login
    born = await clerk.RegisterBirth(M.RegisterBirthRequest(person=person()), timeout=TIMEOUT)
    code = born.resident.resident_code
    await clerk.ChangeDomicile(
        M.ChangeDomicileRequest(
            resident_code=code,
            domicile="鳥取県鳥取市東町一丁目220番地",
            domicile_head="鳥取 太郎",
            effective_date="2024-04-01",
        ),
        timeout=TIMEOUT,
    )
    await clerk.GetResident(M.GetResidentRequest(resident_code=code), timeout=TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError):  # refused inside the write transaction
        await clerk.ChangeDomicile(
            M.ChangeDomicileRequest(
                resident_code=code,
                domicile="鳥取県鳥取市東町一丁目220番地",
                domicile_head="鳥取 太郎",
                effective_date="2024-04-01",
            ),
            timeout=TIMEOUT,
        )
    written = (await rows_of(town))[before:]
    entries = [(r.operation, r.resident_codes, r.outcome, r.reason) for r in written]
    assert entries == [
        # The new code is in no request: the write named it.
        ("RegisterBirth", code, "ok", ""),
        ("ChangeDomicile", code, "ok", ""),
        ("GetResident", code, "ok", ""),
        ("ChangeDomicile", code, "refused", "invalid-argument"),
    ]
    assert await verified(town) == before + 4


async def _refuse_entries_of(app: MunicipalApp, operation: str) -> None:
    """A trigger that fails the insert of an "ok" entry of ``operation``: the write's
    last statement, after every row of the change."""
    async with app.db.write() as conn:
        if app.db.is_sqlite:
            await conn.execute(
                text(
                    "CREATE TRIGGER no_entry BEFORE INSERT ON oplog_entries "
                    f"WHEN NEW.operation = '{operation}' AND NEW.outcome = 'ok' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )
            return
        await conn.execute(
            text(
                "CREATE FUNCTION no_entry() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.operation = '{operation}' AND NEW.outcome = 'ok' THEN "
                "RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER no_entry BEFORE INSERT ON oplog_entries "
                "FOR EACH ROW EXECUTE FUNCTION no_entry()"
            )
        )


async def test_a_write_whose_entry_fails_leaves_no_rows_and_no_ok_entry(
    fed: Federation,
) -> None:
    town = fed.municipalities[TOTTORI]
    clerk = fed.operator(TOTTORI)
    await clerk.RegisterBirth(M.RegisterBirthRequest(person=person(1)), timeout=TIMEOUT)
    before = await clerk.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    await _refuse_entries_of(town, "RegisterBirth")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await clerk.RegisterBirth(M.RegisterBirthRequest(person=person(2)), timeout=TIMEOUT)
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    after = await clerk.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    # No resident, no notification, no code of the pool used.
    assert (after.last_sequence, after.active_residents, after.codes_in_pool) == (
        before.last_sequence,
        before.active_residents,
        before.codes_in_pool,
    )
    births = [(r.outcome, r.reason) for r in await rows_of(town) if r.operation == "RegisterBirth"]
    assert births == [("ok", ""), ("failed", "internal")]
    await verified(town)


async def test_concurrent_writers_and_readers_each_get_one_entry(fed: Federation) -> None:
    town = fed.municipalities[TOTTORI]
    clerk = fed.operator(TOTTORI)
    before = len(await rows_of(town))  # the operator's enrolment and login
    n = 24

    async def one(i: int) -> Any:
        if i % 3 == 2:
            return await clerk.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
        return await clerk.RegisterBirth(
            M.RegisterBirthRequest(person=person(10 + i)), timeout=TIMEOUT
        )

    answers = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=120)
    codes = [a.resident.resident_code for a in answers if isinstance(a, M.RegisterBirthResponse)]
    everything = await rows_of(town)
    assert [r.idx for r in everything] == list(range(before + n))
    rows = everything[before:]
    ok_births = Counter(
        r.resident_codes for r in rows if r.operation == "RegisterBirth" and r.outcome == "ok"
    )
    assert ok_births == Counter(codes) and set(ok_births.values()) == {1}
    assert sum(r.operation == "GetStatus" for r in rows) == n // 3
    await town.log.keeper.tick()
    assert await verified(town) == before + n
