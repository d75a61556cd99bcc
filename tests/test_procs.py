"""Adversarial tests of the process glue: shared vmspaces (fork shared, exec,
unshare), grow-down stacks, resource limits, run states and the swapper,
kernacc/useracc/vslock/chgkprot, and bad input (exited processes, no u-area).

Every test ends with `k.check()` (the fixtures do it at teardown; tests that
boot their own kernel call it themselves).  Nothing here sleeps on a clock:
the swapper is driven by `k.maxslp = 0` or by ordering (who went to sleep
first), memory is made short by writing from another process, and states
are awaited with `k.pagedaemon.wait_idle()` or a deadline poll.
"""

from __future__ import annotations

import errno
import threading
import time

import pytest
from pausing import paused_call

import rumpvm
from rumpvm import (
    INHERIT_NONE,
    INHERIT_SHARE,
    MAP_ANON,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    OutOfMemory,
    SegmentationFault,
    VMError,
)
from rumpvm.resource import (
    RLIM_INFINITY,
    RLIMIT_AS,
    RLIMIT_DATA,
    RLIMIT_MEMLOCK,
    RLIMIT_RSS,
    RLIMIT_STACK,
)

KB = 1024
MB = 1 << 20
RW = PROT_READ | PROT_WRITE
USPACE = 2 * PAGE_SIZE
VM_MAXUSER_ADDRESS = 0x7FFFFFFFF000
STACK = "[stack]"
SGROWSIZ = 128 * KB


# -- helpers ----------------------------------------------------------------------------

def fill(p, addr, n, byte=b"x", chunk=64 * KB):
    for off in range(0, n, chunk):
        m = min(chunk, n - off)
        p.write(addr + off, byte * m)


def errno_of(excinfo):
    return excinfo.value.errno


def stack_entries(p):
    return [m for m in p.maps() if m.name == STACK]


def stack_span(p):
    ents = stack_entries(p)
    return min(m.start for m in ents), max(m.end for m in ents)


def layout(p):
    """Maps without object ids (comparable across sharers and copies)."""
    return [(m.start, m.end, m.prot, m.max_prot, m.inheritance, m.shared, m.wired, m.name) for m in p.maps()]


def uarea_wired(k, p):
    kmem = next(m for m in k.kmem_maps() if m.name == "kmem_map")
    for e in kmem.entries:
        if e.start <= p.uarea < e.end:
            assert e.end >= p.uarea + USPACE
            return e.wired
    raise AssertionError(f"u-area {p.uarea:#x} of {p} is not mapped")


