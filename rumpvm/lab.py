"""The lab: memory-limit experiments (`rumpvm experiment`, `lab.run`,
`lab.sweep`).

What it owns
  * sources — `load_source` turns a trace file (any format `rumpvm.trace`
    reads), an in-memory sequence of `page << 1 | is_write` values, or a
    built-in workload name (`rumpvm.workloads`) into a `Source`;
  * points — one (policy, limit, repeat) of a source, run in a fresh kernel
    (`run`), many at once in worker processes (`sweep`), each giving a
    `Result`; "opt" is Belady's OPT, computed offline (`opt_faults`);
  * outputs — results.csv, results.json (rows plus provenance),
    faults.png and other plot formats, the terminal table, and the `--check`
    comparison with libCacheSim and the one-pass LRU miss-ratio curve;
  * the `rumpvm experiment` subcommand (`add_cli`).

It uses the public kernel API, plus `k.pagedaemon.set_knobs` and
`wait_idle`, `k.pools()` and `k.physmem.resident` (read-only) to size a
trace's limit.

Invariants of a trace point (what makes its fault counts equal a cache
simulator's with `frames` slots, for every policy the two share):
  * frames — the trace's pages are compacted to 0..distinct-1 and live in one
    MAP_SHARED|MAP_ANON region (its object exists from mmap on, so the first
    access allocates no bookkeeping).  Once every kernel allocation the run
    will need exists, the limit is set to `resident + (frames + PDRESERVE)
    pages`, less the pool frames the pagedaemon's first scan would drain:
    user faults can hold exactly `frames` frames.  Below the kernel's
    minimum limit a wired (mlock'd) pad makes up the difference.
  * demand paging, one victim at a time — `freemin=0, freetarg=1`: a page
    is freed only when a fault finds no frame, exactly one, while the
    faulting thread waits; the daemon's wake-up by the limit change is
    served before the replay starts.  So a run is deterministic (the random
    policy is seeded by the point's seed).
  * no read-ahead — the region is MADV_RANDOM, so a page-in reads (and
    makes room for) exactly the page that faulted.
  * a miss is an access that needed a zero-fill or a page-in: faults =
    delta of `zerofills + pageins`.  Replay (`Proc.replay`) dirties written
    pages; a read of a never-written page gets a clean zero page, dropped
    without a write when evicted and zero-filled again on its next read.
A workload point instead runs real processes under the kernel's memory
limit itself, with the pagedaemon's default (asynchronous) knobs: its
counts vary from run to run, which `repeat` measures.

Parallel sweeps run each point in a worker process of a forkserver pool
(never a plain fork: the parent may have a kernel with a pagedaemon thread).
Workers ignore SIGINT; the parent, on Ctrl-C, cancels what has not started
and terminates the workers.  No lock: results reach the parent's thread
through futures.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import errno
import hashlib
import heapq
import json
import multiprocessing
import os
import shlex
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import mrc, workloads
from . import trace as tracefile
from .constants import MADV_RANDOM, MAP_ANON, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE
from .errors import VMError
from .kernel import Kernel
from .param import format_size, parse_size
from .physmem import MIN_LIMIT, PDRESERVE_PAGES
from .policy import POLICIES
from .proc import Proc

OPT = "opt"
CSV_FIELDS = ("source", "policy", "limit", "frames", "accesses", "faults", "miss_ratio", "zerofills",
              "pageins", "pageouts", "seconds", "peak_resident", "seed", "repeat")
# Our policy names -> libCacheSim classes that implement the same algorithm.
# (libCacheSim's Clock is one-queue second chance, not our two-queue clock;
# its Random draws from its own generator.)
LIBCACHESIM = {"lru": "LRU", "fifo": "FIFO", OPT: "Belady", "2q": "TwoQ", "sieve": "Sieve",
               "s3fifo": "S3FIFO"}
EXACT = ("lru", "fifo", OPT)  # --check fails unless these agree exactly
AUTO_POINTS = 9  # `auto`: footprint / 16 .. footprint in steps of sqrt(2)
WIDE_RANGE = 8  # limits spanning this factor or more get a log x axis
REPLAY_CHUNK = 65536  # accesses per Proc.replay call of a trace point
EXIT_INTERRUPTED = 130


def policy_names() -> list[str]:
    """Every policy a sweep can run: the kernel's, then OPT."""
    return [*POLICIES, OPT]


def default_policies(src: Source) -> list[str]:
    """Every policy that applies to `src` (OPT only to traces)."""
    return [p for p in policy_names() if src.kind == "trace" or p != OPT]


def sort_rows(rows: Iterable[Result], policies: Sequence[str]) -> list[Result]:
    """Rows by policy (in `policies` order), limit, repeat."""
    order = {p: i for i, p in enumerate(policies)}
    return sorted(rows, key=lambda r: (order[r.policy], r.limit, r.repeat))


