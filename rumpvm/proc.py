"""Processes: the user-level API of an address space, and the process glue
of NetBSD's uvm_glue.c — fork/exit (shared vmspaces, exec, unshare),
u-areas and their cache, resource limits, run states and swapping
(swapper.py), access checks and vslock, grow-down stacks, core files.

A `Proc` owns a reference to a vmspace (shared by `fork(shared=True)`) and
a u-area: USPACE bytes of wired kernel memory from a cache of at most
UAREA_CACHE entries, as uvm_uarea_alloc keeps.  Every public method
validates its arguments completely (TypeError for non-int, EINVAL for bad
values) before entering the kernel, then checks the map, then changes it:
a failing call changes nothing.  Touching a swapped-out process swaps it in.

Lock: each public method enters through `k.gate` (the kernel lock, held for
its whole duration; sleeps inside drop it, see fault.py).  Module functions
say what they need.
"""

from __future__ import annotations

import errno
import time
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

import hypercall

from . import coredump, resource, swapper
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
    UAREA_CACHE,
    USPACE,
    VM_MAXUSER_ADDRESS,
    VM_MIN_ADDRESS,
)
from .errors import OutOfMemory, SegmentationFault, VMError, einval
from .fault import WindowPage, vm_fault, vm_fault_fast
from .inspect import MapEntry, ProcStatus, SmapsInfo, entry_record, peek_map, smaps_record, status_record
from .map import SGROWSIZ, STACK_NAME, VMMap, VMMapEntry, stack_range_free
from .physmem import Reservation, pool_prime, pool_room, reserve, reserve_more
from .uio import check_access, vm_read, vm_readinto, vm_replay, vm_write
from .vmspace import Vmspace, vmspace_alloc, vmspace_fork, vmspace_free

if TYPE_CHECKING:
    from .kernel import Kernel
    from .object import VMObject
    from .page import VMPage


def _store(k: Kernel, page: VMPage, addr: int, data: bytes) -> None:
    """A one-page write's copy into its page, as the MMU would mark it
    (dirty, referenced, the policy's touch).  Lock held."""
    page.dirty = page.referenced = True
    if k.touch is not None:
        k.touch(page)
    o = page.off + (addr & PAGE_MASK)
    page.buf[o:o + len(data)] = data


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


