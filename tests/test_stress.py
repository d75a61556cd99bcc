"""Stress: 8 threads of random VM calls under a moving memory limit, with swap,
a live /vm mount read by other processes, and a shadow model of every byte.

Workload (`stress_model.Worker`): each of 8 host threads owns up to 4
processes (its first one and their forks) and does random mmap (private,
MAP_SHARED|MAP_ANON, MAP_SHARED of the shared objects), munmap, mprotect,
madvise (MADV_FREE included), mlock/munlock, minherit (INHERIT_SHARE /
COPY / NONE), write (stamped whole pages, unaligned scribbles, short
writes), read/readinto (aligned, unaligned, across mappings and holes),
fork, exit, sleep and wake, under `Kernel(memlimit="4M", swap="64M",
oom_timeout=10)` with about twice the limit mapped and written.  One
object per thread (`k.create_object`) is written only by its owner (whole
pages with a version stamp, by `object_write` or a MAP_SHARED mapping) and
mapped read-only by the others, who accept any version between the one
committed before their read and the one pending after it.  Every read is
checked against the model; a fault must be the predicted SegmentationFault
(addr, code, access); a range call on a hole the predicted ENOMEM.
`OutOfMemory` is allowed (counted): the call changed nothing, a write's
`.written` bytes excepted.  Any other exception fails the run.

Around it:
- a controller thread moves the limit live (3M, 2M, 4M, 6M, 2.5M, 4M, ...)
  every few batches; a refusal (VMError ENOMEM) must leave the old limit;
- a sampler thread takes `k.stats()` after every batch of 25 operations:
  resident <= the limit in force (the higher of the two while a lowering
  is under way, the new one once the setter returned);
- FUSE readers (subprocesses of `stress_model.py reader`) loop over
  /vm/proc/*/{status,maps,smaps,mem} and /vm/meminfo of a real mount:
  formats are checked strictly and every stamped page in mem must be
  whole, at its own address, of its own thread or a known object page;
- rounds end in a stop-the-world barrier where `k.check()` runs (the
  controller is held off meanwhile); each thread first reads back all
  its memory;
- a watchdog fails the run, with every thread's stack, if any call waits
  longer than oom_timeout + 30 s.

The swapper runs with `k.maxslp = 0`: every sleeping process is swapped
out at the next shortage (RUMPVM_STRESS_MAXSLP sets another value).

The default run is 4 rounds of a fixed number of operations per thread
(about 20 s on a 2-vCPU VM); `-m stress` runs rounds until
RUMPVM_STRESS_SECONDS (default 120) have passed.  RUMPVM_STRESS_SEED
picks the operations (default 0; random under -m stress).  Both print
operations per second and the longest wait of any call.
"""

from __future__ import annotations

import atexit
import errno
import faulthandler
import json
import logging
import os
import queue
import random
import select
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from pages import settle
from stress_model import PAGE, SharedObj, StopRun, Worker

import rumpvm
import rumpvm.policy
from rumpvm import constants

NTHREADS = 8
READERS = 2
OOM_TIMEOUT = 10.0
HANG = OOM_TIMEOUT + 30.0  # a call waiting longer than this is a hang
M = 1 << 20
START_LIMIT = 4 * M
# The controller's cycle; 640K is below what wired u-areas, mlocked pages and
# kernel memory need at times: a refusal (ENOMEM) that must keep the old limit.
LIMITS = [3 * M, 2 * M, 4 * M, 6 * M, 640 << 10, 4 * M, 2560 << 10, 4 * M]
OBJ_PAGES = 16
BATCH = 25  # operations between two samples
CONTROL_EVERY = 6  # samples between two limit changes
DEFAULT_ROUNDS = 4
DEFAULT_OPS = 5000  # per thread and round in the default run
STRESS_OPS = 1500  # per thread and round under -m stress
TESTS = Path(__file__).parent


class LogCollector(logging.Handler):
    """ERROR records of the kernel and the mount (a pagedaemon scan that
    failed is only logged): each one fails the run."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self.loggers = [logging.getLogger(name) for name in ("rumpvm", "mountd")]
        for lg in self.loggers:
            lg.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))

    def remove(self) -> None:
        for lg in self.loggers:
            lg.removeHandler(self)


class Timed:
    """A thread's in-flight call (for the watchdog) and its longest one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inflight: tuple[str, float] | None = None
        self.longest = (0.0, "")
        self.calls = 0

    def call(self, what: str, fn: Any, *args: Any) -> Any:
        t0 = time.monotonic()
        self.inflight = (f"{self.name}: {what}", t0)
        try:
            return fn(*args)
        finally:
            dt = time.monotonic() - t0
            self.inflight = None
            self.calls += 1
            if dt > self.longest[0]:
                self.longest = (dt, what)