# ---------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class Source:
    """What an experiment runs: a trace (its accesses compacted to pages
    0..distinct-1) or a workload (its name and checked knobs)."""

    name: str
    kind: str  # "trace" or "workload"
    page_size: int
    distinct: int  # distinct pages (a workload: its footprint in pages)
    sha256: str  # the trace file's (or accesses') hash; a workload's: of its name and knobs
    accesses: array[int] | None = field(default=None, repr=False)  # traces only
    params: dict[str, float] = field(default_factory=dict)  # workloads only
    info: dict[str, Any] = field(default_factory=dict)  # provenance for results.json

    @property
    def footprint(self) -> int:
        """Bytes of distinct pages the source touches."""
        return self.distinct * self.page_size


def load_source(source: Source | str | os.PathLike[str] | Sequence[int], *,
                params: Sequence[str] | dict[str, object] | None = None, page_shift: int = 12,
                with_fetches: bool = False, column: int | str | None = None) -> Source:
    """A Source from a workload name (with `params`, `k=v` strings or a
    dict), a trace file (read by `rumpvm.trace.open_trace` with the other
    options), or a sequence of `page << 1 | is_write` values.  A Source is
    returned as is.  ValueError or OSError when it cannot be read."""
    if isinstance(source, Source):
        return source
    if isinstance(source, str) and source in workloads.WORKLOADS:
        wl = workloads.WORKLOADS[source]
        knobs = workloads.parse_params(source, params or [])
        digest = hashlib.sha256(json.dumps({"workload": source, "params": knobs}, sort_keys=True).encode())
        return Source(source, "workload", PAGE_SIZE, -(-wl.footprint(knobs) // PAGE_SIZE), digest.hexdigest(),
                      params=knobs, info={"params": knobs, "summary": wl.summary})
    if params:
        raise ValueError("--param sets a workload's knobs; this source is a trace")
    if isinstance(source, (str, os.PathLike)):
        tr = tracefile.open_trace(os.fspath(source), page_shift=page_shift, with_fetches=with_fetches,
                                  column=column)
        ti = tr.info()
        acc = tracefile.load(tr, compacted=True)
        info = {"format": ti.format, "reads": ti.reads, "writes": ti.writes, "page_shift": ti.page_shift,
                "with_fetches": with_fetches}
        return Source(os.fspath(source), "trace", 1 << ti.page_shift, ti.distinct, ti.sha256, acc, info=info)
    try:
        raw = array("Q", source)
    except OverflowError:
        raise ValueError("an access is page << 1 | is_write: no negative values") from None
    acc = array("Q")
    for chunk in tracefile.compact([raw]):
        acc.extend(chunk)
    distinct = (max(acc) >> 1) + 1 if acc else 0
    return Source("<memory>", "trace", PAGE_SIZE, distinct, hashlib.sha256(raw.tobytes()).hexdigest(), acc,
                  info={"format": "memory"})


def auto_limits(src: Source) -> list[int]:
    """`auto`: AUTO_POINTS limits from 1/16 of the footprint to all of it,
    whole pages, at least one frame (a trace) or the kernel's minimum (a
    workload)."""
    unit = src.page_size
    low = unit if src.kind == "trace" else MIN_LIMIT
    out = {max(low, round(src.distinct * 2 ** (-i / 2)) * unit) for i in range(AUTO_POINTS)}
    return sorted(out)


def parse_limits(spec: str | Sequence[int | str]) -> list[int] | None:
    """Limits in bytes from `2M,4M,...` (or a list of sizes); None for
    `auto`.  ValueError unless every limit is a positive size."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    if [str(x).strip().lower() for x in items] == ["auto"]:
        return None
    out = []
    for x in items:
        if isinstance(x, str) and not x.strip():
            continue
        try:
            n = parse_size(x.strip() if isinstance(x, str) else x, "limit")
        except (VMError, TypeError):
            raise ValueError(f"bad limit {x!r}: a size in bytes or with K/M/G, or 'auto'") from None
        if n <= 0:
            raise ValueError(f"bad limit {x!r}: must be positive")
        out.append(n)
    if not out:
        raise ValueError("no limits given")
    return sorted(set(out))


def _frames(src: Source, limit: int) -> int:
    """Frames a point gets: a trace's limit covers only its pages; a
    workload's is the whole kernel's (ValueError below what a kernel needs)."""
    if src.kind == "workload":
        if limit < MIN_LIMIT:
            raise ValueError(f"limit {format_size(limit)} is below the kernel's minimum of"
                             f" {format_size(MIN_LIMIT)}")
        return limit // PAGE_SIZE
    if limit < src.page_size:
        raise ValueError(f"limit {limit} is less than one {src.page_size}-byte page of the trace")
    return limit // src.page_size


def _check_policies(policies: Iterable[str], src: Source) -> list[str]:
    """`policies` checked against the registry (and OPT for traces)."""
    out = list(dict.fromkeys(policies))
    known = policy_names()
    bad = [p for p in out if p not in known]
    if bad or not out:
        raise ValueError(f"unknown policy {', '.join(bad) or '(none)'}; policies are {', '.join(known)}")
    if OPT in out and src.kind == "workload":
        raise ValueError("opt needs the whole page sequence: it is for traces, not workloads")
    return out


# ---------------------------------------------------------------------------
# results


@dataclass
class Result:
    """One point: `source` under `policy` with `limit` bytes (`frames`
    pages).  Counters are deltas of k.stats() over the run; OPT rows have
    only `faults` (and None for the kernel counters).  `peak_resident` is in
    bytes: a trace's pages resident (at most `limit`), or the whole kernel's
    resident memory for a workload, sampled between replay chunks."""

    source: str
    policy: str
    limit: int
    frames: int
    accesses: int
    faults: int
    zerofills: int | None
    pageins: int | None
    pageouts: int | None
    seconds: float
    peak_resident: int | None
    seed: int
    repeat: int

    @property
    def miss_ratio(self) -> float:
        """faults / accesses (0 for no accesses)."""
        return self.faults / self.accesses if self.accesses else 0.0

    def row(self) -> dict[str, Any]:
        """The CSV/JSON row, fields in CSV_FIELDS order."""
        d = asdict(self)
        d["miss_ratio"] = round(self.miss_ratio, 9)
        d["seconds"] = round(self.seconds, 6)
        return {k: d[k] for k in CSV_FIELDS}


@dataclass(frozen=True)
class Point:
    """The work of one Result; what is sent to a worker (the trace's
    accesses go once per worker, not with each point)."""

    source: Source  # without its accesses when sent to a worker
    policy: str
    limit: int
    frames: int
    seed: int
    repeat: int
    check: bool = False  # run k.check() after the run


def opt_faults(pages: Sequence[int], capacity: int) -> int:
    """Misses of Belady's OPT: on a miss with all slots full, evict the
    resident page whose next use is farthest in the future (or never).

    Next uses are precomputed backwards; a max-heap keyed by next use holds
    one entry per (page, next use) and stale entries — of pages evicted or
    used again since — are skipped when popped.  O(n log n)."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1 page, got {capacity}")
    n = len(pages)
    nxt = [n] * n  # n: beyond every real index (never used again)
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = last.get(pages[i], n)
        last[pages[i]] = i
    resident: dict[int, int] = {}  # page -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, page)
    faults = 0
    for i, p in enumerate(pages):
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


