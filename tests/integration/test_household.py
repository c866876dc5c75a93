"""The full register at the municipal node, over real mTLS on both backends:
households and relationships (世帯, 続柄), previous address, domicile (本籍,
筆頭者), every change an event with its operator, removed entries readable
with their history, and none of the register-only items ever leaving the node
(every notification and every upper-tier table is scanned for them)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from sqlalchemy import MetaData, select

from jukinet.db import Database
from jukinet.v1 import common_pb2, municipal_pb2, municipal_pb2_grpc
from tests.federation import Federation, move_in, move_out, trailers

TIMEOUT = 15
C = common_pb2
M = municipal_pb2
TOTTORI = "312011"
YONAGO = "312029"
HOME = "鳥取県鳥取市東町1丁目220番地"
FLAT = "鳥取県鳥取市栄町603番地"
YONAGO_HOME = "鳥取県米子市加茂町1丁目1番地"
OPERATOR = f"jukinet://operator/{TOTTORI}/counter"  # the federation's counter operator


def person(name: str, kana: str, birth: str, sex: C.Sex.ValueType, address: str = HOME) -> Any:
    """A person's identity items."""
    return M.PersonDetails(name=name, name_kana=kana, birth_date=birth, sex=sex, address=address)


async def refused(call: Any, code: grpc.StatusCode, field: str) -> str:
    """Await ``call``, which must fail with ``code`` naming ``field``; returns the details."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    if field:
        assert trailers(info.value)["jukinet-field"] == field, info.value.details()
    return info.value.details() or ""


async def family(fed: Federation) -> tuple[str, str, str, str]:
    """A head, a wife and a child at Tottori; returns the household and the three codes."""
    op = fed.operator(TOTTORI)
    head = await op.MoveIn(
        M.MoveInRequest(
            person=person("鳥取 一郎", "トットリ イチロウ", "1980-04-02", C.SEX_MALE),
            origin=M.MOVE_IN_ORIGIN_ABROAD,
            effective_date="2024-04-01",
            register=M.RegisterItems(
                previous_address="米国ニューヨーク州前住所通り1番地",
                domicile="鳥取県鳥取市本籍町1番地",
                domicile_head="鳥取 一郎",
            ),
        ),
        timeout=TIMEOUT,
    )
    household = head.resident.household_id
    wife = await op.EnterExOfficio(
        M.EnterExOfficioRequest(
            person=person("鳥取 花子", "トットリ ハナコ", "1982-07-15", C.SEX_FEMALE),
            household_id=household,
            effective_date="2024-04-01",
            register=M.RegisterItems(
                relationship=M.RELATIONSHIP_WIFE,
                domicile="鳥取県鳥取市本籍町1番地",
                domicile_head="鳥取 一郎",
            ),
        ),
        timeout=TIMEOUT,
    )
    child = await op.RegisterBirth(
        M.RegisterBirthRequest(
            person=person("鳥取 三郎", "トットリ サブロウ", "2024-10-03", C.SEX_MALE),
            household_id=household,
            register=M.RegisterItems(relationship=M.RELATIONSHIP_CHILD),
        ),
        timeout=TIMEOUT,
    )
    return (
        household,
        head.resident.resident_code,
        wife.resident.resident_code,
        child.resident.resident_code,
    )


def members(household: M.Household) -> list[tuple[str, int]]:
    """The household's members as (code, relationship)."""
    return [(m.resident_code, m.relationship) for m in household.members]


