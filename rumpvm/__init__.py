"""rumpvm: a BSD virtual-memory system that runs as a library in the host
process (rump-kernel style).  See README.md and docs/architecture.md."""

from .constants import (
                        INHERIT_COPY,
                        INHERIT_NONE,
                        INHERIT_SHARE,
                        MADV_AUTOSYNC,
                        MADV_CORE,
                        MADV_DONTNEED,
                        MADV_FREE,
                        MADV_NOCORE,
                        MADV_NORMAL,
                        MADV_NOSYNC,
                        MADV_RANDOM,
                        MADV_SEQUENTIAL,
                        MADV_WILLNEED,
                        MAP_ANON,
                        MAP_FIXED,
                        MAP_PRIVATE,
                        MAP_SHARED,
                        MS_ASYNC,
                        MS_INVALIDATE,
                        MS_SYNC,
                        PAGE_SIZE,
                        PROT_EXEC,
                        PROT_MAX,
                        PROT_NONE,
                        PROT_READ,
                        PROT_WRITE,
)
from .errors import OutOfMemory, SegmentationFault, VMError
from .inspect import MapEntry, ObjectInfo, ProcStatus, SmapsInfo
from .kernel import Kernel
from .object import VMObject
from .proc import Proc
from .resource import RLIM_INFINITY, RLIMIT_AS, RLIMIT_DATA, RLIMIT_MEMLOCK, RLIMIT_RSS, RLIMIT_STACK

__all__ = [
    "Kernel", "Proc", "VMObject", "VMError", "OutOfMemory", "SegmentationFault",
    "MapEntry", "ObjectInfo", "ProcStatus", "SmapsInfo", "PAGE_SIZE",
    "PROT_NONE", "PROT_MAX", "PROT_READ", "PROT_WRITE", "PROT_EXEC",
    "MAP_PRIVATE", "MAP_SHARED", "MAP_ANON", "MAP_FIXED",
    "INHERIT_SHARE", "INHERIT_COPY", "INHERIT_NONE",
    "MADV_NORMAL", "MADV_RANDOM", "MADV_SEQUENTIAL", "MADV_WILLNEED", "MADV_DONTNEED",
    "MADV_FREE", "MADV_NOSYNC", "MADV_AUTOSYNC", "MADV_NOCORE", "MADV_CORE",
    "MS_ASYNC", "MS_SYNC", "MS_INVALIDATE",
    "RLIMIT_STACK", "RLIMIT_DATA", "RLIMIT_AS", "RLIMIT_RSS", "RLIMIT_MEMLOCK", "RLIM_INFINITY",
]
