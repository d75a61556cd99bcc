"""/vm/proc/<pid>/{status,limits,maps} for the process glue: run states,
swapped-out processes, resource limits and stacks, read with a real `cat`
on a real mount.

Reading /vm never changes the VM: the status and limits of a swapped-out
process are read without swapping it in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusemount import KB_LINE, STATUS_LINE, STATUS_VM_LINE, check_maps_line, mounted, run
from pages import settle

import hypercall
import rumpvm
from mountd import render
from rumpvm import MAP_SHARED, PAGE_SIZE, PROT_READ, inspect, resource
from rumpvm.proc import STATE_NAMES

P = PAGE_SIZE
# The status lines rumpvm has, in the order Linux prints them.
STATUS_LABELS = ["Name", "State", "Tgid", "Pid", "PPid", "VmSize", "VmLck", "VmRSS", "VmStk", "VmSwap"]
LIMITS_HEADER = "Limit                     Soft Limit           Hard Limit           Units     "
LIMIT_VALUE = re.compile(r"unlimited|\d+")


@pytest.fixture
def vm(kernel, tmp_path: Path) -> Iterator[Path]:
    with mounted(kernel, tmp_path / "vm") as root:
        yield root


def status_of(path: Path) -> dict[str, str]:
    """The fields of a status file read with cat, checked line by line, in order."""
    fields: dict[str, str] = {}
    for line in run("cat", path).stdout.splitlines():
        m = STATUS_LINE.fullmatch(line) or STATUS_VM_LINE.fullmatch(line)
        assert m is not None, line
        fields[m["label"]] = m["value"].strip()
    assert list(fields) == STATUS_LABELS
    return fields


def limits_rows(text: str) -> dict[str, tuple[str, str, str]]:
    """name -> (soft, hard, unit) of a limits file, each row checked column by
    column: fs/proc/base.c prints "%-25s %-20s %-20s " and then, if the
    limit has a unit, "%-10s"."""
    assert text.endswith("\n")
    header, *lines = text[:-1].split("\n")
    assert header == LIMITS_HEADER
    rows = {}
    for line in lines:
        assert line[25] == line[46] == line[67] == " ", line
        name, soft, hard, unit = line[:25].rstrip(), line[26:46].rstrip(), line[47:67].rstrip(), line[68:]
        assert LIMIT_VALUE.fullmatch(soft) and LIMIT_VALUE.fullmatch(hard), line
        assert " " not in soft + hard and (unit == "" or (len(unit) == 10 and unit[0] != " ")), line
        rows[name] = (soft, hard, unit.rstrip())
    return rows


# -- formats ------------------------------------------------------------------

def test_status_labels_are_in_linux_order() -> None:
    host = [line.split(":")[0] for line in Path("/proc/self/status").read_text().splitlines()]
    assert [label for label in host if label in STATUS_LABELS] == STATUS_LABELS


def test_limits_format_is_the_hosts() -> None:
    host = limits_rows(Path("/proc/self/limits").read_text())  # the parser reads Linux's own file
    assert host["Max stack size"][2] == "bytes"
    ours = render.limits([("Max data size", resource.RLIM_INFINITY, resource.RLIM_INFINITY, "bytes"),
                          ("Max stack size", 8388608, 536870912, "bytes")])
    assert ours == (LIMITS_HEADER + "\n"
                    + "Max data size             unlimited            unlimited            bytes     \n"
                    + "Max stack size            8388608              536870912            bytes     \n")
    assert limits_rows(ours)["Max stack size"] == ("8388608", "536870912", "bytes")


def test_host_memory_is_the_hosts_memtotal() -> None:
    memtotal = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
    assert hypercall.host_memory() == int(memtotal.split()[1]) * 1024


# -- status -------------------------------------------------------------------

def test_status_fields_and_run_states(kernel, vm: Path) -> None:
    parent = kernel.spawn(name="parent")
    p = parent.fork("child")
    a = p.mmap(16 * P)
    p.write(a, b"x" * (3 * P))
    p.mlock(a, 2 * P)
    p.map_stack(1 << 20, init_size=32 * P)
    path = vm / "proc" / str(p.pid) / "status"
    fields = status_of(path)
    assert fields["Name"] == "child" and fields["State"] == "R (running)"
    assert fields["Tgid"] == fields["Pid"] == str(p.pid) and fields["PPid"] == str(parent.pid)
    assert int(fields["VmStk"]) == 128 and int(fields["VmLck"]) == 8 and int(fields["VmRSS"]) == 12
    assert int(fields["VmSize"]) == 16 * 4 + 128 and int(fields["VmSwap"]) == 0
    p.sleep()
    assert status_of(path)["State"] == "S (sleeping)"
    p.stop()
    assert status_of(path)["State"] == "T (stopped)"
    p.cont()
    assert status_of(path)["State"] == "R (running)"
    assert status_of(vm / "proc" / str(parent.pid) / "status")["PPid"] == "0"


def smaps_sums(text: str) -> dict[str, int]:
    """Each kB counter of an smaps file summed over its entries, and
    `Stack`: the sizes of the [stack] entries."""
    sums: dict[str, int] = {"Stack": 0}
    stack = False
    for line in text.splitlines():
        m = KB_LINE.fullmatch(line)
        if m is None:
            if not line.startswith(("VmFlags:", "THPeligible:")):
                stack = check_maps_line(line)["name"] == "[stack]"
            continue
        sums[m["label"]] = sums.get(m["label"], 0) + int(m["value"])
        if stack and m["label"] == "Size":
            sums["Stack"] += int(m["value"])
    return sums


def test_status_values_are_the_smaps_sums(small_kernel, tmp_path: Path) -> None:
    """status is computed without smaps records (inspect.status_record), and
    shows what the sums of smaps showed: VmRSS, VmSwap, VmLck, VmSize and
    VmStk of processes with swapped pages, copy-on-write chains, a shared
    object, wired memory and a stack, each equal to its smaps sum."""
    k = small_kernel
    p = k.spawn(name="sums")
    a = p.mmap(20 << 20)  # over the 16M limit: pages go to swap
    for off in range(0, 20 << 20, P):
        p.write(a + off, b"s")
    for i in range(8):  # more entries: every other MiB read-only
        p.mprotect(a + (2 * i + 1) * (1 << 20), 1 << 20, PROT_READ)
    o = k.create_object(16 * P)
    p.write(p.mmap(16 * P, flags=MAP_SHARED, obj=o), b"shared")
    p.mlock(a, 4 * P)
    p.map_stack(1 << 20, init_size=8 * P)
    c = p.fork("cow")
    for off in range(0, 1 << 20, 4 * P):  # the first MiB, writable
        c.write(a + off, b"c")  # copies: a shadow over the swapped parent pages
    settle(k)
    seen = {}
    with mounted(k, tmp_path / "vm") as vm:
        for q in (p, c):
            d = vm / "proc" / str(q.pid)
            status, sums = status_of(d / "status"), smaps_sums(run("cat", d / "smaps").stdout)
            assert {label: int(status[label]) for label in ("VmRSS", "VmSwap", "VmLck", "VmSize", "VmStk")} \
                == {"VmRSS": sums["Rss"], "VmSwap": sums["Swap"], "VmLck": sums["Locked"], "VmSize": sums["Size"],
                    "VmStk": sums["Stack"]}, q
            with k.gate:
                direct = inspect.status_record(q.vmspace, q.name, STATE_NAMES[q.state], q.pid, q.ppid)
            assert direct == q.status()
            assert (direct.vm_rss >> 10, direct.vm_swap >> 10) == (sums["Rss"], sums["Swap"])
            seen[q.name] = sums
    # The figures are about this workload: swap on both sides of the fork,
    # the parent's 4 wired pages (a fork does not inherit wiring), 8-page stacks.
    assert all(sums["Swap"] > 0 and sums["Rss"] > 0 and sums["Stack"] == 32 for sums in seen.values())
    assert (seen["sums"]["Locked"], seen["cow"]["Locked"]) == (16, 0)


def test_swapped_out_status_is_read_without_swapping_in(tmp_path: Path) -> None:
    with rumpvm.Kernel(memlimit="2M", swap="16M", wired_limit="2M") as k:
        k.maxslp = 0  # every sleeper goes as soon as memory is short
        s = k.spawn("sleeper")
        a = s.mmap(16 * P)
        s.write(a, b"s" * (16 * P))
        s.sleep()
        # Fill memory from another process with wired pages: the pagedaemon
        # pages out what it can, and then the swapper must take the sleeper.
        filler = k.spawn("filler")
        step, size = 16 * P, 2 << 20
        b = filler.mmap(size)
        for off in range(0, size, step):
            if s.state == "W":
                break
            filler.mlock(b + off, step)
        assert s.state == "W", k.stats()
        swapins = k.stats()["swapins"]
        with mounted(k, tmp_path / "vm") as vm:
            fields = status_of(vm / "proc" / str(s.pid) / "status")
            assert fields["State"] == "W (swapped out)"
            assert int(fields["VmSize"]) == 64 and int(fields["VmRSS"]) + int(fields["VmSwap"]) == 64
            limits = limits_rows(run("cat", vm / "proc" / str(s.pid) / "limits").stdout)
            assert limits["Max stack size"][:2] == (str(resource.DFLSSIZ), str(resource.MAXSSIZ))
            # Nothing else under proc/<pid> swaps it in either.
            d = vm / "proc" / str(s.pid)
            run("ls", "-l", d)
            assert len(run("cat", d / "maps").stdout.splitlines()) == 1 and run("cat", d / "smaps").stdout
            dd = run("dd", f"if={d / 'mem'}", "bs=4096", f"skip={a // P}", "count=1", "status=none", text=False)
            assert dd.stdout == b"s" * P
            assert "State:\tW (swapped out)" in run("cat", d / "status").stdout
        assert s.state == "W" and k.stats()["swapins"] == swapins
        filler.munlock(b, size)
        s.wake()  # swapped in, its memory intact
        assert s.state == "R" and s.read(a, 16 * P) == b"s" * (16 * P)
        k.check()


# -- limits and maps -------------------------------------------------------------

def test_limits_values(kernel, vm: Path) -> None:
    p = kernel.spawn(name="limits")
    p.setrlimit(resource.RLIMIT_STACK, 1 << 20, 4 << 20)
    p.setrlimit(resource.RLIMIT_AS, 1 << 30, resource.RLIM_INFINITY)
    p.setrlimit(resource.RLIMIT_MEMLOCK, 65536, 65536)
    child = p.fork("inherits")
    text = run("cat", vm / "proc" / str(child.pid) / "limits").stdout
    rows = limits_rows(text)
    assert list(rows) == [name for name, _ in resource.RLIMITS.values()]  # Linux's order
    assert rows["Max stack size"] == (str(1 << 20), str(4 << 20), "bytes")
    assert rows["Max address space"] == (str(1 << 30), "unlimited", "bytes")
    assert rows["Max locked memory"] == ("65536", "65536", "bytes")
    assert rows["Max data size"] == ("unlimited", "unlimited", "bytes")
    for r, (name, _) in resource.RLIMITS.items():
        soft, hard = child.getrlimit(r)
        assert rows[name][:2] == tuple("unlimited" if v == resource.RLIM_INFINITY else str(v) for v in (soft, hard))
    assert run("ls", vm / "proc" / str(p.pid)).stdout.split() == ["limits", "maps", "mem", "smaps", "status"]


def test_maps_names_stack_entries(kernel, vm: Path) -> None:
    p = kernel.spawn(name="stack")
    a = p.mmap(4 * P)
    top = p.map_stack(1 << 20, init_size=8 * P)
    p.write(top - 16 * P, b"grow")  # grows the stack down: still one [stack] entry
    lines = run("cat", vm / "proc" / str(p.pid) / "maps").stdout.splitlines()
    matches = [check_maps_line(line) for line in lines]
    stack = [m for m in matches if m["name"] == "[stack]"]
    assert len(stack) == 1 and int(stack[0]["end"], 16) == top
    assert stack[0].start("name") == 73  # Linux pads to 72 columns, then one space
    assert int(stack[0]["start"], 16) == next(e.start for e in p.maps() if e.name == "[stack]")
    plain = [m for m in matches if int(m["start"], 16) == a]
    assert len(plain) == 1 and plain[0]["name"] is None and plain[0].string.endswith(" ")
