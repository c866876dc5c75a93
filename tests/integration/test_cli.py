"""The ``jukinet`` command against a real federation: agencies verifying,
retrieving and searching through the gateway, bulk verification from CSV, and
the disclosure a municipal counter prints for a resident.

``main(argv)`` runs in a worker thread (it has its own event loop) while the
nodes serve on the test's loop; stdout and stderr are captured."""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import datetime as dt
import io
import json
import os
import re
import socket
import stat
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy.engine import make_url

from jukinet import card, movecert
from jukinet.cli import csvfile
from jukinet.cli import session as sessions
from jukinet.cli.agency import verify_batch
from jukinet.cli.common import in_jst
from jukinet.cli.csvfile import NoBar, progress_bar
from jukinet.cli.main import build_parser, main
from jukinet.client import connect, tls_files
from jukinet.client import one_line as one_line_details
from jukinet.clock import Clock as NodeClock
from jukinet.codes import new_resident_code
from jukinet.config import NationalConfig
from jukinet.db import Database
from jukinet.errors import ConfigError
from jukinet.identity import Identity
from jukinet.metrics import NationalMetrics
from jukinet.purposes import PurposeRegistry, load_registry
from jukinet.server import start_server
from jukinet.textwidth import display_width, table
from jukinet.v1 import common_pb2, municipal_pb2, municipal_pb2_grpc, operator_pb2, provision_pb2
from jukinet.vocabulary import operation_label, operation_of, result_label, result_of
from services.national.app import MIGRATIONS as NATIONAL_MIGRATIONS
from tests.cards import Cards
from tests.federation import (
    CARD_PIN,
    COUNTER_OPERATOR,
    INITIAL_PASSWORD,
    PASSWORD,
    PG_ADMIN_DSN,
    Federation,
    session_options,
)

TIMEOUT = 15
TOTTORI = "312011"
YONAGO = "312029"
ADDRESS_1 = "鳥取県鳥取市東町1丁目220番地"
ADDRESS_2 = "鳥取県鳥取市幸町71番地"
EXISTENCE = "NENKIN-EXISTENCE-CHECK"  # nenkin: verify, verify_batch; status
ADDRESS_CHANGE = "NENKIN-ADDRESS-CHANGE"  # nenkin: verify, retrieve; address
PASSPORT = "MOFA-PASSPORT-ISSUE"  # mofa-passport: verify, retrieve, search
HEADER = ["item_id", "resident_code", "name", "name_kana", "birth_date", "sex", "address"]


@dataclasses.dataclass
class Run:
    """One CLI run: exit code, standard output and standard error."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """Standard output as one JSON document."""
        return json.loads(self.out)

    def json_lines(self) -> list[dict[str, Any]]:
        """Standard output as one JSON document a line."""
        return [json.loads(line) for line in self.out.splitlines()]


@pytest.fixture
async def gw(fed: Federation) -> Federation:
    """The federation with its gateway running."""
    await fed.start_gateway()
    return fed


@pytest.fixture(autouse=True)
def session_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own session folder ($XDG_STATE_HOME), and no JUKINET_SESSION."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv(sessions.SESSION_ENV, raising=False)
    return state / "jukinet"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No JUKINET_* variable of the caller's shell reaches the CLI."""
    for name in ("JUKINET_TARGET", "JUKINET_PKI", "JUKINET_AS"):
        monkeypatch.delenv(name, raising=False)


def _main(argv: Sequence[str]) -> int:
    try:
        return main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


