"""The swapper: swapping whole processes out and in (uvm_swapout_threads,
uvm_swapout, uvm_swapin, uvm_scheduler of NetBSD's uvm_glue.c).

Swapping a process out unwires its u-area (its kernel stack: pageable from
then on) and — beyond the BSD code, which left this as an XXX — deactivates
the private anonymous pages its address space maps, so the pagedaemon pages
them before anyone else's.  Its state shows as W.  Touching a swapped-out
process through the API swaps it back in (the u-area is wired again, paged
in if need be); the scheduler does the same for runnable processes, by
priority, whenever memory allows.

Policy (uvm_swapout_threads): every process asleep or stopped for at least
`maxslp` seconds goes; if none did and memory is still short, the one that
slept longest, else the running one resident longest.  Beyond the BSD code,
which swaps at most one such process per pass, the pass goes on while the
shortage is larger than what it made pageable, so a crowd of idle processes
cannot pin memory.

Lock: the kernel lock, held by every caller.  swapin may drop it (faults).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .constants import PAGE_SHIFT, USPACE
from .errors import VMError
from .page import INACTIVE
from .physmem import pool_room

if TYPE_CHECKING:
    from .kernel import Kernel
    from .proc import Proc

MAXSLP = 20.0  # seconds asleep after which a process is swapped out first
USPACE_PAGES = USPACE >> PAGE_SHIFT


def swappable(p: Proc) -> bool:
    return p.alive and not p.swapped and p.uarea != 0


def swapout(k: Kernel, p: Proc) -> int:
    """uvm_swapout: unwire the u-area and deactivate the process's private
    anonymous pages.  Returns the pages made pageable or deactivated; 0
    when not even the map entries to clip the u-area out can be had."""
    if not pool_room(k, entries=2):
        return 0
    k.kmem_map.unwire(p.uarea, p.uarea + USPACE)
    p.swapped = True
    p.swapped_at = time.monotonic()
    k.nswapped += 1
    made = USPACE_PAGES
    queues = k.queues
    vmap = p.vmspace
    for vpn, page in vmap.pmap.rd.items():
        if page.queue and not page.busy:
            found, e = vmap.lookup_entry(vpn << PAGE_SHIFT)
            if found and not e.shared:
                page.referenced = False
                queues.enqueue(page, INACTIVE)
                made += 1
    k.uvmexp.swapouts += 1
    return made


def swapin(k: Kernel, p: Proc, nowait: bool = False) -> bool:
    """uvm_swapin: wire the u-area again (paging it in).  With `nowait`
    (the pagedaemon's scheduler pass) give up instead of waiting for
    memory.  True if the process is resident again.  One swap-in at a time
    per process (PS_SWAPPINGIN): another caller sleeps until it ends
    rather than wire the u-area alongside it.  Lock held (dropped while
    the u-area pages in)."""
    while p.swapping_in:
        if nowait:
            return False
        k.lockdrops += 1
        k.page_cv.wait()
        k.check_open()
    if not p.swapped:  # the swap-in we waited for brought it back
        return True
    p.swapping_in = True
    try:
        k.kmem_map.wire(p.uarea, p.uarea + USPACE, nowait=nowait)
    except VMError:
        if not p.alive:  # it exited while the swap-in slept, leaving its u-area to us
            k.kmem_map.delete(p.uarea, p.uarea + USPACE)
            return False
        if nowait:
            return False
        raise
    finally:
        p.swapping_in = False
        k.page_cv.notify_all()
    if not p.alive:  # it exited while its u-area paged in, leaving the u-area to us
        k.kmem_map.delete(p.uarea, p.uarea + USPACE)
        return False
    p.swapped = False
    p.resident_since = time.monotonic()
    k.nswapped -= 1
    k.uvmexp.swapins += 1
    return True


def swapout_sleepers(k: Kernel) -> int:
    """The first rule of uvm_swapout_threads, run whenever memory is short:
    every process asleep or stopped for at least `maxslp` goes out.
    Returns the pages it made pageable."""
    now = time.monotonic()
    return sum(swapout(k, p) for p in list(k.proctab.values())
               if swappable(p) and p.run_state in "ST" and now - p.slept_at >= k.maxslp)


def swapout_threads(k: Kernel, short: int) -> int:
    """The rest of uvm_swapout_threads, when paging alone left memory
    `short` pages short: the longest-sleeping processes, then the
    longest-resident running ones, until the shortage is covered.
    Returns the pages it made pageable."""
    procs = [p for p in k.proctab.values() if swappable(p)]
    sleepers = sorted((p for p in procs if p.run_state in "ST"), key=lambda p: p.slept_at)
    runners = sorted((p for p in procs if p.run_state == "R"), key=lambda p: p.resident_since)
    made = 0
    for p in (*sleepers, *runners):
        if made >= short:
            break
        made += swapout(k, p)
    return made


def scheduler(k: Kernel) -> None:
    """uvm_scheduler: swap runnable swapped-out processes back in, highest
    priority first (time swapped out plus time slept), while there is room
    for a u-area above the pagedaemon's wake-up mark (pagedaemon thread)."""
    now = time.monotonic()
    ready = [p for p in k.proctab.values() if p.alive and p.swapped and p.run_state == "R"]
    ready.sort(key=lambda p: (now - p.swapped_at) + (now - p.slept_at if p.slept_at else 0.0), reverse=True)
    for p in ready:
        if k.physmem.avail_pages() <= k.pagedaemon.freemin + USPACE_PAGES:
            return
        if not swapin(k, p, nowait=True):
            return
