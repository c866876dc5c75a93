"""gRPC surface of the national node: thin translation to the holdings and pools."""

from __future__ import annotations

from collections import Counter
from typing import Any

from jukinet.codes import check_resident_code, is_valid_resident_code, prefecture_of
from jukinet.db import Database
from jukinet.delivery.receiver import HoldingRpcs, HoldingService
from jukinet.delivery.rules import Held
from jukinet.errors import InvalidArgument, NotFound, PermissionDenied
from jukinet.identity import Identity
from jukinet.interceptors import current_identity
from jukinet.metrics import NodeMetrics
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, delivery_pb2, gateway_pb2, national_pb2_grpc, provision_pb2
from jukinet.validation import (
    check_claim,
    check_date,
    check_kana,
    check_known_local_government,
    check_name,
    check_pool_request,
    check_sex,
)
from services.national.connections import HeldConnections
from services.national.logic import (
    choose_unique,
    provided,
    resolve_fields,
    search_score,
    verify,
)
from services.national.provisions import ProvisionEntry, ProvisionLog, provisions_of
from services.national.repository import (
    allocate_pool,
    candidates,
    candidates_by_name_and_birth,
    identify_by_codes,
    record_as_of,
)


def authorize_prefecture_origin(caller: Identity, n: common_pb2.Notification, prefix: str) -> None:
    """A prefecture relays only its own municipalities' notifications."""
    if prefecture_of(n.origin_code) != caller.code:
        raise PermissionDenied(
            f"{prefix}.origin_code: {n.origin_code} is not a municipality of prefecture "
            f"{caller.code}",
            reason=Reason.FOREIGN_ORIGIN,
        )


VERIFY_OPERATIONS = frozenset({"verify", "verify_batch"})
MAX_ITEMS = 10_000
MAX_CANDIDATES = 100


def _outcome(claim: gateway_pb2.ClaimedIdentity, v: gateway_pb2.Verification) -> str:
    if not v.found:
        return "not-found"
    items = (v.resident_code, v.name, v.birth_date, v.sex, v.address)
    if any(i == gateway_pb2.ITEM_MATCH_NO_MATCH for i in items):
        return "no-match"
    return "match"


