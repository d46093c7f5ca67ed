// SPDX-License-Identifier: GPL-2.0
/*
 * Bottom layer: SDM decode tables: VM-instruction error numbers (SDM Vol. 3C, "VM-Instruction
 * Error Numbers"), basic exit reasons (SDM Vol. 3D, appendix C) and the
 * names of the VMCS fields this module writes.
 */
#include <linux/kernel.h>

#include "vmx_errors.h"
#include "vmx_sdm.h"

static const char *const insn_errors[] = {
	[1]  = "VMCALL executed in VMX root operation",
	[2]  = "VMCLEAR with invalid physical address",
	[3]  = "VMCLEAR with VMXON pointer",
	[4]  = "VMLAUNCH with non-clear VMCS",
	[5]  = "VMRESUME with non-launched VMCS",
	[6]  = "VMRESUME after VMXOFF",
	[7]  = "VM entry with invalid control field(s)",
	[8]  = "VM entry with invalid host-state field(s)",
	[9]  = "VMPTRLD with invalid physical address",
	[10] = "VMPTRLD with VMXON pointer",
	[11] = "VMPTRLD with incorrect VMCS revision identifier",
	[12] = "VMREAD/VMWRITE from/to unsupported VMCS component",
	[13] = "VMWRITE to read-only VMCS component",
	[14] = "reserved",
	[15] = "VMXON executed in VMX root operation",
	[16] = "VM entry with invalid executive-VMCS pointer",
	[17] = "VM entry with non-launched executive VMCS",
	[18] = "VM entry with executive-VMCS pointer not VMXON pointer",
	[19] = "VMCALL with non-clear VMCS",
	[20] = "VMCALL with invalid VM-exit control fields",
	[21] = "reserved",
	[22] = "VMCALL with incorrect MSEG revision identifier",
	[23] = "VMXOFF under dual-monitor treatment of SMIs and SMM",
	[24] = "VMCALL with invalid SMM-monitor features",
	[25] = "VM entry with invalid VM-execution control fields in executive VMCS",
	[26] = "VM entry with events blocked by MOV SS",
	[27] = "reserved",
	[28] = "invalid operand to INVEPT/INVVPID",
};

const char *vml_insn_error_name(u32 error)
{
	if (error < ARRAY_SIZE(insn_errors) && insn_errors[error])
		return insn_errors[error];
	return "unknown VM-instruction error";
}

static const char *const exit_reasons[] = {
	[0]  = "exception or non-maskable interrupt (NMI)",
	[1]  = "external interrupt",
	[2]  = "triple fault",
	[3]  = "INIT signal",
	[4]  = "start-up IPI (SIPI)",
	[5]  = "I/O system-management interrupt (SMI)",
	[6]  = "other SMI",
	[7]  = "interrupt window",
	[8]  = "NMI window",
	[9]  = "task switch",
	[10] = "CPUID",
	[11] = "GETSEC",
	[12] = "HLT",
	[13] = "INVD",
	[14] = "INVLPG",
	[15] = "RDPMC",
	[16] = "RDTSC",
	[17] = "RSM",
	[18] = "VMCALL",
	[19] = "VMCLEAR",
	[20] = "VMLAUNCH",
	[21] = "VMPTRLD",
	[22] = "VMPTRST",
	[23] = "VMREAD",
	[24] = "VMRESUME",
	[25] = "VMWRITE",
	[26] = "VMXOFF",
	[27] = "VMXON",
	[28] = "control-register access",
	[29] = "MOV DR",
	[30] = "I/O instruction",
	[31] = "RDMSR",
	[32] = "WRMSR",
	[33] = "invalid guest state",
	[34] = "MSR loading",
	[36] = "MWAIT",
	[37] = "monitor trap flag",
	[39] = "MONITOR",
	[40] = "PAUSE",
	[41] = "VM-entry failure due to machine-check event",
	[43] = "TPR below threshold",
	[44] = "APIC access",
	[45] = "virtualized EOI",
	[46] = "access to GDTR or IDTR",
	[47] = "access to LDTR or TR",
	[48] = "EPT violation",
	[49] = "EPT misconfiguration",
	[50] = "INVEPT",
	[51] = "RDTSCP",
	[52] = "VMX-preemption timer expired",
	[53] = "INVVPID",
	[54] = "WBINVD or WBNOINVD",
	[55] = "XSETBV",
	[56] = "APIC write",
	[57] = "RDRAND",
	[58] = "INVPCID",
	[59] = "VMFUNC",
	[60] = "ENCLS",
	[61] = "RDSEED",
	[62] = "page-modification log full",
	[63] = "XSAVES",
	[64] = "XRSTORS",
	[65] = "PCONFIG",
	[66] = "SPP-related event",
	[67] = "UMWAIT",
	[68] = "TPAUSE",
	[69] = "LOADIWKEY",
	[70] = "ENCLV",
	[72] = "ENQCMD PASID translation failure",
	[73] = "ENQCMDS PASID translation failure",
	[74] = "bus lock",
	[75] = "instruction timeout",
};

const char *vml_exit_reason_name(u32 basic)
{
	if (basic < ARRAY_SIZE(exit_reasons) && exit_reasons[basic])
		return exit_reasons[basic];
	return "unknown exit reason";
}

struct vml_field_name {
	u32 encoding;
	const char *name;
};

/* "VMCS_GUEST_RIP" -> "GUEST_RIP" */
#define F(x) { x, #x + 5 }