async def jukinet(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run the command as a user would, against the running nodes."""
    capsys.readouterr()
    code = await asyncio.to_thread(_main, argv)
    out, err = capsys.readouterr()
    return Run(code, out, err)


def as_agency(fed: Federation, agency: str) -> list[str]:
    """CLI options to call the gateway as ``agency``."""
    return [
        "--target",
        f"127.0.0.1:{fed.gateway_port}",
        "--pki",
        str(fed.pki_dir),
        "--as",
        f"agency-{agency}",
    ]


def at_counter(fed: Federation, code: str = TOTTORI) -> list[str]:
    """CLI options to call municipality ``code``'s node from its counter terminal desk1,
    in the session of its counter operator (a clerk and supervisor logged in with a
    card; the session file the CLI reads is written here as ``jukinet login`` would)."""
    target = f"127.0.0.1:{fed.municipal_ports[code]}"
    return session_options(target, fed.pki_dir, code, fed.sessions[code])


async def register(
    fed: Federation,
    name: str,
    kana: str,
    birth_date: str,
    sex: common_pb2.Sex.ValueType = common_pb2.SEX_FEMALE,
    address: str = ADDRESS_1,
) -> str:
    """Register a birth at Tottori; the new resident's code."""
    born = await fed.operator(TOTTORI).RegisterBirth(
        municipal_pb2.RegisterBirthRequest(
            person=municipal_pb2.PersonDetails(
                name=name,
                name_kana=kana,
                birth_date=birth_date,
                sex=sex,
                address=address,
            )
        ),
        timeout=TIMEOUT,
    )
    return born.resident.resident_code


def cell_starts(line: str) -> list[int]:
    """The terminal column where each cell of a table line starts (cells are
    separated by two spaces or more)."""
    return [display_width(line[: m.start()]) for m in re.finditer(r"\S+(?: \S+)*", line)]


def write_csv(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> Path:
    """Write ``rows`` under ``header`` as a CSV file at ``path``."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


Provided = tuple[str, str, str, list[str], str]
"""A provision as disclosed: agency, purpose, operation, fields, result."""


async def provisions(
    fed: Federation, capsys: pytest.CaptureFixture[str], code: str
) -> list[Provided]:
    """(agency, purpose, operation, fields, result) of every provision, via the CLI."""
    run = await jukinet(capsys, "resident", "disclose", code, *at_counter(fed))
    assert run.code == 0, run.err
    # The JSON names the wire enums; the expectations use their stored labels.
    return [
        (
            p["agency_code"],
            p["purpose_code"],
            operation_label(provision_pb2.ProvisionOperation.Value(p["operation"])),
            p.get("fields", []),
            result_label(provision_pb2.ProvisionResult.Value(p["result"])),
        )
        for p in run.json().get("provisions", [])
    ]


# --- single requests --------------------------------------------------------------------


async def test_verify_retrieve_and_search(
    gw: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await register(gw, "鳥取　花子", "トットリ　ハナコ", "1960-04-02")
    await gw.wait_delivered()
    nenkin, mofa = as_agency(gw, "nenkin"), as_agency(gw, "mofa-passport")

    run = await jukinet(
        capsys,
        "agency", "verify", "--purpose", EXISTENCE, "--code", code,
        "--name", "鳥取　花子", "--birth-date", "1960-04-02", "--sex", "female",
        *nenkin,
    )  # fmt: skip
    assert run.code == 0, run.err
    answer = run.json()
    assert answer["provision_id"]
    assert answer["verification"] == {
        "found": True,
        "currently_registered": True,
        "resident_code": "ITEM_MATCH_MATCH",
        "name": "ITEM_MATCH_MATCH",
        "birth_date": "ITEM_MATCH_MATCH",
        "sex": "ITEM_MATCH_MATCH",
        "address": "ITEM_MATCH_NOT_CLAIMED",
    }

    # The four items without the code, as the passport office; a wrong birth date.
    run = await jukinet(
        capsys,
        "agency", "verify", "--purpose", PASSPORT, "--name", "鳥取　花子",
        "--birth-date", "1960-04-02", "--sex", "female", "--address", ADDRESS_1,
        *mofa,
    )  # fmt: skip
    assert run.code == 0, run.err
    verification = run.json()["verification"]
    assert verification["found"] is True
    assert verification["address"] == "ITEM_MATCH_MATCH"
    run = await jukinet(
        capsys,
        "agency", "verify", "--purpose", EXISTENCE, "--code", code, "--birth-date", "1960-04-03",
        *nenkin,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.json()["verification"]["birth_date"] == "ITEM_MATCH_NO_MATCH"

    # Retrieve: only the purpose's fields, now and as of a date.
    counter: Any = gw.operator(TOTTORI)
    await counter.Relocate(
        municipal_pb2.RelocateRequest(
            resident_code=code, new_address=ADDRESS_2, effective_date="2025-04-01"
        ),
        timeout=TIMEOUT,
    )
    await gw.wait_delivered()
    run = await jukinet(capsys, "agency", "retrieve", code, "--purpose", ADDRESS_CHANGE, *nenkin)
    assert run.code == 0, run.err
    assert run.json()["record"] == {"address": ADDRESS_2, "fields": ["address"]}
    run = await jukinet(
        capsys,
        "agency", "retrieve", code, "--purpose", PASSPORT, "--as-of", "2025-03-31",
        "--field", "name", "--field", "address",
        *mofa,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.json()["record"] == {
        "name": "鳥取　花子",
        "address": ADDRESS_1,
        "fields": ["name", "address"],
    }

    # Search: a variant kanji finds the same person.
    await register(gw, "髙橋　一郎", "タカハシ　イチロウ", "1970-01-01", common_pb2.SEX_MALE)
    await gw.wait_delivered()
    run = await jukinet(
        capsys,
        "agency", "search", "--purpose", PASSPORT, "--name", "高橋　一郎",
        "--birth-date", "1970-01-01", "--max", "3",
        *mofa,
    )  # fmt: skip
    assert run.code == 0, run.err
    [candidate] = run.json()["candidates"]
    assert candidate["record"]["name"] == "髙橋　一郎"
    assert "resident_code" not in candidate["record"]


async def test_refusals_show_the_status_and_the_reason(
    gw: Federation, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = await register(gw, "米子　太郎", "ヨナゴ　タロウ", "1955-05-05", common_pb2.SEX_MALE)
    await gw.wait_delivered()
    nenkin, mofa = as_agency(gw, "nenkin"), as_agency(gw, "mofa-passport")
    batch = write_csv(tmp_path / "three.csv", [[i, code, "", "", "", "", ""] for i in "abc"])
    one_by_one = ["--batch-size", "1", "--window", "4", "--quiet"]

    cases = [
        (["verify", "--purpose", PASSPORT, "--code", code, *nenkin], "agency-not-allowed"),
        (["retrieve", code, "--purpose", EXISTENCE, *nenkin], "operation-not-allowed"),
        (
            ["retrieve", code, "--purpose", ADDRESS_CHANGE, "--field", "name", *nenkin],
            "field-not-allowed",
        ),
        (["verify", "--purpose", "NO-SUCH-PURPOSE", "--code", code, *nenkin], "unknown-purpose"),
        (
            # Messages of one row, four unanswered at most: the refusal of the
            # first ends the stream, and only it is on record.
            ["verify-batch", str(batch), "--purpose", PASSPORT, *one_by_one, *mofa],
            "operation-not-allowed",
        ),
    ]
    for argv, reason in cases:
        run = await jukinet(capsys, "agency", *argv)
        assert run.code == 1, (argv, run)
        assert run.out == "", argv
        [line] = run.err.splitlines()
        assert line.startswith("jukinet: PERMISSION_DENIED: "), line
        assert f"reason={reason}" in line, line

    # Bad input the gateway refuses names the field.
    run = await jukinet(capsys, "agency", "verify", "--purpose", EXISTENCE, "--name", "x", *nenkin)
    assert run.code == 1
    assert run.err.startswith("jukinet: INVALID_ARGUMENT: ")
    assert "field=claim" in run.err

    # Every refusal is on record for the resident (the unknown purpose too).
    assert [(a, p, o, r) for a, p, o, _, r in await provisions(gw, capsys, code)] == [
        ("nenkin", PASSPORT, "verify", "denied"),
        ("nenkin", EXISTENCE, "retrieve", "denied"),
        ("nenkin", ADDRESS_CHANGE, "retrieve", "denied"),
        ("nenkin", "NO-SUCH-PURPOSE", "verify", "denied"),
        ("mofa-passport", PASSPORT, "verify_batch", "denied"),
    ]


def test_usage_errors_exit_2(
    no_env: None, capsys: pytest.CaptureFixture[str], tmp_path: Path, pki_dir: Path
) -> None:
    # Nothing listens there: every case must fail before connecting.
    target = ["--target", "127.0.0.1:1", "--pki", str(pki_dir), "--as", "agency-nenkin"]
    no_pki = ["--target", "127.0.0.1:1", "--pki", str(tmp_path), "--as", "agency-nenkin"]
    batch = write_csv(tmp_path / "b.csv", [["a", new_resident_code(), "", "", "", "", ""]])
    cases: list[tuple[list[str], str]] = [
        (["agency", "verify", "--code", "12345678903", *target], "--purpose"),
        (["agency", "retrieve", "12345678903", *target], "--purpose"),
        (["agency", "search", "--name", "x", *target], "--purpose"),
        (["agency", "verify-batch", str(batch), *target], "--purpose"),
        (["agency", "verify", "--purpose", EXISTENCE, *target], "claim at least one item"),
        (["agency", "verify", "--purpose", EXISTENCE, "--code", "12345678903"], "--target"),
        (["agency", "retrieve", "12345678903", "--purpose", EXISTENCE], "--target"),
        (["agency", "verify-batch", str(batch), "--purpose", EXISTENCE], "--target"),
        (["resident", "disclose", "12345678903"], "--target"),
        (["agency", "retrieve", "1", "--purpose", EXISTENCE, "--as-of", "2025-13-01", *target],
         "YYYY-MM-DD"),
        (["agency", "retrieve", "1", "--purpose", EXISTENCE, "--field", "nam", *target], "nam"),
        (["agency", "verify-batch", str(batch), "--purpose", EXISTENCE, "--batch-size", "1001",
          *target], "allows at most 1000"),
        (["agency", "verify-batch", str(tmp_path / "none.csv"), "--purpose", EXISTENCE, *target],
         "none.csv"),
        (["agency", "verify", "--purpose", EXISTENCE, "--code", "12345678903", *no_pki],
         "ca.pem: file not found"),
        (["agency", "verify-batch", str(batch), "--purpose", EXISTENCE, *no_pki],
         "ca.pem: file not found"),
    ]  # fmt: skip
    for argv, says in cases:
        capsys.readouterr()
        assert _main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "", argv
        assert says in err, (argv, err)
        assert len(err.splitlines()) == 1, (argv, err)


# --- verify-batch -----------------------------------------------------------------------


async def test_verify_batch_streams_every_row_in_order(
    gw: Federation, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = await register(gw, "倉吉　一美", "クラヨシ　カズミ", "1950-01-01")
    b = await register(gw, "境港　次郎", "サカイミナト　ジロウ", "1951-02-02", common_pb2.SEX_MALE)
    c = await register(gw, "智頭　三枝", "チヅ　サエ", "1952-03-03")
    await gw.wait_delivered()
    nenkin = as_agency(gw, "nenkin")
    unknown = new_resident_code()
    rows = [
        ["A-1", a, "倉吉　一美", "", "1950-01-01", "", ""],  # line 2: match
        ["A-2", b, "", "", "1951-02-03", "male", ""],  # line 3: no-match (birth date)
        ["A-3", "", "智頭　三枝", "チヅ　サエ", "1952-03-03", "女", ADDRESS_1],  # line 4: match
        ["A-4", unknown, "", "", "", "", ""],  # line 5: not found
        [],  # line 6: blank
        ["A-5", a, "", "", "", "2", ""],  # line 7: match
    ]
    path = write_csv(tmp_path / "recipients.csv", rows)
    out = tmp_path / "results.jsonl"

    run = await jukinet(
        capsys,
        "agency", "verify-batch", str(path), "--purpose", EXISTENCE, "--batch-size", "2",
        "--out", str(out),
        *nenkin,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.out == ""
    assert "verified 5 rows in 3 messages (match 3, no-match 1, not-found 1)" in run.err
    # stderr is not a terminal here: no progress bar, so no escape codes in a log.
    assert "\r" not in run.err and "\x1b" not in run.err, run.err
    assert run.err.splitlines() == [run.err.strip()]  # the summary only
    results = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["line"], r["item_id"]) for r in results] == [
        (2, "A-1"),
        (3, "A-2"),
        (4, "A-3"),
        (5, "A-4"),
        (7, "A-5"),
    ]
    found = [r["verification"]["found"] for r in results]
    assert found == [True, True, True, False, True]
    assert results[1]["verification"]["birth_date"] == "ITEM_MATCH_NO_MATCH"
    assert results[1]["verification"]["sex"] == "ITEM_MATCH_MATCH"
    assert results[2]["verification"]["address"] == "ITEM_MATCH_MATCH"
    assert all(r["verification"]["currently_registered"] for r in results if r["line"] != 5)

    # Each row is provided once, to the pension service, for the existence check.
    batch: Provided = ("nenkin", EXISTENCE, "verify_batch", [], "match")
    assert await provisions(gw, capsys, a) == [batch, batch]
    assert await provisions(gw, capsys, b) == [
        ("nenkin", EXISTENCE, "verify_batch", [], "no-match")
    ]
    assert await provisions(gw, capsys, c) == [batch]

    # To stdout, from a line on (as after a failure), without the progress bar.
    run = await jukinet(
        capsys,
        "agency", "verify-batch", str(path), "--purpose", EXISTENCE, "--from-line", "4",
        "--quiet",
        *nenkin,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert [(r["line"], r["item_id"]) for r in run.json_lines()] == [
        (4, "A-3"),
        (5, "A-4"),
        (7, "A-5"),
    ]
    assert run.err.splitlines() == [run.err.strip()]  # the summary only


async def test_verify_batch_sends_nothing_from_a_file_with_bad_rows(
    gw: Federation, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = await register(gw, "岩美　良子", "イワミ　ヨシコ", "1945-06-06")
    await gw.wait_delivered()
    nenkin = as_agency(gw, "nenkin")
    rows = [
        ["B-1", good, "", "", "", "", ""],  # line 2
        ["B-2", good, "", "", "1945-02-30", "", ""],  # line 3: no such date
        ["B-3", good, "", "", "", "x", ""],  # line 4: unknown sex
        ["B-4", "", "岩美　良子", "", "", "", ""],  # line 5: neither code nor birth date
        ["B-5", good, ""],  # line 6: too few fields
        ["", good, "", "", "", "", ""],  # line 7: no item id
        ["B-7", "12345678901", "", "", "", "", ""],  # line 8: bad check digit
        ["B-8", good, "", "", "", "", ""],  # line 9
    ]
    path = write_csv(tmp_path / "bad.csv", rows)
    run = await jukinet(
        capsys, "agency", "verify-batch", str(path), "--purpose", EXISTENCE, *nenkin
    )
    assert run.code == 2
    assert run.out == ""
    reported = [line.strip() for line in run.err.splitlines() if line.startswith("  line ")]
    assert [r.split(":")[0] for r in reported] == [
        "line 3 (B-2)",
        "line 4 (B-3)",
        "line 5 (B-4)",
        "line 6 (B-5)",
        "line 7",
        "line 8 (B-7)",
    ]
    assert reported[0].startswith("line 3 (B-2): birth_date: ")
    assert reported[1].startswith("line 4 (B-3): sex: ")
    assert reported[2].startswith("line 5 (B-4): claim: ")
    assert reported[3].startswith("line 6 (B-5): columns: ")
    assert reported[4].startswith("line 7: item_id: ")
    assert reported[5].startswith("line 8 (B-7): resident_code: ")
    assert "6 bad row(s) of 8" in run.err
    assert "nothing was sent" in run.err

    # A header the format does not know is refused before anything else.
    odd = write_csv(tmp_path / "odd.csv", [["C-1", good, "", ""]], ["item_id", "code", "x", "y"])
    run = await jukinet(capsys, "agency", "verify-batch", str(odd), "--purpose", EXISTENCE, *nenkin)
    assert run.code == 2
    assert "unknown column(s) 'code', 'x', 'y'" in run.err

    # Nothing reached the national node.
    assert await provisions(gw, capsys, good) == []

    # Sending unchecked (the file changed after the check): the rows before the
    # first bad one are verified, nothing from it on is sent.
    out = io.StringIO()
    channel = gw.channel(gw.gateway_port, "agency-nenkin")
    summary = await verify_batch(channel, path, EXISTENCE, out, batch_size=1, progress=False)
    assert summary.bad_row is not None
    assert summary.bad_row.describe().startswith("line 3 (B-2): birth_date: ")
    assert (summary.rows, summary.resume_line) == (1, 3)
    assert [json.loads(line)["item_id"] for line in out.getvalue().splitlines()] == ["B-1"]
    assert await provisions(gw, capsys, good) == [
        ("nenkin", EXISTENCE, "verify_batch", [], "match")
    ]


class Clock:
    """The gateway's quota clock, moved by hand: the buckets refill only when
    the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds


async def ticking(clock: Clock, every: float, by: float) -> None:
    """Advance ``clock`` by ``by`` every ``every`` real seconds, until cancelled."""
    while True:
        await asyncio.sleep(every)
        clock.advance(by)


async def test_verify_batch_waits_out_an_exhausted_quota_and_resumes(
    fed: Federation, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # One token in the bucket, 64 a second: the gateway asks to retry after 16 ms.
    # (Whole tokens are exact in binary: the clock moves by 1/64 s.)
    packaged = load_registry()
    registry = PurposeRegistry(
        dataclasses.replace(p, quota=dataclasses.replace(p.quota, burst=1, requests_per_second=64))
        if p.code == EXISTENCE
        else p
        for p in packaged
    )
    clock = Clock()
    await fed.start_gateway(registry=registry, clock=clock)
    codes = [
        await register(fed, f"若桜　{given}", "ワカサ", f"19{40 + i}-07-07")
        for i, given in enumerate(["一子", "二子", "三子", "四子", "五子", "六子"])
    ]
    await fed.wait_delivered()
    path = write_csv(
        tmp_path / "q.csv", [[f"Q-{i}", c, "", "", "", "", ""] for i, c in enumerate(codes)]
    )
    argv = [
        "agency", "verify-batch", str(path), "--purpose", EXISTENCE, "--batch-size", "1",
        "--quiet", *as_agency(fed, "nenkin"),
    ]  # fmt: skip

    # A token every 60 ms, one message at a time: messages are refused and
    # sent again after the wait the gateway asks for.
    ticker = asyncio.create_task(ticking(clock, every=0.06, by=1 / 64))
    try:
        run = await jukinet(capsys, *argv)
    finally:
        ticker.cancel()
    assert run.code == 0, run.err
    assert [r["item_id"] for r in run.json_lines()] == [f"Q-{i}" for i in range(6)]
    assert "quota waits" in run.err

    # A quota that does not come back (one token, then the clock stands still):
    # the command gives up, naming the line to go on from.
    clock.advance(1)
    run = await jukinet(capsys, *argv)
    assert run.code == 1
    assert [r["item_id"] for r in run.json_lines()] == ["Q-0"]
    first, second = run.err.splitlines()
    assert first.startswith("jukinet: RESOURCE_EXHAUSTED: "), first
    assert "reason=quota-exceeded" in first
    assert "every row before line 3" in second
    assert "--from-line 3" in second

    clock.advance(1)
    ticker = asyncio.create_task(ticking(clock, every=0.06, by=1 / 64))
    try:
        run = await jukinet(capsys, *argv, "--from-line", "3")
    finally:
        ticker.cancel()
    assert run.code == 0, run.err
    assert [r["item_id"] for r in run.json_lines()] == [f"Q-{i}" for i in range(1, 6)]

    # Neither waiting out the quota nor resuming verified a row twice.
    for code in codes:
        assert (
            await provisions(fed, capsys, code)
            == [("nenkin", EXISTENCE, "verify_batch", [], "match")] * 2
        )


# --- disclosure -------------------------------------------------------------------------


async def test_disclose_lists_exactly_the_provisions_made(
    gw: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await register(gw, "鳥取　花子", "トットリ　ハナコ", "1960-04-02")
    other = await register(gw, "鳥取　桃子", "トットリ　モモコ", "1961-04-02")
    await gw.wait_delivered()
    nenkin, mofa = as_agency(gw, "nenkin"), as_agency(gw, "mofa-passport")
    calls = [
        (["verify", "--purpose", EXISTENCE, "--code", code, *nenkin], 0),
        (["verify", "--purpose", EXISTENCE, "--code", code, "--sex", "male", *nenkin], 0),
        (["retrieve", code, "--purpose", ADDRESS_CHANGE, *nenkin], 0),
        (["retrieve", code, "--purpose", PASSPORT, *nenkin], 1),
        (["retrieve", code, "--purpose", PASSPORT, "--field", "name", *mofa], 0),
        (["verify", "--purpose", EXISTENCE, "--code", other, *nenkin], 0),
    ]
    for argv, status in calls:
        run = await jukinet(capsys, "agency", *argv)
        assert run.code == status, (argv, run.err)

    expected = [
        ("nenkin", EXISTENCE, "verify", [], "match"),
        ("nenkin", EXISTENCE, "verify", [], "no-match"),
        ("nenkin", ADDRESS_CHANGE, "retrieve", ["address"], "provided"),
        ("nenkin", PASSPORT, "retrieve", [], "denied"),
        ("mofa-passport", PASSPORT, "retrieve", ["name"], "provided"),
    ]
    run = await jukinet(capsys, "resident", "disclose", code, *at_counter(gw))
    assert run.code == 0, run.err
    disclosed = run.json()
    assert disclosed["identity"]["record"]["name"] == "鳥取　花子"
    assert disclosed["identity"]["status"] == "RECORD_STATUS_ACTIVE"
    # The JSON names the wire enums; the table below shows their labels.
    assert [
        (p["agency_code"], p["purpose_code"], p["operation"], p.get("fields", []), p["result"])
        for p in disclosed["provisions"]
    ] == [
        (
            agency,
            purpose,
            provision_pb2.ProvisionOperation.Name(operation_of(operation)),
            fields,
            provision_pb2.ProvisionResult.Name(result_of(result)),
        )
        for agency, purpose, operation, fields, result in expected
    ]
    assert all(p["resident_code"] == code for p in disclosed["provisions"])

    # The table the clerk prints: the record, then one line per provision.
    run = await jukinet(capsys, "resident", "disclose", code, "--format", "table", *at_counter(gw))
    assert run.code == 0, run.err
    text = run.out
    assert "鳥取　花子 (トットリ　ハナコ)" in text
    assert "312011 鳥取県鳥取市" in text
    lines = text.splitlines()
    [head] = [i for i, line in enumerate(lines) if line.split()[:2] == ["when", "(JST)"]]
    body = lines[head + 2 : head + 2 + len(expected)]
    assert lines[head + 1].strip().startswith("---")
    for line, (agency, purpose, operation, fields, result) in zip(body, expected, strict=True):
        cells = line.split()
        assert cells[2:5] == [agency, purpose, operation], line
        assert cells[-1] == result, line
        assert (", ".join(fields) or "-") in line
    # Columns line up: each cell starts where its header does.
    for line in body:
        assert cell_starts(line) == cell_starts(lines[head]), line
    assert "一般旅券の発給に関する事務" in text  # the purposes' tasks, for the resident

    # Disclosure of a record never provided says so.
    fresh = await register(gw, "鳥取　梅子", "トットリ　ウメコ", "1962-04-02")
    await gw.wait_delivered()
    run = await jukinet(capsys, "resident", "disclose", fresh, "--format", "table", *at_counter(gw))
    assert run.code == 0, run.err
    assert "No provision of this record to any agency." in run.out

    # Only the municipality's operators may ask; an agency may not, even holding
    # an operator's session token.
    target = f"127.0.0.1:{gw.municipal_ports[TOTTORI]}"
    as_nenkin = session_options(target, gw.pki_dir, TOTTORI, gw.sessions[TOTTORI], "agency-nenkin")
    run = await jukinet(capsys, "resident", "disclose", code, *as_nenkin)
    assert run.code == 1
    assert run.err.startswith("jukinet: PERMISSION_DENIED")


def test_table_lines_up_wide_and_zero_width_characters() -> None:
    # 葛󠄀 is 葛 with an ideographic variation selector: two columns, not three.
    assert display_width("鳥取　花子") == 10
    assert display_width("葛\U000e0100城") == 4
    assert display_width("ｶﾅ abc") == 6
    lines = table(["name", "x"], [["葛\U000e0100城", "1"], ["abc", "2"]])
    assert lines == ["name  x", "----  -", "葛\U000e0100城  1", "abc   2"]


# --- what a user sees when something is wrong --------------------------------------------


def one_line(run: Run) -> str:
    """The single line of stderr (fails if there are more)."""
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    return lines[0]


async def test_the_wrong_tier_says_who_answers_there(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = ["--pki", str(fed.pki_dir)]
    national = f"127.0.0.1:{fed.national_port}"
    municipal = f"127.0.0.1:{fed.municipal_ports[TOTTORI]}"
    # A counter terminal's session sent to the national node by mistake.
    run = await jukinet(
        capsys, "resident", "status", *session_options(national, fed.pki_dir, TOTTORI, "token")
    )
    assert run.code == 1
    line = one_line(run)
    assert line == (
        f"jukinet: UNIMPLEMENTED: {national} is the national node, not a municipal node; "
        "point --target at a municipal node"
    )
    code = new_resident_code()
    run = await jukinet(
        capsys, "identity", "show", code, "--tier", "national", "--target", municipal, *pki,
        "--as", f"operator-{TOTTORI}-admin",
    )  # fmt: skip
    assert run.code == 1
    assert f"{municipal} is a municipal node, not the national node" in one_line(run)
    prefecture = f"127.0.0.1:{fed.prefecture_ports['31']}"
    run = await jukinet(
        capsys, "identity", "status", "--tier", "national", "--target", prefecture, *pki,
        "--as", "operator-31-admin",
    )  # fmt: skip
    assert run.code == 1
    assert f"{prefecture} is a prefecture node, not the national node" in one_line(run)


async def test_bad_input_names_the_option_typed(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await register(fed, "倉吉　一美", "クラヨシ　カズミ", "1950-01-01")
    cases = [
        (["move-out", code, "--to", "1310", "--date", "2026-11-27"], "--to: must be 6 digits"),
        (["relocate", code, "--address", "", "--date", "2026-11-27"], "--address: "),
        (["death", code, "--date", "2026-02-30"], "--date: "),
        (["show", "123"], "the resident code: must be 11 digits"),
        (
            ["move-in", "--origin", "domestic", "--code", code, "--previous", "999999",
             "--name", "倉吉　一美", "--birth-date", "1950-01-01", "--sex", "female",
             "--address", ADDRESS_1, "--date", "2026-11-27"],
            "--previous: ",
        ),
        (
            ["birth", "--name", "倉吉　一美", "--kana", "kurayoshi", "--birth-date", "2026-01-01",
             "--sex", "female", "--address", ADDRESS_1],
            "--kana: must be written in kana",
        ),
    ]  # fmt: skip
    for argv, says in cases:
        run = await jukinet(capsys, "resident", *argv, *at_counter(fed))
        assert run.code == 1, (argv, run)
        line = one_line(run)
        assert line.startswith("jukinet: INVALID_ARGUMENT: "), line
        assert says in line, (argv, line)
        # The proto's field names stay out of it.
        assert "field=" not in line and "_code" not in line, line


async def test_an_unreachable_node_is_one_line(
    no_env: None, capsys: pytest.CaptureFixture[str], pki_dir: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    target = f"127.0.0.1:{port}"
    run = await jukinet(
        capsys, "resident", "status", *session_options(target, pki_dir, TOTTORI, "token")
    )
    assert run.code == 1
    assert one_line(run).startswith("jukinet: UNAVAILABLE: ")


async def test_a_nested_rpc_error_is_reduced_to_its_details(pki_dir: Path) -> None:
    """A node that words an upstream failure with the AioRpcError itself sends
    a five-line dump; the CLI shows its details on one line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = connect(f"127.0.0.1:{port}", pki_dir, f"terminal-{TOTTORI}-desk1")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await municipal_pb2_grpc.MunicipalServiceStub(channel).GetStatus(
                municipal_pb2.GetMunicipalStatusRequest(), timeout=TIMEOUT
            )
    finally:
        await channel.close(None)
    dump = str(info.value)
    assert len(dump.splitlines()) >= 4 and "debug_error_string" in dump
    shown = one_line_details(f"the pool is short and the prefecture could not be reached: {dump}")
    assert "\n" not in shown and "AioRpcError" not in shown and "debug_error_string" not in shown
    assert shown == (
        "the pool is short and the prefecture could not be reached: "
        + " ".join((info.value.details() or "").split())
    )


async def test_times_are_shown_in_jst(fed: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    code = await register(fed, "倉吉　一美", "クラヨシ　カズミ", "1950-01-01")
    run = await jukinet(capsys, "resident", "show", code, *at_counter(fed))
    assert run.code == 0, run.err
    [notification] = run.json()["notifications"]
    recorded = notification["recorded_at"]
    assert recorded.endswith("+09:00"), recorded
    # The same instant as the UTC the node keeps.
    assert dt.datetime.fromisoformat(recorded).utcoffset() == dt.timedelta(hours=9)
    assert in_jst("2026-11-27T00:30:00Z") == "2026-11-27T09:30:00+09:00"
    assert in_jst("2026-11-27") == "2026-11-27"  # a date is not a time


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


def test_help_is_plain_text() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) > 20
    for parser in parsers:
        text = parser.format_help()
        assert "``" not in text, (parser.prog, text)
        assert not re.search(r":[a-z]+:`", text), (parser.prog, text)
        assert not re.search(r"::\s*$", text, re.M), (parser.prog, text)


def test_progress_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar("x", enabled=True), NoBar)
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        bar = progress_bar("x", enabled=True)
        assert not isinstance(bar, NoBar)
        bar.close()
        assert isinstance(progress_bar("x", enabled=False), NoBar)
    os.close(leader)


def test_without_tqdm_a_bar_is_one_line_of_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    leader, follower = os.openpty()
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as on `pip install .`
    monkeypatch.setattr(csvfile, "_hinted", False)
    try:
        with os.fdopen(follower, "w") as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            first = progress_bar("x", enabled=True)
            second = progress_bar("y", enabled=True)
            assert isinstance(first, NoBar) and isinstance(second, NoBar)
            first.update(5)
            assert first.n == 5
        said = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
    assert said.splitlines() == [f"jukinet: {csvfile.INSTALL_HINT}"]
    assert "pip install 'jukinet[cli]'" in said


# --- a node that cannot start says why in one line ----------------------------------------


def _national_config(tmp_path: Path, pki_dir: Path, listen: str, database_url: str) -> Path:
    path = tmp_path / "national.toml"
    path.write_text(
        f'listen = "{listen}"\n'
        f'database_url = "{database_url}"\n'
        "[tls]\n"
        f'ca = "{pki_dir / "ca.pem"}"\n'
        f'cert = "{pki_dir / "national.pem"}"\n'
        f'key = "{pki_dir / "national.key"}"\n',
        encoding="utf-8",
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_fails(capsys: pytest.CaptureFixture[str], config: Path, tier: str = "national") -> str:
    """``jukinet run`` in this thread (a node sets signal handlers): its one line."""
    capsys.readouterr()
    code = _main(["run", tier, "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    line = one_line(Run(code, out, err))
    assert line.startswith(f"jukinet {tier}: "), line
    return line.removeprefix(f"jukinet {tier}: ")


def test_bad_database_urls_stop_a_node_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki_dir: Path
) -> None:
    listen = f"127.0.0.1:{_free_port()}"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    cases = [
        ("mysql://x/y", "database_url: must start with sqlite+aiosqlite:// or postgresql"),
        (f"sqlite+aiosqlite:///{blocker}/sub/x.db", "database_url: cannot create the folder"),
        (f"sqlite+aiosqlite:///{blocker}", "database_url: cannot open the SQLite file"),
        (
            f"postgresql+asyncpg://postgres@127.0.0.1:{_free_port()}/x",
            "database_url: cannot reach the PostgreSQL server at 127.0.0.1:",
        ),
        (
            "postgresql+asyncpg://postgres@no-such-host.invalid:5432/x",
            "database_url: cannot reach the PostgreSQL server at no-such-host.invalid:5432",
        ),
    ]  # fmt: skip
    for url, says in cases:
        line = _start_fails(capsys, _national_config(tmp_path, pki_dir, listen, url))
        assert line.startswith(says), (url, line)


def test_a_missing_certificate_or_a_taken_metrics_port_is_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    pki_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = tmp_path / "var" / "national.db"
    config = _national_config(
        tmp_path, pki_dir, f"127.0.0.1:{_free_port()}", f"sqlite+aiosqlite:///{database}"
    )
    monkeypatch.setenv("JUKINET_TLS_CERT", str(tmp_path / "nope.pem"))
    assert _start_fails(capsys, config) == f"tls.cert: {tmp_path / 'nope.pem'}: file not found"
    monkeypatch.delenv("JUKINET_TLS_CERT")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = f"127.0.0.1:{taken.getsockname()[1]}"
        monkeypatch.setenv("JUKINET_METRICS_LISTEN", metrics)
        line = _start_fails(capsys, config)
    assert line == f"metrics_listen: {metrics} is already in use (is another node running there?)"
    assert not database.exists()  # both found before the database was touched


@pytest.mark.postgres
def test_a_missing_postgresql_database_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki_dir: Path, pg_available: None
) -> None:
    server = make_url(PG_ADMIN_DSN)
    name = f"jukinet_missing_{uuid.uuid4().hex[:8]}"
    url = server.set(drivername="postgresql+asyncpg", database=name).render_as_string(False)
    config = _national_config(tmp_path, pki_dir, f"127.0.0.1:{_free_port()}", url)
    line = _start_fails(capsys, config)
    assert line.startswith(f"database_url: PostgreSQL at {server.host}:"), line
    assert f'database "{name}" does not exist; create it first' in line, line


async def test_a_missing_sqlite_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "var" / "deeper" / "national.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await db.migrate(NATIONAL_MIGRATIONS)
    finally:
        await db.close()
    assert path.is_file()


async def test_a_taken_port_stops_a_second_node_with_one_line(
    fed: Federation, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The federation's national node serves there (with gRPC's own socket options).
    listen = f"127.0.0.1:{fed.national_port}"
    database = tmp_path / "second" / "national.db"
    config = _national_config(tmp_path, fed.pki_dir, listen, f"sqlite+aiosqlite:///{database}")
    line = await asyncio.to_thread(_start_fails, capsys, config)
    assert line == f"listen: {listen} is already in use (is another node running there?)"
    assert not database.exists()  # refused before touching a database


async def test_nodes_refuse_to_share_a_port(pki_dir: Path) -> None:
    """Two grpc servers on one port: gRPC's SO_REUSEPORT default would let the
    second bind it too; a node's server refuses."""
    listen = f"127.0.0.1:{_free_port()}"
    first = grpc.aio.server()
    first.add_insecure_port(listen)
    await first.start()
    try:
        config = NationalConfig(
            listen=listen,
            database_url="sqlite+aiosqlite:///unused.db",
            tls=tls_files(pki_dir, "national"),
        )
        with pytest.raises(ConfigError, match=f"listen: {re.escape(listen)} is already in use"):
            await start_server(
                config=config,
                rules={},
                register=lambda server: None,
                service_names=[],
                metrics=NationalMetrics(),
            )
    finally:
        await first.stop(None)


# --- the move-out certificate -------------------------------------------------------


def at(fed: Federation, municipality: str) -> list[str]:
    """CLI options to call a municipal node from its counter terminal, in session."""
    return at_counter(fed, municipality)


async def test_a_move_through_the_certificate_file(
    fed: Federation, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = await register(fed, "倉吉　一美", "クラヨシ　カズミ", "1950-01-01")
    issued = tmp_path / "move-out.cert"
    out = await jukinet(
        capsys,
        "resident",
        "move-out",
        code,
        "--to",
        YONAGO,
        "--date",
        "2026-11-27",
        "--certificate-out",
        str(issued),
        *at_counter(fed),
    )
    assert out.code == 0, out.err
    signed = movecert.dearmor(issued.read_text(encoding="utf-8"))
    assert out.out.strip() == movecert.document(
        common_pb2.MoveOutCertificate.FromString(signed.certificate)
    )
    assert f"住民票コード: {code}" in out.out and f"転出先: {YONAGO}" in out.out

    # Lost: the old municipality re-issues it, same contents.
    again = tmp_path / "again.cert"
    reissued = await jukinet(
        capsys,
        "resident",
        "reissue-certificate",
        code,
        "--certificate-out",
        str(again),
        *at_counter(fed),
    )
    assert reissued.code == 0, reissued.err
    assert reissued.out == out.out
    assert movecert.dearmor(again.read_text(encoding="utf-8")).certificate == signed.certificate
    as_json = await jukinet(
        capsys, "resident", "reissue-certificate", code, "--format", "json", *at_counter(fed)
    )
    assert as_json.code == 0 and "certificate" in as_json.json(), as_json

    moved = await jukinet(
        capsys,
        "resident",
        "move-in",
        "--certificate",
        str(again),
        "--address",
        "鳥取県米子市加茂町1丁目1番地",
        "--date",
        "2026-11-28",
        *at(fed, YONAGO),
    )
    assert moved.code == 0, moved.err
    resident = moved.json()["resident"]
    assert (resident["resident_code"], resident["local_government_code"]) == (code, YONAGO)
    assert resident["person"]["name"] == "倉吉　一美"

    # Used: the original file is refused now, in one line.
    replay = await jukinet(
        capsys,
        "resident",
        "move-in",
        "--certificate",
        str(issued),
        "--address",
        "鳥取県米子市加茂町1丁目1番地",
        "--date",
        "2026-11-28",
        *at(fed, YONAGO),
    )
    assert replay.code == 1
    assert one_line(replay).startswith("jukinet: "), replay.err
    assert "move-out-certificate-" in replay.err


async def test_a_move_in_without_a_readable_certificate_is_one_line(
    fed: Federation, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.cert"
    damaged.write_text(f"{movecert.ARMOR_BEGIN}\nnot base64!\n{movecert.ARMOR_END}\n")
    binary = tmp_path / "binary.cert"
    binary.write_bytes(b"\xff\xfe\x00")
    common = ["--address", "鳥取県米子市加茂町1丁目1番地", "--date", "2026-11-28", *at(fed, YONAGO)]
    for path, says in (
        (tmp_path / "absent.cert", "file not found"),
        (damaged, "damaged"),
        (binary, "not a move-out certificate file"),
        (tmp_path, "cannot read"),
    ):
        run = await jukinet(capsys, "resident", "move-in", "--certificate", str(path), *common)
        assert run.code == 2, (path, run)
        line = one_line(run)
        assert line.startswith(f"jukinet: --certificate: {path}: "), line
        assert says in line, line
    missing = await jukinet(capsys, "resident", "move-in", *common)
    assert missing.code == 1
    line = one_line(missing)
    assert line.startswith("jukinet: INVALID_ARGUMENT: --certificate: "), line
    assert "move-out-certificate-missing" in line, line


async def test_households_at_the_counter(
    fed: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    person = ["--birth-date", "1980-01-02", "--sex", "male", "--address", ADDRESS_1]
    head = await jukinet(
        capsys,
        "resident",
        "enter",
        "--name",
        "鳥取 一郎",
        *person,
        "--date",
        "2024-01-01",
        "--domicile",
        "鳥取県鳥取市本籍1番地",
        "--domicile-head",
        "鳥取 一郎",
        *at_counter(fed),
    )
    assert head.code == 0, head.err
    household = head.json()["resident"]["household_id"]
    head_code = head.json()["resident"]["resident_code"]
    child = await jukinet(
        capsys,
        "resident",
        "birth",
        "--name",
        "鳥取 二郎",
        "--birth-date",
        "2024-05-06",
        "--sex",
        "male",
        "--address",
        ADDRESS_1,
        "--household",
        household,
        "--relationship",
        "child",
        *at_counter(fed),
    )
    assert child.code == 0, child.err
    child_code = child.json()["resident"]["resident_code"]
    shown = await jukinet(capsys, "resident", "household", "show", child_code, *at_counter(fed))
    assert shown.code == 0, shown.err
    got = shown.json()["household"]
    assert got["household_id"] == household
    assert got["head_resident_code"] == head_code
    assert [(m["resident_code"], m["relationship"]) for m in got["members"]] == [
        (head_code, "RELATIONSHIP_HEAD"),
        (child_code, "RELATIONSHIP_CHILD"),
    ]
    moved = await jukinet(
        capsys,
        "resident",
        "household",
        "change",
        child_code,
        "--new",
        "--date",
        "2024-06-01",
        *at_counter(fed),
    )
    assert moved.code == 0, moved.err
    assert moved.json()["household"]["head_resident_code"] == child_code
    refused = await jukinet(
        capsys,
        "resident",
        "household",
        "change",
        head_code,
        "--relationship",
        "head",
        "--member",
        f"{child_code}=child",
        "--date",
        "2024-06-02",
        *at_counter(fed),
    )
    assert refused.code == 1
    assert "INVALID_ARGUMENT: --relationship:" in refused.err, refused.err
    assert "is the head" in refused.err, refused.err
    by_id = await jukinet(
        capsys, "resident", "household", "show", household, "--id", *at_counter(fed)
    )
    assert [m["resident_code"] for m in by_id.json()["household"]["members"]] == [head_code]


# --- operator cards: issued on the card, revoked in the operator CA's CRL --------------


def test_card_issue_show_and_revoke(
    cards: Cards, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from jukinet import card as card_module
    from jukinet import pki as pki_module
    from tests.cards import PIN

    monkeypatch.setenv("JUKINET_CARD_PIN", PIN)
    cards.blank("t.tanaka")
    code = _main(
        [
            "card",
            "issue",
            "--pki",
            str(cards.pki),
            "--operator",
            "312011/t.tanaka",
            "--card",
            "t.tanaka",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "issued the card of jukinet://operator/312011/t.tanaka" in out
    with card_module.open_card(card_module.load_module(), PIN, label="t.tanaka") as c:
        assert c.identity.uri == "jukinet://operator/312011/t.tanaka"
        serial = c.certificate.serial_number
    assert _main(["card", "show", "--card", "t.tanaka"]) == 0
    assert "jukinet://operator/312011/t.tanaka" in capsys.readouterr().out

    # A card that holds a key already is refused, and nothing changes on it.
    assert (
        _main(
            [
                "card",
                "issue",
                "--pki",
                str(cards.pki),
                "--operator",
                "312011/t.tanaka",
                "--card",
                "t.tanaka",
            ]
        )
        == 1
    )
    assert "holds a key already" in capsys.readouterr().err

    assert _main(["card", "revoke", "--pki", str(cards.pki), "--operator", "312011/t.tanaka"]) == 0
    assert f"serial {serial:x}" in capsys.readouterr().out
    crl = pki_module.operator_ca_dir(cards.pki, "312011") / pki_module.CRL_FILE
    assert serial in pki_module.load_revoked_serials(crl)


def test_card_commands_refuse_bad_input(
    cards: Cards, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.cards import PIN

    monkeypatch.setenv("JUKINET_CARD_PIN", PIN)
    # Not an operator.
    assert (
        _main(["card", "revoke", "--pki", str(cards.pki), "--operator", "municipality/312011"]) == 2
    )
    capsys.readouterr()
    # No card in the reader with that label.
    cards.blank("other")
    assert (
        _main(
            ["card", "issue", "--pki", str(cards.pki), "--operator", "312011/x.y", "--card", "none"]
        )
        == 1
    )
    assert "no card labelled 'none'" in capsys.readouterr().err
    # A wrong PIN.
    monkeypatch.setenv("JUKINET_CARD_PIN", "000000")
    assert (
        _main(
            [
                "card",
                "issue",
                "--pki",
                str(cards.pki),
                "--operator",
                "312011/x.y",
                "--card",
                "other",
            ]
        )
        == 1
    )
    assert "wrong PIN" in capsys.readouterr().err


def test_no_session_says_to_log_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code = _main(
        [
            "resident",
            "status",
            "--target",
            "127.0.0.1:1",
            "--pki",
            str(tmp_path),
            "--as",
            "terminal-312011-desk1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "log in first: jukinet login --target 127.0.0.1:1 --pki "
        f"{tmp_path} --as terminal-312011-desk1" in err
    )


# --- the counter's session: jukinet login, whoami, passwd, logout ----------------------

CLERK = operator_pb2.ROLE_CLERK
AUDITOR = operator_pb2.ROLE_AUDITOR
ADMINISTRATOR = operator_pb2.ROLE_ADMINISTRATOR


@pytest.fixture
def reader(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> Federation:
    """The CLI reads the federation's SoftHSM2 cards, PIN from the environment."""
    assert fed.cards is not None
    monkeypatch.setenv("SOFTHSM2_CONF", str(fed.cards.hsm.config))
    monkeypatch.setenv("JUKINET_CARD_PIN", CARD_PIN)
    for name in ("JUKINET_PASSWORD", "JUKINET_NEW_PASSWORD", "JUKINET_INITIAL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return fed


def desk(fed: Federation, terminal: str = "desk2", code: str = TOTTORI) -> list[str]:
    """CLI options of ``code``'s counter terminal ``terminal`` (its session file: the default)."""
    return [
        "--target",
        f"127.0.0.1:{fed.municipal_ports[code]}",
        "--pki",
        str(fed.pki_dir),
        "--as",
        f"terminal-{code}-{terminal}",
    ]


async def issue_card(fed: Federation, operator_id: str, roles: Sequence[int]) -> str:
    """Enroll ``operator_id`` at Tottori (initial password) and put their card in the
    reader; the card's label."""
    assert fed.cards is not None
    await fed.enroll(TOTTORI, operator_id, roles)
    label = fed.cards.card(Identity.operator(TOTTORI, operator_id)).label
    card.rescan()  # the CLI sees the new card
    return label


async def first_login(
    fed: Federation,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    operator_id: str,
    roles: Sequence[int],
    terminal: str = "desk2",
) -> Run:
    """``operator_id``'s first ``jukinet login`` (changing the initial password) at
    ``terminal``."""
    label = await issue_card(fed, operator_id, roles)
    monkeypatch.setenv("JUKINET_PASSWORD", INITIAL_PASSWORD)
    monkeypatch.setenv("JUKINET_NEW_PASSWORD", PASSWORD)
    run = await jukinet(capsys, "login", "--card", label, *desk(fed, terminal))
    monkeypatch.delenv("JUKINET_NEW_PASSWORD")
    monkeypatch.setenv("JUKINET_PASSWORD", PASSWORD)
    assert run.code == 0, run.err
    return run


def listing(folder: Path) -> list[Path]:
    """The files in ``folder`` (hidden ones too)."""
    return sorted(folder.iterdir())


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


async def test_login_whoami_passwd_and_logout(
    reader: Federation,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    session_folder: Path,
) -> None:
    fed = reader
    # The first login: the enrolled password has to be changed, and is.
    run = await first_login(fed, capsys, monkeypatch, "t.tanaka", [CLERK])
    assert "the password has expired" in run.err
    assert "logged in: jukinet://operator/312011/t.tanaka at jukinet://terminal/312011/desk2" in (
        run.out
    )
    assert "(roles: clerk)" in run.out
    [saved] = listing(session_folder)  # and no temporary file left beside it
    assert f"session kept in {saved}" in run.out
    assert mode(session_folder) == 0o700
    assert mode(saved) == 0o600

    who = await jukinet(capsys, "whoami", *desk(fed))
    assert who.code == 0, who.err
    assert who.json()["operator"] == "jukinet://operator/312011/t.tanaka"
    assert who.json()["terminal"] == "jukinet://terminal/312011/desk2"
    assert who.json()["roles"] == ["ROLE_CLERK"]
    local = await jukinet(capsys, "whoami", "--local", *desk(fed))
    assert local.out.startswith("jukinet://operator/312011/t.tanaka at "), local
    # Every counter command uses the session.
    status = await jukinet(capsys, "resident", "status", *desk(fed))
    assert status.code == 0, status.err

    # A session file others may read is refused, and not sent.
    saved.chmod(0o640)
    unsafe = await jukinet(capsys, "resident", "status", *desk(fed))
    assert unsafe.code == 2
    assert f"session file {saved} may be read by others (mode 0640): refused" in unsafe.err
    saved.chmod(0o600)

    # passwd: the current password, then the new one.
    monkeypatch.setenv("JUKINET_NEW_PASSWORD", "Karo-Port-2027!")
    changed = await jukinet(capsys, "passwd", *desk(fed))
    assert changed.code == 0, changed.err
    assert "password changed for jukinet://operator/312011/t.tanaka" in changed.out
    weak = await jukinet(capsys, "passwd", *desk(fed))  # the old one is no longer it
    assert weak.code == 1 and "wrong-password" in weak.err, weak

    out = await jukinet(capsys, "logout", *desk(fed))
    assert out.code == 0, out.err
    assert f"logged out: jukinet://operator/312011/t.tanaka; removed {saved}" in out.out
    assert not saved.exists()
    gone = await jukinet(capsys, "whoami", *desk(fed))
    assert gone.code == 2
    assert gone.err.strip() == (
        "jukinet whoami: no session at this terminal: log in first: jukinet login "
        f"--target 127.0.0.1:{fed.municipal_ports[TOTTORI]} --pki {fed.pki_dir} "
        "--as terminal-312011-desk2"
    )

    # A later login: the changed password, no new one asked.
    monkeypatch.setenv("JUKINET_PASSWORD", "Karo-Port-2027!")
    monkeypatch.delenv("JUKINET_NEW_PASSWORD")
    again = await jukinet(capsys, "login", "--card", "312011-t.tanaka", *desk(fed))
    assert again.code == 0, again.err
    assert "expired" not in again.err
    # A wrong password: refused with its reason, the session file untouched.
    before = saved.read_bytes()
    monkeypatch.setenv("JUKINET_PASSWORD", "Not-the-password-1")
    wrong = await jukinet(capsys, "login", "--card", "312011-t.tanaka", *desk(fed))
    assert wrong.code == 1
    assert "UNAUTHENTICATED" in wrong.err and "wrong-password" in wrong.err, wrong.err
    assert saved.read_bytes() == before
    assert (await jukinet(capsys, "logout", *desk(fed))).code == 0


async def test_an_expired_session_says_to_log_in_again(
    reader: Federation,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    session_folder: Path,
) -> None:
    fed = reader
    clock = NodeClock()
    await fed.municipalities[TOTTORI].stop()
    await fed.start_municipality(TOTTORI, clock=clock, session_idle=60, session_max=600)
    await first_login(fed, capsys, monkeypatch, "k.sato", [CLERK])
    assert (await jukinet(capsys, "resident", "status", *desk(fed))).code == 0
    clock.offset += dt.timedelta(seconds=61)
    run = await jukinet(capsys, "resident", "status", *desk(fed))
    assert run.code == 1
    first, hint = run.err.strip().splitlines()
    assert first.startswith("jukinet: UNAUTHENTICATED: ") and "session-expired" in first
    assert hint == (
        "jukinet: the session has expired: log in again: jukinet login "
        f"--target 127.0.0.1:{fed.municipal_ports[TOTTORI]} --pki {fed.pki_dir} "
        "--as terminal-312011-desk2"
    )
    assert listing(session_folder) == []  # the ended session's file is removed


async def test_a_role_missing_names_the_roles_held(
    reader: Federation, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = reader
    await first_login(fed, capsys, monkeypatch, "y.kato", [CLERK])
    for argv in (["operator", "list"], ["audit", "log"]):
        run = await jukinet(capsys, *argv, *desk(fed))
        assert run.code == 1, (argv, run)
        first, hint = run.err.strip().splitlines()
        assert first.startswith("jukinet: PERMISSION_DENIED: ") and "role-missing" in first
        assert hint == (
            "jukinet: jukinet://operator/312011/y.kato holds: clerk; an administrator "
            "grants roles (jukinet operator grant ID ROLE)"
        )


async def test_operator_administration_and_its_refusals(
    reader: Federation, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = reader
    await first_login(fed, capsys, monkeypatch, "k.suzuki", [ADMINISTRATOR], "desk1")
    at = desk(fed, "desk1")
    monkeypatch.setenv("JUKINET_INITIAL_PASSWORD", "Initial-clerk-2026")
    added = await jukinet(capsys, "operator", "add", "h.sato", "--role", "clerk", *at)
    assert added.code == 0, added.err
    assert added.out.strip() == "h.sato: clerk (must change the password at the next login)"
    granted = await jukinet(capsys, "operator", "grant", "h.sato", "supervisor", *at)
    assert granted.code == 0, granted.err
    listed = await jukinet(capsys, "operator", "list", *at)
    assert listed.code == 0, listed.err
    header, _rule, *rows = listed.out.splitlines()
    assert header.split("  ")[0] == "operator" and "must change" in header
    row = next(r for r in rows if r.startswith("h.sato "))
    assert "clerk, supervisor" in row and " yes " in row, row
    assert any(r.startswith("k.suzuki ") and "administrator" in r for r in rows), rows
    withdrawn = await jukinet(capsys, "operator", "withdraw", "h.sato", "supervisor", *at)
    assert withdrawn.code == 0, withdrawn.err
    reset = await jukinet(capsys, "operator", "reset-password", "h.sato", *at)
    assert reset.code == 0, reset.err

    # The refusals: one line with the status and the reason, nothing changed.
    cases = [
        (["grant", "k.suzuki", "clerk"], "PERMISSION_DENIED", "self-grant"),
        (["withdraw", "k.suzuki", "administrator"], "PERMISSION_DENIED", "self-grant"),
        (["reset-password", "k.suzuki"], "PERMISSION_DENIED", "self-grant"),
        (["grant", "nobody", "clerk"], "NOT_FOUND", ""),
        (["add", "h.sato", "--role", "clerk"], "ALREADY_EXISTS", ""),
    ]
    for argv, status, reason in cases:
        run = await jukinet(capsys, "operator", *argv, *at)
        assert run.code == 1, (argv, run)
        assert run.err.startswith(f"jukinet: {status}: "), (argv, run.err)
        assert reason in run.err, (argv, run.err)
    monkeypatch.setenv("JUKINET_INITIAL_PASSWORD", "short")
    weak = await jukinet(capsys, "operator", "add", "m.ito", "--role", "clerk", *at)
    assert weak.code == 1 and "weak-password" in weak.err, weak
    unknown = await jukinet(capsys, "operator", "grant", "h.sato", "janitor", *at)
    assert unknown.code == 2 and "one of clerk, supervisor, auditor, administrator" in unknown.err
    after = await jukinet(capsys, "operator", "list", *at)
    assert not any(line.startswith("m.ito ") for line in after.out.splitlines())
    sato = next(r for r in after.out.splitlines() if r.startswith("h.sato "))
    assert re.split(r"\s{2,}", sato)[1] == "clerk", sato  # the withdrawal held

    # An administrator never reads a resident.
    code = await register(fed, "境港　一郎", "サカイミナト　イチロウ", "1960-04-01")
    shown = await jukinet(capsys, "resident", "show", code, *at)
    assert shown.code == 1 and "role-missing" in shown.err, shown
    assert "holds: administrator" in shown.err


async def test_the_audit_log_as_the_auditor_reads_it(
    reader: Federation, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = reader
    code = await register(fed, "倉吉　次郎", "クラヨシ　ジロウ", "1970-08-08")
    await first_login(fed, capsys, monkeypatch, "a.mori", [CLERK], "desk1")
    refused = await jukinet(capsys, "operator", "list", *desk(fed, "desk1"))
    assert refused.code == 1
    assert (await jukinet(capsys, "logout", *desk(fed, "desk1"))).code == 0
    await first_login(fed, capsys, monkeypatch, "s.auditor", [AUDITOR])

    run = await jukinet(capsys, "audit", "log", "--operator", COUNTER_OPERATOR, *desk(fed))
    assert run.code == 0, run.err
    header, rule, *rows = run.out.splitlines()
    assert header.split() == [
        "#", "time", "(JST)", "operator", "terminal", "operation", "residents", "outcome", "reason"
    ]  # fmt: skip
    assert set(rule.replace(" ", "")) == {"-"}
    born = next(r for r in rows if " RegisterBirth " in r)
    assert "operator/312011/counter" in born and "terminal/312011/desk1" in born
    assert code in born and " ok " in born
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", born), born
    assert all("operator/312011/counter" in r for r in rows)

    # Of one resident: the birth and nothing else.
    one = await jukinet(capsys, "audit", "log", "--resident", code, *desk(fed))
    assert one.code == 0, one.err
    assert [r.split()[5] for r in one.out.splitlines()[2:]] == ["RegisterBirth"]
    # A refused call is on record with its reason.
    clerk = await jukinet(capsys, "audit", "log", "--operator", "a.mori", *desk(fed))
    listing = next(r for r in clerk.out.splitlines() if " ListOperators " in r)
    assert " refused " in listing and "role-missing" in listing, listing
    assert "terminal/312011/desk1" in listing
    none = await jukinet(capsys, "audit", "log", "--operator", "nobody", *desk(fed))
    assert (none.code, none.out.strip()) == (0, "no entries")
