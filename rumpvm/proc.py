"""Processes: the user-level API of an address space, and the process glue
of NetBSD's uvm_glue.c (fork/exit, u-areas and their cache).

A `Proc` owns a vmspace (a VMMap) and a u-area (USPACE bytes of wired kernel
memory, from a cache of at most UAREA_CACHE entries, as uvm_uarea_alloc
keeps).  Every public method validates its arguments completely (TypeError
for non-int, EINVAL for bad values) before taking the kernel lock, then
checks the map, then changes it: a failing call changes nothing.

Lock: each public method enters through `k.gate` (the kernel lock, held for
its whole duration; sleeps inside drop it, see fault.py).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from . import object as vm_object
from .constants import (
    INHERIT_COPY,
    INHERIT_SHARE,
    INHERIT_VALID,
    MADV_VALID,
    MAP_ANON,
    MAP_FIXED,
    MAP_FLAGS_VALID,
    MAP_PRIVATE,
    MAP_SHARED,
    MS_ASYNC,
    MS_INVALIDATE,
    MS_SYNC,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_ALL,
    PROT_MAX,
    PROT_MAX_EXTRACT,
    PROT_READ,
    PROT_WRITE,
    VM_MAXUSER_ADDRESS,
    VM_MIN_ADDRESS,
)
from .errors import VMError, einval
from .inspect import MapEntry, ProcStatus, SmapsInfo, entry_record, peek_map, peek_runs, smaps_record
from .map import VMMap, VMMapEntry
from .physmem import pool_prime, reserve
from .uio import vm_read, vm_readinto, vm_write

if TYPE_CHECKING:
    from .kernel import Kernel
    from .object import VMObject

USPACE = 2 * PAGE_SIZE
UAREA_CACHE = 16


def _int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be int, not {type(v).__name__}")
    return v


def _range(addr: object, length: object) -> tuple[int, int]:
    """Validate a user range: aligned start, positive length, no overflow."""
    a = _int("addr", addr)
    n = _int("length", length)
    if a & PAGE_MASK:
        raise einval(f"address {a:#x} is not page aligned")
    if n <= 0:
        raise einval(f"length {n} must be positive")
    end = a + ((n + PAGE_MASK) & ~PAGE_MASK)
    if a < VM_MIN_ADDRESS or end > VM_MAXUSER_ADDRESS:
        raise einval(f"range {a:#x}+{n:#x} is outside the user address space")
    return a, end


def _prot(prot: object) -> tuple[int, int | None]:
    """(protection, maximum protection or None) from a prot argument that
    may carry PROT_MAX bits; EINVAL if prot exceeds its own maximum."""
    p = _int("prot", prot)
    if p < 0 or p & ~(PROT_ALL | PROT_MAX(PROT_ALL)):
        raise einval(f"bad protection {p:#x}")
    cur, mx = p & PROT_ALL, PROT_MAX_EXTRACT(p)
    if mx and cur & ~mx:
        raise einval(f"protection {cur:#x} exceeds its PROT_MAX {mx:#x}")
    return cur, (mx or None)


class Proc:
    """A process: an address space plus its u-area.  See DESIGN.md."""

    def __init__(self, k: Kernel, pid: int, ppid: int, name: str, vmspace: VMMap, uarea: int) -> None:
        self.kernel = k
        self.pid = pid
        self.ppid = ppid
        self.name = name
        self.vmspace = vmspace
        self.uarea = uarea
        self.alive = True

    def __repr__(self) -> str:
        return f"<Proc {self.pid} {self.name!r}{'' if self.alive else ' exited'}>"

    @property
    def state(self) -> str:
        return "R (running)" if self.alive else "Z (zombie)"

    def _live(self) -> VMMap:
        """The address space of a live process (lock held)."""
        self.kernel.check_open()
        if not self.alive:
            raise VMError(errno.ESRCH, f"process {self.pid} has exited")
        return self.vmspace

    # -- mappings ---------------------------------------------------------------

    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE, flags: int = MAP_PRIVATE | MAP_ANON,
             addr: int = 0, obj: VMObject | None = None, offset: int = 0) -> int:
        """Map `length` bytes; returns the address.  See DESIGN.md for flags."""
        n = _int("length", length)
        p, maxp = _prot(prot)
        f = _int("flags", flags)
        a = _int("addr", addr)
        off = _int("offset", offset)
        if n <= 0:
            raise einval(f"length {n} must be positive")
        if f & ~MAP_FLAGS_VALID or bool(f & MAP_SHARED) == bool(f & MAP_PRIVATE):
            raise einval(f"bad flags {f:#x}: need exactly one of MAP_SHARED, MAP_PRIVATE")
        if (obj is None) != bool(f & MAP_ANON):
            raise einval("MAP_ANON goes with no object, and an object without MAP_ANON")
        if a & PAGE_MASK or off & PAGE_MASK or off < 0 or a < 0:
            raise einval("addr and offset must be page aligned and non-negative")
        size = (n + PAGE_MASK) & ~PAGE_MASK
        if f & MAP_FIXED:
            _range(a, size)
        elif a + size > VM_MAXUSER_ADDRESS:
            a = 0
        if obj is not None:
            if not isinstance(obj, vm_object.VMObject):
                raise TypeError("obj must come from Kernel.create_object")
            if obj.kernel is not self.kernel:
                raise einval(f"object {obj.id} belongs to another kernel")
            if obj.dead:
                raise VMError(errno.EBADF, f"object {obj.id} is gone")
            if off + size > obj.size << PAGE_SHIFT:
                raise einval(f"offset {off:#x}+{size:#x} beyond the object's {obj.size << PAGE_SHIFT:#x} bytes")
        k = self.kernel
        with k.gate:
            pool_prime(k, entries=3, objects=3)
            vmap = self._live()  # after priming, which may sleep
            if f & MAP_FIXED:
                start = a
            else:
                found = vmap.find_space(max(a, VM_MIN_ADDRESS), size)
                if found is None and a:
                    found = vmap.find_space(VM_MIN_ADDRESS, size)
                if found is None:
                    raise VMError(errno.ENOMEM, f"no {size:#x}-byte hole in the address space")
                start = a = found
            shared = bool(f & MAP_SHARED)
            target: VMObject | None
            if obj is None and shared:
                target = vm_object.allocate(k, size >> PAGE_SHIFT)
            else:
                target = obj
                if target is not None:
                    target.ref_count += 1
            if f & MAP_FIXED:
                vmap.delete(start, start + size)
            e = VMMapEntry(start, start + size, target, off if obj is not None else 0, p, maxp or PROT_ALL,
                           INHERIT_SHARE if shared else INHERIT_COPY, shared)
            e.needs_copy = target is not None and not shared
            vmap.insert(e)
            return start

    def munmap(self, addr: int, length: int) -> None:
        start, end = _range(addr, length)
        with self.kernel.gate:
            pool_prime(self.kernel, entries=2, objects=2)  # clipping both ends
            vmap = self._live()  # after priming, which may sleep
            vmap.delete(start, end)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        start, end = _range(addr, length)
        p, maxp = _prot(prot)
        with self.kernel.gate:
            pool_prime(self.kernel, entries=2, objects=2)
            vmap = self._live()  # after priming, which may sleep
            if maxp is not None:
                vmap.protect(start, end, maxp, set_max=True)
            vmap.protect(start, end, p, set_max=False)

    def minherit(self, addr: int, length: int, inheritance: int) -> None:
        start, end = _range(addr, length)
        inh = _int("inheritance", inheritance)
        if inh not in INHERIT_VALID:
            raise einval(f"bad inheritance {inh}")
        with self.kernel.gate:
            pool_prime(self.kernel, entries=2, objects=2)
            vmap = self._live()  # after priming, which may sleep
            vmap.set_inheritance(start, end, inh)

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise; see VMMap.madvise for what each advice does."""
        start, end = _range(addr, length)
        adv = _int("advice", advice)
        if adv not in MADV_VALID:
            raise einval(f"bad advice {adv}")
        with self.kernel.gate:
            pool_prime(self.kernel, entries=2, objects=2)
            vmap = self._live()  # after priming, which may sleep
            vmap.madvise(start, end, adv)

    def mlock(self, addr: int, length: int) -> None:
        """Wire the range: all or nothing.  ENOMEM past the wired limit or
        for a range without read access; OutOfMemory when the frames it
        needs cannot be had within oom_timeout (they are reserved before
        anything changes)."""
        start, end = _range(addr, length)
        k = self.kernel
        with k.gate:
            vmap = self._live()
            ents = vmap.require_mapped(start, end)
            if any(not e.prot & PROT_READ for e in ents):
                raise VMError(errno.ENOMEM, "cannot wire pages without access")
            new_pages = sum((min(end, e.end) - max(start, e.start)) >> PAGE_SHIFT
                            for e in ents if not e.wired_count)
            if k.wired_limit is not None and (k.wired_user_pages + new_pages) * PAGE_SIZE > k.wired_limit:
                raise VMError(errno.ENOMEM, f"mlock of {new_pages} pages exceeds the wired limit"
                                            f" ({k.wired_limit} bytes)")
            with reserve(k, self._wire_frames(ents, start, end)) as resv:
                pool_prime(k, entries=2, objects=2 + 2 * len(ents))
                vmap = self._live()  # after priming, which may sleep
                vmap.wire(start, end, resv)

    @staticmethod
    def _wire_frames(ents: list[VMMapEntry], start: int, end: int) -> int:
        """Frames wiring [start, end) will allocate: a page for each address
        whose page is not already resident where the wiring will keep it."""
        need = 0
        for e in ents:
            if e.wired_count:
                continue
            s, t = max(start, e.start), min(end, e.end)
            if e.obj is None:
                need += (t - s) >> PAGE_SHIFT
                continue
            copy = bool(e.max_prot & PROT_WRITE)
            for va in range(s, t, PAGE_SIZE):
                _, _, page, _ = vm_object.lookup(e.obj, e.pindex(va))
                if page is None or (copy and (e.needs_copy or page.obj is not e.obj)):
                    need += 1
        return need

    def munlock(self, addr: int, length: int) -> None:
        start, end = _range(addr, length)
        k = self.kernel
        with k.gate:
            vmap = self._live()
            vmap.require_mapped(start, end)
            pool_prime(k, entries=2, objects=2)
            vmap = self._live()  # after priming, which may sleep
            vmap.unwire(start, end)

    def msync(self, addr: int, length: int, flags: int = MS_SYNC) -> None:
        """msync: anonymous memory has no backing file, so this validates:
        EINVAL for unknown flags, ENOMEM for a hole, EBUSY for MS_INVALIDATE
        over wired memory (as FreeBSD's vm_map_sync)."""
        start, end = _range(addr, length)
        f = _int("flags", flags)
        if f & ~(MS_ASYNC | MS_INVALIDATE):
            raise einval(f"bad msync flags {f:#x}")
        with self.kernel.gate:
            ents = self._live().require_mapped(start, end)
            if f & MS_INVALIDATE and any(e.wired_count for e in ents):
                raise VMError(errno.EBUSY, "MS_INVALIDATE of wired memory")

    # -- data --------------------------------------------------------------------

    def read(self, addr: int, length: int) -> bytes:
        """Read `length` bytes at `addr` (SegmentationFault if any is not readable)."""
        if type(addr) is int and type(length) is int and 0 < length <= PAGE_SIZE - (addr & PAGE_MASK):
            k = self.kernel
            with k.lock:  # fast path: one page with a translation
                page = self.vmspace.pmap.rd.get(addr >> PAGE_SHIFT)
                if page is not None and self.alive:
                    page.referenced = True
                    if k.touch is not None:
                        k.touch(page)
                    o = page.off + (addr & PAGE_MASK)
                    return page.buf[o:o + length].tobytes()
        a = _int("addr", addr)
        n = _int("length", length)
        if n < 0 or a < 0:
            raise einval("negative address or length")
        with self.kernel.gate:
            vmap = self._live()
            return vm_read(self.kernel, vmap, a, n) if n else b""

    def readinto(self, addr: int, buffer: bytearray | memoryview) -> int:
        """Read len(buffer) bytes at `addr` into a writable buffer (no
        allocation per call); returns the byte count."""
        a = _int("addr", addr)
        try:
            dst = memoryview(buffer).cast("B")
        except TypeError:
            raise TypeError(f"buffer must be a writable C-contiguous buffer, not {type(buffer).__name__}") from None
        if dst.readonly:
            raise TypeError("buffer is read-only")
        n = len(dst)
        if a < 0:
            raise einval("negative address")
        with self.kernel.gate:
            if n:
                vm_readinto(self.kernel, self._live(), a, dst)
            else:
                self._live()
        return n

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `addr`; nothing is written unless all of it may be
        (SegmentationFault).  OutOfMemory part-way carries `.written`."""
        if type(addr) is int and type(data) is bytes and 0 < len(data) <= PAGE_SIZE - (addr & PAGE_MASK):
            k = self.kernel
            with k.lock:  # fast path: one page with a writable translation
                page = self.vmspace.pmap.wr.get(addr >> PAGE_SHIFT)
                if page is not None and self.alive:
                    page.dirty = page.referenced = True
                    if k.touch is not None:
                        k.touch(page)
                    o = page.off + (addr & PAGE_MASK)
                    page.buf[o:o + len(data)] = data
                    return
        a = _int("addr", addr)
        try:
            src = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"data must be a C-contiguous bytes-like object, not {type(data).__name__}") from None
        if a < 0:
            raise einval("negative address")
        with self.kernel.gate:
            vmap = self._live()
            if len(src):
                vm_write(self.kernel, vmap, a, src)

    def peek(self, addr: int, length: int) -> bytes:
        """Side-effect-free read for debuggers and /vm (see inspection API)."""
        a = _int("addr", addr)
        n = _int("length", length)
        if n < 0 or a < 0:
            raise einval("negative address or length")
        with self.kernel.gate:
            return peek_map(self.kernel, self._live(), a, n)

    # -- lifecycle -----------------------------------------------------------------

    def fork(self, name: str | None = None) -> Proc:
        """A child whose address space follows each entry's inheritance."""
        return self.kernel._fork(self, name)

    def exit(self) -> None:
        """uvm_exit: tear down the address space and release the u-area."""
        self.kernel._exit(self)

    def coredump_segments(self) -> list[tuple[MapEntry, list[tuple[int, bytes]]]]:
        """uvm_coredump_walkmap: the segments a core file would hold — every
        readable entry not marked MADV_NOCORE — each with the runs of
        consecutive pages that have contents, as (address, bytes).  Pages
        never written are absent (they read as zeros); nothing is paged in,
        allocated or marked referenced."""
        k = self.kernel
        with k.gate:
            vmap = self._live()
            return [(entry_record(e), peek_runs(k, vmap, e)) for e in vmap.entries()
                    if e.prot & PROT_READ and not e.nocore]

    # -- inspection --------------------------------------------------------------------

    def maps(self) -> list[MapEntry]:
        with self.kernel.gate:
            return [entry_record(e) for e in self._live().entries()]

    def smaps(self) -> list[SmapsInfo]:
        with self.kernel.gate:
            vmap = self._live()
            return [smaps_record(self.kernel, vmap, e) for e in vmap.entries()]

    def status(self) -> ProcStatus:
        with self.kernel.gate:
            vmap = self._live()
            sm = [smaps_record(self.kernel, vmap, e) for e in vmap.entries()]
            return ProcStatus(self.name, self.state, self.pid, self.ppid, vmap.size,
                              sum(s.rss for s in sm), sum(s.swap for s in sm),
                              sum(e.end - e.start for e in vmap.entries() if e.wired_count))
