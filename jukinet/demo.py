"""``jukinet demo``: a whole federation on this machine, a day of life, and proof
that every tier agrees with the municipal registers.

::

    jukinet demo [--population 3000] [--workdir var/demo] [--seed 1] [--keep-running]

What it does, in order:

1. creates a private PKI in the work folder (a certificate per node and an
   ``admin`` operator per organisation);
2. writes a TOML config per node (own SQLite file, own certificate, free ports
   on 127.0.0.1 for gRPC and Prometheus) and starts the national node, the
   prefectures 31 (鳥取県) and 13 (東京都) and the municipalities 鳥取市 312011,
   米子市 312029 and 千代田区 131016, each as its own process
   (``python -m services.<tier> --config FILE``, output in ``logs/<node>.log``),
   waiting for each to answer a gRPC health check over mutual TLS;
3. loads a realistic population (:mod:`jukinet.population`, households sharing
   an address) through the bulk import (:func:`jukinet.importer.import_csv`);
4. runs a day of life through the operator API: births into existing
   households, deaths, a household's relocation, a name change on marriage
   (with 旧氏), a resident-code change on request, moves within a prefecture
   and across prefectures (move-out at the old municipality, move-in with the
   same resident code at the new one) and a move-in from abroad;
5. waits until the national node has applied every municipal notification,
   prints what each tier holds and one moved resident's history as the
   national node holds it;
6. reconciles: every municipal register entry must match the records of its
   prefecture and of the national node. Prints "all tiers agree with the
   municipal registers", or every difference and exits 1.

Every node process is stopped on the way out, on success, error or Ctrl-C.
The work folder is wiped at the start; a folder that was not made by the
demo is never wiped (the demo refuses to use it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import grpc
from faker.providers.person.ja_JP import Provider as _JaPersonProvider
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tqdm import tqdm

import services
from jukinet import localgov
from jukinet.client import connect, describe_error
from jukinet.errors import ConfigError
from jukinet.importer import CsvFormatError, ImportSummary, import_csv, write_sample
from jukinet.pki import FederationSpec, issue_federation
from jukinet.population import NAME_SEPARATOR, PopulationGenerator
from jukinet.v1 import (
    common_pb2,
    delivery_pb2,
    municipal_pb2,
    municipal_pb2_grpc,
    national_pb2_grpc,
    prefecture_pb2_grpc,
)
from jukinet.validation import today

__all__ = [
    "MUNICIPALITIES",
    "REASON_JA",
    "DemoError",
    "Difference",
    "Node",
    "reconcile",
    "register_cli",
    "run_demo",
]

TOTTORI, YONAGO, CHIYODA = "312011", "312029", "131016"
MUNICIPALITIES: tuple[str, ...] = (TOTTORI, YONAGO, CHIYODA)
"""The municipalities the demo runs: 鳥取市, 米子市 (鳥取県) and 千代田区 (東京都)."""

# How the population is split, roughly as the three registers compare in size
# (about 180,000, 146,000 and 68,000 residents).
_SHARE: Mapping[str, float] = {TOTTORI: 0.46, YONAGO: 0.37, CHIYODA: 0.17}

REASON_JA: Mapping[int, str] = {
    common_pb2.CHANGE_REASON_MOVE_IN: "転入",
    common_pb2.CHANGE_REASON_SPECIAL_MOVE_IN: "特例転入",
    common_pb2.CHANGE_REASON_BIRTH: "出生",
    common_pb2.CHANGE_REASON_MOVE_IN_FROM_ABROAD: "国外からの転入",
    common_pb2.CHANGE_REASON_EX_OFFICIO_ENTRY: "職権記載",
    common_pb2.CHANGE_REASON_MOVE_OUT: "転出",
    common_pb2.CHANGE_REASON_MOVE_ABROAD: "国外転出",
    common_pb2.CHANGE_REASON_DEATH: "死亡",
    common_pb2.CHANGE_REASON_DECLARED_MISSING: "失踪宣告",
    common_pb2.CHANGE_REASON_EX_OFFICIO_REMOVAL: "職権消除",
    common_pb2.CHANGE_REASON_RELOCATION: "転居",
    common_pb2.CHANGE_REASON_NAME_CHANGE: "氏名変更",
    common_pb2.CHANGE_REASON_ADDRESS_RENAMED: "住居表示変更",
    common_pb2.CHANGE_REASON_CODE_CHANGE: "住民票コード変更",
    common_pb2.CHANGE_REASON_EX_OFFICIO_AMENDMENT: "職権修正",
}
"""The reason of a change (異動事由) as a register writes it."""

_MARKER = ".jukinet-demo"
_READY_TIMEOUT = 60.0
_DELIVERY_TIMEOUT = 120.0
_RPC_TIMEOUT = 30.0
_STOP_GRACE = 5.0

T = TypeVar("T")


class DemoError(Exception):
    """The demo cannot go on; one line says why."""


def municipality_name(code: str) -> str:
    """鳥取市 for 312011; the code itself when unknown."""
    found = localgov.lookup(code)
    return found.name if found is not None else code


# --- the nodes ----------------------------------------------------------------


@dataclass
class Node:
    """One node process of the demo federation."""

    name: str  # national, prefecture-31, municipality-312011
    tier: str  # national, prefecture, municipal
    code: str  # "", "31", "312011"
    port: int
    metrics_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = None

    @property
    def target(self) -> str:
        """host:port of its gRPC server."""
        return f"127.0.0.1:{self.port}"

    @property
    def operator(self) -> str:
        """Certificate name of the organisation's admin operator."""
        return f"operator-{self.code or 'national'}-admin"

    @property
    def config_path(self) -> Path:
        """Its TOML config file."""
        return self.workdir / "config" / f"{self.name}.toml"

    @property
    def log_path(self) -> Path:
        """Where its stdout and stderr go."""
        return self.workdir / "logs" / f"{self.name}.log"

    @property
    def database_path(self) -> Path:
        """Its SQLite database file."""
        return self.workdir / "data" / f"{self.name}.db"

    @property
    def label(self) -> str:
        """Readable name: 鳥取市 (312011), 鳥取県 (31), national."""
        if self.tier == "municipal":
            return f"{municipality_name(self.code)} ({self.code})"
        if self.tier == "prefecture":
            return f"{localgov.prefecture_name(self.code)} ({self.code})"
        return "全国センター (national)"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its log, for an error report."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _toml(value: object) -> str:
    # JSON strings and integers are valid TOML basic strings and integers.
    return json.dumps(value, ensure_ascii=False)


