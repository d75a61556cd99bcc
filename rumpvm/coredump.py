"""Core dumps: the walk of an address space into core segments
(uvm_coredump_walkmap, NetBSD uvm_glue.c 1.60) and an ELF64 x86-64 core
file written from them (ET_CORE, as Linux and NetBSD write them).

What it owns.  `CoreSegment` (one map entry of a core: its record, whether
it is the stack, whether its contents are dumped, and the runs of its pages
that have contents), `walk` (entries -> segments) and `write_core`
(segments -> file).  It owns no kernel state: `walk` only reads the map
through the inspection reads (`peek_runs`), and `write_core` touches only
the core file.

Lock rule.  `walk` runs with the kernel lock held by its caller (`with
k.gate:`), so the map cannot change under it; the segments it returns are
frozen records and plain bytes, safe to keep once the lock is dropped.
`write_core` must be called *without* the kernel lock: it does host file
I/O, and no lock is held across host I/O (kernel.py).

Invariants.
- One segment per map entry below VM_MAXUSER_ADDRESS, in address order (an
  entry reaching past the limit is clipped to it); nothing else is walked.
- `dump` is False for an entry without PROT_WRITE (as uvm_glue.c 1.60:
  read-only text comes from the executable), without PROT_READ, or marked
  MADV_NOCORE; a segment that is not dumped has no runs and p_filesz 0.
- `runs` are page-aligned (address, bytes) runs of whole pages inside the
  entry, sorted and disjoint, holding exactly the pages with contents
  (resident or swapped anywhere in the shadow chain).  Untouched memory is
  never materialised: the walk pages nothing in, allocates no page and
  sets no referenced bit.
- The core file is sparse: a dumped segment occupies p_filesz == p_memsz
  bytes of file, but only its runs are written; every other page is a hole
  and reads back as zeros, so an untouched 8 GiB mapping costs neither
  memory nor disk.
- The file is created with mode 0600 (it holds memory contents), never
  through a symbolic link, and only as a regular file with one link.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .constants import PAGE_MASK, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE, VM_MAXUSER_ADDRESS
from .errors import VMError, einval
from .inspect import MapEntry, entry_record, peek_runs

if TYPE_CHECKING:
    from .kernel import Kernel
    from .map import VMMap

STACK_NAME = "[stack]"

# ELF constants (elf.h).
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_X = 1
PF_W = 2
PF_R = 4
PN_XNUM = 0xFFFF
NT_PRSTATUS = 1
NT_PRPSINFO = 3

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes (only for PN_XNUM)
_NHDR = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type
# struct elf_prstatus (x86-64): pr_info{signo,code,errno}, pr_cursig, pad,
# pr_sigpend, pr_sighold, pr_pid, pr_ppid, pr_pgrp, pr_sid, four timevals,
# pr_reg (27 x 8, elf_gregset_t), pr_fpvalid, pad.
_PRSTATUS = struct.Struct("<iiih2xQQiiii64s216si4x")
# struct elf_prpsinfo (x86-64): pr_state, pr_sname, pr_zomb, pr_nice, pad,
# pr_flag, pr_uid, pr_gid, pr_pid, pr_ppid, pr_pgrp, pr_sid, pr_fname[16],
# pr_psargs[80].
_PRPSINFO = struct.Struct("<bcbb4xQIIiiii16s80s")
assert _EHDR.size == 64 and _PHDR.size == 56 and _SHDR.size == 64
assert _PRSTATUS.size == 336 and _PRPSINFO.size == 136

# pr_state is the index of the state letter in this string (Linux fill_psinfo).
_STATES = "RSDTZW"


@dataclass(frozen=True, slots=True)
class CoreSegment:
    """One map entry as a core file holds it: `stack` for the "[stack]"
    entry, `dump` whether its contents go into the file, and `runs` the
    (address, bytes) runs of its pages that have contents (empty when not
    dumped; absent pages read as zeros)."""

    entry: MapEntry
    stack: bool
    dump: bool
    runs: list[tuple[int, bytes]]


def walk(k: Kernel, vmap: VMMap) -> list[CoreSegment]:
    """uvm_coredump_walkmap: one segment per entry of `vmap` below the user
    address limit, in address order, each with its dump decision and, when
    dumped, the runs of its pages that have contents.  Side-effect free.

    Lock: the caller holds the kernel lock.  VMError(EIO) if swapped data
    fails its checksum (from peek_runs)."""
    segments: list[CoreSegment] = []
    for e in vmap.entries():
        if e.start >= VM_MAXUSER_ADDRESS:
            continue
        entry = entry_record(e)
        if entry.end > VM_MAXUSER_ADDRESS:
            entry = dataclasses.replace(entry, end=VM_MAXUSER_ADDRESS)
        # A submap in a user map cannot happen (uvm_glue.c panics); never
        # dump through one.
        dump = (bool(e.prot & PROT_WRITE) and bool(e.prot & PROT_READ) and not e.nocore
                and e.submap is None)
        runs: list[tuple[int, bytes]] = []
        if dump:
            # Clip to the (possibly clipped) record; runs are whole pages.
            runs = [(va, data[:entry.end - va]) for va, data in peek_runs(k, vmap, e) if va < entry.end]
        segments.append(CoreSegment(entry, e.name == STACK_NAME, dump, runs))
    return segments


def _pflags(prot: int) -> int:
    return ((PF_R if prot & PROT_READ else 0) | (PF_W if prot & PROT_WRITE else 0)
            | (PF_X if prot & PROT_EXEC else 0))


def _note(ntype: int, desc: bytes) -> bytes:
    """An ELF note named "CORE", name and descriptor each padded to 4 bytes."""
    name = b"CORE\0"
    return (_NHDR.pack(len(name), len(desc), ntype) + name + bytes(-len(name) % 4)
            + desc + bytes(-len(desc) % 4))


def _notes(name: str, pid: int, ppid: int, state: str) -> bytes:
    """NT_PRSTATUS (pid, ppid; no signal, registers zero) and NT_PRPSINFO."""
    letter = state[:1]
    if not letter or letter not in _STATES:
        raise einval(f"process state {state!r}: the first letter must be one of {_STATES}")
    for what, v in (("pid", pid), ("ppid", ppid)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 31:
            raise einval(f"{what} {v!r} out of range")
    prstatus = _PRSTATUS.pack(0, 0, 0, 0, 0, 0, pid, ppid, pid, pid, bytes(64), bytes(216), 0)
    raw = name.encode("utf-8", "replace")
    prpsinfo = _PRPSINFO.pack(_STATES.index(letter), letter.encode(), int(letter == "Z"), 0, 0, 0, 0,
                              pid, ppid, pid, pid, raw[:16], raw[:79])
    return _note(NT_PRSTATUS, prstatus) + _note(NT_PRPSINFO, prpsinfo)


def _check_runs(seg: CoreSegment) -> None:
    e = seg.entry
    if e.start & PAGE_MASK or e.end & PAGE_MASK or e.end <= e.start:
        raise einval(f"segment {e.start:#x}-{e.end:#x} is not a page-aligned range")
    if seg.runs and not seg.dump:
        raise einval(f"segment {e.start:#x}-{e.end:#x} has runs but is not dumped")
    last = e.start
    for va, data in seg.runs:
        if va < last or va + len(data) > e.end:
            raise einval(f"run {va:#x}+{len(data):#x} outside segment {e.start:#x}-{e.end:#x} or unsorted")
        last = va + len(data)


def _layout(segments: list[CoreSegment], notes: bytes) -> tuple[bytes, int]:
    """The ELF header, program headers (and the PN_XNUM section header),
    and the notes, as one block; and the file's total size."""
    phnum = 1 + len(segments)
    xnum = phnum >= PN_XNUM
    shoff = _EHDR.size + phnum * _PHDR.size
    notes_off = shoff + (_SHDR.size if xnum else 0)
    off = (notes_off + len(notes) + PAGE_MASK) & ~PAGE_MASK
    phdrs = [_PHDR.pack(PT_NOTE, 0, notes_off, 0, 0, len(notes), 0, 4)]
    for seg in segments:
        e = seg.entry
        size = e.end - e.start
        filesz = size if seg.dump else 0
        phdrs.append(_PHDR.pack(PT_LOAD, _pflags(e.prot), off, e.start, 0, filesz, size, PAGE_SIZE))
        off += filesz
    ident = b"\x7fELF" + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE]) + bytes(8)
    ehdr = _EHDR.pack(ident, ET_CORE, EM_X86_64, EV_CURRENT, 0, _EHDR.size, shoff if xnum else 0, 0,
                      _EHDR.size, _PHDR.size, PN_XNUM if xnum else phnum,
                      _SHDR.size if xnum else 0, 1 if xnum else 0, 0)
    # With PN_XNUM, section header 0 carries the real count in sh_info.
    shdr = _SHDR.pack(0, 0, 0, 0, 0, 1, 0, phnum, 0, 0) if xnum else b""
    return ehdr + b"".join(phdrs) + shdr + notes, off


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:  # pragma: no cover - a regular file never writes 0 bytes
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n


