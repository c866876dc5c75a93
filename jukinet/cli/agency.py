r"""``jukinet agency``: a national agency's requests to the agency gateway.

::

    export JUKINET_PKI=pki JUKINET_TARGET=127.0.0.1:50400 JUKINET_AS=agency-nenkin
    jukinet agency verify --purpose NENKIN-EXISTENCE-CHECK --code 24727059608 \
        --name "鳥取　花子" --birth-date 1960-04-02
    jukinet agency retrieve 24727059608 --purpose NENKIN-ADDRESS-CHANGE [--as-of 2025-04-01]
    jukinet agency search --purpose MOFA-PASSPORT-ISSUE --name "髙橋　一郎" \
        --birth-date 1970-01-01 [--max 3] [--field name --field address]
    jukinet agency verify-batch recipients.csv --purpose NENKIN-EXISTENCE-CHECK \
        [--out results.jsonl] [--batch-size 500]

Every request names the statutory purpose it is made for (``--purpose``); the
agency is the one its certificate names (``--as agency-<code>``), never
anything in the request. A purpose the agency does not hold is refused with
PERMISSION_DENIED and a reason (``unknown-purpose``, ``agency-not-allowed``,
``operation-not-allowed``, ``field-not-allowed``), printed on stderr.

verify-batch: the CSV format
----------------------------

UTF-8, with or without a byte-order mark; the first row is a header naming
the columns, in any order::

    item_id,resident_code,name,name_kana,birth_date,sex,address

``item_id`` (the agency's own reference, echoed in the results) is required
in the header and in every row. The other columns may be left out; an empty
field is not claimed. ``sex`` is ``male``/``female``, ``1``/``2`` or ``男``/``女``.
Each row claims the resident code, or at least the name and the birth date,
as the gateway requires. Lines are counted as a text editor shows them (the
header is line 1).

verify-batch: how it runs
-------------------------

1. The whole file is checked first, as a stream. If any row is bad, the bad
   rows are listed on stderr with their line numbers and nothing is sent: a
   half-sent file would leave provision records that the residents see, and a
   second run would record them again.
2. The rows are then read again and streamed through one VerifyBatch call in
   messages of ``--batch-size`` rows; the next message is read while the
   previous one is answered, and memory stays bounded whatever the file's
   size. The gateway refuses a message above the purpose's ``max_batch_size``:
   the default is 500, or that cap if smaller, and a larger ``--batch-size`` is
   refused here. (The caps known here are those of the packaged
   ``jukinet/purposes.toml``; a gateway with a registry of its own enforces
   its own.)

   A message is sent when the one before it has been answered (``--window 1``,
   the default), so that nothing is being written when the gateway ends the
   stream: with grpcio's asyncio client, a write that meets the end of the
   stream replaces the gateway's status (and its reason and retry-after) by
   ``INTERNAL: Internal error from Core`` (grpc/grpc#36066). The quota, not
   the round trip, bounds the rate in practice. ``--window N`` keeps up to N
   messages unanswered (the first of each stream still goes alone); a refusal
   in mid-stream may then show as INTERNAL and end the run, with the line to
   go on from.
3. Each result is one JSON line on stdout (or in ``--out``), in file order::

       {"line": 2, "item_id": "A-0001", "verification": {"found": true, ...}}

   A progress bar runs on stderr (``--quiet`` hides it), and a summary line
   follows at the end.
4. When the agency's quota is exhausted (RESOURCE_EXHAUSTED with
   ``retry-after-ms``) the command waits as told and goes on with the first
   unanswered message: the refused message was not looked up, so no row is
   verified twice.

Exit status: 0 when every row has its result; 1 when the gateway refused the
stream or the connection failed (results were written for every row before
the line named on stderr; ``--from-line`` that line resumes; a few rows from
it on may have been looked up, and recorded, without their answer arriving
when the connection broke); 2 on a usage problem, an unreadable file or bad
rows (nothing sent); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

import grpc
from google.protobuf import json_format

from gateway.quotas import RETRY_AFTER_KEY
from jukinet.cli.common import (
    SEX,
    connection_options,
    explain_now,
    plain,
    print_message,
    run_call,
)
from jukinet.cli.csvfile import (
    CsvFormatError,
    ProgressBar,
    header_index,
    open_csv,
    progress_bar,
    read_csv,
)
from jukinet.cli.importer import parse_sex, positive_int
from jukinet.client import connect, tls_files
from jukinet.errors import ConfigError, InvalidArgument, error_metadata
from jukinet.purposes import load_registry
from jukinet.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from jukinet.validation import check_claim
from jukinet.vocabulary import PROVIDABLE_FIELDS, result_label, verification_outcome

__all__ = [
    "BATCH_COLUMNS",
    "BadRow",
    "BatchSummary",
    "CheckResult",
    "ClaimRow",
    "GatewayProtocolError",
    "check_file",
    "read_claims",
    "register_cli",
    "verify_batch",
]

BATCH_COLUMNS: tuple[str, ...] = (
    "item_id",
    "resident_code",
    "name",
    "name_kana",
    "birth_date",
    "sex",
    "address",
)
"""Every column of a verify-batch CSV file."""

REQUIRED_BATCH_COLUMNS: frozenset[str] = frozenset({"item_id"})

SERVICE = "jukinet.v1.GatewayService"

# Request fields as the options that set them, for error messages.
FLAGS: dict[str, str] = {
    "purpose_code": "--purpose",
    "claim.resident_code": "--code",
    "claim.name": "--name",
    "claim.name_kana": "--kana",
    "claim.birth_date": "--birth-date",
    "claim.sex": "--sex",
    "claim.address": "--address",
    "resident_code": "the resident code",
    "as_of": "--as-of",
    "fields": "--field",
    "name": "--name",
    "name_kana": "--kana",
    "birth_date": "--birth-date",
    "sex": "--sex",
    "address": "--address",
    "max_candidates": "--max",
}

DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000  # beyond any purpose's cap; keeps one message well under 4 MB
DEFAULT_WINDOW = 1  # see the module docstring: grpc/grpc#36066
MAX_SHOWN_BAD_ROWS = 20  # listed on stderr; the rest are counted
MAX_QUOTA_WAITS = 20  # consecutive quota refusals without any progress, then give up


# --- the CSV file -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot be sent: where, which field, why."""

    line: int
    item_id: str
    field: str
    reason: str

    def describe(self) -> str:
        """One human-readable line."""
        who = f" ({self.item_id})" if self.item_id else ""
        return f"line {self.line}{who}: {self.field}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """A good row: its line and the item to send."""

    line: int
    item: gateway_pb2.VerifyBatchItem


def _claim_row(line: int, fields: Sequence[str], index: dict[str, int]) -> ClaimRow | BadRow:
    def get(name: str) -> str:
        i = index.get(name)
        return fields[i] if i is not None and i < len(fields) else ""

    item_id = get("item_id").strip()
    if len(fields) != len(index):
        return BadRow(
            line,
            item_id,
            "columns",
            f"expected {len(index)} fields as in the header, got {len(fields)}",
        )
    if not item_id:
        return BadRow(line, "", "item_id", "must not be empty")
    sex_text = get("sex").strip()
    sex = common_pb2.SEX_UNSPECIFIED
    if sex_text:
        try:
            sex = parse_sex(sex_text)
        except ValueError as exc:
            return BadRow(line, item_id, "sex", str(exc))
    # Names and addresses go as written, and are checked as the gateway checks them.
    claim = gateway_pb2.ClaimedIdentity(
        resident_code=get("resident_code").strip(),
        name=get("name"),
        name_kana=get("name_kana"),
        birth_date=get("birth_date").strip(),
        sex=sex,
        address=get("address"),
    )
    try:
        check_claim(claim, "claim")
    except InvalidArgument as exc:
        return BadRow(line, item_id, exc.field.removeprefix("claim."), exc.problem)
    return ClaimRow(line, gateway_pb2.VerifyBatchItem(item_id=item_id, claim=claim))


def read_claims(
    stream: IO[str], name: str = "<csv>", *, from_line: int = 1
) -> Generator[ClaimRow | BadRow, None, None]:
    """Parse an open text stream (opened with ``newline=""``) row by row.

    Rows that start before ``from_line`` are skipped unread. Raises
    :class:`CsvFormatError` for a problem with the file as a whole.
    """
    index, rows = read_csv(
        stream, name, partial(header_index, columns=BATCH_COLUMNS, required=REQUIRED_BATCH_COLUMNS)
    )
    for row in rows:
        if row.line < from_line:
            continue
        if row.malformed:
            yield BadRow(row.line, "", "row", row.malformed)
        else:
            yield _claim_row(row.line, row.fields, index)


@dataclass
class CheckResult:
    """What the check before sending found."""

    rows: int = 0
    """Data rows from ``from_line`` on, good or bad."""
    bad: list[BadRow] = field(default_factory=list)
    """The first :data:`MAX_SHOWN_BAD_ROWS` bad rows."""
    bad_count: int = 0


def check_file(path: Path | str, *, from_line: int = 1, progress: bool = False) -> CheckResult:
    """Read the whole file once, counting its rows and keeping the first bad ones."""
    path = Path(path)
    result = CheckResult()
    with (
        open_csv(path) as stream,
        contextlib.closing(progress_bar(f"{path.name}: checking", enabled=progress)) as bar,
    ):
        for row in read_claims(stream, str(path), from_line=from_line):
            result.rows += 1
            if isinstance(row, BadRow):
                result.bad_count += 1
                if len(result.bad) < MAX_SHOWN_BAD_ROWS:
                    result.bad.append(row)
            if result.rows % 1000 == 0:
                bar.update(1000)
        bar.update(result.rows - bar.n)
    return result


# --- streaming through VerifyBatch ------------------------------------------------------


class GatewayProtocolError(RuntimeError):
    """The gateway's answers do not fit the messages sent."""


