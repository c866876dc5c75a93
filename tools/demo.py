"""``jukinet demo``: a whole federation on this machine, a day of life, agencies
verifying residents through the gateway, and proof that every tier agrees with
the municipal registers and that a resident's disclosure is complete.

::

    jukinet demo [--population 3000] [--workdir var/demo] [--seed 1] [--keep-running]

What it does, in order:

1. creates a private PKI in the work folder (a certificate per node, an
   ``admin`` operator per organisation, and two agencies: 日本年金機構
   ``nenkin`` and the passport office ``mofa-passport``), with each
   municipality's operator CA and two counter terminals (``desk1``,
   ``desk2``); a SoftHSM2 in the work folder holds an IC card for each
   municipality's administrator, clerk, supervisor and auditor (keys made on
   the card, certificates from the operator CA), all enrolled in the
   municipality's node (:mod:`tools.localfed`);
2. starts a :class:`tools.localfed.LocalFederation`: a TOML config per node
   (own SQLite file, own certificate, free ports on 127.0.0.1 for gRPC and
   Prometheus), the national node, the agency gateway, the prefectures 31
   (鳥取県) and 13 (東京都) and the municipalities 鳥取市 312011, 米子市
   312029 and 千代田区 131016, each as its own process (output in
   ``logs/<node>.log``), waiting for each to answer a gRPC health check over
   mutual TLS;
3. the operators log in at the counter terminals with card and password
   (changing the initial password at this first login); a supervisor loads a
   realistic population (:mod:`tools.population`, households sharing an
   address) through the bulk import (:func:`jukinet.cli.importer.import_csv`);
4. runs a day of life through logged-in operators (clerks; a supervisor for
   the resident-code change and the register exports): births into existing
   households, deaths, a household's relocation, a name change on marriage
   (with 旧氏), a resident-code change on request, moves within a prefecture
   and across prefectures (move-out at the old municipality, which issues and
   prints its signed move-out certificate; move-in at the new one with that
   certificate, whose identity items it registers) and two move-ins from abroad, one of them
   渡邊 和子, whose surname is registered with a variant kanji; a resident card
   (住民基本台帳カード, a SoftHSM2 token of its own, key made on the card) issued
   at 鳥取市 and proved at the counter with its PIN, and another one proved at
   千代田区, reported lost, revoked at 鳥取市 and refused at 千代田区 once the
   new CRL has reached it (:mod:`jukinet.cardclient`, as ``jukinet card``
   does); the day ends once every move-out of the day is final (転出確定) at
   the old municipality by the move-in notice the new one sent; and a resident
   of 千代田区 who asks 米子市 for a copy of their record (広域交付): 米子市 asks
   千代田区 over the relay and signs the Japanese PDF, which the demo writes
   to ``copies/`` in the work folder and verifies (its path and the
   verification printed);
5. waits until the national node has applied every municipal notification,
   prints what each tier holds and one moved resident's history as the
   national node holds it, and reconciles: every municipal register entry must
   match the records of its prefecture and of the national node;
6. the agencies at work through the gateway: 日本年金機構 runs its yearly
   existence check of every recipient aged 65 or more as one VerifyBatch
   stream (the day's deaths come back as no longer registered); the passport
   office searches for 渡辺 和子 as she wrote her name and finds 渡邊 和子, then
   verifies her four items; each agency is refused a purpose it does not hold
   (PERMISSION_DENIED with its reason);
7. prints 渡邊 和子's disclosure as her municipality's counter gets it: the
   record the national node holds and every provision of it, refusals
   included, and checks that it lists exactly the provisions the demo caused.

8. prints the operation log entries of 鳥取市's clerk, as its auditor reads
   them (``ReadOperationLog``), and verifies every node's operation log end to
   end and against the heads the tier above witnessed
   (:func:`jukinet.cli.audit.verify_node`), one line per node.

It prints "all tiers agree with the municipal registers" and "the disclosure
lists exactly the provisions made and refused", or every difference and
exits 1.

Every node process is stopped on the way out, on success, error or Ctrl-C.
The work folder is wiped at the start; a folder that was not made by the
demo is never wiped (the demo refuses to use it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import grpc
from cryptography import x509
from faker.providers.person.ja_JP import Provider as _JaPersonProvider
from tqdm import tqdm

from gateway.disclosure import format_disclosure
from jukinet import cardclient, copydoc, localgov, movecert
from jukinet.cli.audit import log_table, read_log, verify_node
from jukinet.cli.csvfile import CsvFormatError
from jukinet.cli.importer import ImportSummary, import_csv
from jukinet.client import describe_error, tls_files
from jukinet.config import (
    LoggedNodeConfig,
    MunicipalConfig,
    NationalConfig,
    PrefectureConfig,
    load_config,
)
from jukinet.errors import ConfigError, error_metadata
from jukinet.purposes import load_registry
from jukinet.textwidth import pad
from jukinet.tls import secure_channel
from jukinet.v1 import (
    card_pb2,
    card_pb2_grpc,
    common_pb2,
    delivery_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    municipal_pb2,
    municipal_pb2_grpc,
    national_pb2_grpc,
    operator_pb2_grpc,
    prefecture_pb2_grpc,
    provision_pb2,
)
from jukinet.validation import today
from jukinet.vocabulary import PERSON_FIELDS, operation_label, result_label, verification_outcome
from tools import localfed
from tools.localfed import Delivery, LocalFederation, Node, NodeFailed
from tools.population import NAME_SEPARATOR, PopulationGenerator
from tools.sample import write_sample

__all__ = [
    "MUNICIPALITIES",
    "REASON_JA",
    "DemoError",
    "Difference",
    "Node",
    "main",
    "reconcile",
    "run_demo",
]

TOTTORI, YONAGO, CHIYODA = "312011", "312029", "131016"
MUNICIPALITIES: tuple[str, ...] = (TOTTORI, YONAGO, CHIYODA)
"""The municipalities the demo runs: 鳥取市, 米子市 (鳥取県) and 千代田区 (東京都)."""
PREFECTURES: tuple[str, ...] = ("31", "13")
TIERS = ("national", "prefecture", "municipal", "gateway")
AGREE = "all tiers agree with the municipal registers"
SPECIAL_MOVE_DONE = "the resident card is continued at the new municipality"
DISCLOSED = "the disclosure lists exactly the provisions made and refused"

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

RETURNEE = municipal_pb2.PersonDetails(
    name="渡邊\u3000和子",
    name_kana="ワタナベ\u3000カズコ",
    birth_date="1957-04-12",
    sex=common_pb2.SEX_FEMALE,
    address="鳥取県米子市加茂町二丁目180番地",
)
"""Who comes home from abroad in the day of life; the agencies then look her up."""

_MARKER = ".jukinet-demo"
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


# --- channels to the running federation -----------------------------------------


class Operators:
    """Channels to the demo's nodes: logged-in operators at each municipality's
    counter terminals (:meth:`log_in`), the admin of each upper tier."""

    def __init__(self, fed: LocalFederation) -> None:
        self._fed = fed
        self._channels: list[grpc.aio.Channel] = []
        self.federation = fed
        """The running federation (its work folder and PKI)."""
        # Clerks do the everyday work; a supervisor the bulk and ex-officio work.
        self.municipal: dict[str, municipal_pb2_grpc.MunicipalServiceAsyncStub] = {}
        self.supervisor: dict[str, municipal_pb2_grpc.MunicipalServiceAsyncStub] = {}
        self.supervisor_channel: dict[str, grpc.aio.Channel] = {}
        self.auditor: dict[str, operator_pb2_grpc.OperatorServiceAsyncStub] = {}
        self.cards: dict[str, card_pb2_grpc.ResidentCardServiceAsyncStub] = {}
        """Each municipality's ResidentCardService, at its clerk's terminal."""
        self._tokens: dict[tuple[str, str], str] = {}
        self.prefecture = {
            code: prefecture_pb2_grpc.PrefectureServiceStub(self.channel(f"prefecture-{code}"))
            for code in PREFECTURES
        }
        self.national = national_pb2_grpc.NationalServiceStub(self.channel("national"))

    async def log_in(self) -> None:
        """Log each municipality's clerk, supervisor and auditor in at its terminals."""
        for code in MUNICIPALITIES:
            for who in ("clerk", "supervisor", "auditor"):
                self._tokens[(code, who)] = await self._fed.session(code, who)
            self.municipal[code] = municipal_pb2_grpc.MunicipalServiceStub(
                self.counter(code, "clerk")
            )
            self.supervisor_channel[code] = self.counter(code, "supervisor")
            self.supervisor[code] = municipal_pb2_grpc.MunicipalServiceStub(
                self.supervisor_channel[code]
            )
            self.auditor[code] = operator_pb2_grpc.OperatorServiceStub(
                self.counter(code, "auditor")
            )
            self.cards[code] = card_pb2_grpc.ResidentCardServiceStub(self.counter(code, "clerk"))

    async def blank_resident_card(self, resident_code: str, pin: str) -> str:
        """A blank card for ``resident_code`` in the counters' card reader; its label."""
        return await self._fed.blank_resident_card(resident_code, pin)

    def counter(self, code: str, operator_id: str) -> grpc.aio.Channel:
        """A channel from ``operator_id``'s terminal at ``code``, in their session."""
        fed = self._fed
        node = fed.nodes[f"municipality-{code}"]
        ch = secure_channel(
            node.target,
            tls_files(fed.pki_dir, fed.terminal(code, operator_id)),
            session=self._tokens[(code, operator_id)],
        )
        self._channels.append(ch)
        return ch

    def channel(self, node: str, cert: str | None = None) -> grpc.aio.Channel:
        """A new channel to ``node``, as its admin or as certificate ``cert``."""
        ch = self._fed.channel(node, cert)
        self._channels.append(ch)
        return ch

    def agency(self, code: str) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
        """The gateway, as agency ``code``."""
        return gateway_pb2_grpc.GatewayServiceStub(self.channel("gateway", f"agency-{code}"))

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


