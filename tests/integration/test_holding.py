"""No node acts for a resident it does not hold, over real mutual TLS: a
municipality's key cannot push changes for another municipality's resident,
and disclosure answers only the municipality that registers the resident now
(or registered them last, when nobody registers them now)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from jukinet.client import tls_files
from jukinet.tls import secure_channel
from jukinet.v1 import (
    common_pb2,
    delivery_pb2,
    municipal_pb2,
    national_pb2_grpc,
    prefecture_pb2_grpc,
    provision_pb2,
)
from tests.federation import Federation, move_in, move_out, trailers, until_registered_at
from tests.integration.test_bad_input import batch, pool_code, push

TIMEOUT = 15
C = common_pb2
M = municipal_pb2
P = provision_pb2

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"

KIND = {
    C.CHANGE_REASON_DEATH: C.CHANGE_KIND_REMOVED,
    C.CHANGE_REASON_MOVE_OUT: C.CHANGE_KIND_REMOVED,
    C.CHANGE_REASON_RELOCATION: C.CHANGE_KIND_AMENDED,
    C.CHANGE_REASON_NAME_CHANGE: C.CHANGE_KIND_AMENDED,
    C.CHANGE_REASON_CODE_CHANGE: C.CHANGE_KIND_AMENDED,
}


ADDRESSES = {
    TOTTORI: "鳥取県鳥取市東町1丁目220番地",
    YONAGO: "鳥取県米子市加茂町1丁目1番地",
    CHIYODA: "東京都千代田区丸の内1丁目1番1号",
}


def person(municipality: str = TOTTORI, name: str = "鳥取 花子") -> M.PersonDetails:
    """A valid person's details, living in ``municipality``."""
    return M.PersonDetails(
        name=name,
        name_kana="トットリ ハナコ",
        birth_date="1980-02-03",
        sex=C.SEX_FEMALE,
        address=ADDRESSES[municipality],
    )


def forged(
    reason: C.ChangeReason.ValueType, code: str, new_code: str = "", sequence: int = 1
) -> C.Notification:
    """A change by 312029 for ``code``, with a name of the sender's choosing."""
    n = C.Notification(
        origin_code=YONAGO,
        sequence=sequence,
        kind=KIND[reason],
        reason=reason,
        effective_date="2025-06-01",
        recorded_at=dt.datetime.now(dt.UTC).isoformat(),
        record=C.IdentityRecord(
            resident_code=new_code or code,
            name="偽物 太郎",
            name_kana="ニセモノ タロウ",
            birth_date="1980-02-03",
            sex=C.SEX_MALE,
            address="鳥取県米子市加茂町1丁目1番地",
            local_government_code=YONAGO,
        ),
    )
    if new_code:
        n.previous_resident_code = code
    return n


async def born(fed: Federation, municipality: str) -> str:
    """A resident born at ``municipality`` and delivered to every tier."""
    r = await fed.operator(municipality).RegisterBirth(
        M.RegisterBirthRequest(person=person(municipality)), timeout=TIMEOUT
    )
    await fed.wait_delivered()
    return r.resident.resident_code


async def held(stub: Any, code: str) -> bytes:
    """An upper tier's record of ``code`` with its history, or a marker if none."""
    try:
        r = await stub.GetIdentity(delivery_pb2.GetIdentityRequest(resident_code=code), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return str(exc.code()).encode()
    return bytes(r.SerializeToString(deterministic=True))


async def upper_tiers(fed: Federation, codes: list[str]) -> tuple[bytes, ...]:
    """Records, histories and delivery status (outboxes included) at every upper tier."""
    out: list[bytes] = []
    stubs: list[Any] = [fed.prefecture_operator(p) for p in sorted(fed.prefectures)]
    stubs.append(fed.national_operator())
    for stub in stubs:
        status = await stub.GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
        )
        out.append(status.SerializeToString(deterministic=True))
        for code in codes:
            out.append(await held(stub, code))
    return tuple(out)


@pytest.fixture
async def yonago_key(
    fed: Federation,
) -> AsyncIterator[prefecture_pb2_grpc.PrefectureServiceAsyncStub]:
    """Prefecture 31 as municipality 312029 speaks to it (its own node stopped)."""
    await fed.municipalities.pop(YONAGO).stop()
    fed.municipal_ports.pop(YONAGO)
    channel = secure_channel(
        f"127.0.0.1:{fed.prefecture_ports['31']}", tls_files(fed.pki_dir, f"municipality-{YONAGO}")
    )
    try:
        yield prefecture_pb2_grpc.PrefectureServiceStub(channel)
    finally:
        await channel.close(grace=None)


