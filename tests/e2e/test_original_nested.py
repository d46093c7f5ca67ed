"""The original vmlaunch driver (vishmohan/vmlaunch, unchanged, from ../shared/seed/vmlaunch)
on the nested lane (real boot, Bochs -> L1 6.12 with KVM -> L2 6.12 haswell), judged by its
profile with KVM in L1 as the witness beneath.

Under KVM's nested VMX one of its VMWRITEs fails (KVM's vmcs12 has no field 0x200c, the
executive-VMCS pointer); its failure path prints `vmclear done!`, runs VMCLEAR, VMXOFF and the
frees, then returns on a stack it popped and crashes insmod. KVM in L1 sees VMXON, VMPTRLD,
VMCLEAR, VMXOFF and no VMLAUNCH. Measured: 98 s boot, 101 s for the run (2026-12-07).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.model import Outcome
from tests.e2e.conftest import RigRunner

REPO = Path(__file__).resolve().parents[2]
SEED = REPO.parent / "shared" / "seed" / "vmlaunch"
CELL = "nested-6.12-haswell"


def test_the_original_driver_on_the_nested_lane(rig: RigRunner) -> None:
    if not (SEED / "vmlaunch_simple.c").is_file():
        pytest.skip(f"the original driver's sources are not at {SEED}")
    run = rig("--lane", "nested", "--kernel", "6.12", "--cpu", "haswell",
              "--driver", str(SEED), "--profile", "vmlaunch-original")  # fmt: skip
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells[CELL]
    reasons = run.reasons(CELL)
    got = {stage: case.outcome for stage, case in cell.items()}
    assert got == {
        "build": Outcome.PASSED,
        "vmxon": Outcome.PASSED,
        "vmlaunch": Outcome.FAILED,
        "vmcall_exit": Outcome.SKIPPED,
        "teardown": Outcome.FAILED,
    }, reasons
    assert "2 warnings" in reasons["build"], reasons["build"]
    # the witness decided vmxon; the module's implied VMXON is confirmed by KVM in L1
    assert "vmxon ok (implied" in reasons["vmxon"] and "KVM in L1 saw VMXON" in reasons["vmxon"]
    assert cell["vmxon"].properties.get("witness") == "KVM in L1"
    why = reasons["vmlaunch"]
    assert why.startswith("vmcs FAIL: a VMWRITE failed (its one path to VMCLEAR"), why
    assert "KVM in L1 saw VMPTRLD, no VMLAUNCH" in why, why
    assert reasons["vmcall_exit"] == "not reached: vmlaunch failed"
    why = reasons["teardown"]
    assert why.startswith("kernel bug: ") and "NULL pointer dereference" in why, why
    assert "KVM in L1 saw VMXOFF" in why and "unload (its exit function is empty" in why, why
    beneath = next(run.runs_dir.glob(f"*/cells/{CELL}/beneath.txt")).read_text()
    kinds = [line.split()[0] for line in beneath.splitlines()[1:]]
    assert kinds == ["vmxon", "vmptrld", "vmclear", "vmxoff"], beneath
