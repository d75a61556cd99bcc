"""The namespace of /vm: which nodes exist, their inode numbers, their text.

A node is a `(Kind, id)` pair: the kind says what the file is (`meminfo`,
`proc/<pid>/maps`, ...) and `id` names the process, object or kmem map it
belongs to (0 for the fixed files).  The tree keeps no table: an inode number
is a pure function of the node and back, so

- inode numbers are stable for as long as the process or object lives
  (they are derived from its pid / object id), and identical across mounts;
- nothing has to be cleaned up when a process exits or an object dies: the
  next lookup or getattr of one of its inodes asks the kernel, finds it gone
  and answers ENOENT.

Inode layout: fixed nodes use their `Kind` value (1 is the root, as FUSE
requires); per-process, per-object and per-kmem-map nodes use
`kind << 48 | id`, which cannot collide with the fixed numbers.  pids and
object ids are assumed below 2**48 and not reused within a kernel's life
(rumpvm hands them out increasing).

Names: a pid or object id is a canonical ASCII decimal (`parse_id`): no
sign, spaces, leading zeros or non-ASCII digits, so "²", "٣", "+7" and "07"
are ENOENT and never alias (or crash on) a real entry.

Every method raises `pyfuse3.FUSEError` for the expected failures (ENOENT
for a node that is gone, ENOTDIR/EINVAL for misuse) and otherwise lets the
kernel's `VMError` escape: the FUSE boundary in `fs.py` answers with its
errno (ESHUTDOWN after `k.close()`, for instance).  The tree
takes no lock: each kernel call takes the kernel's own lock, and a node that
disappears between two calls simply turns into ENOENT.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyfuse3

from rumpvm.errors import VMError
from rumpvm.resource import RLIMITS

from . import render

if TYPE_CHECKING:
    from rumpvm import Kernel, Proc


class Mode(enum.Enum):
    """What kind of file a node is; decides its st_mode and how it is opened."""

    DIR = "dir"          # 0555
    TEXT = "text"        # 0444, rendered at open
    CONTROL = "control"  # 0644, rendered at open, each write(2) sets a value
    MEMORY = "memory"    # 0600, bytes by offset through peek/write
    LINK = "link"        # symlink


class Kind(enum.IntEnum):
    """Every kind of node.  Values up to 63 are the inode numbers of fixed nodes."""

    ROOT = 1
    MEMINFO = 2
    VMSTAT = 3
    LIMIT = 4
    SWAPS = 5
    PAGEDAEMON = 6
    PD_STATUS = 7
    PD_POLICY = 8
    PD_FREEMIN = 9
    PD_FREETARG = 10
    PROC = 11
    OBJECTS = 12
    KMEM = 13
    KMEM_POOLS = 14
    # Per-process, per-object, per-kmem-map: inode = kind << 48 | id.
    PROC_DIR = 64
    PROC_MAPS = 65
    PROC_SMAPS = 66
    PROC_STATUS = 67
    PROC_MEM = 68
    PROC_LIMITS = 69
    OBJ_DIR = 80
    OBJ_INFO = 81
    OBJ_DATA = 82
    OBJ_BACKING = 83
    KMEM_MAP = 96


_ID_SHIFT = 48
_ID_MASK = (1 << _ID_SHIFT) - 1
_FIRST_DYNAMIC = Kind.PROC_DIR

MODE: dict[Kind, Mode] = {
    Kind.ROOT: Mode.DIR, Kind.PAGEDAEMON: Mode.DIR, Kind.PROC: Mode.DIR,
    Kind.OBJECTS: Mode.DIR, Kind.KMEM: Mode.DIR, Kind.PROC_DIR: Mode.DIR,
    Kind.OBJ_DIR: Mode.DIR,
    Kind.MEMINFO: Mode.TEXT, Kind.VMSTAT: Mode.TEXT, Kind.SWAPS: Mode.TEXT,
    Kind.PD_STATUS: Mode.TEXT, Kind.KMEM_POOLS: Mode.TEXT,
    Kind.PROC_MAPS: Mode.TEXT, Kind.PROC_SMAPS: Mode.TEXT,
    Kind.PROC_STATUS: Mode.TEXT, Kind.PROC_LIMITS: Mode.TEXT, Kind.OBJ_INFO: Mode.TEXT, Kind.KMEM_MAP: Mode.TEXT,
    Kind.LIMIT: Mode.CONTROL, Kind.PD_POLICY: Mode.CONTROL,
    Kind.PD_FREEMIN: Mode.CONTROL, Kind.PD_FREETARG: Mode.CONTROL,
    Kind.PROC_MEM: Mode.MEMORY, Kind.OBJ_DATA: Mode.MEMORY,
    Kind.OBJ_BACKING: Mode.LINK,
}

# Fixed children of directories, by name, in listing order.  Per-process and
# per-object directories use the same table with the parent's id.
_CHILDREN: dict[Kind, tuple[tuple[str, Kind], ...]] = {
    Kind.ROOT: (
        ("meminfo", Kind.MEMINFO), ("vmstat", Kind.VMSTAT), ("limit", Kind.LIMIT),
        ("swaps", Kind.SWAPS), ("pagedaemon", Kind.PAGEDAEMON), ("proc", Kind.PROC),
        ("objects", Kind.OBJECTS), ("kmem", Kind.KMEM),
    ),
    Kind.PAGEDAEMON: (
        ("status", Kind.PD_STATUS), ("policy", Kind.PD_POLICY),
        ("freemin", Kind.PD_FREEMIN), ("freetarg", Kind.PD_FREETARG),
    ),
    Kind.PROC_DIR: (
        ("maps", Kind.PROC_MAPS), ("smaps", Kind.PROC_SMAPS),
        ("status", Kind.PROC_STATUS), ("limits", Kind.PROC_LIMITS), ("mem", Kind.PROC_MEM),
    ),
    Kind.OBJ_DIR: (("info", Kind.OBJ_INFO), ("data", Kind.OBJ_DATA), ("backing", Kind.OBJ_BACKING)),
}

_PARENT: dict[Kind, Kind] = {child: parent for parent, kids in _CHILDREN.items() for _, child in kids}
_PARENT.update({Kind.PROC_DIR: Kind.PROC, Kind.OBJ_DIR: Kind.OBJECTS,
                Kind.KMEM_MAP: Kind.KMEM, Kind.KMEM_POOLS: Kind.KMEM})


@dataclass(frozen=True, slots=True)
class Node:
    """One file or directory of /vm: a kind and the id of what it belongs to."""

    kind: Kind
    id: int = 0

    @property
    def ino(self) -> int:
        if self.kind < _FIRST_DYNAMIC:
            return int(self.kind)
        return int(self.kind) << _ID_SHIFT | self.id

    @property
    def is_fixed(self) -> bool:
        """True for the nodes that exist for the kernel's whole life."""
        return self.kind < _FIRST_DYNAMIC

    @property
    def mode(self) -> Mode:
        return MODE[self.kind]

    @classmethod
    def from_ino(cls, ino: int) -> Node:
        """Decode an inode number; ENOENT for numbers this tree never made."""
        try:
            if ino < _FIRST_DYNAMIC:
                return cls(Kind(ino))
            kind = Kind(ino >> _ID_SHIFT)
        except ValueError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if kind < _FIRST_DYNAMIC:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return cls(kind, ino & _ID_MASK)


