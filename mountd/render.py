"""Rendering of kernel records as the text files of /vm.

This module owns the byte-exact formats of every text file under the mount.
Each function is pure: it takes records of the inspection API
(`rumpvm.inspect`) or plain dicts and returns `str`; it never calls the
kernel, so the formats can be checked (and benchmarked) without a mount.

Where Linux has a /proc file with the same purpose the format is Linux's,
character for character, so that existing parsers work:

- maps:    `%08lx-%08lx %c%c%c%c %08llx %02x:%02x %lu ` then, if the entry
           has a name, padding to column 73 and the name (fs/proc/task_mmu.c:
           `seq_setwidth(m, 25 + sizeof(void *) * 6 - 1)` then `seq_pad`).
           Lines without a name keep Linux's trailing space.
- smaps:   the maps line, then `Label:` padded to 16 columns, the value in kB
           right-aligned in 8, ` kB` (`SEQ_PUT_DEC`); `VmFlags:` last.
- meminfo: `Label:` padded to 16, `%8lu kB`.
- status:  `Name:\\t...`, `VmSize:\\t%8lu kB`.
- limits:  `%-25s %-20s %-20s %-10s` rows of fs/proc/base.c (proc_pid_limits),
           "unlimited" for RLIM_INFINITY, each row ending in the padded unit.
- swaps:   the header and `%*s%s\\t%lu\\t%s%lu\\t%s%d` rows of mm/swapfile.c.
- vmstat:  `name value`.

rumpvm-specific choices (no Linux equivalent to copy):
- the maps "inode" column carries the VM object id of the entry (0 for
  none), so `objects/<id>/` can be found from a maps line; dev is `00:00`.
- objects/<id>/info, pagedaemon/status: `name value` lines like vmstat;
  `size` in bytes, `resident`/`swapped` in pages, `shadow` is `-` for none.
- kmem/pools: one header line, then one aligned row per pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from rumpvm.constants import (
    INHERIT_NONE,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from rumpvm.resource import RLIM_INFINITY

if TYPE_CHECKING:
    from rumpvm.inspect import (
        KmemMapInfo,
        MapEntry,
        ObjectInfo,
        PoolInfo,
        ProcStatus,
        SmapsInfo,
        SwapInfo,
    )

# Column where the maps name starts: Linux pads the header to 72 characters
# (25 + 6 * sizeof(void *) - 1) and then writes one space.
_MAPS_NAME_PAD = 72
# The label column of meminfo/smaps lines, and the value width after it.
_LABEL_WIDTH = 16
_VALUE_WIDTH = 8


def _kb(nbytes: int) -> int:
    return nbytes >> 10


def _kb_format(label: str) -> str:
    """The `str.format` template of one `Label:   value kB` line (`kb_line`)."""
    head = f"{label}:"
    head = f"{head:<{_LABEL_WIDTH}}" if len(head) < _LABEL_WIDTH else head + " "
    width = max(1, _LABEL_WIDTH + _VALUE_WIDTH - len(head))
    return head.replace("{", "{{").replace("}", "}}") + f"{{:>{width}}} kB\n"


def kb_line(label: str, kb: int) -> str:
    """One `Label:   value kB` line as meminfo and smaps print it.

    The label with its colon is padded to 16 columns and the value
    right-aligned in the next 8 (a longer value pushes right, as `%8lu`
    does).  A label too long for its field gets one space and a value field
    shortened to keep 24 columns, as Linux prints `Private_Hugetlb: %7lu`.
    """
    return _kb_format(label).format(kb)


def perms(entry: MapEntry) -> str:
    """The 4-character permission column: `rwxp` / `r--s` ..."""
    return "".join((
        "r" if entry.prot & PROT_READ else "-",
        "w" if entry.prot & PROT_WRITE else "-",
        "x" if entry.prot & PROT_EXEC else "-",
        "s" if entry.shared else "p",
    ))


def maps_line(entry: MapEntry) -> str:
    """One /proc/<pid>/maps line for `entry`, newline included."""
    obj = entry.object if entry.object is not None else 0
    head = f"{entry.start:08x}-{entry.end:08x} {perms(entry)} {entry.offset:08x} 00:00 {obj} "
    if not entry.name:
        return head + "\n"
    return f"{head:<{_MAPS_NAME_PAD}} {entry.name}\n"


def maps(entries: Iterable[MapEntry]) -> str:
    """/proc/<pid>/maps: one line per map entry, in address order."""
    return "".join(map(maps_line, entries))


def vmflags(entry: MapEntry) -> str:
    """The smaps `VmFlags:` mnemonics, in Linux's order, each followed by a space."""
    flags = []
    if entry.prot & PROT_READ:
        flags.append("rd")
    if entry.prot & PROT_WRITE:
        flags.append("wr")
    if entry.prot & PROT_EXEC:
        flags.append("ex")
    if entry.shared:
        flags.append("sh")
    if entry.max_prot & PROT_READ:
        flags.append("mr")
    if entry.max_prot & PROT_WRITE:
        flags.append("mw")
    if entry.max_prot & PROT_EXEC:
        flags.append("me")
    if entry.shared:
        flags.append("ms")
    if entry.wired:
        flags.append("lo")
    if entry.advice == MADV_SEQUENTIAL:
        flags.append("sr")
    if entry.advice == MADV_RANDOM:
        flags.append("rr")
    if entry.inheritance == INHERIT_NONE:
        flags.append("dc")
    if entry.nocore:
        flags.append("dd")
    return "VmFlags: " + "".join(f + " " for f in flags) + "\n"


