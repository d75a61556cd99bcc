"""The pagedaemon (uvm_pageout): the thread that frees memory.

It sleeps on `cv` until woken — by an allocation that left fewer than
`freemin` pages free, by a thread waiting for memory (`Kernel.memwait`), or
by a lowered limit — and then scans until `freetarg` pages are free again:
it drains the kernel pools through the registered reclaim callbacks, asks
the replacement policy for candidates, frees clean pages whose swap copy is
valid, and writes dirty pages to swap in clusters of neighbouring pages
(same object, consecutive pindex, consecutive slots: one pwritev each).
Then it wakes the waiters (`Kernel.mem_cv`).

It never waits for memory itself: page-out needs no allocation (the I/O
gathers straight from the frames), and the PDRESERVE frames of physmem are
there for anything else it might need.  During the write the pages are busy
and unmapped and the kernel lock is dropped; a thread that touches one
sleeps on it (`page_cv`) and pages it back in after.

Lock: the kernel lock, except across swap I/O.  Knobs (`freemin`,
`freetarg`, `policy`) may be changed at any time.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import TYPE_CHECKING, Callable

from .constants import PAGE_SIZE
from .errors import VMError
from .page import VMPage
from .pmap import page_remove_all
from .policy import POLICIES, Policy

if TYPE_CHECKING:
    from .kernel import Kernel

log = logging.getLogger("rumpvm.pagedaemon")

CLUSTER_MAX = 64  # pages per pageout write


class Pagedaemon:
    def __init__(self, k: "Kernel", policy: str) -> None:
        self.k = k
        self.cv = threading.Condition(k.lock)
        self._policy = self._make_policy(policy)
        self.freemin = 0
        self.freetarg = 0
        self.tuned = False  # knobs set by hand are kept across limit changes
        self.state = "sleeping"
        self.wanted = False
        # A scan that freed nothing stalls the daemon until something changes
        # (a page freed elsewhere, a knob or limit changed): waiters then
        # sleep out their timeout instead of spinning against it.
        self.stalled = False
        self.stopping = False
        self.reclaimers: list[Callable[[], int]] = []
        self.thread = threading.Thread(target=self._run, name="pagedaemon", daemon=True)
        self.autotune()

    # -- knobs ----------------------------------------------------------------

    @staticmethod
    def _make_policy(name: object) -> Policy:
        if not isinstance(name, str) or name.strip() not in POLICIES:
            raise VMError(errno.EINVAL, f"unknown policy {name!r}; one of {', '.join(POLICIES)}")
        return POLICIES[name.strip()]()

    @property
    def policy(self) -> str:
        return self._policy.name

    @policy.setter
    def policy(self, name: str) -> None:
        with self.k.lock:
            self._policy = self._make_policy(name)
            self.k.touch = self._policy.touch_hook(self.k.queues)

    def set_knobs(self, freemin: int | None = None, freetarg: int | None = None) -> None:
        """Set freemin/freetarg (pages); EINVAL unless 0 <= freemin <= freetarg
        < limit pages.  Nothing changes on error."""
        with self.k.lock:
            fmin = self.freemin if freemin is None else freemin
            ftarg = self.freetarg if freetarg is None else freetarg
            for v in (fmin, ftarg):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError("freemin/freetarg must be int")
            limit = self.k.physmem.limit
            if not 0 <= fmin <= ftarg or ftarg < 1 or (limit is not None and ftarg >= limit // PAGE_SIZE):
                raise VMError(errno.EINVAL, f"need 0 <= freemin <= freetarg, 1 <= freetarg < limit pages;"
                                            f" got freemin={fmin} freetarg={ftarg}")
            self.freemin, self.freetarg = fmin, ftarg
            self.tuned = True
            self.stalled = False
            self.wake()

    def autotune(self) -> None:
        """Defaults from the limit: wake at 95% full, scan back to 90%."""
        if self.tuned:
            return
        limit = self.k.physmem.limit
        pages = (limit // PAGE_SIZE) if limit is not None else 0
        self.freemin = max(4, pages // 20) if pages else 0
        self.freetarg = max(self.freemin + 4, pages // 10) if pages else 1

    # -- the thread ------------------------------------------------------------

    def start(self) -> None:
        self.k.touch = self._policy.touch_hook(self.k.queues)
        self.thread.start()

    def stop(self) -> None:
        with self.k.lock:
            self.stopping = True
            self.cv.notify_all()
        if self.thread.is_alive():
            self.thread.join()

    def wake(self) -> None:
        """Ask for a scan (requires the kernel lock)."""
        if not self.wanted:
            self.wanted = True
            self.cv.notify()

    def shortage(self) -> int:
        """Pages to free to reach freetarg (and to get back under the limit)."""
        pm = self.k.physmem
        if pm.limit is None:
            return 0
        return self.freetarg - pm.avail_pages() if pm.avail_pages() < self.freetarg else 0

    def _run(self) -> None:
        k = self.k
        with k.lock:
            while not self.stopping:
                if not self.wanted:
                    self.cv.wait()
                    continue
                self.wanted = False
                k.uvmexp.pdwoke += 1
                if self.shortage() > 0:
                    self.state = "scanning"
                    before = k.physmem.resident
                    try:
                        self.scan()
                    except Exception:  # a daemon that dies would hang every waiter
                        log.exception("pagedaemon scan failed")
                    self.state = "sleeping"
                    self.stalled = k.physmem.resident >= before and self.shortage() > 0
                k.mem_cv.notify_all()

    def scan(self) -> None:
        k = self.k
        k.uvmexp.pdscans += 1
        short = self.shortage()
        for reclaim in self.reclaimers:
            short -= reclaim()
        if short <= 0:
            return
        batch: list[VMPage] = []
        for page in self._policy.victims(k, short):
            if page.busy or page.wire_count or not page.queue:
                if page.queue:
                    k.queues.enqueue(page, page.queue)
                continue
            obj = page.obj
            assert obj is not None
            if not page.dirty and page.pindex in obj.swap:
                page_remove_all(page)
                k.page_free(page)
                k.uvmexp.pdfreed += 1
                short -= 1
            elif k.swap is not None and (k.swap.inuse < k.swap.nslots or page.pindex in obj.swap):
                page.busy = True
                page_remove_all(page)
                k.queues.dequeue(page)
                obj.pip += 1
                batch.append(page)
                short -= 1
                if len(batch) >= CLUSTER_MAX:
                    self.flush(batch)
                    batch = []
            else:
                k.queues.enqueue(page, page.queue)  # cannot clean it: look elsewhere
                continue
            if short <= 0:
                break
        self.flush(batch)

    def flush(self, batch: list[VMPage]) -> None:
        """Write busy pages to swap in clusters and free them."""
        k = self.k
        swap = k.swap
        assert swap is not None or not batch
        batch.sort(key=lambda p: (p.obj.id, p.pindex))  # type: ignore[union-attr]
        i = 0
        while i < len(batch):
            j = i + 1
            while (j < len(batch) and batch[j].obj is batch[i].obj
                   and batch[j].pindex == batch[j - 1].pindex + 1):
                j += 1
            run = batch[i:j]
            for page in run:  # a re-dirtied page gets a fresh slot
                old = page.obj.swap.pop(page.pindex, None)  # type: ignore[union-attr]
                if old is not None:
                    k.swap_free(old)
            got = swap.alloc(len(run))  # type: ignore[union-attr]
            if got is None:
                self._abort(batch[i:])
                return
            first, n = got
            run = run[:n]
            self._write(first, run)
            i += n

    def _write(self, first: int, run: list[VMPage]) -> None:
        k = self.k
        k.lock.release()
        err: OSError | None = None
        try:
            k.swap.write(first, [p.addr for p in run])  # type: ignore[union-attr]
        except OSError as ex:
            err = ex
        finally:
            k.lock.acquire()
        for n, page in enumerate(run):
            obj = page.obj
            page.busy = False
            if page.wanted:
                page.wanted = False
                k.page_cv.notify_all()
            if page.released or obj is None:
                k.swap_free(first + n)
                k.page_free(page)
                continue
            obj.pip -= 1
            if err is not None:
                k.swap_free(first + n)
                k.queues.enqueue(page, 1)
                continue
            obj.swap[page.pindex] = first + n
            k.page_free(page)
            k.uvmexp.pageouts += 1
            k.uvmexp.pdfreed += 1
        if err is not None:
            log.error("swap write failed: %s", err)

    def _abort(self, pages: list[VMPage]) -> None:
        """Swap is full: give the pages back to the active queue."""
        k = self.k
        for page in pages:
            page.busy = False
            if page.obj is not None:
                page.obj.pip -= 1
            if page.released or page.obj is None:
                k.page_free(page)
            else:
                k.queues.enqueue(page, 1)
            if page.wanted:
                page.wanted = False
                k.page_cv.notify_all()

    def status(self) -> dict[str, str | int]:
        k = self.k
        with k.lock:
            return {"state": self.state, "policy": self.policy, "freemin": self.freemin,
                    "freetarg": self.freetarg, "free": k.free_pages(),
                    "wakeups": k.uvmexp.pdwoke, "scans": k.uvmexp.pdscans,
                    "pageouts": k.uvmexp.pageouts, "freed": k.uvmexp.pdfreed,
                    "reactivated": k.uvmexp.pdreact}
