"""A provision's entry: the ``provision`` key is present only in provision entries,
in one shape, and the verifier checks such entries like any other."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from jukinet.oplog import entry as entries
from jukinet.oplog import merkle, note
from jukinet.oplog.entry import Entry, EntryError, Operation, Provided
from jukinet.oplog.log import entry_rows
from jukinet.oplog.merkle import Frontier
from jukinet.oplog.verify import ALTERED, Row, verify_log

T0 = dt.datetime(2026, 4, 1, 9, 30, 0, 123456, tzinfo=dt.UTC)
PROVIDED = Provided("ab" * 16, "NENKIN-EXISTENCE-CHECK", "match", ("name", "address"))


def provision(code: str = "24727059608") -> Operation:
    return Operation(
        T0, "jukinet://agency/nenkin", "jukinet://gateway", "verify", (code,), "ok", "", PROVIDED
    )


def test_an_entry_without_a_provision_keeps_its_bytes() -> None:
    plain = Operation(T0, "op", "t", "GetResident", ("24727059608",), "ok")
    data = entries.encode(Entry(0, plain, merkle.EMPTY_ROOT))
    assert b"provision" not in data
    assert entries.decode(data).operation == plain


def test_a_provision_entry_round_trips_and_is_canonical() -> None:
    data = entries.encode(Entry(3, provision(), merkle.EMPTY_ROOT))
    doc = json.loads(data)
    assert doc["provision"] == {
        "id": PROVIDED.provision_id,
        "purpose": PROVIDED.purpose,
        "result": "match",
        "fields": ["name", "address"],
    }
    assert entries.decode(data).operation == provision()


@pytest.mark.parametrize(
    "shape",
    [
        {},  # an empty provision is no provision: the key is absent then
        {"id": "x", "purpose": "p", "result": "match"},  # a key missing
        {"id": "x", "purpose": "p", "result": "match", "fields": [], "extra": 1},
        {"id": "x", "purpose": "p", "result": "match", "fields": "name"},
        {"id": "", "purpose": "p", "result": "match", "fields": []},
        None,
    ],
)
def test_any_other_shape_of_the_provision_key_is_refused(shape: object) -> None:
    doc = json.loads(entries.encode(Entry(0, provision(), merkle.EMPTY_ROOT)))
    doc["provision"] = shape
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    with pytest.raises(EntryError):
        entries.decode(data)


def rows_of(operations: list[Operation]) -> list[Row]:
    _, rows, _ = entry_rows(Frontier(), operations)
    return [Row(**{k: v for k, v in r.items()}) for r in rows]  # type: ignore[arg-type]


def test_the_verifier_checks_provision_entries_and_names_an_altered_one() -> None:
    log = note.Signer.generate("jukinet/national")
    rows = rows_of([provision(), provision("12345678903")])
    assert verify_log(rows, [], log.verifier).ok
    # The purpose rewritten in the bytes, leaf hash recomputed: the chain shows it.
    doc = json.loads(rows[0].entry)
    doc["provision"]["purpose"] = "MOFA-PASSPORT-ISSUE"
    forged = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    rows[0] = Row(**{**rows[0].__dict__, "entry": forged, "leaf_hash": merkle.leaf_hash(forged)})
    verdict = verify_log(rows, [], log.verifier)
    assert verdict.problem is not None
    assert (verdict.problem.kind, verdict.problem.index) == (ALTERED, 0)
