"""Kernel memory: kmem_alloc/free, suballoc, kmem_malloc no-wait failure,
kmem_alloc_wait woken by kmem_free_wakeup, uvm_km_alloc alignment, pager
map-in/out.  All through a real kernel; k.check() after each test."""

import errno
import threading
import time

import pytest

import rumpvm
from rumpvm.constants import PAGE_SIZE as P


@pytest.fixture
def k():
    with rumpvm.Kernel() as k:
        yield k
        k.check()


def test_kmem_alloc_is_wired_zeroed_and_readable(k):
    before = k.stats()
    addr = k.kmem.alloc(k.kmem_map, 3 * P + 1)
    assert k.kmem_map.min <= addr < k.kmem_map.max
    assert k.stats()["wired"] - before["wired"] == 4
    assert k.kmem_map.check_protection(addr, addr + 4 * P, rumpvm.PROT_READ | rumpvm.PROT_WRITE)
    from rumpvm.uio import vm_read, vm_write
    with k.lock:
        assert vm_read(k, k.kernel_map, addr, 4 * P) == bytes(4 * P)
        vm_write(k, k.kernel_map, addr + 5, b"kernel")
        assert vm_read(k, k.kernel_map, addr, 11) == bytes(5) + b"kernel"
    k.kmem.free(k.kmem_map, addr, 3 * P + 1)
    assert k.stats()["wired"] == before["wired"]
    assert k.kmem_map.first_hole(addr, addr + 4 * P) == addr


def test_kmem_free_of_unallocated_range_is_einval(k):
    with pytest.raises(rumpvm.VMError) as e:
        k.kmem.free(k.kmem_map, k.kmem_map.min + 123 * P, P)
    assert e.value.errno == errno.EINVAL


def test_bad_sizes(k):
    for bad in (0, -P):
        with pytest.raises(rumpvm.VMError) as e:
            k.kmem.alloc(k.kmem_map, bad)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        k.kmem.alloc(k.kmem_map, "4096")


def test_pageable_memory_faults_in_on_access(k):
    addr = k.kmem.alloc_pageable(k.kmem_map, 8 * P)
    resident = k.stats()["resident"]
    from rumpvm.uio import vm_read, vm_write
    with k.lock:
        assert vm_read(k, k.kernel_map, addr, 8 * P) == bytes(8 * P)
    assert k.stats()["resident"] == resident  # reads of untouched pages allocate nothing
    with k.lock:
        vm_write(k, k.kernel_map, addr + 2 * P, b"x")
    assert k.stats()["resident"] == resident + P
    k.kmem.free(k.kmem_map, addr, 8 * P)
    assert k.stats()["resident"] == resident


def test_suballoc_returns_a_real_submap(k):
    sub = k.kmem.suballoc(k.kernel_map, 16 * P, "test_submap")
    assert sub.max - sub.min == 16 * P
    found, e = k.kernel_map.lookup_entry(sub.min)
    assert found and e.submap is sub
    a = k.kmem.alloc(sub, 4 * P)
    assert sub.min <= a < sub.max
    assert any(m.name == "test_submap" for m in k.kmem_maps())
    with pytest.raises(rumpvm.VMError) as ex:
        k.kmem.alloc(sub, 16 * P)  # only 12 pages left
    assert ex.value.errno == errno.ENOMEM
    k.kmem.free(sub, a, 4 * P)


def test_kmem_malloc_nowait_failure_frees_what_it_took():
    with rumpvm.Kernel(memlimit="2M") as k:
        before = k.stats()["resident"]
        assert k.kmem.malloc(k.kmem_map, 4 << 20, wait=False) == 0
        assert k.stats()["resident"] == before
        assert k.kmem_map.size == sum(e.end - e.start for e in k.kmem_map.entries())
        ok = k.kmem.malloc(k.kmem_map, 4 * P, wait=False)
        assert ok != 0
        k.check()


def test_kmem_malloc_wait_raises_out_of_memory_after_timeout():
    with rumpvm.Kernel(memlimit="2M", oom_timeout=0.3) as k:
        with pytest.raises(rumpvm.OutOfMemory):
            k.kmem.malloc(k.kmem_map, 4 << 20, wait=True)
        assert k.stats()["oomfails"] == 1
        k.check()


def wait_until(pred, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `pred` until true (no event announces a new sleeper); the deadline
    only bounds a hang, nothing is asserted after a fixed time."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_alloc_wait_sleeps_until_free_wakeup(k):
    sub = k.kmem.suballoc(k.kernel_map, 8 * P, "exec_map")
    first = k.kmem.alloc_wait(sub, 8 * P)
    got = []

    def waiter():
        got.append(k.kmem.alloc_wait(sub, 4 * P))

    t = threading.Thread(target=waiter)
    t.start()

    def asleep() -> bool:
        with k.lock:
            return sub.space_waiters == 1

    wait_until(lambda: asleep() or not t.is_alive(), what="the waiter to sleep in kmem_alloc_wait")
    assert t.is_alive() and not got  # sleeping: the submap is full
    with k.lock:
        assert sub.first_hole(sub.min, sub.max) is None  # still full: nothing was taken
    k.kmem.free_wakeup(sub, first, 8 * P)
    t.join(10)
    assert not t.is_alive() and got and sub.min <= got[0] < sub.max
    with k.lock:
        assert sub.space_waiters == 0


def test_alloc_wait_too_big_for_map_is_enomem(k):
    sub = k.kmem.suballoc(k.kernel_map, 4 * P, "tiny")
    with pytest.raises(rumpvm.VMError) as e:
        k.kmem.alloc_wait(sub, 8 * P)
    assert e.value.errno == errno.ENOMEM


@pytest.mark.parametrize("align", [P, 1 << 16, 1 << 21])
def test_km_alloc_is_aligned_and_charged(k, align):
    charged = k.stats()["kmem_charged"]
    addr = k.kmem.km_alloc(2 * P, align)
    assert addr % align == 0
    assert k.stats()["kmem_charged"] == charged + 2 * P
    k.kmem.km_free(addr)
    assert k.stats()["kmem_charged"] == charged


def test_km_alloc_bad_alignment_and_bad_free(k):
    with pytest.raises(rumpvm.VMError):
        k.kmem.km_alloc(P, 3000)
    with pytest.raises(rumpvm.VMError):
        k.kmem.km_free(0x1234000)


def test_km_alloc_respects_the_limit():
    with rumpvm.Kernel(memlimit="1M") as k:
        assert k.kmem.km_alloc(4 << 20, wait=False) == 0


def test_pagermap_in_and_out(k):
    p = k.spawn()
    a = p.mmap(2 * P)
    p.write(a, b"page0")
    p.write(a + P, b"page1")
    with k.lock:
        pages = [p.vmspace.pmap.rd[(a >> 12) + i] for i in range(2)]
    kva = k.kmem.pagermapin(pages)
    from rumpvm.uio import vm_read
    with k.lock:
        assert vm_read(k, k.kernel_map, kva, 5) == b"page0"
        assert vm_read(k, k.kernel_map, kva + P, 5) == b"page1"
    k.check()
    k.kmem.pagermapout(kva, 2)
    assert k.pager_map.first_hole(kva, kva + 2 * P) == kva


def test_uarea_cache_keeps_at_most_16(k):
    procs = [k.spawn() for _ in range(20)]
    for p in procs:
        p.exit()
    assert len(k.uarea_cache) == 16
    p = k.spawn()
    assert len(k.uarea_cache) == 15
    p.exit()
