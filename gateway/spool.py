"""The gateway's durable spool of refusals the national node could not record.

A refusal must reach the resident's disclosure even when it was made while
the national node was down. The gateway keeps no database, so the spool is
one append-only file of JSON lines, each written with ``fsync`` before the
refusal is answered: an ``add`` line per refusal, a ``done`` line once the
national node has recorded it. A background loop replays what is pending, in
order, whenever the national node answers again, and empties the file when
nothing is left. A file survives a SIGKILL of the gateway (every line is on
disk before the refusal leaves); a line torn by a power cut can only be the
last one, and it is skipped with a warning.

Why a file and not SQLite: the spool is only appended to and read back in
order, it stays small (it empties itself), and an operator can read it with
``cat``; a database would bring a schema and migrations for that.

Delivery is at least once: a gateway killed between the national node's
answer and the ``done`` line records that refusal twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

log = logging.getLogger("jukinet.gateway.spool")

# Failures worth trying again later: the national node is down, restarting or slow.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
REPLAY_EVERY = 1.0  # seconds between attempts while something is pending


@dataclass(frozen=True)
class SpooledDenial:
    """A refusal to record at the national node, as RecordDenial takes it."""

    agency_code: str
    purpose_code: str
    operation: str
    resident_code: str
    reason: str
    denial_id: str = ""


Recorder = Callable[[SpooledDenial], Awaitable[None]]


class DenialSpool:
    """The spool file; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._pending: dict[str, SpooledDenial] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._load()

    @property
    def pending(self) -> int:
        """How many refusals wait to be recorded."""
        return len(self._pending)

    def _load(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if not self._path.exists():
            return
        with self._path.open("r", encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                try:
                    entry = json.loads(line)
                    if entry["op"] == "add":
                        denial = SpooledDenial(**entry["denial"])
                        self._pending[denial.denial_id] = denial
                    elif entry["op"] == "done":
                        self._pending.pop(entry["id"], None)
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: line %d is unreadable; skipped", self._path, number)
        if self._pending:
            log.info("%d refusals wait in the spool to be recorded", len(self._pending))

    def _append(self, *entries: dict[str, object]) -> None:
        lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
        with self._path.open("a", encoding="utf-8") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())

    def _truncate(self) -> None:
        with self._path.open("w", encoding="utf-8") as file:
            file.flush()
            os.fsync(file.fileno())

    async def add(self, *denials: SpooledDenial) -> None:
        """Keep ``denials`` on disk (one fsync) until the national node has recorded them."""
        named = [SpooledDenial(**{**asdict(d), "denial_id": uuid.uuid4().hex}) for d in denials]
        async with self._lock:
            lines: list[dict[str, object]] = [{"op": "add", "denial": asdict(d)} for d in named]
            await asyncio.to_thread(self._append, *lines)
            for d in named:
                self._pending[d.denial_id] = d
        self._wake.set()

    async def replay(self, record: Recorder) -> int:
        """Record what is pending, in order, until the national node fails again;
        returns how many were recorded."""
        recorded = 0
        async with self._lock:
            for denial_id, denial in list(self._pending.items()):
                try:
                    await record(denial)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in RETRYABLE:
                        break
                    # Refused for good (it would be refused for ever): the log
                    # is then its only record.
                    log.error(
                        "a spooled refusal was refused by the national node: %s; dropped",
                        exc.code().name,
                    )
                else:
                    recorded += 1
                await asyncio.to_thread(self._append, {"op": "done", "id": denial_id})
                del self._pending[denial_id]
            if not self._pending:
                await asyncio.to_thread(self._truncate)
        if recorded:
            log.info("recorded %d spooled refusals at the national node", recorded)
        return recorded

    def start(self, record: Recorder, every: float = REPLAY_EVERY) -> None:
        """Replay in the background while anything is pending."""
        self._task = asyncio.create_task(self._run(record, every), name="denial-spool")
        if self._pending:
            self._wake.set()

    async def _run(self, record: Recorder, every: float) -> None:
        while True:
            await self._wake.wait()
            try:
                await self.replay(record)
            except Exception:
                log.exception("replaying the denial spool failed")
            if not self._pending:
                self._wake.clear()
            else:
                await asyncio.sleep(every)

    async def stop(self) -> None:
        """Stop the replay loop; what is pending stays on disk."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
