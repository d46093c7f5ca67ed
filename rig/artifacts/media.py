"""A snapshot's carrier medium, whatever the lane: the CD-ROM's drivers a waiting guest loads,
the shell code that waits for a carrier (guests/lib/carrier.sh), and the medium's format.

    storage_modules(kernel, dest, log) -> list[str]  the CD-ROM's drivers, in load order
    carrier_waiter(kernel, root, log) -> None        drivers, their order and carrier.sh in a
                                                     guest's root tree (the initramfs guest's
                                                     base, the nested lane's L1)
    carrier_bytes(payload) -> bytes                  a gzipped cpio as a CD medium

The guest (`carrier_wait` in guests/lib/carrier.sh) flushes /dev/sr0's buffers, reads the
header line `RIGCARRIER1 <length> <sha256>` from the first 2048-byte block, then that many
bytes from the next blocks, checks the sha256 and unpacks the gzipped cpio at /.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import shutil
from pathlib import Path

from rig.artifacts.kmods import kernel_modules
from rig.errors import InfraError
from rig.model import KernelArtifacts
from rig.paths import GUESTS_DIR

CARRIER_SH = GUESTS_DIR / "lib/carrier.sh"
CARRIER_SH_AT = "lib/rig-carrier.sh"  # where the guests' /init scripts source it
CARRIER_DIR = "lib/rig-carrier"
STORAGE = ("sr_mod", "ata_piix")  # the CD-ROM on Bochs' first ATA channel, and what they need
BLOCK = 2048  # a CD's sector
MAGIC = "RIGCARRIER1"


STORAGE_FILES = {
    "scsi_common": "kernel/drivers/scsi/scsi_common.ko",
    "scsi_mod": "kernel/drivers/scsi/scsi_mod.ko",
    "cdrom": "kernel/drivers/cdrom/cdrom.ko",
    "sr_mod": "kernel/drivers/scsi/sr_mod.ko",
    "libata": "kernel/drivers/ata/libata.ko",
    "ata_piix": "kernel/drivers/ata/ata_piix.ko",
}
"""Where Debian's kernels (5.10 to 7.x) keep the CD-ROM's drivers and what they need."""

_DEPENDS = re.compile(rb"(?:^|\0)depends=([A-Za-z0-9_,-]*)\0")


def depends(ko: bytes) -> list[str]:
    """The modules a module needs loaded first (its .modinfo `depends=`)."""
    m = _DEPENDS.search(ko)
    return [d.replace("-", "_") for d in m[1].decode().split(",") if d] if m else []


def load_order(modules: dict[str, bytes], wanted: tuple[str, ...]) -> list[str]:
    """Names of `modules` to load for `wanted`, dependencies first (InfraError when one is
    missing: the kernel has it built in, or not at all, and the rig cannot tell which)."""
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in modules:
            raise InfraError(f"the kernel's packages hold no module {name} (needed by "
                             f"{' <- '.join(chain) or 'the CD-ROM'})")  # fmt: skip
        for dep in depends(modules[name]):
            if dep not in chain:
                visit(dep, (*chain, name))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def storage_modules(kernel: KernelArtifacts, dest: Path, log: Path) -> list[str]:
    """The CD-ROM's drivers, uncompressed into `dest`: their file names in load order."""
    if kernel.spec.kind != "debian":
        raise InfraError(
            f"kernel {kernel.spec.name} is not a Debian package: the rig knows where only "
            "Debian's kernels keep the CD-ROM's drivers that a snapshot's guest loads",
            fix="run it without --snapshot",
        )
    rels = {f"{rel}{xz}": name for name, rel in STORAGE_FILES.items() for xz in ("", ".xz")}
    with kernel_modules(kernel, log) as mods:
        found = mods.read(set(rels))
    plain = {rels[r]: lzma.decompress(d) if r.endswith(".xz") else d for r, d in found.items()}
    names = []
    for name in load_order(plain, STORAGE):
        (dest / f"{name}.ko").write_bytes(plain[name])
        names.append(f"{name}.ko")
    return names


def carrier_bytes(payload: bytes) -> bytes:
    """A CD medium: the header block, then `payload`, padded to whole blocks."""
    header = f"{MAGIC} {len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    padded = payload + b"\0" * (-len(payload) % BLOCK)
    return header.ljust(BLOCK, b"\0") + padded


def carrier_waiter(kernel: KernelArtifacts, root: Path, log: Path) -> None:
    """What a guest's /init needs to wait for a carrier (`carrier_wait`), put in `root`."""
    (root / CARRIER_DIR).mkdir(parents=True, exist_ok=True)
    order = storage_modules(kernel, root / CARRIER_DIR, log)
    (root / CARRIER_DIR / "order").write_text("\n".join(order) + "\n")
    shutil.copy2(CARRIER_SH, root / CARRIER_SH_AT)
