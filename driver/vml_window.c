// SPDX-License-Identifier: GPL-2.0
/*
 * Middle layer: the IRQs-off launch window of one CPU (called by
 * vml_cpu_run() with preemption and local interrupts disabled).
 *
 *   [IRQs off] CR4.VMXE -> VMXON -> VMCLEAR -> VMPTRLD -> VMCS -> VMLAUNCH
 *   -> exit (NMI / #MC exits handed to the kernel, guest resumed)
 *   -> VMCALL exit [-> VMRESUME round trips] -> then either
 *     - hold mode (cfg->hold): nothing more; VMX stays on (VMXON held, our
 *       VMCS current) until vml_cpu_release() runs on the CPU; or
 *     - window mode, and every failure path: VMCLEAR -> VMXOFF -> CR4.VMXE
 *       cleared before the window ends.
 *
 * Nothing is printed here: the outcome goes to struct vml_cpu and the top
 * layer prints it.  Everything comes in as arguments; no globals.
 */
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/io.h>
#include <asm/msr.h>
#include <asm/processor-flags.h>

#include "vml_cpu.h"
#include "vml_window.h"
#include "vmcs_setup.h"
#include "vmx_sdm.h"
#include "vmcs_access.h"
#include "compat.h"

/* Record a failing VMX instruction at @stage. */
static int vml_fail(struct vml_cpu *c, enum vml_stage stage, int rc, int err)
{
	c->stage = stage;
	c->result = VML_RES_FAIL;
	c->rc = rc;
	if (rc == VML_RC_FAULT)
		err = VML_E_FAULT;
	c->err = err;
	if (rc == VML_RC_FAIL_VALID)
		c->insn_error = vml_insn_error();	/* VMXON's too (e.g. 15) */
	return err;
}

/*
 * Events the exit intercepted on the host's behalf.  Both are handed to
 * the kernel at once, on this CPU, IRQs off, before anything else runs
 * here (README "NMIs and machine checks"):
 *   - NMI (pin-based NMI exiting): "int $2" runs the kernel's NMI handler
 *     as for a hardware NMI; its IRET ends the NMI blocking the exit left.
 *   - #MC in the guest (exception bitmap bit 18) and exit reason 41 (#MC
 *     during VM entry): the kernel's machine-check handler logs it and
 *     clears MCIP (do_machine_check() where exported, else "int $18").
 */
static void vml_forward_mc(void)
{
	unsigned long ip = 0, sp = 0, fl = 0;

	vml_vmcs_readnat(VMCS_GUEST_RIP, &ip);
	vml_vmcs_readnat(VMCS_GUEST_RSP, &sp);
	vml_vmcs_readnat(VMCS_GUEST_RFLAGS, &fl);
	vml_forward_machine_check(ip, sp, fl);
}

enum vml_exit_kind { VML_EXIT_DONE, VML_EXIT_RESUME };

static int vml_read_exit(struct vml_cpu *c)
{
	unsigned long v = 0;

	vml_vmcs_readnat(VMCS_EXIT_QUALIFICATION, &v);
	c->qual = v;
	vml_vmcs_read32(VMCS_VM_EXIT_INSTRUCTION_LEN, &c->insn_len);
	vml_vmcs_readnat(VMCS_GUEST_RIP, &v);
	c->rip_off = v - (unsigned long)vml_guest_entry;

	c->stage = VML_ST_EXIT;
	if (c->exit_reason & VMX_EXIT_REASON_ENTRY_FAILURE) {
		c->result = VML_RES_FAIL;
		c->err = VML_E_ENTRY_FAILURE;
		return c->err;
	}
	if ((c->exit_reason & VMX_EXIT_REASON_BASIC_MASK) != VMX_EXIT_BASIC_VMCALL) {
		c->result = VML_RES_FAIL;
		c->err = VML_E_UNEXPECTED_EXIT;
		return c->err;
	}
	c->result = VML_RES_OK;
	return 0;
}

/*
 * Right after an exit: read the reason and the interruption information
 * and hand NMIs and machine checks to the kernel.  VML_EXIT_RESUME: the
 * exit was only that event; the guest (which did not get to its VMCALL
 * yet) is resumed.
 */
