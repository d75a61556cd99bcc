"""The shadow model and the workers of `test_stress.py`, and its /vm reader.

Soundness without locks: every worker thread owns its processes (and their
forks) and the pages in them, so its model of them is exact.  Pages shared
with another thread are only those of the shared objects (one per thread,
from `k.create_object`): the owner alone writes them, one whole page per
call, each page stamped with its version; other threads map them read-only
and accept any version between the one committed before their read began
and the one pending when it ended.

Every page written with a stamp (`stamp`) carries a header naming what it
is (kind, thread, key, version) and a body derived from that header, so a
reader that knows nothing else (the /vm reader subprocesses) can tell a
torn, stale-at-another-address or corrupted page from a good one:

    kind PRIVATE: key = the virtual address (the same in every process of
                  a fork family: pages never move), thread = the owner of
                  the process (its name is s<thread>);
    kind OBJECT:  key = object id << 32 | page index, thread = the owner.

Scribble regions take unaligned writes of printable bytes (never the
stamp's first byte 0xff), so they never look stamped.

`python tests/stress_model.py reader ROOT OBJECTS LIMITS SEED` is the /vm
reader: it loops over proc/*/{status,maps,smaps,mem} and meminfo until its
stdin closes, then prints its counts as JSON.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import select
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PAGE = 4096
MAGIC = b"\xffRUMPSTR"
HDR = struct.Struct("<8sBBHIQQ")  # magic, kind, thread, 0, 0, key, version (32 bytes)
KIND_PRIVATE = 1
KIND_OBJECT = 2
ZERO = bytes(PAGE)


def stamp(kind: int, thread: int, key: int, version: int) -> bytes:
    """A whole page: header plus a body derived from it."""
    hdr = HDR.pack(MAGIC, kind, thread, 0, 0, key, version)
    return hdr + (hashlib.blake2b(hdr, digest_size=64).digest() * (PAGE // 64))[HDR.size:]


def obj_key(oid: int, pg: int) -> int:
    return oid << 32 | pg


def obj_page(obj: SharedObj, pg: int, version: int) -> bytes:
    return stamp(KIND_OBJECT, obj.owner, obj_key(obj.oid, pg), version) if version else ZERO


def check_stamped(page: bytes, va: int, thread: int | None, objects: dict[int, tuple[int, int]]) -> str | None:
    """What is wrong with a page read at `va` from a process of `thread`
    (None: unknown), or None.  Unstamped pages (zeros, scribbles, freed)
    pass: only a stamp can be checked without the model."""
    if page[:8] != MAGIC:
        return None
    _, kind, th, _, _, key, version = HDR.unpack_from(page)
    if page != stamp(kind, th, key, version):
        return f"page at {va:#x}: body does not match its header {(kind, th, key, version)} (torn or corrupt)"
    if kind == KIND_PRIVATE:
        if key != va:
            return f"page at {va:#x} is stamped for {key:#x} (a page at the wrong address)"
        if thread is not None and th != thread:
            return f"page at {va:#x} stamped by thread {th} in a process of thread {thread}"
    elif kind == KIND_OBJECT:
        oid, pg = key >> 32, key & 0xFFFFFFFF
        if oid not in objects or objects[oid] != (th, objects[oid][1]) or pg >= objects[oid][1]:
            return f"page at {va:#x}: object stamp {(oid, pg, th)} names no such object page"
    else:
        return f"page at {va:#x}: unknown stamp kind {kind}"
    if version <= 0:
        return f"page at {va:#x}: version {version}"
    return None


# -- the model -------------------------------------------------------------------------

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
RW = PROT_READ | PROT_WRITE
INHERIT_SHARE, INHERIT_COPY, INHERIT_NONE = 0, 1, 2
# Page kinds: private anonymous (stamped writes), private scribble
# (unaligned writes), MAP_SHARED|MAP_ANON (stamped), a shared object.
ANON, SCRIB, SHANON, OBJ = "anon", "scrib", "shanon", "obj"


class Cell:
    """The bytes of a page of one thread's memory: the candidates it may
    hold (one, except after MADV_FREE, which may or may not discard).
    Processes whose pages must see each other's writes share the Cell."""

    __slots__ = ("vals", "shared")

    def __init__(self, vals: list[bytes]) -> None:
        self.vals = vals
        self.shared = False  # ever reached by two processes (INHERIT_SHARE)


