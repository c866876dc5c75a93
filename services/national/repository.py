"""The national node's SQL beyond the shared holdings: minting code pools."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.errors import InvalidArgument
from jukinet.holdings import HoldingStore
from services.national.logic import mint_candidates


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
