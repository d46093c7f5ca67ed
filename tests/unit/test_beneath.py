"""The CPU beneath as witness (issue: no stage on the driver's word alone): the judge compares
the driver's VMX lines with what the emulator or hypervisor under the guest saw."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rig.model import Beneath, BootEnd, BootResult, Outcome, VmxEvent
from rig.verdict import judge
from rig.verdict.beneath import with_beneath
from tests.unit.test_trusted_verdicts import BUILD_OK, DATA, load_case, outcomes

PASS_CASE = DATA / "bochs-6.12-haswell-witness-pass"


def events(*spec: tuple[str, int | None]) -> tuple[VmxEvent, ...]:
    return tuple(VmxEvent(kind, reason, f"witness: {kind} {reason}") for kind, reason in spec)


GOOD = events(("vmxon", None), ("vmclear", None), ("vmptrld", None), ("vmlaunch", None),
              ("exit", 18), ("vmclear", None), ("vmxoff", None))  # fmt: skip


def judged(beneath: Beneath | None) -> dict[str, tuple[Outcome, str, str]]:
    cell, boot, arranged, _ = load_case(PASS_CASE)
    v = judge(cell, BUILD_OK, replace(boot, beneath=beneath), arranged)
    return {s: (sv.outcome, sv.reason, sv.witness) for s, sv in v.stages.items()}


def test_a_witness_that_agrees_confirms_each_stage_in_its_reason() -> None:
    got = judged(Beneath("Bochs", GOOD))
    assert {s: o for s, (o, _, _) in got.items()} == dict.fromkeys(got, Outcome.PASSED)
    assert "Bochs saw VMXON" in got["vmxon"][1]
    assert "Bochs saw VMLAUNCH enter the guest" in got["vmlaunch"][1]
    assert "Bochs saw exit 18 (VMCALL)" in got["vmcall_exit"][1]
    assert "Bochs saw VMXOFF" in got["teardown"][1]
    assert {s: w for s, (_, _, w) in got.items()} == {
        "build": "", "vmxon": "Bochs", "vmlaunch": "Bochs", "vmcall_exit": "Bochs",
        "teardown": "Bochs",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("seen", "stage", "words"),
    [
        (events(("vmxon", None), ("vmlaunch", None), ("exit", 10), ("vmxoff", None)),
         "vmcall_exit",
         "the driver reports exit reason 0x12, the CPU beneath (Bochs) saw exit 10 (CPUID)"),
        (events(("vmxon", None), ("vmclear", None), ("vmptrld", None), ("vmxoff", None)),
         "vmlaunch", "the driver reports vmlaunch ok, the CPU beneath (Bochs) saw no VMLAUNCH"),
        (events(("vmxon", None), ("vmlaunch", None), ("vmfail", 7), ("vmxoff", None)),
         "vmlaunch", "saw 0 followed by a VM exit: witness: vmfail 7"),
        (events(("vmlaunch", None), ("exit", 18), ("vmxoff", None)),
         "vmxon", "the driver reports 1 VMXON ok, the CPU beneath (Bochs) saw 0 VMXON"),
        (events(("vmxon", None), ("vmlaunch", None), ("exit", 18)),
         "teardown", "the driver reports 1 VMXOFF ok, the CPU beneath (Bochs) saw 0 VMXOFF"),
    ],
    ids=["cpuid-not-vmcall", "never-launched", "launch-vmfailed", "no-vmxon", "no-vmxoff"],
)  # fmt: skip
def test_a_witness_that_contradicts_the_driver_fails_the_stage_with_both_sides(
    seen: tuple[VmxEvent, ...], stage: str, words: str
) -> None:
    got = judged(Beneath("Bochs", seen))
    outcome, reason, witness = got[stage]
    assert outcome is Outcome.FAILED and words in reason, reason
    assert witness == "Bochs"


def test_no_witness_on_the_lane_is_said_and_a_cut_record_proves_no_absence() -> None:
    none = judged(None)
    assert all(o is Outcome.PASSED for o, _, _ in none.values())
    assert none["vmxon"][1].endswith("(no witness beneath on this lane)")
    assert none["vmxon"][2] == "none"
    cut = judged(Beneath("Bochs", GOOD[:2], complete=False, note="its log was cut at 16 MiB"))
    assert cut["vmlaunch"][0] is Outcome.PASSED
    assert "(Bochs's witness its log was cut at 16 MiB)" in cut["vmlaunch"][1]
    assert cut["vmlaunch"][2] == "none"


def test_the_witness_never_passes_what_the_driver_failed() -> None:
    cell, boot, arranged, _ = load_case(DATA / "bochs-6.12-haswell-break-host-state")
    plain = judge(cell, BUILD_OK, boot, arranged)
    # busybox's insmod tries a failing init twice: two VMXON, VMLAUNCH failing, VMXOFF
    twice = events(("vmxon", None), ("vmlaunch", None), ("vmfail", 8), ("vmxoff", None)) * 2
    seen = judge(cell, BUILD_OK, replace(boot, beneath=Beneath("Bochs", twice)), arranged)
    assert outcomes(seen) == outcomes(plain)
    assert plain.stages["vmlaunch"].outcome is Outcome.FAILED


def test_with_beneath_leaves_lanes_without_vmx_alone() -> None:
    cell, boot, arranged, _ = load_case(DATA / "tcg-6.12-penryn-decline")
    v = judge(cell, BUILD_OK, boot, arranged)
    assert all(sv.witness == "" for sv in v.stages.values())
    assert with_beneath(v.stages, (), None, lane_vmx=False) == v.stages


def test_a_witness_that_cannot_see_a_kind_never_speaks_to_its_stage() -> None:
    """Bochs logs no successful VMXON or VMXOFF: those stages say so, the others are judged."""
    bochs = Beneath("Bochs", GOOD, sees=frozenset({"vmlaunch", "vmresume", "exit", "vmfail"}))
    got = judged(bochs)
    assert got["vmxon"][0] is Outcome.PASSED and got["vmxon"][2] == "none"
    assert "(Bochs does not show VMXON)" in got["vmxon"][1]
    assert "(Bochs does not show VMXOFF)" in got["teardown"][1]
    assert got["vmcall_exit"][2] == "Bochs"


def _with_vmcs(boot_agent: str, vmcs: int) -> str:
    return boot_agent.replace("vmptrld ok", f"vmptrld ok vmcs={hex(vmcs)}")


def test_launches_of_a_vmcs_the_driver_never_loaded_are_someone_elses() -> None:
    """After the last rmmod the teardown witness's KVM launches its own VMCS: those events
    are not the driver's. A driver that never launched, but says it did, is caught."""
    cell, boot, arranged, _ = load_case(PASS_CASE)
    ours = replace(boot, agent=_with_vmcs(boot.agent, 0x3190000),
                   console=_with_vmcs(boot.console, 0x3190000))  # fmt: skip
    kvm = (VmxEvent("vmlaunch", None, "VMLAUNCH VMCS ptr: 0x5000000", vmcs=0x5000000),
           VmxEvent("exit", 30, "VMEXIT reason = 30 (IO)"))  # fmt: skip
    honest = (VmxEvent("vmlaunch", None, "VMLAUNCH VMCS ptr: 0x3190000", vmcs=0x3190000),
              VmxEvent("exit", 18, "VMEXIT reason = 18 (VMCALL)"), *kvm)  # fmt: skip
    good = judge(cell, BUILD_OK, replace(ours, beneath=Beneath("Bochs", honest)), arranged)
    assert outcomes(good)["vmcall_exit"] == "passed"
    assert "Bochs saw exit 18 (VMCALL)" in good.stages["vmcall_exit"].reason
    liar = judge(cell, BUILD_OK, replace(ours, beneath=Beneath("Bochs", kvm)), arranged)
    assert liar.stages["vmlaunch"].outcome is Outcome.FAILED
    assert "saw no VMLAUNCH" in liar.stages["vmlaunch"].reason


