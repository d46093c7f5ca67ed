"""Verdicts: from a cell's build and guest console to one StageVerdict per stage in STAGES.

    judge(cell, build, boot, arranged) -> CellVerdict

Pure functions, no I/O. Outcomes mean (rig.model.Outcome): FAILED = the driver misbehaved,
SKIPPED = cannot be tested here (a stated reason), ERROR = infrastructure.

Stage <- driver lines (docs/contract.md grammar):
  build        ModuleBuild
  vmxon        load, check, alloc, vmxon
  vmlaunch     vmclear, vmptrld, vmcs, vmlaunch, and `exit FAIL` with an entry-failure reason
  vmcall_exit  exit
  teardown     vmxoff, freed, unload, plus the guest's insmod/rmmod steps

Rules that are not obvious:
- The console is split into runs (`RIG-RUN n module=M iter=I` blocks of guests/initramfs/init;
  a console without them is one run). Each run is judged; the cell gets, per stage, the worst
  outcome over its runs (FAILED > ERROR > SKIPPED > PASSED), its reason prefixed "run N: ".
- Driver lines are read from a run's dmesg dump when it has at least as many of them as the
  live console (the dump is complete; the live console is all there is after a crash).
- Oopses count only after the driver's load began (after the guest's RIG-BEGIN/RIG-CPU marker):
  kernel 6.12 on Bochs prints a boot-time WARNING before any module loads.
- An oops, a hang (timeout) or a guest panic/triple fault makes the stage in progress and every
  later stage FAILED; an emulator that died otherwise, or a console cut short, makes them ERROR.
- Whether the CPU has VMX is the guest's word (RIG-CPU vmx=), else the lane's; on a CPU without
  VMX the driver must decline with why=no_vmx (the VMX stages are then SKIPPED).
- busybox insmod retries a failing init once: the first load attempt is judged, the second is
  tolerated (unless it shows the first left VMX on).
- A stage after a failed one is SKIPPED ("not reached"); after a decline, SKIPPED with the
  decline's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rig.guest.alloc import parse_alloc
from rig.guest.protocol import (
    CONSOLE_MARK_RE,
    TRANSCRIPT_CAP,
    bounded_text,
    merge_channels,
    parse_lines,
)
from rig.model import (
    NOTHING_ARRANGED,
    SEVERITY,
    STAGES,
    Arranged,
    BootEnd,
    BootResult,
    Cell,
    CellVerdict,
    ModuleBuild,
    Outcome,
    StageVerdict,
)
from rig.textsafe import shown
from rig.verdict.beneath import with_beneath
from rig.verdict.beside import beside_setup_failure
from rig.verdict.crash import crash_teardown, split_at_crash
from rig.verdict.pages import judge_pages
from rig.verdict.profiles import DEFAULT, Profile, build_verdict, reread, settle
from rig.verdict.reading import TAIL_LINES, GuestReport, Run, read
from rig.verdict.stages import (
    GUEST_STAGES,
    Judged,
    RunContext,
    all_stages,
    exit_reason,
    judge_records,
    sv,
)


@dataclass(frozen=True)
class Trouble:
    """The guest crashed, hung or died at stage index `at`: it and later stages get this."""

    at: int
    outcome: Outcome
    reason: str
    evidence: str
    word: str  # "crashed" | "hung" | "died"


def past_rmmod(run: Run) -> bool:
    """The driver is gone and the agent got past rmmod: the console shows the driver's
    `unload ok` and the agent's next kmsg marker (its dump step) for this run."""
    marks = {
        m["step"]
        for line in run.console.lines
        if (m := CONSOLE_MARK_RE.search(line)) and int(m["n"]) == run.number
    }
    unloaded = any(r.stage == "unload" and r.result == "ok" for r in run.console.records)
    return unloaded and "dump" in marks


def stage_index(judged: dict[str, Judged]) -> int | None:
    return next((i for i, s in enumerate(GUEST_STAGES) if judged[s] is None), None)


