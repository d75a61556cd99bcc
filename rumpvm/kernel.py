"""The kernel: boot and shutdown, page allocation and memory waits, the
public facade (DESIGN.md "Public API"), counters, and the process table.

Boot reads `RUMP_MEMLIMIT` through the hypercall layer (unless `memlimit`
is given), opens the swap file (before anything else starts, so a bad path
fails cleanly), builds kernel_map with its submaps, and starts the
pagedaemon thread.

Locking.  One kernel lock (`lock`, a plain mutex) guards all VM state, the
way Giant did in early SMP BSD: under CPython's GIL finer locks would add
cost without parallelism.  The BSD rules that matter still hold: no lock is
held across host I/O (pages under I/O are busy; waiters sleep on
`page_cv`), a thread that needs memory sleeps on `mem_cv` for at most
`oom_timeout` seconds, and the pagedaemon never waits for memory.
XXX: per-map and per-object locks would let page-in of one process overlap
faults of another; today they overlap only with the I/O itself.

Invariants (verified by `check`): see rumpvm/check.py.
"""

from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

import hypercall

from . import object as vm_object
from .constants import (INHERIT_SHARE, PAGE_SHIFT, PAGE_SIZE, PROT_ALL, PROT_READ, PROT_WRITE,
                        VM_MAX_KERNEL_ADDRESS, VM_MIN_KERNEL_ADDRESS)
from .check import check_kernel
from .errors import OutOfMemory, VMError, einval
from .inspect import (KmemMapInfo, ObjectInfo, PoolInfo, SwapInfo, entry_record, object_record,
                      peek_object)
from .kmem import Kmem
from .map import VMMap, VMMapEntry
from .object import VMObject
from .page import ACTIVE, PageQueues, VMPage
from .pagedaemon import Pagedaemon
from .param import format_size, parse_limit, parse_size
from .physmem import MIN_LIMIT, PhysMem
from .pool import Pool
from .proc import UAREA_CACHE, USPACE, Proc
from .swap_pager import SwapPager
from .uio import vm_write
from .vmspace import vmspace_alloc, vmspace_fork


@dataclass
class Counters:
    """uvmexp-style event counters (page counts come from the queues)."""

    faults: int = 0
    zerofills: int = 0
    cowfaults: int = 0
    pageins: int = 0
    pageouts: int = 0
    pdwoke: int = 0
    pdscans: int = 0
    pdreact: int = 0
    pdfreed: int = 0
    oomwaits: int = 0
    oomfails: int = 0
    limitchanges: int = 0
    collapses: int = 0
    forks: int = 0
    exits: int = 0


def _parse_memlimit(value: int | str | None, what: str = "memlimit") -> int | None:
    """Parse and check a memory limit; EINVAL messages state the minimum."""
    try:
        limit = parse_limit(value, what)
    except VMError as e:
        raise einval(f"{e.strerror}; a limit must be 'unlimited' or at least {MIN_LIMIT} bytes"
                     f" ({MIN_LIMIT // 1024}K)") from None
    if limit is not None and limit < MIN_LIMIT:
        raise einval(f"memory limit {limit} is below the minimum of {MIN_LIMIT} bytes"
                     f" ({MIN_LIMIT // 1024}K: the pagedaemon reserve plus a working minimum)")
    return limit


