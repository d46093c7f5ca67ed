"""Unit and property tests of rig.verdict (console parsing and stage verdicts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.model import (
    STAGES,
    Arranged,
    BootEnd,
    BootResult,
    Cell,
    CellVerdict,
    CpuSpec,
    KernelSpec,
    LaneSpec,
    ModuleBuild,
    Outcome,
)
from rig.verdict import (
    DriverRecord,
    decode_failure,
    judge,
    parse_console,
    parse_driver_line,
    split_attempts,
)

# --------------------------------------------------------------------------- fixtures
BOCHS = LaneSpec(name="bochs", backend="bochs", vmx=True)
TCG = LaneSpec(name="tcg", backend="libvirt", vmx=False, domain_type="qemu")
K612 = KernelSpec(name="6.12", suite="trixie", abi="6.12.117+deb13-amd64", version="6.12.117-1")
HASWELL = CpuSpec(name="haswell", models={"bochs": "corei7_haswell_4770", "kvm": "Haswell-noTSX"})
PENRYN = CpuSpec(name="penryn", models={"bochs": "core2_penryn_t9600", "tcg": "Penryn"})

BOCHS_CELL = Cell(lane=BOCHS, kernel=K612, cpu=HASWELL, timeout_s=400)
TCG_CELL = Cell(lane=TCG, kernel=K612, cpu=PENRYN, timeout_s=400)
BUILD_OK = ModuleBuild(name="vmlaunch", ok=True, log="make: done\n", ko=Path("/x/vmlaunch.ko"))

HASWELL_MODEL = "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz"
PENRYN_MODEL = "Intel Core 2 Duo P9xxx (Penryn Class Core 2)"

# kernel 6.12 on Bochs prints this before any module loads: it must never count
BOOT_WARNING = """\
[    0.031337] ------------[ cut here ]------------
[    0.031338] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/cpu/topology_common.c:57 parse_legacy
[    0.031339] Modules linked in:
[    0.031340] CPU: 0 UID: 0 PID: 0 Comm: swapper/0 Not tainted 6.12.117+deb13-amd64 #1
[    0.031341] RIP: 0010:parse_legacy+0x9d/0xb0
[    0.031342] Call Trace:
[    0.031343]  <TASK>
[    0.031344]  cpu_parse_topology+0x41/0x80
[    0.031345]  </TASK>
[    0.031346] ---[ end trace 0000000000000000 ]---"""

BOOT = (
    """\
SeaBIOS (version 1.16.2-debian-1.16.2-1)
Booting from DVD/CD...
[    0.000000] Linux version 6.12.117+deb13-amd64 (debian-kernel@lists.debian.org)
[    0.000000] Command line: console=ttyS0 modprobe.blacklist=kvm_intel rig.cell=bochs-6.12-haswell
[    0.004000] tsc: Unable to calibrate against PIT
"""
    + BOOT_WARNING
    + """
