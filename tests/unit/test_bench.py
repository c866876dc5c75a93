"""The benchmark's command line, its report and its baseline servers' failure,
without running a benchmark."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import delivery_options, parser, run_gateway
from bench.common import BenchError, percentile
from bench.gateway import plan_from_args
from bench.processes import BaselineServer


def _args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def test_quick_defaults_and_the_notifications_rounded_to_whole_outboxes() -> None:
    args = _args("--quick", "--notifications", "1001", "--municipalities", "2")
    assert delivery_options(args) is None
    assert (args.notifications, args.lag_seconds, args.import_residents) == (1000, 6.0, 20_000)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--municipalities", "41"], "--municipalities: 1 to 40"),
        (["--batch", "0"], "--batch: 1 to 10000"),
        (["--notifications", "1", "--municipalities", "2"], "--notifications: 1 to 99,000"),
        (["--notifications", "400000"], "--notifications: 1 to 99,000"),
        (["--import-residents", "100001"], "--import-residents: 1 to 100000"),
    ],
)
def test_each_bad_delivery_option_is_named(argv: list[str], error: str) -> None:
    message = delivery_options(_args(*argv))
    assert message is not None and message.startswith(error)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--residents", "99"], "--residents: 100 to 5,000,000"),
        (["--gateway-seconds", "0.01"], "--gateway-seconds: 0.1 to 600"),
        (["--batch-claims", "5000001"], "--batch-claims: 1 to 5,000,000"),
    ],
)
def test_each_bad_gateway_option_is_named(argv: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        plan_from_args(_args(*argv))


def test_the_gateway_is_skipped_without_postgresql(tmp_path: Path) -> None:
    out, markdown = tmp_path / "results.json", tmp_path / "benchmarks.md"
    args = _args("--out", str(out), "--markdown", str(markdown))
    results = {"machine": {"postgresql": None}}
    assert run_gateway(args, plan_from_args(args), results) == 0
    assert json.loads(out.read_text())["gateway"] == {"skipped": "no PostgreSQL server answered"}
    text = markdown.read_text()
    assert "The delivery benchmark has not\nrun yet; `python -m bench --only delivery`" in text
    assert "Not measured: no PostgreSQL server answered." in text


def test_the_report_renders_the_figures_of_the_last_full_run() -> None:
    results = json.loads((Path(__file__).parents[2] / "bench-results.json").read_text())
    text = report.render_document(results)
    assert text.startswith("# Benchmarks\n")
    assert "| **1. delivery, notifications/s** end to end |" in text
    assert "## Agency gateway: Verify and VerifyBatch" in text
    assert "the docstring of `bench/gateway.py`" in text


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([], 50) != percentile([], 50)  # NaN


async def test_a_baseline_server_that_cannot_start_is_reported(tmp_path: Path) -> None:
    server = BaselineServer("push", tmp_path / "no-such-pki", tmp_path)
    with pytest.raises(BenchError, match="push baseline server did not start"):
        await server.start()
    server.stop()
