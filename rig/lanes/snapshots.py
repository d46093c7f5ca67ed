"""Snapshots, whatever the emulator: which save a boot may restore, and the fidelity gate.

    ready_line(agent) -> str | None          the base guest's `RIG-SNAPSHOT ready` answer
    file_id(path) -> str                      an emulator's identity in a save's key
    usable(spec, store, boot) -> Path | None  the save this boot may restore (made on first use,
                                              gated before any cell restores it)
    fit_medium(spec, folder) -> bool          the cell's carrier sized as the saved guest's CD
    fit_carrier(carrier, folder) -> bool      the same for a carrier the lane made itself
    gate(spec, folder, boot) -> Gate          may cells restore the save in `folder`?

A lane that restores (bochs: rig.lanes.bochs_snapshot; tcg: rig.lanes.libvirt_snapshot) says
how its emulator saves the base guest (`Store.make`, into the cache's `Store.kind` under
`Store.name`, which names everything the save is made of) and how it boots a spec fresh or
restored (`boot(spec, folder | None)`); everything else is here, the same for every lane.

The fidelity gate: before any cell restores a save, the guest's probe (WarmStart.probe: the
rig's own driver, then both of its injected faults) runs once booted fresh and once restored
from the save; what the probe's `facts` pick from each (the driver's capability, control, exit
and decoded-error lines, the guest's CPU line) must be equal. The outcome is kept beside the
save (gate.json, with both boots' facts): a save that failed it is never restored, and its cells
boot fresh. Deleting gate.json makes the next run gate the save again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from filelock import FileLock

from rig.artifacts import Cache, file_digest
from rig.errors import InfraError
from rig.model import BootEnd, BootResult, BootSpec

READY = "RIG-SNAPSHOT ready"  # guests/initramfs/init, once the CD-ROM's drivers are in
_READY_LINE = re.compile(rf"^{READY} sr0=(\w+)\r?\n", re.M)  # whole lines only; a tty ends \r\n
MADE_FILE = "made.json"  # beside a save: {"ready_s", "medium_bytes", ...}
GATE_FILE = "gate.json"

Boot = Callable[[BootSpec, Path | None], BootResult]


def file_id(path: Path) -> str:
    """An emulator's or firmware's identity for a save's key: its sha256 (Bochs, its BIOS
    images and QEMU's firmware are small; QEMU's 18 MB binary takes ~40 ms)."""
    return file_digest(path) if path.exists() else f"missing:{path}"


def ready_line(agent: str) -> str | None:
    """The `sr0=` word of the base guest's whole ready line on its agent channel, if said."""
    m = _READY_LINE.search(agent)
    return m[1] if m else None


@dataclass(frozen=True)
class Store:
    """Where a lane keeps a save, and how it makes one: `make(folder, tmp)` saves the base
    guest into the empty `folder` (tmp: the build's scratch, whose build.log a failed save
    keeps) and returns what goes in made.json, `medium_bytes` included."""

    cache_root: Path
    kind: str  # the cache kind ("bochs-snapshots", "tcg-snapshots")
    name: str  # the save's key: everything it is made of
    make: Callable[[Path, Path], dict[str, object]]


def usable(spec: BootSpec, store: Store, boot: Boot) -> Path | None:
    """The save this boot may restore: made on first use, and only once its gate passed.
    A save that could not be made leaves its log as `NAME.failed.log` beside the saves
    (`rig images prune` removes it): later cells boot fresh instead of trying again."""
    if not spec.restorable():
        return None
    failed = store.cache_root / store.kind / f"{store.name}.failed.log"
    if failed.is_file():
        return None
    try:
        with Cache(store.cache_root).building(store.kind, store.name) as (final, tmp):
            if tmp is not None:
                (tmp / "save").mkdir()
                made = store.make(tmp / "save", tmp)
                (tmp / MADE_FILE).write_text(json.dumps(made) + "\n")
    except InfraError:
        if failed.is_file():
            return None  # this boot goes on fresh; the log says why the save failed
        raise
    folder = final / "save"
    return folder if gate(spec, folder, boot).ok else None


def fit_medium(spec: BootSpec, folder: Path) -> bool:
    """fit_carrier for the guest's own carrier (WarmStart.carrier)."""
    warm = spec.image.warm
    assert warm is not None
    return fit_carrier(warm.carrier, folder)


def fit_carrier(carrier: Path, folder: Path) -> bool:
    """Size the cell's carrier as the CD the saved guest knows (its capacity was read at boot:
    an emulator may stop on a read past a medium's end, and the kernel reads ahead). False when
    the carrier does not fit in it."""
    made = json.loads((folder.parent / MADE_FILE).read_text())
    size, medium = carrier.stat().st_size, int(made["medium_bytes"])
    if size > medium:
        return False
    os.truncate(carrier, medium)  # zeros past the payload (sparse)
    return True


@dataclass(frozen=True)
class Gate:
    ok: bool
    why: str  # for people: the first difference, or what kept the gate from running


def _differ(fresh: list[str], restored: list[str]) -> str:
    for i, (a, b) in enumerate(zip(fresh, restored, strict=False)):
        if a != b:
            return f"line {i + 1}: booted {a!r}, restored {b!r}"
    if len(fresh) != len(restored):
        return f"booted {len(fresh)} lines, restored {len(restored)}"
    return ""


def gate(spec: BootSpec, folder: Path, boot: Boot) -> Gate:
    """Whether cells may restore the save in `folder`: its gate's outcome, run once (under
    a lock beside the save) by booting the probe fresh and restored with `boot`."""
    warm = spec.image.warm
    entry = folder.parent
    with FileLock(str(entry / "gate.lock")):
        if (entry / GATE_FILE).is_file():
            kept = json.loads((entry / GATE_FILE).read_text())
            return Gate(bool(kept.get("ok")), str(kept.get("why", "")))
        if warm is None or warm.probe is None:
            return Gate(False, "the guest brought no probe for the gate")
        probe = warm.probe.image()
        work = entry / "gate"
        shutil.rmtree(work, ignore_errors=True)
        facts: dict[str, list[str]] = {}
        ends: dict[str, BootEnd] = {}
        for how, image, save in (
            ("booted", replace(probe, warm=None), None),
            ("restored", probe, folder),
        ):
            (work / how).mkdir(parents=True)
            result = boot(replace(spec, image=image, workdir=work / how), save)
            if save is not None and not result.restored:
                return Gate(False, "the probe's carrier did not fit the save's CD: not gated")
            facts[how] = warm.probe.facts(result.console, result.agent)
            ends[how] = result.end
        if set(ends.values()) != {BootEnd.POWEROFF}:  # not the save's fault: not kept
            how_ended = f"{ends['booted']} booted, {ends['restored']} restored"
            return Gate(False, f"the probe's guests ended {how_ended}: gated again next time")
        why = _differ(facts["booted"], facts["restored"])
        if not why and not facts["booted"]:
            why = "the probe printed nothing to compare"
        outcome = {"ok": not why, "why": why, **facts}
        tmp = entry / f".{GATE_FILE}.tmp"
        tmp.write_text(json.dumps(outcome, indent=1) + "\n")
        tmp.replace(entry / GATE_FILE)  # a killed writer leaves no half a file
        return Gate(not why, why)
