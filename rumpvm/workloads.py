"""Built-in workloads of `rumpvm experiment`: real processes doing page
accesses in a kernel under the memory limit being measured.

What it owns
  * `WORKLOADS`, the registry: name -> `Workload` (its knobs with defaults
    and the function that runs it), and `parse_params`, which turns
    `--param k=v` strings into checked knob values;
  * `Run`, the state of one run (kernel, seeded generator, accesses done,
    peak resident bytes), whose `touch` is the one way workloads access
    memory: an array of `page << 1 | is_write` values replayed against a
    mapping by `Proc.replay` (writes dirty their page; a read of a
    never-written page gets a clean zero page).

Every workload draws all its randomness from `Run.rng` (seeded by
`--seed`), so the same seed gives the same accesses in the same order.  The
kernel's own behaviour still varies between runs: workloads run with the
pagedaemon's default knobs, and it frees pages asynchronously.  A workload
only makes calls of the public API; it counts accesses, the caller reads
the fault counters as deltas of `k.stats()`.

No lock of its own: a run belongs to one thread.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from .constants import MAP_ANON, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE
from .kernel import Kernel
from .param import format_size, parse_size
from .proc import Proc

# Accesses per replay call; peak resident memory is sampled between calls.
TOUCH_CHUNK = 4096

Params = dict[str, float]


class Run:
    """One workload run: the kernel, the seeded generator, and what the run
    has done so far (accesses, peak resident bytes sampled between chunks)."""

    def __init__(self, k: Kernel, seed: int) -> None:
        """A run in kernel `k` whose randomness comes from `seed`."""
        self.k = k
        self.rng = random.Random(seed)
        self.accesses = 0
        self.peak_resident = 0

    def touch(self, p: Proc, base: int, accesses: array[int]) -> None:
        """Replay `accesses` in `p` at `base`, in chunks; count them and
        sample the kernel's resident bytes after each chunk."""
        for i in range(0, len(accesses), TOUCH_CHUNK):
            p.replay(base, accesses[i:i + TOUCH_CHUNK])
            self.peak_resident = max(self.peak_resident, self.k.stats()["resident"])
        self.accesses += len(accesses)

    def encode(self, pages: Sequence[int], writes: float) -> array[int]:
        """Pages as accesses, each a write with probability `writes`."""
        rnd = self.rng.random
        return array("Q", [pg << 1 | (rnd() < writes) for pg in pages])


@dataclass(frozen=True)
class Knob:
    """A workload parameter: its default, its kind (`size` in bytes with
    K/M/G, `int` >= 1, `float` > 0, `fraction` in [0, 1]) and help."""

    default: float
    kind: str
    help: str

    def parse(self, name: str, given: object) -> float:
        """The value of `given` (a string or a number) for this knob
        (ValueError if it does not fit)."""
        text = str(given)
        try:
            if self.kind == "size":
                value: float = parse_size(given if isinstance(given, int) else text, name)
            elif self.kind == "int":
                value = int(given) if isinstance(given, int) else int(text)
            else:
                value = float(text)
        except (ValueError, TypeError, OSError):
            raise ValueError(f"--param {name}={text}: not a valid {self.kind}") from None
        if self.kind == "fraction":
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--param {name}={text}: must be between 0 and 1")
        elif not value > 0 or (self.kind == "size" and value < PAGE_SIZE):
            raise ValueError(f"--param {name}={text}: must be positive"
                             + (f" and at least one page ({PAGE_SIZE})" if self.kind == "size" else ""))
        return value


@dataclass(frozen=True)
class Workload:
    """A named workload: its knobs and its body, which runs processes in
    `run.k` and accesses memory only through `run.touch`."""

    name: str
    summary: str
    knobs: Mapping[str, Knob]
    body: Callable[[Run, Params], None]
    footprint: Callable[[Params], int]  # bytes of distinct user pages it touches


FOOTPRINT = Knob(4 << 20, "size", "bytes of the region the processes touch")
WRITES = Knob(0.5, "fraction", "fraction of accesses that are writes (the rest are reads)")


def _pages(params: Params) -> int:
    """The footprint in pages."""
    return int(params["footprint"]) // PAGE_SIZE


