// SPDX-License-Identifier: GPL-2.0
/*
 * Middle layer.  VMX capability checks: CPUID, IA32_FEATURE_CONTROL, IA32_VMX_BASIC,
 * CR0/CR4 fixed bits, and the adjustment of the VM-execution, VM-exit and
 * VM-entry controls against the (TRUE_)capability MSRs.
 *
 * Runs on the CPU being checked (cpuhp callback, bound to it).
 */
#include <linux/kernel.h>
#include <linux/stddef.h>
#include <asm/cpufeature.h>
#include <asm/processor.h>
#include <asm/processor-flags.h>

#include "vmx_caps.h"
#include "vmx_sdm.h"
#include "compat.h"

static bool vml_cr_fixed_ok(u64 val, u64 fixed0, u64 fixed1)
{
	/* Bits set in FIXED0 must be 1, bits clear in FIXED1 must be 0. */
	return (val & fixed0) == fixed0 && (val & ~fixed1) == 0;
}

static int vml_decline(struct vml_cpu *c, int err, const char *why)
{
	c->result = VML_RES_DECLINED;
	c->err = err;
	c->why = why;
	return err;
}

static int vml_read_caps_msr(struct vml_cpu *c, u32 msr, u64 *val)
{
	if (vml_rdmsr(msr, val)) {
		c->result = VML_RES_FAIL;
		c->err = VML_E_MSR;
		c->why = "msr_fault";
		c->field = msr;
		return VML_E_MSR;
	}
	return 0;
}

struct vml_msr_slot {
	u32 msr;
	size_t offset;		/* in struct vml_caps */
};

#define VML_SLOT(m, f) { m, offsetof(struct vml_caps, f) }

static const struct vml_msr_slot fixed_msrs[] = {
	VML_SLOT(VML_MSR_IA32_VMX_CR0_FIXED0, cr0_fixed0),
	VML_SLOT(VML_MSR_IA32_VMX_CR0_FIXED1, cr0_fixed1),
	VML_SLOT(VML_MSR_IA32_VMX_CR4_FIXED0, cr4_fixed0),
	VML_SLOT(VML_MSR_IA32_VMX_CR4_FIXED1, cr4_fixed1),
};

static const struct vml_msr_slot ctl_msrs[] = {
	VML_SLOT(VML_MSR_IA32_VMX_PINBASED_CTLS, pin),
	VML_SLOT(VML_MSR_IA32_VMX_PROCBASED_CTLS, proc),
	VML_SLOT(VML_MSR_IA32_VMX_EXIT_CTLS, exit),
	VML_SLOT(VML_MSR_IA32_VMX_ENTRY_CTLS, entry),
};

static const struct vml_msr_slot true_ctl_msrs[] = {
	VML_SLOT(VML_MSR_IA32_VMX_TRUE_PINBASED_CTLS, pin),
	VML_SLOT(VML_MSR_IA32_VMX_TRUE_PROCBASED_CTLS, proc),
	VML_SLOT(VML_MSR_IA32_VMX_TRUE_EXIT_CTLS, exit),
	VML_SLOT(VML_MSR_IA32_VMX_TRUE_ENTRY_CTLS, entry),
};

static int vml_read_caps_msrs(struct vml_cpu *c, const struct vml_msr_slot *s,
			      size_t n)
{
	size_t i;
	int err;

	for (i = 0; i < n; i++) {
		err = vml_read_caps_msr(c, s[i].msr,
					(u64 *)((char *)&c->caps + s[i].offset));
		if (err)
			return err;
	}
	return 0;
}