static enum vml_exit_kind vml_handle_event_exit(struct vml_cpu *c)
{
	u32 basic, type, vector;

	c->exit_reason = 0;
	c->intr_info = 0;
	vml_vmcs_read32(VMCS_EXIT_REASON, &c->exit_reason);
	vml_vmcs_read32(VMCS_VM_EXIT_INTR_INFO, &c->intr_info);
	basic = c->exit_reason & VMX_EXIT_REASON_BASIC_MASK;

	if (c->exit_reason & VMX_EXIT_REASON_ENTRY_FAILURE) {
		if (basic == VMX_EXIT_BASIC_MACHINE_CHECK) {
			vml_forward_mc();
			c->mces++;
		}
		return VML_EXIT_DONE;	/* the entry failed: reported as such */
	}
	if (basic != VMX_EXIT_BASIC_EXCEPTION_OR_NMI ||
	    !(c->intr_info & VMX_INTR_INFO_VALID))
		return VML_EXIT_DONE;

	type = c->intr_info & VMX_INTR_INFO_TYPE_MASK;
	vector = c->intr_info & VMX_INTR_INFO_VECTOR_MASK;
	if (type == VMX_INTR_INFO_TYPE_NMI) {
		vml_raise_nmi();
		c->nmis++;
	} else if (type == VMX_INTR_INFO_TYPE_HW_EXCEPTION &&
		   vector == VMX_VECTOR_MC) {
		vml_forward_mc();
		c->mces++;
	} else {
		return VML_EXIT_DONE;	/* a guest exception: unexpected exit */
	}
	return c->nmis + c->mces > VML_MAX_EVENT_EXITS ? VML_EXIT_DONE
							: VML_EXIT_RESUME;
}

/*
 * One VMLAUNCH (resume == 0) or VMRESUME, until an exit that is not an
 * NMI/#MC we handled; the host state is restored after every exit.
 */
static int vml_enter(struct vml_cpu *c, unsigned long resume)
{
	int rc;

	for (;;) {
		c->insn = resume ? "vmresume" : "vmlaunch";
		rc = vml_enter_guest(resume);
		if (rc & VML_RC_HOST_RSP) {
			/* vml_enter_guest()'s own VMWRITE of HOST_RSP failed. */
			c->field = VMCS_HOST_RSP;
			return vml_fail(c, VML_ST_VMCS, rc & VML_RC_MASK, VML_E_VMWRITE);
		}
		if (rc != VML_RC_OK)
			return vml_fail(c, VML_ST_VMLAUNCH, rc,
					rc == VML_RC_FAIL_VALID ? VML_E_LAUNCH_VALID
								: VML_E_LAUNCH_INVALID);
		/* A VM exit, or a VM-entry failure (which loads host state too). */
		vml_host_restore(c);
		if (vml_handle_event_exit(c) == VML_EXIT_DONE)
			break;
		/* The VMCS is launched now (an entry failure never resumes). */
		c->entered = true;
		resume = 1;
	}
	if (!(c->exit_reason & VMX_EXIT_REASON_ENTRY_FAILURE))
		c->entered = true;
	return vml_read_exit(c);
}

/* VMRESUME round trips, each timed from before the entry to after the exit. */
static int vml_roundtrip_loop(struct vml_cpu *c, u32 n)
{
	unsigned long rip;
	u64 t0, t1;
	u32 i;
	int err;

	for (i = 0; i < n; i++) {
		rip = (unsigned long)vml_guest_entry + c->rip_off + c->insn_len;
		if (vml_vmcs_writenat(VMCS_GUEST_RIP, rip) != VML_RC_OK) {
			c->field = VMCS_GUEST_RIP;
			return vml_fail(c, VML_ST_VMCS, VML_RC_FAIL_VALID, VML_E_VMWRITE);
		}
		t0 = rdtsc_ordered();
		err = vml_enter(c, 1);
		t1 = rdtsc_ordered();
		if (err)
			return err;
		c->cycles[i] = t1 - t0;
		c->roundtrips = i + 1;
	}
	return 0;
}

