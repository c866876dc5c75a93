"""Benchmarks of the delivery pipeline, with bare baselines measured in the same run.

    python -m bench [--backend sqlite|postgres|both] [--notifications N]
                   [--municipalities K] [--batch B] [--quick] [--out FILE]
                   [--only delivery|gateway] [--residents N]

This docstring describes the delivery benchmark; the agency gateway's
(``--only gateway``, run after the delivery benchmark by default) is
described in :mod:`bench.gateway`.

Every node is a separate OS process on 127.0.0.1 with real mutual TLS and a
database of its own, started by :class:`tools.localfed.LocalFederation` (a
fresh PostgreSQL database per node on the server ``JUKINET_TEST_PG_DSN``
names, dropped afterwards, or one SQLite file per node). Per backend the run
measures

1. **delivery throughput**: K municipalities each hold N/K notifications in
   their outbox; the clock starts when delivery may begin and stops when the
   national node's cursors reach every municipality's last sequence;
2. **delivery lag** (municipal commit → national apply, p50/p99) under an
   open-loop load of half that throughput, written through ImportResidents in
   small paced batches; the lag of every notification is read from the national
   database afterwards (``applied_at - recorded_at``);
3. **bare baselines**: (a) grpc.aio mTLS streaming of the same
   PushNotificationsRequest batches to a server process that stores nothing,
   (b) SQLAlchemy Core executemany of the rows the national node writes per
   notification (an identity upsert and a history row), one transaction per
   batch, into the same kind of database, with no gRPC;
4. **bulk import** of residents through the ImportResidents stream from a
   generated CSV into one municipal node.

How the outboxes are filled without measuring it: the prefectures run while
the municipalities fill their code pools, then stop; the municipalities import
their residents (their pushers find no prefecture and retry with backoff) and
stop too. The prefectures start again and are paused (SIGSTOP); the
municipalities start again on the same databases, and their pushers wait in
the TLS handshake with the paused prefectures. SIGCONT to the prefectures is
the moment the clock starts: every pusher then connects at once. (The bulk
import of phase 4 runs while no prefecture runs, so it measures the municipal
node alone.)

Every figure is measured on the machine as it is: ``other processes`` in the
CPU tables says how much the rest of the machine used meanwhile. ``--profile
DIR`` records py-spy profiles of every node during phases 1 and 2 (this slows
the run down; do not compare its figures with an unprofiled run).

Results go to ``bench-results.json`` and ``docs/benchmarks.md``; progress to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import shutil
import statistics
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.baselines import measure_db_baseline, measure_grpc_baseline
from bench.common import BenchError, machine_facts, percentile, postgres_version, progress
from bench.processes import CpuMeter, Profiler, running_nodes
from jukinet import localgov
from jukinet.cli.importer import import_csv
from jukinet.v1 import common_pb2, municipal_pb2, municipal_pb2_grpc
from services.municipal import models as municipal_models
from services.national import models as national_models
from services.prefecture import models as prefecture_models
from tools.localfed import (
    Cursors,
    Databases,
    Delivery,
    DeliveryTimeout,
    LocalFederation,
    Node,
    wait_delivered,
)
from tools.population import PopulationGenerator
from tools.sample import write_sample

# Targets from the issue.
TARGET_THROUGHPUT = 10_000  # notifications/s end to end on PostgreSQL
TARGET_LAG_P99 = 1.0  # seconds, at half that rate

# Municipalities used first, per prefecture; more come from the code list.
PREFERRED = {"31": ["312011", "312029"], "13": ["131016", "131041"]}
PREFECTURE_ORDER = ("31", "13")

IMPORT_BATCH = 1000  # rows per ImportResidentsRequest when filling and importing
POOL_MARGIN = 1000
# The lag phase draws codes from pools sized before the rate is known; this is
# the highest offered rate the pools are sized for (the phase is shortened if
# the measured rate would run them dry, so no refill happens while measuring).
LAG_RATE_CEILING = 6000.0
# Per municipality: a batch of rate/K/10 rows every 100 ms. Smaller, more
# frequent transactions cost the municipal node more than the delivery itself
# (each ImportResidents request counts and takes pool codes, checks source ids
# and commits), so the offered rate would not be reached on 2 cores.
LAG_REQUESTS_PER_S = 10.0
NODE_START_S = 90.0  # several nodes migrating their databases at once on 2 cores
NODE_STOP_S = 20.0


def _engine(url: str) -> AsyncEngine:
    return create_async_engine(url, pool_size=2, max_overflow=0)


def _epoch(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


# --- rows -----------------------------------------------------------------------

_SEX = {"male": common_pb2.SEX_MALE, "female": common_pb2.SEX_FEMALE}


def import_rows(code: str, count: int, *, seed: int, prefix: str) -> list[municipal_pb2.ImportRow]:
    """``count`` realistic residents of ``code`` as ImportRows (households kept together)."""
    gen = PopulationGenerator(seed)
    rows: list[municipal_pb2.ImportRow] = []
    for h, household in enumerate(gen.households(code, count)):
        for person in household.members:
            rows.append(
                municipal_pb2.ImportRow(
                    line=len(rows) + 2,
                    source_id=f"{prefix}-{len(rows)}",
                    person=municipal_pb2.PersonDetails(
                        name=person.name,
                        name_kana=person.name_kana,
                        birth_date=person.birth_date.isoformat(),
                        sex=_SEX[person.sex],
                        address=person.address,
                    ),
                    household_id=f"{prefix}-h{h}",
                )
            )
    return rows


def batches(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``rows`` in slices of ``size``."""
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


