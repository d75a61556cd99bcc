"""rumpvm benchmarks: figures reported as ratios against baselines run in the
same process and the same run (see `python -m bench --help`).

Every `bench/bench_*.py` module has `run(quick: bool) -> list[Row]`; the
harness (`bench/__main__.py`) collects the rows and prints one aligned line
per figure.  This package holds what the modules share: the `Row` record
and timing helpers (`time.perf_counter_ns`, best of a few repetitions after
a warm-up).  Benchmarks report; they never fail a build.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Row:
    """One figure: `value` (in `unit`) against `baseline_value` of `baseline`.

    `ratio` is value / baseline_value (so for times lower is better and for
    throughputs higher is better; `target` says which); `met` is None when
    the figure has no target (reported only).
    """

    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    target: str
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_ns(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> int:
    """Best (minimum) wall time in ns of `repeat` calls of `fn()`, after
    `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        dt = time.perf_counter_ns() - t0
        if best is None or dt < best:
            best = dt
    assert best is not None
    return best


def best_of(fn: Callable[[], float], repeat: int = 5, warmup: int = 1) -> float:
    """Minimum of the values `fn()` measures itself (e.g. ns per operation
    when each call needs untimed set-up), after `warmup` discarded calls."""
    for _ in range(warmup):
        fn()
    return min(fn() for _ in range(repeat))


def ratio_row(figure: str, value: float, unit: str, baseline: str, baseline_value: float,
              target: str, limit: float | None, higher_is_better: bool = False) -> Row:
    """A Row with ratio = value / baseline_value, met against `limit`
    (ratio <= limit for costs, ratio >= limit for throughputs; None: no target)."""
    ratio = value / baseline_value if baseline_value else float("inf")
    if limit is None:
        met = None
    elif higher_is_better:
        met = ratio >= limit
    else:
        met = ratio <= limit
    return Row(figure, value, unit, baseline, baseline_value, ratio, target, met)
