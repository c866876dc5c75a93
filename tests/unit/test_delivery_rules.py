"""The upper tiers end in the same state whatever order two municipalities'
notifications arrive in."""

from __future__ import annotations

import itertools

import pytest

from jukinet.delivery.rules import (
    ACTIVE,
    REMOVED,
    SUPERSEDED,
    Holding,
    StoredIdentity,
    conflicting,
    decide,
    fold_batch,
    fresh_codes,
    holdings_to_look_up,
    notification_digest,
    record_after,
    registers,
    sequence,
    touched_codes,
)
from jukinet.errors import InvalidArgument, PermissionDenied, SequenceGap
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2 as pb

CODE = "12345678903"
NEW_CODE = "24727059608"


def note(
    origin: str,
    seq: int,
    reason: pb.ChangeReason.ValueType,
    date: str,
    code: str = CODE,
    previous_resident_code: str = "",
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
        previous_resident_code=previous_resident_code,
    )


def fold(notes: list[pb.Notification]) -> dict[str, StoredIdentity]:
    """The states after applying ``notes`` in order."""
    states: dict[str, StoredIdentity] = {}
    for n in notes:
        for record in decide(states, n).states:
            states[record.resident_code] = record
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
        record = fold(order)[CODE]
        assert (record.local_government_code, record.status) == ("131016", ACTIVE), order


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
        record = fold(order)[CODE]
        assert (record.local_government_code, record.status) == ("131016", REMOVED), order


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
        record = fold(order)[CODE]
        assert (record.local_government_code, record.status) == ("312011", ACTIVE), order


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


# -- a batch: sequencing, then folding with the pool check --------------------------


def test_sequence_skips_duplicates_and_advances_each_origin() -> None:
    batch = [
        note("312011", 3, pb.CHANGE_REASON_RELOCATION, "2026-01-01"),
        note("312011", 4, pb.CHANGE_REASON_RELOCATION, "2026-01-02"),
        note("131016", 1, pb.CHANGE_REASON_MOVE_IN, "2026-01-03"),
    ]
    result = sequence({"312011": 3}, batch)
    assert [(n.origin_code, n.sequence) for n in result.fresh] == [("312011", 4), ("131016", 1)]
    assert result.duplicates == 1
    assert result.cursors == {"312011": 4, "131016": 1}


def test_sequence_keeps_the_redelivered_to_compare() -> None:
    again = note("312011", 3, pb.CHANGE_REASON_RELOCATION, "2026-01-01")
    result = sequence({"312011": 3}, [again])
    assert result.redelivered == (again,)
    assert result.fresh == ()


def test_a_digest_is_of_the_content_whatever_order_its_fields_were_set_in() -> None:
    a = note("312011", 3, pb.CHANGE_REASON_RELOCATION, "2026-01-01")
    b = pb.Notification()
    b.record.CopyFrom(a.record)
    b.effective_date, b.sequence, b.origin_code = a.effective_date, a.sequence, a.origin_code
    b.kind, b.reason, b.recorded_at = a.kind, a.reason, a.recorded_at
    assert notification_digest(a) == notification_digest(b)
    b.record.name = "別人 太郎"
    assert notification_digest(a) != notification_digest(b)


def test_a_redelivery_conflicts_only_with_other_content() -> None:
    applied = note("312011", 3, pb.CHANGE_REASON_RELOCATION, "2026-01-01")
    known = {("312011", 3): notification_digest(applied)}
    other = note("312011", 3, pb.CHANGE_REASON_RELOCATION, "2026-01-02")
    assert conflicting([applied], known) is None
    assert conflicting([applied, other], known) is other
    # A sequence with no content to compare with is a duplicate, as before.
    assert conflicting([other], {}) is None


def test_sequence_refuses_a_gap_with_the_expected_sequence() -> None:
    with pytest.raises(SequenceGap) as gap:
        sequence({"312011": 3}, [note("312011", 5, pb.CHANGE_REASON_RELOCATION, "2026-01-01")])
    assert (gap.value.origin, gap.value.expected, gap.value.got) == ("312011", 4, 5)