def set_limit(k: rumpvm.Kernel, value: int) -> None:
    k.memlimit = value


class Controller(Timed):
    """Moves the limit each time it is kicked; `allowed` is the bound on
    resident memory the sampler may rely on at any instant."""

    def __init__(self, k: rumpvm.Kernel) -> None:
        super().__init__("controller")
        self.k = k
        self.allowed = START_LIMIT
        self.quiet = threading.Lock()  # held by a limit change and by k.check()
        self.kick = threading.Event()
        self.changes = self.refused = 0
        self.problems: list[str] = []

    def run(self, stop: threading.Event) -> None:
        i = 0
        while True:
            self.kick.wait()
            self.kick.clear()
            if stop.is_set():
                return
            new = LIMITS[i % len(LIMITS)]
            i += 1
            with self.quiet:
                old = self.k.physmem.limit
                assert old is not None
                if new > old:
                    self.allowed = new  # raising: the new bound holds from the start
                try:
                    self.call(f"memlimit {old >> 10}K -> {new >> 10}K", set_limit, self.k, new)
                except rumpvm.VMError as e:
                    now = self.k.memlimit
                    if e.errno != errno.ENOMEM or now != old:
                        self.problems.append(f"memlimit {old} -> {new}: {e!r}, limit now {now}")
                        return
                    self.refused += 1
                    self.allowed = old
                    continue
                now = self.k.memlimit
                st = self.k.stats()
                self.allowed = new
                if now != new or st["resident"] > new:
                    self.problems.append(f"memlimit {old} -> {new}: limit {now}, resident {st['resident']}")
                    return
                self.changes += 1


def stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- thread {names.get(tid, tid)}\n" + "".join(traceback.format_stack(frame))
                     for tid, frame in sys._current_frames().items())


