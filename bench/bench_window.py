"""Benchmarks of host windows (`k.window`): the fault engine's service time
against the host kernel's own minor fault, and host code streaming through
a window several times the memory limit.  The touching is done by C (a
small library compiled with the system `cc -O2`, called through ctypes),
so the figures are the engine's, not Python's.  Sizes are for the "full"
profile (quick / tiny in `pick` calls).

- `fault_zero`: one write per page of a fresh window (no limit: nothing is
  evicted), ns per page touched — the engine's fault-around serves a
  sequential run of up to 32 pages per fault, as the host kernel's own
  fault-around would for file pages.  Baseline: the same C loop over a
  fresh host `mmap` (MADV_NOHUGEPAGE), in the same run.  Target <= 5x.
- `fault_wp`: the first write to each page of a window whose pages were
  read first (installed write-protected): ns per write-protect fault; same
  baseline.  Reported.
- `fault_swapin`: a read per page, in order, of a window 4x the limit that
  was written once (every page comes back from swap, and as many go out),
  ns per page swapped in (read-ahead: up to 32 pages a read).  Same
  baseline.  Reported.
- `scan`: summing a window 4x the limit as uint64 words, MiB/s, against
  summing plain host memory of the same size.  Reported.
- `random`: 8-byte reads at uniformly random offsets of a window 4x the
  limit, ns per access, against the same reads of plain memory.  Reported.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import subprocess
import tempfile
from collections.abc import Iterator

import rumpvm
from rumpvm import PAGE_SIZE

from . import MiB, Profile, Row, alternate, mib, pick, ratio_row

TOUCH_C = r"""
#include <stdint.h>
#include <stddef.h>
#include <time.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One access per page; ns for all of them. */
long long touch(char *p, size_t npages, long ps, int write) {
    volatile char *v = p;
    char sink = 0;
    long long t0 = now_ns();
    for (size_t i = 0; i < npages; i++) {
        if (write) v[i * ps] = 1; else sink += v[i * ps];
    }
    (void)sink;
    return now_ns() - t0;
}

/* The sum of n words; ns through *ns. */
uint64_t sum(const uint64_t *p, size_t n, long long *ns) {
    long long t0 = now_ns();
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s += ((volatile const uint64_t *)p)[i];
    *ns = now_ns() - t0;
    return s;
}

/* `count` 8-byte reads at xorshift-random word offsets; ns. */
long long rnd(const uint64_t *p, size_t n, size_t count, uint64_t seed) {
    uint64_t x = seed | 1, s = 0;
    long long t0 = now_ns();
    for (size_t i = 0; i < count; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        s += ((volatile const uint64_t *)p)[x % n];
    }
    long long dt = now_ns() - t0;
    return s == 42 ? dt + 1 : dt;  /* keep s */
}
"""


@contextlib.contextmanager
def touch_lib() -> Iterator[ctypes.CDLL]:
    """TOUCH_C compiled into a shared library (ctypes releases the GIL)."""
    with tempfile.TemporaryDirectory(prefix="rumpvm-bench-") as tmp:
        src, lib = os.path.join(tmp, "touch.c"), os.path.join(tmp, "touch.so")
        with open(src, "w") as f:
            f.write(TOUCH_C)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", lib, src], check=True, capture_output=True, text=True)
        c = ctypes.CDLL(lib)
        c.touch.restype = c.rnd.restype = ctypes.c_longlong
        c.touch.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int]
        c.sum.restype = ctypes.c_uint64
        c.sum.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_longlong)]
        c.rnd.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint64]
        yield c


def _host_fault(c: ctypes.CDLL, npages: int) -> float:
    """ns per first write to a page of a fresh host mapping."""
    m = mmap.mmap(-1, npages * PAGE_SIZE)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    try:
        return c.touch(_addr(m), npages, PAGE_SIZE, 1) / npages
    finally:
        m.close()


def _addr(m: mmap.mmap) -> int:
    anchor = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(anchor)
    del anchor
    return addr


def _window_fault(c: ctypes.CDLL, npages: int, first_read: bool) -> float:
    """ns per fault of a fresh window with no limit: a write per page
    (zero-fill), or after a read of each (a write-protect fault)."""
    with rumpvm.Kernel(memlimit="unlimited", swap=npages * PAGE_SIZE) as k, k.window(npages * PAGE_SIZE) as w:
        if first_read:
            c.touch(w.address, npages, PAGE_SIZE, 0)
        return c.touch(w.address, npages, PAGE_SIZE, 1) / npages


def faults(profile: Profile) -> list[Row]:
    """Zero-fill and write-protect faults of a window vs the host's minor fault."""
    npages = pick(profile, 256, 4096, 16384)
    reps = pick(profile, 1, 3, 5)
    with touch_lib() as c:
        zero, wp, host = alternate([lambda: _window_fault(c, npages, False), lambda: _window_fault(c, npages, True),
                                    lambda: _host_fault(c, npages)], reps)
    base = "host minor fault (same C loop)"
    return [ratio_row("window.fault_zero", f"window zero-fill, per page ({npages} pages)", zero, "ns/page", base,
                      host, 5.0),
            ratio_row("window.fault_wp", f"window write-protect fault ({npages} pages read first)", wp,
                      "ns/fault", base, host, None)]


def over_limit(profile: Profile) -> list[Row]:
    """Host code over a window 4x the limit: swap-in faults, a sequential
    sum and random 8-byte reads, each against plain host memory."""
    limit = pick(profile, 1 * MiB, 4 * MiB, 16 * MiB)
    size = 4 * limit
    npages = size // PAGE_SIZE
    nwords = size // 8
    count = pick(profile, 2000, 50_000, 200_000)
    ns = ctypes.c_longlong()
    plain = mmap.mmap(-1, size)
    try:
        paddr = _addr(plain)
        with touch_lib() as c:
            c.touch(paddr, npages, PAGE_SIZE, 1)
            host_fault = min(_host_fault(c, npages) for _ in range(3))
            c.sum(paddr, nwords, ctypes.byref(ns))
            plain_scan = ns.value
            plain_rnd = c.rnd(paddr, nwords, count, 7)
            with rumpvm.Kernel(memlimit=limit, swap=2 * size) as k, k.window(size) as w:
                c.touch(w.address, npages, PAGE_SIZE, 1)  # every page written once (most go to swap)
                s0 = w.stats()
                swapin = c.touch(w.address, npages, PAGE_SIZE, 0) / max(1, w.stats()["swapins"] - s0["swapins"])
                c.sum(w.address, nwords, ctypes.byref(ns))
                win_scan = ns.value
                win_rnd = c.rnd(w.address, nwords, count, 7)
                s1 = w.stats()
    finally:
        plain.close()
    mibs = size / MiB
    return [ratio_row("window.fault_swapin", f"window swap-in, per page, in order, {mib(size)} under {mib(limit)}",
                      swapin, "ns/page", "host minor fault (same C loop)", host_fault, None),
            ratio_row("window.scan", f"sum of a {mib(size)} window under a {mib(limit)} limit", mibs / (win_scan / 1e9),
                      "MiB/s", "the same sum of plain memory", mibs / (plain_scan / 1e9), None, higher_is_better=True),
            ratio_row("window.random", f"random 8-byte reads over {mib(size)} under {mib(limit)} "
                                       f"({s1['swapins']} swap-ins in all)",
                      win_rnd / count, "ns/read", "the same reads of plain memory", plain_rnd / count, None)]


FIGURES = (faults, over_limit)
