"""The national node receives the notifications of several municipalities in one
batch (a prefecture relays them in the order it applied them): the two halves of
a move may arrive in one batch, the new municipality's move-in first."""

from __future__ import annotations

from jukinet.delivery.rules import ACTIVE
from jukinet.v1 import common_pb2 as pb
from tests.unit.test_delivery_rules import CODE, Tier, interleavings, note


def test_a_late_move_out_relayed_in_the_batch_of_the_move_in_is_accepted() -> None:
    a = [
        note("312011", 1, pb.CHANGE_REASON_BIRTH, "1982-10-26"),
        note("312011", 2, pb.CHANGE_REASON_MOVE_OUT, "2026-11-16"),
    ]
    b = [
        note("312029", 1, pb.CHANGE_REASON_MOVE_IN, "2026-11-16"),
        note("312029", 2, pb.CHANGE_REASON_RELOCATION, "2026-11-20"),
    ]
    for order in interleavings(a[1:], b):
        tier = Tier({CODE: "312011"})
        tier.push(a[:1])  # the birth, applied long before
        tier.push(list(order))  # the rest relayed in one batch
        record = tier.records[CODE]
        assert (record.local_government_code, record.status) == ("312029", ACTIVE), order
