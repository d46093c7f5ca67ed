"""The rules of each stage, judged from one run's driver records (rig.verdict.grammar).

Stage <- driver lines (docs/contract.md grammar):
  build        ModuleBuild
  vmxon        load, check, alloc, vmxon
  vmlaunch     vmclear, vmptrld, vmcs, vmlaunch, and `exit FAIL` with an entry-failure reason
  vmcall_exit  exit
  teardown     vmxoff, freed, unload, plus the guest's insmod/rmmod steps

A rule answers None while its stage has not finished (the guest may still be running it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rig.guest.protocol import Step, Witness
from rig.model import (
    NOTHING_ARRANGED,
    STAGES,
    Arranged,
    Cell,
    ModuleBuild,
    Outcome,
    StageVerdict,
)
from rig.verdict.beside import kvm_findings
from rig.verdict.grammar import (
    DECLINES,
    KERNEL_FLAG_OFF,
    STAGE_OF,
    DriverRecord,
    decode_failure,
    is_entry_failure,
    split_attempts,
)
from rig.verdict.reading import Run
from rig.verdict.sdm import EXIT_REASONS, VMCALL_REASON, decode_exit_reason, hex_or_q


@dataclass(frozen=True)
class RunContext:
    cell: Cell
    run: Run
    vmx_expected: bool  # does the guest CPU have VMX (guest's word, else the lane's)?
    no_vmx_reason: str  # skip reason when it has none
    complete: bool  # the guest finished the test: missing lines are the driver's fault
    arranged: Arranged = NOTHING_ARRANGED  # the refusals this run set up: the right answer
    last: bool = True  # the guest's last run: after it only RIG-END should follow
    ended: bool = True  # the guest printed RIG-END
    witness: Witness | None = None  # the teardown witness (judged with the last run)
    beside: tuple[str, ...] = ()  # RIG-BESIDE lines (--beside kvm)
    unprinted: frozenset[str] = frozenset()  # steps the module never prints (its profile)


Judged = StageVerdict | None  # None: no conclusion yet (the stage did not finish)


def sv(stage: str, outcome: Outcome, reason: str, evidence: str = "") -> StageVerdict:
    return StageVerdict(stage=stage, outcome=outcome, reason=reason, evidence=evidence)


def evidence_of(recs: Iterable[DriverRecord | Step | str]) -> str:
    out: list[str] = []
    for r in recs:
        line = r if isinstance(r, str) else r.raw
        if line not in out:
            out.append(line)
    return "\n".join(out)


def judge_vmxon(ctx: RunContext, first: Sequence[DriverRecord]) -> Judged:
    mine = [r for r in first if STAGE_OF.get(r.stage) == "vmxon"]
    claims = [r for r in first if r.result == "ok" and r.stage in ("vmxon", "vmlaunch", "exit")]
    declines = [r for r in mine if r.result == "declined"]
    fails = [r for r in mine if r.result == "FAIL"]
    if not ctx.vmx_expected:
        if claims:
            return sv(
                "vmxon",
                Outcome.FAILED,
                f"the driver claims '{claims[0].stage} ok' on a CPU without VMX",
                evidence_of(claims),
            )
        # The guest's flag is the kernel's X86_FEATURE_VMX. On a lane that promises VMX the
        # kernel clears it only when the run locked VMX off in the firmware (or asked the
        # kernel to): the driver must then name that cause. Without such an arrangement a
        # VMX lane whose guest shows no VMX is a wrong CPU model or an emulator regression.
        if ctx.cell.lane.vmx:
            expected = tuple(w for w in KERNEL_FLAG_OFF if w in ctx.arranged.declines)
            if not expected:
                return sv(
                    "vmxon",
                    Outcome.ERROR,
                    f"infrastructure: lane {ctx.cell.lane.name} promises VMX but the guest CPU "
                    f"shows no vmx flag ({ctx.no_vmx_reason}; CPU model "
                    f"{ctx.cell.cpu_model or ctx.cell.cpu.name}): a wrong CPU model or an "
                    "emulator regression, not a verdict on the driver",
                    evidence_of(mine),
                )
        else:
            expected = ("no_vmx",)
        right = [r for r in declines if r.get("why") in expected]
        if right:
            why = right[0].get("why") or "no_vmx"
            reason = ctx.no_vmx_reason if why == "no_vmx" else arranged_reason(ctx, why)
            return sv("vmxon", Outcome.SKIPPED, reason, evidence_of(right))
        if declines or fails:
            bad = (declines or fails)[0]
            return sv(
                "vmxon",
                Outcome.FAILED,
                f"{decode_failure(bad)}; expected a decline with why="
                f"{' or '.join(expected)} (the guest kernel reports no VMX)",
                evidence_of([bad]),
            )
        if ctx.complete and not first:
            return sv("vmxon", Outcome.FAILED, silent_reason(ctx.run), insmod_evidence(ctx.run))
        if ctx.complete:
            return sv(
                "vmxon",
                Outcome.FAILED,
                "the driver did not decline on a CPU without VMX (no 'check declined why=no_vmx')",
                evidence_of(mine),
            )
        return None
    if declines:
        d = declines[0]
        why = d.get("why") or "?"
        if why in ctx.arranged.declines:
            return sv("vmxon", Outcome.SKIPPED, arranged_reason(ctx, why), d.raw)
        return sv(
            "vmxon",
            Outcome.FAILED,
            f"{decode_failure(d)}, but the guest CPU has VMX and the run arranged no such "
            "condition",
            d.raw,
        )
    flag_off = [w for w in KERNEL_FLAG_OFF if w in ctx.arranged.declines]
    if flag_off:
        return sv(
            "vmxon",
            Outcome.ERROR,
            f"infrastructure: the run arranged {flag_off[0]} ({ctx.arranged.because(flag_off[0])})"
            " but the guest kernel still shows the vmx flag: the arrangement did not take",
            evidence_of(mine),
        )
    if ctx.arranged.declines and (claims or fails):
        why = sorted(ctx.arranged.declines)[0]
        return sv(
            "vmxon",
            Outcome.FAILED,
            f"the run arranged {why} ({ctx.arranged.because(why)}) but the driver did not "
            "decline: it went on to use VMX that is not its to take",
            evidence_of(claims or fails),
        )
    if fails:
        return sv("vmxon", Outcome.FAILED, decode_failure(fails[0]), evidence_of(fails))
    reported = {r.cpu for r in mine if r.cpu is not None}  # CPUs the driver set out to use
    ok = {r.cpu for r in mine if r.stage == "vmxon" and r.result == "ok"}
    if ok and reported <= ok:
        cpus = ", ".join(str(c) for c in sorted(c for c in ok if c is not None))
        where = f" on CPU {cpus}" if cpus else ""  # a foreign module may not say which CPU
        return sv("vmxon", Outcome.PASSED, f"VMXON succeeded{where}", evidence_of(mine))
    if ctx.complete and not first:
        return sv("vmxon", Outcome.FAILED, silent_reason(ctx.run), insmod_evidence(ctx.run))
    if ctx.complete:
        missing = sorted(c for c in reported - ok if c is not None)
        what = (
            f"no 'vmxon ok' for CPU {', '.join(map(str, missing))}" if ok else "no 'vmxon ok' line"
        )
        return sv("vmxon", Outcome.FAILED, f"the driver printed {what}", evidence_of(mine))
    return None


def arranged_reason(ctx: RunContext, why: str) -> str:
    how = ctx.arranged.because(why)
    return f"driver declined as arranged: {DECLINES.get(why, why)}" + (f" ({how})" if how else "")


def silent_reason(run: Run) -> str:
    insmod = run.step("insmod")
    rc = f" (insmod rc={insmod.rc})" if insmod is not None else ""
    return f"the driver printed no 'vmlaunch: cpu=' line at all{rc}"


def insmod_evidence(run: Run) -> str:
    """Lines about loading the module (insmod errors, unknown symbols, ...)."""
    lines = [
        ln
        for stream in (run.console, run.dump)
        if stream is not None
        for ln in stream.lines[stream.boundary :]
        if "insmod" in ln or "vmlaunch" in ln or "RIG-STEP" in ln
    ]
    return "\n".join(lines[-20:])


def not_reached(stage: str, before: StageVerdict) -> Judged:
    if before.outcome is Outcome.SKIPPED:
        return sv(stage, Outcome.SKIPPED, before.reason, before.evidence)
    if before.outcome is Outcome.FAILED:
        return sv(stage, Outcome.SKIPPED, f"not reached: {before.stage} failed")
    if before.outcome is Outcome.ERROR:
        return sv(stage, Outcome.ERROR, f"not reached: {before.stage} could not be checked")
    return None


def judge_vmlaunch(ctx: RunContext, first: Sequence[DriverRecord], vmxon: Judged) -> Judged:
    if vmxon is None:
        return None
    if vmxon.outcome is not Outcome.PASSED:
        return not_reached("vmlaunch", vmxon)
    mine = [r for r in first if STAGE_OF.get(r.stage) == "vmlaunch"]
    fails = [r for r in mine if r.result in ("FAIL", "declined")]
    entry = [r for r in first if is_entry_failure(r)]
    if fails:
        return sv("vmlaunch", Outcome.FAILED, decode_failure(fails[0]), evidence_of(fails))
    if entry:
        reason = entry[0].number("reason")
        basic = entry[0].number("basic")
        if basic is None and reason is not None:
            basic = reason & 0xFFFF
        name = EXIT_REASONS.get(basic if basic is not None else -1, "unknown")
        return sv(
            "vmlaunch",
            Outcome.FAILED,
            f"VM entry failed: exit reason {basic} ({name}), reason {hex_or_q(reason)}",
            evidence_of([*[r for r in mine if r.result == "ok"], *entry]),
        )
    launched = [r for r in mine if r.stage == "vmlaunch" and r.result == "ok"]
    if launched:
        return sv("vmlaunch", Outcome.PASSED, "VMLAUNCH entered the guest", evidence_of(mine))
    if ctx.complete:
        return sv(
            "vmlaunch",
            Outcome.FAILED,
            "the driver printed no 'vmlaunch ok' line",
            evidence_of(mine),
        )
    return None


def judge_exit(ctx: RunContext, first: Sequence[DriverRecord], vmlaunch: Judged) -> Judged:
    if vmlaunch is None:
        return None
    if vmlaunch.outcome is not Outcome.PASSED:
        return not_reached("vmcall_exit", vmlaunch)
    # `exit info` lines (the round trips' timings) add to the evidence, never to the verdict
    exits = [r for r in first if r.stage == "exit" and r.result != "info"]
    infos = [r for r in first if r.stage == "exit" and r.result == "info"]
    for r in exits:
        if r.result != "ok":
            return sv("vmcall_exit", Outcome.FAILED, decode_failure(r), r.raw)
        reason = r.number("reason")
        if reason is None:
            return sv("vmcall_exit", Outcome.FAILED, "'exit ok' without a reason= key", r.raw)
        if reason != VMCALL_REASON:
            return sv(
                "vmcall_exit",
                Outcome.FAILED,
                f"exit reason {hex_or_q(reason)}: {decode_exit_reason(reason)}; "
                "expected 0x12 (VMCALL)",
                r.raw,
            )
    if exits:
        return sv("vmcall_exit", Outcome.PASSED, exit_reason(exits),
                  evidence_of([*exits, *infos]))  # fmt: skip
    if ctx.complete:
        return sv("vmcall_exit", Outcome.FAILED, "the driver printed no 'exit' line")
    return None


def exit_reason(exits: Sequence[DriverRecord]) -> str:
    """The passing vmcall_exit reason for these `exit ok` lines (of one run or of several)."""
    return "VM exit with reason 0x12 (VMCALL)" + events_note(exits)


def events_note(exits: Sequence[DriverRecord]) -> str:
    """NMIs and machine checks that arrived in the guest: the driver handled them and resumed."""
    nmis = sum(r.number("nmis") or 0 for r in exits)
    mces = sum(r.number("mces") or 0 for r in exits)
    if not nmis and not mces:
        return ""
    nmi_word = "NMI exit" + "s" * (nmis != 1)
    mce_word = "machine-check exit" + "s" * (mces != 1)
    return (
        f"; {nmis} {nmi_word} (re-delivered to the host) and {mces} {mce_word} (to the "
        "kernel's handler) along the way"
    )


def judge_teardown(ctx: RunContext, attempts: Sequence[Sequence[DriverRecord]]) -> Judged:
    first = attempts[0] if attempts else ()
    insmod, rmmod = ctx.run.step("insmod"), ctx.run.step("rmmod")
    if insmod is None or insmod.rc is None:
        if ctx.complete:
            return sv("teardown", Outcome.FAILED, "no 'RIG-STEP insmod rc=N' from the guest")
        return None
    vmxon_cpus = {r.cpu for r in first if r.stage == "vmxon" and r.result == "ok"}
    offs = [r for r in first if r.stage == "vmxoff"]
    freed = [r for r in first if r.stage == "freed" and r.result == "ok"]
    unload = [r for r in first if r.stage == "unload" and r.result == "ok"]
    bad = [r for r in first if STAGE_OF.get(r.stage) == "teardown" and r.result == "FAIL"]
    evidence: list[DriverRecord | Step | str] = [insmod]
    wrong: list[str] = [decode_failure(r) for r in bad]  # definite failures
    absent: list[str] = []  # lines that should be there by now
    for r in offs:
        if r.result == "ok" and r.get("cr4.vmxe") != "0":
            wrong.append(f"CPU {r.cpu}: vmxoff left cr4.vmxe={r.get('cr4.vmxe', '?')}")
    off_cpus = {r.cpu for r in offs if r.result == "ok" and r.get("cr4.vmxe") == "0"}
    for cpu in sorted(c for c in vmxon_cpus - off_cpus if c is not None):
        absent.append(f"no 'vmxoff ok cr4.vmxe=0' for CPU {cpu}")
    if insmod.rc == 0:
        finished = rmmod is not None and rmmod.rc is not None
        if rmmod is None or rmmod.rc is None:
            absent.insert(0, "the guest did not run rmmod")
        else:
            evidence.append(rmmod)
            if rmmod.rc != 0:
                wrong.insert(0, f"rmmod failed (rc={rmmod.rc})")
        if not freed and "freed" not in ctx.unprinted:
            absent.append("no 'freed' line")
        if not unload and "unload" not in ctx.unprinted:
            absent.append("no 'unload ok' line")
        ok_reason = "VMXOFF done, pages freed, module unloaded"
    else:
        finished = True  # insmod returned: the failed load has cleaned up (or never will)
        errno_lines = [
            r for r in first if r.result in ("declined", "FAIL") and (r.number("errno") or 0) < 0
        ]
        if not errno_lines:
            absent.append(f"insmod failed (rc={insmod.rc}) but no driver line gives errno=")
            ok_reason = ""
        else:
            evidence.append(errno_lines[0])
            if not [r for r in freed if r.index > errno_lines[0].index]:
                absent.append("no 'freed' line after the failed load")
            ok_reason = (
                f"load refused with errno {errno_lines[0].get('errno')}, pages freed, module gone"
            )
        if len(attempts) > 1:
            busy = [r for r in attempts[1] if r.get("why") == "vmx_busy"]
            if busy and not any(r.get("why") == "vmx_busy" for r in first):
                wrong.append("the second load attempt found VMX busy: the first left VMX on")
                evidence.append(busy[0])
    evidence.extend([*offs, *freed, *unload, *bad])
    load = next((r for r in first if r.stage == "load"), None)
    kvm = kvm_findings(
        ctx.arranged, witness=ctx.witness, beside=ctx.beside,
        console=(*ctx.run.console.lines, *(ctx.run.dump.lines if ctx.run.dump else ())),
        hold=load.get("hold") if load else None, last=ctx.last, ended=ctx.ended,
        loaded_and_done=insmod.rc == 0 and (finished or ctx.complete),
    )  # fmt: skip
    evidence.extend(kvm.evidence)
    wrong.extend(kvm.failed)
    if wrong or (absent and (finished or ctx.complete)):
        return sv("teardown", Outcome.FAILED, "; ".join([*wrong, *absent]), evidence_of(evidence))
    if absent or kvm.waiting:
        return None  # lines that should come, or the witness, have not come yet
    if kvm.errors:
        return sv("teardown", Outcome.ERROR, "; ".join(kvm.errors), evidence_of(evidence))
    ok_reason = "; ".join([ok_reason, *kvm.notes])
    return sv("teardown", Outcome.PASSED, ok_reason, evidence_of(evidence))


def judge_records(ctx: RunContext, records: Sequence[DriverRecord]) -> dict[str, Judged]:
    attempts = split_attempts(records)
    first = attempts[0] if attempts else ()
    vmxon = judge_vmxon(ctx, first)
    if not ctx.vmx_expected and vmxon is not None and vmxon.outcome is Outcome.SKIPPED:
        vmlaunch: Judged = sv("vmlaunch", Outcome.SKIPPED, vmxon.reason, vmxon.evidence)
        vmexit: Judged = sv("vmcall_exit", Outcome.SKIPPED, vmxon.reason, vmxon.evidence)
    else:
        vmlaunch = judge_vmlaunch(ctx, first, vmxon)
        vmexit = judge_exit(ctx, first, vmlaunch)
    return {
        "vmxon": vmxon,
        "vmlaunch": vmlaunch,
        "vmcall_exit": vmexit,
        "teardown": judge_teardown(ctx, attempts),
    }


GUEST_STAGES = STAGES[1:]


def all_stages(
    outcome: Outcome, reason: str, evidence: str = "", stages: Iterable[str] = STAGES
) -> dict[str, StageVerdict]:
    return {s: sv(s, outcome, reason, evidence) for s in stages}


_ERROR_WORD = re.compile(r"\berror\b", re.IGNORECASE)


def judge_build(build: ModuleBuild | None) -> StageVerdict:
    if build is None:
        return sv("build", Outcome.ERROR, "no build result: the artifact stage failed")
    if build.ok and build.warnings:
        # The driver must build warning-free (objtool included) on every kernel of the matrix.
        warned = [ln for ln in build.log.splitlines() if "warning:" in ln.lower()][:20]
        n = build.warnings
        reason = f"module built with {n} warning{'s' if n != 1 else ''}: {warned[0].strip()[:200]}"
        return sv("build", Outcome.FAILED, reason, "\n".join(warned))
    if build.ok:
        return sv("build", Outcome.PASSED, "module built (0 warnings)")
    log_lines = build.log.splitlines()
    # the compiler's diagnostics first, then make's (not a file name like vmx_errors.o)
    diag = [ln for ln in log_lines if "error:" in ln.lower()]
    errors = [*diag, *[ln for ln in log_lines if _ERROR_WORD.search(ln) and ln not in diag]][:20]
    tail = log_lines[-30:]
    evidence = "\n".join(dict.fromkeys([*errors, *tail]))
    first = errors[0].strip() if errors else (tail[-1].strip() if tail else "no output")
    return sv("build", Outcome.FAILED, f"module did not compile: {first[:200]}", evidence)
