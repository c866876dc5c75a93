"""Every municipal operation end to end: the operator's call, the municipal
register, delivery through the prefecture, and what the prefecture and the
national node then hold (state, record, history in order)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2
from tests.federation import Federation, move_out, trailers, until_registered_at

TIMEOUT = 15
C = common_pb2
M = municipal_pb2

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
ADDRESS = {
    TOTTORI: "鳥取県鳥取市東町1丁目220番地",
    YONAGO: "鳥取県米子市加茂町1丁目1番地",
    CHIYODA: "東京都千代田区永田町1丁目7番1号",
}
PREFECTURE = {TOTTORI: "31", YONAGO: "31", CHIYODA: "13"}
EFFECTIVE = "2025-04-01"


def person(
    name: str = "鳥取 太郎",
    kana: str = "トットリ タロウ",
    *,
    birth_date: str = "1988-05-17",
    sex: C.Sex.ValueType = C.SEX_MALE,
    address: str = ADDRESS[TOTTORI],
    former_surname: str = "",
    alias: str = "",
) -> M.PersonDetails:
    """A person's details, living in Tottori unless told otherwise."""
    return M.PersonDetails(
        name=name,
        name_kana=kana,
        former_surname=former_surname,
        alias=alias,
        birth_date=birth_date,
        sex=sex,
        address=address,
    )


async def national(fed: Federation, code: str) -> delivery_pb2.GetIdentityResponse:
    """What the national node holds of resident ``code``."""
    return await fed.national_operator().GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=code), timeout=TIMEOUT
    )


async def prefecture(fed: Federation, pref: str, code: str) -> delivery_pb2.GetIdentityResponse:
    """What prefecture ``pref`` holds of resident ``code``."""
    return await fed.prefecture_operator(pref).GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=code), timeout=TIMEOUT
    )


async def both_tiers(
    fed: Federation, pref: str, code: str
) -> list[delivery_pb2.GetIdentityResponse]:
    """What the prefecture and the national node hold of ``code``, in that order."""
    return [await prefecture(fed, pref, code), await national(fed, code)]


def reasons(held: delivery_pb2.GetIdentityResponse) -> list[int]:
    """The reasons of the held history, in order."""
    return [h.notification.reason for h in held.history]


def changed(held: delivery_pb2.GetIdentityResponse) -> list[bool]:
    """Whether each history entry changed the current record, in order."""
    return [h.changed_current for h in held.history]


def assert_record(
    record: C.IdentityRecord, code: str, details: M.PersonDetails, municipality: str
) -> None:
    """``record`` is ``details`` of resident ``code`` living in ``municipality``."""
    assert record.resident_code == code
    assert record.name == details.name
    assert record.name_kana == details.name_kana
    assert record.former_surname == details.former_surname
    assert record.alias == details.alias
    assert record.birth_date == details.birth_date
    assert record.sex == details.sex
    assert record.address == details.address
    assert record.local_government_code == municipality


async def birth(
    fed: Federation,
    municipality: str = TOTTORI,
    details: M.PersonDetails | None = None,
    household_id: str = "",
) -> M.RegisterBirthResponse:
    """Register a birth at ``municipality`` (into ``household_id``, or a new household)."""
    details = details or person(address=ADDRESS[municipality])
    return await fed.operator(municipality).RegisterBirth(
        M.RegisterBirthRequest(person=details, household_id=household_id), timeout=TIMEOUT
    )


async def resident(fed: Federation, municipality: str, code: str) -> M.GetResidentResponse:
    """Resident ``code`` as ``municipality`` holds them."""
    return await fed.operator(municipality).GetResident(
        M.GetResidentRequest(resident_code=code), timeout=TIMEOUT
    )


# --- creations ------------------------------------------------------------------------


