"""An outside adversary for two hot paths:

1. `Proc.write` of at most one page of `bytes` tries, under the bare kernel
   lock (not `k.gate`), an existing writable translation or `vm_fault_fast`
   (a zero-fill of a fresh page), and falls back to the gate and `vm_fault`.
2. Multi-page copies (`read`, `readinto`, `write` of more than a page,
   `peek`) go through `uio._runs` and the C helpers that copy runs of
   host-adjacent frames with one loop of 64-byte moves (`rv_span`,
   `rv_copy_out`, `rv_copy_in`, `rv_memcpy`).

What a user relies on is checked against plain Python models (dicts of
bytes): the bytes, the exceptions (only VMError/TypeError may escape; a
failed access changes nothing), the interaction with close/exit/fork/
mprotect/munmap/madvise/the swapper, and `k.check()` at quiet points.

Races never depend on timing: threads signal states with Events and are
joined; deterministic interleavings pause one thread at its N-th
acquisition of the kernel lock (`PausingLock`, which only delays, never
changes kernel logic) while another thread runs a whole call.
"""

from __future__ import annotations

import array
import errno
import itertools
import random
import struct
import sys
import threading
from collections.abc import Callable
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pausing import JOIN, paused_call

import hypercall
import rumpvm
from rumpvm import (
    INHERIT_NONE,
    INHERIT_SHARE,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_NORMAL,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    MAP_ANON,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    MS_ASYNC,
    MS_INVALIDATE,
    PAGE_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    RLIMIT_STACK,
    OutOfMemory,
    SegmentationFault,
    VMError,
)
from rumpvm.constants import VM_MAXUSER_ADDRESS

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE
FIXED = MAP_PRIVATE | MAP_ANON | MAP_FIXED


# -- helpers -------------------------------------------------------------------------------


class BytesSub(bytes):
    """A bytes subclass: must behave exactly like bytes (it skips the fast path)."""


def as_kind(data: bytes, kind: str):
    """`data` as the buffer type a hostile caller might pass."""
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":  # a slice of a larger buffer, not at its start
        big = bytearray(b"\xee" * 3) + bytearray(data) + bytearray(b"\xee" * 5)
        return memoryview(big)[3:3 + len(data)]
    if kind == "subclass":
        return BytesSub(data)
    if kind == "array":  # a multi-byte item format, cast to bytes by the API
        if len(data) % 8 == 0 and data:
            return array.array("Q", data)
        return bytearray(data)
    raise AssertionError(kind)


KINDS = ["bytes", "bytearray", "memoryview", "subclass", "array"]


