"""Helpers shared by the targets: structured inputs from the fuzzer's bytes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import atheris


def pick(fdp: atheris.FuzzedDataProvider, seq: Sequence[Any]) -> Any:
    return seq[fdp.ConsumeIntInRange(0, len(seq) - 1)]


def tokens(fdp: atheris.FuzzedDataProvider, vocab: Sequence[str], max_tokens: int = 8) -> str:
    """A string assembled from `vocab` (so the grammar is reached at once),
    with now and then a raw unicode piece."""
    out = []
    for _ in range(fdp.ConsumeIntInRange(0, max_tokens)):
        if fdp.ConsumeIntInRange(0, 9) == 0:
            out.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 6)))
        else:
            out.append(pick(fdp, vocab))
    return "".join(out)


# A target may tolerate a bug that has a regression test in
# tests/test_fuzz_parsers.py, so that a run goes on to find new ones, but
# only without RUMPVM_FUZZ_STRICT=1.  (None does now: every bug found so far
# is fixed.)
STRICT = os.environ.get("RUMPVM_FUZZ_STRICT") == "1"

# The instrumented interpreter starts near libFuzzer's default 2 GB RSS limit.
DEFAULT_FLAGS = ("-len_control=0", "-max_len=512", "-rss_limit_mb=8192")


def run(test_one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """atheris.Setup + Fuzz: exit status 0 once -atheris_runs inputs ran,
    non-zero on the first crash.  Inputs up to 512 bytes from the start
    (`-len_control=0`), unless the command line says otherwise."""
    args = list(sys.argv if argv is None else argv)
    for flag in DEFAULT_FLAGS:
        if not any(a.startswith(flag.split("=")[0] + "=") for a in args[1:]):
            args.append(flag)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
