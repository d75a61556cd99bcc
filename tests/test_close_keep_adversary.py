"""An outside tester's attack on three changes:

1. closing a host window keeps its contents for whoever else holds its
   object (`window.close_window` / `_close_keeping`, `uffd.c`
   `rv_win_close_save` / `rv_win_detach` / `rv_win_sums`);
2. a long write leaves the fault-ahead pages it overwrites whole unzeroed
   (`uio.vm_write`'s `fresh` list, `fault.fault_ahead`);
3. the four-lane swap checksum (`rv_checksum` in `hypercall/_build.py`).

What a user relies on: no acknowledged byte is lost, no stale or foreign
byte is ever shown (a bad swap slot is EIO, never wrong bytes), frames and
slots are neither leaked nor counted twice (`k.check()`, `swpginuse`),
resident memory stays under the limit, and nothing hangs or crashes.

Found and fixed through this file: a close (and a peek) that hung on a
page the host had discarded, a second close or a kernel close racing a
close, pages dropped when the limit was being lowered, the host mapping's
reference miscounted once it went, Ctrl-C inside fault-ahead, and
copy-on-write inheritance of a window's object (now refused).  Scenarios that can hang or crash the interpreter run in a
subprocess with a timeout.  Races are ordered with Events and a trace
function that parks a thread at a chosen line (as a preemption there
would), never with sleeps.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import struct
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import hypercall
import rumpvm
from rumpvm import INHERIT_COPY, MAP_SHARED, PAGE_SIZE, OutOfMemory, VMError, fault

P = PAGE_SIZE
M = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOIN = 30.0  # a thread still running after this is a hang


@pytest.fixture
def k(window_kernel):
    return window_kernel


# -- helpers -------------------------------------------------------------------------------------


def run_script(src: str, timeout: float = 15) -> subprocess.CompletedProcess:
    """Run `src` in a fresh interpreter; a hang (timeout) or a crash fails
    the test, and so does output not ending in OK."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),
                                                       os.environ.get("PYTHONPATH", "")]))
    try:
        r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(src)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"subprocess hung (> {timeout}s)")
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert r.stdout.strip().endswith("OK"), (r.stdout[-2000:], r.stderr[-2000:])
    return r


# Shared by the subprocess scripts: park a thread at the first line of a
# function containing a text (what a preemption there would do).
PRELUDE = textwrap.dedent('''
    import inspect, sys, threading
    def park_at(fn, text):
        """(run, parked, go): run(callable) in this thread stops at the
        first line of fn whose source contains text, sets parked and
        waits for go."""
        src, first = inspect.getsourcelines(fn)
        line = first + next(i for i, s in enumerate(src) if text in s)
        parked, go = threading.Event(), threading.Event()
        def local(frame, event, arg):
            if event == "line" and frame.f_lineno == line and not parked.is_set():
                parked.set()
                go.wait(20)
            return local
        def tracer(frame, event, arg):
            return local if frame.f_code is fn.__code__ else None
        def run(call):
            sys.settrace(tracer)
            try:
                return call()
            finally:
                sys.settrace(None)
        return run, parked, go
''')


def settle(k) -> None:
    assert k.pagedaemon.wait_idle(JOIN), "pagedaemon did not settle"


def slots_balanced(k) -> bool:
    """Every slot in use belongs to an object: no window keeps one after
    its close, no slot is lost or counted twice."""
    settle(k)
    return k.stats()["swpginuse"] == sum(o.swapped for o in k.objects())


def no_user_slots(k) -> bool:
    """Every slot in use is the kernel object's: a u-area (the host
    process's, say) may be on swap whenever the swapper took it out."""
    return all(o.swapped == 0 for o in k.objects() if o.type != "kernel")


def page_of(idx: int, salt: int) -> bytes:
    """A page unique to (idx, salt), every word different."""
    return (np.arange(idx * 512, (idx + 1) * 512, dtype=np.uint64) ^ np.uint64(salt << 40)).tobytes()


def fill_window(w, salt: int) -> None:
    a = np.frombuffer(w, dtype=np.uint64)
    a[:] = np.arange(a.size, dtype=np.uint64) ^ np.uint64(salt << 40)
    del a


def states(w) -> np.ndarray:
    """Each window page's engine state (0 absent, 1 present, 2 parked, 3 swapped)."""
    return np.frombuffer(bytes(w._hw.states()), dtype=np.uint8)[0::2]


