"""Use cases of a prefecture node: handing down code pools, relaying disclosure
requests, and the delivery status. Each owns its transaction."""

from __future__ import annotations

import grpc

from jukinet.codes import check_resident_code
from jukinet.db import Database
from jukinet.delivery.receiver import Receiver
from jukinet.errors import from_upstream
from jukinet.identity import Identity
from jukinet.metrics import PrefectureMetrics
from jukinet.v1 import delivery_pb2, national_pb2_grpc, provision_pb2
from jukinet.validation import check_known_local_government, check_pool_request
from services.prefecture.logic import authorize_pool_request, disclosure_for
from services.prefecture.repository import PrefectureRepository

MAX_POOL = 100_000
NATIONAL = "national node"


class PrefectureService:
    """What a prefecture does beyond receiving: see the module docstring."""

    def __init__(
        self,
        *,
        db: Database,
        repository: PrefectureRepository,
        receiver: Receiver,
        national: national_pb2_grpc.NationalServiceAsyncStub,
        metrics: PrefectureMetrics,
    ) -> None:
        self._db = db
        self._repo = repository
        self._receiver = receiver
        self._national = national
        self._metrics = metrics

    async def allocate_code_pool(
        self, caller: Identity, request: delivery_pb2.AllocateCodePoolRequest
    ) -> list[str]:
        """Obtain a pool from the national node and remember it for the pool check."""
        check_known_local_government(request.municipality_code, "municipality_code")
        check_pool_request(request.count, request.request_id, MAX_POOL)
        authorize_pool_request(caller, request.municipality_code)
        async with self._db.read() as conn:
            earlier = await self._repo.pool_of_request(conn, request.request_id)
        if earlier is not None and earlier[0] == request.municipality_code:
            return earlier[1]
        # The national call is idempotent by request_id, so a crash between it and
        # the write below only means the municipality asks again and gets the same.
        try:
            response: delivery_pb2.AllocateCodePoolResponse = await self._national.AllocateCodePool(
                request, timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise from_upstream(exc, NATIONAL) from exc
        codes = list(response.resident_codes)
        async with self._db.write() as conn:
            if await self._repo.pool_of_request(conn, request.request_id) is None:
                await self._repo.record_pool(
                    conn, codes, request.municipality_code, request.request_id
                )
        self._metrics.codes_issued.inc(len(codes))
        return codes

    async def disclose(
        self, caller: Identity, request: provision_pb2.DiscloseRequest
    ) -> provision_pb2.DiscloseResponse:
        """Relay a municipal counter's disclosure request to the national node,
        naming the calling municipality (which the national node checks against
        the resident's record)."""
        check_resident_code(request.resident_code)
        municipality = disclosure_for(caller, request.municipality_code)
        relayed = provision_pb2.DiscloseRequest(
            resident_code=request.resident_code,
            municipality_code=municipality,
            with_proofs=request.with_proofs,
        )
        try:
            response: provision_pb2.DiscloseResponse = await self._national.Disclose(
                relayed, timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise from_upstream(exc, NATIONAL) from exc
        return response

    async def delivery_status(self) -> delivery_pb2.GetDeliveryStatusResponse:
        """The cursors of the municipalities received, and the relay outbox."""
        async with self._db.read() as conn:
            status = await self._repo.relay_status(conn)
        return await self._receiver.delivery_status(
            status.last_sequence, status.acknowledged_through
        )
