"""The upper tiers end in the same state whatever order two municipalities'
notifications arrive in."""

from __future__ import annotations

import itertools

from jukinet.delivery.rules import ACTIVE, REMOVED, SUPERSEDED, Held, decide
from jukinet.v1 import common_pb2 as pb

CODE = "12345678903"
NEW_CODE = "24727059608"


def note(
    origin: str,
    seq: int,
    reason: pb.ChangeReason.ValueType,
    date: str,
    code: str = CODE,
    **kw: str,
) -> pb.Notification:
    """A notification of ``origin``, of the kind its ``reason`` implies."""
    kind = {
        pb.CHANGE_REASON_BIRTH: pb.CHANGE_KIND_CREATED,
        pb.CHANGE_REASON_MOVE_IN: pb.CHANGE_KIND_CREATED,
        pb.CHANGE_REASON_MOVE_OUT: pb.CHANGE_KIND_REMOVED,
        pb.CHANGE_REASON_DEATH: pb.CHANGE_KIND_REMOVED,
        pb.CHANGE_REASON_RELOCATION: pb.CHANGE_KIND_AMENDED,
        pb.CHANGE_REASON_CODE_CHANGE: pb.CHANGE_KIND_AMENDED,
    }[reason]
    return pb.Notification(
        origin_code=origin,
        sequence=seq,
        kind=kind,
        reason=reason,
        effective_date=date,
        record=pb.IdentityRecord(
            resident_code=code,
            name="池田　桃子",
            birth_date="1982-10-26",
            sex=pb.SEX_FEMALE,
            address=f"address at {origin} from {date}",
            local_government_code=origin,
        ),
        **kw,
    )


def fold(notes: list[pb.Notification]) -> dict[str, Held]:
    """The states after applying ``notes`` in order."""
    states: dict[str, Held] = {}
    for n in notes:
        for held in decide(states, n).states:
            states[held.resident_code] = held
    return states


def interleavings(
    a: list[pb.Notification], b: list[pb.Notification]
) -> list[list[pb.Notification]]:
    """Every merge of two streams that keeps each stream's own order."""
    out = []
    for positions in itertools.combinations(range(len(a) + len(b)), len(a)):
        merged, ia, ib = [], iter(a), iter(b)
        for i in range(len(a) + len(b)):
            merged.append(next(ia) if i in positions else next(ib))
        out.append(merged)
    return out


def test_move_between_municipalities_any_order() -> None:
    a = [
        note("312011", 1, pb.CHANGE_REASON_BIRTH, "1982-10-26"),
        note("312011", 2, pb.CHANGE_REASON_MOVE_OUT, "2026-11-16"),
    ]
    b = [note("131016", 1, pb.CHANGE_REASON_MOVE_IN, "2026-11-16")]
    for order in interleavings(a, b):
        held = fold(order)[CODE]
        assert (held.local_government_code, held.status) == ("131016", ACTIVE), order


def test_move_then_death_elsewhere_survives_a_late_birth_notice() -> None:
    a = [
        note("312011", 1, pb.CHANGE_REASON_BIRTH, "1982-10-26"),
        note("312011", 2, pb.CHANGE_REASON_MOVE_OUT, "2020-04-01"),
    ]
    b = [
        note("131016", 1, pb.CHANGE_REASON_MOVE_IN, "2020-04-01"),
        note("131016", 2, pb.CHANGE_REASON_DEATH, "2026-11-27"),
    ]
    for order in interleavings(a, b):
        held = fold(order)[CODE]
        assert (held.local_government_code, held.status) == ("131016", REMOVED), order


def test_there_and_back_again() -> None:
    a = [
        note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01"),
        note("312011", 2, pb.CHANGE_REASON_MOVE_OUT, "2020-04-01"),
        note("312011", 3, pb.CHANGE_REASON_MOVE_IN, "2024-04-01"),
    ]
    b = [
        note("312029", 1, pb.CHANGE_REASON_MOVE_IN, "2020-04-01"),
        note("312029", 2, pb.CHANGE_REASON_MOVE_OUT, "2024-04-01"),
    ]
    for order in interleavings(a, b):
        held = fold(order)[CODE]
        assert (held.local_government_code, held.status) == ("312011", ACTIVE), order


def test_code_change_supersedes_and_keeps_registration_date() -> None:
    states = fold(
        [
            note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01"),
            note(
                "312011",
                2,
                pb.CHANGE_REASON_CODE_CHANGE,
                "2026-11-27",
                code=NEW_CODE,
                previous_resident_code=CODE,
            ),
        ]
    )
    assert states[CODE].status == SUPERSEDED
    assert states[CODE].replaced_by == NEW_CODE
    assert states[NEW_CODE].status == ACTIVE
    assert states[NEW_CODE].registered_since == "1990-01-01"


def test_late_amendment_from_the_old_municipality_only_enters_history() -> None:
    states = fold(
        [
            note("131016", 1, pb.CHANGE_REASON_MOVE_IN, "2026-11-16"),
        ]
    )
    late = note("312011", 5, pb.CHANGE_REASON_RELOCATION, "2026-11-01")
    decision = decide(states, late)
    assert decision.states == ()
    assert decision.changed_current is False
