"""The FUSE operations of /vm: translate FUSE requests to tree, render and VM calls.

`VMFS` holds no VM logic.  It decodes inode numbers into nodes (`tree`),
asks the tree whether they exist and what text they hold, passes memory I/O
to `memfile` and control writes to `control`, and turns the answers into
FUSE replies.

Invariants:
- Every handler is wrapped by `_boundary`: an expected failure is a
  `pyfuse3.FUSEError` or a kernel `VMError` (ESHUTDOWN after `k.close()`,
  for instance), answered with its errno and not logged; anything else is
  answered with EIO and logged in one line (handler, arguments, exception,
  where it was raised), so no request can stop the daemon or flood the log.
- Nothing that can change is cached in the kernel: entries and attributes
  of per-process and per-object nodes, and the attributes of every file,
  have timeouts of 0; every file is opened with direct_io.  A lookup after
  a process exits therefore reaches `tree` and answers ENOENT, and mem/data
  bytes are never stale.  Only the fixed part of the tree (the names under
  the root and `pagedaemon/`, and the attributes of the fixed directories
  below the root) is cached, which saves a FUSE round trip per path
  component.
- A text or control file is rendered once per open(2), and only there: the
  open file keeps the encoded text and every read slices it, so all reads
  of that open file see one consistent snapshot, as with Linux's seq_file
  for a file read in one go, and `cat` of a 100k-entry maps renders it
  once.  Its st_size is 0, as Linux's /proc text files report:
  lookup, stat and readdir never render (a true size would cost a render
  each, and a size remembered from an earlier open would be stale).
  Readers read to EOF, which direct_io allows past st_size: cat, dd, less,
  grep, tail, wc -c (it reads a 0-size file instead of trusting st_size)
  and Python's open().read() all see the whole text.
- Permissions: dirs 0555, text 0444, control 0644, memory 0600, owned by the
  mounting user.  The kernel checks them (`default_permissions`), but root
  bypasses mode bits, so `open` (write modes and O_TRUNC) and `setattr`
  enforce read-only-ness again.

Concurrency: the handlers run as trio tasks in the server thread, so a
kernel call that blocks the trio thread stalls every other request.  Three
kinds of call:
- calls that never wait and are short (lookups, rendering a file of fixed
  size, `peek` reads of at most one FUSE request: the inspection API
  allocates nothing and pages nothing in) are made directly on the trio
  thread.  They hold the GIL anyway, so a worker-thread hop buys no
  parallelism and costs time (2-CPU host: sequential 1 MiB reads of `mem`
  1250-1550 MiB/s direct vs 1060-1100 through to_thread, random 4 KiB
  preads 145-265 us vs 335-380 us);
- rendering a file that grows with the number of map entries (`_LONG`:
  maps, smaps, kmem maps; seconds for 100k entries) runs in a worker
  thread: it never waits either, but on the trio thread it would stall
  every other request for all that time, where in a worker the trio
  thread gets the GIL back at each switch interval and keeps serving
  (requests that need the kernel lock still wait while the records are
  taken under it: about a third of the time);
- calls that may wait (`_blocking`): every control-file write (lowering
  `limit` waits up to `oom_timeout` for the pagedaemon) and every memory-file
  write (a page allocation waits up to `oom_timeout` for memory).  They run
  in a worker thread (`trio.to_thread.run_sync`) while the trio thread
  serves other requests; the kernel's wait drops the kernel lock, so those
  requests are not blocked behind it either.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pyfuse3
import trio

from rumpvm.constants import PAGE_SIZE
from rumpvm.errors import VMError

from . import control, memfile
from .tree import Kind, Mode, Node, Tree

if TYPE_CHECKING:
    from rumpvm import Kernel

log = logging.getLogger("mountd")

_P = ParamSpec("_P")
_R = TypeVar("_R")

_PERMS = {
    Mode.DIR: stat.S_IFDIR | 0o555,
    Mode.TEXT: stat.S_IFREG | 0o444,
    Mode.CONTROL: stat.S_IFREG | 0o644,
    Mode.MEMORY: stat.S_IFREG | 0o600,
    Mode.LINK: stat.S_IFLNK | 0o777,
}


# Seconds the kernel may cache what never changes (see `_attrs`).
_FIXED_TIMEOUT = 60.0


def _brief(args: tuple[object, ...]) -> str:
    """The request arguments for a log line: numbers and short names as they
    are, long buffers as their length, request contexts and tokens left out."""
    out = []
    for arg in args:
        if isinstance(arg, bytes):
            out.append(repr(arg) if len(arg) <= 64 else f"<{len(arg)} bytes>")
        elif isinstance(arg, (int, str)):
            out.append(repr(arg))
    return ", ".join(out)


def _where(err: BaseException) -> str:
    """`file:line` of the innermost frame that raised `err`."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "?"
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"


