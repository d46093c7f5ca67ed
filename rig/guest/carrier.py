"""The initramfs guest split for snapshots: a base that boots and waits, and a carrier per cell.

    base_initramfs(cache, kernel) -> Path            initrd with no /rig (cached): loads them,
                                                     says `RIG-SNAPSHOT ready`, waits for a carrier
    pack_carrier(rig_dir, out) -> int                the cell's /rig as a CD medium (bytes)
    warm_start(cache, kernel, rig_dir, workdir, cmdline) -> WarmStart    both, and their key
    gate_facts(console, agent) -> list[str]          what a restore must print as a boot did
    GATE_RUNS                                        the gate's probe: the rig's own driver,
                                                     then both of its injected faults

A snapshot is saved while the base guest waits (rig.lanes.bochs_snapshot); each restore swaps
the CD's medium for the cell's carrier (its format and the guest's side: rig.artifacts.media),
which brings the cell's /rig: exactly what a fresh boot's initramfs holds.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

from rig.artifacts import (
    Cache,
    digest,
    file_digest,
    require_file,
    require_tool,
    write_cpio,
)
from rig.artifacts.media import CARRIER_SH, STORAGE, STORAGE_FILES, carrier_bytes, carrier_waiter
from rig.guest.crash import DRAIN, DRAIN_AT
from rig.model import KernelArtifacts, WarmStart
from rig.paths import BUSYBOX, GUESTS_DIR


def base_initramfs(cache: Cache, kernel: KernelArtifacts) -> Path:
    """The snapshot's initrd: busybox, /init and the CD-ROM drivers; no /rig. Cached by the
    kernel and every file that goes in, so the same bytes make the same snapshot key."""
    require_tool("cpio")
    require_file(BUSYBOX)
    inputs = [BUSYBOX, DRAIN, GUESTS_DIR / "initramfs/init", CARRIER_SH]
    key = digest("base-initrd", str(kernel.vmlinuz), kernel.key, STORAGE, STORAGE_FILES,
                 [file_digest(p) for p in inputs])  # fmt: skip
    with cache.building("snapshot-initrds", f"{kernel.spec.name}-{key}") as (final, tmp):
        if tmp is not None:
            root = tmp / "root"
            for d in ("bin", "proc", "sys", "dev", "lib"):
                (root / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(BUSYBOX, root / "bin/busybox")
            shutil.copy2(DRAIN, root / DRAIN_AT)
            shutil.copy2(GUESTS_DIR / "initramfs/init", root / "init")
            (root / "init").chmod(0o755)
            carrier_waiter(kernel, root, tmp / "build.log")
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
