"""Page-access traces: rumpvm's own compact format, readers for the usual
text formats, and recording programs with valgrind's lackey tool.

What it owns
  * the `rumpvm` trace format: a 16-byte header — magic b"RVTRACE1", u8
    version (1), u8 page_shift, u16 flags (bit 0: instruction fetches were
    kept), u32 reserved (0) — then little-endian uint64 records
    `page << 1 | is_write`.  `write_trace` writes it, gzip/xz/zstd
    compressed when the file name ends in .gz/.xz/.zst;
  * `open_trace`: undoes gzip/xz/zstd compression found by magic bytes (never
    by name) and detects the format by content — `rumpvm`, `rw` (`R|W hexaddr`
    lines), `lackey` (raw `valgrind --tool=lackey --trace-mem=yes` output),
    `pages` (one page number per line, every access a write), `csv`
    (libCacheSim csv, an `obj_id` column, every access a write) — and
    returns a `Trace`: `chunks()` streams the accesses, `info()` counts them;
  * `compact`, `load` (the whole trace in memory, for OPT); `record` (runs a
    program under lackey and streams its output into a trace); `add_cli`
    (`rumpvm trace record|info`).  docs/traces.md is the user's guide.

Locks: none.  A `Trace` holds no open file (each `chunks()` call opens the
file anew), so threads may stream one `Trace` at once; `info()` caches its
result (two racing calls both compute it, with the same result).

Invariants
  * an access is one `array('Q')` item `page << 1 | is_write`, so
    0 <= page < 2**63; a negative or larger page is a ValueError that names
    the file and line.  Readers stream: they hold one block of input (1 MiB
    of text or one chunk of records) and the chunk they build; only the
    distinct-page sets of `info()` and `compact()` and the array of `load()`
    grow with the trace;
  * `chunks(size)` yields non-empty arrays of exactly `size` accesses, but
    the last (1..size);
  * lackey input only: consecutive accesses to the same page with the same
    kind are one access (coalesced); the other formats are read as stored;
  * a text trace without a single access line is a ValueError (a `rumpvm`
    file with no record is a valid empty trace);
  * `write_trace` writes a temporary file beside the target and renames it
    over the target at the end: a failure leaves no partial trace and an
    existing file untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gzip
import hashlib
import io
import lzma
import os
import re
import secrets
import select
import shutil
import struct
import subprocess
import sys
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

import zstandard

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

MAGIC = b"RVTRACE1"
VERSION = 1
FLAG_FETCHES = 1
HEADER = struct.Struct("<8sBBHI")  # magic, version, page_shift, flags, reserved
FORMATS = ("rumpvm", "rw", "lackey", "pages", "csv")
MAX_PAGE = (1 << 63) - 1  # the largest page a record can hold

_TEXT_BLOCK = 1 << 20  # bytes of text read at a time
_MAX_LINE = 1 << 20  # a longer "line" means the file is not text
_DETECT_LINES = 1000  # lines searched for a lackey line after an unknown first line
_NATIVE_LSB = 0 if sys.byteorder == "little" else 7  # offset of an item's low byte in array bytes
_LOW_BIT = bytes(i & 1 for i in range(256))
_CORRUPT = (gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)

_RX_LACKEY = re.compile(rb"(?:I  | [LSM] )[0-9a-fA-F]+,[0-9]+\s*\Z")
_RX_RW = re.compile(rb"[RrWw]\s+(?:0[xX])?[0-9a-fA-F]+")
_RX_NUMBER = re.compile(rb"0[xX][0-9a-fA-F]+|[0-9]+")
_RX_VALGRIND = re.compile(rb"(==|--|\*\*)[0-9]+\1")  # a valgrind message: ==pid==, --pid--, **pid**


@dataclass(frozen=True)
class TraceInfo:
    """What one streaming pass over a trace found."""
    format: str
    accesses: int
    distinct: int  # distinct pages
    reads: int
    writes: int
    page_shift: int
    sha256: str  # of the file's bytes as stored (compressed or not)


@dataclass(frozen=True)
class RecordResult:
    """What `record` made: the written trace's info, and the program's exit
    status as `subprocess` reports it (-N: killed by signal N)."""
    info: TraceInfo
    exit_status: int


# ---------------------------------------------------------------------------
# reading bytes: decompression by magic, hashing of the stored bytes


class _Digest(Protocol):
    def update(self, data: ReadableBuffer, /) -> None: ...
    def hexdigest(self) -> str: ...


class _Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...
    def close(self) -> None: ...


class _HashedRaw(io.RawIOBase):
    """A file's stored bytes, fed to a digest as they are read."""

    def __init__(self, f: io.FileIO, digest: _Digest) -> None:
        super().__init__()
        self._f, self._digest = f, digest

    def readable(self) -> bool:
        """Always: it is a reader."""
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read into `buffer` and hash what was read."""
        with memoryview(buffer) as view:
            n = self._f.readinto(view) or 0
            self._digest.update(view[:n])
        return n

    def close(self) -> None:
        """Close the file too."""
        self._f.close()
        super().close()


class _Source:
    """A trace file opened for one pass: its bytes decompressed (gzip, xz and
    zstd found by magic bytes) and, when a digest is given, hashed as stored."""

    def __init__(self, path: str, digest: _Digest | None = None) -> None:
        self.path = path
        # Closed by __exit__ (and here on failure).
        raw = (open(path, "rb") if digest is None  # noqa: SIM115
               else io.BufferedReader(_HashedRaw(open(path, "rb", buffering=0), digest)))  # noqa: SIM115
        self._raw = raw
        self._stream: _Reader = raw
        self.compression = "none"
        try:
            head = raw.peek(6)[:6]
            if head.startswith(b"\x1f\x8b"):
                self._stream, self.compression = gzip.GzipFile(fileobj=raw, mode="rb"), "gzip"
            elif head == b"\xfd7zXZ\x00":
                self._stream, self.compression = lzma.LZMAFile(raw), "xz"  # noqa: SIM115
            elif head.startswith(b"\x28\xb5\x2f\xfd"):
                self._stream = zstandard.ZstdDecompressor().stream_reader(
                    raw, read_across_frames=True, closefd=False)
                self.compression = "zstd"
        except BaseException:
            raw.close()
            raise

    def read(self, n: int) -> bytes:
        """Up to `n` decompressed bytes (b"" at the end); corrupt compressed
        data is a ValueError."""
        try:
            return self._stream.read(n)
        except _CORRUPT as e:
            raise ValueError(f"{self.path}: corrupt {self.compression} data: {e}") from None

    def read_exact(self, n: int) -> bytes:
        """`n` decompressed bytes, fewer only at the end of the data."""
        data = self.read(n)
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n and (more := self.read(n - got)):
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def drain(self) -> None:
        """Read the stored bytes past the decoded data, so that a digest
        covers the whole file."""
        while self._raw.read(_TEXT_BLOCK):
            pass

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stream is not self._raw:
            self._stream.close()
        self._raw.close()


# ---------------------------------------------------------------------------
# the rumpvm format


def _check_shift(page_shift: int) -> None:
    """Raise ValueError unless 0 <= page_shift <= 63."""
    if not isinstance(page_shift, int) or not 0 <= page_shift <= 63:
        raise ValueError(f"page_shift must be an integer in 0..63, not {page_shift!r}")


def _parse_header(path: str, head: bytes) -> tuple[int, bool]:
    """The (page_shift, fetches) of a rumpvm header; ValueError if it is bad."""
    if len(head) < HEADER.size:
        raise ValueError(f"{path}: truncated rumpvm header ({len(head)} of {HEADER.size} bytes)")
    _, version, shift, flags, reserved = HEADER.unpack(head)
    if version != VERSION:
        raise ValueError(f"{path}: rumpvm trace version {version} (this reader knows version {VERSION})")
    if flags & ~FLAG_FETCHES or reserved:
        raise ValueError(f"{path}: bad rumpvm header (flags {flags:#x}, reserved {reserved:#x})")
    if shift > 63:
        raise ValueError(f"{path}: bad rumpvm header (page_shift {shift})")
    return shift, bool(flags & FLAG_FETCHES)


def _record_chunks(src: _Source, size: int) -> Iterator[array[int]]:
    """The records after the header, `size` at a time."""
    want = size * 8
    while data := src.read_exact(want):
        if len(data) % 8:
            raise ValueError(f"{src.path}: truncated: {len(data) % 8} bytes after the last whole record")
        a = array("Q")
        a.frombytes(data)
        if _NATIVE_LSB:
            a.byteswap()  # records are little-endian
        yield a
        if len(data) < want:
            return


def _as_records(chunk: array[int] | Iterable[int]) -> array[int]:
    """`chunk` as an array('Q'), without a copy when it is one already."""
    if isinstance(chunk, array) and chunk.typecode == "Q":
        return chunk
    try:
        return array("Q", chunk)
    except OverflowError:
        raise ValueError("a trace value is out of range: values are page << 1 | is_write,"
                         " 0 <= value < 2**64") from None


class _Sink(Protocol):
    def write(self, data: memoryview, /) -> int: ...
    def close(self) -> None: ...


def _compressor(f: IO[bytes], path: str) -> _Sink:
    """A writer over `f` that compresses as the name of `path` says; closing
    it leaves `f` open (but for plain files, where it is `f`)."""
    name = path.lower()
    if name.endswith(".gz"):  # mtime and name fixed: the same trace gives the same bytes
        return gzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=6, mtime=0)
    if name.endswith(".xz"):
        return lzma.LZMAFile(f, "wb", preset=3)  # the default, 6, is ~6x slower for ~20% less
    if name.endswith(".zst"):
        return zstandard.ZstdCompressor().stream_writer(f, closefd=False)
    return f


def write_trace(path: str | os.PathLike[str], chunks: Iterable[array[int] | Iterable[int]],
                page_shift: int = 12, fetches: bool = False) -> int:
    """Write a rumpvm trace of `chunks` (values `page << 1 | is_write`) and
    return the number of records; compressed for a .gz/.xz/.zst name."""
    _check_shift(page_shift)
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    written = 0
    try:
        with open(tmp, "xb") as f, contextlib.closing(_compressor(f, path)) as out:
            out.write(memoryview(HEADER.pack(MAGIC, VERSION, page_shift, FLAG_FETCHES if fetches else 0, 0)))
            for chunk in chunks:
                a = _as_records(chunk)
                if _NATIVE_LSB:
                    a = array("Q", a)
                    a.byteswap()
                out.write(memoryview(a).cast("B"))
                written += len(a)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return written


# ---------------------------------------------------------------------------
# text formats


def _line_blocks(path: str, read: Callable[[int], bytes], head: bytes = b"") -> Iterator[tuple[int, list[bytes]]]:
    """The lines of a byte stream (`head` then `read`), about 1 MiB at a
    time, each block with the number of its first line."""
    rest, lineno = head, 1
    while True:
        data = read(_TEXT_BLOCK)
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > _MAX_LINE:
            raise ValueError(f"{path}:{lineno + len(lines)}: a line longer than {_MAX_LINE} bytes: not a text trace")
        if lines:
            yield lineno, lines
            lineno += len(lines)
        if not data:
            break
    if rest:
        yield lineno, [rest]


def _show(line: bytes) -> str:
    """A line as an error message quotes it."""
    text = line.decode("utf-8", "replace").strip()
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _skipped(s: bytes) -> bool:
    """A stripped line that no text format counts: blank, or a # comment."""
    return not s or s[:1] == b"#"