[    1.200000] Freeing unused kernel image (initmem) memory: 4096K
[    1.300000] Run /init as init process"""
)

LOAD = "vmlaunch: cpu=- load info version=1 break=none"
CHECK = "vmlaunch: cpu=0 check ok vmx_basic=0xd810000000002b rev=0x2b true_ctls=1"
ALLOC = "vmlaunch: cpu=0 alloc ok pages=5"
VMXON = "vmlaunch: cpu=0 vmxon ok -- vmxon succeeded"
VMCLEAR = "vmlaunch: cpu=0 vmclear ok"
VMPTRLD = "vmlaunch: cpu=0 vmptrld ok"
VMCS = "vmlaunch: cpu=0 vmcs ok pin=0x16 proc=0x84006172 exit=0x336ffb entry=0x93fb"
LAUNCH = "vmlaunch: cpu=0 vmlaunch ok -- vmlaunch entered the guest"
EXIT = "vmlaunch: cpu=0 exit ok reason=0x12 basic=18 qual=0x0 -- exit reason 0x12 (VMCALL)"
VMXOFF = "vmlaunch: cpu=0 vmxoff ok cr4.vmxe=0 -- vmxoff done, cr4.vmxe cleared"
FREED = "vmlaunch: cpu=- freed ok pages=5 -- freed 5 pages"
UNLOAD = "vmlaunch: cpu=- unload ok"
TAINT = "vmlaunch: loading out-of-tree module taints kernel."
NO_VMX = (
    "vmlaunch: cpu=0 check declined errno=-19 why=no_vmx "
    "-- CPU has no VMX (CPUID.1:ECX.VMX[bit 5]=0)"
)
FAIL8 = (
    "vmlaunch: cpu=0 vmlaunch FAIL errno=-5 kind=VMfailValid error=8 "
    "-- FAIL: VM-instruction error 8: VM entry with invalid host-state field(s)"
)
ENTRY_FAIL = (
    "vmlaunch: cpu=0 exit FAIL errno=-71 reason=0x80000021 basic=33 qual=0x0 "
    "-- FAIL: VM-entry failure, exit reason 33: invalid guest state"
)

SUCCESS_INIT = [TAINT, LOAD, CHECK, ALLOC, VMXON, VMCLEAR, VMPTRLD, VMCS, LAUNCH, EXIT]
SUCCESS_EXIT = [VMXOFF, FREED, UNLOAD]


def ts(lines: list[str], start: float = 20.0) -> list[str]:
    """Kernel lines as dmesg and the console show them: with a timestamp."""
    return [f"[{start + i * 0.001:12.6f}] {line}" for i, line in enumerate(lines)]


def console(
    *,
    vmx: int = 1,
    model: str = HASWELL_MODEL,
    insmod: list[str] | None = None,
    insmod_rc: int | None = 0,
    rmmod: list[str] | None = None,
    rmmod_rc: int | None = 0,
    live: bool = True,
    dump: bool = True,
    end: bool = True,
    tail: list[str] | None = None,
) -> str:
    """A guest console following docs/contract.md section 2."""
    insmod = SUCCESS_INIT if insmod is None else insmod
    rmmod = SUCCESS_EXIT if rmmod is None else rmmod
    out = [BOOT, "RIG-BEGIN run=r1 cell=bochs-6.12-haswell", f"RIG-CPU vmx={vmx} model={model}"]
    kernel_insmod, kernel_rmmod = ts(insmod, 20.0), ts(rmmod, 21.0)
    if live:
        out += kernel_insmod
    if insmod_rc is None:
        out += tail or []
        return "\n".join(out) + "\n"
    if insmod_rc:
        out.append("insmod: can't insert 'vmlaunch.ko': No such device")
    out.append(f"RIG-STEP insmod rc={insmod_rc}")
    if live:
        out += kernel_rmmod
    if rmmod_rc is not None:
        out.append(f"RIG-STEP rmmod rc={rmmod_rc}")
    out += tail or []
    if dump:
        out.append("RIG-DMESG-BEGIN")
        out += BOOT_WARNING.splitlines()
        out.append("[   19.000000] RIG-BEGIN run=r1 cell=bochs-6.12-haswell")
        out.append(f"[   19.000100] RIG-CPU vmx={vmx} model={model}")
        out += kernel_insmod
        out.append(f"[   20.900000] RIG-STEP insmod rc={insmod_rc}")
        out += kernel_rmmod
        out.append("RIG-DMESG-END")
    if end:
        out.append("RIG-END")
    return "\r\n".join(out) + "\r\n"


def boot(
    text: str,
    end: BootEnd = BootEnd.POWEROFF,
    detail: str = "",
    *,
    panic_to_stop_s: float | None = None,
    triple_fault: bool = False,
) -> BootResult:
    """What a lane reports: the guest's words, how the boot ended, and the facts it saw.

    `text` is one transcript with the protocol and the kernel's lines in order: given as the
    agent's channel (records come only from there; the console alone holds none)."""
    return BootResult(
        console="",
        agent=text,
        end=end,
        duration_s=52.0,
        detail=detail,
        panic_to_stop_s=panic_to_stop_s,
        triple_fault=triple_fault,
    )


def outcomes(verdict: CellVerdict) -> dict[str, Outcome]:
    return {s: v.outcome for s, v in verdict.stages.items()}


P, F, S, E = Outcome.PASSED, Outcome.FAILED, Outcome.SKIPPED, Outcome.ERROR


# --------------------------------------------------------------------------- realistic cases
def test_bochs_success_passes_every_stage_despite_boot_warning() -> None:
    v = judge(BOCHS_CELL, BUILD_OK, boot(console()))
    assert outcomes(v) == dict.fromkeys(STAGES, P)
    assert v.cell_id == "bochs-6.12-haswell"
    assert "0 warnings" in v.stages["build"].reason
    assert EXIT in v.stages["vmcall_exit"].evidence
    assert "[   20.009000]" in v.stages["vmcall_exit"].evidence  # the exact guest line
    assert VMXOFF in v.stages["teardown"].evidence
    assert "RIG-STEP rmmod rc=0" in v.stages["teardown"].evidence
    assert v.timings == {"boot": 52.0}


def test_success_from_live_console_only_and_from_dump_only() -> None:
    for text in (console(dump=False), console(live=False)):
        assert outcomes(judge(BOCHS_CELL, BUILD_OK, boot(text))) == dict.fromkeys(STAGES, P)


def test_tcg_decline_skips_vmx_stages_and_passes_teardown() -> None:
    decline = [TAINT, LOAD, NO_VMX, "vmlaunch: cpu=- freed ok pages=0"]
    text = console(
        vmx=0,
        model=PENRYN_MODEL,
        insmod=decline + decline[1:],  # busybox insmod retries a failing init once
        insmod_rc=1,
        rmmod=[],
        rmmod_rc=1,
    )
    v = judge(TCG_CELL, BUILD_OK, boot(text))
    assert outcomes(v) == {"build": P, "vmxon": S, "vmlaunch": S, "vmcall_exit": S, "teardown": P}
    assert v.stages["vmxon"].reason == f"guest CPU has no VMX ({PENRYN_MODEL})"
    assert "why=no_vmx" in v.stages["vmxon"].evidence
    assert "-19" in v.stages["teardown"].reason


def test_tcg_driver_that_claims_vmxon_fails() -> None:
    text = console(vmx=0, model=PENRYN_MODEL)
    v = judge(TCG_CELL, BUILD_OK, boot(text))
    assert v.stages["vmxon"].outcome is F
    assert "without VMX" in v.stages["vmxon"].reason


