"""Swap: slots freed when objects die, checksummed slots (a corrupted slot
is EIO on access, and stays EIO), the swap file's lifetime, and concurrent
page-in of the same page (the busy-page protocol).

Issue 3, "Swap".  Small sizes; the file runs in a few seconds.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest
from pages import bad_pages, fill, pattern, settle

import rumpvm
from rumpvm import MAP_SHARED, PAGE_SIZE, VMError

M = 1 << 20


def object_of(p, addr: int):
    """The top object mapped at `addr` in `p`."""
    (e,) = [e for e in p.maps() if e.start <= addr < e.end]
    assert e.object is not None
    return p.kernel.objtab[e.object]


def push_to_swap(k, p, addr: int, npages: int) -> None:
    """Force the pages of [addr, +npages) out to swap: another process
    writes more than the limit until they are all out, then exits."""
    obj = object_of(p, addr)
    q = k.spawn(name="pusher")
    size = 2 * k.memlimit
    f = q.mmap(size)
    for rnd in range(20):
        fill(q, f, size // PAGE_SIZE, 1000 + rnd)
        with k.lock:
            if all(i in obj.swap and i not in obj.pages for i in range(npages)):
                break
    else:
        raise AssertionError("pages did not go to swap")
    q.exit()
    settle(k)


@pytest.fixture
def swapk(request):
    with rumpvm.Kernel(memlimit="2M", swap="32M") as k:
        yield k
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.passed:
            k.check()


# -- slots freed when objects die ---------------------------------------------------------


@pytest.mark.parametrize("release", ["munmap", "exit"])
def test_swap_slots_freed_when_memory_goes(swapk, release):
    k = swapk
    p = k.spawn()
    n = 4 * M // PAGE_SIZE
    a = p.mmap(n * PAGE_SIZE)
    fill(p, a, n, 1)
    settle(k)
    assert k.stats()["swpginuse"] > 0
    if release == "munmap":
        p.munmap(a, n * PAGE_SIZE)
    else:
        p.exit()
    settle(k)
    assert k.stats()["swpginuse"] == 0
    assert [o for o in k.objects() if o.type == "anon"] == []
    k.check()


def test_swap_slots_freed_after_fork_when_both_die(swapk):
    k = swapk
    p = k.spawn()
    n = 3 * M // PAGE_SIZE
    a = p.mmap(n * PAGE_SIZE)
    fill(p, a, n, 3)
    c = p.fork()
    fill(c, a, n // 2, 4)  # the child's own copies, under pressure
    settle(k)
    assert k.stats()["swpginuse"] > 0
    c.exit()
    # The parent's data is still there, from swap.
    assert bad_pages(p, a, n, 3) == []
    k.check()
    p.exit()
    settle(k)
    assert k.stats()["swpginuse"] == 0
    k.check()


def test_swap_slots_freed_when_shared_object_dies(swapk):
    k = swapk
    obj = k.create_object(3 * M)
    p = k.spawn()
    a = p.mmap(3 * M, flags=MAP_SHARED, obj=obj)
    fill(p, a, 3 * M // PAGE_SIZE, 5)
    q = k.spawn()
    filler = q.mmap(3 * M)
    fill(q, filler, 3 * M // PAGE_SIZE, 6)
    assert obj.swap, "no page of the shared object went to swap"
    p.munmap(a, 3 * M)
    assert obj.swap, "the object is still held: its swap must stay"
    q.exit()
    settle(k)
    with k.lock:
        remaining = len(obj.swap)
    assert k.stats()["swpginuse"] == remaining
    obj.detach()
    settle(k)
    assert k.stats()["swpginuse"] == 0
    k.check()


def test_rewritten_swapped_page_does_not_leak_slots(swapk):
    """Page out, page in, dirty, page out again: one slot per page, not two."""
    k = swapk
    p = k.spawn()
    n = 1 * M // PAGE_SIZE
    a = p.mmap(n * PAGE_SIZE)
    for rnd in range(3):
        fill(p, a, n, 10 + rnd)
        push_to_swap(k, p, a, n)
        assert k.stats()["swpginuse"] == n
        assert bad_pages(p, a, n, 10 + rnd) == []
    p.munmap(a, n * PAGE_SIZE)
    settle(k)
    assert k.stats()["swpginuse"] == 0


# -- corrupted slots -----------------------------------------------------------------------


def _corrupt(k, slot: int, how: str) -> None:
    """Change a slot behind the kernel's back, through the swap file's own
    descriptor (a temporary swap file has no name left to open)."""
    fd = k.swap.file.fd
    data = bytearray(os.pread(fd, PAGE_SIZE, slot * PAGE_SIZE))
    assert len(data) == PAGE_SIZE
    if how == "flip":
        for i in (0, 17, 2048, PAGE_SIZE - 1):
            data[i] ^= 0xFF
    elif how == "onebit":
        data[1234] ^= 0x01
    elif how == "zero":
        data[:] = bytes(PAGE_SIZE)
    assert os.pwrite(fd, bytes(data), slot * PAGE_SIZE) == PAGE_SIZE


@pytest.mark.parametrize("how", ["flip", "onebit", "zero"])
def test_corrupted_swap_slot_is_eio_and_stays_eio(how):
    with rumpvm.Kernel(memlimit="2M", swap="8M") as k:
        p = k.spawn()
        n = 64
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 20)
        push_to_swap(k, p, a, n)
        obj = object_of(p, a)
        victim = 5
        slot = obj.swap[victim]
        _corrupt(k, slot, how)
        va = a + victim * PAGE_SIZE
        for _ in range(3):  # never wrong data, however often it is tried
            with pytest.raises(VMError) as ei:
                p.read(va, PAGE_SIZE)
            assert ei.value.errno == errno.EIO
            with pytest.raises(VMError) as ei:
                p.read(va + 100, 8)  # a partial read of the page too
            assert ei.value.errno == errno.EIO
        # The page stays swapped (not silently replaced by zeros).
        assert victim in obj.swap and victim not in obj.pages
        # Its neighbours, swapped together with it, are fine.
        for i in (victim - 1, victim + 1, 0, n - 1):
            assert p.read(a + i * PAGE_SIZE, PAGE_SIZE) == pattern(20, i)
        # A read spanning the bad page fails as a whole.
        with pytest.raises(VMError) as ei:
            p.read(a + (victim - 1) * PAGE_SIZE, 3 * PAGE_SIZE)
        assert ei.value.errno == errno.EIO
        k.check()
        # Unmapping the bad page frees its slot like any other.
        p.munmap(a, n * PAGE_SIZE)
        settle(k)
        assert k.stats()["swpginuse"] == 0
        k.check()


def test_corrupted_slot_eio_through_fork_child():
    with rumpvm.Kernel(memlimit="2M", swap="8M") as k:
        p = k.spawn()
        n = 32
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 21)
        c = p.fork()
        push_to_swap(k, p, a, n)
        obj = object_of(p, a)
        # The parent's entry may have been shadowed by now: find the slot
        # along the chain the way the fault handler would.
        o, pi = obj, 3
        while pi not in o.swap:
            assert o.backing is not None, "page 3 is in no object's swap"
            pi += o.backing_offset
            o = o.backing
        _corrupt(k, o.swap[pi], "flip")
        for proc in (p, c):
            with pytest.raises(VMError) as ei:
                proc.read(a + 3 * PAGE_SIZE, PAGE_SIZE)
            assert ei.value.errno == errno.EIO
            assert proc.read(a + 4 * PAGE_SIZE, PAGE_SIZE) == pattern(21, 4)
        k.check()


# -- swap file lifetime --------------------------------------------------------------------


def open_fds_to(path: str) -> list[int]:
    """This process's descriptors open on `path` (as /proc shows it)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == path:
                fds.append(int(name))
        except OSError:
            pass  # the listing's own descriptor, already closed
    return fds


