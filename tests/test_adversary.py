"""Adversarial tests: short call sequences that break a promise of README.md,
and a bounded stateful search over the places `test_model_stateful.py` does
not go.

Each `test_bug_*` is a minimal deterministic regression test for a bug found
this way; its docstring says what goes wrong.  The races are made
deterministic by pausing one thread at the API boundary (`_PausingGate`) or
inside a swap read (a slow disk), never by patching kernel logic.

`TestAdversaryMachine` drives 1-4 processes of one kernel under a memory
limit with swap through random sequences that mix: mlock/munlock with fork
and mprotect round trips on wired memory, INHERIT_SHARE/INHERIT_NONE mixes,
MADV_FREE after forks and exits, shared objects written and read both by
their handle (`k.object_write`/`k.object_peek`) and through mappings, partial
munmap of objects before and after `detach()`, `fork(shared=True)`, `exec`,
`unshare`, sleeping processes (swapper), `k.memlimit` lowered and raised
mid-sequence, `readinto`/`write` with odd buffers, calls on exited processes,
objects of another kernel, and garbage arguments (huge, negative, wrong
types).  After every step `k.check()` must pass and every process's maps and
bytes, and every held object's bytes, must equal the reference model
(`model.py`); a call that fails must leave every map entry (not only every
page) and every object's references as they were.  At teardown every
process exits and every object is detached: then the kernel must be back to
its boot state (no object but the kernel's, no swap slot, resident equal to
the boot value once the pools and the u-area cache are drained).
`TestTightAdversaryMachine` runs the same with a swap too small for the
sequences, so memory runs out (OutOfMemory must change nothing, or be a clean
short write) and whole processes are swapped out.
"""
from __future__ import annotations

import array
import copy
import errno
import os
import random
import subprocess
import sys
import threading
import time
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import rumpvm
from rumpvm import (
    INHERIT_COPY,
    INHERIT_NONE,
    INHERIT_SHARE,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_WILLNEED,
    MAP_ANON,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_MAX,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    resource,
)

try:
    from .model import Model, ModelError, ModelSegv, Space
except ImportError:  # tests/ is not a package: rootdir-relative import
    from model import Model, ModelError, ModelSegv, Space

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE


def drained(k: rumpvm.Kernel) -> dict[str, int]:
    """k.stats() once the pagedaemon is idle and the pools and the u-area
    cache are drained (what the pagedaemon's reclaimer does under pressure)."""
    assert k.pagedaemon.wait_idle(30), "pagedaemon did not settle"
    with k.gate:
        k._drain_pools()
    return k.stats()


# ---------------------------------------------------------------------------
# Regression tests for bugs found (each fails until its bug is fixed)
# ---------------------------------------------------------------------------


def test_bug_detach_object_of_another_kernel():
    """k1.detach_object(o) for an object `o` of kernel k2 is not refused with
    EINVAL (README: an object of another kernel is EINVAL): it raises a bare
    KeyError and leaves k2 with a dead-but-listed object (k2.check() fails)."""
    with rumpvm.Kernel() as k1, rumpvm.Kernel() as k2:
        o = k2.create_object(P)
        with pytest.raises(rumpvm.VMError) as ei:
            k1.detach_object(o)
        assert ei.value.errno == errno.EINVAL
        k1.check()
        k2.check()
        o.detach()  # the caller's hold is still there
        k2.check()


def test_bug_object_write_into_unreachable_range_of_detached_object():
    """After detach(), k.object_write by id into a page that no mapping
    reaches any more allocates a page nothing can reach: k.check() reports a
    leak ("pages/slots nothing can reach")."""
    with rumpvm.Kernel() as k:
        p = k.spawn()
        o = k.create_object(4 * P)
        a = p.mmap(4 * P, flags=MAP_SHARED, obj=o)
        p.write(a, b"x" * 4 * P)
        o.detach()
        p.munmap(a + P, 2 * P)  # pages 1-2 of o: nothing reaches them now
        k.check()
        try:
            k.object_write(o.id, P, b"y")
        except rumpvm.VMError:
            pass  # refusing is fine; leaking is not
        k.check()


def test_bug_object_write_into_kernel_object():
    """k.object_write accepts the id of the kernel's own object (the one
    object at boot, backing u-areas and kmem): it overwrites kernel memory
    (here the next process's u-area, which kmem_alloc promises zeroed) and
    leaves a pageable kernel page that nothing ever frees."""
    with rumpvm.Kernel() as k:
        (kobj,) = k.objects()
        assert kobj.type == "kernel"
        try:
            k.object_write(kobj.id, 0, b"EVIL")
        except rumpvm.VMError:
            pass
        p = k.spawn()
        assert k.object_peek(kobj.id, p.uarea - 0xFFFF800000000000, 4) == bytes(4)
        k.check()


def test_bug_detach_keeps_pages_only_the_handle_reached():
    """detach() drops the last thing that reaches a page written through the
    handle (no mapping covers it), but the page is not freed: k.check()
    reports "pages/slots nothing can reach" and the frame leaks until the
    object dies."""
    with rumpvm.Kernel() as k:
        p = k.spawn()
        o = k.create_object(2 * P)
        k.object_write(o.id, 0, b"x")  # page 0: reached by the handle only
        p.mmap(P, flags=MAP_SHARED, obj=o, offset=P)  # keeps o alive
        o.detach()
        k.check()


def test_bug_madv_free_after_child_exit_is_a_noop():
    """fork, then the child exits: the parent's memory is again reached by
    nothing else (README: MADV_FREE then discards it at once, it reads back
    as zeros), but the entry is still marked needs-copy, so MADV_FREE keeps
    the old bytes and the page stays resident."""
    with rumpvm.Kernel() as k:
        p = k.spawn()
        a = p.mmap(P)
        p.write(a, b"A")
        p.fork().exit()
        p.madvise(a, P, MADV_FREE)
        assert p.read(a, 1) == b"\0"
        assert k.stats()["active"] + k.stats()["inactive"] == 0
        k.check()


