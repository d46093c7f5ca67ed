"""Module profiles (rig/verdict/profiles.py): any VMX module's dmesg lines read into the judge's
records, ours unchanged; the original vmlaunch driver (vishmohan/vmlaunch) judged by its own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rig.errors import UsageError
from rig.model import (
    Arranged,
    Beneath,
    BootEnd,
    BootResult,
    Cell,
    CellVerdict,
    ModuleBuild,
    Outcome,
    VmxEvent,
)
from rig.options import settings_from
from rig.verdict import judge, parse_console
from rig.verdict.grammar import DRIVER_RE, STAGE_OF
from rig.verdict.profiles import (
    DEFAULT,
    NATIVE,
    ORIGINAL,
    PROFILES,
    build_verdict,
    profile_named,
    records_of,
    reread,
    unsaid,
)
from tests.unit.test_trusted_verdicts import BOCHS, CPUS, DATA, KERNEL, TCG

P, F, S = Outcome.PASSED, Outcome.FAILED, Outcome.SKIPPED
GOLDEN = DATA / "bochs-6.12-haswell-original-crash-after-vmlaunch"
BOCHS_CELL = Cell(lane=BOCHS, kernel=KERNEL, cpu=CPUS["haswell"], timeout_s=400)
TCG_CELL = Cell(lane=TCG, kernel=KERNEL, cpu=CPUS["penryn"], timeout_s=400)
WARNED_LOG = (
    "  LD [M]  /tmp/build/vmlaunch_simple.ko\n"
    "/tmp/build/vmlaunch_simple.o: warning: objtool: do_vmwrite+0x68: return with modified "
    "stack frame\n"
    "/tmp/build/vmlaunch_simple.o: warning: objtool: vmxon_init+0xbe5: stack state mismatch\n"
)
WARNED = ModuleBuild(name="vmlaunch_simple", ok=True, log=WARNED_LOG, ko=None, warnings=2)
CLEAN = ModuleBuild(name="vmlaunch_simple", ok=True, log="", ko=None)
WITNESS = Arranged(frozenset(), ())  # no teardown witness in these made-up transcripts

INIT = [
    "<1> In vmxon",
    "<1> VMX supported CPU.",
    "MSR 0x3A:Lock bit is on.VMXON bit is on.OK",
    "<1> turned on cr4.vmxe",
]
LAUNCH = ["<1> Doing vmlaunch now.."]
EXIT = ["<1> After vmexit", "<1> Guest VMexit reason: 0x12"]
OFF = [
    "<1> Machine in vmxon: Attempting vmxoff",
    "<1> vmxoff complete",
    "<1> turned off cr4.vmxe",
    "<1> freeing allocated vmcs region!",
    "<1> freeing allocated io bitmapA region!",
    "<1> freeing allocated io bitmapB region!",
    "<1> freeing allocated msr bitmap region!",
    "<1> freeing allocated virtual apic page region!",
    "<1> freeing allocated vmxon region!",
    "<1> Enable Interrupts",
    "<1> Done",
]
HAPPY = INIT + LAUNCH + EXIT + OFF


def console(lines: list[str], *, rmmod: bool = True, end: bool = True, vmx: int = 1) -> str:
    """A one-channel transcript of the original driver's run (as tests/unit/test_verdict.py)."""
    out = ["RIG-BEGIN run=r cell=c kernel=6.12", f"RIG-CPU vmx={vmx} cpus=1 model=x"]
    out += ["RIG-RUN 0 module=vmlaunch_simple iter=0", "[    9.98] rig: run=0 step=insmod"]
    out += [f"[   10.{i:06d}] {line}" for i, line in enumerate(lines)]
    if rmmod:
        out += ["RIG-STEP insmod rc=0", "[   10.29] rig: run=0 step=rmmod", "RIG-STEP rmmod rc=0"]
        out += ["[   10.35] rig: run=0 step=dump"]
    if end:
        out.append("RIG-END")
    return "\n".join(out) + "\n"


def boot(text: str, end: BootEnd = BootEnd.POWEROFF, detail: str = "") -> BootResult:
    """`text` as the agent's channel: records come only from there (tests/unit/test_verdict.py)."""
    return BootResult(console="", agent=text, end=end, duration_s=1.0, detail=detail)


