"""Typed caller identities, as carried in a certificate's ``jukinet://`` URI SAN.

A node learns who is calling only from the verified client certificate, so
this module is the one place that turns the URI in that certificate into a
typed :class:`Identity` (and back). Parsing is strict: anything that is not
exactly one of the shapes below is rejected, because a lenient parser here
would be an authorization bypass.

    jukinet://municipality/<6-digit local government code with valid check digit>
    jukinet://prefecture/<01..47>
    jukinet://national
    jukinet://gateway
    jukinet://agency/<[a-z0-9-]{2,32}>
    jukinet://operator/<municipality code | prefecture code | national>/<[a-z0-9._-]{1,64}>
    jukinet://terminal/<municipality code | prefecture code | national>/<[a-z0-9._-]{1,64}>

A terminal is a counter computer of an organisation (which computer a change
was made at); it is named like an operator, by organisation and id.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from jukinet.codes import is_valid_local_government_code

SCHEME = "jukinet"
_PREFIX = f"{SCHEME}://"

# fullmatch with explicit classes rather than \d: \d would accept non-ASCII
# digits (e.g. full-width ３), which must never name a municipality.
_PREFECTURE_RE = re.compile(r"[0-9]{2}")
_MUNICIPALITY_RE = re.compile(r"[0-9]{6}")
_AGENCY_RE = re.compile(r"[a-z0-9-]{2,32}")
_OPERATOR_ID_RE = re.compile(r"[a-z0-9._-]{1,64}")

NATIONAL_ORG = "national"


class Kind(enum.Enum):
    """The kind of party a certificate speaks for."""

    MUNICIPALITY = "municipality"
    PREFECTURE = "prefecture"
    NATIONAL = "national"
    GATEWAY = "gateway"
    AGENCY = "agency"
    OPERATOR = "operator"
    TERMINAL = "terminal"


# The kinds named by an organisation and an id within it.
_ORG_MEMBER_KINDS = frozenset({Kind.OPERATOR, Kind.TERMINAL})


def is_prefecture_code(code: str) -> bool:
    """True for a two-digit prefecture code 01..47."""
    return _PREFECTURE_RE.fullmatch(code) is not None and 1 <= int(code) <= 47


def is_municipality_code(code: str) -> bool:
    """True for a six-digit local government code with a valid check digit."""
    return _MUNICIPALITY_RE.fullmatch(code) is not None and is_valid_local_government_code(code)


def _is_operator_org(org: str) -> bool:
    return org == NATIONAL_ORG or is_prefecture_code(org) or is_municipality_code(org)


@dataclass(frozen=True)
class Identity:
    """A verified caller: a node, an agency or an operator.

    ``code`` is the municipality / prefecture / agency code, or for an
    operator the organisation it belongs to (a municipality code, a prefecture
    code or ``national``); it is empty for the national node and the gateway.
    ``operator_id`` is set for operators and terminals only (a terminal's id
    within its organisation). Construct through the class
    methods or :func:`parse_identity_uri`, which validate; the constructor
    validates too so that no malformed identity can exist.
    """

    kind: Kind
    code: str = ""
    operator_id: str = ""

    def __post_init__(self) -> None:
        """Refuse a malformed identity with :class:`ValueError`."""
        problem = _problem(self.kind, self.code, self.operator_id)
        if problem is not None:
            raise ValueError(f"invalid {self.kind.value} identity: {problem}")

    @classmethod
    def municipality(cls, code: str) -> Identity:
        """A municipal node, by its six-digit local government code."""
        return cls(Kind.MUNICIPALITY, code)

    @classmethod
    def prefecture(cls, code: str) -> Identity:
        """A prefecture node, by its two-digit code."""
        return cls(Kind.PREFECTURE, code)

    @classmethod
    def national(cls) -> Identity:
        """The national node."""
        return cls(Kind.NATIONAL)

    @classmethod
    def gateway(cls) -> Identity:
        """The agency gateway."""
        return cls(Kind.GATEWAY)

    @classmethod
    def agency(cls, code: str) -> Identity:
        """A national agency, by its agency code."""
        return cls(Kind.AGENCY, code)

    @classmethod
    def operator(cls, org: str, operator_id: str) -> Identity:
        """An operator of a municipality, a prefecture or the national node."""
        return cls(Kind.OPERATOR, org, operator_id)

    @classmethod
    def terminal(cls, org: str, terminal_id: str) -> Identity:
        """A counter terminal of a municipality, a prefecture or the national node."""
        return cls(Kind.TERMINAL, org, terminal_id)

    @property
    def uri(self) -> str:
        """The URI SAN that names this identity in a certificate."""
        if self.kind in (Kind.NATIONAL, Kind.GATEWAY):
            return f"{_PREFIX}{self.kind.value}"
        if self.kind in _ORG_MEMBER_KINDS:
            return f"{_PREFIX}{self.kind.value}/{self.code}/{self.operator_id}"
        return f"{_PREFIX}{self.kind.value}/{self.code}"

    @property
    def org(self) -> str:
        """The organisation an operator or a terminal belongs to (its ``code``); empty otherwise."""
        return self.code if self.kind in _ORG_MEMBER_KINDS else ""

    @property
    def prefecture_code(self) -> str | None:
        """The prefecture this identity belongs to, where that is meaningful.

        A municipality belongs to the prefecture its code starts with; an
        operator to its organisation's prefecture. The national node, the
        gateway, agencies and national operators belong to none (``None``).
        """
        if self.kind in (Kind.MUNICIPALITY, Kind.PREFECTURE):
            return self.code[:2]
        if self.kind is Kind.OPERATOR and self.code != NATIONAL_ORG:
            return self.code[:2]
        return None

    def __str__(self) -> str:
        """The identity's URI, as its certificate's SAN carries it."""
        return self.uri


def _problem(kind: Kind, code: str, operator_id: str) -> str | None:
    """Why (kind, code, operator_id) is not a valid identity, or None if it is."""
    if not isinstance(kind, Kind):
        return f"kind must be a Kind, not {kind!r}"
    if kind not in _ORG_MEMBER_KINDS and operator_id:
        return "only operators and terminals have an id within their organisation"
    if kind in (Kind.NATIONAL, Kind.GATEWAY):
        return f"takes no code, got {code!r}" if code else None
    if kind is Kind.MUNICIPALITY:
        if not is_municipality_code(code):
            return f"{code!r} is not a six-digit local government code with a valid check digit"
        return None
    if kind is Kind.PREFECTURE:
        return None if is_prefecture_code(code) else f"{code!r} is not a prefecture code 01..47"
    if kind is Kind.AGENCY:
        return None if _AGENCY_RE.fullmatch(code) else f"{code!r} is not an agency code"
    # Kind.OPERATOR, Kind.TERMINAL
    if not _is_operator_org(code):
        return f"{code!r} is not a municipality code, a prefecture code or {NATIONAL_ORG!r}"
    if _OPERATOR_ID_RE.fullmatch(operator_id) is None:
        return f"{operator_id!r} is not a {kind.value} id ([a-z0-9._-]{{1,64}})"
    return None


def parse_identity_uri(uri: str) -> Identity:
    """Parse a ``jukinet://`` URI into an :class:`Identity`; ValueError if malformed.

    Deliberately not built on urllib.parse: that parser normalises and
    tolerates (case, ports, empty segments, percent escapes) in ways that would
    let two different strings name the same identity.
    """
    if not isinstance(uri, str):
        raise ValueError(f"identity URI must be a string, not {type(uri).__name__}")
    if not uri.startswith(_PREFIX):
        raise ValueError(f"not a {SCHEME}:// identity URI: {uri!r}")
    # Only the exact characters that may appear in a valid identity; this
    # rejects queries, fragments, userinfo, ports, escapes and whitespace.
    rest = uri[len(_PREFIX) :]
    if re.fullmatch(r"[a-z0-9._/-]+", rest) is None:
        raise ValueError(f"malformed identity URI: {uri!r}")
    parts = rest.split("/")
    try:
        kind = Kind(parts[0])
    except ValueError:
        raise ValueError(f"unknown identity kind in {uri!r}") from None
    expected = {
        Kind.NATIONAL: 1,
        Kind.GATEWAY: 1,
        Kind.MUNICIPALITY: 2,
        Kind.PREFECTURE: 2,
        Kind.AGENCY: 2,
        Kind.OPERATOR: 3,
        Kind.TERMINAL: 3,
    }[kind]
    if len(parts) != expected:
        raise ValueError(f"malformed {kind.value} identity URI: {uri!r}")
    code = parts[1] if expected > 1 else ""
    operator_id = parts[2] if expected > 2 else ""
    problem = _problem(kind, code, operator_id)
    if problem is not None:
        raise ValueError(f"invalid {kind.value} identity URI {uri!r}: {problem}")
    return Identity(kind, code, operator_id)