int vml_caps_check(struct vml_cpu *c)
{
	struct vml_caps *k = &c->caps;
	struct vml_host_tables t;
	unsigned long cr0, cr4;
	u64 need;
	int err;

	c->stage = VML_ST_CHECK;

	if (!(cpuid_ecx(1) & (1u << 5)))
		return vml_decline(c, VML_E_NO_VMX, "no_vmx");

	/*
	 * IA32_FEATURE_CONTROL exists whenever CPUID reports VMX. Read it before
	 * the kernel's flag: Linux (5.6+) clears X86_FEATURE_VMX *because* the
	 * MSR is locked with VMX off, and the refusal should name that cause.
	 */
	err = vml_read_caps_msr(c, VML_MSR_IA32_FEATURE_CONTROL, &k->feature_control);
	if (err)
		return err;
	/*
	 * VMXON checks the enable bit for where it executes (SDM 24.7): "VMX
	 * inside SMX" in SMX operation (a TXT measured launch, GETSEC[SENTER]),
	 * "outside SMX" otherwise.  SMX operation needs CR4.SMXE, so CR4.SMXE
	 * clear means outside SMX; with CR4.SMXE set we require the inside-SMX
	 * bit (the one VMXON will test if the launch was measured).
	 */
	k->smx = !!(vml_read_cr4() & X86_CR4_SMXE);
	need = k->smx ? VML_FEATURE_CONTROL_VMX_INSIDE_SMX :
			VML_FEATURE_CONTROL_VMX_OUTSIDE_SMX;
	if (!(k->feature_control & VML_FEATURE_CONTROL_LOCKED))
		return vml_decline(c, VML_E_FC_UNLOCKED, "feature_control_unlocked");
	if (!(k->feature_control & need))
		return k->smx ?
			vml_decline(c, VML_E_FC_SMX_OFF, "vmx_disabled_in_smx") :
			vml_decline(c, VML_E_FC_VMX_OFF, "vmx_disabled_by_bios");
	if (!this_cpu_has(X86_FEATURE_VMX))
		return vml_decline(c, VML_E_VMX_FLAG_OFF, "vmx_disabled_by_kernel");

	/* Somebody else (kvm_intel, another hypervisor) is in VMX operation. */
	if (vml_read_cr4() & X86_CR4_VMXE)
		return vml_decline(c, VML_E_VMX_BUSY, "vmx_busy");

	/*
	 * With FRED, NMIs and #MC are not delivered through the IDT: the
	 * "int $2"/"int $18" re-delivery after an NMI or #MC exit would be
	 * wrong, so we do not run at all (Bochs and our CPUs have no FRED).
	 */
	if (vml_read_cr4() & X86_CR4_FRED)
		return vml_decline(c, VML_E_FRED, "fred_enabled");

	/*
	 * A VM exit loads FS/GS from HOST_FS/GS_SELECTOR, which must have
	 * RPL = TI = 0 (SDM 26.2.3), and the bases from HOST_FS/GS_BASE.  A
	 * selector with RPL or TI bits could not come back as it was (and
	 * reloading GS by hand would clobber the kernel's GS base): decline.
	 * Our runs happen in cpuhp kernel threads, whose FS/GS are 0.
	 */
	vml_store_host_tables(&t);
	if ((t.fs | t.gs) & 7)
		return vml_decline(c, VML_E_HOST_SEL, "host_fs_gs_selector");

	err = vml_read_caps_msr(c, VML_MSR_IA32_VMX_BASIC, &k->basic);
	if (err)
		return err;
	k->revision = k->basic & VML_VMX_BASIC_REVISION_MASK;
	k->region_size = (k->basic >> VML_VMX_BASIC_REGION_SIZE_SHIFT) &
			 VML_VMX_BASIC_REGION_SIZE_MASK;
	k->memtype = (k->basic >> VML_VMX_BASIC_MEMTYPE_SHIFT) &
		     VML_VMX_BASIC_MEMTYPE_MASK;
	k->true_ctls = !!(k->basic & VML_VMX_BASIC_TRUE_CTLS);
	k->physaddr_32bit = !!(k->basic & VML_VMX_BASIC_PHYSADDR_32BIT);
	if (k->region_size == 0 || k->region_size > PAGE_SIZE)
		return vml_decline(c, VML_E_VMCS_SIZE, "vmcs_region_too_large");
	if (k->memtype != VML_VMX_BASIC_MEMTYPE_WB)
		return vml_decline(c, VML_E_VMCS_MEMTYPE, "vmcs_memtype_not_wb");

	err = vml_read_caps_msrs(c, fixed_msrs, ARRAY_SIZE(fixed_msrs));
	if (err)
		return err;

	cr0 = vml_read_cr0();
	cr4 = vml_read_cr4() | X86_CR4_VMXE;
	if (!vml_cr_fixed_ok(cr0, k->cr0_fixed0, k->cr0_fixed1))
		return vml_decline(c, VML_E_CR0_FIXED, "cr0_fixed_bits");
	if (!vml_cr_fixed_ok(cr4, k->cr4_fixed0, k->cr4_fixed1))
		return vml_decline(c, VML_E_CR4_FIXED, "cr4_fixed_bits");

	/* SDM A.3: with VMX_BASIC bit 55 the TRUE_* MSRs give the real allowed-0s. */
	err = vml_read_caps_msrs(c, k->true_ctls ? true_ctl_msrs : ctl_msrs,
				 ARRAY_SIZE(ctl_msrs));
	if (err)
		return err;

	c->result = VML_RES_OK;
	return 0;
}

