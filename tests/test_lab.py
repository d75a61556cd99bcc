"""The lab's library side (rumpvm/lab.py, rumpvm/workloads.py): kernel
replays against independent references, the read/write model, workloads,
sweeps, tables and plots.

The exactness checks are the lab's reason to exist: on a real trace (a tiny
C program recorded under valgrind in the test), the kernel's LRU and FIFO
fault exactly as often as libCacheSim's, OPT equals libCacheSim's Belady,
and LRU equals the one-pass miss-ratio curve at every limit run.
"""

from __future__ import annotations

import random
import subprocess
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lcs import lcs_misses

from rumpvm import lab, mrc, trace, workloads
from rumpvm.constants import PAGE_SIZE
from rumpvm.physmem import MIN_LIMIT

# libcachesim is a declared test dependency ([test] extra): imported where it
# is used, so its absence fails those tests instead of skipping the file.

PROGRAM = r"""
#include <stdlib.h>
#include <string.h>
int main(void) {
    size_t n = 64 * 4096;
    unsigned char *a = malloc(n);
    unsigned s = 1;
    memset(a, 1, n / 2);                      /* writes half, reads the rest */
    for (int i = 0; i < 1500; i++) {
        s = s * 1103515245u + 12345u;
        size_t off = (s >> 8) % n;
        if (i & 1) a[off] ^= 1; else s += a[off];
    }
    return (int)(s & 1);
}
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trace: a tiny static C program (no dynamic loader, so a few
    thousand accesses) recorded with valgrind's lackey."""
    d = tmp_path_factory.mktemp("rec")
    (d / "prog.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-O1", "-static", "-o", str(d / "prog"), str(d / "prog.c")], check=True)
    out = d / "prog.trace"
    res = trace.record([str(d / "prog")], out)
    assert res.info.accesses > 1000 and res.info.reads and res.info.writes
    return out


def pages_of(src: lab.Source) -> list[int]:
    assert src.accesses is not None
    return [v >> 1 for v in src.accesses]


def lcs_belady(pages: list[int], capacity: int) -> int:
    """libCacheSim's Belady, fed the next-access times it needs."""
    import libcachesim as lcs

    n = len(pages)
    nxt = [0] * n
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = last.get(pages[i], 1 << 62)
        last[pages[i]] = i
    cache = lcs.Belady(cache_size=capacity, hashpower=10)
    req = lcs.Request()
    misses = 0
    for i, page in enumerate(pages):
        req.obj_id, req.obj_size, req.clock_time, req.next_access_vtime = page, 1, i, nxt[i]
        misses += not cache.get(req)
    return misses


def writes(pages: list[int]) -> list[int]:
    """Pages as write accesses."""
    return [p << 1 | 1 for p in pages]


# -- OPT --------------------------------------------------------------------------

TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def test_opt_on_the_textbook_trace() -> None:
    # The classic reference string with 3 frames: OPT 9 (LRU 12, FIFO 15).
    assert lab.opt_faults(TEXTBOOK, 3) == 9
    assert lcs_misses("LRU", TEXTBOOK, 3) == 12 and lcs_misses("FIFO", TEXTBOOK, 3) == 15
    with pytest.raises(ValueError):
        lab.opt_faults(TEXTBOOK, 0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 12), max_size=120), st.integers(1, 10))
def test_opt_is_belady_and_a_lower_bound(pages: list[int], cap: int) -> None:
    opt = lab.opt_faults(pages, cap)
    assert opt == lcs_belady(pages, cap)
    assert len(set(pages)) <= opt <= min(lcs_misses("LRU", pages, cap), lcs_misses("FIFO", pages, cap))
    assert lab.opt_faults(pages, cap + 1) <= opt  # a stack algorithm


# -- kernel replays of a recorded trace ----------------------------------------------

