"""The ``jukinet`` command against a real federation: agencies verifying,
retrieving and searching through the gateway, bulk verification from CSV, and
the disclosure a municipal counter prints for a resident.

``main(argv)`` runs in a worker thread (it has its own event loop) while the
nodes serve on the test's loop; stdout and stderr are captured."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.registry import PurposeRegistry, load_registry
from jukinet.cli.agency import verify_batch
from jukinet.cli.main import main
from jukinet.codes import new_resident_code
from jukinet.textwidth import display_width, table
from jukinet.v1 import common_pb2, municipal_pb2
from tests.federation import Federation

TIMEOUT = 15
TOTTORI = "312011"
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


def at_counter(fed: Federation) -> list[str]:
    """CLI options to call Tottori's municipal node as its administrator."""
    return [
        "--target",
        f"127.0.0.1:{fed.municipal_ports[TOTTORI]}",
        "--pki",
        str(fed.pki_dir),
        "--as",
        f"operator-{TOTTORI}-admin",
    ]


async def register(
    fed: Federation,
    name: str,
    kana: str,
    birth_date: str,
    sex: int = common_pb2.SEX_FEMALE,
    address: str = ADDRESS_1,
) -> str:
    """Register a birth at Tottori; the new resident's code."""
    born = await fed.operator(TOTTORI).RegisterBirth(
        municipal_pb2.RegisterBirthRequest(
            person=municipal_pb2.PersonDetails(
                name=name,
                name_kana=kana,
                birth_date=birth_date,
                sex=sex,  # type: ignore[arg-type]
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
    return [
        (p["agency_code"], p["purpose_code"], p["operation"], p.get("fields", []), p["result"])
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
    assert "recipients.csv" in run.err  # the progress bar
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
    assert [
        (p["agency_code"], p["purpose_code"], p["operation"], p.get("fields", []), p["result"])
        for p in disclosed["provisions"]
    ] == expected
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

    # Only the municipality's operators may ask; an agency may not.
    run = await jukinet(
        capsys,
        "resident", "disclose", code,
        "--target", f"127.0.0.1:{gw.municipal_ports[TOTTORI]}", "--pki", str(gw.pki_dir),
        "--as", "agency-nenkin",
    )  # fmt: skip
    assert run.code == 1
    assert run.err.startswith("jukinet: PERMISSION_DENIED")


def test_table_lines_up_wide_and_zero_width_characters() -> None:
    # 葛󠄀 is 葛 with an ideographic variation selector: two columns, not three.
    assert display_width("鳥取　花子") == 10
    assert display_width("葛\U000e0100城") == 4
    assert display_width("ｶﾅ abc") == 6
    lines = table(["name", "x"], [["葛\U000e0100城", "1"], ["abc", "2"]])
    assert lines == ["name  x", "----  -", "葛\U000e0100城  1", "abc   2"]
