"""The identity records an upper tier stores, their history, the delivery
cursors and the codes issued: the SQL shared by the prefecture and the national
node. No decisions are taken here; :mod:`jukinet.delivery.rules` takes them and
:class:`jukinet.delivery.receiver.Receiver` runs the transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.db import one_of
from jukinet.delivery.certificates import Used, UsedCertificate
from jukinet.delivery.rules import (
    AppliedKey,
    Folded,
    Follows,
    Holding,
    StoredIdentity,
    merge_follows,
    notification_digest,
)
from jukinet.names import fold_kana, fold_name
from jukinet.v1 import common_pb2, delivery_pb2
from jukinet.validation import NEW_CODE_REASONS
from jukinet.vocabulary import person_columns


@dataclass(frozen=True)
class IdentityTables:
    """The tables of the identity records an upper tier stores."""

    identities: Table
    history: Table
    cursors: Table
    issued_codes: Table
    used_certificates: Table


def define_identity_tables(metadata: MetaData) -> IdentityTables:
    """Add the identity tables (records, history, cursors, issued codes) to a node's metadata."""
    identities = Table(
        "identities",
        metadata,
        Column("resident_code", String(11), primary_key=True),
        Column("local_government_code", String(6), nullable=False),
        *person_columns(),
        Column("status", SmallInteger, nullable=False),
        Column("replaced_by", String(11), nullable=False),
        Column("registered_since", String(10), nullable=False),
        # What the state is known to follow, per origin (jukinet.delivery.rules):
        # compact JSON {"<origin>": <sequence>, ...}; empty when not known.
        Column("follows", Text, nullable=False, server_default=""),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        # Folded keys for search by the four basic items (jukinet.names); the
        # name itself keeps its original characters. Text, not a bounded
        # varchar: NFKC can make a key many times longer than the name it
        # folds (U+FDFA becomes 18 characters), and a key that did not fit
        # would refuse at this tier a name every tier below accepted.
        Column("name_key", Text, nullable=False, server_default=""),
        Column("kana_key", Text, nullable=False, server_default=""),
        Index("ix_identities_lg", "local_government_code"),
        Index("ix_identities_name_key", "name_key", "birth_date"),
        Index("ix_identities_kana_key", "kana_key", "birth_date"),
        Index("ix_identities_replaced_by", "replaced_by"),
    )
    history = Table(
        "identity_history",
        metadata,
        Column(
            "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        Column("resident_code", String(11), nullable=False),
        Column("origin_code", String(6), nullable=False),
        Column("origin_sequence", BigInteger, nullable=False),
        Column("kind", SmallInteger, nullable=False),
        Column("reason", SmallInteger, nullable=False),
        Column("effective_date", String(10), nullable=False),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False),
        Column("changed_current", Boolean, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        # SHA-256 of the content (rules.notification_digest): a redelivery under
        # the same (origin, sequence) is compared with it. Null in rows applied
        # before digests were kept; their payload answers instead.
        Column("digest", LargeBinary, nullable=True),
        # APPLIED; or acknowledged but not applied (a move-in whose certificate
        # the national node alone could see to be forged, and what followed
        # it): REFUSED, kept for the record; or PENDING until the issuer's
        # notifications arrive. Only applied rows are the resident's history
        # and holdings.
        Column("outcome", SmallInteger, nullable=False, server_default=text("0")),
        # The database itself refuses a notification applied twice.
        UniqueConstraint("origin_code", "origin_sequence", name="uq_history_origin"),
        Index("ix_history_resident", "resident_code"),
        Index("ix_history_outcome", "outcome"),
    )
    cursors = Table(
        "origin_cursors",
        metadata,
        Column("origin_code", String(6), primary_key=True),
        Column("last_sequence", BigInteger, nullable=False),
    )
    issued_codes = Table(
        "issued_codes",
        metadata,
        Column("resident_code", String(11), primary_key=True),
        Column("municipality_code", String(6), nullable=False),
        Column("request_id", String(64), nullable=False),
        Column("issued_at", DateTime(timezone=True), nullable=False),
        Index("ix_issued_request", "request_id"),
    )
    # Each move-out certificate is used once at a tier: by its number, and by the
    # move-out it certifies (a second certificate for one move-out is a replay).
    used_certificates = Table(
        "used_certificates",
        metadata,
        Column("certificate_number", String(64), primary_key=True),
        Column("issuer", String(6), nullable=False),
        Column("move_out_sequence", BigInteger, nullable=False),
        Column("resident_code", String(11), nullable=False),
        Column("origin_code", String(6), nullable=False),
        Column("origin_sequence", BigInteger, nullable=False),
        Column("used_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("issuer", "move_out_sequence", name="uq_used_certificates_move_out"),
    )
    return IdentityTables(identities, history, cursors, issued_codes, used_certificates)


APPLIED, REFUSED = 0, 1
"""The outcomes of a stored notification (``identity_history.outcome``)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


STORED_FIELDS = tuple(f for f in StoredIdentity.__dataclass_fields__ if f != "follows")
"""The record's own columns; what its state follows is read and written by the store."""


def encode_follows(follows: Follows) -> str:
    """The ``follows`` column's text: compact JSON, origins in order ("" for none)."""
    if not follows:
        return ""
    return json.dumps(dict(follows), separators=(",", ":"), sort_keys=True)


def decode_follows(text: str | None) -> Follows:
    """The ``follows`` column read back; text that is not such an object knows nothing."""
    if not text:
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(value, dict):
        return ()
    return merge_follows(
        tuple(
            (o, s)
            for o, s in value.items()
            if isinstance(o, str) and isinstance(s, int) and not isinstance(s, bool) and s > 0
        )
    )


def _identity_row(record: StoredIdentity, at: dt.datetime) -> dict[str, object]:
    row: dict[str, object] = {f: getattr(record, f) for f in STORED_FIELDS}
    row["follows"] = encode_follows(record.follows)
    row["updated_at"] = at
    row["name_key"] = fold_name(record.name)
    row["kana_key"] = fold_kana(record.name_kana)
    return row


@dataclass(frozen=True)
class StoredBatch:
    """What a batch wrote: each applied notification with its bytes, and its delivery lag."""

    applied: tuple[tuple[common_pb2.Notification, bytes], ...]
    lags: tuple[float, ...]


class IdentityStore:
    """The SQL of the identity tables; every method runs in the caller's transaction."""

    def __init__(self, tables: IdentityTables) -> None:
        self.t = tables

    async def load(self, conn: AsyncConnection, codes: set[str]) -> dict[str, StoredIdentity]:
        """The stored records of these codes (those that exist), with what their
        states follow."""
        t = self.t.identities
        out: dict[str, StoredIdentity] = {}
        code_list = sorted(codes)
        for i in range(0, len(code_list), 500):
            rows = await conn.execute(
                select(*(t.c[f] for f in STORED_FIELDS), t.c.follows).where(
                    one_of(conn, t.c.resident_code, code_list[i : i + 500])
                )
            )
            for row in rows:
                record = dataclasses.replace(
                    StoredIdentity(*row[:-1]), follows=decode_follows(row[-1])
                )
                out[record.resident_code] = record
        return out

    async def cursors(self, conn: AsyncConnection, origins: Sequence[str]) -> dict[str, int]:
        """The last sequence applied of each of these origins (those seen before)."""
        c = self.t.cursors
        rows = await conn.execute(
            select(c.c.origin_code, c.c.last_sequence).where(one_of(conn, c.c.origin_code, origins))
        )
        return {r[0]: int(r[1]) for r in rows}

    async def pool_owners(self, conn: AsyncConnection, codes: set[str]) -> dict[str, str]:
        """The municipality each of these codes was issued to (those issued here)."""
        t = self.t.issued_codes
        out: dict[str, str] = {}
        code_list = sorted(codes)
        for i in range(0, len(code_list), 500):
            rows = await conn.execute(
                select(t.c.resident_code, t.c.municipality_code).where(
                    one_of(conn, t.c.resident_code, code_list[i : i + 500])
                )
            )
            out.update({r[0]: r[1] for r in rows})
        return out

    async def born(self, conn: AsyncConnection, codes: set[str]) -> set[str]:
        """Codes already created with a fresh code (birth, entry, code change)."""
        h = self.t.history
        out: set[str] = set()
        code_list = sorted(codes)
        for i in range(0, len(code_list), 500):
            rows = await conn.execute(
                select(h.c.resident_code).where(
                    one_of(conn, h.c.resident_code, code_list[i : i + 500]),
                    h.c.reason.in_(sorted(NEW_CODE_REASONS)),
                    h.c.outcome == APPLIED,
                )
            )
            out.update(rows.scalars())
        return out

    async def holdings(
        self, conn: AsyncConnection, wanted: set[Holding], *, outcome: int = 0
    ) -> set[Holding]:
        """Those of the (code, municipality) pairs ``wanted`` whose municipality
        registered the code by a notification stored here (a creation, or a code
        change to it): one statement for a batch's pairs. With another
        ``outcome`` (REFUSED), those registered by such a notification."""
        h = self.t.history
        out: set[Holding] = set()
        code_list = sorted({code for code, _ in wanted})
        for i in range(0, len(code_list), 500):
            rows = await conn.execute(
                select(h.c.resident_code, h.c.origin_code)
                .where(
                    one_of(conn, h.c.resident_code, code_list[i : i + 500]),
                    or_(
                        h.c.kind == common_pb2.CHANGE_KIND_CREATED,
                        h.c.reason == common_pb2.CHANGE_REASON_CODE_CHANGE,
                    ),
                    h.c.outcome == outcome,
                )
                .distinct()
            )
            out.update((r[0], r[1]) for r in rows if (r[0], r[1]) in wanted)
        return out

    async def _rows_at(
        self, conn: AsyncConnection, keys: Collection[AppliedKey]
    ) -> AsyncIterator[tuple[AppliedKey, bytes | None, bytes]]:
        """(origin, sequence), digest and payload of the stored notifications among
        ``keys``, one statement per origin and 500 sequences."""
        h = self.t.history
        by_origin: dict[str, list[int]] = {}
        for origin, seq in keys:
            by_origin.setdefault(origin, []).append(seq)
        for origin, seqs in sorted(by_origin.items()):
            seqs.sort()
            for i in range(0, len(seqs), 500):
                rows = await conn.execute(
                    select(h.c.origin_sequence, h.c.digest, h.c.payload).where(
                        h.c.origin_code == origin, h.c.origin_sequence.in_(seqs[i : i + 500])
                    )
                )
                for seq, digest, payload in rows:
                    yield (origin, int(seq)), None if digest is None else bytes(digest), payload

    async def applied_digests(
        self, conn: AsyncConnection, keys: Collection[AppliedKey]
    ) -> dict[AppliedKey, bytes]:
        """The content digests of the stored notifications among ``keys``
        ((origin, sequence) pairs)."""
        return {
            key: digest
            if digest is not None
            else notification_digest(common_pb2.Notification.FromString(payload))
            async for key, digest, payload in self._rows_at(conn, keys)
        }

    async def notifications_at(
        self, conn: AsyncConnection, keys: Collection[AppliedKey]
    ) -> dict[AppliedKey, common_pb2.Notification]:
        """The stored notifications among ``keys`` ((origin, sequence) pairs)."""
        return {
            key: common_pb2.Notification.FromString(payload)
            async for key, _, payload in self._rows_at(conn, keys)
        }

    async def used(
        self,
        conn: AsyncConnection,
        numbers: set[str],
        move_outs: set[tuple[str, int]],
    ) -> Used:
        """Which of these certificate numbers and (issuer, move-out sequence) pairs
        were used here before."""
        u = self.t.used_certificates
        found_numbers: set[str] = set()
        found_move_outs: set[tuple[str, int]] = set()
        if numbers:
            rows = await conn.execute(
                select(u.c.certificate_number).where(
                    one_of(conn, u.c.certificate_number, sorted(numbers))
                )
            )
            found_numbers.update(rows.scalars())
        found_move_outs.update((await self.named_move_outs(conn, move_outs)).keys())
        return Used(frozenset(found_numbers), frozenset(found_move_outs))

    async def named_move_outs(
        self, conn: AsyncConnection, keys: Collection[AppliedKey]
    ) -> dict[AppliedKey, UsedCertificate]:
        """The certificates used here that name one of ``keys`` ((issuer, move-out
        sequence) pairs) as their move-out: one statement per issuer and 500
        sequences, on the unique key."""
        u = self.t.used_certificates
        by_issuer: dict[str, list[int]] = {}
        for issuer, seq in keys:
            by_issuer.setdefault(issuer, []).append(seq)
        out: dict[AppliedKey, UsedCertificate] = {}
        for issuer, seqs in sorted(by_issuer.items()):
            seqs.sort()
            for i in range(0, len(seqs), 500):
                rows = await conn.execute(
                    select(
                        u.c.certificate_number,
                        u.c.issuer,
                        u.c.move_out_sequence,
                        u.c.resident_code,
                        u.c.origin_code,
                        u.c.origin_sequence,
                    ).where(u.c.issuer == issuer, u.c.move_out_sequence.in_(seqs[i : i + 500]))
                )
                for number, iss, seq, code, origin, origin_seq in rows:
                    out[(iss, int(seq))] = UsedCertificate(
                        certificate_number=number,
                        issuer=iss,
                        move_out_sequence=int(seq),
                        resident_code=code,
                        origin_code=origin,
                        origin_sequence=int(origin_seq),
                    )
        return out

    async def record_used(self, conn: AsyncConnection, used: Sequence[UsedCertificate]) -> None:
        """Remember certificates as used (the unique keys refuse a second use)."""
        if not used:
            return
        now = _now()
        await conn.execute(
            insert(self.t.used_certificates),
            [{**dataclasses.asdict(u), "used_at": now} for u in used],
        )

    async def record_batch(
        self,
        conn: AsyncConnection,
        fresh: Sequence[common_pb2.Notification],
        folded: Folded,
        existed: set[str],
        cursors_before: Mapping[str, int],
        cursors_after: Mapping[str, int],
        held_back: Mapping[int, int] | None = None,
    ) -> StoredBatch:
        """Write a folded batch: the changed records, one history row per
        notification, and the origins' cursors. ``held_back``: the outcome
        (REFUSED) of the notifications by index that were not folded;
        ``folded`` covers the others, in order."""
        held_back = held_back or {}
        now = _now()
        history: list[dict[str, object]] = []
        applied: list[tuple[common_pb2.Notification, bytes]] = []
        lags: list[float] = []
        flags = iter(folded.changed_current)
        for i, n in enumerate(fresh):
            outcome = held_back.get(i, APPLIED)
            changed_current = False if outcome != APPLIED else next(flags)
            payload = n.SerializeToString()
            recorded = dt.datetime.fromisoformat(n.recorded_at)
            history.append(
                {
                    "resident_code": n.record.resident_code,
                    "origin_code": n.origin_code,
                    "origin_sequence": n.sequence,
                    "kind": n.kind,
                    "reason": n.reason,
                    "effective_date": n.effective_date,
                    "recorded_at": recorded,
                    "applied_at": now,
                    "changed_current": changed_current,
                    "payload": payload,
                    "digest": notification_digest(n),
                    "outcome": outcome,
                }
            )
            # A sender's clock ahead of this one would make the lag negative.
            lags.append(max(0.0, (now - recorded).total_seconds()))
            if outcome == APPLIED:
                applied.append((n, payload))
        if next(flags, None) is not None:
            raise ValueError("more folded notifications than applied ones")
        await self._store(conn, folded, existed, now)
        await conn.execute(insert(self.t.history), history)
        cursors_t = self.t.cursors
        moved = sorted(o for o, s in cursors_after.items() if cursors_before.get(o) != s)
        updates = [{"o": o, "s": cursors_after[o]} for o in moved if o in cursors_before]
        inserts = [
            {"origin_code": o, "last_sequence": cursors_after[o]}
            for o in moved
            if o not in cursors_before
        ]
        if updates:
            await conn.execute(
                update(cursors_t)
                .where(cursors_t.c.origin_code == bindparam("o"))
                .values(last_sequence=bindparam("s")),
                updates,
            )
        if inserts:
            await conn.execute(insert(cursors_t), inserts)
        return StoredBatch(tuple(applied), tuple(lags))

    async def _store(
        self,
        conn: AsyncConnection,
        folded: Folded,
        existed: set[str],
        now: dt.datetime,
    ) -> None:
        t = self.t.identities
        changed = folded.changed
        new_rows = [_identity_row(h, now) for c, h in changed.items() if c not in existed]
        upd_rows = [
            {**{f"v_{k}": v for k, v in _identity_row(h, now).items()}, "k": c}
            for c, h in changed.items()
            if c in existed and c not in folded.follows_only
        ]
        # A record that only learned what it follows keeps its update time.
        learned = [
            {"k": c, "v_follows": encode_follows(h.follows)}
            for c, h in changed.items()
            if c in existed and c in folded.follows_only
        ]
        if learned:
            await conn.execute(
                update(t)
                .where(t.c.resident_code == bindparam("k"))
                .values(follows=bindparam("v_follows")),
                learned,
            )
        if new_rows:
            await conn.execute(insert(t), new_rows)
        if upd_rows:
            values: dict[str, Any] = {col: bindparam(f"v_{col}") for col in _identity_row_columns()}
            await conn.execute(
                update(t).where(t.c.resident_code == bindparam("k")).values(**values), upd_rows
            )

    async def record_issued(
        self, conn: AsyncConnection, codes: Sequence[str], municipality: str, request_id: str
    ) -> None:
        """Remember codes handed to a municipality (the pool check relies on it)."""
        if not codes:
            return
        now = _now()
        await conn.execute(
            insert(self.t.issued_codes),
            [
                {
                    "resident_code": c,
                    "municipality_code": municipality,
                    "request_id": request_id,
                    "issued_at": now,
                }
                for c in codes
            ],
        )

    async def issued_for_request(
        self, conn: AsyncConnection, request_id: str
    ) -> tuple[str, list[str]] | None:
        """The municipality and codes of an earlier pool request with this id."""
        t = self.t.issued_codes
        rows = (
            await conn.execute(
                select(t.c.resident_code, t.c.municipality_code)
                .where(t.c.request_id == request_id)
                .order_by(t.c.resident_code)
            )
        ).all()
        if not rows:
            return None
        return rows[0][1], [r[0] for r in rows]

    async def existing_codes(self, conn: AsyncConnection, codes: Sequence[str]) -> set[str]:
        """Those of ``codes`` that were ever issued."""
        t = self.t.issued_codes
        rows = await conn.execute(
            select(t.c.resident_code).where(one_of(conn, t.c.resident_code, codes))
        )
        return set(rows.scalars())

    # -- reads -------------------------------------------------------------

    async def chain(self, conn: AsyncConnection, resident_code: str) -> set[str]:
        """Every code of the person who has (or had) ``resident_code``: code changes
        are walked both ways, so an old code shows the whole life."""
        t = self.t.identities
        chain = {resident_code}
        frontier = {resident_code}
        while frontier:
            rows = await conn.execute(
                select(t.c.resident_code, t.c.replaced_by).where(
                    or_(
                        one_of(conn, t.c.resident_code, sorted(frontier)),
                        one_of(conn, t.c.replaced_by, sorted(frontier)),
                    )
                )
            )
            found = set()
            for code, replaced_by in rows:
                found.add(code)
                if replaced_by:
                    found.add(replaced_by)
            frontier = found - chain
            chain |= found
        return chain

    async def get_identity(
        self, conn: AsyncConnection, resident_code: str
    ) -> delivery_pb2.GetIdentityResponse | None:
        """The record as stored now, with the history of every code it has had;
        None when no record has that code."""
        t, h = self.t.identities, self.t.history
        states = await self.load(conn, {resident_code})
        if resident_code not in states:
            return None
        chain = await self.chain(conn, resident_code)
        history_rows = await conn.execute(
            select(h.c.payload, h.c.applied_at, h.c.changed_current)
            .where(one_of(conn, h.c.resident_code, sorted(chain)), h.c.outcome == APPLIED)
            .order_by(h.c.id)
        )
        history = [
            delivery_pb2.HistoryEntry(
                notification=common_pb2.Notification.FromString(payload),
                applied_at=_iso(applied_at),
                changed_current=bool(changed_current),
            )
            for payload, applied_at, changed_current in history_rows
        ]
        updated = await conn.scalar(
            select(t.c.updated_at).where(t.c.resident_code == resident_code)
        )
        return delivery_pb2.GetIdentityResponse(
            identity=_state(states[resident_code], updated), history=history
        )

    async def export_page(
        self, conn: AsyncConnection, municipality: str, after: str, page_size: int
    ) -> list[delivery_pb2.IdentityState]:
        """Up to ``page_size`` records after code ``after`` (of one municipality, if
        given), ordered by code."""
        t = self.t.identities
        query = select(*(t.c[f] for f in STORED_FIELDS), t.c.updated_at).where(
            t.c.resident_code > after
        )
        if municipality:
            query = query.where(t.c.local_government_code == municipality)
        rows = (await conn.execute(query.order_by(t.c.resident_code).limit(page_size))).all()
        return [_state(StoredIdentity(*r[:-1]), r[-1]) for r in rows]

    async def delivery_status(self, conn: AsyncConnection) -> tuple[list[tuple[str, int]], int]:
        """Each origin's last applied sequence, and how many records are stored."""
        c = self.t.cursors
        rows = await conn.execute(
            select(c.c.origin_code, c.c.last_sequence).order_by(c.c.origin_code)
        )
        stored = await conn.scalar(select(func.count()).select_from(self.t.identities))
        return [(r[0], int(r[1])) for r in rows], int(stored or 0)


def _identity_row_columns() -> tuple[str, ...]:
    return (*STORED_FIELDS, "follows", "updated_at", "name_key", "kana_key")


def _iso(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def _state(record: StoredIdentity, updated: dt.datetime | None) -> delivery_pb2.IdentityState:
    return delivery_pb2.IdentityState(
        record=record.to_record(),
        status=record.status,
        replaced_by=record.replaced_by,
        updated_at=_iso(updated),
    )
