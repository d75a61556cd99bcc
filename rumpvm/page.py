"""vm_page: the page structure, its flags, and the paging queues.

A page is a frame owned by (object, pindex); objects find their pages by
pindex in O(1) (a dict per object).  Flags follow the seeds:
  busy      I/O or a state change is in progress; nobody else may touch it.
  wanted    somebody sleeps on the page (kernel.page_cv) waiting for !busy.
  released  the owner died while the page was busy; free it when I/O ends.
  dirty     the contents differ from any swap copy (the negation of PG_CLEAN).
  fake      the contents are not valid yet (a page-in has not completed).
`referenced` is the pmap's referenced bit, set by every access through a
translation (the "MMU" of this kernel) and cleared by the pagedaemon.
`pv` is the set of (pmap, vpn) translations that map the page.

Queues: every managed page that is neither wired nor busy-for-pageout sits on
exactly one of `active` or `inactive` (OrderedDicts: O(1) insert, remove,
move-to-tail, pop-head).  Wired pages are on no queue and are never paged.
Lock: the kernel lock for everything here.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .object import VMObject
    from .pmap import Pmap
    from .policy import Policy

ACTIVE = 1
INACTIVE = 2


class VMPage:
    __slots__ = (
        "obj", "pindex", "frame", "addr", "buf", "off",
        "busy", "wanted", "released", "dirty", "fake",
        "referenced", "wire_count", "queue", "pv",
    )

    def __init__(self, obj: VMObject | None, pindex: int, frame: int,
                 addr: int, buf: memoryview, off: int) -> None:
        self.obj = obj
        self.pindex = pindex
        self.frame = frame
        self.addr = addr
        self.buf = buf
        self.off = off
        self.busy = False
        self.wanted = False
        self.released = False
        self.dirty = True
        self.fake = False
        self.referenced = False
        self.wire_count = 0
        self.queue = 0
        self.pv: set[tuple[Pmap, int]] = set()

    @property
    def flags(self) -> str:
        names = ("busy", "wanted", "released", "fake")
        parts = [n for n in names if getattr(self, n)]
        parts.append("dirty" if self.dirty else "clean")
        return ",".join(parts)

    def __repr__(self) -> str:
        oid = self.obj.id if self.obj is not None else None
        return f"<VMPage obj={oid} pindex={self.pindex} frame={self.frame} {self.flags}>"


class PageQueues:
    """The active and inactive queues (heads are the oldest pages).

    `policy`, when set, is the replacement policy that keeps state of its
    own: it hears `inserted(page)` when a page becomes pageable (enqueued
    from no queue: allocated, unwired, back from a failed pageout) and
    `removed(page)` when it stops being pageable (freed, wired, made busy
    for pageout).  A move between the two queues is not an event.  Hooks
    run under the kernel lock and must not touch the queues."""

    def __init__(self) -> None:
        self.active: OrderedDict[VMPage, None] = OrderedDict()
        self.inactive: OrderedDict[VMPage, None] = OrderedDict()
        self.wired = 0  # pages with wire_count > 0
        self.policy: Policy | None = None
        # Host-window stubs (frame -1) moved to the inactive queue: the
        # pagedaemon has their engines park them (window.park).
        self.deactivated: list[VMPage] = []

    def enqueue(self, page: VMPage, queue: int) -> None:
        """Put a page at the tail of `queue` (moving it if it is on one)."""
        old = page.queue
        if old == ACTIVE:
            del self.active[page]
        elif old == INACTIVE:
            del self.inactive[page]
        (self.active if queue == ACTIVE else self.inactive)[page] = None
        page.queue = queue
        if queue != ACTIVE and page.frame < 0:
            self.deactivated.append(page)
        if not old and self.policy is not None:
            self.policy.inserted(page)

    def deactivate_first(self, page: VMPage) -> None:
        """Put a page at the head of the inactive queue: the next victim."""
        self.enqueue(page, INACTIVE)
        self.inactive.move_to_end(page, last=False)

    def dequeue(self, page: VMPage) -> None:
        """Take a page off its queue, if it is on one."""
        old = page.queue
        if old == ACTIVE:
            del self.active[page]
        elif old == INACTIVE:
            del self.inactive[page]
        else:
            return
        page.queue = 0
        if self.policy is not None:
            self.policy.removed(page)

    def wire(self, page: VMPage) -> None:
        """Count a wiring; the first takes the page off the queues."""
        if page.wire_count == 0:
            self.dequeue(page)
            self.wired += 1
        page.wire_count += 1

    def unwire(self, page: VMPage) -> None:
        """Drop a wiring; the last puts the page on the active queue."""
        page.wire_count -= 1
        if page.wire_count == 0:
            self.wired -= 1
            self.enqueue(page, ACTIVE)