def find_trouble(ctx: RunContext, boot: BootResult, judged: dict[str, Judged]) -> Trouble | None:
    run, cell = ctx.run, ctx.cell
    last = len(GUEST_STAGES) - 1
    if run.oopses:
        oops = run.oopses[0]
        stream = run.dump if run.dump is not None and oops in run.dump.oopses else run.console
        before = [r for r in stream.records if r.index < oops.index]
        at = stage_index(judge_records(replace(ctx, complete=False), before))
        stopped = ""
        if boot.end is BootEnd.PANIC and boot.panic_to_stop_s is not None:
            stopped = f" (stopped {boot.panic_to_stop_s:.1f} s after the panic reached the console)"
        return Trouble(
            last if at is None else at,
            Outcome.FAILED,
            f"kernel {oops.kind}: {oops.first[:160]}{stopped}",
            oops.text,
            "crashed",
        )
    if ctx.complete and (ctx.ended or not ctx.last):
        return None
    tail = "\n".join([*run.console.lines, *(run.dump.lines if run.dump else ())][-TAIL_LINES:])
    detail = f" ({boot.detail})" if boot.detail else ""
    at = stage_index(judged)
    if at is None or (at == last and past_rmmod(run)):
        # Every check concluded (or the driver's teardown lines are all there and the agent
        # had gone past rmmod, though its own report of it was lost), then the guest never
        # reached RIG-END: a teardown that wedges the CPU is the driver's.
        w = ctx.witness
        if ctx.last and w is not None and not w.ended:
            detail += f" (in the teardown witness, KVM's use of VMX after it: {w.lines[-1][:120]})"
        return after_teardown(boot, detail, tail, last)
    if boot.end is BootEnd.FLOOD:
        return Trouble(at, Outcome.ERROR, f"infrastructure: {boot.detail}", tail, "died")
    if boot.end is BootEnd.TIMEOUT:
        detail = detail or f" (timeout {cell.timeout_s} s)"
        reason = f"driver hang: the guest stopped before RIG-END{detail}"
        return Trouble(at, Outcome.FAILED, reason, tail, "hung")
    if boot.end is BootEnd.PANIC:
        return Trouble(at, Outcome.FAILED, f"guest kernel panicked{detail}", tail, "crashed")
    if boot.end is BootEnd.EMULATOR:
        if boot.triple_fault:
            return Trouble(at, Outcome.FAILED, f"guest triple-faulted{detail}", tail, "died")
        reason = f"the emulator stopped during the test{detail}"
        return Trouble(at, Outcome.ERROR, reason, tail, "died")
    reason = f"the console ended before RIG-END (guest output lost?){detail}"
    return Trouble(at, Outcome.ERROR, reason, tail, "died")


def after_teardown(boot: BootResult, detail: str, tail: str, at: int) -> Trouble:
    if boot.end is BootEnd.FLOOD:
        return Trouble(at, Outcome.ERROR, f"infrastructure: {boot.detail}", tail, "died")
    if boot.end is BootEnd.TIMEOUT:
        reason = f"guest hung after rmmod: no RIG-END after the driver's teardown{detail}"
        return Trouble(at, Outcome.FAILED, reason, tail, "hung")
    if boot.end is BootEnd.PANIC:
        return Trouble(at, Outcome.FAILED, f"guest panicked after rmmod{detail}", tail, "crashed")
    if boot.end is BootEnd.EMULATOR:
        if boot.triple_fault:
            return Trouble(at, Outcome.FAILED, f"guest triple-faulted after rmmod{detail}",
                            tail, "died")  # fmt: skip
        reason = f"the emulator stopped after rmmod, before RIG-END{detail}"
        return Trouble(at, Outcome.ERROR, reason, tail, "died")
    reason = f"the console ended before RIG-END (guest output lost?){detail}"
    return Trouble(at, Outcome.ERROR, reason, tail, "died")


