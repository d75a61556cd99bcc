"""A fuzzer over the whole public API with hostile arguments.

`APIFuzzMachine` (hypothesis `RuleBasedStateMachine`) keeps a kernel with a
few processes, each with regions of known content (private and MAP_SHARED
of a `create_object` object, at fixed addresses in a small window so that
fixed mappings collide).  Each step picks one call of the public API —
every `Proc` method (coredump too, into a scratch directory with a symlink,
a FIFO and a directory in it), every `Kernel` method, the memory limit and
the pagedaemon's knobs — and either legal arguments (derived from the
current maps, objects and kernel maps) or hostile ones: huge, negative,
unaligned, `addr + length` beyond 2**64, wrong types (str, float, NaN, inf,
None, bool, bytes, ...), exited processes, a closed kernel and its objects,
objects of another kernel, detached objects, and buffers of odd types
(memoryview of 'I'/'d', multi-dimensional, non-contiguous, released, closed
mmap, read-only for `readinto`, ctypes arrays).  Each rule draws a fixed
number of bytes and decodes them (`Src`/`G`), so the draws keep their shape
when the state differs between runs (the pagedaemon runs on its own thread).

Properties, after every call:
  * only the documented exceptions escape: `rumpvm.VMError` (and its
    subclasses) and `TypeError`; anything else (ValueError, OverflowError,
    KeyError, AssertionError, IndexError, MemoryError, ...) fails;
  * `k.check()` passes;
  * a failed call changed nothing: the maps, rlimits and the bytes (peek)
    of every live process, the bytes of written ranges, the objects
    (`k.objects()`, without resident/swapped counts, which the pagedaemon
    moves), the bytes of held objects, the kernel maps' protections, the
    process table, the memory limit and the pagedaemon's knobs are equal
    before and after (the one documented exception: `OutOfMemory` with
    `.written` set, a short write);
  * a call on an exited process or a closed kernel never succeeds, and a
    call with arguments README's errno table calls invalid never succeeds;
  * successful reads agree with `peek` and need PROT_READ, writes read back
    and need PROT_WRITE; no call on a process faults at a kernel address.

`APIFuzzUnderPressure` runs the same under a small memory limit with swap
(the pagedaemon and the swapper run mid-sequence); `APIFuzzTight` with too
little swap, so calls run out of memory.  `test_fuzz_kernel_constructor`
gives `Kernel(...)` hostile values for every parameter.

The default run takes about a minute.  `test_fuzz_api_stress` (marker
`stress`) runs many more sequences; RUMPVM_FUZZ_EXAMPLES sets the count.

Each `test_bug_*` is a minimal deterministic regression test for a bug this
fuzzer found; it fails until the bug is fixed.  The machines tolerate the
bugs listed in KNOWN_* (so that a run goes on to find new ones) unless
RUMPVM_FUZZ_STRICT=1.

Host memory: while the machines run, the soft RLIMIT_AS of the test
process is lowered to its current size plus 8 GiB, so that a call that
tries to allocate a huge host buffer fails with MemoryError (a finding)
instead of inviting the host's OOM killer.
"""
from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import math
import mmap
import os
import re
import resource as host_resource
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

import rumpvm
from rumpvm import (
    MAP_ANON,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_MAX,
    PROT_READ,
    PROT_WRITE,
    OutOfMemory,
    VMError,
)
from rumpvm import resource as rlim
from rumpvm.constants import (
    PROT_ALL,
    VM_MAX_KERNEL_ADDRESS,
    VM_MAXUSER_ADDRESS,
    VM_MIN_ADDRESS,
    VM_MIN_KERNEL_ADDRESS,
)

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANON
BASE = 0x2_0000_0000  # the window where fixed mappings collide
WINDOW = 24  # pages
CAP = 8 * P  # bytes of each entry compared by the snapshot (plus its last page)
MAX_LIVE = 6
ALLOWED = (VMError, TypeError)


class IntSub(int):
    """An int subclass: an int for every purpose."""


def _released_view() -> memoryview:
    m = memoryview(bytearray(P))
    m.release()
    return m


def _closed_mmap() -> mmap.mmap:
    m = mmap.mmap(-1, P)
    m.close()
    return m


class Src:
    """The choices of one rule: a fixed number of words drawn by hypothesis
    up front.  Every rule draws the same shape whatever the state, so that
    hypothesis's data tree stays consistent when the state differs between
    runs (the pagedaemon and the swapper run on their own thread)."""

    WORDS = 40  # 32-bit words

    def __init__(self, raw: bytes) -> None:
        self.words = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw) - 3, 4)]
        self.i = 0

    def next(self) -> int:
        if self.i >= len(self.words):
            return 0
        self.i += 1
        return self.words[self.i - 1]

    def draw(self, g: G, label: str = "") -> Any:
        return g.fn(self)


class G:
    """A tiny strategy over a Src (only what this file needs)."""

    def __init__(self, fn: Callable[[Src], Any]) -> None:
        self.fn = fn

    def map(self, f: Callable[[Any], Any]) -> G:
        return G(lambda s: f(self.fn(s)))

    @staticmethod
    def integers(lo: int, hi: int) -> G:
        span = hi - lo + 1

        def draw(s: Src) -> int:
            v, bits = 0, 0
            while (1 << bits) < span:
                v, bits = v << 32 | s.next(), bits + 32
            return lo + v % span
        return G(draw)

    @staticmethod
    def sampled_from(seq: Sequence[Any]) -> G:
        items = list(seq)
        return G(lambda s: items[s.next() % len(items)])

    @staticmethod
    def one_of(*gs: G) -> G:
        return G(lambda s: gs[s.next() % len(gs)].fn(s))

    @staticmethod
    def builds(f: Callable[..., Any], *gs: G) -> G:
        return G(lambda s: f(*(g.fn(s) for g in gs)))

    @staticmethod
    def just(v: Any) -> G:
        return G(lambda s: v)

    @staticmethod
    def booleans() -> G:
        return G(lambda s: bool(s.next() & 1))

    @staticmethod
    def text(max_size: int) -> G:
        alphabet = "0123456789kKmMgGtTbB -+.x_\t\n\x00\u00a0\u0663\u212aunlimitedUNLIMITEDnoneclockrufifo\ud800"
        return G(lambda s: "".join(alphabet[s.next() % len(alphabet)] for _ in range(s.next() % (max_size + 1))))


WORDS = st.binary(min_size=4 * Src.WORDS, max_size=4 * Src.WORDS)