_FIELDS = PERSON_FIELDS
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
    returnee: str = ""  # 渡邊 和子, back from abroad: the agencies look her up
    move_outs: list[tuple[str, str]] = field(default_factory=list)
    """(old municipality, resident code) of each domestic move-out of the day: the new
    municipality's move-in notice makes it final (転出確定) by the end of the day."""
    copy_file: Path | None = None  # the copy of a 千代田区 record issued at 米子市
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


@dataclass
class Day:
    """What the scenes of a day share: the registers as they were in the morning,
    who has had a part already, and what the day changed."""

    ops: Operators
    seed: int
    out: IO[str]
    registers: dict[str, _Register]
    rng: random.Random
    date: dt.date = field(default_factory=today)
    used: set[str] = field(default_factory=set)
    result: DayOfLife = field(default_factory=DayOfLife)
    scene: str = ""

    @property
    def m(self) -> dict[str, municipal_pb2_grpc.MunicipalServiceAsyncStub]:
        """Operator stubs of the municipalities."""
        return self.ops.municipal

    def say(self, reason: str, code: str, text: str) -> None:
        """One line of the day's report."""
        line = f"  {pad(reason, 18)}{pad(municipality_name(code), 10)}{text}"
        self.result.lines.append(line)
        print(line, file=self.out, flush=True)

    def show(self, document: str) -> None:
        """A document (a certificate) in the day's report, indented under its line."""
        for text in document.splitlines():
            line = f"      {text}"
            self.result.lines.append(line)
            print(line, file=self.out, flush=True)

    def age(self, r: municipal_pb2.Resident) -> int:
        """Age today."""
        return _age(r.person.birth_date, self.date)

    def pick(self, what: str, *pools: Sequence[municipal_pb2.Resident]) -> municipal_pb2.Resident:
        """Someone from the first pool that has anyone, who then has no other part."""
        try:
            chosen = _choose(self.rng, what, *pools)
        except DemoError as exc:
            raise DemoError(f"{self.scene}: {exc}") from None
        self.used.add(chosen.resident_code)
        return chosen

    def fresh_address(self, code: str, salt: int) -> str:
        """A new address in municipality ``code``."""
        return next(PopulationGenerator(self.seed * 7919 + salt).people(code, 1)).address

    def days_ago(self, days: int) -> str:
        """The date ``days`` before today, ISO."""
        return (self.date - dt.timedelta(days=days)).isoformat()


def _female(r: municipal_pb2.Resident) -> bool:
    return r.person.sex == common_pb2.SEX_FEMALE


async def births(day: Day) -> None:
    """Two babies, each into the household of a mother of age."""
    for code, back in ((TOTTORI, 3), (YONAGO, 6)):
        reg = day.registers[code]
        mother = day.pick(
            "mother",
            reg.people(day.used, lambda r: _female(r) and 22 <= day.age(r) <= 42),
            reg.people(day.used, lambda r: _female(r) and 16 <= day.age(r) <= 55),
            reg.people(day.used, lambda r: day.age(r) >= 16),
        )
        sex = day.rng.choice((common_pb2.SEX_MALE, common_pb2.SEX_FEMALE))
        pairs = (
            _JaPersonProvider.first_name_male_pairs
            if sex == common_pb2.SEX_MALE
            else _JaPersonProvider.first_name_female_pairs
        )
        given, given_kana, _ = day.rng.choice(pairs)
        surname, _ = _split_name(mother.person.name)
        surname_kana, _ = _split_name(mother.person.name_kana)
        born = await day.m[code].RegisterBirth(
            municipal_pb2.RegisterBirthRequest(
                person=municipal_pb2.PersonDetails(
                    name=f"{surname}{NAME_SEPARATOR}{given}",
                    name_kana=f"{surname_kana}{NAME_SEPARATOR}{given_kana}" if surname_kana else "",
                    birth_date=day.days_ago(back),
                    sex=sex,
                    address=mother.person.address,
                ),
                household_id=mother.household_id,
            ),
            timeout=_RPC_TIMEOUT,
        )
        r = born.resident
        day.say(
            "出生 birth",
            code,
            f"{r.person.name}, born {r.person.birth_date} into the household of "
            f"{mother.person.name} → new code {r.resident_code}",
        )