class Kernel:
    """A rumpvm kernel.  Use as a context manager; see DESIGN.md."""

    def __init__(self, memlimit: int | str | None = None, swap: int | str = 0,
                 swapfile: str | None = None, policy: str = "clock",
                 oom_timeout: float = 3.0, wired_limit: int | str | None = None) -> None:
        if memlimit is None:
            env = hypercall.getparam("RUMP_MEMLIMIT")
            limit = _parse_memlimit(env, "RUMP_MEMLIMIT") if env is not None else None
        else:
            limit = _parse_memlimit(memlimit)
        swap_bytes = parse_size(swap, "swap")
        if swap_bytes < 0:
            raise einval(f"swap size {swap_bytes} is negative")
        if isinstance(oom_timeout, bool) or not isinstance(oom_timeout, (int, float)) or oom_timeout < 0:
            raise einval(f"oom_timeout {oom_timeout!r} must be a non-negative number")
        self.lock = threading.Lock()
        self.page_cv = threading.Condition(self.lock)
        self.mem_cv = threading.Condition(self.lock)
        self.mem_waiters = 0
        # Times a thread dropped the lock to sleep inside a fault; readers
        # holding page views across faults use it to detect a sleep.
        self.lockdrops = 0
        # Pages busy for swap I/O (a page whose object died meanwhile belongs
        # to no object until its I/O ends; check() counts its frame here).
        self.io_pages: set[VMPage] = set()
        self.oom_timeout = float(oom_timeout)
        self.swap: SwapPager | None = SwapPager(swap_bytes, swapfile) if swap_bytes >= PAGE_SIZE else None
        self.physmem = PhysMem(limit)
        self.uvmexp = Counters()
        self.queues = PageQueues()
        self.touch: Callable[[VMPage], None] | None = None
        self.objtab: dict[int, VMObject] = {}
        self._next_oid = 1
        self.proctab: dict[int, Proc] = {}
        self._next_pid = 1
        self.wired_user_pages = 0
        self._wired_limit_arg = wired_limit
        self.closed = False
        self.mounts: list[Any] = []
        self.pooltab = {name: Pool(name, size, self.physmem)
                      for name, size in (("vm_map_entry", 128), ("vm_object", 256))}
        self.pagedaemon = Pagedaemon(self, policy)
        self.pagedaemon.reclaimers.append(self._drain_pools)
        self.uarea_cache: list[int] = []
        with self.lock:
            self.kernel_object = vm_object.allocate(
                self, (VM_MAX_KERNEL_ADDRESS - VM_MIN_KERNEL_ADDRESS) >> PAGE_SHIFT, "kernel")
            self.kernel_object.handles = 1  # the kernel's own reference
        self.kernel_map = VMMap(self, VM_MIN_KERNEL_ADDRESS, VM_MAX_KERNEL_ADDRESS, "kernel_map")
        self.kmem = Kmem(self, self.kernel_map)
        self.kmem_map = self.kmem.suballoc(self.kernel_map, 64 << 20, "kmem_map")
        self.pager_map = self.kmem.suballoc(self.kernel_map, 4 << 20, "pager_map")
        self.pagedaemon.start()

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmount, stop the pagedaemon, free all host memory and the swap file."""
        if self.closed:
            return
        for m in list(self.mounts):
            m.unmount()
        self.pagedaemon.stop()
        with self.lock:
            self.closed = True
            for p in list(self.proctab.values()):
                p.alive = False
            self.proctab.clear()
        self.kmem.close()
        self.physmem.close()
        if self.swap is not None:
            self.swap.close()

    # -- memory ----------------------------------------------------------------------

    @property
    def memlimit(self) -> int | None:
        return self.physmem.limit

    @memlimit.setter
    def memlimit(self, value: int | str | None) -> None:
        """Change the limit live.  Lowering it wakes the pagedaemon and waits
        (up to oom_timeout) until resident memory is under the new limit."""
        limit = _parse_memlimit(value)
        with self.lock:
            self.physmem.limit = limit
            self.uvmexp.limitchanges += 1
            self.pagedaemon.autotune()
            self.pagedaemon.stalled = False
            self.pagedaemon.wake()
            self.mem_cv.notify_all()
            if limit is None:
                return
            deadline = time.monotonic() + self.oom_timeout
            while self.physmem.resident > limit and time.monotonic() < deadline:
                self.pagedaemon.wake()
                self.mem_cv.wait(0.05)

    @property
    def wired_limit(self) -> int | None:
        """The mlock limit (RLIMIT_MEMLOCK): by default a third of the limit."""
        if self._wired_limit_arg is not None:
            return parse_size(self._wired_limit_arg, "wired_limit")
        return None if self.physmem.limit is None else self.physmem.limit // 3

    def in_pagedaemon(self) -> bool:
        return threading.current_thread() is self.pagedaemon.thread

    def free_pages(self) -> int:
        return min(self.physmem.avail_pages(), 1 << 31)

    def page_alloc(self, obj: VMObject, pindex: int) -> VMPage | None:
        """A new page of `obj` at `pindex`, on the active queue; None when
        memory is short (the caller waits with memwait and retries)."""
        pm = self.physmem
        frame = pm.alloc_frame(self.in_pagedaemon())
        if frame is None:
            return None
        addr, buf, off = pm.frame_location(frame)
        page = VMPage(obj, pindex, frame, addr, buf, off)
        obj.pages[pindex] = page
        self.queues.enqueue(page, ACTIVE)
        if pm.limit is not None and pm.avail_pages() < self.pagedaemon.freemin:
            self.pagedaemon.wake()
        return page

    def page_free(self, page: VMPage) -> None:
        """Return a page's frame.  The page must have no translations."""
        if page.wire_count:
            page.wire_count = 1
            self.queues.unwire(page)
        self.queues.dequeue(page)
        obj = page.obj
        if obj is not None and obj.pages.get(page.pindex) is page:
            del obj.pages[page.pindex]
        page.obj = None
        self.physmem.free_frame(page.frame)
        self.pagedaemon.stalled = False
        if self.mem_waiters:
            self.mem_cv.notify_all()

    def swap_free(self, slot: int) -> None:
        assert self.swap is not None
        self.swap.free(slot)

    def memwait(self, deadline: float | None) -> float:
        """Sleep until memory may be available (the lock is dropped); raise
        OutOfMemory once `deadline` (set on the first call) has passed."""
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.oom_timeout
            self.uvmexp.oomwaits += 1
        if now >= deadline or self.in_pagedaemon():
            self.uvmexp.oomfails += 1
            raise OutOfMemory(f"out of memory: nothing could be freed within {self.oom_timeout:g}s")
        if not self.pagedaemon.stalled:
            self.pagedaemon.wake()
        self.mem_waiters += 1
        self.lockdrops += 1
        try:
            self.mem_cv.wait(deadline - now)
        finally:
            self.mem_waiters -= 1
        return deadline

    def pool_room(self, entries: int = 0, objects: int = 0) -> bool:
        """Grow pools so they hold `entries` map entries and `objects`
        objects more; False when memory is short (nothing is waited for)."""
        for pool, need in ((self.pooltab["vm_map_entry"], entries), (self.pooltab["vm_object"], objects)):
            while pool.room() < need:
                if not pool.grow(self.in_pagedaemon()):
                    return False
        return True

    def pool_prime(self, entries: int = 0, objects: int = 0) -> None:
        """pool_room, waiting for memory (OutOfMemory after oom_timeout).
        Called at the start of an operation, before it changes anything."""
        deadline = None
        while not self.pool_room(entries, objects):
            deadline = self.memwait(deadline)

    def _drain_pools(self) -> int:
        freed = sum(p.drain() for p in self.pooltab.values())
        while self.uarea_cache:
            self.kmem_map.delete(self.uarea_cache[-1], self.uarea_cache.pop() + USPACE)
            freed += USPACE // PAGE_SIZE
        return freed

    def next_object_id(self) -> int:
        oid = self._next_oid
        self._next_oid += 1
        return oid

    # -- processes -------------------------------------------------------------------

    def _uarea_alloc(self) -> int:
        """uvm_uarea_alloc: from the cache, else wired kmem."""
        with self.lock:
            if self.uarea_cache:
                return self.uarea_cache.pop()
        return self.kmem.alloc(self.kmem_map, USPACE, "uarea")

    def _uarea_free(self, addr: int) -> None:
        """uvm_uarea_free: keep up to UAREA_CACHE, free the rest (lock held)."""
        if len(self.uarea_cache) < UAREA_CACHE:
            self.uarea_cache.append(addr)
        else:
            self.kmem_map.delete(addr, addr + USPACE)

    def spawn(self, name: str = "proc") -> Proc:
        """A new process with an empty address space."""
        if not isinstance(name, str):
            raise TypeError("name must be str")
        uarea = self._uarea_alloc()
        with self.lock:
            self._check_open()
            pid = self._next_pid
            self._next_pid += 1
            p = Proc(self, pid, 0, name, vmspace_alloc(self, name), uarea)
            self.proctab[pid] = p
            return p

    def _fork(self, parent: Proc, name: str | None) -> Proc:
        uarea = self._uarea_alloc()
        try:
            with self.lock:
                vmap = parent._live()
                n = vmap.tree.count
                self.pool_prime(entries=n + 1, objects=n + 1)
                child_map = vmspace_fork(self, vmap, name or parent.name)
                pid = self._next_pid
                self._next_pid += 1
                child = Proc(self, pid, parent.pid, name or parent.name, child_map, uarea)
                self.proctab[pid] = child
                self.uvmexp.forks += 1
                return child
        except BaseException:
            with self.lock:
                self._uarea_free(uarea)
            raise

    def _exit(self, p: Proc) -> None:
        with self.lock:
            if not p.alive:
                raise VMError(errno.ESRCH, f"process {p.pid} has already exited")
            p.alive = False
            p.vmspace.destroy()
            self._uarea_free(p.uarea)
            del self.proctab[p.pid]
            self.uvmexp.exits += 1

    def procs(self) -> list[Proc]:
        with self.lock:
            return sorted(self.proctab.values(), key=lambda p: p.pid)

    def proc(self, pid: int) -> Proc:
        with self.lock:
            p = self.proctab.get(pid)
        if p is None:
            raise VMError(errno.ESRCH, f"no process {pid}")
        return p

    def _check_open(self) -> None:
        if self.closed:
            raise VMError(errno.ESHUTDOWN, "kernel is closed")

    # -- objects --------------------------------------------------------------------

    def create_object(self, size: int) -> VMObject:
        """uao_create: an anonymous object of `size` bytes (rounded up to
        pages) for MAP_SHARED mappings; `detach()` drops the caller's hold."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError("size must be int")
        if size <= 0 or size >= VM_MAX_KERNEL_ADDRESS - VM_MIN_KERNEL_ADDRESS:
            raise einval(f"bad object size {size}")
        with self.lock:
            self._check_open()
            self.pool_prime(objects=1)
            obj = vm_object.allocate(self, (size + PAGE_SIZE - 1) >> PAGE_SHIFT)
            obj.handles = 1
            return obj

    def detach_object(self, obj: VMObject) -> None:
        with self.lock:
            if obj.handles <= 0:
                raise VMError(errno.EINVAL, f"object {obj.id} is not held")
            obj.handles -= 1
            vm_object.deallocate(self, obj)

    def _object(self, oid: int) -> VMObject:
        if isinstance(oid, bool) or not isinstance(oid, int):
            raise TypeError("object id must be int")
        obj = self.objtab.get(oid)
        if obj is None:
            raise VMError(errno.ENOENT, f"no object {oid}")
        return obj

    def objects(self) -> list[ObjectInfo]:
        with self.lock:
            return [object_record(o) for _, o in sorted(self.objtab.items())]

    def object_info(self, oid: int) -> ObjectInfo:
        with self.lock:
            return object_record(self._object(oid))

    def object_peek(self, oid: int, offset: int, length: int) -> bytes:
        for v in (offset, length):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError("offset and length must be int")
        if offset < 0 or length < 0:
            raise einval("negative offset or length")
        with self.lock:
            return peek_object(self, self._object(oid), offset, length)

    def object_write(self, oid: int, offset: int, data: bytes) -> None:
        """Write into an object through the VM: pages become resident and
        dirty; copy-on-write below it is honoured (pages of backing objects
        are copied up first)."""
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError("offset must be int")
        if offset < 0:
            raise einval("negative offset")
        with self.lock:
            obj = self._object(oid)
            if offset + len(data) > obj.size << PAGE_SHIFT:
                raise VMError(errno.EFBIG, f"write past the end of object {oid}")
            if not data:
                return
            # A private window onto the object in kernel_map, as uiomove
            # through a pager mapping would do.
            self.pool_prime(entries=3)
            start = offset & ~(PAGE_SIZE - 1)
            end = (offset + len(data) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            addr = self.pager_map.find_space(self.pager_map.min, end - start)
            if addr is None:
                raise VMError(errno.ENOMEM, "no pager_map space")
            obj.ref_count += 1
            e = VMMapEntry(addr, addr + end - start, obj, start, PROT_READ | PROT_WRITE, PROT_ALL,
                           INHERIT_SHARE, True, "objwin")
            self.pager_map.insert(e)
            try:
                vm_write(self, self.pager_map, addr + offset - start, data)
            finally:
                self.pager_map.delete(addr, addr + end - start)

    # -- counters and inspection ------------------------------------------------------

    def stats(self) -> dict[str, int]:
        with self.lock:
            pm = self.physmem
            limit = pm.limit
            npages = limit // PAGE_SIZE if limit is not None else pm.total_frames
            out = {
                "pagesize": PAGE_SIZE,
                "npages": npages,
                "free": max(0, npages - pm.frames_in_use) if limit is not None else len(pm.free_frames),
                "active": len(self.queues.active),
                "inactive": len(self.queues.inactive),
                "wired": self.queues.wired + sum(p.npages for p in self.pooltab.values()),
                "swpages": self.swap.nslots if self.swap else 0,
                "swpginuse": self.swap.inuse if self.swap else 0,
                "resident": pm.resident,
                "memlimit": limit or 0,
                "kmem_charged": pm.charged,
                "objects": len(self.objtab),
                "procs": len(self.proctab),
                "referenced": sum(1 for q in (self.queues.active, self.queues.inactive)
                                  for p in q if p.referenced),
            }
            out.update({f.name: getattr(self.uvmexp, f.name) for f in fields(Counters)})
            return out

    def meminfo(self) -> dict[str, int]:
        """/proc/meminfo fields, in bytes."""
        s = self.stats()
        total = s["npages"] * PAGE_SIZE
        free = s["free"] * PAGE_SIZE if self.physmem.limit is not None else max(0, total - s["resident"])
        with self.lock:
            dirty = sum(1 for q in (self.queues.active, self.queues.inactive) for p in q if p.dirty)
            anon = sum(len(o.pages) for o in self.objtab.values() if o.type == "anon")
        swap_total = s["swpages"] * PAGE_SIZE
        return {
            "MemTotal": total, "MemFree": free,
            "MemAvailable": free + s["inactive"] * PAGE_SIZE,
            "Active": s["active"] * PAGE_SIZE, "Inactive": s["inactive"] * PAGE_SIZE,
            "Active(anon)": s["active"] * PAGE_SIZE, "Inactive(anon)": s["inactive"] * PAGE_SIZE,
            "Unevictable": s["wired"] * PAGE_SIZE, "Mlocked": self.wired_user_pages * PAGE_SIZE,
            "SwapTotal": swap_total, "SwapFree": swap_total - s["swpginuse"] * PAGE_SIZE,
            "Dirty": dirty * PAGE_SIZE, "AnonPages": anon * PAGE_SIZE,
            "KernelAlloc": s["kmem_charged"] + s["wired"] * PAGE_SIZE,
        }

    def swaps(self) -> list[SwapInfo]:
        with self.lock:
            if self.swap is None:
                return []
            return [SwapInfo(self.swap.path, "file", self.swap.nslots * PAGE_SIZE,
                             self.swap.inuse * PAGE_SIZE, -2)]

    def kmem_maps(self) -> list[KmemMapInfo]:
        with self.lock:
            return [KmemMapInfo(m.name, m.min, m.max, m.size, [entry_record(e) for e in m.entries()])
                    for m in (self.kernel_map, *self.kmem.submaps)]

    def pools(self) -> list[PoolInfo]:
        with self.lock:
            return [PoolInfo(p.name, p.size, p.inuse, p.npages, p.nget, p.nput) for p in self.pooltab.values()]

    def check(self) -> None:
        """Verify all bookkeeping; raise AssertionError listing violations."""
        with self.lock:
            errors = check_kernel(self)
        if errors:
            raise AssertionError("rumpvm check failed:\n  " + "\n  ".join(errors[:50]))

    def mount(self, path: str, allow_other: bool = False) -> Any:
        """Mount the /vm view at `path` in a background thread (the FUSE
        server registered under the `rumpvm.mount` entry point)."""
        from importlib.metadata import entry_points
        eps = [ep for ep in entry_points(group="rumpvm.mount") if ep.name == "fuse"]
        if not eps:
            raise VMError(errno.ENODEV, "no FUSE server installed (entry point rumpvm.mount:fuse)")
        handle = eps[0].load()(self, path, allow_other=allow_other)
        self.mounts.append(handle)
        return handle

    def __repr__(self) -> str:
        return f"<rumpvm.Kernel memlimit={format_size(self.memlimit)} procs={len(self.proctab)}>"
