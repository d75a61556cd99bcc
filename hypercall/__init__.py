"""hypercall: the only code in rumpvm that touches the host.

Like the rump kernel's `rumpuser_*` interface, this is a small, documented
boundary: anonymous mmap arenas, malloc/free, environment parameters, swap
block I/O, and C helpers for the page-sized hot paths.  Every host failure
becomes an `OSError` carrying the host errno.  Nothing here knows about VM
structures; addresses are plain integers.

Ownership: an `Arena` or `Block` owns its host memory until `unmap`/`free`;
a `SwapFile` owns its descriptor (and, for a temp file, the path).  All
calls are thread-safe (they hold no state beyond their arguments).

Fault injection (TEST-ONLY).  `faults` is a registry of armed fault points
that tests use to make host calls fail the way a sick host would, under a
real kernel (nothing in the VM is mocked).  Production code never arms
anything; with nothing armed each instrumented call costs one check of
the empty `faults` dict.  Arm a point with `inject` (a context manager;
disarms on exit and releases any call still blocked) or `arm`/`disarm`:

    with hypercall.inject("swap_write", errno.ENOSPC, count=3) as f:
        ...                      # the next 3 swap writes fail; f.hits counts them

Points (checked before the real call):
  anonmmap          `anonmmap` fails (default ENOMEM); nothing is mapped.
  swap_write        `SwapFile.write_pages` fails (default EIO); nothing written.
  swap_write_short  `write_pages` transfers only part (the first half of the
                    pages, or half of a single page), then fails with EIO as
                    the C layer reports a short transfer.
  swap_read         `SwapFile.read_pages` and `SwapFile.read` fail (EIO).
  swap_read_short   they read only part of the data (into the caller's
                    pages), then fail with EIO.
  swap_delay        any swap I/O call blocks until `Fault.release()` (or the
                    end of `inject`), then proceeds (a slow disk without
                    sleeps).  swap_write_delay / swap_read_delay: only writes,
                    only reads.
`count` limits how many calls the point hits (None: every call while
armed), after `skip` calls are let through.  A `Fault` records each hit in
`log` as (point, offset, npages or nbytes) and `wait(n)` waits for n hits.
A delay point is checked before the error points, so a call can be made to
block and then fail.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import tempfile
import threading
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from ._hyper import ffi, lib

PAGE_SIZE: int = lib.rv_pagesize()


def _oserror(what: str) -> OSError:
    err = ffi.errno or 5
    return OSError(err, f"{what}: {os.strerror(err)}")


@dataclass(eq=False)
class Arena:
    """A range of anonymous host memory, `size` bytes at `addr`.

    `buf` is a writable memoryview over all of it, so page contents can be
    sliced without a C call.
    """

    addr: int
    size: int
    buf: memoryview = field(repr=False)
    mapped: bool = True


def anonmmap(size: int, alignbit: int = 0, exec: bool = False) -> Arena:
    """Map `size` bytes of zeroed anonymous memory aligned to 1<<alignbit."""
    if size <= 0 or size % PAGE_SIZE:
        raise OSError(22, f"anonmmap: size {size} is not a positive multiple of the page size")
    if faults:
        f = _hit(("anonmmap",), 0, size)
        if f is not None:
            raise OSError(f.errno, f"anonmmap: {os.strerror(f.errno)} (injected)")
    p = lib.rv_anonmmap(size, alignbit, 1 if exec else 0)
    if p == ffi.NULL:
        raise _oserror("anonmmap")
    addr = int(ffi.cast("uintptr_t", p))
    return Arena(addr, size, memoryview(ffi.buffer(p, size)))


def unmap(arena: Arena) -> None:
    """Return an arena to the host.  The arena must not be used afterwards."""
    if not arena.mapped:
        return
    arena.buf.release()
    if lib.rv_unmap(ffi.cast("void *", arena.addr), arena.size) != 0:
        raise _oserror("munmap")
    arena.mapped = False


@dataclass(eq=False)
class Block:
    """A malloc'd block of `size` bytes at `addr` (kernel bookkeeping memory)."""

    addr: int
    size: int
    ptr: object = field(repr=False)


def malloc(size: int, align: int = 0) -> Block:
    """Allocate `size` bytes from the host heap, aligned to `align` (0: default)."""
    if size <= 0:
        raise OSError(22, f"malloc: bad size {size}")
    p = lib.rv_malloc(size, align)
    if p == ffi.NULL:
        raise _oserror("malloc")
    return Block(int(ffi.cast("uintptr_t", p)), size, p)


