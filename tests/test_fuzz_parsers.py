"""The atheris targets of fuzz/ for every parser, run for a bounded number
of inputs, and regression tests for the parser bugs they found.

Targets (see fuzz/__init__.py and each module's docstring for the
documented outcomes it enforces):
  * fuzz.size    — rumpvm.param.parse_size/parse_limit/format_size,
                   Kernel(memlimit=...), RUMP_MEMLIMIT, the k.memlimit setter;
  * fuzz.trace   — rumpvm.trace.open_trace/load (every trace file format);
  * fuzz.control — mountd.control.parse_limit and mountd.control.write
                   (the /vm control files), called directly on a kernel;
  * fuzz.names   — mountd.tree.parse_id and the /proc/self/mounts field
                   unescaping of mountd.server.

atheris must run as a main program, so each target runs in a subprocess:
`python -m fuzz.<target> -atheris_runs=N`; exit status 0 means no input
broke a documented promise.  A crash input is written to the test's tmp
directory (its path is in the failure message).  The default run is 2000
inputs per target (a few seconds each); `test_fuzz_parser_stress` (marker
`stress`) runs RUMPVM_FUZZ_RUNS inputs per target (default 200000).

A target may tolerate a bug that has a regression test below, so that a
run goes on to find new ones, unless RUMPVM_FUZZ_STRICT=1 (none does now:
the bugs found so far are fixed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["size", "trace", "control", "names"]


def run_target(target: str, runs: int, tmp_path: Path, timeout: float) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("RUMP_MEMLIMIT", None)
    cmd = [sys.executable, "-m", f"fuzz.{target}", f"-atheris_runs={runs}", f"-artifact_prefix={tmp_path}/"]
    # The timeout only guards against a hang; a run normally takes seconds.
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace",
                          timeout=timeout)
    if proc.returncode != 0:
        crashes = sorted(str(p) for p in tmp_path.glob("crash-*"))
        tail = "\n".join(proc.stderr.splitlines()[-60:])
        pytest.fail(f"fuzz.{target} exited with {proc.returncode}; crash inputs {crashes}; reproduce with"
                    f" `{sys.executable} -m fuzz.{target} CRASH_FILE`\n{tail}")
    assert f"Done {runs} in" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_parser(target: str, tmp_path: Path) -> None:
    run_target(target, 2000, tmp_path, timeout=600)


@pytest.mark.stress
@pytest.mark.timeout(14400)
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_parser_stress(target: str, tmp_path: Path) -> None:
    run_target(target, int(os.environ.get("RUMPVM_FUZZ_RUNS", "200000")), tmp_path, timeout=14000)


# -- regression tests for bugs found by the targets ----------------------------------------


@pytest.mark.parametrize("column", [-2, -5])
def test_bug_read_trace_negative_column_indexerror(tmp_path: Path, column: int) -> None:
    """A negative `column` raised IndexError from the old trace reader; the
    documented errors of a trace file are ValueError and OSError."""
    from rumpvm.trace import load, open_trace

    path = tmp_path / "trace.txt"
    path.write_text("5\n6\n")
    with pytest.raises(ValueError):
        load(open_trace(path, column=column))


def test_bug_read_trace_int_column_ignored_with_header(tmp_path: Path) -> None:
    """An integer `column` was ignored when the header named a known page
    column (`obj_id,page` with column=1 read obj_id): silently wrong."""
    from rumpvm.trace import load, open_trace

    path = tmp_path / "trace.csv"
    path.write_text("obj_id,page\n5,6\n7,8\n")
    for column in ("page", 1):
        assert [v >> 1 for v in load(open_trace(path, column=column), compacted=False)] == [6, 8]


def test_bug_rump_memlimit_not_utf8(tmp_path: Path) -> None:
    """RUMP_MEMLIMIT holding bytes that are not UTF-8 makes Kernel() raise
    UnicodeDecodeError (hypercall.getparam decodes it strictly); a bad limit
    is VMError(EINVAL) (README, "Errors")."""
    code = ("import rumpvm\n"
            "try:\n"
            "    rumpvm.Kernel()\n"
            "except rumpvm.VMError as e:\n"
            "    assert e.errno == 22, e\n"
            "    print('EINVAL')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    envb[b"RUMP_MEMLIMIT"] = b"64\xffM"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=envb, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "EINVAL" in proc.stdout, proc.stderr[-1500:]
