"""Folded keys for searching residents by name and kana reading (4情報 search).

Stored and returned names always keep their original characters (including any
variation selector): the functions here only compute *search keys*, which are
stored beside the original and compared instead of it.

Name key (:func:`fold_name`, alias :func:`name_key`), applied in this order:

1. NFKC: compatibility ideographs (神 U+FA19 -> 神 U+795E), full-width Latin
   letters, half-width kana, U+3000 ideographic space -> U+0020 ...
2. case folding, so Roman-letter names of foreign residents ("Smith",
   "SMITH") compare alike;
3. deletion of every variation selector (U+FE00-FE0F, the IVS range
   U+E0100-E01EF and the Mongolian U+180B-180D, U+180F), of all white space
   (``str.isspace``: ASCII, U+3000, NBSP ...), of the invisible zero-width
   characters U+200B-200D, U+2060 and U+FEFF, and of the middle dots ・ and ·
   that separate the parts of katakana names;
4. variant kanji (異体字) mapped to one representative per family with the
   table built by :func:`_build_variant_map` from the ``ja-itaiji`` package.

Steps 1-3 are repeated until the key is stable, so ``fold_name`` is
idempotent even on odd input (deleting a space can let a combining mark
compose with the character before it).

The variant table
-----------------
``ja-itaiji`` (1.0.2) lists, for 16,660 characters, a "family" of variants:
26,143 links between 16,661 distinct characters. It is a loose, non-transitive
*relation*, not a partition, and it mixes three things:

* true glyph variants and old forms: 髙/高, 﨑/崎, 邊/邉/辺, 齋/斎, 齊/斉, 澤/沢,
  濱/浜, 廣/広, 國/国 ... (what we want);
* simplified Chinese forms: 边, 斋, 齐, 泽 ... (harmless, and useful for
  Chinese residents' names written in simplified characters);
* "interchangeable" characters (通用字) that are different characters in
  Japanese names: 坂/阪, 智/知, 佑/右, 田/佃, 崎/埼, 熊/能, 園/薗, 元/圓,
  and links that look like data errors (濱/頻, 澤/途).

Taking the transitive closure (a union-find over the links) is therefore
wrong: it chains 斉 and 斎 through 亝 (listed with both 齋 and 齊), and puts
広, 岸, 庵 and 廠 in one family of 26 characters through 广 and 厂.

So the table is built as a *star* around standard characters, never by
chaining:

* every JIS X 0208 level-1 kanji (the 2,965 everyday forms) is its own
  representative and is never folded into another level-1 kanji: the table
  links about 220 pairs of level-1 kanji, and nearly all of them (坂/阪,
  智/知, 斉/斎, 崎/埼 ...) are distinct name characters;
* except the few level-1 pairs listed in :data:`LEVEL1_VARIANT_PAIRS`, each
  an old or alternative form of one character that is also linked in
  ja-itaiji (嶋/島, 龍/竜, 瀧/滝 ...);
* every other character (JIS level 2, JIS X 0213, rarer ideographs,
  simplified forms) folds to a level-1 kanji it is *directly* linked to; when
  it is linked to several, :func:`_affinity` picks one (family overlap and
  position in ja-itaiji's list), unless :data:`PINNED_REPRESENTATIVES` says
  otherwise (圓 -> 円, not 元);
* characters with no level-1 neighbour form stars among themselves, in order
  of JIS level then code point;
* :data:`EXCLUDED_CHARACTERS` and :data:`EXCLUDED_LINKS` remove links of
  ja-itaiji before all this: each is a merge of two distinct name
  characters (埼 with 崎 and its variants, 邵 with 召, 煌 with 皇 ...) or a
  data error (濱/頻), and each is tested.

Checked against the official old/new form pairs of the 常用漢字 and 人名用漢字
lists (as shipped by the ``kyujipy`` package, used for the check only): 459 of
464 pairs fold together; of the other five, 內 and 嬀 are not linked in
ja-itaiji, 鬥 and 鬬 fold to 斗 rather than 闘, and 濾/沪 is a Chinese pair.

Known limits: below level 1 the table still folds many rare characters into a
related common one that is a different character (潯 into 沈, 苞 into 包 ...);
only those that are names of their own are excluded.
The key is meant for recall: a false merge of two rare characters only adds a
candidate, which :func:`match_score` ranks below an exact match, while a
missed merge loses the resident. Characters the table does not know
(𠮷 U+20BB7, for one, is absent) are kept as they are.

Kana key (:func:`fold_kana`, alias :func:`kana_key`): half-width to
full-width (``jaconv.h2z``) and NFKC, hiragana to katakana
(``jaconv.hira2kata``), small kana to their large form
(``jaconv.enlarge_smallkana``, completed with ゎ/ヮ and the small Ainu
katakana ㇰ-ㇿ), then the long-vowel mark ー, white space, middle dots (・ ·)
and the double hyphen ゠ are removed. Enlarging small kana is deliberate:
registers written before small kana were used in readings hold シヨウ where a
newer one holds ショウ, and a reading key must let them meet; the price
(キヤ and キャ compare alike) only widens the candidate list.

Both folds work by ``str.translate`` on precomputed tables, so they are cheap
enough to run at insert time (about 1-2 µs per name, see the tests). The
variant table is built on first use (about 0.2 s), not at import.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from functools import cache
from types import MappingProxyType
from typing import Final, cast

import jaconv
from ja_itaiji import Itaiji

__all__ = [
    "EXCLUDED_CHARACTERS",
    "EXCLUDED_LINKS",
    "LEVEL1_VARIANT_PAIRS",
    "PINNED_REPRESENTATIVES",
    "SCORE_EXACT",
    "SCORE_FOLDED",
    "SCORE_KANA_ONLY",
    "SCORE_NONE",
    "fold_kana",
    "fold_name",
    "kana_key",
    "match_score",
    "name_key",
    "variant_map",
]

# --------------------------------------------------------------------------
# Corrections to ja-itaiji. Every entry must be a link present in the table
# (tests/unit/test_names.py checks it) and has its own test.
# --------------------------------------------------------------------------

EXCLUDED_CHARACTERS: Final[frozenset[str]] = frozenset(
    {
        # 埼 (埼玉, 埼 as a surname character) is not 崎: ja-itaiji links it
        # with 崎, 﨑, 嵜, 碕 and 㟢, so 﨑 would otherwise have two level-1
        # candidates. All its links are dropped: 埼 folds only to itself.
        "埼",
    }
)
"""Characters whose every ja-itaiji link is ignored."""

EXCLUDED_LINKS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        # (character, the one ja-itaiji would fold it into): each left-hand
        # character is a surname of its own (mostly of residents of Chinese,
        # Korean or Vietnamese origin), not a form of the right-hand one.
        ("邵", "召"),  # 邵 Shao
        ("范", "範"),  # 范 Fan
        ("盧", "櫨"),  # 盧 Lu / No
        ("韋", "回"),  # 韋 Wei
        ("邱", "丘"),  # 邱 Qiu
        ("晁", "朝"),  # 晁 Chao
        ("潭", "沈"),  # 潭 Tan; 沈 Shen is a surname too
        ("潘", "番"),  # 潘 Pan
        ("馮", "凭"),  # 馮 Feng
        ("魏", "巍"),  # 魏 Wei
        ("殷", "慇"),  # 殷 Yin
        ("閔", "憫"),  # 閔 Min
        ("黎", "犁"),  # 黎 Li / Le
        ("隋", "堕"),  # 隋 Sui
        # Given-name characters of the 人名用漢字 list, each licensed for
        # names on its own, that ja-itaiji links with another character.
        ("煌", "皇"),
        ("凰", "皇"),
        ("晟", "盛"),
        ("晨", "辰"),
        ("頌", "容"),
        ("諄", "純"),
        ("眸", "牟"),
        ("霄", "肖"),
        ("靄", "謁"),
        ("暉", "輝"),
        ("皓", "晧"),
        # Data errors: 頻 (frequency) is no form of 濱, nor 途 (road) of 澤.
        ("頻", "濱"),
        ("途", "澤"),
    }
)
"""Single ja-itaiji links that are ignored (both directions)."""

LEVEL1_VARIANT_PAIRS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # variant -> representative; both are JIS X 0208 level-1 kanji, the
        # variant is the old or alternative form of one character (most are
        # listed as such among the 人名用漢字 variant forms).
        "嶋": "島",
        "碕": "崎",  # so that 﨑, 嵜 and 㟢 (linked with both) reach 崎
        "龍": "竜",
        "瀧": "滝",
        "曾": "曽",
        "冨": "富",
        "埜": "野",
        "駈": "駆",
        "穐": "秋",
        "燈": "灯",
        "盃": "杯",
        "禰": "祢",
        "頴": "穎",
        "亙": "亘",
        "舘": "館",
        "栢": "柏",
        "鎗": "槍",
        "苅": "刈",
        "廼": "乃",
    }
)
"""Level-1 kanji that do fold into another level-1 kanji."""

PINNED_REPRESENTATIVES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # Old forms (旧字体) that ja-itaiji also links with another level-1
        # kanji which :func:`_affinity` prefers.
        "圓": "円",  # also linked with 元 (yuan)
        "卷": "巻",  # 捲
        "據": "拠",  # 据
        "鑛": "鉱",  # 砿
        "贊": "賛",  # 讃
        "孃": "嬢",  # 娘
        "莊": "荘",  # 庄
        "總": "総",  # 惣
    }
)
"""Non-level-1 characters whose representative is chosen by hand among
their ja-itaiji links."""


@cache
def _jis_rank(ch: str) -> int:
    """0 for JIS X 0208 level 1, 1 for level 2, 2 for JIS X 0213, 3 else."""
    try:
        b = ch.encode("euc_jp")
    except UnicodeEncodeError:
        b = b""
    if len(b) == 2 and 0xB0 <= b[0] <= 0xCF:
        return 0
    if len(b) == 2 and 0xD0 <= b[0] <= 0xF4:
        return 1
    try:
        ch.encode("euc_jis_2004")
    except UnicodeEncodeError:
        return 3
    return 2


def _priority(ch: str) -> tuple[int, int]:
    return (_jis_rank(ch), ord(ch))


def _itaiji_families() -> dict[str, list[str]]:
    raw = cast(dict[str, list[str]], Itaiji.dictionary)
    return {k: list(v) for k, v in raw.items()}


@cache
def _usable(ch: str) -> bool:
    # One code point, stable under NFKC (compatibility ideographs are folded
    # by NFKC before the table is consulted) and no excluded character.
    return (
        len(ch) == 1 and unicodedata.normalize("NFKC", ch) == ch and ch not in EXCLUDED_CHARACTERS
    )


def _links(families: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Symmetric adjacency of the usable ja-itaiji links, exclusions removed."""
    excluded = EXCLUDED_LINKS | {(b, a) for a, b in EXCLUDED_LINKS}
    adj: dict[str, set[str]] = {}
    for key, members in families.items():
        if not _usable(key):
            continue
        for other in members:
            if other == key or not _usable(other) or (key, other) in excluded:
                continue
            adj.setdefault(key, set()).add(other)
            adj.setdefault(other, set()).add(key)
    return adj


