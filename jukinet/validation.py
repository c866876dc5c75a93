"""Checks on the fields that cross the network, shared by every tier.

Every check raises :class:`~jukinet.errors.InvalidArgument` naming the field,
so bad input is refused before anything is written.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
import unicodedata

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from jukinet.codes import (
    check_local_government_code,
    check_resident_code,
    is_valid_local_government_code,
)
from jukinet.errors import InvalidArgument
from jukinet.localgov import lookup
from jukinet.v1 import common_pb2, gateway_pb2

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn"})
MAX_NAME = 100
MAX_ADDRESS = 200
EARLIEST_BIRTH = dt.date(1870, 1, 1)
# How far ahead an effective date may lie: a moving-out notice may be filed
# before the planned move (assumed: up to 30 days ahead).
MAX_EFFECTIVE_AHEAD = dt.timedelta(days=30)

# Which kind each reason belongs to (DOMAIN.md, "The identity-confirmation record").
REASON_KIND: dict[common_pb2.ChangeReason.ValueType, common_pb2.ChangeKind.ValueType] = {
    common_pb2.CHANGE_REASON_MOVE_IN: common_pb2.CHANGE_KIND_CREATED,
    common_pb2.CHANGE_REASON_SPECIAL_MOVE_IN: common_pb2.CHANGE_KIND_CREATED,
    common_pb2.CHANGE_REASON_BIRTH: common_pb2.CHANGE_KIND_CREATED,
    common_pb2.CHANGE_REASON_MOVE_IN_FROM_ABROAD: common_pb2.CHANGE_KIND_CREATED,
    common_pb2.CHANGE_REASON_EX_OFFICIO_ENTRY: common_pb2.CHANGE_KIND_CREATED,
    common_pb2.CHANGE_REASON_MOVE_OUT: common_pb2.CHANGE_KIND_REMOVED,
    common_pb2.CHANGE_REASON_MOVE_ABROAD: common_pb2.CHANGE_KIND_REMOVED,
    common_pb2.CHANGE_REASON_DEATH: common_pb2.CHANGE_KIND_REMOVED,
    common_pb2.CHANGE_REASON_DECLARED_MISSING: common_pb2.CHANGE_KIND_REMOVED,
    common_pb2.CHANGE_REASON_EX_OFFICIO_REMOVAL: common_pb2.CHANGE_KIND_REMOVED,
    common_pb2.CHANGE_REASON_RELOCATION: common_pb2.CHANGE_KIND_AMENDED,
    common_pb2.CHANGE_REASON_NAME_CHANGE: common_pb2.CHANGE_KIND_AMENDED,
    common_pb2.CHANGE_REASON_ADDRESS_RENAMED: common_pb2.CHANGE_KIND_AMENDED,
    common_pb2.CHANGE_REASON_CODE_CHANGE: common_pb2.CHANGE_KIND_AMENDED,
    common_pb2.CHANGE_REASON_EX_OFFICIO_AMENDMENT: common_pb2.CHANGE_KIND_AMENDED,
}

# Reasons whose resident code must be a fresh one from the origin's own pool.
NEW_CODE_REASONS = frozenset(
    {
        common_pb2.CHANGE_REASON_BIRTH,
        common_pb2.CHANGE_REASON_EX_OFFICIO_ENTRY,
        common_pb2.CHANGE_REASON_CODE_CHANGE,
    }
)

_KANA = re.compile(r"^[\u3041-\u3096\u30a1-\u30fa\u30fc\u30fb\u3000 ・=＝ー]*$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


_JST = dt.timezone(dt.timedelta(hours=9))


def today() -> dt.date:
    """The current date in Japan, where every register date is kept."""
    # Asked for every date checked, thousands of times a second: cached per minute.
    return _today(int(time.time() // 60))


@functools.lru_cache(maxsize=2)
def _today(_minute: int) -> dt.date:
    return dt.datetime.now(_JST).date()


def check_date(value: str, field: str) -> dt.date:
    """An ISO date (YYYY-MM-DD) that exists on the calendar."""
    if not _ISO_DATE.match(value):
        raise InvalidArgument(field, f"expected a date as YYYY-MM-DD, got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(field, f"{value} is not a date on the calendar") from None


def check_birth_date(value: str, field: str = "birth_date") -> dt.date:
    """A birth date: on the calendar, not in the future, not absurdly old."""
    date = check_date(value, field)
    if date > today():
        raise InvalidArgument(field, f"{value} is in the future")
    if date < EARLIEST_BIRTH:
        raise InvalidArgument(field, f"{value} is before {EARLIEST_BIRTH.isoformat()}")
    return date


def check_effective_date(value: str, field: str = "effective_date") -> dt.date:
    """The date a change took effect: not before 1870, at most 30 days ahead."""
    date = check_date(value, field)
    if date > today() + MAX_EFFECTIVE_AHEAD:
        raise InvalidArgument(field, f"{value} is more than 30 days ahead")
    if date < EARLIEST_BIRTH:
        raise InvalidArgument(field, f"{value} is before {EARLIEST_BIRTH.isoformat()}")
    return date


def _check_text(value: str, field: str, limit: int, *, required: bool) -> str:
    if required and not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > limit:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {limit} allowed")
    # Fast path: printable text (the ideographic space aside) has no control,
    # surrogate, private-use or unassigned character; only otherwise look closer.
    if not value.replace("\u3000", " ").isprintable():
        for ch in value:
            if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
                raise InvalidArgument(
                    field, f"contains a control or unassigned character U+{ord(ch):04X}"
                )
    if value != value.strip():
        raise InvalidArgument(field, "must not begin or end with white space")
    return value


def check_wire_text(value: str, field: str) -> str:
    """Text with no control, surrogate, private-use or unassigned character
    (a NUL above all, which PostgreSQL refuses in any text column)."""
    if not value.replace("\u3000", " ").isprintable():
        for ch in value:
            if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
                raise InvalidArgument(
                    field, f"contains a control or unassigned character U+{ord(ch):04X}"
                )
    return value


def check_message_text(message: Message, prefix: str = "") -> None:
    """:func:`check_wire_text` on every string of ``message``, nested messages
    and repeated fields included; the field named in a refusal is its path."""
    for descriptor, value in message.ListFields():
        path = f"{prefix}{descriptor.name}"
        repeated = descriptor.is_repeated
        values = list(value) if repeated else [value]
        for i, item in enumerate(values):
            where = f"{path}[{i}]" if repeated else path
            if descriptor.type == FieldDescriptor.TYPE_STRING:
                check_wire_text(item, where)
            elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                check_message_text(item, f"{where}.")


def check_name(value: str, field: str = "name", *, required: bool = True) -> str:
    """A name in its original characters (variation selectors allowed)."""
    return _check_text(value, field, MAX_NAME, required=required)


def check_kana(value: str, field: str = "name_kana") -> str:
    """A reading in kana (may be empty)."""
    _check_text(value, field, MAX_NAME, required=False)
    if not _KANA.match(value):
        raise InvalidArgument(field, "must be written in kana")
    return value


def check_address(value: str, field: str = "address") -> str:
    """An address in its original characters (required)."""
    return _check_text(value, field, MAX_ADDRESS, required=True)


def check_sex(value: int, field: str = "sex") -> common_pb2.Sex.ValueType:
    """Male or female: an unset or unknown enum value is refused."""
    if value not in (common_pb2.SEX_MALE, common_pb2.SEX_FEMALE):
        raise InvalidArgument(field, f"unknown or unset value {value}")
    return common_pb2.Sex.ValueType(value)


def check_known_local_government(code: str, field: str) -> str:
    """A valid code of a local government that exists."""
    if _known_local_government(code):
        return code
    check_local_government_code(code, field)
    raise InvalidArgument(field, f"{code} is not a known local government")


@functools.lru_cache(maxsize=4096)
def _known_local_government(code: str) -> bool:
    return is_valid_local_government_code(code) and lookup(code) is not None


def check_identity_record(record: common_pb2.IdentityRecord, prefix: str = "record") -> None:
    """Every field of an identity-confirmation record."""
    check_resident_code(record.resident_code, f"{prefix}.resident_code")
    check_name(record.name, f"{prefix}.name")
    check_kana(record.name_kana, f"{prefix}.name_kana")
    check_name(record.former_surname, f"{prefix}.former_surname", required=False)
    check_name(record.alias, f"{prefix}.alias", required=False)
    check_birth_date(record.birth_date, f"{prefix}.birth_date")
    check_sex(record.sex, f"{prefix}.sex")
    check_address(record.address, f"{prefix}.address")
    check_known_local_government(record.local_government_code, f"{prefix}.local_government_code")


def check_notification(n: common_pb2.Notification, prefix: str = "notification") -> None:
    """A notification as it travels: origin, numbering, kind and reason, record."""
    check_known_local_government(n.origin_code, f"{prefix}.origin_code")
    if n.sequence < 1:
        raise InvalidArgument(f"{prefix}.sequence", "must be 1 or more")
    if n.kind not in (
        common_pb2.CHANGE_KIND_CREATED,
        common_pb2.CHANGE_KIND_REMOVED,
        common_pb2.CHANGE_KIND_AMENDED,
    ):
        raise InvalidArgument(f"{prefix}.kind", f"unknown or unset value {n.kind}")
    expected_kind = REASON_KIND.get(n.reason)
    if expected_kind is None:
        raise InvalidArgument(f"{prefix}.reason", f"unknown or unset value {n.reason}")
    if expected_kind != n.kind:
        raise InvalidArgument(f"{prefix}.reason", "does not belong to the notification's kind")
    check_effective_date(n.effective_date, f"{prefix}.effective_date")
    try:
        dt.datetime.fromisoformat(n.recorded_at)
    except ValueError:
        raise InvalidArgument(f"{prefix}.recorded_at", "expected an RFC 3339 time") from None
    check_identity_record(n.record, f"{prefix}.record")
    if n.record.local_government_code != n.origin_code:
        raise InvalidArgument(
            f"{prefix}.record.local_government_code", "must be the origin municipality"
        )
    if n.reason == common_pb2.CHANGE_REASON_CODE_CHANGE:
        check_resident_code(n.previous_resident_code, f"{prefix}.previous_resident_code")
        if n.previous_resident_code == n.record.resident_code:
            raise InvalidArgument(f"{prefix}.previous_resident_code", "equals the new code")
    elif n.previous_resident_code:
        raise InvalidArgument(f"{prefix}.previous_resident_code", "only for a code change")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def check_pool_request(count: int, request_id: str, max_pool_size: int) -> None:
    """A pool request's size and idempotency key."""
    if not 1 <= count <= max_pool_size:
        raise InvalidArgument("count", f"must be between 1 and {max_pool_size}")
    if not _REQUEST_ID.match(request_id):
        raise InvalidArgument("request_id", "8 to 64 characters of A-Z a-z 0-9 . _ : -")