def write_config(node: Node, pki: Path, upstream: Node | None) -> None:
    """Write ``node``'s TOML config (see :mod:`jukinet.config` for the keys)."""
    lines = [
        f"listen = {_toml(node.target)}",
        f"database_url = {_toml('sqlite+aiosqlite:///' + str(node.database_path))}",
        f"metrics_listen = {_toml(f'127.0.0.1:{node.metrics_port}')}",
        'log_level = "INFO"',
    ]
    if node.tier == "prefecture":
        assert upstream is not None
        lines += [
            f"prefecture_code = {_toml(node.code)}",
            f"national_target = {_toml(upstream.target)}",
        ]
    elif node.tier == "municipal":
        assert upstream is not None
        lines += [
            f"local_government_code = {_toml(node.code)}",
            f"prefecture_target = {_toml(upstream.target)}",
        ]
    cert = node.name
    lines += [
        "",
        "[tls]",
        f"ca = {_toml(str(pki / 'ca.pem'))}",
        f"cert = {_toml(str(pki / (cert + '.pem')))}",
        f"key = {_toml(str(pki / (cert + '.key')))}",
        f"crl = {_toml(str(pki / 'crl.pem'))}",
    ]
    node.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the node gets SIGTERM if the demo dies without stopping it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Starts node processes and makes sure every one of them is stopped."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[Node] = []

    def start(self, node: Node) -> None:
        """Start ``node`` (``python -m services.<tier> --config FILE``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
        # The nodes import the services package from where this one comes from.
        root = str(Path(next(iter(services.__path__))).resolve().parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        log = node.log_path.open("ab")
        node._log_file = log
        self.nodes.append(node)
        node.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{node.tier}", "--config", str(node.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
            # Its own session: Ctrl-C reaches the demo, which stops the nodes
            # in order, instead of every process at once.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def stop_all(self, grace: float = _STOP_GRACE) -> None:
        """SIGTERM every node, wait up to ``grace`` seconds, then SIGKILL."""
        running = [n for n in self.nodes if n.process is not None and n.process.poll() is None]
        for node in running:
            assert node.process is not None
            with contextlib.suppress(ProcessLookupError):
                node.process.terminate()
        deadline = time.monotonic() + grace
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    node.process.kill()
                node.process.wait()
        for node in self.nodes:
            if node._log_file is not None:
                node._log_file.close()
                node._log_file = None


async def wait_ready(node: Node, pki: Path, within: float = _READY_TIMEOUT) -> None:
    """Until ``node`` prints its "ready on port" line and answers a health check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        assert node.process is not None
        code = node.process.poll()
        if code is not None:
            raise DemoError(f"{node.name} exited with status {code}:\n{node.log_tail()}")
        with contextlib.suppress(OSError):
            if "ready on port" in node.log_path.read_text(encoding="utf-8", errors="replace"):
                break
        if loop.time() > deadline:
            raise DemoError(f"{node.name} not ready after {within:g} s:\n{node.log_tail()}")
        await asyncio.sleep(0.05)
    channel = connect(node.target, pki, node.operator)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=max(1.0, deadline - loop.time())
        )
    except grpc.aio.AioRpcError as exc:
        raise DemoError(f"{node.name}: health check failed: {describe_error(exc)}") from None
    finally:
        await channel.close(None)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise DemoError(f"{node.name}: health check says {response.status}")


