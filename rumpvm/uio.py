"""Copying between host buffers and a map's virtual memory (uiomove).

`check_access` validates a whole range against the map before anything is
copied, so a failing read or write has no effect.  The copy loop uses the
pmap's translations directly (the fast path) and calls the fault handler
only for pages without a translation of the right kind.  Every access sets
the page's referenced bit, and writes set its dirty bit, as an MMU would.

Lock: the kernel lock, held by the caller.  A fault may drop it; the copy of
a page happens only while the lock is held after its fault returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PROT_READ, PROT_WRITE
from .errors import SegmentationFault
from .fault import resolve, vm_fault

if TYPE_CHECKING:
    from .kernel import Kernel
    from .map import VMMap


def check_access(vmap: "VMMap", addr: int, length: int, access: int) -> None:
    """Raise SegmentationFault at the first address of [addr, addr+length)
    that is unmapped (SEGV_MAPERR) or lacks `access` (SEGV_ACCERR)."""
    need = access if access & PROT_WRITE else PROT_READ
    va, end = addr, addr + length
    while va < end:
        _, e = resolve(vmap, va)
        if e is None:
            raise SegmentationFault(va, access, "SEGV_MAPERR")
        if e.prot & need != need:
            raise SegmentationFault(va, access, "SEGV_ACCERR")
        va = e.end


_ZEROS = memoryview(bytes(PAGE_SIZE))


def vm_read(k: "Kernel", vmap: "VMMap", addr: int, length: int) -> bytes:
    check_access(vmap, addr, length, PROT_READ)
    while True:
        # Collect views of the pages, then join them into the result (one
        # allocation, one copy).  The views are valid only while the lock is
        # held without a break: if a fault slept, collect again.
        drops = k.lockdrops
        parts = []
        rd = vmap.pmap.rd
        touch = k.touch
        pos = 0
        while pos < length:
            va = addr + pos
            off = va & PAGE_MASK
            n = min(PAGE_SIZE - off, length - pos)
            page = rd.get(va >> PAGE_SHIFT)
            if page is None:
                page = vm_fault(k, vmap, va, PROT_READ)
            if page is None:
                parts.append(_ZEROS[:n])
            else:
                o = page.off + off
                parts.append(page.buf[o:o + n])
                page.referenced = True
                if touch is not None:
                    touch(page)
            pos += n
        if k.lockdrops == drops:
            return b"".join(parts)


def vm_write(k: "Kernel", vmap: "VMMap", addr: int, data: bytes | bytearray | memoryview) -> None:
    length = len(data)
    check_access(vmap, addr, length, PROT_WRITE)
    src = memoryview(data).cast("B")
    wr = vmap.pmap.wr
    touch = k.touch
    pos = 0
    while pos < length:
        va = addr + pos
        off = va & PAGE_MASK
        n = min(PAGE_SIZE - off, length - pos)
        page = wr.get(va >> PAGE_SHIFT)
        if page is None:
            page = vm_fault(k, vmap, va, PROT_WRITE)
            assert page is not None
        o = page.off + off
        page.buf[o:o + n] = src[pos:pos + n]
        page.dirty = page.referenced = True
        if touch is not None:
            touch(page)
        pos += n
