"""Realistic, reproducible test populations for one municipality.

Names come from Faker's ``ja_JP`` person provider, addresses from Japan
Post's town list (:mod:`jukinet.localgov`), ages from Japan's age pyramid.
The output is plain frozen dataclasses, independent of the wire format.

Choices made here, and why:

* **Names** use the provider's *paired* tables (``last_name_pairs``,
  ``first_name_male_pairs``, ``first_name_female_pairs``), each entry a
  (kanji, katakana, romaji) triple, so the reading always belongs to the
  kanji. Faker's own ``name()`` and ``kana_name()`` draw independently and do
  not agree. Surnames keep Faker's frequency weights. The given name is drawn
  from the list for the person's sex, so sex and name agree.
* **Separator**: surname and given name are joined by one full-width space
  (U+3000, :data:`NAME_SEPARATOR`), in kanji and in kana, as Japanese
  registers and forms print them. Search must not depend on it: NFKC folds
  it to an ASCII space.
* **Ages** follow Japan's population by age (Statistics Bureau estimates,
  October 2023, rounded to 5-year bands), from 0 to 100. Birth dates are
  counted back from a reference date (``as_of``) and are never after it.
* **Addresses** are "<prefecture><county><municipality><town>N丁目N番N号" in
  areas Japan Post marks as divided into 丁目, else "<...><town>N番地" or
  "N番地M". Numbers are ASCII digits; town names keep Japan Post's
  characters (some contain full-width digits, e.g. 北１条).
* **Determinism**: the output is a pure function of the seed, the method,
  the municipality code and the count; the reference date shifts birth
  dates without changing who is generated. Each call starts a fresh stream,
  so ``people(code, 10)`` is a prefix of ``people(code, 1000)`` and the
  order of calls does not matter. The same seed gives the same people for a
  given version of Faker's and Japan Post's data; an upgrade of either may
  change them.

Speed: 100,000 people (singly or in households) take about 0.5-0.9 s on one core
(the first call in a process also loads the postal data: about 1 s more).
"""

from __future__ import annotations

import bisect
import datetime
import functools
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

from faker.providers.person.ja_JP import Provider as _JaPersonProvider

from jukinet import localgov
from jukinet.codes import check_local_government_code
from jukinet.errors import InvalidArgument

__all__ = [
    "DEFAULT_AS_OF",
    "MAX_AGE",
    "NAME_SEPARATOR",
    "Household",
    "Person",
    "PopulationGenerator",
    "Sex",
]

Sex = Literal["male", "female"]

NAME_SEPARATOR = "\u3000"
"""Between surname and given name, in kanji and in kana: one full-width space."""

MAX_AGE = 100
"""Oldest age generated."""

DEFAULT_AS_OF = datetime.date(2026, 1, 1)
"""Reference date for ages unless one is given.

Fixed rather than today's date so that a seed gives the same birth dates on
every day the tests run; being in the past, it also keeps every birth date
in the past.
"""


@dataclass(frozen=True, slots=True)
class Person:
    """One generated resident: the four basic items (4情報) and the reading."""

    name: str
    name_kana: str
    birth_date: datetime.date
    sex: Sex
    address: str

    @property
    def surname(self) -> str:
        """The family name (姓), the part of :attr:`name` before the separator."""
        return self.name.split(NAME_SEPARATOR, 1)[0]

    @property
    def given_name(self) -> str:
        """The given name (名), the part of :attr:`name` after the separator."""
        return self.name.split(NAME_SEPARATOR, 1)[1]

    def age_on(self, day: datetime.date) -> int:
        """Age in completed years on ``day``."""
        before_birthday = (day.month, day.day) < (self.birth_date.month, self.birth_date.day)
        return day.year - self.birth_date.year - before_birthday


@dataclass(frozen=True, slots=True)
class Household:
    """People living together (世帯): one surname, one address, 1 to 5 members.

    The first member is the head of household (世帯主); a spouse, children
    from the eldest down, then a parent of the head may follow.
    """

    members: tuple[Person, ...]
    address: str

    @property
    def head(self) -> Person:
        """The head of household (世帯主)."""
        return self.members[0]


class _NamePair(NamedTuple):
    kanji: str
    kana: str


# Population of Japan by 5-year age band, thousands (Statistics Bureau,
# 人口推計, 1 October 2023, rounded). The last band is 100 and over, which we
# cap at 100. Only the shape matters: more 50-year-olds than 5-year-olds.
_AGE_BANDS_THOUSANDS: tuple[int, ...] = (
    4_300, 4_800, 5_200, 5_400, 6_100, 6_300, 6_300, 7_100, 7_900, 9_500,
    9_400, 8_100, 7_400, 7_900, 9_300, 7_000, 5_600, 3_700, 1_800, 500,
    90,
)  # fmt: skip

