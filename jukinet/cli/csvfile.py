"""CSV files of people, read a row at a time: the bulk import's registers and an
agency's batch of claims.

UTF-8 (a byte-order mark is allowed), a header row naming the columns, one
record per row. Blank lines are skipped; a row the csv module cannot parse is
reported with its line number instead of ending the file. A problem with the
file as a whole (missing, empty, not UTF-8, bad header) is a
:class:`CsvFormatError`.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

H = TypeVar("H")


class CsvFormatError(Exception):
    """The file as a whole cannot be read (missing, not UTF-8, bad header)."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data row: its line number and fields, or why it could not be parsed."""

    line: int
    fields: list[str]
    malformed: str = ""  # the csv module's complaint; ``fields`` is then empty


def open_csv(path: Path) -> IO[str]:
    """``path`` opened for :func:`read_csv` (UTF-8 with or without a BOM)."""
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise CsvFormatError(f"{path}: {exc.strerror or exc}") from None


def header_index(
    header: Sequence[str], *, columns: Sequence[str], required: Collection[str]
) -> dict[str, int]:
    """Column name → position, for a header that names only known ``columns``
    (any case, any order), each once, ``required`` ones included."""
    names = [h.strip().lower() for h in header]
    unknown = [n for n in names if n not in columns]
    if unknown:
        # A misspelt column would silently leave a field empty.
        raise CsvFormatError(
            f"header: unknown column(s) {', '.join(repr(u) for u in unknown)}; "
            f"known: {', '.join(columns)}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CsvFormatError(f"header: column(s) named twice: {', '.join(twice)}")
    missing = sorted(set(required) - set(names))
    if missing:
        raise CsvFormatError(f"header: missing required column(s): {', '.join(missing)}")
    return {n: i for i, n in enumerate(names)}


def read_csv(
    stream: IO[str], name: str, parse_header: Callable[[list[str]], H]
) -> tuple[H, Iterator[CsvRow]]:
    """The parsed header and the data rows of an open stream.

    The header is read now, so a bad one raises here; ``parse_header`` raises
    :class:`CsvFormatError` for a header it refuses. The rows are read as they
    are iterated.
    """
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise CsvFormatError(f"{name}: empty file; expected a header row") from None
    except UnicodeDecodeError as exc:
        raise CsvFormatError(f"{name}: not UTF-8 text near line 1: {exc.reason}") from None
    return parse_header(header), _rows(reader, name, len(header))


def _rows(reader: Any, name: str, columns: int) -> Iterator[CsvRow]:
    last_line = reader.line_num
    try:
        while True:
            line = last_line + 1
            try:
                fields: list[str] = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                last_line = reader.line_num
                yield CsvRow(line, [], f"malformed CSV: {exc}")
                continue
            last_line = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip() and columns > 1):
                continue  # a blank line
            yield CsvRow(line, fields)
    except UnicodeDecodeError as exc:
        raise CsvFormatError(
            f"{name}: not UTF-8 text near line {reader.line_num + 1}: {exc.reason}"
        ) from None


class ProgressBar(Protocol):
    """What the commands use of a progress bar (tqdm's, or one that draws nothing)."""

    n: float

    def update(self, n: float = 1) -> bool | None:
        """Count ``n`` more rows."""

    def set_postfix(
        self, ordered_dict: Any = None, refresh: bool | None = True, **kwargs: Any
    ) -> None:
        """Show counts after the bar."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Show a note after the bar."""

    def close(self) -> None:
        """Finish the bar."""


class NoBar:
    """A progress bar that counts and draws nothing."""

    def __init__(self) -> None:
        self.n: float = 0

    def update(self, n: float = 1) -> bool | None:
        """Count ``n`` more rows."""
        self.n += n
        return None

    def set_postfix(
        self, ordered_dict: Any = None, refresh: bool | None = True, **kwargs: Any
    ) -> None:
        """Nothing to show."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to finish."""


INSTALL_HINT = "progress bars need tqdm: pip install 'jukinet[cli]' (going on without one)"
_hinted = False


def progress_bar(
    desc: str, *, enabled: bool, total: int | None = None, position: int | None = None
) -> ProgressBar:
    """A progress bar in rows on stderr.

    It is drawn only when ``enabled`` and stderr is a terminal: redirected to a
    file, a bar would fill it with escape codes. Without tqdm (the ``cli``
    extra) nothing is drawn, and one line says how to get bars.
    """
    if not (enabled and sys.stderr.isatty()):
        return NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        global _hinted
        if not _hinted:
            _hinted = True
            print(f"jukinet: {INSTALL_HINT}", file=sys.stderr)
        return NoBar()
    bar: ProgressBar = tqdm(
        desc=desc,
        total=total,
        unit=" rows",
        unit_scale=False,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.2,
        position=position,
        leave=True,
    )
    return bar