def judged(text: str, cell: Cell = BOCHS_CELL, **kw: object) -> CellVerdict:
    return judge(cell, CLEAN, boot(text, **kw), WITNESS, ORIGINAL)  # type: ignore[arg-type]


def outcomes(v: CellVerdict) -> dict[str, Outcome]:
    return {s: x.outcome for s, x in v.stages.items()}


# --------------------------------------------------------------------------- the tables
def test_profiles_are_chosen_by_name_and_an_unknown_name_lists_the_known_ones() -> None:
    assert profile_named(None) is DEFAULT and DEFAULT.native and DEFAULT.name == NATIVE
    assert profile_named("vmlaunch-original") is ORIGINAL
    with pytest.raises(UsageError) as err:
        profile_named("vmlaunch-orig")
    assert "vmlaunch-rig, vmlaunch-original" in err.value.render()


def test_the_options_table_checks_the_profile_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("obj-m := vmlaunch_simple.o\n")
    base = {"driver": str(tmp_path)}
    s = settings_from({**base, "profile": "vmlaunch-original", "strict_build": True},
                      default_driver=tmp_path)  # fmt: skip
    assert (s.profile, s.strict_build) == ("vmlaunch-original", True)
    assert settings_from(base, default_driver=tmp_path).profile == NATIVE
    with pytest.raises(UsageError, match="no such module profile"):
        settings_from({**base, "profile": "nope"}, default_driver=tmp_path)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_template_is_a_record_of_the_grammar(name: str) -> None:
    for rule in PROFILES[name].rules:
        groups = dict.fromkeys(rule.regex.groupindex, "12")
        for template in rule.records:
            m = DRIVER_RE.fullmatch("vmlaunch: cpu=- " + template.lstrip("?").format_map(groups))
            assert m is not None, template
            assert m["stage"] in STAGE_OF or m["stage"] == "status", template
    for step in PROFILES[name].unprinted:
        assert step in STAGE_OF


def test_every_printk_of_the_original_driver_has_a_rule() -> None:
    """Each message vmlaunch_simple.c can print (read from its source) matches a rule."""
    said = [
        *HAPPY,
        "<1> VMX not supported by CPU. Not doing anything",
        "MSR 0x3A:Lock bit is on.VMXONbit is off.Cannot do vmxon",
        "MSR 0x3A: Lock bit is not on. Not doing anything",
        "<1> Error allocating vmxon region",
        "<1> vmxon has failed!",
        "<1> Error allocating vmcs guest region",
        "<1> vmptrld has failed!",
        "<1> vmclear done!",
        "<1> vmxoff has failed!",
        "<1> Guest VMexit reason: 0x80000021",
    ]
    for msg in said:
        assert records_of([msg], ORIGINAL), msg
    assert records_of(["<1> Guest VMexit reasons galore"], ORIGINAL) == ()


def test_our_profile_reads_exactly_what_the_grammar_reads() -> None:
    report = parse_console((GOLDEN.parent / "bochs-6.12-haswell-pass-2runs/agent.txt").read_text())
    assert reread(report, DEFAULT) is report


def test_implied_records_stand_only_where_the_module_printed_no_result() -> None:
    recs = records_of([f"[ 1.0] {m}" for m in HAPPY], ORIGINAL)
    by = [(r.stage, r.result) for r in recs]
    assert ("vmxon", "ok") in by and ("vmlaunch", "ok") in by and ("exit", "ok") in by
    vmxon_ok = next(r for r in recs if (r.stage, r.result) == ("vmxon", "ok"))
    assert vmxon_ok.text.startswith("implied:") and "Doing vmlaunch now.." in vmxon_ok.text
    assert vmxon_ok.raw.endswith("<1> Doing vmlaunch now..")
    failed = records_of(["<1> In vmxon", "<1> vmxon has failed!", "<1> Doing vmlaunch now.."],
                        ORIGINAL)  # fmt: skip
    assert [(r.stage, r.result) for r in failed if r.stage == "vmxon"] == [("vmxon", "FAIL")]
    entry = records_of(["<1> After vmexit", "<1> Guest VMexit reason: 0x80000021"], ORIGINAL)
    assert [(r.stage, r.result, r.get("reason")) for r in entry][-1] == (
        "exit", "FAIL", "0x80000021")  # fmt: skip
    assert not any(r.stage == "vmlaunch" and r.result == "ok" for r in entry)


