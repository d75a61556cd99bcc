"""Page replacement policies behind one small interface.

A policy decides the order in which the pagedaemon considers pages for
eviction; the daemon itself decides what to do with each candidate (free a
clean page, write a dirty one to swap, skip a busy one).

  clock   BSD two-queue second chance (default): the active queue feeds the
          inactive queue; a referenced inactive page is reactivated instead
          of evicted (pdreact), an unreferenced one is evicted.
  lru     exact LRU: every access moves the page to the tail of the active
          queue (the only policy that needs the per-access `touch` hook);
          victims come from the head.
  fifo    victims in order of arrival, references ignored.
  random  victims drawn uniformly from all pageable pages.

Why this split: exact LRU cannot be built from referenced bits alone, so the
access path calls `touch` only when the policy asks for it, and the cheaper
policies pay nothing per access.  Lock: the kernel lock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .page import ACTIVE, INACTIVE, PageQueues, VMPage

if TYPE_CHECKING:
    from .kernel import Kernel


class Policy:
    name = ""

    def touch_hook(self, q: PageQueues) -> Callable[[VMPage], None] | None:
        """A function the access path calls on every access, or None."""
        return None

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        """Candidate pages in eviction order.  The consumer removes each
        yielded page from its queue or moves it to the tail, so the
        generator always looks at the queue heads."""
        raise NotImplementedError


def _heads(k: Kernel, queue_names: tuple[str, ...]) -> Iterator[VMPage]:
    """Yield queue heads (inactive first) until each page was seen once."""
    q = k.queues
    for name in queue_names:
        queue = getattr(q, name)
        for _ in range(len(queue)):
            if not queue:
                break
            yield next(iter(queue))


class Clock(Policy):
    name = "clock"

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
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


class LRU(Policy):
    name = "lru"

    def touch_hook(self, q: PageQueues) -> Callable[[VMPage], None]:
        active = q.active

        def touch(page: VMPage) -> None:
            if page.queue == ACTIVE:
                active.move_to_end(page)
        return touch

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        return _heads(k, ("inactive", "active"))


class FIFO(Policy):
    name = "fifo"

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        return _heads(k, ("inactive", "active"))


class Random(Policy):
    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)

    def victims(self, k: Kernel, want: int) -> Iterator[VMPage]:
        pool = [*k.queues.inactive, *k.queues.active]
        self.rng.shuffle(pool)
        for page in pool:
            if page.queue:  # still pageable (not freed meanwhile)
                yield page


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Clock, LRU, FIFO, Random)}
