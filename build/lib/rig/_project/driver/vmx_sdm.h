/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bottom layer: SDM definitions.  VMCS field encodings, VM-execution/exit/
 * entry control bits, exit reasons, interruption-information bits and the
 * MSRs we read, named after the Intel SDM (Vol. 3D, appendix B "Field
 * Encoding in VMCS", appendix A "VMX Capability Reporting", appendix C).
 *
 * Why not the kernel's <asm/vmx.h>: its encodings are C enums, which
 * vmx_ops.S cannot use, and it is KVM's header (its names changed between
 * 5.10 and 7.3).  So the encodings live here once, as plain #defines with a
 * VMCS_ / VMX_ / VML_ prefix that never clashes with the kernel's names, and
 *   - vmx_sdm_check.c proves at compile time that every value used here is
 *     the kernel's own value (static_assert against <asm/vmx.h> and
 *     <asm/msr-index.h>), and
 *   - vmcs_access.h refuses at compile time an access whose width does not
 *     match the width encoded in the field (bits 14:13, bit 0).
 * Nothing here includes anything else.
 */
#ifndef VMLAUNCH_VMX_SDM_H
#define VMLAUNCH_VMX_SDM_H

/*
 * Field encoding (SDM B.1): bit 0 access type (1 = high half of a 64-bit
 * field), bits 9:1 index, bits 11:10 type, bits 14:13 width.
 */
#define VMCS_FIELD_WIDTH(f)			(((f) >> 13) & 3)
#define VMCS_FIELD_ACCESS_HIGH(f)		((f) & 1)
#define VMCS_WIDTH_16				0
#define VMCS_WIDTH_64				1
#define VMCS_WIDTH_32				2
#define VMCS_WIDTH_NATURAL			3

/* ---- 16-bit guest-state fields ---- */
#define VMCS_GUEST_ES_SELECTOR			0x00000800
#define VMCS_GUEST_CS_SELECTOR			0x00000802
#define VMCS_GUEST_SS_SELECTOR			0x00000804
#define VMCS_GUEST_DS_SELECTOR			0x00000806
#define VMCS_GUEST_FS_SELECTOR			0x00000808
#define VMCS_GUEST_GS_SELECTOR			0x0000080a
#define VMCS_GUEST_LDTR_SELECTOR		0x0000080c
#define VMCS_GUEST_TR_SELECTOR			0x0000080e

/* ---- 16-bit host-state fields ---- */
#define VMCS_HOST_ES_SELECTOR			0x00000c00
#define VMCS_HOST_CS_SELECTOR			0x00000c02
#define VMCS_HOST_SS_SELECTOR			0x00000c04
#define VMCS_HOST_DS_SELECTOR			0x00000c06
#define VMCS_HOST_FS_SELECTOR			0x00000c08
#define VMCS_HOST_GS_SELECTOR			0x00000c0a
#define VMCS_HOST_TR_SELECTOR			0x00000c0c

/* ---- 64-bit control fields ---- */
#define VMCS_IO_BITMAP_A			0x00002000
#define VMCS_IO_BITMAP_B			0x00002002
#define VMCS_MSR_BITMAP				0x00002004
#define VMCS_VM_EXIT_MSR_STORE_ADDR		0x00002006
#define VMCS_VM_EXIT_MSR_LOAD_ADDR		0x00002008
#define VMCS_VM_ENTRY_MSR_LOAD_ADDR		0x0000200a
#define VMCS_TSC_OFFSET				0x00002010

/* ---- 64-bit guest-state fields ---- */
#define VMCS_VMCS_LINK_POINTER			0x00002800
#define VMCS_GUEST_IA32_DEBUGCTL		0x00002802
#define VMCS_GUEST_IA32_PAT			0x00002804
#define VMCS_GUEST_IA32_EFER			0x00002806

/* ---- 64-bit host-state fields ---- */
#define VMCS_HOST_IA32_PAT			0x00002c00
#define VMCS_HOST_IA32_EFER			0x00002c02

