"""Kernel memory: kernel_map, its submaps, and the kmem_* allocators
(after FreeBSD's vm_kern.c and the rump kernel's uvm_km_alloc).

`kernel_map` covers [VM_MIN_KERNEL_ADDRESS, VM_MAX_KERNEL_ADDRESS) and shares
one pmap with its submaps (`kmem_suballoc` carves a range of the parent and
returns a real VMMap over it).  Every kernel allocation maps
`kernel_object` at offset `addr - VM_MIN_KERNEL_ADDRESS`, so the pages of a
kernel range are found by address.

  kmem_alloc            wired, zeroed pages; waits for memory
  kmem_alloc_pageable   address space only; pages come on fault, pageable
  kmem_free             unmap and free the pages
  kmem_malloc           kmem_alloc in a submap; no-wait failure frees what
                        it took and returns 0
  kmem_alloc_wait       pageable space; sleeps until kmem_free_wakeup frees
                        space in that map
  uvm_km_alloc          host memory straight from an aligned anonmmap,
                        charged to the limit (the rump approach)
  pagermapin/out        map pages contiguously into pager_map for I/O

Lock: the kernel lock, taken through `k.gate` by each public function here
(these are entry points); `*_locked` variants are for callers holding it.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING

import hypercall

from .constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PROT_ALL, PROT_READ, PROT_WRITE, VM_MIN_KERNEL_ADDRESS
from .errors import OutOfMemory, VMError
from .fault import vm_fault
from .map import VMMap, VMMapEntry
from .physmem import memwait, pool_prime, pool_room

if TYPE_CHECKING:
    from .kernel import Kernel
    from .page import VMPage


def _round(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError("size must be int")
    if size <= 0:
        raise VMError(errno.EINVAL, f"bad size {size}")
    return (size + PAGE_MASK) & ~PAGE_MASK


class Kmem:
    def __init__(self, k: Kernel, kernel_map: VMMap) -> None:
        self.k = k
        self.kernel_map = kernel_map
        self.submaps: list[VMMap] = []
        self.km_arenas: dict[int, hypercall.Arena] = {}

    # -- address space -----------------------------------------------------------

    def _insert(self, vmap: VMMap, size: int, name: str, wired: bool = False) -> int | None:
        """Map kernel_object over a free range of `vmap` (marked wired
        before it is linked, so it can only merge with entries like it);
        returns its address, None if no space."""
        k = self.k
        addr = vmap.find_space(vmap.min, size)
        if addr is None:
            return None
        obj = k.kernel_object
        obj.ref_count += 1
        e = VMMapEntry(addr, addr + size, obj, addr - VM_MIN_KERNEL_ADDRESS,
                       PROT_READ | PROT_WRITE, PROT_ALL, name=name)
        e.wired_count = 1 if wired else 0
        vmap.insert(e)
        return addr

    def suballoc(self, parent: VMMap, size: int, name: str) -> VMMap:
        """kmem_suballoc: a submap of `size` bytes carved from `parent`."""
        k = self.k
        size = _round(size)
        with k.gate:
            pool_prime(k, entries=1)
            addr = parent.find_space(parent.min, size)
            if addr is None:
                raise VMError(errno.ENOMEM, f"no space for submap {name}")
            sub = VMMap(k, addr, addr + size, name, pmap=parent.pmap)
            e = VMMapEntry(addr, addr + size, None, 0, PROT_READ | PROT_WRITE, PROT_ALL, name=name)
            e.submap = sub
            parent.insert(e)
            self.submaps.append(sub)
            return sub

    # -- allocation ----------------------------------------------------------------

    def alloc(self, vmap: VMMap, size: int, name: str = "kmem", wait: bool = True) -> int:
        """kmem_alloc: wired zeroed memory; returns its address, or 0 when
        `wait` is False and memory or space ran out (nothing kept)."""
        size = _round(size)
        with self.k.gate:
            return self.alloc_locked(vmap, size, name, wait)

    def alloc_locked(self, vmap: VMMap, size: int, name: str = "kmem", wait: bool = True) -> int:
        """kmem_alloc with the kernel lock held."""
        k = self.k
        if wait:
            pool_prime(k, entries=1)
        elif not pool_room(k, entries=1):
            return 0
        addr = self._insert(vmap, size, name, wired=True)
        if addr is None:
            if wait:
                raise VMError(errno.ENOMEM, f"{vmap.name}: no space for {size} bytes")
            return 0
        try:
            for va in range(addr, addr + size, PAGE_SIZE):
                vm_fault(k, vmap, va, PROT_WRITE, wire=True, nowait=not wait)
        except BaseException as ex:
            vmap.delete(addr, addr + size)
            if wait or not isinstance(ex, OutOfMemory):
                raise
            return 0
        return addr

    def alloc_pageable(self, vmap: VMMap, size: int, name: str = "pageable") -> int:
        k = self.k
        size = _round(size)
        with k.gate:
            pool_prime(k, entries=1)
            addr = self._insert(vmap, size, name)
            if addr is None:
                raise VMError(errno.ENOMEM, f"{vmap.name}: no space for {size} bytes")
            return addr

    def free(self, vmap: VMMap, addr: int, size: int) -> None:
        """kmem_free: unmap [addr, addr+size) and free its pages."""
        k = self.k
        size = _round(size)
        with k.gate:
            if addr & PAGE_MASK or vmap.first_hole(addr, addr + size) is not None:
                raise VMError(errno.EINVAL, f"{vmap.name}: {addr:#x}+{size:#x} is not allocated")
            vmap.delete(addr, addr + size)

    def malloc(self, vmap: VMMap, size: int, wait: bool) -> int:
        """kmem_malloc: like alloc; with wait False a failure returns 0."""
        return self.alloc(vmap, size, "malloc", wait)

    def alloc_wait(self, vmap: VMMap, size: int) -> int:
        """kmem_alloc_wait: pageable space, sleeping until some is freed."""
        k = self.k
        size = _round(size)
        if size > vmap.max - vmap.min:
            raise VMError(errno.ENOMEM, f"{size} bytes can never fit in {vmap.name}")
        with k.gate:
            while True:
                pool_prime(k, entries=1)
                addr = self._insert(vmap, size, "wait")
                if addr is not None:
                    return addr
                vmap.space_wait()

    def free_wakeup(self, vmap: VMMap, addr: int, size: int) -> None:
        """kmem_free_wakeup: free and wake sleepers of kmem_alloc_wait."""
        self.free(vmap, addr, size)  # map deletion notifies space_cv

    # -- host-direct allocations (rump's uvm_km_alloc) ---------------------------------

    def km_alloc(self, size: int, align: int = PAGE_SIZE, wait: bool = True) -> int:
        """uvm_km_alloc: `size` bytes aligned to `align` (a power of two) from
        an aligned host anonmmap, charged to the memory limit."""
        k = self.k
        size = _round(size)
        if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise VMError(errno.EINVAL, f"alignment {align!r} is not a power of two")
        with k.gate:
            deadline = None
            while not k.physmem.charge(size):
                if not wait:
                    return 0
                deadline = memwait(k, deadline, size // PAGE_SIZE)
            try:
                arena = hypercall.anonmmap(size, align.bit_length() - 1)
            except OSError as e:
                k.physmem.uncharge(size)
                if not wait:
                    return 0
                raise OutOfMemory(f"uvm_km_alloc of {size} bytes: the host refused ({e.strerror})") from None
            self.km_arenas[arena.addr] = arena
            return arena.addr

    def km_free(self, addr: int) -> None:
        k = self.k
        with k.gate:
            arena = self.km_arenas.pop(addr, None)
            if arena is None:
                raise VMError(errno.EINVAL, f"{addr:#x} is not a uvm_km_alloc allocation")
            hypercall.unmap(arena)
            k.physmem.uncharge(arena.size)
            k.mem_cv.notify_all()

    # -- pager map ------------------------------------------------------------------

    def pagermapin(self, pages: Sequence[VMPage]) -> int:
        """Map `pages` contiguously into pager_map; returns the address."""
        k = self.k
        vmap = k.pager_map
        size = len(pages) * PAGE_SIZE
        with k.gate:
            pool_prime(k, entries=1)
            addr = vmap.find_space(vmap.min, size)
            while addr is None:
                vmap.space_wait()
                pool_prime(k, entries=1)
                addr = vmap.find_space(vmap.min, size)
            vmap.insert(VMMapEntry(addr, addr + size, None, 0, PROT_READ | PROT_WRITE, PROT_ALL, name="pager"))
            for i, page in enumerate(pages):
                vmap.pmap.enter((addr >> PAGE_SHIFT) + i, page, True)
            return addr

    def pagermapout(self, addr: int, npages: int) -> None:
        k = self.k
        with k.gate:
            k.pager_map.delete(addr, addr + npages * PAGE_SIZE)

