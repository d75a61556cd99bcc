"""check: verify the whole kernel's bookkeeping (Kernel.check).

Returns a list of violated invariants, empty when all hold:
- maps: entry trees sound (order, no overlap, gaps, augmentation), entries
  inside the map, `size` = sum of entries, prot <= max_prot, objectless
  entries only for untouched anonymous memory (or the pager window);
- pmaps: every translation is backed by an entry that allows it, points at
  the page the object chain holds for that address, and is in the page's
  pv set (and the reverse); writable translations only to pages of the
  entry's top object, never for needs-copy entries;
- objects: reference counts equal entries + shadows + handles; shadow sets
  match backing pointers; pages keyed by their own pindex;
- pages and frames: every frame is exactly one of free, a page, or a pool
  frame; every pageable page is on exactly one queue; wired counts match;
  a policy that tracks pages (2q, sieve, ...) tracks exactly the queued ones;
- swap: slots in use = slots referenced by objects, no slot twice;
- clean pages: a clean page's contents equal its swap copy (checksum), or
  are zeros when it has no slot (a `fill` page a fault makes again): a page
  written without being marked dirty would lose the write on eviction;
- wiring: every page a map holds wired is the page its entry's object
  chain maps at that address (a COW that hid it would strand the wiring);
- reachability: every resident page and swap slot lies in a pindex range a
  live mapping, shadow or handle can reach (no leaks), and each object's
  `mappings` are exactly the linked entries that map it;
- ownership: objects, backing objects and frames belong to this kernel;
- processes: each vmspace counts exactly the processes using it (vfork);
  `nswapped` is the number swapped out;
- accounting: charged bytes = swap bookkeeping + uvm_km_alloc arenas +
  host-window budgets;
- host windows: each engine's resident pages <= its budget = the budget
  charged; a window's object holds no rumpvm page or slot in its range;
- limit: resident <= limit (unless the limit was just lowered).
Lock: the caller holds the kernel lock.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from typing import TYPE_CHECKING

import hypercall

from . import object as vm_object
from .constants import PAGE_SHIFT, PAGE_SIZE, PROT_READ, PROT_WRITE
from .fault import resolve

if TYPE_CHECKING:
    from .kernel import Kernel
    from .map import VMMap
    from .object import VMObject

_ZERO_SUM = hypercall.checksum_buffer(bytes(PAGE_SIZE))


def _maps(k: Kernel) -> list[VMMap]:
    """Every live map once (a vmspace may be shared by several processes)."""
    spaces = {id(p.vmspace): p.vmspace for p in k.proctab.values()}
    return [k.kernel_map, *k.kmem.submaps, *spaces.values()]


def _proc_errors(k: Kernel) -> list[str]:
    """Each live process's vmspace is counted once per process using it
    (none destroyed under a user); the swapped-out count is exact."""
    users = Counter(id(p.vmspace) for p in k.proctab.values())
    errs = []
    swapped = sum(p.swapped for p in k.proctab.values())
    if k.nswapped != swapped:
        errs.append(f"nswapped {k.nswapped}, but {swapped} processes are swapped out")
    for p in k.proctab.values():
        vm = p.vmspace
        if vm.refcnt != users[id(vm)]:
            errs.append(f"pid {p.pid}: vmspace refcnt {vm.refcnt}, used by {users[id(vm)]} processes")
    return errs


def check_kernel(k: Kernel) -> list[str]:
    errs: list[str] = _proc_errors(k)
    refs: Counter[int] = Counter()
    pv_expected: set[tuple[int, int, int]] = set()
    wired_expected: Counter[int] = Counter()
    linked: set[int] = set()
    for m in _maps(k):
        errs += [f"{m.name}: {e}" for e in m.tree.check()]
        total = 0
        for e in m.entries():
            total += e.end - e.start
            if e.start < m.min or e.end > m.max or e.start >= e.end:
                errs.append(f"{m.name}: entry {e} outside map or empty")
            if e.prot & ~e.max_prot:
                errs.append(f"{m.name}: {e} prot beyond max")
            if e.obj is not None:
                refs[e.obj.id] += 1
                if e.obj.dead:
                    errs.append(f"{m.name}: {e} maps dead object {e.obj.id}")
                if e.obj.kernel is not k or k.objtab.get(e.obj.id) is not e.obj:
                    errs.append(f"{m.name}: {e} maps an object of another kernel")
                if e not in e.obj.mappings:
                    errs.append(f"{m.name}: {e} missing from object {e.obj.id}'s mappings")
                linked.add(id(e))
            elif e.needs_copy:
                errs.append(f"{m.name}: {e} needs copy without object")
        if total != m.size:
            errs.append(f"{m.name}: size {m.size} != {total}")
        for vpn, page in m.wired.items():
            wired_expected[id(page)] += 1
            va = vpn << PAGE_SHIFT
            _, we = resolve(m, va)
            if we is None or not we.wired_count or we.obj is None:
                errs.append(f"{m.name}: wired page at {va:#x} outside a wired entry")
            elif vm_object.lookup(we.obj, we.pindex(va))[2] is not page:
                errs.append(f"{m.name}: wired page {page} at {va:#x} is not the page the entry maps")
        if m.pmap is k.kernel_map.pmap and m is not k.kernel_map:
            continue  # submaps share the kernel pmap; checked through kernel_map
        for vpn, page in m.pmap.rd.items():
            pv_expected.add((id(m.pmap), vpn, id(page)))
            va = vpn << PAGE_SHIFT
            _, te = resolve(m, va)
            if te is None:
                errs.append(f"{m.name}: translation at {va:#x} without entry")
                continue
            e = te
            if not e.prot & PROT_READ:
                errs.append(f"{m.name}: translation at {va:#x} in entry without read")
            if e.obj is None:
                if e.name != "pager":
                    errs.append(f"{m.name}: translation at {va:#x} in objectless entry")
                continue
            _, _, want, _ = vm_object.lookup(e.obj, e.pindex(va))
            if want is not page:
                errs.append(f"{m.name}: translation at {va:#x} maps {page}, chain holds {want}")
            if vpn in m.pmap.wr:
                if m.pmap.wr[vpn] is not page:
                    errs.append(f"{m.name}: wr and rd disagree at {va:#x}")
                if not e.prot & PROT_WRITE or e.needs_copy or page.obj is not e.obj:
                    errs.append(f"{m.name}: writable translation at {va:#x} not allowed ({e})")
        for vpn in m.pmap.wr:
            if vpn not in m.pmap.rd:
                errs.append(f"{m.name}: wr translation {vpn:#x} missing from rd")

    frames: Counter[int] = Counter()
    queued = {id(p) for p in k.queues.active} | {id(p) for p in k.queues.inactive}
    both = {id(p) for p in k.queues.active} & {id(p) for p in k.queues.inactive}
    if both:
        errs.append(f"{len(both)} pages on both queues")
    slots: Counter[int] = Counter()
    wired_pages = 0
    for oid, o in k.objtab.items():
        if o.id != oid or o.dead:
            errs.append(f"object table: {oid} -> {o}")
        if o.kernel is not k:
            errs.append(f"object {o.id} belongs to another kernel")
        for me in o.mappings:
            if id(me) not in linked or me.obj is not o:
                errs.append(f"object {o.id}: stale mapping {me}")
        if o.backing is not None:
            refs[o.backing.id] += 1
            if o.backing.kernel is not k:
                errs.append(f"object {o.id} is backed by an object of another kernel")
            if o not in o.backing.shadows:
                errs.append(f"object {o.id} missing from its backing's shadow set")
        for s in o.shadows:
            if s.backing is not o:
                errs.append(f"object {o.id}: shadow {s.id} does not point back")
        for pindex, page in o.pages.items():
            frames[page.frame] += 1
            if page.obj is not o or page.pindex != pindex:
                errs.append(f"object {o.id}: page {page} keyed at {pindex}")
            if page.wire_count:
                wired_pages += 1
                if page.wire_count != wired_expected.get(id(page), 0):
                    errs.append(f"{page}: wire_count {page.wire_count} != {wired_expected.get(id(page), 0)}")
                if id(page) in queued:
                    errs.append(f"{page}: wired but queued")
            elif id(page) not in queued and not page.busy:
                errs.append(f"{page}: pageable but on no queue")
            for pm, vpn in page.pv:
                if (id(pm), vpn, id(page)) not in pv_expected:
                    errs.append(f"{page}: pv entry {vpn:#x} without translation")
            if not page.dirty and not page.busy:
                slot = o.swap.get(pindex)
                sum_ = _ZERO_SUM if slot is None or k.swap is None else k.swap.sums[slot]
                if hypercall.checksum(page.addr) != sum_:
                    errs.append(f"{page}: clean but differs from its {'swap copy' if slot is not None else 'zeros'}")
        for slot in o.swap.values():
            slots[slot] += 1
        if o.pindex_bound_errors():
            errs.append(f"object {o.id}: pages beyond its size")
        leaked = _unreached(o)
        if leaked:
            errs.append(f"object {o.id}: {len(leaked)} pages/slots nothing can reach, e.g. pindex {leaked[:5]}")
    for oid, o in k.objtab.items():
        nrefs = refs[oid] + o.handles + (o.window is not None)
        if o.ref_count != nrefs:
            errs.append(f"object {oid}: ref_count {o.ref_count} != {nrefs} (entries+shadows+handles+window)")
    npv = sum(len(p.pv) for o in k.objtab.values() for p in o.pages.values())
    if npv > len(pv_expected):
        errs.append(f"{npv} pv entries for {len(pv_expected)} translations")
    if wired_pages != k.queues.wired:
        errs.append(f"queues.wired {k.queues.wired} != {wired_pages}")
    stubs = sum(len(w._stubs) for w in k.windows)
    if len(k.queues.active) + len(k.queues.inactive) > sum(len(o.pages) for o in k.objtab.values()) + stubs:
        errs.append("queued pages that belong to no object")
    policy = k.queues.policy
    if policy is not None:  # a policy that tracks pages: its own structures agree with the queues
        errs.extend(policy.errors(k.queues))
    for page in k.io_pages:
        if not page.busy:
            errs.append(f"{page}: in the I/O set but not busy")
        if page.obj is None:
            frames[page.frame] += 1  # disowned mid-I/O; freed when the I/O ends
    for pool in k.pooltab.values():
        for f in pool.frames:
            frames[f] += 1
        if pool.inuse > pool.npages * pool.perpage:
            errs.append(f"pool {pool.name}: {pool.inuse} items in {pool.npages} pages")
    for r in k.reservations:
        for f in r.frames:
            frames[f] += 1
    total = k.physmem.total_frames
    strays = [f for f in frames if not 0 <= f < total]
    if strays:
        errs.append(f"frames not from this kernel's arenas: {strays[:10]}")
    for o in k.objtab.values():
        for page in o.pages.values():
            if 0 <= page.frame < total and k.physmem.frame_location(page.frame)[0] != page.addr:
                errs.append(f"{page}: address {page.addr:#x} is not its frame's")
    free = Counter(k.physmem.free_frames)
    dup = [f for f, c in (frames + free).items() if c > 1]
    if dup:
        errs.append(f"frames owned twice: {dup[:10]}")
    if sum(frames.values()) != k.physmem.frames_in_use:
        errs.append(f"frames in use {k.physmem.frames_in_use} != owned {sum(frames.values())}")
    if len(free) + k.physmem.frames_in_use != k.physmem.total_frames:
        errs.append("free + used frames != total frames")
    epool = k.pooltab["vm_map_entry"]
    nentries = sum(m.tree.count for m in _maps(k))
    if epool.inuse != nentries:
        errs.append(f"vm_map_entry pool inuse {epool.inuse} != {nentries} entries")
    if k.pooltab["vm_object"].inuse != len(k.objtab):
        errs.append(f"vm_object pool inuse {k.pooltab['vm_object'].inuse} != {len(k.objtab)} objects")
    for w in k.windows:  # a window's slots are its own, one per page
        for slot in w._slots:
            slots[slot] += 1
    if k.swap is not None:
        if any(c > 1 for c in slots.values()):
            errs.append("a swap slot is used twice")
        held = len(slots) + len(k.pagedaemon.inflight)
        if k.swap.inuse != held or any(not k.swap.slotmap[s] for s in slots):
            errs.append(f"swap inuse {k.swap.inuse} != {held} slots referenced or being written")
        if k.swap.slotmap.count(1) != k.swap.inuse:
            errs.append("swap slot map disagrees with its count")
    elif slots:
        errs.append("swap slots without swap")
    charged = sum(a.size for a in k.kmem.km_arenas.values()) + (k.swap.bookkeeping_bytes if k.swap else 0)
    charged += sum(w._budget for w in k.windows) << PAGE_SHIFT
    if k.physmem.charged != charged:
        errs.append(f"charged {k.physmem.charged} != swap bookkeeping + km arenas + window budgets {charged}")
    errs.extend(_window_errors(k))
    if k.physmem.limit is not None and k.physmem.resident > k.physmem.limit:
        errs.append(f"resident {k.physmem.resident} > limit {k.physmem.limit}")
    return errs


def _unreached(o: VMObject) -> list[int]:
    """Pindexes of `o`'s pages and slots outside every range that can reach them."""
    ranges = vm_object.reached(o, kernel_by_mappings=True)
    starts = [a for a, _ in ranges]
    out = []
    for pindex in (*o.pages, *o.swap):
        i = bisect_right(starts, pindex) - 1
        if i < 0 or pindex >= ranges[i][1]:
            out.append(pindex)
    return sorted(out)


