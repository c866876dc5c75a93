"""gRPC surface of a prefecture node: each RPC hands its request to the
receiver or the prefecture's use cases and returns their answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from jukinet.audit import Witness
from jukinet.delivery.receiver import Receiver
from jukinet.interceptors import current_identity
from jukinet.v1 import delivery_pb2, oplog_pb2, prefecture_pb2_grpc, provision_pb2
from services.prefecture.service import PrefectureService


class PrefectureServicer(prefecture_pb2_grpc.PrefectureServiceServicer):
    """The PrefectureService RPCs."""

    def __init__(self, receiver: Receiver, service: PrefectureService, witness: Witness) -> None:
        self._receiver = receiver
        self._service = service
        self._witness = witness

    async def PushNotifications(
        self, request_iterator: AsyncIterator[delivery_pb2.PushNotificationsRequest], context: Any
    ) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
        """Apply a municipality's notifications and relay them upward; its municipalities only."""
        async for response in self._receiver.push(request_iterator):
            yield response

    async def AllocateCodePool(
        self, request: delivery_pb2.AllocateCodePoolRequest, context: Any
    ) -> delivery_pb2.AllocateCodePoolResponse:
        """Codes from the national node for the calling municipality; its municipalities only."""
        codes = await self._service.allocate_code_pool(current_identity(), request)
        return delivery_pb2.AllocateCodePoolResponse(resident_codes=codes)

    async def GetIdentity(
        self, request: delivery_pb2.GetIdentityRequest, context: Any
    ) -> delivery_pb2.GetIdentityResponse:
        """One stored record with its history; its operators only."""
        return await self._receiver.get_identity(request)

    async def ExportIdentities(
        self, request: delivery_pb2.ExportIdentitiesRequest, context: Any
    ) -> AsyncIterator[delivery_pb2.ExportIdentitiesResponse]:
        """Every stored record, page by page; its operators only."""
        async for page in self._receiver.export(request):
            yield page

    async def Disclose(
        self, request: provision_pb2.DiscloseRequest, context: Any
    ) -> provision_pb2.DiscloseResponse:
        """A municipal counter's disclosure request, answered by the national node; its
        municipalities only, each for the residents it holds."""
        return await self._service.disclose(current_identity(), request)

    async def GetDeliveryStatus(
        self, request: delivery_pb2.GetDeliveryStatusRequest, context: Any
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        """How far delivery has come, in and out; its operators only."""
        return await self._service.delivery_status()

    # -- the operation log's heads ---------------------------------------------------

    async def SubmitCheckpoint(
        self, request: oplog_pb2.SubmitCheckpointRequest, context: Any
    ) -> oplog_pb2.SubmitCheckpointResponse:
        """Keep and cosign a head of the caller's own operation log; its municipalities only."""
        return await self._witness.submit(current_identity(), request)

    async def GetCheckpoints(
        self, request: oplog_pb2.GetCheckpointsRequest, context: Any
    ) -> oplog_pb2.GetCheckpointsResponse:
        """The heads held for a log: its node itself (a municipality, or the national
        node for the heads of its log this prefecture witnessed), or this tier's operators."""
        return await self._witness.checkpoints(current_identity(), request)
