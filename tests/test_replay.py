"""Proc.replay: the lab's trace replay (reads of never-written pages get
clean zero pages that are dropped, not written, on eviction)."""

from __future__ import annotations

from array import array

import pytest

from rumpvm import PAGE_SIZE, PROT_READ, Kernel, SegmentationFault, VMError
from rumpvm.constants import MAP_ANON, MAP_SHARED


def _kernel(limit: str = "unlimited", swap: int = 0) -> Kernel:
    return Kernel(memlimit=limit, swap=swap) if swap else Kernel(memlimit=limit)


def test_reads_fill_clean_pages_and_writes_dirty_them() -> None:
    with _kernel() as k:
        p = k.spawn()
        base = p.mmap(8 * PAGE_SIZE)
        before = k.stats()
        p.replay(base, array("Q", [0 << 1, 1 << 1 | 1, 0 << 1, 2 << 1]))
        s = k.stats()
        assert s["zerofills"] - before["zerofills"] == 3  # pages 0, 1, 2: one fault each
        assert p.read(base, PAGE_SIZE) == bytes(PAGE_SIZE)
        k.check()
        smaps = next(m for m in p.smaps() if m.entry.start == base)
        assert smaps.rss == 3 * PAGE_SIZE
        assert smaps.private_dirty == PAGE_SIZE  # only the written page


def test_clean_fill_pages_are_evicted_without_swap_writes() -> None:
    with Kernel(memlimit="2M", swap=8 << 20) as k:
        p = k.spawn()
        n = 2048  # 8 MiB of reads under a 2 MiB limit
        base = p.mmap(n * PAGE_SIZE, flags=MAP_SHARED | MAP_ANON)
        p.replay(base, array("Q", [i << 1 for i in range(n)]))
        assert k.pagedaemon.wait_idle()
        s = k.stats()
        assert s["zerofills"] >= n and s["pageouts"] == 0 and s["swpginuse"] == 0
        p.replay(base, array("Q", [i << 1 | 1 for i in range(n)]))  # now dirty them all
        assert k.pagedaemon.wait_idle()
        assert k.stats()["pageouts"] > 0
        assert p.read(base + (n - 1) * PAGE_SIZE, 8) == bytes(8)
        k.check()


def test_bad_input_changes_nothing() -> None:
    with _kernel() as k:
        p = k.spawn()
        base = p.mmap(4 * PAGE_SIZE)
        ro = p.mmap(PAGE_SIZE, prot=PROT_READ)
        before = k.stats()["zerofills"]
        with pytest.raises(VMError) as ei:
            p.replay(base + 1, [0])
        assert ei.value.errno == 22
        with pytest.raises(VMError):
            p.replay(base, [-1])
        with pytest.raises(TypeError):
            p.replay(base, ["x"])  # type: ignore[list-item]
        with pytest.raises(SegmentationFault):
            p.replay(base, [9 << 1])  # past the mapping: checked before any access
        assert k.stats()["zerofills"] == before
        with pytest.raises(SegmentationFault):
            p.replay(ro, [0 << 1 | 1])
        p.replay(base, [])
        k.check()

