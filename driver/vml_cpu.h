/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Middle layer: the per-CPU state machine (vml_cpu.c and vml_window.c, with
 * vmx_caps.c and vmcs_setup.c).  Its types, stages and errnos; everything it
 * needs comes in as arguments (struct vml_config, struct vml_cpu): no globals.
 * Includes only the bottom layer.
 */
#ifndef VMLAUNCH_VML_CPU_H
#define VMLAUNCH_VML_CPU_H

#include <linux/types.h>
#include <linux/errno.h>

#include "vmx_ops.h"

/* Version of the dmesg line format (docs/contract.md, driver/README.md). */
#define VML_FORMAT_VERSION	1

/* Upper bound for roundtrips=N: bounds the IRQs-off time of one CPU. */
#define VML_MAX_ROUNDTRIPS	10000

/*
 * NMI and #MC exits handled (re-delivered to the host, guest resumed) per
 * VMLAUNCH/VMRESUME before the run gives up with an unexpected exit.
 */
#define VML_MAX_EVENT_EXITS	64

/* Pages per CPU: VMXON region, VMCS, MSR bitmap, guest stack, GDT copy. */
enum vml_page {
	VML_PAGE_VMXON,
	VML_PAGE_VMCS,
	VML_PAGE_MSR_BITMAP,
	VML_PAGE_GUEST_STACK,
	VML_PAGE_GDT_COPY,
	VML_NPAGES
};

/* Stages, in the order they occur (docs/contract.md). */
enum vml_stage {
	VML_ST_NONE,
	VML_ST_CHECK,
	VML_ST_ALLOC,
	VML_ST_VMXON,
	VML_ST_VMCLEAR,
	VML_ST_VMPTRLD,
	VML_ST_VMCS,
	VML_ST_VMLAUNCH,
	VML_ST_EXIT,
	VML_ST_VMXOFF,
	VML_ST_COUNT
};

enum vml_result {
	VML_RES_NONE,		/* not attempted */
	VML_RES_OK,
	VML_RES_FAIL,
	VML_RES_DECLINED,
};

/*
 * One errno per failure path (README "Errnos").  Declines first, then the
 * failures in stage order.
 */
#define VML_E_NO_VMX		(-ENODEV)	/* CPUID.1:ECX.VMX = 0 */
#define VML_E_VMX_FLAG_OFF	(-EOPNOTSUPP)	/* kernel cleared X86_FEATURE_VMX */
#define VML_E_FC_VMX_OFF	(-EACCES)	/* FEATURE_CONTROL locked, VMX off */
#define VML_E_FC_SMX_OFF	(-EPERM)	/* CR4.SMXE, VMX inside SMX off */
#define VML_E_FC_UNLOCKED	(-ENOLCK)	/* FEATURE_CONTROL not locked */
#define VML_E_VMX_BUSY		(-EBUSY)	/* CR4.VMXE already set */
#define VML_E_SHUTDOWN		(-ESHUTDOWN)	/* reboot in progress */
#define VML_E_VMCS_SIZE		(-E2BIG)	/* VMX_BASIC region size > 4096 */
#define VML_E_VMCS_MEMTYPE	(-EMEDIUMTYPE)	/* VMX_BASIC memory type != WB */
#define VML_E_CR0_FIXED		(-ERANGE)	/* CR0 violates VMX_CR0_FIXED0/1 */
#define VML_E_CR4_FIXED		(-EDOM)		/* CR4 violates VMX_CR4_FIXED0/1 */
#define VML_E_CTLS		(-ENOPROTOOPT)	/* IA-32e controls not allowed */
#define VML_E_FRED		(-EPROTONOSUPPORT) /* CR4.FRED: no IDT re-delivery */
#define VML_E_HOST_SEL		(-EXDEV)	/* FS/GS selector with RPL/TI bits */
#define VML_E_MSR		(-ENOMSG)	/* a capability MSR read faulted */
#define VML_E_NOMEM		(-ENOMEM)	/* page allocation */
#define VML_E_VMXON		(-ENXIO)	/* VMXON failed */
#define VML_E_VMCLEAR		(-EADDRNOTAVAIL) /* VMCLEAR failed */
#define VML_E_VMPTRLD		(-EFAULT)	/* VMPTRLD failed */
#define VML_E_VMWRITE		(-ENOEXEC)	/* VMWRITE of a VMCS field failed */
#define VML_E_LAUNCH_VALID	(-EIO)		/* VMLAUNCH/VMRESUME VMfailValid */
#define VML_E_LAUNCH_INVALID	(-EBADF)	/* VMLAUNCH/VMRESUME VMfailInvalid */
#define VML_E_FAULT		(-EILSEQ)	/* a VMX instruction faulted */
#define VML_E_ENTRY_FAILURE	(-EPROTO)	/* exit reason bit 31 set */
#define VML_E_UNEXPECTED_EXIT	(-EBADMSG)	/* exit reason other than VMCALL */
#define VML_E_VMXOFF		(-EREMOTEIO)	/* VMCLEAR/VMXOFF at teardown failed */
#define VML_E_PARAM		(-EINVAL)	/* bad module parameter (at load) */

/* break_field= values */
enum vml_break {
	VML_BREAK_NONE,
	VML_BREAK_HOST_ADDR_SPACE_SIZE,
	VML_BREAK_GUEST_RFLAGS_BIT1,
};

