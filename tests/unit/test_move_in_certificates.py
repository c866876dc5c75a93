"""The upper tiers' rules for the move-out certificate of a domestic move-in: who
holds the resident, by tier and by how far the issuer's stream has come, replays,
and what the national node keeps as refused."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from jukinet.delivery.certificates import (
    Contradiction,
    Used,
    UsedCertificate,
    Verdict,
    contradictions,
    judge_holding,
    screen_batch,
)
from jukinet.delivery.rules import StoredIdentity
from jukinet.movecert import CertificateRefused
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2 as C

TOTTORI, YONAGO, CHIYODA = "312011", "312029", "131016"
CODE = "12345678901"

RECORD = StoredIdentity(
    resident_code=CODE,
    local_government_code=TOTTORI,
    name="鳥取 花子",
    name_kana="トットリ ハナコ",
    former_surname="",
    alias="",
    birth_date="1980-02-03",
    sex=C.SEX_FEMALE,
    address="鳥取県鳥取市東町1丁目220番地",
    status=C.RECORD_STATUS_ACTIVE,
    replaced_by="",
    registered_since="1980-02-03",
)


def cert(issuer: str = TOTTORI, sequence: int = 5, number: str = "") -> C.MoveOutCertificate:
    """A certificate of ``issuer``'s move-out #``sequence`` of CODE."""
    return C.MoveOutCertificate(
        certificate_number=number or f"{issuer}-00000000000000{sequence:02d}",
        issuing_local_government_code=issuer,
        resident_code=CODE,
        move_out_sequence=sequence,
    )


def judge(c: C.MoveOutCertificate, prefecture: str, **kw: object) -> Verdict:
    """judge_holding with nothing known unless given."""
    args: dict[str, object] = {
        "current": None,
        "registered": set(),
        "issuer_cursor": 0,
        "prefecture": prefecture,
        "prefix": "entries[0].notification",
    }
    args.update(kw)
    return judge_holding(c, **args)  # type: ignore[arg-type]


def refused_with(reason: Reason, c: C.MoveOutCertificate, prefecture: str, **kw: object) -> None:
    """judge_holding refuses with ``reason``."""
    with pytest.raises(CertificateRefused) as info:
        judge(c, prefecture, **kw)
    assert info.value.reason is reason


@pytest.mark.parametrize("prefecture", ["31", ""])
def test_a_holding_issuer_is_accepted_at_both_tiers(prefecture: str) -> None:
    assert judge(cert(), prefecture, registered={(CODE, TOTTORI)}) is Verdict.APPLY
    assert judge(cert(), prefecture, current=RECORD) is Verdict.APPLY
    removed = dataclasses.replace(RECORD, status=C.RECORD_STATUS_REMOVED)
    assert judge(cert(), prefecture, current=removed) is Verdict.APPLY


def test_the_prefecture_refuses_its_own_municipality_that_does_not_hold() -> None:
    elsewhere = dataclasses.replace(RECORD, local_government_code=YONAGO)
    for current in (None, elsewhere):
        refused_with(
            Reason.MOVE_OUT_CERTIFICATE_NOT_HELD, cert(), "31", current=current, issuer_cursor=5
        )
    # Its stream has not come that far: the holding may still be on the way, and
    # the national node judges (a prefecture holds no stream up for another).
    assert judge(cert(), "31", issuer_cursor=4) is Verdict.APPLY


def test_the_prefecture_leaves_another_prefectures_issuer_to_the_national_node() -> None:
    assert judge(cert(CHIYODA), "31") is Verdict.APPLY
    gone = dataclasses.replace(RECORD, status=C.RECORD_STATUS_REMOVED)
    assert judge(cert(CHIYODA), "31", current=gone) is Verdict.APPLY
    # Even while the resident is registered at one of its own municipalities:
    # that municipality's move-out may be on its way.
    assert judge(cert(CHIYODA), "31", current=RECORD) is Verdict.APPLY


