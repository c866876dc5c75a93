"""Use cases of the agency gateway, the only door for national agencies.

Every request goes through the same steps, in this order:

1. the agency is the one its certificate names (never anything in the request);
2. the purpose code's syntax, and a VerifyBatch message's size against the
   largest the registry allows, are checked before anything is recorded,
   logged or echoed (INVALID_ARGUMENT);
3. the purpose registry authorizes (agency, purpose, operation, fields); a
   refusal takes one token per record from the agency's refusal bucket
   (RESOURCE_EXHAUSTED, nothing recorded, when it is empty), then is recorded
   at the national node (RecordDenial), counted, logged and returned as
   PERMISSION_DENIED with its reason;
4. the lookups are taken from the agency's bucket for that purpose, one per
   verification (RESOURCE_EXHAUSTED with ``retry-after-ms`` when it is empty);
5. the per-request caps and the input are checked (INVALID_ARGUMENT);
6. the national node answers, having recorded the provision first;
7. the answer is filtered once more to the purpose's fields.

Metric labels name registered agencies and purposes only (the metrics'
closed label sets), so invented codes never create time series.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence

import grpc
from google.protobuf.message import Message

from gateway.coalescer import DEFAULT_WINDOW, VerifyCoalescer
from gateway.logic import (
    batch_codes,
    check_batch_size,
    denial_targets,
    effective_fields,
    filter_record,
    filter_verification,
    resolve_max_candidates,
    stray_fields,
)
from gateway.national import NationalClient
from gateway.quotas import QuotaExceeded, Quotas
from gateway.spool import RETRYABLE, DenialSpool, SpooledDenial
from jukinet.codes import check_resident_code
from jukinet.errors import InvalidArgument, JukinetError
from jukinet.metrics import UNKNOWN_LABEL, GatewayMetrics
from jukinet.purposes import Operation, Purpose, PurposeDenied, PurposeRegistry
from jukinet.reasons import Reason
from jukinet.v1 import gateway_pb2, provision_pb2
from jukinet.validation import (
    check_claim,
    check_date,
    check_kana,
    check_message_text,
    check_name,
    check_purpose_code,
    check_sex,
)
from jukinet.vocabulary import ResultValue, result_label, verification_outcome

log = logging.getLogger("jukinet.gateway")

DENIAL_CONCURRENCY = 16
# Verify requests sent to the national node in one call at most (it takes
# up to 10,000 items; VerifyBatch messages are capped lower by each purpose).
VERIFY_MAX_ITEMS = 1000
DRAIN_SECONDS = 2.0
"""How long a VerifyBatch that ended early goes on reading (and dropping) the
agency's messages before its status is sent."""


async def _drain(requests: AsyncIterator[object]) -> None:
    """Read and drop ``requests`` until their end, for at most :data:`DRAIN_SECONDS`."""
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in requests:
                pass


