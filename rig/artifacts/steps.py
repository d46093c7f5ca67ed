"""Build steps on the host: the tools they need, a logged step, a command in a chroot."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from rig.errors import InfraError, ToolMissing
from rig.paths import BUSYBOX, KEXEC

HOST_TOOLS: dict[str, tuple[str, str]] = {
    # tool: (Debian package, what for)
    "debootstrap": ("debootstrap", "building a suite's toolchain chroot"),
    "dpkg-deb": ("dpkg", "unpacking kernel packages"),
    "cpio": ("cpio", "packing the initramfs"),
    "unshare": ("util-linux", "isolating the rig's own build steps and emulators"),
    "bwrap": ("bubblewrap", "the sandbox that builds module code (the driver, fixtures)"),
    "grub-mkrescue": ("grub-common grub-pc-bin xorriso mtools", "making the Bochs boot ISO"),
    "xorriso": ("xorriso", "making the Bochs boot ISO"),
    "gcc": ("gcc libc6-dev", "building the teardown witness (kvm-witness, static)"),
}
# Host files copied into guests, at fixed paths (they are not looked up in PATH)
HOST_FILES: dict[Path, tuple[str, str]] = {
    BUSYBOX: ("busybox-static", "the initramfs guests' and the nested lane's L1 userland"),
    KEXEC: ("kexec-tools", "the crash-path run (--crash)"),
}


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package, purpose = HOST_TOOLS.get(tool, (tool, "the rig"))
        raise ToolMissing(tool, package, purpose)
    return path


def require_file(path: Path) -> Path:
    """A host file of HOST_FILES that a guest gets a copy of; ToolMissing when absent."""
    if not path.exists():
        package, purpose = HOST_FILES.get(path, (path.name, "the rig"))
        raise ToolMissing(path.name, package, purpose)
    return path


LOW_DISK = 1 << 30
"""Below this much free space on a build's file system, a failed step is blamed on the disk."""


