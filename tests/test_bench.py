"""Smoke test of the benchmarks: `python -m bench --tiny` runs every figure of
the performance issue's table (core, swap, and FUSE with real mounts) at
smoke-test sizes, and each row is well formed.  No timing is asserted: the
figures of a tiny run mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"zero_fill", "readinto", "swap_roundtrip", "random_reads", "map_lookup_read", "map_lookup_bare",
        "stats_size", "zero_fill_size", "fork_exit", "mem_dd", "cat_maps"}
DETAIL_KEYS = {"swap_write", "swap_read", "swap_ceiling", "map_lookup_floor"}


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`python -m bench --tiny ARGS --json`: the finished process and its JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", *args, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def check_row(row: dict[str, Any]) -> None:
    """A row has a figure, positive finite values, value/baseline as its
    ratio, and a verdict that agrees with its target."""
    assert row["figure"].strip() and row["baseline"] and row["unit"], row
    for field in ("value", "baseline_value"):
        assert math.isfinite(row[field]) and row[field] > 0, row
    assert math.isclose(row["ratio"], row["value"] / row["baseline_value"], rel_tol=1e-9), row
    m = re.fullmatch(r"(<=|>=) ([0-9.]+)x?", row["target"])
    if m is None:
        assert row["target"] in ("report", "(detail)") and row["met"] is None, row
    else:
        limit = float(m.group(2))
        assert row["met"] == (row["ratio"] <= limit if m.group(1) == "<=" else row["ratio"] >= limit), row


def test_every_figure_runs_and_is_well_formed(tmp_path: Path) -> None:
    proc, data = run_bench(tmp_path, "--only", "core,swap,fuse", "--strict")
    assert not data["errors"] and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    keys = [row["key"] for row in data["rows"]]
    assert sorted(keys) == sorted(KEYS | DETAIL_KEYS)
    for row in data["rows"]:
        check_row(row)
        assert row["key"] in DETAIL_KEYS or row["target"] != "(detail)", row
    table = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert len(table) == 2 + len(keys)  # header, rule, one line per row
    for line, row in zip(table[2:], data["rows"]):
        assert line.startswith(row["figure"])
        assert line.endswith({None: "-", True: "PASS", False: "MISS"}[row["met"]]), line
    assert data["profile"] == "tiny" and data["machine"]["nproc"]


def test_only_selects_one_figure(tmp_path: Path) -> None:
    _, data = run_bench(tmp_path, "--only", "core.zero_fill")
    assert [row["key"] for row in data["rows"]] == ["zero_fill"]
    assert list(data["timings_s"]) == ["bench_core.zero_fill"]


def test_only_rejects_an_unknown_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "nosuch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no such benchmark module: bench_nosuch" in proc.stderr
