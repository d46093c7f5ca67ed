"""nested lane snapshots: L0 and L1 saved once, L1 waiting with KVM loaded; each cell restores
them and brings its L2 on a carrier.

    snapshot_name(l1, l0_model, memory_mib, bochs) -> str    everything the save is made of
    save_l1(l1, spec, bochs, save, tmp) -> dict               the save (Store.make's half)
    l2_carrier(cell_cpio, out) -> Path                        the cell's /l2 as a CD medium
    restore_state(save, state, ports, carrier)                the cell's DIR for `bochs -r`

What is saved: Bochs (L0) with L1 booted from an ISO that holds no cell. L1's init loads KVM,
runs the kvm lane's preflight, loads the CD-ROM's drivers and says `RIG-SNAPSHOT ready` on its
console (guests/nested/init, `carrier_wait`); the rig saves the machine there, as on the bochs
lane (rig.lanes.bochs_snapshot). A restore puts the cell's carrier (the same /l2 that GRUB
loads on a fresh boot: L2's kernel, its initrd and L1's launch plan) where the ISO was; L1
unpacks it, says its preflight again and starts L2 as on a fresh boot. L2 itself always boots
fresh: the save holds no L2, so it serves every L2 kernel and model that its L0 model backs.

The save is keyed by the L1 image (its kernel, init, QEMU and KVM modules), the L0 CPU model,
L0's memory and the Bochs binary and BIOS images; the fidelity gate before any cell restores
it is the one every lane has (rig.lanes.snapshots.gate): the probe's L2 lines, booted and
restored, must be equal.
"""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

from rig.artifacts import digest
from rig.artifacts.media import carrier_bytes
from rig.lanes.bochs import Bochs, bochsrc
from rig.lanes.bochs_snapshot import restore_config, restore_dir, save_machine
from rig.lanes.nested_l1 import L1Image, l0_iso, l0_ports
from rig.lanes.snapshots import file_id
from rig.model import BootSpec

SNAPSHOT_RECIPE = "1"  # bump when what a save holds changes
SNAPSHOTS = "nested-snapshots"  # the cache kind of the saves


def snapshot_name(l1: L1Image, l0_model: str, memory_mib: int, bochs: Bochs) -> str:
    key = digest("nested-l1-snapshot", SNAPSHOT_RECIPE, l1.initrd.parent.name,
                 file_id(l1.vmlinuz), l0_model, memory_mib,
                 [file_id(p) for p in bochs.files])  # fmt: skip
    return f"{l0_model}-{key}"


def save_l1(l1: L1Image, spec: BootSpec, bochs: Bochs, save: Path, tmp: Path) -> dict[str, object]:
    """Boot L1 with no cell under Bochs (`spec`: L0's model and memory) and save the machine
    into `save` once L1 waits for its carrier; what goes in made.json."""
    boot = tmp / "boot"
    boot.mkdir()
    iso = l0_iso(l1, None, boot)
    l1con, l2con, agent, trace = (
        boot / f for f in ("l1-console.txt", "console.txt", "agent.txt", "l1-trace.txt")
    )
    text = bochsrc(replace(spec, workdir=boot), iso, l1con, l2con, boot / "bochs.log", save=True,
                   bios=bochs.bios, vgabios=bochs.vgabios)  # fmt: skip
    (boot / "bochsrc").write_text(text + l0_ports(agent, trace))
    argv = bochs.argv(boot, ["-f", str(boot / "bochsrc")])
    # L1 says it is ready on its own console; Bochs' output goes to build.log, which a
    # failed save keeps (NAME.failed.log)
    ready = save_machine(argv, boot, save, l1con, spec.timeout_s, out=tmp / "build.log")
    made: dict[str, object] = {"ready_s": round(ready, 1), "medium_bytes": iso.stat().st_size}
    iso.unlink()
    return made


def l2_carrier(cell_cpio: Path, out: Path) -> Path:
    """The cell's cpio (/l2) as a carrier medium at `out` (rig.artifacts.media)."""
    out.write_bytes(carrier_bytes(gzip.compress(cell_cpio.read_bytes(), compresslevel=1)))
    return out


def restore_state(
    save: Path, state: Path, *, l1_console: Path, console: Path, agent: Path, trace: Path,
    log: Path, carrier: Path,
) -> None:  # fmt: skip
    """The cell's DIR for `bochs -r`: the save, with the cell's four ports, log and carrier."""
    config = restore_config((save / "config").read_text(), console=l1_console, agent=console,
                            log=log, medium=carrier,
                            more=(("com3.dev", agent), ("com4.dev", trace)))  # fmt: skip
    restore_dir(save, state, config)