# --- hole: a notification for a resident its sender does not hold -------------------


async def test_a_municipal_key_cannot_change_another_municipalitys_resident(
    fed: Federation, yonago_key: prefecture_pb2_grpc.PrefectureServiceAsyncStub
) -> None:
    same_prefecture = await born(fed, TOTTORI)
    other_prefecture = await born(fed, CHIYODA)
    new_code = await pool_code(yonago_key, "holding-code-change")
    victims = [same_prefecture, other_prefecture]
    before = await upper_tiers(fed, [*victims, new_code])
    for victim in victims:
        for n in (
            forged(C.CHANGE_REASON_DEATH, victim),
            forged(C.CHANGE_REASON_MOVE_OUT, victim),
            forged(C.CHANGE_REASON_RELOCATION, victim),
            forged(C.CHANGE_REASON_NAME_CHANGE, victim),
            forged(C.CHANGE_REASON_CODE_CHANGE, victim, new_code=new_code),
        ):
            code, meta, acks = await push(yonago_key, batch((1, n)))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (victim, n.reason)
            assert meta["jukinet-reason"] == "not-held"
            assert acks == []
    assert await upper_tiers(fed, [*victims, new_code]) == before
    # 312029's own changes still go through on the same numbering.
    own = forged(C.CHANGE_REASON_RELOCATION, new_code)
    own.kind, own.reason = C.CHANGE_KIND_CREATED, C.CHANGE_REASON_BIRTH
    code, _, acks = await push(yonago_key, batch((1, own)))
    assert code == grpc.StatusCode.OK
    assert [a.applied for a in acks] == [1]


async def test_the_national_node_refuses_it_too(fed: Federation) -> None:
    victim = await born(fed, CHIYODA)
    before = await upper_tiers(fed, [victim])
    channel = secure_channel(
        f"127.0.0.1:{fed.national_port}", tls_files(fed.pki_dir, "prefecture-31")
    )
    try:
        stub = national_pb2_grpc.NationalServiceStub(channel)
        code, meta, acks = await push(stub, batch((1, forged(C.CHANGE_REASON_DEATH, victim))))  # type: ignore[arg-type]
    finally:
        await channel.close(grace=None)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert meta["jukinet-reason"] == "not-held"
    assert acks == []
    assert await upper_tiers(fed, [victim]) == before


async def test_a_late_move_out_of_the_old_municipality_is_still_accepted(fed: Federation) -> None:
    code = await born(fed, TOTTORI)
    await fed.prefectures["31"].stop()
    certificate = await move_out(fed, code, TOTTORI, YONAGO, effective_date="2025-05-01")
    # 312011's move-out waits in its outbox while the move-in at 312029 arrives first.
    await fed.municipalities[TOTTORI].stop()
    await fed.start_prefecture("31")
    await move_in(fed, certificate, YONAGO, address=ADDRESSES[YONAGO], effective_date="2025-05-01")
    for stub in (fed.prefecture_operator("31"), fed.national_operator()):
        await until_registered_at(stub, code, YONAGO)
    await fed.start_municipality(TOTTORI)
    await fed.wait_delivered()
    for stub in (fed.prefecture_operator("31"), fed.national_operator()):
        r = await stub.GetIdentity(delivery_pb2.GetIdentityRequest(resident_code=code), timeout=5)
        assert (r.identity.record.local_government_code, r.identity.status) == (
            YONAGO,
            C.RECORD_STATUS_ACTIVE,
        )
        reasons = [(h.notification.reason, h.changed_current) for h in r.history]
        assert (C.CHANGE_REASON_MOVE_OUT, False) in reasons


# --- hole: disclosure without an object-level check ----------------------------------


def disclose_request(code: str, municipality: str = "") -> P.DiscloseRequest:
    """A disclosure request for ``code``."""
    return P.DiscloseRequest(resident_code=code, municipality_code=municipality)


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status and reason a refused call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), trailers(info.value).get("jukinet-reason", "")


