"""One-pass LRU miss-ratio curves (Mattson's stack distances).

LRU is a stack algorithm: a cache of c pages holds the c most recently used
pages, so an access hits exactly when its page's stack distance — the
number of distinct pages used since that page's previous use, itself
included — is at most c.  One pass over a page sequence that records the
histogram of stack distances (and the first uses, which miss at any
capacity) therefore gives LRU's misses for every capacity at once:

    misses(c) = cold + #{accesses with distance > c}

The distance of an access is counted with a Fenwick tree over access times
holding a 1 at each page's most recent use: the distance is the number of
ones after the page's previous use, plus one.  Each access is O(log w) for
a tree of w times.  When the times run out, the tree is compacted — the
pages' last uses renumbered 0..d-1 in order (d distinct pages so far), the
tree rebuilt in O(w) — and doubled if more than half of it is then in
use, so a stream of any length needs O(d) memory and O(log d) amortised
time per access.

No lock: an MRC is immutable once built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["MRC", "lru_mrc"]

INITIAL_WINDOW = 1 << 16  # access times the tree starts with


@dataclass(frozen=True)
class MRC:
    """LRU's misses at every capacity, from a stack-distance histogram.

    `hist[d]` is the number of re-uses at stack distance d (d >= 1; hist[0]
    is 0); `cold` the first uses (the distinct pages); `accesses` all of
    them."""

    accesses: int
    cold: int
    hist: tuple[int, ...]
    _beyond: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # _beyond[c] = re-uses at distance > c, for c < len(hist).
        beyond = [0] * max(1, len(self.hist))
        run = 0
        for d in range(len(self.hist) - 1, 0, -1):
            beyond[d] = run
            run += self.hist[d]
        beyond[0] = run
        object.__setattr__(self, "_beyond", tuple(beyond))

    def misses(self, capacity: int) -> int:
        """Misses of an LRU cache of `capacity` pages (0: every access)."""
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if capacity >= len(self._beyond):
            return self.cold
        return self.cold + self._beyond[capacity]

    def miss_ratio(self, capacity: int) -> float:
        """misses(capacity) / accesses (0.0 for an empty sequence)."""
        misses = self.misses(capacity)
        return misses / self.accesses if self.accesses else 0.0

    @property
    def max_distance(self) -> int:
        """The largest stack distance seen: from this capacity on, only
        cold misses remain."""
        return len(self.hist) - 1 if len(self.hist) > 1 else 0

    def curve(self, capacities: Sequence[int] | None = None) -> list[tuple[int, float]]:
        """(capacity, miss ratio) for `capacities` (default 1..max_distance)."""
        caps = range(1, self.max_distance + 1) if capacities is None else capacities
        return [(c, self.miss_ratio(c)) for c in caps]


def lru_mrc(pages: Iterable[int], *, window: int = INITIAL_WINDOW) -> MRC:
    """The LRU miss-ratio curve of a page sequence (any iterable of ints,
    consumed once).  `window` is the tree's initial size in access times;
    it only trades memory for compactions."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    size = window
    tree = [0] * (size + 1)  # Fenwick tree, 1-based; position t+1 is time t
    last: dict[int, int] = {}  # page -> time of its most recent use
    hist = [0]
    now = 0  # the next time in the tree
    accesses = 0
    for page in pages:
        if now == size:
            size, tree = _compact(last, size)
            now = len(last)
        prev = last.get(page)
        if prev is not None:
            # Ones in (prev, now): prefix(now) - prefix(prev + 1).
            dist = 1
            i = now
            while i:
                dist += tree[i]
                i &= i - 1
            i = prev + 1
            while i:
                dist -= tree[i]
                i &= i - 1
            if dist >= len(hist):
                hist.extend([0] * (dist + 1 - len(hist)))
            hist[dist] += 1
            i = prev + 1
            while i <= size:
                tree[i] -= 1
                i += i & -i
        last[page] = now
        i = now + 1
        while i <= size:
            tree[i] += 1
            i += i & -i
        now += 1
        accesses += 1
    return MRC(accesses, len(last), tuple(hist))


def _compact(last: dict[int, int], size: int) -> tuple[int, list[int]]:
    """Renumber the pages' last uses 0..d-1 in time order (in place) and
    return the new tree size and a tree with ones at 0..d-1: the size
    doubles while the live times would fill more than half of it."""
    d = len(last)
    while 2 * d > size:
        size *= 2
    by_time: list[int | None] = [None] * (max(last.values(), default=-1) + 1)
    for page, t in last.items():
        by_time[t] = page
    n = 0
    for live in by_time:
        if live is not None:
            last[live] = n
            n += 1
    # Linear-time Fenwick build over ones at positions 1..d.
    tree = [0] * (size + 1)
    for i in range(1, size + 1):
        if i <= d:
            tree[i] += 1
        j = i + (i & -i)
        if j <= size:
            tree[j] += tree[i]
    return size, tree
