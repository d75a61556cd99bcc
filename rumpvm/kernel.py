"""The kernel: boot and shutdown, page allocation and memory waits, the
public facade (the API of README.md), counters, and the process table.

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

Entry and shutdown.  Every public call enters through `gate` (the lock, a
closed check, and a count of threads inside).  `close` marks the kernel
closed, wakes every sleeper (each then raises VMError(ESHUTDOWN)), waits
until no thread is inside, stops the pagedaemon, and only then returns host
memory.  A kernel dropped without `close` is released by a finalizer (its
pagedaemon holds it only weakly).
XXX: per-map and per-object locks would let page-in of one process overlap
faults of another; today they overlap only with the I/O itself.

Invariants (verified by `check`): see rumpvm/check.py.
"""

from __future__ import annotations

import errno
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import hypercall

from . import inspect, swapper, uio, window
from . import object as vm_object
from .check import check_kernel
from .constants import (
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_ALL,
    USPACE,
    VM_MAX_KERNEL_ADDRESS,
    VM_MIN_KERNEL_ADDRESS,
)
from .errors import VMError, einval
from .fault import resolve
from .inspect import KmemMapInfo, ObjectInfo, PoolInfo, SwapInfo, entry_record, object_record, peek_object
from .kmem import Kmem
from .map import VMMap
from .object import VMObject
from .page import PageQueues, VMPage
from .pagedaemon import Pagedaemon, stop_daemon
from .param import format_size, parse_limit, parse_size
from .physmem import MIN_LIMIT, PDRESERVE_PAGES, PhysMem, Reservation, pool_prime
from .pool import Pool
from .proc import Proc, drain_uareas, proc_spawn
from .swap_pager import SwapPager


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
    swapouts: int = 0
    swapins: int = 0
    directreclaims: int = 0


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


class _Gate:
    """`with k.gate:` — the way into the kernel for every public call: takes
    the lock, refuses a closed kernel (ESHUTDOWN), and counts the thread as
    inside until it leaves (close waits for that count to reach zero)."""

    __slots__ = ("k",)

    def __init__(self, k: Kernel) -> None:
        self.k = k

    def __enter__(self) -> None:
        k = self.k
        k.lock.acquire()
        if k.closed:
            k.lock.release()
            raise VMError(errno.ESHUTDOWN, "kernel is closed")
        k.inside += 1

    def __exit__(self, *exc: object) -> None:
        k = self.k
        k.inside -= 1
        if k.closed and not k.inside:
            k.mem_cv.notify_all()
        k.lock.release()


def _release_host(pd_args: tuple[Any, ...], physmem: PhysMem, km_arenas: dict[int, hypercall.Arena],
                  swap: SwapPager | None) -> None:
    """Give a kernel's host resources back (close, or the finalizer of a
    kernel dropped without close).  Holds no reference to the kernel."""
    stop_daemon(*pd_args)
    for arena in km_arenas.values():
        hypercall.unmap(arena)
    km_arenas.clear()
    physmem.close()
    if swap is not None:
        swap.close()


