"""Pools: fixed-size kernel bookkeeping items (map entries, objects, ...)
carved from whole page frames, so the bookkeeping counts against the limit.

A pool holds `npages` frames and hands out `perpage` items from each.  The
kernel primes a pool (`physmem.pool_prime`) before an operation starts,
sleeping for memory if needed, so `get` never fails or sleeps mid-operation.
`drain` returns the frames that no item needs (the seed's `pool_drain`,
called by the pagedaemon through its reclaim callbacks).

Lock: the kernel lock.  Invariant: inuse <= npages * perpage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import PAGE_SIZE
from .physmem import PhysMem


@dataclass
class Pool:
    name: str
    size: int
    physmem: PhysMem = field(repr=False)
    frames: list[int] = field(default_factory=list, repr=False)
    inuse: int = 0
    nget: int = 0
    nput: int = 0

    @property
    def perpage(self) -> int:
        return PAGE_SIZE // self.size

    @property
    def npages(self) -> int:
        return len(self.frames)

    def room(self) -> int:
        return len(self.frames) * self.perpage - self.inuse

    def grow(self, pagedaemon: bool = False) -> bool:
        """Add one frame; False when the limit allows none."""
        frame = self.physmem.alloc_frame(pagedaemon)
        if frame is None:
            return False
        self.frames.append(frame)
        return True

    def get(self) -> None:
        if self.room() <= 0 and not self.grow(pagedaemon=True):
            raise AssertionError(f"pool {self.name} used without priming")
        self.inuse += 1
        self.nget += 1

    def put(self) -> None:
        self.inuse -= 1
        self.nput += 1

    def drain(self) -> int:
        """Free frames beyond what the items in use need; returns frames freed."""
        need = -(-self.inuse // self.perpage)
        freed = 0
        while len(self.frames) > need:
            self.physmem.free_frame(self.frames.pop())
            freed += 1
        return freed