def test_touched_and_fresh_codes() -> None:
    change = note(
        "312011",
        2,
        pb.CHANGE_REASON_CODE_CHANGE,
        "2026-11-27",
        code=NEW_CODE,
        previous_resident_code=CODE,
    )
    birth = note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")
    move = note("131016", 1, pb.CHANGE_REASON_MOVE_IN, "2026-11-16")
    assert touched_codes([change, move]) == {CODE, NEW_CODE}
    assert fresh_codes([birth, change, move]) == {CODE, NEW_CODE}


def test_fold_batch_takes_fresh_codes_from_the_origins_pool() -> None:
    birth = note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")
    # 312029 registered the code before (its move-out is not here yet): its
    # relocation enters the history without changing the record.
    late = note("312029", 1, pb.CHANGE_REASON_RELOCATION, "2026-01-01")
    folded = fold_batch([birth, late], {}, {CODE: "312011"}, set(), registered={(CODE, "312029")})
    assert set(folded.changed) == {CODE}
    assert folded.changed[CODE].local_government_code == "312011"
    assert folded.changed_current == (True, False)


def test_fold_batch_refuses_a_code_from_another_pool() -> None:
    birth = note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")
    for owners in ({CODE: "312029"}, {}):
        with pytest.raises(InvalidArgument) as refused:
            fold_batch([birth], {}, owners, set(), registered=set())
        assert refused.value.field == "entries[0].notification.record.resident_code"
        assert "is not in the pool of 312011" in refused.value.problem


def test_fold_batch_refuses_a_fresh_code_created_twice() -> None:
    birth = note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")
    again = note("312011", 2, pb.CHANGE_REASON_BIRTH, "1990-01-01")
    owners = {CODE: "312011"}
    with pytest.raises(InvalidArgument) as refused:
        fold_batch([birth], {}, owners, {CODE}, registered=set())
    assert "already in use" in refused.value.problem
    with pytest.raises(InvalidArgument) as refused:
        fold_batch([birth, again], {}, owners, set(), registered=set())
    assert refused.value.field == "entries[1].notification.record.resident_code"


def test_record_after_a_notification() -> None:
    birth = note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")
    death = note("312011", 2, pb.CHANGE_REASON_DEATH, "2026-01-01")
    assert (record_after(birth).status, record_after(birth).registered_since) == (
        ACTIVE,
        "1990-01-01",
    )
    assert record_after(death).status == REMOVED


# -- only a municipality that holds a resident changes them ---------------------------


class Tier:
    """An upper tier's store, reduced to what the rules read: the records, the pool
    and the history's holdings; each notification is pushed as its own batch."""

    def __init__(self, pools: dict[str, str]) -> None:
        self.records: dict[str, StoredIdentity] = {}
        self.history: set[Holding] = set()
        self.pools = pools

    def push(self, batch: list[pb.Notification]) -> tuple[bool, ...]:
        """Fold a batch as the receiver does; raises what fold_batch raises."""
        wanted = holdings_to_look_up(batch, self.records)
        folded = fold_batch(
            batch,
            {c: r for c, r in self.records.items()},
            self.pools,
            set(),
            registered=self.history & wanted,
        )
        self.records.update(folded.changed)
        self.history |= {h for n in batch if (h := registers(n)) is not None}
        return folded.changed_current


def _refused(tier: Tier, n: pb.Notification) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as refused:
        tier.push([n])
    assert refused.value.reason == Reason.NOT_HELD
    return refused.value