class Kernel:
    """A rumpvm kernel.  Use as a context manager; see README.md."""

    def __init__(self, memlimit: int | str | None = None, swap: int | str = 0,
                 swapfile: str | None = None, policy: str = "clock",
                 oom_timeout: float = 3.0, wired_limit: int | str | None = None,
                 policy_seed: int | None = None) -> None:
        if memlimit is None:
            env = hypercall.getparam("RUMP_MEMLIMIT")
            limit = _parse_memlimit(env, "RUMP_MEMLIMIT") if env is not None else None
        else:
            limit = _parse_memlimit(memlimit)
        swap_bytes = parse_size(swap, "swap")
        if swap_bytes < 0:
            raise einval(f"swap size {swap_bytes} is negative")
        if isinstance(oom_timeout, bool) or not isinstance(oom_timeout, (int, float)):
            raise TypeError(f"oom_timeout must be a number, not {type(oom_timeout).__name__}")
        if not (0 <= oom_timeout <= threading.TIMEOUT_MAX and math.isfinite(oom_timeout)):
            raise einval(f"oom_timeout {oom_timeout!r} must be a finite number of seconds >= 0")
        if swapfile is not None:
            if not isinstance(swapfile, str):
                raise TypeError(f"swapfile must be str, not {type(swapfile).__name__}")
            if "\0" in swapfile or not swapfile:
                raise einval(f"swapfile {swapfile!r} is not a usable path")
        wired = parse_limit(wired_limit, "wired_limit")
        if wired is not None and wired < 0:
            raise einval(f"wired_limit {wired} is negative")
        self.lock = threading.Lock()
        self.gate = _Gate(self)
        self.inside = 0  # threads inside public calls (see _Gate)
        self.reservations: set[Reservation] = set()
        self.windows: list[Any] = []  # open host windows (window.py)
        self.window_totals: Counter[str] = Counter()  # counters of closed windows
        self.host: Proc | None = None  # the process whose map shows them
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
        self.physmem = PhysMem(limit)
        try:
            self.swap: SwapPager | None = SwapPager(swap_bytes, swapfile) if swap_bytes >= PAGE_SIZE else None
        except OSError as e:
            raise VMError(e.errno or errno.EIO, f"swap file: {e.strerror or e}") from None
        if self.swap is not None and not self.physmem.charge(self.swap.bookkeeping_bytes):
            need = self.swap.bookkeeping_bytes
            self.swap.close()
            raise VMError(errno.ENOMEM, f"swap of {swap_bytes} bytes needs {need} bytes of bookkeeping,"
                                        f" more than the memory limit allows")
        self.uvmexp = Counters()
        self.queues = PageQueues()
        self.touch: Callable[[VMPage], None] | None = None
        self.objtab: dict[int, VMObject] = {}
        self._next_oid = 1
        self.proctab: dict[int, Proc] = {}
        self._next_pid = 1
        self.wired_user_pages = 0
        self._wired_limit = wired
        self._limit_changing = False  # a memlimit change is running (they are serialised)
        self.closed = False
        self.closing = False  # close() has begun: windows closing now keep nothing
        self.mounts: list[Any] = []
        self.pooltab = {name: Pool(name, size, self.physmem)
                      for name, size in (("vm_map_entry", 128), ("vm_object", 256))}
        self.policy_seed = policy_seed  # seeds the policies the pagedaemon makes (random)
        self.pagedaemon = Pagedaemon(self, policy)
        self.pagedaemon.reclaimers.append(self._drain_pools)
        self.uarea_cache: list[int] = []
        self.maxslp = swapper.MAXSLP  # seconds asleep before a process is swapped out first
        self.nswapped = 0  # processes swapped out (the scheduler has work)
        with self.lock:
            self.kernel_object = vm_object.allocate(
                self, (VM_MAX_KERNEL_ADDRESS - VM_MIN_KERNEL_ADDRESS) >> PAGE_SHIFT, "kernel")
            self.kernel_object.handles = 1  # the kernel's own reference
        self.kernel_map = VMMap(self, VM_MIN_KERNEL_ADDRESS, VM_MAX_KERNEL_ADDRESS, "kernel_map")
        self.kmem = Kmem(self, self.kernel_map)
        self.kmem_map = self.kmem.suballoc(self.kernel_map, 64 << 20, "kmem_map")
        self.pager_map = self.kmem.suballoc(self.kernel_map, 4 << 20, "pager_map")
        self.pagedaemon.start()
        self._finalizer = weakref.finalize(self, _release_host, self.pagedaemon.thread_args,
                                           self.physmem, self.kmem.km_arenas, self.swap)

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmount, wake every thread inside the kernel (their calls raise
        VMError(ESHUTDOWN)) and wait for them to leave, stop the pagedaemon,
        then free all host memory and the swap file.  A second close is a
        no-op."""
        self.closing = True
        for m in list(self.mounts):
            m.unmount()
        for w in list(self.windows):
            w.close()
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for p in self.proctab.values():
                p.alive = False
            self._wake_all()
            while self.inside:
                self.mem_cv.wait()
            self.proctab.clear()
        self.pagedaemon.stop()
        self._finalizer()

    def _wake_all(self) -> None:
        """Wake every thread sleeping in the kernel (lock held)."""
        self.mem_cv.notify_all()
        self.page_cv.notify_all()
        self.pagedaemon.idle_cv.notify_all()
        for m in (self.kernel_map, *self.kmem.submaps):
            m.space_cv.notify_all()

    def check_open(self) -> None:
        """Raise VMError(ESHUTDOWN) once the kernel is closed (a thread that
        slept inside the kernel calls it when it wakes)."""
        if self.closed:
            raise VMError(errno.ESHUTDOWN, "kernel is closed")

    @contextmanager
    def unlocked(self) -> Iterator[None]:
        """Drop the kernel lock around host I/O (the caller made its pages
        busy), and count the drop so page views taken before are known stale."""
        self.lockdrops += 1
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()

    # -- memory ----------------------------------------------------------------------

    @property
    def memlimit(self) -> int | None:
        with self.gate:
            return self.physmem.limit

    @memlimit.setter
    def memlimit(self, value: int | str | None) -> None:
        """Change the limit live.  Lowering it wakes the pagedaemon and waits
        (up to oom_timeout) until resident memory is under the new limit; if
        that cannot happen (wired memory, no swap) the old limit is restored
        and VMError(ENOMEM) raised.  Changes are serialised: a second one
        waits (within its own oom_timeout) for the first to finish, so a
        failing change never restores a limit another one set for a while."""
        limit = _parse_memlimit(value)
        with self.gate:
            deadline = time.monotonic() + self.oom_timeout
            while self._limit_changing:
                self._sleep_until(deadline, f"memory limit {limit}: another limit change did not finish")
            self._limit_changing = True
            try:
                self._change_limit(limit, deadline)
            finally:
                self._limit_changing = False
                self.mem_cv.notify_all()

    def _change_limit(self, limit: int | None, deadline: float) -> None:
        """The body of the memlimit setter (lock held, the only change running)."""
        old = self.physmem.limit
        if limit is not None and limit < self.unfreeable():
            raise VMError(errno.ENOMEM, f"memory limit {limit} is below the {self.unfreeable()} bytes"
                                        " that cannot be freed (wired, kernel memory, or no swap)")
        self._set_limit(old, limit)
        if limit is None:
            return
        try:
            while self.physmem.resident > limit:
                self.pagedaemon.wake()
                self._sleep_until(deadline, f"memory limit {limit}: resident memory could not be brought under it")
        except VMError:
            self._set_limit(limit, old)
            raise

    def _sleep_until(self, deadline: float, why: str) -> None:
        """Sleep on mem_cv (lock held); ENOMEM past `deadline`, ESHUTDOWN
        once closed."""
        self.check_open()
        now = time.monotonic()
        if now >= deadline:
            raise VMError(errno.ENOMEM, why)
        self.lockdrops += 1
        self.mem_cv.wait(deadline - now)
        self.check_open()

    def _set_limit(self, old: int | None, new: int | None) -> None:
        """Install a limit and rescale the pagedaemon's knobs (lock held)."""
        self.physmem.limit = new
        self.uvmexp.limitchanges += 1
        self.pagedaemon.rescale(old, new)
        self.pagedaemon.stalled = False
        self.pagedaemon.wake()
        self.mem_cv.notify_all()

    def unfreeable(self) -> int:
        """Bytes of resident memory the pagedaemon can never free: wired and
        busy pages, kernel memory outside frames, pool items in use, the
        reserve, and dirty pages when swap is full or absent (lock held)."""
        pm = self.physmem
        queued = len(self.queues.active) + len(self.queues.inactive)
        slots = (self.swap.nslots - self.swap.inuse) if self.swap is not None else 0
        clean = sum(1 for q in (self.queues.active, self.queues.inactive) for p in q if not p.dirty)
        freeable = min(queued, clean + slots) + len(self.uarea_cache) * (USPACE // PAGE_SIZE)
        pool_need = sum(-(-p.inuse // p.perpage) for p in self.pooltab.values())
        pool_pages = sum(p.npages for p in self.pooltab.values())
        return pm.resident - (freeable + pool_pages - pool_need) * PAGE_SIZE + PDRESERVE_PAGES * PAGE_SIZE

    @property
    def wired_limit(self) -> int | None:
        """The mlock limit (RLIMIT_MEMLOCK): by default a third of the limit."""
        if self._wired_limit is not None:
            return self._wired_limit
        return None if self.physmem.limit is None else self.physmem.limit // 3

    def _drain_pools(self) -> int:
        """The pagedaemon's reclaimer: idle pool pages, cached u-areas, and
        host windows' budget that no resident page uses."""
        return sum(p.drain() for p in self.pooltab.values()) + drain_uareas(self) + window.trim(self)

    def next_object_id(self) -> int:
        oid = self._next_oid
        self._next_oid += 1
        return oid

    def allocate_pid(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    # -- processes -------------------------------------------------------------------

    def window(self, length: int, obj: VMObject | None = None, offset: int = 0) -> Any:
        """A host mapping of `length` bytes backed by `obj` (a new anonymous
        object if None) from byte `offset`, paged by rumpvm (window.py)."""
        return window.open_window(self, length, obj, offset)

    def spawn(self, name: str = "proc") -> Proc:
        """A new process with an empty address space."""
        if not isinstance(name, str):
            raise TypeError("name must be str")
        with self.gate:
            return proc_spawn(self, name)

    def kernacc(self, addr: int, length: int, prot: int) -> bool:
        """uvm_kernacc: whether all of the kernel range is mapped with `prot`,
        looking through submaps (False on any hole)."""
        for v in (addr, length, prot):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError("addr, length and prot must be int")
        with self.gate:
            if length < 0 or addr < self.kernel_map.min or addr + length > self.kernel_map.max:
                return False
            va, end = addr & ~(PAGE_SIZE - 1), (addr + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            while va < end:
                _, e = resolve(self.kernel_map, va)
                if e is None or e.prot & prot != prot:
                    return False
                va = e.end
            return True

    def chgkprot(self, addr: int, length: int, prot: int) -> None:
        """uvm_chgkprot: change the protection of a kernel range (within its
        entries' maximum protection)."""
        for v in (addr, length, prot):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError("addr, length and prot must be int")
        if addr & (PAGE_SIZE - 1) or length <= 0 or prot < 0 or prot & ~PROT_ALL:
            raise einval(f"bad kernel range or protection {addr:#x}+{length:#x} {prot:#x}")
        with self.gate:
            end = addr + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
            vmap, _ = resolve(self.kernel_map, addr)
            if addr < vmap.min or end > vmap.max:
                raise VMError(errno.ENOMEM, f"{addr:#x}-{end:#x} is not in one kernel map")
            pool_prime(self, entries=2, objects=2)
            vmap.protect(addr, end, prot, set_max=False)

    def procs(self) -> list[Proc]:
        with self.gate:
            return sorted(self.proctab.values(), key=lambda p: p.pid)

    def proc(self, pid: int) -> Proc:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be int, not {type(pid).__name__}")
        with self.gate:
            p = self.proctab.get(pid)
        if p is None:
            raise VMError(errno.ESRCH, f"no process {pid}")
        return p

    # -- objects --------------------------------------------------------------------

    def create_object(self, size: int) -> VMObject:
        """uao_create: an anonymous object of `size` bytes (rounded up to
        pages) for MAP_SHARED mappings; `detach()` drops the caller's hold."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError("size must be int")
        if size <= 0 or size >= VM_MAX_KERNEL_ADDRESS - VM_MIN_KERNEL_ADDRESS:
            raise einval(f"bad object size {size}")
        with self.gate:
            pool_prime(self, objects=1)
            obj = vm_object.allocate(self, (size + PAGE_SIZE - 1) >> PAGE_SHIFT)
            obj.handles = 1
            return obj

    def detach_object(self, obj: VMObject) -> None:
        """Drop a handle from create_object (EINVAL if none is held, or the
        object belongs to another kernel)."""
        if not isinstance(obj, VMObject):
            raise TypeError("obj must come from Kernel.create_object")
        with self.gate:
            if obj.kernel is not self:
                raise einval(f"object {obj.id} belongs to another kernel")
            if obj.handles <= 0:
                raise VMError(errno.EINVAL, f"object {obj.id} is not held")
            self._drop_handle(obj)

    def _drop_handle(self, obj: VMObject) -> None:
        """Drop one handle of `obj`: what only the handles reached (pages
        written by object offset) is freed with the last one (lock held)."""
        obj.handles -= 1
        if not obj.handles and obj.ref_count > 1:
            vm_object.release(self, obj, 0, obj.size)
        vm_object.deallocate(self, obj)

    def _object(self, oid: int) -> VMObject:
        if isinstance(oid, bool) or not isinstance(oid, int):
            raise TypeError("object id must be int")
        obj = self.objtab.get(oid)
        if obj is None:
            raise VMError(errno.ENOENT, f"no object {oid}")
        return obj

    def objects(self) -> list[ObjectInfo]:
        with self.gate:
            return [object_record(o) for _, o in sorted(self.objtab.items())]

    def object_info(self, oid: int) -> ObjectInfo:
        with self.gate:
            return object_record(self._object(oid))

    def object_peek(self, oid: int, offset: int, length: int) -> bytes:
        for v in (offset, length):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError("offset and length must be int")
        if offset < 0 or length < 0:
            raise einval("negative offset or length")
        with self.gate:
            return peek_object(self, self._object(oid), offset, length)

    def object_write(self, oid: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write into an object through the VM: pages become resident and
        dirty; copy-on-write below it is honoured (pages of backing objects
        are copied up first).  EFBIG past its end; an error part-way
        carries `.written`."""
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError("offset must be int")
        try:
            src = memoryview(data).cast("B")
        except (TypeError, ValueError):  # not a buffer, not contiguous, released or closed
            raise TypeError(f"data must be a live C-contiguous bytes-like object, not {type(data).__name__}") from None
        if offset < 0:
            raise einval("negative offset")
        with self.gate:
            obj = self._object(oid)
            if offset + len(src) > obj.size << PAGE_SHIFT:
                raise VMError(errno.EFBIG, f"write past the end of object {oid}")
            if obj.type == "kernel":
                raise VMError(errno.EPERM, "the kernel's own object is not writable from outside")
            # A hold for the duration, like a handle: the object must
            # outlive any sleep of the write.
            obj.ref_count += 1
            obj.handles += 1
            try:
                uio.object_write(self, obj, offset, src)
            finally:
                self._drop_handle(obj)

    # -- counters and inspection ------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """The kernel's counters (uvmexp names; see inspect.stats)."""
        with self.gate:
            return inspect.stats(self)

    def meminfo(self) -> dict[str, int]:
        """/proc/meminfo fields, in bytes (one consistent snapshot)."""
        with self.gate:
            return inspect.meminfo(self)

    def swaps(self) -> list[SwapInfo]:
        with self.gate:
            if self.swap is None:
                return []
            return [SwapInfo(self.swap.path, "file", self.swap.nslots * PAGE_SIZE,
                             self.swap.inuse * PAGE_SIZE, -2)]

    def kmem_maps(self) -> list[KmemMapInfo]:
        with self.gate:
            return [KmemMapInfo(m.name, m.min, m.max, m.size, [entry_record(e) for e in m.entries()])
                    for m in (self.kernel_map, *self.kmem.submaps)]

    def pools(self) -> list[PoolInfo]:
        with self.gate:
            return [PoolInfo(p.name, p.size, p.inuse, p.npages, p.nget, p.nput) for p in self.pooltab.values()]

    def check(self) -> None:
        """Verify all bookkeeping; raise AssertionError listing violations."""
        with self.gate:
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
        state = "closed" if self.closed else f"procs={len(self.proctab)}"
        return f"<rumpvm.Kernel memlimit={format_size(self.physmem.limit)} {state}>"