def _count(params: Params, key: str = "passes") -> int:
    """Accesses of a workload sized in passes over its footprint."""
    return max(1, round(params[key] * _pages(params)))


def _cow_pages(params: Params) -> int:
    """Pages each child of `fork` copies on write."""
    return round(params["fraction"] * _pages(params))


def _region(run: Run, name: str, size: int) -> tuple[Proc, int]:
    """A fresh process with one private anonymous mapping of `size` bytes."""
    p = run.k.spawn(name=name)
    return p, p.mmap(size, flags=MAP_PRIVATE | MAP_ANON)


def _scan(run: Run, params: Params) -> None:
    """Sequential passes over the whole region."""
    n = _pages(params)
    p, base = _region(run, "scan", n * PAGE_SIZE)
    run.touch(p, base, run.encode([i % n for i in range(int(params["passes"]) * n)], params["writes"]))


def _random(run: Run, params: Params) -> None:
    """Uniformly random pages: no locality."""
    n = _pages(params)
    p, base = _region(run, "random", n * PAGE_SIZE)
    rr = run.rng.randrange
    run.touch(p, base, run.encode([rr(n) for _ in range(_count(params))], params["writes"]))


def _zipf(run: Run, params: Params) -> None:
    """Zipf popularity: the page of rank r drawn with weight 1/r**alpha,
    ranks scattered over the region by a seeded permutation."""
    n = _pages(params)
    p, base = _region(run, "zipf", n * PAGE_SIZE)
    order = list(range(n))
    run.rng.shuffle(order)
    cum = list(accumulate(1.0 / r ** params["alpha"] for r in range(1, n + 1)))
    pages = [order[i] for i in run.rng.choices(range(n), cum_weights=cum, k=_count(params))]
    run.touch(p, base, run.encode(pages, params["writes"]))


def _loop(run: Run, params: Params) -> None:
    """Initialise the whole region once (writes), then loop over its first
    `wss` fraction `passes` times: the rest is resident data gone cold."""
    n = _pages(params)
    w = max(1, round(params["wss"] * n))
    p, base = _region(run, "loop", n * PAGE_SIZE)
    run.touch(p, base, array("Q", [pg << 1 | 1 for pg in range(n)]))
    run.touch(p, base, run.encode([i % w for i in range(int(params["passes"]) * w)], params["writes"]))


def _phases(run: Run, params: Params) -> None:
    """A working set of `wss` (fraction of the region) drawn from uniformly;
    every `every` accesses it moves to a random place in the region."""
    n = _pages(params)
    w = max(1, round(params["wss"] * n))
    every = int(params["every"])
    p, base = _region(run, "phases", n * PAGE_SIZE)
    rr = run.rng.randrange
    pages: list[int] = []
    total = _count(params)
    while len(pages) < total:
        start = rr(n - w + 1)
        pages.extend(start + rr(w) for _ in range(min(every, total - len(pages))))
    run.touch(p, base, run.encode(pages, params["writes"]))


def _fork(run: Run, params: Params) -> None:
    """A parent writes its whole region, forks `children`; each child then
    writes (copy-on-write) a random `fraction` of the pages, in turn; then
    every child exits."""
    n = _pages(params)
    parent, base = _region(run, "parent", n * PAGE_SIZE)
    run.touch(parent, base, array("Q", [pg << 1 | 1 for pg in range(n)]))
    kids = [parent.fork(name=f"child{i}") for i in range(int(params["children"]))]
    cow = _cow_pages(params)
    for kid in kids:
        run.touch(kid, base, array("Q", [pg << 1 | 1 for pg in run.rng.sample(range(n), cow)]))
    for kid in kids:
        kid.exit()


def _shared(run: Run, params: Params) -> None:
    """`procs` processes map one MAP_SHARED object and take turns doing
    `burst` uniformly random accesses each to it."""
    n = _pages(params)
    obj = run.k.create_object(n * PAGE_SIZE)
    procs = [run.k.spawn(name=f"sharer{i}") for i in range(int(params["procs"]))]
    bases = [p.mmap(n * PAGE_SIZE, flags=MAP_SHARED, obj=obj) for p in procs]
    rr = run.rng.randrange
    burst = int(params["burst"])
    left = _count(params)
    while left > 0:
        for p, base in zip(procs, bases):
            if left <= 0:
                break
            m = min(burst, left)
            run.touch(p, base, run.encode([rr(n) for _ in range(m)], params["writes"]))
            left -= m


