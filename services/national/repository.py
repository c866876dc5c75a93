"""The national node's SQL beyond the shared identity tables: code pools,
looking records up for agencies, and the provision records.

The lookups for agencies run on every request, so on PostgreSQL they go
straight to the asyncpg connection under SQLAlchemy's (:func:`driver`): one
prepared statement and one round trip each, where SQLAlchemy's adapter would
add a BEGIN before and a ROLLBACK after every read, and its statement building
and result processing cost more than the lookup itself. Each statement sees
the committed data as of its start, as every statement of a READ COMMITTED
transaction does; the answers are the same on SQLite, which keeps the plain
SQLAlchemy path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import LargeBinary, delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.db import one_of
from jukinet.delivery.rules import SUPERSEDED, StoredIdentity, record_after
from jukinet.delivery.store import STORED_FIELDS, IdentityStore
from jukinet.names import fold_kana
from jukinet.oplog.log import STATE_ID, LogError
from jukinet.oplog.merkle import Frontier
from jukinet.v1 import common_pb2, provision_pb2
from jukinet.vocabulary import operation_of, result_of
from services.national import models
from services.national.logic import fold_name

P = models.provisions
PROVISION_COLUMNS = (
    "provision_id",
    "provided_at",
    "agency_code",
    "purpose_code",
    "operation",
    "resident_code",
    "fields",
    "result",
    "reason",
    "log_index",
)
_PG_TYPES = {"provided_at": "timestamptz", "log_index": "bigint"}


def _pg_provisions(where: str = "") -> str:
    # The rows in the order given (ids follow it, and disclosure lists a resident's
    # provisions by time, then id).
    return (
        f"INSERT INTO {P.name} ({', '.join(PROVISION_COLUMNS)}) "
        f"SELECT {', '.join(PROVISION_COLUMNS)} FROM unnest("
        + ", ".join(
            f"${i}::{_PG_TYPES.get(c, 'varchar')}[]"
            for i, c in enumerate(PROVISION_COLUMNS, start=1)
        )
        + f") WITH ORDINALITY AS r({', '.join(PROVISION_COLUMNS)}, n) {where} ORDER BY n"
    )


_PG_PROVISIONS = _pg_provisions()
E = models.oplog.entries
S = models.oplog.state
ENTRY_COLUMNS = tuple(c.name for c in E.columns)
_ENTRY_TYPES = {"idx": "bigint", "recorded_us": "bigint"} | {
    c.name: "bytea" for c in E.columns if isinstance(c.type, LargeBinary)
}
_N = len(PROVISION_COLUMNS)
_SIZE, _FRONTIER, _OLD = (_N + len(ENTRY_COLUMNS) + i for i in (1, 2, 3))
# Nothing is written unless the log is at the size the entries were made for.
_AT_OLD = f"WHERE COALESCE((SELECT size FROM {S.name} WHERE id = {STATE_ID}), 0) = ${_OLD}"
# Provision rows, their log entries and the log's new frontier in one statement
# (one round trip, its own transaction). If the log is not at the size the
# entries were made for, nothing is written; if another append is under way,
# the entries' primary key makes the statement wait for it and then fail whole.
_PG_LOGGED = (
    f"WITH p AS ({_pg_provisions(_AT_OLD)}), e AS ("
    f"INSERT INTO {E.name} ({', '.join(ENTRY_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(
        f"${i}::{_ENTRY_TYPES.get(c, 'text')}[]" for i, c in enumerate(ENTRY_COLUMNS, start=_N + 1)
    )
    + f") {_AT_OLD}) INSERT INTO {S.name} (id, size, frontier) "
    f"SELECT {STATE_ID}, ${_SIZE}, ${_FRONTIER} {_AT_OLD} "
    "ON CONFLICT (id) DO UPDATE SET size = EXCLUDED.size, frontier = EXCLUDED.frontier "
    f"WHERE {S.name}.size = ${_OLD} RETURNING size"
)


async def unissued(
    store: IdentityStore, conn: AsyncConnection, candidates: Sequence[str]
) -> list[str]:
    """Those of ``candidates`` never issued before, in order."""
    taken: set[str] = set()
    for i in range(0, len(candidates), 500):
        taken |= await store.existing_codes(conn, candidates[i : i + 500])
    return [c for c in candidates if c not in taken]


async def driver(conn: AsyncConnection) -> Any | None:
    """The asyncpg connection under ``conn`` on PostgreSQL; None on SQLite.

    Statements sent on it run outside any transaction of the SQLAlchemy
    adapter (which then has nothing to roll back when ``conn`` is returned)."""
    if conn.dialect.name != "postgresql":
        return None
    # Kept in the connection's info, which lives as long as the DBAPI
    # connection (and is cleared when it is invalidated).
    pg = conn.info.get(_DRIVER)
    if pg is None:
        raw = await conn.get_raw_connection()
        pg = conn.info[_DRIVER] = raw.driver_connection
    return pg


_DRIVER = "jukinet.asyncpg"


def _columns(prefix: str = "") -> str:
    return ", ".join(prefix + f for f in STORED_FIELDS)


async def load_stored(
    store: IdentityStore, conn: AsyncConnection, codes: Sequence[str]
) -> dict[str, StoredIdentity]:
    """The stored records of these codes (those that exist), as :meth:`IdentityStore.load`."""
    pg = await driver(conn)
    if pg is None:
        return await store.load(conn, set(codes))
    rows = await pg.fetch(
        f"SELECT {_columns()} FROM {store.t.identities.name} "
        "WHERE resident_code = ANY($1::varchar[])",
        sorted(set(codes)),
    )
    return {row[0]: StoredIdentity(*row) for row in rows}


async def identify_by_codes(
    store: IdentityStore, conn: AsyncConnection, codes: Sequence[str]
) -> dict[str, StoredIdentity | None]:
    """The record each claimed code identifies; a code that was changed leads to
    the record that replaced it (the person is found, the old code no longer fits)."""
    found = await load_stored(store, conn, codes)
    out: dict[str, StoredIdentity | None] = {}
    for code in codes:
        current = found.get(code)
        for _ in range(16):  # a person changes code a handful of times at most
            if current is None or current.status != SUPERSEDED or not current.replaced_by:
                break
            nxt = current.replaced_by
            if nxt not in found:
                found.update(await load_stored(store, conn, [nxt]))
            current = found.get(nxt)
        out[code] = current
    return out


async def candidates_by_name_and_birth(
    store: IdentityStore,
    conn: AsyncConnection,
    claims: Sequence[tuple[str, str]],
    *,
    limit: int,
) -> list[list[StoredIdentity]]:
    """For each (name, birth date), the records :func:`candidates` finds for that
    name (no reading) on that birth date, at most ``limit`` each: one statement
    for all of them on PostgreSQL (a lateral join over the claims, each probing
    the name-key index as its own query would)."""
    pg = await driver(conn)
    if pg is None or not all(born for _, born in claims):
        return [
            await candidates(store, conn, name=name, kana="", birth_date=born, limit=limit)
            for name, born in claims
        ]
    rows = await pg.fetch(
        f"SELECT q.i, {_columns('c.')} "
        "FROM unnest($1::varchar[], $2::varchar[]) WITH ORDINALITY AS q(k, d, i) "
        f"CROSS JOIN LATERAL (SELECT {_columns()} FROM {store.t.identities.name} "
        "WHERE name_key = q.k AND birth_date = q.d LIMIT $3) AS c",
        [fold_name(name) for name, _ in claims],
        [born for _, born in claims],
        limit,
    )
    out: list[list[StoredIdentity]] = [[] for _ in claims]
    for row in rows:
        out[row[0] - 1].append(StoredIdentity(*row[1:]))
    return out


async def candidates(
    store: IdentityStore,
    conn: AsyncConnection,
    *,
    name: str,
    kana: str,
    birth_date: str,
    limit: int,
) -> list[StoredIdentity]:
    """Records whose folded name (or reading) matches, on the birth date if given."""
    t = store.t.identities
    keys = [t.c.name_key == fold_name(name)]
    if kana:
        keys.append(t.c.kana_key == fold_kana(kana))
    query = select(*(t.c[f] for f in STORED_FIELDS)).where(or_(*keys))
    if birth_date:
        query = query.where(t.c.birth_date == birth_date)
    rows = await conn.execute(query.limit(limit))
    return [StoredIdentity(*r) for r in rows]


async def record_as_of(
    store: IdentityStore, conn: AsyncConnection, resident_code: str, date: str
) -> StoredIdentity | None:
    """The record as it stood at the end of ``date``, from its history."""
    h = store.t.history
    codes = await store.chain(conn, resident_code)
    row = (
        await conn.execute(
            select(h.c.payload)
            .where(
                one_of(conn, h.c.resident_code, sorted(codes)),
                h.c.effective_date <= date,
                h.c.changed_current,
            )
            .order_by(h.c.effective_date.desc(), h.c.id.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    return record_after(common_pb2.Notification.FromString(row[0]))


# -- provision records ------------------------------------------------------------


async def insert_provisions(conn: AsyncConnection, rows: Sequence[dict[str, object]]) -> None:
    """Insert provision rows (keys: :data:`PROVISION_COLUMNS`), in order.

    On PostgreSQL one ``INSERT ... SELECT FROM unnest(...)`` straight on the
    driver, which outside a transaction commits on its own; on SQLite a plain
    insert in the caller's transaction."""
    pg = await driver(conn)
    if pg is None:
        await conn.execute(insert(P), list(rows))
        return
    await pg.execute(_PG_PROVISIONS, *([r[c] for r in rows] for c in PROVISION_COLUMNS))


