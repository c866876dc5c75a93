"""Benchmarks of the delivery pipeline, with bare baselines measured in the same run.

    python -m bench.delivery [--backend sqlite|postgres|both] [--notifications N]
                            [--municipalities K] [--batch B] [--quick] [--out FILE]
                            [--only delivery|gateway] [--residents N]

This docstring describes the delivery benchmark; the agency gateway's
(``--only gateway``, run after the delivery benchmark by default) is
described in :mod:`bench.gateway`.

Every node is a separate OS process on 127.0.0.1 with real mutual TLS and a
database of its own (a fresh PostgreSQL database per node, dropped afterwards,
or one SQLite file per node). Per backend the run measures

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
import csv
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jukinet import localgov, pki
from jukinet.client import tls_files
from jukinet.tls import secure_channel, server_credentials
from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2, municipal_pb2_grpc
from jukinet.vocabulary import person_values

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get(
    "JUKINET_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

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

PUSH_METHOD = "/jukinet.v1.NationalService/PushNotifications"

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A phase failed; the message says which and why."""


# --- processes ----------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on this machine (server and backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm.startswith("postgres"):
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


@dataclass
class Node:
    """One node process, started from a TOML config written here."""

    name: str
    module: str
    settings: dict[str, object]
    tls_name: str
    workdir: Path
    pki_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def _write_config(self) -> Path:
        path = self.workdir / f"{self.name}.toml"
        lines = [f"{k} = {_toml(v)}" for k, v in self.settings.items()]
        lines += [
            "",
            "[tls]",
            f"ca = {_toml(self.pki_dir / 'ca.pem')}",
            f"cert = {_toml(self.pki_dir / (self.tls_name + '.pem'))}",
            f"key = {_toml(self.pki_dir / (self.tls_name + '.key'))}",
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        config = self._write_config()
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
        env["PYTHONUNBUFFERED"] = "1"
        out = open(self.workdir / f"{self.name}.{self.starts}.out", "wb")  # noqa: SIM115
        err = open(self.workdir / f"{self.name}.{self.starts}.log", "wb")  # noqa: SIM115
        with out, err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--config", str(config)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
                start_new_session=True,  # a Ctrl-C at the terminal is ours to relay
            )

    def log_tail(self, lines: int = 15) -> str:
        path = self.workdir / f"{self.name}.{self.starts}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_ready(self, limit_s: float = 90.0) -> None:
        """Until the node prints that it listens (its start-up, migrations included, is done)."""
        assert self.proc is not None
        out = self.workdir / f"{self.name}.{self.starts}.out"
        deadline = time.monotonic() + limit_s
        while True:
            if b"ready on port" in out.read_bytes():
                return
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready after {limit_s:.0f}s:\n" + self.log_tail())
            await asyncio.sleep(0.05)

    def cpu(self) -> float:
        return _proc_cpu(self.pid) if self.running() else 0.0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop(self, limit_s: float = 20.0) -> None:
        """SIGTERM (a clean stop), SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + limit_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                progress(f"{self.name} ignored SIGTERM for {limit_s:.0f}s; killing it")
                proc.kill()
                proc.wait(5)
                return
            await asyncio.sleep(0.05)

    def pause(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def kill_now(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


# --- databases ------------------------------------------------------------------


class Databases:
    """One database per node: fresh PostgreSQL databases (dropped at the end) or SQLite files."""

    def __init__(self, backend: str, workdir: Path, plan_cache_mode: str = "") -> None:
        self.backend = backend
        self.workdir = workdir
        self.plan_cache_mode = plan_cache_mode
        self.created: list[str] = []
        self.tag = uuid.uuid4().hex[:8]

    async def url(self, node: str) -> str:
        if self.backend == "sqlite":
            return f"sqlite+aiosqlite:///{self.workdir / (node + '.db')}"
        import asyncpg

        name = f"jkbench_{self.tag}_{node.replace('-', '_')}"
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
            self.created.append(name)
            if self.plan_cache_mode:
                await conn.execute(
                    f'ALTER DATABASE "{name}" SET plan_cache_mode = {self.plan_cache_mode}'
                )
        finally:
            await conn.close()
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{name}"

    async def drop_all(self) -> None:
        if not self.created:
            return
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            for name in self.created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        self.created.clear()


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
    from tools.population import PopulationGenerator

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
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


CSV_FIELDS = ("source_id", "name", "name_kana", "birth_date", "sex", "address", "household_id")


def write_csv(path: Path, rows: Iterable[municipal_pb2.ImportRow]) -> None:
    sex = {common_pb2.SEX_MALE: "male", common_pb2.SEX_FEMALE: "female"}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            p = r.person
            w.writerow(
                (
                    r.source_id,
                    p.name,
                    p.name_kana,
                    p.birth_date,
                    sex[p.sex],
                    p.address,
                    r.household_id,
                )
            )


def read_csv(path: Path) -> Iterator[municipal_pb2.ImportRow]:
    sex = {"male": common_pb2.SEX_MALE, "female": common_pb2.SEX_FEMALE}
    with path.open(newline="", encoding="utf-8") as f:
        for line, rec in enumerate(csv.DictReader(f), start=2):
            yield municipal_pb2.ImportRow(
                line=line,
                source_id=rec["source_id"],
                person=municipal_pb2.PersonDetails(
                    name=rec["name"],
                    name_kana=rec["name_kana"],
                    birth_date=rec["birth_date"],
                    sex=sex[rec["sex"]],
                    address=rec["address"],
                ),
                household_id=rec["household_id"],
            )


@dataclass
class ImportTally:
    imported: int = 0
    already_present: int = 0
    rejected: int = 0
    first_rejection: str = ""

    def add(self, r: municipal_pb2.ImportResidentsResponse) -> None:
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
class Federation:
    backend: str
    workdir: Path
    pki_dir: Path
    municipalities: list[str]
    import_municipality: str
    batch: int
    pool_sizes: dict[str, int]
    dbs: Databases
    window: int = 4
    national: Node | None = None
    prefectures: dict[str, Node] = field(default_factory=dict)
    munis: dict[str, Node] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def all_nodes(self) -> list[Node]:
        nodes: list[Node] = list(self.munis.values()) + list(self.prefectures.values())
        if self.national is not None:
            nodes.append(self.national)
        return nodes

    async def _node(self, name: str, module: str, tls_name: str, **settings: object) -> Node:
        self.ports[name] = free_port()
        self.urls[name] = await self.dbs.url(name)
        base: dict[str, object] = {
            "listen": f"127.0.0.1:{self.ports[name]}",
            "database_url": self.urls[name],
        }
        return Node(name, module, {**base, **settings}, tls_name, self.workdir, self.pki_dir)

    async def start(self) -> None:
        prefs = sorted({m[:2] for m in [*self.municipalities, self.import_municipality]})
        self.national = await self._node(
            "national", "services.national", "national", max_pool_size=100_000
        )
        self.national.start()
        await self.national.wait_ready()
        for p in prefs:
            node = await self._node(
                f"prefecture-{p}",
                "services.prefecture",
                f"prefecture-{p}",
                prefecture_code=p,
                national_target=f"127.0.0.1:{self.ports['national']}",
                push_batch_size=self.batch,
                push_window=self.window,
            )
            self.prefectures[p] = node
            node.start()
        for node in self.prefectures.values():
            await node.wait_ready()
        for code in [*self.municipalities, self.import_municipality]:
            node = await self._node(
                f"municipality-{code}",
                "services.municipal",
                f"municipality-{code}",
                local_government_code=code,
                prefecture_target=f"127.0.0.1:{self.ports[f'prefecture-{code[:2]}']}",
                push_batch_size=self.batch,
                push_window=self.window,
                pool_refill_size=self.pool_sizes[code],
                pool_low_watermark=100,
            )
            self.munis[code] = node
            node.start()
        for node in self.munis.values():
            await node.wait_ready()

    def operator_channel(self, code: str) -> grpc.aio.Channel:
        """One operator channel per municipality, opened once."""
        if code not in self.channels:
            self.channels[code] = secure_channel(
                f"127.0.0.1:{self.ports[f'municipality-{code}']}",
                tls_files(self.pki_dir, f"operator-{code}-admin"),
            )
        return self.channels[code]

    def operator(self, code: str) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
        return municipal_pb2_grpc.MunicipalServiceStub(self.operator_channel(code))

    async def municipal_status(self, code: str) -> municipal_pb2.GetMunicipalStatusResponse:
        response: municipal_pb2.GetMunicipalStatusResponse = await self.operator(code).GetStatus(
            municipal_pb2.GetMunicipalStatusRequest(), timeout=10
        )
        return response

    async def wait_pools(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        for code, want in self.pool_sizes.items():
            while True:
                status = await self.municipal_status(code)
                if status.codes_in_pool >= want:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{code}: code pool {status.codes_in_pool} < {want} after {limit_s:.0f}s:\n"
                        + self.munis[code].log_tail()
                    )
                await asyncio.sleep(0.2)

    async def stop_prefectures(self) -> None:
        """The municipalities' pushers then retry (with backoff) and deliver nothing."""
        await asyncio.gather(*(n.stop() for n in self.prefectures.values()))

    async def restart(self, nodes: Sequence[Node]) -> None:
        """Start stopped nodes again, on the same ports and databases."""
        for node in nodes:
            node.start()
        for node in nodes:
            await node.wait_ready()

    async def close_channels(self) -> None:
        for ch in self.channels.values():
            with contextlib.suppress(Exception):
                await ch.close(None)
        self.channels.clear()

    async def stop(self) -> None:
        await self.close_channels()
        await asyncio.gather(*(n.stop() for n in self.munis.values()), return_exceptions=True)
        await asyncio.gather(*(n.stop() for n in self.prefectures.values()), return_exceptions=True)
        if self.national is not None:
            await self.national.stop()

    def kill_now(self) -> None:
        for n in self.all_nodes():
            n.kill_now()