def plan_nodes(workdir: Path) -> list[Node]:
    """The six nodes with fresh free ports, national first, municipalities last."""
    ports = free_ports(12)
    specs = [
        ("national", "national", ""),
        ("prefecture-31", "prefecture", "31"),
        ("prefecture-13", "prefecture", "13"),
        *((f"municipality-{c}", "municipal", c) for c in MUNICIPALITIES),
    ]
    return [
        Node(name, tier, code, ports[2 * i], ports[2 * i + 1], workdir)
        for i, (name, tier, code) in enumerate(specs)
    ]


# --- channels to the running federation -----------------------------------------


class Operators:
    """Operator channels (the admin of each organisation) to the demo's nodes."""

    def __init__(self, nodes: Sequence[Node], pki: Path) -> None:
        self._channels: list[grpc.aio.Channel] = []
        self._by_code = {n.code: n for n in nodes}
        self.pki = pki
        self.municipal = {
            code: municipal_pb2_grpc.MunicipalServiceStub(self.channel(code))
            for code in MUNICIPALITIES
        }
        self.prefecture = {
            code: prefecture_pb2_grpc.PrefectureServiceStub(self.channel(code))
            for code in ("31", "13")
        }
        self.national = national_pb2_grpc.NationalServiceStub(self.channel(""))

    def channel(self, code: str) -> grpc.aio.Channel:
        """A new channel to the node of ``code`` ("" for national) as its admin."""
        node = self._by_code[code]
        ch = connect(node.target, self.pki, node.operator)
        self._channels.append(ch)
        return ch

    async def close(self) -> None:
        """Close every channel opened here."""
        for ch in self._channels:
            await ch.close(None)


async def export_register(
    stub: municipal_pb2_grpc.MunicipalServiceStub,
) -> list[municipal_pb2.Resident]:
    """Every entry of a municipal register (active and removed)."""
    out: list[municipal_pb2.Resident] = []
    # The stubs miss that a grpc.aio stream call is async-iterable.
    pages: AsyncIterator[municipal_pb2.ExportResidentsResponse] = cast(
        Any,
        stub.ExportResidents(
            municipal_pb2.ExportResidentsRequest(page_size=5000), timeout=_RPC_TIMEOUT
        ),
    )
    async for page in pages:
        out.extend(page.residents)
    return out


async def export_holdings(stub: Any) -> list[delivery_pb2.IdentityState]:
    """Every identity record an upper tier holds."""
    out: list[delivery_pb2.IdentityState] = []
    async for page in stub.ExportIdentities(
        delivery_pb2.ExportIdentitiesRequest(page_size=5000), timeout=_RPC_TIMEOUT
    ):
        out.extend(page.identities)
    return out


# --- reconciliation -------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One way a tier disagrees with the municipal registers."""

    tier: str
    resident_code: str
    what: str

    def describe(self) -> str:
        """One line."""
        return f"{self.tier}: {self.resident_code}: {self.what}"


_FIELDS = ("name", "name_kana", "former_surname", "alias", "birth_date", "sex", "address")
_STATUS = {
    municipal_pb2.RESIDENT_STATUS_ACTIVE: common_pb2.RECORD_STATUS_ACTIVE,
    municipal_pb2.RESIDENT_STATUS_REMOVED: common_pb2.RECORD_STATUS_REMOVED,
}
_STATUS_NAME = {
    common_pb2.RECORD_STATUS_ACTIVE: "active",
    common_pb2.RECORD_STATUS_REMOVED: "removed",
    common_pb2.RECORD_STATUS_SUPERSEDED: "superseded",
}


def _compare(
    tier: str, entry: municipal_pb2.Resident, held: delivery_pb2.IdentityState
) -> list[Difference]:
    out = []
    code = entry.resident_code
    want_status = _STATUS.get(entry.status, common_pb2.RECORD_STATUS_UNSPECIFIED)
    if held.status != want_status:
        out.append(
            Difference(
                tier,
                code,
                f"status {_STATUS_NAME.get(held.status, held.status)}, but "
                f"{_STATUS_NAME.get(want_status, want_status)} at "
                f"{municipality_name(entry.local_government_code)}",
            )
        )
    if held.record.local_government_code != entry.local_government_code:
        out.append(
            Difference(
                tier,
                code,
                f"held for {held.record.local_government_code}, registered at "
                f"{entry.local_government_code}",
            )
        )
    for name in _FIELDS:
        mine, theirs = getattr(entry.person, name), getattr(held.record, name)
        if mine != theirs:
            out.append(
                Difference(
                    tier,
                    code,
                    f"{name} is {theirs!r}, {municipality_name(entry.local_government_code)} "
                    f"has {mine!r}",
                )
            )
    return out