def test_tcg_driver_that_does_not_decline_fails() -> None:
    text = console(vmx=0, insmod=[LOAD, "vmlaunch: cpu=- freed ok"], rmmod=[UNLOAD])
    v = judge(TCG_CELL, BUILD_OK, boot(text))
    assert v.stages["vmxon"].outcome is F
    assert "did not decline" in v.stages["vmxon"].reason


def test_tcg_decline_with_wrong_reason_fails() -> None:
    bios = "vmlaunch: cpu=0 check declined errno=-95 why=vmx_disabled_by_bios"
    text = console(vmx=0, insmod=[LOAD, bios, FREED], insmod_rc=1, rmmod=[])
    v = judge(TCG_CELL, BUILD_OK, boot(text))
    assert v.stages["vmxon"].outcome is F
    assert "why=no_vmx" in v.stages["vmxon"].reason


def test_vmx_lane_where_guest_has_no_vmx_is_an_infrastructure_error_naming_the_model() -> None:
    """A wrong CPU model or an emulator regression must not read as a stated skip."""
    text = console(vmx=0, model="Bochs generic", insmod=[LOAD, NO_VMX, FREED], insmod_rc=1)
    v = judge(BOCHS_CELL, BUILD_OK, boot(text))
    assert outcomes(v) == {"build": P, "vmxon": E, "vmlaunch": E, "vmcall_exit": E, "teardown": P}
    assert "promises VMX" in v.stages["vmxon"].reason
    assert "corei7_haswell_4770" in v.stages["vmxon"].reason
    assert "Bochs generic" in v.stages["vmxon"].reason


def test_decline_no_vmx_on_a_vmx_guest_fails() -> None:
    text = console(vmx=1, insmod=[LOAD, NO_VMX, FREED], insmod_rc=1)
    v = judge(BOCHS_CELL, BUILD_OK, boot(text))
    assert v.stages["vmxon"].outcome is F
    assert "has VMX" in v.stages["vmxon"].reason
    assert v.stages["vmlaunch"].outcome is S
    assert v.stages["teardown"].outcome is P


@pytest.mark.parametrize(
    ("why", "words"),
    [("vmx_busy", "another hypervisor"), ("vmx_disabled_by_bios", "firmware")],
)
def test_environment_declines_on_vmx_lane_without_cause_fail(why: str, words: str) -> None:
    """A decline the run did not arrange is a broken driver, whatever reason it gives."""
    line = f"vmlaunch: cpu=0 check declined errno=-16 why={why} -- not ours"
    text = console(insmod=[LOAD, line, FREED], insmod_rc=1)
    v = judge(BOCHS_CELL, BUILD_OK, boot(text))
    assert outcomes(v) == {"build": P, "vmxon": F, "vmlaunch": S, "vmcall_exit": S, "teardown": P}
    assert words in v.stages["vmxon"].reason
    assert "arranged no such condition" in v.stages["vmxon"].reason


def test_vmx_busy_arranged_by_a_fixture_is_a_skip() -> None:
    line = "vmlaunch: cpu=0 check declined errno=-16 why=vmx_busy -- CR4.VMXE already set"
    text = console(insmod=[LOAD, line, FREED], insmod_rc=1)
    arranged = Arranged(frozenset({"vmx_busy"}), (("vmx_busy", "--preload vmxhog"),))
    v = judge(BOCHS_CELL, BUILD_OK, boot(text), arranged)
    assert outcomes(v) == {"build": P, "vmxon": S, "vmlaunch": S, "vmcall_exit": S, "teardown": P}
    assert "another hypervisor" in v.stages["vmxon"].reason
    assert "--preload vmxhog" in v.stages["vmxon"].reason


def test_unknown_decline_on_vmx_lane_fails() -> None:
    line = "vmlaunch: cpu=0 check declined errno=-22 why=feeling_lazy"
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(insmod=[LOAD, line, FREED], insmod_rc=1)))
    assert v.stages["vmxon"].outcome is F


def test_vmfailvalid_error_8() -> None:
    insmod = [LOAD, CHECK, ALLOC, VMXON, VMCLEAR, VMPTRLD, VMCS, FAIL8, VMXOFF, FREED]
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(insmod=insmod, insmod_rc=1, rmmod=[])))
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": F, "vmcall_exit": S, "teardown": P}
    reason = v.stages["vmlaunch"].reason
    assert "VMfailValid" in reason
    assert "error 8" in reason
    assert "host-state" in reason
    assert FAIL8 in v.stages["vmlaunch"].evidence
    assert v.stages["vmcall_exit"].reason == "not reached: vmlaunch failed"


def test_entry_failure_0x80000021_fails_vmlaunch() -> None:
    insmod = [LOAD, CHECK, ALLOC, VMXON, VMCLEAR, VMPTRLD, VMCS, ENTRY_FAIL, VMXOFF, FREED]
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(insmod=insmod, insmod_rc=1, rmmod=[])))
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": F, "vmcall_exit": S, "teardown": P}
    reason = v.stages["vmlaunch"].reason
    assert "VM entry failed" in reason
    assert "invalid guest state" in reason
    assert "0x80000021" in reason
    assert ENTRY_FAIL in v.stages["vmlaunch"].evidence