def test_temp_swapfile_removed_at_close():
    """A temporary swap file is unlinked at once (nothing is left behind even
    if the process dies); its descriptor keeps it until close."""
    k = rumpvm.Kernel(memlimit="2M", swap="4M")
    path = k.swap.path
    assert path.endswith(" (deleted)")
    assert not os.path.exists(path.removesuffix(" (deleted)"))
    assert open_fds_to(path) == [k.swap.file.fd]
    p = k.spawn()
    a = p.mmap(3 * M)
    fill(p, a, 3 * M // PAGE_SIZE, 30)
    settle(k)
    assert k.stats()["swpginuse"] > 0
    (info,) = k.swaps()
    assert info.path == path and info.used == k.stats()["swpginuse"] * PAGE_SIZE
    k.close()
    assert open_fds_to(path) == []
    k.close()  # idempotent


def test_temp_swapfile_removed_when_with_block_raises():
    with pytest.raises(RuntimeError), rumpvm.Kernel(memlimit="2M", swap="4M") as k:
        path = k.swap.path
        assert open_fds_to(path) == [k.swap.file.fd]
        raise RuntimeError("boom")
    assert open_fds_to(path) == []


def test_named_swapfile_kept_and_used(tmp_path):
    path = tmp_path / "myswap"
    with rumpvm.Kernel(memlimit="2M", swap="4M", swapfile=str(path)) as k:
        assert k.swap.path == str(path)
        p = k.spawn()
        a = p.mmap(3 * M)
        fill(p, a, 3 * M // PAGE_SIZE, 31)
        obj = object_of(p, a)
        with k.lock:
            i, slot = next(iter(obj.swap.items()))
        # The data really lives in the named file, at slot * PAGE_SIZE.
        with open(path, "rb") as f:
            f.seek(slot * PAGE_SIZE)
            assert f.read(PAGE_SIZE) == pattern(31, i)
        assert bad_pages(p, a, 3 * M // PAGE_SIZE, 31) == []
    assert path.exists()


def test_no_swap_means_no_swap_file():
    with rumpvm.Kernel(memlimit="2M") as k:
        assert k.swap is None
        settle(k)
        s = k.stats()
        assert s["swpages"] == 0 and s["swpginuse"] == 0
        assert k.swaps() == []


# -- concurrent page-in of the same page ---------------------------------------------------


def test_threads_touching_same_swapped_page_get_correct_data():
    with rumpvm.Kernel(memlimit="4M", swap="16M") as k:
        p = k.spawn()
        n = 128
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 40)
        push_to_swap(k, p, a, n)
        c = p.fork()  # a second address space reaching the same swapped pages
        pageins0 = k.stats()["pageins"]
        nthreads = 8
        barrier = threading.Barrier(nthreads)
        bad: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def reader(t: int) -> None:
            proc = p if t % 2 == 0 else c
            order = list(range(n)) if t < 4 else list(reversed(range(n)))
            try:
                barrier.wait()
                for i in order:
                    if proc.read(a + i * PAGE_SIZE, PAGE_SIZE) != pattern(40, i):
                        bad.append((t, i))
            except BaseException as ex:  # noqa: BLE001
                errors.append(ex)

        ts = [threading.Thread(target=reader, args=(t,)) for t in range(nthreads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
            assert not t.is_alive()
        assert errors == []
        assert bad == []
        # The busy protocol: each page was read from swap exactly once,
        # however many threads faulted on it at the same time.
        assert k.stats()["pageins"] - pageins0 == n
        k.check()


def test_threads_writing_and_reading_one_swapped_page():
    """Writers and readers of the same page while it goes out and back in:
    readers only ever see a complete page of one of the written patterns."""
    with rumpvm.Kernel(memlimit="2M", swap="16M") as k:
        p = k.spawn()
        a = p.mmap(PAGE_SIZE)
        p.write(a, pattern(50, 0))
        filler = p.mmap(4 * M)
        valid = {pattern(50 + v, 0) for v in range(4)}
        stop = threading.Event()
        bad: list[bytes] = []
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for rnd in range(30):
                    p.write(a, pattern(50 + rnd % 4, 0))
                    fill(p, filler + (rnd % 4) * M, M // PAGE_SIZE, 60 + rnd)  # pressure
            except BaseException as ex:  # noqa: BLE001
                errors.append(ex)
            finally:
                stop.set()

        def reader() -> None:
            try:
                while not stop.is_set():
                    d = p.read(a, PAGE_SIZE)
                    if d not in valid:
                        bad.append(d[:16])
            except BaseException as ex:  # noqa: BLE001
                errors.append(ex)

        ts = [threading.Thread(target=writer), *(threading.Thread(target=reader) for _ in range(3))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
            assert not t.is_alive()
        assert errors == []
        assert bad == []
        assert k.stats()["pageouts"] > 0
        k.check()
