"""The verifier on rows built in memory: how each kind of tampering is told apart."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from jukinet.oplog import entry as entries
from jukinet.oplog import merkle, note
from jukinet.oplog.entry import Entry, Operation
from jukinet.oplog.merkle import Frontier
from jukinet.oplog.verify import Row, WitnessError, verify_log, witness

ORIGIN = "jukinet/municipality/131016"
LOG = note.Signer.generate(ORIGIN)
T0 = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)


def op(i: int) -> Operation:
    return Operation(T0, f"op-{i}", "131016/t2", "read-resident", (f"{i:011d}",), "ok")


def row(index: int, operation: Operation, prev: bytes) -> Row:
    data = entries.encode(Entry(index, operation, prev))
    return Row(
        idx=index,
        recorded_us=operation.time_us,
        operator=operation.operator,
        terminal=operation.terminal,
        operation=operation.operation,
        resident_codes=",".join(operation.resident_codes),
        outcome=operation.outcome,
        reason=operation.reason,
        prev_root=prev,
        entry=data,
        leaf_hash=merkle.leaf_hash(data),
    )


def chain(ops: list[Operation]) -> tuple[list[Row], Frontier]:
    rows, frontier = [], Frontier()
    for i, o in enumerate(ops):
        rows.append(row(i, o, frontier.root()))
        frontier = frontier.append(rows[-1].leaf_hash)
    return rows, frontier


def head(frontier: Frontier, signer: note.Signer = LOG) -> note.Note:
    return note.sign_note(note.Checkpoint(ORIGIN, frontier.size, frontier.root()).text(), signer)


def test_an_extra_row_after_the_genuine_one_is_named_at_its_place() -> None:
    rows, _ = chain([op(i) for i in range(6)])
    genuine = rows[:4]
    frontier = Frontier()
    for r in genuine:
        frontier = frontier.append(r.leaf_hash)
    extra = row(4, op(77), frontier.root())
    shifted = [dataclasses.replace(r, idx=r.idx + 1) for r in rows[4:]]
    problem = verify_log([*genuine, extra, *shifted], [], LOG.verifier).problem
    assert problem is not None and (problem.kind, problem.index) == ("inserted", 4)


def test_a_fake_row_appended_beyond_the_recorded_size_is_named() -> None:
    _, state = chain([op(i) for i in range(4)])
    more, _ = chain([op(i) for i in range(5)])
    problem = verify_log(more, [head(state)], LOG.verifier, state=state).problem
    assert problem is not None and (problem.kind, problem.index) == ("inserted", 4)


def test_a_head_not_signed_by_the_log_key_is_reported() -> None:
    rows, state = chain([op(i) for i in range(3)])
    forged = head(state, note.Signer.generate(ORIGIN))
    problem = verify_log(rows, [forged], LOG.verifier).problem
    assert problem is not None and problem.kind == "bad-head"


def test_an_upstream_head_without_the_witness_cosignature_is_reported() -> None:
    rows, state = chain([op(i) for i in range(3)])
    w = note.Signer.generate("jukinet/prefecture/13", note.COSIGNATURE_V1)
    held = [head(state)]
    problem = verify_log(rows, [], LOG.verifier, upstream=held, witnesses=[w.verifier]).problem
    assert problem is not None and problem.kind == "bad-head"
    assert "cosigned by none" in problem.detail


def test_a_last_row_rewritten_is_bounded_by_the_last_head_that_matches() -> None:
    rows, state = chain([op(i) for i in range(5)])
    before, _ = chain([op(i) for i in range(4)])
    four = Frontier()
    for r in before:
        four = four.append(r.leaf_hash)
    rows[4] = row(4, op(55), rows[4].prev_root)
    problem = verify_log(rows, [], LOG.verifier, state=state).problem
    assert problem is not None and (problem.kind, problem.index, problem.until) == ("altered", 0, 5)
    assert str(problem).startswith("altered: entries 0 to 4:")
    problem = verify_log(rows, [head(four)], LOG.verifier, state=state).problem
    assert problem is not None and (problem.kind, problem.index, problem.until) == ("altered", 4, 5)
    assert str(problem).startswith("altered: entry 4:")


def test_the_witness_refuses_an_older_head_and_another_log() -> None:
    _, small = chain([op(i) for i in range(2)])
    _, large = chain([op(i) for i in range(3)])
    w = note.Signer.generate("jukinet/prefecture/13", note.COSIGNATURE_V1)
    held = note.parse_checkpoint(head(large).text)
    with pytest.raises(WitnessError, match="older"):
        witness(held, head(small), [], LOG.verifier, w, 1)
    other = note.Signer.generate("jukinet/municipality/999999")
    with pytest.raises(WitnessError, match="does not verify"):
        witness(None, head(small), [], other.verifier, w, 1)
    first = witness(None, head(small), [], LOG.verifier, w, 1)
    assert note.verify_cosignature(head(small).with_signature(first), w.verifier) == 1
