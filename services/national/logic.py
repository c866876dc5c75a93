"""Rules of the national node that need no I/O: minting resident codes, and
comparing, minimising and ranking records for agencies."""

from __future__ import annotations

import functools
import random
import unicodedata
from collections.abc import Iterable, Sequence

from jukinet.codes import new_resident_code, prefecture_of
from jukinet.delivery.rules import StoredIdentity
from jukinet.errors import InvalidArgument, PermissionDenied
from jukinet.identity import Identity, Kind
from jukinet.names import fold_name as _fold_name
from jukinet.names import match_score
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, gateway_pb2
from jukinet.vocabulary import PROVIDABLE_FIELDS


def authorize_prefecture_origin(caller: Identity, n: common_pb2.Notification, prefix: str) -> None:
    """A prefecture relays only its own municipalities' notifications."""
    if prefecture_of(n.origin_code) != caller.code:
        raise PermissionDenied(
            f"{prefix}.origin_code: {n.origin_code} is not a municipality of prefecture "
            f"{caller.code}",
            reason=Reason.FOREIGN_ORIGIN,
        )


def authorize_pool_request(caller: Identity, municipality_code: str) -> None:
    """A prefecture asks for codes for its own municipalities only."""
    if prefecture_of(municipality_code) != caller.code:
        raise PermissionDenied(
            f"municipality_code: {municipality_code} is not in prefecture {caller.code}",
            reason=Reason.FOREIGN_ORIGIN,
        )


def disclosure_scope(caller: Identity, municipality_code: str) -> str:
    """The municipality a disclosure is asked for, which must hold the resident;
    empty for a national operator asking at the national level. A prefecture
    relays only its own municipalities' requests and always names the municipality."""
    if caller.kind == Kind.PREFECTURE:
        if not municipality_code:
            raise InvalidArgument(
                "municipality_code", "a relayed request names the municipality it is made for"
            )
        if prefecture_of(municipality_code) != caller.code:
            raise PermissionDenied(
                f"municipality_code: {municipality_code} is not in prefecture {caller.code}",
                reason=Reason.FOREIGN_ORIGIN,
            )
    return municipality_code


def authorize_disclosure(
    municipality: str, resident_code: str, chain: Iterable[StoredIdentity]
) -> None:
    """A municipality may ask for the disclosure of a resident it registers now or,
    when nobody registers them now (a death, a move abroad, a move whose move-in
    has not arrived), registered last: the municipality of the current record of
    every code the person has had. After a move the old municipality no longer
    may. ``chain``: the stored records of those codes (none when unknown: the
    same refusal, so that a municipality cannot probe which codes exist)."""
    records = list(chain)
    current = [r for r in records if r.status != common_pb2.RECORD_STATUS_SUPERSEDED] or records
    if not current or any(r.local_government_code != municipality for r in current):
        raise PermissionDenied(
            f"resident_code: {resident_code} is not held by {municipality}",
            reason=Reason.NOT_HELD,
        )


def earlier_pool(earlier: tuple[str, list[str]] | None, municipality: str) -> list[str] | None:
    """The codes of an earlier request with the same id (a retry gets the same
    codes); None when there was none. An id is never reused for another municipality."""
    if earlier is None:
        return None
    owner, codes = earlier
    if owner != municipality:
        raise InvalidArgument("request_id", "already used for another municipality")
    return codes


def mint_candidates(count: int, rng: random.Random | None = None) -> list[str]:
    """``count`` distinct random codes; the database decides which are really new."""
    out: set[str] = set()
    while len(out) < count:
        out.add(new_resident_code(rng))
    return sorted(out)


# -- lookups for agencies -------------------------------------------------------

# Folded names, remembered: a verification folds the claimed and the stored name,
# and names repeat (the commonest few thousand cover most people). The key is a
# pure function of the name, so a remembered one is the same key.
fold_name = functools.lru_cache(maxsize=1 << 16)(_fold_name)