@dataclass
class BatchSummary:
    """What a verify-batch run has done so far."""

    from_line: int = 1
    rows: int = 0
    """Rows with a result written."""
    messages: int = 0
    """Messages answered."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """Results by outcome: match, no-match, not-found."""
    quota_waits: int = 0
    last_line: int = 0
    """The line of the last row with a result (0: none yet)."""
    bad_row: BadRow | None = None
    """A bad row met while sending (the file changed after the check)."""
    seconds: float = 0.0

    @property
    def resume_line(self) -> int:
        """The first line without a result: ``--from-line`` for a rerun."""
        return self.last_line + 1 if self.last_line else self.from_line

    def describe(self) -> str:
        """The one-line summary."""
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        counts = ", ".join(f"{k} {self.outcomes[k]}" for k in ("match", "no-match", "not-found"))
        waits = f", {self.quota_waits} quota waits" if self.quota_waits else ""
        return (
            f"verified {self.rows} rows in {self.messages} messages ({counts}{waits}) "
            f"in {self.seconds:.1f} s, {rate:,.0f} rows/s"
        )


class _Messages:
    """The file's good rows in lists of at most ``size``; stops before a bad row,
    which it keeps in ``bad`` (and never forgets, whatever is asked after)."""

    def __init__(self, rows: Iterator[ClaimRow | BadRow], size: int) -> None:
        self._rows = rows
        self._size = size
        self._done = False
        self._reading: asyncio.Future[list[ClaimRow] | None] | None = None
        self.bad: BadRow | None = None

    async def peek(self) -> list[ClaimRow] | None:
        """The next message's rows (None at the end), read and checked in a
        thread so that a large message does not stall the event loop (and the
        answers it reads). They stay the next message until :meth:`take`: a
        caller cancelled while it waits, or before it sends them, loses nothing.
        """
        if self._reading is None:
            self._reading = asyncio.ensure_future(asyncio.to_thread(self.next))
        return await asyncio.shield(self._reading)

    def take(self) -> None:
        """The rows :meth:`peek` returned are being sent; read the next ones."""
        self._reading = None

    async def settle(self) -> None:
        """Wait for a read still running in its thread (before closing the file)."""
        if self._reading is not None:
            await asyncio.wait([self._reading])

    def next(self) -> list[ClaimRow] | None:
        """Read the next message's rows (blocking); None at the end or at a bad row."""
        batch: list[ClaimRow] = []
        if self.bad is not None or self._done:
            return None
        for row in self._rows:
            if isinstance(row, BadRow):
                self.bad = row
                break
            batch.append(row)
            if len(batch) >= self._size:
                return batch
        else:
            self._done = True
        return batch or None


