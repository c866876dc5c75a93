"""`jukinet demo` end to end: six node processes, a day of life, reconciliation."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest

from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2, provision_pb2
from jukinet.vocabulary import operation_of, person_values, result_of
from tools.demo import (
    AGREE,
    CARD_PROVED,
    CARD_REFUSED,
    CONFIRMED,
    DISCLOSED,
    SCENES,
    SPECIAL_MOVE_DONE,
    Day,
    DemoError,
    Expected,
    compare_disclosure,
    reconcile,
)

ROOT = Path(__file__).resolve().parents[2]
NODES = 7  # national, gateway, two prefectures, three municipalities


def _demo(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tools.demo",
        "--population", "300", "--workdir", str(workdir), *extra,
    ]  # fmt: skip


def _node_processes(workdir: Path) -> list[int]:
    """Processes whose command line names a config file of this demo (Linux /proc)."""
    needle = str(workdir / "config").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.e2e
@pytest.mark.timeout(300)  # above the demo's own 240 s, so that its timeout reports first
def test_demo_tiers_agree(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    started = time.monotonic()
    result = subprocess.run(
        _demo(workdir), cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert AGREE in result.stdout, output
    assert DISCLOSED in result.stdout, output
    assert "転入" in result.stdout and "国外からの転入" in result.stdout
    # The resident cards: one proved at home with its PIN, one proved in another
    # prefecture, revoked as lost and then refused there.
    day = result.stdout.split("a day of life", 1)[1]
    proved = [line for line in day.splitlines() if CARD_PROVED in line]
    assert len(proved) == 2 and "鳥取市" in proved[0] and "千代田区" in proved[1], output
    assert day.count("カード交付") == 3 and "カード紛失" in day, output
    (refused,) = [line for line in day.splitlines() if CARD_REFUSED in line]
    assert "千代田区" in refused, output
    # Every move-out of the day made final by its move-in notice.
    final = re.search(rf"転出確定: (\d+) of the day's (\d+) {re.escape(CONFIRMED)}", day)
    assert final is not None and final[1] == final[2] and int(final[1]) >= 2, output
    # A card holder of 鳥取市 moved to 千代田区 with the card: by post, card + PIN, continued.
    assert "付記転出届" in result.stdout and "特例転入" in result.stdout, output
    assert SPECIAL_MOVE_DONE in result.stdout, output
    # The copy of a 千代田区 record issued at 米子市, written and verified.
    (copy,) = (workdir / "copies").glob("*-312029.pdf")
    assert f"wrote {copy}" in result.stdout, output
    assert f"jukinet copy verify {copy.name}: valid" in result.stdout, output
    assert "signed by 鳥取県米子市 (312029)" in result.stdout, output
    # The passport office finds 渡邊 from 渡辺; each agency is refused a purpose
    # it does not hold; the disclosure lists the refusals.
    assert "Search → 渡邊\u3000和子" in result.stdout, output
    assert result.stdout.count("PERMISSION_DENIED") == 3, output
    assert "reason=agency-not-allowed" in result.stdout
    assert "reason=operation-not-allowed" in result.stdout
    disclosure = result.stdout.split("disclosure at the", 1)[1]
    rows = [line.split() for line in disclosure.splitlines()]
    assert [r[-1] for r in rows if r and r[-1] == "denied"] == ["denied"] * 3, output
    assert "日本年金機構 (Japan Pension Service)" in disclosure
    assert "verify_batch" in disclosure and "search" in disclosure
    assert time.monotonic() - started < 120
    # Every node wrote its log and is gone.
    assert len(list((workdir / "logs").glob("*.log"))) == NODES
    if Path("/proc").is_dir():
        assert _node_processes(workdir) == []


@pytest.mark.e2e
@pytest.mark.timeout(300)  # a whole demo, then its shutdown
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the node processes")
def test_ctrl_c_stops_every_node(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with subprocess.Popen(
        _demo(workdir, "--keep-running", "--quiet"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if "keeps running" in line:
                    break
            else:
                pytest.fail(
                    "the demo ended before keeping the federation running:\n" + "".join(lines)
                )
            assert AGREE in "".join(lines)
            assert len(_node_processes(workdir)) == NODES
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, "".join(lines) + rest
            assert _node_processes(workdir) == []
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


# --- the reconciliation rules, without processes ------------------------------------


def _resident(code: str, lg: str, *, active: bool = True, **person: str) -> municipal_pb2.Resident:
    details = {
        "name": "鳥取\u3000花子",
        "name_kana": "トットリ\u3000ハナコ",
        "birth_date": "1990-04-01",
        "sex": common_pb2.SEX_FEMALE,
        "address": "鳥取県鳥取市東町1丁目1番1号",
    }
    details.update(person)
    return municipal_pb2.Resident(
        resident_code=code,
        local_government_code=lg,
        person=municipal_pb2.PersonDetails(**details),  # type: ignore[arg-type]
        status=municipal_pb2.RESIDENT_STATUS_ACTIVE
        if active
        else municipal_pb2.RESIDENT_STATUS_REMOVED,
    )


def _held(
    r: municipal_pb2.Resident,
    *,
    status: common_pb2.RecordStatus.ValueType | None = None,
    replaced_by: str = "",
) -> delivery_pb2.IdentityState:
    p = r.person
    return delivery_pb2.IdentityState(
        record=common_pb2.IdentityRecord(
            resident_code=r.resident_code,
            **person_values(p),
            local_government_code=r.local_government_code,
        ),
        status=status
        if status is not None
        else common_pb2.RECORD_STATUS_ACTIVE
        if r.status == municipal_pb2.RESIDENT_STATUS_ACTIVE
        else common_pb2.RECORD_STATUS_REMOVED,
        replaced_by=replaced_by,
    )


def test_reconcile_accepts_a_move_and_a_code_change() -> None:
    stayed = _resident("12345678903", "312011")
    left = _resident("24727059608", "312011", active=False)
    arrived = _resident("24727059608", "131016", address="東京都千代田区1番地")
    renumbered = _resident("62684917230", "131016")
    old_code = _held(
        _resident("50709964280", "131016"),
        status=common_pb2.RECORD_STATUS_SUPERSEDED,
        replaced_by="62684917230",
    )
    registers = {"312011": [stayed, left], "131016": [arrived, renumbered]}
    national = [_held(stayed), _held(arrived), _held(renumbered), old_code]
    tiers = {"national": (("312011", "131016"), national)}
    assert reconcile(registers, tiers) == []


def test_reconcile_reports_each_difference() -> None:
    renamed = _resident("12345678903", "312011", name="鳥取\u3000次郎")
    left = _resident("24727059608", "312011", active=False)
    stray = _resident("62684917230", "312011")
    missing = _resident("50709964280", "312011")
    national = [
        _held(_resident("12345678903", "312011")),  # the old name
        _held(left, status=common_pb2.RECORD_STATUS_ACTIVE),  # removal not applied
        _held(stray),  # in no register
    ]
    registers = {"312011": [renamed, left, missing]}
    found = reconcile(registers, {"national": (("312011",), national)})
    described = "\n".join(d.describe() for d in found)
    assert "12345678903: name is '鳥取\\u3000花子', 鳥取市 has '鳥取\\u3000次郎'" in described
    assert "24727059608: status active, but removed" in described
    assert "50709964280: missing" in described
    assert "62684917230: held (active, 鳥取市) but in no register" in described
    assert len(found) == 4


def _provision(agency: str, purpose: str, operation: str, result: str) -> provision_pb2.Provision:
    return provision_pb2.Provision(
        agency_code=agency,
        purpose_code=purpose,
        operation=operation_of(operation),
        result=result_of(result),
    )


def test_disclosure_check_reports_missing_and_extra_provisions() -> None:
    made = [
        Expected("nenkin", "NENKIN-EXISTENCE-CHECK", "verify_batch", "match"),
        Expected("mofa-passport", "MOFA-PASSPORT-ISSUE", "verify", "match"),
        Expected("mofa-passport", "MOFA-PASSPORT-ISSUE", "verify", "match"),
    ]
    exact = [_provision(e.agency, e.purpose, e.operation, e.result) for e in made]
    assert compare_disclosure("10389878907", made, exact) == []
    listed = [
        exact[0],
        exact[1],  # one of the two verifications is missing
        _provision("nenkin", "MOFA-PASSPORT-ISSUE", "verify", "denied"),  # never made
    ]
    found = [d.describe() for d in compare_disclosure("10389878907", made, listed)]
    assert found == [
        "disclosure: 10389878907: not listed: mofa-passport MOFA-PASSPORT-ISSUE verify match",
        "disclosure: 10389878907: listed but never made: nenkin MOFA-PASSPORT-ISSUE verify denied",
    ]


def test_a_scene_without_anyone_to_cast_names_itself() -> None:
    day = Day(cast(Any, None), 1, io.StringIO(), {}, random.Random(1))
    day.scene = SCENES[0].title
    with pytest.raises(DemoError) as caught:
        day.pick("mother", [], [])
    assert str(caught.value) == (
        "出生 births: the population is too small: no mother to pick; raise --population"
    )
    assert day.used == set()
