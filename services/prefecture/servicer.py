"""gRPC surface of a prefecture node."""

from __future__ import annotations

from typing import Any

import grpc

from jukinet.codes import check_resident_code
from jukinet.db import Database
from jukinet.delivery.outbox import Outbox
from jukinet.delivery.receiver import HoldingRpcs, HoldingService
from jukinet.errors import from_upstream
from jukinet.interceptors import current_identity
from jukinet.metrics import NodeMetrics
from jukinet.v1 import delivery_pb2, national_pb2_grpc, prefecture_pb2_grpc, provision_pb2
from jukinet.validation import check_known_local_government, check_pool_request
from services.prefecture.logic import authorize_pool_request

MAX_POOL = 100_000


class PrefectureServicer(HoldingRpcs, prefecture_pb2_grpc.PrefectureServiceServicer):
    def __init__(
        self,
        db: Database,
        holding: HoldingService,
        outbox: Outbox,
        national: national_pb2_grpc.NationalServiceAsyncStub,
        metrics: NodeMetrics,
    ) -> None:
        self._db = db
        self._holding = holding
        self._outbox = outbox
        self._national = national
        self._metrics = metrics

    async def AllocateCodePool(
        self, request: delivery_pb2.AllocateCodePoolRequest, context: Any
    ) -> delivery_pb2.AllocateCodePoolResponse:
        """Obtain a pool from the national node and remember it for the pool check."""
        caller = current_identity()
        check_known_local_government(request.municipality_code, "municipality_code")
        check_pool_request(request.count, request.request_id, MAX_POOL)
        authorize_pool_request(caller, request.municipality_code)
        store = self._holding.store
        async with self._db.read() as conn:
            earlier = await store.issued_for_request(conn, request.request_id)
        if earlier is not None and earlier[0] == request.municipality_code:
            return delivery_pb2.AllocateCodePoolResponse(resident_codes=earlier[1])
        # The national call is idempotent by request_id, so a crash between it and
        # the write below only means the municipality asks again and gets the same.
        try:
            response: delivery_pb2.AllocateCodePoolResponse = await self._national.AllocateCodePool(
                request, timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise from_upstream(exc, "national node") from exc
        async with self._db.write() as conn:
            if await store.issued_for_request(conn, request.request_id) is None:
                await store.record_issued(
                    conn,
                    list(response.resident_codes),
                    request.municipality_code,
                    request.request_id,
                )
        self._metrics.codes_issued.inc(len(response.resident_codes))
        return response

    async def Disclose(
        self, request: provision_pb2.DiscloseRequest, context: Any
    ) -> provision_pb2.DiscloseResponse:
        """Relay a municipal counter's disclosure request to the national node."""
        check_resident_code(request.resident_code)
        try:
            response: provision_pb2.DiscloseResponse = await self._national.Disclose(
                request, timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise from_upstream(exc, "national node") from exc
        return response

    async def GetDeliveryStatus(
        self, request: delivery_pb2.GetDeliveryStatusRequest, context: Any
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        async with self._db.read() as conn:
            status = await self._outbox.status(conn)
        return await self._holding.delivery_status(
            status.last_sequence, status.acknowledged_through
        )