def wait_for(k, pred, timeout=5.0):
    """Poll `pred` until true or the deadline (waking on pagedaemon idleness)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return False
        k.pagedaemon.wait_idle(0.05)
    return True


def swap_out(k, *targets, limit=400):
    """Spawn sleeping fillers (each sleeps after spawning, so the targets,
    asleep earlier, have slept longer) until every target is swapped out
    (their wired u-areas fill memory).  Returns the fillers."""
    fillers = []
    for _ in range(limit):
        if all(t.state == "W" for t in targets):
            return fillers
        f = k.spawn("filler")
        f.sleep()
        fillers.append(f)
        k.pagedaemon.wait_idle()
    raise AssertionError(f"targets not swapped out after {limit} fillers: {[t.state for t in targets]}")


@pytest.fixture
def tiny(request):
    """1M limit, 16M swap: a few dozen u-areas fill memory."""
    with rumpvm.Kernel(memlimit="1M", swap="16M") as k:
        yield k
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.passed:
            k.check()


@pytest.fixture
def small(request):
    """4M limit, 32M swap, for paging pressure."""
    with rumpvm.Kernel(memlimit="4M", swap="32M") as k:
        yield k
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.passed:
            k.check()


# -- shared vmspaces ---------------------------------------------------------------------

def test_fork_shared_writes_both_ways_and_maps_identical(kernel):
    k = kernel
    p = k.spawn("p")
    a = p.mmap(64 * KB)
    p.write(a, b"parent")
    c = p.fork(shared=True)
    assert c.ppid == p.pid and c.read(a, 6) == b"parent"
    c.write(a + 100, b"child")
    assert p.read(a + 100, 5) == b"child"
    p.write(a, b"PARENT")
    assert c.read(a, 6) == b"PARENT"
    b = c.mmap(8 * KB)  # a new mapping is seen by both
    p.write(b, b"new")
    assert c.read(b, 3) == b"new"
    assert p.maps() == c.maps()
    p.munmap(a, 64 * KB)
    assert p.maps() == c.maps()
    with pytest.raises(SegmentationFault):
        c.read(a, 1)
    k.check()


def test_shared_vmspace_survives_one_exit_and_dies_with_last(kernel):
    k = kernel
    base = k.stats()["objects"]
    p = k.spawn("p")
    a = p.mmap(32 * KB)
    p.write(a, b"one")
    c = p.fork(shared=True)
    c.write(a + 8, b"two")
    c.exit()
    assert c.state == "Z"
    assert p.read(a, 3) == b"one" and p.read(a + 8, 3) == b"two"
    p.write(a + 16, b"three")  # keeps using it
    p.mmap(4 * KB)
    k.check()
    c2 = p.fork(shared=True)
    p.exit()  # now the parent goes first
    assert c2.read(a + 16, 5) == b"three"
    c2.write(a, b"ONE")
    assert c2.read(a, 3) == b"ONE"
    k.check()
    c2.exit()
    assert k.stats()["objects"] == base
    assert k.procs() == []
    k.check()


def test_exec_gives_fresh_space_and_leaves_sharers_alone(kernel):
    k = kernel
    base = k.stats()["objects"]
    p = k.spawn("p")
    a = p.mmap(32 * KB)
    p.write(a, b"keep")
    c = p.fork(shared=True)
    c.exec()
    assert c.maps() == []
    with pytest.raises(SegmentationFault):
        c.read(a, 1)
    assert p.read(a, 4) == b"keep"
    b = c.mmap(8 * KB)  # likely the same address as `a`: a different space
    c.write(b, b"c")
    assert p.read(a, 4) == b"keep" and len(p.maps()) == 1
    k.check()
    # exec of an unshared space tears it down
    p.exec()
    assert p.maps() == []
    c.exec()
    assert k.stats()["objects"] == base
    p.mmap(PAGE_SIZE)
    k.check()


def test_exec_keeps_limits_and_new_stack_works(kernel):
    k = kernel
    p = k.spawn()
    p.setrlimit(RLIMIT_STACK, 256 * KB, 1 * MB)
    p.map_stack(1 * MB)
    p.exec()
    assert p.getrlimit(RLIMIT_STACK) == (256 * KB, 1 * MB)
    top = p.map_stack(1 * MB)
    p.write(top - 256 * KB, b"x")  # grows to exactly the limit
    with pytest.raises(SegmentationFault):
        p.write(top - 256 * KB - PAGE_SIZE, b"x")
    k.check()


def test_unshare_makes_private_copy_following_inheritance(kernel):
    k = kernel
    p = k.spawn("p")
    a = p.mmap(16 * KB)
    n = p.mmap(16 * KB)
    s = p.mmap(16 * KB)
    p.write(a, b"copy")
    p.write(n, b"none")
    p.write(s, b"share")
    p.minherit(n, 16 * KB, INHERIT_NONE)
    p.minherit(s, 16 * KB, INHERIT_SHARE)
    c = p.fork(shared=True)
    c.unshare()
    assert c.read(a, 4) == b"copy"
    with pytest.raises(SegmentationFault):
        c.read(n, 1)  # INHERIT_NONE left out of the copy
    assert p.read(n, 4) == b"none"  # but the other sharer keeps it
    c.write(a, b"COPY")
    assert p.read(a, 4) == b"copy"
    p.write(a, b"pppp")
    assert c.read(a, 4) == b"COPY"
    c.write(s, b"SHARE")  # INHERIT_SHARE still shared
    assert p.read(s, 5) == b"SHARE"
    c.mmap(PAGE_SIZE)
    assert len(p.maps()) == 3
    k.check()


def test_unshare_noop_when_not_shared(kernel):
    k = kernel
    p = k.spawn()
    a = p.mmap(16 * KB)
    p.write(a, b"x")
    before = p.maps()
    objs = k.objects()
    p.unshare()
    assert p.maps() == before and k.objects() == objs
    c = p.fork(shared=True)
    c.exit()
    p.unshare()  # the sharer is gone: no-op again
    assert p.maps() == before
    # both sharers unshare: the first copies, the second is then alone
    c = p.fork(shared=True)
    p.unshare()
    c.unshare()
    c.write(a, b"c")
    assert p.read(a, 1) == b"x"
    k.check()


def test_unshare_with_wired_memory(kernel):
    k = kernel
    p = k.spawn("p")
    a = p.mmap(32 * KB)
    p.write(a, b"wired")
    p.mlock(a, 32 * KB)
    c = p.fork(shared=True)
    assert [m.wired for m in c.maps()] == [True]
    c.unshare()
    assert c.read(a, 5) == b"wired"
    assert [m.wired for m in c.maps()] == [False]  # POSIX: locks not inherited by a copy
    assert [m.wired for m in p.maps()] == [True]
    c.write(a, b"WIRED")
    assert p.read(a, 5) == b"wired"
    k.check()
    # the one that wired unshares: the other sharer keeps the wired original
    c2 = p.fork(shared=True)
    p.unshare()
    assert p.read(a, 5) == b"wired" and c2.read(a, 5) == b"wired"
    p.write(a, b"p")
    assert c2.read(a, 1) == b"w"
    k.check()
    c2.exit()
    k.check()
    p.munlock(a, 32 * KB)
    k.check()


def test_shared_mlock_in_one_munmap_in_other(kernel):
    k = kernel
    p = k.spawn("p")
    a = p.mmap(64 * KB)
    fill(p, a, 64 * KB, b"m")
    c = p.fork(shared=True)
    wired0 = k.stats()["wired"]
    p.mlock(a, 64 * KB)
    assert k.stats()["wired"] == wired0 + 16
    assert all(m.wired for m in c.maps())
    c.munmap(a + 16 * KB, 16 * KB)
    assert p.maps() == c.maps()
    with pytest.raises(SegmentationFault):
        p.read(a + 16 * KB, 1)
    assert p.read(a, 1) == b"m" and p.read(a + 32 * KB, 1) == b"m"
    k.check()
    c.munmap(a, 64 * KB)
    assert p.maps() == [] and k.stats()["wired"] == wired0
    k.check()
    # the wiring budget is free again
    b = p.mmap(64 * KB)
    p.mlock(b, 64 * KB)
    c.exit()
    p.exit()
    k.check()


def test_fork_of_shared_space_is_cow_for_both_sharers(kernel):
    k = kernel
    p = k.spawn("p")
    a = p.mmap(16 * KB)
    p.write(a, b"orig")
    c = p.fork(shared=True)
    g = c.fork()  # a private copy of the shared space
    c.write(a, b"CCCC")
    assert p.read(a, 4) == b"CCCC" and g.read(a, 4) == b"orig"
    g.write(a, b"GGGG")
    assert p.read(a, 4) == b"CCCC"
    k.check()


def test_shared_stack_growth_seen_by_both(kernel):
    k = kernel
    p = k.spawn()
    top = p.map_stack(1 * MB)
    c = p.fork(shared=True)
    c.write(top - 200 * KB, b"deep")
    assert p.read(top - 200 * KB, 4) == b"deep"
    assert stack_span(p) == stack_span(c)
    k.check()


def test_stack_limit_is_per_process_in_a_shared_space(kernel):
    """RLIMIT_STACK is the faulting process's own limit (BSD: lim_cur of
    curproc in vm_map_growstack), not whatever a sharer set."""
    k = kernel
    p = k.spawn()
    p.setrlimit(RLIMIT_STACK, 256 * KB, 512 * MB)
    top = p.map_stack(4 * MB)
    c = p.fork(shared=True)
    c.setrlimit(RLIMIT_STACK, 4 * MB, 512 * MB)  # the child raises its own soft limit
    with pytest.raises(SegmentationFault):
        p.write(top - 1 * MB, b"x")  # beyond the parent's 256K
    c.write(top - 1 * MB, b"x")
    k.check()


# -- stacks -----------------------------------------------------------------------------

def test_map_stack_layout_growth_and_guard(kernel):
    k = kernel
    p = k.spawn()
    top = p.map_stack(1 * MB)
    assert top == VM_MAXUSER_ADDRESS  # as high as possible
    bos = top - 1 * MB
    [e] = stack_entries(p)
    assert (e.start, e.end, e.prot) == (top - SGROWSIZ, top, RW)
    assert p.status().vm_stk == SGROWSIZ
    p.write(top - 8, b"topbytes")
    p.write(top - SGROWSIZ - 1, b"g")  # one byte below: grows by 128K
    assert stack_span(p) == (top - 2 * SGROWSIZ, top)
    assert p.read(top - 8, 8) == b"topbytes"
    # a read grows it too
    assert p.read(top - 2 * SGROWSIZ - 10, 4) == bytes(4)
    assert stack_span(p) == (top - 3 * SGROWSIZ, top)
    # the guard page is never mapped
    before = p.maps()
    with pytest.raises(SegmentationFault):
        p.write(bos, b"x")
    with pytest.raises(SegmentationFault):
        p.read(bos + PAGE_SIZE - 1, 1)
    assert p.maps() == before
    # just above the guard: grows to the floor, not past it
    p.write(bos + PAGE_SIZE, b"floor")
    assert stack_span(p) == (bos + PAGE_SIZE, top)
    assert p.read(bos + PAGE_SIZE, 5) == b"floor"
    with pytest.raises(SegmentationFault):
        p.write(bos + PAGE_SIZE - 1, b"x")
    assert p.useracc(bos + PAGE_SIZE, 1 * MB - PAGE_SIZE, RW)
    assert not p.useracc(bos, PAGE_SIZE, PROT_READ)
    k.check()


def test_stack_grows_in_sgrowsiz_steps(kernel):
    """A fault 200K below a 128K stack: FreeBSD rounds the growth up to a
    multiple of sgrowsiz (128K)."""
    k = kernel
    p = k.spawn()
    top = p.map_stack(4 * MB)
    p.write(top - SGROWSIZ - 200 * KB, b"x")
    lo, hi = stack_span(p)
    assert (hi - lo) % SGROWSIZ == 0, f"stack of {(hi - lo) // KB}K is not a multiple of 128K"
    k.check()


def test_map_stack_at_addr_and_init_size(kernel):
    k = kernel
    p = k.spawn()
    base = 0x40000000
    top = p.map_stack(512 * KB, init_size=16 * KB, addr=base)
    assert top == base + 512 * KB
    assert stack_span(p) == (top - 16 * KB, top)
    p.write(top - 16 * KB - 1, b"x")
    assert stack_span(p) == (top - 16 * KB - SGROWSIZ, top)
    k.check()


def test_map_stack_bad_sizes_and_overlap(kernel):
    k = kernel
    p = k.spawn()
    x = p.mmap(PAGE_SIZE, flags=MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=0x50000000)
    before = p.maps()
    for args, kw in [((0,), {}), ((-PAGE_SIZE,), {}), ((1 * MB + 1,), {}),
                     ((1 * MB,), {"init_size": 0}), ((1 * MB,), {"init_size": 100}),
                     ((1 * MB,), {"init_size": 1 * MB}), ((1 * MB,), {"init_size": 2 * MB}),
                     ((1 * MB,), {"init_size": -PAGE_SIZE}), ((1 * MB,), {"addr": 0x40000001}),
                     ((1 * MB,), {"addr": VM_MAXUSER_ADDRESS - 512 * KB})]:
        with pytest.raises(VMError) as ei:
            p.map_stack(*args, **kw)
        assert errno_of(ei) == errno.EINVAL, (args, kw)
    with pytest.raises(TypeError):
        p.map_stack(1.5)
    # overlapping an existing mapping (anywhere in the reservation, guard included)
    for addr in (x - 512 * KB, x, x - 1 * MB + PAGE_SIZE, x - 1 * MB + 2 * PAGE_SIZE):
        with pytest.raises(VMError) as ei:
            p.map_stack(1 * MB, addr=addr)
        assert errno_of(ei) == errno.ENOMEM, hex(addr)
    assert p.maps() == before
    k.check()


def test_map_stack_over_another_stacks_reservation(kernel):
    """map_stack reserves max_size bytes: a second stack inside the first's
    unmapped growth area overlaps it (FreeBSD 12+: the gap entry)."""
    k = kernel
    p = k.spawn()
    top = p.map_stack(1 * MB)
    with pytest.raises(VMError) as ei:
        p.map_stack(512 * KB, addr=top - 1 * MB)
    assert errno_of(ei) == errno.ENOMEM
    k.check()


def test_stack_growth_stops_at_another_mapping(kernel):
    k = kernel
    p = k.spawn()
    base = 0x40000000
    top = p.map_stack(1 * MB, addr=base)
    blocker = p.mmap(PAGE_SIZE, flags=MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=base + 512 * KB)
    p.write(blocker + PAGE_SIZE, b"above")  # the page right above the blocker
    lo, hi = stack_span(p)
    assert lo == blocker + PAGE_SIZE and hi == top
    with pytest.raises(SegmentationFault):
        p.write(blocker - PAGE_SIZE, b"x")  # below the blocker: no stack there
    assert stack_span(p) == (blocker + PAGE_SIZE, top)
    k.check()


def test_stack_growth_within_rlimit_stack(kernel):
    k = kernel
    p = k.spawn()
    p.setrlimit(RLIMIT_STACK, 256 * KB, 512 * MB)
    with pytest.raises(VMError) as ei:
        p.map_stack(1 * MB, init_size=512 * KB)
    assert errno_of(ei) == errno.ENOMEM
    top = p.map_stack(4 * MB)
    p.write(top - 256 * KB, b"edge")
    assert stack_span(p) == (top - 256 * KB, top)
    before = p.maps()
    with pytest.raises(SegmentationFault):
        p.write(top - 256 * KB - 1, b"x")
    with pytest.raises(SegmentationFault):
        p.read(top - 1 * MB, 1)
    assert p.maps() == before
    p.setrlimit(RLIMIT_STACK, 1 * MB, 512 * MB)  # raising the soft limit lets it grow again
    p.write(top - 1 * MB, b"x")
    k.check()


def test_stack_growth_after_fork_is_cow(kernel):
    k = kernel
    p = k.spawn("p")
    top = p.map_stack(2 * MB)
    p.write(top - 8, b"parent!!")
    p.write(top - 200 * KB, b"pdeep")  # grown, with data, before the fork
    c = p.fork()
    c.write(top - 8, b"child!!!")
    assert p.read(top - 8, 8) == b"parent!!"
    c.write(top - 1 * MB, b"cgrow")  # the child grows its own stack
    assert c.read(top - 200 * KB, 5) == b"pdeep"
    p.write(top - 700 * KB, b"pgrow")  # the parent grows differently
    assert p.read(top - 1 * MB, 5) == bytes(5)  # the child's growth is not the parent's
    assert c.read(top - 700 * KB, 5) == bytes(5)
    assert c.read(top - 1 * MB, 5) == b"cgrow"
    assert c.read(top - 8, 8) == b"child!!!" and p.read(top - 8, 8) == b"parent!!"
    k.check()
    p.exit()
    c.write(top - 1500 * KB, b"more")
    assert c.read(top - 200 * KB, 5) == b"pdeep"
    k.check()


def test_stack_growth_after_mprotect_of_part(kernel):
    k = kernel
    p = k.spawn()
    top = p.map_stack(2 * MB)
    p.write(top - 8, b"x")
    p.mprotect(top - PAGE_SIZE, PAGE_SIZE, PROT_READ)  # the top page read-only
    p.write(top - SGROWSIZ - 1, b"g")  # still grows from its lowest piece
    assert stack_span(p)[0] == top - 2 * SGROWSIZ
    with pytest.raises(SegmentationFault):
        p.write(top - 8, b"y")
    lo, _ = stack_span(p)
    p.mprotect(lo, PAGE_SIZE, PROT_READ)  # the lowest page read-only
    assert p.read(lo - 1, 1) == b"\0"  # a read below still grows it
    assert stack_span(p)[0] < lo
    k.check()


def test_stack_growth_after_munmap_of_part(kernel):
    k = kernel
    p = k.spawn()
    top = p.map_stack(2 * MB)
    p.write(top - 8, b"top")
    p.munmap(top - PAGE_SIZE, PAGE_SIZE)  # the top page
    p.write(top - SGROWSIZ - 1, b"g")
    assert stack_span(p) == (top - 2 * SGROWSIZ, top - PAGE_SIZE)
    k.check()
    # unmap the lowest 64K of the stack.  Whether that hole is growth area
    # again differs between BSDs (FreeBSD 12+: no, the gap entry is no longer
    # adjacent; FreeBSD 5-11: yes, the clipped entry keeps avail_ssize), so
    # accept either, but consistently.
    lo, _ = stack_span(p)
    p.munmap(lo, 64 * KB)
    before = p.maps()
    try:
        p.write(lo + 4 * KB, b"regrow")
    except SegmentationFault as e:
        assert e.code == "SEGV_MAPERR"
        assert p.maps() == before
    else:
        assert p.read(lo + 4 * KB, 6) == b"regrow"
        assert stack_span(p)[0] <= lo + 4 * KB
    assert p.read(top - 2 * PAGE_SIZE, 1) == b"\0"
    k.check()


def test_stack_fully_unmapped_does_not_grow(kernel):
    k = kernel
    p = k.spawn()
    top = p.map_stack(1 * MB)
    p.munmap(top - 1 * MB, 1 * MB)
    assert p.maps() == []
    with pytest.raises(SegmentationFault):
        p.write(top - 8, b"x")
    with pytest.raises(SegmentationFault):
        p.write(top - 300 * KB, b"x")
    assert p.maps() == []
    k.check()


def test_stack_growth_below_wired_stack(kernel):
    k = kernel
    p = k.spawn()
    top = p.map_stack(1 * MB)
    p.mlock(top - SGROWSIZ, SGROWSIZ)
    p.write(top - SGROWSIZ - 1, b"w")
    assert stack_span(p)[0] == top - 2 * SGROWSIZ
    p.munlock(top - 2 * SGROWSIZ, 2 * SGROWSIZ)
    k.check()


def test_stack_growth_under_memory_pressure(small):
    k = small
    p = k.spawn()
    top = p.map_stack(8 * MB)
    for i in range(1, 40):
        p.write(top - i * 150 * KB, i.to_bytes(4, "little"))
    h = k.spawn("hog")
    b = h.mmap(6 * MB)
    fill(h, b, 6 * MB)
    for i in range(1, 40):
        assert p.read(top - i * 150 * KB, 4) == i.to_bytes(4, "little")
    k.check()


# -- resource limits ----------------------------------------------------------------------

def test_rlimit_defaults_and_errors(kernel):
    k = kernel
    p = k.spawn()
    for r in (RLIMIT_STACK, RLIMIT_DATA, RLIMIT_AS, RLIMIT_RSS, RLIMIT_MEMLOCK):
        soft, hard = p.getrlimit(r)
        assert 0 <= soft <= hard <= RLIM_INFINITY
    soft, hard = p.getrlimit(RLIMIT_DATA)
    cases = [((RLIMIT_DATA, 1 * MB, 512 * KB), errno.EINVAL),  # soft > hard
             ((RLIMIT_DATA, -1, hard), errno.EINVAL),
             ((RLIMIT_DATA, 0, -1), errno.EINVAL),
             ((12345, 0, 0), errno.EINVAL),
             ((-1, 0, 0), errno.EINVAL)]
    for args, err in cases:
        with pytest.raises(VMError) as ei:
            p.setrlimit(*args)
        assert errno_of(ei) == err, args
    with pytest.raises(VMError) as ei:
        p.getrlimit(12345)
    assert errno_of(ei) == errno.EINVAL
    with pytest.raises(TypeError):
        p.setrlimit(RLIMIT_DATA, 1.0, hard)
    assert p.getrlimit(RLIMIT_DATA) == (soft, hard)  # nothing changed
    p.setrlimit(RLIMIT_STACK, 1 * MB, 2 * MB)
    with pytest.raises(VMError) as ei:
        p.setrlimit(RLIMIT_STACK, 1 * MB, 4 * MB)  # raising the hard limit
    assert errno_of(ei) == errno.EPERM
    assert p.getrlimit(RLIMIT_STACK) == (1 * MB, 2 * MB)
    p.setrlimit(RLIMIT_STACK, 2 * MB, 2 * MB)  # soft up to hard is fine
    p.setrlimit(RLIMIT_STACK, 0, 2 * MB)
    k.check()


def test_rlimits_inherited_by_fork_and_independent(kernel):
    k = kernel
    p = k.spawn()
    p.setrlimit(RLIMIT_AS, 8 * MB, 16 * MB)
    p.setrlimit(RLIMIT_MEMLOCK, 64 * KB, 64 * KB)
    c = p.fork()
    s = p.fork(shared=True)
    for q in (c, s):
        assert q.getrlimit(RLIMIT_AS) == (8 * MB, 16 * MB)
        assert q.getrlimit(RLIMIT_MEMLOCK) == (64 * KB, 64 * KB)
    c.setrlimit(RLIMIT_AS, 1 * MB, 1 * MB)
    assert p.getrlimit(RLIMIT_AS) == (8 * MB, 16 * MB)
    with pytest.raises(VMError) as ei:
        c.setrlimit(RLIMIT_AS, 1 * MB, 2 * MB)
    assert errno_of(ei) == errno.EPERM
    k.check()


def test_rlimit_as(kernel):
    k = kernel
    p = k.spawn()
    p.setrlimit(RLIMIT_AS, 1 * MB, 1 * MB)
    a = p.mmap(512 * KB)
    before = p.maps()
    with pytest.raises(VMError) as ei:
        p.mmap(600 * KB)
    assert errno_of(ei) == errno.ENOMEM
    with pytest.raises(VMError) as ei:
        p.mmap(600 * KB, flags=MAP_SHARED | MAP_ANON)  # the whole space counts
    assert errno_of(ei) == errno.ENOMEM
    assert p.maps() == before
    p.mmap(256 * KB, prot=PROT_READ)
    p.mmap(256 * KB, flags=MAP_SHARED | MAP_ANON)
    with pytest.raises(VMError) as ei:
        p.mmap(PAGE_SIZE)
    assert errno_of(ei) == errno.ENOMEM
    with pytest.raises(VMError) as ei:
        p.map_stack(1 * MB, init_size=64 * KB)
    assert errno_of(ei) == errno.ENOMEM
    p.mmap(512 * KB, flags=MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=a)  # replaces: same size
    c = p.fork()
    with pytest.raises(VMError):
        c.mmap(PAGE_SIZE)
    k.check()


def test_rlimit_as_counts_stack_growth(kernel):
    """Stack growth is address space too (FreeBSD vm_map_growstack checks
    RLIMIT_VMEM)."""
    k = kernel
    p = k.spawn()
    p.setrlimit(RLIMIT_AS, 512 * KB, 512 * KB)
    top = p.map_stack(4 * MB)
    p.mmap(256 * KB)
    with pytest.raises(SegmentationFault):
        p.write(top - 1 * MB, b"x")
    k.check()


def test_rlimit_data(kernel):
    k = kernel
    p = k.spawn()
    p.setrlimit(RLIMIT_DATA, 256 * KB, 256 * KB)
    p.mmap(256 * KB)
    with pytest.raises(VMError) as ei:
        p.mmap(PAGE_SIZE)
    assert errno_of(ei) == errno.ENOMEM
    p.mmap(1 * MB, flags=MAP_SHARED | MAP_ANON)  # shared: not data
    o = k.create_object(1 * MB)
    p.mmap(1 * MB, flags=MAP_SHARED, obj=o)
    o.detach()
    with pytest.raises(VMError):
        p.mmap(2 * PAGE_SIZE)
    k.check()


def test_rlimit_memlock(kernel):
    k = kernel
    p = k.spawn()
    a = p.mmap(256 * KB)
    p.setrlimit(RLIMIT_MEMLOCK, 64 * KB, 64 * KB)
    p.mlock(a, 64 * KB)
    with pytest.raises(VMError) as ei:
        p.mlock(a + 64 * KB, PAGE_SIZE)
    assert errno_of(ei) == errno.ENOMEM
    p.mlock(a, 64 * KB)  # already locked: no more charge
    p.setrlimit(RLIMIT_MEMLOCK, 0, 0)
    with pytest.raises(VMError) as ei:
        p.mlock(a + 128 * KB, PAGE_SIZE)
    assert errno_of(ei) == errno.EPERM
    assert [m.wired for m in p.maps()].count(True) == 1
    p.vslock(a + 128 * KB, PAGE_SIZE)  # vslock is not charged to RLIMIT_MEMLOCK
    p.vsunlock(a + 128 * KB, PAGE_SIZE)
    p.munlock(a, 256 * KB)
    k.check()


def test_rlimit_rss_pages_over_limit_first(small):
    """B is older, A is newer but far over its RLIMIT_RSS: under pressure
    A's pages must go before B's as long as A is still over its limit."""
    k = small
    b = k.spawn("B")
    ba = b.mmap(512 * KB)
    fill(b, ba, 512 * KB, b"b")
    a = k.spawn("A")
    a.setrlimit(RLIMIT_RSS, 64 * KB, 64 * KB)
    aa = a.mmap(1 * MB)
    fill(a, aa, 1 * MB, b"a")
    c = k.spawn("C")
    ca = c.mmap(3 * MB)
    fill(c, ca, 3 * MB, b"c")
    k.pagedaemon.wait_idle()
    sa, sb = a.status(), b.status()
    assert sa.vm_swap > 0
    assert sb.vm_swap == 0 or sa.vm_rss <= 64 * KB, (
        f"B lost {sb.vm_swap // KB}K while A still had {sa.vm_rss // KB}K resident over a 64K RSS limit")
    assert a.read(aa, 1) == b"a" and b.read(ba, 1) == b"b"
    k.check()


# -- run states and the swapper -----------------------------------------------------------

def test_run_state_transitions(kernel):
    k = kernel
    p = k.spawn()
    assert p.state == "R"
    p.sleep()
    assert p.state == "S" and p.status().state.startswith("S")
    p.wake()
    assert p.state == "R"
    p.stop()
    assert p.state == "T"
    p.cont()
    assert p.state == "R"
    p.exit()
    assert p.state == "Z"
    k.check()


def test_120_sleepers_in_1M_do_not_oom():
    with rumpvm.Kernel(memlimit="1M", swap="16M") as k:
        ps = []
        for i in range(120):
            p = k.spawn(f"s{i}")
            p.sleep()
            ps.append(p)
        k.pagedaemon.wait_idle()
        st = k.stats()
        assert st["swapouts"] > 0 and st["resident"] <= 1 * MB
        assert all(uarea_wired(k, p) == (p.state != "W") for p in ps)
        # the first to sleep were swapped out first
        states = [p.state for p in ps]
        first_resident = states.index("S")
        assert all(s == "W" for s in states[:first_resident])
        k.check()
        for p in ps[:10]:
            p.wake()
            assert p.state == "R" and uarea_wired(k, p)
        k.check()


def test_swapper_swaps_out_every_long_sleeper_under_pressure():
    """maxslp = 0: every sleeping or stopped process is a candidate as soon
    as memory is short (uvm_swapout_threads runs when free < freetarg)."""
    with rumpvm.Kernel(memlimit="2M", swap="16M") as k:
        k.maxslp = 0
        s1, s2, t = k.spawn("s1"), k.spawn("s2"), k.spawn("t")
        for q in (s1, s2, t):
            a = q.mmap(64 * KB)
            fill(q, a, 64 * KB)
        s1.sleep()
        s2.sleep()
        t.stop()
        h = k.spawn("hog")
        b = h.mmap(4 * MB)
        fill(h, b, 4 * MB)
        k.pagedaemon.wait_idle()
        assert [q.state for q in (s1, s2, t)] == ["W", "W", "W"], k.stats()["swapouts"]
        assert h.state == "R"
        k.check()


def test_swapper_maxslp_zero_swaps_all_sleepers_at_once(tiny):
    k = tiny
    k.maxslp = 0
    sleepers = []
    for i in range(6):
        q = k.spawn(f"s{i}")
        q.sleep()
        sleepers.append(q)
    runner = k.spawn("r")
    out0 = k.stats()["swapouts"]
    fillers = []
    while all(q.state != "W" for q in sleepers):  # running fillers fill memory
        fillers.append(k.spawn("f"))
        k.pagedaemon.wait_idle()
        assert len(fillers) < 400
    assert all(q.state == "W" for q in sleepers), [q.state for q in sleepers]
    assert runner.state == "R"
    assert k.stats()["swapouts"] - out0 >= len(sleepers)
    k.check()


def test_swapped_out_status_does_not_swap_in(tiny):
    k = tiny
    p = k.spawn("target")
    a = p.mmap(64 * KB)
    fill(p, a, 64 * KB, b"t")
    p.sleep()
    swap_out(k, p)
    assert not uarea_wired(k, p)
    ins = k.stats()["swapins"]
    st = p.status()
    assert st.state.startswith("W") and st.vm_size == 64 * KB
    assert p.getrlimit(RLIMIT_STACK)[0] > 0
    assert p in k.procs() and k.proc(p.pid) is p
    assert p.state == "W" and k.stats()["swapins"] == ins
    assert p.read(a, 1) == b"t"  # a read swaps it in
    assert p.state == "S" and k.stats()["swapins"] == ins + 1 and uarea_wired(k, p)
    k.check()


@pytest.mark.parametrize("call", ["maps", "smaps", "peek", "coredump_segments"])
def test_swapped_out_inspection_does_not_swap_in(tiny, call):
    """Inspection calls (docs/inspection-api.md: 'no call here ... pages
    anything in'; /vm reads maps/smaps/mem) must leave a process out."""
    k = tiny
    p = k.spawn("target")
    a = p.mmap(16 * KB)
    p.write(a, b"t")
    p.sleep()
    swap_out(k, p)
    ins = k.stats()["swapins"]
    if call == "peek":
        p.peek(a, 1)
    else:
        getattr(p, call)()
    assert p.state == "W" and k.stats()["swapins"] == ins, f"{call}() swapped the process in"
    k.check()


def test_touching_swapped_out_process_swaps_it_in(tiny):
    k = tiny
    ts = []
    for i in range(6):
        q = k.spawn(f"t{i}")
        a = q.mmap(16 * KB)
        q.write(a, bytes([65 + i]))
        q.sleep()
        ts.append((q, a))
    fillers = swap_out(k, *(q for q, _ in ts))
    for f in fillers[:40]:  # room to swap back in without pushing others out
        f.exit()
    k.pagedaemon.wait_idle()
    assert all(q.state == "W" for q, _ in ts)
    (r, ra), (w, wa), (m, _), (wk, _), (f, fa), (st, _) = ts
    ops = [(r, lambda: r.read(ra, 1) == b"A", "S"),
           (w, lambda: w.write(wa, b"w") is None, "S"),
           (m, lambda: m.mmap(PAGE_SIZE) > 0, "S"),
           (wk, lambda: wk.wake() is None, "R"),
           (f, lambda: f.fork().read(fa, 1) == b"E", "S"),
           (st, lambda: st.stop() is None, "T")]
    for q, op, state in ops:
        ins = k.stats()["swapins"]
        assert op()
        assert q.state == state and k.stats()["swapins"] == ins + 1 and uarea_wired(k, q), q
    assert w.read(wa, 1) == b"w"
    k.check()


def test_scheduler_swaps_runnable_back_in_when_memory_allows(tiny):
    """A runnable process swapped out (no sleepers to take instead) comes
    back in by itself once memory is free (uvm_scheduler), without being
    touched through the API."""
    k = tiny
    target = k.spawn("target")  # resident longest
    fillers = []
    while target.state != "W":
        fillers.append(k.spawn("f"))  # running
        k.pagedaemon.wait_idle()
        assert len(fillers) < 400
    assert target.run_state == "R"
    for f in fillers:
        f.exit()
    assert wait_for(k, lambda: target.state == "R", timeout=3.0), "never swapped back in"
    assert uarea_wired(k, target)
    k.check()


def test_two_threads_touching_a_swapped_out_process_swap_it_in_once(tiny):
    """One thread's read of a swapped-out process stops inside its swap-in
    (at the lock re-take after the u-area's page-in) while a second thread
    reads it: the second waits for that swap-in instead of wiring the
    u-area alongside it.  Both reads succeed, the process was swapped in
    once (the count of swapped-out processes went to -1 before), its
    u-area wired, and check() is clean."""
    k = tiny
    q = k.spawn("target")
    a = q.mmap(PAGE_SIZE)
    q.write(a, b"T")
    q.sleep()
    for f in swap_out(k, q)[:40]:  # room to swap it back in
        f.exit()
    k.pagedaemon.wait_idle()
    before = k.stats()
    second: list[object] = []

    def meanwhile() -> None:
        drops = k.lockdrops
        t = threading.Thread(target=lambda: second.append(q.read(a, 1)), daemon=True)
        t.start()
        while k.lockdrops == drops and t.is_alive():  # until it sleeps on the first's swap-in
            threading.Event().wait(0.001)
        threads.append(t)

    threads: list[threading.Thread] = []
    got, exc = paused_call(k, 3, lambda: q.read(a, 1), meanwhile)
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    after = k.stats()
    assert (got, exc, second) == (b"T", None, [b"T"])
    assert after["pageins"] > before["pageins"], "precondition: the u-area was paged in (the lock dropped)"
    assert after["swapins"] == before["swapins"] + 1
    assert q.state == "S" and uarea_wired(k, q)
    k.check()


def test_swapped_out_process_exits_and_uarea_reused_wired(tiny):
    k = tiny
    p = k.spawn("target")
    a = p.mmap(32 * KB)
    fill(p, a, 32 * KB)
    p.sleep()
    fillers = swap_out(k, p)
    objs = k.stats()["objects"]
    p.exit()
    assert p.state == "Z"
    assert k.stats()["objects"] < objs
    k.check()
    for f in fillers[:40]:  # room for new processes
        f.exit()
    news = [k.spawn("new") for _ in range(20)]  # some get cached u-areas
    for q in news:
        assert q.state == "R"
        assert uarea_wired(k, q), f"{q} (resident) got a pageable u-area"
    k.check()


def test_swapped_out_sharer_exits_other_keeps_space(tiny):
    k = tiny
    p = k.spawn("p")
    a = p.mmap(16 * KB)
    p.write(a, b"shared")
    c = p.fork(shared=True)
    p.sleep()
    c.sleep()
    swap_out(k, p)
    p.exit()
    assert c.read(a, 6) == b"shared"
    c.write(a, b"SHARED")
    assert c.read(a, 6) == b"SHARED"
    k.check()


def test_swapped_out_process_forks(tiny):
    k = tiny
    p = k.spawn("p")
    a = p.mmap(16 * KB)
    p.write(a, b"data")
    p.sleep()
    fillers = swap_out(k, p)
    for f in fillers[:30]:
        f.exit()
    c = p.fork()
    assert p.state == "S" and uarea_wired(k, p)
    assert c.state == "R" and c.read(a, 4) == b"data"
    p.sleep()
    swap_out(k, p)
    s = p.fork(shared=True)
    s.write(a, b"DATA")
    assert p.read(a, 4) == b"DATA" and c.read(a, 4) == b"data"
    k.check()


def test_close_kernel_with_swapped_out_processes():
    k = rumpvm.Kernel(memlimit="1M", swap="16M")
    p = k.spawn("p")
    a = p.mmap(16 * KB)
    p.write(a, b"x")
    c = p.fork(shared=True)
    p.sleep()
    c.sleep()
    swap_out(k, p, c)
    k.check()
    k.close()
    with pytest.raises(VMError) as ei:
        p.read(a, 1)
    assert errno_of(ei) == errno.ESHUTDOWN
    with pytest.raises(VMError) as ei:
        c.wake()
    assert errno_of(ei) == errno.ESHUTDOWN
    k.close()


# -- access checks, vslock, chgkprot --------------------------------------------------------

def test_useracc(kernel):
    k = kernel
    p = k.spawn()
    a = p.mmap(3 * PAGE_SIZE)
    assert p.useracc(a, 3 * PAGE_SIZE, RW)
    assert p.useracc(a + 10, 100, PROT_READ)
    p.mprotect(a + 2 * PAGE_SIZE, PAGE_SIZE, PROT_READ)
    assert p.useracc(a + 2 * PAGE_SIZE, PAGE_SIZE, PROT_READ)
    assert not p.useracc(a, 3 * PAGE_SIZE, PROT_WRITE)
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    assert not p.useracc(a, 3 * PAGE_SIZE, PROT_READ)  # hole in the middle
    assert not p.useracc(a + PAGE_SIZE - 1, 2, PROT_READ)  # straddles into the hole
    assert p.useracc(a, PAGE_SIZE, RW)
    assert not p.useracc(0, PAGE_SIZE, PROT_READ)
    assert not p.useracc(VM_MAXUSER_ADDRESS - PAGE_SIZE, 2 * PAGE_SIZE, PROT_READ)
    assert not p.useracc(a, -1, PROT_READ)
    faults = k.stats()["faults"]
    assert p.useracc(a, PAGE_SIZE, PROT_READ)
    assert k.stats()["faults"] == faults  # only checks the map
    with pytest.raises(VMError):
        p.useracc(a, PAGE_SIZE, 0x100)
    k.check()


def test_kernacc_and_chgkprot(kernel):
    k = kernel
    p = k.spawn()
    u = p.uarea
    assert k.kernacc(u, USPACE, RW)
    assert k.kernacc(u + 5, 10, PROT_READ)
    assert not k.kernacc(0x1000, PAGE_SIZE, PROT_READ)  # user address
    assert not k.kernacc(0xFFFF900000000000, PAGE_SIZE, PROT_READ)  # beyond the kernel
    k.chgkprot(u, USPACE, PROT_READ)
    assert k.kernacc(u, USPACE, PROT_READ) and not k.kernacc(u, USPACE, PROT_WRITE)
    k.chgkprot(u, USPACE, RW)
    assert k.kernacc(u, USPACE, RW)
    with pytest.raises(VMError) as ei:
        k.chgkprot(u + 1, PAGE_SIZE, PROT_READ)
    assert errno_of(ei) == errno.EINVAL
    with pytest.raises(VMError) as ei:
        k.chgkprot(u, 0, PROT_READ)
    assert errno_of(ei) == errno.EINVAL
    with pytest.raises(TypeError):
        k.kernacc(u, 1.0, PROT_READ)
    k.check()


def test_kernacc_false_on_hole_inside_submap(kernel):
    """An unmapped page of kmem_map is a hole: kernacc is False (the
    contract: False on any hole), and chgkprot of it fails."""
    k = kernel
    p = k.spawn()
    kmem = next(m for m in k.kmem_maps() if m.name == "kmem_map")
    hole = kmem.end - PAGE_SIZE
    assert not any(e.start <= hole < e.end for e in kmem.entries)
    assert k.kernacc(p.uarea, USPACE, PROT_READ)
    with pytest.raises(VMError):
        k.chgkprot(hole, PAGE_SIZE, PROT_READ)
    assert not k.kernacc(hole, PAGE_SIZE, PROT_READ)
    assert not k.kernacc(p.uarea, kmem.end - p.uarea, PROT_READ)
    k.check()


def test_vslock_then_exit_and_shared_exec_with_wired(kernel):
    k = kernel
    p = k.spawn()
    a = p.mmap(64 * KB)
    p.vslock(a, 64 * KB)
    wired = k.stats()["wired"]
    p.exit()
    assert k.stats()["wired"] <= wired - 16
    k.check()
    q = k.spawn()
    b = q.mmap(64 * KB)
    q.write(b, b"w")
    q.mlock(b, 64 * KB)
    c = q.fork(shared=True)
    q.exec()  # the old, wired space stays with the sharer
    assert q.maps() == [] and c.read(b, 1) == b"w" and c.maps()[0].wired
    k.check()
    c.exit()
    k.check()
    q.mlock(q.mmap(64 * KB), 64 * KB)  # the budget came back
    k.check()


def test_vslock_wires_and_survives_pressure(small):
    k = small
    p = k.spawn("io")
    a = p.mmap(256 * KB)
    p.write(a, b"start")
    p.vslock(a, 256 * KB)  # mostly never touched: faulted in now
    [sm] = p.smaps()
    assert sm.rss == 256 * KB and sm.locked == 256 * KB
    h = k.spawn("hog")
    b = h.mmap(8 * MB)
    fill(h, b, 8 * MB)
    k.pagedaemon.wait_idle()
    [sm] = p.smaps()
    assert sm.rss == 256 * KB and sm.swap == 0
    assert p.read(a, 5) == b"start"
    p.vsunlock(a, 256 * KB)
    assert p.status().vm_lck == 0
    k.check()


def test_vslock_errors_change_nothing(kernel):
    k = kernel
    p = k.spawn()
    a = p.mmap(4 * PAGE_SIZE)
    p.mprotect(a + 3 * PAGE_SIZE, PAGE_SIZE, PROT_READ)
    before = p.maps()
    with pytest.raises(SegmentationFault):
        p.vslock(a, 4 * PAGE_SIZE, RW)  # last page read-only
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    before = p.maps()
    with pytest.raises((SegmentationFault, VMError)):
        p.vslock(a, 3 * PAGE_SIZE, PROT_READ)  # hole
    assert p.maps() == before and p.status().vm_lck == 0 and p.status().vm_rss == 0
    p.vslock(a + 3 * PAGE_SIZE + 100, 10, PROT_READ)  # unaligned address is rounded
    assert p.status().vm_lck == PAGE_SIZE
    p.vsunlock(a + 3 * PAGE_SIZE + 100, 10)
    assert p.status().vm_lck == 0
    k.check()


def test_vslock_for_write_of_a_write_only_mapping(kernel):
    """uvm_vslock faults the range for the access asked: a write-only
    mapping can be locked for writing (it used to fault it for reading,
    fail, and leave the entry split with a new object)."""
    k = kernel
    p = k.spawn()
    a = p.mmap(2 * PAGE_SIZE, prot=PROT_WRITE)
    p.vslock(a, PAGE_SIZE, PROT_WRITE)
    assert p.status().vm_lck == PAGE_SIZE
    p.write(a, b"locked")
    p.vsunlock(a, PAGE_SIZE)
    assert p.status().vm_lck == 0
    before = p.maps()
    with pytest.raises(SegmentationFault):
        p.vslock(a, PAGE_SIZE, PROT_READ)  # not readable: refused, nothing changed
    assert p.maps() == before
    k.check()


# -- bad input ------------------------------------------------------------------------------

def _ops(p, a):
    return {
        "read": lambda: p.read(a, 1),
        "read_big": lambda: p.read(a, 2 * PAGE_SIZE),
        "write": lambda: p.write(a, b"x"),
        "mmap": lambda: p.mmap(PAGE_SIZE),
        "munmap": lambda: p.munmap(a, PAGE_SIZE),
        "mprotect": lambda: p.mprotect(a, PAGE_SIZE, PROT_READ),
        "mlock": lambda: p.mlock(a, PAGE_SIZE),
        "fork": lambda: p.fork(),
        "fork_shared": lambda: p.fork(shared=True),
        "exec": lambda: p.exec(),
        "unshare": lambda: p.unshare(),
        "exit": lambda: p.exit(),
        "sleep": lambda: p.sleep(),
        "wake": lambda: p.wake(),
        "stop": lambda: p.stop(),
        "cont": lambda: p.cont(),
        "map_stack": lambda: p.map_stack(1 * MB),
        "getrlimit": lambda: p.getrlimit(RLIMIT_STACK),
        "setrlimit": lambda: p.setrlimit(RLIMIT_STACK, 0, 0),
        "useracc": lambda: p.useracc(a, PAGE_SIZE, PROT_READ),
        "vslock": lambda: p.vslock(a, PAGE_SIZE),
        "vsunlock": lambda: p.vsunlock(a, PAGE_SIZE),
        "status": lambda: p.status(),
        "maps": lambda: p.maps(),
        "peek": lambda: p.peek(a, 1),
    }


@pytest.mark.parametrize("shared", [False, True])
def test_exited_process_esrch_changes_nothing(kernel, shared):
    k = kernel
    p = k.spawn("p")
    a = p.mmap(2 * PAGE_SIZE)
    p.write(a, b"p")
    q = p.fork(shared=True) if shared else p
    if shared:
        q.read(a, 1)  # the sharer has a live translation for the fast path
    q.exit()
    procs, stats = k.procs(), k.stats()
    maps = p.maps() if shared else None
    for name, op in _ops(q, a).items():
        with pytest.raises(VMError) as ei:
            op()
        assert errno_of(ei) == errno.ESRCH, name
    assert q.state == "Z"
    assert k.procs() == procs
    after = k.stats()
    for key in ("forks", "exits", "objects", "procs", "swapins", "faults"):
        assert after[key] == stats[key], key
    if shared:
        assert p.maps() == maps and p.read(a, 1) == b"p"
    with pytest.raises(VMError) as ei:
        k.proc(q.pid)
    assert errno_of(ei) == errno.ESRCH
    k.check()


@pytest.mark.parametrize("shared", [False, True])
def test_fork_without_uarea_is_oom_and_leaves_no_child(shared):
    with rumpvm.Kernel(memlimit="1M", oom_timeout=0.3) as k:
        base = k.stats()["objects"]
        p = k.spawn("p")
        a = p.mmap(2 * MB)
        with pytest.raises(OutOfMemory):
            fill(p, a, 2 * MB)  # no swap: memory fills with dirty pages
        procs, forks = k.procs(), k.stats()["forks"]
        maps = p.maps()
        with pytest.raises(OutOfMemory):
            p.fork(shared=shared)
        assert k.procs() == procs and k.stats()["forks"] == forks
        assert p.maps() == maps and p.state == "R"
        k.check()
        p.munmap(a + 512 * KB, 1536 * KB)
        c = p.fork(shared=shared)
        assert c.read(a, 1) == b"x"
        c.exit()
        p.exit()
        assert k.stats()["objects"] == base
        k.check()
