"""hypercall: the only code in rumpvm that touches the host.

Like the rump kernel's `rumpuser_*` interface, this is a small, documented
boundary: anonymous mmap arenas, malloc/free, environment parameters, swap
block I/O, and C helpers for the page-sized hot paths.  Every host failure
becomes an `OSError` carrying the host errno.  Nothing here knows about VM
structures; addresses are plain integers.

Ownership: an `Arena` or `Block` owns its host memory until `unmap`/`free`;
a `SwapFile` owns its descriptor (and, for a temp file, the path).  All
calls are thread-safe (they hold no state beyond their arguments).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    return None if v == ffi.NULL else ffi.string(v).decode()


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


def gather(runs: Sequence[tuple[int, int]]) -> bytes:
    """Concatenate `(addr, length)` runs into one bytes object; addr 0 is zeros."""
    total = sum(n for _, n in runs)
    out = bytearray(total)
    lib.rv_gather(ffi.from_buffer(out), [a for a, _ in runs], [n for _, n in runs], len(runs))
    return bytes(out)


def scatter(data: bytes | bytearray | memoryview, runs: Sequence[tuple[int, int]]) -> None:
    """Copy `data` into `(addr, length)` runs in order; lengths sum to len(data)."""
    lib.rv_scatter(ffi.from_buffer(data), [a for a, _ in runs], [n for _, n in runs], len(runs))


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
            path = ffi.string(template).decode()
            lib.rv_unlink(os.fsencode(path))
            path += " (deleted)"
        else:
            fd = lib.rv_swap_open(os.fsencode(path))
        if fd < 0:
            raise _oserror(f"swap file {path}")
        self.path = path
        self.fd = fd
        if lib.rv_swap_truncate(fd, size) != 0:
            err = _oserror(f"swap file {path}: ftruncate")
            self.close()
            raise err

    def write_pages(self, offset: int, addrs: Sequence[int], pgsz: int = PAGE_SIZE) -> None:
        """Write the pages at `addrs` contiguously at `offset` (one pwritev)."""
        if lib.rv_pwrite_pages(self.fd, addrs, len(addrs), pgsz, offset) < 0:
            raise _oserror(f"swap write at {offset:#x}")

    def read_pages(self, offset: int, addrs: Sequence[int], pgsz: int = PAGE_SIZE) -> None:
        """Read contiguous pages at `offset` into the pages at `addrs`."""
        if lib.rv_pread_pages(self.fd, addrs, len(addrs), pgsz, offset) < 0:
            raise _oserror(f"swap read at {offset:#x}")

    def read(self, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset` into a new buffer (no page involved)."""
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
