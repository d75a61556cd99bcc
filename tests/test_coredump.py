"""Coredump walk (`p.coredump_segments()`): readable entries not marked
MADV_NOCORE, each with the runs (vaddr, bytes) of its pages that have
contents -- untouched pages are absent and read as zeros -- gathered
without paging anything in."""

from pages import settle

import rumpvm
from rumpvm import MADV_CORE, MADV_NOCORE, PROT_NONE
from rumpvm import PAGE_SIZE as P


def pages_of(entry, runs) -> dict[int, bytes]:
    """The runs of one segment as {page vaddr: page bytes}, checking that
    they are page-aligned, whole pages, inside the entry, sorted and disjoint."""
    out: dict[int, bytes] = {}
    last_end = entry.start
    for va, data in runs:
        assert va % P == 0 and len(data) % P == 0 and len(data) > 0, (hex(va), len(data))
        assert last_end <= va and va + len(data) <= entry.end, (hex(va), len(data), entry)
        last_end = va + len(data)
        for off in range(0, len(data), P):
            out[va + off] = bytes(data[off:off + P])
    return out


def segments(p) -> dict[int, dict[int, bytes]]:
    segs: dict[int, dict[int, bytes]] = {}
    for entry, runs in p.coredump_segments():
        assert entry.start not in segs
        segs[entry.start] = pages_of(entry, runs)
        # What a core reader reconstructs (absent pages as zeros) is the memory.
        image = bytearray(entry.end - entry.start)
        for va, data in segs[entry.start].items():
            image[va - entry.start:va - entry.start + P] = data
        assert bytes(image) == p.peek(entry.start, entry.end - entry.start), entry
    return segs


def test_coredump_segments_and_nocore():
    with rumpvm.Kernel(memlimit="1M", swap="8M") as k:
        p = k.spawn()
        a = p.mmap(4 * P)
        p.write(a + P, b"core me")
        hidden = p.mmap(2 * P)
        p.write(hidden, b"secret")
        p.madvise(hidden, 2 * P, MADV_NOCORE)
        guard = p.mmap(P, prot=PROT_NONE)
        big = p.mmap(512 * P)  # more than the limit: some pages are on swap
        for i in range(512):
            p.write(big + i * P, i.to_bytes(4, "little"))
        settle(k)
        stats = k.stats()
        assert stats["pageouts"] > 0, "nothing went to swap: the walk would not be tested on swapped pages"
        segs = segments(p)
        settle(k)
        after = k.stats()
        # Nothing was paged in or allocated by the walk.
        assert (after["pageins"], after["resident"]) == (stats["pageins"], stats["resident"])
        assert set(segs) == {a, big}
        # Only the written page of `a` has contents; the others are absent.
        assert segs[a] == {a + P: b"core me" + bytes(P - 7)}
        assert sorted(segs[big]) == [big + i * P for i in range(512)]
        assert all(segs[big][big + i * P] == i.to_bytes(4, "little") + bytes(P - 4) for i in range(512))
        p.madvise(hidden, 2 * P, MADV_CORE)
        segs = segments(p)
        assert set(segs) == {a, hidden, big}
        assert segs[hidden] == {hidden: b"secret" + bytes(P - 6)}
        assert guard not in segs
        k.check()