class _TextParser:
    """Turns the lines of one text format into accesses, block by block.
    In the rw, pages and csv parsers `feed` is a fast loop for the common
    line and `_line` the full rules for one line: the fallback for any line
    the fast loop cannot take, which skips it, appends it, or explains why
    it is bad."""
    format: str
    expected: str  # what a line looks like, for error messages

    def __init__(self, path: str) -> None:
        self.path = path

    def feed(self, lines: list[bytes], lineno: int, out: array[int]) -> None:
        """Append the accesses of `lines` (the first is line `lineno`) to `out`."""
        raise NotImplementedError

    def finish(self, accesses: int) -> None:
        """Called at the end: a text trace needs at least one access line."""
        if not accesses:
            raise ValueError(f"{self.path}: no {self.format} access line in the trace")

    def error(self, n: int, ln: bytes, why: str | None = None) -> ValueError:
        """The error for bad line `n`."""
        return ValueError(f"{self.path}:{n}: {why or 'expected ' + self.expected}, got {_show(ln)}")

    def number(self, n: int, ln: bytes, text: bytes) -> int:
        """A page number (decimal or 0x hex), checked to fit a record."""
        s = text.strip()
        try:
            v = int(s, 16) if s[:2] in (b"0x", b"0X") else int(s)
        except ValueError:
            raise self.error(n, ln) from None
        return self.page(n, ln, v)

    def page(self, n: int, ln: bytes, page: int) -> int:
        """`page`, if a record can hold it."""
        if page < 0:
            raise self.error(n, ln, "negative page")
        if page > MAX_PAGE:
            raise self.error(n, ln, "page number too large (over 2**63 - 1)")
        return page


