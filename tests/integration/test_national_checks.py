"""The national node does not take the gateway's word: every provision and
every denial is checked against its own purpose registry again; the gateway
refuses control characters at its edge; an unreachable national node is a
neutral UNAVAILABLE; refusals made while it is down are recorded once it is
back; one bad member of a provision group commit fails alone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from jukinet.db import Database
from jukinet.errors import Unavailable, error_metadata
from jukinet.oplog import note
from jukinet.oplog.entry import decode
from jukinet.oplog.log import OperationLog
from jukinet.oplog.verify import verify_log
from jukinet.reasons import Reason
from jukinet.v1 import gateway_pb2, national_pb2_grpc, provision_pb2
from jukinet.vocabulary import PROVIDABLE_FIELDS
from services.national import models
from services.national.app import MIGRATIONS
from services.national.provisions import ProvisionEntry, ProvisionLog
from tests.federation import Databases, Federation
from tests.integration.test_gateway import (
    ADDRESS_CHANGE,
    EXISTENCE,
    NENKIN,
    PASSPORT,
    TIMEOUT,
    TOTTORI,
    person,
    refused,
    register,
)

G = gateway_pb2
P = provision_pb2


def as_gateway(fed: Federation) -> national_pb2_grpc.NationalServiceAsyncStub:
    """The national node, called with the gateway's own certificate."""
    return national_pb2_grpc.NationalServiceStub(fed.channel(fed.national_port, "gateway"))


async def provisions_of(fed: Federation, code: str) -> list[P.Provision]:
    """Every provision record of ``code`` at the national node."""
    disclosed = await fed.national_operator().Disclose(
        P.DiscloseRequest(resident_code=code), timeout=TIMEOUT
    )
    return list(disclosed.provisions)


def context(purpose: str, agency: str = NENKIN) -> P.ProvisionContext:
    """A provision context claiming every field, whatever the purpose allows."""
    return P.ProvisionContext(
        agency_code=agency, purpose_code=purpose, allowed_fields=list(PROVIDABLE_FIELDS)
    )


async def test_the_national_node_checks_purpose_agency_operation_and_fields(
    fed: Federation,
) -> None:
    code = await register(fed, person("若桜　検子"))
    await fed.wait_delivered()
    national = as_gateway(fed)
    before = await provisions_of(fed, code)

    cases = [
        (
            national.ProvideRecord(
                P.ProvideRecordRequest(context=context("INVENTED-PURPOSE"), resident_code=code),
                timeout=TIMEOUT,
            ),
            Reason.UNKNOWN_PURPOSE,
        ),
        (
            national.ProvideRecord(
                P.ProvideRecordRequest(context=context(PASSPORT), resident_code=code),
                timeout=TIMEOUT,
            ),
            Reason.AGENCY_NOT_ALLOWED,
        ),
        (
            national.ProvideRecord(
                P.ProvideRecordRequest(context=context(EXISTENCE), resident_code=code),
                timeout=TIMEOUT,
            ),
            Reason.OPERATION_NOT_ALLOWED,
        ),
        (
            national.ProvideRecord(
                P.ProvideRecordRequest(
                    context=context(ADDRESS_CHANGE), resident_code=code, fields=["name"]
                ),
                timeout=TIMEOUT,
            ),
            Reason.FIELD_NOT_ALLOWED,
        ),
        (
            national.ProvideSearch(
                P.ProvideSearchRequest(
                    context=context(PASSPORT, "mofa-passport"),
                    query=G.SearchRequest(name="若桜　検子", fields=["resident_code"]),
                    max_candidates=5,
                ),
                timeout=TIMEOUT,
            ),
            Reason.FIELD_NOT_ALLOWED,
        ),
        (
            national.ProvideVerification(
                P.ProvideVerificationRequest(
                    context=context("INVENTED-PURPOSE"),
                    operation=P.PROVISION_OPERATION_VERIFY,
                    items=[G.VerifyBatchItem(claim=G.ClaimedIdentity(resident_code=code))],
                ),
                timeout=TIMEOUT,
            ),
            Reason.UNKNOWN_PURPOSE,
        ),
        (
            national.ProvideVerification(
                P.ProvideVerificationRequest(
                    context=context(ADDRESS_CHANGE),
                    operation=P.PROVISION_OPERATION_VERIFY_BATCH,
                    items=[G.VerifyBatchItem(claim=G.ClaimedIdentity(resident_code=code))],
                ),
                timeout=TIMEOUT,
            ),
            Reason.OPERATION_NOT_ALLOWED,
        ),
        (
            national.RecordDenial(
                P.RecordDenialRequest(
                    agency_code="invented-agency",
                    purpose_code=EXISTENCE,
                    operation=P.PROVISION_OPERATION_VERIFY,
                    resident_code=code,
                    reason=Reason.UNKNOWN_PURPOSE,
                ),
                timeout=TIMEOUT,
            ),
            Reason.UNKNOWN_AGENCY,
        ),
    ]
    for call, reason in cases:
        status, meta = await refused(call)
        assert (status, meta["jukinet-reason"]) == (grpc.StatusCode.PERMISSION_DENIED, reason)
    for bad in (
        P.RecordDenialRequest(
            agency_code=NENKIN,
            purpose_code="X\x00Y",
            operation=P.PROVISION_OPERATION_VERIFY,
            resident_code=code,
            reason=Reason.UNKNOWN_PURPOSE,
        ),
        P.RecordDenialRequest(
            agency_code=NENKIN,
            purpose_code="X",
            operation=P.PROVISION_OPERATION_VERIFY,
            resident_code=code,
            reason="a reason of my own",
        ),
        P.RecordDenialRequest(
            agency_code=NENKIN, purpose_code="X", resident_code=code, reason=Reason.UNKNOWN_PURPOSE
        ),
    ):
        status, meta = await refused(national.RecordDenial(bad, timeout=TIMEOUT))
        assert (status, meta["jukinet-reason"]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_ARGUMENT,
        )
    assert await provisions_of(fed, code) == before

    # The gateway's context claims every field; the purpose's own fields win.
    answer = await national.ProvideRecord(
        P.ProvideRecordRequest(context=context(ADDRESS_CHANGE), resident_code=code),
        timeout=TIMEOUT,
    )
    assert list(answer.record.fields) == ["address"]
    assert not answer.record.name
    after = await provisions_of(fed, code)
    assert [(p.purpose_code, list(p.fields)) for p in after] == [(ADDRESS_CHANGE, ["address"])]


