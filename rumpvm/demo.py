"""The built-in demo workload: processes that map, write, fork, COW-write,
mprotect, share memory, sleep and exit, so that /vm changes while you watch.

`run_once(k)` runs one round and returns the processes it left alive
(used by `rumpvm demo`); `DemoWorkload(k)` repeats rounds in a background
thread until stopped (used by `rumpvm mount --demo`).
"""

from __future__ import annotations

import logging
import random
import threading

from .constants import INHERIT_SHARE, MAP_SHARED, PAGE_SIZE, PROT_READ
from .errors import VMError
from .kernel import Kernel
from .proc import Proc

log = logging.getLogger("rumpvm.demo")


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
    """Rounds of `run_once` in a thread; each round's processes live a few
    seconds, then exit, so fork/exit and COW show up in /vm over time."""

    def __init__(self, k: Kernel, period: float = 2.0, seed: int = 1) -> None:
        self.k = k
        self.period = period
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

    def _run(self) -> None:
        generations: list[list[Proc]] = []
        try:
            while not self._stop.is_set():
                generations.append(run_once(self.k, self.rng))
                self.rounds += 1
                for p in generations[-1]:
                    a = p.mmap(PAGE_SIZE * self.rng.randrange(1, 32))
                    p.write(a, f"{p.name} {p.pid} round {self.rounds}\n".encode())
                # The first round lives on (so /vm/proc/1 is always there);
                # later rounds exit after two more.
                if len(generations) > 3:
                    for p in generations.pop(1):
                        if p.alive:
                            p.exit()
                self._stop.wait(self.period)
        except VMError as e:
            if not self.k.closed:
                log.warning("demo workload stopped: %s", e)
