"""Delivery and code pools: the outbox holds what the next tier cannot take
yet, delivers it exactly once when the tier is back, and the resident codes
come from pools that refill, are idempotent by request id and never overlap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import grpc.aio
import pytest

from jukinet.codes import is_valid_resident_code
from jukinet.v1 import (
    common_pb2,
    delivery_pb2,
    municipal_pb2,
    national_pb2_grpc,
    prefecture_pb2_grpc,
)
from tests.federation import Federation, trailers

TIMEOUT = 15
C = common_pb2
M = municipal_pb2

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
EFFECTIVE = "2025-04-01"
LOW_WATERMARK = 20  # tests/federation.py starts municipalities with these
REFILL = 100

T = TypeVar("T")


def person(i: int = 0, address: str = "鳥取県鳥取市東町1丁目220番地") -> M.PersonDetails:
    """Person number ``i``'s details (distinct names, dates and sexes)."""
    return M.PersonDetails(
        name=f"鳥取 太郎{i}",
        name_kana="トットリ タロウ",
        birth_date=f"19{50 + i % 50:02d}-0{1 + i % 9}-1{i % 10}",
        sex=C.SEX_MALE if i % 2 else C.SEX_FEMALE,
        address=address,
    )


async def eventually(
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    what: str,
    within: float = 30.0,
) -> T:
    """Poll ``probe`` until ``ok`` holds; fail with the last value after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await probe()
        if ok(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached in {within}s; last {value}")
        await asyncio.sleep(0.05)


async def status(fed: Federation, code: str) -> M.GetMunicipalStatusResponse:
    """Municipality ``code``'s status."""
    return await fed.operator(code).GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)


async def national_status(fed: Federation) -> delivery_pb2.GetDeliveryStatusResponse:
    """The national node's delivery status."""
    return await fed.national_operator().GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )


async def prefecture_status(fed: Federation, pref: str) -> delivery_pb2.GetDeliveryStatusResponse:
    """Prefecture ``pref``'s delivery status."""
    return await fed.prefecture_operator(pref).GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )


def cursors(s: delivery_pb2.GetDeliveryStatusResponse) -> dict[str, int]:
    """Origin -> last applied sequence."""
    return {c.origin_code: c.last_sequence for c in s.applied}


async def pool_filled(fed: Federation, code: str) -> int:
    """Wait for the start-up refill; afterwards the pool only changes when used."""
    s = await eventually(
        lambda: status(fed, code), lambda s: s.codes_in_pool >= REFILL, f"{code} pool filled"
    )
    return int(s.codes_in_pool)


async def export_municipal(fed: Federation, code: str) -> list[M.Resident]:
    """Municipality ``code``'s whole register, over several pages."""
    out: list[M.Resident] = []
    async for page in fed.operator(code).ExportResidents(
        M.ExportResidentsRequest(page_size=7), timeout=TIMEOUT
    ):
        out.extend(page.residents)
    return out


async def export_held(
    stub: national_pb2_grpc.NationalServiceAsyncStub
    | prefecture_pb2_grpc.PrefectureServiceAsyncStub,
    municipality: str = "",
) -> list[delivery_pb2.IdentityState]:
    """Every identity an upper tier holds (of ``municipality``), over several pages."""
    out: list[delivery_pb2.IdentityState] = []
    async for page in stub.ExportIdentities(
        delivery_pb2.ExportIdentitiesRequest(municipality_code=municipality, page_size=5),
        timeout=TIMEOUT,
    ):
        out.extend(page.identities)
    return out


STATUS_MAP = {
    M.RESIDENT_STATUS_ACTIVE: C.RECORD_STATUS_ACTIVE,
    M.RESIDENT_STATUS_REMOVED: C.RECORD_STATUS_REMOVED,
}


async def assert_upper_tiers_match(fed: Federation, municipality: str) -> None:
    """Prefecture and national hold the municipal register, record for record,
    and every notification exactly once."""
    local = await export_municipal(fed, municipality)
    want = {r.resident_code: (r.person.name, r.person.address, STATUS_MAP[r.status]) for r in local}
    pref = municipality[:2]
    for stub in (fed.prefecture_operator(pref), fed.national_operator()):
        held = await export_held(stub, municipality)
        current = {
            h.record.resident_code: (h.record.name, h.record.address, h.status)
            for h in held
            if h.status != C.RECORD_STATUS_SUPERSEDED
        }
        assert current == want
        for h in held:
            if h.status == C.RECORD_STATUS_SUPERSEDED:
                assert h.replaced_by in want
    last = (await status(fed, municipality)).last_sequence
    seen: list[int] = []
    for r in local:
        notes = (
            await fed.operator(municipality).GetResident(
                M.GetResidentRequest(resident_code=r.resident_code), timeout=TIMEOUT
            )
        ).notifications
        up = await fed.national_operator().GetIdentity(
            delivery_pb2.GetIdentityRequest(resident_code=r.resident_code), timeout=TIMEOUT
        )
        assert [h.notification for h in up.history] == list(notes)
        seen.extend(h.notification.sequence for h in up.history)
    # Every sequence 1..last applied once, none twice, none lost.
    assert sorted(seen) == list(range(1, last + 1))


