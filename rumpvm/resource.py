"""Per-process resource limits (getrlimit/setrlimit) and their defaults.

Resource numbers and RLIM_INFINITY follow FreeBSD's <sys/resource.h>
(RLIMIT_AS is RLIMIT_VMEM there).  `initial_limits` is uvm_init_limits:
the stack and data soft limits start at the usual defaults, their hard
limits at the maxima, RSS at the memory limit and MEMLOCK at the kernel's
wired limit.  A child inherits its parent's limits at fork.

Rules of setrlimit: soft <= hard (EINVAL otherwise), values >= 0 (EINVAL),
and a hard limit may only be lowered (EPERM: rumpvm processes are
unprivileged).  Lock: limits belong to their process; callers hold the
kernel lock when they change or read them inside the VM.
"""

from __future__ import annotations

import errno

from .errors import VMError, einval

RLIMIT_DATA = 2
RLIMIT_STACK = 3
RLIMIT_RSS = 5
RLIMIT_MEMLOCK = 6
RLIMIT_AS = 10
RLIM_INFINITY = (1 << 63) - 1

# name, unit: the rows of /proc/<pid>/limits that rumpvm keeps.
RLIMITS: dict[int, tuple[str, str]] = {
    RLIMIT_DATA: ("Max data size", "bytes"),
    RLIMIT_STACK: ("Max stack size", "bytes"),
    RLIMIT_RSS: ("Max resident set", "bytes"),
    RLIMIT_MEMLOCK: ("Max locked memory", "bytes"),
    RLIMIT_AS: ("Max address space", "bytes"),
}

DFLSSIZ = 8 << 20  # default stack soft limit
MAXSSIZ = 512 << 20  # stack hard limit
DFLDSIZ = RLIM_INFINITY  # data: unlimited by default, as on Linux (anonymous memory counts)
MAXDSIZ = RLIM_INFINITY

Limits = dict[int, tuple[int, int]]


def initial_limits(memlimit: int | None, wired_limit: int | None) -> Limits:
    """uvm_init_limits: the limits of a process spawned from nothing."""
    rss = memlimit if memlimit is not None else RLIM_INFINITY
    lock = wired_limit if wired_limit is not None else RLIM_INFINITY
    return {
        RLIMIT_STACK: (DFLSSIZ, MAXSSIZ),
        RLIMIT_DATA: (DFLDSIZ, MAXDSIZ),
        RLIMIT_RSS: (rss, rss),
        RLIMIT_MEMLOCK: (lock, lock),
        RLIMIT_AS: (RLIM_INFINITY, RLIM_INFINITY),
    }


def resource(r: object) -> int:
    """Validate a resource number (TypeError / EINVAL)."""
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"resource must be int, not {type(r).__name__}")
    if r not in RLIMITS:
        raise einval(f"unknown resource {r}")
    return r


def check_new_limit(old: tuple[int, int], soft: object, hard: object) -> tuple[int, int]:
    """The new (soft, hard) pair if setrlimit may install it."""
    for v in (soft, hard):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"limits must be int, not {type(v).__name__}")
    assert isinstance(soft, int) and isinstance(hard, int)
    if soft < 0 or hard < 0 or soft > RLIM_INFINITY or hard > RLIM_INFINITY:
        raise einval(f"limits must be in [0, RLIM_INFINITY]: {soft}, {hard}")
    if soft > hard:
        raise einval(f"soft limit {soft} above hard limit {hard}")
    if hard > old[1]:
        raise VMError(errno.EPERM, f"raising the hard limit from {old[1]} to {hard} needs privilege")
    return soft, hard