def _kernel(policy: str, seed: int, **kw: Any) -> Kernel:
    """A fresh kernel with `policy`, its randomness seeded by `seed`."""
    return Kernel(policy=policy, policy_seed=seed, **kw)


def _set_capacity(k: Kernel, p: Proc, frames: int) -> None:
    """Set the limit so user faults get exactly `frames` frames (see the
    module docstring), then the demand-paging knobs."""
    res_pages = _kernel_pages(k)
    short = MIN_LIMIT // PAGE_SIZE - (res_pages + frames + PDRESERVE_PAGES)
    if short > 0:
        # Below the kernel's minimum limit: pin the difference in a wired
        # pad (mlock faults it in; wired pages are on no paging queue).
        pad = p.mmap(short * PAGE_SIZE, flags=MAP_PRIVATE | MAP_ANON)
        p.mlock(pad, short * PAGE_SIZE)
        res_pages = _kernel_pages(k)
    k.memlimit = (res_pages + frames + PDRESERVE_PAGES) * PAGE_SIZE
    # After the limit: a limit change re-autotunes untuned knobs, and
    # set_knobs checks freetarg against the limit in force.
    k.pagedaemon.set_knobs(freemin=0, freetarg=1)
    # The limit change woke the daemon: let it finish before the replay, or
    # its scan may race the first direct reclaim and free a second page.
    if not k.pagedaemon.wait_idle():
        raise VMError(errno.ETIMEDOUT, "the pagedaemon did not settle after the limit was set")


