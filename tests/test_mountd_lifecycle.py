"""Lifecycle of the /vm server: mount, unmount, signals, stale mounts, one session.

The foreground daemon is the real `rumpvm mount` command run as a child
process; the background server is `Kernel.mount` / `mountd.mount_in_thread`
in this process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fusemount import ensure_dir, mounted, wait_live, wait_unmounted

import mountd
import rumpvm
from mountd.server import mounted_fstype

ROOT = Path(__file__).resolve().parent.parent


def start_daemon(mountpoint: Path, *extra: str) -> subprocess.Popen[str]:
    """`rumpvm mount MOUNTPOINT` as a child process, live when this returns."""
    ensure_dir(mountpoint)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rumpvm.cli import main; sys.exit(main())",
         "mount", str(mountpoint), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_live(mountpoint, timeout=15)
    except TimeoutError:
        child.kill()
        out, err = child.communicate()
        raise AssertionError(f"rumpvm mount did not come up:\n{out}\n{err}") from None
    return child


@pytest.fixture(autouse=True)
def no_mounts_left(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Whatever a failing test leaves mounted under tmp_path is lazily unmounted."""
    yield
    for d in tmp_path.iterdir():
        if mounted_fstype(str(d)) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(d)], check=False)


def stop(child: subprocess.Popen[str]) -> None:
    """Stop a daemon the clean way (SIGTERM), killing it only if that fails."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
    child.communicate(timeout=10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_within_a_second(tmp_path: Path, signum: int) -> None:
    mnt = tmp_path / "vm"
    child = start_daemon(mnt, "--memlimit", "32M")
    try:
        assert (mnt / "limit").read_text() == f"{32 << 20}\n"
        child.send_signal(signum)
        assert wait_unmounted(mnt, timeout=5) < 1.0
        assert child.wait(timeout=5) == 0
    finally:
        stop(child)
    assert os.listdir(mnt) == []


def test_stale_mount_is_cleared_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mnt = tmp_path / "vm"
    child = start_daemon(mnt)
    child.kill()  # SIGKILL: no chance to unmount
    child.communicate(timeout=10)
    with pytest.raises(OSError) as info:
        os.stat(mnt)
    assert info.value.errno == errno.ENOTCONN
    # A new daemon on the same mount point clears it and says so, once.
    second = start_daemon(mnt)
    try:
        assert (mnt / "meminfo").read_text().startswith("MemTotal:")
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=5)
        _, err = second.communicate(timeout=5)
    finally:
        stop(second)
    stale_lines = [line for line in err.splitlines() if "stale mount" in line]
    assert len(stale_lines) == 1 and str(mnt) in stale_lines[0], err
    # The same recovery in-process (Kernel.mount / mount_in_thread).
    third = start_daemon(mnt)
    third.kill()
    third.communicate(timeout=10)
    caplog.set_level(logging.WARNING, logger="mountd")
    with rumpvm.Kernel() as k, mounted(k, mnt) as root:
        assert (root / "limit").read_text() == "unlimited\n"
    assert [r for r in caplog.records if "stale mount" in r.getMessage()]
    assert mounted_fstype(str(mnt)) is None


def test_one_session_per_process_and_live_mounts_are_not_stacked(tmp_path: Path) -> None:
    other = start_daemon(tmp_path / "other")
    try:
        with rumpvm.Kernel() as k:
            # Someone else's live mount is not mounted over.
            with pytest.raises(OSError) as info:
                mountd.mount_in_thread(k, str(tmp_path / "other"))
            assert info.value.errno == errno.EBUSY
            with mounted(k, tmp_path / "a"):
                with pytest.raises(OSError) as info:
                    mountd.mount_in_thread(k, str(tmp_path / "b"))
                assert info.value.errno == errno.EBUSY
            # Once the first is gone, the process may mount again.
            with mounted(k, tmp_path / "b") as root:
                assert (root / "limit").exists()
    finally:
        stop(other)


def test_kernel_mount_handle_and_close(tmp_path: Path) -> None:
    mnt = tmp_path / "vm"
    mnt.mkdir()
    k = rumpvm.Kernel()
    try:
        handle = k.mount(str(mnt))
        wait_live(mnt)
        p = k.spawn(name="host")
        assert str(p.pid) in os.listdir(mnt / "proc")
        handle.unmount()
        handle.unmount()  # idempotent
        assert mounted_fstype(str(mnt)) is None
        k.mount(str(mnt))
        wait_live(mnt)
    finally:
        start = time.monotonic()
        k.close()  # unmounts what is still mounted
    assert mounted_fstype(str(mnt)) is None and time.monotonic() - start < 5


def test_missing_mount_point(tmp_path: Path) -> None:
    with rumpvm.Kernel() as k, pytest.raises(FileNotFoundError):
        mountd.mount_in_thread(k, str(tmp_path / "absent"))


def test_unmount_while_busy(tmp_path: Path) -> None:
    """A file held open (or a shell cd'ed) inside the mount does not block unmount."""
    mnt = tmp_path / "vm"
    with rumpvm.Kernel() as k:
        mnt.mkdir()
        handle = mountd.mount_in_thread(k, str(mnt))
        wait_live(mnt)
        fd = os.open(mnt / "meminfo", os.O_RDONLY)
        shell = subprocess.Popen(["sh", "-c", "sleep 30"], cwd=mnt / "proc")
        try:
            start = time.monotonic()
            handle.unmount()
            assert time.monotonic() - start < 10, "unmount waited for the open file"
            assert mounted_fstype(str(mnt)) is None
            with pytest.raises(OSError):
                os.read(fd, 100)
        finally:
            # close() reports the dead connection (its FLUSH fails); the fd is gone anyway.
            with contextlib.suppress(OSError):
                os.close(fd)
            shell.kill()
            shell.wait()


def test_serve_calls_ready_and_returns_on_external_unmount(tmp_path: Path) -> None:
    """`serve` off the main thread: no signal handlers; `fusermount3 -u` ends it."""
    mnt = tmp_path / "vm"
    mnt.mkdir()
    seen: list[str] = []

    def ready() -> None:  # runs while the server answers: it may use the mount
        seen.append((mnt / "limit").read_text())
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)

    with rumpvm.Kernel() as k:
        server = threading.Thread(target=mountd.serve, args=(k, str(mnt)), kwargs={"ready": ready})
        server.start()
        server.join(timeout=10)
        assert not server.is_alive()
    assert seen == ["unlimited\n"]
    assert mounted_fstype(str(mnt)) is None
