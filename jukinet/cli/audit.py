"""``jukinet audit verify``: check a node's operation log end to end and against
the heads the tier above holds and cosigned; ``jukinet audit log``: an
auditor reads a municipal node's log entries at a counter terminal;
``jukinet audit check-proof``: check a resident's disclosure with proofs
offline.

    jukinet audit verify municipal --config municipality-312011.toml
    jukinet audit log --target 127.0.0.1:50311 --pki pki --as terminal-312011-desk2 \
        [--operator t.tanaka] [--resident 12345678903] [--start N] [--limit N]
    jukinet audit check-proof disclosure.json --verifiers pki/log-verifiers

``audit log`` runs in an auditor's session (``jukinet login``) and prints one
line per entry: time (JST), operator, terminal, operation, residents touched,
outcome and the reason of a refusal.

Run on the node's host with the node's own config: it reads the node's
database and log key file, and asks the tier above (over mTLS, with the
node's certificate) for the heads it holds of this log. Prints ``ok, N
entries, head at size S cosigned by W`` or the first problem (which entry was
altered, removed, inserted or reordered); the exit status is 1 on a problem,
2 on a usage or configuration problem.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from jukinet.audit import log_key_path, origin_of, read_log_keys, read_verifiers, read_witness_keys
from jukinet.cli.common import counter_options, in_jst, run_call
from jukinet.config import LoggedNodeConfig, MunicipalConfig, NationalConfig, PrefectureConfig
from jukinet.db import Database
from jukinet.errors import ConfigError
from jukinet.identity import Identity
from jukinet.oplog import disclosure, note
from jukinet.oplog.log import OperationLog, OplogTables
from jukinet.oplog.verify import verify_log
from jukinet.textwidth import table
from jukinet.tls import secure_channel
from jukinet.v1 import (
    national_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    oplog_pb2,
    prefecture_pb2_grpc,
    provision_pb2,
)


@dataclass(frozen=True)
class Report:
    """The outcome of an audit: whether the log is sound, and the line that says so."""

    ok: bool
    line: str


def _node(tier: str, config: LoggedNodeConfig) -> tuple[Identity, OplogTables, str]:
    """The node's identity, its log's tables and the address of the tier above ("" if none)."""
    if isinstance(config, MunicipalConfig):
        from services.municipal import models as municipal

        code = config.local_government_code
        return Identity.municipality(code), municipal.oplog, config.prefecture_target
    if isinstance(config, PrefectureConfig):
        from services.prefecture import models as prefecture

        code = config.prefecture_code
        return Identity.prefecture(code), prefecture.oplog, config.national_target
    from services.national import models as national

    return Identity.national(), national.oplog, ""


async def _held_heads(
    target: str, config: LoggedNodeConfig, origin: str, *, prefecture: bool
) -> tuple[list[note.Note], list[note.Verifier]]:
    """The heads of log ``origin`` the node at ``target`` (a prefecture, or the
    national node) holds and cosigned, and its witness key."""
    channel = secure_channel(target, config.tls)
    try:
        stub: Any = (
            prefecture_pb2_grpc.PrefectureServiceStub(channel)
            if prefecture
            else national_pb2_grpc.NationalServiceStub(channel)
        )
        answer = await stub.GetCheckpoints(oplog_pb2.GetCheckpointsRequest(origin=origin))
    finally:
        await channel.close(grace=None)
    held = [note.parse_note(text) for text in answer.checkpoints]
    return held, [note.parse_vkey(answer.witness_key)] if answer.witness_key else []


async def _witnessed_by(
    witnesses: Sequence[str], config: LoggedNodeConfig, origin: str
) -> tuple[list[note.Note], list[note.Verifier]]:
    """The heads of the national log each prefecture at ``witnesses`` holds and cosigned
    (the national node is the top tier: its witnesses are the prefectures)."""
    heads: list[note.Note] = []
    keys: list[note.Verifier] = []
    for target in witnesses:
        held, key = await _held_heads(target, config, origin, prefecture=True)
        heads.extend(held)
        keys.extend(key)
    heads.sort(key=lambda h: note.parse_checkpoint(h.text).size)
    return heads, keys


async def verify_node(
    tier: str,
    config: LoggedNodeConfig,
    *,
    offline: bool = False,
    witnesses: Sequence[str] = (),
) -> Report:
    """Verify the log of the node ``config`` describes; ``offline``: not against upstream.

    The national node has no tier above: ``witnesses`` are the addresses of
    the prefecture nodes whose held heads of its log it is checked against.
    """
    identity, tables, target = _node(tier, config)
    origin = origin_of(identity)
    keys = read_log_keys(log_key_path(config.log_key, config.tls.key), origin)
    oplog = OperationLog(tables, origin, keys.log)
    db = Database(config.database_url)
    try:
        async with db.read() as conn:
            rows = await oplog.rows(conn)
            heads = await oplog.heads(conn)
            frontier = await oplog.frontier(conn)
    finally:
        await db.close()
    upstream: list[note.Note] = []
    cosigners: list[note.Verifier] = []
    if target and not offline:
        upstream, cosigners = await _held_heads(
            target, config, origin, prefecture=tier == "municipal"
        )
    elif witnesses and not offline:
        upstream, cosigners = await _witnessed_by(witnesses, config, origin)
    verdict = verify_log(
        rows,
        heads,
        keys.log.verifier,
        state=frontier,
        upstream=upstream,
        witnesses=cosigners,
    )
    if verdict.problem is not None:
        return Report(False, f"{origin}: {verdict.problem}")
    line = f"ok, {len(rows)} entries"
    if upstream:
        newest = upstream[-1]
        size = note.parse_checkpoint(newest.text).size
        line += f", head at size {size} cosigned by {', '.join(note.cosigners(newest, cosigners))}"
    elif (target or witnesses) and not offline:
        line += ", no head held upstream yet"
    return Report(True, line)


_CONFIGS: dict[str, type[LoggedNodeConfig]] = {
    "municipal": MunicipalConfig,
    "prefecture": PrefectureConfig,
    "national": NationalConfig,
}


# Read at most this many pages of the log in one command (a bounded loop).
_MAX_PAGES = 10_000


def _short(uri: str) -> str:
    """An identity URI without ``jukinet://`` (``operator/312011/t.tanaka``)."""
    return uri.removeprefix("jukinet://")


