"""atheris fuzz targets for rumpvm's parsers.

Each module is a libFuzzer target, run as a main program:

    .venv/bin/python -m fuzz.size     [-atheris_runs=N] [libFuzzer flags] [CORPUS_DIR]
    .venv/bin/python -m fuzz.trace    [-atheris_runs=N] ...
    .venv/bin/python -m fuzz.control  [-atheris_runs=N] ...
    .venv/bin/python -m fuzz.names    [-atheris_runs=N] ...

`size`: rumpvm.param.parse_size/parse_limit/format_size, Kernel(memlimit=...)
and the `k.memlimit` setter.  `trace`: rumpvm.trace.open_trace (files of page
numbers and libCacheSim csv).  `control`: mountd.control.parse_limit and
mountd.control.write (the /vm control files), called directly on a kernel.
`names`: mountd.tree.parse_id (proc/<pid>, objects/<id> entry names) and
mountd.server._unescape_mount_field (/proc/self/mounts fields).

Each target lets through only the exceptions its parser documents (listed in
the module) and checks what a successful parse returns; anything else is a
crash (exit status non-zero, input saved by libFuzzer as crash-<sha1>).
Without -atheris_runs a target runs until stopped.  tests/test_fuzz_parsers.py
runs each for a bounded number of inputs.
"""
