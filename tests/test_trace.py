"""rumpvm.trace: the rumpvm trace format, format and compression detection,
the text parsers (lackey's coalescing and page crossing), streaming in
chunks, errors with line numbers, recording a real program with valgrind,
and `rumpvm trace info|record`."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import lzma
import os
import re
import signal
import subprocess
import textwrap
from array import array

import pytest
import zstandard

from rumpvm import trace as T

PAGE = 4096


def R(page: int) -> int:
    return page << 1


def W(page: int) -> int:
    return page << 1 | 1


def values(t: T.Trace, size: int = 1 << 16) -> list[int]:
    return [v for chunk in t.chunks(size) for v in chunk]


def put(path, text: str | bytes, compress: str = "none"):
    data = text.encode() if isinstance(text, str) else text
    data = {"none": lambda d: d, "gzip": gzip.compress, "xz": lzma.compress,
            "zstd": zstandard.ZstdCompressor().compress}[compress](data)
    path.write_bytes(data)
    return str(path)


LACKEY_LOG = """\
==4711== Lackey, an example Valgrind tool
==4711== Command: ./a.out
==4711==
I  04016d40,3
 S 1ffefff000,8
 S 1ffefff008,8
 L 1ffefff010,4
I  04016d43,5
 M 0000402000,4
 L 0000402ffc,8
==4711== Warning: client switching stacks?
 L 0000404000,8
--4711-- WARNING: unhandled amd64-linux syscall: 334
I  04016d48,2
 L 0000404008,8
