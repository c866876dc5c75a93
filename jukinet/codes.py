"""Identifiers of the registry: resident codes and local government codes.

Two kinds of code travel through every tier:

* the **resident code** (住民票コード): 10 random digits and a check digit. The
  check-digit rule is an assumption (see :data:`RESIDENT_CHECK_DIGIT_RULE`);
  everything that depends on it goes through :func:`resident_check_digit`.
* the **local government code** (全国地方公共団体コード): 2-digit prefecture,
  3-digit municipality and a check digit, as published by the Ministry of
  Internal Affairs and Communications.

Three layers of functions, by who calls them:

* ``*_check_digit`` / :func:`with_check_digit` compute; they raise
  :class:`ValueError` on malformed input, which is a programming error.
* ``is_valid_*`` answer yes or no and never raise.
* ``check_*`` validate request input: they return the code unchanged or raise
  :class:`jukinet.errors.InvalidArgument` naming the field and the problem.

Only ASCII digits are accepted. Full-width digits (０-９) and other Unicode
digits are rejected rather than folded: a code is a key, and silently
normalising keys lets two spellings of one code reach the database.
"""

from __future__ import annotations

import random
import secrets

from jukinet.errors import InvalidArgument

__all__ = [
    "LOCAL_GOVERNMENT_CODE_LENGTH",
    "PREFECTURE_CODES",
    "RESIDENT_CHECK_DIGIT_RULE",
    "RESIDENT_CODE_LENGTH",
    "check_local_government_code",
    "check_resident_code",
    "is_valid_local_government_code",
    "is_valid_resident_code",
    "local_government_check_digit",
    "new_resident_code",
    "prefecture_of",
    "resident_check_digit",
    "with_check_digit",
]

RESIDENT_CODE_LENGTH = 11
"""Digits in a resident code, check digit included."""

LOCAL_GOVERNMENT_CODE_LENGTH = 6
"""Digits in a local government code, check digit included."""

PREFECTURE_CODES: tuple[str, ...] = tuple(f"{n:02d}" for n in range(1, 48))
"""The 47 prefecture codes, "01" (Hokkaido) to "47" (Okinawa)."""

_ASCII_DIGITS = frozenset("0123456789")

# ---------------------------------------------------------------------------
# ASSUMED: the resident-code check digit.
#
# The statute does not publish the construction. This is our reading: the same
# construction as the My Number (個人番号) check digit, which agrees with the
# sample codes published for Juki-net. If it turns out to be wrong, this block
# is the only place to correct; nothing else in the code base may repeat it.
#
# Body digits are numbered from the right, n = 1..10, with weight n+1 for
# n <= 6 and n-5 for n >= 7; read left to right that is the tuple below.
# r = sum(digit * weight) mod 11; check = 0 if r <= 1 else 11 - r.
# ---------------------------------------------------------------------------
_RESIDENT_WEIGHTS: tuple[int, ...] = tuple(
    n + 1 if n <= 6 else n - 5 for n in range(10, 0, -1)
)  # == (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)

RESIDENT_CHECK_DIGIT_RULE = (
    "assumed (My Number construction): weights 5,4,3,2,7,6,5,4,3,2 left to right; "
    "r = sum mod 11; check = 0 if r <= 1 else 11 - r"
)
"""Human-readable statement of the assumed rule, for docs and diagnostics."""


def _resident_remainder(body: str) -> int:
    return sum(int(d) * w for d, w in zip(body, _RESIDENT_WEIGHTS, strict=True)) % 11


def resident_check_digit(body: str) -> int:
    """Check digit of a 10-digit resident-code body (assumed rule, see module).

    >>> resident_check_digit("1234567890")
    3

    Raises :class:`ValueError` if ``body`` is not exactly 10 ASCII digits.
    """
    if len(body) != RESIDENT_CODE_LENGTH - 1 or not _is_ascii_digits(body):
        raise ValueError("resident code body must be 10 ASCII digits")
    r = _resident_remainder(body)
    # Remainders 0 and 1 share check digit 0 (11 - 1 = 10 does not fit in one
    # digit); this is why a single wrong digit is not always detected.
    return 0 if r <= 1 else 11 - r


def is_valid_resident_code(code: str) -> bool:
    """True if ``code`` is 11 ASCII digits whose last digit is the right check digit."""
    return (
        len(code) == RESIDENT_CODE_LENGTH
        and _is_ascii_digits(code)
        and resident_check_digit(code[:-1]) == int(code[-1])
    )


_SYSTEM_RANDOM = secrets.SystemRandom()


def new_resident_code(rng: random.Random | None = None) -> str:
    """A fresh random resident code: 10 random digits and the check digit.

    Draws from the operating system's CSPRNG unless ``rng`` is given; pass a
    seeded :class:`random.Random` only for reproducible tests, since a
    predictable code leaks nothing but invites guessing. Uniqueness is not
    checked here: that is the job of the code pools.
    """
    source = _SYSTEM_RANDOM if rng is None else rng
    body = f"{source.randrange(10 ** (RESIDENT_CODE_LENGTH - 1)):010d}"
    return body + str(resident_check_digit(body))


