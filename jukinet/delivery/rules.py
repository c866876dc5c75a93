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
from collections.abc import Mapping
from dataclasses import dataclass

from jukinet.v1 import common_pb2

ACTIVE = common_pb2.RECORD_STATUS_ACTIVE
REMOVED = common_pb2.RECORD_STATUS_REMOVED
SUPERSEDED = common_pb2.RECORD_STATUS_SUPERSEDED


# The fields of a held record that an answer to an agency may carry, in the
# order answers list them: the identity-confirmation record and its status.
PROVIDABLE_FIELDS = (
    "resident_code",
    "name",
    "name_kana",
    "former_surname",
    "alias",
    "birth_date",
    "sex",
    "address",
    "local_government_code",
    "status",
)


@dataclass(frozen=True)
class Held:
    """One identity record as an upper tier holds it."""

    resident_code: str
    local_government_code: str
    name: str
    name_kana: str
    former_surname: str
    alias: str
    birth_date: str
    sex: int
    address: str
    status: int
    replaced_by: str
    registered_since: str  # effective date of the creation that registered it here

    @classmethod
    def from_notification(cls, n: common_pb2.Notification, status: int) -> Held:
        r = n.record
        return cls(
            resident_code=r.resident_code,
            local_government_code=r.local_government_code,
            name=r.name,
            name_kana=r.name_kana,
            former_surname=r.former_surname,
            alias=r.alias,
            birth_date=r.birth_date,
            sex=r.sex,
            address=r.address,
            status=status,
            replaced_by="",
            registered_since=n.effective_date,
        )

    def to_record(self) -> common_pb2.IdentityRecord:
        return common_pb2.IdentityRecord(
            resident_code=self.resident_code,
            name=self.name,
            name_kana=self.name_kana,
            former_surname=self.former_surname,
            alias=self.alias,
            birth_date=self.birth_date,
            sex=self.sex,  # type: ignore[arg-type]
            address=self.address,
            local_government_code=self.local_government_code,
        )


@dataclass(frozen=True)
class Decision:
    """New states to store (by code) and whether the current state changed."""

    states: tuple[Held, ...]
    changed_current: bool


def _may_register(current: Held | None, n: common_pb2.Notification) -> bool:
    # A creation elsewhere wins only if it is not older than the registration it
    # replaces, whether that one is still active or already removed: a late
    # birth notice must not undo a later move and death somewhere else.
    if current is None or current.local_government_code == n.origin_code:
        return True
    return n.effective_date >= current.registered_since


def _belongs_to_origin(current: Held | None, n: common_pb2.Notification) -> bool:
    return current is None or current.local_government_code == n.origin_code


def decide(states: Mapping[str, Held], n: common_pb2.Notification) -> Decision:
    """Apply one validated notification to the held states it touches."""
    code = n.record.resident_code
    current = states.get(code)
    if n.kind == common_pb2.CHANGE_KIND_CREATED:
        if not _may_register(current, n):
            return Decision((), False)
        return Decision((Held.from_notification(n, ACTIVE),), True)
    if n.kind == common_pb2.CHANGE_KIND_REMOVED:
        if not _belongs_to_origin(current, n) or (current is not None and current.status != ACTIVE):
            return Decision((), False)
        base = Held.from_notification(n, REMOVED)
        if current is not None:
            base = dataclasses.replace(base, registered_since=current.registered_since)
        return Decision((base,), True)
    if n.reason == common_pb2.CHANGE_REASON_CODE_CHANGE:
        out: list[Held] = []
        old = states.get(n.previous_resident_code)
        if old is not None and old.local_government_code == n.origin_code and old.status == ACTIVE:
            out.append(dataclasses.replace(old, status=SUPERSEDED, replaced_by=code))
        if _may_register(current, n):
            since = old.registered_since if old is not None else n.effective_date
            out.append(
                dataclasses.replace(Held.from_notification(n, ACTIVE), registered_since=since)
            )
        return Decision(tuple(out), bool(out))
    # Other amendments: only while the record is registered at the origin.
    if not _belongs_to_origin(current, n) or (current is not None and current.status != ACTIVE):
        return Decision((), False)
    since = current.registered_since if current is not None else n.effective_date
    updated = dataclasses.replace(Held.from_notification(n, ACTIVE), registered_since=since)
    return Decision((updated,), True)
