"""The built-in demo workload: processes that map, write, fork, COW-write,
mprotect, share memory, sleep and exit, so that /vm changes while you watch.

`run_once(k)` runs one round and returns the processes it left alive
(used by `rumpvm demo`).  `DemoWorkload(k)` (used by `rumpvm mount --demo`,
under DEMO_MEMLIMIT with DEMO_SWAP) shows what rumpvm is for: its footprint
is larger than the memory limit, so the pagedaemon pages out, the swapper
swaps out the processes that sleep, and everything reads back intact:

- three writers keep 12 MiB each (36 MiB in all), rewriting and re-reading
  every page each round, and each round one of them forks a child that
  writes a quarter of the pages (copy-on-write) and exits;
- four sleepers touch 1 MiB each and sleep (S); after `maxslp` seconds the
  swapper takes them (W); each round one is woken (swapped back in), checks
  its memory and goes back to sleep.

The workload stops at `stop()` or when the kernel closes (ESHUTDOWN).
"""

from __future__ import annotations

import errno
import logging
import random
import threading

from .constants import INHERIT_SHARE, MAP_SHARED, PAGE_SIZE, PROT_READ
from .errors import VMError
from .kernel import Kernel
from .proc import Proc

log = logging.getLogger("rumpvm.demo")

DEMO_MEMLIMIT = "32M"
DEMO_SWAP = "128M"
WRITERS, WRITER_SIZE = 3, 12 << 20
SLEEPERS, SLEEPER_SIZE = 4, 1 << 20
CHUNK = 1 << 20  # bytes per call, so that stop() is prompt


def run_once(k: Kernel, rng: random.Random | None = None, keep: int = 3) -> list[Proc]:
    """One round: a parent with private, shared and read-only memory, a
    forked child that copies-on-write, a grandchild that exits."""
    rng = rng or random.Random(1)
    parent = k.spawn("demo-parent")
    heap = parent.mmap(64 * PAGE_SIZE)
    for i in range(0, 64, 2):
        parent.write(heap + i * PAGE_SIZE, f"parent page {i}\n".encode())
    shm_obj = k.create_object(16 * PAGE_SIZE)
    shm = parent.mmap(16 * PAGE_SIZE, flags=MAP_SHARED, obj=shm_obj)
    shm_obj.detach()  # the mapping holds it now
    parent.write(shm, b"shared hello\n")
    ro = parent.mmap(8 * PAGE_SIZE)
    parent.write(ro, b"read-only data\n")
    parent.mprotect(ro, 8 * PAGE_SIZE, PROT_READ)
    inherit = parent.mmap(4 * PAGE_SIZE)
    parent.minherit(inherit, 4 * PAGE_SIZE, INHERIT_SHARE)

    child = parent.fork("demo-child")
    child.write(heap, b"child wrote here (COW)\n")
    child.write(shm, b"child says hi\n")
    child.write(inherit, b"inherited shared\n")
    grandchild = child.fork("demo-grandchild")
    grandchild.write(heap + PAGE_SIZE * rng.randrange(64), b"grandchild\n")
    grandchild.exit()
    procs = [parent, child]
    for _ in range(max(0, keep - 2)):
        procs.append(child.fork("demo-worker"))
    return procs


class DemoWorkload:
    """The workload of the module docstring in a thread, one round per `period`."""

    def __init__(self, k: Kernel, period: float = 1.0, seed: int = 1, maxslp: float = 2.0) -> None:
        self.k = k
        self.period = period
        self.maxslp = maxslp
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo", daemon=True)
        self.rounds = 0

    def start(self) -> DemoWorkload:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _fill(self, p: Proc, addr: int, size: int, stamp: int) -> None:
        """Write every page of [addr, addr+size): its address and `stamp` first."""
        for off in range(0, size, CHUNK):
            if self._stop.is_set():
                return
            p.write(addr + off, b"".join(_page(addr + o, stamp) for o in range(off, off + CHUNK, PAGE_SIZE)))

    def _check(self, p: Proc, addr: int, size: int, stamp: int) -> None:
        """Read the pages back (paging them in) and compare."""
        for off in range(0, size, CHUNK):
            if self._stop.is_set():
                return
            data = p.read(addr + off, CHUNK)
            for o in range(0, CHUNK, PAGE_SIZE):
                if data[o:o + 32] != _page(addr + off + o, stamp)[:32]:
                    log.error("demo: %s page %#x reads back wrong: %r", p, addr + off + o, data[o:o + 32])

    def _run(self) -> None:
        k = self.k
        try:
            k.maxslp = self.maxslp
            run_once(k, self.rng)  # pids 1, 2, 4: shared memory, COW, read-only pages
            writers = [(p, p.mmap(WRITER_SIZE)) for p in (k.spawn("demo-writer") for _ in range(WRITERS))]
            sleepers = [(p, p.mmap(SLEEPER_SIZE)) for p in (k.spawn("demo-sleeper") for _ in range(SLEEPERS))]
            for p, a in writers:
                self._fill(p, a, WRITER_SIZE, 0)
            for p, a in sleepers:
                self._fill(p, a, SLEEPER_SIZE, 0)
                p.sleep()
            while not self._stop.is_set():
                self.rounds += 1
                n = self.rounds
                for p, a in writers:  # more than the limit: pageouts, pageins
                    self._check(p, a, WRITER_SIZE, n - 1)
                    self._fill(p, a, WRITER_SIZE, n)
                parent, a = writers[n % WRITERS]
                child = parent.fork("demo-cow")
                quarter = WRITER_SIZE // 4
                self._fill(child, a, quarter, -n)  # copies-on-write a quarter
                self._check(child, a, quarter, -n)
                self._check(parent, a, WRITER_SIZE, n)  # the parent's pages are untouched
                child.exit()
                sleeper, a = sleepers[n % SLEEPERS]
                sleeper.wake()  # swapped back in if it was out
                self._check(sleeper, a, SLEEPER_SIZE, 0)
                sleeper.sleep()
                self._stop.wait(self.period)
        except VMError as e:
            if e.errno != errno.ESHUTDOWN:  # ESHUTDOWN: the kernel closed, the end
                log.warning("demo workload stopped: %s", e)


def _page(addr: int, stamp: int) -> bytes:
    """The contents the demo writes to the page at `addr` in round `stamp`."""
    return f"page {addr:#x} round {stamp}\n".encode().ljust(PAGE_SIZE, b".")
