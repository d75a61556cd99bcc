"""Shared fixtures: a booted kernel, checked at teardown if the test passed.

Test files may define their own fixtures; keep only shared ones here.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Record each phase's report on the item so fixtures can see the outcome.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _boot(request, **kwargs):
    import rumpvm

    with rumpvm.Kernel(**kwargs) as k:
        yield k
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.passed:
            k.check()


@pytest.fixture
def kernel(request):
    """A kernel with default settings (no limit, no swap)."""
    yield from _boot(request)


@pytest.fixture
def small_kernel(request):
    """A kernel with a 16M memory limit and 64M of swap, to force paging."""
    yield from _boot(request, memlimit="16M", swap="64M")


@pytest.fixture
def window_kernel(request):
    """A kernel with an 8M limit and 64M of swap: host-window tests use
    windows of 4x the limit."""
    yield from _boot(request, memlimit="8M", swap="64M")
