"""vmspaces: a process's address space, and fork/exec/unshare of it.

`vmspace_fork` copies a map entry by entry according to inheritance
(vm_map_copy_entry): INHERIT_NONE leaves the range out of the child;
INHERIT_SHARE gives the child the same object (created now if the entry was
still objectless); INHERIT_COPY marks parent and child needs-copy over the
same object and write-protects the parent's translations, so the first
write on either side shadows the object.  No page is touched: a fork costs
O(entries + resident translations of COW ranges), not O(memory).
Wired entries are copied eagerly (their pages cannot be shared COW).

Lock: the kernel lock, held by the caller; the entry and object pools are
primed by the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import object as vm_object
import hypercall

from .constants import INHERIT_NONE, INHERIT_SHARE, PAGE_SHIFT, VM_MAXUSER_ADDRESS, VM_MIN_ADDRESS
from .map import VMMap, VMMapEntry

if TYPE_CHECKING:
    from .kernel import Kernel


def vmspace_alloc(k: "Kernel", name: str) -> VMMap:
    return VMMap(k, VM_MIN_ADDRESS, VM_MAXUSER_ADDRESS, name)


def _copy_entry(src: VMMapEntry) -> VMMapEntry:
    dst = VMMapEntry(src.start, src.end, src.obj, src.offset, src.prot, src.max_prot,
                     src.inheritance, src.shared, src.name)
    dst.needs_copy = src.needs_copy
    dst.advice = src.advice
    dst.nocore = src.nocore
    dst.nosync = src.nosync
    return dst


def _copy_wired(k: "Kernel", old: VMMap, d: VMMapEntry) -> None:
    """vm_fault_copy_entry: give the child its own copy of wired memory.
    Allocation may sleep for memory; the source page is looked up again
    after every sleep (another thread may have unmapped it: then the child
    keeps zeros there, as if the munmap had come first)."""
    assert d.obj is not None
    for i, vpn in enumerate(range(d.start >> PAGE_SHIFT, d.end >> PAGE_SHIFT)):
        deadline = None
        while (src := old.wired.get(vpn)) is not None:
            page = k.page_alloc(d.obj, i)
            if page is not None:
                hypercall.page_copy(page.addr, src.addr)
                break
            deadline = k.memwait(deadline)


def vmspace_fork(k: "Kernel", old: VMMap, name: str) -> VMMap:
    new = vmspace_alloc(k, name)
    wired: list[VMMapEntry] = []
    for e in list(old.entries()):
        if e.inheritance == INHERIT_NONE:
            continue
        if e.inheritance == INHERIT_SHARE:
            if e.obj is None:
                e.obj = vm_object.allocate(k, e.npages)
                e.offset = 0
            elif e.needs_copy:
                # Sharing a still-COW range: give it its own object first so
                # both sides share the private copy, not the original.
                e.obj = vm_object.shadow(k, e.obj, e.offset >> PAGE_SHIFT, e.npages)
                e.offset = 0
                e.needs_copy = False
                old.pmap.write_protect(e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT)
            d = _copy_entry(e)
            e.obj.ref_count += 1
        elif e.wired_count:
            # The child's own object, filled by _copy_wired once the map is
            # built (POSIX: the child does not inherit the lock itself).
            d = _copy_entry(e)
            d.obj = vm_object.allocate(k, d.npages)
            d.offset = 0
            d.needs_copy = False
            wired.append(d)
        else:
            d = _copy_entry(e)
            if e.obj is not None:
                e.obj.ref_count += 1
                e.needs_copy = d.needs_copy = True
                old.pmap.write_protect(e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT)
        new.insert(d)
    try:
        for d in wired:
            _copy_wired(k, old, d)
    except BaseException:
        new.destroy()  # a failed fork leaves nothing behind
        raise
    return new

