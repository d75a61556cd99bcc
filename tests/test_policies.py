"""Replacement policies (rumpvm/policy.py) and the LRU miss-ratio curve
(rumpvm/mrc.py), on real kernels.

What a user relies on: a policy named like a libCacheSim algorithm faults
exactly as libCacheSim's (a trace replayed by the lab in a kernel with N
frames is a cache of N slots); no policy beats Belady's OPT; every policy
keeps data intact under the real, asynchronous pagedaemon with swap; the
random policy is reproducible from its seed; WSClock keeps its working set;
policies can be switched on a busy kernel and bad names change nothing; the
one-pass curve gives exact LRU misses at every capacity.
"""

from __future__ import annotations

import errno
import random
import threading
from collections import OrderedDict
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lcs import lcs_misses
from pages import bad_pages, fill, pattern, settle

import rumpvm
from rumpvm import PAGE_SIZE, VMError, lab
from rumpvm.mrc import lru_mrc
from rumpvm.page import VMPage
from rumpvm.policy import POLICIES, WSClock, register

M = 1 << 20

# libcachesim is a declared test dependency: imported where it is used.
LIBCACHESIM = {"lru": "LRU", "fifo": "FIFO", "2q": "TwoQ", "sieve": "Sieve", "s3fifo": "S3FIFO"}


# -- traces -------------------------------------------------------------------------------------

def random_trace(length: int, pages: int, seed: int) -> list[int]:
    """Uniform pages: no locality."""
    rng = random.Random(seed)
    return [rng.randrange(pages) for _ in range(length)]


def zipf_trace(length: int, pages: int, seed: int) -> list[int]:
    """Rank r drawn with weight 1/r, ranks scattered over the pages."""
    rng = random.Random(seed)
    order = list(range(pages))
    rng.shuffle(order)
    return [order[i] for i in rng.choices(range(pages), weights=[1 / r for r in range(1, pages + 1)], k=length)]


def loop_trace(length: int, pages: int) -> list[int]:
    """A sequential loop: LRU's and FIFO's worst case below its length."""
    return [i % pages for i in range(length)]


TRACES = {
    "random": random_trace(1000, 90, seed=1),
    "zipf": zipf_trace(1200, 180, seed=2),
    "loop": loop_trace(500, 30),
}


def kernel_faults(trace: list[int], frames: int, policy: str, seed: int = 0) -> int:
    """Faults of `trace` replayed by the lab in a kernel with `frames` frames
    for its pages (every third access a write, the rest reads), with the
    kernel's consistency checks after the replay."""
    accesses = [page << 1 | (i % 3 == 0) for i, page in enumerate(trace)]
    return lab.run(accesses, frames * PAGE_SIZE, policy, seed=seed, check=True).faults


def lru_misses(trace: list[int], capacity: int) -> int:
    """Exact LRU (an OrderedDict, head least recently used)."""
    cache: OrderedDict[int, None] = OrderedDict()
    misses = 0
    for page in trace:
        if page in cache:
            cache.move_to_end(page)
            continue
        misses += 1
        cache[page] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return misses


def policy_errors(k: rumpvm.Kernel) -> list[str]:
    """The tracking policy's own consistency check against the queues."""
    with k.lock:
        pol = k.queues.policy
        return [] if pol is None else pol.errors(k.queues)


# -- exactness against libCacheSim ------------------------------------------------------------------

@pytest.mark.parametrize("policy", sorted(LIBCACHESIM))
@pytest.mark.parametrize("name", sorted(TRACES))
def test_faults_equal_libcachesim(policy: str, name: str) -> None:
    # 20 frames and up: below, libCacheSim's S3FIFO small queue (10%) holds
    # less than two objects and it caches nothing there.
    trace = TRACES[name]
    for frames in (20, 45):
        assert kernel_faults(trace, frames, policy) == lcs_misses(LIBCACHESIM[policy], trace, frames), (frames,)


