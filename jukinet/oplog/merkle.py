"""Merkle tree hashes, proofs and the append frontier of RFC 9162 (RFC 6962).

Pure functions, no I/O. Hashes are SHA-256:

- a leaf is ``SHA-256(0x00 || entry)``, an interior node
  ``SHA-256(0x01 || left || right)`` (RFC 9162 section 2.1.1), the empty tree
  ``SHA-256("")``;
- the tree of ``n`` leaves splits at ``k``, the largest power of two below
  ``n``: ``MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))``;
- inclusion and consistency proofs are generated as RFC 9162 sections
  2.1.3.1 and 2.1.4.1 define them and verified with the algorithms of
  sections 2.1.3.2 and 2.1.4.2.

A :class:`Frontier` holds the roots of the complete subtrees the leaves so
far make (one per bit set in the size, largest first): appending is
O(log n) and so is the root of the current size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof that does not prove what it is said to prove, or cannot be asked for."""


_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """The hash of a leaf holding ``entry``."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node over two child hashes."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n`` at least 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """The root of the tree over the given leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = split_point(len(leaves))
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of leaf ``index`` in the tree over ``leaves``."""
    if not 0 <= index < len(leaves):
        raise ProofError(f"leaf {index} is not in a tree of size {len(leaves)}")
    return _path(index, leaves)


def _path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = split_point(len(leaves))
    if m < k:
        return [*_path(m, leaves[:k]), root(leaves[k:])]
    return [*_path(m - k, leaves[k:]), root(leaves[:k])]


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]): shows the tree of ``old_size`` leaves is a prefix of this one."""
    if not 0 <= old_size <= len(leaves):
        raise ProofError(f"size {old_size} is not a prefix of a tree of size {len(leaves)}")
    if old_size in (0, len(leaves)):
        return []
    return _subproof(old_size, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = split_point(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Raise :class:`ProofError` unless ``proof`` shows ``leaf`` at ``index`` under the root."""
    if root_from_inclusion(index, size, leaf, proof) != expected_root:
        raise ProofError(f"leaf {index} is not in the tree of size {size} with that root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise :class:`ProofError` unless ``proof`` shows the old tree is a prefix of the new one.

    RFC 9162 section 2.1.4.2, with the cases it leaves to the caller: equal
    sizes need an empty proof and equal roots; size 0 is a prefix of any tree.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"size {old_size} cannot be a prefix of size {new_size}")
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofError("a proof between these sizes must be empty")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"two different roots for one size {old_size}")
        return
    fr, sr = _consistency_roots(old_size, new_size, old_root, proof)
    if fr != old_root or sr != new_root:
        raise ProofError(f"the tree of size {old_size} is not a prefix of that of size {new_size}")


def _consistency_roots(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    if not path:
        raise ProofError("an empty consistency proof between different sizes")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is deep")
    return fr, sr


@dataclass(frozen=True)
class Frontier:
    """The roots of the complete subtrees of a tree of ``size`` leaves, largest first."""

    size: int = 0
    hashes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a value that cannot be one."""
        if self.size < 0 or len(self.hashes) != self.size.bit_count():
            raise ValueError(f"a frontier of size {self.size} holds {self.size.bit_count()} hashes")
        if any(len(h) != HASH_SIZE for h in self.hashes):
            raise ValueError("a frontier hash is not 32 bytes")

    def append(self, leaf: bytes) -> Frontier:
        """The frontier after one more leaf: each pair of equal subtrees merges."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is not 32 bytes")
        stack = list(self.hashes)
        h, n = leaf, self.size
        while n & 1:
            h = _sha256(_NODE_PREFIX + stack.pop() + h).digest()
            n >>= 1
        stack.append(h)
        # Built from a valid frontier and a checked leaf: valid, so not checked again
        # (an append is on the path of every logged operation).
        grown = object.__new__(Frontier)
        object.__setattr__(grown, "size", self.size + 1)
        object.__setattr__(grown, "hashes", tuple(stack))
        return grown

    def root(self) -> bytes:
        """The root of the tree of the current size."""
        if not self.hashes:
            return EMPTY_ROOT
        hashes = self.hashes
        r = hashes[-1]
        for i in range(len(hashes) - 2, -1, -1):
            r = _sha256(_NODE_PREFIX + hashes[i] + r).digest()
        return r

    def to_bytes(self) -> bytes:
        """The hashes, concatenated (the size is stored beside them)."""
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Frontier:
        """A frontier from its size and :meth:`to_bytes`."""
        if len(data) != HASH_SIZE * size.bit_count():
            raise ValueError(f"a frontier of size {size} is {HASH_SIZE * size.bit_count()} bytes")
        hashes = tuple(data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE))
        return cls(size, hashes)