def pat(seed: int, n: int) -> bytes:
    """n bytes that differ from page to page and from seed to seed (never a
    run of zeros, so a lost write shows)."""
    r = random.Random(seed)
    return (bytes(r.randrange(1, 256) for _ in range(997)) * (n // 997 + 1))[:n]


def seg(excinfo: pytest.ExceptionInfo, addr: int, code: str) -> None:
    e = excinfo.value
    assert isinstance(e, SegmentationFault) and e.errno == errno.EFAULT, repr(e)
    assert (e.addr, e.code) == (addr, code), (hex(e.addr), e.code, hex(addr), code)


def run_threads(targets: list[Callable[[], None]], names: list[str] | None = None) -> list[threading.Thread]:
    """Start threads that record their own unexpected exceptions."""
    ts = [threading.Thread(target=t, name=(names[i] if names else f"t{i}"), daemon=True)
          for i, t in enumerate(targets)]
    for t in ts:
        t.start()
    return ts


def join_all(ts: list[threading.Thread]) -> None:
    for t in ts:
        t.join(JOIN)
        assert not t.is_alive(), f"{t.name} hangs"


def frame_addrs(p: rumpvm.Proc, addr: int, npages: int) -> list[int | None]:
    """The host addresses of the frames the pmap maps (read) at each page:
    only used to assert that a test really made runs of adjacent and of
    scattered frames (white-box coverage check, no behaviour depends on it)."""
    k = p.kernel
    with k.lock:
        rd = p.vmspace.pmap.rd
        return [None if (pg := rd.get((addr >> 12) + i)) is None else pg.addr for i in range(npages)]


def adjacency(addrs: list[int | None]) -> tuple[int, int]:
    """(pairs of neighbouring pages whose frames are host-adjacent, pairs that are not)."""
    adj = non = 0
    for x, y in itertools.pairwise(addrs):
        if x is None or y is None:
            continue
        if y == x + P:
            adj += 1
        else:
            non += 1
    return adj, non


def force_pageout(k: rumpvm.Kernel, low: str, back: str | None) -> None:
    """Deterministic paging: lower the limit (the setter waits until resident
    memory is under it, paging out), then raise it again."""
    k.memlimit = low
    k.memlimit = back


def _wait_for_memory_waiter(k: rumpvm.Kernel, before: int) -> None:
    """Wait (for a state, not a duration) until some call has started to
    wait for memory since `oomwaits` was `before`."""
    while k.stats()["oomwaits"] <= before:
        threading.Event().wait(0.001)




# -- 1. the one-page write: boundaries, buffer kinds, address extremes ---------------------


@pytest.mark.parametrize("kind", KINDS)
def test_write_to_the_page_end_and_one_byte_over(kernel, kind):
    """len exactly to the page end (the fast path for bytes) writes only that
    page; one byte over spans two pages (the slow path) and is all or
    nothing: into an unmapped, read-only or PROT_NONE next page it raises
    SegmentationFault at that page and changes nothing, not even the first
    page (fresh or already written)."""
    k = kernel
    p = k.spawn()
    base = p.mmap(8 * P)
    p.munmap(base, 8 * P)
    p.mmap(2 * P, addr=base, flags=FIXED)               # pages 0-1 rw
    p.mmap(P, prot=PROT_READ, addr=base + 2 * P, flags=FIXED)  # page 2 r
    p.mmap(P, addr=base + 3 * P, flags=FIXED)           # page 3 rw
    p.mmap(P, prot=PROT_NONE, addr=base + 4 * P, flags=FIXED)  # page 4 none
    p.mmap(P, addr=base + 5 * P, flags=FIXED)           # page 5 rw; page 6 unmapped
    model = bytearray(6 * P)
    for off in (1, 7, 100, P - 64, P - 1):
        for first in (0, 1):  # page 0 -> page 1 (both writable)
            at = base + first * P + (P - off)
            data = pat(off * 31 + first, off)
            p.write(at, as_kind(data, kind))
            model[at - base:at - base + off] = data
            assert p.read(base, 2 * P) == bytes(model[:2 * P])
            data2 = pat(off * 37 + first, off + 1)
            if first == 0:
                p.write(at, as_kind(data2, kind))
                model[at - base:at - base + off + 1] = data2
                assert p.read(base, 2 * P) == bytes(model[:2 * P])
        for fpage, code in ((1, "SEGV_ACCERR"), (3, "SEGV_ACCERR"), (5, "SEGV_MAPERR")):
            at = base + fpage * P + (P - off)
            before = p.peek(base, 6 * P)
            with pytest.raises(SegmentationFault) as ei:
                p.write(at, as_kind(pat(off, off + 1), kind))
            seg(ei, base + (fpage + 1) * P, code)
            assert p.peek(base, 6 * P) == before
    # a fresh page (never written) next to a forbidden one stays unallocated
    p2 = k.spawn()
    b = p2.mmap(2 * P)
    p2.mprotect(b + P, P, PROT_READ)
    z = k.stats()["zerofills"]
    with pytest.raises(SegmentationFault) as ei:
        p2.write(b + P - 3, as_kind(b"abcd", kind))
    seg(ei, b + P, "SEGV_ACCERR")
    assert k.stats()["zerofills"] == z
    assert p2.read(b, 2 * P) == bytes(2 * P)


def test_write_at_the_top_of_the_user_range_and_beyond(kernel):
    """The last byte of user space is writable through the fast path; a
    write that would run past it, or any address at or above it (huge ints
    included), is a SegmentationFault and never an OverflowError or a write
    somewhere else; bytes and bytearray agree on every outcome."""
    k = kernel
    p = k.spawn()
    top = VM_MAXUSER_ADDRESS
    a = p.mmap(2 * P, addr=top - 2 * P, flags=FIXED)
    assert a == top - 2 * P
    for kind in ("bytes", "bytearray"):
        p.write(top - 1, as_kind(b"Z", kind))
        assert p.read(top - 1, 1) == b"Z"
        p.write(top - P, as_kind(b"Y" * P, kind))
        assert p.read(top - P, P) == b"Y" * P
        p.write(top - 1, as_kind(b"Z", kind))
        assert p.read(top - 1, 1) == b"Z"
        before = p.read(a, 2 * P)
        for at, n, fault in ((top - 1, 2, top), (top - P + 1, P, top), (top, 1, top), (top + 5, 3, top + 5),
                             (1 << 63, 1, 1 << 63), ((1 << 64) + 8, 8, (1 << 64) + 8), (1 << 200, 1, 1 << 200),
                             (top - 2 * P - 1, 2, top - 2 * P - 1)):
            with pytest.raises(SegmentationFault) as ei:
                p.write(at, as_kind(b"q" * n, kind))
            seg(ei, fault, "SEGV_MAPERR")
        assert p.read(a, 2 * P) == before
    for bad in (-1, -P, -(1 << 70)):
        with pytest.raises(VMError) as ei:
            p.write(bad, b"x")
        assert ei.value.errno == errno.EINVAL
    for bad in (1.0, None, True, "0x1000"):
        with pytest.raises(TypeError):
            p.write(bad, b"x")  # type: ignore[arg-type]
    for badbuf in ("text", 5, None, memoryview(b"abcdef")[::2]):
        with pytest.raises(TypeError):
            p.write(a, badbuf)  # type: ignore[arg-type]
    # a zero-length write anywhere mapped or not does nothing and raises nothing
    p.write(a, b"")
    p.write(top + P, b"")
    assert p.read(a, 2 * P) == before


def test_write_only_mapping_takes_a_fault_per_write_and_keeps_every_byte(kernel):
    """A write-only entry gets no translation: every one-page write faults
    (the fast zero-fill the first time, the full fault after); reads are
    refused but peek and a later PROT_READ show every byte written."""
    k = kernel
    p = k.spawn()
    wo = p.mmap(4 * P, prot=PROT_WRITE)
    model = bytearray(4 * P)
    r = random.Random(5)
    for i in range(200):
        off = r.randrange(4 * P)
        n = r.randint(1, min(P - (off % P), 300))
        data = bytes([i % 255 + 1]) * n
        p.write(wo + off, as_kind(data, r.choice(KINDS)))
        model[off:off + n] = data
    p.write(wo + P - 10, b"\x07" * (2 * P))  # a multi-page write through write-only pages
    model[P - 10:3 * P - 10] = b"\x07" * (2 * P)
    with pytest.raises(SegmentationFault) as ei:
        p.read(wo, 1)
    seg(ei, wo, "SEGV_ACCERR")
    buf = bytearray(b"\xee" * 10)
    with pytest.raises(SegmentationFault):
        p.readinto(wo + 5, buf)
    assert buf == b"\xee" * 10
    assert p.peek(wo, 4 * P) == bytes(model)
    p.mprotect(wo, 4 * P, RW)
    assert p.read(wo, 4 * P) == bytes(model)
    k.check()


def test_stack_growth_guard_page_and_rlimit_through_one_page_writes(kernel):
    """A one-page write below a stack's mapped part cannot take the fast path
    (no entry there): the slow path grows the stack; the guard page, the
    space below it, and growth past RLIMIT_STACK are SegmentationFault; the
    bytes written anywhere in the stack come back, through forks too."""
    k = kernel
    p = k.spawn()
    top = p.map_stack(1 << 20)
    bos = top - (1 << 20)  # the guard page
    model: dict[int, bytes] = {}

    def put(at: int, data: bytes, kind: str = "bytes") -> None:
        p.write(at, as_kind(data, kind))
        model[at] = data

    put(top - 1, b"T")
    put(top - 64 * 1024, b"in the initial part")
    put(top - 300 * 1024, b"grown once", "bytes")
    put(top - 300 * 1024 - 8, b"12345678", "bytearray")
    put(bos + P, b"lowest usable page")
    for kind in ("bytes", "bytearray", "memoryview"):
        for at in (bos, bos + P - 1, bos - 1, bos - P):
            with pytest.raises(SegmentationFault) as ei:
                p.write(at, as_kind(b"x", kind))
            assert ei.value.addr == at
    with pytest.raises(SegmentationFault) as ei:
        p.write(bos + P - 1, b"xy")  # straddles guard and stack: nothing written
    assert p.read(bos + P, 2) == b"lo"
    for at, data in model.items():
        assert p.read(at, len(data)) == data
    c = p.fork()
    c.write(top - 2, b"c")  # COW on an existing stack page
    c.write(top - 200 * 1024, b"child only")
    assert p.read(top - 200 * 1024, 10) == bytes(10)
    assert c.read(top - 300 * 1024, 10) == b"grown once"
    assert p.read(top - 2, 2) == b"\x00T" and c.read(top - 2, 2) == b"cT"
    # a second stack limited by RLIMIT_STACK: growth past it faults, bytes or not
    q = k.spawn()
    q.setrlimit(RLIMIT_STACK, 256 * 1024, 256 * 1024)
    t2 = q.map_stack(4 << 20)
    q.write(t2 - 200 * 1024, b"ok")
    for kind in ("bytes", "bytearray"):
        with pytest.raises(SegmentationFault):
            q.write(t2 - (1 << 20), as_kind(b"no", kind))
    assert q.read(t2 - 200 * 1024, 2) == b"ok"
    k.check()


def test_fast_zero_fill_honours_sharing_and_copy_on_write(kernel):
    """Fresh pages written with the one-page path after fork/vfork/minherit
    land where the full fault would put them: a MAP_SHARED object is seen by
    every mapping of it (at other offsets too); INHERIT_SHARE memory is seen
    by the child; private memory never crosses a fork; a vfork child shares
    everything until unshare/exec."""
    k = kernel
    p = k.spawn()
    o = k.create_object(16 * P)
    s1 = p.mmap(16 * P, flags=MAP_SHARED, obj=o)
    s2 = p.mmap(8 * P, flags=MAP_SHARED, obj=o, offset=4 * P)  # an alias of pages 4..12
    priv = p.mmap(8 * P)
    shr = p.mmap(8 * P)
    none = p.mmap(2 * P)
    p.minherit(shr, 8 * P, INHERIT_SHARE)
    p.minherit(none, 2 * P, INHERIT_NONE)
    p.write(priv, b"before fork")
    c = p.fork()
    v = p.fork(shared=True)
    q = k.spawn()
    s3 = q.mmap(16 * P, flags=MAP_SHARED, obj=o)
    for i in range(16):  # each page of the object written first by someone else
        writer, at = [(p, s1), (c, s1), (q, s3), (v, s1)][i % 4]
        writer.write(at + i * P + i, bytes([i + 1]) * 8)
    for i in range(16):
        want = bytes([i + 1]) * 8
        for who, at in ((p, s1), (c, s1), (q, s3), (v, s1)):
            assert who.read(at + i * P + i, 8) == want
        assert k.object_peek(o.id, i * P + i, 8) == want
        if 4 <= i < 12:
            assert p.read(s2 + (i - 4) * P + i, 8) == want
    p.write(s2 + 7 * P, b"alias end")
    assert q.read(s3 + 11 * P, 9) == b"alias end"
    for i in range(1, 8):
        p.write(priv + i * P, b"parent %d" % i)   # fresh pages of a COW entry
        c.write(priv + i * P + 1, b"child %d" % i)
        p.write(shr + i * P, b"shared %d" % i)    # fresh pages of an INHERIT_SHARE entry
    for i in range(1, 8):
        assert p.read(priv + i * P, 8) == b"parent %d" % i
        assert v.read(priv + i * P, 8) == b"parent %d" % i  # vfork: one address space
        assert c.read(priv + i * P, 8) == b"\x00child %d" % i
        assert c.read(shr + i * P, 8) == b"shared %d" % i
    assert c.read(priv, 11) == b"before fork"
    with pytest.raises(SegmentationFault):
        c.write(none, b"x")
    v.unshare()
    v.write(priv + P, b"V")
    assert p.read(priv + P, 1) == b"p" and v.read(priv + P, 8) == b"Varent 1"
    v.exec()
    with pytest.raises(SegmentationFault):
        v.write(priv + P, b"x")
    nv = v.mmap(P)
    v.write(nv, b"after exec")
    assert v.read(nv, 10) == b"after exec"
    k.check()


def test_stale_state_never_reaches_the_fast_path(kernel):
    """Everything the fast path could remember (the map's lookup hint, a
    translation, the vmspace) is stale after munmap, MAP_FIXED over, mprotect,
    MADV_FREE, exec and exit: each write afterwards must see the new state."""
    k = kernel
    p = k.spawn()
    a = p.mmap(4 * P)
    p.write(a + 10, b"hint")  # the entry is now the map's hint
    p.munmap(a, 4 * P)
    for at in (a, a + 10, a + P, a + 4 * P - 1):
        with pytest.raises(SegmentationFault) as ei:
            p.write(at, b"x")
        seg(ei, at, "SEGV_MAPERR")
    b = p.mmap(4 * P, addr=a, flags=FIXED)
    assert b == a and p.read(a, 4 * P) == bytes(4 * P)
    p.write(a + P, b"second life")
    p.mmap(2 * P, addr=a, flags=FIXED)  # replaces pages 0-1 under a live hint
    assert p.read(a, 2 * P) == bytes(2 * P)
    assert p.read(a + 2 * P, 4) == bytes(4)
    p.write(a + 3 * P, b"three")
    p.mprotect(a, 4 * P, PROT_READ)
    for at in (a, a + P + 5, a + 3 * P, a + 3 * P + 1):  # fresh and written pages
        with pytest.raises(SegmentationFault) as ei:
            p.write(at, b"ro")
        seg(ei, at, "SEGV_ACCERR")
    assert p.read(a + 3 * P, 5) == b"three"
    p.mprotect(a, 4 * P, PROT_NONE)
    with pytest.raises(SegmentationFault):
        p.read(a + 3 * P, 1)
    p.mprotect(a, 4 * P, RW)
    assert p.read(a + 3 * P, 5) == b"three"
    p.write(a + 3 * P + 1, b"H")
    p.madvise(a, 4 * P, MADV_FREE)
    assert p.read(a, 4 * P) == bytes(4 * P)
    p.write(a + 3 * P + 100, b"again")
    assert p.read(a + 3 * P, P) == bytes(100) + b"again" + bytes(P - 105)
    p.exec()
    with pytest.raises(SegmentationFault):
        p.write(a + 3 * P, b"x")
    p.exit()
    for data in (b"x", bytearray(b"x"), b"y" * (2 * P)):
        with pytest.raises(VMError) as ei:
            p.write(a, data)
        assert ei.value.errno == errno.ESRCH
    with pytest.raises(VMError) as ei:
        p.read(a, 1)
    assert ei.value.errno == errno.ESRCH
    k.check()


def test_host_window_pages_through_one_and_multi_page_writes(window_kernel):
    """An object partly held by a host window, mapped MAP_SHARED: one-page
    bytes writes (the fast path must decline window objects) and multi-page
    writes spanning window and ordinary pages land in the window's host
    memory and in rumpvm's pages alike; reads, peeks and the window agree."""
    k = window_kernel
    o = k.create_object(12 * P)
    w = k.window(6 * P, obj=o, offset=3 * P)  # pages 3..8 are the window's
    try:
        p = k.spawn()
        a = p.mmap(12 * P, flags=MAP_SHARED, obj=o)
        model = bytearray(12 * P)
        r = random.Random(9)
        for i in range(60):
            if i % 3 == 0:
                off = r.randrange(12 * P - 3 * P)
                n = r.randint(P, 3 * P)
            else:
                off = r.randrange(12 * P)
                n = r.randint(1, P - off % P)
            data = pat(i, n)
            p.write(a + off, as_kind(data, "bytes" if i % 2 else r.choice(KINDS)))
            model[off:off + n] = data
        assert p.read(a, 12 * P) == bytes(model)
        assert bytes(w[:]) == bytes(model[3 * P:9 * P])
        assert p.peek(a + 100, 12 * P - 200) == bytes(model[100:12 * P - 100])
        buf = bytearray(12 * P + 2)
        p.readinto(a + 1, memoryview(buf)[1:-2])
        assert buf[1:-2] == model[1:] and buf[0] == 0 and buf[-2:] == b"\0\0"
        w[4 * P:4 * P + 4] = b"host"
        assert p.read(a + 7 * P, 4) == b"host"
    finally:
        w.close()
    k.check()


# -- 2. one-page writes and the fast path: differential (bytes vs bytearray) ------------------


LAYOUT = [  # (name, pages, prot, kind) laid out back to back
    ("rw", 6, RW, "private"),
    ("ro", 2, PROT_READ, "private"),
    ("wo", 2, PROT_WRITE, "private"),
    ("none", 1, PROT_NONE, "private"),
    ("shm", 4, RW, "shared"),
    ("cow", 4, RW, "private"),  # written before the fork: copy-on-write after
    ("hole", 1, 0, "hole"),
    ("rw2", 4, RW, "private"),
]
LAYOUT_PAGES = sum(n for _, n, _, _ in LAYOUT)
BASE = 0x200000000


def build_layout(k: rumpvm.Kernel) -> tuple[rumpvm.Proc, rumpvm.Proc]:
    """A process with every kind of page the fast path must tell apart, and
    a forked child (so 'cow' pages are copy-on-write in both); returns
    (parent, child)."""
    p = k.spawn()
    at = BASE
    o = k.create_object(4 * P)
    for name, n, prot, kind in LAYOUT:
        if kind == "shared":
            p.mmap(n * P, flags=MAP_SHARED | MAP_FIXED, obj=o, addr=at)
        elif kind == "private":
            p.mmap(n * P, prot=RW, flags=FIXED, addr=at)
            for i in range(0, n, 2):
                p.write(at + i * P + 17, b"%s %d" % (name.encode(), i))
            if prot != RW:
                p.mprotect(at, n * P, prot)
        at += n * P
    k.detach_object(o)
    c = p.fork()
    return p, c


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, LAYOUT_PAGES * P - 1), st.integers(1, P), st.booleans(),
                              st.integers(0, 255)), min_size=1, max_size=30),
       pageout=st.booleans())
