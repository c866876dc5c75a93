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

import jaconv
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from jukinet.clock import latest_accepted_date
from jukinet.codes import (
    check_local_government_code,
    check_resident_code,
    is_valid_local_government_code,
)
from jukinet.errors import InvalidArgument
from jukinet.localgov import address_prefix, lookup, wards_of
from jukinet.names import fold_name
from jukinet.v1 import common_pb2, gateway_pb2

# What a person reads must show what is stored. Refused in every such field:
# controls (Cc), format characters (Cf: bidi embeddings, overrides and isolates
# U+202A-202E and U+2066-2069, marks U+200E/200F/061C, zero-width U+200B-200D,
# U+2060, an inner BOM U+FEFF, soft hyphen, interlinear annotation, tag
# characters U+E0000-E007F), line and paragraph separators (Zl, Zp, U+2028/2029),
# surrogates, private use and unassigned code points, and every space except
# U+0020 and U+3000 (NBSP, hair space, ... show as nothing or as a space that
# is not one). Kept: variation selectors (U+FE00-FE0F, the IVS U+E0100-E01EF,
# the Mongolian U+180B-180D and U+180F: Mn, so allowed by category), which
# select the registered glyph of a name, and U+3000, the ideographic space
# that separates surname and given name in Japanese.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_ALLOWED_SPACES = frozenset({" ", "\u3000"})
# Printable by str.isprintable() yet invisible: the combining grapheme joiner
# and the Hangul fillers, which render as nothing and can hide a difference.
_INVISIBLE = frozenset({"\u034f", "\u115f", "\u1160", "\u3164", "\uffa0"})
_KIND = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space other than U+0020 and U+3000",
}
_BIDI = frozenset(
    {
        "\u061c",
        "\u200e",
        "\u200f",
        *map(chr, range(0x202A, 0x202F)),
        *map(chr, range(0x2066, 0x206A)),
    }
)
MAX_NAME = 100
MAX_ADDRESS = 200
EARLIEST_BIRTH = dt.date(1870, 1, 1)
# The dates of the register against the clock (the date in Japan). A change
# is registered once it has happened, so its effective date is today at the
# latest; only a move out of the municipality (転出, 国外転出) is notified before
# it happens, and its effective date is then the planned date of the move,
# at most PLANNED_AHEAD ahead (an assumption: municipalities take the notice
# about two weeks ahead, some up to a month).
PLANNED_AHEAD = dt.timedelta(days=30)
# The upper tiers check the same dates against their own clock, shifted by
# the skew they tolerate (jukinet.clock.MAX_CLOCK_SKEW), so that a node
# whose clock is behind the municipality's never refuses what the
# municipality accepted. Delivery only makes the tiers' dates later, which
# the window never refuses.

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

# Katakana (ァ-ヺ, the iteration marks ヽヾ, the long-vowel mark ー), the
# middle dot ・ and the equals signs that separate the parts of a foreign
# name, and the two spaces.
_KANA = re.compile(r"^[\u30a1-\u30fa\u30fc-\u30fe\u30fb\u3000 =＝]*$")
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


def check_birth_date(
    value: str, field: str = "birth_date", *, latest: dt.date | None = None
) -> dt.date:
    """A birth date: on the calendar, not in the future, not absurdly old.

    ``latest`` is the last date that is not the future (default: today here).
    """
    date = check_date(value, field)
    if date > (latest or today()):
        raise InvalidArgument(field, f"{value} is in the future")
    if date < EARLIEST_BIRTH:
        raise InvalidArgument(field, f"{value} is before {EARLIEST_BIRTH.isoformat()}")
    return date


# The reasons whose effective date is a planned date, which may lie ahead.
PLANNED_REASONS = frozenset(
    {common_pb2.CHANGE_REASON_MOVE_OUT, common_pb2.CHANGE_REASON_MOVE_ABROAD}
)


def latest_effective_date(
    reason: common_pb2.ChangeReason.ValueType, latest: dt.date | None = None
) -> dt.date:
    """The latest effective date a change for ``reason`` may carry when
    ``latest`` (default: today here) is the last date that is not the future."""
    ahead = PLANNED_AHEAD if reason in PLANNED_REASONS else dt.timedelta(0)
    return (latest or today()) + ahead


