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

No test sleeps for a duration: they wait for states (the kernel's limit
changing while the writer is still blocked, a thread's end) and compare
the order of events.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fusemount import TOOL_TIMEOUT, mounted

import rumpvm
from rumpvm import PAGE_SIZE

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
