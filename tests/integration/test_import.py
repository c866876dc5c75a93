"""Bulk import of a CSV register (jukinet.cli.importer) into a real federation."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from jukinet.cli.importer import (
    COLUMNS,
    CsvFormatError,
    ImportSummary,
    Rejection,
    import_csv,
    read_rows,
)
from jukinet.v1 import delivery_pb2, municipal_pb2
from tests.federation import Federation
from tools.sample import sample_rows, write_sample

CODE = "312011"


def _write(path: Path, lines: Sequence[Sequence[str]], *, bom: bool = False) -> None:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        csv.writer(f).writerows(lines)


def _row(values: dict[str, str]) -> list[str]:
    return [values[c] for c in COLUMNS]


def _file_with_bad_rows(path: Path, good: int) -> tuple[list[dict[str, str]], dict[int, str]]:
    """``good`` sample rows with four bad ones among them; returns the good rows and
    the bad rows' line numbers (the header is line 1) with the field expected."""
    rows = list(sample_rows(CODE, good + 4, seed=7))
    bad_date = dict(rows[3], birth_date="1990-02-30")
    empty_name = dict(rows[10], name="")
    bad_sex = dict(rows[17], sex="x")
    lines: list[list[str]] = [list(COLUMNS)]
    expected: dict[int, str] = {}
    kept: list[dict[str, str]] = []
    for i, row in enumerate(rows[:good]):
        if i == 3:
            lines.append(_row(bad_date))
            expected[len(lines)] = "person.birth_date"
        elif i == 10:
            lines.append(_row(empty_name))
            expected[len(lines)] = "person.name"
        elif i == 17:
            lines.append(_row(bad_sex))
            expected[len(lines)] = "sex"
        elif i == 25:
            lines.append(_row(row)[:-2])  # two fields short
            expected[len(lines)] = "columns"
        else:
            lines.append(_row(row))
            kept.append(row)
    _write(path, lines, bom=True)
    return kept, expected


def _counter(fed: Federation, code: str) -> grpc.aio.Channel:
    """A channel from ``code``'s counter terminal, in its supervisor's session."""
    return fed.terminal_channel(code, session=fed.sessions[code])


async def _register(fed: Federation) -> list[municipal_pb2.Resident]:
    out: list[municipal_pb2.Resident] = []
    pages = fed.operator(CODE).ExportResidents(municipal_pb2.ExportResidentsRequest())
    async for page in pages:
        out.extend(page.residents)
    return out


def _people(rows: Sequence[dict[str, str]]) -> Counter[tuple[str, str, str]]:
    return Counter((r["name"], r["birth_date"], r["address"]) for r in rows)


def _residents(residents: Sequence[municipal_pb2.Resident]) -> Counter[tuple[str, str, str]]:
    return Counter((r.person.name, r.person.birth_date, r.person.address) for r in residents)


async def test_bad_rows_are_reported_and_good_rows_load(fed: Federation, tmp_path: Path) -> None:
    path = tmp_path / "register.csv"
    kept, expected = _file_with_bad_rows(path, 40)
    channel = _counter(fed, CODE)

    summary = await import_csv(channel, path, batch=7, window=2, progress=False)

    assert summary.imported == len(kept) == 36
    assert summary.already_present == 0
    assert {r.line: r.field for r in summary.rejected} == expected
    by_line = {r.line: r for r in summary.sorted_rejections()}
    bad_date, empty_name, bad_sex, short = sorted(expected)
    assert "not a date on the calendar" in by_line[bad_date].reason
    assert "must not be empty" in by_line[empty_name].reason
    assert "male/female" in by_line[bad_sex].reason and by_line[bad_sex].local
    assert f"expected {len(COLUMNS)} fields" in by_line[short].reason and by_line[short].local
    assert not by_line[bad_date].local and by_line[bad_date].source_id.startswith(CODE)
    assert summary.exit_code == 1
    assert _residents(await _register(fed)) == _people(kept)

    # The same file again: nothing new, every good row already present.
    again = await import_csv(channel, path, batch=7, window=2, progress=False)
    assert (again.imported, again.already_present) == (0, len(kept))
    assert {r.line: r.field for r in again.rejected} == expected
    assert len(await _register(fed)) == len(kept)