def test_bug_mlock_out_of_memory_changes_the_map():
    """mlock of copy-on-write memory whose pages are on swap reserves one
    frame per page, but wiring needs two (the page-in into the backing
    object and the copy into a new shadow).  With swap full it runs out
    part-way: OutOfMemory, yet the entry now maps a new shadow object
    holding copies and is no longer needs-copy (README: mlock reserves
    first, so it gets all it needs or fails before touching anything)."""
    n = 8
    with rumpvm.Kernel(memlimit="320K", swap="160K", oom_timeout=0.3) as k:
        p = k.spawn()
        a = p.mmap(n * P)
        for i in range(n):
            p.write(a + i * P, bytes([65 + i]) * P)
        p.fork()  # a is copy-on-write now
        hold = p.mmap(n * P)
        for i in range(n):
            p.write(hold + i * P, b"h")
        p.mlock(hold, n * P)  # n frames kept back, given back below
        fill = p.mmap(200 * P)
        with pytest.raises(rumpvm.OutOfMemory):
            for i in range(200):  # memory and swap full; a's pages on swap
                p.write(fill + i * P, b"f")
        assert k.pagedaemon.wait_idle(30)
        p.munlock(hold, n * P)
        p.munmap(hold, n * P)  # n free frames: enough for the reservation
        before = (p.maps(), [(o.id, o.refs) for o in k.objects() if o.type != "kernel"])
        try:
            p.mlock(a, n * P)
        except rumpvm.VMError:
            after = (p.maps(), [(o.id, o.refs) for o in k.objects() if o.type != "kernel"])
            assert after == before, "a failed mlock changed the map"
        assert [p.read(a + i * P, 1) for i in range(n)] == [bytes([65 + i]) for i in range(n)]
        k.check()


def test_bug_concurrent_limit_lowerings_restore_a_stale_limit():
    """Two threads lower k.memlimit at once (4M -> 1M, then 1M -> 512K) and
    neither lowering is reached within oom_timeout (the pagedaemon is
    stopped here, as when paging is slow).  Both fail with ENOMEM, but the
    second restores "its" old limit, 1M, which the first had set only
    temporarily: the limit ends at 1M with 2M resident, resident > limit
    (k.check() fails), and the original 4M is lost."""
    with rumpvm.Kernel(memlimit="4M", swap="8M", oom_timeout=0.5) as k:
        p = k.spawn()
        a = p.mmap(2 << 20)
        for i in range(0, 2 << 20, P):
            p.write(a + i, b"x")
        k.pagedaemon.stop()
        errs = {}

        def lower(name, value):
            try:
                k.memlimit = value
            except rumpvm.VMError as e:
                errs[name] = e.errno

        changes = k.stats()["limitchanges"]
        t1 = threading.Thread(target=lower, args=("first", "1M"))
        t1.start()
        deadline = time.monotonic() + 30  # only a hang guard
        while k.stats()["limitchanges"] == changes:  # the first has set 1M and waits now
            assert time.monotonic() < deadline and t1.is_alive()
        t2 = threading.Thread(target=lower, args=("second", "512K"))
        t2.start()
        t1.join()
        t2.join()
        assert errs == {"first": errno.ENOMEM, "second": errno.ENOMEM}
        assert k.memlimit == 4 << 20, f"limit {k.memlimit} after two failed lowerings from 4M"
        k.check()


class _PausingGate:
    """Wraps k.gate so that the thread named `who` enters the kernel only
    after `go` is set: it makes the interleaving "validated its arguments,
    then another thread ran a whole call, then took the lock" happen every
    time instead of now and then."""

    def __init__(self, gate, who: str, go: threading.Event) -> None:
        self.gate, self.who, self.go = gate, who, go

    def __enter__(self):
        if threading.current_thread().name == self.who:
            assert self.go.wait(10)
        return self.gate.__enter__()

    def __exit__(self, *exc):
        return self.gate.__exit__(*exc)


def test_bug_mmap_of_an_object_racing_its_last_munmap_maps_a_dead_object():
    """p.mmap(obj=o) checks `o.dead` before it takes the kernel lock.  If
    another thread unmaps the last mapping of a detached object in between,
    the object dies and mmap then maps it anyway: k.check() reports an entry
    mapping a dead object, and p.exit() raises a bare KeyError (only VMError
    and TypeError may escape).  The mmap should fail with EBADF."""
    with rumpvm.Kernel() as k:
        p = k.spawn()
        o = k.create_object(P)
        a = p.mmap(P, flags=MAP_SHARED, obj=o)
        o.detach()  # o lives on through its one mapping
        go = threading.Event()
        real, k.gate = k.gate, _PausingGate(k.gate, "mapper", go)
        got = {}

        def mapper():
            try:
                got["r"] = p.mmap(P, flags=MAP_SHARED, obj=o)
            except Exception as e:  # noqa: BLE001 - recorded and judged below
                got["r"] = e

        t = threading.Thread(target=mapper, name="mapper")
        t.start()
        time.sleep(0.1)  # the mapper has checked o and waits at the gate
        p.munmap(a, P)  # the last mapping goes: o dies
        assert o.dead
        go.set()
        t.join(10)
        k.gate = real
        r = got["r"]
        assert isinstance(r, rumpvm.VMError) and r.errno == errno.EBADF, f"mmap of a dead object: {r!r}"
        k.check()
        p.exit()


