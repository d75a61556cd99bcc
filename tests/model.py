"""A plain, page-granular reference model of rumpvm's user address spaces.

This is the oracle of `test_model_stateful.py`: it must be obviously right,
so it is deliberately naive.  An address space is a dict

    vpn -> Page(prot, max_prot, inheritance, shared, group)

and the bytes of every page live in `Model.mem[group]` (one bytearray of
PAGE_SIZE per *sharing group*).  Two pages that must see each other's writes
(a MAP_SHARED object page mapped twice, an INHERIT_SHARE page after fork)
hold the same group id; a private copy (INHERIT_COPY at fork) gets a fresh
group with a copy of the bytes.  Copy-on-write is invisible at this level:
the model copies eagerly, the kernel lazily, and the bytes must agree.

Every operation first checks exactly what DESIGN.md's errno table says and
raises `ModelError(errno)` / `ModelSegv(addr, access, code)` without touching
anything (a failed call changes nothing), then applies the change.

Semantics encoded here (DESIGN.md "Public API", the BSD seeds, POSIX):
- lengths are rounded up to whole pages; zero/negative length, an unaligned
  address or offset, unknown prot/flag/inheritance/advice bits, an overflow
  of addr+length, or a range outside [VM_MIN_ADDRESS, VM_MAXUSER_ADDRESS)
  -> EINVAL;
- a prot argument may carry PROT_MAX(m) (FreeBSD 13, README): mmap sets the
  page's max_prot to m (PROT_ALL without it); cur beyond m -> EINVAL;
  mprotect with PROT_MAX(m) lowers max_prot to m (m beyond the current
  max_prot -> EACCES), without it cur beyond max_prot -> EACCES;
- mmap without MAP_FIXED: first fit at or after the hint; MAP_FIXED replaces
  whatever was mapped in the range; MAP_SHARED
  mappings inherit INHERIT_SHARE (FreeBSD vm_mmap: "shared memory is also
  shared with children"), MAP_PRIVATE ones INHERIT_COPY;
- munmap of unmapped space is fine (POSIX);
- mprotect/madvise need the whole range mapped (ENOMEM), mprotect beyond an
  entry's max protection -> EACCES;
- minherit is not in the ENOMEM row: as FreeBSD's vm_map_inherit it sets the
  inheritance of whatever is mapped in the range and skips holes;
- mlock needs the range mapped and readable (ENOMEM) and the wired total
  within the wired limit (ENOMEM); munlock/msync need it mapped (ENOMEM);
  mlock is not nested: one munlock unwires;
- read/write check the whole range first; the first page that is unmapped
  (SEGV_MAPERR) or lacks the needed protection (SEGV_ACCERR) faults, with
  `addr` the first byte of the range inside that page; nothing is copied;
- fork: INHERIT_SHARE pages are shared with the child, INHERIT_COPY pages
  copied, INHERIT_NONE pages left out; prot, max_prot, inheritance carry over.
"""

from __future__ import annotations

import copy
import errno
from dataclasses import dataclass, field

from rumpvm.constants import (
    INHERIT_COPY,
    INHERIT_SHARE,
    INHERIT_VALID,
    MADV_VALID,
    MAP_FIXED,
    MAP_FLAGS_VALID,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_ALL,
    PROT_READ,
    PROT_WRITE,
    VM_MAXUSER_ADDRESS,
    VM_MIN_ADDRESS,
)

PAGE_MASK = PAGE_SIZE - 1


class ModelError(Exception):
    """The call must fail with VMError(errno) and change nothing."""

    def __init__(self, err: int, why: str = "") -> None:
        super().__init__(f"{errno.errorcode.get(err, err)}: {why}")
        self.errno = err


class ModelSegv(Exception):
    """The access must raise SegmentationFault(addr, access, code)."""

    def __init__(self, addr: int, access: int, code: str) -> None:
        super().__init__(f"SEGV {code} access={access} at {addr:#x}")
        self.addr = addr
        self.access = access
        self.code = code


