"""The pagedaemon (uvm_pageout): the thread that frees memory.

It sleeps on `cv` until woken — by an allocation that left fewer than
`freemin` pages free, by a thread waiting for memory (`physmem.memwait`), or
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

A failed swap write (EIO, ENOSPC, short) loses nothing: the run's slots
are freed and its pages go back to the active queue, still dirty.  The
first failure of a streak is logged (one line), the rest of the streak
only counted, and the recovery logged.  A scan that freed nothing because
its writes failed is no proof that nothing can be freed (the swap device
may recover), so instead of stalling for good the daemon retries it every
`PAGEOUT_RETRY` seconds (at most a quarter of oom_timeout) while memory
stays short, as BSD's pagedaemon wakes on a timer; waiters still get
OutOfMemory after oom_timeout if no retry succeeds.

Lock: the kernel lock, except across swap I/O.  Knobs (`freemin`,
`freetarg`, `policy`) may be changed at any time.  The thread holds its
Pagedaemon (and so the kernel) only weakly while it sleeps, so a kernel
dropped without close() can be collected; its finalizer stops the thread
through `stop_daemon`.
"""

from __future__ import annotations

import errno
import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import swapper, window
from .constants import PAGE_SIZE
from .errors import VMError
from .page import ACTIVE, VMPage
from .physmem import PDRESERVE_PAGES, page_free, pageable_again, swap_free
from .pmap import page_remove_all
from .policy import POLICIES, Policy
from .resource import RLIMIT_RSS

if TYPE_CHECKING:
    from .kernel import Kernel
    from .object import VMObject

log = logging.getLogger("rumpvm.pagedaemon")

CLUSTER_MAX = 64  # pages per pageout write
PAGEOUT_RETRY = 0.25  # seconds between retries of a scan whose swap writes failed


