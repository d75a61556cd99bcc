"""Concurrency regression tests for the inspection reads and for close().

Defect guarded: the inspection reads (`p.peek`, `k.object_peek`,
`/vm/proc/<pid>/mem`, `/vm/objects/<id>/data`, `p.coredump_segments()`)
now and then returned another page's bytes while pages were being paged in
or out: a page under page-in (`fake`) was read from its frame, which still
held whatever the frame had held before.  The kernel now reads such a page
from its swap slot.  Here threads keep paging an 8 MiB mapping through a
2 MiB limit while the inspection reads check every byte of every page they
return against the page's own pattern (`pages.pattern`, which names the
page in its first 16 bytes, so a wrong page is reported by name).

Half of the inspected ranges start at (or just before) the page a paging
thread is about to fault in, so reads land on pages under I/O far more
often than uniform picks would.  Every test runs a bounded number of
operations, never a duration, and waits only for states (events, the
pagedaemon idle).  close() racing busy threads runs in a child interpreter,
so a crash there is a failure of this test, not a lost test run; in two
rounds of three it closes while a page-in has the lock dropped (it spins,
a bounded number of looks, on the kernel's `io_pages` holding a fake page),
the window where freeing host memory under a thread would crash it.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pages import fill, pattern, settle

import rumpvm
from rumpvm import PAGE_SIZE

P = PAGE_SIZE
NPAGES = 2048  # 8 MiB mapped, four times the 2 MiB limit
TAG = 0x7EA1
TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
JOIN = 60.0  # bound on a thread's end after it was told to stop (never expected to be reached)
MIN_PAGING = 1000  # page-ins and page-outs that must happen while the inspection reads run


# -- helpers ------------------------------------------------------------------------------


def describe(kind: str, first: int, got: bytes, pats: list[bytes]) -> list[str]:
    """One line per page of `got` (pages first, first+1, ...) that is not its
    pattern: where it differs and whose bytes it holds instead."""
    out = []
    for j in range((len(got) + P - 1) // P):
        pg = first + j
        g, want = got[j * P:(j + 1) * P], pats[pg]
        if g == want:
            continue
        if len(g) < P:
            out.append(f"{kind}: page {pg}: short, {len(g)} bytes")
            continue
        off = next(i for i in range(P) if g[i] != want[i])
        tag, src = struct.unpack("<QQ", g[:16])
        out.append(f"{kind}: page {pg} differs from byte {off}: got {g[off:off + 16].hex()} "
                   f"want {want[off:off + 16].hex()}; its header says tag {tag:#x} page {src}")
    return out


class Pager:
    """Threads that keep paging the mapping: each reads random pages (and
    runs of 8, which trigger read-ahead) through `p.read` and writes a third
    of them back with their own pattern, so pages are dirty and must be
    written to swap again.  `hot[w]` is the page thread w is about to fault;
    with `shared` (a file mapped by another process too) it is also stored
    there, as the 8-byte little-endian word w."""

    def __init__(self, p: rumpvm.Proc, a: int, pats: list[bytes], nthreads: int = 2,
                 shared: mmap.mmap | None = None) -> None:
        self.p, self.a, self.pats, self.shared = p, a, pats, shared
        self.stop = threading.Event()
        self.started = [threading.Event() for _ in range(nthreads)]
        self.hot = [0] * nthreads
        self.bad: list[str] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._body, args=(w,), daemon=True) for w in range(nthreads)]

    def _body(self, w: int) -> None:
        rng = random.Random(1000 + w)
        p, a, pats = self.p, self.a, self.pats
        try:
            while not self.stop.is_set():
                first = rng.randrange(NPAGES)
                for pg in range(first, min(NPAGES, first + rng.choice((1, 1, 8)))):
                    self.hot[w] = pg
                    if self.shared is not None:
                        struct.pack_into("<Q", self.shared, 8 * w, pg)
                    got = p.read(a + pg * P, P)
                    if got != pats[pg]:
                        self.bad.extend(describe(f"p.read by pager {w}", pg, got, pats))
                    if rng.random() < 0.34:
                        p.write(a + pg * P, pats[pg])
                self.started[w].set()
        except BaseException as e:
            self.errors.append(f"pager {w}: {e!r}")
        finally:
            self.started[w].set()

    def __enter__(self) -> Pager:
        for t in self.threads:
            t.start()
        for ev in self.started:
            assert ev.wait(JOIN), "a pager thread never finished its first round"
        assert not self.errors, self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(JOIN)
        assert not any(t.is_alive() for t in self.threads), "a pager thread did not stop"

    def pick(self, rng: random.Random) -> tuple[int, int]:
        """(first page, page count) of a range to inspect: half the time
        around a page being faulted in now (read-ahead pages follow it)."""
        if rng.random() < 0.5:
            first = max(0, self.hot[rng.randrange(len(self.hot))] - rng.randrange(2))
        else:
            first = rng.randrange(NPAGES)
        return first, min(rng.randint(1, 4), NPAGES - first)


def populate(k: rumpvm.Kernel) -> tuple[rumpvm.Proc, int, int, int, list[bytes]]:
    """A process with NPAGES pattern pages; returns (proc, address, object
    id, object offset of the address, the page patterns)."""
    p = k.spawn(name="paged")
    a = p.mmap(NPAGES * P)
    fill(p, a, NPAGES, TAG)
    settle(k)
    (e,) = [e for e in p.maps() if e.start <= a < e.end]
    assert e.object is not None and e.end - a >= NPAGES * P
    return p, a, e.object, e.offset + (a - e.start), [pattern(TAG, i) for i in range(NPAGES)]


@pytest.fixture
def paging_kernel() -> Iterator[rumpvm.Kernel]:
    with rumpvm.Kernel(memlimit="2M", swap="32M") as k:
        yield k


def paging_counts(k: rumpvm.Kernel) -> tuple[int, int]:
    s = k.stats()
    return s["pageins"], s["pageouts"]


# -- 1: in-process inspection reads under paging ------------------------------------------------

PEEKS = 20_000  # inspection reads in all, split between the main thread and one more
COREDUMP_EVERY = 1000  # every 1000th read is a whole coredump_segments() (all 2048 pages)


def test_inspection_reads_never_see_another_page_while_paging(paging_kernel: rumpvm.Kernel) -> None:
    k = paging_kernel
    p, a, oid, objoff, pats = populate(k)
    assert paging_counts(k)[1] > 0, "filling 8 MiB under a 2 MiB limit wrote nothing to swap"
    bad: list[str] = []
    errors: list[str] = []
    dumps = [0]

    def check_coredump() -> None:
        segs = [s.runs for s in p.coredump_segments() if s.entry.start <= a < s.entry.end]
        assert len(segs) == 1, f"the mapping is not one coredump segment: {len(segs)}"
        seen = 0
        for addr, data in segs[0]:
            first = (addr - a) // P
            assert (addr - a) % P == 0 and 0 <= first and first + len(data) // P <= NPAGES, hex(addr)
            bad.extend(describe("coredump_segments", first, data, pats))
            seen += len(data) // P
        if seen != NPAGES:
            bad.append(f"coredump_segments: {seen} of {NPAGES} written pages in its runs")
        dumps[0] += 1

    def inspect(count: int, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(count):
                if i % COREDUMP_EVERY == COREDUMP_EVERY - 1:
                    check_coredump()
                    continue
                first, n = pager.pick(rng)
                if rng.random() < 0.5:
                    bad.extend(describe("p.peek", first, p.peek(a + first * P, n * P), pats))
                else:
                    got = k.object_peek(oid, objoff + first * P, n * P)
                    bad.extend(describe("k.object_peek", first, got, pats))
                if len(bad) > 20:
                    return
        except BaseException as e:
            errors.append(f"inspector {seed}: {e!r}")

    with Pager(p, a, pats) as pager:
        before = paging_counts(k)
        helper = threading.Thread(target=inspect, args=(PEEKS // 2, 2), daemon=True)
        helper.start()
        inspect(PEEKS - PEEKS // 2, 1)
        helper.join(JOIN)
        assert not helper.is_alive(), "the inspecting thread did not finish"
        after = paging_counts(k)
    assert errors == [] and pager.errors == [], errors + pager.errors
    assert bad == [] and pager.bad == [], "\n".join((bad + pager.bad)[:10])
    assert dumps[0] == PEEKS // COREDUMP_EVERY
    pageins, pageouts = after[0] - before[0], after[1] - before[1]
    assert pageins >= MIN_PAGING and pageouts >= MIN_PAGING, \
        f"too little paging during the reads to test anything: {pageins} page-ins, {pageouts} page-outs"
    settle(k)
    assert [i for i in range(NPAGES) if p.peek(a + i * P, P) != pats[i]] == []
    k.check()


# -- 2: the same through a real FUSE mount -------------------------------------------------------

FUSE_READS = 3000

_READER = r"""
import json, mmap, os, random, sys
from pages import pattern
from rumpvm import PAGE_SIZE as P
mem, data, hotfile, a, objoff, npages, tag, count = *sys.argv[1:4], *map(int, sys.argv[4:9])
rng = random.Random(3)
fds = {"mem": os.open(mem, os.O_RDONLY), "data": os.open(data, os.O_RDONLY)}
with open(hotfile, "rb") as f:
    hot = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
