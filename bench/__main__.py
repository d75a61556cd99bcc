"""The benchmark harness: `python -m bench [--quick | --tiny] [--only NAME] [--json PATH]`.

Imports every `bench/bench_*.py` module and runs its figures one by one
(`FIGURES`, or `run(quick)` for a module without them; see bench/__init__),
then prints one aligned line per figure: figure, value and unit, baseline
name and value, ratio, target, and PASS / MISS against the target ("-" when
the figure has no target).  A figure that crashes is an ERROR line naming
it (`bench_core.fork_exit: ...`); the others still run.  Benchmarks report;
they do not gate: the exit status is 0 even when targets are missed, and 1
for a crashed figure only with `--strict`.  Single-threaded; no locks.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import Profile, Row

Figure = Callable[[Profile], list[Row]]


def discover() -> list[str]:
    """Names of the bench_* modules of this package, sorted (core first)."""
    pkgdir = os.path.dirname(os.path.abspath(__file__))
    names = [m.name for m in pkgutil.iter_modules([pkgdir]) if m.name.startswith("bench_")]
    order = {"bench_core": 0, "bench_swap": 1, "bench_fuse": 2}
    return sorted(names, key=lambda n: (order.get(n, 3), n))


def figures(mod: ModuleType) -> list[tuple[str, Figure]]:
    """The (name, function) figures of a module: its FIGURES, or its run()."""
    short = mod.__name__.rsplit(".", 1)[-1]
    found: tuple[Figure, ...] | None = getattr(mod, "FIGURES", None)
    if found is not None:
        return [(f"{short}.{fn.__name__}", fn) for fn in found]
    run: Callable[..., list[Row]] = mod.run
    return [(short, lambda profile: run(quick=profile != "full"))]


def _fmt(v: float) -> str:
    """A value with three or so significant digits."""
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def machine() -> dict[str, str]:
    """CPU count and model, Python and Linux versions."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release()}


def table(rows: list[Row]) -> list[str]:
    """The rows as aligned text lines, with a header."""
    head = ["figure", "value", "baseline", "base value", "ratio", "target", "result"]
    body = [[r.figure, f"{_fmt(r.value)} {r.unit}", r.baseline, f"{_fmt(r.baseline_value)} {r.unit}",
             f"{r.ratio:.3g}", r.target, "-" if r.met is None else ("PASS" if r.met else "MISS")]
            for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    right = {1, 3, 4}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]


def select(names: list[str], only: list[str]) -> list[tuple[str, Figure]]:
    """The figures to run for the `--only` words (none: all), each a module
    (`core`, `bench_swap`) or a figure (`core.fork_exit`); ValueError names
    a word that matches nothing."""
    words = {w if w.startswith("bench_") else f"bench_{w}" for o in only for w in o.split(",") if w}
    unknown = {w.split(".", 1)[0] for w in words} - set(names)
    if unknown:
        raise ValueError(f"no such benchmark module: {', '.join(sorted(unknown))} (have: {', '.join(names)})")
    found = [fig for name in names if not words or any(w.split(".", 1)[0] == name for w in words)
             for fig in figures(importlib.import_module(f"bench.{name}"))]
    chosen = [(fig_name, fn) for fig_name, fn in found
              if not words or fig_name in words or fig_name.split(".", 1)[0] in words]
    missing = {w for w in words if "." in w} - {fig_name for fig_name, _ in chosen}
    if missing:
        raise ValueError(f"no such figure: {', '.join(sorted(missing))}"
                         f" (have: {', '.join(fig_name for fig_name, _ in found)})")
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the selected figures, print the table; the exit status."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (well under a minute)")
    size.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds; figures meaningless)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this module (core, swap, fuse, or bench_core...) or figure"
                         " (core.fork_exit); repeatable, or comma-separated")
    ap.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a figure crashed")
    args = ap.parse_args(argv)
    profile: Profile = "tiny" if args.tiny else "quick" if args.quick else "full"
    try:
        chosen = select(discover(), args.only)
    except ValueError as err:
        ap.error(str(err))

    info = machine()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# rumpvm benchmarks ({profile}), {started}: {info['nproc']} CPUs, {info['cpu']},"
          f" Python {info['python']}, Linux {info['kernel']}", flush=True)
    rows: list[Row] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for fig_name, fn in chosen:
        print(f"# running {fig_name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            got = fn(profile)
        except Exception as ex:  # report and go on: one broken figure must not hide the rest
            traceback.print_exc()
            errors[fig_name] = f"{type(ex).__name__}: {ex}"
            got = []
        timings[fig_name] = time.monotonic() - t0
        rows.extend(got)
        print(f"# {fig_name}: {len(got)} rows in {timings[fig_name]:.1f}s", file=sys.stderr, flush=True)

    for line in table(rows):
        print(line)
    for fig_name, msg in errors.items():
        print(f"ERROR {fig_name}: {msg}")
    missed = sum(1 for r in rows if r.met is False)
    print(f"# {len(rows)} rows, {sum(1 for r in rows if r.met)} PASS, {missed} MISS,"
          f" {len(errors)} errors; total {sum(timings.values()):.1f}s")
    if args.json:
        out: dict[str, Any] = {"machine": info, "profile": profile, "started": started, "timings_s": timings,
                               "errors": errors, "rows": [r.as_dict() for r in rows]}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 1 if errors and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
