"""The teardown witness: its program (built and run for real), its lines, and its rule."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rig.artifacts import Artifacts, Cache
from rig.guest.protocol import Witness, parse_lines
from rig.model import BootEnd, BootResult, Outcome
from rig.verdict.beside import beside_outlived, beside_setup_failure, judge_during
from rig.verdict.crash import TRIGGER, CrashSplit, crash_teardown, split_at_crash
from rig.verdict.witness import judge_witness

HEAD = ["RIG-BEGIN run=r cell=c kernel=k", "RIG-CPU vmx=1 cpus=1 model=x", "RIG-END"]


def witness_of(*lines: str, ended: bool = True) -> Witness | None:
    body = ["RIG-WITNESS start vmx=1", *lines, *(["RIG-WITNESS end"] if ended else [])]
    return parse_lines([*HEAD[:2], *body, *(HEAD[2:] if ended else [])]).witness


LOADED = [f"RIG-WITNESS load module={m} rc=0 error=" for m in ("irqbypass", "kvm", "kvm-intel")]


@pytest.fixture(scope="module")
def witness_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (./dev.sh install brings it)")
    cache = Cache(tmp_path_factory.mktemp("cache"))
    return Artifacts(cache, progress=lambda _msg: None).witness()


def test_the_program_is_static_and_cached(witness_program: Path) -> None:
    assert (
        "statically linked"
        in subprocess.run(
            ["file", "-L", str(witness_program)], capture_output=True, text=True, check=False
        ).stdout
        or b"INTERP" not in witness_program.read_bytes()[:4096]
    )
    again = Artifacts(Cache(witness_program.parents[2]), progress=lambda _m: None).witness()
    assert again == witness_program


def test_the_program_runs_a_vm_where_kvm_works(witness_program: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no /dev/kvm on this host: the failure paths are tested below")
    out = subprocess.run([str(witness_program)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == "kvm-witness: ok exits=io,hlt\n"


def test_the_program_names_the_step_and_errno_that_failed(witness_program: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to put /dev/null where /dev/kvm is")
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm node to put /dev/null over")
    # /dev/null opens, but it is no KVM: the VM creation fails with ENOTTY
    script = 'mount --bind /dev/null /dev/kvm && exec "$1"'
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(witness_program)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stdout == "kvm-witness: FAIL step=create_vm errno=-25 name=ENOTTY\n"


EBUSY_VM = "RIG-WITNESS vm rc=1 kvm-witness: FAIL step=create_vm errno=-16 name=EBUSY"
OK_VM = "RIG-WITNESS vm rc=0 kvm-witness: ok exits=io,hlt"


@pytest.mark.parametrize(
    ("lines", "outcome", "words"),
    [
        pytest.param([*LOADED, OK_VM], Outcome.PASSED, "", id="a VM ran"),
        # before 6.12 KVM enables VMX when the first VM is created
        pytest.param([*LOADED, "[   9.1] kvm: enabling virtualization on CPU1 failed", EBUSY_VM],
                     Outcome.FAILED, "could not enable VMX on CPU 1", id="EBUSY with KVM's line"),
        pytest.param([*LOADED, "RIG-WITNESS vm rc=1 kvm-witness: FAIL step=create_vm errno=-16"],
                     Outcome.FAILED, "(EBUSY)", id="EBUSY alone"),
        pytest.param([*LOADED, "RIG-WITNESS vm rc=1 kvm-witness: FAIL step=run wanted=io "
                      "exit=fail_entry reason=9 hw_entry_failure_reason=0x21"],
                     Outcome.FAILED, "could not run a VM", id="entry failed"),
        pytest.param(["RIG-WITNESS load module=irqbypass rc=0 error=",
                      "RIG-WITNESS load module=kvm rc=1 error=Invalid_module_format"],
                     Outcome.ERROR, "kvm.ko did not load (Invalid module format)",
                     id="kvm.ko broken"),
        pytest.param([*LOADED[:2], "[  9.2] BUG: unable to handle page fault for address: 0",
                      "RIG-WITNESS load module=kvm-intel rc=137 error="],
                     Outcome.FAILED, "kernel bug in the teardown witness", id="oops"),
        pytest.param([*LOADED, "[ 1.0] rigflood: kvm: enabling virtualization on CPU0 failed",
                      OK_VM], Outcome.PASSED, "", id="KVM's words inside another line"),
        pytest.param([*LOADED[:2], "RIG-WITNESS load module=kvm-intel rc=95 error=Not_supported",
                      "[ 16.8] kvm_intel: VMX not enabled (by BIOS) in MSR_IA32_FEAT_CTL on CPU 0"],
                     Outcome.SKIPPED, "not applicable: kvm_intel refuses this CPU model "
                     "('kvm_intel: VMX not enabled (by BIOS) in MSR_IA32_FEAT_CTL on CPU 0')",
                     id="KVM refuses the model"),
        pytest.param([*LOADED[:2], "RIG-WITNESS load module=kvm-intel rc=5 error=I_O_error"],
                     Outcome.FAILED, "did not load (I O error) and said nothing",
                     id="kvm_intel fails silently"),
        pytest.param([*LOADED[:2], "[ 5.0] WARNING: CPU: 0 PID: 1 at arch/x86/mm/pat/set_memory.c:"
                      "600 verify_rwx+0x5c/0x80", "[ 5.0] CPA detected W^X violation", *LOADED[2:],
                      OK_VM], Outcome.PASSED, "; the kernel warned meanwhile: WARNING: CPU: 0",
                     id="a warning is noted"),
    ],
)  # fmt: skip
def test_the_witness_rules(lines: list[str], outcome: Outcome, words: str) -> None:
    found = judge_witness(witness_of(*lines), ended=True)
    assert found is not None and found.outcome is outcome, found
    assert words in found.reason
    if outcome is Outcome.FAILED and "EBUSY" in " ".join(lines):
        assert "left VMX on" in found.reason


def test_the_witness_evidence_is_its_own_protocol_lines() -> None:
    found = judge_witness(witness_of(*LOADED, OK_VM), ended=True)
    assert found is not None and OK_VM in found.evidence
    assert all("RIG-WITNESS" in ln for ln in found.evidence)


def test_an_unfinished_witness_waits_and_a_missing_one_is_infrastructure() -> None:
    assert judge_witness(witness_of(*LOADED[:1], ended=False), ended=False) is None
    assert judge_witness(None, ended=False) is None
    missing = judge_witness(None, ended=True)
    assert missing is not None and missing.outcome is Outcome.ERROR
    assert "never reported it" in missing.reason


def test_a_guest_without_vmx_runs_no_witness() -> None:
    w = parse_lines([*HEAD[:2], "RIG-WITNESS start vmx=0", "RIG-WITNESS end", "RIG-END"]).witness
    assert w is not None and w.vmx is False
    found = judge_witness(w, ended=True)
    assert found is not None and found.outcome is Outcome.PASSED
    assert "not run" in found.reason


def test_beside_kvm_must_hold_vmx_before_the_runs() -> None:
    held = ("RIG-BESIDE load module=kvm-intel rc=0 error=",
            "RIG-BESIDE kvm kvm-witness: ok exits=io,hlt holding")  # fmt: skip
    assert beside_setup_failure(held) is None
    refused = ("RIG-BESIDE load module=kvm-intel rc=95 error=Not_supported", "RIG-BESIDE kvm")
    why = beside_setup_failure(refused)
    assert why is not None and why.startswith("infrastructure:") and "rc=95" in why
    assert "no 'RIG-BESIDE kvm' line" in (beside_setup_failure(()) or "")
    assert beside_outlived(("RIG-BESIDE end alive=1",)) is True
    assert beside_outlived(("RIG-BESIDE end alive=0",)) is False
    assert beside_outlived(()) is None


# --------------------------------------------------------------------------- crash path
def test_the_crash_run_splits_at_the_agents_trigger_else_the_kernels_marker() -> None:
    lines = ["RIG-RUN 0 module=vmlaunch iter=0", "RIG-CRASH load rc=0 ", TRIGGER,
             "RIG-CRASH up kernel=k vmcore=4096", "[ 1.0] rig: run=0 step=crash"]  # fmt: skip
    split = split_at_crash(lines)
    assert split is not None and split.before[-1] == TRIGGER
    assert split.after[0].startswith("RIG-CRASH up")
    lost = split_at_crash(["RIG-RUN 0 module=vmlaunch iter=0", "[ 1.0] rig: run=0 step=crash",
                           "[ 1.1] sysrq: Trigger a crash"])  # fmt: skip
    assert lost is not None and lost.after == ("[ 1.1] sysrq: Trigger a crash",)
    assert split_at_crash(["RIG-RUN 0 module=vmlaunch iter=0"]) is None


def _boot(end: BootEnd = BootEnd.POWEROFF) -> BootResult:
    return BootResult(console="", agent="", end=end, duration_s=1.0, detail="x")


def test_the_crash_kernel_must_come_up_with_a_vmcore() -> None:
    load = "[ 1.0] vmlaunch: cpu=- load info version=1 hold=1 emergency=generic_vmxoff -- x"
    ok = crash_teardown(CrashSplit((load, TRIGGER), ("RIG-CRASH up kernel=k vmcore=8388608",)),
                        _boot())  # fmt: skip
    assert ok.outcome is Outcome.PASSED and "vmcore of 8 MiB" in ok.reason
    assert "hold=1, emergency=generic_vmxoff" in ok.reason
    empty = crash_teardown(CrashSplit((TRIGGER,), ("RIG-CRASH up kernel=k vmcore=none",)), _boot())
    assert empty.outcome is Outcome.FAILED and "no /proc/vmcore" in empty.reason
    reset = crash_teardown(CrashSplit((TRIGGER,), ("RIG-BEGIN run=r cell=c kernel=k",)), _boot())
    assert reset.outcome is Outcome.FAILED and "started over" in reset.reason
    panic = "[ 2.0] Kernel panic - not syncing: sysrq triggered crash"
    hung = crash_teardown(CrashSplit((TRIGGER,), (panic,)), _boot(BootEnd.TIMEOUT))
    assert hung.outcome is Outcome.FAILED and "never came up" in hung.reason
    refused = crash_teardown(CrashSplit(("RIG-CRASH load rc=1 Cannot load vmlinuz",), ()), _boot())
    assert refused.outcome is Outcome.ERROR and "Cannot load vmlinuz" in refused.reason


# --------------------------------------------------------------------------- kvm-during
MARK = "[ 5.0] rig: run=0 step=during"
RAN = "RIG-DURING vm rc=0 kvm-witness: ok exits=io,hlt"
REFUSED = ["[ 5.1] kvm: enabling virtualization on CPU0 failed",
           "RIG-DURING load module=kvm-intel rc=5 error=Input_output_error"]  # fmt: skip


@pytest.mark.parametrize(
    ("hold", "lines", "outcome", "words"),
    [
        ("1", REFUSED, Outcome.PASSED, "KVM was refused, as it must be"),
        ("1", [RAN], Outcome.FAILED, "KVM ran a VM while the driver said it held VMX"),
        ("0", [RAN], Outcome.PASSED, "window mode, hold=0) KVM loaded and ran a VM"),
        ("0", REFUSED, Outcome.FAILED, "VMX was left on outside the launch window"),
        ("0", ["[ 5.1] kvm_intel: VMX not enabled (by BIOS) in MSR_IA32_FEAT_CTL on CPU 0",
               "RIG-DURING load module=kvm-intel rc=95 error=Not_supported"],
         Outcome.SKIPPED, "not conclusive"),
    ],
)  # fmt: skip
def test_kvm_during_the_driver_is_judged_by_the_drivers_mode(
    hold: str, lines: list[str], outcome: Outcome, words: str
) -> None:
    found = judge_during([MARK, *lines, "RIG-DURING end"], hold)
    assert found.outcome is outcome, found.reason
    assert words in found.reason


def test_kvm_during_without_its_report_is_infrastructure() -> None:
    assert judge_during([MARK, RAN], "0").outcome is Outcome.ERROR
    # the agent's lines come before the kernel's marker in the merged transcript
    assert judge_during([RAN, "RIG-DURING end", MARK], "0").outcome is Outcome.PASSED
    assert judge_during([], "0").outcome is Outcome.ERROR
