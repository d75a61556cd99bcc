"""Host windows: real host memory whose pages rumpvm supplies.

`k.window(length)` maps `length` bytes of host memory backed by an
anonymous rumpvm object.  Host code (numpy, ctypes, C) reads and writes it
directly; the pages come from the fault engine in hypercall (uffd.c), a C
thread that serves userfaultfd faults without the GIL: zero-filled on
first touch, back from swap after eviction (checksummed), installed
write-protected so that only pages written since their last write-out are
written again.

Owns: the kernel's windows (`k.windows`), each window's swap slots (one per
page, reserved at creation, so eviction never allocates) and its budget of
frames charged to the memory limit (`physmem.charge`), the `host` process
whose MAP_SHARED mapping shows each window in /vm.

Memory and policy: the engine never holds more resident pages than its
budget, frames charged to the memory limit (`physmem.charge`): the minimum
(`WINDOW_MIN_PAGES`, the engine's floor, so a fault never waits for
Python) and as much as is free above the pagedaemon's target at creation.
The window's thread (`_service`) keeps a stub page (a VMPage with frame -1,
not in the object's `pages`) on the kernel's page queues for every resident
window page, from the engine's event queue, so the pagedaemon's policy
chooses among window pages and every other page alike: a stub it picks is
evicted by the engine (`evict`, in batches, the lock dropped for the
writes) and its frame of budget given back; a stub it deactivates is
parked by the engine (`park`), and the next touch of the page is a
refault the thread reports as a reference.  When the engine's spare
budget runs low it asks for more ahead of need; the thread charges
`GRANT_PAGES` more, reclaiming first by the policy (`memwait`) when
memory is short.  Only when the thread has not caught up does the engine
evict by itself (its own clock: a page parked, then evicted if untouched
when the hand returns), reported to the thread like any eviction and
counted as `selfevictions`.  Unused budget beyond a grant goes back at a
shortage (`trim`, a pagedaemon reclaimer).

Coherence: a window's object keeps no rumpvm pages in the window's range;
the window's host pages are the object's pages.  `Proc.read`/`write` of
any process mapping the object, `/vm` reads and `object_write` copy
straight from or to the window's host addresses (a fault there is served
by the engine like any host access); peeks (`object_peek`, /vm mem) read
without faulting anything in.  Such objects can be mapped MAP_SHARED only,
and cannot be wired.

Close: the window's pages leave with it, unless something else holds its
object (a process mapping, a handle): then the resident ones are copied
into the object and the swapped ones' slots handed to it (close_window).

Lock: the kernel lock for the bookkeeping here; the engine has its own
mutex and never takes the kernel lock or the GIL, so holding the kernel
lock while touching window memory is safe.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import threading
import weakref
from typing import TYPE_CHECKING, cast

import hypercall

from . import object as vm_object
from .constants import INHERIT_COPY, MAP_SHARED, PAGE_SHIFT, PAGE_SIZE, PROT_READ, PROT_WRITE
from .errors import VMError
from .page import ACTIVE, INACTIVE, VMPage
from .physmem import KEEP, Reservation, memwait, page_alloc, pageable_again

PRESENT, PARKED, SWAPPED = (hypercall.WINDOW_STATES.index(name) for name in ("present", "parked", "swapped"))

if TYPE_CHECKING:
    from .kernel import Kernel
    from .object import VMObject
    from .proc import Proc

log = logging.getLogger("rumpvm.window")

WINDOW_MIN_PAGES = 16  # charged at creation: the engine never waits for Python
GRANT_PAGES = 64  # budget granted at a time when the engine runs short
MAX_WINDOW = 1 << 40  # bytes: beyond any swap file rumpvm makes


class Window(mmap.mmap):
    """A host window: `address`, `len(w)`, the buffer protocol
    (`memoryview(w)`, `numpy.frombuffer(w, ...)`), indexing and slicing
    as any `mmap`, `obj`, `stats()`, `close()`, use as a context manager.
    The host mapping is the mmap's own, so views of the window keep it
    mapped: after close its bytes read as zeros (no longer rumpvm's) and
    the methods raise VMError(EBADF)."""

    _k: Kernel
    _hw: hypercall.HostWindow | None
    _obj: VMObject
    _first: int  # the object's pindex at the window's first page
    _npages: int
    _host_addr: int  # the mapping's address in the host process's map
    _thread: threading.Thread
    _slots: list[int]
    _budget: int  # frames charged for the engine (its budget)
    _busy: int  # stubs the pagedaemon holds for eviction (`hold`)
    _stubs: dict[int, VMPage]  # a stub on the page queues per resident page (by window index)
    _done: threading.Event  # set when a close has finished

    def _live(self) -> hypercall.HostWindow:
        hw = self._hw
        if hw is None:
            raise VMError(errno.EBADF, "window is closed")
        return hw

    @property
    def address(self) -> int:
        return self._live().addr

    @property
    def obj(self) -> VMObject:
        self._live()
        return self._obj

    def stats(self) -> dict[str, int]:
        """The engine's counters (hypercall.WINDOW_STATS)."""
        return self._live().stats()

    def close(self) -> None:
        """Stop serving faults, give back the window's slots and budget; the
        mapping goes when no view of it is left.  A second close (or one
        after the kernel's) is a no-op; one racing another returns when
        that one is done.  Takes the kernel lock."""
        if not self._done.is_set():
            close_window(self._k, self)
        try:
            super().close()
        except BufferError:  # views still exported: unmapped when they and the window are gone
            pass

    def resize(self, newsize: int) -> None:
        """A window's size is fixed: its engine serves exactly its pages."""
        raise VMError(errno.EINVAL, "a host window cannot be resized")

    def __enter__(self) -> Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        hw = self._hw
        state = "closed" if hw is None else f"{hw.addr:#x}"
        return f"<rumpvm window {state} {self._npages} pages obj={self._obj.id}>"


def _new_window(npages: int) -> Window:
    """An anonymous private host mapping that no fork copies."""
    try:
        w = Window(-1, npages << PAGE_SHIFT, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as e:
        raise VMError(e.errno or errno.ENOMEM, f"no host address space for a {npages}-page window") from None
    w.madvise(mmap.MADV_DONTFORK)
    w.madvise(mmap.MADV_NOHUGEPAGE)  # the engine moves base pages
    w._hw = None
    return w


def _address(w: Window) -> int:
    anchor = ctypes.c_char.from_buffer(w)  # an export, dropped at once
    addr = ctypes.addressof(anchor)
    del anchor
    return addr


def open_window(k: Kernel, length: int, obj: VMObject | None, offset: int) -> Window:
    """k.window: validate, reserve the slots and the minimum budget, start
    the engine, map the object in the host process.  Takes the kernel lock
    (not held on entry)."""
    for name, v in (("length", length), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be int")
    if length <= 0 or length & (PAGE_SIZE - 1) or length > MAX_WINDOW:
        raise VMError(errno.EINVAL, f"window length {length} must be a positive multiple of {PAGE_SIZE}")
    if offset < 0 or offset & (PAGE_SIZE - 1):
        raise VMError(errno.EINVAL, f"window offset {offset} must be a non-negative multiple of {PAGE_SIZE}")
    npages = length >> PAGE_SHIFT
    first = offset >> PAGE_SHIFT
    owned = obj is None
    if obj is None:
        if offset:
            raise VMError(errno.EINVAL, "an offset needs an object")
        obj = k.create_object(length)
    try:
        with k.gate:
            k.check_open()
            _check_object(k, obj, first, npages)
            _check_room(k, npages)  # before asking the host for the address space
            w = _new_window(npages)
            hw, slots, budget = _start_engine(k, _address(w), npages)
            w._k, w._hw, w._obj, w._first, w._npages = k, hw, obj, first, npages
            w._slots, w._budget, w._busy, w._stubs = slots, budget, 0, {}
            w._done = threading.Event()
            obj.window = w
            obj.ref_count += 1  # the window's own reference: the object outlives the host mapping
            k.windows.append(w)
        w._thread = threading.Thread(target=_service, args=(weakref.ref(w), hw), name="window-budget", daemon=True)
        w._thread.start()
        try:
            w._host_addr = host_proc(k).mmap(length, PROT_READ | PROT_WRITE, MAP_SHARED, obj=obj, offset=offset)
        except BaseException:
            close_window(k, w)
            raise
    finally:
        if owned:
            k.detach_object(obj)  # the host mapping holds the object now
    return w


def _check_object(k: Kernel, obj: VMObject, first: int, npages: int) -> None:
    """An object a window may take: this kernel's, anonymous, alive, no
    window yet, and nothing resident or on swap in the range (lock held)."""
    from .object import VMObject

    if not isinstance(obj, VMObject):
        raise TypeError("obj must be a rumpvm object (Kernel.create_object)")
    if obj.kernel is not k or k.objtab.get(obj.id) is not obj or obj.dead or obj.type != "anon":
        raise VMError(errno.EINVAL, f"object {obj.id} is not a live anonymous object of this kernel")
    if obj.window is not None:
        raise VMError(errno.EBUSY, f"object {obj.id} already backs a window")
    if obj.shadows or any(not e.shared or e.inheritance == INHERIT_COPY for e in obj.mappings):
        raise VMError(errno.EBUSY, f"object {obj.id} is mapped MAP_PRIVATE or inherited by copy "
                                   "(a window's object is shared only)")
    if first + npages > obj.size:
        raise VMError(errno.EINVAL, f"window pages {first}..{first + npages} beyond object {obj.id}'s "
                                    f"{obj.size} pages")
    busy = [i for i in (*obj.pages, *obj.swap) if first <= i < first + npages]
    if busy:
        raise VMError(errno.EBUSY, f"object {obj.id} has pages in the window's range (e.g. pindex "
                                   f"{min(busy)}); a window takes an untouched range")


def _check_room(k: Kernel, npages: int) -> int:
    """The window's minimum budget, after checking that the swap has a slot
    for each page and the limit room for that budget: ENOMEM otherwise
    (lock held)."""
    swap = k.swap
    # No swap: nothing to page to; no limit: nothing to hold back.  Either
    # way every page is charged now.
    budget = npages if swap is None or k.physmem.limit is None else min(npages, WINDOW_MIN_PAGES)
    if swap is not None and npages > swap.nslots - swap.inuse:
        raise VMError(errno.ENOMEM, f"window of {npages} pages: only {swap.nslots - swap.inuse} swap "
                                    "slots free (each window page has its own)")
    if k.physmem.limit is not None and budget << PAGE_SHIFT > k.physmem.limit:
        raise VMError(errno.ENOMEM, f"window of {npages} pages without swap: larger than the memory limit")
    return budget


def _start_engine(k: Kernel, addr: int, npages: int) -> tuple[hypercall.HostWindow, list[int], int]:
    """Charge the minimum budget, reserve one swap slot a page, start the
    engine; everything undone on failure (lock held; may wait for memory)."""
    swap = k.swap
    budget = _check_room(k, npages)
    deadline = None
    while not k.physmem.charge(budget << PAGE_SHIFT):
        deadline = memwait(k, deadline, budget)
    slots: list[int] = []
    try:
        while swap is not None and len(slots) < npages:
            got = swap.alloc(npages - len(slots))
            if got is None:
                raise VMError(errno.ENOMEM, "swap slots went while waiting for memory")
            slots.extend(range(got[0], got[0] + got[1]))
        try:
            hw = hypercall.HostWindow(addr, npages, swap.file.fd if swap is not None else -1, slots, budget)
        except OSError as e:
            raise VMError(e.errno or errno.EIO, e.strerror or str(e)) from None
    except BaseException:
        for s in slots:
            swap.free(s)  # type: ignore[union-attr]
        k.physmem.uncharge(budget << PAGE_SHIFT)
        raise
    return hw, slots, budget + _grant(k, hw, npages - budget)


def host_proc(k: Kernel) -> Proc:
    """The process named `host` whose map shows the windows (made on first
    use).  Lock not held."""
    with k.gate:
        p = k.host
    if p is None or not p.alive:
        p = k.spawn(name="host")
        with k.gate:
            k.host = p
    return p


def close_window(k: Kernel, w: Window) -> None:
    """Stop the engine, wait for the budget thread, give back slots and
    budget, unmap the host mapping.  If anything else holds the window's
    object (a process mapping, a handle), the window's contents stay the
    object's: resident pages are copied into frames (the budget they were
    charged to pays for them) and swapped pages keep their slots; the
    object dies with the host mapping otherwise.  A close that finds
    another under way returns when that one is done.  Takes the kernel
    lock (not held on entry) — the lock, not the gate: a close begun must
    finish while the kernel closes (it waits for this one, in
    Kernel.close)."""
    with k.lock:
        hw = w._hw
        if hw is not None:
            w._hw = None  # kernel accesses to the window get EBADF from now on
            hw.detach()  # the budget thread's wait returns; host code is still served
            k.mem_cv.notify_all()  # its thread may wait for memory (_take)
            for stub in w._stubs.values():
                k.queues.dequeue(stub)
            w._stubs.clear()
    if hw is None:
        w._done.wait()
        return
    try:
        _finish_close(k, w, hw)
    finally:
        w._done.set()


def _finish_close(k: Kernel, w: Window, hw: hypercall.HostWindow) -> None:
    """The rest of close_window, once the window is marked closed."""
    w._thread.join()
    obj = w._obj
    with k.lock:
        while w._busy:  # pageouts the pagedaemon started: the engine writes them
            k.mem_cv.wait()
        addr = getattr(w, "_host_addr", None)
        host = k.host
        kept: set[int] = set()
        if not k.closing and obj.ref_count > 1 + _host_refs(w, host, addr):
            kept = _close_keeping(k, w, hw)
        else:
            hw.close()
        last = hw.stats()
        for name in COUNTERS:
            k.window_totals[name] += last[name]
        hw.destroy()
        swap = k.swap
        for s in w._slots:
            if s not in kept:
                swap.free(s)  # type: ignore[union-attr]
        k.physmem.uncharge(w._budget << PAGE_SHIFT)
        w._budget = 0
        if k.mem_waiters:
            k.mem_cv.notify_all()
        obj.window = None
        k.windows.remove(w)
        vm_object.deallocate(k, obj)  # the window's reference
        if obj.ref_count > 0:  # what nothing else reaches of the window's range goes now
            vm_object.release(k, obj, w._first, w._first + w._npages)
    if addr is not None and host is not None and host.alive and not k.closed:
        host.munmap(addr, w._npages << PAGE_SHIFT)


def _host_refs(w: Window, host: Proc | None, addr: int | None) -> int:
    """The references the host process's mapping of the window holds on its
    object: none once that mapping went (munmap, or the process exited)."""
    if host is None or addr is None or not host.alive:
        return 0
    end = addr + (w._npages << PAGE_SHIFT)
    return sum(1 for e in host.vmspace.entries_in(addr, end) if e.obj is w._obj)


def _close_keeping(k: Kernel, w: Window, hw: hypercall.HostWindow) -> set[int]:
    """Close the engine giving its contents to the object: each resident
    page copied into a new page of the object (frames bought with the
    window's budget: the engine never holds more resident pages than its
    budget; a page past the frames the host gave goes to its slot), each
    swapped page's slot and checksum handed over.  Returns the slots kept.
    Lock held."""
    frames = k.physmem.frames_for_charge(min(w._budget, w._npages))
    w._budget = 0
    errors = hw.stats()["errors"]
    saved = hw.close_save([k.physmem.frame_location(f)[0] for f in frames])
    if hw.stats()["errors"] > errors:
        log.error("window %#x: some resident pages could not be kept at close (no frame and no slot)", hw.addr)
    obj, first = w._obj, w._first
    resv = Reservation()
    for i, frame in zip(saved, frames):
        resv.frames.append(frame)
        page_alloc(k, obj, first + i, resv, ACTIVE, KEEP)  # dirty: no swap copy
    for frame in frames[len(saved):]:
        k.physmem.free_frame(frame)
    kept: set[int] = set()
    if k.swap is not None:
        states, sums = hw.states(), hw.sums()
        for i, slot in enumerate(w._slots):
            if states[2 * i] == SWAPPED and states[2 * i + 1]:
                k.swap.sums[slot] = sums[i]
                obj.swap[first + i] = slot
                kept.add(slot)
    return kept


def _service(ref: weakref.ref[Window], hw: hypercall.HostWindow) -> None:
    """The window's thread: puts a stub page on the kernel's queues for each
    page the engine made resident (and takes it off when the engine
    evicted one by itself), marks refaulted pages referenced, and grants
    budget each time the engine ran short while memory is free."""
    while news := hw.wait():
        w = ref()
        if w is None:
            return
        k = w._k
        with k.lock:
            if w._hw is None:
                return
            if news & hypercall.WAIT_EVENTS:
                _drain(k, w, hw)
            if news & hypercall.WAIT_PRESSURE:
                _take(k, w, hw)
        del w


def _take(k: Kernel, w: Window, hw: hypercall.HostWindow) -> None:
    """Charge GRANT_PAGES more frames for the engine, reclaiming first if
    memory is short — a direct reclaim by the kernel's policy over every
    page queue, this window's stubs among them, whose eviction gives its
    budget back.  Gives up (the engine evicts by itself meanwhile) if the
    window closes or memory stays short for oom_timeout.  Lock held
    (dropped while waiting)."""
    want = min(GRANT_PAGES, w._npages - w._budget)
    if want <= 0:
        return
    deadline = None
    while not k.physmem.charge(want << PAGE_SHIFT):
        try:
            deadline = memwait(k, deadline, want)
        except VMError:  # OutOfMemory, or the kernel closed
            return
        if w._hw is not hw:
            return
    w._budget += want
    hw.grant(want)
    if k.physmem.avail_pages() < k.pagedaemon.freemin:
        k.pagedaemon.wake()


def _drain(k: Kernel, w: Window, hw: hypercall.HostWindow) -> None:
    """Bring the stubs up to date with the engine's page states (lock held)."""
    stubs, queues, touch = w._stubs, k.queues, k.touch
    new = 0
    for i, state, ref in hw.drain():
        stub = stubs.get(i)
        if state in (PRESENT, PARKED):
            if stub is None:
                stub = VMPage(w._obj, w._first + i, -1, hw.addr + (i << PAGE_SHIFT), cast(memoryview, None), 0)
                stub.dirty = False  # the engine knows (write-protect faults); the queues need not
                stubs[i] = stub
                queues.enqueue(stub, ACTIVE)
                new += 1
                ref = True
            if ref:
                stub.referenced = True
                if touch is not None:
                    touch(stub)
        elif stub is not None:  # the engine evicted it by itself (at its budget)
            del stubs[i]
            queues.dequeue(stub)
    if new:
        pageable_again(k)  # a scan that found nothing to evict may now


def _grant(k: Kernel, hw: hypercall.HostWindow, want: int) -> int:
    """At creation: charge and grant up to `want` more frames, as far as
    free memory stays above the pagedaemon's target; returns how many.
    Lock held."""
    pd = k.pagedaemon
    n = min(want, k.physmem.avail_pages() - max(pd.freetarg, pd.freemin) - GRANT_PAGES)
    if n <= 0 or not k.physmem.charge(n << PAGE_SHIFT):
        return 0
    hw.grant(n)
    return n


def trim(k: Kernel) -> int:
    """The pagedaemon's reclaimer: give back every window's budget that no
    resident page uses, beyond a grant's worth; returns the frames.  Lock
    held."""
    freed = 0
    for w in k.windows:
        if w._hw is not None:
            given = w._hw.trim(GRANT_PAGES)
            w._budget -= given
            k.physmem.uncharge(given << PAGE_SHIFT)
            freed += given
    return freed


def hold(stub: VMPage) -> None:
    """The pagedaemon took `stub` off its queue to evict it: the window
    counts it as in flight (check() and close_window know it is not lost)
    until `evict` is done with it.  Lock held."""
    stub.obj.window._busy += 1  # type: ignore[union-attr]


def evict(k: Kernel, stubs: list[VMPage]) -> int:
    """Evict window pages the pagedaemon chose (their stubs, taken off the
    queues with `hold`), a batch per window, with the lock dropped while
    the engines write; returns the frames given back.  Stubs of pages that
    did not go (touched meanwhile, or pinned) go back to the active queue.
    Lock held."""
    batches: dict[int, tuple[Window, list[VMPage]]] = {}
    for stub in stubs:
        w = stub.obj.window  # type: ignore[union-attr]
        batches.setdefault(id(w), (w, []))[1].append(stub)
    freed = 0
    for w, batch in batches.values():
        try:
            hw = w._hw
            if hw is None:  # closed meanwhile: its stubs are gone with it
                continue
            with k.unlocked():
                given, done = hw.evict([stub.pindex - w._first for stub in batch])
            w._budget -= given
            k.physmem.uncharge(given << PAGE_SHIFT)
            k.uvmexp.pdfreed += given
            freed += given
            for stub, went in zip(batch, done):
                i = stub.pindex - w._first
                if w._stubs.get(i) is not stub:  # the thread saw it go, or a new stub replaced it
                    continue
                if went:
                    del w._stubs[i]
                elif not stub.queue:
                    k.queues.enqueue(stub, ACTIVE)
        finally:
            w._busy -= len(batch)  # close_window waits for none in flight
            k.mem_cv.notify_all()
    return freed


def park(k: Kernel) -> None:
    """Park the window pages the pagedaemon deactivated since the last
    call (`queues.deactivated`): a touch of one then refaults, which the
    window's thread reports as a reference.  Lock held."""
    batches: dict[int, tuple[Window, list[int]]] = {}
    for stub in k.queues.deactivated:
        w = stub.obj.window if stub.obj is not None else None
        i = stub.pindex - w._first if w is not None else -1
        if w is not None and w._hw is not None and stub.queue == INACTIVE and w._stubs.get(i) is stub:
            batches.setdefault(id(w), (w, []))[1].append(i)
    k.queues.deactivated.clear()
    for w, pages in batches.values():
        assert w._hw is not None
        w._hw.park(pages)


def window_range(obj: VMObject, pindex: int) -> Window | None:
    """The window holding `obj`'s page `pindex`, if any (lock held)."""
    w = obj.window
    if w is not None and w._first <= pindex < w._first + w._npages:
        return w
    return None


COUNTERS = ("zerofills", "swapins", "refaults", "wpfaults", "evictions", "writes", "selfevictions")


def stats(k: Kernel) -> dict[str, int]:
    """Window counters over the kernel's life (closed windows' counts are
    kept in `k.window_totals`), and the live windows' resident pages.
    `window_faults` is every fault the engines served; the misses are
    `window_zerofills` + `window_swapins`.  Lock held."""
    totals = k.window_totals.copy()
    resident = 0
    for w in k.windows:
        if w._hw is not None:
            s = w._hw.stats()
            resident += s["resident"]
            for name in COUNTERS:
                totals[name] += s[name]
    out = {"windows": len(k.windows), "window_resident": resident,
           "window_faults": totals["zerofills"] + totals["swapins"] + totals["refaults"] + totals["wpfaults"]}
    out.update((f"window_{name}", totals[name]) for name in COUNTERS)
    return out