def check_resident_code(code: str, field: str = "resident_code") -> str:
    """Return ``code`` if it is a valid resident code, else raise InvalidArgument.

    The problem text never repeats the code itself: error messages end up in
    logs, and a resident code identifies a person.
    """
    if not _is_ascii_digits(code):
        raise InvalidArgument(field, _non_digit_problem(code, RESIDENT_CODE_LENGTH))
    if len(code) != RESIDENT_CODE_LENGTH:
        raise InvalidArgument(field, f"must be {RESIDENT_CODE_LENGTH} digits, got {len(code)}")
    expected = resident_check_digit(code[:-1])
    if int(code[-1]) != expected:
        raise InvalidArgument(field, f"check digit is wrong (expected {expected})")
    return code


# The local government check digit is published by the Ministry of Internal
# Affairs and Communications (総務省, 全国地方公共団体コード), so it is not an
# assumption: s = 6a+5b+4c+3d+2e; check = (11 - s mod 11) mod 10.
_LOCAL_GOVERNMENT_WEIGHTS: tuple[int, ...] = (6, 5, 4, 3, 2)


def local_government_check_digit(first5: str) -> int:
    """Check digit for the 5-digit JIS X 0402 form of a local government code.

    >>> local_government_check_digit("31201")
    1

    Raises :class:`ValueError` if ``first5`` is not exactly 5 ASCII digits.
    """
    if len(first5) != LOCAL_GOVERNMENT_CODE_LENGTH - 1 or not _is_ascii_digits(first5):
        raise ValueError("local government code without check digit must be 5 ASCII digits")
    s = sum(int(d) * w for d, w in zip(first5, _LOCAL_GOVERNMENT_WEIGHTS, strict=True))
    # Remainders 0 and 10 both give check digit 1 after the final mod 10.
    return (11 - s % 11) % 10


def with_check_digit(first5: str) -> str:
    """The 6-digit local government code for its 5-digit JIS X 0402 form.

    >>> with_check_digit("13104")
    '131041'
    """
    return first5 + str(local_government_check_digit(first5))


def is_valid_local_government_code(code: str) -> bool:
    """True if ``code`` is 6 ASCII digits, prefecture 01..47, right check digit."""
    return (
        len(code) == LOCAL_GOVERNMENT_CODE_LENGTH
        and _is_ascii_digits(code)
        and code[:2] in _PREFECTURE_SET
        and local_government_check_digit(code[:5]) == int(code[5])
    )


def check_local_government_code(code: str, field: str = "local_government_code") -> str:
    """Return ``code`` if it is a valid local government code, else raise InvalidArgument.

    Only the form of the code is checked, not whether such a body exists;
    :func:`jukinet.localgov.lookup` answers that.
    """
    if not _is_ascii_digits(code):
        raise InvalidArgument(field, _non_digit_problem(code, LOCAL_GOVERNMENT_CODE_LENGTH))
    if len(code) == LOCAL_GOVERNMENT_CODE_LENGTH - 1:
        # The 5-digit JIS form is what most people copy from postal data; name
        # the fix instead of only the length. Municipality codes are public, so
        # repeating one here leaks nothing.
        raise InvalidArgument(
            field,
            f"must be {LOCAL_GOVERNMENT_CODE_LENGTH} digits; {code} is the 5-digit "
            f"JIS X 0402 form without its check digit ({with_check_digit(code)})",
        )
    if len(code) != LOCAL_GOVERNMENT_CODE_LENGTH:
        raise InvalidArgument(
            field, f"must be {LOCAL_GOVERNMENT_CODE_LENGTH} digits, got {len(code)}"
        )
    if code[:2] not in _PREFECTURE_SET:
        raise InvalidArgument(field, f"prefecture must be 01..47, got {code[:2]}")
    expected = local_government_check_digit(code[:5])
    if int(code[5]) != expected:
        raise InvalidArgument(field, f"check digit is wrong (expected {expected})")
    return code


def prefecture_of(code: str) -> str:
    """The 2-digit prefecture code of a valid local government code.

    >>> prefecture_of("312011")
    '31'

    Raises :class:`jukinet.errors.InvalidArgument` if ``code`` is not valid, so
    that a typo cannot be filed under some other prefecture.
    """
    return check_local_government_code(code)[:2]


_PREFECTURE_SET = frozenset(PREFECTURE_CODES)


def _is_ascii_digits(s: str) -> bool:
    # str.isdigit alone accepts full-width and other Unicode digits.
    return bool(s) and all(ch in _ASCII_DIGITS for ch in s)


def _non_digit_problem(code: str, length: int) -> str:
    if not code:
        return f"must be {length} digits, got an empty string"
    if all(ch.isdigit() for ch in code):
        return (
            f"must be {length} ASCII digits 0-9; "
            "full-width or other Unicode digits are not accepted"
        )
    return f"must be {length} digits; it contains characters other than 0-9"
