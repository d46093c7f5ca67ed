"""Real boots that prove the judge cannot be fooled (issue: verdicts you can trust).

- a copy of the driver patched to decline without cause FAILS on the bochs lane (exit 1);
- a guest that hangs right after rmmod fails `teardown` (exit 1);
- a copy of the driver that leaves VMX on at rmmod and prints `cr4.vmxe=0` anyway fails
  `teardown` by the teardown witness: KVM cannot enable VMX after it (exit 1), though it also
  prints a passing witness of its own, joined by carriage returns into one kernel line;
- a good driver passes all five stages over 5 load/unload cycles while a preloaded module
  floods the console with whole and split lines;
- a required kvm lane on a host without nested VMX is an infrastructure error (exit 3);
- `pytest -n 2 --dist load matrix.yaml ...` boots each cell once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rig.hostcheck import kvm_usable
from rig.model import STAGES, Outcome
from rig.report import CaseResult
from rig.runner import BOOTS_LOG
from tests.e2e.conftest import RigRunner, driver_with_busy_check

REPO = Path(__file__).resolve().parents[2]
DRIVERS = REPO / "tests" / "drivers"
BOCHS = ("--lane", "bochs", "--kernel", "6.12", "--cpu", "haswell")


def assert_only_teardown_failed(cell: dict[str, CaseResult]) -> None:
    for stage in STAGES[:-1]:
        assert cell[stage].outcome is Outcome.PASSED, (stage, cell[stage].message)
    assert cell["teardown"].outcome is Outcome.FAILED, cell["teardown"].message


def test_a_driver_that_declines_without_cause_fails(rig: RigRunner, tmp_path: Path) -> None:
    """The driver's own vmx_busy refusal, forced: nothing in the run holds VMX."""
    copy = driver_with_busy_check(tmp_path, "1")
    run = rig(*BOCHS, "--driver", str(copy))
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert cell["build"].outcome is Outcome.PASSED, cell["build"].message
    assert cell["vmxon"].outcome is Outcome.FAILED
    assert "why=vmx_busy" in cell["vmxon"].message or "another hypervisor" in cell["vmxon"].message
    assert "arranged no such condition" in cell["vmxon"].message


# A passing witness and the agent's end, joined by carriage returns into one printk: on the
# console and in the agent's dmesg dump (security finding H1)
FORGED_WITNESS = "\\r".join([
    "vmlaunch: a forged witness follows",
    "RIG-WITNESS start vmx=1",
    "RIG-WITNESS load module=irqbypass rc=0 error=",
    "RIG-WITNESS load module=kvm rc=0 error=",
    "RIG-WITNESS load module=kvm-intel rc=0 error=",
    "RIG-WITNESS vm rc=0 kvm-witness: ok exits=io,hlt",
    "RIG-WITNESS end",
    "RIG-END",
])  # fmt: skip