def _kernel_pages(k: Kernel) -> int:
    """Resident pages that will stay put during the run: everything resident
    now (no trace page is yet) minus the pool frames the pagedaemon's first
    scan would drain (they become room for user pages then)."""
    drainable = 0
    for pool in k.pools():
        perpage = PAGE_SIZE // pool.size
        drainable += pool.npages - -(-pool.inuse // perpage)
    return -(-k.physmem.resident // PAGE_SIZE) - drainable


WINDOW_KEYS = {"zerofills": "window_zerofills", "pageins": "window_swapins", "pageouts": "window_writes"}


def _counted(pt: Point, accesses: int, faults: int, before: dict[str, int] | None,
             after: dict[str, int] | None, seconds: float, peak: int | None) -> Result:
    """A Result of `pt` from k.stats() snapshots around its run (None for OPT)."""
    def delta(key: str) -> int | None:  # host windows' (the engines') counts included
        if before is None or after is None:
            return None
        return after[key] - before[key] + after[WINDOW_KEYS[key]] - before[WINDOW_KEYS[key]]
    return Result(pt.source.name, pt.policy, pt.limit, pt.frames, accesses, faults, delta("zerofills"),
                  delta("pageins"), delta("pageouts"), seconds, peak, pt.seed, pt.repeat)


def _run_trace(pt: Point, acc: array[int]) -> Result:
    """Replay the trace in a fresh kernel with `pt.frames` frames for it."""
    src = pt.source
    t0 = time.perf_counter()
    if pt.policy == OPT:
        faults = opt_faults([v >> 1 for v in acc], pt.frames)
        return _counted(pt, len(acc), faults, None, None, time.perf_counter() - t0, None)
    # Every page may be on swap at once, plus slack: a re-dirtied page frees
    # its old slot only when it is written out again.  The wired pad may
    # need up to the kernel's minimum limit.
    with _kernel(pt.policy, pt.seed, memlimit="unlimited", swap=(2 * src.distinct + 256) * PAGE_SIZE,
                 oom_timeout=10.0, wired_limit=MIN_LIMIT + (64 << 20)) as k:
        p = k.spawn(name="trace")
        size = max(1, src.distinct) * PAGE_SIZE
        base = p.mmap(size, flags=MAP_SHARED | MAP_ANON)
        p.madvise(base, size, MADV_RANDOM)  # no read-ahead: a page-in brings in one page
        oid = next(e.object for e in p.maps() if e.start == base)
        assert oid is not None
        _set_capacity(k, p, pt.frames)
        before = k.stats()
        peak = 0
        t0 = time.perf_counter()
        for i in range(0, len(acc), REPLAY_CHUNK):
            p.replay(base, acc[i:i + REPLAY_CHUNK])
            # Resident trace pages never shrink under demand paging (each
            # fault frees one page and fills one): sampling is exact.
            peak = max(peak, k.object_info(oid).resident)
        seconds = time.perf_counter() - t0
        after = k.stats()
        if pt.check:
            k.check()
    faults = after["zerofills"] + after["pageins"] - before["zerofills"] - before["pageins"]
    return _counted(pt, len(acc), faults, before, after, seconds, peak * src.page_size)


def _run_workload(pt: Point) -> Result:
    """Run the workload in a fresh kernel whose memory limit is `pt.limit`."""
    src = pt.source
    # Swap for the whole footprint twice over (re-dirtied pages keep their
    # old slot until written again) and slack for the kernel.
    swap = 2 * src.footprint + (1 << 20)
    with _kernel(pt.policy, pt.seed, memlimit=pt.limit, swap=swap, oom_timeout=10.0) as k:
        before = k.stats()
        t0 = time.perf_counter()
        run = workloads.run_workload(k, src.name, src.params, pt.seed)
        seconds = time.perf_counter() - t0
        after = k.stats()
        if pt.check:
            k.check()
    faults = sum(after[key] - before[key] for key in ("zerofills", "pageins", "window_zerofills", "window_swapins"))
    return _counted(pt, run.accesses, faults, before, after, seconds, run.peak_resident)


def _run_point(pt: Point, acc: array[int] | None) -> Result:
    """Run one point (a trace's accesses in `acc`)."""
    if pt.source.kind == "workload":
        return _run_workload(pt)
    assert acc is not None
    return _run_trace(pt, acc)


def run(source: Source | str | os.PathLike[str] | Sequence[int], limit: int | str, policy: str = "clock", *,
        seed: int = 0, params: Sequence[str] | dict[str, object] | None = None, check: bool = False) -> Result:
    """One point in this process: `source` (see load_source) under `policy`
    with `limit` (bytes or a size string: a trace's pages, or a workload's
    kernel).  `check` runs the kernel's consistency checks after the run."""
    src = load_source(source, params=params)
    lims = parse_limits([limit])
    if lims is None:
        raise ValueError("run takes one limit, not 'auto'")
    pol = _check_policies([policy], src)[0]
    pt = Point(src, pol, lims[0], _frames(src, lims[0]), seed, 0, check)
    return _run_point(pt, src.accesses)


# -- the worker side of a parallel sweep ---------------------------------------------

_worker_accesses: array[int] | None = None


def _worker_init(accesses_file: str | None) -> None:
    """Worker start: ignore SIGINT (the parent decides what a Ctrl-C stops)
    and load the trace's accesses once."""
    global _worker_accesses
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if accesses_file is not None:
        _worker_accesses = array("Q")
        with open(accesses_file, "rb") as f:
            _worker_accesses.frombytes(f.read())


def _worker_point(pt: Point) -> Result:
    """Run one point in a worker; a kernel error comes back as a plain
    VMError naming the point (the parent must be able to unpickle it)."""
    try:
        return _run_point(pt, _worker_accesses)
    except VMError as e:
        raise VMError(e.errno or errno.EIO, f"{pt.policy} at {format_size(pt.limit)}: {e.strerror or e}") from None


def _points(src: Source, limits: Sequence[int], policies: Sequence[str], repeat: int, seed: int) -> list[Point]:
    """Every point of a sweep, largest limits first (they finish soonest);
    OPT, being exact and offline, once per limit."""
    light = replace(src, accesses=None)
    return [Point(light, pol, lim, _frames(src, lim), seed, r)
            for lim in sorted(limits, reverse=True) for pol in policies
            for r in range(1 if pol == OPT else repeat)]


def sweep(source: Source | str | os.PathLike[str] | Sequence[int], limits: str | Sequence[int | str] = "auto",
          policies: Sequence[str] | None = None, *, repeat: int = 1, seed: int = 0, jobs: int | None = None,
          params: Sequence[str] | dict[str, object] | None = None,
          on_result: Callable[[Result], None] | None = None, progress: bool = False) -> list[Result]:
    """Every (limit, policy, repeat) point of `source`, each in a fresh
    kernel; rows sorted by policy (in `policies` order), limit, repeat.

    `limits`: sizes or "auto"; `policies`: default every kernel policy and,
    for traces, opt.  `jobs`: None runs the points in this process, N in N
    worker processes.  `on_result` sees each Result as it completes (so a
    caller keeps them when a KeyboardInterrupt ends the sweep: the workers
    are then terminated and the interrupt re-raised).  `progress` shows a
    progress bar with ETA on stderr (tqdm)."""
    src = load_source(source, params=params)
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    pols = _check_policies(policies if policies is not None else default_policies(src), src)
    lims = parse_limits(limits)
    pts = _points(src, lims if lims is not None else auto_limits(src), pols, repeat, seed)
    from tqdm import tqdm

    rows: list[Result] = []
    # disable=None: tqdm draws only on a terminal.
    with tqdm(total=len(pts), unit="run", disable=None if progress else True, file=sys.stderr,
              dynamic_ncols=True) as bar:
        def done(r: Result) -> None:
            rows.append(r)
            bar.update()
            if on_result is not None:
                on_result(r)
        if jobs is None:
            for pt in pts:
                done(_run_point(pt, src.accesses))
        else:
            _sweep_pool(src, pts, jobs, done)
    return sort_rows(rows, pols)


def _sweep_pool(src: Source, pts: list[Point], jobs: int, done: Callable[[Result], None]) -> None:
    """Run `pts` in `jobs` forkserver workers, calling `done` as each ends."""
    with tempfile.TemporaryDirectory(prefix="rumpvm-experiment-") as tmp:
        acc_file = None
        if src.accesses is not None:
            acc_file = os.path.join(tmp, "accesses.bin")
            with open(acc_file, "wb") as f:
                src.accesses.tofile(f)
        ctx = multiprocessing.get_context("forkserver")
        pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(pts)) or 1, mp_context=ctx,
                                      initializer=_worker_init, initargs=(acc_file,))
        futures: list[cf.Future[Result]] = []
        try:
            futures = [pool.submit(_worker_point, pt) for pt in pts]
            for fut in cf.as_completed(futures):
                done(fut.result())
        except BaseException:
            # Ctrl-C or a failed point: nothing more is wanted.  Python 3.11
            # has no public way to stop running workers (terminate_workers
            # is 3.14), so terminate the pool's processes directly.
            for fut in futures:
                fut.cancel()
            for proc in list(pool._processes.values()):
                proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