_RW_KIND = {b"R": 0, b"r": 0, b"W": 1, b"w": 1}


class _RWParser(_TextParser):
    """`R 7fff1234` / `W 0x7fff1234`: a read or write of a byte address."""
    format = "rw"
    expected = "'R <hex address>' or 'W <hex address>'"

    def __init__(self, path: str, page_shift: int) -> None:
        super().__init__(path)
        self.shift = page_shift

    def feed(self, lines: list[bytes], lineno: int, out: array[int]) -> None:
        """Append the accesses of `lines` to `out`."""
        app, sh, kinds = out.append, self.shift, _RW_KIND
        for n, ln in enumerate(lines, lineno):
            try:
                k, a = ln.split()
                app(int(a, 16) >> sh << 1 | kinds[k])
            except (ValueError, KeyError, OverflowError):
                self._line(n, ln, app)

    def _line(self, n: int, ln: bytes, app: Callable[[int], None]) -> None:
        """Append the access of line `n`, skip it, or raise ValueError."""
        fields = ln.split()
        if _skipped(fields[0] if fields else b""):
            return
        if len(fields) != 2 or fields[0] not in _RW_KIND:
            raise self.error(n, ln)
        try:
            addr = int(fields[1], 16)
        except ValueError:
            raise self.error(n, ln) from None
        if addr < 0:
            raise self.error(n, ln, "negative address")
        app(self.page(n, ln, addr >> self.shift) << 1 | _RW_KIND[fields[0]])


