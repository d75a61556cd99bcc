"""Benchmarks of the VM core: the fault path, copies out of the VM, and costs
that must not grow with the size of a map or of memory.  Each figure has a
baseline measured in the same run: the host, sampled in turn with the VM
(`bench.alternate`: many short samples each, the best kept), or the same
operation at a small size, in a kernel of its own measured before and
after the big one (`bench.sandwich`).
Sizes are for the "full" profile (quick / tiny in `pick` calls).

- `zero_fill`: one 8-byte `p.write` at the start of each page of a fresh
  1024-page mapping, ns per fault.  Baseline: the host kernel's minor
  fault, from a C program (compiled with the system `cc -O2` into a temp
  dir) that touches one byte per page of a fresh 1024-page `mmap`
  (MADV_NOHUGEPAGE, so each 4 KiB page faults).  Target <= 2.5x.
- `readinto`: `p.readinto(addr, buf)` of 1 MiB at a time, sweeping a 64 MiB
  resident region in address order into one reused buffer, GB/s.  Baseline:
  `ctypes.memmove` of the same 1 MiB pieces, in the same order, from a
  64 MiB host buffer into the same buffer.  Target >= 0.4.
- `map_lookup`: `p.read(addr, 8)` at random addresses of a map of 100k
  entries (`bench.build_map`) vs 1k, on pages with no translation (reads
  zeros without allocating, so each call runs check_access and the map
  lookup); and bare `vmspace.lookup_entry` under `k.lock`.  Target <= 2x.
  A detail row gives the floor of any index that hands back the entry
  object: a dict hit on the address's page (each entry is one page) and a
  read of the entry's `end`, same addresses, same maps: what the cache
  misses on touching one entry of 100k cost, with no search at all.
- `memory_size`: with no limit, `k.stats()` and a zero-fill fault (as in
  `zero_fill`, by a second process) with 512 MiB written resident vs
  16 MiB.  Targets <= 2x and <= 1.5x.
- `fork_exit`: `fork()` + `child.exit()` of a process whose map has 100k
  entries (`build_map`, nothing resident) vs 1k, µs per entry.  Target
  <= 1.5x.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import rumpvm
from rumpvm import PAGE_SIZE

from . import MiB, Profile, Row, alternate, build_map, kilo, mib, pick, ratio_row, sandwich

HOST_FAULT_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    size_t npages = strtoul(argv[1], 0, 10);
    int reps = atoi(argv[2]);
    long ps = sysconf(_SC_PAGESIZE);
    size_t len = npages * (size_t)ps;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {          /* the first is a warm-up */
        char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        madvise(p, len, MADV_NOHUGEPAGE);
        long long t0 = now_ns();
        for (size_t i = 0; i < npages; i++) ((volatile char *)p)[i * ps] = 1;
        long long t1 = now_ns();
        munmap(p, len);
        double ns = (double)(t1 - t0) / npages;
        if (r && ns < best) best = ns;
    }
    printf("%.3f\n", best);
    return 0;
}
"""


@contextlib.contextmanager
def host_fault_probe(npages: int) -> Iterator[Callable[[], float]]:
    """A probe of the host's minor fault, ns: HOST_FAULT_C, compiled once,
    run once per call (the best of 3 fresh mappings of `npages` pages)."""
    with tempfile.TemporaryDirectory(prefix="rumpvm-bench-") as tmp:
        src = os.path.join(tmp, "hostfault.c")
        exe = os.path.join(tmp, "hostfault")
        with open(src, "w") as f:
            f.write(HOST_FAULT_C)
        subprocess.run(["cc", "-O2", "-o", exe, src], check=True, capture_output=True, text=True)

        def probe() -> float:
            return float(subprocess.run([exe, str(npages), "3"], check=True, capture_output=True,
                                        text=True).stdout)

        yield probe


def zero_fill_probe(k: rumpvm.Kernel, npages: int) -> Callable[[], float]:
    """A probe of the zero-fill fault, ns: one 8-byte p.write per page of a
    fresh mapping of `npages` pages of a new process (mapped and unmapped
    untimed at each call)."""
    p = k.spawn(name="zerofill")
    data = b"\x01" * 8
    length = npages * PAGE_SIZE

    def probe() -> float:
        a = p.mmap(length)
        addrs = range(a, a + length, PAGE_SIZE)
        w = p.write
        t0 = time.perf_counter_ns()
        for va in addrs:
            w(va, data)
        dt = time.perf_counter_ns() - t0
        p.munmap(a, length)
        return dt / npages

    return probe