def test_wrong_exit_reason_fails_vmcall_exit() -> None:
    ext = "vmlaunch: cpu=0 exit ok reason=0x1 basic=1 qual=0x0 -- exit reason 0x1"
    insmod = [*SUCCESS_INIT[:-1], ext]
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(insmod=insmod)))
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": P, "vmcall_exit": F, "teardown": P}
    assert "external interrupt" in v.stages["vmcall_exit"].reason
    assert "0x12" in v.stages["vmcall_exit"].reason


def test_oops_during_insmod_fails_stage_in_progress_and_later() -> None:
    oops = [
        "BUG: unable to handle page fault for address: ffffc90000a3f000",
        "#PF: supervisor read access in kernel mode",
        "Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "CPU: 0 UID: 0 PID: 87 Comm: insmod Tainted: G           OE      6.12.117+deb13-amd64",
        "RIP: 0010:vmlaunch_run+0x1c4/0x2f0 [vmlaunch]",
        "Call Trace:",
        " <TASK>",
        " do_one_initcall+0x58/0x300",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
        "Kernel panic - not syncing: Fatal exception",
        "---[ end Kernel panic - not syncing: Fatal exception ]---",
    ]
    text = console(insmod=[TAINT, LOAD, CHECK, ALLOC, VMXON, VMCLEAR, *oops], insmod_rc=None)
    detail = (
        "guest panicked: Kernel panic - not syncing: Fatal exception "
        "(stopped 2.1 s after the panic reached the console)"
    )
    v = judge(BOCHS_CELL, BUILD_OK, boot(text, BootEnd.PANIC, detail, panic_to_stop_s=2.1))
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": F, "vmcall_exit": F, "teardown": F}
    assert "BUG: unable to handle page fault" in v.stages["vmlaunch"].reason
    assert v.stages["vmlaunch"].reason.endswith(
        "(stopped 2.1 s after the panic reached the console)"
    )
    assert "Oops: 0000" in v.stages["vmlaunch"].evidence
    assert "parse_legacy" not in v.stages["vmlaunch"].evidence
    assert "during vmlaunch" in v.stages["teardown"].reason


def test_warning_during_rmmod_fails_teardown_only() -> None:
    warn = [
        "------------[ cut here ]------------",
        "WARNING: CPU: 0 PID: 99 at mm/page_alloc.c:4711 free_pages+0x10/0x20",
        "Call Trace:",
        "---[ end trace 0000000000000000 ]---",
    ]
    text = console(rmmod=[VMXOFF, *warn, FREED, UNLOAD])
    v = judge(BOCHS_CELL, BUILD_OK, boot(text))
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": P, "vmcall_exit": P, "teardown": F}
    assert "free_pages" in v.stages["teardown"].evidence


def test_hang_without_rig_end_fails_the_stage_in_progress() -> None:
    text = console(
        insmod=[TAINT, LOAD, CHECK, ALLOC, VMXON, VMCLEAR, VMPTRLD, VMCS, LAUNCH], insmod_rc=None
    )
    v = judge(BOCHS_CELL, BUILD_OK, boot(text, BootEnd.TIMEOUT, "no RIG-END within 400 s"))
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": P, "vmcall_exit": F, "teardown": F}
    assert "driver hang" in v.stages["vmcall_exit"].reason
    assert LAUNCH in v.stages["vmcall_exit"].evidence  # console tail
    assert "not reached" in v.stages["teardown"].reason


def test_never_booted_is_an_infrastructure_error() -> None:
    text = BOOT.split("[    0.031337]")[0]
    v = judge(BOCHS_CELL, BUILD_OK, boot(text, BootEnd.TIMEOUT, "no output for 400 s"))
    assert outcomes(v) == {"build": P, "vmxon": E, "vmlaunch": E, "vmcall_exit": E, "teardown": E}
    assert "no output for 400 s" in v.stages["vmxon"].reason
    assert "tsc: Unable to calibrate" in v.stages["teardown"].evidence


def test_emulator_death_before_begin_is_error_and_triple_fault_after_is_failure() -> None:
    v = judge(BOCHS_CELL, BUILD_OK, boot("", BootEnd.EMULATOR, "bochs exited with 1"))
    assert outcomes(v)["vmxon"] is E
    text = console(insmod=[LOAD, CHECK, ALLOC, VMXON, VMCLEAR, VMPTRLD, VMCS], insmod_rc=None)
    died = boot(text, BootEnd.EMULATOR, "triple fault: CPU reset", triple_fault=True)
    assert outcomes(judge(BOCHS_CELL, BUILD_OK, died))["vmlaunch"] is F
    gone = boot(text, BootEnd.EMULATOR, "libvirt connection lost")
    assert outcomes(judge(BOCHS_CELL, BUILD_OK, gone))["vmlaunch"] is E


def test_console_cut_short_after_poweroff_is_error() -> None:
    text = console(insmod=[LOAD, CHECK], insmod_rc=None)
    assert outcomes(judge(BOCHS_CELL, BUILD_OK, boot(text)))["vmxon"] is E


def test_hang_after_all_checks_fails_teardown() -> None:
    """A teardown that wedges the CPU: every driver line is there, RIG-END never comes."""
    text = console(dump=False, end=False)
    v = judge(BOCHS_CELL, BUILD_OK, boot(text, BootEnd.TIMEOUT, "no poweroff within 400 s"))
    assert outcomes(v) == {**dict.fromkeys(STAGES, P), "teardown": F}
    assert v.stages["teardown"].reason.startswith("guest hung after rmmod")