@pytest.mark.parametrize(
    "reason",
    [
        pb.CHANGE_REASON_DEATH,
        pb.CHANGE_REASON_MOVE_OUT,
        pb.CHANGE_REASON_RELOCATION,
    ],
)
def test_a_change_for_a_resident_of_another_municipality_is_refused(
    reason: pb.ChangeReason.ValueType,
) -> None:
    tier = Tier({CODE: "312011"})
    tier.push([note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")])
    before = dict(tier.records)
    refused = _refused(tier, note("312029", 1, reason, "2026-01-01"))
    assert "record.resident_code" in refused.message
    assert "is not held by 312029" in refused.message
    assert tier.records == before


def test_a_change_for_a_code_nobody_registered_is_refused() -> None:
    # Without the check an amendment would even create the record.
    tier = Tier({})
    _refused(tier, note("312029", 1, pb.CHANGE_REASON_RELOCATION, "2026-01-01"))
    assert tier.records == {}


def test_a_code_change_of_another_municipalitys_resident_is_refused() -> None:
    tier = Tier({CODE: "312011", NEW_CODE: "312029"})
    tier.push([note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")])
    change = note(
        "312029",
        1,
        pb.CHANGE_REASON_CODE_CHANGE,
        "2026-11-27",
        code=NEW_CODE,
        previous_resident_code=CODE,
    )
    refused = _refused(tier, change)
    assert "previous_resident_code" in refused.message
    assert set(tier.records) == {CODE}


def test_a_forged_entry_anywhere_in_a_batch_refuses_the_batch() -> None:
    tier = Tier({CODE: "312011", NEW_CODE: "312029"})
    tier.push([note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")])
    own = note("312029", 1, pb.CHANGE_REASON_BIRTH, "2026-01-01", code=NEW_CODE)
    forged = note("312029", 2, pb.CHANGE_REASON_DEATH, "2026-01-02")
    with pytest.raises(PermissionDenied) as refused:
        tier.push([own, forged])
    assert refused.value.message.startswith("entries[1].notification.record.resident_code")
    assert set(tier.records) == {CODE}


def test_a_municipality_changes_what_it_registered_in_the_same_batch() -> None:
    tier = Tier({CODE: "312011", NEW_CODE: "312011"})
    flags = tier.push(
        [
            note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01"),
            note("312011", 2, pb.CHANGE_REASON_RELOCATION, "2020-01-01"),
            note(
                "312011",
                3,
                pb.CHANGE_REASON_CODE_CHANGE,
                "2026-01-01",
                code=NEW_CODE,
                previous_resident_code=CODE,
            ),
            note("312011", 4, pb.CHANGE_REASON_DEATH, "2026-02-01", code=NEW_CODE),
        ]
    )
    assert flags == (True, True, True, True)
    assert tier.records[NEW_CODE].status == REMOVED


def test_no_look_up_while_the_record_is_at_the_origin() -> None:
    tier = Tier({CODE: "312011"})
    tier.push([note("312011", 1, pb.CHANGE_REASON_BIRTH, "1990-01-01")])
    own = note("312011", 2, pb.CHANGE_REASON_RELOCATION, "2026-01-01")
    other = note("131016", 1, pb.CHANGE_REASON_MOVE_OUT, "2026-01-01")
    birth = note("131016", 2, pb.CHANGE_REASON_BIRTH, "2026-01-01", code=NEW_CODE)
    assert holdings_to_look_up([own, birth], tier.records) == set()
    assert holdings_to_look_up([own, other, birth], tier.records) == {(CODE, "131016")}


def test_a_late_move_out_of_the_old_municipality_is_accepted_in_any_order() -> None:
    a = [
        note("312011", 1, pb.CHANGE_REASON_BIRTH, "1982-10-26"),
        note("312011", 2, pb.CHANGE_REASON_RELOCATION, "2020-01-01"),
        note("312011", 3, pb.CHANGE_REASON_MOVE_OUT, "2026-11-16"),
    ]
    b = [
        note("131016", 1, pb.CHANGE_REASON_MOVE_IN, "2026-11-16"),
        note("131016", 2, pb.CHANGE_REASON_RELOCATION, "2026-11-20"),
    ]
    for order in interleavings(a, b):
        tier = Tier({CODE: "312011"})
        flags = [tier.push([n])[0] for n in order]
        record = tier.records[CODE]
        assert (record.local_government_code, record.status) == ("131016", ACTIVE), order
        # 312011's late move-out only entered the history.
        if order.index(a[2]) > order.index(b[0]):
            assert flags[order.index(a[2])] is False
