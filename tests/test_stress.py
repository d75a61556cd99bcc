"""Long stress run under a memory limit (excluded by default).

8 threads, each owning a few processes, do random mmap / munmap / fork /
exit / write / read, and verify every read against the contents each
thread expects for its own processes.  Memory is about twice the limit, so
pages go through swap all the time.  `k.check()` runs every 5 s while the
workers page (it holds at any instant, see
test_pagedaemon.py::test_check_passes_while_paging) and at the end; the
run ends after the duration or at the first error.

Run: scripts/run-tests -m stress tests/test_stress.py
Duration: RUMPVM_STRESS_SECONDS (default 120).
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time

import pytest
from pages import settle

import rumpvm
from rumpvm import PAGE_SIZE

M = 1 << 20
NTHREADS = 8
PAGES_PER_THREAD = 1200     # mapped pages a thread may hold over all its procs
MAX_PROCS = 4


def page_data(seed: int) -> bytes:
    return struct.pack("<Q", seed) + bytes([seed & 0xFF or 1]) * (PAGE_SIZE - 8)


class Model:
    """One process as the test sees it: page va -> expected page (None = zeros)."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.pages: dict[int, bytes | None] = {}


@pytest.mark.stress
def test_stress_random_workload_under_limit():
    duration = float(os.environ.get("RUMPVM_STRESS_SECONDS", "120"))
    with rumpvm.Kernel(memlimit="16M", swap="512M", oom_timeout=10) as k:
        stop = threading.Event()
        errors: list[str] = []
        ops = [0] * NTHREADS
        over: list[int] = []
        zero = bytes(PAGE_SIZE)

        def worker(t: int) -> None:
            rng = random.Random(1000 + t)
            seed = t << 40
            procs = [Model(k.spawn(name=f"t{t}"))]

            def total() -> int:
                return sum(len(m.pages) for m in procs)

            def verify(m: Model, va: int) -> None:
                want = m.pages[va]
                got = m.proc.read(va, PAGE_SIZE)
                if got != (zero if want is None else want):
                    errors.append(f"thread {t} pid {m.proc.pid} va {va:#x}: "
                                  f"got {got[:8].hex()} want {(want or zero)[:8].hex()}")
                    stop.set()

            try:
                while not stop.is_set():
                    ops[t] += 1
                    m = rng.choice(procs)
                    op = rng.random()
                    if op < 0.12 and total() < PAGES_PER_THREAD - 64:
                        npages = rng.randint(1, 64)
                        a = m.proc.mmap(npages * PAGE_SIZE)
                        for i in range(npages):
                            assert a + i * PAGE_SIZE not in m.pages
                            m.pages[a + i * PAGE_SIZE] = None
                    elif op < 0.20 and m.pages:
                        va = rng.choice(list(m.pages))
                        npages = rng.randint(1, 16)
                        m.proc.munmap(va, npages * PAGE_SIZE)
                        for i in range(npages):
                            m.pages.pop(va + i * PAGE_SIZE, None)
                    elif op < 0.23 and len(procs) < MAX_PROCS and total() * 2 < PAGES_PER_THREAD:
                        child = Model(m.proc.fork())
                        child.pages = dict(m.pages)
                        procs.append(child)
                    elif op < 0.25 and len(procs) > 1:
                        m.proc.exit()
                        procs.remove(m)
                    elif op < 0.70 and m.pages:
                        va = rng.choice(list(m.pages))
                        for i in range(rng.randint(1, 8)):
                            v = va + i * PAGE_SIZE
                            if v not in m.pages:
                                break
                            seed += 1
                            d = page_data(seed)
                            m.proc.write(v, d)
                            m.pages[v] = d
                    elif m.pages:
                        va = rng.choice(list(m.pages))
                        for i in range(rng.randint(1, 8)):
                            v = va + i * PAGE_SIZE
                            if v not in m.pages:
                                break
                            verify(m, v)
                    if ops[t] % 2000 == 0:  # a full sweep now and then
                        for mm in procs:
                            for v in list(mm.pages):
                                verify(mm, v)
                    if k.physmem.resident > k.memlimit:
                        over.append(k.physmem.resident)
                # Final full verification.
                for mm in procs:
                    for v in list(mm.pages):
                        verify(mm, v)
            except BaseException as ex:  # noqa: BLE001
                errors.append(f"thread {t}: {type(ex).__name__}: {ex}")
                stop.set()

        threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(NTHREADS)]
        for th in threads:
            th.start()
        end = time.monotonic() + duration
        checks = 0
        # The run lasts `duration` (its definition, not a wait for a state);
        # a failing worker sets `stop`, which ends the wait at once.
        while time.monotonic() < end and not stop.is_set():
            if stop.wait(min(5.0, max(0.0, end - time.monotonic()))):
                break
            try:
                k.check()
                checks += 1
            except AssertionError as ex:
                errors.append(str(ex))
                stop.set()
        stop.set()
        for th in threads:
            th.join(timeout=120)
            assert not th.is_alive(), "a worker hung"
        assert errors == [], errors[:10]
        assert over == []
        settle(k)
        st = k.stats()
        assert st["pageouts"] > 0 and st["pageins"] > 0
        assert st["forks"] > 0 and st["exits"] > 0
        assert sum(ops) > 1000
        k.check()
        for p in k.procs():
            p.exit()
        settle(k)
        assert k.stats()["swpginuse"] == 0
        k.check()
