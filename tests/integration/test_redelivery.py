"""A redelivered notification is compared with the one applied under its
(origin, sequence): the same content is acknowledged as a duplicate, other
content is refused and alarmed (a sender restored from an old backup numbers
its new changes again from old sequences), at the prefecture and at the
national node, and nothing is stored."""

from __future__ import annotations

import logging

import grpc
import pytest
from sqlalchemy import update

from jukinet.client import tls_files
from jukinet.reasons import Reason
from jukinet.tls import secure_channel
from jukinet.v1 import common_pb2, delivery_pb2, national_pb2_grpc, prefecture_pb2_grpc
from services.prefecture import models as prefecture_models
from tests.federation import Federation
from tests.integration.test_bad_input import (
    YONAGO,
    batch,
    cursor,
    delivery_status,
    direct,
    notification,
    pool_code,
    push,
)
from tests.integration.test_delivery import eventually

__all__ = ["direct"]  # the fixture, used by name

TIMEOUT = 15
C = common_pb2
CONFLICTS = "jukinet_notification_conflicts_total"


def conflicts(fed: Federation, tier: str) -> float:
    """The conflict counter of prefecture 31 or the national node."""
    node = fed.prefectures["31"] if tier == "prefecture" else fed.national
    assert node is not None
    return node.metrics.registry.get_sample_value(CONFLICTS) or 0.0


def renamed(n: C.Notification, name: str) -> C.Notification:
    """``n`` with another name: the same (origin, sequence), other content."""
    other = C.Notification()
    other.CopyFrom(n)
    other.record.name = name
    return other


async def held_name(
    stub: prefecture_pb2_grpc.PrefectureServiceAsyncStub
    | national_pb2_grpc.NationalServiceAsyncStub,
    code: str,
) -> str:
    """The name a tier holds for ``code``."""
    found = await stub.GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=code), timeout=TIMEOUT
    )
    return found.identity.record.name


async def test_a_redelivery_with_other_content_is_refused_and_alarmed(
    fed: Federation,
    direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefecture = fed.prefecture_operator("31")
    national = fed.national_operator()
    code = await pool_code(direct, "redelivery-1")
    first = notification(1, code)
    code_, _, acks = await push(direct, batch((1, first)))
    assert code_ == grpc.StatusCode.OK
    assert [(a.applied, a.duplicates) for a in acks] == [(1, 0)]
    await eventually(
        lambda: national.GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
        ),
        lambda s: cursor(s, YONAGO) == 1,
        "the national node applied 312029 #1",
    )
    await eventually(
        lambda: prefecture.GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
        ),
        lambda s: s.outbox_acknowledged == s.outbox_last_sequence,
        "the relay outbox acknowledged",
    )

    # The byte-identical redelivery is a duplicate, acknowledged as before.
    code_, _, acks = await push(direct, batch((1, first)))
    assert code_ == grpc.StatusCode.OK
    assert [(a.acknowledged_through, a.applied, a.duplicates) for a in acks] == [(1, 0, 1)]

    # Other content under the same (origin, sequence): refused, counted, logged.
    # The prefecture's rows lose their digest, as rows applied before digests
    # were kept: their stored payload answers (the national node keeps its own).
    history = prefecture_models.identities.history
    async with fed.prefectures["31"].db.write() as conn:
        await conn.execute(update(history).values(digest=None))
    before = await delivery_status(fed)
    caplog.set_level(logging.ERROR, logger="jukinet.delivery.receiver")
    code_, meta, acks = await push(direct, batch((1, renamed(first, "米子 別子"))))
    assert code_ == grpc.StatusCode.FAILED_PRECONDITION
    assert meta["jukinet-reason"] == Reason.NOTIFICATION_CONFLICT
    assert acks == []
    assert conflicts(fed, "prefecture") == 1
    alarms = [r.getMessage() for r in caplog.records if "notification conflict" in r.getMessage()]
    assert alarms == [
        f"notification conflict: {YONAGO} #1 was applied with other content; the sender's "
        "outbox diverges from what it delivered (restored from a backup?)"
    ]
    assert await delivery_status(fed) == before
    assert await held_name(prefecture, code) == first.record.name

    # A batch that applies #2 and then repeats #2 with other content: refused
    # as a whole, so #2 is not applied either.
    code2 = await pool_code(direct, "redelivery-2")
    second = notification(2, code2)
    code_, meta, _ = await push(direct, batch((2, second), (3, renamed(second, "米子 別子"))))
    assert code_ == grpc.StatusCode.FAILED_PRECONDITION
    assert meta["jukinet-reason"] == Reason.NOTIFICATION_CONFLICT
    assert conflicts(fed, "prefecture") == 2
    assert await delivery_status(fed) == before

    # The national node compares too: the prefecture's key relaying other content.
    channel = secure_channel(
        f"127.0.0.1:{fed.national_port}", tls_files(fed.pki_dir, "prefecture-31")
    )
    try:
        as_prefecture = national_pb2_grpc.NationalServiceStub(channel)
        code_, meta, _ = await push(
            as_prefecture,  # type: ignore[arg-type]
            batch((1, renamed(first, "米子 別子"))),
        )
        assert code_ == grpc.StatusCode.FAILED_PRECONDITION
        assert meta["jukinet-reason"] == Reason.NOTIFICATION_CONFLICT
        assert conflicts(fed, "national") == 1
        code_, _, acks = await push(as_prefecture, batch((1, first)))  # type: ignore[arg-type]
        assert code_ == grpc.StatusCode.OK
        assert [(a.applied, a.duplicates) for a in acks] == [(0, 1)]
    finally:
        await channel.close(grace=None)
    assert await delivery_status(fed) == before
    assert await held_name(national, code) == first.record.name
