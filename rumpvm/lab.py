"""The lab: memory-limit experiments over page-access traces.

What it owns
  * traces — a trace is a list of page numbers (ints >= 0): generators
    (`trace_seq`, `trace_random`, `trace_zipf`, `trace_hotcold`,
    `trace_shift`) and `read_trace` for files (one page number per line, or
    libCacheSim-style csv/txt with an `obj_id` column);
  * `run_trace` — replay a trace through a real kernel, one 8-byte write per
    access, with exactly `capacity` page frames for the trace's pages;
  * reference simulations in pure Python: `lru_faults` (exact LRU) and
    `opt_faults` (Belady's OPT, the lower bound for any demand-paging policy);
  * `sweep` (capacities x policies, plus OPT), `format_table`, `plot`, and the
    `rumpvm lab` subcommand (`add_cli`).

It uses only the public kernel API, plus `k.pagedaemon.set_knobs`/`policy`,
`k.stats()` and `k.physmem.resident` (read-only) to size the limit.

Invariants of `run_trace` (what makes its fault counts comparable with a
cache simulator of `capacity` slots):
  * capacity — the limit is set after boot, once every kernel allocation the
    run will ever need exists (u-area, pool frames for the map entry and the
    region's object), to `resident + (capacity + PDRESERVE) pages`, so user
    faults can hold exactly `capacity` frames (PDRESERVE frames are for the
    pagedaemon only).  Pool frames the pagedaemon could drain are subtracted:
    its first scan frees them instead of a user page.  Tiny capacities would
    fall under the kernel's minimum limit: a wired (mlock'd) pad region makes
    up the difference, and wired pages are never paged.
  * demand paging, one victim at a time — `freemin=0, freetarg=1`: the daemon
    runs only when an allocation found no frame, and frees exactly one page
    while the faulting thread sleeps (no read-ahead, no asynchronous
    eviction racing the trace).
  * a miss is an access that needed a zero-fill (first touch) or a page-in;
    every access is a write, so evicted pages are dirty and go to swap, and
    the fault count is the delta of `zerofills + pageins` (one per miss: a
    page-in retries the fault, which then finds the page resident).
  * the region is MAP_SHARED|MAP_ANON, so its object exists from mmap on: no
    object allocation on the first write that could move the limit.

The `random` kernel policy is seeded from the OS, so its fault counts vary
from run to run; every other result is deterministic for a given trace.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import os
import random
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TextIO

from .constants import MAP_ANON, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE
from .errors import VMError
from .kernel import Kernel
from .physmem import MIN_LIMIT, PDRESERVE_PAGES
from .proc import Proc

Trace = list[int]

POLICY_NAMES = ("clock", "lru", "fifo", "random")
GENERATORS = ("seq", "random", "zipf", "hotcold", "shift")

# ---------------------------------------------------------------------------
# traces


def trace_seq(length: int, pages: int) -> Trace:
    """A sequential loop over `pages` pages: LRU's and FIFO's worst case
    whenever the capacity is below `pages`."""
    _check_gen(length, pages)
    return [i % pages for i in range(length)]


def trace_random(length: int, pages: int, seed: int = 0) -> Trace:
    """Uniformly random pages: no locality, every policy is about equal."""
    _check_gen(length, pages)
    rng = random.Random(seed)
    return [rng.randrange(pages) for _ in range(length)]


def trace_zipf(length: int, pages: int, alpha: float = 1.0, seed: int = 0) -> Trace:
    """Zipf-like popularity: the page of rank r is drawn with weight
    1/r**alpha.  Ranks are scattered over the page numbers (a seeded
    permutation), so hot pages are not all neighbours."""
    _check_gen(length, pages)
    rng = random.Random(seed)
    order = list(range(pages))
    rng.shuffle(order)
    cum: list[float] = []
    total = 0.0
    for r in range(1, pages + 1):
        total += 1.0 / r ** alpha
        cum.append(total)
    return [order[i] for i in rng.choices(range(pages), cum_weights=cum, k=length)]


def trace_hotcold(length: int, pages: int, hot_fraction: float = 0.1, hot_prob: float = 0.9,
                  seed: int = 0) -> Trace:
    """Two-level locality: `hot_prob` of the accesses go to the first
    `hot_fraction` of the pages, the rest uniformly to the others."""
    _check_gen(length, pages)
    rng = random.Random(seed)
    hot = max(1, min(pages, round(pages * hot_fraction)))
    cold = pages - hot
    out: Trace = []
    for _ in range(length):
        if cold == 0 or rng.random() < hot_prob:
            out.append(rng.randrange(hot))
        else:
            out.append(hot + rng.randrange(cold))
    return out


def trace_shift(length: int, pages: int, phases: int = 4, wss: int | None = None,
                seed: int = 0) -> Trace:
    """Working-set shift: `phases` equal phases, each drawing uniformly from
    a window of `wss` pages (default pages // 4); the window moves by half
    its size per phase, so consecutive working sets overlap by half."""
    _check_gen(length, pages)
    if phases < 1:
        raise ValueError("phases must be >= 1")
    w = max(1, min(pages, wss if wss is not None else pages // 4))
    rng = random.Random(seed)
    step = max(1, w // 2)
    out: Trace = []
    for ph in range(phases):
        start = (ph * step) % max(1, pages - w + 1)
        n = length // phases + (1 if ph < length % phases else 0)
        out.extend(start + rng.randrange(w) for _ in range(n))
    return out


def _check_gen(length: int, pages: int) -> None:
    if length < 0 or pages < 1:
        raise ValueError(f"need length >= 0 and pages >= 1, got length={length} pages={pages}")


def make_trace(kind: str, length: int, pages: int, seed: int = 0) -> Trace:
    """A generated trace by name (one of GENERATORS)."""
    if kind == "seq":
        return trace_seq(length, pages)
    if kind == "random":
        return trace_random(length, pages, seed)
    if kind == "zipf":
        return trace_zipf(length, pages, seed=seed)
    if kind == "hotcold":
        return trace_hotcold(length, pages, seed=seed)
    if kind == "shift":
        return trace_shift(length, pages, seed=seed)
    raise ValueError(f"unknown trace kind {kind!r}; one of {', '.join(GENERATORS)}")


def _header_column(path: str | os.PathLike[str], names: list[str], column: str | None) -> int:
    """The index of the page column in a header: `column` by name, else a
    usual name, else the only column (ValueError if none fits)."""
    want = column.lower() if column is not None else None
    for cand in [want] if want else ["obj_id", "objid", "page", "obj", "id", "key", "lba", "addr"]:
        if cand in names:
            return names.index(cand)
    if want is not None:
        raise ValueError(f"{path}: no column {column!r} in header {names}")
    if len(names) == 1:
        return 0
    raise ValueError(f"{path}: cannot tell which column holds the page; header {names}: pass column=")


def read_trace(path: str | os.PathLike[str], column: int | str | None = None,
               compact: bool = True) -> Trace:
    """Read a trace file.

    Formats: one page number per line (libCacheSim "txt"); or csv with a
    header naming an `obj_id` column (libCacheSim "csv"), or any csv/whitespace
    separated columns with `column` (index or header name) saying which one
    holds the page.  Blank lines and lines starting with `#` are skipped.
    Numbers may be decimal or 0x-hex.

    With `compact` (the default) page numbers are renamed 0, 1, 2, ... in
    order of first appearance: fault counts of every policy here depend only
    on the order of accesses, and a dense range keeps the mapped region small
    even for traces of raw block or object ids.
    """
    with open(path, newline="") as f:
        text = f.read()
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        return []
    sep = "," if "," in lines[0] else None
    col: int | None = column if isinstance(column, int) else None
    if col is not None and col < 0:
        raise ValueError(f"{path}: column {col} is negative")
    first = _split(lines[0], sep)
    if not _is_int(first[0] if col is None else first[min(col, len(first) - 1)]):
        # A header line: an integer column stands; a name is looked up.
        if col is None:
            col = _header_column(path, [h.strip().lower() for h in first], column if isinstance(column, str) else None)
        lines = lines[1:]
    elif isinstance(column, str):
        raise ValueError(f"{path}: column {column!r} given by name but the file has no header")
    if col is None:
        col = 1 if len(first) >= 3 and sep == "," else 0  # libCacheSim csv: time,obj_id,size
    out: Trace = []
    for n, ln in enumerate(lines, 1):
        fields_ = _split(ln, sep)
        try:
            v = int(fields_[col], 0)
        except (IndexError, ValueError):
            raise ValueError(f"{path}: bad line {n}: {ln!r}") from None
        if v < 0:
            raise ValueError(f"{path}: negative page number on line {n}")
        out.append(v)
    return compact_trace(out) if compact else out


def _split(line: str, sep: str | None) -> list[str]:
    return [s.strip() for s in line.split(sep)]


def _is_int(s: str) -> bool:
    try:
        int(s, 0)
        return True
    except ValueError:
        return False


def compact_trace(trace: Iterable[int]) -> Trace:
    """Rename pages 0, 1, 2, ... in order of first appearance."""
    names: dict[int, int] = {}
    return [names.setdefault(p, len(names)) for p in trace]


def write_trace(trace: Iterable[int], path: str | os.PathLike[str]) -> None:
    """Write one page number per line (readable by `read_trace` and by
    libCacheSim's txt reader)."""
    with open(path, "w") as f:
        f.writelines(f"{p}\n" for p in trace)


# ---------------------------------------------------------------------------
# reference simulations


def lru_faults(trace: Sequence[int], capacity: int) -> int:
    """Misses of exact LRU with `capacity` slots (an OrderedDict: the head is
    the least recently used)."""
    return _queue_faults(trace, capacity, refresh_on_hit=True)


def fifo_faults(trace: Sequence[int], capacity: int) -> int:
    """Misses of FIFO (evict the page resident longest; hits change nothing)."""
    return _queue_faults(trace, capacity, refresh_on_hit=False)


def _queue_faults(trace: Sequence[int], capacity: int, refresh_on_hit: bool) -> int:
    """Misses of a queue evicting its head; LRU moves a hit to the tail."""
    _check_cap(capacity)
    cache: OrderedDict[int, None] = OrderedDict()
    faults = 0
    for p in trace:
        if p in cache:
            if refresh_on_hit:
                cache.move_to_end(p)
            continue
        faults += 1
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[p] = None
    return faults


def opt_faults(trace: Sequence[int], capacity: int) -> int:
    """Misses of Belady's OPT: on a miss with all slots full, evict the
    resident page whose next use is farthest in the future (or never).

    Next uses are precomputed backwards; a max-heap keyed by next use holds
    one entry per (page, next use) and stale entries — of pages evicted or
    used again since — are skipped when popped.  O(n log n)."""
    _check_cap(capacity)
    n = len(trace)
    never = n  # beyond every real index
    nxt = [never] * n
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = last.get(trace[i], never)
        last[trace[i]] = i
    resident: dict[int, int] = {}  # page -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, page)
    faults = 0
    for i, p in enumerate(trace):
        if p not in resident:
            faults += 1
            if len(resident) >= capacity:
                while True:
                    neg, victim = heapq.heappop(heap)
                    if resident.get(victim) == -neg:
                        del resident[victim]
                        break
        resident[p] = nxt[i]
        heapq.heappush(heap, (-nxt[i], p))
    return faults


def _check_cap(capacity: int) -> None:
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1 page, got {capacity}")


# ---------------------------------------------------------------------------
# kernel runs


@dataclass
class TraceResult:
    """One trace through one policy at one capacity.

    For simulated rows (`policy` "opt") only `faults` is meaningful; the
    kernel counters are None."""

    policy: str
    capacity: int
    accesses: int
    faults: int
    pageins: int | None = None
    pageouts: int | None = None
    zerofills: int | None = None
    seconds: float | None = None
    max_resident: int | None = None  # max user pages resident (track_resident=True)
    misses: list[bool] | None = field(default=None, repr=False)  # per access (record=True)

    @property
    def miss_ratio(self) -> float:
        return self.faults / self.accesses if self.accesses else 0.0


def run_trace(trace: Sequence[int], capacity_pages: int, policy: str = "clock", *,
              track_resident: bool = False, record: bool = False, check: bool = False,
              oom_timeout: float = 10.0) -> TraceResult:
    """Replay `trace` in a fresh kernel whose memory limit leaves exactly
    `capacity_pages` frames for the trace's pages, under `policy`.

    Each access is an 8-byte write to its page.  `track_resident` samples the
    region's resident pages after every access (max in `max_resident`);
    `record` keeps a per-access miss list.  Both are slower (a counter
    snapshot per access); the totals are exact either way.  `check` runs
    `k.check()` (the kernel's consistency checks) after the replay.
    """
    _check_cap(capacity_pages)
    if policy not in POLICY_NAMES:
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICY_NAMES)}")
    trace = list(trace)
    if any(p < 0 for p in trace):
        raise ValueError("page numbers must be >= 0")
    npages = (max(trace) + 1) if trace else 1
    distinct = len(set(trace))
    # Every distinct page may be on swap at once, plus slack: a re-dirtied
    # page frees its old slot only when it is written out again.
    swap_pages = 2 * distinct + 256
    # The wired pad may need up to the kernel's minimum limit; allow it.
    k = Kernel(memlimit="unlimited", swap=swap_pages * PAGE_SIZE, policy=policy,
               oom_timeout=oom_timeout, wired_limit=MIN_LIMIT + (64 << 20))
    with k:
        p = k.spawn(name="lab")
        base = p.mmap(npages * PAGE_SIZE, flags=MAP_SHARED | MAP_ANON)
        oid = next(e.object for e in p.maps() if e.start == base)
        assert oid is not None
        _set_capacity(k, p, capacity_pages)

        def counters() -> tuple[int, int, int]:
            s = k.stats()
            return s["pageins"], s["pageouts"], s["zerofills"]

        before = counters()
        misses: list[bool] | None = [] if record else None
        max_res_box = [0]
        t0 = time.perf_counter()
        _replay(p, base, trace, k, oid, record, track_resident, misses, counters, before, max_res_box)
        seconds = time.perf_counter() - t0
        after = counters()
        if check:
            k.check()
        pageins, pageouts, zerofills = (a - b for a, b in zip(after, before))
        return TraceResult(policy, capacity_pages, len(trace), pageins + zerofills, pageins,
                           pageouts, zerofills, seconds,
                           max_res_box[0] if track_resident else None, misses)