@dataclass
class ImportTally:
    """What ImportResidents answered, added up."""

    imported: int = 0
    already_present: int = 0
    rejected: int = 0
    first_rejection: str = ""

    def add(self, r: municipal_pb2.ImportResidentsResponse) -> None:
        """Count one response."""
        self.imported += r.imported
        self.already_present += r.already_present
        self.rejected += len(r.rejected)
        if r.rejected and not self.first_rejection:
            x = r.rejected[0]
            self.first_rejection = f"line {x.line}: {x.field}: {x.reason}"


async def stream_import(
    stub: municipal_pb2_grpc.MunicipalServiceAsyncStub,
    requests: Iterable[municipal_pb2.ImportResidentsRequest],
    limit_s: float,
) -> ImportTally:
    """Stream requests through ImportResidents; one response comes back per request."""
    tally = ImportTally()

    async def gen() -> AsyncIterator[municipal_pb2.ImportResidentsRequest]:
        for r in requests:
            yield r

    call = stub.ImportResidents(gen(), timeout=limit_s)
    async for response in call:
        tally.add(response)
    return tally


# --- the federation -------------------------------------------------------------


def choose_municipalities(k: int, prefectures: int) -> tuple[list[str], str]:
    """K municipalities spread over the first ``prefectures`` prefectures, and one
    more (in the first prefecture) for the import benchmark."""
    prefs = PREFECTURE_ORDER[:prefectures]
    pools: dict[str, list[str]] = {}
    for p in prefs:
        listed = [m.code for m in localgov.municipalities() if m.code[:2] == p]
        pools[p] = list(dict.fromkeys([*PREFERRED.get(p, []), *sorted(listed)]))
    chosen: list[str] = []
    for i in range(k):
        p = prefs[i % len(prefs)]
        if not pools[p]:
            raise BenchError(f"prefecture {p} has too few municipalities for K={k}")
        chosen.append(pools[p].pop(0))
    chosen.sort()
    return chosen, pools[prefs[0]].pop(0)


@dataclass
class Plan:
    """One backend's run of the delivery benchmark."""

    backend: str
    notifications: int
    k: int
    prefectures: int
    batch: int
    lag_seconds: float
    import_count: int
    quick: bool
    profile: Path | None = None
    window: int = 4
    plan_cache_mode: str = ""

    @property
    def per_municipality(self) -> int:
        """Notifications in each municipality's outbox."""
        return self.notifications // self.k

    @property
    def lag_reserve(self) -> int:
        """Codes each municipality needs for the lag phase, at most."""
        return math.ceil(self.lag_seconds * LAG_RATE_CEILING / self.k)


