"""``python -m bench``: every benchmark (what ``make bench`` runs), figures into
``bench-results.json`` and ``docs/benchmarks.md``.

The delivery benchmark (:mod:`bench.delivery`) runs first, then the agency
gateway's (:mod:`bench.gateway`), then the operation log's appends
(:mod:`bench.oplog`), then the signed copies of resident records
(:mod:`bench.copies`), then the relayed requests' round trip
(:mod:`bench.relay`); ``--only`` runs one of them and keeps the others'
figures in the results file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from bench import copies, delivery, gateway, oplog, relay, report
from bench.common import REPO, BenchError, postgres_version, progress

COMMAND = "python -m bench"


def parser() -> argparse.ArgumentParser:
    """Every option of both benchmarks."""
    p = argparse.ArgumentParser(prog=COMMAND, description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--backend",
        choices=["sqlite", "postgres", "both"],
        help="default: both (SQLite alone when no PostgreSQL server answers)",
    )
    p.add_argument("--notifications", type=int, help="N (default 100000; quick 20000)")
    p.add_argument("--municipalities", type=int, default=4, help="K (default 4)")
    p.add_argument(
        "--prefectures",
        type=int,
        choices=[1, 2],
        default=2,
        help="spread the municipalities over 1 or 2 prefectures (default 2)",
    )
    p.add_argument("--batch", type=int, default=500, help="push batch size (default 500)")
    p.add_argument("--window", type=int, default=4, help="unacknowledged push batches (default 4)")
    p.add_argument("--lag-seconds", type=float, help="lag phase length (default 20; quick 6)")
    p.add_argument(
        "--import-residents", type=int, help="bulk import size (default 100000; quick 20000)"
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes, ~1-2 minutes")
    p.add_argument("--out", default="bench-results.json", help="results file (JSON)")
    p.add_argument(
        "--markdown", default=str(REPO / "docs" / "benchmarks.md"), help="rendered table"
    )
    p.add_argument("--keep", action="store_true", help="keep configs and node logs")
    p.add_argument(
        "--pg-plan-cache",
        choices=["auto", "force_custom_plan", "force_generic_plan"],
        help="what-if: set plan_cache_mode on every node database (default: the server's)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record py-spy profiles (collapsed stacks) of the nodes during phases 1 and 2",
    )
    p.add_argument(
        "--only",
        choices=["delivery", "gateway", "oplog", "copies", "relay"],
        help="run one benchmark (default: delivery, then gateway, then oplog, then copies, "
        "then relay)",
    )
    p.add_argument(
        "--oplog-entries",
        type=int,
        help="oplog: appends one per transaction (default 2000; quick 500), ten times as "
        "many in batches",
    )
    p.add_argument(
        "--copies",
        type=int,
        help="copies: signed copies of resident records made (default 50; quick 10)",
    )
    p.add_argument(
        "--relay-requests",
        type=int,
        help="relay: relayed requests timed per route, and bare calls (default 500; quick 100)",
    )
    gateway.add_arguments(p)
    return p


def delivery_options(args: argparse.Namespace) -> str | None:
    """Fill in the delivery benchmark's defaults; the error for a bad option, if any."""
    if args.notifications is None:
        args.notifications = 20_000 if args.quick else 100_000
    if args.lag_seconds is None:
        args.lag_seconds = 6.0 if args.quick else 20.0
    if args.import_residents is None:
        args.import_residents = 20_000 if args.quick else 100_000
    if not 1 <= args.municipalities <= 40:
        return "--municipalities: 1 to 40"
    if not 1 <= args.batch <= 10_000:
        return "--batch: 1 to 10000"
    per = args.notifications // args.municipalities
    if per < 1 or per > 100_000 - delivery.POOL_MARGIN:
        return "--notifications: 1 to 99,000 per municipality"
    if not 1 <= args.import_residents <= 100_000:
        return "--import-residents: 1 to 100000"
    args.notifications = per * args.municipalities
    return None


def _command() -> str:
    return " ".join([COMMAND, *(shlex.quote(a) for a in sys.argv[1:])])


