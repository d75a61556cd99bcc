"""Page replacement policies behind one small interface, and their registry.

A policy decides the order in which the pagedaemon considers pages for
eviction; the daemon itself decides what to do with each candidate (free a
clean page, write a dirty one to swap, pass over a busy or wired one).

  clock   BSD two-queue second chance (default): the active queue feeds the
          inactive queue; a referenced inactive page is reactivated instead
          of evicted (pdreact), an unreferenced one is evicted.
  lru     exact LRU: every access moves the page to the tail of the active
          queue (per-access `touch` hook); victims come from the head.
  fifo    victims in order of arrival, references ignored.
  random  victims drawn uniformly (seeded: `Kernel(policy_seed=S)`).
  2q      Johnson & Shasha's 2Q as libCacheSim's TwoQ: A1in FIFO (a quarter),
          A1out ghost FIFO of evicted A1in pages (half), Am LRU (touch hook).
  sieve   SIEVE (NSDI'24): a FIFO whose hand, moving from the oldest page to
          the newest, clears referenced bits and evicts the first page
          without one, then stays there.
  s3fifo  S3-FIFO as libCacheSim's: small FIFO (10%), main FIFO with a 2-bit
          clock, ghost FIFO (90%); access counts from the touch hook.
  wsclock Carr & Hennessy's WSClock: a clock of pages with a last-use
          virtual time each; evicts pages unreferenced for more than `tau`.

Interface.  A policy is one `Policy` subclass with a `name`, registered with
`@register` (that is the whole of adding one: the kernel's policy knob and
the lab take their lists from `POLICIES`).  It implements `victims(k, want)`, may
return a per-access function from `touch_hook` (the access path calls it on
every access, after setting the page's referenced bit; only pay for it when
referenced bits are not enough), and, with `tracks = True`, keeps state of
its own: the page queues call `inserted(page)` when a page becomes pageable
(a fault brought it in, it was unwired, its pageout failed) and
`removed(page)` when it stops being pageable (freed, wired, busy for
pageout), each O(1).  Tracked policies hold the queued pages exactly (see
`errors`), take the inactive queue first (pages the kernel deactivated:
MADV_DONTNEED, a swapped-out process, over RLIMIT_RSS, unused read-ahead),
and then their own order.  Per-page state lives in dicts keyed by page.

The first touch of a page after its insertion is the faulting access itself
(the fault inserts, then the access sets the referenced bit and calls the
hook): policies that count re-references (`sieve`, `s3fifo`) do not count
it, as a cache simulator counts a miss as no hit.

Lock: the kernel lock, for hooks and victims alike.  `victims` generators
may be suspended while the daemon drops the lock to write; a policy that was
replaced meanwhile (`uninstall`) ends its generator at the next step.
"""

from __future__ import annotations

import errno
import heapq
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, ClassVar, TypeVar

from .errors import VMError
from .page import ACTIVE, INACTIVE, PageQueues, VMPage

if TYPE_CHECKING:
    from .kernel import Kernel

POLICIES: dict[str, type[Policy]] = {}
"""Every selectable policy by name, in registration order."""

_NAME = re.compile(r"[a-z0-9]+", re.ASCII)

P = TypeVar("P", bound="type[Policy]")


def register(cls: P) -> P:
    """Class decorator: make a Policy subclass selectable by its `name`."""
    name = cls.name
    if not _NAME.fullmatch(name):
        raise ValueError(f"policy name {name!r} must be lowercase letters and digits")
    if name in POLICIES:
        raise ValueError(f"policy {name!r} is already registered ({POLICIES[name].__qualname__})")
    POLICIES[name] = cls
    return cls