def _replay(p: Proc, base: int, trace: list[int], k: Kernel, oid: int, record: bool,
            track_resident: bool, misses: list[bool] | None,
            counters: Callable[[], tuple[int, int, int]], before: tuple[int, int, int],
            max_res_box: list[int]) -> None:
    write = p.write
    pack = struct.Struct("<Q").pack
    if not record and not track_resident:
        for i, page in enumerate(trace):
            write(base + page * PAGE_SIZE, pack(i))
        return
    last = before
    for i, page in enumerate(trace):
        write(base + page * PAGE_SIZE, pack(i))
        if misses is not None:
            now = counters()
            misses.append(now[0] + now[2] > last[0] + last[2])
            last = now
        if track_resident:
            max_res_box[0] = max(max_res_box[0], k.object_info(oid).resident)


def _set_capacity(k: Kernel, p: Proc, capacity: int) -> None:
    """Set the limit so user faults get exactly `capacity` frames (see the
    module docstring), then the demand-paging knobs."""
    res_pages = _kernel_pages(k)
    short = MIN_LIMIT // PAGE_SIZE - (res_pages + capacity + PDRESERVE_PAGES)
    if short > 0:
        # Below the kernel's minimum limit: pin the difference in a wired
        # pad (mlock faults it in; wired pages are on no paging queue).
        pad = p.mmap(short * PAGE_SIZE, flags=MAP_PRIVATE | MAP_ANON)
        p.mlock(pad, short * PAGE_SIZE)
        res_pages = _kernel_pages(k)
    k.memlimit = (res_pages + capacity + PDRESERVE_PAGES) * PAGE_SIZE
    # After the limit: a limit change re-autotunes untuned knobs, and
    # set_knobs checks freetarg against the limit in force.
    k.pagedaemon.set_knobs(freemin=0, freetarg=1)