def test_a_line_spliced_onto_another_is_no_record() -> None:
    assert records_of(["[ 1.0] rigflood: noise <1> Doing vmlaunch now.."], ORIGINAL) == ()
    assert records_of(["<4>[    1.000000] <1> In vmxon"], ORIGINAL)[0].stage == "load"


# --------------------------------------------------------------------------- build
def test_a_foreign_modules_warnings_are_reported_not_fatal_unless_strict() -> None:
    v = build_verdict(WARNED, ORIGINAL)
    assert v.outcome is P and "2 warnings" in v.reason and "return with modified" in v.reason
    assert "objtool" in v.evidence
    assert build_verdict(WARNED, profile_named("vmlaunch-original", strict_build=True)).outcome is F
    assert build_verdict(WARNED, DEFAULT).outcome is F  # ours stay fatal
    assert build_verdict(CLEAN, ORIGINAL).outcome is P


# --------------------------------------------------------------------------- stages
def test_the_original_driver_passes_each_stage_it_really_does() -> None:
    v = judged(console(HAPPY))
    assert set(outcomes(v).values()) == {P}
    assert "VMXON succeeded" in v.stages["vmxon"].reason
    assert "vmxon ok (implied" in v.stages["vmxon"].reason
    assert "0x12 (VMCALL)" in v.stages["vmcall_exit"].reason
    assert "unload (its exit function is empty" in v.stages["teardown"].reason


def test_our_grammar_finds_nothing_in_the_original_driver() -> None:
    v = judge(BOCHS_CELL, WARNED, boot(console(HAPPY)), WITNESS, DEFAULT)
    assert v.stages["build"].outcome is F and v.stages["vmxon"].outcome is F


def test_a_crash_after_doing_vmlaunch_is_vmlaunchs_not_vmxons() -> None:
    crash = [*INIT, *LAUNCH, "BUG: TASK stack guard page was hit at 0000000012345678"]
    crash += ["Oops: stack guard page: 0000 [#1] PREEMPT SMP NOPTI", "Kernel panic - not syncing"]
    v = judged(console(crash, rmmod=False, end=False), end=BootEnd.PANIC, detail="panic")
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": F, "vmcall_exit": F, "teardown": F}
    why = v.stages["vmlaunch"].reason
    assert "stack guard page" in why and "Doing vmlaunch now.." in why
    assert "host state" in why  # a VMfail would have printed 'After vmexit'
    assert "during vmlaunch" in v.stages["vmcall_exit"].reason


def test_a_crash_after_the_exit_belongs_to_teardown() -> None:
    crash = [*INIT, *LAUNCH, *EXIT, OFF[0], "general protection fault, probably for non-canonical"]
    v = judged(console(crash, rmmod=False, end=False), end=BootEnd.PANIC, detail="panic")
    assert outcomes(v)["vmcall_exit"] is P and outcomes(v)["teardown"] is F
    assert "Machine in vmxon" in v.stages["teardown"].reason


def test_failures_the_original_prints_fail_their_stage() -> None:
    v = judged(console([*INIT, "<1> vmxon has failed!", *LAUNCH, *EXIT, *OFF]))
    assert outcomes(v)["vmxon"] is F and "vmxon FAIL" in v.stages["vmxon"].reason
    v = judged(console([*INIT, "<1> vmptrld has failed!", *LAUNCH, *EXIT, *OFF]))
    assert outcomes(v)["vmxon"] is P and outcomes(v)["vmlaunch"] is F
    v = judged(console([*INIT, *LAUNCH, "<1> After vmexit", "<1> Guest VMexit reason: 0x80000021",
                        *OFF]))  # fmt: skip
    assert outcomes(v)["vmlaunch"] is F and "invalid guest state" in v.stages["vmlaunch"].reason
    v = judged(console([*INIT, *LAUNCH, "<1> After vmexit", "<1> Guest VMexit reason: 0xa", *OFF]))
    assert outcomes(v)["vmcall_exit"] is F and "expected 0x12" in v.stages["vmcall_exit"].reason
    v = judged(console([*INIT, *LAUNCH, *EXIT, OFF[0], "<1> vmxoff has failed!", *OFF[1:]]))
    assert outcomes(v)["teardown"] is F


