"""Host faults under a real kernel, through the hypercall layer's test-only
fault-injection switch (`hypercall.inject`): arenas that cannot be mapped,
swap writes and reads that fail or come up short, slow swap I/O, and a swap
file truncated or corrupted behind the kernel's back.

Each test asserts the documented outcome (README, "Errors"), that no
acknowledged data is lost or read back wrong, that `k.check()` passes
throughout, and that the kernel works again once the fault is gone.  No
sleeps: blocked I/O is released by the test (Events), the pagedaemon is
awaited with `wait_idle`, and the only time bounds are `oom_timeout` and
join bounds against hangs.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pages import bad_pages, fill, pattern

import hypercall
import rumpvm
from rumpvm import PAGE_SIZE, OutOfMemory, VMError

M = 1 << 20
JOIN = 30.0  # bound on any thread of a test: a hang fails instead of eating the run
WRITE_FAILED = "swap write failed"


@pytest.fixture(autouse=True)
def _no_fault_left_armed():
    yield
    armed = dict(hypercall.faults)
    hypercall.disarm()
    assert not armed, f"fault left armed: {armed}"


@contextmanager
def boot(**kwargs) -> Iterator[rumpvm.Kernel]:
    with rumpvm.Kernel(**kwargs) as k:
        yield k
        k.check()


def object_of(p, addr: int):
    (e,) = [e for e in p.maps() if e.start <= addr < e.end]
    assert e.object is not None
    return p.kernel.objtab[e.object]


def write_failures(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rumpvm.pagedaemon" and WRITE_FAILED in r.getMessage()]


def fill_until_daemon_wakes(k, p, addr: int, npages: int, tag: int) -> int:
    """Write pages until fewer than freemin frames are free (the allocation
    that crossed the line woke the pagedaemon) without running out; returns
    the pages written."""
    for i in range(npages):
        p.write(addr + i * PAGE_SIZE, pattern(tag, i))
        with k.lock:
            if k.physmem.avail_pages() < k.pagedaemon.freemin:
                return i + 1
    raise AssertionError("memory never got short")


def push_to_swap(k, p, addr: int, npages: int) -> None:
    """Page [addr, +npages) of `p` out: another process writes twice the
    limit until they are all on swap, then exits."""
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
    assert k.pagedaemon.wait_idle(JOIN)


class WatchedCondition(threading.Condition):
    """The kernel's page_cv, reporting which threads went to sleep on it
    (a thread waiting for a busy page): lets a test know, without sleeping,
    that a reader is blocked on PG_BUSY."""

    def __init__(self, lock) -> None:
        super().__init__(lock)
        self.sleepers: set[int] = set()
        self.seen = threading.Condition()

    def wait(self, timeout=None):
        with self.seen:
            self.sleepers.add(threading.get_ident())
            self.seen.notify_all()
        return super().wait(timeout)

    def wait_for_sleeper(self, ident: int, timeout: float = JOIN) -> bool:
        with self.seen:
            return self.seen.wait_for(lambda: ident in self.sleepers, timeout)


class Worker(threading.Thread):
    """A thread that keeps its result or exception for the test to assert."""

    def __init__(self, fn, *args) -> None:
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def finish(self) -> object:
        self.join(JOIN)
        assert not self.is_alive(), "thread hung"
        if self.error is not None:
            raise self.error
        return self.result


# -- the switch itself ------------------------------------------------------------------------


def test_switch_counts_and_disarms():
    assert hypercall.faults == {}
    with pytest.raises(ValueError):
        hypercall.arm("no_such_point")
    with hypercall.inject("anonmmap", count=2, skip=1) as f:
        a = hypercall.anonmmap(PAGE_SIZE)  # skipped
        hypercall.unmap(a)
        for _ in range(2):
            with pytest.raises(OSError) as ei:
                hypercall.anonmmap(PAGE_SIZE)
            assert ei.value.errno == errno.ENOMEM
        hypercall.unmap(hypercall.anonmmap(PAGE_SIZE))  # count used up
        assert f.hits == 2 and [p for p, _, _ in f.log] == ["anonmmap"] * 2
    assert hypercall.faults == {}
    hypercall.unmap(hypercall.anonmmap(PAGE_SIZE))


# -- anonmmap ---------------------------------------------------------------------------------


def test_anonmmap_failure_is_out_of_memory_and_nothing_half_done():
    with boot(oom_timeout=0.2) as k:
        p = k.spawn()
        n = 1024
        a = p.mmap(n * PAGE_SIZE)
        used = 0
        with k.lock:
            assert k.physmem.limit is None
        while True:  # use up every frame of the arenas mapped so far
            p.write(a + used * PAGE_SIZE, pattern(1, used))
            used += 1
            with k.lock:
                if not k.physmem.free_frames:
                    break
        assert used < n - 64
        maps, narenas = p.maps(), len(k.physmem.arenas)
        wired = k.stats()["wired"]
        nxt = a + used * PAGE_SIZE
        with hypercall.inject("anonmmap") as f:
            # A write to a new page needs a frame, so a new arena: OOM, nothing written.
            with pytest.raises(OutOfMemory) as ei:
                p.write(nxt, b"x" * 100)
            assert ei.value.errno == errno.ENOMEM and ei.value.written == 0
            # mlock reserves its frames first: all or nothing.
            with pytest.raises(OutOfMemory):
                p.mlock(nxt, 8 * PAGE_SIZE)
            assert f.hits >= 2
            assert p.maps() == maps and len(k.physmem.arenas) == narenas
            assert k.stats()["wired"] == wired
            assert p.read(nxt, PAGE_SIZE) == bytes(PAGE_SIZE)  # never-written page, still zeros
            assert bad_pages(p, a, used, 1) == []  # resident data unharmed
            k.check()
        # The fault is gone: the same calls work.
        p.write(nxt, b"x" * 100)
        p.mlock(nxt, 8 * PAGE_SIZE)
        assert p.read(nxt, 100) == b"x" * 100
        p.munlock(nxt, 8 * PAGE_SIZE)
        assert len(k.physmem.arenas) > narenas
        assert bad_pages(p, a, used, 1) == []


def test_anonmmap_failure_in_km_alloc_is_out_of_memory():
    with boot(oom_timeout=0.2) as k:
        charged = k.stats()["kmem_charged"]
        with hypercall.inject("anonmmap"), pytest.raises(OutOfMemory):
            k.kmem.km_alloc(4 * PAGE_SIZE)
        assert k.stats()["kmem_charged"] == charged
        k.check()
        addr = k.kmem.km_alloc(4 * PAGE_SIZE)
        k.kmem.km_free(addr)


# -- failed and short swap writes --------------------------------------------------------------


@pytest.mark.parametrize("point,err", [("swap_write", errno.EIO), ("swap_write", errno.ENOSPC),
                                       ("swap_write_short", errno.EIO)])
def test_failed_pageouts_keep_data_resident_and_dirty(caplog, point, err):
    with boot(memlimit="2M", swap="16M") as k:
        p = k.spawn()
        n = 2 * 512
        a = p.mmap(n * PAGE_SIZE)
        with hypercall.inject(point, err) as f:
            used = fill_until_daemon_wakes(k, p, a, n, 2)
            assert k.pagedaemon.wait_idle(JOIN)  # its scan is over: every pageout failed
            assert f.hits >= 1
            assert k.pagedaemon.thread.is_alive()
            # The daemon retries on a timer while memory is short; whatever it
            # is doing now, under the lock no slot is kept but those in flight,
            # and every page is resident and dirty.
            obj = object_of(p, a)
            with k.lock:
                assert k.uvmexp.pageouts == 0
                assert k.swap.inuse == len(k.pagedaemon.inflight)  # failed writes' slots freed
                assert sorted(obj.pages) == list(range(used))
                assert all(pg.dirty for pg in obj.pages.values())
                assert not obj.swap
            assert bad_pages(p, a, used, 2) == []
            k.check()
        # One line for the streak of failures, however many writes failed.
        (rec,) = write_failures(caplog)
        assert rec.levelno == logging.ERROR
        assert ("short" if point.endswith("short") else os.strerror(err)) in rec.getMessage()
        # Swap works again: the rest of the region (twice the limit in all) pages out.
        fill(p, a, n, 2, start=used)
        assert k.pagedaemon.wait_idle(JOIN)
        assert k.stats()["pageouts"] > 0 and k.stats()["swpginuse"] > 0
        assert len(write_failures(caplog)) == 1
        assert bad_pages(p, a, n, 2) == []


def test_transient_write_failures_under_threaded_load(caplog):
    """Four writers, each twice over its region (twice the limit in all),
    while the first six pageouts fail: nothing acknowledged is lost, and
    paging resumes without anyone running out of memory."""
    with boot(memlimit="2M", swap="32M") as k:
        nthreads, npages = 4, 256
        procs = [k.spawn(name=f"w{t}") for t in range(nthreads)]
        addrs = [q.mmap(npages * PAGE_SIZE) for q in procs]

        def writer(t: int) -> None:
            for rnd in range(2):
                fill(procs[t], addrs[t], npages, 10 * t + rnd)

        with hypercall.inject("swap_write", errno.EIO, count=6) as f:
            ws = [Worker(writer, t) for t in range(nthreads)]
            for w in ws:
                w.start()
            for w in ws:
                w.finish()
            assert k.pagedaemon.wait_idle(JOIN)
        assert f.hits == 6 and 1 <= len(write_failures(caplog)) <= 6  # one line per streak
        assert k.pagedaemon.thread.is_alive()
        for t in range(nthreads):
            assert bad_pages(procs[t], addrs[t], npages, 10 * t + 1) == []
        assert k.stats()["pageouts"] > 0
        k.check()


def test_all_pageouts_failing_is_out_of_memory_not_a_hang(caplog):
    with boot(memlimit="1M", swap="16M", oom_timeout=0.5) as k:
        nthreads, npages = 3, 256  # each thread alone would fill the limit
        procs = [k.spawn(name=f"w{t}") for t in range(nthreads)]
        addrs = [q.mmap(npages * PAGE_SIZE) for q in procs]
        acked = [0] * nthreads

        def writer(t: int, tag: int) -> None:
            for i in range(acked[t], npages):
                procs[t].write(addrs[t] + i * PAGE_SIZE, pattern(tag + t, i))
                acked[t] = i + 1

        with hypercall.inject("swap_write", errno.EIO) as f:
            ws = [Worker(writer, t, 0) for t in range(nthreads)]
            for w in ws:
                w.start()
            for w in ws:
                with pytest.raises(OutOfMemory) as ei:
                    w.finish()
                assert ei.value.written == 0
            assert f.hits >= 1
            assert k.pagedaemon.wait_idle(JOIN)
            assert k.pagedaemon.thread.is_alive()
            assert k.stats()["oomfails"] >= nthreads
            with k.lock:  # the daemon may be retrying: only its in-flight slots are used
                assert k.swap.inuse == len(k.pagedaemon.inflight)
            for t in range(nthreads):  # every acknowledged write is there
                assert bad_pages(procs[t], addrs[t], acked[t], t) == []
            k.check()
        # The disk is back: the same writers finish (their earlier pages page out).
        ws = [Worker(writer, t, 0) for t in range(nthreads)]
        for w in ws:
            w.start()
        for w in ws:
            w.finish()
        assert acked == [npages] * nthreads
        for t in range(nthreads):
            assert bad_pages(procs[t], addrs[t], npages, t) == []
        assert k.stats()["pageouts"] > 0


# -- failed and short swap reads ---------------------------------------------------------------


@pytest.mark.parametrize("point", ["swap_read", "swap_read_short"])
def test_failed_swap_reads_are_eio_and_the_slot_stays(point):
    with boot(memlimit="2M", swap="16M") as k:
        p = k.spawn()
        n = 64
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 3)
        push_to_swap(k, p, a, n)
        obj = object_of(p, a)
        keep = p.mmap(4 * PAGE_SIZE)  # resident pages, touched during the fault
        fill(p, keep, 4, 4)
        victim, va = 17, a + 17 * PAGE_SIZE
        slot = obj.swap[victim]
        with hypercall.inject(point) as f:
            for _ in range(2):  # unreadable, and stays so: never wrong, never zeros
                with pytest.raises(VMError) as ei:
                    p.read(va, PAGE_SIZE)
                assert ei.value.errno == errno.EIO
            with pytest.raises(VMError) as ei:
                p.peek(va, PAGE_SIZE)  # the inspection path reads the slot itself
            assert ei.value.errno == errno.EIO
            assert f.hits >= 3
            with k.lock:
                assert obj.swap.get(victim) == slot and victim not in obj.pages
            assert bad_pages(p, keep, 4, 4) == []  # resident pages unaffected
            k.check()
        # Retry without the fault: the slot was kept, the bytes are right.
        assert p.read(va, PAGE_SIZE) == pattern(3, victim)
        # One failed read hurts only the page it was for.
        with hypercall.inject(point, count=1) as f:
            with pytest.raises(VMError) as ei:
                p.read(a + 40 * PAGE_SIZE, PAGE_SIZE)
            assert ei.value.errno == errno.EIO
            assert p.read(a + 3 * PAGE_SIZE, PAGE_SIZE) == pattern(3, 3)
            assert f.hits == 1
        assert bad_pages(p, a, n, 3) == []


def test_a_swap_read_error_part_way_through_readinto_reports_what_was_copied():
    """readinto over a resident page then a swapped one whose read fails:
    EIO with `.written` = the first page, which is in the buffer; the rest
    of the buffer is untouched (a short read, as the README promises)."""
    with boot(memlimit="2M", swap="16M") as k:
        p = k.spawn()
        n = 64
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 3)
        push_to_swap(k, p, a, n)
        p.madvise(a, n * PAGE_SIZE, rumpvm.MADV_RANDOM)  # no read-ahead: page 11 stays on swap
        assert p.read(a + 10 * PAGE_SIZE, PAGE_SIZE) == pattern(3, 10)
        buf = bytearray(b"\xee" * (2 * PAGE_SIZE))
        with hypercall.inject("swap_read", count=1), pytest.raises(VMError) as ei:
            p.readinto(a + 10 * PAGE_SIZE, buf)
        assert ei.value.errno == errno.EIO
        assert ei.value.written == PAGE_SIZE
        assert buf[:PAGE_SIZE] == pattern(3, 10) and buf[PAGE_SIZE:] == b"\xee" * PAGE_SIZE
        with hypercall.inject("swap_read", count=1), pytest.raises(VMError) as ei:
            p.read(a + 20 * PAGE_SIZE, 2 * PAGE_SIZE)
        assert ei.value.errno == errno.EIO and ei.value.written is None  # a read returns nothing: no count
        k.check()


# -- slow swap I/O -----------------------------------------------------------------------------


def _block_a_pageout(k, p, a: int, n: int, tag: int):
    """Fill `n` pages, then lower the limit from a thread so the pagedaemon
    pages out; its first write blocks in the injected delay.  Returns
    (fault, limit thread, one busy page of ours under that write, its va)."""
    fill(p, a, n, tag)
    obj = object_of(p, a)
    f = hypercall.arm("swap_write_delay", count=1)
    lower = Worker(setattr, k, "memlimit", "1M")
    lower.start()
    assert f.wait(1, JOIN), "no pageout started"
    (_, off, cnt), = f.log
    with k.lock:  # the daemon dropped the lock for its write
        run = {off // PAGE_SIZE + i for i in range(cnt)}
        mine = [pg for pg in k.io_pages if pg.obj is obj and pg.busy]
        assert mine and k.pagedaemon.inflight >= run
        page = mine[len(mine) // 2]
        return f, lower, page, a + page.pindex * PAGE_SIZE


def test_slow_pageout_readers_wait_on_busy_page_and_peek_sees_it():
    with boot(memlimit="2M", swap="16M", oom_timeout=JOIN) as k:
        with k.lock:
            k.page_cv = watched = WatchedCondition(k.lock)
        p = k.spawn()
        n = 400
        a = p.mmap(n * PAGE_SIZE)
        _, lower, page, va = _block_a_pageout(k, p, a, n, 5)
        try:
            want = pattern(5, page.pindex)
            reader = Worker(p.read, va, PAGE_SIZE)
            reader.start()
            assert watched.wait_for_sleeper(reader.ident), "reader did not wait for the busy page"
            with k.lock:
                assert page.busy and page.wanted
            # peek never waits and never shows a stale or half-written page.
            assert p.peek(va, PAGE_SIZE) == want
            assert reader.is_alive()
        finally:
            hypercall.disarm("swap_write_delay")  # releases the write
        assert reader.finish() == want
        lower.finish()
        assert k.memlimit == M
        assert k.stats()["pageouts"] > 0
        assert bad_pages(p, a, n, 5) == []


def test_close_waits_for_blocked_pageout_then_releases_everything(caplog):
    k = rumpvm.Kernel(memlimit="2M", swap="16M", oom_timeout=JOIN)
    try:
        p = k.spawn()
        n = 400
        a = p.mmap(n * PAGE_SIZE)
        k.check()
        f, lower, _, va = _block_a_pageout(k, p, a, n, 6)
        reader = Worker(p.read, va, PAGE_SIZE)
        reader.start()
        closer = Worker(k.close)
        closer.start()
        # close() woke the limit setter (and the reader): they leave with ESHUTDOWN.
        with pytest.raises(VMError) as ei:
            lower.finish()
        assert ei.value.errno == errno.ESHUTDOWN
        # The write is still blocked, so close is still waiting for the
        # pagedaemon, and nothing the write uses has been freed.
        assert closer.is_alive() and k.pagedaemon.thread.is_alive()
        assert k.swap.file.fd >= 0 and k.physmem.arenas and all(x.mapped for x in k.physmem.arenas)
        f.release()
        closer.finish()
        try:
            reader.finish()
        except VMError as e:
            assert e.errno == errno.ESHUTDOWN
        else:
            raise AssertionError("a read asleep in a closing kernel must be ESHUTDOWN")
        assert not k.pagedaemon.thread.is_alive()
        assert k.swap.file.fd == -1 and k.physmem.arenas == []
        assert write_failures(caplog) == []  # the write finished on a live descriptor
        with pytest.raises(VMError) as ei:
            k.spawn()
        assert ei.value.errno == errno.ESHUTDOWN
    finally:
        hypercall.disarm()
        k.close()


# -- the swap file changed under the kernel ----------------------------------------------------


def _swapped(k, p, n: int, tag: int):
    a = p.mmap(n * PAGE_SIZE)
    fill(p, a, n, tag)
    push_to_swap(k, p, a, n)
    obj = object_of(p, a)
    with k.lock:
        return a, obj, dict(obj.swap)


def _read_all(p, a: int, n: int, tag: int, order) -> set[int]:
    """Read every page in `order`; the set of EIO pages (any other result
    must be the page's own bytes)."""
    eio = set()
    for i in order:
        try:
            data = p.read(a + i * PAGE_SIZE, PAGE_SIZE)
        except VMError as e:
            assert e.errno == errno.EIO
            eio.add(i)
        else:
            assert data == pattern(tag, i), f"page {i} read back wrong"
    return eio


def test_truncated_swap_file_is_eio_for_the_lost_slots_only():
    with boot(memlimit="2M", swap="16M") as k:
        p = k.spawn()
        n = 64
        a, obj, slots = _swapped(k, p, n, 7)
        cut = sorted(slots.values())[n // 2]
        lost = {i for i, s in slots.items() if s >= cut}
        os.ftruncate(k.swap.file.fd, cut * PAGE_SIZE)
        # In order: read-ahead runs that cross the end of the file must not
        # take the pages before it along.  Then, paged out again, at random
        # (each page alone).
        assert _read_all(p, a, n, 7, range(n)) == lost
        push_to_swap(k, p, a, n - len(lost))
        order = list(range(n))
        random.Random(7).shuffle(order)
        assert _read_all(p, a, n, 7, order) == lost
        with pytest.raises(VMError) as ei:
            p.peek(a + min(lost) * PAGE_SIZE, PAGE_SIZE)
        assert ei.value.errno == errno.EIO
        with k.lock:
            assert all(obj.swap.get(i) == slots[i] for i in lost)
        k.check()
        # Paging goes on: new data pages out (past the cut: the file grows again) and back.
        b, _, _ = _swapped(k, p, n, 8)
        assert bad_pages(p, b, n, 8) == []
        assert _read_all(p, a, n, 7, range(n)) == lost  # the lost pages stay lost, never wrong
        p.munmap(a, n * PAGE_SIZE)  # their slots are freed like any other
        assert k.pagedaemon.wait_idle(JOIN)
        k.check()


def test_corrupted_swap_slot_is_eio_for_that_page_only():
    with boot(memlimit="2M", swap="16M") as k:
        p = k.spawn()
        n = 64
        a, _, slots = _swapped(k, p, n, 9)
        rng = random.Random(9)
        bad = {5, 6, 40}
        for i in bad:
            assert os.pwrite(k.swap.file.fd, rng.randbytes(PAGE_SIZE), slots[i] * PAGE_SIZE) == PAGE_SIZE
        assert _read_all(p, a, n, 9, range(n)) == bad  # in order: read-ahead drops the bad ones
        push_to_swap(k, p, a, n // 2)
        order = list(range(n))
        rng.shuffle(order)
        assert _read_all(p, a, n, 9, order) == bad
        k.check()
        b, _, _ = _swapped(k, p, n, 10)
        assert bad_pages(p, b, n, 10) == []
        assert _read_all(p, a, n, 9, range(n)) == bad  # and stay so
        p.munmap(a, n * PAGE_SIZE)
        assert k.pagedaemon.wait_idle(JOIN)


def _fill_memory_with_kernel_pages(k) -> list[int]:
    """uvm_km_alloc every frame that can be had, draining the pools through
    daemon scans until none is left; returns the allocations."""
    got = []
    for _ in range(3):
        while x := k.kmem.km_alloc(PAGE_SIZE, wait=False):
            got.append(x)
        with k.lock:
            k.pagedaemon.wake()
        assert k.pagedaemon.wait_idle(JOIN)
    with k.lock:
        assert k.physmem.avail_pages() == 0 and k.pagedaemon.stalled
    return got


def test_waiter_for_memory_is_woken_when_a_page_in_ends():
    """A scan that finds only busy pages (a page-in in flight) stalls; the
    end of the page-in makes them pageable again, so a thread waiting for
    memory must retry then — not sleep out oom_timeout into OutOfMemory."""
    with boot(memlimit="1M", swap="16M", oom_timeout=JOIN) as k:
        k.maxslp = 0  # the stopped owner is swapped out at once (its u-area is not left to free)
        p = k.spawn()
        n = 4
        a = p.mmap(n * PAGE_SIZE)
        p.madvise(a, n * PAGE_SIZE, rumpvm.MADV_RANDOM)  # one busy page, no read-ahead
        fill(p, a, n, 7)
        oid = object_of(p, a).id
        p.stop()
        push_to_swap(k, p, a, n)
        with k.lock:
            k.mem_cv = watched = WatchedCondition(k.lock)
        f = hypercall.arm("swap_read_delay", count=1)
        writer = Worker(k.object_write, oid, 0, b"x")  # pages in page 0, blocks in the read
        writer.start()
        assert f.wait(1, JOIN)
        held = _fill_memory_with_kernel_pages(k)
        waiter = Worker(k.kmem.km_alloc, PAGE_SIZE)
        waiter.start()
        assert watched.wait_for_sleeper(waiter.ident), "the allocation did not wait for memory"
        hypercall.disarm("swap_read_delay")
        writer.finish()
        held.append(waiter.finish())  # OutOfMemory here is the bug
        assert k.object_peek(oid, 0, PAGE_SIZE) == b"x" + pattern(7, 0)[1:]
        for x in held:
            k.kmem.km_free(x)
        p.cont()


def test_km_alloc_of_more_than_the_free_target_reclaims_enough():
    """A multi-page kernel allocation larger than what is free, while free
    memory is above the daemon's target, still gets its pages (the scan
    frees up to the waiter's need, not just to freetarg)."""
    with boot(memlimit="1M", swap="16M", oom_timeout=JOIN) as k:
        p = k.spawn()
        n = 200
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 3)
        assert k.pagedaemon.wait_idle(JOIN)
        with k.lock:
            free = k.physmem.avail_pages()
            assert free > k.pagedaemon.freetarg
        x = k.kmem.km_alloc((free + 64) * PAGE_SIZE)
        k.kmem.km_free(x)
        assert bad_pages(p, a, n, 3) == []
