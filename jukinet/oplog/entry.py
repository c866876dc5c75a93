"""An operation log entry and its canonical bytes (the leaf of the Merkle tree).

The canonical form is deterministic JSON: the keys sorted, no whitespace,
UTF-8 without escapes of non-ASCII characters, integers only, the hash in
base64. JSON rather than protobuf because protobuf's serialization is not
canonical (its deterministic mode is stable only within one implementation
and version), while the leaf is what every verifier, ours or a third
party's, hashes again years later: a rule any JSON library can reproduce,
and that an auditor reads with ``jq``. :func:`decode` refuses bytes that are
not exactly the canonical form of what they decode to.

Each entry carries its own index and the root of the tree before it
(``prev``). So a row moved to another place no longer fits it, and a row
rewritten so that it agrees with itself breaks the chain at the next entry:
the verifier can name the entry (``jukinet.oplog.verify``).

A provision the national node makes for an agency (or a refusal it records)
carries one key more, ``provision``: the provision's id, purpose code,
result and fields, so that a resident's disclosure can be matched to its
entry field by field. The key is present only in such entries, so every
other entry keeps exactly the bytes (and leaf hash) it had; the rule "absent
when there is no provision" keeps the form canonical, and :func:`decode`
refuses an entry that holds the key in any other shape. The purpose is
there rather than folded into ``operation`` or ``reason`` because those keep
their meaning for every entry (what was done; why it was refused).

An envelope relayed between municipalities (:mod:`jukinet.relay`) is logged at
every hop with one key more, ``relay``: the request id, kind, source and
destination of its header, by the same rule (present only in such entries,
refused by :func:`decode` in any other shape). The caller that handed the
envelope to the node is the entry's operator; its outcome is the hop's.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from jukinet.oplog.merkle import HASH_SIZE

FORMAT_VERSION = 1
OUTCOMES = frozenset({"ok", "refused", "failed"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_KEYS = frozenset(
    {"v", "index", "time_us", "operator", "terminal", "operation", "residents", "outcome"}
    | {"reason", "prev"}
)
_PROVISION_KEY = "provision"
_PROVISION_KEYS = frozenset({"id", "purpose", "result", "fields"})
_RELAY_KEY = "relay"
_RELAY_KEYS = frozenset({"request_id", "kind", "source", "destination"})
_OPTIONAL_KEYS = frozenset({_PROVISION_KEY, _RELAY_KEY})


class EntryError(ValueError):
    """An entry that cannot be logged, or bytes that are not a canonical entry."""


@dataclass(frozen=True)
class Provided:
    """What an entry of a provision adds: the provision's id, purpose, result and fields."""

    provision_id: str
    purpose: str
    result: str
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a value that cannot be one."""
        if not self.provision_id or not self.result:
            raise EntryError("a provision entry names its provision id and result")


@dataclass(frozen=True)
class Relayed:
    """What an entry of a relayed envelope adds: its header's request id, kind, source
    and destination."""

    request_id: str
    kind: str
    source: str
    destination: str

    def __post_init__(self) -> None:
        """Refuse a value that cannot be one."""
        if not self.request_id or not self.kind or not self.source or not self.destination:
            raise EntryError("a relay entry names its request id, kind, source and destination")


@dataclass(frozen=True)
class Operation:
    """What an operator did: the part of an entry the caller gives."""

    time: dt.datetime
    operator: str
    terminal: str
    operation: str
    resident_codes: tuple[str, ...]
    outcome: str
    reason: str = ""
    provision: Provided | None = None
    relay: Relayed | None = None

    def __post_init__(self) -> None:
        """Refuse a value that cannot be one."""
        if self.time.tzinfo is None:
            raise EntryError("an entry's time carries its time zone")
        if self.outcome not in OUTCOMES:
            raise EntryError(f"outcome {self.outcome!r} is not one of {sorted(OUTCOMES)}")
        if not self.operator or not self.terminal or not self.operation:
            raise EntryError("an entry names its operator, terminal and operation")
        if any(not c.isdigit() for c in self.resident_codes):
            raise EntryError("a resident code is digits")

    @property
    def time_us(self) -> int:
        """The time in microseconds since the Unix epoch."""
        t = self.time.astimezone(dt.UTC) if self.time.tzinfo is not dt.UTC else self.time
        return (
            calendar.timegm((t.year, t.month, t.day, t.hour, t.minute, t.second)) * 1_000_000
            + t.microsecond
        )


@dataclass(frozen=True)
class Entry:
    """A logged operation: its index and the root of the tree before it."""

    index: int
    operation: Operation
    prev_root: bytes

    def __post_init__(self) -> None:
        """Refuse a value that cannot be one."""
        if self.index < 0 or len(self.prev_root) != HASH_SIZE:
            raise EntryError("an entry has an index of 0 or more and a 32-byte previous root")


def time_from_us(time_us: int) -> dt.datetime:
    """A UTC time from microseconds since the Unix epoch."""
    return _EPOCH + dt.timedelta(microseconds=time_us)


def encode(entry: Entry) -> bytes:
    """The canonical bytes of an entry."""
    op = entry.operation
    doc: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "index": entry.index,
        "time_us": op.time_us,
        "operator": op.operator,
        "terminal": op.terminal,
        "operation": op.operation,
        "residents": list(op.resident_codes),
        "outcome": op.outcome,
        "reason": op.reason,
        "prev": base64.b64encode(entry.prev_root).decode(),
    }
    if op.provision is not None:
        p = op.provision
        doc[_PROVISION_KEY] = {
            "id": p.provision_id,
            "purpose": p.purpose,
            "result": p.result,
            "fields": list(p.fields),
        }
    if op.relay is not None:
        r = op.relay
        doc[_RELAY_KEY] = {
            "request_id": r.request_id,
            "kind": r.kind,
            "source": r.source,
            "destination": r.destination,
        }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes) -> Entry:
    """The entry whose canonical bytes ``data`` are; :class:`EntryError` otherwise."""
    try:
        doc = json.loads(data.decode())
        if (
            not isinstance(doc, dict)
            or set(doc) - _OPTIONAL_KEYS != _KEYS
            or doc["v"] != FORMAT_VERSION
        ):
            raise EntryError("the bytes are not a version 1 entry")
        entry = Entry(
            index=_int(doc["index"]),
            operation=Operation(
                time=time_from_us(_int(doc["time_us"])),
                operator=_str(doc["operator"]),
                terminal=_str(doc["terminal"]),
                operation=_str(doc["operation"]),
                resident_codes=tuple(_str(c) for c in _list(doc["residents"])),
                outcome=_str(doc["outcome"]),
                reason=_str(doc["reason"]),
                provision=_provided(doc.get(_PROVISION_KEY)),
                relay=_relayed(doc.get(_RELAY_KEY)),
            ),
            prev_root=base64.b64decode(_str(doc["prev"]), validate=True),
        )
    except (UnicodeDecodeError, json.JSONDecodeError, binascii.Error, OverflowError) as exc:
        raise EntryError(f"the bytes are not an entry ({type(exc).__name__})") from None
    if encode(entry) != data:
        raise EntryError("the bytes are not in canonical form")
    return entry


def _provided(value: object) -> Provided | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != _PROVISION_KEYS:
        raise EntryError("the provision field is not a provision")
    return Provided(
        provision_id=_str(value["id"]),
        purpose=_str(value["purpose"]),
        result=_str(value["result"]),
        fields=tuple(_str(f) for f in _list(value["fields"])),
    )


def _relayed(value: object) -> Relayed | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != _RELAY_KEYS:
        raise EntryError("the relay field is not a relayed envelope")
    return Relayed(
        request_id=_str(value["request_id"]),
        kind=_str(value["kind"]),
        source=_str(value["source"]),
        destination=_str(value["destination"]),
    )


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EntryError("a number field is not an integer")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise EntryError("a text field is not a string")
    return value


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise EntryError("a list field is not a list")
    return value
