"""The entry tree: lookup and first-fit findspace against a brute-force
oracle over random insert/remove sequences, and its own invariant check."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rumpvm.map_tree import EntryTree, TreeNode

MIN, MAX, P = 0x1000, 0x400000, 0x1000


def brute_first_fit(nodes, hint, length, align):
    cur, gaps = MIN, []
    for n in sorted(nodes, key=lambda n: n.start):
        gaps.append((cur, n.start))
        cur = n.end
    gaps.append((cur, MAX))
    for g0, g1 in gaps:
        start = -(-max(g0, hint) // align) * align
        if start + length <= g1:
            return start
    return None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 40), st.integers(0, MAX // P),
                          st.sampled_from([P, 4 * P, 16 * P])), min_size=1, max_size=120),
       st.integers(0, 2**32))
def test_findspace_and_lookup_match_brute_force(ops, seed):
    random.seed(seed)
    header = TreeNode(MIN, MIN)
    tree = EntryTree(header, MAX)
    nodes = []
    for r, npages, hintpage, align in ops:
        if r < 0.7 or not nodes:
            length, hint = npages * P, hintpage * P
            got = tree.find_space(hint, length, align)
            assert got == brute_first_fit(nodes, hint, length, align)
            if got is not None:
                n = TreeNode(got, got + length)
                tree.insert_after(tree.lookup(got), n)
                nodes.append(n)
        else:
            tree.remove(nodes.pop(int(r * 1000) % len(nodes)))
        assert tree.check() == []
        probe = hintpage * P + 7
        want = max((n for n in nodes if n.start <= probe), key=lambda n: n.start, default=header)
        assert tree.lookup(probe) is want
    assert [n.start for n in tree] == sorted(n.start for n in nodes)


def test_check_reports_corruption():
    header = TreeNode(MIN, MIN)
    tree = EntryTree(header, MAX)
    n = TreeNode(0x2000, 0x3000)
    tree.insert_after(header, n)
    assert tree.check() == []
    n.max_free = 1
    assert any("max_free" in e for e in tree.check())


def test_remove_unknown_node_raises():
    tree = EntryTree(TreeNode(MIN, MIN), MAX)
    with pytest.raises(KeyError):
        tree.remove(TreeNode(0x5000, 0x6000))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(1, 8)), max_size=80),
       st.integers(0, 2**32))
def test_build_and_clear_agree_with_one_by_one_inserts(layout, seed):
    """fork builds a map in one O(n) step and exit clears it in one: the
    result must be the same index that inserts one by one would give."""
    random.seed(seed)
    tree = EntryTree(TreeNode(MIN, MIN), MAX)
    nodes, cur = [], MIN
    for gap, npages in layout:
        start = cur + gap * P
        if start + npages * P > MAX:
            break
        nodes.append(TreeNode(start, start + npages * P))
        cur = start + npages * P
    tree.build(nodes)
    assert tree.check() == []
    assert list(tree) == nodes and tree.count == len(nodes)
    for n in nodes:
        assert tree.lookup(n.start) is n and tree.lookup(n.end - 1) is n
    for length in (P, 3 * P, 9 * P):
        assert tree.find_space(MIN, length) == brute_first_fit(nodes, MIN, length, 1)
    tree.clear()
    assert tree.check() == [] and list(tree) == [] and tree.count == 0
    assert tree.find_space(MIN, MAX - MIN) == MIN