async def deaths(day: Day) -> None:
    """Two of the oldest residents die."""
    for code in (YONAGO, CHIYODA):
        reg = day.registers[code]
        elder = day.pick(
            "elderly resident",
            reg.people(day.used, lambda r: day.age(r) >= 85),
            sorted(reg.people(day.used, lambda r: True), key=lambda r: r.person.birth_date)[:3],
        )
        died = day.days_ago(1)
        await day.m[code].RecordDeath(
            municipal_pb2.RecordDeathRequest(resident_code=elder.resident_code, date_of_death=died),
            timeout=_RPC_TIMEOUT,
        )
        day.say(
            "死亡 death", code, f"{elder.person.name} (born {elder.person.birth_date}) on {died}"
        )


async def relocation(day: Day) -> None:
    """A whole household moves house within 鳥取市."""
    households = list(day.registers[TOTTORI].households.values())

    def free(h: list[municipal_pb2.Resident]) -> bool:
        return not day.used & {r.resident_code for r in h}

    family = _choose(
        day.rng,
        "household",
        [h for h in households if len(h) >= 3 and free(h)],
        [h for h in households if len(h) >= 2 and free(h)],
        [h for h in households if free(h)],
    )
    day.used.update(r.resident_code for r in family)
    new_address = day.fresh_address(TOTTORI, 1)
    moved = await day.m[TOTTORI].Relocate(
        municipal_pb2.RelocateRequest(
            resident_code=family[0].resident_code,
            new_address=new_address,
            effective_date=day.days_ago(2),
            whole_household=True,
        ),
        timeout=_RPC_TIMEOUT,
    )
    day.say(
        "転居 relocation",
        TOTTORI,
        f"household of {len(moved.residents)} ({family[0].person.name} ...): "
        f"{family[0].person.address} → {new_address}",
    )


async def marriage(day: Day) -> None:
    """She takes her husband's surname and keeps her 旧氏 on the record."""
    reg = day.registers[YONAGO]
    bride = day.pick(
        "resident to marry",
        reg.people(
            day.used,
            lambda r: _female(r) and 24 <= day.age(r) <= 40 and not r.person.former_surname,
        ),
        reg.people(day.used, lambda r: day.age(r) >= 18 and not r.person.former_surname),
    )
    old_surname, given = _split_name(bride.person.name)
    _, given_kana = _split_name(bride.person.name_kana)
    new_surname, new_kana, _ = day.rng.choice(
        [p for p in _JaPersonProvider.last_name_pairs if p[0] != old_surname]
    )
    renamed = await day.m[YONAGO].ChangeName(
        municipal_pb2.ChangeNameRequest(
            resident_code=bride.resident_code,
            name=f"{new_surname}{NAME_SEPARATOR}{given}",
            name_kana=f"{new_kana}{NAME_SEPARATOR}{given_kana}" if given_kana else "",
            former_surname=old_surname,
            effective_date=day.date.isoformat(),
        ),
        timeout=_RPC_TIMEOUT,
    )
    day.say(
        "氏名変更 marriage",
        YONAGO,
        f"{bride.person.name} → {renamed.resident.person.name} "
        f"(旧氏 {renamed.resident.person.former_surname} kept on the record)",
    )


async def code_change(day: Day) -> None:
    """A resident of 千代田区 asks for a new resident code."""
    reg = day.registers[CHIYODA]
    asker = day.pick(
        "resident",
        reg.people(day.used, lambda r: day.age(r) >= 18),
        reg.people(day.used, lambda r: True),
    )
    # A code change is a supervisor's (the counter's clerk cannot).
    changed = await day.ops.supervisor[CHIYODA].ChangeResidentCode(
        municipal_pb2.ChangeResidentCodeRequest(
            resident_code=asker.resident_code, ex_officio=False, effective_date=day.date.isoformat()
        ),
        timeout=_RPC_TIMEOUT,
    )
    day.say(
        "住民票コード変更",
        CHIYODA,
        f"{asker.person.name} asked for a new code: {changed.previous_resident_code} → "
        f"{changed.resident.resident_code}",
    )


async def moves(day: Day) -> None:
    """One person moves 鳥取市 → 米子市 (same prefecture), later 米子市 → 千代田区."""
    reg = day.registers[TOTTORI]
    mover = day.pick(
        "resident to move",
        [
            h[0]
            for h in reg.households.values()
            if len(h) == 1 and 20 <= day.age(h[0]) <= 60 and h[0].resident_code not in day.used
        ],
        reg.people(day.used, lambda r: day.age(r) >= 18),
        reg.people(day.used, lambda r: True),
    )
    code = mover.resident_code
    day.result.moved_resident = code
    person = mover.person
    for old, new, back in ((TOTTORI, YONAGO, 12), (YONAGO, CHIYODA, 2)):
        when = day.days_ago(back)
        out = await day.m[old].MoveOut(
            municipal_pb2.MoveOutRequest(
                resident_code=code, destination_local_government_code=new, effective_date=when
            ),
            timeout=_RPC_TIMEOUT,
        )
        day.result.move_outs.append((old, code))
        across = "same prefecture" if old[:2] == new[:2] else "another prefecture"
        day.say(
            "転出 move out",
            old,
            f"{person.name} ({code}) to {municipality_name(new)} ({across}) on {when}; "
            "the move-out certificate it issued:",
        )
        certificate = common_pb2.MoveOutCertificate.FromString(out.certificate.certificate)
        day.show(movecert.document(certificate))
        # The new municipality registers the certificate's identity items: the
        # operator enters only the new address, the date and the household.
        moved_in = await day.m[new].MoveIn(
            municipal_pb2.MoveInRequest(
                person=municipal_pb2.PersonDetails(address=day.fresh_address(new, back)),
                origin=municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC,
                move_out_certificate=out.certificate,
                effective_date=when,
            ),
            timeout=_RPC_TIMEOUT,
        )
        day.say(
            "転入 move in",
            new,
            f"{moved_in.resident.person.name} ({moved_in.resident.resident_code}) from "
            f"{municipality_name(old)} with certificate {certificate.certificate_number}, "
            f"{moved_in.resident.person.address}",
        )


