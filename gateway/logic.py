"""Rules of the agency gateway that need no I/O: per-request caps, what goes
to the national node, and the last filter on what comes back.

The national node already minimises every answer to the purpose's fields;
the gateway filters once more (defence in depth), so that a field outside
the purpose cannot reach an agency even if the node behind it errs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from jukinet.codes import is_valid_resident_code
from jukinet.errors import InvalidArgument
from jukinet.purposes import Purpose, Quota
from jukinet.v1 import gateway_pb2, provision_pb2
from jukinet.vocabulary import PROVIDABLE_FIELDS

# Assumed: `currently_registered` of a verification tells whether the record is
# active, which is the record's `status`; a purpose without the status field
# (a plain yes/no) does not learn it, and the flag is always false for it.
STATUS_FIELD = "status"

# A denied VerifyBatch message is recorded once per resident code it names, so
# that each resident sees the attempt; beyond this many, the rest of the
# message is recorded as one denial without a code.
MAX_DENIAL_CODES = 1000


def ordered(fields: Iterable[str]) -> list[str]:
    """``fields`` (record field names) in the order of the record."""
    wanted = set(fields)
    return [f for f in PROVIDABLE_FIELDS if f in wanted]


def provision_context(agency_code: str, purpose: Purpose) -> provision_pb2.ProvisionContext:
    """Who asks, for which purpose, and what that purpose allows."""
    return provision_pb2.ProvisionContext(
        agency_code=agency_code,
        purpose_code=purpose.code,
        allowed_fields=ordered(purpose.fields),
    )


def effective_fields(purpose: Purpose, requested: Iterable[str]) -> frozenset[str]:
    """The fields an answer may carry: those requested (every field of the
    purpose when none are), never one outside the purpose."""
    wanted = frozenset(requested) or purpose.fields
    return wanted & purpose.fields


def check_batch_size(
    count: int, limit: int | None, purpose_code: str = "", field: str = "items"
) -> None:
    """A VerifyBatch message holds at most ``limit`` items: the purpose's
    ``max_batch_size``, or (without ``purpose_code``) the registry's largest."""
    whose = f"purpose {purpose_code}" if purpose_code else "any purpose"
    if limit is None:  # verify_batch not allowed: authorize() refused already
        raise InvalidArgument(field, f"{whose} has no batch size")
    if count > limit:
        raise InvalidArgument(
            field, f"{count} items in one message; {whose} allows at most {limit}"
        )


def resolve_max_candidates(requested: int, quota: Quota, purpose_code: str) -> int:
    """The number of candidates to ask for: 0 means the purpose's cap."""
    cap = quota.max_search_candidates
    if cap is None:  # search not allowed: authorize() refused already
        raise InvalidArgument("max_candidates", f"purpose {purpose_code} has no search cap")
    if requested == 0:
        return cap
    if requested > cap:
        raise InvalidArgument(
            "max_candidates", f"{requested} exceeds the cap of purpose {purpose_code} ({cap})"
        )
    return requested


def filter_record(
    record: gateway_pb2.ProvidedRecord, allowed: frozenset[str]
) -> gateway_pb2.ProvidedRecord:
    """A copy of ``record`` holding only ``allowed`` fields that it lists."""
    keep = [f for f in PROVIDABLE_FIELDS if f in allowed and f in set(record.fields)]
    out = gateway_pb2.ProvidedRecord(fields=keep)
    for name in keep:
        setattr(out, name, getattr(record, name))
    return out


def stray_fields(record: gateway_pb2.ProvidedRecord, allowed: frozenset[str]) -> list[str]:
    """Fields set or listed in ``record`` that ``allowed`` does not contain."""
    present = {fd.name for fd, _ in record.ListFields() if fd.name != "fields"}
    present |= set(record.fields)
    return sorted(present - allowed)


def filter_verification(
    verification: gateway_pb2.Verification, purpose: Purpose
) -> gateway_pb2.Verification:
    """A copy of ``verification``; ``currently_registered`` only if the purpose
    may know the record's status."""
    out = gateway_pb2.Verification()
    out.CopyFrom(verification)
    if STATUS_FIELD not in purpose.fields:
        out.currently_registered = False
    return out


def batch_codes(message: gateway_pb2.VerifyBatchRequest) -> list[str]:
    """The resident codes the items of a VerifyBatch message claim."""
    return [item.claim.resident_code for item in message.items]


def denial_targets(codes: Sequence[str]) -> list[str]:
    """The resident codes a refusal naming ``codes`` is recorded for, one
    record each; "" stands for a record without a code (none named, or the
    rest beyond :data:`MAX_DENIAL_CODES`)."""
    named, truncated = named_codes(codes)
    targets = named or [""]
    if truncated:
        targets.append("")
    return targets


def named_codes(codes: Sequence[str]) -> tuple[list[str], bool]:
    """The distinct valid resident codes among ``codes`` (in order, at most
    :data:`MAX_DENIAL_CODES`), and whether any were left out."""
    seen: dict[str, None] = {}
    for code in codes:
        if code and is_valid_resident_code(code):
            seen.setdefault(code)
    distinct = list(seen)
    return distinct[:MAX_DENIAL_CODES], len(distinct) > MAX_DENIAL_CODES