def _window_errors(k: Kernel) -> list[str]:
    """Host windows: the engine within its charged budget, and no rumpvm
    page or slot shadowing a window page (it would be a second copy)."""
    errs = []
    for w in k.windows:
        o, lo, hi = w._obj, w._first, w._first + w._npages
        inside = [i for i in (*o.pages, *o.swap) if lo <= i < hi]
        if inside:
            errs.append(f"{w!r}: object {o.id} has rumpvm pages or slots in the window's range: {inside[:5]}")
        if o.window is not w:
            errs.append(f"{w!r}: object {o.id} does not point back at its window")
        hw = w._hw
        if hw is None:  # closing: its stubs left the queues when it was marked
            if w._stubs:
                errs.append(f"{w!r}: closing with {len(w._stubs)} stubs left")
            continue
        s = hw.stats()
        if s["resident"] > s["budget"] or (s["budget"] != w._budget and not w._busy):
            errs.append(f"{w!r}: engine resident {s['resident']} budget {s['budget']}, charged {w._budget}")
        for i, stub in w._stubs.items():
            if stub.obj is not o or stub.pindex != lo + i or stub.frame != -1 or not (stub.queue or w._busy):
                errs.append(f"{w!r}: stub {stub} for page {i} is not a queued stub of the window's object")
                break
        if len(w._stubs) > s["resident"] + s["pending"] and not w._busy:  # stubs lag by the undrained events
            errs.append(f"{w!r}: {len(w._stubs)} stubs for {s['resident']} resident pages "
                        f"({s['pending']} events not drained)")
    return errs
