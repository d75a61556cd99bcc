"""VM objects: anonymous memory, shadow chains, and collapse.

An object is a sparse array of pages (`pages`: pindex -> VMPage) plus the
swap slots of its paged-out pages (`swap`: pindex -> slot).  Its `size` is
in pages.  A shadow object sits in front of a `backing` object at
`backing_offset` (pages): a lookup that misses in the shadow continues in the
backing object — this is copy-on-write (`uao_create`, `vm_object_shadow`).

References: every map entry, every shadow whose `backing` is this object, and
every user handle (`Kernel.create_object`) holds one reference.  When the
count falls to 1 and the remaining reference is a single shadow, the shadow
absorbs this object (`collapse`), so fork/exit cycles do not grow chains.

Lock: the kernel lock.  `pip` (paging in progress) counts pages of the
object under I/O; an object with pip > 0 is not collapsed.
Invariants: page.obj is self and page.pindex is its key for every page;
a pindex is never both resident and swapped in the same object except for a
clean page whose swap copy is still valid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .pmap import page_remove_all

if TYPE_CHECKING:
    from .kernel import Kernel
    from .page import VMPage


class VMObject:
    __slots__ = ("id", "type", "size", "ref_count", "handles", "pages", "swap",
                 "backing", "backing_offset", "shadows", "pip", "dead", "kernel", "last_pagein")

    def __init__(self, kernel: "Kernel", oid: int, size: int, type_: str = "anon") -> None:
        self.kernel = kernel
        self.id = oid
        self.type = type_
        self.size = size
        self.ref_count = 1
        self.handles = 0
        self.pages: dict[int, "VMPage"] = {}
        self.swap: dict[int, int] = {}
        self.backing: VMObject | None = None
        self.backing_offset = 0
        self.shadows: set[VMObject] = set()
        self.pip = 0
        self.dead = False
        self.last_pagein = -2  # pindex of the last page-in (read-ahead heuristic)

    def __repr__(self) -> str:
        return f"<VMObject {self.id} {self.type} size={self.size} refs={self.ref_count}>"

    def detach(self) -> None:
        """Drop the reference that `Kernel.create_object` gave the caller."""
        self.kernel.detach_object(self)

    def pindex_bound_errors(self) -> bool:
        return any(not 0 <= i < self.size for i in self.pages) or any(not 0 <= i < self.size for i in self.swap)

    def chain_length(self) -> int:
        n, o = 0, self
        while o is not None:
            n, o = n + 1, o.backing
        return n


def allocate(k: "Kernel", size: int, type_: str = "anon") -> VMObject:
    """A new object of `size` pages with one reference.  Requires the lock;
    the caller has primed the object pool."""
    k.pooltab["vm_object"].get()
    obj = VMObject(k, k.next_object_id(), size, type_)
    k.objtab[obj.id] = obj
    return obj


def shadow(k: "Kernel", source: VMObject, offset: int, size: int) -> VMObject:
    """A new object of `size` pages in front of `source` at page `offset`.

    The caller's reference to `source` passes to the new shadow.
    """
    obj = allocate(k, size)
    obj.backing = source
    obj.backing_offset = offset
    source.shadows.add(obj)
    return obj


def deallocate(k: "Kernel", obj: VMObject | None) -> None:
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
        backing = _terminate(k, obj)
        obj = backing


def _terminate(k: "Kernel", obj: VMObject) -> VMObject | None:
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


def page_remove(k: "Kernel", obj: VMObject, start: int, end: int | None) -> None:
    """Free the pages and swap slots of `obj` in [start, end) (end None: all).
    A busy page is disowned and marked released; its I/O completion frees it."""
    def inside(pindex: int) -> bool:
        return start <= pindex and (end is None or pindex < end)

    for pindex, page in [(i, p) for i, p in obj.pages.items() if inside(i)]:
        del obj.pages[pindex]
        page_remove_all(page)
        if page.busy:
            page.released = True
            page.obj = None
        else:
            page.obj = None
            k.page_free(page)
    for pindex in [i for i in obj.swap if inside(i)]:
        k.swap_free(obj.swap.pop(pindex))


def collapse(k: "Kernel", obj: VMObject) -> None:
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
            else:
                page_remove_all(page)
                k.page_free(page)
        for pindex, slot in b.swap.items():
            new = pindex - off
            if 0 <= new < obj.size and new not in obj.pages and new not in obj.swap:
                obj.swap[new] = slot
            else:
                k.swap_free(slot)
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


def lookup(obj: VMObject, pindex: int) -> tuple[VMObject, int, "VMPage | None", int | None]:
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
