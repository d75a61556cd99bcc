"""Who may read and write what: /vm's owners and modes, another user, swap files.

The model is Linux's /proc, checked against the host's own files:
`/proc/<pid>/mem` is 0600, the other per-process files and the global
text files (`meminfo`, `vmstat`, `swaps`) 0444, the knobs of
`/proc/sys/vm` 0644, directories 0555 and symlinks 0777.  /vm gives its
files the same modes (`mem` and `objects/<id>/data`, which is memory too,
0600; `limit` and `pagedaemon/{policy,freemin,freetarg}` 0644), owned by
the user who mounted it.  The host kernel enforces them (`default_permissions`),
so for another user:

- without `--allow-other` the mount cannot be used at all (FUSE refuses
  every user but the mounter, even `stat` of its root);
- with it, text files can be read, but no `mem` or `data` can be read or
  written and no control file written (nor truncated, chmod-ed, touched).

Root bypasses mode bits, so mountd refuses writing a text file itself,
including `open(O_TRUNC)` (read-only even for root, as `truncate` is).

Swap: a temporary swap file is 0600 and unlinked before the kernel
returns from its constructor, so it is only ever reachable through the
kernel's descriptor (close-on-exec: children do not inherit it), which
another user cannot open through /proc.  A named swap file is made 0600
and never opened through a symlink.

The other user is a real one, made with `useradd` for this module and
removed after it; its commands run under `setpriv --reuid --regid
--clear-groups`.  The tests need root (so does mounting), as CI has.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fusemount import TOOL_TIMEOUT, mounted, run

import rumpvm
from rumpvm import MAP_SHARED, PAGE_SIZE
from rumpvm.errors import VMError

P = PAGE_SIZE
M = 1 << 20
DENIED = "Permission denied"
NOT_PERMITTED = "Operation not permitted"
CONTROL = ("limit", "pagedaemon/policy", "pagedaemon/freemin", "pagedaemon/freetarg")


# -- the other user ---------------------------------------------------------------

@pytest.fixture(scope="module")
def other_user() -> Iterator[tuple[int, int]]:
    """A real user (and its group) made for these tests; (uid, gid)."""
    assert os.geteuid() == 0, "the security tests need root (useradd, FUSE mounts), as CI has"
    name = f"rvsec{os.getpid()}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True, timeout=TOOL_TIMEOUT)
    try:
        pw = pwd.getpwnam(name)
        assert pw.pw_uid != 0 and pw.pw_gid != 0
        yield pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True, timeout=TOOL_TIMEOUT)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


def as_user(user: tuple[int, int], *argv: str | os.PathLike[str],
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a real tool as `user` (no supplementary groups), C locale; never raises."""
    uid, gid = user
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                           *(os.fspath(a) for a in argv)],
                          capture_output=True, text=True, input=input, timeout=TOOL_TIMEOUT, check=False,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})


def denied(r: subprocess.CompletedProcess[str], message: str = DENIED) -> bool:
    return r.returncode != 0 and message in r.stderr


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A mount point another user can reach (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="rumpvm-sec."))
    d.chmod(0o755)
    try:
        yield d
    finally:
        mnt = d / "vm"
        if mnt.exists() and os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        for sub in sorted(d.rglob("*"), reverse=True):
            sub.unlink() if not sub.is_dir() or sub.is_symlink() else sub.rmdir()
        d.rmdir()


@pytest.fixture
def populated(kernel: rumpvm.Kernel) -> rumpvm.Kernel:
    """Processes with private, shared and copy-on-write memory: every kind of
    file exists, `backing` links included."""
    p = kernel.spawn(name="owner")
    a = p.mmap(16 * P)
    p.write(a, b"secret of pid 1")
    obj = kernel.create_object(4 * P)
    p.mmap(4 * P, flags=MAP_SHARED, obj=obj)
    obj.detach()
    child = p.fork()
    child.write(a + P, b"child")  # a shadow object: objects/<id>/backing
    return kernel


def first_mapping(k: rumpvm.Kernel, pid: int = 1) -> int:
    return min(e.start for e in k.proc(pid).maps())


def user_object(k: rumpvm.Kernel) -> int:
    return next(o.id for o in k.objects() if o.type != "kernel")


# -- owners and modes ------------------------------------------------------------------