async def arrival_from_abroad(day: Day) -> None:
    """A foreign resident arrives in 千代田区, with a registered 通称."""
    arrival = await day.m[CHIYODA].MoveIn(
        municipal_pb2.MoveInRequest(
            person=municipal_pb2.PersonDetails(
                name="WANG XIAOMING",
                name_kana="ワン\u3000シャオミン",
                alias="王\u3000小明",
                birth_date="1991-05-03",
                sex=common_pb2.SEX_MALE,
                address=day.fresh_address(CHIYODA, 99),
            ),
            origin=municipal_pb2.MOVE_IN_ORIGIN_ABROAD,
            effective_date=day.date.isoformat(),
        ),
        timeout=_RPC_TIMEOUT,
    )
    a = arrival.resident
    day.say(
        "国外からの転入",
        CHIYODA,
        f"{a.person.name} (通称 {a.person.alias}) from abroad → new code {a.resident_code}, "
        f"{a.person.address}",
    )


async def homecoming(day: Day) -> None:
    """A retired citizen comes home to 米子市; her surname is registered with the
    variant kanji 邊, as in her family register."""
    home = await day.m[YONAGO].MoveIn(
        municipal_pb2.MoveInRequest(
            person=RETURNEE,
            origin=municipal_pb2.MOVE_IN_ORIGIN_ABROAD,
            effective_date=day.date.isoformat(),
        ),
        timeout=_RPC_TIMEOUT,
    )
    r = home.resident
    day.result.returnee = r.resident_code
    day.say(
        "国外からの転入",
        YONAGO,
        f"{r.person.name}, born {r.person.birth_date}, back from abroad → new code "
        f"{r.resident_code}, {r.person.address}",
    )


RESIDENT_PIN = "4821"
"""The PIN of the demo's resident cards."""
CARD_PROVED = "proved with its PIN"
CARD_REFUSED = "refused: card-revoked"
CRL_WAIT = 30.0
"""Seconds a scene waits for a card CA's CRL to reach another prefecture's node (the
demo's nodes exchange CRLs every second: :data:`CARD_CRLS_EVERY`)."""


async def _issue_card(day: Day, holder: municipal_pb2.Resident) -> str:
    """A card issued to ``holder`` at 鳥取市, said; its label."""
    code = holder.resident_code
    label = await day.ops.blank_resident_card(code, RESIDENT_PIN)
    issued = await cardclient.issue_card(
        day.ops.cards[TOTTORI],
        code,
        pin=RESIDENT_PIN,
        so_pin=localfed.RESIDENT_CARD_SO_PIN,
        label=label,
        call_timeout=_RPC_TIMEOUT,
    )
    day.say(
        "カード交付",
        TOTTORI,
        f"{holder.person.name} ({code}) gets resident card {issued.card_id} "
        f"(certificate serial {issued.certificate.serial_number:x}, key made on the card)",
    )
    return label


async def _prove(day: Day, at: str, label: str) -> card_pb2.ProveCardResponse:
    return await cardclient.prove_card(
        day.ops.cards[at], pin=RESIDENT_PIN, label=label, call_timeout=_RPC_TIMEOUT
    )


async def resident_card(day: Day) -> None:
    """A resident of 鳥取市 gets a resident card and proves who they are at the counter
    with it and its PIN."""
    reg = day.registers[TOTTORI]
    holder = day.pick(
        "resident to get a card",
        reg.people(day.used, lambda r: day.age(r) >= 15),
        reg.people(day.used, lambda r: True),
    )
    label = await _issue_card(day, holder)
    proof = await _prove(day, TOTTORI, label)
    if proof.resident_code != holder.resident_code:
        raise DemoError(f"{day.scene}: the card proved {proof.resident_code or 'no one'}")
    day.say(
        "カード本人確認",
        TOTTORI,
        f"card {proof.card_id} {CARD_PROVED}: the holder is {proof.resident_code}",
    )


async def _until_proved_or_refused(
    day: Day, at: str, label: str, *, refused: bool
) -> tuple[float, str]:
    """Seconds until the card proves at ``at`` (``refused``: is refused there as revoked),
    waiting for the CRL of 鳥取市's card CA; the reason of the refusal."""
    started = time.monotonic()
    while True:
        try:
            await _prove(day, at, label)
            if not refused:
                return time.monotonic() - started, ""
        except grpc.aio.AioRpcError as exc:
            reason = error_metadata(exc).get("jukinet-reason", "")
            if refused and reason == "card-revoked":
                return time.monotonic() - started, reason
            if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
        if time.monotonic() - started > CRL_WAIT:
            what = "refused" if refused else "proved"
            raise DemoError(
                f"{day.scene}: the card not {what} at {municipality_name(at)} "
                f"within {CRL_WAIT:g} s (no CRL of 鳥取市's card CA there)"
            )
        await asyncio.sleep(0.25)


async def lost_card(day: Day) -> None:
    """A resident of 鳥取市 loses their card: revoked at home, it is refused at a counter
    of another prefecture (千代田区) once the CRL has reached that node."""
    reg = day.registers[TOTTORI]
    holder = day.pick(
        "resident to lose a card",
        reg.people(day.used, lambda r: day.age(r) >= 15),
        reg.people(day.used, lambda r: True),
    )
    label = await _issue_card(day, holder)
    waited, _ = await _until_proved_or_refused(day, CHIYODA, label, refused=False)
    day.say(
        "カード本人確認",
        CHIYODA,
        f"the card {CARD_PROVED} (another prefecture; 鳥取市's card CRL came in {waited:.1f} s)",
    )
    revoked = await cardclient.revoke_card(
        day.ops.cards[TOTTORI],
        holder.resident_code,
        card_pb2.CARD_REVOCATION_REASON_LOST,
        call_timeout=_RPC_TIMEOUT,
    )
    day.say(
        "カード紛失",
        TOTTORI,
        f"{holder.person.name} reports the card lost: revoked (serial {revoked.serial})",
    )
    waited, _ = await _until_proved_or_refused(day, CHIYODA, label, refused=True)
    day.say(
        "カード本人確認",
        CHIYODA,
        f"the lost card {CARD_REFUSED} ({waited:.1f} s after the revocation, with the new CRL)",
    )


