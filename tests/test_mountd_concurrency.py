"""8 reader processes on /vm while the demo workload and a churn thread fork and exit.

Each reader is a separate Python process looping over `proc/` until it
has seen 20 processes exit under it: every `maps` it manages to open must
be well-formed, the `mem` of a long-lived process must always read back
its known bytes, and the only errors allowed are the ones a vanishing
process explains (ENOENT, ESRCH, and EIO for an address unmapped in
between).  Afterwards the daemon still answers and the kernel's
bookkeeping checks out (the `kernel` fixture).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from fusemount import mounted

from rumpvm import PAGE_SIZE
from rumpvm.demo import DemoWorkload

READERS = 8
VANISHED = 20  # processes each reader must see go away while it reads
HANG_GUARD = 400.0  # seconds; only bounds a hang (generous for loaded machines), no result depends on it

READER = r"""
import errno, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from fusemount import check_maps_line
root, pid, addr, size, want, guard = (sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                                      int(sys.argv[6]), float(sys.argv[7]))
expected = bytes((i * 7) & 0xFF for i in range(size))
ok = {"maps": 0, "mem": 0, "stable": 0, "gone": 0, "vanished": 0}
seen = set()
deadline = time.monotonic() + guard
# Read until `want` processes were seen alive and then gone: the reads
# overlapped that many exits, however fast or slow this machine is.
while ok["vanished"] < want:
    if time.monotonic() > deadline:
        sys.exit(f"hang guard: saw only {ok['vanished']} processes vanish: {ok}")
    fd = os.open(f"{root}/proc/{pid}/mem", os.O_RDONLY)
    assert os.pread(fd, size, addr) == expected, "stable mem changed"
    os.close(fd)
    ok["stable"] += 1
    listing = set(os.listdir(f"{root}/proc"))
    ok["vanished"] += len(seen - listing)
    seen = listing
    for name in listing:
        try:
            with open(f"{root}/proc/{name}/maps") as f:
                lines = f.read().splitlines()
            for line in lines:
                check_maps_line(line)
            ok["maps"] += 1
            if lines:
                start = int(lines[0].split("-")[0], 16)
                fd = os.open(f"{root}/proc/{name}/mem", os.O_RDONLY)
                try:
                    assert len(os.pread(fd, 4 * 4096, start)) > 0
                finally:
                    os.close(fd)
                ok["mem"] += 1
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH, errno.EIO):
                raise
            ok["gone"] += 1
print(json.dumps(ok))
"""


def test_concurrent_readers_during_fork_and_exit(kernel, tmp_path: Path) -> None:
    stable = kernel.spawn(name="stable")
    size = 8 * PAGE_SIZE
    addr = stable.mmap(size)
    stable.write(addr, bytes((i * 7) & 0xFF for i in range(size)))
    stop = threading.Event()
    cycles = 0

    def churn() -> None:
        # Runs until every reader is done: each child lives until the next
        # fork, so readers find processes that exit under them.
        nonlocal cycles
        parent = kernel.spawn(name="churn")
        a = parent.mmap(16 * PAGE_SIZE)
        child = None
        while not stop.is_set():
            nxt = parent.fork()
            nxt.write(a, b"cow")
            nxt.mmap(PAGE_SIZE)
            if child is not None:
                child.exit()
            child = nxt
            cycles += 1
            # Give the GIL away between cycles: the kernel lock is not fair,
            # and a loop that takes it back at once starves the FUSE server.
            time.sleep(0)
        if child is not None:
            child.exit()

    demo = DemoWorkload(kernel, period=0.2).start()
    churner = threading.Thread(target=churn)
    churner.start()
    try:
        with mounted(kernel, tmp_path / "vm") as root:
            readers = [
                subprocess.Popen([sys.executable, "-c", READER, str(Path(__file__).parent), str(root),
                                  str(stable.pid), str(addr), str(size), str(VANISHED), str(HANG_GUARD)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(READERS)
            ]
            results = [(*r.communicate(timeout=HANG_GUARD + 60), r.returncode) for r in readers]
            for out, err, code in results:
                assert code == 0, err
                counts = json.loads(out)
                assert counts["stable"] > 0 and counts["maps"] > 0, out
                assert counts["vanished"] >= VANISHED, out
            assert (root / "proc" / str(stable.pid) / "maps").read_text()
    finally:
        stop.set()
        churner.join()
        demo.stop()
    assert cycles > 0 and demo.rounds > 0