def test_bug_mlock_checks_the_wired_limit_before_it_sleeps():
    """mlock checks the wired limit, then reserves frames, which may sleep
    for memory with the lock dropped; it never checks again.  A second
    mlock that runs meanwhile passes the same check, so both wire: 28 pages
    wired under a wired limit of 26 (README: mlock beyond the wired limit is
    ENOMEM)."""
    with rumpvm.Kernel(memlimit="320K", oom_timeout=1) as k:
        limit = k.wired_limit // P  # 26 pages
        p = k.spawn()
        x = p.mmap(10 * P)  # untouched: wiring it needs 10 new frames
        y = p.mmap((limit - 8) * P)  # written: wiring it needs none
        for i in range(limit - 8):
            p.write(y + i * P, b"y")
        fill = p.mmap(200 * P)
        with pytest.raises(rumpvm.OutOfMemory):
            for i in range(200):  # no swap: memory is full now
                p.write(fill + i * P, b"f")
        got = {}

        def first():
            try:
                p.mlock(x, 10 * P)  # passes the check, then sleeps for frames
                got["first"] = None
            except rumpvm.VMError as e:
                got["first"] = e

        t = threading.Thread(target=first)
        t.start()
        time.sleep(0.3)
        p.mlock(y, (limit - 8) * P)  # fits the limit alone: wires at once
        p.munmap(fill, 40 * P)  # memory for the sleeper
        t.join(10)
        wired = sum(e.end - e.start for e in p.maps() if e.wired) // P
        assert wired <= limit, f"{wired} pages wired under a wired limit of {limit} (first mlock: {got})"
        k.check()


def test_bug_swapin_racing_exit_faults_on_a_kernel_address():
    """A swapped-out process whose u-area is on swap is woken (swap-in pages
    the u-area in, the lock dropped for the read) while another thread
    makes it exit: exit frees the u-area, and the swap-in's retried fault
    finds nothing there and raises SegmentationFault at a kernel address
    (0xffff8000...) out of p.wake() instead of ESRCH.  The pagedaemon's
    scheduler runs the same swap-in: the random thread search saw that
    SegmentationFault escape from the pagedaemon thread, which then dies
    (nothing is paged any more).  The swap read is made slow here (as a
    busy disk) so that the exit always lands inside it."""
    with rumpvm.Kernel(memlimit="320K", swap="4M", oom_timeout=2) as k:
        k.maxslp = 0  # sleepers are swapped out at the first shortage
        p, q = k.spawn(), k.spawn()
        p.sleep()
        fill = q.mmap(300 * P)
        for i in range(300):
            q.write(fill + i * P, b"f")
        assert k.pagedaemon.wait_idle(30)
        assert p.state == "W"
        assert next(o for o in k.objects() if o.type == "kernel").swapped, "p's u-area is not on swap"
        inside, go = threading.Event(), threading.Event()
        read_run = k.swap.read_run

        def slow_read(*args, **kwargs):
            if threading.current_thread().name == "waker":
                inside.set()
                go.wait(10)
            return read_run(*args, **kwargs)

        k.swap.read_run = slow_read
        got = {}

        def waker():
            try:
                p.wake()
                got["wake"] = None
            except Exception as e:  # noqa: BLE001 - judged below
                got["wake"] = e

        t = threading.Thread(target=waker, name="waker")
        t.start()
        assert inside.wait(10)
        p.exit()  # the lock is dropped for the u-area's read
        go.set()
        t.join(10)
        k.swap.read_run = read_run
        r = got["wake"]
        assert r is None or (isinstance(r, rumpvm.VMError) and r.errno == errno.ESRCH), f"wake racing exit: {r!r}"
        k.check()


_HUGE_PEEK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))
import rumpvm
k = rumpvm.Kernel()
p = k.spawn()
o = k.create_object(1 << 36)
a = p.mmap(1 << 36)
for what, call in (("object_peek", lambda: k.object_peek(o.id, 0, 1 << 36)),
                   ("peek", lambda: p.peek(a, 1 << 36))):
    try:
        call()
        print(what, "returned")
    except rumpvm.VMError as e:
        print(what, "VMError", e.errno)
    except BaseException as e:
        print(what, "escaped", type(e).__name__)
