"""Bad input is refused with INVALID_ARGUMENT naming the field, and nothing is
written anywhere: not at the municipality, not upstream. The same holds at the
delivery level, where a prefecture checks what a municipality pushes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from jukinet.client import tls_files
from jukinet.codes import new_resident_code, with_check_digit
from jukinet.tls import secure_channel
from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2, prefecture_pb2_grpc
from jukinet.validation import today
from tests.federation import EOF, Federation, trailers

TIMEOUT = 15
C = common_pb2
M = municipal_pb2

TOTTORI = "312011"
YONAGO = "312029"
EFFECTIVE = "2025-04-01"
UNKNOWN_MUNICIPALITY = with_check_digit("31999")  # valid shape, no such body
assert UNKNOWN_MUNICIPALITY == "319996"


def person(**kw: Any) -> M.PersonDetails:
    """A valid person's details, with ``kw`` replacing fields."""
    values: dict[str, Any] = {
        "name": "鳥取 太郎",
        "name_kana": "トットリ タロウ",
        "birth_date": "1988-05-17",
        "sex": C.SEX_MALE,
        "address": "鳥取県鳥取市東町1丁目220番地",
    }
    values.update(kw)
    return M.PersonDetails(**values)


def wrong_check_digit(code: str) -> str:
    """``code`` with its check digit made wrong."""
    return code[:-1] + str((int(code[-1]) + 1) % 10)


async def snapshot(fed: Federation) -> tuple[Any, ...]:
    """Everything a bad request could have touched, in every tier."""
    out: list[Any] = []
    for code in sorted(fed.municipalities):
        s = await fed.operator(code).GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
        out.append((code, s.last_sequence, s.active_residents, s.removed_residents))
    for pref in sorted(fed.prefectures):
        d = await fed.prefecture_operator(pref).GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
        )
        out.append((pref, d.SerializeToString(deterministic=True)))
    d = await fed.national_operator().GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    out.append(("national", d.SerializeToString(deterministic=True)))
    return tuple(out)


@pytest.fixture
async def settled(fed: Federation) -> str:
    """One resident registered and delivered; returns the resident's code."""
    born = await fed.operator(TOTTORI).RegisterBirth(
        M.RegisterBirthRequest(person=person()), timeout=TIMEOUT
    )
    await fed.wait_delivered()
    return born.resident.resident_code


Call = Callable[[Any], Awaitable[Any]]


