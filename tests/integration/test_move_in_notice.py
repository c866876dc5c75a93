"""The move-in notice (転入通知) over real nodes: the new municipality queues it with
the move-in, the relay delivers it, and the old municipality makes the move-out
final (転出確定) once; a notice it cannot have sent is refused."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from jukinet.reasons import Reason
from jukinet.relay.endpoint import RelayRefused
from jukinet.v1 import common_pb2, municipal_pb2, relay_pb2
from services.municipal import models
from services.municipal import repository as repo
from tests.federation import Federation, move, move_in, move_out

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
TIMEOUT = 15
ADDRESS = {
    TOTTORI: "鳥取県鳥取市東町1丁目220番地",
    YONAGO: "鳥取県米子市加茂町1丁目1番地",
    CHIYODA: "東京都千代田区永田町1丁目7番1号",
}
CONFIRMED = municipal_pb2.REGISTER_CHANGE_MOVE_OUT_CONFIRMED


async def born(fed: Federation, municipality: str = TOTTORI) -> str:
    """A resident registered at ``municipality``; their code."""
    r = await fed.operator(municipality).RegisterBirth(
        municipal_pb2.RegisterBirthRequest(
            person=municipal_pb2.PersonDetails(
                name="鳥取 次郎",
                name_kana="トットリ ジロウ",
                birth_date="1990-02-03",
                sex=common_pb2.SEX_MALE,
                address=ADDRESS[municipality],
            )
        ),
        timeout=TIMEOUT,
    )
    return r.resident.resident_code


async def final_state(fed: Federation, code: str) -> tuple[int, list[str | None]]:
    """How many confirmation events ``code`` has at Tottori, and its certificates' days."""
    db = fed.municipalities[TOTTORI].db
    async with db.read() as conn:
        events = await conn.scalar(
            sa.select(sa.func.count()).where(
                models.resident_events.c.resident_code == code,
                models.resident_events.c.register_change == CONFIRMED,
            )
        )
        days = (
            await conn.execute(
                sa.select(models.move_out_certificates.c.confirmed_on).where(
                    models.move_out_certificates.c.resident_code == code
                )
            )
        ).scalars()
        return int(events or 0), list(days)


async def until_final(fed: Federation, code: str, within: float = 40) -> None:
    """Wait until Tottori made ``code``'s move-out final."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (await final_state(fed, code))[0] == 0:
        assert loop.time() < deadline, f"the move-out of {code} never became final"
        await asyncio.sleep(0.1)


async def outbox(fed: Federation, code: str) -> list[dict[str, object]]:
    async with fed.municipalities[code].db.read() as conn:
        return await repo.relay_requests(conn)


async def delivered(fed: Federation, code: str, within: float = 20) -> list[dict[str, object]]:
    """``code``'s relay outbox once no row of it is pending."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        rows = await outbox(fed, code)
        if all(r["state"] != "pending" for r in rows):
            return rows
        assert loop.time() < deadline, rows
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("new", [YONAGO, CHIYODA], ids=["same-prefecture", "other-prefecture"])
async def test_a_move_ends_with_the_move_out_final_once(fed: Federation, new: str) -> None:
    code = await born(fed)
    await move(fed, code, TOTTORI, new, address=ADDRESS[new], effective_date="2025-04-10")
    await until_final(fed, code)
    rows = await delivered(fed, new)
    assert [r["state"] for r in rows] == ["delivered"]
    # The same notice again (a resend after a crash) writes nothing twice.
    notice = relay_pb2.MoveInNotice.FromString(rows[0]["body"])  # type: ignore[arg-type]
    answer = relay_pb2.MoveInNoticeAnswer.FromString(
        await fed.municipalities[new].relay_client.send(
            TOTTORI, relay_pb2.RELAY_KIND_MOVE_IN_NOTICE, notice
        )
    )
    events, days = await final_state(fed, code)
    assert events == 1 and days == [answer.confirmed_on]
    listed = await fed.operator(TOTTORI).ListUnconfirmedMoveOuts(
        municipal_pb2.ListUnconfirmedMoveOutsRequest(as_of="2026-01-01"), timeout=TIMEOUT
    )
    assert code not in [m.resident_code for m in listed.move_outs]


async def test_the_notice_waits_while_the_old_municipality_is_down(fed: Federation) -> None:
    code = await born(fed)
    certificate = await move_out(fed, code, TOTTORI, CHIYODA, effective_date="2025-04-10")
    await fed.municipalities[TOTTORI].stop()
    await move_in(fed, certificate, CHIYODA, address=ADDRESS[CHIYODA], effective_date="2025-04-10")
    await asyncio.sleep(1.5)
    rows = await outbox(fed, CHIYODA)
    assert [r["state"] for r in rows] == ["pending"] and int(rows[0]["attempts"]) >= 1  # type: ignore[call-overload]
    await fed.start_municipality(TOTTORI)
    await until_final(fed, code)
    assert [r["state"] for r in await delivered(fed, CHIYODA)] == ["delivered"]
    assert (await final_state(fed, code))[0] == 1


async def test_a_notice_from_another_than_the_destination_is_refused(fed: Federation) -> None:
    code = await born(fed)
    certificate = await move_out(fed, code, TOTTORI, CHIYODA, effective_date="2025-04-10")
    number = common_pb2.MoveOutCertificate.FromString(certificate.certificate).certificate_number
    forged = relay_pb2.MoveInNotice(
        certificate_number=number, resident_code=code, move_in_date="2025-04-11"
    )
    with pytest.raises(RelayRefused) as refused:
        await fed.municipalities[YONAGO].relay_client.send(
            TOTTORI, relay_pb2.RELAY_KIND_MOVE_IN_NOTICE, forged
        )
    assert refused.value.wire_reason == Reason.MOVE_IN_NOTICE_MISMATCH
    assert (await final_state(fed, code))[0] == 0
    # Unconfirmed past the statutory period: listed for Tottori's operators.
    listed = await fed.operator(TOTTORI).ListUnconfirmedMoveOuts(
        municipal_pb2.ListUnconfirmedMoveOutsRequest(as_of="2025-04-25"), timeout=TIMEOUT
    )
    assert [(m.resident_code, m.overdue_since) for m in listed.move_outs] == [(code, "2025-04-25")]
    early = await fed.operator(TOTTORI).ListUnconfirmedMoveOuts(
        municipal_pb2.ListUnconfirmedMoveOutsRequest(as_of="2025-04-24"), timeout=TIMEOUT
    )
    assert list(early.move_outs) == []
