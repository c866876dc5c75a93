"""Verify an operation log end to end, and witness the heads of a log below.

Pure functions over the rows as stored (:class:`Row`) and the heads as
notes. :func:`verify_log` walks the rows in index order, rebuilding the tree,
and reports the first problem (:class:`Problem`), by the first entry it
concerns:

- **altered**: a row that disagrees with itself (its columns are not the
  entry its canonical bytes hold, or its leaf hash is not theirs); or a row
  rewritten so that it agrees with itself, which the next entry shows,
  having recorded a different tree before it (entry ``index`` is then the
  row before that one). When only a signed head shows it (the rows from some
  entry on were rewritten, chain and all), the problem has an ``until``: the
  first altered entry is among ``index`` to ``until - 1``, ``index`` being
  the size of the last head that still matches. Heads signed more often
  narrow that range; a head per entry makes it exact.
- **removed**: the entry of index ``index`` is missing: its index is absent
  from the rows, or the rows after it were renumbered (the next row holds
  entry ``index + 1``), or the log is shorter than a head signed for it.
- **inserted**: the row at ``index`` is not in the chain, and without it the
  next row is entry ``index`` again; or rows stand beyond the size the log
  recorded.
- **reordered**: the rows hold each entry exactly once but not in order; the
  row at ``index`` holds another entry, and entry ``index`` is elsewhere.
- **bad-head**: a head that is not signed by the log's key (or, held
  upstream, cosigned by none of the witnesses given).

The heads held upstream (each with the witnesses' cosignatures) are what a
whole rewrite re-signed with the node's own key cannot change: the first of
them that no longer matches names the range.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from jukinet.oplog import entry as entries
from jukinet.oplog import merkle, note
from jukinet.oplog.entry import Entry, EntryError, Operation
from jukinet.oplog.merkle import Frontier, ProofError

ALTERED = "altered"
REMOVED = "removed"
INSERTED = "inserted"
REORDERED = "reordered"
BAD_HEAD = "bad-head"
_FIELDS = ("time", "operator", "terminal", "operation", "resident_codes", "outcome", "reason")


class WitnessError(ValueError):
    """A new head a witness refuses to cosign."""


@dataclass(frozen=True)
class Row:
    """One row of ``oplog_entries`` as stored, every column as it reads."""

    idx: int
    recorded_us: int
    operator: str
    terminal: str
    operation: str
    resident_codes: str
    outcome: str
    reason: str
    prev_root: bytes
    entry: bytes
    leaf_hash: bytes


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a log: what, at which entry, and why."""

    kind: str
    index: int
    detail: str
    until: int | None = None

    def __str__(self) -> str:
        """The problem in one line."""
        where = f"entry {self.index}"
        if self.until is not None and self.until > self.index + 1:
            where = f"entries {self.index} to {self.until - 1}"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification: the tree the rows make, and the first problem."""

    size: int
    root: bytes
    problem: Problem | None

    @property
    def ok(self) -> bool:
        """Whether nothing was found wrong."""
        return self.problem is None


@dataclass(frozen=True)
class _Target:
    size: int
    root: bytes
    what: str


def verify_log(
    rows: Sequence[Row],
    heads: Sequence[note.Note],
    log: note.Verifier,
    *,
    state: Frontier | None = None,
    upstream: Sequence[note.Note] = (),
    witnesses: Sequence[note.Verifier] = (),
) -> Verdict:
    """Check the rows, the log's own heads, its recorded size and the heads held upstream."""
    targets: list[_Target] = []
    for signed in heads:
        problem = _head_target(signed, log, (), "the log's own head", targets)
        if problem is not None:
            return Verdict(0, merkle.EMPTY_ROOT, problem)
    for signed in upstream:
        problem = _head_target(signed, log, witnesses, "the head held upstream", targets)
        if problem is not None:
            return Verdict(0, merkle.EMPTY_ROOT, problem)
    if state is not None:
        targets.append(_Target(state.size, state.root(), "the log's recorded size and root"))
    return _walk(rows, targets, None if state is None else state.size)


