"""Core dumps (rumpvm/coredump.py): the walk of an address space into
segments (uvm_coredump_walkmap) and the ELF core file written from them.

The walk: one segment per map entry; entries without PROT_WRITE or
PROT_READ, or marked MADV_NOCORE, are not dumped; dumped segments carry the
runs of the pages that have contents (resident or on swap) and leave
untouched pages out; nothing is paged in or allocated.  The file: an ELF64
x86-64 ET_CORE that readelf, pyelftools and gdb read back, with mode 0600,
sparse (an untouched 8 GiB mapping is a hole).

The first tests call `coredump.walk`/`coredump.write_core` directly; the
API tests at the end use `Proc.coredump_segments()` and `Proc.coredump()`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest
from elftools.elf.elffile import ELFFile
from pages import pattern, settle

import rumpvm
from rumpvm import MADV_CORE, MADV_NOCORE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE, coredump
from rumpvm import PAGE_SIZE as P
from rumpvm.coredump import CoreSegment

GIB = 1 << 30
PRIV_PAGES = 1024  # 4 MiB under a 2 MiB limit: written pages go to swap


@dataclass
class Scene:
    k: rumpvm.Kernel
    p: rumpvm.Proc
    priv: int  # rw private, pages i % 4 != 3 written, the rest untouched
    ro: int  # written, then made read-only: not dumped
    hidden: int  # written, MADV_NOCORE: not dumped
    guard: int  # PROT_NONE: not dumped
    shared: int  # rw MAP_SHARED object mapping, pages 1 and 5 written
    big: int  # 8 GiB rw, untouched: dumped as one hole


MARKER = b"gdb reads this from the core\0"


def build(k: rumpvm.Kernel) -> Scene:
    p = k.spawn(name="corecase")
    priv = p.mmap(PRIV_PAGES * P)
    for i in range(PRIV_PAGES):
        if i % 4 != 3:
            p.write(priv + i * P, pattern(1, i))
    ro = p.mmap(4 * P)
    p.write(ro, b"read-only text")
    p.mprotect(ro, 4 * P, PROT_READ)
    hidden = p.mmap(2 * P)
    p.write(hidden, b"secret")
    p.madvise(hidden, 2 * P, MADV_NOCORE)
    guard = p.mmap(2 * P, prot=PROT_NONE)
    obj = k.create_object(8 * P)
    shared = p.mmap(8 * P, flags=MAP_SHARED, obj=obj)
    p.write(shared + P, MARKER)
    p.write(shared + 5 * P, pattern(2, 5))
    big = p.mmap(8 * GIB)
    return Scene(k, p, priv, ro, hidden, guard, shared, big)


def counters(k: rumpvm.Kernel) -> dict[str, int]:
    settle(k)
    s = k.stats()
    out = {n: s[n] for n in ("pageins", "resident", "faults", "zerofills", "cowfaults", "swpginuse",
                             "active", "inactive", "objects")}
    with k.lock:  # the pages' referenced bits (the MMU's; no counter keeps them)
        out["referenced"] = sum(pg.referenced for q in (k.queues.active, k.queues.inactive) for pg in q)
    return out


def pages_of(seg: CoreSegment) -> dict[int, bytes]:
    """The runs of one segment as {page vaddr: page bytes}, checking that
    they are page-aligned, whole pages, inside the entry, sorted and disjoint."""
    out: dict[int, bytes] = {}
    last_end = seg.entry.start
    for va, data in seg.runs:
        assert va % P == 0 and len(data) % P == 0 and len(data) > 0, (hex(va), len(data))
        assert last_end <= va and va + len(data) <= seg.entry.end, (hex(va), len(data), seg.entry)
        last_end = va + len(data)
        for off in range(0, len(data), P):
            out[va + off] = bytes(data[off:off + P])
    return out


def by_start(segs: list[CoreSegment]) -> dict[int, CoreSegment]:
    return {s.entry.start: s for s in segs}


def check_segments(sc: Scene, segs: list[CoreSegment]) -> None:
    """The walk's segments for the scene: one per entry, the dump decisions,
    and runs holding exactly the written pages."""
    p = sc.p
    assert [s.entry for s in segs] == p.maps()
    seg = by_start(segs)
    dumped = {a for a, s in seg.items() if s.dump}
    assert {sc.priv, sc.shared, sc.big} <= dumped
    assert not {sc.ro, sc.hidden, sc.guard} & dumped
    for s in segs:
        # Dumped exactly when readable, writable and not MADV_NOCORE.
        assert s.dump == bool(s.entry.prot & PROT_READ and s.entry.prot & PROT_WRITE and not s.entry.nocore)
        assert s.stack == (s.entry.name == "[stack]")
        if not s.dump:
            assert s.runs == []
    assert seg[sc.big].entry.end - sc.big == 8 * GIB and seg[sc.big].runs == []
    priv = pages_of(seg[sc.priv])
    assert sorted(priv) == [sc.priv + i * P for i in range(PRIV_PAGES) if i % 4 != 3]
    assert all(priv[sc.priv + i * P] == pattern(1, i) for i in range(PRIV_PAGES) if i % 4 != 3)
    assert pages_of(seg[sc.shared]) == {sc.shared + P: MARKER + bytes(P - len(MARKER)),
                                        sc.shared + 5 * P: pattern(2, 5)}
    # What a core reader reconstructs (absent pages as zeros) is the memory.
    for a in (sc.priv, sc.shared):
        e = seg[a].entry
        image = bytearray(e.end - e.start)
        for va, data in pages_of(seg[a]).items():
            image[va - e.start:va - e.start + P] = data
        assert bytes(image) == p.peek(e.start, e.end - e.start)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(argv[0])
    assert tool is not None, f"{argv[0]} not found: scripts/setup.sh installs gdb and binutils"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGINFOD")}
    env["LC_ALL"] = "C"
    return subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=60, env=env)


def check_core(path: str, sc: Scene, segs: list[CoreSegment]) -> None:
    """Read the core back with readelf, pyelftools and gdb."""
    p = sc.p
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o600
    assert st.st_size > 8 * GIB
    # Sparse: the 8 GiB hole and the untouched pages cost no disk.
    assert st.st_blocks * 512 < 64 << 20, st.st_blocks

    # readelf: a core file, one LOAD per walked entry with its range, flags
    # and file size, and the two notes.
    r = run("readelf", "-h", "-l", "-n", "-W", path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"Type:\s+CORE \(Core file\)", r.stdout)
    assert re.search(r"Machine:\s+Advanced Micro Devices X86-64", r.stdout)
    assert "NT_PRSTATUS" in r.stdout and "NT_PRPSINFO" in r.stdout
    loads = [(int(m[1], 16), int(m[3], 16), int(m[2], 16), m[4].replace(" ", ""))
             for m in re.findall(r"^\s*LOAD\s+(0x\w+)\s+(0x\w+)\s+0x\w+\s+(0x\w+)\s+(0x\w+)\s+([RWE ]+?)\s+0x1000$",
                                 r.stdout, re.M)]

    def flags(prot: int) -> str:
        return ("R" if prot & PROT_READ else "") + ("W" if prot & PROT_WRITE else "") + ("E" if prot & 4 else "")

    assert loads == [(s.entry.start, s.entry.end - s.entry.start, s.entry.end - s.entry.start if s.dump else 0,
                      flags(s.entry.prot)) for s in segs]
    assert re.search(r"^\s*NOTE\s", r.stdout, re.M).start() < r.stdout.index("LOAD")  # type: ignore[union-attr]

    # pyelftools: the headers, the notes' contents, and every dumped
    # segment's bytes at its file offset equal the process's memory.
    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert (elf["e_type"], elf["e_machine"], elf.elfclass, elf.little_endian) == ("ET_CORE", "EM_X86_64", 64, True)
        phdrs = list(elf.iter_segments())
        assert phdrs[0]["p_type"] == "PT_NOTE" and len(phdrs) == 1 + len(segs)
        notes = {n["n_type"]: n for n in phdrs[0].iter_notes()}
        assert set(notes) == {"NT_PRSTATUS", "NT_PRPSINFO"} and {n["n_name"] for n in notes.values()} == {"CORE"}
        prstatus = notes["NT_PRSTATUS"]["n_descdata"]
        assert len(prstatus) == 336 and struct.unpack_from("<ii", prstatus, 32) == (p.pid, p.ppid)
        assert prstatus[112:328] == bytes(216)  # registers zero
        ps = notes["NT_PRPSINFO"]["n_desc"]
        assert notes["NT_PRPSINFO"]["n_descsz"] == 136
        assert (ps.pr_pid, ps.pr_ppid) == (p.pid, p.ppid)
        assert (ps.pr_fname, ps.pr_psargs) == (b"corecase".ljust(16, b"\0"), b"corecase".ljust(80, b"\0"))
        assert (ps.pr_sname, ps.pr_state) == (b"R", 0)
        for s, ph in zip(segs, phdrs[1:], strict=True):
            e = s.entry
            assert ph["p_type"] == "PT_LOAD" and ph["p_offset"] % P == 0 and ph["p_align"] == P
            assert (ph["p_vaddr"], ph["p_memsz"]) == (e.start, e.end - e.start)
            assert ph["p_filesz"] == (e.end - e.start if s.dump else 0)
            if not s.dump:
                continue
            big = e.start == sc.big  # sample the 8 GiB hole; read everything else
            windows = [(0, P), (4 * GIB - 3, 2 * P), (8 * GIB - P, P)] if big else [(0, e.end - e.start)]
            for off, n in windows:
                f.seek(ph["p_offset"] + off)
                assert f.read(n) == p.read(e.start + off, n), (hex(e.start), off)

    # gdb, with no executable: the process, its load segments, and memory
    # read through the core (a written string; a hole reads as zeros).
    r = run("gdb", "--batch", "-nx", f"--core={path}", "-ex", "info proc", "-ex", "info files",
            "-ex", f"x/s {sc.shared + P:#x}", "-ex", f"x/2gx {sc.big + 4 * GIB:#x}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exe = 'corecase'" in r.stdout
    listed = re.findall(r"^\s*(0x[0-9a-f]+) - (0x[0-9a-f]+) is load(\d+)$", r.stdout, re.M)
    assert [(int(a, 16), int(b, 16), int(i)) for a, b, i in listed] == \
        [(s.entry.start, s.entry.end, i) for i, s in enumerate(segs, 1)]
    assert f'"{MARKER[:-1].decode()}"' in r.stdout
    assert re.search(rf"{sc.big + 4 * GIB:#x}:\s+0x0{{16}}\s+0x0{{16}}", r.stdout)


@pytest.fixture(scope="module")
def scene():
    with rumpvm.Kernel(memlimit="2M", swap="16M") as k:
        yield build(k)
        k.check()


def test_walk_and_write_leave_memory_alone(scene, tmp_path):
    """The walk and the write page nothing in, allocate nothing, set no
    referenced bit; the segments hold exactly the written pages, including
    those on swap."""
    k, p = scene.k, scene.p
    before = counters(k)
    assert k.stats()["pageouts"] > 0 and any(s.swap for s in p.smaps() if s.entry.start == scene.priv), \
        "nothing on swap: the walk would not be tested on swapped pages"
    with k.gate:
        segs = coredump.walk(k, p.vmspace)
    coredump.write_core(str(tmp_path / "core"), segs, p.name, p.pid, p.ppid)
    assert counters(k) == before
    check_segments(scene, segs)
    assert counters(k) == before


def test_core_file_reads_back(scene, tmp_path):
    k, p = scene.k, scene.p
    with k.gate:
        segs = coredump.walk(k, p.vmspace)
    path = str(tmp_path / "core")
    coredump.write_core(path, segs, p.name, p.pid, p.ppid)
    check_core(path, scene, segs)


def test_nocore_toggles_and_stack_flag(scene):
    k, p = scene.k, scene.p
    p.madvise(scene.hidden, 2 * P, MADV_CORE)
    try:
        with k.gate:
            seg = by_start(coredump.walk(k, p.vmspace))[scene.hidden]
        assert seg.dump and pages_of(seg) == {scene.hidden: b"secret" + bytes(P - 6)}
    finally:
        p.madvise(scene.hidden, 2 * P, MADV_NOCORE)
    # The stack is told by the entry's name (set here by hand on the entry).
    with k.gate:
        found, e = p.vmspace.lookup_entry(scene.guard)
        assert found
        old, e.name = e.name, "[stack]"
        try:
            seg = by_start(coredump.walk(k, p.vmspace))[scene.guard]
        finally:
            e.name = old
    assert seg.stack and not seg.dump and seg.runs == []


def test_write_core_file_handling(tmp_path):
    """Errors carry the host errno; an existing file is replaced and made
    0600; a symlink, a device or a directory is refused; bad arguments
    create nothing."""
    e = rumpvm.MapEntry(P, 3 * P, PROT_READ | PROT_WRITE, 7, 1, False, False, 1, 0, 0)
    segs = [CoreSegment(e, False, True, [(2 * P, b"x" * P)])]
    with pytest.raises(rumpvm.VMError) as ei:
        coredump.write_core(str(tmp_path / "no" / "core"), segs, "n", 1, 0)
    assert ei.value.errno == errno.ENOENT
    for target in (str(tmp_path), os.devnull):
        with pytest.raises(rumpvm.VMError) as ei:
            coredump.write_core(target, segs, "n", 1, 0)
        assert ei.value.errno in (errno.EISDIR, errno.EACCES), target
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(rumpvm.VMError) as ei:
        coredump.write_core(str(tmp_path / "link"), segs, "n", 1, 0)
    assert ei.value.errno == errno.ELOOP and victim.read_bytes() == b"keep"
    os.link(victim, tmp_path / "hardlink")
    with pytest.raises(rumpvm.VMError) as ei:
        coredump.write_core(str(victim), segs, "n", 1, 0)
    assert ei.value.errno == errno.EACCES and victim.read_bytes() == b"keep"
    # An existing file of ours: truncated, rewritten, mode 0600.
    old = tmp_path / "old"
    old.write_bytes(b"y" * 5 * P)
    old.chmod(0o644)
    coredump.write_core(str(old), segs, "n", 1, 0)
    data = old.read_bytes()
    assert old.stat().st_mode & 0o777 == 0o600 and data[:4] == b"\x7fELF"
    assert data[-2 * P:] == bytes(P) + b"x" * P  # the hole, then the run
    # Bad state letter, run outside its segment: EINVAL, nothing created.
    for kw, bad in (({"state": "Q"}, segs), ({}, [CoreSegment(e, False, True, [(4 * P, b"x" * P)])])):
        with pytest.raises(rumpvm.VMError) as ei:
            coredump.write_core(str(tmp_path / "bad"), bad, "n", 1, 0, **kw)
        assert ei.value.errno == errno.EINVAL and not (tmp_path / "bad").exists()


def test_prpsinfo_state_and_long_name(tmp_path):
    path = str(tmp_path / "core")
    name = "a-process-name-longer-than-sixteen-bytes"
    coredump.write_core(path, [], name, 7, 3, state="Z (zombie)")
    with open(path, "rb") as f:
        elf = ELFFile(f)
        (note,) = [n for n in next(elf.iter_segments()).iter_notes() if n["n_type"] == "NT_PRPSINFO"]
        ps = note["n_desc"]
        assert (ps.pr_state, ps.pr_sname, ps.pr_zomb, ps.pr_pid, ps.pr_ppid) == (4, b"Z", 1, 7, 3)
        assert (ps.pr_fname, ps.pr_psargs) == (name.encode()[:16], name.encode().ljust(80, b"\0"))


def test_many_segments_use_pn_xnum(tmp_path):
    """More than 65534 segments: e_phnum is PN_XNUM and section header 0
    holds the count (readelf understands it)."""
    n = 70000
    segs = [CoreSegment(rumpvm.MapEntry((2 * i + 1) * P, (2 * i + 2) * P, PROT_READ, 7, 1, False, False,
                                        None, 0, 0), False, False, []) for i in range(n)]
    path = str(tmp_path / "core")
    coredump.write_core(path, segs, "many", 1, 0)
    r = run("readelf", "-h", path)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"Number of program headers:\s+65535 \({n + 1}\)", r.stdout), r.stdout
    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert elf.num_segments() == n + 1
        last = elf.get_segment(n)
        assert (last["p_vaddr"], last["p_memsz"], last["p_filesz"]) == ((2 * n - 1) * P, P, 0)


# -- through the process API ----------------------------------------------------------


def test_proc_coredump(scene, tmp_path):
    """p.coredump_segments() is the walk; p.coredump(path) writes the same
    core; both refuse an exited process."""
    k, p = scene.k, scene.p
    before = counters(k)
    segs = p.coredump_segments()
    assert counters(k) == before
    with k.gate:
        assert segs == coredump.walk(k, p.vmspace)
    check_segments(scene, segs)
    path = str(tmp_path / "core")
    p.coredump(path)
    check_core(path, scene, segs)
    with pytest.raises(rumpvm.VMError) as ei:
        p.coredump(str(tmp_path / "missing" / "core"))
    assert ei.value.errno == errno.ENOENT
    child = p.fork()
    child.exit()
    for call in (child.coredump_segments, lambda: child.coredump(str(tmp_path / "child"))):
        with pytest.raises(rumpvm.VMError) as ei:
            call()
        assert ei.value.errno == errno.ESRCH
