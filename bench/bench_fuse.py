"""Benchmarks of the /vm FUSE file system, each against a baseline run alongside.

Figures (rows of `run()`: figure, value, unit, baseline, ratio, target):

- `fuse mem read`: sequential 1 MiB reads (`dd bs=1M`) of resident memory
  through `proc/<pid>/mem`, in MiB/s.  Baseline: a bare pyfuse3 file system
  (the smallest one possible, in this file) serving the same number of bytes
  from a Python buffer with the same options (direct_io, default max_read),
  read by the same `dd`.  Target: ratio >= 0.5.
- `fuse cat maps`: wall time of `cat proc/<pid>/maps` for a process with
  many map entries, in ms.  Baseline: rendering the same text in-process
  (`p.maps()` + `mountd.render.maps`).  The ratio is the FUSE overhead
  (lookup, open and stat each render the file once; see mountd/fs.py).

Each figure is the best of `REPEAT` runs.  pyfuse3 allows one session per
process, so the bare file system runs in a child process
(`python -m bench.bench_fuse --bare MOUNTPOINT SIZE`) while /vm is served by
a thread of this one; the reader is always a separate `dd`/`cat` process.

Sizes: `run(mem_mib=256, entries=10_000)`, overridable with the
environment variables `BENCH_FUSE_MIB` and `BENCH_FUSE_ENTRIES` (e.g.
`BENCH_FUSE_MIB=16 BENCH_FUSE_ENTRIES=500 python -m bench` for a quick run).
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

MiB = 1 << 20
REPEAT = 5
_BARE_FILE = "data"


def _best(fn: object, repeat: int = REPEAT) -> float:
    """Best wall time in seconds of `repeat` calls of `fn()`."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def _dd_read(path: Path, skip_bytes: int, nbytes: int) -> None:
    subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=1M", f"count={nbytes // MiB}",
         f"skip={skip_bytes}", "iflag=skip_bytes", "status=none"],
        check=True, timeout=600,
    )


def _wait_mounted(path: Path, timeout: float = 10.0) -> None:
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
        child.wait(timeout=10)


def bench_mem_read(mem_mib: int) -> tuple[str, float, str, float, float, str]:
    """Sequential 1 MiB reads of resident memory: /vm mem vs a bare pyfuse3 fs."""
    import mountd
    import rumpvm

    size = mem_mib * MiB
    with tempfile.TemporaryDirectory() as tmp, rumpvm.Kernel() as k:
        p = k.spawn(name="bench")
        addr = p.mmap(size)
        chunk = bytes(range(256)) * (MiB // 256)
        for off in range(0, size, MiB):
            p.write(addr + off, chunk)  # resident, so reads measure FUSE + peek
        os.mkdir(os.path.join(tmp, "vm"))
        handle = mountd.mount_in_thread(k, os.path.join(tmp, "vm"))
        try:
            mem = Path(tmp, "vm", "proc", str(p.pid), "mem")
            with _bare_mount(Path(tmp, "bare"), size) as data:
                # Alternate the two so that drift of a noisy host hits both.
                vm_runs, bare_runs = [], []
                for _ in range(REPEAT):
                    vm_runs.append(_best(lambda: _dd_read(mem, addr, size), 1))
                    bare_runs.append(_best(lambda: _dd_read(data, 0, size), 1))
        finally:
            handle.unmount()
    vm_s, bare_s = min(vm_runs), min(bare_runs)
    value, baseline = mem_mib / vm_s, mem_mib / bare_s
    return (f"fuse mem read (1 MiB seq, {mem_mib} MiB)", value, "MiB/s", baseline,
            value / baseline, ">= 0.5 of bare pyfuse3")


def bench_cat_maps(entries: int) -> tuple[str, float, str, float, float, str]:
    """`cat maps` of a process with `entries` map entries vs rendering in-process."""
    import mountd
    import rumpvm
    from mountd import render
    from rumpvm import MAP_ANON, MAP_FIXED, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE

    with tempfile.TemporaryDirectory() as tmp, rumpvm.Kernel() as k:
        p = k.spawn(name="bench")
        base = 0x10_0000_0000
        for i in range(entries):
            # One page every other page: the gaps keep entries from merging.
            p.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANON | MAP_FIXED,
                   addr=base + 2 * i * PAGE_SIZE)
        expected = render.maps(p.maps())
        inproc_s = _best(lambda: render.maps(p.maps()))
        os.mkdir(os.path.join(tmp, "vm"))
        handle = mountd.mount_in_thread(k, os.path.join(tmp, "vm"))
        try:
            maps = Path(tmp, "vm", "proc", str(p.pid), "maps")
            out = subprocess.run(["cat", maps], capture_output=True, text=True, check=True).stdout
            if out != expected:
                raise AssertionError("cat maps differs from the in-process rendering")
            fuse_s = _best(lambda: subprocess.run(["cat", maps], stdout=subprocess.DEVNULL, check=True))
        finally:
            handle.unmount()
    return (f"fuse cat maps ({entries} entries)", fuse_s * 1e3, "ms", inproc_s * 1e3,
            fuse_s / inproc_s, "time vs in-process render (lower is better)")


def run(mem_mib: int | None = None, entries: int | None = None) -> list[tuple[str, float, str, float, float, str]]:
    """All figures of this module (see the module docstring)."""
    mem_mib = mem_mib or int(os.environ.get("BENCH_FUSE_MIB", "256"))
    entries = entries or int(os.environ.get("BENCH_FUSE_ENTRIES", "10000"))
    return [bench_mem_read(mem_mib), bench_cat_maps(entries)]


def _serve_bare(mountpoint: str, size: int) -> None:
    """The baseline: one read-only file of `size` bytes served from a buffer."""
    import signal

    import pyfuse3
    import trio

    payload = memoryview(bytes(range(256)) * (size // 256))

    class Bare(pyfuse3.Operations):
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
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        _serve_bare(sys.argv[2], int(sys.argv[3]))
    else:
        for row in run():
            figure, value, unit, baseline, ratio, target = row
            print(f"{figure}: {value:.1f} {unit} (baseline {baseline:.1f} {unit}, ratio {ratio:.2f}; target {target})")