==4711==
==4711== Exit code:       0
"""
LACKEY_PAGES = [W(0x1ffefff), R(0x1ffefff), W(0x402), R(0x402), R(0x403), R(0x404)]


# ---------------------------------------------------------------------------
# the rumpvm format


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".zst"])
def test_rumpvm_round_trip(tmp_path, suffix):
    recs = [W(0), R(0), R(7), W(T.MAX_PAGE), R(T.MAX_PAGE), W(12345)]
    path = tmp_path / f"t.rvt{suffix}"
    n = T.write_trace(path, [array("Q", recs[:2]), recs[2:5], iter(recs[5:])], page_shift=13, fetches=True)
    assert n == len(recs)
    stored = path.read_bytes()
    if suffix == "":
        assert stored[:16] == b"RVTRACE1" + bytes([1, 13, 1, 0, 0, 0, 0, 0])
        assert stored[16:24] == W(0).to_bytes(8, "little")
    else:
        assert not stored.startswith(b"RVTRACE1")  # compressed as the name says
    t = T.open_trace(path)  # the header's page_shift wins over the default 12
    assert (t.format, t.page_shift) == ("rumpvm", 13)
    assert values(t) == recs
    info = t.info()
    assert info == T.TraceInfo("rumpvm", 6, 4, 3, 3, 13, hashlib.sha256(stored).hexdigest())
    assert t.info() is info  # cached


def test_empty_rumpvm_trace_is_valid(tmp_path):
    path = tmp_path / "e.rvt.gz"
    assert T.write_trace(path, []) == 0
    assert values(T.open_trace(path)) == []
    assert T.open_trace(path).info().accesses == 0


def test_compression_is_detected_by_content_not_name(tmp_path):
    rw = put(tmp_path / "plain-looking.txt", "R 1000\nW 0x2000\n", "gzip")
    assert values(T.open_trace(rw)) == [R(1), W(2)]
    lk = put(tmp_path / "lackey.log", LACKEY_LOG, "xz")
    assert T.open_trace(lk).format == "lackey"
    T.write_trace(tmp_path / "r.zst", [[W(5)]])
    os.rename(tmp_path / "r.zst", tmp_path / "r.bin")
    assert values(T.open_trace(tmp_path / "r.bin")) == [W(5)]
    # A multi-frame zstd file is read across frames.
    c = zstandard.ZstdCompressor()
    (tmp_path / "p").write_bytes(c.compress(b"1\n2\n") + c.compress(b"3\n"))
    assert values(T.open_trace(tmp_path / "p")) == [W(1), W(2), W(3)]


def test_write_trace_failure_changes_nothing(tmp_path):
    path = tmp_path / "keep.rvt"
    T.write_trace(path, [[W(1)]])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="out of range"):
        T.write_trace(path, [[W(2)], [-1]])
    with pytest.raises(ValueError, match="page_shift"):
        T.write_trace(path, [[W(2)]], page_shift=64)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.rvt"]  # no temporary file left


@pytest.mark.parametrize(("data", "message"), [
    (b"RVTRACE1\x01\x0c", "truncated rumpvm header"),
    (b"RVTRACE1\x02\x0c\x00\x00\x00\x00\x00\x00", "version 2"),
    (b"RVTRACE1\x01\x0c\x02\x00\x00\x00\x00\x00", "bad rumpvm header"),
    (b"RVTRACE1\x01\x0c\x00\x00\x00\x00\x00\x00" + bytes(12), "4 bytes after the last whole record"),
])
def test_bad_rumpvm_files(tmp_path, data, message):
    path = put(tmp_path / "bad.rvt", data)
    with pytest.raises(ValueError, match=message):
        values(T.open_trace(path))


def test_corrupt_compressed_data(tmp_path):
    data = bytearray(gzip.compress(b"1\n" * 10000))
    data[40:60] = bytes(20)
    path = put(tmp_path / "c.gz", bytes(data))
    with pytest.raises(ValueError, match="corrupt gzip data"):
        values(T.open_trace(path))


# ---------------------------------------------------------------------------
# text formats


@pytest.mark.parametrize(("fmt", "text", "expected"), [
    ("rw", "# comment\n\nR 7fff1234\nw 0x7FFF2000\n  W   10  \r\n", [R(0x7fff1), W(0x7fff2), W(0)]),
    ("lackey", LACKEY_LOG, LACKEY_PAGES),
    ("pages", "# pages\n5\n0x10\n007\n\n5\n", [W(5), W(16), W(7), W(5)]),
    ("csv", "timestamp,obj_id,obj_size\n1,42,4096\n2, 0x2b ,4096\n# c\n3,42,8\n", [W(42), W(43), W(42)]),
    ("csv", "obj_id\n3\n4\n", [W(3), W(4)]),
])
def test_formats_detected_and_read(tmp_path, fmt, text, expected):
    t = T.open_trace(put(tmp_path / "t", text))
    assert t.format == fmt
    assert values(t) == expected
    reads = sum(1 for v in expected if not v & 1)
    assert t.info() == T.TraceInfo(fmt, len(expected), len({v >> 1 for v in expected}), reads,
                                   len(expected) - reads, 12, hashlib.sha256(text.encode()).hexdigest())


def test_rw_page_shift(tmp_path):
    path = put(tmp_path / "t", "R 1fff\nW 2000\n")
    assert values(T.open_trace(path, page_shift=13)) == [R(0), W(1)]
    assert values(T.open_trace(path, page_shift=0)) == [R(0x1fff), W(0x2000)]


def test_lackey_coalescing_page_crossing_and_fetches(tmp_path):
    log = textwrap.dedent("""\
        I  00001ffe,4
         L 00005000,8
         L 00005ff0,8
         L 00005008,4
         S 00005010,8
         M 00005018,8
         S 00005ffc,8
         L 00007fff,1
         L 00007fff,4098
        I  00001000,2
        """)
    path = put(tmp_path / "l", log)
    # L L L (one page) -> one read; S M -> one write; the S across 5|6 -> W5 coalesced, W6;
    # the 1-byte load stays in page 7; the 4098-byte load touches pages 7, 8 and 9.
    assert values(T.open_trace(path)) == [R(5), W(5), W(6), R(7), R(8), R(9)]
    # With fetches: the fetch at 1ffe..2001 crosses pages 1|2; the last fetch is page 1.
    assert values(T.open_trace(path, with_fetches=True)) == [R(1), R(2), R(5), W(5), W(6), R(7), R(8), R(9), R(1)]


def test_lackey_junk_at_top_and_bottom_is_skipped(tmp_path):
    text = "hello from the program\n0 errors\n" + LACKEY_LOG + "program output\nmore junk\n"
    t = T.open_trace(put(tmp_path / "l", text))
    assert t.format == "lackey"
    assert values(t) == LACKEY_PAGES


def test_lackey_junk_in_the_middle_is_an_error(tmp_path):
    lines = LACKEY_LOG.splitlines()
    lines.insert(6, "this is no lackey line")  # line 7, between two lackey lines
    path = put(tmp_path / "l", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"/l:7: expected a lackey line .*'this is no lackey line'"):
        values(T.open_trace(path))


def test_lackey_with_only_fetches_is_an_empty_trace(tmp_path):
    t = T.open_trace(put(tmp_path / "l", "I  00001000,4\nI  00001004,4\n"))
    assert values(t) == []
    assert values(T.open_trace(t.path, with_fetches=True)) == [R(1)]


def test_csv_columns(tmp_path):
    path = put(tmp_path / "c.csv", "time,key,size\n1,10,5\n2,11,6\n")
    assert values(T.open_trace(path, column="KEY")) == [W(10), W(11)]
    assert values(T.open_trace(path, column=2)) == [W(5), W(6)]
    with pytest.raises(ValueError, match=r"no column 'obj_id' in the header .*pass column="):
        T.open_trace(path)
    with pytest.raises(ValueError, match="no column 'nope'"):
        T.open_trace(path, column="nope")
    with pytest.raises(ValueError, match="no column 3"):
        T.open_trace(path, column=3)
    bare = put(tmp_path / "b.csv", "1,10,5\n2,11,6\n")
    assert values(T.open_trace(bare, column=1)) == [W(10), W(11)]
    with pytest.raises(ValueError, match="without a header: pass column="):
        T.open_trace(bare)
    with pytest.raises(ValueError, match="given by name"):
        T.open_trace(bare, column="obj_id")
    # A column= turns a one-number-per-line file into a headerless csv.
    assert values(T.open_trace(put(tmp_path / "p", "4\n5\n"), column=0)) == [W(4), W(5)]


@pytest.mark.parametrize(("text", "kwargs", "message"), [
    ("R 1000\nW 2000\nX 3000\n", {}, r":3: expected 'R <hex address>' or 'W <hex address>', got 'X 3000'"),
    ("R 1000\nR zz\n", {}, r":2: expected 'R <hex address>'"),
    ("R 1000\nR 1000 extra\n", {}, r":2: expected 'R <hex address>'"),
    ("R 1000\nW -2000\n", {}, r":2: negative address"),
    ("1\n2\n\n# c\nx\n", {}, r":5: expected a page number \(decimal or 0x hex\), got 'x'"),
    ("1\n-2\n", {}, r":2: negative page"),
    (f"1\n{1 << 63}\n", {}, r":2: page number too large"),
    ("obj_id\n1\n-5\n", {}, r":3: negative page"),
    ("a,obj_id\n1,2\n3\n", {}, r":3: no column 1 \(the line has 1\)"),
    ("a,obj_id\n1,2\n3,four\n", {}, r":3: expected a page number \(decimal or 0x hex\) in column 1"),
])
def test_bad_lines_name_file_and_line(tmp_path, text, kwargs, message):
    path = put(tmp_path / "bad", text)
    with pytest.raises(ValueError, match=re.escape(path) + message):
        values(T.open_trace(path, **kwargs))


@pytest.mark.parametrize(("text", "message"), [
    ("", "no access in the trace"),
    ("\n# only a comment\n\n", "no access in the trace"),
    ("==12== Lackey\n==12== Exit code: 0\n", "no lackey line"),
    ("obj_id\n", "no csv access line"),
    ("hello world\n", r":1: unknown trace format: 'hello world'"),
    ("\x00\x01binary" * 200_000, "longer than"),
])
def test_files_without_an_access(tmp_path, text, message):
    path = put(tmp_path / "none", text)
    with pytest.raises(ValueError, match=message):
        values(T.open_trace(path))


def test_argument_errors(tmp_path):
    path = put(tmp_path / "p", "1\n")
    with pytest.raises(ValueError, match="page_shift"):
        T.open_trace(path, page_shift=-1)
    with pytest.raises(ValueError, match="column"):
        T.open_trace(path, column=-1)
    with pytest.raises(ValueError, match="column= applies to csv"):
        T.open_trace(put(tmp_path / "rw", "R 1\n"), column=0)
    with pytest.raises(ValueError, match="chunk size"):
        T.open_trace(path).chunks(0)
    with pytest.raises(FileNotFoundError):
        T.open_trace(tmp_path / "missing")


# ---------------------------------------------------------------------------
# streaming


def test_text_trace_streams_in_chunks(tmp_path):
    n = 300_000  # about 2 MiB of text: several read blocks, lines cut across them
    path = put(tmp_path / "big.gz", "".join(f"{i % 1000}\n" for i in range(n)), "gzip")
    t = T.open_trace(path)
    sizes = [len(c) for c in t.chunks(65536)]
    assert sizes == [65536] * 4 + [n - 4 * 65536]
    assert all(isinstance(c, array) and c.typecode == "Q" for c in t.chunks(100_000))
    first, again = values(t, 7), values(t, 65536)  # a fresh stream each call
    assert first == again == [W(i % 1000) for i in range(n)]
    info = t.info()
    assert (info.accesses, info.distinct, info.writes) == (n, 1000, n)


def test_error_line_number_late_in_a_big_file(tmp_path):
    lines = ["R 1000"] * 250_000
    lines[199_999] = "R nothex"
    path = put(tmp_path / "big", "\n".join(lines) + "\n")
    chunks = T.open_trace(path).chunks(1000)
    assert len(next(chunks)) == 1000  # the stream yields before it reaches the bad line
    with pytest.raises(ValueError, match=r":200000: expected"):
        list(chunks)


def test_rumpvm_trace_streams_in_chunks(tmp_path):
    recs = array("Q", (W(i) if i % 3 else R(i) for i in range(20_000)))
    T.write_trace(tmp_path / "t.rvt.xz", [recs])
    t = T.open_trace(tmp_path / "t.rvt.xz")
    assert [len(c) for c in t.chunks(6000)] == [6000, 6000, 6000, 2000]
    assert values(t, 6000) == list(recs)


def test_compact_and_load(tmp_path):
    recs = [W(900), R(5), R(900), W(7), R(5), W(1 << 40)]
    path = tmp_path / "t.rvt"
    T.write_trace(path, [recs])
    compacted = [v for c in T.compact([array("Q", recs[:3]), array("Q", recs[3:])]) for v in c]
    assert compacted == [W(0), R(1), R(0), W(2), R(1), W(3)]
    t = T.open_trace(path)
    assert T.load(t) == array("Q", compacted)
    assert T.load(t, compacted=False) == array("Q", recs)


# ---------------------------------------------------------------------------
# recording with valgrind, and the command line

N_PAGES = 24
PROGRAM = f"#define N {N_PAGES}\n" + r"""
#include <stdio.h>
static char a[(N + 1) * 4096];
int main(void) {
    char *p = (char *)(((unsigned long)a + 4095) & ~4095UL);
    printf("array %lx\n", (unsigned long)p);
    fflush(stdout);
    for (int i = 0; i < N; i++) p[i * 4096] = (char)i;
    long s = 0;
    for (int i = 0; i < N; i++) s += p[i * 4096];
    return s == (long)N * (N - 1) / 2 ? 3 : 4;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    d = tmp_path_factory.mktemp("prog")
    (d / "touch.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-O0", "-o", str(d / "touch"), str(d / "touch.c")], check=True)
    return str(d / "touch")


