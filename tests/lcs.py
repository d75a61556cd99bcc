"""libCacheSim, request by request: the independent cache simulator the
policy and lab tests compare the kernel's fault counts with (the lab's own
`--check` feeds it whole trace files instead)."""

from __future__ import annotations


def lcs_misses(policy: str, pages: list[int], capacity: int) -> int:
    """Misses of libCacheSim's cache class `policy` ("LRU", "FIFO", "TwoQ",
    "Sieve", ...) of `capacity` unit-size objects, one request at a time."""
    import libcachesim as lcs

    cache = getattr(lcs, policy)(cache_size=capacity, hashpower=10)  # the default table is 2^24
    req = lcs.Request()
    misses = 0
    for page in pages:
        req.obj_id = page
        req.obj_size = 1
        misses += not cache.get(req)
    return misses
