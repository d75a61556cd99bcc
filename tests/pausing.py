"""Forced interleavings for tests: one thread stops at its N-th acquisition
of the kernel lock while the test runs a whole call in another, then goes
on.  The stand-in lock only delays; it never changes the kernel's logic, and
every wait is for a state (an Event), with JOIN only as a hang guard."""

from __future__ import annotations

import threading
from collections.abc import Callable

import rumpvm

JOIN = 60.0


class PausingLock:
    """Stands in for k.lock: the thread named `who` stops before its `at`-th
    acquisition until `go` is set (after announcing it on `reached`).  Every
    other acquisition goes straight to the real lock, so the kernel's logic
    is unchanged; only the interleaving is forced."""

    def __init__(self, lock, who: str, at: int) -> None:
        self.lock, self.who, self.at = lock, who, at
        self.n = 0
        self.reached = threading.Event()
        self.go = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if threading.current_thread().name == self.who:
            self.n += 1
            if self.n == self.at:
                self.reached.set()
                assert self.go.wait(JOIN), "never released"
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()

    def locked(self) -> bool:
        return self.lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def paused_call(k: rumpvm.Kernel, at: int, call: Callable[[], object],
                meanwhile: Callable[[], None]) -> tuple[object, BaseException | None]:
    """Run `call` in a thread that pauses before its `at`-th lock acquisition,
    run `meanwhile` (a whole call) in this thread at that point, then let the
    paused thread go.  Returns (result, exception) of `call`.  If `call`
    never reaches the `at`-th acquisition, `meanwhile` still runs after it."""
    real = k.lock
    pl = PausingLock(real, "paused", at)
    out: list[object] = [None, None]

    def body() -> None:
        try:
            out[0] = call()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out[1] = e
        finally:
            pl.reached.set()

    k.lock = pl  # type: ignore[assignment]
    try:
        t = threading.Thread(target=body, name="paused", daemon=True)
        t.start()
        assert pl.reached.wait(JOIN)
        meanwhile()
        pl.go.set()
        t.join(JOIN)
        assert not t.is_alive(), "the paused call hangs"
    finally:
        k.lock = real  # type: ignore[assignment]
    return out[0], out[1]  # type: ignore[return-value]
