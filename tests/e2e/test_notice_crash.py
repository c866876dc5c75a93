"""Kill -9 around a move-in notice (転入通知) over real node processes: the new
municipality killed right after the move-in committed (before the notice reached
the old one), and a prefecture killed while it relays the notice. Either way the
notice arrives once and the old municipality makes the move-out final once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import cast

import pytest

from jukinet.v1 import common_pb2, municipal_pb2, municipal_pb2_grpc
from tools.localfed import LocalFederation

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

OLD = "312011"
NEW = "131016"
ADDRESS = {OLD: "鳥取県鳥取市東町1丁目220番地", NEW: "東京都千代田区永田町1丁目7番1号"}
CONFIRMED = municipal_pb2.REGISTER_CHANGE_MOVE_OUT_CONFIRMED
TIMEOUT = 20


async def counter(fed: LocalFederation, code: str) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
    """The municipality's service in its counter operator's session (on a grpc.aio channel)."""
    return cast("municipal_pb2_grpc.MunicipalServiceAsyncStub", (await fed.counter(code))[0])


async def moved_out(fed: LocalFederation) -> tuple[str, common_pb2.SignedMoveOutCertificate]:
    """A resident born at the old municipality and moved out towards the new one."""
    old = await counter(fed, OLD)
    born = await old.RegisterBirth(
        municipal_pb2.RegisterBirthRequest(
            person=municipal_pb2.PersonDetails(
                name="鳥取 三郎",
                name_kana="トットリ サブロウ",
                birth_date="1991-03-04",
                sex=common_pb2.SEX_MALE,
                address=ADDRESS[OLD],
            )
        ),
        timeout=TIMEOUT,
    )
    code = born.resident.resident_code
    out = await old.MoveOut(
        municipal_pb2.MoveOutRequest(
            resident_code=code, destination_local_government_code=NEW, effective_date="2025-04-10"
        ),
        timeout=TIMEOUT,
    )
    return code, out.certificate


async def move_in(fed: LocalFederation, certificate: common_pb2.SignedMoveOutCertificate) -> None:
    new = await counter(fed, NEW)
    await new.MoveIn(
        municipal_pb2.MoveInRequest(
            person=municipal_pb2.PersonDetails(address=ADDRESS[NEW]),
            origin=municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC,
            move_out_certificate=certificate,
            effective_date="2025-04-10",
        ),
        timeout=TIMEOUT,
    )


def confirmations(workdir: Path, code: str) -> tuple[int, list[str | None]]:
    """The old municipality's confirmation events of ``code`` and its certificates' days."""
    with sqlite3.connect(workdir / "data" / f"municipality-{OLD}.db") as conn:
        events = conn.execute(
            "SELECT count(*) FROM resident_events WHERE resident_code = ? AND register_change = ?",
            (code, CONFIRMED),
        ).fetchone()[0]
        days = [
            r[0]
            for r in conn.execute(
                "SELECT confirmed_on FROM move_out_certificates WHERE resident_code = ?", (code,)
            )
        ]
    return int(events), days


def notices(workdir: Path) -> list[str]:
    """The states of the new municipality's relay outbox rows."""
    with sqlite3.connect(workdir / "data" / f"municipality-{NEW}.db") as conn:
        return [r[0] for r in conn.execute("SELECT state FROM relay_outbox ORDER BY id")]


async def until_final(workdir: Path, code: str, within: float = 120) -> None:
    """Until the notice was delivered and the move-out made final."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while confirmations(workdir, code)[0] == 0 or notices(workdir) != ["delivered"]:
        assert loop.time() < deadline, (confirmations(workdir, code), notices(workdir))
        await asyncio.sleep(0.2)


def federation(tmp_path: Path) -> LocalFederation:
    # Short directory refreshes: restarted nodes find each other again quickly.
    every = {"directory_refresh_interval": 2}
    return LocalFederation(
        tmp_path,
        [OLD, NEW],
        settings={"national": every, "prefecture": every, "municipal": every},
    )


async def test_new_municipality_killed_before_the_notice_reached_the_old(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    await fed.prepare()
    try:
        await fed.start_all()
        code, certificate = await moved_out(fed)
        fed.stop(f"municipality-{OLD}")
        await move_in(fed, certificate)
        fed.kill(f"municipality-{NEW}")
        assert notices(tmp_path) == ["pending"]  # committed with the move-in, not sent
        await fed.start_nodes([f"municipality-{OLD}"])
        await fed.start_nodes([f"municipality-{NEW}"])
        await until_final(tmp_path, code)
        events, days = confirmations(tmp_path, code)
        assert events == 1 and len(days) == 1 and days[0]
    finally:
        await fed.close()


async def test_prefecture_killed_while_it_relays_the_notice(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    await fed.prepare()
    try:
        await fed.start_all()
        code, certificate = await moved_out(fed)
        # The old municipality's prefecture holds the notice (paused), then dies.
        fed.pause("prefecture-31")
        await move_in(fed, certificate)
        await asyncio.sleep(2)
        fed.kill("prefecture-31")
        assert notices(tmp_path) == ["pending"]
        assert confirmations(tmp_path, code)[0] == 0
        await fed.start_nodes(["prefecture-31"])
        await until_final(tmp_path, code)
        events, days = confirmations(tmp_path, code)
        assert events == 1 and len(days) == 1 and days[0]
    finally:
        await fed.close()
