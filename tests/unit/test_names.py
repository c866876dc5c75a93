"""Folded name and kana keys for 4情報 search (jukinet.names)."""

from __future__ import annotations

import random
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ja_itaiji import Itaiji

from jukinet.names import (
    EXCLUDED_CHARACTERS,
    EXCLUDED_LINKS,
    LEVEL1_VARIANT_PAIRS,
    PINNED_REPRESENTATIVES,
    SCORE_EXACT,
    SCORE_FOLDED,
    SCORE_KANA_ONLY,
    SCORE_NONE,
    fold_kana,
    fold_name,
    kana_key,
    match_score,
    name_key,
    variant_map,
)


def linked(a: str, b: str) -> bool:
    """Whether ja-itaiji itself links the two characters (either direction)."""
    return bool(Itaiji.is_family(a, b) or Itaiji.is_family(b, a))


# --------------------------------------------------------------------------
# Variant kanji
# --------------------------------------------------------------------------

REQUIRED_PAIRS = [
    ("髙", "高"),
    ("﨑", "崎"),
    ("邊", "辺"),
    ("邉", "辺"),
    ("齋", "斎"),
    ("齊", "斉"),
    ("澤", "沢"),
    ("濱", "浜"),
    # present in ja-itaiji, so required too
    ("嶋", "島"),
    ("廣", "広"),
    ("櫻", "桜"),
    ("國", "国"),
    ("眞", "真"),
]


@pytest.mark.parametrize(("variant", "standard"), REQUIRED_PAIRS)
def test_required_pairs_fold_to_the_standard_form(variant: str, standard: str) -> None:
    assert linked(variant, standard)
    assert fold_name(variant) == fold_name(standard) == standard


def test_both_old_forms_of_be_fold_together() -> None:
    assert fold_name("邊") == fold_name("邉") == fold_name("辺")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("髙橋", "高橋"),
        ("山﨑", "山崎"),
        ("渡邊", "渡辺"),
        ("渡邉", "渡邊"),
        ("齋藤", "斎藤"),
        ("齊藤", "斉藤"),
        ("澤田", "沢田"),
        ("濱口", "浜口"),
        ("嶋田", "島田"),
        ("廣瀬", "広瀬"),
        ("櫻井", "桜井"),
        ("國分", "国分"),
        ("眞鍋", "真鍋"),
    ],
)
def test_surnames_with_variants_fold_alike(a: str, b: str) -> None:
    assert fold_name(a) == fold_name(b)


def test_saito_with_sei_and_sai_stay_apart() -> None:
    # 斉 (齊) and 斎 (齋) are different surnames; ja-itaiji links 亝 to both
    # sides, so any closure over its families would merge them.
    assert not linked("斉", "斎")
    assert fold_name("斉藤") != fold_name("斎藤")
    assert fold_name("齋藤") == fold_name("斎藤") != fold_name("齊藤") == fold_name("斉藤")
    assert fold_name("齋藤") != fold_name("斉藤")
    assert fold_name("齊藤") != fold_name("斎藤")


@pytest.mark.parametrize("saki", ["崎", "﨑", "嵜", "碕", "㟢"])
def test_saki_variants_fold_to_saki_and_never_to_sai(saki: str) -> None:
    assert fold_name(saki) == "崎"
    assert fold_name(saki) != fold_name("埼")
    assert fold_name(f"山{saki}") != fold_name("山埼")


@pytest.mark.parametrize("char", sorted(EXCLUDED_CHARACTERS))
def test_excluded_character_folds_only_to_itself(char: str) -> None:
    table = variant_map()
    assert len(Itaiji.get_family(char)) > 1  # the exclusion is doing something
    assert char not in table
    assert char not in table.values()
    assert fold_name(char) == char


@pytest.mark.parametrize(("variant", "partner"), sorted(EXCLUDED_LINKS))
def test_excluded_link_keeps_the_characters_apart(variant: str, partner: str) -> None:
    assert linked(variant, partner)  # ja-itaiji does link them
    assert fold_name(variant) != fold_name(partner)


@pytest.mark.parametrize(("variant", "standard"), sorted(LEVEL1_VARIANT_PAIRS.items()))
def test_level1_variant_pair_folds(variant: str, standard: str) -> None:
    assert linked(variant, standard)
    assert fold_name(variant) == fold_name(standard) == standard