# --- measurements ----------------------------------------------------------------


class CpuMeter:
    """CPU seconds spent by each node process, PostgreSQL and this process over a window."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.start: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        out = {n.name: n.cpu() for n in self.fed.all_nodes() if n.running()}
        if self.fed.backend == "postgres":
            out["postgresql"] = _postgres_cpu()
        out["bench (this process)"] = _self_cpu()
        return out

    def begin(self) -> None:
        self.start = self._sample()
        self.machine = _machine_cpu()

    def end(self, seconds: float) -> dict[str, float]:
        """CPU seconds per process over the window; ``cores`` = total / wall time.

        ``other processes`` is what the rest of the machine used meanwhile (all
        CPU time minus ours): anything well above zero means the figures were
        measured on a busy machine.
        """
        now = self._sample()
        busy, _total = _machine_cpu()
        used = {k: round(now[k] - self.start.get(k, 0.0), 2) for k in now}
        used["total"] = round(sum(used.values()), 2)
        used["other processes"] = round(max(0.0, busy - self.machine[0] - used["total"]), 2)
        used["cores busy (total / wall)"] = round(used["total"] / seconds, 2) if seconds else 0.0
        return used


async def national_cursors(engine: AsyncEngine) -> dict[str, int]:
    from services.national import models

    c = models.identities.cursors
    async with engine.connect() as conn:
        rows = await conn.execute(select(c.c.origin_code, c.c.last_sequence))
        return {r[0]: int(r[1]) for r in rows}


async def wait_delivered(
    engine: AsyncEngine, want: dict[str, int], limit_s: float, poll: float = 0.05
) -> tuple[float, dict[str, int]]:
    """Until the national cursors reach ``want``; returns (wall time seen, cursors)."""
    deadline = time.monotonic() + limit_s
    last_report = time.monotonic()
    while True:
        got = await national_cursors(engine)
        if all(got.get(c, 0) >= s for c, s in want.items()):
            return time.time(), got
        if time.monotonic() > deadline:
            return math.nan, got
        if time.monotonic() - last_report > 5:
            done = sum(min(got.get(c, 0), s) for c, s in want.items())
            progress(f"  delivered {done:,} / {sum(want.values()):,}")
            last_report = time.monotonic()
        await asyncio.sleep(poll)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Plan:
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
        return self.notifications // self.k

    @property
    def lag_reserve(self) -> int:
        return math.ceil(self.lag_seconds * LAG_RATE_CEILING / self.k)


async def run_backend(plan: Plan, pki_dir: Path, root: Path) -> dict[str, Any]:
    """Phases 1, 2 and 4 and baseline (b) on one backend. Always cleans up."""
    workdir = root / plan.backend
    workdir.mkdir()
    munis, import_muni = choose_municipalities(plan.k, plan.prefectures)
    per = plan.per_municipality
    pools = {m: min(100_000, per + plan.lag_reserve + POOL_MARGIN) for m in munis}
    pools[import_muni] = min(100_000, plan.import_count + POOL_MARGIN)  # max one refill
    dbs = Databases(plan.backend, workdir, plan.plan_cache_mode)
    fed = Federation(
        plan.backend,
        workdir,
        pki_dir,
        munis,
        import_muni,
        plan.batch,
        pools,
        dbs,
        window=plan.window,
    )
    result: dict[str, Any] = {
        "municipalities": munis,
        "prefectures": sorted({m[:2] for m in munis}),
    }
    national_engine: AsyncEngine | None = None
    try:
        progress(
            f"{plan.backend}: starting national, {len(fed.prefectures) or plan.prefectures} "
            f"prefecture(s), {len(munis)} + 1 municipalities ({', '.join(munis)}; "
            f"import into {import_muni})"
        )
        await fed.start()
        progress(f"{plan.backend}: filling code pools ({sum(pools.values()):,} codes)")
        await fed.wait_pools(limit_s=240)
        await fed.stop_prefectures()
        national_engine = _engine(fed.urls["national"])

        # 4. Bulk import into one node, from a CSV, with delivery held off.
        result["import"] = await measure_import(fed, plan, import_muni, workdir)
        await fed.munis[import_muni].stop()

        # Fill the outboxes (not measured).
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
        want = {}
        for m in munis:
            want[m] = (await fed.municipal_status(m)).last_sequence
        fill_seconds = time.monotonic() - started
        progress(
            f"{plan.backend}: outboxes hold {sum(want.values()):,} notifications "
            f"(filled in {fill_seconds:.1f}s); restarting the nodes"
        )
        await fed.close_channels()
        await asyncio.gather(*(fed.munis[m].stop() for m in munis))

        # 1. Throughput.
        result["delivery"] = await measure_delivery(fed, plan, national_engine, want)
        thr = result["delivery"]["notifications_per_s"]

        # 2. Lag at half that rate (meaningless while a backlog is still draining).
        if result["delivery"]["complete"] and thr > 0:
            result["lag"] = await measure_lag(fed, plan, national_engine, want, thr / 2)
        else:
            result["lag"] = {"skipped": "delivery did not complete within its timeout"}

        payloads = await read_payloads(fed, munis, per)
    finally:
        progress(f"{plan.backend}: stopping the nodes")
        if national_engine is not None:
            await national_engine.dispose()
        try:
            await fed.stop()
        finally:
            fed.kill_now()
            await dbs.drop_all()

    # 3b. The database baseline, on a fresh database of the same kind.
    result["db_baseline"] = await measure_db_baseline(plan, payloads, workdir)
    result["_payloads"] = payloads
    return result


async def measure_import(fed: Federation, plan: Plan, code: str, workdir: Path) -> dict[str, Any]:
    n = plan.import_count
    progress(f"{plan.backend}: bulk import of {n:,} residents into {code} (generating the CSV)")
    path = workdir / f"import-{code}.csv"
    using = "bench.delivery CSV reader"
    importer = _importer()
    if importer is not None:
        from tools.sample import write_sample

        write_sample(path, code, n, seed=11)
        using = "jukinet.cli.importer"
    else:
        write_csv(path, import_rows(code, n, seed=11, prefix=f"csv-{code}"))
    stub = fed.operator(code)
    await fed.municipal_status(code)  # the channel is up before the clock starts
    cpu = CpuMeter(fed)
    cpu.begin()
    started = time.monotonic()
    if using == "jukinet.cli.importer":
        assert importer is not None
        channel = fed.operator_channel(code)
        summary = await importer.import_csv(channel, path, batch=IMPORT_BATCH, progress=False)
        imported = int(getattr(summary, "imported", n))
        rejected = len(getattr(summary, "rejected", ()))
    else:
        requests = (
            municipal_pb2.ImportResidentsRequest(rows=list(b))
            for b in _chunks(read_csv(path), IMPORT_BATCH)
        )
        tally = await stream_import(stub, requests, limit_s=900)
        imported, rejected = tally.imported, tally.rejected
    seconds = time.monotonic() - started
    used = cpu.end(seconds)
    if imported != n:
        raise BenchError(f"import into {code}: {imported} of {n} imported, {rejected} rejected")
    rate = n / seconds
    progress(f"{plan.backend}: imported {n:,} residents in {seconds:.1f}s = {rate:,.0f}/s")
    return {
        "municipality": code,
        "residents": n,
        "seconds": round(seconds, 3),
        "residents_per_s": round(rate),
        "rows_per_request": IMPORT_BATCH,
        "client": using,
        "cpu_seconds": used,
    }


def _importer() -> Any:
    try:
        import jukinet.cli.importer as importer  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return importer


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Profiler:
    """py-spy ``record`` on every running node for one phase (``--profile DIR``)."""

    def __init__(self, plan: Plan, fed: Federation, phase: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        if plan.profile is None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            progress("--profile: py-spy not found (pip install py-spy); not profiling")
            return
        out = plan.profile / plan.backend
        out.mkdir(parents=True, exist_ok=True)
        for node in fed.all_nodes():
            if node.running():
                self.procs.append(
                    subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--pid",
                            str(node.pid),
                            "--rate",
                            "100",
                            "--idle",
                            "--nonblocking",
                            "--format",
                            "raw",
                            "--output",
                            str(out / f"{phase}-{node.name}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )

    async def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            for _ in range(200):
                if p.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                p.kill()


async def measure_delivery(
    fed: Federation, plan: Plan, engine: AsyncEngine, want: dict[str, int]
) -> dict[str, Any]:
    total = sum(want.values())
    prefectures = list(fed.prefectures.values())
    await fed.restart(prefectures)
    for node in prefectures:
        node.pause()
    paused = time.monotonic()
    # The pushers of the restarted municipalities wait in the TLS handshake
    # with the paused prefectures (well within gRPC's 20 s connect deadline).
    await fed.restart([fed.munis[m] for m in want])
    await asyncio.sleep(0.5)  # let the start-up CPU settle
    pause = time.monotonic() - paused
    if pause > 15:
        progress(
            f"{plan.backend}: warning: prefectures paused {pause:.0f}s while the municipalities "
            "started; gRPC's 20 s connect deadline may delay the first pushes"
        )
    cpu = CpuMeter(fed)
    cpu.begin()
    start = time.time()
    for node in prefectures:
        node.resume()
    profiler = Profiler(plan, fed, "delivery")
    progress(f"{plan.backend}: delivery started ({total:,} notifications)")
    timeout = 60 + total / 500
    try:
        seen, got = await wait_delivered(engine, want, timeout)
    finally:
        await profiler.stop()
    complete = not math.isnan(seen)
    end = seen if complete else time.time()
    used = cpu.end(end - start)
    from services.national import models

    h = models.identities.history
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


async def measure_lag(
    fed: Federation, plan: Plan, engine: AsyncEngine, base: dict[str, int], rate: float
) -> dict[str, Any]:
    munis = list(base)
    k = len(munis)
    reserve = min(fed.pool_sizes[m] - base[m] for m in munis) - POOL_MARGIN
    duration = plan.lag_seconds
    if rate * duration / k > reserve:
        duration = max(2.0, reserve * k / rate * 0.95)
        progress(f"{plan.backend}: lag phase shortened to {duration:.1f}s (code pools)")
    per_muni_rate = rate / k
    batch = max(1, round(per_muni_rate / LAG_REQUESTS_PER_S))
    interval = batch / per_muni_rate
    n_requests = max(1, int(duration / interval))
    progress(
        f"{plan.backend}: lag at {rate:,.0f} notifications/s offered for {duration:.0f}s "
        f"({k} streams, {batch} rows every {interval * 1000:.0f} ms each)"
    )
    rows = {m: import_rows(m, batch * n_requests, seed=13, prefix=f"lag-{m}") for m in munis}
    stubs = {m: fed.operator(m) for m in munis}
    for m in munis:
        await fed.municipal_status(m)  # channels up before the load starts
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2
    wall0 = time.time() + 0.2
    response_latency: list[float] = []
    late_sends = [0]

    async def one(m: str) -> ImportTally:
        sent: deque[float] = deque()

        async def requests() -> AsyncIterator[municipal_pb2.ImportResidentsRequest]:
            for i in range(n_requests):
                target = t0 + i * interval
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -interval:
                    late_sends[0] += 1
                sent.append(loop.time())
                yield municipal_pb2.ImportResidentsRequest(
                    rows=rows[m][i * batch : (i + 1) * batch]
                )

        tally = ImportTally()
        call = stubs[m].ImportResidents(requests(), timeout=duration + 120)
        async for response in call:
            response_latency.append(loop.time() - sent.popleft())
            tally.add(response)
        return tally

    cpu = CpuMeter(fed)
    cpu.begin()
    profiler = Profiler(plan, fed, "lag")
    try:
        tallies = await asyncio.gather(*(one(m) for m in munis))
    finally:
        await profiler.stop()
    offered_seconds = time.time() - wall0
    want = {}
    for m in munis:
        want[m] = (await fed.municipal_status(m)).last_sequence
    written = sum(want[m] - base[m] for m in munis)
    limit = 30 + written / 500
    _seen, got = await wait_delivered(engine, want, limit_s=limit)
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
        "rows_per_request": batch,
        "request_interval_ms": round(interval * 1000, 1),
        "late_sends": late_sends[0],
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


async def read_lags(
    fed: Federation, engine: AsyncEngine, base: dict[str, int]
) -> tuple[list[float], list[float], list[float]]:
    """Every lag-phase notification's national lag (applied_at - recorded_at), split
    into municipal commit → prefecture apply and prefecture apply → national apply
    (the prefecture's identity_history has its own applied_at). All sorted."""
    from services.national import models as national_models
    from services.prefecture import models as prefecture_models

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
    ph = prefecture_models.identities.history
    to_prefecture: list[float] = []
    to_national: list[float] = []
    for p in sorted({m[:2] for m in base}):
        pref_engine = _engine(fed.urls[f"prefecture-{p}"])
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
    from services.municipal import models

    t = models.outbox.entries
    payloads: list[bytes] = []
    for m in munis:
        engine = _engine(fed.urls[f"municipality-{m}"])
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(t.c.payload).where(t.c.sequence <= per).order_by(t.c.sequence)
                )
                payloads.extend(bytes(p) for p in rows.scalars())
        finally:
            await engine.dispose()
    return payloads