@dataclass
class SharedObj:
    handle: Any
    oid: int
    npages: int
    owner: int
    committed: list[int] = field(default_factory=list)  # version known written
    pending: list[int] = field(default_factory=list)  # version possibly written

    def __post_init__(self) -> None:
        self.committed = [0] * self.npages
        self.pending = [0] * self.npages


class PV:
    """One mapped page of a process."""

    __slots__ = ("kind", "cell", "obj", "pg", "prot", "inh", "locked")

    def __init__(self, kind: str, cell: Cell | None, obj: SharedObj | None, pg: int, prot: int, inh: int) -> None:
        self.kind = kind
        self.cell = cell
        self.obj = obj
        self.pg = pg
        self.prot = prot
        self.inh = inh
        self.locked = False


class ProcModel:
    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.pages: dict[int, PV] = {}
        self.asleep = False


class Failure(AssertionError):
    pass


class StopRun(Exception):
    """The run was stopped from outside (another thread failed)."""


# -- the worker ------------------------------------------------------------------------

class Worker:
    """One host thread: its processes, their model, and random operations.

    Every kernel call goes through `call`, which times it and publishes
    what is in flight for the watchdog.  OutOfMemory is counted and leaves
    the model unchanged (a failed call changed nothing), except a write's
    `.written` bytes; every other exception propagates and fails the run.
    """

    PAGE_CAP = 640  # model pages over all of this thread's processes
    PROC_CAP = 160  # model pages of one process
    MAX_PROCS = 4
    LOCK_CAP = 16  # mlocked pages at a time

    def __init__(self, t: int, k: Any, objs: list[SharedObj], seed: int) -> None:
        import rumpvm

        self.rv = rumpvm
        self.t = t
        self.k = k
        self.objs = objs
        self.mine = [o for o in objs if o.owner == t]
        self.rng = random.Random(seed)
        self.version = 0
        self.procs: list[ProcModel] = []
        self.counts: Counter[str] = Counter()
        self.inflight: tuple[str, float] | None = None
        self.calls = 0
        self.longest = (0.0, "")
        self.ops = 0
        self.ops_table = [
            (30, self.op_write), (8, self.op_scribble), (6, self.op_objwrite), (22, self.op_read),
            (6, self.op_mmap), (3, self.op_munmap), (4, self.op_mprotect), (4, self.op_madvise),
            (3, self.op_mlock), (2, self.op_munlock), (3, self.op_minherit), (3, self.op_fork),
            (2, self.op_exit), (2, self.op_sleep), (2, self.op_wake), (2, self.op_probe),
        ]
        self.op_weights = [w for w, _ in self.ops_table]

    # -- plumbing ------------------------------------------------------------------

    def call(self, name: str, fn: Any, /, *args: Any, **kw: Any) -> Any:
        t0 = time.monotonic()
        self.inflight = (f"thread {self.t}: {name}", t0)
        try:
            return fn(*args, **kw)
        finally:
            dt = time.monotonic() - t0
            self.inflight = None
            self.calls += 1
            if dt > self.longest[0]:
                self.longest = (dt, name)

    def fail(self, msg: str) -> None:
        raise Failure(f"thread {self.t}: {msg}")

    def oom(self, what: str) -> None:
        self.counts["oom"] += 1
        self.counts[f"oom:{what}"] += 1

    def total_pages(self) -> int:
        return sum(len(m.pages) for m in self.procs)

    def next_version(self) -> int:
        self.version += 1
        return self.version

    def setup(self) -> None:
        """The first process, with the thread's object mapped read-write."""
        p = self.k.spawn(name=f"s{self.t}")
        m = ProcModel(p)
        self.procs.append(m)
        for o in self.mine:
            self.map_object(m, o, 0, o.npages)

    def pick_proc(self) -> ProcModel:
        return self.rng.choice(self.procs)

    def pick_run(self, m: ProcModel, kinds: tuple[str, ...] | None, maxn: int,
                 blind: float = 0.1) -> tuple[int, int] | None:
        """(va, npages): a run from a random mapped page over pages of
        `kinds`; with probability `blind` it ignores holes and kinds (the
        kernel must then fail as the model says, or the caller skips)."""
        if not m.pages:
            return None
        va = self.rng.choice(list(m.pages))
        n = self.rng.randint(1, maxn)
        if self.rng.random() < blind:
            return va, n
        for i in range(n):
            pv = m.pages.get(va + i * PAGE)
            if pv is None or (kinds is not None and pv.kind not in kinds):
                return (va, i) if i else None
        return va, n

    def predict_access(self, m: ProcModel, addr: int, length: int, need: int) -> tuple[int, str] | None:
        """(addr, code) of the SegmentationFault the access must raise, or None."""
        first, last = addr // PAGE, (addr + length - 1) // PAGE
        for v in range(first, last + 1):
            pv = m.pages.get(v * PAGE)
            bad = max(addr, v * PAGE)
            if pv is None:
                return bad, "SEGV_MAPERR"
            if pv.prot & need != need:
                return bad, "SEGV_ACCERR"
        return None

    def expect_segv(self, what: str, e: Exception, predicted: tuple[int, str] | None, access: int) -> None:
        if predicted is None:
            self.fail(f"{what}: unexpected {e!r}")
        got = (e.addr, e.code, e.access)  # type: ignore[attr-defined]
        if got != (predicted[0], predicted[1], access):
            self.fail(f"{what}: {e!r} {got}, model expects {predicted}")
        self.counts["segv"] += 1

    # -- verification ------------------------------------------------------------------

    def snapshot(self, m: ProcModel, addr: int, length: int, pending: bool) -> dict[int, int]:
        """Versions of the foreign object pages in the range: committed
        (before a read) or pending (after it)."""
        out = {}
        for v in range(addr // PAGE, (addr + length - 1) // PAGE + 1):
            pv = m.pages.get(v * PAGE)
            if pv is not None and pv.obj is not None and pv.obj.owner != self.t:
                out[v * PAGE] = (pv.obj.pending if pending else pv.obj.committed)[pv.pg]
        return out

    def verify(self, m: ProcModel, addr: int, data: bytes | bytearray, lo: dict[int, int],
               hi: dict[int, int], what: str) -> None:
        pos = 0
        while pos < len(data):
            a = addr + pos
            va, off = a - a % PAGE, a % PAGE
            n = min(PAGE - off, len(data) - pos)
            chunk = bytes(data[pos:pos + n])
            pv = m.pages[va]
            if pv.obj is None:
                assert pv.cell is not None
                ok = [c for c in pv.cell.vals if c[off:off + n] == chunk]
                if not ok:
                    self.fail(f"{what}: pid {m.proc.pid} {a:#x}+{n}: got {chunk[:40].hex()} "
                              f"want one of {[c[off:off + 40].hex() for c in pv.cell.vals]}")
                pv.cell.vals = ok  # what MADV_FREE did is settled now
            elif pv.obj.owner == self.t:
                want = obj_page(pv.obj, pv.pg, pv.obj.committed[pv.pg])
                if want[off:off + n] != chunk:
                    self.fail(f"{what}: pid {m.proc.pid} own object {pv.obj.oid} page {pv.pg} at {a:#x}: got "
                              f"{chunk[:40].hex()} want version {pv.obj.committed[pv.pg]}")
            else:
                lo_v, hi_v = lo[va], hi[va]
                if not any(obj_page(pv.obj, pv.pg, ver)[off:off + n] == chunk for ver in range(lo_v, hi_v + 1)):
                    seen = HDR.unpack_from(chunk) if off == 0 and n >= HDR.size else None
                    self.fail(f"{what}: pid {m.proc.pid} object {pv.obj.oid} page {pv.pg} at {a:#x}: "
                              f"no version in [{lo_v}, {hi_v}] matches (header {seen})")
            pos += n
        self.counts["verified_bytes"] += len(data)

    def read_check(self, m: ProcModel, addr: int, length: int, what: str = "read", into: bool = False) -> None:
        predicted = self.predict_access(m, addr, length, PROT_READ)
        lo = self.snapshot(m, addr, length, pending=False)
        try:
            if into:
                buf = bytearray(length)
                n = self.call("readinto", m.proc.readinto, addr, memoryview(buf))
                if n != length:
                    self.fail(f"readinto returned {n}, not {length}")
                data: bytes | bytearray = buf
            else:
                data = self.call("read", m.proc.read, addr, length)
        except self.rv.SegmentationFault as e:
            self.expect_segv(f"{what}({addr:#x}, {length})", e, predicted, PROT_READ)
            return
        except self.rv.OutOfMemory:
            self.oom("read")
            return
        if predicted is not None:
            self.fail(f"{what}({addr:#x}, {length}) succeeded, model expects a fault {predicted}")
        if len(data) != length:
            self.fail(f"{what} returned {len(data)} bytes, not {length}")
        hi = self.snapshot(m, addr, length, pending=True)
        self.verify(m, addr, data, lo, hi, what)
        self.counts["reads"] += 1

    def sweep(self) -> None:
        """Read back every readable page of every process (whole runs)."""
        for m in list(self.procs):
            vas = sorted(v for v, pv in m.pages.items() if pv.prot & PROT_READ)
            i = 0
            while i < len(vas):
                j = i
                while j + 1 < len(vas) and vas[j + 1] == vas[j] + PAGE and j + 1 - i < 16:
                    j += 1
                self.read_check(m, vas[i], (j - i + 1) * PAGE, "sweep")
                i = j + 1

    # -- model updates -----------------------------------------------------------------

    def apply_write(self, m: ProcModel, addr: int, data: bytes, written: int) -> None:
        """The first `written` bytes of `data` are now at `addr`."""
        pos = 0
        while pos < written:
            a = addr + pos
            va, off = a - a % PAGE, a % PAGE
            n = min(PAGE - off, written - pos)
            cell = m.pages[va].cell
            assert cell is not None
            part = data[pos:pos + n]
            cell.vals = [c[:off] + part + c[off + n:] for c in cell.vals]
            pos += n

    def map_object(self, m: ProcModel, o: SharedObj, pg: int, n: int) -> bool:
        rv = self.rv
        prot = RW if o.owner == self.t else PROT_READ
        try:
            a = self.call("mmap(obj)", m.proc.mmap, n * PAGE, prot=prot, flags=rv.MAP_SHARED, obj=o.handle,
                          offset=pg * PAGE)
        except rv.OutOfMemory:
            self.oom("mmap")
            return False
        self.place(m, a, n)
        for i in range(n):
            m.pages[a + i * PAGE] = PV(OBJ, None, o, pg + i, prot, INHERIT_SHARE)
        return True

    def place(self, m: ProcModel, a: int, n: int) -> None:
        if a % PAGE or any(a + i * PAGE in m.pages for i in range(n)):
            self.fail(f"mmap returned {a:#x}+{n} pages over a mapped page of pid {m.proc.pid}")

    # -- operations --------------------------------------------------------------------

    def step(self) -> None:
        self.ops += 1
        op = self.rng.choices(self.ops_table, self.op_weights)[0][1]
        op()

    def op_write(self) -> None:
        """Stamped whole pages into private or shared-anonymous memory."""
        m = self.pick_proc()
        run = self.pick_run(m, (ANON, SHANON), 8)
        if run is None:
            return self.op_mmap()
        va, n = run
        if any(pv is not None and pv.kind not in (ANON, SHANON)
               for pv in (m.pages.get(va + i * PAGE) for i in range(n))) and \
                self.predict_access(m, va, n * PAGE, PROT_WRITE) is None:
            return  # a blind run over memory this write must not touch
        data = b"".join(stamp(KIND_PRIVATE, self.t, va + i * PAGE, self.next_version()) for i in range(n))
        style = self.rng.random()
        payload: bytes | bytearray | memoryview = data
        if n > 1 and style < 0.3:
            payload = bytearray(data)
        elif n > 1 and style < 0.5:
            payload = memoryview(data)
        self.do_write(m, va, data, payload, "write")

    def do_write(self, m: ProcModel, addr: int, data: bytes, payload: Any, what: str) -> None:
        predicted = self.predict_access(m, addr, len(data), PROT_WRITE)
        try:
            self.call(what, m.proc.write, addr, payload)
        except self.rv.SegmentationFault as e:
            self.expect_segv(f"{what}({addr:#x}, {len(data)})", e, predicted, PROT_WRITE)
            return
        except self.rv.OutOfMemory as e:
            self.oom("write")
            if e.written is None or not 0 <= e.written < len(data):
                self.fail(f"{what}: OutOfMemory with written={e.written} of {len(data)}")
            if e.written:
                self.counts["short_writes"] += 1
            self.apply_write(m, addr, data, e.written)
            return
        if predicted is not None:
            self.fail(f"{what}({addr:#x}, {len(data)}) succeeded, model expects a fault {predicted}")
        self.apply_write(m, addr, data, len(data))
        self.counts["writes"] += 1

    def op_scribble(self) -> None:
        """Unaligned bytes into a scribble region (may cross pages)."""
        m = self.pick_proc()
        run = self.pick_run(m, (SCRIB,), 4, blind=0.0)
        if run is None:
            return self.op_mmap(kind=SCRIB)
        va, n = run
        off = self.rng.randrange(n * PAGE)
        length = self.rng.randint(1, min(n * PAGE - off, 2 * PAGE + 100))
        data = bytes(self.rng.randint(0x21, 0x7E) for _ in range(min(length, 64))) * (length // 64 + 1)
        self.do_write(m, va + off, data[:length], data[:length], "scribble")

    def op_objwrite(self) -> None:
        """A new version of a page of one of this thread's objects, by
        object_write or through a writable MAP_SHARED mapping."""
        if not self.mine:
            return self.op_write()
        o = self.rng.choice(self.mine)
        pg = self.rng.randrange(o.npages)
        via = None
        if self.rng.random() < 0.5:
            for m in self.procs:
                for va, pv in m.pages.items():
                    if pv.obj is o and pv.pg == pg and pv.prot & PROT_WRITE:
                        via = (m, va)
                        break
                if via:
                    break
        ver = o.committed[pg] + 1
        data = obj_page(o, pg, ver)
        o.pending[pg] = ver
        try:
            if via is not None:
                self.call("write(obj)", via[0].proc.write, via[1], data)
            else:
                self.call("object_write", self.k.object_write, o.oid, pg * PAGE, data)
        except self.rv.OutOfMemory as e:
            self.oom("objwrite")
            if e.written:
                self.fail(f"a one-page object write ran out of memory after {e.written} bytes")
            o.pending[pg] = o.committed[pg]
            return
        o.committed[pg] = ver
        self.counts["objwrites"] += 1

    def op_read(self) -> None:
        m = self.pick_proc()
        if not m.pages:
            return self.op_mmap()
        va = self.rng.choice(list(m.pages))
        r = self.rng.random()
        if r < 0.5:
            addr, length = va, self.rng.randint(1, 8) * PAGE  # may run past the mapping
        elif r < 0.8:
            addr = va + self.rng.randrange(PAGE)
            length = self.rng.randint(1, 2 * PAGE)
        else:
            addr, length = va, PAGE
        self.read_check(m, addr, length, into=self.rng.random() < 0.3)

    def op_probe(self) -> None:
        """A write where the model says it must fault: a foreign object's
        read-only page, a PROT_READ/PROT_NONE page, or a hole."""
        m = self.pick_proc()
        cands = [va for va, pv in m.pages.items() if not pv.prot & PROT_WRITE]
        if cands:
            va = self.rng.choice(cands)
        else:
            top = max(m.pages, default=0x10000000)
            va = top + PAGE * self.rng.randint(1, 64)
            if va in m.pages:
                return
        if self.predict_access(m, va, PAGE, PROT_WRITE) is None:
            return
        data = stamp(KIND_PRIVATE, self.t, va, self.next_version())
        self.do_write(m, va, data, data, "probe")

    def op_mmap(self, kind: str | None = None) -> None:
        rv = self.rv
        m = self.pick_proc()
        if kind is None:
            r = self.rng.random()
            kind = ANON if r < 0.6 else SCRIB if r < 0.75 else SHANON if r < 0.87 else OBJ
        if kind == OBJ:
            o = self.rng.choice(self.objs)
            pg = self.rng.randrange(o.npages)
            n = self.rng.randint(1, o.npages - pg)
            if self.total_pages() + n <= self.PAGE_CAP and len(m.pages) + n <= self.PROC_CAP:
                self.map_object(m, o, pg, n)
            return
        n = self.rng.randint(1, 32)
        if self.total_pages() + n > self.PAGE_CAP or len(m.pages) + n > self.PROC_CAP:
            return self.op_munmap()
        prot = PROT_READ if self.rng.random() < 0.05 else RW
        flags = rv.MAP_SHARED | rv.MAP_ANON if kind == SHANON else rv.MAP_PRIVATE | rv.MAP_ANON
        try:
            a = self.call(f"mmap({kind})", m.proc.mmap, n * PAGE, prot=prot, flags=flags)
        except rv.OutOfMemory:
            self.oom("mmap")
            return
        self.place(m, a, n)
        inh = INHERIT_SHARE if kind == SHANON else INHERIT_COPY
        for i in range(n):
            m.pages[a + i * PAGE] = PV(kind, Cell([ZERO]), None, 0, prot, inh)
        self.counts["mmaps"] += 1
        if kind != SCRIB and self.rng.random() < 0.6:  # populate it: memory pressure
            data = b"".join(stamp(KIND_PRIVATE, self.t, a + i * PAGE, self.next_version()) for i in range(n))
            self.do_write(m, a, data, data, "write(new)")

    def op_munmap(self) -> None:
        m = self.pick_proc()
        run = self.pick_run(m, None, 16, blind=0.2)
        if run is None:
            return
        va, n = run
        try:
            self.call("munmap", m.proc.munmap, va, n * PAGE)
        except self.rv.OutOfMemory:
            self.oom("munmap")
            return
        for i in range(n):
            m.pages.pop(va + i * PAGE, None)
        self.counts["munmaps"] += 1

    def ranged(self, name: str, m: ProcModel, va: int, n: int, fn: Any, *args: Any,
               must_fail: bool, may_enomem: bool = False) -> bool:
        """A range call: ENOMEM exactly when the model says (or, with
        `may_enomem`, also when a limit elsewhere refuses); True if done."""
        rv = self.rv
        try:
            self.call(name, fn, va, n * PAGE, *args)
        except rv.OutOfMemory:
            self.oom(name)
            return False
        except rv.VMError as e:
            if e.errno != errno.ENOMEM or not (must_fail or may_enomem):
                self.fail(f"{name}({va:#x}, {n} pages): {e!r}, model expects success")
            self.counts[f"enomem:{name}"] += 1
            return False
        if must_fail:
            self.fail(f"{name}({va:#x}, {n} pages) succeeded over a hole or unreadable page")
        return True

    def holes(self, m: ProcModel, va: int, n: int) -> bool:
        return any(va + i * PAGE not in m.pages for i in range(n))

    def op_mprotect(self) -> None:
        m = self.pick_proc()
        run = self.pick_run(m, None, 16)
        if run is None:
            return
        va, n = run
        pvs = [m.pages.get(va + i * PAGE) for i in range(n)]
        foreign = any(pv is not None and pv.obj is not None and pv.obj.owner != self.t for pv in pvs)
        prot = self.rng.choice([PROT_READ, PROT_NONE] if foreign else [RW, RW, PROT_READ, PROT_NONE])
        hole = self.holes(m, va, n)
        if self.ranged("mprotect", m, va, n, m.proc.mprotect, prot, must_fail=hole):
            for pv in pvs:
                assert pv is not None
                pv.prot = prot

    def op_madvise(self) -> None:
        rv = self.rv
        m = self.pick_proc()
        run = self.pick_run(m, None, 16)
        if run is None:
            return
        va, n = run
        adv = self.rng.choice([rv.MADV_NORMAL, rv.MADV_RANDOM, rv.MADV_SEQUENTIAL, rv.MADV_WILLNEED,
                               rv.MADV_DONTNEED, rv.MADV_DONTNEED, rv.MADV_FREE])
        hole = self.holes(m, va, n)
        if self.ranged(f"madvise({adv})", m, va, n, m.proc.madvise, adv, must_fail=hole) and adv == rv.MADV_FREE:
            for i in range(n):
                pv = m.pages[va + i * PAGE]
                # Private pages nothing else reaches read back as zeros;
                # the model does not know the shadow chains: either.
                if pv.kind in (ANON, SCRIB) and pv.cell is not None and ZERO not in pv.cell.vals:
                    pv.cell.vals = [*pv.cell.vals, ZERO]
            self.counts["madv_free"] += 1

    def locked_pages(self) -> int:
        return sum(1 for m in self.procs for pv in m.pages.values() if pv.locked)

    def op_mlock(self) -> None:
        m = self.pick_proc()
        run = self.pick_run(m, None, 4)
        if run is None:
            return
        va, n = run
        if self.locked_pages() + n > self.LOCK_CAP:
            return self.op_munlock()
        pvs = [m.pages.get(va + i * PAGE) for i in range(n)]
        bad = any(pv is None or not pv.prot & PROT_READ for pv in pvs)
        # ENOMEM also when the kernel-wide wired limit (a third of the
        # memory limit, which the controller moves) is reached.
        if self.ranged("mlock", m, va, n, m.proc.mlock, must_fail=bad, may_enomem=True):
            for pv in pvs:
                assert pv is not None
                pv.locked = True
            self.counts["mlocks"] += 1

    def op_munlock(self) -> None:
        m = self.pick_proc()
        locked = [va for va, pv in m.pages.items() if pv.locked]
        if locked and self.rng.random() < 0.8:
            va, n = self.rng.choice(locked), self.rng.randint(1, 4)
            n = next((i for i in range(1, n) if va + i * PAGE not in m.pages), n)
        else:
            run = self.pick_run(m, None, 4)
            if run is None:
                return
            va, n = run
        hole = self.holes(m, va, n)
        if self.ranged("munlock", m, va, n, m.proc.munlock, must_fail=hole):
            for i in range(n):
                m.pages[va + i * PAGE].locked = False

    def op_minherit(self) -> None:
        m = self.pick_proc()
        run = self.pick_run(m, (ANON, SCRIB), 16, blind=0.0)
        if run is None:
            return
        va, n = run
        inh = self.rng.choice([INHERIT_SHARE, INHERIT_SHARE, INHERIT_COPY, INHERIT_NONE])
        pvs = [m.pages[va + i * PAGE] for i in range(n)]
        if inh == INHERIT_COPY and any(pv.cell is not None and pv.cell.shared for pv in pvs):
            # Already shared memory set to copy: after the fork the parent
            # too is copy-on-write over it and sees the other sharers'
            # later writes only on pages it has not written (README); the
            # model copies eagerly, so it stays out of that.
            return
        try:
            self.call("minherit", m.proc.minherit, va, n * PAGE, inh)
        except self.rv.OutOfMemory:
            self.oom("minherit")
            return
        for pv in pvs:
            pv.inh = inh

    def op_fork(self) -> None:
        if len(self.procs) >= self.MAX_PROCS:
            return self.op_exit()
        m = self.pick_proc()
        if self.total_pages() + len(m.pages) > self.PAGE_CAP:
            return self.op_munmap()
        try:
            child = self.call("fork", m.proc.fork, name=f"s{self.t}")
        except self.rv.OutOfMemory:
            self.oom("fork")
            return
        c = ProcModel(child)
        for va, pv in m.pages.items():
            if pv.inh == INHERIT_NONE:
                continue
            if pv.inh == INHERIT_SHARE:
                if pv.cell is not None:
                    pv.cell.shared = True
                npv = PV(pv.kind, pv.cell, pv.obj, pv.pg, pv.prot, pv.inh)
            else:
                assert pv.cell is not None
                npv = PV(pv.kind, Cell(list(pv.cell.vals)), None, 0, pv.prot, pv.inh)
            c.pages[va] = npv
        self.procs.append(c)
        self.counts["forks"] += 1

    def op_exit(self) -> None:
        if len(self.procs) < 2:
            return self.op_fork()
        m = self.rng.choice(self.procs[1:])
        self.call("exit", m.proc.exit)
        self.procs.remove(m)
        if m.proc.state != "Z":
            self.fail(f"pid {m.proc.pid} state {m.proc.state} after exit")
        self.counts["exits"] += 1

    def op_sleep(self) -> None:
        m = self.pick_proc()
        try:
            self.call("sleep", m.proc.sleep)
        except self.rv.OutOfMemory:
            self.oom("sleep")
            return
        m.asleep = True
        if m.proc.state not in ("S", "W"):
            self.fail(f"pid {m.proc.pid} state {m.proc.state} after sleep")
        self.counts["sleeps"] += 1

    def op_wake(self) -> None:
        asleep = [m for m in self.procs if m.asleep]
        if not asleep:
            return self.op_sleep()
        m = self.rng.choice(asleep)
        try:
            self.call("wake", m.proc.wake)
        except self.rv.OutOfMemory:
            self.oom("wake")
            return
        m.asleep = False
        # Swapped in by wake; the swapper may take it out again at once.
        if m.proc.state not in ("R", "W"):
            self.fail(f"pid {m.proc.pid} state {m.proc.state} after wake")
        self.counts["wakes"] += 1

    def teardown(self) -> None:
        for m in self.procs:
            self.call("exit", m.proc.exit)
        self.procs.clear()


# -- the /vm reader (a subprocess) ------------------------------------------------------

def reader_main(root: str, objects_json: str, limits_json: str, seed: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fusemount import MAPS_LINE, check_kb_line, check_maps_line

    objects = {int(k): (v[0], v[1]) for k, v in json.loads(objects_json).items()}
    limits_kb = {v // 1024 for v in json.loads(limits_json)}
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    longest = 0.0
    threads: dict[str, int | None] = {}
    tolerated = (errno.ENOENT, errno.ESRCH, errno.EIO)

    def timed(fn: Any, *a: Any) -> Any:
        nonlocal longest
        t0 = time.monotonic()
        try:
            return fn(*a)
        finally:
            longest = max(longest, time.monotonic() - t0)

    def read_text(path: str) -> str:
        with open(path) as f:
            return timed(f.read)

    def one_pass() -> None:
        text = read_text(f"{root}/meminfo")
        fields = {}
        for line in text.splitlines():
            check_kb_line(line)
            label, value = line.split(":")
            fields[label] = int(value.split()[0])
        if fields["MemTotal"] not in limits_kb:
            raise AssertionError(f"MemTotal {fields['MemTotal']} kB is no limit the test set {sorted(limits_kb)}")
        counts["meminfo"] += 1
        pids = os.listdir(f"{root}/proc")
        for pid in rng.sample(pids, min(4, len(pids))):
            try:
                if pid not in threads:
                    name = next(line.split("\t")[1] for line in read_text(f"{root}/proc/{pid}/status").splitlines()
                                if line.startswith("Name:"))
                    threads[pid] = int(name[1:]) if name[:1] == "s" and name[1:].isdigit() else None
                lines = read_text(f"{root}/proc/{pid}/maps").splitlines()
                ranges = []
                for line in lines:
                    mm = check_maps_line(line)
                    ranges.append((int(mm["start"], 16), int(mm["end"], 16)))
                counts["maps"] += 1
                if rng.random() < 0.3:
                    for line in read_text(f"{root}/proc/{pid}/smaps").splitlines():
                        if MAPS_LINE.fullmatch(line):
                            check_maps_line(line)
                        elif not line.startswith(("THPeligible:", "VmFlags:")):
                            check_kb_line(line)
                    counts["smaps"] += 1
                if not ranges:
                    continue
                fd = os.open(f"{root}/proc/{pid}/mem", os.O_RDONLY)
                try:
                    for start, end in rng.sample(ranges, min(6, len(ranges))):
                        va = start + PAGE * rng.randrange((end - start) // PAGE)
                        n = min(end - va, PAGE * rng.randint(1, 16))
                        data = timed(os.pread, fd, n, va)
                        for off in range(0, len(data) - PAGE + 1, PAGE):
                            err = check_stamped(data[off:off + PAGE], va + off, threads[pid], objects)
                            if err:
                                raise AssertionError(f"/vm/proc/{pid}/mem: {err}")
                            counts["pages"] += 1
                            counts["stamped"] += data[off:off + 8] == MAGIC
                finally:
                    os.close(fd)
            except OSError as e:
                if e.errno not in tolerated:
                    raise
                counts[f"errno:{errno.errorcode.get(e.errno or 0, e.errno)}"] += 1
        counts["passes"] += 1

    one_pass()
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        one_pass()
    print(json.dumps({"counts": counts, "longest": longest}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "reader":
        reader_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit("usage: stress_model.py reader ROOT OBJECTS_JSON LIMITS_JSON SEED")
