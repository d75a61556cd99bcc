"""Fuzz target: trace files, `rumpvm.lab.read_trace(path, column, compact)`.

Formats (rumpvm/lab.py, docs/lab.md): one page number per line, or csv /
whitespace-separated columns with a header naming the page column
(`obj_id`, ...) or `column=` (index or header name); blank lines and `#`
comments skipped; decimal or 0x-hex numbers.

Documented outcomes: a list of ints >= 0 (with `compact`, renamed 0, 1, 2,
... in order of first appearance); ValueError for a file that does not
parse (a bad line, a negative page, an unknown column; UnicodeDecodeError
is one) and OSError for one that cannot be read — the two that `rumpvm lab`
catches and reports.  Anything else is a crash.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["rumpvm.lab"]):
    from rumpvm.lab import compact_trace, read_trace, write_trace

from fuzz._common import pick, run, tokens

VOCAB = ["0", "1", "7", "42", "-1", "0x10", "0X1f", "0o7", "0b1", "1_0", "12345678901234567890", "9" * 40, ",", ", ",
         " ", "\t", "\n", "\r\n", "\r", "\x0c", "\x1c", "\x85", "\u2028", "#", "# c\n", "obj_id", "OBJ_ID", "time",
         "size", "page", "key", "lba", "addr", "id", "obj", "\ufeff", "\u0663", "\x00", "\"", "'", "+5", "-0",
         "1e3", "nan", "time,obj_id,size\n", "1,2,3\n", "a b c\n"]
COLUMNS: list[object] = [None, 0, 1, 2, 3, -1, -2, 10**6, "obj_id", "OBJ_ID", "page", "size", "nope", "", "0", "1"]
_dir = tempfile.mkdtemp(prefix="rumpvm-fuzz-trace-")
PATH = os.path.join(_dir, "trace.txt")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    column = pick(fdp, COLUMNS)
    compact = fdp.ConsumeBool()
    raw = fdp.ConsumeIntInRange(0, 4) == 0
    if raw:
        content = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    else:
        content = tokens(fdp, VOCAB, max_tokens=40).encode("utf-8", "surrogatepass")
    with open(PATH, "wb") as f:
        f.write(content)
    try:
        trace = read_trace(PATH, column=column, compact=compact)  # type: ignore[arg-type]
    except (ValueError, OSError):
        return
    assert isinstance(trace, list), type(trace)
    assert all(type(p) is int and p >= 0 for p in trace), trace[:20]
    if compact:
        assert trace == compact_trace(trace), ("compact trace is not in first-appearance order", trace[:20])
    else:
        # A trace written back reads back the same (txt format).
        write_trace(trace, PATH)
        assert read_trace(PATH, compact=False) == trace, "write_trace/read_trace round trip"


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
    sys.exit(0)
