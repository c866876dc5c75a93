"""gRPC surface of the national node: each RPC hands its request to the
receiver or the national use cases and returns their answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from jukinet.audit import CheckpointKeeper, Witness
from jukinet.delivery.receiver import Receiver
from jukinet.interceptors import current_identity
from jukinet.v1 import delivery_pb2, national_pb2_grpc, oplog_pb2, provision_pb2
from services.national.service import NationalService


class NationalServicer(national_pb2_grpc.NationalServiceServicer):
    """The NationalService RPCs."""

    def __init__(
        self,
        receiver: Receiver,
        service: NationalService,
        witness: Witness,
        keeper: CheckpointKeeper,
    ) -> None:
        self._receiver = receiver
        self._service = service
        self._witness = witness
        self._keeper = keeper

    # -- delivery and reads ------------------------------------------------------

    async def PushNotifications(
        self, request_iterator: AsyncIterator[delivery_pb2.PushNotificationsRequest], context: Any
    ) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
        """Apply a prefecture's relayed notifications, acknowledging each batch; prefectures
        only."""
        async for response in self._receiver.push(request_iterator):
            yield response

    async def GetIdentity(
        self, request: delivery_pb2.GetIdentityRequest, context: Any
    ) -> delivery_pb2.GetIdentityResponse:
        """One stored record with its history; national operators only."""
        return await self._receiver.get_identity(request)

    async def ExportIdentities(
        self, request: delivery_pb2.ExportIdentitiesRequest, context: Any
    ) -> AsyncIterator[delivery_pb2.ExportIdentitiesResponse]:
        """Every stored record, page by page; national operators only."""
        async for page in self._receiver.export(request):
            yield page

    async def GetDeliveryStatus(
        self, request: delivery_pb2.GetDeliveryStatusRequest, context: Any
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        """How far delivery from each prefecture has come; national operators only."""
        return await self._service.delivery_status()

    async def AllocateCodePool(
        self, request: delivery_pb2.AllocateCodePoolRequest, context: Any
    ) -> delivery_pb2.AllocateCodePoolResponse:
        """Fresh codes for a municipality of the calling prefecture; prefectures only."""
        codes = await self._service.allocate_code_pool(current_identity(), request)
        return delivery_pb2.AllocateCodePoolResponse(resident_codes=codes)

    # -- for the gateway -----------------------------------------------------------

    async def ProvideVerification(
        self, request: provision_pb2.ProvideVerificationRequest, context: Any
    ) -> provision_pb2.ProvideVerificationResponse:
        """Verifications of claimed identities, each on record; the gateway only."""
        return await self._service.provide_verification(request)

    async def ProvideRecord(
        self, request: provision_pb2.ProvideRecordRequest, context: Any
    ) -> provision_pb2.ProvideRecordResponse:
        """One record, minimised to the purpose's fields, on record; the gateway only."""
        return await self._service.provide_record(request)

    async def ProvideSearch(
        self, request: provision_pb2.ProvideSearchRequest, context: Any
    ) -> provision_pb2.ProvideSearchResponse:
        """Ranked candidates, minimised to the purpose's fields, on record; the gateway only."""
        return await self._service.provide_search(request)

    async def RecordDenial(
        self, request: provision_pb2.RecordDenialRequest, context: Any
    ) -> provision_pb2.RecordDenialResponse:
        """A refusal at the gateway, recorded like a provision; the gateway only."""
        return provision_pb2.RecordDenialResponse(
            provision_id=await self._service.record_denial(request)
        )

    # -- for the resident ------------------------------------------------------------

    async def Disclose(
        self, request: provision_pb2.DiscloseRequest, context: Any
    ) -> provision_pb2.DiscloseResponse:
        """A resident's record and who received it; for a prefecture relaying a municipal
        counter (for a resident its municipality holds), or national operators."""
        return await self._service.disclose(current_identity(), request)

    # -- the operation log's heads ---------------------------------------------------

    async def SubmitCheckpoint(
        self, request: oplog_pb2.SubmitCheckpointRequest, context: Any
    ) -> oplog_pb2.SubmitCheckpointResponse:
        """Keep and cosign a head of the caller's own operation log; prefectures only."""
        return await self._witness.submit(current_identity(), request)

    async def GetCheckpoints(
        self, request: oplog_pb2.GetCheckpointsRequest, context: Any
    ) -> oplog_pb2.GetCheckpointsResponse:
        """The heads held for a log: its node itself, or this tier's operators."""
        return await self._witness.checkpoints(current_identity(), request)

    async def GetLogHead(
        self, request: oplog_pb2.GetLogHeadRequest, context: Any
    ) -> oplog_pb2.GetLogHeadResponse:
        """The national log's newest head for a prefecture to witness; prefectures only."""
        return await self._keeper.newest_head(request.old_size)

    async def CosignLogHead(
        self, request: oplog_pb2.CosignLogHeadRequest, context: Any
    ) -> oplog_pb2.CosignLogHeadResponse:
        """Keep a prefecture's cosignature of a national head; prefectures only."""
        return await self._keeper.cosigned_by(current_identity(), request)
