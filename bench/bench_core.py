"""Benchmarks of the VM core (issue 2), each against a baseline measured in
the same run, in the same process.

Figures:

1. `zero-fill fault`: one fresh anonymous page per `p.write` (8 bytes at
   the start of each page of a new mapping), ns per fault.  Baseline: the
   host kernel's minor fault, from a small C program (compiled with the
   system `cc -O2` into a temp dir) that touches one byte per page of a
   fresh `mmap` (MADV_NOHUGEPAGE, so each 4 KiB page faults).  Target <= 4x.
2. `resident 4 KiB read` / `write`: `p.read(a, 4096)` / `p.write(a, data)`
   on resident pages vs `bytes(ba[o:o+4096])` / `ba[o:o+4096] = data` on a
   bytearray, at the same random page offsets.  Target <= 3x.
3. `1 MiB read`: `p.read(a, 1 MiB)` of resident memory, GB/s, vs host
   memcpy bandwidth of 1 MiB blocks measured by the same C program
   (`memcpy` between two 1 MiB buffers, best of many).  Target >= 25%.
4. `map lookup` / `mmap findspace` / `munmap` with 1k vs 100k entries (quick:
   1k vs 10k).  The map is one mapping at the bottom of the user space with
   every other page made PROT_READ, so no two neighbours merge and there is
   no hole below the end.  Lookup: `p.vmspace.lookup_entry(addr)` under
   `k.lock` at random mapped addresses; also `p.read(addr, 8)` of a page
   with no translation (the map lookup runs in check_access and the fault).
   mmap: a one-page non-fixed `p.mmap` (findspace must skip the whole
   map), then (untimed) its munmap.  munmap: a one-page entry at a random
   place in the map, then (untimed) mapped back with MAP_FIXED.
   Value: the 100k per-op time; baseline: the 1k per-op time.  Target <= 2x.
5. `fork, 1000 entries`: fork of a map of 1000 entries covering 64 MiB
   (quick: 8 MiB) with every page resident and written, vs the same map
   with nothing resident.  Each repetition re-dirties the pages first
   (untimed), so every fork write-protects all translations, then the child
   exits (untimed).  Target <= 1.5x.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass

import rumpvm
from rumpvm import MAP_ANON, MAP_FIXED, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE

from . import Row, best_ns, best_of, ratio_row

MiB = 1 << 20
VM_MIN = PAGE_SIZE  # lowest user address (DESIGN.md: [PAGE_SIZE, ...))

C_SOURCE = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    size_t npages = argc > 1 ? strtoul(argv[1], 0, 10) : 16384;
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    long ps = sysconf(_SC_PAGESIZE);
    size_t len = npages * (size_t)ps;
    double best_fault = 1e30, best_copy = 1e30;
    for (int r = 0; r < reps + 1; r++) {          /* first rep is a warm-up */
        char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        madvise(p, len, MADV_NOHUGEPAGE);
        long long t0 = now_ns();
        for (size_t i = 0; i < npages; i++) ((volatile char *)p)[i * ps] = 1;
        long long t1 = now_ns();
        munmap(p, len);
        double ns = (double)(t1 - t0) / npages;
        if (r && ns < best_fault) best_fault = ns;
    }
    size_t mib = 1 << 20;
    char *a = malloc(mib), *b = malloc(mib);
    memset(a, 1, mib); memset(b, 2, mib);
    int iters = 200;
    for (int r = 0; r < reps + 1; r++) {
        long long t0 = now_ns();
        for (int i = 0; i < iters; i++) {
            if (i & 1) memcpy(a, b, mib); else memcpy(b, a, mib);
            __asm__ volatile("" ::: "memory");
        }
        long long t1 = now_ns();
        double ns = (double)(t1 - t0) / iters;
        if (r && ns < best_copy) best_copy = ns;
    }
    printf("fault_ns %.3f\nmemcpy_1mib_ns %.3f\n", best_fault, best_copy);
    return 0;
}
"""


@dataclass
class HostFigures:
    fault_ns: float
    memcpy_1mib_ns: float


def host_baseline(npages: int, reps: int) -> HostFigures:
    """Compile and run the C baseline; its minor-fault and memcpy figures."""
    with tempfile.TemporaryDirectory(prefix="rumpvm-bench-") as tmp:
        src = os.path.join(tmp, "hostfault.c")
        exe = os.path.join(tmp, "hostfault")
        with open(src, "w") as f:
            f.write(C_SOURCE)
        subprocess.run(["cc", "-O2", "-o", exe, src], check=True, capture_output=True, text=True)
        out = subprocess.run([exe, str(npages), str(reps)], check=True, capture_output=True,
                             text=True, timeout=120).stdout
    vals = dict(line.split() for line in out.splitlines() if line.strip())
    return HostFigures(float(vals["fault_ns"]), float(vals["memcpy_1mib_ns"]))