# ---------------------------------------------------------------------------
# outputs


def _groups(rows: Sequence[Result]) -> dict[tuple[str, int], list[Result]]:
    """Rows by (policy, limit), in row order."""
    out: dict[tuple[str, int], list[Result]] = {}
    for r in rows:
        out.setdefault((r.policy, r.limit), []).append(r)
    return out


def write_csv(rows: Sequence[Result], path: str | os.PathLike[str]) -> None:
    """results.csv: one row per point (written to a temporary name and
    renamed, so a reader never sees half a file)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.row().items()})
    os.replace(tmp, path)


def provenance(src: Source, command: Sequence[str] | None = None) -> dict[str, Any]:
    """What results.json says about where its rows came from."""
    try:
        ver = version("rumpvm")
    except PackageNotFoundError:
        ver = "unknown"
    return {"rumpvm_version": ver, "source": src.name, "kind": src.kind, "sha256": src.sha256,
            "distinct_pages": src.distinct, "page_size": src.page_size,
            "accesses": len(src.accesses) if src.accesses is not None else None, **src.info,
            "command_line": shlex.join(command) if command is not None else None}


def write_json(rows: Sequence[Result], path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """results.json: `meta` (provenance and run settings) plus the rows."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        json.dump({**meta, "rows": [r.row() for r in rows]}, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def wide_range(limits: Iterable[int]) -> bool:
    """Whether limits span WIDE_RANGE or more (the plot's x axis is then log)."""
    lims = [x for x in limits if x > 0]
    return bool(lims) and max(lims) >= WIDE_RANGE * min(lims)


