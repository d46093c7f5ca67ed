"""The nested lanes' witness beneath the guest: KVM in L1, which runs L2 (the cell's guest)
and so handles every VMX instruction L2's driver executes and every exit of L2's own guest
(L3), traces them. L1's init (guests/nested/init) streams those tracepoints live on its ttyS3
(Bochs com4, `l1-trace.txt` in the cell dir); this module turns the text into facts
(rig.model.Beneath), in the order KVM saw them. It judges nothing.

The lines, as seen on 6.12 (tracefs with `options/context-info` off: no task, CPU or
timestamp prefix; a prefix, where present, is skipped):

    tracing_mark_write: rig-l1 trace begin cap=1500 kernel=6.12.117+deb13-amd64
    kvm_exit: vcpu 0 reason VMON rip 0xffffffffc02ed014 info1 0x0000000000000000 info2 ...
    kvm_nested_vmenter: rip: 0xffffffffc02ed1df vmcs: 0x0000000002168000 nested_rip: ...
    kvm_nested_vmexit_inject: reason: VMCALL ext_inf1: 0x0000000000000000 ext_inf2: ...
    kvm_nested_vmenter_failed: !!(vmcs12->vm_exit_controls & VM_EXIT_HOST_ADDR_SPACE_SIZE) != ...
    tracing_mark_write: rig-l1 summarized 9980 VMRESUME round trips after the first 20 of a
        VMLAUNCH, exits: VMCALL=9980            (one line: L1 counts long round-trip loops)
    tracing_mark_write: rig-l1 trace end

`kvm_exit` is an exit of L2 to KVM (L1 filters it to the VMX instructions of INSTRUCTIONS):
the instruction was executed, not that it succeeded. `kvm_nested_vmenter` is KVM entering
L2's guest for L2 (an `entry`); its `vmcs:` (L2's current VMCS: the address the driver's
`vmptrld ok vmcs=` names) is the `vmcs` of the entry and of the VMLAUNCH or VMRESUME it
follows. `kvm_nested_vmexit_inject` is an exit of L3 that KVM reflects to L2: the exit L2's
driver reads from its VMCS (an `exit`; an `entry_fail` when the reason's name is followed by
FAILED_VMENTRY, bit 31: `reason: INVALID_STATE FAILED_VMENTRY ...`).
`kvm_nested_vmenter_failed` names a VM-entry check KVM found failed: a `vmfail`, unless an
`entry_fail` follows it (guest-state checks end as an exit, not as a VMfail). KVM's trace
does not give the VM-instruction error number: a vmfail's reason is None. An exit line cut
before its reason ended (the trace's last, when L1 stopped) gives no event: it could be an
entry failure.

The round trips L1 summarized are no events: the summary is said in the note (the record is
still whole: nothing happened that it does not account for).
"""

from __future__ import annotations

import re
from dataclasses import replace

from rig.model import Beneath, VmxEvent

SOURCE = "KVM in L1"
BEGIN = "rig-l1 trace begin"
END = "rig-l1 trace end"
FAILED_VMENTRY = 0x80000000

# Linux's VMX_EXIT_REASONS names (arch/x86/include/uapi/asm/vmx.h), as __print_symbolic
# prints them; VMXOFF and VMXON are spelled VMOFF and VMON there.
EXIT_NAMES: dict[str, int] = {
    "EXCEPTION_NMI": 0, "EXTERNAL_INTERRUPT": 1, "TRIPLE_FAULT": 2, "INIT_SIGNAL": 3,
    "SIPI_SIGNAL": 4, "INTERRUPT_WINDOW": 7, "NMI_WINDOW": 8, "TASK_SWITCH": 9, "CPUID": 10,
    "HLT": 12, "INVD": 13, "INVLPG": 14, "RDPMC": 15, "RDTSC": 16, "VMCALL": 18,
    "VMCLEAR": 19, "VMLAUNCH": 20, "VMPTRLD": 21, "VMPTRST": 22, "VMREAD": 23,
    "VMRESUME": 24, "VMWRITE": 25, "VMOFF": 26, "VMXOFF": 26, "VMON": 27, "VMXON": 27,
    "CR_ACCESS": 28, "DR_ACCESS": 29, "IO_INSTRUCTION": 30, "MSR_READ": 31, "MSR_WRITE": 32,
    "INVALID_STATE": 33, "MSR_LOAD_FAIL": 34, "MWAIT_INSTRUCTION": 36,
    "MONITOR_TRAP_FLAG": 37, "MONITOR_INSTRUCTION": 39, "PAUSE_INSTRUCTION": 40,
    "MCE_DURING_VMENTRY": 41, "TPR_BELOW_THRESHOLD": 43, "APIC_ACCESS": 44,
    "EOI_INDUCED": 45, "GDTR_IDTR": 46, "LDTR_TR": 47, "EPT_VIOLATION": 48,
    "EPT_MISCONFIG": 49, "INVEPT": 50, "RDTSCP": 51, "PREEMPTION_TIMER": 52, "INVVPID": 53,
    "WBINVD": 54, "XSETBV": 55, "APIC_WRITE": 56, "RDRAND": 57, "INVPCID": 58, "VMFUNC": 59,
    "ENCLS": 60, "RDSEED": 61, "PML_FULL": 62, "XSAVES": 63, "XRSTORS": 64, "UMWAIT": 67,
    "TPAUSE": 68, "BUS_LOCK": 74, "NOTIFY": 75,
}  # fmt: skip

