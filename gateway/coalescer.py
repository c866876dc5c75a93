"""Concurrent ``Verify`` requests share one call to the national node.

Each ``Verify`` needs the national node's lookup and a provision record
committed before its answer leaves. Sent one by one, every request pays a
gRPC hop from the gateway, a lookup and its own round of the national node's
group commit. Like that group commit, the gateway instead sends one
``ProvideVerification`` for every request of the same agency and purpose
waiting at that moment:

* a request that finds no call in flight for its agency and purpose (fewer
  than ``window``) is sent at once: an idle gateway adds no delay;
* requests that arrive while a call is in flight wait, and go together in
  the next call as soon as it returns (at most ``max_items`` per call).

One call in flight (``window`` 1) measured best: with 16 requests in flight
it answered about 3,000 Verify/s, against 2,700 with a second call allowed
once 6 requests wait and 1,900 with two calls at any time. The national
node's cost is mostly per call (a gRPC hop, a lookup, a commit), and a second
call in flight splits the same requests into smaller calls.

Nothing about the answers changes: each request is still its own item with
its own verification and its own provision record at the national node,
recorded before the national node answers; the items of one call share only
what they already had in common (agency, purpose and therefore the fields the
purpose allows). A call that fails fails every request in it, as a failed
group commit does, so no request gets an answer without its record. A request
whose caller has gone away before its call was sent is left out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from jukinet.errors import Unavailable
from jukinet.purposes import Purpose
from jukinet.v1 import gateway_pb2

Answer = tuple[gateway_pb2.Verification, str]
"""The national node's verification of one item and its provision id."""

Send = Callable[
    [str, Purpose, Sequence[gateway_pb2.VerifyBatchItem]],
    Awaitable[tuple[Sequence[gateway_pb2.VerifyBatchResult], Sequence[str]]],
]
"""One call to the national node for (agency, purpose, items): results and provision ids."""

DEFAULT_WINDOW = 1
DEFAULT_MAX_ITEMS = 1000


@dataclass
class _Lane:
    """The requests of one (agency, purpose) waiting for a call, and the calls in flight."""

    waiting: deque[tuple[gateway_pb2.VerifyBatchItem, asyncio.Future[Answer]]] = field(
        default_factory=deque
    )
    in_flight: int = 0


class VerifyCoalescer:
    """Sends waiting verifications of one agency and purpose together; see the module."""

    def __init__(
        self, send: Send, *, window: int = DEFAULT_WINDOW, max_items: int = DEFAULT_MAX_ITEMS
    ) -> None:
        if window < 1 or max_items < 1:
            raise ValueError("window and max_items must be at least 1")
        self._send = send
        self._window = window
        self._max_items = max_items
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def verify(
        self, agency: str, purpose: Purpose, item: gateway_pb2.VerifyBatchItem
    ) -> Answer:
        """The national node's verification of ``item`` and its provision id."""
        key = (agency, purpose.code)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        lane.waiting.append((item, future))
        if lane.in_flight < self._window:
            lane.in_flight += 1
            task = asyncio.create_task(self._drain(key, lane, agency, purpose))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(
        self, key: tuple[str, str], lane: _Lane, agency: str, purpose: Purpose
    ) -> None:
        """Send what is waiting, again and again, until nothing is."""
        try:
            while lane.waiting:
                batch: list[tuple[gateway_pb2.VerifyBatchItem, asyncio.Future[Answer]]] = []
                while lane.waiting and len(batch) < self._max_items:
                    entry = lane.waiting.popleft()
                    if not entry[1].done():  # its caller has not gone away
                        batch.append(entry)
                if batch:
                    await self._call(agency, purpose, batch)
        finally:
            lane.in_flight -= 1
            if not lane.in_flight and not lane.waiting and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _call(
        self,
        agency: str,
        purpose: Purpose,
        batch: list[tuple[gateway_pb2.VerifyBatchItem, asyncio.Future[Answer]]],
    ) -> None:
        try:
            results, ids = await self._send(agency, purpose, [item for item, _ in batch])
            if len(results) != len(batch) or len(ids) != len(batch):
                raise Unavailable(
                    f"national node: {len(results)} results for {len(batch)} verifications"
                )
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the gateway is stopping)
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result, pid in zip(batch, results, ids, strict=True):
            if not future.done():
                future.set_result((result.verification, pid))

    async def close(self) -> None:
        """Cancel the calls still in flight (their requests fail)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
