"""The register-only items' vocabulary and checks (no I/O)."""

from __future__ import annotations

import pytest

from jukinet.errors import InvalidArgument
from jukinet.v1 import municipal_pb2
from services.municipal.logic import RELATIONSHIP_LABELS, check_register, check_relationship


def test_every_relationship_has_its_label() -> None:
    values = set(municipal_pb2.Relationship.values())
    assert set(RELATIONSHIP_LABELS) == values
    labelled = [v for v in values if v != municipal_pb2.RELATIONSHIP_UNSPECIFIED]
    assert all(RELATIONSHIP_LABELS[v] for v in labelled)
    assert len({RELATIONSHIP_LABELS[v] for v in labelled}) == len(labelled)
    assert RELATIONSHIP_LABELS[municipal_pb2.RELATIONSHIP_HEAD] == "世帯主"


def test_unknown_relationship_is_refused_with_its_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_relationship(999, "register.relationship")
    assert info.value.field == "register.relationship"


def test_a_domestic_move_in_defaults_its_previous_address() -> None:
    items = check_register(municipal_pb2.RegisterItems(), default_previous="鳥取県米子市1番地")
    assert items.previous_address == "鳥取県米子市1番地"
    given = check_register(
        municipal_pb2.RegisterItems(previous_address="大阪府大阪市2番地"),
        default_previous="鳥取県米子市1番地",
    )
    assert given.previous_address == "大阪府大阪市2番地"
    with pytest.raises(InvalidArgument) as info:
        check_register(municipal_pb2.RegisterItems(previous_address="x"), previous_address=False)
    assert info.value.field == "register.previous_address"
