"""Resident codes and local government codes (jukinet.codes).

What the error-detection tests assert was first checked by brute force over
20,000 random codes and all 100,000 local-government prefixes:

* Resident codes: remainders 0 and 1 share check digit 0, so a single wrong
  body digit goes unnoticed when it moves the remainder between 0 and 1
  (1.65% of single-digit substitutions, all in codes whose check digit is 0).
  With any other check digit every single substitution and every adjacent
  transposition inside the body is caught. Swapping the last body digit with
  the check digit is not always caught, whatever the check digit.
* Local government codes: remainders 0 and 10 share check digit 1; the same
  pattern follows with check digit 1 in place of 0.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jukinet.codes import (
    PREFECTURE_CODES,
    check_local_government_code,
    check_resident_code,
    is_valid_local_government_code,
    is_valid_resident_code,
    local_government_check_digit,
    new_resident_code,
    prefecture_of,
    resident_check_digit,
    with_check_digit,
)
from jukinet.errors import InvalidArgument

digits = st.text(alphabet="0123456789", min_size=10, max_size=10)
resident_codes = digits.map(lambda body: body + str(resident_check_digit(body)))
prefixes5 = st.builds(
    lambda pref, rest: pref + rest,
    st.sampled_from(PREFECTURE_CODES),
    st.text(alphabet="0123456789", min_size=3, max_size=3),
)
local_codes = prefixes5.map(with_check_digit)


def _substitutions(code: str) -> list[tuple[int, str]]:
    return [
        (i, code[:i] + d + code[i + 1 :])
        for i in range(len(code))
        for d in "0123456789"
        if d != code[i]
    ]


def _remainder(body: str) -> int:
    # Independent restatement of DOMAIN.md's rule: weights from the right.
    return sum(int(d) * (n + 1 if n <= 6 else n - 5) for n, d in enumerate(reversed(body), 1)) % 11


# --- resident codes: the DOMAIN.md examples ----------------------------------


def test_domain_examples() -> None:
    assert _remainder("1234567890") == 8
    assert resident_check_digit("1234567890") == 3
    assert resident_check_digit("2472705960") == 8
    assert is_valid_resident_code("12345678903")
    assert is_valid_resident_code("24727059608")
    assert not is_valid_resident_code("12345678904")


@given(digits)
def test_check_digit_matches_the_rule_as_written(body: str) -> None:
    r = _remainder(body)
    assert resident_check_digit(body) == (0 if r <= 1 else 11 - r)


@given(st.integers(min_value=0, max_value=2**64))
def test_generated_codes_validate(seed: int) -> None:
    code = new_resident_code(random.Random(seed))
    assert len(code) == 11
    assert code.isascii()
    assert is_valid_resident_code(code)
    assert check_resident_code(code) == code


def test_default_generator_is_random_and_valid() -> None:
    codes = {new_resident_code() for _ in range(100)}
    assert len(codes) == 100
    assert all(is_valid_resident_code(c) for c in codes)


def test_seeded_generator_is_reproducible() -> None:
    assert new_resident_code(random.Random(7)) == new_resident_code(random.Random(7))


# --- resident codes: what the check digit does and does not catch -----------


@given(resident_codes)
def test_single_substitution_is_missed_only_between_remainders_0_and_1(code: str) -> None:
    for i, changed in _substitutions(code):
        missed = is_valid_resident_code(changed)
        if i == 10 or code[-1] != "0":
            assert not missed, (code, changed)
        else:
            # Check digit 0 stands for remainder 0 and 1 alike.
            assert missed == (_remainder(changed[:10]) in (0, 1)), (code, changed)


def test_single_substitution_can_go_unnoticed() -> None:
    # A concrete case, so that nobody relies on detection that is not there.
    assert is_valid_resident_code("10000000030")
    assert is_valid_resident_code("13000000030")


@given(resident_codes)
def test_adjacent_transposition_in_body_is_caught_unless_check_digit_is_0(code: str) -> None:
    for i in range(9):
        if code[i] == code[i + 1]:
            continue
        swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
        if code[-1] != "0":
            assert not is_valid_resident_code(swapped), (code, swapped)


def test_swapping_last_body_digit_with_check_digit_can_go_unnoticed() -> None:
    assert is_valid_resident_code("10000000901")
    assert is_valid_resident_code("10000000910")


# --- resident codes: bad input ----------------------------------------------


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("", "must be 11 digits, got an empty string"),
        ("1234567890", "must be 11 digits, got 10"),
        ("123456789034", "must be 11 digits, got 12"),
        ("1234567890a", "characters other than 0-9"),
        (" 12345678903", "characters other than 0-9"),
        ("12345678903\n", "characters other than 0-9"),
        ("1234-567890", "characters other than 0-9"),
        ("１２３４５６７８９０３", "full-width"),
        ("١٢٣٤٥٦٧٨٩٠٣", "full-width or other Unicode digits"),
        ("12345678904", "check digit is wrong (expected 3)"),
    ],
)
def test_check_resident_code_rejects(code: str, problem: str) -> None:
    assert not is_valid_resident_code(code)
    with pytest.raises(InvalidArgument) as err:
        check_resident_code(code, field="subject.resident_code")
    assert err.value.field == "subject.resident_code"
    assert problem in err.value.problem
    assert ("jukinet-field", "subject.resident_code") in err.value.metadata()


def test_resident_code_errors_do_not_repeat_the_code() -> None:
    # Error messages are logged; a resident code identifies a person.
    with pytest.raises(InvalidArgument) as err:
        check_resident_code("12345678904")
    assert "1234567890" not in str(err.value)
    assert err.value.field == "resident_code"


@pytest.mark.parametrize("body", ["", "123456789", "12345678901", "12345６7890", "abcdefghij"])
def test_resident_check_digit_needs_ten_ascii_digits(body: str) -> None:
    with pytest.raises(ValueError):
        resident_check_digit(body)


# --- local government codes --------------------------------------------------


@pytest.mark.parametrize("code", ["312011", "312029", "131016", "131041", "011002", "472018"])
def test_local_government_domain_examples(code: str) -> None:
    assert local_government_check_digit(code[:5]) == int(code[5])
    assert with_check_digit(code[:5]) == code
    assert is_valid_local_government_code(code)
    assert check_local_government_code(code) == code


def test_local_government_check_digit_by_hand() -> None:
    # 鳥取市: 6*3 + 5*1 + 4*2 + 3*0 + 2*1 = 33, remainder 0, (11 - 0) mod 10 = 1.
    assert local_government_check_digit("31201") == 1
    # Remainder 10 (5*2 = 10) gives 1 as well: the two share a check digit.
    assert local_government_check_digit("02000") == 1
    # Remainder 1 (4*3 = 12) gives 10 mod 10 = 0.
    assert local_government_check_digit("00300") == 0


def test_prefecture_of() -> None:
    assert prefecture_of("312011") == "31"
    assert prefecture_of("131041") == "13"
    with pytest.raises(InvalidArgument):
        prefecture_of("312012")


@given(local_codes)
def test_generated_local_codes_validate(code: str) -> None:
    assert is_valid_local_government_code(code)
    assert prefecture_of(code) == code[:2]


@given(local_codes)
def test_local_substitution_is_missed_only_when_check_digit_is_1(code: str) -> None:
    for i, changed in _substitutions(code):
        if i == 5 or code[-1] != "1":
            assert not is_valid_local_government_code(changed), (code, changed)


@given(local_codes)
def test_local_adjacent_transposition_is_caught_unless_check_digit_is_1(code: str) -> None:
    for i in range(4):
        if code[i] == code[i + 1]:
            continue
        swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
        if code[-1] != "1":
            assert not is_valid_local_government_code(swapped), (code, swapped)


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("", "must be 6 digits, got an empty string"),
        ("31201", "5-digit JIS X 0402 form without its check digit (312011)"),
        ("3120111", "must be 6 digits, got 7"),
        ("31201a", "characters other than 0-9"),
        ("３１２０１１", "full-width"),
        (with_check_digit("00201"), "prefecture must be 01..47, got 00"),
        (with_check_digit("48201"), "prefecture must be 01..47, got 48"),
        (with_check_digit("99999"), "prefecture must be 01..47, got 99"),
        ("312012", "check digit is wrong (expected 1)"),
    ],
)
def test_check_local_government_code_rejects(code: str, problem: str) -> None:
    assert not is_valid_local_government_code(code)
    with pytest.raises(InvalidArgument) as err:
        check_local_government_code(code, field="municipality")
    assert err.value.field == "municipality"
    assert problem in err.value.problem


def test_prefecture_codes() -> None:
    assert len(PREFECTURE_CODES) == 47
    assert PREFECTURE_CODES[0] == "01"
    assert PREFECTURE_CODES[-1] == "47"


@pytest.mark.parametrize("first5", ["", "3120", "312011", "３１２０１", "3120x"])
def test_local_check_digit_needs_five_ascii_digits(first5: str) -> None:
    with pytest.raises(ValueError):
        local_government_check_digit(first5)
    with pytest.raises(ValueError):
        with_check_digit(first5)
