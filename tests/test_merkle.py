"""RFC 9162 Merkle trees: the log's side (security.merkle) against published vectors, against a
naive transcription of the RFC's recursive definitions, and against the independent checking
side (security.verify_standalone), including every way a proof can be corrupted."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security import merkle
from security import verify_standalone as v

# The test vectors of RFC 6962 / RFC 9162 implementations (Certificate Transparency's reference
# tree, as published in transparency-dev/merkle testonly/constants.go).
LEAF_INPUTS = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
NODES = [[bytes.fromhex(h) for h in level] for level in (
    ("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
     "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
     "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
     "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
     "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
     "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
     "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
     "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
     "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
     "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
     "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",),
)]
# (leaf index, tree size, proof) and (size1, size2, proof), same source.
INCLUSION = [
    (0, 8, [NODES[0][1], NODES[1][1], NODES[2][1]]),
    (5, 8, [NODES[0][4], NODES[1][3], NODES[2][0]]),
    (2, 3, [NODES[1][0]]),
    (1, 5, [NODES[0][0], NODES[1][1], NODES[0][4]]),
]
CONSISTENCY = [
    (1, 8, [NODES[0][1], NODES[1][1], NODES[2][1]]),
    (6, 8, [NODES[1][2], NODES[1][3], NODES[2][0]]),
    (2, 5, [NODES[1][1], NODES[0][4]]),
    (6, 7, [NODES[1][2], NODES[0][6], NODES[2][0]]),
]
LEAVES = [merkle.leaf_hash(data) for data in LEAF_INPUTS]


# -- a naive transcription of RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1 ----------------------------------

def naive_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:])).digest()


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return naive_path(m, leaves[:k]) + [naive_mth(leaves[k:])]
    return naive_path(m - k, leaves[k:]) + [naive_mth(leaves[:k])]


def naive_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [naive_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return naive_subproof(m, leaves[:k], whole) + [naive_mth(leaves[k:])]
    return naive_subproof(m - k, leaves[k:], False) + [naive_mth(leaves[:k])]


def many_leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"entry {i}".encode()) for i in range(n)]


# -- vectors -----------------------------------------------------------------------------------------

def test_roots_of_the_reference_tree() -> None:
    assert merkle.EMPTY_ROOT == ROOTS[0] == merkle.root([])
    frontier = merkle.Frontier()
    for size, leaf in enumerate(LEAVES, 1):
        frontier.append(leaf)
        assert frontier.root() == ROOTS[size] == merkle.root(LEAVES[:size]), size
        assert naive_mth(LEAVES[:size]) == ROOTS[size]
    # Both prefixes matter: the leaf and node hashes of the vectors.
    assert merkle.leaf_hash(b"") == ROOTS[1]
    assert merkle.node_hash(LEAVES[0], LEAVES[1]) == ROOTS[2]
    assert v.leaf_hash(b"") == ROOTS[1] and v.node_hash(LEAVES[0], LEAVES[1]) == ROOTS[2]


def test_every_node_of_the_reference_tree() -> None:
    seen: dict[tuple[int, int], bytes] = {}
    frontier = merkle.Frontier()
    for leaf in LEAVES:
        frontier.append(leaf, lambda level, index, node: seen.__setitem__((level, index), node))
    assert seen == {(level, index): node for level, nodes in enumerate(NODES)
                    for index, node in enumerate(nodes)}
    # The compact trees of transparency-dev's vectors, size by size.
    frontier = merkle.Frontier()
    for size, leaf in enumerate(LEAVES, 1):
        frontier.append(leaf)
        expected = [NODES[level][(size >> level) - 1] for level in range(3, -1, -1)
                    if size >> level & 1]
        assert list(frontier.hashes) == expected, size


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_vectors(index: int, size: int, proof: list[bytes]) -> None:
    assert merkle.inclusion_proof(LEAVES, index, size) == proof
    assert v.verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_vectors(old: int, new: int, proof: list[bytes]) -> None:
    assert merkle.consistency_proof(LEAVES, old, new) == proof
    assert v.verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


# -- every shape up to 40 leaves, against the naive definitions and corruptions -----------------

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def inclusion_corruptions(index: int, size: int, proof: list[bytes], root: bytes,
                          leaf: bytes) -> list[tuple[str, Callable[[], bool]]]:
    def check(i: int = index, n: int = size, p: list[bytes] = proof, r: bytes = root,
              lh: bytes = leaf) -> Callable[[], bool]:
        return lambda: v.verify_inclusion(lh, i, n, p, r)

    probes = [("index - 1", check(i=index - 1)), ("index + 1", check(i=index + 1)),
              ("index ^ 2", check(i=index ^ 2)), ("size * 2", check(n=size * 2)),
              ("size / 2", check(n=size // 2)), ("wrong leaf", check(lh=SOME_HASH)),
              ("empty root", check(r=merkle.EMPTY_ROOT)), ("other root", check(r=SOME_HASH)),
              ("trailing root", check(p=[*proof, root])), ("leading root", check(p=[root, *proof])),
              ("trailing garbage", check(p=[*proof, b""]))]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 8]) + proof[i][1:]
        probes.append((f"bit flipped in {i}", check(p=flipped)))
    if proof:
        probes.append(("component removed", check(p=proof[:-1])))
    if len(proof) > 1:
        probes.append(("component inserted", check(p=[proof[0], SOME_HASH, *proof[1:]])))
    return probes


def test_inclusion_proofs_for_every_leaf_of_every_size_up_to_40() -> None:
    leaves = many_leaves(40)
    for size in range(1, 41):
        tree = leaves[:size]
        root = naive_mth(tree)
        for index in range(size):
            proof = merkle.inclusion_proof(tree, index)
            assert proof == naive_path(index, tree), (index, size)
            assert v.verify_inclusion(tree[index], index, size, proof, root), (index, size)
            wrongly = [name for name, probe in
                       inclusion_corruptions(index, size, proof, root, tree[index]) if probe()]
            assert wrongly == [], (index, size, wrongly)


def test_consistency_proofs_for_every_pair_of_sizes_up_to_40() -> None:
    leaves = many_leaves(40)
    roots = [naive_mth(leaves[:n]) for n in range(41)]
    for new in range(1, 41):
        for old in range(1, new + 1):
            proof = merkle.consistency_proof(leaves, old, new)
            assert proof == naive_subproof(old, leaves[:new], True), (old, new)
            assert v.verify_consistency(old, new, roots[old], roots[new], proof), (old, new)
            if old == new:
                assert proof == []
                continue
            bad = [
                ("old - 1", old - 1, new, roots[old], roots[new], proof),
                ("old + 1", old + 1, new, roots[old], roots[new], proof),
                ("old ^ 2", old ^ 2, new, roots[old], roots[new], proof),
                ("new * 2", old, new * 2, roots[old], roots[new], proof),
                ("new / 2", old, new // 2, roots[old], roots[new], proof),
                ("wrong old root", old, new, SOME_HASH, roots[new], proof),
                ("wrong new root", old, new, roots[old], SOME_HASH, proof),
                ("swapped roots", old, new, roots[new], roots[old], proof),
                ("empty proof", old, new, roots[old], roots[new], []),
                ("trailing old root", old, new, roots[old], roots[new], [*proof, roots[old]]),
                ("leading new root", old, new, roots[old], roots[new], [roots[new], *proof]),
                ("leading proof[0]", old, new, roots[old], roots[new], [proof[0], *proof]),
                ("truncated", old, new, roots[old], roots[new], proof[:-1]),
                ("backwards", new, old, roots[new], roots[old], proof),
            ]
            for i in range(len(proof)):
                flipped = list(proof)
                flipped[i] = bytes([proof[i][0] ^ 16]) + proof[i][1:]
                bad.append((f"bit flipped in {i}", old, new, roots[old], roots[new], flipped))
            wrongly = [name for name, size1, size2, root1, root2, path in bad
                       if v.verify_consistency(size1, size2, root1, root2, path)]
            assert wrongly == [], (old, new, wrongly)


def test_consistency_edge_cases() -> None:
    a, b = SOME_HASH, merkle.EMPTY_ROOT
    assert v.verify_consistency(0, 0, a, a, [])
    assert not v.verify_consistency(0, 0, a, b, [])
    assert v.verify_consistency(0, 5, a, b, [])  # every tree extends the empty one
    assert not v.verify_consistency(0, 5, a, b, [a])
    assert v.verify_consistency(3, 3, a, a, []) and not v.verify_consistency(3, 3, a, a, [a])
    assert not v.verify_consistency(3, 3, a, b, [])
    assert not v.verify_consistency(2, 1, a, b, [])  # time travel
    assert not v.verify_inclusion(a, 0, 0, [], a)
    assert not v.verify_inclusion(a, 1, 1, [], a)
    assert v.verify_inclusion(a, 0, 1, [], a) and not v.verify_inclusion(a, 0, 1, [], b)
    with pytest.raises(ValueError):
        merkle.consistency_ranges(0, 3)
    with pytest.raises(ValueError):
        merkle.consistency_ranges(4, 3)
    with pytest.raises(ValueError):
        merkle.inclusion_ranges(3, 3)


def test_consistency_proofs_from_a_walk_that_remembers_only_the_old_frontier() -> None:
    """How the export proves a chain of checkpoints in one pass: at the old size it keeps the
    frontier and asks for the nodes still to come; at the new size the proof is complete."""
    leaves = many_leaves(40)
    for old in range(1, 40):
        for new in range(old, 41):
            frontier, collector = merkle.Frontier(), merkle.NodeCollector()
            for leaf in leaves[:old]:
                frontier.append(leaf)
            known = frontier.pieces()
            ranges = merkle.consistency_ranges(old, new)
            collector.want(ranges, known=known)
            for leaf in leaves[old:new]:
                frontier.append(leaf, collector.collect)
            assert collector.proof(ranges, known=known) == \
                naive_subproof(old, leaves[:new], True), (old, new)


def test_frontier_and_pieces_refuse_what_is_not_a_tree() -> None:
    with pytest.raises(ValueError):
        merkle.Frontier(3, [SOME_HASH])  # a tree of 3 is two subtrees
    with pytest.raises(ValueError):
        merkle.Frontier(2, [b"short"])
    with pytest.raises(ValueError):
        merkle.pieces(1, 4)  # [1, 4) is no subtree
    with pytest.raises(ValueError):
        merkle.split(1)
    assert merkle.pieces(4, 7) == [(1, 2), (0, 6)]
    grown = merkle.Frontier()
    for leaf in LEAVES[:7]:
        grown.append(leaf)
    again = merkle.Frontier(grown.size, grown.hashes)
    again.append(LEAVES[7])
    assert again.root() == ROOTS[8]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=24), min_size=1, max_size=70), st.data())
def test_random_trees_agree_with_the_rfc(entries: list[bytes], data: st.DataObject) -> None:
    leaves = [merkle.leaf_hash(e) for e in entries]
    size = len(leaves)
    assert merkle.root(leaves) == naive_mth(leaves)
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(leaves, index)
    assert proof == naive_path(index, leaves)
    assert v.verify_inclusion(leaves[index], index, size, proof, naive_mth(leaves))
    old = data.draw(st.integers(1, size))
    proof = merkle.consistency_proof(leaves, old)
    assert v.verify_consistency(old, size, naive_mth(leaves[:old]), naive_mth(leaves), proof)