# The counter lines of an smaps block, in Linux's order.  None: a value of
# the entry, filled in by `smaps_block`; a number: the same for every entry
# (4 KiB pages, no huge pages, no lazily freed memory).
_SMAPS_ROWS: tuple[tuple[str, int | None], ...] = (
    ("Size", None), ("KernelPageSize", _kb(PAGE_SIZE)), ("MMUPageSize", _kb(PAGE_SIZE)),
    ("Rss", None), ("Pss", None), ("Shared_Clean", None), ("Shared_Dirty", None),
    ("Private_Clean", None), ("Private_Dirty", None), ("Referenced", None), ("Anonymous", None),
    ("LazyFree", 0), ("AnonHugePages", 0), ("ShmemPmdMapped", 0), ("FilePmdMapped", 0),
    ("Shared_Hugetlb", 0), ("Private_Hugetlb", 0),
    ("Swap", None), ("SwapPss", None), ("Locked", None),
)
# One template for all of them, made once: a block is then one format call
# (kb_line per line costs most of the time of a big smaps).  THPeligible is
# a bare number in the same 24 columns, no unit.
_SMAPS_BODY = "".join(_kb_format(label) if value is None else kb_line(label, value)
                      for label, value in _SMAPS_ROWS) + f"{'THPeligible:':<{_LABEL_WIDTH}}{0:>{_VALUE_WIDTH}}\n"


def smaps_block(info: SmapsInfo) -> str:
    """One /proc/<pid>/smaps block: the maps line, the counters, VmFlags."""
    e = info.entry
    # XXX the inspection API gives no per-slot share count, so SwapPss
    # is the unshared figure (exact unless swapped pages are shared).
    body = _SMAPS_BODY.format(*(_kb(v) for v in (
        e.end - e.start, info.rss, info.pss, info.shared_clean, info.shared_dirty, info.private_clean,
        info.private_dirty, info.referenced, info.anonymous, info.swap, info.swap, info.locked)))
    return maps_line(e) + body + vmflags(e)


def smaps(infos: Iterable[SmapsInfo]) -> str:
    """/proc/<pid>/smaps: one block per map entry."""
    return "".join(map(smaps_block, infos))


def _escape_name(name: str) -> str:
    # Linux status escapes backslash and newline so a name stays on one line.
    return name.replace("\\", "\\\\").replace("\n", "\\n")


