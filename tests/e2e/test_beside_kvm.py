"""Living beside KVM, for real (the driver issue's coexistence tests), on the bochs lane.

The guest kernel's own kvm_intel is loaded before the driver and holds VMX with a VM open
(`--beside kvm`: on 6.12 kvm_intel enables VMX at load, before 6.12 when a VM exists):
- the driver declines `vmx_busy` (arranged: SKIPPED), KVM's VM outlives the driver's runs,
  and KVM runs a second VM after the rmmod: the driver changed nothing;
- a copy of the driver whose CR4.VMXE check is removed goes on to use VMX that is KVM's, and
  the judge fails it.
After the last rmmod of a plain run every VMX lane loads kvm_intel and runs a VM (the teardown
witness, tests/e2e/test_judge_boots.py has the driver that fails it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.model import Outcome
from tests.e2e.conftest import RigRunner, driver_with_busy_check

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kernel", ["6.12", "5.10"])
def test_kvm_holding_vmx_makes_the_driver_decline_and_change_nothing(
    rig: RigRunner, kernel: str
) -> None:
    run = rig("--lane", "bochs", "--kernel", kernel, "--cpu", "haswell", "--beside", "kvm")
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells[f"bochs-{kernel}-haswell"]
    assert cell["build"].outcome is Outcome.PASSED
    for stage in ("vmxon", "vmlaunch", "vmcall_exit"):
        assert cell[stage].outcome is Outcome.SKIPPED, (stage, cell[stage].message)
    assert "declined as arranged" in cell["vmxon"].message
    assert "--beside kvm" in cell["vmxon"].message
    assert cell["teardown"].outcome is Outcome.PASSED, cell["teardown"].message
    teardown = run.reasons(f"bochs-{kernel}-haswell")["teardown"]
    assert "outlived its runs" in teardown, teardown
    assert "ran another VM after the rmmod" in teardown, teardown


def test_a_driver_that_ignores_kvms_vmx_fails(rig: RigRunner, tmp_path: Path) -> None:
    copy = driver_with_busy_check(tmp_path, "0")
    run = rig("--lane", "bochs", "--kernel", "6.12", "--cpu", "haswell", "--beside", "kvm",
              "--driver", str(copy))  # fmt: skip
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert cell["vmxon"].outcome is Outcome.FAILED, cell["vmxon"].message
    assert "did not decline" in cell["vmxon"].message, cell["vmxon"].message


@pytest.mark.parametrize(
    ("kernel", "params", "words"),
    [
        ("6.12", (), "while the driver was loaded (window mode, hold=0) KVM loaded and ran a VM"),
        ("6.12", ("--param", "hold_vmx=1"), "while the driver held VMX (hold=1) KVM was refused"),
        ("5.10", (), "while the driver held VMX (hold=1) KVM was refused"),
    ],
    ids=["6.12-window", "6.12-hold", "5.10-hold"],
)
def test_what_kvm_does_while_the_driver_is_loaded(
    rig: RigRunner, kernel: str, params: tuple[str, ...], words: str
) -> None:
    """kvm_intel loaded between the driver's insmod and rmmod: in window mode VMX is free
    outside the launch window and KVM runs its VM; in hold mode the driver is in VMX
    operation on every CPU and KVM is refused (6.12: at load, 5.10: at VM creation)."""
    run = rig("--lane", "bochs", "--kernel", kernel, "--cpu", "haswell",
              "--beside", "kvm-during", *params)  # fmt: skip
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells[f"bochs-{kernel}-haswell"]
    for stage in ("vmxon", "vmlaunch", "vmcall_exit", "teardown"):
        assert cell[stage].outcome is Outcome.PASSED, (stage, cell[stage].message)
    teardown = run.reasons(f"bochs-{kernel}-haswell")["teardown"]
    assert words in teardown, teardown