class _PagesParser(_TextParser):
    """One page number per line; every access counts as a write."""
    format = "pages"
    expected = "a page number (decimal or 0x hex)"

    def feed(self, lines: list[bytes], lineno: int, out: array[int]) -> None:
        """Append the accesses of `lines` to `out`."""
        app = out.append
        for n, ln in enumerate(lines, lineno):
            try:
                app(int(ln) << 1 | 1)
            except (ValueError, OverflowError):
                self._line(n, ln, app)

    def _line(self, n: int, ln: bytes, app: Callable[[int], None]) -> None:
        """Append the access of line `n`, skip it, or raise ValueError."""
        if not _skipped(ln.strip()):
            app(self.number(n, ln, ln) << 1 | 1)


class _CsvParser(_TextParser):
    """libCacheSim csv: the page is column `col`; every access is a write."""
    format = "csv"

    def __init__(self, path: str, col: int, header_line: int) -> None:
        super().__init__(path)
        self.col, self.header_line = col, header_line
        self.expected = f"a page number (decimal or 0x hex) in column {col}"

    def feed(self, lines: list[bytes], lineno: int, out: array[int]) -> None:
        """Append the accesses of `lines` to `out`."""
        app, col = out.append, self.col
        for n, ln in enumerate(lines, lineno):
            try:
                fields = ln.split(b",")
                if fields[0].lstrip()[:1] == b"#":
                    continue
                app(int(fields[col]) << 1 | 1)
            except (ValueError, IndexError, OverflowError):
                self._line(n, ln, app)

    def _line(self, n: int, ln: bytes, app: Callable[[int], None]) -> None:
        """Append the access of line `n`, skip it, or raise ValueError."""
        if _skipped(ln.strip()) or n == self.header_line:
            return
        fields = ln.split(b",")
        if self.col >= len(fields):
            raise self.error(n, ln, f"no column {self.col} (the line has {len(fields)})")
        app(self.number(n, ln, fields[self.col]) << 1 | 1)


