"""The pagedaemon under pressure: the limit holds at every instant, data
survives paging, fork + COW stays separate, every replacement policy works
and can be switched live, knobs are validated, out-of-swap fails cleanly
within the timeout without spinning, and the counters move.

Issue 3, "Tests".  Sizes are small (a few MiB) so the file runs in seconds.
"""

from __future__ import annotations

import errno
import threading
import time

import pytest
from pages import bad_pages, fill, pattern, settle

import rumpvm
import rumpvm.policy
from rumpvm import PAGE_SIZE, VMError
from rumpvm.check import check_kernel

M = 1 << 20
POLICIES = tuple(rumpvm.policy.POLICIES)


class Sampler:
    """A thread that samples resident memory as fast as it can.

    `__enter__` returns once the first sample is taken, and `sample_now()`
    (e.g. as a barrier action) returns once a sample was taken after the call,
    so a test can be sure the limit was sampled at a chosen point of its
    workload, whatever the thread scheduling."""

    def __init__(self, k) -> None:
        self.k = k
        self.max = 0
        self.samples = 0
        self.over: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._waiting = 0  # threads in sample_now()
        self._t = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        pm = self.k.physmem
        while not self._stop.is_set():
            r = pm.resident
            lim = pm.limit
            if r > self.max:
                self.max = r
            if lim is not None and r > lim:
                self.over.append((r, lim))
            self.samples += 1
            if self._waiting:
                with self._cv:
                    self._cv.notify_all()
            time.sleep(0)  # not a wait: lets the workers have the GIL between samples

    def sample_now(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._waiting += 1
            try:
                want = self.samples + 2  # one whole sample after this call
                assert self._cv.wait_for(lambda: self.samples >= want, timeout), "the sampler stopped sampling"
            finally:
                self._waiting -= 1

    def __enter__(self) -> Sampler:
        self._t.start()
        self.sample_now()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_threads(targets) -> None:
    """Run callables in threads; re-raise the first exception any raised."""
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as ex:  # noqa: BLE001 - reported below
                errors.append(ex)
        return run

    ts = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
        assert not t.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]


# -- the main scenario ----------------------------------------------------------------


def test_four_threads_over_the_limit_every_byte_comes_back():
    """16 MiB limit, 64 MiB swap, 4 threads each writing then re-reading
    12 MiB of distinct patterns (3x the limit in total)."""
    with rumpvm.Kernel(memlimit="16M", swap="64M") as k:
        n = 12 * M // PAGE_SIZE
        bad: dict[int, list[int]] = {}

        def worker(t: int):
            def run():
                p = k.spawn(name=f"w{t}")
                a = p.mmap(n * PAGE_SIZE)
                barrier.wait()
                fill(p, a, n, 100 + t)
                barrier.wait()  # everybody has written before anybody re-reads
                bad[t] = bad_pages(p, a, n, 100 + t)
            return run

        with Sampler(k) as s:
            # The barrier action samples the limit with all 48 MiB written.
            barrier = threading.Barrier(4, action=s.sample_now)
            run_threads([worker(t) for t in range(4)])
            s.sample_now()
        assert all(b == [] for b in bad.values()), {t: b[:5] for t, b in bad.items() if b}
        assert len(bad) == 4
        assert s.over == [], f"resident over the limit: {s.over[:5]}"
        assert 16 * M - 4 * M <= s.max <= 16 * M  # memory really was full, never over
        settle(k)
        st = k.stats()
        assert st["pageouts"] > 0 and st["pageins"] > 0
        # 48 MiB written under a 16 MiB limit: at least 32 MiB went to swap.
        assert st["pageouts"] >= (48 - 16) * M // PAGE_SIZE
        assert st["oomfails"] == 0
        assert st["resident"] <= st["memlimit"] == 16 * M
        k.check()


# -- fork + COW under pressure ---------------------------------------------------------------


