"""Copy-on-write and sharing across fork, as a user of the public API sees it.

- private memory: after fork each side sees only its own later writes;
- MAP_SHARED objects and INHERIT_SHARE ranges: both sides see every write;
- INHERIT_NONE: the child has nothing there;
- chains of forks (three generations), exits in any order;
- never-written pages read as zeros without becoming resident;
- collapse: repeated fork+exit does not grow shadow chains.
"""

from __future__ import annotations

import pytest

import rumpvm
from rumpvm import (
    INHERIT_COPY,
    INHERIT_NONE,
    INHERIT_SHARE,
    MADV_DONTNEED,
    MADV_FREE,
    MAP_ANON,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE
BASE = 0x2_0000_0000


def page(byte: int, n: int = P) -> bytes:
    return bytes([byte]) * n


def oid_of(o) -> int:
    return o if isinstance(o, int) else o.id


def entry_at(p, addr):
    for e in p.maps():
        if e.start <= addr < e.end:
            return e
    return None


def chain_length(k, p, addr) -> int:
    """Objects from the entry's object down its shadow (backing) chain."""
    e = entry_at(p, addr)
    oid = e.object
    n = 0
    while oid is not None:
        n += 1
        assert n < 10_000, "shadow chain has a cycle"
        oid = k.object_info(oid).shadow
    return n


@pytest.fixture
def k(kernel):
    return kernel


@pytest.fixture
def p(k):
    return k.spawn(name="cow")


# -- private memory ---------------------------------------------------------------


def test_fork_each_side_sees_own_writes(k, p):
    a = p.mmap(4 * P, addr=BASE)
    p.write(a, page(1, 4 * P))
    c = p.fork()
    assert c.read(a, 4 * P) == page(1, 4 * P)
    p.write(a, page(2))  # parent: page 0
    c.write(a + P, page(3))  # child: page 1
    c.write(a + 2 * P + 100, b"child")  # child: part of page 2
    assert p.read(a, 4 * P) == page(2) + page(1) + page(1) + page(1)
    assert c.read(a, 4 * P) == (
        page(1) + page(3) + page(1, 100) + b"child" + page(1, P - 105) + page(1)
    )
    k.check()


def test_fork_child_sees_parent_prefork_state_only(k, p):
    a = p.mmap(2 * P)
    p.write(a, b"before")
    c = p.fork()
    p.write(a, b"AFTER!")
    p.write(a + P, b"later page")
    assert c.read(a, 6) == b"before"
    assert c.read(a + P, 10) == bytes(10)


def test_fork_of_never_touched_mapping(k, p):
    a = p.mmap(3 * P)
    c = p.fork()
    c.write(a, b"c")
    p.write(a + P, b"p")
    assert p.read(a, 1) == b"\0" and c.read(a + P, 1) == b"\0"
    assert c.read(a, 1) == b"c" and p.read(a + P, 1) == b"p"


def test_parent_exit_leaves_child_data(k, p):
    a = p.mmap(8 * P)
    for i in range(8):
        p.write(a + i * P, page(i + 1))
    c = p.fork()
    p.exit()
    for i in range(8):
        assert c.read(a + i * P, P) == page(i + 1)
    c.write(a, page(0xEE))
    assert c.read(a, P) == page(0xEE)
    k.check()


def test_many_children_of_one_parent_are_isolated(k, p):
    a = p.mmap(2 * P)
    p.write(a, b"root")
    kids = [p.fork() for _ in range(5)]
    for i, c in enumerate(kids):
        c.write(a, bytes([0x30 + i]) * 4)
    for i, c in enumerate(kids):
        assert c.read(a, 4) == bytes([0x30 + i]) * 4
    assert p.read(a, 4) == b"root"
    for c in kids[::2]:
        c.exit()
    assert kids[1].read(a, 4) == b"1111" and p.read(a, 4) == b"root"
    k.check()


# -- three generations ------------------------------------------------------------------


def test_three_generation_chain(k, p):
    a = p.mmap(4 * P, addr=BASE)
    p.write(a, page(0x11))  # grandparent, page 0
    parent = p.fork()
    parent.write(a + P, page(0x22))  # parent, page 1
    child = parent.fork()
    # the grandchild sees the grandparent's pre-fork data and the parent's
    assert child.read(a, 2 * P) == page(0x11) + page(0x22)
    assert child.read(a + 2 * P, 2 * P) == bytes(2 * P)

    child.write(a, page(0x33))
    p.write(a + P, page(0x44))
    parent.write(a + 2 * P, page(0x55))
    assert p.read(a, 3 * P) == page(0x11) + page(0x44) + bytes(P)
    assert parent.read(a, 3 * P) == page(0x11) + page(0x22) + page(0x55)
    assert child.read(a, 3 * P) == page(0x33) + page(0x22) + bytes(P)
    k.check()

    parent.exit()  # the middle generation goes away first
    k.check()
    assert child.read(a, 3 * P) == page(0x33) + page(0x22) + bytes(P)
    assert p.read(a, 3 * P) == page(0x11) + page(0x44) + bytes(P)
    p.exit()
    assert child.read(a, 4 * P) == page(0x33) + page(0x22) + bytes(2 * P)
    k.check()


# -- sharing ----------------------------------------------------------------------------------


def test_map_shared_object_seen_by_both_after_fork(k, p):
    o = k.create_object(4 * P)
    a = p.mmap(4 * P, flags=MAP_SHARED, obj=o)
    p.write(a, b"from parent")
    c = p.fork()
    assert c.read(a, 11) == b"from parent"
    c.write(a + P, b"from child")
    p.write(a + 2 * P, b"parent again")
    assert p.read(a + P, 10) == b"from child"
    assert c.read(a + 2 * P, 12) == b"parent again"
    assert k.object_peek(oid_of(o), P, 10) == b"from child"
    k.check()


def test_map_shared_object_between_unrelated_processes(k):
    o = k.create_object(2 * P)
    p1, p2 = k.spawn(name="one"), k.spawn(name="two")
    a1 = p1.mmap(2 * P, flags=MAP_SHARED, obj=o)
    a2 = p2.mmap(P, flags=MAP_SHARED, obj=o, offset=P)  # only the second page
    p1.write(a1 + P + 5, b"hello")
    assert p2.read(a2 + 5, 5) == b"hello"
    p2.write(a2, b"back")
    assert p1.read(a1 + P, 4) == b"back"
    k.object_write(oid_of(o), P + 100, b"poke")
    assert p1.read(a1 + P + 100, 4) == b"poke" and p2.read(a2 + 100, 4) == b"poke"


def test_same_object_mapped_twice_in_one_process_aliases(k, p):
    o = k.create_object(P)
    a = p.mmap(P, flags=MAP_SHARED, obj=o)
    b = p.mmap(P, flags=MAP_SHARED, obj=o)
    assert a != b
    p.write(a, b"alias")
    assert p.read(b, 5) == b"alias"


def test_shared_object_outlives_one_mapping(k, p):
    o = k.create_object(P)
    a = p.mmap(P, flags=MAP_SHARED, obj=o)
    p.write(a, b"persist")
    p.munmap(a, P)
    b = p.mmap(P, flags=MAP_SHARED, obj=o)
    assert p.read(b, 7) == b"persist"


def test_map_shared_anon_shared_with_child(k, p):
    a = p.mmap(2 * P, flags=MAP_SHARED | MAP_ANON)
    assert entry_at(p, a).inheritance == INHERIT_SHARE
    c = p.fork()
    c.write(a, b"child wrote")
    assert p.read(a, 11) == b"child wrote"
    p.write(a + P, b"parent wrote")
    assert c.read(a + P, 12) == b"parent wrote"


def test_inherit_share_private_mapping(k, p):
    a = p.mmap(3 * P)
    p.write(a, b"shared before fork")
    p.minherit(a, 3 * P, INHERIT_SHARE)
    c = p.fork()
    assert c.read(a, 18) == b"shared before fork"
    c.write(a, b"CHILD")
    assert p.read(a, 5) == b"CHILD"
    p.write(a + 2 * P, b"PARENT")
    assert c.read(a + 2 * P, 6) == b"PARENT"
    # a grandchild forked from the child inherits the share
    g = c.fork()
    g.write(a + P, b"grand")
    assert p.read(a + P, 5) == b"grand"
    k.check()


def test_share_after_copy_on_write_fork(k, p):
    """A range that is COW-shared with one child, then shared with another."""
    a = p.mmap(2 * P)
    p.write(a, b"X" * 8)
    c1 = p.fork()  # copy
    p.minherit(a, 2 * P, INHERIT_SHARE)
    c2 = p.fork()  # share
    p.write(a, b"Y" * 8)
    assert c2.read(a, 8) == b"Y" * 8
    assert c1.read(a, 8) == b"X" * 8
    c2.write(a, b"Z" * 8)
    assert p.read(a, 8) == b"Z" * 8
    assert c1.read(a, 8) == b"X" * 8
    c1.write(a, b"W" * 8)
    assert p.read(a, 8) == b"Z" * 8 and c2.read(a, 8) == b"Z" * 8
    k.check()


def test_inherit_none_leaves_child_unmapped(k, p):
    a = p.mmap(3 * P, addr=BASE)
    p.write(a, page(7, 3 * P))
    p.minherit(a + P, P, INHERIT_NONE)
    c = p.fork()
    assert entry_at(c, a + P) is None
    assert entry_at(c, a) is not None and entry_at(c, a + 2 * P) is not None
    with pytest.raises(rumpvm.SegmentationFault) as ei:
        c.read(a + P, 1)
    assert ei.value.code == "SEGV_MAPERR" and ei.value.addr == a + P
    assert c.read(a, P) == page(7) and c.read(a + 2 * P, P) == page(7)
    # the hole is really free in the child: a hint lands there
    assert c.mmap(P, addr=a + P) == a + P
    assert c.read(a + P, P) == bytes(P)
    assert p.read(a + P, P) == page(7)


def test_inherit_copy_on_shared_object_gives_child_a_private_copy(k, p):
    o = k.create_object(P)
    a = p.mmap(P, flags=MAP_SHARED, obj=o)
    p.write(a, b"snapshot")
    p.minherit(a, P, INHERIT_COPY)
    c = p.fork()
    assert c.read(a, 8) == b"snapshot"
    c.write(a, b"childonly")
    assert p.read(a, 8) == b"snapshot"
    p.write(a, b"parentnw")
    assert c.read(a, 9) == b"childonly"


def test_mixed_inheritance_in_one_mapping(k, p):
    a = p.mmap(3 * P)
    p.write(a, page(1) + page(2) + page(3))
    p.minherit(a, P, INHERIT_SHARE)
    p.minherit(a + 2 * P, P, INHERIT_NONE)
    c = p.fork()
    assert [entry_at(c, a + i * P) is not None for i in range(3)] == [True, True, False]
    p.write(a, b"s")
    p.write(a + P, b"c")
    assert c.read(a, 1) == b"s"  # shared page
    assert c.read(a + P, 1) == b"\x02"  # copied page
    assert entry_at(c, a).inheritance == INHERIT_SHARE
    assert entry_at(c, a + P).inheritance == INHERIT_COPY


# -- zero pages ------------------------------------------------------------------------------------


def test_never_written_pages_read_zero_without_becoming_resident(k, p):
    a = p.mmap(64 * P)
    before = k.stats()["resident"]
    assert p.read(a, 64 * P) == bytes(64 * P)
    assert p.read(a + 5 * P + 3, 10) == bytes(10)
    assert k.stats()["resident"] == before
    c = p.fork()  # a fork allocates the child's u-area: measure after it
    before = k.stats()["resident"]
    assert c.read(a, 64 * P) == bytes(64 * P)
    assert k.stats()["resident"] == before
    p.write(a, b"x")
    assert k.stats()["resident"] > before


def test_read_of_unwritten_page_next_to_written_one(k, p):
    a = p.mmap(2 * P)
    p.write(a, page(9))
    c = p.fork()
    before = k.stats()["resident"]
    assert c.read(a + P, P) == bytes(P)
    assert k.stats()["resident"] == before


# -- protection and COW -------------------------------------------------------------------------------


def test_mprotect_on_cow_range_keeps_contents(k, p):
    a = p.mmap(2 * P)
    p.write(a, page(0x41, 2 * P))
    c = p.fork()
    p.mprotect(a, 2 * P, PROT_READ)
    assert p.read(a, 2 * P) == page(0x41, 2 * P)
    with pytest.raises(rumpvm.SegmentationFault) as ei:
        p.write(a, b"no")
    assert ei.value.code == "SEGV_ACCERR"
    c.write(a, page(0x42))  # the child is still writable, and private
    assert p.read(a, P) == page(0x41)
    p.mprotect(a, 2 * P, RW)
    p.write(a + P, page(0x43))
    assert c.read(a + P, P) == page(0x41)
    assert p.read(a, 2 * P) == page(0x41) + page(0x43)
    k.check()


def test_fork_after_mprotect(k, p):
    a = p.mmap(2 * P)
    p.write(a, b"ro data")
    p.mprotect(a, P, PROT_READ)
    c = p.fork()
    assert entry_at(c, a).prot == PROT_READ and entry_at(c, a + P).prot == RW
    with pytest.raises(rumpvm.SegmentationFault) as ei:
        c.write(a, b"x")
    assert ei.value.code == "SEGV_ACCERR" and ei.value.addr == a
    c.mprotect(a, P, RW)
    c.write(a, b"RW DATA")
    assert p.read(a, 7) == b"ro data"
    assert entry_at(p, a).prot == PROT_READ
    assert c.read(a, 7) == b"RW DATA"


def test_munmap_in_parent_does_not_affect_child(k, p):
    a = p.mmap(4 * P)
    p.write(a, page(5, 4 * P))
    c = p.fork()
    p.munmap(a + P, 2 * P)
    assert c.read(a, 4 * P) == page(5, 4 * P)
    p.mmap(2 * P, flags=MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=a + P)
    assert p.read(a + P, 2 * P) == bytes(2 * P)
    assert c.read(a + P, 2 * P) == page(5, 2 * P)


# -- collapse ----------------------------------------------------------------------------------------


def test_fork_exit_cycles_keep_shadow_chains_bounded(k, p):
    baseline_objects = len(k.objects())
    npages = 16
    a = p.mmap(npages * P)
    expect = [bytes(P)] * npages
    p.write(a, page(0xFF))
    expect[0] = page(0xFF)
    longest = 0
    at_10 = None
    for i in range(1000):
        c = p.fork()
        pg = i % npages
        data = bytes([i & 0xFF]) * 64
        p.write(a + pg * P, data)  # the parent writes between cycles
        expect[pg] = data + expect[pg][64:]
        if i % 3 == 0:
            c.write(a + ((pg + 1) % npages) * P, b"child scribble")
        if i % 100 == 0:
            # the child saw the parent's memory as of the fork
            assert c.read(a + ((pg + 5) % npages) * P, P) == expect[(pg + 5) % npages]
        c.exit()
        n = chain_length(k, p, a)
        longest = max(longest, n)
        if i == 10:
            at_10 = (n, len(k.objects()))
    assert longest <= 3, f"shadow chain grew to {longest}"
    assert chain_length(k, p, a) <= at_10[0]
    assert len(k.objects()) <= at_10[1] + 1
    assert b"".join(p.read(a + i * P, P) for i in range(npages)) == b"".join(expect)
    k.check()
    p.munmap(a, npages * P)
    assert len(k.objects()) == baseline_objects, "objects leaked by fork/exit"
    k.check()


def test_long_lived_children_then_exit_collapses(k, p):
    """Ten generations alive at once, then all exit: the survivor's chain shrinks."""
    a = p.mmap(P)
    p.write(a, b"gen0")
    kids = []
    for i in range(10):
        kids.append(p.fork())
        p.write(a, f"gen{i + 1}".encode())
    for i, c in enumerate(kids):
        assert c.read(a, 4) == f"gen{i}".encode()
    for c in kids:
        c.exit()
    assert chain_length(k, p, a) <= 2
    assert p.read(a, 5) == b"gen10"
    k.check()


def test_exit_parent_fork_child_generations_keep_chains_bounded(k, p):
    """The daemon pattern: each generation forks, then the parent exits."""
    a = p.mmap(4 * P)
    p.write(a, b"gen-0")
    cur = p
    for i in range(1, 300):
        nxt = cur.fork()
        cur.exit()
        nxt.write(a + (i % 4) * P, f"gen-{i}".encode())
        assert chain_length(k, nxt, a) <= 3
        cur = nxt
    assert cur.read(a + (299 % 4) * P, 7) == b"gen-299"
    assert cur.read(a + (296 % 4) * P, 7) == b"gen-296"
    k.check()


# -- madvise and COW -----------------------------------------------------------------------------------


def test_madv_dontneed_keeps_data_across_cow(k, p):
    a = p.mmap(2 * P)
    p.write(a, b"kept")
    c = p.fork()
    p.write(a + P, b"mine")
    p.madvise(a, 2 * P, MADV_DONTNEED)  # BSD: data kept (README)
    c.madvise(a, 2 * P, MADV_DONTNEED)
    assert p.read(a, 4) == b"kept" and p.read(a + P, 4) == b"mine"
    assert c.read(a, 4) == b"kept" and c.read(a + P, 4) == bytes(4)


def test_madv_free_private_reads_zeros(k, p):
    a = p.mmap(2 * P)
    p.write(a, page(0x61, 2 * P))
    p.madvise(a, 2 * P, MADV_FREE)
    assert p.read(a, 2 * P) == bytes(2 * P)  # README: discarded at once


def test_madv_free_keeps_shared_memory(k, p):
    o = k.create_object(P)
    a = p.mmap(P, flags=MAP_SHARED, obj=o)
    p.write(a, b"shared data")
    p.madvise(a, P, MADV_FREE)  # only private pages are discarded
    assert p.read(a, 11) == b"shared data"


def test_madv_free_after_cow_write_does_not_resurrect_prefork_data(k, p):
    """MADV_FREE on memory that shadows an older copy must never expose the
    older bytes: it keeps the data (README: a no-op there)."""
    a = p.mmap(P)
    p.write(a, b"old!")
    c = p.fork()
    p.write(a, b"new!")
    p.madvise(a, P, MADV_FREE)
    assert c.read(a, 4) == b"old!"
    assert p.read(a, 4) == b"new!"


# -- fork under memory pressure ---------------------------------------------------------------


def test_fork_with_wired_memory_under_pressure_waits_for_the_pagedaemon():
    """Wired pages are copied at fork; when memory is short that copy must
    wait for the pagedaemon (DESIGN: wait, bounded, then OutOfMemory) rather
    than fail at once while most memory could be paged out."""
    with rumpvm.Kernel(memlimit="320K", swap="16M") as k:
        p = k.spawn(name="wired")
        a = p.mmap(64 * P)
        for i in range(64):
            p.write(a + i * P, page(i))  # more than the limit: pages go to swap
        b = p.mmap(20 * P)
        p.write(b, page(0xAB, 20 * P))
        p.mlock(b, 20 * P)  # within the wired limit (a third of 320K)
        c = p.fork()
        assert c.read(b, 20 * P) == page(0xAB, 20 * P)
        assert not entry_at(c, b).wired
        c.write(b, b"child")
        assert p.read(b, 5) == page(0xAB, 5)
        assert all(c.read(a + i * P, P) == page(i) for i in range(0, 64, 7))
        k.check()
