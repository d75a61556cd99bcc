"""The inspection API: frozen records of the kernel's state, and
side-effect-free reads of memory (docs/inspection-api.md).

Nothing here allocates a page, pages anything in, sets a referenced bit or
moves a page between queues: /vm must never change what it shows.  A page
that is swapped out is read from the swap file into a temporary buffer (and
its checksum verified); a page never written reads as zeros.  A peek's
result is allocated once, at its final size, and filled in place by one C
copy per run of pages (`hypercall.copy_out`): no zeroing, no second copy.

Lock: the caller holds the kernel lock.  The swap read of `peek_*` happens
with the lock held — it is a single-page pread and keeps the state stable
for the whole read.  XXX: a long peek of swapped memory therefore stalls
other threads for its I/O; acceptable for an inspection path.
"""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

import hypercall

from . import object as vm_object
from . import window
from .constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from .errors import OutOfMemory, SegmentationFault
from .fault import resolve
from .map import STACK_NAME

if TYPE_CHECKING:
    from .kernel import Kernel
    from .map import VMMap, VMMapEntry
    from .object import VMObject
    from .page import VMPage


@dataclass(frozen=True, slots=True)
class MapEntry:
    start: int
    end: int
    prot: int
    max_prot: int
    inheritance: int
    shared: bool
    wired: bool
    object: int | None
    offset: int
    advice: int
    needs_copy: bool = False
    name: str = ""
    nocore: bool = False


@dataclass(frozen=True, slots=True)
class SmapsInfo:
    entry: MapEntry
    rss: int
    pss: int
    swap: int
    locked: int
    referenced: int
    anonymous: int
    shared_clean: int
    shared_dirty: int
    private_clean: int
    private_dirty: int


@dataclass(frozen=True, slots=True)
class ProcStatus:
    name: str
    state: str
    pid: int
    ppid: int
    vm_size: int
    vm_rss: int
    vm_swap: int
    vm_lck: int
    vm_stk: int = 0


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    id: int
    type: str
    size: int
    refs: int
    resident: int
    swapped: int
    shadow: int | None
    backing_offset: int
    shadow_count: int


@dataclass(frozen=True, slots=True)
class SwapInfo:
    path: str
    type: str
    size: int
    used: int
    priority: int


@dataclass(frozen=True, slots=True)
class KmemMapInfo:
    name: str
    start: int
    end: int
    size: int
    entries: list[MapEntry]


@dataclass(frozen=True, slots=True)
class PoolInfo:
    name: str
    size: int
    inuse: int
    npages: int
    nget: int
    nput: int


def entry_record(e: VMMapEntry) -> MapEntry:
    return MapEntry(e.start, e.end, e.prot, e.max_prot, e.inheritance, e.shared, bool(e.wired_count),
                    e.obj.id if e.obj is not None else None, e.offset, e.advice, e.needs_copy, e.name,
                    e.nocore)


def object_record(o: VMObject) -> ObjectInfo:
    """An object's record; a host window's resident pages (its stubs) count
    as the object's."""
    resident = len(o.pages) + (len(o.window._stubs) if o.window is not None else 0)
    return ObjectInfo(o.id, o.type, o.size << PAGE_SHIFT, o.ref_count, resident, len(o.swap),
                      o.backing.id if o.backing is not None else None, o.backing_offset << PAGE_SHIFT,
                      len(o.shadows))


def smaps_record(k: Kernel, vmap: VMMap, e: VMMapEntry) -> SmapsInfo:
    """Per-entry memory use, counted from the pmap and the object chain."""
    rss = pss = ref = anon = sc = sd = pc = pd = 0
    rd = vmap.pmap.rd
    for vpn in vmap.pmap.vpns_in(e.start >> PAGE_SHIFT, e.end >> PAGE_SHIFT):
        rss, pss, ref, anon, sc, sd, pc, pd = _count(rd[vpn], rss, pss, ref, anon, sc, sd, pc, pd)
    locked = rss if e.wired_count else 0
    return SmapsInfo(entry_record(e), rss, pss, _entry_swap(e), locked, ref, anon, sc, sd, pc, pd)