class Federation:
    """The local federation of one backend's run: K municipalities and the import
    municipality, their prefectures and the national node, each on a fresh
    database; operator channels to the municipalities, opened once."""

    def __init__(
        self, plan: Plan, workdir: Path, munis: list[str], import_muni: str, pools: dict[str, int]
    ) -> None:
        self.plan = plan
        self.municipalities = munis
        self.import_municipality = import_muni
        self.pool_sizes = pools
        pushing = {"push_batch_size": plan.batch, "push_window": plan.window}
        self.local = LocalFederation(
            workdir,
            [*munis, import_muni],
            databases=Databases(
                plan.backend,
                workdir / "data",
                prefix="jkbench",
                plan_cache_mode=plan.plan_cache_mode,
            ),
            settings={
                "national": {"max_pool_size": 100_000},
                "prefecture": pushing,
                "municipal": {**pushing, "pool_low_watermark": 100},
            },
            node_settings={
                f"municipality-{m}": {"pool_refill_size": size} for m, size in pools.items()
            },
        )
        self.channels: dict[str, grpc.aio.Channel] = {}

    def node(self, code: str) -> Node:
        """A municipality's node."""
        return self.local.nodes[f"municipality-{code}"]

    @property
    def prefectures(self) -> list[str]:
        """The names of the prefecture nodes."""
        return self.local.names("prefecture")

    def url(self, name: str) -> str:
        """The database URL of node ``name``."""
        return self.local.nodes[name].database_url

    def all_nodes(self) -> list[Node]:
        """Municipalities, prefectures, national (the order of the CPU tables)."""
        names = [*self.local.names("municipal"), *self.prefectures, "national"]
        return [self.local.nodes[n] for n in names]

    def cpu(self) -> CpuMeter:
        """A meter of the running nodes (and PostgreSQL, on that backend)."""
        return CpuMeter(running_nodes(self.all_nodes()), postgres=self.plan.backend == "postgres")

    def profiler(self, phase: str) -> Profiler:
        """py-spy on every running node, if ``--profile`` asked for it."""
        out = self.plan.profile / self.plan.backend if self.plan.profile is not None else None
        return Profiler(out, self.all_nodes(), phase)

    async def start(self) -> None:
        """PKI, databases and configs; then every node, upper tiers first."""
        await self.local.prepare()
        await self.local.start_all(within=NODE_START_S)

    async def restart(self, names: Sequence[str]) -> None:
        """Start stopped nodes again, on the same ports and databases."""
        await self.local.start_nodes(names, within=NODE_START_S)

    def stop(self, *names: str) -> None:
        """Stop these nodes (their pushers' downstream then retries with backoff)."""
        self.local.stop(*names, grace=NODE_STOP_S)

    def operator_channel(self, code: str) -> grpc.aio.Channel:
        """One operator channel per municipality, opened once."""
        if code not in self.channels:
            self.channels[code] = self.local.channel(f"municipality-{code}")
        return self.channels[code]

    def operator(self, code: str) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
        """The operator API of municipality ``code``."""
        return municipal_pb2_grpc.MunicipalServiceStub(self.operator_channel(code))

    async def municipal_status(self, code: str) -> municipal_pb2.GetMunicipalStatusResponse:
        """GetStatus of municipality ``code``."""
        response: municipal_pb2.GetMunicipalStatusResponse = await self.operator(code).GetStatus(
            municipal_pb2.GetMunicipalStatusRequest(), timeout=10
        )
        return response

    async def last_sequences(self, codes: Iterable[str]) -> dict[str, int]:
        """Each municipality's last outbox sequence."""
        return {m: (await self.municipal_status(m)).last_sequence for m in codes}

    async def wait_pools(self, limit_s: float) -> None:
        """Until every municipality's code pool holds its planned size."""
        deadline = time.monotonic() + limit_s
        for code, want in self.pool_sizes.items():
            while True:
                status = await self.municipal_status(code)
                if status.codes_in_pool >= want:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{code}: code pool {status.codes_in_pool} < {want} after {limit_s:.0f}s:\n"
                        + self.node(code).log_tail()
                    )
                await asyncio.sleep(0.2)

    async def close_channels(self) -> None:
        """Close the operator channels (reopened on demand)."""
        for ch in self.channels.values():
            with contextlib.suppress(Exception):
                await ch.close(None)
        self.channels.clear()

    async def close(self) -> None:
        """Channels, every node, and the PostgreSQL databases."""
        await self.close_channels()
        await self.local.close(grace=NODE_STOP_S)


