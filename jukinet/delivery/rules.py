"""How an upper tier (prefecture or national) folds a notification into the
identity records it holds. Pure rules, no I/O.

Order holds per municipality only: the two halves of a move (the new
municipality's creation, the old one's removal) may arrive in either order,
and streams of different municipalities interleave differently at the
prefecture and at the national node. The rules make every such order end in
the state of the municipality that registers the resident last.

Ordering by cause. Each stored record keeps what its state is known to follow
(:data:`Follows`): per origin, the highest sequence of that origin's stream
that the state comes after. A notification (origin O, sequence n) follows
O's own earlier notifications and, for a domestic move-in, the old
municipality's move-out that its certificate names, (I, move_out_sequence s).
Whatever a state follows, it follows transitively; so:

* a notification is *stale* for a record whose state already follows (O, m)
  with m >= n: the state is the result of something that came after it. It
  enters the history alone, and the record learns what it followed (a stale
  move-in's certificate, for instance);
* a creation registers the person at its origin when the record does not
  exist or is at that origin, or when it follows the record's state: every
  entry of the state's :data:`Follows` is covered by (O, n - 1) and (I, s).
  It is *overtaken*, and enters the history alone, when the state follows a
  later notification of the certificate's issuer than s (the person came back
  to I after the move-out this creation rests on). Where neither is known (no
  certificate: a move from abroad with a former code; a record stored before
  states kept what they follow; a chain of moves whose middle has not arrived
  yet), a creation elsewhere registers the person only if its effective date
  is not older than the registration it replaces, active or removed (a late
  notice must not undo a later move and death somewhere else). Among two or
  three municipalities every order ends as the registers say; a chain through
  four or more on one effective date whose middle lags behind both ends can
  still be decided wrongly by the date;
* a creation with a fresh code (birth, ex-officio entry, the new code of a
  code change) is the first event of that code: when the record exists
  already, a later change of another municipality overtook it, and it enters
  the history alone;
* a removal or amendment changes the record only while the record belongs to
  the municipality that sent it; otherwise it enters the history alone (a late
  move-out never removes the registration at the new municipality);
* a code change supersedes the old code (kept, pointing to the new one) and
  registers the new code, which follows everything the old one followed.

A state that replaces another follows everything the replaced one followed,
and its own notification (with the certificate's move-out, if any).

Before any of that, a removal, amendment or code change must come from a
municipality that holds the resident (:func:`check_held`): one that registered
the code by its own earlier notification. The old municipality of a move still
holds it, so its late move-out is accepted (and only enters the history).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from jukinet.errors import InvalidArgument, PermissionDenied, SequenceGap
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2
from jukinet.validation import NEW_CODE_REASONS
from jukinet.vocabulary import person_values

ACTIVE = common_pb2.RECORD_STATUS_ACTIVE
REMOVED = common_pb2.RECORD_STATUS_REMOVED
SUPERSEDED = common_pb2.RECORD_STATUS_SUPERSEDED

Follows = tuple[tuple[str, int], ...]
"""What a stored state is known to follow: (origin, highest sequence) pairs,
sorted by origin, one per origin. Empty for a state that knows nothing (a
record stored before states kept it)."""


def follows_of(follows: Follows, origin: str) -> int:
    """The highest sequence of ``origin`` that ``follows`` names (0: none)."""
    for o, s in follows:
        if o == origin:
            return s
    return 0


def merge_follows(*parts: Follows) -> Follows:
    """Everything the parts follow: per origin, the highest sequence."""
    out: dict[str, int] = {}
    for part in parts:
        for o, s in part:
            if s > out.get(o, 0):
                out[o] = s
    return tuple(sorted(out.items()))


def certificate_link(n: common_pb2.Notification) -> tuple[str, int] | None:
    """The move-out a creation rests on, (issuer, move-out sequence), as its
    move-out certificate names it; None without a readable certificate for this
    code from another municipality. The certificate's signature is checked
    before the rules run; bytes that do not parse only lose the link."""
    if n.kind != common_pb2.CHANGE_KIND_CREATED or not n.HasField("move_out_certificate"):
        return None
    raw = n.move_out_certificate.certificate
    if not raw:
        return None
    try:
        certificate = common_pb2.MoveOutCertificate.FromString(raw)
    except (DecodeError, ValueError):
        return None
    issuer = certificate.issuing_local_government_code
    if (
        not issuer
        or issuer == n.origin_code
        or certificate.move_out_sequence <= 0
        or certificate.resident_code != n.record.resident_code
    ):
        return None
    return (issuer, int(certificate.move_out_sequence))


def known_past(n: common_pb2.Notification) -> Follows:
    """What the state a notification leaves follows of its own: the notification
    itself and, for a domestic move-in, the move-out its certificate names."""
    own: Follows = ((n.origin_code, n.sequence),)
    link = certificate_link(n)
    return own if link is None else merge_follows(own, (link,))


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
    follows: Follows = ()  # what the state is known to follow (see the module docstring)

    @classmethod
    def from_notification(
        cls, n: common_pb2.Notification, status: common_pb2.RecordStatus.ValueType
    ) -> StoredIdentity:
        """The record a notification carries, with ``status``, registered since its
        date, following what the notification itself follows."""
        r = n.record
        return cls(
            resident_code=r.resident_code,
            local_government_code=r.local_government_code,
            **person_values(r),
            status=status,
            replaced_by="",
            registered_since=n.effective_date,
            follows=known_past(n),
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


def is_stale(current: StoredIdentity, n: common_pb2.Notification) -> bool:
    """Whether the record's state already follows this notification of its origin."""
    return follows_of(current.follows, n.origin_code) >= n.sequence


