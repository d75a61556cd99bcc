"""/vm against hostile names, a kernel call that blocks, and a kernel that is gone.

- Names: a pid or object id is canonical ASCII decimal only.  Unicode
  digits ("²" is one `int` rejects, "٣" one it accepts), signs,
  spaces and leading zeros are ENOENT for `ls`, `cat` and `stat`, and never
  make the daemon log.
- Blocking: lowering `limit` waits up to `oom_timeout` for the pagedaemon
  (here a stopped one, so it waits until the deadline); meanwhile the
  daemon keeps answering other processes.  The kernel's `VMError` errno is
  what the writer sees (ENOMEM for a limit below what can be freed, EINVAL
  for input that does not parse); a `mem` write that runs out of memory
  part-way is a short write.
- Shutdown: once the kernel answers every call with VMError(ESHUTDOWN),
  every request that reaches it fails with ESHUTDOWN, quietly; an
  unexpected exception is EIO and one log line, and the daemon survives.
- Hostile clients (`HostileClient`, this file run as a script in several
  processes) against the real daemon (`rumpvm mount --demo`): reads and
  writes of every file at random, mapped-adjacent, end-of-file and extreme
  offsets (to 2**63-1) with sizes to 2 GiB, garbage and 100 MB control
  writes, odd calls (xattrs, locks, SEEK_HOLE, mmap, sendfile, O_TRUNC),
  with `ls -lR`/`find -L` walking meanwhile.  The daemon never dies, never
  logs, and answers every request within REQUEST_BOUND.
- Every control file refuses garbage and 100 MB writes and keeps its value.
- Walks (`ls -lR`, `find -L`) while processes fork and exit see entries
  vanish (ENOENT) and nothing else.
- Unmount (SIGTERM of the daemon, `unmount()` in-process) with reads in
  flight: prompt, and the readers see the mount go.  SIGKILL with readers
  and hostile clients in flight: they fail at once (ENOTCONN), and a new
  daemon clears the stale mount.  Throughout, the daemon's swap file is
  open, 0600 and already unlinked (`/proc/<pid>/fd`), and no swap file is
  left in the temp directory.
- `-m stress`: the hostile run with more clients, longer, three times,
  then three SIGKILL-and-restart rounds.

No test sleeps for a duration: they wait for states (the kernel's limit
changing while the writer is still blocked, a thread's end, a reader's
progress file, a client's "started" line) with deadlines, and compare the
order of events.  Subprocess timeouts are hang guards only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import json
import logging
import mmap
import os
import random
import re
import select
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fusemount import POLL, TOOL_TIMEOUT, ensure_dir, mounted, run, wait_live

import rumpvm
from rumpvm import PAGE_SIZE
from rumpvm.constants import VM_MAXUSER_ADDRESS

ENOENT_TEXT = "No such file or directory"

# Names that must never name a process or an object (pid/object 1 exist).
BAD_NAMES = [
    "²",            # superscript two: isdigit() but int() raises
    "¹",
    "٣",            # ARABIC-INDIC DIGIT THREE: int() reads 3
    "\u0661",       # ARABIC-INDIC DIGIT ONE: int() reads 1, an alias of a live pid
    "\U0001d7d9",   # MATHEMATICAL DOUBLE-STRUCK DIGIT ONE
    "\uff11",       # FULLWIDTH DIGIT ONE
    "+1", "-1", " 1", "1 ", "\t1", "01", "00", "1_0", "0x1", "1.0", "1e0",
    "99999999999999999999999999",
]


def tool(*argv: Any, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a real tool in the C locale (English messages); never raises on failure."""
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, input=input,
                          env=env, timeout=TOOL_TIMEOUT, check=False)


def write_with_dd(path: Path, value: str) -> subprocess.CompletedProcess[str]:
    """One write(2) of `value` to a control file by dd, which reports the
    write's own errno (dash's printf and echo say "I/O error" for any)."""
    return tool("dd", f"of={path}", "status=none", input=value)


def mounted_fstype(path: str) -> str | None:
    from mountd.server import mounted_fstype as fstype  # not at import: the clients run this file

    return fstype(path)


def mountd_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mountd"]


@pytest.fixture
def populated(kernel: rumpvm.Kernel) -> rumpvm.Kernel:
    """The `kernel` fixture with a process (pid 1) that has an object (id 1 exists)."""
    p = kernel.spawn(name="target")
    a = p.mmap(4 * PAGE_SIZE)
    p.write(a, b"target")
    assert p.pid == 1 and any(o.id == 1 for o in kernel.objects())
    return kernel


@pytest.fixture
def vm(populated: rumpvm.Kernel, tmp_path: Path) -> Iterator[Path]:
    with mounted(populated, tmp_path / "vm") as root:
        yield root


# -- names -------------------------------------------------------------------

def test_parse_id_accepts_only_canonical_ascii_decimal() -> None:
    import pyfuse3

    from mountd.tree import parse_id

    assert parse_id("0") == 0
    assert parse_id("1") == 1
    assert parse_id("281474976710655") == (1 << 48) - 1
    for name in [*BAD_NAMES, "", "281474976710656", "\udcff"]:
        with pytest.raises(pyfuse3.FUSEError) as info:
            parse_id(name)
        assert info.value.errno == errno.ENOENT, name


@pytest.mark.parametrize("directory", ["proc", "objects"])
def test_hostile_names_are_enoent_for_real_tools(vm: Path, directory: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mountd")
    leaf = "status" if directory == "proc" else "info"
    # The canonical name works: the failures below are about the names.
    assert tool("cat", vm / directory / "1" / leaf).returncode == 0
    for name in BAD_NAMES:
        for argv in (("ls", vm / directory / name),
                     ("cat", vm / directory / name / leaf),
                     ("stat", vm / directory / name)):
            r = tool(*argv)
            assert r.returncode != 0 and ENOENT_TEXT in r.stderr, (argv, r.stderr)
    # Bytes that are not UTF-8 at all.
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(os.fsencode(vm / directory), b"\xb2"))
    assert mountd_records(caplog) == []
    assert tool("cat", vm / directory / "1" / leaf).returncode == 0


