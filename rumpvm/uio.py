"""Copying between host buffers and virtual memory (uiomove).

`check_access` validates a whole range against the map before anything is
copied, so a read or write that may not happen has no effect at all.  The
copy then walks the range in runs (`_runs`): a stretch of pages that have
pmap translations is copied in one C call (the fast path); a page without
one is faulted in and copied on its own while the lock is still held after
its fault — so a range of any size makes progress page by page and never
needs to be resident all at once.  Every access sets the page's referenced
bit, and writes set its dirty bit, as an MMU would.

A write that runs out of memory part-way raises OutOfMemory with `.written`
set to the bytes written from the start (a short write); a read has no
effect to undo.  `object_write` writes into an object by offset through the
same object fault path (copy-on-write from backing objects honoured).

Lock: the kernel lock, held by the caller.  A fault may drop it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import hypercall

from .constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PROT_READ, PROT_WRITE
from .errors import OutOfMemory, SegmentationFault, VMError
from .fault import WindowPage, fault_ahead, object_fault, resolve, vm_fault, vm_fault_fast
from .map import stack_growth
from .physmem import make_room, zero_page

if TYPE_CHECKING:
    from .kernel import Kernel
    from .map import VMMap
    from .object import VMObject
    from .page import VMPage


def check_access(vmap: VMMap, addr: int, length: int, access: int) -> None:
    """Raise SegmentationFault at the first address of [addr, addr+length)
    that is unmapped (SEGV_MAPERR) or lacks `access` (SEGV_ACCERR).  Addresses
a grow-down stack would grow to count as the stack's."""
    need = access if access & PROT_WRITE else PROT_READ
    va, end = addr, addr + length
    while va < end:
        m, e = resolve(vmap, va)
        if e is None:
            growth = stack_growth(m, va)
            if growth is None:
                raise SegmentationFault(va, access, "SEGV_MAPERR")
            e = growth[0]  # the fault will grow the stack down to va
        if e.prot & need != need:
            raise SegmentationFault(va, access, "SEGV_ACCERR")
        va = e.end


RUN_PAGES = 256  # translations looked up per batch: bounds the work a fault can waste


def _runs(k: Kernel, vmap: VMMap, addr: int, length: int, write: bool,
          fresh: list[VMPage] | None = None) -> Iterator[tuple[list[int], int, int, int]]:
    """(page addresses, offset in the first page, position in the range,
    bytes) for each run of the range: the longest stretch of pages that
    already have translations (one pass over them: each page object is
    touched once), or else one page faulted in for the access with the
    translations after it (address 0: a never-written page of a read,
    zeros).  The consumer copies a run before asking for the next:
    only then may a fault drop the lock.  A write passes `fresh`: new
    pages it will overwrite whole are left unzeroed and listed there
    (fault_ahead) until the consumer's copy has covered them."""
    trans = vmap.pmap.wr if write else vmap.pmap.rd
    get = trans.get
    access = PROT_WRITE if write else PROT_READ
    touch = k.touch
    end = addr + length
    last = (end - 1) >> PAGE_SHIFT
    pos = 0
    while pos < length:
        va = addr + pos
        vpn = va >> PAGE_SHIFT
        pages: list[VMPage] = []
        start = vpn
        if get(vpn) is None:
            if write and last > vpn and make_room(k, min(last - vpn + 1, RUN_PAGES)):
                continue  # reclaimed for the run ahead: look again
            host = 0  # no page: a never-written page of a read, zeros
            try:
                first = (write and vm_fault_fast(k, vmap, va)) or vm_fault(k, vmap, va, access)
            except WindowPage as wp:  # a host window's page: copy through its host address
                first, host = None, wp.address
            if first is None:
                n = min(length - pos, PAGE_SIZE - (va & PAGE_MASK))
                yield [host], va & PAGE_MASK, pos, n
                pos += n
                continue
            if vpn < last:
                fault_ahead(k, vmap, va, min(last - vpn, RUN_PAGES - 1), write, fresh, end >> PAGE_SHIFT)
            pages.append(first)  # it may have no translation (a write-only entry)
            start += 1
        keep = pages.append
        for v in range(start, min(last + 1, vpn + RUN_PAGES)):  # the translations that follow
            page = get(v)
            if page is None:
                break
            keep(page)
        addrs: list[int] = []
        add = addrs.append
        for page in pages:
            page.referenced = True
            add(page.addr)
        if write:
            for page in pages:
                page.dirty = True
        if touch is not None:
            for page in pages:
                touch(page)
        n = min(length - pos, (len(addrs) << PAGE_SHIFT) - (va & PAGE_MASK))
        yield addrs, va & PAGE_MASK, pos, n
        pos += n