def check_claim(claim: gateway_pb2.ClaimedIdentity, prefix: str = "claim") -> None:
    """A claim names the resident code, or at least the name and the birth date."""
    if claim.resident_code:
        check_resident_code(claim.resident_code, f"{prefix}.resident_code")
    elif not (claim.name and claim.birth_date):
        raise InvalidArgument(prefix, "give the resident code, or at least name and birth date")
    if claim.name:
        check_name(claim.name, f"{prefix}.name")
    if claim.name_kana:
        check_kana(claim.name_kana, f"{prefix}.name_kana")
    if claim.birth_date:
        check_date(claim.birth_date, f"{prefix}.birth_date")
    if claim.sex:
        check_sex(claim.sex, f"{prefix}.sex")
    if claim.address:
        check_address(claim.address, f"{prefix}.address")


# --- list sizes ---------------------------------------------------------------------

MAX_LIST = 1000
"""The most entries any repeated field of a request may hold, unless listed below."""

# The lists that are batches by design, at the size their senders use at most:
# a delivery or import batch, and a VerifyBatch message (the gateway applies
# each purpose's own, smaller max_batch_size on top).
MAX_BATCH = 10_000
LIST_LIMITS: dict[str, int] = {
    "jukinet.v1.PushNotificationsRequest.entries": MAX_BATCH,
    "jukinet.v1.ImportResidentsRequest.rows": MAX_BATCH,
    "jukinet.v1.VerifyBatchRequest.items": MAX_BATCH,
    "jukinet.v1.ProvideVerificationRequest.items": MAX_BATCH,
}