_DASHES = str.maketrans({c: "-" for c in "‐‑‒–—―−ー－"})


def fold_address(address: str) -> str:
    """An address compared loosely: NFKC, no white space, one kind of dash."""
    folded = unicodedata.normalize("NFKC", address)
    return "".join(folded.split()).translate(_DASHES)


def _item(claimed: object, matches: bool) -> gateway_pb2.ItemMatch.ValueType:
    if not claimed:
        return gateway_pb2.ITEM_MATCH_NOT_CLAIMED
    return gateway_pb2.ITEM_MATCH_MATCH if matches else gateway_pb2.ITEM_MATCH_NO_MATCH


def verify(
    claim: gateway_pb2.ClaimedIdentity, record: StoredIdentity | None
) -> gateway_pb2.Verification:
    """Compare a claim with the identified record, item by item; no data leaves."""
    if record is None:
        return gateway_pb2.Verification(found=False)
    # Names and addresses are folded only when claimed (a batch of existence
    # checks claims the code alone).
    return gateway_pb2.Verification(
        found=True,
        currently_registered=record.status == common_pb2.RECORD_STATUS_ACTIVE,
        resident_code=_item(claim.resident_code, claim.resident_code == record.resident_code),
        name=_item(
            claim.name, bool(claim.name) and fold_name(claim.name) == fold_name(record.name)
        ),
        birth_date=_item(claim.birth_date, claim.birth_date == record.birth_date),
        sex=_item(claim.sex, claim.sex == record.sex),
        address=_item(
            claim.address,
            bool(claim.address) and fold_address(claim.address) == fold_address(record.address),
        ),
    )


def choose_unique(
    claim: gateway_pb2.ClaimedIdentity, candidates: Sequence[StoredIdentity]
) -> StoredIdentity | None:
    """The one record the four items identify, or None when none or several fit."""
    claimed = fold_name(claim.name)
    fits = [
        h
        for h in candidates
        if claimed == fold_name(h.name)
        and claim.birth_date == h.birth_date
        and (not claim.sex or claim.sex == h.sex)
    ]
    if len(fits) > 1 and claim.address:
        fits = [h for h in fits if fold_address(claim.address) == fold_address(h.address)]
    return fits[0] if len(fits) == 1 else None


def provided(record: StoredIdentity, fields: Iterable[str]) -> gateway_pb2.ProvidedRecord:
    """The record holding only ``fields``; every other field stays empty."""
    wanted = [f for f in PROVIDABLE_FIELDS if f in set(fields)]
    out = gateway_pb2.ProvidedRecord(fields=wanted)
    for f in wanted:
        setattr(out, f, getattr(record, f))
    return out


def search_score(query: gateway_pb2.SearchRequest, record: StoredIdentity) -> int:
    """Rank of a candidate: the name tier (exact > folded > reading) dominates,
    then agreement of birth date, address and sex. 0 = not a candidate."""
    base = match_score(query.name, query.name_kana or None, record.name, record.name_kana or None)
    if base == 0:
        return 0
    score = base * 10
    if query.birth_date:
        score += 5 if query.birth_date == record.birth_date else 0
    if query.address:
        score += 3 if fold_address(query.address) == fold_address(record.address) else 0
    if query.sex:
        score += 1 if query.sex == record.sex else 0
    return score


def resolve_fields(allowed: Iterable[str], requested: Iterable[str]) -> tuple[str, ...]:
    """The fields to return: those requested (all allowed when none are), each of
    which must be allowed; the gateway has checked, this checks again."""
    allowed_set = set(allowed)
    requested_list = list(requested) or [f for f in PROVIDABLE_FIELDS if f in allowed_set]
    for f in requested_list:
        if f not in allowed_set:
            raise PermissionDenied(
                f"field {f!r} is not allowed for this purpose", reason=Reason.FIELD_NOT_ALLOWED
            )
    return tuple(f for f in PROVIDABLE_FIELDS if f in set(requested_list))