def judge_run(
    cell: Cell,
    boot: BootResult,
    report: GuestReport,
    run: Run,
    arranged: Arranged = NOTHING_ARRANGED,
    unprinted: frozenset[str] = frozenset(),
) -> dict[str, StageVerdict]:
    model = report.cpu_model or cell.cpu_model or cell.cpu.name
    vmx_expected = report.vmx if report.vmx is not None else cell.lane.vmx
    if cell.lane.vmx and report.vmx is False:
        no_vmx_reason = f"guest CPU lacks VMX: {model}"
    else:
        no_vmx_reason = f"guest CPU has no VMX ({model})"
    complete = run.dump_complete or report.end
    last = run is report.runs[-1]
    ctx = RunContext(
        cell, run, vmx_expected, no_vmx_reason, complete, arranged, last=last, ended=report.end,
        witness=report.witness, beside=report.beside, unprinted=unprinted,
    )  # fmt: skip
    judged = judge_records(ctx, run.records)
    trouble = find_trouble(ctx, boot, judged)
    out: dict[str, StageVerdict] = {}
    for i, stage in enumerate(GUEST_STAGES):
        verdict = judged[stage]
        if trouble is not None and i == trouble.at:
            verdict = sv(stage, trouble.outcome, trouble.reason, trouble.evidence)
        elif trouble is not None and i > trouble.at:
            reason = f"not reached: the guest {trouble.word} during {GUEST_STAGES[trouble.at]}"
            verdict = sv(stage, trouble.outcome, reason, trouble.evidence)
        elif verdict is None:  # pragma: no cover - complete runs always conclude
            reason = "no conclusion could be drawn from the guest output"
            verdict = sv(stage, Outcome.ERROR, reason, report.tail())
        out[stage] = verdict
    out["teardown"] = with_pages(out["teardown"], run)
    return out


def with_pages(teardown: StageVerdict, run: Run) -> StageVerdict:
    """The allocation witness's word on a passing teardown (the guest kernel's kmem
    tracepoints, rig.guest.alloc): allocations the module still held after its rmmod fail it,
    whatever its `freed ok` said; a witness that could not run is said."""
    if teardown.outcome is not Outcome.PASSED:
        return teardown
    seen = parse_alloc(run.console.lines)
    freed = [r.number("pages") for r in run.records if r.stage == "freed" and r.result == "ok"]
    said = sum(n for n in freed if n is not None) if freed else None
    found = judge_pages(seen if seen.evidence else None, said, module=run.module or "the module")
    if found is None:
        return teardown
    if found.outcome is Outcome.FAILED:
        evidence = "\n".join([teardown.evidence, *found.evidence]).strip()
        return sv("teardown", Outcome.FAILED, found.reason, evidence)
    return replace(teardown, reason=f"{teardown.reason}; {found.reason}")


def judge_guest(
    cell: Cell,
    boot: BootResult,
    report: GuestReport,
    arranged: Arranged,
    unprinted: frozenset[str] = frozenset(),
) -> dict[str, StageVerdict]:
    if report.rebooted:
        reason = (
            "infrastructure: the guest started over during the test (a second RIG-BEGIN): "
            "what it printed belongs to two boots"
        )
        return all_stages(Outcome.ERROR, reason, report.tail(), GUEST_STAGES)
    if arranged.beside == "kvm":
        why = beside_setup_failure(report.beside)
        if why is not None:  # the arrangement failed: the run proves nothing about the driver
            return all_stages(Outcome.ERROR, why, report.tail(), GUEST_STAGES)
    if arranged.crash and (split := split_at_crash(report.lines)) is not None:
        # the first kernel's part is a finished run; its teardown is the crash kernel's word
        first = replace(read(parse_lines(split.before)), end=True)
        calm = replace(boot, end=BootEnd.POWEROFF, detail="", triple_fault=False)
        stages = judge_run(cell, calm, first, first.runs[-1], arranged)
        if stages["vmcall_exit"].outcome in (Outcome.PASSED, Outcome.SKIPPED):
            stages["teardown"] = crash_teardown(split, boot)
        return stages
    broken = [(m, rc) for m, rc in report.preloads if rc != 0]
    if broken:
        # A fixture of the test did not load: the run proves nothing about the driver.
        module, rc = broken[0]
        reason = f"infrastructure: the preloaded fixture module {module} did not load (rc={rc})"
        return all_stages(Outcome.ERROR, reason, report.tail(), GUEST_STAGES)
    if report.end and not report.steps and not report.records:
        reason = "the guest finished without running insmod"
        return all_stages(Outcome.ERROR, reason, report.tail(), GUEST_STAGES)
    per_run = [judge_run(cell, boot, report, run, arranged, unprinted) for run in report.runs]
    if len(per_run) == 1:
        return per_run[0]
    out: dict[str, StageVerdict] = {}
    for stage in GUEST_STAGES:
        worst = max(range(len(per_run)), key=lambda i: (SEVERITY[per_run[i][stage].outcome], -i))
        v = per_run[worst][stage]
        if v.outcome is Outcome.PASSED and all(r[stage].outcome is v.outcome for r in per_run):
            v = per_run[-1][stage]  # the last run's words: what came after the last rmmod too
            words = v.reason
            if stage == "vmcall_exit":  # the NMI/#MC exits of every run, not the last one's
                exits = [r for r in report.records if r.stage == "exit" and r.result == "ok"]
                words = exit_reason(exits)
            reason = f"{words} (all {len(per_run)} runs)"
        else:
            reason = f"run {report.runs[worst].number}: {v.reason}"
        out[stage] = sv(stage, v.outcome, reason, v.evidence)
    return out