HOSTILE_INTS = [
    0, 1, -1, -P, P - 1, P + 1, 2 * P - 1, 2**31, 2**32, 2**32 - 1, 2**47, 2**48,
    VM_MAXUSER_ADDRESS, VM_MAXUSER_ADDRESS - P, VM_MAXUSER_ADDRESS + P, VM_MAXUSER_ADDRESS - 1,
    2**63 - 1, 2**63, 2**63 - P, 2**64 - P, 2**64 - 1, 2**64, 2**64 + P, 2**100, -2**63, -2**64,
    VM_MIN_KERNEL_ADDRESS, VM_MAX_KERNEL_ADDRESS, rlim.RLIM_INFINITY, IntSub(P), IntSub(-1), IntSub(2**64),
]
WRONG_TYPES: list[Any] = [
    None, True, False, 1.0, 4096.0, -4096.0, 0.5, math.nan, math.inf, -math.inf, "4096", "0x1000", "",
    b"\x00\x10", bytearray(b"1"), [4096], (4096,), {}, object(), 4096j, Decimal(4096), Fraction(4096, 1),
]
hostile_int = G.one_of(G.sampled_from(HOSTILE_INTS), G.integers(-(2**70), 2**70))
wrong_type = G.sampled_from(WRONG_TYPES)
hostile = G.one_of(hostile_int, hostile_int, wrong_type)
PROTS = [0, PROT_READ, RW, PROT_READ | PROT_EXEC, RW | PROT_EXEC, PROT_WRITE]
prot_legal = G.one_of(G.sampled_from(PROTS),
                      G.builds(lambda c, m: c | PROT_MAX(m | c), G.sampled_from(PROTS), G.sampled_from(PROTS)))
RLIMITS = sorted(rlim.RLIMITS)