bad, pages = [], 0
for _ in range(count):
    which = rng.choice(("mem", "data"))
    if rng.random() < 0.5:  # around a page a pager thread is faulting in now
        first = max(0, int.from_bytes(hot[8 * rng.randrange(2):][:8], "little") - rng.randrange(2))
    else:
        first = rng.randrange(npages)
    n = min(rng.randint(1, 16), npages - first)
    off = (a if which == "mem" else objoff) + first * P
    got = os.pread(fds[which], n * P, off)
    if len(got) != n * P:
        bad.append(f"{which}: read of {n} pages at page {first} returned {len(got)} bytes")
    for j in range(len(got) // P):
        g, want = got[j * P:(j + 1) * P], pattern(tag, first + j)
        pages += 1
        if g != want:
            o = next(i for i in range(P) if g[i] != want[i])
            bad.append(f"{which}: page {first + j} differs from byte {o}: got {g[o:o + 16].hex()} "
                       f"want {want[o:o + 16].hex()}; its header says tag {int.from_bytes(g[:8], 'little'):#x} "
                       f"page {int.from_bytes(g[8:16], 'little')}")
    if len(bad) > 20:
        break
print(json.dumps({"bad": bad, "pages": pages}))
"""


@pytest.mark.timeout(120)
def test_vm_mem_and_data_reads_never_see_another_page_while_paging(
        paging_kernel: rumpvm.Kernel, tmp_path: Path) -> None:
    from fusemount import mounted

    k = paging_kernel
    p, a, oid, objoff, pats = populate(k)
    hotfile = tmp_path / "hot"
    hotfile.write_bytes(bytes(16))
    with open(hotfile, "r+b") as f:
        shared = mmap.mmap(f.fileno(), 16)
    with mounted(k, tmp_path / "vm") as root, Pager(p, a, pats, shared=shared):
        before = paging_counts(k)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (TESTS, os.environ.get("PYTHONPATH")))))
        r = subprocess.run(
            [sys.executable, "-c", _READER, str(root / "proc" / str(p.pid) / "mem"),
             str(root / "objects" / str(oid) / "data"), str(hotfile), str(a), str(objoff), str(NPAGES), str(TAG),
             str(FUSE_READS)],
            capture_output=True, text=True, timeout=55, cwd=REPO, env=env)
        after = paging_counts(k)
    assert r.returncode == 0, f"reader failed (rc {r.returncode}): {r.stderr[-1500:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bad"] == [], "\n".join(out["bad"][:10])
    assert out["pages"] >= FUSE_READS, out
    pageins, pageouts = after[0] - before[0], after[1] - before[1]
    assert pageins >= MIN_PAGING and pageouts >= MIN_PAGING, \
        f"too little paging during the reads to test anything: {pageins} page-ins, {pageouts} page-outs"
    k.check()


# -- 3: close() racing threads inside the kernel ---------------------------------------------------

CLOSE_ROUNDS = 30

_CLOSE_RACE = r"""
import errno, faulthandler, gc, json, sys, threading
faulthandler.enable()
sys.setswitchinterval(1e-4)  # more thread switches, so close() meets calls at more points
import rumpvm
from rumpvm import PAGE_SIZE as P, VMError

rounds, join = int(sys.argv[1]), float(sys.argv[2])
bad, eshutdown, in_pagein = [], 0, 0
for rnd in range(rounds):
    k = rumpvm.Kernel(memlimit="1M", swap="8M")
    procs = [k.spawn(name=f"t{i}") for i in range(4)]
    looping = [threading.Event() for _ in range(4)]
    out = [None] * 4

    def body(i, p):
        n = 96
        data = bytes([i + 1]) * (n * P)
        try:
            a = p.mmap(n * P)
            p.write(a, data)
            while True:  # only close() ends this loop: every call then raises ESHUTDOWN
                if i == 0:
                    p.write(a, data)
                    got = p.read(a, n * P)
                    if got != data:
                        out[i] = ("wrong data", next(j for j in range(len(got)) if got[j] != data[j]) // P)
                        return
                elif i == 1:
                    p.write(a + (rnd % n) * P, data[:P])
                    c = p.fork()
                    c.read(a, 4 * P)
                    c.write(a, b"child")
                    c.exit()
                elif i == 2:
                    b = p.mmap(16 * P)
                    p.write(b, data[:16 * P])
                    p.read(a, n * P)
                    p.munmap(b, 16 * P)
                else:
                    for j in range(n):
                        p.write(a + j * P, data[:P])
                    p.readinto(a, bytearray(n * P))
                looping[i].set()
        except VMError as e:
            out[i] = ("VMError", e.errno, repr(e))
        except BaseException as e:
            out[i] = (type(e).__name__, getattr(e, "errno", None), repr(e))
        else:
            out[i] = ("ok",)
        finally:
            looping[i].set()

    ts = [threading.Thread(target=body, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in ts:
        t.start()
    for ev in looping:
        ev.wait(join)
    if rnd % 3:  # close while a thread reads swap with the lock dropped (a page-in: fake pages)
        for _ in range(1_000_000):
            if any(pg.fake for pg in list(k.io_pages)):
                in_pagein += 1
                break
    early = [(i, out[i]) for i in range(4) if out[i] is not None]
    if early:  # a thread ended before close(): the race was not run
        bad.append((rnd, "ended before close", early))
        k.close()
        break
    k.close()
    for i, t in enumerate(ts):
        t.join(join)
        if t.is_alive():
            out[i] = ("still running after close()",)
    for i, o in enumerate(out):
        if o is not None and o[0] == "VMError" and o[1] == errno.ESHUTDOWN:
            eshutdown += 1
        elif o is None or o[0] != "ok":
            bad.append((rnd, i, o))
    if bad:
        break  # later rounds would only repeat it
    del k, procs, ts
    gc.collect()
print(json.dumps({"bad": bad, "eshutdown": eshutdown, "in_pagein": in_pagein}))
sys.stdout.flush()
"""


@pytest.mark.timeout(120)
def test_close_while_four_threads_are_busy_inside_the_kernel() -> None:
    """30 rounds in a child interpreter: a crash (signal) or a hang there is
    a failure here.  The loops never end by themselves, so every thread must
    end with ESHUTDOWN from close(); anything else (another error, wrong
    data, still running) fails."""
    try:
        r = subprocess.run([sys.executable, "-c", _CLOSE_RACE, str(CLOSE_ROUNDS), str(JOIN / 2)],
                           capture_output=True, text=True, timeout=100, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"close() racing busy threads hung the process: {e.stderr!r:.1500}")
    assert r.returncode == 0, f"the process died (rc {r.returncode}): {r.stderr[-2000:]}"
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bad"] == [], f"threads ended other than normally or with ESHUTDOWN: {out['bad'][:5]}"
    # No thread may stop by itself before close(), so every one of them must
    # have met close() (a call raising ESHUTDOWN) in every round.
    assert out["eshutdown"] == 4 * CLOSE_ROUNDS, out
    assert out["in_pagein"] >= CLOSE_ROUNDS // 3, f"close() seldom met a page-in in progress: {out}"