async def test_the_gateway_refuses_control_characters_in_any_text(fed: Federation) -> None:
    await fed.start_gateway()
    code = await register(fed, person("若桜　零子"))
    await fed.wait_delivered()
    nenkin = fed.agency(NENKIN)
    before = await provisions_of(fed, code)
    for call, field in (
        (
            nenkin.Verify(
                G.VerifyRequest(
                    purpose_code="NENKIN\x00", claim=G.ClaimedIdentity(resident_code=code)
                ),
                timeout=TIMEOUT,
            ),
            "purpose_code",
        ),
        (
            nenkin.Retrieve(
                G.RetrieveRequest(
                    purpose_code=ADDRESS_CHANGE, resident_code=code, fields=["address\x00"]
                ),
                timeout=TIMEOUT,
            ),
            "fields[0]",
        ),
        (
            nenkin.Verify(
                G.VerifyRequest(
                    purpose_code=EXISTENCE,
                    claim=G.ClaimedIdentity(resident_code=code, address="鳥取\x00"),
                ),
                timeout=TIMEOUT,
            ),
            "claim.address",
        ),
    ):
        status, meta = await refused(call)
        assert (status, meta["jukinet-reason"], meta["jukinet-field"]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_ARGUMENT,
            field,
        )

    async def messages() -> AsyncIterator[G.VerifyBatchRequest]:
        yield G.VerifyBatchRequest(
            purpose_code=EXISTENCE,
            items=[G.VerifyBatchItem(item_id="ok", claim=G.ClaimedIdentity(resident_code=code))],
        )
        yield G.VerifyBatchRequest(
            purpose_code=EXISTENCE,
            items=[G.VerifyBatchItem(item_id="\x00", claim=G.ClaimedIdentity(resident_code=code))],
        )

    stream = nenkin.VerifyBatch(messages(), timeout=TIMEOUT)
    answered: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in stream:
            answered.extend(r.item_id for r in response.results)
    assert answered == ["ok"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_metadata(caught.value)["jukinet-field"] == "items[0].item_id"
    after = await provisions_of(fed, code)
    # Only the first, valid message was looked up (and recorded).
    assert len(after) == len(before) + 1


def neutral(details: str | None) -> None:
    """No address, port or transport text in a status message."""
    text = details or ""
    for leak in ("127.0.0.1", "ipv4", "ipv6", "localhost", "Connection refused", "socket"):
        assert leak not in text, text


async def test_a_national_node_down_is_a_neutral_unavailable_and_refusals_wait(
    fed: Federation,
) -> None:
    await fed.start_gateway()
    code = await register(fed, person("若桜　停子"))
    await fed.wait_delivered()
    nenkin = fed.agency(NENKIN)
    assert fed.national is not None and fed.gateway is not None
    await fed.national.stop()
    fed.national = None

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await nenkin.Verify(
            G.VerifyRequest(purpose_code=EXISTENCE, claim=G.ClaimedIdentity(resident_code=code)),
            timeout=TIMEOUT,
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    neutral(caught.value.details())
    assert "national node" in (caught.value.details() or "")

    # The counter: municipality -> prefecture -> (down) national node.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fed.operator(TOTTORI).DiscloseProvisions(
            P.DiscloseRequest(resident_code=code), timeout=TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    neutral(caught.value.details())

    refusals: Sequence[tuple[str, Reason]] = [
        ("INVENTED-ONE", Reason.UNKNOWN_PURPOSE),
        (PASSPORT, Reason.AGENCY_NOT_ALLOWED),
        ("INVENTED-TWO", Reason.UNKNOWN_PURPOSE),
    ]
    for purpose, reason in refusals:
        status, meta = await refused(
            nenkin.Verify(
                G.VerifyRequest(purpose_code=purpose, claim=G.ClaimedIdentity(resident_code=code)),
                timeout=TIMEOUT,
            )
        )
        assert (status, meta["jukinet-reason"]) == (grpc.StatusCode.PERMISSION_DENIED, reason)
    assert fed.gateway.spool.pending == len(refusals)

    await fed.start_national()
    for _ in range(150):
        if fed.gateway.spool.pending == 0:
            break
        await asyncio.sleep(0.1)
    assert fed.gateway.spool.pending == 0
    recorded = await provisions_of(fed, code)
    assert sorted((p.purpose_code, p.result) for p in recorded) == sorted(
        (purpose, P.PROVISION_RESULT_DENIED) for purpose, _ in refusals
    )


async def test_a_bad_member_of_a_group_commit_fails_alone(
    tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    dbs = Databases(backend, tmp_path)
    db = Database(await dbs.url("national"))
    oplog = OperationLog(
        models.oplog, "jukinet/national", note.Signer.generate("jukinet/national", note.ED25519)
    )
    log = ProvisionLog(db, oplog)
    try:
        await db.migrate(MIGRATIONS)
        if db.is_sqlite:
            # SQLite stores a NUL; a trigger refuses the member there instead.
            async with db.write() as conn:
                await conn.exec_driver_sql(
                    "CREATE TRIGGER refuse_bad BEFORE INSERT ON provisions "
                    "WHEN NEW.purpose_code LIKE 'BAD%' BEGIN SELECT RAISE(ABORT, 'BAD'); END"
                )
        log.start()

        def entry(purpose: str) -> list[ProvisionEntry]:
            return [
                ProvisionEntry(
                    NENKIN, purpose, P.PROVISION_OPERATION_VERIFY, "", (), P.PROVISION_RESULT_MATCH
                )
            ]

        # Gathered into one shared write: the NUL fails it on PostgreSQL.
        good = [asyncio.ensure_future(log.record(entry(EXISTENCE))) for _ in range(5)]
        bad = asyncio.ensure_future(log.record(entry("BAD\x00")))
        more = [asyncio.ensure_future(log.record(entry(EXISTENCE))) for _ in range(5)]
        results = await asyncio.gather(*good, bad, *more, return_exceptions=True)
        for result in results[:5] + results[6:]:
            assert isinstance(result, list) and len(result) == 1, result
        assert isinstance(results[5], Unavailable), results[5]
        # The shared write failed and its members were written alone.
        assert re.search(r"failed; 1 of \d+ requests failed alone", caplog.text)
        assert "BAD" not in caplog.text
        ids = {r[0] for r in results if isinstance(r, list)}
        async with db.read() as conn:
            stored = {
                row[0]
                for row in (await conn.exec_driver_sql("SELECT provision_id FROM provisions"))
            }
        assert ids == stored
        # Each provision written has its log entry, and the refused one has none.
        async with db.read() as conn:
            rows = await oplog.rows(conn)
            frontier = await oplog.frontier(conn)
        logged = {decode(r.entry).operation.provision.provision_id for r in rows}  # type: ignore[union-attr]
        assert logged == stored
        assert verify_log(rows, [], oplog.verifier, state=frontier).ok
    finally:
        await log.stop()
        await db.close()
        await dbs.drop_all()
