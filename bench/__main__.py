"""The benchmark harness: `python -m bench [--quick] [--only NAME] [--json PATH]`.

Imports every `bench/bench_*.py` module, calls its `run(quick)` and prints
one aligned line per figure: figure, value and unit, baseline name and
value, ratio, target, and PASS / MISS against the target ("-" when the
figure has no target).  Benchmarks report; they do not gate: the exit
status is 0 even when targets are missed (a module that crashes is reported
as an ERROR line and gives exit status 1 only with `--strict`).

Row shapes accepted from modules: `bench.Row`, an 8-tuple in Row order, or
the 6-tuple `(figure, value, unit, baseline_value, ratio, target)` of
bench_fuse.py (baseline name taken from the target text, met parsed from a
leading ">= x" / "<= x" in it).  A module whose `run` takes no `quick`
argument is called as `run()`; for bench_fuse with --quick the harness sets
BENCH_FUSE_MIB=16 and BENCH_FUSE_ENTRIES=500 unless they are set already.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import platform
import re
import sys
import time
import traceback
from typing import Any

from . import Row

QUICK_ENV = {"bench_fuse": {"BENCH_FUSE_MIB": "16", "BENCH_FUSE_ENTRIES": "500"}}


def discover() -> list[str]:
    """Names of the bench_* modules of this package, sorted (core first)."""
    pkgdir = os.path.dirname(os.path.abspath(__file__))
    names = [m.name for m in pkgutil.iter_modules([pkgdir]) if m.name.startswith("bench_")]
    order = {"bench_core": 0, "bench_swap": 1}
    return sorted(names, key=lambda n: (order.get(n, 2), n))


def _target_met(target: str, ratio: float) -> bool | None:
    m = re.match(r"\s*(>=|<=)\s*([0-9.]+)", target)
    if not m:
        return None
    limit = float(m.group(2))
    return ratio >= limit if m.group(1) == ">=" else ratio <= limit


def normalize(row: Any) -> Row:
    """A Row from any accepted row shape (see the module docstring)."""
    if isinstance(row, Row):
        return row
    t = tuple(row)
    if len(t) == 8:
        return Row(*t)
    if len(t) == 6:
        figure, value, unit, baseline_value, ratio, target = t
        m = re.search(r"\bof (.+)$|\bvs (.+?)(?: \(|$)", str(target))
        name = next((g for g in m.groups() if g), "baseline") if m else "baseline"
        return Row(str(figure), float(value), str(unit), name, float(baseline_value), float(ratio),
                   str(target), _target_met(str(target), float(ratio)))
    raise ValueError(f"unknown row shape ({len(t)} fields): {row!r}")


def run_module(name: str, quick: bool) -> list[Row]:
    mod = importlib.import_module(f"bench.{name}")
    params = inspect.signature(mod.run).parameters
    saved: dict[str, str | None] = {}
    if quick and "quick" not in params:
        for var, val in QUICK_ENV.get(name, {}).items():
            if var not in os.environ:
                saved[var] = None
                os.environ[var] = val
    try:
        rows = mod.run(quick=quick) if "quick" in params else mod.run()
    finally:
        for var in saved:
            del os.environ[var]
    return [normalize(r) for r in rows]


def _fmt(v: float) -> str:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (whole run well under a minute)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this module (core, swap, fuse, or bench_core...); repeatable,"
                         " or comma-separated")
    ap.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a module crashed")
    args = ap.parse_args(argv)

    names = discover()
    if args.only:
        wanted = {w if w.startswith("bench_") else f"bench_{w}"
                  for o in args.only for w in o.split(",") if w}
        unknown = wanted - set(names)
        if unknown:
            ap.error(f"no such benchmark module: {', '.join(sorted(unknown))} (have: {', '.join(names)})")
        names = [n for n in names if n in wanted]

    info = machine()
    print(f"# rumpvm benchmarks{' (quick)' if args.quick else ''}: {info['nproc']} CPUs, {info['cpu']},"
          f" Python {info['python']}, Linux {info['kernel']}", flush=True)
    rows: list[Row] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in names:
        print(f"# running {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            got = run_module(name, args.quick)
        except Exception as ex:  # report and go on: one broken module must not hide the rest
            traceback.print_exc()
            errors[name] = f"{type(ex).__name__}: {ex}"
            got = []
        timings[name] = time.monotonic() - t0
        rows.extend(got)
        print(f"# {name}: {len(got)} figures in {timings[name]:.1f}s", file=sys.stderr, flush=True)

    for line in table(rows):
        print(line)
    for name, err in errors.items():
        print(f"ERROR {name}: {err}")
    missed = sum(1 for r in rows if r.met is False)
    print(f"# {len(rows)} figures, {sum(1 for r in rows if r.met)} PASS, {missed} MISS,"
          f" {len(errors)} module errors; total {sum(timings.values()):.1f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "quick": args.quick, "timings_s": timings, "errors": errors,
                       "rows": [r.as_dict() for r in rows]}, f, indent=2)
    return 1 if errors and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