def _pattern(n: int, seed: int) -> bytes:
    unit = bytes((seed * 37 + i * 11) & 0xFF for i in range(251))
    return (unit * (n // 251 + 1))[:n]


def _buffers(n: int, seed: int) -> list[Any]:
    """Writable or readable buffers of n bytes (n a multiple of 8) of every odd kind."""
    data = _pattern(n, seed)
    out: list[Any] = [data, bytearray(data), memoryview(data), memoryview(bytearray(data)).toreadonly(),
                      array.array("I", data), array.array("d", data), memoryview(bytearray(data)).cast("I"),
                      memoryview(bytearray(data)).cast("d"), (ctypes.c_uint32 * (n // 4)).from_buffer_copy(data)]
    if n >= 16:
        out.append(memoryview(bytearray(data)).cast("B", shape=[2, n // 2]))
    return out


def _bad_buffers(n: int) -> list[Any]:
    """Buffers that are not acceptable: non-contiguous, released, closed, not buffers."""
    return [memoryview(bytearray(2 * n))[::2], _released_view(), _closed_mmap(), "x" * n, n, None, [0] * n,
            1.5, memoryview(bytearray(4 * n)).cast("B", shape=[4, n])[::2]]


@contextlib.contextmanager
def host_memory_guard(extra: int = 8 << 30) -> Iterator[None]:
    """Lower the soft RLIMIT_AS to the current size + `extra` for the duration."""
    soft, hard = host_resource.getrlimit(host_resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        size = 0
    new = size + extra
    if hard != host_resource.RLIM_INFINITY:
        new = min(new, hard)
    if soft != host_resource.RLIM_INFINITY:
        new = min(new, soft)
    host_resource.setrlimit(host_resource.RLIMIT_AS, (new, hard))
    try:
        yield
    finally:
        host_resource.setrlimit(host_resource.RLIMIT_AS, (soft, hard))


def _describe(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)) and len(v) > 16:
        return f"{type(v).__name__}[{len(v)}]"
    if isinstance(v, memoryview):
        try:
            return f"memoryview(fmt={v.format!r}, shape={v.shape}, contig={v.c_contiguous}, ro={v.readonly})"
        except ValueError:
            return "memoryview(released)"
    if isinstance(v, str) and len(v) > 32:
        return f"str[{len(v)}]"
    if isinstance(v, array.array):
        return f"array({v.typecode!r})[{len(v)}]"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 4096:
        return hex(v)
    r = repr(v)
    return r if len(r) < 80 else r[:77] + "..."


# Bugs this fuzzer found that have a regression test below: the machines
# tolerate them (so that the search goes on to new ones) unless
# RUMPVM_FUZZ_STRICT=1.  Each entry: (regression test, predicate over the
# call's arguments and the exception).
def _raised_in(e: BaseException, *functions: str) -> bool:
    """Whether the innermost frame of e's traceback is one of `functions`."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name in functions


KNOWN_BUGS: list[tuple[str, Callable[[tuple[Any, ...], BaseException], bool]]] = [
    ("test_bug_peek_result_copy_raises_memoryerror",
     lambda args, e: type(e) is MemoryError and _raised_in(e, "peek_object", "peek_map")),
]
# check() findings tolerated the same way: (regression test, regex of the line).
KNOWN_CHECK_ERRORS: list[tuple[str, str]] = []
# Calls that succeed with arguments README's table says are invalid:
# (regression test, predicate over the call's description and the reason).
KNOWN_ACCEPTED: list[tuple[str, Callable[[str, str], bool]]] = []
STRICT = os.environ.get("RUMPVM_FUZZ_STRICT") == "1"


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The keys whose values differ; sampled bytes are compared at the
    addresses sampled both times."""
    out = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key), after.get(key)
        if key.endswith(".bytes") and isinstance(b, dict) and isinstance(a, dict):
            if any(b[va] != a[va] for va in b.keys() & a.keys()):
                out.append(key)
        elif b != a:
            out.append(key)
    return out


def _known_bug(args: tuple[Any, ...], e: BaseException) -> str | None:
    if STRICT:
        return None
    return next((name for name, pred in KNOWN_BUGS if pred(args, e)), None)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad_prot(v: Any) -> bool:
    if not _is_int(v) or v < 0 or v & ~(PROT_ALL | PROT_MAX(PROT_ALL)):
        return True
    mx = (v >> 16) & PROT_ALL
    return bool(mx and v & PROT_ALL & ~mx)


RANGE_METHODS = ("munmap", "mprotect", "minherit", "madvise", "mlock", "munlock", "msync", "vslock", "vsunlock")


def invalid_reason(meth: str, args: tuple[Any, ...], kw: dict[str, Any]) -> str | None:
    """Why a call with these arguments must fail according to README's errno
    table (EINVAL / TypeError rows), or None."""
    if meth in RANGE_METHODS:
        a, n = args[0], args[1]
        if not (_is_int(a) and _is_int(n)):
            return "a non-int address or length"
        if meth in ("vslock", "vsunlock"):
            a &= ~(P - 1)
        if a % P or a < VM_MIN_ADDRESS:
            return "an unaligned or low address"
        if n <= 0:
            return "a length <= 0"
        if a + n > VM_MAXUSER_ADDRESS:
            return "a range beyond the user address space"
        third = args[2] if len(args) > 2 else kw.get("prot", kw.get("flags"))
        if meth in ("mprotect", "vslock") and third is not None and _bad_prot(third):
            return f"a bad protection {third!r}"
        if meth == "minherit" and not (_is_int(third) and third in (0, 1, 2)):
            return f"a bad inheritance {third!r}"
        if meth == "madvise" and not (_is_int(third) and 0 <= third <= 9):
            return f"a bad advice {third!r}"
        if meth == "msync" and not (_is_int(third) and 0 <= third <= 3):
            return f"bad msync flags {third!r}"
    elif meth == "mmap":
        n, prot, flags = args[0], kw.get("prot", RW), kw.get("flags", ANON)
        if not _is_int(n) or n <= 0:
            return "a bad length"
        if _bad_prot(prot):
            return f"a bad protection {prot!r}"
        if not _is_int(flags) or flags & ~(MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANON) or \
                bool(flags & MAP_SHARED) == bool(flags & MAP_PRIVATE):
            return f"bad flags {flags!r}"
        for key in ("addr", "offset"):
            v = kw.get(key, 0)
            if not _is_int(v) or v < 0 or v % P:
                return f"a bad {key} {v!r}"
    elif meth in ("read", "peek"):
        if not (_is_int(args[0]) and _is_int(args[1])) or args[0] < 0 or args[1] < 0:
            return "a bad address or length"
    elif meth in ("write", "readinto"):
        if not _is_int(args[0]) or args[0] < 0:
            return "a bad address"
    elif meth == "useracc":
        if _bad_prot(args[2]) or args[2] & ~PROT_ALL:
            return f"a bad protection {args[2]!r}"
    elif meth == "setrlimit":
        which, soft, hard = args
        if not (_is_int(which) and which in rlim.RLIMITS and _is_int(soft) and _is_int(hard)):
            return "a non-int or unknown resource or limit"
        if soft < 0 or hard < 0 or soft > hard:
            return "a negative soft limit or one above the hard limit"
    elif meth == "getrlimit":
        if not (_is_int(args[0]) and args[0] in rlim.RLIMITS):
            return "an unknown resource"
    elif meth == "fork":
        if "shared" in kw and not isinstance(kw["shared"], bool):
            return "a non-bool shared"
        if kw.get("name") is not None and not isinstance(kw["name"], str):
            return "a non-str name"
    return None


class APIFuzzMachine(RuleBasedStateMachine):
    KERNEL_ARGS: ClassVar[dict[str, Any]] = {"oom_timeout": 0.3}
    BIG_PAGES = 0  # a region of this many pages per process, written at setup
    MAXSLP: ClassVar[float | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.k = rumpvm.Kernel(**self.KERNEL_ARGS)
        if self.MAXSLP is not None:
            self.k.maxslp = self.MAXSLP  # sleepers go out at the first shortage
        self.procs: list[rumpvm.Proc] = []  # every process ever made here, live or exited
        self.held: list[rumpvm.VMObject] = []  # objects whose create_object handle we hold
        self.detached: list[rumpvm.VMObject] = []
        self.written: list[tuple[rumpvm.Proc, int, int]] = []  # ranges written successfully
        self.other = rumpvm.Kernel(oom_timeout=0.3)  # a second, open kernel
        self.other_obj = self.other.create_object(4 * P)
        self.closed = rumpvm.Kernel(oom_timeout=0.3)  # a closed kernel, with what it gave out
        self.closed_proc = self.closed.spawn(name="closed")
        self.closed_proc.mmap(4 * P)
        self.closed_obj = self.closed.create_object(4 * P)
        self.closed.close()
        self.tmpdir = tempfile.mkdtemp(prefix="rumpvm-fuzz-")
        d = Path(self.tmpdir)
        (d / "target").write_bytes(b"keep")
        (d / "link").symlink_to(d / "target")
        os.mkfifo(d / "fifo")
        self.core_paths: list[Any] = [str(d / "core"), str(d / "core"), str(d / "link"), str(d / "fifo"), str(d),
                                      str(d / "missing" / "core"), ""]
        self.bad_core_paths: list[Any] = [str(d / "core\x00x"), os.fsencode(str(d / "core")), d / "core", None, 1]

    def teardown(self) -> None:
        try:
            for p in self.live():
                p.exit()
            for o in self.held:
                self.k.detach_object(o)
            self.held.clear()
            self.kernel_checks()
        finally:
            self.k.close()
            self.other.close()
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- state ------------------------------------------------------------------------

    def live(self) -> list[rumpvm.Proc]:
        return [p for p in self.procs if p.alive]

    @initialize()
    def setup(self) -> None:
        k = self.k
        o = k.create_object(4 * P)
        self.held.append(o)
        k.object_write(o.id, 0, _pattern(4 * P, 99))
        for i in range(2):
            p = k.spawn(name=f"fz{i}")
            self.procs.append(p)
            a = p.mmap(4 * P, flags=ANON | MAP_FIXED, addr=BASE + 8 * i * P)
            p.write(a, _pattern(4 * P, i))
            self.written.append((p, a, 4 * P))
            s = p.mmap(4 * P, flags=MAP_SHARED | MAP_FIXED, addr=BASE + (8 * i + 4) * P, obj=o)
            p.write(s + i * P, _pattern(P, 10 + i))
            self.written.append((p, s + i * P, P))
            if self.BIG_PAGES:
                b = p.mmap(self.BIG_PAGES * P)
                p.write(b, _pattern(self.BIG_PAGES * P, 20 + i))
                self.written.append((p, b, self.BIG_PAGES * P))

    # -- the snapshot compared around failed calls ---------------------------------------

    def snapshot(self) -> dict[str, Any]:
        k = self.k
        # A scan the pagedaemon started earlier (a limit since raised) may
        # still be running on its own thread: compare only quiet states.
        k.pagedaemon.wait_idle(30.0)
        snap: dict[str, Any] = {}
        # Once a kernel has had a limit, its swapper and u-area cache may act
        # on the pagedaemon's thread after the limit is lifted (swap-ins,
        # cache drains): kernel maps are compared only in kernels that never
        # had one.
        quiet_kernel_refs = k.memlimit is not None or self.KERNEL_ARGS.get("memlimit") is not None
        for p in self.live():
            maps = p.maps()
            pages: dict[int, bytes] = {}  # sampled pages by address (entries may split)
            for e in maps:
                n = e.end - e.start
                head = p.peek(e.start, min(n, CAP))
                pages.update((e.start + i, head[i:i + P]) for i in range(0, len(head), P))
                if n > CAP:
                    pages[e.end - P] = p.peek(e.end - P, P)
            snap[f"p{p.pid}.maps"] = maps
            snap[f"p{p.pid}.bytes"] = pages
            snap[f"p{p.pid}.rlimits"] = [p.getrlimit(r) for r in RLIMITS]
        for p, a, n in self.written:
            if p.alive:
                try:
                    snap[f"p{p.pid}.written {a:#x}+{n:#x}"] = p.peek(a, n)
                except VMError as e:
                    snap[f"p{p.pid}.written {a:#x}+{n:#x}"] = e.errno
        # The kernel object's references and the kernel maps follow the
        # u-area cache, which the pagedaemon drains on its own thread: they
        # are compared only where no pagedaemon runs.
        snap["objects"] = [(o.id, o.type, o.size, None if quiet_kernel_refs else o.refs, o.shadow,
                            o.backing_offset, o.shadow_count)
                           for o in k.objects() if not (o.type == "kernel" and quiet_kernel_refs)]
        for o in self.held:
            snap[f"object {o.id} bytes"] = k.object_peek(o.id, 0, min(o.size << 12, CAP))
        if not quiet_kernel_refs:
            snap["kmem"] = [(m.name, [(e.start, e.end, e.prot, e.max_prot) for e in m.entries])
                            for m in k.kmem_maps()]
        snap["procs"] = [p.pid for p in k.procs()]
        pd = k.pagedaemon
        snap["knobs"] = (k.memlimit, pd.freemin, pd.freetarg, pd.policy)
        return snap

    def do(self, desc: str, fn: Callable[[], Any], must_fail: bool = False,
           args: tuple[Any, ...] = (), invalid: str | None = None) -> tuple[bool, Any]:
        """Run one call; (True, result) or (False, exception).  Checks the
        properties of the module docstring; `args` are the call's arguments
        (for KNOWN_BUGS), `invalid` why the call must fail (README's table)."""
        note(desc)
        before = self.snapshot()
        try:
            result = fn()
        except ALLOWED as e:
            note(f"  -> {type(e).__name__}: {e}")
            if (isinstance(e, rumpvm.SegmentationFault) and VM_MIN_KERNEL_ADDRESS <= e.addr < VM_MAX_KERNEL_ADDRESS
                    and not any(_is_int(a) and a >= VM_MAXUSER_ADDRESS for a in args)):
                known = None if STRICT else next((t for t, pred in KNOWN_BUGS if pred(args, e)), None)
                if known is None:
                    raise AssertionError(f"{desc}: SegmentationFault at the kernel address {e.addr:#x},"
                                         " which the caller never named") from None
                note(f"  -> known bug, see {known}")
            short_write = isinstance(e, OutOfMemory) and e.written
            after = self.snapshot()
            diff = _diff(before, after)
            if not short_write and diff:
                raise AssertionError(f"{desc} failed with {type(e).__name__}({e}) but changed {diff}: "
                                     + "; ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}"[:600]
                                                 for key in diff[:3])) from None
            return False, e
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            known = _known_bug(args, e)
            if known is not None:
                note(f"  -> {type(e).__name__}: known bug, see {known}")
                return False, e
            raise AssertionError(f"{desc} raised the undocumented {type(e).__name__}: {e!r}") from e
        note(f"  -> ok {_describe(result)}")
        if must_fail:
            raise AssertionError(f"{desc} succeeded (returned {_describe(result)}); it must fail")
        if invalid is not None:
            known = None if STRICT else next((t for t, pred in KNOWN_ACCEPTED if pred(desc, invalid)), None)
            if known is None:
                raise AssertionError(f"{desc} succeeded (returned {_describe(result)}) with {invalid}")
            note(f"  -> accepted {invalid}: known bug, see {known}")
        return True, result

    @invariant()
    def kernel_checks(self) -> None:
        try:
            self.k.check()
        except AssertionError as e:
            lines = [ln.strip() for ln in str(e).splitlines()[1:]]
            # Each line is "<map name>: <what>".
            if STRICT or not lines or not all(any(re.fullmatch(r"\S+: " + rx, ln) for _, rx in KNOWN_CHECK_ERRORS)
                                              for ln in lines):
                raise
            known = sorted({t for t, rx in KNOWN_CHECK_ERRORS for ln in lines if re.fullmatch(r"\S+: " + rx, ln)})
            note(f"check(): known bug(s) {known}")

    def _covered(self, p: rumpvm.Proc, a: int, n: int, need: int) -> bool:
        """Whether every page of [a, a+n) is in an entry of p with `need`."""
        va, end = a & ~(P - 1), a + n
        for e in p.maps():
            if e.end <= va or e.start >= end:
                continue
            if e.start > va or e.prot & need != need:
                return False
            va = e.end
        return va >= end

    # -- argument strategies -----------------------------------------------------------

    def _mode(self, src: Src) -> bool:
        """True: hostile arguments for this call (each one hostile with 1/2)."""
        return src.draw(G.integers(0, 9), label="mode") >= 6

    def _arg(self, src: Src, hostile_call: bool, legal: G, label: str) -> Any:
        if hostile_call and src.draw(G.booleans(), label=f"{label} hostile"):
            return src.draw(hostile, label=label)
        return src.draw(legal, label=label)

    def _addrs(self, p: rumpvm.Proc | None) -> G:
        starts = [BASE + i * P for i in range(WINDOW)]
        if p is not None and p.alive:
            with contextlib.suppress(VMError):
                for e in p.maps():
                    starts += [e.start, e.end, e.end - P, e.start + P]
        aligned = G.sampled_from(starts)
        return G.one_of(aligned, aligned, aligned, G.builds(lambda a, d: a + d, aligned, G.integers(-3, P + 3)))

    def _range(self, src: Src, p: rumpvm.Proc, h: bool) -> tuple[Any, Any]:
        """(addr, length): mostly a range inside one current entry of `p`
        (or spanning to the next), else free; each part hostile with 1/2
        in a hostile call."""
        ents = []
        if p.alive:
            with contextlib.suppress(VMError):
                ents = p.maps()
        if ents and src.draw(G.integers(0, 9), label="fitted") < 6:
            e = ents[src.draw(G.integers(0, len(ents) - 1), label="entry")]
            npages = (e.end - e.start) // P
            i = src.draw(G.integers(0, min(npages - 1, 16)), label="first page")
            n = src.draw(G.integers(1, min(npages - i, 16) + 1), label="pages")
            a, length = e.start + i * P, n * P - src.draw(G.sampled_from([0, 0, 1, P - 1]), label="short")
            legal_a: G = G.just(a)
            legal_n: G = G.just(length)
        else:
            legal_a, legal_n = self._addrs(p), self._lengths()
        return self._arg(src, h, legal_a, "addr"), self._arg(src, h, legal_n, "length")

    def _lengths(self) -> G:
        return G.one_of(G.integers(1, 8).map(lambda n: n * P), G.integers(1, 8).map(lambda n: n * P),
                         G.integers(0, 3 * P))

    def _pick_proc(self, src: Src) -> rumpvm.Proc:
        choices: list[rumpvm.Proc] = self.live() * 4 + [p for p in self.procs if not p.alive] + [self.closed_proc]
        return src.draw(G.sampled_from(choices), label="proc")

    def _pick_obj(self, src: Src, hostile_call: bool) -> Any:
        pool: list[Any] = [*self.held, *self.held, *self.detached, self.other_obj, self.closed_obj]
        if hostile_call:
            pool += [None, 1, "obj", object()]
        return src.draw(G.sampled_from(pool), label="obj")

    def _oids(self) -> G:
        ids = [o.id for o in self.k.objects()]
        return G.one_of(G.sampled_from(ids), hostile)

    def _data(self, src: Src, hostile_call: bool) -> Any:
        n = src.draw(G.sampled_from([8, 16, 64, P, P + 8, 3 * P, 16 * P]), label="data size")
        pool = _buffers(n, src.draw(G.integers(0, 255), label="seed"))
        if hostile_call:
            pool += [*_bad_buffers(n), b"", bytearray()]
        return src.draw(G.sampled_from(pool), label="data")

    # -- process calls -------------------------------------------------------------------

    @rule(words=WORDS)
    def proc_call(self, words: bytes) -> None:
        src = Src(words)
        p = self._pick_proc(src)
        h = self._mode(src)
        dead = not p.alive
        A = self._addrs(p)
        L = self._lengths()
        method = src.draw(G.sampled_from(PROC_METHODS), label="method")
        arg = self._arg
        tag = f"p{p.pid}{' (exited)' if dead else ''}{' (closed kernel)' if p is self.closed_proc else ''}"

        def call(meth: str, *args: Any, **kw: Any) -> tuple[bool, Any]:
            shown = ", ".join([_describe(a) for a in args] + [f"{k_}={_describe(v)}" for k_, v in kw.items()])
            return self.do(f"{tag}.{meth}({shown})", lambda: getattr(p, meth)(*args, **kw), must_fail=dead,
                           args=(*args, *kw.values()), invalid=invalid_reason(meth, args, kw))

        if method == "mmap":
            flags = arg(src, h, G.sampled_from([ANON, ANON | MAP_FIXED, ANON | MAP_FIXED, MAP_SHARED | MAP_ANON,
                                                  MAP_SHARED | MAP_ANON | MAP_FIXED, MAP_SHARED,
                                                  MAP_SHARED | MAP_FIXED, MAP_PRIVATE, MAP_PRIVATE | MAP_FIXED]),
                        "flags")
            kw: dict[str, Any] = {"prot": arg(src, h, prot_legal, "prot"), "flags": flags}
            if src.draw(G.booleans(), label="with addr"):
                kw["addr"] = arg(src, h, A, "addr")
            if (isinstance(flags, int) and not flags & MAP_ANON) or src.draw(G.integers(0, 9)) == 0:
                kw["obj"] = self._pick_obj(src, h)
                kw["offset"] = arg(src, h, G.sampled_from([0, P, 2 * P, 3 * P, 4 * P]), "offset")
            ok, r = call("mmap", arg(src, h, L, "length"), **kw)
            if ok:
                assert isinstance(r, int) and r % P == 0 and P <= r < VM_MAXUSER_ADDRESS, r
        elif method in ("munmap", "mlock", "munlock", "vsunlock"):
            call(method, *self._range(src, p, h))
        elif method == "mprotect":
            call(method, *self._range(src, p, h), arg(src, h, prot_legal, "prot"))
        elif method == "minherit":
            call(method, *self._range(src, p, h), arg(src, h, G.integers(0, 2), "inh"))
        elif method == "madvise":
            call(method, *self._range(src, p, h), arg(src, h, G.integers(0, 9), "adv"))
        elif method == "msync":
            call(method, *self._range(src, p, h), arg(src, h, G.integers(0, 3), "fl"))
        elif method in ("useracc", "vslock"):
            call(method, *self._range(src, p, h), arg(src, h, prot_legal, "prot"))
        elif method == "read":
            a, n = self._range(src, p, h)
            ok, r = call("read", a, n)
            if ok:
                assert type(r) is bytes and len(r) == n
                assert not n or self._covered(p, a, n, PROT_READ), f"read({a:#x}, {n}) of memory without read"
                assert r == p.peek(a, n), f"read({a:#x}, {n}) differs from peek"
        elif method == "peek":
            a, n = self._range(src, p, h)
            ok, r = call("peek", a, n)
            if ok:
                assert type(r) is bytes and len(r) <= n
        elif method == "readinto":
            a = self._range(src, p, h)[0]
            buf = self._data(src, h)
            if isinstance(buf, bytes):
                buf = src.draw(G.sampled_from([buf, bytearray(buf)]), label="buffer")
            ok, r = call("readinto", a, buf)
            if ok:
                got = memoryview(buf).cast("B").tobytes()
                assert r == len(got)
                assert not r or self._covered(p, a, r, PROT_READ), f"readinto({a:#x}) of memory without read"
                if r:
                    assert got == p.peek(a, r), f"readinto({a:#x}) differs from peek"
        elif method == "write":
            a = self._range(src, p, h)[0]
            buf = self._data(src, h)
            ok, _ = call("write", a, buf)
            if ok:
                want = memoryview(buf).cast("B").tobytes()
                if want:
                    assert self._covered(p, a, len(want), PROT_WRITE), f"write at {a:#x} to memory without write"
                    assert p.peek(a, len(want)) == want, f"write at {a:#x} does not read back"
                    if len(self.written) < 40:
                        self.written.append((p, a, len(want)))
        elif method == "fork":
            if len(self.live()) >= MAX_LIVE and not dead:
                return
            kw = {}
            if src.draw(G.booleans(), label="named"):
                kw["name"] = arg(src, h, G.sampled_from(["child", "", "x" * 300, "\x00\ud800"]), "name")
            if src.draw(G.booleans(), label="shared?"):
                kw["shared"] = arg(src, h, G.booleans(), "shared")
            ok, c = call("fork", **kw)
            if ok:
                self.procs.append(c)
        elif method == "map_stack":
            kw = {}
            if src.draw(G.booleans(), label="init?"):
                kw["init_size"] = arg(src, h, G.sampled_from([P, 2 * P, 32 * P]), "init")
            if src.draw(G.booleans(), label="addr?"):
                kw["addr"] = arg(src, h, A, "addr")
            call("map_stack", arg(src, h, G.sampled_from([8 * P, 64 * P, 1 << 20, 64 << 20]), "max"), **kw)
        elif method == "coredump":
            paths = self.core_paths + (self.bad_core_paths if h else [])
            path = src.draw(G.sampled_from(paths), label="path")
            ok, _ = call("coredump", path)
            if ok:
                assert Path(path).is_file() and not Path(path).is_symlink()
                assert Path(path).stat().st_mode & 0o777 == 0o600
        elif method == "getrlimit":
            call("getrlimit", arg(src, h, G.sampled_from(RLIMITS), "which"))
        elif method == "setrlimit":
            which = arg(src, h, G.sampled_from(RLIMITS), "which")
            cur = p.limits.get(which, (0, 0)) if isinstance(which, int) else (0, 0)
            vals = G.sampled_from([cur[0], cur[1], cur[0] // 2, 0, P, 64 << 20, rlim.RLIM_INFINITY])
            call("setrlimit", which, arg(src, h, vals, "soft"), arg(src, h, vals, "hard"))
        elif method in ("exit", "exec", "unshare", "sleep", "wake", "stop", "cont", "maps", "smaps", "status",
                        "coredump_segments"):
            if method == "exit" and len(self.live()) <= 1 and not dead:
                return
            call(method)
            if method == "exit":
                assert p.state == "Z"
        else:  # pragma: no cover
            raise AssertionError(method)

    # -- kernel calls ---------------------------------------------------------------------

    @rule(words=WORDS)
    def kernel_call(self, words: bytes) -> None:
        src = Src(words)
        closed = src.draw(G.integers(0, 9), label="closed kernel?") == 0
        k = self.closed if closed else self.k
        h = self._mode(src)
        arg = self._arg
        method = src.draw(G.sampled_from(KERNEL_METHODS), label="method")
        tag = "closed" if closed else "k"

        def call(name: str, fn: Callable[[], Any], *shown_args: Any) -> tuple[bool, Any]:
            shown = ", ".join(_describe(a) for a in shown_args)
            return self.do(f"{tag}.{name}({shown})", fn, must_fail=closed, args=shown_args)

        if method == "spawn":
            if len(self.live()) >= MAX_LIVE and not closed:
                return
            name = arg(src, h, G.sampled_from(["proc", "", "y" * 1000]), "name")
            ok, p = call("spawn", lambda: k.spawn(name), name)
            if ok:
                self.procs.append(p)
        elif method == "create_object":
            size = arg(src, h, G.sampled_from([1, P, 4 * P, 4 * P + 1, 16 * P]), "size")
            ok, o = call("create_object", lambda: k.create_object(size), size)
            if ok:
                if len(self.held) < 4:
                    self.held.append(o)
                else:
                    self.k.detach_object(o)
        elif method == "detach_object":
            o = self._pick_obj(src, h)
            ok, _ = call("detach_object", lambda: k.detach_object(o), o)
            if ok and o in self.held and k is self.k:
                self.held.remove(o)
                self.detached.append(o)
        elif method in ("object_info", "object_peek", "object_write"):
            oid = src.draw(self._oids(), label="oid") if h else src.draw(
                G.sampled_from([o.id for o in self.k.objects()]), label="oid")
            if method == "object_info":
                call(method, lambda: k.object_info(oid), oid)
                return
            off = arg(src, h, G.sampled_from([0, 1, P - 1, P, 3 * P, 4 * P, 16 * P]), "offset")
            if method == "object_peek":
                n = arg(src, h, L_OBJ, "length")
                ok, r = call(method, lambda: k.object_peek(oid, off, n), oid, off, n)
                if ok:
                    assert type(r) is bytes and len(r) <= n
                return
            buf = self._data(src, h)
            ok, _ = call(method, lambda: k.object_write(oid, off, buf), oid, off, buf)
            # Only objects we hold a handle on must keep what was written: a
            # write to a range of an object nothing maps any more is dropped
            # at once (pages nothing can reach are freed; see the report).
            if ok and oid in [o.id for o in self.held]:
                want = memoryview(buf).cast("B").tobytes()
                assert k.object_peek(oid, off, len(want)) == want, "object_write does not read back"
        elif method == "memlimit":
            legal = G.sampled_from([None, "unlimited", "UNLIMITED", "none", "", "1G", "64m", 64 << 20,
                                     "4M", "2M", 1 << 40, "300K"])
            v = arg(src, h, G.one_of(legal, legal, G.text(max_size=24)), "limit")

            def set_limit() -> None:
                k.memlimit = v
            call("memlimit=", set_limit, v)
        elif method == "memlimit?":
            call("memlimit", lambda: k.memlimit)
        elif method in ("freemin", "freetarg"):
            v = arg(src, h, G.sampled_from([0, 1, 4, 8, 16, 64, 1000, 10**6]), method)

            def set_knob() -> None:
                setattr(k.pagedaemon, method, v)
            call(f"pagedaemon.{method}=", set_knob, v)
        elif method == "set_knobs":
            vals = G.sampled_from([None, 0, 1, 4, 16, 64, 1000])
            fmin, ftarg = arg(src, h, vals, "freemin"), arg(src, h, vals, "freetarg")
            call("pagedaemon.set_knobs", lambda: k.pagedaemon.set_knobs(freemin=fmin, freetarg=ftarg), fmin, ftarg)
        elif method == "policy":
            v = arg(src, h, G.one_of(G.sampled_from(["clock", "lru", "fifo", "random", " lru\n", "LRU"]),
                                       G.text(max_size=10)), "policy")

            def set_policy() -> None:
                k.pagedaemon.policy = v
            call("pagedaemon.policy=", set_policy, v)
        elif method in ("kernacc", "chgkprot"):
            starts = [VM_MIN_KERNEL_ADDRESS, VM_MAX_KERNEL_ADDRESS - P]
            if not closed:
                for m in self.k.kmem_maps():
                    starts += [m.start, m.end - P] + [e.start for e in m.entries] + [e.end for e in m.entries]
            a = arg(src, h, G.sampled_from(starts), "addr")
            n = arg(src, h, G.sampled_from([1, P, 2 * P, 16 * P, 64 << 20]), "length")
            pr = arg(src, h, G.sampled_from([PROT_READ, RW, 0, RW | PROT_EXEC]), "prot")
            fn = getattr(k, method)
            ok, r = call(method, lambda: fn(a, n, pr), a, n, pr)
            if ok and method == "kernacc":
                assert type(r) is bool
        elif method == "proc":
            pid = arg(src, h, G.sampled_from([p.pid for p in self.procs] + [0, 10**6]), "pid")
            call("proc", lambda: k.proc(pid), pid)
        else:
            call(method, getattr(k, method))


L_OBJ = G.sampled_from([0, 1, P, 4 * P, 16 * P])
PROC_METHODS = [
    *["mmap"] * 6, *["munmap", "mprotect", "minherit", "madvise", "mlock", "munlock", "msync"] * 2,
    *["read", "readinto", "write", "write"] * 3, "peek", "fork", "fork", "exit", "exec", "unshare",
    "map_stack", "getrlimit", "setrlimit", "sleep", "wake", "stop", "cont", "useracc", "vslock", "vslock",
    "vsunlock", "maps", "smaps", "status", "coredump_segments", "coredump",
]
KERNEL_METHODS = [
    "spawn", "create_object", "detach_object", "object_info", "object_peek", "object_write", "object_write",
    "memlimit", "memlimit?", "freemin", "freetarg", "set_knobs", "policy", "kernacc", "chgkprot", "stats",
    "meminfo", "objects", "procs", "proc", "swaps", "kmem_maps", "pools",
]


class APIFuzzUnderPressure(APIFuzzMachine):
    """The same under a memory limit smaller than what the sequences touch,
    with swap: the pagedaemon pages and the swapper swaps mid-sequence."""

    KERNEL_ARGS: ClassVar[dict[str, Any]] = {"memlimit": "400K", "swap": "8M", "oom_timeout": 0.3}
    BIG_PAGES = 40
    MAXSLP = 0.0


class APIFuzzTight(APIFuzzMachine):
    """Too little swap for everything: memory runs out mid-call, so failed
    calls are OutOfMemory (which must change nothing) or short writes."""

    KERNEL_ARGS: ClassVar[dict[str, Any]] = {"memlimit": "320K", "swap": "256K", "oom_timeout": 0.2}
    BIG_PAGES = 52  # 2 x 52 pages of ~124 (memory + swap): forks and new mappings run out
    MAXSLP = 0.0


SETTINGS = settings(
    max_examples=600,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)


def test_fuzz_api() -> None:
    with host_memory_guard():
        run_state_machine_as_test(APIFuzzMachine, settings=SETTINGS)


def test_fuzz_api_under_pressure() -> None:
    with host_memory_guard():
        run_state_machine_as_test(APIFuzzUnderPressure, settings=settings(SETTINGS, max_examples=200))


def test_fuzz_api_tight() -> None:
    with host_memory_guard():
        run_state_machine_as_test(APIFuzzTight, settings=settings(SETTINGS, max_examples=150))


@pytest.mark.stress
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("machine", [APIFuzzMachine, APIFuzzUnderPressure, APIFuzzTight],
                         ids=["plain", "pressure", "tight"])
def test_fuzz_api_stress(machine: type[APIFuzzMachine]) -> None:
    n = int(os.environ.get("RUMPVM_FUZZ_EXAMPLES", "2000"))
    with host_memory_guard():
        run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=n, stateful_step_count=60))


# -- the constructor -------------------------------------------------------------------------

CTOR_VALUES: dict[str, list[Any]] = {
    "memlimit": [None, "unlimited", "", "64M", "300K", "288K", "287K", 0, -1, 1 << 30, "1e3", "64 M", "\u0663M",
                 2**63, 2**63 - 1, 1.5, math.nan, b"64M", True, [1]],
    "swap": [0, "0", "4M", "64K", 4095, 4096, -4096, "-1", 2**63, "1e3", None, 1.0, math.inf, b"4M", False],
    "policy": ["clock", "lru", "fifo", "random", " lru ", "LRU", "", "opt", None, b"lru", 1],
    "oom_timeout": [0, 0.0, -0.0, 0.5, 3, -1, math.nan, math.inf, -math.inf, 1e300, 10**400, 2**64, "1", None, True],
    "wired_limit": [None, "unlimited", "1M", 0, -1, "abc", 1.5, 2**70, "-5"],
}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_kernel_constructor(data: st.DataObject, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Kernel(**kwargs) with hostile values for every parameter (and swap
    files that are missing, directories, symlinks, FIFOs, or carry a NUL):
    VMError or TypeError, or a kernel that works and closes."""
    d = tmp_path_factory.mktemp("ctor")
    (d / "target").write_bytes(b"keep")
    (d / "link").symlink_to(d / "target")
    os.mkfifo(d / "fifo")
    paths: list[Any] = [None, str(d / "swap"), str(d / "link"), str(d / "fifo"), str(d), str(d / "no" / "swap"),
                        str(d / "target\x00.swap"), 7, os.fsencode(str(d)) + b"/\xff.swap"]
    kw = {key: data.draw(st.sampled_from(vals), label=key) for key, vals in CTOR_VALUES.items()
          if data.draw(st.booleans(), label=f"{key}?")}
    if data.draw(st.booleans(), label="swapfile?"):
        kw["swapfile"] = data.draw(st.sampled_from(paths), label="swapfile")
        kw.setdefault("swap", "64K")
    note(f"Kernel(**{kw!r})")
    try:
        k = rumpvm.Kernel(**kw)
    except ALLOWED:
        pass
    except BaseException as e:
        raise AssertionError(f"Kernel(**{kw!r}) raised the undocumented {type(e).__name__}: {e!r}") from e
    else:
        with k:
            p = k.spawn()
            a = p.mmap(4 * P)
            p.write(a, b"x" * (4 * P))
            assert p.read(a, 4) == b"xxxx"
            k.check()
        sf = kw.get("swapfile")
        assert not (isinstance(sf, str) and "\x00" in sf), f"Kernel(swapfile={sf!r}) accepted a path with a NUL"
    assert (d / "target").read_bytes() == b"keep", "a swap file replaced the target of a symlink"


# -- regression tests for bugs found by the fuzzer -----------------------------------------


def _assert_documented(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except ALLOWED as e:
        return e
    except BaseException as e:
        raise AssertionError(f"undocumented {type(e).__name__}: {e!r}") from e
    return None


@pytest.mark.parametrize("buffer", ["released memoryview", "closed mmap"])
@pytest.mark.parametrize("call", ["write", "readinto", "object_write"])
def test_bug_dead_buffer_raises_valueerror(kernel, call, buffer) -> None:
    """A released memoryview or a closed mmap.mmap as the buffer of p.write,
    p.readinto or k.object_write raises ValueError ("operation forbidden on
    released memoryview object", "mmap closed or invalid") from
    memoryview(buffer): only VMError or TypeError may escape."""
    p = kernel.spawn()
    a = p.mmap(P)
    o = kernel.create_object(P)
    m = _released_view() if buffer == "released memoryview" else _closed_mmap()
    fn = {"write": lambda: p.write(a, m), "readinto": lambda: p.readinto(a, m),
          "object_write": lambda: kernel.object_write(o.id, 0, m)}[call]
    try:
        assert isinstance(_assert_documented(fn), TypeError)
    finally:
        kernel.detach_object(o)


def test_bug_write_only_mapping_gets_read_translation(kernel) -> None:
    """A write to a PROT_WRITE-only mapping enters a read translation: k.check()
    fails ("translation at 0x... in entry without read") and the page can then
    be read (p.read's fast path uses pmap.rd), though the entry has no
    PROT_READ: the read must be SegmentationFault(SEGV_ACCERR), as it is
    before the write."""
    p = kernel.spawn()
    a = p.mmap(P, prot=PROT_WRITE)
    with pytest.raises(rumpvm.SegmentationFault):
        p.read(a, 1)
    p.write(a, b"secret")
    problems = []
    try:
        p.read(a, 6)
        problems.append("read of write-only memory succeeded")
    except rumpvm.SegmentationFault as e:
        assert e.code == "SEGV_ACCERR"
    try:
        kernel.check()
    except AssertionError as e:
        problems.append(str(e))
    assert not problems, problems


@pytest.mark.parametrize("prot", [0x100, -4096, -1, 1 << 40])
def test_bug_vslock_accepts_bad_prot(kernel, prot) -> None:
    """p.vslock(addr, len, prot) never validates `prot` (it only tests its
    PROT_WRITE bit): 0x100, -4096 or 1 << 40 wire the range and succeed, -1
    is SegmentationFault(SEGV_ACCERR, "access -0x1"); README's table says a
    bad prot is VMError(EINVAL), and nothing may be wired."""
    p = kernel.spawn()
    a = p.mmap(P)
    with pytest.raises(VMError) as ei:
        p.vslock(a, P, prot)
    assert ei.value.errno == errno.EINVAL and not isinstance(ei.value, rumpvm.SegmentationFault)
    assert not any(e.wired for e in p.maps())


def test_bug_uarea_without_access_cannot_swap_in() -> None:
    """k.chgkprot(p.uarea, USPACE, PROT_NONE) is accepted; once the swapper
    has swapped p out, swapping it back in wires the u-area, which faults on
    the protection: every call on p (wake, read, mmap, ...) then raises
    SegmentationFault at the kernel address of its u-area, forever.  Either
    chgkprot must refuse to take access away from a u-area, or the swap-in
    must wire it regardless."""
    from rumpvm.constants import USPACE

    with rumpvm.Kernel(memlimit="400K", swap="8M", oom_timeout=0.3) as k:
        k.maxslp = 0
        p, q = k.spawn(), k.spawn()
        a = p.mmap(40 * P)
        p.write(a, b"x" * (40 * P))
        try:
            k.chgkprot(p.uarea, USPACE, 0)
        except VMError:
            return  # refusing is a fix
        p.sleep()
        b = q.mmap(60 * P)
        q.write(b, b"y" * (60 * P))  # memory runs short: the sleeper goes out
        assert p.state == "W", "precondition: p was swapped out"
        p.wake()
        assert p.read(a, 1) == b"x"
        k.check()


def test_bug_coredump_path_with_nul_raises_valueerror(kernel, tmp_path) -> None:
    """p.coredump(path) with a NUL in `path` raises ValueError ("embedded null
    byte", from os.open); only VMError or TypeError may escape."""
    p = kernel.spawn()
    p.mmap(P)
    e = _assert_documented(lambda: p.coredump(str(tmp_path / "core\x00x")))
    assert e is not None


def test_bug_kernel_huge_int_oom_timeout_overflowerror() -> None:
    """Kernel(oom_timeout=10**400) raises OverflowError ("int too large to
    convert to float", from math.isfinite); README: a bad oom_timeout is
    VMError(EINVAL)."""
    e = _assert_documented(lambda: rumpvm.Kernel(oom_timeout=10**400).close())
    assert isinstance(e, VMError) and e.errno == errno.EINVAL


def test_bug_swapfile_with_nul_truncates_the_path(tmp_path) -> None:
    """Kernel(swap=..., swapfile="<dir>/data\\x00.swap") opens "<dir>/data" (the
    C layer stops at the NUL): an existing regular file named by the prefix
    is made 0600 and truncated to the swap size, and used as swap.  A path
    with a NUL must be refused (TypeError or VMError(EINVAL), as os.open
    refuses it with ValueError) and nothing touched."""
    victim = tmp_path / "data"
    victim.write_bytes(b"precious")
    try:
        rumpvm.Kernel(swap="64K", swapfile=str(victim) + "\x00.swap").close()
    except (TypeError, VMError):
        pass
    assert victim.read_bytes() == b"precious", "the file named by the path's prefix was truncated"


def test_bug_failed_cow_write_leaves_a_shadow() -> None:
    """A copy-on-write write that runs out of memory part-way through its
    fault fails with OutOfMemory(.written == 0) but leaves its first steps
    behind: the entry has been moved onto a new shadow object (maps() shows
    the new object and needs_copy cleared; k.objects() has one more).  The
    fault checks for a free frame before shadowing, but here the backing
    page is on swap: the page-in takes the last free frame and the copy-up
    then finds none.  README: a failed call changes nothing."""
    with rumpvm.Kernel(memlimit="320K", swap="256K", oom_timeout=0.2) as k:
        p = k.spawn()
        a = p.mmap(4 * P)
        p.write(a, b"a" * (4 * P))
        p.fork()  # the region is copy-on-write in both
        q = k.spawn()
        b = q.mmap(200 * P)
        for i in range(122):  # p's pages go to swap, swap fills, a few frames stay free
            q.write(b + i * P, b"z" * P)
        before = (p.maps(), k.objects())
        try:
            p.write(a, b"x")
        except OutOfMemory as e:
            assert e.written == 0
            after = (p.maps(), k.objects())
            assert [(o.id, o.shadow) for o in after[1]] == [(o.id, o.shadow) for o in before[1]], \
                "a failed write left a new shadow object"
            assert after[0] == before[0], "a failed write changed the map"
        else:
            assert p.read(a, 1) == b"x"
        k.check()


def test_bug_failed_mlock_clips_and_shadows() -> None:
    """mlock of copy-on-write memory whose pages are on swap, with swap
    full, fails with OutOfMemory after it has clipped the entry at the end
    of the range and moved the range onto a new shadow object (needs_copy
    cleared): the reservation counted one frame per page, but each page
    needs a page-in frame and a copy frame.  README: mlock reserves its
    frames first and a failed call changes nothing.  (Found by
    APIFuzzTight; this is its sequence.)"""
    pattern = _pattern
    with rumpvm.Kernel(memlimit="320K", swap="256K", oom_timeout=0.2) as k:
        k.maxslp = 0
        o = k.create_object(4 * P)
        k.object_write(o.id, 0, pattern(4 * P, 99))
        ps = []
        for i in range(2):
            p = k.spawn(name=f"fz{i}")
            a = p.mmap(4 * P, flags=ANON | MAP_FIXED, addr=BASE + 8 * i * P)
            p.write(a, pattern(4 * P, i))
            s = p.mmap(4 * P, flags=MAP_SHARED | MAP_FIXED, addr=BASE + (8 * i + 4) * P, obj=o)
            p.write(s + i * P, pattern(P, 10 + i))
            b = p.mmap(52 * P)
            p.write(b, pattern(52 * P, 20 + i))
            ps.append((p, b))
        ps[0][0].mlock(BASE + 5 * P, 3 * P)
        child = ps[1][0].fork()
        b = ps[1][1]
        before = (child.maps(), [(x.id, x.shadow) for x in k.objects()], child.peek(b, 52 * P))
        try:
            child.mlock(b, 9 * P)
        except OutOfMemory:
            after = (child.maps(), [(x.id, x.shadow) for x in k.objects()], child.peek(b, 52 * P))
            assert after[0] == before[0], "a failed mlock changed the map"
            assert after[1] == before[1], "a failed mlock left a new shadow object"
            assert after[2] == before[2]
        else:
            assert all(e.wired for e in child.maps() if b <= e.start < b + 9 * P)
        k.check()
        k.detach_object(o)


@pytest.mark.parametrize("call", ["object_peek", "peek"])
def test_bug_peek_result_copy_raises_memoryerror(kernel, call) -> None:
    """k.object_peek / p.peek of a large range: the zeroed result buffer is
    had through `_buffer` (MemoryError -> OutOfMemory), but the final
    `bytes(out)` copies it once more, unguarded: when the host has room for
    one copy and not two, MemoryError escapes (found as
    k.object_peek(1, 0x80000000, 0xffffffff) by APIFuzzTight under the 8 GiB
    guard; without a guard a peek of n bytes costs 2n of host memory)."""
    n = 1 << 30
    p = kernel.spawn()
    a = p.mmap(n)
    fn = (lambda: kernel.object_peek(1, 0, n)) if call == "object_peek" else (lambda: p.peek(a, n))
    with host_memory_guard(extra=n + (n >> 1)):  # room for one n-byte buffer, not two
        e = _assert_documented(fn)
    assert e is None or isinstance(e, OutOfMemory)