def status(st: ProcStatus) -> str:
    """/proc/<pid>/status: the lines rumpvm has, in Linux's order."""
    def vm(label: str, nbytes: int) -> str:
        return f"{label}:\t{_kb(nbytes):>{_VALUE_WIDTH}} kB\n"

    return (
        f"Name:\t{_escape_name(st.name)}\n"
        f"State:\t{st.state}\n"
        f"Tgid:\t{st.pid}\n"
        f"Pid:\t{st.pid}\n"
        f"PPid:\t{st.ppid}\n"
        + vm("VmSize", st.vm_size)
        + vm("VmLck", st.vm_lck)
        + vm("VmRSS", st.vm_rss)
        + vm("VmStk", st.vm_stk)
        + vm("VmSwap", st.vm_swap)
    )


def _rlim(value: int) -> str:
    return "unlimited" if value == RLIM_INFINITY else str(value)


def limits(rows: Iterable[tuple[str, int, int, str]]) -> str:
    """/proc/<pid>/limits from (name, soft, hard, unit) rows, in the order given."""
    out = [f"{'Limit':<25} {'Soft Limit':<20} {'Hard Limit':<20} {'Units':<10}\n"]
    out.extend(f"{name:<25} {_rlim(soft):<20} {_rlim(hard):<20} {unit:<10}\n" for name, soft, hard, unit in rows)
    return "".join(out)


def meminfo(info: Mapping[str, int]) -> str:
    """/proc/meminfo from `k.meminfo()` (bytes; printed in kB, dict order)."""
    return "".join(kb_line(label, _kb(value)) for label, value in info.items())


def name_values(values: Mapping[str, object]) -> str:
    """`name value` lines (vmstat, pagedaemon/status), in dict order."""
    return "".join(f"{name} {value}\n" for name, value in values.items())


def _escape_path(path: str) -> str:
    # seq_file_path(..., " \t\n\\"): these characters become octal escapes.
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def swaps(areas: Iterable[SwapInfo]) -> str:
    """/proc/swaps: header, then one row per swap area (sizes in kB)."""
    out = ["Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"]
    for a in areas:
        path = _escape_path(a.path)
        pad = 40 - len(path) if len(path) < 40 else 1
        # Linux prints "file\t" so both types fill the same two tab stops.
        kind = a.type + "\t" if len(a.type) < 8 else a.type
        size, used = _kb(a.size), _kb(a.used)
        # A second tab keeps columns aligned while the number is short.
        size_tab = "\t" if size < 10000000 else ""
        used_tab = "\t" if used < 10000000 else ""
        out.append(f"{path}{' ' * pad}{kind}\t{size}\t{size_tab}{used}\t{used_tab}{a.priority}\n")
    return "".join(out)


def object_info(info: ObjectInfo) -> str:
    """objects/<id>/info: `name value` lines."""
    return name_values({
        "id": info.id,
        "type": info.type,
        "size": info.size,
        "refs": info.refs,
        "resident": info.resident,
        "swapped": info.swapped,
        "shadow": "-" if info.shadow is None else info.shadow,
        "backing_offset": info.backing_offset,
        "shadow_count": info.shadow_count,
    })


def kmem_map(info: KmemMapInfo) -> str:
    """kmem/<map>: the map's entries in maps format."""
    return maps(info.entries)


def pools(infos: Iterable[PoolInfo]) -> str:
    """kmem/pools: a header and one row per pool (size in bytes)."""
    fmt = "{:<20} {:>8} {:>8} {:>8} {:>12} {:>12}\n"
    out = [fmt.format("Name", "Size", "InUse", "Npages", "Nget", "Nput")]
    out.extend(fmt.format(p.name, p.size, p.inuse, p.npages, p.nget, p.nput) for p in infos)
    return "".join(out)


def limit(value: int | None) -> str:
    """The `limit` file: bytes, or `unlimited`."""
    return "unlimited\n" if value is None else f"{value}\n"