/* ---- 32-bit control fields ---- */
#define VMCS_PIN_BASED_VM_EXEC_CONTROL		0x00004000
#define VMCS_PRIMARY_PROC_BASED_VM_EXEC_CONTROL	0x00004002
#define VMCS_EXCEPTION_BITMAP			0x00004004
#define VMCS_PAGE_FAULT_ERROR_CODE_MASK		0x00004006
#define VMCS_PAGE_FAULT_ERROR_CODE_MATCH	0x00004008
#define VMCS_CR3_TARGET_COUNT			0x0000400a
#define VMCS_VM_EXIT_CONTROLS			0x0000400c
#define VMCS_VM_EXIT_MSR_STORE_COUNT		0x0000400e
#define VMCS_VM_EXIT_MSR_LOAD_COUNT		0x00004010
#define VMCS_VM_ENTRY_CONTROLS			0x00004012
#define VMCS_VM_ENTRY_MSR_LOAD_COUNT		0x00004014
#define VMCS_VM_ENTRY_INTR_INFO			0x00004016
#define VMCS_VM_ENTRY_EXCEPTION_ERROR_CODE	0x00004018
#define VMCS_VM_ENTRY_INSTRUCTION_LEN		0x0000401a

/* ---- 32-bit read-only data fields ---- */
#define VMCS_VM_INSTRUCTION_ERROR		0x00004400
#define VMCS_EXIT_REASON			0x00004402
#define VMCS_VM_EXIT_INTR_INFO			0x00004404
#define VMCS_VM_EXIT_INTR_ERROR_CODE		0x00004406
#define VMCS_IDT_VECTORING_INFO			0x00004408
#define VMCS_IDT_VECTORING_ERROR_CODE		0x0000440a
#define VMCS_VM_EXIT_INSTRUCTION_LEN		0x0000440c
#define VMCS_VM_EXIT_INSTRUCTION_INFO		0x0000440e

/* ---- 32-bit guest-state fields ---- */
#define VMCS_GUEST_ES_LIMIT			0x00004800
#define VMCS_GUEST_CS_LIMIT			0x00004802
#define VMCS_GUEST_SS_LIMIT			0x00004804
#define VMCS_GUEST_DS_LIMIT			0x00004806
#define VMCS_GUEST_FS_LIMIT			0x00004808
#define VMCS_GUEST_GS_LIMIT			0x0000480a
#define VMCS_GUEST_LDTR_LIMIT			0x0000480c
#define VMCS_GUEST_TR_LIMIT			0x0000480e
#define VMCS_GUEST_GDTR_LIMIT			0x00004810
#define VMCS_GUEST_IDTR_LIMIT			0x00004812
#define VMCS_GUEST_ES_ACCESS_RIGHTS		0x00004814
#define VMCS_GUEST_CS_ACCESS_RIGHTS		0x00004816
#define VMCS_GUEST_SS_ACCESS_RIGHTS		0x00004818
#define VMCS_GUEST_DS_ACCESS_RIGHTS		0x0000481a
#define VMCS_GUEST_FS_ACCESS_RIGHTS		0x0000481c
#define VMCS_GUEST_GS_ACCESS_RIGHTS		0x0000481e
#define VMCS_GUEST_LDTR_ACCESS_RIGHTS		0x00004820
#define VMCS_GUEST_TR_ACCESS_RIGHTS		0x00004822
#define VMCS_GUEST_INTERRUPTIBILITY_STATE	0x00004824
#define VMCS_GUEST_ACTIVITY_STATE		0x00004826
#define VMCS_GUEST_SMBASE			0x00004828
#define VMCS_GUEST_IA32_SYSENTER_CS		0x0000482a

/* ---- 32-bit host-state field ---- */
#define VMCS_HOST_IA32_SYSENTER_CS		0x00004c00

/* ---- natural-width control fields ---- */
#define VMCS_CR0_GUEST_HOST_MASK		0x00006000
#define VMCS_CR4_GUEST_HOST_MASK		0x00006002
#define VMCS_CR0_READ_SHADOW			0x00006004
#define VMCS_CR4_READ_SHADOW			0x00006006