class Policy:
    """The base: `victims` in eviction order, an optional touch hook, and
    (with `tracks`) the queue events."""

    name: ClassVar[str] = ""
    tracks: ClassVar[bool] = False  # wants inserted/removed from the page queues

    def __init__(self, seed: int | None = None) -> None:
        # `seed` seeds the policies that draw random numbers; the kernel
        # makes every policy with its `policy_seed`.
        self.in_force = False  # installed and not replaced since
        self.used = False  # an instance is installed once, in one kernel

    def install(self, k: Kernel) -> None:
        """Become k's policy: a tracking one learns the pageable pages
        (inactive, then active: oldest first) and starts hearing the queue
        events; the previous tracking policy stops (lock held).
        VMError(EINVAL), changing nothing, if it was ever installed."""
        if self.used:
            raise VMError(errno.EINVAL, f"this {self.name} policy instance is already in use")
        self.used = True
        q = k.queues
        old = q.policy
        if self.tracks:
            for page in (*q.inactive, *q.active):
                self._add(page)
        q.policy = self if self.tracks else None
        if old is not None:
            old.uninstall()
        self.in_force = True

    def uninstall(self) -> None:
        """Stop: drop the state; suspended `victims` generators end."""
        self.in_force = False
        self._clear()

    def touch_hook(self, q: PageQueues) -> Callable[[VMPage], None] | None:
        """A function the access path calls on every access, or None."""
        return None

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """Candidate pages in eviction order.  The consumer removes each
        yielded page from its queue (evicts it) or passes over it (moves it
        to the tail of its queue), so a queue policy always looks at the
        queue heads."""
        raise NotImplementedError

    def inserted(self, page: VMPage) -> None:
        """A page became pageable (tracking policies only)."""
        self._add(page)

    def removed(self, page: VMPage) -> None:
        """A page stopped being pageable (tracking policies only)."""
        self._drop(page)

    def _add(self, page: VMPage) -> None:
        """Start tracking a page."""

    def _drop(self, page: VMPage) -> None:
        """Stop tracking a page."""

    def _clear(self) -> None:
        """Forget every page."""

    def tracked(self) -> Iterable[VMPage]:
        """Every page the policy tracks (tracking policies)."""
        return ()

    def errors(self, q: PageQueues) -> list[str]:
        """Inconsistencies between the policy's state and the queues: a
        tracking policy must hold every queued page, once, and no other."""
        if not self.tracks:
            return []
        mine = list(self.tracked())
        have = set(mine)
        queued = q.active.keys() | q.inactive.keys()
        errs = []
        if len(have) != len(mine):
            errs.append(f"{self.name}: {len(mine) - len(have)} pages tracked twice")
        if have != queued:
            errs.append(f"{self.name}: {len(queued - have)} queued pages untracked,"
                        f" {len(have - queued)} tracked pages not queued")
        return errs


def _heads(k: Kernel, queue_names: tuple[str, ...]) -> Iterator[VMPage]:
    """Yield queue heads (inactive first) until each page was seen once."""
    q = k.queues
    for name in queue_names:
        queue = getattr(q, name)
        for _ in range(len(queue)):
            if not queue:
                break
            yield next(iter(queue))