def array_pages(out: str) -> set[int]:
    base = int(re.search(r"array ([0-9a-f]+)", out).group(1), 16)
    return set(range(base >> 12, (base >> 12) + N_PAGES))


def test_record_a_real_program(tmp_path, program, capfd):
    out = str(tmp_path / "touch.rvt.zst")
    result = T.record([program], out)
    assert result.exit_status == 3  # the program's own status (3: it read back what it wrote)
    pages = array_pages(capfd.readouterr().out)  # the program's stdout passed through
    recs = values(T.open_trace(out))
    written = {v >> 1 for v in recs if v & 1}
    read = {v >> 1 for v in recs if not v & 1}
    assert pages <= written and pages <= read
    info = result.info
    assert info == T.open_trace(out).info()
    assert info.format == "rumpvm" and info.accesses == len(recs)
    assert info.distinct >= N_PAGES and info.writes >= N_PAGES and info.reads >= N_PAGES
    # The program touched each array page once each way; dropping fetches keeps the trace small.
    assert info.accesses < 200_000
    fetched = T.record([program], tmp_path / "f.rvt", with_fetches=True, page_shift=13).info
    assert fetched.page_shift == 13 and fetched.reads > info.reads


def test_record_ends_with_the_program_not_its_background_children(tmp_path):
    # The background sleeper inherits valgrind's log pipe; record must not wait for it.
    pidfile = tmp_path / "sleeper"
    result = T.record(["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}; exit 5"], tmp_path / "sh.rvt")
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, 0)  # still running: record returned without waiting for it
    finally:
        os.kill(pid, signal.SIGKILL)
    assert result.exit_status == 5 and result.info.accesses > 0


