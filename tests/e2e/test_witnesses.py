"""No stage on the driver's word alone (real boots): the witnesses beneath and beside the driver
catch what its own lines hide.

- bochs with `--cpu-witness`: a copy of the driver whose guest executes CPUID instead of
  VMCALL, that reports exit reason 0x12 anyway and that keeps its pages at rmmod while printing
  `freed ok pages=5`: vmcall_exit FAILS on Bochs' word (exit 10), teardown FAILS on the guest
  kernel's page allocator's (its kmem tracepoints), and vmlaunch passes confirmed by Bochs.
- the nested lane (its witness, KVM's trace in L1, is always on): the same copy fails
  vmcall_exit on KVM's word (it reflected exit 10 to L2) and teardown on the page allocator's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rig.model import Outcome
from tests.e2e.conftest import RigRunner

REPO = Path(__file__).resolve().parents[2]
BOCHS = ("--lane", "bochs", "--kernel", "6.12", "--cpu", "haswell")


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} moved in {path.name}"
    path.write_text(text.replace(old, new))


def lying_copy(tmp_path: Path) -> Path:
    """driver/ whose guest runs CPUID, whose exit is reported as a VMCALL, whose pages stay."""
    copy = tmp_path / "driver"
    shutil.copytree(REPO / "driver", copy, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*"))
    _patch(copy / "vmx_ops.S", "1:\tvmcall", "1:\tcpuid")
    _patch(copy / "vml_window.c", "\tvml_vmcs_read32(VMCS_EXIT_REASON, &c->exit_reason);",
           "\tvml_vmcs_read32(VMCS_EXIT_REASON, &c->exit_reason);\n"
           "\tc->exit_reason = VMX_EXIT_BASIC_VMCALL; /* broken: a lie */")  # fmt: skip
    _patch(copy / "vml_cpu.c", "\t\t__free_page(c->pages[i]);", "\t\t; /* broken: kept */")
    return copy


def test_bochs_and_the_page_allocator_catch_what_the_driver_hides(
    rig: RigRunner, tmp_path: Path
) -> None:
    run = rig(*BOCHS, "--cpu-witness", "--driver", str(lying_copy(tmp_path)))
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    reasons = run.reasons("bochs-6.12-haswell")
    assert cell["vmlaunch"].outcome is Outcome.PASSED, reasons["vmlaunch"]
    assert "Bochs saw VMLAUNCH enter the guest" in reasons["vmlaunch"]
    assert cell["vmcall_exit"].outcome is Outcome.FAILED
    assert (
        "the driver reports exit reason 0x12, the CPU beneath (Bochs) saw exit 10 (CPUID)"
        in reasons["vmcall_exit"]
    ), reasons["vmcall_exit"]
    assert cell["teardown"].outcome is Outcome.FAILED
    assert "the driver reports 5 pages freed" in reasons["teardown"], reasons["teardown"]
    assert "still held after rmmod" in reasons["teardown"]
    assert "(Bochs does not show VMXON)" in reasons["vmxon"]
    beneath = next(run.runs_dir.glob("*/cells/bochs-6.12-haswell/beneath.txt")).read_text()
    assert "exit 10" in beneath, beneath


def test_the_good_driver_passes_every_stage_bochs_witnessed(rig: RigRunner) -> None:
    """The driver as it is, with Bochs' log beneath: every stage passes, the launch and the
    exit confirmed by Bochs (JUnit property `witness`), the facts kept in the cell."""
    run = rig(*BOCHS, "--cpu-witness")
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    reasons = run.reasons("bochs-6.12-haswell")
    assert {s: c.outcome for s, c in cell.items()} == dict.fromkeys(cell, Outcome.PASSED)
    assert "Bochs saw VMLAUNCH enter the guest" in reasons["vmlaunch"], reasons["vmlaunch"]
    for stage in ("vmlaunch", "vmcall_exit"):
        assert cell[stage].properties.get("witness") == "Bochs", (stage, cell[stage].properties)
    assert "every allocation of vmlaunch came back" in reasons["teardown"], reasons["teardown"]
    beneath = next(run.runs_dir.glob("*/cells/bochs-6.12-haswell/beneath.txt")).read_text()
    assert "exit 18" in beneath, beneath


def test_kvm_in_l1_and_the_page_allocator_catch_what_the_driver_hides(
    rig: RigRunner, tmp_path: Path
) -> None:
    run = rig("--lane", "nested", "--kernel", "6.12", "--cpu", "haswell",
              "--driver", str(lying_copy(tmp_path)))  # fmt: skip
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["nested-6.12-haswell"]
    reasons = run.reasons("nested-6.12-haswell")
    assert cell["vmxon"].outcome is Outcome.PASSED and "KVM in L1 saw VMXON" in reasons["vmxon"]
    assert cell["vmcall_exit"].outcome is Outcome.FAILED
    assert (
        "the driver reports exit reason 0x12, the CPU beneath (KVM in L1) saw exit 10 (CPUID)"
        in reasons["vmcall_exit"]
    ), reasons["vmcall_exit"]
    assert cell["teardown"].outcome is Outcome.FAILED
    assert "still held after rmmod" in reasons["teardown"], reasons["teardown"]
