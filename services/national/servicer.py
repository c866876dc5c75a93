"""gRPC surface of the national node: thin translation to the holdings and pools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from jukinet.codes import prefecture_of
from jukinet.db import Database
from jukinet.errors import PermissionDenied
from jukinet.holding_service import HoldingService
from jukinet.identity import Identity
from jukinet.interceptors import current_identity
from jukinet.metrics import NodeMetrics
from jukinet.v1 import common_pb2, delivery_pb2, national_pb2_grpc
from jukinet.validation import check_known_local_government
from services.national.logic import check_pool_request
from services.national.repository import allocate_pool


def authorize_prefecture_origin(caller: Identity, n: common_pb2.Notification, prefix: str) -> None:
    """A prefecture relays only its own municipalities' notifications."""
    if prefecture_of(n.origin_code) != caller.code:
        raise PermissionDenied(
            f"{prefix}.origin_code: {n.origin_code} is not a municipality of prefecture "
            f"{caller.code}",
            reason="foreign-origin",
        )


class NationalServicer(national_pb2_grpc.NationalServiceServicer):
    def __init__(
        self, db: Database, holding: HoldingService, metrics: NodeMetrics, max_pool_size: int
    ) -> None:
        self._db = db
        self._holding = holding
        self._metrics = metrics
        self._max_pool_size = max_pool_size

    async def PushNotifications(
        self, request_iterator: AsyncIterator[delivery_pb2.PushNotificationsRequest], context: Any
    ) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
        async for response in self._holding.push(request_iterator):
            yield response

    async def AllocateCodePool(
        self, request: delivery_pb2.AllocateCodePoolRequest, context: Any
    ) -> delivery_pb2.AllocateCodePoolResponse:
        caller = current_identity()
        check_known_local_government(request.municipality_code, "municipality_code")
        check_pool_request(request.count, request.request_id, self._max_pool_size)
        if prefecture_of(request.municipality_code) != caller.code:
            raise PermissionDenied(
                f"municipality_code: {request.municipality_code} is not in prefecture "
                f"{caller.code}",
                reason="foreign-origin",
            )
        async with self._db.write() as conn:
            codes = await allocate_pool(
                self._holding.store,
                conn,
                request.municipality_code,
                request.count,
                request.request_id,
            )
        self._metrics.codes_issued.inc(len(codes))
        return delivery_pb2.AllocateCodePoolResponse(resident_codes=codes)

    async def GetIdentity(
        self, request: delivery_pb2.GetIdentityRequest, context: Any
    ) -> delivery_pb2.GetIdentityResponse:
        return await self._holding.get_identity(request)

    async def ExportIdentities(
        self, request: delivery_pb2.ExportIdentitiesRequest, context: Any
    ) -> AsyncIterator[delivery_pb2.ExportIdentitiesResponse]:
        async for page in self._holding.export(request):
            yield page

    async def GetDeliveryStatus(
        self, request: delivery_pb2.GetDeliveryStatusRequest, context: Any
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        return await self._holding.delivery_status()