# --- the outbox while the next tier is down ------------------------------------------


async def test_outbox_holds_while_the_prefecture_is_down_then_delivers_exactly_once(
    fed: Federation,
) -> None:
    op = fed.operator(TOTTORI)
    await pool_filled(fed, TOTTORI)
    first = await op.RegisterBirth(M.RegisterBirthRequest(person=person(0)), timeout=TIMEOUT)
    await fed.wait_delivered()
    delivered_before = (await status(fed, TOTTORI)).acknowledged_through
    assert delivered_before == 1

    old_port = fed.prefecture_ports["31"]
    await fed.prefectures["31"].stop()

    # The register keeps working while its codes last.
    codes = [first.resident.resident_code]
    for i in range(1, 9):
        born = await op.RegisterBirth(M.RegisterBirthRequest(person=person(i)), timeout=TIMEOUT)
        codes.append(born.resident.resident_code)
    await op.Relocate(
        M.RelocateRequest(
            resident_code=codes[1], new_address="鳥取県鳥取市栄町603番地", effective_date=EFFECTIVE
        ),
        timeout=TIMEOUT,
    )
    await op.ChangeName(
        M.ChangeNameRequest(resident_code=codes[2], name="因幡 花子", effective_date=EFFECTIVE),
        timeout=TIMEOUT,
    )
    await op.RecordDeath(
        M.RecordDeathRequest(resident_code=codes[3], date_of_death="2025-02-02"), timeout=TIMEOUT
    )
    await op.ChangeResidentCode(
        M.ChangeResidentCodeRequest(resident_code=codes[4], effective_date=EFFECTIVE),
        timeout=TIMEOUT,
    )
    pending = await status(fed, TOTTORI)
    assert pending.last_sequence == 13
    assert pending.acknowledged_through == delivered_before < pending.last_sequence

    # Another prefecture's municipalities are not held up meanwhile.
    tokyo = await fed.operator(CHIYODA).RegisterBirth(
        M.RegisterBirthRequest(person=person(1, "東京都千代田区永田町1丁目7番1号")),
        timeout=TIMEOUT,
    )
    await eventually(
        lambda: national_status(fed), lambda s: cursors(s).get(CHIYODA, 0) >= 1, "131016 delivered"
    )
    assert cursors(await national_status(fed)).get(TOTTORI) == 1
    assert (await status(fed, TOTTORI)).acknowledged_through == delivered_before

    # Back on the same port, with its own database.
    await fed.start_prefecture("31", port=old_port)
    assert fed.prefecture_ports["31"] == old_port
    await fed.wait_delivered()

    final = await eventually(
        lambda: status(fed, TOTTORI),
        lambda s: s.acknowledged_through == s.last_sequence,
        "municipal outbox acknowledged",
    )
    assert final.last_sequence == 13
    assert cursors(await national_status(fed))[TOTTORI] == final.last_sequence
    pref = await eventually(
        lambda: prefecture_status(fed, "31"),
        lambda s: s.outbox_acknowledged == s.outbox_last_sequence,
        "prefecture relay acknowledged",
    )
    assert cursors(pref)[TOTTORI] == final.last_sequence
    assert await export_held(fed.national_operator(), CHIYODA)
    assert tokyo.resident.resident_code in {
        h.record.resident_code for h in await export_held(fed.national_operator(), CHIYODA)
    }
    await assert_upper_tiers_match(fed, TOTTORI)