def test_a_stage_the_module_printed_nothing_for_says_so() -> None:
    """On a CPU without VMX the original declines, returns 0 and stays loaded: its teardown
    has nothing it printed; the verdict says so instead of failing or passing it."""
    no_vmx = ["<1> In vmxon", "<1> VMX not supported by CPU. Not doing anything", "<1> Done"]
    v = judged(console(no_vmx, vmx=0), cell=TCG_CELL)
    assert outcomes(v) == {"build": P, "vmxon": S, "vmlaunch": S, "vmcall_exit": S, "teardown": S}
    assert "no VMX" in v.stages["vmxon"].reason
    why = v.stages["teardown"].reason
    assert "printed nothing for this stage" in why and "no witness on this lane" in why
    assert "unload (its exit function is empty" in why


def test_unsaid_lists_what_a_witness_beneath_has_to_decide() -> None:
    report = reread(parse_console(console(HAPPY)), ORIGINAL)
    missing = unsaid(report, ORIGINAL)
    assert missing["vmxon"] == ("vmxon ok (implied by its next line)",)
    assert "vmlaunch ok (implied by its next line)" in missing["vmlaunch"]
    assert missing["teardown"] == ("unload (its exit function is empty: rmmod prints nothing)",)
    assert "vmcall_exit" not in missing
    assert unsaid(parse_console(console([])), DEFAULT) == {}


def test_the_real_run_of_the_original_driver_is_a_golden_case() -> None:
    assert (GOLDEN / "expected.json").read_text().count('"profile": "vmlaunch-original"') == 1
    assert "<1> Doing vmlaunch now.." in (GOLDEN / "console.txt").read_text()


def test_where_the_cpu_beneath_saw_the_exit_the_crash_is_the_exits() -> None:
    """The real crash: the module's last word was 'Doing vmlaunch now..'; Bochs' own log
    (beneath.txt of the same boot) saw VMLAUNCH, then exit 18 (VMCALL), then the host crashed
    on the host state that exit loaded. vmlaunch passed, on the witness's word."""
    from tests.unit.test_trusted_verdicts import load_case

    cell, crashed, arranged, _ = load_case(GOLDEN)
    seen = (VmxEvent("vmlaunch", None, "VMLAUNCH VMCS ptr: 0x000000000196d000"),
            VmxEvent("exit", 18, "VMEXIT reason = 18 (VMCALL) qualification=0x0"))  # fmt: skip
    witnessed = replace(crashed, beneath=Beneath("Bochs", seen))
    v = judge(cell, CLEAN, witnessed, arranged, ORIGINAL)
    assert v.stages["vmlaunch"].outcome is P
    assert "Bochs saw it, then exit reason 18 (VMCALL)" in v.stages["vmlaunch"].reason
    assert v.stages["vmcall_exit"].outcome is F
    why = v.stages["vmcall_exit"].reason
    assert "stack guard page" in why and "after the VM exit Bochs saw" in why
    assert "during vmcall_exit" in v.stages["teardown"].reason
    # a witness that saw no exit after the VMLAUNCH changes nothing
    launched_only = replace(crashed, beneath=Beneath("Bochs", seen[:1]))
    v = judge(cell, CLEAN, launched_only, arranged, ORIGINAL)
    assert v.stages["vmlaunch"].outcome is F and v.stages["vmcall_exit"].outcome is F
    # nor does it for our own driver's profile
    assert judge(cell, CLEAN, witnessed, arranged, DEFAULT).stages["vmlaunch"].outcome is not P


def test_an_unknown_profile_is_exit_2_before_anything_is_built(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "rig", "run", "--lane", "bochs", "--cpu", "haswell", "--profile",
         "vmlaunch-orig", "--cache", str(tmp_path / "c"), "--runs-dir", str(tmp_path / "r")],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert p.returncode == 2, p.stdout + p.stderr
    assert "no such module profile" in p.stderr and "vmlaunch-rig, vmlaunch-original" in p.stderr
    assert not (tmp_path / "c").exists()


