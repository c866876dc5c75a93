"""The register's dates against the clock: one rule, applied at the municipal
node with no tolerance and at the upper tiers with UPPER_TIER_TOLERANCE."""

from __future__ import annotations

import datetime as dt

import pytest

from jukinet.errors import InvalidArgument
from jukinet.v1 import common_pb2
from jukinet.validation import (
    NO_TOLERANCE,
    PLANNED_AHEAD,
    PLANNED_REASONS,
    REASON_KIND,
    UPPER_TIER_TOLERANCE,
    check_effective_date,
    latest_effective_date,
    today,
)

C = common_pb2
DAY = dt.timedelta(days=1)


def iso(date: dt.date) -> str:
    """``date`` as YYYY-MM-DD."""
    return date.isoformat()


@pytest.mark.parametrize("reason", sorted(REASON_KIND))
def test_only_a_move_out_is_dated_ahead(reason: C.ChangeReason.ValueType) -> None:
    latest = latest_effective_date(reason)
    assert latest == today() + (PLANNED_AHEAD if reason in PLANNED_REASONS else dt.timedelta(0))
    check_effective_date(iso(latest), reason=reason)
    with pytest.raises(InvalidArgument) as info:
        check_effective_date(iso(latest + DAY), reason=reason)
    assert info.value.field == "effective_date"
    expected = "days ahead" if reason in PLANNED_REASONS else "in the future"
    assert expected in info.value.problem


@pytest.mark.parametrize("reason", sorted(REASON_KIND))
def test_what_a_municipality_accepts_is_accepted_above(
    reason: C.ChangeReason.ValueType,
) -> None:
    # The latest date a municipality whose date is a day ahead accepts is
    # still inside the upper tier's window; two days ahead is not.
    municipal_latest = latest_effective_date(reason, NO_TOLERANCE) + DAY
    check_effective_date(iso(municipal_latest), reason=reason, tolerance=UPPER_TIER_TOLERANCE)
    with pytest.raises(InvalidArgument):
        check_effective_date(
            iso(municipal_latest + DAY), reason=reason, tolerance=UPPER_TIER_TOLERANCE
        )


def test_the_move_outs_are_the_planned_reasons() -> None:
    assert {C.CHANGE_REASON_MOVE_OUT, C.CHANGE_REASON_MOVE_ABROAD} == PLANNED_REASONS
    with pytest.raises(InvalidArgument):
        check_effective_date("1869-12-31", reason=C.CHANGE_REASON_MOVE_OUT)
