"""The national node's SQL beyond the shared holdings: minting code pools and
looking records up for agencies.

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

from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.db import one_of
from jukinet.delivery.rules import ACTIVE, REMOVED, SUPERSEDED, Held
from jukinet.delivery.store import HELD_FIELDS, HoldingStore
from jukinet.errors import InvalidArgument
from jukinet.names import fold_kana
from jukinet.v1 import common_pb2
from services.national.logic import fold_name, mint_candidates


async def allocate_pool(
    store: HoldingStore, conn: AsyncConnection, municipality: str, count: int, request_id: str
) -> list[str]:
    """Codes for a municipality, never issued before; a repeated request_id returns
    the same codes. Uniqueness rests on the primary key of ``issued_codes``; the
    write lock means no other minting runs between the check and the insert."""
    earlier = await store.issued_for_request(conn, request_id)
    if earlier is not None:
        owner, codes = earlier
        if owner != municipality:
            raise InvalidArgument("request_id", "already used for another municipality")
        return codes
    issued: list[str] = []
    while len(issued) < count:
        candidates = mint_candidates(count - len(issued))
        taken: set[str] = set()
        for i in range(0, len(candidates), 500):
            taken |= await store.existing_codes(conn, candidates[i : i + 500])
        fresh = [c for c in candidates if c not in taken]
        await store.record_issued(conn, fresh, municipality, request_id)
        issued.extend(fresh)
    return sorted(issued)


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
    return ", ".join(prefix + f for f in HELD_FIELDS)


async def load_held(
    store: HoldingStore, conn: AsyncConnection, codes: Sequence[str]
) -> dict[str, Held]:
    """The held records of these codes (those that exist), as :meth:`HoldingStore.load`."""
    pg = await driver(conn)
    if pg is None:
        return await store.load(conn, set(codes))
    rows = await pg.fetch(
        f"SELECT {_columns()} FROM {store.t.identities.name} "
        "WHERE resident_code = ANY($1::varchar[])",
        sorted(set(codes)),
    )
    return {row[0]: Held(*row) for row in rows}


async def identify_by_codes(
    store: HoldingStore, conn: AsyncConnection, codes: Sequence[str]
) -> dict[str, Held | None]:
    """The record each claimed code identifies; a code that was changed leads to
    the record that replaced it (the person is found, the old code no longer fits)."""
    held = await load_held(store, conn, codes)
    out: dict[str, Held | None] = {}
    for code in codes:
        current = held.get(code)
        for _ in range(16):  # a person changes code a handful of times at most
            if current is None or current.status != SUPERSEDED or not current.replaced_by:
                break
            nxt = current.replaced_by
            if nxt not in held:
                held.update(await load_held(store, conn, [nxt]))
            current = held.get(nxt)
        out[code] = current
    return out


async def candidates_by_name_and_birth(
    store: HoldingStore,
    conn: AsyncConnection,
    claims: Sequence[tuple[str, str]],
    *,
    limit: int,
) -> list[list[Held]]:
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
    out: list[list[Held]] = [[] for _ in claims]
    for row in rows:
        out[row[0] - 1].append(Held(*row[1:]))
    return out


async def candidates(
    store: HoldingStore,
    conn: AsyncConnection,
    *,
    name: str,
    kana: str,
    birth_date: str,
    limit: int,
) -> list[Held]:
    """Records whose folded name (or reading) matches, on the birth date if given."""
    t = store.t.identities
    keys = [t.c.name_key == fold_name(name)]
    if kana:
        keys.append(t.c.kana_key == fold_kana(kana))
    query = select(*(t.c[f] for f in HELD_FIELDS)).where(or_(*keys))
    if birth_date:
        query = query.where(t.c.birth_date == birth_date)
    rows = await conn.execute(query.limit(limit))
    return [Held(*r) for r in rows]


async def record_as_of(
    store: HoldingStore, conn: AsyncConnection, resident_code: str, date: str
) -> Held | None:
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
    n = common_pb2.Notification.FromString(row[0])
    status = REMOVED if n.kind == common_pb2.CHANGE_KIND_REMOVED else ACTIVE
    return Held.from_notification(n, status)
