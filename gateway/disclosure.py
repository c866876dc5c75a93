"""A resident's disclosure (本人確認情報の提供状況の開示) as text: the identity
record as the national node holds it, then every provision of it, with the
agency and the purpose named, and (at the home municipality) every copy of
the resident record issued at a municipality: who asked, where and when.
The counter prints it for the resident; the demo shows it.

Every text printed passes through :func:`jukinet.validation.visible`: the
nodes refuse bidi controls, line separators and invisible characters in what a
person reads, and whatever got into a store regardless is printed as
``<U+XXXX>``, so no stored text can reorder a line, start a new one or hide
a character of the printed disclosure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from jukinet.errors import ConfigError
from jukinet.localgov import lookup
from jukinet.purposes import PurposeRegistry, load_registry
from jukinet.textwidth import display_width, ljust, table
from jukinet.v1 import common_pb2, provision_pb2
from jukinet.validation import visible
from jukinet.vocabulary import operation_label, result_label

_SEX_NAME = {common_pb2.SEX_MALE: "male", common_pb2.SEX_FEMALE: "female"}
_STATUS_NAME = {
    common_pb2.RECORD_STATUS_ACTIVE: "registered",
    common_pb2.RECORD_STATUS_REMOVED: "removed from the register",
    common_pb2.RECORD_STATUS_SUPERSEDED: "superseded by a new resident code",
}
JST = dt.timezone(dt.timedelta(hours=9), "JST")


def _jst(stamp: str) -> str:
    """An RFC 3339 time as Japan's clock shows it, to the second."""
    try:
        at = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S")


def _registry() -> PurposeRegistry | None:
    try:
        return load_registry()
    except ConfigError:
        return None


def _agency_names(
    registry: PurposeRegistry, provisions: Sequence[provision_pb2.Provision]
) -> list[tuple[str, str]]:
    named = (registry.agency(code) for code in dict.fromkeys(p.agency_code for p in provisions))
    return [(a.code, f"{a.name.ja} ({a.name.en})") for a in named if a is not None]


def _purpose_tasks(
    registry: PurposeRegistry, provisions: Sequence[provision_pb2.Provision]
) -> list[tuple[str, str]]:
    found = (registry.get(code) for code in dict.fromkeys(p.purpose_code for p in provisions))
    return [(p.code, f"{p.task.ja} ({p.task.en})") for p in found if p is not None]


def _legend(title: str, entries: list[tuple[str, str]]) -> list[str]:
    """``title`` and one line per (code, text), the texts aligned; nothing if empty."""
    if not entries:
        return []
    shown = [(visible(code), visible(text)) for code, text in entries]
    width = max(display_width(code) for code, _ in shown) + 2
    return ["", title, *(f"  {ljust(code, width)}{text}" for code, text in shown)]


def format_disclosure(
    response: provision_pb2.DiscloseResponse, registry: PurposeRegistry | None = None
) -> str:
    """A disclosure as the counter prints it: the record, then every provision
    of it, agencies and purposes named as ``registry`` (by default the packaged
    one) names them, then the copies of the resident record a municipality
    issued (at the home municipality: who asked, where and when)."""
    registry = registry or _registry()
    state = response.identity
    record = state.record
    municipality = lookup(record.local_government_code)
    status = _STATUS_NAME.get(state.status, "unknown")
    if state.replaced_by:
        status += f" ({state.replaced_by})"
    name = record.name + (f" ({record.name_kana})" if record.name_kana else "")
    items = [
        ("resident code", record.resident_code),
        ("name", name),
        ("former surname", record.former_surname),
        ("alias", record.alias),
        ("birth date", record.birth_date),
        ("sex", _SEX_NAME.get(record.sex, "")),
        ("address", record.address),
        (
            "municipality",
            f"{record.local_government_code} {municipality.prefecture_name}{municipality.name}"
            if municipality is not None
            else record.local_government_code,
        ),
        ("status", status),
        ("last changed", _jst(state.updated_at) + " JST" if state.updated_at else ""),
    ]
    label_width = max(display_width(label) for label, _ in items) + 2
    lines = ["The identity record as the national node holds it", ""]
    lines += [f"  {ljust(label, label_width)}{visible(value)}" for label, value in items if value]
    lines.append("")
    lines += _provision_lines(list(response.provisions), registry)
    lines += _copy_lines(list(response.copies))
    return "\n".join(lines)


def _copy_lines(copies: Sequence[provision_pb2.CopyGiven]) -> list[str]:
    """The copies of the record the home municipality answered (広域交付): who asked,
    where and when; nothing when the disclosure is not a municipality's."""
    if not copies:
        return []
    headers = ["when (JST)", "issued at", "operator", "terminal", "applicant", "items"]
    rows = []
    for c in copies:
        where = lookup(c.issuing_local_government_code)
        place = c.issuing_local_government_code + (
            f" {where.prefecture_name}{where.name}" if where is not None else ""
        )
        items = [
            label
            for label, shown in (
                ("relationship", c.relationship_shown),
                ("resident code", c.code_shown),
            )
            if shown
        ]
        identified = "resident card" if c.resident_card else "photo ID"
        rows.append(
            [
                visible(cell)
                for cell in (
                    _jst(c.requested_at),
                    place,
                    c.operator,
                    c.terminal,
                    f"{c.applicant_code} ({identified})",
                    ", ".join(items) or "-",
                )
            ]
        )
    lines = ["", f"Copies of this record issued at a municipality, oldest first ({len(copies)}):"]
    lines.append("")
    lines += [f"  {line}".rstrip() for line in table(headers, rows)]
    return lines


def _provision_lines(
    provisions: list[provision_pb2.Provision], registry: PurposeRegistry | None
) -> list[str]:
    """Every provision of the record to agencies, agencies and purposes named."""
    lines: list[str] = []
    if not provisions:
        lines.append("No provision of this record to any agency.")
        return lines
    several_codes = len({p.resident_code for p in provisions}) > 1
    headers = ["when (JST)", "agency", "purpose", "operation", "fields", "result"]
    if several_codes:  # the record's earlier codes, before a code change
        headers.insert(1, "resident code")
    rows = []
    for p in provisions:
        row = [_jst(p.provided_at), p.agency_code, p.purpose_code, operation_label(p.operation)]
        row += [", ".join(p.fields) or "-", result_label(p.result)]
        if several_codes:
            row.insert(1, p.resident_code)
        rows.append([visible(cell) for cell in row])
    lines.append(f"Provisions of this record to agencies, oldest first ({len(provisions)}):")
    lines.append("")
    lines += [f"  {line}".rstrip() for line in table(headers, rows)]
    if registry is not None:
        lines += _legend("Agencies:", _agency_names(registry, provisions))
        lines += _legend("Purposes:", _purpose_tasks(registry, provisions))
    return lines