# -- host code in a window (k.window): real numpy over rumpvm-paged memory ----------
#
# Host code's accesses cannot be counted one by one; `accesses` of these
# workloads counts page touches of the algorithm's passes (documented per
# workload), so miss ratios compare across limits and policies of one
# workload, not across workloads.

FILL_CHUNK = 1 << 17  # elements generated (in host memory) per slice of a window array


def _window_sample(run: Run) -> None:
    run.peak_resident = max(run.peak_resident, run.k.stats()["resident"])


def _sort(run: Run, params: Params) -> None:
    """numpy sorts (in place) a uint64 array filling the window, then checks
    it.  Accesses: pages x (fill + check + ceil(log2 pages) partition levels)."""
    import numpy as np

    npages = _pages(params)
    rng = np.random.default_rng(run.rng.getrandbits(64))
    with run.k.window(npages * PAGE_SIZE) as w:
        a = np.frombuffer(w, dtype=np.uint64)
        total = 0
        for i in range(0, a.size, FILL_CHUNK):
            part = rng.integers(0, 1 << 63, min(FILL_CHUNK, a.size - i), dtype=np.uint64)
            a[i:i + part.size] = part
            total ^= int(np.bitwise_xor.reduce(part))
        _window_sample(run)
        a.sort()
        _window_sample(run)
        check = 0
        for i in range(0, a.size, FILL_CHUNK):  # sorted, and the same multiset (xor of all values)
            part = a[max(0, i - 1):i + FILL_CHUNK]
            if not (part[1:] >= part[:-1]).all():
                raise AssertionError("sort workload: the window's array is not sorted")
            check ^= int(np.bitwise_xor.reduce(a[i:i + FILL_CHUNK]))
        if check != total:
            raise AssertionError("sort workload: the sorted array lost or changed values")
        del a, part
    run.accesses += npages * (2 + max(1, (npages - 1).bit_length()))


