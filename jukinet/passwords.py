"""Operator passwords: the strength rule and Argon2id hashing (argon2-cffi).

The password is the operator's second factor, next to the IC card
(:mod:`jukinet.card`); it is checked on the server, never on the terminal.

Strength rule (:func:`password_problem`), on the password as normalised
below:

- at least :data:`MIN_LENGTH` (12) characters and at most :data:`MAX_LENGTH`
  (128: Argon2 takes any length, a request should not);
- characters of at least two of four classes: lower-case letters, upper-case
  letters, digits, anything else (symbols, spaces, kana, kanji), so that
  neither ``aaaaaaaaaaaaaa`` nor a long string of digits passes;
- not one character repeated throughout, and not containing the operator's
  own id.

Length matters more than composition (NIST SP 800-63B), hence the rule is a
floor and not a recipe; the card is the stronger factor.

Passwords are normalised to NFKC before checking and hashing, so that the
same password typed with full-width or half-width characters (an input
method's choice, not the operator's) is the same password.

Hashes are Argon2id with the parameters of RFC 9106's second recommended
option (t=3, 64 MiB, p=4; about 0.15 s on one core), written explicitly in
:data:`HASHER` so that a change of the library's defaults changes nothing
here. A hash made with other parameters still verifies, and
:func:`needs_rehash` tells the caller to replace it on the next login.

Hashing and verifying are CPU-bound and synchronous: async callers run them
in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import unicodedata

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12
MAX_LENGTH = 128
MIN_CLASSES = 2

HASHER = PasswordHasher(
    time_cost=3,
    memory_cost=64 * 1024,  # KiB
    parallelism=4,
    hash_len=32,
    salt_len=16,
    encoding="utf-8",
    type=Type.ID,
)
"""The Argon2id hasher of every operator password (unless a node's settings give others)."""


def make_hasher(*, time_cost: int = 3, memory_kib: int = 64 * 1024) -> PasswordHasher:
    """An Argon2id hasher like :data:`HASHER` with other cost parameters (a node's settings)."""
    if time_cost == HASHER.time_cost and memory_kib == HASHER.memory_cost:
        return HASHER
    return PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory_kib,
        parallelism=HASHER.parallelism,
        hash_len=HASHER.hash_len,
        salt_len=HASHER.salt_len,
        encoding="utf-8",
        type=Type.ID,
    )


def normalise(password: str) -> str:
    """The form a password is checked and hashed in (NFKC)."""
    return unicodedata.normalize("NFKC", password)


def _classes(password: str) -> int:
    lower = any(c.isascii() and c.islower() for c in password)
    upper = any(c.isascii() and c.isupper() for c in password)
    digit = any(c.isascii() and c.isdigit() for c in password)
    other = any(not (c.isascii() and c.isalnum()) for c in password)
    return sum((lower, upper, digit, other))


def password_problem(password: str, *, operator_id: str = "") -> str | None:
    """Why ``password`` is too weak for operator ``operator_id``, or None if it will do."""
    text = normalise(password)
    if len(text) < MIN_LENGTH:
        return f"a password has at least {MIN_LENGTH} characters (this one has {len(text)})"
    if len(text) > MAX_LENGTH:
        return f"a password has at most {MAX_LENGTH} characters"
    if any(unicodedata.category(c).startswith("C") for c in text):
        return "a password may not contain control characters"
    if len(set(text)) == 1:
        return "a password is not one character repeated"
    if _classes(text) < MIN_CLASSES:
        return (
            "a password mixes at least two of: lower-case letters, upper-case letters, "
            "digits, other characters"
        )
    if len(operator_id) >= 3 and operator_id.lower() in text.lower():
        return "a password may not contain the operator's id"
    return None


def hash_password(password: str, hasher: PasswordHasher = HASHER) -> str:
    """The Argon2id hash (PHC string, salt included) of ``password``."""
    return hasher.hash(normalise(password))


def verify_password(stored_hash: str, password: str, hasher: PasswordHasher = HASHER) -> bool:
    """True if ``password`` matches ``stored_hash``; False if not or if the hash is unreadable."""
    try:
        return hasher.verify(stored_hash, normalise(password))
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str, hasher: PasswordHasher = HASHER) -> bool:
    """True if ``stored_hash`` was made with other parameters than ``hasher``'s."""
    try:
        return hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True
