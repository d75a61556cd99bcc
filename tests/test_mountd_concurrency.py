"""8 reader processes on /vm while the demo workload and a churn thread fork and exit.

Each reader is a separate Python process looping for a few seconds over
`proc/`: every `maps` it manages to open must be well-formed, the `mem` of
a long-lived process must always read back its known bytes, and the only
errors allowed are the ones a vanishing process explains (ENOENT, ESRCH,
and EIO for an address unmapped in between).  Afterwards the daemon still
answers and the kernel's bookkeeping checks out (the `kernel` fixture).
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
SECONDS = 2.0

READER = r"""
import errno, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from fusemount import check_maps_line
root, pid, addr, size, seconds = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
expected = bytes((i * 7) & 0xFF for i in range(size))
ok = {"maps": 0, "mem": 0, "stable": 0, "gone": 0}
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    fd = os.open(f"{root}/proc/{pid}/mem", os.O_RDONLY)
    assert os.pread(fd, size, addr) == expected, "stable mem changed"
    os.close(fd)
    ok["stable"] += 1
    for name in os.listdir(f"{root}/proc"):
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

    def churn() -> None:
        parent = kernel.spawn(name="churn")
        a = parent.mmap(16 * PAGE_SIZE)
        while not stop.is_set():
            child = parent.fork()
            child.write(a, b"cow")
            child.mmap(PAGE_SIZE)
            child.exit()
            # Let go of the GIL now and then: the FUSE server is a thread of
            # this process too, and a spinning thread would only slow it down.
            time.sleep(0.01)

    demo = DemoWorkload(kernel, period=0.2).start()
    churner = threading.Thread(target=churn)
    churner.start()
    try:
        with mounted(kernel, tmp_path / "vm") as root:
            readers = [
                subprocess.Popen([sys.executable, "-c", READER, str(Path(__file__).parent), str(root),
                                  str(stable.pid), str(addr), str(size), str(SECONDS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(READERS)
            ]
            results = [r.communicate(timeout=60) + (r.returncode,) for r in readers]
            for out, err, code in results:
                assert code == 0, err
                counts = json.loads(out)
                assert counts["stable"] > 0 and counts["maps"] > 0, out
            assert (root / "proc" / str(stable.pid) / "maps").read_text()
    finally:
        stop.set()
        churner.join()
        demo.stop()
    assert demo.rounds > 1