def _matmul_n(params: Params) -> int:
    """The matrix order: three n x n float64 matrices fill the footprint,
    n a multiple of the block."""
    b = int(params["block"])
    return max(b, int((int(params["footprint"]) / 24) ** 0.5) // b * b)


def _matmul_bytes(params: Params) -> int:
    return -(-3 * 8 * _matmul_n(params) ** 2 // PAGE_SIZE) * PAGE_SIZE


def _matmul(run: Run, params: Params) -> None:
    """C = A @ B by blocks (numpy matmul on block x block tiles), with small
    integer entries so every product is exact; checks sampled entries.
    Accesses: the pages of the three tiles of each block product, plus
    filling A and B."""
    import numpy as np

    n, b = _matmul_n(params), int(params["block"])
    rng = np.random.default_rng(run.rng.getrandbits(64))
    size = _matmul_bytes(params)
    with run.k.window(size) as w:
        m = np.frombuffer(w, dtype=np.float64, count=3 * n * n).reshape(3, n, n)
        A, B, C = m[0], m[1], m[2]
        for i in range(0, n, b):
            A[i:i + b] = rng.integers(0, 8, (min(b, n - i), n))
            B[i:i + b] = rng.integers(0, 8, (min(b, n - i), n))
        _window_sample(run)
        tiles = n // b
        for i in range(0, n, b):
            for j in range(0, n, b):
                acc = np.zeros((b, b))
                for k in range(0, n, b):
                    acc += A[i:i + b, k:k + b] @ B[k:k + b, j:j + b]
                C[i:i + b, j:j + b] = acc
            _window_sample(run)
        for _ in range(16):
            i, j = run.rng.randrange(n), run.rng.randrange(n)
            if C[i, j] != float(np.dot(A[i, :], B[:, j])):
                raise AssertionError(f"matmul workload: C[{i},{j}] is wrong")
        del m, A, B, C
    tile_pages = b * -(-b * 8 // PAGE_SIZE)  # a tile's rows lie n * 8 bytes apart: a page (or more) each
    run.accesses += 2 * n * n * 8 // PAGE_SIZE + tiles ** 3 * 2 * tile_pages + tiles ** 2 * tile_pages


def _region_bytes(params: Params) -> int:
    """The footprint of a workload that touches one region: the region."""
    return _pages(params) * PAGE_SIZE


def _fork_bytes(params: Params) -> int:
    """The parent's region plus every child's copies."""
    return (_pages(params) + int(params["children"]) * _cow_pages(params)) * PAGE_SIZE


def _workload(name: str, summary: str, body: Callable[[Run, Params], None],
              footprint: Callable[[Params], int] = _region_bytes, **knobs: Knob) -> Workload:
    """A Workload with the common `footprint` knob."""
    return Workload(name, summary, {"footprint": FOOTPRINT, **knobs}, body, footprint)


PASSES = Knob(4, "float", "accesses, in passes over the footprint's pages")

WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    _workload("scan", "sequential passes over the region", _scan,
              passes=Knob(4, "int", "passes over the region"), writes=WRITES),
    _workload("random", "uniformly random pages", _random, passes=PASSES, writes=WRITES),
    _workload("zipf", "Zipf-popular pages (rank r has weight 1/r**alpha)", _zipf,
              passes=PASSES, alpha=Knob(1.0, "float", "Zipf exponent"), writes=WRITES),
    _workload("loop", "write the region once, then loop over a working set", _loop,
              wss=Knob(0.25, "fraction", "working set, as a fraction of the region"),
              passes=Knob(8, "int", "loops over the working set"), writes=WRITES),
    _workload("phases", "a uniform working set that moves every N accesses", _phases,
              wss=Knob(0.25, "fraction", "working set, as a fraction of the region"),
              every=Knob(1024, "int", "accesses per phase"), passes=PASSES, writes=WRITES),
    _workload("fork", "a parent forks children that copy-on-write part of its data, then exit", _fork, _fork_bytes,
              children=Knob(4, "int", "children forked"),
              fraction=Knob(0.25, "fraction", "fraction of the pages each child writes")),
    _workload("shared", "processes take turns at random accesses to one MAP_SHARED region", _shared,
              procs=Knob(4, "int", "processes sharing the region"),
              burst=Knob(64, "int", "accesses per turn"), passes=PASSES, writes=WRITES),
    _workload("sort", "host numpy sorts a uint64 array in a window (k.window)", _sort),
    _workload("matmul", "host numpy multiplies float64 matrices by blocks in a window (k.window)", _matmul,
              _matmul_bytes, block=Knob(128, "int", "tile order of the blocked multiply")),
)}


def parse_params(name: str, items: Sequence[str] | Mapping[str, object]) -> Params:
    """The knobs of workload `name`: defaults, overridden by `items`
    (`k=v` strings, or a mapping of knob to value).  ValueError on an
    unknown workload or knob, or a bad value."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; one of {', '.join(WORKLOADS)}")
    knobs = WORKLOADS[name].knobs
    pairs: list[tuple[str, object]] = []
    if isinstance(items, Mapping):
        pairs = [(str(k), v) for k, v in items.items()]
    else:
        for item in items:
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"--param {item!r}: expected KEY=VALUE")
            pairs.append((key.strip(), value.strip()))
    params: Params = {k: knob.default for k, knob in knobs.items()}
    for key, given in pairs:
        if key not in knobs:
            raise ValueError(f"workload {name} has no knob {key!r}; its knobs: {', '.join(knobs)}")
        params[key] = knobs[key].parse(key, given)
    return params


def describe(name: str, params: Params) -> str:
    """The knobs of a workload as `k=v` text (sizes with K/M/G)."""
    knobs = WORKLOADS[name].knobs
    return ", ".join(f"{k}={format_size(int(v)) if knobs[k].kind == 'size' else f'{v:g}'}"
                     for k, v in params.items())


def run_workload(k: Kernel, name: str, params: Params, seed: int) -> Run:
    """Run workload `name` with checked `params` in `k`; the finished Run."""
    run = Run(k, seed)
    WORKLOADS[name].body(run, params)
    return run
