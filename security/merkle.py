"""RFC 9162 Merkle trees: hashing, tree heads, and the nodes inclusion and consistency proofs need.

This is the log's side: building the tree over audit entries and producing proofs. The checking
side (verifying proofs) lives in `security.verify_standalone`, a separate implementation on
purpose: the offline verifier must not trust this code, and the tests cross-check the two.

Vocabulary (RFC 9162 section 2.1):
- a *leaf hash* is SHA-256(0x00 || entry bytes), a *node hash* SHA-256(0x01 || left || right);
- MTH(D[n]) splits at k, the largest power of two smaller than n, so the left subtree is always
  perfect (its size a power of two) and the tree of any size is a row of perfect subtrees;
- a *piece* (level, index) is the perfect subtree over leaves [index * 2**level, (index + 1) *
  2**level). Every hash a proof needs is MTH over a range [start, end), and every such range is
  a row of pieces (`pieces`), so a proof is known once its pieces are;
- a `Frontier` is the row of pieces a tree of some size consists of: O(log n) hashes that give
  the root and grow by one leaf at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Piece = tuple[int, int]  # (level, index): the perfect subtree over [index << level, (index + 1) << level)
Range = tuple[int, int]  # leaves [start, end)
NodeHook = Callable[[int, int, bytes], None]


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split(n: int) -> int:
    """k: the largest power of two smaller than n (n >= 2)."""
    if n < 2:
        raise ValueError(f"a tree of size {n} does not split")
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The perfect subtrees (largest first) that make up the tree of the first `size` leaves.

    `append` adds one leaf and reports every node it completes to `on_node`, which is how a
    single pass over the leaves collects the nodes of many proofs."""

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count() \
                or any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError(f"not the frontier of a tree of size {size}")
        self.size = size
        self._hashes = list(hashes)

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def append(self, leaf: bytes, on_node: NodeHook | None = None) -> None:
        index, level, node, below = self.size, 0, leaf, self.size
        if on_node is not None:
            on_node(0, index, node)
        while below & 1:  # the last subtree has the size of the new one: they merge
            node = node_hash(self._hashes.pop(), node)
            level, index, below = level + 1, index >> 1, below >> 1
            if on_node is not None:
                on_node(level, index, node)
        self._hashes.append(node)
        self.size += 1

    def root(self) -> bytes:
        """MTH of the first `size` leaves: the subtrees folded from the right."""
        if not self._hashes:
            return EMPTY_ROOT
        node = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            node = node_hash(left, node)
        return node

    def pieces(self) -> dict[Piece, bytes]:
        """The frontier's subtrees by piece, for proofs that need them."""
        found: dict[Piece, bytes] = {}
        start = 0
        for level, node in zip(_levels(self.size), self._hashes, strict=True):
            found[(level, start >> level)] = node
            start += 1 << level
        return found


def _levels(size: int) -> list[int]:
    return [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]


def root(leaves: Iterable[bytes]) -> bytes:
    """MTH over leaf hashes."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges whose MTH make up PATH(index, D[size]), in proof order (leaf side first)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = split(end - start)
        if index < start + k:
            path.append((start + k, end))
            end = start + k
        else:
            path.append((start, start + k))
            start += k
    path.reverse()
    return path


def consistency_ranges(old: int, new: int) -> list[Range]:
    """The ranges whose MTH make up PROOF(old, D[new]) (RFC 9162 2.1.4.1), in proof order."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    proof: list[Range] = []
    start, end, m, whole = 0, new, old, True
    while True:
        n = end - start
        if m == n:
            if not whole:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
                proof.append((start, end))
            break
        k = split(n)
        if m <= k:
            proof.append((start + k, end))
            end = start + k
        else:
            proof.append((start, start + k))
            start, m, whole = start + k, m - k, False
    proof.reverse()
    return proof


def pieces(start: int, end: int) -> list[Piece]:
    """The perfect subtrees, left to right, whose fold from the right is MTH(D[start:end]).

    Holds for the ranges RFC 9162's recursion produces, whose start is a multiple of the
    smallest power of two not below their size; any other range is refused."""
    n = end - start
    if n < 1 or start < 0 or start % (1 << (n - 1).bit_length()):
        raise ValueError(f"[{start}, {end}) is not a subtree of an RFC 9162 tree")
    found: list[Piece] = []
    for level in _levels(n):
        found.append((level, start >> level))
        start += 1 << level
    return found


def fold(hashes: Sequence[bytes]) -> bytes:
    node = hashes[-1]
    for left in reversed(hashes[:-1]):
        node = node_hash(left, node)
    return node


class NodeCollector:
    """Remembers the nodes some proofs need while a `Frontier` walks past them.

    `want` the ranges of the proofs first, pass `collect` as the frontier's `on_node`, then ask
    for `proof(ranges)` once the walk has passed the end of every range."""

    def __init__(self) -> None:
        self._nodes: dict[Piece, bytes | None] = {}

    def want(self, ranges: Iterable[Range], *, known: Mapping[Piece, bytes] | None = None) -> None:
        for start, end in ranges:
            for piece in pieces(start, end):
                if known is None or piece not in known:
                    self._nodes.setdefault(piece, None)

    def collect(self, level: int, index: int, node: bytes) -> None:
        if (level, index) in self._nodes:
            self._nodes[(level, index)] = node

    def proof(self, ranges: Iterable[Range], *,
              known: Mapping[Piece, bytes] | None = None) -> list[bytes]:
        result = []
        for start, end in ranges:
            hashes = []
            for piece in pieces(start, end):
                node = (known or {}).get(piece) or self._nodes.get(piece)
                if node is None:
                    raise LookupError(f"node {piece} was not collected")
                hashes.append(node)
            result.append(fold(hashes))
        return result

    def forget(self) -> None:
        self._nodes.clear()


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[size]) from leaf hashes held in memory (tests and small trees)."""
    size = len(leaves) if size is None else size
    return _proof_in_memory(leaves[:size], inclusion_ranges(index, size))


def consistency_proof(leaves: Sequence[bytes], old: int, new: int | None = None) -> list[bytes]:
    """PROOF(old, D[new]) from leaf hashes held in memory (tests and small trees)."""
    new = len(leaves) if new is None else new
    return _proof_in_memory(leaves[:new], consistency_ranges(old, new))


def _proof_in_memory(leaves: Sequence[bytes], ranges: list[Range]) -> list[bytes]:
    collector = NodeCollector()
    collector.want(ranges)
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf, collector.collect)
    return collector.proof(ranges)
