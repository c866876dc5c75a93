"""A federation of real node processes on 127.0.0.1: what the demo, the
end-to-end tests and the benchmark run.

It writes a PKI, one TOML config per node (own port, own metrics port, own
database) and starts each node as ``python -m services.<tier> --config FILE``
(the agency gateway, optional: ``python -m gateway``, no database) with its
output in ``<workdir>/logs/<node>.log``. Nodes can be stopped, killed
(SIGKILL), paused (SIGSTOP) and resumed, and restarted on the same port and
database; :meth:`Node.cpu_seconds` reads a running node's CPU time.

Databases come from :class:`Databases`: one SQLite file per node, or a fresh
PostgreSQL database per node on the server :data:`PG_SERVER` names (the
``JUKINET_TEST_PG_DSN`` variable, read here and nowhere else), dropped by
:meth:`LocalFederation.close`.

Each node runs in its own session (Ctrl-C reaches the caller, which stops the
nodes in order) and, on Linux, gets SIGTERM if the caller dies without
stopping it (the node's ``--parent-pid``). ``JUKINET_*`` variables of the
caller's environment are not passed on: a node's settings come from its
config file alone.

Operators log in at the municipal nodes as they do at a counter: with a
counter terminal's certificate (``terminal-<code>-desk1``), an IC card (a
SoftHSM2 token in ``<workdir>/softhsm``) and a password. :meth:`prepare`
provisions a card for every operator of :data:`STAFF` in every municipality
and enrolls them in its database; :meth:`LocalFederation.session` logs one in
(once per run; the sessions live in the node's database, so they survive a
restart) and :meth:`LocalFederation.channel` of a municipal node carries the
session of ``counter`` (clerk and supervisor), logged in when the
municipalities start. The password hash is cheap in this federation
(``password_hash_time_cost`` 1, 8 MiB): logins are not what it measures.

Nodes are spawned without any Python code running between ``fork`` and
``exec`` (no ``preexec_fn``; only options the C side of :mod:`subprocess`
applies): the caller usually holds gRPC channels, and Python in the forked
child runs gRPC's fork handlers, which crash the child now and then.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jukinet import card, localgov, pki
from jukinet.client import log_in, tls_files
from jukinet.db import Database
from jukinet.errors import error_metadata
from jukinet.identity import Identity
from jukinet.relay.directory import write_source
from jukinet.tls import secure_channel
from jukinet.v1 import (
    delivery_pb2,
    municipal_pb2,
    municipal_pb2_grpc,
    national_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
"""Where the ``jukinet``, ``services`` and ``gateway`` packages are."""

PG_SERVER: str = os.environ.get(
    "JUKINET_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""The PostgreSQL server that tests, demo and benchmark create their databases on:
a libpq URL of a database to connect to (``JUKINET_TEST_PG_DSN``; default the
local server, user ``postgres``)."""


@dataclass(frozen=True)
class Staff:
    """An operator of every municipality of a local federation: id, roles, terminal."""

    operator_id: str
    roles: tuple[operator_pb2.Role.ValueType, ...]
    terminal: str = "desk1"


STAFF: tuple[Staff, ...] = (
    Staff("admin", (operator_pb2.ROLE_ADMINISTRATOR,)),
    Staff("counter", (operator_pb2.ROLE_CLERK, operator_pb2.ROLE_SUPERVISOR)),
    Staff("clerk", (operator_pb2.ROLE_CLERK,)),
    Staff("supervisor", (operator_pb2.ROLE_CLERK, operator_pb2.ROLE_SUPERVISOR)),
    Staff("auditor", (operator_pb2.ROLE_AUDITOR,), "desk2"),
)
"""Who works at each municipality of a local federation (``counter`` serves
:meth:`LocalFederation.channel`)."""

DEFAULT_OPERATOR = "counter"
CARD_PIN = "246810"
CARD_SO_PIN = "so-135791"
RESIDENT_CARD_PIN = "1357"
"""The PIN of every demo resident's card (a resident card's PIN is 4 digits)."""
RESIDENT_CARD_SO_PIN = "blank-so-2468"
"""The security officer PIN of a blank resident card, until its municipality issues it."""
INITIAL_PASSWORD = "Initial-pass-2026"
PASSWORD = "Tottori-Sakyu-2026"
"""Every operator's password after the first login (the initial one is changed then)."""

