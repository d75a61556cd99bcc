"""vmspaces: a process's address space, and fork/exec/unshare of it.

A `Vmspace` is a user map plus the number of processes that share it
(`refcnt`: uvmspace_share / vfork); it is destroyed with its last user
(`vmspace_free`).  exec gives a process a fresh one, unshare a private copy
made by `vmspace_fork`.

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
from .constants import INHERIT_NONE, INHERIT_SHARE, PAGE_SHIFT, VM_MAXUSER_ADDRESS, VM_MIN_ADDRESS
from .map import VMMap, VMMapEntry
from .page import ACTIVE
from .physmem import page_alloc

if TYPE_CHECKING:
    from .kernel import Kernel
    from .physmem import Reservation


class Vmspace(VMMap):
    """A process address space: the user map and its count of sharers."""

    def __init__(self, k: Kernel, name: str) -> None:
        super().__init__(k, VM_MIN_ADDRESS, VM_MAXUSER_ADDRESS, name)
        self.refcnt = 1


def vmspace_alloc(k: Kernel, name: str) -> Vmspace:
    """An empty address space with one user (lock held or not: no VM state)."""
    return Vmspace(k, name)


def vmspace_free(vm: Vmspace) -> None:
    """Drop one user; the last one tears the map down (lock held)."""
    vm.refcnt -= 1
    if vm.refcnt == 0:
        vm.destroy()


def _copy_wired(k: Kernel, old: VMMap, d: VMMapEntry, resv: Reservation) -> None:
    """vm_fault_copy_entry: give the child its own copy of wired memory, in
    frames the caller reserved (the copy never sleeps)."""
    assert d.obj is not None
    for i, vpn in enumerate(range(d.start >> PAGE_SHIFT, d.end >> PAGE_SHIFT)):
        src = old.wired.get(vpn)
        if src is not None:
            page = page_alloc(k, d.obj, i, resv, ACTIVE, src.addr)
            assert page is not None, "fork: wired copy beyond its reservation"


def vmspace_fork(k: Kernel, old: VMMap, name: str, resv: Reservation) -> Vmspace:
    """Copy `old` per inheritance.  Requires the lock, primed pools, and
    frames in `resv` for every page of wired INHERIT_COPY entries; never
    sleeps, so no half-built map is ever visible."""
    new = vmspace_alloc(k, name)
    copies: list[VMMapEntry] = []
    wired: list[VMMapEntry] = []
    for e in list(old.entries()):
        if e.inheritance == INHERIT_NONE:
            continue
        wired_copy = False
        if e.inheritance == INHERIT_SHARE:
            if e.obj is None:
                e.set_object(vm_object.allocate(k, e.npages), 0)
            elif e.needs_copy:
                # Sharing a still-COW range: give it its own object first so
                # both sides share the private copy, not the original.
                e.set_object(vm_object.shadow(k, e.obj, e.offset >> PAGE_SHIFT, e.npages), 0)
                e.needs_copy = False
                old.pmap.write_protect(e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT)
            assert e.obj is not None
            e.obj.ref_count += 1
            d = e.copy()
        elif e.wired_count:
            # Wired pages cannot be shared copy-on-write: the child gets its
            # own object, filled once the entry is linked.
            d = e.copy()
            d.obj, d.offset, d.needs_copy = vm_object.allocate(k, d.npages), 0, False
            wired_copy = True
        else:
            d = e.copy()
            if e.obj is not None:
                e.obj.ref_count += 1
                e.needs_copy = d.needs_copy = True
                old.pmap.write_protect(e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT)
        d.wired_count = 0  # POSIX: the child does not inherit the lock
        copies.append(d)
        if wired_copy:
            wired.append(d)
    new.link_sorted(copies)  # in one O(n) step, not an insert per entry
    for d in wired:
        _copy_wired(k, old, d, resv)
    return new