# Each kind of /vm file next to the host's /proc file it copies.
LINUX_MODEL = {
    "proc/1/mem": "/proc/self/mem",
    "proc/1/maps": "/proc/self/maps",
    "proc/1/smaps": "/proc/self/smaps",
    "proc/1/status": "/proc/self/status",
    "proc/1/limits": "/proc/self/limits",
    "meminfo": "/proc/meminfo",
    "vmstat": "/proc/vmstat",
    "swaps": "/proc/swaps",
    "limit": "/proc/sys/vm/min_free_kbytes",
    "pagedaemon/freemin": "/proc/sys/vm/min_free_kbytes",
    "proc/1": "/proc/self/",
    "pagedaemon": "/proc/sys/vm",
    "": "/proc/",
}


def expected_mode(rel: str, st: os.stat_result) -> int:
    name = rel.rsplit("/", 1)[-1]
    if stat.S_ISDIR(st.st_mode):
        return 0o555
    if stat.S_ISLNK(st.st_mode):
        return 0o777
    if name in ("mem", "data"):
        return 0o600
    if rel in CONTROL:
        return 0o644
    return 0o444


def walk(root: Path) -> dict[str, os.stat_result]:
    """lstat of every entry under root (no symlink followed), by relative path."""
    out = {"": os.lstat(root)}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(d, name)
            out[os.path.relpath(path, root)] = os.lstat(path)
    return out


def test_every_file_has_the_owner_and_mode_of_its_linux_proc_model(populated: rumpvm.Kernel,
                                                                   tmp_path: Path) -> None:
    with mounted(populated, tmp_path / "vm") as root:
        entries = walk(root)
        for rel, host in LINUX_MODEL.items():  # the model is Linux's
            assert stat.S_IMODE(entries[rel].st_mode) == stat.S_IMODE(os.stat(host).st_mode), (rel, host)
        kinds = set()
        for rel, st in entries.items():
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), rel
            assert stat.S_IMODE(st.st_mode) == expected_mode(rel, st), (rel, oct(st.st_mode))
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), rel
            kinds.add(rel.rsplit("/", 1)[-1] if "/" in rel and rel.split("/")[0] in ("proc", "objects") else rel)
        assert {"mem", "data", "backing", "maps", "limit", "pagedaemon/policy", "kmem/pools"} <= kinds
        # ls agrees (it reads the same attributes through the real tool).
        listing = run("ls", "-l", root / "proc" / "1", root / "objects" / str(user_object(populated))).stdout
        assert any(line.startswith("-rw------- ") and line.endswith(" mem") for line in listing.splitlines())
        assert any(line.startswith("-rw------- ") and line.endswith(" data") for line in listing.splitlines())


def test_read_only_files_stay_read_only_for_root(populated: rumpvm.Kernel, tmp_path: Path) -> None:
    """Root passes every mode check, so mountd itself refuses writing text:
    write opens, truncation by `truncate` and by `open(O_TRUNC)` alike."""
    def err(fn: Callable[..., object], *args: object) -> int:
        try:
            fd = fn(*args)
        except OSError as e:
            return e.errno or 0
        if isinstance(fd, int):
            os.close(fd)
        return 0

    with mounted(populated, tmp_path / "vm") as root:
        for rel in ("meminfo", "proc/1/maps", "pagedaemon/status", "kmem/pools"):
            path = root / rel
            assert err(os.open, path, os.O_WRONLY) == errno.EACCES, rel
            assert err(os.open, path, os.O_RDONLY | os.O_TRUNC) == errno.EACCES, rel
            assert err(os.truncate, path, 0) == errno.EACCES, rel
            assert err(os.chmod, path, 0o666) == errno.EPERM, rel
            assert err(os.chown, path, 1, 1) == errno.EPERM, rel
        assert err(os.open, root / "new", os.O_CREAT | os.O_WRONLY) == errno.EPERM
        assert err(os.mkdir, root / "proc" / "99") == errno.EPERM
        assert err(os.unlink, root / "limit") == errno.EPERM
        # Control and memory files: `echo > limit` and `dd of=mem` truncate
        # first; that is accepted and changes nothing.
        assert err(os.open, root / "limit", os.O_WRONLY | os.O_TRUNC) == 0
        assert (root / "meminfo").read_text().startswith("MemTotal:")


# -- another user ---------------------------------------------------------------------

