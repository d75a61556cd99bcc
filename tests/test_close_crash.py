"""Closing, dropping and crashing kernels leave the host process as it was.

- `k.close()` racing busy threads inside the kernel is
  tests/test_trust_concurrency.py::test_close_while_four_threads_are_busy_inside_the_kernel
  (30 rounds, in a child interpreter, closing during page-ins); not repeated
  here.  What it does not cover is a kernel that is also mounted: here
  `close()` meets FUSE requests in flight (real `dd`/`cat`/`ls` loops in
  other processes) as well as threads busy in the kernel.  close() must
  unmount, end every thread with ESHUTDOWN, and return; the readers must
  see the mount go away; nothing may crash.
- 50 kernels created, used a little (a 4 MiB mapping written under a 2 MiB
  limit with 8 MiB of swap, so the pagedaemon pages out to the swap file;
  a fork that copies on write), then closed -- or dropped without close()
  (`del` and `gc.collect()`, the finalizer releases them) -- leave the
  process's threads, open descriptors and RSS as they were, and no swap
  file (each kernel's unlinked swap file is seen open while in use and is
  gone with its descriptor).

RSS margin: 8 MiB.  Measured growth over 50 kernels is about 0.1 MiB (the
Python allocator keeping a few arenas).  Every kernel writes all of its
2 MiB of page frames, so a kernel whose frames leaked would keep at least
2 MiB resident: 50 leaked kernels would be 100 MiB, and the margin catches
any leak of more than 160 KiB per kernel.  The baseline is taken after five
kernels have come and gone, so one-time costs (imports, caches, allocator
arenas) are in it.

Each scenario runs in a child interpreter (this file run as a script): a
crash there is a failure here, and the measures are of a process that does
nothing else.  No sleeps for durations: the tests wait for states (threads
ended, weak references dead) with deadlines.
"""

from __future__ import annotations

import errno
import gc
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

import rumpvm
from rumpvm import PAGE_SIZE
from rumpvm.errors import VMError

P = PAGE_SIZE
M = 1 << 20
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
HANG_GUARD = 60.0  # subprocess and join timeouts: hang guards, never results
DEADLINE = 10.0  # for a state that follows at once (a thread ending after it was told to)
KERNELS = 50
WARMUP = 5
RSS_MARGIN = 8 * M  # see the module docstring
POLL = 0.01