def start_readers(root: Path, objs: list[SharedObj]) -> list[subprocess.Popen[str]]:
    objects = json.dumps({o.oid: [o.owner, o.npages] for o in objs})
    limits = json.dumps(sorted({START_LIMIT, *LIMITS}))
    readers = [subprocess.Popen([sys.executable, str(TESTS / "stress_model.py"), "reader", str(root), objects,
                                 limits, str(i)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(READERS)]
    for r in readers:
        assert r.stdout is not None
        # "ready" after one full pass: the mount answers them (bounded, in
        # case a FUSE request hangs).
        line = r.stdout.readline() if select.select([r.stdout], [], [], HANG)[0] else "(no answer)"
        if line != "ready\n":
            r.kill()
            raise AssertionError(f"reader did not start: {line!r} {r.communicate()[1][-3000:]}")
    return readers


def run_stress(tmp_path: Path, rounds: int | None, seconds: float | None, ops: int, seed: int = 0,
               policy: str = "clock") -> str:
    """The run; returns the report.  `rounds` bounds it by operations,
    `seconds` by time (checked at the quiet points); `policy` is the
    pagedaemon's replacement policy (seeded with `seed`)."""
    from fusemount import is_live

    import mountd

    assert (constants.PROT_READ, constants.PROT_WRITE, constants.INHERIT_SHARE, constants.INHERIT_COPY,
            constants.INHERIT_NONE, constants.PAGE_SIZE) == (1, 2, 0, 1, 2, PAGE)
    k = rumpvm.Kernel(memlimit=START_LIMIT, swap="64M", oom_timeout=OOM_TIMEOUT, policy=policy, policy_seed=seed)
    # Every sleeper is swapped out at the next shortage (the default waits 20 s).
    k.maxslp = float(os.environ.get("RUMPVM_STRESS_MAXSLP", "0"))
    logged = LogCollector()
    hung: list[str] = []
    handle = None
    readers: list[subprocess.Popen[str]] = []
    try:
        objs = []
        for t in range(NTHREADS):
            h = k.create_object(OBJ_PAGES * PAGE)
            objs.append(SharedObj(h, h.id, OBJ_PAGES, t))
        mnt = tmp_path / "vm"
        mnt.mkdir()
        handle = mountd.mount_in_thread(k, str(mnt))
        assert is_live(mnt)
        readers = start_readers(mnt, objs)

        stop = threading.Event()
        done = threading.Event()
        errors: list[str] = []
        barrier = threading.Barrier(NTHREADS + 1)
        samples: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        ctl = Controller(k)
        sampler = Timed("sampler")
        main = Timed("main")
        workers = [Worker(t, k, objs, seed=seed * 1000 + t) for t in range(NTHREADS)]
        over: list[str] = []
        nsamples = 0

        def fail(msg: str) -> None:
            errors.append(msg)
            stop.set()
            barrier.abort()

        def work(w: Worker) -> None:
            try:
                w.setup()
                while True:
                    for _ in range(ops):
                        if stop.is_set():
                            raise StopRun
                        w.step()
                        if w.ops % BATCH == 0:
                            samples.put(w.t)
                    w.sweep()
                    barrier.wait()  # the world stops: main checks
                    barrier.wait()  # and resumes (or ends) it
                    if stop.is_set():
                        return
            except (StopRun, threading.BrokenBarrierError):
                pass
            except BaseException:  # noqa: BLE001 - any exception fails the run
                fail(f"thread {w.t} after {w.ops} operations:\n{traceback.format_exc()}")

        def sample() -> None:
            nonlocal nsamples
            try:
                while samples.get() is not None:
                    a1 = ctl.allowed
                    st = sampler.call("stats", k.stats)
                    a2 = ctl.allowed
                    nsamples += 1
                    if st["resident"] > max(a1, a2):
                        over.append(f"resident {st['resident']} > limit {max(a1, a2)} (stats limit {st['memlimit']})")
                    if nsamples % CONTROL_EVERY == 0:
                        ctl.kick.set()
            except BaseException:  # noqa: BLE001
                fail(f"sampler:\n{traceback.format_exc()}")

        def control() -> None:
            try:
                ctl.run(stop)
            except BaseException:  # noqa: BLE001
                fail(f"controller:\n{traceback.format_exc()}")
            if ctl.problems:
                fail(f"controller: {ctl.problems}")

        def watchdog() -> None:
            watched: list[Any] = [*workers, ctl, sampler, main]
            while not done.wait(1.0):  # a periodic look, not a wait for a state
                now = time.monotonic()
                for who in watched:
                    inflight = who.inflight
                    if inflight is not None and now - inflight[1] > HANG:
                        faulthandler.dump_traceback(all_threads=True)
                        hung.append(f"{inflight[0]} has waited {now - inflight[1]:.0f} s (> oom_timeout + 30 s)\n"
                                    + stacks())
                        fail(hung[-1])
                        return

        threads = [threading.Thread(target=work, args=(w,), name=f"stress-{w.t}", daemon=True) for w in workers]
        helpers = [threading.Thread(target=f, name=f"stress-{f.__name__}", daemon=True)
                   for f in (sample, control, watchdog)]
        for th in helpers + threads:
            th.start()
        t0 = time.monotonic()
        checks = 0
        limit_at_checks = []
        try:
            for r in range(rounds if rounds is not None else 1 << 30):
                barrier.wait()  # every worker is between operations
                with ctl.quiet:
                    main.call("check", k.check)
                    checks += 1
                    st = main.call("stats", k.stats)
                    limit_at_checks.append(st["memlimit"])
                    if st["resident"] > st["memlimit"]:
                        over.append(f"at a quiet point: resident {st['resident']} > limit {st['memlimit']}")
                if logged.records:
                    fail("logged by the kernel:\n" + "\n".join(logged.records[:3]))
                for rd in readers:
                    if rd.poll() is not None:
                        fail(f"a /vm reader exited early ({rd.returncode}): {rd.communicate()[1][-3000:]}")
                last = (r + 1 == rounds) if rounds is not None else time.monotonic() - t0 >= (seconds or 0)
                if last:
                    stop.set()
                barrier.wait()
                if last:
                    break
        except threading.BrokenBarrierError:
            pass
        elapsed = time.monotonic() - t0
        stop.set()
        ctl.kick.set()
        samples.put(None)
        deadline = time.monotonic() + HANG + 30
        for th in threads + helpers[:2]:
            th.join(max(0.0, deadline - time.monotonic()))
            if th.is_alive() and not hung:
                hung.append(f"{th.name} did not end\n" + stacks())
        done.set()
        helpers[2].join()
        assert not hung, hung[0]
        assert errors == [], "\n\n".join(errors[:5])
        assert logged.records == [], "\n".join(logged.records[:3])
        assert over == [], over[:10]

        reader_results = []
        for rd in readers:
            out, err = rd.communicate("", timeout=HANG)
            assert rd.returncode == 0, f"/vm reader failed:\n{err[-5000:]}"
            reader_results.append(json.loads(out.splitlines()[-1]))
        readers = []
        handle.unmount(HANG)
        assert not handle.alive

        # Quiet again: everything reads back, checks, and goes away cleanly.
        for w in workers:
            w.sweep()
        settle(k, 30)
        k.check()
        st = k.stats()
        for w in workers:
            w.teardown()
        for o in objs:
            k.detach_object(o.handle)
        settle(k, 30)
        k.check()
        left = k.stats()
        leftover = {key: left[key] for key in ("objects", "active", "inactive", "swpginuse", "procs")}
        assert leftover == {"objects": 1, "active": 0, "inactive": 0, "swpginuse": 0, "procs": 0}, leftover

        nops = sum(w.ops for w in workers)
        ncalls = sum(w.calls for w in workers)
        counts: dict[str, int] = {}
        for w in workers:
            for key, v in w.counts.items():
                counts[key] = counts.get(key, 0) + v
        waits = [(w.longest[0], f"thread {w.t} {w.longest[1]}") for w in workers]
        waits += [(ctl.longest[0], f"controller {ctl.longest[1]}"), (sampler.longest[0], "sampler stats"),
                  (main.longest[0], f"main {main.longest[1]}")]
        waits += [(res["longest"], "/vm reader read") for res in reader_results]
        longest = max(waits)
        rc: dict[str, int] = {}
        for res in reader_results:
            for key, v in res["counts"].items():
                rc[key] = rc.get(key, 0) + v
        assert st["pageouts"] > 0 and st["pageins"] > 0, st
        assert counts.get("forks", 0) > 0 and counts.get("exits", 0) > 0 and counts.get("reads", 0) > 0, counts
        assert ctl.changes > 0, "the limit never moved"
        assert rc.get("pages", 0) > 0 and rc.get("stamped", 0) > 0, rc
        assert checks >= min(rounds or 2, 2)
        return (
            f"stress (seed {seed}): {NTHREADS} threads, {nops} ops ({ncalls} calls) in {elapsed:.1f} s"
            f" = {nops / elapsed:.0f} ops/s; "
            f"longest wait {longest[0]:.2f} s ({longest[1]}); {checks} quiet checks; {nsamples} samples\n"
            f"  oom {counts.get('oom', 0)}, short writes {counts.get('short_writes', 0)}, "
            f"segv as predicted {counts.get('segv', 0)}, "
            f"enomem {sum(v for key, v in counts.items() if key.startswith('enomem'))}, "
            f"verified {counts.get('verified_bytes', 0) >> 20} MiB; limit changes {ctl.changes} "
            f"(refused {ctl.refused}); kernel: pageouts {st['pageouts']} pageins {st['pageins']} "
            f"swapouts {st['swapouts']} swapins {st['swapins']} forks {st['forks']} oomfails {st['oomfails']}\n"
            f"  /vm readers: {rc.get('passes', 0)} passes, {rc.get('pages', 0)} mem pages "
            f"({rc.get('stamped', 0)} stamped) checked, {rc.get('maps', 0)} maps, {rc.get('smaps', 0)} smaps, "
            f"{rc.get('meminfo', 0)} meminfo; tolerated "
            f"{ {key: v for key, v in rc.items() if key.startswith('errno')} }"
        )
    finally:
        logged.remove()
        for rd in readers:
            rd.kill()
            rd.communicate()
        if hung:
            # A deadlocked kernel cannot be closed or unmounted in order:
            # detach the mount lazily, leave the kernel, and make sure the
            # process cannot hang for ever on it.
            subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "vm")], capture_output=True, timeout=20)
            if handle is not None:
                atexit.unregister(handle.unmount)
            faulthandler.dump_traceback_later(300, exit=True)
        else:
            if handle is not None:
                handle.unmount(HANG)
            k.close()


