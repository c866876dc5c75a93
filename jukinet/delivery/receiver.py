"""The RPCs the prefecture and the national node share: receiving pushed
notifications, and reading the records they hold. Each tier's servicer
delegates to this and supplies its own authorization of origins and what to
do with applied notifications inside the same transaction (relay or not).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.codes import check_local_government_code, check_resident_code
from jukinet.db import Database
from jukinet.delivery.store import BatchResult, HoldingStore
from jukinet.errors import InvalidArgument, JukinetError
from jukinet.identity import Identity
from jukinet.interceptors import current_identity
from jukinet.metrics import NodeMetrics
from jukinet.v1 import common_pb2, delivery_pb2
from jukinet.validation import check_notification

AuthorizeOrigin = Callable[[Identity, common_pb2.Notification, str], None]
"""Raises PermissionDenied when the caller may not send this notification."""

OnApplied = Callable[
    [AsyncConnection, Sequence[tuple[common_pb2.Notification, bytes]]], Awaitable[None]
]

MAX_BATCH = 10_000
MAX_PAGE = 5_000


class HoldingService:
    """Delivery and reads over a :class:`HoldingStore`."""

    def __init__(
        self,
        *,
        db: Database,
        store: HoldingStore,
        metrics: NodeMetrics,
        authorize_origin: AuthorizeOrigin,
        on_applied: OnApplied | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.metrics = metrics
        self._authorize_origin = authorize_origin
        self._on_applied = on_applied
        self._after_commit = after_commit

    async def push(
        self, requests: AsyncIterator[delivery_pb2.PushNotificationsRequest]
    ) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
        """Apply each batch in one transaction and acknowledge it."""
        caller = current_identity()
        async for request in requests:
            entries = request.entries
            if len(entries) > MAX_BATCH:
                raise InvalidArgument("entries", f"at most {MAX_BATCH} per batch")
            notifications = []
            for i, entry in enumerate(entries):
                prefix = f"entries[{i}].notification"
                check_notification(entry.notification, prefix)
                self._authorize_origin(caller, entry.notification, prefix)
                notifications.append(entry.notification)
            try:
                # Shielded: a sender that goes away mid-batch must not cancel the
                # transaction half-way; it completes (or fails) on its own, and the
                # sender's resend is then a duplicate.
                result = await asyncio.shield(asyncio.ensure_future(self._apply(notifications)))
            except JukinetError:
                self.metrics.notifications.labels("refused").inc(len(notifications))
                raise
            self.metrics.notifications.labels("applied").inc(result.applied)
            self.metrics.notifications.labels("duplicate").inc(result.duplicates)
            for lag in result.lags:
                self.metrics.delivery_lag.observe(lag)
            if result.applied and self._after_commit is not None:
                self._after_commit()
            yield delivery_pb2.PushNotificationsResponse(
                acknowledged_through=max((e.outbox_sequence for e in entries), default=0),
                applied=result.applied,
                duplicates=result.duplicates,
            )

    async def _apply(self, notifications: list[common_pb2.Notification]) -> BatchResult:
        async with self.db.write() as conn:
            result = await self.store.apply_batch(conn, notifications)
            if self._on_applied is not None and result.applied_notifications:
                await self._on_applied(conn, result.applied_notifications)
        return result

    async def get_identity(
        self, request: delivery_pb2.GetIdentityRequest
    ) -> delivery_pb2.GetIdentityResponse:
        check_resident_code(request.resident_code)
        return await self.store.get_identity(request.resident_code)

    async def export(
        self, request: delivery_pb2.ExportIdentitiesRequest
    ) -> AsyncIterator[delivery_pb2.ExportIdentitiesResponse]:
        if request.municipality_code:
            check_local_government_code(request.municipality_code, "municipality_code")
        if request.page_size > MAX_PAGE:
            raise InvalidArgument("page_size", f"at most {MAX_PAGE}")
        page = request.page_size or 1000
        async for states in self.store.export(request.municipality_code, page):
            yield delivery_pb2.ExportIdentitiesResponse(identities=states)

    async def delivery_status(
        self, outbox_last: int = 0, outbox_acknowledged: int = 0
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        async with self.db.read() as conn:
            cursors, held = await self.store.delivery_status(conn)
        return delivery_pb2.GetDeliveryStatusResponse(
            applied=[delivery_pb2.OriginCursor(origin_code=o, last_sequence=s) for o, s in cursors],
            outbox_last_sequence=outbox_last,
            outbox_acknowledged=outbox_acknowledged,
            identities_held=held,
        )


class HoldingRpcs:
    """The RPCs the prefecture and national servicers share word for word; a
    servicer mixes this in before its generated base and sets ``_holding``."""

    _holding: HoldingService

    async def PushNotifications(
        self, request_iterator: AsyncIterator[delivery_pb2.PushNotificationsRequest], context: Any
    ) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
        async for response in self._holding.push(request_iterator):
            yield response

    async def GetIdentity(
        self, request: delivery_pb2.GetIdentityRequest, context: Any
    ) -> delivery_pb2.GetIdentityResponse:
        return await self._holding.get_identity(request)

    async def ExportIdentities(
        self, request: delivery_pb2.ExportIdentitiesRequest, context: Any
    ) -> AsyncIterator[delivery_pb2.ExportIdentitiesResponse]:
        async for page in self._holding.export(request):
            yield page