/* SDM A.3-A.5: bits 31:0 are allowed-0 settings, bits 63:32 allowed-1. */
static u32 vml_adjust(u32 wanted, u64 cap)
{
	u32 allowed0 = (u32)cap;	/* 1 here: must be 1 */
	u32 allowed1 = (u32)(cap >> 32);	/* 0 here: must be 0 */

	return (wanted | allowed0) & allowed1;
}

static bool vml_allowed1(u64 cap, u32 bits)
{
	return ((u32)(cap >> 32) & bits) == bits;
}

int vml_controls_compute(struct vml_cpu *c, enum vml_break brk)
{
	const struct vml_caps *k = &c->caps;
	struct vml_controls *t = &c->ctl;
	u32 exit_want = VMX_EXIT_HOST_ADDR_SPACE_SIZE;
	u32 entry_want = VMX_ENTRY_IA32E_MODE_GUEST;

	/*
	 * Load EFER on both sides only if both are allowed (Penryn has
	 * neither); saving it is a bonus when allowed.
	 */
	t->efer = vml_allowed1(k->exit, VMX_EXIT_LOAD_IA32_EFER) &&
		  vml_allowed1(k->entry, VMX_ENTRY_LOAD_IA32_EFER);
	if (t->efer) {
		exit_want |= VMX_EXIT_LOAD_IA32_EFER;
		if (vml_allowed1(k->exit, VMX_EXIT_SAVE_IA32_EFER))
			exit_want |= VMX_EXIT_SAVE_IA32_EFER;
		entry_want |= VMX_ENTRY_LOAD_IA32_EFER;
	}

	/*
	 * IRQs are off for the whole run: no external-interrupt exiting.  NMI
	 * exiting: an NMI during VM entry or in the guest exits (reason 0,
	 * type NMI) instead of running the host's NMI handler in VMX non-root
	 * operation; vml_window.c re-delivers it to the host at once.
	 */
	t->pin = vml_adjust(VMX_PIN_NMI_EXITING, k->pin);
	t->nmi_exiting = !!(t->pin & VMX_PIN_NMI_EXITING);
	t->proc = vml_adjust(VMX_PROC_USE_MSR_BITMAPS | VMX_PROC_HLT_EXITING, k->proc);
	t->exit = vml_adjust(exit_want, k->exit);
	t->entry = vml_adjust(entry_want, k->entry);
	t->msr_bitmap = !!(t->proc & VMX_PROC_USE_MSR_BITMAPS);

	if (!(t->exit & VMX_EXIT_HOST_ADDR_SPACE_SIZE) ||
	    !(t->entry & VMX_ENTRY_IA32E_MODE_GUEST)) {
		c->stage = VML_ST_CHECK;
		return vml_decline(c, VML_E_CTLS, "ia32e_controls_unsupported");
	}

	/* The deliberate breakage asked for with break_field=. */
	if (brk == VML_BREAK_HOST_ADDR_SPACE_SIZE)
		t->exit &= ~VMX_EXIT_HOST_ADDR_SPACE_SIZE;

	return 0;
}
