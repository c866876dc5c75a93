"""The municipal node's SQL: residents, the code pool, pool requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.db import one_of
from jukinet.v1 import common_pb2
from jukinet.vocabulary import PERSON_FIELDS, Person, person_values
from services.municipal import models
from services.municipal.logic import (
    ACTIVE,
    REMOVED,
    Register,
    ResidentState,
)

R = models.residents
_COLUMNS = (
    R.c.id,
    R.c.resident_code,
    *(R.c[f] for f in PERSON_FIELDS),
    R.c.household_id,
    R.c.status,
    R.c.registered_on,
    R.c.removed_on,
    R.c.last_reason,
    R.c.relationship,
    R.c.previous_address,
    R.c.domicile,
    R.c.domicile_head,
    R.c.entry_reason,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _state(row: Any) -> ResidentState:
    return ResidentState(
        id=row[0],
        resident_code=row[1],
        person=Person(*row[2:9]),
        household_id=row[9],
        status=row[10],
        registered_on=row[11],
        removed_on=row[12],
        last_reason=row[13],
        register=Register(row[14], row[15], row[16], row[17]),
        entry_reason=row[18],
    )


def register_values(register: Register) -> dict[str, object]:
    """The columns of the register-only items."""
    return {
        "relationship": register.relationship,
        "previous_address": register.previous_address,
        "domicile": register.domicile,
        "domicile_head": register.domicile_head,
    }


async def resident_by_code(conn: AsyncConnection, code: str) -> ResidentState | None:
    """The entry with this code, or with a code it had before a code change."""
    row = (await conn.execute(select(*_COLUMNS).where(R.c.resident_code == code))).first()
    if row is None:
        resident_id = await conn.scalar(
            select(models.previous_codes.c.resident_id).where(
                models.previous_codes.c.resident_code == code
            )
        )
        if resident_id is None:
            return None
        row = (await conn.execute(select(*_COLUMNS).where(R.c.id == resident_id))).first()
    return None if row is None else _state(row)


async def household_members(conn: AsyncConnection, household_id: str) -> list[ResidentState]:
    """The current members of a household, in the order they were entered."""
    rows = await conn.execute(
        select(*_COLUMNS)
        .where(R.c.household_id == household_id, R.c.status == ACTIVE)
        .order_by(R.c.id)
    )
    return [_state(r) for r in rows]


async def household_exists(conn: AsyncConnection, household_id: str) -> bool:
    """Whether the household has a current member."""
    found = await conn.scalar(
        select(R.c.id).where(R.c.household_id == household_id, R.c.status == ACTIVE).limit(1)
    )
    return found is not None


async def insert_resident(
    conn: AsyncConnection,
    code: str,
    person: Person,
    household_id: str,
    registered_on: str,
    reason: common_pb2.ChangeReason.ValueType,
    source_id: str | None = None,
    register: Register | None = None,
) -> ResidentState:
    """Enter an active resident under ``code``; returns the new entry."""
    register = register or Register()
    values = {
        **register_values(register),
        "entry_reason": reason,
        "resident_code": code,
        "source_id": source_id,
        **person_values(person),
        "household_id": household_id,
        "status": ACTIVE,
        "registered_on": registered_on,
        "removed_on": "",
        "last_reason": reason,
        "updated_at": _now(),
    }
    result = await conn.execute(insert(R).values(**values).returning(R.c.id))
    resident_id = int(result.scalar_one())
    return ResidentState(
        resident_id, code, person, household_id, ACTIVE, registered_on, "", reason, register, reason
    )


async def ids_by_source(conn: AsyncConnection, source_ids: Sequence[str]) -> dict[str, int]:
    """The entry id of each of ``source_ids`` that is entered."""
    out: dict[str, int] = {}
    for i in range(0, len(source_ids), 500):
        rows = await conn.execute(
            select(R.c.source_id, R.c.id).where(
                one_of(conn, R.c.source_id, source_ids[i : i + 500])
            )
        )
        out.update({str(s): int(n) for s, n in rows})
    return out


async def insert_residents(conn: AsyncConnection, rows: Sequence[dict[str, object]]) -> None:
    """Bulk insert (one executemany); rows carry every column but id."""
    if rows:
        now = _now()
        await conn.execute(insert(R), [{**r, "updated_at": now} for r in rows])


async def update_resident(conn: AsyncConnection, resident_id: int, **values: object) -> None:
    """Set columns of a register entry (``updated_at`` too)."""
    await conn.execute(update(R).where(R.c.id == resident_id).values(**values, updated_at=_now()))


async def record_code_change(
    conn: AsyncConnection, resident_id: int, old: str, new: str, on: str
) -> None:
    """Keep ``old`` as a previous code of the resident, replaced by ``new`` on ``on``."""
    await conn.execute(
        insert(models.previous_codes).values(
            resident_code=old, resident_id=resident_id, replaced_by=new, changed_on=on
        )
    )


async def codes_of(conn: AsyncConnection, resident: ResidentState) -> list[str]:
    """Every code the resident has had, current first."""
    rows = await conn.execute(
        select(models.previous_codes.c.resident_code).where(
            models.previous_codes.c.resident_id == resident.id
        )
    )
    return [resident.resident_code, *rows.scalars()]


async def existing_source_ids(conn: AsyncConnection, source_ids: Sequence[str]) -> set[str]:
    """Which of ``source_ids`` an earlier import already entered."""
    out: set[str] = set()
    for i in range(0, len(source_ids), 500):
        rows = await conn.execute(
            select(R.c.source_id).where(one_of(conn, R.c.source_id, source_ids[i : i + 500]))
        )
        out.update(s for s in rows.scalars() if s is not None)
    return out


async def export_page(conn: AsyncConnection, after_id: int, limit: int) -> list[ResidentState]:
    """Up to ``limit`` entries, active and removed, after ``after_id`` in id order."""
    rows = await conn.execute(
        select(*_COLUMNS).where(R.c.id > after_id).order_by(R.c.id).limit(limit)
    )
    return [_state(r) for r in rows]


async def resident_counts(conn: AsyncConnection) -> tuple[int, int]:
    """How many entries are active, and how many removed."""
    rows = await conn.execute(select(R.c.status, func.count()).group_by(R.c.status))
    counts = {int(s): int(c) for s, c in rows}
    return counts.get(ACTIVE, 0), counts.get(REMOVED, 0)


async def resident_by_id(conn: AsyncConnection, resident_id: int) -> ResidentState | None:
    """The entry with this id."""
    row = (await conn.execute(select(*_COLUMNS).where(R.c.id == resident_id))).first()
    return None if row is None else _state(row)


async def household_entries(conn: AsyncConnection, household_id: str) -> list[ResidentState]:
    """Every entry, current or removed, that is in the household now or left
    it by removal (in the order entered)."""
    rows = await conn.execute(
        select(*_COLUMNS).where(R.c.household_id == household_id).order_by(R.c.id)
    )
    return [_state(r) for r in rows]


# -- households ---------------------------------------------------------------

H = models.households


async def household_row(conn: AsyncConnection, household_id: str) -> tuple[int | None, str] | None:
    """The household's recorded head (entry id, or None) and address; None if never recorded."""
    row = (
        await conn.execute(
            select(H.c.head_resident_id, H.c.address).where(H.c.household_id == household_id)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def household_head(conn: AsyncConnection, household_id: str) -> ResidentState | None:
    """The current head of the household: the recorded head, while they are a
    current member of it."""
    found = await household_row(conn, household_id)
    if found is None or found[0] is None:
        return None
    head = await resident_by_id(conn, found[0])
    if head is None or head.status != ACTIVE or head.household_id != household_id:
        return None
    return head


async def insert_household(
    conn: AsyncConnection, household_id: str, head_resident_id: int | None, address: str
) -> None:
    """Record a new household with its head and address."""
    await conn.execute(
        insert(H).values(
            household_id=household_id,
            head_resident_id=head_resident_id,
            address=address,
            created_at=_now(),
        )
    )


async def insert_missing_households(
    conn: AsyncConnection, rows: dict[str, str], heads: dict[str, int]
) -> list[str]:
    """Record the households of ``rows`` (id -> address) not recorded yet, with
    their head from ``heads`` (id -> entry id) where it has one; returns the
    households that were recorded before."""
    ids = list(rows)
    known: set[str] = set()
    for i in range(0, len(ids), 500):
        found = await conn.execute(
            select(H.c.household_id).where(one_of(conn, H.c.household_id, ids[i : i + 500]))
        )
        known.update(found.scalars())
    now = _now()
    missing = [
        {"household_id": h, "head_resident_id": heads.get(h), "address": a, "created_at": now}
        for h, a in rows.items()
        if h not in known
    ]
    if missing:
        await conn.execute(insert(H), missing)
    return sorted(known)


async def set_household(
    conn: AsyncConnection, household_id: str, *, head: int | None = None, address: str = ""
) -> None:
    """Set the household's head or address (a household never recorded gets its row)."""
    values: dict[str, object] = {}
    if head is not None:
        values["head_resident_id"] = head
    if address:
        values["address"] = address
    found = await household_row(conn, household_id)
    if found is None:
        await insert_household(conn, household_id, head, address)
    elif values:
        await conn.execute(update(H).where(H.c.household_id == household_id).values(**values))


# -- events ---------------------------------------------------------------------

E = models.resident_events


async def insert_events(conn: AsyncConnection, rows: Sequence[dict[str, object]]) -> None:
    """Record change events (one executemany); each row carries every column but id."""
    if rows:
        now = _now()
        await conn.execute(insert(E), [{"recorded_at": now, **r} for r in rows])


async def events_of(conn: AsyncConnection, resident_id: int) -> list[Any]:
    """Every event of an entry, oldest first."""
    rows = await conn.execute(
        select(
            E.c.id,
            E.c.resident_code,
            E.c.reason,
            E.c.register_change,
            E.c.effective_date,
            E.c.recorded_at,
            E.c.operator,
            E.c.changes,
        )
        .where(E.c.resident_id == resident_id)
        .order_by(E.c.id)
    )
    return list(rows)


# -- code pool --------------------------------------------------------------

P = models.code_pool


async def free_codes(conn: AsyncConnection) -> int:
    """How many codes of the pool are still unused."""
    return int(
        await conn.scalar(select(func.count()).select_from(P).where(P.c.used_at.is_(None))) or 0
    )


async def take_codes(conn: AsyncConnection, count: int) -> list[str]:
    """Mark ``count`` unused codes as used and return them (fewer if the pool is short)."""
    codes = list(
        (
            await conn.execute(
                # No ORDER BY: the codes are random anyway, and ordering would make
                # every call walk past all the codes already used.
                select(P.c.resident_code).where(P.c.used_at.is_(None)).limit(count)
            )
        ).scalars()
    )
    now = _now()
    for i in range(0, len(codes), 500):
        await conn.execute(
            update(P).where(one_of(conn, P.c.resident_code, codes[i : i + 500])).values(used_at=now)
        )
    return codes


async def pending_pool_request(conn: AsyncConnection) -> tuple[str, int] | None:
    """The oldest pool request not yet answered (its id and size), to be sent again as it was."""
    Q = models.pool_requests
    row = (
        await conn.execute(
            select(Q.c.request_id, Q.c.count)
            .where(Q.c.fulfilled_at.is_(None))
            .order_by(Q.c.requested_at)
            .limit(1)
        )
    ).first()
    return None if row is None else (row[0], int(row[1]))


async def add_pool_request(conn: AsyncConnection, request_id: str, count: int) -> None:
    """Record a pool request before it is sent, so that a retry reuses its id."""
    await conn.execute(
        insert(models.pool_requests).values(request_id=request_id, count=count, requested_at=_now())
    )


async def fulfil_pool_request(conn: AsyncConnection, request_id: str, codes: Sequence[str]) -> int:
    """Store the codes of a request (once) and close it; returns how many were new."""
    Q = models.pool_requests
    done = await conn.scalar(
        select(Q.c.fulfilled_at).where(
            and_(Q.c.request_id == request_id, Q.c.fulfilled_at.is_not(None))
        )
    )
    if done is not None:
        return 0
    now = _now()
    if codes:
        await conn.execute(
            insert(P),
            [{"resident_code": c, "request_id": request_id, "received_at": now} for c in codes],
        )
    await conn.execute(update(Q).where(Q.c.request_id == request_id).values(fulfilled_at=now))
    return len(codes)


# -- move-out certificates ---------------------------------------------------

C = models.move_out_certificates
U = models.used_move_out_certificates


async def insert_certificate(
    conn: AsyncConnection,
    *,
    number: str,
    resident_id: int,
    resident_code: str,
    move_out_sequence: int,
    certificate: bytes,
) -> None:
    """Keep a move-out certificate this node issued (its bytes as signed)."""
    await conn.execute(
        insert(C).values(
            certificate_number=number,
            resident_id=resident_id,
            resident_code=resident_code,
            move_out_sequence=move_out_sequence,
            certificate=certificate,
            issued_at=_now(),
        )
    )


async def latest_certificate(conn: AsyncConnection, resident_id: int) -> bytes | None:
    """The bytes of the latest move-out certificate issued for the resident, if any."""
    found: bytes | None = await conn.scalar(
        select(C.c.certificate)
        .where(C.c.resident_id == resident_id)
        .order_by(C.c.move_out_sequence.desc())
        .limit(1)
    )
    return found


async def certificate_used(conn: AsyncConnection, number: str, issuer: str, sequence: int) -> bool:
    """Whether a move-in here already rested on this certificate (by its number,
    or by its issuer's move-out sequence)."""
    found = await conn.scalar(
        select(U.c.certificate_number)
        .where(
            or_(
                U.c.certificate_number == number,
                and_(
                    U.c.issuing_local_government_code == issuer,
                    U.c.move_out_sequence == sequence,
                ),
            )
        )
        .limit(1)
    )
    return found is not None


async def use_certificate(
    conn: AsyncConnection,
    *,
    number: str,
    issuer: str,
    move_out_sequence: int,
    resident_code: str,
    move_in_sequence: int,
) -> None:
    """Record that the move-in ``move_in_sequence`` rested on this certificate."""
    await conn.execute(
        insert(U).values(
            certificate_number=number,
            issuing_local_government_code=issuer,
            move_out_sequence=move_out_sequence,
            resident_code=resident_code,
            move_in_sequence=move_in_sequence,
            used_at=_now(),
        )
    )


@dataclass(frozen=True)
class IssuedCertificate:
    """A move-out certificate this node issued, and whether its move-out is final."""

    resident_id: int
    resident_code: str
    certificate: bytes
    confirmed_on: str | None


async def issued_certificate(conn: AsyncConnection, number: str) -> IssuedCertificate | None:
    """The certificate numbered ``number`` this node issued, if any."""
    row = (
        await conn.execute(
            select(C.c.resident_id, C.c.resident_code, C.c.certificate, C.c.confirmed_on).where(
                C.c.certificate_number == number
            )
        )
    ).first()
    if row is None:
        return None
    return IssuedCertificate(int(row[0]), str(row[1]), bytes(row[2]), row[3])


async def confirm_certificate(
    conn: AsyncConnection, number: str, *, confirmed_on: str, by: str, moved_in_on: str
) -> None:
    """Record the move-out of certificate ``number`` as final (転出確定)."""
    await conn.execute(
        update(C)
        .where(C.c.certificate_number == number, C.c.confirmed_on.is_(None))
        .values(confirmed_on=confirmed_on, confirmed_by=by, moved_in_on=moved_in_on)
    )


async def unconfirmed_move_outs(conn: AsyncConnection) -> list[tuple[str, str, str, bytes]]:
    """(resident code, name, planned date, certificate bytes) of each resident removed here
    by a move-out whose latest certificate is not confirmed, oldest planned date first."""
    latest = (
        select(C.c.resident_id, func.max(C.c.move_out_sequence).label("seq"))
        .group_by(C.c.resident_id)
        .subquery()
    )
    rows = await conn.execute(
        select(R.c.resident_code, R.c.name, R.c.removed_on, C.c.certificate)
        .select_from(
            C.join(
                latest,
                and_(
                    latest.c.resident_id == C.c.resident_id,
                    latest.c.seq == C.c.move_out_sequence,
                ),
            ).join(R, R.c.id == C.c.resident_id)
        )
        .where(
            C.c.confirmed_on.is_(None),
            R.c.status == REMOVED,
            R.c.last_reason == common_pb2.CHANGE_REASON_MOVE_OUT,
        )
        .order_by(R.c.removed_on, R.c.resident_code)
    )
    return [(str(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in rows]


# -- requests relayed to other municipalities (the relay outbox) -------------

RO = models.relay_outbox
PENDING, DELIVERED, REFUSED = "pending", "delivered", "refused"


@dataclass(frozen=True)
class OutgoingRequest:
    """A row of the relay outbox due for delivery."""

    id: int
    request_id: str
    kind: int
    destination: str
    body: bytes
    attempts: int


async def queue_relay_request(
    conn: AsyncConnection,
    *,
    request_id: str,
    kind: int,
    destination: str,
    body: bytes,
    now: dt.datetime,
) -> None:
    """Queue a request to another municipality, due at once."""
    await conn.execute(
        insert(RO).values(
            request_id=request_id,
            kind=kind,
            destination=destination,
            body=body,
            state=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


async def due_relay_requests(
    conn: AsyncConnection, now: dt.datetime, limit: int
) -> list[OutgoingRequest]:
    """Pending requests whose next attempt is due, oldest first."""
    rows = await conn.execute(
        select(RO.c.id, RO.c.request_id, RO.c.kind, RO.c.destination, RO.c.body, RO.c.attempts)
        .where(RO.c.state == PENDING, RO.c.next_attempt_at <= now)
        .order_by(RO.c.id)
        .limit(limit)
    )
    return [
        OutgoingRequest(int(r[0]), str(r[1]), int(r[2]), str(r[3]), bytes(r[4]), int(r[5]))
        for r in rows
    ]


async def next_relay_attempt(conn: AsyncConnection) -> dt.datetime | None:
    """When the earliest pending request is due, if any is pending."""
    found: dt.datetime | None = await conn.scalar(
        select(func.min(RO.c.next_attempt_at)).where(RO.c.state == PENDING)
    )
    return found


async def finish_relay_request(
    conn: AsyncConnection,
    row_id: int,
    *,
    state: str,
    now: dt.datetime,
    reason: str = "",
    message: str = "",
) -> None:
    """Mark a request delivered or refused (with the refusal's reason and message)."""
    await conn.execute(
        update(RO)
        .where(RO.c.id == row_id, RO.c.state == PENDING)
        .values(state=state, finished_at=now, refusal_reason=reason, refusal_message=message)
    )


async def postpone_relay_request(
    conn: AsyncConnection, row_id: int, *, attempts: int, until: dt.datetime
) -> None:
    """Count a failed attempt and set when the next is due."""
    await conn.execute(
        update(RO).where(RO.c.id == row_id).values(attempts=attempts, next_attempt_at=until)
    )


async def relay_requests(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every row of the relay outbox (state, reason ...), oldest first."""
    rows = await conn.execute(select(RO).order_by(RO.c.id))
    return [dict(r._mapping) for r in rows]


# --- resident cards ------------------------------------------------------------

CARDS = models.resident_cards
CARD_VALID = "valid"
CARD_REVOKED = "revoked"
CARD_LAPSED = "lapsed"


async def valid_card_of(conn: AsyncConnection, resident_id: int) -> Any | None:
    """The resident's valid card row, or None."""
    return (
        await conn.execute(
            select(CARDS).where(CARDS.c.resident_id == resident_id, CARDS.c.status == CARD_VALID)
        )
    ).first()


async def card_by_id(conn: AsyncConnection, card_id: str) -> Any | None:
    """The card row of ``card_id``, or None."""
    return (await conn.execute(select(CARDS).where(CARDS.c.card_id == card_id))).first()


async def insert_card(
    conn: AsyncConnection,
    *,
    card_id: str,
    serial: int,
    resident_id: int,
    issued_on: str,
    continued_from: str = "",
) -> None:
    """Record a valid card (the partial unique index refuses a second valid one)."""
    await conn.execute(
        insert(CARDS).values(
            card_id=card_id,
            serial=f"{serial:x}",
            resident_id=resident_id,
            status=CARD_VALID,
            issued_on=issued_on,
            continued_from=continued_from,
            revoked_at=None,
            revocation_reason="",
        )
    )


async def end_card(
    conn: AsyncConnection, card_id: str, status: str, reason: str, at: dt.datetime
) -> None:
    """Mark a valid card revoked or lapsed, with why and when."""
    await conn.execute(
        update(CARDS)
        .where(CARDS.c.card_id == card_id, CARDS.c.status == CARD_VALID)
        .values(status=status, revocation_reason=reason, revoked_at=at)
    )


async def ended_cards(conn: AsyncConnection) -> list[Any]:
    """Every card no longer valid (what the CRL lists), oldest first."""
    rows = await conn.execute(
        select(CARDS.c.serial, CARDS.c.revoked_at, CARDS.c.revocation_reason)
        .where(CARDS.c.status != CARD_VALID)
        .order_by(CARDS.c.revoked_at, CARDS.c.serial)
    )
    return list(rows)


# --- move-outs filed by post (付記転出届) ------------------------------------------

POSTED = models.posted_move_outs


async def insert_posted_move_out(
    conn: AsyncConnection,
    *,
    number: str,
    card_id: str,
    resident_id: int,
    destination: str,
    planned_on: str,
    new_address: str,
    filing: bytes,
    signature: bytes,
    at: dt.datetime,
) -> None:
    """Record a move-out filed by post, by the certificate its move-out issued."""
    await conn.execute(
        insert(POSTED).values(
            certificate_number=number,
            card_id=card_id,
            resident_id=resident_id,
            destination=destination,
            planned_on=planned_on,
            new_address=new_address,
            filing=filing,
            signature=signature,
            filed_at=at,
        )
    )


@dataclass(frozen=True)
class PostedMoveOut:
    """A move-out filed by post and the certificate it issued (bytes as signed)."""

    certificate_number: str
    card_id: str
    destination: str
    planned_on: str
    new_address: str
    certificate: bytes
    confirmed_on: str | None


async def posted_move_out_of_card(conn: AsyncConnection, card_id: str) -> PostedMoveOut | None:
    """The latest move-out filed by post with card ``card_id``, if any."""
    row = (
        await conn.execute(
            select(
                POSTED.c.certificate_number,
                POSTED.c.card_id,
                POSTED.c.destination,
                POSTED.c.planned_on,
                POSTED.c.new_address,
                C.c.certificate,
                C.c.confirmed_on,
            )
            .join(C, C.c.certificate_number == POSTED.c.certificate_number)
            .where(POSTED.c.card_id == card_id)
            .order_by(C.c.move_out_sequence.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    return PostedMoveOut(
        str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), bytes(row[5]), row[6]
    )


async def posted_card_of_certificate(conn: AsyncConnection, number: str) -> str | None:
    """The card that filed the move-out of certificate ``number`` by post, if it was."""
    found = await conn.scalar(select(POSTED.c.card_id).where(POSTED.c.certificate_number == number))
    return None if found is None else str(found)


# -- copies answered for issue elsewhere (広域交付) -----------------------------

COPIES = models.copy_requests
COPY_RESIDENTS = models.copy_request_residents


async def copy_recorded(conn: AsyncConnection, request_id: str) -> bool:
    """Whether the copy request ``request_id`` is recorded already."""
    found = await conn.scalar(select(COPIES.c.id).where(COPIES.c.request_id == request_id))
    return found is not None


async def record_copy(
    conn: AsyncConnection,
    *,
    request_id: str,
    requested_at: dt.datetime,
    issuer: str,
    operator: str,
    terminal: str,
    applicant: ResidentState,
    card_id: str,
    relationship_shown: bool,
    code_shown: bool,
    residents: Sequence[ResidentState],
) -> None:
    """Record a copy answered: who asked, where, when, and whose entries it shows."""
    result = await conn.execute(
        insert(COPIES).values(
            request_id=request_id,
            requested_at=requested_at,
            issuing_local_government_code=issuer,
            operator=operator,
            terminal=terminal,
            applicant_id=applicant.id,
            applicant_code=applicant.resident_code,
            card_id=card_id,
            relationship_shown=relationship_shown,
            code_shown=code_shown,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    copy_id = key[0]
    await conn.execute(
        insert(COPY_RESIDENTS),
        [
            {"copy_id": copy_id, "resident_id": r.id, "resident_code": r.resident_code}
            for r in residents
        ],
    )


async def copies_of(conn: AsyncConnection, resident_id: int) -> list[Any]:
    """The copies answered that show the resident's entry, oldest first."""
    rows = await conn.execute(
        select(COPIES)
        .join(COPY_RESIDENTS, COPY_RESIDENTS.c.copy_id == COPIES.c.id)
        .where(COPY_RESIDENTS.c.resident_id == resident_id)
        .order_by(COPIES.c.requested_at, COPIES.c.id)
    )
    return list(rows)