def reconcile(
    registers: Mapping[str, Sequence[municipal_pb2.Resident]],
    tiers: Mapping[str, tuple[Iterable[str], Sequence[delivery_pb2.IdentityState]]],
) -> list[Difference]:
    """Every way the upper tiers disagree with the municipal registers.

    ``registers``: each municipality's entries (ExportResidents). ``tiers``:
    per tier name, the municipalities it covers and the records it holds
    (ExportIdentities). For each resident code in the covered registers:

    * active in exactly one municipality: the tier holds it ACTIVE for that
      municipality with the same details (a resident who moved away is
      REMOVED at the old municipality, ACTIVE at the new one);
    * active nowhere: the tier holds it REMOVED, for one of the municipalities
      that removed it, with that municipality's details;
    * a record the tier holds beyond those must be a code replaced by a code
      change (SUPERSEDED) whose replacement is in the registers.
    """
    out: list[Difference] = []
    for tier, (scope, held_list) in tiers.items():
        covered = set(scope)
        entries: dict[str, list[municipal_pb2.Resident]] = {}
        for lg, residents in registers.items():
            if lg in covered:
                for r in residents:
                    entries.setdefault(r.resident_code, []).append(r)
        held = {h.record.resident_code: h for h in held_list}
        for code, found in sorted(entries.items()):
            h = held.get(code)
            if h is None:
                where = ", ".join(municipality_name(r.local_government_code) for r in found)
                out.append(Difference(tier, code, f"missing (registered at {where})"))
                continue
            active = [r for r in found if r.status == municipal_pb2.RESIDENT_STATUS_ACTIVE]
            if len(active) > 1:
                where = ", ".join(municipality_name(r.local_government_code) for r in active)
                out.append(Difference(tier, code, f"active in several registers: {where}"))
                continue
            if active:
                out.extend(_compare(tier, active[0], h))
                continue
            same_place = [
                r for r in found if r.local_government_code == h.record.local_government_code
            ]
            out.extend(_compare(tier, same_place[0] if same_place else found[0], h))
        for code, h in sorted(held.items()):
            if code in entries:
                continue
            replacement = h.replaced_by
            seen = {code}
            while replacement and replacement not in entries and replacement not in seen:
                seen.add(replacement)
                nxt = held.get(replacement)
                replacement = nxt.replaced_by if nxt is not None else ""
            if h.status == common_pb2.RECORD_STATUS_SUPERSEDED and replacement in entries:
                continue
            out.append(
                Difference(
                    tier,
                    code,
                    f"held ({_STATUS_NAME.get(h.status, h.status)}, "
                    f"{municipality_name(h.record.local_government_code)}) but in no register",
                )
            )
    return out


