"""Benchmark of the lab's kernel replay (`rumpvm experiment` on a trace).

- `replay`: a real trace — a small C program (qsort of n ints, then n
  bsearches; compiled with the system `cc -O2 -static` into a temp dir) run
  under valgrind's lackey by `rumpvm.trace.record`, coalesced as recorded —
  replayed through the kernel (`lab.run`: a fresh kernel whose limit leaves
  half the trace's distinct pages, demand paging) under `clock` and `lru`.
  Value: accesses per second of the replay itself (`Result.seconds`, kernel
  boot excluded).  Baseline: libCacheSim's LRU (C) on the same page
  sequence at the same frame count (`process_trace` over an oracleGeneral
  file written beforehand, untimed).  Target: >= 1M accesses/s.  The
  figure text gives the trace size and both fault counts (LRU's are equal:
  tests/test_lab.py holds that).

Sizes: n = 20000 (full, ~3M accesses; recording takes a minute or two),
3000 (quick), 300 (tiny).  Best of a few replays, alternated with the
baseline so a noisy host hits both.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from rumpvm import PAGE_SIZE, lab, trace

from . import Profile, Row, alternate, pick

TARGET = 1_000_000  # accesses per second

C_SOURCE = r"""
#include <stdlib.h>
static int cmp(const void *x, const void *y) {
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}
int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoul(argv[1], 0, 10) : 1000;
    int *a = malloc(n * sizeof *a);
    unsigned s = 12345;
    for (size_t i = 0; i < n; i++) { s = s * 1103515245u + 12345u; a[i] = (int)(s >> 1); }
    qsort(a, n, sizeof *a, cmp);
    long hits = 0;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        int k = (int)(s >> 1);
        hits += bsearch(&k, a, n, sizeof *a, cmp) != 0;
    }
    volatile long sink = hits;  /* keeps the searches; prints nothing */
    (void)sink;
    return 0;
}
"""


def recorded_source(tmp: str, n: int) -> lab.Source:
    """Compile the program, record it with n elements, load the trace."""
    src, exe, out = (os.path.join(tmp, name) for name in ("prog.c", "prog", "prog.trace"))
    with open(src, "w") as f:
        f.write(C_SOURCE)
    subprocess.run(["cc", "-O2", "-static", "-o", exe, src], check=True, capture_output=True, text=True)
    trace.record([exe, str(n)], out)
    return lab.load_source(out)


def replay(profile: Profile) -> list[Row]:
    """Kernel replay speed (clock and lru) vs libCacheSim LRU, at half the footprint."""
    n = pick(profile, 300, 3000, 20000)
    reps = pick(profile, 1, 3, 3)
    with tempfile.TemporaryDirectory(prefix="rumpvm-bench-lab-") as tmp:
        src = recorded_source(tmp, n)
        assert src.accesses is not None
        accesses = len(src.accesses)
        frames = max(1, src.distinct // 2)
        oracle = os.path.join(tmp, "trace.oracleGeneral")
        lab.write_oracle_general(src.accesses, oracle)
        lcs_faults = 0

        def baseline() -> float:
            nonlocal lcs_faults
            t0 = time.perf_counter()
            ratio = lab.libcachesim_run(oracle, "lru", frames)
            dt = time.perf_counter() - t0
            lcs_faults = round(ratio * accesses)
            return dt

        rows = []
        for policy in ("clock", "lru"):
            faults = 0

            def kernel(policy: str = policy) -> float:
                nonlocal faults
                r = lab.run(src, frames * PAGE_SIZE, policy)
                faults = r.faults
                return r.seconds

            ours, theirs = alternate([kernel, baseline], reps)
            value, base = accesses / ours, accesses / theirs
            rows.append(Row(f"lab.replay_{policy}",
                            f"kernel replay ({policy}), recorded qsort trace: {accesses} accesses, {src.distinct}"
                            f" pages, {frames} frames; {faults} faults (libCacheSim LRU {lcs_faults})",
                            value, "accesses/s", "libCacheSim LRU (C), same trace", base, value / base,
                            ">= 1M accesses/s", value >= TARGET))
    return rows


FIGURES = (replay,)
