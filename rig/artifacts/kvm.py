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
import subprocess
from pathlib import Path

from rig.artifacts.cache import Cache, Progress, digest
from rig.artifacts.kmods import kernel_modules
from rig.artifacts.steps import require_tool, run_step
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
    """From the toolchain chroot when it has that very package installed; else from its
    packages, downloaded into the chroot and read without installing (rig.artifacts.kmods)."""
    wanted = {f"{rel}{xz}": name for name, rel in KVM_MODULES for xz in ("", ".xz")}
    with kernel_modules(kernel, log) as mods:
        found = mods.read(set(wanted))
    for rel, data in found.items():
        (dest / wanted[rel]).write_bytes(_plain(data, rel))
    missing = {name for name, _ in KVM_MODULES} - {wanted[rel] for rel in found}
    if missing:
        raise InfraError(
            f"{', '.join(sorted(missing))} missing from the packages of kernel {kernel.spec.abi}",
            where=str(log),
        )


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