def run_child(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run this file as a script in a child interpreter; its last stdout line is JSON."""
    try:
        r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                           timeout=HANG_GUARD * 2, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child hung: {e.stderr!r:.2000}")
    assert r.returncode == 0, f"the child died (rc {r.returncode}): {r.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


# -- child side: measures ----------------------------------------------------------------

def swap_fds() -> list[str]:
    """Targets of this process's descriptors that are rumpvm swap files."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "rumpvm-swap." in target:
            out.append(target)
    return out


def measure() -> dict[str, Any]:
    import psutil  # type: ignore[import-untyped]

    gc.collect()
    me = psutil.Process()
    return {"rss": me.memory_info().rss, "threads": me.num_threads(), "py_threads": threading.active_count(),
            "fds": me.num_fds(), "swap_fds": swap_fds()}


def use(k: rumpvm.Kernel) -> list[rumpvm.Proc]:
    """A little of everything that takes host resources: frames, pool pages,
    a u-area per process, swap I/O by the pagedaemon."""
    p = k.spawn(name="user")
    a = p.mmap(4 * M)
    for off in range(0, 4 * M, P):
        p.write(a + off, off.to_bytes(8, "little"))
    child = p.fork()
    child.write(a, b"child")
    assert p.read(a + 4 * M - P, 8) == (4 * M - P).to_bytes(8, "little")
    assert k.stats()["pageouts"] > 0, "the pagedaemon did not page out"
    path = k.swaps()[0].path
    assert path.endswith(" (deleted)") and path in swap_fds(), (path, swap_fds())
    return [p, child]


def wait_for(cond: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE}s: {what}")
        gc.collect()
        time.sleep(POLL)


def child_fifty(how: str) -> dict[str, Any]:
    for _ in range(WARMUP):
        with rumpvm.Kernel(memlimit="2M", swap="8M") as k:
            use(k)
    before = measure()
    before_files = set(glob.glob(os.path.join(tempfile.gettempdir(), "rumpvm-swap.*")))
    names, refs, late = [], [], 0
    for _ in range(KERNELS):
        k = rumpvm.Kernel(memlimit="2M", swap="8M")
        procs = use(k)
        names.append(k.swaps()[0].path.removesuffix(" (deleted)"))
        refs.append(weakref.ref(k))
        if how == "close":
            k.close()
        del k, procs
        gc.collect()
        if refs[-1]() is not None:
            # Its pagedaemon was in a scan (it holds its kernel strongly only
            # then): collected by the first collection after the scan.
            late += 1
    wait_for(lambda: all(r() is None for r in refs), "every kernel collected")
    wait_for(lambda: measure()["threads"] == before["threads"], "the pagedaemon threads ended")
    after = measure()
    after_files = set(glob.glob(os.path.join(tempfile.gettempdir(), "rumpvm-swap.*")))
    return {"before": before, "after": after, "late": late,
            "left": sorted(n for n in names if os.path.lexists(n)),
            "new_files_ours": sorted((after_files - before_files) & set(names)),
            "distinct": len(set(names))}


# -- child side: close() meeting FUSE requests and busy threads ------------------------------

def child_close_mounted(mnt: str, progress_dir: str) -> dict[str, Any]:
    from test_mountd_hostile import readers_end, start_readers

    k = rumpvm.Kernel(memlimit="4M", swap="32M")
    target = k.spawn(name="target")
    a = target.mmap(8 * M)
    for off in range(0, 8 * M, P):
        target.write(a + off, b"page")
    k.mount(mnt)
    looping = [threading.Event() for _ in range(3)]
    outcome: list[str | None] = [None] * 3

    def body(i: int) -> None:
        try:
            p = k.spawn(name=f"busy{i}")
            b = p.mmap(2 * M)
            while True:  # only close() ends this loop
                for off in range(0, 2 * M, P):
                    p.write(b + off, bytes([i]) * 64)
                c = p.fork()
                c.write(b, b"cow")
                c.exit()
                looping[i].set()
        except VMError as e:
            outcome[i] = errno.errorcode.get(e.errno or 0, str(e.errno))
        except BaseException as e:
            outcome[i] = repr(e)
        finally:
            looping[i].set()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    readers = start_readers(Path(mnt), Path(progress_dir), 3)  # in flight: each has read once
    for ev in looping:
        assert ev.wait(HANG_GUARD)
    before_close = list(outcome)
    start = time.monotonic()
    k.close()
    close_s = time.monotonic() - start
    for t in threads:
        t.join(HANG_GUARD)
    readers_s = readers_end(readers)
    with open("/proc/self/mounts") as f:
        still = [line for line in f if f" {mnt} " in line]
    return {"before_close": before_close, "outcome": outcome, "alive": [t.is_alive() for t in threads],
            "close_s": close_s, "readers_s": readers_s, "mounted": still, "swap_fds": swap_fds()}


# -- the tests ---------------------------------------------------------------------------

def test_close_while_fuse_requests_and_threads_are_in_flight(tmp_path: Path) -> None:
    mnt = tmp_path / "vm"
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    out = run_child("close-mounted", str(mnt), str(tmp_path), env=env)
    assert out["before_close"] == [None, None, None], "a busy thread stopped before close()"
    assert out["outcome"] == ["ESHUTDOWN"] * 3 and out["alive"] == [False] * 3, out
    assert out["close_s"] < HANG_GUARD / 4 and out["readers_s"] < HANG_GUARD / 4, out
    assert out["mounted"] == [] and out["swap_fds"] == [], out


@pytest.mark.parametrize("how", ["close", "drop"])
def test_fifty_kernels_leave_threads_descriptors_rss_and_tmp_as_they_were(how: str) -> None:
    out = run_child("fifty", how)
    before, after = out["before"], out["after"]
    assert out["distinct"] == KERNELS  # each kernel had a swap file of its own
    assert after["threads"] == before["threads"] and after["py_threads"] == before["py_threads"], out
    assert after["fds"] == before["fds"] and after["swap_fds"] == [] == before["swap_fds"], out
    assert out["left"] == [] and out["new_files_ours"] == [], out
    grew = after["rss"] - before["rss"]
    assert grew < RSS_MARGIN, f"RSS grew by {grew / M:.1f} MiB over {KERNELS} kernels ({how})"


if __name__ == "__main__":
    if sys.argv[1] == "fifty":
        result = child_fifty(sys.argv[2])
    elif sys.argv[1] == "close-mounted":
        result = child_close_mounted(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} fifty close|drop | close-mounted MNT DIR")
    print(json.dumps(result))