# --------------------------------------------------------------------------- teardown
def test_teardown_missing_vmxoff_fails() -> None:
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(rmmod=[FREED, UNLOAD])))
    assert v.stages["teardown"].outcome is F
    assert "vmxoff" in v.stages["teardown"].reason


def test_teardown_cr4_vmxe_left_set_fails() -> None:
    bad = "vmlaunch: cpu=0 vmxoff ok cr4.vmxe=1"
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(rmmod=[bad, FREED, UNLOAD])))
    assert v.stages["teardown"].outcome is F
    assert "cr4.vmxe=1" in v.stages["teardown"].reason


def test_teardown_rmmod_failure_and_missing_lines() -> None:
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(rmmod=[], rmmod_rc=1)))
    reason = v.stages["teardown"].reason
    assert v.stages["teardown"].outcome is F
    assert "rmmod failed" in reason
    assert "freed" in reason
    assert "unload" in reason


def test_failed_load_without_freed_line_fails_teardown() -> None:
    insmod = [LOAD, CHECK, ALLOC, VMXON, VMCLEAR, VMPTRLD, VMCS, FAIL8, VMXOFF]
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(insmod=insmod, insmod_rc=1, rmmod=[])))
    assert v.stages["teardown"].outcome is F
    assert "freed" in v.stages["teardown"].reason


def test_second_attempt_finding_vmx_busy_blames_the_first() -> None:
    first = [LOAD, CHECK, ALLOC, VMXON, VMCLEAR, VMPTRLD, VMCS, FAIL8, FREED]
    busy = "vmlaunch: cpu=0 check declined errno=-16 why=vmx_busy"
    v = judge(
        BOCHS_CELL,
        BUILD_OK,
        boot(console(insmod=[*first, LOAD, busy, FREED], insmod_rc=1, rmmod=[])),
    )
    assert outcomes(v)["vmlaunch"] is F  # first attempt judged
    assert v.stages["teardown"].outcome is F
    assert "left VMX on" in v.stages["teardown"].reason


def test_module_that_never_prints_fails() -> None:
    text = console(
        insmod=["vmlaunch: Unknown symbol cr4_update_irqsoff (err -2)"], insmod_rc=1, rmmod=[]
    )
    v = judge(BOCHS_CELL, BUILD_OK, boot(text))
    assert v.stages["vmxon"].outcome is F
    assert "no 'vmlaunch: cpu=' line" in v.stages["vmxon"].reason
    assert "Unknown symbol" in v.stages["vmxon"].evidence
    assert v.stages["teardown"].outcome is F


def test_multi_cpu_requires_vmxon_on_every_reporting_cpu() -> None:
    check1 = CHECK.replace("cpu=0", "cpu=1")
    insmod = [LOAD, CHECK, check1, ALLOC, VMXON, *SUCCESS_INIT[5:]]
    v = judge(BOCHS_CELL, BUILD_OK, boot(console(insmod=insmod)))
    assert v.stages["vmxon"].outcome is F
    assert "CPU 1" in v.stages["vmxon"].reason
    both = [LOAD, CHECK, check1, VMXON, VMXON.replace("cpu=0", "cpu=1"), *SUCCESS_INIT[5:]]
    v2 = judge(BOCHS_CELL, BUILD_OK, boot(console(insmod=both)))
    assert v2.stages["vmxon"].outcome is P
    assert v2.stages["teardown"].outcome is F  # CPU 1 never did vmxoff
    assert "CPU 1" in v2.stages["teardown"].reason


def test_guest_without_insmod_step_is_error() -> None:
    text = "\n".join(["RIG-BEGIN run=r cell=c", "RIG-CPU vmx=1 model=x", "RIG-END"])
    assert set(outcomes(judge(BOCHS_CELL, BUILD_OK, boot(text))).values()) == {P, E}


# --------------------------------------------------------------------------- build & skips
def test_skipped_cell_skips_everything_with_its_reason() -> None:
    cell = Cell(lane=TCG, kernel=K612, cpu=HASWELL, skip_reason="lane 'tcg' has no CPU model")
    v = judge(cell, None, None)
    assert {s.outcome for s in v.stages.values()} == {S}
    assert all(s.reason == "lane 'tcg' has no CPU model" for s in v.stages.values())
    assert list(v.stages) == list(STAGES)


def test_build_failure_and_missing_build() -> None:
    log = (
        "CC [M] vmlaunch.o\n"
        "vmlaunch.c:42:5: error: implicit declaration of 'foo'\n"
        "make: *** [x] Error 1\n"
    )
    failed = ModuleBuild(name="vmlaunch", ok=False, log=log, ko=None)
    v = judge(BOCHS_CELL, failed, None)
    assert v.stages["build"].outcome is F
    assert "implicit declaration" in v.stages["build"].reason
    assert "vmlaunch.c:42:5" in v.stages["build"].evidence
    assert {v.stages[s].outcome for s in STAGES[1:]} == {S}
    assert v.build_log == log
    v2 = judge(BOCHS_CELL, None, None)
    assert set(outcomes(v2).values()) == {E}
    log = "vmx_ops.o: warning: objtool: vml_launch+0x1c: unannotated intra-function call\n"
    warned = ModuleBuild(name="vmlaunch", ok=True, log=log, ko=Path("x.ko"), warnings=3)
    build_verdict = judge(BOCHS_CELL, warned, None).stages["build"]
    assert build_verdict.outcome is Outcome.FAILED  # warning-free is part of the contract
    assert "3 warnings" in build_verdict.reason and "objtool" in build_verdict.evidence
    assert outcomes(judge(BOCHS_CELL, warned, None))["vmxon"] is E  # no boot: infrastructure


