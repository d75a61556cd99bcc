"""Fuzz target: size and limit strings.

Parsers: `rumpvm.param.parse_size(value, what)`, `parse_limit(value, what)`,
`format_size(n)` (read back by parse_limit), `Kernel(memlimit=value)` and the
`k.memlimit = value` setter.

Documented outcomes (rumpvm/param.py, README "Errors"):
  * parse_size / parse_limit: an int (parse_limit: or None for
    "unlimited"/"none"/"" or None), at most MAX_SIZE; VMError(EINVAL) when
    it does not parse or is beyond MAX_SIZE; TypeError for a value that is
    not int/str (and for bool);
  * Kernel(memlimit=v) / k.memlimit = v: VMError(EINVAL) for a bad limit
    (unparseable, zero, negative, below the minimum, beyond 2**63-1),
    VMError(ENOMEM) for one that cannot be reached, TypeError for a wrong
    type; the old limit stays on failure, and the limit in force afterwards
    is parse_limit(v).
Anything else is a crash.
"""

from __future__ import annotations

import errno
import math
import os
import sys

import atheris

with atheris.instrument_imports(include=["rumpvm.param"]):
    import rumpvm
    from rumpvm.param import MAX_SIZE, format_size, parse_limit, parse_size
    from rumpvm.physmem import MIN_LIMIT

from fuzz._common import pick, run, tokens

VOCAB = ["0", "1", "4", "7", "9", "64", "288", "300", "4096", "00", "-", "+", " ", "\t", "\n", "\x0b", "\u00a0",
         "\u2003", "k", "K", "m", "M", "g", "G", "t", "T", "p", "b", "B", "KB", "kib", "x", "0x", "e", ".", "_",
         "unlimited", "UNLIMITED", "none", "None", "inf", "nan", "9223372036854775807", "9223372036854775808",
         "18446744073709551616", "\u0663", "\uff11", "\u212a", "\x00"]
OTHER_TYPES = [None, True, False, 1.0, math.nan, math.inf, b"64M", bytearray(b"1"), [1], 64 + 0j]
KERNEL_EVERY = 8  # a kernel boot costs ~1 ms: every 8th input goes to Kernel(memlimit=...)
_count = [0]
_kernel: list[rumpvm.Kernel] = []


def _value(fdp: atheris.FuzzedDataProvider) -> object:
    mode = fdp.ConsumeIntInRange(0, 9)
    if mode <= 4:
        return tokens(fdp, VOCAB)
    if mode <= 6:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    if mode == 7:
        return fdp.ConsumeIntInRange(-(2**70), 2**70)
    if mode == 8:
        return pick(fdp, [0, 1, -1, MIN_LIMIT - 1, MIN_LIMIT, MAX_SIZE, MAX_SIZE + 1, 2**64, 4096, 64 << 20])
    return pick(fdp, OTHER_TYPES)


def _check_parsers(v: object) -> object:
    """parse_size and parse_limit of v; returns parse_limit's verdict (a
    value, or the exception)."""
    for fn in (parse_size, parse_limit):
        try:
            n = fn(v, "fuzz")  # type: ignore[arg-type]
        except rumpvm.VMError as e:
            assert e.errno == errno.EINVAL, (fn.__name__, v, e)
            result: object = e
        except TypeError as e:
            assert not isinstance(v, str) and not (isinstance(v, int) and not isinstance(v, bool)), (fn, v, e)
            result = e
        else:
            if fn is parse_size or n is not None:
                assert type(n) is int and n <= MAX_SIZE, (fn.__name__, v, n)
                assert parse_limit(format_size(n)) == n, ("format_size round trip", v, n, format_size(n))
            else:
                assert v is None or (isinstance(v, str) and v.strip().lower() in ("unlimited", "none", "")), v
            result = n
    return result


def _check_env_bytes(raw: bytes) -> None:
    """RUMP_MEMLIMIT holding arbitrary bytes (no NUL): a limit, or
    VMError(EINVAL) when it is not one."""
    os.environb[b"RUMP_MEMLIMIT"] = raw
    try:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = None
        with rumpvm.Kernel(oom_timeout=0.05) as k:
            assert text is not None and k.memlimit == parse_limit(text), (raw, k.memlimit)
    except rumpvm.VMError as e:
        assert e.errno in (errno.EINVAL, errno.ENOMEM), (raw, e)
    finally:
        del os.environb[b"RUMP_MEMLIMIT"]


def _check_kernel(v: object, expect: object, env: bool) -> None:
    """Kernel(memlimit=v) (or RUMP_MEMLIMIT=v with `env`), and the setter
    on a running kernel."""
    ok_limit = not isinstance(expect, BaseException) and (expect is None or expect >= MIN_LIMIT)  # type: ignore
    try:
        if env:
            os.environ["RUMP_MEMLIMIT"] = v  # type: ignore[assignment]
            try:
                k = rumpvm.Kernel(oom_timeout=0.05)
            finally:
                del os.environ["RUMP_MEMLIMIT"]
        else:
            k = rumpvm.Kernel(memlimit=v, oom_timeout=0.05)  # type: ignore[arg-type]
    except rumpvm.VMError as e:
        assert not ok_limit or e.errno == errno.ENOMEM, (v, expect, e)
    except TypeError:
        assert isinstance(expect, TypeError), (v, expect)
    else:
        with k:
            assert ok_limit, (v, expect, "accepted")
            assert k.memlimit == expect, (v, k.memlimit, expect)
    if not _kernel:
        _kernel.append(rumpvm.Kernel(memlimit="16M", oom_timeout=0.05))
    k = _kernel[0]
    old = k.memlimit
    try:
        k.memlimit = v  # type: ignore[assignment]
    except (rumpvm.VMError, TypeError) as e:
        assert not ok_limit or (isinstance(e, rumpvm.VMError) and e.errno == errno.ENOMEM), (v, expect, e)
        assert k.memlimit == old, ("failed setter changed the limit", v, old, k.memlimit)
    else:
        assert ok_limit and k.memlimit == expect, (v, expect, k.memlimit)
        k.memlimit = "16M"
    k.check()


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeIntInRange(0, 15) == 0:
        raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 12)).replace(b"\x00", b"")
        if raw:
            _check_env_bytes(raw)
        return
    v = _value(fdp)
    expect = _check_parsers(v)
    _count[0] += 1
    if _count[0] % KERNEL_EVERY == 0 or (not isinstance(expect, BaseException) and fdp.ConsumeBool()):
        # The environment takes non-empty strings without NUL (an empty
        # RUMP_MEMLIMIT is "unset" for some C libraries: leave it out).
        env = isinstance(v, str) and v != "" and "\x00" not in v and fdp.ConsumeBool()
        _check_kernel(v, expect, env)


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
    sys.exit(0)