@pytest.mark.parametrize(("variant", "standard"), sorted(PINNED_REPRESENTATIVES.items()))
def test_pinned_old_form_folds_to_its_new_form(variant: str, standard: str) -> None:
    assert linked(variant, standard)
    assert fold_name(variant) == standard


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # everyday (JIS level-1) characters that ja-itaiji links but that are
        # distinct name characters
        ("坂", "阪"),
        ("智", "知"),
        ("佑", "右"),
        ("佃", "田"),
        ("熊", "能"),
        ("園", "薗"),
        ("元", "円"),
        ("崎", "埼"),
        # chained only through 广 and 厂 in the table
        ("広", "岸"),
        ("広", "庵"),
    ],
)
def test_distinct_level1_characters_stay_apart(a: str, b: str) -> None:
    assert fold_name(a) != fold_name(b)


def test_variant_table_is_a_partition_with_fixed_representatives() -> None:
    table = variant_map()
    assert len(table) > 10_000
    for representative in set(table.values()):
        assert representative not in table
        assert fold_name(representative) == representative
        assert unicodedata.normalize("NFKC", representative) == representative


def test_simplified_chinese_forms_fold_to_the_japanese_form() -> None:
    assert fold_name("边") == "辺"
    assert fold_name("泽") == "沢"
    assert fold_name("斋藤") == "斎藤"


# --------------------------------------------------------------------------
# Normalisation, variation selectors, white space
# --------------------------------------------------------------------------


def test_ivs_is_stripped() -> None:
    assert fold_name("葛\U000e0100飾") == fold_name("葛飾") == "葛飾"
    assert fold_name("葛\U000e0101飾区") == fold_name("葛飾区")
    assert fold_name("辻\U000e0100") == fold_name("辻")


def test_standardized_variation_selectors_are_stripped() -> None:
    assert fold_name("神\ufe00") == fold_name("神")
    assert fold_name("一\ufe0f二") == "一二"


def test_compatibility_ideograph_folds_to_unified() -> None:
    assert fold_name("\ufa19") == "神"  # CJK COMPATIBILITY IDEOGRAPH-FA19
    assert fold_name("\ufa11") == "崎"  # 﨑 is a unified ideograph in the compat block


@pytest.mark.parametrize(
    "spelling",
    [
        "高橋邊子",
        "髙橋 邊子",
        "髙橋\u3000邊子",
        " 高橋\t辺子 ",
        "高\u200b橋邉子",
        "高橋 \u00a0邊子\n",
    ],
)
def test_white_space_variants_fold_alike(spelling: str) -> None:
    assert fold_name(spelling) == "高橋辺子"


def test_roman_letter_names_fold_case_and_width() -> None:
    assert fold_name("SMITH John") == fold_name("smith  JOHN") == fold_name("ＳＭＩＴＨ　ＪＯＨＮ")


def test_katakana_name_middle_dot_is_dropped() -> None:
    assert fold_name("ジョン・スミス") == fold_name("ジョン スミス") == fold_name("ｼﾞｮﾝ･ｽﾐｽ")


def test_aliases() -> None:
    assert name_key is fold_name
    assert kana_key is fold_kana


# --------------------------------------------------------------------------
# Kana
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reading", ["ショウイチ", "しょういち", "ｼｮｳｲﾁ", "シヨウイチ", "しよういち", "ショウ イチ"]
)
def test_kana_small_and_large_half_and_full_hira_and_kata_fold_alike(reading: str) -> None:
    assert fold_kana(reading) == "シヨウイチ"


def test_kana_voiced_marks_survive() -> None:
    assert fold_kana("ｶﾞｸ") == fold_kana("がく") == "ガク"
    assert fold_kana("ﾜﾀﾅﾍﾞ") == "ワタナベ"


def test_kana_long_vowel_white_space_and_dots_removed() -> None:
    assert fold_kana("ユーコ") == fold_kana("ゆこ") == "ユコ"
    assert fold_kana("ジョン・スミス") == fold_kana("ジョン　スミス") == fold_kana("じょんすみす")
    assert fold_kana("ｼﾞｮﾝ･ｽﾐｽ") == "ジヨンスミス"


def test_small_kana_outside_jaconv_table_are_enlarged() -> None:
    assert fold_kana("くゎ") == fold_kana("クヮ") == "クワ"
    assert fold_kana("ゕ") == "カ"
    assert fold_kana("ㇰ") == "ク"


def test_different_readings_stay_different() -> None:
    assert fold_kana("サイトウ") != fold_kana("サトウ")
    assert fold_kana("タカハシ") != fold_kana("タカバシ")


# --------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------


def test_score_tiers() -> None:
    exact = match_score("髙橋 邊子", "タカハシ ナベコ", "髙橋邊子", "たかはしなべこ")
    folded = match_score("高橋辺子", "タカハシナベコ", "髙橋邊子", "たかはしなべこ")
    kana_only = match_score("鷹橋鍋子", "タカハシナベコ", "髙橋邊子", "たかはしなべこ")
    none = match_score("佐藤花子", "サトウハナコ", "髙橋邊子", "たかはしなべこ")
    assert exact > folded > kana_only > none == SCORE_NONE
    assert kana_only == SCORE_KANA_ONLY