def _result_json(line: int, result: gateway_pb2.VerifyBatchResult) -> str:
    body = json_format.MessageToDict(
        result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps({"line": line, **body}, ensure_ascii=False, separators=(",", ":"))


def _retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    """Seconds to wait when the agency's quota refused the call, else None."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    value = error_metadata(exc).get(RETRY_AFTER_KEY)
    try:
        return max(0.0, int(value) / 1000) if value is not None else None
    except ValueError:
        return None


async def _stream_once(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    purpose: str,
    messages: _Messages,
    pending: deque[list[ClaimRow]],
    window: int,
    deliver: Callable[[list[ClaimRow], gateway_pb2.VerifyBatchResponse], None],
) -> None:
    """One VerifyBatch call: first the messages of ``pending`` (unanswered by a
    previous call), then new ones, until the file ends or a call fails."""
    # The stubs type the stream opener as taking a request iterator; grpc.aio
    # also opens it without one, for write()/read().
    call: grpc.aio.StreamStreamCall[
        gateway_pb2.VerifyBatchRequest, gateway_pb2.VerifyBatchResponse
    ] = cast(Any, stub.VerifyBatch)()
    # The first message goes alone: a refusal of the whole stream (purpose,
    # quota, size) comes back before anything else is written.
    slots = asyncio.Semaphore(1)
    opened = False
    resend = list(pending)

    def request(rows: list[ClaimRow]) -> gateway_pb2.VerifyBatchRequest:
        return gateway_pb2.VerifyBatchRequest(purpose_code=purpose, items=[r.item for r in rows])

    async def send() -> None:
        try:
            for rows in resend:
                await slots.acquire()
                await call.write(request(rows))
            while True:
                # Read ahead while the previous message is being answered.
                new = await messages.peek()
                if new is None:
                    break
                await slots.acquire()
                messages.take()
                pending.append(new)
                await call.write(request(new))
        except Exception:
            # End the stream so that the answers already due still arrive; a
            # failed call shows its real status on the read side.
            with contextlib.suppress(Exception):
                await call.done_writing()
            raise
        await call.done_writing()

    sender = asyncio.create_task(send(), name="verify-batch-send")
    try:
        while True:
            response = await call.read()
            if not isinstance(response, gateway_pb2.VerifyBatchResponse):
                break  # grpc.aio.EOF: the gateway closed the stream
            if not pending:
                raise GatewayProtocolError("the gateway answered more messages than were sent")
            rows = pending.popleft()
            deliver(rows, response)
            slots.release()
            if not opened:
                opened = True
                for _ in range(window - 1):
                    slots.release()
        await sender
        if pending:
            raise GatewayProtocolError(
                f"the stream ended with {len(pending)} message(s) unanswered"
            )
    finally:
        if not sender.done():
            sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        call.cancel()


def _write_results(
    out: IO[str],
    summary: BatchSummary,
    bar: ProgressBar,
    sent: list[ClaimRow],
    response: gateway_pb2.VerifyBatchResponse,
) -> None:
    """Write the answer to one message as JSON lines and count it in ``summary``."""
    if len(response.results) != len(sent):
        raise GatewayProtocolError(
            f"{len(response.results)} results for a message of {len(sent)} rows "
            f"(lines {sent[0].line}-{sent[-1].line})"
        )
    lines = []
    for row, result in zip(sent, response.results, strict=True):
        if result.item_id != row.item.item_id:
            raise GatewayProtocolError(
                f"line {row.line}: a result for item {result.item_id!r}, "
                f"expected {row.item.item_id!r}"
            )
        lines.append(_result_json(row.line, result))
        summary.outcomes[result_label(verification_outcome(result.verification))] += 1
    out.write("\n".join(lines) + "\n")
    out.flush()
    summary.rows += len(sent)
    summary.messages += 1
    summary.last_line = sent[-1].line
    bar.update(len(sent))


async def _stream_with_quota_waits(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    purpose: str,
    messages: _Messages,
    window: int,
    deliver: Callable[[list[ClaimRow], gateway_pb2.VerifyBatchResponse], None],
    summary: BatchSummary,
    bar: ProgressBar,
) -> None:
    """VerifyBatch calls until the file ends, waiting out each exhausted quota."""
    # Messages sent and not yet answered; a call after a quota wait sends them again.
    pending: deque[list[ClaimRow]] = deque()
    waits = 0
    while True:
        answered = summary.rows
        try:
            await _stream_once(stub, purpose, messages, pending, window, deliver)
            return
        except grpc.aio.AioRpcError as exc:
            delay = _retry_after(exc)
            waits = waits + 1 if summary.rows == answered else 1
            if delay is None or waits > MAX_QUOTA_WAITS:
                raise
            summary.quota_waits += 1
            bar.set_postfix_str(f"quota: waiting {delay:.2f} s", refresh=True)
            await asyncio.sleep(delay)
            bar.set_postfix_str("", refresh=False)


async def verify_batch(
    channel: grpc.aio.Channel,
    path: Path | str,
    purpose: str,
    out: IO[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    window: int = DEFAULT_WINDOW,
    from_line: int = 1,
    total: int | None = None,
    progress: bool = True,
    summary: BatchSummary | None = None,
) -> BatchSummary:
    """Verify every row of the CSV at ``path`` for ``purpose``, writing one JSON
    line per result to ``out`` in file order.

    Stops before the first bad row (``summary.bad_row``). The gateway's refusal
    of the stream raises :class:`grpc.aio.AioRpcError`, except an exhausted
    quota, which is waited out. Pass your own ``summary`` to know how far it
    got when it fails.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    path = Path(path)
    summary = summary if summary is not None else BatchSummary(from_line=from_line)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    started = time.perf_counter()
    stream = open_csv(path)
    rows = read_claims(stream, str(path), from_line=from_line)
    messages = _Messages(rows, batch_size)
    bar = progress_bar(path.name, enabled=progress, total=total)
    deliver = partial(_write_results, out, summary, bar)
    try:
        await _stream_with_quota_waits(stub, purpose, messages, window, deliver, summary, bar)
        summary.bad_row = messages.bad
    finally:
        summary.seconds = time.perf_counter() - started
        bar.close()
        await messages.settle()
        rows.close()
        stream.close()
    return summary


# --- command line -----------------------------------------------------------------------


def _batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH_SIZE}, got {value}")
    return value