def log_table(entries: list[operator_pb2.OperationLogEntry]) -> list[str]:
    """The lines of a table of log entries, as ``audit log`` prints them."""
    headers = (
        "#",
        "time (JST)",
        "operator",
        "terminal",
        "operation",
        "residents",
        "outcome",
        "reason",
    )
    rows = [
        (
            str(e.index),
            in_jst(e.time.ToJsonString())[:19].replace("T", " ") if e.HasField("time") else "",
            _short(e.operator),
            _short(e.terminal) or "-",
            e.operation.rsplit("/", 1)[-1],
            " ".join(e.resident_codes) or "-",
            e.outcome,
            e.reason or "-",
        )
        for e in entries
    ]
    return table(headers, rows)


async def read_log(
    stub: Any, *, operator_id: str = "", resident_code: str = "", start: int = 0, limit: int = 0
) -> list[operator_pb2.OperationLogEntry]:
    """The entries of the log from ``start`` that match, every page (at most ``limit``, 0: all)."""
    found: list[operator_pb2.OperationLogEntry] = []
    for _ in range(_MAX_PAGES):
        want = 0 if not limit else limit - len(found)
        answer = await stub.ReadOperationLog(
            operator_pb2.ReadOperationLogRequest(
                operator_id=operator_id, resident_code=resident_code, start=start, limit=want
            )
        )
        found.extend(answer.entries)
        if not answer.entries or (limit and len(found) >= limit):
            break
        start = answer.entries[-1].index + 1
        if start >= answer.size:
            break
    return found[:limit] if limit else found