def plot_formats() -> list[str]:
    """File formats the plot can be written in (matplotlib's)."""
    from matplotlib.figure import Figure

    return sorted(Figure().canvas.get_supported_filetypes())


def plot(rows: Sequence[Result], path: str | os.PathLike[str], title: str = "") -> str:
    """Miss ratio vs limit, one line per policy (OPT dashed black), error
    bars (min to max) where points were repeated; the format is the file's
    extension.  Returns the x scale used: "log" for wide ranges, else
    "linear"."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fmt = Path(path).suffix.lstrip(".").lower()
    groups = _groups(rows)
    scale = "log" if wide_range(r.limit for r in rows) else "linear"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for pol in dict.fromkeys(r.policy for r in rows):
            lims = sorted(lim for (p, lim) in groups if p == pol)
            ratios = [[r.miss_ratio for r in groups[pol, lim]] for lim in lims]
            ys = [statistics.fmean(v) for v in ratios]
            err = [[y - min(v) for y, v in zip(ys, ratios)], [max(v) - y for y, v in zip(ys, ratios)]]
            style: dict[str, Any] = ({"color": "black", "linestyle": "--", "linewidth": 2,
                                      "label": "OPT (Belady)"} if pol == OPT else {"marker": "o", "label": pol})
            if any(len(v) > 1 for v in ratios):
                ax.errorbar(lims, ys, yerr=err, capsize=3, **style)
            else:
                ax.plot(lims, ys, **style)
        if scale == "log":
            ax.set_xscale("log", base=2)
        # A tick at each limit run (the default ticks fall between them).
        ticks = sorted({r.limit for r in rows})
        ax.set_xticks(ticks, [_size_tick(x) for x in ticks], rotation=30 if len(ticks) > 6 else 0)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("memory limit")
        ax.set_ylabel("miss ratio (faults / accesses)")
        ax.set_title(textwrap.fill(title or "miss ratio vs memory limit", 90), fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format=fmt)
    finally:
        plt.close(fig)
    return scale


def _size_tick(x: float) -> str:
    """An axis label for `x` bytes: 512K, 1.5M."""
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if x >= 1 << shift:
            return f"{x / (1 << shift):.3g}{suffix}"
    return f"{x:.0f}" if x > 0 else ""


def _align(table: list[list[str]]) -> str:
    """Right-aligned columns with a rule under the header."""
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def format_table(rows: Sequence[Result]) -> str:
    """Miss ratio per limit (a line) and policy (a column); with repeats,
    the mean and ± half the spread (max - min)."""
    if not rows:
        return "(no results)"
    groups = _groups(rows)
    pols = list(dict.fromkeys(r.policy for r in rows))
    table = [["limit", "frames", *pols]]
    for lim in sorted({r.limit for r in rows}):
        frames = next(r.frames for r in rows if r.limit == lim)
        line = [format_size(lim), str(frames)]
        for pol in pols:
            got = [r.miss_ratio for r in groups.get((pol, lim), [])]
            cell = "-" if not got else f"{100 * statistics.fmean(got):.2f}%"
            if len(got) > 1:
                cell += f" ±{100 * (max(got) - min(got)) / 2:.2f}"
            line.append(cell)
        table.append(line)
    return _align(table)


# ---------------------------------------------------------------------------
# --check: libCacheSim and the LRU miss-ratio curve on the same page sequence


@dataclass(frozen=True)
class CheckRow:
    """One (policy, frames) of --check: our faults next to libCacheSim's and,
    for LRU, the one-pass miss-ratio curve's."""

    policy: str
    limit: int
    frames: int
    faults: int
    libcachesim: int
    mrc: int | None

    @property
    def agrees(self) -> bool:
        """Whether every reference gives our count."""
        return self.faults == self.libcachesim and self.mrc in (None, self.faults)