static const struct vml_field_name fields[] = {
	F(VMCS_GUEST_ES_SELECTOR), F(VMCS_GUEST_CS_SELECTOR),
	F(VMCS_GUEST_SS_SELECTOR), F(VMCS_GUEST_DS_SELECTOR),
	F(VMCS_GUEST_FS_SELECTOR), F(VMCS_GUEST_GS_SELECTOR),
	F(VMCS_GUEST_LDTR_SELECTOR), F(VMCS_GUEST_TR_SELECTOR),
	F(VMCS_HOST_ES_SELECTOR), F(VMCS_HOST_CS_SELECTOR),
	F(VMCS_HOST_SS_SELECTOR), F(VMCS_HOST_DS_SELECTOR),
	F(VMCS_HOST_FS_SELECTOR), F(VMCS_HOST_GS_SELECTOR),
	F(VMCS_HOST_TR_SELECTOR),
	F(VMCS_MSR_BITMAP), F(VMCS_VMCS_LINK_POINTER),
	F(VMCS_GUEST_IA32_DEBUGCTL), F(VMCS_GUEST_IA32_EFER),
	F(VMCS_HOST_IA32_EFER),
	F(VMCS_PIN_BASED_VM_EXEC_CONTROL),
	F(VMCS_PRIMARY_PROC_BASED_VM_EXEC_CONTROL),
	F(VMCS_EXCEPTION_BITMAP), F(VMCS_PAGE_FAULT_ERROR_CODE_MASK),
	F(VMCS_PAGE_FAULT_ERROR_CODE_MATCH), F(VMCS_CR3_TARGET_COUNT),
	F(VMCS_VM_EXIT_CONTROLS), F(VMCS_VM_EXIT_MSR_STORE_COUNT),
	F(VMCS_VM_EXIT_MSR_LOAD_COUNT), F(VMCS_VM_ENTRY_CONTROLS),
	F(VMCS_VM_ENTRY_MSR_LOAD_COUNT), F(VMCS_VM_ENTRY_INTR_INFO),
	F(VMCS_VM_INSTRUCTION_ERROR), F(VMCS_EXIT_REASON),
	F(VMCS_VM_EXIT_INTR_INFO), F(VMCS_VM_EXIT_INSTRUCTION_LEN),
	F(VMCS_GUEST_ES_LIMIT), F(VMCS_GUEST_CS_LIMIT),
	F(VMCS_GUEST_SS_LIMIT), F(VMCS_GUEST_DS_LIMIT),
	F(VMCS_GUEST_FS_LIMIT), F(VMCS_GUEST_GS_LIMIT),
	F(VMCS_GUEST_LDTR_LIMIT), F(VMCS_GUEST_TR_LIMIT),
	F(VMCS_GUEST_GDTR_LIMIT), F(VMCS_GUEST_IDTR_LIMIT),
	F(VMCS_GUEST_ES_ACCESS_RIGHTS), F(VMCS_GUEST_CS_ACCESS_RIGHTS),
	F(VMCS_GUEST_SS_ACCESS_RIGHTS), F(VMCS_GUEST_DS_ACCESS_RIGHTS),
	F(VMCS_GUEST_FS_ACCESS_RIGHTS), F(VMCS_GUEST_GS_ACCESS_RIGHTS),
	F(VMCS_GUEST_LDTR_ACCESS_RIGHTS), F(VMCS_GUEST_TR_ACCESS_RIGHTS),
	F(VMCS_GUEST_INTERRUPTIBILITY_STATE), F(VMCS_GUEST_ACTIVITY_STATE),
	F(VMCS_GUEST_IA32_SYSENTER_CS), F(VMCS_HOST_IA32_SYSENTER_CS),
	F(VMCS_CR0_GUEST_HOST_MASK), F(VMCS_CR4_GUEST_HOST_MASK),
	F(VMCS_CR0_READ_SHADOW), F(VMCS_CR4_READ_SHADOW),
	F(VMCS_EXIT_QUALIFICATION),
	F(VMCS_GUEST_CR0), F(VMCS_GUEST_CR3), F(VMCS_GUEST_CR4),
	F(VMCS_GUEST_ES_BASE), F(VMCS_GUEST_CS_BASE),
	F(VMCS_GUEST_SS_BASE), F(VMCS_GUEST_DS_BASE),
	F(VMCS_GUEST_FS_BASE), F(VMCS_GUEST_GS_BASE),
	F(VMCS_GUEST_LDTR_BASE), F(VMCS_GUEST_TR_BASE),
	F(VMCS_GUEST_GDTR_BASE), F(VMCS_GUEST_IDTR_BASE),
	F(VMCS_GUEST_DR7), F(VMCS_GUEST_RSP), F(VMCS_GUEST_RIP),
	F(VMCS_GUEST_RFLAGS), F(VMCS_GUEST_PENDING_DBG_EXCEPTIONS),
	F(VMCS_GUEST_IA32_SYSENTER_ESP), F(VMCS_GUEST_IA32_SYSENTER_EIP),
	F(VMCS_HOST_CR0), F(VMCS_HOST_CR3), F(VMCS_HOST_CR4),
	F(VMCS_HOST_FS_BASE), F(VMCS_HOST_GS_BASE), F(VMCS_HOST_TR_BASE),
	F(VMCS_HOST_GDTR_BASE), F(VMCS_HOST_IDTR_BASE),
	F(VMCS_HOST_IA32_SYSENTER_ESP), F(VMCS_HOST_IA32_SYSENTER_EIP),
	F(VMCS_HOST_RSP), F(VMCS_HOST_RIP),
};

const char *vml_field_name(u32 encoding)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(fields); i++)
		if (fields[i].encoding == encoding)
			return fields[i].name;
	return "unknown_field";
}
