"""The CPU beneath as witness: the driver's word for VMXON, the VM entry, the exit reason and
VMXOFF, compared with what the emulator or hypervisor under the guest saw.

    with_beneath(stages, records, beneath, lane_vmx) -> stages   each VMX stage confirmed,
                                                                  contradicted, or said unwitnessed

A lane reports the facts (rig.model.Beneath: Bochs' own log on the bochs lane, KVM's trace in
L1 on the nested lanes); the rule is here. A stage the driver passed passes only when the
witness agrees; when they disagree it FAILS with both sides in the reason. A stage with no
witness on its lane says so. The witness never passes a stage the driver's own lines failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rig.model import Beneath, Outcome, StageVerdict, VmxEvent
from rig.verdict.grammar import DriverRecord
from rig.verdict.sdm import decode_exit_reason

WITNESSED = ("vmxon", "vmlaunch", "vmcall_exit", "teardown")
NEEDS = {  # the event kinds a witness must be able to see to speak to a stage
    "vmxon": ("vmxon", "VMXON"),
    "vmlaunch": ("vmlaunch", "VMLAUNCH"),
    "vmcall_exit": ("exit", "VM exits"),
    "teardown": ("vmxoff", "VMXOFF"),
}


def drivers_part(events: Sequence[VmxEvent], records: Sequence[DriverRecord]) -> list[VmxEvent]:
    """The events of the driver's own VMX use: everything before the first event naming a VMCS
    the driver never loaded (`vmptrld ok vmcs=`), which is another's (the teardown witness's
    KVM, after the last rmmod), or before the VMXON that began it. A driver that names no VMCS:
    all of them (a page the driver freed and KVM reused would look like the driver's)."""
    ptrs = set()
    for r in records:
        if r.stage == "vmptrld" and r.result == "ok" and (n := r.number("vmcs")) is not None:
            ptrs.add(n)
    if not ptrs:
        return list(events)
    theirs = next((i for i, e in enumerate(events) if e.vmcs is not None and e.vmcs not in ptrs),
                  None)  # fmt: skip
    if theirs is None:
        return list(events)
    # their VMXON, VMPTRLD and VMLAUNCH come before the first event that names their VMCS
    # (L1's KVM sees L2's kvm_intel enter VMX operation, then launch): cut at that VMXON
    start = next((i for i in range(theirs - 1, -1, -1) if events[i].kind == "vmxon"), None)
    if start is not None and not any(e.vmcs in ptrs for e in events[start:theirs]):
        return list(events[:start])
    return list(events[:theirs])


def _ok(records: Sequence[DriverRecord], stage: str) -> list[DriverRecord]:
    return [r for r in records if r.stage == stage and r.result == "ok"]


def _exit_word(reason: int) -> str:
    """`10 (CPUID)`, from the SDM's table."""
    return decode_exit_reason(reason).removeprefix("exit reason ")


def _seen(events: Sequence[VmxEvent], kind: str) -> list[VmxEvent]:
    return [e for e in events if e.kind == kind]


def disagreement(
    stage: str, records: Sequence[DriverRecord], ev: Sequence[VmxEvent], source: str
) -> str | None:
    """Why the witness (`ev`: its events of the driver's part) contradicts the driver's
    passing `stage` (None: it agrees)."""
    who = f"the CPU beneath ({source})"
    if stage == "vmxon":
        said = len(_ok(records, "vmxon"))
        seen = len(_seen(ev, "vmxon"))
        if said and seen < said:
            return f"the driver reports {said} VMXON ok, {who} saw {seen} VMXON"
    elif stage == "vmlaunch":
        said = len(_ok(records, "vmlaunch"))
        launches = [i for i, e in enumerate(ev) if e.kind == "vmlaunch"]
        entered = [i for i in launches if any(e.kind == "exit" for e in ev[i + 1 :])]
        if said and not launches:
            return f"the driver reports vmlaunch ok, {who} saw no VMLAUNCH"
        if said and len(entered) < said:
            failed = next((e for e in ev if e.kind in ("vmfail", "entry_fail")), None)
            why = f": {failed.said}" if failed is not None else ""
            return (
                f"the driver reports {said} VM entr{'y' if said == 1 else 'ies'} by VMLAUNCH, "
                f"{who} saw {len(entered)} followed by a VM exit{why}"
            )
    elif stage == "vmcall_exit":
        claimed = [r.number("reason") for r in _ok(records, "exit")]
        groups = _launch_exits(ev)
        for i, reason in enumerate(claimed):
            if reason is None:
                continue
            if i >= len(groups) or not groups[i]:
                return (
                    f"the driver reports exit reason {hex(reason)}, {who} saw no VM exit "
                    "after that VMLAUNCH"
                )
            reasons = [e.reason for e in groups[i] if e.reason is not None]
            if reasons and reason & 0xFFFF not in reasons:  # NMI/#MC exits on the way are fine
                return (
                    f"the driver reports exit reason {hex(reason)}, {who} saw exit "
                    f"{_exit_word(reasons[-1])}"
                )
    elif stage == "teardown":
        said = len(_ok(records, "vmxoff"))
        seen = len(_seen(ev, "vmxoff"))
        if said and seen < said:
            return f"the driver reports {said} VMXOFF ok, {who} saw {seen} VMXOFF"
    return None


def _launch_exits(events: Sequence[VmxEvent]) -> list[list[VmxEvent]]:
    """The VM exits of each VMLAUNCH, up to the next one (its VMRESUMEs' too: the NMIs and
    machine checks the driver handled, its round trips); the driver's `exit ok reason=` is
    the exit it stopped at."""
    out: list[list[VmxEvent]] = []
    for e in events:
        if e.kind == "vmlaunch":
            out.append([])
        elif e.kind == "exit" and out:
            out[-1].append(e)
    return out


def agreement(stage: str, ev: Sequence[VmxEvent], source: str) -> str:
    """What the witness saw for a stage it confirms, for the passing reason."""
    if stage == "vmxon":
        return f"{source} saw VMXON"
    if stage == "vmlaunch":
        return f"{source} saw VMLAUNCH enter the guest"
    if stage == "vmcall_exit":
        exits = next(iter(_launch_exits(ev)), [])
        if exits and exits[-1].reason is not None:
            return f"{source} saw exit {_exit_word(exits[-1].reason)}"
        return f"{source} saw the exit"
    return f"{source} saw VMXOFF"


def with_beneath(
    stages: dict[str, StageVerdict],
    records: Sequence[DriverRecord],
    beneath: Beneath | None,
    lane_vmx: bool,
) -> dict[str, StageVerdict]:
    """The VMX stages with the witness's word added (FAILED where it contradicts the driver)."""
    out = dict(stages)
    ev = drivers_part(beneath.events, records) if beneath is not None else []
    for stage in WITNESSED:
        v = out.get(stage)
        if v is None or v.outcome is not Outcome.PASSED or not lane_vmx:
            continue
        if beneath is None:
            why = f"{v.reason} (no witness beneath on this lane)"
            out[stage] = replace(v, reason=why, witness="none")
            continue
        who = beneath.source
        kind, words = NEEDS[stage]
        if kind not in beneath.sees:
            out[stage] = replace(v, reason=f"{v.reason} ({who} does not show {words})",
                                 witness="none")  # fmt: skip
            continue
        if not beneath.events and not beneath.complete:
            note = beneath.note or "its record was lost"
            out[stage] = replace(v, reason=f"{v.reason} ({who}'s witness: {note})", witness="none")
            continue
        against = disagreement(stage, records, ev, who)
        if against is None:
            out[stage] = replace(v, reason=f"{v.reason}; {agreement(stage, ev, who)}", witness=who)
            continue
        if not beneath.complete:  # a cut record cannot prove an absence
            note = beneath.note or "cut short"
            out[stage] = replace(v, reason=f"{v.reason} ({who}'s witness {note})", witness="none")
            continue
        said = "\n".join(e.said for e in beneath.events[:20])
        evidence = f"{v.evidence}\n{said}".strip()
        out[stage] = StageVerdict(stage, Outcome.FAILED, against, evidence, witness=who)
    return out