def _open_core(path: str) -> int:
    """Create or truncate `path` for the core: mode 0600, no symlink, a
    regular file with one link owned by us (as NetBSD's coredump checks),
    and the open never blocks (a FIFO) or takes a controlling tty."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if "\0" in path:
        raise OSError(errno.EINVAL, "a path may not contain a NUL byte")
    fd = os.open(path, flags, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            raise OSError(errno.EACCES, "not a regular file with one link that we own")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)  # O_TRUNC, but only once the file is known to be ours
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_core(path: str, segments: list[CoreSegment], name: str, pid: int, ppid: int,
               state: str = "R") -> None:
    """Write an ELF64 little-endian x86-64 core file (ET_CORE): a PT_NOTE
    with NT_PRSTATUS and NT_PRPSINFO, then one PT_LOAD per segment at a
    page-aligned file offset (p_filesz = p_memsz when dumped, else 0).  Only
    the runs are written; the rest of each dumped segment is a hole.
    `state` is a state letter ("R", "S", "D", "T", "Z", "W"), or a string
    starting with one such as `Proc.state`.

    Lock: the caller does NOT hold the kernel lock (host file I/O).  Errors:
    VMError with the host errno (EACCES, ENOENT for a missing directory,
    ELOOP for a symbolic link, ENOSPC, EFBIG, ...), VMError(EINVAL) for bad
    segments, state or ids (nothing is created then)."""
    for seg in segments:
        _check_runs(seg)
    head, size = _layout(segments, _notes(name, pid, ppid, state))
    try:
        fd = _open_core(path)
        try:
            _pwrite_all(fd, head, 0)
            off = (len(head) + PAGE_MASK) & ~PAGE_MASK
            for seg in segments:
                if not seg.dump:
                    continue
                start = seg.entry.start
                for va, data in seg.runs:
                    _pwrite_all(fd, data, off + (va - start))
                off += seg.entry.end - start
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    except OSError as err:
        if isinstance(err, VMError):
            raise
        raise VMError(err.errno or errno.EIO, f"core {path}: {err.strerror}") from err