# -- 1. zero-fill fault -------------------------------------------------------------

def bench_zero_fill(k: rumpvm.Kernel, npages: int, reps: int) -> float:
    """ns per zero-fill fault, one page per p.write, fresh mapping each rep."""
    p = k.spawn(name="zf")
    data = b"\x01" * 8
    length = npages * PAGE_SIZE

    def once() -> float:
        a = p.mmap(length)
        addrs = range(a, a + length, PAGE_SIZE)
        w = p.write
        t0 = time.perf_counter_ns()
        for va in addrs:
            w(va, data)
        dt = time.perf_counter_ns() - t0
        p.munmap(a, length)
        return dt / npages

    try:
        return best_of(once, repeat=reps, warmup=1)
    finally:
        p.exit()


# -- 2. resident 4 KiB read / write -------------------------------------------------

def bench_rw4k(k: rumpvm.Kernel, npages: int, nops: int, reps: int) -> tuple[float, float, float, float]:
    """(vm read, bytearray read, vm write, bytearray write) ns per 4 KiB op."""
    p = k.spawn(name="rw4k")
    length = npages * PAGE_SIZE
    a = p.mmap(length)
    data = bytes(range(256)) * (PAGE_SIZE // 256)
    for off in range(0, length, PAGE_SIZE):
        p.write(a + off, data)  # resident and writable
    ba = bytearray(length)
    rng = random.Random(1)
    offs = [rng.randrange(npages) * PAGE_SIZE for _ in range(nops)]
    vaddrs = [a + o for o in offs]
    n = PAGE_SIZE

    def vm_read() -> None:
        r = p.read
        for va in vaddrs:
            r(va, n)

    def ba_read() -> None:
        for o in offs:
            bytes(ba[o:o + n])

    def vm_write() -> None:
        w = p.write
        for va in vaddrs:
            w(va, data)

    def ba_write() -> None:
        for o in offs:
            ba[o:o + n] = data

    res = tuple(best_ns(fn, repeat=reps) / nops for fn in (vm_read, ba_read, vm_write, ba_write))
    p.exit()
    return res  # type: ignore[return-value]


# -- 3. 1 MiB read ----------------------------------------------------------------

def bench_read_1mib(k: rumpvm.Kernel, reps: int) -> float:
    """ns per 1 MiB p.read of resident memory (best of `reps` runs of 20 reads)."""
    p = k.spawn(name="read1m")
    a = p.mmap(MiB)
    p.write(a, bytes(range(256)) * (MiB // 256))
    iters = 20

    def loop() -> None:
        r = p.read
        for _ in range(iters):
            r(a, MiB)

    ns = best_ns(loop, repeat=reps) / iters
    p.exit()
    return ns


# -- 4. map with many entries -----------------------------------------------------

@dataclass
class MapOps:
    entries: int
    lookup_ns: float
    read_lookup_ns: float
    mmap_ns: float
    munmap_ns: float


def build_map(p: rumpvm.Proc, entries: int) -> int:
    """One mapping of `entries` pages at VM_MIN with every odd page PROT_READ;
    returns its start.  `entries` must be even (the last entry is PROT_READ,
    so a new RW page mapped right after it does not merge with it)."""
    assert entries % 2 == 0
    a = p.mmap(entries * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=VM_MIN)
    for i in range(1, entries, 2):
        p.mprotect(a + i * PAGE_SIZE, PAGE_SIZE, PROT_READ)
    n = p.vmspace.tree.count
    if n != entries:
        raise AssertionError(f"map has {n} entries, wanted {entries}")
    return a


def bench_map_ops(k: rumpvm.Kernel, entries: int, nops: int, reps: int) -> MapOps:
    p = k.spawn(name=f"map{entries}")
    a = build_map(p, entries)
    rng = random.Random(entries)
    vmap = p.vmspace
    lookup_addrs = [a + rng.randrange(entries) * PAGE_SIZE + 8 for _ in range(nops * 10)]

    def lookups() -> None:
        le = vmap.lookup_entry
        with k.lock:
            for va in lookup_addrs:
                le(va)

    lookup_ns = best_ns(lookups, repeat=reps) / len(lookup_addrs)

    # p.read of untouched pages: no translation, no object, reads zeros
    # without allocating, so every call runs the map lookup.
    read_addrs = lookup_addrs[:nops * 4]

    def reads() -> None:
        r = p.read
        for va in read_addrs:
            r(va, 8)

    read_ns = best_ns(reads, repeat=reps) / len(read_addrs)

    def mmaps() -> float:
        total = 0
        mm, mu = p.mmap, p.munmap
        for _ in range(nops):
            t0 = time.perf_counter_ns()
            b = mm(PAGE_SIZE)
            total += time.perf_counter_ns() - t0
            mu(b, PAGE_SIZE)
        return total / nops

    mmap_ns = best_of(mmaps, repeat=reps)
    end = a + entries * PAGE_SIZE

    def munmaps() -> float:
        total = 0
        mm, mu = p.mmap, p.munmap
        for _ in range(nops):
            i = rng.randrange(entries)
            va = a + i * PAGE_SIZE
            t0 = time.perf_counter_ns()
            mu(va, PAGE_SIZE)
            total += time.perf_counter_ns() - t0
            mm(PAGE_SIZE, PROT_READ if i & 1 else PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=va)
        return total / nops

    munmap_ns = best_of(munmaps, repeat=reps)
    if vmap.tree.count != entries or vmap.lookup_entry(end)[0]:
        raise AssertionError("map changed shape during the benchmark")
    p.exit()
    return MapOps(entries, lookup_ns, read_ns, mmap_ns, munmap_ns)


# -- 5. fork ---------------------------------------------------------------------

def bench_fork(k: rumpvm.Kernel, entries: int, total_bytes: int, resident: bool, reps: int) -> float:
    """ns per fork of a map of `entries` entries covering `total_bytes`."""
    p = k.spawn(name="forker")
    npages = total_bytes // PAGE_SIZE
    base = 0x10_0000_0000
    addr = base
    regions = []
    for i in range(entries):
        pages = npages // entries + (1 if i < npages % entries else 0)
        # one-page gaps keep the entries apart
        p.mmap(pages * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=addr)
        regions.append((addr, pages))
        addr += (pages + 1) * PAGE_SIZE
    if p.vmspace.tree.count != entries:
        raise AssertionError(f"fork map has {p.vmspace.tree.count} entries, wanted {entries}")
    stamp = b"\xa5" * 8
    page_addrs = [r + j * PAGE_SIZE for r, pages in regions for j in range(pages)]

    def once() -> float:
        if resident:
            w = p.write
            for va in page_addrs:
                w(va, stamp)  # resident, dirty and writable again
        t0 = time.perf_counter_ns()
        c = p.fork()
        dt = time.perf_counter_ns() - t0
        c.exit()
        return dt

    ns = best_of(once, repeat=reps, warmup=1)
    if resident and k.stats()["resident"] < total_bytes:
        raise AssertionError("fork benchmark: memory not resident")
    p.exit()
    return ns


# -- the figures -------------------------------------------------------------------

def run(quick: bool) -> list[Row]:
    """All figures of this module (see the module docstring)."""
    zf_pages = 2048 if quick else 8192
    reps = 3 if quick else 5
    rows: list[Row] = []
    host = host_baseline(16384, 5 if quick else 10)
    with rumpvm.Kernel() as k:
        zf = bench_zero_fill(k, zf_pages, reps)
        rows.append(ratio_row(f"zero-fill fault ({zf_pages} pages, 1 page/write)", zf, "ns/fault",
                              "host minor fault (C)", host.fault_ns, "<= 4x host", 4.0))

        vr, br, vw, bw = bench_rw4k(k, 256, 5000 if quick else 20000, reps)
        rows.append(ratio_row("resident 4 KiB read", vr, "ns/op", "bytes(ba[o:o+4096])", br,
                              "<= 3x", 3.0))
        rows.append(ratio_row("resident 4 KiB write", vw, "ns/op", "ba[o:o+4096] = data", bw,
                              "<= 3x", 3.0))

        r1m = bench_read_1mib(k, reps)
        vm_gbs = MiB / r1m
        host_gbs = MiB / host.memcpy_1mib_ns
        rows.append(ratio_row("1 MiB read of resident memory", vm_gbs, "GB/s", "C memcpy 1 MiB",
                              host_gbs, ">= 25% of memcpy", 0.25, higher_is_better=True))

    small, big = 1000, (10_000 if quick else 100_000)
    nops = 500 if quick else 2000
    with rumpvm.Kernel() as k:
        s = bench_map_ops(k, small, nops, reps)
    with rumpvm.Kernel() as k:
        b = bench_map_ops(k, big, nops, reps)
    for what, attr in (("map lookup (lookup_entry)", "lookup_ns"),
                       ("map lookup (p.read, no translation)", "read_lookup_ns"),
                       ("mmap with findspace", "mmap_ns"), ("munmap (one entry)", "munmap_ns")):
        rows.append(ratio_row(f"{what}, {big // 1000}k entries", getattr(b, attr), "ns/op",
                              f"same op, {small // 1000}k entries", getattr(s, attr),
                              f"<= 2x {small // 1000}k", 2.0))

    fork_bytes = (8 if quick else 64) * MiB
    with rumpvm.Kernel() as k:
        empty = bench_fork(k, 1000, fork_bytes, False, reps)
        full = bench_fork(k, 1000, fork_bytes, True, reps)
    rows.append(ratio_row(f"fork, 1000 entries, {fork_bytes // MiB} MiB resident", full / 1e3, "us",
                          "same map, nothing resident", empty / 1e3, "<= 1.5x", 1.5))
    return rows