async def moving_with_the_card(day: Day) -> None:
    """A card holder of 鳥取市 moves to 千代田区 the card's way (転出・転入の特例): the
    move-out filed by post with the card's signature, the move-in with card and PIN,
    the card continued."""
    holder = day.pick(
        "resident to move with the card",
        day.registers[TOTTORI].people(day.used, lambda r: 20 <= day.age(r) <= 60),
        day.registers[TOTTORI].people(day.used, lambda r: True),
    )
    code = holder.resident_code
    label = await _issue_card(day, holder)
    when = day.date.isoformat()
    address = day.fresh_address(CHIYODA, 77)
    filing = await asyncio.to_thread(
        lambda: cardclient.sign_move_out(
            pin=RESIDENT_PIN,
            label=label,
            destination=CHIYODA,
            planned=when,
            new_address=address,
            signed_on=when,
        )
    )
    posted = await day.m[TOTTORI].MoveOutByPost(
        municipal_pb2.MoveOutByPostRequest(resident_code=code, filing=filing),
        timeout=_RPC_TIMEOUT,
    )
    day.say(
        "付記転出届 post",
        TOTTORI,
        f"{holder.person.name} files the move-out to {municipality_name(CHIYODA)} on {when} "
        f"by post, signed by the card; certificate {posted.certificate_number} kept, "
        "none handed out",
    )
    # The card CA's CRL of 鳥取市 travels to 千代田区 through both prefectures and the
    # national node; until it has come, the new counter cannot continue the card.
    deadline = time.monotonic() + CRL_WAIT
    while True:
        try:
            moved = await cardclient.special_move_in(
                day.m[CHIYODA],
                day.ops.cards[CHIYODA],
                municipal_pb2.SpecialMoveInRequest(effective_date=when, continue_card=True),
                pin=RESIDENT_PIN,
                label=label,
                call_timeout=_RPC_TIMEOUT,
            )
            break
        except grpc.aio.AioRpcError as exc:
            waiting = exc.code() in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.UNAVAILABLE,
            ) and "has reached this node yet" in (exc.details() or "")
            if not waiting or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
    day.result.move_outs.append((TOTTORI, code))
    r = moved.resident
    day.say(
        "特例転入 card+PIN",
        CHIYODA,
        f"{r.person.name} ({r.resident_code}) moved in with the card and PIN; the move-out "
        f"data came from {municipality_name(TOTTORI)} over the network "
        f"(certificate {moved.certificate_number}), {r.person.address}",
    )
    day.say(
        "継続利用 card",
        CHIYODA,
        f"{SPECIAL_MOVE_DONE}: card {moved.card_id} of {municipality_name(CHIYODA)} "
        "on the same card key",
    )


async def wide_area_copy(day: Day) -> None:
    """A resident of 千代田区 asks 米子市 for a copy of their record (広域交付): 米子市 asks
    千代田区 over the relay, prints and signs the copy; the demo writes it into the work
    folder and verifies it as ``jukinet copy verify`` does."""
    reg = day.registers[CHIYODA]
    applicant = day.pick(
        "resident asking for a copy",
        reg.people(day.used, lambda r: day.age(r) >= 18),
        reg.people(day.used, lambda r: True),
    )
    issued = await day.m[YONAGO].IssueCopy(
        municipal_pb2.IssueCopyRequest(
            resident_code=applicant.resident_code,
            home_local_government_code=CHIYODA,
            include_relationship=True,
            identification=municipal_pb2.APPLICANT_IDENTIFICATION_PHOTO_ID,
        ),
        timeout=_RPC_TIMEOUT,
    )
    fed = day.ops.federation
    folder = fed.workdir / "copies"
    folder.mkdir(exist_ok=True)
    path = folder / f"{applicant.resident_code}-{YONAGO}.pdf"
    path.write_bytes(issued.document)
    day.result.copy_file = path
    day.say(
        "広域交付 copy",
        YONAGO,
        f"{applicant.person.name} of {municipality_name(CHIYODA)} asked for a copy of their "
        f"record; 米子市 asked 千代田区 over the relay and wrote {path}",
    )
    ca = x509.load_pem_x509_certificate((fed.pki_dir / "ca.pem").read_bytes())
    try:
        verified = await asyncio.to_thread(copydoc.verify_copy, issued.document, ca=ca)
    except copydoc.CopyVerificationError as exc:
        raise DemoError(f"the copy {path} does not verify: {exc}") from None
    day.say("広域交付 copy", YONAGO, f"jukinet copy verify {path.name}: valid")
    day.show("\n".join(verified.describe()))


CONFIRM_WAIT = 60.0
"""Seconds the end of the day waits for the move-in notices to make the day's move-outs
final."""
CONFIRMED = "move-outs made final by the new municipality's move-in notice (転入通知)"


async def move_outs_confirmed(day: Day) -> None:
    """Until each of the day's move-outs is final (転出確定) at its old municipality,
    by the move-in notice the new one sent (at most :data:`CONFIRM_WAIT` seconds); says
    how many are."""
    pending = list(dict.fromkeys(day.result.move_outs))
    final: set[tuple[str, str]] = set()
    started = time.monotonic()
    while True:
        for old, code in pending:
            if (old, code) in final:
                continue
            got = await day.m[old].GetResident(
                municipal_pb2.GetResidentRequest(resident_code=code), timeout=_RPC_TIMEOUT
            )
            if any(
                e.register_change == municipal_pb2.REGISTER_CHANGE_MOVE_OUT_CONFIRMED
                for e in got.events
            ):
                final.add((old, code))
                day.say("転出確定", old, f"{code}: the move-in notice came, the move-out is final")
        if len(final) == len(pending) or time.monotonic() - started > CONFIRM_WAIT:
            break
        await asyncio.sleep(0.2)
    line = (
        f"  転出確定: {len(final)} of the day's {len(pending)} {CONFIRMED} "
        f"({time.monotonic() - started:.1f} s)"
    )
    day.result.lines.append(line)
    print(line, file=day.out, flush=True)
    if len(final) != len(pending):
        late = ", ".join(
            f"{c} at {municipality_name(o)}" for o, c in pending if (o, c) not in final
        )
        raise DemoError(f"move-outs not final after {CONFIRM_WAIT:g} s: {late}")


@dataclass(frozen=True)
class Scene:
    """One part of the day: a title, and what happens."""

    title: str
    play: Callable[[Day], Awaitable[None]]


SCENES: tuple[Scene, ...] = (
    Scene("出生 births", births),
    Scene("死亡 deaths", deaths),
    Scene("転居 a household's relocation", relocation),
    Scene("氏名変更 a marriage", marriage),
    Scene("住民票コード変更 a resident-code change", code_change),
    Scene("転出・転入 moves within and across prefectures", moves),
    Scene("国外からの転入 a foreign resident's arrival", arrival_from_abroad),
    Scene("国外からの転入 a citizen's homecoming", homecoming),
    Scene("住民基本台帳カード a resident card issued and proved", resident_card),
    Scene("カード紛失 a lost card revoked", lost_card),
    Scene("転出・転入の特例 moving with the resident card", moving_with_the_card),
    Scene("広域交付 a copy of a 千代田区 record issued at 米子市", wide_area_copy),
)
"""The day of life, in order (later scenes pick among those not yet in one)."""