# --- measurements ----------------------------------------------------------------


async def national_cursors(engine: AsyncEngine) -> Cursors:
    """The national node's cursors, read from its database (not over its API:
    GetDeliveryStatus also counts the identities, too much work to ask for every
    50 ms while it is measured)."""
    c = national_models.identities.cursors
    async with engine.connect() as conn:
        rows = await conn.execute(select(c.c.origin_code, c.c.last_sequence))
        return {r[0]: int(r[1]) for r in rows}


async def wait_national(
    engine: AsyncEngine, want: Cursors, limit_s: float
) -> tuple[float, Cursors]:
    """Until the national cursors reach ``want``: (wall time seen or NaN on timeout, cursors)."""
    last_report = time.monotonic()

    def report(delivery: Delivery) -> None:
        nonlocal last_report
        if time.monotonic() - last_report > 5:
            progress(f"  delivered {delivery.done:,} / {delivery.total:,}")
            last_report = time.monotonic()

    try:
        delivery = await wait_delivered(
            want, lambda: national_cursors(engine), within=limit_s, on_progress=report
        )
    except DeliveryTimeout as exc:
        return math.nan, exc.delivery.applied
    return time.time(), delivery.applied


async def measure_import(fed: Federation, plan: Plan, code: str, workdir: Path) -> dict[str, Any]:
    """Phase 4: a generated CSV through the importer into one municipality."""
    n = plan.import_count
    progress(f"{plan.backend}: bulk import of {n:,} residents into {code} (generating the CSV)")
    path = workdir / f"import-{code}.csv"
    write_sample(path, code, n, seed=11)
    channel = fed.operator_channel(code)
    await fed.municipal_status(code)  # the channel is up before the clock starts
    cpu = fed.cpu()
    cpu.begin()
    started = time.monotonic()
    summary = await import_csv(channel, path, batch=IMPORT_BATCH, progress=False)
    seconds = time.monotonic() - started
    used = cpu.end(seconds)
    if summary.imported != n:
        raise BenchError(
            f"import into {code}: {summary.imported} of {n} imported, "
            f"{len(summary.rejected)} rejected"
        )
    rate = n / seconds
    progress(f"{plan.backend}: imported {n:,} residents in {seconds:.1f}s = {rate:,.0f}/s")
    return {
        "municipality": code,
        "residents": n,
        "seconds": round(seconds, 3),
        "residents_per_s": round(rate),
        "rows_per_request": IMPORT_BATCH,
        "client": "jukinet.cli.importer",
        "cpu_seconds": used,
    }


async def fill_outboxes(fed: Federation, plan: Plan) -> dict[str, int]:
    """Each municipality imports its share while no prefecture runs (not measured);
    returns each one's last sequence."""
    munis = fed.municipalities
    per = plan.per_municipality
    progress(f"{plan.backend}: filling {len(munis)} outboxes with {per:,} notifications each")
    started = time.monotonic()
    rows = {m: import_rows(m, per, seed=7, prefix=f"fill-{m}") for m in munis}
    tallies = await asyncio.gather(
        *(
            stream_import(
                fed.operator(m),
                (
                    municipal_pb2.ImportResidentsRequest(rows=b)
                    for b in batches(rows[m], IMPORT_BATCH)
                ),
                limit_s=600,
            )
            for m in munis
        )
    )
    del rows
    for m, t in zip(munis, tallies, strict=True):
        if t.imported != per:
            raise BenchError(f"{m}: filled {t.imported} of {per} ({t.first_rejection})")
    want = await fed.last_sequences(munis)
    progress(
        f"{plan.backend}: outboxes hold {sum(want.values()):,} notifications "
        f"(filled in {time.monotonic() - started:.1f}s); restarting the nodes"
    )
    return want