# --------------------------------------------------------------------------- allocations
ALLOC = DATA.parent / "alloc"


@pytest.mark.parametrize(
    ("name", "teardown", "words"),
    [
        ("bochs-6.12-haswell-vmlaunch", Outcome.PASSED, "came back"),
        ("bochs-6.12-haswell-vmlaunch-leaky", Outcome.FAILED,
         "the driver reports 5 pages freed, 5 allocations it made were still held after rmmod"),
    ],
    ids=["good", "leaks-but-says-freed"],
)  # fmt: skip
def test_the_allocation_witness_decides_a_teardown_the_driver_passed(
    name: str, teardown: Outcome, words: str
) -> None:
    """Real agent channels of bochs 6.12 runs (tests/data/alloc): the leaking copy prints
    `freed ok pages=5`, yet the kernel's kmem tracepoints saw its 5 pages still held."""
    cell, _, arranged, _ = load_case(PASS_CASE)
    agent = (ALLOC / f"{name}.agent.txt").read_text()
    boot = BootResult(console="", agent=agent, end=BootEnd.POWEROFF, duration_s=1.0)
    v = judge(cell, BUILD_OK, boot, replace(arranged, witness=False))
    assert v.stages["teardown"].outcome is teardown, v.stages["teardown"].reason
    assert words in v.stages["teardown"].reason
    assert all(v.stages[s].outcome is Outcome.PASSED for s in ("vmxon", "vmlaunch"))


def test_nmi_exits_on_the_way_to_the_vmcall_are_not_a_contradiction() -> None:
    """--inject nmi: the first exit after VMLAUNCH can be an NMI (0) the driver handles and
    resumes from; the exit it reports is the VMCALL that ended the launch."""
    seen = events(("vmxon", None), ("vmlaunch", None), ("exit", 0), ("vmresume", None),
                  ("exit", 18), ("vmxoff", None))  # fmt: skip
    got = judged(Beneath("KVM in L1", seen))
    assert got["vmcall_exit"][0] is Outcome.PASSED, got["vmcall_exit"][1]
    assert "KVM in L1 saw exit 18 (VMCALL)" in got["vmcall_exit"][1]
