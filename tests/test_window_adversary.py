"""Adversarial tests for host windows (rumpvm/window.py, hypercall/uffd.c):
hostile sequences (close while faulting, many windows, limit changes,
caller objects, processes, no swap, full swap, gc, stale views, bad
arguments).  Scenarios that may hang the interpreter run in a subprocess
with a timeout, so a hang fails the test instead of the run."""

from __future__ import annotations

import errno
import gc
import mmap
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from test_window import assert_err, no_window_slots, u64

import rumpvm

PAGE = 4096
LIMIT = 8 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOIN = 30  # seconds: a thread not done by then is a hang


@pytest.fixture
def k(window_kernel):
    return window_kernel



def run_threads(targets, timeout: float = JOIN) -> list[BaseException]:
    """Start one thread per callable, join them all; a thread still alive
    after `timeout` fails the test (a hang).  Returns the errors raised."""
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # reported by the caller
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "thread hung"
    return errors


def run_script(src: str, timeout: float = 15) -> subprocess.CompletedProcess:
    """Run `src` in a fresh interpreter; a hang (timeout) fails the test."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(src)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"subprocess hung (> {timeout}s)")
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert r.stdout.strip().endswith("OK"), r.stdout[-2000:]
    return r


# -- close while faulting ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_close_while_numpy_threads_fault():
    """Threads fault through numpy (GIL released) while the window closes:
    none hangs, and after the close they read zeros."""
    run_script("""
        import threading, faulthandler
        import numpy as np, rumpvm
        faulthandler.dump_traceback_later(14, exit=True)
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        for _ in range(5):
            w = k.window(32 << 20)
            a = np.frombuffer(w, dtype=np.uint8)
            a[::4096] = 1
            started = threading.Barrier(5)
            closed = threading.Event()
            bad = []
            def reader(t, a=a):
                started.wait(30)
                n = len(a) // 4
                while not closed.is_set():
                    int(a[t * n:(t + 1) * n].sum())
                if a.any():
                    bad.append(t)
            ts = [threading.Thread(target=reader, args=(t,), daemon=True) for t in range(4)]
            for t in ts:
                t.start()
            started.wait(30)
            w.close()
            closed.set()
            for t in ts:
                t.join(10)
                assert not t.is_alive(), "reader hung"
            assert not bad, bad
            del a
        k.check()
        s = k.stats()
        assert s["windows"] == 0 and s["swpginuse"] == sum(o.swapped for o in k.objects())
        k.close()
        print("OK")
    """, timeout=20)


@pytest.mark.timeout(60)
def test_close_while_memoryview_threads_fault():
    run_script("""
        import threading, faulthandler
        import rumpvm
        faulthandler.dump_traceback_later(12, exit=True)
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        for rnd in range(25):
            w = k.window(16 << 20)
            mv = memoryview(w)
            stop = threading.Event()
            def worker(t, mv=mv, stop=stop):
                i = t * 4096 * 7
                while not stop.is_set():
                    assert mv[i % (16 << 20)] == 0
                    i += 4096 * 13
            ts = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(4)]
            for t in ts:
                t.start()
            while w.stats()["zerofills"] < 200:
                pass
            w.close()
            stop.set()
            for t in ts:
                t.join(10)
                assert not t.is_alive()
            mv.release()
        k.check()
        k.close()
        print("OK")
    """, timeout=20)


@pytest.mark.timeout(60)
def test_close_keeping_a_shared_object_while_threads_hold_the_gil_and_fault():
    """The close that hands a window's pages to a process mapping its
    object stops the engine while Python threads fault on the window with
    the GIL held (memoryview reads) and a process reads the object: nobody
    hangs, the process reads EBADF or the right bytes during the close and
    only the right bytes after it."""
    run_script("""
        import errno, threading, faulthandler
        import rumpvm
        faulthandler.dump_traceback_later(14, exit=True)
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        size = 16 << 20
        for rnd in range(8):
            w = k.window(size)
            p = k.spawn()
            a = p.mmap(size, flags=rumpvm.MAP_SHARED, obj=w.obj)
            for pg in range(0, size // 4096, 7):
                w[pg * 4096:pg * 4096 + 8] = (pg + rnd).to_bytes(8, "little")
            mv = memoryview(w)
            stop = threading.Event()
            bad = []
            def toucher(t, mv=mv, stop=stop):
                i = t * 4096 * 5
                while not stop.is_set():
                    mv[i % size]  # a fault with the GIL held
                    i += 4096 * 11
            def process_reader(p=p, a=a, stop=stop, rnd=rnd):
                while not stop.is_set():
                    try:
                        got = p.read(a + 7 * 4096 * 3, 8)
                    except rumpvm.VMError as e:
                        if e.errno != errno.EBADF:
                            bad.append(repr(e))
                        continue
                    if got != (21 + rnd).to_bytes(8, "little"):
                        bad.append(got)
            ts = [threading.Thread(target=toucher, args=(t,), daemon=True) for t in range(3)]
            ts.append(threading.Thread(target=process_reader, daemon=True))
            for t in ts:
                t.start()
            w.close()
            stop.set()
            for t in ts:
                t.join(10)
                assert not t.is_alive(), "a thread hung"
            assert not bad, bad[:3]
            for pg in range(0, size // 4096, 7):
                assert p.read(a + pg * 4096, 8) == (pg + rnd).to_bytes(8, "little"), (rnd, pg)
            mv.release()
            p.exit()
            k.check()
        k.close()
        print("OK")
    """, timeout=30)


@pytest.mark.timeout(60)
def test_kernel_close_while_numpy_threads_fault():
    kern = rumpvm.Kernel(memlimit="8M", swap="64M")
    w = kern.window(4 * LIMIT)
    a = np.frombuffer(w, dtype=np.uint64)
    a[:] = 3
    started = threading.Barrier(4)
    closed = threading.Event()

    def reader(t: int) -> None:
        started.wait(JOIN)
        n = len(a) // 3
        while not closed.is_set():
            int(a[t * n:(t + 1) * n].sum())
        assert not a.any()

    def closer() -> None:
        started.wait(JOIN)
        kern.close()
        closed.set()

    errors = run_threads([*(lambda t=t: reader(t) for t in range(3)), closer])
    assert not errors, errors
    assert kern.closed
    for getter in (lambda: w.address, lambda: w.obj, w.stats):
        with pytest.raises(rumpvm.VMError) as e:
            getter()
        assert_err(e, errno.EBADF)
    kern.close()  # a second k.close() too
    a[:] = 9  # plain memory now
    assert int(a[:2].sum()) == 18


@pytest.mark.timeout(60)
def test_window_close_after_kernel_close():
    kern = rumpvm.Kernel(memlimit="8M", swap="16M")
    w = kern.window(1 << 20)
    kern.close()
    w.close()


@pytest.mark.timeout(60)
def test_close_from_two_threads_and_twice(k):
    base = k.stats()["swpginuse"]
    for _ in range(10):
        w = k.window(2 * LIMIT)
        u64(w)[::512] = 7
        barrier = threading.Barrier(2)

        def close(w=w, barrier=barrier) -> None:
            barrier.wait(JOIN)
            w.close()
            w.close()

        errors = run_threads([close, close])
        assert not errors, errors
        with pytest.raises(rumpvm.VMError) as e:
            w.stats()
        assert_err(e, errno.EBADF)
        k.check()
    s = k.stats()
    assert s["windows"] == 0 and s["swpginuse"] == base


# -- many windows, the limit ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_many_windows_concurrently_bounded():
    with rumpvm.Kernel(memlimit="8M", swap="160M") as kern:
        ws = [kern.window(2 * LIMIT) for _ in range(8)]
        arrays = [u64(w) for w in ws]
        go = threading.Barrier(len(ws) + 1)
        done = threading.Event()
        over: list[int] = []

        def worker(i: int, arrays=arrays) -> None:
            a = arrays[i]
            go.wait(JOIN)
            ref = np.arange(len(a), dtype=np.uint64) * np.uint64(i + 1)
            a[:] = ref
            a[::-1].sort()  # ascending already: sort the reversed view, then restore
            a[:] = a[::-1].copy()
            if not np.array_equal(a, ref):
                raise AssertionError(f"window {i}: data differ")

        def sampler() -> None:
            go.wait(JOIN)
            while not done.is_set():
                r = kern.stats()["resident"]
                if r > kern.memlimit:
                    over.append(r)

        samp = threading.Thread(target=sampler, daemon=True)
        samp.start()
        errors = run_threads([lambda i=i: worker(i) for i in range(len(ws))])
        done.set()
        samp.join(JOIN)
        assert not samp.is_alive()
        assert not errors, errors
        assert not over, over[:5]
        for i, a in enumerate(arrays):
            ref = np.arange(len(a), dtype=np.uint64) * np.uint64(i + 1)
            assert np.array_equal(a, ref), i
        for w in ws:
            s = w.stats()
            assert s["resident"] <= s["budget"] and s["errors"] == 0
        kern.check()
        del arrays, a
        for w in ws:
            w.close()
        kern.check()
        assert no_window_slots(kern)


@pytest.mark.timeout(60)
def test_lower_memlimit_while_window_busy(k):
    w = k.window(4 * LIMIT)
    a = u64(w)
    ref = np.arange(len(a), dtype=np.uint64) ^ np.uint64(0x5555)
    a[:] = ref
    go = threading.Barrier(2)
    stop = threading.Event()

    def churn(a=a) -> None:
        go.wait(JOIN)
        rnd = 0
        while not stop.is_set():
            if not np.array_equal(a, ref):
                raise AssertionError(f"round {rnd}: data differ")
            rnd += 1

    def lower() -> None:
        go.wait(JOIN)
        try:
            for lim in ("6M", "4M", "3M", "8M", "2M"):
                k.memlimit = lim
                assert k.stats()["resident"] <= k.memlimit
        finally:
            stop.set()

    errors = run_threads([churn, lower])
    assert not errors, errors
    assert k.memlimit == 2 << 20
    assert k.stats()["resident"] <= k.memlimit
    assert np.array_equal(a, ref)
    assert w.stats()["resident"] <= w.stats()["budget"]
    k.check()
    k.memlimit = "8M"
    del a
    w.close()


# -- objects given by the caller ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_caller_object_offset_and_busy_cases(k):
    o = k.create_object(64 * PAGE)
    # A page outside the window's range may be written before.
    p = k.spawn()
    va = p.mmap(64 * PAGE, flags=rumpvm.MAP_SHARED, obj=o)
    p.write(va + 2 * PAGE, b"outside")
    with pytest.raises(rumpvm.VMError) as e:  # page 2 is in the range
        k.window(16 * PAGE, obj=o, offset=0)
    assert_err(e, errno.EBUSY)
    with pytest.raises(rumpvm.VMError) as e:  # beyond the object
        k.window(16 * PAGE, obj=o, offset=56 * PAGE)
    assert_err(e, errno.EINVAL)
    for off in (-PAGE, PAGE + 1):
        with pytest.raises(rumpvm.VMError) as e:
            k.window(16 * PAGE, obj=o, offset=off)
        assert_err(e, errno.EINVAL)
    w = k.window(32 * PAGE, obj=o, offset=16 * PAGE)
    assert w.obj is o
    with pytest.raises(rumpvm.VMError) as e:  # a second window on it, even elsewhere
        k.window(8 * PAGE, obj=o, offset=48 * PAGE)
    assert_err(e, errno.EBUSY)
    w[:7] = b"inside!"
    w[len(w) - 3:] = b"end"
    assert p.read(va + 16 * PAGE, 7) == b"inside!"
    assert p.read(va + 48 * PAGE - 3, 3) == b"end"
    # A read across the window's edges: rumpvm pages on both sides.
    p.write(va + 16 * PAGE - 4, b"abcdefgh")
    p.write(va + 48 * PAGE - 2, b"XYZW")
    assert bytes(w[:4]) == b"efgh" and bytes(w[len(w) - 2:]) == b"XY"
    assert p.read(va + 2 * PAGE, 7) == b"outside"
    assert p.read(va + 16 * PAGE - 4, 8) == b"abcdefgh"
    assert k.object_peek(o.id, 48 * PAGE - 2, 4) == b"XYZW"
    k.check()
    w.close()
    # The object survives the window (the caller and p hold it); the
    # window's bytes are... whatever the object now says, but it is whole.
    assert p.read(va + 2 * PAGE, 7) == b"outside"
    k.check()
    p.exit()
    k.detach_object(o)
    k.check()


@pytest.mark.timeout(60)
def test_object_states_refused(k):
    o = k.create_object(16 * PAGE)
    k.object_write(o.id, 0, b"x")  # a page already written
    with pytest.raises(rumpvm.VMError) as e:
        k.window(16 * PAGE, obj=o)
    assert_err(e, errno.EBUSY)
    k.detach_object(o)
    with pytest.raises(rumpvm.VMError) as e:  # freed now
        k.window(16 * PAGE, obj=o)
    assert_err(e, errno.EINVAL)
    o2 = k.create_object(16 * PAGE)
    p = k.spawn()
    p.mmap(16 * PAGE, flags=rumpvm.MAP_PRIVATE, obj=o2)
    with pytest.raises(rumpvm.VMError) as e:
        k.window(16 * PAGE, obj=o2)
    assert_err(e, errno.EBUSY)
    p.exit()
    k.detach_object(o2)
    for bad in (42, "obj", object(), 1.5):
        with pytest.raises(TypeError):
            k.window(PAGE, obj=bad)
    assert k.stats()["windows"] == 0 and no_window_slots(k)
    k.check()


@pytest.mark.timeout(60)
def test_caller_detaches_object_while_window_open(k):
    o = k.create_object(LIMIT)
    w = k.window(LIMIT, obj=o)
    k.detach_object(o)  # the window still holds it
    w[:3] = b"abc"
    assert k.object_peek(o.id, 0, 3) == b"abc"
    k.check()
    oid = o.id
    w.close()
    assert oid not in [x.id for x in k.objects()]
    k.check()


# -- processes ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_processes_fork_exit_write_with_host(k):
    w = k.window(4 * LIMIT)
    a = u64(w)
    n = len(a)
    parent = k.spawn()
    va = parent.mmap(len(w), flags=rumpvm.MAP_SHARED, obj=w.obj)
    kids = [parent.fork() for _ in range(3)]
    ref = np.zeros(n, dtype=np.uint64)
    go = threading.Barrier(2)

    def host(a=a) -> None:  # the host writes the even pages
        go.wait(JOIN)
        for pg in range(0, n * 8 // PAGE, 2):
            a[pg * 512:(pg + 1) * 512] = pg + 1

    def procs() -> None:  # the processes write the odd ones, then one exits
        go.wait(JOIN)
        for pg in range(1, n * 8 // PAGE, 2):
            q = kids[pg % 3] if pg % 5 else parent
            q.write(va + pg * PAGE, np.full(512, pg + 1, dtype=np.uint64).tobytes())
        kids[0].exit()

    errors = run_threads([host, procs])
    assert not errors, errors
    for pg in range(n * 8 // PAGE):
        ref[pg * 512:(pg + 1) * 512] = pg + 1
    assert np.array_equal(a, ref)
    for q in (parent, kids[1], kids[2]):
        for pg in (0, 1, 2047, 4095, 8191):
            assert q.read(va + pg * PAGE, 8) == int(pg + 1).to_bytes(8, "little")
    grand = kids[1].fork()
    grand.write(va + 5 * PAGE, b"grandchild")
    assert bytes(w[5 * PAGE:5 * PAGE + 10]) == b"grandchild"
    k.check()
    for q in (grand, kids[1], kids[2], parent):
        q.exit()
    assert int(a[1]) == 1  # the window still works alone
    k.check()
    del a
    w.close()
    k.check()
    assert no_window_slots(k)


# -- no swap, full swap -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_no_swap_window():
    with rumpvm.Kernel(memlimit="8M") as kern:
        for length in (LIMIT + PAGE, 2 * LIMIT):
            with pytest.raises(rumpvm.VMError) as e:
                kern.window(length)
            assert_err(e, errno.ENOMEM)
        w = kern.window(LIMIT // 2)
        a = u64(w)
        a[:] = np.arange(len(a), dtype=np.uint64)
        assert np.array_equal(a, np.arange(len(a), dtype=np.uint64))
        s = w.stats()
        assert s["evictions"] == 0 and s["errors"] == 0 and s["resident"] == len(a) * 8 // PAGE
        assert kern.stats()["resident"] <= kern.memlimit
        with pytest.raises(rumpvm.VMError) as e:  # the rest cannot hold another half
            kern.window(LIMIT // 2 + 64 * PAGE)
        assert_err(e, errno.ENOMEM)
        kern.check()
        del a
        w.close()
        kern.check()


@pytest.mark.timeout(60)
def test_swap_nearly_full_enomem_nothing_leaked():
    with rumpvm.Kernel(memlimit="8M", swap="16M") as kern:
        w1 = kern.window(12 << 20)
        base = kern.stats()["swpginuse"]
        for length in (8 << 20, 16 << 20, 5 << 20):
            with pytest.raises(rumpvm.VMError) as e:
                kern.window(length)
            assert_err(e, errno.ENOMEM)
            assert kern.stats()["swpginuse"] == base
            assert kern.stats()["windows"] == 1
        w2 = kern.window(4 << 20)  # exactly what is left may still fit
        assert kern.stats()["swpginuse"] == base + (4 << 20) // PAGE
        u64(w1)[:] = 1
        u64(w2)[:] = 2
        assert int(u64(w1).sum()) == (12 << 20) // 8
        kern.check()
        w1.close()
        w2.close()
        assert no_window_slots(kern)
        kern.check()


# -- garbage collection, stale views -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_drop_window_without_close():
    kern = rumpvm.Kernel(memlimit="8M", swap="64M")
    w = kern.window(2 * LIMIT)
    u64(w)[:] = 5
    del w
    gc.collect()
    kern.check()
    t = threading.Thread(target=kern.close, daemon=True)
    t.start()
    t.join(JOIN)
    assert not t.is_alive(), "k.close() hung"
    assert kern.closed


@pytest.mark.timeout(60)
def test_views_after_close_and_kernel_close():
    kern = rumpvm.Kernel(memlimit="8M", swap="64M")
    w1 = kern.window(2 * LIMIT)
    w2 = kern.window(2 * LIMIT)
    a1, a2 = u64(w1), u64(w2)
    a1[:] = 1
    a2[:] = 2
    mv = memoryview(w2)[PAGE:2 * PAGE]
    w1.close()
    assert not a1.any()
    kern.close()
    assert not a2.any() and bytes(mv) == bytes(PAGE)
    del w1, w2
    gc.collect()
    assert not a1.any() and not a2.any()  # the mapping stays while views exist
    a2[:] = 3
    assert int(a2[:4].sum()) == 12
    mv.release()


# -- hostile arguments ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_hostile_arguments(k):
    o = k.create_object(16 * PAGE)
    for length in (1 << 62, (1 << 40) + PAGE, 1 << 64, -(1 << 62)):
        with pytest.raises(rumpvm.VMError) as e:
            k.window(length)
        assert_err(e, errno.EINVAL)
    with pytest.raises(rumpvm.VMError) as e:
        k.window(16 * PAGE, obj=o, offset=1 << 62)
    assert_err(e, errno.EINVAL)
    with pytest.raises(rumpvm.VMError) as e:  # an offset without an object
        k.window(PAGE, offset=PAGE)
    assert_err(e, errno.EINVAL)
    for off in (True, 1.0, "0", None):
        with pytest.raises(TypeError):
            k.window(PAGE, obj=o, offset=off)
    with pytest.raises(TypeError):
        k.window(np.int64(PAGE))  # not an int subclass
    assert k.stats()["windows"] == 0 and no_window_slots(k)
    k.detach_object(o)
    k.check()


@pytest.mark.timeout(60)
def test_max_window_length_is_vmerror(k):
    with pytest.raises(rumpvm.VMError) as e:  # 1 TiB: beyond the swap
        k.window(1 << 40)
    assert_err(e, errno.ENOMEM)
    assert k.stats()["windows"] == 0 and no_window_slots(k)


@pytest.mark.timeout(60)
def test_window_on_closed_kernel():
    kern = rumpvm.Kernel(memlimit="8M", swap="16M")
    o = kern.create_object(PAGE)
    kern.close()
    with pytest.raises(rumpvm.VMError):
        kern.window(PAGE)
    with pytest.raises(rumpvm.VMError):
        kern.window(PAGE, obj=o)


# -- the mmap methods a Window inherits ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_madvise_dontneed_then_touch():
    run_script("""
        import mmap, rumpvm
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        w = k.window(1 << 20)
        w[0:5] = b"hello"
        try:
            w.madvise(mmap.MADV_DONTNEED, 0, 4096)
        except (rumpvm.VMError, TypeError, ValueError, OSError):
            pass
        assert bytes(w[0:5]) in (b"hello", bytes(5))
        k.check()
        k.close()
        print("OK")
    """, timeout=8)


@pytest.mark.timeout(60)
def test_resize_refused_or_coherent():
    run_script("""
        import mmap, numpy as np, rumpvm
        k = rumpvm.Kernel(memlimit="8M", swap="64M")
        w = k.window(16 << 20)
        a = np.frombuffer(w, dtype=np.uint64)
        a[:] = np.arange(a.size, dtype=np.uint64)
        del a
        try:
            w.resize(32 << 20)
        except (rumpvm.VMError, TypeError, ValueError, OSError, SystemError):
            pass
        a = np.frombuffer(w, dtype=np.uint64)[: (16 << 20) // 8]
        assert np.array_equal(a, np.arange(a.size, dtype=np.uint64)), "window data lost"
        del a
        others = [mmap.mmap(-1, 16 << 20) for _ in range(4)]
        for m in others:
            m[:] = b"\\xaa" * len(m)
        w.close()
        assert all(m[:] == b"\\xaa" * len(m) for m in others), "close() clobbered another mapping"
        k.check()
        k.close()
        print("OK")
    """, timeout=15)


@pytest.mark.timeout(60)
def test_inherited_mmap_methods_coherent(k):
    w = k.window(2 * LIMIT)
    u64(w)[:] = 0x0101010101010101
    w.seek(0)
    assert w.read(4) == b"\x01" * 4
    w.seek(len(w) - 4)
    w.write(b"tail")
    assert w.find(b"tail", 0) == len(w) - 4
    w.move(0, len(w) - 4, 4)
    assert bytes(w[:4]) == b"tail"
    w.flush()
    assert k.object_peek(w.obj.id, 0, 4) == b"tail"
    k.check()
    w.close()
    with pytest.raises(rumpvm.VMError):
        _ = w.obj
    assert isinstance(w, mmap.mmap)
