"""Physical memory: page frames carved from host arenas, the memory limit,
and the page allocator on top of them (page_alloc/page_free, memory waits,
reservations, pool priming).

Frames come from `hypercall.anonmmap` arenas of ARENA_PAGES pages (never one
host allocation per page); a frame number is `arena << ARENA_SHIFT | index`.
Freed frames go on a LIFO free list and are reused before a new arena is
mapped.  Host memory charged outside frames (`uvm_km_alloc`'s aligned
anonmmaps, hypermalloc'd bookkeeping) is counted in `charged`.

Accounting: `resident = frames_in_use * PAGE_SIZE + charged`.  With a limit,
an allocation succeeds only if resident stays <= limit - reserve, where the
reserve (PDRESERVE pages) is available to the pagedaemon alone, so it can
always make progress.  Lock: the kernel lock.  Invariant: resident <= limit
whenever the limit has not just been lowered below it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import hypercall

from .constants import PAGE_SHIFT, PAGE_SIZE
from .errors import OutOfMemory
from .page import ACTIVE, VMPage

if TYPE_CHECKING:
    from .kernel import Kernel
    from .object import VMObject

ARENA_SHIFT = 8
ARENA_PAGES = 1 << ARENA_SHIFT
ARENA_MASK = ARENA_PAGES - 1
PDRESERVE_PAGES = 8  # frames only the pagedaemon may take
MIN_LIMIT = 64 * PAGE_SIZE + PDRESERVE_PAGES * PAGE_SIZE


class Reservation:
    """Frames set aside for one operation (`Kernel.reserve`), taken before
    it changes anything so it cannot run out of memory half-way.  The
    frames count as in use; `check` counts them as owned by the reservation."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames: list[int] = []


class PhysMem:
    """The frame allocator and the limit accountant."""

    def __init__(self, limit: int | None) -> None:
        self.arenas: list[hypercall.Arena] = []
        self.free_frames: list[int] = []
        self.frames_in_use = 0
        self.frees = 0  # frames freed and bytes uncharged, ever (ends a pagedaemon stall)
        self._charged = 0  # bytes of host memory charged outside frames
        self._limit = limit
        self._frame_limit = 0  # frames the limit leaves after `charged` (kept for the hot paths)
        self._refresh()

    def _refresh(self) -> None:
        if self._limit is not None:
            self._frame_limit = (self._limit - self._charged) // PAGE_SIZE

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        self._limit = value
        self._refresh()

    @property
    def charged(self) -> int:
        return self._charged

    @property
    def resident(self) -> int:
        return (self.frames_in_use << PAGE_SHIFT) + self.charged

    def avail_pages(self, pagedaemon: bool = False) -> int:
        """Frames that may still be allocated under the limit."""
        if self._limit is None:
            return 1 << 40
        free = self._frame_limit - self.frames_in_use
        if not pagedaemon:
            free -= PDRESERVE_PAGES
        return free if free > 0 else 0

    def frame_location(self, frame: int) -> tuple[int, memoryview, int]:
        """(host address, arena buffer, offset in buffer) of a frame."""
        arena = self.arenas[frame >> ARENA_SHIFT]
        off = (frame & ARENA_MASK) << PAGE_SHIFT
        return arena.addr + off, arena.buf, off

    def alloc_frame(self, pagedaemon: bool = False, anyway: bool = False) -> int | None:
        """A frame, or None when the limit (or the host) says no; `anyway`:
        whatever the limit says (frames_for_charge)."""
        if (self._limit is not None and not anyway
                and self._frame_limit - self.frames_in_use <= (0 if pagedaemon else PDRESERVE_PAGES)):
            return None
        if not self.free_frames:
            try:
                arena = hypercall.anonmmap(ARENA_PAGES * PAGE_SIZE)
            except OSError:
                return None
            base = len(self.arenas) << ARENA_SHIFT
            self.arenas.append(arena)
            self.free_frames.extend(range(base + ARENA_PAGES - 1, base - 1, -1))
        self.frames_in_use += 1
        return self.free_frames.pop()

    def frames_for_charge(self, npages: int) -> list[int]:
        """Turn `npages` pages of charged host memory into frames: uncharged,
        then taken whatever the limit says now (it counted them already;
        it may have been lowered since).  Fewer if the host refuses an
        arena."""
        self.uncharge(npages << PAGE_SHIFT)
        frames = []
        for _ in range(npages):
            f = self.alloc_frame(anyway=True)
            if f is None:
                break
            frames.append(f)
        return frames

    def free_frame(self, frame: int) -> None:
        self.frames_in_use -= 1
        self.frees += 1
        self.free_frames.append(frame)

    def charge(self, nbytes: int, pagedaemon: bool = False) -> bool:
        """Count `nbytes` of host memory against the limit; False if over it."""
        if self._limit is not None:
            reserve = 0 if pagedaemon else PDRESERVE_PAGES * PAGE_SIZE
            if self.resident + nbytes > self._limit - reserve:
                return False
        self._charged += nbytes
        self._refresh()
        return True

    def uncharge(self, nbytes: int) -> None:
        self._charged -= nbytes
        self.frees += 1
        self._refresh()

    @property
    def total_frames(self) -> int:
        return len(self.arenas) << ARENA_SHIFT

    def close(self) -> None:
        for arena in self.arenas:
            hypercall.unmap(arena)
        self.arenas.clear()
        self.free_frames.clear()


