"""The clock tolerance of a receiving tier: a notification's dates may lie up
to MAX_CLOCK_SKEW ahead of the receiver's clock, and no further."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from jukinet.clock import JST, MAX_CLOCK_SKEW, Clock, latest_accepted_date, wait_for_event
from jukinet.codes import resident_check_digit
from jukinet.errors import InvalidArgument
from jukinet.v1 import common_pb2
from jukinet.validation import check_notification

C = common_pb2
NEW_YEAR = dt.date(2027, 1, 1)
MIDNIGHT = dt.datetime(2027, 1, 1, tzinfo=JST)
CODE = "1234567890" + str(resident_check_digit("1234567890"))


def born_on(date: dt.date) -> C.Notification:
    """A birth at 312011 dated ``date``."""
    return C.Notification(
        origin_code="312011",
        sequence=1,
        kind=C.CHANGE_KIND_CREATED,
        reason=C.CHANGE_REASON_BIRTH,
        effective_date=date.isoformat(),
        recorded_at=MIDNIGHT.isoformat(),
        record=C.IdentityRecord(
            resident_code=CODE,
            name="鳥取 元日",
            name_kana="トットリ ガンジツ",
            birth_date=date.isoformat(),
            sex=C.SEX_FEMALE,
            address="鳥取県鳥取市東町1丁目220番地",
            local_government_code="312011",
        ),
    )


def test_the_tolerance_is_five_minutes() -> None:
    assert dt.timedelta(minutes=5) == MAX_CLOCK_SKEW
    assert latest_accepted_date(MIDNIGHT - MAX_CLOCK_SKEW) == NEW_YEAR
    assert latest_accepted_date(MIDNIGHT - MAX_CLOCK_SKEW - dt.timedelta(seconds=1)) < NEW_YEAR


def test_a_date_within_the_tolerance_is_accepted() -> None:
    check_notification(born_on(NEW_YEAR), now=MIDNIGHT - MAX_CLOCK_SKEW)
    check_notification(born_on(NEW_YEAR), now=MIDNIGHT - dt.timedelta(seconds=60))


def test_a_date_beyond_the_tolerance_is_in_the_future() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_notification(
            born_on(NEW_YEAR), now=MIDNIGHT - MAX_CLOCK_SKEW - dt.timedelta(seconds=1)
        )
    assert caught.value.field == "notification.effective_date"


def test_a_clock_runs_from_its_offset() -> None:
    clock = Clock(dt.timedelta(hours=-3))
    shown = clock.now()
    behind = dt.datetime.now(dt.UTC) - shown
    assert dt.timedelta(hours=3) <= behind < dt.timedelta(hours=3, seconds=5)


async def test_a_loop_waiting_for_an_event_stops_when_cancelled_as_the_event_is_set() -> None:
    event = asyncio.Event()
    rounds: list[bool] = []

    async def loop() -> None:
        while True:  # the shape of the nodes' background loops
            event.clear()
            rounds.append(await wait_for_event(event, 5))

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    # The same turn: asyncio.wait_for would swallow this cancellation on 3.11.
    event.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task} and task.cancelled()


async def test_waiting_for_an_event_says_whether_it_came() -> None:
    event = asyncio.Event()
    assert await wait_for_event(event, 0.01) is False
    event.set()
    assert await wait_for_event(event, 5) is True
