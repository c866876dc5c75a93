"""The statutory purpose registry: which agency may do what, for which task.

A national agency may receive an identity record only for a task that
Appendix Table 1 of the Basic Resident Registration Act (別表第一) lists for it.
Each such use is a :class:`Purpose` loaded from ``jukinet/purposes.toml`` and
checked strictly at start-up (any problem is a :class:`ConfigError` naming the
entry). :meth:`PurposeRegistry.authorize` is the one check every gateway
request passes through, and the national node passes every provision through
it again (it does not take the gateway's word); anything not listed is denied
with a :class:`PurposeDenied` carrying a machine-readable reason.

It lives in the core because both the gateway and the national node load it,
and nodes do not import each other.
"""

from __future__ import annotations

import enum
import math
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jukinet.errors import ConfigError, PermissionDenied
from jukinet.identity import Kind, parse_identity_uri
from jukinet.reasons import Reason
from jukinet.validation import (
    PURPOSE_CODE_MAX,
    describe_character,
    forbidden_character,
    is_purpose_code,
)
from jukinet.vocabulary import PROVIDABLE_FIELDS

PACKAGED_FILE = "purposes.toml"


class Operation(enum.StrEnum):
    """What an agency may ask the gateway to do."""

    VERIFY = "verify"  # yes/no match of the four items or the resident code
    RETRIEVE = "retrieve"  # one record, by resident code
    SEARCH = "search"  # ranked candidates for the four items
    VERIFY_BATCH = "verify_batch"  # many verifications in one request


OPERATIONS: frozenset[str] = frozenset(op.value for op in Operation)

# Every item of the identity-confirmation record an answer may carry, plus the
# record's status (active / removed / superseded).
RECORD_FIELDS: frozenset[str] = frozenset(PROVIDABLE_FIELDS)

_TOP_KEYS = frozenset({"purpose", "agency"})
_AGENCY_KEYS = ("code", "name")
_PURPOSE_KEYS = ("code", "statute", "task", "agencies", "operations", "fields", "quota")
_TEXT_KEYS = ("ja", "en")
_QUOTA_KEYS = frozenset({"requests_per_second", "burst", "max_batch_size", "max_search_candidates"})


@dataclass(frozen=True)
class Bilingual:
    """A text in Japanese and English."""

    ja: str
    en: str


@dataclass(frozen=True)
class Agency:
    """A national agency: the code its certificate names, and its name as a
    resident reads it in a disclosure."""

    code: str
    name: Bilingual


@dataclass(frozen=True)
class Quota:
    """Limits per agency and purpose.

    ``requests_per_second`` is the sustained rate and ``burst`` the bucket size
    of a token bucket counted in lookups: a Verify, Retrieve or Search is one,
    a VerifyBatch message one per item (so ``burst`` is at least
    ``max_batch_size``).
    ``max_batch_size`` is set exactly when verify_batch is allowed, and
    ``max_search_candidates`` exactly when search is allowed.
    """

    requests_per_second: float
    burst: int
    max_batch_size: int | None = None
    max_search_candidates: int | None = None


@dataclass(frozen=True)
class Purpose:
    """One statutory use of identity records by national agencies."""

    code: str
    statute: Bilingual
    task: Bilingual
    agencies: frozenset[str]
    operations: frozenset[Operation]
    fields: frozenset[str]
    quota: Quota


def allowed_fields(purpose: Purpose) -> frozenset[str]:
    """The record fields an answer for ``purpose`` may carry (maybe none)."""
    return purpose.fields