/* ---- natural-width read-only data fields ---- */
#define VMCS_EXIT_QUALIFICATION			0x00006400
#define VMCS_GUEST_LINEAR_ADDRESS		0x0000640a

/* ---- natural-width guest-state fields ---- */
#define VMCS_GUEST_CR0				0x00006800
#define VMCS_GUEST_CR3				0x00006802
#define VMCS_GUEST_CR4				0x00006804
#define VMCS_GUEST_ES_BASE			0x00006806
#define VMCS_GUEST_CS_BASE			0x00006808
#define VMCS_GUEST_SS_BASE			0x0000680a
#define VMCS_GUEST_DS_BASE			0x0000680c
#define VMCS_GUEST_FS_BASE			0x0000680e
#define VMCS_GUEST_GS_BASE			0x00006810
#define VMCS_GUEST_LDTR_BASE			0x00006812
#define VMCS_GUEST_TR_BASE			0x00006814
#define VMCS_GUEST_GDTR_BASE			0x00006816
#define VMCS_GUEST_IDTR_BASE			0x00006818
#define VMCS_GUEST_DR7				0x0000681a
#define VMCS_GUEST_RSP				0x0000681c
#define VMCS_GUEST_RIP				0x0000681e
#define VMCS_GUEST_RFLAGS			0x00006820
#define VMCS_GUEST_PENDING_DBG_EXCEPTIONS	0x00006822
#define VMCS_GUEST_IA32_SYSENTER_ESP		0x00006824
#define VMCS_GUEST_IA32_SYSENTER_EIP		0x00006826

/* ---- natural-width host-state fields ---- */
#define VMCS_HOST_CR0				0x00006c00
#define VMCS_HOST_CR3				0x00006c02
#define VMCS_HOST_CR4				0x00006c04
#define VMCS_HOST_FS_BASE			0x00006c06
#define VMCS_HOST_GS_BASE			0x00006c08
#define VMCS_HOST_TR_BASE			0x00006c0a
#define VMCS_HOST_GDTR_BASE			0x00006c0c
#define VMCS_HOST_IDTR_BASE			0x00006c0e
#define VMCS_HOST_IA32_SYSENTER_ESP		0x00006c10
#define VMCS_HOST_IA32_SYSENTER_EIP		0x00006c12
#define VMCS_HOST_RSP				0x00006c14
#define VMCS_HOST_RIP				0x00006c16

/* ---- pin-based VM-execution controls (SDM 25.6.1) ---- */
#define VMX_PIN_EXTERNAL_INTERRUPT_EXITING	(1u << 0)
#define VMX_PIN_NMI_EXITING			(1u << 3)
#define VMX_PIN_VIRTUAL_NMIS			(1u << 5)
#define VMX_PIN_PREEMPTION_TIMER		(1u << 6)

/* ---- primary processor-based VM-execution controls (SDM 25.6.2) ---- */
#define VMX_PROC_HLT_EXITING			(1u << 7)
#define VMX_PROC_USE_MSR_BITMAPS		(1u << 28)
#define VMX_PROC_ACTIVATE_SECONDARY_CONTROLS	(1u << 31)

/* ---- primary VM-exit controls (SDM 25.7.1) ---- */
#define VMX_EXIT_SAVE_DEBUG_CONTROLS		(1u << 2)
#define VMX_EXIT_HOST_ADDR_SPACE_SIZE		(1u << 9)
#define VMX_EXIT_ACK_INTERRUPT_ON_EXIT		(1u << 15)
#define VMX_EXIT_SAVE_IA32_EFER			(1u << 20)
#define VMX_EXIT_LOAD_IA32_EFER			(1u << 21)

/* ---- VM-entry controls (SDM 25.8.1) ---- */
#define VMX_ENTRY_LOAD_DEBUG_CONTROLS		(1u << 2)
#define VMX_ENTRY_IA32E_MODE_GUEST		(1u << 9)
#define VMX_ENTRY_LOAD_IA32_EFER		(1u << 15)