def test_fork_cow_under_pressure_stays_separate():
    with rumpvm.Kernel(memlimit="4M", swap="64M") as k:
        n = 3 * M // PAGE_SIZE
        parent = k.spawn(name="parent")
        a = parent.mmap(n * PAGE_SIZE)
        fill(parent, a, n, 1)                        # A
        child = parent.fork()
        grandchild = child.fork()                    # sees A, through two shadows
        fill(child, a, n, 2)                         # child: B everywhere
        half = n // 2
        for i in range(half):                        # parent: C on the first half
            parent.write(a + i * PAGE_SIZE, pattern(3, i))
        # More pressure from an unrelated process pushes everything through swap.
        other = k.spawn(name="other")
        b = other.mmap(6 * M)
        fill(other, b, 6 * M // PAGE_SIZE, 4)
        settle(k)
        st = k.stats()
        assert st["pageouts"] > 0
        assert st["cowfaults"] > 0
        for _round in range(2):
            for i in range(n):
                want_parent = pattern(3, i) if i < half else pattern(1, i)
                assert parent.read(a + i * PAGE_SIZE, PAGE_SIZE) == want_parent, f"parent page {i}"
                assert child.read(a + i * PAGE_SIZE, PAGE_SIZE) == pattern(2, i), f"child page {i}"
                assert grandchild.read(a + i * PAGE_SIZE, PAGE_SIZE) == pattern(1, i), f"grandchild page {i}"
            fill(other, b, 6 * M // PAGE_SIZE, 5 + _round)  # and around again
        assert k.stats()["pageins"] > 0
        assert k.physmem.resident <= 4 * M
        k.check()
        # Writes after pages came back from swap still do not leak across.
        grandchild.write(a, b"G" * PAGE_SIZE)
        assert parent.read(a, PAGE_SIZE) == pattern(3, 0)
        assert child.read(a, PAGE_SIZE) == pattern(2, 0)
        child.exit()
        assert grandchild.read(a, PAGE_SIZE) == b"G" * PAGE_SIZE
        assert grandchild.read(a + (n - 1) * PAGE_SIZE, PAGE_SIZE) == pattern(1, n - 1)
        grandchild.exit()
        assert bad_pages(parent, a, half, 3) == []
        k.check()


def test_fork_children_under_pressure_in_threads():
    """Parent and several children, each in its own thread, rewriting their
    copies while the pagedaemon moves them to swap and back."""
    with rumpvm.Kernel(memlimit="4M", swap="64M") as k:
        n = 2 * M // PAGE_SIZE
        parent = k.spawn(name="parent")
        a = parent.mmap(n * PAGE_SIZE)
        fill(parent, a, n, 50)
        kids = [parent.fork() for _ in range(3)]
        procs = [parent, *kids]
        bad: dict[int, list[int]] = {}

        def worker(j):
            def run():
                p = procs[j]
                # Odd pages get this process's own data, even pages stay shared.
                for i in range(1, n, 2):
                    p.write(a + i * PAGE_SIZE, pattern(60 + j, i))
                wrong = []
                for i in range(n):
                    want = pattern(60 + j, i) if i % 2 else pattern(50, i)
                    if p.read(a + i * PAGE_SIZE, PAGE_SIZE) != want:
                        wrong.append(i)
                bad[j] = wrong
            return run

        with Sampler(k) as s:
            run_threads([worker(j) for j in range(len(procs))])
        assert bad == {j: [] for j in range(len(procs))}
        assert s.over == []
        settle(k)
        assert k.stats()["pageouts"] > 0
        k.check()
        for c in kids:
            c.exit()
        k.check()


# -- policies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_keeps_data_under_pressure(policy):
    with rumpvm.Kernel(memlimit="2M", swap="16M", policy=policy) as k:
        assert k.pagedaemon.policy == policy
        p = k.spawn()
        n = 5 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        with Sampler(k) as s:
            fill(p, a, n, 7)
            assert bad_pages(p, a, n, 7) == []
            # A hot set re-read among cold accesses, then everything again.
            for i in range(0, n, 3):
                p.read(a, PAGE_SIZE)
                p.write(a + i * PAGE_SIZE, pattern(8, i))
            for i in range(n):
                want = pattern(8, i) if i % 3 == 0 else pattern(7, i)
                assert p.read(a + i * PAGE_SIZE, PAGE_SIZE) == want, f"{policy}: page {i}"
        assert s.over == []
        settle(k)
        st = k.stats()
        assert st["pageouts"] > 0 and st["pageins"] > 0
        assert st["oomfails"] == 0
        k.check()


def test_policy_switch_at_runtime_under_pressure():
    with rumpvm.Kernel(memlimit="2M", swap="32M") as k:
        assert k.pagedaemon.policy == "clock"  # the default
        p = k.spawn()
        n = 1 * M // PAGE_SIZE
        regions = []
        for r, policy in enumerate([*POLICIES, *reversed(POLICIES)]):
            k.pagedaemon.policy = policy
            assert k.pagedaemon.policy == policy
            assert k.pagedaemon.status()["policy"] == policy
            a = p.mmap(n * PAGE_SIZE)
            fill(p, a, n, 200 + r)
            regions.append((a, 200 + r))
            for a2, tag in regions:  # everything written so far, under this policy
                assert bad_pages(p, a2, n, tag) == [], f"after switching to {policy}"
            k.check()
        assert k.stats()["pageouts"] > 0
        assert k.physmem.resident <= 2 * M


def test_policy_switch_while_threads_page():
    """Each policy stays in force until both workers have completed a whole
    round (write and verify 1 MiB, two of them > the 2 MiB limit) under it,
    and the daemon scanned meanwhile."""
    with rumpvm.Kernel(memlimit="2M", swap="32M") as k:
        n = 1 * M // PAGE_SIZE
        stop = threading.Event()
        bad: dict[int, list[int]] = {}
        done = threading.Condition()
        rounds = [0, 0]
        quit: list[int] = []  # workers that stopped (bad data or an error)
        scanned: list[tuple[str, int]] = []

        def worker(t):
            def run():
                p = k.spawn()
                a = p.mmap(n * PAGE_SIZE)
                try:
                    while not stop.is_set():
                        tag = 300 + t * 10 + rounds[t] % 10
                        fill(p, a, n, tag)
                        wrong = bad_pages(p, a, n, tag)
                        if wrong:
                            bad[t] = wrong
                            return
                        with done:
                            rounds[t] += 1
                            done.notify_all()
                finally:
                    with done:
                        quit.append(t)
                        done.notify_all()
            return run

        def switcher():
            try:
                for _ in range(3):
                    for policy in POLICIES:
                        scans0 = k.stats()["pdscans"]
                        k.pagedaemon.policy = policy
                        with done:
                            # A round that started after the switch has completed.
                            want = [r + 2 for r in rounds]
                            ok = done.wait_for(lambda want=want: quit or all(r >= w for r, w in zip(rounds, want)), 60)
                        if quit:
                            return  # the worker's error or bad data is reported
                        assert ok, "workers made no progress"
                        scanned.append((policy, k.stats()["pdscans"] - scans0))
            finally:
                stop.set()

        run_threads([worker(0), worker(1), switcher])
        assert bad == {}
        assert len(scanned) == 3 * len(POLICIES)
        assert all(n > 0 for _, n in scanned), scanned
        settle(k)
        assert k.stats()["pageouts"] > 0
        k.check()


@pytest.mark.parametrize("bad", ["", "LRU ", "optimal", "belady", "mru", None, 3])
def test_bad_policy_einval_keeps_old(bad):
    with rumpvm.Kernel(memlimit="4M", policy="fifo") as k:
        with pytest.raises((VMError, TypeError)) as ei:
            k.pagedaemon.policy = bad
        if isinstance(ei.value, VMError):
            assert ei.value.errno == errno.EINVAL
        assert k.pagedaemon.policy == "fifo"


@pytest.mark.parametrize("bad", ["bogus", "", "Clock2"])
def test_bad_policy_at_boot_einval(bad):
    with pytest.raises(VMError) as ei:
        rumpvm.Kernel(memlimit="4M", policy=bad)
    assert ei.value.errno == errno.EINVAL


# -- knobs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {"freemin": -1},
    {"freetarg": -1},
    {"freemin": 100, "freetarg": 50},      # freemin > freetarg
    {"freetarg": 0, "freemin": 0},         # nothing to scan for
    {"freetarg": 1024},                    # the whole 4M limit
    {"freetarg": 5000},                    # beyond the limit
    {"freemin": 2000, "freetarg": 2000000},
])
def test_knob_validation_einval_keeps_old(kw):
    with rumpvm.Kernel(memlimit="4M", swap="8M") as k:
        k.pagedaemon.set_knobs(freemin=20, freetarg=40)
        with pytest.raises(VMError) as ei:
            k.pagedaemon.set_knobs(**kw)
        assert ei.value.errno == errno.EINVAL
        st = k.pagedaemon.status()
        assert (st["freemin"], st["freetarg"]) == (20, 40)
        assert (k.pagedaemon.freemin, k.pagedaemon.freetarg) == (20, 40)