def test_bytes_fast_path_agrees_with_the_bytearray_slow_path(ops, pageout):
    """The same one-page writes, as bytes (fast paths) in one kernel and as
    bytearray (the general path) in a twin kernel, to every kind of page
    (fresh, written, copy-on-write in parent or child, shared, read-only,
    write-only, PROT_NONE, unmapped, swapped out): same exception (type,
    addr, code), same bytes everywhere afterwards, both kernels check()."""
    kernels = [rumpvm.Kernel(memlimit="1M", swap="16M"), rumpvm.Kernel(memlimit="1M", swap="16M")]
    try:
        twins = [build_layout(k) for k in kernels]
        if pageout:  # the layout's pages to swap: the fast path must decline them
            for k, (p, c) in zip(kernels, twins):
                filler = k.spawn()
                fa = filler.mmap(120 * P)
                filler.write(fa, b"f" * (120 * P))
                at = BASE
                for _, n, _, kind in LAYOUT:
                    if kind != "hole":
                        p.madvise(at, n * P, MADV_DONTNEED)
                        c.madvise(at, n * P, MADV_DONTNEED)
                    at += n * P
                force_pageout(k, "300K", "1M")
                filler.exit()
                assert k.stats()["swpginuse"] > 0
        for off, n, in_child, byte in ops:
            n = min(n, P - off % P)
            data = bytes([byte]) * n
            outcomes = []
            for (p, c), kind in zip(twins, ("bytes", "bytearray")):
                who = c if in_child else p
                try:
                    who.write(BASE + off, as_kind(data, kind))
                    outcomes.append(None)
                except SegmentationFault as e:
                    outcomes.append((e.addr, e.code, e.access))
            assert outcomes[0] == outcomes[1]
        (p0, c0), (p1, c1) = twins
        assert p0.peek(BASE, LAYOUT_PAGES * P) == p1.peek(BASE, LAYOUT_PAGES * P)
        assert c0.peek(BASE, LAYOUT_PAGES * P) == c1.peek(BASE, LAYOUT_PAGES * P)
        for k in kernels:
            k.check()
    finally:
        for k in kernels:
            k.close()


# -- 3. races with the one-page fast path --------------------------------------------------------


def _close_race(limited: bool, trial: int) -> None:
    k = rumpvm.Kernel(memlimit="1M", swap="8M") if limited else rumpvm.Kernel()
    procs = [k.spawn() for _ in range(3)]
    areas = [p.mmap(300 * P) for p in procs]
    procs[0].write(areas[0], b"x" * (300 * P))
    procs.append(procs[0].fork())  # its pages are copy-on-write: the slow path
    areas.append(areas[0])
    closed = threading.Event()
    ready = [threading.Event() for _ in range(6)]
    problems: list[object] = []

    def hammer(n: int) -> None:
        p, a = procs[n % 4], areas[n % 4]
        r = random.Random(n * 100 + trial)
        i = 0
        try:
            while True:
                after = closed.is_set()
                pg = r.randrange(300)
                off = r.randrange(P)
                try:
                    if n == 4:
                        p.read(a + pg * P + off, min(8, P - off))
                    elif n == 5:
                        p.write(a + pg * P + off, bytearray(r.randint(1, 3 * P)))  # the general path
                    else:
                        p.write(a + pg * P + off, bytes([n + 1]) * min(r.randint(1, P), P - off))
                except SegmentationFault:
                    if n != 5:
                        raise
                except VMError as e:
                    if e.errno != errno.ESHUTDOWN:
                        problems.append(e)
                    return
                if after:
                    problems.append(f"thread {n}: call {i} succeeded after close returned")
                    return
                i += 1
                if i == 50:
                    ready[n].set()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            problems.append(e)
        finally:
            ready[n].set()

    ts = run_threads([lambda n=n: hammer(n) for n in range(6)])
    for r in ready:
        assert r.wait(JOIN)
    k.close()
    closed.set()
    join_all(ts)
    assert problems == [], problems
    for p, a in zip(procs, areas):
        for call in (lambda p=p, a=a: p.write(a, b"z"), lambda p=p, a=a: p.read(a, 1),
                     lambda p=p, a=a: p.write(a, b"z" * (2 * P)), lambda p=p, a=a: p.peek(a, 2 * P)):
            with pytest.raises(VMError) as ei:
                call()
            assert ei.value.errno == errno.ESHUTDOWN


@pytest.mark.parametrize("limited", [False, True])
def test_one_page_writes_racing_close(limited):
    """Threads hammer one-page writes (fresh pages, written pages, COW pages),
    one-page reads and multi-page writes while another thread closes the
    kernel.  Every call returns or raises VMError(ESHUTDOWN); nothing else
    escapes; a call that starts after close() returned never succeeds;
    close does not hang."""
    for trial in range(8):
        _close_race(limited, trial)


def test_close_wakes_one_page_writers_waiting_for_memory():
    """With no swap and memory full, a fresh-page write cannot take the fast
    path (no frame) and sleeps in the full fault; close must wake it with
    ESHUTDOWN (not OutOfMemory after its timeout, not a hang)."""
    k = rumpvm.Kernel(memlimit="512K", oom_timeout=0)
    p = k.spawn()
    a = p.mmap(512 * P)
    first_free = 0
    with pytest.raises(OutOfMemory):
        for first_free in range(512):
            p.write(a + first_free * P, b"f")
    k.oom_timeout = 120
    errs: list[BaseException] = []

    def writer(pg: int) -> None:
        try:
            p.write(a + pg * P, b"blocked")
        except BaseException as e:  # noqa: BLE001
            errs.append(e)

    before = k.stats()["oomwaits"]
    ts = run_threads([lambda j=j: writer(first_free + 1 + j) for j in range(3)])
    _wait_for_memory_waiter(k, before + 2)  # all three writers wait for memory
    k.close()
    join_all(ts)
    assert len(errs) == 3
    for e in errs:
        assert isinstance(e, VMError) and e.errno == errno.ESHUTDOWN, repr(e)


def _exit_race(trial: int) -> None:
    with rumpvm.Kernel(memlimit="2M", swap="16M") as k:
        p = k.spawn()
        a = p.mmap(128 * P)
        v = p.fork(shared=True)
        exited = threading.Event()
        stop = threading.Event()
        ready = [threading.Event(), threading.Event()]
        problems: list[object] = []
        vmodel = bytearray(128 * P)  # the sibling's writes (pages 64..127)
        p_pages: set[int] = set()  # pages p wrote successfully (pages 0..63, full pages of 7)

        def on_p() -> None:
            r = random.Random(trial)
            i = 0
            try:
                while True:
                    after = exited.is_set()
                    pg = r.randrange(0, 64)
                    try:
                        p.write(a + pg * P, bytes([7]) * P)
                        p_pages.add(pg)
                    except VMError as e:
                        if e.errno != errno.ESRCH:
                            problems.append(e)
                        return
                    if after:
                        problems.append("write succeeded after exit returned")
                        return
                    i += 1
                    if i == 40:
                        ready[0].set()
            except BaseException as e:  # noqa: BLE001
                problems.append(e)
            finally:
                ready[0].set()

        def on_v() -> None:
            r = random.Random(trial + 1000)
            i = 0
            try:
                while not stop.is_set() or i < 80:
                    pg = r.randrange(64, 128)
                    off = r.randrange(P)
                    data = bytes([i % 250 + 1]) * min(r.randint(1, 64), P - off)
                    v.write(a + pg * P + off, data)
                    vmodel[pg * P + off:pg * P + off + len(data)] = data
                    i += 1
                    if i == 40:
                        ready[1].set()
            except BaseException as e:  # noqa: BLE001
                problems.append(e)
            finally:
                ready[1].set()

        ts = run_threads([on_p, on_v])
        for r in ready:
            assert r.wait(JOIN)
        p.exit()
        exited.set()
        stop.set()
        join_all(ts)
        assert problems == [], problems
        assert v.read(a + 64 * P, 64 * P) == bytes(vmodel[64 * P:])
        got = v.read(a, 64 * P)
        for pg in range(64):
            want = bytes([7]) * P if pg in p_pages else bytes(P)
            assert got[pg * P:(pg + 1) * P] == want, pg
        k.check()
        v.exit()
        k.check()


def test_one_page_writes_racing_exit():
    """Writers on a process and on its vfork sibling (same vmspace) while
    the process exits: the exiting one's calls return or raise ESRCH, and
    those started after exit() returned always raise ESRCH; the sibling
    keeps working and holds exactly the bytes of the successful writes of
    both; check() is clean."""
    for trial in range(8):
        _exit_race(trial)


