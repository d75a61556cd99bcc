"""Benchmarks of memory limits and swap, against baselines run in the same
run.  Sizes are for the "full" profile (quick / tiny in `pick` calls).

- `swap_roundtrip`: a kernel with a 16 MiB limit and swap for all of it
  (`oom_timeout` 120 s); one process maps 64 MiB, writes it with 1 MiB
  `p.write` calls (distinct content per page), then reads it back in order
  with 1 MiB `p.readinto` calls into one buffer, checking each MiB against
  what was written (a memcmp, inside the timing, so the pagedaemon gets no
  untimed time).  Value: pages per second of the whole (write + read back).
  Baseline: the same pages written and read back raw with
  `hypercall.SwapFile.write_pages/read_pages` (one pwritev / preadv per
  64-page cluster) on a new unlinked temp file, as the kernel's own swap
  file is.  Target >= 0.4.  The figure text gives the kernel's pageouts and
  pageins; two detail rows split the two halves (write alone vs pwritev,
  read back alone vs preadv).  A last detail row bounds what any Python
  with a page object per resident page can reach: the raw I/O plus the
  bookkeeping such a kernel cannot skip (`bookkeeping_floor`: make a page
  object, put it in its object's dict, on a queue and in the pmap with its
  pv entry; at eviction undo that and record the slot), inlined in one
  loop with no function call, policy, copy, lock or checksum.
- `random_reads`: a working set of twice the limit (32 MiB under 16 MiB),
  written once, then uniformly random 4 KiB `p.read`s of whole pages.
  Value: ns per read; baseline: the same reads with no limit.  Reported
  with the faults, pageins and pageouts of the limited run; no target.

Each run uses a new kernel; the best of a few runs is kept, the two sides
alternated so that a noisy host hits both.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import dataclass

import hypercall
import rumpvm
from rumpvm import PAGE_SIZE
from rumpvm.constants import PAGE_SHIFT
from rumpvm.page import VMPage
from rumpvm.pmap import Pmap

from . import MiB, Profile, Row, mib, pick, ratio_row

CLUSTER = 64  # pages per raw pwritev / preadv (the pagedaemon's CLUSTER_MAX)
OOM_TIMEOUT = 120.0  # a stalled allocation is a failure, not a figure


@dataclass
class Round:
    """One write + read-back round: seconds of each half, kernel counters."""

    write_s: float
    read_s: float
    pageouts: int = 0
    pageins: int = 0


def pattern(size: int) -> bytes:
    """`size` bytes, each page distinct: its page number in every 8 bytes."""
    return b"".join(i.to_bytes(8, "little") * (PAGE_SIZE // 8) for i in range(size // PAGE_SIZE))


def vm_round(data: bytes, limit: int) -> Round:
    """Write `data` into a fresh mapping under `limit`, read it back, check it."""
    size = len(data)
    chunks = [data[off:off + MiB] for off in range(0, size, MiB)]
    buf = bytearray(MiB)
    with rumpvm.Kernel(memlimit=limit, swap=2 * size, oom_timeout=OOM_TIMEOUT) as k:
        p = k.spawn(name="swapbench")
        a = p.mmap(size)
        addrs = [a + off for off in range(0, size, MiB)]
        s0 = k.stats()
        w, r = p.write, p.readinto
        t0 = time.perf_counter_ns()
        for va, chunk in zip(addrs, chunks):
            w(va, chunk)
        t1 = time.perf_counter_ns()
        bad = 0
        for va, chunk in zip(addrs, chunks):
            r(va, buf)
            bad += buf != chunk
        t2 = time.perf_counter_ns()
        s1 = k.stats()
        if bad:
            raise AssertionError(f"swap benchmark: {bad} MiB read back wrong")
        if s1["resident"] > limit:
            raise AssertionError("swap benchmark: resident memory above the limit")
    return Round((t1 - t0) / 1e9, (t2 - t1) / 1e9, s1["pageouts"] - s0["pageouts"], s1["pageins"] - s0["pageins"])


def raw_round(data: bytes) -> Round:
    """Write the pages of `data` from a host arena to a new swap file in
    CLUSTER-page pwritevs, read them back into the same pages, check them."""
    size = len(data)
    npages = size // PAGE_SIZE
    f = hypercall.SwapFile(None, size)
    arena = hypercall.anonmmap(size)
    try:
        arena.buf[:] = data
        addrs = [arena.addr + i * PAGE_SIZE for i in range(npages)]
        clusters = [(i * PAGE_SIZE, addrs[i:i + CLUSTER]) for i in range(0, npages, CLUSTER)]
        t0 = time.perf_counter_ns()
        for off, run in clusters:
            f.write_pages(off, run)
        t1 = time.perf_counter_ns()
        arena.buf[:] = bytes(size)
        t2 = time.perf_counter_ns()
        for off, run in clusters:
            f.read_pages(off, run)
        t3 = time.perf_counter_ns()
        if arena.buf != data:
            raise AssertionError("raw swap baseline: read back the wrong bytes")
    finally:
        hypercall.unmap(arena)
        f.close()
    return Round((t1 - t0) / 1e9, (t3 - t2) / 1e9)


def bookkeeping_floor(npages: int, limit_pages: int) -> Round:
    """The write and read-back halves of the round trip reduced to the
    per-page steps of a kernel whose resident pages are Python objects
    (rumpvm's VMPage, OrderedDict queue, dicts for the object and the
    pmap, a pv set), inlined: the least Python such a kernel runs a page."""
    pages: dict[int, VMPage] = {}
    swap: dict[int, int] = {}
    queue: OrderedDict[VMPage, None] = OrderedDict()
    pmap = Pmap()  # its translation dicts, used inline
    rd, wr = pmap.rd, pmap.wr
    free = list(range(limit_pages))
    buf = memoryview(bytearray(PAGE_SIZE))
    halves = []
    for write in (True, False):
        t0 = time.perf_counter_ns()
        for vpn in range(npages):
            if vpn in pages:
                continue
            if not free:  # evict the oldest page
                victim, _ = queue.popitem(last=False)
                for _, v in victim.pv:
                    del rd[v]
                    wr.pop(v, None)
                victim.pv.clear()
                del pages[victim.pindex]
                if victim.dirty:
                    swap[victim.pindex] = victim.pindex
                free.append(victim.frame)
            frame = free.pop()
            page = VMPage(None, vpn, frame, frame << PAGE_SHIFT, buf, 0)
            pages[vpn] = page
            queue[page] = None
            rd[vpn] = page
            page.pv.add((pmap, vpn))
            if write:
                wr[vpn] = page
            else:
                swap.get(vpn)
                page.dirty = False
            page.referenced = True
        halves.append((time.perf_counter_ns() - t0) / 1e9)
    return Round(halves[0], halves[1])


def swap_roundtrip(profile: Profile) -> list[Row]:
    """Write 4x the limit and read it back in order, vs raw pwritev + preadv."""
    size, limit = pick(profile, (2 * MiB, 512 << 10), (8 * MiB, 2 * MiB), (64 * MiB, 16 * MiB))
    reps = pick(profile, 1, 2, 3)
    data = pattern(size)
    npages = size // PAGE_SIZE
    vm_runs: list[Round] = []
    raw_runs: list[Round] = []
    for _ in range(reps):
        raw_runs.append(raw_round(data))
        vm_runs.append(vm_round(data, limit))
    vm = min(vm_runs, key=lambda r: r.write_s + r.read_s)
    raw = min(raw_runs, key=lambda r: r.write_s + r.read_s)
    floor = min((bookkeeping_floor(npages, limit // PAGE_SIZE) for _ in range(reps)),
                key=lambda r: r.write_s + r.read_s)
    ceiling_s = raw.write_s + raw.read_s + floor.write_s + floor.read_s
    wb = min(vm_runs, key=lambda r: r.write_s)
    rb = min(vm_runs, key=lambda r: r.read_s)
    return [
        ratio_row("swap_roundtrip",
                  f"write {mib(size)} under a {mib(limit)} limit, read back ({vm.pageouts} out, {vm.pageins} in)",
                  npages / (vm.write_s + vm.read_s), "pages/s", f"raw pwritev + preadv x{CLUSTER} pages",
                  npages / (raw.write_s + raw.read_s), 0.4, higher_is_better=True),
        ratio_row("swap_write", f"  (detail) the write alone ({wb.pageouts} out)", npages / wb.write_s, "pages/s",
                  f"raw pwritev x{CLUSTER}", npages / min(r.write_s for r in raw_runs), None, higher_is_better=True,
                  target="(detail)"),
        ratio_row("swap_read", f"  (detail) the read back alone ({rb.pageins} in)", npages / rb.read_s, "pages/s",
                  f"raw preadv x{CLUSTER}", npages / min(r.read_s for r in raw_runs), None, higher_is_better=True,
                  target="(detail)"),
        ratio_row("swap_ceiling", "  (detail) ceiling: raw I/O + page-object bookkeeping alone (bookkeeping_floor)",
                  npages / ceiling_s, "pages/s", f"raw pwritev + preadv x{CLUSTER} pages",
                  npages / (raw.write_s + raw.read_s), None, higher_is_better=True, target="(detail)"),
    ]


def random_read_ns(limit: int | None, wset: int, pages: list[int]) -> tuple[float, dict[str, int]]:
    """ns per 4 KiB p.read at the page indexes `pages` of a `wset`-byte
    mapping written once, and the counter deltas of the reads."""
    with rumpvm.Kernel(memlimit=limit if limit is not None else "unlimited", swap=2 * wset,
                       oom_timeout=OOM_TIMEOUT) as k:
        p = k.spawn(name="randread")
        a = p.mmap(wset)
        stamp = b"\x5a" * 64
        for off in range(0, wset, PAGE_SIZE):
            p.write(a + off, stamp)
        addrs = [a + i * PAGE_SIZE for i in pages]
        r = p.read
        s0 = k.stats()
        t0 = time.perf_counter_ns()
        for va in addrs:
            r(va, PAGE_SIZE)
        dt = time.perf_counter_ns() - t0
        s1 = k.stats()
        if limit is not None and s1["resident"] > limit:
            raise AssertionError("random reads: resident memory above the limit")
    return dt / len(addrs), {c: s1[c] - s0[c] for c in ("faults", "pageins", "pageouts")}


def random_reads(profile: Profile) -> list[Row]:
    """Random page reads over twice the limit vs the same with no limit."""
    limit = pick(profile, 512 << 10, 4 * MiB, 16 * MiB)
    naccess = pick(profile, 500, 5000, 20_000)
    reps = pick(profile, 1, 2, 3)
    wset = 2 * limit
    rng = random.Random(3)
    pages = [rng.randrange(wset // PAGE_SIZE) for _ in range(naccess)]
    limited: list[tuple[float, dict[str, int]]] = []
    free: list[float] = []
    for _ in range(reps):
        limited.append(random_read_ns(limit, wset, pages))
        free.append(random_read_ns(None, wset, pages)[0])
    ns, c = min(limited, key=lambda r: r[0])
    return [ratio_row("random_reads",
                      f"random 4 KiB reads over 2x the limit ({mib(wset)} under {mib(limit)}; {naccess} reads:"
                      f" {c['faults']} faults, {c['pageins']} in, {c['pageouts']} out)",
                      ns, "ns/read", "same, no limit", min(free), None)]


FIGURES = (swap_roundtrip, random_reads)