async def day_of_life(ops: Operators, seed: int, out: IO[str]) -> DayOfLife:
    """Births, deaths, a relocation, a marriage, a code change, moves, arrivals, a copy."""
    registers = {
        code: _Register(await export_register(ops.supervisor[code])) for code in MUNICIPALITIES
    }
    day = Day(ops, seed, out, registers, random.Random(f"tools.demo/{seed}"))
    for scene in SCENES:
        day.scene = scene.title
        await scene.play(day)
    day.scene = "転出確定 the day's move-outs made final"
    await move_outs_confirmed(day)
    return day.result


# --- waiting and reporting ------------------------------------------------------------


async def watch_delivery(
    ops: Operators, within: float = _DELIVERY_TIMEOUT, *, progress: bool = True
) -> float:
    """Until the national node applied every municipal notification, with a progress
    bar; returns the seconds waited."""
    started = time.monotonic()
    bar: tqdm[Any] | None = None

    def show(delivery: Delivery) -> None:
        nonlocal bar
        if delivery.complete and bar is None:
            return  # nothing to wait for: no bar at all
        if bar is None:
            bar = tqdm(
                total=delivery.total,
                desc="national node applied",
                disable=not progress,
                unit=" notifications",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )
        bar.total = delivery.total
        bar.update(delivery.done - bar.n)

    try:
        await localfed.wait_delivered(
            localfed.municipal_sequences(ops.municipal, _RPC_TIMEOUT),
            localfed.national_cursors(ops.national, _RPC_TIMEOUT),
            within=within,
            poll=0.1,
            on_progress=show,
        )
    except localfed.DeliveryTimeout as exc:
        raise DemoError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    return time.monotonic() - started


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


# --- national agencies through the gateway ------------------------------------------

AGENCIES = ("nenkin", "mofa-passport")
"""The agencies of the demo, by the code their certificates name."""
REGISTRY = load_registry()
"""The purpose registry the demo's gateway runs with (the packaged one)."""


def agency_name(code: str) -> str:
    """日本年金機構 for nenkin, as the purpose registry names it."""
    agency = REGISTRY.agency(code)
    return agency.name.ja if agency is not None else code


EXISTENCE_CHECK, PASSPORT = "NENKIN-EXISTENCE-CHECK", "MOFA-PASSPORT-ISSUE"
_PENSION_AGE = 65
_BATCH = 200
_MATCH = {
    gateway_pb2.ITEM_MATCH_MATCH: "✓",
    gateway_pb2.ITEM_MATCH_NO_MATCH: "✗",
    gateway_pb2.ITEM_MATCH_NOT_CLAIMED: "-",
}


@dataclass(frozen=True)
class Expected:
    """A provision the demo caused, as the resident's disclosure must list it."""

    agency: str
    purpose: str
    operation: str
    result: str


def _items(v: gateway_pb2.Verification) -> str:
    return "  ".join(
        f"{label} {_MATCH.get(getattr(v, item), '?')}"
        for label, item in (
            ("code", "resident_code"),
            ("name", "name"),
            ("born", "birth_date"),
            ("sex", "sex"),
            ("address", "address"),
        )
    )


async def _existence_check(
    ops: Operators,
    registers: Mapping[str, Sequence[municipal_pb2.Resident]],
    returnee: str,
    out: IO[str],
) -> list[Expected]:
    """日本年金機構's yearly check of every recipient aged 65 or more, as one stream."""
    on = today()
    recipients: dict[str, municipal_pb2.Resident] = {}
    for code in MUNICIPALITIES:
        for r in registers[code]:
            if _age(r.person.birth_date, on) >= _PENSION_AGE:
                recipients.setdefault(r.resident_code, r)
    ordered = sorted(recipients.values(), key=lambda r: r.resident_code)
    ids = {f"P{i:07d}": r for i, r in enumerate(ordered, 1)}
    items = [
        gateway_pb2.VerifyBatchItem(
            item_id=item_id,
            claim=gateway_pb2.ClaimedIdentity(
                resident_code=r.resident_code, name=r.person.name, birth_date=r.person.birth_date
            ),
        )
        for item_id, r in ids.items()
    ]
    messages = [items[i : i + _BATCH] for i in range(0, len(items), _BATCH)]

    async def requests() -> AsyncIterator[gateway_pb2.VerifyBatchRequest]:
        for chunk in messages:
            yield gateway_pb2.VerifyBatchRequest(purpose_code=EXISTENCE_CHECK, items=chunk)

    print(
        f"  {agency_name('nenkin')}, {EXISTENCE_CHECK}: the yearly existence check (現況確認) of "
        f"{len(items)} pension recipients aged {_PENSION_AGE}+, one VerifyBatch stream of "
        f"{len(messages)} message{'s' if len(messages) != 1 else ''}",
        file=out,
        flush=True,
    )
    stream = cast(
        AsyncIterator[gateway_pb2.VerifyBatchResponse],
        ops.agency("nenkin").VerifyBatch(requests(), timeout=_RPC_TIMEOUT),
    )
    results = [res async for response in stream for res in response.results]
    if [res.item_id for res in results] != list(ids):
        raise DemoError("the existence check did not answer every recipient once, in order")
    gone = [res for res in results if not res.verification.currently_registered]
    print(
        f"    {len(results) - len(gone)} currently registered, {len(gone)} no longer "
        "registered (no personal data comes back, only match / no match):",
        file=out,
    )
    for res in gone:
        r = ids[res.item_id]
        print(f"      {res.item_id}  {r.person.name}, born {r.person.birth_date}", file=out)
    result = {res.item_id: res for res in results}
    mine = next(i for i, r in ids.items() if r.resident_code == returnee)
    return [
        Expected(
            "nenkin",
            EXISTENCE_CHECK,
            "verify_batch",
            result_label(verification_outcome(result[mine].verification)),
        )
    ]


