"""Build steps on the host: the tools they need, a logged step, a command in a chroot."""

from __future__ import annotations

import gzip
import re
import shutil
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
    "unshare": ("util-linux", "isolating builds and emulators"),
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


def run_step(argv: Sequence[str], *, log: Path, what: str, timeout: float = 1800) -> None:
    """Run a build step, appending its output to `log`; raise InfraError with the tail."""
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
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise InfraError(
            f"{what} failed (exit {proc.returncode}); last lines:\n{tail}",
            where=str(log),
            fix="check network access to the Debian mirror and the package names in matrix.yaml",
        )


def in_root(
    root: Path, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str = "/"
) -> list[str]:
    """argv run chrooted in `root` with its own /proc (objtool of 7.x reads /proc)."""
    envv = [f"{k}={v}" for k, v in (env or {}).items()]
    return [
        "unshare", "--fork", "--pid", "--kill-child", "--mount-proc", f"--root={root}",
        f"--wd={cwd}", "--",
        "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
        *envv, *argv,
    ]  # fmt: skip


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
