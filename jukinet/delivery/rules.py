"""How an upper tier (prefecture or national) folds a notification into the
identity records it holds. Pure rules, no I/O.

Order holds per municipality only: the two halves of a move (the new
municipality's creation, the old one's removal) may arrive in either order.
The rules make both orders end in the same state:

* a creation registers the person at its origin, unless the record belongs to
  another municipality since a later effective date;
* a removal or amendment changes the record only while the record belongs to
  the municipality that sent it; otherwise it enters the history alone (a late
  move-out never removes the registration at the new municipality);
* a code change supersedes the old code (kept, pointing to the new one) and
  registers the new code under the same rule as a creation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jukinet.errors import InvalidArgument, SequenceGap
from jukinet.v1 import common_pb2
from jukinet.validation import NEW_CODE_REASONS
from jukinet.vocabulary import person_values

ACTIVE = common_pb2.RECORD_STATUS_ACTIVE
REMOVED = common_pb2.RECORD_STATUS_REMOVED
SUPERSEDED = common_pb2.RECORD_STATUS_SUPERSEDED


@dataclass(frozen=True)
class StoredIdentity:
    """One identity record as an upper tier holds it."""

    resident_code: str
    local_government_code: str
    name: str
    name_kana: str
    former_surname: str
    alias: str
    birth_date: str
    sex: common_pb2.Sex.ValueType
    address: str
    status: common_pb2.RecordStatus.ValueType
    replaced_by: str
    registered_since: str  # effective date of the creation that registered it here

    @classmethod
    def from_notification(
        cls, n: common_pb2.Notification, status: common_pb2.RecordStatus.ValueType
    ) -> StoredIdentity:
        """The record a notification carries, with ``status``, registered since its date."""
        r = n.record
        return cls(
            resident_code=r.resident_code,
            local_government_code=r.local_government_code,
            **person_values(r),
            status=status,
            replaced_by="",
            registered_since=n.effective_date,
        )

    def to_record(self) -> common_pb2.IdentityRecord:
        """The record as the wire carries it (without status and history)."""
        return common_pb2.IdentityRecord(
            resident_code=self.resident_code,
            **person_values(self),
            local_government_code=self.local_government_code,
        )


@dataclass(frozen=True)
class Decision:
    """New states to store (by code) and whether the current state changed."""

    states: tuple[StoredIdentity, ...]
    changed_current: bool


def record_after(n: common_pb2.Notification) -> StoredIdentity:
    """The record as a notification that changed it left it (a removal leaves it removed)."""
    status = REMOVED if n.kind == common_pb2.CHANGE_KIND_REMOVED else ACTIVE
    return StoredIdentity.from_notification(n, status)


def _may_register(current: StoredIdentity | None, n: common_pb2.Notification) -> bool:
    # A creation elsewhere wins only if it is not older than the registration it
    # replaces, whether that one is still active or already removed: a late
    # birth notice must not undo a later move and death somewhere else.
    if current is None or current.local_government_code == n.origin_code:
        return True
    return n.effective_date >= current.registered_since


def _belongs_to_origin(current: StoredIdentity | None, n: common_pb2.Notification) -> bool:
    return current is None or current.local_government_code == n.origin_code


def decide(states: Mapping[str, StoredIdentity], n: common_pb2.Notification) -> Decision:
    """Apply one validated notification to the stored records it touches."""
    code = n.record.resident_code
    current = states.get(code)
    if n.kind == common_pb2.CHANGE_KIND_CREATED:
        if not _may_register(current, n):
            return Decision((), False)
        return Decision((StoredIdentity.from_notification(n, ACTIVE),), True)
    if n.kind == common_pb2.CHANGE_KIND_REMOVED:
        if not _belongs_to_origin(current, n) or (current is not None and current.status != ACTIVE):
            return Decision((), False)
        base = StoredIdentity.from_notification(n, REMOVED)
        if current is not None:
            base = dataclasses.replace(base, registered_since=current.registered_since)
        return Decision((base,), True)
    if n.reason == common_pb2.CHANGE_REASON_CODE_CHANGE:
        out: list[StoredIdentity] = []
        old = states.get(n.previous_resident_code)
        if old is not None and old.local_government_code == n.origin_code and old.status == ACTIVE:
            out.append(dataclasses.replace(old, status=SUPERSEDED, replaced_by=code))
        if _may_register(current, n):
            since = old.registered_since if old is not None else n.effective_date
            out.append(
                dataclasses.replace(
                    StoredIdentity.from_notification(n, ACTIVE), registered_since=since
                )
            )
        return Decision(tuple(out), bool(out))
    # Other amendments: only while the record is registered at the origin.
    if not _belongs_to_origin(current, n) or (current is not None and current.status != ACTIVE):
        return Decision((), False)
    since = current.registered_since if current is not None else n.effective_date
    updated = dataclasses.replace(
        StoredIdentity.from_notification(n, ACTIVE), registered_since=since
    )
    return Decision((updated,), True)


@dataclass(frozen=True)
class Sequenced:
    """A batch split by the origins' cursors: the notifications to apply, in
    order, the number already applied, and each origin's cursor after it."""

    fresh: tuple[common_pb2.Notification, ...]
    duplicates: int
    cursors: dict[str, int]