k.check()
"""


def test_bug_huge_peek_exhausts_host_memory():
    """k.object_peek / p.peek of a large sparse range (a 64 GiB object or
    mapping, never touched) build the result piece by piece with the kernel
    lock held until the host runs out: a bare MemoryError escapes (without
    an address-space limit the host OOM-kills the process), where p.read of
    the same range raises OutOfMemory at once.  Run under RLIMIT_AS=256M in
    a subprocess."""
    r = subprocess.run([sys.executable, "-c", _HUGE_PEEK], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]
    for line in r.stdout.splitlines():
        assert "escaped" not in line, r.stdout


# ---------------------------------------------------------------------------
# The stateful search
# ---------------------------------------------------------------------------

BASE = 0x3_0000_0000  # the window: far from anything spawn maps
NWIN = 16
MAX_PROCS = 4
OBJ_PAGES = 4
DATA = random.Random(4321).randbytes(1 << 15)
LIMITS = ["320K", "384K", "512K", "2M"]
EXTRA = 96  # written pages beyond the window, so that paging happens

procs = st.integers(0, MAX_PROCS - 1)
# a window page, or (more often) one the process has mapped
pages = st.one_of(st.integers(0, NWIN - 1).map(lambda s: ("win", s)),
                  st.integers(0, 1 << 16).map(lambda t: ("mapped", t)),
                  st.integers(0, 1 << 16).map(lambda t: ("mapped", t)))
npages = st.sampled_from([1, 1, 2, 3, 4, 6])
prots = st.sampled_from([
    PROT_NONE, PROT_READ, RW, RW, RW,
    PROT_READ | PROT_MAX(PROT_READ), PROT_READ | PROT_MAX(RW), RW | PROT_MAX(RW),
])
inherits = st.sampled_from([INHERIT_SHARE, INHERIT_SHARE, INHERIT_COPY, INHERIT_NONE])
byte_offsets = st.integers(0, P - 1)
sizes = st.one_of(st.integers(1, 64), st.integers(1, 2 * P + 16))
garbage = st.sampled_from([
    -1, -P, 0, 1, P - 1, 1 << 63, (1 << 64) + P, -(1 << 70), 0x7FFFFFFFF000, 0x7FFFFFFFE000,
    True, None, 1.0, "4096", b"", [],
])


class AdversaryMachine(RuleBasedStateMachine):
    KERNEL_ARGS: ClassVar[dict] = {"memlimit": "384K", "swap": "16M", "oom_timeout": 5.0}
    TIGHT = False  # swap so small that memory can run out (and the swapper runs)

    def __init__(self) -> None:
        super().__init__()
        self.k = rumpvm.Kernel(**self.KERNEL_ARGS)
        self.boot = drained(self.k)
        self.m = Model()
        p = self.k.spawn(name="a0")
        sp = Space(reserved=[(e.start, e.end) for e in p.maps()])
        self.procs: list[tuple[rumpvm.Proc, Space]] = [(p, sp)]
        self.exited: list[rumpvm.Proc] = []
        self.objects: list[tuple[rumpvm.VMObject, int]] = []  # held: (handle, model key)
        self.detached: list[rumpvm.VMObject] = []
        self.nobj = 0
        self.other = None  # a second kernel, for objects of another kernel
        self.ooms = 0
        self.last_write = None
        self.last_oom = None  # (OutOfMemory, model result) of the last call that ran out

    @initialize(layout=st.sampled_from(["full", "full", "striped"]), shared=st.booleans())
    def populate(self, layout, shared):
        """A written window (private or MAP_SHARED, whole or striped) and
        EXTRA written private pages after it."""
        p, sp = self.procs[0]
        spans = [(0, NWIN)] if layout == "full" else [(s, 3) for s in range(0, NWIN, 4)]
        spans.append((NWIN, EXTRA))
        for j, (s, n) in enumerate(spans):
            flags = (MAP_SHARED if shared and j < len(spans) - 1 else MAP_PRIVATE) | MAP_ANON | MAP_FIXED
            addr = BASE + s * P
            assert p.mmap(n * P, flags=flags, addr=addr) == addr
            self.m.mmap(sp, n * P, RW, flags, addr)
            for v in range(n):
                data = DATA[(s + v) * 37:(s + v) * 37 + P]
                p.write(addr + v * P, data)
                self.m.write(sp, addr + v * P, data)

    def teardown(self) -> None:
        """Everything goes; the kernel must be back to its boot state."""
        try:
            for p, _ in self.procs:
                p.exit()
            for o, _ in self.objects:
                o.detach()
            self.k.check()
            st_ = drained(self.k)
            keys = ("objects", "procs", "active", "inactive", "wired", "swpginuse", "resident")
            got = {key: st_[key] for key in keys}
            want = {key: self.boot[key] for key in keys}
            assert got == want, f"after everything exited: {got}, at boot: {want}"
            for o in self.detached + [o for o, _ in self.objects]:
                assert o.dead, f"object {o.id} survived everything"
            self.k.check()
        finally:
            self.k.close()
            if self.other is not None:
                self.other.close()

    # -- plumbing ------------------------------------------------------------

    def pick(self, i: int) -> tuple[rumpvm.Proc, Space]:
        return self.procs[i % len(self.procs)]

    @staticmethod
    def at(sp: Space, where: tuple[str, int]) -> int:
        """The address `where` designates in this process."""
        kind, n = where
        if kind == "mapped":
            mine = sorted(v for v in sp.pages if BASE // P <= v < BASE // P + NWIN + EXTRA)
            if mine:
                return mine[n % len(mine)] * P
            n %= NWIN
        return BASE + n * P

    def both(self, what, kcall, mcall):
        """Run model then kernel; outcomes must agree.  Returns (kernel, model)
        or None when both failed alike."""
        snap = copy.deepcopy((self.m, [sp for _, sp in self.procs])) if self.TIGHT else None
        try:
            expected, exp_exc = mcall(), None
        except (ModelError, ModelSegv) as e:
            expected, exp_exc = None, e
        before = self.observe()
        try:
            got = kcall()
        except rumpvm.OutOfMemory as e:
            self.oom_ok(e, what)
            self.last_oom = (e, expected)
            if self.last_write is None:
                self.unchanged(before, f"{what} failed ({e!r})")
            assert snap is not None
            self.m = snap[0]
            self.procs = [(p, sp) for (p, _), sp in zip(self.procs, snap[1])]
            if e.written and self.last_write is not None:  # a short write
                j, addr, data = self.last_write
                self.m.write(self.procs[j][1], addr, data[:e.written])
            return None
        except rumpvm.SegmentationFault as e:
            assert isinstance(exp_exc, ModelSegv), f"{what}: kernel {e!r}, model {exp_exc!r}"
            assert (e.addr, e.access, e.code) == (exp_exc.addr, exp_exc.access, exp_exc.code), \
                f"{what}: kernel {e!r}, model {exp_exc}"
            self.unchanged(before, f"{what} failed ({e!r})")
            return None
        except rumpvm.VMError as e:
            assert isinstance(exp_exc, ModelError), f"{what}: kernel {e!r}, model {exp_exc!r}"
            assert e.errno == exp_exc.errno, f"{what}: kernel {e!r}, model {exp_exc}"
            self.unchanged(before, f"{what} failed ({e!r})")
            return None
        assert exp_exc is None, f"{what}: kernel succeeded ({got!r}), model expected {exp_exc}"
        return got, expected

    def observe(self):
        """What a failed call must not change: every map entry (not just
        the pages: a failed call must not leave entries split) and every
        object's references and chain."""
        return ([p.maps() for p, _ in self.procs],
                sorted((o.id, o.refs, o.shadow, o.backing_offset, o.size) for o in self.k.objects()
                       if o.type != "kernel"))  # the pagedaemon frees cached u-areas at any time

    def unchanged(self, before, what: str) -> None:
        after = self.observe()
        if after != before:
            (bm, bo), (am, ao) = before, after
            diff = [f"p{p.pid}: {x} -> {y}" for (p, _), xs, ys in zip(self.procs, bm, am) if xs != ys
                    for x, y in [(sorted(set(xs) - set(ys), key=str), sorted(set(ys) - set(xs), key=str))]]
            diff += [f"objects: {sorted(set(bo) - set(ao))} -> {sorted(set(ao) - set(bo))}"] if ao != bo else []
            raise AssertionError(f"{what} changed maps or objects: " + "; ".join(diff))

    def oom_ok(self, e: rumpvm.OutOfMemory, what: str) -> None:
        """OutOfMemory is the right answer only when memory really ran out:
        in the TIGHT machine, with swap at least half full."""
        st_ = self.k.stats()
        if not (self.TIGHT and st_["swpginuse"] * 2 >= st_["swpages"]):
            raise AssertionError(f"{what}: OutOfMemory with swap {st_['swpginuse']}/{st_['swpages']} used") from e
        self.ooms += 1

    def sharers(self, g: int) -> int:
        """Live pages that hold group `g`, plus one for a held object's page."""
        spaces = {id(sp): sp for _, sp in self.procs}.values()
        n = sum(1 for sp in spaces for pg in sp.pages.values() if pg.group == g)
        held = {key for _, key in self.objects}
        n += sum(1 for (key, _), gg in self.m.obj_pages.items() if gg == g and key in held)
        return n

    # -- mappings ------------------------------------------------------------

    @rule(i=procs, start=pages, n=npages, prot=prots, shared=st.booleans())
    def mmap_fixed(self, i, start, n, prot, shared):
        p, sp = self.pick(i)
        flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANON | MAP_FIXED
        addr = self.at(sp, start)
        self.both(f"p{p.pid}.mmap({n}p, {prot:#x}, {flags:#x}, {addr:#x})",
                  lambda: p.mmap(n * P, prot=prot, flags=flags, addr=addr),
                  lambda: self.m.mmap(sp, n * P, prot, flags, addr))

    @precondition(lambda self: len(self.objects) < 3)
    @rule()
    def create_object(self):
        try:
            o = self.k.create_object(OBJ_PAGES * P)
        except rumpvm.OutOfMemory as e:
            return self.oom_ok(e, "create_object")
        key = self.nobj
        self.nobj += 1
        self.m.create_object(key, OBJ_PAGES * P)
        self.objects.append((o, key))

    @precondition(lambda self: self.objects)
    @rule(i=procs, which=st.integers(0, 2), off=st.integers(0, OBJ_PAGES - 1), n=npages,
          start=pages, prot=prots)
    def mmap_object(self, i, which, off, n, start, prot):
        p, sp = self.pick(i)
        o, key = self.objects[which % len(self.objects)]
        n = min(n, OBJ_PAGES - off)
        addr = self.at(sp, start)
        flags = MAP_SHARED | MAP_FIXED
        self.both(f"p{p.pid}.mmap({n}p, {prot:#x}, obj{key}+{off}p, {addr:#x})",
                  lambda: p.mmap(n * P, prot=prot, flags=flags, addr=addr, obj=o, offset=off * P),
                  lambda: self.m.mmap(sp, n * P, prot, flags, addr, key, off * P))

    @rule(i=procs, start=pages, n=npages)
    def munmap(self, i, start, n):
        p, sp = self.pick(i)
        addr = self.at(sp, start)
        self.both(f"p{p.pid}.munmap({addr:#x}, {n}p)", lambda: p.munmap(addr, n * P),
                  lambda: self.m.munmap(sp, addr, n * P))

    @rule(i=procs, start=pages, n=npages, prot=prots)
    def mprotect(self, i, start, n, prot):
        p, sp = self.pick(i)
        addr = self.at(sp, start)
        self.both(f"p{p.pid}.mprotect({addr:#x}, {n}p, {prot:#x})", lambda: p.mprotect(addr, n * P, prot),
                  lambda: self.m.mprotect(sp, addr, n * P, prot))

    @rule(i=procs, start=pages, n=npages, inh=inherits)
    def minherit(self, i, start, n, inh):
        p, sp = self.pick(i)
        addr = self.at(sp, start)
        vpn = addr // P
        if inh == INHERIT_COPY and any(self.m.is_shared_group(sp.pages[v].group)
                                       for v in range(vpn, vpn + n) if v in sp.pages):
            return  # COW over shared memory: parent copies too; the model cannot say
        self.both(f"p{p.pid}.minherit({addr:#x}, {n}p, {inh})", lambda: p.minherit(addr, n * P, inh),
                  lambda: self.m.minherit(sp, addr, n * P, inh))

    @rule(i=procs, start=pages, n=npages)
    def mlock(self, i, start, n):
        p, sp = self.pick(i)
        addr = self.at(sp, start)
        spaces = {id(s): s for _, s in self.procs}.values()
        wired_now = sum(pg.wired for s in spaces for pg in s.pages.values())
        self.both(f"p{p.pid}.mlock({addr:#x}, {n}p)", lambda: p.mlock(addr, n * P),
                  lambda: self.m.mlock(sp, addr, n * P, wired_now, self.k.wired_limit))

    @rule(i=procs, start=pages, n=npages)
    def munlock(self, i, start, n):
        p, sp = self.pick(i)
        addr = self.at(sp, start)
        self.both(f"p{p.pid}.munlock({addr:#x}, {n}p)", lambda: p.munlock(addr, n * P),
                  lambda: self.m.munlock(sp, addr, n * P))

    @rule(i=procs, start=pages, n=npages, advice=st.sampled_from([MADV_DONTNEED, MADV_WILLNEED]))
    def madvise(self, i, start, n, advice):
        p, sp = self.pick(i)
        addr = self.at(sp, start)
        self.both(f"p{p.pid}.madvise({addr:#x}, {n}p, {advice})", lambda: p.madvise(addr, n * P, advice),
                  lambda: self.m.madvise(sp, addr, n * P, advice))

    @rule(i=procs, start=pages, n=npages)
    def madvise_free(self, i, start, n):
        """A page may read back as zeros only if nobody else can see it; a
        shared or wired page keeps its bytes."""
        p, sp = self.pick(i)
        addr = self.at(sp, start)
        before = {v: (bytes(self.m.mem[pg.group]), pg) for v in range(addr // P, addr // P + n)
                  if (pg := sp.pages.get(v)) is not None}
        self.both(f"p{p.pid}.madvise({addr:#x}, {n}p, MADV_FREE)", lambda: p.madvise(addr, n * P, MADV_FREE),
                  lambda: self.m.madvise(sp, addr, n * P, MADV_FREE))
        for v, (old, pg) in before.items():
            got = p.peek(v * P, P)
            if got == old:
                continue
            assert got == bytes(P), f"p{p.pid} page {v * P:#x}: other bytes after MADV_FREE"
            assert not pg.wired and pg.shared is not True and self.sharers(pg.group) == 1, \
                f"p{p.pid} page {v * P:#x}: MADV_FREE discarded a page others see (or a wired one)"
            self.m.mem[pg.group][:] = got

    # -- data ----------------------------------------------------------------

    @rule(i=procs, start=pages, off=byte_offsets, n=sizes, seed=st.integers(0, len(DATA) - 3 * P))
    def write(self, i, start, off, n, seed):
        p, sp = self.pick(i)
        addr, data = self.at(sp, start) + off, DATA[seed:seed + n]
        self.last_write = (i % len(self.procs), addr, data)
        self.both(f"p{p.pid}.write({addr:#x}, <{n}>)", lambda: p.write(addr, data),
                  lambda: self.m.write(sp, addr, data))
        self.last_write = None

    @rule(i=procs, start=pages, off=byte_offsets, n=sizes,
          kind=st.sampled_from(["memoryview", "array", "bytearray-slice", "2d"]))
    def write_odd(self, i, start, off, n, kind):
        p, sp = self.pick(i)
        addr = self.at(sp, start) + off
        raw = DATA[off:off + n]
        if kind == "memoryview":
            data = memoryview(bytearray(b"\xee" * 7 + raw + b"\xee" * 5))[7:7 + n]
        elif kind == "array":
            raw = raw[:len(raw) & ~3] or DATA[:4]
            data = array.array("I", raw)
        elif kind == "2d":
            raw = raw[:len(raw) & ~1] or DATA[:2]
            data = memoryview(bytearray(raw)).cast("B", (len(raw) // 2, 2))
        else:
            data = bytearray(raw)
        self.last_write = (i % len(self.procs), addr, bytes(raw))
        self.both(f"p{p.pid}.write({addr:#x}, <{kind} {len(raw)}>)", lambda: p.write(addr, data),
                  lambda: self.m.write(sp, addr, bytes(raw)))
        self.last_write = None

    @rule(i=procs, start=pages, off=byte_offsets, n=sizes)
    def read(self, i, start, off, n):
        p, sp = self.pick(i)
        addr = self.at(sp, start) + off
        r = self.both(f"p{p.pid}.read({addr:#x}, {n})", lambda: p.read(addr, n),
                      lambda: self.m.read(sp, addr, n))
        if r is not None:
            assert r[0] == r[1], f"p{p.pid}.read({addr:#x}, {n}): wrong bytes"

    @rule(i=procs, start=pages, off=byte_offsets, n=sizes,
          kind=st.sampled_from(["slice", "array", "2d", "bytearray"]))
    def readinto_odd(self, i, start, off, n, kind):
        p, sp = self.pick(i)
        addr = self.at(sp, start) + off
        if kind == "array":
            n = max(4, n & ~3)
            buf = array.array("I", b"\xcc" * n)
            view = memoryview(buf).cast("B")
            whole = view
        elif kind == "2d":
            n = max(2, n & ~1)
            whole = bytearray(b"\xcc" * n)
            buf = memoryview(whole).cast("B", (n // 2, 2))
            view = memoryview(whole)
        elif kind == "slice":
            whole = bytearray(b"\xcc" * (n + 12))
            buf = memoryview(whole)[5:5 + n]
            view = memoryview(whole)[5:5 + n]
        else:
            whole = buf = bytearray(b"\xcc" * n)
            view = memoryview(whole)
        self.last_oom = None
        r = self.both(f"p{p.pid}.readinto({addr:#x}, <{kind} {n}>)", lambda: p.readinto(addr, buf),
                      lambda: self.m.read(sp, addr, n))
        if r is None:
            # Out of memory part-way (a page-in found no frame): a short
            # read, `.written` bytes copied; any other failure copies nothing.
            w, want = 0, b""
            if self.last_oom is not None:
                w, want = self.last_oom[0].written or 0, self.last_oom[1] or b""
            assert bytes(view[:w]) == want[:w], "a short readinto copied wrong bytes"
            assert bytes(view[w:]) == b"\xcc" * (n - w), "a failed readinto changed the buffer past .written"
        else:
            assert r[0] == n and bytes(view) == r[1], f"readinto({addr:#x}, <{kind} {n}>): wrong bytes"
        if kind == "slice":
            assert whole[:5] == b"\xcc" * 5 and whole[5 + n:] == b"\xcc" * 7, "readinto wrote outside its buffer"

    @rule(i=procs, kind=st.sampled_from(["strided", "readonly", "str"]))
    def bad_buffers(self, i, kind):
        p, sp = self.pick(i)
        addr = min(sp.pages, default=BASE // P) * P
        buf = {"strided": memoryview(bytearray(64))[::2], "readonly": b"\0" * 8, "str": "abc"}[kind]
        with pytest.raises(TypeError):
            p.readinto(addr, buf)
        if kind != "readonly":
            with pytest.raises(TypeError):
                p.write(addr, buf)

    # -- objects by handle ---------------------------------------------------

    @precondition(lambda self: self.objects)
    @rule(which=st.integers(0, 2), off=st.integers(0, OBJ_PAGES * P - 1), n=sizes,
          seed=st.integers(0, len(DATA) - 3 * P))
    def object_write(self, which, off, n, seed):
        o, key = self.objects[which % len(self.objects)]
        data = DATA[seed:seed + n]
        if off + n > OBJ_PAGES * P:
            with pytest.raises(rumpvm.VMError) as ei:
                self.k.object_write(o.id, off, data)
            assert ei.value.errno == errno.EFBIG
            return
        try:
            self.k.object_write(o.id, off, data)
        except rumpvm.OutOfMemory as e:
            self.oom_ok(e, "object_write")
            n = e.written or 0
        pos = 0
        while pos < n:
            a = off + pos
            chunk = min(P - a % P, n - pos)
            self.m.mem[self.m.object_group(key, a // P)][a % P:a % P + chunk] = data[pos:pos + chunk]
            pos += chunk

    @precondition(lambda self: self.objects)
    @rule(which=st.integers(0, 2))
    def detach(self, which):
        o, _ = self.objects.pop(which % len(self.objects))
        o.detach()
        self.detached.append(o)
        with pytest.raises(rumpvm.VMError):
            o.detach()

    @rule(i=procs)
    def foreign_object(self, i):
        """An object of another kernel is EINVAL everywhere."""
        p, _ = self.pick(i)
        if self.other is None:
            self.other = rumpvm.Kernel()
            self.foreign = self.other.create_object(P)
        with pytest.raises(rumpvm.VMError) as ei:
            p.mmap(P, flags=MAP_SHARED, obj=self.foreign)
        assert ei.value.errno == errno.EINVAL

    # -- processes -----------------------------------------------------------

    @precondition(lambda self: len(self.procs) < MAX_PROCS)
    @rule(i=procs)
    def fork(self, i):
        p, sp = self.pick(i)
        before = self.observe()
        try:
            c = p.fork()
        except rumpvm.OutOfMemory as e:
            self.unchanged(before, "a failed fork")
            return self.oom_ok(e, "fork")
        self.procs.append((c, self.m.fork(sp)))

    @precondition(lambda self: len(self.procs) < MAX_PROCS)
    @rule(i=procs)
    def fork_shared(self, i):
        """vfork-like: one address space for both (the model's Space object
        is shared too)."""
        p, sp = self.pick(i)
        before = self.observe()
        try:
            c = p.fork(shared=True)
        except rumpvm.OutOfMemory as e:
            self.unchanged(before, "a failed fork(shared=True)")
            return self.oom_ok(e, "fork(shared=True)")
        self.procs.append((c, sp))

    @rule(i=procs)
    def unshare(self, i):
        p, sp = self.pick(i)
        before = self.observe()
        try:
            p.unshare()
        except rumpvm.OutOfMemory as e:
            self.unchanged(before, "a failed unshare")
            return self.oom_ok(e, "unshare")
        if sum(s is sp for _, s in self.procs) > 1:
            j = next(j for j, (q, _) in enumerate(self.procs) if q is p)
            self.procs[j] = (p, self.m.fork(sp))

    @rule(i=procs)
    def exec(self, i):
        p, _ = self.pick(i)
        before = self.observe()
        try:
            p.exec()
        except rumpvm.OutOfMemory as e:
            self.unchanged(before, "a failed exec")
            return self.oom_ok(e, "exec")
        j = next(j for j, (q, _) in enumerate(self.procs) if q is p)
        self.procs[j] = (p, Space(reserved=[(e.start, e.end) for e in p.maps()]))

    @rule(i=procs, asleep=st.booleans())
    def sleep_or_wake(self, i, asleep):
        """A sleeping process is the swapper's first victim under pressure;
        every later call must swap it back in transparently."""
        p, _ = self.pick(i)
        try:
            p.sleep() if asleep else p.wake()
        except rumpvm.OutOfMemory as e:
            self.oom_ok(e, "sleep/wake")

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=procs)
    def exit(self, i):
        p, _ = self.procs.pop(i % len(self.procs))
        p.exit()
        self.exited.append(p)

    @precondition(lambda self: self.exited)
    @rule(i=st.integers(0, 100), call=st.sampled_from(
        ["read", "read0", "write", "readinto", "mmap", "munmap", "mprotect", "mlock", "munlock",
         "minherit", "madvise", "msync", "fork", "exit", "maps", "peek", "exec", "unshare", "sleep",
         "wake", "getrlimit", "fork_shared"]))
    def exited_call(self, i, call):
        p = self.exited[i % len(self.exited)]
        a = BASE
        calls = {
            "read": lambda: p.read(a, 8), "read0": lambda: p.read(a, 0), "write": lambda: p.write(a, b"x"),
            "readinto": lambda: p.readinto(a, bytearray(3)), "mmap": lambda: p.mmap(P),
            "munmap": lambda: p.munmap(a, P), "mprotect": lambda: p.mprotect(a, P, PROT_READ),
            "mlock": lambda: p.mlock(a, P), "munlock": lambda: p.munlock(a, P),
            "minherit": lambda: p.minherit(a, P, INHERIT_NONE), "madvise": lambda: p.madvise(a, P, MADV_FREE),
            "msync": lambda: p.msync(a, P), "fork": p.fork, "exit": p.exit, "maps": p.maps,
            "peek": lambda: p.peek(a, 4), "exec": p.exec, "unshare": p.unshare, "sleep": p.sleep,
            "wake": p.wake, "getrlimit": lambda: p.getrlimit(resource.RLIMIT_STACK),
            "fork_shared": lambda: p.fork(shared=True),
        }
        with pytest.raises(rumpvm.VMError) as ei:
            calls[call]()
        assert ei.value.errno == errno.ESRCH, f"{call} on an exited process: {ei.value!r}"

    @rule(i=procs, call=st.sampled_from(["mmap", "munmap", "mprotect", "mlock", "munlock", "minherit",
                                         "madvise", "msync", "read", "write", "peek", "object_write",
                                         "object_peek", "create_object"]),
          x=garbage, y=garbage)
    def garbage_call(self, i, call, x, y):
        """Only VMError or TypeError, and (checked by the invariant) no change."""
        p, _ = self.pick(i)
        if call.startswith("object_") and not self.objects:
            return
        oid = self.objects[0][0].id if self.objects else 0
        calls = {
            "mmap": lambda: p.mmap(x, addr=y if isinstance(y, int) else 0, flags=MAP_PRIVATE | MAP_ANON | MAP_FIXED),
            "munmap": lambda: p.munmap(x, y), "mprotect": lambda: p.mprotect(x, y, PROT_READ),
            "mlock": lambda: p.mlock(x, y), "munlock": lambda: p.munlock(x, y),
            "minherit": lambda: p.minherit(x, y, INHERIT_NONE), "madvise": lambda: p.madvise(x, y, MADV_FREE),
            "msync": lambda: p.msync(x, y), "read": lambda: p.read(x, y), "write": lambda: p.write(x, y),
            "peek": lambda: p.peek(x, y), "object_write": lambda: self.k.object_write(oid, x, y),
            "object_peek": lambda: self.k.object_peek(oid, x, y), "create_object": lambda: self.k.create_object(x),
        }
        if call in ("munmap", "mprotect", "mlock", "munlock", "minherit", "madvise", "msync") \
                and isinstance(x, int) and isinstance(y, int) and not isinstance(x, bool) \
                and not isinstance(y, bool) and x >= BASE - 16 * P:
            return  # a valid range near the window would change state the model tracks
        if call == "read" and x in (0x7FFFFFFFF000, 0x7FFFFFFFE000) and isinstance(y, int) and y > 1 << 40:
            return
        try:
            r = calls[call]()
        except (rumpvm.VMError, TypeError):
            return
        if call == "create_object":
            r.detach()
        elif call == "mmap":
            p.munmap(r, x)  # a valid fixed mapping outside the window: take it back

    @rule(limit=st.sampled_from(LIMITS))
    def set_memlimit(self, limit):
        old = self.k.memlimit
        try:
            self.k.memlimit = limit
        except rumpvm.VMError as e:
            assert e.errno == errno.ENOMEM, repr(e)
            assert self.k.memlimit == old, "a refused limit was not restored"
        else:
            assert self.k.memlimit == rumpvm.kernel._parse_memlimit(limit)

    # -- the comparison ------------------------------------------------------

    @invariant()
    def agrees(self):
        self.k.check()
        for p, sp in self.procs:
            got = {}
            for e in p.maps():
                if any(s <= e.start and e.end <= t for s, t in sp.reserved):
                    continue
                for v in range(e.start // P, e.end // P):
                    got[v] = e
            assert set(got) == set(sp.pages), f"p{p.pid}: mapped pages differ"
            for v, pg in sp.pages.items():
                e = got[v]
                assert (e.prot, e.max_prot, e.inheritance, e.wired) == \
                    (pg.prot, pg.max_prot, pg.inheritance, pg.wired), f"p{p.pid} {v * P:#x}: {e} vs {pg}"
            for vpn, n in Model.runs(sp):
                kb, mb = p.peek(vpn * P, n * P), self.m.peek(sp, vpn * P, n * P)
                if kb != mb:
                    j = next(j for j in range(n) if kb[j * P:(j + 1) * P] != mb[j * P:(j + 1) * P])
                    raise AssertionError(f"p{p.pid}: bytes differ in page {(vpn + j) * P:#x}")
        for o, key in self.objects:
            want = b"".join(bytes(self.m.mem[g]) if (g := self.m.obj_pages.get((key, j))) else bytes(P)
                            for j in range(OBJ_PAGES))
            assert self.k.object_peek(o.id, 0, OBJ_PAGES * P) == want, f"object {o.id} (key {key}) bytes differ"


class TightAdversaryMachine(AdversaryMachine):
    """The same under a swap too small for everything: memory runs out
    (OutOfMemory must then change nothing, or be a clean short write) and
    the swapper swaps whole processes out."""

    KERNEL_ARGS: ClassVar[dict] = {"memlimit": "320K", "swap": "256K", "oom_timeout": 0.5}
    TIGHT = True


TestAdversaryMachine = AdversaryMachine.TestCase
TestAdversaryMachine.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)

TestTightAdversaryMachine = TightAdversaryMachine.TestCase
TestTightAdversaryMachine.settings = settings(TestAdversaryMachine.settings, max_examples=60)