async def test_family_household_changes_and_death(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    household, head, wife, child = await family(fed)

    got = (await op.GetHousehold(M.GetHouseholdRequest(household_id=household))).household
    assert got.head_resident_code == head
    assert got.address == HOME
    assert members(got) == [
        (head, M.RELATIONSHIP_HEAD),
        (wife, M.RELATIONSHIP_WIFE),
        (child, M.RELATIONSHIP_CHILD),
    ]
    by_code = await op.GetHousehold(M.GetHouseholdRequest(resident_code=child))
    assert by_code.household == got

    entry = await op.GetResident(M.GetResidentRequest(resident_code=head))
    r = entry.resident
    assert r.register.relationship == M.RELATIONSHIP_HEAD
    assert r.register.previous_address == "米国ニューヨーク州前住所通り1番地"
    assert (r.register.domicile, r.register.domicile_head) == (
        "鳥取県鳥取市本籍町1番地",
        "鳥取 一郎",
    )
    assert r.entry_reason == C.CHANGE_REASON_MOVE_IN_FROM_ABROAD
    assert r.registered_on == "2024-04-01"
    [event] = entry.events
    assert event.reason == C.CHANGE_REASON_MOVE_IN_FROM_ABROAD
    assert (event.effective_date, event.operator) == ("2024-04-01", OPERATOR)
    assert event.recorded_at.endswith("+00:00")
    changes = {c.field: (c.before, c.after) for c in event.changes}
    assert changes["household_id"] == ("", household)
    assert changes["register.relationship"] == ("", "世帯主")
    assert changes["address"] == ("", HOME)
    born = (await op.GetResident(M.GetResidentRequest(resident_code=child))).resident
    assert born.entry_reason == C.CHANGE_REASON_BIRTH
    assert born.register.previous_address == ""

    # The grown child founds a household of their own (世帯分離), then moves to a flat.
    moved = await op.ChangeHousehold(
        M.ChangeHouseholdRequest(
            resident_code=child, new_household=True, effective_date="2025-01-10"
        )
    )
    own = moved.household
    assert own.household_id != household
    assert (own.head_resident_code, members(own)) == (child, [(child, M.RELATIONSHIP_HEAD)])
    assert own.address == HOME
    await op.Relocate(
        M.RelocateRequest(resident_code=child, new_address=FLAT, effective_date="2025-01-11")
    )
    assert (
        await op.GetHousehold(M.GetHouseholdRequest(household_id=own.household_id))
    ).household.address == FLAT
    left = (await op.GetHousehold(M.GetHouseholdRequest(household_id=household))).household
    assert members(left) == [(head, M.RELATIONSHIP_HEAD), (wife, M.RELATIONSHIP_WIFE)]
    child_events = (await op.GetResident(M.GetResidentRequest(resident_code=child))).events
    assert [(e.reason, e.register_change) for e in child_events] == [
        (C.CHANGE_REASON_BIRTH, M.REGISTER_CHANGE_UNSPECIFIED),
        (C.CHANGE_REASON_UNSPECIFIED, M.REGISTER_CHANGE_HOUSEHOLD_SEPARATION),
        (C.CHANGE_REASON_RELOCATION, M.REGISTER_CHANGE_UNSPECIFIED),
    ]
    separation = {c.field: (c.before, c.after) for c in child_events[1].changes}
    assert separation == {
        "household_id": (household, own.household_id),
        "register.relationship": ("子", "世帯主"),
    }
    assert [e.id for e in child_events] == sorted(e.id for e in child_events)

    # The head dies: his entry stays readable, removed, with its events; the
    # household has no head until the wife becomes it.
    await op.RecordDeath(M.RecordDeathRequest(resident_code=head, date_of_death="2025-03-01"))
    dead = await op.GetResident(M.GetResidentRequest(resident_code=head))
    assert dead.resident.status == M.RESIDENT_STATUS_REMOVED
    assert dead.resident.removed_on == "2025-03-01"
    assert dead.resident.register.domicile == "鳥取県鳥取市本籍町1番地"
    assert [e.reason for e in dead.events] == [
        C.CHANGE_REASON_MOVE_IN_FROM_ABROAD,
        C.CHANGE_REASON_DEATH,
    ]
    assert {c.field: (c.before, c.after) for c in dead.events[1].changes} == {
        "status": ("RESIDENT_STATUS_ACTIVE", "RESIDENT_STATUS_REMOVED"),
        "removed_on": ("", "2025-03-01"),
    }
    headless = (await op.GetHousehold(M.GetHouseholdRequest(household_id=household))).household
    assert (headless.head_resident_code, members(headless)) == ("", [(wife, M.RELATIONSHIP_WIFE)])
    # Nobody can be related to a head who is gone.
    details = await refused(
        op.RegisterBirth(
            M.RegisterBirthRequest(
                person=person("鳥取 四郎", "トットリ シロウ", "2025-03-05", C.SEX_MALE),
                household_id=household,
                register=M.RegisterItems(relationship=M.RELATIONSHIP_CHILD),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "register.relationship",
    )
    assert "no current head" in details
    await op.ChangeHousehold(
        M.ChangeHouseholdRequest(
            resident_code=wife, relationship=M.RELATIONSHIP_HEAD, effective_date="2025-03-02"
        )
    )
    # The child rejoins the mother's household; the head changes to him, the
    # mother's relationship restated.
    rejoined = await op.ChangeHousehold(
        M.ChangeHouseholdRequest(
            resident_code=child,
            household_id=household,
            relationship=M.RELATIONSHIP_CHILD,
            effective_date="2025-04-01",
        )
    )
    # Joining a household at another address moves him there: a relocation
    # (転居) goes upward, with his identity items only.
    [back_home] = rejoined.residents
    assert back_home.person.address == HOME
    assert back_home.last_reason == C.CHANGE_REASON_RELOCATION
    assert rejoined.notification_sequence > 0
    last = (await op.GetResident(M.GetResidentRequest(resident_code=child))).events[-1]
    assert (last.reason, last.register_change) == (
        C.CHANGE_REASON_RELOCATION,
        M.REGISTER_CHANGE_HOUSEHOLD_JOIN,
    )
    assert {c.field: (c.before, c.after) for c in last.changes} == {
        "address": (FLAT, HOME),
        "household_id": (own.household_id, household),
        "register.relationship": ("世帯主", "子"),
    }
    changed = await op.ChangeHousehold(
        M.ChangeHouseholdRequest(
            resident_code=child,
            relationship=M.RELATIONSHIP_HEAD,
            effective_date="2025-04-02",
            relationships=[
                M.MemberRelationship(resident_code=wife, relationship=M.RELATIONSHIP_MOTHER)
            ],
        )
    )
    assert changed.household.head_resident_code == child
    assert members(changed.household) == [
        (wife, M.RELATIONSHIP_MOTHER),
        (child, M.RELATIONSHIP_HEAD),
    ]
    assert {r.resident_code for r in changed.residents} == {wife, child}
    domicile = await op.ChangeDomicile(
        M.ChangeDomicileRequest(
            resident_code=wife,
            domicile="鳥取県米子市新本籍1番地",
            domicile_head="鳥取 花子",
            effective_date="2025-05-01",
        )
    )
    assert domicile.resident.register.domicile == "鳥取県米子市新本籍1番地"
    wife_events = (await op.GetResident(M.GetResidentRequest(resident_code=wife))).events
    assert [e.register_change for e in wife_events] == [
        M.REGISTER_CHANGE_UNSPECIFIED,
        M.REGISTER_CHANGE_HEAD,
        M.REGISTER_CHANGE_HEAD,
        M.REGISTER_CHANGE_DOMICILE,
    ]
    assert all(e.operator == OPERATOR for e in wife_events)
    # Register-only changes wrote no notification.
    wife_entry = await op.GetResident(M.GetResidentRequest(resident_code=wife))
    assert [n.reason for n in wife_entry.notifications] == [C.CHANGE_REASON_EX_OFFICIO_ENTRY]


async def test_refusals_write_nothing(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    household, head, wife, child = await family(fed)
    before_status = await op.GetStatus(M.GetMunicipalStatusRequest())
    before_household = await op.GetHousehold(M.GetHouseholdRequest(household_id=household))
    before_events = {
        c: list((await op.GetResident(M.GetResidentRequest(resident_code=c))).events)
        for c in (head, wife, child)
    }
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    baby = person("鳥取 五郎", "トットリ ゴロウ", "2025-02-02", C.SEX_MALE)

    def birth(household_id: str = household, **items: Any) -> Any:
        return op.RegisterBirth(
            M.RegisterBirthRequest(
                person=baby, household_id=household_id, register=M.RegisterItems(**items)
            )
        )

    cases: list[tuple[Any, grpc.StatusCode, str, str]] = [
        (birth(relationship=99), INVALID, "register.relationship", "unknown relationship"),
        (birth(relationship=M.RELATIONSHIP_HEAD), INVALID, "register.relationship", "head"),
        (birth("", relationship=M.RELATIONSHIP_CHILD), INVALID, "register.relationship", "founder"),
        (birth("0123456789abcdef"), INVALID, "household_id", "no current household"),
        (
            birth(previous_address="東京都千代田区永田町1丁目"),
            INVALID,
            "register.previous_address",
            "birth",
        ),
        (birth(domicile_head="鳥取 一郎"), INVALID, "register.domicile_head", "without a domicile"),
        (birth(domicile="本籍\u202e"), INVALID, "register.domicile", ""),
        (
            op.ChangeHousehold(
                M.ChangeHouseholdRequest(
                    resident_code=child, household_id=household, effective_date="2025-01-01"
                )
            ),
            INVALID,
            "relationship",
            "required",
        ),
        (
            op.ChangeHousehold(
                M.ChangeHouseholdRequest(
                    resident_code=head,
                    relationship=M.RELATIONSHIP_CHILD,
                    effective_date="2025-01-01",
                )
            ),
            INVALID,
            "relationship",
            "is the head",
        ),
        (
            op.ChangeHousehold(
                M.ChangeHouseholdRequest(
                    resident_code=wife,
                    relationship=M.RELATIONSHIP_HEAD,
                    effective_date="2025-01-01",
                )
            ),
            INVALID,
            "relationships",
            "needs a relationship",
        ),
        (
            op.ChangeHousehold(
                M.ChangeHouseholdRequest(
                    resident_code=wife,
                    relationship=M.RELATIONSHIP_HEAD,
                    effective_date="2025-01-01",
                    relationships=[
                        M.MemberRelationship(
                            resident_code=head, relationship=M.RELATIONSHIP_HUSBAND
                        ),
                        M.MemberRelationship(
                            resident_code="12345678903", relationship=M.RELATIONSHIP_CHILD
                        ),
                    ],
                )
            ),
            INVALID,
            "relationships[1].resident_code",
            "not another current member",
        ),
        (
            op.ChangeHousehold(
                M.ChangeHouseholdRequest(
                    resident_code=child,
                    new_household=True,
                    relationship=M.RELATIONSHIP_CHILD,
                    effective_date="2025-01-01",
                )
            ),
            INVALID,
            "relationship",
            "founder",
        ),
        (
            op.ChangeHousehold(
                M.ChangeHouseholdRequest(
                    resident_code=child, new_household=True, effective_date="2020-01-01"
                )
            ),
            INVALID,
            "effective_date",
            "",
        ),
        (
            op.ChangeHousehold(
                M.ChangeHouseholdRequest(
                    resident_code=child, new_address=FLAT, effective_date="2025-01-01"
                )
            ),
            INVALID,
            "new_address",
            "only with new_household",
        ),
        (
            op.ChangeHousehold(
                M.ChangeHouseholdRequest(
                    resident_code=child,
                    new_household=True,
                    new_address=YONAGO_HOME,
                    effective_date="2025-01-01",
                )
            ),
            INVALID,
            "new_address",
            "",
        ),
        (
            op.ChangeDomicile(
                M.ChangeDomicileRequest(
                    resident_code=wife, domicile_head="鳥取 花子", effective_date="2025-01-01"
                )
            ),
            INVALID,
            "domicile_head",
            "without a domicile",
        ),
        (
            op.GetHousehold(M.GetHouseholdRequest(household_id=household, resident_code=head)),
            INVALID,
            "household_id",
            "exactly one",
        ),
        (
            op.GetHousehold(M.GetHouseholdRequest(household_id="0123456789abcdef")),
            grpc.StatusCode.NOT_FOUND,
            "",
            "no household",
        ),
    ]
    for call, status, field, words in cases:
        details = await refused(call, status, field)
        assert words in details, (field, details)
    # A move-in into a household of this register must still live in this
    # municipality: an address elsewhere is refused as before.
    await refused(
        op.MoveIn(
            M.MoveInRequest(
                person=person("米子 次郎", "ヨナゴ ジロウ", "1990-01-01", C.SEX_MALE, YONAGO_HOME),
                origin=M.MOVE_IN_ORIGIN_ABROAD,
                household_id=household,
                effective_date="2025-01-01",
                register=M.RegisterItems(relationship=M.RELATIONSHIP_LODGER),
            )
        ),
        INVALID,
        "person.address",
    )
    # Other nodes may not call the new methods, even of the same prefecture.
    node = fed.channel(fed.municipal_ports[TOTTORI], f"municipality-{YONAGO}")
    as_node = municipal_pb2_grpc.MunicipalServiceStub(node)
    for call in (
        as_node.GetHousehold(M.GetHouseholdRequest(household_id=household)),
        as_node.ChangeHousehold(M.ChangeHouseholdRequest(resident_code=child, new_household=True)),
        as_node.ChangeDomicile(M.ChangeDomicileRequest(resident_code=child, domicile="x")),
    ):
        await refused(call, grpc.StatusCode.PERMISSION_DENIED, "")

    after_status = await op.GetStatus(M.GetMunicipalStatusRequest())
    counts = ("last_sequence", "codes_in_pool", "active_residents", "removed_residents")
    assert [getattr(after_status, f) for f in counts] == [getattr(before_status, f) for f in counts]
    assert await op.GetHousehold(M.GetHouseholdRequest(household_id=household)) == before_household
    for c, events in before_events.items():
        assert list((await op.GetResident(M.GetResidentRequest(resident_code=c))).events) == events


async def _rows(db: Database) -> list[tuple[str, str, object]]:
    """Every value of every column of every table of ``db`` as (table, column, value)."""
    out: list[tuple[str, str, object]] = []
    async with db.read() as conn:
        meta = MetaData()
        await conn.run_sync(meta.reflect)
        for table in meta.sorted_tables:
            for row in await conn.execute(select(table)):
                out.extend((table.name, col, value) for col, value in row._mapping.items() if value)
    return out


def _contains(value: object, needle: str) -> bool:
    if isinstance(value, bytes | bytearray | memoryview):
        return needle.encode() in bytes(value)
    return needle in str(value)


async def test_register_only_items_never_leave_the_municipality(fed: Federation) -> None:
    op = fed.operator(TOTTORI)
    household, _head, wife, child = await family(fed)
    secrets = [
        "米国ニューヨーク州前住所通り1番地",
        "鳥取県鳥取市本籍町1番地",
        "鳥取県米子市秘密本籍99番地",
        "筆頭 秘密之助",
        "大阪府大阪市前住所秘密町7番地",
    ]
    separated = await op.ChangeHousehold(
        M.ChangeHouseholdRequest(
            resident_code=child, new_household=True, new_address=FLAT, effective_date="2025-01-10"
        )
    )
    assert separated.notification_sequence > 0
    assert separated.household.address == FLAT
    await op.ChangeDomicile(
        M.ChangeDomicileRequest(
            resident_code=wife,
            domicile="鳥取県米子市秘密本籍99番地",
            domicile_head="筆頭 秘密之助",
            effective_date="2025-01-10",
        )
    )
    # A move to Yonago and back with an operator-given previous address, into
    # a household there.
    certificate = await move_out(fed, wife, TOTTORI, YONAGO, effective_date="2025-02-01")
    there = await fed.operator(YONAGO).MoveIn(
        M.MoveInRequest(
            person=M.PersonDetails(address=YONAGO_HOME),
            origin=M.MOVE_IN_ORIGIN_DOMESTIC,
            move_out_certificate=certificate,
            effective_date="2025-02-01",
            register=M.RegisterItems(
                previous_address="大阪府大阪市前住所秘密町7番地",
                domicile="鳥取県米子市秘密本籍99番地",
                domicile_head="筆頭 秘密之助",
            ),
        ),
        timeout=TIMEOUT,
    )
    assert there.resident.register.previous_address == "大阪府大阪市前住所秘密町7番地"
    back = await move_in(
        fed,
        await move_out(fed, wife, YONAGO, TOTTORI, effective_date="2025-03-01"),
        TOTTORI,
        address=HOME,
        effective_date="2025-03-01",
    )
    # A domestic move-in's previous address defaults to the certificate's.
    assert back.resident.register.previous_address == YONAGO_HOME
    households = [household, separated.household.household_id, there.resident.household_id]
    await fed.wait_delivered()

    needles = secrets + households
    upper = {
        "national": fed.national,
        **{f"prefecture-{p}": app for p, app in fed.prefectures.items()},
    }
    scanned = 0
    for node, app in upper.items():
        assert app is not None
        for table, column, value in await _rows(app.db):
            scanned += 1
            for needle in needles:
                assert not _contains(value, needle), f"{needle!r} in {node}.{table}.{column}"
    assert scanned > 0
    # Every notification as written at the municipalities (what goes upward).
    for code in (TOTTORI, YONAGO):
        for table, column, value in await _rows(fed.municipalities[code].db):
            if table == "outbox":
                for needle in needles:
                    assert not _contains(value, needle), f"{needle!r} in {code} outbox.{column}"
    # The notification and the identity record carry the identity items and nothing else.
    assert [f.name for f in C.IdentityRecord.DESCRIPTOR.fields] == [
        "resident_code",
        "name",
        "name_kana",
        "former_surname",
        "alias",
        "birth_date",
        "sex",
        "address",
        "local_government_code",
    ]
    assert [f.name for f in C.Notification.DESCRIPTOR.fields] == [
        "origin_code",
        "sequence",
        "kind",
        "reason",
        "effective_date",
        "recorded_at",
        "record",
        "previous_resident_code",
        "move_out_certificate",
    ]
