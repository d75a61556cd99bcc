"""Physical memory: page frames carved from host arenas, and the memory limit.

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

import hypercall

from .constants import PAGE_SHIFT, PAGE_SIZE

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
        self.limit = limit
        self.arenas: list[hypercall.Arena] = []
        self.free_frames: list[int] = []
        self.frames_in_use = 0
        self.charged = 0  # bytes of host memory charged outside frames

    @property
    def resident(self) -> int:
        return (self.frames_in_use << PAGE_SHIFT) + self.charged

    def avail_pages(self, pagedaemon: bool = False) -> int:
        """Frames that may still be allocated under the limit."""
        if self.limit is None:
            return 1 << 40
        reserve = 0 if pagedaemon else PDRESERVE_PAGES
        return max(0, (self.limit - self.resident) // PAGE_SIZE - reserve)

    def frame_location(self, frame: int) -> tuple[int, memoryview, int]:
        """(host address, arena buffer, offset in buffer) of a frame."""
        arena = self.arenas[frame >> ARENA_SHIFT]
        off = (frame & ARENA_MASK) << PAGE_SHIFT
        return arena.addr + off, arena.buf, off

    def alloc_frame(self, pagedaemon: bool = False) -> int | None:
        """A frame, or None when the limit (or the host) says no."""
        if self.limit is not None and self.avail_pages(pagedaemon) <= 0:
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

    def free_frame(self, frame: int) -> None:
        self.frames_in_use -= 1
        self.free_frames.append(frame)

    def charge(self, nbytes: int, pagedaemon: bool = False) -> bool:
        """Count `nbytes` of host memory against the limit; False if over it."""
        if self.limit is not None:
            reserve = 0 if pagedaemon else PDRESERVE_PAGES * PAGE_SIZE
            if self.resident + nbytes > self.limit - reserve:
                return False
        self.charged += nbytes
        return True

    def uncharge(self, nbytes: int) -> None:
        self.charged -= nbytes

    @property
    def total_frames(self) -> int:
        return len(self.arenas) << ARENA_SHIFT

    def close(self) -> None:
        for arena in self.arenas:
            hypercall.unmap(arena)
        self.arenas.clear()
        self.free_frames.clear()