async def test_relay_outbox_holds_while_the_national_node_is_down(fed: Federation) -> None:
    op = fed.operator(YONAGO)
    await pool_filled(fed, YONAGO)
    here = "鳥取県米子市加茂町1丁目1番地"
    await op.RegisterBirth(M.RegisterBirthRequest(person=person(0, here)), timeout=TIMEOUT)
    await fed.wait_delivered()
    assert fed.national is not None
    await fed.national.stop()

    for i in range(1, 6):
        await op.RegisterBirth(M.RegisterBirthRequest(person=person(i, here)), timeout=TIMEOUT)
    # The prefecture takes them and holds them in its relay outbox.
    pref = await eventually(
        lambda: prefecture_status(fed, "31"),
        lambda s: cursors(s).get(YONAGO, 0) == 6,
        "prefecture applied",
    )
    assert pref.outbox_acknowledged < pref.outbox_last_sequence

    await fed.start_national()  # same port, same database
    await fed.wait_delivered()
    assert cursors(await national_status(fed))[YONAGO] == 6
    await eventually(
        lambda: prefecture_status(fed, "31"),
        lambda s: s.outbox_acknowledged == s.outbox_last_sequence,
        "prefecture relay acknowledged",
    )
    await assert_upper_tiers_match(fed, YONAGO)


async def test_empty_pool_with_the_prefecture_down_is_unavailable_and_writes_nothing(
    fed: Federation,
) -> None:
    op = fed.operator(TOTTORI)
    free = await pool_filled(fed, TOTTORI)
    await fed.prefectures["31"].stop()
    # Use up every code there is.
    imported = [
        r
        async for r in op.ImportResidents(
            iter(
                [
                    M.ImportResidentsRequest(
                        rows=[
                            M.ImportRow(line=i + 1, source_id=f"old-{i}", person=person(i))
                            for i in range(free)
                        ]
                    )
                ]
            ),
            timeout=TIMEOUT,
        )
    ]
    assert [(r.imported, r.already_present, len(r.rejected)) for r in imported] == [(free, 0, 0)]
    before = await status(fed, TOTTORI)
    assert before.codes_in_pool == 0
    assert before.last_sequence == free

    needs_a_code: list[Awaitable[object]] = [
        op.RegisterBirth(M.RegisterBirthRequest(person=person(1)), timeout=TIMEOUT),
        op.EnterExOfficio(
            M.EnterExOfficioRequest(person=person(2), effective_date=EFFECTIVE), timeout=TIMEOUT
        ),
        op.MoveIn(
            M.MoveInRequest(
                person=person(3), origin=M.MOVE_IN_ORIGIN_ABROAD, effective_date=EFFECTIVE
            ),
            timeout=TIMEOUT,
        ),
    ]
    for call in needs_a_code:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert trailers(info.value)["jukinet-reason"] == "unavailable"
    after = await status(fed, TOTTORI)
    assert (after.last_sequence, after.active_residents, after.codes_in_pool) == (
        before.last_sequence,
        before.active_residents,
        0,
    )
    # What needs no new code still works.
    some = (await export_municipal(fed, TOTTORI))[0].resident_code
    moved = await op.Relocate(
        M.RelocateRequest(
            resident_code=some, new_address="鳥取県鳥取市栄町603番地", effective_date=EFFECTIVE
        ),
        timeout=TIMEOUT,
    )
    assert moved.last_notification_sequence == before.last_sequence + 1


# --- code pools -------------------------------------------------------------------------