def test_the_national_node_keeps_a_forgery_and_applies_a_lagging_issuer_by_cause() -> None:
    assert judge(cert(CHIYODA), "", current=RECORD, issuer_cursor=5) is Verdict.QUARANTINE
    assert judge(cert(CHIYODA), "", issuer_cursor=9) is Verdict.QUARANTINE
    assert judge(cert(CHIYODA), "", current=RECORD, issuer_cursor=4) is Verdict.APPLY
    # The issuer's own registration was kept refused: so is this.
    forged = {(CODE, CHIYODA)}
    assert judge(cert(CHIYODA), "", quarantined=forged) is Verdict.QUARANTINE
    assert judge(cert(CHIYODA), "", issuer_cursor=4, quarantined=forged) is Verdict.QUARANTINE


def move_in(
    origin: str, sequence: int, reason: C.ChangeReason.ValueType = C.CHANGE_REASON_MOVE_IN
) -> C.Notification:
    """A notification of ``origin`` for CODE."""
    kind = {
        C.CHANGE_REASON_MOVE_IN: C.CHANGE_KIND_CREATED,
        C.CHANGE_REASON_DEATH: C.CHANGE_KIND_REMOVED,
        C.CHANGE_REASON_RELOCATION: C.CHANGE_KIND_AMENDED,
    }[reason]
    return C.Notification(
        origin_code=origin,
        sequence=sequence,
        kind=kind,
        reason=reason,
        effective_date="2025-05-01",
        recorded_at=dt.datetime.now(dt.UTC).isoformat(),
        record=C.IdentityRecord(resident_code=CODE, local_government_code=origin),
    )


def screen(
    fresh: list[C.Notification],
    certificates: dict[int, C.MoveOutCertificate],
    prefecture: str,
    **kw: object,
) -> dict[int, Reason]:
    """screen_batch's quarantined entries, with nothing known unless given."""
    args: dict[str, object] = {
        "records": {CODE: RECORD},
        "registered": {(CODE, TOTTORI)},
        "quarantined_holdings": set(),
        "used": Used(),
        "cursors": {TOTTORI: 5},
    }
    args.update(kw)
    return screen_batch(fresh, certificates, prefecture=prefecture, **args).quarantined  # type: ignore[arg-type]


def test_a_certificate_used_twice_in_one_batch_is_a_replay() -> None:
    fresh = [move_in(YONAGO, 1), move_in(YONAGO, 2)]
    renumbered = cert(number=f"{TOTTORI}-ffffffffffffffff")
    for second in (cert(), renumbered):
        with pytest.raises(CertificateRefused) as info:
            screen(fresh, {0: cert(), 1: second}, "31")
        assert info.value.reason is Reason.MOVE_OUT_CERTIFICATE_REPLAYED
        assert "entries[1]" in info.value.message
    # One used before at this tier, at the prefecture.
    with pytest.raises(CertificateRefused):
        screen(
            fresh[:1], {0: cert()}, "31", used=Used(numbers=frozenset({cert().certificate_number}))
        )


def test_the_national_node_keeps_a_replay_and_what_follows_a_kept_move_in() -> None:
    fresh = [
        move_in(CHIYODA, 1),
        move_in(CHIYODA, 2, C.CHANGE_REASON_RELOCATION),
        move_in(CHIYODA, 3, C.CHANGE_REASON_DEATH),
    ]
    used = Used(move_outs=frozenset({(TOTTORI, 5)}))
    got = screen(fresh, {0: cert()}, "", used=used)
    assert got == {
        0: Reason.MOVE_OUT_CERTIFICATE_REPLAYED,
        1: Reason.NOT_HELD,
        2: Reason.NOT_HELD,
    }
    # A forgery: the issuer's stream is past the move-out and it never held the code.
    forged = cert(YONAGO, 1)
    got = screen(fresh, {0: forged}, "", cursors={YONAGO: 3})
    assert got == {
        0: Reason.MOVE_OUT_CERTIFICATE_NOT_HELD,
        1: Reason.NOT_HELD,
        2: Reason.NOT_HELD,
    }
    # Known from the history as kept refused: later changes follow it.
    later = [move_in(CHIYODA, 4, C.CHANGE_REASON_DEATH)]
    assert screen(later, {}, "", quarantined_holdings={(CODE, CHIYODA)}) == {0: Reason.NOT_HELD}
    # A real move-in is applied, and so is what follows it.
    assert screen(fresh, {0: cert()}, "") == {}


