"""The register's dates against the clock: one rule, applied at the municipal
node against its own date and at the upper tiers against theirs plus the clock
skew they tolerate."""

from __future__ import annotations

import datetime as dt

import pytest

from jukinet.errors import InvalidArgument
from jukinet.v1 import common_pb2
from jukinet.validation import (
    PLANNED_AHEAD,
    PLANNED_REASONS,
    REASON_KIND,
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
def test_a_receiver_checks_against_the_date_it_is_given(
    reason: C.ChangeReason.ValueType,
) -> None:
    # A receiver passes the date at its clock plus the skew it tolerates: a
    # sender past midnight while the receiver is not is inside the window.
    tomorrow = today() + DAY
    check_effective_date(
        iso(latest_effective_date(reason, tomorrow)), reason=reason, latest=tomorrow
    )
    with pytest.raises(InvalidArgument):
        check_effective_date(
            iso(latest_effective_date(reason, tomorrow) + DAY), reason=reason, latest=tomorrow
        )


def test_the_move_outs_are_the_planned_reasons() -> None:
    assert {C.CHANGE_REASON_MOVE_OUT, C.CHANGE_REASON_MOVE_ABROAD} == PLANNED_REASONS
    with pytest.raises(InvalidArgument):
        check_effective_date("1869-12-31", reason=C.CHANGE_REASON_MOVE_OUT)
