"""/vm end to end: a real FUSE mount of a real kernel, read with real tools.

Each test mounts the kernel of the `kernel` fixture in its tmp_path and
uses cat, dd, ls, stat, readlink, od, hexdump and Python's open() on it:
the tree and its permissions, the Linux formats and their values, memory
files (bytes, errors, side-effect freedom, writes through the VM), control
files, and what happens when processes and objects go away.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusemount import (
    STATUS_LINE,
    STATUS_VM_LINE,
    SWAPS_HEADER,
    SWAPS_LINE,
    THP_LINE,
    VMFLAGS_LINE,
    VMSTAT_LINE,
    check_kb_line,
    check_maps_line,
    mounted,
    run,
)
from pages import settle

from mountd import render
from rumpvm import MAP_ANON, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE
from rumpvm.constants import VM_MAXUSER_ADDRESS

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE
BASE = 0x3_0000_0000


@pytest.fixture
def vm(kernel, tmp_path: Path) -> Iterator[Path]:
    with mounted(kernel, tmp_path / "vm") as root:
        yield root


@pytest.fixture
def swap_vm(small_kernel, tmp_path: Path) -> Iterator[Path]:
    with mounted(small_kernel, tmp_path / "vm") as root:
        yield root


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes of (i * 7 + seed) mod 256: distinct per seed, period 256."""
    period = bytes((i * 7 + seed) & 0xFF for i in range(256))
    return (period * (n // 256 + 1))[:n]


def read_mem(path: Path, addr: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, addr)
    finally:
        os.close(fd)


def os_error(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno  # type: ignore[no-any-return]


# -- the tree ----------------------------------------------------------------

def test_tree_layout_modes_and_owner(kernel, vm: Path) -> None:
    p = kernel.spawn(name="layout")
    listing = run("ls", vm).stdout.split()
    assert listing == sorted(["meminfo", "vmstat", "limit", "swaps", "pagedaemon", "proc", "objects", "kmem"])
    assert run("ls", vm / "pagedaemon").stdout.split() == ["freemin", "freetarg", "policy", "status"]
    assert str(p.pid) in run("ls", vm / "proc").stdout.split()
    assert run("ls", vm / "proc" / str(p.pid)).stdout.split() == ["limits", "maps", "mem", "smaps", "status"]
    assert "pools" in os.listdir(vm / "kmem") and "kernel_map" in os.listdir(vm / "kmem")
    expected = {
        "": 0o555, "proc": 0o555, f"proc/{p.pid}": 0o555, "meminfo": 0o444, "vmstat": 0o444,
        "swaps": 0o444, "pagedaemon/status": 0o444, f"proc/{p.pid}/maps": 0o444,
        f"proc/{p.pid}/smaps": 0o444, f"proc/{p.pid}/status": 0o444, "kmem/pools": 0o444,
        "limit": 0o644, "pagedaemon/policy": 0o644, "pagedaemon/freemin": 0o644,
        "pagedaemon/freetarg": 0o644, f"proc/{p.pid}/mem": 0o600,
    }
    for rel, mode in expected.items():
        st = os.stat(vm / rel)
        assert stat.S_IMODE(st.st_mode) == mode, rel
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), rel
    # `stat` the tool agrees, and ls -l shows the same permissions.
    assert run("stat", "-c", "%a %u", vm / "limit").stdout.split() == ["644", str(os.getuid())]
    assert run("ls", "-l", vm / "proc" / str(p.pid) / "mem").stdout.startswith("-rw------- ")
    assert os.stat(vm).st_ino == 1


def test_text_files_have_size_zero_and_read_whole(kernel, vm: Path) -> None:
    """Text and control files report st_size 0, as Linux's /proc does (a
    true size would cost a render per stat); every reader still gets the
    whole text, because it reads to EOF.  Memory files keep their sizes."""
    p = kernel.spawn(name="sizes")
    p.mmap(4 * P)
    d = vm / "proc" / str(p.pid)
    texts = [vm / "meminfo", vm / "vmstat", vm / "limit", vm / "swaps", vm / "kmem" / "pools",
             *(vm / "pagedaemon").iterdir(), *(path for path in d.iterdir() if path.name != "mem")]
    for path in texts:
        st = os.stat(path)
        assert (st.st_size, st.st_blocks) == (0, 0), path
        data = path.read_bytes()
        assert data and run("wc", "-c", path).stdout.split()[0] == str(len(data)), path
    assert run("ls", "-l", d / "maps").stdout.split()[4] == "0"
    assert os.stat(d / "mem").st_size == VM_MAXUSER_ADDRESS


def test_big_maps_every_reader_agrees_with_render(kernel, vm: Path) -> None:
    """maps and smaps of a process with thousands of entries (several FUSE
    reads each) read the same with cat, dd, wc -c, tail, less and
    Python's open().read(): the in-process rendering, byte for byte."""
    p = kernel.spawn(name="big")
    for i in range(4000):  # one page every other page: the gaps keep entries apart
        p.mmap(P, RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=BASE + 2 * i * P)
        if i % 3 == 0:
            p.write(BASE + 2 * i * P, b"x")
    maps = render.maps(p.maps())
    smaps = render.smaps(p.smaps())
    assert len(maps) > 128 << 10 and maps.count("\n") == 4000  # more than one 128 KiB read
    d = vm / "proc" / str(p.pid)
    for path, text in ((d / "maps", maps), (d / "smaps", smaps)):
        assert run("cat", path).stdout == text
        assert path.read_text() == text
        with open(path, "rb") as f:
            assert f.read() == text.encode()
        assert run("wc", "-c", path).stdout.split()[0] == str(len(text))
        assert run("less", path).stdout == text  # not a terminal: less copies the whole file
        assert run("tail", "-n", "2", path).stdout == "".join(text.splitlines(keepends=True)[-2:])
    assert run("dd", f"if={d / 'maps'}", "bs=1000", "status=none").stdout == maps  # reads across requests


def test_text_snapshot_per_open(kernel, vm: Path) -> None:
    """A text file is rendered at open: reads of one open file in small
    chunks (dd bs=7 on the open descriptor) see the text of that moment
    even when the process changes between them; the next open sees the
    change."""
    p = kernel.spawn(name="snap")
    p.mmap(2 * P, RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=BASE)
    maps = vm / "proc" / str(p.pid) / "maps"
    before = render.maps(p.maps())
    fd = os.open(maps, os.O_RDONLY)
    try:
        dd = ["dd", "bs=7", "status=none"]  # reads fd 0: the shared descriptor and its offset
        head = subprocess.run([*dd, "count=3"], stdin=fd, capture_output=True, text=True, check=True).stdout
        p.mmap(P, PROT_READ, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=BASE + 8 * P)
        p.mprotect(BASE, P, PROT_READ)
        tail = subprocess.run(dd, stdin=fd, capture_output=True, text=True, check=True).stdout
    finally:
        os.close(fd)
    assert len(head) == 21 and head + tail == before
    after = render.maps(p.maps())
    assert after != before and len(after.splitlines()) == 3
    assert run("dd", f"if={maps}", "bs=7", "status=none").stdout == after == maps.read_text()


def test_inodes_stable_while_alive_then_enoent(kernel, vm: Path) -> None:
    p = kernel.spawn(name="short")
    a = p.mmap(P)
    p.write(a, b"bye")
    d = vm / "proc" / str(p.pid)
    inos = {name: os.stat(d / name).st_ino for name in ("maps", "mem", "status")}
    p.mmap(P)
    assert {name: os.stat(d / name).st_ino for name in inos} == inos
    mem_fd = os.open(d / "mem", os.O_RDONLY)
    maps_fd = os.open(d / "maps", os.O_RDONLY)
    try:
        snapshot = os.read(maps_fd, 1 << 20)
        p.exit()
        assert os_error(os.stat, d / "maps") == errno.ENOENT
        assert os_error(os.stat, d) == errno.ENOENT
        assert str(p.pid) not in os.listdir(vm / "proc")
        assert os_error(os.pread, mem_fd, 3, a) == errno.ESRCH
        # An open text file keeps its snapshot, like a file read in one go.
        assert os.pread(maps_fd, 1 << 20, 0) == snapshot
        assert run("cat", d / "maps", check=False).returncode != 0
    finally:
        os.close(mem_fd)
        os.close(maps_fd)
    # Bad names never alias a live process.
    q = kernel.spawn(name="other")
    for name in (f"0{q.pid}", f"+{q.pid}", "abc", "99999999999999999999"):
        assert os_error(os.stat, vm / "proc" / name) == errno.ENOENT


# -- formats and values --------------------------------------------------------

def maps_of(path: Path) -> list[tuple[int, int, str, int, int, str]]:
    rows = []
    for line in path.read_text().splitlines():
        m = check_maps_line(line)
        rows.append((int(m["start"], 16), int(m["end"], 16), m["perms"], int(m["offset"], 16),
                     int(m["inode"]), m["name"] or ""))
    return rows


def test_maps_match_the_api(kernel, vm: Path) -> None:
    p = kernel.spawn(name="maps")
    a = p.mmap(8 * P, RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=BASE)
    p.mprotect(a + 2 * P, 2 * P, PROT_READ)
    o = kernel.create_object(4 * P)
    p.mmap(4 * P, RW, MAP_SHARED, addr=BASE + 16 * P, obj=o)
    p.write(a, b"x")
    want = [(e.start, e.end, ("r" if e.prot & PROT_READ else "-") + ("w" if e.prot & PROT_WRITE else "-")
             + "-" + ("s" if e.shared else "p"), e.offset, e.object or 0, e.name) for e in p.maps()]
    assert maps_of(vm / "proc" / str(p.pid) / "maps") == want
    perms = [row[2] for row in want]
    assert "r--p" in perms and "rw-s" in perms
    # cat (a real reader) sees the same bytes as Python.
    assert run("cat", vm / "proc" / str(p.pid) / "maps").stdout == (vm / "proc" / str(p.pid) / "maps").read_text()


def test_smaps_status_values(kernel, vm: Path) -> None:
    p = kernel.spawn(name="smaps")
    a = p.mmap(16 * P)
    p.write(a, pattern(3 * P))
    p.mlock(a, P)
    blocks: list[dict[str, int]] = []
    for line in (vm / "proc" / str(p.pid) / "smaps").read_text().splitlines():
        if line.startswith("VmFlags:"):
            assert VMFLAGS_LINE.fullmatch(line), line
        elif line.startswith("THPeligible:"):
            assert THP_LINE.fullmatch(line), line
        elif line.endswith(" kB"):
            m = check_kb_line(line)
            blocks[-1][m["label"]] = int(m["value"])
        else:
            check_maps_line(line)
            blocks.append({})
    infos = p.smaps()
    assert len(blocks) == len(infos)
    for block, info in zip(blocks, infos, strict=True):
        assert block["Size"] == (info.entry.end - info.entry.start) >> 10
        assert block["Rss"] == info.rss >> 10 and block["Pss"] == info.pss >> 10
        assert block["Referenced"] == info.referenced >> 10 and block["Swap"] == info.swap >> 10
        assert block["Locked"] == info.locked >> 10 and block["Private_Dirty"] == info.private_dirty >> 10
    assert sum(b["Rss"] for b in blocks) == 12  # the 3 pages written
    status = (vm / "proc" / str(p.pid) / "status").read_text().splitlines()
    fields = {}
    for line in status:
        m = STATUS_LINE.fullmatch(line) or STATUS_VM_LINE.fullmatch(line)
        assert m is not None, line
        fields[m["label"]] = m["value"].strip()
    st = p.status()
    assert fields["Name"] == "smaps" and fields["Pid"] == str(p.pid) and fields["PPid"] == str(st.ppid)
    assert fields["State"] == st.state
    assert int(fields["VmSize"]) == st.vm_size >> 10 and int(fields["VmRSS"]) == st.vm_rss >> 10
    assert int(fields["VmLck"]) == st.vm_lck >> 10 == 4 and int(fields["VmSwap"]) == st.vm_swap >> 10


def kernel_view(kernel) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    """Everything the global files show, from the kernel's own API."""
    return (kernel.meminfo(), kernel.stats(), kernel.pagedaemon.status(), kernel.pools(),
            kernel.kmem_maps(), kernel.swaps())


def read_settled(kernel, read):  # type: ignore[no-untyped-def]
    """`read()` at a settled moment, with the kernel's view of that moment:
    the daemon is idle, and the view is the same before and after the read
    (so the file and the API saw one state, and reading changed nothing)."""
    settle(kernel)
    before = kernel_view(kernel)
    got = read()
    assert kernel_view(kernel) == before, "the kernel changed while /vm was read"
    return got, before


def test_meminfo_vmstat_kmem_formats(kernel, vm: Path) -> None:
    p = kernel.spawn(name="busy")  # something to count: pages, a wired page, a shared object
    a = p.mmap(16 * P)
    p.write(a, pattern(5 * P))
    p.mlock(a, P)
    o = kernel.create_object(4 * P)
    p.write(p.mmap(4 * P, RW, MAP_SHARED, obj=o), b"shared")
    (meminfo, vmstat, status, pools, kernel_map), (kmem, stats, pdstatus, kpools, kmaps, _) = read_settled(
        kernel, lambda: ((vm / "meminfo").read_text().splitlines(), run("cat", vm / "vmstat").stdout.splitlines(),
                         (vm / "pagedaemon" / "status").read_text().splitlines(),
                         (vm / "kmem" / "pools").read_text().splitlines(),
                         (vm / "kmem" / "kernel_map").read_text().splitlines()))
    # meminfo: Linux's format, the kernel's labels in its order, its values in kB.
    rows = [check_kb_line(line) for line in meminfo]
    assert [m["label"] for m in rows] == list(kmem)
    assert [m["label"] for m in rows][:3] == ["MemTotal", "MemFree", "MemAvailable"]
    assert {m["label"]: int(m["value"]) for m in rows} == {label: v >> 10 for label, v in kmem.items()}
    assert kmem["Mlocked"] == P and kmem["AnonPages"] >= 6 * P  # the values are about this workload
    # vmstat: `name value`, the kernel's counters exactly.
    assert all(VMSTAT_LINE.fullmatch(line) for line in vmstat), vmstat
    assert [tuple(line.split()) for line in vmstat] == [(k, str(v)) for k, v in stats.items()]
    assert stats["zerofills"] >= 6 and stats["procs"] >= 1
    # pagedaemon/status: the daemon's own status.
    assert [tuple(line.split(" ", 1)) for line in status] == [(k, str(v)) for k, v in pdstatus.items()]
    assert pdstatus["state"] == "sleeping" and pdstatus["policy"] == kernel.pagedaemon.policy
    # kmem: the maps and pools, row for row.
    assert kmaps[0].name == "kernel_map"
    assert [(int(m["start"], 16), int(m["end"], 16)) for m in map(check_maps_line, kernel_map)] \
        == [(e.start, e.end) for e in kmaps[0].entries]
    assert pools[0].split() == ["Name", "Size", "InUse", "Npages", "Nget", "Nput"]
    assert [row.split() for row in pools[1:]] \
        == [[q.name, *map(str, (q.size, q.inuse, q.npages, q.nget, q.nput))] for q in kpools]
    assert any(q.inuse > 0 for q in kpools)


def test_swaps_format(small_kernel, swap_vm: Path) -> None:
    k = small_kernel
    p = k.spawn(name="swapper")
    a = p.mmap(24 << 20)  # over the 16M limit: some pages go to swap
    for off in range(0, 24 << 20, P):
        p.write(a + off, b"x")
    lines, (*_, swaps) = read_settled(k, lambda: (swap_vm / "swaps").read_text().splitlines())
    assert lines[0] == SWAPS_HEADER
    assert len(lines) == 1 + len(swaps) == 2
    m = SWAPS_LINE.fullmatch(lines[1])
    assert m is not None, lines[1]
    path = re.sub(r"\\([0-7]{3})", lambda o: chr(int(o[1], 8)), m["path"])  # Linux escapes " \t\n\\"
    assert (path, m["type"], int(m["size"]), int(m["used"]), int(m["prio"])) \
        == (swaps[0].path, swaps[0].type, swaps[0].size >> 10, swaps[0].used >> 10, swaps[0].priority)
    assert swaps[0].used == k.stats()["swpginuse"] * P > 0


# -- memory files --------------------------------------------------------------

def test_mem_bytes_equal_proc_read(kernel, vm: Path) -> None:
    p = kernel.spawn(name="mem")
    a = p.mmap(8 * P, RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=BASE)
    data = pattern(5 * P + 123)
    p.write(a + 100, data)
    mem = vm / "proc" / str(p.pid) / "mem"
    assert read_mem(mem, a, 8 * P) == p.read(a, 8 * P)
    dd = run("dd", f"if={mem}", "bs=4096", f"skip={a}", "count=8", "iflag=skip_bytes", "status=none", text=False)
    assert dd.stdout == p.read(a, 8 * P)
    hexdump = run("hexdump", "-C", "-s", str(a + 100), "-n", "16", mem).stdout
    assert hexdump.splitlines()[0].startswith(f"{a + 100:08x}  " + " ".join(f"{b:02x}" for b in data[:8]))
    od = run("od", "-A", "x", "-t", "x1", "-j", str(a + 100), "-N", "4", mem).stdout
    assert od.split()[1:5] == [f"{b:02x}" for b in data[:4]]
    # Never-written pages read as zeros; a read stops at the first unmapped page.
    assert read_mem(mem, a + 7 * P, P) == bytes(P)
    assert read_mem(mem, a + 6 * P, 4 * P) == bytes(2 * P)
    assert os_error(read_mem, mem, BASE - 4 * P, 16) == errno.EIO
    assert run("cat", mem, check=False).returncode != 0  # offset 0 is unmapped
    # At and past the end of the address space: EOF, never a crash.
    assert read_mem(mem, os.stat(mem).st_size, 16) == b""
    assert read_mem(mem, 1 << 62, 16) == b""
    # Object data by offset.
    o = kernel.create_object(4 * P)
    b = p.mmap(4 * P, RW, MAP_SHARED, obj=o)
    p.write(b + P, b"shared bytes")
    obj_id = o.id
    objdata = vm / "objects" / str(obj_id) / "data"
    assert os.stat(objdata).st_size == 4 * P
    assert objdata.read_bytes() == kernel.object_peek(obj_id, 0, 4 * P)
    assert read_mem(objdata, 5 * P, 10) == b""


def snapshot(kernel, p) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    return (kernel.stats(), kernel.meminfo(), p.smaps(), kernel.objects())


def test_reading_changes_nothing(kernel, vm: Path) -> None:
    p = kernel.spawn(name="quiet")
    a = p.mmap(64 * P)
    p.write(a, pattern(8 * P))
    c = p.fork()  # shadow chains and shared pages, too
    before = snapshot(kernel, p), snapshot(kernel, c)
    for proc in (p, c):
        d = vm / "proc" / str(proc.pid)
        assert read_mem(d / "mem", a, 64 * P) == pattern(8 * P) + bytes(56 * P)
        for name in ("maps", "smaps", "status"):
            run("cat", d / name)
    run("cat", vm / "meminfo", vm / "vmstat")
    for obj in kernel.objects():
        # The first 64 KiB only: the kernel object spans the whole kernel_map.
        read_mem(vm / "objects" / str(obj.id) / "data", 0, 16 * P)
        (vm / "objects" / str(obj.id) / "info").read_text()
    assert (snapshot(kernel, p), snapshot(kernel, c)) == before


def test_reading_swapped_memory_changes_nothing(small_kernel, swap_vm: Path) -> None:
    k = small_kernel
    p = k.spawn(name="swapper")
    size = 24 << 20  # over the 16M limit: some pages must be on swap
    a = p.mmap(size)
    for off in range(0, size, 1 << 20):
        p.write(a + off, pattern(1 << 20, off >> 20))
    settle(k)  # the pagedaemon has finished: nothing moves unless /vm moves it
    before = snapshot(k, p)
    assert any(o.swapped for o in k.objects()), "nothing was paged out"
    mem = swap_vm / "proc" / str(p.pid) / "mem"
    for off in range(0, size, 1 << 20):
        assert read_mem(mem, a + off, 1 << 20) == pattern(1 << 20, off >> 20)
    assert snapshot(k, p) == before


def test_mem_writes_go_through_the_vm(kernel, vm: Path) -> None:
    p = kernel.spawn(name="writer")
    a = p.mmap(4 * P, RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=BASE)
    p.write(a, b"parent")
    c = p.fork()
    mem = vm / "proc" / str(p.pid) / "mem"
    fd = os.open(mem, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"through fuse", a + 10) == 12
        assert p.read(a + 10, 12) == b"through fuse"
        assert c.read(a, 16) == b"parent" + bytes(10)  # copy-on-write honoured
        # dd as a writer (no truncation of the output file).
        run("dd", f"of={mem}", "bs=1", f"seek={a + 2 * P}", "conv=notrunc", "status=none", input="dd!")
        assert p.read(a + 2 * P, 3) == b"dd!"
        p.mprotect(a + P, P, PROT_READ)
        assert os_error(os.pwrite, fd, b"no", a + P) == errno.EACCES
        assert p.read(a + P, 2) == bytes(2)
        assert os_error(os.pwrite, fd, b"no", BASE - P) == errno.EIO
        # A write that crosses into an unmapped page changes nothing.
        assert os_error(os.pwrite, fd, b"z" * 8, a + 4 * P - 4) == errno.EIO
        assert p.read(a + 4 * P - 4, 4) == bytes(4)
    finally:
        os.close(fd)
    o = kernel.create_object(2 * P)
    obj_id = o.id
    b = p.mmap(2 * P, RW, MAP_SHARED, obj=o)
    data = vm / "objects" / str(obj_id) / "data"
    with open(data, "r+b", buffering=0) as f:
        f.seek(P)
        f.write(b"object write")
    assert p.read(b + P, 12) == b"object write"
    os.truncate(data, 0)  # accepted (O_TRUNC of a memory file) and changes nothing
    assert os.stat(data).st_size == 2 * P and p.read(b + P, 12) == b"object write"
    with open(data, "r+b", buffering=0) as f:
        f.seek(2 * P)
        assert os_error(f.write, b"past the end") == errno.EFBIG


def test_objects_and_backing_links(kernel, vm: Path) -> None:
    p = kernel.spawn(name="chain")
    a = p.mmap(2 * P)
    p.write(a, b"before fork")
    c = p.fork()
    c.write(a, b"child")  # the child's entry now has a shadow over the shared original
    linked = [o for o in kernel.objects() if o.shadow is not None]
    assert linked
    for o in linked:
        d = vm / "objects" / str(o.id)
        assert os.readlink(d / "backing") == f"../{o.shadow}"
        assert run("readlink", d / "backing").stdout.strip() == f"../{o.shadow}"
        assert run("ls", "-l", d / "backing").stdout.rstrip().endswith(f"-> ../{o.shadow}")
        assert os.path.samefile(d / "backing", vm / "objects" / str(o.shadow))
        info = dict(line.split(" ", 1) for line in (d / "info").read_text().splitlines())
        assert info["shadow"] == str(o.shadow) and info["size"] == str(o.size)
        assert info["resident"] == str(o.resident) and info["refs"] == str(o.refs)
    plain = [o for o in kernel.objects() if o.shadow is None]
    assert plain and "backing" not in os.listdir(vm / "objects" / str(plain[0].id))
    assert os_error(os.readlink, vm / "objects" / str(plain[0].id) / "backing") == errno.ENOENT
    assert os_error(os.readlink, vm / "meminfo") == errno.EINVAL


# -- control files -------------------------------------------------------------

def write_control(path: Path, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def test_limit_accepts_and_rejects(kernel, vm: Path) -> None:
    limit = vm / "limit"
    assert limit.read_text() == "unlimited\n"
    run("sh", "-c", f"echo 32M > {limit}")
    assert kernel.memlimit == 32 << 20 and limit.read_text() == f"{32 << 20}\n"
    for text, value in [(b"  64m \n", 64 << 20), (b"1g", 1 << 30), (b"40000000\n", 40000000),
                        (b"512K", 512 << 10), (b"unlimited\n", None), (b"48M\n", 48 << 20)]:
        assert write_control(limit, text) == len(text)
        assert kernel.memlimit == value, text
    run("sh", "-c", f"echo 56M >> {limit}")  # the offset does not matter
    assert kernel.memlimit == 56 << 20
    for bad in (b"bogus\n", b"-5", b"12x", b"\n", b"", b"1.5G", b"32 M", b"\xff\xfe", b"32M 64M"):
        if bad:
            assert os_error(write_control, limit, bad) == errno.EINVAL, bad
        assert kernel.memlimit == 56 << 20, bad
    # A 1 GiB write is refused at its first chunk, not buffered.
    dd = run("dd", "if=/dev/zero", f"of={limit}", "bs=1M", "count=1024", "status=none", check=False)
    assert dd.returncode != 0 and "File too large" in dd.stderr
    assert kernel.memlimit == 56 << 20
    assert os_error(write_control, limit, b"1" * 5000) == errno.EFBIG


def test_pagedaemon_knobs(kernel, vm: Path) -> None:
    pd = vm / "pagedaemon"
    assert (pd / "policy").read_text() == f"{kernel.pagedaemon.policy}\n"
    for policy in ("lru", "fifo", "2q", "s3fifo", "sieve", "wsclock", "clock"):
        run("sh", "-c", f"echo {policy} > {pd / 'policy'}")
        assert kernel.pagedaemon.policy == policy
    for bad in (b"nonsense\n", b"LRU LRU", b"123"):
        assert os_error(write_control, pd / "policy", bad) == errno.EINVAL
        assert kernel.pagedaemon.policy == "clock"
    freemin, freetarg = kernel.pagedaemon.freemin, kernel.pagedaemon.freetarg
    write_control(pd / "freetarg", f"{freetarg + 8}\n".encode())
    write_control(pd / "freemin", f"{freemin + 4}\n".encode())
    assert (kernel.pagedaemon.freemin, kernel.pagedaemon.freetarg) == (freemin + 4, freetarg + 8)
    assert (pd / "freemin").read_text() == f"{freemin + 4}\n"
    for bad in (b"-1", b"4k", b"x", f"{freetarg + 9}".encode()):  # the last: freemin above freetarg
        assert os_error(write_control, pd / "freemin", bad) == errno.EINVAL, bad
        assert kernel.pagedaemon.freemin == freemin + 4


def test_read_only_files_and_namespace(kernel, vm: Path) -> None:
    p = kernel.spawn(name="ro")
    for path in (vm / "meminfo", vm / "proc" / str(p.pid) / "maps", vm / "pagedaemon" / "status"):
        assert os_error(os.open, path, os.O_WRONLY) == errno.EACCES  # even for root
        assert os_error(os.truncate, path, 0) == errno.EACCES
    assert run("sh", "-c", f"echo x > {vm / 'vmstat'}", check=False).returncode != 0
    assert os_error(os.mkdir, vm / "new") == errno.EPERM
    assert os_error(os.unlink, vm / "meminfo") == errno.EPERM
    assert os_error(os.rename, vm / "meminfo", vm / "x") == errno.EPERM
    assert os_error(os.chmod, vm / "limit", 0o666) == errno.EPERM
    assert os_error(os.open, vm / "created", os.O_CREAT | os.O_WRONLY) == errno.EPERM
    assert os_error(os.open, vm / "proc" / "meminfo", os.O_RDONLY) == errno.ENOENT
    assert os_error(os.listdir, vm / "meminfo") == errno.ENOTDIR
    # Reads past EOF of a text file are empty; the daemon is still fine.
    fd = os.open(vm / "meminfo", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 1 << 40) == b""
        assert os.pread(fd, 100, 1 << 62) == b""
    finally:
        os.close(fd)
    assert (vm / "meminfo").read_text().startswith("MemTotal:")
