"""Clocks that differ between tiers hold no delivery up: around midnight in
Japan, a municipality whose clock runs 60 s ahead of its prefecture's (and the
prefecture's 60 s ahead of the national node's) registers a birth dated a day
that has not begun yet for the tiers above; both accept it and the
notifications behind it, and each exports the offset of the clock it was sent
from. A send time that is not a time is refused."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from jukinet.clock import JST, Clock, japan_date
from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2, prefecture_pb2_grpc
from tests.federation import Federation
from tests.integration.test_bad_input import (
    YONAGO,
    batch,
    delivery_status,
    direct,
    notification,
    pool_code,
    push,
)

__all__ = ["direct"]  # the fixture, used by name

TIMEOUT = 15
C = common_pb2
M = municipal_pb2
TOTTORI = "312011"
OFFSET = "jukinet_peer_clock_offset_seconds"


def set_time(clock: Clock, at: dt.datetime) -> None:
    """Make ``clock`` show ``at`` now (and run on from there)."""
    clock.offset = at - dt.datetime.now(dt.UTC)


async def test_a_sender_clock_ahead_across_midnight_holds_nothing_up(fed: Federation) -> None:
    # The midnight that began today in Japan: a birth dated today is, for a
    # clock showing a moment before that midnight, in the future.
    today = japan_date(dt.datetime.now(dt.UTC))
    midnight = dt.datetime.combine(today, dt.time(0), tzinfo=JST)
    municipal_clock, prefecture_clock, national_clock = Clock(), Clock(), Clock()
    for code in (TOTTORI, YONAGO):
        await fed.municipalities.pop(code).stop()
    await fed.prefectures["31"].stop()
    assert fed.national is not None
    await fed.national.stop()
    await fed.start_national(clock=national_clock)
    await fed.start_prefecture("31", clock=prefecture_clock)
    for code in (TOTTORI, YONAGO):
        await fed.start_municipality(code, clock=municipal_clock)

    # 60 s between each tier and the next, the municipality just past midnight.
    set_time(municipal_clock, midnight + dt.timedelta(seconds=30))
    set_time(prefecture_clock, midnight - dt.timedelta(seconds=30))
    set_time(national_clock, midnight - dt.timedelta(seconds=90))
    born = await fed.operator(TOTTORI).RegisterBirth(
        M.RegisterBirthRequest(
            person=M.PersonDetails(
                name="鳥取 今日子",
                name_kana="トットリ キョウコ",
                birth_date=today.isoformat(),
                sex=C.SEX_FEMALE,
                address="鳥取県鳥取市東町1丁目220番地",
            )
        ),
        timeout=TIMEOUT,
    )
    # Another municipality's notification behind it, on the same relay.
    behind = await fed.operator(YONAGO).RegisterBirth(
        M.RegisterBirthRequest(
            person=M.PersonDetails(
                name="米子 一郎",
                name_kana="ヨナゴ イチロウ",
                birth_date="2001-02-03",
                sex=C.SEX_MALE,
                address="鳥取県米子市加茂町1丁目1番地",
            )
        ),
        timeout=TIMEOUT,
    )
    await fed.wait_delivered(within=20)
    # Delivered while the tiers above were still on the day before.
    assert japan_date(national_clock.now()) < today
    assert japan_date(prefecture_clock.now()) < today
    for resident in (born.resident, behind.resident):
        up = await fed.national_operator().GetIdentity(
            delivery_pb2.GetIdentityRequest(resident_code=resident.resident_code),
            timeout=TIMEOUT,
        )
        assert up.identity.record.name == resident.person.name

    # Each tier sees the clock of the node below 60 s ahead of its own (the
    # offset is its clock minus the stated send time, the transfer included).
    prefecture = fed.prefectures["31"].metrics.registry
    national = fed.national.metrics.registry
    for registry, peer in ((prefecture, TOTTORI), (prefecture, YONAGO), (national, "31")):
        offset = registry.get_sample_value(OFFSET, {"peer": peer})
        assert offset is not None, peer
        assert -60.001 <= offset < -50, (peer, offset)


@pytest.mark.parametrize("sent_at", ["yesterday", "2026-12-01T10:00:00"])
async def test_a_send_time_that_is_not_a_time_is_refused(
    fed: Federation, direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub, sent_at: str
) -> None:
    request = batch((1, notification(1, await pool_code(direct, f"sent-at-{len(sent_at)}"))))
    request.sent_at = sent_at
    before = await delivery_status(fed)
    code, meta, acks = await push(direct, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-field"] == "sent_at"
    assert acks == []
    assert await delivery_status(fed) == before