def attempts(root: Path, k: rumpvm.Kernel) -> dict[str, tuple[str, ...]]:
    """Every way another user might read memory or change the kernel."""
    addr = first_mapping(k)
    mem = root / "proc" / "1" / "mem"
    data = root / "objects" / str(user_object(k)) / "data"
    out: dict[str, tuple[str, ...]] = {
        "cat mem": ("cat", str(mem)),
        "dd if=mem": ("dd", f"if={mem}", "bs=4096", "count=1", f"skip={addr}", "iflag=skip_bytes", "status=none"),
        "cat data": ("cat", str(data)),
        "dd of=mem": ("dd", f"of={mem}", f"seek={addr}", "oflag=seek_bytes", "conv=notrunc", "status=none"),
        "dd of=data": ("dd", f"of={data}", "conv=notrunc", "status=none"),
        "chmod mem": ("chmod", "666", str(mem)),
    }
    for rel in CONTROL:
        out[f"dd of={rel}"] = ("dd", f"of={root / rel}", "status=none")
        out[f"truncate {rel}"] = ("truncate", "-s", "0", str(root / rel))
        out[f"touch {rel}"] = ("touch", str(root / rel))
    out["mkdir"] = ("mkdir", str(root / "proc" / "x"))
    out["rm meminfo"] = ("rm", "-f", str(root / "meminfo"))
    return out


def kernel_state(k: rumpvm.Kernel) -> tuple[object, ...]:
    p = k.proc(1)
    addr = first_mapping(k)
    return (k.memlimit, k.pagedaemon.policy, k.pagedaemon.freemin, k.pagedaemon.freetarg,
            p.peek(addr, 32), k.object_peek(user_object(k), 0, 32))


def test_without_allow_other_another_user_cannot_use_the_mount(populated: rumpvm.Kernel, public_dir: Path,
                                                               other_user: tuple[int, int]) -> None:
    mnt = public_dir / "vm"
    mnt.mkdir()
    # The control case: with nothing mounted, the user reaches the directory.
    assert as_user(other_user, "stat", mnt).returncode == 0
    before = kernel_state(populated)
    with mounted(populated, mnt) as root:
        assert run("cat", root / "meminfo").returncode == 0  # the mounter can
        for argv in (("stat", root), ("ls", root), ("cat", root / "meminfo"), ("cat", root / "proc/1/maps"),
                     ("stat", root / "limit"), *attempts(root, populated).values()):
            r = as_user(other_user, *argv, input="1G\n")
            assert denied(r), (argv, r.returncode, r.stderr)
        assert kernel_state(populated) == before


def test_with_allow_other_another_user_reads_text_but_no_memory_and_writes_nothing(
        populated: rumpvm.Kernel, public_dir: Path, other_user: tuple[int, int]) -> None:
    mnt = public_dir / "vm"
    mnt.mkdir()
    k = populated
    before = kernel_state(k)
    with mounted(k, mnt, allow_other=True) as root:
        # What Linux lets anyone read, anyone reads.
        readable: list[tuple[str | Path, ...]] = [
            ("ls", "-lR", root), ("cat", root / "meminfo", root / "vmstat", root / "swaps"),
            ("cat", root / "proc/1/maps", root / "proc/1/smaps", root / "proc/1/status"),
            ("cat", *(root / rel for rel in CONTROL)), ("cat", root / "kmem/pools")]
        for argv in readable:
            r = as_user(other_user, *argv)
            assert r.returncode == 0 and r.stdout, (argv, r.stderr)
        assert as_user(other_user, "cat", root / "proc/1/maps").stdout == (root / "proc/1/maps").read_text()
        # No memory, no knob.
        for what, argv in attempts(root, k).items():
            r = as_user(other_user, *argv, input="1G\n")
            message = NOT_PERMITTED if what.startswith("chmod") else DENIED
            assert denied(r, message), (what, r.returncode, r.stderr)
            assert r.stdout == "", what  # not a byte of memory
        assert kernel_state(k) == before
        # Root still may (the same mount, the same files).
        assert run("dd", f"of={root / 'pagedaemon/policy'}", "status=none", input="lru\n").returncode == 0
        assert k.pagedaemon.policy == "lru"


