"""Smoke test of the benchmark harness: `python -m bench --quick` runs and
prints one table line per figure of bench_core and bench_swap.

Marked `bench` (excluded by default; run with `scripts/run-tests -m bench`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CORE_FIGURES = ["zero-fill fault", "resident 4 KiB read", "resident 4 KiB write",
                "1 MiB read of resident memory", "map lookup (lookup_entry)",
                "map lookup (p.read, no translation)", "mmap with findspace", "munmap (one entry)",
                "fork, 1000 entries"]
SWAP_FIGURES = ["page-out + page-in", "thrash sequential", "thrash random"]


@pytest.mark.bench
def test_bench_quick_prints_every_figure(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "core,swap",
                           "--json", str(out_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert not any(line.startswith("ERROR") for line in lines), proc.stdout + proc.stderr
    for fig in CORE_FIGURES + SWAP_FIGURES:
        hits = [line for line in lines if line.lstrip().startswith(fig)]
        assert len(hits) >= 1, f"no line for {fig!r} in:\n{proc.stdout}"
        for line in hits:
            assert line.rstrip().endswith(("PASS", "MISS", "-")), line
    data = json.loads(out_json.read_text())
    assert len(data["rows"]) == len(CORE_FIGURES) + len(SWAP_FIGURES) + 2  # + 2 swap detail rows
    assert data["machine"]["nproc"]


@pytest.mark.bench
def test_bench_only_rejects_unknown_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "nosuch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no such benchmark module" in proc.stderr