# -- the page allocator (kernel lock held by every caller) ---------------------


def in_pagedaemon(k: Kernel) -> bool:
    """Whether the caller is the pagedaemon thread (it may use the reserve
    and must never wait for memory)."""
    return threading.get_ident() == k.pagedaemon.ident


_ZERO_PAGE = bytes(PAGE_SIZE)


def zero_page(page: VMPage) -> None:
    """Zero a page through its frame's buffer: a cffi call (the GIL
    released and retaken) costs more than the 4 KiB copy itself."""
    page.buf[page.off:page.off + PAGE_SIZE] = _ZERO_PAGE


KEEP = 0  # page_alloc init: the frame already holds the page's bytes (a reservation the caller filled)
BUSY = -1  # page_alloc init: busy and fake, a page-in fills it


def page_alloc(k: Kernel, obj: VMObject, pindex: int, resv: Reservation | None = None, queue: int = ACTIVE,
               init: int | list[VMPage] | None = None) -> VMPage | None:
    """A new page of `obj` at `pindex`, on `queue` (active), with a frame
    from `resv` if it has one; None when memory is short (the caller
    waits with memwait and retries).  Before the page joins `obj`, `init`
    deals with the frame's old bytes, so no exception (Ctrl-C) between
    here and the caller's next step can show them: None zero-fills it; a
    host address fills it from the page there; a list (the caller's
    `fresh` list: it overwrites the page whole, and zeros what is still
    listed if it cannot) takes it; BUSY makes it busy and fake (a page-in
    fills it); KEEP leaves it (the caller filled the frame).  One argument,
    not flags: keyword and keyword-only defaults cost the hot path.  Lock
    held."""
    pm = k.physmem
    limited = pm._limit is not None
    if resv is not None and resv.frames:
        frame: int | None = resv.frames.pop()
    else:  # only a limit makes the caller matter (the reserve is the daemon's)
        frame = pm.alloc_frame(limited and in_pagedaemon(k))
    if frame is None:
        return None
    arena = pm.arenas[frame >> ARENA_SHIFT]
    off = (frame & ARENA_MASK) << PAGE_SHIFT
    page = VMPage(obj, pindex, frame, arena.addr + off, arena.buf, off)
    if init is None:
        page.buf[off:off + PAGE_SIZE] = _ZERO_PAGE
    elif isinstance(init, list):
        init.append(page)
    elif init > 0:
        hypercall.page_copy(page.addr, init)
    elif init == BUSY:
        page.busy = page.fake = True
    obj.pages[pindex] = page
    k.queues.enqueue(page, queue)
    pd = k.pagedaemon
    if limited and pm.avail_pages() < pd.freemin and not pd.ctl.wanted:
        pd.wake()
    return page


def page_free(k: Kernel, page: VMPage) -> None:
    """Return a page's frame.  The page must have no translations."""
    if page.wire_count:
        page.wire_count = 1
        k.queues.unwire(page)
    k.queues.dequeue(page)
    obj = page.obj
    if obj is not None and obj.pages.get(page.pindex) is page:
        del obj.pages[page.pindex]
    page.obj = None
    k.physmem.free_frame(page.frame)
    if k.mem_waiters:
        k.mem_cv.notify_all()