@dataclass
class Page:
    prot: int
    max_prot: int
    inheritance: int
    # True: mapped MAP_SHARED; False: MAP_PRIVATE; None: not specified by the
    # design (a private page shared by INHERIT_SHARE, a shared page copied
    # into a child by INHERIT_COPY) -> not compared.
    shared: bool | None
    group: int  # key into Model.mem; equal groups see each other's writes
    wired: bool = False  # mlock'd (not inherited by a child)


@dataclass
class Space:
    """One process's address space: mapped pages plus opaque reserved ranges.

    `reserved` holds [start, end) byte ranges the kernel mapped by itself
    (e.g. a stack at spawn); the model never touches them but counts them as
    occupied when placing non-fixed mappings.
    """

    pages: dict[int, Page] = field(default_factory=dict)
    reserved: list[tuple[int, int]] = field(default_factory=list)

    def occupied(self, vpn: int) -> bool:
        if vpn in self.pages:
            return True
        a = vpn * PAGE_SIZE
        return any(s <= a < e for s, e in self.reserved)


def _round_len(length: int) -> int:
    return (length + PAGE_MASK) & ~PAGE_MASK


class Model:
    """All address spaces of one kernel plus the anonymous objects."""

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self._next_group = 1
        # (object key, page index) -> group; object key -> size in pages
        self.obj_pages: dict[tuple[int, int], int] = {}
        self.obj_size: dict[int, int] = {}
        self._object_groups: set[int] = set()
        self.shared_groups: set[int] = set()

    # -- helpers -------------------------------------------------------

    def new_group(self, data: bytes | bytearray | None = None) -> int:
        g = self._next_group
        self._next_group += 1
        self.mem[g] = bytearray(data) if data is not None else bytearray(PAGE_SIZE)
        return g

    def is_shared_group(self, g: int) -> bool:
        """Whether more than one page ever referred to this group's bytes."""
        return g in self.shared_groups or g in self._object_groups

    def create_object(self, key: int, size: int) -> None:
        self.obj_size[key] = _round_len(size) // PAGE_SIZE

    def object_group(self, key: int, pgidx: int) -> int:
        g = self.obj_pages.get((key, pgidx))
        if g is None:
            g = self.obj_pages[(key, pgidx)] = self.new_group()
            self._object_groups.add(g)
        return g

    @staticmethod
    def split_prot(prot: int) -> tuple[int, int | None]:
        """(cur, max or None) of a prot argument; EINVAL for bad bits."""
        if prot < 0 or prot & ~(PROT_ALL | PROT_ALL << 16):
            raise ModelError(errno.EINVAL, "bad prot")
        cur, mx = prot & PROT_ALL, (prot >> 16) & PROT_ALL
        if mx and cur & ~mx:
            raise ModelError(errno.EINVAL, "prot beyond its own PROT_MAX")
        return cur, (mx or None)

    @staticmethod
    def check_range(addr: int, length: int) -> tuple[int, int]:
        """EINVAL checks common to every range call; returns (vpn, npages)."""
        if addr & PAGE_MASK:
            raise ModelError(errno.EINVAL, "unaligned address")
        if length <= 0:
            raise ModelError(errno.EINVAL, "zero or negative length")
        end = addr + _round_len(length)
        if addr < VM_MIN_ADDRESS or end > VM_MAXUSER_ADDRESS or end < addr:
            raise ModelError(errno.EINVAL, "range outside user space")
        return addr // PAGE_SIZE, (end - addr) // PAGE_SIZE

    @staticmethod
    def require_mapped(sp: Space, vpn: int, n: int) -> None:
        for v in range(vpn, vpn + n):
            if v not in sp.pages:
                raise ModelError(errno.ENOMEM, f"page {v * PAGE_SIZE:#x} not mapped")

    # -- the API -------------------------------------------------------

    def mmap(
        self,
        sp: Space,
        length: int,
        prot: int,
        flags: int,
        addr: int = 0,
        obj: int | None = None,
        offset: int = 0,
    ) -> int | None:
        """Returns the address, or None when the kernel may choose (hint 0)."""
        self.split_prot(prot)
        if flags & ~MAP_FLAGS_VALID:
            raise ModelError(errno.EINVAL, "bad flags")
        if (flags & MAP_SHARED) and (flags & MAP_PRIVATE):
            raise ModelError(errno.EINVAL, "MAP_SHARED|MAP_PRIVATE")
        if length <= 0:
            raise ModelError(errno.EINVAL, "zero or negative length")
        if offset < 0 or offset & PAGE_MASK:
            raise ModelError(errno.EINVAL, "bad offset")
        npages = _round_len(length) // PAGE_SIZE
        if obj is not None and offset // PAGE_SIZE + npages > self.obj_size[obj]:
            raise ModelError(errno.EINVAL, "beyond the object")
        if flags & MAP_FIXED:
            vpn, npages = self.check_range(addr, length)
        else:
            if addr == 0:
                return None
            if addr & PAGE_MASK:
                raise ModelError(errno.EINVAL, "unaligned hint")
            vpn = max(addr, VM_MIN_ADDRESS) // PAGE_SIZE
            while True:
                clash = [v for v in range(vpn, vpn + npages) if sp.occupied(v)]
                if not clash:
                    break
                vpn = clash[-1] + 1
            if (vpn + npages) * PAGE_SIZE > VM_MAXUSER_ADDRESS:
                raise ModelError(errno.ENOMEM, "no space")
        self.place(sp, vpn, npages, prot, flags, obj, offset)
        return vpn * PAGE_SIZE

    def place(
        self, sp: Space, vpn: int, npages: int, prot: int, flags: int,
        obj: int | None, offset: int,
    ) -> None:
        """Install a mapping at vpn (after the kernel chose it, or fixed)."""
        prot, mx = self.split_prot(prot)
        shared = bool(flags & MAP_SHARED)
        inh = INHERIT_SHARE if shared else INHERIT_COPY
        if shared and obj is None:
            # MAP_SHARED|MAP_ANON: a fresh shared object of its own.
            obj = ("anon", vpn, self._next_group)  # type: ignore[assignment]
            self.obj_size[obj] = npages
        for i in range(npages):
            if obj is not None and shared:
                g = self.object_group(obj, offset // PAGE_SIZE + i)
            elif obj is not None:
                # MAP_PRIVATE of an object: a private copy of its contents.
                src = self.obj_pages.get((obj, offset // PAGE_SIZE + i))
                g = self.new_group(self.mem[src] if src else None)
            else:
                g = self.new_group()
            sp.pages[vpn + i] = Page(prot, mx or PROT_ALL, inh, shared, g)

    def munmap(self, sp: Space, addr: int, length: int) -> None:
        vpn, n = self.check_range(addr, length)
        for v in range(vpn, vpn + n):
            sp.pages.pop(v, None)

    def mprotect(self, sp: Space, addr: int, length: int, prot: int) -> None:
        vpn, n = self.check_range(addr, length)
        cur, mx = self.split_prot(prot)
        self.require_mapped(sp, vpn, n)
        for v in range(vpn, vpn + n):
            if (mx if mx else cur) & ~sp.pages[v].max_prot:
                raise ModelError(errno.EACCES, "beyond max_prot")
        for v in range(vpn, vpn + n):
            if mx:
                sp.pages[v].max_prot = mx
            sp.pages[v].prot = cur

    def minherit(self, sp: Space, addr: int, length: int, inh: int) -> None:
        if inh not in INHERIT_VALID:
            raise ModelError(errno.EINVAL, "bad inheritance")
        vpn, n = self.check_range(addr, length)
        for v in range(vpn, vpn + n):
            if v in sp.pages:
                sp.pages[v].inheritance = inh

    def madvise(self, sp: Space, addr: int, length: int, advice: int) -> None:
        """Contents are kept for every advice but MADV_FREE (not modelled)."""
        if advice not in MADV_VALID:
            raise ModelError(errno.EINVAL, "bad advice")
        vpn, n = self.check_range(addr, length)
        self.require_mapped(sp, vpn, n)

    def mlock(self, sp: Space, addr: int, length: int, wired_now: int = 0,
              wired_limit: int | None = None) -> None:
        """`wired_now`: pages wired by mlock in all spaces; limit in bytes."""
        vpn, n = self.check_range(addr, length)
        self.require_mapped(sp, vpn, n)
        pages = [sp.pages[v] for v in range(vpn, vpn + n)]
        if any(not pg.prot & PROT_READ for pg in pages):
            raise ModelError(errno.ENOMEM, "cannot wire pages without read access")
        new = sum(1 for pg in pages if not pg.wired)
        if wired_limit is not None and (wired_now + new) * PAGE_SIZE > wired_limit:
            raise ModelError(errno.ENOMEM, "over the wired limit")
        for pg in pages:
            pg.wired = True

    def munlock(self, sp: Space, addr: int, length: int) -> None:
        vpn, n = self.check_range(addr, length)
        self.require_mapped(sp, vpn, n)
        for v in range(vpn, vpn + n):
            sp.pages[v].wired = False

    def msync(self, sp: Space, addr: int, length: int) -> None:
        vpn, n = self.check_range(addr, length)
        self.require_mapped(sp, vpn, n)

    def _access(self, sp: Space, addr: int, length: int, need: int) -> None:
        first = addr // PAGE_SIZE
        last = (addr + length - 1) // PAGE_SIZE
        for v in range(first, last + 1):
            bad = max(addr, v * PAGE_SIZE)
            pg = sp.pages.get(v)
            if pg is None:
                raise ModelSegv(bad, need, "SEGV_MAPERR")
            if not pg.prot & need:
                raise ModelSegv(bad, need, "SEGV_ACCERR")

    def read(self, sp: Space, addr: int, length: int) -> bytes:
        self._access(sp, addr, length, PROT_READ)
        return self.peek(sp, addr, length)

    def write(self, sp: Space, addr: int, data: bytes) -> None:
        self._access(sp, addr, len(data), PROT_WRITE)
        pos = 0
        while pos < len(data):
            a = addr + pos
            off = a & PAGE_MASK
            chunk = min(PAGE_SIZE - off, len(data) - pos)
            buf = self.mem[sp.pages[a // PAGE_SIZE].group]
            buf[off:off + chunk] = data[pos:pos + chunk]
            pos += chunk

    def peek(self, sp: Space, addr: int, length: int) -> bytes:
        """The bytes regardless of protection; all pages must be mapped."""
        out = bytearray()
        pos = 0
        while pos < length:
            a = addr + pos
            off = a & PAGE_MASK
            chunk = min(PAGE_SIZE - off, length - pos)
            out += self.mem[sp.pages[a // PAGE_SIZE].group][off:off + chunk]
            pos += chunk
        return bytes(out)

    def fork(self, sp: Space) -> Space:
        child = Space(reserved=list(sp.reserved))
        for v, pg in sp.pages.items():
            if pg.inheritance == INHERIT_SHARE:
                shared = pg.shared if pg.shared else None
                child.pages[v] = Page(pg.prot, pg.max_prot, pg.inheritance, shared, pg.group)
                self.shared_groups.add(pg.group)
                if pg.shared is False:
                    pg.shared = None  # parent's entry is now shared too
            elif pg.inheritance == INHERIT_COPY:
                shared = False if pg.shared is False else None
                g = self.new_group(self.mem[pg.group])
                child.pages[v] = Page(pg.prot, pg.max_prot, pg.inheritance, shared, g)
        return child

    @staticmethod
    def runs(sp: Space) -> list[tuple[int, int]]:
        """Maximal runs of consecutive mapped pages as (vpn, npages)."""
        out: list[tuple[int, int]] = []
        for v in sorted(sp.pages):
            if out and out[-1][0] + out[-1][1] == v:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((v, 1))
        return out


def snapshot(sp: Space) -> Space:
    """A deep copy of a space's page table (for 'nothing changed' checks)."""
    return copy.deepcopy(sp)