def test_a_lagging_move_in_applies_with_what_follows_and_is_recorded_for_the_check() -> None:
    fresh = [
        move_in(CHIYODA, 1),
        move_in(CHIYODA, 2, C.CHANGE_REASON_RELOCATION),
        move_in(CHIYODA, 3, C.CHANGE_REASON_DEATH),
    ]
    lagging = cert(YONAGO, 7)
    args: dict[str, object] = {
        "records": {CODE: RECORD},
        "registered": {(CODE, TOTTORI)},
        "quarantined_holdings": set(),
        "used": Used(),
        "cursors": {YONAGO: 6},
    }
    for prefecture in ("31", ""):
        got = screen_batch(fresh, {0: lagging}, prefecture=prefecture, **args)  # type: ignore[arg-type]
        assert got.quarantined == {}
        # Recorded used: YONAGO's #7, when it comes, is checked against it.
        assert [(u.issuer, u.move_out_sequence, u.resident_code) for u in got.used] == [
            (YONAGO, 7, CODE)
        ]


def test_a_certificate_must_name_the_residents_own_move_out() -> None:
    # A former holder (it registered CODE once) signs a certificate naming a
    # sequence of its own that is not CODE's move-out: a birth of someone else.
    fresh = [move_in(YONAGO, 1)]
    other = C.Notification(
        origin_code=TOTTORI,
        sequence=5,
        kind=C.CHANGE_KIND_CREATED,
        reason=C.CHANGE_REASON_BIRTH,
        record=C.IdentityRecord(resident_code="98765432109", local_government_code=TOTTORI),
    )
    moved_out = C.Notification(
        origin_code=TOTTORI,
        sequence=5,
        kind=C.CHANGE_KIND_REMOVED,
        reason=C.CHANGE_REASON_MOVE_OUT,
        record=C.IdentityRecord(resident_code=CODE, local_government_code=TOTTORI),
    )
    with pytest.raises(CertificateRefused) as info:
        screen(fresh, {0: cert()}, "31", certified={(TOTTORI, 5): other})
    assert info.value.reason is Reason.MOVE_OUT_CERTIFICATE_NOT_HELD
    assert "not this resident's move-out" in info.value.message
    # The national node keeps it as refused rather than stall the relay.
    got = screen(fresh, {0: cert()}, "", certified={(TOTTORI, 5): other})
    assert got == {0: Reason.MOVE_OUT_CERTIFICATE_NOT_HELD}
    # The resident's own move-out, stored or earlier in the batch, is what it names.
    assert screen(fresh, {0: cert()}, "31", certified={(TOTTORI, 5): moved_out}) == {}
    assert screen([moved_out, move_in(YONAGO, 1)], {1: cert()}, "31") == {}
    # Another entry of the batch at that sequence that is not the move-out.
    with pytest.raises(CertificateRefused):
        screen([other, move_in(YONAGO, 1)], {1: cert()}, "31", cursors={TOTTORI: 4})


def test_a_notification_at_a_named_sequence_must_be_the_residents_move_out() -> None:
    used = UsedCertificate("131016-X", CHIYODA, 5, CODE, TOTTORI, 1)
    out = move_in(CHIYODA, 5, C.CHANGE_REASON_DEATH)
    moved = C.Notification()
    moved.CopyFrom(out)
    moved.reason = C.CHANGE_REASON_MOVE_OUT
    elsewhere = C.Notification()
    elsewhere.CopyFrom(moved)
    elsewhere.record.resident_code = "98765432109"
    named = {(CHIYODA, 5): used}
    assert contradictions([moved], named) == []
    assert contradictions([out], named) == [Contradiction(out, used)]
    assert contradictions([elsewhere], named) == [Contradiction(elsewhere, used)]
    # Another sequence, or a certificate named nothing here: nothing to check.
    assert contradictions([move_in(CHIYODA, 6, C.CHANGE_REASON_DEATH)], named) == []
    assert contradictions([out], {}) == []
