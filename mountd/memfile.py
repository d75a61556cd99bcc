"""The memory files of /vm: `proc/<pid>/mem` and `objects/<id>/data`.

File offset = virtual address (mem) or object offset (data).

Reads are side-effect free: they use `Proc.peek` and `Kernel.object_peek`,
which never allocate, page in or mark referenced.  A read returns bytes up to
the first unmapped page (a short read); a read that starts on an unmapped
page fails with EIO, as Linux's /proc/<pid>/mem does.  Reads at or past the
end of the file return b"" (EOF).

Writes go through the VM (`Proc.write`, `Kernel.object_write`): protection
is checked and copy-on-write honoured.  A write to a mapped page without
write permission is EACCES (SEGV_ACCERR); to an unmapped page, EIO
(SEGV_MAPERR).  The whole write is checked first, so a failed write changes
nothing.  A write that runs out of memory part-way (`OutOfMemory.written`)
returns the bytes written, a short write (the writer's retry of the rest
then fails with ENOMEM).

Sizes (what `stat` shows): `mem` is `VM_MAXUSER_ADDRESS`, the end of the user
address space, not 0 as on Linux: `od -j`, `hexdump -s` and `tail -c` trust
st_size of a regular file and would skip a 0-size file entirely.  `data` is
the object's size.  The files are opened with direct_io, so the kernel's
page cache never serves stale bytes and st_size never clips a read.

Errors after the process or object went away: ESRCH for `mem`, ESTALE for
`data` (the handle names an object that no longer exists).
Any other kernel error is answered with the errno of its `VMError`.

`write` may block (a page allocation waits up to the kernel's `oom_timeout`
for memory), so `fs.py` calls it in a worker thread; reads never wait for
memory and run on the trio thread.  A read is one FUSE request, at most
1 MiB (libfuse's max_pages of 256), so it holds the trio thread for one
peek of that size: the peek allocates its result once, at its final size,
and fills it with one C copy per run of pages, and pyfuse3 replies from
that bytes object without copying it again.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import pyfuse3

from rumpvm.constants import VM_MAXUSER_ADDRESS
from rumpvm.errors import SegmentationFault, VMError

from .tree import Kind, Node

if TYPE_CHECKING:
    from rumpvm import Kernel

MEM_SIZE = VM_MAXUSER_ADDRESS

_SEGV_ERRNO = {"SEGV_ACCERR": errno.EACCES, "SEGV_MAPERR": errno.EIO}


def size(kernel: Kernel, node: Node) -> int:
    """st_size of a memory file (see the module docstring)."""
    if node.kind is Kind.PROC_MEM:
        return MEM_SIZE
    try:
        return kernel.object_info(node.id).size
    except VMError as err:
        raise _translate(node, err) from None


def read(kernel: Kernel, node: Node, off: int, length: int) -> bytes:
    """Up to `length` bytes at `off`; b"" at EOF; EIO when `off` is unmapped."""
    if off < 0 or length < 0:
        raise pyfuse3.FUSEError(errno.EINVAL)
    try:
        if node.kind is Kind.PROC_MEM:
            if off >= MEM_SIZE or length == 0:
                return b""
            length = min(length, MEM_SIZE - off)
            return kernel.proc(node.id).peek(off, length)
        return kernel.object_peek(node.id, off, length)
    except VMError as err:
        raise _translate(node, err) from None


def write(kernel: Kernel, node: Node, off: int, data: bytes) -> int:
    """Write `data` at `off` through the VM; returns len(data) or raises."""
    if off < 0:
        raise pyfuse3.FUSEError(errno.EINVAL)
    if not data:
        return 0
    try:
        if node.kind is Kind.PROC_MEM:
            if off + len(data) > MEM_SIZE:
                raise pyfuse3.FUSEError(errno.EIO)
            kernel.proc(node.id).write(off, data)
        else:
            kernel.object_write(node.id, off, data)
    except VMError as err:
        written = err.written
        if written:
            return int(written)  # a short write: what made it before memory ran out
        raise _translate(node, err) from None
    return len(data)


def _translate(node: Node, err: VMError) -> Exception:
    """The errno a reader or writer sees for a kernel error (module docstring)."""
    if isinstance(err, SegmentationFault):
        return pyfuse3.FUSEError(_SEGV_ERRNO.get(err.code, errno.EIO))
    if err.errno in (errno.ESRCH, errno.ENOENT):
        return pyfuse3.FUSEError(errno.ESRCH if node.kind is Kind.PROC_MEM else errno.ESTALE)
    if err.errno == errno.EFAULT:
        # A fault without a SEGV code: to a reader it is still "no memory here".
        return pyfuse3.FUSEError(errno.EIO)
    # The kernel's own errno: EIO (swap checksum), EINVAL/EFBIG (outside the
    # object), ENOMEM (a write that needed memory over the limit),
    # ESHUTDOWN (the kernel is closed), ...
    return pyfuse3.FUSEError(err.errno or errno.EIO)