def free(block: Block) -> None:
    """Free a block from `malloc`.  Freeing twice is a no-op."""
    if block.ptr is not None:
        lib.rv_free(block.ptr)
        block.ptr = None


def getparam(name: str) -> str | None:
    """The host's value of the environment parameter `name`, or None."""
    v = lib.rv_getenv(name.encode())
    return None if v == ffi.NULL else os.fsdecode(ffi.string(v))  # undecodable bytes survive as surrogates


def host_memory() -> int:
    """The host's physical memory in bytes (sysconf(_SC_PHYS_PAGES) * page size):
    what a container without a memory limit sees as MemTotal."""
    n = lib.rv_host_memory()
    if n < 0:
        raise _oserror("sysconf(_SC_PHYS_PAGES)")
    return int(n)


def page_zero(addr: int, length: int = PAGE_SIZE) -> None:
    lib.rv_page_zero(addr, length)


def page_copy(dst: int, src: int, length: int = PAGE_SIZE) -> None:
    lib.rv_page_copy(dst, src, length)


def checksum(addr: int, length: int = PAGE_SIZE) -> int:
    """A 64-bit checksum of `length` bytes (a multiple of 8) at `addr`."""
    return lib.rv_checksum(addr, length)


def copy_out(dst: Any, pos: int, pages: Sequence[int], off: int, length: int) -> None:
    """Copy `length` bytes from the run of pages at addresses `pages`
    (consecutive in the copy; address 0 reads as zeros), starting `off`
    bytes into the first, to the buffer `dst` at `pos` (writable, or a
    fresh `uninit_bytes` object)."""
    lib.rv_copy_out(ffi.from_buffer(dst) + pos, pages, off, length, PAGE_SIZE)


_bytes_from = ctypes.pythonapi.PyBytes_FromStringAndSize
_bytes_from.restype = ctypes.py_object
_bytes_from.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)


def uninit_bytes(n: int) -> bytes:
    """A new bytes object of `n` (>= 2) bytes with undefined contents, for
    its creator to fill with copy_out before anyone else sees it (the C
    API's PyBytes_FromStringAndSize(NULL, n)): saves the zeroing and the
    second copy of bytes(bytearray(n)), whose fresh pages cost host faults."""
    if n < 2:  # the empty and one-byte objects are shared singletons
        raise ValueError("uninit_bytes needs n >= 2")
    return cast(bytes, _bytes_from(None, n))


def copy_in(src: Any, pos: int, pages: Sequence[int], off: int, length: int) -> None:
    """Copy `length` bytes of the buffer `src` from `pos` into the run of
    pages at `pages`, starting `off` bytes into the first."""
    lib.rv_copy_in(ffi.from_buffer(src) + pos, pages, off, length, PAGE_SIZE)


def _sums_ptr(sums: array[int] | None) -> Any:
    return ffi.NULL if sums is None else ffi.from_buffer("uint64_t[]", sums, require_writable=True)


