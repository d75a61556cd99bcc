"""The /proc formats of mountd.render, without a mount.

The strict regexes of tests/fusemount.py are first checked against the
host's own /proc files (so they describe Linux, not just us), then against
what `mountd.render` makes of inspection records: column widths, padding,
the trailing space of nameless maps lines, units.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fusemount import (
    MAPS_NAME_COLUMN,
    STATUS_LINE,
    STATUS_VM_LINE,
    SWAPS_HEADER,
    SWAPS_LINE,
    THP_LINE,
    VMFLAGS_LINE,
    VMSTAT_LINE,
    check_kb_line,
    check_maps_line,
)

from mountd import render
from rumpvm import INHERIT_COPY, INHERIT_NONE, MADV_NORMAL, MADV_RANDOM, PROT_EXEC, PROT_READ, PROT_WRITE
from rumpvm.inspect import MapEntry, ProcStatus, SmapsInfo, SwapInfo

RW = PROT_READ | PROT_WRITE
ALL = RW | PROT_EXEC


def entry(start: int = 0x10000, end: int = 0x12000, prot: int = RW, name: str = "", **kw: object) -> MapEntry:
    fields: dict[str, object] = dict(max_prot=ALL, inheritance=INHERIT_COPY, shared=False, wired=False,
                                     object=7, offset=0, advice=MADV_NORMAL, needs_copy=False)
    fields.update(kw)
    return MapEntry(start, end, prot, name=name, **fields)  # type: ignore[arg-type]


# -- the regexes are Linux's -------------------------------------------------

def test_regexes_accept_host_maps_and_smaps() -> None:
    for line in Path("/proc/self/maps").read_text().splitlines():
        check_maps_line(line)
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line.startswith("VmFlags:"):
            assert VMFLAGS_LINE.fullmatch(line), line
        elif line.startswith("THPeligible:"):
            assert THP_LINE.fullmatch(line), line
        elif line.endswith(" kB"):
            check_kb_line(line)
        elif not line.startswith("ProtectionKey:"):
            check_maps_line(line)


def test_regexes_accept_host_meminfo_vmstat_status_swaps() -> None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.endswith(" kB"):
            check_kb_line(line)
    for line in Path("/proc/vmstat").read_text().splitlines():
        assert VMSTAT_LINE.fullmatch(line), line
    status = Path("/proc/self/status").read_text().splitlines()
    for label in ("Name", "State", "Tgid", "Pid", "PPid"):
        assert any((m := STATUS_LINE.fullmatch(line)) and m["label"] == label for line in status)
    for line in status:
        if line.startswith(("VmSize", "VmLck", "VmRSS", "VmSwap")):
            m = STATUS_VM_LINE.fullmatch(line)
            assert m is not None and len(m["value"]) == 8, line
    swaps = Path("/proc/swaps").read_text().splitlines()
    assert swaps[0] == SWAPS_HEADER
    for line in swaps[1:]:
        assert SWAPS_LINE.fullmatch(line), line


# -- rendering ---------------------------------------------------------------

def test_maps_line_columns() -> None:
    nameless = render.maps_line(entry())
    assert nameless == "00010000-00012000 rw-p 00000000 00:00 7 \n"
    named = render.maps_line(entry(0x7FFFFFFDE000, 0x7FFFFFFFF000, name="[stack]"))
    assert named.index("[stack]") == MAPS_NAME_COLUMN
    check_maps_line(named.rstrip("\n"))
    shared = render.maps_line(entry(prot=PROT_READ | PROT_EXEC, shared=True, object=None, offset=0x3000))
    assert shared.startswith("00010000-00012000 r-xs 00003000 00:00 0 ")


def test_smaps_block_matches_linux_layout() -> None:
    e = entry(wired=True, advice=MADV_RANDOM, inheritance=INHERIT_NONE)
    info = SmapsInfo(entry=e, rss=8192, pss=4096, swap=4096, locked=8192, referenced=4096, anonymous=8192,
                     shared_clean=0, shared_dirty=8192, private_clean=0, private_dirty=0)
    lines = render.smaps_block(info).splitlines()
    check_maps_line(lines[0])
    values = {}
    for line in lines[1:-2]:
        m = check_kb_line(line)
        values[m["label"]] = int(m["value"])
    assert THP_LINE.fullmatch(lines[-2])
    assert lines[-1] == "VmFlags: rd wr mr mw me lo rr dc "
    assert values["Size"] == 8 and values["Rss"] == 8 and values["Pss"] == 4
    assert values["Swap"] == 4 and values["Locked"] == 8 and values["Shared_Dirty"] == 8
    assert values["KernelPageSize"] == values["MMUPageSize"] == 4
    assert list(values)[:4] == ["Size", "KernelPageSize", "MMUPageSize", "Rss"]


def test_meminfo_and_status_widths() -> None:
    text = render.meminfo({"MemTotal": 1 << 30, "Inactive(anon)": 123 << 10, "KernelAlloc": 0})
    assert text.splitlines() == [
        "MemTotal:        1048576 kB",
        "Inactive(anon):      123 kB",
        "KernelAlloc:           0 kB",
    ]
    st = render.status(ProcStatus("a\nb", "S (sleeping)", 3, 1, 1 << 20, 8192, 0, 0)).splitlines()
    assert st[0] == "Name:\ta\\nb"
    assert "VmSize:\t    1024 kB" in st and "VmRSS:\t       8 kB" in st


def test_swaps_rows_like_linux() -> None:
    text = render.swaps([SwapInfo("/tmp/my swap", "file", 64 << 20, 4 << 10, -2)])
    header, row = text.splitlines()
    assert header == SWAPS_HEADER
    assert row == "/tmp/my\\040swap" + " " * (40 - 15) + "file\t\t65536\t\t4\t\t-2"
    assert SWAPS_LINE.fullmatch(row)


@pytest.mark.parametrize("value, text", [(None, "unlimited\n"), (32 << 20, "33554432\n")])
def test_limit(value: int | None, text: str) -> None:
    assert render.limit(value) == text