def test_2q_resists_a_loop_larger_than_memory() -> None:
    # LRU evicts each page of the loop just before its next use; 2Q keeps
    # the pages that came back while A1out remembered them in Am.
    trace = loop_trace(800, 40)
    assert kernel_faults(trace, 32, "lru") == len(trace)
    assert lab.opt_faults(trace, 32) <= kernel_faults(trace, 32, "2q") < len(trace) // 2


# -- every policy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", list(POLICIES))
def test_no_policy_beats_opt(policy: str) -> None:
    for name in ("zipf", "loop"):
        trace = TRACES[name]
        faults = kernel_faults(trace, 24, policy)
        assert lab.opt_faults(trace, 24) <= faults <= len(trace), name


@pytest.mark.parametrize("policy", list(POLICIES))
def test_data_intact_under_the_pagedaemon(policy: str) -> None:
    # The real, asynchronous pagedaemon (default knobs), writes of 4x the
    # limit, a hot page read among them, everything read back.
    with rumpvm.Kernel(memlimit="2M", swap="16M", policy=policy, policy_seed=3) as k:
        p = k.spawn()
        n = 4 * 2 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 11)
        for i in range(0, n, 4):
            p.read(a, PAGE_SIZE)
            p.write(a + i * PAGE_SIZE, pattern(12, i))
        for i in range(n):
            want = pattern(12, i) if i % 4 == 0 else pattern(11, i)
            assert p.read(a + i * PAGE_SIZE, PAGE_SIZE) == want, f"page {i}"
        settle(k)
        st = k.stats()
        assert st["pageouts"] > 0 and st["pageins"] > 0 and st["oomfails"] == 0
        assert policy_errors(k) == []
        k.check()


def fill_in_threads(procs: list[rumpvm.Proc], addrs: list[int], n: int, tags: list[int]) -> None:
    """Fill each process's region in a thread of its own; raise what any raised."""
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            fill(procs[t], addrs[t], n, tags[t])
        except BaseException as e:  # re-raised below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(procs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def test_threads_page_under_every_policy() -> None:
    # Two threads fault against each other under each policy in turn: the
    # tracking policies' state follows every insertion and removal,
    # including those of pages made busy by a concurrent pageout.
    with rumpvm.Kernel(memlimit="2M", swap="32M") as k:
        n = 300
        procs = [k.spawn() for _ in range(2)]
        addrs = [p.mmap(n * PAGE_SIZE) for p in procs]
        for rnd, policy in enumerate(POLICIES):
            k.pagedaemon.policy = policy
            tags = [100 * rnd, 100 * rnd + 1]
            fill_in_threads(procs, addrs, n, tags)
            for t in range(2):
                assert bad_pages(procs[t], addrs[t], n, tags[t]) == [], policy
            settle(k)
            assert policy_errors(k) == [], policy
            k.check()


# -- random ---------------------------------------------------------------------------------------

def test_random_is_reproducible_from_its_seed() -> None:
    trace = TRACES["zipf"]
    one = kernel_faults(trace, 30, "random", seed=7)
    assert kernel_faults(trace, 30, "random", seed=7) == one
    others = {kernel_faults(trace, 30, "random", seed=s) for s in (8, 9, 10)}
    assert others != {one}  # the seed matters


def victims_of(k: rumpvm.Kernel, want: int) -> Iterator[VMPage]:
    """The policy's candidates, consumed the way the pagedaemon does when
    it passes over every one (lock held by the caller)."""
    pol = k.queues.policy
    assert pol is not None
    for page in pol.victims(k, want):
        yield page
        k.queues.enqueue(page, page.queue)