def _date(text: str) -> str:
    if not text:  # argparse passes the default through here too; empty: not given
        return text
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None
    if len(text) != 10:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}")
    return text


def _purpose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--purpose",
        required=True,
        metavar="CODE",
        help="statutory purpose code, e.g. NENKIN-EXISTENCE-CHECK (jukinet/purposes.toml)",
    )


def _field_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--field",
        dest="fields",
        action="append",
        default=[],
        choices=PROVIDABLE_FIELDS,
        metavar="FIELD",
        help="a field wanted (repeatable; default: every field the purpose allows); "
        f"one of {', '.join(PROVIDABLE_FIELDS)}",
    )


def _print_all(message: Any) -> None:
    # A verification is all flags: false and "not claimed" are answers too.
    print_message(message, all_fields=True)


def _resolve_batch_size(purpose: str, requested: int | None) -> int:
    """The message size: as asked, or the default; never above the cap of the
    purpose in the packaged registry (a gateway with its own registry enforces
    its own caps)."""
    try:
        known = load_registry().get(purpose)
    except ConfigError:
        known = None
    cap = known.quota.max_batch_size if known is not None else None
    if requested is None:
        return min(DEFAULT_BATCH_SIZE, cap) if cap else DEFAULT_BATCH_SIZE
    if cap is not None and requested > cap:
        raise ValueError(
            f"--batch-size {requested}: purpose {purpose} allows at most {cap} items per message"
        )
    return requested