# --------------------------------------------------------------------------- parser
def test_parse_console_protocol_fields() -> None:
    text = console(insmod_rc=0)
    r = parse_console(text)
    assert r.begin and r.end
    assert (r.run_id, r.cell_id) == ("r1", "bochs-6.12-haswell")
    assert (r.vmx, r.cpu_model) == (True, HASWELL_MODEL)
    assert [(s.name, s.rc) for s in r.steps] == [("insmod", 0), ("rmmod", 0)]
    (run,) = r.runs
    assert run.dump_complete
    assert run.source is run.dump  # the dump is complete: judged from it
    assert len(r.records) == len(SUCCESS_INIT) - 1 + len(SUCCESS_EXIT)  # taint line is not one
    assert r.oopses == ()
    assert run.dump is not None
    assert len(run.dump.early_oopses) == 1  # the boot warning in the dump, before the marker
    assert "parse_legacy" in run.dump.early_oopses[0].first
    assert len(r.boot_oopses) == 1  # the same warning on the console before RIG-BEGIN


def test_parse_console_dump_without_marker_copies_uses_first_module_line() -> None:
    text = "\n".join(
        [
            "RIG-BEGIN run=a cell=b",
            "RIG-DMESG-BEGIN",
            *BOOT_WARNING.splitlines(),
            *ts([TAINT, LOAD]),
            "RIG-DMESG-END",
            "RIG-END",
        ]
    )
    r = parse_console(text)
    dump = r.runs[0].dump
    assert dump is not None
    assert dump.oopses == ()
    assert len(dump.early_oopses) == 1


# What guests/initramfs/init prints: RIG-RUN blocks, kmsg step markers, dmesg cleared per run,
# driver lines only in the dump (console loglevel 4), model with '_' for spaces.
def init_console(runs: list[tuple[list[str], int, str]], *, end: bool = True, vmx: int = 1) -> str:
    out = [
        "[    1.3] Run /init as init process",
        "RIG-BEGIN run=20261125-101500-abc123 cell=bochs-6.12-haswell kernel=6.12.117+deb13-amd64",
        f"RIG-CPU vmx={vmx} cpus=1 model=_Intel(R)_Core(TM)_i7-4770_CPU_@_3.40GHz",
    ]
    for n, (kernel, insmod_rc, rmmod_rc) in enumerate(runs):
        out.append(f"RIG-RUN {n} module=vmlaunch iter={n}")
        if insmod_rc:
            out.append("insmod: can't insert '/rig/modules/vmlaunch.ko': No such device")
        out.append(f"RIG-STEP insmod rc={insmod_rc}")
        out.append("RIG-SYSFS status: launched=1")
        out.append(f"RIG-STEP rmmod rc={rmmod_rc}")
        out.append("RIG-MEM free_kb=480000")
        out.append("RIG-DMESG-BEGIN")
        out.append(f"[   2{n}.000000] rig: run={n} step=insmod")
        out += ts(kernel, 20.0 + n)
        out.append("RIG-DMESG-END")
    if end:
        out.append("RIG-END")
    return "\r\n".join(out) + "\r\n"


def test_init_console_format_success() -> None:
    kernel = [*SUCCESS_INIT, "rig: run=0 step=rmmod", *SUCCESS_EXIT]
    text = init_console([(kernel, 0, "0")])
    r = parse_console(text)
    assert (r.vmx, r.cpus, r.cpu_model) == (True, 1, "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz")
    assert [(run.number, run.module, run.iteration) for run in r.runs] == [(0, "vmlaunch", 0)]
    assert [(s.name, s.rc) for s in r.steps] == [("insmod", 0), ("rmmod", 0)]
    assert outcomes(judge(BOCHS_CELL, BUILD_OK, boot(text))) == dict.fromkeys(STAGES, P)


def test_init_console_format_decline_with_rmmod_none() -> None:
    decline = [TAINT, LOAD, NO_VMX, FREED]
    text = init_console([(decline + decline[1:], 1, "none")], vmx=0)
    v = judge(TCG_CELL, BUILD_OK, boot(text))
    assert outcomes(v) == {"build": P, "vmxon": S, "vmlaunch": S, "vmcall_exit": S, "teardown": P}
    assert parse_console(text).runs[0].step("rmmod") == parse_console(text).steps[1]
    assert parse_console(text).steps[1].rc is None
    # the guest's word wins over the lane's: a guest with VMX must not decline no_vmx
    claims_vmx = init_console([(decline, 1, "none")], vmx=1)
    assert judge(TCG_CELL, BUILD_OK, boot(claims_vmx)).stages["vmxon"].outcome is F


def test_init_console_warning_in_a_run_counts() -> None:
    warn = ["WARNING: CPU: 0 PID: 80 at arch/x86/kvm/x.c:1 vmlaunch_init+0x1", "Call Trace:"]
    kernel = [TAINT, LOAD, CHECK, ALLOC, VMXON, *warn, *SUCCESS_INIT[5:], *SUCCESS_EXIT]
    v = judge(BOCHS_CELL, BUILD_OK, boot(init_console([(kernel, 0, "0")])))
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": F, "vmcall_exit": F, "teardown": F}
    assert "vmlaunch_init" in v.stages["vmlaunch"].reason