def _kernel_pages(k: Kernel) -> int:
    """Resident pages that will stay put during the run: everything resident
    now (no trace page is yet) minus the pool frames the pagedaemon's first
    scan would drain (they become room for user pages then)."""
    drainable = 0
    for pool in k.pools():
        perpage = PAGE_SIZE // pool.size
        drainable += pool.npages - -(-pool.inuse // perpage)
    resident = k.physmem.resident
    return -(-resident // PAGE_SIZE) - drainable


# ---------------------------------------------------------------------------
# sweeps, tables, plots


def sweep(trace: Sequence[int], capacities: Iterable[int], policies: Iterable[str] = POLICY_NAMES,
          opt: bool = True, progress: TextIO | None = None) -> list[TraceResult]:
    """Run every (capacity, policy) pair, plus an OPT row per capacity."""
    trace = list(trace)
    rows: list[TraceResult] = []
    for cap in capacities:
        if opt:
            rows.append(TraceResult("opt", cap, len(trace), opt_faults(trace, cap)))
        for pol in policies:
            r = run_trace(trace, cap, pol)
            if progress is not None:
                print(f"  {pol:>6} @ {cap:5} pages: {r.faults} faults ({r.seconds:.2f}s)", file=progress)
            rows.append(r)
    return rows


def _policies_in(rows: Sequence[TraceResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r.policy, None)
    return sorted(seen, key=lambda p: p != "opt")  # OPT first, then as run


def _align(table: list[list[str]]) -> str:
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(rows: Sequence[TraceResult], detail: bool = False) -> str:
    """Plain aligned text.  Default: faults (and miss ratio) per capacity,
    one column per policy, OPT first.  `detail`: one line per run with every
    counter."""
    if not rows:
        return "(no results)"
    if detail:
        table = [["capacity", "policy", "accesses", "faults", "miss%", "pageins", "pageouts",
                  "zerofills", "seconds"]]
        for r in rows:
            def opt_(v: int | float | None, fmt: str = "{}") -> str:
                return "-" if v is None else fmt.format(v)
            table.append([str(r.capacity), r.policy, str(r.accesses), str(r.faults),
                          f"{100 * r.miss_ratio:.1f}", opt_(r.pageins), opt_(r.pageouts),
                          opt_(r.zerofills), opt_(r.seconds, "{:.3f}")])
        return _align(table)
    pols = _policies_in(rows)
    caps = sorted({r.capacity for r in rows})
    by = {(r.capacity, r.policy): r for r in rows}
    table = [["capacity", *pols]]
    for cap in caps:
        line = [str(cap)]
        for pol in pols:
            got = by.get((cap, pol))
            line.append("-" if got is None else f"{got.faults} ({100 * got.miss_ratio:.1f}%)")
        table.append(line)
    return _align(table)


def write_csv(rows: Sequence[TraceResult], path: str | os.PathLike[str]) -> None:
    names = ["capacity", "policy", "accesses", "faults", "pageins", "pageouts", "zerofills", "seconds"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})


def plot(rows: Sequence[TraceResult], path: str | os.PathLike[str], title: str = "") -> None:
    """Faults vs capacity, one line per policy; OPT as a dashed black line."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for pol in _policies_in(rows):
            pts = sorted((r.capacity, r.faults) for r in rows if r.policy == pol)
            xs, ys = [x for x, _ in pts], [y for _, y in pts]
            if pol == "opt":
                ax.plot(xs, ys, "k--", linewidth=2, label="OPT (Belady)")
            else:
                ax.plot(xs, ys, marker="o", label=pol)
        ax.set_xlabel("capacity (pages)")
        ax.set_ylabel("page faults")
        ax.set_title(title or "faults vs memory limit")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------
# the `rumpvm lab` subcommand


def _int_list(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {s!r}") from None
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"need positive integers, got {s!r}")
    return out


def _policy_list(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in POLICY_NAMES]
    if not out or bad:
        raise argparse.ArgumentTypeError(f"policies are {', '.join(POLICY_NAMES)}; got {s!r}")
    return out


def cmd_lab(args: argparse.Namespace) -> int:
    if args.trace in GENERATORS:
        trace = make_trace(args.trace, args.length, args.pages, args.seed)
        desc = f"{args.trace} trace, {args.length} accesses over {args.pages} pages"
    else:
        try:
            trace = read_trace(args.trace, column=args.column)
        except (OSError, ValueError) as e:
            print(f"rumpvm lab: {e}", file=sys.stderr)
            return 2
        if args.length and args.length < len(trace) and args.length_given:
            trace = trace[:args.length]
        desc = f"{os.path.basename(args.trace)}: {len(trace)} accesses, {len(set(trace))} pages"
    if not trace:
        print("rumpvm lab: empty trace", file=sys.stderr)
        return 2
    print(f"# {desc}; {len(set(trace))} distinct pages")
    rows = sweep(trace, args.capacities, args.policies, opt=not args.no_opt,
                 progress=sys.stderr if args.verbose_lab else None)
    print(format_table(rows))
    if args.detail:
        print()
        print(format_table(rows, detail=True))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"# wrote {args.csv}")
    if args.plot:
        plot(rows, args.plot, title=desc)
        print(f"# wrote {args.plot}")
    return 0


class _LengthAction(argparse.Action):
    """Remember that --length was given (it truncates file traces only then)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.length_given = True


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `rumpvm lab`: sweep a trace over capacities and policies."""
    lab = subparsers.add_parser(
        "lab", help="memory-limit experiments: faults per policy over a sweep of limits",
        description="Replay a page trace under a sweep of memory limits (capacity in pages"
                    " for the trace's pages) and replacement policies; print faults per"
                    " policy next to Belady's OPT, optionally plot them.")
    lab.add_argument("--trace", default="zipf", metavar="{seq,random,zipf,hotcold,shift,FILE}",
                     help="a generated trace, or a file with one page number per line"
                          " (or libCacheSim csv with an obj_id column); default zipf")
    lab.add_argument("--length", type=int, default=4000, action=_LengthAction,
                     help="accesses in a generated trace (default 4000); truncates a file trace")
    lab.add_argument("--pages", type=int, default=320,
                     help="page range of a generated trace (default 320)")
    lab.add_argument("--seed", type=int, default=0, help="seed of the generated trace (default 0)")
    lab.add_argument("--column", default=None,
                     help="trace file column holding the page (index or header name)")
    lab.add_argument("--capacities", type=_int_list, default=[64, 128, 256],
                     help="comma-separated capacities in pages (default 64,128,256)")
    lab.add_argument("--policies", type=_policy_list, default=list(POLICY_NAMES),
                     help="comma-separated policies (default clock,lru,fifo,random)")
    lab.add_argument("--no-opt", action="store_true", help="leave out the OPT rows")
    lab.add_argument("--detail", action="store_true", help="also print every counter per run")
    lab.add_argument("--csv", default=None, metavar="PATH", help="write the rows as csv")
    lab.add_argument("--plot", default=None, metavar="PNG", help="write a plot of faults vs capacity")
    lab.add_argument("--progress", dest="verbose_lab", action="store_true",
                     help="report each run on stderr")
    lab.set_defaults(fn=_cmd_lab_checked, length_given=False)


def _cmd_lab_checked(args: argparse.Namespace) -> int:
    if args.length < 0 or args.pages < 1:
        print("rumpvm lab: need --length >= 0 and --pages >= 1", file=sys.stderr)
        return 2
    if isinstance(args.column, str) and args.column.lstrip("-").isdigit():
        args.column = int(args.column)
    try:
        return cmd_lab(args)
    except VMError as e:
        print(f"rumpvm lab: {e}", file=sys.stderr)
        return 1