/* What a run is asked to do; fixed at load, passed to every call. */
struct vml_config {
	enum vml_break brk;
	u32 roundtrips;
	bool hold;		/* keep VMX on after the launch (hold mode) */
};

struct vml_caps {
	u64 feature_control;
	bool smx;			/* CR4.SMXE: VMXON needs VMX inside SMX */
	u64 basic;
	u32 revision;
	u32 region_size;
	u32 memtype;
	bool true_ctls;
	bool physaddr_32bit;
	u64 pin, proc, exit, entry;	/* allowed0 (low) / allowed1 (high) */
	u64 cr0_fixed0, cr0_fixed1, cr4_fixed0, cr4_fixed1;
};

struct vml_controls {
	u32 pin, proc, exit, entry;
	bool efer;			/* load/save EFER controls in use */
	bool msr_bitmap;
	bool nmi_exiting;
};

/* State of the host, captured in the IRQs-off window. */
struct vml_host_state {
	struct vml_host_tables tables;
	unsigned long cr0, cr3, cr4;	/* cr4 includes VMXE */
	unsigned long dr7;
	u64 efer, debugctl;
	u64 fs_base, gs_base;
	u64 sysenter_cs, sysenter_esp, sysenter_eip;
	u64 tr_base;
};

/*
 * Where VMX operation of a CPU was left, or is being left (README "Design").
 * VML_AT_LAUNCH: at the end of the IRQs-off launch window (window mode or a
 * failed launch); the others: by vml_cpu_release().
 */
enum vml_at {
	VML_AT_NONE,		/* never entered VMX operation */
	VML_AT_LAUNCH,
	VML_AT_UNLOAD,		/* rmmod: cpuhp_remove_state() */
	VML_AT_ROLLBACK,	/* a later CPU failed during init */
	VML_AT_HOTPLUG,		/* CPU hot-unplug (cpuhp offline callback) */
	VML_AT_REBOOT,		/* reboot notifier (reboot, halt, power-off, kexec) */
	VML_AT_SUSPEND,		/* syscore suspend (system sleep, hibernation) */
};

/* Outcome of vml_cpu_release() on one CPU (printed by the top layer). */
struct vml_release {
	enum vml_at at;
	bool held;		/* the CPU was in VMX operation (ours) */
	bool lost;		/* held, but CR4.VMXE was found clear */
	bool vmxe;		/* CR4.VMXE afterwards, read from the register */
	int rc;			/* VML_RC_* of the first failing instruction */
	u32 insn_error;		/* VM-instruction error of a VMfailValid */
	const char *insn;	/* "vmclear" / "vmxoff", NULL if none failed */
	int ipi_err;		/* smp_call_function_single() failed */
	bool unreported;	/* set by the release, cleared by the report */
};

/* Outcome of one CPU's run, also shown in sysfs. */
struct vml_cpu {
	bool attempted;
	enum vml_stage stage;		/* failing stage, or last stage done */
	enum vml_result result;
	int err;			/* 0 or the errno of the failure path */
	const char *why;		/* identifier for a decline */
	const char *insn;		/* "vmlaunch" / "vmresume" on a launch failure */
	int rc;				/* VML_RC_* of the failing instruction */
	u32 insn_error;			/* VM_INSTRUCTION_ERROR when rc == FAIL_VALID */
	u32 field;			/* VMCS field of a failed VMWRITE, MSR of a check */
	bool entered;			/* a VM entry completed (guest ran) */
	u32 exit_reason;
	u64 qual;
	u32 insn_len;
	u32 intr_info;
	unsigned long rip_off;		/* guest RIP - vml_guest_entry */
	u32 roundtrips;			/* VMRESUME round trips done */
	u32 nmis;			/* NMI exits, NMI re-delivered to the host */
	u32 mces;			/* #MC exits / exit 41, handed to the MCE handler */
	u64 cycles_min, cycles_median;
	int teardown_rc;		/* VML_RC_* of the final VMCLEAR/VMXOFF */
	u32 teardown_error;		/* its VM-instruction error (VMfailValid) */
	const char *teardown_insn;
	bool vmxe_after;		/* CR4.VMXE after the window */
	/*
	 * In VMX operation on our VMXON region: from a successful VMXON to a
	 * successful VMXOFF.  After a successful launch in hold mode it stays
	 * true (VMX held, our VMCS current) until vml_cpu_release().  While
	 * it is true the VMXON region and the VMCS are never freed.
	 */
	bool vmx_on;
	enum vml_at left_at;		/* where VMX operation was left */
	struct vml_release rel;
	struct vml_caps caps;
	struct vml_controls ctl;
	struct vml_host_state host;
	struct page *pages[VML_NPAGES];
	u64 vmcs_pa;			/* the VMCS's physical address (reported) */
	u64 *cycles;			/* roundtrips buffer, only during the run */
};

/*
 * vml_cpu.c.  vml_cpu_run() runs on @cpu (its cpuhp thread) and fills @c;
 * vml_cpu_release() runs on the CPU of @c with IRQs off; vml_cpu_free()
 * returns the number of pages freed (never the VMX pages of a CPU still in
 * VMX operation).
 */
int vml_cpu_run(unsigned int cpu, struct vml_cpu *c, const struct vml_config *cfg);
void vml_cpu_release(struct vml_cpu *c, enum vml_at at);
unsigned int vml_cpu_free(struct vml_cpu *c);

#endif /* VMLAUNCH_VML_CPU_H */