async def test_codes_come_from_the_pool_and_the_pool_refills(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    free = await pool_filled(fed, TOTTORI)
    born = await op.RegisterBirth(M.RegisterBirthRequest(person=person(0)), timeout=TIMEOUT)
    assert is_valid_resident_code(born.resident.resident_code)
    assert (await status(fed, TOTTORI)).codes_in_pool == free - 1

    # Take the pool below its low watermark in one go.
    take = free - 1 - (LOW_WATERMARK // 2)
    async for r in op.ImportResidents(
        iter(
            [
                M.ImportResidentsRequest(
                    rows=[
                        M.ImportRow(line=i + 1, source_id=f"row-{i}", person=person(i))
                        for i in range(take)
                    ]
                )
            ]
        ),
        timeout=TIMEOUT,
    ):
        assert (r.imported, len(r.rejected)) == (take, 0)
    refilled = await eventually(
        lambda: status(fed, TOTTORI),
        lambda s: s.codes_in_pool >= REFILL,
        "pool refilled above the watermark",
    )
    assert refilled.codes_in_pool == LOW_WATERMARK // 2 + REFILL

    # Codes from the old and the new pool alike are accepted upstream, where
    # a fresh code must be in the origin's own pool.
    for i in range(LOW_WATERMARK // 2 + 3):
        await op.RegisterBirth(M.RegisterBirthRequest(person=person(i)), timeout=TIMEOUT)
    await fed.wait_delivered()
    residents = await export_municipal(fed, TOTTORI)
    codes = [r.resident_code for r in residents]
    assert len(codes) == len(set(codes)) == 1 + take + LOW_WATERMARK // 2 + 3
    held = await national_status(fed)
    assert held.identities_held == len(codes)
    await assert_upper_tiers_match(fed, TOTTORI)


async def test_a_repeated_pool_request_returns_the_same_codes(fed: Federation) -> None:
    pref = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{TOTTORI}")
    )

    async def allocate(request_id: str, count: int = 7) -> list[str]:
        response = await pref.AllocateCodePool(
            delivery_pb2.AllocateCodePoolRequest(
                municipality_code=TOTTORI, count=count, request_id=request_id
            ),
            timeout=TIMEOUT,
        )
        return list(response.resident_codes)

    first = await allocate("delivery-pool-0001")
    assert len(first) == len(set(first)) == 7
    assert all(is_valid_resident_code(c) for c in first)
    # A retry (same id) gets the very same codes, whatever count it names.
    assert await allocate("delivery-pool-0001") == first
    assert await allocate("delivery-pool-0001", 3) == first
    # A new id gets new codes.
    second = await allocate("delivery-pool-0002")
    assert not set(first) & set(second)
    # The national node, asked directly by the prefecture, agrees.
    national = national_pb2_grpc.NationalServiceStub(
        fed.channel(fed.national_port, "prefecture-31")
    )
    again = await national.AllocateCodePool(
        delivery_pb2.AllocateCodePoolRequest(
            municipality_code=TOTTORI, count=7, request_id="delivery-pool-0001"
        ),
        timeout=TIMEOUT,
    )
    assert sorted(again.resident_codes) == sorted(first)


async def test_codes_never_repeat_across_municipalities(fed: Federation) -> None:
    addresses = {
        TOTTORI: "鳥取県鳥取市東町1丁目220番地",
        YONAGO: "鳥取県米子市加茂町1丁目1番地",
        CHIYODA: "東京都千代田区永田町1丁目7番1号",
    }
    for code in addresses:
        await pool_filled(fed, code)
    for i in range(5):
        for code, address in addresses.items():
            await fed.operator(code).RegisterBirth(
                M.RegisterBirthRequest(person=person(i, address)), timeout=TIMEOUT
            )
    # Extra pools, straight from each municipality's prefecture.
    pools: dict[str, set[str]] = {}
    for code in addresses:
        stub = prefecture_pb2_grpc.PrefectureServiceStub(
            fed.channel(fed.prefecture_ports[code[:2]], f"municipality-{code}")
        )
        response = await stub.AllocateCodePool(
            delivery_pb2.AllocateCodePoolRequest(
                municipality_code=code, count=500, request_id=f"disjoint-{code}"
            ),
            timeout=TIMEOUT,
        )
        pools[code] = set(response.resident_codes)
        assert len(pools[code]) == 500
    used = {
        code: {r.resident_code for r in await export_municipal(fed, code)} for code in addresses
    }
    everything = [c for s in (*pools.values(), *used.values()) for c in s]
    assert len(everything) == len(set(everything)) == 3 * 500 + 3 * 5
    await fed.wait_delivered()
    held = await export_held(fed.national_operator())
    assert {h.record.resident_code for h in held} == set().union(*used.values())
    for h in held:
        assert h.record.resident_code in used[h.record.local_government_code]


def _import_request(start: int, count: int) -> M.ImportResidentsRequest:
    return M.ImportResidentsRequest(
        rows=[
            M.ImportRow(line=i + 1, source_id=f"old-{i}", person=person(i))
            for i in range(start, start + count)
        ]
    )


async def test_a_pool_request_left_open_is_topped_up_when_an_operation_needs_more(
    fed: Federation,
) -> None:
    # A request for too few codes, left open while the prefecture was away, is
    # sent again as it was; the operation that needs more then asks for the rest.
    op = fed.operator(TOTTORI)
    free = await pool_filled(fed, TOTTORI)
    await fed.prefectures["31"].stop()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in op.ImportResidents(iter([_import_request(0, free + 10)]), timeout=TIMEOUT):
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await fed.start_prefecture("31")
    needed = free + 3 * REFILL
    # The municipality's channel comes back after its reconnect backoff (grown while
    # the prefecture was away): until then the import is refused as before, whole.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            answers = [
                r
                async for r in op.ImportResidents(
                    iter([_import_request(0, needed)]), timeout=TIMEOUT
                )
            ]
            break
        except grpc.aio.AioRpcError as exc:
            late = asyncio.get_running_loop().time() > deadline
            if exc.code() != grpc.StatusCode.UNAVAILABLE or late:
                raise
            await asyncio.sleep(0.5)
    assert [(r.imported, len(r.rejected)) for r in answers] == [(needed, 0)]
    assert (await status(fed, TOTTORI)).active_residents == needed
