"""Memory limits: RUMP_MEMLIMIT at boot, Kernel(memlimit=), bad limits,
the swap file path, live limit changes, and the wired (mlock) limit.

Issue 3, "The limit", "Bad input" and "Out of memory" (mlock).  Sizes are
small so the whole file runs in a few seconds.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest
from pages import fill, pattern, settle

import rumpvm
from rumpvm import PAGE_SIZE, VMError
from rumpvm.physmem import MIN_LIMIT

K, M, G = 1 << 10, 1 << 20, 1 << 30


def verify(p, addr: int, npages: int, tag: int) -> None:
    for i in range(npages):
        got = p.read(addr + i * PAGE_SIZE, PAGE_SIZE)
        assert got == pattern(tag, i), f"page {i} of tag {tag} came back wrong"


def pagedaemon_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "pagedaemon" and t.is_alive())


def states_minimum(msg: str) -> bool:
    """Does an error message say what the minimum limit is?"""
    return any(s in msg for s in (str(MIN_LIMIT), f"{MIN_LIMIT // K}K", f"{MIN_LIMIT // K}k",
                                  f"{MIN_LIMIT // K} K", f"{MIN_LIMIT // K} KiB"))


# -- RUMP_MEMLIMIT at boot -------------------------------------------------------------


@pytest.mark.parametrize("text, expect", [
    (str(32 * M), 32 * M),
    ("33554432", 32 * M),
    ("16384k", 16 * M),
    ("16384K", 16 * M),
    ("24m", 24 * M),
    ("24M", 24 * M),
    ("1g", 1 * G),
    ("2G", 2 * G),
    (str(MIN_LIMIT), MIN_LIMIT),
])
def test_rump_memlimit_env_parsed_at_boot(monkeypatch, text, expect):
    monkeypatch.setenv("RUMP_MEMLIMIT", text)
    with rumpvm.Kernel() as k:
        assert k.memlimit == expect
        s = k.stats()
        assert s["memlimit"] == expect
        assert s["npages"] == expect // PAGE_SIZE


def test_no_env_means_unlimited(monkeypatch):
    monkeypatch.delenv("RUMP_MEMLIMIT", raising=False)
    with rumpvm.Kernel() as k:
        assert k.memlimit is None
        assert k.stats()["memlimit"] == 0
        # Unlimited really is unlimited: more than any small limit fits.
        p = k.spawn()
        a = p.mmap(4 * M)
        fill(p, a, 4 * M // PAGE_SIZE, 1)
        assert k.stats()["pageouts"] == 0


def test_kernel_memlimit_overrides_env(monkeypatch):
    monkeypatch.setenv("RUMP_MEMLIMIT", "64M")
    with rumpvm.Kernel(memlimit="8m") as k:
        assert k.memlimit == 8 * M
    with rumpvm.Kernel(memlimit=12 * M) as k:
        assert k.memlimit == 12 * M
    # An explicit limit means the environment is not consulted at all.
    monkeypatch.setenv("RUMP_MEMLIMIT", "garbage")
    with rumpvm.Kernel(memlimit="8M") as k:
        assert k.memlimit == 8 * M


def test_env_limit_is_enforced(monkeypatch):
    """The env limit is not just reported: resident memory stays under it."""
    monkeypatch.setenv("RUMP_MEMLIMIT", "1m")
    with rumpvm.Kernel(oom_timeout=0.3) as k:
        assert k.memlimit == 1 * M
        p = k.spawn()
        a = p.mmap(2 * M)
        with pytest.raises(rumpvm.OutOfMemory):
            fill(p, a, 2 * M // PAGE_SIZE, 7)  # no swap: cannot fit
        assert k.physmem.resident <= 1 * M
        k.check()


# -- bad limits ------------------------------------------------------------------------

UNPARSEABLE = ["abc", "12x", "1.5M", "M", "12 MB extra", "0x100000", "--1M"]
NUMERIC_BAD = ["0", "0M", "-1", "-5M", "-1g", str(MIN_LIMIT - 1), str(PAGE_SIZE), "4K"]


@pytest.mark.parametrize("text", UNPARSEABLE + NUMERIC_BAD)
def test_bad_env_limit_einval_states_minimum(monkeypatch, text):
    monkeypatch.setenv("RUMP_MEMLIMIT", text)
    before = pagedaemon_threads()
    with pytest.raises(VMError) as ei:
        rumpvm.Kernel()
    assert ei.value.errno == errno.EINVAL
    assert states_minimum(str(ei.value)), f"message does not state the minimum: {ei.value}"
    assert pagedaemon_threads() == before


@pytest.mark.parametrize("value", [0, -1, -(4 * M), MIN_LIMIT - 1, MIN_LIMIT - PAGE_SIZE, 1])
def test_bad_int_limit_einval_at_boot(value):
    with pytest.raises(VMError) as ei:
        rumpvm.Kernel(memlimit=value)
    assert ei.value.errno == errno.EINVAL
    assert states_minimum(str(ei.value)), f"message does not state the minimum: {ei.value}"


def test_minimum_limit_is_exact():
    """The minimum the message names is the real one: it boots, one less does not."""
    with rumpvm.Kernel(memlimit=MIN_LIMIT) as k:
        assert k.memlimit == MIN_LIMIT
    with pytest.raises(VMError) as ei:
        rumpvm.Kernel(memlimit=MIN_LIMIT - 1)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize("value", [*UNPARSEABLE, *NUMERIC_BAD, 0, -1, MIN_LIMIT - 1])
def test_bad_limit_at_runtime_keeps_old(value):
    with rumpvm.Kernel(memlimit="8M") as k:
        changes = k.stats()["limitchanges"]
        with pytest.raises(VMError) as ei:
            k.memlimit = value
        assert ei.value.errno == errno.EINVAL
        if not isinstance(value, str) or value not in UNPARSEABLE:
            assert states_minimum(str(ei.value)), f"message does not state the minimum: {ei.value}"
        assert k.memlimit == 8 * M
        s = k.stats()
        assert s["memlimit"] == 8 * M
        assert s["limitchanges"] == changes
        # And the old limit is still enforced, not just reported.
        k.memlimit = "16M"
        assert k.memlimit == 16 * M
        k.check()


def test_runtime_limit_accepts_suffixes_and_unlimited():
    with rumpvm.Kernel(memlimit="8M") as k:
        for text, expect in (("12m", 12 * M), ("16384k", 16 * M), ("1G", G), (str(10 * M), 10 * M)):
            k.memlimit = text
            assert k.memlimit == expect
            assert k.stats()["memlimit"] == expect
        k.memlimit = "unlimited"
        assert k.memlimit is None
        assert k.stats()["memlimit"] == 0
        assert k.stats()["limitchanges"] == 5


# -- the swap file -----------------------------------------------------------------------


def test_unwritable_swapfile_oserror_at_boot(tmp_path):
    blocker = tmp_path / "plainfile"
    blocker.write_bytes(b"x")
    before = pagedaemon_threads()
    for bad in (str(blocker / "swap"),                       # parent is a file: ENOTDIR
                str(tmp_path / "no" / "such" / "dir" / "swap")):  # ENOENT
        with pytest.raises(OSError) as ei:
            rumpvm.Kernel(memlimit="8M", swap="4M", swapfile=bad)
        assert ei.value.errno in (errno.ENOTDIR, errno.ENOENT, errno.EACCES, errno.EROFS)
        assert not os.path.exists(bad)
    assert pagedaemon_threads() == before  # failed before anything started


def test_swapfile_that_is_a_directory_oserror(tmp_path):
    with pytest.raises(OSError):
        rumpvm.Kernel(memlimit="8M", swap="4M", swapfile=str(tmp_path))


# -- live limit changes ------------------------------------------------------------------


def test_lowering_limit_pages_out_down_to_it():
    with rumpvm.Kernel(memlimit="16M", swap="32M", policy="clock") as k:
        p = k.spawn()
        n = 10 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 3)
        assert k.physmem.resident > 6 * M
        assert k.stats()["pageouts"] == 0
        k.memlimit = "4M"
        # The setter returns only once resident memory is under the new limit.
        assert k.physmem.resident <= 4 * M
        s = k.stats()
        assert s["memlimit"] == 4 * M
        assert s["pageouts"] > 0
        assert s["swpginuse"] > 0
        assert s["limitchanges"] == 1
        k.check()
        verify(p, a, n, 3)  # everything comes back from swap
        assert k.physmem.resident <= 4 * M
        assert k.stats()["pageins"] > 0
        k.check()


def test_raising_limit_lets_work_continue():
    with rumpvm.Kernel(memlimit="2M", oom_timeout=0.5) as k:  # no swap
        p = k.spawn()
        n = 3 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        with pytest.raises(rumpvm.OutOfMemory):
            fill(p, a, n, 5)
        assert k.physmem.resident <= 2 * M
        k.memlimit = "8M"
        fill(p, a, n, 5)  # now it fits
        verify(p, a, n, 5)
        assert k.physmem.resident <= 8 * M
        k.check()


def test_lower_then_raise_with_swap_keeps_data():
    with rumpvm.Kernel(memlimit="12M", swap="32M") as k:
        p = k.spawn()
        n = 8 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        fill(p, a, n, 9)
        k.memlimit = "3M"
        assert k.physmem.resident <= 3 * M
        b = p.mmap(2 * M)
        fill(p, b, 2 * M // PAGE_SIZE, 10)  # work continues under the low limit
        assert k.physmem.resident <= 3 * M
        k.memlimit = "32M"
        verify(p, a, n, 9)
        verify(p, b, 2 * M // PAGE_SIZE, 10)
        settle(k)  # a pageout begun under the 3M limit may still be finishing
        pageouts = k.stats()["pageouts"]
        c = p.mmap(8 * M)
        fill(p, c, 8 * M // PAGE_SIZE, 11)
        # With room again, new work does not page anything out.
        assert k.stats()["pageouts"] == pageouts
        k.check()


# -- the wired limit -----------------------------------------------------------------------


def _wired_entries(p) -> list:
    return [e for e in p.maps() if e.wired]


def test_mlock_beyond_wired_limit_enomem_nothing_wired():
    with rumpvm.Kernel(memlimit="16M", swap="16M", wired_limit="1M") as k:
        p = k.spawn()
        a = p.mmap(2 * M)
        wired0 = k.stats()["wired"]
        with pytest.raises(VMError) as ei:
            p.mlock(a, 2 * M)
        assert ei.value.errno == errno.ENOMEM
        assert _wired_entries(p) == []
        assert k.stats()["wired"] == wired0
        assert p.status().vm_lck == 0
        # Within the limit it works, and the limit is cumulative.
        p.mlock(a, 1 * M)
        assert k.stats()["wired"] == wired0 + M // PAGE_SIZE
        with pytest.raises(VMError) as ei:
            p.mlock(a + 1 * M, PAGE_SIZE)
        assert ei.value.errno == errno.ENOMEM
        assert k.stats()["wired"] == wired0 + M // PAGE_SIZE
        assert sum(e.end - e.start for e in _wired_entries(p)) == 1 * M
        assert p.status().vm_lck == 1 * M
        # Re-locking what is already locked costs nothing.
        p.mlock(a, 1 * M)
        p.munlock(a, 1 * M)
        assert _wired_entries(p) == []
        assert k.stats()["wired"] == wired0
        p.mlock(a + 1 * M, 1 * M)
        k.check()


def test_default_wired_limit_is_a_fraction_of_the_limit():
    with rumpvm.Kernel(memlimit="12M", swap="16M") as k:
        wl = k.wired_limit
        assert wl is not None and 0 < wl < 12 * M
        p = k.spawn()
        a = p.mmap(12 * M)
        wired0 = k.stats()["wired"]
        with pytest.raises(VMError) as ei:
            p.mlock(a, (wl // PAGE_SIZE + 1) * PAGE_SIZE)
        assert ei.value.errno == errno.ENOMEM
        assert _wired_entries(p) == []
        assert k.stats()["wired"] == wired0
        p.mlock(a, (wl // PAGE_SIZE) * PAGE_SIZE)
        assert k.stats()["wired"] == wired0 + wl // PAGE_SIZE
        k.check()


def test_wired_pages_never_paged_out():
    with rumpvm.Kernel(memlimit="6M", swap="32M", wired_limit="1M") as k:
        p = k.spawn()
        q = k.spawn()  # before counting: its u-area is wired kernel memory
        nw = 1 * M // PAGE_SIZE
        w = p.mmap(nw * PAGE_SIZE)
        fill(p, w, nw, 21)
        p.mlock(w, nw * PAGE_SIZE)
        wired = k.stats()["wired"]
        (entry,) = [e for e in p.maps() if e.start == w]
        obj = k.objtab[entry.object]
        # Pressure: 4x the limit of other data through a second process too.
        n = 12 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        b = q.mmap(n * PAGE_SIZE)
        fill(p, a, n, 22)
        fill(q, b, n, 23)
        verify(p, a, n, 22)
        settle(k)
        s = k.stats()
        assert s["pageouts"] > 0, "no pressure was created"
        assert s["wired"] == wired
        assert all(i in obj.pages for i in range(nw)), "a wired page left memory"
        assert not any(i in obj.swap for i in range(nw)), "a wired page was written to swap"
        pageins = k.stats()["pageins"]
        verify(p, w, nw, 21)
        assert k.stats()["pageins"] == pageins  # reading wired memory needs no page-in
        assert k.physmem.resident <= 6 * M
        k.check()
        p.munlock(w, nw * PAGE_SIZE)
        assert k.stats()["wired"] == wired - nw
        k.check()