# --- baseline (b): the national node's rows, straight into the database ------------


def national_rows(
    payloads: Sequence[bytes],
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    now = dt.datetime.now(dt.UTC)
    identities: list[dict[str, object]] = []
    history: list[dict[str, object]] = []
    for p in payloads:
        n = common_pb2.Notification.FromString(p)
        r = n.record
        identities.append(
            {
                "resident_code": r.resident_code,
                "local_government_code": r.local_government_code,
                **person_values(r),
                "status": 1,
                "replaced_by": "",
                "registered_since": n.effective_date,
                "updated_at": now,
            }
        )
        history.append(
            {
                "resident_code": r.resident_code,
                "origin_code": n.origin_code,
                "origin_sequence": n.sequence,
                "kind": n.kind,
                "reason": n.reason,
                "effective_date": n.effective_date,
                "recorded_at": dt.datetime.fromisoformat(n.recorded_at),
                "applied_at": now,
                "changed_current": True,
                "payload": p,
            }
        )
    return identities, history


async def measure_db_baseline(
    plan: Plan, payloads: Sequence[bytes], workdir: Path
) -> dict[str, Any]:
    from jukinet.db import Database
    from services.national import models
    from services.national.app import MIGRATIONS

    dbs = Databases(plan.backend, workdir)
    identities, history = national_rows(payloads)
    t = models.identities
    progress(
        f"{plan.backend}: baseline (b): {len(payloads):,} identity upserts + history rows, "
        f"executemany in transactions of {plan.batch}"
    )
    try:
        db = Database(await dbs.url("baseline"))
        try:
            await db.migrate(MIGRATIONS)
            ins = pg_insert if plan.backend == "postgres" else sqlite_insert
            stmt = ins(t.identities)
            upsert = stmt.on_conflict_do_update(
                index_elements=[t.identities.c.resident_code],
                set_={
                    c.name: stmt.excluded[c.name]
                    for c in t.identities.columns
                    if c.name != "resident_code"
                },
            )
            # Warm the connection and the statement caches outside the clock.
            async with db.write() as conn:
                await conn.execute(select(func.count()).select_from(t.identities))
            started = time.monotonic()
            for i in range(0, len(identities), plan.batch):
                async with db.write() as conn:
                    await conn.execute(upsert, identities[i : i + plan.batch])
                    await conn.execute(insert(t.history), history[i : i + plan.batch])
            seconds = time.monotonic() - started
            async with db.read() as conn:
                stored = await conn.scalar(select(func.count()).select_from(t.history))
        finally:
            await db.close()
    finally:
        await dbs.drop_all()
    if stored != len(history):
        raise BenchError(f"baseline (b): stored {stored} of {len(history)}")
    rate = len(payloads) / seconds
    progress(f"{plan.backend}: baseline (b): {rate:,.0f} notifications/s = {2 * rate:,.0f} rows/s")
    return {
        "notifications": len(payloads),
        "seconds": round(seconds, 3),
        "notifications_per_s": round(rate),
        "rows_per_s": round(2 * rate),
        "transaction_size": plan.batch,
    }


# --- baseline (a): the same batches over gRPC, no storage --------------------------


def _serve_push_baseline(port: int, pki_dir: Path) -> None:
    """The baseline server process: acknowledges every batch, stores nothing."""

    async def push(
        requests: AsyncIterator[delivery_pb2.PushNotificationsRequest], context: Any
    ) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
        async for request in requests:
            entries = request.entries
            yield delivery_pb2.PushNotificationsResponse(
                acknowledged_through=entries[-1].outbox_sequence if entries else 0,
                applied=len(entries),
            )

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "jukinet.v1.NationalService",
            {
                "PushNotifications": grpc.stream_stream_rpc_method_handler(
                    push,
                    request_deserializer=delivery_pb2.PushNotificationsRequest.FromString,
                    response_serializer=delivery_pb2.PushNotificationsResponse.SerializeToString,
                )
            },
        )
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        server.add_generic_rpc_handlers((handler,))
        server.add_secure_port(
            f"127.0.0.1:{port}", server_credentials(tls_files(pki_dir, "national"))
        )
        await server.start()
        print("baseline ready on port", port, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


def _spawn(argv: list[str], output: Path) -> subprocess.Popen[bytes]:
    """A helper process (stdout and stderr to ``output``), in its own session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
    with output.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )


async def measure_grpc_baseline(
    payloads: Sequence[bytes],
    batch: int,
    pki_dir: Path,
    workdir: Path,
    seconds: float,
    runs: int,
    window: int,
) -> dict[str, Any]:
    port = free_port()
    node = Node("grpc-baseline", "bench.delivery", {}, "national", workdir, pki_dir)
    requests = [
        delivery_pb2.PushNotificationsRequest(
            entries=[
                delivery_pb2.OutboxEntry(
                    outbox_sequence=i + j + 1,
                    notification=common_pb2.Notification.FromString(p),
                )
                for j, p in enumerate(chunk)
            ]
        )
        for i, chunk in ((i, payloads[i : i + batch]) for i in range(0, len(payloads), batch))
    ]
    size = statistics.fmean(len(p) for p in payloads)
    progress(
        f"baseline (a): gRPC mTLS stream of {batch}-notification batches "
        f"(mean payload {size:.0f} B), {runs} runs of ~{seconds:.0f}s"
    )
    node.proc = _spawn(
        [
            sys.executable,
            "-m",
            "bench.delivery",
            "--serve-push-baseline",
            str(port),
            "--pki",
            str(pki_dir),
        ],
        workdir / "grpc-baseline.out",
    )
    node.starts = 0
    rates: list[float] = []
    cpu_server: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while b"baseline ready" not in (workdir / "grpc-baseline.out").read_bytes():
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    "baseline server did not start:\n"
                    + (workdir / "grpc-baseline.out").read_text(errors="replace")
                )
            await asyncio.sleep(0.05)
        channel = secure_channel(f"127.0.0.1:{port}", tls_files(pki_dir, "prefecture-31"))
        try:
            method = channel.stream_stream(
                PUSH_METHOD,
                request_serializer=delivery_pb2.PushNotificationsRequest.SerializeToString,
                response_deserializer=delivery_pb2.PushNotificationsResponse.FromString,
            )
            await _push_for(method, requests[:4], 0.0, window=window)  # connect and warm up
            for _ in range(runs):
                before = _proc_cpu(node.pid)
                sent, elapsed = await _push_for(method, requests, seconds, window=window)
                cpu_server.append((_proc_cpu(node.pid) - before) / sent * 1e6)
                rates.append(sent / elapsed)
        finally:
            await channel.close(None)
    finally:
        await node.stop()
        node.kill_now()
    rate = statistics.median(rates)
    progress(
        f"baseline (a): {rate:,.0f} messages/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )
    return {
        "messages_per_s": round(rate),
        "runs": [round(r) for r in rates],
        "batch": batch,
        "window": window,
        "mean_payload_bytes": round(size),
        "server_cpu_us_per_message": round(statistics.median(cpu_server), 2),
    }


async def _push_for(
    method: Any,
    requests: Sequence[delivery_pb2.PushNotificationsRequest],
    seconds: float,
    window: int,
) -> tuple[int, float]:
    """Stream ``requests`` (repeated until ``seconds`` passed) with ``window`` unacknowledged
    batches at most, as the pusher does; returns (messages acknowledged, elapsed)."""
    room = asyncio.Semaphore(window)
    call = method(timeout=seconds + 60)
    started = time.monotonic()
    sent_messages = 0
    sent_batches = 0

    async def writer() -> None:
        nonlocal sent_messages, sent_batches
        while True:
            for request in requests:
                await room.acquire()
                await call.write(request)
                sent_messages += len(request.entries)
                sent_batches += 1
            if time.monotonic() - started >= seconds:
                break
        await call.done_writing()

    acked = 0
    writing = asyncio.create_task(writer())
    try:
        async for _response in call:
            acked += 1
            room.release()
    finally:
        await writing
    elapsed = time.monotonic() - started
    if acked != sent_batches:
        raise BenchError(f"baseline (a): {acked} acknowledgements for {sent_batches} batches")
    return sent_messages, elapsed


# --- the run ------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    import google.protobuf
    import sqlalchemy

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    import sqlite3

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "postgresql": None,
    }


async def postgres_version() -> str | None:
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
    except Exception as exc:
        progress(f"PostgreSQL unreachable at {PG_ADMIN_DSN}: {exc}")
        return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    facts = machine_facts()
    facts["postgresql"] = await postgres_version()
    if args.backend is None:  # the default: both, or SQLite alone without a server
        args.backend = "both" if facts["postgresql"] is not None else "sqlite"
        if args.backend == "sqlite":
            progress("no PostgreSQL server: measuring SQLite only (see --backend)")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and facts["postgresql"] is None:
        raise BenchError("the postgres backend needs a reachable server (JUKINET_BENCH_PG_URL)")
    params = {
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
    results: dict[str, Any] = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.delivery", *(shlex.quote(a) for a in sys.argv[1:])]),
        "machine": facts,
        "parameters": params,
        "targets": {
            "throughput_notifications_per_s_postgres": TARGET_THROUGHPUT,
            "lag_p99_s_at_half": TARGET_LAG_P99,
        },
        "backends": {},
    }
    root = Path(tempfile.mkdtemp(prefix="jukinet-bench-"))
    ok = False
    try:
        pki_dir = root / "pki"
        munis, import_muni = choose_municipalities(args.municipalities, args.prefectures)
        pki.issue_federation(
            pki_dir,
            pki.FederationSpec(
                prefectures=PREFECTURE_ORDER[: args.prefectures],
                municipalities=[*munis, import_muni],
                operators=True,
            ),
        )
        payloads: list[bytes] = []
        for backend in backends:
            plan = Plan(
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
            outcome = await run_backend(plan, pki_dir, root)
            payloads = outcome.pop("_payloads")
            results["backends"][backend] = outcome
        grpc_base = await measure_grpc_baseline(
            payloads,
            args.batch,
            pki_dir,
            root,
            seconds=1.0 if args.quick else 2.0,
            runs=2 if args.quick else 3,
            window=args.window,
        )
        results["grpc_baseline"] = grpc_base
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
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            progress(f"work files (configs, node logs) kept in {root}")
    return results


# --- report -------------------------------------------------------------------


def _f(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,.{digits}f}"


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where anything is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ms(value: Any) -> str:
    return _f(value * 1000 if isinstance(value, int | float) else None)


def render_markdown(r: dict[str, Any]) -> str:
    """docs/benchmarks.md from a results dictionary."""
    backends: dict[str, Any] = r["backends"]
    names = list(backends)
    g = r["grpc_baseline"]
    m = r["machine"]
    p = r["parameters"]
    head = "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)

    def row(label: str, get: Any) -> str:
        return f"| {label} | " + " | ".join(get(backends[n]) for n in names) + " |"

    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.delivery`; its module docstring describes",
        "the method). Every run rewrites this file and `bench-results.json`; `--quick`",
        "runs are smaller and noisier.",
        "",
        f"Last run: {r['timestamp']}, `{r['command']}`.",
        "",
        f"Machine: {m['cpu_count']} CPUs ({m['cpu_model'] or 'unknown model'}), "
        f"Python {m['python']}, grpcio {m['grpcio']}, protobuf {m['protobuf']}, "
        f"SQLAlchemy {m['sqlalchemy']}, SQLite {m['sqlite']}, "
        f"PostgreSQL {m['postgresql'] or '–'}.",
        "",
        f"Parameters: {p['notifications']:,} notifications from {p['municipalities']} "
        f"municipalities in {p['prefectures']} prefecture(s) (one process per node, "
        f"{p['municipalities'] + p['prefectures'] + 1} node processes), push batches of "
        f"{p['batch']} with {p['push_window']} unacknowledged, lag phase "
        f"{p['lag_seconds']:.0f} s, bulk import of {p['import_residents']:,} residents"
        f"{' (--quick)' if p['quick'] else ''}"
        + (
            f", PostgreSQL plan_cache_mode={p['pg_plan_cache_mode']} (a what-if, not the default)"
            if p.get("pg_plan_cache_mode", "server default") != "server default"
            else ""
        )
        + ".",
        "",
        head,
        row(
            "**1. delivery, notifications/s** end to end",
            lambda b: "**" + _f(_get(b, "delivery", "notifications_per_s")) + "**",
        ),
        row(
            "2. offered load, notifications/s",
            lambda b: _f(_get(b, "lag", "offered_rate_achieved")),
        ),
        row("**2. lag p50, ms**", lambda b: "**" + _ms(_get(b, "lag", "p50_s")) + "**"),
        row("**2. lag p99, ms**", lambda b: "**" + _ms(_get(b, "lag", "p99_s")) + "**"),
        row(
            "2. … of which municipal commit → prefecture apply, p50 / p99 ms",
            lambda b: (
                _ms(_get(b, "lag", "municipal_commit_to_prefecture_apply", "p50_s"))
                + " / "
                + _ms(_get(b, "lag", "municipal_commit_to_prefecture_apply", "p99_s"))
            ),
        ),
        row(
            "2. … of which prefecture apply → national apply, p50 / p99 ms",
            lambda b: (
                _ms(_get(b, "lag", "prefecture_apply_to_national_apply", "p50_s"))
                + " / "
                + _ms(_get(b, "lag", "prefecture_apply_to_national_apply", "p99_s"))
            ),
        ),
        row("3a. bare gRPC mTLS stream, messages/s", lambda b: _f(g["messages_per_s"])),
        row(
            "3b. bare executemany of the national rows, rows/s",
            lambda b: _f(_get(b, "db_baseline", "rows_per_s")),
        ),
        row(
            "pipeline ÷ 3a",
            lambda b: _f(_get(b, "ratios", "pipeline_vs_grpc_baseline"), 3),
        ),
        row(
            "pipeline ÷ 3b (notifications ÷ row pairs)",
            lambda b: _f(_get(b, "ratios", "pipeline_vs_db_baseline"), 2),
        ),
        row(
            "**4. bulk import, residents/s**",
            lambda b: "**" + _f(_get(b, "import", "residents_per_s")) + "**",
        ),
        row(
            "CPU cores busy during 1 (ours / other processes)",
            lambda b: (
                _f(_get(b, "delivery", "cpu_seconds", "cores busy (total / wall)"), 2)
                + " / "
                + _f(
                    (_get(b, "delivery", "cpu_seconds", "other processes") or 0)
                    / (_get(b, "delivery", "seconds") or 1),
                    2,
                )
            ),
        ),
        "",
        f"Targets (from the issue): at least {TARGET_THROUGHPUT:,} notifications/s end to end "
        f"on PostgreSQL, and lag p99 under {TARGET_LAG_P99:.0f} s at half that rate.",
        "",
    ]
    lines += _comparison(r)
    lines += [
        "",
        "## What each row measures",
        "",
        "1. **Delivery.** Every municipality starts with N/K notifications in its outbox. They",
        "   are filled through the bulk import while no prefecture runs; then the prefectures",
        "   start and are paused (SIGSTOP), the municipal nodes start, and their pushers wait",
        "   in the TLS handshake. The clock starts at SIGCONT and stops when the national",
        "   node's cursors (read from its database every 50 ms) reach every municipality's",
        "   last sequence. Each notification is applied at its prefecture, relayed through",
        "   the prefecture's outbox and applied at the national node.",
        "2. **Lag.** An open-loop generator (one ImportResidents stream per municipality,",
        f"   a batch every {1000 / LAG_REQUESTS_PER_S:.0f} ms at fixed times, never waiting for "
        "answers) offers half the",
        "   measured throughput. Lag is `applied_at - recorded_at` of *every* notification,",
        "   read from the national `identity_history` afterwards: `recorded_at` is taken in",
        "   the municipal transaction just before its commit, `applied_at` in the national",
        "   transaction just before its commit, on the same clock. The split uses the",
        "   prefecture's own `applied_at`. The `jukinet_delivery_lag_seconds` histogram",
        "   measures the same interval, but its buckets (0.5, 1, 2.5 s) are too coarse for a",
        "   p99 and it cannot be split by tier.",
        "3. **Baselines**, same run, same machine. (a) The same notifications in",
        "   PushNotificationsRequest batches of the same size over one grpc.aio mTLS stream,",
        "   with the pusher's window and an acknowledgement per batch, to a server process",
        "   that stores nothing. (b) The two rows the national node writes per notification",
        "   (identity upsert + history row) by SQLAlchemy Core executemany, one transaction",
        "   per batch, into a fresh database of the same kind, no gRPC. The pipeline does",
        "   that database work twice (prefecture and national) plus the relay outbox, the",
        "   lookups and the checks, on the same 2 cores.",
        "4. **Bulk import.** A generated CSV streamed through ImportResidents "
        f"({IMPORT_BATCH:,} rows per",
        "   message, `jukinet.cli.importer`) into one municipal node while no prefecture runs:",
        "   the node's own ingest (checks, code pool, register rows, outbox entries).",
        "",
        "Layout: K municipalities spread over two prefectures (31 Tottori and 13 Tokyo,",
        "`--prefectures 1` puts them all in 31), so that the national node serves several",
        "prefecture streams as it does in production and no single prefecture process caps",
        "the run at one core; with the national node that is K + 3 node processes, plus",
        "PostgreSQL, on 2 cores, which is about as many as stay meaningful.",
        "",
        "CPU seconds per process during phase 1 (`other processes`: the rest of the",
        "machine, e.g. a test run in parallel; well above zero means a disturbed run):",
        "",
        head,
    ]
    keys: list[str] = []
    for n in names:
        for key in _get(backends[n], "delivery", "cpu_seconds") or {}:
            if key not in keys and not key.startswith("cores"):
                keys.append(key)
    for key in keys:
        lines.append(row(key, lambda b, key=key: _f(_get(b, "delivery", "cpu_seconds", key), 1)))
    lines += ["", *_gateway_section(r)]
    return "\n".join(lines) + "\n"


def _gateway_section(r: dict[str, Any]) -> list[str]:
    """The gateway benchmark's section (bench.gateway), if it ran."""
    g = r.get("gateway")
    if not isinstance(g, dict):
        return []
    if "skipped" in g:
        return ["## Agency gateway: Verify and VerifyBatch", "", f"Not measured: {g['skipped']}."]
    from bench.gateway import render_section

    return render_section(g)


def render_document(r: dict[str, Any]) -> str:
    """docs/benchmarks.md: the delivery benchmark (if in ``r``) and the gateway's."""
    if "backends" in r:
        return render_markdown(r)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.delivery`). The delivery benchmark has not",
        "run yet; `python -m bench.delivery --only delivery` adds it.",
        "",
        *_gateway_section(r),
    ]
    return "\n".join(lines) + "\n"


def _comparison(r: dict[str, Any]) -> list[str]:
    out = ["## How the figures compare", ""]
    for name, b in r["backends"].items():
        thr = _get(b, "delivery", "notifications_per_s") or 0
        p99 = _get(b, "lag", "p99_s")
        text = (
            f"- **{name}**: {thr:,} notifications/s end to end is "
            f"{_get(b, 'ratios', 'pipeline_vs_grpc_baseline') or 0:.1%} of the bare gRPC stream "
            f"and {_get(b, 'ratios', 'pipeline_vs_db_baseline') or 0:.0%} of the bare database "
            "write rate"
        )
        if name == "postgres":
            text += (
                f"; the {TARGET_THROUGHPUT:,}/s target is "
                f"{'met' if thr >= TARGET_THROUGHPUT else 'missed'} ({thr / TARGET_THROUGHPUT:.0%})"
            )
            offered = _get(b, "lag", "offered_rate_achieved") or 0
            if p99 is not None:
                text += (
                    f"; lag p99 {p99:.2f} s at {offered:,}/s offered "
                    f"{'meets' if p99 < TARGET_LAG_P99 else 'misses'} the {TARGET_LAG_P99:.0f} s "
                    "bound"
                )
                if offered < TARGET_THROUGHPUT / 2 * 0.9:
                    text += (
                        ", but at half the *measured* rate, not at the "
                        f"{TARGET_THROUGHPUT // 2:,}/s the target means"
                    )
        if not _get(b, "delivery", "complete"):
            text += " (delivery did NOT complete within its timeout: a partial rate)"
        out.append(text + ".")
    disturbed = []
    for name, b in r["backends"].items():
        for phase in ("import", "delivery", "lag"):
            other = _get(b, phase, "cpu_seconds", "other processes")
            seconds = _get(b, phase, "seconds")
            if other is not None and seconds and other / seconds > 0.2:
                disturbed.append(f"{name} {phase} ({other / seconds:.2f} cores)")
    if disturbed:
        out += [
            "",
            "**Disturbed run**: other processes on the machine used CPU during "
            + ", ".join(disturbed)
            + "; expect these figures to be lower and noisier than on a quiet machine.",
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.delivery", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgres", "both"],
        help="default: both (SQLite alone when no PostgreSQL server answers)",
    )
    parser.add_argument("--notifications", type=int, help="N (default 100000; quick 20000)")
    parser.add_argument("--municipalities", type=int, default=4, help="K (default 4)")
    parser.add_argument(
        "--prefectures",
        type=int,
        choices=[1, 2],
        default=2,
        help="spread the municipalities over 1 or 2 prefectures (default 2)",
    )
    parser.add_argument("--batch", type=int, default=500, help="push batch size (default 500)")
    parser.add_argument(
        "--window", type=int, default=4, help="unacknowledged push batches (default 4)"
    )
    parser.add_argument("--lag-seconds", type=float, help="lag phase length (default 20; quick 6)")
    parser.add_argument(
        "--import-residents", type=int, help="bulk import size (default 100000; quick 20000)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, ~1-2 minutes")
    parser.add_argument("--out", default="bench-results.json", help="results file (JSON)")
    parser.add_argument(
        "--markdown", default=str(REPO / "docs" / "benchmarks.md"), help="rendered table"
    )
    parser.add_argument("--keep", action="store_true", help="keep configs and node logs")
    parser.add_argument(
        "--pg-plan-cache",
        choices=["auto", "force_custom_plan", "force_generic_plan"],
        help="what-if: set plan_cache_mode on every node database (default: the server's)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record py-spy profiles (collapsed stacks) of the nodes during phases 1 and 2",
    )
    parser.add_argument(
        "--only",
        choices=["delivery", "gateway"],
        help="run one benchmark (default: delivery, then gateway)",
    )
    from bench import gateway as bench_gateway

    bench_gateway.add_arguments(parser)
    parser.add_argument("--serve-push-baseline", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_push_baseline:
        _serve_push_baseline(args.serve_push_baseline, args.pki)
        return 0
    try:
        gateway_plan = bench_gateway.plan_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.only == "gateway":
        return _main_gateway(args, gateway_plan, {})
    if args.notifications is None:
        args.notifications = 20_000 if args.quick else 100_000
    if args.lag_seconds is None:
        args.lag_seconds = 6.0 if args.quick else 20.0
    if args.import_residents is None:
        args.import_residents = 20_000 if args.quick else 100_000
    if not 1 <= args.municipalities <= 40:
        parser.error("--municipalities: 1 to 40")
    if not 1 <= args.batch <= 10_000:
        parser.error("--batch: 1 to 10000")
    per = args.notifications // args.municipalities
    if per < 1 or per > 100_000 - POOL_MARGIN:
        parser.error("--notifications: 1 to 99,000 per municipality")
    if not 1 <= args.import_residents <= 100_000:
        parser.error("--import-residents: 1 to 100000")
    args.notifications = per * args.municipalities
    try:
        results = asyncio.run(run(args))
    except BenchError as exc:
        progress(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    if args.only == "delivery":
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            results["gateway"] = json.loads(Path(args.out).read_text())["gateway"]  # kept
        _write(args, results)
        return 0
    return _main_gateway(args, gateway_plan, results)


def _write(args: argparse.Namespace, results: dict[str, Any]) -> None:
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(render_document(results))
    progress(f"wrote {args.out} and {args.markdown}")


def _main_gateway(args: argparse.Namespace, plan: Any, results: dict[str, Any]) -> int:
    """The gateway benchmark, its figures under ``gateway`` in the results file.

    Alone (``--only gateway``) it keeps the file's other contents; after the
    delivery benchmark it is skipped when no PostgreSQL server answers."""
    import bench.delivery as imported  # what bench_gateway raises: __main__ is a second copy
    from bench import gateway as bench_gateway

    if not results:
        with contextlib.suppress(OSError, ValueError):
            results = json.loads(Path(args.out).read_text())
        if not isinstance(results, dict):
            results = {}
    elif results["machine"]["postgresql"] is None:
        results["gateway"] = {"skipped": "no PostgreSQL server answered"}
        _write(args, results)
        return 0
    command = " ".join(["python -m bench.delivery", *(shlex.quote(a) for a in sys.argv[1:])])
    code = 0
    try:
        results["gateway"] = asyncio.run(bench_gateway.run_gateway_bench(plan, command))
    except (BenchError, imported.BenchError) as exc:
        progress(f"FAILED: gateway: {exc}")
        code = 1
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    if code == 0 or "backends" in results:
        _write(args, results)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