async def test_households_share_their_id_and_address(fed: Federation, tmp_path: Path) -> None:
    path = tmp_path / "sample.csv"
    assert write_sample(path, CODE, 120, seed=3) == 120
    summary = await import_csv(_counter(fed, CODE), path, batch=50, progress=False)
    assert (summary.imported, summary.rejected) == (120, [])
    residents = await _register(fed)
    households: dict[str, set[str]] = {}
    for r in residents:
        households.setdefault(r.household_id, set()).add(r.person.address)
    assert all(len(addresses) == 1 for addresses in households.values())
    assert len(households) < len(residents)  # some households have several members
    # Each household's first member is its head (世帯主), also across batches.
    heads = {
        r.household_id: r.resident_code
        for r in residents
        if r.register.relationship == municipal_pb2.RELATIONSHIP_HEAD
    }
    assert set(heads) == set(households)
    for household_id, head in list(heads.items())[:10]:
        got = await fed.operator(CODE).GetHousehold(
            municipal_pb2.GetHouseholdRequest(household_id=household_id)
        )
        assert got.household.head_resident_code == head


async def test_relationships_and_domicile_are_imported_and_checked(
    fed: Federation, tmp_path: Path
) -> None:
    rows = list(sample_rows(CODE, 6, seed=5))
    head, *_ = rows
    family = [r for r in rows if r["household_id"] == head["household_id"]]
    assert len(family) >= 2, "the sample's first household has one member"
    spouse = dict(family[1], relationship="妻", domicile="鳥取県鳥取市本籍1番地", domicile_head="x")
    second_head = dict(family[1], source_id="extra-head", relationship="head")
    lonely_child = dict(family[1], source_id="lonely", household_id="", relationship="child")
    unknown = dict(family[1], source_id="unknown", relationship="はとこ")
    path = tmp_path / "register.csv"
    lines = [list(COLUMNS), _row(head), _row(spouse), _row(second_head), _row(lonely_child)]
    _write(path, [*lines, _row(unknown)])
    summary = await import_csv(_counter(fed, CODE), path, batch=10, progress=False)
    assert summary.imported == 2
    by_line = {r.line: r for r in summary.rejected}
    assert (by_line[4].field, by_line[5].field, by_line[6].field) == (
        "register.relationship",
        "register.relationship",
        "relationship",
    )
    assert "has its head on line 2" in by_line[4].reason
    assert "heads a household of its own" in by_line[5].reason
    assert by_line[6].local and "はとこ" in by_line[6].reason
    entered = {r.person.name: r for r in await _register(fed)}
    wife = entered[spouse["name"]]
    assert wife.register.relationship == municipal_pb2.RELATIONSHIP_WIFE
    assert (wife.register.domicile, wife.register.domicile_head) == ("鳥取県鳥取市本籍1番地", "x")
    got = await fed.operator(CODE).GetHousehold(
        municipal_pb2.GetHouseholdRequest(household_id=head["household_id"])
    )
    assert got.household.head_resident_code == entered[head["name"]].resident_code


