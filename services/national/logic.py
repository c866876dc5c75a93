"""Rules of the national node that need no I/O: minting resident codes."""

from __future__ import annotations

import random
import re

from jukinet.codes import new_resident_code
from jukinet.errors import InvalidArgument

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def check_pool_request(count: int, request_id: str, max_pool_size: int) -> None:
    """A pool request's size and idempotency key."""
    if not 1 <= count <= max_pool_size:
        raise InvalidArgument("count", f"must be between 1 and {max_pool_size}")
    if not _REQUEST_ID.match(request_id):
        raise InvalidArgument("request_id", "8 to 64 characters of A-Z a-z 0-9 . _ : -")


def mint_candidates(count: int, rng: random.Random | None = None) -> list[str]:
    """``count`` distinct random codes; the database decides which are really new."""
    out: set[str] = set()
    while len(out) < count:
        out.add(new_resident_code(rng))
    return sorted(out)
