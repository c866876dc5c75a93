"""Use cases of the national node: answering the gateway (each answer on
record before it leaves), disclosure to a resident, and code pools. Each
checks its input, owns its connection or transaction, and calls the pure
rules (:mod:`services.national.logic`) and the repository."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.codes import check_resident_code
from jukinet.db import Database
from jukinet.delivery.receiver import Receiver
from jukinet.delivery.rules import StoredIdentity
from jukinet.delivery.store import IdentityStore
from jukinet.errors import InvalidArgument, NotFound, PermissionDenied
from jukinet.identity import Identity
from jukinet.metrics import NationalMetrics
from jukinet.oplog import note
from jukinet.oplog.log import OperationLog
from jukinet.purposes import Operation, Purpose, PurposeRegistry
from jukinet.reasons import Reason
from jukinet.v1 import delivery_pb2, gateway_pb2, provision_pb2
from jukinet.validation import (
    check_claim,
    check_date,
    check_kana,
    check_known_local_government,
    check_name,
    check_pool_request,
    check_purpose_code,
    check_sex,
)
from jukinet.vocabulary import operation_label, result_label, verification_outcome
from services.national import repository as repo
from services.national.connections import KeptConnections
from services.national.logic import (
    authorize_disclosure,
    authorize_pool_request,
    choose_unique,
    disclosure_scope,
    earlier_pool,
    mint_candidates,
    provided,
    resolve_fields,
    search_score,
    verify,
)
from services.national.provisions import ProvisionEntry, ProvisionLog

VERIFY_OPERATIONS = frozenset(
    {provision_pb2.PROVISION_OPERATION_VERIFY, provision_pb2.PROVISION_OPERATION_VERIFY_BATCH}
)
MAX_ITEMS = 10_000
MAX_CANDIDATES = 100
UNKNOWN_PURPOSE_LABEL = "(unknown)"
# What a denial record keeps of the purpose code the agency sent (the column's width).
RETRIEVE = provision_pb2.PROVISION_OPERATION_RETRIEVE
SEARCH = provision_pb2.PROVISION_OPERATION_SEARCH


class NationalService:
    """What the national node does beyond receiving: see the module docstring."""

    def __init__(
        self,
        *,
        db: Database,
        store: IdentityStore,
        receiver: Receiver,
        provisions: ProvisionLog,
        oplog: OperationLog,
        kept: KeptConnections,
        metrics: NationalMetrics,
        max_pool_size: int,
        registry: PurposeRegistry,
    ) -> None:
        self._db = db
        # The same registry the gateway loads: every provision is authorized
        # again here, so a gateway that errs (or a stolen gateway key) cannot
        # widen what an agency receives.
        self._registry = registry
        self._store = store
        self._receiver = receiver
        self._provisions = provisions
        # The node's operation log, which holds every provision's entry.
        self._oplog = oplog
        # Connections kept for the lookups of provide_verification (every agency call).
        self._kept = kept
        self._metrics = metrics
        self._max_pool_size = max_pool_size

    async def _record(self, entries: list[ProvisionEntry]) -> list[str]:
        ids = await self._provisions.record(entries)
        counts = Counter((e.agency_code, e.purpose_code, e.operation, e.result) for e in entries)
        for (agency, purpose, operation, result), n in counts.items():
            # Closed label sets: an agency or purpose the node does not know
            # is counted as "(unknown)", whatever the gateway sent.
            self._metrics.count_provisions(
                agency, purpose, operation_label(operation), result_label(result), n
            )
        return ids

    def _authorize(
        self,
        ctx: provision_pb2.ProvisionContext,
        operation: Operation,
        fields: Sequence[str] = (),
    ) -> tuple[Purpose, tuple[str, ...]]:
        """The purpose and the fields to return, checked against this node's own
        registry (never the gateway's word); a refusal records nothing."""
        purpose = self._registry.authorize(ctx.agency_code, ctx.purpose_code, operation, fields)
        # The gateway's allowed_fields may only narrow the purpose's, never widen it.
        allowed = purpose.fields & frozenset(ctx.allowed_fields)
        return purpose, resolve_fields(allowed, fields)

    # -- for the gateway -------------------------------------------------------

    async def provide_verification(
        self, request: provision_pb2.ProvideVerificationRequest
    ) -> provision_pb2.ProvideVerificationResponse:
        """Verify each claim against the record it identifies; no data leaves."""
        ctx = request.context
        if request.operation not in VERIFY_OPERATIONS:
            raise InvalidArgument(
                "operation",
                "must be PROVISION_OPERATION_VERIFY or PROVISION_OPERATION_VERIFY_BATCH",
            )
        self._authorize(ctx, Operation(operation_label(request.operation)))
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
        async with self._kept.acquire() as conn:
            by_code = await repo.identify_by_codes(self._store, conn, coded) if coded else {}
            found = (
                await repo.candidates_by_name_and_birth(
                    self._store, conn, by_items, limit=MAX_CANDIDATES
                )
                if by_items
                else []
            )
        identified: list[StoredIdentity | None] = []
        next_found = iter(found)
        for item in request.items:
            claim = item.claim
            if claim.resident_code:
                identified.append(by_code.get(claim.resident_code))
            else:
                identified.append(choose_unique(claim, next(next_found)))
        results = []
        entries = []
        for item, record in zip(request.items, identified, strict=True):
            verification = verify(item.claim, record)
            results.append(
                gateway_pb2.VerifyBatchResult(item_id=item.item_id, verification=verification)
            )
            code = record.resident_code if record is not None else item.claim.resident_code
            entries.append(
                ProvisionEntry(
                    ctx.agency_code,
                    ctx.purpose_code,
                    request.operation,
                    code,
                    (),
                    verification_outcome(verification),
                )
            )
        ids = await self._record(entries)
        return provision_pb2.ProvideVerificationResponse(results=results, provision_ids=ids)

    async def provide_record(
        self, request: provision_pb2.ProvideRecordRequest
    ) -> provision_pb2.ProvideRecordResponse:
        """The record (as of a date, if given), holding only the fields allowed."""
        ctx = request.context
        check_resident_code(request.resident_code)
        if request.as_of:
            check_date(request.as_of, "as_of")
        _, fields = self._authorize(ctx, Operation.RETRIEVE, request.fields)
        async with self._db.read() as conn:
            if request.as_of:
                record = await repo.record_as_of(
                    self._store, conn, request.resident_code, request.as_of
                )
            else:
                record = (await repo.identify_by_codes(self._store, conn, [request.resident_code]))[
                    request.resident_code
                ]
        if record is None:
            await self._record(
                [
                    ProvisionEntry(
                        ctx.agency_code,
                        ctx.purpose_code,
                        RETRIEVE,
                        request.resident_code,
                        (),
                        provision_pb2.PROVISION_RESULT_NOT_FOUND,
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
                    RETRIEVE,
                    record.resident_code,
                    fields,
                    provision_pb2.PROVISION_RESULT_PROVIDED,
                )
            ]
        )
        return provision_pb2.ProvideRecordResponse(
            record=provided(record, fields), provision_id=ids[0]
        )

    async def provide_search(
        self, request: provision_pb2.ProvideSearchRequest
    ) -> provision_pb2.ProvideSearchResponse:
        """The best candidates for a name (and birth date, address, sex), ranked."""
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
        _, fields = self._authorize(ctx, Operation.SEARCH, query.fields)
        async with self._db.read() as conn:
            found = await repo.candidates(
                self._store,
                conn,
                name=query.name,
                kana=query.name_kana,
                birth_date=query.birth_date,
                limit=MAX_CANDIDATES * 4,
            )
        ranked = sorted(
            ((search_score(query, r), r) for r in found), key=lambda p: (-p[0], p[1].resident_code)
        )
        chosen = [(score, r) for score, r in ranked if score > 0][: request.max_candidates]
        if chosen:
            entries = [
                ProvisionEntry(
                    ctx.agency_code,
                    ctx.purpose_code,
                    SEARCH,
                    r.resident_code,
                    fields,
                    provision_pb2.PROVISION_RESULT_CANDIDATE,
                )
                for _, r in chosen
            ]
        else:
            entries = [
                ProvisionEntry(
                    ctx.agency_code,
                    ctx.purpose_code,
                    SEARCH,
                    "",
                    (),
                    provision_pb2.PROVISION_RESULT_NOT_FOUND,
                )
            ]
        ids = await self._record(entries)
        return provision_pb2.ProvideSearchResponse(
            candidates=[
                gateway_pb2.SearchCandidate(record=provided(r, fields), score=score)
                for score, r in chosen
            ],
            provision_id=ids[0],
        )

    async def record_denial(self, request: provision_pb2.RecordDenialRequest) -> str:
        """Record a refusal at the gateway like a provision; returns its id.

        The agency must be one the registry names (a resident reads its name in
        the disclosure), the operation one there is, the reason one of the
        catalogue, and the purpose code of purpose-code syntax: anything else
        is refused and nothing is recorded. The purpose itself may be unknown
        (that is often why the gateway refused)."""
        if self._registry.agency(request.agency_code) is None:
            raise PermissionDenied(
                "agency_code: not an agency of the purpose registry", reason=Reason.UNKNOWN_AGENCY
            )
        if not operation_label(request.operation):
            raise InvalidArgument("operation", f"unknown or unset value {request.operation}")
        if request.reason not in Reason.__members__.values():
            raise InvalidArgument("reason", "not a reason of the catalogue")
        check_purpose_code(request.purpose_code, "purpose_code")
        if request.resident_code:
            check_resident_code(request.resident_code, "resident_code")
        ids = await self._record(
            [
                ProvisionEntry(
                    request.agency_code,
                    request.purpose_code,
                    request.operation,
                    request.resident_code,
                    (),
                    provision_pb2.PROVISION_RESULT_DENIED,
                    request.reason,
                )
            ]
        )
        return ids[0]

    # -- for the resident ------------------------------------------------------

    async def disclose(
        self, caller: Identity, request: provision_pb2.DiscloseRequest
    ) -> provision_pb2.DiscloseResponse:
        """A resident's record as stored here, and every provision of it; for a
        municipality's request only when it holds the resident (see
        :func:`services.national.logic.authorize_disclosure`)."""
        check_resident_code(request.resident_code)
        if request.municipality_code:
            check_known_local_government(request.municipality_code, "municipality_code")
        municipality = disclosure_scope(caller, request.municipality_code)
        async with self._db.read() as conn:
            codes = await self._store.chain(conn, request.resident_code)
            if municipality:
                records = await self._store.load(conn, codes)
                authorize_disclosure(municipality, request.resident_code, records.values())
            stored = await self._store.get_identity(conn, request.resident_code)
            if stored is None:
                raise NotFound(f"no identity record for {request.resident_code}")
            provisions = await repo.provisions_of(conn, sorted(codes))
            response = provision_pb2.DiscloseResponse(
                identity=stored.identity, provisions=provisions
            )
            if request.with_proofs:
                await self._add_proofs(conn, sorted(codes), response)
        return response

    async def _add_proofs(
        self, conn: AsyncConnection, codes: Sequence[str], response: provision_pb2.DiscloseResponse
    ) -> None:
        """Each provision's log entry and its inclusion proof against the newest witnessed
        head (a provision newer than that head has none yet)."""
        head = await self._oplog.witnessed_head(conn)
        if head is None:
            return
        size = note.parse_checkpoint(head.text).size
        indexes = await repo.provision_log_indexes(conn, codes)
        covered = {
            p.provision_id: indexes[p.provision_id]
            for p in response.provisions
            if indexes.get(p.provision_id, size) < size
        }
        logged = await self._oplog.entries_at(conn, list(covered.values()))
        proofs = await self._oplog.inclusion_proofs(conn, list(covered.values()), size)
        response.checkpoint = head.encode()
        for pid, index in covered.items():
            response.proofs.append(
                provision_pb2.ProvisionProof(
                    provision_id=pid,
                    index=index,
                    entry=logged.get(index, b""),
                    inclusion_proof=proofs[index],
                )
            )

    # -- for the prefectures ---------------------------------------------------

    async def allocate_code_pool(
        self, caller: Identity, request: delivery_pb2.AllocateCodePoolRequest
    ) -> list[str]:
        """Codes for a municipality, never issued before; a repeated request_id
        returns the same codes. Uniqueness rests on the primary key of
        ``issued_codes``; the write lock means no other minting runs between
        the check and the insert."""
        check_known_local_government(request.municipality_code, "municipality_code")
        check_pool_request(request.count, request.request_id, self._max_pool_size)
        authorize_pool_request(caller, request.municipality_code)
        municipality = request.municipality_code
        async with self._db.write() as conn:
            earlier = earlier_pool(
                await self._store.issued_for_request(conn, request.request_id), municipality
            )
            if earlier is not None:
                codes = earlier
            else:
                issued: list[str] = []
                while len(issued) < request.count:
                    fresh = await repo.unissued(
                        self._store, conn, mint_candidates(request.count - len(issued))
                    )
                    await self._store.record_issued(conn, fresh, municipality, request.request_id)
                    issued.extend(fresh)
                codes = sorted(issued)
        self._metrics.codes_issued.inc(len(codes))
        return codes

    async def delivery_status(self) -> delivery_pb2.GetDeliveryStatusResponse:
        """The prefectures' cursors and the number of records stored."""
        return await self._receiver.delivery_status()
