"""An entry the prefecture's store refuses for a reason of its own (here a
constraint or trigger the test adds to its identity table) is reported once,
by origin and sequence, without personal data; the municipal pusher backs
off; nothing of the batch is stored; delivery resumes by itself once the
obstacle is gone. The store's refusal quotes the row on PostgreSQL
("Failing row contains (...)"): none of it may reach a log."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from sqlalchemy import text

from jukinet.db import Database
from jukinet.v1 import delivery_pb2, municipal_pb2
from tests.federation import Federation
from tests.integration.test_smoke import person

TOTTORI = "312011"
PUSH = "/jukinet.v1.PrefectureService/PushNotifications"
# The one person the prefecture's store is made to refuse; every item is
# distinctive, so that any of it in a log is found.
NAME = "障害 三郎"
KANA = "ショウガイ サブロウ"
ADDRESS = "鳥取県鳥取市栄町七百七十七番地"
BIRTH = "1987-06-05"
OBSTACLE = "test_obstacle"


async def add_obstacle(db: Database) -> None:
    """Make the identity table refuse a row with :data:`NAME`."""
    async with db.write() as conn:
        if db.is_sqlite:
            await conn.execute(
                text(
                    f"CREATE TRIGGER {OBSTACLE} BEFORE INSERT ON identities "
                    f"WHEN NEW.name = '{NAME}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        else:
            await conn.execute(
                text(f"ALTER TABLE identities ADD CONSTRAINT {OBSTACLE} CHECK (name <> '{NAME}')")
            )


async def remove_obstacle(db: Database) -> None:
    """Take the obstacle of :func:`add_obstacle` away."""
    async with db.write() as conn:
        if db.is_sqlite:
            await conn.execute(text(f"DROP TRIGGER {OBSTACLE}"))
        else:
            await conn.execute(text(f"ALTER TABLE identities DROP CONSTRAINT {OBSTACLE}"))


async def held(stub: object, code: str) -> bool:
    """Whether the tier behind ``stub`` stores a record for ``code``."""
    try:
        await stub.GetIdentity(delivery_pb2.GetIdentityRequest(resident_code=code))  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.NOT_FOUND, exc
        return False
    return True


def messages(caplog: pytest.LogCaptureFixture, logger: str, words: str) -> list[str]:
    """The captured messages of ``logger`` that contain ``words``."""
    return [r.getMessage() for r in caplog.records if r.name == logger and words in r.getMessage()]


async def test_an_unappliable_entry_is_reported_once_and_delivery_resumes(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    # Every level of the nodes' own loggers; the drivers' as a node sets them.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="jukinet")
    prefecture = fed.prefectures["31"]
    metrics = prefecture.metrics.registry
    op = fed.operator(TOTTORI)
    first = await op.RegisterBirth(municipal_pb2.RegisterBirthRequest(person=person()))
    await fed.wait_delivered()

    await add_obstacle(prefecture.db)
    stuck = await op.RegisterBirth(
        municipal_pb2.RegisterBirthRequest(
            person=person(name=NAME, name_kana=KANA, address=ADDRESS, birth_date=BIRTH)
        )
    )
    behind = await op.RegisterBirth(municipal_pb2.RegisterBirthRequest(person=person()))
    assert stuck.notification_sequence == 2

    def reported() -> float:
        return (
            metrics.get_sample_value("jukinet_unappliable_notifications_total", {"origin": TOTTORI})
            or 0.0
        )

    def attempts() -> float:
        return (
            metrics.get_sample_value(
                "jukinet_rpcs_total", {"method": PUSH, "code": "FAILED_PRECONDITION"}
            )
            or 0.0
        )

    for _ in range(300):
        if reported():
            break
        await asyncio.sleep(0.1)
    assert reported() == 1
    assert metrics.get_sample_value("jukinet_unappliable_sequence", {"origin": TOTTORI}) == 2

    # A bounded period: the pusher backs off (1 s, doubling), so a handful of
    # attempts at most, where a pusher that spins would make dozens.
    before = attempts()
    await asyncio.sleep(4)
    assert attempts() - before <= 4
    assert attempts() >= 1
    # Reported once, however often it was tried.
    assert reported() == 1
    assert len(messages(caplog, "jukinet.delivery.receiver", "cannot apply notification")) == 1
    assert messages(caplog, "jukinet.delivery.receiver", f"{TOTTORI} #2")
    assert len(messages(caplog, "jukinet.delivery.pusher", "cannot apply")) == 1
    pusher = fed.municipalities[TOTTORI].pusher
    assert pusher is not None and pusher.stuck == (TOTTORI, 2)

    # Nothing of the batch is stored, at either tier.
    pref_op = fed.prefecture_operator("31")
    national = fed.national_operator()
    for code in (stuck.resident.resident_code, behind.resident.resident_code):
        assert not await held(pref_op, code)
        assert not await held(national, code)
    assert await held(pref_op, first.resident.resident_code)

    # None of the person's record in any log line of any node.
    logged = caplog.text + "".join(str(r.exc_info) for r in caplog.records if r.exc_info)
    for value in (NAME, KANA, ADDRESS, BIRTH, stuck.resident.resident_code):
        assert value not in logged, value

    await remove_obstacle(prefecture.db)
    await fed.wait_delivered(within=90)
    for code in (stuck.resident.resident_code, behind.resident.resident_code):
        assert await held(pref_op, code)
        assert await held(national, code)
    assert metrics.get_sample_value("jukinet_unappliable_sequence", {"origin": TOTTORI}) == 0
    assert reported() == 1
    assert pusher.stuck is None
    assert messages(caplog, "jukinet.delivery.pusher", "delivery resumed")
