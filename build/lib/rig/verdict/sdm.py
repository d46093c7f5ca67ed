"""SDM tables (Intel SDM Vol. 3C): VM-instruction errors and basic exit reasons, decoded."""

from __future__ import annotations

VMCALL_REASON = 0x12


VM_INSTRUCTION_ERRORS: dict[int, str] = {
    1: "VMCALL executed in VMX root operation",
    2: "VMCLEAR with invalid physical address",
    3: "VMCLEAR with VMXON pointer",
    4: "VMLAUNCH with non-clear VMCS",
    5: "VMRESUME with non-launched VMCS",
    6: "VMRESUME after VMXOFF",
    7: "VM entry with invalid control field(s)",
    8: "VM entry with invalid host-state field(s)",
    9: "VMPTRLD with invalid physical address",
    10: "VMPTRLD with VMXON pointer",
    11: "VMPTRLD with incorrect VMCS revision identifier",
    12: "VMREAD/VMWRITE from/to unsupported VMCS component",
    13: "VMWRITE to read-only VMCS component",
    15: "VMXON executed in VMX root operation",
    16: "VM entry with invalid executive-VMCS pointer",
    17: "VM entry with non-launched executive VMCS",
    18: "VM entry with executive-VMCS pointer not VMXON pointer",
    19: "VMCALL with non-clear VMCS",
    20: "VMCALL with invalid VM-exit control fields",
    22: "VMCALL with incorrect MSEG revision identifier",
    23: "VMXOFF under dual-monitor treatment of SMIs and SMM",
    24: "VMCALL with invalid SMM-monitor features",
    25: "VM entry with invalid VM-execution control fields in executive VMCS",
    26: "VM entry with events blocked by MOV SS",
    28: "invalid operand to INVEPT/INVVPID",
}


EXIT_REASONS: dict[int, str] = {
    0: "exception or NMI",
    1: "external interrupt",
    2: "triple fault",
    3: "INIT signal",
    7: "interrupt window",
    8: "NMI window",
    9: "task switch",
    10: "CPUID",
    12: "HLT",
    18: "VMCALL",
    28: "control-register access",
    30: "I/O instruction",
    31: "RDMSR",
    32: "WRMSR",
    33: "invalid guest state",
    34: "MSR loading",
    41: "machine-check event",
    48: "EPT violation",
    49: "EPT misconfiguration",
}


ENTRY_FAILURE_BIT = 1 << 31


def hex_or_q(value: int | None) -> str:
    return "?" if value is None else f"0x{value:x}"


def decode_exit_reason(reason: int) -> str:
    basic = reason & 0xFFFF
    name = EXIT_REASONS.get(basic, "unknown")
    prefix = "VM-entry failure, " if reason & ENTRY_FAILURE_BIT else ""
    return f"{prefix}exit reason {basic} ({name})"