def vm_read(k: Kernel, vmap: VMMap, addr: int, length: int) -> bytes:
    """The bytes of [addr, addr+length), filled in place (one copy)."""
    check_access(vmap, addr, length, PROT_READ)
    if length < 2:
        small = bytearray(length)
        _copy_out(k, vmap, addr, small)
        return bytes(small)
    try:
        out = hypercall.uninit_bytes(length)
    except MemoryError:
        raise OutOfMemory(f"no host memory for a {length}-byte read") from None
    try:
        _copy_out(k, vmap, addr, out)
    except VMError as e:
        e.written = None  # nothing was returned: no short read to report
        raise
    return out


def vm_readinto(k: Kernel, vmap: VMMap, addr: int, dst: memoryview | bytearray) -> None:
    """Copy [addr, addr+len(dst)) into the byte buffer `dst`; an error
    part-way (a page-in found no frame or failed) carries `.written`, the
    bytes copied from the start."""
    check_access(vmap, addr, len(dst), PROT_READ)
    _copy_out(k, vmap, addr, dst)


def _copy_out(k: Kernel, vmap: VMMap, addr: int, dst: memoryview | bytearray | bytes) -> None:
    """Copy the checked range into `dst`, one C call per run of pages; an
    error part-way carries the bytes copied in `.written`."""
    done = 0
    try:
        for addrs, off, pos, n in _runs(k, vmap, addr, len(dst), False):
            hypercall.copy_out(dst, pos, addrs, off, n)
            done = pos + n
    except VMError as e:  # out of memory, or a fault slept and the map changed meanwhile
        e.written = done
        raise


def vm_write(k: Kernel, vmap: VMMap, addr: int, data: bytes | bytearray | memoryview) -> None:
    """Copy `data` to [addr, addr+len(data)); OutOfMemory part-way carries
    `.written`."""
    src = memoryview(data).cast("B")
    length = len(src)
    check_access(vmap, addr, length, PROT_WRITE)
    done = 0
    fresh: list[VMPage] = []  # new pages of the current run, not zeroed: the copy covers them
    try:
        for addrs, off, pos, n in _runs(k, vmap, addr, length, True, fresh):
            hypercall.copy_in(src, pos, addrs, off, n)
            fresh.clear()
            done = pos + n
    except VMError as e:  # out of memory, or a fault slept and the map changed meanwhile
        e.written = done
        raise
    finally:
        for page in fresh:  # the copy never came: no recycled frame's bytes may show
            zero_page(page)


def vm_replay(k: Kernel, vmap: VMMap, base: int, accesses: Iterable[int]) -> None:
    """Replay page accesses, each `page << 1 | is_write`, against the pages
    at `base + page * PAGE_SIZE`, as the program that made the trace would
    touch them: a write dirties its page; a read of a never-written page
    gets a clean zero page (`fill`: as a page of the program's file would,
    it occupies a frame and is dropped, not written, when evicted).  Stops
    at the first access that faults (SegmentationFault), like a program.
    The lab's fault counts come from this loop, one translation lookup per
    access unless it faults."""
    rd, wr = vmap.pmap.rd, vmap.pmap.wr
    touch = k.touch
    bvpn = base >> PAGE_SHIFT
    for v in accesses:
        vpn = bvpn + (v >> 1)
        if v & 1:
            page = wr.get(vpn)
            if page is None:
                page = vm_fault(k, vmap, vpn << PAGE_SHIFT, PROT_WRITE)
                assert page is not None
            page.dirty = True
        else:
            page = rd.get(vpn)
            if page is None:
                page = vm_fault(k, vmap, vpn << PAGE_SHIFT, PROT_READ, fill=True)
                assert page is not None
        page.referenced = True
        if touch is not None:
            touch(page)


def object_write(k: Kernel, obj: VMObject, offset: int, src: memoryview) -> None:
    """Write `src` into `obj` at byte `offset` (within its size), page by
    page through the object fault path; the caller holds a reference on
    `obj` so it outlives any sleep.  An error part-way carries `.written`."""
    done = 0
    try:
        while done < len(src):
            pos = offset + done
            off = pos & PAGE_MASK
            n = min(PAGE_SIZE - off, len(src) - done)
            try:
                page = object_fault(k, obj, pos >> PAGE_SHIFT)
            except WindowPage as wp:  # a host window's page: write through its host address
                hypercall.copy_in(src, done, [wp.address], off, n)
            else:
                page.buf[page.off + off:page.off + off + n] = src[done:done + n]
                page.dirty = page.referenced = True
            done += n
    except VMError as e:
        e.written = done
        raise
