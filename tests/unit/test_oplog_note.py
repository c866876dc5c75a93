"""Signed notes, checkpoints and cosignatures: Go's published note vectors, the C2SP specs."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jukinet.oplog import note
from jukinet.oplog.note import Checkpoint, NoteError

# golang.org/x/mod/sumdb/note's documented example key and note.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngot"
    "pRZb6KE6RyyBwJnAM=\n"
)


def test_go_keys_parse_and_print_back_byte_for_byte() -> None:
    signer = note.parse_skey(GO_SKEY)
    assert signer.skey == GO_SKEY
    assert signer.verifier.vkey == GO_VKEY
    assert note.parse_vkey(GO_VKEY) == signer.verifier
    assert signer.verifier.key_id.hex() == "c74f20a3"


def test_signing_go_text_gives_go_signature() -> None:
    signed = note.sign_note(GO_TEXT, note.parse_skey(GO_SKEY))
    assert signed.encode() == GO_TEXT + "\n" + GO_SIG
    parsed = note.parse_note(GO_TEXT + "\n" + GO_SIG)
    note.verify_note(parsed, note.parse_vkey(GO_VKEY))


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong key ID
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case ID
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a3+!!!!",
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        note.parse_vkey(vkey)


def test_a_changed_text_or_an_unknown_key_does_not_verify() -> None:
    parsed = note.parse_note(GO_TEXT.replace("answer", "Answer") + "\n" + GO_SIG)
    with pytest.raises(NoteError, match="does not verify"):
        note.verify_note(parsed, note.parse_vkey(GO_VKEY))
    other = note.Signer.generate("PeterNeumann").verifier
    with pytest.raises(NoteError, match="not signed by"):
        note.verify_note(note.parse_note(GO_TEXT + "\n" + GO_SIG), other)


@pytest.mark.parametrize(
    "data",
    [
        GO_TEXT + GO_SIG,  # no blank line
        GO_TEXT + "\n",  # no signature
        GO_TEXT + "\n" + GO_SIG.replace("\u2014", "-"),
        "a\tb\n\n" + GO_SIG,  # a control character
        GO_TEXT + "\n" + GO_SIG.rstrip("\n"),
    ],
)
def test_malformed_notes_are_refused(data: str) -> None:
    with pytest.raises(NoteError):
        note.parse_note(data)


def test_checkpoint_body_follows_tlog_checkpoint() -> None:
    root = hashlib.sha256(b"x").digest()
    cp = Checkpoint("example.com/log", 20852163, root, ("ext line",))
    text = cp.text()
    assert text == f"example.com/log\n20852163\n{base64.b64encode(root).decode()}\next line\n"
    assert note.parse_checkpoint(text) == cp
    empty = Checkpoint("example.com/log", 0, hashlib.sha256(b"").digest())
    assert empty.text().split("\n")[1] == "0"


@pytest.mark.parametrize(
    "text",
    [
        "o\n012\nAAAA\n",  # leading zero
        "o\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "o\n1\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n",  # an empty extension line
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        note.parse_checkpoint(text)


def test_cosignature_is_the_c2sp_cosignature_v1() -> None:
    log = note.Signer.generate("example.com/log")
    witness = note.Signer.generate("witness.example.com/w1", note.COSIGNATURE_V1)
    signed = note.sign_note(Checkpoint("example.com/log", 5, bytes(32)).text(), log)
    cosig = note.cosign(signed.text, witness, 1679315147)
    cosigned = note.parse_note(signed.with_signature(cosig).encode())
    assert note.verify_cosignature(cosigned, witness.verifier) == 1679315147
    # The standard algorithm, written out: key ID with type 0x04, then
    # timestamp || Ed25519 over "cosignature/v1\ntime <t>\n" + body.
    public = witness.verifier.public_key
    kid = hashlib.sha256(b"witness.example.com/w1\n\x04" + public).digest()[:4]
    line = cosigned.encode().splitlines()[-1]
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == kid
    assert struct.unpack(">Q", raw[4:12]) == (1679315147,)
    message = b"cosignature/v1\ntime 1679315147\n" + signed.text.encode()
    Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], message)
    assert note.parse_vkey(witness.verifier.vkey) == witness.verifier
    note.verify_note(cosigned, log.verifier)  # the log's own signature still verifies


def test_a_cosignature_over_another_body_or_time_does_not_verify() -> None:
    witness = note.Signer.generate("w", note.COSIGNATURE_V1)
    text = Checkpoint("example.com/log", 5, bytes(32)).text()
    cosig = note.cosign(text, witness, 100)
    other = Checkpoint("example.com/log", 6, bytes(32)).text()
    with pytest.raises(NoteError, match="does not verify"):
        note.verify_cosignature(note.Note(other, (cosig,)), witness.verifier)
    forged_time = note.Signature(
        cosig.name, cosig.key_id, struct.pack(">Q", 101) + cosig.signature[8:]
    )
    with pytest.raises(NoteError, match="does not verify"):
        note.verify_cosignature(note.Note(text, (forged_time,)), witness.verifier)
    assert note.cosigners(note.Note(text, (cosig,)), [witness.verifier]) == ["w"]


def test_keys_of_the_wrong_type_are_refused_for_each_use() -> None:
    log = note.Signer.generate("example.com/log")
    with pytest.raises(NoteError):
        note.cosign("a\n", log, 1)
    witness = note.Signer.generate("w", note.COSIGNATURE_V1)
    with pytest.raises(NoteError):
        note.sign_note("a\n", witness)
    with pytest.raises(NoteError):
        note.Signer("bad name", note.ED25519, bytes(32))
