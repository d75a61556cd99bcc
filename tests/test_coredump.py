"""Coredump walk: readable entries not marked MADV_NOCORE, with their bytes,
gathered without paging anything in."""

import rumpvm
from rumpvm import MADV_CORE, MADV_NOCORE, PAGE_SIZE as P, PROT_NONE


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
        stats = k.stats()
        segs = {e.start: data for e, data in p.coredump()}
        assert set(segs) == {a, big}
        assert segs[a][P:P + 7] == b"core me" and len(segs[a]) == 4 * P
        assert all(segs[big][i * P:i * P + 4] == i.to_bytes(4, "little") for i in range(512))
        after = k.stats()
        assert (after["pageins"], after["resident"]) == (stats["pageins"], stats["resident"])
        p.madvise(hidden, 2 * P, MADV_CORE)
        assert hidden in {e.start for e, _ in p.coredump()}
        assert guard not in {e.start for e, _ in p.coredump()}
        k.check()