async def _passport(
    ops: Operators, returnee: municipal_pb2.Resident, out: IO[str]
) -> list[Expected]:
    """外務省's passport office checks an applicant who wrote 渡辺 for 渡邊."""
    passport = ops.agency("mofa-passport")
    surname, given = _split_name(returnee.person.name)
    written = f"{surname.replace('邊', '辺')}{NAME_SEPARATOR}{given}"
    p = returnee.person
    print(
        f"  {agency_name('mofa-passport')}, {PASSPORT}: {written} applies for a passport; "
        "she does not know her resident code and writes 辺 on the form",
        file=out,
    )
    found = await passport.Search(
        gateway_pb2.SearchRequest(
            purpose_code=PASSPORT, name=written, birth_date=p.birth_date, sex=p.sex
        ),
        timeout=_RPC_TIMEOUT,
    )
    for c in found.candidates:
        rec = c.record
        print(
            f"    Search → {rec.name}, born {rec.birth_date}, {rec.address} "
            f"(score {c.score}; fields {', '.join(rec.fields)})",
            file=out,
        )
    verified = await passport.Verify(
        gateway_pb2.VerifyRequest(
            purpose_code=PASSPORT,
            claim=gateway_pb2.ClaimedIdentity(
                name=written, birth_date=p.birth_date, sex=p.sex, address=p.address
            ),
        ),
        timeout=_RPC_TIMEOUT,
    )
    print(f"    Verify → {_items(verified.verification)}", file=out)
    if not verified.verification.found or not found.candidates:
        raise DemoError(f"the passport office could not find {returnee.person.name}")
    return [
        Expected("mofa-passport", PASSPORT, "search", "candidate"),
        Expected(
            "mofa-passport",
            PASSPORT,
            "verify",
            result_label(verification_outcome(verified.verification)),
        ),
    ]


async def _refusals(ops: Operators, code: str, out: IO[str]) -> list[Expected]:
    """Each agency asks for a purpose the registry does not grant it and is refused."""
    asks = (
        ("nenkin", PASSPORT, "verify", "a Verify for the passport office's purpose"),
        ("mofa-passport", EXISTENCE_CHECK, "verify", "a Verify for the pension existence check"),
        ("nenkin", EXISTENCE_CHECK, "retrieve", "her whole record for the existence check"),
    )
    expected = []
    for agency, purpose, operation, what in asks:
        stub = ops.agency(agency)
        try:
            if operation == "retrieve":
                await stub.Retrieve(
                    gateway_pb2.RetrieveRequest(purpose_code=purpose, resident_code=code),
                    timeout=_RPC_TIMEOUT,
                )
            else:
                await stub.Verify(
                    gateway_pb2.VerifyRequest(
                        purpose_code=purpose,
                        claim=gateway_pb2.ClaimedIdentity(resident_code=code),
                    ),
                    timeout=_RPC_TIMEOUT,
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            print(f"  {agency_name(agency)} asks {what}: {describe_error(exc)}", file=out)
            expected.append(Expected(agency, purpose, operation, "denied"))
        else:
            raise DemoError(f"{agency} was given {operation} for {purpose}: the registry is wrong")
    return expected


async def agency_lookups(
    ops: Operators,
    registers: Mapping[str, Sequence[municipal_pb2.Resident]],
    day: DayOfLife,
    out: IO[str],
) -> list[Difference]:
    """The agencies at work, then the returnee's disclosure at her counter.

    Returns how the disclosure differs from the provisions the demo caused
    (nothing, when it lists exactly those).
    """
    returnee = next(r for r in registers[YONAGO] if r.resident_code == day.returnee)
    expected = await _existence_check(ops, registers, day.returnee, out)
    expected += await _passport(ops, returnee, out)
    expected += await _refusals(ops, day.returnee, out)

    print(
        f"\ndisclosure at the {municipality_name(YONAGO)} counter: what the national node holds "
        f"of {returnee.person.name} and every provision of it (本人確認情報の提供状況の開示)",
        file=out,
    )
    disclosed = await ops.municipal[YONAGO].DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=day.returnee), timeout=_RPC_TIMEOUT
    )
    for line in format_disclosure(disclosed, REGISTRY).splitlines():
        print(f"  {line}".rstrip(), file=out)
    return compare_disclosure(day.returnee, expected, disclosed.provisions)


def compare_disclosure(
    resident_code: str, expected: Iterable[Expected], listed: Iterable[provision_pb2.Provision]
) -> list[Difference]:
    """Each provision made but not listed, and each listed but never made."""
    got = Counter(
        Expected(
            p.agency_code, p.purpose_code, operation_label(p.operation), result_label(p.result)
        )
        for p in listed
    )
    want = Counter(expected)
    return [
        Difference(
            "disclosure",
            resident_code,
            f"{what}: {e.agency} {e.purpose} {e.operation} {e.result}",
        )
        for what, diff in (("not listed", want - got), ("listed but never made", got - want))
        for e in sorted(diff.elements(), key=str)
    ]


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


async def _start(
    args: argparse.Namespace,
    fed: LocalFederation,
    counts: Mapping[str, int],
    timings: Timings,
    out: IO[str],
) -> None:
    """PKI and configs, then every node, while the CSV registers are generated."""
    workdir = fed.workdir
    with timings.phase("pki"):
        await fed.prepare()
    print(
        f"PKI: root CA and {len(list(fed.pki_dir.glob('*.pem'))) - 2} certificates "
        f"in {fed.pki_dir}",
        file=out,
    )

    # The CSVs are generated while the nodes start: both take a second or two.
    def make_csvs() -> None:
        for i, code in enumerate(MUNICIPALITIES):
            write_sample(workdir / "import" / f"{code}.csv", code, counts[code], seed=args.seed + i)

    def started(node: Node) -> None:
        print(
            f"started {pad(node.label, 24)}{node.target:<17}"
            f"metrics :{node.metrics_port}  log {node.log_path.relative_to(workdir)}",
            file=out,
            flush=True,
        )

    with timings.phase("start"):
        generating = asyncio.ensure_future(asyncio.to_thread(make_csvs))
        await fed.start_all(on_ready=started)
        await generating


async def _load(
    args: argparse.Namespace,
    ops: Operators,
    workdir: Path,
    counts: Mapping[str, int],
    timings: Timings,
    out: IO[str],
) -> None:
    """The bulk import of each municipality's generated register."""
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
                    ops.supervisor_channel[code],
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


async def _reconcile(
    ops: Operators, day: DayOfLife, out: IO[str]
) -> tuple[dict[str, list[municipal_pb2.Resident]], list[Difference]]:
    """What each tier holds, one moved resident's history, and how the tiers differ
    from the registers; returns the registers and the differences."""
    registers = {c: await export_register(ops.supervisor[c]) for c in MUNICIPALITIES}
    prefectures = {p: await export_holdings(ops.prefecture[p]) for p in PREFECTURES}
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
    return registers, reconcile(registers, tiers)


def _verdict(
    differences: Sequence[Difference], disclosure: Sequence[Difference], out: IO[str]
) -> None:
    """Every difference, then one line per check."""
    print("\nreconciliation", file=out)
    for diff in [*differences, *disclosure]:
        print(f"  {diff.describe()}", file=out)
    if differences:
        print(f"{len(differences)} difference(s) between the tiers and the registers", file=out)
    else:
        print(AGREE, file=out)
    if disclosure:
        print(f"{len(disclosure)} difference(s) in the disclosure", file=out)
    else:
        print(DISCLOSED, file=out)