class _LackeyParser(_TextParser):
    """Raw `valgrind --tool=lackey --trace-mem=yes` output.

    `I` (instruction fetch; dropped, or a read with fetches), `L` (load, a
    read), `S` (store) and `M` (modify: one write) lines of `addr,size`;
    an access touches every page of [addr, addr+size); consecutive accesses
    to one page of one kind are coalesced.  valgrind's messages (`==pid==`,
    `--pid--`, `**pid**`) are skipped anywhere, other lines before the first
    lackey line and after the last one are skipped, and any other line is an
    error — found when the next lackey line shows it was not at the end."""
    format = "lackey"
    expected = "a lackey line ('I  addr,size' or ' L|S|M addr,size')"

    def __init__(self, path: str, page_shift: int, with_fetches: bool) -> None:
        super().__init__(path)
        self.shift = page_shift
        self.kinds = {b"I  ": 0 if with_fetches else -1, b" L ": 0, b" S ": 1, b" M ": 1}
        self.last = -1  # the last access appended, for coalescing
        self.seen = False  # a lackey line was read
        self.pending: tuple[int, bytes] | None = None  # the first unparsable line after a lackey line

    def feed(self, lines: list[bytes], lineno: int, out: array[int]) -> None:
        """Append the accesses of `lines` to `out`."""
        app, sh, kinds, last, pending, seen = out.append, self.shift, self.kinds, self.last, self.pending, self.seen
        for n, ln in enumerate(lines, lineno):
            try:
                k = kinds[ln[:3]]
                if k >= 0:
                    at, st = ln[3:].split(b",")
                    a = int(at, 16)
                    s = int(st)
                    p = a >> sh
                    e = (a + s - 1) >> sh  # the last page touched
                    if a < 0 or s < 0 or e > MAX_PAGE:
                        raise ValueError
            except (KeyError, ValueError):
                pending = self._other(n, ln, seen, pending)
                continue
            if pending is not None:
                raise self.error(*pending)
            seen = True
            if k < 0:
                continue
            v = p << 1 | k
            if v != last:
                app(v)
            while p < e:  # an access across a page boundary
                p += 1
                v = p << 1 | k
                app(v)
            last = v
        self.last, self.pending, self.seen = last, pending, seen

    def _other(self, n: int, ln: bytes, seen: bool, pending: tuple[int, bytes] | None) -> tuple[int, bytes] | None:
        """The pending bad line after line `n`, which is no lackey line."""
        s = ln.strip()
        if _skipped(s) or _RX_VALGRIND.match(s) or not seen:
            return pending
        return pending or (n, ln)

    def finish(self, accesses: int) -> None:
        """A lackey trace needs a lackey line (all may be dropped fetches)."""
        if not self.seen:
            raise ValueError(f"{self.path}: no lackey line (expected valgrind --tool=lackey --trace-mem=yes output)")


def _text_chunks(blocks: Iterable[tuple[int, list[bytes]]], parser: _TextParser, size: int) -> Iterator[array[int]]:
    """The accesses `parser` finds in `blocks`, `size` at a time."""
    buf: array[int] = array("Q")
    accesses = 0
    for lineno, lines in blocks:
        parser.feed(lines, lineno, buf)
        if len(buf) >= size:
            full = len(buf) - len(buf) % size
            for i in range(0, full, size):
                yield buf[i:i + size]
            accesses += full
            del buf[:full]
    parser.finish(accesses + len(buf))
    if buf:
        yield buf


def _csv_column(path: str, n: int, ln: bytes, column: int | str | None) -> tuple[int, int]:
    """(page column, header line or 0) of a csv trace whose first line is
    line `n`."""
    names = [f.strip().strip(b"\"'").decode("utf-8", "replace").lower() for f in ln.split(b",")]
    if all(_RX_NUMBER.fullmatch(f.encode()) for f in names):  # no header
        if isinstance(column, int):
            return column, 0
        if column is None:
            raise ValueError(f"{path}:{n}: a csv trace without a header: pass column= (the page column's index)")
        raise ValueError(f"{path}:{n}: column {column!r} given by name, but the csv trace has no header")
    if isinstance(column, int):
        if column >= len(names):
            raise ValueError(f"{path}:{n}: no column {column}: the header has {len(names)} columns {names}")
        return column, n
    want = (column or "obj_id").lower()
    if want not in names:
        hint = "" if column is not None else "; pass column= (an index or a header name)"
        raise ValueError(f"{path}:{n}: no column {want!r} in the header {names}{hint}")
    return names.index(want), n


