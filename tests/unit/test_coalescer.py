"""The gateway's sharing of national calls between concurrent Verify requests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.coalescer import VerifyCoalescer
from jukinet.errors import Unavailable
from jukinet.purposes import Purpose, load_registry
from jukinet.v1 import gateway_pb2

EXISTENCE = "NENKIN-EXISTENCE-CHECK"
ADDRESS = "NENKIN-ADDRESS-CHANGE"


def purpose(code: str) -> Purpose:
    """Purpose ``code`` of the shipped registry."""
    found = load_registry().get(code)
    assert found is not None
    return found


def item(code: str) -> gateway_pb2.VerifyBatchItem:
    """A batch item claiming resident ``code``."""
    return gateway_pb2.VerifyBatchItem(claim=gateway_pb2.ClaimedIdentity(resident_code=code))


class National:
    """A national node that answers each call when told to, and remembers the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str]]] = []
        self.gates: list[asyncio.Event] = []
        self.fail_next: Exception | None = None

    async def send(
        self, agency: str, p: Purpose, items: Sequence[gateway_pb2.VerifyBatchItem]
    ) -> tuple[list[gateway_pb2.VerifyBatchResult], list[str]]:
        """Record the call, wait until released, then answer (or fail if told to)."""
        codes = [i.claim.resident_code for i in items]
        self.calls.append((agency, p.code, codes))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        results = [
            gateway_pb2.VerifyBatchResult(
                verification=gateway_pb2.Verification(found=code.startswith("1"))
            )
            for code in codes
        ]
        return results, [f"id-{code}" for code in codes]

    def release(self) -> None:
        """Let every waiting call answer."""
        for gate in self.gates:
            gate.set()


async def settle() -> None:
    """Let the tasks ready to run take their next steps."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_idle_request_goes_at_once_and_later_ones_share_the_next_call() -> None:
    national = National()
    c = VerifyCoalescer(national.send)
    p = purpose(EXISTENCE)
    first = asyncio.create_task(c.verify("nenkin", p, item("100")))
    await settle()
    assert national.calls == [("nenkin", EXISTENCE, ["100"])]
    rest = [asyncio.create_task(c.verify("nenkin", p, item(code))) for code in ("101", "200")]
    await settle()
    assert len(national.calls) == 1  # they wait for the call in flight
    national.release()
    assert await first == (gateway_pb2.Verification(found=True), "id-100")
    await settle()
    assert national.calls[1] == ("nenkin", EXISTENCE, ["101", "200"])
    national.release()
    answers = await asyncio.gather(*rest)
    # Each request gets its own verification and its own provision id.
    assert answers == [
        (gateway_pb2.Verification(found=True), "id-101"),
        (gateway_pb2.Verification(found=False), "id-200"),
    ]


async def test_agencies_and_purposes_never_share_a_call() -> None:
    national = National()
    c = VerifyCoalescer(national.send)
    tasks = [
        asyncio.create_task(c.verify(agency, purpose(code), item(n)))
        for agency, code, n in (
            ("nenkin", EXISTENCE, "100"),
            ("nenkin", ADDRESS, "101"),
            ("kkr", EXISTENCE, "102"),
        )
    ]
    await settle()
    assert sorted(national.calls) == [
        ("kkr", EXISTENCE, ["102"]),
        ("nenkin", ADDRESS, ["101"]),
        ("nenkin", EXISTENCE, ["100"]),
    ]
    national.release()
    assert [pid for _, pid in await asyncio.gather(*tasks)] == ["id-100", "id-101", "id-102"]


async def test_a_failed_call_fails_every_request_in_it_and_no_other() -> None:
    national = National()
    c = VerifyCoalescer(national.send)
    p = purpose(EXISTENCE)
    first = asyncio.create_task(c.verify("nenkin", p, item("100")))
    await settle()
    shared = [asyncio.create_task(c.verify("nenkin", p, item(n))) for n in ("101", "102")]
    await settle()
    national.fail_next = Unavailable("the provision record could not be written")
    national.release()  # the first call fails
    with pytest.raises(Unavailable):
        await first
    await settle()
    national.release()  # the second call succeeds
    assert [pid for _, pid in await asyncio.gather(*shared)] == ["id-101", "id-102"]


async def test_a_request_whose_caller_left_is_not_sent() -> None:
    national = National()
    c = VerifyCoalescer(national.send)
    p = purpose(EXISTENCE)
    first = asyncio.create_task(c.verify("nenkin", p, item("100")))
    await settle()
    gone = asyncio.create_task(c.verify("nenkin", p, item("101")))
    stays = asyncio.create_task(c.verify("nenkin", p, item("102")))
    await settle()
    gone.cancel()
    national.release()
    await first
    await settle()
    assert national.calls[1][2] == ["102"]
    national.release()
    assert (await stays)[1] == "id-102"


async def test_a_call_carries_at_most_max_items() -> None:
    national = National()
    c = VerifyCoalescer(national.send, max_items=2)
    p = purpose(EXISTENCE)
    first = asyncio.create_task(c.verify("nenkin", p, item("100")))
    await settle()
    rest = [asyncio.create_task(c.verify("nenkin", p, item(str(n)))) for n in range(101, 106)]
    await settle()
    for _ in range(4):
        national.release()
        await settle()
    await first
    await asyncio.gather(*rest)
    assert [len(codes) for _, _, codes in national.calls] == [1, 2, 2, 1]


async def test_a_short_answer_fails_the_call() -> None:
    async def short(
        agency: str, p: Purpose, items: Sequence[gateway_pb2.VerifyBatchItem]
    ) -> tuple[list[gateway_pb2.VerifyBatchResult], list[str]]:
        return [], []

    c = VerifyCoalescer(short)
    with pytest.raises(Unavailable):
        await c.verify("nenkin", purpose(EXISTENCE), item("100"))