# --- a day of life ----------------------------------------------------------------


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (at least one space)."""
    return text + " " * max(1, width - display_width(text))


def _age(birth_date: str, on: dt.date) -> int:
    born = dt.date.fromisoformat(birth_date)
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _split_name(name: str) -> tuple[str, str]:
    for sep in (NAME_SEPARATOR, " "):
        if sep in name:
            surname, given = name.split(sep, 1)
            return surname, given
    return name, ""


def _choose(rng: random.Random, what: str, *pools: Sequence[T]) -> T:
    """A random item of the first pool that has any (the later pools are fallbacks)."""
    for pool in pools:
        if pool:
            return rng.choice(pool)
    raise DemoError(f"the population is too small: no {what} to pick; raise --population")


@dataclass
class DayOfLife:
    """What the day changed, for the report."""

    moved_resident: str = ""
    lines: list[str] = field(default_factory=list)


class _Register:
    """The active entries of one municipality, grouped by household."""

    def __init__(self, residents: Iterable[municipal_pb2.Resident]) -> None:
        self.households: dict[str, list[municipal_pb2.Resident]] = {}
        for r in residents:
            if r.status == municipal_pb2.RESIDENT_STATUS_ACTIVE:
                self.households.setdefault(r.household_id, []).append(r)

    def people(
        self, used: set[str], keep: Callable[[municipal_pb2.Resident], bool]
    ) -> list[municipal_pb2.Resident]:
        return [
            r
            for members in self.households.values()
            for r in members
            if r.resident_code not in used and keep(r)
        ]


async def day_of_life(ops: Operators, seed: int, out: IO[str]) -> DayOfLife:
    """Births, deaths, a relocation, a marriage, a code change, moves, an arrival."""
    rng = random.Random(f"jukinet.demo/{seed}")
    d = today()
    day = DayOfLife()
    m = ops.municipal
    reg = {code: _Register(await export_register(m[code])) for code in MUNICIPALITIES}
    used: set[str] = set()
    t = _RPC_TIMEOUT

    def say(reason: str, code: str, text: str) -> None:
        line = f"  {pad(reason, 18)}{pad(municipality_name(code), 10)}{text}"
        day.lines.append(line)
        print(line, file=out, flush=True)

    def age(r: municipal_pb2.Resident) -> int:
        return _age(r.person.birth_date, d)

    def female(r: municipal_pb2.Resident) -> bool:
        return r.person.sex == common_pb2.SEX_FEMALE

    def fresh_address(code: str, salt: int) -> str:
        return next(PopulationGenerator(seed * 7919 + salt).people(code, 1)).address

    # 出生: two babies, each into the household of a mother of age.
    for code, back in ((TOTTORI, 3), (YONAGO, 6)):
        mother = _choose(
            rng,
            "mother",
            reg[code].people(used, lambda r: female(r) and 22 <= age(r) <= 42),
            reg[code].people(used, lambda r: female(r) and 16 <= age(r) <= 55),
            reg[code].people(used, lambda r: age(r) >= 16),
        )
        used.add(mother.resident_code)
        sex = rng.choice((common_pb2.SEX_MALE, common_pb2.SEX_FEMALE))
        pairs = (
            _JaPersonProvider.first_name_male_pairs
            if sex == common_pb2.SEX_MALE
            else _JaPersonProvider.first_name_female_pairs
        )
        given, given_kana, _ = rng.choice(pairs)
        surname, _ = _split_name(mother.person.name)
        surname_kana, _ = _split_name(mother.person.name_kana)
        born = await m[code].RegisterBirth(
            municipal_pb2.RegisterBirthRequest(
                person=municipal_pb2.PersonDetails(
                    name=f"{surname}{NAME_SEPARATOR}{given}",
                    name_kana=f"{surname_kana}{NAME_SEPARATOR}{given_kana}" if surname_kana else "",
                    birth_date=(d - dt.timedelta(days=back)).isoformat(),
                    sex=sex,
                    address=mother.person.address,
                ),
                household_id=mother.household_id,
            ),
            timeout=t,
        )
        r = born.resident
        say(
            "出生 birth",
            code,
            f"{r.person.name}, born {r.person.birth_date} into the household of "
            f"{mother.person.name} → new code {r.resident_code}",
        )

    # 死亡: two of the oldest residents.
    for code in (YONAGO, CHIYODA):
        elder = _choose(
            rng,
            "elderly resident",
            reg[code].people(used, lambda r: age(r) >= 85),
            sorted(reg[code].people(used, lambda r: True), key=lambda r: r.person.birth_date)[:3],
        )
        used.add(elder.resident_code)
        died = (d - dt.timedelta(days=1)).isoformat()
        await m[code].RecordDeath(
            municipal_pb2.RecordDeathRequest(resident_code=elder.resident_code, date_of_death=died),
            timeout=t,
        )
        say("死亡 death", code, f"{elder.person.name} (born {elder.person.birth_date}) on {died}")

    # 転居: a whole household moves house within 鳥取市.
    households = list(reg[TOTTORI].households.values())
    family = _choose(
        rng,
        "household",
        [h for h in households if len(h) >= 3 and not used & {r.resident_code for r in h}],
        [h for h in households if len(h) >= 2 and not used & {r.resident_code for r in h}],
        [h for h in households if not used & {r.resident_code for r in h}],
    )
    used.update(r.resident_code for r in family)
    new_address = fresh_address(TOTTORI, 1)
    moved = await m[TOTTORI].Relocate(
        municipal_pb2.RelocateRequest(
            resident_code=family[0].resident_code,
            new_address=new_address,
            effective_date=(d - dt.timedelta(days=2)).isoformat(),
            whole_household=True,
        ),
        timeout=t,
    )
    say(
        "転居 relocation",
        TOTTORI,
        f"household of {len(moved.residents)} ({family[0].person.name} ...): "
        f"{family[0].person.address} → {new_address}",
    )

    # 氏名変更: a marriage in 米子市; she takes her husband's surname and keeps 旧氏.
    bride = _choose(
        rng,
        "resident to marry",
        reg[YONAGO].people(
            used, lambda r: female(r) and 24 <= age(r) <= 40 and not r.person.former_surname
        ),
        reg[YONAGO].people(used, lambda r: age(r) >= 18 and not r.person.former_surname),
    )
    used.add(bride.resident_code)
    old_surname, given = _split_name(bride.person.name)
    _, given_kana = _split_name(bride.person.name_kana)
    new_surname, new_kana, _ = rng.choice(
        [p for p in _JaPersonProvider.last_name_pairs if p[0] != old_surname]
    )
    renamed = await m[YONAGO].ChangeName(
        municipal_pb2.ChangeNameRequest(
            resident_code=bride.resident_code,
            name=f"{new_surname}{NAME_SEPARATOR}{given}",
            name_kana=f"{new_kana}{NAME_SEPARATOR}{given_kana}" if given_kana else "",
            former_surname=old_surname,
            effective_date=d.isoformat(),
        ),
        timeout=t,
    )
    say(
        "氏名変更 marriage",
        YONAGO,
        f"{bride.person.name} → {renamed.resident.person.name} "
        f"(旧氏 {renamed.resident.person.former_surname} kept on the record)",
    )

    # 住民票コード変更: a resident of 千代田区 asks for a new code.
    asker = _choose(
        rng,
        "resident",
        reg[CHIYODA].people(used, lambda r: age(r) >= 18),
        reg[CHIYODA].people(used, lambda r: True),
    )
    used.add(asker.resident_code)
    changed = await m[CHIYODA].ChangeResidentCode(
        municipal_pb2.ChangeResidentCodeRequest(
            resident_code=asker.resident_code, ex_officio=False, effective_date=d.isoformat()
        ),
        timeout=t,
    )
    say(
        "住民票コード変更",
        CHIYODA,
        f"{asker.person.name} asked for a new code: {changed.previous_resident_code} → "
        f"{changed.resident.resident_code}",
    )

    # 転出/転入: one person moves 鳥取市 → 米子市, later 米子市 → 千代田区.
    mover = _choose(
        rng,
        "resident to move",
        [
            h[0]
            for h in households
            if len(h) == 1 and 20 <= age(h[0]) <= 60 and h[0].resident_code not in used
        ],
        reg[TOTTORI].people(used, lambda r: age(r) >= 18),
        reg[TOTTORI].people(used, lambda r: True),
    )
    used.add(mover.resident_code)
    code = mover.resident_code
    day.moved_resident = code
    person = mover.person
    for old, new, back in ((TOTTORI, YONAGO, 12), (YONAGO, CHIYODA, 2)):
        when = (d - dt.timedelta(days=back)).isoformat()
        await m[old].MoveOut(
            municipal_pb2.MoveOutRequest(
                resident_code=code, destination_local_government_code=new, effective_date=when
            ),
            timeout=t,
        )
        moved_in = await m[new].MoveIn(
            municipal_pb2.MoveInRequest(
                person=municipal_pb2.PersonDetails(
                    name=person.name,
                    name_kana=person.name_kana,
                    former_surname=person.former_surname,
                    alias=person.alias,
                    birth_date=person.birth_date,
                    sex=person.sex,
                    address=fresh_address(new, back),
                ),
                origin=municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC,
                resident_code=code,
                previous_local_government_code=old,
                effective_date=when,
            ),
            timeout=t,
        )
        across = "same prefecture" if old[:2] == new[:2] else "another prefecture"
        say(
            "転出 move out",
            old,
            f"{person.name} ({code}) to {municipality_name(new)} ({across}) on {when}",
        )
        say(
            "転入 move in",
            new,
            f"{person.name} ({code}) from {municipality_name(old)}, same code, "
            f"{moved_in.resident.person.address}",
        )

    # 国外からの転入: a foreign resident arrives in 千代田区, with a registered 通称.
    arrival = await m[CHIYODA].MoveIn(
        municipal_pb2.MoveInRequest(
            person=municipal_pb2.PersonDetails(
                name="WANG XIAOMING",
                name_kana="ワン\u3000シャオミン",
                alias="王\u3000小明",
                birth_date="1991-05-03",
                sex=common_pb2.SEX_MALE,
                address=fresh_address(CHIYODA, 99),
            ),
            origin=municipal_pb2.MOVE_IN_ORIGIN_ABROAD,
            effective_date=d.isoformat(),
        ),
        timeout=t,
    )
    a = arrival.resident
    say(
        "国外からの転入",
        CHIYODA,
        f"{a.person.name} (通称 {a.person.alias}) from abroad → new code {a.resident_code}, "
        f"{a.person.address}",
    )
    return day


# --- waiting and reporting ------------------------------------------------------------


async def wait_delivered(
    ops: Operators, within: float = _DELIVERY_TIMEOUT, *, progress: bool = True
) -> float:
    """Until the national node applied every municipal notification; returns seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    bar: tqdm[Any] | None = None
    try:
        while True:
            want: dict[str, int] = {}
            for code, stub in ops.municipal.items():
                status = await stub.GetStatus(
                    municipal_pb2.GetMunicipalStatusRequest(), timeout=_RPC_TIMEOUT
                )
                want[code] = status.last_sequence
            national = await ops.national.GetDeliveryStatus(
                delivery_pb2.GetDeliveryStatusRequest(), timeout=_RPC_TIMEOUT
            )
            got = {c.origin_code: c.last_sequence for c in national.applied}
            total = sum(want.values())
            done = sum(min(got.get(c, 0), s) for c, s in want.items())
            if done >= total and bar is None:
                return loop.time() - started  # nothing to wait for
            if bar is None:
                bar = tqdm(
                    total=total,
                    desc="national node applied",
                    disable=not progress,
                    unit=" notifications",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    leave=True,
                )
            bar.total = total
            bar.update(done - bar.n)
            if done >= total:
                return loop.time() - started
            if loop.time() - started > within:
                behind = {c: f"{got.get(c, 0)}/{s}" for c, s in want.items()}
                raise DemoError(f"the national node is still behind after {within:g} s: {behind}")
            await asyncio.sleep(0.1)
    finally:
        if bar is not None:
            bar.close()