def _absorb(current: StoredIdentity, n: common_pb2.Notification) -> Decision:
    # The notification enters the history alone; the record learns what it
    # followed, which the state follows too (the state came after it).
    learned = dataclasses.replace(current, follows=merge_follows(current.follows, known_past(n)))
    return Decision((learned,) if learned != current else (), False)


def _replacing(current: StoredIdentity | None, new: StoredIdentity) -> StoredIdentity:
    # A state that replaces another follows everything the other followed.
    before = current.follows if current is not None else ()
    return dataclasses.replace(new, follows=merge_follows(before, new.follows))


def _may_register(current: StoredIdentity | None, n: common_pb2.Notification) -> bool:
    if current is None or current.local_government_code == n.origin_code:
        # Not stale, so after everything the state follows of its own origin.
        return True
    link = certificate_link(n)
    if current.follows:
        covered = merge_follows(((n.origin_code, n.sequence - 1),), (link,) if link else ())
        if all(follows_of(covered, o) >= s for o, s in current.follows):
            return True  # the state is in this creation's past
        if link is not None and follows_of(current.follows, link[0]) > link[1]:
            return False  # overtaken: the person came back to the issuer afterwards
    # No causal link known: a creation elsewhere wins only if it is not older
    # than the registration it replaces, whether that one is still active or
    # already removed.
    return n.effective_date >= current.registered_since


def _belongs_to_origin(current: StoredIdentity | None, n: common_pb2.Notification) -> bool:
    return current is None or current.local_government_code == n.origin_code


def decide(states: Mapping[str, StoredIdentity], n: common_pb2.Notification) -> Decision:
    """Apply one validated notification to the stored records it touches."""
    if n.reason == common_pb2.CHANGE_REASON_CODE_CHANGE:
        return _change_code(states, n)
    current = states.get(n.record.resident_code)
    if current is not None and (
        is_stale(current, n)
        or (n.kind == common_pb2.CHANGE_KIND_CREATED and n.reason in NEW_CODE_REASONS)
    ):
        return _absorb(current, n)
    if n.kind == common_pb2.CHANGE_KIND_CREATED:
        if not _may_register(current, n):
            return Decision((), False)
        return Decision((_replacing(current, StoredIdentity.from_notification(n, ACTIVE)),), True)
    # A removal or an amendment: only while the record is registered at the origin.
    if not _belongs_to_origin(current, n) or (current is not None and current.status != ACTIVE):
        return Decision((), False)
    status = REMOVED if n.kind == common_pb2.CHANGE_KIND_REMOVED else ACTIVE
    since = current.registered_since if current is not None else n.effective_date
    updated = _replacing(
        current,
        dataclasses.replace(StoredIdentity.from_notification(n, status), registered_since=since),
    )
    return Decision((updated,), True)