async def measure_delivery(
    fed: Federation, plan: Plan, engine: AsyncEngine, want: dict[str, int]
) -> dict[str, Any]:
    """Phase 1: the clock runs from SIGCONT to the prefectures until national has it all."""
    total = sum(want.values())
    await fed.restart(fed.prefectures)
    fed.local.pause(*fed.prefectures)
    paused = time.monotonic()
    # The pushers of the restarted municipalities wait in the TLS handshake
    # with the paused prefectures (well within gRPC's 20 s connect deadline).
    await fed.restart([fed.node(m).name for m in want])
    await asyncio.sleep(0.5)  # let the start-up CPU settle
    pause = time.monotonic() - paused
    if pause > 15:
        progress(
            f"{plan.backend}: warning: prefectures paused {pause:.0f}s while the municipalities "
            "started; gRPC's 20 s connect deadline may delay the first pushes"
        )
    cpu = fed.cpu()
    cpu.begin()
    start = time.time()
    fed.local.resume(*fed.prefectures)
    profiler = fed.profiler("delivery")
    progress(f"{plan.backend}: delivery started ({total:,} notifications)")
    timeout = 60 + total / 500
    try:
        seen, got = await wait_national(engine, want, timeout)
    finally:
        await profiler.stop()
    complete = not math.isnan(seen)
    end = seen if complete else time.time()
    used = cpu.end(end - start)
    h = national_models.identities.history
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(func.min(h.c.applied_at), func.max(h.c.applied_at), func.count())
            )
        ).one()
    first_applied = _epoch(row[0]) - start if row[0] is not None else math.nan
    delivered = sum(min(got.get(c, 0), s) for c, s in want.items())
    seconds = end - start
    rate = delivered / seconds
    progress(
        f"{plan.backend}: delivered {delivered:,} in {seconds:.2f}s = {rate:,.0f} notifications/s"
        + ("" if complete else f" (INCOMPLETE after {timeout:.0f}s)")
    )
    return {
        "notifications": delivered,
        "complete": complete,
        "seconds": round(seconds, 3),
        "notifications_per_s": round(rate),
        "first_apply_after_s": round(first_applied, 3),
        "last_apply_after_s": round(_epoch(row[1]) - start, 3) if row[1] is not None else None,
        "per_municipality": dict(want),
        "prefectures_paused_s": round(pause, 1),
        "cpu_seconds": used,
        "cpu_us_per_notification": {
            k: round(v / delivered * 1e6, 1)
            for k, v in used.items()
            if delivered and not k.startswith(("cores", "other"))
        },
    }


@dataclass
class OpenLoad:
    """The lag phase's offered load: per municipality, ``batch`` rows every ``interval`` s."""

    rate: float
    duration: float
    batch: int
    interval: float
    requests: int
    late_sends: int = 0

    @classmethod
    def plan(cls, fed: Federation, plan: Plan, base: Cursors, rate: float) -> OpenLoad:
        """At ``rate`` in all, shortened if the code pools would run dry."""
        k = len(base)
        reserve = min(fed.pool_sizes[m] - base[m] for m in base) - POOL_MARGIN
        duration = plan.lag_seconds
        if rate * duration / k > reserve:
            duration = max(2.0, reserve * k / rate * 0.95)
            progress(f"{plan.backend}: lag phase shortened to {duration:.1f}s (code pools)")
        per_muni_rate = rate / k
        batch = max(1, round(per_muni_rate / LAG_REQUESTS_PER_S))
        interval = batch / per_muni_rate
        return cls(rate, duration, batch, interval, max(1, int(duration / interval)))

    async def offer(
        self,
        stub: municipal_pb2_grpc.MunicipalServiceAsyncStub,
        rows: Sequence[municipal_pb2.ImportRow],
        t0: float,
        response_latency: list[float],
    ) -> ImportTally:
        """One municipality's stream: a request at each planned time, never waiting
        for answers; the time to each answer goes into ``response_latency``."""
        loop = asyncio.get_running_loop()
        sent: deque[float] = deque()

        async def requests() -> AsyncIterator[municipal_pb2.ImportResidentsRequest]:
            for i in range(self.requests):
                delay = t0 + i * self.interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -self.interval:
                    self.late_sends += 1
                sent.append(loop.time())
                yield municipal_pb2.ImportResidentsRequest(
                    rows=rows[i * self.batch : (i + 1) * self.batch]
                )

        tally = ImportTally()
        call = stub.ImportResidents(requests(), timeout=self.duration + 120)
        async for response in call:
            response_latency.append(loop.time() - sent.popleft())
            tally.add(response)
        return tally