async def log_frontier(conn: AsyncConnection) -> Frontier:
    """The operation log's frontier as committed, read straight on the driver on PostgreSQL
    (so that no transaction of the adapter is left open on a kept connection)."""
    pg = await driver(conn)
    if pg is None:
        row = (
            await conn.execute(select(S.c.size, S.c.frontier).where(S.c.id == STATE_ID))
        ).one_or_none()
    else:
        row = await pg.fetchrow(f"SELECT size, frontier FROM {S.name} WHERE id = {STATE_ID}")
    return Frontier() if row is None else Frontier.from_bytes(int(row[0]), bytes(row[1]))


async def insert_logged_provisions(
    conn: AsyncConnection,
    rows: Sequence[dict[str, object]],
    entries: Sequence[dict[str, object]],
    old: Frontier,
    new: Frontier,
) -> None:
    """PostgreSQL: insert provision rows, their log entries (``entries``, appended after
    ``old``) and the frontier ``new``, in one statement that commits on its own.

    Raises the driver's error (a unique violation when another append took one of
    the indexes) or :class:`LogError` (the log is not at ``old``'s size), with
    nothing written."""
    pg = await driver(conn)
    if pg is None:
        raise RuntimeError("insert_logged_provisions is PostgreSQL's")
    size = await pg.fetchval(
        _PG_LOGGED,
        *([r[c] for r in rows] for c in PROVISION_COLUMNS),
        *([r[c] for r in entries] for c in ENTRY_COLUMNS),
        new.size,
        new.to_bytes(),
        old.size,
    )
    if size != new.size:
        raise LogError(f"the operation log was not at size {old.size}")


