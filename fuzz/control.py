"""Fuzz target: writes to the /vm control files, `mountd.control`.

Parsers: `mountd.control.parse_limit(text)` and `mountd.control.write(kernel,
kind, data)` (one write(2) to `limit` or `pagedaemon/{policy,freemin,freetarg}`),
called directly on a live kernel, no FUSE mount.

Documented outcomes (mountd/control.py, README "/vm"):
  * parse_limit: None for `unlimited` (any case), bytes for `<n>[k|m|g]`,
    else pyfuse3.FUSEError(EINVAL);
  * write: returns len(data); or pyfuse3.FUSEError with EFBIG (more than
    MAX_WRITE bytes), EINVAL (does not parse, or a value the kernel refuses),
    ENOMEM (a limit the pagedaemon cannot reach), ESHUTDOWN (closed kernel),
    EACCES (not a control file).  On failure the old value stays; on success
    the kernel holds the value written.
Anything else (a VMError or TypeError escaping, ...) is a crash; k.check()
must pass after every write.
"""

from __future__ import annotations

import errno
import sys

import atheris

with atheris.instrument_imports(include=["mountd.control", "rumpvm.param", "rumpvm.pagedaemon"]):
    import pyfuse3

    import rumpvm
    from mountd import control
    from mountd.tree import Kind

from fuzz._common import pick, run, tokens

VOCAB = ["0", "1", "4", "8", "16", "64", "100", "288", "300", "1000", "4096", "99999999999999999999", "k", "K", "m",
         "M", "g", "G", "t", "T", "b", "unlimited", "UNLIMITED", "Unlimited", "none", "clock", "lru", "fifo",
         "random", "LRU", "opt", " ", "\n", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x00", "-", "+", "0x", "_", ".",
         "\u0663", "\u212a", "\uff11", "\xa0"]
CONTROL = [Kind.LIMIT, Kind.PD_POLICY, Kind.PD_FREEMIN, Kind.PD_FREETARG]
ALLOWED_ERRNOS = {errno.EFBIG, errno.EINVAL, errno.ENOMEM, errno.ESHUTDOWN, errno.EACCES}
_state: dict[str, rumpvm.Kernel] = {}


def _kernel() -> rumpvm.Kernel:
    k = _state.get("k")
    if k is None:
        k = _state["k"] = rumpvm.Kernel(memlimit="8M", swap="4M", oom_timeout=0.05)
        p = k.spawn(name="ctl")
        a = p.mmap(64 * 4096)
        p.write(a, b"x" * (64 * 4096))  # something to page out when the limit drops
    return k


def _values(k: rumpvm.Kernel) -> tuple[object, ...]:
    pd = k.pagedaemon
    return k.memlimit, pd.freemin, pd.freetarg, pd.policy


def _data(fdp: atheris.FuzzedDataProvider) -> bytes:
    mode = fdp.ConsumeIntInRange(0, 9)
    if mode <= 5:
        return tokens(fdp, VOCAB).encode("utf-8", "surrogatepass")
    if mode <= 8:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    return b"1" * fdp.ConsumeIntInRange(4090, 4200)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    k = _kernel()
    kind = pick(fdp, [*CONTROL, *CONTROL, *CONTROL, Kind.MEMINFO, Kind.PROC_MEM, Kind.ROOT])
    payload = _data(fdp)
    text = payload.decode("ascii", "replace").strip()
    try:
        parsed: object = control.parse_limit(text)
    except pyfuse3.FUSEError as e:
        assert e.errno == errno.EINVAL, (text, e.errno)
        parsed = e
    else:
        assert parsed is None or (type(parsed) is int and parsed >= 0), (text, parsed)
    before = _values(k)
    try:
        n = control.write(k, kind, payload)
    except pyfuse3.FUSEError as e:
        assert e.errno in ALLOWED_ERRNOS, (kind, payload[:80], e.errno)
        assert _values(k) == before, ("failed write changed a value", kind, payload[:80], before, _values(k))
    else:
        assert n == len(payload), (n, len(payload))
        after = _values(k)
        if kind is Kind.LIMIT:
            assert after[0] == parsed, ("limit", payload[:80], parsed, after)
        elif kind is Kind.PD_POLICY:
            assert after[3] == text and after[:3] == before[:3], (payload, before, after)
        else:
            i = 1 if kind is Kind.PD_FREEMIN else 2
            assert after[i] == int(text) and after[0] == before[0], (kind, payload[:80], before, after)
    # The knobs stay what set_knobs accepts: 0 <= freemin <= freetarg, 1 <= freetarg < limit pages.
    limit, fmin, ftarg, _ = _values(k)
    assert 0 <= fmin <= ftarg and ftarg >= 1, (fmin, ftarg)  # type: ignore[operator]
    assert limit is None or ftarg < limit // 4096, (limit, fmin, ftarg)  # type: ignore[operator]
    k.check()
    if k.memlimit is None or k.memlimit < (4 << 20):
        # Keep the kernel in a usable range for the next input.
        try:
            k.memlimit = "8M"
        except rumpvm.VMError:
            pass


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
    sys.exit(0)
