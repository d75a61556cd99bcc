"""Host windows (rumpvm/window.py, hypercall/uffd.c): real host memory,
paged by rumpvm's userfaultfd engine, used from numpy, ctypes, C and
Python over several times the memory limit."""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import rumpvm

PAGE = 4096
LIMIT = 8 << 20
WIN = 4 * LIMIT  # every big window is 4x the memory limit
NPAGES = WIN // PAGE
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def k(window_kernel):
    return window_kernel


def u64(w) -> np.ndarray:
    return np.frombuffer(w, dtype=np.uint64)


def page_pattern(pages: range, salt: int = 0) -> bytes:
    """Each page's bytes: its index (and salt) repeated, as uint64."""
    return b"".join(np.full(PAGE // 8, (p << 8) ^ salt, dtype=np.uint64).tobytes() for p in pages)


def assert_bounded(k, w) -> None:
    ks, ws = k.stats(), w.stats()
    assert ks["resident"] <= k.memlimit, ks
    assert ws["resident"] <= ws["budget"], ws
    assert ks["window_resident"] == ws["resident"]


def no_window_slots(k) -> bool:
    """Every swap slot in use is an object's (windows hold none): a process's
    u-area or pages may be on swap, a closed window's slots may not."""
    return k.stats()["swpginuse"] == sum(o.swapped for o in k.objects())


def assert_err(e: pytest.ExceptionInfo, code: int) -> None:
    assert e.value.errno == code, (e.value.errno, str(e.value))


# -- numpy ---------------------------------------------------------------------------


def test_numpy_fill_sort_gather_scatter(k):
    with k.window(WIN) as w:
        a = u64(w)
        n = len(a)
        assert n == WIN // 8 and len(w) == WIN
        ref = np.arange(n, dtype=np.uint64)
        a[:] = ref
        assert np.array_equal(a, ref)
        assert int(a.sum()) == n * (n - 1) // 2

        a[:] = ref[::-1]  # reversed copy, sorted in place in the window
        a.sort()
        assert np.array_equal(a, ref)

        rng = np.random.default_rng(1)
        idx = rng.choice(n, size=20_000, replace=False)
        vals = rng.integers(0, 1 << 63, size=idx.size, dtype=np.uint64)
        a[idx] = vals
        ref[idx] = vals
        assert np.array_equal(a[idx], vals)
        assert np.array_equal(a, ref)

        for _ in range(300):  # small arrays all over the window
            off = int(rng.integers(0, n - 500))
            m = int(rng.integers(1, 500))
            a[off:off + m] += np.uint64(3)
            ref[off:off + m] += np.uint64(3)
            assert np.array_equal(a[off:off + m], ref[off:off + m])
        assert np.array_equal(a, ref)
        s = w.stats()
        assert s["evictions"] > 0 and s["swapins"] > 0 and s["errors"] == 0
        assert_bounded(k, w)
        del a
    k.check()


# -- memoryview, ctypes, C --------------------------------------------------------------


def test_memoryview_indexing(k):
    with k.window(WIN) as w:
        mv = memoryview(w)
        assert mv.format == "B" and mv.nbytes == WIN
        for p in range(NPAGES):
            mv[p * PAGE + p % PAGE] = (p * 7 + 1) & 0xFF
        for p in range(NPAGES):
            assert mv[p * PAGE + p % PAGE] == (p * 7 + 1) & 0xFF
            assert w[p * PAGE + (p + 1) % PAGE] == 0
        w[5] = 0xAB  # mmap indexing too
        assert mv[5] == 0xAB and w[5] == 0xAB
        assert w.stats()["evictions"] > 0
        assert_bounded(k, w)
        mv.release()
    k.check()


def test_ctypes_memmove(k):
    with k.window(WIN) as w:
        chunk = 64  # pages a memmove
        for first in range(0, NPAGES, chunk):
            src = page_pattern(range(first, first + chunk), salt=0x5A)
            ctypes.memmove(w.address + first * PAGE, src, len(src))
        out = ctypes.create_string_buffer(chunk * PAGE)
        for first in range(0, NPAGES, chunk):
            ctypes.memmove(out, w.address + first * PAGE, chunk * PAGE)
            assert out.raw == page_pattern(range(first, first + chunk), salt=0x5A), first
        assert_bounded(k, w)
    k.check()


C_SRC = r"""
#include <stddef.h>
#include <stdint.h>
void fill(uint64_t *a, size_t n, uint64_t mul) { for (size_t i = 0; i < n; i++) a[i] = i * mul + 1; }
uint64_t sum(const uint64_t *a, size_t n) { uint64_t s = 0; for (size_t i = 0; i < n; i++) s += a[i]; return s; }
"""


def build_c(tmp_path) -> ctypes.CDLL:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    src, lib = tmp_path / "win.c", tmp_path / "lib.so"
    src.write_text(C_SRC)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.fill.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64]
    dll.fill.restype = None
    dll.sum.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    dll.sum.restype = ctypes.c_uint64
    return dll


def test_c_function(k, tmp_path):
    dll = build_c(tmp_path)
    with k.window(WIN) as w:
        n = WIN // 8
        mul = 3
        dll.fill(w.address, n, mul)
        expect = (mul * n * (n - 1) // 2 + n) % (1 << 64)
        assert dll.sum(w.address, n) == expect
        assert dll.sum(w.address, n) == expect  # again, all from swap
        assert int(u64(w)[-1]) == (n - 1) * mul + 1
        s = w.stats()
        assert s["swapins"] > 0 and s["errors"] == 0
        assert_bounded(k, w)
    k.check()


# -- threads, the limit, clean evictions ---------------------------------------------------


def test_threads_own_slices(k):
    nthreads = 4
    with k.window(WIN) as w:
        a = u64(w)
        per = len(a) // nthreads
        errors: list[BaseException] = []
        start = threading.Barrier(nthreads)

        def worker(t: int, s: np.ndarray) -> None:
            try:
                ref = np.arange(per, dtype=np.uint64) * np.uint64(nthreads) + np.uint64(t)
                start.wait()
                for rnd in range(2):
                    s[:] = ref + np.uint64(rnd << 40)
                    if not np.array_equal(s, ref + np.uint64(rnd << 40)):
                        raise AssertionError(f"thread {t} round {rnd}: slice differs")
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t, a[t * per:(t + 1) * per])) for t in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        expect = np.concatenate([np.arange(per, dtype=np.uint64) * np.uint64(nthreads) + np.uint64(t)
                                 for t in range(nthreads)]) + np.uint64(1 << 40)
        assert np.array_equal(a, expect)
        assert_bounded(k, w)
        del a
    k.check()


