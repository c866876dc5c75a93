"""What every benchmark of the package shares: the error, progress lines,
percentiles and the facts about the machine a run was measured on."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import google.protobuf
import grpc
import sqlalchemy

from tools.localfed import PG_SERVER
from tools.localfed import postgres_version as _server_version

REPO = Path(__file__).resolve().parent.parent
"""The repository root (where ``docs/benchmarks.md`` lives)."""

_T0 = time.monotonic()


class BenchError(RuntimeError):
    """A phase failed; the message says which and why."""


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def machine_facts() -> dict[str, Any]:
    """CPUs, platform and library versions (``postgresql`` filled in by the caller)."""
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "postgresql": None,
    }


async def postgres_version() -> str | None:
    """The PostgreSQL server's version (``JUKINET_TEST_PG_DSN``); None if it does not answer."""
    try:
        return await _server_version()
    except Exception as exc:  # any failure to connect means: no server to measure on
        progress(f"PostgreSQL unreachable at {PG_SERVER}: {exc}")
        return None