def sequence(
    cursors: Mapping[str, int], notifications: Sequence[common_pb2.Notification]
) -> Sequenced:
    """Skip what was applied already, take n only after n-1, refuse a gap."""
    cursor = dict(cursors)
    fresh: list[common_pb2.Notification] = []
    duplicates = 0
    for n in notifications:
        last = cursor.get(n.origin_code, 0)
        if n.sequence <= last:
            duplicates += 1
        elif n.sequence == last + 1:
            cursor[n.origin_code] = n.sequence
            fresh.append(n)
        else:
            raise SequenceGap(n.origin_code, last + 1, n.sequence)
    return Sequenced(tuple(fresh), duplicates, cursor)


def touched_codes(notifications: Sequence[common_pb2.Notification]) -> set[str]:
    """Every resident code whose stored record these notifications may change."""
    return {n.record.resident_code for n in notifications} | {
        n.previous_resident_code for n in notifications if n.previous_resident_code
    }


def fresh_codes(notifications: Sequence[common_pb2.Notification]) -> set[str]:
    """The codes these notifications create as fresh codes (birth, entry, code change)."""
    return {n.record.resident_code for n in notifications if n.reason in NEW_CODE_REASONS}


@dataclass(frozen=True)
class Folded:
    """A batch folded into the stored records: the records to write (by code)
    and, for each notification in order, whether it changed the current record."""

    changed: dict[str, StoredIdentity]
    changed_current: tuple[bool, ...]


def fold_batch(
    fresh: Sequence[common_pb2.Notification],
    records: Mapping[str, StoredIdentity],
    pool_owners: Mapping[str, str],
    born: set[str],
) -> Folded:
    """Fold notifications (in order) into ``records``.

    A fresh code (birth, ex-officio entry, code change) must come from the
    origin's own pool (``pool_owners``: code -> municipality it was issued to);
    the prefecture and the national node both check it, so a notification the
    prefecture accepted is never refused above it (which would stall the relay
    of every municipality behind it). ``born``: codes already created fresh.
    """
    states = dict(records)
    born = set(born)
    changed: dict[str, StoredIdentity] = {}
    flags: list[bool] = []
    for i, n in enumerate(fresh):
        code = n.record.resident_code
        if n.reason in NEW_CODE_REASONS:
            field = f"entries[{i}].notification.record.resident_code"
            if pool_owners.get(code) != n.origin_code:
                raise InvalidArgument(field, f"{code} is not in the pool of {n.origin_code}")
            # A fresh code is given out once. The record may exist already
            # when another municipality's move-in overtook this creation
            # (order holds per origin only): refusing it would stall the
            # stream for ever. Only a second fresh-code creation is refused.
            if code in born:
                raise InvalidArgument(field, f"{code} is already in use")
            born.add(code)
        decision = decide(states, n)
        for record in decision.states:
            states[record.resident_code] = record
            changed[record.resident_code] = record
        flags.append(decision.changed_current)
    return Folded(changed, tuple(flags))
