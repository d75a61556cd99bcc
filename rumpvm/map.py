"""vm_map: address maps and their entries (after FreeBSD's vm_map.c).

A map is a set of non-overlapping entries in [min, max), indexed by an
`EntryTree` (O(log n) lookup and first-fit findspace).  Each entry maps
[start, end) to an object at `offset` (bytes) with a protection, a maximum
protection, an inheritance, advice and a wiring count; `obj` is None for
anonymous memory not yet touched (the object is created on first fault).
A copy-on-write entry has `needs_copy` set until its first write shadows
the object.  A submap entry (`submap` set) delegates its range to another
map (kernel only).

Operations work on ranges by clipping entries to the range boundaries
(`clip_start`/`clip_end`), changing the entries inside, and re-merging
neighbours that became identical (`simplify_entry`).  Each public operation
checks the whole range first and changes nothing on failure.

Lock: the kernel lock (held by every caller; "the map must be locked").
Invariants (checked by Kernel.check): entries ordered, non-overlapping,
inside [min, max); `size` is the sum of entry sizes; prot <= max_prot;
pmap translations only where the entry allows the access.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from . import object as vm_object
from .constants import (
    INHERIT_COPY,
    MADV_AUTOSYNC,
    MADV_CORE,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_NOCORE,
    MADV_NORMAL,
    MADV_NOSYNC,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_ALL,
    PROT_READ,
    PROT_WRITE,
)
from .errors import VMError
from .map_tree import EntryTree, TreeNode
from .page import INACTIVE
from .physmem import pageable_again
from .pmap import Pmap

if TYPE_CHECKING:
    from .kernel import Kernel
    from .object import VMObject
    from .page import VMPage
    from .physmem import Reservation


class VMMapEntry(TreeNode):
    __slots__ = ("obj", "offset", "prot", "max_prot", "inheritance", "needs_copy",
                 "shared", "wired_count", "advice", "submap", "name", "nocore", "nosync", "grow_floor")

    def __init__(self, start: int, end: int, obj: VMObject | None = None, offset: int = 0,
                 prot: int = PROT_READ | PROT_WRITE, max_prot: int = PROT_ALL,
                 inheritance: int = INHERIT_COPY, shared: bool = False, name: str = "") -> None:
        super().__init__(start, end)
        self.obj = obj
        self.offset = offset
        self.prot = prot
        self.max_prot = max_prot
        self.inheritance = inheritance
        self.needs_copy = False
        self.shared = shared
        self.wired_count = 0
        self.advice = MADV_NORMAL
        self.submap: VMMap | None = None
        self.name = name
        self.nocore = False
        self.nosync = False
        # A grow-down stack's lowest entry: the lowest address it may grow
        # to (just above its guard page); 0 for every other entry.
        self.grow_floor = 0

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def pindex(self, va: int) -> int:
        return (va - self.start + self.offset) >> PAGE_SHIFT

    def copy(self, start: int | None = None, end: int | None = None) -> VMMapEntry:
        """A copy of this entry (attributes, object and offset; no references
        taken), optionally for the part [start, end)."""
        s = self.start if start is None else start
        new = VMMapEntry(s, self.end if end is None else end, self.obj, self.offset + (s - self.start),
                         self.prot, self.max_prot, self.inheritance, self.shared, self.name)
        new.needs_copy = self.needs_copy
        new.wired_count = self.wired_count
        new.advice = self.advice
        new.submap = self.submap
        new.nocore = self.nocore
        new.nosync = self.nosync
        new.grow_floor = self.grow_floor
        return new

    def set_object(self, obj: VMObject | None, offset: int = 0) -> None:
        """Point a linked entry at `obj` (references are the caller's)."""
        if self.obj is not None:
            self.obj.mappings.discard(self)
        self.obj = obj
        self.offset = offset
        if obj is not None:
            obj.mappings.add(self)

    def same_attrs(self, other: VMMapEntry) -> bool:
        return (self.prot == other.prot and self.max_prot == other.max_prot
                and self.inheritance == other.inheritance and self.needs_copy == other.needs_copy
                and self.shared == other.shared and self.wired_count == other.wired_count
                and self.advice == other.advice and self.name == other.name
                and self.nocore == other.nocore and self.nosync == other.nosync
                and self.submap is None and other.submap is None)

    def __repr__(self) -> str:
        oid = self.obj.id if self.obj is not None else None
        return (f"<entry {self.start:#x}-{self.end:#x} prot={self.prot} obj={oid}"
                f" off={self.offset:#x}{' nc' if self.needs_copy else ''}>")


class VMMap:
    """An address map: the entry tree, its pmap, and its bounds."""

    def __init__(self, kernel: Kernel, min_addr: int, max_addr: int, name: str = "",
                 pmap: Pmap | None = None) -> None:
        self.kernel = kernel
        self.min = min_addr
        self.max = max_addr
        self.name = name
        self.header = VMMapEntry(min_addr, min_addr)
        self.tree = EntryTree(self.header, max_addr)
        self.hint = self.header  # last entry lookup_entry found; never an unlinked one
        self.pmap = pmap if pmap is not None else Pmap()
        self.size = 0
        self.user = min_addr < 1 << 47
        # Pages held wired by wired entries, by vpn (vm_fault_unwire's
        # pmap_extract, kept explicitly so protection changes cannot lose them).
        self.wired: dict[int, VMPage] = {}
        # Sleepers in kmem_alloc_wait wait here for kmem_free_wakeup.
        self.space_cv = threading.Condition(kernel.lock)
        self.space_waiters = 0
        # The limits of the process whose call is running (RLIMIT_STACK,
        # RLIMIT_AS): a grow-down stack stays within both.  0: stacks do
        # not grow (kernel maps).
        self.stack_limit = 0
        self.as_limit = 0

    def space_wait(self) -> None:
        """Sleep until an entry of this map is deleted (kmem_alloc_wait);
        ESHUTDOWN if the kernel closes meanwhile.  Lock held."""
        self.space_waiters += 1
        self.kernel.lockdrops += 1
        try:
            self.space_cv.wait()
        finally:
            self.space_waiters -= 1
        self.kernel.check_open()

    # -- lookup ---------------------------------------------------------------

    def lookup_entry(self, addr: int) -> tuple[bool, VMMapEntry]:
        """(True, entry containing addr) or (False, entry before addr / header).
        The entry last found is tried first (FreeBSD's map->hint)."""
        h = self.hint
        if h.start <= addr < h.end:
            return True, h
        e = cast(VMMapEntry, self.tree.lookup(addr))
        if e is not self.header and addr < e.end:
            self.hint = e
            return True, e
        return False, e

    def entries(self) -> Iterator[VMMapEntry]:
        return iter(self.tree)  # type: ignore[arg-type]

    def entries_in(self, start: int, end: int) -> list[VMMapEntry]:
        """Entries intersecting [start, end), in order (a snapshot list)."""
        found, e = self.lookup_entry(start)
        if not found:
            e = e.next  # type: ignore[assignment]
        out = []
        while e is not self.header and e.start < end:
            out.append(e)
            e = e.next  # type: ignore[assignment]
        return out

    def first_hole(self, start: int, end: int) -> int | None:
        """The first address in [start, end) that no entry maps, else None."""
        addr = start
        for e in self.entries_in(start, end):
            if e.start > addr:
                return addr
            addr = e.end
        return addr if addr < end else None

    def require_mapped(self, start: int, end: int) -> list[VMMapEntry]:
        """The entries of [start, end), or ENOMEM if any part is unmapped."""
        hole = self.first_hole(start, end)
        if hole is not None:
            raise VMError(errno.ENOMEM, f"range {start:#x}-{end:#x} not mapped at {hole:#x}")
        return self.entries_in(start, end)

    def check_protection(self, start: int, end: int, prot: int) -> bool:
        """True if all of [start, end) is mapped with at least `prot` (an
        empty range: if `start` is mapped so)."""
        if start == end:
            found, e = self.lookup_entry(start)
            return found and e.prot & prot == prot
        if self.first_hole(start, end) is not None:
            return False
        return all(e.prot & prot == prot for e in self.entries_in(start, end))

    def find_space(self, hint: int, length: int, align: int = PAGE_SIZE) -> int | None:
        hint = max(hint, self.min)
        addr = self.tree.find_space(hint, length, align)
        if addr is None or addr + length > self.max:
            return None
        return addr

    # -- entry surgery ----------------------------------------------------------

    def insert(self, entry: VMMapEntry) -> VMMapEntry:
        """Link `entry` into a free range (the caller checked it is free and
        primed the entry pool; the entry's object reference is the caller's).
        Returns the entry after simplification."""
        self._link(self.tree.lookup(entry.start), entry)
        return self.simplify_entry(entry)

    def _link(self, prev: TreeNode, entry: VMMapEntry) -> None:
        self.kernel.pooltab["vm_map_entry"].get()
        self.tree.insert_after(prev, entry)
        self.size += entry.end - entry.start
        if entry.obj is not None:
            entry.obj.mappings.add(entry)

    def _unlink(self, entry: VMMapEntry) -> None:
        if self.hint is entry:
            self.hint = self.header
        self.tree.remove(entry)
        self.size -= entry.end - entry.start
        self.kernel.pooltab["vm_map_entry"].put()
        if entry.obj is not None:
            entry.obj.mappings.discard(entry)

    def _split(self, entry: VMMapEntry, at: int) -> VMMapEntry:
        """Cut `entry` at `at`: it keeps [start, at), and the part [at, end)
        becomes a new linked entry sharing its object (_vm_map_clip_start:
        an entry without an object gets one first, so the pieces share it
        and can merge again).  The caller primed the entry and object pools."""
        if entry.obj is None and entry.submap is None and entry.name != "pager":
            entry.set_object(vm_object.allocate(self.kernel, entry.npages), 0)
        back = entry.copy(at)
        back.grow_floor = 0  # only the lowest piece of a stack grows
        entry.end = at
        self.size -= back.end - back.start
        if back.obj is not None:
            back.obj.ref_count += 1
        self._link(entry, back)
        return back

    def clip_start(self, entry: VMMapEntry, addr: int) -> VMMapEntry:
        """Split so that an entry begins at `addr`; returns that entry."""
        if addr <= entry.start:
            return entry
        return self._split(entry, addr)

    def clip_end(self, entry: VMMapEntry, addr: int) -> None:
        """Make `entry` end at `addr`, the part after becoming its own entry."""
        if addr < entry.end:
            self._split(entry, addr)

    def pieces(self, start: int, end: int) -> list[VMMapEntry]:
        """Clip the entries of [start, end) to exactly that range and return
        them in order (the range iterator of every map operation)."""
        ents = self.entries_in(start, end)
        if ents:
            ents[0] = self.clip_start(ents[0], start)
            self.clip_end(ents[-1], end)
        return ents

    def simplify_entry(self, entry: VMMapEntry) -> VMMapEntry:
        """Merge `entry` with neighbours that map contiguously with identical
        attributes.  Returns the surviving entry."""
        for node in (entry.prev, entry.next):
            if node is self.header:
                continue
            neighbour = cast(VMMapEntry, node)
            lo, hi = (neighbour, entry) if neighbour is entry.prev else (entry, neighbour)
            if lo.end != hi.start or lo.obj is not hi.obj or not lo.same_attrs(hi):
                continue
            if lo.obj is not None and lo.offset + (lo.end - lo.start) != hi.offset:
                continue
            # Keep `entry`, absorb the neighbour.
            self._unlink(neighbour)
            if neighbour is lo:
                entry.offset = lo.offset
                entry.start = lo.start
                entry.grow_floor = lo.grow_floor
            else:
                entry.end = hi.end
            self.tree.bounds_changed(entry)
            self.size += neighbour.end - neighbour.start
            if entry.obj is not None:
                vm_object.deallocate(self.kernel, entry.obj)
        return entry

    def simplify_range(self, start: int, end: int) -> None:
        for e in self.entries_in(max(self.min, start - 1), min(self.max, end + 1)):
            if e.next is not e:  # not already merged away
                self.simplify_entry(e)

    # -- range operations (callers validated arguments) -----------------------

    def delete(self, start: int, end: int) -> None:
        """Remove all mappings in [start, end) (holes allowed), freeing the
        pages and swap slots that nothing reaches any more.  The caller
        primed the pools for two clips."""
        for e in self.pieces(start, end):
            if e.wired_count:
                self._unwire_pages(e)
            self.pmap.remove(e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT)
            self._unlink(e)
            if e.submap is not None:
                e.submap.destroy()
            self._drop_object(e)
        self._deleted()

    def _drop_object(self, e: VMMapEntry) -> None:
        """An unlinked entry lets go of its object: the pages and slots
        only it reached are freed."""
        k = self.kernel
        obj = e.obj
        if obj is k.kernel_object:
            vm_object.page_remove(k, obj, e.pindex(e.start), e.pindex(e.end))
        elif obj is not None and obj.ref_count > 1:
            vm_object.release(k, obj, e.pindex(e.start), e.pindex(e.end))
        vm_object.deallocate(k, obj)

    def _deleted(self) -> None:
        """Space and memory were freed: wake who waits for either."""
        k = self.kernel
        self.space_cv.notify_all()
        k.mem_cv.notify_all()
        if k.nswapped:
            k.pagedaemon.wake()  # the scheduler may swap someone back in

    def destroy(self) -> None:
        """Remove every mapping (exit): what delete does over the whole map,
        but the translations and the entry index go at once, not entry by
        entry.  Lock held."""
        k = self.kernel
        ents = list(self.entries())
        for e in ents:
            if e.wired_count:
                self._unwire_pages(e)
        self.pmap.clear()
        self.tree.clear()
        self.hint = self.header
        self.size = 0
        pool = k.pooltab["vm_map_entry"]
        for e in ents:
            pool.put()
            if e.obj is not None:
                e.obj.mappings.discard(e)
        for e in ents:
            if e.submap is not None:
                e.submap.destroy()
            self._drop_object(e)
        self._deleted()

    def link_sorted(self, ents: list[VMMapEntry]) -> None:
        """Link `ents` (sorted, not overlapping) into this empty map at once
        (fork); the caller primed the entry pool and owns the object
        references.  Lock held."""
        pool = self.kernel.pooltab["vm_map_entry"]
        for e in ents:
            pool.get()
            self.size += e.end - e.start
            if e.obj is not None:
                e.obj.mappings.add(e)
        self.tree.build(list(ents))

    def protect(self, start: int, end: int, prot: int, set_max: bool) -> None:
        """mprotect: check every entry first (ENOMEM hole, EACCES beyond max),
        then apply."""
        ents = self.require_mapped(start, end)
        for e in ents:
            if e.submap is not None:
                raise VMError(errno.EINVAL, "cannot protect a submap")
            if prot & ~e.max_prot:
                raise VMError(errno.EACCES, f"prot {prot:#x} exceeds max protection {e.max_prot:#x}"
                              f" at {max(start, e.start):#x}")
        for e in self.pieces(start, end):
            old = e.prot
            if set_max:
                e.max_prot = prot
                e.prot &= prot
            else:
                e.prot = prot
            if e.prot != old:
                self.pmap.protect(e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT,
                                  bool(e.prot & PROT_READ), bool(e.prot & PROT_WRITE))
        self.simplify_range(start, end)

    def set_inheritance(self, start: int, end: int, inheritance: int) -> None:
        """minherit: like vm_map_inherit, holes in the range are skipped."""
        for e in self.pieces(start, end):
            e.inheritance = inheritance
        self.simplify_range(start, end)

    def set_attr(self, start: int, end: int, **attrs: object) -> None:
        """Set entry attributes (advice, nocore, nosync) over a mapped range."""
        self.require_mapped(start, end)
        for e in self.pieces(start, end):
            for name, value in attrs.items():
                setattr(e, name, value)
        self.simplify_range(start, end)

    def madvise(self, start: int, end: int, advice: int) -> None:
        """madvise over a mapped range (ENOMEM on a hole).  MADV_DONTNEED
        deactivates (BSD: data kept); MADV_FREE discards the pages of
        private memory that no other mapping, shadow or handle reaches and
        that shadows nothing (they read back as zeros), and is a no-op
        elsewhere; MADV_WILLNEED maps resident pages and pages in swapped
        ones (never allocating zeros)."""
        ents = self.require_mapped(start, end)
        if advice in (MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL):
            self.set_attr(start, end, advice=advice)
        elif advice in (MADV_NOSYNC, MADV_AUTOSYNC):
            self.set_attr(start, end, nosync=advice == MADV_NOSYNC)
        elif advice in (MADV_NOCORE, MADV_CORE):
            self.set_attr(start, end, nocore=advice == MADV_NOCORE)
        elif advice == MADV_WILLNEED:
            self._willneed(ents, start, end)
        elif advice == MADV_DONTNEED:
            queues = self.kernel.queues
            for vpn in self.pmap.vpns_in(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
                page = self.pmap.rd[vpn]
                if page.queue:
                    page.referenced = False
                    queues.enqueue(page, INACTIVE)
        elif advice == MADV_FREE:
            for e in ents:
                obj = e.obj
                if e.needs_copy and obj is not None and obj.ref_count == 1:
                    e.needs_copy = False  # the copy's other side is gone (as a write fault does)
                if obj is None or e.shared or e.needs_copy or obj.backing is not None or e.wired_count:
                    continue
                s, t = max(start, e.start), min(end, e.end)
                base = e.pindex(e.start) - (e.start >> PAGE_SHIFT)
                for a, b in vm_object.unreached(obj, e.pindex(s), e.pindex(t), exclude=e):
                    self.pmap.remove(a - base, b - base)
                    vm_object.page_remove(self.kernel, obj, a, b)

    def _willneed(self, ents: list[VMMapEntry], start: int, end: int) -> None:
        from .fault import vm_fault
        for e in ents:
            if e.obj is None or not e.prot & PROT_READ:
                continue
            for va in range(max(start, e.start), min(end, e.end), PAGE_SIZE):
                _, _, page, slot = vm_object.lookup(e.obj, e.pindex(va))
                if page is not None or slot is not None:
                    vm_fault(self.kernel, self, va, PROT_READ)

    def wire(self, start: int, end: int, resv: Reservation | None = None, nowait: bool = False,
             access: int = PROT_READ) -> None:
        """vm_map_wire: wire every entry of the mapped range and fault its
        pages in for `access` (taking frames from `resv`).  On failure
        everything this call wired is unwired again and the entries merged
        back."""
        from .fault import wire_range
        k = self.kernel
        done: list[tuple[int, int]] = []
        try:
            for e in self.pieces(start, end):
                if e.wired_count:
                    continue
                e.wired_count = 1
                if self.user:
                    k.wired_user_pages += e.npages
                done.append((e.start, e.end))
                wire_range(k, self, e.start, e.end, resv, nowait, access)
        except BaseException:
            for s, t in done:
                self.unwire(s, t)
            raise
        self.simplify_range(start, end)

    def unwire(self, start: int, end: int) -> None:
        """vm_map_unwire over [start, end) (holes skipped)."""
        for e in self.pieces(start, end):
            if e.wired_count:
                self._unwire_pages(e)
        self.simplify_range(start, end)

    def _unwire_pages(self, e: VMMapEntry) -> None:
        """Unwire the pages a wired entry holds (recorded in `wired`)."""
        k = self.kernel
        for vpn in range(e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT):
            page = self.wired.pop(vpn, None)
            if page is not None:
                k.queues.unwire(page)
        if self.user:
            k.wired_user_pages -= e.npages
        e.wired_count = 0
        pageable_again(k)


SGROWSIZ = 128 << 10  # stack growth granularity (FreeBSD's sgrowsiz)


def stack_size(vmap: VMMap, lowest: VMMapEntry) -> int:
    """Bytes of the stack whose lowest entry is `lowest`: it and the
    contiguous "[stack]" entries above it (lock held)."""
    size, e = 0, lowest
    while e is not vmap.header and e.name == STACK_NAME and (e is lowest or e.start == e.prev.end):
        size += e.end - e.start
        e = e.next  # type: ignore[assignment]
    return size


STACK_NAME = "[stack]"


def stack_growth(vmap: VMMap, va: int) -> tuple[VMMapEntry, int] | None:
    """If `va` lies in the growth area of a grow-down stack of `vmap` —
    above its guard page, below its lowest entry, with nothing mapped in
    between — and growing there stays within the map's stack limit: the
    stack's lowest entry and the start it would grow to (SGROWSIZ steps).
    Lock held."""
    if not vmap.stack_limit:
        return None
    found, prev = vmap.lookup_entry(va)
    if found or prev.next is vmap.header:
        return None
    s = cast(VMMapEntry, prev.next)
    page = va & ~PAGE_MASK
    floor = max(s.grow_floor, prev.end if prev is not vmap.header else 0)
    if not s.grow_floor or page < floor:
        return None
    room = min(vmap.stack_limit - stack_size(vmap, s), vmap.as_limit - vmap.size)
    step = -(-(s.start - page) // SGROWSIZ) * SGROWSIZ  # whole SGROWSIZ steps
    new_start = max(floor, s.start - step, s.start - room // PAGE_SIZE * PAGE_SIZE)
    return (s, new_start) if new_start <= page else None


def growstack(vmap: VMMap, va: int) -> bool:
    """vm_map_growstack: grow the stack below `va` to cover it (see
    stack_growth); True if it grew.  Lock held; the caller primed one map
    entry."""
    growth = stack_growth(vmap, va)
    if growth is None:
        return False
    s, new_start = growth
    delta = s.start - new_start
    if not s.wired_count and (s.obj is None or (not s.needs_copy and s.offset >= delta)):
        # Extend the entry itself (its object, if any, covers the space).
        s.start = new_start
        if s.obj is not None:
            s.offset -= delta
        vmap.size += delta
        vmap.tree.bounds_changed(s)
        return True
    low = s.copy(new_start, s.start)
    low.obj, low.offset, low.needs_copy, low.wired_count = None, 0, False, 0
    s.grow_floor = 0
    vmap.insert(low)
    return True


def stack_range_free(vmap: VMMap, start: int, end: int) -> bool:
    """Nothing mapped in [start, end), and no stack whose reservation (down
    to its guard page) reaches into it (lock held)."""
    if vmap.entries_in(start, end):
        return False
    _, prev = vmap.lookup_entry(start)
    above = prev.next
    return above is vmap.header or not above.grow_floor or above.grow_floor - PAGE_SIZE >= end  # type: ignore[attr-defined]