class NationalServicer(HoldingRpcs, national_pb2_grpc.NationalServiceServicer):
    def __init__(
        self,
        db: Database,
        holding: HoldingService,
        metrics: NodeMetrics,
        max_pool_size: int,
        provisions: ProvisionLog,
        held: HeldConnections | None = None,
    ) -> None:
        self._db = db
        # Connections kept for the lookups of ProvideVerification (every agency call).
        self._held = held if held is not None else HeldConnections(db, 1)
        self._holding = holding
        self._store = holding.store
        self._metrics = metrics
        self._max_pool_size = max_pool_size
        self._provisions = provisions

    async def _record(self, entries: list[ProvisionEntry]) -> list[str]:
        ids = await self._provisions.record(entries)
        counts = Counter((e.agency_code, e.purpose_code, e.operation, e.result) for e in entries)
        for labels, n in counts.items():
            self._metrics.provisions.labels(*labels).inc(n)
        return ids

    # -- for the gateway -------------------------------------------------------

    async def ProvideVerification(
        self, request: provision_pb2.ProvideVerificationRequest, context: Any
    ) -> provision_pb2.ProvideVerificationResponse:
        ctx = request.context
        if request.operation not in VERIFY_OPERATIONS:
            raise InvalidArgument("operation", "must be verify or verify_batch")
        if len(request.items) > MAX_ITEMS:
            raise InvalidArgument("items", f"at most {MAX_ITEMS}")
        for i, item in enumerate(request.items):
            check_claim(item.claim, f"items[{i}].claim")
        coded = [item.claim.resident_code for item in request.items if item.claim.resident_code]
        # check_claim: a claim without a code names the name and the birth date.
        by_items = [
            (item.claim.name, item.claim.birth_date)
            for item in request.items
            if not item.claim.resident_code
        ]
        async with self._held.acquire() as conn:
            by_code = await identify_by_codes(self._store, conn, coded) if coded else {}
            found = (
                await candidates_by_name_and_birth(
                    self._store, conn, by_items, limit=MAX_CANDIDATES
                )
                if by_items
                else []
            )
        identified: list[Held | None] = []
        next_found = iter(found)
        for item in request.items:
            claim = item.claim
            if claim.resident_code:
                identified.append(by_code.get(claim.resident_code))
            else:
                identified.append(choose_unique(claim, next(next_found)))
        results = []
        entries = []
        for item, held in zip(request.items, identified, strict=True):
            verification = verify(item.claim, held)
            results.append(
                gateway_pb2.VerifyBatchResult(item_id=item.item_id, verification=verification)
            )
            code = held.resident_code if held is not None else item.claim.resident_code
            entries.append(
                ProvisionEntry(
                    ctx.agency_code,
                    ctx.purpose_code,
                    request.operation,
                    code,
                    (),
                    _outcome(item.claim, verification),
                )
            )
        ids = await self._record(entries)
        return provision_pb2.ProvideVerificationResponse(results=results, provision_ids=ids)

    async def ProvideRecord(
        self, request: provision_pb2.ProvideRecordRequest, context: Any
    ) -> provision_pb2.ProvideRecordResponse:
        ctx = request.context
        check_resident_code(request.resident_code)
        if request.as_of:
            check_date(request.as_of, "as_of")
        fields = resolve_fields(ctx.allowed_fields, request.fields)
        async with self._db.read() as conn:
            if request.as_of:
                held = await record_as_of(self._store, conn, request.resident_code, request.as_of)
            else:
                held = (await identify_by_codes(self._store, conn, [request.resident_code]))[
                    request.resident_code
                ]
        if held is None:
            await self._record(
                [
                    ProvisionEntry(
                        ctx.agency_code,
                        ctx.purpose_code,
                        "retrieve",
                        request.resident_code,
                        (),
                        "not-found",
                    )
                ]
            )
            raise NotFound(
                "no record for that resident code" + (" on that date" if request.as_of else "")
            )
        ids = await self._record(
            [
                ProvisionEntry(
                    ctx.agency_code,
                    ctx.purpose_code,
                    "retrieve",
                    held.resident_code,
                    fields,
                    "provided",
                )
            ]
        )
        return provision_pb2.ProvideRecordResponse(
            record=provided(held, fields), provision_id=ids[0]
        )

    async def ProvideSearch(
        self, request: provision_pb2.ProvideSearchRequest, context: Any
    ) -> provision_pb2.ProvideSearchResponse:
        ctx = request.context
        query = request.query
        check_name(query.name, "query.name")
        if query.name_kana:
            check_kana(query.name_kana, "query.name_kana")
        if query.birth_date:
            check_date(query.birth_date, "query.birth_date")
        if query.sex:
            check_sex(query.sex, "query.sex")
        if not 1 <= request.max_candidates <= MAX_CANDIDATES:
            raise InvalidArgument("max_candidates", f"must be between 1 and {MAX_CANDIDATES}")
        fields = resolve_fields(ctx.allowed_fields, query.fields)
        async with self._db.read() as conn:
            found = await candidates(
                self._store,
                conn,
                name=query.name,
                kana=query.name_kana,
                birth_date=query.birth_date,
                limit=MAX_CANDIDATES * 4,
            )
        ranked = sorted(
            ((search_score(query, h), h) for h in found), key=lambda p: (-p[0], p[1].resident_code)
        )
        chosen = [(score, h) for score, h in ranked if score > 0][: request.max_candidates]
        if chosen:
            entries = [
                ProvisionEntry(
                    ctx.agency_code,
                    ctx.purpose_code,
                    "search",
                    h.resident_code,
                    fields,
                    "candidate",
                )
                for _, h in chosen
            ]
        else:
            entries = [
                ProvisionEntry(ctx.agency_code, ctx.purpose_code, "search", "", (), "not-found")
            ]
        ids = await self._record(entries)
        return provision_pb2.ProvideSearchResponse(
            candidates=[
                gateway_pb2.SearchCandidate(record=provided(h, fields), score=score)
                for score, h in chosen
            ],
            provision_id=ids[0],
        )

    async def RecordDenial(
        self, request: provision_pb2.RecordDenialRequest, context: Any
    ) -> provision_pb2.RecordDenialResponse:
        code = request.resident_code if is_valid_resident_code(request.resident_code) else ""
        ids = await self._record(
            [
                ProvisionEntry(
                    request.agency_code[:32],
                    request.purpose_code[:64],
                    request.operation[:16],
                    code,
                    (),
                    "denied",
                    request.reason[:64],
                )
            ]
        )
        return provision_pb2.RecordDenialResponse(provision_id=ids[0])

    # -- for the resident ------------------------------------------------------

    async def Disclose(
        self, request: provision_pb2.DiscloseRequest, context: Any
    ) -> provision_pb2.DiscloseResponse:
        check_resident_code(request.resident_code)
        held = await self._store.get_identity(request.resident_code)
        async with self._db.read() as conn:
            codes = await self._store.chain(conn, request.resident_code)
            provisions = await provisions_of(conn, sorted(codes))
        return provision_pb2.DiscloseResponse(identity=held.identity, provisions=provisions)

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
                reason=Reason.FOREIGN_ORIGIN,
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

    async def GetDeliveryStatus(
        self, request: delivery_pb2.GetDeliveryStatusRequest, context: Any
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        return await self._holding.delivery_status()
