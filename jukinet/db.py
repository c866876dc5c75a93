"""Database engines for the nodes: SQLite (embedded default) and PostgreSQL.

Each node owns one database and runs as one process. Writes go through
:meth:`Database.write`, which serialises them inside the process: on SQLite
that is the only way to write anyway, and on PostgreSQL it makes counters and
cursors race-free without row-lock choreography, while the work that does not
need the lock (parsing, validation) happens outside it.

A database that has run out of room (SQLite's ``SQLITE_FULL``, PostgreSQL's
SQLSTATE 53100 ``disk_full``, ``ENOSPC``/``EDQUOT`` from the file system) is
not a fault of the node: :meth:`Database.write` and :meth:`Database.read`
turn it into :class:`~jukinet.errors.StorageFull` (RESOURCE_EXHAUSTED,
reason ``storage-full``, a RetryInfo), the transaction rolled back, and
count it with ``on_storage_full`` (the node's ``jukinet_storage_full_total``).
Nothing needs resetting when space is freed: the next operation simply
succeeds. Other
PostgreSQL resource shortages (SQLSTATE class 53: memory, connections) are
UNAVAILABLE. :func:`storage_refusal` is that one mapping.

The write of an operator's operation goes through :meth:`Database.operation`
instead: the interceptor binds the call's :class:`OperationScope` (its
operation log entry in the making, :func:`bind_operation`) for the call, and
the transaction appends that entry as its last statement, so the change and
its entry commit together or not at all. The frontier row of the log is
therefore the last lock such a transaction takes, after the register's rows
(and every other writer takes it alone), so writers never wait on each other
in a cycle. A service names the residents its write touched with
:func:`touched` (a new code, say, is in no request).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import ARRAY, ColumnElement, String, any_, cast, event, literal
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from jukinet.errors import ConfigError, JukinetError, StorageFull, Unavailable

_log = logging.getLogger("jukinet.db")

T = TypeVar("T")

CLOSE_GRACE = 10.0
"""Seconds :meth:`Database.close` waits for work started with
:meth:`Database.complete` before it cancels what is left."""

StorageHook = Callable[[], None]
"""Told about each database operation refused because the storage is full."""

_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
_PG_INSUFFICIENT_RESOURCES = "53"  # the SQLSTATE class
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


class OperationScope(Protocol):
    """The operation log entry of the operator call being handled, in the making."""

    def touch(self, codes: Iterable[str]) -> None:
        """Note residents the call's write touched."""
        ...

    async def log_in(self, conn: AsyncConnection) -> None:
        """Append the entry of the call's write (outcome ok) inside ``conn``'s transaction."""
        ...

    def committed(self) -> None:
        """The transaction :meth:`log_in` wrote into has committed."""
        ...


_operation: contextvars.ContextVar[OperationScope | None] = contextvars.ContextVar(
    "jukinet_operation", default=None
)


def bind_operation(scope: OperationScope) -> contextvars.Token[OperationScope | None]:
    """Make ``scope`` the operation of the current call (its task's context)."""
    return _operation.set(scope)


def unbind_operation(token: contextvars.Token[OperationScope | None]) -> None:
    """Undo :func:`bind_operation` (quietly, from another context too)."""
    # An async generator can be finalised in another context; each call has
    # its own context copy, so there is nothing to restore then.
    with contextlib.suppress(ValueError):
        _operation.reset(token)


def touched(codes: Iterable[str]) -> None:
    """Note resident codes the current operation's write touches (none bound: nothing)."""
    scope = _operation.get()
    if scope is not None:
        scope.touch(codes)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver error a SQLAlchemy error wraps, and their causes."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                todo.append(linked)


def storage_refusal(exc: BaseException) -> JukinetError | None:
    """The refusal ``exc`` stands for if it is a lack of room or resources, else None.

    SQLite reports a full disk (and a full ``max_page_count``) as
    ``SQLITE_FULL``, "database or disk is full"; asyncpg errors carry their
    SQLSTATE (``sqlstate``); a file write fails with ``ENOSPC`` or ``EDQUOT``.
    """
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno in _NO_ROOM:
            return StorageFull()
        if isinstance(cause, sqlite3.Error):
            code = getattr(cause, "sqlite_errorcode", None)
            if (code is not None and code & 0xFF == _SQLITE_FULL) or (
                "database or disk is full" in str(cause)
            ):
                return StorageFull()
            continue
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str) and state == _PG_DISK_FULL:
            return StorageFull()
        if isinstance(state, str) and state.startswith(_PG_INSUFFICIENT_RESOURCES):
            return Unavailable("the database is short of resources now; retry later")
    return None