def test_kernel_is_exact_on_a_recorded_trace(recorded: Path) -> None:
    src = lab.load_source(recorded)
    pages = pages_of(src)
    assert src.kind == "trace" and src.distinct == len(set(pages))
    assert src.sha256 == trace.open_trace(recorded).info().sha256
    curve = mrc.lru_mrc(pages)
    for frames in (4, src.distinct // 3, src.distinct):
        limit = frames * PAGE_SIZE
        lru = lab.run(src, limit, "lru", check=True)
        assert lru.faults == lcs_misses("LRU", pages, frames) == curve.misses(frames), frames
        assert lru.faults == lru.zerofills + lru.pageins  # type: ignore[operator]
        assert lab.run(src, limit, "fifo").faults == lcs_misses("FIFO", pages, frames), frames
        opt = lab.run(src, limit, "opt")
        assert opt.faults == lcs_belady(pages, frames) and opt.pageouts is None
        # The --check path (libCacheSim's C loop over an oracleGeneral file)
        # gives the same counts as request-by-request.
        theirs = lab.libcachesim_faults(src.accesses, [frames], ["lru", "fifo", "opt"])  # type: ignore[arg-type]
        assert theirs == {("lru", frames): lru.faults, ("fifo", frames): lcs_misses("FIFO", pages, frames),
                          ("opt", frames): opt.faults}


def test_check_rows_agree_on_a_recorded_trace(recorded: Path) -> None:
    src = lab.load_source(recorded)
    rows = lab.sweep(src, [f"{4 * PAGE_SIZE}", f"{src.distinct // 2 * PAGE_SIZE}"], ["lru", "fifo", "opt", "clock"])
    checked = lab.check_rows(src, rows)
    assert {(c.policy, c.frames) for c in checked} == {(p, f) for p in ("lru", "fifo", "opt")
                                                       for f in (4, src.distinct // 2)}
    assert all(c.agrees for c in checked)
    assert all((c.mrc is not None) == (c.policy == "lru") for c in checked)
    table = lab.format_check(checked)
    assert "libCacheSim" in table and "lru-mrc" in table and "MISMATCH" not in table


def test_reads_are_clean_and_writes_dirty() -> None:
    # A loop over 10 pages, 3 times, with 4 frames: LRU misses every access.
    loop = [i % 10 for i in range(30)]
    reads = lab.run([p << 1 for p in loop], 4 * PAGE_SIZE, "lru", check=True)
    assert reads.faults == 30 and reads.zerofills == 30  # a dropped clean page is zero-filled again
    assert reads.pageouts == 0 and reads.pageins == 0  # ... and never written out
    dirty = lab.run(writes(loop), 4 * PAGE_SIZE, "lru", check=True)
    assert dirty.faults == 30 and dirty.zerofills == 10 and dirty.pageins == 20
    assert dirty.pageouts is not None and dirty.pageouts >= 20


@pytest.mark.parametrize("policy", ["clock", "lru", "fifo", "random", "opt"])
def test_frames_are_what_the_limit_says(policy: str) -> None:
    rng = random.Random(5)
    acc = writes([rng.randrange(60) for _ in range(400)])
    for frames in (1, 7, 24):  # 1 and 7 need the wired pad under the kernel's minimum limit
        r = lab.run(acc, frames * PAGE_SIZE + 100, policy, check=True)  # a partial page gives no frame
        assert r.frames == frames and r.limit == frames * PAGE_SIZE + 100
        if policy != "opt":
            assert r.peak_resident == frames * PAGE_SIZE
            assert r.pageouts == r.faults - frames  # every miss past the first `frames` evicted one dirty page
    r = lab.run(acc, 100 * PAGE_SIZE, policy)  # room for every page: only cold misses
    assert r.faults == 60 and r.pageins in (0, None) and r.pageouts in (0, None)


def test_random_policy_is_seeded() -> None:
    rng = random.Random(6)
    acc = writes([rng.randrange(40) for _ in range(600)])
    first = lab.run(acc, 10 * PAGE_SIZE, "random", seed=3)
    assert first.seed == 3
    assert [lab.run(acc, 10 * PAGE_SIZE, "random", seed=3).faults for _ in range(2)] == [first.faults] * 2


def test_bad_arguments_change_nothing() -> None:
    acc = writes([0, 1, 2])
    for kwargs in ({"limit": 0}, {"limit": 100}, {"limit": "4K", "policy": "mru"}, {"limit": "auto"},
                   {"limit": "x"}):
        with pytest.raises(ValueError):
            lab.run(acc, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workload"):
        lab.run(acc, "4K", params=["footprint=1M"])
    with pytest.raises(ValueError, match="opt"):
        lab.run("scan", "1M", "opt")
    with pytest.raises(ValueError, match="minimum"):
        lab.run("scan", MIN_LIMIT - PAGE_SIZE)
    with pytest.raises(OSError):
        lab.run("/nonexistent/trace", "4K")
    with pytest.raises(ValueError):
        lab.sweep(acc, "8K", repeat=0)


# -- workloads ---------------------------------------------------------------------------

TINY = ["footprint=512K"]


@pytest.mark.parametrize("name", sorted(workloads.WORKLOADS))
def test_workload_pages_under_a_low_limit(name: str) -> None:
    src = lab.load_source(name, params=TINY + (["every=32"] if name == "phases" else []))
    fp = workloads.WORKLOADS[name].footprint(src.params)
    assert src.footprint == fp and src.kind == "workload"
    roomy = lab.run(src, 4 * fp + MIN_LIMIT, "clock", check=True)
    tight = lab.run(src, MIN_LIMIT, "clock", check=True)
    assert roomy.accesses == tight.accesses > 0  # the seed fixes the accesses
    assert roomy.pageouts == 0 and roomy.pageins == 0
    assert tight.pageouts and tight.faults > roomy.faults  # the footprint does not fit: it pages
    assert roomy.peak_resident is not None and tight.peak_resident is not None
    assert tight.peak_resident <= MIN_LIMIT < roomy.peak_resident


def test_workload_accesses_follow_the_knobs() -> None:
    pages = (512 << 10) // PAGE_SIZE
    assert lab.run("scan", "2M", params=[*TINY, "passes=3"]).accesses == 3 * pages
    assert lab.run("random", "2M", params={"footprint": "512K", "passes": 2}).accesses == 2 * pages
    loop = lab.run("loop", "2M", params=[*TINY, "wss=0.5", "passes=2"])
    assert loop.accesses == pages + 2 * pages // 2  # writes every page once, then loops over half
    # Only first touches fault (and the kernel's own zero-fills: the u-area).
    assert loop.pageins == 0 and pages <= loop.faults < pages + 8
    fork = lab.run("fork", "4M", params=[*TINY, "children=2", "fraction=0.5"])
    assert fork.accesses == pages + 2 * pages // 2


def test_workload_params_are_checked() -> None:
    p = workloads.parse_params("zipf", ["alpha=0.8", "footprint=1M"])
    assert p["alpha"] == 0.8 and p["footprint"] == 1 << 20 and p["writes"] == 0.5
    for bad in (["nope=1"], ["alpha"], ["alpha=x"], ["writes=2"], ["footprint=100"], ["passes=0"]):
        with pytest.raises(ValueError):
            workloads.parse_params("zipf", bad)
    with pytest.raises(ValueError, match="unknown workload"):
        workloads.parse_params("nope", [])
    with pytest.raises(ValueError, match="children"):
        workloads.parse_params("fork", ["children=1.5"])


# -- sweeps, limits, tables, plots ------------------------------------------------------------

def test_auto_limits() -> None:
    src = lab.load_source(writes(list(range(160))))
    lims = lab.auto_limits(src)
    assert lims[0] == 10 * PAGE_SIZE and lims[-1] == 160 * PAGE_SIZE  # 1/16 .. all of the footprint
    assert len(lims) == lab.AUTO_POINTS and lims == sorted(set(lims))
    assert lab.auto_limits(lab.load_source(writes([0, 1]))) == [PAGE_SIZE, 2 * PAGE_SIZE]  # at least a frame
    wl = lab.auto_limits(lab.load_source("scan", params=["footprint=8M"]))
    assert wl[0] == 512 << 10 and wl[-1] == 8 << 20
    wl = lab.auto_limits(lab.load_source("scan", params=["footprint=1M"]))
    assert wl[0] == MIN_LIMIT and wl[-1] == 1 << 20  # a workload's kernel needs its minimum
    assert lab.parse_limits("auto") is None and lab.parse_limits("4K, 2K,4K") == [2048, 4096]


def test_sweep_rows_and_repeats() -> None:
    rng = random.Random(7)
    acc = [rng.randrange(30) << 1 | rng.randrange(2) for _ in range(300)]
    rows = lab.sweep(acc, ["8K", "40K"], ["opt", "lru", "random"], repeat=2, seed=9)
    assert [(r.policy, r.frames, r.repeat) for r in rows] == [
        ("opt", 2, 0), ("opt", 10, 0),  # OPT is exact and offline: once per limit
        ("lru", 2, 0), ("lru", 2, 1), ("lru", 10, 0), ("lru", 10, 1),
        ("random", 2, 0), ("random", 2, 1), ("random", 10, 0), ("random", 10, 1)]
    assert all(r.seed == 9 and r.source == "<memory>" and r.accesses == 300 for r in rows)
    by = {(r.policy, r.frames, r.repeat): r.faults for r in rows}
    assert by["lru", 2, 0] == by["lru", 2, 1] and by["random", 10, 0] == by["random", 10, 1]
    table = lab.format_table(rows).splitlines()
    assert table[0].split() == ["limit", "frames", "opt", "lru", "random"] and len(table) == 4
    assert table[2].split()[:2] == ["8K", "2"]
    assert lab.format_table([]) == "(no results)"


def test_sweep_in_workers_equals_in_process() -> None:
    rng = random.Random(8)
    acc = [rng.randrange(50) << 1 | rng.randrange(2) for _ in range(500)]
    seen: list[lab.Result] = []
    here = lab.sweep(acc, ["8K", "64K"], ["lru", "random", "opt"], seed=4)
    there = lab.sweep(acc, ["8K", "64K"], ["lru", "random", "opt"], seed=4, jobs=2, on_result=seen.append)
    assert len(seen) == len(there) == 6
    strip = [{**r.row(), "seconds": 0} for r in here]
    assert strip == [{**r.row(), "seconds": 0} for r in there]


def test_plots_formats_and_scale(tmp_path: Path) -> None:
    def row(policy: str, limit: int, ratio: float, repeat: int = 0) -> lab.Result:
        return lab.Result("t", policy, limit, limit // PAGE_SIZE, 100, round(100 * ratio), None, None, None,
                          0.0, None, 0, repeat)
    wide = [row(p, lim, 1 / (i + 1)) for p in ("lru", "opt") for i, lim in enumerate((4096, 65536, 1 << 20))]
    magic = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<?xml"}
    for fmt, head in magic.items():
        path = tmp_path / f"f.{fmt}"
        assert lab.plot(wide, path) == "log"
        assert path.read_bytes().startswith(head), fmt
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:400]
    narrow = [row("lru", lim, 0.5, rep) for lim in (8192, 12288) for rep in (0, 1)]  # repeats: error bars
    assert lab.plot(narrow, tmp_path / "n.png") == "linear"
    assert lab.wide_range([4096, 32768]) and not lab.wide_range([4096, 28672])
    assert "pdf" in lab.plot_formats() and "svg" in lab.plot_formats()


def test_result_row_has_the_csv_fields() -> None:
    r = lab.run(writes([0, 1, 0, 2]), "8K", "lru")
    assert tuple(r.row()) == lab.CSV_FIELDS
    assert r.miss_ratio == pytest.approx(0.75) and r.row()["miss_ratio"] == 0.75
    assert lab.Result("t", "opt", 1, 1, 0, 0, None, None, None, 0.0, None, 0, 0).miss_ratio == 0.0


def test_in_memory_sources_are_compacted() -> None:
    src = lab.load_source([1 << 40 | 1, 5 << 1, 1 << 40])  # sparse page numbers, a read and writes
    assert src.distinct == 2 and list(src.accesses or []) == [1, 2, 0]
    assert lab.load_source(src) is src
    assert isinstance(src.accesses, array)
