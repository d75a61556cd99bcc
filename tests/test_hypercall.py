"""The hypercall layer as real host calls: memory, parameters, swap I/O, helpers."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hypercall as hc
from hypercall import PAGE_SIZE


@pytest.fixture
def arena():
    """Eight zeroed pages, unmapped at the end."""
    a = hc.anonmmap(8 * PAGE_SIZE)
    yield a
    hc.unmap(a)


def page_addr(a, i):
    return a.addr + i * PAGE_SIZE


def fill(a, i, byte):
    a.buf[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] = bytes([byte]) * PAGE_SIZE


def test_page_size_is_the_hosts():
    assert PAGE_SIZE == os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("alignbit", [0, 12, 16, 21])
def test_anonmmap_aligned_and_zeroed(alignbit):
    size = 4 * PAGE_SIZE
    a = hc.anonmmap(size, alignbit)
    try:
        assert a.addr % (1 << alignbit) == 0
        assert a.size == size and len(a.buf) == size
        assert bytes(a.buf) == bytes(size)
        a.buf[:5] = b"hello"
        a.buf[-1:] = b"!"
        out = bytearray(6)
        hc.copy_out(out, 0, [a.addr], 0, 5)
        hc.copy_out(out, 5, [a.addr + size - PAGE_SIZE], PAGE_SIZE - 1, 1)
        assert out == b"hello!"
    finally:
        hc.unmap(a)


def test_unmap_twice_is_harmless():
    a = hc.anonmmap(PAGE_SIZE)
    hc.unmap(a)
    assert not a.mapped
    hc.unmap(a)
    assert not a.mapped


@pytest.mark.parametrize("size", [0, -PAGE_SIZE, 100, PAGE_SIZE + 1])
def test_anonmmap_bad_size_is_einval(size):
    with pytest.raises(OSError) as e:
        hc.anonmmap(size)
    assert e.value.errno == errno.EINVAL


def test_malloc_free():
    b = hc.malloc(100, 64)
    assert b.addr % 64 == 0 and b.size == 100
    hc.copy_in(b"x" * 100, 0, [b.addr], 0, 100)
    out = bytearray(100)
    hc.copy_out(out, 0, [b.addr], 0, 100)
    assert out == b"x" * 100
    hc.free(b)
    hc.free(b)  # a second free is a no-op


@pytest.mark.parametrize("size", [0, -1])
def test_malloc_bad_size_is_einval(size):
    with pytest.raises(OSError) as e:
        hc.malloc(size)
    assert e.value.errno == errno.EINVAL


def test_getparam(monkeypatch):
    monkeypatch.setenv("RUMPVM_TEST_PARAM", "64M")
    assert hc.getparam("RUMPVM_TEST_PARAM") == "64M"
    monkeypatch.delenv("RUMPVM_TEST_PARAM")
    assert hc.getparam("RUMPVM_TEST_PARAM") is None


def test_swapfile_temp_is_unlinked_at_once():
    """Only the descriptor keeps a temporary swap file: nothing to leave
    behind, whatever happens to the process."""
    sw = hc.SwapFile(None, 16 * PAGE_SIZE)
    try:
        assert sw.temporary and sw.path.endswith(" (deleted)")
        name = sw.path.removesuffix(" (deleted)")
        assert not os.path.exists(name)
        assert os.fstat(sw.fd).st_size == 16 * PAGE_SIZE and os.fstat(sw.fd).st_nlink == 0
        assert os.fstat(sw.fd).st_mode & 0o777 == 0o600
    finally:
        sw.close()
    sw.close()  # closing twice is harmless


def test_swapfile_named_path_is_kept(tmp_path):
    path = tmp_path / "swap"
    sw = hc.SwapFile(str(path), 4 * PAGE_SIZE)
    sw.close()
    assert path.exists() and path.stat().st_size == 4 * PAGE_SIZE


def test_write_read_pages_roundtrip(arena):
    for i in range(8):
        fill(arena, i, 0x10 + i)
    src = [page_addr(arena, i) for i in (5, 0, 3, 7)]  # gathered out of order
    sw = hc.SwapFile(None, 32 * PAGE_SIZE)
    try:
        off = 3 * PAGE_SIZE
        sw.write_pages(off, src)
        assert sw.read(off, 4 * PAGE_SIZE) == b"".join(bytes([b]) * PAGE_SIZE for b in (0x15, 0x10, 0x13, 0x17))
        dst = hc.anonmmap(4 * PAGE_SIZE)
        try:
            sw.read_pages(off, [page_addr(dst, i) for i in (3, 2, 1, 0)])  # scattered back
            back, want = bytearray(4 * PAGE_SIZE), bytearray(4 * PAGE_SIZE)
            hc.copy_out(back, 0, [page_addr(dst, i) for i in (3, 2, 1, 0)], 0, 4 * PAGE_SIZE)
            hc.copy_out(want, 0, src, 0, 4 * PAGE_SIZE)
            assert back == want
        finally:
            hc.unmap(dst)
    finally:
        sw.close()


def test_read_past_end_fails(arena):
    sw = hc.SwapFile(None, 4 * PAGE_SIZE)
    try:
        with pytest.raises(OSError) as e:
            sw.read_pages(4 * PAGE_SIZE, [page_addr(arena, 0)])
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError):
            sw.read_pages(3 * PAGE_SIZE, [page_addr(arena, 0), page_addr(arena, 1)])  # short
        with pytest.raises(OSError):
            sw.read(4 * PAGE_SIZE, 16)
    finally:
        sw.close()


def test_copy_out_and_in_across_pages(arena):
    out = bytearray(b"?" * 10)
    hc.copy_out(out, 3, [], 0, 0)  # nothing to copy: nothing touched
    hc.copy_in(b"", 0, [], 0, 0)
    assert out == b"?" * 10
    # 6 bytes written across the end of page 1 into page 6 (a page run need not be contiguous)
    hc.copy_in(b"xxabcdef", 2, [page_addr(arena, 1), page_addr(arena, 6)], PAGE_SIZE - 2, 6)
    assert bytes(arena.buf[2 * PAGE_SIZE - 2:2 * PAGE_SIZE]) == b"ab"
    assert bytes(arena.buf[6 * PAGE_SIZE:6 * PAGE_SIZE + 5]) == b"cdef\0"
    # read back across a zero page (address 0): ab, a page of zeros, cdef
    back = bytearray(b"?" * (PAGE_SIZE + 8))
    hc.copy_out(back, 1, [page_addr(arena, 1), 0, page_addr(arena, 6)], PAGE_SIZE - 2, PAGE_SIZE + 6)
    assert back[:3] == b"?ab" and back[3:PAGE_SIZE + 3] == bytes(PAGE_SIZE)
    assert back[PAGE_SIZE + 3:] == b"cdef?"


@settings(max_examples=200, deadline=None)
@given(order=st.lists(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 6, 7]), min_size=1, max_size=8),
       off=st.integers(0, PAGE_SIZE - 1), cut=st.integers(0, PAGE_SIZE - 1))
def test_copy_runs_agree_with_a_page_by_page_copy(order, off, cut):
    """Runs of adjacent pages (and of zero pages) are copied in one piece:
    any mix of adjacent, repeated, backwards and zero pages (-1), any start
    offset and any length copies exactly what a page-by-page copy would."""
    a = hc.anonmmap(8 * PAGE_SIZE)
    try:
        a.buf[:] = bytes(range(251)) * (8 * PAGE_SIZE // 251) + bytes(8 * PAGE_SIZE % 251)
        pages = [0 if i < 0 else page_addr(a, i) for i in order]
        length = max(1, len(order) * PAGE_SIZE - off - cut)
        want = b"".join(bytes(PAGE_SIZE) if i < 0 else bytes(a.buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
                        for i in order)[off:off + length]
        out = bytearray(b"?" * (length + 2))
        hc.copy_out(out, 1, pages, off, length)
        assert out[0] == ord("?") and out[-1] == ord("?") and bytes(out[1:-1]) == want
        if -1 in order or len(set(order)) < len(order):
            return  # copy_in needs distinct real pages
        src = bytes((7 * i + 3) % 256 for i in range(length))
        expect = bytearray(a.buf)
        for n, i in enumerate(order):  # the model: page by page
            lo = max(0, n * PAGE_SIZE - off)
            hi = min(length, (n + 1) * PAGE_SIZE - off)
            if lo < hi:
                start = i * PAGE_SIZE + (off if n == 0 else 0)
                expect[start:start + hi - lo] = src[lo:hi]
        hc.copy_in(src, 0, pages, off, length)
        assert bytes(a.buf) == bytes(expect)
    finally:
        hc.unmap(a)


def test_page_zero_and_copy(arena):
    fill(arena, 0, 0xAB)
    hc.page_copy(page_addr(arena, 1), page_addr(arena, 0))
    assert bytes(arena.buf[PAGE_SIZE : 2 * PAGE_SIZE]) == b"\xab" * PAGE_SIZE
    hc.page_zero(page_addr(arena, 0))
    assert bytes(arena.buf[:PAGE_SIZE]) == bytes(PAGE_SIZE)


def test_checksum(arena):
    fill(arena, 0, 0x5A)
    fill(arena, 1, 0x5A)
    a, b = page_addr(arena, 0), page_addr(arena, 1)
    assert hc.checksum(a) == hc.checksum(b) == hc.checksum_buffer(b"\x5a" * PAGE_SIZE)
    arena.buf[PAGE_SIZE + 1234] ^= 0x01  # flip one bit of one byte
    assert hc.checksum(a) != hc.checksum(b)
    assert hc.checksum(page_addr(arena, 2)) == hc.checksum_buffer(bytes(PAGE_SIZE))
    assert hc.checksum(page_addr(arena, 2)) != hc.checksum(a)


@settings(max_examples=300, deadline=None)
@given(seed=st.binary(min_size=8, max_size=64), nwords=st.integers(1, 512), data=st.data())
def test_checksum_sees_every_word_and_its_place(seed: bytes, nwords: int, data: st.DataObject) -> None:
    """The swap checksum catches what a torn or misplaced write looks like:
    any one bit flipped in any word (the four lanes and the tail words past
    the last group of four alike), and two unequal words trading places
    (within a lane or across lanes)."""
    words = bytearray((seed * (8 * nwords // len(seed) + 1))[:8 * nwords])
    base = hc.checksum_buffer(words)
    i = data.draw(st.integers(0, nwords - 1), label="word")
    bit = data.draw(st.integers(0, 63), label="bit")
    flipped = bytearray(words)
    flipped[8 * i + bit // 8] ^= 1 << (bit % 8)
    assert hc.checksum_buffer(flipped) != base
    j = data.draw(st.integers(0, nwords - 1), label="other word")
    wi, wj = words[8 * i:8 * i + 8], words[8 * j:8 * j + 8]
    if wi != wj:
        swapped = bytearray(words)
        swapped[8 * i:8 * i + 8], swapped[8 * j:8 * j + 8] = wj, wi
        assert hc.checksum_buffer(swapped) != base