def _io_range(addr: object, length: object) -> tuple[int, int]:
    """vslock's range: any byte address; the pages [addr, addr+length) touches."""
    a = _int("addr", addr)
    n = _int("length", length)
    if n <= 0:
        raise einval(f"length {n} must be positive")
    return _range(a & ~PAGE_MASK, n + (a & PAGE_MASK))


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
    """A process: an address space plus its u-area.  See README.md."""

    def __init__(self, k: Kernel, pid: int, ppid: int, name: str, vmspace: Vmspace, uarea: int,
                 limits: resource.Limits) -> None:
        self.kernel = k
        self.pid = pid
        self.ppid = ppid
        self.name = name
        self.vmspace = vmspace
        self.uarea = uarea
        self.limits = limits
        self.alive = True
        self.run_state = "R"  # R running, S sleeping, T stopped
        self.swapped = False
        self.swapping_in = False  # a thread is paging its u-area in (swapper.swapin)
        now = time.monotonic()
        self.slept_at = 0.0  # when it last went to sleep or stopped
        self.swapped_at = 0.0
        self.resident_since = now

    def __repr__(self) -> str:
        return f"<Proc {self.pid} {self.name!r}{'' if self.alive else ' exited'}>"

    @property
    def state(self) -> str:
        """R (running), S (sleeping), T (stopped), W (swapped out) or Z (exited)."""
        if not self.alive:
            return "Z"
        return "W" if self.swapped else self.run_state

    def _live(self) -> Vmspace:
        """The address space of a live process, swapped in (lock held; the
        swap-in may sleep)."""
        k = self.kernel
        k.check_open()
        if not self.alive:
            raise VMError(errno.ESRCH, f"process {self.pid} has exited")
        if self.swapped:
            pool_prime(k, entries=2)
            swapper.swapin(k, self)
            k.check_open()  # a kernel close ended the swap-in: ESHUTDOWN, not ESRCH
            if not self.alive:
                raise VMError(errno.ESRCH, f"process {self.pid} has exited")
        vm = self.vmspace
        # Faults in this call grow stacks within this process's limits.
        vm.stack_limit = self.limits[resource.RLIMIT_STACK][0]
        vm.as_limit = self.limits[resource.RLIMIT_AS][0]
        return vm

    # -- run states --------------------------------------------------------------

    def _set_run_state(self, state: str) -> None:
        with self.kernel.gate:
            if state != "R":
                self._live()
                if self.run_state == "R":
                    self.slept_at = time.monotonic()
            else:
                self._live()  # waking a swapped-out process swaps it in
            self.run_state = state

    def sleep(self) -> None:
        """The process blocks (S): a candidate for the swapper."""
        self._set_run_state("S")

    def wake(self) -> None:
        """The process runs again (R), swapped in first if it was out."""
        self._set_run_state("R")

    def stop(self) -> None:
        """SIGSTOP (T)."""
        self._set_run_state("T")

    def cont(self) -> None:
        """SIGCONT: running again (R)."""
        self._set_run_state("R")

    # -- resource limits ---------------------------------------------------------

    def getrlimit(self, which: int) -> tuple[int, int]:
        r = resource.resource(which)
        with self.kernel.gate:
            self._check_alive()
            return self.limits[r]

    def setrlimit(self, which: int, soft: int, hard: int) -> None:
        """EINVAL: unknown resource, negative, soft > hard; EPERM: raising
        the hard limit."""
        r = resource.resource(which)
        with self.kernel.gate:
            self._check_alive()
            self.limits[r] = resource.check_new_limit(self.limits[r], soft, hard)

    def _primed(self, entries: int, objects: int = 0) -> Vmspace:
        """The live, swapped-in address space with the pools primed for
        `entries`/`objects` more items and nothing asleep in between: both
        the swap-in and the priming may sleep, and a swap-in uses pool
        items itself (lock held)."""
        while True:
            self._live()
            pool_prime(self.kernel, entries, objects)
            if not self.swapped:
                return self._live()

    def _check_alive(self) -> None:
        """ESRCH for an exited process, without swapping it in (lock held)."""
        self.kernel.check_open()
        if not self.alive:
            raise VMError(errno.ESRCH, f"process {self.pid} has exited")

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
            if obj.window is not None and not f & MAP_SHARED:
                raise einval(f"object {obj.id} backs a host window: it can be mapped MAP_SHARED only")
        k = self.kernel
        with k.gate:
            vmap = self._primed(entries=3, objects=3)
            if obj is not None and obj.dead:  # its last reference went while we slept
                raise VMError(errno.EBADF, f"object {obj.id} is gone")
            self._check_size_limits(vmap, size, f, maxp, a)
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

    def _check_size_limits(self, vmap: Vmspace, size: int, flags: int, maxp: int | None,
                           addr: int) -> None:
        """RLIMIT_AS over the whole space, RLIMIT_DATA over private memory
        that may ever be written (its maximum protection allows writes, as
        the usage counts it: an mprotect can add write without a check),
        ENOMEM; counting what a MAP_FIXED mapping replaces."""
        replaced = replaced_data = 0
        if flags & MAP_FIXED:
            for e in vmap.entries_in(addr, addr + size):
                n = min(addr + size, e.end) - max(addr, e.start)
                replaced += n
                replaced_data += n if _is_data(e.shared, e.max_prot) else 0
        if vmap.size - replaced + size > self.limits[resource.RLIMIT_AS][0]:
            raise VMError(errno.ENOMEM, f"mmap of {size} bytes exceeds RLIMIT_AS")
        data_limit = self.limits[resource.RLIMIT_DATA][0]
        if data_limit != resource.RLIM_INFINITY and _is_data(bool(flags & MAP_SHARED),
                                                               maxp if maxp is not None else PROT_ALL):
            data = sum(e.end - e.start for e in vmap.entries() if _is_data(e.shared, e.max_prot))
            if data - replaced_data + size > data_limit:
                raise VMError(errno.ENOMEM, f"mmap of {size} bytes exceeds RLIMIT_DATA")

    def munmap(self, addr: int, length: int) -> None:
        start, end = _range(addr, length)
        with self.kernel.gate:
            vmap = self._primed(entries=2, objects=2)  # clipping both ends
            vmap.delete(start, end)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        start, end = _range(addr, length)
        p, maxp = _prot(prot)
        with self.kernel.gate:
            vmap = self._primed(entries=2, objects=2)
            if maxp is not None:
                vmap.protect(start, end, maxp, set_max=True)
            vmap.protect(start, end, p, set_max=False)

    def minherit(self, addr: int, length: int, inheritance: int) -> None:
        start, end = _range(addr, length)
        inh = _int("inheritance", inheritance)
        if inh not in INHERIT_VALID:
            raise einval(f"bad inheritance {inh}")
        with self.kernel.gate:
            vmap = self._primed(entries=2, objects=2)
            if inh == INHERIT_COPY and any(e.obj is not None and e.obj.window is not None
                                           for e in vmap.entries_in(start, end)):
                raise einval("a host window's object is shared only: no copy-on-write inheritance")
            vmap.set_inheritance(start, end, inh)

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise; see VMMap.madvise for what each advice does."""
        start, end = _range(addr, length)
        adv = _int("advice", advice)
        if adv not in MADV_VALID:
            raise einval(f"bad advice {adv}")
        with self.kernel.gate:
            vmap = self._primed(entries=2, objects=2)
            try:
                vmap.madvise(start, end, adv)
            except SegmentationFault:  # WILLNEED slept and the range was unmapped or protected meanwhile
                raise VMError(errno.ENOMEM, f"range {start:#x}-{end:#x} changed while paging in") from None

    def mlock(self, addr: int, length: int) -> None:
        """Wire the range: all or nothing.  ENOMEM past the wired limit or
        for a range without read access; OutOfMemory when the frames it
        needs cannot be had within oom_timeout (they are reserved before
        anything changes)."""
        start, end = _range(addr, length)
        k = self.kernel
        with k.gate:
            self._check_wiring(self._live(), start, end)  # fail fast, before any reservation
            with reserve(k, 0) as resv:
                vmap = self._reserve_wiring(resv, start, end)
                try:
                    vmap.wire(start, end, resv)
                except SegmentationFault:  # a page-in slept and the range was unmapped or protected meanwhile
                    raise VMError(errno.ENOMEM, f"range {start:#x}-{end:#x} changed while being wired") from None

    def _reserve_wiring(self, resv: Reservation, start: int, end: int, limits: bool = True) -> Vmspace:
        """Grow `resv` to the frames wiring [start, end) needs and prime the
        pools, until a pass finds everything in place without sleeping:
        while it sleeps, pages may be paged out (more page-ins needed) or
        the range changed (limits checked again).  Lock held."""
        k = self.kernel
        while True:
            vmap = self._live()
            ents = self._check_wiring(vmap, start, end) if limits else vmap.require_mapped(start, end)
            drops = k.lockdrops
            reserve_more(k, resv, self._wire_frames(ents, start, end))
            vmap = self._primed(entries=2, objects=2 + 2 * len(ents))
            if k.lockdrops == drops:
                return vmap

    def _check_wiring(self, vmap: VMMap, start: int, end: int) -> list[VMMapEntry]:
        """The entries of [start, end) if mlock may wire them: mapped,
        readable, within the kernel's wired limit and RLIMIT_MEMLOCK
        (ENOMEM; EPERM when that is 0).  Lock held."""
        k = self.kernel
        ents = vmap.require_mapped(start, end)
        if any(not e.prot & PROT_READ for e in ents):
            raise VMError(errno.ENOMEM, "cannot wire pages without access")
        new_pages = sum((min(end, e.end) - max(start, e.start)) >> PAGE_SHIFT for e in ents if not e.wired_count)
        if k.wired_limit is not None and (k.wired_user_pages + new_pages) * PAGE_SIZE > k.wired_limit:
            raise VMError(errno.ENOMEM, f"mlock of {new_pages} pages exceeds the wired limit ({k.wired_limit} bytes)")
        memlock = self.limits[resource.RLIMIT_MEMLOCK][0]
        if memlock == 0:
            raise VMError(errno.EPERM, "RLIMIT_MEMLOCK is 0")
        if memlock != resource.RLIM_INFINITY and (
                sum(e.end - e.start for e in vmap.entries() if e.wired_count) + new_pages * PAGE_SIZE > memlock):
            raise VMError(errno.ENOMEM, f"mlock of {new_pages} pages exceeds RLIMIT_MEMLOCK ({memlock} bytes)")
        return ents

    @staticmethod
    def _wire_frames(ents: list[VMMapEntry], start: int, end: int) -> int:
        """Frames wiring [start, end) will allocate: per address, one for a
        page-in or a zero-fill, and one more for the copy-on-write copy when
        the page the wiring keeps is not the one found."""
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
                o, _, page, slot = vm_object.lookup(e.obj, e.pindex(va))
                if page is None and slot is None:
                    need += 1  # zero-fill into the top object
                    continue
                need += page is None  # page-in
                need += copy and (e.needs_copy or o is not e.obj)  # COW copy-up
        return need

    def munlock(self, addr: int, length: int) -> None:
        start, end = _range(addr, length)
        k = self.kernel
        with k.gate:
            vmap = self._live()
            vmap.require_mapped(start, end)
            vmap = self._primed(entries=2, objects=2)
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
        if type(addr) is int and type(length) is int and addr >= 0 and 0 < length <= PAGE_SIZE - (addr & PAGE_MASK):
            k = self.kernel
            with k.lock:  # fast path: one page with a translation
                page = self.vmspace.pmap.rd.get(addr >> PAGE_SHIFT)
                if page is not None and self.alive and not self.swapped:
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
        except (TypeError, ValueError):  # not a buffer, not contiguous, released or closed
            raise TypeError(f"buffer must be a live writable contiguous buffer, not {type(buffer).__name__}") from None
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
        if type(addr) is int and type(data) is bytes and addr >= 0 and 0 < len(data) <= PAGE_SIZE - (addr & PAGE_MASK):
            k = self.kernel
            # Fast paths under the bare lock (neither sleeps, so the gate's
            # count for close is not needed): a writable translation, or a
            # zero-fill that needs nothing else.
            with k.lock:
                if self.alive and not self.swapped and not k.closed:
                    vs = self.vmspace
                    page = vs.pmap.wr.get(addr >> PAGE_SHIFT) or vm_fault_fast(k, vs, addr)
                    if page is not None:
                        _store(k, page, addr, data)
                        return
            with k.gate:  # one page: straight to the fault handler
                try:
                    vmap = self._live()
                    page = vm_fault(k, vmap, addr, PROT_WRITE)
                except OutOfMemory as e:
                    e.written = 0
                    raise
                except WindowPage as wp:  # a host window's page: write through its host address
                    hypercall.copy_in(memoryview(data), 0, [wp.address], addr & PAGE_MASK, len(data))
                    return
                assert page is not None
                _store(k, page, addr, data)
                return
        a = _int("addr", addr)
        try:
            src = memoryview(data).cast("B")
        except (TypeError, ValueError):  # not a buffer, not contiguous, released or closed
            raise TypeError(f"data must be a live C-contiguous bytes-like object, not {type(data).__name__}") from None
        if a < 0:
            raise einval("negative address")
        with self.kernel.gate:
            try:
                vmap = self._live()
                if len(src):
                    vm_write(self.kernel, vmap, a, src)
            except OutOfMemory as e:
                if e.written is None:  # ran out before the first byte (a swap-in)
                    e.written = 0
                raise

    def replay(self, base: int, accesses: array[int] | Sequence[int]) -> None:
        """Replay a page-access trace against the mapping at page-aligned
        `base`: each value is `page << 1 | is_write` for the page at
        `base + page * PAGE_SIZE` (see uio.vm_replay: writes dirty their
        page, reads of never-written pages get clean zero pages).  EINVAL
        for an unaligned base or a negative value; SegmentationFault if the
        pages are not all mapped readable, or at the first write the
        mapping refuses."""
        a = _int("addr", base)
        if isinstance(accesses, array) and accesses.typecode in "BHILQ":
            trace = accesses
        else:
            try:
                trace = array("Q", accesses)
            except OverflowError:
                raise einval("negative access value") from None
            except TypeError:
                raise TypeError("accesses must be an array or a sequence of ints") from None
        if a < 0 or a & PAGE_MASK:
            raise einval(f"base {a:#x} is not a page-aligned address")
        with self.kernel.gate:
            vmap = self._live()
            if trace:
                check_access(vmap, a, ((max(trace) >> 1) + 1) * PAGE_SIZE, PROT_READ)
                vm_replay(self.kernel, vmap, a, trace)

    def peek(self, addr: int, length: int) -> bytes:
        """Side-effect-free read for debuggers and /vm (see inspection API)."""
        a = _int("addr", addr)
        n = _int("length", length)
        if n < 0 or a < 0:
            raise einval("negative address or length")
        with self.kernel.gate:
            self._check_alive()
            return peek_map(self.kernel, self.vmspace, a, n)

    # -- lifecycle -----------------------------------------------------------------

    def fork(self, name: str | None = None, shared: bool = False) -> Proc:
        """A child whose address space follows each entry's inheritance, or
        with `shared` the parent's own address space (uvmspace_share: a
        vfork; writes are seen both ways)."""
        if name is not None and not isinstance(name, str):
            raise TypeError("name must be str")
        if not isinstance(shared, bool):
            raise TypeError("shared must be bool")
        with self.kernel.gate:
            return proc_fork(self.kernel, self, name or self.name, shared)

    def exit(self) -> None:
        """uvm_exit: drop the address space (torn down with its last user)
        and release the u-area."""
        with self.kernel.gate:
            self._check_alive()
            proc_exit(self.kernel, self)

    def exec(self) -> None:
        """vmspace_exec: a fresh, empty address space; the old one is
        dropped (torn down unless shared).  Limits stay."""
        k = self.kernel
        with k.gate:
            old = self._live()
            self.vmspace = vmspace_alloc(k, self.name)
            vmspace_free(old)

    def unshare(self) -> None:
        """vmspace_unshare: a private copy of a shared address space (as a
        fork would make it); a no-op when nobody else shares it."""
        k = self.kernel
        with k.gate:
            if self._live().refcnt == 1:
                return
            with reserve(k, 0) as resv:
                new = _fork_vmspace(k, self, resv)
            # What was copied is the space the process has now: the sleeps
            # for memory above may have seen it exec or unshare meanwhile.
            old = self.vmspace
            if old.refcnt == 1:  # nobody shares it any more: a no-op after all
                vmspace_free(new)
                return
            self.vmspace = new
            vmspace_free(old)

    def map_stack(self, max_size: int, init_size: int = SGROWSIZ, addr: int = 0) -> int:
        """vm_map_stack: reserve `max_size` bytes for a grow-down stack (at
        `addr`, or where there is room, as high as possible), map its top
        `init_size` bytes, and return the top address.  The lowest page is
        a guard that is never mapped; faults below the mapped part grow it
        (within max_size and RLIMIT_STACK).  ENOMEM if the range is not free."""
        n = _int("max_size", max_size)
        init = _int("init_size", init_size)
        a = _int("addr", addr)
        if n <= 0 or n & PAGE_MASK or init <= 0 or init & PAGE_MASK or init > n - PAGE_SIZE:
            raise einval(f"stack sizes must be page multiples with 0 < init_size ({init})"
                         f" <= max_size ({n}) - one guard page")
        if a:
            _range(a, n)
        k = self.kernel
        with k.gate:
            vmap = self._primed(entries=1)
            if init > self.limits[resource.RLIMIT_STACK][0]:
                raise VMError(errno.ENOMEM, f"stack of {init} bytes exceeds RLIMIT_STACK")
            if a:
                if not stack_range_free(vmap, a, a + n):
                    raise VMError(errno.ENOMEM, f"stack range {a:#x}-{a + n:#x} overlaps a mapping"
                                                " or another stack's reservation")
                bos = a
            else:
                top_hint = VM_MAXUSER_ADDRESS - n
                found = (top_hint if top_hint >= VM_MIN_ADDRESS and stack_range_free(vmap, top_hint, VM_MAXUSER_ADDRESS)
                         else None)
                if found is None:
                    found = vmap.find_space(VM_MIN_ADDRESS, n)
                if found is None:
                    raise VMError(errno.ENOMEM, f"no {n:#x}-byte hole for a stack")
                bos = found
            self._check_size_limits(vmap, init, MAP_PRIVATE | MAP_ANON, None, bos)
            top = bos + n
            e = VMMapEntry(top - init, top, None, 0, PROT_READ | PROT_WRITE, PROT_ALL, INHERIT_COPY, False,
                           STACK_NAME)
            e.grow_floor = bos + PAGE_SIZE
            vmap.insert(e)
            return top

    # -- access checks and wiring for I/O ---------------------------------------------

    def useracc(self, addr: int, length: int, prot: int) -> bool:
        """uvm_useracc: whether all of the range is mapped with `prot`
        (False on any hole, or a range outside user space)."""
        a, n = _int("addr", addr), _int("length", length)
        pr = _int("prot", prot)
        if pr & ~PROT_ALL or pr < 0:
            raise einval(f"bad protection {pr:#x}")
        with self.kernel.gate:
            vmap = self._live()
            if a < VM_MIN_ADDRESS or n < 0 or a + n > VM_MAXUSER_ADDRESS:
                return False
            return vmap.check_protection(a & ~PAGE_MASK, (a + n + PAGE_MASK) & ~PAGE_MASK, pr)

    def vslock(self, addr: int, length: int, prot: int = PROT_READ | PROT_WRITE) -> None:
        """uvm_vslock: fault in and wire a range for I/O (all or nothing; not
        charged to RLIMIT_MEMLOCK).  SegmentationFault where `prot` is not
        allowed; undo with vsunlock."""
        start, end = _io_range(addr, length)
        pr = _int("prot", prot)
        if pr < 0 or pr & ~PROT_ALL:
            raise einval(f"bad protection {pr:#x}")
        k = self.kernel
        with k.gate:
            vmap = self._live()
            access = pr if pr & PROT_WRITE else PROT_READ
            check_access(vmap, start, end - start, access)
            with reserve(k, 0) as resv:
                vmap = self._reserve_wiring(resv, start, end, limits=False)
                vmap.wire(start, end, resv, access=access)

    def vsunlock(self, addr: int, length: int) -> None:
        """uvm_vsunlock: unwire what vslock wired."""
        start, end = _io_range(addr, length)
        self.munlock(start, end - start)

    def coredump_segments(self) -> list[coredump.CoreSegment]:
        """uvm_coredump_walkmap (see coredump.walk): one segment per entry,
        with the runs of pages that have contents; never pages anything in
        or materialises untouched memory."""
        with self.kernel.gate:
            self._check_alive()
            return coredump.walk(self.kernel, self.vmspace)

    def coredump(self, path: str) -> None:
        """Write an ELF core file of the process to `path` (mode 0600)."""
        if not isinstance(path, str):
            raise TypeError("path must be str")
        with self.kernel.gate:
            self._check_alive()
            segments = coredump.walk(self.kernel, self.vmspace)
            state = self.state
        coredump.write_core(path, segments, self.name, self.pid, self.ppid, state=state)

    # -- inspection --------------------------------------------------------------------

    def maps(self) -> list[MapEntry]:
        """The map entries (inspection: a swapped-out process stays out)."""
        with self.kernel.gate:
            self._check_alive()
            return [entry_record(e) for e in self.vmspace.entries()]

    def smaps(self) -> list[SmapsInfo]:
        with self.kernel.gate:
            self._check_alive()
            vmap = self.vmspace
            return [smaps_record(self.kernel, vmap, e) for e in vmap.entries()]

    def status(self) -> ProcStatus:
        """Name, state, sizes (side-effect free: a swapped-out process stays out)."""
        with self.kernel.gate:
            self._check_alive()
            return status_record(self.vmspace, self.name, STATE_NAMES[self.state], self.pid, self.ppid)

STATE_NAMES = {"R": "R (running)", "S": "S (sleeping)", "T": "T (stopped)", "W": "W (swapped out)",
               "Z": "Z (zombie)"}


def _is_data(shared: bool, max_prot: int) -> bool:
    """Memory RLIMIT_DATA counts: private and possibly writable."""
    return not shared and bool(max_prot & PROT_WRITE)


# -- the process glue (kernel lock held by every caller) ----------------------------------

def uarea_alloc(k: Kernel) -> int:
    """uvm_uarea_alloc: from the cache, else wired kmem (may wait for memory)."""
    if k.uarea_cache:
        return k.uarea_cache.pop()
    return k.kmem.alloc_locked(k.kmem_map, USPACE, "uarea")


def uarea_free(k: Kernel, addr: int) -> None:
    """uvm_uarea_free: keep up to UAREA_CACHE, free the rest, and any that
    is no longer read-write (chgkprot changed it: the next process would
    inherit that)."""
    intact = all(e.prot == PROT_READ | PROT_WRITE for e in k.kmem_map.entries_in(addr, addr + USPACE))
    if intact and len(k.uarea_cache) < UAREA_CACHE:
        k.uarea_cache.append(addr)
    else:
        k.kmem_map.delete(addr, addr + USPACE)


def drain_uareas(k: Kernel) -> int:
    """Free the cached u-areas (a pagedaemon reclaimer); returns pages freed."""
    freed = 0
    while k.uarea_cache and pool_room(k, entries=2):  # deleting may clip merged entries
        addr = k.uarea_cache.pop()
        k.kmem_map.delete(addr, addr + USPACE)
        freed += USPACE >> PAGE_SHIFT
    return freed


def proc_spawn(k: Kernel, name: str) -> Proc:
    """A process with an empty address space and the initial limits."""
    uarea = uarea_alloc(k)
    pid = k.allocate_pid()
    p = Proc(k, pid, 0, name, vmspace_alloc(k, name), uarea, resource.initial_limits(k.physmem.limit,
                                                                                      k.wired_limit))
    k.proctab[pid] = p
    return p


def _fork_vmspace(k: Kernel, parent: Proc, resv: Reservation) -> Vmspace:
    """A copy of the parent's space per inheritance.  Everything that can
    wait for memory — the frames for the eager copy of wired memory, the
    pool items — is had first and re-checked after any sleep, so the copy
    itself never sleeps and a failure leaves nothing behind."""
    def wired_pages(vmap: VMMap) -> int:
        return sum(e.npages for e in vmap.entries() if e.wired_count and e.inheritance == INHERIT_COPY)

    while True:
        reserve_more(k, resv, wired_pages(parent._live()))
        n = parent._live().tree.count
        vmap = parent._primed(entries=n + 1, objects=n + 1)
        if len(resv.frames) >= wired_pages(vmap) and vmap.tree.count <= n:
            return vmspace_fork(k, vmap, parent.name, resv)


def proc_fork(k: Kernel, parent: Proc, name: str, shared: bool) -> Proc:
    """uvm_fork: the child's u-area and address space (copied, or shared),
    its limits inherited.  OutOfMemory leaves no half-made child."""
    parent._live()
    with reserve(k, 0) as resv:
        cached = bool(k.uarea_cache)
        uarea = uarea_alloc(k)
        try:
            if shared:
                vmspace = parent._live()
                vmspace.refcnt += 1
            else:
                vmspace = _fork_vmspace(k, parent, resv)
        except BaseException:
            if cached:
                uarea_free(k, uarea)
            else:  # a failed fork leaves no u-area behind, not even cached
                k.kmem_map.delete(uarea, uarea + USPACE)
            raise
    pid = k.allocate_pid()
    child = Proc(k, pid, parent.pid, name, vmspace, uarea, dict(parent.limits))
    k.proctab[pid] = child
    k.uvmexp.forks += 1
    return child


def proc_exit(k: Kernel, p: Proc) -> None:
    """uvm_exit: drop the vmspace and free the u-area."""
    p.alive = False
    vmspace_free(p.vmspace)
    if p.swapped:  # its u-area is pageable: never cache it for a new process
        p.swapped = False
        k.nswapped -= 1
        if not p.swapping_in:  # else the sleeping swap-in frees it when it wakes: no reuse meanwhile
            k.kmem_map.delete(p.uarea, p.uarea + USPACE)
    else:
        uarea_free(k, p.uarea)
    del k.proctab[p.pid]
    k.uvmexp.exits += 1