def test_cli_allow_other_is_the_same_policy(public_dir: Path, other_user: tuple[int, int]) -> None:
    """`rumpvm mount --allow-other` (the daemon) applies the same modes."""
    import sys

    from fusemount import wait_live
    from test_mountd_hostile import wait_demo

    mnt = public_dir / "vm"
    mnt.mkdir()
    daemon = subprocess.Popen([sys.executable, "-m", "rumpvm.cli", "mount", str(mnt), "--demo", "--allow-other"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_live(mnt, timeout=15)
        wait_demo(mnt)
        pid = "1"  # the demo's first process, alive for the daemon's life
        assert as_user(other_user, "cat", mnt / "meminfo").returncode == 0
        assert as_user(other_user, "cat", mnt / "proc" / pid / "maps").returncode == 0
        assert denied(as_user(other_user, "cat", mnt / "proc" / pid / "mem"))
        assert denied(as_user(other_user, "dd", f"of={mnt / 'limit'}", "status=none", input="1G\n"))
        assert (mnt / "limit").read_text() == f"{32 * M}\n"
        # Its swap file: unlinked, 0600, and not reachable through /proc by the other user.
        [(fd, target)] = [(fd, os.readlink(f"/proc/{daemon.pid}/fd/{fd}"))
                          for fd in os.listdir(f"/proc/{daemon.pid}/fd")
                          if "rumpvm-swap." in os.readlink(f"/proc/{daemon.pid}/fd/{fd}")]
        st = os.stat(f"/proc/{daemon.pid}/fd/{fd}")
        assert target.endswith(" (deleted)") and st.st_nlink == 0 and stat.S_IMODE(st.st_mode) == 0o600
        assert denied(as_user(other_user, "cat", f"/proc/{daemon.pid}/fd/{fd}"))
        daemon.terminate()
        assert daemon.wait(timeout=TOOL_TIMEOUT) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.communicate(timeout=TOOL_TIMEOUT)


# -- swap files ---------------------------------------------------------------------------

def swap_descriptors() -> list[tuple[int, str]]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "rumpvm-swap." in target or target.endswith(".swap"):
            out.append((int(fd), target))
    return out


def test_temporary_swap_file_is_0600_unlinked_private_and_not_inherited(other_user: tuple[int, int]) -> None:
    # Kernels of earlier tests that were dropped without close() may still
    # wait for the collector: only this kernel's descriptor is looked at.
    before = set(swap_descriptors())
    with rumpvm.Kernel(memlimit="2M", swap="8M") as k:
        # Already unlinked when the constructor returns: no name to find.
        [(fd, target)] = sorted(set(swap_descriptors()) - before)
        assert target.endswith(" (deleted)") and k.swaps()[0].path == target
        st = os.fstat(fd)
        assert st.st_nlink == 0 and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
        assert not os.path.lexists(target.removesuffix(" (deleted)"))
        p = k.spawn()
        a = p.mmap(4 * M)
        for off in range(0, 4 * M, P):
            p.write(a + off, b"swapped secret")
        assert k.stats()["pageouts"] > 0  # in use
        assert os.fstat(fd).st_size > 0 and os.fstat(fd).st_nlink == 0
        # Close-on-exec: a child process has no descriptor of it.
        child_fds = subprocess.run(["ls", "-l", "/proc/self/fd/"], capture_output=True, text=True,
                                   close_fds=False, check=True, timeout=TOOL_TIMEOUT).stdout
        assert "rumpvm-swap" not in child_fds
        # Another user cannot open it through /proc either.
        r = as_user(other_user, "cat", f"/proc/{os.getpid()}/fd/{fd}")
        assert denied(r) and "swapped secret" not in r.stdout
        k.check()
    assert not set(swap_descriptors()) - before, "close() left the swap file open"


def test_named_swap_file_is_made_0600_and_never_followed_through_a_symlink(tmp_path: Path,
                                                                           other_user: tuple[int, int]) -> None:
    public = Path(tempfile.mkdtemp(prefix="rumpvm-sec."))
    try:
        public.chmod(0o755)
        path = public / "named.swap"
        path.write_bytes(b"")
        path.chmod(0o666)
        with rumpvm.Kernel(memlimit="2M", swap="8M", swapfile=str(path)) as k:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            p = k.spawn()
            a = p.mmap(4 * M)
            for off in range(0, 4 * M, P):
                p.write(a + off, b"swapped secret")
            assert k.stats()["pageouts"] > 0
            assert denied(as_user(other_user, "cat", path))
            assert denied(as_user(other_user, "dd", f"of={path}", "conv=notrunc", "status=none", input="x"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # kept, still private
        # A symlink is never followed: its target keeps its contents and mode.
        victim = tmp_path / "victim"
        victim.write_bytes(b"keep")
        victim.chmod(0o644)
        link = public / "link.swap"
        link.symlink_to(victim)
        with pytest.raises(VMError) as info:
            rumpvm.Kernel(swap="8M", swapfile=str(link))
        assert info.value.errno == errno.ELOOP
        assert victim.read_bytes() == b"keep" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    finally:
        for f in public.iterdir():
            f.unlink()
        public.rmdir()
