/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bottom layer: all assembly of vmlaunch.ko (VMX instruction wrappers, the
 * launch routine, guest code, CR/DR and descriptor-table access).
 *
 * Every VMX instruction reports its outcome in RFLAGS (SDM 31.2):
 * VMsucceed clears CF and ZF, VMfailInvalid sets CF, VMfailValid sets ZF.
 * The wrappers turn that into VML_RC_* codes right after the instruction,
 * in the same function, so no flag ever has to survive a compiler boundary.
 * A #UD/#GP raised by the instruction is caught through the exception table
 * and returned as VML_RC_FAULT.
 */
#include <linux/linkage.h>
#include <asm/asm.h>
#if defined(__has_include)
#if __has_include(<asm/ibt.h>)
#include <asm/ibt.h>
#endif
#endif
#include "vmx_ops.h"
#include "vmx_sdm.h"

/* Kernels before 5.17 have no RET macro, before 5.18 no ENDBR. */
#ifndef RET
#define RET ret
#endif
#ifndef ENDBR
#define ENDBR
#endif

/*
 * Start of a function that is reached indirectly (GUEST_RIP) and so needs
 * exactly one ENDBR64 on IBT kernels.  x86's SYM_TYPED_FUNC_START (6.2+)
 * always ends in ENDBR, while SYM_FUNC_START stopped emitting it in 7.x;
 * before 6.2 SYM_FUNC_START itself carries the ENDBR (5.18+).
 */
#ifdef SYM_TYPED_FUNC_START
#include <linux/cfi_types.h>
#define VML_INDIRECT_FUNC_START(name)	SYM_TYPED_FUNC_START(name)
#else
#define VML_INDIRECT_FUNC_START(name)	SYM_FUNC_START(name)
#endif

/* Return VML_RC_* for the flags left by the preceding VMX instruction. */
.macro VML_RETURN_FLAGS
	jc	91f
	jz	92f
	xorl	%eax, %eax
	RET
91:	movl	$VML_RC_FAIL_INVALID, %eax
	RET
92:	movl	$VML_RC_FAIL_VALID, %eax
	RET
.endm

	.text

/* int vml_vmxon(const u64 *vmxon_pa) */
SYM_FUNC_START(vml_vmxon)
1:	vmxon	(%rdi)
	VML_RETURN_FLAGS
2:	movl	$VML_RC_FAULT, %eax
	RET
	_ASM_EXTABLE(1b, 2b)
SYM_FUNC_END(vml_vmxon)

/* int vml_vmxoff(void) */
SYM_FUNC_START(vml_vmxoff)
1:	vmxoff
	VML_RETURN_FLAGS
2:	movl	$VML_RC_FAULT, %eax
	RET
	_ASM_EXTABLE(1b, 2b)
SYM_FUNC_END(vml_vmxoff)

/* int vml_vmclear(const u64 *vmcs_pa) */
SYM_FUNC_START(vml_vmclear)
1:	vmclear	(%rdi)
	VML_RETURN_FLAGS
2:	movl	$VML_RC_FAULT, %eax
	RET
	_ASM_EXTABLE(1b, 2b)
SYM_FUNC_END(vml_vmclear)

/* int vml_vmptrld(const u64 *vmcs_pa) */
SYM_FUNC_START(vml_vmptrld)
1:	vmptrld	(%rdi)
	VML_RETURN_FLAGS
2:	movl	$VML_RC_FAULT, %eax
	RET
	_ASM_EXTABLE(1b, 2b)
SYM_FUNC_END(vml_vmptrld)

/* int vml_vmwrite(unsigned long field, unsigned long value) */
SYM_FUNC_START(vml_vmwrite)
1:	vmwrite	%rsi, %rdi		/* AT&T: value (r/m64), field (r64) */
	VML_RETURN_FLAGS
2:	movl	$VML_RC_FAULT, %eax
	RET
	_ASM_EXTABLE(1b, 2b)
SYM_FUNC_END(vml_vmwrite)

/* int vml_vmread(unsigned long field, unsigned long *value) */
SYM_FUNC_START(vml_vmread)
1:	vmread	%rdi, %rax		/* AT&T: field (r64), destination (r/m64) */
	jc	3f
	jz	4f
	movq	%rax, (%rsi)
	xorl	%eax, %eax
	RET
3:	movl	$VML_RC_FAIL_INVALID, %eax
	RET
4:	movl	$VML_RC_FAIL_VALID, %eax
	RET
2:	movl	$VML_RC_FAULT, %eax
	RET
	_ASM_EXTABLE(1b, 2b)
SYM_FUNC_END(vml_vmread)

/*
 * int vml_enter_guest(unsigned long resume)
 *
 * The callee-saved registers are pushed, then the *current* RSP goes into
 * HOST_RSP, so a VM exit lands on exactly this frame.  A VM exit (or a
 * VM-entry failure, which loads host state like an exit) continues at
 * vml_host_rip with RFLAGS = 0x2: CF=ZF=0, so the flag test there yields
 * VML_RC_OK.  A VMLAUNCH/VMRESUME that fails falls through to the same test
 * with CF or ZF set.  Either way the pushed registers are popped and we
 * return normally; objtool sees a plain fall-through, no unwind hints needed.
 */
SYM_FUNC_START(vml_enter_guest)
	pushq	%rbp
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15

	movl	$VMCS_HOST_RSP, %eax
1:	vmwrite	%rsp, %rax
	jc	.Lhost_rsp_invalid
	jz	.Lhost_rsp_valid

	testq	%rdi, %rdi
	jnz	.Ldo_resume
