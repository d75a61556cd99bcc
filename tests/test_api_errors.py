"""Bad input to the public process API: the errno table of DESIGN.md, row by row.

Every failing call is checked twice: for its exact errno / exception, and for
"a failed call changes nothing" (the maps and every mapped byte are compared
before and after).  The success-side semantics that callers rely on when they
place mappings (MAP_FIXED replacement, first fit at or after a hint, page
rounding of lengths) are here too, since they decide which calls fail.
"""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rumpvm
from rumpvm import (
    INHERIT_COPY,
    INHERIT_NONE,
    INHERIT_SHARE,
    MADV_NORMAL,
    MADV_WILLNEED,
    MAP_ANON,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_MAX,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from rumpvm.constants import PROT_ALL, VM_MAXUSER_ADDRESS, VM_MIN_ADDRESS

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANON
# A place far from anything the kernel maps by itself (checked in `p`).
BASE = 0x2_0000_0000


# -- helpers -----------------------------------------------------------------


@pytest.fixture
def p(kernel):
    proc = kernel.spawn(name="errors")
    for e in proc.maps():
        assert not (e.start < BASE + 4096 * P and BASE < e.end), "test window is taken"
    return proc


def pattern(n: int, seed: int = 1) -> bytes:
    unit = bytes((seed * 7 + i * 13) & 0xFF for i in range(256))
    return (unit * (n // 256 + 1))[:n]


def state(p):
    """What a user can observe of an address space: entries and bytes."""
    maps = p.maps()
    data = []
    for e in maps:
        if e.name == "" and e.end - e.start <= 64 * P:
            data.append((e.start, p.peek(e.start, e.end - e.start)))
    return maps, data


def fixed(p, addr, npages, prot=RW, flags=ANON, **kw):
    a = p.mmap(npages * P, prot=prot, flags=flags | MAP_FIXED, addr=addr, **kw)
    assert a == addr
    return a


def expect_errno(p, err, fn, *args, **kwargs):
    """fn(*args) must raise VMError(err) and leave maps and bytes unchanged."""
    before = state(p)
    with pytest.raises(rumpvm.VMError) as ei:
        fn(*args, **kwargs)
    assert ei.value.errno == err, f"{fn.__name__}{args}{kwargs}: {ei.value!r}"
    assert state(p) == before, f"failed {fn.__name__}{args} changed the address space"
    return ei.value


def expect_segv(p, fn, *args, addr, access, code):
    before = state(p)
    with pytest.raises(rumpvm.SegmentationFault) as ei:
        fn(*args)
    e = ei.value
    assert isinstance(e, rumpvm.VMError) and isinstance(e, OSError)
    assert e.errno == errno.EFAULT
    assert (e.addr, e.access, e.code) == (addr, access, code), repr(e)
    assert state(p) == before, f"failed {fn.__name__} changed the address space"
    return e


def entry_at(p, addr):
    for e in p.maps():
        if e.start <= addr < e.end:
            return e
    return None


def spans(p):
    return [(e.start, e.end) for e in p.maps() if BASE <= e.start < BASE + 4096 * P]


# -- EINVAL --------------------------------------------------------------------


@pytest.mark.parametrize(
    "length,kw",
    [
        (0, {}),
        (-P, {}),
        (-1, {}),
        (P, {"prot": 0x8}),
        (P, {"prot": -1}),
        (P, {"prot": PROT_ALL | 0x100}),
        (P, {"flags": ANON | 0x4}),
        (P, {"flags": ANON | 0x10000}),
        (P, {"flags": -1}),
        (P, {"flags": MAP_SHARED | MAP_PRIVATE | MAP_ANON}),
        (P, {"flags": ANON | MAP_FIXED, "addr": BASE + 1}),
        (P, {"flags": ANON | MAP_FIXED, "addr": BASE + P // 2}),
        (P, {"flags": ANON | MAP_FIXED, "addr": 0}),
        (P, {"flags": ANON | MAP_FIXED, "addr": VM_MAXUSER_ADDRESS}),
        (2 * P, {"flags": ANON | MAP_FIXED, "addr": VM_MAXUSER_ADDRESS - P}),
        (P, {"flags": ANON | MAP_FIXED, "addr": (1 << 64) - P}),
        (1 << 64, {"flags": ANON | MAP_FIXED, "addr": BASE}),
        ((1 << 64) - BASE + P, {"flags": ANON | MAP_FIXED, "addr": BASE}),
        (P, {"flags": ANON | MAP_FIXED, "addr": -P}),
    ],
)
def test_mmap_einval(p, length, kw):
    fixed(p, BASE, 4)
    p.write(BASE, b"keep")
    expect_errno(p, errno.EINVAL, p.mmap, length, **kw)


@pytest.mark.parametrize("offset", [1, P // 2, -P])
def test_mmap_object_bad_offset_einval(kernel, p, offset):
    o = kernel.create_object(4 * P)
    expect_errno(p, errno.EINVAL, p.mmap, P, flags=MAP_SHARED, obj=o, offset=offset)


@pytest.mark.parametrize("call", ["munmap", "mprotect", "minherit", "madvise", "mlock", "munlock", "msync"])
@pytest.mark.parametrize(
    "addr_off,length",
    [
        (1, P),  # unaligned address
        (P // 2, P),
        (0, 0),  # zero length
        (0, -P),  # negative length
        (0, -1),
    ],
)
def test_range_einval(p, call, addr_off, length):
    """Bad ranges inside a mapped area, so ENOMEM cannot be the answer."""
    fixed(p, BASE, 4)
    p.write(BASE, pattern(4 * P))
    args = {"mprotect": (PROT_READ,), "minherit": (INHERIT_NONE,), "madvise": (MADV_WILLNEED,)}
    expect_errno(p, errno.EINVAL, getattr(p, call), BASE + addr_off, length, *args.get(call, ()))


@pytest.mark.parametrize("call", ["munmap", "mprotect", "minherit", "madvise", "mlock", "munlock", "msync"])
@pytest.mark.parametrize(
    "addr,length",
    [
        (0, P),  # below VM_MIN_ADDRESS
        (VM_MAXUSER_ADDRESS, P),  # at the top
        (VM_MAXUSER_ADDRESS - P, 2 * P),  # crosses the top
        ((1 << 64) - P, 2 * P),  # wraps a 64-bit address
        (BASE, 1 << 64),  # addr + length overflows
        (-P, P),
    ],
)
def test_range_outside_user_space_einval(p, call, addr, length):
    fixed(p, BASE, 1)
    args = {"mprotect": (PROT_READ,), "minherit": (INHERIT_NONE,), "madvise": (MADV_NORMAL,)}
    expect_errno(p, errno.EINVAL, getattr(p, call), addr, length, *args.get(call, ()))


@pytest.mark.parametrize("prot", [0x8, 0x10, -1, PROT_ALL | 0x80])
def test_mprotect_bad_prot_einval(p, prot):
    fixed(p, BASE, 2)
    expect_errno(p, errno.EINVAL, p.mprotect, BASE, 2 * P, prot)


@pytest.mark.parametrize("inh", [3, 4, -1, 100])
def test_minherit_bad_value_einval(p, inh):
    fixed(p, BASE, 2)
    expect_errno(p, errno.EINVAL, p.minherit, BASE, 2 * P, inh)


@pytest.mark.parametrize("advice", [10, 11, -1, 1000])
def test_madvise_bad_advice_einval(p, advice):
    fixed(p, BASE, 2)
    expect_errno(p, errno.EINVAL, p.madvise, BASE, 2 * P, advice)


# -- ENOMEM: not fully mapped --------------------------------------------------


@pytest.mark.parametrize("call", ["mprotect", "madvise", "mlock", "munlock", "msync"])
@pytest.mark.parametrize(
    "start_page,npages",
    [
        (10, 1),  # wholly unmapped
        (10, 3),
        (0, 3),  # mapped, mapped, hole
        (1, 3),  # mapped, hole, mapped
        (2, 1),  # just the hole
        (2, 3),  # hole, mapped, mapped
    ],
)
def test_not_fully_mapped_enomem(p, call, start_page, npages):
    # pages 0,1 mapped; 2 hole; 3,4 mapped
    fixed(p, BASE, 2)
    fixed(p, BASE + 3 * P, 2)
    p.write(BASE, b"a" * 2 * P)
    p.write(BASE + 3 * P, b"b" * 2 * P)
    args = {"mprotect": (PROT_READ,), "madvise": (MADV_WILLNEED,)}
    expect_errno(p, errno.ENOMEM, getattr(p, call), BASE + start_page * P, npages * P, *args.get(call, ()))


def test_mprotect_with_hole_leaves_mapped_part_writable(p):
    fixed(p, BASE, 1)
    expect_errno(p, errno.ENOMEM, p.mprotect, BASE, 2 * P, PROT_READ)
    p.write(BASE, b"still writable")
    assert p.read(BASE, 14) == b"still writable"


def test_munmap_unmapped_range_is_ok(p):
    before = state(p)
    p.munmap(BASE, 8 * P)
    assert state(p) == before


def test_munmap_partially_mapped(p):
    fixed(p, BASE + P, 2)
    fixed(p, BASE + 5 * P, 2)
    p.munmap(BASE, 6 * P)  # hole, mapped x2, hole x2, first page of the second
    assert spans(p) == [(BASE + 6 * P, BASE + 7 * P)]
    expect_segv(p, p.read, BASE + P, 1, addr=BASE + P, access=PROT_READ, code="SEGV_MAPERR")


def test_minherit_skips_holes(p):
    """minherit is not in the ENOMEM row: like vm_map_inherit it skips holes."""
    fixed(p, BASE, 1)
    fixed(p, BASE + 2 * P, 1)
    p.minherit(BASE, 3 * P, INHERIT_NONE)
    assert entry_at(p, BASE).inheritance == INHERIT_NONE
    assert entry_at(p, BASE + 2 * P).inheritance == INHERIT_NONE
    assert entry_at(p, BASE + P) is None


# -- EACCES ----------------------------------------------------------------------


def test_mmap_max_prot_is_all_so_mprotect_can_raise(p):
    """mmap takes no max_prot: every mmap'd entry may later get any protection."""
    fixed(p, BASE, 1, prot=PROT_NONE)
    assert entry_at(p, BASE).max_prot == PROT_ALL
    p.mprotect(BASE, P, PROT_ALL)
    assert entry_at(p, BASE).prot == PROT_ALL


def test_prot_max_sets_max_prot(p):
    fixed(p, BASE, 1, prot=PROT_READ | PROT_MAX(RW))
    e = entry_at(p, BASE)
    assert (e.prot, e.max_prot) == (PROT_READ, RW)
    p.mprotect(BASE, P, RW)
    p.write(BASE, b"ok")


@pytest.mark.parametrize("prot", [PROT_ALL, PROT_EXEC, PROT_READ | PROT_EXEC])
def test_mprotect_beyond_max_prot_eacces(p, prot):
    fixed(p, BASE, 2, prot=PROT_READ | PROT_MAX(RW))
    expect_errno(p, errno.EACCES, p.mprotect, BASE, 2 * P, prot)


def test_mprotect_eacces_on_a_later_entry_changes_nothing(p):
    """Check first, then apply: the first entry must keep its protection."""
    fixed(p, BASE, 1)  # max rwx
    fixed(p, BASE + P, 1, prot=PROT_READ | PROT_MAX(PROT_READ))
    p.write(BASE, b"first")
    expect_errno(p, errno.EACCES, p.mprotect, BASE, 2 * P, RW)
    expect_errno(p, errno.EACCES, p.mprotect, BASE, 2 * P, PROT_NONE | PROT_MAX(RW))
    assert entry_at(p, BASE).prot == RW and entry_at(p, BASE).max_prot == PROT_ALL
    p.write(BASE, b"still")


def test_mprotect_prot_max_only_lowers(p):
    fixed(p, BASE, 1)
    p.mprotect(BASE, P, PROT_READ | PROT_MAX(RW))
    e = entry_at(p, BASE)
    assert (e.prot, e.max_prot) == (PROT_READ, RW)
    p.mprotect(BASE, P, RW)  # within the new max
    expect_errno(p, errno.EACCES, p.mprotect, BASE, P, PROT_READ | PROT_MAX(PROT_ALL))
    expect_errno(p, errno.EACCES, p.mprotect, BASE, P, PROT_ALL)


@pytest.mark.parametrize("prot", [RW | PROT_MAX(PROT_READ), PROT_EXEC | PROT_MAX(RW),
                                  PROT_READ | PROT_MAX(0x8), PROT_READ | (1 << 24)])
def test_prot_beyond_its_own_max_or_bad_max_is_einval(p, prot):
    fixed(p, BASE, 1)
    expect_errno(p, errno.EINVAL, p.mmap, P, prot=prot)
    expect_errno(p, errno.EINVAL, p.mprotect, BASE, P, prot)


def test_max_prot_survives_fork(p):
    fixed(p, BASE, 1, prot=PROT_READ | PROT_MAX(PROT_READ))
    c = p.fork()
    assert entry_at(c, BASE).max_prot == PROT_READ
    expect_errno(c, errno.EACCES, c.mprotect, BASE, P, RW)


# -- SegmentationFault --------------------------------------------------------------


def test_read_write_unmapped(p):
    for addr in (BASE, BASE + 123, 0, VM_MIN_ADDRESS):
        expect_segv(p, p.read, addr, 10, addr=addr, access=PROT_READ, code="SEGV_MAPERR")
        expect_segv(p, p.write, addr, b"x" * 10, addr=addr, access=PROT_WRITE, code="SEGV_MAPERR")


def test_write_read_only_accerr(p):
    fixed(p, BASE, 2)
    p.write(BASE, b"before")
    p.mprotect(BASE, 2 * P, PROT_READ)
    expect_segv(p, p.write, BASE + 5, b"after", addr=BASE + 5, access=PROT_WRITE, code="SEGV_ACCERR")
    assert p.read(BASE, 6) == b"before"


def test_read_prot_none_accerr(p):
    fixed(p, BASE, 1, prot=PROT_NONE)
    expect_segv(p, p.read, BASE + 7, 3, addr=BASE + 7, access=PROT_READ, code="SEGV_ACCERR")
    expect_segv(p, p.write, BASE, b"z", addr=BASE, access=PROT_WRITE, code="SEGV_ACCERR")


def test_fresh_prot_read_mapping_reads_zeros_and_refuses_writes(p):
    fixed(p, BASE, 1, prot=PROT_READ)
    assert p.read(BASE, P) == bytes(P)
    expect_segv(p, p.write, BASE, b"z", addr=BASE, access=PROT_WRITE, code="SEGV_ACCERR")


def test_write_spanning_mapped_and_unmapped_writes_nothing(p):
    fixed(p, BASE, 1)
    data = pattern(200)
    expect_segv(p, p.write, BASE + P - 100, data, addr=BASE + P, access=PROT_WRITE, code="SEGV_MAPERR")
    assert p.read(BASE, P) == bytes(P)


def test_write_spanning_into_read_only_page_writes_nothing(p):
    fixed(p, BASE, 3)
    p.write(BASE, b"\x11" * 3 * P)
    p.mprotect(BASE + 2 * P, P, PROT_READ)
    # the first bad page is the third one: the fault names its first byte
    expect_segv(
        p, p.write, BASE + 10, b"\x22" * (3 * P - 20),
        addr=BASE + 2 * P, access=PROT_WRITE, code="SEGV_ACCERR",
    )
    assert p.read(BASE, 3 * P) == b"\x11" * 3 * P


def test_read_spanning_into_hole_names_first_unmapped_address(p):
    fixed(p, BASE, 2)
    fixed(p, BASE + 3 * P, 1)
    expect_segv(p, p.read, BASE + 5, 4 * P - 10, addr=BASE + 2 * P, access=PROT_READ, code="SEGV_MAPERR")


def test_access_fault_reports_first_bad_page_in_address_order(p):
    # page 0 RW, page 1 read-only, page 2 unmapped: a write over all three
    # faults on page 1 (ACCERR), not on page 2.
    fixed(p, BASE, 2)
    p.mprotect(BASE + P, P, PROT_READ)
    expect_segv(p, p.write, BASE, b"q" * 3 * P, addr=BASE + P, access=PROT_WRITE, code="SEGV_ACCERR")


def test_write_only_needs_write_permission_per_page(p):
    fixed(p, BASE, 2, prot=PROT_READ | PROT_EXEC)
    expect_segv(p, p.write, BASE + P + 1, b"w", addr=BASE + P + 1, access=PROT_WRITE, code="SEGV_ACCERR")
    assert p.read(BASE, 2 * P) == bytes(2 * P)


# -- TypeError for non-int arguments --------------------------------------------------


@pytest.mark.parametrize(
    "call,args,kwargs",
    [
        ("mmap", ("4096",), {}),
        ("mmap", (4096.0,), {}),
        ("mmap", (None,), {}),
        ("mmap", (P,), {"prot": "3"}),
        ("mmap", (P,), {"prot": None}),
        ("mmap", (P,), {"flags": 2.0}),
        ("mmap", (P,), {"flags": None}),
        ("mmap", (P,), {"addr": "0x200000000", "flags": ANON | MAP_FIXED}),
        ("mmap", (P,), {"addr": float(BASE), "flags": ANON | MAP_FIXED}),
        ("mmap", (P,), {"offset": "0"}),
        ("munmap", (BASE, "4096"), {}),
        ("munmap", (float(BASE), P), {}),
        ("munmap", (None, P), {}),
        ("mprotect", (BASE, P, "1"), {}),
        ("mprotect", (BASE, 4096.0, PROT_READ), {}),
        ("mprotect", (BASE, P, None), {}),
        ("minherit", (BASE, P, None), {}),
        ("minherit", (BASE, P, 1.0), {}),
        ("madvise", (BASE, None, MADV_NORMAL), {}),
        ("madvise", (BASE, P, "willneed"), {}),
        ("mlock", (str(BASE), P), {}),
        ("munlock", (BASE, 4096.0), {}),
        ("msync", (BASE, None), {}),
        ("read", (BASE, "10"), {}),
        ("read", (BASE, 10.0), {}),
        ("read", (None, 10), {}),
        ("read", (float(BASE), 10), {}),
        ("write", (BASE, "text"), {}),
        ("write", (BASE, None), {}),
        ("write", (BASE, 12), {}),
        ("write", (str(BASE), b"x"), {}),
    ],
)
def test_non_int_arguments_raise_typeerror(p, call, args, kwargs):
    fixed(p, BASE, 2)
    p.write(BASE, b"keep")
    before = state(p)
    with pytest.raises(TypeError):
        getattr(p, call)(*args, **kwargs)
    assert state(p) == before


def test_create_object_bad_size(kernel):
    for bad in (4096.0, None, b"4096"):
        with pytest.raises(TypeError):
            kernel.create_object(bad)
    for bad in (0, -P):
        with pytest.raises(rumpvm.VMError) as ei:
            kernel.create_object(bad)
        assert ei.value.errno == errno.EINVAL


def test_mmap_object_beyond_its_end_fails(kernel, p):
    o = kernel.create_object(2 * P)
    before = state(p)
    with pytest.raises(rumpvm.VMError) as ei:
        p.mmap(3 * P, flags=MAP_SHARED, obj=o)
    assert ei.value.errno in (errno.EINVAL, errno.ENXIO)
    assert state(p) == before


def test_calls_on_exited_process_raise_vmerror(kernel):
    p = kernel.spawn(name="gone")
    a = p.mmap(P)
    p.exit()
    assert not p.alive
    for call, args in [("mmap", (P,)), ("read", (a, 1)), ("write", (a, b"x")),
                       ("munmap", (a, P)), ("mprotect", (a, P, PROT_READ)), ("fork", ())]:
        with pytest.raises(rumpvm.VMError):
            getattr(p, call)(*args)


# -- only VMError / TypeError escape ------------------------------------------------------

_junk = st.sampled_from(["4096", 4096.0, None, b"\x00", [], object(), 1.5, float("nan")])
_addrs = st.one_of(
    st.sampled_from([0, 1, P, BASE, BASE + 1, BASE + P, BASE + 5 * P, VM_MAXUSER_ADDRESS - P,
                     VM_MAXUSER_ADDRESS, (1 << 64) - P, 1 << 64, 1 << 80, -P, -1]),
    st.integers(0, 8).map(lambda i: BASE + i * P),
    _junk,
)
_lens = st.one_of(
    st.sampled_from([0, -1, -P, 1, P, P + 1, 3 * P, 1 << 63, 1 << 64, 1 << 100]),
    st.integers(1, 6).map(lambda i: i * P),
    _junk,
)
_small_lens = st.one_of(st.integers(-2, 3 * P), _junk)  # for calls that touch pages
_ints = st.one_of(st.integers(-3, 0x20), st.sampled_from([1 << 64, -(1 << 63), MAP_FIXED | ANON]), _junk)

_calls = st.one_of(
    st.tuples(st.just("mmap"), st.tuples(_lens),
              st.fixed_dictionaries({}, optional={"prot": _ints, "flags": _ints, "addr": _addrs,
                                                  "offset": _lens})),
    st.tuples(st.just("munmap"), st.tuples(_addrs, _lens), st.just({})),
    st.tuples(st.just("mprotect"), st.tuples(_addrs, _lens, _ints), st.just({})),
    st.tuples(st.just("minherit"), st.tuples(_addrs, _lens, _ints), st.just({})),
    st.tuples(st.just("madvise"), st.tuples(_addrs, _small_lens, _ints.filter(lambda v: v != MADV_WILLNEED)),
              st.just({})),
    st.tuples(st.just("mlock"), st.tuples(_addrs, _small_lens), st.just({})),
    st.tuples(st.just("munlock"), st.tuples(_addrs, _small_lens), st.just({})),
    st.tuples(st.just("msync"), st.tuples(_addrs, _small_lens), st.just({})),
    st.tuples(st.just("read"), st.tuples(_addrs, _small_lens), st.just({})),
    st.tuples(st.just("write"), st.tuples(_addrs, st.one_of(st.binary(max_size=2 * P + 3), _junk)), st.just({})),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(_calls, min_size=1, max_size=12))
def test_only_vmerror_or_typeerror_escape(kernel, calls):
    p = kernel.spawn(name="fuzz")
    try:
        fixed(p, BASE, 4)
        for name, args, kwargs in calls:
            try:
                getattr(p, name)(*args, **kwargs)
            except (rumpvm.VMError, TypeError):
                pass
        kernel.check()
    finally:
        p.exit()


# -- placement: MAP_FIXED and hints ------------------------------------------------------------


def test_map_fixed_replaces_existing_mappings(p):
    fixed(p, BASE, 4)
    p.write(BASE, b"\xaa" * 4 * P)
    fixed(p, BASE + P, 2, prot=PROT_READ)
    assert p.read(BASE, P) == b"\xaa" * P
    assert p.read(BASE + P, 2 * P) == bytes(2 * P)  # a new, zero-filled mapping
    assert p.read(BASE + 3 * P, P) == b"\xaa" * P
    assert entry_at(p, BASE + P).prot == PROT_READ
    assert entry_at(p, BASE).prot == RW and entry_at(p, BASE + 3 * P).prot == RW
    expect_segv(p, p.write, BASE + P, b"x", addr=BASE + P, access=PROT_WRITE, code="SEGV_ACCERR")
    assert spans(p)[0][0] == BASE and spans(p)[-1][1] == BASE + 4 * P


def test_map_fixed_over_holes_and_several_entries(p):
    fixed(p, BASE, 1)
    fixed(p, BASE + 2 * P, 1, prot=PROT_READ)
    fixed(p, BASE + 4 * P, 1)
    p.write(BASE + 4 * P, b"tail")
    fixed(p, BASE, 4)  # covers 0..3: two old entries and two holes
    assert spans(p) == [(BASE, BASE + 4 * P), (BASE + 4 * P, BASE + 5 * P)] or \
        spans(p) == [(BASE, BASE + 5 * P)]
    assert p.read(BASE, 4 * P) == bytes(4 * P)
    assert p.read(BASE + 4 * P, 4) == b"tail"


def test_map_fixed_shared_over_private(kernel, p):
    o = kernel.create_object(2 * P)
    fixed(p, BASE, 2)
    p.write(BASE, b"private")
    fixed(p, BASE, 2, flags=MAP_SHARED, obj=o)
    e = entry_at(p, BASE)
    assert e.shared and e.inheritance == INHERIT_SHARE
    assert p.read(BASE, 7) == bytes(7)


def test_hint_free_is_used(p):
    assert p.mmap(2 * P, addr=BASE) == BASE


def test_hint_first_fit_at_or_after(p):
    fixed(p, BASE, 2)  # 0,1
    fixed(p, BASE + 3 * P, 2)  # 3,4 ; hole at 2 ; free from 5
    assert p.mmap(2 * P, addr=BASE) == BASE + 5 * P  # the 1-page hole is too small
    assert p.mmap(P, addr=BASE) == BASE + 2 * P  # now the hole fits
    assert p.mmap(P, addr=BASE + P) == BASE + 7 * P
    assert p.mmap(P, addr=BASE + 20 * P) == BASE + 20 * P
    # a hint never makes the kernel go below it, even if there is space there
    assert p.mmap(P, addr=BASE + 10 * P) == BASE + 10 * P


def test_hint_does_not_replace(p):
    fixed(p, BASE, 1)
    p.write(BASE, b"mine")
    a = p.mmap(P, addr=BASE)
    assert a != BASE
    assert p.read(BASE, 4) == b"mine"


def test_no_hint_places_in_user_space_without_overlap(p):
    got = []
    for n in (1, 3, 1, 16):
        a = p.mmap(n * P)
        assert a % P == 0 and VM_MIN_ADDRESS <= a and a + n * P <= VM_MAXUSER_ADDRESS
        got.append((a, a + n * P))
    got.sort()
    for (_, e1), (s2, _) in itertools.pairwise(got):
        assert e1 <= s2


def test_lengths_are_rounded_up_to_pages(p):
    a = p.mmap(P + 1, addr=BASE)
    e = entry_at(p, a)
    assert (e.start, e.end) == (BASE, BASE + 2 * P)
    p.write(a + 2 * P - 1, b"!")  # the rounded-up tail is usable
    p.mprotect(a, 1, PROT_READ)  # one byte protects the whole first page
    assert entry_at(p, a).prot == PROT_READ and entry_at(p, a + P).prot == RW
    p.munmap(a, 1)
    assert entry_at(p, a) is None and entry_at(p, a + P) is not None


def test_mmap_defaults(p):
    a = p.mmap(3 * P)
    e = entry_at(p, a)
    assert (e.start, e.end) == (a, a + 3 * P)
    assert e.prot == RW and e.max_prot == PROT_ALL
    assert e.inheritance == INHERIT_COPY and not e.shared and not e.wired
    assert p.read(a, 3 * P) == bytes(3 * P)


def test_mmap_shared_object_entry(kernel, p):
    o = kernel.create_object(4 * P)
    a = p.mmap(2 * P, flags=MAP_SHARED, obj=o, offset=2 * P)
    e = entry_at(p, a)
    assert e.shared and e.inheritance == INHERIT_SHARE
    oid = o if isinstance(o, int) else o.id
    assert e.object == oid and e.offset == 2 * P


def test_mlock_munlock_wired_flag(p):
    fixed(p, BASE, 3)
    p.mlock(BASE + P, P)
    assert entry_at(p, BASE + P).wired
    assert not entry_at(p, BASE).wired and not entry_at(p, BASE + 2 * P).wired
    p.munlock(BASE + P, P)
    assert not entry_at(p, BASE + P).wired


# -- the edges of the user address space ------------------------------------------------------


def test_fixed_mappings_at_both_ends_of_user_space(p):
    lo = fixed(p, VM_MIN_ADDRESS, 1)
    hi = fixed(p, VM_MAXUSER_ADDRESS - P, 1)
    p.write(lo, b"low")
    p.write(hi + P - 4, b"high")
    assert p.read(lo, 3) == b"low" and p.read(hi + P - 4, 4) == b"high"
    expect_segv(p, p.read, hi + P - 2, 4, addr=VM_MAXUSER_ADDRESS, access=PROT_READ, code="SEGV_MAPERR")


def test_no_space_is_enomem(p):
    whole = VM_MAXUSER_ADDRESS - VM_MIN_ADDRESS
    expect_errno(p, errno.ENOMEM, p.mmap, whole + P)
    a = p.mmap(whole)  # the whole user space, lazily
    assert a == VM_MIN_ADDRESS
    p.write(VM_MAXUSER_ADDRESS - 1, b"!")
    expect_errno(p, errno.ENOMEM, p.mmap, P)
    expect_errno(p, errno.ENOMEM, p.mmap, P, addr=BASE)
    p.munmap(BASE, P)
    assert p.mmap(P) == BASE  # the only hole
    p.munmap(VM_MIN_ADDRESS, whole)
    assert p.maps() == []


@pytest.mark.parametrize("call", ["read", "peek"])
def test_negative_length_read_einval(p, call):
    fixed(p, BASE, 1)
    expect_errno(p, errno.EINVAL, getattr(p, call), BASE, -1)


# -- data arguments and results ---------------------------------------------------------------


def test_write_accepts_bytes_like_and_copies_it(p):
    fixed(p, BASE, 2)
    buf = bytearray(b"abcd")
    p.write(BASE, buf)
    p.write(BASE + P - 2, memoryview(b"xyzw"))  # across a page boundary
    buf[:] = b"ZZZZ"
    assert p.read(BASE, 4) == b"abcd"
    assert p.read(BASE + P - 2, 4) == b"xyzw"


def test_read_returns_a_snapshot(p):
    fixed(p, BASE, 1)
    p.write(BASE, b"1234")
    r, q = p.read(BASE, 4), p.peek(BASE, 4)
    p.write(BASE, b"5678")
    assert isinstance(r, bytes) and r == b"1234" and bytes(q) == b"1234"


# -- limits -------------------------------------------------------------------------------------


def test_mlock_over_the_wired_limit_is_enomem_and_wires_nothing():
    with rumpvm.Kernel(memlimit="1M", swap="4M") as k:
        p = k.spawn(name="wired")
        limit_pages = k.wired_limit // P
        fixed(p, BASE, limit_pages + 4)
        p.mlock(BASE, 2 * P)
        before = state(p)
        # the rest of the range would go over the limit: nothing more is wired
        expect_errno(p, errno.ENOMEM, p.mlock, BASE, (limit_pages + 4) * P)
        assert state(p) == before
        assert [e.wired for e in p.maps()] == [True, False]
        # re-locking what is already wired does not count twice
        p.mlock(BASE, 2 * P)
        p.munlock(BASE, 2 * P)
        p.mlock(BASE + 4 * P, limit_pages * P)  # exactly the limit
        expect_errno(p, errno.ENOMEM, p.mlock, BASE, P)
        k.check()


def test_errors_survive_pickling():
    """Experiment workers send errors across processes: every VMError must
    come back with its errno, message and fields."""
    import pickle

    oom = rumpvm.OutOfMemory("no frames")
    oom.written = 8192
    segv = rumpvm.SegmentationFault(0x7000, rumpvm.PROT_WRITE, "SEGV_ACCERR")
    for e in (oom, segv, rumpvm.VMError(22, "bad")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.errno == e.errno and str(back) == str(e)
    assert pickle.loads(pickle.dumps(oom)).written == 8192
    back = pickle.loads(pickle.dumps(segv))
    assert (back.addr, back.access, back.code) == (0x7000, rumpvm.PROT_WRITE, "SEGV_ACCERR")
