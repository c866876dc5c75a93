"""A node's wall clock, and how far the clocks of two nodes may differ.

Nodes run on separate hosts whose clocks drift. A receiving tier checks the
dates a notification carries against its own clock ("a birth date is not in
the future"); a municipality whose clock runs ahead, around midnight in Japan,
writes a date that is still tomorrow for its prefecture. So that what a tier
accepted is never refused above it because of the clocks, a receiver accepts
dates up to the date at its own time plus :data:`MAX_CLOCK_SKEW`. Each
receiver exports, per sender, how far the sender's clock is from its own
(``jukinet_peer_clock_offset_seconds``), so that an operator is alerted long
before a drift reaches the tolerance.

A node takes its :class:`Clock` at wiring (``SYSTEM_CLOCK`` unless told
otherwise): the tests run nodes whose clocks differ inside one process.
"""

from __future__ import annotations

import asyncio
import datetime as dt

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
"""How far a sender's clock may run ahead of a receiver's without consequence."""

JST = dt.timezone(dt.timedelta(hours=9))
"""Japan's time zone, in which every register date is kept."""


class Clock:
    """The system's wall clock, shifted by ``offset`` (zero outside tests)."""

    __slots__ = ("offset",)

    def __init__(self, offset: dt.timedelta = dt.timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> dt.datetime:
        """The current time, in UTC."""
        return dt.datetime.now(dt.UTC) + self.offset


SYSTEM_CLOCK = Clock()
"""The clock of every node that is not told otherwise."""


def japan_date(at: dt.datetime) -> dt.date:
    """The date in Japan at ``at``."""
    return at.astimezone(JST).date()


def latest_accepted_date(now: dt.datetime) -> dt.date:
    """The latest date a receiver whose clock shows ``now`` takes as not in the future."""
    return japan_date(now + MAX_CLOCK_SKEW)


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed; whether it was set.

    A background loop waits with this rather than ``asyncio.wait_for``: on
    Python 3.11 ``wait_for`` swallows a cancellation that comes in the same
    turn as the event, and the loop then outlives the stop that cancelled it
    (the stop waits for it for ever).
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