class Database:
    """One node's database: an async engine and a write lock."""

    def __init__(
        self, url: str, *, pool_size: int = 5, on_storage_full: StorageHook | None = None
    ) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"database_url: cannot parse {url!r}: {exc}") from None
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        # A failed statement's parameters are a person's record: never let them
        # into an exception message, and so into a log.
        kwargs: dict[str, Any] = {"hide_parameters": True}
        if self.is_sqlite:
            # Each aiosqlite connection owns a thread; a small pool is plenty and
            # ":memory:" would give every connection its own empty database.
            if parsed.database in (None, "", ":memory:"):
                raise ConfigError("database_url: SQLite needs a file path")
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._write_lock = asyncio.Lock()
        self._on_storage_full = on_storage_full
        self._completing: set[asyncio.Future[Any]] = set()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on success, rolled back on any error
        (:class:`~jukinet.errors.StorageFull` when the storage has no room)."""
        try:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn
        except Exception as exc:
            self._refuse_if_full(exc)
            raise

    @asynccontextmanager
    async def operation(self) -> AsyncIterator[AsyncConnection]:
        """The write transaction of an operation: as :meth:`write`, and the
        operation log entry of the operator call being handled (if one is
        bound, :func:`bind_operation`) is its last statement, so both commit
        or neither does. Without a bound call it is :meth:`write`."""
        scope = _operation.get()
        try:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn
                if scope is not None:
                    await scope.log_in(conn)
        except Exception as exc:
            self._refuse_if_full(exc)
            raise
        if scope is not None:
            scope.committed()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only unit of work (no lock; WAL readers do not block the writer)."""
        try:
            async with self.engine.connect() as conn:
                yield conn
        except Exception as exc:
            self._refuse_if_full(exc)
            raise

    def _refuse_if_full(self, exc: Exception) -> None:
        """Raise the refusal ``exc`` stands for, if it is a lack of room (see the module)."""
        if isinstance(exc, JukinetError):
            return
        refusal = storage_refusal(exc)
        if refusal is None:
            return
        # The exception's class only: its text can name the statement.
        _log.warning("database operation refused: %s (%s)", refusal.message, type(exc).__name__)
        if isinstance(refusal, StorageFull) and self._on_storage_full is not None:
            self._on_storage_full()
        raise refusal from exc

    async def migrate(self, versions: Path) -> None:
        """Bring the schema to the newest revision in ``versions`` (Alembic).

        This is a node's first use of its database, so a database that cannot
        be reached or opened is reported here as one line naming
        ``database_url``. The folder of an SQLite file is created if missing.
        """
        from jukinet.migrate import upgrade

        if self.is_sqlite:
            self._make_sqlite_folder()
        try:
            async with self._write_lock, self.engine.begin() as conn:
                await conn.run_sync(upgrade, versions)
        except (OSError, DBAPIError) as exc:
            raise ConfigError(self._cannot_open(exc)) from None

    def _make_sqlite_folder(self) -> None:
        folder = Path(make_url(self.url).database or "").parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"database_url: cannot create the folder {folder}: {exc.strerror or exc}"
            ) from None

    def _cannot_open(self, exc: OSError | DBAPIError) -> str:
        """One line for a database the node cannot open, naming the setting."""
        url = make_url(self.url)
        if self.is_sqlite:
            cause = exc.orig if isinstance(exc, DBAPIError) else exc
            return f"database_url: cannot open the SQLite file {url.database}: {cause}"
        where = f"{url.host or 'localhost'}:{url.port or 5432}"
        if isinstance(exc, OSError):
            # Refused, unknown host, unreachable: the server, not the database.
            why = exc.strerror or str(exc) or type(exc).__name__
            return f"database_url: cannot reach the PostgreSQL server at {where}: {why}"
        said = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
        hint = ""
        if f'database "{url.database}" does not exist' in said:
            hint = (
                f"; create it first (createdb -h {url.host} -p {url.port or 5432} {url.database})"
            )
        return f"database_url: PostgreSQL at {where}: {said}{hint}"

    async def complete(self, work: Awaitable[T]) -> T:
        """Run ``work`` (a transaction) to its end even if the caller is
        cancelled: a batch whose sender went away, an acknowledgement at the end
        of a session. The caller's retry then finds it done. :meth:`close`
        waits for such work before it releases the connections."""
        task = asyncio.ensure_future(work)
        self._completing.add(task)
        task.add_done_callback(self._completing.discard)
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Close the pooled connections (on shutdown), once the work started
        with :meth:`complete` has ended (at most :data:`CLOSE_GRACE` seconds;
        what is left then is cancelled and rolls back)."""
        if self._completing:
            _, pending = await asyncio.wait(set(self._completing), timeout=CLOSE_GRACE)
            if pending:
                _log.warning("closing the database with %d transactions cut short", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=CLOSE_GRACE)
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; synchronous=FULL makes every
    # commit durable before an acknowledgement leaves the node.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def null_pool_engine(url: str) -> AsyncEngine:
    """An engine without pooling, for one-off administrative work."""
    return create_async_engine(url, poolclass=NullPool, hide_parameters=True)


def one_of(
    conn: AsyncConnection, column: ColumnElement[Any], values: Sequence[Any]
) -> ColumnElement[bool]:
    """``column IN values``, written so that PostgreSQL plans it well.

    An IN list of bound parameters is a prepared statement whose generic plan is
    fixed after a few runs; planned on a young, empty table it stays a full scan
    as the table grows. PostgreSQL gets one array parameter instead
    (``column = ANY($1)``), which keeps the index lookup and compiles once.
    """
    if conn.dialect.name == "postgresql":
        item_type = column.type if isinstance(column.type, String) else String()
        return column == any_(cast(literal(list(values), ARRAY(item_type)), ARRAY(item_type)))
    return column.in_(values)


# SQLite names what failed in its message: identifiers only, never values.
_SQLITE_CONSTRAINT = re.compile(
    r"^(?:UNIQUE|CHECK|NOT NULL|FOREIGN KEY|PRIMARY KEY) constraint failed: ([\w.]+(?:, [\w.]+)*)$"
)
# The attributes of an asyncpg error that name, never quote: the values a
# failed row held travel in its message and its DETAIL ("Failing row contains").
_NAMING = (("constraint_name", "constraint"), ("table_name", "table"), ("column_name", "column"))


def describe_error(exc: BaseException) -> str:
    """One line about ``exc`` that is safe to log or to put into a status.

    A database error's text can carry the record it failed on: PostgreSQL's
    DETAIL (``Failing row contains (...)``), a key's value, a trigger's
    message, the statement's parameters. This line names only the exception
    classes, the SQLSTATE (or SQLite's error name) and the constraint, table
    and column involved; anything else is described by its class alone, since
    its text is not ours to trust either.
    """
    parts = [type(exc).__name__]
    if isinstance(exc, StatementError):
        cause: BaseException | None = exc.orig
        # The asyncpg adapter's error wraps asyncpg's own, which has the fields.
        if cause is not None and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is not None:
            parts.append(type(cause).__name__)
            parts.extend(_described_cause(cause))
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _described_cause(cause: BaseException) -> list[str]:
    said: list[str] = []
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if isinstance(sqlstate, str) and re.fullmatch(r"[0-9A-Z]{5}", sqlstate):
        said.append(f"SQLSTATE {sqlstate}")
    errorname = getattr(cause, "sqlite_errorname", None)
    if isinstance(errorname, str) and re.fullmatch(r"SQLITE_[A-Z_]+", errorname):
        said.append(errorname)
        found = _SQLITE_CONSTRAINT.match(str(cause))
        if found is not None:
            said.append(f"constraint on {found.group(1)}")
    for attribute, label in _NAMING:
        value = getattr(cause, attribute, None)
        if isinstance(value, str) and re.fullmatch(r"[\w.$]{1,63}", value):
            said.append(f"{label} {value}")
    return said


# SQLSTATE classes that speak of the server, not of the data: connection
# exceptions, transaction rollbacks (serialization, deadlock), insufficient
# resources (disk full, out of memory), operator intervention, system errors.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_SQLITE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
    "SQLITE_PROTOCOL",
)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot work now (unreachable, busy,
    full), so the same statement may succeed later; False for an error about
    what was written (a constraint, a value the column refuses, a trigger's
    refusal) and for anything that is not a database error at all."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    cause: BaseException | None = exc.orig
    if cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is None:
        return False
    if isinstance(cause, OSError | TimeoutError):
        return True
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    errorname = getattr(cause, "sqlite_errorname", None)
    if isinstance(errorname, str):
        return errorname.startswith(_TRANSIENT_SQLITE)
    # A driver's own error without a code: a closed or broken connection.
    return isinstance(exc, InterfaceError | OperationalError)
