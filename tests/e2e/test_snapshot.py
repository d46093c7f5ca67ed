"""Boot once, test many (real boots): a bochs cell restored from a saved guest is judged like a
booted one, the driver sees the same CPU, and a save that differs is never restored.

The first `--snapshot` run boots the base guest (no /rig), which loads the CD-ROM's drivers
and waits; Bochs saves it (its Suspend button, over RFB). Before any cell restores it, the
fidelity gate runs the probe (the rig's own driver, then both of its injected faults) booted
fresh and restored: their lines must be equal (gate.json beside the save). The cell then
restores the save, gets its /rig on the CD and runs today's sequence. A second run restores
the same save. Then the save is corrupted (IA32_FEATURE_CONTROL in its CPU state) and gated
again: the gate fails on the driver's check line, and the cell boots fresh.
"""

from __future__ import annotations

import json
import shutil

from rig.artifacts.cache import default_cache_root
from rig.guest.carrier import gate_facts
from rig.model import Outcome
from tests.e2e.conftest import RigRun, RigRunner

CELL = "bochs-6.12-haswell"
BOCHS = ("--lane", "bochs", "--kernel", "6.12", "--cpu", "haswell", "--snapshot")


def snapshot_of(run: RigRun) -> str:
    return run.cells[CELL]["vmxon"].properties.get("snapshot", "")


def test_a_restored_guest_is_judged_like_a_booted_one_and_a_corrupt_save_is_not_used(
    rig: RigRunner,
) -> None:
    first = rig(*BOCHS)
    assert first.rc == 0, first.output[-3000:]
    assert first.outcomes(CELL) == dict.fromkeys(first.outcomes(CELL), Outcome.PASSED)
    key = snapshot_of(first)
    assert key.startswith("corei7_haswell_4770-"), first.cells[CELL]["vmxon"].properties
    entry = default_cache_root() / "bochs-snapshots" / key
    gate = json.loads((entry / "gate.json").read_text())
    assert gate["ok"] is True and gate["booted"] == gate["restored"], gate["why"]
    decoded = [line for line in gate["booted"] if " FAIL " in line]
    assert any("VM-instruction error 8" in line for line in decoded), decoded
    assert any("exit reason 33" in line for line in decoded), decoded
    # the cell's own restored guest printed the lines of the probe's first, fresh, run
    facts = gate_facts((first.cell_dir(CELL) / "console.txt").read_text(),
                       (first.cell_dir(CELL) / "agent.txt").read_text())  # fmt: skip
    driver = facts[:-1]
    assert driver == gate["booted"][: len(driver)], (driver, gate["booted"])
    assert facts[-1] == gate["booted"][-1]  # RIG-CPU: vmx, cpus, model

    again = rig(*BOCHS)
    assert again.rc == 0, again.output[-3000:]
    assert snapshot_of(again) == key  # the same save, not made again
    assert again.outcomes(CELL) == first.outcomes(CELL)

    cpu0 = entry / "save" / "cpu0"
    kept = {p: p.read_bytes() for p in (cpu0, entry / "gate.json")}
    try:
        state = cpu0.read_text()
        assert state.count("ia32_feature_ctrl = 0x00000005") == 1
        cpu0.write_text(state.replace("ia32_feature_ctrl = 0x00000005",
                                      "ia32_feature_ctrl = 0x00000001"))  # fmt: skip
        (entry / "gate.json").unlink()
        corrupt = rig(*BOCHS)
        assert corrupt.rc == 0, corrupt.output[-3000:]  # booted fresh: the driver still passes
        assert snapshot_of(corrupt) == ""
        assert corrupt.outcomes(CELL) == first.outcomes(CELL)
        failed = json.loads((entry / "gate.json").read_text())
        assert failed["ok"] is False
        assert "feature_control=0x5" in failed["why"] and "feature_control=0x1" in failed["why"]
    finally:
        for path, data in kept.items():
            path.write_bytes(data)
        shutil.rmtree(entry / "gate", ignore_errors=True)