def _earlier(out: Path) -> dict[str, Any]:
    """The results file as it is (empty if missing or unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        results = json.loads(out.read_text())
        if isinstance(results, dict):
            return results
    return {}


def run_gateway(
    args: argparse.Namespace, plan: gateway.GatewayPlan, results: dict[str, Any]
) -> int:
    """The gateway benchmark, its figures under ``gateway`` in the results file.

    Alone (``--only gateway``) it keeps the file's other contents; after the
    delivery benchmark it is skipped when no PostgreSQL server answered."""
    out, markdown = Path(args.out), Path(args.markdown)
    if not results:
        results = _earlier(out)
    elif results["machine"]["postgresql"] is None:
        results["gateway"] = {"skipped": "no PostgreSQL server answered"}
        report.write(results, out, markdown)
        return 0
    code = 0
    try:
        results["gateway"] = asyncio.run(gateway.run_gateway_bench(plan, _command()))
    except BenchError as exc:
        progress(f"FAILED: gateway: {exc}")
        code = 1
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    if code == 0 or "backends" in results:
        report.write(results, out, markdown)
    return code


def run_oplog(args: argparse.Namespace, results: dict[str, Any]) -> int:
    """The operation log's appends, its figures under ``oplog`` in the results file
    (alone, ``--only oplog``, it keeps the file's other contents)."""
    out, markdown = Path(args.out), Path(args.markdown)
    if not results:
        results = _earlier(out)
    entries = args.oplog_entries or (500 if args.quick else 2_000)
    if args.backend in ("sqlite", "postgres"):
        backends = [args.backend]
    else:
        backends = ["sqlite", "postgres"]
        if not asyncio.run(postgres_version()):
            backends = ["sqlite"]
    try:
        results["oplog"] = {"command": _command(), **oplog.run(backends, entries)}
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    report.write(results, out, markdown)
    return 0


def run_copies(args: argparse.Namespace, results: dict[str, Any]) -> int:
    """The signed copies' figures under ``copies`` in the results file (alone,
    ``--only copies``, it keeps the file's other contents)."""
    out, markdown = Path(args.out), Path(args.markdown)
    if not results:
        results = _earlier(out)
    count = args.copies or (10 if args.quick else 50)
    if not 1 <= count <= 10_000:
        progress("FAILED: --copies: 1 to 10000")
        return 2
    try:
        results["copies"] = {"command": _command(), **copies.run(count)}
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    report.write(results, out, markdown)
    return 0


def _backends(args: argparse.Namespace) -> list[str]:
    """The backends ``--backend`` names (both: SQLite alone when no PostgreSQL answers)."""
    if args.backend in ("sqlite", "postgres"):
        return [args.backend]
    if not asyncio.run(postgres_version()):
        return ["sqlite"]
    return ["sqlite", "postgres"]


def run_relay(args: argparse.Namespace, results: dict[str, Any]) -> int:
    """The relayed requests' round trip under ``relay`` in the results file (alone,
    ``--only relay``, it keeps the file's other contents)."""
    out, markdown = Path(args.out), Path(args.markdown)
    if not results:
        results = _earlier(out)
    count = args.relay_requests or (100 if args.quick else 500)
    if not 1 <= count <= 100_000:
        progress("FAILED: --relay-requests: 1 to 100000")
        return 2
    try:
        results["relay"] = {
            "command": _command(),
            **relay.run(_backends(args), count, keep=args.keep),
        }
    except BenchError as exc:
        progress(f"FAILED: relay: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    report.write(results, out, markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks the options ask for; the exit status."""
    p = parser()
    args = p.parse_args(argv)
    try:
        gateway_plan = gateway.plan_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    if args.only == "gateway":
        return run_gateway(args, gateway_plan, {})
    if args.only == "oplog":
        return run_oplog(args, {})
    if args.only == "copies":
        return run_copies(args, {})
    if args.only == "relay":
        return run_relay(args, {})
    error = delivery_options(args)
    if error is not None:
        p.error(error)
    try:
        results = asyncio.run(delivery.run(args, _command()))
    except BenchError as exc:
        progress(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    if args.only == "delivery":
        with contextlib.suppress(KeyError, TypeError):
            results["gateway"] = _earlier(Path(args.out))["gateway"]  # kept
        for kept in ("oplog", "copies", "relay"):
            with contextlib.suppress(KeyError, TypeError):
                results[kept] = _earlier(Path(args.out))[kept]
        report.write(results, Path(args.out), Path(args.markdown))
        return 0
    code = run_gateway(args, gateway_plan, results)
    return code or run_oplog(args, results) or run_copies(args, results) or run_relay(args, results)


if __name__ == "__main__":
    raise SystemExit(main())