def test_random_offers_only_pageable_pages() -> None:
    with rumpvm.Kernel(memlimit="4M", swap="16M", policy="random", policy_seed=1) as k:
        p = k.spawn()
        locked = p.mmap(64 * PAGE_SIZE)
        p.write(locked, b"wired")
        p.mlock(locked, 64 * PAGE_SIZE)
        a = p.mmap(4 * M)
        fill(p, a, 4 * M // PAGE_SIZE, 5)  # pages out around the wired region
        settle(k)
        with k.lock:
            queued = set(k.queues.active) | set(k.queues.inactive)
            seen = list(victims_of(k, 8))
            # Every pageable page is drawn (deactivated ones are offered
            # first as well, so at most twice), and nothing else.
            assert set(seen) == queued and len(seen) <= 2 * len(queued)
            for page in seen:
                assert page.queue and not page.wire_count and not page.busy
        assert k.stats()["pageouts"] > 0
        assert p.read(locked, 5) == b"wired"
        k.check()


# -- WSClock --------------------------------------------------------------------------------------

def working_set_trace(hot: int, period: int, cold: int) -> list[int]:
    """`cold` pages (numbered from 1000) used once each, and after every
    `period` of them the `hot` pages: only the cold pages need to fault."""
    trace = []
    for c in range(cold):
        trace.append(1000 + c)
        if c % period == period - 1:
            trace += list(range(hot))
    return trace


@pytest.fixture
def wsclock_tau() -> Iterator[dict[int, str]]:
    """WSClock with fixed windows registered for the lab, and unregistered
    after: a parameterised policy is one subclass and one registration."""
    names = {}
    for tau in (1, 3, 6):
        cls = type(f"WSClockTau{tau}", (WSClock,), {"name": f"wsclocktau{tau}", "tau": tau})
        register(cls)
        names[tau] = cls.name
    yield names
    for name in names.values():
        del POLICIES[name]


def test_wsclock_keeps_pages_used_within_tau(wsclock_tau: dict[int, str]) -> None:
    # Virtual time counts faults.  Hot pages are used every 3 faults, so
    # the hand finds them used within 2 ticks; with tau >= 3 (and the
    # default, half of memory) they are in the working set while older
    # cold pages exist, and only cold pages are evicted: exactly OPT.
    # FIFO evicts hot pages too, and so does WSClock with tau 1, where
    # the hot pages drop out of the window between their uses.
    trace = working_set_trace(hot=4, period=3, cold=200)
    opt = lab.opt_faults(trace, 8)
    assert opt == 4 + 200
    for name in (wsclock_tau[3], wsclock_tau[6], "wsclock"):
        assert kernel_faults(trace, 8, name) == opt, name
    assert kernel_faults(trace, 8, wsclock_tau[1]) > opt
    assert kernel_faults(trace, 8, "fifo") > opt


def test_wsclock_between_opt_and_worst_case() -> None:
    for name, trace in TRACES.items():
        for frames in (16, 40):
            faults = kernel_faults(trace, frames, "wsclock")
            assert lab.opt_faults(trace, frames) <= faults <= len(trace), (name, frames)
    # A loop longer than memory: every access misses under any policy that
    # keeps no page across the loop; WSClock is at worst that.
    loop = loop_trace(300, 30)
    assert kernel_faults(loop, 20, "wsclock") <= len(loop)


def test_wsclock_tau_is_checked() -> None:
    with pytest.raises(VMError) as ei:
        WSClock(tau=0)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        WSClock(tau=2.5)  # type: ignore[arg-type]


# -- selecting and switching ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["nope", "2Q", "", None, 7])
def test_unknown_policy_changes_nothing(bad: object) -> None:
    with rumpvm.Kernel(memlimit="4M", policy="sieve") as k:
        p = k.spawn()
        a = p.mmap(16 * PAGE_SIZE)
        fill(p, a, 16, 1)
        before = (k.queues.policy, k.touch)
        with pytest.raises(VMError) as ei:
            k.pagedaemon.policy = bad  # type: ignore[assignment]
        assert ei.value.errno == errno.EINVAL
        assert k.pagedaemon.policy == "sieve"
        assert (k.queues.policy, k.touch) == before
        assert policy_errors(k) == []


def test_a_policy_instance_serves_one_kernel() -> None:
    pol = WSClock(tau=50)
    with rumpvm.Kernel(memlimit="4M", swap="8M") as k1, rumpvm.Kernel(memlimit="4M") as k2:
        k1.pagedaemon.policy = pol
        assert k1.pagedaemon.policy == "wsclock"
        with pytest.raises(VMError) as ei:
            k2.pagedaemon.policy = pol
        assert ei.value.errno == errno.EINVAL
        assert k2.pagedaemon.policy == "clock"
        p = k1.spawn()
        a = p.mmap(8 * M)
        fill(p, a, 8 * M // PAGE_SIZE, 2)
        assert bad_pages(p, a, 8 * M // PAGE_SIZE, 2) == []
        assert k1.stats()["pageouts"] > 0 and policy_errors(k1) == []


def test_bad_seed_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        rumpvm.Kernel(policy="random", policy_seed="7")  # type: ignore[arg-type]


def test_switching_on_a_busy_kernel() -> None:
    with rumpvm.Kernel(memlimit="2M", swap="32M", policy_seed=2) as k:
        p = k.spawn()
        n = 192
        regions: list[tuple[int, int]] = []
        for r, policy in enumerate([*POLICIES, *reversed(POLICIES)]):
            k.pagedaemon.policy = policy  # pages resident, some on swap
            assert k.pagedaemon.status()["policy"] == policy
            assert policy_errors(k) == []
            a = p.mmap(n * PAGE_SIZE)
            fill(p, a, n, 300 + r)
            regions.append((a, 300 + r))
            for a2, tag in (regions[0], regions[-1]):  # the oldest, back from swap, and the newest
                assert bad_pages(p, a2, n, tag) == [], policy
            assert policy_errors(k) == []
            k.check()
        for a2, tag in regions:
            assert bad_pages(p, a2, n, tag) == []
        assert k.stats()["pageouts"] > 0


def test_registry() -> None:
    assert list(POLICIES)[:3] == ["clock", "lru", "fifo"]
    assert {"random", "2q", "sieve", "s3fifo", "wsclock"} <= set(POLICIES)
    assert set(lab.policy_names()) >= set(POLICIES)
    with pytest.raises(ValueError, match="already registered"):
        register(type("Again", (WSClock,), {"name": "sieve"}))
    with pytest.raises(ValueError, match="lowercase"):
        register(type("Bad", (WSClock,), {"name": "Bad-Name"}))
    assert POLICIES["sieve"].__name__ == "Sieve"


# -- the miss-ratio curve --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TRACES))
def test_mrc_is_exact_lru_at_every_capacity(name: str) -> None:
    trace = TRACES[name]
    curve = lru_mrc(iter(trace))  # a stream, consumed once
    distinct = len(set(trace))
    assert curve.accesses == len(trace) and curve.cold == distinct
    assert curve.misses(0) == len(trace)
    for cap in range(1, distinct + 2):
        assert curve.misses(cap) == lru_misses(trace, cap), cap
    assert curve.miss_ratio(distinct) == distinct / len(trace)


def test_mrc_equals_kernel_lru() -> None:
    trace = TRACES["zipf"]
    curve = lru_mrc(trace)
    for frames in (10, 33):
        assert curve.misses(frames) == kernel_faults(trace, frames, "lru")


@settings(max_examples=120, deadline=None)
@given(st.lists(st.integers(0, 15), max_size=150), st.integers(1, 9))
def test_mrc_with_compaction(trace: list[int], window: int) -> None:
    # A tiny tree compacts (and grows) over and over: nothing may change.
    curve = lru_mrc(trace, window=window)
    assert curve == lru_mrc(trace)
    for cap in range(0, 18):
        assert curve.misses(cap) == (lru_misses(trace, cap) if cap else len(trace))


def test_mrc_bad_arguments() -> None:
    curve = lru_mrc([1, 2, 1])
    with pytest.raises(ValueError):
        curve.misses(-1)
    with pytest.raises(ValueError):
        lru_mrc([1], window=0)
    assert lru_mrc([]).miss_ratio(4) == 0.0
    assert curve.curve() == [(1, 1.0), (2, 2 / 3)]