def pageable_again(k: Kernel) -> None:
    """Pages the last scan had to pass over (busy for I/O, wired) can be
    paged again: a scan that freed nothing is no longer the last word, so
    waiters retry (they reclaim for themselves).  Lock held."""
    k.pagedaemon.stalled = False
    if k.mem_waiters:
        k.mem_cv.notify_all()


def swap_free(k: Kernel, slot: int) -> None:
    assert k.swap is not None
    k.swap.free(slot)


def memwait(k: Kernel, deadline: float | None, npages: int = 1) -> float:
    """Sleep until memory may be available for `npages` pages at once (the
    lock is dropped); raise OutOfMemory once `deadline` (set on the first
    call) has passed."""
    now = time.monotonic()
    if deadline is None:
        deadline = now + k.oom_timeout
        k.uvmexp.oomwaits += 1
    k.check_open()
    if now >= deadline or in_pagedaemon(k):
        k.uvmexp.oomfails += 1
        raise OutOfMemory(f"out of memory: nothing could be freed within {k.oom_timeout:g}s")
    pd = k.pagedaemon
    pd.need = max(pd.need, npages)
    try:
        # Direct reclaim: scan in this thread rather than hand off to the
        # daemon and sleep (a thread switch each way per batch of pages).
        if not pd.stalled and pd.reclaim(direct=True):
            k.lockdrops += 1  # pages moved as if the lock had been dropped
            k.check_open()
            return deadline
        if not pd.stalled:
            pd.wake()
        k.mem_waiters += 1
        k.lockdrops += 1
        try:
            k.mem_cv.wait(deadline - now)
        finally:
            k.mem_waiters -= 1
    finally:
        pd.need = 0  # a waiter that still lacks memory says so again
    k.check_open()
    return deadline


def make_room(k: Kernel, npages: int) -> bool:
    """Before a fault that will take `npages` frames at once (a page-in with
    read-ahead, a long write): if fewer are free above the daemon's wake-up
    point, scan in this thread (direct reclaim) rather than shrink the
    batch to single pages while the daemon waits for the lock.  True if a
    scan freed pages or dropped the lock, so the caller restarts (its
    lookups may be stale).  Lock held; nothing may be half-done by the
    caller."""
    pd = k.pagedaemon
    if (k.physmem.limit is None or pd.stalled or k.physmem.avail_pages() - pd.freemin - 1 >= npages
            or in_pagedaemon(k)):
        return False
    drops = k.lockdrops
    if pd.reclaim(direct=True):
        k.lockdrops += 1
        return True
    # A scan that freed nothing may still have dropped the lock for swap
    # writes (the pages it wrote were released meanwhile): the caller's
    # lookups are stale all the same.
    return k.lockdrops != drops


@contextmanager
def reserve(k: Kernel, npages: int) -> Iterator[Reservation]:
    """Set `npages` frames aside for one operation, waiting for memory
    (OutOfMemory after oom_timeout, with nothing kept); frames it did
    not use are freed at the end.  Lock held."""
    r = Reservation()
    k.reservations.add(r)
    try:
        reserve_more(k, r, npages)
        yield r
    finally:
        k.reservations.discard(r)
        for frame in r.frames:
            k.physmem.free_frame(frame)
        if r.frames and k.mem_waiters:
            k.mem_cv.notify_all()
        r.frames.clear()


def reserve_more(k: Kernel, r: Reservation, npages: int) -> None:
    """Grow `r` to at least `npages` frames, waiting for memory (the lock
    may be dropped: the caller re-checks what it sized `npages` from)."""
    deadline = None
    while len(r.frames) < npages:
        frame = k.physmem.alloc_frame(in_pagedaemon(k))
        if frame is None:
            deadline = memwait(k, deadline)
        else:
            r.frames.append(frame)


def pool_room(k: Kernel, entries: int = 0, objects: int = 0) -> bool:
    """Grow pools so they hold `entries` map entries and `objects`
    objects more; False when memory is short (nothing is waited for)."""
    for pool, need in ((k.pooltab["vm_map_entry"], entries), (k.pooltab["vm_object"], objects)):
        while pool.room() < need:
            if not pool.grow(in_pagedaemon(k)):
                return False
    return True


def pool_prime(k: Kernel, entries: int = 0, objects: int = 0) -> None:
    """pool_room, waiting for memory (OutOfMemory after oom_timeout).
    Called at the start of an operation, before it changes anything."""
    deadline = None
    while not pool_room(k, entries, objects):
        deadline = memwait(k, deadline)