2:	vmlaunch
	jmp	.Lhost_rip
.Ldo_resume:
3:	vmresume
.Lhost_rip:
SYM_INNER_LABEL(vml_host_rip, SYM_L_GLOBAL)
	ENDBR				/* reached "indirectly" through HOST_RIP */
	jc	.Lfail_invalid
	jz	.Lfail_valid
	xorl	%eax, %eax		/* VM exit */
	jmp	.Lout
.Lfail_invalid:
	movl	$VML_RC_FAIL_INVALID, %eax
	jmp	.Lout
.Lfail_valid:
	movl	$VML_RC_FAIL_VALID, %eax
	jmp	.Lout
.Lhost_rsp_invalid:
	movl	$(VML_RC_HOST_RSP | VML_RC_FAIL_INVALID), %eax
	jmp	.Lout
.Lhost_rsp_valid:
	movl	$(VML_RC_HOST_RSP | VML_RC_FAIL_VALID), %eax
	jmp	.Lout
.Lhost_rsp_fault:
	movl	$(VML_RC_HOST_RSP | VML_RC_FAULT), %eax
	jmp	.Lout
.Lfault:
	movl	$VML_RC_FAULT, %eax
.Lout:
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	popq	%rbp
	RET

	_ASM_EXTABLE(1b, .Lhost_rsp_fault)
	_ASM_EXTABLE(2b, .Lfault)
	_ASM_EXTABLE(3b, .Lfault)
SYM_FUNC_END(vml_enter_guest)

/*
 * Guest code.  Runs in VMX non-root operation on the host's own CR3 and
 * GDT, with RSP at the top of a private zeroed page.  VMCALL always exits;
 * after a VMRESUME with RIP advanced past the VMCALL the jmp brings the
 * guest straight back to it.  GUEST_RIP is an indirect target: ENDBR64.
 */
VML_INDIRECT_FUNC_START(vml_guest_entry)
1:	vmcall
	jmp	1b
SYM_FUNC_END(vml_guest_entry)

/*
 * Software "int n" to the host's IDT.  The NMI entry runs on its IST stack
 * like a hardware NMI; the NMI blocking that an NMI-induced VM exit leaves
 * in effect is lifted by that handler's IRET, as after a hardware NMI.
 */
SYM_FUNC_START(vml_raise_nmi)
	int	$VMX_VECTOR_NMI
	RET
SYM_FUNC_END(vml_raise_nmi)

SYM_FUNC_START(vml_raise_mc)
	int	$VMX_VECTOR_MC
	RET
SYM_FUNC_END(vml_raise_mc)

SYM_FUNC_START(vml_read_cr0)
	movq	%cr0, %rax
	RET
SYM_FUNC_END(vml_read_cr0)

SYM_FUNC_START(vml_read_cr3)
	movq	%cr3, %rax
	RET
SYM_FUNC_END(vml_read_cr3)

SYM_FUNC_START(vml_read_cr4)
	movq	%cr4, %rax
	RET
SYM_FUNC_END(vml_read_cr4)

/* Only used inside the IRQs-off window, see README ("CR4.VMXE"). */
SYM_FUNC_START(vml_write_cr4)
	movq	%rdi, %cr4
	RET
SYM_FUNC_END(vml_write_cr4)

SYM_FUNC_START(vml_read_dr7)
	movq	%dr7, %rax
	RET
SYM_FUNC_END(vml_read_dr7)

SYM_FUNC_START(vml_write_dr7)
	movq	%rdi, %dr7
	RET
SYM_FUNC_END(vml_write_dr7)

/* void vml_store_host_tables(struct vml_host_tables *t) */
SYM_FUNC_START(vml_store_host_tables)
	sgdt	VML_HT_GDT + VML_HT_DT_LIMIT(%rdi)
	sidt	VML_HT_IDT + VML_HT_DT_LIMIT(%rdi)
	movw	%cs, VML_HT_CS(%rdi)
	movw	%ss, VML_HT_SS(%rdi)
	movw	%ds, VML_HT_DS(%rdi)
	movw	%es, VML_HT_ES(%rdi)
	movw	%fs, VML_HT_FS(%rdi)
	movw	%gs, VML_HT_GS(%rdi)
	str	VML_HT_TR(%rdi)
	sldt	VML_HT_LDTR(%rdi)
	RET
SYM_FUNC_END(vml_store_host_tables)

/*
 * void vml_restore_host_tables(const struct vml_host_tables *t)
 *
 * LTR needs an available (not busy) TSS descriptor and writes the busy bit
 * back into the GDT.  The kernel's GDT is mapped read-only, so the C side
 * prepares a private copy whose TSS descriptor is marked available; we load
 * TR from the copy, then switch back to the real GDT.  Both GDTs have the
 * same contents, so the switch is invisible to anything else.
 */
SYM_FUNC_START(vml_restore_host_tables)
	lgdt	VML_HT_TMP_GDT + VML_HT_DT_LIMIT(%rdi)
	movzwl	VML_HT_TR(%rdi), %eax
	ltr	%ax
	lgdt	VML_HT_GDT + VML_HT_DT_LIMIT(%rdi)
	lidt	VML_HT_IDT + VML_HT_DT_LIMIT(%rdi)
	movzwl	VML_HT_LDTR(%rdi), %eax
	lldt	%ax
	movzwl	VML_HT_DS(%rdi), %eax
	movl	%eax, %ds
	movzwl	VML_HT_ES(%rdi), %eax
	movl	%eax, %es
	RET
SYM_FUNC_END(vml_restore_host_tables)
