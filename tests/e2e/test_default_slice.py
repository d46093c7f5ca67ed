"""The README's main job: the default slice, on both emulated lanes, judged from real boots."""

from __future__ import annotations

from rig.model import Outcome
from tests.e2e.conftest import RigRunner

STAGES = ("build", "vmxon", "vmlaunch", "vmcall_exit", "teardown")


def test_default_slice_bochs_launches_and_tcg_declines(rig: RigRunner) -> None:
    run = rig("-n", "2")
    assert run.rc == 0, run.output[-3000:]
    # bochs: the whole VMX path on two CPU generations
    for cpu in ("haswell", "penryn"):
        cell = run.cells[f"bochs-6.12-{cpu}"]
        for stage in STAGES:
            assert cell[stage].outcome is Outcome.PASSED, (cpu, stage, cell[stage].message)
        # the console is attached once per cell (JUnit: not copied into every stage)
        assert any("exit reason 0x12" in cell[s].system_out for s in STAGES)
    # tcg: built, loaded, declined cleanly; the VMX stages are skipped with the reason
    cell = run.cells["tcg-6.12-penryn"]
    assert cell["build"].outcome is Outcome.PASSED
    assert cell["teardown"].outcome is Outcome.PASSED, cell["teardown"].message
    for stage in ("vmxon", "vmlaunch", "vmcall_exit"):
        assert cell[stage].outcome is Outcome.SKIPPED
        assert "VMX" in cell[stage].message
    # the default slice holds only cells that can run (tcg has no Haswell model)
    assert set(run.cells) == {"bochs-6.12-haswell", "bochs-6.12-penryn", "tcg-6.12-penryn"}
