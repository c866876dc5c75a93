"""Kill -9 in the middle of delivery: a prefecture, or the national node, is
killed while a municipality pushes 10,000 notifications, then restarted. At the
end every tier holds exactly the municipal truth: each notification applied
once, in order, none missing."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from jukinet.v1 import (
    common_pb2,
    delivery_pb2,
    municipal_pb2,
    municipal_pb2_grpc,
    national_pb2_grpc,
    prefecture_pb2_grpc,
)
from tools.localfed import Cursors, LocalFederation, wait_delivered
from tools.population import PopulationGenerator

# Node processes, 10,000 residents and waits of up to three minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MUNICIPALITY = "312011"
TOTAL = 10_000
SEX = {"male": common_pb2.SEX_MALE, "female": common_pb2.SEX_FEMALE}


def rows(count: int) -> list[municipal_pb2.ImportRow]:
    """``count`` generated people of the municipality, as import rows."""
    people = PopulationGenerator(seed=7).people(MUNICIPALITY, count)
    return [
        municipal_pb2.ImportRow(
            line=i + 2,
            source_id=f"old-{i}",
            person=municipal_pb2.PersonDetails(
                name=p.name,
                name_kana=p.name_kana,
                birth_date=p.birth_date.isoformat(),
                sex=SEX[p.sex],
                address=p.address,
            ),
        )
        for i, p in enumerate(people)
    ]


async def import_all(fed: LocalFederation) -> None:
    """Import the whole population over one ImportResidents stream."""
    channel = fed.channel(f"municipality-{MUNICIPALITY}")
    try:
        stub = municipal_pb2_grpc.MunicipalServiceStub(channel)
        every = rows(TOTAL)
        batches = [every[i : i + 500] for i in range(0, TOTAL, 500)]

        async def requests() -> AsyncIterator[municipal_pb2.ImportResidentsRequest]:
            for batch in batches:
                yield municipal_pb2.ImportResidentsRequest(rows=batch)

        imported = 0
        async for reply in stub.ImportResidents(requests()):
            assert not reply.rejected
            imported += reply.imported
        assert imported == TOTAL
    finally:
        await channel.close(grace=None)


async def national_cursor(fed: LocalFederation) -> int:
    """The last sequence of the municipality the national node has applied."""
    channel = fed.channel("national")
    try:
        status = await national_pb2_grpc.NationalServiceStub(channel).GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=5
        )
    finally:
        await channel.close(grace=None)
    return next((c.last_sequence for c in status.applied if c.origin_code == MUNICIPALITY), 0)


async def wait_for(fed: LocalFederation, at_least: int, within: float) -> int:
    """Until the national cursor of the municipality reaches ``at_least``; returns it."""

    async def applied() -> Cursors:
        try:
            return {MUNICIPALITY: await national_cursor(fed)}
        except grpc.aio.AioRpcError:
            return {}  # the node is down or restarting

    delivery = await wait_delivered({MUNICIPALITY: at_least}, applied, within=within)
    return delivery.applied[MUNICIPALITY]


async def export_upper(fed: LocalFederation, name: str) -> dict[str, tuple[str, str, int]]:
    """What node ``name`` holds of the municipality: code -> (name, address, status)."""
    channel = fed.channel(name)
    try:
        if name == "national":
            stub: (
                national_pb2_grpc.NationalServiceAsyncStub
                | prefecture_pb2_grpc.PrefectureServiceAsyncStub
            ) = national_pb2_grpc.NationalServiceStub(channel)
        else:
            stub = prefecture_pb2_grpc.PrefectureServiceStub(channel)
        out: dict[str, tuple[str, str, int]] = {}
        async for page in stub.ExportIdentities(
            delivery_pb2.ExportIdentitiesRequest(municipality_code=MUNICIPALITY)
        ):
            for s in page.identities:
                out[s.record.resident_code] = (s.record.name, s.record.address, s.status)
        return out
    finally:
        await channel.close(grace=None)


async def export_municipal(fed: LocalFederation) -> dict[str, tuple[str, str, int]]:
    """The municipal register in the form of :func:`export_upper`."""
    channel = fed.channel(f"municipality-{MUNICIPALITY}")
    try:
        stub = municipal_pb2_grpc.MunicipalServiceStub(channel)
        out: dict[str, tuple[str, str, int]] = {}
        async for page in stub.ExportResidents(municipal_pb2.ExportResidentsRequest()):
            for r in page.residents:
                status = (
                    common_pb2.RECORD_STATUS_ACTIVE
                    if r.status == municipal_pb2.RESIDENT_STATUS_ACTIVE
                    else common_pb2.RECORD_STATUS_REMOVED
                )
                out[r.resident_code] = (r.person.name, r.person.address, status)
        return out
    finally:
        await channel.close(grace=None)


def history_sequences(db: Path) -> list[int]:
    """The municipality's sequences in a node's history table, in order of arrival."""
    with sqlite3.connect(db) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT origin_sequence FROM identity_history WHERE origin_code = ? ORDER BY id",
                (MUNICIPALITY,),
            )
        ]


@pytest.mark.parametrize("victim", ["prefecture-31", "national"])
async def test_kill_during_delivery(tmp_path: Path, victim: str) -> None:
    fed = LocalFederation(
        tmp_path,
        [MUNICIPALITY],
        settings={
            # Small batches and one in flight keep delivery slow enough to be
            # caught in the middle; a pool large enough for the whole import.
            "municipal": {"push_batch_size": 50, "push_window": 1, "pool_refill_size": 10_500},
            "prefecture": {"push_batch_size": 50, "push_window": 1},
        },
    )
    await fed.prepare()
    try:
        await fed.start_all()
        importer = asyncio.create_task(import_all(fed))
        reached = await wait_for(fed, 1_000, within=60)
        fed.kill(victim)
        assert reached < TOTAL, "delivery finished before the kill; the test proves nothing"
        await asyncio.sleep(0.5)
        fed.start(victim)
        await fed.wait_ready(victim)
        await importer
        await wait_for(fed, TOTAL, within=120)

        prefecture_db = tmp_path / "data" / "prefecture-31.db"
        national_db = tmp_path / "data" / "national.db"
        expected = list(range(1, TOTAL + 1))
        assert history_sequences(prefecture_db) == expected
        assert history_sequences(national_db) == expected
        truth = await export_municipal(fed)
        assert len(truth) == TOTAL
        assert await export_upper(fed, "prefecture-31") == truth
        assert await export_upper(fed, "national") == truth
    finally:
        fed.stop_all()