def check_effective_date(
    value: str,
    field: str = "effective_date",
    *,
    reason: common_pb2.ChangeReason.ValueType,
    latest: dt.date | None = None,
) -> dt.date:
    """The date a change for ``reason`` took effect: not before 1870, and not
    after :func:`latest_effective_date` (today, or the planned date of a move
    out at most :data:`PLANNED_AHEAD` ahead). ``latest``: see
    :func:`check_birth_date`; a receiving tier passes the date at its clock
    plus the skew it tolerates (:func:`check_notification`)."""
    date = check_date(value, field)
    if date > latest_effective_date(reason, latest):
        if reason in PLANNED_REASONS:
            problem = (
                f"{value} is more than {PLANNED_AHEAD.days} days ahead; a move out may be "
                f"notified at most {PLANNED_AHEAD.days} days before its planned date"
            )
        else:
            problem = (
                f"{value} is in the future; a change is registered once it has happened "
                "(only a move out may be dated ahead, to its planned date)"
            )
        raise InvalidArgument(field, problem)
    if date < EARLIEST_BIRTH:
        raise InvalidArgument(field, f"{value} is before {EARLIEST_BIRTH.isoformat()}")
    return date


def forbidden_character(value: str) -> str | None:
    """The first character of ``value`` a person's text may not hold, or None.

    One rule for every field a person reads (names, readings, addresses, the
    purpose registry's texts): see :data:`_FORBIDDEN_CATEGORIES`.
    """
    # Fast path: printable text (spaces aside) has none of the categories
    # refused; only otherwise look at each character.
    if value.replace("\u3000", " ").isprintable() and _INVISIBLE.isdisjoint(value):
        return None
    for ch in value:
        if ch in _INVISIBLE or (
            unicodedata.category(ch) in _FORBIDDEN_CATEGORIES and ch not in _ALLOWED_SPACES
        ):
            return ch
    return None