def test_stress_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default run: bounded by operation count (DEFAULT_ROUNDS rounds)."""
    seed = int(os.environ.get("RUMPVM_STRESS_SEED", "0"))
    report = run_stress(tmp_path, DEFAULT_ROUNDS, None, DEFAULT_OPS, seed)
    with capsys.disabled():
        print("\n" + report)


@pytest.mark.stress
@pytest.mark.parametrize("policy", sorted(set(rumpvm.policy.POLICIES) - {"clock"}))
def test_stress_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str) -> None:
    """Every other replacement policy under the same load (their own page
    tracking is verified by k.check() at every quiet point), each for
    RUMPVM_STRESS_POLICY_SECONDS (default 20)."""
    seconds = float(os.environ.get("RUMPVM_STRESS_POLICY_SECONDS", "20"))
    seed = int(os.environ.get("RUMPVM_STRESS_SEED", str(random.randrange(1 << 20))))
    report = run_stress(tmp_path, None, seconds, STRESS_OPS, seed, policy)
    with capsys.disabled():
        print(f"\n[{policy}] " + report)


@pytest.mark.stress
def test_stress_long(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """RUMPVM_STRESS_SECONDS of rounds (default 120)."""
    seconds = float(os.environ.get("RUMPVM_STRESS_SECONDS", "120"))
    seed = int(os.environ.get("RUMPVM_STRESS_SEED", str(random.randrange(1 << 20))))
    report = run_stress(tmp_path, None, seconds, STRESS_OPS, seed)
    with capsys.disabled():
        print("\n" + report)
