"""RFC 9162 tree hashes and proofs: published vectors, and a naive reference by hypothesis."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jukinet.oplog import merkle
from jukinet.oplog.merkle import Frontier, ProofError

# The certificate-transparency reference test data (RFC 6962 trees of 1 to 8 leaves).
LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243"]] + [
    bytes.fromhex("5051525354555657"),
    bytes.fromhex("606162636465666768696a6b6c6d6e6f"),
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CONSISTENCY = {
    (1, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}  # fmt: skip
INCLUSION = {
    (0, 8): CONSISTENCY[(1, 8)],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}  # fmt: skip


def hashes() -> list[bytes]:
    return [merkle.leaf_hash(d) for d in LEAVES]


def mth(data: list[bytes]) -> bytes:
    """The MTH definition of RFC 9162 section 2.1.1, over the entries themselves."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < len(data):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(data[:k]) + mth(data[k:])).digest()


def test_empty_tree_root_is_the_hash_of_nothing() -> None:
    assert merkle.root([]) == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert Frontier().root() == merkle.EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_reference_vectors(size: int) -> None:
    assert merkle.root(hashes()[:size]).hex() == ROOTS[size - 1]
    frontier = Frontier()
    for h in hashes()[:size]:
        frontier = frontier.append(h)
    assert frontier.root().hex() == ROOTS[size - 1]


@pytest.mark.parametrize(("old", "new"), sorted(CONSISTENCY))
def test_consistency_proofs_match_the_reference_vectors(old: int, new: int) -> None:
    proof = merkle.consistency_proof(old, hashes()[:new])
    assert [p.hex() for p in proof] == CONSISTENCY[(old, new)]
    old_root, new_root = bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1])
    merkle.verify_consistency(old, new, old_root, new_root, proof)


@pytest.mark.parametrize(("index", "size"), sorted(INCLUSION))
def test_inclusion_proofs_match_the_reference_vectors(index: int, size: int) -> None:
    proof = merkle.inclusion_proof(index, hashes()[:size])
    assert [p.hex() for p in proof] == INCLUSION[(index, size)]
    merkle.verify_inclusion(index, size, hashes()[index], proof, bytes.fromhex(ROOTS[size - 1]))


trees = st.lists(st.binary(max_size=8), min_size=1, max_size=70, unique=True)


@given(trees)
def test_root_and_frontier_equal_the_definition(data: list[bytes]) -> None:
    leaves = [merkle.leaf_hash(d) for d in data]
    frontier = Frontier()
    for leaf in leaves:
        frontier = frontier.append(leaf)
    assert merkle.root(leaves) == mth(data) == frontier.root()
    assert Frontier.from_bytes(frontier.size, frontier.to_bytes()) == frontier


@given(trees, st.data())
def test_every_inclusion_proof_verifies_and_a_wrong_leaf_does_not(
    data: list[bytes], draw: st.DataObject
) -> None:
    leaves = [merkle.leaf_hash(d) for d in data]
    index = draw.draw(st.integers(0, len(leaves) - 1))
    proof = merkle.inclusion_proof(index, leaves)
    merkle.verify_inclusion(index, len(leaves), leaves[index], proof, mth(data))
    with pytest.raises(ProofError):
        merkle.verify_inclusion(index, len(leaves), merkle.leaf_hash(b"x" * 9), proof, mth(data))
    if len(leaves) > 1:
        other = (index + 1) % len(leaves)
        with pytest.raises(ProofError):
            merkle.verify_inclusion(other, len(leaves), leaves[index], proof, mth(data))


@given(trees, st.data())
def test_every_consistency_proof_verifies_and_a_changed_prefix_does_not(
    data: list[bytes], draw: st.DataObject
) -> None:
    new = len(data)
    old = draw.draw(st.integers(0, new))
    proof = merkle.consistency_proof(old, [merkle.leaf_hash(d) for d in data])
    merkle.verify_consistency(old, new, mth(data[:old]), mth(data), proof)
    if old > 0:
        changed = [*data[: old - 1], data[old - 1] + b"!"]
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, mth(changed), mth(data), proof)
    if 0 < old < new:
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, mth(data[:old]), mth(data), proof[:-1])
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, mth(data[:old]), mth(data), [*proof, proof[0]])


def test_proofs_out_of_range_are_refused() -> None:
    with pytest.raises(ProofError):
        merkle.inclusion_proof(3, hashes()[:3])
    with pytest.raises(ProofError):
        merkle.consistency_proof(4, hashes()[:3])
    with pytest.raises(ProofError):
        merkle.verify_consistency(3, 2, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="two different roots"):
        merkle.verify_consistency(2, 2, bytes(32), merkle.EMPTY_ROOT, [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(2, 2, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [bytes(32)])


def test_a_frontier_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="holds 2 hashes"):
        Frontier(3, (bytes(32),))
    with pytest.raises(ValueError, match="64 bytes"):
        Frontier.from_bytes(3, bytes(32))
