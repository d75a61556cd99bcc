"""mountd: the /vm FUSE file system, a read-mostly view over a rumpvm kernel.

Modules, one mechanism each:
- `render`:  kernel records -> the text of /vm files (Linux /proc formats);
- `tree`:    the namespace: nodes, inode numbers, what exists, file text;
- `memfile`: `proc/<pid>/mem` and `objects/<id>/data` reads and writes;
- `control`: writes to `limit` and the pagedaemon knobs;
- `fs`:      the pyfuse3 `Operations` that translate FUSE requests;
- `server`:  mount, serve (foreground or thread), unmount, stale mounts.

Entry points: `serve` (the `rumpvm mount` CLI) and `mount_in_thread`
(`Kernel.mount`, found through the `rumpvm.mount` entry point `fuse`).
Imports go downward only: mountd uses rumpvm's public and inspection API,
and rumpvm never imports mountd.
"""

from .server import MountHandle, clear_stale_mount, mount_in_thread, serve

__all__ = ["MountHandle", "clear_stale_mount", "mount_in_thread", "serve"]
