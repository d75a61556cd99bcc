"""The main job: `rumpvm mount MNT --demo` (what scripts/run-vm runs).

The demo runs under a 32M limit with 128M of swap and a larger footprint,
so /vm must soon show pageouts, swapouts and sleeping or swapped-out
processes; SIGINT then unmounts it and the command exits cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusemount import POLL, ensure_dir, run, wait_live, wait_unmounted

from mountd.server import mounted_fstype

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0  # seconds for the demo to page and swap; only bounds a hang


def rumpvm_command() -> list[str]:
    """The installed `rumpvm` script of this interpreter's venv, else the module."""
    script = Path(sys.executable).with_name("rumpvm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rumpvm.cli"]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    mnt = tmp_path / "vm"
    ensure_dir(mnt)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("RUMP_MEMLIMIT", None)
    child = subprocess.Popen([*rumpvm_command(), "mount", str(mnt), "--demo"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_live(mnt, timeout=15)
        yield child, mnt
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
        if mounted_fstype(str(mnt)) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def vmstat(mnt: Path) -> dict[str, int]:
    return {name: int(value) for name, value in
            (line.split() for line in run("cat", mnt / "vmstat").stdout.splitlines())}


def states(mnt: Path) -> set[str]:
    """The State letters of every process's status (processes may exit meanwhile)."""
    found = set()
    for d in (mnt / "proc").iterdir():
        r = run("cat", d / "status", check=False)
        found.update(line.split("\t")[1][0] for line in r.stdout.splitlines() if line.startswith("State:"))
    return found


def test_demo_pages_swaps_and_unmounts_on_sigint(demo: tuple[subprocess.Popen[str], Path]) -> None:
    child, mnt = demo
    assert run("cat", mnt / "limit").stdout == f"{32 << 20}\n"
    assert f"\t{128 << 10}\t" in run("cat", mnt / "swaps").stdout
    deadline = time.monotonic() + DEADLINE
    while True:
        counters, seen = vmstat(mnt), states(mnt)
        if counters["pageouts"] > 0 and counters["swapouts"] > 0 and seen & {"S", "W"}:
            break
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, f"after {DEADLINE}s: {counters} states {seen}"
        time.sleep(POLL * 10)
    child.send_signal(signal.SIGINT)
    wait_unmounted(mnt, timeout=5)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    for bad in ("Traceback", "reads back wrong", "demo workload stopped"):
        assert bad not in err, err
    assert os.listdir(mnt) == []
