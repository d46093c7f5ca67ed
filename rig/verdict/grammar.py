"""The driver's dmesg line grammar (docs/contract.md section 1) and its decoding.

vmlaunch: cpu=<N|-> <stage> <result>[ <key>=<value>]*[ -- <free text>]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rig.verdict.sdm import ENTRY_FAILURE_BIT, VM_INSTRUCTION_ERRORS, decode_exit_reason

DRIVER_RE = re.compile(
    r"vmlaunch: cpu=(?P<cpu>\d{1,5}|-) (?P<stage>[a-z][a-z0-9_]{0,31}) "
    r"(?P<result>ok|FAIL|declined|info)"
    r"(?P<kv>(?: [A-Za-z_][A-Za-z0-9_.]{0,63}=\S+)*)"
    r"(?: -- (?P<text>.*))?\s*$"  # greedy: linear on a long line (no lazy `.*?\s*$`)
)


LINE_PREFIX_RE = re.compile(r"\s*(?:<\d>)?\s*(?:\[\s*\d+\.\d+\]\s*)?")
KV_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_.]{0,63})=(\S+)")


@dataclass(frozen=True)
class DriverRecord:
    """One `vmlaunch: cpu=...` line (docs/contract.md section 1)."""

    cpu: int | None
    stage: str
    result: str
    kv: tuple[tuple[str, str], ...] = ()
    text: str = ""
    raw: str = ""  # the whole guest line, as printed
    index: int = -1  # line number within its stream (console or dmesg dump)

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.kv:
            if k == key:
                return v
        return default

    def number(self, key: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            return int(value, 0) if len(value) <= 24 else None
        except ValueError:
            return None

    def render(self) -> str:
        """The line as the driver prints it (without any dmesg timestamp)."""
        cpu = "-" if self.cpu is None else str(self.cpu)
        line = f"vmlaunch: cpu={cpu} {self.stage} {self.result}"
        line += "".join(f" {k}={v}" for k, v in self.kv)
        if self.text:
            line += f" -- {self.text}"
        return line


def parse_driver_line(line: str, index: int = -1) -> DriverRecord | None:
    """Parse one line that is a driver record (after an optional `<level>` and `[time]`), or
    None. A record with anything else in front of it (a line spliced onto another) is not
    evidence: what stood before it may have eaten its start."""
    start = line.find("vmlaunch: cpu=")
    if start < 0 or not LINE_PREFIX_RE.fullmatch(line, 0, start):
        return None
    m = DRIVER_RE.match(line, start)
    if m is None:
        return None
    cpu = None if m["cpu"] == "-" else int(m["cpu"])
    kv = tuple((k, v) for k, v in KV_RE.findall(m["kv"]))
    return DriverRecord(
        cpu=cpu,
        stage=m["stage"],
        result=m["result"],
        kv=kv,
        text=(m["text"] or "").rstrip(),
        raw=line.rstrip(),
        index=index,
    )


DECLINES: dict[str, str] = {
    "no_vmx": "the CPU has no VMX",
    "vmx_disabled_by_bios": "VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked)",
    "vmx_busy": "VMX is already in use by another hypervisor (CR4.VMXE set)",
    "vmx_disabled_by_kernel": "the guest kernel turned VMX off (X86_FEATURE_VMX cleared)",
    "vmx_disabled_in_smx": "VMX is not enabled inside SMX (CR4.SMXE set, TXT)",
    "fred_enabled": "FRED is on: the driver's NMI and #MC re-delivery needs the IDT",
    "host_fs_gs_selector": "the host's FS/GS selectors are not null",
}


KERNEL_FLAG_OFF = ("vmx_disabled_by_bios", "vmx_disabled_by_kernel")
"""Declines that explain a guest kernel without the vmx flag on a CPU whose CPUID has VMX."""


STAGE_OF: dict[str, str] = {
    "load": "vmxon",
    "check": "vmxon",
    "alloc": "vmxon",
    "vmxon": "vmxon",
    "vmclear": "vmlaunch",
    "vmptrld": "vmlaunch",
    "vmcs": "vmlaunch",
    "vmlaunch": "vmlaunch",
    "exit": "vmcall_exit",
    "vmxoff": "teardown",
    "freed": "teardown",
    "unload": "teardown",
}
"""Which verdict stage each driver stage belongs to (`status` lines belong to none)."""


def split_attempts(records: Sequence[DriverRecord]) -> tuple[tuple[DriverRecord, ...], ...]:
    """Split driver records into load attempts (each begins with a `load` line)."""
    attempts: list[list[DriverRecord]] = []
    for rec in records:
        if rec.stage == "load" or not attempts:
            attempts.append([])
        attempts[-1].append(rec)
    return tuple(tuple(a) for a in attempts)


def decode_failure(rec: DriverRecord) -> str:
    """A short sentence for a FAIL or declined line."""
    if rec.result == "declined":
        why = rec.get("why", "?") or "?"
        return f"declined: {DECLINES.get(why, why)}" + errno_note(rec)
    kind = rec.get("kind")
    error = rec.number("error")
    reason = rec.number("reason")
    if kind == "VMfailValid" or error is not None:
        name = VM_INSTRUCTION_ERRORS.get(error or -1, "unknown error")
        return f"{rec.stage} VMfailValid: VM-instruction error {error} ({name})" + errno_note(rec)
    if kind == "VMfailInvalid":
        return f"{rec.stage} VMfailInvalid (no valid current VMCS / bad pointer)" + errno_note(rec)
    if reason is not None:
        return f"{rec.stage} FAIL: {decode_exit_reason(reason)}" + errno_note(rec)
    text = f": {rec.text}" if rec.text else ""
    return f"{rec.stage} FAIL{text}" + errno_note(rec)


def errno_note(rec: DriverRecord) -> str:
    errno = rec.get("errno")
    return f" (errno {errno})" if errno else ""


def is_entry_failure(rec: DriverRecord) -> bool:
    if rec.stage != "exit" or rec.result != "FAIL":
        return False
    reason = rec.number("reason")
    basic = rec.number("basic")
    return (reason is not None and bool(reason & ENTRY_FAILURE_BIT)) or basic in (33, 34, 41)