def _by_place(records: Iterable[delivery_pb2.IdentityState]) -> Counter[tuple[str, int]]:
    return Counter((h.record.local_government_code, h.status) for h in records)


def print_table(
    registers: Mapping[str, Sequence[municipal_pb2.Resident]],
    prefectures: Mapping[str, Sequence[delivery_pb2.IdentityState]],
    national: Sequence[delivery_pb2.IdentityState],
    out: IO[str],
) -> None:
    """Per municipality: its register, its prefecture's records, the national records."""
    active, removed, superseded = (
        common_pb2.RECORD_STATUS_ACTIVE,
        common_pb2.RECORD_STATUS_REMOVED,
        common_pb2.RECORD_STATUS_SUPERSEDED,
    )
    nat = _by_place(national)
    w = 11
    groups = (("register", 2), ("prefecture", 3), ("national", 3))
    print(
        "  " + pad("", 20) + "".join(f"{name:^{w * n}}" for name, n in groups),
        file=out,
    )
    names = (
        "active",
        "removed",
        "active",
        "removed",
        "superseded",
        "active",
        "removed",
        "superseded",
    )
    print("  " + pad("municipality", 20) + "".join(f"{n:>{w}}" for n in names), file=out)
    for code in MUNICIPALITIES:
        reg = Counter(r.status for r in registers[code])
        pref = _by_place(prefectures[code[:2]])
        counts = (
            reg[municipal_pb2.RESIDENT_STATUS_ACTIVE],
            reg[municipal_pb2.RESIDENT_STATUS_REMOVED],
            pref[(code, active)],
            pref[(code, removed)],
            pref[(code, superseded)],
            nat[(code, active)],
            nat[(code, removed)],
            nat[(code, superseded)],
        )
        label = pad(f"{municipality_name(code)} {code}", 20)
        print("  " + label + "".join(f"{c:>{w}}" for c in counts), file=out)


