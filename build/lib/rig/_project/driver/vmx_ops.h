/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bottom layer: interface of vmx_ops.S, the VMX instruction wrappers.  Every
 * instruction this module issues by itself lives in that file.  Shared by C
 * and assembly; includes nothing of the layers above.
 */
#ifndef VMLAUNCH_VMX_OPS_H
#define VMLAUNCH_VMX_OPS_H

/* Return codes of the VMX instruction wrappers (RFLAGS after the insn). */
#define VML_RC_OK		0	/* CF=0, ZF=0: VMsucceed (or a VM exit) */
#define VML_RC_FAIL_INVALID	1	/* CF=1: VMfailInvalid */
#define VML_RC_FAIL_VALID	2	/* ZF=1: VMfailValid, see VM_INSTRUCTION_ERROR */
#define VML_RC_FAULT		3	/* the instruction raised #UD/#GP (extable) */
/*
 * vml_enter_guest() only: VML_RC_HOST_RSP | VML_RC_FAIL_INVALID / _VALID /
 * _FAULT when its own VMWRITE of HOST_RSP failed (before any VMLAUNCH).
 */
#define VML_RC_HOST_RSP		0x10
#define VML_RC_MASK		0x0f

/*
 * struct vml_host_tables layout, fixed so that vmx_ops.S can address it.
 * SGDT/SIDT/LGDT/LIDT take a 10-byte operand {u16 limit; u64 base}; the
 * limit sits at offset 6 of each 16-byte slot so the base is 8-aligned.
 */
#define VML_HT_GDT		0	/* saved GDTR */
#define VML_HT_IDT		16	/* saved IDTR */
#define VML_HT_TMP_GDT		32	/* writable GDT copy for LTR */
#define VML_HT_DT_LIMIT		6	/* offset of the limit inside a slot */
#define VML_HT_CS		48
#define VML_HT_SS		50
#define VML_HT_DS		52
#define VML_HT_ES		54
#define VML_HT_FS		56
#define VML_HT_GS		58
#define VML_HT_TR		60
#define VML_HT_LDTR		62
#define VML_HT_SIZE		64

#ifndef __ASSEMBLY__
#include <linux/types.h>

struct vml_dtr {
	u16 pad[3];
	u16 limit;
	u64 base;
};

struct vml_host_tables {
	struct vml_dtr gdt;
	struct vml_dtr idt;
	struct vml_dtr tmp_gdt;
	u16 cs, ss, ds, es, fs, gs, tr, ldtr;
};

/* VMX instructions; each returns a VML_RC_* code. */
int vml_vmxon(const u64 *vmxon_pa);
int vml_vmxoff(void);
int vml_vmclear(const u64 *vmcs_pa);
int vml_vmptrld(const u64 *vmcs_pa);
int vml_vmwrite(unsigned long field, unsigned long value);
int vml_vmread(unsigned long field, unsigned long *value);

/*
 * Saves rbx/rbp/r12-r15, VMWRITEs its own RSP into HOST_RSP and executes
 * VMLAUNCH (resume == 0) or VMRESUME.  Returns VML_RC_OK after a VM exit
 * (including a VM-entry failure: check the exit reason), or the failure code.
 */
int vml_enter_guest(unsigned long resume);

/* HOST_RIP: the instruction after VMLAUNCH/VMRESUME inside vml_enter_guest. */
void vml_host_rip(void);

/* Guest RIP: "1: vmcall; jmp 1b".  Never called from C. */
void vml_guest_entry(void);

/*
 * Re-deliver an event to the host through its own IDT, from VMX root
 * operation, right after the VM exit that intercepted it: "int $2" (NMI)
 * and "int $18" (#MC).  Only valid while CR4.FRED is clear (IDT delivery).
 */
void vml_raise_nmi(void);
void vml_raise_mc(void);

/* Control and debug registers. */
unsigned long vml_read_cr0(void);
unsigned long vml_read_cr3(void);
unsigned long vml_read_cr4(void);
void vml_write_cr4(unsigned long val);
unsigned long vml_read_dr7(void);
void vml_write_dr7(unsigned long val);

/* SGDT/SIDT/STR/SLDT and the segment selectors into *t. */
void vml_store_host_tables(struct vml_host_tables *t);

/*
 * Undo what a VM exit clobbered: LGDT the writable copy, LTR (TR limit and
 * base from the descriptor again), LGDT/LIDT the saved tables (limits back
 * from 0xffff), LLDT the saved LDTR, reload DS/ES selectors.
 */
void vml_restore_host_tables(const struct vml_host_tables *t);
#endif /* !__ASSEMBLY__ */

#endif /* VMLAUNCH_VMX_OPS_H */
