"""Parsing of size parameters: bytes, or a number with a K/M/G/T suffix.

Used for `RUMP_MEMLIMIT`, `Kernel(memlimit=..., swap=...)`, `k.memlimit = ...`
and the control files under /vm.  Suffixes are binary (K = 1024) and
case-insensitive, as in later NetBSD revisions of `RUMP_MEMLIMIT`.
"""

from __future__ import annotations

import re

from .errors import einval

_SIZE_RE = re.compile(r"\s*(-?\d+)\s*([kKmMgGtT]?)[bB]?\s*")
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
UNLIMITED_WORDS = ("unlimited", "none", "")


def parse_size(value: int | str, what: str = "size") -> int:
    """Return `value` in bytes.  Raises VMError(EINVAL) if it does not parse.

    `bool` is rejected (it is an int in Python, but never a size).
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be int or str, not bool")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be int or str, not {type(value).__name__}")
    m = _SIZE_RE.fullmatch(value)
    if m is None:
        raise einval(f"{what}: cannot parse {value!r} (bytes, or a number with K/M/G/T)")
    return int(m.group(1)) * (1 << _SHIFT[m.group(2).lower()])


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
