"""The gateway's one way out: calls to the national node on behalf of an
agency. Its refusals keep their status, reason and field (``from_upstream``)."""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Sequence
from typing import TypeVar

import grpc

from gateway.logic import provision_context
from jukinet.errors import Unavailable, from_upstream
from jukinet.purposes import Operation, Purpose
from jukinet.v1 import gateway_pb2, national_pb2_grpc, provision_pb2
from jukinet.vocabulary import operation_of

NATIONAL = "national node"
UPSTREAM_TIMEOUT = 30.0  # seconds for one lookup at the national node
DENIAL_TIMEOUT = 5.0  # recording a refusal must not hold the refusal up for long

T = TypeVar("T")


class NationalClient:
    """The national node's provision RPCs, with the gateway's timeouts."""

    def __init__(
        self,
        national: national_pb2_grpc.NationalServiceAsyncStub,
        *,
        timeout: float = UPSTREAM_TIMEOUT,
    ) -> None:
        self._national = national
        self._timeout = timeout

    async def _upstream(self, call: Awaitable[T]) -> T:
        """The national node's answer; its refusals keep their status, reason, field."""
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise from_upstream(exc, NATIONAL) from exc

    async def provide_verification(
        self,
        agency: str,
        purpose: Purpose,
        operation: Operation,
        items: Sequence[gateway_pb2.VerifyBatchItem],
    ) -> tuple[Sequence[gateway_pb2.VerifyBatchResult], Sequence[str]]:
        """The national node's verifications of ``items`` and their provision ids, unfiltered."""
        response: provision_pb2.ProvideVerificationResponse = await self._upstream(
            self._national.ProvideVerification(
                provision_pb2.ProvideVerificationRequest(
                    context=provision_context(agency, purpose),
                    operation=operation_of(operation.value),
                    items=items,
                ),
                timeout=self._timeout,
            )
        )
        if len(response.results) != len(items) or len(response.provision_ids) != len(items):
            raise Unavailable(f"{NATIONAL}: {len(response.results)} results for {len(items)} items")
        return response.results, response.provision_ids

    async def provide_record(
        self,
        agency: str,
        purpose: Purpose,
        resident_code: str,
        as_of: str,
        fields: Collection[str],
    ) -> provision_pb2.ProvideRecordResponse:
        """One record from the national node, unfiltered."""
        response: provision_pb2.ProvideRecordResponse = await self._upstream(
            self._national.ProvideRecord(
                provision_pb2.ProvideRecordRequest(
                    context=provision_context(agency, purpose),
                    resident_code=resident_code,
                    as_of=as_of,
                    fields=fields,
                ),
                timeout=self._timeout,
            )
        )
        return response

    async def provide_search(
        self, agency: str, purpose: Purpose, query: gateway_pb2.SearchRequest, limit: int
    ) -> provision_pb2.ProvideSearchResponse:
        """Candidates from the national node, unfiltered."""
        response: provision_pb2.ProvideSearchResponse = await self._upstream(
            self._national.ProvideSearch(
                provision_pb2.ProvideSearchRequest(
                    context=provision_context(agency, purpose),
                    query=query,
                    max_candidates=limit,
                ),
                timeout=self._timeout,
            )
        )
        return response

    async def record_denial(
        self, agency: str, purpose_code: str, operation: str, resident_code: str, reason: str
    ) -> None:
        """Record a refusal at the national node; raises the call's error as it came.
        ``operation`` is the operation asked for, by its registry name."""
        await self._national.RecordDenial(
            provision_pb2.RecordDenialRequest(
                agency_code=agency,
                purpose_code=purpose_code[:64],
                operation=operation_of(operation),
                resident_code=resident_code,
                reason=reason,
            ),
            timeout=DENIAL_TIMEOUT,
        )