def operator_cases(code: str) -> list[tuple[str, str, Call]]:
    """(case id, expected jukinet-field, the call) for an operator stub."""
    future = (today() + dt.timedelta(days=1)).isoformat()

    def birth(p: M.PersonDetails) -> Call:
        return lambda op: op.RegisterBirth(M.RegisterBirthRequest(person=p), timeout=TIMEOUT)

    return [
        (
            "move-in-code-check-digit",
            "resident_code",
            lambda op: op.MoveIn(
                M.MoveInRequest(
                    person=person(),
                    origin=M.MOVE_IN_ORIGIN_DOMESTIC,
                    resident_code=wrong_check_digit(new_resident_code()),
                    previous_local_government_code=YONAGO,
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "move-in-from-abroad-code-check-digit",
            "resident_code",
            lambda op: op.MoveIn(
                M.MoveInRequest(
                    person=person(),
                    origin=M.MOVE_IN_ORIGIN_ABROAD,
                    resident_code=wrong_check_digit(new_resident_code()),
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "relocate-code-check-digit",
            "resident_code",
            lambda op: op.Relocate(
                M.RelocateRequest(
                    resident_code=wrong_check_digit(code),
                    new_address="鳥取県鳥取市栄町603番地",
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "move-out-unknown-destination",
            "destination_local_government_code",
            lambda op: op.MoveOut(
                M.MoveOutRequest(
                    resident_code=code,
                    destination_local_government_code=UNKNOWN_MUNICIPALITY,
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "move-out-destination-no-such-prefecture",
            "destination_local_government_code",
            lambda op: op.MoveOut(
                M.MoveOutRequest(
                    resident_code=code,
                    destination_local_government_code="999999",
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "move-out-destination-check-digit",
            "destination_local_government_code",
            lambda op: op.MoveOut(
                M.MoveOutRequest(
                    resident_code=code,
                    destination_local_government_code="312012",
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "move-in-unknown-previous-municipality",
            "previous_local_government_code",
            lambda op: op.MoveIn(
                M.MoveInRequest(
                    person=person(),
                    origin=M.MOVE_IN_ORIGIN_DOMESTIC,
                    resident_code=new_resident_code(),
                    previous_local_government_code=UNKNOWN_MUNICIPALITY,
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        ("birth-in-the-future", "person.birth_date", birth(person(birth_date=future))),
        ("impossible-birth-date", "person.birth_date", birth(person(birth_date="2023-02-30"))),
        ("empty-name", "person.name", birth(person(name=""))),
        ("blank-name", "person.name", birth(person(name="　"))),
        ("oversized-name", "person.name", birth(person(name="鳥" * 101))),
        ("unknown-sex", "person.sex", birth(person(sex=7))),
        ("unset-sex", "person.sex", birth(person(sex=0))),
        ("kana-with-latin-letters", "person.name_kana", birth(person(name_kana="トットリ Taro"))),
        (
            "unknown-move-in-origin",
            "origin",
            lambda op: op.MoveIn(
                M.MoveInRequest(
                    person=person(), origin=M.MoveInOrigin.ValueType(9), effective_date=EFFECTIVE
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "unknown-removal-ground",
            "ground",
            lambda op: op.RemoveExOfficio(
                M.RemoveExOfficioRequest(
                    resident_code=code,
                    ground=M.RemovalGround.ValueType(9),
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "name-change-oversized",
            "name",
            lambda op: op.ChangeName(
                M.ChangeNameRequest(resident_code=code, name="鳥" * 101, effective_date=EFFECTIVE),
                timeout=TIMEOUT,
            ),
        ),
        (
            "name-change-latin-kana",
            "name_kana",
            lambda op: op.ChangeName(
                M.ChangeNameRequest(
                    resident_code=code,
                    name="米子 太郎",
                    name_kana="yonago",
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "amend-impossible-birth-date",
            "person.birth_date",
            lambda op: op.Amend(
                M.AmendRequest(
                    resident_code=code,
                    person=person(birth_date="2023-02-30"),
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "death-in-the-future",
            "date_of_death",
            lambda op: op.RecordDeath(
                M.RecordDeathRequest(resident_code=code, date_of_death=future), timeout=TIMEOUT
            ),
        ),
        # Dates before the person was born (the settled resident: 1988-05-17).
        (
            "death-before-birth",
            "date_of_death",
            lambda op: op.RecordDeath(
                M.RecordDeathRequest(resident_code=code, date_of_death="1950-01-01"),
                timeout=TIMEOUT,
            ),
        ),
        (
            "move-out-before-birth",
            "effective_date",
            lambda op: op.MoveOut(
                M.MoveOutRequest(resident_code=code, abroad=True, effective_date="1950-01-01"),
                timeout=TIMEOUT,
            ),
        ),
        (
            "move-in-before-birth",
            "effective_date",
            lambda op: op.MoveIn(
                M.MoveInRequest(
                    person=person(),
                    origin=M.MOVE_IN_ORIGIN_ABROAD,
                    effective_date="1950-01-01",
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "ex-officio-entry-before-birth",
            "effective_date",
            lambda op: op.EnterExOfficio(
                M.EnterExOfficioRequest(person=person(), effective_date="1950-01-01"),
                timeout=TIMEOUT,
            ),
        ),
        (
            "ex-officio-entry-empty-name",
            "person.name",
            lambda op: op.EnterExOfficio(
                M.EnterExOfficioRequest(person=person(name=""), effective_date=EFFECTIVE),
                timeout=TIMEOUT,
            ),
        ),
    ]


async def test_operator_bad_input_is_refused_and_nothing_is_written(
    fed: Federation, settled: str
) -> None:
    before = await snapshot(fed)
    op = fed.operator(TOTTORI)
    seen = []
    for case, field, call in operator_cases(settled):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(op)
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.details())
        meta = trailers(err)
        assert meta.get("jukinet-field") == field, (case, meta, err.details())
        assert meta.get("jukinet-reason") == "invalid-argument", case
        assert (err.details() or "").startswith(f"{field}: "), (case, err.details())
        seen.append(case)
    assert len(seen) == len(operator_cases(settled))
    # Nothing was written by any of them, at any tier.
    assert await snapshot(fed) == before
    after = await op.GetResident(M.GetResidentRequest(resident_code=settled), timeout=TIMEOUT)
    assert after.resident.status == M.RESIDENT_STATUS_ACTIVE
    assert [n.reason for n in after.notifications] == [C.CHANGE_REASON_BIRTH]


async def test_a_valid_request_after_refusals_takes_the_next_sequence(
    fed: Federation, settled: str
) -> None:
    op = fed.operator(TOTTORI)
    with pytest.raises(grpc.aio.AioRpcError):
        await op.RegisterBirth(
            M.RegisterBirthRequest(person=person(birth_date="2023-02-30")), timeout=TIMEOUT
        )
    born = await op.RegisterBirth(M.RegisterBirthRequest(person=person()), timeout=TIMEOUT)
    # No sequence number was burnt by the refused call: numbering has no gaps.
    assert born.notification_sequence == 2
    await fed.wait_delivered()


# --- at the delivery level ------------------------------------------------------------
#
# These push to prefecture 31 directly with the certificate of municipality
# 312029, whose own node is stopped first: its pusher would otherwise race the
# test for the same (origin, sequence) numbers. Its certificate stays valid,
# so the prefecture sees exactly what a (misbehaving) 312029 node would send.


@pytest.fixture
async def direct(fed: Federation) -> AsyncIterator[prefecture_pb2_grpc.PrefectureServiceAsyncStub]:
    """A PrefectureService stub speaking as municipality 312029, whose node is stopped."""
    await fed.municipalities.pop(YONAGO).stop()
    fed.municipal_ports.pop(YONAGO)
    channel = secure_channel(
        f"127.0.0.1:{fed.prefecture_ports['31']}",
        tls_files(fed.pki_dir, f"municipality-{YONAGO}"),
    )
    try:
        yield prefecture_pb2_grpc.PrefectureServiceStub(channel)
    finally:
        await channel.close(grace=None)


def notification(
    sequence: int,
    code: str,
    reason: C.ChangeReason.ValueType = C.CHANGE_REASON_BIRTH,
    origin: str = YONAGO,
) -> C.Notification:
    """A notification of ``origin`` for resident ``code``."""
    kind = C.CHANGE_KIND_CREATED if reason == C.CHANGE_REASON_BIRTH else C.CHANGE_KIND_AMENDED
    return C.Notification(
        origin_code=origin,
        sequence=sequence,
        kind=kind,
        reason=reason,
        effective_date="2025-06-01",
        recorded_at=dt.datetime.now(dt.UTC).isoformat(),
        record=C.IdentityRecord(
            resident_code=code,
            name="米子 一子",
            name_kana="ヨナゴ カズコ",
            birth_date="2025-06-01",
            sex=C.SEX_FEMALE,
            address="鳥取県米子市加茂町1丁目1番地",
            local_government_code=origin,
        ),
    )


def batch(*entries: tuple[int, C.Notification]) -> delivery_pb2.PushNotificationsRequest:
    """One PushNotifications message of (outbox sequence, notification) entries."""
    return delivery_pb2.PushNotificationsRequest(
        entries=[delivery_pb2.OutboxEntry(outbox_sequence=s, notification=n) for s, n in entries]
    )


async def push(
    stub: prefecture_pb2_grpc.PrefectureServiceAsyncStub,
    request: delivery_pb2.PushNotificationsRequest,
) -> tuple[grpc.StatusCode, dict[str, str], list[delivery_pb2.PushNotificationsResponse]]:
    """One batch on a fresh stream; the final status, trailing metadata and acks."""
    call = stub.PushNotifications(None, timeout=TIMEOUT)
    # No request iterator: reader/writer style, so that a refusal is reported as the server's status
    # (a client still writing when the server ends the call can see INTERNAL).
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.write(request)
        await call.done_writing()
    responses: list[delivery_pb2.PushNotificationsResponse] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        while (r := await call.read()) is not EOF:
            assert isinstance(r, delivery_pb2.PushNotificationsResponse)
            responses.append(r)
    code = await call.code()
    meta = {k: v for k, v in (await call.trailing_metadata() or ()) if isinstance(v, str)}
    return code, meta, responses


async def pool_code(stub: prefecture_pb2_grpc.PrefectureServiceAsyncStub, request_id: str) -> str:
    """A code the prefecture has really handed to 312029."""
    response = await stub.AllocateCodePool(
        delivery_pb2.AllocateCodePoolRequest(
            municipality_code=YONAGO, count=3, request_id=request_id
        ),
        timeout=TIMEOUT,
    )
    return response.resident_codes[0]


async def delivery_status(fed: Federation) -> tuple[bytes, bytes]:
    """The prefecture's and the national node's delivery status, serialized."""
    pref = await fed.prefecture_operator("31").GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    nat = await fed.national_operator().GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    return pref.SerializeToString(deterministic=True), nat.SerializeToString(deterministic=True)


def cursor(status: delivery_pb2.GetDeliveryStatusResponse, origin: str) -> int:
    """The last sequence of ``origin`` in ``status``."""
    return {c.origin_code: c.last_sequence for c in status.applied}.get(origin, 0)


async def test_birth_with_a_code_outside_the_pool_is_refused(
    fed: Federation, direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub
) -> None:
    before = await delivery_status(fed)
    # A valid code (check digit right) that was never handed to 312029.
    code, meta, acks = await push(direct, batch((1, notification(1, new_resident_code()))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-reason"] == "invalid-argument"
    assert meta["jukinet-field"] == "entries[0].notification.record.resident_code"
    assert acks == []
    assert await delivery_status(fed) == before
    # A code from another municipality's pool is no better.
    other = (
        await fed.operator(TOTTORI).RegisterBirth(
            M.RegisterBirthRequest(person=person()), timeout=TIMEOUT
        )
    ).resident.resident_code
    await fed.wait_delivered()
    before = await delivery_status(fed)
    code, meta, acks = await push(direct, batch((1, notification(1, other))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-field"] == "entries[0].notification.record.resident_code"
    assert await delivery_status(fed) == before


async def test_a_bad_entry_refuses_the_whole_batch(
    fed: Federation, direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub
) -> None:
    good = await pool_code(direct, "bad-input-batch-1")
    before = await delivery_status(fed)
    bad = notification(2, good, C.CHANGE_REASON_RELOCATION)
    bad.record.birth_date = "2023-02-30"
    code, meta, acks = await push(direct, batch((1, notification(1, good)), (2, bad)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-field"] == "entries[1].notification.record.birth_date"
    assert acks == []
    # The good first entry was not applied either: all or nothing.
    assert await delivery_status(fed) == before


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda n: setattr(n.record, "resident_code", wrong_check_digit(n.record.resident_code)),
            "record.resident_code",
        ),
        (lambda n: setattr(n.record, "sex", 7), "record.sex"),
        (lambda n: setattr(n.record, "name", ""), "record.name"),
        (lambda n: setattr(n.record, "name", "米" * 101), "record.name"),
        (lambda n: setattr(n.record, "name_kana", "yonago"), "record.name_kana"),
        (lambda n: setattr(n, "reason", 99), "reason"),
        (lambda n: setattr(n, "reason", C.CHANGE_REASON_DEATH), "reason"),
        (lambda n: setattr(n, "sequence", 0), "sequence"),
        (lambda n: setattr(n, "effective_date", "2023-02-30"), "effective_date"),
        (
            lambda n: setattr(n.record, "local_government_code", TOTTORI),
            "record.local_government_code",
        ),
        (
            lambda n: setattr(n, "previous_resident_code", n.record.resident_code),
            "previous_resident_code",
        ),
    ],
    ids=[
        "code-check-digit",
        "sex",
        "empty-name",
        "long-name",
        "latin-kana",
        "unknown-reason",
        "reason-of-another-kind",
        "sequence-zero",
        "impossible-date",
        "record-elsewhere",
        "previous-code-without-code-change",
    ],
)
async def test_malformed_notification_is_refused(
    fed: Federation,
    direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub,
    mutate: Callable[[C.Notification], None],
    field: str,
) -> None:
    n = notification(1, await pool_code(direct, "bad-input-malformed"))
    mutate(n)
    before = await delivery_status(fed)
    code, meta, _ = await push(direct, batch((1, n)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-field"] == f"entries[0].notification.{field}"
    assert await delivery_status(fed) == before


async def test_gap_then_duplicate(
    fed: Federation, direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub
) -> None:
    prefecture = fed.prefecture_operator("31")
    codes = [await pool_code(direct, "bad-input-gap-1"), await pool_code(direct, "bad-input-gap-2")]

    # A gap: sequence 5 when 1 is expected. Refused, with where to resume.
    before = await delivery_status(fed)
    code, meta, acks = await push(direct, batch((5, notification(5, codes[0]))))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert meta["jukinet-reason"] == "sequence-gap"
    assert meta["jukinet-expected-sequence"] == "1"
    assert meta["jukinet-origin"] == YONAGO
    assert acks == []
    assert await delivery_status(fed) == before

    # In order: applied.
    first = batch((1, notification(1, codes[0])))
    code, _, acks = await push(direct, first)
    assert code == grpc.StatusCode.OK
    assert [(a.acknowledged_through, a.applied, a.duplicates) for a in acks] == [(1, 1, 0)]
    status = await prefecture.GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    assert cursor(status, YONAGO) == 1

    # The same again: acknowledged as a duplicate, nothing applied.
    code, _, acks = await push(direct, first)
    assert code == grpc.StatusCode.OK
    assert [(a.acknowledged_through, a.applied, a.duplicates) for a in acks] == [(1, 0, 1)]

    # A gap after progress names the next expected sequence.
    code, meta, _ = await push(direct, batch((3, notification(3, codes[1]))))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert meta["jukinet-expected-sequence"] == "2"

    # A batch that overlaps what was applied: the old part, the same
    # notification again, is a duplicate.
    code, _, acks = await push(
        direct, batch((1, first.entries[0].notification), (2, notification(2, codes[1])))
    )
    assert code == grpc.StatusCode.OK
    assert [(a.acknowledged_through, a.applied, a.duplicates) for a in acks] == [(2, 1, 1)]

    after = await prefecture.GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    assert cursor(after, YONAGO) == 2
    held = await prefecture.GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=codes[0]), timeout=TIMEOUT
    )
    assert len(held.history) == 1

    # Relayed upward exactly once each.
    national = fed.national_operator()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while True:
        nat = await national.GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
        )
        if cursor(nat, YONAGO) >= 2 or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert cursor(nat, YONAGO) == 2
    for c in codes:
        up = await national.GetIdentity(
            delivery_pb2.GetIdentityRequest(resident_code=c), timeout=TIMEOUT
        )
        assert [h.notification.reason for h in up.history] == [C.CHANGE_REASON_BIRTH]


# --- hostile characters -----------------------------------------------------------------

# One sample of each class refused in what a person reads (jukinet.validation).
HOSTILE = {
    "left-to-right-embedding": "\u202a",
    "right-to-left-override": "\u202e",
    "left-to-right-isolate": "\u2066",
    "pop-directional-isolate": "\u2069",
    "right-to-left-mark": "\u200f",
    "zero-width-space": "\u200b",
    "zero-width-joiner": "\u200d",
    "word-joiner": "\u2060",
    "inner-bom": "\ufeff",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "tag-latin-a": "\U000e0041",
    "cancel-tag": "\U000e007f",
    "soft-hyphen": "\u00ad",
    "no-break-space": "\u00a0",
    "hangul-filler": "\u3164",
    "line-feed": "\n",
}

OSAKA = "大阪府大阪市北区梅田1丁目1番1号"
CHIYODA = "131016"


def _hostile_calls(code: str, c: str) -> list[tuple[str, Call]]:
    """(expected field, call) putting ``c`` into each person-read field of each operation."""
    name, kana, address = f"鳥取{c}太郎", f"トットリ{c}タロウ", f"鳥取県鳥取市東町{c}1丁目220番地"

    def birth(**kw: str) -> Call:
        return lambda op: op.RegisterBirth(
            M.RegisterBirthRequest(person=person(**kw)), timeout=TIMEOUT
        )

    def amend(**kw: str) -> Call:
        return lambda op: op.Amend(
            M.AmendRequest(resident_code=code, person=person(**kw), effective_date=EFFECTIVE),
            timeout=TIMEOUT,
        )

    def rename(**kw: str) -> Call:
        values = {"name": "鳥取 次郎", "name_kana": "トットリ ジロウ", **kw}
        return lambda op: op.ChangeName(
            M.ChangeNameRequest(resident_code=code, effective_date=EFFECTIVE, **values),
            timeout=TIMEOUT,
        )

    return [
        ("person.name", birth(name=name)),
        ("person.name_kana", birth(name_kana=kana)),
        ("person.former_surname", birth(former_surname=f"旧{c}姓")),
        ("person.alias", birth(alias=f"Taro{c} Smith")),
        ("person.address", birth(address=address)),
        ("person.name", amend(name=name)),
        ("person.address", amend(address=address)),
        ("name", rename(name=name)),
        ("name_kana", rename(name_kana=kana)),
        ("former_surname", rename(former_surname=f"旧{c}姓")),
        (
            "new_address",
            lambda op: op.Relocate(
                M.RelocateRequest(
                    resident_code=code, new_address=address, effective_date=EFFECTIVE
                ),
                timeout=TIMEOUT,
            ),
        ),
    ]


async def test_hostile_characters_are_refused_in_every_person_read_field(
    fed: Federation, settled: str
) -> None:
    before = await snapshot(fed)
    op = fed.operator(TOTTORI)
    for case, c in HOSTILE.items():
        for field, call in _hostile_calls(settled, c):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(op)
            err = info.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, field, err.details())
            meta = trailers(err)
            assert meta.get("jukinet-field") == field, (case, meta)
            assert meta.get("jukinet-reason") == "invalid-argument", case
            assert f"U+{ord(c):04X}" in (err.details() or ""), (case, err.details())
    # The bulk import refuses such rows by line and field; the good row still loads.
    rows = [
        M.ImportRow(line=2, source_id="hostile-1", person=person(name="鳥取\u202e太郎")),
        M.ImportRow(line=3, source_id="hostile-2", person=person(address="鳥取県鳥取市\u2028東町")),
    ]
    acks = [
        r
        async for r in op.ImportResidents(
            iter([M.ImportResidentsRequest(rows=rows)]), timeout=TIMEOUT
        )
    ]
    assert [(r.line, r.field) for a in acks for r in a.rejected] == [
        (2, "person.name"),
        (3, "person.address"),
    ]
    assert "U+202E" in acks[0].rejected[0].reason
    assert sum(a.imported for a in acks) == 0
    assert await snapshot(fed) == before
    after = await op.GetResident(M.GetResidentRequest(resident_code=settled), timeout=TIMEOUT)
    assert after.resident.person == person()


async def test_hostile_characters_pushed_by_a_node_are_refused_at_the_prefecture(
    fed: Federation, direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub
) -> None:
    code = await pool_code(direct, "bad-input-hostile")
    before = await delivery_status(fed)
    for case, c in HOSTILE.items():
        for field in ("name", "name_kana", "former_surname", "alias", "address"):
            n = notification(1, code)
            setattr(n.record, field, getattr(n.record, field) + c + "ミ")
            status, meta, acks = await push(direct, batch((1, n)))
            assert status == grpc.StatusCode.INVALID_ARGUMENT, (case, field)
            assert meta["jukinet-field"] == f"entries[0].notification.record.{field}", case
            assert acks == []
    assert await delivery_status(fed) == before


# --- register data that contradicts itself ----------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda n: setattr(n.record, "address", OSAKA), "record.address"),
        (lambda n: setattr(n.record, "address", "鳥取県鳥取市東町1丁目220番地"), "record.address"),
        (lambda n: setattr(n.record, "name_kana", "よなご かずこ"), "record.name_kana"),
        (lambda n: setattr(n.record, "name_kana", "ﾖﾅｺﾞ ｶｽﾞｺ"), "record.name_kana"),
    ],
    ids=["osaka-address", "another-municipality", "hiragana-kana", "half-width-kana"],
)
async def test_a_forged_push_that_contradicts_its_origin_is_refused(
    fed: Federation,
    direct: prefecture_pb2_grpc.PrefectureServiceAsyncStub,
    mutate: Callable[[C.Notification], None],
    field: str,
) -> None:
    n = notification(1, await pool_code(direct, "bad-input-contradiction"))
    mutate(n)
    before = await delivery_status(fed)
    code, meta, acks = await push(direct, batch((1, n)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-reason"] == "invalid-argument"
    assert meta["jukinet-field"] == f"entries[0].notification.{field}"
    assert acks == []
    assert await delivery_status(fed) == before


async def test_an_address_outside_the_municipality_is_refused(
    fed: Federation, settled: str
) -> None:
    before = await snapshot(fed)
    chiyoda = fed.operator(CHIYODA)
    tottori = fed.operator(TOTTORI)
    calls: list[tuple[str, Awaitable[Any]]] = [
        (
            "person.address",
            chiyoda.RegisterBirth(
                M.RegisterBirthRequest(person=person(address=OSAKA)), timeout=TIMEOUT
            ),
        ),
        (
            "person.address",
            chiyoda.EnterExOfficio(
                M.EnterExOfficioRequest(
                    person=person(address="鳥取県鳥取市東町1丁目220番地"), effective_date=EFFECTIVE
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "person.address",
            chiyoda.MoveIn(
                M.MoveInRequest(
                    person=person(address=OSAKA),
                    origin=M.MOVE_IN_ORIGIN_ABROAD,
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "new_address",
            tottori.Relocate(
                M.RelocateRequest(
                    resident_code=settled, new_address=OSAKA, effective_date=EFFECTIVE
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            # The municipality without its prefecture is not a full address.
            "new_address",
            tottori.Relocate(
                M.RelocateRequest(
                    resident_code=settled, new_address="鳥取市栄町603番地", effective_date=EFFECTIVE
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "person.address",
            tottori.Amend(
                M.AmendRequest(
                    resident_code=settled,
                    person=person(address="鳥取県米子市加茂町1丁目1番地"),
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
    ]
    for field, call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        meta = trailers(info.value)
        assert (meta["jukinet-field"], meta["jukinet-reason"]) == (field, "invalid-argument")
        assert "is not in municipality" in (info.value.details() or "")
    assert await snapshot(fed) == before


async def test_dates_before_the_current_registration_are_refused(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    entered = await op.MoveIn(
        M.MoveInRequest(person=person(), origin=M.MOVE_IN_ORIGIN_ABROAD, effective_date=EFFECTIVE),
        timeout=TIMEOUT,
    )
    code = entered.resident.resident_code
    await fed.wait_delivered()
    early = "2025-03-31"  # the day before the registration began (born 1988-05-17)
    cases: list[tuple[str, str, str, Call]] = [
        (
            "relocate",
            "effective_date",
            "before-registration",
            lambda op: op.Relocate(
                M.RelocateRequest(
                    resident_code=code, new_address="鳥取県鳥取市栄町603番地", effective_date=early
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "relocate-before-birth",
            "effective_date",
            "invalid-argument",
            lambda op: op.Relocate(
                M.RelocateRequest(
                    resident_code=code,
                    new_address="鳥取県鳥取市栄町603番地",
                    effective_date="1950-01-01",
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "rename",
            "effective_date",
            "before-registration",
            lambda op: op.ChangeName(
                M.ChangeNameRequest(
                    resident_code=code,
                    name="鳥取 次郎",
                    name_kana="トットリ ジロウ",
                    effective_date=early,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "amend",
            "effective_date",
            "before-registration",
            lambda op: op.Amend(
                M.AmendRequest(resident_code=code, person=person(), effective_date=early),
                timeout=TIMEOUT,
            ),
        ),
        (
            "amend-birth-after-registration",
            "person.birth_date",
            "before-registration",
            lambda op: op.Amend(
                M.AmendRequest(
                    resident_code=code,
                    person=person(birth_date="2025-05-01"),
                    effective_date=EFFECTIVE,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "code-change",
            "effective_date",
            "before-registration",
            lambda op: op.ChangeResidentCode(
                M.ChangeResidentCodeRequest(resident_code=code, effective_date=early),
                timeout=TIMEOUT,
            ),
        ),
        (
            "move-out",
            "effective_date",
            "before-registration",
            lambda op: op.MoveOut(
                M.MoveOutRequest(
                    resident_code=code,
                    destination_local_government_code=YONAGO,
                    effective_date=early,
                ),
                timeout=TIMEOUT,
            ),
        ),
        (
            "death",
            "date_of_death",
            "before-registration",
            lambda op: op.RecordDeath(
                M.RecordDeathRequest(resident_code=code, date_of_death=early), timeout=TIMEOUT
            ),
        ),
        (
            "removal",
            "effective_date",
            "before-registration",
            lambda op: op.RemoveExOfficio(
                M.RemoveExOfficioRequest(
                    resident_code=code,
                    ground=M.REMOVAL_GROUND_EX_OFFICIO,
                    effective_date=early,
                ),
                timeout=TIMEOUT,
            ),
        ),
    ]
    before = await snapshot(fed)
    for case, field, reason, call in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(op)
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.details())
        meta = trailers(err)
        assert (meta.get("jukinet-field"), meta.get("jukinet-reason")) == (field, reason), case
    assert await snapshot(fed) == before

    # A return after a move abroad cannot be dated before the removal it follows.
    await op.MoveOut(
        M.MoveOutRequest(resident_code=code, abroad=True, effective_date="2025-05-01"),
        timeout=TIMEOUT,
    )
    await fed.wait_delivered()
    before = await snapshot(fed)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await op.MoveIn(
            M.MoveInRequest(
                person=person(),
                origin=M.MOVE_IN_ORIGIN_ABROAD,
                resident_code=code,
                effective_date="2025-04-15",
            ),
            timeout=TIMEOUT,
        )
    meta = trailers(info.value)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (meta["jukinet-field"], meta["jukinet-reason"]) == (
        "effective_date",
        "before-registration",
    )
    assert await snapshot(fed) == before
    held = await op.GetResident(M.GetResidentRequest(resident_code=code), timeout=TIMEOUT)
    assert held.resident.status == M.RESIDENT_STATUS_REMOVED
