"""KVM as a witness in the guests: a kernel's own KVM modules and the kvm-witness program.

    kvm_modules(cache, kernel, progress) -> Path     irqbypass.ko, kvm.ko, kvm-intel.ko
    witness_program(cache, progress) -> Path         guests/witness/kvm-witness, static

The modules come out of the kernel's own linux-image package (decompressed: busybox insmod
reads no .xz), cached by the kernel's key. The program is built on the host with gcc -static,
cached by its source and the compiler. The nested lane's L1 and the teardown witness of every
VMX lane use both (docs/contract.md section 2, RIG-WITNESS).
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path

from rig.artifacts.cache import Cache, Progress, digest
from rig.artifacts.steps import in_root, require_tool, run_step
from rig.debian import deb_members
from rig.errors import InfraError, UsageError
from rig.model import KernelArtifacts
from rig.paths import GUESTS_DIR

# insmod order: kvm needs irqbypass, kvm-intel needs kvm. Paths under the modules directory,
# without the .xz that Debian's packages add from 6.12 on (5.10 and 6.1 ship them plain).
KVM_MODULES: tuple[tuple[str, str], ...] = (
    ("irqbypass.ko", "kernel/virt/lib/irqbypass.ko"),
    ("kvm.ko", "kernel/arch/x86/kvm/kvm.ko"),
    ("kvm-intel.ko", "kernel/arch/x86/kvm/kvm-intel.ko"),
)


def _plain(data: bytes, name: str) -> bytes:
    return lzma.decompress(data) if name.endswith(".xz") else data


WITNESS_SOURCE = GUESTS_DIR / "witness/kvm-witness.c"


def installed_version(root: Path, package: str) -> str | None:
    """The version of `package` installed in a chroot (from its dpkg status), or None."""
    status = root / "var/lib/dpkg/status"
    if not status.exists():
        return None
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line[:40])
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields.get("Version")
    return None


def kvm_modules(cache: Cache, kernel: KernelArtifacts, progress: Progress) -> Path:
    """A cached directory holding the kernel's irqbypass.ko, kvm.ko and kvm-intel.ko."""
    spec = kernel.spec
    if spec.kind != "debian":
        if kernel.kvm_dir is None:
            raise UsageError(
                f"kernel {spec.name} ({spec.describe()}) has no KVM modules: the teardown "
                "witness and the nested lane's L1 load kvm.ko and kvm-intel.ko",
                fix="build it with CONFIG_KVM=m and CONFIG_KVM_INTEL=m (as modules: a "
                "built-in KVM holds VMX from boot from 6.12 on)",
            )
        return kernel.kvm_dir
    key = digest("kvm-modules", spec.suite, spec.abi, spec.version, spec.mirror)
    with cache.building("kvm-modules", f"{spec.name}-{key}") as (final, tmp):
        if tmp is not None:
            progress(f"kernel {spec.name}: KVM modules of linux-image-{spec.abi} ...")
            _extract(kernel, tmp, tmp / "build.log")
    return final


def _extract(kernel: KernelArtifacts, dest: Path, log: Path) -> None:
    """From the toolchain chroot when it has that very package installed; else the package is
    downloaded into the chroot (the way the kernel's vmlinuz was) and read without installing."""
    spec, root = kernel.spec, kernel.chroot
    mods = root / "usr/lib/modules" / spec.abi
    have = installed_version(root, f"linux-image-{spec.abi}")
    if have is not None and (not spec.version or have == spec.version):
        for name, rel in KVM_MODULES:
            src = next((p for p in (mods / f"{rel}.xz", mods / rel) if p.exists()), None)
            if src is None:
                raise InfraError(f"{mods / rel}[.xz] missing from linux-image-{spec.abi}")
            (dest / name).write_bytes(_plain(src.read_bytes(), src.name))
        return
    debs = root / "var/tmp/rig-kvm-debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    pin = f"={spec.version}" if spec.version else ""
    opts = ["-o", "Acquire::Retries=3"]
    if not spec.check_valid_until:
        opts += ["-o", "Acquire::Check-Valid-Until=false"]
    try:
        # up to 6.x linux-image-<abi> holds the modules; from 7.x linux-modules-<abi> does
        for pkg in (f"linux-image-{spec.abi}", f"linux-modules-{spec.abi}"):
            run_step(in_root(root, ["apt-get", *opts, "download", f"{pkg}{pin}"],
                          cwd="/var/tmp/rig-kvm-debs"),
                 log=log, what=f"download {pkg}{pin}")  # fmt: skip
            deb = next(iter(sorted(debs.glob(f"{pkg}_*.deb"))))
            if _modules_from_deb(deb, spec.abi, dest):
                return
        raise InfraError(f"no KVM modules in the packages of kernel {spec.abi}", where=str(log))
    finally:
        shutil.rmtree(debs, ignore_errors=True)


def _modules_from_deb(deb: Path, abi: str, dest: Path) -> bool:
    wanted = {
        f"{top}/modules/{abi}/{rel}{xz}": name
        for name, rel in KVM_MODULES
        for top in ("usr/lib", "lib")
        for xz in ("", ".xz")
    }
    found = deb_members(deb, set(wanted))
    for member, data in found.items():
        (dest / wanted[member]).write_bytes(_plain(data, member))
    return {wanted[m] for m in found} == {name for name, _ in KVM_MODULES}


def _compiler_version(gcc: str) -> str:
    proc = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else gcc


def witness_program(cache: Cache, progress: Progress) -> Path:
    """guests/witness/kvm-witness, built static on the host (cached by source and compiler)."""
    gcc = require_tool("gcc")
    source = WITNESS_SOURCE.read_text()
    key = digest("kvm-witness", source, _compiler_version(gcc))
    with cache.building("witness", key) as (final, tmp):
        if tmp is not None:
            progress("building kvm-witness (static) ...")
            (tmp / "kvm-witness.c").write_text(source)
            run_step([gcc, "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror",
                      "-o", str(tmp / "kvm-witness"), str(tmp / "kvm-witness.c")],
                     log=tmp / "build.log", what="gcc -static kvm-witness.c")  # fmt: skip
    return final / "kvm-witness"