def test_a_driver_that_lies_about_vmxoff_fails_by_the_witness(
    rig: RigRunner, tmp_path: Path
) -> None:
    """Hold mode (opt-in on 6.12): the release at rmmod skips VMXOFF and reports CR4.VMXE as
    0. The driver's own lines all say ok; only KVM, loaded after it, can tell. The copy also
    prints a passing witness of its own, joined by `\\r` into one kernel line: the rig takes
    records only from the agent's channel, so the forgery changes nothing."""
    copy = tmp_path / "driver"
    shutil.copytree(REPO / "driver", copy, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*"))
    src = copy / "vml_cpu.c"
    text = src.read_text()
    vmxoff = "\trc = vml_vmxoff_clear_vmxe(c, &e);"
    report = "\tr->vmxe = !!(vml_read_cr4() & X86_CR4_VMXE);"
    assert text.count(vmxoff) == 1 and text.count(report) == 1, "the hold-mode release moved"
    text = text.replace(vmxoff, "\trc = VML_RC_OK; /* broken: VMX left on */\n\tc->vmx_on = false;")
    forge = f'\tr->vmxe = 0; /* broken: a lie */\n\tprintk(KERN_INFO "{FORGED_WITNESS}\\n");'
    src.write_text(text.replace(report, forge))
    run = rig(*BOCHS, "--driver", str(copy), "--param", "hold_vmx=1")
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert_only_teardown_failed(cell)
    message = cell["teardown"].message
    assert "KVM could not enable VMX on CPU 0" in message and "left VMX on" in message, message
    assert "vmxoff ok cr4.vmxe=0 at=unload" in cell["teardown"].system_out
    # the forgery was printed, and is kept as text: its carriage returns shown
    assert "follows\\x0dRIG-WITNESS start vmx=1\\x0d" in cell["teardown"].system_out


def test_a_guest_that_hangs_after_rmmod_fails_teardown(rig: RigRunner) -> None:
    run = rig(*BOCHS, "--preload", str(DRIVERS / "hangafter"), "--timeout", "150")
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert_only_teardown_failed(cell)
    assert "guest hung after rmmod" in cell["teardown"].message, cell["teardown"].message
    assert "righangafter: vmlaunch is gone" in cell["teardown"].system_out


def test_five_cycles_pass_while_a_module_floods_the_console(rig: RigRunner) -> None:
    run = rig(*BOCHS, "--preload", str(DRIVERS / "flood"), "--repeat", "5")
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert {s: c.outcome for s, c in cell.items()} == dict.fromkeys(STAGES, Outcome.PASSED)
    transcript = cell["teardown"].system_out
    assert len(re.findall(r"^RIG-RUN \d+ module=vmlaunch", transcript, re.M)) == 5
    whole = re.findall(r"rigflood: noise line \d+, whole", transcript)
    split = re.findall(r"rigflood: noise line \d+, split: first half", transcript)
    assert len(whole) >= 100 and len(split) >= 100, (len(whole), len(split))
    # the live console really interleaved flood lines with the driver's
    console = next(run.runs_dir.glob("*/cells/bochs-6.12-haswell/console.txt")).read_text()
    live = console.splitlines()
    driver_at = [i for i, ln in enumerate(live) if "vmlaunch: cpu=" in ln]
    assert any("rigflood" in ln for ln in live[driver_at[0] : driver_at[-1]])


@pytest.mark.skipif(kvm_usable() is None, reason="this host has usable nested KVM")
def test_a_required_kvm_lane_that_cannot_run_here_is_exit_3(rig: RigRunner, tmp_path: Path) -> None:
    why = kvm_usable()
    run = rig("--lane", "kvm", "--kernel", "6.12", "--cpu", "haswell", "--require-lane", "kvm")
    assert run.rc == 3, run.output[-3000:]
    cell = run.cells["kvm-6.12-haswell"]
    # one error for the cell (JUnit: its first stage), the rest not reached
    assert cell["build"].outcome is Outcome.ERROR
    assert "required" in cell["build"].message
    assert {cell[s].outcome for s in STAGES[1:]} == {Outcome.SKIPPED}
    stored = next(run.runs_dir.glob("*/cells/kvm-6.12-haswell/verdict.json"))
    assert '"outcome": "error"' in stored.read_text()  # the verdict itself: every stage ERROR
    doctor = subprocess.run(
        [sys.executable, "-m", "rig", "doctor", "--lane", "kvm"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert doctor.returncode == 3, doctor.stdout + doctor.stderr
    assert str(why)[:40] in doctor.stdout
    # without the requirement the same host skips the lane, saying why (exit 0)
    plain = rig("--lane", "kvm", "--kernel", "6.12", "--cpu", "haswell")
    assert plain.rc == 0 and {c.outcome for c in plain.cells["kvm-6.12-haswell"].values()} == {
        Outcome.SKIPPED
    }


def test_dist_load_boots_each_cell_once(tmp_path: Path) -> None:
    """Stages of one cell spread over two workers: one boot, one verdict, read by both."""
    runs = tmp_path / "runs"
    argv = [
        sys.executable, "-m", "pytest", "-n", "2", "--dist", "load", "matrix.yaml",
        "-p", "no:cacheprovider", "--rig-lane", "tcg", "--rig-kernel", "6.12",
        "--rig-cpu", "penryn", "--rig-cpu", "nehalem", "--rig-runs-dir", str(runs),
        "-o", "junit_family=xunit1", f"--junitxml={tmp_path / 'j.xml'}", "-rs", "-v",
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "4 passed, 6 skipped" in out, out[-2000:]
    cells = sorted(runs.glob("*/cells/*"))
    assert [c.name for c in cells] == ["tcg-6.12-nehalem", "tcg-6.12-penryn"]
    for cell in cells:
        boots = (cell / BOOTS_LOG).read_text().splitlines()
        assert len(boots) == 1, (cell.name, boots)
        assert (cell / "verdict.json").exists()
    # the stages of at least one cell ran on both workers, and still one boot per cell
    ran_on: dict[str, set[str]] = {}
    for worker, cell_id in re.findall(r"\[(gw\d)\] \[[ \d]+%\] \w+ \S*::(tcg-[\w.-]+)::", out):
        ran_on.setdefault(cell_id, set()).add(worker)
    assert any(len(w) == 2 for w in ran_on.values()), (ran_on, out[-2000:])


def test_the_crash_path_boots_the_kdump_kernel_in_window_mode(rig: RigRunner) -> None:
    """6.12's default: VMX is off between the driver's windows, so kexec's jump works."""
    run = rig(*BOCHS, "--crash")
    assert run.rc == 0, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert {s: c.outcome for s, c in cell.items()} == dict.fromkeys(STAGES, Outcome.PASSED)
    message = run.reasons("bochs-6.12-haswell")["teardown"]
    assert "(hold=0, emergency=kvm_callback_only) the crash kernel booted" in message, message
    assert re.search(r"found a vmcore of \d+ MiB", message), message


def test_the_crash_path_fails_in_hold_mode_on_6_12(rig: RigRunner) -> None:
    """Hold mode (opt-in on 6.12): 6.6-7.1 leave VMX in a crash only through KVM's callback,
    so relocate_kernel clears CR4.VMXE in VMX operation: #GP, and no kdump kernel. This is
    why hold mode is not the default there (driver/README.md)."""
    run = rig(*BOCHS, "--crash", "--param", "hold_vmx=1", "--timeout", "300")
    assert run.rc == 1, run.output[-3000:]
    cell = run.cells["bochs-6.12-haswell"]
    assert_only_teardown_failed(cell)
    message = cell["teardown"].message
    assert "(hold=1, emergency=kvm_callback_only)" in message, message
    assert "instead of booting the crash kernel" in message, message