def _entry_swap(e: VMMapEntry) -> int:
    """Bytes of `e`'s range that have a swap slot anywhere in its chain,
    each page once; a backing object's slot counts only where the top
    object has no page.  Walks the slots inside the range (`keys_in`), not
    every slot of every object."""
    top = e.obj
    if top is None:
        return 0
    first, last = e.pindex(e.start), e.pindex(e.end)
    o: VMObject | None = top
    off = 0
    seen: set[int] = set()
    while o is not None:
        for pindex in vm_object.keys_in(o.swap, first + off, last + off):
            if o is top or pindex - off not in top.pages:
                seen.add(pindex - off)
        off += o.backing_offset
        o = o.backing
    return len(seen) * PAGE_SIZE


def status_record(vmap: VMMap, name: str, state: str, pid: int, ppid: int) -> ProcStatus:
    """/proc/<pid>/status of a process with address space `vmap`, computed
    directly in one pass over the entries (no smaps records): VmRSS counts
    the map's translations, each of which lies in exactly one entry (an
    invariant of check.py), so it equals the sum of smaps Rss; VmSwap is the
    sum of smaps Swap; VmLck the wired entries, VmStk the stack entries.
    Lock held."""
    swap = lck = stk = 0
    for e in vmap.entries():
        if e.obj is not None:
            swap += _entry_swap(e)
        if e.wired_count:
            lck += e.end - e.start
        if e.name == STACK_NAME:
            stk += e.end - e.start
    return ProcStatus(name, state, pid, ppid, vmap.size, len(vmap.pmap.rd) * PAGE_SIZE, swap, lck, stk)


def _count(page, rss, pss, ref, anon, sc, sd, pc, pd):  # type: ignore[no-untyped-def]
    n = len(page.pv) or 1
    rss += PAGE_SIZE
    pss += PAGE_SIZE // n
    anon += PAGE_SIZE
    if page.referenced:
        ref += PAGE_SIZE
    if n > 1:
        sd, sc = (sd + PAGE_SIZE, sc) if page.dirty else (sd, sc + PAGE_SIZE)
    else:
        pd, pc = (pd + PAGE_SIZE, pc) if page.dirty else (pd, pc + PAGE_SIZE)
    return rss, pss, ref, anon, sc, sd, pc, pd


_ZEROS = memoryview(bytes(PAGE_SIZE))
# Pages looked up per C copy: bounds the lists a huge peek builds.
_CHUNK_PAGES = 256
_ADDR = attrgetter("addr")


def _object_page(k: Kernel, obj: VMObject, pindex: int) -> VMPage | bytes | None:
    """Page `pindex` as seen through `obj`'s chain: the resident page, the
    bytes of its swap copy, or None (never written: zeros).  A page still
    being paged in (fake) has no valid bytes yet: its swap copy is read
    instead."""
    o, pi, page, slot = vm_object.lookup(obj, pindex)
    if page is None and slot is None and obj.window is not None:
        w = window.window_range(obj, pindex)
        if w is not None:  # a host window's page: its bytes without faulting it in
            data = bytearray(PAGE_SIZE)
            w._live().peek((pindex - w._first) << PAGE_SHIFT, data)
            return bytes(data)
    if page is not None and page.fake:
        page, slot = None, o.swap.get(pi)
    if page is not None:
        return page
    if slot is not None:
        assert k.swap is not None
        return k.swap.peek(slot)
    return None


def _object_page_bytes(k: Kernel, obj: VMObject, pindex: int) -> bytes | None:
    """The bytes of page `pindex` as seen through `obj`'s chain (None: zeros)."""
    found = _object_page(k, obj, pindex)
    if found is None or isinstance(found, bytes):
        return found
    return found.buf[found.off:found.off + PAGE_SIZE].tobytes()


