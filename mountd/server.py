"""Lifecycle of the /vm FUSE server: mount, serve, unmount, stale-mount recovery.

Two ways to run the same server:

- `serve(kernel, mountpoint)`: in the foreground (the `rumpvm mount` CLI).
  Blocks until SIGINT/SIGTERM (handlers installed only when called from the
  main thread) or until someone unmounts the file system, then unmounts.
- `mount_in_thread(kernel, mountpoint)`: trio in a daemon thread of a host
  program (`Kernel.mount`).  Returns a `MountHandle` once the mount is live;
  `handle.unmount()` stops it and is idempotent.

One session per process: pyfuse3 keeps its session in module globals
(`pyfuse3.init` is global), so a second concurrent mount in the same process
raises `OSError(EBUSY)`.  Mount it from another process instead.

Before mounting, a stale mount on the mount point (left by a daemon that was
killed: `stat` fails with ENOTCONN, "Transport endpoint is not connected") is
removed with a lazy unmount and reported in one log line.  A FUSE mount that
still answers is someone else's live file system: EBUSY.

Mount options: `fsname=rumpvm`, `subtype=rumpvm` (so mounts show as
`fuse.rumpvm`), `default_permissions`, and `allow_other` only on request.

Stopping: `pyfuse3.terminate()` makes `pyfuse3.main()` return once the
requests in flight are answered; `pyfuse3.close(unmount=True)` then unmounts
(as root libfuse uses a lazy umount2, so a busy mount point does not block).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import signal
import stat
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyfuse3
import trio

from .fs import VMFS

if TYPE_CHECKING:
    from rumpvm import Kernel

log = logging.getLogger("mountd")

_session_lock = threading.Lock()
_session_owner: str | None = None  # mount point of the live session, if any


def _options(allow_other: bool) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {"fsname=rumpvm", "subtype=rumpvm", "default_permissions"}
    if allow_other:
        options.add("allow_other")
    return options


def _claim_session(mountpoint: str) -> None:
    global _session_owner
    with _session_lock:
        if _session_owner is not None:
            raise OSError(errno.EBUSY, f"this process already serves a rumpvm mount at {_session_owner} "
                                       "(pyfuse3 allows one FUSE session per process)", mountpoint)
        _session_owner = mountpoint


def _release_session() -> None:
    global _session_owner
    with _session_lock:
        _session_owner = None


_OCTAL = frozenset("01234567")


def _unescape_mount_field(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as \ooo
    # (three ASCII octal digits; `isdigit` would also take "²" or "9").
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field) >= i + 4 and _OCTAL.issuperset(field[i + 1:i + 4]):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_fstype(mountpoint: str) -> str | None:
    """The fs type of the topmost mount at `mountpoint`, or None if nothing is mounted there."""
    path = os.path.abspath(mountpoint)
    fstype = None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and _unescape_mount_field(fields[1]) == path:
                fstype = fields[2]  # later lines are mounted on top
    return fstype


def _lazy_unmount(path: str) -> None:
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        if shutil.which(cmd[0]) is None:
            continue
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
    raise OSError(errno.EBUSY, "cannot clear the stale mount (fusermount3 -u -z and umount -l failed)", path)


def clear_stale_mount(mountpoint: str) -> bool:
    """Lazily unmount a dead FUSE mount at `mountpoint`; True if there was one.

    A mount is dead when `stat` or `statvfs` of it fails with ENOTCONN
    (statvfs is never answered from the kernel's attribute cache, so it
    reaches the server).  Raises OSError(EBUSY) if a live FUSE file system
    is mounted there, and the `stat` error if the mount point is otherwise
    unusable (e.g. ENOENT).
    """
    path = os.path.abspath(mountpoint)
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "the mount point must be a directory", path)
        fstype = mounted_fstype(path)
        if fstype is not None and fstype.startswith("fuse"):
            os.statvfs(path)
            raise OSError(errno.EBUSY, f"a live {fstype} file system is already mounted there", path)
    except OSError as err:
        if err.errno != errno.ENOTCONN:
            raise
        _lazy_unmount(path)
        log.warning("mountd: cleared a stale mount at %s left by a dead daemon "
                    "(Transport endpoint is not connected)", path)
        return True
    return False


def _mount(kernel: Kernel, mountpoint: str, allow_other: bool) -> None:
    """Claim the session, clear a stale mount, mount.  Undoes the claim on failure."""
    path = os.path.abspath(mountpoint)
    _claim_session(path)
    try:
        clear_stale_mount(path)
        try:
            pyfuse3.init(VMFS(kernel), path, _options(allow_other))
        except RuntimeError as err:
            # pyfuse3 reports mount failures as RuntimeError; callers expect OSError.
            raise OSError(errno.EIO, f"FUSE mount failed: {err}", path) from err
    except BaseException:
        _release_session()
        raise


def _unmount() -> None:
    """Close the session (unmounting) and release the claim.  Runs once per mount."""
    try:
        pyfuse3.close(unmount=True)
    finally:
        _release_session()


async def _main(started: Callable[[trio.lowlevel.TrioToken], None], signals: bool) -> None:
    """Serve until terminated; on SIGINT/SIGTERM (if `signals`) terminate."""
    async with trio.open_nursery() as nursery:
        if signals:
            nursery.start_soon(_stop_on_signal)
        nursery.start_soon(_serve_then_cancel, nursery.cancel_scope)
        started(trio.lowlevel.current_trio_token())


async def _serve_then_cancel(scope: trio.CancelScope) -> None:
    await pyfuse3.main()
    scope.cancel()  # the FUSE loop ended: stop the signal watcher too


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for signum in received:
            log.info("mountd: %s received, unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def serve(kernel: Kernel, mountpoint: str, *, allow_other: bool = False,
          ready: Callable[[], None] | None = None) -> None:
    """Mount /vm of `kernel` at `mountpoint` and serve it in the foreground.

    Returns after SIGINT/SIGTERM (when called from the main thread) or an
    external unmount, with the file system unmounted.  `ready` is called
    once the mount is live, in a thread of its own (so it may use the
    mount; the server thread must stay free to answer).  Raises OSError(EBUSY) if this process already
    serves a mount or a live FUSE file system is mounted there.
    """
    _mount(kernel, mountpoint, allow_other)
    try:
        trio.run(_main, _ready_hook(ready), threading.current_thread() is threading.main_thread())
    finally:
        _unmount()


def _ready_hook(ready: Callable[[], None] | None) -> Callable[[trio.lowlevel.TrioToken], None]:
    """A `started` hook that runs `ready` in a worker thread.

    Not on the trio thread: `ready` may well look at the mount, and a FUSE
    request from the thread that must answer it would never be answered.
    """
    def started(token: trio.lowlevel.TrioToken) -> None:
        if ready is not None:
            threading.Thread(target=ready, name="mountd ready", daemon=True).start()

    return started


class MountHandle:
    """A /vm mount served by a background thread; `unmount()` stops it.

    `unmount()` is idempotent and thread-safe; it is also run at interpreter
    exit, so a host program that forgets it leaves no stale mount behind.
    """

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self._token: trio.lowlevel.TrioToken | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"mountd {mountpoint}", daemon=True)

    def __repr__(self) -> str:
        return f"<MountHandle {self.mountpoint} {'live' if self.alive else 'unmounted'}>"

    @property
    def alive(self) -> bool:
        """True while the server thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            trio.run(_main, self._on_start, False)
        except BaseException as err:  # reported to the starter, or logged below
            self._error = err
            if self._started.is_set():
                log.exception("mountd: the server of %s stopped with an error", self.mountpoint)
        finally:
            _unmount()
            self._started.set()

    def _on_start(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._started.set()

    def _start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def unmount(self, timeout: float = 5.0) -> None:
        """Stop serving and unmount; waits up to `timeout` seconds.  Idempotent."""
        with self._lock:
            if self._thread.is_alive() and self._token is not None:
                try:
                    trio.from_thread.run_sync(pyfuse3.terminate, trio_token=self._token)
                except trio.RunFinishedError:
                    pass  # the loop already ended (external unmount)
            if self._thread is not threading.current_thread():
                self._thread.join(timeout)
        atexit.unregister(self.unmount)


def mount_in_thread(kernel: Kernel, mountpoint: str, allow_other: bool = False) -> MountHandle:
    """Mount /vm of `kernel` at `mountpoint`, served by a background thread.

    Returns once the mount is live.  Raises OSError(EBUSY) if this process
    already serves a mount (one pyfuse3 session per process) or a live FUSE
    file system is mounted there, and OSError/RuntimeError from FUSE if
    mounting fails.
    """
    path = os.path.abspath(mountpoint)
    _mount(kernel, path, allow_other)
    handle = MountHandle(path)
    try:
        handle._start()
    except BaseException:
        handle.unmount()
        raise
    atexit.register(handle.unmount)
    return handle