async def _main(
    args: argparse.Namespace, fed: LocalFederation, timings: Timings, out: IO[str]
) -> int:
    counts = population_split(args.population)
    await _start(args, fed, counts, timings, out)
    ops = Operators(fed)
    try:
        with timings.phase("login"):
            await ops.log_in()
        print(
            "\noperators logged in at the counter terminals (IC card + password): "
            + ", ".join(
                f"{municipality_name(c)} clerk, supervisor, auditor" for c in MUNICIPALITIES
            ),
            file=out,
        )
        await _load(args, ops, fed.workdir, counts, timings, out)

        print(f"\na day of life ({today().isoformat()})", file=out, flush=True)
        with timings.phase("day"):
            day = await day_of_life(ops, args.seed, out)

        print("\nwaiting for the national node to apply every notification", file=out, flush=True)
        with timings.phase("delivery"):
            waited = await watch_delivery(ops, progress=not args.quiet)
        print(f"  every municipal notification applied at national ({waited:.1f} s)", file=out)

        with timings.phase("reconcile"):
            registers, differences = await _reconcile(ops, day, out)

        print(
            "\nnational agencies through the agency gateway, each for a statutory purpose "
            "(住民基本台帳法 別表第一)",
            file=out,
            flush=True,
        )
        with timings.phase("agencies"):
            disclosure = await agency_lookups(ops, registers, day, out)

        with timings.phase("audit"):
            await print_operation_log(ops, out)
            unsound = await verify_logs(fed, out)

        _verdict(differences, disclosure, out)
        if unsound:
            print(f"{unsound} operation log(s) failed verification", file=out)
        else:
            print(LOGS_VERIFIED, file=out)
        print(f"\ndemo took {timings.describe()}", file=out, flush=True)
        if args.keep_running:
            await _keep_running(fed, out)
        return 1 if differences or disclosure or unsound else 0
    finally:
        await ops.close()


LOGS_VERIFIED = "every node's operation log verifies against the heads witnessed upstream"
HEADS_EVERY = {"checkpoint_interval": 1}
"""The demo's nodes sign a head of their log every second (10 s by default): the
day is short, and its end checks each log against a head the tier above holds."""
CARD_CRLS_EVERY = {"card_crl_interval": 1}
"""The demo's nodes exchange resident card CRLs every second (30 s by default): a lost
card is refused in another prefecture within the day's few seconds."""
WITNESS_WAIT = 8.0
"""Seconds the end of the demo waits for a node's newest head to be cosigned upstream."""


async def print_operation_log(ops: Operators, out: IO[str], code: str = TOTTORI) -> None:
    """The clerk's entries in ``code``'s operation log, as its auditor reads them."""
    entries = await read_log(ops.auditor[code], operator_id="clerk")
    shown = entries[-12:]
    print(
        f"\nthe operation log of {municipality_name(code)}: the clerk's last {len(shown)} of "
        f"{len(entries)} entries, read by the auditor (jukinet audit log --operator clerk)",
        file=out,
    )
    for line in log_table(shown):
        print(f"  {line}", file=out)


async def verify_logs(fed: LocalFederation, out: IO[str]) -> int:
    """Verify every node's operation log against the heads held upstream; how many fail.

    The heads travel up at the nodes' intervals: the newest entries may not be
    witnessed yet, which the verifier accepts.
    """
    print("\noperation logs (jukinet audit verify)", file=out)
    unsound = 0
    for node in fed.nodes.values():
        if node.tier not in ("municipal", "prefecture", "national"):
            continue
        kind = {"municipal": MunicipalConfig, "prefecture": PrefectureConfig}.get(
            node.tier, NationalConfig
        )
        # The national log's witnesses are the prefectures.
        prefectures = [fed.nodes[n].target for n in fed.names("prefecture")]
        witnesses = prefectures if node.tier == "national" else []
        config: LoggedNodeConfig = load_config(kind, node.config_path)
        deadline = time.monotonic() + WITNESS_WAIT
        while True:  # until a head is held upstream (the nodes send one a second)
            report = await verify_node(node.tier, config, witnesses=witnesses)
            if not report.ok or "cosigned by" in report.line or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        unsound += not report.ok or "cosigned by" not in report.line
        print(f"  {pad(node.label, 24)}{report.line}", file=out)
    return unsound


async def _keep_running(fed: LocalFederation, out: IO[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("\nthe federation keeps running; Ctrl-C stops it", file=out)
    for n in fed.nodes.values():
        print(
            f"  {pad(n.label, 24)}{n.target:<17}metrics http://127.0.0.1:{n.metrics_port}/",
            file=out,
        )
    m = fed.nodes[f"municipality-{TOTTORI}"]
    nat = fed.nodes["national"]
    gw = fed.nodes["gateway"]
    pki = fed.pki_dir
    print(
        "try (the card PIN is "
        f"{localfed.CARD_PIN}, the password {localfed.PASSWORD}):\n"
        f"  export SOFTHSM2_CONF={fed.softhsm.config}\n"
        f"  jukinet login --target {m.target} --pki {pki} --as {m.operator} "
        f"--card {localfed.card_label(TOTTORI, 'clerk')}\n"
        f"  jukinet resident status --target {m.target} --pki {pki} --as {m.operator}\n"
        f"  jukinet identity status --tier national --target {nat.target} --pki {pki} "
        f"--as {nat.operator}\n"
        f"  jukinet agency verify --purpose {EXISTENCE_CHECK} --code <resident code> "
        f"--target {gw.target} --pki {pki} --as agency-nenkin",
        file=out,
        flush=True,
    )
    await stop.wait()
    print("stopping the federation", file=out, flush=True)


def run_demo(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the demo as the CLI does; returns the exit status.

    0: all tiers agree and the disclosure lists exactly the provisions made;
    1: they disagree; 2: the demo could not run (a node did not start, a call
    failed); 130: interrupted. Every node started is stopped before this
    returns.
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
    fed = LocalFederation(
        workdir,
        MUNICIPALITIES,
        settings={
            tier: {
                "log_level": "INFO",
                **({} if tier == "gateway" else {**HEADS_EVERY, **CARD_CRLS_EVERY}),
            }
            for tier in TIERS
        },
        agencies=AGENCIES,
        gateway=True,
    )
    # SIGTERM (kill, a CI timeout) stops the nodes like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(_main(args, fed, timings, out))
    except KeyboardInterrupt:
        print("\njukinet demo: interrupted; stopping the nodes", file=sys.stderr)
        return 130
    except (DemoError, NodeFailed) as exc:
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
        fed.stop_all(grace=_STOP_GRACE)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the demo: ``python -m tools.demo`` (what ``make demo`` calls)."""
    p = argparse.ArgumentParser(
        prog="python -m tools.demo",
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
    return run_demo(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
