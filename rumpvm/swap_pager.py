"""The swap pager: a swap file, slot allocation, checksummed page I/O.

Slots are PAGE_SIZE blocks of the swap file.  The slot map is a bytearray
(0 free, 1 used) so finding a run of n free slots for a cluster is one
`bytearray.find` in C; a rotating cursor spreads allocations (next fit).
Every slot written carries a 64-bit checksum of its page, kept in memory and
verified on every read: a mismatch is `VMError(EIO)`, never silent wrong
data.

Its bookkeeping (a byte of slot map and an 8-byte checksum per slot) is
kernel memory: `bookkeeping_bytes` is charged to the memory limit at boot.
A failed or short transfer (a truncated or vanished swap file) is
`VMError(EIO)`.

Lock: the kernel lock guards the slot map and checksums; the file I/O itself
runs with the lock dropped (the pages involved are busy).
"""

from __future__ import annotations

import errno
from array import array
from collections.abc import Sequence

import hypercall

from .constants import PAGE_SIZE
from .errors import VMError


class SwapPager:
    def __init__(self, size: int, path: str | None) -> None:
        self.nslots = size // PAGE_SIZE
        self.file = hypercall.SwapFile(path, self.nslots * PAGE_SIZE)
        self.slotmap = bytearray(self.nslots)
        self.sums = array("Q", bytes(8 * self.nslots))
        self.inuse = 0
        self.cursor = 0

    @property
    def bookkeeping_bytes(self) -> int:
        return len(self.slotmap) + self.sums.itemsize * len(self.sums)

    @property
    def path(self) -> str:
        return self.file.path

    def alloc(self, n: int) -> tuple[int, int] | None:
        """Up to `n` contiguous free slots as (first, count); None when full."""
        if self.inuse >= self.nslots:
            return None
        while n > 0:
            pattern = bytes(n)
            i = self.slotmap.find(pattern, self.cursor)
            if i < 0:
                i = self.slotmap.find(pattern)
            if i >= 0:
                self.slotmap[i:i + n] = b"\x01" * n
                self.inuse += n
                self.cursor = i + n if i + n < self.nslots else 0
                return i, n
            n //= 2
        return None

    def free(self, slot: int) -> None:
        if not self.slotmap[slot]:
            raise AssertionError(f"swap slot {slot} freed twice")
        self.slotmap[slot] = 0
        self.inuse -= 1

    def write(self, first: int, addrs: Sequence[int]) -> None:
        """Record checksums and write pages to consecutive slots (lock dropped
        by the caller; the pages are busy)."""
        sums = array("Q", bytes(8 * len(addrs)))
        try:
            self.file.write_pages(first * PAGE_SIZE, addrs, sums=sums)
            self.sums[first:first + len(addrs)] = sums
        except OSError as e:
            raise VMError(errno.EIO, f"swap write at slot {first}: {e.strerror or e}") from None

    def read_run(self, first: int, addrs: Sequence[int]) -> list[bool]:
        """Read consecutive slots into the pages at `addrs` (one preadv);
        returns, per page, whether it passed its checksum.  If a run of
        several fails, the first page is read alone and the others count as
        bad: a read-ahead slot that cannot be read (past the end of a
        truncated file) must not make the page that was asked for fail."""
        n = len(addrs)
        sums = array("Q", bytes(8 * n))
        try:
            self.file.read_pages(first * PAGE_SIZE, addrs, sums=sums)
        except OSError as e:
            if n > 1:
                return self.read_run(first, addrs[:1]) + [False] * (n - 1)
            raise VMError(errno.EIO, f"swap read at slot {first}: {e.strerror or e}") from None
        want = self.sums[first:first + n]
        if sums == want:
            return [True] * n
        return [a == b for a, b in zip(sums, want)]

    def peek(self, slot: int) -> bytes:
        """A slot's contents as bytes, verified, without touching any page."""
        try:
            data = self.file.read(slot * PAGE_SIZE, PAGE_SIZE)
        except OSError as e:
            raise VMError(errno.EIO, f"swap read at slot {slot}: {e.strerror or e}") from None
        if hypercall.checksum_buffer(data) != self.sums[slot]:
            raise VMError(errno.EIO, f"swap slot {slot}: checksum mismatch")
        return data

    def close(self) -> None:
        self.file.close()
