"""Boot once, test many on the tcg lane (real boots): libvirt saves the waiting base guest to a
file, a cell restores it with its own console, agent channel and carrier, and a save whose
guest differs from a fresh boot's fails the gate and is never restored.

The corruption is in the guest's memory, as a save could really differ: the kernel's copy of
the CPU's brand string (what /proc/cpuinfo says, and the agent's RIG-CPU line reads) is
rewritten in the saved RAM. libvirt restores it without complaint; only the gate can tell.
"""

from __future__ import annotations

import json
import shutil

from rig.artifacts.cache import default_cache_root
from rig.guest.carrier import gate_facts
from tests.e2e.conftest import RigRun, RigRunner

CELL = "tcg-6.12-penryn"
TCG = ("--lane", "tcg", "--kernel", "6.12", "--cpu", "penryn", "--snapshot")
BRAND = b"(Penryn Class Core 2)"
OTHER = b"(Pxnryn Class Core 2)"  # the same length: every other byte of the save stays put


def snapshot_of(run: RigRun) -> str:
    return run.cells[CELL]["build"].properties.get("snapshot", "")


def test_a_restored_tcg_guest_declines_as_a_booted_one_and_a_corrupt_save_is_not_used(
    rig: RigRunner,
) -> None:
    fresh = rig("--lane", "tcg", "--kernel", "6.12", "--cpu", "penryn")
    assert fresh.rc == 0, fresh.output[-3000:]
    assert snapshot_of(fresh) == ""

    first = rig(*TCG)
    assert first.rc == 0, first.output[-3000:]
    # build and teardown pass, the VMX stages skip (no VMX under TCG), as in the fresh run
    assert first.outcomes(CELL) == fresh.outcomes(CELL)
    key = snapshot_of(first)
    assert key.startswith("Penryn-"), first.cells[CELL]["build"].properties
    entry = default_cache_root() / "libvirt-snapshots" / key
    gate = json.loads((entry / "gate.json").read_text())
    assert gate["ok"] is True and gate["booted"] == gate["restored"], gate["why"]
    assert any("why=no_vmx" in line for line in gate["booted"]), gate["booted"]
    # the restored cell printed what the fresh cell printed (addresses and timestamps aside)
    cells = [run.cell_dir(CELL) for run in (fresh, first)]
    seen = [gate_facts((d / "console.txt").read_text(), (d / "agent.txt").read_text())
            for d in cells]  # fmt: skip
    assert seen[0] == seen[1] and seen[0], seen
    assert json.loads((cells[1] / "boot.json").read_text())["restored"] == key

    save = entry / "save" / "domain.save"
    kept = {p: p.read_bytes() for p in (save, entry / "gate.json")}
    try:
        data = kept[save]
        assert BRAND in data
        save.write_bytes(data.replace(BRAND, OTHER))
        (entry / "gate.json").unlink()
        corrupt = rig(*TCG)
        assert corrupt.rc == 0, corrupt.output[-3000:]  # booted fresh: the cell still passes
        assert snapshot_of(corrupt) == ""
        assert corrupt.outcomes(CELL) == fresh.outcomes(CELL)
        failed = json.loads((entry / "gate.json").read_text())
        assert failed["ok"] is False
        assert "RIG-CPU" in failed["why"] and "Pxnryn" in failed["why"], failed["why"]
    finally:
        for path, data in kept.items():
            path.write_bytes(data)
        shutil.rmtree(entry / "gate", ignore_errors=True)