/* ---- exit reason (SDM 25.9.1) ---- */
#define VMX_EXIT_REASON_BASIC_MASK		0x0000ffffu
#define VMX_EXIT_REASON_ENTRY_FAILURE		(1u << 31)
#define VMX_EXIT_BASIC_EXCEPTION_OR_NMI		0
#define VMX_EXIT_BASIC_VMCALL			18
#define VMX_EXIT_BASIC_INVALID_GUEST_STATE	33
#define VMX_EXIT_BASIC_MSR_LOADING		34
#define VMX_EXIT_BASIC_MACHINE_CHECK		41	/* VM-entry failure due to #MC */

/* ---- VM-exit interruption information (SDM 25.9.2) ---- */
#define VMX_INTR_INFO_VECTOR_MASK		0xffu
#define VMX_INTR_INFO_TYPE_MASK			(7u << 8)
#define VMX_INTR_INFO_TYPE_NMI			(2u << 8)
#define VMX_INTR_INFO_TYPE_HW_EXCEPTION		(3u << 8)
#define VMX_INTR_INFO_VALID			(1u << 31)
#define VMX_VECTOR_NMI				2
#define VMX_VECTOR_MC				18

/* ---- MSRs (SDM Vol. 4) ---- */
#define VML_MSR_IA32_FEATURE_CONTROL		0x0000003a
#define VML_MSR_IA32_SYSENTER_CS		0x00000174
#define VML_MSR_IA32_SYSENTER_ESP		0x00000175
#define VML_MSR_IA32_SYSENTER_EIP		0x00000176
#define VML_MSR_IA32_DEBUGCTL			0x000001d9
#define VML_MSR_IA32_VMX_BASIC			0x00000480
#define VML_MSR_IA32_VMX_PINBASED_CTLS		0x00000481
#define VML_MSR_IA32_VMX_PROCBASED_CTLS		0x00000482
#define VML_MSR_IA32_VMX_EXIT_CTLS		0x00000483
#define VML_MSR_IA32_VMX_ENTRY_CTLS		0x00000484
#define VML_MSR_IA32_VMX_MISC			0x00000485
#define VML_MSR_IA32_VMX_CR0_FIXED0		0x00000486
#define VML_MSR_IA32_VMX_CR0_FIXED1		0x00000487
#define VML_MSR_IA32_VMX_CR4_FIXED0		0x00000488
#define VML_MSR_IA32_VMX_CR4_FIXED1		0x00000489
#define VML_MSR_IA32_VMX_TRUE_PINBASED_CTLS	0x0000048d
#define VML_MSR_IA32_VMX_TRUE_PROCBASED_CTLS	0x0000048e
#define VML_MSR_IA32_VMX_TRUE_EXIT_CTLS		0x0000048f
#define VML_MSR_IA32_VMX_TRUE_ENTRY_CTLS	0x00000490
#define VML_MSR_IA32_EFER			0xc0000080
#define VML_MSR_IA32_FS_BASE			0xc0000100
#define VML_MSR_IA32_GS_BASE			0xc0000101

/* IA32_FEATURE_CONTROL bits */
#define VML_FEATURE_CONTROL_LOCKED		(1ull << 0)
#define VML_FEATURE_CONTROL_VMX_INSIDE_SMX	(1ull << 1)
#define VML_FEATURE_CONTROL_VMX_OUTSIDE_SMX	(1ull << 2)

/* IA32_VMX_BASIC fields (SDM A.1) */
#define VML_VMX_BASIC_REVISION_MASK		0x7fffffffull
#define VML_VMX_BASIC_REGION_SIZE_SHIFT		32
#define VML_VMX_BASIC_REGION_SIZE_MASK		0x1fffull
#define VML_VMX_BASIC_PHYSADDR_32BIT		(1ull << 48)
#define VML_VMX_BASIC_MEMTYPE_SHIFT		50
#define VML_VMX_BASIC_MEMTYPE_MASK		0xfull
#define VML_VMX_BASIC_MEMTYPE_WB		6
#define VML_VMX_BASIC_TRUE_CTLS			(1ull << 55)

#endif /* VMLAUNCH_VMX_SDM_H */