def test_the_options_know_every_profile_and_no_other() -> None:
    """rig.options checks --profile before anything runs, below the verdict stage: its list of
    names is the verdict's."""
    from rig import options
    from rig.verdict import profiles

    assert tuple(profiles.PROFILES) == options.PROFILES
    assert options.PROFILES[0] == profiles.NATIVE


# --------------------------------------------------------------------------- nested lane
NESTED_GOLDEN = DATA / "nested-6.12-haswell-original-vmwrite-fails"
NESTED_TRACE = DATA.parent / "beneath" / "nested-6.12-haswell-original" / "l1-trace.txt"


def nested_original(beneath: Beneath | None = None) -> CellVerdict:
    """The real nested run (golden console), judged with KVM in L1's trace of the same boot."""
    from rig.lanes.nested_witness import beneath_from_l1_trace
    from tests.unit.test_trusted_verdicts import load_case

    cell, crashed, arranged, _ = load_case(NESTED_GOLDEN)
    seen = beneath_from_l1_trace(NESTED_TRACE.read_text()) if beneath is None else beneath
    return judge(cell, WARNED, replace(crashed, beneath=seen), arranged, ORIGINAL)


def test_on_the_nested_lane_kvm_in_l1_says_what_the_original_ran() -> None:
    """The real nested run: under KVM's nested VMX a VMWRITE failed (`vmclear done!` is its
    one path), which ran VMCLEAR, VMXOFF and the frees, then crashed insmod (RIP 0x3). KVM in
    L1 saw VMXON, VMPTRLD, VMCLEAR, VMXOFF and no VMLAUNCH: vmxon passes on its word, vmlaunch
    fails on the module's, the crash fails teardown, and each reason says what KVM saw."""
    v = nested_original()
    assert outcomes(v) == {"build": P, "vmxon": P, "vmlaunch": F, "vmcall_exit": S, "teardown": F}
    assert v.stages["vmxon"].witness == "KVM in L1"
    assert v.stages["vmxon"].reason.endswith("; KVM in L1 saw VMXON")
    why = v.stages["vmlaunch"].reason
    assert why.startswith("vmcs FAIL: a VMWRITE failed (its one path to VMCLEAR")
    assert "returns on a stack it popped" in why
    assert "KVM in L1 saw VMPTRLD, no VMLAUNCH" in why and "vmptrld ok (implied" in why
    assert v.stages["vmcall_exit"].reason == "not reached: vmlaunch failed"
    why = v.stages["teardown"].reason
    assert "NULL pointer dereference, address: 0000000000000003" in why
    assert "KVM in L1 saw VMXOFF" in why and "unload (its exit function is empty" in why


def test_the_witness_speaks_to_a_failed_stage_only_where_its_record_is_the_modules() -> None:
    """A record that is cut, or that holds a second VMXON (the teardown witness's KVM, or a
    hypervisor beside the module), cannot say which instructions were the module's: no words
    about a failed stage then; nor on a witness that cannot see VMXON (Bochs)."""
    from rig.lanes.nested_witness import beneath_from_l1_trace

    whole = beneath_from_l1_trace(NESTED_TRACE.read_text())
    vmxon = whole.events[0]
    launched = (VmxEvent("vmlaunch", None, "kvm_exit: vcpu 0 reason VMLAUNCH"),)
    for other in (
        replace(whole, complete=False, note="cut"),
        replace(whole, events=(*whole.events, vmxon, *launched)),
        replace(whole, sees=frozenset({"vmlaunch", "exit"})),
    ):
        v = nested_original(other)
        assert outcomes(v)["vmlaunch"] is F and outcomes(v)["teardown"] is F
        assert "saw VMPTRLD" not in v.stages["vmlaunch"].reason
        assert "saw VMXOFF" not in v.stages["teardown"].reason
    # a VMLAUNCH inside the module's operation is said as such (a crash after it, no exit)
    v = nested_original(replace(whole, events=(*whole.events[:2], *launched, *whole.events[2:])))
    assert "KVM in L1 saw VMPTRLD, VMLAUNCH" in v.stages["vmlaunch"].reason