def register_cli(sub: Any) -> None:
    """Add ``audit verify <tier> --config FILE`` and ``audit log`` to the ``jukinet`` parser."""
    group = sub.add_parser("audit", help="check a node's operation log, read its entries")
    actions = group.add_subparsers(dest="audit_command", required=True)

    log = actions.add_parser("log", help="an auditor reads the operation log's entries")
    counter_options(log)
    log.add_argument("--operator", default="", metavar="ID", help="only this operator's entries")
    log.add_argument(
        "--resident", default="", metavar="CODE", help="only entries touching this resident"
    )
    log.add_argument("--start", type=int, default=0, help="from this entry on (default 0)")
    log.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")

    async def do_log(ch: grpc.aio.Channel, a: argparse.Namespace) -> list[str]:
        entries = await read_log(
            operator_pb2_grpc.OperatorServiceStub(ch),
            operator_id=a.operator,
            resident_code=a.resident,
            start=a.start,
            limit=a.limit,
        )
        return log_table(entries) if entries else []

    def show_log(lines: list[str]) -> None:
        print("\n".join(lines) if lines else "no entries")

    log.set_defaults(
        func=lambda a: run_call(
            a,
            do_log,
            show_log,
            service="jukinet.v1.OperatorService",
            flags={"operator_id": "--operator", "resident_code": "--resident"},
        )
    )
    verify = actions.add_parser("verify", help="verify a node's log end to end and upstream")
    verify.add_argument("tier", choices=sorted(_CONFIGS))
    verify.add_argument("--config", required=True, help="the node's TOML config file")
    verify.add_argument(
        "--offline", action="store_true", help="do not ask the tier above for its heads"
    )
    verify.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="national: a prefecture node whose held heads of the national log to check "
        "against (repeat for each; the national node has no tier above)",
    )

    def go(a: argparse.Namespace) -> int:
        from jukinet.config import load_config

        try:
            config = load_config(_CONFIGS[a.tier], a.config)
            if a.witness and a.tier != "national":
                raise ConfigError("--witness: only the national log is checked against witnesses")
            report = asyncio.run(
                verify_node(a.tier, config, offline=a.offline, witnesses=a.witness)
            )
        except ConfigError as exc:
            print(f"jukinet audit: {exc}", file=sys.stderr)
            return 2
        except grpc.aio.AioRpcError as exc:
            print(
                f"jukinet audit: the node holding the heads answered {exc.code().name}: "
                f"{exc.details()}",
                file=sys.stderr,
            )
            return 1
        print(report.line, file=sys.stdout if report.ok else sys.stderr)
        return 0 if report.ok else 1

    verify.set_defaults(func=go)
    _check_proof(actions)


def check_proof_file(path: str, verifiers: str, resident_codes: list[str]) -> disclosure.Report:
    """Check the disclosure file ``path`` against the keys of the ``verifiers`` file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    response = provision_pb2.DiscloseResponse()
    try:
        json_format.Parse(text, response)
    except json_format.ParseError as exc:
        raise ConfigError(f"{path} is not a disclosure: {exc}") from None
    keys = Path(verifiers)
    log_key = read_verifiers(keys).get(disclosure.NATIONAL_ORIGIN)
    if log_key is None:
        raise ConfigError(f"{verifiers} lists no log key of {disclosure.NATIONAL_ORIGIN}")
    witnesses = [w for w in read_witness_keys(keys) if w.name.startswith("jukinet/prefecture/")]
    return disclosure.check_disclosure(response, log_key, witnesses, resident_codes)


def _check_proof(actions: Any) -> None:
    """Add ``audit check-proof FILE [--verifiers FILE] [--resident CODE ...]``."""
    check = actions.add_parser(
        "check-proof",
        help="check a disclosure with proofs offline (jukinet resident disclose --proofs --out)",
    )
    check.add_argument("file", help="the disclosure JSON file")
    check.add_argument(
        "--verifiers",
        default=str(Path(os.environ.get("JUKINET_PKI", "pki")) / "log-verifiers"),
        help="the log-verifiers file: the national log key and the witnesses' keys "
        "(default: log-verifiers in the PKI folder)",
    )
    check.add_argument(
        "--resident",
        action="append",
        default=[],
        metavar="CODE",
        help="a resident code the resident holds or held (repeat; default: the disclosed one)",
    )

    def go(a: argparse.Namespace) -> int:
        try:
            report = check_proof_file(a.file, a.verifiers, a.resident)
        except ConfigError as exc:
            print(f"jukinet audit: {exc}", file=sys.stderr)
            return 2
        for line in report.lines:
            print(("ok   " if line.ok else "FAIL ") + line.text)
        failed = sum(1 for line in report.lines if not line.ok)
        if report.ok:
            print(f"verdict: ok, {len(report.lines) - 1} provisions proven")
            return 0
        print(f"verdict: FAILED, {failed} problems", file=sys.stderr)
        return 1

    check.set_defaults(func=go)