def write_oracle_general(acc: array[int], path: str | os.PathLike[str]) -> None:
    """Write the pages of `acc` as a libCacheSim oracleGeneral trace: per
    request a u32 time, u64 object id (page + 1), u32 size (1) and i64 index
    of the page's next request (-1: none), which Belady needs."""
    import numpy as np

    ids = np.frombuffer(acc, dtype=np.uint64) >> np.uint64(1)
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    nxt = np.full(n, -1, dtype=np.int64)
    same = ids[order[1:]] == ids[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    rec = np.zeros(n, dtype=[("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
    rec["time"] = np.arange(n)
    rec["id"] = ids + np.uint64(1)
    rec["size"] = 1
    rec["next"] = nxt
    rec.tofile(path)


def libcachesim_run(path: str | os.PathLike[str], policy: str, frames: int) -> float:
    """The miss ratio of libCacheSim's version of `policy` (a name of
    LIBCACHESIM) with `frames` unit-size slots on the oracleGeneral trace at
    `path`, run by libCacheSim's C loop."""
    import libcachesim as lcs

    reader = lcs.TraceReader(os.fspath(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    # hashpower 16: libCacheSim's default table (2^24) costs more to set up
    # than these traces take to run.
    cache = getattr(lcs, LIBCACHESIM[policy])(cache_size=frames, hashpower=16)
    miss_ratio, _ = cache.process_trace(reader)
    return float(miss_ratio)


def libcachesim_faults(acc: array[int], frames: Sequence[int], policies: Sequence[str]) -> dict[tuple[str, int], int]:
    """Misses of libCacheSim's version of each of `policies` (names of
    LIBCACHESIM) with each of `frames` unit-size slots, on the pages of
    `acc`."""
    with tempfile.TemporaryDirectory(prefix="rumpvm-check-") as tmp:
        path = os.path.join(tmp, "trace.oracleGeneral")
        write_oracle_general(acc, path)
        return {(pol, fr): round(libcachesim_run(path, pol, fr) * len(acc)) for pol in policies for fr in frames}


def check_rows(src: Source, rows: Sequence[Result]) -> list[CheckRow]:
    """--check for the rows of a trace: each (policy, limit) whose policy
    libCacheSim shares, first repeat only, with the LRU curve for lru."""
    if src.accesses is None:
        raise ValueError("--check needs a trace (a workload has no fixed page sequence)")
    mine = [r for r in rows if r.policy in LIBCACHESIM and r.repeat == 0]
    theirs = libcachesim_faults(src.accesses, sorted({r.frames for r in mine}),
                                list(dict.fromkeys(r.policy for r in mine)))
    curve = mrc.lru_mrc([v >> 1 for v in src.accesses]) if any(r.policy == "lru" for r in mine) else None
    return [CheckRow(r.policy, r.limit, r.frames, r.faults, theirs[r.policy, r.frames],
                     curve.misses(r.frames) if curve is not None and r.policy == "lru" else None) for r in mine]


def format_check(rows: Sequence[CheckRow]) -> str:
    """The --check table (exact policies marked when they disagree)."""
    if not rows:
        return "(no policy shared with libCacheSim)"
    table = [["limit", "frames", "policy", "rumpvm", "libCacheSim", "lru-mrc", ""]]
    for c in rows:
        flag = "" if c.agrees else ("MISMATCH" if c.policy in EXACT else "differs")
        table.append([format_size(c.limit), str(c.frames), c.policy, str(c.faults), str(c.libcachesim),
                      "-" if c.mrc is None else str(c.mrc), flag])
    return _align(table)


# ---------------------------------------------------------------------------
# the `rumpvm experiment` subcommand


def _csv_list(s: str) -> list[str]:
    """Comma-separated words."""
    return [x.strip() for x in s.split(",") if x.strip()]


def _plot_paths(specs: Sequence[str], outdir: Path) -> list[Path]:
    """Extra plot files: a bare format (`pdf`) is DIR/faults.FORMAT; a path
    (relative ones inside DIR) gets the format its extension names.
    ValueError for a format matplotlib cannot write."""
    formats = plot_formats()
    out = [outdir / "faults.png"]
    for spec in specs:
        path = outdir / f"faults.{spec.lower()}" if "." not in spec and "/" not in spec else outdir / spec
        if path.suffix.lstrip(".").lower() not in formats:
            raise ValueError(f"--plot {spec}: format {path.suffix or '(none)'!r} is not one of {', '.join(formats)}")
        out.append(path)
    return list(dict.fromkeys(out))


class _RowFile:
    """results.csv written as rows complete (one flushed line each), so the
    rows done survive however the run ends."""

    def __init__(self, path: Path) -> None:
        """Start `path` with the header."""
        self.f = open(path, "w", newline="")  # noqa: SIM115 (closed by close())
        self.w = csv.DictWriter(self.f, fieldnames=CSV_FIELDS)
        self.w.writeheader()
        self.f.flush()

    def add(self, r: Result) -> None:
        """Append one row."""
        self.w.writerow({k: "" if v is None else v for k, v in r.row().items()})
        self.f.flush()

    def close(self) -> None:
        """Close the file."""
        self.f.close()


def cmd_experiment(args: argparse.Namespace) -> int:
    """`rumpvm experiment`: run the sweep, write DIR/results.{csv,json} and
    the plots, print the table (and the --check comparison)."""
    prog = "rumpvm experiment"
    outdir = Path(args.output)
    try:
        src = load_source(args.source, params=args.param, page_shift=args.page_shift,
                          with_fetches=args.with_fetches, column=args.column)
        limits = parse_limits(args.limits)
        lims = limits if limits is not None else auto_limits(src)
        pols = _check_policies(args.policies or default_policies(src), src)
        for lim in lims:
            _frames(src, lim)
        if args.check and src.kind != "trace":
            raise ValueError("--check needs a trace (a workload has no fixed page sequence)")
        plots = _plot_paths(args.plot, outdir)
        outdir.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    what = (f"{src.name}: {len(src.accesses)} accesses, {src.distinct} distinct pages" if src.accesses is not None
            else f"{src.name} workload ({workloads.describe(src.name, src.params)})")
    print(f"# {what}; seed {args.seed}")
    rows: list[Result] = []
    live = _RowFile(outdir / "results.csv")

    def keep(r: Result) -> None:
        rows.append(r)
        live.add(r)

    meta = {**provenance(src, ["rumpvm", *args.argv]), "seed": args.seed, "repeat": args.repeat,
            "policies": pols, "limits": lims, "interrupted": False}
    status = 0
    try:
        rows = sweep(src, lims, pols, repeat=args.repeat, seed=args.seed, jobs=args.jobs, on_result=keep,
                     progress=True)
    except KeyboardInterrupt:
        meta["interrupted"] = True
        status = EXIT_INTERRUPTED
    except (OSError, RuntimeError) as e:  # VMError, OutOfMemory; RuntimeError: a worker died
        print(f"{prog}: a run failed: {e}", file=sys.stderr)
        status = 1
    finally:
        live.close()
    rows = sort_rows(rows, pols)
    write_csv(rows, outdir / "results.csv")
    if status == EXIT_INTERRUPTED:
        write_json(rows, outdir / "results.json", meta)
        print(f"{prog}: interrupted; {len(rows)} rows kept in {outdir / 'results.csv'}", file=sys.stderr)
        return status
    print(format_table(rows))
    if args.check and rows:
        checked = check_rows(src, rows)
        meta["check"] = [{**asdict(c), "agrees": c.agrees} for c in checked]
        print("# --check: the same page sequence in libCacheSim, and LRU's one-pass miss-ratio curve")
        print(format_check(checked))
        if any(not c.agrees for c in checked if c.policy in EXACT):
            status = status or 1
    if rows:
        for path in plots:
            meta.setdefault("plots", []).append({"file": path.name, "xscale": plot(rows, path, what)})
    write_json(rows, outdir / "results.json", meta)
    print(f"# wrote {outdir}/results.csv, results.json, {', '.join(p.name for p in plots)}")
    return status


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `rumpvm experiment`."""
    ex = subparsers.add_parser(
        "experiment", help="memory-limit experiments: miss ratio per policy over a sweep of limits",
        description="Run a trace file or a built-in workload under each policy at each memory limit,"
                    " each point in a fresh kernel; write DIR/results.csv, results.json and faults.png."
                    " See docs/experiments.md.")
    ex.add_argument("source", metavar="SOURCE",
                    help=f"a trace file, or a workload: {', '.join(workloads.WORKLOADS)}")
    ex.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the results")
    ex.add_argument("--limits", default="auto", metavar="L1,L2,...|auto",
                    help="memory limits (bytes, K/M/G); auto: 1/16 to all of the footprint (default)")
    ex.add_argument("--policies", type=_csv_list, default=None, metavar="P1,P2,...",
                    help=f"of {', '.join(policy_names())} (default: all; opt for traces only)")
    ex.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                    help="worker processes (default: the core count)")
    ex.add_argument("--repeat", type=int, default=1, metavar="N", help="runs of each point (default 1)")
    ex.add_argument("--seed", type=int, default=0, help="seeds workloads and the random policy (default 0)")
    ex.add_argument("--param", action="append", default=[], metavar="K=V",
                    help="a workload knob (repeatable; see docs/experiments.md)")
    ex.add_argument("--page-shift", type=int, default=12, metavar="N", help="trace page size 2^N (default 12)")
    ex.add_argument("--with-fetches", action="store_true", help="count a lackey trace's instruction fetches")
    ex.add_argument("--column", default=None, help="a csv trace's page column (index or header name)")
    ex.add_argument("--check", action="store_true",
                    help="compare with libCacheSim (and LRU with its one-pass miss-ratio curve)")
    ex.add_argument("--plot", action="append", default=[], metavar="FORMAT|FILE",
                    help="another plot, e.g. pdf, svg or faults.pdf (repeatable; faults.png always)")
    ex.set_defaults(fn=_cmd_checked)


def _cmd_checked(args: argparse.Namespace) -> int:
    """Usage errors of number flags as exit status 2, then the command."""
    if args.jobs < 1 or args.repeat < 1:
        print("rumpvm experiment: --jobs and --repeat must be >= 1", file=sys.stderr)
        return 2
    if isinstance(args.column, str) and args.column.isdigit():
        args.column = int(args.column)
    return cmd_experiment(args)