# Share of women by age band: roughly even until 60, then women outlive men.
_FEMALE_SHARE_BY_AGE: tuple[tuple[int, float], ...] = ((60, 0.49), (80, 0.53), (101, 0.66))

# Household types, by share of households (2020 census, rounded): one person,
# a couple, a couple with children, a lone parent with children, three
# generations. Their mean size comes out near Japan's 2.2.
_HOUSEHOLD_KINDS: tuple[str, ...] = ("single", "couple", "family", "lone_parent", "three_gen")
_HOUSEHOLD_WEIGHTS: tuple[int, ...] = (38, 20, 25, 9, 8)

_ADULT = 18

# Lot numbers (番地) run into the thousands in rural areas; 2,000 keeps most
# generated addresses apart without looking odd in a town.
_MAX_BANCHI = 2000


@functools.cache
def _age_cum_weights() -> tuple[float, ...]:
    weights: list[float] = []
    for band, thousands in enumerate(_AGE_BANDS_THOUSANDS):
        years = 5 if band * 5 < MAX_AGE else 1
        weights.extend([thousands / years] * years)
    return tuple(itertools.accumulate(weights))


@functools.cache
def _surnames() -> tuple[tuple[_NamePair, ...], tuple[float, ...]]:
    pairs = _JaPersonProvider.last_name_pairs
    names = tuple(_NamePair(str(k[0]), str(k[1])) for k in pairs)
    return names, tuple(itertools.accumulate(float(w) for w in pairs.values()))


@functools.cache
def _given_names(sex: Sex) -> tuple[_NamePair, ...]:
    pairs = (
        _JaPersonProvider.first_name_male_pairs
        if sex == "male"
        else _JaPersonProvider.first_name_female_pairs
    )
    return tuple(_NamePair(str(p[0]), str(p[1])) for p in pairs)


def _years_before(day: datetime.date, years: int) -> datetime.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a year without one
        return day.replace(year=day.year - years, day=28)