def parse_id(name: str) -> int:
    """The pid or object id a directory entry name stands for; ENOENT otherwise.

    Only canonical ASCII decimal: `str.isdigit` and `int` accept Unicode
    digits ("²" is a digit `int` rejects, "٣" one it reads as 3), signs and
    surrounding spaces, and "007" or "+7" must not alias "7".
    """
    if not name.isascii() or not name.isdigit() or (len(name) > 1 and name[0] == "0"):
        raise pyfuse3.FUSEError(errno.ENOENT)
    value = int(name)
    if value > _ID_MASK:
        raise pyfuse3.FUSEError(errno.ENOENT)
    return value


def _gone(err: VMError) -> Exception:
    """ENOENT for "no such process/object"; any other kernel error unchanged."""
    if err.errno in (errno.ESRCH, errno.ENOENT):
        return pyfuse3.FUSEError(errno.ENOENT)
    return err


class Tree:
    """The /vm namespace over one kernel.  Stateless apart from the kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    # -- the things nodes belong to ------------------------------------------

    def proc(self, node: Node) -> Proc:
        """The live process of a per-process node; ENOENT once it is gone."""
        try:
            return self.kernel.proc(node.id)
        except VMError as err:
            raise _gone(err) from None

    def object_shadow(self, node: Node) -> int | None:
        """The backing object id of an object node's object; ENOENT when gone."""
        try:
            return self.kernel.object_info(node.id).shadow
        except VMError as err:
            raise _gone(err) from None

    def check(self, node: Node) -> None:
        """Raise ENOENT unless `node` exists right now."""
        kind = node.kind
        if kind < _FIRST_DYNAMIC:
            return
        parent = _PARENT[kind]
        if kind is Kind.PROC_DIR or parent is Kind.PROC_DIR:
            self.proc(node)
        elif kind is Kind.OBJ_BACKING:
            if self.object_shadow(node) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
        elif kind is Kind.OBJ_DIR or parent is Kind.OBJ_DIR:
            self.object_shadow(node)
        elif kind is Kind.KMEM_MAP and node.id >= len(self.kernel.kmem_maps()):
            raise pyfuse3.FUSEError(errno.ENOENT)

    # -- directories ---------------------------------------------------------

    def children(self, node: Node) -> list[tuple[str, Node]]:
        """The entries of directory `node`: fixed order, or by pid / object id."""
        kind = node.kind
        if node.mode is not Mode.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if kind is Kind.PROC:
            return [(str(p.pid), Node(Kind.PROC_DIR, p.pid)) for p in self.kernel.procs()]  # by pid
        if kind is Kind.OBJECTS:
            return [(str(o.id), Node(Kind.OBJ_DIR, o.id)) for o in self.kernel.objects()]  # by id
        if kind is Kind.KMEM:
            maps = [(_file_name(m.name), Node(Kind.KMEM_MAP, i)) for i, m in enumerate(self.kernel.kmem_maps())]
            return [*maps, ("pools", Node(Kind.KMEM_POOLS))]
        kids = [(name, Node(child, node.id)) for name, child in _CHILDREN[kind]]
        if kind is Kind.OBJ_DIR and self.object_shadow(node) is None:
            kids = [(name, n) for name, n in kids if n.kind is not Kind.OBJ_BACKING]
        else:
            self.check(node)
        return kids

    def lookup(self, parent: Node, name: str) -> Node:
        """The child `name` of directory `parent`; ENOENT if there is none."""
        kind = parent.kind
        if parent.mode is not Mode.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if kind in (Kind.PROC, Kind.OBJECTS):
            child = Node(Kind.PROC_DIR if kind is Kind.PROC else Kind.OBJ_DIR, parse_id(name))
            self.check(child)
            return child
        for child_name, child in self.children(parent):
            if child_name == name:
                return child
        raise pyfuse3.FUSEError(errno.ENOENT)

    def readlink(self, node: Node) -> str:
        """The target of a symlink node: `../<backing id>`."""
        if node.kind is not Kind.OBJ_BACKING:
            raise pyfuse3.FUSEError(errno.EINVAL)
        shadow = self.object_shadow(node)
        if shadow is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return f"../{shadow}"

    # -- contents ------------------------------------------------------------

    def text(self, node: Node) -> str:
        """The current contents of a TEXT or CONTROL node."""
        k = self.kernel
        kind = node.kind
        if kind is Kind.MEMINFO:
            return render.meminfo(k.meminfo())
        if kind is Kind.VMSTAT:
            return render.name_values(k.stats())
        if kind is Kind.LIMIT:
            return render.limit(k.memlimit)
        if kind is Kind.SWAPS:
            return render.swaps(k.swaps())
        if kind is Kind.PD_STATUS:
            return render.name_values(k.pagedaemon.status())
        if kind is Kind.PD_POLICY:
            return f"{k.pagedaemon.policy}\n"
        if kind is Kind.PD_FREEMIN:
            return f"{k.pagedaemon.freemin}\n"
        if kind is Kind.PD_FREETARG:
            return f"{k.pagedaemon.freetarg}\n"
        if kind is Kind.KMEM_POOLS:
            return render.pools(k.pools())
        if kind is Kind.KMEM_MAP:
            maps = k.kmem_maps()
            if node.id >= len(maps):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return render.kmem_map(maps[node.id])
        if kind is Kind.OBJ_INFO:
            try:
                return render.object_info(k.object_info(node.id))
            except VMError as err:
                raise _gone(err) from None
        proc = self.proc(node)
        try:
            if kind is Kind.PROC_MAPS:
                return render.maps(proc.maps())
            if kind is Kind.PROC_SMAPS:
                return render.smaps(proc.smaps())
            if kind is Kind.PROC_STATUS:
                return render.status(proc.status())
            if kind is Kind.PROC_LIMITS:
                return render.limits((name, *proc.getrlimit(r), unit) for r, (name, unit) in RLIMITS.items())
        except VMError as err:
            # The process exited between the lookup and the call.
            raise _gone(err) from None
        raise pyfuse3.FUSEError(errno.EINVAL)


def _file_name(name: str) -> str:
    # A map name becomes a file name: "/" and NUL cannot appear in one.
    return name.replace("/", "_").replace("\0", "_") or "unnamed"
