r"""Bulk import of an existing municipal register from CSV.

::

    jukinet import register.csv --target 127.0.0.1:50311 --pki pki \
        --as terminal-312011-desk1 [--batch 1000] [--rejects rejected.csv]

A supervisor's session at a counter terminal (``jukinet login``) imports:
the import is bulk work (ImportResidents needs the supervisor role).

The CSV format
--------------

UTF-8, with or without a byte-order mark; the first row is a header naming
the columns, in any order::

    source_id,name,name_kana,former_surname,alias,birth_date,sex,address,household_id,registered_on,
    relationship,previous_address,domicile,domicile_head

=================  ========  ===========================================================
column             required  content
=================  ========  ===========================================================
source_id          yes       the row's key in the old system (1-64 characters); it makes
                             resuming safe: a row whose source_id is already in the
                             register is skipped ("already present")
name               yes       氏名 in its original characters, e.g. ``鳥取　花子``
name_kana          no        reading in kana
former_surname     no        旧氏, where registered
alias              no        通称 of a foreign resident, where registered
birth_date         yes       YYYY-MM-DD
sex                yes       ``male``/``female``, ``1``/``2`` or ``男``/``女``
address            yes       the full address, prefecture first
household_id       no        the old system's household key (at most 32 characters):
                             rows with the same value form one household (世帯);
                             empty gives the row a household of its own
registered_on      no        YYYY-MM-DD the entry took effect; empty: the birth date
relationship       no        続柄 to the head of the household: ``世帯主`` (or ``head``),
                             ``妻`` (``wife``), ``子`` (``child``) ...; one 世帯主 per
                             household; a row without household_id is its own head
previous_address   no        前住所, where registered
domicile           no        本籍, where registered
domicile_head      no        筆頭者 of the family register at the domicile
=================  ========  ===========================================================

Columns marked "no" may be left out of the header altogether. Every data row
must have as many fields as the header; blank lines are skipped. Quoting is
standard CSV (RFC 4180), so a field may contain commas, quotes and line breaks.
Lines are counted in the file as a text editor shows them (the header is line
1), and every report names the line on which its row starts.

How it runs
-----------

The file is read as a stream, never whole, and sent in batches of ``--batch``
rows over one ``MunicipalService.ImportResidents`` stream, with at most
``window`` batches unacknowledged (backpressure: a slow node slows the reader,
it does not fill memory). The node loads each batch in one transaction and
answers with what it imported, what it already had and what it rejected, with
line, field and reason. Rows that cannot even be parsed here (wrong number of
fields, an unknown sex value) are reported with their line and never sent.

Resuming after an interruption (Ctrl-C, a broken connection, the node killed)
is running the same command again: batches the node acknowledged are already
present and are counted as such, the rest loads. A source_id that occurs twice
in one file is reported as rejected within a batch and as already present
across batches.

Exit status: 0 when every row was imported or already present; 1 when some
rows were rejected; 2 on a usage, file or connection problem (one line on
stderr); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import sys
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

import grpc

from jukinet.cli.common import (
    RELATIONSHIPS,
    counter_options,
    counter_trouble,
    explain_now,
    load_session,
    plain,
)
from jukinet.cli.csvfile import (
    CsvFormatError,
    ProgressBar,
    header_index,
    open_csv,
    progress_bar,
    read_csv,
)
from jukinet.cli.session import SavedSession
from jukinet.client import connect, wait_until_accepted
from jukinet.errors import ConfigError
from jukinet.v1 import common_pb2, municipal_pb2, municipal_pb2_grpc
from jukinet.vocabulary import PERSON_FIELDS
from services.municipal.logic import RELATIONSHIP_LABELS

_BY_LABEL = {label: value for value, label in RELATIONSHIP_LABELS.items() if label}

__all__ = [
    "COLUMNS",
    "REQUIRED_COLUMNS",
    "CsvFormatError",
    "ImportSummary",
    "Rejection",
    "check_header",
    "import_csv",
    "parse_sex",
    "read_batches",
    "read_rows",
    "register_cli",
    "write_rejections",
]

COLUMNS: tuple[str, ...] = (
    "source_id",
    *PERSON_FIELDS,
    "household_id",
    "registered_on",
    "relationship",
    "previous_address",
    "domicile",
    "domicile_head",
)
"""Every column the format knows, in the order :func:`write_sample` writes them."""

REQUIRED_COLUMNS: frozenset[str] = frozenset({"source_id", "name", "birth_date", "sex", "address"})
"""Columns the header must name."""

DEFAULT_BATCH = 1000
DEFAULT_WINDOW = 4
# The node refuses larger messages (services/municipal/servicer.py).
MAX_BATCH = 10_000

_SEX: dict[str, common_pb2.Sex.ValueType] = {
    "male": common_pb2.SEX_MALE,
    "1": common_pb2.SEX_MALE,
    "男": common_pb2.SEX_MALE,
    "female": common_pb2.SEX_FEMALE,
    "2": common_pb2.SEX_FEMALE,
    "女": common_pb2.SEX_FEMALE,
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """One row that was not imported: where, which field, why."""

    line: int
    source_id: str
    field: str
    reason: str
    local: bool = False
    """True when the row was refused here and never sent to the node."""

    def describe(self) -> str:
        """One human-readable line."""
        who = f" ({self.source_id})" if self.source_id else ""
        return f"line {self.line}{who}: {self.field}: {self.reason}"


@dataclass
class ImportSummary:
    """What an import did, counted as the node acknowledged it."""

    imported: int = 0
    already_present: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    rows_read: int = 0
    """Data rows read from the file so far (sent or refused locally)."""
    batches_acknowledged: int = 0
    seconds: float = 0.0

    @property
    def rows_done(self) -> int:
        """Rows with a final outcome: imported, already present or rejected."""
        return self.imported + self.already_present + len(self.rejected)

    @property
    def exit_code(self) -> int:
        """0 when every row is in the register, 1 when some were rejected."""
        return 1 if self.rejected else 0

    def sorted_rejections(self) -> list[Rejection]:
        """Rejections in file order."""
        return sorted(self.rejected, key=lambda r: r.line)

    def describe(self) -> str:
        """The one-line summary."""
        rate = self.rows_done / self.seconds if self.seconds > 0 else 0.0
        return (
            f"imported {self.imported}, already present {self.already_present}, "
            f"rejected {len(self.rejected)} ({self.rows_done} rows in {self.seconds:.1f} s, "
            f"{rate:,.0f} rows/s)"
        )


def parse_sex(value: str) -> common_pb2.Sex.ValueType:
    """The Sex enum value for a CSV sex field; ValueError for anything unknown."""
    sex = _SEX.get(value.strip().lower())
    if sex is None:
        raise ValueError(f"expected male/female, 1/2 or 男/女, got {value!r}")
    return sex


def parse_relationship(value: str) -> municipal_pb2.Relationship.ValueType:
    """The Relationship enum value for a CSV relationship field (its label, as
    世帯主, or its option name, as head); empty: not recorded; ValueError for
    anything unknown."""
    text = value.strip()
    if not text:
        return municipal_pb2.RELATIONSHIP_UNSPECIFIED
    found = RELATIONSHIPS.get(text.lower()) or _BY_LABEL.get(text)
    if found is None:
        raise ValueError(
            f"expected a relationship such as 世帯主, 妻, 子 (or head, wife, child), got {value!r}"
        )
    return found


def _row(
    line: int, fields: Sequence[str], index: dict[str, int]
) -> municipal_pb2.ImportRow | Rejection:
    def get(name: str) -> str:
        i = index.get(name)
        return fields[i] if i is not None else ""

    if len(fields) != len(index):
        i = index["source_id"]
        return Rejection(
            line,
            fields[i].strip() if i < len(fields) else "",
            "columns",
            f"expected {len(index)} fields as in the header, got {len(fields)}",
            local=True,
        )
    source_id = get("source_id").strip()
    try:
        sex = parse_sex(get("sex"))
    except ValueError as exc:
        return Rejection(line, source_id, "sex", str(exc), local=True)
    try:
        relationship = parse_relationship(get("relationship"))
    except ValueError as exc:
        return Rejection(line, source_id, "relationship", str(exc), local=True)
    # Names and addresses go as written: the node checks them and names the
    # field; only the structural fields are trimmed.
    return municipal_pb2.ImportRow(
        line=line,
        source_id=source_id,
        person=municipal_pb2.PersonDetails(
            name=get("name"),
            name_kana=get("name_kana"),
            former_surname=get("former_surname"),
            alias=get("alias"),
            birth_date=get("birth_date").strip(),
            sex=sex,
            address=get("address"),
        ),
        household_id=get("household_id").strip(),
        registered_on=get("registered_on").strip(),
        register=municipal_pb2.RegisterItems(
            relationship=relationship,
            previous_address=get("previous_address"),
            domicile=get("domicile"),
            domicile_head=get("domicile_head"),
        ),
    )


def read_rows(
    stream: IO[str], name: str = "<csv>"
) -> Iterator[municipal_pb2.ImportRow | Rejection]:
    """Parse an open text stream (opened with ``newline=""``) row by row.

    Yields an ImportRow for every row that can be sent and a local
    :class:`Rejection` for every row that cannot; raises
    :class:`CsvFormatError` for a problem with the file as a whole.
    """
    index, rows = read_csv(
        stream, name, partial(header_index, columns=COLUMNS, required=REQUIRED_COLUMNS)
    )
    for row in rows:
        if row.malformed:
            yield Rejection(row.line, "", "row", row.malformed, local=True)
        else:
            yield _row(row.line, row.fields, index)


def check_header(path: Path | str) -> None:
    """Raise :class:`CsvFormatError` unless ``path`` is a readable CSV with a good header."""
    path = Path(path)
    with open_csv(path) as stream:
        for _ in itertools.islice(read_rows(stream, str(path)), 1):
            pass


def read_batches(
    path: Path | str, batch: int, summary: ImportSummary
) -> Generator[list[municipal_pb2.ImportRow], None, None]:
    """The file's sendable rows in lists of at most ``batch``.

    Local rejections are added to ``summary`` as they are read, and every data
    row counts in ``summary.rows_read``.
    """
    path = Path(path)
    with open_csv(path) as stream:
        rows: list[municipal_pb2.ImportRow] = []
        for item in read_rows(stream, str(path)):
            summary.rows_read += 1
            if isinstance(item, Rejection):
                summary.rejected.append(item)
                continue
            rows.append(item)
            if len(rows) >= batch:
                yield rows
                rows = []
        if rows:
            yield rows


async def _send_batches(
    call: grpc.aio.StreamStreamCall[
        municipal_pb2.ImportResidentsRequest, municipal_pb2.ImportResidentsResponse
    ],
    batches: Iterator[list[municipal_pb2.ImportRow]],
    slots: asyncio.Semaphore,
    in_flight: deque[int],
) -> None:
    """Write every batch to ``call``, each once a window slot is free, then end the writes."""

    def next_batch() -> list[municipal_pb2.ImportRow] | None:
        return next(batches, None)

    while True:
        # Reading and parsing run in a thread, so that a large batch does
        # not stall the event loop (and the acknowledgements it reads).
        rows = await asyncio.to_thread(next_batch)
        if rows is None:
            break
        await slots.acquire()
        in_flight.append(len(rows))
        await call.write(municipal_pb2.ImportResidentsRequest(rows=rows))
    await call.done_writing()


async def _next_response(reader: asyncio.Future[object], sender: asyncio.Task[None]) -> object:
    """The node's next answer (EOF at the end); the sender's failure, if it fails first."""
    either: set[asyncio.Future[Any]] = {reader, sender}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not reader.done():
        # The sender finished first; it either failed (re-raised here)
        # or closed the stream cleanly and the read will end.
        failure = sender.exception()
        if failure is not None:
            if isinstance(failure, grpc.aio.AioRpcError):
                # A refusal (permission, bad batch) ends the stream
                # while we write; its real status arrives on the read side.
                await asyncio.wait({reader}, timeout=5)
                if reader.done() and not reader.cancelled() and reader.exception():
                    reader.result()
            reader.cancel()
            sender.result()
        await reader
    return reader.result()


def _acknowledge(
    response: municipal_pb2.ImportResidentsResponse,
    in_flight: deque[int],
    slots: asyncio.Semaphore,
    summary: ImportSummary,
    bar: ProgressBar,
) -> None:
    """Count one acknowledged batch in ``summary``, free its window slot, move the bar."""
    if not in_flight:
        raise RuntimeError("the node acknowledged more batches than were sent")
    in_flight.popleft()
    slots.release()
    summary.imported += response.imported
    summary.already_present += response.already_present
    summary.rejected.extend(
        Rejection(r.line, r.source_id, r.field, r.reason) for r in response.rejected
    )
    summary.batches_acknowledged += 1
    bar.set_postfix(
        imported=summary.imported,
        present=summary.already_present,
        rejected=len(summary.rejected),
        refresh=False,
    )
    # Rows with an outcome: acknowledged ones and those refused locally.
    bar.update(summary.rows_done - bar.n)


async def import_csv(
    channel: grpc.aio.Channel,
    path: Path | str,
    *,
    batch: int = DEFAULT_BATCH,
    window: int = DEFAULT_WINDOW,
    progress: bool = True,
    progress_position: int | None = None,
    summary: ImportSummary | None = None,
) -> ImportSummary:
    """Import the CSV at ``path`` into the municipality ``channel`` leads to.

    ``channel`` must be a counter terminal's, with a supervisor's session of that municipality.
    At most ``window`` batches of ``batch`` rows are unacknowledged at any
    time. With ``progress`` a tqdm bar (rows, rows/s) runs on stderr;
    ``progress_position`` stacks several bars. Pass your own ``summary`` to
    keep the counts acknowledged so far when the import is interrupted
    (cancelled, or failing with :class:`grpc.aio.AioRpcError`).

    Raises :class:`CsvFormatError` for a file that cannot be read as the
    format requires; the node's refusal of the whole stream (permission,
    unreachable) as :class:`grpc.aio.AioRpcError`.
    """
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be between 1 and {MAX_BATCH}, got {batch}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    path = Path(path)
    summary = summary if summary is not None else ImportSummary()
    check_header(path)
    batches = read_batches(path, batch, summary)
    stub = municipal_pb2_grpc.MunicipalServiceStub(channel)
    started = time.perf_counter()
    bar = progress_bar(path.name, enabled=progress, position=progress_position)
    slots = asyncio.Semaphore(window)
    in_flight: deque[int] = deque()
    # The stubs type the stream opener as taking a request iterator; grpc.aio
    # also opens it without one, for write()/read().
    call: grpc.aio.StreamStreamCall[
        municipal_pb2.ImportResidentsRequest, municipal_pb2.ImportResidentsResponse
    ] = cast(Any, stub.ImportResidents)()
    try:
        await wait_until_accepted(call)
    except BaseException:
        call.cancel()
        bar.close()
        raise

    sender = asyncio.create_task(
        _send_batches(call, batches, slots, in_flight), name=f"import-send:{path.name}"
    )
    reader: asyncio.Future[object] | None = None
    try:
        while True:
            reader = asyncio.ensure_future(call.read())
            response = await _next_response(reader, sender)
            if not isinstance(response, municipal_pb2.ImportResidentsResponse):
                break  # grpc.aio.EOF: the node closed the stream
            _acknowledge(response, in_flight, slots, summary, bar)
        sender.result()
        if in_flight:
            raise RuntimeError(f"the stream ended with {len(in_flight)} batch(es) unacknowledged")
        bar.update(summary.rows_done - bar.n)
    finally:
        if reader is not None and not reader.done():
            reader.cancel()
        if not sender.done():
            sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        call.cancel()
        with contextlib.suppress(ValueError):  # still running in its thread
            batches.close()
        summary.seconds = time.perf_counter() - started
        bar.close()
    return summary


def write_rejections(path: Path | str, rejections: Sequence[Rejection]) -> None:
    """Write rejected rows as CSV: line, source_id, field, reason, where."""
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "source_id", "field", "reason", "where"])
        for r in sorted(rejections, key=lambda r: r.line):
            writer.writerow(
                [r.line, r.source_id, r.field, r.reason, "local" if r.local else "node"]
            )


# --- command line -----------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH}, got {value}")
    return value


async def _connect_and_import(args: argparse.Namespace, summary: ImportSummary, token: str) -> None:
    channel = connect(args.target, args.pki, args.identity, session=token)
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=args.connect_timeout)
        except TimeoutError:
            raise ConnectionError(
                f"cannot reach {args.target} within {args.connect_timeout:g} s"
            ) from None
        await import_csv(
            channel,
            args.file,
            batch=args.batch,
            window=args.window,
            progress=not args.quiet,
            summary=summary,
        )
    finally:
        await channel.close(None)


def _report(summary: ImportSummary, rejects: Path | None, out: IO[str]) -> None:
    print(summary.describe(), file=out)
    rejected = summary.sorted_rejections()
    if not rejected:
        return
    shown = rejected if rejects is None else rejected[:20]
    print("rejected rows:", file=out)
    for r in shown:
        print(f"  {r.describe()}", file=out)
    if rejects is not None:
        write_rejections(rejects, rejected)
        more = f" ({len(rejected) - len(shown)} more)" if len(rejected) > len(shown) else ""
        print(f"all {len(rejected)} rejected rows written to {rejects}{more}", file=out)


def _cmd_import(args: argparse.Namespace) -> int:
    if not args.target or not args.identity:
        print(
            "jukinet import: --target and --as are required (or JUKINET_TARGET / JUKINET_TERMINAL)",
            file=sys.stderr,
        )
        return 2
    summary = ImportSummary()
    saved: SavedSession | None = None
    try:
        saved = load_session(args)
        asyncio.run(_connect_and_import(args, summary, saved.token))
    except KeyboardInterrupt:
        print(
            f"\njukinet import: interrupted after {summary.rows_done} acknowledged rows "
            f"({summary.imported} imported); run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except (ConfigError, CsvFormatError, ConnectionError) as exc:
        print(f"jukinet import: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        line = explain_now(args, exc, "jukinet.v1.MunicipalService")
        print(f"jukinet import: {line}", file=sys.stderr)
        hint = counter_trouble(args, exc, saved)
        if hint:
            print(f"jukinet import: {hint}", file=sys.stderr)
        if summary.batches_acknowledged:
            print(
                f"jukinet import: {summary.imported + summary.already_present} rows were in "
                f"the register before the failure; run the same command again to resume",
                file=sys.stderr,
            )
        return 2
    _report(summary, args.rejects, sys.stdout)
    return summary.exit_code


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``import`` to a ``jukinet`` subcommand parser."""
    p = subparsers.add_parser(
        "import",
        help="bulk import an existing register from CSV",
        description=plain(__doc__.split("How it runs")[0]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="CSV file (see the format above)")
    counter_options(p)
    p.add_argument(
        "--batch",
        type=_batch_size,
        default=DEFAULT_BATCH,
        help=f"rows per batch (default {DEFAULT_BATCH}, at most {MAX_BATCH})",
    )
    p.add_argument(
        "--window",
        type=positive_int,
        default=DEFAULT_WINDOW,
        help=f"batches in flight (default {DEFAULT_WINDOW})",
    )
    p.add_argument("--rejects", type=Path, help="also write the rejected rows to this CSV file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--connect-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_import)
