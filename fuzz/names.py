"""Fuzz target: names parsed by the /vm file system.

Parsers: `mountd.tree.parse_id(name)` (a directory entry under proc/ or
objects/ to a pid or object id) and `mountd.server._unescape_mount_field`
(a field of /proc/self/mounts, used to find a stale mount).

Documented outcomes (their docstrings):
  * parse_id: only canonical ASCII decimal names stand for an id, so the
    result printed back is the name itself (no "007", "+7", " 7", "٣"
    aliases), at most the id mask; anything else pyfuse3.FUSEError(ENOENT);
  * _unescape_mount_field: a str; a name escaped the way the kernel writes
    /proc/self/mounts (space, tab, newline, backslash as \\ooo) unescapes
    to itself.
Anything else is a crash.
"""

from __future__ import annotations

import errno
import sys

import atheris

with atheris.instrument_imports(include=["mountd.tree", "mountd.server"]):
    import pyfuse3

    from mountd import server, tree

from fuzz._common import run, tokens

VOCAB = ["0", "1", "7", "9", "00", "007", "+", "-", " ", "\t", "\n", "\\", "\\040", "\\011", "\\012", "\\134",
         "\\0", "\\9", "\\777", "\\400", "\u00b2", "\u0663", "\uff11", "\u00a0", "e", "x", "_", "281474976710655",
         "281474976710656", "99999999999999999999999", "/", "a", "\x00"]


def _escape(s: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in s)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        name = tokens(fdp, VOCAB, max_tokens=6)
    else:
        name = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    try:
        n = tree.parse_id(name)
    except pyfuse3.FUSEError as e:
        assert e.errno == errno.ENOENT, (name, e.errno)
    else:
        assert type(n) is int and 0 <= n and str(n) == name, (name, n)
    field = server._unescape_mount_field(name)
    assert isinstance(field, str), field
    assert server._unescape_mount_field(_escape(name)) == name, ("escape round trip", name)


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
    sys.exit(0)
