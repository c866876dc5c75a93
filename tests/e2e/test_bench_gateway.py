"""The gateway benchmark end to end, at a tiny size: the code path works and
real figures come back (not how good they are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.localfed import PG_SERVER

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    # Above the benchmark's own 240 s, so that its timeout reports first.
    pytest.mark.timeout(300),
    pytest.mark.postgres,
    pytest.mark.skipif(
        os.environ.get("JUKINET_TEST_PG", "").lower() == "skip",
        reason="the gateway benchmark runs on PostgreSQL",
    ),
]


def test_gateway_bench_runs_and_writes_its_figures(tmp_path: Path, pg_available: None) -> None:
    out, markdown = tmp_path / "bench-results.json", tmp_path / "benchmarks.md"
    out.write_text(json.dumps({"earlier": {"kept": True}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUKINET_")}
    env["JUKINET_TEST_PG_DSN"] = PG_SERVER
    command = [sys.executable, "-m", "bench", "--only", "gateway"]
    command += ["--residents", "2000", "--gateway-seconds", "0.5", "--batch-claims", "2000"]
    command += ["--out", str(out), "--markdown", str(markdown)]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["earlier"] == {"kept": True}  # the file's other contents stay
    g = results["gateway"]
    assert g["parameters"]["residents"] == 2000
    assert g["load"]["2000"]["checks"]["identities"] == 2000
    for level in ("c1", "c16", "c64"):
        verify, baseline = g["verify"]["2000"][level], g["baseline"][level]
        assert verify["requests"] > 0 and verify["requests_per_s"] > 0
        assert verify["errors"] == {} and verify["unexpected_answers"] == 0
        assert 0 < verify["p50_ms"] <= verify["p99_ms"]
        assert baseline["requests_per_s"] > 0
    assert g["verify"]["1000"]["c1"]["requests_per_s"] > 0
    by_code, by_items = g["verify_batch"]["by_code"], g["verify_batch"]["by_four_items"]
    assert by_code["claims"] == by_code["found"] == by_code["matched"] == 2000
    assert by_code["verifications_per_s"] > 0
    assert by_items["claims"] == 500 and by_items["verifications_per_s"] > 0
    for phase in g["provision_records"].values():
        assert phase["answers"] == phase["records"] > 0
    assert set(g["targets_met"]) >= {
        "c16_third_of_baseline",
        "c16_p99_under_25ms",
        "latency_flat",
        "verify_batch_20k_per_s",
    }
    text = markdown.read_text()
    assert "## Agency gateway: Verify and VerifyBatch" in text
    assert "--only gateway --residents 2000" in text
