"""Test helpers for real /vm mounts: mount in a temporary directory, always unmount.

`mounted(kernel, directory)` serves the kernel's /vm in a thread of the test
process (`mountd.mount_in_thread`, which returns once the mount is live:
no waiting, the mount point is checked to be our root at once), and
unmounts at the end even when the test fails (`unmount()` returns once the
server thread has ended and unmounted): then nothing may be left mounted
there.  `wait_live`/`wait_unmounted` are for mounts made by another
process, whose progress no event of ours announces: they poll the mount
table with a deadline.  pyfuse3 allows one session per process, so tests
mount one at a time.  mountd (with trio and pyfuse3) is imported only by
the functions that mount, so that reader subprocesses can import the format
checks quickly.

`run(*argv)` runs a real tool (cat, dd, stat, ...) on the mount with a
timeout, so a hung FUSE request fails the test instead of hanging the run.

The `*_LINE` regular expressions and `check_*` functions are the Linux
/proc formats, strictly (widths included), shared by the mountd tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOOL_TIMEOUT = 20.0


POLL = 0.01  # seconds between looks at another process's mount; not a result


def is_live(path: Path) -> bool:
    """Is `path` a mount point whose root answers as a rumpvm root (inode 1)?
    (A stat of a mount whose server has not started reading yet waits in
    the kernel until it answers; a dead mount fails with ENOTCONN.)"""
    from mountd.server import mounted_fstype

    try:
        return (os.path.ismount(path) and mounted_fstype(str(path)) == "fuse.rumpvm"
                and os.stat(path).st_ino == 1)
    except OSError:
        return False


def wait_live(path: Path, timeout: float = 5.0) -> None:
    """Wait until another process's mount at `path` is live (`is_live`)."""
    deadline = time.monotonic() + timeout
    while not is_live(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not become a live rumpvm mount within {timeout}s")
        time.sleep(POLL)


def wait_unmounted(path: Path, timeout: float = 5.0) -> float:
    """Wait until nothing is mounted at `path` (another process unmounts it);
    returns the seconds it took."""
    from mountd.server import mounted_fstype

    start = time.monotonic()
    while mounted_fstype(str(path)) is not None:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{path} still mounted after {timeout}s")
        time.sleep(POLL)
    return time.monotonic() - start


def ensure_dir(path: Path) -> None:
    """Create `path` if missing, without stat-ing it (a stale mount there fails stat)."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        pass


@contextlib.contextmanager
def mounted(kernel: Any, directory: Path, allow_other: bool = False) -> Iterator[Path]:
    """Mount `kernel`'s /vm at `directory` (created if needed) for the with block."""
    import mountd
    from mountd.server import mounted_fstype

    ensure_dir(directory)
    handle = mountd.mount_in_thread(kernel, str(directory), allow_other=allow_other)
    try:
        assert is_live(directory), f"{directory} is not a live rumpvm mount after mount_in_thread returned"
        yield directory
    finally:
        handle.unmount()  # joins the server thread, which unmounts before it ends
        assert not handle.alive, f"the server of {directory} did not stop"
        assert mounted_fstype(str(directory)) is None, f"{directory} still mounted after unmount()"


def run(*argv: str | os.PathLike[str], check: bool = True, text: bool = True,
        input: str | bytes | None = None) -> subprocess.CompletedProcess[Any]:
    """Run a tool with a timeout; output captured; raises on failure if `check`."""
    return subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=text,
                          input=input, timeout=TOOL_TIMEOUT, check=check)


# Strict regular expressions of the Linux /proc formats that /vm copies.
# They are checked against the host's own /proc files too, so they are
# Linux's formats and not just ours.
MAPS_LINE = re.compile(
    r"(?P<start>[0-9a-f]{8,16})-(?P<end>[0-9a-f]{8,16}) (?P<perms>[r-][w-][x-][ps]) "
    r"(?P<offset>[0-9a-f]{8,16}) (?P<dev>[0-9a-f]{2,3}:[0-9a-f]{2,}) (?P<inode>\d+) "
    r"(?:(?P<pad> *)(?P<name>\S.*))?"
)
MAPS_NAME_COLUMN = 73
KB_LINE = re.compile(r"(?P<label>[A-Za-z_()0-9]+):(?P<pad> +)(?P<value>\d+) kB")
KB_LABEL_WIDTH = 16  # `Label:` padded to 16 columns
KB_VALUE_WIDTH = 8  # then the value, right-aligned in 8
THP_LINE = re.compile(r"THPeligible: +\d+")
VMFLAGS_LINE = re.compile(r"VmFlags:(?: [a-z]{2})* ")
VMSTAT_LINE = re.compile(r"[A-Za-z_0-9]+ -?\d+")
SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"
SWAPS_LINE = re.compile(r"(?P<path>\S+) +(?P<type>file|partition)\t+(?P<size>\d+)\t+(?P<used>\d+)\t+(?P<prio>-?\d+)")
STATUS_LINE = re.compile(r"(?P<label>Name|State|Tgid|Pid|PPid):\t(?P<value>.+)")
STATUS_VM_LINE = re.compile(r"(?P<label>Vm[A-Za-z]+):\t(?P<value> *\d+) kB")


def check_maps_line(line: str) -> re.Match[str]:
    """Match one maps line strictly, including Linux's name column."""
    m = MAPS_LINE.fullmatch(line)
    assert m is not None, f"not a maps line: {line!r}"
    if m["name"] is not None:
        head = line[:m.start("name")]
        assert len(head) == MAPS_NAME_COLUMN or (len(head) > MAPS_NAME_COLUMN and m["pad"] == ""), line
    return m


def check_kb_line(line: str) -> re.Match[str]:
    """Match one `Label:   value kB` line (meminfo, smaps) with its widths.

    Linux pads `Label:` to 16 columns and prints the value with `%8lu`; a
    label of 16 columns or more is followed by one space instead.
    """
    m = KB_LINE.fullmatch(line)
    assert m is not None, f"not a kB line: {line!r}"
    head = len(m["label"]) + 1
    width = head + len(m["pad"]) + len(m["value"])
    if head < KB_LABEL_WIDTH:
        assert width == KB_LABEL_WIDTH + max(KB_VALUE_WIDTH, len(m["value"])), line
    else:
        assert len(m["pad"]) == 1 or width == KB_LABEL_WIDTH + KB_VALUE_WIDTH, line
    return m