def test_knobs_set_and_honoured():
    with rumpvm.Kernel(memlimit="4M", swap="16M") as k:
        k.pagedaemon.set_knobs(freemin=100, freetarg=200)
        assert (k.pagedaemon.freemin, k.pagedaemon.freetarg) == (100, 200)
        k.pagedaemon.set_knobs(freetarg=300)  # one at a time keeps the other
        assert (k.pagedaemon.freemin, k.pagedaemon.freetarg) == (100, 300)
        p = k.spawn()
        n = 8 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 9)
        assert bad_pages(p, a, n, 9) == []
        # Let the daemon finish its last scan: woken below freemin, it frees
        # up to freetarg, so at least freemin pages are free once it sleeps.
        settle(k)
        assert k.stats()["pageouts"] > 0
        assert k.pagedaemon.status()["free"] >= 100
        # Hand-set knobs survive a limit change.
        k.memlimit = "8M"
        assert (k.pagedaemon.freemin, k.pagedaemon.freetarg) == (100, 300)
        k.check()


# -- out of swap ---------------------------------------------------------------------------------


def test_out_of_swap_oom_within_timeout_no_busy_loop():
    timeout = 1.0
    with rumpvm.Kernel(memlimit="2M", swap="2M", oom_timeout=timeout, policy="fifo") as k:
        p = k.spawn()
        keep_n = 64
        keep = p.mmap(keep_n * PAGE_SIZE)
        fill(p, keep, keep_n, 10)
        n = 8 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        written = 0
        with pytest.raises(rumpvm.OutOfMemory) as ei:
            for i in range(n):
                p.write(a + i * PAGE_SIZE, pattern(11, i))
                written += 1
        assert ei.value.errno == errno.ENOMEM
        assert isinstance(ei.value, VMError)
        settle(k)
        st = k.stats()
        # Memory and swap really were full (not a premature failure).
        assert st["swpginuse"] >= st["swpages"] - 8, st
        assert written * PAGE_SIZE >= 3 * M - keep_n * PAGE_SIZE
        assert st["oomfails"] >= 1
        assert k.physmem.resident <= 2 * M
        k.check()
        # A second attempt sleeps out its timeout instead of spinning: the
        # stalled daemon scans at most once more, the waiter waits once.
        assert_sleeps_not_spins(k, lambda: p.write(a + written * PAGE_SIZE, pattern(11, written)))
        # Free something, and the kernel works again: what was written
        # before comes back, and new memory can be used.
        p.munmap(a, n * PAGE_SIZE)
        assert bad_pages(p, keep, keep_n, 10) == []
        b = p.mmap(3 * M)
        fill(p, b, 3 * M // PAGE_SIZE, 12)
        assert bad_pages(p, b, 3 * M // PAGE_SIZE, 12) == []
        p.munmap(b, 3 * M)
        p.munmap(keep, keep_n * PAGE_SIZE)
        settle(k)
        assert k.stats()["swpginuse"] == 0
        k.check()


def test_out_of_swap_waiters_in_threads_all_fail_cleanly():
    """Several threads hit a full swap at once: each gets OutOfMemory within
    the timeout, nobody hangs, and the kernel recovers."""
    timeout = 0.8
    with rumpvm.Kernel(memlimit="2M", swap="1M", oom_timeout=timeout) as k:
        results: dict[int, str] = {}
        procs = [k.spawn() for _ in range(3)]
        addrs = [p.mmap(4 * M) for p in procs]

        def worker(t):
            def run():
                p, a = procs[t], addrs[t]
                try:
                    fill(p, a, 4 * M // PAGE_SIZE, 400 + t)
                    results[t] = "ok"
                except rumpvm.OutOfMemory:
                    results[t] = "oom"
            return run

        run_threads([worker(t) for t in range(3)])
        assert sorted(results) == [0, 1, 2]
        assert set(results.values()) == {"oom"}  # 12 MiB never fits in 3 MiB
        assert k.physmem.resident <= 2 * M
        settle(k)
        st = k.stats()
        assert st["swpginuse"] >= st["swpages"] - 8, st  # really full
        k.check()
        # Memory and swap full: three threads wait at once, each fails within
        # the timeout, and together they sleep rather than spin.
        results.clear()
        oomfails = st["oomfails"]
        start = threading.Barrier(4)

        def waiter(t):
            def run():
                start.wait()
                try:
                    procs[t].write(addrs[t] + 4 * M - PAGE_SIZE, b"x")  # never written before
                    results[t] = "ok"
                except rumpvm.OutOfMemory:
                    results[t] = "oom"
            return run

        ts = [threading.Thread(target=waiter(t)) for t in range(3)]
        for th in ts:
            th.start()
        scans = k.stats()["pdscans"]
        start.wait()
        for th in ts:
            th.join(timeout=60)
            assert not th.is_alive(), "a waiter hung"
        assert results == {0: "oom", 1: "oom", 2: "oom"}
        st = k.stats()
        assert st["oomfails"] == oomfails + 3
        assert st["pdscans"] - scans <= 3, "the stalled daemon kept scanning for the waiters"
        for p, a in zip(procs, addrs):
            p.munmap(a, 4 * M)
        settle(k)
        assert k.stats()["swpginuse"] == 0
        c = procs[0].mmap(1 * M)
        fill(procs[0], c, 1 * M // PAGE_SIZE, 450)
        assert bad_pages(procs[0], c, 1 * M // PAGE_SIZE, 450) == []
        k.check()


def assert_sleeps_not_spins(k, call) -> None:
    """`call` fails with OutOfMemory after one bounded wait (counted, not
    timed): one wait begun and failed, and the daemon — stalled, since a
    scan freed nothing — scans at most once more meanwhile."""
    before = k.stats()
    with pytest.raises(rumpvm.OutOfMemory):
        call()
    after = k.stats()
    assert (after["oomwaits"] - before["oomwaits"], after["oomfails"] - before["oomfails"]) == (1, 1)
    assert after["pdscans"] - before["pdscans"] <= 1, "the daemon kept scanning: a busy loop"


def test_no_swap_oom_is_prompt_and_sleeps():
    """No swap at all and dirty memory: nothing can be freed; the waiter sleeps."""
    timeout = 0.7
    with rumpvm.Kernel(memlimit="1M", oom_timeout=timeout) as k:
        p = k.spawn()
        a = p.mmap(2 * M)
        written = 0
        with pytest.raises(rumpvm.OutOfMemory):
            for i in range(2 * M // PAGE_SIZE):
                p.write(a + i * PAGE_SIZE, pattern(13, i))
                written += 1
        for _ in range(2):
            assert_sleeps_not_spins(k, lambda: p.write(a + written * PAGE_SIZE, b"x"))
        assert bad_pages(p, a, written, 13) == []
        # A partial munmap frees its pages at once: the memory is usable.
        p.munmap(a + PAGE_SIZE * (written // 2), 2 * M - PAGE_SIZE * (written // 2))
        assert bad_pages(p, a, written // 2, 13) == []
        nb = written - written // 2 - 8
        b = p.mmap(nb * PAGE_SIZE)
        fill(p, b, nb, 14)
        assert bad_pages(p, b, nb, 14) == []
        k.check()


# -- regressions --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_first_scan_at_the_limit_does_not_stall(policy):
    """With freemin=0 the daemon is first woken by a waiter, with memory
    already full and every page referenced.  A clock scan that only clears
    reference bits frees nothing, but it did make progress: the daemon must
    scan again rather than mark itself stalled while swap has room."""
    with rumpvm.Kernel(memlimit="4M", swap="16M", policy=policy, oom_timeout=1.0) as k:
        k.pagedaemon.set_knobs(freemin=0, freetarg=64)
        p = k.spawn()
        n = 8 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 70)  # OutOfMemory here means the daemon gave up early
        assert bad_pages(p, a, n, 70) == []
        assert k.stats()["oomfails"] == 0


def test_check_passes_while_paging():
    """k.check() must hold at any instant, also while a pageout is in flight
    (the daemon drops the lock during the swap write): the checker runs
    until it has checked the kernel during 20 different pageouts."""
    # The checker holds the lock most of the time (Python's lock is not
    # fair): the workers' memory waits must not time out meanwhile.
    with rumpvm.Kernel(memlimit="2M", swap="32M", policy="random", oom_timeout=120) as k:
        stop = threading.Event()
        failures: list[str] = []
        inflight_checks: set[frozenset[int]] = set()
        checks = 0

        def worker(t):
            def run():
                p = k.spawn()
                n = 2 * M // PAGE_SIZE
                a = p.mmap(n * PAGE_SIZE)
                rnd = 0
                while not stop.is_set():
                    fill(p, a, n, 80 + t * 100 + rnd)
                    rnd += 1
            return run

        def checker():
            nonlocal checks
            try:
                while len(inflight_checks) < 20 and checks < 200_000:
                    with k.lock:  # the in-flight slots and the check see one state
                        flying = frozenset(k.pagedaemon.inflight)
                        errors = check_kernel(k)
                    checks += 1
                    if errors:
                        failures.append("\n".join(errors[:20]) + f"\n(pageout in flight: {bool(flying)})")
                        return
                    if flying:
                        inflight_checks.add(flying)
            finally:
                stop.set()

        run_threads([worker(0), worker(1), checker])
        assert failures == []
        assert len(inflight_checks) >= 20, f"only {len(inflight_checks)} pageouts seen in {checks} checks"
        settle(k)
        k.check()


# -- counters ------------------------------------------------------------------------------------


def test_pagedaemon_counters_move():
    with rumpvm.Kernel(memlimit="2M", swap="16M") as k:
        st0 = k.stats()
        assert all(st0[c] == 0 for c in ("pageouts", "pageins", "pdscans", "pdfreed", "oomfails")), st0
        p = k.spawn()
        n = 4 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 15)
        # Re-read a hot page between every cold access: clock's second chance.
        for i in range(n):
            p.read(a, 16)
            p.read(a + i * PAGE_SIZE, 16)
        settle(k)
        st = k.stats()
        for c in ("pdwoke", "pdscans", "pdfreed", "pageouts", "pageins", "faults", "zerofills"):
            assert st[c] > 0, f"{c} did not move: {st}"
        assert st["pdwoke"] + st["directreclaims"] >= st["pdscans"]  # one scan per wake-up or direct reclaim
        assert st["pdfreed"] >= st["pageouts"]
        assert st["zerofills"] >= n
        assert st["swpginuse"] > 0
        assert st["swpages"] == 16 * M // PAGE_SIZE
        assert st["resident"] <= st["memlimit"] == 2 * M
        assert st["npages"] == 2 * M // PAGE_SIZE
        assert st["active"] + st["inactive"] + st["wired"] <= st["npages"]
        # Settled, the daemon's own view and the kernel's counters agree exactly.
        status = k.pagedaemon.status()
        assert (status["scans"], status["pageouts"], status["freed"], status["wakeups"], status["reactivated"]) \
            == (st["pdscans"], st["pageouts"], st["pdfreed"], st["pdwoke"], st["pdreact"])
        assert status["free"] == min(k.physmem.avail_pages(), 1 << 31)
        k.check()


def test_pdreact_counts_second_chances_under_clock():
    with rumpvm.Kernel(memlimit="2M", swap="16M", policy="clock") as k:
        p = k.spawn()
        n = 4 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        hot = 32
        fill(p, a, n, 16)
        for rnd in range(3):
            for i in range(hot, n):
                if i % 4 == 0:
                    for h in range(0, hot):  # keep a hot set referenced
                        p.read(a + h * PAGE_SIZE, 8)
                p.write(a + i * PAGE_SIZE, pattern(17 + rnd, i))
        assert k.stats()["pdreact"] > 0
        assert bad_pages(p, a, hot, 16) == []
        k.check()


def test_no_pageouts_without_pressure():
    with rumpvm.Kernel(memlimit="16M", swap="16M") as k:
        p = k.spawn()
        a = p.mmap(4 * M)
        fill(p, a, 4 * M // PAGE_SIZE, 18)
        assert bad_pages(p, a, 4 * M // PAGE_SIZE, 18) == []
        settle(k)
        st = k.stats()
        assert st["pdscans"] == 0  # far from the limit: the daemon never had work
        assert st["pageouts"] == 0 and st["pageins"] == 0 and st["swpginuse"] == 0
        assert st["oomwaits"] == 0


def test_direct_reclaim_frees_memory_without_the_daemon():
    """A thread short of memory scans and pages out by itself (direct
    reclaim): with the pagedaemon thread stopped, writing twice the limit
    still works, every page comes back, and the counters say who did it."""
    with rumpvm.Kernel(memlimit="2M", swap="16M") as k:
        k.pagedaemon.stop()
        assert not k.pagedaemon.thread.is_alive()
        p = k.spawn()
        n = 4 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 21)
        assert bad_pages(p, a, n, 21) == []
        st = k.stats()
        assert st["directreclaims"] > 0 and st["pageouts"] > 0 and st["pageins"] > 0
        assert st["pdwoke"] == 0, "the stopped daemon ran"
        assert st["resident"] <= 2 * M
        k.check()