async def measure_lag(
    fed: Federation, plan: Plan, engine: AsyncEngine, base: dict[str, int], rate: float
) -> dict[str, Any]:
    """Phase 2: the lag of every notification under an open-loop load at ``rate``."""
    munis = list(base)
    load = OpenLoad.plan(fed, plan, base, rate)
    progress(
        f"{plan.backend}: lag at {rate:,.0f} notifications/s offered for {load.duration:.0f}s "
        f"({len(munis)} streams, {load.batch} rows every {load.interval * 1000:.0f} ms each)"
    )
    count = load.batch * load.requests
    rows = {m: import_rows(m, count, seed=13, prefix=f"lag-{m}") for m in munis}
    stubs = {m: fed.operator(m) for m in munis}
    for m in munis:
        await fed.municipal_status(m)  # channels up before the load starts
    t0 = asyncio.get_running_loop().time() + 0.2
    wall0 = time.time() + 0.2
    response_latency: list[float] = []
    cpu = fed.cpu()
    cpu.begin()
    profiler = fed.profiler("lag")
    try:
        tallies = await asyncio.gather(
            *(load.offer(stubs[m], rows[m], t0, response_latency) for m in munis)
        )
    finally:
        await profiler.stop()
    offered_seconds = time.time() - wall0
    want = await fed.last_sequences(munis)
    written = sum(want[m] - base[m] for m in munis)
    limit = 30 + written / 500
    _seen, got = await wait_national(engine, want, limit)
    used = cpu.end(time.time() - wall0)
    undelivered = sum(max(0, s - got.get(c, 0)) for c, s in want.items())
    if undelivered:
        progress(
            f"{plan.backend}: lag phase: {undelivered:,} notifications still undelivered "
            f"{limit:.0f}s after the load stopped; the lag figures are lower bounds"
        )
    for m, t in zip(munis, tallies, strict=True):
        if t.rejected:
            raise BenchError(f"lag phase: {m} rejected rows ({t.first_rejection})")
    lags, to_prefecture, to_national = await read_lags(fed, engine, base)
    response_latency.sort()
    achieved = written / offered_seconds
    out: dict[str, Any] = {
        "offered_rate_target": round(rate),
        "offered_rate_achieved": round(achieved),
        "seconds": round(offered_seconds, 2),
        "notifications": written,
        "measured": len(lags),
        "undelivered_at_timeout": undelivered,
        "rows_per_request": load.batch,
        "request_interval_ms": round(load.interval * 1000, 1),
        "late_sends": load.late_sends,
        "source": "national identity_history.applied_at - recorded_at, every notification",
        "p50_s": round(percentile(lags, 50), 4),
        "p90_s": round(percentile(lags, 90), 4),
        "p99_s": round(percentile(lags, 99), 4),
        "max_s": round(lags[-1], 4) if lags else None,
        "mean_s": round(statistics.fmean(lags), 4) if lags else None,
        "municipal_commit_to_prefecture_apply": _summary(to_prefecture),
        "prefecture_apply_to_national_apply": _summary(to_national),
        "import_response_p50_s": round(percentile(response_latency, 50), 4),
        "import_response_p99_s": round(percentile(response_latency, 99), 4),
        "cpu_seconds": used,
    }
    progress(
        f"{plan.backend}: lag p50 {out['p50_s'] * 1000:.0f} ms, p99 {out['p99_s'] * 1000:.0f} ms, "
        f"max {out['max_s'] * 1000 if lags else 0:.0f} ms at {achieved:,.0f}/s offered "
        f"(to the prefecture: p50 {percentile(to_prefecture, 50) * 1000:.0f} ms, "
        f"p99 {percentile(to_prefecture, 99) * 1000:.0f} ms)"
    )
    return out


