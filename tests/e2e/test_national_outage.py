"""The national node killed (SIGKILL) under agencies' calls, as processes:
VerifyBatch ends UNAVAILABLE with the results already streamed valid; every
refusal made while it was down reaches the resident's disclosure once it is
back, although the gateway itself was killed in between."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from jukinet.errors import error_metadata
from jukinet.reasons import Reason
from jukinet.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    municipal_pb2,
    municipal_pb2_grpc,
    national_pb2_grpc,
    provision_pb2,
)
from tools.localfed import Databases, LocalFederation

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

G = gateway_pb2
MUNICIPALITY = "312011"
NENKIN = "nenkin"
EXISTENCE = "NENKIN-EXISTENCE-CHECK"
TIMEOUT = 15


@pytest.fixture
async def local(tmp_path: Path, backend: str) -> AsyncIterator[LocalFederation]:
    """National, one prefecture, one municipality and the gateway, as processes."""
    fed = LocalFederation(
        tmp_path,
        [MUNICIPALITY],
        databases=Databases(backend, tmp_path / "data"),
        agencies=[NENKIN],
        gateway=True,
    )
    await fed.prepare()
    try:
        await fed.start_all(within=120)  # a busy machine starts nodes slowly
        yield fed
    finally:
        await fed.close()


async def register(fed: LocalFederation, count: int) -> list[str]:
    """Register ``count`` births; their resident codes, once delivered."""
    channel = fed.channel(f"municipality-{MUNICIPALITY}")
    try:
        stub = municipal_pb2_grpc.MunicipalServiceStub(channel)
        codes = []
        for i in range(count):
            born = await stub.RegisterBirth(
                municipal_pb2.RegisterBirthRequest(
                    person=municipal_pb2.PersonDetails(
                        name=f"若桜　{'一二三四五六七八九十'[i]}子",
                        name_kana="ワカサ",
                        birth_date=f"19{50 + i}-03-03",
                        sex=common_pb2.SEX_FEMALE,
                        address="鳥取県鳥取市東町1丁目220番地",
                    )
                ),
                timeout=TIMEOUT,
            )
            codes.append(born.resident.resident_code)
    finally:
        await channel.close(grace=None)
    await fed.wait_delivered()
    return codes


async def test_verify_batch_ends_unavailable_when_the_national_node_is_killed(
    local: LocalFederation,
) -> None:
    codes = await register(local, 3)
    channel = local.channel("gateway", f"agency-{NENKIN}")
    try:
        nenkin = gateway_pb2_grpc.GatewayServiceStub(channel)
        answered = asyncio.Event()

        async def messages() -> AsyncIterator[G.VerifyBatchRequest]:
            for i in range(20):
                yield G.VerifyBatchRequest(
                    purpose_code=EXISTENCE,
                    items=[
                        G.VerifyBatchItem(
                            item_id=f"{i}-{code}", claim=G.ClaimedIdentity(resident_code=code)
                        )
                        for code in codes
                    ],
                )
                if i == 2:
                    await answered.wait()
                await asyncio.sleep(0.05)

        results: list[G.VerifyBatchResult] = []
        call = nenkin.VerifyBatch(messages(), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for response in call:
                results.extend(response.results)
                if len(results) == 3 * len(codes):
                    local.kill("national")
                    answered.set()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
        assert "127.0.0.1" not in (caught.value.details() or "")
        # What was streamed before the kill stands: each a found, active record.
        assert len(results) >= 3 * len(codes)
        for result in results:
            assert result.item_id.split("-", 1)[1] in codes
            assert result.verification.found
            assert result.verification.currently_registered

        await local.start_nodes(["national"])
        # The gateway's channel reconnects within its backoff (at most 10 s); an
        # agency retries UNAVAILABLE, as this does, within a bounded time.
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            try:
                again = [
                    r
                    async for response in nenkin.VerifyBatch(
                        aiter_of(
                            G.VerifyBatchRequest(
                                purpose_code=EXISTENCE,
                                items=[
                                    G.VerifyBatchItem(
                                        claim=G.ClaimedIdentity(resident_code=codes[0])
                                    )
                                ],
                            )
                        ),
                        timeout=TIMEOUT,
                    )
                    for r in response.results
                ]
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert [r.verification.found for r in again] == [True]
    finally:
        await channel.close(grace=None)


async def aiter_of(*messages: G.VerifyBatchRequest) -> AsyncIterator[G.VerifyBatchRequest]:
    """A request stream of ``messages``."""
    for message in messages:
        yield message


async def test_refusals_made_while_the_national_node_is_down_are_all_disclosed(
    local: LocalFederation,
) -> None:
    (code,) = await register(local, 1)
    local.kill("national")
    purposes = ["INVENTED-ONE", "INVENTED-TWO", "MOFA-PASSPORT-ISSUE", "INVENTED-THREE"]
    channel = local.channel("gateway", f"agency-{NENKIN}")
    try:
        nenkin = gateway_pb2_grpc.GatewayServiceStub(channel)
        for purpose in purposes:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await nenkin.Verify(
                    G.VerifyRequest(
                        purpose_code=purpose, claim=G.ClaimedIdentity(resident_code=code)
                    ),
                    timeout=TIMEOUT,
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error_metadata(caught.value)["jukinet-reason"] in (
                Reason.UNKNOWN_PURPOSE,
                Reason.AGENCY_NOT_ALLOWED,
            )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await nenkin.Verify(
                G.VerifyRequest(
                    purpose_code=EXISTENCE, claim=G.ClaimedIdentity(resident_code=code)
                ),
                timeout=TIMEOUT,
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "127.0.0.1" not in (caught.value.details() or "")
    finally:
        await channel.close(grace=None)

    spool = local.nodes["gateway"].config_path.parent / "gateway-denials.jsonl"
    assert len(spool.read_text(encoding="utf-8").splitlines()) == len(purposes)
    local.kill("gateway")
    await local.start_nodes(["gateway"])
    await local.start_nodes(["national"])

    national = local.channel("national")
    try:
        stub = national_pb2_grpc.NationalServiceStub(national)
        recorded: list[provision_pb2.Provision] = []
        for _ in range(150):
            disclosed = await stub.Disclose(
                provision_pb2.DiscloseRequest(resident_code=code), timeout=TIMEOUT
            )
            recorded = list(disclosed.provisions)
            if len(recorded) >= len(purposes):
                break
            await asyncio.sleep(0.2)
        assert sorted(p.purpose_code for p in recorded) == sorted(purposes)
        assert {p.result for p in recorded} == {provision_pb2.PROVISION_RESULT_DENIED}
    finally:
        await national.close(grace=None)
    # Recorded, so the spool is empty again.
    for _ in range(50):
        if not spool.read_text(encoding="utf-8"):
            break
        await asyncio.sleep(0.1)
    assert spool.read_text(encoding="utf-8") == ""


async def test_verify_batch_streams_across_national_restarts_see_only_unavailable(
    local: LocalFederation,
) -> None:
    """Agencies keep streaming while the national node is killed and restarted,
    again and again: every failed stream is UNAVAILABLE (never INTERNAL or
    UNKNOWN), every result that arrived is a valid answer, and after the last
    restart the streams succeed again.

    A stream the gateway ended while the agency was still sending used to
    reach the agency as INTERNAL: its asyncio client overwrote the status
    (grpc/grpc#36066).
    """
    codes = await register(local, 3)
    channel = local.channel("gateway", f"agency-{NENKIN}")
    failures: list[grpc.StatusCode] = []
    odd: list[str] = []
    streamed: list[G.VerifyBatchResult] = []
    completed = 0
    outages_over = asyncio.Event()

    async def batches() -> AsyncIterator[G.VerifyBatchRequest]:
        for i in range(5):
            yield G.VerifyBatchRequest(
                purpose_code=EXISTENCE,
                items=[
                    G.VerifyBatchItem(
                        item_id=f"{i}-{code}", claim=G.ClaimedIdentity(resident_code=code)
                    )
                    for code in codes
                ],
            )
            await asyncio.sleep(0.02)

    async def agency() -> None:
        nonlocal completed
        nenkin = gateway_pb2_grpc.GatewayServiceStub(channel)
        # Bounded: streams until the outages are over and one more stream
        # succeeded, or the test's timeout.
        for _ in range(10_000):
            try:
                async for response in nenkin.VerifyBatch(batches(), timeout=TIMEOUT):
                    streamed.extend(response.results)
                if outages_over.is_set():
                    completed += 1
                    return
            except grpc.aio.AioRpcError as exc:
                failures.append(exc.code())
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    odd.append(f"{exc.code().name}: {exc.details()} {exc.debug_error_string()}")
                assert "127.0.0.1" not in (exc.details() or "")
                await asyncio.sleep(0.05)

    try:
        streams = [asyncio.create_task(agency()) for _ in range(3)]
        for _ in range(3):
            await asyncio.sleep(0.5)  # streams under way
            local.kill("national")
            await asyncio.sleep(0.5)  # streams meet the outage
            await local.start_nodes(["national"], within=120)
        outages_over.set()
        await asyncio.wait_for(asyncio.gather(*streams), timeout=60)
    finally:
        await channel.close(grace=None)
    assert failures, "no stream met an outage"
    assert set(failures) == {grpc.StatusCode.UNAVAILABLE}, odd
    assert completed == 3
    assert streamed
    for result in streamed:
        assert result.item_id.split("-", 1)[1] in codes
        assert result.verification.found
        assert result.verification.currently_registered