def _change_code(states: Mapping[str, StoredIdentity], n: common_pb2.Notification) -> Decision:
    code = n.record.resident_code
    old = states.get(n.previous_resident_code)
    current = states.get(code)
    out: list[StoredIdentity] = []
    superseded = (
        old is not None
        and old.local_government_code == n.origin_code
        and old.status == ACTIVE
        and not is_stale(old, n)
    )
    if old is not None and superseded:
        out.append(
            _replacing(
                old,
                dataclasses.replace(
                    old, follows=known_past(n), status=SUPERSEDED, replaced_by=code
                ),
            )
        )
    # The new code continues the old one's life: it follows what the old one did.
    inherited = merge_follows(old.follows if old is not None else (), known_past(n))
    if current is None:
        since = old.registered_since if old is not None else n.effective_date
        created = dataclasses.replace(
            StoredIdentity.from_notification(n, ACTIVE), registered_since=since, follows=inherited
        )
        return Decision((*out, created), True)
    # The new code is fresh: a stored record of it came after this change.
    learned = dataclasses.replace(current, follows=merge_follows(current.follows, inherited))
    if learned != current:
        out.append(learned)
    return Decision(tuple(out), superseded)


# -- who holds a resident -------------------------------------------------------

Holding = tuple[str, str]
"""(resident code, municipality): the municipality registered that code."""


def acted_on(n: common_pb2.Notification) -> str | None:
    """The code a removal, amendment or code change acts on (a code change acts on
    its previous code); None for a creation, which follows its own rules."""
    if n.kind == common_pb2.CHANGE_KIND_CREATED:
        return None
    if n.reason == common_pb2.CHANGE_REASON_CODE_CHANGE:
        return n.previous_resident_code
    return n.record.resident_code


def registers(n: common_pb2.Notification) -> Holding | None:
    """What a notification registers at its origin: a creation its code, a code
    change its new code (the stored history is read with the same rule)."""
    if n.kind == common_pb2.CHANGE_KIND_CREATED or n.reason == common_pb2.CHANGE_REASON_CODE_CHANGE:
        return (n.record.resident_code, n.origin_code)
    return None


def holdings_to_look_up(
    fresh: Sequence[common_pb2.Notification], records: Mapping[str, StoredIdentity]
) -> set[Holding]:
    """The (code, origin) pairs the history must answer for this batch: those of
    notifications acting on a code whose stored record is not at their origin,
    or may leave it earlier in the batch (a batch relayed from a prefecture
    carries several origins: another one's move-in may come first). Usually
    none (a municipality mostly changes the residents it registers now), so
    the common batch costs no query."""
    registered_by: dict[str, set[str]] = {}
    for n in fresh:
        holding = registers(n)
        if holding is not None:
            registered_by.setdefault(holding[0], set()).add(holding[1])
    out: set[Holding] = set()
    for n in fresh:
        code = acted_on(n)
        if code is None:
            continue
        current = records.get(code)
        if (
            current is None
            or current.local_government_code != n.origin_code
            or registered_by.get(code, set()) - {n.origin_code}
        ):
            out.add((code, n.origin_code))
    return out


def check_held(
    n: common_pb2.Notification,
    states: Mapping[str, StoredIdentity],
    registered: Collection[Holding],
    prefix: str,
) -> None:
    """Refuse a removal, amendment or code change from a municipality that does not
    hold the resident: the record is not at the origin now, and the origin never
    registered the code (``registered``: the holdings known from the history and
    from the batch so far). Applied as well, such an entry would leave a forged
    record, with a name of the sender's choosing, in another municipality's
    resident's history at every tier."""
    code = acted_on(n)
    if code is None:
        return
    current = states.get(code)
    if current is not None and current.local_government_code == n.origin_code:
        return
    if (code, n.origin_code) in registered:
        return
    field = "previous_resident_code" if code != n.record.resident_code else "record.resident_code"
    raise PermissionDenied(
        f"{prefix}.{field}: {code} is not held by {n.origin_code}", reason=Reason.NOT_HELD
    )


