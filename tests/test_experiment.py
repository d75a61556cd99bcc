"""`rumpvm experiment` end to end: a trace file and every workload through
the command, its files (results.csv, results.json, plots), the terminal
table, `--check`, parallel and repeated runs, usage errors, and Ctrl-C.

Sizes are tiny (a few hundred accesses, 512K workloads): each point still
boots a real kernel in a real worker process.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rumpvm import lab, trace, workloads
from rumpvm.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """A small rumpvm trace: 600 accesses (a third writes) over 48 pages."""
    rng = random.Random(11)
    path = tmp_path / "t.trace"
    trace.write_trace(path, [[rng.randrange(48) << 1 | (rng.random() < 0.33) for _ in range(600)]])
    return path


def experiment(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `rumpvm experiment ARGV` in this process: status, stdout, stderr."""
    rc = main(["experiment", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def rows_of(outdir: Path) -> list[dict[str, str]]:
    with open(outdir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def json_of(outdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((outdir / "results.json").read_text())
    return data


def without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_trace_end_to_end(tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc, text, err = experiment(capsys, str(trace_file), "--limits", "8K,32K,192K", "--policies", "lru,fifo,opt",
                               "--jobs", "1", "-o", str(out), "--plot", "pdf", "--plot", "extra.svg")
    assert rc == 0, err
    rows = rows_of(out)
    assert tuple(rows[0]) == lab.CSV_FIELDS
    assert [(r["policy"], r["limit"], r["frames"]) for r in rows] == [
        (p, str(lim), str(lim // 4096)) for p in ("lru", "fifo", "opt") for lim in (8192, 32768, 196608)]
    info = trace.open_trace(trace_file).info()
    for r in rows:
        assert r["source"] == str(trace_file) and r["accesses"] == "600" and r["seed"] == "0"
        assert float(r["miss_ratio"]) == pytest.approx(int(r["faults"]) / 600)
        assert (r["pageouts"] == "") == (r["policy"] == "opt")  # OPT is computed, not run
    assert [r["faults"] for r in rows if r["limit"] == "196608"] == [str(info.distinct)] * 3  # all fit
    meta = json_of(out)
    assert [{k: "" if v is None else str(v) for k, v in r.items()} for r in meta["rows"]] == rows
    assert meta["sha256"] == info.sha256 and meta["distinct_pages"] == info.distinct
    assert meta["command_line"].startswith("rumpvm experiment ") and "--plot pdf" in meta["command_line"]
    assert meta["rumpvm_version"] and meta["accesses"] == 600 and meta["interrupted"] is False
    assert (out / "faults.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "faults.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (out / "extra.svg").read_bytes()[:400]
    assert {p["file"]: p["xscale"] for p in meta["plots"]} == {
        "faults.png": "log", "faults.pdf": "log", "extra.svg": "log"}  # 8K..192K is a wide range
    table = [ln.split() for ln in text.splitlines() if not ln.startswith("#")]
    assert table[0] == ["limit", "frames", "lru", "fifo", "opt"] and len(table) == 5
    assert table[2][:2] == ["8K", "2"] and table[2][2] == f"{100 * int(rows[0]['faults']) / 600:.2f}%"


@pytest.mark.parametrize("name", sorted(workloads.WORKLOADS))
def test_each_workload(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, err = experiment(capsys, name, "--param", "footprint=512K", "--limits", "384K,4M",
                               "--policies", "clock,fifo", "--jobs", "1", "--seed", "5", "-o", str(tmp_path))
    assert rc == 0, err
    assert f"# {name} workload (footprint=512K" in text
    rows = rows_of(tmp_path)
    assert [(r["policy"], r["limit"]) for r in rows] == [
        ("clock", "393216"), ("clock", "4194304"), ("fifo", "393216"), ("fifo", "4194304")]
    for r in rows:
        assert int(r["accesses"]) > 0 and r["seed"] == "5" and r["source"] == name
        assert int(r["peak_resident"]) <= int(r["limit"])
    assert all(r["pageouts"] == "0" for r in rows if r["limit"] == "4194304")  # it all fits
    meta = json_of(tmp_path)
    assert meta["kind"] == "workload" and meta["params"]["footprint"] == 512 << 10


def test_auto_limits_and_a_linear_axis(tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = experiment(capsys, str(trace_file), "--policies", "fifo", "--jobs", "2", "-o", str(tmp_path / "a"))
    assert rc == 0, err
    distinct = trace.open_trace(trace_file).info().distinct
    limits = sorted(int(r["limit"]) for r in rows_of(tmp_path / "a"))
    assert limits == lab.auto_limits(lab.load_source(trace_file)) and len(limits) == lab.AUTO_POINTS
    assert limits[0] == round(distinct / 16) * 4096 and limits[-1] == distinct * 4096
    rc, _, err = experiment(capsys, str(trace_file), "--limits", "40K,56K", "--policies", "fifo", "--jobs", "1",
                            "-o", str(tmp_path / "n"))
    assert rc == 0, err
    assert json_of(tmp_path / "n")["plots"] == [{"file": "faults.png", "xscale": "linear"}]


def test_jobs_and_seeds_give_the_same_rows(tmp_path: Path, trace_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(trace_file), "--limits", "12K,48K", "--policies", "lru,random,clock,opt", "--seed", "3"]
    rc1, _, err1 = experiment(capsys, *args, "--jobs", "1", "-o", str(tmp_path / "one"))
    rc2, _, err2 = experiment(capsys, *args, "--jobs", "2", "-o", str(tmp_path / "two"))
    assert rc1 == rc2 == 0, err1 + err2
    one, two = rows_of(tmp_path / "one"), rows_of(tmp_path / "two")
    assert len(one) == 8 and without_seconds(one) == without_seconds(two)
    assert {r["seed"] for r in one} == {"3"}


def test_repeat_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, err = experiment(capsys, "random", "--param", "footprint=512K", "--limits", "384K", "--policies",
                               "clock,lru", "--repeat", "3", "--jobs", "2", "-o", str(tmp_path))
    assert rc == 0, err
    rows = rows_of(tmp_path)
    assert [(r["policy"], r["repeat"]) for r in rows] == [(p, str(i)) for p in ("clock", "lru") for i in range(3)]
    assert len({r["accesses"] for r in rows}) == 1  # one seed: the same accesses each time
    line = next(ln for ln in text.splitlines() if ln.split()[:1] == ["384K"])
    assert line.count("±") == 2  # mean and spread per policy
    assert json_of(tmp_path)["repeat"] == 3


def test_check_output(tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, err = experiment(capsys, str(trace_file), "--limits", "8K,64K", "--policies", "lru,fifo,opt,clock",
                               "--check", "--jobs", "1", "-o", str(tmp_path))
    assert rc == 0, err
    head = next(ln for ln in text.splitlines() if "libCacheSim" in ln and not ln.startswith("#"))
    assert head.split() == ["limit", "frames", "policy", "rumpvm", "libCacheSim", "lru-mrc"]
    after = text.splitlines()[text.splitlines().index(head) + 2:]
    lines = [ln.split() for ln in after if ln.split()[:1] and ln.split()[0][0].isdigit()]
    assert {(ln[2], ln[1]) for ln in lines} == {(p, f) for p in ("lru", "fifo", "opt") for f in ("2", "16")}
    for ln in lines:
        assert ln[3] == ln[4] and (ln[5] == ln[3] if ln[2] == "lru" else ln[5] == "-"), ln
    checked = json_of(tmp_path)["check"]
    assert len(checked) == 6 and all(c["agrees"] for c in checked)


@pytest.mark.parametrize("argv", [
    ["{trace}", "--policies", "lru,mru"],
    ["{trace}", "--limits", "0"],
    ["{trace}", "--limits", "2x"],
    ["{trace}", "--limits", "100"],  # less than a page
    ["{trace}", "--param", "footprint=1M"],
    ["{trace}", "--plot", "faults.doc"],
    ["{tmp}/missing.trace"],
    ["scan", "--param", "nope=1"],
    ["scan", "--param", "writes=2"],
    ["scan", "--policies", "opt"],
    ["scan", "--limits", "64K"],  # below the kernel's minimum
    ["scan", "--check"],
    ["scan", "--jobs", "0"],
])
def test_bad_usage_changes_nothing(tmp_path: Path, trace_file: Path, argv: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [a.format(trace=trace_file, tmp=tmp_path) for a in argv]
    rc, _, err = experiment(capsys, *argv, "-o", str(out))
    assert rc == 2 and err.startswith("rumpvm experiment: ")
    assert not out.exists()


def test_the_lab_command_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["lab"])
    assert ei.value.code == 2
    assert "invalid choice: 'lab'" in capsys.readouterr().err


def test_ctrl_c_keeps_the_rows_done(tmp_path: Path) -> None:
    # Far more points than can finish before the first row is in: SIGINT
    # then stops the run with most of them undone.
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rumpvm.cli", "experiment", "scan", "--param", "footprint=512K",
         "--limits", "320K,384K,448K", "--policies", "clock,lru,fifo", "--repeat", "200", "--jobs", "2",
         "-o", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "results.csv").exists() or len((out / "results.csv").read_text().splitlines()) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no row within 120 s"
            time.sleep(0.05)  # polling interval only; the condition above is what the test waits for
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    rows = rows_of(out)
    assert 1 <= len(rows) < 3 * 3 * 200
    assert all(r["source"] == "scan" and int(r["accesses"]) > 0 for r in rows)
    meta = json_of(out)
    assert meta["interrupted"] is True and len(meta["rows"]) == len(rows)
    assert not any(p.name.startswith("faults.") for p in out.iterdir())
    assert os.path.exists(out / "results.json")
