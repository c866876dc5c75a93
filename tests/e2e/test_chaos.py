"""Sustained chaos: operators work on three municipalities in two prefectures
while any node is killed or frozen; at the end every tier equals the registers.

The operators (鳥取市 and 米子市 in 鳥取県, 千代田区 in 東京都) work for
:data:`CHAOS_SECONDS`: births, relocations, name changes, deaths, and moves
within and across the prefectures, same-day returns and moves on the day of
birth included. Every few seconds a chaos task kills (SIGKILL, then a restart) or freezes (SIGSTOP,
then SIGCONT) a node chosen at random, municipal, prefecture or national. Then
the chaos stops, delivery settles, and:

* each register holds exactly what its operators did (ExportResidents);
* every prefecture and the national node hold exactly the registers: each
  resident active at one municipality held active there with the same identity
  items, each removed one held removed (ExportIdentities, compared by
  :func:`tools.demo.reconcile`);
* each (municipality, sequence) was applied once and in order at its prefecture
  and at the national node: their stored history of the municipality
  (``identity_history``, in order of application) is the municipal outbox,
  sequences 1..N, notification for notification.

A move is MoveOut at the old municipality, then MoveIn at the new one carrying
the certificate the MoveOut answered with (re-issued when that answer was
lost). The operators know exactly what each register holds: an operation
whose answer was lost (node killed, frozen, restarting) is resolved by reading
the register (GetResident, or the export for a birth, whose code only the
answer carried) before it is sent again, within :data:`OPERATION_WITHIN`.

The seed is printed and taken from ``JUKINET_CHAOS_SEED`` when set: it fixes
every choice (operations, victims, actions, durations), not the timing, so a
run with the same seed repeats the plan though not the interleaving. The
summary (operations, answers lost, kills, stops, seconds) is printed at the
end, passed or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from sqlalchemy import text

from jukinet import localgov
from jukinet.db import null_pool_engine
from jukinet.v1 import (
    common_pb2,
    municipal_pb2,
    municipal_pb2_grpc,
    national_pb2_grpc,
    prefecture_pb2_grpc,
)
from jukinet.validation import today
from tests.conftest import backends
from tools.demo import export_holdings, export_register, reconcile
from tools.localfed import Databases, DeliveryTimeout, LocalFederation, NodeFailed
from tools.population import NAME_SEPARATOR, PopulationGenerator

# Node processes under a few minutes of load, then delivery settling.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

M = municipal_pb2
TOTTORI, YONAGO, CHIYODA = "312011", "312029", "131016"
MUNICIPALITIES = (TOTTORI, YONAGO, CHIYODA)
"""鳥取市 and 米子市 (鳥取県), 千代田区 (東京都)."""

CHAOS_SECONDS = 150.0
"""How long the operators work while nodes are killed and frozen."""
OPERATORS_PER_MUNICIPALITY = 2
"""Operator tasks per municipality, each with its own random choices."""
CHAOS_PAUSE = (1.5, 4.0)
"""Seconds between two chaos actions (uniform)."""
AT_ONCE = 2
"""At most this many nodes are down, frozen or starting at a time."""
KILLED_FOR = (0.2, 3.0)
"""Seconds a killed node stays down before its restart (uniform)."""
FROZEN_FOR = (0.5, 6.0)
"""Seconds a node stays frozen (uniform): often longer than :data:`RPC_TIMEOUT`."""
START_WITHIN = 120.0
PORT_RETRIES = 10
"""Starts again (a second apart) of a node whose port something else holds."""
"""Seconds a node may take to answer after a (re)start: on a loaded machine, many."""
SETTLE_WITHIN = 120.0
"""Seconds delivery may take to catch up once the chaos stopped."""
RPC_TIMEOUT = 3.0
"""Seconds an operator waits for one answer."""
OPERATION_WITHIN = 90.0
"""An operation not done (answered, or found in the register) within this long fails the test."""
CONFIRM_AFTER = 1.5
"""A register read that finds an operation not applied is repeated after this
long before the operation is sent again: a request a node took just before it
was frozen runs when it resumes."""
LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""What a node that is down, frozen or restarting answers: the outcome is unknown."""