/* The IRQs-off window.  Returns 0 or the errno of the failure path. */
int vml_window(struct vml_cpu *c, const struct vml_config *cfg)
{
	u64 vmxon_pa = page_to_phys(c->pages[VML_PAGE_VMXON]);
	u64 vmcs_pa = page_to_phys(c->pages[VML_PAGE_VMCS]);
	unsigned long cr4;
	int err = 0, rc;

	/* Re-check under IRQs off: kvm_intel enables VMX from an IPI. */
	cr4 = vml_read_cr4();
	if (cr4 & X86_CR4_VMXE) {
		c->stage = VML_ST_CHECK;
		c->result = VML_RES_DECLINED;
		c->why = "vmx_busy";
		c->err = VML_E_VMX_BUSY;
		return c->err;
	}

	vml_pt_handle_vmx(1);
	vml_cr4_set_vmxe(cr4);

	c->stage = VML_ST_VMXON;
	rc = vml_vmxon(&vmxon_pa);
	if (rc == VML_RC_FAIL_VALID) {
		/*
		 * VMfailValid (error 15): the CPU is already in VMX operation,
		 * someone else's, although CR4.VMXE was clear just now (only a
		 * broken hypervisor below us can do that).  Do not VMXOFF what
		 * is not ours, and do not clear VMXE in VMX operation (#GP).
		 */
		err = vml_fail(c, VML_ST_VMXON, rc, VML_E_VMXON);
		goto out_pt;
	}
	if (rc != VML_RC_OK) {
		err = vml_fail(c, VML_ST_VMXON, rc, VML_E_VMXON);
		goto out_cr4;
	}
	c->vmx_on = true;

	c->stage = VML_ST_VMCLEAR;
	rc = vml_vmclear(&vmcs_pa);
	if (rc != VML_RC_OK) {
		err = vml_fail(c, VML_ST_VMCLEAR, rc, VML_E_VMCLEAR);
		goto out_vmxoff;
	}

	c->stage = VML_ST_VMPTRLD;
	rc = vml_vmptrld(&vmcs_pa);
	if (rc != VML_RC_OK) {
		err = vml_fail(c, VML_ST_VMPTRLD, rc, VML_E_VMPTRLD);
		goto out_vmclear;
	}

	c->stage = VML_ST_VMCS;
	vml_host_capture(c);
	err = vml_vmcs_fill(c, cfg->brk);
	if (err) {
		c->result = VML_RES_FAIL;
		c->err = err;
		goto out_vmclear;
	}

	c->stage = VML_ST_VMLAUNCH;
	err = vml_enter(c, 0);
	if (!err && cfg->roundtrips)
		err = vml_roundtrip_loop(c, cfg->roundtrips);

	if (!err && cfg->hold) {
		/*
		 * Hold mode: stay in VMX operation with this VMCS current (and
		 * launched), as KVM keeps its VMCSs loaded.  CR4.VMXE was set
		 * with cr4_set_bits(), so the kernel's CR4 shadow has it and
		 * every later CR4 write keeps it.  vml_cpu_release() does the
		 * VMCLEAR, VMXOFF and cr4_clear_bits() on this CPU later.
		 */
		c->vmxe_after = !!(vml_read_cr4() & X86_CR4_VMXE);
		return 0;
	}

out_vmclear:
	c->teardown_insn = "vmclear";
	c->teardown_rc = vml_vmclear(&vmcs_pa);
	if (c->teardown_rc == VML_RC_FAIL_VALID)
		c->teardown_error = vml_insn_error();
out_vmxoff:
	{
		u32 e = 0;

		rc = vml_vmxoff_clear_vmxe(c, &e);
		if (c->teardown_rc == VML_RC_OK) {
			c->teardown_insn = "vmxoff";
			c->teardown_rc = rc;
			c->teardown_error = e;
		}
	}
	if (!c->vmx_on)
		c->left_at = VML_AT_LAUNCH;
	goto out_pt;
out_cr4:
	vml_cr4_clear_vmxe(cr4);
	c->left_at = VML_AT_LAUNCH;
out_pt:
	vml_pt_handle_vmx(0);
	c->vmxe_after = !!(vml_read_cr4() & X86_CR4_VMXE);
	if (!err && c->teardown_rc != VML_RC_OK) {
		c->stage = VML_ST_VMXOFF;
		c->result = VML_RES_FAIL;
		c->err = VML_E_VMXOFF;
		err = c->err;
	}
	return err;
}
