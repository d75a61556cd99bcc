"""Page patterns shared by the paging tests: every (tag, page index) gets a
page of bytes of its own, so a page that comes back from the wrong place,
or not at all, is caught."""

from __future__ import annotations

import struct

from rumpvm import PAGE_SIZE


def pattern(tag: int, pg: int) -> bytes:
    """A page of bytes unique to (tag, page index)."""
    return struct.pack("<QQ", tag, pg) + bytes([(tag * 131 + pg * 7 + 1) & 0xFF]) * (PAGE_SIZE - 16)


def fill(p, addr: int, npages: int, tag: int, start: int = 0) -> None:
    for i in range(start, npages):
        p.write(addr + i * PAGE_SIZE, pattern(tag, i))


def bad_pages(p, addr: int, npages: int, tag: int) -> list[int]:
    """Indexes of the pages that do not hold their pattern."""
    return [i for i in range(npages) if p.read(addr + i * PAGE_SIZE, PAGE_SIZE) != pattern(tag, i)]


def settle(k, timeout: float = 10.0) -> None:
    """Wait until the pagedaemon is idle with no pageout in flight.  Slots of
    pages being written when their memory is unmapped are freed when the
    write completes, so counts such as swpginuse reach their final value
    only then."""
    if not k.pagedaemon.wait_idle(timeout):
        raise AssertionError("pagedaemon did not settle")