class Pagedaemon:
    def __init__(self, k: Kernel, policy: str) -> None:
        self.k = k
        self.cv = threading.Condition(k.lock)
        self._policy = self._make_policy(policy)
        self._freemin = 0
        self._freetarg = 0
        self.tuned = False  # knobs set by hand are kept across limit changes
        self.state = "sleeping"
        self.scanning = False  # a scan is running (the daemon's or a direct reclaim)
        self.ctl = _Control()
        # A scan that freed nothing stalls the daemon until something changes
        # (memory freed anywhere, busy or wired pages pageable again, a knob
        # or limit changed): waiters then sleep out their timeout instead of
        # spinning against it.  The mark is physmem.frees at the stall, so
        # every free ends it without a hook in each free path.
        self._stall_mark: int | None = None
        # The largest allocation a waiter needs at once (a multi-page
        # km_alloc): a scan frees up to it even when freetarg is less.
        self.need = 0
        self.reclaimers: list[Callable[[], int]] = []
        self.inflight: set[int] = set()  # swap slots being written (pages busy)
        self.write_errors = 0  # swap writes failed in a row (logged once per streak)
        self.scan_write_failed = False
        self.idle_cv = threading.Condition(k.lock)  # notified when the daemon goes to sleep
        self.thread_args = (k.lock, self.cv, self.ctl)
        self.ident: int | None = None
        self.thread = threading.Thread(target=_main, args=(weakref.ref(self), k.lock, self.cv, self.idle_cv, self.ctl),
                                       name="pagedaemon", daemon=True)
        self.autotune()

    @property
    def stalled(self) -> bool:
        return self._stall_mark == self.k.physmem.frees

    @stalled.setter
    def stalled(self, value: bool) -> None:
        self._stall_mark = self.k.physmem.frees if value else None

    @property
    def wanted(self) -> bool:
        return self.ctl.wanted

    # -- knobs ----------------------------------------------------------------

    def _make_policy(self, spec: object) -> Policy:
        """The policy `spec` names (a registered name; blanks around it are
        ignored), seeded with the kernel's `policy_seed`, or `spec` itself
        if it is a Policy instance (say `WSClock(tau=64)`) — installed: it
        hears the page queues' events from now on.  VMError(EINVAL) for
        anything else, TypeError for a bad seed; nothing changes then."""
        seed = self.k.policy_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"policy_seed must be an int or None, not {type(seed).__name__}")
        if isinstance(spec, Policy):
            policy = spec
        elif isinstance(spec, str) and spec.strip() in POLICIES:
            policy = POLICIES[spec.strip()](seed=seed)
        else:
            raise VMError(errno.EINVAL, f"unknown policy {spec!r}; one of {', '.join(POLICIES)}")
        policy.install(self.k)
        return policy

    @property
    def policy(self) -> str:
        """The name of the policy in force."""
        return self._policy.name

    @policy.setter
    def policy(self, spec: str | Policy) -> None:
        """Switch policies at once (a name, or a Policy not yet installed)."""
        with self.k.gate:
            self._policy = self._make_policy(spec)
            self.k.touch = self._policy.touch_hook(self.k.queues)

    def set_knobs(self, freemin: int | None = None, freetarg: int | None = None) -> None:
        """Set freemin/freetarg (pages); EINVAL unless 0 <= freemin <= freetarg
        < limit pages.  Nothing changes on error."""
        with self.k.gate:
            fmin = self.freemin if freemin is None else freemin
            ftarg = self.freetarg if freetarg is None else freetarg
            for v in (fmin, ftarg):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError("freemin/freetarg must be int")
            limit = self.k.physmem.limit
            if not 0 <= fmin <= ftarg or ftarg < 1 or (limit is not None and ftarg >= limit // PAGE_SIZE):
                raise VMError(errno.EINVAL, f"need 0 <= freemin <= freetarg, 1 <= freetarg < limit pages;"
                                            f" got freemin={fmin} freetarg={ftarg}")
            self._freemin, self._freetarg = fmin, ftarg
            self.tuned = True
            self.stalled = False
            self.wake()

    @property
    def freemin(self) -> int:
        return self._freemin

    @freemin.setter
    def freemin(self, value: int) -> None:
        self.set_knobs(freemin=value)

    @property
    def freetarg(self) -> int:
        return self._freetarg

    @freetarg.setter
    def freetarg(self, value: int) -> None:
        self.set_knobs(freetarg=value)

    def rescale(self, old: int | None, new: int | None) -> None:
        """The limit changed from `old` to `new`: default knobs follow it;
        knobs set by hand are kept while still valid (freetarg below the
        limit's pages), else scaled with the limit (lock held)."""
        if self.tuned and (new is None or self._freetarg < new // PAGE_SIZE):
            return
        if self.tuned and old is not None and new is not None:
            pages = new // PAGE_SIZE
            self._freetarg = max(1, min(self._freetarg * new // old, pages - 1))
            self._freemin = min(self._freemin * new // old, self._freetarg)
        else:
            self.tuned = False
            self.autotune()

    def autotune(self) -> None:
        """Defaults from the limit: wake at 95% full, scan back to 90%."""
        if self.tuned:
            return
        limit = self.k.physmem.limit
        pages = (limit // PAGE_SIZE) if limit is not None else 0
        self._freemin = max(4, pages // 20) if pages else 0
        self._freetarg = max(self._freemin + 4, pages // 10) if pages else 1

    # -- the thread ------------------------------------------------------------

    def start(self) -> None:
        self.k.touch = self._policy.touch_hook(self.k.queues)
        self.thread.start()
        self.ident = self.thread.ident  # in_pagedaemon() compares it on every allocation

    def stop(self) -> None:
        """Stop the thread and wait for it (lock not held)."""
        stop_daemon(*self.thread_args)
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join()

    def wake(self) -> None:
        """Ask for a scan (requires the kernel lock)."""
        if not self.ctl.wanted:
            self.ctl.wanted = True
            self.cv.notify()

    def idle(self) -> bool:
        """True when the daemon sleeps with no scan requested and no pageout
        in flight (requires the kernel lock)."""
        return self.state == "sleeping" and not self.ctl.wanted and not self.inflight

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until `idle()` (the counters are then final); False on timeout.
        Takes the kernel lock."""
        with self.k.gate:
            return self.idle_cv.wait_for(lambda: self.idle() or self.k.closed, timeout) and not self.k.closed

    def shortage(self) -> int:
        """Pages to free to reach freetarg (and to get back under the limit)."""
        pm = self.k.physmem
        if pm.limit is None:
            return 0
        # Not avail_pages(): that stops at 0, and after the limit was lowered
        # the whole overshoot must be freed in one scan.
        avail = (pm.limit - pm.resident) // PAGE_SIZE - PDRESERVE_PAGES
        return max(0, max(self.freetarg, self.need) - avail)

    def run_once(self) -> None:
        """Serve one wake-up: scan if memory is short, then wake the waiters
        (lock held)."""
        k = self.k
        self.ctl.wanted = False
        self.ctl.retry = None
        k.uvmexp.pdwoke += 1
        if self.shortage() > 0:
            self.reclaim()  # wakes the waiters if it freed anything
        else:
            try:
                swapper.scheduler(k)
            except Exception:  # a daemon that dies would hang every waiter
                log.exception("swapper scheduler failed")

    def reclaim(self, direct: bool = False) -> int:
        """One scan, by the daemon or — `direct` reclaim — by a thread that
        needs memory, if memory is short and no other scan is running;
        returns the pages it freed.  Lock held (dropped for swap I/O)."""
        k = self.k
        if self.scanning or self.shortage() <= 0:
            return 0
        if direct:
            k.uvmexp.directreclaims += 1
        self.scanning = True
        self.state = "scanning"
        self.scan_write_failed = False
        # Progress is what this scan freed, not the change in resident
        # memory: waiters allocate while it writes.
        before = k.uvmexp.pdfreed
        try:
            freed = self.scan() + k.uvmexp.pdfreed - before
        except Exception:  # a daemon that dies would hang every waiter
            log.exception("pagedaemon scan failed")
            freed = 0
        finally:
            self.scanning = False
            self.state = "sleeping"
        self.stalled = freed == 0 and self.shortage() > 0
        if self.stalled and self.scan_write_failed:  # retry later: swap may recover
            self.ctl.retry = max(0.01, min(PAGEOUT_RETRY, k.oom_timeout / 4))
            self.cv.notify()  # a sleeping daemon re-arms its wait with the timer
        if freed:
            k.mem_cv.notify_all()
        return freed

    def scan(self) -> int:
        """One scan toward freetarg; returns the frames the reclaimers gave
        back (pages freed are counted in uvmexp.pdfreed)."""
        k = self.k
        k.uvmexp.pdscans += 1
        short = self.shortage()
        drained = 0
        for reclaim in self.reclaimers:
            drained += reclaim()
        short -= drained
        if short <= 0:
            return drained
        self._deactivate_over_rss()
        swapped = swapper.swapout_sleepers(k)
        short = self._evict(short)
        # As uvm_swapout_threads: the fallbacks only when no long sleeper went.
        if short > 0 and not swapped and swapper.swapout_threads(k, short):
            self._evict(short)
        if k.queues.deactivated:
            window.park(k)
        return drained

    def _deactivate_over_rss(self) -> None:
        """Pages of processes over their RLIMIT_RSS go to the inactive
        queue first (vm_pageout_map_deactivate_pages), so they are paged
        before anyone else's."""
        k = self.k
        seen: set[int] = set()
        for p in k.proctab.values():
            vmap = p.vmspace
            limit = p.limits[RLIMIT_RSS][0] // PAGE_SIZE
            over = len(vmap.pmap.rd) - limit
            if over <= 0 or id(vmap) in seen:
                continue
            seen.add(id(vmap))
            for page in list(vmap.pmap.rd.values()):
                if over <= 0:
                    break
                if page.queue and not page.busy:
                    page.referenced = False
                    k.queues.deactivate_first(page)
                    over -= 1

    def _evict(self, short: int) -> int:
        """Free or page out up to `short` pages in the policy's order;
        returns what is still short."""
        k = self.k
        batch: list[tuple[VMPage, VMObject]] = []
        stubs: list[VMPage] = []
        for page in self._policy.victims(k, short):
            if page.busy or page.wire_count or not page.queue:
                if page.queue:
                    k.queues.enqueue(page, page.queue)
                continue
            if page.frame < 0:  # a host window's page: its engine evicts it (window.evict)
                k.queues.dequeue(page)
                window.hold(page)
                stubs.append(page)
                short -= 1
                if short <= 0:
                    break
                continue
            obj = page.obj
            assert obj is not None
            if not page.dirty:  # its swap copy is valid, or it is a zero page a fault makes again
                page_remove_all(page)
                page_free(k, page)
                k.uvmexp.pdfreed += 1
                short -= 1
            elif k.swap is not None and (k.swap.inuse < k.swap.nslots or page.pindex in obj.swap):
                page.busy = True
                k.io_pages.add(page)
                page_remove_all(page)
                k.queues.dequeue(page)
                obj.pip += 1
                batch.append((page, obj))
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
        if stubs:  # a window page whose budget stays (its floor) frees nothing
            short += len(stubs) - window.evict(k, stubs)
        return short

    def flush(self, batch: list[tuple[VMPage, VMObject]]) -> None:
        """Write busy pages to swap in clusters of consecutive pages of one
        object, and free them.  `batch` pairs each page with the object that
        owned it when it was made busy (the page may be disowned meanwhile:
        its object can die while the lock is dropped for an earlier write)."""
        k = self.k
        batch.sort(key=lambda po: (po[1].id, po[0].pindex))
        i = 0
        try:
            while i < len(batch):
                page, obj = batch[i]
                if page.obj is not obj:  # released while we wrote earlier runs
                    self._finish(page, obj, None)
                    i += 1
                    continue
                j = i + 1
                while (j < len(batch) and batch[j][1] is obj and batch[j][0].obj is obj
                       and batch[j][0].pindex == batch[j - 1][0].pindex + 1):
                    j += 1
                for p, _ in batch[i:j]:  # a re-dirtied page gets a fresh slot
                    old = obj.swap.pop(p.pindex, None)
                    if old is not None:
                        swap_free(k, old)
                got = k.swap.alloc(j - i)  # type: ignore[union-attr]
                if got is None:
                    break
                first, n = got
                self._write(first, batch[i:i + n])
                i += n
        finally:
            for page, obj in batch[i:]:  # swap full, or an error: give them back
                self._finish(page, obj, None)

    def _write(self, first: int, run: list[tuple[VMPage, VMObject]]) -> None:
        k = self.k
        swap = k.swap
        assert swap is not None
        self.inflight.update(range(first, first + len(run)))
        err: VMError | None = None
        with k.unlocked():
            try:
                swap.write(first, [p.addr for p, _ in run])
            except VMError as ex:
                err = ex
            except Exception as ex:  # a bug must not strand busy pages and in-flight slots
                log.exception("swap write raised")
                err = VMError(errno.EIO, f"swap write at slot {first}: {ex!r}")
        self.inflight.difference_update(range(first, first + len(run)))
        for n, (page, obj) in enumerate(run):
            if err is not None or page.obj is not obj:
                swap_free(k, first + n)
                self._finish(page, obj, None)
            else:
                self._finish(page, obj, first + n)
        if err is not None:
            self.scan_write_failed = True
            self.write_errors += 1
            if self.write_errors == 1:
                log.error("swap write failed: %s (pages kept dirty in memory)", err)
        elif self.write_errors:
            log.warning("swap writes work again after %d failed", self.write_errors)
            self.write_errors = 0

    def _finish(self, page: VMPage, obj: VMObject, slot: int | None) -> None:
        """End a page's pageout: with a slot, the page is clean on swap and
        freed; without, it goes back to the active queue (or is freed if its
        owner let go of it meanwhile)."""
        k = self.k
        obj.pip -= 1
        page.busy = False
        k.io_pages.discard(page)
        if page.wanted:
            page.wanted = False
            k.page_cv.notify_all()
        if page.obj is not obj:
            page_free(k, page)
        elif slot is not None:
            obj.swap[page.pindex] = slot
            page_free(k, page)
            k.uvmexp.pageouts += 1
            k.uvmexp.pdfreed += 1
        else:
            k.queues.enqueue(page, ACTIVE)
            pageable_again(k)

    def status(self) -> dict[str, str | int]:
        k = self.k
        with k.gate:
            return {"state": self.state, "policy": self.policy, "freemin": self.freemin,
                    "freetarg": self.freetarg, "free": min(k.physmem.avail_pages(), 1 << 31),
                    "wakeups": k.uvmexp.pdwoke, "scans": k.uvmexp.pdscans,
                    "pageouts": k.uvmexp.pageouts, "freed": k.uvmexp.pdfreed,
                    "reactivated": k.uvmexp.pdreact}


class _Control:
    """What the thread needs while it sleeps, without the kernel."""

    __slots__ = ("wanted", "stopping", "retry")

    def __init__(self) -> None:
        self.wanted = False
        self.stopping = False
        self.retry: float | None = None  # seconds until a failed scan is retried


def _main(ref: weakref.ref[Pagedaemon], lock: Any, cv: threading.Condition,
          idle_cv: threading.Condition, ctl: _Control) -> None:
    """The pagedaemon thread.  It holds its Pagedaemon strongly only while
    serving a wake-up."""
    with lock:
        while not ctl.stopping:
            if not ctl.wanted:
                idle_cv.notify_all()
                if not cv.wait(ctl.retry) and ctl.retry is not None and not ctl.stopping:
                    ctl.wanted = True  # timed out: retry the scan whose writes failed
                continue
            pd = ref()
            if pd is None:
                return
            pd.run_once()
            del pd


def stop_daemon(lock: Any, cv: threading.Condition, ctl: _Control) -> None:
    """Tell the thread to stop.  Safe in a finalizer: if the lock is held —
    possibly by this very thread, if the collector runs inside the daemon —
    a helper thread delivers the notice once it is free."""
    def notify() -> None:
        with lock:
            ctl.stopping = True
            cv.notify_all()

    if lock.acquire(blocking=False):
        try:
            ctl.stopping = True
            cv.notify_all()
        finally:
            lock.release()
    else:
        threading.Thread(target=notify, name="pagedaemon-stop", daemon=True).start()
