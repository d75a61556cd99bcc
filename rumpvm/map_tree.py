"""The entry index of a vm_map: a treap augmented with the largest free gap.

Why a treap.  FreeBSD 5.2 keeps entries on a sorted list with a splay tree
for lookup and finds free space by walking the list (O(n)).  Later FreeBSD
augments each tree node with `max_free`, the largest gap after any entry of
its subtree, so `vm_map_findspace` prunes whole subtrees and runs in
O(log n).  We do the same on a treap (randomised priorities) instead of a
splay tree: the splay's amortised bound relies on restructuring during
lookups, which would make a read-only lookup (as /vm does) mutate the tree.
A treap is balanced in expectation with no restructuring on lookup and takes
about 150 lines of Python.

Model.  Nodes are map entries (anything with `start`, `end` and the node
fields below).  Entries do not overlap, so ordering by `start` also orders
`end`.  The gap after a node is `adj_free = next.start - node.end` (for the
last node: `map max - node.end`).  A header node at `[min, min)` is always in
the tree so the gap before the first real entry is the header's `adj_free`.
`prev`/`next` link the nodes in address order (a circular list through the
header, like `vm_map.header`).

Locking: none of its own; the owning map's lock (the kernel lock) covers it.
Invariants (checked by `check`): BST order, heap order of priorities,
`max_free` = max of own `adj_free` and children's, list order = tree order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import pairwise
from typing import Protocol


class Node(Protocol):
    start: int
    end: int
    left: Node | None
    right: Node | None
    prev: Node
    next: Node
    prio: float
    adj_free: int
    max_free: int


class TreeNode:
    """Fields the tree keeps on each entry; map entries inherit them."""

    __slots__ = ("start", "end", "left", "right", "prev", "next", "prio", "adj_free", "max_free")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.left: TreeNode | None = None
        self.right: TreeNode | None = None
        self.prev: TreeNode = self
        self.next: TreeNode = self
        self.prio = random.random()
        self.adj_free = 0
        self.max_free = 0


def _update(n: TreeNode) -> None:
    m = n.adj_free
    if n.left is not None and n.left.max_free > m:
        m = n.left.max_free
    if n.right is not None and n.right.max_free > m:
        m = n.right.max_free
    n.max_free = m


class EntryTree:
    """Address-ordered index of map entries with O(log n) lookup and findspace."""

    def __init__(self, header: TreeNode, max_addr: int) -> None:
        self.header = header
        self.max_addr = max_addr
        header.prev = header.next = header
        header.adj_free = header.max_free = max_addr - header.end
        self.root: TreeNode | None = header
        self.count = 0  # real entries, header excluded

    # -- queries --------------------------------------------------------

    def lookup(self, addr: int) -> TreeNode:
        """The entry containing `addr`, else the entry before it (maybe the header)."""
        n = self.root
        best = self.header
        while n is not None:
            if addr < n.start:
                n = n.left
            else:
                best = n
                if addr < n.end:
                    return n
                n = n.right
        return best

    def find_space(self, hint: int, length: int, align: int = 1) -> int | None:
        """Lowest address >= hint where `length` bytes fit in a gap (first fit)."""
        # The gap that contains the hint is special: only its part after the hint counts.
        before = self.lookup(hint)
        if before.end <= hint:
            start = _align_up(hint, align)
            if start + length <= before.end + before.adj_free:
                return start
        # Then the leftmost gap that starts at or after the hint and is big enough.
        n = self._first_fit(self.root, hint, length, align)
        return None if n is None else _align_up(n.end, align)

    def _first_fit(self, t: TreeNode | None, hint: int, length: int, align: int) -> TreeNode | None:
        # Subtrees whose max_free is too small are pruned; a failing descent
        # happens only along the search path of `hint` (and, with alignment,
        # at gaps that fit only unaligned), so this is O(log n) in practice.
        if t is None or t.max_free < length:
            return None
        if t.end >= hint:
            found = self._first_fit(t.left, hint, length, align)
            if found is not None:
                return found
            if t.adj_free >= length and _align_up(t.end, align) + length <= t.end + t.adj_free:
                return t
        return self._first_fit(t.right, hint, length, align)

    def __iter__(self) -> Iterator[TreeNode]:
        n = self.header.next
        while n is not self.header:
            yield n
            n = n.next

    # -- updates ----------------------------------------------------------

    def insert_after(self, prev: TreeNode, n: TreeNode) -> None:
        """Link `n` right after `prev` (which must be its predecessor by address)."""
        nxt = prev.next
        n.prev, n.next = prev, nxt
        prev.next = nxt.prev = n
        n.adj_free = (self.max_addr if nxt is self.header else nxt.start) - n.end
        n.left = n.right = None
        n.max_free = n.adj_free
        self.root = self._insert(self.root, n)
        self.count += 1
        self.gap_changed(prev)

    def _insert(self, t: TreeNode | None, n: TreeNode) -> TreeNode:
        if t is None:
            return n
        if _before(n, t, self.header):
            t.left = self._insert(t.left, n)
            if t.left.prio > t.prio:
                t = self._rotate_right(t)
        else:
            t.right = self._insert(t.right, n)
            if t.right.prio > t.prio:
                t = self._rotate_left(t)
        _update(t)
        return t

    def build(self, nodes: list[TreeNode]) -> None:
        """Index `nodes` (sorted by address, not overlapping) in an empty
        tree in O(n) — fork builds a whole map at once: link them in order,
        then build the treap along its right spine (a Cartesian tree of the
        priorities) and compute max_free bottom-up."""
        assert self.count == 0, "build needs an empty tree"
        h = self.header
        order = [h, *nodes]
        for a, b in pairwise(order):
            a.next, b.prev = b, a
        order[-1].next, h.prev = h, order[-1]
        for n in order:
            n.left = n.right = None
            n.adj_free = (self.max_addr if n.next is h else n.next.start) - n.end
        spine: list[TreeNode] = []
        for n in order:
            last = None
            while spine and spine[-1].prio < n.prio:
                last = spine.pop()
            n.left = last
            if spine:
                spine[-1].right = n
            spine.append(n)
        self.root = spine[0]
        self.count = len(nodes)
        # Children before parents: reverse pre-order.
        pre: list[TreeNode] = []
        todo = [self.root]
        while todo:
            t = todo.pop()
            pre.append(t)
            if t.left is not None:
                todo.append(t.left)
            if t.right is not None:
                todo.append(t.right)
        for t in reversed(pre):
            _update(t)

    def clear(self) -> None:
        """Empty the tree in one step (a map torn down at exit), unlinking
        every entry."""
        h = self.header
        for n in list(self):
            n.left = n.right = None
            n.next = n.prev = n
        h.prev = h.next = h
        h.left = h.right = None
        h.adj_free = h.max_free = self.max_addr - h.end
        self.root = h
        self.count = 0

    def remove(self, n: TreeNode) -> None:
        """Unlink entry `n`; the gap after its predecessor grows."""
        prev = n.prev
        prev.next, n.next.prev = n.next, prev
        self.root = self._remove(self.root, n)
        self.count -= 1
        n.left = n.right = None
        n.next = n.prev = n  # marks it unlinked
        self.gap_changed(prev)

    def _remove(self, t: TreeNode | None, n: TreeNode) -> TreeNode | None:
        if t is None:
            raise KeyError("entry not in tree")
        if t is n:
            if t.left is None:
                return t.right
            if t.right is None:
                return t.left
            if t.left.prio > t.right.prio:
                t = self._rotate_right(t)
                t.right = self._remove(t.right, n)
            else:
                t = self._rotate_left(t)
                t.left = self._remove(t.left, n)
        elif _before(n, t, self.header):
            t.left = self._remove(t.left, n)
        else:
            t.right = self._remove(t.right, n)
        _update(t)
        return t

    def gap_changed(self, n: TreeNode) -> None:
        """Recompute `n.adj_free` after its end or its successor changed."""
        nxt = n.next
        n.adj_free = (self.max_addr if nxt is self.header else nxt.start) - n.end
        self._refresh_path(n)

    def bounds_changed(self, n: TreeNode) -> None:
        """`n.start`/`n.end` moved (within its neighbours): fix both gaps."""
        self.gap_changed(n.prev)
        self.gap_changed(n)

    def _refresh_path(self, n: TreeNode) -> None:
        # Walk root -> n, then recompute max_free bottom-up along the path.
        path = []
        t = self.root
        while t is not None:
            path.append(t)
            if t is n:
                break
            t = t.left if _before(n, t, self.header) else t.right
        for t in reversed(path):
            _update(t)

    @staticmethod
    def _rotate_right(t: TreeNode) -> TreeNode:
        left = t.left
        assert left is not None
        t.left = left.right
        left.right = t
        _update(t)
        _update(left)
        return left

    @staticmethod
    def _rotate_left(t: TreeNode) -> TreeNode:
        r = t.right
        assert r is not None
        t.right = r.left
        r.left = t
        _update(t)
        _update(r)
        return r

    # -- verification -------------------------------------------------------

    def check(self) -> list[str]:
        """Return a list of violated invariants (empty when the tree is sound)."""
        errors: list[str] = []
        inorder: list[TreeNode] = []

        def walk(t: TreeNode | None) -> int:
            if t is None:
                return -1
            lm = walk(t.left)
            inorder.append(t)
            rm = walk(t.right)
            for c in (t.left, t.right):
                if c is not None and c.prio > t.prio:
                    errors.append(f"heap order broken at {t.start:#x}")
            want = max(t.adj_free, lm, rm)
            if t.max_free != want:
                errors.append(f"max_free {t.max_free} != {want} at {t.start:#x}")
            return t.max_free

        walk(self.root)
        listed = [self.header, *self]
        if [id(x) for x in inorder] != [id(x) for x in listed]:
            errors.append("tree order differs from list order")
        for a, b in pairwise(listed):
            if b.start < a.end:
                errors.append(f"entries overlap: {a.start:#x}-{a.end:#x} and {b.start:#x}-{b.end:#x}")
        for n in listed:
            nxt = n.next
            want = (self.max_addr if nxt is self.header else nxt.start) - n.end
            if n.adj_free != want:
                errors.append(f"adj_free {n.adj_free} != {want} at {n.start:#x}")
        if len(listed) - 1 != self.count:
            errors.append(f"count {self.count} != {len(listed) - 1}")
        return errors


def _before(a: TreeNode, b: TreeNode, header: TreeNode) -> bool:
    """Tree order: the header first, then by start address."""
    if a is header:
        return b is not header
    if b is header:
        return False
    return a.start < b.start


def _align_up(x: int, align: int) -> int:
    return (x + align - 1) // align * align
