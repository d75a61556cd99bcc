"""Helpers shared by the targets: structured inputs from the fuzzer's bytes."""

from __future__ import annotations

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


def run(test_one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """atheris.Setup + Fuzz; returns (exit status 0) once -atheris_runs inputs ran."""
    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()
