"""The `rumpvm` command: `demo` (run the demo workload and print maps and
counters), `mount` (serve /vm in the foreground), `experiment` (memory-limit
experiments, rumpvm/lab.py), `trace` (record and inspect traces,
rumpvm/trace.py)."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from . import lab, trace
from .constants import PAGE_SIZE
from .errors import VMError

DEFAULT_SWAP = "64M"


def _prot(p: int) -> str:
    return "".join(c if p & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_once
    from .kernel import Kernel
    with Kernel(memlimit=args.memlimit, swap=args.swap or DEFAULT_SWAP) as k:
        procs = run_once(k)
        for p in procs:
            print(f"== pid {p.pid} ({p.name}, ppid {p.ppid})")
            for e in p.maps():
                obj = "-" if e.object is None else f"obj {e.object}"
                flags = " shared" if e.shared else (" cow" if e.needs_copy else "")
                print(f"  {e.start:012x}-{e.end:012x} {_prot(e.prot)}{'s' if e.shared else 'p'}"
                      f" {obj:>7} off {e.offset:#x}{flags}")
        print("== objects")
        for o in k.objects():
            backing = f" -> {o.shadow}" if o.shadow is not None else ""
            print(f"  {o.id:4} {o.type:6} {o.size // PAGE_SIZE:6} pages  refs {o.refs}"
                  f"  resident {o.resident}  swapped {o.swapped}{backing}")
        print("== counters")
        for name, value in k.stats().items():
            print(f"  {name:14} {value}")
        k.check()
    return 0


def _fuse_serve() -> Callable[..., None]:
    """The foreground `serve` of the FUSE server registered under the
    `rumpvm.mount` entry point `fuse` (the one `Kernel.mount` loads; rumpvm
    never imports mountd by name): `serve` of the entry point's module."""
    eps = [ep for ep in entry_points(group="rumpvm.mount") if ep.name == "fuse"]
    if not eps:
        raise VMError(errno.ENODEV, "no FUSE server installed (entry point rumpvm.mount:fuse)")
    serve: Callable[..., None] = importlib.import_module(eps[0].module).serve
    return serve


def cmd_mount(args: argparse.Namespace) -> int:
    from .demo import DEMO_MEMLIMIT, DEMO_SWAP, DemoWorkload
    from .kernel import Kernel
    serve = _fuse_serve()  # before the kernel: fail early when mountd is missing
    if args.demo:  # the demo's footprint is larger than its limit: it pages and swaps
        memlimit, swap = args.memlimit or DEMO_MEMLIMIT, args.swap or DEMO_SWAP
    else:
        memlimit, swap = args.memlimit, args.swap or DEFAULT_SWAP
    with Kernel(memlimit=memlimit, swap=swap) as k:
        demo = DemoWorkload(k).start() if args.demo else None
        try:
            serve(k, args.mountpoint, allow_other=args.allow_other)
        finally:
            # Close first: a demo call waiting for memory ends with ESHUTDOWN.
            k.close()
            if demo is not None:
                demo.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rumpvm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def kernel_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--memlimit", default=None,
                       help="memory limit (bytes, K/M/G or 'unlimited'; default $RUMP_MEMLIMIT or unlimited)")
        p.add_argument("--swap", default=None, help=f"swap size (default {DEFAULT_SWAP})")

    d = sub.add_parser("demo", help="run the demo workload, print maps and counters")
    kernel_args(d)
    d.set_defaults(fn=cmd_demo)
    m = sub.add_parser("mount", help="mount the /vm view (foreground; Ctrl-C unmounts)")
    m.add_argument("mountpoint")
    m.add_argument("--demo", action="store_true",
                   help="run the demo workload while mounted (its defaults: --memlimit 32M --swap 128M)")
    m.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    kernel_args(m)
    m.set_defaults(fn=cmd_mount)
    lab.add_cli(sub)
    trace.add_cli(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # results.json records the command
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="rumpvm: %(message)s", stream=sys.stderr)
    try:
        return int(args.fn(args) or 0)
    except (VMError, OSError) as e:
        print(f"rumpvm: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
