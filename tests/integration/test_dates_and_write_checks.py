"""Dates against the clock, and the municipal node checking what it writes by
the rules of every tier.

A change is registered once it has happened: its effective date is today (in
Japan) at the latest; only a move out is notified ahead, dated to its planned
day, at most PLANNED_AHEAD ahead. The municipal node refuses anything later;
the prefecture applies the same window against its own clock plus the skew it
tolerates (jukinet.clock.MAX_CLOCK_SKEW), so that a municipality whose clock
is ahead of the prefecture's is never refused.
"""

from __future__ import annotations

import datetime as dt

import grpc
import grpc.aio
import pytest
from sqlalchemy import update

from jukinet.v1 import common_pb2, municipal_pb2, prefecture_pb2_grpc
from jukinet.validation import PLANNED_AHEAD, today
from services.municipal import models
from tests.federation import Federation, trailers
from tests.integration.test_bad_input import (
    batch,
    direct,  # noqa: F401 (a fixture)
    notification,
    pool_code,
    push,
    snapshot,
)
from tests.integration.test_smoke import person

TIMEOUT = 15
TOTTORI = "312011"
C = common_pb2
M = municipal_pb2


def ahead(days: int) -> str:
    """Today in Japan, ``days`` later, as an ISO date."""
    return (today() + dt.timedelta(days=days)).isoformat()


async def refused(call: object) -> tuple[grpc.StatusCode, dict[str, str], str]:
    """The status, text trailers and message of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), trailers(info.value), info.value.details() or ""


async def test_the_municipal_node_refuses_effective_dates_ahead(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    born = await op.RegisterBirth(M.RegisterBirthRequest(person=person()), timeout=TIMEOUT)
    code = born.resident.resident_code
    await fed.wait_delivered()
    before = await snapshot(fed)
    tomorrow = ahead(1)
    cases = {
        "relocation": op.Relocate(
            M.RelocateRequest(
                resident_code=code,
                new_address="鳥取県鳥取市栄町1番地",
                effective_date=tomorrow,
            ),
            timeout=TIMEOUT,
        ),
        "move-in-from-abroad": op.MoveIn(
            M.MoveInRequest(
                person=person(), origin=M.MOVE_IN_ORIGIN_ABROAD, effective_date=tomorrow
            ),
            timeout=TIMEOUT,
        ),
        "ex-officio-removal": op.RemoveExOfficio(
            M.RemoveExOfficioRequest(
                resident_code=code, ground=M.REMOVAL_GROUND_EX_OFFICIO, effective_date=tomorrow
            ),
            timeout=TIMEOUT,
        ),
        "move-out-beyond-its-window": op.MoveOut(
            M.MoveOutRequest(
                resident_code=code, abroad=True, effective_date=ahead(PLANNED_AHEAD.days + 1)
            ),
            timeout=TIMEOUT,
        ),
    }
    for case, call in cases.items():
        status, meta, message = await refused(call)
        assert status is grpc.StatusCode.INVALID_ARGUMENT, (case, message)
        assert (meta["jukinet-field"], meta["jukinet-reason"]) == (
            "effective_date",
            "invalid-argument",
        ), case
        assert ("in the future" if "move-out" not in case else "days ahead") in message, case
    assert await snapshot(fed) == before

    # A planned move out may be dated ahead, within its window; it reaches every tier.
    planned = ahead(PLANNED_AHEAD.days)
    moved = await op.MoveOut(
        M.MoveOutRequest(resident_code=code, abroad=True, effective_date=planned),
        timeout=TIMEOUT,
    )
    assert moved.resident.removed_on == planned
    await fed.wait_delivered()


async def test_the_prefecture_refuses_a_date_beyond_any_clock_skew(
    fed: Federation,
    direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub,  # noqa: F811
) -> None:
    # Two days ahead of the prefecture's date: beyond any municipality's clock
    # (tests/integration/test_clock_skew.py covers a clock ahead at midnight).
    code = await pool_code(direct, "dates-tolerance-1")
    too_far = notification(1, code)
    too_far.effective_date = too_far.record.birth_date = ahead(2)
    status, meta, acks = await push(direct, batch((1, too_far)))
    assert status is grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-field"] == "entries[0].notification.effective_date"
    assert acks == []


async def test_a_notification_the_prefecture_would_refuse_is_not_written(
    fed: Federation,
) -> None:
    op = fed.operator(TOTTORI)
    born = await op.RegisterBirth(M.RegisterBirthRequest(person=person()), timeout=TIMEOUT)
    code = born.resident.resident_code
    await fed.wait_delivered()
    # A register row older than today's rules (a reading in hiragana, as an
    # earlier version stored it): the notification of its next change would
    # be refused above, so it is refused here, and nothing is written.
    municipal = fed.municipalities[TOTTORI]
    async with municipal.db.write() as conn:
        await conn.execute(
            update(models.residents)
            .where(models.residents.c.resident_code == code)
            .values(name_kana="とっとり はなこ")
        )
    before = await snapshot(fed)
    status, meta, message = await refused(
        op.Relocate(
            M.RelocateRequest(
                resident_code=code, new_address="鳥取県鳥取市栄町1番地", effective_date=ahead(0)
            ),
            timeout=TIMEOUT,
        )
    )
    assert status is grpc.StatusCode.INVALID_ARGUMENT, message
    assert meta["jukinet-field"] == "notification.record.name_kana"
    assert await snapshot(fed) == before
    resident = await op.GetResident(M.GetResidentRequest(resident_code=code), timeout=TIMEOUT)
    assert resident.resident.person.address == person().address
    assert [n.reason for n in resident.notifications] == [C.CHANGE_REASON_BIRTH]
