"""A birth registered at a municipality reaches the prefecture and the national node."""

from __future__ import annotations

from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2
from tests.federation import Federation


def person(name: str = "鳥取 花子", **kw: object) -> municipal_pb2.PersonDetails:
    """A newborn's details, with ``kw`` replacing fields."""
    values: dict[str, object] = {
        "name": name,
        "name_kana": "トットリ ハナコ",
        "birth_date": "2026-11-01",
        "sex": common_pb2.SEX_FEMALE,
        "address": "鳥取県鳥取市東町1丁目220番地",
    }
    values.update(kw)
    return municipal_pb2.PersonDetails(**values)  # type: ignore[arg-type]


async def test_birth_reaches_every_tier(fed: Federation) -> None:
    op = fed.operator("312011")
    born = await op.RegisterBirth(municipal_pb2.RegisterBirthRequest(person=person()))
    code = born.resident.resident_code
    assert born.notification_sequence == 1
    await fed.wait_delivered()
    national = await fed.national_operator().GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=code)
    )
    assert national.identity.record.name == "鳥取 花子"
    assert national.identity.status == common_pb2.RECORD_STATUS_ACTIVE
    pref = await fed.prefecture_operator("31").GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=code)
    )
    assert pref.identity.record.local_government_code == "312011"
    assert [h.notification.reason for h in national.history] == [common_pb2.CHANGE_REASON_BIRTH]
