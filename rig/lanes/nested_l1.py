"""The nested lane's L1: a small KVM host that Bochs (L0) boots and that runs the cell's guest (L2).

L1 is one busybox initramfs, built once and cached by its inputs (like every artifact):

    /init                     guests/nested/init (data driven, never templated)
    /bin/busybox
    /rig-l1/modules/*.ko      irqbypass, kvm, kvm-intel of the L1 kernel's linux-image package
    /usr/bin/qemu-system-x86_64 + the shared libraries ldd names, at their own paths
    /usr/share/qemu/          SeaBIOS and the linuxboot/kvmvapic ROMs (QEMU's data dir)
    with the libvirt launcher also: virsh, libvirt's QEMU driver module and both their
    libraries, libvirt's cpu_map, an /etc/passwd and /etc/group that name root

The cell's part travels in a second, small cpio that GRUB loads after it (Linux unpacks both):

    /l2/vmlinuz /l2/initrd.gz  the cell's guest, exactly as the runner built it for every lane
    /l2/qemu-args              L1's QEMU command, one argument a line (rig.lanes.nested)

The key of the L1 image is a hash of everything in it: the L1 kernel package (suite, ABI,
version), the init script, and the contents of busybox, QEMU, its libraries and ROMs.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rig.artifacts import Artifacts, Progress, require_file, with_libraries, write_cpio
from rig.errors import ToolMissing
from rig.model import KernelArtifacts, KernelSpec
from rig.paths import BUSYBOX, GUESTS_DIR

L1_RECIPE = "1"
QEMU = Path("/usr/bin/qemu-system-x86_64")
ROMS: dict[str, Path] = {
    "bios-256k.bin": Path("/usr/share/seabios/bios-256k.bin"),
    "linuxboot_dma.bin": Path("/usr/share/qemu/linuxboot_dma.bin"),
    "kvmvapic.bin": Path("/usr/share/qemu/kvmvapic.bin"),
}
VIRSH = Path("/usr/bin/virsh")
QEMU_TCG = Path("/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so")  # libvirt probes TCG too
LIBVIRT_QEMU = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so")
CPU_MAP = Path("/usr/share/libvirt/cpu_map")
INIT = GUESTS_DIR / "nested/init"
KIND = "l1host"
L1_DATA = "rig-l1"  # directory of L1's own files inside its initramfs


def _file_digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def l1_key(spec: KernelSpec, host_files: Iterable[Path], init_text: str) -> str:
    """The cache key of an L1 image: what goes into it, not when it was made."""
    h = hashlib.sha256()
    for part in (L1_RECIPE, spec.suite, spec.abi, spec.version, init_text,
                 _file_digest(host_files)):  # fmt: skip
        h.update(part.encode() + b"\0")
    return f"{spec.name}-{h.hexdigest()[:16]}"


@dataclass(frozen=True)
class L1Image:
    kernel: KernelArtifacts
    vmlinuz: Path
    initrd: Path  # gzip'd cpio: init, busybox, KVM modules, QEMU


def build_l1(
    artifacts: Artifacts, spec: KernelSpec, progress: Progress, *, libvirt: bool = False
) -> L1Image:
    """The cached L1 image for kernel `spec` (built under the key's lock when missing); with
    `libvirt`, it also holds virsh and libvirt's embedded QEMU driver."""
    require_file(BUSYBOX)
    for rom in ROMS.values():
        if not rom.exists():
            raise ToolMissing(str(rom), "qemu-system-x86 seabios", "the nested lane's L2")
    if libvirt and not (VIRSH.exists() and LIBVIRT_QEMU.exists() and CPU_MAP.is_dir()):
        raise ToolMissing("virsh", "libvirt-clients libvirt-daemon-driver-qemu", "libvirt in L1")
    kernel = artifacts.kernel(spec)
    qemu = with_libraries(QEMU, VIRSH, LIBVIRT_QEMU, QEMU_TCG) if libvirt else with_libraries(QEMU)
    cpu_map = sorted(CPU_MAP.glob("*.xml")) if libvirt else []
    init_text = INIT.read_text()
    key = l1_key(spec, [BUSYBOX, *qemu, *ROMS.values(), *cpu_map], init_text)
    with artifacts.cache.building(KIND, key) as (final, tmp):
        if tmp is not None:
            progress(f"nested: building the L1 image (kernel {spec.abi}, QEMU, KVM) ...")
            tree = tmp / "tree"
            for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "run", "var/run",
                      f"{L1_DATA}/modules", "usr/share/qemu"):  # fmt: skip
                (tree / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(BUSYBOX, tree / "bin/busybox")
            (tree / "init").write_text(init_text)
            (tree / "init").chmod(0o755)
            for ko in sorted(artifacts.kvm_modules(kernel).glob("*.ko")):
                shutil.copy2(ko, tree / L1_DATA / "modules" / ko.name)
            for path in qemu:
                target = tree / path.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)  # the file a symlink names, under the link's name
                target.chmod(0o755)
            for name, rom in ROMS.items():
                shutil.copyfile(rom, tree / "usr/share/qemu" / name)
            for xml in cpu_map:
                (tree / xml.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(xml, tree / xml.relative_to("/"))
            # libvirt's QEMU driver resolves its built-in default user before it reads
            # qemu.conf (which says root): both must exist
            (tree / "etc/passwd").write_text(
                "root:x:0:0:root:/root:/bin/sh\nlibvirt-qemu:x:64055:64055::/:/bin/false\n"
            )
            (tree / "etc/group").write_text("root:x:0:\nkvm:x:108:\nlibvirt-qemu:x:64055:\n")
            write_cpio(tree, tmp / "initrd.gz", compress=True)
            shutil.rmtree(tree)
            shutil.copy2(kernel.vmlinuz, tmp / "vmlinuz")
            size = (tmp / "initrd.gz").stat().st_size / 2**20
            progress(f"nested: L1 image ready ({size:.0f} MiB)")
    return L1Image(kernel=kernel, vmlinuz=final / "vmlinuz", initrd=final / "initrd.gz")
