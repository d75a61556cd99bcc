"""Benchmarks of the /vm FUSE file system, each against a baseline run
alongside.  Sizes are for the "full" profile (quick / tiny in `pick` calls).

- `mem_dd`: `dd bs=1M` of 256 MiB of resident memory through
  `/vm/proc/<pid>/mem`, MiB/s.  Baseline: the same `dd` of the same number
  of bytes from a bare pyfuse3 file system (the smallest one possible, in
  this file) serving a Python buffer with the same options (direct_io,
  default max_read).  Target >= 0.8.
- `cat_maps`: wall time of `cat /vm/proc/<pid>/maps` for a process of 100k
  map entries (`bench.build_map`), ms; checked once against the in-process
  rendering.  Baseline: rendering it in-process (`p.maps()` +
  `mountd.render.maps`).  Target <= 1.5x.

/vm is served as `rumpvm mount` serves it, by `mountd.mount_in_thread` in
this process; the reader (`dd`, `cat`) is always a child process, waited
for with a blocking wait (`Popen.wait()` without a timeout: a timeout makes
Python poll in the process that hosts the server, and the polling thread
competes with it).  pyfuse3 allows one session per process, so the bare
file system runs in a child process of its own
(`python -m bench.bench_fuse --bare MOUNTPOINT SIZE`).  Each figure is the
best of a few runs, the two sides alternated (`bench.alternate`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import rumpvm
from mountd import mount_in_thread, render

from . import MiB, Profile, Row, alternate, build_map, kilo, mib, pick, ratio_row

_BARE_FILE = "data"


def _spawn_s(argv: list[str]) -> float:
    """Wall seconds of a child process run to completion (a blocking wait)."""
    t0 = time.perf_counter()
    rc = subprocess.Popen(argv, stdout=subprocess.DEVNULL).wait()
    dt = time.perf_counter() - t0
    if rc:
        raise subprocess.CalledProcessError(rc, argv)
    return dt


def _dd_s(path: Path, skip_bytes: int, nbytes: int) -> float:
    """Wall seconds of `dd bs=1M` of `nbytes` of `path` from `skip_bytes`."""
    return _spawn_s(["dd", f"if={path}", "of=/dev/null", "bs=1M", f"count={nbytes // MiB}",
                     f"skip={skip_bytes}", "iflag=skip_bytes", "status=none"])


def _wait_mounted(path: Path, timeout: float = 30.0) -> None:
    """Wait (polling) until `path` is a mount point."""
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not mounted within {timeout}s")
        time.sleep(0.01)


@contextlib.contextmanager
def _bare_mount(directory: Path, size: int) -> Iterator[Path]:
    """A bare pyfuse3 file system in a child process, serving `size` bytes."""
    directory.mkdir()
    child = subprocess.Popen([sys.executable, "-m", "bench.bench_fuse", "--bare", str(directory), str(size)],
                             cwd=Path(__file__).resolve().parent.parent)
    try:
        _wait_mounted(directory)
        yield directory / _BARE_FILE
    finally:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:  # a wedged server: do not hang the run
            child.kill()
            child.wait()


@contextlib.contextmanager
def _vm_mount(k: rumpvm.Kernel, tmp: str) -> Iterator[Path]:
    """/vm of `k` served by a thread of this process, at `tmp`/vm."""
    path = Path(tmp, "vm")
    path.mkdir()
    handle = mount_in_thread(k, str(path))
    try:
        yield path
    finally:
        handle.unmount()


def mem_dd(profile: Profile) -> list[Row]:
    """`dd bs=1M` of /vm/proc/<pid>/mem vs the same dd on a bare pyfuse3 fs."""
    size = pick(profile, 4, 32, 256) * MiB
    reps = pick(profile, 1, 3, 5)
    with tempfile.TemporaryDirectory() as tmp, rumpvm.Kernel(memlimit="unlimited") as k:
        p = k.spawn(name="bench")
        addr = p.mmap(size)
        chunk = bytes(range(256)) * (MiB // 256)
        for off in range(0, size, MiB):
            p.write(addr + off, chunk)  # resident, so the reads measure FUSE + peek
        with _vm_mount(k, tmp) as vm, _bare_mount(Path(tmp, "bare"), size) as data:
            mem = vm / "proc" / str(p.pid) / "mem"
            vm_s, bare_s = alternate([lambda: _dd_s(mem, addr, size), lambda: _dd_s(data, 0, size)], reps)
    return [ratio_row("mem_dd", f"dd bs=1M of {mib(size)} of /vm/proc/<pid>/mem", size / MiB / vm_s, "MiB/s",
                      "same dd, bare pyfuse3 fs", size / MiB / bare_s, 0.8, higher_is_better=True)]


def cat_maps(profile: Profile) -> list[Row]:
    """`cat maps` of many entries vs rendering it in-process."""
    entries = pick(profile, 200, 10_000, 100_000)
    reps = pick(profile, 1, 3, 5)
    with tempfile.TemporaryDirectory() as tmp, rumpvm.Kernel(memlimit="unlimited") as k:
        p = k.spawn(name="bench")
        build_map(p, entries)
        expected = render.maps(p.maps())

        def in_process() -> float:
            t0 = time.perf_counter()
            render.maps(p.maps())
            return time.perf_counter() - t0

        with _vm_mount(k, tmp) as vm:
            maps = vm / "proc" / str(p.pid) / "maps"
            out = subprocess.run(["cat", maps], stdout=subprocess.PIPE, text=True, check=True).stdout
            if out != expected:
                raise AssertionError("cat maps differs from the in-process rendering")
            fuse_s, inproc_s = alternate([lambda: _spawn_s(["cat", str(maps)]), in_process], reps)
    return [ratio_row("cat_maps", f"cat maps of {kilo(entries)} entries", fuse_s * 1e3, "ms",
                      "render in-process", inproc_s * 1e3, 1.5)]


FIGURES = (mem_dd, cat_maps)


def _serve_bare(mountpoint: str, size: int) -> None:
    """The baseline: one read-only file of `size` bytes served from a buffer."""
    import signal

    import pyfuse3
    import trio

    payload = memoryview(bytes(range(256)) * (size // 256))

    class Bare(pyfuse3.Operations):
        """A root directory holding one file, `data`."""

        def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            a.st_mode = (stat.S_IFDIR | 0o555) if ino == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o444)
            a.st_size = 0 if ino == pyfuse3.ROOT_INODE else size
            a.st_uid, a.st_gid = os.getuid(), os.getgid()
            return a

        async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            return self._attr(inode)

        async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            if name != _BARE_FILE.encode():
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(2)

        async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
            return pyfuse3.FileInfo(fh=inode, direct_io=True)

        async def read(self, fh: int, off: int, length: int) -> bytes:
            return bytes(payload[off:off + length])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

    pyfuse3.init(Bare(), mountpoint, set(pyfuse3.default_options) | {"fsname=barefs"})
    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--bare":
        sys.exit("usage: python -m bench.bench_fuse --bare MOUNTPOINT SIZE (the figures: python -m bench --only fuse)")
    _serve_bare(sys.argv[2], int(sys.argv[3]))