def _copy_run(dst: bytes | bytearray | memoryview, pos: int, pages: list[VMPage | bytes | None],
              off: int, n: int) -> None:
    """Copy `n` bytes of a run of pages (resident page, swapped bytes, or
    None for zeros), from `off` bytes into the first, to `dst` at `pos`:
    one C call.  Swapped pages go through a scratch buffer, whose address
    the copy can take."""
    swapped = [p for p in pages if isinstance(p, bytes)]
    if not swapped:
        hypercall.copy_out(dst, pos, [0 if p is None else p.addr for p in pages], off, n)  # type: ignore[union-attr]
        return
    scratch = bytearray().join(swapped)
    view = ctypes.c_char.from_buffer(scratch)  # pins scratch (no resize) until the copy is done
    slots = iter(range(ctypes.addressof(view), ctypes.addressof(view) + len(scratch), PAGE_SIZE))
    addrs = [next(slots) if isinstance(p, bytes) else 0 if p is None else p.addr for p in pages]
    hypercall.copy_out(dst, pos, addrs, off, n)


def _result(length: int) -> bytes | bytearray:
    """A result buffer to fill in place: a fresh bytes object with undefined
    contents (no zeroing, no second copy), a bytearray below 2 bytes (which
    uninit_bytes cannot make); OutOfMemory (not MemoryError) when the host
    cannot give one."""
    try:
        return hypercall.uninit_bytes(length) if length >= 2 else bytearray(length)
    except (MemoryError, OverflowError):
        raise OutOfMemory(f"no host memory for a {length}-byte read") from None


def _mapped_end(vmap: VMMap, addr: int, end: int) -> int:
    """Where the mapped stretch of [addr, end) that starts at `addr` ends;
    SegmentationFault if `addr` itself is unmapped."""
    va = addr
    while va < end:
        _, e = resolve(vmap, va)
        if e is None:
            if va == addr:
                raise SegmentationFault(va, 1, "SEGV_MAPERR")
            return va
        va = e.end
    return end


def peek_map_into(k: Kernel, vmap: VMMap, addr: int, dst: bytes | bytearray | memoryview) -> int:
    """Fill `dst` with the bytes at `addr` up to the first unmapped page,
    ignoring protection; returns the count.  SegmentationFault if `addr`
    itself is unmapped.  One C copy per run of up to `_CHUNK_PAGES` pages."""
    end = _mapped_end(vmap, addr, addr + len(dst))
    va = addr
    while va < end:
        m, e = resolve(vmap, va)
        assert e is not None
        stop = min(end, e.end, (va & ~PAGE_MASK) + _CHUNK_PAGES * PAGE_SIZE)
        vpn = va >> PAGE_SHIFT
        pages: list[VMPage | bytes | None] = list(map(m.pmap.rd.get, range(vpn, ((stop - 1) >> PAGE_SHIFT) + 1)))
        try:  # all mapped by the pmap (the common case): no per-page Python
            addrs = list(map(_ADDR, pages))
        except AttributeError:  # None: a page the pmap does not map
            if e.obj is not None:  # look in the object chain
                first = e.pindex(vpn << PAGE_SHIFT)
                pages = [p if p is not None else _object_page(k, e.obj, first + i) for i, p in enumerate(pages)]
            _copy_run(dst, va - addr, pages, va & PAGE_MASK, stop - va)
        else:
            hypercall.copy_out(dst, va - addr, addrs, va & PAGE_MASK, stop - va)
        va = stop
    return end - addr


def peek_map(k: Kernel, vmap: VMMap, addr: int, length: int) -> bytes:
    """Bytes of [addr, addr+length) up to the first unmapped page, ignoring
    protection.  SegmentationFault if `addr` itself is unmapped.  The
    result is allocated once, at its final size, and filled in place."""
    out = _result(_mapped_end(vmap, addr, addr + length) - addr)
    peek_map_into(k, vmap, addr, out)
    return bytes(out) if isinstance(out, bytearray) else out


def peek_object(k: Kernel, obj: VMObject, offset: int, length: int) -> bytes:
    """Bytes of an object by offset through its chain; short at its end."""
    end = min(obj.size << PAGE_SHIFT, offset + length)
    out = _result(max(0, end - offset))
    pos = offset
    while pos < end:
        stop = min(end, (pos & ~PAGE_MASK) + _CHUNK_PAGES * PAGE_SIZE)
        pages = [_object_page(k, obj, i) for i in range(pos >> PAGE_SHIFT, ((stop - 1) >> PAGE_SHIFT) + 1)]
        _copy_run(out, pos - offset, pages, pos & PAGE_MASK, stop - pos)
        pos = stop
    return bytes(out) if isinstance(out, bytearray) else out


