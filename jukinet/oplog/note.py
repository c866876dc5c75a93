r"""Signed notes, checkpoints and cosignatures in the formats of the transparency ecosystem.

Pure functions, no I/O, so that the tools that read Go's checksum database,
Sigstore's logs and the public witness network read ours:

- **signed note** (C2SP signed-note, Go's ``golang.org/x/mod/sumdb/note``): a
  UTF-8 text ending in a newline, a blank line, then lines
  ``— <key name> <base64(4-byte key ID || signature)>``. An Ed25519 key
  (signature type ``0x01``) has the key ID
  ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; its verifier key is
  ``<name>+<hex key ID>+<base64(0x01 || public key)>`` and its signer key
  ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``.
- **checkpoint** (C2SP tlog-checkpoint): the note text ``<origin>\n<tree
  size>\n<base64 root hash>\n`` and optional non-empty extension lines.
- **cosignature** (C2SP tlog-cosignature, ``cosignature/v1``, type ``0x04``):
  a witness signs ``cosignature/v1\ntime <unix seconds>\n`` followed by the
  checkpoint text with Ed25519; the signature is the 8-byte big-endian
  timestamp followed by the 64-byte signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jukinet.oplog.merkle import HASH_SIZE

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
_DASH = "\u2014"
_MAX_SIGNATURES = 100
_MAX_NOTE = 1 << 20
_COSIGNATURE_HEADER = "cosignature/v1\n"
_TIMESTAMP_LIMIT = (1 << 63) - 1
_KEY_ID = re.compile(r"[0-9a-f]{8}")


class NoteError(ValueError):
    """A note, key or signature that is malformed or does not verify."""


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """The 4-byte key ID of a key: SHA-256(name || newline || type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def check_key_name(name: str) -> None:
    """Raise :class:`NoteError` unless ``name`` may name a key (non-empty, no space, no plus)."""
    if not name or "+" in name or any(c.isspace() for c in name) or not name.isprintable():
        raise NoteError(f"{name!r} cannot name a key: it must be non-empty, without spaces or '+'")


@dataclass(frozen=True)
class Verifier:
    """A public key that checks note signatures of one name and type."""

    name: str
    sig_type: int
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        """The key ID that signature lines of this key carry."""
        return key_id(self.name, self.sig_type, self.public_key)

    @property
    def vkey(self) -> str:
        """The verifier key string ``<name>+<hex key ID>+<base64(type || public key)>``."""
        material = base64.b64encode(bytes([self.sig_type]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def parse_vkey(vkey: str) -> Verifier:
    """A verifier from its key string; Ed25519 (0x01) and cosignature/v1 (0x04) keys only."""
    parts = vkey.split("+", 2)  # the base64 key may hold a '+' itself
    if len(parts) != 3:
        raise NoteError("a verifier key is <name>+<key ID>+<key>")
    name, kid, material = parts
    check_key_name(name)
    raw = _b64(material, "the verifier key")
    if not _KEY_ID.fullmatch(kid) or len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
        raise NoteError("the verifier key is not an Ed25519 or cosignature/v1 key")
    verifier = Verifier(name, raw[0], raw[1:])
    if verifier.key_id.hex() != kid:
        raise NoteError("the verifier key's ID does not match its name and key")
    return verifier


@dataclass(frozen=True)
class Signer:
    """An Ed25519 private key that signs notes (type 0x01) or cosignatures (type 0x04)."""

    name: str
    sig_type: int
    seed: bytes

    def __post_init__(self) -> None:
        """Refuse a value that cannot be one."""
        check_key_name(self.name)
        if self.sig_type not in (ED25519, COSIGNATURE_V1) or len(self.seed) != 32:
            raise NoteError("a signer is a 32-byte Ed25519 seed of type 0x01 or 0x04")

    @classmethod
    def generate(cls, name: str, sig_type: int = ED25519) -> Signer:
        """A new random key."""
        key = Ed25519PrivateKey.generate()
        return cls(name, sig_type, key.private_bytes_raw())

    @property
    def verifier(self) -> Verifier:
        """The public half."""
        public = self._key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Verifier(self.name, self.sig_type, public)

    @property
    def skey(self) -> str:
        """The signer key string ``PRIVATE+KEY+<name>+<hex key ID>+<base64(type || seed)>``."""
        material = base64.b64encode(bytes([self.sig_type]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{material}"

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message``."""
        return self._key().sign(message)

    def _key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)


def parse_skey(skey: str) -> Signer:
    """A signer from its key string; the key ID must match the key."""
    parts = skey.split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise NoteError("a signer key is PRIVATE+KEY+<name>+<key ID>+<key>")
    name, kid, material = parts[2:]
    raw = _b64(material, "the signer key")
    if len(raw) != 33:
        raise NoteError("the signer key is not an Ed25519 key")
    signer = Signer(name, raw[0], raw[1:])
    if signer.verifier.key_id.hex() != kid:
        raise NoteError("the signer key's ID does not match its name and key")
    return signer


@dataclass(frozen=True)
class Signature:
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The line as it is written, newline included."""
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_DASH} {self.name} {blob}\n"


@dataclass(frozen=True)
class Note:
    """A note's text (with its final newline) and its signature lines."""

    text: str
    signatures: tuple[Signature, ...]

    def encode(self) -> str:
        """The note as it is stored and sent."""
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signature(self, signature: Signature) -> Note:
        """The note with one signature more (a line already present is not repeated)."""
        if signature in self.signatures:
            return self
        return Note(self.text, (*self.signatures, signature))

    def signature_of(self, verifier: Verifier) -> Signature | None:
        """The signature line of ``verifier``'s name and key ID, if there is one."""
        for s in self.signatures:
            if s.name == verifier.name and s.key_id == verifier.key_id:
                return s
        return None


def check_text(text: str) -> None:
    """Raise :class:`NoteError` unless ``text`` may be a note's text."""
    if not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    if any(c < " " and c != "\n" for c in text):
        raise NoteError("a note holds no control character but newline")


def sign_note(text: str, signer: Signer) -> Note:
    """``text`` signed with ``signer`` (an Ed25519 note signature)."""
    check_text(text)
    if signer.sig_type != ED25519:
        raise NoteError("a note is signed with an Ed25519 (0x01) key")
    sig = Signature(signer.name, signer.verifier.key_id, signer.sign(text.encode()))
    return Note(text, (sig,))


def parse_note(data: str) -> Note:
    """A note from its encoding; its signatures are not verified here."""
    if len(data.encode()) > _MAX_NOTE:
        raise NoteError("the note is too long")
    check_text(data)
    split = data.rfind("\n\n")
    if split < 0:
        raise NoteError("a note has a blank line between its text and its signatures")
    text, lines = data[: split + 1], data[split + 2 :].splitlines()
    if not lines or len(lines) > _MAX_SIGNATURES:
        raise NoteError(f"a note has 1 to {_MAX_SIGNATURES} signatures")
    return Note(text, tuple(_parse_signature(line) for line in lines))


def _parse_signature(line: str) -> Signature:
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != _DASH:
        raise NoteError("a signature line is '— <name> <signature>'")
    check_key_name(parts[1])
    raw = _b64(parts[2], "a signature")
    if len(raw) < 5:
        raise NoteError("a signature is a key ID and at least one byte")
    return Signature(parts[1], raw[:4], raw[4:])


def verify_note(note: Note, verifier: Verifier) -> None:
    """Raise :class:`NoteError` unless ``verifier`` (Ed25519, 0x01) signed the note's text."""
    sig = note.signature_of(verifier)
    if verifier.sig_type != ED25519:
        raise NoteError("a note's own signature is an Ed25519 (0x01) one")
    if sig is None:
        raise NoteError(f"the note is not signed by {verifier.name}")
    if not verifier.verify(note.text.encode(), sig.signature):
        raise NoteError(f"the signature of {verifier.name} does not verify")


@dataclass(frozen=True)
class Checkpoint:
    """The body of a checkpoint: origin, tree size, root hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a value that cannot be one."""
        if not self.origin or "\n" in self.origin:
            raise NoteError("a checkpoint's origin is one non-empty line")
        if self.size < 0 or len(self.root) != HASH_SIZE:
            raise NoteError("a checkpoint has a size of 0 or more and a 32-byte root")
        if any(not e or "\n" in e for e in self.extensions):
            raise NoteError("a checkpoint's extension lines are non-empty")

    def text(self) -> str:
        """The note text."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "".join(f"{line}\n" for line in (*lines, *self.extensions))


def parse_checkpoint(text: str) -> Checkpoint:
    """A checkpoint from a note's text."""
    check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("a checkpoint has an origin, a size and a root hash")
    origin, size, root = lines[:3]
    if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size):
        raise NoteError("a checkpoint's size is a decimal number without leading zeroes")
    raw = _b64(root, "the checkpoint's root hash")
    return Checkpoint(origin, int(size), raw, tuple(lines[3:]))


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: header, time line, then the checkpoint text."""
    check_text(checkpoint_text)
    if not 0 <= timestamp <= _TIMESTAMP_LIMIT:
        raise NoteError("a cosignature's time is 0 to 2^63-1")
    return f"{_COSIGNATURE_HEADER}time {timestamp}\n{checkpoint_text}".encode()


def cosign(checkpoint_text: str, witness: Signer, timestamp: int) -> Signature:
    """The witness's cosignature/v1 of a checkpoint at ``timestamp`` (POSIX seconds)."""
    if witness.sig_type != COSIGNATURE_V1:
        raise NoteError("a cosignature is made with a cosignature/v1 (0x04) key")
    sig = witness.sign(cosigned_message(checkpoint_text, timestamp))
    return Signature(witness.name, witness.verifier.key_id, struct.pack(">Q", timestamp) + sig)


def verify_cosignature(note: Note, witness: Verifier) -> int:
    """The time of ``witness``'s valid cosignature on the note; :class:`NoteError` if none."""
    if witness.sig_type != COSIGNATURE_V1:
        raise NoteError("a cosignature is checked with a cosignature/v1 (0x04) key")
    sig = note.signature_of(witness)
    if sig is None:
        raise NoteError(f"the checkpoint has no cosignature of {witness.name}")
    if len(sig.signature) != 8 + 64:
        raise NoteError("a cosignature is an 8-byte time and a 64-byte signature")
    (timestamp,) = struct.unpack(">Q", sig.signature[:8])
    if not witness.verify(cosigned_message(note.text, timestamp), sig.signature[8:]):
        raise NoteError(f"the cosignature of {witness.name} does not verify")
    return int(timestamp)


def cosigners(note: Note, witnesses: Iterable[Verifier]) -> Sequence[str]:
    """The names of the given witnesses whose cosignature on the note verifies."""
    names = []
    for w in witnesses:
        try:
            verify_cosignature(note, w)
        except NoteError:
            continue
        names.append(w.name)
    return names


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not base64") from None