def check_list_sizes(message: Message, prefix: str = "") -> None:
    """Refuse a message any of whose repeated fields (at any depth) is too long.

    Run on every request before its handler, so that no list a caller names
    (200,000 field names, a million codes) is walked, recorded or echoed.
    """
    descriptor = message.DESCRIPTOR
    if not _has_lists(descriptor):
        return
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.is_repeated:
            limit = LIST_LIMITS.get(field.full_name, MAX_LIST)
            if len(value) > limit:
                raise InvalidArgument(path, f"has {len(value)} entries; at most {limit} allowed")
            if field.message_type is not None and _has_lists(field.message_type):
                if field.message_type.GetOptions().map_entry:
                    continue
                for index, item in enumerate(value):
                    check_list_sizes(item, f"{path}[{index}].")
        elif field.message_type is not None:
            check_list_sizes(value, f"{path}.")


@functools.lru_cache(maxsize=512)
def _has_lists(descriptor: Descriptor) -> bool:
    """Whether a message type holds a repeated field anywhere below it."""
    return _lists_below(descriptor, frozenset())


def _lists_below(descriptor: Descriptor, seen: frozenset[str]) -> bool:
    if descriptor.full_name in seen:
        return False
    seen = seen | {descriptor.full_name}
    for field in descriptor.fields:
        if field.is_repeated:
            return True
        if field.message_type is not None and _lists_below(field.message_type, seen):
            return True
    return False


# A purpose code of the statutory registry: words of upper-case ASCII letters
# and digits joined by "-", the first starting with a letter
# (NENKIN-EXISTENCE-CHECK), so neither a name nor a resident code is one. The
# registry's loader and every request use this one rule, so a code that
# passes it can be stored, logged and echoed.
PURPOSE_CODE_MAX = 64
_PURPOSE_CODE = re.compile(r"[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*")


def is_purpose_code(value: object) -> bool:
    """True if ``value`` has the syntax of a purpose code."""
    return (
        isinstance(value, str)
        and len(value) <= PURPOSE_CODE_MAX
        and _PURPOSE_CODE.fullmatch(value) is not None
    )


def check_purpose_code(value: str, field: str = "purpose_code") -> str:
    """``value`` if it has the syntax of a purpose code; the message never echoes it."""
    if not is_purpose_code(value):
        raise InvalidArgument(
            field,
            "must be words of upper-case letters and digits joined by '-', "
            f"starting with a letter, at most {PURPOSE_CODE_MAX} characters",
        )
    return value