async def print_history(ops: Operators, code: str, out: IO[str]) -> None:
    """One resident's record and history as the national node holds them."""
    response = await ops.national.GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=code), timeout=_RPC_TIMEOUT
    )
    rec = response.identity.record
    status = _STATUS_NAME.get(response.identity.status, str(response.identity.status))
    print(
        f"  {rec.name} ({rec.name_kana}), born {rec.birth_date}, code {rec.resident_code}: "
        f"{status} at {municipality_name(rec.local_government_code)}, {rec.address}",
        file=out,
    )
    entries = sorted(
        response.history,
        key=lambda h: (h.notification.recorded_at, h.notification.origin_code),
    )
    for h in entries:
        n = h.notification
        note = "" if h.changed_current else "  (history only: the record had moved on)"
        reason = REASON_JA.get(n.reason, str(n.reason))
        print(
            f"    {n.effective_date}  {pad(municipality_name(n.origin_code), 10)}"
            f"{pad(reason, 18)}{n.record.address}{note}",
            file=out,
        )


# --- the whole run -----------------------------------------------------------------


@dataclass
class Timings:
    """Seconds per phase."""

    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = time.perf_counter() - t0

    def describe(self) -> str:
        """``total 12.3 s (pki 0.2, start 2.0, ...)``."""
        total = time.perf_counter() - self.started
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items())
        return f"{total:.1f} s ({parts})"