@register
class Clock(Policy):
    name = "clock"

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """Second chance over the two queues (see the module docstring)."""
        q = k.queues
        # Two sweeps of the hand: when every page was referenced, the first
        # only clears the bits, and the second finds the pages to evict.
        for _ in range(2):
            # Keep about a third of the pageable pages inactive, and at least `want`.
            target = max(want, (len(q.active) + len(q.inactive)) // 3)
            for _ in range(len(q.active)):
                if len(q.inactive) >= target or not q.active:
                    break
                page = next(iter(q.active))
                if page.referenced:
                    page.referenced = False
                    q.active.move_to_end(page)
                else:
                    q.enqueue(page, INACTIVE)
            for _ in range(len(q.inactive)):
                if not q.inactive:
                    return
                page = next(iter(q.inactive))
                if page.referenced and not page.busy:
                    page.referenced = False
                    q.enqueue(page, ACTIVE)
                    k.uvmexp.pdreact += 1
                    continue
                yield page


@register
class LRU(Policy):
    name = "lru"

    def touch_hook(self, q: PageQueues) -> Callable[[VMPage], None]:
        """Move an accessed active page to the tail (most recently used)."""
        active = q.active

        def touch(page: VMPage) -> None:
            if page.queue == ACTIVE:
                active.move_to_end(page)
        return touch

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """Queue heads: least recently used first."""
        return _heads(k, ("inactive", "active"))


@register
class FIFO(Policy):
    name = "fifo"

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """Queue heads: first in, first out."""
        return _heads(k, ("inactive", "active"))


class _Tracked(Policy):
    """A policy with state of its own: the inactive queue first, then
    `_order`, stopping if it is uninstalled meanwhile."""

    tracks = True

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """Deactivated pages, then the policy's own order."""
        for page in self._deactivated(k):
            yield page
            if not self.in_force:
                return
        for page in self._order(k, want):
            yield page
            if not self.in_force:
                return

    @staticmethod
    def _deactivated(k: Kernel) -> Iterator[VMPage]:
        """The inactive queue, head first; a page referenced since it was
        deactivated goes back to the active queue instead (pdreact)."""
        q = k.queues
        for _ in range(len(q.inactive)):
            if not q.inactive:
                return
            page = next(iter(q.inactive))
            if page.referenced and not page.busy:
                q.enqueue(page, ACTIVE)  # a move: the policy's state is unchanged
                k.uvmexp.pdreact += 1
                continue
            yield page

    def _order(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """The policy's own eviction order (each page at most twice)."""
        raise NotImplementedError


class _FirstTouch(_Tracked):
    """A tracked policy that does not count a page's first touch — the
    faulting access itself — as a re-reference: it clears the referenced
    bit that access set."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self.fresh: set[VMPage] = set()  # inserted, first access still to come

    def inserted(self, page: VMPage) -> None:
        """Track a new page; its first touch is its faulting access."""
        self.fresh.add(page)
        self._add(page)

    def removed(self, page: VMPage) -> None:
        """Forget a page."""
        self.fresh.discard(page)
        self._drop(page)

    def uninstall(self) -> None:
        """Stop, forgetting the fresh pages too."""
        super().uninstall()
        self.fresh.clear()

    def touch_hook(self, q: PageQueues) -> Callable[[VMPage], None]:
        """Clear the bit a fresh page's faulting access set; count others."""
        fresh = self.fresh
        hit = self._hit

        def touch(page: VMPage) -> None:
            if page in fresh:
                fresh.discard(page)
                page.referenced = False
            else:
                hit(page)
        return touch

    def _hit(self, page: VMPage) -> None:
        """A re-reference of a tracked (or wired, or busy) page."""


def _key(page: VMPage) -> tuple[int, int] | None:
    """What a ghost entry remembers of an evicted page: (object id, pindex)."""
    obj = page.obj
    return None if obj is None else (obj.id, page.pindex)


def _trim(ghost: OrderedDict[tuple[int, int], None], size: int) -> None:
    """Drop a ghost FIFO's oldest entries down to `size`."""
    while len(ghost) > size:
        ghost.popitem(last=False)


@register
class Random(_Tracked):
    """Uniform draws from the pageable pages, seeded by `policy_seed`."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self.rng = random.Random(seed)
        self.pages: list[VMPage] = []  # the draw; `index` maps each to its slot
        self.index: dict[VMPage, int] = {}
        # Passed over by the daemon (busy, cannot be cleaned): out of the
        # draw until the next scan, so a scan never draws a page twice.
        self.passed: dict[VMPage, None] = {}

    def _add(self, page: VMPage) -> None:
        """Join the draw."""
        self.index[page] = len(self.pages)
        self.pages.append(page)

    def _drop(self, page: VMPage) -> None:
        """Leave the draw: the last page takes the slot (swap-remove)."""
        i = self.index.pop(page, None)
        if i is None:
            self.passed.pop(page, None)
            return
        last = self.pages.pop()
        if last is not page:
            self.pages[i] = last
            self.index[last] = i

    def _clear(self) -> None:
        """Forget every page."""
        self.pages.clear()
        self.index.clear()
        self.passed.clear()

    def tracked(self) -> Iterable[VMPage]:
        """The draw and the pages passed over."""
        return [*self.pages, *self.passed]

    def _order(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """Uniform draws without replacement, O(1) each."""
        for page in self.passed:
            self._add(page)
        self.passed.clear()
        while self.pages:
            page = self.pages[self.rng.randrange(len(self.pages))]
            yield page
            if page in self.index:  # passed over
                self._drop(page)
                self.passed[page] = None


class _Ghosted(_Tracked):
    """A tracked policy with a probationary FIFO for new pages, a main
    queue, and a ghost list of the keys of pages evicted from probation
    (2Q's A1in/Am/A1out, S3-FIFO's small/main/ghost): a new page whose key
    the ghost remembers goes straight to main."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self.probation: OrderedDict[VMPage, None] = OrderedDict()
        self.main: OrderedDict[VMPage, None] = OrderedDict()
        self.ghost: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.ghost_size = 0  # the ghost's bound, set from the pages at the last scan

    def _add(self, page: VMPage) -> None:
        """Ghost hit: to main; else to probation."""
        key = _key(page)
        if key is not None and key in self.ghost:
            del self.ghost[key]
            self.main[page] = None
        else:
            self.probation[page] = None
        # libCacheSim drops the missed page's ghost before it evicts; the
        # eviction that made room for this page may have left the ghost one
        # key over its bound (see _drop): trimmed only now, to match.
        _trim(self.ghost, self.ghost_size)

    def _drop(self, page: VMPage) -> None:
        """A page leaving probation is remembered in the ghost."""
        if page in self.probation:
            del self.probation[page]
            key = _key(page)
            if key is not None:
                self.ghost[key] = None
                _trim(self.ghost, self.ghost_size + 1)
        else:
            self.main.pop(page, None)

    def _clear(self) -> None:
        """Forget every page and ghost."""
        self.probation.clear()
        self.main.clear()
        self.ghost.clear()

    def tracked(self) -> Iterable[VMPage]:
        """Probation and main."""
        return [*self.probation, *self.main]


@register
class TwoQ(_Ghosted):
    """2Q with libCacheSim's TwoQ defaults and order of events: a new page
    enters A1in (`probation`, FIFO) unless A1out (`ghost`) remembers it,
    then Am (`main`, LRU); victims come from A1in while it holds more than
    `ain_ratio` of the pages (their keys go to A1out), else from Am's LRU
    end."""

    name = "2q"
    ain_ratio: ClassVar[float] = 0.25
    aout_ratio: ClassVar[float] = 0.5

    def touch_hook(self, q: PageQueues) -> Callable[[VMPage], None]:
        """An Am page moves to the MRU end; A1in pages stay put."""
        am = self.main

        def touch(page: VMPage) -> None:
            if page in am:
                am.move_to_end(page)
        return touch

    def _order(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """A1in's head while A1in is over its share, else Am's LRU page; a
        page passed over goes to the tail of its queue."""
        ain, am = self.probation, self.main
        cap = len(ain) + len(am)
        ain_max = int(cap * self.ain_ratio)
        self.ghost_size = int(cap * self.aout_ratio)
        for _ in range(cap):
            q = ain if (len(ain) > ain_max or not am) else am
            if not q:
                return
            page = next(iter(q))
            yield page
            if page in q:
                q.move_to_end(page)


class _Node:
    """A page's place on a `_Ring`, and its last-use virtual time."""

    __slots__ = ("page", "prev", "next", "stamp")

    def __init__(self, page: VMPage) -> None:
        self.page = page
        self.prev: _Node = self
        self.next: _Node = self
        self.stamp = 0


class _Ring:
    """A circular doubly-linked list of pages with a hand: O(1) insert,
    remove, advance.  `first` is where a hand of None starts (and where
    `insert(page, None)` puts a page: just before it, the last the hand
    reaches)."""

    def __init__(self) -> None:
        self.nodes: dict[VMPage, _Node] = {}
        self.hand: _Node | None = None
        self.first: _Node | None = None

    def insert(self, page: VMPage, before: _Node | None) -> _Node:
        """Put a page just before `before` (or before `first`)."""
        node = _Node(page)
        at = before if before is not None else self.first
        if at is None:
            self.first = node
        else:
            node.prev, node.next = at.prev, at
            at.prev.next = node
            at.prev = node
        self.nodes[page] = node
        return node

    def remove(self, page: VMPage) -> None:
        """Unlink a page; a hand (or `first`) on it moves to the next."""
        node = self.nodes.pop(page, None)
        if node is None:
            return
        nxt = node.next
        if nxt is node:
            self.hand = self.first = None
            return
        node.prev.next = nxt
        nxt.prev = node.prev
        if self.hand is node:
            self.hand = nxt
        if self.first is node:
            self.first = nxt

    def clear(self) -> None:
        """Forget every page."""
        self.nodes.clear()
        self.hand = self.first = None

    def errors(self, name: str) -> list[str]:
        """Links that disagree with `nodes`."""
        if not self.nodes:
            return [] if self.first is None and self.hand is None else [f"{name}: hand on an empty ring"]
        seen = 0
        node = self.first
        while node is not None and seen <= len(self.nodes):
            if self.nodes.get(node.page) is not node or node.next.prev is not node:
                return [f"{name}: ring broken at {node.page}"]
            seen += 1
            node = node.next
            if node is self.first:
                break
        if seen != len(self.nodes):
            return [f"{name}: ring holds {seen} pages, index {len(self.nodes)}"]
        if self.hand is not None and self.nodes.get(self.hand.page) is not self.hand:
            return [f"{name}: hand off the ring"]
        return []


class _Ringed(_Tracked):
    """A tracked policy whose pages are on a `_Ring` with a hand."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self.ring = _Ring()

    def _drop(self, page: VMPage) -> None:
        """Unlink; a hand on the page moves to the next newer one."""
        self.ring.remove(page)

    def _clear(self) -> None:
        """Forget every page."""
        self.ring.clear()

    def tracked(self) -> Iterable[VMPage]:
        """The ring's pages."""
        return self.ring.nodes.keys()

    def errors(self, q: PageQueues) -> list[str]:
        """The queue check and the ring's links."""
        return super().errors(q) + self.ring.errors(self.name)


@register
class Sieve(_FirstTouch, _Ringed):
    """SIEVE as libCacheSim's Sieve: the ring runs from the oldest page
    (`first`) to the newest; new pages go in as the newest; the visited
    bit is the referenced bit."""

    name = "sieve"

    def _add(self, page: VMPage) -> None:
        """Insert as the newest page."""
        self.ring.insert(page, None)

    def _order(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """From the hand toward the newest page, wrapping to the oldest:
        clear visited bits, offer the first unvisited page; the hand stays
        just past it."""
        ring = self.ring
        for _ in range(2 * len(ring.nodes)):
            node = ring.hand or ring.first
            if node is None:
                return
            ring.hand = node.next
            page = node.page
            if page.referenced:
                page.referenced = False
                continue
            yield page


@register
class S3FIFO(_FirstTouch, _Ghosted):
    """S3-FIFO as libCacheSim's S3FIFO (defaults: small (`probation`) 10%, ghost 90%,
    promotion after 2 hits in the small FIFO): a page enters the small
    FIFO, or the main FIFO if the ghost remembers it (or, before the first
    eviction, while the small FIFO is full).  Eviction takes the main FIFO
    while it is over its share or the small one is empty, else the small
    FIFO's head: moved to main if hit twice, else evicted into the ghost.
    In main, a hit page goes back to the tail with one hit less (a 2-bit
    clock), an unhit one is evicted.  Hit counts come from the touch hook."""

    name = "s3fifo"
    small_ratio: ClassVar[float] = 0.1
    ghost_ratio: ClassVar[float] = 0.9
    promote_hits: ClassVar[int] = 2

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self.freq: dict[VMPage, int] = {}
        self.evicted = False  # a scan ran (see `_order`)

    def _add(self, page: VMPage) -> None:
        """As _Ghosted, with a hit count of 0."""
        super()._add(page)
        self.freq[page] = 0

    def _drop(self, page: VMPage) -> None:
        """As _Ghosted, forgetting the hit count."""
        self.freq.pop(page, None)
        super()._drop(page)

    def _clear(self) -> None:
        """Forget every page, ghost and count."""
        super()._clear()
        self.freq.clear()

    def _hit(self, page: VMPage) -> None:
        """Count a hit."""
        if page in self.freq:
            self.freq[page] += 1

    def _order(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """libCacheSim's evict_small / evict_main, one victim at a time."""
        small, main, freq = self.probation, self.main, self.freq
        cap = len(small) + len(main)
        small_size = int(cap * self.small_ratio)
        self.ghost_size = int(cap * self.ghost_ratio)
        main_size = cap - small_size
        if not self.evicted:
            # Until its first eviction libCacheSim puts new pages in main
            # once small is full; the sizes are known only now: move them.
            self.evicted = True
            for page in list(small)[small_size:]:
                del small[page]
                main[page] = None
        # As libCacheSim, a choice of FIFO holds until it gives a victim
        # (evict_small may promote several pages first).  Every step moves
        # a page (each at most ~4 times: 2-bit counts) or offers one.
        from_main = None
        for _ in range(6 * cap + 2):
            if from_main is None or not (main if from_main else small):
                from_main = len(main) > main_size or not small
            q = main if from_main else small
            if not q:
                return
            page = next(iter(q))
            if from_main and freq[page] >= 1:
                freq[page] = min(freq[page], 3) - 1
                main.move_to_end(page)
                continue
            if not from_main and freq[page] >= self.promote_hits:
                del small[page]
                main[page] = None
                freq[page] = 0
                continue
            yield page
            from_main = None
            if page in q:  # passed over
                q.move_to_end(page)


@register
class WSClock(_Ringed):
    """WSClock (Carr & Hennessy): pages on a clock, each with the virtual
    time of its last known use.  Virtual time counts page insertions (the
    faults this policy saw), the memory clock Linux's refault distance uses
    too; a page's last use is refreshed when the hand finds its referenced
    bit set.  A page unreferenced for more than `tau` (default: half the
    pageable pages at the scan) is out of the working set.

    The hand offers old clean pages at once (freeing costs nothing) and
    schedules old dirty pages: in this kernel the daemon writes a dirty
    victim to swap and frees it itself, so "scheduling the write" is
    offering it after one revolution found no more clean ones.  When no
    page is old (everything is in a working set), it offers pages oldest
    last use first."""

    name = "wsclock"
    tau: int | None = None

    def __init__(self, seed: int | None = None, tau: int | None = None) -> None:
        super().__init__(seed)
        if tau is not None:
            if isinstance(tau, bool) or not isinstance(tau, int):
                raise TypeError(f"tau must be an int, not {type(tau).__name__}")
            if tau < 1:
                raise VMError(errno.EINVAL, f"tau must be >= 1 insertion, got {tau}")
            self.tau = tau
        self.vt = 0  # virtual time: insertions so far

    def _add(self, page: VMPage) -> None:
        """New pages go just behind the hand: it reaches them last."""
        self.ring.insert(page, self.ring.hand).stamp = self.vt
        self.vt += 1

    def _order(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """One revolution: old clean pages at once; then old dirty ones in
        hand order; then the rest by last use.  O(n + victims log n)."""
        ring = self.ring
        n = len(ring.nodes)
        tau = self.tau if self.tau is not None else max(1, n // 2)
        now = self.vt
        dirty: list[VMPage] = []
        young: list[tuple[int, int, VMPage]] = []
        for i in range(n):
            node = ring.hand or ring.first
            if node is None:
                return
            ring.hand = node.next
            page = node.page
            if page.referenced:
                page.referenced = False
                node.stamp = now
            elif now - node.stamp > tau:
                if page.dirty:
                    dirty.append(page)
                else:
                    yield page
                continue
            young.append((node.stamp, i, page))
        for page in dirty:
            if page in ring.nodes:
                yield page
        heapq.heapify(young)
        while young:
            page = heapq.heappop(young)[2]
            if page in ring.nodes:
                yield page