def test_resident_never_above_limit(k):
    with k.window(WIN) as w:
        a = u64(w)
        step = (256 << 10) // 8
        samples = 0
        for off in range(0, len(a), step):
            a[off:off + step] = off
            ks, ws = k.stats(), w.stats()
            assert ks["resident"] <= k.memlimit, (off, ks["resident"])
            assert ws["resident"] <= ws["budget"], (off, ws)
            samples += 1
        assert samples == WIN // (256 << 10)
        assert k.stats()["window_evictions"] > 0
        del a
    k.check()


def test_clean_pages_evicted_without_write(k):
    with k.window(WIN) as w:
        a = u64(w)
        a[:] = 7
        filled = w.stats()
        assert filled["writes"] > 0
        # The first read pass evicts the pages still dirty from the fill
        # (each written once); from then on every page is clean.
        assert int(a.sum()) == 7 * len(a)
        before = w.stats()
        assert filled["writes"] < before["writes"] <= filled["writes"] + filled["resident"]
        assert before["writes"] == NPAGES  # each page written out exactly once
        for _ in range(2):
            assert int(a.sum()) == 7 * len(a)
        after = w.stats()
        assert after["evictions"] >= before["evictions"] + 2 * (NPAGES - after["budget"])
        assert after["writes"] == before["writes"], (before, after)
        assert after["swapins"] > before["swapins"]
        ks = k.stats()
        assert ks["window_writes"] == after["writes"] and ks["windows"] == 1
        del a
    k.check()


