"""The errors of the public API.

Every failure a caller can cause is a `VMError` (an `OSError` carrying an
errno), so host programs handle rumpvm like any other system interface.
"""

from __future__ import annotations

import errno
import os


class VMError(OSError):
    """A VM call failed; `errno` says why (see the errno table in README).

    `written`: for an error raised part-way through a multi-page write or
    readinto (out of memory, a map that changed while it slept, a swap
    read error, a window closing), the bytes copied from its start (a
    short write); None when nothing was attempted or for other calls."""

    written: int | None = None

    def __init__(self, err: int, message: str | None = None) -> None:
        super().__init__(err, message or os.strerror(err))


class OutOfMemory(VMError):
    """Memory ran out: nothing could be freed within the wait bound (ENOMEM).

    `written` is set by a write that ran out part-way: the bytes written from
    its start (a short write); None for every other call."""

    def __init__(self, message: str = "out of memory") -> None:
        super().__init__(errno.ENOMEM, message)
        self.written: int | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # OSError pickles as (errno, strerror): rebuild from our own arguments
        # (an experiment worker's error crosses a process boundary).
        return type(self), (self.strerror,), {"written": self.written}


class SegmentationFault(VMError):
    """Access to an unmapped page or without the right protection (EFAULT).

    `addr` is the first faulting address, `access` the PROT_* bit that was
    needed, and `code` is "SEGV_MAPERR" (nothing mapped) or "SEGV_ACCERR"
    (mapped, but the protection forbids the access), as in siginfo.

    `written` is None when the range check refused a read or write before
    anything was copied (the rule).  It is the bytes copied from the start
    when the map changed under a multi-page `write`/`readinto` while it
    slept part-way (for memory or a page-in): a short write, as
    process_vm_writev gives.
    """

    def __init__(self, addr: int, access: int, code: str = "SEGV_MAPERR") -> None:
        kind = {1: "read", 2: "write", 4: "exec"}.get(access, f"access {access:#x}")
        super().__init__(errno.EFAULT, f"segmentation fault: {kind} at {addr:#x} ({code})")
        self.addr = addr
        self.access = access
        self.code = code
        self.written: int | None = None

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.addr, self.access, self.code), {"written": self.written}


def einval(message: str) -> VMError:
    return VMError(errno.EINVAL, message)