def _detect_text(path: str, blocks: Iterable[tuple[int, list[bytes]]],
                 column: int | str | None) -> tuple[str, int, int]:
    """(format, csv column, csv header line) of a text trace, from its first
    access line (or, after an unknown first line, a lackey line soon after)."""
    unknown: tuple[int, bytes] | None = None
    for n, ln in ((n, ln) for lineno, lines in blocks for n, ln in enumerate(lines, lineno)):
        s = ln.strip()
        if _skipped(s):
            continue
        if _RX_VALGRIND.match(s) or _RX_LACKEY.match(ln):
            return "lackey", 0, 0
        if unknown is not None:
            if n - unknown[0] > _DETECT_LINES:
                break
            continue
        if _RX_RW.fullmatch(s):
            return "rw", 0, 0
        if column is None and _RX_NUMBER.fullmatch(s):
            return "pages", 0, 0
        if b"," in s or column is not None or b"obj_id" in s.lower():
            return ("csv", *_csv_column(path, n, ln, column))
        unknown = (n, ln)
    if unknown is None:
        raise ValueError(f"{path}: no access in the trace (empty, or only blank and comment lines)")
    raise ValueError(f"{path}:{unknown[0]}: unknown trace format: {_show(unknown[1])} is no line of"
                     f" any of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------
# Trace


class Trace:
    """An opened trace file (see `open_trace`): `chunks()` streams it anew on
    each call, `info()` counts it once."""

    def __init__(self, path: str, format: str, page_shift: int, *, fetches: bool = False,
                 column: int = 0, header_line: int = 0) -> None:
        self.path, self.format, self.page_shift = path, format, page_shift
        self._fetches, self._column, self._header_line = fetches, column, header_line
        self._info: TraceInfo | None = None

    def __repr__(self) -> str:
        return f"Trace({self.path!r}, format={self.format!r}, page_shift={self.page_shift})"

    def chunks(self, size: int = 1 << 16) -> Iterator[array[int]]:
        """The accesses, as arrays of `size` (the last may be shorter)."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"chunk size must be a positive integer, not {size!r}")
        return self._stream(size, None)

    def info(self) -> TraceInfo:
        """Counts and the sha256 of the stored file, from one streaming pass
        (computed once)."""
        if self._info is None:
            digest = hashlib.sha256()
            accesses = writes = 0
            values: set[int] = set()  # (page, kind) pairs: at most twice the distinct pages
            for a in self._stream(1 << 16, digest):
                accesses += len(a)
                writes += a.tobytes()[_NATIVE_LSB::8].translate(_LOW_BIT).count(1)
                values.update(a)
            self._info = TraceInfo(self.format, accesses, len({v >> 1 for v in values}), accesses - writes,
                                   writes, self.page_shift, digest.hexdigest())
        return self._info

    def _stream(self, size: int, digest: _Digest | None) -> Iterator[array[int]]:
        """The accesses in arrays of `size`; with `digest`, hash the whole
        stored file on the way."""
        with _Source(self.path, digest) as src:
            if self.format == "rumpvm":
                src.read_exact(HEADER.size)  # checked by open_trace
                yield from _record_chunks(src, size)
            else:
                yield from _text_chunks(_line_blocks(self.path, src.read), self._parser(), size)
            if digest is not None:
                src.drain()

    def _parser(self) -> _TextParser:
        """A fresh parser for this text trace."""
        if self.format == "lackey":
            return _LackeyParser(self.path, self.page_shift, self._fetches)
        if self.format == "rw":
            return _RWParser(self.path, self.page_shift)
        if self.format == "csv":
            return _CsvParser(self.path, self._column, self._header_line)
        return _PagesParser(self.path)


def open_trace(path: str | os.PathLike[str], *, page_shift: int = 12, with_fetches: bool = False,
               column: int | str | None = None) -> Trace:
    """Open a trace file of any format (detected by content, after undoing
    any gzip/xz/zstd compression); ValueError if it is no trace.

    `page_shift` turns the byte addresses of rw and lackey traces into pages
    and sizes the footprint; a rumpvm file's own page_shift (and fetch flag)
    wins.  `with_fetches` keeps lackey's instruction fetches (as reads).
    `column` (an index or a header name) picks a csv trace's page column.
    """
    _check_shift(page_shift)
    if isinstance(column, bool) or (isinstance(column, int) and column < 0):
        raise ValueError(f"column must be a header name or an index >= 0, not {column!r}")
    path = os.fspath(path)
    col = header_line = 0
    with _Source(path) as src:
        head = src.read_exact(HEADER.size)
        if head.startswith(MAGIC):
            fmt = "rumpvm"
            page_shift, with_fetches = _parse_header(path, head)
        else:
            fmt, col, header_line = _detect_text(path, _line_blocks(path, src.read, head), column)
    if column is not None and fmt != "csv":
        raise ValueError(f"{path}: column= applies to csv traces; this is a {fmt} trace")
    return Trace(path, fmt, page_shift, fetches=with_fetches, column=col, header_line=header_line)


def compact(chunks: Iterable[array[int]]) -> Iterator[array[int]]:
    """Rename pages 0, 1, 2, ... in order of first appearance, keeping the
    write bit (fault counts depend only on the order of accesses)."""
    names: dict[int, int] = {}
    for chunk in chunks:
        yield array("Q", [names.setdefault(v >> 1, len(names)) << 1 | (v & 1) for v in chunk])


def load(trace: Trace, compacted: bool = True) -> array[int]:
    """The whole trace as one array('Q') (8 bytes an access), compacted by
    default — for OPT, which needs the future."""
    out: array[int] = array("Q")
    chunks = trace.chunks()
    for chunk in compact(chunks) if compacted else chunks:
        out.extend(chunk)
    return out


# ---------------------------------------------------------------------------
# recording


def _executable(prog: str) -> str:
    """The path valgrind will run for `prog`; FileNotFoundError or
    PermissionError if it would not start."""
    found = prog if os.sep in prog else shutil.which(prog)
    if found is None or not os.path.isfile(found):
        raise FileNotFoundError(errno.ENOENT, "no such program", prog)
    if not os.access(found, os.X_OK):
        raise PermissionError(errno.EACCES, "program is not executable", prog)
    return found


class _LogPipe:
    """The read end of valgrind's log pipe, which ends when valgrind has
    exited and the pipe is empty — not at EOF: the traced program's children
    inherit the write end (valgrind leaves --log-fd open in its client), and
    a background one would hold it open long after the trace is complete."""

    def __init__(self, fd: int, proc: subprocess.Popen[bytes]) -> None:
        self._fd = fd
        self._exited = False
        try:
            self._pidfd = os.pidfd_open(proc.pid)  # readable once valgrind has exited
        except BaseException:
            os.close(fd)
            raise
        os.set_blocking(fd, False)

    def read(self, n: int) -> bytes:
        """Up to `n` bytes of the log, waiting for them; b"" at its end."""
        while True:
            if not self._exited:
                ready, _, _ = select.select([self._fd, self._pidfd], [], [])
                self._exited = self._pidfd in ready
            try:
                return os.read(self._fd, n)  # b"" when every writer is gone
            except BlockingIOError:
                if self._exited:
                    return b""

    def __enter__(self) -> _LogPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        os.close(self._pidfd)


def record(cmd: list[str], out: str | os.PathLike[str], *, page_shift: int = 12,
           with_fetches: bool = False) -> RecordResult:
    """Run `cmd` under `valgrind --tool=lackey --trace-mem=yes`, stream its
    memory trace into the rumpvm trace `out` (compressed by name), and return
    the trace's info and the program's exit status.

    The program's stdin, stdout and stderr are this process's; valgrind
    writes the trace to a pipe that is parsed as it comes (never buffered
    whole).  FileNotFoundError if valgrind or the program is missing;
    ValueError if valgrind wrote no trace (then `out` is not written).
    """
    _check_shift(page_shift)
    if not cmd:
        raise ValueError("record: no command to run")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise FileNotFoundError(errno.ENOENT, "valgrind is not installed (apt-get install valgrind)", "valgrind")
    _executable(cmd[0])
    out = os.fspath(out)
    folder = os.path.dirname(out) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "no such directory for the trace", folder)
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([valgrind, "--tool=lackey", "--trace-mem=yes", f"--log-fd={w}", "--", *cmd],
                                pass_fds=(w,))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    label = f"valgrind output of {cmd[0]}"
    try:
        with _LogPipe(r, proc) as log:
            parser = _LackeyParser(label, page_shift, with_fetches)
            write_trace(out, _text_chunks(_line_blocks(label, log.read), parser, 1 << 16), page_shift, with_fetches)
    except BaseException as e:
        proc.kill()
        status = proc.wait()
        if isinstance(e, ValueError):
            raise ValueError(f"{e} (valgrind exit status {status}; its messages are above)") from None
        raise
    status = proc.wait()
    return RecordResult(open_trace(out).info(), status)


# ---------------------------------------------------------------------------
# the command line


def _human(n: int) -> str:
    """A byte count in binary units, for reading."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _format_info(info: TraceInfo) -> str:
    """`rumpvm trace info`'s report of `info`."""
    def share(n: int) -> str:
        return f"{100 * n / info.accesses:.1f}%" if info.accesses else "-"
    footprint = info.distinct << info.page_shift
    return (f"format     {info.format}\n"
            f"accesses   {info.accesses}\n"
            f"distinct   {info.distinct} pages of {1 << info.page_shift} bytes\n"
            f"reads      {info.reads} ({share(info.reads)})\n"
            f"writes     {info.writes} ({share(info.writes)})\n"
            f"footprint  {footprint} bytes ({_human(footprint)})\n"
            f"sha256     {info.sha256}\n")


def _cmd_info(args: argparse.Namespace) -> int:
    """`rumpvm trace info FILE`."""
    column = int(args.column) if args.column is not None and args.column.isdigit() else args.column
    try:
        info = open_trace(args.file, page_shift=args.page_shift, with_fetches=args.with_fetches,
                          column=column).info()
    except (ValueError, OSError) as e:
        print(f"rumpvm trace info: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(_format_info(info))
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    """`rumpvm trace record -o FILE -- CMD...`: exits with the program's
    status (128 + N when killed by signal N), 1 when no trace was made."""
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        print("rumpvm trace record: no command given (rumpvm trace record -o FILE -- CMD ARGS...)",
              file=sys.stderr)
        return 2
    try:
        result = record(cmd, args.output, page_shift=args.page_shift, with_fetches=args.with_fetches)
    except (ValueError, OSError) as e:
        print(f"rumpvm trace record: {e}", file=sys.stderr)
        return 1
    info = result.info
    print(f"rumpvm trace record: {args.output}: {info.accesses} accesses, {info.distinct} distinct pages,"
          f" {info.writes} writes; program exit status {result.exit_status}", file=sys.stderr)
    return result.exit_status if result.exit_status >= 0 else 128 - result.exit_status


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `rumpvm trace record|info`."""
    trace = subparsers.add_parser(
        "trace", help="page-access traces: record a program with valgrind, inspect a trace file",
        description="Record page-access traces with valgrind's lackey tool, and inspect trace files"
                    " (rumpvm, rw, lackey, pages or csv; gzip/xz/zstd compressed or not). See docs/traces.md.")
    sub = trace.add_subparsers(dest="trace_cmd", required=True)

    def shift_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--page-shift", type=int, default=12, metavar="N",
                       help="log2 of the page size for byte addresses (default 12: 4 KiB pages)")
        p.add_argument("--with-fetches", action="store_true",
                       help="keep lackey's instruction fetches, as reads (default: dropped)")

    rec = sub.add_parser("record", help="run a program under valgrind and write its page trace",
                         description="Run CMD under valgrind --tool=lackey --trace-mem=yes and write its"
                                     " page accesses as a rumpvm trace (.gz/.xz/.zst: compressed). Exits"
                                     " with the program's exit status.")
    rec.add_argument("-o", "--output", required=True, metavar="FILE", help="the trace file to write")
    shift_args(rec)
    rec.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the program to run")
    rec.set_defaults(fn=_cmd_record)
    info = sub.add_parser("info", help="print a trace file's format, accesses, pages, reads and writes")
    info.add_argument("file", metavar="FILE")
    shift_args(info)
    info.add_argument("--column", default=None, help="a csv trace's page column (index or header name)")
    info.set_defaults(fn=_cmd_info)