def test_repeated_runs_report_the_worst_run() -> None:
    good = [*SUCCESS_INIT, *SUCCESS_EXIT]
    bad = [LOAD, CHECK, ALLOC, VMXON, VMCLEAR, VMPTRLD, VMCS, FAIL8, VMXOFF, FREED]
    text = init_console([(good, 0, "0"), (bad, 1, "none"), (good, 0, "0")])
    r = parse_console(text)
    assert [run.number for run in r.runs] == [0, 1, 2]
    v = judge(BOCHS_CELL, BUILD_OK, boot(text))
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": F, "vmcall_exit": S, "teardown": P}
    assert v.stages["vmlaunch"].reason.startswith("run 1: vmlaunch VMfailValid")
    assert v.stages["vmxon"].reason.endswith("(all 3 runs) (no witness beneath on this lane)")
    all_good = judge(BOCHS_CELL, BUILD_OK, boot(init_console([(good, 0, "0")] * 2)))
    assert outcomes(all_good) == dict.fromkeys(STAGES, P)


def test_init_console_hang_in_second_run() -> None:
    good = [*SUCCESS_INIT, *SUCCESS_EXIT]
    text = init_console([(good, 0, "0")], end=False) + "RIG-RUN 1 module=vmlaunch iter=1\r\n"
    v = judge(BOCHS_CELL, BUILD_OK, boot(text, BootEnd.TIMEOUT))
    assert v.stages["vmxon"].outcome is F
    assert v.stages["vmxon"].reason.startswith("run 1: driver hang")


def test_parse_console_without_begin() -> None:
    r = parse_console(BOOT)
    assert not r.begin and not r.end and r.records == () and r.vmx is None


def test_split_attempts() -> None:
    recs = [parse_driver_line(x) for x in (LOAD, NO_VMX, FREED, LOAD, NO_VMX, FREED)]
    attempts = split_attempts([r for r in recs if r is not None])
    assert [len(a) for a in attempts] == [3, 3]


def test_parse_driver_line_examples() -> None:
    rec = parse_driver_line(f"[   20.1] {FAIL8}")
    assert rec is not None
    assert (rec.cpu, rec.stage, rec.result) == (0, "vmlaunch", "FAIL")
    assert rec.get("kind") == "VMfailValid"
    assert rec.number("error") == 8
    assert rec.text.startswith("FAIL: VM-instruction error 8")
    assert "VM entry with invalid host-state field(s)" in decode_failure(rec)
    off = parse_driver_line(VMXOFF)
    assert off is not None and off.get("cr4.vmxe") == "0"
    assert parse_driver_line(TAINT) is None
    assert parse_driver_line("vmlaunch: cpu=0 vmxon maybe") is None
    assert parse_driver_line("") is None


_ident = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
_key = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,10}", fullmatch=True)
_value = st.from_regex(r"[!-~]{1,12}", fullmatch=True).filter(lambda v: " -- " not in v)
_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)


@given(
    cpu=st.one_of(st.none(), st.integers(0, 4095)),
    stage=_ident,
    result=st.sampled_from(["ok", "FAIL", "declined", "info"]),
    kv=st.lists(st.tuples(_key, _value), max_size=5),
    text=_text,
    prefix=st.sampled_from(["", "[    1.234567] ", "<6>[   12.000001] "]),
)
def test_driver_line_round_trip(
    cpu: int | None, stage: str, result: str, kv: list[tuple[str, str]], text: str, prefix: str
) -> None:
    rec = DriverRecord(cpu=cpu, stage=stage, result=result, kv=tuple(kv), text=text)
    line = prefix + rec.render()
    parsed = parse_driver_line(line)
    assert parsed is not None
    assert (parsed.cpu, parsed.stage, parsed.result, parsed.kv, parsed.text) == (
        cpu,
        stage,
        result,
        tuple(kv),
        text,
    )
    assert parsed.render() == rec.render()
    assert parsed.raw == line.rstrip()


_fragments = st.sampled_from(
    [
        "RIG-BEGIN run=1 cell=x",
        "RIG-CPU vmx=1 model=m",
        "RIG-CPU vmx=0",
        "RIG-STEP insmod rc=0",
        "RIG-STEP insmod rc=1",
        "RIG-STEP rmmod rc=0",
        "RIG-STEP",
        "RIG-DMESG-BEGIN",
        "RIG-DMESG-END",
        "RIG-END",
        LOAD,
        CHECK,
        VMXON,
        LAUNCH,
        EXIT,
        VMXOFF,
        FREED,
        UNLOAD,
        NO_VMX,
        FAIL8,
        ENTRY_FAIL,
        "Kernel panic - not syncing: x",
        "BUG: x",
        "Oops: 0000",
        "WARNING: CPU: 0 PID: 1 at x",
        "Call Trace:",
        "---[ end trace 0 ]---",
        "vmlaunch: cpu=",
        "vmlaunch: cpu=99999999999999999999 exit ok reason=0x" + "f" * 60,
        "\r",
        "\x00",
        "",
    ]
)