def _fork_race(n: int) -> None:
    with rumpvm.Kernel() as k:
        p = k.spawn()
        a = p.mmap(n * P)
        started = [0]
        done = [0]
        go = threading.Event()
        problems: list[BaseException] = []

        def writer() -> None:
            try:
                for i in range(n):
                    started[0] = i + 1
                    p.write(a + i * P + (i * 8) % P, struct.pack("<Q", i + 1))
                    done[0] = i + 1
                    if i == 30:
                        go.set()
            except BaseException as e:  # noqa: BLE001
                problems.append(e)
            finally:
                go.set()

        ts = run_threads([writer])
        assert go.wait(JOIN)
        kids = []
        for _ in range(12):
            d0 = done[0]
            c = p.fork()
            s1 = started[0]
            kids.append((c, d0, s1))
        join_all(ts)
        assert problems == []
        for c, d0, s1 in kids:
            c.write(a + (n - 1) * P + 8, b"child!")  # must not reach the parent
            data = c.read(a, n * P)
            for i in range(n):
                v = struct.unpack_from("<Q", data, i * P + (i * 8) % P)[0]
                if i < d0:
                    assert v == i + 1, (i, v, d0, s1)
                elif i < s1:
                    assert v in (0, i + 1), (i, v, d0, s1)
                else:
                    assert v == 0, (i, v, d0, s1)
        assert p.read(a + (n - 1) * P + 8, 6) == bytes(6)
        whole = p.read(a, n * P)
        assert all(struct.unpack_from("<Q", whole, i * P + (i * 8) % P)[0] == i + 1 for i in range(n))
        k.check()


def test_fork_racing_fresh_page_writes_snapshots_a_prefix():
    """A writer zero-fills fresh pages in order (write i goes to page i) with
    one-page writes while another thread forks again and again.  Each child
    is a snapshot: every write finished before fork() was called is in it,
    no write started after fork() returned is, and the parent's later writes
    never show in it (nor the child's in the parent)."""
    for _ in range(4):
        _fork_race(1500)


def _protect_race(how: str, trial: int) -> None:
    with rumpvm.Kernel() as k:
        p = k.spawn()
        npg = 256
        a = p.mmap(npg * P)
        for i in range(0, npg, 3):
            p.write(a + i * P, b"pre")
        model = bytearray(p.read(a, npg * P))
        lock = threading.Lock()
        done_call = threading.Event()
        ready = [threading.Event() for _ in range(2)]
        problems: list[object] = []
        code = "SEGV_ACCERR" if how == "mprotect" else "SEGV_MAPERR"

        def writer(n: int) -> None:
            r = random.Random(trial * 10 + n)
            i = faults = 0
            try:
                while faults < 20:
                    after = done_call.is_set()
                    if n == 0 or r.random() < 0.8:
                        off = r.randrange(npg * P)
                        ln = r.randint(1, P - off % P)
                    else:
                        off = r.randrange(npg * P - 3 * P)
                        ln = r.randint(P + 1, 3 * P)
                    data = bytes([r.randrange(1, 256)]) * ln
                    try:
                        with lock:  # model and memory updated together (two writer threads)
                            p.write(a + off, data)
                            model[off:off + ln] = data
                    except SegmentationFault as e:
                        faults += 1
                        if e.code != code or not a <= e.addr < a + npg * P:
                            problems.append(e)
                        continue
                    if after:
                        problems.append(f"write at +{off:#x} succeeded after {how} returned")
                    i += 1
                    if i == 30:
                        ready[n].set()
            except BaseException as e:  # noqa: BLE001
                problems.append(e)
            finally:
                ready[n].set()

        ts = run_threads([lambda n=n: writer(n) for n in range(2)])
        for r in ready:
            assert r.wait(JOIN)
        if how == "mprotect":
            p.mprotect(a, npg * P, PROT_READ)
        else:
            p.munmap(a, npg * P)
        done_call.set()
        join_all(ts)
        assert problems == [], problems[:3]
        if how == "mprotect":
            assert p.read(a, npg * P) == bytes(model)
        else:
            b = p.mmap(npg * P, addr=a, flags=FIXED)
            assert p.read(b, npg * P) == bytes(npg * P)
        k.check()


@pytest.mark.parametrize("how", ["mprotect", "munmap"])
def test_writes_racing_mprotect_or_munmap(how):
    """Writers (one-page fast path on fresh and written pages, and
    multi-page writes) race an mprotect to read-only (or a munmap) of their
    range.  A write that starts after that call returned must raise
    SegmentationFault (SEGV_ACCERR / SEGV_MAPERR); a failed write changes
    nothing; afterwards the range holds exactly the successful writes (or,
    unmapped, leaves no page behind: check() is clean)."""
    for trial in range(6):
        _protect_race(how, trial)


def test_writes_racing_madvise_and_msync_keep_every_byte():
    """MADV_DONTNEED (BSD: keeps data), MADV_WILLNEED, MADV_SEQUENTIAL and
    msync looping over a range while a writer does one-page and multi-page
    writes into it, under a limit that makes pages go to swap and back:
    every byte the writer wrote is there at the end."""
    with rumpvm.Kernel(memlimit="600K", swap="16M") as k:
        p = k.spawn()
        npg = 160
        a = p.mmap(npg * P)
        model = bytearray(npg * P)
        done = threading.Event()
        problems: list[BaseException] = []

        def writer() -> None:
            r = random.Random(3)
            try:
                for i in range(1500):
                    if i % 10 == 9:
                        off = r.randrange(npg * P - 4 * P)
                        n = r.randint(P, 4 * P)
                    else:
                        off = r.randrange(npg * P)
                        n = r.randint(1, P - off % P)
                    data = pat(i, n)
                    p.write(a + off, data)
                    model[off:off + n] = data
            except BaseException as e:  # noqa: BLE001
                problems.append(e)
            finally:
                done.set()

        ts = run_threads([writer])
        r = random.Random(4)
        advice = [MADV_DONTNEED, MADV_WILLNEED, MADV_SEQUENTIAL, MADV_NORMAL]
        while not done.is_set():
            s = r.randrange(npg)
            n = r.randint(1, npg - s)
            try:
                if r.random() < 0.8:
                    p.madvise(a + s * P, n * P, r.choice(advice))
                else:
                    p.msync(a + s * P, n * P, r.choice([MS_ASYNC, MS_INVALIDATE, 0]))
            except OutOfMemory:
                pass  # MADV_WILLNEED may not find memory for a page-in under this limit
        join_all(ts)
        assert problems == []
        assert p.read(a, npg * P) == bytes(model)
        assert k.stats()["pageouts"] > 0
        k.check()