async def test_interrupted_import_resumes_with_every_row_once(
    fed: Federation, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    rows = list(sample_rows(CODE, 2000, seed=11))
    _write(path, [list(COLUMNS), *(_row(r) for r in rows)])
    channel = _counter(fed, CODE)

    first = ImportSummary()
    task = asyncio.create_task(
        import_csv(channel, path, batch=100, window=1, progress=False, summary=first)
    )
    while first.batches_acknowledged < 1:
        assert not task.done(), "the import ended before it could be interrupted"
        await asyncio.sleep(0.001)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert 100 <= first.imported < len(rows)

    second = await import_csv(channel, path, batch=100, progress=False)
    assert second.rejected == []
    assert second.imported + second.already_present == len(rows)
    assert second.already_present >= first.imported
    residents = await _register(fed)
    assert len(residents) == len(rows)
    assert _residents(residents) == _people(rows)


async def test_imported_residents_reach_the_national_node(fed: Federation, tmp_path: Path) -> None:
    path = tmp_path / "register.csv"
    kept, _ = _file_with_bad_rows(path, 40)
    await import_csv(_counter(fed, CODE), path, batch=10, progress=False)
    await fed.wait_delivered()

    held: list[delivery_pb2.IdentityState] = []
    pages = fed.national_operator().ExportIdentities(
        delivery_pb2.ExportIdentitiesRequest(municipality_code=CODE)
    )
    async for page in pages:
        held.extend(page.identities)
    assert Counter((h.record.name, h.record.birth_date, h.record.address) for h in held) == (
        _people(kept)
    )
    codes = {r.resident_code for r in await _register(fed)}
    assert {h.record.resident_code for h in held} == codes


# --- parsing, without a node ----------------------------------------------------------


def test_line_numbers_count_lines_of_quoted_fields() -> None:
    text = (
        "source_id,name,birth_date,sex,address\n"
        'a1,"鳥取　花子",2000-01-01,女,"鳥取県鳥取市東町\n1丁目1番1号"\n'
        "\n"
        "a2,鳥取　太郎,2000-01-02,3,鳥取県鳥取市東町1丁目1番2号\n"
        "a3,鳥取　次郎,2000-01-03,1\n"
    )
    items = list(read_rows(io.StringIO(text, newline="")))
    first, bad_sex, short = items
    assert isinstance(first, municipal_pb2.ImportRow)
    assert (first.line, first.source_id, first.person.sex) == (2, "a1", 2)
    assert first.person.address == "鳥取県鳥取市東町\n1丁目1番1号"
    assert bad_sex == Rejection(
        5, "a2", "sex", "expected male/female, 1/2 or 男/女, got '3'", local=True
    )
    assert isinstance(short, Rejection)
    assert (short.line, short.source_id, short.field) == (6, "a3", "columns")


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("source_id,name,birth_date,sex", "missing required column(s): address"),
        ("source_id,name,birth_date,sex,address,nickname", "unknown column(s) 'nickname'"),
        ("source_id,name,name,birth_date,sex,address", "named twice: name"),
    ],
)
def test_a_bad_header_refuses_the_whole_file(header: str, problem: str) -> None:
    with pytest.raises(CsvFormatError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        list(read_rows(io.StringIO(header + "\n", newline="")))


async def test_rows_of_another_municipality_are_refused_and_the_rest_loads(
    fed: Federation, tmp_path: Path
) -> None:
    chiyoda = "131016"
    path = tmp_path / "tottori.csv"
    tottori_rows = list(sample_rows(CODE, 3, seed=11))
    tokyo = dict(tottori_rows[0], source_id="tokyo-1", address="東京都千代田区永田町1丁目7番1号")
    _write(path, [list(COLUMNS), *(_row(r) for r in tottori_rows), _row(tokyo)])
    channel = _counter(fed, chiyoda)
    summary = await import_csv(channel, path, batch=2, progress=False)
    assert summary.imported == 1
    assert sorted((r.line, r.field) for r in summary.rejected) == [
        (2, "person.address"),
        (3, "person.address"),
        (4, "person.address"),
    ]
    assert all("is not in municipality 131016" in r.reason for r in summary.rejected)
    held = [
        r
        async for page in fed.operator(chiyoda).ExportResidents(
            municipal_pb2.ExportResidentsRequest()
        )
        for r in page.residents
    ]
    assert [r.person.address for r in held] == [tokyo["address"]]


async def test_an_import_by_a_foreign_operator_is_refused_whole_with_its_status(
    fed: Federation, tmp_path: Path
) -> None:
    # An operator of another municipality, at a terminal of theirs: the node
    # refuses the stream before reading a row. The client writes one batch and
    # waits for its answer before opening the window, so the refusal arrives as
    # PERMISSION_DENIED every time,
    # not as the transport's INTERNAL of a client still writing (grpc/grpc#36066).
    path = tmp_path / "tottori.csv"
    write_sample(path, CODE, 400)
    before = len(await _register(fed))
    channel = fed.channel(
        fed.municipal_ports[CODE], "terminal-131016-desk1", session=fed.sessions["131016"]
    )
    for _ in range(10):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await import_csv(channel, path, batch=10, window=8, progress=False)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    assert len(await _register(fed)) == before