def _affinity(
    ch: str, candidate: str, adj: Mapping[str, set[str]], families: Mapping[str, Iterable[str]]
) -> tuple[float, int]:
    """How well ``candidate`` fits as the representative of ``ch``.

    The Jaccard overlap of the two families (true variants list each other:
    邊, 邉, 辺, 边 form a clique), plus half the relative position of the
    candidate in ``ch``'s own ja-itaiji list (its lists put related
    characters first and the Japanese new form near the end: 恆 lists 宣
    then 恒); ties go to the lowest code point. The few old forms it
    gets wrong are corrected in :data:`PINNED_REPRESENTATIVES`.
    """
    mine = adj[ch] | {ch}
    theirs = adj[candidate] | {candidate}
    jaccard = len(mine & theirs) / len(mine | theirs)
    own = list(families.get(ch, ()))
    position = own.index(candidate) / len(own) if candidate in own else 0.0
    return (jaccard + 0.5 * position, -ord(candidate))


def _build_variant_map(families: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Map each variant character to its representative (identity omitted)."""
    adj = _links(families)
    rep: dict[str, str] = {}
    centres = {ch for ch in adj if _jis_rank(ch) == 0 and ch not in LEVEL1_VARIANT_PAIRS}
    for variant, target in LEVEL1_VARIANT_PAIRS.items():
        if target in adj.get(variant, ()):
            rep[variant] = target
    for variant, target in PINNED_REPRESENTATIVES.items():
        if target in adj.get(variant, ()) and target in centres:
            rep[variant] = target
    deferred: list[str] = []
    for ch in sorted(adj, key=_priority):
        if ch in centres or ch in rep:
            continue
        candidates = [c for c in adj[ch] if c in centres]
        if not candidates:
            deferred.append(ch)
            continue
        rep[ch] = max(candidates, key=lambda c: _affinity(ch, c, adj, families))
    # Characters with no level-1 neighbour: stars among themselves.
    pending = set(deferred)
    for ch in deferred:
        if ch not in pending:
            continue
        pending.discard(ch)
        rep[ch] = ch
        for other in adj[ch] & pending:
            rep[other] = ch
            pending.discard(other)
    return {k: v for k, v in rep.items() if k != v}


@cache
def _variants() -> dict[str, str]:
    return _build_variant_map(_itaiji_families())


def variant_map() -> Mapping[str, str]:
    """Read-only view of the variant table: character -> representative.

    Characters absent from it are their own representative."""
    return MappingProxyType(_variants())


# --------------------------------------------------------------------------
# Translation tables
# --------------------------------------------------------------------------

_VARIATION_SELECTORS: Final[tuple[int, ...]] = (
    *range(0xFE00, 0xFE10),
    *range(0xE0100, 0xE01F0),
    0x180B,
    0x180C,
    0x180D,
    0x180F,
)
_WHITE_SPACE: Final[tuple[int, ...]] = tuple(cp for cp in range(0x10000) if chr(cp).isspace())
_INVISIBLE: Final[tuple[int, ...]] = (0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF)
_MIDDLE_DOTS: Final[str] = "・·"

_DELETE: Final[dict[int, None]] = dict.fromkeys(
    (*_VARIATION_SELECTORS, *_WHITE_SPACE, *_INVISIBLE, *map(ord, _MIDDLE_DOTS))
)


@cache
def _name_table() -> dict[int, int | None]:
    return {**{ord(k): ord(v) for k, v in _variants().items()}, **_DELETE}


# Small kana that jaconv.enlarge_smallkana leaves small.
_EXTRA_SMALL_KANA: Final[dict[str, str]] = {
    "ゎ": "ワ",
    "ヮ": "ワ",
    "ゕ": "カ",
    "ゖ": "ケ",
    **dict(
        zip("ㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ", "クシストヌハヒフヘホムラリルレロ", strict=True)
    ),
}
_KANA_TABLE: Final[dict[int, int | None]] = {
    **{ord(k): ord(v) for k, v in _EXTRA_SMALL_KANA.items()},
    **_DELETE,
    ord("ー"): None,
    ord("゠"): None,
}

_MAX_ROUNDS: Final[int] = 8


def _stable(s: str) -> bool:
    return unicodedata.is_normalized("NFKC", s) and s.casefold() == s


def _name_round(s: str) -> str:
    return unicodedata.normalize("NFKC", s).casefold().translate(_name_table())


def fold_name(name: str) -> str:
    """Search key of a name: NFKC, no variation selectors or white space,
    variant kanji mapped to their representative. Idempotent."""
    s = _name_round(name)
    for _ in range(_MAX_ROUNDS):
        if _stable(s):
            break
        s = _name_round(s)
    return s


def _kana_round(s: str) -> str:
    s = jaconv.h2z(s, kana=True, ascii=False, digit=False)
    s = unicodedata.normalize("NFKC", s).casefold()
    s = jaconv.enlarge_smallkana(jaconv.hira2kata(s))
    return s.translate(_KANA_TABLE)


def fold_kana(kana: str) -> str:
    """Reading key: full-width katakana, small kana enlarged, no long-vowel
    mark, white space or middle dots. Idempotent."""
    s = _kana_round(kana)
    for _ in range(_MAX_ROUNDS):
        if _stable(s):
            break
        s = _kana_round(s)
    return s


name_key = fold_name
kana_key = fold_kana

# --------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------

SCORE_NONE: Final[int] = 0
"""Neither the folded names nor the kana readings agree."""
SCORE_KANA_ONLY: Final[int] = 1
"""The names differ even folded, but both kana readings are known and agree."""
SCORE_FOLDED: Final[int] = 4
"""Base of a folded match (same :func:`fold_name`, different characters)."""
SCORE_EXACT: Final[int] = 7
"""Base of an exact match (same code points, white space aside)."""

_KANA_AGREE: Final[int] = 2
_KANA_UNKNOWN: Final[int] = 1
_KANA_CONFLICT: Final[int] = 0


def _kana_adjustment(query_kana: str | None, stored_kana: str | None) -> int:
    q = fold_kana(query_kana) if query_kana else ""
    s = fold_kana(stored_kana) if stored_kana else ""
    if not q or not s:
        return _KANA_UNKNOWN
    return _KANA_AGREE if q == s else _KANA_CONFLICT


def _strip_space(s: str) -> str:
    return "".join(s.split())


def match_score(
    query_name: str,
    query_kana: str | None,
    stored_name: str,
    stored_kana: str | None,
) -> int:
    """Rank a stored name against a query; higher is better, 0 is no match.

    Tiers, each beating every score of the tiers below it:

    * exact (7-9): the names are the same code points once white space is
      removed (an IVS or a variant kanji is a difference);
    * folded (4-6): the names have the same :func:`fold_name` key;
    * kana only (1): the names differ but both readings are known and have
      the same :func:`fold_kana` key;
    * none (0).

    Inside the exact and folded tiers the readings break ties: +2 when both
    are known and agree, +1 when either is unknown, +0 when they disagree.
    """
    q_exact, s_exact = _strip_space(query_name), _strip_space(stored_name)
    if q_exact and q_exact == s_exact:
        return SCORE_EXACT + _kana_adjustment(query_kana, stored_kana)
    q_fold = fold_name(query_name)
    if q_fold and q_fold == fold_name(stored_name):
        return SCORE_FOLDED + _kana_adjustment(query_kana, stored_kana)
    if _kana_adjustment(query_kana, stored_kana) == _KANA_AGREE:
        return SCORE_KANA_ONLY
    return SCORE_NONE
