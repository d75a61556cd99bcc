"""Parsing of size parameters: bytes, or a number with a K/M/G/T suffix.

Used for `RUMP_MEMLIMIT`, `Kernel(memlimit=..., swap=...)`, `k.memlimit = ...`
and the control files under /vm.  Suffixes are binary (K = 1024) and
case-insensitive, as in later NetBSD revisions of `RUMP_MEMLIMIT`.
"""

from __future__ import annotations

import re

from .errors import einval

_SIZE_RE = re.compile(r"\s*(-?[0-9]+)\s*([kKmMgGtT]?)[bB]?\s*")
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
UNLIMITED_WORDS = ("unlimited", "none", "")
MAX_SIZE = (1 << 63) - 1  # an off_t: what statfs, st_size and swap offsets can hold


def parse_size(value: int | str, what: str = "size") -> int:
    """Return `value` in bytes.  Raises VMError(EINVAL) if it does not parse
    or is beyond MAX_SIZE.

    `bool` is rejected (it is an int in Python, but never a size).
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be int or str, not bool")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.fullmatch(value) if len(value) < 64 else None
        if m is None:
            raise einval(f"{what}: cannot parse {value[:64]!r} (bytes, or a number with K/M/G/T)")
        n = int(m.group(1)) * (1 << _SHIFT[m.group(2).lower()])
    else:
        raise TypeError(f"{what} must be int or str, not {type(value).__name__}")
    if n > MAX_SIZE:
        raise einval(f"{what}: {n} is beyond the largest size, {MAX_SIZE} bytes")
    return n


def parse_limit(value: int | str | None, what: str = "memlimit") -> int | None:
    """Like parse_size, but None or "unlimited" mean no limit (returns None)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in UNLIMITED_WORDS:
        return None
    return parse_size(value, what)


def format_size(n: int | None) -> str:
    """Render a byte count the way `parse_limit` reads it back."""
    if n is None:
        return "unlimited"
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)