async def test_birth(fed: Federation) -> None:
    details = person("鳥取 花子", "トットリ ハナコ", birth_date="2025-10-03", sex=C.SEX_FEMALE)
    born = await birth(fed, details=details)
    code = born.resident.resident_code
    assert born.notification_sequence == 1
    assert born.resident.status == M.RESIDENT_STATUS_ACTIVE
    assert born.resident.registered_on == "2025-10-03"
    assert born.resident.last_reason == C.CHANGE_REASON_BIRTH
    assert born.resident.household_id
    await fed.wait_delivered()

    for held in await both_tiers(fed, "31", code):
        assert held.identity.status == C.RECORD_STATUS_ACTIVE
        assert held.identity.replaced_by == ""
        assert_record(held.identity.record, code, details, TOTTORI)
        assert reasons(held) == [C.CHANGE_REASON_BIRTH]
        assert changed(held) == [True]
        n = held.history[0].notification
        assert (n.origin_code, n.sequence, n.kind) == (TOTTORI, 1, C.CHANGE_KIND_CREATED)
        assert n.effective_date == "2025-10-03"
    # Another prefecture holds nothing of it.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await prefecture(fed, "13", code)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailers(info.value)["jukinet-reason"] == "not-found"
    local = await resident(fed, TOTTORI, code)
    assert [n.reason for n in local.notifications] == [C.CHANGE_REASON_BIRTH]
    # The upper tiers hold exactly what the municipality announced.
    assert (await national(fed, code)).history[0].notification == local.notifications[0]
    status = await fed.operator(TOTTORI).GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    assert (status.last_sequence, status.active_residents, status.removed_residents) == (1, 1, 0)


async def test_move_in_from_abroad_without_a_code_gets_a_new_one(fed: Federation) -> None:
    details = person("ミラー ジョン", "ミラー ジョン", alias="見良 譲", birth_date="1979-02-11")
    moved = await fed.operator(TOTTORI).MoveIn(
        M.MoveInRequest(person=details, origin=M.MOVE_IN_ORIGIN_ABROAD, effective_date=EFFECTIVE),
        timeout=TIMEOUT,
    )
    code = moved.resident.resident_code
    assert len(code) == 11
    assert moved.resident.last_reason == C.CHANGE_REASON_MOVE_IN_FROM_ABROAD
    await fed.wait_delivered()
    for held in await both_tiers(fed, "31", code):
        assert held.identity.status == C.RECORD_STATUS_ACTIVE
        assert_record(held.identity.record, code, details, TOTTORI)
        assert reasons(held) == [C.CHANGE_REASON_MOVE_IN_FROM_ABROAD]
        assert held.history[0].notification.effective_date == EFFECTIVE


@pytest.mark.parametrize("returns_to", [TOTTORI, CHIYODA])
async def test_move_in_from_abroad_with_a_former_code_keeps_it(
    fed: Federation, returns_to: str
) -> None:
    code = (await birth(fed)).resident.resident_code
    gone = await fed.operator(TOTTORI).MoveOut(
        M.MoveOutRequest(resident_code=code, abroad=True, effective_date="2024-03-01"),
        timeout=TIMEOUT,
    )
    assert gone.resident.status == M.RESIDENT_STATUS_REMOVED
    await fed.wait_delivered()
    assert (await national(fed, code)).identity.status == C.RECORD_STATUS_REMOVED

    details = person(address=ADDRESS[returns_to])
    back = await fed.operator(returns_to).MoveIn(
        M.MoveInRequest(
            person=details,
            origin=M.MOVE_IN_ORIGIN_ABROAD,
            resident_code=code,
            effective_date=EFFECTIVE,
        ),
        timeout=TIMEOUT,
    )
    assert back.resident.resident_code == code
    assert back.resident.status == M.RESIDENT_STATUS_ACTIVE
    await fed.wait_delivered()

    held = await national(fed, code)
    assert held.identity.status == C.RECORD_STATUS_ACTIVE
    assert_record(held.identity.record, code, details, returns_to)
    assert reasons(held) == [
        C.CHANGE_REASON_BIRTH,
        C.CHANGE_REASON_MOVE_ABROAD,
        C.CHANGE_REASON_MOVE_IN_FROM_ABROAD,
    ]
    assert changed(held) == [True, True, True]
    at_home = await prefecture(fed, PREFECTURE[returns_to], code)
    assert at_home.identity.status == C.RECORD_STATUS_ACTIVE
    assert at_home.identity.record.local_government_code == returns_to
    if returns_to == TOTTORI:
        # The old entry is reopened, not duplicated.
        status = await fed.operator(TOTTORI).GetStatus(
            M.GetMunicipalStatusRequest(), timeout=TIMEOUT
        )
        assert (status.active_residents, status.removed_residents) == (1, 0)
        assert [n.reason for n in (await resident(fed, TOTTORI, code)).notifications] == reasons(
            held
        )
    else:
        left = await prefecture(fed, "31", code)
        assert left.identity.status == C.RECORD_STATUS_REMOVED
        assert reasons(left) == [C.CHANGE_REASON_BIRTH, C.CHANGE_REASON_MOVE_ABROAD]


