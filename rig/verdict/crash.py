"""The crash-path run's rule (--crash): with the driver loaded, `echo c > /proc/sysrq-trigger`
must end in the kdump kernel, booted, with the first kernel's memory image in /proc/vmcore.

The kernel's crash path stops the other CPUs and jumps through relocate_kernel, which clears
CR4.VMXE: in VMX operation that is a #GP, so a CPU still in VMX operation kills the jump. The
kernel leaves VMX itself on the way only where it knows how: on 5.10, 6.1 and 7.x for any VMX
user, from 6.6 through 7.1 only through the callback KVM registers. The driver's own load line
says which (`hold=`, `emergency=`). The agent's lines: docs/contract.md section 2 (RIG-CRASH).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rig.guest.protocol import is_record
from rig.model import BootEnd, BootResult, Outcome, StageVerdict
from rig.verdict.grammar import parse_driver_line
from rig.verdict.oops import find_oopses, kernel_message

CRASH_MARK_RE = re.compile(r"rig: run=\d{1,6} step=crash\b")
TRIGGER = "RIG-CRASH trigger"
LOAD_RE = re.compile(r"\s*RIG-CRASH load rc=(?P<rc>\d{1,3})\b\s*(?P<said>.*)")
UP_RE = re.compile(r"\s*RIG-CRASH up kernel=(?P<kernel>\S*) vmcore=(?P<vmcore>\S+)\s*")


@dataclass(frozen=True)
class CrashSplit:
    before: tuple[str, ...]  # the first kernel's test, up to the crash
    after: tuple[str, ...]  # the crash, the crash kernel's boot and its word


def split_at_crash(lines: Sequence[str]) -> CrashSplit | None:
    """Where the agent crashed the guest (its trigger line, else the kernel's marker)."""
    at = next((i for i, ln in enumerate(lines) if is_record(ln) and ln.strip() == TRIGGER), None)
    if at is None:
        at = next((i for i, ln in enumerate(lines) if CRASH_MARK_RE.search(ln)), None)
    if at is None:
        return None
    return CrashSplit(tuple(lines[: at + 1]), tuple(lines[at + 1 :]))


def _mode(before: Sequence[str]) -> str:
    load = next((r for ln in before if (r := parse_driver_line(ln, 0)) and r.stage == "load"),
                None)  # fmt: skip
    if load is None:
        return "the driver's mode unknown"
    return f"hold={load.get('hold', '?')}, emergency={load.get('emergency', '?')}"


def crash_teardown(split: CrashSplit, boot: BootResult) -> StageVerdict:
    """The teardown stage of a crash run: did the crash kernel come up with a vmcore?"""
    loads = [m for ln in split.before if is_record(ln) and (m := LOAD_RE.match(ln))]
    mode = _mode(split.before)
    if loads and loads[0]["rc"] != "0":
        return StageVerdict(
            "teardown", Outcome.ERROR,
            f"infrastructure: kexec -p did not load the crash kernel: {loads[0]['said'].strip()}",
            loads[0].string,
        )  # fmt: skip
    up = next((m for ln in split.after if is_record(ln) and (m := UP_RE.fullmatch(ln))), None)
    if up is not None and up["vmcore"].isdigit() and int(up["vmcore"]) > 0:
        mib = int(up["vmcore"]) / 2**20
        return StageVerdict(
            "teardown", Outcome.PASSED,
            f"after sysrq c with the driver loaded ({mode}) the crash kernel booted and found "
            f"a vmcore of {mib:.0f} MiB",
            up.string,
        )  # fmt: skip
    if up is not None:
        return StageVerdict(
            "teardown", Outcome.FAILED,
            f"the crash kernel booted ({mode}) but found no /proc/vmcore", up.string,
        )  # fmt: skip
    if any(is_record(ln) and ln.lstrip().startswith("RIG-BEGIN") for ln in split.after):
        why = "the machine started over instead of booting the crash kernel"
    elif boot.end is BootEnd.EMULATOR and boot.triple_fault:
        why = "the guest triple-faulted instead of booting the crash kernel"
    else:
        why = f"the crash kernel never came up ({boot.detail or boot.end.value})"
    oopses = find_oopses(split.after, 0)
    seen = [o.first for o in oopses if "sysrq triggered crash" not in o.first][:2]
    evidence = "\n".join([*seen, *split.after[-15:]])
    return StageVerdict(
        "teardown", Outcome.FAILED,
        f"after sysrq c with the driver loaded ({mode}) {why}"
        + (f": {kernel_message(seen[0])[:140]}" if seen else ""),
        evidence,
    )  # fmt: skip
