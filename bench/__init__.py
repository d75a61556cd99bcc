"""rumpvm benchmarks: the figures of the performance issue, each reported as a
ratio against a baseline measured in the same process or the same run (see
`python -m bench --help` and the table in README.md).

A benchmark module (`bench/bench_*.py`) exposes `FIGURES`, a tuple of
functions `figure(profile) -> list[Row]`, one per figure of the table, so
that the harness (`bench/__main__.py`) can run them one by one and report a
figure that crashes without losing the others; a module without `FIGURES`
has `run(quick: bool) -> list[Row]`.  `profile` is "full" (the issue's
sizes), "quick" (a smaller run) or "tiny" (smoke-test sizes: runs every code
path in seconds, figures meaningless); `pick` chooses a size by profile.

This package holds what the modules share: the `Row` record, timing
helpers (`alternate` runs the two sides of a ratio in turn and keeps the
best of each; `sandwich` measures a small and a big size one after the
other) and `build_map`, a process map of many entries.  Benchmarks report;
they never fail a build.  No locks; nothing here keeps state between calls.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import rumpvm
from rumpvm import MAP_ANON, MAP_FIXED, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE

Profile = Literal["tiny", "quick", "full"]
MiB = 1 << 20
VM_MIN = PAGE_SIZE  # the lowest user address (README: [PAGE_SIZE, 0x7ffffffff000))

T = TypeVar("T")


@dataclass
class Row:
    """One figure: `value` (in `unit`) against `baseline_value` of `baseline`.

    `key` names the figure independently of its sizes (for comparing runs);
    `ratio` is value / baseline_value (for times lower is better, for
    throughputs higher is better; `target` says which); `met` is None when
    the figure has no target (reported only).
    """

    key: str
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    target: str
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict."""
        return asdict(self)


def pick(profile: Profile, tiny: T, quick: T, full: T) -> T:
    """The size for `profile`."""
    return {"tiny": tiny, "quick": quick, "full": full}[profile]


def mib(nbytes: int) -> str:
    """`nbytes` as a short size for figure texts: 512 MiB, 640 KiB."""
    return f"{nbytes // MiB} MiB" if nbytes % MiB == 0 else f"{nbytes // 1024} KiB"


def kilo(n: int) -> str:
    """An entry count for figure texts: 100k, 1k, 200."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def alternate(fns: Sequence[Callable[[], float]], reps: int, warmup: int = 1) -> list[float]:
    """The minimum of each fn's measurement over `reps` rounds that call
    every fn in turn (after `warmup` discarded rounds).  Alternating puts
    both sides of a ratio under the same load of a shared host, and many
    short samples let the minimum find an undisturbed time slice."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], fn())
    return best


def sandwich(measure: Callable[[int], list[float]], small: int, big: int) -> tuple[list[float], list[float]]:
    """(at small, at big) of `measure(size)` (a list of figures, lower is
    better), run small, big, small with a collection in between, keeping
    the better of the two small runs.  Sizes are measured one at a time so
    the small side does not pay for the big side's objects (the cyclic
    garbage collector walks all of them); the second small run puts it
    after the big one as well, under the same drift of a shared host."""
    out = []
    for size in (small, big, small):
        gc.collect()
        out.append(measure(size))
    return [min(a, b) for a, b in zip(out[0], out[2])], out[1]


def ratio_row(key: str, figure: str, value: float, unit: str, baseline: str, baseline_value: float,
              limit: float | None, higher_is_better: bool = False, target: str | None = None) -> Row:
    """A Row with ratio = value / baseline_value, met against `limit`
    (ratio <= limit for costs, ratio >= limit for throughputs; None: no
    target).  `target` defaults to "<= 2x", ">= 0.4" or "report"."""
    ratio = value / baseline_value if baseline_value else float("inf")
    if limit is None:
        met = None
        text = target or "report"
    elif higher_is_better:
        met = ratio >= limit
        text = target or f">= {limit:g}"
    else:
        met = ratio <= limit
        text = target or f"<= {limit:g}x"
    return Row(key, figure, value, unit, baseline, baseline_value, ratio, text, met)


def build_map(p: rumpvm.Proc, entries: int) -> int:
    """Give `p` a map of exactly `entries` entries: one mapping of `entries`
    pages at VM_MIN with every odd page PROT_READ, so no two neighbours
    merge and no hole lies below its end; returns its start.  `entries`
    must be even (the last entry is PROT_READ, so a read-write page mapped
    right after it does not merge with it)."""
    if entries % 2:
        raise ValueError(f"build_map needs an even number of entries, not {entries}")
    a = p.mmap(entries * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANON | MAP_FIXED, addr=VM_MIN)
    for i in range(1, entries, 2):
        p.mprotect(a + i * PAGE_SIZE, PAGE_SIZE, PROT_READ)
    n = len(p.maps())
    if n != entries:
        raise AssertionError(f"map has {n} entries, wanted {entries}")
    return a
