"""Generated test populations (tools.population)."""

from __future__ import annotations

import dataclasses
import datetime
import re
import statistics
import time

import pytest
from faker.providers.person.ja_JP import Provider as JaPersonProvider
from hypothesis import given, settings
from hypothesis import strategies as st

from jukinet import localgov
from jukinet.codes import with_check_digit
from jukinet.errors import InvalidArgument
from tools.population import (
    DEFAULT_AS_OF,
    MAX_AGE,
    NAME_SEPARATOR,
    Household,
    Person,
    PopulationGenerator,
)

SURNAMES = {kanji: kana for kanji, kana, _ in JaPersonProvider.last_name_pairs}
GIVEN = {
    "male": {kanji: kana for kanji, kana, _ in JaPersonProvider.first_name_male_pairs},
    "female": {kanji: kana for kanji, kana, _ in JaPersonProvider.first_name_female_pairs},
}
NUMBERS = re.compile(r"(\d+丁目\d+番\d+号|\d+番地(\d+)?)$")

SHINJUKU = "131041"
TOTTORI = "312011"
SAPPORO = "011002"


def _check_person(p: Person, code: str, as_of: datetime.date) -> None:
    assert p.name.count(NAME_SEPARATOR) == 1
    assert p.name_kana.count(NAME_SEPARATOR) == 1
    surname, given = p.name.split(NAME_SEPARATOR)
    surname_kana, given_kana = p.name_kana.split(NAME_SEPARATOR)
    assert (p.surname, p.given_name) == (surname, given)
    # The reading belongs to the kanji, and the given name to the sex.
    assert SURNAMES[surname] == surname_kana
    assert GIVEN[p.sex].get(given) == given_kana, p
    assert p.birth_date <= as_of
    assert 0 <= p.age_on(as_of) <= MAX_AGE
    prefix = localgov.address_prefix(code)
    assert p.address.startswith(prefix)
    rest = p.address.removeprefix(prefix)
    match = NUMBERS.search(rest)
    assert match, p.address
    assert rest[: match.start()] in localgov.town_names(code), p.address


def test_people_are_well_formed() -> None:
    gen = PopulationGenerator(seed=1)
    people = list(gen.people(SHINJUKU, 2_000))
    assert len(people) == 2_000
    for p in people:
        _check_person(p, SHINJUKU, DEFAULT_AS_OF)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**63),
    as_of=st.dates(min_value=datetime.date(1990, 1, 1), max_value=datetime.date(2100, 12, 31)),
    code=st.sampled_from([SHINJUKU, TOTTORI, SAPPORO, "013030", "472018", "133621"]),
)
def test_any_seed_date_and_place(seed: int, as_of: datetime.date, code: str) -> None:
    gen = PopulationGenerator(seed, as_of=as_of)
    for p in gen.people(code, 50):
        _check_person(p, code, as_of)
    for h in gen.households(code, 50):
        for p in h.members:
            _check_person(p, code, as_of)


def test_leap_day_reference_date() -> None:
    as_of = datetime.date(2024, 2, 29)
    gen = PopulationGenerator(seed=3, as_of=as_of)
    people = list(gen.people(TOTTORI, 5_000))
    assert all(p.birth_date <= as_of for p in people)
    assert {p.age_on(as_of) for p in people} <= set(range(MAX_AGE + 1))


def test_age_spread_is_realistic() -> None:
    gen = PopulationGenerator(seed=2)
    ages = [p.age_on(DEFAULT_AS_OF) for p in gen.people(TOTTORI, 20_000)]
    assert min(ages) == 0
    assert 95 <= max(ages) <= MAX_AGE
    # Japan's mean age is about 48; under-15s are about 11%, 65 and over 29%.
    assert 44 <= statistics.mean(ages) <= 52
    assert 0.08 <= sum(a < 15 for a in ages) / len(ages) <= 0.14
    assert 0.25 <= sum(a >= 65 for a in ages) / len(ages) <= 0.33


def test_both_sexes_and_many_names() -> None:
    people = list(PopulationGenerator(seed=4).people(SHINJUKU, 5_000))
    female = sum(p.sex == "female" for p in people) / len(people)
    assert 0.45 <= female <= 0.60
    assert len({p.surname for p in people}) == len(SURNAMES)
    # Variant spellings of one reading both occur, as in real registers.
    assert {"斎藤", "斉藤"} <= {p.surname for p in people}