async def provisions_of(
    conn: AsyncConnection, codes: Sequence[str]
) -> list[provision_pb2.Provision]:
    """Every provision of these codes (a resident's whole chain), oldest first."""
    rows = await conn.execute(
        select(
            P.c.provision_id,
            P.c.provided_at,
            P.c.agency_code,
            P.c.purpose_code,
            P.c.operation,
            P.c.resident_code,
            P.c.fields,
            P.c.result,
        )
        .where(P.c.resident_code.in_(codes))
        .order_by(P.c.provided_at, P.c.id)
    )
    out = []
    for pid, at, agency, purpose, operation, code, fields, result in rows:
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        out.append(
            provision_pb2.Provision(
                provision_id=pid,
                provided_at=at.isoformat(),
                agency_code=agency,
                purpose_code=purpose,
                operation=operation_of(operation),
                resident_code=code,
                fields=[f for f in fields.split(",") if f],
                result=result_of(result),
            )
        )
    return out


async def provision_log_indexes(conn: AsyncConnection, codes: Sequence[str]) -> dict[str, int]:
    """The log index of each provision of these codes that has an entry, by provision id."""
    rows = await conn.execute(
        select(P.c.provision_id, P.c.log_index).where(
            P.c.resident_code.in_(codes), P.c.log_index.is_not(None)
        )
    )
    return {pid: int(idx) for pid, idx in rows}


async def delete_provisions_before(conn: AsyncConnection, cutoff: dt.datetime) -> int:
    """Delete provision records older than ``cutoff``; returns how many."""
    result = await conn.execute(delete(P).where(P.c.provided_at < cutoff))
    return int(result.rowcount or 0)