TERMINALS = ("desk1", "desk2")
MUNICIPAL_SETTINGS: dict[str, Any] = {
    "password_hash_time_cost": 1,
    "password_hash_memory_kib": 8 * 1024,
}


def card_label(code: str, operator_id: str) -> str:
    """The SoftHSM2 token label of an operator's card (at most 32 characters)."""
    return f"{code}-{operator_id}"[:32]


class NodeFailed(RuntimeError):
    """A node exited or did not become ready; the message ends with its log's tail."""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now and that this
    process has not handed out before.

    A federation picks all its ports before any node binds one, and the kernel
    may offer a port it has just offered again; two nodes given one port would
    have the second refuse to start while the first answered for it.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1 that was not handed out before")


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` from ``/proc`` (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# --- databases ------------------------------------------------------------------


class Databases:
    """One database per node: SQLite files in ``folder``, or fresh PostgreSQL
    databases on ``server`` (created by :meth:`url`, dropped by :meth:`drop_all`).

    A node's database starts as a copy of a template its tier's migrations
    have already run on (a file copy, or ``CREATE DATABASE ... TEMPLATE``),
    made once per process (SQLite) or per server (PostgreSQL) and named by a
    digest of the migrations: a federation starts without running six
    migration chains. The node still runs its migrations at start, which then
    have nothing to do. ``templates=False`` starts every database empty.
    """

    def __init__(
        self,
        backend: str,
        folder: Path,
        *,
        server: str = PG_SERVER,
        prefix: str = "jk",
        plan_cache_mode: str = "",
        templates: bool = True,
    ) -> None:
        if backend not in ("sqlite", "postgres"):
            raise ValueError(f"unknown database backend {backend!r}")
        self.backend = backend
        self.folder = folder
        self.server = server
        self.prefix = prefix
        # A what-if of the benchmark: set on every database it creates.
        self.plan_cache_mode = plan_cache_mode
        self.templates = templates
        self.created: list[str] = []
        self._tag = uuid.uuid4().hex[:10]

    async def url(self, node: str) -> str:
        """A new database for ``node``, as a SQLAlchemy URL."""
        migrations = tier_migrations(node) if self.templates else None
        if self.backend == "sqlite":
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / (node + ".db")
            if migrations is not None and not path.exists():
                shutil.copyfile(await _sqlite_template(migrations), path)
            return f"sqlite+aiosqlite:///{path}"
        # Unique per instance, so that parallel runs on one server do not collide.
        name = f"{self.prefix}_{self._tag}_{node.replace('-', '_')}"
        template = "" if migrations is None else await _pg_template(self.server, migrations)
        conn = await asyncpg.connect(self.server, timeout=10)
        try:
            if template:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            else:
                await conn.execute(f'CREATE DATABASE "{name}"')
            self.created.append(name)
            if self.plan_cache_mode:
                await conn.execute(
                    f'ALTER DATABASE "{name}" SET plan_cache_mode = {self.plan_cache_mode}'
                )
        finally:
            await conn.close()
        base = self.server.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{name}"

    async def urls(self, nodes: Sequence[str]) -> dict[str, str]:
        """A new database for each of ``nodes`` (as :meth:`url`), made side by side:
        a PostgreSQL ``CREATE DATABASE`` mostly waits on the disk.

        The tiers' templates are made first, one after the other: Alembic keeps
        one migration context per process.
        """
        if self.templates:
            for migrations in dict.fromkeys(tier_migrations(n) for n in nodes):
                if migrations is None:
                    continue
                if self.backend == "sqlite":
                    await _sqlite_template(migrations)
                else:
                    await _pg_template(self.server, migrations)
        # Every creation ends before a failure is raised, so that drop_all
        # finds every database that was made.
        made = await asyncio.gather(*(self.url(n) for n in nodes), return_exceptions=True)
        urls: dict[str, str] = {}
        for node, url in zip(nodes, made, strict=True):
            if isinstance(url, BaseException):
                raise url
            urls[node] = url
        return urls

    async def drop_all(self) -> None:
        """Drop every PostgreSQL database created here (SQLite files stay)."""
        if not self.created:
            return

        async def drop(name: str) -> None:
            conn = await asyncpg.connect(self.server, timeout=10)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        # Side by side: a DROP DATABASE mostly waits on the disk. Each is tried;
        # those that failed stay listed, and the first failure is raised.
        names = list(self.created)
        results = await asyncio.gather(*(drop(n) for n in names), return_exceptions=True)
        self.created = [n for n, r in zip(names, results, strict=True) if r is not None]
        for r in results:
            if isinstance(r, BaseException):
                raise r


_NODE_PACKAGES = {"national": "national", "prefecture": "prefecture", "municipality": "municipal"}


def tier_migrations(node: str) -> Path | None:
    """The migrations folder of the tier a node name belongs to (national,
    prefecture-NN, municipality-NNNNNN), or None for any other name."""
    package = _NODE_PACKAGES.get(node.split("-", 1)[0])
    return None if package is None else ROOT / "services" / package / "migrations"


def _digest(migrations: Path) -> str:
    """A digest of a migrations folder: its revisions' names and contents."""
    h = hashlib.sha256()
    for path in sorted(migrations.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_templates: dict[str, Path] = {}


async def _sqlite_template(migrations: Path) -> Path:
    """An SQLite file that ``migrations`` ran on, made once per process."""
    key = f"{migrations.parent.name}-{_digest(migrations)}"
    path = _templates.get(key)
    if path is None or not path.exists():
        # Two tasks that get here at once each build one; either will do.
        folder = Path(tempfile.mkdtemp(prefix="jukinet-templates-"))
        path = folder / f"{key}.db"
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await db.migrate(migrations)
        finally:
            await db.close()
        # One self-contained file (its write-ahead log folded in) to copy.
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")
        _templates[key] = path
    return path


async def _pg_template(server: str, migrations: Path) -> str:
    """The name of a PostgreSQL database that ``migrations`` ran on, made once
    per server: built under another name and renamed when complete, under an
    advisory lock, so that concurrent runs neither build it twice nor copy a
    half-built one. Nobody connects to it after the rename (a template must be
    idle to be copied)."""
    name = f"jk_template_{migrations.parent.name}_{_digest(migrations)}"
    conn = await asyncpg.connect(server, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", name)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                building = f"{name}_building"
                await conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                await conn.execute(f'CREATE DATABASE "{building}"')
                base = server.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
                db = Database(f"{base}/{building}")
                try:
                    await db.migrate(migrations)
                finally:
                    await db.close()
                await conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", name)
    finally:
        await conn.close()
    return name


async def postgres_version(server: str = PG_SERVER) -> str:
    """The server's version; raises (OSError, asyncpg errors) when it does not answer."""
    conn = await asyncpg.connect(server, timeout=5)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# --- waiting for delivery -----------------------------------------------------------

Cursors = Mapping[str, int]
"""Last sequence per municipality (local government code)."""


@dataclass(frozen=True)
class Delivery:
    """How far the national node got: what each municipality recorded, what it applied."""

    want: Cursors
    applied: Cursors

    @property
    def total(self) -> int:
        """Notifications recorded by the municipalities."""
        return sum(self.want.values())

    @property
    def done(self) -> int:
        """Of those, how many the national node applied."""
        return sum(min(self.applied.get(c, 0), s) for c, s in self.want.items())

    @property
    def complete(self) -> bool:
        """Every municipality's last notification is applied."""
        return all(self.applied.get(c, 0) >= s for c, s in self.want.items())

    def behind(self) -> dict[str, str]:
        """``{code: "applied/recorded"}``, for an error message."""
        return {c: f"{self.applied.get(c, 0)}/{s}" for c, s in self.want.items()}


class DeliveryTimeout(RuntimeError):
    """The national node did not catch up in time; ``delivery`` says how far it got."""

    def __init__(self, delivery: Delivery, within: float) -> None:
        super().__init__(
            f"the national node is still behind after {within:g} s: {delivery.behind()}"
        )
        self.delivery = delivery


def municipal_sequences(
    stubs: Mapping[str, municipal_pb2_grpc.MunicipalServiceAsyncStub], timeout: float = 30.0
) -> Callable[[], Awaitable[Cursors]]:
    """Each municipality's last sequence, asked over its operator API."""

    async def read() -> Cursors:
        out: dict[str, int] = {}
        for code, stub in stubs.items():
            status = await stub.GetStatus(
                municipal_pb2.GetMunicipalStatusRequest(), timeout=timeout
            )
            out[code] = status.last_sequence
        return out

    return read


def national_cursors(
    stub: national_pb2_grpc.NationalServiceAsyncStub, timeout: float = 30.0
) -> Callable[[], Awaitable[Cursors]]:
    """What the national node applied per municipality, asked over its operator API."""

    async def read() -> Cursors:
        status = await stub.GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=timeout
        )
        return {c.origin_code: c.last_sequence for c in status.applied}

    return read


async def wait_delivered(
    want: Cursors | Callable[[], Awaitable[Cursors]],
    applied: Callable[[], Awaitable[Cursors]],
    *,
    within: float,
    poll: float = 0.05,
    on_progress: Callable[[Delivery], None] | None = None,
) -> Delivery:
    """Until ``applied`` reaches ``want`` (fixed, or read again at every poll).

    ``on_progress`` sees every reading. Raises :class:`DeliveryTimeout` after
    ``within`` seconds.
    """
    deadline = time.monotonic() + within
    while True:
        wanted = await want() if callable(want) else want
        delivery = Delivery(dict(wanted), dict(await applied()))
        if on_progress is not None:
            on_progress(delivery)
        if delivery.complete:
            return delivery
        if time.monotonic() > deadline:
            raise DeliveryTimeout(delivery, within)
        await asyncio.sleep(poll)


# --- nodes ----------------------------------------------------------------------------


@dataclass
class Node:
    """One node of the local federation."""

    name: str  # certificate name: national, prefecture-31, municipality-312011, gateway
    tier: str  # national | prefecture | municipal | gateway
    code: str  # "national", "31", "312011", "gateway"
    port: int
    metrics_port: int
    database_url: str
    config_path: Path
    log_path: Path
    settings: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def operator(self) -> str:
        """The certificate name a client of this node presents: its operator's (the
        gateway has none: the national operator, who may check its health but
        call nothing else); a municipal node's counter terminal ``desk1``."""
        if self.tier == "gateway":
            return "operator-national-admin"
        if self.tier == "municipal":
            return f"terminal-{self.code}-desk1"
        return f"operator-{self.code}-admin"

    @property
    def service(self) -> str:
        """The gRPC service this node serves: the health check asks for it, so
        that the answer comes from a node of this tier."""
        kind = {"national": "National", "prefecture": "Prefecture", "municipal": "Municipal"}
        return f"jukinet.v1.{kind.get(self.tier, 'Gateway')}Service"

    @property
    def module(self) -> str:
        """The module that runs this node (``python -m``)."""
        return "gateway" if self.tier == "gateway" else f"services.{self.tier}"

    @property
    def label(self) -> str:
        """Readable name: 鳥取市 (312011), 鳥取県 (31), 全国センター (national)."""
        if self.tier == "municipal":
            found = localgov.lookup(self.code)
            return f"{found.name if found else self.code} ({self.code})"
        if self.tier == "prefecture":
            return f"{localgov.prefecture_name(self.code)} ({self.code})"
        if self.tier == "gateway":
            return "agency gateway"
        return "全国センター (national)"

    @property
    def running(self) -> bool:
        """Its process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The process id of its latest start (0 if never started)."""
        return self.process.pid if self.process is not None else 0

    def cpu_seconds(self) -> float:
        """CPU seconds its running process has used (0 when it does not run)."""
        return process_cpu_seconds(self.pid) if self.running else 0.0

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its log, for an error report."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def node_command(node: Node) -> list[str]:
    """The command that runs ``node``; on Linux it stops when this process exits.

    (The kernel signals when the thread that spawned the node ends: nodes are
    started from the caller's event-loop thread, never from a passing one.)
    """
    command = [sys.executable, "-m", node.module, "--config", str(node.config_path)]
    if sys.platform.startswith("linux"):
        command += ["--parent-pid", str(os.getpid())]
    return command


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _signal(node: Node, sig: signal.Signals) -> None:
    if node.process is not None and node.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            node.process.send_signal(sig)


class LocalFederation:
    """National, the prefectures of ``municipalities``, and the municipalities.

    ``settings`` go into the config of every node of a tier (``"municipal"``),
    ``node_settings`` into one node's (``"municipality-312011"``), winning over
    the tier's. ``databases`` defaults to SQLite files in ``<workdir>/data``.
    """

    def __init__(
        self,
        workdir: Path,
        municipalities: Sequence[str],
        *,
        databases: Databases | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        node_settings: Mapping[str, Mapping[str, Any]] | None = None,
        agencies: Sequence[str] = (),
        gateway: bool = False,
    ) -> None:
        self.workdir = workdir
        self.pki_dir = workdir / "pki"
        self.logs = workdir / "logs"
        self.municipality_codes = list(municipalities)
        self.prefecture_codes = sorted({m[:2] for m in municipalities})
        self.agencies = list(agencies)
        self.with_gateway = gateway
        self.databases = databases or Databases("sqlite", workdir / "data")
        self._settings = settings or {}
        self._node_settings = node_settings or {}
        self.nodes: dict[str, Node] = {}
        self.staff = STAFF
        self.softhsm = card.SoftHsm(
            workdir / "softhsm" / "softhsm2.conf", workdir / "softhsm" / "tokens"
        )
        self._tokens: dict[tuple[str, str], str] = {}
        # Operators enrolled by this federation who have not logged in yet.
        self._first_login: set[tuple[str, str]] = set()
        self._client_channels: list[grpc.aio.Channel] = []
        self._cards: concurrent.futures.Future[card.SoftHsm] | None = None

    # -- set-up --------------------------------------------------------------

    async def prepare(self) -> None:
        """Certificates, databases, ports and config files for every node."""
        for d in (self.workdir, self.logs, self.workdir / "data", self.workdir / "config"):
            d.mkdir(parents=True, exist_ok=True)
        pki.issue_federation(
            self.pki_dir,
            pki.FederationSpec(
                municipalities=self.municipality_codes,
                agencies=self.agencies,
                operators=True,
            ),
        )
        await self._add("national", "national", "national", {"directory": str(self.directory_file)})
        national = self.nodes["national"].target
        for p in self.prefecture_codes:
            await self._add(
                f"prefecture-{p}",
                "prefecture",
                p,
                {"prefecture_code": p, "national_target": national},
            )
        for m in self.municipality_codes:
            await self._add(
                f"municipality-{m}",
                "municipal",
                m,
                {
                    "local_government_code": m,
                    "prefecture_target": self.nodes[f"prefecture-{m[:2]}"].target,
                },
            )
        if self.with_gateway:
            await self._add("gateway", "gateway", "gateway", {"national_target": national})
        self.write_directory()
        await self._prepare_counters()

    @property
    def directory_file(self) -> Path:
        """The relay directory file the national node signs (its ``directory`` setting)."""
        return self.workdir / "config" / "directory.toml"

    def write_directory(self) -> None:
        """List every prefecture and municipality at its port (chosen ahead) in the
        directory file; the national node re-reads it when it changes."""
        write_source(
            self.directory_file,
            [
                (identity, node.target, self.pki_dir / f"{node.name}.pem")
                for node in self.nodes.values()
                if node.tier in ("prefecture", "municipal")
                for identity in [
                    Identity.prefecture(node.code)
                    if node.tier == "prefecture"
                    else Identity.municipality(node.code)
                ]
            ],
        )

    async def _prepare_counters(self) -> None:
        """Terminals, operator and resident card CAs and cards of every municipality; its
        staff enrolled."""
        from jukinet.config import MunicipalConfig, load_config
        from services.municipal.operators import enroll_operators

        for code in self.municipality_codes:
            for desk in TERMINALS:
                identity = Identity.terminal(code, desk)
                if not (self.pki_dir / f"{pki.cert_name(identity)}.pem").exists():
                    pki.issue(self.pki_dir, identity, pki.cert_name(identity), pki.NODE_DAYS)
            if not (pki.operator_ca_dir(self.pki_dir, code) / pki.CA_CERT).exists():
                pki.create_operator_ca(self.pki_dir, code)
            # A PKI made before resident cards: the node signs its cards with this CA.
            if not (pki.resident_card_ca_dir(self.pki_dir, code) / pki.CA_CERT).exists():
                pki.create_resident_card_ca(self.pki_dir, code)
        # The cards are made on a thread of their own while the staff is enrolled
        # and the nodes start (the nodes do not need them; the first login waits).
        pool = concurrent.futures.ThreadPoolExecutor(1, "cards")
        self._cards = pool.submit(self._provision_cards)
        pool.shutdown(wait=False)  # the thread ends with the provisioning

        # Before the nodes start: an enrolment appends to the node's operation log.
        # One municipality at a time: Alembic's migration context is one per process.
        for code in self.municipality_codes:
            config = load_config(MunicipalConfig, self.nodes[f"municipality-{code}"].config_path)
            await enroll_operators(
                config, [(m.operator_id, INITIAL_PASSWORD, m.roles) for m in self.staff]
            )
            self._first_login.update((code, m.operator_id) for m in self.staff)

    async def cards_ready(self) -> card.SoftHsm:
        """The SoftHSM2 reader with every staff member's card, once provisioned."""
        if self._cards is not None:
            future, self._cards = self._cards, None
            self.softhsm = await asyncio.wrap_future(future)
        return self.softhsm

    def _provision_cards(self) -> card.SoftHsm:
        hsm = card.SoftHsm.create(self.workdir / "softhsm")
        for code in self.municipality_codes:
            for member in self.staff:
                hsm.init_token(card_label(code, member.operator_id), CARD_SO_PIN, CARD_PIN)
        hsm.activate()
        lib = card.load_module()
        for code in self.municipality_codes:
            for member in self.staff:
                operator = Identity.operator(code, member.operator_id)
                card.provision_card(
                    lib,
                    CARD_PIN,
                    functools.partial(self._certify, operator),
                    label=card_label(code, member.operator_id),
                )
        return hsm

    async def blank_resident_card(self, label: str) -> card.SoftHsm:
        """A blank resident card labelled ``label`` in the federation's card reader,
        initialised with :data:`RESIDENT_CARD_PIN` (its municipality then issues it)."""
        hsm = await self.cards_ready()
        await asyncio.to_thread(hsm.init_token, label, RESIDENT_CARD_SO_PIN, RESIDENT_CARD_PIN)
        hsm.activate()
        return hsm

    def _certify(self, operator: Identity, key: Any) -> Any:
        return pki.issue_card_certificate(self.pki_dir, operator, key, force=True)

    def member(self, operator_id: str) -> Staff:
        """The staff member ``operator_id``."""
        for member in self.staff:
            if member.operator_id == operator_id:
                return member
        raise KeyError(f"no operator {operator_id!r} in this federation's staff")

    def terminal(self, code: str, operator_id: str = DEFAULT_OPERATOR) -> str:
        """The certificate name of the terminal ``operator_id`` works at in ``code``."""
        return f"terminal-{code}-{self.member(operator_id).terminal}"

    async def session(self, code: str, operator_id: str = DEFAULT_OPERATOR) -> str:
        """The session token of ``operator_id`` at municipality ``code``, logged in
        on first use with the card and the password (changed at that first login)."""
        key = (code, operator_id)
        if key in self._tokens:
            return self._tokens[key]
        node = self.nodes[f"municipality-{code}"]
        channel = secure_channel(node.target, tls_files(self.pki_dir, self.terminal(*key)))
        try:
            (await self.cards_ready()).activate()
            with card.open_card(
                card.load_module(), CARD_PIN, label=card_label(code, operator_id)
            ) as operator_card:
                # The first login changes the enrolled password; a later one (or
                # one after a restart of the caller) uses the changed one.
                first = key in self._first_login
                try:
                    answer = await self._log_in(channel, operator_card, first=first)
                except grpc.aio.AioRpcError as exc:
                    if error_metadata(exc).get("jukinet-reason") not in (
                        "wrong-password",
                        "password-expired",
                    ):
                        raise
                    answer = await self._log_in(channel, operator_card, first=not first)
                self._first_login.discard(key)
        finally:
            await channel.close(grace=None)
        self._tokens[key] = answer.session_token
        return answer.session_token

    @staticmethod
    async def _log_in(
        channel: grpc.aio.Channel, operator_card: card.Card, *, first: bool
    ) -> operator_pb2.LoginResponse:
        if first:
            return await log_in(channel, operator_card, INITIAL_PASSWORD, new_password=PASSWORD)
        return await log_in(channel, operator_card, PASSWORD)

    async def log_in_counters(self) -> None:
        """Log ``counter`` in at every municipality (what :meth:`channel` uses)."""
        for code in self.municipality_codes:
            await self.session(code)

    async def counter(
        self, code: str, operator_id: str = DEFAULT_OPERATOR
    ) -> tuple[municipal_pb2_grpc.MunicipalServiceStub, operator_pb2_grpc.OperatorServiceStub]:
        """Stubs of both services of municipality ``code`` in ``operator_id``'s session
        (their channel is closed with the federation's other client channels)."""
        token = await self.session(code, operator_id)
        node = self.nodes[f"municipality-{code}"]
        channel = secure_channel(
            node.target, tls_files(self.pki_dir, self.terminal(code, operator_id)), session=token
        )
        self._client_channels.append(channel)
        return (
            municipal_pb2_grpc.MunicipalServiceStub(channel),
            operator_pb2_grpc.OperatorServiceStub(channel),
        )

    async def _add(self, name: str, tier: str, code: str, settings: dict[str, Any]) -> None:
        node = Node(
            name=name,
            tier=tier,
            code=code,
            port=free_port(),
            metrics_port=free_port(),
            # The gateway keeps no data.
            database_url="" if tier == "gateway" else await self.databases.url(name),
            config_path=self.workdir / "config" / f"{name}.toml",
            log_path=self.logs / f"{name}.log",
            settings={
                **settings,
                **(MUNICIPAL_SETTINGS if tier == "municipal" else {}),
                **self._settings.get(tier, {}),
                **self._node_settings.get(name, {}),
            },
        )
        lines = [
            f"listen = {_toml_value(node.target)}",
            f"metrics_listen = {_toml_value(f'127.0.0.1:{node.metrics_port}')}",
            *([f"database_url = {_toml_value(node.database_url)}"] if node.database_url else []),
            *(f"{k} = {_toml_value(v)}" for k, v in node.settings.items()),
            "",
            "[tls]",
            f"ca = {_toml_value(str(self.pki_dir / 'ca.pem'))}",
            f"cert = {_toml_value(str(self.pki_dir / (name + '.pem')))}",
            f"key = {_toml_value(str(self.pki_dir / (name + '.key')))}",
            f"crl = {_toml_value(str(self.pki_dir / 'crl.pem'))}",
            "",
        ]
        node.config_path.write_text("\n".join(lines), encoding="utf-8")
        self.nodes[name] = node

    def names(self, tier: str) -> list[str]:
        """The names of every node of ``tier``, in start order."""
        return [n.name for n in self.nodes.values() if n.tier == tier]

    # -- processes -----------------------------------------------------------

    def start(self, name: str) -> None:
        """Start (or restart) one node's process."""
        node = self.nodes[name]
        if node.running:
            raise RuntimeError(f"{name} is already running")
        log = open(node.log_path, "ab")  # noqa: SIM115 - owned by the child
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        node.process = subprocess.Popen(
            node_command(node),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        log.close()

    async def wait_ready(self, name: str, within: float = 30.0) -> None:
        """Until the node answers a health check of its service over mTLS (or
        its process died)."""
        node = self.nodes[name]
        deadline = time.monotonic() + within
        channel = secure_channel(node.target, tls_files(self.pki_dir, node.operator))
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if node.process is not None and node.process.poll() is not None:
                    raise NodeFailed(
                        f"{name} exited with status {node.process.returncode}:\n" + node.log_tail()
                    )
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=node.service), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise NodeFailed(f"{name} not ready after {within:g} s:\n" + node.log_tail())
                await asyncio.sleep(0.1)
        finally:
            await channel.close(grace=None)

    async def start_nodes(self, names: Sequence[str], within: float = 30.0) -> None:
        """Start (or restart) these nodes together; return once each is ready."""
        for name in names:
            self.start(name)
        await asyncio.gather(*(self.wait_ready(name, within) for name in names))

    async def start_all(
        self, on_ready: Callable[[Node], None] | None = None, within: float = 30.0
    ) -> None:
        """Start every node, upper tiers first, each once the one above is ready.

        ``on_ready`` is called with each node once it answers its health check.
        """
        upper = self.names("prefecture") + self.names("gateway")
        for group in (["national"], upper, self.names("municipal")):
            await self.start_nodes(group, within)
            for name in group:
                if on_ready is not None:
                    on_ready(self.nodes[name])
        await self.log_in_counters()

    def pause(self, *names: str) -> None:
        """SIGSTOP: the nodes hold their sockets but answer nothing until resumed."""
        for name in names:
            _signal(self.nodes[name], signal.SIGSTOP)

    def resume(self, *names: str) -> None:
        """SIGCONT to paused nodes."""
        for name in names:
            _signal(self.nodes[name], signal.SIGCONT)

    def kill(self, name: str) -> None:
        """SIGKILL: the node gets no chance to clean up."""
        node = self.nodes[name]
        if node.process is not None and node.running:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=10)

    def stop(self, *names: str, grace: float = 10.0) -> None:
        """SIGTERM to these nodes at once (paused ones are resumed first, or they
        could not act on it), then SIGKILL to those not gone within ``grace`` seconds."""
        running = [self.nodes[n] for n in names if self.nodes[n].running]
        for node in running:
            _signal(node, signal.SIGCONT)
            _signal(node, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    node.process.kill()
                node.process.wait(timeout=10)

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every node (lower tiers signalled first), as :meth:`stop`."""
        self.stop(*reversed(list(self.nodes)), grace=grace)

    async def close(self, grace: float = 10.0) -> None:
        """Close the client channels, stop every node, then drop the PostgreSQL
        databases made for them."""
        for channel in self._client_channels:
            await channel.close(grace=None)
        self._client_channels.clear()
        self.stop_all(grace)
        await self.databases.drop_all()

    # -- clients -------------------------------------------------------------

    def channel(self, name: str, cert: str | None = None) -> grpc.aio.Channel:
        """An mTLS channel to node ``name``, by default as its operator: at a
        municipal node, ``counter`` in its session at ``desk1`` (once logged in:
        :meth:`start_all` does it)."""
        node = self.nodes[name]
        token = None
        if node.tier == "municipal" and cert is None:
            token = self._tokens.get((node.code, DEFAULT_OPERATOR))
        return secure_channel(
            node.target, tls_files(self.pki_dir, cert or node.operator), session=token
        )

    async def wait_delivered(self, within: float = 30.0) -> Delivery:
        """Until the national node has applied every municipal notification."""
        channels = [self.channel(name) for name in self.names("municipal")]
        national = self.channel("national")
        try:
            municipal = {
                code: municipal_pb2_grpc.MunicipalServiceStub(ch)
                for code, ch in zip(self.municipality_codes, channels, strict=True)
            }
            return await wait_delivered(
                municipal_sequences(municipal),
                national_cursors(national_pb2_grpc.NationalServiceStub(national)),
                within=within,
            )
        finally:
            for ch in [*channels, national]:
                await ch.close(grace=None)