def _head_target(
    signed: note.Note,
    log: note.Verifier,
    witnesses: Sequence[note.Verifier],
    what: str,
    targets: list[_Target],
) -> Problem | None:
    try:
        note.verify_note(signed, log)
        checkpoint = note.parse_checkpoint(signed.text)
    except note.NoteError as exc:
        return Problem(BAD_HEAD, 0, f"{what} does not verify: {exc}")
    if checkpoint.origin != log.name:
        return Problem(BAD_HEAD, checkpoint.size, f"{what} is of another log")
    if witnesses and not note.cosigners(signed, witnesses):
        return Problem(BAD_HEAD, checkpoint.size, f"{what} is cosigned by none of the witnesses")
    targets.append(_Target(checkpoint.size, checkpoint.root, f"{what} of size {checkpoint.size}"))
    return None


def _walk(rows: Sequence[Row], targets: Sequence[_Target], recorded: int | None) -> Verdict:
    decoded = [_decode(r.entry) for r in rows]
    by_size: dict[int, list[_Target]] = {}
    for t in targets:
        by_size.setdefault(t.size, []).append(t)
    previous, frontier, confirmed = Frontier(), Frontier(), 0
    for p, row in enumerate(rows):
        problem = _row_problem(p, rows, decoded, frontier, previous)
        if problem is not None:
            return Verdict(frontier.size, frontier.root(), problem)
        previous, frontier = frontier, frontier.append(row.leaf_hash)
        mismatch = _mismatch(by_size.get(frontier.size, ()), frontier, confirmed)
        if mismatch is not None:
            return Verdict(frontier.size, frontier.root(), mismatch)
        if frontier.size in by_size:
            confirmed = frontier.size
    beyond = [t for t in targets if t.size > len(rows)]
    if beyond:
        t = min(beyond, key=lambda t: t.size)
        detail = f"{t.what} covers {t.size} entries; the rows hold {len(rows)}"
        return Verdict(frontier.size, frontier.root(), Problem(REMOVED, len(rows), detail))
    if recorded is not None and recorded < len(rows):
        detail = f"the log recorded {recorded} entries; rows stand beyond them"
        return Verdict(frontier.size, frontier.root(), Problem(INSERTED, recorded, detail))
    return Verdict(frontier.size, frontier.root(), None)


def _mismatch(targets: Sequence[_Target], frontier: Frontier, confirmed: int) -> Problem | None:
    for t in targets:
        if t.root != frontier.root():
            detail = (
                f"the rows from entry {confirmed} on were rewritten: the tree of "
                f"{t.size} entries differs from {t.what}"
            )
            return Problem(ALTERED, confirmed, detail, until=t.size)
    return None


def _decode(data: bytes) -> Entry | None:
    try:
        return entries.decode(data)
    except EntryError:
        return None


def _row_problem(
    p: int,
    rows: Sequence[Row],
    decoded: Sequence[Entry | None],
    frontier: Frontier,
    previous: Frontier,
) -> Problem | None:
    row = rows[p]
    if row.idx > p:
        return Problem(REMOVED, p, f"no row has index {p}; the next is {row.idx}")
    fault = self_fault(row, decoded[p])
    if fault is not None:
        return Problem(ALTERED, p, fault)
    if _fits(p, p, decoded, rows, frontier):
        return None
    return _misplaced(p, rows, decoded, frontier, previous)


def _misplaced(
    p: int,
    rows: Sequence[Row],
    decoded: Sequence[Entry | None],
    frontier: Frontier,
    previous: Frontier,
) -> Problem:
    declared = [d.index if d is not None else -1 for d in decoded]
    here = declared[p]
    if here != p and sorted(declared) == list(range(len(rows))):
        where = declared.index(p)
        return Problem(REORDERED, p, f"the row at {p} holds entry {here}; entry {p} is at {where}")
    if _fits(p + 1, p, decoded, rows, frontier):
        detail = f"the row at {p} is not in the chain; the next row is entry {p}"
        return Problem(INSERTED, p, detail)
    if p > 0 and _fits(p, p - 1, decoded, rows, previous):
        detail = f"the row at {p - 1} is not in the chain; the row at {p} is entry {p - 1}"
        return Problem(INSERTED, p - 1, detail)
    if here == p:
        culprit = max(p - 1, 0)
        detail = f"entry {p} recorded another tree before it: entry {culprit} was rewritten"
        return Problem(ALTERED, culprit, detail)
    if p not in declared:
        return Problem(REMOVED, p, f"no row holds entry {p}; the row at {p} holds entry {here}")
    return Problem(INSERTED, p, f"the row at {p} holds entry {here}, out of place")