def bounded_log(text: str, cap: int = TRANSCRIPT_CAP) -> str:
    """An emulator's log for verdict.json: its tail past `cap` characters."""
    return (
        text if len(text) <= cap else f"[rig: log cut to its last {cap} characters]\n" + text[-cap:]
    )


def judge(
    cell: Cell,
    build: ModuleBuild | None,
    boot: BootResult | None,
    arranged: Arranged = NOTHING_ARRANGED,
    profile: Profile = DEFAULT,
) -> CellVerdict:
    """One StageVerdict per stage in STAGES for this cell, knowing what the run arranged;
    the module's lines read by its profile (rig.verdict.profiles; ours by default)."""
    # what people read and what is judged: the agent's protocol and the kernel's lines, merged
    # once into one transcript
    merged = [] if boot is None else merge_channels(boot.agent, boot.console)
    transcript = "" if boot is None else bounded_text(merged)

    def verdict(stages: dict[str, StageVerdict]) -> CellVerdict:
        return CellVerdict(
            cell_id=cell.id,
            # the guest's words (a panic line, an emulator's detail) never go on raw
            stages={
                s: replace(
                    stages[s], reason=shown(stages[s].reason), evidence=shown(stages[s].evidence)
                )
                for s in STAGES
            },
            console=transcript,
            build_log=shown(build.log) if build is not None else "",
            emulator_log=bounded_log(boot.emulator_log) if boot is not None else "",
            timings={"boot": boot.duration_s} if boot is not None else {},
            restored=boot.restored if boot is not None else "",
            emulator=boot.emulator if boot is not None else "",
        )

    if cell.skip_reason:
        return verdict(all_stages(Outcome.SKIPPED, cell.skip_reason))
    stages = {"build": build_verdict(build, profile)}
    if build is None:
        stages.update(
            all_stages(Outcome.ERROR, "not reached: no module was built", stages=GUEST_STAGES)
        )
    elif not build.ok:
        stages.update(
            all_stages(
                Outcome.SKIPPED, "not reached: the module did not build", stages=GUEST_STAGES
            )
        )
    elif boot is None:
        stages.update(all_stages(Outcome.ERROR, "the guest was not booted", stages=GUEST_STAGES))
    else:
        report = reread(read(parse_lines(merged)), profile)
        if not report.begin:
            detail = boot.detail or f"boot ended: {boot.end.value}"
            stages.update(
                all_stages(
                    Outcome.ERROR,
                    f"the guest never reached the test (no RIG-BEGIN): {detail}",
                    report.tail(),
                    GUEST_STAGES,
                )
            )
        else:
            guest = judge_guest(cell, boot, report, arranged, frozenset(profile.unprinted))
            stages.update(settle(guest, report, profile, boot.beneath))
            stages = with_beneath(stages, report.records, boot.beneath, cell.lane.vmx)
    return verdict(stages)