def test_non_ascii_digits_in_a_control_value_are_einval(populated: rumpvm.Kernel, vm: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mountd")
    before = populated.memlimit, populated.pagedaemon.freemin
    for path, value in (("limit", "٣M"), ("limit", "\uff132M"), ("limit", "+32M"), ("limit", "32 M"),
                        ("pagedaemon/freemin", "²"), ("pagedaemon/freemin", "-1")):
        r = write_with_dd(vm / path, value)
        assert r.returncode != 0 and "Invalid argument" in r.stderr, (path, value, r.stderr)
    assert (populated.memlimit, populated.pagedaemon.freemin) == before
    assert mountd_records(caplog) == []


# -- a blocking kernel call --------------------------------------------------

M = 1 << 20


def dirty_kernel(request: pytest.FixtureRequest, swap: str | int,
                 stop_pagedaemon: bool = False) -> Iterator[rumpvm.Kernel]:
    """8M limit, oom_timeout 5 s, 6M of dirty anonymous pages."""
    with rumpvm.Kernel(memlimit="8M", swap=swap, oom_timeout=5) as k:
        p = k.spawn(name="hog")
        n = 6 * M // PAGE_SIZE
        a = p.mmap(n * PAGE_SIZE)
        for i in range(n):
            p.write(a + i * PAGE_SIZE, b"dirty")
        if stop_pagedaemon:
            k.pagedaemon.stop()
        yield k
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.passed:
            k.memlimit = "8M"  # (if a lower limit was taken) back above what is resident
            k.check()


@pytest.fixture
def unswappable(request: pytest.FixtureRequest) -> Iterator[rumpvm.Kernel]:
    """No swap: the dirty pages can never be freed, so 4M is refused at once."""
    yield from dirty_kernel(request, swap=0)


@pytest.fixture
def stalled(request: pytest.FixtureRequest) -> Iterator[rumpvm.Kernel]:
    """Swap, so 4M is within what could be freed, but a stopped pagedaemon:
    lowering the limit to 4M waits for it until the deadline (oom_timeout)."""
    yield from dirty_kernel(request, swap="16M", stop_pagedaemon=True)


def _write_limit(root: Path, value: bytes, events: list[tuple[str, int]]) -> None:
    fd = os.open(root / "limit", os.O_WRONLY)
    try:
        os.write(fd, value)
        events.append(("limit", 0))
    except OSError as err:
        events.append(("limit", err.errno or 0))
    finally:
        os.close(fd)


def test_other_requests_are_served_while_a_limit_write_waits(stalled: rumpvm.Kernel, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mountd")
    k = stalled
    events: list[tuple[str, int]] = []
    with mounted(k, tmp_path / "vm") as root:
        writer = threading.Thread(target=_write_limit, args=(root, b"4M\n", events))
        writer.start()
        try:
            # Wait for the state "the kernel took 4M and now waits for the
            # pagedaemon": the write cannot have been answered yet.
            while k.memlimit != 4 * M:
                writer.join(0.005)
                assert writer.is_alive(), f"the limit write returned without waiting: {events}"
            r = tool("cat", root / "meminfo")
            events.append(("meminfo", r.returncode))
            assert r.returncode == 0 and r.stdout.startswith("MemTotal:"), r.stderr
        finally:
            writer.join(TOOL_TIMEOUT)
        assert not writer.is_alive()
    # meminfo was answered while the limit write still waited.
    assert [name for name, _ in events] == ["meminfo", "limit"], events
    # Nothing could be freed by the deadline: ENOMEM and the old limit (a
    # kernel that keeps the new limit after its wait answers success).
    result = events[1][1]
    assert result in (0, errno.ENOMEM), events
    assert k.memlimit == (4 * M if result == 0 else 8 * M)
    assert mountd_records(caplog) == []


def test_kernel_errno_of_a_refused_limit_reaches_the_writer(unswappable: rumpvm.Kernel, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mountd")
    k = unswappable
    with mounted(k, tmp_path / "vm") as root:
        r = write_with_dd(root / "limit", "4M\n")
        assert r.returncode != 0 and "Cannot allocate memory" in r.stderr, r.stderr
        assert k.memlimit == 8 * M
        r = write_with_dd(root / "limit", "4M_\n")
        assert r.returncode != 0 and "Invalid argument" in r.stderr, r.stderr
        assert k.memlimit == 8 * M
        assert write_with_dd(root / "limit", "12M\n").returncode == 0
        assert (root / "limit").read_text() == f"{12 * M}\n"
    assert mountd_records(caplog) == []


# -- a kernel that is gone -----------------------------------------------------

def _attempts(root: Path, pid: int, oid: int, addr: int) -> list[tuple[str, Any]]:
    """One request of every kind that reaches the kernel."""
    def read(path: Path) -> bytes:
        return path.read_bytes()

    def write(path: Path, data: bytes, off: int = 0) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, off)
        finally:
            os.close(fd)

    def pread(path: Path, off: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, 16, off)
        finally:
            os.close(fd)

    return [
        ("ls /", lambda: os.listdir(root)),  # the entries' attributes hold sizes
        ("ls proc", lambda: os.listdir(root / "proc")),
        ("ls objects", lambda: os.listdir(root / "objects")),
        ("ls kmem", lambda: os.listdir(root / "kmem")),
        ("cat meminfo", lambda: read(root / "meminfo")),
        ("cat vmstat", lambda: read(root / "vmstat")),
        ("cat swaps", lambda: read(root / "swaps")),
        ("cat limit", lambda: read(root / "limit")),
        ("cat pagedaemon/status", lambda: read(root / "pagedaemon" / "status")),
        ("cat pagedaemon/policy", lambda: read(root / "pagedaemon" / "policy")),
        ("cat kmem/pools", lambda: read(root / "kmem" / "pools")),
        ("stat proc/pid", lambda: os.stat(root / "proc" / str(pid))),
        ("cat maps", lambda: read(root / "proc" / str(pid) / "maps")),
        ("cat objects/id/info", lambda: read(root / "objects" / str(oid) / "info")),
        ("statfs", lambda: os.statvfs(root)),
        ("echo > limit", lambda: write(root / "limit", b"32M\n")),
        ("echo > policy", lambda: write(root / "pagedaemon" / "policy", b"lru\n")),
        ("echo > freemin", lambda: write(root / "pagedaemon" / "freemin", b"3\n")),
        ("echo > freetarg", lambda: write(root / "pagedaemon" / "freetarg", b"300\n")),
        ("read mem", lambda: pread(root / "proc" / str(pid) / "mem", addr)),
        ("write mem", lambda: write(root / "proc" / str(pid) / "mem", b"x", addr)),
    ]


def test_really_closed_kernel_never_crashes_the_daemon(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The same requests after a real `k.close()`: each one succeeds or fails
    with the kernel's errno (ESHUTDOWN, or ENOENT for the processes it
    dropped), never EIO, and nothing is logged."""
    caplog.set_level(logging.DEBUG, logger="mountd")
    with rumpvm.Kernel() as k, mounted(k, tmp_path / "vm") as root:
        p = k.spawn(name="target")
        addr = p.mmap(4 * PAGE_SIZE)
        p.write(addr, b"target")
        attempts = _attempts(root, p.pid, k.objects()[0].id, addr)
        k.close()
        for what, call in attempts:
            try:
                call()
            except OSError as err:
                assert err.errno in (errno.ESHUTDOWN, errno.ENOENT, errno.ESRCH), (what, err)
        assert os.stat(root).st_ino == 1
    assert mountd_records(caplog) == []


def test_mem_write_that_runs_out_of_memory_is_short_then_enomem(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """No swap, 2M limit: a 4M write through `mem` writes what fits (a short
    write) and the rest fails with ENOMEM; the bytes that made it are there."""
    caplog.set_level(logging.DEBUG, logger="mountd")
    with rumpvm.Kernel(memlimit="2M", oom_timeout=0.2) as k, mounted(k, tmp_path / "vm") as root:
        p = k.spawn(name="big")
        addr = p.mmap(4 * M)
        data = bytes((i * 7) & 0xFF for i in range(256)) * (4 * M // 256)
        fd = os.open(root / "proc" / str(p.pid) / "mem", os.O_WRONLY)
        try:
            done = 0
            with pytest.raises(OSError) as info:
                while done < len(data):
                    done += os.pwrite(fd, data[done:done + M], addr + done)
            assert info.value.errno == errno.ENOMEM
        finally:
            os.close(fd)
        # The writer was told exactly what the kernel wrote: the pages made
        # resident, holding the data (and not a whole-or-nothing answer).
        assert 0 < done < len(data), done
        [entry] = [i for i in p.smaps() if i.entry.start == addr]
        assert entry.rss == done
        assert p.read(addr, done) == data[:done]
        assert (root / "meminfo").read_text().startswith("MemTotal:")
        k.check()
    assert mountd_records(caplog) == []


# -- hostile clients -----------------------------------------------------------
#
# The real daemon (`rumpvm mount --demo`, a child process) against client
# processes that behave as an attacker would.  Every syscall of a client is
# timed; the client stops only after its fixed number of operations.

HANG_GUARD = 300.0  # subprocess timeouts: a hang guard (generous for loaded machines), never a result
# The bound on one syscall.  A request never waits for memory longer than
# the daemon kernel's oom_timeout (3 s; a limit write waits that long for
# the pagedaemon at most), but the host kernel serializes direct-I/O writes
# to one file (FUSE holds the inode lock), so a writer queued behind the
# other clients' writes to the same control file waits for theirs too; and
# a 2 GiB read of the kernel object (16 TiB, zeros) is 16384 requests.
# Measured maximum on a 2-CPU host: 3.5 s (that read, in the stress run).
REQUEST_BOUND = 120.0  # a hang bound, generous for loaded machines: no result depends on speed
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CONTROL_FILES = ("limit", "pagedaemon/policy", "pagedaemon/freemin", "pagedaemon/freetarg")
# Values for control files: garbage, edge cases of the parsers, and valid
# values that change the kernel (a hostile client may also be a root that
# means it).  Limits that need paging ("16M") are there: their wait is the
# one bounded by oom_timeout; so are knobs that keep the pagedaemon busy
# (freemin 8000 and freetarg 8100 of the demo's 8192 pages).
CONTROL_VALUES = [
    b"", b"\n", b"0", b"1", b"-1", b"+1", b"1K", b"72K", b"288K", b"16M", b"32M", b"1G", b"unlimited",
    b"UNLIMITED", b"9223372036854775807", b"9223372036854775808", b"18446744073709551616",
    b"99999999999999999999999999999999G", b"0x20M", b"32m\n", b" 32M ", b"32 M", b"3\xd9\xa3M", b"\xff\xfe",
    b"32M\x00", b"lru", b"fifo", b"random", b"clock", b"LRU", b"nope", b"lru\x00", b"1" * 4096, b"1" * 4097,
    b"8000", b"8100", b"8191",
]
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)  # the daemon is gone


def _iov(buf: bytearray, n: int) -> list[memoryview]:
    """Buffers adding up to `n` bytes, all views of `buf` (a 2 GiB request
    costs the client len(buf) bytes of memory, not 2 GiB)."""
    view = memoryview(buf)
    full, rest = divmod(n, len(buf))
    return [view] * full + ([view[:rest]] if rest else [])


class HostileClient:
    """One attacker process: random requests on every file of the mount.

    Files are found by walking the mount (refreshed as processes come and
    go).  Memory files get reads and writes at random, mapped-adjacent,
    end-of-file and extreme offsets (up to 2**63-1) with sizes from 0 to
    2 GiB; text files reads and write attempts; control files garbage,
    edge values and 100 MB writes; directories listings at random
    offsets; and every file odd calls (truncate, utime, xattrs, locks,
    SEEK_HOLE, mmap, sendfile, O_TRUNC).  `run` returns a JSON-able summary.
    """

    SIZES = (0, 1, 4095, 4096, 4097, 65536, 131073, 1 << 20, (1 << 20) + 1, 16 << 20, (1 << 31) - 4096, 1 << 31)

    def __init__(self, root: str, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.buf = bytearray(2 << 20)
        self.files: list[str] = []
        self.dirs: list[str] = []
        self.max_lat = 0.0
        self.slowest = ""
        self.errnos: dict[str, dict[str, int]] = {}
        self.ok: dict[str, int] = {}
        self.bad: list[str] = []
        self.mem_bytes = 0

    def _walk(self) -> None:
        os.stat(self.root)  # ENOTCONN once the daemon is gone
        files: list[str] = []
        dirs: list[str] = []
        for d, _subdirs, names in os.walk(self.root, onerror=lambda e: None):
            dirs.append(d)
            files.extend(os.path.join(d, n) for n in names if n != "backing")
        if not files and not self.files:
            raise OSError(errno.ENOENT, "no files under the mount", self.root)
        if files:
            self.files, self.dirs = files, dirs

    @staticmethod
    def _kind(path: str) -> str:
        if path.endswith(("/mem", "/data")):
            return "memory"
        if any(path.endswith("/" + c) for c in CONTROL_FILES):
            return "control"
        return "text"

    def _mapped(self, path: str) -> list[tuple[int, int]]:
        try:
            with open(os.path.join(os.path.dirname(path), "maps")) as f:
                return [(int(a, 16), int(b, 16)) for a, b in (line.split()[0].split("-") for line in f)]
        except OSError:
            return []

    def _offset(self, path: str) -> int:
        rng = self.rng
        if path.endswith("/mem") and rng.random() < 0.6:
            ranges = self._mapped(path)
            if ranges:
                start, end = rng.choice(ranges)
                return rng.choice((start, start - 1, end - 1, end, start + rng.randrange(end - start)))
        if path.endswith("/data") and rng.random() < 0.5:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = 0
            return rng.choice((0, max(0, size - 1), size, size + 1, rng.randrange(size + 1)))
        return rng.choice((0, 1, 4095, 4096, VM_MAXUSER_ADDRESS - 1, VM_MAXUSER_ADDRESS, VM_MAXUSER_ADDRESS + 1,
                           2**62, 2**63 - 2, 2**63 - 1, rng.randrange(2**47), rng.randrange(2**63)))

    def _size(self) -> int:
        # Sizes of 16 MiB and more are rarer: a 2 GiB read of the kernel
        # object (16 TiB) is thousands of requests.
        return self.rng.choice(self.SIZES[:9] * 4 + self.SIZES[9:])

    # Operations and their weights; each names the kind of file it needs.
    OPS = (("memory-read", 25), ("memory-write", 15), ("text-read", 12), ("text-write", 4),
           ("control-write", 14), ("control-100MB", 3), ("control-read", 3), ("dir", 8), ("odd", 16))

    def _one(self, op: str, path: str) -> None:
        """One request `op` on `path`."""
        rng = self.rng
        if op == "dir":
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.lseek(fd, rng.choice((0, 1, 3, 1000, 2**31, 2**63 - 1)), os.SEEK_SET)
                os.listdir(fd)
            finally:
                os.close(fd)
            for name in os.listdir(path)[:20]:
                os.lstat(os.path.join(path, name))
        elif op.startswith("odd"):
            self._odd(op, path)
        elif op.endswith("-read"):
            fd = os.open(path, os.O_RDONLY)
            try:
                n = os.preadv(fd, _iov(self.buf, self._size()), self._offset(path))
                if op == "memory-read":
                    self.mem_bytes += n
            finally:
                os.close(fd)
        else:
            fd = os.open(path, os.O_WRONLY)  # text: EACCES even for root
            try:
                if op == "control-100MB":
                    os.pwritev(fd, _iov(self.buf, 100 << 20), 0)
                elif op == "control-write":
                    value = rng.choice(CONTROL_VALUES) if rng.random() < 0.7 else os.urandom(rng.randrange(1, 64))
                    os.pwrite(fd, value, rng.choice((0, 0, 0, 1, 2**62, 2**63 - 1 - len(value))))
                elif rng.random() < 0.5:
                    os.pwritev(fd, _iov(self.buf, self._size()), self._offset(path))
                else:
                    os.pwrite(fd, os.urandom(min(self._size(), 1 << 16)), self._offset(path))
            finally:
                os.close(fd)

    def _odd(self, op: str, path: str) -> None:
        rng = self.rng
        if op == "odd-truncate":
            os.truncate(path, rng.choice((0, 1, 2**62)))
        elif op == "odd-utime":
            os.utime(path, (0, 0))
        elif op == "odd-setxattr":
            os.setxattr(path, "user.x", b"1")
        elif op == "odd-listxattr":
            os.listxattr(path)
        elif op == "odd-O_TRUNC":
            os.close(os.open(path, os.O_RDONLY | os.O_TRUNC))
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                if op == "odd-flock":
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                elif op == "odd-seek":
                    os.lseek(fd, self._offset(path) & (2**62 - 1), rng.choice((os.SEEK_HOLE, os.SEEK_DATA)))
                elif op == "odd-mmap":
                    self._mmap_read(fd, self._offset(path) & ~(PAGE_SIZE - 1) & (2**62 - 1))
                else:
                    with open(os.devnull, "wb") as null:
                        os.sendfile(null.fileno(), fd, self._offset(path) & (2**62 - 1), 1 << 16)
            finally:
                os.close(fd)

    ODD = ("odd-truncate", "odd-utime", "odd-setxattr", "odd-listxattr", "odd-O_TRUNC", "odd-flock",
           "odd-seek", "odd-mmap", "odd-sendfile")

    @staticmethod
    def _mmap_read(fd: int, off: int) -> None:
        """Read a page through a private mapping, in a forked child: a page
        the daemon cannot read (EIO) is SIGBUS, as for any file."""
        m = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_PRIVATE, mmap.PROT_READ, offset=off)
        pid = os.fork()
        if pid == 0:
            try:
                m[:16]  # the page fault reads through FUSE
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        m.close()
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGBUS:
            raise OSError(errno.EFAULT, f"mmap reader killed by signal {os.WTERMSIG(status)}")

    def _pick(self) -> tuple[str, str]:
        """An operation and a file (or directory) of the kind it needs."""
        rng = self.rng
        names, weights = zip(*self.OPS)
        op = rng.choices(names, weights)[0]
        if op == "dir":
            return op, rng.choice(self.dirs)
        if op == "odd":
            return rng.choice(self.ODD), rng.choice(self.files)
        kind = op.split("-")[0]
        candidates = [f for f in self.files if self._kind(f) == kind] or self.files
        return op, rng.choice(candidates)

    def _timed(self, op: str, path: str, fn: Callable[[], object]) -> bool:
        """Run and time one request; False once the daemon is gone."""
        start = time.monotonic()
        try:
            fn()
            self.ok[op] = self.ok.get(op, 0) + 1
        except OSError as err:
            name = errno.errorcode.get(err.errno or 0, str(err.errno))
            counts = self.errnos.setdefault(op, {})
            counts[name] = counts.get(name, 0) + 1
            if err.errno in DEAD_ERRNOS:
                self.bad.append(f"{name} on {op} {path}: the daemon is gone")
                return False
            if err.errno == errno.EIO and not op.startswith(("memory", "odd", "sweep-memory")):
                self.bad.append(f"EIO (an unexpected exception in the daemon) on {op} {path}")
        except ValueError as err:  # an mmap the host refuses (past a file's end)
            counts = self.errnos.setdefault(op, {})
            counts[str(err)] = counts.get(str(err), 0) + 1
        lat = time.monotonic() - start
        if lat > self.max_lat:
            self.max_lat, self.slowest = lat, f"{op} {path}"
        return True

    def run(self, nops: int) -> dict[str, Any]:
        if not self._timed("walk", self.root, self._walk):
            return self.summary()
        print("started", flush=True)
        # Every file once (a read at a random offset and size), then at random.
        for path in list(self.files):
            op = f"sweep-{self._kind(path)}-read"
            if not self._timed(op, path, functools.partial(self._one, op.removeprefix("sweep-"), path)):
                return self.summary()
        for i in range(nops):
            if i % 25 == 24 and not self._timed("walk", self.root, self._walk):
                break
            op, path = self._pick()
            if not self._timed(op, path, functools.partial(self._one, op, path)):
                break
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {"max_lat": self.max_lat, "slowest": self.slowest, "errnos": self.errnos, "ok": self.ok,
                "bad": self.bad, "mem_bytes": self.mem_bytes}


def _client_main(argv: list[str]) -> int:
    root, seed, nops = argv[0], int(argv[1]), int(argv[2])
    print(json.dumps(HostileClient(root, seed).run(nops)), flush=True)
    return 0


def start_clients(root: Path, n: int, nops: int, seed: int = 0) -> list[subprocess.Popen[str]]:
    """`n` hostile client processes (this file run as a script)."""
    return [subprocess.Popen([sys.executable, __file__, "client", str(root), str(seed + i), str(nops)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
            for i in range(n)]


def wait_started(clients: list[subprocess.Popen[str]]) -> None:
    """Wait for the state "every client has walked the mount" (it says so)."""
    for c in clients:
        assert c.stdout is not None
        ready, _, _ = select.select([c.stdout], [], [], HANG_GUARD)
        assert ready and c.stdout.readline() == "started\n", c.communicate(timeout=HANG_GUARD)


def client_results(clients: list[subprocess.Popen[str]], nops: int = 0) -> list[dict[str, Any]]:
    out = []
    guard = HANG_GUARD + nops * len(clients) * 0.05  # (a client does 20-100 requests a second)
    for c in clients:
        stdout, stderr = c.communicate(timeout=guard)
        assert c.returncode == 0, f"a hostile client died (rc {c.returncode}): {stderr[-2000:]}"
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def check_clients(results: list[dict[str, Any]]) -> None:
    """No request failed the way only a dead or broken daemon fails, none
    took longer than REQUEST_BOUND, and memory files returned bytes."""
    bad = [b for r in results for b in r["bad"]]
    print(json.dumps(results, indent=None)[:6000])  # shown with -s or on failure
    assert bad == [], bad[:10]
    slowest = max(results, key=lambda r: r["max_lat"])
    assert slowest["max_lat"] < REQUEST_BOUND, f"a request took {slowest['max_lat']:.1f}s: {slowest['slowest']}"
    assert sum(r["mem_bytes"] for r in results) > 0, "no memory read returned data (offsets missed every mapping)"


# -- the real daemon -------------------------------------------------------------

def swap_files(tmp: str | None = None) -> set[str]:
    return set(glob.glob(os.path.join(tmp or tempfile.gettempdir(), "rumpvm-swap.*")))


def wait_demo(root: Path) -> None:
    """Wait for the state "the demo's first process has memory" (the mount
    goes live before the demo thread has spawned anything)."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        with contextlib.suppress(OSError):
            if (root / "proc" / "1" / "maps").read_text():
                return
        assert time.monotonic() < deadline, "the demo workload started no process"
        time.sleep(POLL)


class Daemon:
    """`rumpvm mount MNT --demo` as a child process; stderr goes to a file (the
    demo logs every page a hostile writer changed, which would fill a pipe)."""

    def __init__(self, mnt: Path, log: Path, *extra: str) -> None:
        self.mnt, self.log = mnt, log
        ensure_dir(mnt)
        with open(log, "ab") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "rumpvm.cli", "mount", str(mnt), "--demo", *extra],
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        try:
            wait_live(mnt, timeout=15)
            wait_demo(mnt)
        except (TimeoutError, AssertionError):
            self.proc.kill()
            self.proc.wait(HANG_GUARD)
            raise AssertionError(f"rumpvm mount did not come up: {log.read_text()[-2000:]}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def swap_fd(self) -> tuple[str, os.stat_result]:
        """The daemon's one swap file: its /proc fd link and what it points to."""
        links = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if "rumpvm-swap." in target:
                links.append((target, os.stat(f"/proc/{self.pid}/fd/{fd}")))
        assert len(links) == 1, links
        return links[0]

    def mountd_lines(self) -> list[str]:
        """Lines mountd logged, other than the expected ones (signal, stale mount)."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if "mountd:" in line and "received, unmounting" not in line and "stale mount" not in line]

    def stop(self) -> int:
        """SIGTERM; the daemon must unmount and exit 0 within the guard."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(HANG_GUARD)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(HANG_GUARD)
        if mounted_fstype(str(self.mnt)) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)


@contextlib.contextmanager
def daemon(tmp_path: Path, name: str = "vm", log: str = "", *extra: str) -> Iterator[Daemon]:
    d = Daemon(tmp_path / name, tmp_path / f"{name}{log}.log", *extra)
    try:
        yield d
    finally:
        d.close()


def check_swap_unlinked(d: Daemon) -> str:
    """The daemon's swap file is open, already unlinked, and 0600; returns its path."""
    target, st = d.swap_fd()
    assert target.endswith(" (deleted)"), target
    path = target[:-len(" (deleted)")]
    assert st.st_nlink == 0 and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, (target, st)
    assert not os.path.lexists(path), path
    return path


# Walks the mount with real tools until a stop file appears (a state, not a
# duration); their complaints go to a file for `check_walks`.
WALKER = r"""
root=$1 stop=$2 err=$3
while [ ! -e "$stop" ]; do
    ls -lR "$root" > /dev/null 2>> "$err"
    find -L "$root" > /dev/null 2>> "$err"
done
"""


def check_walks(err: Path) -> None:
    """A walker only ever saw entries vanish (processes exit): no EIO, no ENOTCONN, no loop."""
    odd = [line for line in err.read_text().splitlines() if not VANISHED.match(line)]
    assert odd == [], odd[:5]


def hostile_run(tmp_path: Path, nclients: int, nops: int, rounds: int = 1) -> None:
    """`rounds` times: a daemon; `nclients` hostile clients of `nops`
    requests each and an `ls -lR`/`find -L` walker, while the demo forks
    and exits processes; then the checks, and a clean stop."""
    before = swap_files()
    seen: set[str] = set()
    mnt = tmp_path / "vm"
    for rnd in range(rounds):
        with daemon(tmp_path, "vm", f"run{rnd}") as d:
            seen.add(check_swap_unlinked(d))
            stop, err = tmp_path / f"stop{rnd}", tmp_path / f"walk{rnd}.err"
            walker = subprocess.Popen(["sh", "-c", WALKER, "walker", str(mnt), str(stop), str(err)],
                                      env=dict(os.environ, LC_ALL="C"))
            try:
                clients = start_clients(mnt, nclients, nops, seed=100 * rnd)
                results = client_results(clients, nops)
            finally:
                stop.touch()
                walker.wait(HANG_GUARD)
            assert d.proc.poll() is None, f"the daemon died: {d.log.read_text()[-3000:]}"
            check_clients(results)
            check_walks(err)
            # Still serving, and the swap file is still the unlinked one.
            assert os.stat(mnt).st_ino == 1
            assert run("cat", mnt / "meminfo").stdout.startswith("MemTotal:")
            assert write_with_dd(mnt / "limit", "64M\n").returncode == 0
            assert (mnt / "limit").read_text() == f"{64 * M}\n"
            check_swap_unlinked(d)
            assert d.mountd_lines() == []
            assert d.stop() == 0
            assert mounted_fstype(str(mnt)) is None
    assert not [p for p in seen if os.path.lexists(p)]
    assert swap_files() - before == set(), "a swap file was left in the temp directory"


def test_hostile_clients_never_kill_or_stall_the_daemon(tmp_path: Path) -> None:
    hostile_run(tmp_path, nclients=4, nops=250)





# Values no control file takes (each file's own parser, then the kernel's);
# the test adds random bytes (a fixed seed: none of them spells a value).
INVALID = {
    "limit": [b"\n", b"0", b"1", b"-1", b"1K", b"72K", b"32 M", b"0x20M", b"32MB", b"lru", b"\xff\xfe",
              b"32M\x00", b"99999999999999999999999999999999G", b"9223372036854775808", b"1" * 4097],
    "pagedaemon/policy": [b"\n", b"LRU", b"nope", b"lru\x00", b"l r u", b"\xff", b"1", b"lru" * 2000],
    "pagedaemon/freemin": [b" ", b"-1", b"+1", b"1.0", b"0x10", b"\xd9\xa3", b"999999999", b"1" * 4097],
    "pagedaemon/freetarg": [b"\t", b"0", b"-1", b"999999999", b"8192", b"2**10", b"\x00", b"1" * 4097],
}


def test_garbage_and_100MB_writes_to_every_control_file_change_nothing(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """`dd` (one write(2) each) of garbage, of random bytes and of 100 MB to
    limit, policy, freemin and freetarg: each refused (EINVAL, EFBIG, or
    ENOMEM for a limit below what can be freed), nothing changed, nothing
    logged, and a valid value still works after."""
    caplog.set_level(logging.DEBUG, logger="mountd")
    rng = random.Random(7)
    with rumpvm.Kernel(memlimit="32M", swap="16M") as k, mounted(k, tmp_path / "vm") as root:
        p = k.spawn(name="target")
        a = p.mmap(8 * M)
        p.write(a, b"x" * (8 * M))
        state = (k.memlimit, k.pagedaemon.policy, k.pagedaemon.freemin, k.pagedaemon.freetarg)
        for rel, values in INVALID.items():
            path = root / rel
            for value in [*values, *(rng.randbytes(rng.randrange(1, 200)) for _ in range(20))]:
                r = subprocess.run(["dd", f"of={path}", "status=none"], input=value, capture_output=True,
                                   timeout=TOOL_TIMEOUT, env=dict(os.environ, LC_ALL="C"))
                assert r.returncode != 0 and any(m in r.stderr for m in (b"Invalid argument", b"File too large",
                                                   b"Cannot allocate memory")), (rel, value, r.stderr)
            # 100 MB in one write(2), and in 1 MiB writes.
            for bs, count in (("100M", "1"), ("1M", "100")):
                r = subprocess.run(["dd", "if=/dev/zero", f"of={path}", f"bs={bs}", f"count={count}", "status=none"],
                                   capture_output=True, timeout=TOOL_TIMEOUT, env=dict(os.environ, LC_ALL="C"))
                assert r.returncode != 0 and b"File too large" in r.stderr, (rel, bs, r.stderr)
            assert (k.memlimit, k.pagedaemon.policy, k.pagedaemon.freemin, k.pagedaemon.freetarg) == state, rel
        assert write_with_dd(root / "pagedaemon/policy", "lru\n").returncode == 0
        assert k.pagedaemon.policy == "lru"
        k.check()
    assert mountd_records(caplog) == []


# -- walking the tree while it changes ----------------------------------------------

class Churn:
    """A thread that forks and exits processes (with shared and COW memory,
    so objects and their `backing` links come and go) until stopped."""

    def __init__(self, k: rumpvm.Kernel) -> None:
        self.k = k
        self.stop = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def _run(self) -> None:
        k = self.k
        try:
            parent = k.spawn(name="churn-parent")
            a = parent.mmap(16 * PAGE_SIZE)
            parent.write(a, b"parent")
            obj = k.create_object(4 * PAGE_SIZE)
            parent.mmap(4 * PAGE_SIZE, flags=rumpvm.MAP_SHARED, obj=obj)
            obj.detach()
            live: list[rumpvm.Proc] = []
            while not self.stop.is_set():
                child = parent.fork()
                child.write(a + (self.rounds % 16) * PAGE_SIZE, b"child")  # COW: a shadow object
                grandchild = child.fork()
                grandchild.write(a, b"grandchild")
                live.append(child)
                grandchild.exit()
                if len(live) > 4:
                    live.pop(0).exit()
                self.rounds += 1
                # Give the GIL away between rounds: the kernel lock is not
                # fair, and a loop that takes it back at once starves the
                # FUSE server's threads.
                time.sleep(0)
        except BaseException as err:
            self.error = err

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(HANG_GUARD)
        assert not self.thread.is_alive() and self.error is None, self.error


# What a walker may say about an entry that went away between its listing and
# its stat: nothing else (no EIO, no ENOTCONN, no loop).
VANISHED = re.compile(r"^(ls|find): .*(No such file or directory|No such process)$")


def test_ls_lR_and_find_L_while_processes_fork_and_exit(populated: rumpvm.Kernel, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mountd")
    k = populated
    walks = []
    with mounted(k, tmp_path / "vm") as root, Churn(k) as churn:
        while churn.rounds < 5:
            churn.thread.join(0.005)  # a state: the tree is changing
            assert churn.thread.is_alive(), churn.error
        for _ in range(4):
            argvs = (["ls", "-lR", str(root)], ["find", "-L", str(root)], ["ls", "-lRL", str(root / "objects")])
            walkers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=dict(os.environ, LC_ALL="C")) for argv in argvs]
            start = time.monotonic()
            for argv, w in zip(argvs, walkers):
                out, err = w.communicate(timeout=HANG_GUARD)
                walks.append((argv[:2], w.returncode, time.monotonic() - start, out.count("\n"), err))
        rounds = churn.rounds
    for argv, rc, seconds, lines, err in walks:
        assert rc in (0, 1), (argv, rc, err)  # 1: an entry vanished (reported below)
        odd = [line for line in err.splitlines() if not VANISHED.match(line)]
        assert odd == [], (argv, odd[:5])
        assert lines > 20, (argv, seconds, lines)
    assert rounds > 5, "the processes did not change during the walks"
    assert mountd_records(caplog) == []
    k.check()


# -- unmount and death while requests are in flight -----------------------------------

# A reader loop of real tools; each pass appends a line to a progress file, so
# the test can wait for the state "reading" instead of sleeping.  The loop ends
# when a tool fails and the mount is gone (stat of meminfo fails).
READER = r"""
set -u
root=$1 progress=$2 pid=$3 addr=$4
gone() { ! stat "$root/meminfo" > /dev/null 2>&1; }
while :; do
    dd if="$root/proc/$pid/mem" bs=1M iflag=skip_bytes,count_bytes skip="$addr" count=8M of=/dev/null \
        status=none || ! gone || exit 0
    cat "$root/proc/$pid/smaps" "$root/vmstat" "$root/kmem/pools" > /dev/null || ! gone || exit 0
    ls -lR "$root/proc" > /dev/null 2>&1 || ! gone || exit 0  # (1 also when a process exits meanwhile)
    echo . >> "$progress"
done
"""


def start_readers(root: Path, tmp_path: Path, n: int) -> list[tuple[subprocess.Popen[str], Path]]:
    """`n` reader loops of the largest mapping of a process under `root`."""
    pid, addr = _largest_mapping(root)
    readers = []
    for i in range(n):
        progress = tmp_path / f"progress.{i}"
        progress.write_text("")
        readers.append((subprocess.Popen(["sh", "-c", READER, "reader", str(root), str(progress), pid, str(addr)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), progress))
    deadline = time.monotonic() + HANG_GUARD
    for r, progress in readers:  # wait for the state: every reader has read all once
        while progress.stat().st_size == 0:
            assert r.poll() is None, f"a reader ended before the mount went away: {r.communicate()}"
            assert time.monotonic() < deadline, "a reader made no progress"
            time.sleep(POLL)
    return readers


def _largest_mapping(root: Path) -> tuple[str, int]:
    best = ("", 0, 0)
    for pid in os.listdir(root / "proc"):
        try:
            lines = (root / "proc" / pid / "maps").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if end - start > best[2]:
                best = (pid, start, end - start)
    assert best[0], "no process with a mapping"
    return best[0], best[1]


def readers_end(readers: list[tuple[subprocess.Popen[str], Path]]) -> float:
    """Every reader loop ends (its tool failed: the mount is gone); returns the
    longest it took."""
    start = time.monotonic()
    for r, _ in readers:
        r.communicate(timeout=HANG_GUARD)
        assert r.returncode == 0, r.returncode
    return time.monotonic() - start


def test_daemon_unmounts_on_sigterm_while_reads_are_in_flight(tmp_path: Path) -> None:
    before = swap_files()
    with daemon(tmp_path) as d:
        path = check_swap_unlinked(d)
        readers = start_readers(d.mnt, tmp_path, 4)
        start = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - start < REQUEST_BOUND
        assert readers_end(readers) < REQUEST_BOUND
        assert mounted_fstype(str(d.mnt)) is None and os.listdir(d.mnt) == []
        assert d.mountd_lines() == []
    assert not os.path.lexists(path) and swap_files() - before == set()


def test_in_process_unmount_while_reads_are_in_flight(tmp_path: Path) -> None:
    mnt = tmp_path / "vm"
    mnt.mkdir()
    with rumpvm.Kernel(memlimit="16M", swap="64M") as k:
        p = k.spawn(name="target")
        a = p.mmap(8 * M)
        for off in range(0, 8 * M, PAGE_SIZE):
            p.write(a + off, b"page %d" % off)
        handle = k.mount(str(mnt))
        readers = start_readers(mnt, tmp_path, 4)
        start = time.monotonic()
        handle.unmount(timeout=HANG_GUARD)
        assert not handle.alive and time.monotonic() - start < REQUEST_BOUND
        assert readers_end(readers) < REQUEST_BOUND
        assert mounted_fstype(str(mnt)) is None
        k.check()


def kill_and_restart(tmp_path: Path, tag: str, nreaders: int, nclients: int) -> None:
    """SIGKILL the daemon with readers and hostile clients in flight; start
    another over the stale mount."""
    before = swap_files()
    mnt = tmp_path / "vm"
    killed = Daemon(mnt, tmp_path / f"killed{tag}.log")
    try:
        path = check_swap_unlinked(killed)
        readers = start_readers(mnt, tmp_path, nreaders)
        clients = start_clients(mnt, nclients, 10**6, seed=int(tag) * 10)  # they end when the daemon is gone
        wait_started(clients)
        killed.proc.kill()
        killed.proc.wait(HANG_GUARD)
        assert readers_end(readers) < REQUEST_BOUND
        for c in clients:
            out, err = c.communicate(timeout=HANG_GUARD)
            assert c.returncode == 0, err[-2000:]
            result = json.loads(out.strip().splitlines()[-1])
            assert any("the daemon is gone" in b for b in result["bad"]), result
            assert result["max_lat"] < REQUEST_BOUND, result
        # The swap file died with the process: it had no name to leave behind.
        assert not os.path.lexists(path)
        with pytest.raises(OSError) as info:
            os.stat(mnt)
        assert info.value.errno == errno.ENOTCONN
        assert killed.mountd_lines() == []
        # A new daemon over the stale mount clears it, says so once, and serves.
        with daemon(tmp_path, "vm", f"again{tag}") as again:
            assert run("cat", mnt / "meminfo").stdout.startswith("MemTotal:")
            assert check_swap_unlinked(again) != path
            assert again.stop() == 0
            stale = [line for line in again.log.read_text().splitlines() if "stale mount" in line]
            assert len(stale) == 1 and str(mnt) in stale[0], stale
            assert again.mountd_lines() == []
    finally:
        killed.close()
    assert mounted_fstype(str(mnt)) is None
    assert swap_files() - before == set()


def test_daemon_killed_with_requests_in_flight_then_restarted_over_its_stale_mount(tmp_path: Path) -> None:
    kill_and_restart(tmp_path, "0", nreaders=3, nclients=2)


@pytest.mark.stress
@pytest.mark.timeout(1200)
def test_hostile_clients_long_run_then_kills(tmp_path: Path) -> None:
    hostile_run(tmp_path, nclients=6, nops=1500, rounds=3)
    for tag in ("1", "2", "3"):
        kill_and_restart(tmp_path, tag, nreaders=4, nclients=6)


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        sys.exit(_client_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} client ROOT SEED NOPS")
