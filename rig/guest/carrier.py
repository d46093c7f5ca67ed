"""The initramfs guest split for snapshots: a base that boots and waits, and a carrier per cell.

    storage_modules(kernel, dest, log) -> list[str] the CD-ROM's drivers, in load order
    base_initramfs(cache, kernel) -> Path            initrd with no /rig (cached): loads them,
                                                     says `RIG-SNAPSHOT ready`, waits for a carrier
    pack_carrier(rig_dir, out) -> int                the cell's /rig as a CD medium (bytes)
    warm_start(cache, kernel, rig_dir, workdir, cmdline) -> WarmStart    both, and their key
    gate_facts(console, agent) -> list[str]          what a restore must print as a boot did
    GATE_RUNS                                        the gate's probe: the rig's own driver,
                                                     then both of its injected faults

A snapshot is saved while the base guest waits (rig.lanes.bochs_snapshot); each restore swaps
the CD's medium for the cell's carrier. The guest (guests/initramfs/init, `take_carrier`)
flushes /dev/sr0's buffers, reads the header line `RIGCARRIER1 <length> <sha256>` from the
first 2048-byte block, then that many bytes from the next blocks, checks the sha256 and
unpacks the gzipped cpio at /: /rig holds exactly what a fresh boot's initramfs holds.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
import shutil
import subprocess
from pathlib import Path

from rig.artifacts import (
    Cache,
    digest,
    file_digest,
    kernel_modules,
    require_file,
    require_tool,
    write_cpio,
)
from rig.errors import InfraError
from rig.guest.crash import DRAIN, DRAIN_AT
from rig.model import KernelArtifacts, WarmStart
from rig.paths import BUSYBOX, GUESTS_DIR

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


def base_initramfs(cache: Cache, kernel: KernelArtifacts) -> Path:
    """The snapshot's initrd: busybox, /init and the CD-ROM drivers; no /rig. Cached by the
    kernel and every file that goes in, so the same bytes make the same snapshot key."""
    require_tool("cpio")
    require_file(BUSYBOX)
    inputs = [BUSYBOX, DRAIN, GUESTS_DIR / "initramfs/init"]
    key = digest("base-initrd", str(kernel.vmlinuz), kernel.key, STORAGE, STORAGE_FILES,
                 [file_digest(p) for p in inputs])  # fmt: skip
    with cache.building("snapshot-initrds", f"{kernel.spec.name}-{key}") as (final, tmp):
        if tmp is not None:
            root = tmp / "root"
            for d in ("bin", "proc", "sys", "dev", CARRIER_DIR):
                (root / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(BUSYBOX, root / "bin/busybox")
            shutil.copy2(DRAIN, root / DRAIN_AT)
            shutil.copy2(GUESTS_DIR / "initramfs/init", root / "init")
            (root / "init").chmod(0o755)
            order = storage_modules(kernel, root / CARRIER_DIR, tmp / "build.log")
            (root / CARRIER_DIR / "order").write_text("\n".join(order) + "\n")
            write_cpio(root, tmp / "initrd.gz", compress=True)
            shutil.rmtree(root)
    return final / "initrd.gz"


def warm_start(
    cache: Cache, kernel: KernelArtifacts, rig_dir: Path, workdir: Path, cmdline: str
) -> WarmStart:
    """The base initrd and this cell's carrier; the key of the guest a snapshot holds."""
    base = base_initramfs(cache, kernel)
    carrier = workdir / "carrier.img"
    pack_carrier(rig_dir, carrier)
    key = digest("warm", file_digest(kernel.vmlinuz), file_digest(base), cmdline)
    return WarmStart(base=base, carrier=carrier, key=key)


GATE_RUNS: tuple[tuple[str, ...], ...] = (
    (),
    ("break_field=host_addr_space_size",),  # VMfailValid, VM-instruction error 8
    ("break_field=guest_rflags_bit1",),  # VM-entry failure, exit reason 0x80000021
)
"""The gate's probe: the rig's own driver (rig.paths.DEFAULT_DRIVER) once as it is, then
with each fault it can inject: its capability, control, exit and decoded-error lines."""

_DRIVER_LINE = re.compile(r"^\[\s*\d+\.\d+\] (vmlaunch: cpu=\S+ .*)$")
_ADDRESS = re.compile(r"\b(vmcs|pa|va|region|addr)=0x[0-9a-f]+")
_CPU = re.compile(r"^RIG-CPU .*$")


def gate_facts(console: str, agent: str) -> list[str]:
    """The probe's lines that a restore must print exactly as a fresh boot did: the driver's
    (timestamps off, physical addresses masked: the allocator may place pages elsewhere) and
    the agent's RIG-CPU line (the guest's VMX flag, CPUs, model name)."""
    facts = [_ADDRESS.sub(r"\1=ADDR", m[1]) for m in map(_DRIVER_LINE.match,
             console.splitlines()) if m]  # fmt: skip
    return facts + [line for line in agent.splitlines() if _CPU.match(line)]


def carrier_bytes(payload: bytes) -> bytes:
    """A CD medium: the header block, then `payload`, padded to whole blocks."""
    header = f"{MAGIC} {len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    padded = payload + b"\0" * (-len(payload) % BLOCK)
    return header.ljust(BLOCK, b"\0") + padded


def pack_carrier(rig_dir: Path, out: Path) -> int:
    """`rig_dir` (a /rig tree, as write_plan makes it) as the carrier file `out`: its size."""
    stage = out.parent / f".{out.name}.tree"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(rig_dir, stage / "rig", symlinks=True)
    raw = stage / "rig.cpio"
    write_cpio(stage, raw, compress=False)
    data = carrier_bytes(gzip.compress(raw.read_bytes(), compresslevel=6))
    shutil.rmtree(stage)
    out.write_bytes(data)
    return len(data)


def cpio_names(data: bytes) -> list[str]:
    """The member names of an uncompressed newc archive (for checks and tests)."""
    proc = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    return proc.stdout.decode().split()