class PurposeDenied(PermissionDenied):
    """A request outside the registry; ``reason`` says which check refused it."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        agency_code: str,
        purpose_code: str,
        operation: str,
        fields: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message, reason=reason)
        self.agency_code = agency_code
        self.purpose_code = purpose_code
        self.operation = operation
        self.fields = fields


def _show(value: object) -> str:
    """A caller-supplied value, quoted and cut short, for a denial message."""
    if isinstance(value, enum.Enum):
        value = value.value
    text = value if isinstance(value, str) else str(value)
    return repr(text[:64] + "…" if len(text) > 64 else text)


class PurposeRegistry:
    """The purposes by code; deny by default."""

    def __init__(self, purposes: Iterable[Purpose], agencies: Iterable[Agency] = ()) -> None:
        by_code: dict[str, Purpose] = {}
        for purpose in purposes:
            if purpose.code in by_code:
                raise ConfigError(f"duplicate purpose code {purpose.code!r}")
            by_code[purpose.code] = purpose
        self._by_code: Mapping[str, Purpose] = MappingProxyType(by_code)
        named: dict[str, Agency] = {}
        for agency in agencies:
            if agency.code in named:
                raise ConfigError(f"duplicate agency code {agency.code!r}")
            named[agency.code] = agency
        self._agencies: Mapping[str, Agency] = MappingProxyType(named)

    def agency(self, code: str) -> Agency | None:
        """The agency with this code, if the registry names it."""
        return self._agencies.get(code)

    def __len__(self) -> int:
        """How many purposes the registry lists."""
        return len(self._by_code)

    def __iter__(self) -> Iterator[Purpose]:
        """Every purpose, in the order the registry file lists them."""
        return iter(self._by_code.values())

    @property
    def agency_codes(self) -> frozenset[str]:
        """The code of every agency the registry names."""
        return frozenset(self._agencies)

    @property
    def max_batch_size(self) -> int:
        """The largest ``max_batch_size`` of any purpose (0 when none allows batches)."""
        return max((p.quota.max_batch_size or 0 for p in self), default=0)

    def get(self, code: str) -> Purpose | None:
        """The purpose with exactly this code, or None."""
        return self._by_code.get(code) if isinstance(code, str) else None

    def authorize(
        self,
        agency_code: str,
        purpose_code: str,
        operation: str,
        fields: Iterable[str] = (),
    ) -> Purpose:
        """The purpose, if ``agency_code`` may run ``operation`` under it and
        receive ``fields``; otherwise raise :class:`PurposeDenied`.

        Checks run in this order, and the first failure is the reason:
        unknown-purpose, agency-not-allowed, operation-not-allowed,
        field-not-allowed. An agency outside a purpose learns nothing about
        the operations or fields it allows.
        """
        if isinstance(fields, str):
            # A lone string would be read as its characters.
            raise TypeError("fields must be an iterable of field names, not a string")
        requested = frozenset(fields)

        def deny(reason: Reason, message: str) -> PurposeDenied:
            return PurposeDenied(
                reason,
                message,
                agency_code=agency_code,
                purpose_code=purpose_code,
                operation=operation,
                fields=requested,
            )

        purpose = self.get(purpose_code)
        if purpose is None:
            raise deny(Reason.UNKNOWN_PURPOSE, f"unknown purpose {_show(purpose_code)}")
        if agency_code not in purpose.agencies:
            raise deny(
                Reason.AGENCY_NOT_ALLOWED,
                f"agency {_show(agency_code)} may not use purpose {purpose.code}",
            )
        if operation not in purpose.operations:
            raise deny(
                Reason.OPERATION_NOT_ALLOWED,
                f"purpose {purpose.code} does not allow operation {_show(operation)}",
            )
        extra = requested - purpose.fields
        if extra:
            shown = ", ".join(_show(field) for field in sorted(extra, key=str))
            raise deny(
                Reason.FIELD_NOT_ALLOWED,
                f"purpose {purpose.code} does not allow field(s) {shown}",
            )
        return purpose


# --- loading ------------------------------------------------------------------


def load_registry(path: Path | None = None) -> PurposeRegistry:
    """Load and check the registry from ``path``, by default the packaged file.

    Any problem is a :class:`ConfigError` with one line naming the file and the
    entry.
    """
    if path is None:
        source = f"jukinet/{PACKAGED_FILE} (packaged)"
        try:
            raw = resources.files("jukinet").joinpath(PACKAGED_FILE).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the purpose registry: {exc}") from None
    else:
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            problem = exc.strerror or str(exc)
            raise ConfigError(f"{source}: cannot read the purpose registry: {problem}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    return parse_registry(text, source=source)


def parse_registry(text: str, *, source: str = "<purposes>") -> PurposeRegistry:
    """Check the TOML text of a registry; ``source`` names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None

    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {_keys(unknown)}")
    entries = document.get("purpose")
    if entries is None or entries == []:
        raise ConfigError(f"{source}: no [[purpose]] entries")
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: 'purpose' must be an array of tables ([[purpose]])")

    agencies = _parse_agencies(document.get("agency"), source)

    purposes: list[Purpose] = []
    first_seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        purpose = _parse_purpose(entry, number, source)
        if purpose.code in first_seen:
            raise ConfigError(
                f"{source}: purpose #{number} ({purpose.code}): duplicate purpose code "
                f"{purpose.code!r}, first defined in purpose #{first_seen[purpose.code]}"
            )
        first_seen[purpose.code] = number
        for code in sorted(purpose.agencies - set(agencies)):
            raise ConfigError(
                f"{source}: purpose #{number} ({purpose.code}): agency {code!r} has no "
                "[[agency]] entry (its name for disclosures)"
            )
        purposes.append(purpose)
    return PurposeRegistry(purposes, agencies.values())


