"""The nested lane's L1: a small KVM host that Bochs (L0) boots and that runs the cell's guest (L2).

L1 is one busybox initramfs, built once and cached by its inputs (like every artifact):

    /init                     guests/nested/init (data driven, never templated)
    /bin/busybox
    /rig-l1/modules/*.ko      irqbypass, kvm, kvm-intel of the L1 kernel's linux-image package
    /lib/rig-carrier/ and /lib/rig-carrier.sh   the CD-ROM's drivers and `carrier_wait`, for a
                              snapshot's L1 (rig.lanes.nested_snapshot; rig.artifacts.media)
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
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rig.artifacts import Artifacts, Progress, require_file, with_libraries, write_cpio
from rig.artifacts.media import CARRIER_SH, carrier_waiter
from rig.errors import InfraError, ToolMissing
from rig.model import KernelArtifacts, KernelSpec
from rig.paths import BUSYBOX, GUESTS_DIR

L1_RECIPE = "2"  # 2: the CD-ROM drivers and carrier.sh of a snapshot's L1
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
L1_CMDLINE = "console=ttyS0,115200 quiet loglevel=4 panic=0 8250.nr_uarts=4"
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
    key = l1_key(spec, [BUSYBOX, CARRIER_SH, *qemu, *ROMS.values(), *cpu_map], init_text)
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
            if spec.kind == "debian":  # a snapshot's L1 waits for its cell (nested_snapshot)
                carrier_waiter(kernel, tree, tmp / "build.log")
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


def grub_cfg(cell: bool) -> str:
    """GRUB's menu: L1's kernel, its image and (`cell`) the cell's cpio after it; without
    it, L1 waits for its cell on a carrier (a snapshot's L1, rig.lanes.nested_snapshot)."""
    initrds = "/boot/l1.gz /boot/l2.cpio" if cell else "/boot/l1.gz"
    return (
        "set timeout=0\nset default=0\nmenuentry rig-nested-l1 {\n"
        f"  linux /boot/vmlinuz {L1_CMDLINE}\n"
        f"  initrd {initrds}\n}}\n"
    )


def l0_iso(l1: L1Image, cell: Path | None, wd: Path) -> Path:
    """The El Torito ISO Bochs boots: GRUB, L1's kernel, L1's image and the cell's cpio (if
    any: it is moved onto the ISO's tree), as wd/l0.iso."""
    tree = wd / "l0-iso"
    (tree / "boot/grub").mkdir(parents=True)
    if cell is not None:
        shutil.move(cell, tree / "boot/l2.cpio")
    shutil.copyfile(l1.vmlinuz, tree / "boot/vmlinuz")
    try:  # the cached 30+ MB image: a hard link when the run dir is on the cache's disk
        os.link(l1.initrd, tree / "boot/l1.gz")
    except OSError:
        shutil.copyfile(l1.initrd, tree / "boot/l1.gz")
    (tree / "boot/grub/grub.cfg").write_text(grub_cfg(cell is not None))
    iso = wd / "l0.iso"
    proc = subprocess.run(["grub-mkrescue", "-o", str(iso), str(tree)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    shutil.rmtree(tree)
    if proc.returncode != 0 or not iso.exists():
        raise InfraError(f"grub-mkrescue failed: {proc.stderr.strip()[-500:]}")
    return iso


def l0_ports(agent: Path, trace: Path) -> str:
    """Bochs' com3 (L2's agent channel) and com4 (KVM's trace in L1) lines; com1 (L1's
    console) and com2 (L2's console) are bochsrc's own."""
    for path in (agent, trace):
        if '"' in str(path) or "\n" in str(path):
            raise InfraError(f"path not usable in a bochsrc: {path!r}")
    return (f'com3: enabled=1, mode=file, dev="{agent}"\n'
            f'com4: enabled=1, mode=file, dev="{trace}"\n')  # fmt: skip