def prepare_workdir(workdir: Path) -> None:
    """Empty ``workdir`` if the demo made it; refuse any other non-empty folder."""
    if workdir.exists():
        if not workdir.is_dir():
            raise DemoError(f"{workdir} exists and is not a folder")
        if any(workdir.iterdir()) and not (workdir / _MARKER).exists():
            raise DemoError(
                f"{workdir} is not empty and was not made by the demo; "
                "choose another --workdir (it is wiped at every run)"
            )
        shutil.rmtree(workdir)
    for sub in ("pki", "config", "logs", "data", "import"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    (workdir / _MARKER).write_text("made by `jukinet demo`; wiped at every run\n")


def population_split(total: int) -> dict[str, int]:
    """How many residents each municipality gets (at least one each)."""
    counts = {c: max(1, int(total * _SHARE[c])) for c in MUNICIPALITIES}
    counts[TOTTORI] += max(0, total - sum(counts.values()))
    return counts


async def _main(args: argparse.Namespace, procs: Processes, timings: Timings, out: IO[str]) -> int:
    workdir: Path = procs.workdir
    pki = workdir / "pki"
    counts = population_split(args.population)

    with timings.phase("pki"):
        issue_federation(pki, FederationSpec(municipalities=MUNICIPALITIES, operators=True))
    print(f"PKI: root CA and {len(list(pki.glob('*.pem'))) - 2} certificates in {pki}", file=out)

    nodes = plan_nodes(workdir)
    by_name = {n.name: n for n in nodes}
    for node in nodes:
        upstream = (
            by_name["national"]
            if node.tier == "prefecture"
            else by_name[f"prefecture-{node.code[:2]}"]
            if node.tier == "municipal"
            else None
        )
        write_config(node, pki, upstream)

    # The CSVs are generated while the nodes start: both take a second or two.
    def make_csvs() -> None:
        for i, code in enumerate(MUNICIPALITIES):
            write_sample(workdir / "import" / f"{code}.csv", code, counts[code], seed=args.seed + i)

    with timings.phase("start"):
        generating = asyncio.ensure_future(asyncio.to_thread(make_csvs))
        for tier in ("national", "prefecture", "municipal"):
            group = [n for n in nodes if n.tier == tier]
            for node in group:
                procs.start(node)
            await asyncio.gather(*(wait_ready(n, pki) for n in group))
            for node in group:
                print(
                    f"started {pad(node.label, 24)}{node.target:<17}"
                    f"metrics :{node.metrics_port}  log {node.log_path.relative_to(workdir)}",
                    file=out,
                    flush=True,
                )
        await generating

    ops = Operators(nodes, pki)
    try:
        print(
            f"\nloading {args.population} residents "
            + ", ".join(f"{municipality_name(c)} {counts[c]}" for c in MUNICIPALITIES)
            + " (bulk import of generated CSV registers)",
            file=out,
            flush=True,
        )
        with timings.phase("import"):
            summaries = await asyncio.gather(
                *(
                    import_csv(
                        ops.channel(code),
                        workdir / "import" / f"{code}.csv",
                        progress=not args.quiet,
                        progress_position=i,
                    )
                    for i, code in enumerate(MUNICIPALITIES)
                )
            )
        summary: ImportSummary
        for code, summary in zip(MUNICIPALITIES, summaries, strict=True):
            print(f"  {municipality_name(code)}: {summary.describe()}", file=out)
            if summary.rejected:
                raise DemoError(f"{code}: {summary.sorted_rejections()[0].describe()}")

        print(f"\na day of life ({today().isoformat()})", file=out, flush=True)
        with timings.phase("day"):
            day = await day_of_life(ops, args.seed, out)

        print("\nwaiting for the national node to apply every notification", file=out, flush=True)
        with timings.phase("delivery"):
            waited = await wait_delivered(ops, progress=not args.quiet)
        print(f"  every municipal notification applied at national ({waited:.1f} s)", file=out)

        with timings.phase("reconcile"):
            registers = {c: await export_register(ops.municipal[c]) for c in MUNICIPALITIES}
            prefectures = {p: await export_holdings(ops.prefecture[p]) for p in ("31", "13")}
            national = await export_holdings(ops.national)
            print("\nwhat each tier holds (records by the municipality they belong to)", file=out)
            print_table(registers, prefectures, national, out)
            print(
                "\none moved resident's history as the national node holds it "
                "(異動年月日, municipality, 異動事由, address)",
                file=out,
            )
            await print_history(ops, day.moved_resident, out)
            tiers = {
                "prefecture 31 (鳥取県)": ((TOTTORI, YONAGO), prefectures["31"]),
                "prefecture 13 (東京都)": ((CHIYODA,), prefectures["13"]),
                "national": (MUNICIPALITIES, national),
            }
            differences = reconcile(registers, tiers)
        print("\nreconciliation", file=out)
        if differences:
            for diff in differences:
                print(f"  {diff.describe()}", file=out)
            print(f"{len(differences)} difference(s) between the tiers and the registers", file=out)
        else:
            print("all tiers agree with the municipal registers", file=out)
        print(f"\ndemo took {timings.describe()}", file=out, flush=True)

        if args.keep_running:
            await _keep_running(nodes, pki, out)
        return 1 if differences else 0
    finally:
        await ops.close()


async def _keep_running(nodes: Sequence[Node], pki: Path, out: IO[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("\nthe federation keeps running; Ctrl-C stops it", file=out)
    for n in nodes:
        print(
            f"  {pad(n.label, 24)}{n.target:<17}metrics http://127.0.0.1:{n.metrics_port}/",
            file=out,
        )
    m = next(n for n in nodes if n.code == TOTTORI)
    nat = next(n for n in nodes if n.tier == "national")
    print(
        "try:\n"
        f"  jukinet resident status --target {m.target} --pki {pki} --as {m.operator}\n"
        f"  jukinet identity status --tier national --target {nat.target} --pki {pki} "
        f"--as {nat.operator}",
        file=out,
        flush=True,
    )
    await stop.wait()
    print("stopping the federation", file=out, flush=True)


def run_demo(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the demo as the CLI does; returns the exit status.

    0: all tiers agree; 1: they disagree; 2: the demo could not run (a node
    did not start, a call failed); 130: interrupted. Every node started is
    stopped before this returns.
    """
    out = out or sys.stdout
    if args.population < 30:
        print("jukinet demo: --population must be at least 30", file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    timings = Timings()
    try:
        prepare_workdir(workdir)
    except (DemoError, OSError) as exc:
        print(f"jukinet demo: {exc}", file=sys.stderr)
        return 2
    procs = Processes(workdir)
    # SIGTERM (kill, a CI timeout) stops the nodes like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(_main(args, procs, timings, out))
    except KeyboardInterrupt:
        print("\njukinet demo: interrupted; stopping the nodes", file=sys.stderr)
        return 130
    except DemoError as exc:
        print(f"jukinet demo: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"jukinet demo: a call failed: {describe_error(exc)}", file=sys.stderr)
        print(f"jukinet demo: node logs are in {workdir / 'logs'}", file=sys.stderr)
        return 2
    except (ConfigError, CsvFormatError) as exc:
        print(f"jukinet demo: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to a ``jukinet`` subcommand parser."""
    p = subparsers.add_parser(
        "demo",
        help="run a whole federation locally, a day of life, and check that the tiers agree",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    p.add_argument("--population", type=int, default=3000, help="residents in all (default 3000)")
    p.add_argument(
        "--workdir",
        default=os.path.join("var", "demo"),
        help="work folder for PKI, configs, logs, databases; wiped at start (default var/demo)",
    )
    p.add_argument("--seed", type=int, default=1, help="same seed, same people (default 1)")
    p.add_argument(
        "--keep-running", action="store_true", help="leave the federation up until Ctrl-C"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