def _parse_agencies(entries: object, source: str) -> dict[str, Agency]:
    """The [[agency]] entries by code."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: 'agency' must be an array of tables ([[agency]])")
    found: dict[str, tuple[int, Agency]] = {}
    for number, entry in enumerate(entries, start=1):
        where = _Entry(source, number, "agency")
        if not isinstance(entry, dict):
            raise where.error("must be a table ([[agency]])")
        unknown = sorted(set(entry) - set(_AGENCY_KEYS))
        if unknown:
            raise where.error(f"unknown key(s) {_keys(unknown)}")
        for key in _AGENCY_KEYS:
            if key not in entry:
                raise where.error(f"missing {key}")
        code = entry["code"]
        if not isinstance(code, str) or not _is_agency_code(code):
            raise where.error(
                f"agency {code!r} is not a valid agency certificate identity "
                "(jukinet://agency/<[a-z0-9-]{2,32}>)"
            )
        where.code = code
        if code in found:
            raise where.error(
                f"duplicate agency code {code!r}, first defined in agency #{found[code][0]}"
            )
        found[code] = (number, Agency(code, _bilingual(where, entry, "name")))
    return {code: agency for code, (_, agency) in found.items()}


class _Entry:
    """Raises ConfigErrors that name the file and the entry."""

    def __init__(self, source: str, number: int, kind: str = "purpose") -> None:
        self.source = source
        self.number = number
        self.kind = kind
        self.code: str | None = None

    def error(self, problem: str) -> ConfigError:
        label = f"{self.kind} #{self.number}"
        if self.code is not None:
            label += f" ({self.code})"
        return ConfigError(f"{self.source}: {label}: {problem}")


def _keys(keys: Iterable[str]) -> str:
    return ", ".join(repr(key) for key in keys)


def _parse_purpose(entry: object, number: int, source: str) -> Purpose:
    where = _Entry(source, number)
    if not isinstance(entry, dict):
        raise where.error("must be a table ([[purpose]])")

    code = entry.get("code")
    if code is None:
        raise where.error("missing code")
    if not is_purpose_code(code):
        raise where.error(
            f"purpose code {code!r} must be upper-case letters and digits joined by '-', "
            f"at most {PURPOSE_CODE_MAX} characters"
        )
    where.code = code

    unknown = sorted(set(entry) - set(_PURPOSE_KEYS))
    if unknown:
        raise where.error(f"unknown key(s) {_keys(unknown)}")
    for key in _PURPOSE_KEYS:
        if key not in entry:
            raise where.error(f"missing {key}")

    statute = _bilingual(where, entry, "statute")
    task = _bilingual(where, entry, "task")

    agencies = _string_list(where, entry, "agencies")
    if not agencies:
        raise where.error("agencies is empty: no agency could use this purpose")
    for agency in agencies:
        if not _is_agency_code(agency):
            raise where.error(
                f"agency {agency!r} is not a valid agency certificate identity "
                "(jukinet://agency/<[a-z0-9-]{2,32}>)"
            )

    operation_names = _string_list(where, entry, "operations")
    if not operation_names:
        raise where.error("operations is empty")
    for name in operation_names:
        if name not in OPERATIONS:
            raise where.error(
                f"unknown operation {name!r} (known: {', '.join(sorted(OPERATIONS))})"
            )
    operations = frozenset(Operation(name) for name in operation_names)

    fields = _string_list(where, entry, "fields")
    for field in fields:
        if field not in RECORD_FIELDS:
            raise where.error(
                f"unknown field {field!r} (known: {', '.join(sorted(RECORD_FIELDS))})"
            )

    quota = _quota(where, entry["quota"], operations)
    return Purpose(
        code=code,
        statute=statute,
        task=task,
        agencies=frozenset(agencies),
        operations=operations,
        fields=frozenset(fields),
        quota=quota,
    )


def _is_agency_code(code: str) -> bool:
    """True if ``code`` names an agency in a certificate, exactly."""
    try:
        identity = parse_identity_uri(f"jukinet://agency/{code}")
    except ValueError:
        return False
    return identity.kind is Kind.AGENCY and identity.code == code


def _bilingual(where: _Entry, entry: Mapping[str, Any], key: str) -> Bilingual:
    value = entry[key]
    if not isinstance(value, dict):
        raise where.error(f'{key} must be a table {{ ja = "...", en = "..." }}')
    unknown = sorted(set(value) - set(_TEXT_KEYS))
    if unknown:
        raise where.error(f"unknown key(s) {_keys(unknown)} in {key}")
    texts: dict[str, str] = {}
    for lang in _TEXT_KEYS:
        text = value.get(lang)
        if not isinstance(text, str) or not text.strip():
            raise where.error(f"missing {key}.{lang} (a non-empty string)")
        bad = forbidden_character(text)
        if bad is not None:
            # Printed in every disclosure: the same rule as a person's fields.
            raise where.error(f"{key}.{lang} contains {describe_character(bad)}")
        texts[lang] = text.strip()
    return Bilingual(ja=texts["ja"], en=texts["en"])


def _string_list(where: _Entry, entry: Mapping[str, Any], key: str) -> list[str]:
    value = entry[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise where.error(f"{key} must be a list of strings")
    seen: set[str] = set()
    for item in value:
        if item in seen:
            raise where.error(f"{key} lists {item!r} twice")
        seen.add(item)
    return list(value)


def _quota(where: _Entry, value: object, operations: frozenset[Operation]) -> Quota:
    if not isinstance(value, dict):
        raise where.error("quota must be a table")
    unknown = sorted(set(value) - _QUOTA_KEYS)
    if unknown:
        raise where.error(f"unknown key(s) {_keys(unknown)} in quota")

    rate = value.get("requests_per_second")
    if rate is None:
        raise where.error("missing quota.requests_per_second")
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise where.error(f"quota.requests_per_second must be a number, not {rate!r}")
    if not math.isfinite(rate) or rate <= 0:
        raise where.error(f"quota.requests_per_second must be positive and finite, not {rate!r}")

    burst = value.get("burst")
    if burst is None:
        raise where.error("missing quota.burst")
    burst = _positive_int(where, "burst", burst)

    limits: dict[str, int | None] = {}
    for key, operation in (
        ("max_batch_size", Operation.VERIFY_BATCH),
        ("max_search_candidates", Operation.SEARCH),
    ):
        limit = value.get(key)
        if operation in operations and limit is None:
            raise where.error(f"missing quota.{key} (required because {operation} is allowed)")
        if operation not in operations and limit is not None:
            raise where.error(f"quota.{key} is set but {operation} is not allowed")
        limits[key] = None if limit is None else _positive_int(where, key, limit)
    batch = limits["max_batch_size"]
    if batch is not None and burst < batch:
        # A token is one verification: a full message must fit the bucket.
        raise where.error(
            f"quota.burst ({burst}) must be at least quota.max_batch_size ({batch}): "
            "each item of a verify_batch message takes one token"
        )

    return Quota(
        requests_per_second=float(rate),
        burst=burst,
        max_batch_size=limits["max_batch_size"],
        max_search_candidates=limits["max_search_candidates"],
    )


def _positive_int(where: _Entry, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(f"quota.{key} must be an integer, not {value!r}")
    if value <= 0:
        raise where.error(f"quota.{key} must be positive, not {value!r}")
    return value