def _summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of sorted values, in seconds."""
    return {
        "p50_s": round(percentile(values, 50), 4),
        "p99_s": round(percentile(values, 99), 4),
        "max_s": round(values[-1], 4) if values else math.nan,
    }


async def _national_times(
    engine: AsyncEngine, base: Cursors
) -> dict[tuple[str, int], tuple[float, float]]:
    """(recorded_at, applied_at) at national of every notification after ``base``."""
    h = national_models.identities.history
    national: dict[tuple[str, int], tuple[float, float]] = {}
    async with engine.connect() as conn:
        for m, after in base.items():
            result = await conn.execute(
                select(h.c.origin_sequence, h.c.recorded_at, h.c.applied_at).where(
                    h.c.origin_code == m, h.c.origin_sequence > after
                )
            )
            for seq, recorded, applied in result:
                national[(m, int(seq))] = (_epoch(recorded), _epoch(applied))
    return national


async def read_lags(
    fed: Federation, engine: AsyncEngine, base: dict[str, int]
) -> tuple[list[float], list[float], list[float]]:
    """Every lag-phase notification's national lag (applied_at - recorded_at), split
    into municipal commit → prefecture apply and prefecture apply → national apply
    (the prefecture's identity_history has its own applied_at). All sorted."""
    national = await _national_times(engine, base)
    ph = prefecture_models.identities.history
    to_prefecture: list[float] = []
    to_national: list[float] = []
    for p in sorted({m[:2] for m in base}):
        pref_engine = _engine(fed.url(f"prefecture-{p}"))
        try:
            async with pref_engine.connect() as conn:
                for m, after in base.items():
                    if m[:2] != p:
                        continue
                    pref_rows = await conn.execute(
                        select(ph.c.origin_sequence, ph.c.applied_at).where(
                            ph.c.origin_code == m, ph.c.origin_sequence > after
                        )
                    )
                    for seq, applied in pref_rows:
                        times = national.get((m, int(seq)))
                        if times is not None:
                            at = _epoch(applied)
                            to_prefecture.append(at - times[0])
                            to_national.append(times[1] - at)
        finally:
            await pref_engine.dispose()
    lags = sorted(a - r for r, a in national.values())
    return lags, sorted(to_prefecture), sorted(to_national)


async def read_payloads(fed: Federation, munis: list[str], per: int) -> list[bytes]:
    """The fill notifications as the municipalities stored them (real payloads)."""
    t = municipal_models.outbox.entries
    payloads: list[bytes] = []
    for m in munis:
        engine = _engine(fed.url(f"municipality-{m}"))
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(t.c.payload).where(t.c.sequence <= per).order_by(t.c.sequence)
                )
                payloads.extend(bytes(p) for p in rows.scalars())
        finally:
            await engine.dispose()
    return payloads


# --- one backend ------------------------------------------------------------------


@dataclass
class BackendRun:
    """What one backend's run measured, and what the baselines after it need."""

    result: dict[str, Any]
    payloads: list[bytes]
    pki_dir: Path


async def _phases(fed: Federation, plan: Plan, workdir: Path) -> tuple[dict[str, Any], list[bytes]]:
    """Phases 4, 1 and 2 on a started federation; the figures and the fill payloads."""
    result: dict[str, Any] = {}
    progress(f"{plan.backend}: filling code pools ({sum(fed.pool_sizes.values()):,} codes)")
    await fed.wait_pools(limit_s=240)
    fed.stop(*fed.prefectures)
    national_engine = _engine(fed.url("national"))
    try:
        # 4. Bulk import into one node, from a CSV, with delivery held off.
        import_muni = fed.import_municipality
        result["import"] = await measure_import(fed, plan, import_muni, workdir)
        fed.stop(fed.node(import_muni).name)
        want = await fill_outboxes(fed, plan)
        await fed.close_channels()
        fed.stop(*(fed.node(m).name for m in fed.municipalities))
        # 1. Throughput.
        result["delivery"] = await measure_delivery(fed, plan, national_engine, want)
        thr = result["delivery"]["notifications_per_s"]
        # 2. Lag at half that rate (meaningless while a backlog is still draining).
        if result["delivery"]["complete"] and thr > 0:
            result["lag"] = await measure_lag(fed, plan, national_engine, want, thr / 2)
        else:
            result["lag"] = {"skipped": "delivery did not complete within its timeout"}
    finally:
        await national_engine.dispose()
    payloads = await read_payloads(fed, fed.municipalities, plan.per_municipality)
    return result, payloads