async def test_ex_officio_entry_then_amendment(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    details = person("髙橋 一郎", "タカハシ イチロウ", birth_date="1950-01-20")
    entered = await op.EnterExOfficio(
        M.EnterExOfficioRequest(person=details, effective_date=EFFECTIVE), timeout=TIMEOUT
    )
    code = entered.resident.resident_code
    assert entered.resident.last_reason == C.CHANGE_REASON_EX_OFFICIO_ENTRY
    corrected = person("高橋 一郎", "タカハシ イチロウ", birth_date="1950-01-21")
    amended = await op.Amend(
        M.AmendRequest(resident_code=code, person=corrected, effective_date="2025-05-01"),
        timeout=TIMEOUT,
    )
    assert amended.resident.person == corrected
    assert amended.notification_sequence == entered.notification_sequence + 1
    await fed.wait_delivered()
    for held in await both_tiers(fed, "31", code):
        assert held.identity.status == C.RECORD_STATUS_ACTIVE
        assert_record(held.identity.record, code, corrected, TOTTORI)
        assert reasons(held) == [
            C.CHANGE_REASON_EX_OFFICIO_ENTRY,
            C.CHANGE_REASON_EX_OFFICIO_AMENDMENT,
        ]
        assert [h.notification.kind for h in held.history] == [
            C.CHANGE_KIND_CREATED,
            C.CHANGE_KIND_AMENDED,
        ]
        assert changed(held) == [True, True]


@pytest.mark.parametrize(
    ("ground", "reason"),
    [
        (M.REMOVAL_GROUND_EX_OFFICIO, C.CHANGE_REASON_EX_OFFICIO_REMOVAL),
        (M.REMOVAL_GROUND_DECLARED_MISSING, C.CHANGE_REASON_DECLARED_MISSING),
    ],
)
async def test_ex_officio_removal(
    fed: Federation, ground: M.RemovalGround.ValueType, reason: C.ChangeReason.ValueType
) -> None:
    op = fed.operator(TOTTORI)
    details = person()
    code = (
        await op.EnterExOfficio(
            M.EnterExOfficioRequest(person=details, effective_date="2020-01-01"), timeout=TIMEOUT
        )
    ).resident.resident_code
    removed = await op.RemoveExOfficio(
        M.RemoveExOfficioRequest(
            resident_code=code,
            ground=ground,
            effective_date=EFFECTIVE,
        ),
        timeout=TIMEOUT,
    )
    assert removed.resident.status == M.RESIDENT_STATUS_REMOVED
    assert removed.resident.removed_on == EFFECTIVE
    assert removed.resident.last_reason == reason
    await fed.wait_delivered()
    for held in await both_tiers(fed, "31", code):
        assert held.identity.status == C.RECORD_STATUS_REMOVED
        assert_record(held.identity.record, code, details, TOTTORI)
        assert reasons(held) == [C.CHANGE_REASON_EX_OFFICIO_ENTRY, reason]
        assert held.history[-1].notification.kind == C.CHANGE_KIND_REMOVED
        assert changed(held) == [True, True]
    # A removed entry cannot be changed again.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await op.RemoveExOfficio(
            M.RemoveExOfficioRequest(resident_code=code, ground=ground, effective_date=EFFECTIVE),
            timeout=TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- amendments -----------------------------------------------------------------------


async def test_relocation_of_one_member(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    parent = await birth(fed)
    household = parent.resident.household_id
    child = await birth(
        fed,
        details=person("鳥取 次郎", "トットリ ジロウ", birth_date="2015-07-07"),
        household_id=household,
    )
    assert child.resident.household_id == household
    new_address = "鳥取県鳥取市栄町603番地"
    moved = await op.Relocate(
        M.RelocateRequest(
            resident_code=child.resident.resident_code,
            new_address=new_address,
            effective_date=EFFECTIVE,
        ),
        timeout=TIMEOUT,
    )
    assert [r.resident_code for r in moved.residents] == [child.resident.resident_code]
    assert moved.residents[0].person.address == new_address
    assert moved.last_notification_sequence == 3
    await fed.wait_delivered()
    for held in await both_tiers(fed, "31", child.resident.resident_code):
        assert held.identity.record.address == new_address
        assert held.identity.status == C.RECORD_STATUS_ACTIVE
        assert reasons(held) == [C.CHANGE_REASON_BIRTH, C.CHANGE_REASON_RELOCATION]
    for held in await both_tiers(fed, "31", parent.resident.resident_code):
        assert held.identity.record.address == ADDRESS[TOTTORI]
        assert reasons(held) == [C.CHANGE_REASON_BIRTH]


async def test_relocation_of_a_whole_household(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    first = await birth(fed)
    household = first.resident.household_id
    second = await birth(
        fed,
        details=person("鳥取 良子", "トットリ ヨシコ", birth_date="1990-12-24", sex=C.SEX_FEMALE),
        household_id=household,
    )
    third = await birth(
        fed,
        details=person("鳥取 三郎", "トットリ サブロウ", birth_date="2018-03-03"),
        household_id=household,
    )
    outsider = await birth(fed, details=person("因幡 白兎", "イナバ ハクト"))
    new_address = "鳥取県鳥取市湖山町南4丁目101番地"
    moved = await op.Relocate(
        M.RelocateRequest(
            resident_code=second.resident.resident_code,
            new_address=new_address,
            effective_date=EFFECTIVE,
            whole_household=True,
        ),
        timeout=TIMEOUT,
    )
    members = [first, second, third]
    assert sorted(r.resident_code for r in moved.residents) == sorted(
        m.resident.resident_code for m in members
    )
    assert all(r.person.address == new_address for r in moved.residents)
    assert moved.last_notification_sequence == 7
    await fed.wait_delivered()
    for m in members:
        for held in await both_tiers(fed, "31", m.resident.resident_code):
            assert held.identity.record.address == new_address
            assert reasons(held) == [C.CHANGE_REASON_BIRTH, C.CHANGE_REASON_RELOCATION]
    for held in await both_tiers(fed, "31", outsider.resident.resident_code):
        assert held.identity.record.address == ADDRESS[TOTTORI]
        assert reasons(held) == [C.CHANGE_REASON_BIRTH]


async def test_name_change(fed: Federation) -> None:
    details = person("鳥取 花子", "トットリ ハナコ", birth_date="1992-08-08", sex=C.SEX_FEMALE)
    code = (await birth(fed, details=details)).resident.resident_code
    changed_name = await fed.operator(TOTTORI).ChangeName(
        M.ChangeNameRequest(
            resident_code=code,
            name="米子 花子",
            name_kana="ヨナゴ ハナコ",
            former_surname="鳥取",
            effective_date=EFFECTIVE,
        ),
        timeout=TIMEOUT,
    )
    assert changed_name.resident.person.name == "米子 花子"
    assert changed_name.resident.last_reason == C.CHANGE_REASON_NAME_CHANGE
    await fed.wait_delivered()
    after = person(
        "米子 花子",
        "ヨナゴ ハナコ",
        birth_date="1992-08-08",
        sex=C.SEX_FEMALE,
        former_surname="鳥取",
    )
    for held in await both_tiers(fed, "31", code):
        assert held.identity.status == C.RECORD_STATUS_ACTIVE
        assert_record(held.identity.record, code, after, TOTTORI)
        assert reasons(held) == [C.CHANGE_REASON_BIRTH, C.CHANGE_REASON_NAME_CHANGE]
        assert held.history[0].notification.record.name == "鳥取 花子"
        assert changed(held) == [True, True]


# --- removals -------------------------------------------------------------------------


async def test_move_out(fed: Federation) -> None:
    details = person()
    code = (await birth(fed, details=details)).resident.resident_code
    out = await fed.operator(TOTTORI).MoveOut(
        M.MoveOutRequest(
            resident_code=code,
            destination_local_government_code=CHIYODA,
            effective_date=EFFECTIVE,
        ),
        timeout=TIMEOUT,
    )
    assert out.resident.status == M.RESIDENT_STATUS_REMOVED
    assert out.resident.removed_on == EFFECTIVE
    assert out.resident.last_reason == C.CHANGE_REASON_MOVE_OUT
    await fed.wait_delivered()
    for held in await both_tiers(fed, "31", code):
        assert held.identity.status == C.RECORD_STATUS_REMOVED
        assert_record(held.identity.record, code, details, TOTTORI)
        assert reasons(held) == [C.CHANGE_REASON_BIRTH, C.CHANGE_REASON_MOVE_OUT]
        assert held.history[1].notification.effective_date == EFFECTIVE
    status = await fed.operator(TOTTORI).GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    assert (status.active_residents, status.removed_residents) == (0, 1)
    # The removed entry is kept and still readable at the municipality.
    kept = await resident(fed, TOTTORI, code)
    assert kept.resident.status == M.RESIDENT_STATUS_REMOVED


async def test_death(fed: Federation) -> None:
    details = person(birth_date="1931-11-03")
    code = (await birth(fed, details=details)).resident.resident_code
    died = await fed.operator(TOTTORI).RecordDeath(
        M.RecordDeathRequest(resident_code=code, date_of_death="2025-01-15"), timeout=TIMEOUT
    )
    assert died.resident.status == M.RESIDENT_STATUS_REMOVED
    assert died.resident.removed_on == "2025-01-15"
    await fed.wait_delivered()
    for held in await both_tiers(fed, "31", code):
        assert held.identity.status == C.RECORD_STATUS_REMOVED
        assert_record(held.identity.record, code, details, TOTTORI)
        assert reasons(held) == [C.CHANGE_REASON_BIRTH, C.CHANGE_REASON_DEATH]
        assert held.history[1].notification.effective_date == "2025-01-15"
        assert held.history[1].notification.kind == C.CHANGE_KIND_REMOVED


# --- resident-code change -------------------------------------------------------------


@pytest.mark.parametrize("ex_officio", [False, True])
async def test_resident_code_change(fed: Federation, ex_officio: bool) -> None:
    op = fed.operator(TOTTORI)
    details = person()
    old = (await birth(fed, details=details)).resident.resident_code
    changed_code = await op.ChangeResidentCode(
        M.ChangeResidentCodeRequest(
            resident_code=old, ex_officio=ex_officio, effective_date=EFFECTIVE
        ),
        timeout=TIMEOUT,
    )
    new = changed_code.resident.resident_code
    assert changed_code.previous_resident_code == old
    assert new != old
    assert changed_code.resident.last_reason == C.CHANGE_REASON_CODE_CHANGE
    await fed.wait_delivered()

    lookups: list[Callable[[str], Awaitable[delivery_pb2.GetIdentityResponse]]] = [
        lambda c: prefecture(fed, "31", c),
        lambda c: national(fed, c),
    ]
    for pref_or_national in lookups:
        was = await pref_or_national(old)
        assert was.identity.status == C.RECORD_STATUS_SUPERSEDED
        assert was.identity.replaced_by == new
        now = await pref_or_national(new)
        assert now.identity.status == C.RECORD_STATUS_ACTIVE
        assert now.identity.replaced_by == ""
        assert_record(now.identity.record, new, details, TOTTORI)
        # Either code shows the whole life.
        for held in (was, now):
            assert reasons(held) == [C.CHANGE_REASON_BIRTH, C.CHANGE_REASON_CODE_CHANGE]
            assert [h.notification.record.resident_code for h in held.history] == [old, new]
            assert held.history[1].notification.previous_resident_code == old
            assert changed(held) == [True, True]

    # The municipality finds the resident by the old code too.
    by_old = await resident(fed, TOTTORI, old)
    assert by_old.resident.resident_code == new
    assert [n.reason for n in by_old.notifications] == [
        C.CHANGE_REASON_BIRTH,
        C.CHANGE_REASON_CODE_CHANGE,
    ]
    # Later changes travel under the new code.
    await op.Relocate(
        M.RelocateRequest(
            resident_code=new, new_address="鳥取県鳥取市吉方温泉3丁目", effective_date=EFFECTIVE
        ),
        timeout=TIMEOUT,
    )
    await fed.wait_delivered()
    held = await national(fed, new)
    assert held.identity.record.address == "鳥取県鳥取市吉方温泉3丁目"
    assert (await national(fed, old)).identity.status == C.RECORD_STATUS_SUPERSEDED
    # The old code cannot be changed again.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await op.ChangeResidentCode(
            M.ChangeResidentCodeRequest(resident_code=old, effective_date=EFFECTIVE),
            timeout=TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(info.value)["jukinet-field"] == "resident_code"


# --- moves between municipalities -----------------------------------------------------


@pytest.mark.parametrize("new_home", [YONAGO, CHIYODA], ids=["same-prefecture", "other-prefecture"])
@pytest.mark.parametrize("move_in_first", [False, True], ids=["out-then-in", "in-then-out"])
async def test_move_between_municipalities(
    fed: Federation, new_home: str, move_in_first: bool
) -> None:
    old_home = TOTTORI
    details = person(birth_date="1975-09-30")
    code = (await birth(fed, old_home, details)).resident.resident_code
    await fed.wait_delivered()
    moved_details = person(birth_date="1975-09-30", address=ADDRESS[new_home])

    async def move_in(certificate: C.SignedMoveOutCertificate) -> None:
        moved = await fed.operator(new_home).MoveIn(
            M.MoveInRequest(
                person=moved_details,
                origin=M.MOVE_IN_ORIGIN_DOMESTIC,
                resident_code=code,
                previous_local_government_code=old_home,
                effective_date=EFFECTIVE,
                move_out_certificate=certificate,
            ),
            timeout=TIMEOUT,
        )
        assert moved.resident.resident_code == code
        assert moved.resident.last_reason == C.CHANGE_REASON_MOVE_IN

    if move_in_first:
        # The new municipality's move-in is delivered before the old one's
        # move-out reaches the upper tiers: the move-out waits in the old
        # municipality's outbox while its prefecture is down and it is stopped.
        await fed.prefectures["31"].stop()
        certificate = await move_out(fed, code, old_home, new_home, effective_date=EFFECTIVE)
        await fed.municipalities[old_home].stop()
        await fed.start_prefecture("31")
        await move_in(certificate)
        await until_registered_at(fed.national_operator(), code, new_home)
        await fed.start_municipality(old_home)
        await fed.wait_delivered()
        expected = [
            (C.CHANGE_REASON_BIRTH, True),
            (C.CHANGE_REASON_MOVE_IN, True),
            (C.CHANGE_REASON_MOVE_OUT, False),
        ]
    else:
        certificate = await move_out(fed, code, old_home, new_home, effective_date=EFFECTIVE)
        await fed.wait_delivered()
        await move_in(certificate)
        await fed.wait_delivered()
        expected = [
            (C.CHANGE_REASON_BIRTH, True),
            (C.CHANGE_REASON_MOVE_OUT, True),
            (C.CHANGE_REASON_MOVE_IN, True),
        ]

    held = await national(fed, code)
    assert held.identity.status == C.RECORD_STATUS_ACTIVE
    assert_record(held.identity.record, code, moved_details, new_home)
    assert list(zip(reasons(held), changed(held), strict=True)) == expected
    assert [h.notification.origin_code for h in held.history] == [
        old_home,
        *([new_home, old_home] if move_in_first else [old_home, new_home]),
    ]

    new_pref = await prefecture(fed, PREFECTURE[new_home], code)
    assert new_pref.identity.status == C.RECORD_STATUS_ACTIVE
    assert_record(new_pref.identity.record, code, moved_details, new_home)
    if PREFECTURE[new_home] == PREFECTURE[old_home]:
        assert list(zip(reasons(new_pref), changed(new_pref), strict=True)) == expected
    else:
        assert reasons(new_pref) == [C.CHANGE_REASON_MOVE_IN]
        old_pref = await prefecture(fed, "31", code)
        assert old_pref.identity.status == C.RECORD_STATUS_REMOVED
        assert old_pref.identity.record.local_government_code == old_home
        assert list(zip(reasons(old_pref), changed(old_pref), strict=True)) == [
            (C.CHANGE_REASON_BIRTH, True),
            (C.CHANGE_REASON_MOVE_OUT, True),
        ]

    at_new = await resident(fed, new_home, code)
    assert at_new.resident.status == M.RESIDENT_STATUS_ACTIVE
    assert at_new.resident.local_government_code == new_home
    at_old = await resident(fed, old_home, code)
    assert at_old.resident.status == M.RESIDENT_STATUS_REMOVED


async def test_variation_selectors_and_kana_normalisation_end_to_end(fed: Federation) -> None:
    # IVS (U+E0100) and the standardised variation selector U+FE00 select the
    # registered glyph; U+3000 separates surname and given name. All are kept.
    details = person("葛\U000e0100城\u3000髙\ufe00子", "かつらぎ　ﾀｶｺ", sex=C.SEX_FEMALE)
    born = await birth(fed, details=details)
    code = born.resident.resident_code
    stored = M.PersonDetails()
    stored.CopyFrom(details)
    stored.name_kana = "カツラギ　タカコ"  # hiragana and half-width kana become katakana
    assert born.resident.person == stored
    await fed.wait_delivered()
    for held in await both_tiers(fed, "31", code):
        assert_record(held.identity.record, code, stored, TOTTORI)