def fill(p: rumpvm.Proc, addr: int, length: int) -> None:
    """Make `length` bytes at `addr` resident and dirty, 1 MiB per p.write."""
    chunk = bytes(range(256)) * (MiB // 256)
    for off in range(0, length, MiB):
        p.write(addr + off, chunk[:min(MiB, length - off)])


def zero_fill(profile: Profile) -> list[Row]:
    """Zero-fill fault vs the host's minor fault."""
    npages = pick(profile, 256, 1024, 1024)
    reps = pick(profile, 2, 10, 30)
    with host_fault_probe(npages) as host, rumpvm.Kernel(memlimit="unlimited") as k:
        vm_ns, host_ns = alternate([zero_fill_probe(k, npages), host], reps)
    return [ratio_row("zero_fill", f"zero-fill fault, one write per fresh page ({npages}-page mappings)", vm_ns,
                      "ns/fault", "host minor fault (C loop)", host_ns, 2.5)]


def readinto(profile: Profile) -> list[Row]:
    """1 MiB p.readinto over a resident region vs ctypes.memmove."""
    size = pick(profile, 2, 8, 64) * MiB
    reps = pick(profile, 2, 5, 10)
    buf = bytearray(MiB)
    dst = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    host = bytearray(bytes(range(256)) * (size // 256))
    src = ctypes.addressof(ctypes.c_char.from_buffer(host))
    offsets = range(0, size, MiB)
    with rumpvm.Kernel(memlimit="unlimited") as k:
        p = k.spawn(name="readinto")
        a = p.mmap(size)
        fill(p, a, size)
        addrs = [a + off for off in offsets]

        def vm_sweep() -> float:
            r = p.readinto
            t0 = time.perf_counter_ns()
            for va in addrs:
                r(va, buf)
            return time.perf_counter_ns() - t0

        def host_sweep() -> float:
            mm = ctypes.memmove
            t0 = time.perf_counter_ns()
            for off in offsets:
                mm(dst, src + off, MiB)
            return time.perf_counter_ns() - t0

        vm_ns, host_ns = alternate([vm_sweep, host_sweep], reps)
        buf[:] = bytes(MiB)
        p.readinto(addrs[-1], buf)
        if buf != host[size - MiB:]:
            raise AssertionError("readinto benchmark: read back the wrong bytes")
    return [ratio_row("readinto", f"p.readinto 1 MiB over {mib(size)} resident, one buffer", size / vm_ns,
                      "GB/s", "ctypes.memmove, same bytes and order", size / host_ns, 0.4,
                      higher_is_better=True)]


def lookups_ns(entries: int, nops: int, reps: int) -> list[float]:
    """[ns per p.read(addr, 8), ns per bare lookup_entry under k.lock, ns
    per dict hit on the entry (the floor)] at random mapped addresses of a
    process of `entries` one-page map entries with nothing resident."""
    with rumpvm.Kernel(memlimit="unlimited") as k:
        p = k.spawn(name=f"map{entries}")
        a = build_map(p, entries)
        rng = random.Random(entries)
        addrs = [a + rng.randrange(entries) * PAGE_SIZE + 8 for _ in range(nops)]
        vmap = p.vmspace

        def reads() -> float:
            r = p.read
            t0 = time.perf_counter_ns()
            for va in addrs:
                r(va, 8)
            return (time.perf_counter_ns() - t0) / nops

        def lookups() -> float:
            le = vmap.lookup_entry
            with k.lock:
                t0 = time.perf_counter_ns()
                for va in addrs:
                    le(va)
                return (time.perf_counter_ns() - t0) / nops

        with k.lock:
            by_page = {e.start: e for e in vmap.entries()}
        mask = ~(PAGE_SIZE - 1)

        def floor() -> float:
            t0 = time.perf_counter_ns()
            for va in addrs:
                if by_page[va & mask].end <= va:
                    raise AssertionError("map lookup benchmark: an entry does not hold its page")
            return (time.perf_counter_ns() - t0) / nops

        resident = k.stats()["resident"]
        out = alternate([reads, lookups, floor], reps)
        if k.stats()["resident"] != resident:
            raise AssertionError("map lookup benchmark: the reads allocated memory")
    return out


def map_lookup(profile: Profile) -> list[Row]:
    """Map lookup (through p.read, and bare) at 100k entries vs 1k."""
    small, big = 1000, pick(profile, 4000, 10_000, 100_000)
    nops = pick(profile, 200, 2000, 2000)
    reps = pick(profile, 2, 10, 20)
    (s_read, s_bare, s_floor), (b_read, b_bare, b_floor) = sandwich(lambda n: lookups_ns(n, nops, reps), small, big)
    versus = f"{kilo(big)} vs {kilo(small)} entries"
    base = f"same, {kilo(small)} entries"
    return [ratio_row("map_lookup_read", f"map lookup through p.read, {versus}", b_read, "ns/op", base, s_read, 2.0),
            ratio_row("map_lookup_bare", f"bare lookup_entry, {versus}", b_bare, "ns/op", base, s_bare, 2.0),
            ratio_row("map_lookup_floor", f"  (detail) floor: dict hit on the entry + its end, {versus}", b_floor,
                      "ns/op", base, s_floor, None, target="(detail)")]


def at_resident_ns(resident: int, calls: int, zf_pages: int, reps: int) -> list[float]:
    """[ns per k.stats(), ns per zero-fill fault] in a kernel with no limit
    where a process holds `resident` bytes written."""
    with rumpvm.Kernel(memlimit="unlimited") as k:
        p = k.spawn(name="resident")
        fill(p, p.mmap(resident), resident)
        if k.stats()["resident"] < resident:
            raise AssertionError("memory-size benchmark: memory not resident")

        def stats() -> float:
            st = k.stats
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                st()
            return (time.perf_counter_ns() - t0) / calls

        return alternate([stats, zero_fill_probe(k, zf_pages)], reps)


def memory_size(profile: Profile) -> list[Row]:
    """k.stats() and a zero-fill fault with much memory resident vs little."""
    small, big = pick(profile, 2, 16, 16) * MiB, pick(profile, 8, 64, 512) * MiB
    zf_pages = pick(profile, 256, 1024, 1024)
    calls = pick(profile, 20, 200, 200)
    reps = pick(profile, 2, 10, 20)
    (s_stats, s_zf), (b_stats, b_zf) = sandwich(lambda n: at_resident_ns(n, calls, zf_pages, reps), small, big)
    versus = f"at {mib(big)} resident vs {mib(small)}"
    base = f"same, {mib(small)} resident"
    return [ratio_row("stats_size", f"k.stats() {versus}", b_stats, "ns/call", base, s_stats, 2.0),
            ratio_row("zero_fill_size", f"zero-fill fault {versus}", b_zf, "ns/fault", base, s_zf, 1.5)]


def fork_exit_ns(entries: int, reps: int) -> list[float]:
    """[ns per map entry of fork() + child.exit()] of a process of
    `entries` map entries, the best of `reps`."""
    with rumpvm.Kernel(memlimit="unlimited") as k:
        p = k.spawn(name=f"fork{entries}")
        build_map(p, entries)

        def once() -> float:
            t0 = time.perf_counter_ns()
            p.fork().exit()
            return (time.perf_counter_ns() - t0) / entries

        return alternate([once], reps)


def fork_exit(profile: Profile) -> list[Row]:
    """fork + exit per entry at 100k entries vs 1k."""
    small, big = 1000, pick(profile, 4000, 10_000, 100_000)
    reps = pick(profile, 2, 3, 3)
    (s,), (b,) = sandwich(lambda n: fork_exit_ns(n, reps if n == big else 5 * reps), small, big)
    return [ratio_row("fork_exit", f"fork + exit, {kilo(big)} vs {kilo(small)} entries", b / 1e3, "us/entry",
                      f"same, {kilo(small)} entries", s / 1e3, 1.5)]


FIGURES = (zero_fill, readinto, map_lookup, memory_size, fork_exit)