class SwapFile:
    """A swap file of `size` bytes: page-run I/O at byte offsets.

    With `path` None a temp file is created (in $TMPDIR) and unlinked at
    once (only the descriptor keeps it; `path` then ends in " (deleted)", as
    /proc/swaps shows such files).  A given path is opened without following
    a symlink, must be a regular file, is made mode 0600, truncated to
    `size`, and kept.
    """

    def __init__(self, path: str | None, size: int) -> None:
        self.size = size
        self.temporary = path is None
        if path is None:
            template = ffi.new("char[]", os.path.join(tempfile.gettempdir(), "rumpvm-swap.XXXXXX").encode())
            fd = lib.rv_swap_mktemp(template)
            if fd < 0:
                raise _oserror("swap file")
            path = ffi.string(template).decode() + " (deleted)"  # unlinked by rv_swap_mktemp
        else:
            if "\0" in path:
                raise OSError(22, f"swap file {path!r}: a path may not contain a NUL byte")
            fd = lib.rv_swap_open(os.fsencode(path))
        if fd < 0:
            raise _oserror(f"swap file {path}")
        self.path = path
        self.fd = fd
        if lib.rv_swap_truncate(fd, size) != 0:
            err = _oserror(f"swap file {path}: ftruncate")
            self.close()
            raise err

    def write_pages(self, offset: int, addrs: Sequence[int], pgsz: int = PAGE_SIZE,
                    sums: array[int] | None = None) -> None:
        """Write the pages at `addrs` contiguously at `offset` (one pwritev);
        with `sums` (an array('Q') of len(addrs)), store their checksums
        there first, in the same C call."""
        if faults:
            _inject_pages(self.fd, "write", offset, addrs, pgsz)
        if lib.rv_pwrite_pages(self.fd, addrs, len(addrs), pgsz, offset, _sums_ptr(sums)) < 0:
            raise _oserror(f"swap write at {offset:#x}")

    def read_pages(self, offset: int, addrs: Sequence[int], pgsz: int = PAGE_SIZE,
                   sums: array[int] | None = None) -> None:
        """Read contiguous pages at `offset` into the pages at `addrs`; with
        `sums`, store the checksums of what was read there."""
        if faults:
            _inject_pages(self.fd, "read", offset, addrs, pgsz)
        if lib.rv_pread_pages(self.fd, addrs, len(addrs), pgsz, offset, _sums_ptr(sums)) < 0:
            raise _oserror(f"swap read at {offset:#x}")

    def read(self, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset` into a new buffer (no page involved)."""
        if faults:
            _inject_read(self.fd, offset, length)
        buf = bytearray(length)
        n = lib.rv_pread(self.fd, ffi.from_buffer(buf), length, offset)
        if n != length:
            raise _oserror(f"swap read at {offset:#x}") if n < 0 else OSError(5, "short swap read")
        return bytes(buf)

    def close(self) -> None:
        if self.fd >= 0:
            lib.rv_close(self.fd)
            self.fd = -1


def checksum_buffer(data: bytes | bytearray) -> int:
    """Checksum of a Python buffer (same function as `checksum`)."""
    p = ffi.from_buffer(data)
    return lib.rv_checksum(int(ffi.cast("uintptr_t", p)), len(data))


# -- fault injection (test-only; see the module docstring) ----------------------------

_DEFAULT_ERRNO = {"anonmmap": _errno.ENOMEM}
FAULT_POINTS = frozenset({"anonmmap", "swap_write", "swap_write_short", "swap_read", "swap_read_short",
                          "swap_delay", "swap_write_delay", "swap_read_delay"})


class Fault:
    """An armed fault point.  `hits` counts the calls it hit and `log`
    records them; `release()` lets blocked calls of a delay point go (and
    every later call pass without blocking)."""

    def __init__(self, point: str, err: int, count: int | None, skip: int) -> None:
        self.point = point
        self.errno = err
        self.count = count
        self.skip = skip
        self.hits = 0
        self.log: list[tuple[str, int, int]] = []
        self.released = threading.Event()
        self._cv = threading.Condition(_faults_lock)

    def release(self) -> None:
        self.released.set()

    def wait(self, n: int = 1, timeout: float | None = 10.0) -> bool:
        """Wait until the point was hit `n` times; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self.hits >= n, timeout)

    def __repr__(self) -> str:
        return f"<Fault {self.point} errno={self.errno} count={self.count} hits={self.hits}>"


_faults_lock = threading.Lock()
faults: dict[str, Fault] = {}  # armed points; empty in production


def arm(point: str, err: int | None = None, count: int | None = None, skip: int = 0) -> Fault:
    """Arm `point` (replacing an armed one of that name) and return it."""
    if point not in FAULT_POINTS:
        raise ValueError(f"unknown fault point {point!r}; one of {', '.join(sorted(FAULT_POINTS))}")
    if (count is not None and count < 0) or skip < 0:
        raise ValueError("count and skip must be >= 0")
    f = Fault(point, _DEFAULT_ERRNO.get(point, _errno.EIO) if err is None else err, count, skip)
    with _faults_lock:
        old = faults.get(point)
        faults[point] = f
    if old is not None:
        old.release()
    return f


def disarm(point: str | None = None) -> None:
    """Disarm `point` (None: every point) and release its blocked calls."""
    with _faults_lock:
        gone = list(faults.values()) if point is None else [f for f in [faults.get(point)] if f is not None]
        for f in gone:
            del faults[f.point]
    for f in gone:
        f.release()


@contextmanager
def inject(point: str, err: int | None = None, count: int | None = None, skip: int = 0) -> Iterator[Fault]:
    """`with inject(point, errno, count=n) as f:` arms a fault point for the
    block; on exit it is disarmed and any call blocked on it released."""
    f = arm(point, err, count, skip)
    try:
        yield f
    finally:
        with _faults_lock:
            if faults.get(point) is f:
                del faults[point]
        f.release()


def _hit(points: tuple[str, ...], offset: int, n: int) -> Fault | None:
    """The first of `points` that is armed and hits this call, or None."""
    with _faults_lock:
        for point in points:
            f = faults.get(point)
            if f is None:
                continue
            if f.skip:
                f.skip -= 1
                continue
            if f.count is not None:
                if f.count == 0:
                    continue
                f.count -= 1
            f.hits += 1
            f.log.append((point, offset, n))
            f._cv.notify_all()
            return f
    return None


def _delay(op: str, offset: int, n: int) -> None:
    f = _hit(("swap_delay", f"swap_{op}_delay"), offset, n)
    if f is not None:
        f.released.wait()


def _inject_pages(fd: int, op: str, offset: int, addrs: Sequence[int], pgsz: int) -> None:
    """The fault points of write_pages/read_pages: block, fail, or transfer
    part and fail."""
    _delay(op, offset, len(addrs))
    f = _hit((f"swap_{op}", f"swap_{op}_short"), offset, len(addrs))
    if f is None:
        return
    if f.point.endswith("_short"):
        part, size = (addrs[:len(addrs) // 2], pgsz) if len(addrs) > 1 else (addrs, pgsz // 2)
        fn = lib.rv_pwrite_pages if op == "write" else lib.rv_pread_pages
        if fn(fd, part, len(part), size, offset, ffi.NULL) < 0:
            raise _oserror(f"swap {op} at {offset:#x}")
        raise OSError(_errno.EIO, f"short swap {op} at {offset:#x} (injected)")
    raise OSError(f.errno, f"swap {op} at {offset:#x}: {os.strerror(f.errno)} (injected)")


def _inject_read(fd: int, offset: int, length: int) -> None:
    """The fault points of SwapFile.read."""
    _delay("read", offset, length)
    f = _hit(("swap_read", "swap_read_short"), offset, length)
    if f is None:
        return
    if f.point.endswith("_short"):
        half = bytearray(length // 2)
        lib.rv_pread(fd, ffi.from_buffer(half), len(half), offset)
        raise OSError(_errno.EIO, "short swap read (injected)")
    raise OSError(f.errno, f"swap read at {offset:#x}: {os.strerror(f.errno)} (injected)")


# -- host windows (uffd.c: the fault engine thread) -----------------------------------

WINDOW_STATS = ("resident", "budget", "zerofills", "swapins", "refaults", "wpfaults",
                "evictions", "writes", "selfevictions", "errors", "pending", "movefails", "lasterr")
WINDOW_STATES = ("absent", "present", "parked", "swapped")  # uffd.c's page states
WAIT_EVENTS, WAIT_PRESSURE = 1, 2  # HostWindow.wait() bits


def _uffd_refused(why: int, err: int) -> str:
    """Which permission a userfaultfd that serves kernel faults lacks."""
    if err != _errno.EPERM and err != _errno.EACCES:
        return f"userfaultfd: {os.strerror(err)}"
    try:
        with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
            sysctl = f.read().strip()
    except OSError:
        sysctl = "?"
    return ("userfaultfd not permitted: the userfaultfd(2) syscall needs CAP_SYS_PTRACE or "
            f"vm.unprivileged_userfaultfd=1 (it is {sysctl}), and /dev/userfaultfd is not "
            "readable and writable by this user")


class HostWindow:
    """The C fault engine serving the caller's anonymous private mapping of
    `npages` pages at `addr` (made MADV_DONTFORK, without huge pages).

    The engine pages to `swapfd` at `slots` (one swap slot per page, the
    caller's until `destroy`), never holding more than its budget of
    resident pages; the first `budget` frames are its minimum.  Methods
    that do I/O or wait release the GIL (cffi calls).  After `close()`
    the mapping is plain memory (zeros) again; it stays the caller's."""

    def __init__(self, addr: int, npages: int, swapfd: int, slots: list[int], budget: int) -> None:
        why = ffi.new("int *")
        fd = lib.rv_uffd_open(why)
        if fd < 0:
            raise OSError(-fd, _uffd_refused(why[0], -fd))
        self._slots = ffi.new("int64_t[]", slots)
        err = ffi.new("int *")
        w = lib.rv_win_create(fd, ffi.cast("char *", addr), npages, PAGE_SIZE, swapfd, self._slots, budget, err)
        if w == ffi.NULL:
            raise OSError(err[0], f"userfaultfd window: {os.strerror(err[0])}")
        self._w = w
        self.npages = npages
        self.addr = addr
        self._stats = ffi.new("int64_t[]", len(WINDOW_STATS))
        self._drain_max = min(npages, 4096)
        self._didx = ffi.new("uint32_t[]", self._drain_max)
        self._dstate = ffi.new("uint8_t[]", self._drain_max)
        self._dref = ffi.new("uint8_t[]", self._drain_max)

    def grant(self, n: int) -> None:
        lib.rv_win_grant(self._w, n)

    def evict(self, pages: list[int]) -> tuple[int, list[bool]]:
        """Evict those of `pages` (indices) still resident, writing dirty
        ones; returns (frames of budget given back, which pages went)."""
        idx = ffi.new("uint32_t[]", pages)
        done = ffi.new("uint8_t[]", len(pages))
        evicted = ffi.new("int64_t *")
        given = lib.rv_win_evict(self._w, idx, done, len(pages), evicted)
        return int(given), [bool(d) for d in done]

    def park(self, pages: list[int]) -> None:
        """Park those of `pages` that are present (a touch then refaults)."""
        lib.rv_win_park(self._w, ffi.new("uint32_t[]", pages), len(pages))

    def trim(self, spare: int) -> int:
        """Give back the budget no resident page uses beyond `spare` pages;
        returns the frames."""
        return int(lib.rv_win_trim(self._w, spare))

    def drain(self) -> list[tuple[int, int, bool]]:
        """Pages whose residency changed since last drained: (index, state
        now (WINDOW_STATES), refaulted since)."""
        out: list[tuple[int, int, bool]] = []
        n = self._drain_max
        while True:
            got = lib.rv_win_drain(self._w, self._didx, self._dstate, self._dref, n)
            out.extend(zip(self._didx[0:got], self._dstate[0:got], map(bool, self._dref[0:got])))
            if got < n:
                return out

    def wait(self) -> int:
        """Block until there is news: 0 closed, else WAIT_EVENTS (pages to
        drain) and/or WAIT_PRESSURE (the engine ran out of budget) set."""
        return int(lib.rv_win_wait(self._w))

    def stats(self) -> dict[str, int]:
        lib.rv_win_stats(self._w, self._stats)
        return dict(zip(WINDOW_STATS, self._stats))

    def states(self) -> bytes:
        """Two bytes a page: state (index into WINDOW_STATES), slot valid."""
        out = ffi.new("uint8_t[]", 2 * self.npages)
        lib.rv_win_states(self._w, out)
        return bytes(ffi.buffer(out))

    def peek(self, off: int, dst: bytearray | memoryview) -> None:
        """Copy window bytes at `off` into `dst` without faulting anything in."""
        rc = lib.rv_win_peek(self._w, off, ffi.from_buffer(dst), len(dst))
        if rc < 0:
            raise OSError(-rc, f"window swap slot at offset {off:#x}: checksum mismatch or read error")

    def detach(self) -> None:
        """Make wait() return 0 from now on (the budget thread goes); the
        engine serves faults until close()."""
        lib.rv_win_detach(self._w)

    def close(self) -> None:
        """Stop serving faults (the addresses then read zeros)."""
        lib.rv_win_close(self._w)

    def close_save(self, frames: Sequence[int]) -> list[int]:
        """close(), after copying every present or parked page into the next
        of the page-sized buffers at `frames`; returns the page indices
        copied, in order (the i-th went to frames[i]).  Copied pages keep no
        slot; pages beyond len(frames) are written to theirs (lost without
        swap or on a write error: counted in stats()["errors"]); swapped
        pages keep theirs (states(), sums())."""
        idx = ffi.new("uint32_t[]", max(1, len(frames)))
        n = lib.rv_win_close_save(self._w, frames, idx, len(frames))
        return list(idx[0:n])

    def sums(self) -> array[int]:
        """The checksum of each page's swap copy (valid where states() says so)."""
        out = array("Q", bytes(8 * self.npages))
        lib.rv_win_sums(self._w, ffi.from_buffer("uint64_t[]", out, require_writable=True))
        return out

    def destroy(self) -> None:
        """Free the engine (after close and after every wait() returned)."""
        lib.rv_win_destroy(self._w)
        self._w = ffi.NULL