def peek_runs(k: Kernel, vmap: VMMap, e: VMMapEntry) -> list[tuple[int, bytes]]:
    """The pages of entry `e` that have contents (resident or swapped
    anywhere in its chain), as runs (address, bytes) of consecutive pages;
    pages never written are left out.  Side-effect free; lock held."""
    if e.obj is None:
        return []
    first, last = e.pindex(e.start), e.pindex(e.end)
    present: set[int] = set()
    o: VMObject | None = e.obj
    off = 0
    while o is not None:
        for table in (o.pages, o.swap):
            present.update(i - off for i in vm_object.keys_in(table, first + off, last + off))
        off += o.backing_offset
        o = o.backing
    runs: list[tuple[int, bytes]] = []
    run_start, parts = 0, bytearray()
    for pindex in sorted(present):
        va = e.start + ((pindex - first) << PAGE_SHIFT)
        if not parts or va != run_start + len(parts):
            if parts:
                runs.append((run_start, bytes(parts)))
            run_start, parts = va, bytearray()
        data = _object_page_bytes(k, e.obj, pindex)
        parts += data if data is not None else _ZEROS
    if parts:
        runs.append((run_start, bytes(parts)))
    return runs


def stats(k: Kernel) -> dict[str, int]:
    """uvmexp-style counters: page counts, swap use, resident bytes, and the
    event counters.  O(1) in memory size (nothing walks the pages).  Lock
    held."""
    pm = k.physmem
    limit = pm.limit
    npages = limit // PAGE_SIZE if limit is not None else pm.total_frames
    q = k.queues
    out = {
        "pagesize": PAGE_SIZE,
        "npages": npages,
        "free": max(0, npages - pm.frames_in_use) if limit is not None else len(pm.free_frames),
        "active": len(q.active),
        "inactive": len(q.inactive),
        "wired": q.wired + sum(p.npages for p in k.pooltab.values()),
        "swpages": k.swap.nslots if k.swap else 0,
        "swpginuse": k.swap.inuse if k.swap else 0,
        "resident": pm.resident,
        "memlimit": limit or 0,
        "kmem_charged": pm.charged,
        "objects": len(k.objtab),
        "procs": len(k.proctab),
    }
    out.update(asdict(k.uvmexp))
    out.update(window.stats(k))
    return out


def meminfo(k: Kernel) -> dict[str, int]:
    """/proc/meminfo fields, in bytes.  Lock held."""
    s = stats(k)
    # Without a limit the host's memory is the total, as a container without
    # a memory limit sees it.
    total = s["npages"] * PAGE_SIZE if k.physmem.limit is not None else hypercall.host_memory()
    free = s["free"] * PAGE_SIZE if k.physmem.limit is not None else max(0, total - s["resident"])
    q = k.queues
    dirty = sum(1 for queue in (q.active, q.inactive) for p in queue if p.dirty)
    anon = sum(len(o.pages) for o in k.objtab.values() if o.type == "anon")
    swap_total = s["swpages"] * PAGE_SIZE
    return {
        "MemTotal": total, "MemFree": free,
        "MemAvailable": free + s["inactive"] * PAGE_SIZE,
        "Active": s["active"] * PAGE_SIZE, "Inactive": s["inactive"] * PAGE_SIZE,
        "Active(anon)": s["active"] * PAGE_SIZE, "Inactive(anon)": s["inactive"] * PAGE_SIZE,
        "Unevictable": s["wired"] * PAGE_SIZE, "Mlocked": k.wired_user_pages * PAGE_SIZE,
        "SwapTotal": swap_total, "SwapFree": swap_total - s["swpginuse"] * PAGE_SIZE,
        "Dirty": dirty * PAGE_SIZE, "AnonPages": anon * PAGE_SIZE,
        "KernelAlloc": s["kmem_charged"] + s["wired"] * PAGE_SIZE,
    }