# -- coherence with processes -------------------------------------------------------------


def test_coherence_proc_and_peek(k):
    with k.window(WIN) as w:
        p = k.spawn()
        a = p.mmap(len(w), flags=rumpvm.MAP_SHARED, obj=w.obj)
        arr = u64(w)
        arr[:] = np.arange(len(arr), dtype=np.uint64)  # most pages now on swap
        for pg in (0, 1, NPAGES // 2, NPAGES - 1):
            want = np.arange(pg * PAGE // 8, (pg + 1) * PAGE // 8, dtype=np.uint64).tobytes()
            assert k.object_peek(w.obj.id, pg * PAGE, PAGE) == want
            assert p.read(a + pg * PAGE, PAGE) == want
        # Process writes show in the window, the peek and the other direction.
        for pg in (3, NPAGES // 3, NPAGES - 2):
            data = bytes([pg & 0xFF, 0x11, 0x22]) * 100
            p.write(a + pg * PAGE + 10, data)
            assert bytes(w[pg * PAGE + 10:pg * PAGE + 10 + len(data)]) == data
            assert k.object_peek(w.obj.id, pg * PAGE + 10, len(data)) == data
        w[NPAGES // 4 * PAGE:NPAGES // 4 * PAGE + 5] = b"hello"
        assert p.read(a + NPAGES // 4 * PAGE, 5) == b"hello"
        assert k.object_peek(w.obj.id, NPAGES // 4 * PAGE, 5) == b"hello"
        names = [q.name for q in k.procs()]
        assert names.count("host") == 1
        with pytest.raises(rumpvm.VMError) as e:
            p.mmap(PAGE, flags=rumpvm.MAP_PRIVATE, obj=w.obj)
        assert_err(e, errno.EINVAL)
        with pytest.raises(rumpvm.VMError) as e:
            p.mlock(a, PAGE)
        assert_err(e, errno.EFAULT)
        p.munmap(a, len(w))
        del arr
    k.check()


# -- fork, close -----------------------------------------------------------------------


def test_fork_child_faults(k):
    with k.window(1 << 20) as w:
        w[0] = 1
        addr = w.address
        pid = os.fork()
        if pid == 0:  # the child: the window is not mapped here (MADV_DONTFORK)
            faulthandler.disable()  # the expected SIGSEGV needs no dump
            try:
                _ = ctypes.c_char.from_address(addr).value
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), status
        assert os.WTERMSIG(status) == signal.SIGSEGV
        assert w[0] == 1
    k.check()


def test_close_with_pages_on_swap(k):
    base = k.stats()["swpginuse"]
    w = k.window(WIN)
    assert k.stats()["swpginuse"] == base + NPAGES  # one slot a page, reserved
    a = u64(w)
    a[:] = np.arange(len(a), dtype=np.uint64)
    assert w.stats()["evictions"] > 0
    mv = memoryview(w)
    obj_id = w.obj.id
    w.close()
    w.close()  # a no-op
    k.check()
    s = k.stats()
    assert s["swpginuse"] == base
    assert s["windows"] == 0 and s["window_resident"] == 0
    assert obj_id not in [o.id for o in k.objects()]
    assert not a.any()  # the views still held read zeros
    assert mv[WIN - 1] == 0 and bytes(mv[:PAGE]) == bytes(PAGE)
    a[:4] = 5  # and plain memory now
    assert int(a[:4].sum()) == 20
    for getter in (lambda: w.address, lambda: w.obj, w.stats):
        with pytest.raises(rumpvm.VMError) as e:
            getter()
        assert_err(e, errno.EBADF)
    del a
    mv.release()
    k.check()


# -- close keeps what others can see -------------------------------------------------------


def test_close_hands_the_contents_to_a_process_that_maps_the_object(k):
    """A window 4x the limit, written from numpy (most pages on swap, the
    rest resident) and mapped MAP_SHARED by a process: after the close the
    process reads every byte the window held — resident pages copied into
    the object, swapped ones through the slots the window gave it — with
    resident memory still under the limit and no slot left to the window."""
    w = k.window(WIN)
    p = k.spawn()
    a = p.mmap(WIN, flags=rumpvm.MAP_SHARED, obj=w.obj)
    arr = u64(w)
    arr[:] = np.arange(len(arr), dtype=np.uint64) * 3 + 1
    assert w.stats()["evictions"] > 0 and w.stats()["resident"] > 0
    del arr
    w.close()
    k.check()
    assert k.pagedaemon.wait_idle()  # pageouts of the kept pages hold slots no object has yet
    assert no_window_slots(k)
    want = np.arange(WIN // 8, dtype=np.uint64) * 3 + 1
    for off in range(0, WIN, 1 << 20):
        got = np.frombuffer(p.read(a + off, 1 << 20), dtype=np.uint64)
        assert np.array_equal(got, want[off // 8:(off + (1 << 20)) // 8]), f"MiB at {off:#x}"
    assert k.stats()["resident"] <= k.memlimit
    p.munmap(a, WIN)
    k.check()


def test_close_hands_the_contents_to_a_handle_holder(k):
    """A window over part of an object the caller still holds (a handle,
    no mapping): the bytes it wrote are there for a process that maps the
    object after the close; pages it never touched stay zeros."""
    obj = k.create_object(4 << 20)
    w = k.window(2 << 20, obj=obj, offset=1 << 20)
    w[:5] = b"first"
    w[len(w) - 4:] = b"last"
    w.close()
    k.check()
    p = k.spawn()
    a = p.mmap(4 << 20, flags=rumpvm.MAP_SHARED, obj=obj)
    k.detach_object(obj)
    assert p.read(a + (1 << 20), 5) == b"first"
    assert p.read(a + (3 << 20) - 4, 4) == b"last"
    assert p.read(a, 1 << 20) == bytes(1 << 20)
    assert p.read(a + (1 << 20) + PAGE, PAGE) == bytes(PAGE)
    k.check()


def test_close_keeps_the_contents_without_swap():
    """No swap: every window page is resident (the budget is the whole
    window); closing converts that budget into the object's frames, so the
    memory charged does not grow."""
    with rumpvm.Kernel(memlimit="8M") as k:
        w = k.window(1 << 20)
        p = k.spawn()
        a = p.mmap(1 << 20, flags=rumpvm.MAP_SHARED, obj=w.obj)
        w[:] = bytes(range(256)) * 4096
        before = k.stats()["resident"]
        w.close()
        assert k.stats()["resident"] <= before
        assert p.read(a, 1 << 20) == bytes(range(256)) * 4096
        k.check()


# -- permissions, bad input ---------------------------------------------------------------


NOBODY_SCRIPT = r"""
import rumpvm
try:
    k = rumpvm.Kernel(memlimit="8M", swap="16M")
except Exception as e:
    print("KERNEL", type(e).__name__, getattr(e, "errno", None), e)
    raise SystemExit(0)
try:
    k.window(1 << 20)
    print("OK")
except rumpvm.VMError as e:
    print("ERR", e.errno, e.strerror)
k.check()
k.close()
"""


def test_unprivileged_user_gets_eperm():
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    if shutil.which("setpriv"):
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    elif shutil.which("runuser"):
        prefix = ["runuser", "-u", "nobody", "--"]
    else:
        pytest.skip("neither setpriv nor runuser")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               TMPDIR="/tmp", HOME="/tmp")
    r = subprocess.run([*prefix, sys.executable, "-c", NOBODY_SCRIPT], env=env, cwd="/tmp",
                       capture_output=True, text=True, timeout=60)
    out = r.stdout.strip()
    assert r.returncode == 0, (r.returncode, out, r.stderr[-2000:])
    assert out.startswith("ERR "), out
    _, code, msg = out.split(" ", 2)
    assert int(code) == errno.EPERM, out
    assert "unprivileged_userfaultfd" in msg and "/dev/userfaultfd" in msg, msg


def test_bad_input(k):
    for length in (0, -PAGE, PAGE + 1, 100):
        with pytest.raises(rumpvm.VMError) as e:
            k.window(length)
        assert_err(e, errno.EINVAL)
    for length in (1.5, "4096", None, True):
        with pytest.raises(TypeError):
            k.window(length)
    with pytest.raises(rumpvm.VMError) as e:
        k.window(128 << 20)  # more than the 64M of swap
    assert_err(e, errno.ENOMEM)
    with rumpvm.Kernel(memlimit="8M", swap="16M") as other:
        obj = other.create_object(1 << 20)
        with pytest.raises(rumpvm.VMError) as e:
            k.window(1 << 20, obj=obj)
        assert_err(e, errno.EINVAL)
        other.detach_object(obj)
        other.check()
    assert k.stats()["windows"] == 0 and no_window_slots(k)
    k.check()


# -- the kernel's policy chooses window pages ---------------------------------------------


def test_pagedaemon_evicts_window_pages_for_a_process(k):
    """The window's resident pages are on the kernel's page queues: when a
    process needs memory the window holds, the pagedaemon's policy evicts
    window pages (their budget is given back), not the engine's clock."""
    with k.window(WIN) as w:
        a = u64(w)
        a[:] = np.arange(len(a), dtype=np.uint64)
        before = w.stats()
        assert before["budget"] > LIMIT // PAGE // 2  # the window holds most of memory
        p = k.spawn()
        n = LIMIT // PAGE // 2
        va = p.mmap(n * PAGE)
        p.write(va, page_pattern(range(n), 3))  # needs frames the window holds
        after = w.stats()
        assert after["budget"] < before["budget"]
        assert after["evictions"] - before["evictions"] >= after["selfevictions"] - before["selfevictions"] + 1
        assert p.read(va, n * PAGE) == page_pattern(range(n), 3)
        assert np.array_equal(a, np.arange(len(a), dtype=np.uint64))
        assert_bounded(k, w)
        k.check()


def test_deactivated_window_page_reports_its_next_touch(k):
    """A window page the pagedaemon deactivates is parked by its engine; the
    next touch refaults it, which is reported as a reference."""
    from rumpvm import window

    with k.window(64 * PAGE) as w:
        w[0] = 7  # page 0 resident: a stub on the active queue
        with k.lock:
            window._drain(k, w, w._hw)  # what the window's thread does on its own
            stub = w._stubs[0]
            assert stub.queue == rumpvm.page.ACTIVE and stub.referenced
            stub.referenced = False
            k.queues.deactivate_first(stub)  # as the pagedaemon does
            window.park(k)
        s0 = w.stats()
        assert w[0] == 7  # a refault: the engine moves the page back
        assert w.stats()["refaults"] == s0["refaults"] + 1
        with k.lock:
            window._drain(k, w, w._hw)
            assert w._stubs[0] is stub and stub.referenced
        k.check()


# -- /vm ----------------------------------------------------------------------------------


def test_vm_shows_the_window(k, tmp_path):
    """Through a real FUSE mount: the window is a MAP_SHARED mapping of the
    process `host`, its object is under objects/ with the window's resident
    pages, and objects/<id>/data (read by dd) is the window's bytes."""
    from fusemount import mounted, run

    with k.window(64 * PAGE) as w:
        w[0:PAGE * 3] = page_pattern(range(3), 9)
        (host,) = [p for p in k.procs() if p.name == "host"]
        addr = w._host_addr
        with mounted(k, tmp_path / "vm") as vm:
            maps = run("cat", vm / "proc" / str(host.pid) / "maps").stdout
            line = next(ln for ln in maps.splitlines()
                        if [int(x, 16) for x in ln.split()[0].split("-")] == [addr, addr + 64 * PAGE])
            assert line.split()[1] == "rw-s", line
            info = run("cat", vm / "objects" / str(w.obj.id) / "info").stdout
            assert "resident" in info
            data = run("dd", f"if={vm / 'objects' / str(w.obj.id) / 'data'}", "bs=4096", "count=3",
                       "status=none", text=False).stdout
            assert data == page_pattern(range(3), 9)
        k.check()