def disk_note(path: Path, low: int = LOW_DISK) -> str:
    """A sentence naming a nearly full file system under `path` ("" when there is room)."""
    probe = path if path.exists() else path.parent
    free = shutil.disk_usage(probe).free
    if free >= low:
        return ""
    return (
        f"the file system holding {probe} has only {free >> 20} MiB free: "
        "a full disk is the likely cause"
    )


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_step(
    argv: Sequence[str],
    *,
    log: Path,
    what: str,
    timeout: float = 1800,
    inner_log: Path | None = None,
) -> None:
    """Run a build step, appending its output to `log`; raise InfraError with the tail.

    `inner_log` is a log the step writes elsewhere (debootstrap's own): its tail joins the
    error, since the step's output often only points at it. A nearly full disk is named.
    """
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            proc = subprocess.run(
                list(argv), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise InfraError(f"{what}: timed out after {timeout:.0f} s", where=str(log)) from exc
    if proc.returncode != 0:
        text = f"{what} failed (exit {proc.returncode}); last lines:\n{_tail(log, 15)}"
        inner = _tail(inner_log, 12) if inner_log is not None else ""
        if inner:
            text += f"\nlast lines of {inner_log}:\n{inner}"
        disk = disk_note(log)
        fix = "check network access to the Debian mirror and the package names in matrix.yaml"
        if disk:
            fix = "free disk space (rig cache prune, or RIG_CACHE_DIR on a larger disk)"
        raise InfraError(f"{disk}\n{text}" if disk else text, where=str(log), fix=fix)


def in_root(
    root: Path, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str = "/"
) -> list[str]:
    """argv run chrooted in `root` as root with its own /proc: for the rig's own, trusted
    steps (apt-get in a chroot it builds). It isolates nothing: never give it module code,
    which `sandboxed` runs."""
    envv = [f"{k}={v}" for k, v in (env or {}).items()]
    return [
        "unshare", "--fork", "--pid", "--kill-child", "--mount-proc", f"--root={root}",
        f"--wd={cwd}", "--",
        "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
        *envv, *argv,
    ]  # fmt: skip


BUILD_UID = 65534
"""The user and group a sandboxed build runs as: nobody/nogroup, the same ids in every Debian
chroot and on the host."""
BUILD_DIR = "/tmp/build"
"""Where a sandboxed build sees its build directory (its working directory)."""
SETPRIV = "/usr/bin/setpriv"  # util-linux, essential in every Debian suite


def sandboxed(
    root: Path,
    argv: Sequence[str],
    build_dir: Path,
    *,
    ro_binds: Sequence[tuple[Path, str]] = (),
    rw_binds: Sequence[tuple[Path, str]] = (),
    env: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """argv, code the rig does not trust (a module's Makefile and whatever it runs), run in
    the toolchain chroot `root` by bubblewrap. What it guarantees:

    - `root` is mounted read-only (nosuid, nodev) as /, and /proc (the sandbox's own) is
      read-only too: the build cannot change the chroot that later builds use.
    - It can write only `build_dir` (seen at BUILD_DIR, its working directory), the
      `rw_binds` (a kernel's O= directory and its ccache, seen under /tmp) and a private
      tmpfs at /tmp; nothing else it does survives it. The caller copies the products out.
      `ro_binds` (a kernel's sources and build directory) it sees read-only under /tmp.
    - It runs as uid and gid BUILD_UID (nobody) on the host too (there is no user namespace
      mapping it to root), with no supplementary groups, no capabilities (effective,
      permitted, inheritable, ambient and bounding sets empty) and no-new-privs (setuid bits
      and file capabilities give nothing): it cannot chroot(2), mount or load modules.
    - It has no network (a network namespace of its own, holding only its own loopback) and
      its own PID, IPC, UTS and cgroup namespaces: it sees and signals no host process. It
      has no controlling terminal, an environment of PATH, LC_ALL and HOME only, and dies
      with the rig.

    How: bwrap runs as root without a user namespace (so that it can read the root-only
    cache and mount), then the chroot's own setpriv drops to nobody before argv runs. That
    setpriv runs as root, which is sound because nothing but the rig's own steps (`in_root`,
    when the chroot is made) ever writes the chroot. Needs root; `build_dir` must be
    writable by BUILD_UID (`hand_to_build_user`).
    """
    require_tool("bwrap")
    return [
        "bwrap",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        "--ro-bind", str(root), "/",
        "--proc", "/proc", "--remount-ro", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--tmpfs", "/tmp",
        "--bind", str(build_dir), BUILD_DIR,
        *_binds("--ro-bind", ro_binds), *_binds("--bind", rw_binds),
        "--chdir", BUILD_DIR,
        "--clearenv", "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "HOME", "/tmp",
        *[a for k, v in env for a in ("--setenv", k, v)],
        "--",
        SETPRIV, f"--reuid={BUILD_UID}", f"--regid={BUILD_UID}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        "--", *argv,
    ]  # fmt: skip


def _binds(flag: str, binds: Sequence[tuple[Path, str]]) -> list[str]:
    out: list[str] = []
    for src, dest in binds:
        if not dest.startswith("/tmp/") or ".." in dest.split("/"):
            raise ValueError(f"sandbox mount point {dest!r} is not under /tmp")
        out += [flag, str(src), dest]
    return out


def hand_to_build_user(tree: Path) -> None:
    """Make `tree` (a build directory, not a symlink) and everything in it BUILD_UID's."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            os.chown(Path(dirpath) / name, BUILD_UID, BUILD_UID, follow_symlinks=False)
    os.chown(tree, BUILD_UID, BUILD_UID, follow_symlinks=False)


def copy_product(src: Path, dest: Path) -> bool:
    """Copy a file a sandboxed build made to `dest` (mode 0644, owned by the rig): only a
    regular file, never what a symlink of the build points at (a host file). False when
    `src` is missing or not a regular file."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return False
        with dest.open("wb") as out:
            shutil.copyfileobj(fh, out)
    dest.chmod(0o644)
    return True


def write_cpio(root: Path, out: Path, *, compress: bool) -> None:
    """A newc archive of the tree at `root` (owned by root), gzip -1'd when `compress`."""
    require_tool("cpio")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        input="\n".join([".", *files]).encode(),
        cwd=root,
        capture_output=True,
        check=True,
    )
    out.write_bytes(gzip.compress(proc.stdout, compresslevel=1) if compress else proc.stdout)


_LDD_RE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def ldd_paths(ldd_output: str) -> list[Path]:
    """The absolute library paths in `ldd` output (the loader included, vdso left out)."""
    out: list[Path] = []
    for line in ldd_output.splitlines():
        m = _LDD_RE.search(line)
        if m and m[1] not in {str(p) for p in out}:
            out.append(Path(m[1]))
    return out


def with_libraries(*binaries: Path) -> list[Path]:
    """The binaries and every shared library they load (InfraError when ldd cannot say)."""
    out = list(binaries)
    for binary in binaries:
        proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        if proc.returncode != 0 or "not found" in proc.stdout:
            raise InfraError(f"ldd {binary} failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
        out += [p for p in ldd_paths(proc.stdout) if p not in out]
    return out
