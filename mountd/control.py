"""Writes to the control files of /vm: `limit` and `pagedaemon/{policy,freemin,freetarg}`.

Protocol (the sysfs one): every write(2) carries one whole value; the file
offset is ignored, so `echo 32M > limit`, `echo 32M >> limit` and
`printf 32M > limit` all work.  Leading and trailing whitespace (the newline
of `echo`) is ignored.  A value is parsed strictly here, before the kernel
sees it, and then set through the kernel's own setter, which validates it
again.  Input that does not parse is EINVAL; a value the kernel refuses
fails with the errno of its `VMError` (EINVAL for a bad value, ENOMEM for a
limit below what the pagedaemon can free, ESHUTDOWN after `k.close()`).
Either way the old value stays in place.

`write` may block: lowering `limit` waits (up to the kernel's
`oom_timeout`) for the pagedaemon to get resident memory under the new
limit.  `fs.py` therefore calls it in a worker thread, never on the trio
thread that serves every other request; it touches no mountd state.

Writes are bounded: a write larger than `MAX_WRITE` bytes fails with EFBIG
at once and nothing is buffered, so `dd bs=1G of=limit` costs nothing.
"""

from __future__ import annotations

import errno
import re
from typing import TYPE_CHECKING

import pyfuse3

from rumpvm.errors import VMError

from .tree import Kind

if TYPE_CHECKING:
    from rumpvm import Kernel

MAX_WRITE = 4096

# Sizes for `limit`: decimal bytes with an optional binary k/m/g suffix.
# ASCII only: `\d` would match any Unicode digit, IGNORECASE the Kelvin sign.
_SIZE_RE = re.compile(r"([0-9]+)([kmg]?)", re.IGNORECASE | re.ASCII)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30}
_PAGES_RE = re.compile(r"[0-9]+", re.ASCII)
_WORD_RE = re.compile(r"[a-z0-9]+", re.ASCII)  # policy names: letters and digits (2q, s3fifo)


def parse_limit(text: str) -> int | None:
    """`unlimited` -> None, `<n>[k|m|g]` -> bytes; anything else EINVAL."""
    if text.lower() == "unlimited":
        return None
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise pyfuse3.FUSEError(errno.EINVAL)
    return int(m.group(1)) << _SHIFT[m.group(2).lower()]


def write(kernel: Kernel, kind: Kind, data: bytes) -> int:
    """Apply one write(2) to control file `kind`; returns the bytes consumed."""
    if len(data) > MAX_WRITE:
        raise pyfuse3.FUSEError(errno.EFBIG)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    try:
        if kind is Kind.LIMIT:
            kernel.memlimit = parse_limit(text)
        elif kind is Kind.PD_POLICY:
            if _WORD_RE.fullmatch(text) is None:
                raise pyfuse3.FUSEError(errno.EINVAL)
            kernel.pagedaemon.policy = text
        elif kind in (Kind.PD_FREEMIN, Kind.PD_FREETARG):
            if _PAGES_RE.fullmatch(text) is None:
                raise pyfuse3.FUSEError(errno.EINVAL)
            # `set_knobs` validates (0 <= freemin <= freetarg < limit); the
            # plain attributes would accept anything.
            if kind is Kind.PD_FREEMIN:
                kernel.pagedaemon.set_knobs(freemin=int(text))
            else:
                kernel.pagedaemon.set_knobs(freetarg=int(text))
        else:
            raise pyfuse3.FUSEError(errno.EACCES)
    except VMError as err:
        # The kernel's verdict (EINVAL, ENOMEM for a limit it cannot
        # honour, ESHUTDOWN once closed) goes to the writer unchanged.
        raise pyfuse3.FUSEError(err.errno or errno.EIO) from None
    return len(data)