def describe_character(ch: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE), a bidi control``: a character named by code point."""
    name = unicodedata.name(ch, "")
    named = f"U+{ord(ch):04X}" + (f" ({name})" if name else "")
    if ch in _BIDI:
        kind = "a bidirectional control"
    elif ch in _INVISIBLE:
        kind = "an invisible character"
    elif 0xE0000 <= ord(ch) <= 0xE007F:
        kind = "a tag character"
    else:
        kind = _KIND.get(unicodedata.category(ch), "a character not allowed")
    return f"{named}, {kind}"


def visible(value: str) -> str:
    """``value`` with every character :func:`forbidden_character` refuses shown as ``<U+XXXX>``.

    For printing stored text: whatever got into a store, a reader sees it
    rather than having the line reordered, broken or hidden by it.
    """
    if forbidden_character(value) is None:
        return value
    return "".join(
        f"<U+{ord(ch):04X}>"
        if ch in _INVISIBLE
        or (unicodedata.category(ch) in _FORBIDDEN_CATEGORIES and ch not in _ALLOWED_SPACES)
        else ch
        for ch in value
    )


def check_text(value: str, field: str, limit: int, *, required: bool) -> str:
    """Text a person reads: length, no hidden or reordering characters, no outer spaces."""
    if required and not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > limit:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {limit} allowed")
    bad = forbidden_character(value)
    if bad is not None:
        raise InvalidArgument(field, f"contains {describe_character(bad)}")
    if value and unicodedata.category(value[0]).startswith("M"):
        # A leading combining mark would join the text printed before it.
        raise InvalidArgument(field, f"begins with the combining mark U+{ord(value[0]):04X}")
    if value != value.strip():
        raise InvalidArgument(field, "must not begin or end with white space")
    return value


def check_wire_text(value: str, field: str) -> str:
    """Text with none of the characters :func:`forbidden_character` refuses
    (controls, a NUL above all, which PostgreSQL refuses in any text column;
    invisible and bidirectional formatting; unassigned code points)."""
    bad = forbidden_character(value)
    if bad is not None:
        raise InvalidArgument(field, f"contains {describe_character(bad)}")
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
    return check_text(value, field, MAX_NAME, required=required)


def normalize_kana(value: str) -> str:
    """A reading in the register's form: full-width katakana.

    Half-width katakana (ｶﾀｶﾅ, common in exports of older systems) become
    full-width and hiragana become katakana; anything else is left as it is.
    """
    return jaconv.hira2kata(jaconv.h2z(value, kana=True, ascii=False, digit=False))


def check_kana(value: str, field: str = "name_kana", *, normalise: bool = True) -> str:
    """A reading (may be empty), returned as full-width katakana.

    The register keeps readings in katakana, as the help of every command
    says; a reading typed in hiragana or half-width katakana means the same
    and is converted (:func:`normalize_kana`) rather than refused. What is not
    kana after that (Latin letters, kanji) is refused. With ``normalise``
    false (a notification from another node, which converted it already) the
    reading must already be in that form.
    """
    check_text(value, field, MAX_NAME, required=False)
    kana = normalize_kana(value)
    if not _KANA.match(kana):
        raise InvalidArgument(field, "must be written in kana (katakana; hiragana is converted)")
    if not normalise and kana != value:
        raise InvalidArgument(field, "must be written in full-width katakana")
    return kana


def check_address(value: str, field: str = "address", municipality: str = "") -> str:
    """An address in its original characters (required); with ``municipality``
    (a local-government code), one in that municipality (:func:`check_address_in`)."""
    check_text(value, field, MAX_ADDRESS, required=True)
    if municipality:
        check_address_in(value, municipality, field)
    return value


def check_address_in(value: str, municipality: str, field: str = "address") -> None:
    """The address begins with the prefecture and the name of ``municipality``.

    The forms accepted come from the local-government data: the prefecture,
    then the municipality, with or without its county (北海道石狩郡当別町 and
    北海道当別町 are both written); in a designated city the ward follows the
    city (北海道札幌市中央区), as the ward keeps the register. The prefecture
    is required: the register holds the full address, and without it an
    address in 府中市 or 伊達市 does not say which one. Compared as written
    first, then on folded keys (variant kanji, ケ/ヶ, spaces), so that
    龍ヶ崎市 and 鳥取県 鳥取市 pass.
    """
    prefixes = _address_prefixes(municipality)
    if not prefixes or value.startswith(prefixes):
        return
    folded = _fold_place(value)
    if folded.startswith(tuple(_fold_place(p) for p in prefixes)):
        return
    raise InvalidArgument(
        field, f"is not in municipality {municipality}: it must begin with {prefixes[0]}"
    )


# The small ヶ/ヵ of place names (龍ヶ崎市, 市ヶ谷) are written large in the
# postal data (龍ケ崎市); both spellings are in use.
_PLACE_KANA = str.maketrans({"ヶ": "ケ", "ヵ": "カ", "ゖ": "ケ", "ゕ": "カ"})


def _fold_place(text: str) -> str:
    return fold_name(text.translate(_PLACE_KANA))


@functools.lru_cache(maxsize=4096)
def _address_prefixes(code: str) -> tuple[str, ...]:
    """How an address in ``code`` may begin; empty for a code the data lacks."""
    gov = lookup(code)
    if gov is None:
        return ()
    wards = wards_of(code)
    if wards:
        # A designated city: the address names one of its wards.
        return tuple(gov.prefecture_name + w.name for w in wards)
    full = address_prefix(code)
    short = gov.prefecture_name + gov.name
    return (full,) if full == short else (full, short)


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


def check_identity_record(
    record: common_pb2.IdentityRecord, prefix: str = "record", *, latest: dt.date | None = None
) -> None:
    """Every field of an identity-confirmation record (``latest``: see
    :func:`check_birth_date`)."""
    check_resident_code(record.resident_code, f"{prefix}.resident_code")
    check_name(record.name, f"{prefix}.name")
    check_kana(record.name_kana, f"{prefix}.name_kana", normalise=False)
    check_name(record.former_surname, f"{prefix}.former_surname", required=False)
    check_name(record.alias, f"{prefix}.alias", required=False)
    check_birth_date(record.birth_date, f"{prefix}.birth_date", latest=latest)
    check_sex(record.sex, f"{prefix}.sex")
    check_known_local_government(record.local_government_code, f"{prefix}.local_government_code")
    check_address(record.address, f"{prefix}.address", record.local_government_code)


def check_notification(
    n: common_pb2.Notification, prefix: str = "notification", *, now: dt.datetime | None = None
) -> None:
    """A notification as it travels: origin, numbering, kind and reason, record.

    Every tier runs it: the municipal node on each notification it writes, the
    upper tiers on each one they receive, so that what a municipality wrote is
    never refused above for its content. Checked by a node whose clock shows
    ``now``: its dates may lie up to :data:`jukinet.clock.MAX_CLOCK_SKEW`
    ahead of it, so that a sender's
    clock running ahead (around midnight) never has a notification refused
    that the sender accepted. Its ``recorded_at`` is the sender's time and is
    never compared with the receiver's clock.
    """
    latest = latest_accepted_date(now or dt.datetime.now(dt.UTC))
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
    check_effective_date(
        n.effective_date, f"{prefix}.effective_date", reason=n.reason, latest=latest
    )
    try:
        dt.datetime.fromisoformat(n.recorded_at)
    except ValueError:
        raise InvalidArgument(f"{prefix}.recorded_at", "expected an RFC 3339 time") from None
    if n.record.local_government_code != n.origin_code:
        raise InvalidArgument(
            f"{prefix}.record.local_government_code", "must be the origin municipality"
        )
    # The address is checked against the record's municipality, the origin.
    check_identity_record(n.record, f"{prefix}.record", latest=latest)
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