def _boundary(fn: Callable[_P, Coroutine[Any, Any, _R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Map every failure of a handler to an errno; log the unexpected ones."""

    @functools.wraps(fn)
    async def handler(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except VMError as err:
            # The kernel's verdict: expected, answered with its errno.
            raise pyfuse3.FUSEError(err.errno or errno.EIO) from None
        except Exception as err:
            log.error("mountd: %s(%s) failed unexpectedly: %r at %s; answering EIO",
                      fn.__name__, _brief(args[1:]), err, _where(err))
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


async def _blocking(fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Run a kernel call that may wait, or take long, in a worker thread
    (module docstring)."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


# Text whose size grows with the number of map entries: rendered in a worker.
_LONG = frozenset({Kind.PROC_MAPS, Kind.PROC_SMAPS, Kind.KMEM_MAP})


@dataclass(slots=True)
class _OpenFile:
    """An open file: its node and, for text and control files, the snapshot read."""

    node: Node
    text: bytes = b""


@dataclass(slots=True)
class _OpenDir:
    """An open directory: the listing taken at opendir (refreshed at offset 0)."""

    node: Node
    entries: list[tuple[str, Node]] = field(default_factory=list)


class VMFS(pyfuse3.Operations):
    """pyfuse3 operations over a kernel's /vm tree.  See the module docstring."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, kernel: Kernel) -> None:
        super().__init__()
        self.kernel = kernel
        self.tree = Tree(kernel)
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._time_ns = time.time_ns()
        self._files: dict[int, _OpenFile] = {}
        self._dirs: dict[int, _OpenDir] = {}
        self._fh = itertools.count(1)

    # -- attributes ----------------------------------------------------------

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """Fresh attributes of an existing node; text and control files are
        not rendered (st_size 0, module docstring)."""
        mode = node.mode
        if mode is Mode.MEMORY:
            size = memfile.size(self.kernel, node)
        elif mode is Mode.LINK:
            size = len(self.tree.readlink(node))
        else:
            size = 0
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        # The fixed part of the tree never changes: its names and its
        # directories' attributes may be cached.  Everything else (sizes,
        # per-process and per-object nodes) is asked for every time.
        # The root is the exception: `stat /vm` must reach the server, so a
        # dead daemon shows as ENOTCONN at once.
        fixed = node.is_fixed
        a.entry_timeout = _FIXED_TIMEOUT if fixed else 0
        a.attr_timeout = _FIXED_TIMEOUT if fixed and mode is Mode.DIR and node.kind is not Kind.ROOT else 0
        a.st_mode = _PERMS[mode]
        a.st_nlink = 2 if mode is Mode.DIR else 1
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_rdev = 0
        a.st_size = size
        a.st_blksize = PAGE_SIZE
        # Memory files are sparse views, text is made at open: no blocks.
        a.st_blocks = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._time_ns
        return a

    @_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = Node.from_ino(inode)
        self.tree.check(node)
        return self._attrs(node)

    @_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = Node.from_ino(parent_inode)
        self.tree.check(parent)
        return self._attrs(self.tree.lookup(parent, os.fsdecode(name)))

    @_boundary
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = Node.from_ino(inode)
        self.tree.check(node)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_size:
            # O_TRUNC of a control file (`echo 32M > limit`) or of a memory
            # file (`dd of=mem seek=..`) is accepted and changes nothing: the
            # size is the kernel's.  Text files are read-only, even for root.
            if node.mode is Mode.TEXT:
                raise pyfuse3.FUSEError(errno.EACCES)
            if node.mode is Mode.DIR:
                raise pyfuse3.FUSEError(errno.EISDIR)
        # Time updates are accepted and ignored, so `touch` does not fail.
        return self._attrs(node)

    @_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(self.tree.readlink(Node.from_ino(inode)))

    @_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        info = self.kernel.meminfo()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = PAGE_SIZE
        s.f_blocks = info.get("MemTotal", 0) // PAGE_SIZE
        s.f_bfree = s.f_bavail = info.get("MemFree", 0) // PAGE_SIZE
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- directories ---------------------------------------------------------

    @_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = Node.from_ino(inode)
        self.tree.check(node)
        if node.mode is not Mode.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self._fh)
        self._dirs[fh] = _OpenDir(node, self.tree.children(node))
        return fh

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs.get(fh)
        if d is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if start_id == 0:
            # A listing from the start (also rewinddir) sees the tree as it is now.
            d.entries = self.tree.children(d.node)
        # next_id is the position in this handle's listing, so a listing
        # resumed at any offset neither repeats nor skips an entry.
        for index in range(start_id, len(d.entries)):
            name, child = d.entries[index]
            try:
                attrs = self._attrs(child)
            except pyfuse3.FUSEError:
                continue  # gone since the listing was taken
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                return

    @_boundary
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ---------------------------------------------------------------

    @_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = Node.from_ino(inode)
        self.tree.check(node)
        mode = node.mode
        if mode is Mode.DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if mode is Mode.LINK:
            raise pyfuse3.FUSEError(errno.ELOOP)
        # O_TRUNC writes too: with atomic_o_trunc the kernel passes it here
        # instead of calling setattr, and root passes the mode check.
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if mode is Mode.TEXT and writing:
            raise pyfuse3.FUSEError(errno.EACCES)
        opened = _OpenFile(node)
        if node.kind in _LONG:
            opened.text = await _blocking(self._render, node)
        elif mode in (Mode.TEXT, Mode.CONTROL):
            opened.text = self._render(node)
        fh = next(self._fh)
        self._files[fh] = opened
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _render(self, node: Node) -> bytes:
        """The text of a text or control node now, encoded."""
        return self.tree.text(node).encode()

    def _file(self, fh: int) -> _OpenFile:
        opened = self._files.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return opened

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        opened = self._file(fh)
        if opened.node.mode is Mode.MEMORY:
            return memfile.read(self.kernel, opened.node, off, size)
        if off < 0 or size < 0:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return opened.text[off:off + size]

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        opened = self._file(fh)
        mode = opened.node.mode
        if mode is Mode.MEMORY:
            return await _blocking(memfile.write, self.kernel, opened.node, off, buf)
        if mode is Mode.CONTROL:
            return await _blocking(control.write, self.kernel, opened.node.kind, buf)
        raise pyfuse3.FUSEError(errno.EACCES)

    @_boundary
    async def flush(self, fh: int) -> None:
        self._file(fh)

    @_boundary
    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    # -- the namespace is the kernel's: no creating, removing or renaming ----

    @_boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)