def _fits(
    q: int, position: int, decoded: Sequence[Entry | None], rows: Sequence[Row], tree: Frontier
) -> bool:
    """Whether row ``q`` is, whole and consistent, the entry at ``position`` after ``tree``."""
    if q >= len(rows):
        return False
    d = decoded[q]
    return (
        d is not None
        and self_fault(rows[q], d) is None
        and d.index == position
        and d.prev_root == tree.root()
    )


def self_fault(row: Row, decoded: Entry | None) -> str | None:
    """What makes a row disagree with itself, or None: bytes, columns and leaf hash agree."""
    if decoded is None:
        return "its logged bytes are not a canonical entry"
    if merkle.leaf_hash(row.entry) != row.leaf_hash:
        return "its leaf hash is not the hash of its logged bytes"
    try:
        # A provision's id, purpose, result and fields, and a relayed envelope's
        # header, live in the logged bytes only (the provision table is their
        # queryable copy).
        from_columns = _columns_entry(row, decoded.index, decoded.operation)
    except EntryError as exc:
        return f"its columns are not an entry ({exc})"
    if entries.encode(from_columns) != row.entry:
        return f"its {_differing(from_columns, decoded)} differ from its logged bytes"
    return None


def _columns_entry(row: Row, index: int, logged: Operation) -> Entry:
    codes = tuple(row.resident_codes.split(",")) if row.resident_codes else ()
    operation = Operation(
        time=entries.time_from_us(row.recorded_us),
        operator=row.operator,
        terminal=row.terminal,
        operation=row.operation,
        resident_codes=codes,
        outcome=row.outcome,
        reason=row.reason,
        provision=logged.provision,
        relay=logged.relay,
    )
    return Entry(index, operation, row.prev_root)


def _differing(a: Entry, b: Entry) -> str:
    fields = [name for name in _FIELDS if getattr(a.operation, name) != getattr(b.operation, name)]
    if a.prev_root != b.prev_root:
        fields.append("prev_root")
    return " and ".join(fields) + " columns" if fields else "columns"


def witness(
    held: note.Checkpoint | None,
    signed: note.Note,
    proof: Sequence[bytes],
    log: note.Verifier,
    signer: note.Signer,
    timestamp: int,
) -> note.Signature:
    """The cosignature of a new head of ``log``, consistent with the head ``held`` before.

    The first head of a log is taken as it comes (there is nothing to check
    it against); every later one must be signed by the log's key, at least as
    large as the one held, and proven to extend it.
    """
    try:
        note.verify_note(signed, log)
        checkpoint = note.parse_checkpoint(signed.text)
    except note.NoteError as exc:
        raise WitnessError(f"the head does not verify: {exc}") from None
    if checkpoint.origin != log.name:
        raise WitnessError(f"the head is of {checkpoint.origin!r}, not of {log.name!r}")
    if held is not None:
        _check_extends(held, checkpoint, proof)
    return note.cosign(signed.text, signer, timestamp)


def _check_extends(held: note.Checkpoint, new: note.Checkpoint, proof: Sequence[bytes]) -> None:
    if held.origin != new.origin:
        raise WitnessError("the head held is of another log")
    if new.size < held.size:
        raise WitnessError(f"the head of size {new.size} is older than the one held ({held.size})")
    try:
        merkle.verify_consistency(held.size, new.size, held.root, new.root, proof)
    except ProofError as exc:
        raise WitnessError(f"the head does not extend the one held: {exc}") from None


def unix_seconds(now: dt.datetime) -> int:
    """A time as POSIX seconds, as a cosignature carries it."""
    return int(now.timestamp())