def test_deterministic_for_a_seed() -> None:
    a = PopulationGenerator(seed=42)
    b = PopulationGenerator(seed=42)
    assert list(a.people(SHINJUKU, 300)) == list(b.people(SHINJUKU, 300))
    assert list(a.households(SHINJUKU, 300)) == list(b.households(SHINJUKU, 300))
    assert list(a.people(SHINJUKU, 300)) != list(PopulationGenerator(seed=43).people(SHINJUKU, 300))


def test_calls_do_not_disturb_each_other() -> None:
    gen = PopulationGenerator(seed=5)
    first = list(gen.people(TOTTORI, 100))
    list(gen.households(SHINJUKU, 500))
    list(gen.people(SAPPORO, 50))
    assert list(gen.people(TOTTORI, 100)) == first
    # A longer run starts with the shorter one.
    assert list(gen.people(TOTTORI, 1_000))[:100] == first


def test_reference_date_shifts_birth_dates_only() -> None:
    early = list(PopulationGenerator(seed=6, as_of=datetime.date(2020, 4, 1)).people(TOTTORI, 200))
    late = list(PopulationGenerator(seed=6, as_of=datetime.date(2030, 4, 1)).people(TOTTORI, 200))
    assert [(p.name, p.sex, p.address) for p in early] == [(p.name, p.sex, p.address) for p in late]
    assert [p.age_on(datetime.date(2020, 4, 1)) for p in early] == [
        p.age_on(datetime.date(2030, 4, 1)) for p in late
    ]


def test_households() -> None:
    gen = PopulationGenerator(seed=7)
    households = list(gen.households(TOTTORI, 10_000))
    assert sum(len(h.members) for h in households) == 10_000
    sizes = [len(h.members) for h in households]
    assert set(sizes) == {1, 2, 3, 4, 5}
    # Japan's mean household is about 2.2 people; about 38% live alone.
    assert 2.0 <= statistics.mean(sizes) <= 2.6
    assert 0.33 <= sizes.count(1) / len(sizes) <= 0.43
    for h in households:
        _check_household(h)


def _check_household(h: Household) -> None:
    as_of = DEFAULT_AS_OF
    assert 1 <= len(h.members) <= 5
    assert h.head is h.members[0]
    assert h.head.age_on(as_of) >= 18
    assert len({p.surname for p in h.members}) == 1
    assert all(p.address == h.address for p in h.members)
    ages = [p.age_on(as_of) for p in h.members]
    adults = [a for a in ages if a >= 18]
    for age in ages:
        if age < 18:
            # A minor lives with someone old enough to be their parent.
            assert any(20 <= a - age <= 60 for a in adults), ages


def test_designated_city_addresses_name_the_ward() -> None:
    wards = tuple(w.name for w in localgov.wards_of(SAPPORO))
    for p in PopulationGenerator(seed=8).people(SAPPORO, 500):
        assert p.address.startswith(tuple("北海道" + w for w in wards)), p.address


def test_last_household_is_cut_to_fit() -> None:
    gen = PopulationGenerator(seed=9)
    for n in (0, 1, 2, 3, 7, 11):
        assert sum(len(h.members) for h in gen.households(TOTTORI, n)) == n
    assert list(gen.people(TOTTORI, 0)) == []


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("31201", "5-digit JIS X 0402 form"),
        ("312012", "check digit is wrong"),
        (with_check_digit("47999"), "no local government has this code"),
    ],
)
def test_bad_municipality_code_raises_at_call_time(code: str, problem: str) -> None:
    gen = PopulationGenerator(seed=1)
    with pytest.raises(InvalidArgument) as err:
        gen.people(code, 1)  # no next(): the error must not wait for iteration
    assert err.value.field == "municipality_code"
    assert problem in err.value.problem
    with pytest.raises(InvalidArgument):
        gen.households(code, 1)


def test_negative_counts_are_rejected() -> None:
    gen = PopulationGenerator(seed=1)
    with pytest.raises(ValueError):
        gen.people(TOTTORI, -1)
    with pytest.raises(ValueError):
        gen.households(TOTTORI, -1)


def test_results_are_frozen() -> None:
    person = next(PopulationGenerator(seed=1).people(TOTTORI, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        person.name = "x"  # type: ignore[misc]


def test_fast_enough() -> None:
    gen = PopulationGenerator(seed=10)
    localgov.lookup(TOTTORI)  # load the postal data outside the timing
    list(gen.people(TOTTORI, 1))
    start = time.perf_counter()
    n = sum(len(h.members) for h in gen.households(TOTTORI, 50_000))
    elapsed = time.perf_counter() - start
    assert n == 50_000
    # Measured about 0.25 s; the bound only catches an order-of-magnitude slip.
    assert elapsed < 5.0, elapsed
