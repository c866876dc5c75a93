"""The relay benchmark end to end, at a tiny size: the code path works, the requests
went the whole way and real figures come back (not how good they are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    # Above the benchmark's own 240 s, so that its timeout reports first.
    pytest.mark.timeout(300),
]


def test_relay_bench_runs_and_writes_its_figures(tmp_path: Path) -> None:
    out, markdown = tmp_path / "bench-results.json", tmp_path / "benchmarks.md"
    out.write_text(json.dumps({"earlier": {"kept": True}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
    command = [sys.executable, "-m", "bench", "--only", "relay", "--backend", "sqlite"]
    command += ["--relay-requests", "5", "--out", str(out), "--markdown", str(markdown)]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["earlier"] == {"kept": True}  # the file's other contents stay
    r = results["relay"]
    assert r["parameters"]["requests"] == 5
    figures = r["backends"]["sqlite"]
    for kind in ("baseline", "one_prefecture", "two_prefectures"):
        assert figures[kind]["requests"] == 5
        assert 0 < figures[kind]["p50_ms"] <= figures[kind]["p99_ms"]
    assert (figures["one_prefecture"]["calls"], figures["two_prefectures"]["calls"]) == (2, 4)
    # The nodes on each route counted the requests sent along it (the bench checks
    # it; the counts are in the results).
    counted = figures["relayed_requests_counted"]
    assert counted["national"] >= 5 and counted["prefecture-31"] >= 10
    assert figures["envelope_bytes"] > 0
    text = markdown.read_text()
    assert "## Relayed requests between municipalities: round trip" in text
    assert "--only relay --backend sqlite --relay-requests 5" in text