def test_record_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such program"):
        T.record([str(tmp_path / "missing")], tmp_path / "o.rvt")
    with pytest.raises(FileNotFoundError, match="no such program"):
        T.record(["no-such-program-anywhere"], tmp_path / "o.rvt")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        T.record(["true"], tmp_path / "nodir" / "o.rvt")
    with pytest.raises(ValueError, match="no command"):
        T.record([], tmp_path / "o.rvt")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="valgrind is not installed"):
        T.record(["/bin/true"], tmp_path / "o.rvt")
    assert os.listdir(tmp_path) == []


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rumpvm")
    T.add_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(list(argv))
    return args.fn(args)


def test_cli_info(tmp_path, capsys):
    path = put(tmp_path / "t.txt", "R 1000\nW 1000\nW 2000\nR 3000\n", "gzip")
    assert cli("trace", "info", path) == 0
    out = capsys.readouterr().out
    assert re.search(r"^format +rw$", out, re.M)
    assert re.search(r"^accesses +4$", out, re.M)
    assert re.search(r"^distinct +3 pages", out, re.M)
    assert re.search(r"^reads +2 \(50\.0%\)$", out, re.M)
    assert re.search(r"^writes +2 \(50\.0%\)$", out, re.M)
    assert re.search(r"^footprint +12288 bytes \(12\.0 KiB\)$", out, re.M)
    assert re.search(r"^sha256 +" + hashlib.sha256((tmp_path / "t.txt").read_bytes()).hexdigest() + "$", out, re.M)
    assert cli("trace", "info", path, "--page-shift", "13") == 0
    assert re.search(r"^footprint +16384 bytes", capsys.readouterr().out, re.M)  # pages 0 and 1 of 8 KiB
    csv = put(tmp_path / "c.csv", "a,b\n1,2\n")
    assert cli("trace", "info", csv, "--column", "1") == 0
    assert re.search(r"^format +csv$", capsys.readouterr().out, re.M)
    assert cli("trace", "info", str(tmp_path / "missing")) == 1
    assert cli("trace", "info", put(tmp_path / "bad", "R 1\nR x\n")) == 1
    assert "bad:2: expected" in capsys.readouterr().err


def test_cli_record(tmp_path, program, capfd):
    out = str(tmp_path / "t.rvt.gz")
    assert cli("trace", "record", "-o", out, "--", program) == 3  # the program's exit status
    captured = capfd.readouterr()
    assert f"{out}: " in captured.err and "program exit status 3" in captured.err
    written = {v >> 1 for v in values(T.open_trace(out)) if v & 1}
    assert array_pages(captured.out) <= written
    assert cli("trace", "record", "-o", out) == 2
    assert cli("trace", "record", "-o", out, "--", str(tmp_path / "missing")) == 1
    assert "no such program" in capfd.readouterr().err