# How often an operator picks each operation (when it has a resident for it).
WEIGHTS: Mapping[str, float] = {
    "birth": 3.0,
    "relocation": 3.0,
    "name change": 2.0,
    "death": 1.0,
    "move in prefecture": 2.0,
    "move across prefectures": 2.0,
    "same-day return": 1.0,
    "birth and move on the birth day": 0.5,
}
SAME_DAY = ("same-day return", "birth and move on the birth day")
"""The operations whose two changes of one resident share an effective date."""
SAME_DAY_MOVES = True
"""Whether operators make :data:`SAME_DAY` moves. They pass only where the
upper tiers order the two halves of a move by cause (the move-out sequence
the certificate names), not by effective date."""
MIN_POPULATION = 15
"""Below this many active residents, a municipality's operators only register births."""

T = TypeVar("T")


class OperationFailed(AssertionError):
    """An operation was refused for a reason other than an outage, or never got through."""


@dataclass
class Resident:
    """A person as the operators know them."""

    code: str
    home: str  # the municipality that registers them now (or last)
    active: bool
    last_date: dt.date  # effective date of their latest change
    busy: bool = False


@dataclass
class Stats:
    """What the run did, for the summary."""

    seed: int
    backend: str
    started: float = field(default_factory=time.monotonic)
    operations: Counter[str] = field(default_factory=Counter)
    lost_answers: int = 0  # an outage answered; resolved by reading the register
    found_applied: int = 0  # of those, the register showed the change made
    retries: int = 0
    passed_over: int = 0  # chaos actions skipped: their node was still disturbed
    port_busy: int = 0  # restarts repeated because another process held a node's port
    kills: Counter[str] = field(default_factory=Counter)
    stops: Counter[str] = field(default_factory=Counter)
    notifications: int = 0
    phase: str = "starting"

    def summary(self) -> str:
        """A few lines: seed, operations, chaos, time."""
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.operations.items()))
        return (
            f"chaos seed={self.seed} backend={self.backend} phase={self.phase} "
            f"after {time.monotonic() - self.started:.0f} s\n"
            f"  operations {sum(self.operations.values())}: {ops}\n"
            f"  answers lost {self.lost_answers} (found applied {self.found_applied}), "
            f"retries {self.retries}, notifications {self.notifications}\n"
            f"  kills {sum(self.kills.values())} {dict(self.kills)}, "
            f"stops {sum(self.stops.values())} {dict(self.stops)}, "
            f"passed over {self.passed_over}, restarts with a port busy {self.port_busy}"
        )


def municipal_prefix(code: str) -> str:
    """鳥取県鳥取市 for 312011: how an address there begins."""
    found = localgov.lookup(code)
    assert found is not None
    return localgov.prefecture_name(code[:2]) + found.name


