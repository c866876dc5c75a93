"""The receiving half of delivery, shared by the prefecture and the national
node: applying pushed notifications, and reading the records stored.

A :class:`Receiver` is built at wiring with what differs between the tiers:
the rule for which origins a caller may send (``authorize_origin``, a pure
rule of the node), and the :class:`Relay` that passes applied notifications
on (the prefecture's outbox to the national node; none at the national node).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.clock import SYSTEM_CLOCK, Clock
from jukinet.codes import check_local_government_code, check_resident_code
from jukinet.db import Database, describe_error, is_transient
from jukinet.delivery.certificates import (
    Contradiction,
    MoveInPolicy,
    Screened,
    certificate_of,
    certificates_to_look_up,
    contradictions,
    screen_batch,
)
from jukinet.delivery.rules import (
    AppliedKey,
    Holding,
    Sequenced,
    StoredIdentity,
    conflicting,
    fold_batch,
    fresh_codes,
    holdings_to_look_up,
    notification_digest,
    sequence,
    touched_codes,
)
from jukinet.delivery.store import REFUSED, IdentityStore
from jukinet.errors import (
    FailedPrecondition,
    InvalidArgument,
    JukinetError,
    NotFound,
    Unappliable,
    Unavailable,
)
from jukinet.identity import Identity
from jukinet.interceptors import current_identity
from jukinet.metrics import ReceiverMetrics
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, delivery_pb2
from jukinet.validation import check_notification

log = logging.getLogger("jukinet.delivery.receiver")

AuthorizeOrigin = Callable[[Identity, common_pb2.Notification, str], None]
"""Raises PermissionDenied when the caller may not send this notification."""

MAX_BATCH = 10_000
MAX_PAGE = 5_000


class Relay(Protocol):
    """Where a receiver passes applied notifications on."""

    async def stage(
        self, conn: AsyncConnection, applied: Sequence[tuple[common_pb2.Notification, bytes]]
    ) -> None:
        """Take the applied notifications (with their bytes) in the applying transaction."""

    def committed(self) -> None:
        """The transaction that staged notifications has committed."""


@dataclass(frozen=True)
class BatchResult:
    """What one pushed batch did."""

    applied: int
    duplicates: int
    lags: tuple[float, ...]
    quarantined: int = 0
    # Entries acknowledged but kept as refused (national node), with why.
    kept_refused: tuple[tuple[common_pb2.Notification, Reason], ...] = ()
    # Entries at a sequence that a certificate named ahead of them, which are
    # not that resident's move-out (applied: the issuer's own stream).
    contradictions: tuple[Contradiction, ...] = ()


class _Rollback(Exception):
    """Ends a transaction that only looked for the entry a batch failed on."""


class Receiver:
    """Applies pushed notifications to an :class:`IdentityStore` and reads it.

    A valid batch the store refuses for a reason of its own (a constraint or
    trigger of this node's database, a fault while folding) is not the
    sender's to fix: the entry it fails on is reported once, by origin and
    sequence, in the log (without personal data) and in
    ``jukinet_unappliable_notifications``, and each attempt is answered
    FAILED_PRECONDITION ``notification-unappliable`` so that the sender backs
    off. Nothing of such a batch is stored. A database that cannot work now
    (unreachable, busy, full) is answered UNAVAILABLE instead.
    """

    def __init__(
        self,
        *,
        db: Database,
        store: IdentityStore,
        metrics: ReceiverMetrics,
        authorize_origin: AuthorizeOrigin,
        relay: Relay | None = None,
        clock: Clock = SYSTEM_CLOCK,
        move_in: MoveInPolicy | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        # Without a policy every domestic move-in is refused (nothing to check
        # its certificate against).
        self._move_in = move_in
        self._store = store
        self._metrics = metrics
        self._authorize_origin = authorize_origin
        self._relay = relay
        # origin -> the sequence reported as unappliable, until it is applied.
        self._stuck: dict[str, int] = {}

    async def push(
        self, requests: AsyncIterator[delivery_pb2.PushNotificationsRequest]
    ) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
        """Apply each batch in one transaction and acknowledge it."""
        caller = current_identity()
        async for request in requests:
            entries = request.entries
            if len(entries) > MAX_BATCH:
                raise InvalidArgument("entries", f"at most {MAX_BATCH} per batch")
            self._observe_clock(caller.code, request.sent_at)
            now = self._clock.now()
            notifications = []
            # Who sends them before what they say: a foreign origin anywhere in
            # the batch is refused as such, whatever the content of any entry.
            for i, entry in enumerate(entries):
                self._authorize_origin(caller, entry.notification, f"entries[{i}].notification")
            for i, entry in enumerate(entries):
                check_notification(entry.notification, f"entries[{i}].notification", now=now)
                notifications.append(entry.notification)
            try:
                # Shielded: a sender that goes away mid-batch must not cancel the
                # transaction half-way; it completes (or fails) on its own, and the
                # sender's resend is then a duplicate.
                result = await self._db.complete(self.apply(notifications))
            except JukinetError:
                self._metrics.notifications.labels("refused").inc(len(notifications))
                raise
            except Exception as exc:
                self._metrics.notifications.labels("refused").inc(len(notifications))
                raise await self._db.complete(self._refusal(notifications, exc)) from None
            if self._stuck:
                self._resumed(notifications)
            self._metrics.notifications.labels("applied").inc(
                max(result.applied - result.quarantined, 0)
            )
            self._metrics.notifications.labels("quarantined").inc(result.quarantined)
            self._metrics.notifications.labels("duplicate").inc(result.duplicates)
            for lag in result.lags:
                self._metrics.delivery_lag.observe(lag)
            if result.applied and self._relay is not None:
                self._relay.committed()
            yield delivery_pb2.PushNotificationsResponse(
                acknowledged_through=max((e.outbox_sequence for e in entries), default=0),
                applied=result.applied,
                duplicates=result.duplicates,
            )

    async def _refusal(
        self, notifications: Sequence[common_pb2.Notification], exc: Exception
    ) -> JukinetError:
        """The answer to a batch that failed with ``exc``, which is not ours."""
        if is_transient(exc):
            log.warning("could not apply a batch now: %s", describe_error(exc))
            return Unavailable("this node cannot store notifications now; try again later")
        culprit, cause = await self._locate(notifications)
        if isinstance(cause, JukinetError):
            # Applied one by one, an entry is refused for a reason of its own.
            return cause
        if cause is not None:
            exc = cause
        origin, seq = culprit.origin_code, culprit.sequence
        if self._stuck.get(origin) != seq:
            self._stuck[origin] = seq
            self._metrics.unappliable.labels(origin).inc()
            self._metrics.stuck_sequence.labels(origin).set(seq)
            log.error(
                "cannot apply notification %s #%d: %s; nothing of its batch is stored, "
                "and its sender backs off until this is resolved",
                origin,
                seq,
                describe_error(exc),
            )
        return Unappliable(origin, seq)

    async def _locate(
        self, notifications: Sequence[common_pb2.Notification]
    ) -> tuple[common_pb2.Notification, Exception | None]:
        """The entry a failed batch fails on, and how, found by applying the
        entries one at a time in a transaction that is then rolled back. When
        each applies alone, the batch's first entry, without a cause."""
        found: tuple[common_pb2.Notification, Exception | None] = (notifications[0], None)
        try:
            async with self._db.write() as conn:
                for n in notifications:
                    try:
                        await self._apply_in(conn, [n])
                    except Exception as exc:
                        found = (n, exc)
                        break
                raise _Rollback
        except _Rollback:
            pass
        except Exception as exc:
            # The rollback itself failed: the entry found (if any) still stands.
            log.warning("could not roll back a search for a failing entry: %s", describe_error(exc))
        return found

    def _resumed(self, notifications: Sequence[common_pb2.Notification]) -> None:
        """Clear the report of each origin whose stuck entry is now applied."""
        for n in notifications:
            stuck = self._stuck.get(n.origin_code)
            if stuck is not None and n.sequence >= stuck:
                del self._stuck[n.origin_code]
                self._metrics.stuck_sequence.labels(n.origin_code).set(0)
                log.warning("notification %s #%d is applied now", n.origin_code, stuck)

    def _observe_clock(self, peer: str, sent_at: str) -> None:
        """Export how far ``peer``'s clock is from this node's (a sender that
        states no time, as before the field existed, is not measured)."""
        if not sent_at:
            return
        try:
            sent = dt.datetime.fromisoformat(sent_at)
        except ValueError:
            raise InvalidArgument("sent_at", "expected an RFC 3339 time") from None
        if sent.tzinfo is None:
            raise InvalidArgument("sent_at", "expected an RFC 3339 time with its offset")
        offset = (self._clock.now() - sent).total_seconds()
        self._metrics.peer_clock_offset.labels(self._metrics.peer_label(peer)).set(offset)

    async def apply(self, notifications: Sequence[common_pb2.Notification]) -> BatchResult:
        """Apply validated notifications in order, in one write transaction: skip
        what was applied, refuse a gap, check the move-out certificates of
        domestic move-ins, check fresh codes against the pools, check that each
        change comes from a municipality holding the resident, fold into the
        records, write history, used certificates and cursors, and relay."""
        async with self._db.write() as conn:
            result = await self._apply_in(conn, notifications)
        # After the commit: one line per entry kept as refused.
        for n, reason in result.kept_refused:
            self._kept_refused(n, reason)
        for found in result.contradictions:
            self._contradicted(found)
        return result

    async def _apply_in(
        self, conn: AsyncConnection, notifications: Sequence[common_pb2.Notification]
    ) -> BatchResult:
        """:meth:`apply` inside the write transaction ``conn``."""
        before = await self._store.cursors(conn, sorted({n.origin_code for n in notifications}))
        sequenced = sequence(before, notifications)
        fresh = sequenced.fresh
        if sequenced.redelivered:
            self._check_redelivered(
                sequenced,
                await self._store.applied_digests(
                    conn, {(n.origin_code, n.sequence) for n in sequenced.redelivered}
                ),
            )
        if not fresh:
            return BatchResult(0, sequenced.duplicates, ())
        certificates = {}
        for i, n in enumerate(fresh):
            cert = certificate_of(n, self._move_in, f"entries[{i}].notification")
            if cert is not None:
                certificates[i] = cert
        codes = touched_codes(fresh)
        records = await self._store.load(conn, codes)
        owners = await self._store.pool_owners(conn, codes)
        born = await self._store.born(conn, fresh_codes(fresh))
        wanted = holdings_to_look_up(fresh, records)
        screened = Screened()
        if certificates:
            wanted |= certificates_to_look_up(certificates)[2]
        registered = await self._store.holdings(conn, wanted) if wanted else set()
        if certificates or (wanted and self._quarantines):
            screened = await self._screen(
                conn, fresh, certificates, records, registered, wanted, before
            )
        refused = screened.quarantined
        held_back = dict.fromkeys(refused, REFUSED)
        kept = [n for i, n in enumerate(fresh) if i not in held_back]
        folded = fold_batch(kept, records, owners, born, registered=registered)
        await self._store.record_used(conn, screened.used)
        stored = await self._store.record_batch(
            conn, fresh, folded, set(records), before, sequenced.cursors, held_back
        )
        if self._relay is not None:
            await self._relay.stage(conn, stored.applied)
        # Certificates that named one of these notifications ahead of it, by
        # earlier batches or this one: each must be its resident's move-out.
        named = await self._store.named_move_outs(
            conn, {(n.origin_code, n.sequence) for n in fresh}
        )
        kept_refused = [(fresh[i], reason) for i, reason in sorted(refused.items())]
        return BatchResult(
            len(fresh),
            sequenced.duplicates,
            stored.lags,
            len(kept_refused),
            tuple(kept_refused),
            tuple(contradictions(fresh, named)),
        )

    def _kept_refused(self, n: common_pb2.Notification, reason: Reason) -> None:
        # One line by origin and sequence, nothing of the person.
        log.warning("kept %s #%d as refused, not applied: %s", n.origin_code, n.sequence, reason)

    def _contradicted(self, found: Contradiction) -> None:
        # By origin, sequence and certificate number, nothing of the person.
        n, used = found.notification, found.used
        log.error(
            "%s #%d is not the move-out that its certificate %s named "
            "(used by %s #%d): %s signed a move-out it did not notify",
            n.origin_code,
            n.sequence,
            used.certificate_number,
            used.origin_code,
            used.origin_sequence,
            n.origin_code,
        )
        self._metrics.certificate_contradictions.labels(n.origin_code).inc()

    @property
    def _quarantines(self) -> bool:
        # Only the national node keeps entries as refused instead of refusing them.
        return self._move_in is not None and not self._move_in.prefecture

    async def _screen(
        self,
        conn: AsyncConnection,
        fresh: Sequence[common_pb2.Notification],
        certificates: dict[int, common_pb2.MoveOutCertificate],
        records: dict[str, StoredIdentity],
        registered: set[Holding],
        wanted: set[Holding],
        before: dict[str, int],
    ) -> Screened:
        numbers, move_outs, _ = certificates_to_look_up(certificates)
        used = await self._store.used(conn, numbers, move_outs)
        origins = {issuer for issuer, _ in move_outs} | {n.origin_code for n in fresh}
        missing = sorted(origins - set(before))
        cursors = {**before, **(await self._store.cursors(conn, missing) if missing else {})}
        # The move-outs the certificates name that this tier has received.
        certified = await self._store.notifications_at(
            conn, {m for m in move_outs if cursors.get(m[0], 0) >= m[1]}
        )
        quarantined_holdings: set[Holding] = set()
        if self._quarantines and wanted:
            quarantined_holdings = await self._store.holdings(conn, wanted, outcome=REFUSED)
        return screen_batch(
            fresh,
            certificates,
            records=records,
            registered=registered,
            quarantined_holdings=quarantined_holdings,
            used=used,
            cursors=cursors,
            prefecture=self._move_in.prefecture if self._move_in is not None else "",
            certified=certified,
        )

    def _check_redelivered(
        self,
        sequenced: Sequenced,
        applied: Mapping[AppliedKey, bytes],
    ) -> None:
        """Refuse the batch if a redelivered notification differs from the one
        applied under its (origin, sequence), earlier or in this very batch."""
        known = {
            **applied,
            **{(n.origin_code, n.sequence): notification_digest(n) for n in sequenced.fresh},
        }
        n = conflicting(sequenced.redelivered, known)
        if n is None:
            return
        self._metrics.notification_conflicts.inc()
        # The alarm: origin and sequence only, no personal data.
        log.error(
            "notification conflict: %s #%d was applied with other content; "
            "the sender's outbox diverges from what it delivered (restored from a backup?)",
            n.origin_code,
            n.sequence,
        )
        raise FailedPrecondition(
            f"origin {n.origin_code}: sequence {n.sequence} was applied with other content",
            reason=Reason.NOTIFICATION_CONFLICT,
        )

    async def get_identity(
        self, request: delivery_pb2.GetIdentityRequest
    ) -> delivery_pb2.GetIdentityResponse:
        """One stored record with its history."""
        check_resident_code(request.resident_code)
        async with self._db.read() as conn:
            found = await self._store.get_identity(conn, request.resident_code)
        if found is None:
            raise NotFound(f"no identity record for {request.resident_code}")
        return found

    async def export(
        self, request: delivery_pb2.ExportIdentitiesRequest
    ) -> AsyncIterator[delivery_pb2.ExportIdentitiesResponse]:
        """Every stored record (of one municipality, if given), page by page."""
        if request.municipality_code:
            check_local_government_code(request.municipality_code, "municipality_code")
        if request.page_size > MAX_PAGE:
            raise InvalidArgument("page_size", f"at most {MAX_PAGE}")
        page = request.page_size or 1000
        after = ""
        while True:
            # One read per page: a long export holds no transaction open.
            async with self._db.read() as conn:
                states = await self._store.export_page(conn, request.municipality_code, after, page)
            if not states:
                return
            yield delivery_pb2.ExportIdentitiesResponse(identities=states)
            after = states[-1].record.resident_code

    async def delivery_status(
        self, outbox_last: int = 0, outbox_acknowledged: int = 0
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        """The origins' cursors and the number of records stored, with the relay's outbox."""
        async with self._db.read() as conn:
            cursors, stored = await self._store.delivery_status(conn)
        return delivery_pb2.GetDeliveryStatusResponse(
            applied=[delivery_pb2.OriginCursor(origin_code=o, last_sequence=s) for o, s in cursors],
            outbox_last_sequence=outbox_last,
            outbox_acknowledged=outbox_acknowledged,
            identities_held=stored,
        )