async def _connect_and_verify(
    args: argparse.Namespace, out: IO[str], total: int, summary: BatchSummary
) -> None:
    channel = connect(args.target, args.pki, args.identity)
    try:
        await verify_batch(
            channel,
            args.file,
            args.purpose,
            out,
            batch_size=args.batch_size,
            window=args.window,
            from_line=args.from_line,
            total=total,
            progress=not args.quiet,
            summary=summary,
        )
    finally:
        await channel.close(None)


def _cmd_verify_batch(args: argparse.Namespace) -> int:
    def fail(message: str, code: int) -> int:
        print(f"jukinet agency verify-batch: {message}", file=sys.stderr)
        return code

    if not args.target or not args.identity:
        return fail("--target and --as are required (or JUKINET_TARGET / JUKINET_AS)", 2)
    try:
        args.batch_size = _resolve_batch_size(args.purpose, args.batch_size)
        # The certificate before a check of the file that may take minutes.
        tls_files(args.pki, args.identity).load()
        checked = check_file(args.file, from_line=args.from_line, progress=not args.quiet)
    except (ValueError, ConfigError, CsvFormatError) as exc:
        return fail(str(exc), 2)
    if checked.bad_count:
        for bad in checked.bad:
            print(f"  {bad.describe()}", file=sys.stderr)
        more = checked.bad_count - len(checked.bad)
        if more:
            print(f"  … and {more} more", file=sys.stderr)
        return fail(
            f"{checked.bad_count} bad row(s) of {checked.rows} in {args.file}; nothing was sent",
            2,
        )

    summary = BatchSummary(from_line=args.from_line)

    def so_far() -> None:
        if summary.rows:
            line = summary.resume_line
            print(
                f"jukinet agency verify-batch: {summary.rows} rows have their result, every "
                f"row before line {line}; run again with --from-line {line} to go on from there",
                file=sys.stderr,
            )

    try:
        with contextlib.ExitStack() as stack:
            out: IO[str] = sys.stdout
            if args.out is not None:
                out = stack.enter_context(args.out.open("w", encoding="utf-8"))
            asyncio.run(_connect_and_verify(args, out, checked.rows, summary))
    except KeyboardInterrupt:
        print("\njukinet agency verify-batch: interrupted", file=sys.stderr)
        so_far()
        return 130
    except (ConfigError, CsvFormatError, OSError) as exc:
        print(f"jukinet agency verify-batch: {exc}", file=sys.stderr)
        so_far()
        return 2
    except (grpc.aio.AioRpcError, GatewayProtocolError) as exc:
        shown = (
            explain_now(args, exc, SERVICE, FLAGS)
            if isinstance(exc, grpc.aio.AioRpcError)
            else str(exc)
        )
        print(f"jukinet: {shown}", file=sys.stderr)
        so_far()
        return 1
    if summary.bad_row is not None:
        # The file changed after the check: nothing from the bad row on was sent.
        print(f"  {summary.bad_row.describe()}", file=sys.stderr)
        print(
            f"jukinet agency verify-batch: a bad row at line {summary.bad_row.line} "
            "(the file changed after the check); nothing from it on was sent",
            file=sys.stderr,
        )
        so_far()
        return 2
    print(summary.describe(), file=sys.stderr)
    return 0


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agency verify | retrieve | search | verify-batch`` to the ``jukinet`` parser."""
    agency = subparsers.add_parser(
        "agency",
        help="a national agency's requests to the gateway, each for a statutory purpose",
        description=plain(__doc__.split("verify-batch: the CSV format")[0]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = agency.add_subparsers(dest="op", required=True)
    _verify_op(ops)
    _retrieve_op(ops)
    _search_op(ops)
    _verify_batch_op(ops)


def _verify_op(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agency verify`` to ``ops``: a claim checked against the record."""
    p = ops.add_parser(
        "verify", help="does a claim match the record? (match / no match, no personal data)"
    )
    connection_options(p)
    _purpose_option(p)
    p.add_argument("--code", default="", help="resident code claimed")
    p.add_argument("--name", default="", help="name claimed, e.g. '鳥取　花子'")
    p.add_argument("--kana", default="", help="reading claimed, in katakana")
    p.add_argument("--birth-date", type=_date, default="", help="YYYY-MM-DD claimed")
    p.add_argument("--sex", choices=sorted(SEX), help="sex claimed")
    p.add_argument("--address", default="", help="address claimed")

    async def verify(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        claim = gateway_pb2.ClaimedIdentity(
            resident_code=a.code,
            name=a.name,
            name_kana=a.kana,
            birth_date=a.birth_date,
            sex=SEX[a.sex] if a.sex else common_pb2.SEX_UNSPECIFIED,
            address=a.address,
        )
        return await gateway_pb2_grpc.GatewayServiceStub(ch).Verify(
            gateway_pb2.VerifyRequest(purpose_code=a.purpose, claim=claim)
        )

    def run_verify(a: argparse.Namespace) -> int:
        if not (a.code or a.name or a.kana or a.birth_date or a.sex or a.address):
            p.error(
                "claim at least one item: --code, --name, --kana, --birth-date, --sex or --address"
            )
        return run_call(a, verify, show=_print_all, service=SERVICE, flags=FLAGS)

    p.set_defaults(func=run_verify)


def _retrieve_op(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agency retrieve`` to ``ops``: one record, with the purpose's fields."""
    p = ops.add_parser("retrieve", help="one record, with only the purpose's fields")
    connection_options(p)
    _purpose_option(p)
    p.add_argument("code", help="resident code")
    p.add_argument("--as-of", type=_date, default="", help="the record as it stood on YYYY-MM-DD")
    _field_option(p)

    async def retrieve(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return await gateway_pb2_grpc.GatewayServiceStub(ch).Retrieve(
            gateway_pb2.RetrieveRequest(
                purpose_code=a.purpose, resident_code=a.code, as_of=a.as_of, fields=a.fields
            )
        )

    p.set_defaults(func=lambda a: run_call(a, retrieve, service=SERVICE, flags=FLAGS))


def _search_op(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agency search`` to ``ops``: candidates for the four basic items."""
    p = ops.add_parser("search", help="candidates ranked by the four basic items")
    connection_options(p)
    _purpose_option(p)
    p.add_argument("--name", required=True, help="name, e.g. '髙橋　一郎' (variant kanji alike)")
    p.add_argument("--kana", default="", help="reading in katakana")
    p.add_argument("--birth-date", type=_date, default="", help="YYYY-MM-DD")
    p.add_argument("--sex", choices=sorted(SEX))
    p.add_argument("--address", default="")
    p.add_argument(
        "--max",
        type=positive_int,
        default=0,
        help="at most this many candidates (default: the cap)",
    )
    _field_option(p)

    async def search(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return await gateway_pb2_grpc.GatewayServiceStub(ch).Search(
            gateway_pb2.SearchRequest(
                purpose_code=a.purpose,
                name=a.name,
                name_kana=a.kana,
                birth_date=a.birth_date,
                sex=SEX[a.sex] if a.sex else common_pb2.SEX_UNSPECIFIED,
                address=a.address,
                max_candidates=a.max,
                fields=a.fields,
            )
        )

    p.set_defaults(func=lambda a: run_call(a, search, service=SERVICE, flags=FLAGS))


def _verify_batch_op(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agency verify-batch`` to ``ops``: every row of a CSV file verified."""
    p = ops.add_parser(
        "verify-batch",
        help="verify every row of a CSV file (JSON lines out)",
        description=plain(__doc__[__doc__.index("verify-batch: the CSV format") :])
        if __doc__
        else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    connection_options(p)
    _purpose_option(p)
    p.add_argument("file", type=Path, help="CSV file (see the format above)")
    p.add_argument("--out", type=Path, help="write the JSON lines here instead of stdout")
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        help=f"rows per message (default {DEFAULT_BATCH_SIZE}, or the purpose's cap if smaller)",
    )
    p.add_argument(
        "--window",
        type=positive_int,
        default=DEFAULT_WINDOW,
        help=f"messages unanswered at most (default {DEFAULT_WINDOW}; see above)",
    )
    p.add_argument(
        "--from-line",
        type=positive_int,
        default=1,
        help="skip the rows before this line (to go on after a failure)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_verify_batch)