class World:
    """The registers as the operators know them, and the operators' channels."""

    def __init__(self, fed: LocalFederation, stats: Stats) -> None:
        self.fed = fed
        self.stats = stats
        self.channels = [fed.channel(f"municipality-{c}") for c in MUNICIPALITIES]
        self.stubs: dict[str, municipal_pb2_grpc.MunicipalServiceAsyncStub] = {
            c: municipal_pb2_grpc.MunicipalServiceStub(ch)
            for c, ch in zip(MUNICIPALITIES, self.channels, strict=True)
        }
        self.residents: dict[str, Resident] = {}
        # Each register as it must be: code -> its entry (status and details).
        self.registers: dict[str, dict[str, M.Resident]] = {c: {} for c in MUNICIPALITIES}
        self._addresses = 0
        self.today = today()

    async def close(self) -> None:
        """Close the operators' channels."""
        for ch in self.channels:
            await ch.close(grace=None)

    def address(self, code: str) -> str:
        """A new address in municipality ``code``, used by no one else."""
        self._addresses += 1
        return f"{municipal_prefix(code)}本町{self._addresses}番地"

    def record(self, entry: M.Resident) -> None:
        """An entry as the register now holds it."""
        self.registers[entry.local_government_code][entry.resident_code] = entry

    def candidates(self, municipality: str) -> list[Resident]:
        """Residents of ``municipality`` free for an operation (with room for later dates)."""
        latest = self.today - dt.timedelta(days=10)
        return [
            r
            for r in self.residents.values()
            if r.home == municipality and r.active and not r.busy and r.last_date < latest
        ]

    def active_count(self, municipality: str) -> int:
        """Active residents the register holds now."""
        return sum(1 for r in self.residents.values() if r.home == municipality and r.active)

    # -- talking to a node through an outage -----------------------------------

    async def _read(self, check: Callable[[], Awaitable[T | None]], deadline: float) -> T | None:
        """``check`` once the node answers (retried while it is down)."""
        while True:
            try:
                return await check()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in LOST or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.3)

    async def resolve(self, check: Callable[[], Awaitable[T | None]], deadline: float) -> T | None:
        """Whether an operation whose answer was lost took effect: ``check`` reads
        the register and returns the outcome, or None when it is not there (read
        twice, :data:`CONFIRM_AFTER` apart)."""
        found = await self._read(check, deadline)
        if found is not None:
            return found
        await asyncio.sleep(CONFIRM_AFTER)
        return await self._read(check, deadline)

    async def attempt(
        self,
        what: str,
        send: Callable[[], Awaitable[T]],
        check: Callable[[], Awaitable[T | None]],
    ) -> T:
        """``send`` until it is answered; after a lost answer, ``check`` the
        register first and send again only if the change is not there."""
        deadline = time.monotonic() + OPERATION_WITHIN
        lost = False
        while True:
            try:
                return await send()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in LOST and not lost:
                    raise OperationFailed(f"{what}: {exc.code().name} {exc.details()}") from exc
                if time.monotonic() > deadline:
                    raise OperationFailed(
                        f"{what}: not done within {OPERATION_WITHIN:g} s "
                        f"(last answer {exc.code().name} {exc.details()})"
                    ) from exc
                refused = exc.code() not in LOST
                if not lost:
                    self.stats.lost_answers += 1
                lost = True
                found = await self.resolve(check, deadline)
                if found is not None:
                    self.stats.found_applied += 1
                    return found
                if refused:
                    # Refused on a retry, and the register does not show the
                    # change: the operators' picture is wrong.
                    raise OperationFailed(
                        f"{what}: {exc.code().name} {exc.details()} on a retry, and the "
                        "register does not hold the change"
                    ) from exc
                self.stats.retries += 1

    async def entry(self, municipality: str, code: str) -> M.Resident | None:
        """The register entry of ``code`` at ``municipality`` (None if it has none)."""
        try:
            got = await self.stubs[municipality].GetResident(
                M.GetResidentRequest(resident_code=code), timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return got.resident

    # -- the operations ----------------------------------------------------------

    async def birth(self, municipality: str, person: M.PersonDetails) -> Resident:
        """Register a birth; its code is known from the answer or found by its address."""
        stub = self.stubs[municipality]

        async def send() -> M.Resident:
            reply = await stub.RegisterBirth(
                M.RegisterBirthRequest(person=person), timeout=RPC_TIMEOUT
            )
            return reply.resident

        async def check() -> M.Resident | None:
            # The address is this person's alone.
            found = [r for r in await export_register(stub) if r.person == person]
            assert len(found) <= 1, f"birth registered {len(found)} times: {found}"
            return found[0] if found else None

        entry = await self.attempt(f"birth at {municipality}", send, check)
        self.record(entry)
        resident = Resident(
            entry.resident_code, municipality, True, dt.date.fromisoformat(person.birth_date)
        )
        self.residents[resident.code] = resident
        return resident

    async def relocate(self, r: Resident, when: dt.date) -> None:
        """A move to a new address in the same municipality (転居)."""
        stub = self.stubs[r.home]
        address = self.address(r.home)

        async def send() -> M.Resident:
            reply = await stub.Relocate(
                M.RelocateRequest(
                    resident_code=r.code, new_address=address, effective_date=when.isoformat()
                ),
                timeout=RPC_TIMEOUT,
            )
            return reply.residents[0]

        async def check() -> M.Resident | None:
            got = await self.entry(r.home, r.code)
            return got if got is not None and got.person.address == address else None

        self.record(await self.attempt(f"relocation of {r.code}", send, check))
        r.last_date = when

    async def change_name(self, r: Resident, when: dt.date, new: M.PersonDetails) -> None:
        """A new surname (marriage), the old one kept as 旧氏."""
        stub = self.stubs[r.home]
        now = self.registers[r.home][r.code].person
        surname, given = now.name.split(NAME_SEPARATOR, 1)
        kana_given = now.name_kana.split(NAME_SEPARATOR, 1)[-1]
        new_surname = new.name.split(NAME_SEPARATOR, 1)[0]
        if new_surname == surname:
            new_surname += "野"
        name = f"{new_surname}{NAME_SEPARATOR}{given}"
        kana = f"{new.name_kana.split(NAME_SEPARATOR, 1)[0]}{NAME_SEPARATOR}{kana_given}"
        former = now.former_surname or surname

        async def send() -> M.Resident:
            reply = await stub.ChangeName(
                M.ChangeNameRequest(
                    resident_code=r.code,
                    name=name,
                    name_kana=kana,
                    former_surname=former,
                    effective_date=when.isoformat(),
                ),
                timeout=RPC_TIMEOUT,
            )
            return reply.resident

        async def check() -> M.Resident | None:
            got = await self.entry(r.home, r.code)
            return got if got is not None and got.person.name == name else None

        self.record(await self.attempt(f"name change of {r.code}", send, check))
        r.last_date = when

    async def death(self, r: Resident, when: dt.date) -> None:
        """The resident died."""
        stub = self.stubs[r.home]

        async def send() -> M.Resident:
            reply = await stub.RecordDeath(
                M.RecordDeathRequest(resident_code=r.code, date_of_death=when.isoformat()),
                timeout=RPC_TIMEOUT,
            )
            return reply.resident

        async def check() -> M.Resident | None:
            got = await self.entry(r.home, r.code)
            return got if got is not None and got.status == M.RESIDENT_STATUS_REMOVED else None

        self.record(await self.attempt(f"death of {r.code}", send, check))
        r.active = False
        r.last_date = when

    async def move(self, r: Resident, to: str, when: dt.date) -> None:
        """MoveOut at the old municipality, then MoveIn at ``to`` with its certificate."""
        old = r.home
        out_stub, in_stub = self.stubs[old], self.stubs[to]
        request = M.MoveOutRequest(
            resident_code=r.code,
            destination_local_government_code=to,
            effective_date=when.isoformat(),
        )

        async def move_out() -> tuple[M.Resident, common_pb2.SignedMoveOutCertificate]:
            reply = await out_stub.MoveOut(request, timeout=RPC_TIMEOUT)
            return reply.resident, reply.certificate

        async def moved_out() -> tuple[M.Resident, common_pb2.SignedMoveOutCertificate] | None:
            got = await self.entry(old, r.code)
            if got is None or got.status != M.RESIDENT_STATUS_REMOVED:
                return None
            return got, await self.reissue(old, r.code)

        entry, certificate = await self.attempt(
            f"move-out of {r.code} at {old}", move_out, moved_out
        )
        self.record(entry)
        r.active = False
        person = M.PersonDetails()
        person.CopyFrom(entry.person)
        person.address = self.address(to)

        async def move_in() -> M.Resident:
            reply = await in_stub.MoveIn(
                M.MoveInRequest(
                    person=person,
                    origin=M.MOVE_IN_ORIGIN_DOMESTIC,
                    resident_code=r.code,
                    previous_local_government_code=old,
                    effective_date=when.isoformat(),
                    move_out_certificate=certificate,
                ),
                timeout=RPC_TIMEOUT,
            )
            return reply.resident

        async def moved_in() -> M.Resident | None:
            got = await self.entry(to, r.code)
            if got is None or got.status != M.RESIDENT_STATUS_ACTIVE:
                return None
            return got if got.person.address == person.address else None

        self.record(await self.attempt(f"move-in of {r.code} at {to}", move_in, moved_in))
        r.home, r.active, r.last_date = to, True, when

    async def reissue(self, municipality: str, code: str) -> common_pb2.SignedMoveOutCertificate:
        """The move-out certificate again, when the MoveOut answer that carried it was
        lost; an empty one while the node issues none (UNIMPLEMENTED)."""
        stub = self.stubs[municipality]

        async def send() -> common_pb2.SignedMoveOutCertificate | None:
            try:
                reply = await stub.ReissueMoveOutCertificate(
                    M.ReissueMoveOutCertificateRequest(resident_code=code), timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return common_pb2.SignedMoveOutCertificate()
                raise
            return reply.certificate

        got = await self._read(send, time.monotonic() + OPERATION_WITHIN)
        assert got is not None
        return got


# --- the tasks ---------------------------------------------------------------------


def later(rng: random.Random, r: Resident) -> dt.date:
    """A date after the resident's latest change (the register's history is in order)."""
    return r.last_date + dt.timedelta(days=rng.randint(1, 5))


def newborn(
    rng: random.Random, gen: PopulationGenerator, world: World, code: str
) -> M.PersonDetails:
    """A person to register as born, one to thirty years ago, at a new address."""
    p = next(gen.people(code, 1))
    born = world.today - dt.timedelta(days=rng.randint(365, 30 * 365))
    return M.PersonDetails(
        name=p.name,
        name_kana=p.name_kana,
        birth_date=born.isoformat(),
        sex=common_pb2.SEX_MALE if p.sex == "male" else common_pb2.SEX_FEMALE,
        address=world.address(code),
    )


async def operator(world: World, municipality: str, number: int, until: float) -> None:
    """One operator of ``municipality``: random operations until ``until``."""
    rng = random.Random(f"{world.stats.seed}-{municipality}-{number}")
    gen = PopulationGenerator(rng.randrange(1 << 30))
    same_prefecture = [c for c in MUNICIPALITIES if c != municipality and c[:2] == municipality[:2]]
    other_prefecture = [c for c in MUNICIPALITIES if c[:2] != municipality[:2]]
    while time.monotonic() < until:
        free = world.candidates(municipality)
        kinds = [k for k in WEIGHTS if k.startswith("birth")]
        if world.active_count(municipality) >= MIN_POPULATION and free:
            kinds = list(WEIGHTS)
        if not same_prefecture:
            kinds = [k for k in kinds if k != "move in prefecture"]
        if not SAME_DAY_MOVES:
            kinds = [k for k in kinds if k not in SAME_DAY]
        kind = rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
        world.stats.operations[kind] += 1
        if kind == "birth":
            await world.birth(municipality, newborn(rng, gen, world, municipality))
        elif kind == "birth and move on the birth day":
            r = await world.birth(municipality, newborn(rng, gen, world, municipality))
            r.busy = True
            await world.move(r, rng.choice(same_prefecture + other_prefecture), r.last_date)
            r.busy = False
        else:
            r = rng.choice(free)
            r.busy = True
            when = later(rng, r)
            if kind == "relocation":
                await world.relocate(r, when)
            elif kind == "name change":
                await world.change_name(r, when, newborn(rng, gen, world, municipality))
            elif kind == "death":
                await world.death(r, when)
            elif kind == "move in prefecture":
                await world.move(r, rng.choice(same_prefecture), when)
            elif kind == "move across prefectures":
                await world.move(r, rng.choice(other_prefecture), when)
            else:  # same-day return: there and back on one day
                await world.move(r, rng.choice(same_prefecture + other_prefecture), when)
                await world.move(r, municipality, when)
            r.busy = False
        await asyncio.sleep(rng.uniform(0, 0.05))


async def chaos(fed: LocalFederation, stats: Stats, until: float) -> None:
    """Until ``until``: every few seconds, kill one node chosen at random and
    restart it, or freeze and thaw it. A node is not chosen again while it is
    down, frozen or starting; up to :data:`AT_ONCE` nodes are so at a time (a
    node may take long to start on a loaded machine). When it returns, every
    node runs again.

    The plan (pauses, victims, actions, durations) comes from the seed; a
    victim still disturbed by an earlier action is passed over."""
    rng = random.Random(f"{stats.seed}-chaos")
    names = [n for n in fed.nodes if n != "gateway"]
    disturbed: dict[str, asyncio.Task[None]] = {}

    async def kill(victim: str, down: float) -> None:
        fed.kill(victim)
        await asyncio.sleep(down)
        for attempt in range(PORT_RETRIES + 1):
            fed.start(victim)
            try:
                await fed.wait_ready(victim, within=START_WITHIN)
                return
            except NodeFailed as exc:
                # The node's ports were free when the federation was made; on a
                # busy machine an outgoing connection may hold one for a while.
                if "already in use" not in str(exc) or attempt == PORT_RETRIES:
                    raise
            stats.port_busy += 1
            await asyncio.sleep(1.0)

    async def freeze(victim: str, frozen: float) -> None:
        fed.pause(victim)
        try:
            await asyncio.sleep(frozen)
        finally:
            fed.resume(victim)

    try:
        while time.monotonic() < until:
            await asyncio.sleep(rng.uniform(*CHAOS_PAUSE))
            victim = rng.choice(names)
            killing = rng.random() < 0.5
            duration = rng.uniform(*(KILLED_FOR if killing else FROZEN_FOR))
            for name, task in list(disturbed.items()):
                if task.done():
                    del disturbed[name]
                    task.result()  # a node that failed to start fails the test
            if victim in disturbed or len(disturbed) >= AT_ONCE:
                stats.passed_over += 1
                continue
            if killing:
                stats.kills[victim] += 1
                disturbed[victim] = asyncio.create_task(kill(victim, duration))
            else:
                stats.stops[victim] += 1
                disturbed[victim] = asyncio.create_task(freeze(victim, duration))
    finally:
        # Cancelled (an operator failed) or done: let each action finish.
        await asyncio.gather(*disturbed.values())


# --- the checks ----------------------------------------------------------------------


async def registers(world: World) -> dict[str, list[M.Resident]]:
    """Every municipal register, as exported."""
    return {c: await export_register(world.stubs[c]) for c in MUNICIPALITIES}


def register_differences(world: World, exported: Mapping[str, list[M.Resident]]) -> list[str]:
    """Where a register differs from what its operators did."""
    out: list[str] = []
    for code in MUNICIPALITIES:
        held = {r.resident_code: r for r in exported[code]}
        want = world.registers[code]
        for rc in sorted(held.keys() | want.keys()):
            if held.get(rc) != want.get(rc):
                out.append(f"{code}: {rc}: register {held.get(rc)} operators {want.get(rc)}")
    return out


async def rows(url: str, query: str, **params: str) -> list[tuple[int, bytes]]:
    """(sequence, payload) rows of a node's database."""
    engine = null_pool_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text(query), params)
            return [(int(s), bytes(p)) for s, p in result]
    finally:
        await engine.dispose()


async def history_differences(fed: LocalFederation) -> tuple[list[str], int]:
    """Where an upper tier's applied history of a municipality is not its outbox:
    sequences 1..N in order, each once, each with the outbox's content. Also the
    number of notifications written."""
    out: list[str] = []
    total = 0
    for code in MUNICIPALITIES:
        outbox = await rows(
            fed.nodes[f"municipality-{code}"].database_url,
            "SELECT origin_sequence, payload FROM outbox ORDER BY sequence",
        )
        total += len(outbox)
        expected = list(range(1, len(outbox) + 1))
        if [s for s, _ in outbox] != expected:
            out.append(f"{code}: outbox sequences are not 1..{len(outbox)}")
        written = {s: common_pb2.Notification.FromString(p) for s, p in outbox}
        for tier in (f"prefecture-{code[:2]}", "national"):
            history = await rows(
                fed.nodes[tier].database_url,
                "SELECT origin_sequence, payload FROM identity_history "
                "WHERE origin_code = :origin ORDER BY id",
                origin=code,
            )
            sequences = [s for s, _ in history]
            if sequences != expected:
                dupes = [s for s, n in Counter(sequences).items() if n > 1]
                missing = sorted(set(expected) - set(sequences))
                disorder = [b for a, b in itertools.pairwise(sequences) if b <= a]
                out.append(
                    f"{tier}: {code}: applied {len(sequences)} of {len(expected)}; "
                    f"duplicates {dupes[:10]}, missing {missing[:10]}, out of order {disorder[:10]}"
                )
            for s, p in history:
                if written.get(s) != common_pb2.Notification.FromString(p):
                    out.append(f"{tier}: {code}: notification {s} differs from the outbox's")
    return out, total


async def tier_differences(
    fed: LocalFederation, exported: Mapping[str, list[M.Resident]]
) -> list[str]:
    """Where a prefecture or the national node disagrees with the registers."""
    channels = [fed.channel(n) for n in ("prefecture-31", "prefecture-13", "national")]
    try:
        pref31, pref13, national = channels
        tiers = {
            "鳥取県": (
                [TOTTORI, YONAGO],
                await export_holdings(prefecture_pb2_grpc.PrefectureServiceStub(pref31)),
            ),
            "東京都": (
                [CHIYODA],
                await export_holdings(prefecture_pb2_grpc.PrefectureServiceStub(pref13)),
            ),
            "national": (
                list(MUNICIPALITIES),
                await export_holdings(national_pb2_grpc.NationalServiceStub(national)),
            ),
        }
    finally:
        for ch in channels:
            await ch.close(grace=None)
    return [d.describe() for d in reconcile(exported, tiers)]


# --- the test ------------------------------------------------------------------------


def report(stats: Stats, what: str, lines: list[str], most: int = 25) -> str:
    """The summary, then what differs (the first ``most`` lines)."""
    more = f"\n  ... and {len(lines) - most} more" if len(lines) > most else ""
    return f"{stats.summary()}\n{what} ({len(lines)}):\n  " + "\n  ".join(lines[:most]) + more


def complaints(fed: LocalFederation, most: int = 3) -> list[str]:
    """The last distinct warnings and errors in each node's log."""
    out: list[str] = []
    for name, node in fed.nodes.items():
        lines = [
            line.split(" ", 2)[-1][:300]
            for line in node.log_tail(400).splitlines()
            if " WARNING " in line or " ERROR " in line
        ]
        out.extend(f"{name}: {line}" for line in list(dict.fromkeys(lines))[-most:])
    return out


def chaos_seed() -> int:
    """``JUKINET_CHAOS_SEED``, or a fresh one."""
    given = os.environ.get("JUKINET_CHAOS_SEED", "")
    return int(given) if given else random.SystemRandom().randrange(1 << 31)


# One backend per run, for the suite's time: PostgreSQL (as CI runs it), or
# SQLite where PostgreSQL is skipped (JUKINET_TEST_PG=skip, make test-sqlite).
@pytest.mark.parametrize("backend", backends()[-1:], indirect=True)
async def test_every_tier_equals_the_registers_after_sustained_chaos(
    tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stats = Stats(seed=chaos_seed(), backend=backend)
    with capsys.disabled():
        print(f"\nchaos seed={stats.seed} (JUKINET_CHAOS_SEED={stats.seed} repeats the plan)")
    fed = LocalFederation(
        tmp_path,
        MUNICIPALITIES,
        databases=Databases(backend, tmp_path / "data"),
        # Small batches: many of them in flight when a node goes down.
        settings={
            "municipal": {"push_batch_size": 20},
            "prefecture": {"push_batch_size": 40},
        },
    )
    await fed.prepare()
    world: World | None = None
    try:
        await fed.start_all(within=START_WITHIN)
        world = World(fed, stats)
        stats.phase = "chaos"
        until = time.monotonic() + CHAOS_SECONDS
        operators = [
            asyncio.create_task(operator(world, code, i, until))
            for code in MUNICIPALITIES
            for i in range(OPERATORS_PER_MUNICIPALITY)
        ]
        chaos_task = asyncio.create_task(chaos(fed, stats, until))
        try:
            await asyncio.gather(chaos_task, *operators)
        finally:
            for task in (chaos_task, *operators):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(chaos_task, *operators, return_exceptions=True)
            fed.resume(*fed.nodes)
            down = [n for n, node in fed.nodes.items() if not node.running]
            if down:
                await fed.start_nodes(down, within=START_WITHIN)

        stats.phase = "settling"
        try:
            await fed.wait_delivered(within=SETTLE_WITHIN)
        except DeliveryTimeout as exc:
            raise AssertionError(report(stats, str(exc), complaints(fed))) from exc

        stats.phase = "checking"
        exported = await registers(world)
        wrong = register_differences(world, exported)
        assert not wrong, report(stats, "registers differ from what the operators did", wrong)
        history, stats.notifications = await history_differences(fed)
        tiers = await tier_differences(fed, exported)
        assert not history, report(stats, "applied history differs from the outboxes", history)
        assert not tiers, report(stats, "upper tiers differ from the registers", tiers)
        stats.phase = "done"
    finally:
        with capsys.disabled():
            print(stats.summary())
        if world is not None:
            await world.close()
        await fed.close()
