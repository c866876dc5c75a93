"""The operator password rule and its Argon2id hashes."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type
from argon2.profiles import RFC_9106_LOW_MEMORY

from jukinet import passwords


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("Short1pass", "at least 12 characters"),
        ("a" * 20, "one character repeated"),
        ("correcthorsebattery", "mixes at least two"),
        ("123456789012345", "mixes at least two"),
        ("x" * 100 + "Y" * 29, "at most 128"),
        ("tab\there-is-a-Password", "control characters"),
        ("my-t.tanaka-Password", "operator's id"),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(password: str, problem: str) -> None:
    found = passwords.password_problem(password, operator_id="t.tanaka")
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "password",
    ["correct horse battery", "Tottori-counter-7", "とっとりの窓口で働く2025", "123456-abcdef"],
)
def test_passwords_of_twelve_characters_and_two_classes_are_accepted(password: str) -> None:
    assert passwords.password_problem(password, operator_id="t.tanaka") is None


def test_full_width_and_half_width_are_the_same_password() -> None:
    stored = passwords.hash_password("Tottori-counter-7")
    assert passwords.verify_password(stored, "Ｔｏｔｔｏｒｉ－ｃｏｕｎｔｅｒ－７")
    assert passwords.password_problem("ａａａａａａａａａａａａ") is not None


def test_hashes_are_salted_argon2id_with_the_parameters_written_down() -> None:
    first = passwords.hash_password("Tottori-counter-7")
    second = passwords.hash_password("Tottori-counter-7")
    assert first != second
    assert first.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert passwords.verify_password(first, "Tottori-counter-7")
    assert not passwords.verify_password(first, "Tottori-counter-8")
    assert not passwords.needs_rehash(first)


def test_an_unreadable_hash_never_verifies() -> None:
    assert not passwords.verify_password("", "Tottori-counter-7")
    assert not passwords.verify_password("$argon2id$garbage", "Tottori-counter-7")
    assert passwords.needs_rehash("not a hash")


def test_a_hash_of_other_parameters_verifies_and_asks_to_be_replaced() -> None:
    weaker = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID)
    old = weaker.hash("Tottori-counter-7")
    assert passwords.verify_password(old, "Tottori-counter-7")
    assert passwords.needs_rehash(old)
    assert passwords.HASHER.time_cost == RFC_9106_LOW_MEMORY.time_cost
    assert passwords.HASHER.memory_cost == RFC_9106_LOW_MEMORY.memory_cost