def test_exact_beats_folded_whatever_the_kana() -> None:
    worst_exact = match_score("髙橋", "タカバシ", "髙橋", "タカハシ")
    best_folded = match_score("高橋", "タカハシ", "髙橋", "タカハシ")
    assert worst_exact == SCORE_EXACT
    assert best_folded == SCORE_FOLDED + 2
    assert worst_exact > best_folded


def test_folded_beats_kana_only_whatever_the_kana() -> None:
    worst_folded = match_score("高橋", "タカバシ", "髙橋", "タカハシ")
    assert worst_folded == SCORE_FOLDED > SCORE_KANA_ONLY


def test_kana_breaks_ties_within_a_tier() -> None:
    agree = match_score("高橋", "たかはし", "髙橋", "タカハシ")
    unknown = match_score("高橋", None, "髙橋", "タカハシ")
    conflict = match_score("高橋", "たかばし", "髙橋", "タカハシ")
    assert agree > unknown > conflict
    assert match_score("高橋", "", "髙橋", None) == unknown


def test_ivs_stored_name_is_a_folded_not_an_exact_match() -> None:
    assert match_score("葛飾", None, "葛\U000e0100飾", None) == SCORE_FOLDED + 1
    assert match_score("葛\U000e0100飾", None, "葛\U000e0100飾", None) == SCORE_EXACT + 1


def test_sei_and_sai_match_only_by_kana() -> None:
    assert match_score("斉藤", "サイトウ", "斎藤", "サイトウ") == SCORE_KANA_ONLY
    assert match_score("斉藤", None, "斎藤", "サイトウ") == SCORE_NONE


def test_empty_query_matches_nothing() -> None:
    assert match_score("", None, "", None) == SCORE_NONE
    assert match_score(" ", "", "髙橋", "タカハシ") == SCORE_NONE


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

_CJK = st.one_of(
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    st.characters(min_codepoint=0x3400, max_codepoint=0x4DBF),
    st.characters(min_codepoint=0x20000, max_codepoint=0x2A6DF),
    st.characters(min_codepoint=0xF900, max_codepoint=0xFAFF),
)
_NAMEISH = st.one_of(
    _CJK,
    st.sampled_from("髙﨑邊邉齋齊斉斎澤濱埼　 \t・ーｶﾞｼｮァぁゎ\ufe00\U000e0100\u0301\u3099゙ﾞ"),
    st.characters(),
)


@given(st.text(_NAMEISH))
@settings(max_examples=500)
def test_fold_name_is_idempotent(name: str) -> None:
    once = fold_name(name)
    assert fold_name(once) == once


@given(st.text(_NAMEISH))
@settings(max_examples=500)
def test_fold_kana_is_idempotent(kana: str) -> None:
    once = fold_kana(kana)
    assert fold_kana(once) == once


@given(st.text(_CJK, min_size=1))
@settings(max_examples=500)
def test_folding_ideographs_never_yields_empty(name: str) -> None:
    assert fold_name(name) != ""


@given(st.text(_CJK, min_size=1))
def test_folded_name_matches_its_original(name: str) -> None:
    assert match_score(name, None, name, None) == SCORE_EXACT + 1
    variant = fold_name(name)
    assert match_score(variant, None, name, None) >= SCORE_FOLDED


# --------------------------------------------------------------------------
# Performance
# --------------------------------------------------------------------------

_SURNAMES = ["髙橋", "高橋", "渡邊", "渡邉", "渡辺", "山﨑", "山崎", "齋藤", "斉藤", "澤田", "佐藤"]
_GIVEN = ["邊子", "太郎", "花子", "眞一", "櫻", "國男", "廣", "葛\U000e0100", "ジョン", "SMITH"]


def test_fold_100k_names_fast_enough_for_insert_time() -> None:
    rng = random.Random(4)
    names = [
        f"{rng.choice(_SURNAMES)}{rng.choice(' 　')}{rng.choice(_GIVEN)}" for _ in range(100_000)
    ]
    fold_name("warm up the table")
    start = time.perf_counter()
    keys = [fold_name(n) for n in names]
    elapsed = time.perf_counter() - start
    print(f"\nfold_name: 100,000 names in {elapsed:.3f} s ({elapsed * 10:.2f} µs/name)")
    assert len(keys) == 100_000
    assert elapsed < 5.0  # about 0.1 s here; generous for a loaded CI machine