def test_full_page_writes_racing_madv_free():
    """MADV_FREE discards private pages at once: racing full-page one-page
    writes, each page must end either all zeros (freed after its last
    write) or exactly its last write: never a mix, never an older write."""
    with rumpvm.Kernel() as k:
        p = k.spawn()
        npg = 64
        a = p.mmap(npg * P)
        last: dict[int, bytes] = {}
        done = threading.Event()
        problems: list[BaseException] = []

        def writer() -> None:
            r = random.Random(1)
            try:
                for i in range(3000):
                    pg = r.randrange(npg)
                    data = struct.pack("<I", i + 1) * (P // 4)
                    p.write(a + pg * P, data)
                    last[pg] = data
            except BaseException as e:  # noqa: BLE001
                problems.append(e)
            finally:
                done.set()

        ts = run_threads([writer])
        r = random.Random(2)
        while not done.is_set():
            s = r.randrange(npg)
            p.madvise(a + s * P, r.randint(1, npg - s) * P, MADV_FREE)
        join_all(ts)
        assert problems == []
        got = p.read(a, npg * P)
        for pg in range(npg):
            page = got[pg * P:(pg + 1) * P]
            assert page == bytes(P) or page == last.get(pg), pg
        k.check()


def _first_writes(limit: str) -> None:
    with rumpvm.Kernel(memlimit=limit, swap="16M") as k:
        p = k.spawn()
        v = p.fork(shared=True)
        q = k.spawn()
        npg = 200
        a = p.mmap(npg * P)
        o = k.create_object(npg * P)
        s_p = p.mmap(npg * P, flags=MAP_SHARED, obj=o)
        s_q = q.mmap(npg * P, flags=MAP_SHARED, obj=o)
        go = threading.Event()
        problems: list[BaseException] = []
        who = [(p, a), (v, a), (p, s_p), (q, s_q)]

        def writer(n: int) -> None:
            proc, base = who[n]
            half = n % 2  # two writers per page set, each on its own half of every page
            try:
                assert go.wait(JOIN)
                for pg in range(npg):
                    proc.write(base + pg * P + half * (P // 2), bytes([n + 1]) * (P // 2))
            except BaseException as e:  # noqa: BLE001
                problems.append(e)

        ts = run_threads([lambda n=n: writer(n) for n in range(4)])
        go.set()
        join_all(ts)
        assert problems == []
        priv = p.read(a, npg * P)
        shm = q.read(s_q, npg * P)
        for pg in range(npg):
            assert priv[pg * P:(pg + 1) * P] == b"\x01" * (P // 2) + b"\x02" * (P // 2), pg
            assert shm[pg * P:(pg + 1) * P] == b"\x03" * (P // 2) + b"\x04" * (P // 2), pg
        assert k.object_peek(o.id, 0, npg * P) == shm
        k.check()


@pytest.mark.parametrize("limit", ["unlimited", "1M"])
def test_concurrent_first_writes_to_the_same_fresh_pages_lose_nothing(limit):
    """Several threads zero-fill the same fresh pages at once through one
    shared vmspace (vfork) and through two mappings of one MAP_SHARED object,
    each writing its own half of every page: a page zero-filled twice would
    lose a thread's bytes.  Every byte must be there, also under a limit
    that pages."""
    for _ in range(3):
        _first_writes(limit)


def test_one_page_writes_racing_the_swapper():
    """Many small processes under a tight limit, all asleep with maxslp 0:
    the swapper swaps them out whenever memory is short.  Writer threads do
    one-page writes (and one-page reads) to all of them while a hog keeps
    memory short: a write to a swapped-out process must swap it in and
    land; every byte matches the model at the end; check() is clean."""
    with rumpvm.Kernel(memlimit="600K", swap="32M", oom_timeout=60) as k:
        k.maxslp = 0
        procs = [k.spawn(f"s{i}") for i in range(10)]
        npg = 24
        areas = [p.mmap(npg * P) for p in procs]
        models = [bytearray(npg * P) for _ in procs]
        for p, a, m in zip(procs, areas, models):
            p.write(a, b"\x01" * (npg * P))
            m[:] = b"\x01" * (npg * P)
            p.sleep()
        hog = k.spawn("hog")
        h = hog.mmap(200 * P)
        hog.write(h, b"h" * (200 * P))  # memory short: the sleepers were swapped out
        assert all(p.state == "W" for p in procs), [p.state for p in procs]
        problems: list[BaseException] = []
        locks = [threading.Lock() for _ in procs]

        def writer(n: int) -> None:
            r = random.Random(n)
            try:
                for it in range(700):
                    j = r.randrange(len(procs))
                    p, a, m = procs[j], areas[j], models[j]
                    pg, off = r.randrange(npg), r.randrange(P)
                    with locks[j]:
                        if it % 5 == 4:
                            assert p.read(a + pg * P + off, 1) == m[pg * P + off:pg * P + off + 1]
                            continue
                        data = bytes([r.randrange(2, 256)]) * r.randint(1, P - off)
                        p.write(a + pg * P + off, data)
                        m[pg * P + off:pg * P + off + len(data)] = data
                    if it % 40 == 0:
                        p.sleep()
            except BaseException as e:  # noqa: BLE001
                problems.append(e)

        def hogger() -> None:
            try:
                for i in range(40):
                    hog.write(h + i * P, b"H" * (30 * P))
            except BaseException as e:  # noqa: BLE001
                problems.append(e)

        ts = run_threads([lambda n=n: writer(n) for n in range(3)] + [hogger])
        join_all(ts)
        assert problems == [], problems[:3]
        assert k.stats()["swapouts"] >= len(procs) and k.stats()["swapins"] > 0
        k.check()
        for p, a, m in zip(procs, areas, models):
            assert p.read(a, npg * P) == bytes(m)
        k.check()


def test_out_of_memory_one_page_and_short_multi_page_writes():
    """No swap, memory full, oom_timeout 0 (a wait fails at once): a one-page
    bytes write to a fresh page raises OutOfMemory with .written 0 and
    changes nothing, while writes to resident pages still work (the fast
    path needs no frame); a multi-page write over resident then fresh pages
    is a clean short write: the new bytes exactly up to .written, the old
    ones after."""
    with rumpvm.Kernel(memlimit="512K", oom_timeout=0) as k:
        p = k.spawn()
        a = p.mmap(256 * P)
        n = 0
        with pytest.raises(OutOfMemory):
            for n in range(256):
                p.write(a + n * P, bytes([n % 250 + 1]) * P)
        model = bytearray(256 * P)
        for i in range(n):
            model[i * P:(i + 1) * P] = bytes([i % 250 + 1]) * P
        assert p.read(a, 256 * P) == bytes(model)
        for kind in ("bytes", "bytearray"):
            with pytest.raises(OutOfMemory) as ei:
                p.write(a + (n + 1) * P + 7, as_kind(b"no room", kind))
            assert ei.value.written == 0
        p.write(a + 3 * P + 5, b"resident")  # the fast path: a writable translation
        model[3 * P + 5:3 * P + 13] = b"resident"
        data = pat(42, (n - 2) * P + 3 * P)
        with pytest.raises(OutOfMemory) as ei:
            p.write(a + 2 * P + 100, data)
        w = ei.value.written
        assert w == (n - 2) * P - 100, (w, n)
        model[2 * P + 100:2 * P + 100 + w] = data[:w]
        assert p.read(a, 256 * P) == bytes(model)
        k.check()


def _chaos(seed: int, iters: int = 300, nthreads: int = 4) -> list[str]:
    """Threads run random calls (one-page fast-path writes, long writes,
    reads, peeks, mprotect, madvise, munmap+mmap, fork and vfork, exit,
    unshare, sleep/wake, limit changes) on a few processes sharing an
    object; returns what went wrong (an exception other than the expected
    VMErrors, a hang, check() at the end)."""
    k = rumpvm.Kernel(memlimit="1M", swap="32M", oom_timeout=30)
    k.maxslp = 0
    o = k.create_object(32 * P)
    base = 0x100000000
    procs = [k.spawn() for _ in range(3)]
    for p in procs:
        p.mmap(64 * P, flags=FIXED, addr=base)
        p.mmap(32 * P, flags=MAP_SHARED | MAP_FIXED, obj=o, addr=base + 64 * P)
    plock = threading.Lock()
    bad: list[str] = []

    def worker(n: int) -> None:
        r = random.Random(seed * 100 + n)
        for _ in range(iters):
            with plock:
                live = [p for p in procs if p.alive]
                if not live:
                    return
                p = r.choice(live)
            op = r.random()
            off = r.randrange(96 * P)
            try:
                if op < 0.45:
                    p.write(base + off, bytes([r.randrange(256)]) * r.randint(1, P - off % P))
                elif op < 0.55:
                    p.write(base + off, bytearray(r.randint(1, 5 * P)))
                elif op < 0.65:
                    p.read(base + off, r.randint(1, 5 * P))
                elif op < 0.68:
                    p.peek(base + off, r.randint(1, 5 * P))
                elif op < 0.71:
                    s = r.randrange(96)
                    p.mprotect(base + s * P, r.randint(1, 96 - s) * P, r.choice([RW, PROT_READ, PROT_WRITE, PROT_NONE]))
                elif op < 0.73:
                    s = r.randrange(64)
                    advice = r.choice([MADV_FREE, MADV_DONTNEED, MADV_WILLNEED])
                    p.madvise(base + s * P, r.randint(1, 64 - s) * P, advice)
                elif op < 0.75:
                    s = r.randrange(64)
                    m = r.randint(1, 64 - s)
                    p.munmap(base + s * P, m * P)
                    p.mmap(m * P, flags=FIXED, addr=base + s * P)
                elif op < 0.78:
                    c = p.fork(shared=r.random() < 0.3)
                    with plock:
                        procs.append(c)
                        victim = procs.pop(r.randrange(len(procs))) if len(procs) > 8 else None
                    if victim is not None and victim.alive:
                        victim.exit()
                elif op < 0.80:
                    p.sleep()
                elif op < 0.81:
                    p.wake()
                elif op < 0.82:
                    p.unshare()
                elif op < 0.83:
                    k.memlimit = r.choice(["400K", "1M", "2M"])
                else:
                    p.read(base + off, r.randint(1, P - off % P))
            except (SegmentationFault, OutOfMemory):
                pass
            except VMError as e:
                if e.errno not in (errno.ESRCH, errno.ENOMEM, errno.EACCES):
                    bad.append(repr(e))
            except BaseException as e:  # noqa: BLE001
                bad.append(repr(e))

    ts = run_threads([lambda n=n: worker(n) for n in range(nthreads)])
    for t in ts:
        t.join(JOIN)
        if t.is_alive():
            bad.append(f"{t.name} hangs")
    if not bad:
        try:
            k.check()
        except VMError as e:
            bad.append(str(e))
    k.close()
    return bad


def test_random_concurrent_calls_keep_the_kernel_consistent():
    """Random calls from four threads on processes that fork, vfork, exit,
    unshare, sleep (and get swapped out) and change protections under a
    small limit: only the expected VMErrors escape, nothing hangs, and
    check() is clean at the end.  (This search found the unshare and the
    page-in races of section 8 on d99e5fe.)"""
    for seed in range(24):
        bad = _chaos(seed)
        assert bad == [], (seed, bad[:3])


# -- 4. deterministic interleavings at the lock -------------------------------------------------


def test_close_between_the_fast_path_and_the_gate():
    """A one-page write whose fast path declines (a copy-on-write page) and
    that is stopped before the gate while the kernel closes gets ESHUTDOWN;
    one stopped before the fast path's own lock gets ESHUTDOWN too (fresh
    page, written page, COW page)."""
    for at, page in ((1, "fresh"), (1, "written"), (1, "cow"), (2, "cow")):
        k = rumpvm.Kernel()
        p = k.spawn()
        a = p.mmap(2 * P)
        p.write(a, b"old")
        if page == "cow":
            p.fork()  # p's page is copy-on-write now: the fast path declines
        target = a + P if page == "fresh" else a
        _, exc = paused_call(k, at, lambda p=p, t=target: p.write(t, b"new"), k.close)
        assert isinstance(exc, VMError) and exc.errno == errno.ESHUTDOWN, (at, page, repr(exc))


MEANWHILE = ["exit", "exec", "mprotect", "munmap", "fork", "swapout", "pageout", "madv_free", "mlock"]


@pytest.mark.parametrize("at", [1, 2])
@pytest.mark.parametrize("meanwhile", MEANWHILE)
def test_a_call_completing_between_lock_acquisitions_of_a_write(at, meanwhile):
    """A one-page write stopped before its first (fast path: a fresh page)
    or second (gate: a copy-on-write page, the fast path declined) lock
    acquisition while another thread runs a whole call: exit -> ESRCH; exec
    or munmap -> SEGV_MAPERR; mprotect read-only -> SEGV_ACCERR and nothing
    written; fork -> the write is not in the child; a swap-out or a pageout
    -> the write swaps/pages in and lands; MADV_FREE -> lands on a fresh
    page (the freed ones read zeros, unless they shadow a fork's copy);
    mlock -> lands on the wired page."""
    with rumpvm.Kernel(memlimit="1M", swap="16M") as k:
        k.maxslp = 0
        p = k.spawn()
        a = p.mmap(4 * P)
        p.write(a + P, b"written")
        if at == 2:  # make the fast path decline: the page is copy-on-write
            p.fork()
        target = a + (P if at == 2 else 2 * P)  # a COW page / a fresh page
        before = p.read(a, 4 * P)
        kid: list[rumpvm.Proc] = []

        def during() -> None:
            if meanwhile == "exit":
                p.exit()
            elif meanwhile == "exec":
                p.exec()
            elif meanwhile == "mprotect":
                p.mprotect(a, 4 * P, PROT_READ)
            elif meanwhile == "munmap":
                p.munmap(a, 4 * P)
            elif meanwhile == "fork":
                kid.append(p.fork())
            elif meanwhile == "swapout":
                p.sleep()
                hog = k.spawn()
                h = hog.mmap(300 * P)
                hog.write(h, b"h" * (300 * P))
                assert p.state == "W"
            elif meanwhile == "pageout":
                force_pageout(k, "300K", "1M")
            elif meanwhile == "madv_free":
                p.madvise(a, 4 * P, MADV_FREE)
            else:
                p.mlock(a, 4 * P)

        _, exc = paused_call(k, at, lambda: p.write(target + 5, b"NEW"), during)
        if meanwhile == "exit":
            assert isinstance(exc, VMError) and exc.errno == errno.ESRCH, repr(exc)
        elif meanwhile in ("exec", "munmap"):
            assert isinstance(exc, SegmentationFault) and exc.code == "SEGV_MAPERR", repr(exc)
            assert exc.addr == target + 5
        elif meanwhile == "mprotect":
            assert isinstance(exc, SegmentationFault) and exc.code == "SEGV_ACCERR", repr(exc)
            assert exc.addr == target + 5
            assert p.read(a, 4 * P) == before
        else:
            assert exc is None, repr(exc)
            want = bytearray(before)
            if meanwhile == "madv_free" and at == 1:
                want[:] = bytes(4 * P)  # nothing shadows: the pages are gone
            want[target + 5 - a:target + 8 - a] = b"NEW"
            assert p.read(a, 4 * P) == bytes(want)
            if meanwhile == "fork":
                assert kid[0].read(a, 4 * P) == before
            if meanwhile == "swapout":
                assert p.state == "S"  # swapped back in, still asleep
        k.check()


# -- 5. multi-page copies: runs of adjacent and scattered frames -----------------------------


def test_runs_of_adjacent_and_scattered_frames_copy_exactly():
    """Build a range whose frames are partly host-adjacent (fresh zero-fills
    in order) and partly scattered (COW copies interleaved between two
    processes, pages freed and reused, pageout and pagein), with never-
    written holes in between; then every read/readinto/peek/write at many
    unaligned starts and lengths equals a bytearray model, and a readinto
    never touches a byte outside its view."""
    with rumpvm.Kernel(memlimit="2M", swap="16M") as k:
        p = k.spawn()
        npg = 96
        a = p.mmap(npg * P)
        model = bytearray(npg * P)
        for i in range(0, 48):
            model[i * P:(i + 1) * P] = pat(i, P)
        p.write(a, bytes(model[:48 * P]))  # one long write: adjacent frames
        c = p.fork()
        for i in range(0, 48, 2):  # the parent and the child copy alternately: scattered frames
            p.write(a + i * P + 1, b"P")
            model[i * P + 1] = ord("P")
            c.write(a + (i + 1) * P + 1, b"C")
        run = pat(777, 10 * P - 100)  # fresh pages in one write: adjacent frames again
        p.write(a + 48 * P + 50, as_kind(run, "memoryview"))
        model[48 * P + 50:58 * P - 50] = run
        for i in range(60, 90, 3):  # never-written holes between fresh pages
            data = pat(1000 + i, P)
            p.write(a + i * P, data)
            model[i * P:(i + 1) * P] = data
        assert p.read(a, npg * P) == bytes(model)  # maps every resident page again
        adj, non = adjacency(frame_addrs(p, a, npg))
        assert adj > 0 and non > 0, (adj, non)
        r = random.Random(11)

        def check_range(s: int, n: int) -> None:
            want = bytes(model[s:s + n])
            assert p.read(a + s, n) == want
            assert p.peek(a + s, n) == want
            buf = bytearray(b"\xa5" * (n + 130))
            view = memoryview(buf)[64:64 + n]
            assert p.readinto(a + s, view) == n
            assert buf[:64] == b"\xa5" * 64 and buf[64 + n:] == b"\xa5" * 66
            assert buf[64:64 + n] == want

        for _ in range(60):
            s = r.randrange(npg * P - 1)
            n = r.randint(1, min(npg * P - s, 20 * P))
            check_range(s, n)
        for s in (0, P - 1, P, 47 * P + 4000, 59 * P, 60 * P - 1):  # run, hole and page boundaries
            for n in (1, P - 1, P, P + 1, 2 * P, 13 * P + 7):
                if s + n <= npg * P:
                    check_range(s, n)
        force_pageout(k, "400K", "2M")  # some pages to swap: pageins scatter frames again
        assert k.stats()["swpginuse"] > 0
        for _ in range(30):
            s = r.randrange(npg * P - 1)
            n = r.randint(1, min(npg * P - s, 30 * P))
            if r.random() < 0.5:
                check_range(s, n)
            else:
                data = pat(r.randrange(10 ** 6), n)
                p.write(a + s, as_kind(data, r.choice(["bytes", "bytearray", "memoryview"])))
                model[s:s + n] = data
        check_range(0, npg * P)
        # the child's view: its own copies, the shared originals elsewhere
        cm = bytearray(npg * P)
        for i in range(48):
            cm[i * P:(i + 1) * P] = pat(i, P)
            if i % 2:
                cm[i * P + 1] = ord("C")
        assert c.read(a, npg * P) == bytes(cm)
        k.check()


def test_reads_and_writes_across_entries_with_different_protections(kernel):
    """A multi-page range over rw | r | rw | write-only | rw entries: reads
    across readable entries work and stop (SegmentationFault, buffer
    untouched) at the write-only one; writes cross the write-only entry but
    not the read-only one (nothing written at all, not even the pages
    before it); peek sees everything."""
    k = kernel
    p = k.spawn()
    a = p.mmap(20 * P)
    p.write(a, pat(1, 20 * P))
    model = bytearray(pat(1, 20 * P))
    p.mprotect(a + 4 * P, 2 * P, PROT_READ)
    p.mprotect(a + 10 * P, 3 * P, PROT_WRITE)
    # readable: [0,10) and [13,20); writable: [0,4) and [6,20)
    assert p.read(a + 100, 10 * P - 200) == bytes(model[100:10 * P - 100])
    for s, n, bad in ((P + 5, 10 * P, 10 * P), (10 * P - 1, 2, 10 * P), (12 * P + 9, 3 * P, 12 * P + 9)):
        buf = bytearray(b"\x5a" * n)
        with pytest.raises(SegmentationFault) as ei:
            p.readinto(a + s, buf)
        seg(ei, a + bad, "SEGV_ACCERR")
        assert buf == b"\x5a" * n
        with pytest.raises(SegmentationFault):
            p.read(a + s, n)
    data = pat(2, 12 * P)
    p.write(a + 6 * P + 3, data)  # through the write-only pages
    model[6 * P + 3:18 * P + 3] = data
    for s, n in ((P, 4 * P), (3 * P + 4095, 2), (2, 19 * P)):
        with pytest.raises(SegmentationFault) as ei:
            p.write(a + s, as_kind(pat(3, n), "bytearray"))
        seg(ei, a + max(s, 4 * P), "SEGV_ACCERR")
    assert p.peek(a, 20 * P) == bytes(model)
    p.mprotect(a, 20 * P, RW)
    assert p.read(a, 20 * P) == bytes(model)
    k.check()


def test_aliased_pages_in_one_run_copy_in_order(kernel):
    """One object page mapped at two neighbouring addresses (and a run that
    visits the same frames twice): a multi-page write is applied in address
    order (the later bytes win on the aliased page) and a multi-page read
    returns the same page twice."""
    k = kernel
    p = k.spawn()
    o = k.create_object(4 * P)
    base = p.mmap(8 * P)
    p.munmap(base, 8 * P)
    p.mmap(2 * P, flags=MAP_SHARED | MAP_FIXED, obj=o, addr=base)              # obj 0,1
    p.mmap(2 * P, flags=MAP_SHARED | MAP_FIXED, obj=o, addr=base + 2 * P)       # obj 0,1 again
    p.mmap(2 * P, flags=MAP_SHARED | MAP_FIXED, obj=o, addr=base + 4 * P, offset=P)  # obj 1,2
    p.write(base, pat(5, 2 * P))  # fresh, adjacent frames for obj 0,1
    data = pat(6, 6 * P - 10)
    p.write(base + 5, data)
    obj = [bytearray(P) for _ in range(4)]
    layout = [0, 1, 0, 1, 1, 2]
    src = bytearray(pat(5, 2 * P))
    obj[0][:], obj[1][:] = src[:P], src[P:]
    for i, pg in enumerate(layout):  # the model: page by page, in address order
        lo, hi = max(5, i * P), min(5 + len(data), (i + 1) * P)
        obj[pg][lo - i * P:hi - i * P] = data[lo - 5:hi - 5]
    want = b"".join(bytes(obj[pg]) for pg in layout)
    assert p.read(base, 6 * P) == want
    assert p.peek(base, 6 * P) == want
    assert k.object_peek(o.id, 0, 4 * P) == b"".join(bytes(x) for x in obj)
    k.check()


# -- 6. a model of everything at once (hypothesis) ----------------------------------------------


class SpaceModel:
    """Processes over one fixed layout: cells are per-process private pages
    (copied at fork) or shared object pages (one cell for every mapping)."""

    LAYOUT: ClassVar[list[tuple[str, int, int, int | None]]] = [  # name, pages, prot, shared offset
        ("a", 20, RW, None),
        ("r", 3, PROT_READ, None),
        ("s", 8, RW, 0),
        ("alias", 4, RW, 4),   # object pages 4..8 again
        ("w", 3, PROT_WRITE, None),
        ("b", 10, RW, None),
    ]
    NPAGES = sum(n for _, n, _, _ in LAYOUT)
    BASE = 0x300000000

    def __init__(self) -> None:
        self.cells: dict[object, bytearray] = {}
        self.owner: list[dict[int, object]] = []  # per process: page -> cell key
        self.prot: list[int] = []
        for _, n, prot, _ in self.LAYOUT:
            self.prot += [prot] * n
        self.shared_at: dict[int, object] = {}
        pg = 0
        for _, n, _, shoff in self.LAYOUT:
            for i in range(n):
                if shoff is not None:
                    self.shared_at[pg + i] = ("obj", shoff + i)
            pg += n

    def new_proc(self, parent: int | None) -> int:
        pid = len(self.owner)
        m: dict[int, object] = {}
        for pg in range(self.NPAGES):
            if pg in self.shared_at:
                key = self.shared_at[pg]
                self.cells.setdefault(key, bytearray(P))
            else:
                key = ("priv", pid, pg)
                src = self.cells[self.owner[parent][pg]] if parent is not None else bytearray(P)
                self.cells[key] = bytearray(src)
            m[pg] = key
        self.owner.append(m)
        return pid

    def first_bad(self, off: int, n: int, need: int) -> int | None:
        for pg in range(off // P, (off + n - 1) // P + 1):
            if self.prot[pg] & need != need:
                return max(off, pg * P)
        return None

    def write(self, pid: int, off: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            at = off + pos
            pg, o = divmod(at, P)
            k = min(P - o, len(data) - pos)
            self.cells[self.owner[pid][pg]][o:o + k] = data[pos:pos + k]
            pos += k

    def read(self, pid: int, off: int, n: int) -> bytes:
        out = bytearray()
        pos = 0
        while pos < n:
            pg, o = divmod(off + pos, P)
            k = min(P - o, n - pos)
            out += self.cells[self.owner[pid][pg]][o:o + k]
            pos += k
        return bytes(out)


def _setup(k: rumpvm.Kernel) -> rumpvm.Proc:
    p = k.spawn()
    o = k.create_object(8 * P)
    at = SpaceModel.BASE
    for _, n, prot, shoff in SpaceModel.LAYOUT:
        if shoff is None:
            p.mmap(n * P, prot=prot, flags=FIXED, addr=at)
        else:
            p.mmap(n * P, flags=MAP_SHARED | MAP_FIXED, obj=o, addr=at, offset=shoff * P)
        at += n * P
    k.detach_object(o)
    return p


op_st = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3), st.integers(0, SpaceModel.NPAGES * P - 1),
              st.one_of(st.integers(1, P), st.integers(P, 12 * P)), st.sampled_from(KINDS), st.integers(0, 1 << 30)),
    st.tuples(st.just("read"), st.integers(0, 3), st.integers(0, SpaceModel.NPAGES * P - 1),
              st.integers(1, 16 * P), st.sampled_from(["read", "readinto", "peek"])),
    st.tuples(st.just("fork"), st.integers(0, 3)),
    st.tuples(st.just("pageout")),
    st.tuples(st.just("dontneed"), st.integers(0, 3)),
    st.tuples(st.just("exit"), st.integers(1, 3)),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op_st, min_size=1, max_size=25))
def test_model_of_reads_writes_forks_and_paging(ops):
    """Random one-page and multi-page writes (every buffer kind), reads,
    readintos and peeks at any offset and length, forks (frames scatter by
    COW), forced pageouts and MADV_DONTNEED, child exits, over a layout
    with read-only, write-only, aliased MAP_SHARED and private entries: the
    bytes always equal the model, a refused access raises
    SegmentationFault at the model's address and changes nothing, and
    check() is clean at the end."""
    with rumpvm.Kernel(memlimit="1M", swap="16M") as k:
        model = SpaceModel()
        procs: list[rumpvm.Proc | None] = [_setup(k)]
        model.new_proc(None)
        filler = k.spawn("filler")  # memory for a pageout to take: the model's pages go to swap
        fa = filler.mmap(100 * P)
        filler.write(fa, b"f" * (100 * P))
        base = SpaceModel.BASE
        total = SpaceModel.NPAGES * P
        for op in ops:
            live = [i for i, x in enumerate(procs) if x is not None]
            if op[0] == "write":
                _, who, off, n, kind, seed = op
                pid = live[who % len(live)]
                n = min(n, total - off)
                data = pat(seed, n)
                bad = model.first_bad(off, n, PROT_WRITE)
                if bad is None:
                    procs[pid].write(base + off, as_kind(data, kind))
                    model.write(pid, off, data)
                else:
                    with pytest.raises(SegmentationFault) as ei:
                        procs[pid].write(base + off, as_kind(data, kind))
                    seg(ei, base + bad, "SEGV_ACCERR")
            elif op[0] == "read":
                _, who, off, n, how = op
                pid = live[who % len(live)]
                n = min(n, total - off)
                p = procs[pid]
                want = model.read(pid, off, n)
                bad = model.first_bad(off, n, PROT_READ)
                if how == "peek":
                    assert p.peek(base + off, n) == want
                elif bad is not None:
                    buf = bytearray(b"\x77" * n)
                    with pytest.raises(SegmentationFault) as ei:
                        if how == "read":
                            p.read(base + off, n)
                        else:
                            p.readinto(base + off, buf)
                    seg(ei, base + bad, "SEGV_ACCERR")
                    assert buf == b"\x77" * n
                elif how == "read":
                    assert p.read(base + off, n) == want
                else:
                    buf = bytearray(b"\x77" * (n + 2))
                    p.readinto(base + off, memoryview(buf)[1:-1])
                    assert buf[1:-1] == want and buf[0] == buf[-1] == 0x77
            elif op[0] == "fork":
                if len(live) < 4:
                    parent = live[op[1] % len(live)]
                    procs.append(procs[parent].fork())
                    model.new_proc(parent)
            elif op[0] == "pageout":  # the model's pages go first, then the filler's
                for x in procs:
                    if x is not None:
                        x.madvise(base, total, MADV_DONTNEED)
                force_pageout(k, "300K", "1M")
            elif op[0] == "dontneed":
                pid = live[op[1] % len(live)]
                procs[pid].madvise(base, total, MADV_DONTNEED)
            elif op[0] == "exit" and len(live) > 1:
                pid = live[1:][op[1] % (len(live) - 1)]
                procs[pid].exit()
                procs[pid] = None
        for pid, p in enumerate(procs):
            if p is not None:
                assert p.peek(base, total) == model.read(pid, 0, total)
        k.check()


# -- 7. the other users of the copies: /vm mem, host-window buffers, odd buffers -------------------


def test_vm_mem_file_reads_and_writes_over_every_kind_of_page():
    """/vm/proc/<pid>/mem (mountd.memfile, called directly: no FUSE mount
    needed) over resident, swapped, never-written and copy-on-write pages
    at unaligned offsets: reads equal the model and are short at the first
    unmapped page (EIO when it starts there, EACCES-free: reads ignore
    protection); one-page writes (the fast path) and long writes land;
    a write to a read-only page is EACCES, to an unmapped one EIO; ESRCH
    once the process exited."""
    pyfuse3 = pytest.importorskip("pyfuse3")
    from mountd import memfile
    from mountd.tree import Kind, Node

    with rumpvm.Kernel(memlimit="1M", swap="16M") as k:
        p = k.spawn()
        a = p.mmap(124 * P)
        p.munmap(a + 120 * P, 4 * P)  # a hole after 120 pages
        model = bytearray(120 * P)
        for i in (i for i in range(120) if i % 3 != 2):
            model[i * P:(i + 1) * P] = pat(i, P)
            p.write(a + i * P, bytes(model[i * P:(i + 1) * P]))
        c = p.fork()
        c.write(a + 10 * P, b"child")
        force_pageout(k, "300K", "1M")
        assert k.stats()["swpginuse"] > 0
        node = Node(Kind.PROC_MEM, p.pid)
        r = random.Random(8)
        for _ in range(40):
            off = r.randrange(120 * P)
            n = r.randint(1, 130 * P)
            got = memfile.read(k, node, a + off, n)
            assert got == bytes(model[off:off + n]), (off, n)  # short at the hole
        with pytest.raises(pyfuse3.FUSEError) as ei:
            memfile.read(k, node, a + 121 * P, 10)
        assert ei.value.errno == errno.EIO
        assert memfile.write(k, node, a + 3 * P + 4000, b"across the page end") == 19
        model[3 * P + 4000:3 * P + 4019] = b"across the page end"
        assert memfile.write(k, node, a + 5 * P + 1, b"in one page") == 11
        model[5 * P + 1:5 * P + 12] = b"in one page"
        big = pat(99, 7 * P + 3)
        assert memfile.write(k, node, a + 20 * P - 1, big) == len(big)
        model[20 * P - 1:27 * P + 2] = big
        assert memfile.read(k, node, a, 120 * P) == bytes(model)
        assert p.read(a, 120 * P) == bytes(model)
        assert c.read(a + 10 * P, 5) == b"child"
        p.mprotect(a, P, PROT_READ)
        for data in (b"x", b"x" * (2 * P)):
            with pytest.raises(pyfuse3.FUSEError) as ei:
                memfile.write(k, node, a + 100, data)
            assert ei.value.errno == errno.EACCES
            with pytest.raises(pyfuse3.FUSEError) as ei:
                memfile.write(k, node, a + 119 * P + 100, data + b"x" * P)  # runs into the hole
            assert ei.value.errno == errno.EIO
        assert memfile.read(k, node, a, 120 * P) == bytes(model)
        k.check()
        p.exit()
        for call in (lambda: memfile.read(k, node, a, 1), lambda: memfile.write(k, node, a + P, b"x")):
            with pytest.raises(pyfuse3.FUSEError) as ei:
                call()
            assert ei.value.errno == errno.ESRCH


def test_host_window_memory_as_the_callers_buffer(window_kernel):
    """A caller's buffer that is itself userfaultfd-paged host memory (a
    window): readinto fills it and write copies from it exactly, at
    unaligned offsets, over pages the window has not touched yet."""
    k = window_kernel
    w = k.window(32 * P)
    try:
        p = k.spawn()
        a = p.mmap(32 * P)
        src = pat(3, 32 * P)
        p.write(a, src)
        view = memoryview(w)
        try:
            assert p.readinto(a + 123, view[7:7 + 20 * P]) == 20 * P
            assert bytes(view[7:7 + 20 * P]) == src[123:123 + 20 * P]
            assert bytes(view[:7]) == bytes(7)
            assert bytes(view[7 + 20 * P:]) == bytes(12 * P - 7)
            w[25 * P:30 * P] = pat(4, 5 * P)
            p.write(a + 2 * P - 9, view[25 * P:30 * P])
            p.write(a + 31 * P + 1, view[25 * P:25 * P + 100])  # one page: the general path
            want = bytearray(src)
            want[2 * P - 9:7 * P - 9] = pat(4, 5 * P)
            want[31 * P + 1:31 * P + 101] = pat(4, 100)
            assert p.read(a, 32 * P) == bytes(want)
        finally:
            view.release()
    finally:
        w.close()
    k.check()


@pytest.mark.parametrize("fmt", ["B", "b", "c", "H", "i", "Q", "d"])
def test_readinto_and_write_with_typed_buffers(kernel, fmt):
    """Buffers of any item format are copied as raw bytes, both ways and
    across pages; read-only and non-contiguous buffers are TypeError and
    change nothing; zero-length calls return 0 and touch nothing."""
    k = kernel
    p = k.spawn()
    a = p.mmap(8 * P)
    src = pat(17, 5 * P + 16)
    arr = array.array(fmt if fmt != "c" else "b", src[:len(src) // array.array(fmt if fmt != "c" else "b").itemsize
                                                     * array.array(fmt if fmt != "c" else "b").itemsize])
    raw = arr.tobytes()
    p.write(a + P - 5, arr)
    assert p.read(a + P - 5, len(raw)) == raw
    out = array.array(arr.typecode, bytes(len(raw)))
    assert p.readinto(a + P - 5, out) == len(raw)
    assert out.tobytes() == raw
    mv = memoryview(bytearray(len(raw) + 8)).cast(fmt if fmt != "c" else "B")
    assert p.readinto(a + P - 5, mv[:len(raw) // mv.itemsize]) == len(raw) // mv.itemsize * mv.itemsize
    before = p.read(a, 8 * P)
    with pytest.raises(TypeError):
        p.readinto(a, raw)  # read-only
    with pytest.raises(TypeError):
        p.readinto(a, memoryview(bytearray(64))[::2])
    with pytest.raises(TypeError):
        p.write(a, memoryview(bytearray(64))[::2])
    assert p.readinto(a + 9 * P, bytearray()) == 0  # unmapped, but nothing to read
    p.write(a + 9 * P, bytearray())
    assert p.read(a, 8 * P) == before
    k.check()


def test_window_buffer_larger_than_the_window_budget(window_kernel):
    """readinto into, and write from, a host-window buffer several times its
    engine's budget (it evicts its own pages while the C copy runs with the
    kernel lock held), from and to a process whose pages page too: every
    byte arrives."""
    k = window_kernel
    n = 3000  # 12 MiB through an 8 MiB limit, a window budget of far less
    w = k.window(n * P)
    try:
        p = k.spawn()
        a = p.mmap(n * P)
        chunk = 256
        for i in range(0, n, chunk):
            p.write(a + i * P, bytes([i // chunk + 1]) * (min(chunk, n - i) * P))
        view = memoryview(w)
        try:
            for i in range(0, n, chunk):
                end = min(i + chunk, n) * P - (5 if i + chunk >= n else 0)
                p.readinto(a + i * P + 5, view[i * P:end])
            data = p.read(a, n * P)
            assert bytes(view[:n * P - 5]) == data[5:]
            p.write(a + 3, view[:n * P - 3])
            assert p.read(a + 3, n * P - 3) == bytes(view[:n * P - 3])
        finally:
            view.release()
        assert w.stats()["selfevictions"] + w.stats()["evictions"] > 0
    finally:
        w.close()
    k.check()


# -- 8. bugs this file found: regressions -------------------------------------------------------


def test_regression_overlapping_window_buffer_within_one_page(window_kernel):
    """Shift bytes inside a window-backed MAP_SHARED mapping by writing from a
    view of the same window 64 bytes lower (one page, one copy), and read
    into an overlapping view: the page must hold the bytes the source held
    when the call was made.  Found on d99e5fe: rv_memcpy, a forward loop of
    64-byte moves, smeared the first 64 bytes over the rest when dst > src
    (glibc memcpy, used before, copied it right on this host)."""
    k = window_kernel
    o = k.create_object(4 * P)
    w = k.window(4 * P, obj=o)
    try:
        p = k.spawn()
        a = p.mmap(4 * P, flags=MAP_SHARED, obj=o)
        view = memoryview(w)
        try:
            pattern = bytes(range(256)) * (4 * P // 256)
            problems = []
            w[:] = pattern
            want = bytearray(pattern)
            want[64:P] = pattern[:P - 64]
            p.write(a + 64, view[:P - 64])
            if bytes(w[:]) != bytes(want):
                problems.append(f"write: bytes 128..136 are {bytes(w[128:136])!r}, want {bytes(want[128:136])!r}")
            w[:] = pattern
            want = bytearray(pattern)
            want[P + 64:2 * P] = pattern[P:2 * P - 64]
            p.readinto(a + P, view[P + 64:2 * P])
            if bytes(w[:]) != bytes(want):
                problems.append("readinto: smeared")
            assert problems == []
        finally:
            view.release()
    finally:
        w.close()


def _partial_after_lock_drop(op: str) -> tuple[BaseException | None, bytes, bytes]:
    """A 4-page write (or readinto) whose first page is on swap: the copy
    drops the lock for the page-in; meanwhile the last two pages are
    mprotected.  Returns (exception, bytes of the range, buffer)."""
    with rumpvm.Kernel(memlimit="1M", swap="16M") as k:
        p = k.spawn()
        a = p.mmap(200 * P)
        p.write(a, b"o" * (200 * P))
        p.madvise(a, 4 * P, MADV_DONTNEED)  # these go first
        force_pageout(k, "300K", "1M")
        with k.lock:
            if (a >> 12) in p.vmspace.pmap.rd:
                pytest.skip("precondition: the first page should be on swap")
        buf = bytearray(b"\xee" * (4 * P))
        if op == "write":
            _, exc = paused_call(k, 2, lambda: p.write(a, bytearray(b"N" * (4 * P))),
                                 lambda: p.mprotect(a + 2 * P, 2 * P, PROT_READ))
        else:
            _, exc = paused_call(k, 2, lambda: p.readinto(a, buf),
                                 lambda: p.mprotect(a + 2 * P, 2 * P, PROT_NONE))
        p.mprotect(a, 4 * P, RW)
        got = p.read(a, 4 * P)
        k.check()
        return exc, got, bytes(buf)


@pytest.mark.parametrize("op", ["write", "readinto"])
def test_segfault_after_a_lock_drop_reports_the_bytes_copied(op):
    """A multi-page write/readinto whose first page is on swap sleeps for the
    page-in; meanwhile the last two pages of its range are mprotected.  It
    then faults part-way: SegmentationFault with `.written` = the bytes
    copied from the start (README: a short write, as process_vm_writev);
    the new bytes exactly there, the old ones after (for readinto: the
    buffer past .written untouched).  Found as a contract gap on d99e5fe
    (README then said that a SegmentationFault copies nothing)."""
    exc, got, buf = _partial_after_lock_drop(op)
    assert isinstance(exc, SegmentationFault), repr(exc)  # the racing mprotect won
    w = getattr(exc, "written", None)
    assert w is not None and 0 < w < 4 * P and w % P == 0, w
    if op == "write":
        assert got == b"N" * w + b"o" * (4 * P - w)
    else:
        assert got == b"o" * (4 * P)
        assert buf == b"o" * w + b"\xee" * (4 * P - w)


@pytest.mark.parametrize("meanwhile", ["exec", "unshare"])
def test_regression_unshare_sleeping_while_the_vmspace_changes(meanwhile):
    """p and its vfork sibling q share a vmspace with wired memory (a fork
    must copy it eagerly, so unshare needs frames).  Memory is full (no
    swap): p.unshare() in a thread sleeps waiting for frames.  Meanwhile p
    execs (or unshares, after munlock, needing no frames).  Then memory is
    freed and the first unshare completes.  q must still see its memory and
    the kernel must check() clean.  Found on d99e5fe (random multi-thread
    search, then this deterministic sequence): unshare freed the `old`
    vmspace it had looked up before sleeping, so q's address space was
    destroyed under it (q's reads SEGV_MAPERR, refcnt -1), and with two
    unshares a whole vmspace leaked (check(): stale mappings)."""
    k = rumpvm.Kernel(memlimit="512K", oom_timeout=0)
    try:
        p = k.spawn()
        a = p.mmap(8 * P)
        p.write(a, b"shared data")
        p.mlock(a, 4 * P)
        q = p.fork(shared=True)
        h = k.spawn()
        b = h.mmap(512 * P)
        with pytest.raises(OutOfMemory):
            for i in range(512):
                h.write(b + i * P, b"h")  # no swap: memory is full
        k.oom_timeout = 60
        before = k.stats()["oomwaits"]
        errs: list[BaseException] = []

        def first() -> None:
            try:
                p.unshare()
            except BaseException as e:  # noqa: BLE001
                errs.append(e)

        ts = run_threads([first])
        _wait_for_memory_waiter(k, before)
        if meanwhile == "exec":
            p.exec()
        else:
            p.munlock(a, 4 * P)
            p.unshare()
        h.exit()  # memory again: the sleeping unshare goes on
        join_all(ts)
        assert errs == [], errs
        assert q.read(a, 11) == b"shared data"
        k.check()
        q.exit()
        p.exit()
        k.check()
    finally:
        k.close()


def test_regression_pagein_after_a_fruitless_direct_reclaim():
    """q and p map one object MAP_SHARED (p with MADV_SEQUENTIAL: its page-ins
    read ahead, so they call make_room first); the object's pages are on
    swap; the only pageable memory is v's dirty pages and free memory sits
    just above freemin.  p reads page 1: its direct reclaim starts writing
    v's pages and is stopped at the lock after the write; meanwhile v exits
    (so the scan frees nothing), q reads page 1 in and writes NEW! to it.
    Afterwards both must read NEW! and check() must be clean.  Found on
    d99e5fe (random multi-thread search, then this sequence): make_room
    returned False after a scan that dropped the lock but freed nothing, so
    pagein went on with its stale lookup and gave the object a second page
    read from the old slot; the first stayed mapped in q, orphaned (p read
    OLD!, q NEW!; check(): "translation maps X, chain holds Y", "frames in
    use != owned")."""
    with rumpvm.Kernel(memlimit="1M", swap="16M") as k:
        o = k.create_object(8 * P)
        q = k.spawn()
        aq = q.mmap(8 * P, flags=MAP_SHARED, obj=o)
        q.write(aq, b"OLD!" * (2 * P))
        p = k.spawn()
        ap = p.mmap(8 * P, flags=MAP_SHARED, obj=o)
        p.madvise(ap, 8 * P, MADV_SEQUENTIAL)
        v = k.spawn()
        av = v.mmap(400 * P)
        v.write(av, b"v" * (150 * P))
        q.madvise(aq, 8 * P, MADV_DONTNEED)  # the object's pages go first
        force_pageout(k, "300K", "1M")
        info = k.object_info(o.id)
        if info.resident or not info.swapped:
            pytest.skip(f"precondition: the object's pages should be on swap ({info})")
        k.pagedaemon.set_knobs(freemin=4, freetarg=17)
        assert k.pagedaemon.wait_idle()
        limit = k.memlimit
        assert limit is not None

        def avail() -> int:  # frames a fault may still take (physmem.avail_pages, from public stats)
            return (limit - k.stats()["resident"]) // P - 8

        i = 150
        while avail() > 12:
            v.write(av + i * P, b"d")  # dirty pages: the only pageable memory
            i += 1
        assert k.pagedaemon.wait_idle()

        def meanwhile() -> None:  # p's direct reclaim is stopped after its swap write
            v.exit()
            assert q.read(aq + P, 4) == b"OLD!"
            q.write(aq + P, b"NEW!")

        _, exc = paused_call(k, 3, lambda: p.read(ap + P, 4), meanwhile)
        assert exc is None, repr(exc)
        assert q.read(aq + P, 4) == b"NEW!"
        assert p.read(ap + P, 4) == b"NEW!", "p and q see different bytes in one MAP_SHARED page"
        k.check()


def test_regression_interrupted_long_write_never_exposes_a_recycled_frame():
    """Found on b0bba5f (fault-ahead then left unzeroed the pages a write
    would overwrite whole).  A process writes a secret and exits (its frames are recycled); a
    second process's long write into fresh memory is interrupted (a
    KeyboardInterrupt, as from Ctrl-C, raised deterministically by a trace
    function just before the first copy).  Every page of the range must
    then hold zeros or the new bytes, never the secret."""
    with rumpvm.Kernel() as k:
        s = k.spawn("secret")
        b = s.mmap(64 * P)
        s.write(b, b"SECRET!!" * (64 * P // 8))
        s.exit()
        p = k.spawn("victim")
        a = p.mmap(64 * P)
        def tracer(frame, event, arg):
            if event == "call" and frame.f_code is hypercall.copy_in.__code__:
                raise KeyboardInterrupt  # Ctrl-C right before the copy of the run
            return None

        sys.settrace(tracer)
        try:
            with pytest.raises(KeyboardInterrupt):
                p.write(a + 100, b"x" * (32 * P))
        finally:
            sys.settrace(None)
        data = p.read(a, 64 * P)
        for i in range(64):
            page = data[i * P:(i + 1) * P]
            assert b"SECRET" not in page, f"page {i} holds the exited process's bytes"
        k.check()
