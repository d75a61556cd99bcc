"""The fault handler: make a virtual page accessible (vm_fault).

Given a map, an address and the access wanted, find the entry (following
submaps), check its protection, resolve copy-on-write (a needs-copy entry
gets its shadow object on the first write), create the entry's object on
first write, then walk the object chain: a resident page is used, a swapped
one is paged in, and a page found nowhere is zero-filled into the top
object.  A write to a page found in a backing object copies it into the top
object (COW).  A read of a page that was never written returns None: the
caller sees zeros and nothing is allocated.

Lock: called with the kernel lock held.  Whenever the handler must sleep
(memory, a busy page, page-in I/O) it drops the lock and restarts from the
map lookup, because anything may have changed meanwhile (BSD's "retry
the fault" pattern).  Page-in runs with the page busy and no lock held.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from . import object as vm_object
from .constants import MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, PAGE_SHIFT, PROT_READ, PROT_WRITE
from .errors import OutOfMemory, SegmentationFault, VMError
from .map import growstack, stack_growth
from .page import ACTIVE, INACTIVE
from .physmem import (
    BUSY,
    in_pagedaemon,
    make_room,
    memwait,
    page_alloc,
    page_free,
    pageable_again,
    pool_room,
    swap_free,
)
from .pmap import page_remove_all
from .window import window_range

if TYPE_CHECKING:
    from .kernel import Kernel
    from .map import VMMap, VMMapEntry
    from .object import VMObject
    from .page import VMPage
    from .physmem import Reservation
    from .window import Window





class WindowPage(VMError):
    """A fault on a page a host window holds (window.py): no rumpvm page
    exists for it; reads and writes copy through the window's host
    address (`address`) instead, anything else (wiring, replay) is EFAULT."""

    def __init__(self, window: Window, index: int) -> None:
        super().__init__(errno.EFAULT, f"page {index} of a host window: only reads and writes reach it")
        self.address = window.address + (index << PAGE_SHIFT)

class _Retry(Exception):
    """Internal: the fault slept; restart it."""


class _NeedMemory(Exception):
    """Internal: an allocation failed; wait for memory, then restart."""


def resolve(vmap: VMMap, va: int) -> tuple[VMMap, VMMapEntry | None]:
    """The (map, entry) that maps `va`, following submaps; entry None if none."""
    while True:
        found, e = vmap.lookup_entry(va)
        if not found:
            return vmap, None
        if e.submap is None:
            return vmap, e
        vmap = e.submap


def vm_fault(k: Kernel, vmap: VMMap, va: int, access: int, wire: bool = False,
             nowait: bool = False, resv: Reservation | None = None, fill: bool = False) -> VMPage | None:
    """Make the page at `va` accessible for `access` and return it (entered in
    the pmap, wired if `wire`), or None for a read of a never-written page —
    unless `fill`: then such a read gets a clean zero-filled page, as a page
    of a file would (evicting it writes nothing; the lab's trace replay).
    New pages take frames from `resv` while it has some.

    Raises SegmentationFault, VMError(EIO) (swap), OutOfMemory, and
    VMError(ESHUTDOWN) if the kernel closes while the fault sleeps.
    Requires the kernel lock; may drop and retake it.
    """
    k.uvmexp.faults += 1
    deadline: float | None = None
    while True:
        try:
            return _fault(k, vmap, va, access, wire, resv, fill)
        except _Retry:
            k.check_open()
        except _NeedMemory:
            if nowait:
                raise OutOfMemory("no memory for a no-wait fault") from None
            deadline = memwait(k, deadline)


def vm_fault_fast(k: Kernel, vmap: VMMap, va: int) -> VMPage | None:
    """The soft fast path of a write fault (vm_fault_soft_fast; Linux's
    do_anonymous_page): a write to a never-touched page of an object with
    nothing below it, when a frame is free — the common first write to
    fresh memory.  Zero-fills, enters and returns the page; None whenever
    anything else is needed (no entry, no write permission, copy-on-write,
    an object to create, a backing chain, a page or slot already there, a
    memory wait), and then the caller takes vm_fault.  Lock held; never
    sleeps."""
    e = vmap.hint
    if not e.start <= va < e.end:
        found, e = vmap.lookup_entry(va)
        if not found:
            return None
    top = e.obj
    if (top is None or top.backing is not None or e.needs_copy or e.submap is not None or not e.prot & PROT_WRITE
            or top.window is not None):
        return None
    pindex = (va - e.start + e.offset) >> PAGE_SHIFT
    if pindex in top.pages or pindex in top.swap:
        return None
    page = page_alloc(k, top, pindex)
    if page is None:
        return None
    k.uvmexp.faults += 1
    k.uvmexp.zerofills += 1
    if e.prot & PROT_READ:  # a write-only entry gets no translation
        vmap.pmap.enter(va >> PAGE_SHIFT, page, True)
    page.referenced = True
    return page


def object_fault(k: Kernel, obj: VMObject, pindex: int) -> VMPage:
    """The page `pindex` of `obj` itself, made writable there (copied up
    from a backing object, paged in, or zero-filled), waiting for memory
    as vm_fault does.  The caller holds the lock and a reference on `obj`."""
    deadline: float | None = None
    while True:
        try:
            page = fault_object(k, obj, pindex, True)
            assert page is not None
            return page
        except _Retry:
            k.check_open()
        except _NeedMemory:
            deadline = memwait(k, deadline)


def _alloc(k: Kernel, obj: VMObject, pindex: int, resv: Reservation | None,
           init: int | None = None) -> VMPage:
    page = page_alloc(k, obj, pindex, resv, ACTIVE, init)
    if page is None:
        raise _NeedMemory
    return page


def _fault(k: Kernel, vmap: VMMap, va: int, access: int, wire: bool,
           resv: Reservation | None, fill: bool) -> VMPage | None:
    vmap, e = resolve(vmap, va)
    if e is None:
        if stack_growth(vmap, va) is not None:
            if not pool_room(k, entries=1, objects=1):
                raise _NeedMemory
            growstack(vmap, va)
            raise _Retry
        raise SegmentationFault(va, access, "SEGV_MAPERR")
    need = access if access & PROT_WRITE else PROT_READ
    if e.prot & need != need and (vmap.user or not wire):  # the kernel wires its own pages regardless
        raise SegmentationFault(va, access, "SEGV_ACCERR")
    # A wired page must be the one the entry will keep mapping: resolve
    # copy-on-write now wherever the entry could ever be written, so a later
    # mprotect+write cannot leave the wiring on a page the chain hides
    # (what vm_fault_copy_entry does when mprotect adds write).
    write = bool(access & PROT_WRITE) or (wire and bool(e.max_prot & PROT_WRITE))
    if (write or wire or fill) and (e.needs_copy or e.obj is None) and not (resv and resv.frames):
        # Wait for the frames this fault will need (a page-in and the copy)
        # before shadowing or creating an object: a fault that runs out of
        # memory must change nothing.
        slot = vm_object.lookup(e.obj, e.pindex(va))[3] if e.obj is not None else None
        if k.physmem.avail_pages(in_pagedaemon(k)) < (2 if slot is not None else 1):
            raise _NeedMemory

    if e.needs_copy and write:
        assert e.obj is not None
        if e.obj.ref_count == 1:
            e.needs_copy = False  # nobody else sees the object: no copy needed
        else:
            if not pool_room(k, objects=1):
                raise _NeedMemory
            e.set_object(vm_object.shadow(k, e.obj, e.offset >> PAGE_SHIFT, e.npages), 0)
            e.needs_copy = False
    if e.obj is None:
        if not write and not wire and not fill:
            return None
        if not pool_room(k, objects=1):
            raise _NeedMemory
        if e.grow_floor:  # a stack: the object spans all it may grow to
            e.set_object(vm_object.allocate(k, (e.end - e.grow_floor) >> PAGE_SHIFT), e.start - e.grow_floor)
        else:
            e.set_object(vm_object.allocate(k, e.npages), 0)

    assert e.obj is not None
    page = fault_object(k, e.obj, e.pindex(va), write, wire, e.advice, resv, fill)
    if page is None:
        return None
    top = e.obj
    vpn = va >> PAGE_SHIFT
    if e.prot & PROT_READ:  # a write-only entry gets no translation: each write faults
        writable = bool(e.prot & PROT_WRITE) and not e.needs_copy and page.obj is top
        vmap.pmap.enter(vpn, page, writable)
    page.referenced = True
    if wire and vmap.wired.get(vpn) is not page:
        old = vmap.wired.pop(vpn, None)
        if old is not None:
            k.queues.unwire(old)
        vmap.wired[vpn] = page
        k.queues.wire(page)
        owner = page.obj
        assert owner is not None
        slot = owner.swap.pop(page.pindex, None)
        if slot is not None:  # a wired page never goes back to swap: drop its copy
            swap_free(k, slot)
            page.dirty = True
    return page


def fault_object(k: Kernel, top: VMObject, pindex: int, write: bool, alloc: bool = False,
                 advice: int = MADV_NORMAL, resv: Reservation | None = None,
                 fill: bool = False) -> VMPage | None:
    """The object half of a fault: the page for `pindex` of `top`'s chain —
    copied into `top` for a write (COW), paged in from swap, or zero-filled
    into `top` for a write or when `alloc` or `fill` (`fill`: clean, since
    a zero page can be made again); None for a read of a page no object
    has.  Raises _Retry after sleeping (busy page, page-in) and
    _NeedMemory; requires the kernel lock."""
    o, pi, page, slot = vm_object.lookup(top, pindex)
    if page is None and slot is None and top.window is not None:
        w = window_range(top, pindex)
        if w is not None:
            raise WindowPage(w, pindex - w._first)
    if page is not None and page.busy:
        page.wanted = True
        k.lockdrops += 1
        k.page_cv.wait()
        raise _Retry
    if slot is not None:
        pagein(k, o, pi, slot, advice, resv)
        raise _Retry
    if page is None:
        if not write and not alloc and not fill:
            return None
        page = _alloc(k, top, pindex, resv)
        page.dirty = write or not fill
        k.uvmexp.zerofills += 1
    elif page.obj is not top and write:
        src = page
        page = _alloc(k, top, pindex, resv, src.addr)
        # Other maps may read the old page through this object: they must
        # now see the copy, so drop every translation of the source.
        page_remove_all(src)
        k.uvmexp.cowfaults += 1
    return page


def fault_ahead(k: Kernel, vmap: VMMap, va: int, count: int, write: bool,
                fresh: list[VMPage] | None = None, covered: int = 0) -> None:
    """After a fault at `va`, give up to `count` following pages of its
    entry translations without a fault each (vm_fault_prefault): a resident
    page of the chain is entered as the fault would enter it; for a write,
    an absent page of an object with no backing (nothing below can hold
    it) is zero-filled while memory is plentiful.  A new page below vpn
    `covered`, which the caller's write will overwrite whole, is left
    unzeroed and appended to `fresh`: the caller must zero what is still
    there if its copy never comes (an exception, a KeyboardInterrupt), so
    a recycled frame's bytes are never seen.  Stops at the first page that
    would need more (a swap slot, copy-on-write, a busy page, a memory
    wait).  Lock held; never sleeps."""
    m, e = resolve(vmap, va)
    if m is not vmap or e is None or e.obj is None or not e.prot & PROT_READ:
        return
    top = e.obj
    rd, wr = vmap.pmap.rd, vmap.pmap.wr
    writable = bool(e.prot & PROT_WRITE) and not e.needs_copy
    if write and not writable:
        return
    # Zero-fill only above the daemon's wake-up point: that one is left to faults.
    # Never into an object holding a host window: its window pages are not
    # rumpvm pages (a fault on one raises WindowPage).
    zero_ok = write and top.backing is None and top.window is None
    budget = min(k.physmem.avail_pages() - k.pagedaemon.freemin - 1, count) if zero_ok else 0
    vpn = va >> PAGE_SHIFT
    pindex = e.pindex(va)
    for v in range(vpn + 1, min(vpn + 1 + count, e.end >> PAGE_SHIFT)):
        pindex += 1
        if v in (wr if write else rd):
            continue
        o, _, page, slot = vm_object.lookup(top, pindex)
        if page is None:
            if budget <= 0 or slot is not None:
                return
            page = page_alloc(k, top, pindex, None, ACTIVE, fresh if v < covered else None)
            if page is None:
                return
            budget -= 1
            k.uvmexp.zerofills += 1
        elif page.busy or page.fake or (write and o is not top):
            return
        vmap.pmap.enter(v, page, writable and page.obj is top)


READAHEAD = {MADV_NORMAL: 7, MADV_SEQUENTIAL: 15, MADV_RANDOM: 0}  # pages after the faulting one
READAHEAD_MAX = 63  # the window a long sequential run grows to (one 64-page preadv)


def pagein(k: Kernel, obj: VMObject, pindex: int, slot: int, advice: int = MADV_NORMAL,
           resv: Reservation | None = None) -> None:
    """Read a swapped page back into `obj` at `pindex`, with the following
    pages of the object whose slots follow (read-ahead, one preadv) while
    memory is plentiful.  The pages are busy and the lock dropped during the
    read.  A checksum failure of the faulting page raises EIO and leaves the
    slot in place (the page stays unreadable, never wrong); a bad read-ahead
    page is just dropped."""
    # Read ahead only for a sequential pattern (the previous page-in of this
    # object was just before), as vm_fault's sequential heuristic does; the
    # window doubles while the pattern lasts, up to READAHEAD_MAX.
    if advice != MADV_RANDOM and (advice == MADV_SEQUENTIAL or obj.last_pagein == pindex - 1):
        ahead = min(max(2 * obj.readahead + 1, READAHEAD.get(advice, 7)), READAHEAD_MAX)
    else:
        ahead = 0
    if ahead and resv is None and make_room(k, ahead + 1):
        raise _Retry  # reclaimed for the window: the lock may have been dropped
    obj.readahead = ahead
    pages = [_alloc(k, obj, pindex, resv, BUSY)]
    # Read ahead only into frames above the daemon's wake-up point.
    room = k.physmem.avail_pages() - k.pagedaemon.freemin - 1
    for n in range(1, min(ahead, room) + 1):
        pi = pindex + n
        if pi >= obj.size or obj.swap.get(pi) != slot + n or pi in obj.pages:
            break
        page = page_alloc(k, obj, pi, None, INACTIVE, BUSY)  # unused read-ahead leaves first
        if page is None:
            break
        pages.append(page)
    obj.last_pagein = pindex + len(pages) - 1
    k.io_pages.update(pages)
    obj.pip += len(pages)
    err: VMError | None = None
    good: list[bool] = []
    assert k.swap is not None
    with k.unlocked():
        try:
            good = k.swap.read_run(slot, [p.addr for p in pages])
        except VMError as ex:
            err = ex
        except Exception as ex:  # a bug must not leave the pages busy forever
            err = VMError(errno.EIO, f"swap read at slot {slot}: {ex!r}")
    obj.pip -= len(pages)
    k.io_pages.difference_update(pages)
    for n, page in enumerate(pages):
        page.busy = page.fake = False
        if page.wanted:
            page.wanted = False
            k.page_cv.notify_all()
        if page.released or err is not None or not good[n]:
            page_free(k, page)
            continue
        page.dirty = False  # the swap copy is valid until the page is written
        k.uvmexp.pageins += 1
    pageable_again(k)  # a scan meanwhile had to pass over these busy pages
    if err is None and not good[0] and not pages[0].released:
        err = VMError(errno.EIO, f"swap slot {slot}: checksum mismatch")
    if err is not None and not pages[0].released:
        raise err


def wire_range(k: Kernel, vmap: VMMap, start: int, end: int, resv: Reservation | None = None,
               nowait: bool = False, access: int = PROT_READ) -> None:
    """Fault in and wire every page of [start, end) for `access`
    (vm_fault_wire: mlock reads, vslock faults as its caller will use it)."""
    for va in range(start, end, 1 << PAGE_SHIFT):
        vm_fault(k, vmap, va, access, wire=True, nowait=nowait, resv=resv)