class GatewayService:
    """Agencies' requests, checked and forwarded to the national node. Every
    method takes the calling agency's code, as its certificate names it."""

    def __init__(
        self,
        *,
        registry: PurposeRegistry,
        national: NationalClient,
        quotas: Quotas,
        metrics: GatewayMetrics,
        spool: DenialSpool,
        batch_pipeline: int = 2,
        verify_window: int = DEFAULT_WINDOW,
    ) -> None:
        if batch_pipeline < 1:
            raise ValueError("batch_pipeline must be at least 1")
        self._registry = registry
        self._national = national
        self._quotas = quotas
        self._metrics = metrics
        self._spool = spool
        self._pipeline = batch_pipeline
        self._coalescer = VerifyCoalescer(
            lambda agency, purpose, items: self._national.provide_verification(
                agency, purpose, Operation.VERIFY, items
            ),
            window=verify_window,
            max_items=VERIFY_MAX_ITEMS,
        )

    async def close(self) -> None:
        """Cancel the national calls still in flight."""
        await self._coalescer.close()

    # -- the common steps ----------------------------------------------------------

    async def _admit(
        self,
        agency: str,
        purpose_code: str,
        operation: Operation,
        fields: Collection[str],
        named: Callable[[], Sequence[str]],
        *,
        request: Message,
        items: int | None = None,
    ) -> Purpose:
        """Check the purpose code, every text of the request (no control
        characters) and a batch's size, authorize, and charge the quota;
        record and raise a refusal. ``items`` is the item count of a
        VerifyBatch message; ``named`` gives the resident codes a refusal names."""
        try:
            check_purpose_code(purpose_code)
            if items is not None:
                # Before anything is recorded per code: a refused message is
                # recorded once per resident it names.
                check_batch_size(items, self._registry.max_batch_size)
            check_message_text(request)
        except InvalidArgument as exc:
            self._metrics.count_gateway_denial(agency, UNKNOWN_LABEL, operation, exc.reason)
            raise
        try:
            purpose = self._registry.authorize(agency, purpose_code, operation, fields)
        except PurposeDenied as denied:
            codes = named()
            self._charge_refusal(denied, len(denial_targets(codes)))
            await self._deny(denied, codes)
            raise
        if items is not None:
            check_batch_size(items, purpose.quota.max_batch_size, purpose.code)
        try:
            self._quotas.charge(agency, purpose, max(1, items or 0))
        except QuotaExceeded as exc:
            self._metrics.count_gateway_denial(
                agency, purpose.code, operation, Reason.QUOTA_EXCEEDED
            )
            log.info(
                "quota: agency %s purpose %s %s refused, retry after %d ms",
                agency,
                purpose.code,
                operation.value,
                exc.retry_after_ms,
            )
            raise
        return purpose

    def _charge_refusal(self, denied: PurposeDenied, records: int) -> None:
        """Take ``records`` tokens from the agency's refusal bucket, or raise."""
        key = self._metrics.agency_label(denied.agency_code)
        try:
            self._quotas.charge_refusal(key, records)
        except QuotaExceeded as exc:
            self._metrics.count_gateway_denial(
                denied.agency_code, denied.purpose_code, denied.operation, Reason.QUOTA_EXCEEDED
            )
            log.info(
                "quota: agency %s refused requests over quota, retry after %d ms",
                key,
                exc.retry_after_ms,
            )
            raise

    async def _deny(self, denied: PurposeDenied, named: Sequence[str]) -> None:
        """Count, log and record a refusal at the national node; kept in the
        spool when the national node cannot be reached."""
        self._metrics.count_gateway_denial(
            denied.agency_code, denied.purpose_code, denied.operation, denied.reason
        )
        self._metrics.count_provisions(
            denied.agency_code,
            denied.purpose_code,
            denied.operation,
            result_label(provision_pb2.PROVISION_RESULT_DENIED),
        )
        log.warning(
            "denied: agency %s, operation %s, %s: %s",
            denied.agency_code,
            denied.operation,
            denied.reason,
            denied.message,
        )
        targets = denial_targets(named)
        limit = asyncio.Semaphore(DENIAL_CONCURRENCY)

        async def record(code: str) -> grpc.aio.AioRpcError | None:
            async with limit:
                try:
                    await self._national.record_denial(
                        denied.agency_code,
                        denied.purpose_code,
                        denied.operation,
                        code,
                        denied.reason,
                    )
                except grpc.aio.AioRpcError as exc:
                    return exc
                return None

        outcomes = await asyncio.gather(*map(record, targets))
        failures = [(code, f) for code, f in zip(targets, outcomes, strict=True) if f is not None]
        if not failures:
            return
        spooled = [code for code, f in failures if f.code() in RETRYABLE]
        # Kept on disk until the national node is back and records them.
        await self._spool.add(
            *(
                SpooledDenial(
                    denied.agency_code, denied.purpose_code, denied.operation, code, denied.reason
                )
                for code in spooled
            )
        )
        if len(spooled) < len(failures):
            # Refused by the national node: the log is then its only record.
            log.error(
                "%d of %d denial records were refused by the national node: %s",
                len(failures) - len(spooled),
                len(targets),
                next(f for _, f in failures if f.code() not in RETRYABLE).code().name,
            )
        if spooled:
            log.warning("%d denial records spooled until the national node is back", len(spooled))

    @contextlib.contextmanager
    def _timed(self, operation: Operation) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._metrics.gateway_latency.labels(operation.value).observe(
                time.perf_counter() - start
            )

    def _count(
        self, agency: str, purpose: Purpose, operation: Operation, result: ResultValue, n: int = 1
    ) -> None:
        self._metrics.count_provisions(agency, purpose.code, operation, result_label(result), n)

    def _filtered(
        self, record: gateway_pb2.ProvidedRecord, allowed: frozenset[str], purpose: Purpose
    ) -> gateway_pb2.ProvidedRecord:
        stray = stray_fields(record, allowed)
        if stray:
            # The national node minimises too; this must never happen.
            log.error(
                "the national node returned field(s) %s outside purpose %s; removed",
                ", ".join(stray),
                purpose.code,
            )
        return filter_record(record, allowed)

    async def _verify_items(
        self,
        agency: str,
        purpose: Purpose,
        operation: Operation,
        items: Sequence[gateway_pb2.VerifyBatchItem],
    ) -> tuple[list[gateway_pb2.VerifyBatchResult], list[str]]:
        """Verifications of ``items`` by the national node, filtered and counted."""
        national_results, ids = await self._national.provide_verification(
            agency, purpose, operation, items
        )
        results = []
        outcomes: Counter[ResultValue] = Counter()
        for item, result in zip(items, national_results, strict=True):
            verification = filter_verification(result.verification, purpose)
            outcomes[verification_outcome(verification)] += 1
            results.append(
                gateway_pb2.VerifyBatchResult(item_id=item.item_id, verification=verification)
            )
        for outcome, n in outcomes.items():
            self._count(agency, purpose, operation, outcome, n)
        return results, list(ids)

    # -- the methods ---------------------------------------------------------------

    async def verify(
        self, agency: str, request: gateway_pb2.VerifyRequest
    ) -> gateway_pb2.VerifyResponse:
        """Verify one claimed identity: match or not, item by item."""
        with self._timed(Operation.VERIFY):
            purpose = await self._admit(
                agency,
                request.purpose_code,
                Operation.VERIFY,
                (),
                lambda: [request.claim.resident_code],
                request=request,
            )
            check_claim(request.claim, "claim")
            # Shares one national call with the other requests of this agency
            # and purpose waiting at this moment (gateway.coalescer).
            found, provision_id = await self._coalescer.verify(
                agency, purpose, gateway_pb2.VerifyBatchItem(claim=request.claim)
            )
            verification = filter_verification(found, purpose)
            self._count(agency, purpose, Operation.VERIFY, verification_outcome(verification))
            return gateway_pb2.VerifyResponse(verification=verification, provision_id=provision_id)

    async def retrieve(
        self, agency: str, request: gateway_pb2.RetrieveRequest
    ) -> gateway_pb2.RetrieveResponse:
        """One record, with only the purpose's (requested) fields."""
        with self._timed(Operation.RETRIEVE):
            purpose = await self._admit(
                agency,
                request.purpose_code,
                Operation.RETRIEVE,
                request.fields,
                lambda: [request.resident_code],
                request=request,
            )
            check_resident_code(request.resident_code, "resident_code")
            if request.as_of:
                check_date(request.as_of, "as_of")
            allowed = effective_fields(purpose, request.fields)
            try:
                response = await self._national.provide_record(
                    agency, purpose, request.resident_code, request.as_of, request.fields
                )
            except JukinetError as exc:
                if exc.code is grpc.StatusCode.NOT_FOUND:
                    self._count(
                        agency,
                        purpose,
                        Operation.RETRIEVE,
                        provision_pb2.PROVISION_RESULT_NOT_FOUND,
                    )
                raise
            self._count(
                agency, purpose, Operation.RETRIEVE, provision_pb2.PROVISION_RESULT_PROVIDED
            )
            return gateway_pb2.RetrieveResponse(
                record=self._filtered(response.record, allowed, purpose),
                provision_id=response.provision_id,
            )

    async def search(
        self, agency: str, request: gateway_pb2.SearchRequest
    ) -> gateway_pb2.SearchResponse:
        """Candidates for a name, with only the purpose's (requested) fields."""
        with self._timed(Operation.SEARCH):
            purpose = await self._admit(
                agency,
                request.purpose_code,
                Operation.SEARCH,
                request.fields,
                tuple,
                request=request,
            )
            limit = resolve_max_candidates(request.max_candidates, purpose.quota, purpose.code)
            check_name(request.name, "name")
            if request.name_kana:
                check_kana(request.name_kana, "name_kana")
            if request.birth_date:
                check_date(request.birth_date, "birth_date")
            if request.sex:
                check_sex(request.sex, "sex")
            allowed = effective_fields(purpose, request.fields)
            response = await self._national.provide_search(agency, purpose, request, limit)
            candidates = [
                gateway_pb2.SearchCandidate(
                    record=self._filtered(c.record, allowed, purpose), score=c.score
                )
                for c in response.candidates[:limit]
            ]
            if candidates:
                for _ in candidates:
                    self._count(
                        agency, purpose, Operation.SEARCH, provision_pb2.PROVISION_RESULT_CANDIDATE
                    )
            else:
                self._count(
                    agency, purpose, Operation.SEARCH, provision_pb2.PROVISION_RESULT_NOT_FOUND
                )
            return gateway_pb2.SearchResponse(
                candidates=candidates, provision_id=response.provision_id
            )

    async def verify_batch(
        self, agency: str, request_iterator: AsyncIterator[gateway_pb2.VerifyBatchRequest]
    ) -> AsyncIterator[gateway_pb2.VerifyBatchResponse]:
        """One response per request message, in order.

        A reader admits and checks each message in turn and starts its
        national lookup; at most ``batch_pipeline`` messages are in flight, and
        the reader does not read the next message until a slot frees up, so
        a fast sender is held back by gRPC flow control. A refused or failed
        message ends the stream after the responses of the messages before it.
        The messages sent after it are read and dropped (nothing is admitted,
        counted or recorded for them) for at most :data:`DRAIN_SECONDS`, so
        that the agency has finished sending when the status arrives: an
        asyncio client still writing when its call ends reports INTERNAL
        instead of the status the call ended with (grpc/grpc#36066).
        """
        slots = asyncio.Semaphore(self._pipeline)
        stop = asyncio.Event()
        queue: asyncio.Queue[asyncio.Future[gateway_pb2.VerifyBatchResponse] | None] = (
            asyncio.Queue()
        )
        reader = asyncio.create_task(
            self._read_batches(agency, request_iterator, slots, queue, stop),
            name="verify-batch-reader",
        )
        try:
            while (pending := await queue.get()) is not None:
                try:
                    response = await pending
                except Exception:
                    # Let the reader drop what the agency still sends.
                    stop.set()
                    for _ in range(self._pipeline):
                        slots.release()
                    with contextlib.suppress(Exception, asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reader), DRAIN_SECONDS + 1)
                    raise
                slots.release()
                yield response
            await reader
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            while not queue.empty():
                left = queue.get_nowait()
                if left is not None:
                    left.cancel()
                    with contextlib.suppress(BaseException):
                        await left

    async def _read_batches(
        self,
        agency: str,
        requests: AsyncIterator[gateway_pb2.VerifyBatchRequest],
        slots: asyncio.Semaphore,
        queue: asyncio.Queue[asyncio.Future[gateway_pb2.VerifyBatchResponse] | None],
        stop: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                await slots.acquire()
                if stop.is_set():
                    break
                try:
                    message = await anext(requests)
                except StopAsyncIteration:
                    queue.put_nowait(None)
                    return
                if stop.is_set():
                    break  # read after a failure: dropped
                started = time.perf_counter()
                purpose = await self._admit(
                    agency,
                    message.purpose_code,
                    Operation.VERIFY_BATCH,
                    (),
                    functools.partial(batch_codes, message),
                    request=message,
                    items=len(message.items),
                )
                for i, item in enumerate(message.items):
                    check_claim(item.claim, f"items[{i}].claim")
                queue.put_nowait(
                    asyncio.ensure_future(self._one_batch(agency, purpose, message, started))
                )
        except Exception as exc:
            failed: asyncio.Future[gateway_pb2.VerifyBatchResponse] = loop.create_future()
            failed.set_exception(exc)
            queue.put_nowait(failed)
        await _drain(requests)
        queue.put_nowait(None)

    async def _one_batch(
        self,
        agency: str,
        purpose: Purpose,
        message: gateway_pb2.VerifyBatchRequest,
        started: float,
    ) -> gateway_pb2.VerifyBatchResponse:
        try:
            if not message.items:
                return gateway_pb2.VerifyBatchResponse()
            results, _ = await self._verify_items(
                agency, purpose, Operation.VERIFY_BATCH, message.items
            )
            return gateway_pb2.VerifyBatchResponse(results=results)
        finally:
            self._metrics.gateway_latency.labels(Operation.VERIFY_BATCH.value).observe(
                time.perf_counter() - started
            )