@settings(max_examples=300)
@given(
    parts=st.lists(st.one_of(_fragments, st.text(max_size=30)), max_size=40),
    end=st.sampled_from(list(BootEnd)),
    lane=st.sampled_from([BOCHS_CELL, TCG_CELL]),
)
def test_parse_and_judge_never_raise(parts: list[str], end: BootEnd, lane: Cell) -> None:
    text = "\n".join(parts)
    report = parse_console(text)
    if report.begin:
        assert any(ln.strip().startswith("RIG-BEGIN") for ln in report.lines)
    if report.end:
        assert report.begin
    v = judge(lane, BUILD_OK, boot(text, end))
    assert list(v.stages) == list(STAGES)
    assert all(s.stage == name for name, s in v.stages.items())
    assert all(s.reason for s in v.stages.values())


@given(st.text(max_size=2000))
def test_parse_console_never_raises_on_arbitrary_text(text: str) -> None:
    parse_console(text)


# --------------------------------------------------------------------------- preloaded fixtures
def _with_preload(text: str, line: str) -> str:
    head, sep, rest = text.partition("RIG-CPU")
    cpu_line, nl, after = rest.partition("\n")
    return head + sep + cpu_line + nl + line + "\r\n" + after


def test_a_loaded_fixture_does_not_change_the_verdict() -> None:
    text = _with_preload(console(), "RIG-PRELOAD module=vmxhog rc=0")
    v = judge(BOCHS_CELL, BUILD_OK, boot(text))
    assert outcomes(v) == dict.fromkeys(STAGES, P)
    assert parse_console(text).preloads == (("vmxhog", 0),)


def test_a_fixture_that_did_not_load_makes_the_run_an_infrastructure_error() -> None:
    text = _with_preload(console(), "RIG-PRELOAD module=vmxhog rc=1")
    v = judge(BOCHS_CELL, BUILD_OK, boot(text))
    assert v.stages["build"].outcome is P
    for stage in ("vmxon", "vmlaunch", "vmcall_exit", "teardown"):
        assert v.stages[stage].outcome is E, stage
        assert "vmxhog did not load (rc=1)" in v.stages[stage].reason


def test_triple_fault_before_the_test_is_an_infrastructure_error() -> None:
    """Real Bochs output (GRUB's wrmsr to a locked IA32_FEATURE_CONTROL, this repository's
    first try at a firmware lock): the guest never reached the test, the driver never ran."""
    bochs = "00690658838p[CPU0  ] >>PANIC<< exception(): 3rd (13) exception with no resolution"
    result = BootResult(
        console="\x1b[H\x1b[J\x1b[1;1H", end=BootEnd.EMULATOR, duration_s=7.5,
        detail=f"Bochs stopped before the guest powered off: {bochs}", emulator_log=bochs,
    )  # fmt: skip
    v = judge(BOCHS_CELL, BUILD_OK, result)
    assert v.stages["build"].outcome is P
    for stage in ("vmxon", "vmlaunch", "vmcall_exit", "teardown"):
        assert v.stages[stage].outcome is E, stage
        assert "never reached the test" in v.stages[stage].reason
        assert "3rd (13) exception with no resolution" in v.stages[stage].reason


FIRMWARE_OFF = (
    "vmlaunch: cpu=0 check declined errno=-13 why=vmx_disabled_by_bios feature_control=0x1 "
    "-- CPU 0 declined: vmx_disabled_by_bios"
)


def test_firmware_lock_on_a_vmx_cpu_skips_with_the_drivers_cause() -> None:
    """Bochs has VMX in CPUID; the firmware locked it off, so the guest kernel shows no vmx
    flag. The driver must say why: vmx_disabled_by_bios. A plain no_vmx would also do."""
    decline = [TAINT, LOAD, FIRMWARE_OFF, "vmlaunch: cpu=- freed ok pages=0"]
    text = console(vmx=0, insmod=decline, insmod_rc=13, rmmod=[], rmmod_rc=None)
    arranged = Arranged(
        frozenset({"vmx_disabled_by_bios"}), (("vmx_disabled_by_bios", "--feature-control 0x1"),)
    )
    v = judge(BOCHS_CELL, BUILD_OK, boot(text), arranged)
    assert outcomes(v) == {"build": P, "vmxon": S, "vmlaunch": S, "vmcall_exit": S, "teardown": P}
    assert "disabled by the firmware" in v.stages["vmxon"].reason
    # the same console without the arrangement: the guest shows no VMX on a VMX lane
    assert judge(BOCHS_CELL, BUILD_OK, boot(text)).stages["vmxon"].outcome is E
    assert "feature_control=0x1" in v.stages["vmxon"].evidence


def test_firmware_decline_on_a_cpu_without_vmx_is_wrong() -> None:
    """On TCG CPUID has no VMX: blaming the firmware means the driver misread CPUID."""
    decline = [TAINT, LOAD, FIRMWARE_OFF, "vmlaunch: cpu=- freed ok pages=0"]
    text = console(vmx=0, model=PENRYN_MODEL, insmod=decline, insmod_rc=13, rmmod=[],
                   rmmod_rc=None)  # fmt: skip
    v = judge(TCG_CELL, BUILD_OK, boot(text))
    assert v.stages["vmxon"].outcome is F
    assert "expected a decline with why=no_vmx (" in v.stages["vmxon"].reason
