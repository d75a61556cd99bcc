"""The fast paths of #9, for what a user can observe: fault-ahead (a long
write faults once per run), sequential read-ahead with the pages it read
mapped at once, and the soft fast path of a first write (same semantics as
the full fault: write-only entries, shared objects, copy-on-write)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType

import pytest

import hypercall
from rumpvm import MAP_ANON, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE, Kernel, SegmentationFault, fault, uio


def _kernel() -> Kernel:
    return Kernel(memlimit="unlimited")


def test_a_long_write_into_fresh_memory_faults_once() -> None:
    """Fault-ahead: the first page of a run faults, the rest of the run is
    zero-filled and mapped with it (no fault per page)."""
    with _kernel() as k:
        p = k.spawn()
        a = p.mmap(256 * PAGE_SIZE)
        before = k.stats()
        p.write(a + 100, b"\x01" * (256 * PAGE_SIZE - 200))
        s = k.stats()
        assert s["faults"] - before["faults"] == 1
        assert s["zerofills"] - before["zerofills"] == 256
        assert p.read(a, 100) == bytes(100) and p.read(a + 100, 4) == b"\x01" * 4
        p.read(a, 256 * PAGE_SIZE)
        assert k.stats()["faults"] == s["faults"]  # everything is mapped
        k.check()


@pytest.mark.parametrize("head, tail", [(0, 0), (100, 0), (0, 100), (100, 100), (PAGE_SIZE - 1, 1)])
def test_a_long_write_never_shows_what_a_recycled_frame_held(head: int, tail: int) -> None:
    """The pages fault-ahead gives a long write, whole or partly written,
    read the written bytes and zeros around them, never the bytes of the
    process that used the frame before (frames are recycled as soon as
    they are freed)."""
    with _kernel() as k:
        old = k.spawn()
        b = old.mmap(64 * PAGE_SIZE)
        old.write(b, b"\xee" * (64 * PAGE_SIZE))
        old.exit()  # its frames go back to the free list, still holding 0xee
        p = k.spawn()
        a = p.mmap(64 * PAGE_SIZE)
        n = 64 * PAGE_SIZE - head - tail
        faults = k.stats()["faults"]
        p.write(a + head, b"\x01" * n)
        assert k.stats()["faults"] == faults + 1  # one fault, the rest fault-ahead
        assert p.read(a, 64 * PAGE_SIZE) == bytes(head) + b"\x01" * n + bytes(tail)
        k.check()


def _interrupt_after_fault_ahead(nth: int) -> Callable[[FrameType, str, object], object]:
    """A trace function that raises KeyboardInterrupt (Ctrl-C) at the
    `nth` step of the write path after fault-ahead returns: a line of
    `_runs` or `vm_write`, or the call of the copy."""
    steps = {uio._runs.__code__, uio.vm_write.__code__, hypercall.copy_in.__code__}
    state = {"armed": False, "seen": 0}

    def tracer(frame: FrameType, event: str, arg: object) -> object:
        code = frame.f_code
        if event == "return" and code is fault.fault_ahead.__code__:
            state["armed"] = True
        elif state["armed"] and code in steps and event in ("line", "call"):
            state["seen"] += 1
            if state["seen"] == nth:
                raise KeyboardInterrupt
        return tracer

    return tracer


@pytest.mark.parametrize("nth", range(1, 470, 12))  # about 460 steps to the end of the write
def test_a_write_interrupted_after_fault_ahead_never_shows_a_recycled_frame(nth: int) -> None:
    """Pages fault-ahead makes for a write that covers them whole are not
    zeroed (the copy overwrites them).  Ctrl-C at any step between
    fault-ahead and the end of the copy must still leave every page
    holding zeros or the written bytes, never what an exited process left
    in the recycled frames, and the bookkeeping whole."""
    with _kernel() as k:
        old = k.spawn()
        b = old.mmap(64 * PAGE_SIZE)
        old.write(b, b"SECRET!!" * (64 * PAGE_SIZE // 8))
        old.exit()
        p = k.spawn()
        a = p.mmap(64 * PAGE_SIZE)
        sys.settrace(_interrupt_after_fault_ahead(nth))
        try:
            p.write(a + 100, b"x" * (48 * PAGE_SIZE))
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        data = p.read(a, 64 * PAGE_SIZE)
        for i in range(64):
            assert b"SECRET" not in data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE], f"page {i} shows a recycled frame"
        assert set(data) <= {0, ord("x")}
        k.check()


def test_sequential_page_in_reads_ahead_and_maps_what_it_read() -> None:
    """Read-ahead grows while page-ins stay sequential, and the pages read
    ahead are mapped at once: reading back a range that went to swap takes
    far fewer faults than pages, and every byte comes back."""
    with Kernel(memlimit="4M", swap=32 << 20) as k:
        p = k.spawn()
        n = 4096  # 16 MiB through a 4 MiB limit
        a = p.mmap(n * PAGE_SIZE)
        for i in range(0, n, 256):
            p.write(a + i * PAGE_SIZE, bytes([i % 251 + 1]) * (256 * PAGE_SIZE))
        assert k.pagedaemon.wait_idle()
        before = k.stats()
        buf = bytearray(256 * PAGE_SIZE)
        for i in range(0, n, 256):
            p.readinto(a + i * PAGE_SIZE, buf)
            assert buf == bytes([i % 251 + 1]) * len(buf), f"pages {i}.."
        s = k.stats()
        pageins = s["pageins"] - before["pageins"]
        assert pageins >= n // 2  # most of it had gone to swap
        assert s["faults"] - before["faults"] < pageins // 4
        k.check()



def test_first_writes_keep_the_semantics_of_the_full_fault() -> None:
    with _kernel() as k:
        p = k.spawn()
        wo = p.mmap(2 * PAGE_SIZE, prot=PROT_WRITE)  # write-only: no translation, each write faults
        p.write(wo, b"w")
        p.write(wo + 1, b"x")
        with pytest.raises(SegmentationFault):
            p.read(wo, 1)
        o = k.create_object(4 * PAGE_SIZE)
        s1 = p.mmap(4 * PAGE_SIZE, flags=MAP_SHARED, obj=o)
        q = k.spawn()
        s2 = q.mmap(4 * PAGE_SIZE, flags=MAP_SHARED, obj=o)
        p.write(s1 + PAGE_SIZE, b"shared")  # first write: the page is the object's
        assert q.read(s2 + PAGE_SIZE, 6) == b"shared"
        a = p.mmap(4 * PAGE_SIZE)
        p.write(a, b"parent")
        c = p.fork()
        c.write(a + PAGE_SIZE, b"child")  # a fresh page of a copy-on-write entry
        c.write(a, b"CHILD!")
        assert p.read(a, 6) == b"parent" and p.read(a + PAGE_SIZE, 5) == bytes(5)
        assert c.read(a, 6) == b"CHILD!" and c.read(a + PAGE_SIZE, 5) == b"child"
        ro = p.mmap(PAGE_SIZE, prot=PROT_READ)
        with pytest.raises(SegmentationFault):
            p.write(ro, b"no")
        anon_shared = p.mmap(PAGE_SIZE, flags=MAP_SHARED | MAP_ANON)
        p.write(anon_shared, b"s")
        assert p.read(anon_shared, 1) == b"s"
        k.check()
