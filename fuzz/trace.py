"""Fuzz target: trace files, `rumpvm.trace.open_trace(path, column=...)` and
`load` (docs/traces.md): rumpvm's own format, `R|W addr` text, raw lackey
output, one page number per line, libCacheSim csv; compression detected by
content.

Documented outcomes: an array of `page << 1 | is_write` values (with
`compacted`, pages renamed 0, 1, 2, ... in order of first appearance);
ValueError for a file that does not parse (a bad line, a negative page, an
unknown column; UnicodeDecodeError is one) and OSError for one that cannot
be read — the two that `rumpvm experiment` and `rumpvm trace info` catch
and report.  Anything else is a crash.  A trace written back with
`write_trace` reads back the same.
"""

from __future__ import annotations

import os
import sys
import tempfile
from array import array

import atheris

with atheris.instrument_imports(include=["rumpvm.trace"]):
    from rumpvm.trace import compact, load, open_trace, write_trace

from fuzz._common import pick, run, tokens

VOCAB = ["0", "1", "7", "42", "-1", "0x10", "0X1f", "0o7", "0b1", "1_0", "12345678901234567890", "9" * 40, ",", ", ",
         " ", "\t", "\n", "\r\n", "\r", "\x0c", "\x1c", "\x85", "\u2028", "#", "# c\n", "obj_id", "OBJ_ID", "time",
         "size", "page", "key", "lba", "addr", "id", "obj", "\ufeff", "\u0663", "\x00", "\"", "'", "+5", "-0",
         "1e3", "nan", "time,obj_id,size\n", "1,2,3\n", "a b c\n", "R ", "W ", "r 0x", "w ", "I  04016d40,3\n",
         " L 1ffefffd40,8\n", " S ", " M ", "==123== x\n", "RVTRACE1", "\x1f\x8b", "(\xb5/\xfd"]
COLUMNS: list[object] = [None, 0, 1, 2, 3, -1, -2, 10**6, "obj_id", "OBJ_ID", "page", "size", "nope", "", "0", "1"]
_dir = tempfile.mkdtemp(prefix="rumpvm-fuzz-trace-")
PATH = os.path.join(_dir, "trace.txt")
BACK = os.path.join(_dir, "back.rvt")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    column = pick(fdp, COLUMNS)
    compacted = fdp.ConsumeBool()
    fetches = fdp.ConsumeBool()
    raw = fdp.ConsumeIntInRange(0, 4) == 0
    if raw:
        content = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    else:
        content = tokens(fdp, VOCAB, max_tokens=40).encode("utf-8", "surrogatepass")
    with open(PATH, "wb") as f:
        f.write(content)
    try:
        tr = open_trace(PATH, column=column, with_fetches=fetches)  # type: ignore[arg-type]
        got = load(tr, compacted=compacted)
        info = tr.info()
    except (ValueError, OSError):
        return
    assert isinstance(got, array) and got.typecode == "Q", type(got)
    assert info.accesses == len(got) == info.reads + info.writes, (info, len(got))
    if compacted:
        again = array("Q")
        for chunk in compact([got]):
            again.extend(chunk)
        assert again == got, "a compacted trace is not in first-appearance order"
    else:
        write_trace(BACK, [got], page_shift=tr.page_shift)
        assert load(open_trace(BACK), compacted=False) == got, "write_trace/open_trace round trip"


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
    sys.exit(0)