@dataclass(frozen=True)
class Sequenced:
    """A batch split by the origins' cursors: the notifications to apply, in
    order, those applied already (to compare with what was applied), and each
    origin's cursor after it."""

    fresh: tuple[common_pb2.Notification, ...]
    redelivered: tuple[common_pb2.Notification, ...]
    cursors: dict[str, int]

    @property
    def duplicates(self) -> int:
        """How many notifications of the batch were applied already."""
        return len(self.redelivered)


def sequence(
    cursors: Mapping[str, int], notifications: Sequence[common_pb2.Notification]
) -> Sequenced:
    """Skip what was applied already, take n only after n-1, refuse a gap."""
    cursor = dict(cursors)
    fresh: list[common_pb2.Notification] = []
    redelivered: list[common_pb2.Notification] = []
    for n in notifications:
        last = cursor.get(n.origin_code, 0)
        if n.sequence <= last:
            redelivered.append(n)
        elif n.sequence == last + 1:
            cursor[n.origin_code] = n.sequence
            fresh.append(n)
        else:
            raise SequenceGap(n.origin_code, last + 1, n.sequence)
    return Sequenced(tuple(fresh), tuple(redelivered), cursor)


AppliedKey = tuple[str, int]
"""(origin, sequence) of an applied notification."""


def notification_digest(n: common_pb2.Notification) -> bytes:
    """The SHA-256 digest of a notification's content, the same for equal content.

    Over the deterministic serialization: every field, in field-number order,
    whatever the sender's protobuf library or the order it set them in.
    """
    return hashlib.sha256(n.SerializeToString(deterministic=True)).digest()


def conflicting(
    redelivered: Sequence[common_pb2.Notification], applied: Mapping[AppliedKey, bytes]
) -> common_pb2.Notification | None:
    """The first notification redelivered with other content than the one applied
    under its (origin, sequence) (``applied``: their digests), or None.

    A sender restored from an old backup numbers its new changes again from an
    old sequence: taken as duplicates by their numbers, they would be dropped
    without a word. An applied notification this tier no longer knows the
    content of is taken as a duplicate, as before digests were kept.
    """
    for n in redelivered:
        digest = applied.get((n.origin_code, n.sequence))
        if digest is not None and digest != notification_digest(n):
            return n
    return None


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
    follows_only: frozenset[str] = frozenset()
    """Codes of ``changed`` whose record only learned what it follows."""


def fold_batch(
    fresh: Sequence[common_pb2.Notification],
    records: Mapping[str, StoredIdentity],
    pool_owners: Mapping[str, str],
    born: set[str],
    *,
    registered: Collection[Holding],
) -> Folded:
    """Fold notifications (in order) into ``records``.

    A fresh code (birth, ex-officio entry, code change) must come from the
    origin's own pool (``pool_owners``: code -> municipality it was issued to);
    the prefecture and the national node both check it, so a notification the
    prefecture accepted is never refused above it (which would stall the relay
    of every municipality behind it). ``born``: codes already created fresh.
    A removal, amendment or code change must come from a municipality that
    holds the resident (:func:`check_held`; ``registered``: the holdings the
    history knows of those :func:`holdings_to_look_up` named); both tiers check
    this too, and a holding the prefecture saw was relayed before what relies on it.
    """
    states = dict(records)
    born = set(born)
    held = set(registered)
    changed: dict[str, StoredIdentity] = {}
    flags: list[bool] = []
    for i, n in enumerate(fresh):
        code = n.record.resident_code
        check_held(n, states, held, f"entries[{i}].notification")
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
        holding = registers(n)
        if holding is not None:
            held.add(holding)
        decision = decide(states, n)
        for record in decision.states:
            states[record.resident_code] = record
            changed[record.resident_code] = record
        flags.append(decision.changed_current)
    follows_only = frozenset(
        c
        for c, record in changed.items()
        if c in records and dataclasses.replace(record, follows=records[c].follows) == records[c]
    )
    return Folded(changed, tuple(flags), follows_only)