# kvm_exit reasons that are L2's own VMX instructions -> VmxEvent kinds
INSTRUCTIONS: dict[int, str] = {
    27: "vmxon", 26: "vmxoff", 19: "vmclear", 21: "vmptrld", 20: "vmlaunch", 24: "vmresume",
}  # fmt: skip

_EVENT_RE = re.compile(r"\b(kvm_exit|kvm_nested_vmexit_inject|kvm_nested_vmenter_failed"
                       r"|kvm_nested_vmenter|tracing_mark_write): ?(.*)$")  # fmt: skip
_EXIT_REASON_RE = re.compile(r"\breason ([A-Z_ ]*?|0x[0-9a-f]+) rip ")
_INJECT_REASON_RE = re.compile(r"\breason: ([A-Z_ ]*?|0x[0-9a-f]+) ext_inf1")
_LOST_RE = re.compile(r"\[LOST (\d+) EVENTS\]")
SUMMARIZED = "rig-l1 summarized "
_VMCS_RE = re.compile(r"\bvmcs: 0x([0-9a-f]+)\b")


def exit_reason(words: str) -> int | None:
    """The basic reason's name, then its flags (kvm_print_exit_reason): `VMCALL` -> 18,
    `INVALID_STATE FAILED_VMENTRY` -> 0x80000021, `0x4b` -> 75 (a number Linux has no name
    for); None for a name this table does not know."""
    parts = words.split()
    names = [w for w in parts if w != "FAILED_VMENTRY"]
    if len(names) != 1:
        return None
    name = names[0]
    if re.fullmatch(r"0x[0-9a-f]+", name):
        basic = int(name, 16) & 0xFFFF
    elif name in EXIT_NAMES:
        basic = EXIT_NAMES[name]
    else:
        return None
    return basic | (FAILED_VMENTRY if "FAILED_VMENTRY" in parts else 0)


def _event(name: str, rest: str, line: str) -> VmxEvent | None:
    if name == "kvm_exit":
        m = _EXIT_REASON_RE.search(rest)
        reason = exit_reason(m[1]) if m else None
        kind = INSTRUCTIONS.get(reason) if reason is not None else None
        return VmxEvent(kind=kind, said=line) if kind else None
    if name == "kvm_nested_vmenter":
        m = _VMCS_RE.search(rest)
        return VmxEvent(kind="entry", said=line, vmcs=int(m[1], 16) if m else None)
    if name == "kvm_nested_vmenter_failed":
        return VmxEvent(kind="vmfail", reason=None, said=line)
    if name == "kvm_nested_vmexit_inject":
        m = _INJECT_REASON_RE.search(rest)
        if m is None:  # cut before its reason ended: an exit or an entry failure, unknown
            return None
        reason = exit_reason(m[1])
        if reason is None:  # a reason this table has no name for
            return VmxEvent(kind="exit", reason=None, said=line)
        if reason & FAILED_VMENTRY:
            return VmxEvent(kind="entry_fail", reason=reason & 0xFFFF, said=line)
        return VmxEvent(kind="exit", reason=reason & 0xFFFF, said=line)
    return None


def _fold_failed_checks(events: list[VmxEvent]) -> list[VmxEvent]:
    """A failed check followed by an entry failure (before L2's next VMX instruction) is that
    entry failure, not a VMfail: only the entry_fail stays."""
    out: list[VmxEvent] = []
    for ev in events:
        if ev.kind == "entry_fail":
            while out and out[-1].kind == "vmfail":
                out.pop()
        out.append(ev)
    return out


def beneath_from_l1_trace(text: str) -> Beneath:
    """The facts of L1's trace (`l1-trace.txt`): VmxEvents in KVM's order, and whether the
    record is whole (its begin and end markers seen, nothing lost)."""
    events: list[VmxEvent] = []
    begun = ended = False
    lost = 0
    summaries: list[str] = []
    for raw in text.splitlines():
        line = raw.strip().replace("\x00", "")
        if (m := _LOST_RE.search(line)) is not None:
            lost += int(m[1])
            continue
        m = _EVENT_RE.search(line)
        if m is None:
            continue
        name, rest = m[1], m[2]
        if name == "tracing_mark_write":
            if rest.startswith(SUMMARIZED) and begun and not ended:
                summaries.append("L1 " + rest.removeprefix("rig-l1 "))
            begun = begun or rest.startswith(BEGIN)
            ended = ended or (begun and rest.startswith(END))
            continue
        if ended:
            continue
        ev = _event(name, rest, line)
        if ev is None:
            continue
        prev = events[-1] if events else None
        if ev.kind == "entry" and prev is not None and prev.kind in ("vmlaunch", "vmresume"):
            events[-1] = replace(prev, vmcs=ev.vmcs)  # the VMCS that instruction entered
        events.append(ev)
    notes = []
    if not text.strip():
        notes.append("L1 streamed no trace (its KVM tracepoints were not read)")
    elif not begun:
        notes.append("L1's trace has no begin marker: its start was lost")
    if text.strip() and not ended:
        notes.append(
            "L1's trace stops before its end marker (cut at L1's line cap, or L1 stopped): "
            "what L2 did after its last line was not seen"
        )
    if lost:
        notes.append(f"KVM's trace buffer lost {lost} events")
    return Beneath(
        source=SOURCE,
        events=tuple(_fold_failed_checks(events)),
        complete=not notes,
        note="; ".join(notes + summaries),
    )
