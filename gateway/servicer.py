"""gRPC surface of the agency gateway: each RPC names the calling agency
(from its certificate) and hands the request to :mod:`gateway.service`.

Every text of an agency's request is refused at this edge if it holds a
control character (a NUL above all): nothing such reaches a check that
echoes it, a log line or the national node's provision records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.service import GatewayService
from jukinet.identity import Kind
from jukinet.interceptors import current_identity
from jukinet.v1 import gateway_pb2, gateway_pb2_grpc


def _agency() -> str:
    """The calling agency's code, from its certificate."""
    identity = current_identity()
    if identity.kind is not Kind.AGENCY:  # the method rules make this unreachable
        raise RuntimeError(f"{identity.uri} reached an agency method")
    return identity.code


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """The GatewayService RPCs."""

    def __init__(self, service: GatewayService) -> None:
        self._service = service

    async def Verify(
        self, request: gateway_pb2.VerifyRequest, context: Any
    ) -> gateway_pb2.VerifyResponse:
        """Verify one claimed identity; agencies only, for a purpose the registry gives them."""
        return await self._service.verify(_agency(), request)

    async def Retrieve(
        self, request: gateway_pb2.RetrieveRequest, context: Any
    ) -> gateway_pb2.RetrieveResponse:
        """One record, minimised to the purpose; agencies only, as for Verify."""
        return await self._service.retrieve(_agency(), request)

    async def Search(
        self, request: gateway_pb2.SearchRequest, context: Any
    ) -> gateway_pb2.SearchResponse:
        """Candidates for a name, minimised to the purpose; agencies only, as for Verify."""
        return await self._service.search(_agency(), request)

    async def VerifyBatch(
        self, request_iterator: AsyncIterator[gateway_pb2.VerifyBatchRequest], context: Any
    ) -> AsyncIterator[gateway_pb2.VerifyBatchResponse]:
        """One verification response per request message, in order; agencies only, as for Verify."""
        async for response in self._service.verify_batch(_agency(), request_iterator):
            yield response