def read_pages(p, a: int, npages: int) -> list[bytes]:
    data = p.read(a, npages * P)
    return [data[i * P:(i + 1) * P] for i in range(npages)]


class Worker(threading.Thread):
    def __init__(self, fn, *args) -> None:
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.error: BaseException | None = None
        self.result = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def finish(self):
        self.join(JOIN)
        assert not self.is_alive(), "thread hung"
        if self.error is not None:
            raise self.error
        return self.result


# == 1. closing a window keeps its contents =====================================================


def test_offset_window_in_a_larger_object_keeps_its_pages_and_the_others(k):
    """A 32M window (4x the limit) at 4M into a 40M object that also has
    ordinary pages on both sides: after the close every page reads its own
    bytes through the process and through peeks (resident, parked and
    swapped window pages alike, and the ordinary pages untouched), resident
    stays under the limit, and when the last holder goes every frame and
    slot goes with it."""
    obj = k.create_object(40 * M)
    p = k.spawn()
    a = p.mmap(40 * M, flags=MAP_SHARED, obj=obj)
    outside = [i for i in range(0, 1024, 3)] + [i for i in range(9216, 9728, 3)]  # 36M-38M; 38M-40M untouched
    for i in outside:
        p.write(a + i * P, page_of(i, 1))
    w = k.window(32 * M, obj=obj, offset=4 * M)
    arr = np.frombuffer(w, dtype=np.uint64)
    for i in range(32 * M // P):  # page by page, so the engine evicts as it goes
        arr[i * 512:(i + 1) * 512] = np.arange((i + 1024) * 512, (i + 1025) * 512, dtype=np.uint64) ^ np.uint64(2 << 40)
    del arr
    st = states(w)
    assert (st == 3).any() and ((st == 1) | (st == 2)).any(), np.bincount(st, minlength=4)
    w.close()
    k.check()
    assert slots_balanced(k)
    assert k.stats()["resident"] <= k.memlimit

    def want(i: int) -> bytes:
        if 1024 <= i < 9216:
            return page_of(i, 2)
        return page_of(i, 1) if i % 3 == 0 and i < 9728 else bytes(P)

    got = read_pages(p, a, 10240)
    assert [i for i in range(10240) if got[i] != want(i)] == []
    for i in range(0, 10240, 5):
        assert k.object_peek(obj.id, i * P, P) == want(i), i
    # A second window over the kept range is refused (it has pages now);
    # an untouched range of the same object still takes one.
    with pytest.raises(VMError) as ei:
        k.window(M, obj=obj, offset=4 * M)
    assert ei.value.errno == errno.EBUSY
    with k.window(P * 16, obj=obj, offset=39 * M + P) as w2:
        w2[:4] = b"anew"
    assert k.object_peek(obj.id, 39 * M + P, 4) == b"anew"
    p.exit()
    k.check()
    k.detach_object(obj)
    k.check()
    assert obj.id not in {o.id for o in k.objects()}
    assert slots_balanced(k) and no_user_slots(k)


def test_kept_slots_are_verified_corruption_is_eio_never_wrong_bytes(k):
    """Slots a closing window hands over keep their checksums: a slot
    corrupted while the window still held it, one corrupted after the
    close, and one overwritten with another valid page's bytes (a stale or
    misdirected write) each read as EIO, through the process and through
    peeks, while every other page reads its own bytes."""
    w = k.window(32 * M)
    p = k.spawn()
    a = p.mmap(32 * M, flags=MAP_SHARED, obj=w.obj)
    obj = w.obj
    fill_window(w, 3)
    swapped = np.flatnonzero(states(w) == 3)
    assert len(swapped) > 300
    before = int(swapped[10])
    fd = k.swap.file.fd
    assert os.pwrite(fd, random.Random(1).randbytes(P), w._slots[before] * P) == P
    w.close()
    k.check()
    with k.lock:
        kept = dict(obj.swap)
    assert before in kept
    keys = sorted(kept)
    after, stale = keys[100], keys[200]
    assert os.pwrite(fd, random.Random(2).randbytes(P), kept[after] * P) == P
    assert os.pwrite(fd, os.pread(fd, P, kept[keys[201]] * P), kept[stale] * P) == P
    bad = {before, after, stale}
    for i in bad:
        for read in (lambda i=i: p.read(a + i * P, P), lambda i=i: k.object_peek(obj.id, i * P, P)):
            with pytest.raises(VMError) as ei:
                read()
            assert ei.value.errno == errno.EIO, i
    for i in range(32 * M // P):
        if i not in bad:
            assert p.read(a + i * P, P) == page_of(i, 3), i
    k.check()
    p.exit()
    k.check()
    assert slots_balanced(k) and no_user_slots(k)


def test_close_racing_process_writers_readers_and_the_pagedaemon_keeps_every_acknowledged_write(k):
    """A process writes (one page at a time) and reads the window's object,
    and a thread peeks at it, while the window closes and another process keeps the pagedaemon
    evicting window pages: a write or read racing the close is EBADF or
    succeeds; after the close every page holds the host's bytes and the
    last acknowledged write; resident memory never passes the limit."""
    size = 32 * M
    npg = size // P
    w = k.window(size)
    p = k.spawn()
    a = p.mmap(size, flags=MAP_SHARED, obj=w.obj)
    arr = np.frombuffer(w, dtype=np.uint64)
    arr[::512] = np.arange(npg, dtype=np.uint64) + 1  # word 0 of each page: its index + 1
    del arr
    q = k.spawn(name="pressure")
    b = q.mmap(16 * M)
    stop = threading.Event()
    closed = threading.Event()
    enough = threading.Event()
    last: dict[int, int] = {}
    over: list[tuple[int, int]] = []
    bad: list[object] = []
    counts = {"ebadf": 0, "after": 0}

    def writer():
        rng = random.Random(5)
        seq = 0
        while not stop.is_set():
            pg = rng.randrange(npg)
            seq += 1
            try:
                p.write(a + pg * P + 8, struct.pack("<Q", seq))
            except VMError as e:
                if e.errno != errno.EBADF:
                    raise
                counts["ebadf"] += 1
                continue
            last[pg] = seq
            if seq >= 400:
                enough.set()
            if closed.is_set():
                counts["after"] += 1
                if counts["after"] >= 400:
                    return

    def reader():
        rng = random.Random(6)
        while not stop.is_set():
            pg = rng.randrange(npg)
            try:
                got = p.read(a + pg * P, 8)
            except VMError as e:
                if e.errno != errno.EBADF:
                    bad.append(e)
                continue
            if got != struct.pack("<Q", pg + 1):
                bad.append((pg, got))

    def peeker():
        rng = random.Random(7)
        oid = w.obj.id
        while not stop.is_set():
            pg = rng.randrange(npg)
            try:
                got = k.object_peek(oid, pg * P, 8)
            except VMError as e:
                if e.errno != errno.EBADF:
                    bad.append(e)
                continue
            if got != struct.pack("<Q", pg + 1):
                bad.append(("peek", pg, got))

    def pressure():
        i = 0
        while not stop.is_set():
            q.write(b + (i % 4096) * P, struct.pack("<Q", i) * 512)
            i += 1
            if i % 64 == 0:
                s = k.stats()
                if s["resident"] > k.memlimit:
                    over.append((s["resident"], i))

    ws = [Worker(writer), Worker(reader), Worker(peeker), Worker(pressure)]
    for t in ws:
        t.start()
    try:
        assert enough.wait(JOIN)
        w.close()
        closed.set()
        ws[0].finish()
    finally:
        stop.set()
        for t in ws:
            t.join(JOIN)
    for t in ws:
        t.finish()
    assert not bad, bad[:5]
    assert not over, over[:5]
    k.check()
    pages = read_pages(p, a, npg)
    wrong = [pg for pg in range(npg)
             if pages[pg][:16] != struct.pack("<QQ", pg + 1, last.get(pg, 0)) or pages[pg][16:] != bytes(P - 16)]
    assert wrong == []
    q.exit()
    p.exit()
    k.check()
    assert slots_balanced(k) and no_user_slots(k)


def test_two_windows_closing_at_once_under_pressure_keep_their_own_pages(k):
    """Two windows, each mapped by its own process, closed by two threads
    at the same moment while the pagedaemon evicts: each object gets its
    own window's bytes, nothing is lost or crossed, slots balance."""
    wins = [k.window(12 * M) for _ in range(2)]
    procs = [k.spawn() for _ in range(2)]
    addrs = [p.mmap(12 * M, flags=MAP_SHARED, obj=w.obj) for p, w in zip(procs, wins)]
    for n, w in enumerate(wins):
        fill_window(w, 10 + n)
    q = k.spawn(name="pressure")
    b = q.mmap(8 * M)
    stop = threading.Event()
    go = threading.Barrier(3)

    def pressure():
        go.wait(JOIN)
        i = 0
        while not stop.is_set():
            q.write(b + (i % 2048) * P, struct.pack("<Q", i) * 512)
            i += 1

    closers = [Worker(lambda w=w: (go.wait(JOIN), w.close())) for w in wins]
    pr = Worker(pressure)
    for t in (*closers, pr):
        t.start()
    try:
        for t in closers:
            t.finish()
    finally:
        stop.set()
    pr.finish()
    k.check()
    assert k.stats()["resident"] <= k.memlimit
    for n, (p, a) in enumerate(zip(procs, addrs)):
        want = (np.arange(12 * M // 8, dtype=np.uint64) ^ np.uint64((10 + n) << 40)).tobytes()
        assert p.read(a, 12 * M) == want, n
    q.exit()
    for p in procs:
        p.exit()
    k.check()
    assert slots_balanced(k) and no_user_slots(k)


def test_shared_fork_and_a_second_process_then_close_then_exits_free_everything(k):
    """The object mapped MAP_SHARED by a process, its fork child (shared
    inheritance) and an unrelated process; the window closes; each reads
    the kept bytes and writes through to the others; as they exit one by
    one the pages stay until the last, then every frame and slot is freed."""
    w = k.window(16 * M)
    obj = w.obj
    p = k.spawn()
    a = p.mmap(16 * M, flags=MAP_SHARED, obj=obj)
    c = p.fork()
    r = k.spawn()
    b = r.mmap(16 * M, flags=MAP_SHARED, obj=obj)
    fill_window(w, 7)
    w.close()
    k.check()
    want = (np.arange(16 * M // 8, dtype=np.uint64) ^ np.uint64(7 << 40)).tobytes()
    assert c.read(a, 16 * M) == want
    c.write(a + 5 * P, b"child")
    assert p.read(a + 5 * P, 5) == b"child" and r.read(b + 5 * P, 5) == b"child"
    p.exit()
    k.check()
    assert r.read(b, 5 * P) == want[:5 * P]
    c.exit()
    k.check()
    assert r.read(b + 6 * P, 10 * M) == want[6 * P:6 * P + 10 * M]
    assert obj.id in {o.id for o in k.objects()}
    r.exit()
    k.check()
    assert obj.id not in {o.id for o in k.objects()}
    assert slots_balanced(k) and no_user_slots(k)


def test_close_with_swap_full_keeps_everything():
    """Swap filled to the last slot by another process: the close needs no
    new slot (the window's own move to the object) and keeps every byte;
    exits free all of it."""
    with rumpvm.Kernel(memlimit="4M", swap="8M", oom_timeout=0.3) as k:
        w = k.window(4 * M)
        p = k.spawn()
        a = p.mmap(4 * M, flags=MAP_SHARED, obj=w.obj)
        fill_window(w, 9)
        q = k.spawn()
        b = q.mmap(16 * M)
        with pytest.raises(OutOfMemory):
            for i in range(16 * M // P):
                q.write(b + i * P, bytes([i % 251 + 1]) * P)
        s = k.stats()
        assert s["swpginuse"] == s["swpages"]
        w.close()
        k.check()
        assert k.stats()["resident"] <= k.memlimit
        q.exit()
        assert p.read(a, 4 * M) == (np.arange(4 * M // 8, dtype=np.uint64) ^ np.uint64(9 << 40)).tobytes()
        assert slots_balanced(k)
        p.exit()
        k.check()
        assert slots_balanced(k) and no_user_slots(k)


def test_handle_only_holder_keeps_then_detach_frees(k):
    """Only a create_object handle holds the object: the close keeps the
    bytes (peekable, mappable afterwards); dropping the handle frees them."""
    obj = k.create_object(16 * M)
    w = k.window(16 * M, obj=obj)
    fill_window(w, 4)
    w.close()
    k.check()
    assert k.object_peek(obj.id, 123 * P, P) == page_of(123, 4)
    p = k.spawn()
    a = p.mmap(16 * M, flags=MAP_SHARED, obj=obj)
    assert p.read(a + 3000 * P, P) == page_of(3000, 4)
    p.exit()
    assert k.object_peek(obj.id, 4000 * P, P) == page_of(4000, 4)
    k.detach_object(obj)
    k.check()
    assert obj.id not in {o.id for o in k.objects()}
    assert slots_balanced(k) and no_user_slots(k)


def test_writes_and_reads_across_the_window_boundary_before_and_after_the_close(k):
    """One p.write spanning ordinary pages and window pages of the same
    object (fault-ahead must not make rumpvm pages in the window's range),
    then the close, then readinto across the same boundary: the bytes are
    where they were written, on both sides."""
    obj = k.create_object(8 * M)
    p = k.spawn()
    a = p.mmap(8 * M, flags=MAP_SHARED, obj=obj)
    k.detach_object(obj)
    w = k.window(2 * M, obj=obj, offset=3 * M)
    data = bytes(random.Random(8).randbytes(4 * M - 300))
    p.write(a + 2 * M + 100, data)
    k.check()
    assert bytes(w[:M - 100]) == data[M - 100:2 * M - 200]
    w.close()
    k.check()
    buf = bytearray(4 * M)
    p.readinto(a + 2 * M, buf)
    assert bytes(buf) == bytes(100) + data + bytes(200)
    p.exit()
    k.check()
    assert slots_balanced(k) and no_user_slots(k)


def test_unheld_window_close_frees_everything(k):
    """Nobody else holds the object: it dies with the window, with all its
    slots and budget."""
    w = k.window(32 * M)
    fill_window(w, 1)
    w.close()
    k.check()
    s = k.stats()
    settle(k)
    assert s["windows"] == 0 and slots_balanced(k) and no_user_slots(k)
    assert {o.id for o in k.objects()} <= {1}  # the kernel object alone


@pytest.mark.timeout(60)
def test_kernel_close_with_kept_windows_leaves_no_thread_or_descriptor():
    """k.close() with windows whose objects processes map (the keeping
    path): no engine thread, descriptor or swap file left behind."""
    run_script("""
        import os, gc, faulthandler
        import numpy as np, rumpvm
        faulthandler.dump_traceback_later(12, exit=True)
        tasks, fds = len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            k = rumpvm.Kernel(memlimit="8M", swap="64M")
            ws = [k.window(8 << 20) for _ in range(2)]
            for w in ws:
                p = k.spawn()
                p.mmap(8 << 20, flags=rumpvm.MAP_SHARED, obj=w.obj)
                np.frombuffer(w, dtype=np.uint64)[:] = 7
            k.close()
            for w in ws:
                w.close()
            del ws, w, p
            gc.collect()
        assert len(os.listdir("/proc/self/task")) == tasks, os.listdir("/proc/self/task")
        assert len(os.listdir("/proc/self/fd")) == fds, os.listdir("/proc/self/fd")
        print("OK")
    """)


# -- 1. bugs found ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_close_keeping_after_the_host_discarded_a_page_does_not_hang():
    """README: a page the host discards (MADV_DONTNEED) faults again as a
    zero page.  Closing the window while a process maps its object must
    finish and keep the other pages."""
    run_script("""
        import mmap, rumpvm
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        w = k.window(1 << 20)
        p = k.spawn()
        a = p.mmap(1 << 20, flags=rumpvm.MAP_SHARED, obj=w.obj)
        w[:8] = b"discard!"
        w[4096:4104] = b"keepthis"
        w.madvise(mmap.MADV_DONTNEED, 0, 4096)
        w.close()
        assert p.read(a + 4096, 8) == b"keepthis"
        assert p.read(a, 8) in (bytes(8), b"discard!")
        k.check()
        k.close()
        print("OK")
    """, timeout=6)


@pytest.mark.timeout(60)
def test_peek_of_a_page_the_host_discarded_does_not_hang():
    run_script("""
        import mmap, rumpvm
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        w = k.window(1 << 20)
        w[:8] = b"discard!"
        w.madvise(mmap.MADV_DONTNEED, 0, 4096)
        assert k.object_peek(w.obj.id, 0, 8) in (bytes(8), b"discard!")
        w.close()
        k.close()
        print("OK")
    """, timeout=6)


@pytest.mark.timeout(60)
def test_a_second_close_during_a_keeping_close_loses_nothing():
    """Thread A closes the window (a process maps its object) and is held
    while it waits for the budget thread; thread B closes the same window:
    B returns only when A is done, and the process reads what the window
    held."""
    run_script("""
        import faulthandler, threading
        import rumpvm
        from rumpvm import window as W
        faulthandler.enable()
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        w = k.window(1 << 20)
        p = k.spawn()
        a = p.mmap(1 << 20, flags=rumpvm.MAP_SHARED, obj=w.obj)
        w[:8] = b"ABCDEFGH"
        run, parked, go = park_at(W._finish_close, "w._thread.join()")
        t = threading.Thread(target=run, args=(w.close,))
        t.start()
        assert parked.wait(10)
        second = threading.Thread(target=w.close)
        second.start()
        go.set()
        for th in (t, second):
            th.join(10)
            assert not th.is_alive()
        assert p.read(a, 8) == b"ABCDEFGH", p.read(a, 8)
        k.check()
        k.close()
        print("OK")
    """, timeout=10)


@pytest.mark.timeout(60)
def test_a_second_close_never_overwrites_memory_the_program_mapped_since():
    """When a second close returns, the window's address range is the
    program's: nothing of either close touches what it maps there later."""
    run_script("""
        import ctypes, mmap, threading
        import rumpvm
        from rumpvm import window as W
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        MAP_FIXED_NOREPLACE = 0x100000
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        w = k.window(1 << 20)
        w[:8] = b"ABCDEFGH"
        base = w.address
        run, parked, go = park_at(W._finish_close, "w._thread.join()")
        t = threading.Thread(target=run, args=(w.close,))
        t.start()
        assert parked.wait(10)
        second = threading.Thread(target=w.close)
        second.start()
        go.set()
        for th in (t, second):
            th.join(10)
            assert not th.is_alive()
        got = libc.mmap(base, 1 << 20, mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        assert got == base, (hex(got or 0), hex(base))  # the address is the program's now
        ctypes.memset(base, 0x77, 1 << 20)
        k.close()
        assert ctypes.string_at(base, 1 << 20) == b"\\x77" * (1 << 20), "the program's memory was overwritten"
        print("OK")
    """, timeout=10)


@pytest.mark.timeout(60)
def test_window_close_racing_kernel_close_leaks_no_engine():
    """A window close held between its two steps while the kernel closes:
    the kernel's close waits for it, and afterwards no engine thread or
    descriptor is left."""
    run_script("""
        import gc, os, threading
        import rumpvm
        from rumpvm import window as W
        tasks, fds = len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        w = k.window(1 << 20)
        p = k.spawn()
        p.mmap(1 << 20, flags=rumpvm.MAP_SHARED, obj=w.obj)
        w[:8] = b"ABCDEFGH"
        run, parked, go = park_at(W._finish_close, "w._thread.join()")
        errs = []
        def closer():
            try:
                run(w.close)
            except rumpvm.VMError as e:
                errs.append(e)
        t = threading.Thread(target=closer)
        t.start()
        assert parked.wait(10)
        kc = threading.Thread(target=k.close)
        kc.start()
        go.set()
        for th in (t, kc):
            th.join(10)
            assert not th.is_alive()
        assert not errs, errs
        assert k.closed
        del w, p, k
        gc.collect()
        assert len(os.listdir("/proc/self/task")) == tasks, "engine thread left"
        assert len(os.listdir("/proc/self/fd")) == fds, "descriptors left"
        print("OK")
    """, timeout=10)


@pytest.mark.timeout(60)
def test_close_while_the_limit_is_being_lowered_keeps_the_resident_pages():
    """A limit change waits for the pagedaemon (here on a slow swap write);
    the window closes meanwhile.  Its pages must survive."""
    k = rumpvm.Kernel(memlimit="8M", swap="64M", oom_timeout=JOIN)
    try:
        q = k.spawn()
        b = q.mmap(4 * M)
        for i in range(1024):
            q.write(b + i * P, bytes([i % 251 + 1]) * P)
        w = k.window(M)
        p = k.spawn()
        a = p.mmap(M, flags=MAP_SHARED, obj=w.obj)
        w[:] = b"\x5a" * M
        f = hypercall.arm("swap_write_delay", count=1)
        lower = Worker(setattr, k, "memlimit", "3M")
        lower.start()
        try:
            assert f.wait(1, JOIN), "no pageout started"
            w.close()
        finally:
            hypercall.disarm()
        got = p.read(a, M)
        lost = [i for i in range(256) if got[i * P:(i + 1) * P] != b"\x5a" * P]
        assert lost == [], f"{len(lost)} of 256 pages lost"
        lower.finish()
        k.check()
        assert k.stats()["resident"] <= k.memlimit
    finally:
        hypercall.disarm()
        k.close()


@pytest.mark.parametrize("how", ["munmap", "exit"])
def test_close_keeps_for_a_process_after_the_host_mapping_went(k, how):
    w = k.window(M)
    p = k.spawn()
    a = p.mmap(M, flags=MAP_SHARED, obj=w.obj)
    w[:8] = b"ABCDEFGH"
    host = next(q for q in k.procs() if q.name == "host")
    if how == "exit":
        host.exit()
    else:
        (e,) = host.maps()
        host.munmap(e.start, e.end - e.start)
    assert p.read(a, 8) == b"ABCDEFGH"  # the process still sees the window
    w.close()
    assert p.read(a, 8) == b"ABCDEFGH"


def test_copy_on_write_inheritance_of_a_window_object_is_refused(k):
    """A forked copy-on-write view of host memory is not offered (a window's
    pages are not rumpvm pages a shadow could find): minherit(INHERIT_COPY)
    over a window's object is EINVAL and changes nothing, and a window is
    not opened over an object already mapped with copy inheritance."""
    w = k.window(M)
    p = k.spawn()
    a = p.mmap(M, flags=MAP_SHARED, obj=w.obj)
    w[:16] = b"ABCDEFGHIJKLMNOP"
    before = p.maps()
    with pytest.raises(VMError) as e:
        p.minherit(a, M, INHERIT_COPY)
    assert e.value.errno == errno.EINVAL
    assert p.maps() == before
    c = p.fork()  # shares the object, as MAP_SHARED inherits
    assert c.read(a, 16) == b"ABCDEFGHIJKLMNOP"
    w.close()
    assert c.read(a, 16) == p.read(a, 16) == b"ABCDEFGHIJKLMNOP"
    obj = k.create_object(M)
    q = k.spawn()
    b = q.mmap(M, flags=MAP_SHARED, obj=obj)
    q.minherit(b, M, INHERIT_COPY)
    with pytest.raises(VMError) as e:
        k.window(M, obj=obj)
    assert e.value.errno == errno.EBUSY
    k.detach_object(obj)
    k.check()


# == 2. fault-ahead pages left unzeroed for a long write =========================================


def _old_process_leaves(k, npages: int, marker: bytes) -> None:
    """A process fills frames with `marker` and exits: they are recycled
    without being cleared."""
    old = k.spawn()
    b = old.mmap(npages * P)
    old.write(b, marker * (npages * P // len(marker)))
    old.exit()


def _interrupt_in_fault_ahead(nth: int):
    """A trace function raising KeyboardInterrupt at the nth line event
    inside fault_ahead (a Ctrl-C landing there)."""
    seen = [0]

    def local(frame, event, arg):
        if event == "line":
            seen[0] += 1
            if seen[0] == nth:
                raise KeyboardInterrupt
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is fault.fault_ahead.__code__ else None

    return tracer, seen


def test_ctrl_c_anywhere_inside_fault_ahead_never_shows_a_recycled_frame():
    bad = {}
    with rumpvm.Kernel(memlimit="unlimited") as k:
        for nth in range(1, 60):
            _old_process_leaves(k, 32, b"SECRET!!")
            p = k.spawn()
            a = p.mmap(32 * P)
            tracer, seen = _interrupt_in_fault_ahead(nth)
            sys.settrace(tracer)
            try:
                p.write(a + 100, b"x" * (24 * P))
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
            if seen[0] < nth:
                break  # past the last line of fault_ahead
            data = p.read(a, 32 * P)
            if not set(data) <= {0, ord("x")}:
                bad[nth] = [i for i in range(32) if b"SECRET" in data[i * P:(i + 1) * P]]
            k.check()
            p.exit()
    assert bad == {}, f"line events (nth) after which pages showed a recycled frame: {bad}"


def test_short_write_out_of_memory_shows_written_bytes_then_zeros_never_a_recycled_frame():
    """No swap, a long write past free memory: OutOfMemory with .written;
    the bytes before it are the new ones, the rest zeros (fresh memory),
    never what the exited process left in the frames."""
    with rumpvm.Kernel(memlimit="1M", oom_timeout=0.2) as k:
        _old_process_leaves(k, 160, b"OLDBYTES")
        p = k.spawn()
        n = 512
        a = p.mmap(n * P)
        data = bytes(range(1, 256)) * (n * P // 255) + b"\x01" * (n * P % 255)
        with pytest.raises(OutOfMemory) as ei:
            p.write(a + 100, data[:n * P - 100])
        done = ei.value.written
        assert done is not None and 0 < done < n * P - 100
        got = p.read(a, n * P)
        assert got[:100] == bytes(100)
        assert got[100:100 + done] == data[:done]
        assert got[100 + done:] == bytes(n * P - 100 - done)
        k.check()


def test_long_writes_under_paging_never_show_a_recycled_frame():
    """Long unaligned writes through a shared mapping under a tight limit
    with swap (direct reclaim between runs, fault-ahead on every run),
    frames recycled from an exited process each time: every page reads the
    written bytes or zeros, through the writer and another process."""
    with rumpvm.Kernel(memlimit="2M", swap="32M") as k:
        obj = k.create_object(8 * M)
        r = k.spawn()
        rb = r.mmap(8 * M, flags=MAP_SHARED, obj=obj)
        k.detach_object(obj)
        rng = random.Random(11)
        model = bytearray(8 * M)
        for rnd in range(6):
            _old_process_leaves(k, 256, b"RECYCLD!")
            p = k.spawn()
            a = p.mmap(8 * M, flags=MAP_SHARED, obj=obj)
            off = rng.randrange(0, 2 * M)
            n = rng.randrange(M, 5 * M)
            chunk = bytes([rnd + 1]) * n
            p.write(a + off, chunk)
            model[off:off + n] = chunk
            p.exit()
            got = r.read(rb, 8 * M)
            assert b"RECYCLD!" not in got
            assert got == model, rnd
        k.check()
        r.exit()
        k.check()
        assert slots_balanced(k) and no_user_slots(k)


# == 3. the four-lane swap checksum ===============================================================


RV_P1 = 0x9E3779B185EBCA87
RV_P2 = 0xC2B2AE3D27D4EB4F
RV_P3 = 0x165667B19E3779F9
MASK = (1 << 64) - 1


def test_checksum_has_no_collision_on_structured_pages():
    """Pages a swap file can plausibly hold by mistake — zero pages with
    one word set (to small numbers, powers of two, the hash's own
    constants and the lanes' initial values), pages differing by a swapped
    pair of words in the same or neighbouring lanes or whole 32-byte
    groups, shifted copies, lane-rotated copies, pages repeating one
    word: all get distinct checksums (a 64-bit checksum with no structural
    weakness has no collision among a few hundred thousand)."""
    cs = hypercall.checksum_buffer
    seen: dict[int, tuple[bytes, str]] = {}

    def add(page: bytes, name: str) -> None:
        assert len(page) == P
        h = cs(page)
        digest = hashlib.blake2b(page, digest_size=16).digest()
        other = seen.setdefault(h, (digest, name))
        assert other[0] == digest, f"checksum collision: {other[1]} and {name}"  # same page built twice is fine

    zero = np.zeros(P // 8, dtype=np.uint64)
    add(zero.tobytes(), "zero")
    consts = [RV_P1, RV_P2, RV_P3, (RV_P1 + RV_P2) & MASK, (-RV_P1) & MASK, 0x85EBCA77C2B2AE63,
              (-RV_P2) & MASK, pow(RV_P2, -1, 1 << 64), pow(RV_P1, -1, 1 << 64), MASK, 1 << 63]
    values = sorted({*range(1, 17), *(1 << b for b in range(64)), *consts})
    for i in range(P // 8):
        for v in values:
            page = zero.copy()
            page[i] = v
            add(page.tobytes(), f"word {i} = {v:#x}")
    rng = np.random.default_rng(3)
    base = rng.integers(0, 1 << 63, size=P // 8, dtype=np.uint64)
    add(base.tobytes(), "random")
    for i in range(P // 8):
        for d in (1, 2, 3, 4, 5, 8, 64):
            j = (i + d) % (P // 8)
            page = base.copy()
            page[i], page[j] = base[j], base[i]
            add(page.tobytes(), f"swap {i},{j}")
    groups = base.reshape(-1, 4)
    for g in range(1, len(groups)):
        page = groups.copy()
        page[[0, g]] = page[[g, 0]]
        add(page.tobytes(), f"group 0<->{g}")
    for s in range(1, 64):
        add(np.roll(base, s).tobytes(), f"roll {s}")
        add(np.roll(groups, s, axis=1).tobytes() if s < 4 else np.roll(groups, s, axis=0).tobytes(),
            f"lane/group roll {s}")
    for v in values:
        add(np.full(P // 8, v, dtype=np.uint64).tobytes(), f"all {v:#x}")
    # Same value in two lanes' words, different places (sums of rotated lanes could cancel).
    for i in range(0, 64):
        for j in range(i + 1, 64):
            page = zero.copy()
            page[i] = page[j] = 0xDEADBEEF
            add(page.tobytes(), f"pair {i},{j}")
