"""A dead upstream that never closes the connection (a black hole: the host
froze, a NAT dropped its state) is noticed by keepalive and delivery resumes
promptly once the path is back, instead of after the tens of seconds TCP
alone would take. A TCP proxy between a municipality and its prefecture
swallows everything for 15 s without closing; the connections it swallowed
stay dead, as half-open connections do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from jukinet.tls import DEAD_PEER_NOTICED_MS, KEEPALIVE_TIME_MS
from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2
from tests.federation import Federation
from tests.integration.test_delivery import eventually

TIMEOUT = 15
C = common_pb2
M = municipal_pb2
TOTTORI = "312011"
HOLE_SECONDS = 15.0


@dataclass(eq=False)
class _Link:
    """One proxied connection; once dead, it swallows everything for good."""

    dead: bool
    writers: tuple[asyncio.StreamWriter, ...] = ()


class BlackHoleProxy:
    """A TCP proxy on 127.0.0.1 to ``target_port`` that can swallow traffic.

    While the hole is open nothing passes in either direction and nothing is
    closed: bytes are read and dropped, new connections are accepted and
    never reach the target. A connection that lived through the hole stays a
    black hole afterwards; connections opened after it pass normally.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._holed = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the proxy's port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def open_hole(self) -> None:
        """From now on, nothing passes; every existing connection is dead."""
        self._holed = True
        for link in self._links:
            link.dead = True

    def close_hole(self) -> None:
        """New connections pass again (the dead ones stay dead)."""
        self._holed = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(dead=self._holed, writers=(writer,))
        self._links.add(link)
        if link.dead:
            self._spawn(self._pipe(reader, None, link))
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        link.writers = (writer, up_writer)
        self._spawn(self._pipe(reader, up_writer, link))
        self._spawn(self._pipe(up_reader, writer, link))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter | None, link: _Link
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await source.read(65536):
                if link.dead or sink is None:
                    continue
                sink.write(chunk)
                await sink.drain()
            # A closing side is passed on only while the link lives: a black
            # hole swallows the FIN too.
            if not link.dead and sink is not None:
                sink.close()

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self._links:
            for w in link.writers:
                w.close()
        if self._server is not None:
            await self._server.wait_closed()


def person(i: int) -> M.PersonDetails:
    """A resident of 鳥取市."""
    return M.PersonDetails(
        name=f"鳥取 穴子{i}",
        name_kana="トットリ アナコ",
        birth_date="1990-05-06",
        sex=C.SEX_FEMALE,
        address="鳥取県鳥取市東町1丁目220番地",
    )


async def prefecture_cursor(fed: Federation) -> int:
    """The last sequence of 312011 prefecture 31 applied."""
    status = await fed.prefecture_operator("31").GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    return {c.origin_code: c.last_sequence for c in status.applied}.get(TOTTORI, 0)


async def test_delivery_resumes_promptly_after_a_black_hole(fed: Federation) -> None:
    proxy = BlackHoleProxy(fed.prefecture_ports["31"])
    port = await proxy.start()
    try:
        await fed.municipalities.pop(TOTTORI).stop()
        await fed.start_municipality(TOTTORI, prefecture_target=f"127.0.0.1:{port}")
        app = fed.municipalities[TOTTORI]
        op = fed.operator(TOTTORI)
        first = await op.RegisterBirth(M.RegisterBirthRequest(person=person(0)), timeout=TIMEOUT)
        await eventually(
            lambda: prefecture_cursor(fed),
            lambda last: last >= first.notification_sequence,
            "delivered through the proxy",
        )
        pusher = app.pusher
        assert pusher is not None
        await eventually(lambda: asyncio.sleep(0, pusher.connected), bool, "pusher connected")

        # An idle stream keeps its connection: the prefecture allows the
        # clients' keepalive pings (three of them here) and sends no GOAWAY.
        reconnects = app.metrics.registry.get_sample_value("jukinet_push_reconnects_total")
        await asyncio.sleep(3 * KEEPALIVE_TIME_MS / 1000 + 1)
        assert app.metrics.registry.get_sample_value("jukinet_push_reconnects_total") == reconnects

        # The hole: the pusher notices the dead peer while it lasts.
        proxy.open_hole()
        loop = asyncio.get_running_loop()
        hole_ends = loop.time() + HOLE_SECONDS
        during = await op.RegisterBirth(M.RegisterBirthRequest(person=person(1)), timeout=TIMEOUT)
        await eventually(
            lambda: asyncio.sleep(0, pusher.connected),
            lambda connected: not connected,
            "the dead prefecture noticed",
            within=DEAD_PEER_NOTICED_MS / 1000 + 3,
        )
        await asyncio.sleep(max(0.0, hole_ends - loop.time()))
        assert await prefecture_cursor(fed) < during.notification_sequence
        proxy.close_hole()

        # Delivery resumes over a new connection, within a bounded time.
        await eventually(
            lambda: prefecture_cursor(fed),
            lambda last: last >= during.notification_sequence,
            "delivery resumed after the hole",
            within=20,
        )
    finally:
        await proxy.stop()
