"""VM objects: anonymous memory, shadow chains, and collapse.

An object is a sparse array of pages (`pages`: pindex -> VMPage) plus the
swap slots of its paged-out pages (`swap`: pindex -> slot).  Its `size` is
in pages.  A shadow object sits in front of a `backing` object at
`backing_offset` (pages): a lookup that misses in the shadow continues in the
backing object — this is copy-on-write (`uao_create`, `vm_object_shadow`).

References: every map entry, every shadow whose `backing` is this object, and
every user handle (`Kernel.create_object`) holds one reference.  The entries
that map the object are also kept in `mappings`, so the pindex ranges that
anything can still reach are known (`reached`): pages and swap slots outside
them are garbage and are freed when a mapping goes (`release`) — the
generalisation of FreeBSD's one-mapping rule in vm_map_delete.  When the
count falls to 1 and the remaining reference is a single shadow, the shadow
absorbs this object (`collapse`), so fork/exit cycles do not grow chains.

Lock: the kernel lock.  `pip` (paging in progress) counts pages of the
object under I/O; an object with pip > 0 is not collapsed.
Invariants: page.obj is self and page.pindex is its key for every page;
a pindex is both resident and swapped only after a page-in: the slot keeps
the copy the page came from (valid while the page is clean, replaced at the
next pageout); ref_count = len(mappings) +
len(shadows) + handles; every page and slot lies inside `reached` (check.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .constants import PAGE_SHIFT
from .physmem import page_free, swap_free
from .pmap import page_remove_all

if TYPE_CHECKING:
    from .kernel import Kernel
    from .map import VMMapEntry
    from .page import VMPage


class VMObject:
    __slots__ = ("id", "type", "size", "ref_count", "handles", "pages", "swap", "mappings",
                 "backing", "backing_offset", "shadows", "pip", "dead", "kernel", "last_pagein",
                 "readahead", "window")

    def __init__(self, kernel: Kernel, oid: int, size: int, type_: str = "anon") -> None:
        self.kernel = kernel
        self.window: Any = None  # the host window whose pages these are (window.py)
        self.id = oid
        self.type = type_
        self.size = size
        self.ref_count = 1
        self.handles = 0
        self.pages: dict[int, VMPage] = {}
        self.swap: dict[int, int] = {}
        self.mappings: set[VMMapEntry] = set()  # linked map entries whose obj is this
        self.backing: VMObject | None = None
        self.backing_offset = 0
        self.shadows: set[VMObject] = set()
        self.pip = 0
        self.dead = False
        self.last_pagein = -2  # pindex of the last page-in (read-ahead heuristic)
        self.readahead = 0  # its read-ahead window: grows while page-ins stay sequential

    def __repr__(self) -> str:
        return f"<VMObject {self.id} {self.type} size={self.size} refs={self.ref_count}>"

    def detach(self) -> None:
        """Drop the reference that `Kernel.create_object` gave the caller."""
        self.kernel.detach_object(self)

    def pindex_bound_errors(self) -> bool:
        return any(not 0 <= i < self.size for i in self.pages) or any(not 0 <= i < self.size for i in self.swap)


def allocate(k: Kernel, size: int, type_: str = "anon") -> VMObject:
    """A new object of `size` pages with one reference.  Requires the lock;
    the caller has primed the object pool."""
    k.pooltab["vm_object"].get()
    obj = VMObject(k, k.next_object_id(), size, type_)
    k.objtab[obj.id] = obj
    return obj


def shadow(k: Kernel, source: VMObject, offset: int, size: int) -> VMObject:
    """A new object of `size` pages in front of `source` at page `offset`.

    The caller's reference to `source` passes to the new shadow.
    """
    obj = allocate(k, size)
    obj.backing = source
    obj.backing_offset = offset
    source.shadows.add(obj)
    return obj


def deallocate(k: Kernel, obj: VMObject | None) -> None:
    """Drop one reference; terminate the object (and walk down its chain)
    when the last one goes."""
    while obj is not None:
        obj.ref_count -= 1
        if obj.ref_count == 1 and len(obj.shadows) == 1:
            # The one remaining reference is a shadow: let it absorb us.
            collapse(k, next(iter(obj.shadows)))
            return
        if obj.ref_count > 0:
            return
        first, last = obj.backing_offset, obj.backing_offset + obj.size
        backing = _terminate(k, obj)
        if backing is not None and backing.ref_count > 1:
            # What only this shadow reached of its backing is garbage now.
            release(k, backing, first, last)
        obj = backing


def _terminate(k: Kernel, obj: VMObject) -> VMObject | None:
    """Free an unreferenced object's pages and swap; returns its backing
    object, whose reference the caller must drop."""
    page_remove(k, obj, 0, None)
    obj.dead = True
    backing = obj.backing
    if backing is not None:
        backing.shadows.discard(obj)
    obj.backing = None
    del k.objtab[obj.id]
    k.pooltab["vm_object"].put()
    return backing


def keys_in(d: Mapping[int, object], start: int, end: int | None) -> list[int]:
    """The keys of `d` in [start, end), walking the smaller of the two."""
    if end is not None and end - start <= len(d):
        return [i for i in range(start, end) if i in d]
    return [i for i in d if start <= i and (end is None or i < end)]


def page_remove(k: Kernel, obj: VMObject, start: int, end: int | None) -> None:
    """Free the pages and swap slots of `obj` in [start, end) (end None: all).
    A busy page is disowned and marked released; its I/O completion frees it.
    Requires the kernel lock."""
    for pindex in keys_in(obj.pages, start, end):
        page = obj.pages.pop(pindex)
        page_remove_all(page)
        page.obj = None
        if page.busy:
            page.released = True
        else:
            page_free(k, page)
    for pindex in keys_in(obj.swap, start, end):
        swap_free(k, obj.swap.pop(pindex))


Ranges = list[tuple[int, int]]


def _merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for s, t in sorted(ranges):
        if out and s <= out[-1][1]:
            if t > out[-1][1]:
                out[-1] = (out[-1][0], t)
        else:
            out.append((s, t))
    return out


def reached(obj: VMObject, exclude: VMMapEntry | None = None, lo: int = 0, hi: int | None = None,
            kernel_by_mappings: bool = False) -> Ranges:
    """The pindex ranges of `obj` within [lo, hi) that a mapping (other
    than `exclude`), a shadow, or a handle can still reach, merged and
    sorted.  The kernel object counts as wholly reached (its ranges are
    freed by kmem explicitly) unless `kernel_by_mappings`, as check() asks.
    Requires the kernel lock."""
    top = obj.size if hi is None else hi
    whole = not kernel_by_mappings if obj.type == "kernel" else bool(obj.handles)
    if whole:
        return [(lo, top)]
    out: Ranges = []
    for e in obj.mappings:
        if e is not exclude:
            first = e.offset >> PAGE_SHIFT
            if first < top and first + e.npages > lo:
                out.append((first, first + e.npages))
    for s in obj.shadows:
        off = s.backing_offset
        if off < top and off + s.size > lo:
            out += [(a + off, b + off) for a, b in reached(s, exclude, max(0, lo - off), top - off)]
    return _merge(out)


def unreached(obj: VMObject, start: int, end: int, exclude: VMMapEntry | None = None) -> Ranges:
    """The parts of [start, end) of `obj` that nothing but `exclude` reaches."""
    holes: Ranges = []
    pos = start
    for a, b in reached(obj, exclude, start, end):
        if b <= pos:
            continue
        if a >= end:
            break
        if a > pos:
            holes.append((pos, a))
        pos = max(pos, b)
    if pos < end:
        holes.append((pos, end))
    return holes


def release(k: Kernel, obj: VMObject | None, start: int, end: int) -> None:
    """A mapping of [start, end) of `obj` went away: free the pages and slots
    there that nothing reaches any more, in `obj` and down its backing chain.
    Requires the kernel lock; the mapping is already unlinked."""
    while obj is not None and obj.ref_count > 0 and not obj.handles and obj.type != "kernel":
        s, t = max(0, start), min(obj.size, end)
        if keys_in(obj.pages, s, t) or keys_in(obj.swap, s, t):  # else nothing to free here
            for a, b in unreached(obj, s, t):
                page_remove(k, obj, a, b)
        start += obj.backing_offset
        end += obj.backing_offset
        obj = obj.backing


def collapse(k: Kernel, obj: VMObject) -> None:
    """Merge backing objects referenced only by `obj` into `obj`."""
    while True:
        b = obj.backing
        if b is None or b.ref_count != 1 or b.pip or obj.pip or b.handles:
            return
        off = obj.backing_offset
        for pindex, page in list(b.pages.items()):
            new = pindex - off
            if 0 <= new < obj.size and new not in obj.pages and new not in obj.swap:
                page.obj = obj
                page.pindex = new
                obj.pages[new] = page
                slot = b.swap.pop(pindex, None)
                if slot is not None:  # a clean page's swap copy moves with it
                    obj.swap[new] = slot
            else:
                page_remove_all(page)
                page_free(k, page)
        for pindex, slot in b.swap.items():
            new = pindex - off
            if 0 <= new < obj.size and new not in obj.pages and new not in obj.swap:
                obj.swap[new] = slot
            else:
                swap_free(k, slot)
        b.pages.clear()
        b.swap.clear()
        obj.backing = b.backing
        obj.backing_offset = off + b.backing_offset
        if b.backing is not None:
            b.backing.shadows.discard(b)
            b.backing.shadows.add(obj)
        b.backing = None
        b.shadows.clear()
        b.ref_count = 0
        b.dead = True
        del k.objtab[b.id]
        k.pooltab["vm_object"].put()
        k.uvmexp.collapses += 1


def lookup(obj: VMObject, pindex: int) -> tuple[VMObject, int, VMPage | None, int | None]:
    """Walk the chain from `obj` for `pindex`: (object, pindex there, page,
    swap slot) of the first object that has it, or the last object with
    page and slot None when no object does."""
    o, pi = obj, pindex
    while True:
        page = o.pages.get(pi)
        if page is not None:
            return o, pi, page, None
        slot = o.swap.get(pi)
        if slot is not None:
            return o, pi, None, slot
        if o.backing is None:
            return o, pi, None, None
        pi += o.backing_offset
        o = o.backing