async def run_backend(plan: Plan, root: Path) -> BackendRun:
    """Phases 1, 2 and 4 and baseline (b) on one backend. Always cleans up."""
    workdir = root / plan.backend
    workdir.mkdir()
    munis, import_muni = choose_municipalities(plan.k, plan.prefectures)
    pools = {m: min(100_000, plan.per_municipality + plan.lag_reserve + POOL_MARGIN) for m in munis}
    pools[import_muni] = min(100_000, plan.import_count + POOL_MARGIN)  # max one refill
    fed = Federation(plan, workdir, munis, import_muni, pools)
    result: dict[str, Any] = {
        "municipalities": munis,
        "prefectures": sorted({m[:2] for m in munis}),
    }
    try:
        progress(
            f"{plan.backend}: starting national, {plan.prefectures} prefecture(s), "
            f"{len(munis)} + 1 municipalities ({', '.join(munis)}; import into {import_muni})"
        )
        await fed.start()
        measured, payloads = await _phases(fed, plan, workdir)
        result.update(measured)
    finally:
        progress(f"{plan.backend}: stopping the nodes")
        await fed.close()
    # 3b. The database baseline, on a fresh database of the same kind.
    result["db_baseline"] = await measure_db_baseline(plan.backend, plan.batch, payloads, workdir)
    return BackendRun(result, payloads, fed.local.pki_dir)


# --- the delivery benchmark -----------------------------------------------------------


def _plan(args: argparse.Namespace, backend: str) -> Plan:
    return Plan(
        backend=backend,
        notifications=args.notifications,
        k=args.municipalities,
        prefectures=args.prefectures,
        batch=args.batch,
        lag_seconds=args.lag_seconds,
        import_count=args.import_residents,
        quick=args.quick,
        profile=args.profile,
        window=args.window,
        plan_cache_mode=args.pg_plan_cache or "",
    )


def _parameters(args: argparse.Namespace, backends: list[str]) -> dict[str, Any]:
    return {
        "backends": backends,
        "notifications": args.notifications,
        "municipalities": args.municipalities,
        "prefectures": args.prefectures,
        "batch": args.batch,
        "push_window": args.window,
        "lag_seconds": args.lag_seconds,
        "import_residents": args.import_residents,
        "quick": args.quick,
        "pg_plan_cache_mode": args.pg_plan_cache or "server default",
    }


def _backends(args: argparse.Namespace, postgresql: str | None) -> list[str]:
    if args.backend is None:  # the default: both, or SQLite alone without a server
        args.backend = "both" if postgresql is not None else "sqlite"
        if args.backend == "sqlite":
            progress("no PostgreSQL server: measuring SQLite only (see --backend)")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and postgresql is None:
        raise BenchError("the postgres backend needs a reachable server (JUKINET_TEST_PG_DSN)")
    return backends


def _ratios(results: dict[str, Any]) -> None:
    """Each backend's throughput against the baselines, and the targets."""
    grpc_base = results["grpc_baseline"]
    for backend, r in results["backends"].items():
        thr = r["delivery"]["notifications_per_s"]
        r["ratios"] = {
            "pipeline_vs_grpc_baseline": round(thr / grpc_base["messages_per_s"], 4),
            "pipeline_vs_db_baseline": round(thr / r["db_baseline"]["notifications_per_s"], 4),
        }
        if backend == "postgres":
            r["targets_met"] = {
                "throughput": thr >= TARGET_THROUGHPUT,
                "lag_p99": (r["lag"].get("p99_s") or math.inf) < TARGET_LAG_P99,
            }


async def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The delivery benchmark on every backend asked for, then baseline (a)."""
    facts = machine_facts()
    facts["postgresql"] = await postgres_version()
    backends = _backends(args, facts["postgresql"])
    results: dict[str, Any] = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": facts,
        "parameters": _parameters(args, backends),
        "targets": {
            "throughput_notifications_per_s_postgres": TARGET_THROUGHPUT,
            "lag_p99_s_at_half": TARGET_LAG_P99,
        },
        "backends": {},
    }
    root = Path(tempfile.mkdtemp(prefix="jukinet-bench-"))
    ok = False
    try:
        last: BackendRun | None = None
        for backend in backends:
            last = await run_backend(_plan(args, backend), root)
            results["backends"][backend] = last.result
        assert last is not None
        results["grpc_baseline"] = await measure_grpc_baseline(
            last.payloads,
            args.batch,
            last.pki_dir,
            root,
            seconds=1.0 if args.quick else 2.0,
            runs=2 if args.quick else 3,
            window=args.window,
        )
        _ratios(results)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            progress(f"work files (configs, node logs) kept in {root}")
    return results