async def test_disclosure_at_the_prefecture_only_for_its_own_resident(fed: Federation) -> None:
    tokyo = await born(fed, CHIYODA)
    tottori = await born(fed, TOTTORI)
    before = await upper_tiers(fed, [tokyo, tottori])
    as_yonago = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{YONAGO}")
    )
    as_tottori = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{TOTTORI}")
    )
    # Another municipality's resident, same prefecture and other prefecture.
    for code in (tottori, tokyo):
        got = await refused(as_yonago.Disclose(disclose_request(code), timeout=TIMEOUT))
        assert got == (grpc.StatusCode.PERMISSION_DENIED, "not-held")
    # Naming the holder instead of itself does not help.
    got = await refused(as_yonago.Disclose(disclose_request(tottori, TOTTORI), timeout=TIMEOUT))
    assert got == (grpc.StatusCode.PERMISSION_DENIED, "foreign-origin")
    ok = await as_tottori.Disclose(disclose_request(tottori), timeout=TIMEOUT)
    assert ok.identity.record.resident_code == tottori
    assert await upper_tiers(fed, [tokyo, tottori]) == before


async def test_disclosure_at_the_national_node_checks_the_named_municipality(
    fed: Federation,
) -> None:
    tokyo = await born(fed, CHIYODA)
    tottori = await born(fed, TOTTORI)
    before = await upper_tiers(fed, [tokyo, tottori])
    channel = fed.channel(fed.national_port, "prefecture-31")
    stub = national_pb2_grpc.NationalServiceStub(channel)
    cases = [
        (disclose_request(tottori, YONAGO), grpc.StatusCode.PERMISSION_DENIED, "not-held"),
        (disclose_request(tokyo, TOTTORI), grpc.StatusCode.PERMISSION_DENIED, "not-held"),
        (disclose_request(tokyo, CHIYODA), grpc.StatusCode.PERMISSION_DENIED, "foreign-origin"),
        (disclose_request(tokyo), grpc.StatusCode.INVALID_ARGUMENT, "invalid-argument"),
        (disclose_request(tottori), grpc.StatusCode.INVALID_ARGUMENT, "invalid-argument"),
    ]
    for request, status, reason in cases:
        assert await refused(stub.Disclose(request, timeout=TIMEOUT)) == (status, reason)
    ok = await stub.Disclose(disclose_request(tottori, TOTTORI), timeout=TIMEOUT)
    assert ok.identity.record.local_government_code == TOTTORI
    assert await upper_tiers(fed, [tokyo, tottori]) == before


async def test_the_municipal_node_discloses_only_residents_of_its_register(
    fed: Federation,
) -> None:
    tokyo = await born(fed, CHIYODA)
    got = await refused(
        fed.operator(TOTTORI).DiscloseProvisions(disclose_request(tokyo), timeout=TIMEOUT)
    )
    assert got == (grpc.StatusCode.NOT_FOUND, "not-found")
    got = await refused(
        fed.operator(CHIYODA).DiscloseProvisions(disclose_request(tokyo, TOTTORI), timeout=TIMEOUT)
    )
    assert got == (grpc.StatusCode.PERMISSION_DENIED, "foreign-origin")


async def test_after_a_move_only_the_new_municipality_and_after_a_death_the_last(
    fed: Federation,
) -> None:
    code = await born(fed, TOTTORI)
    certificate = await move_out(fed, code, TOTTORI, YONAGO, effective_date="2025-05-01")
    await fed.wait_delivered()
    # Moved out, not registered anywhere yet: 312011 registered them last.
    ok = await fed.operator(TOTTORI).DiscloseProvisions(disclose_request(code), timeout=TIMEOUT)
    assert ok.identity.status == C.RECORD_STATUS_REMOVED
    await move_in(fed, certificate, YONAGO, address=ADDRESSES[YONAGO], effective_date="2025-05-01")
    await fed.wait_delivered()
    got = await refused(
        fed.operator(TOTTORI).DiscloseProvisions(disclose_request(code), timeout=TIMEOUT)
    )
    assert got == (grpc.StatusCode.PERMISSION_DENIED, "not-held")
    ok = await fed.operator(YONAGO).DiscloseProvisions(disclose_request(code), timeout=TIMEOUT)
    assert ok.identity.record.local_government_code == YONAGO
    await fed.operator(YONAGO).RecordDeath(
        M.RecordDeathRequest(resident_code=code, date_of_death="2025-06-01"), timeout=TIMEOUT
    )
    await fed.wait_delivered()
    ok = await fed.operator(YONAGO).DiscloseProvisions(disclose_request(code), timeout=TIMEOUT)
    assert ok.identity.status == C.RECORD_STATUS_REMOVED