class PopulationGenerator:
    """Generates people and households for any municipality, reproducibly.

    >>> gen = PopulationGenerator(seed=1)
    >>> person = next(gen.people("312011", 1))
    >>> person.address.startswith("鳥取県鳥取市")
    True
    """

    def __init__(self, seed: int, *, as_of: datetime.date = DEFAULT_AS_OF) -> None:
        self.seed = seed
        self.as_of = as_of
        # Birth-date bounds per age: born after the (age+1)th-last anniversary
        # of as_of, and no later than the age-th; computed once, used per person.
        self._birth_bounds: tuple[tuple[int, int], ...] = tuple(
            (
                _years_before(as_of, age + 1).toordinal() + 1,
                _years_before(as_of, age).toordinal(),
            )
            for age in range(MAX_AGE + 1)
        )

    def people(self, municipality_code: str, n: int) -> Iterator[Person]:
        """``n`` unrelated people, each at an address of their own, in that municipality.

        Raises :class:`jukinet.errors.InvalidArgument` for a code that is not a
        known local government.
        """
        # Validate now, not at the first next(): a generator body runs lazily.
        place = _Place.of(municipality_code)
        _check_count(n, "n")
        return self._people(place, self._rng("people", municipality_code), n)

    def households(self, municipality_code: str, n_people: int) -> Iterator[Household]:
        """Households in that municipality with ``n_people`` members in all.

        Household types and sizes follow the census mix; the last household is
        cut short (youngest or eldest relatives dropped) to hit ``n_people``
        exactly. Members share the head's surname and the address; a spouse
        is within a few years of the head, children are born when their mother
        is 20 to 45, a head's parent is 22 to 40 years older than the head.
        """
        place = _Place.of(municipality_code)
        _check_count(n_people, "n_people")
        return self._households(place, self._rng("households", municipality_code), n_people)

    # --- internals ---------------------------------------------------------

    def _people(self, place: _Place, rng: random.Random, n: int) -> Iterator[Person]:
        for _ in range(n):
            age = self._age(rng, 0, MAX_AGE)
            surname = self._surname(rng)
            yield self._person(rng, surname, age, self._sex(rng, age), place.address(rng))

    def _households(self, place: _Place, rng: random.Random, n_people: int) -> Iterator[Household]:
        remaining = n_people
        while remaining > 0:
            members = self._household(rng, place.address(rng))
            members = members[:remaining]
            remaining -= len(members)
            yield Household(tuple(members), members[0].address)

    def _rng(self, kind: str, code: str) -> random.Random:
        # A string seed is hashed with SHA-512 by random.seed, so the stream
        # is stable across processes and PYTHONHASHSEED values.
        return random.Random(f"tools.population/{self.seed}/{kind}/{code}")

    def _age(self, rng: random.Random, lo: int, hi: int) -> int:
        cum = _age_cum_weights()
        lo_w = cum[lo - 1] if lo > 0 else 0.0
        age = bisect.bisect_right(cum, lo_w + rng.random() * (cum[hi] - lo_w))
        return min(max(age, lo), hi)

    def _sex(self, rng: random.Random, age: int) -> Sex:
        for below, female_share in _FEMALE_SHARE_BY_AGE:
            if age < below:
                return "female" if rng.random() < female_share else "male"
        return "female"

    def _surname(self, rng: random.Random) -> _NamePair:
        names, cum = _surnames()
        return rng.choices(names, cum_weights=cum)[0]

    def _person(
        self, rng: random.Random, surname: _NamePair, age: int, sex: Sex, address: str
    ) -> Person:
        given = rng.choice(_given_names(sex))
        lo, hi = self._birth_bounds[age]
        # One random() per birth date whatever the span (365 or 366 days), so
        # that the reference date cannot shift the stream; randint could.
        born = lo + int(rng.random() * (hi - lo + 1))
        return Person(
            name=surname.kanji + NAME_SEPARATOR + given.kanji,
            name_kana=surname.kana + NAME_SEPARATOR + given.kana,
            birth_date=datetime.date.fromordinal(born),
            sex=sex,
            address=address,
        )

    def _household(self, rng: random.Random, address: str) -> list[Person]:
        kind = rng.choices(_HOUSEHOLD_KINDS, weights=_HOUSEHOLD_WEIGHTS)[0]
        surname = self._surname(rng)

        def member(age: int, sex: Sex) -> Person:
            return self._person(rng, surname, age, sex, address)

        if kind == "single":
            age = self._age(rng, _ADULT, MAX_AGE)
            return [member(age, self._sex(rng, age))]
        if kind == "couple":
            husband = self._age(rng, 20, MAX_AGE)
            return [member(husband, "male"), member(self._spouse_age(rng, husband), "female")]

        # Every other kind has children; their ages follow the mother's.
        mother = self._age(rng, 22, 55 if kind == "lone_parent" else 50)
        n_children = rng.choices((1, 2, 3), weights=(45, 40, 15))[0]
        children = sorted(
            (max(0, mother - rng.randint(20, min(45, mother))) for _ in range(n_children)),
            reverse=True,
        )
        kids = [member(age, self._sex(rng, 0)) for age in children]
        if kind == "lone_parent":
            # About four in five lone parents are mothers.
            parent = (
                member(mother, "female")
                if rng.random() < 0.8
                else member(min(MAX_AGE, mother + rng.randint(0, 5)), "male")
            )
            return [parent, *kids[:2]]

        father = min(MAX_AGE, max(_ADULT, mother + round(rng.gauss(2, 3))))
        head, spouse = member(father, "male"), member(mother, "female")
        if kind == "family":
            return [head, spouse, *kids]
        # Three generations: the head's widowed parent lives with the family.
        elder = min(MAX_AGE, father + rng.randint(22, 40))
        return [head, spouse, *kids[:2], member(elder, self._sex(rng, elder))]

    def _spouse_age(self, rng: random.Random, husband: int) -> int:
        # Husbands are on average about two years older than their wives.
        return min(MAX_AGE, max(_ADULT, husband - round(rng.gauss(2, 3))))


@dataclass(frozen=True, slots=True)
class _Place:
    prefix: str
    towns: tuple[localgov.Town, ...]

    @staticmethod
    def of(code: str) -> _Place:
        return _place(check_local_government_code(code, "municipality_code"))

    def address(self, rng: random.Random) -> str:
        if not self.towns:
            return f"{self.prefix}{rng.randint(1, _MAX_BANCHI)}番地"
        town = rng.choice(self.towns)
        if town.uses_chome:
            chome = rng.choices((1, 2, 3, 4, 5, 6), weights=(30, 25, 20, 12, 8, 5))[0]
            return (
                f"{self.prefix}{town.name}{chome}丁目{rng.randint(1, 30)}番{rng.randint(1, 25)}号"
            )
        banchi = rng.randint(1, _MAX_BANCHI)
        if rng.random() < 0.3:
            return f"{self.prefix}{town.name}{banchi}番地{rng.randint(1, 20)}"
        return f"{self.prefix}{town.name}{banchi}番地"


@functools.cache
def _place(code: str) -> _Place:
    if localgov.lookup(code) is None:
        raise InvalidArgument("municipality_code", "no local government has this code")
    return _Place(localgov.address_prefix(code), tuple(localgov.towns(code)))


def _check_count(n: int, field: str) -> None:
    if n < 0:
        raise ValueError(f"{field} must not be negative, got {n}")
