// SPDX-License-Identifier: GPL-2.0
/*
 * One CPU's run: check, allocate, then in one IRQs-off window
 * CR4.VMXE -> VMXON -> VMCLEAR -> VMPTRLD -> VMCS -> VMLAUNCH -> VMCALL exit
 * [-> VMRESUME round trips], then either
 *   - hold mode (cr4_mode=helpers, hold_vmx=auto|1): nothing more; VMX stays
 *     on (VMXON held, our VMCS current) until vml_cpu_release() runs on the
 *     CPU at rmmod, CPU offline, reboot or suspend; or
 *   - window mode (irqsoff_raw, hold_vmx=0) and every failure path:
 *     VMCLEAR -> VMXOFF -> CR4.VMXE cleared before the window ends.
 * Nothing is printed inside the window; vml_cpu_report() prints the
 * outcome afterwards.
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/kernel.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/io.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/irqflags.h>
#include <linux/preempt.h>
#include <linux/topology.h>
#include <asm/msr.h>
#include <asm/processor-flags.h>

#include "vmlaunch.h"
#include "vmx_caps.h"
#include "vmcs_setup.h"
#include "vmx_errors.h"
#include "vmcs_fields.h"
#include "compat.h"

static const char *const stage_names[VML_ST_COUNT] = {
	[VML_ST_NONE]     = "none",
	[VML_ST_CHECK]    = "check",
	[VML_ST_ALLOC]    = "alloc",
	[VML_ST_VMXON]    = "vmxon",
	[VML_ST_VMCLEAR]  = "vmclear",
	[VML_ST_VMPTRLD]  = "vmptrld",
	[VML_ST_VMCS]     = "vmcs",
	[VML_ST_VMLAUNCH] = "vmlaunch",
	[VML_ST_EXIT]     = "exit",
	[VML_ST_VMXOFF]   = "vmxoff",
};

const char *vml_stage_name(enum vml_stage s)
{
	return s < VML_ST_COUNT ? stage_names[s] : "none";
}

const char *vml_result_name(enum vml_result r)
{
	switch (r) {
	case VML_RES_OK:	return "ok";
	case VML_RES_FAIL:	return "FAIL";
	case VML_RES_DECLINED:	return "declined";
	default:		return "none";
	}
}

const char *vml_rc_kind(int rc)
{
	switch (rc) {
	case VML_RC_OK:			return "none";
	case VML_RC_FAIL_INVALID:	return "VMfailInvalid";
	case VML_RC_FAIL_VALID:		return "VMfailValid";
	case VML_RC_FAULT:		return "fault";
	case VML_RC_HOST_RSP:		return "VMfail";
	default:			return "unknown";
	}
}

const char *vml_cr4_mode(void)
{
	return vml_cr4_mode_name();
}

/* VMX can be held with IRQs on only where the CR4 shadow is kept true. */
bool vml_can_hold(void)
{
	return vml_cr4_helpers();
}

static const char *const at_names[] = {
	[VML_AT_NONE]     = "none",
	[VML_AT_LAUNCH]   = "launch",
	[VML_AT_UNLOAD]   = "unload",
	[VML_AT_ROLLBACK] = "rollback",
	[VML_AT_HOTPLUG]  = "hotplug",
	[VML_AT_REBOOT]   = "reboot",
	[VML_AT_SUSPEND]  = "suspend",
};

const char *vml_at_name(enum vml_at at)
{
	return at < ARRAY_SIZE(at_names) ? at_names[at] : "none";
}

static int vml_alloc(unsigned int cpu, struct vml_cpu *c)
{
	gfp_t gfp = GFP_KERNEL | __GFP_ZERO;
	int node = cpu_to_node(cpu);
	int i;

	c->stage = VML_ST_ALLOC;
	for (i = 0; i < VML_NPAGES; i++) {
		gfp_t g = gfp;

		/* VMX_BASIC bit 48: VMX structures below 4 GiB. */
		if (c->caps.physaddr_32bit && i <= VML_PAGE_MSR_BITMAP)
			g |= GFP_DMA32;
		c->pages[i] = alloc_pages_node(node, g, 0);
		if (!c->pages[i]) {
			c->result = VML_RES_FAIL;
			c->err = VML_E_NOMEM;
			return VML_E_NOMEM;
		}
	}
	if (vml_roundtrips) {
		c->cycles = kvmalloc_array(vml_roundtrips, sizeof(u64), GFP_KERNEL);
		if (!c->cycles) {
			c->result = VML_RES_FAIL;
			c->err = VML_E_NOMEM;
			return VML_E_NOMEM;
		}
	}
	/* Revision identifier in the first 31 bits, bit 31 (shadow VMCS) 0. */
	*(u32 *)page_address(c->pages[VML_PAGE_VMXON]) = c->caps.revision;
	*(u32 *)page_address(c->pages[VML_PAGE_VMCS]) = c->caps.revision;
	c->result = VML_RES_OK;
	return 0;
}

unsigned int vml_cpu_free(struct vml_cpu *c)
{
	unsigned int n = 0;
	int i;

	for (i = 0; i < VML_NPAGES; i++) {
		if (!c->pages[i])
			continue;
		/*
		 * Still in VMX operation (a VMXOFF failed): the processor may
		 * still use the VMXON region and the VMCS.  Leak them rather
		 * than hand them back to the page allocator.
		 */
		if (c->vmx_on && (i == VML_PAGE_VMXON || i == VML_PAGE_VMCS)) {
			c->pages[i] = NULL;
			continue;
		}
		__free_page(c->pages[i]);
		c->pages[i] = NULL;
		n++;
	}
	kvfree(c->cycles);
	c->cycles = NULL;
	return n;
}

/* Record a failing VMX instruction at @stage. */
static int vml_fail(struct vml_cpu *c, enum vml_stage stage, int rc, int err)
{
	unsigned long e;

	c->stage = stage;
	c->result = VML_RES_FAIL;
	c->rc = rc;
	if (rc == VML_RC_FAULT)
		err = VML_E_FAULT;
	c->err = err;
	if (rc == VML_RC_FAIL_VALID && stage > VML_ST_VMXON &&
	    vml_vmread(VMCS_VM_INSTRUCTION_ERROR, &e) == VML_RC_OK)
		c->insn_error = e;
	return err;
}

static int vml_read_exit(struct vml_cpu *c)
{
	unsigned long v = 0;

	vml_vmread(VMCS_EXIT_REASON, &v);
	c->exit_reason = v;
	v = 0;
	vml_vmread(VMCS_EXIT_QUALIFICATION, &v);
	c->qual = v;
	v = 0;
	vml_vmread(VMCS_VM_EXIT_INSTRUCTION_LEN, &v);
	c->insn_len = v;
	v = 0;
	vml_vmread(VMCS_VM_EXIT_INTR_INFO, &v);
	c->intr_info = v;
	v = 0;
	vml_vmread(VMCS_GUEST_RIP, &v);
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

/* One VMLAUNCH (resume == 0) or VMRESUME, with the host state restored. */
static int vml_enter(struct vml_cpu *c, unsigned long resume)
{
	int rc;

	c->insn = resume ? "vmresume" : "vmlaunch";
	rc = vml_enter_guest(resume);
	if (rc == VML_RC_OK) {
		vml_host_restore(c);
		return vml_read_exit(c);
	}
	if (rc == VML_RC_HOST_RSP) {
		/* The VMWRITE of HOST_RSP inside vml_enter_guest() failed. */
		c->field = VMCS_HOST_RSP;
		vml_fail(c, VML_ST_VMCS, VML_RC_FAIL_VALID, VML_E_VMWRITE);
		return c->err;
	}
	return vml_fail(c, VML_ST_VMLAUNCH, rc,
			rc == VML_RC_FAIL_VALID ? VML_E_LAUNCH_VALID
						: VML_E_LAUNCH_INVALID);
}

/* VMRESUME round trips, each timed from before the entry to after the exit. */
static int vml_roundtrip_loop(struct vml_cpu *c)
{
	unsigned long rip;
	u64 t0, t1;
	u32 i;
	int err;

	for (i = 0; i < vml_roundtrips; i++) {
		rip = (unsigned long)vml_guest_entry + c->rip_off + c->insn_len;
		if (vml_vmwrite(VMCS_GUEST_RIP, rip) != VML_RC_OK) {
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
static int vml_window(struct vml_cpu *c)
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
	err = vml_vmcs_fill(c, vml_break_field);
	if (err) {
		c->result = VML_RES_FAIL;
		c->err = err;
		goto out_vmclear;
	}

	c->stage = VML_ST_VMLAUNCH;
	err = vml_enter(c, 0);
	if (!err && vml_roundtrips)
		err = vml_roundtrip_loop(c);

	if (!err && vml_hold) {
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
out_vmxoff:
	rc = vml_vmxoff();
	if (c->teardown_rc == VML_RC_OK) {
		c->teardown_insn = "vmxoff";
		c->teardown_rc = rc;
	}
	/*
	 * Clearing CR4.VMXE while still in VMX operation raises #GP: if
	 * VMXOFF failed (only possible under a dual-monitor SMM treatment),
	 * leave CR4 alone and report it.
	 */
	if (rc != VML_RC_OK)
		goto out_pt;
	c->vmx_on = false;
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

/*
 * Leave the VMX operation held since the launch (hold mode): VMCLEAR our
 * VMCS (writes any processor-cached VMCS data back and makes it not current),
 * VMXOFF, cr4_clear_bits(X86_CR4_VMXE), intel_pt_handle_vmx(0).  Must run on
 * the CPU concerned with IRQs off: from smp_call_function_single() or
 * on_each_cpu() (cpuhp offline, reboot notifier) or from the syscore
 * suspend callback.  On a CPU that holds nothing it only reads CR4.  The
 * outcome goes to c->rel; vml_report_release() prints it afterwards.
 */
void vml_cpu_release(struct vml_cpu *c, enum vml_at at)
{
	struct vml_release *r = &c->rel;
	u64 vmcs_pa;
	int rc;

	memset(r, 0, sizeof(*r));
	r->at = at;
	r->held = c->vmx_on;
	r->unreported = true;
	if (!c->vmx_on)
		goto out;

	if (!(vml_read_cr4() & X86_CR4_VMXE)) {
		/*
		 * CR4.VMXE cannot be cleared in VMX operation, so someone else
		 * has executed VMXOFF on this CPU.  Nothing to undo but PT.
		 */
		r->lost = true;
		c->vmx_on = false;
		c->left_at = at;
		vml_pt_handle_vmx(0);
		goto out;
	}

	vmcs_pa = page_to_phys(c->pages[VML_PAGE_VMCS]);
	rc = vml_vmclear(&vmcs_pa);
	if (rc != VML_RC_OK) {
		r->insn = "vmclear";
		r->rc = rc;
	}
	rc = vml_vmxoff();
	if (rc != VML_RC_OK) {
		/* Still in VMX operation: clearing CR4.VMXE would #GP. */
		if (!r->insn) {
			r->insn = "vmxoff";
			r->rc = rc;
		}
		goto out;
	}
	c->vmx_on = false;
	vml_cr4_clear_vmxe(vml_read_cr4());
	vml_pt_handle_vmx(0);
	c->left_at = at;
out:
	r->vmxe = !!(vml_read_cr4() & X86_CR4_VMXE);
}

/* Why a CPU that holds nothing has nothing to turn off (free text). */
static void vml_not_held_why(unsigned int cpu, const struct vml_cpu *c,
			     char *buf, size_t size)
{
	switch (c->left_at) {
	case VML_AT_LAUNCH:
		if (c->err)
			scnprintf(buf, size, "VMX was left at load (the launch failed, errno=%d)",
				  c->err);
		else if (!vml_can_hold())
			scnprintf(buf, size, "VMX was left at load (%s mode)",
				  vml_cr4_mode());
		else
			scnprintf(buf, size, "VMX was left at load (hold_vmx=0)");
		break;
	case VML_AT_NONE:
		if (c->attempted)
			scnprintf(buf, size, "CPU %u never entered VMX operation (stage=%s result=%s)",
				  cpu, vml_stage_name(c->stage),
				  vml_result_name(c->result));
		else
			scnprintf(buf, size, "CPU %u never ran a launch", cpu);
		break;
	default:
		scnprintf(buf, size, "VMX was already left at %s",
			  vml_at_name(c->left_at));
		break;
	}
}

/* Print the outcome of vml_cpu_release() (IRQs may be off: printk only). */
void vml_report_release(unsigned int cpu, struct vml_cpu *c)
{
	struct vml_release *r = &c->rel;
	const char *at = vml_at_name(r->at);
	char why[96];

	if (!r->unreported)
		return;
	r->unreported = false;

	if (r->ipi_err) {
		pr_err("cpu=%u vmxoff FAIL errno=%d held=%d at=%s -- FAIL: could not run the teardown on CPU %u (errno=%d)\n",
		       cpu, VML_E_VMXOFF, r->held, at, cpu, r->ipi_err);
	} else if (r->lost) {
		pr_err("cpu=%u vmxoff FAIL errno=%d cr4.vmxe=%d held=1 at=%s -- FAIL: CPU %u held VMX since load but CR4.VMXE was clear: another agent left VMX operation\n",
		       cpu, VML_E_VMXOFF, r->vmxe, at, cpu);
	} else if (r->held && r->insn) {
		pr_err("cpu=%u vmxoff FAIL errno=%d kind=%s insn=%s cr4.vmxe=%d at=%s -- FAIL: %s during teardown%s\n",
		       cpu, VML_E_VMXOFF, vml_rc_kind(r->rc), r->insn, r->vmxe,
		       at, r->insn,
		       c->vmx_on ? "; still in VMX operation, VMXON region and VMCS kept allocated" : "");
	} else if (r->held) {
		pr_info("cpu=%u vmxoff ok cr4.vmxe=%d at=%s -- vmclear+vmxoff done now, cr4.vmxe cleared (VMX was held since load)\n",
			cpu, r->vmxe, at);
	} else if (r->vmxe) {
		pr_info("cpu=%u vmxoff info cr4.vmxe=1 at=%s held=0 owner=other -- CR4.VMXE is set by another VMX user now, not by vmlaunch; left alone\n",
			cpu, at);
	} else {
		vml_not_held_why(cpu, c, why, sizeof(why));
		pr_info("cpu=%u vmxoff info cr4.vmxe=0 at=%s held=0 -- %s: nothing to turn off\n",
			cpu, at, why);
	}
}

static int vml_cmp_u64(const void *a, const void *b)
{
	u64 x = *(const u64 *)a, y = *(const u64 *)b;

	return x < y ? -1 : x > y;
}

int vml_cpu_run(unsigned int cpu, struct vml_cpu *c)
{
	unsigned long flags;
	int err;

	c->attempted = true;
	c->teardown_rc = VML_RC_OK;
	c->teardown_insn = NULL;

	err = vml_caps_check(c);
	if (err)
		return err;
	err = vml_controls_compute(c, vml_break_field);
	if (err)
		return err;
	err = vml_alloc(cpu, c);
	if (err)
		return err;

	/*
	 * Everything from CR4.VMXE to its clearing happens on this CPU with
	 * preemption and local interrupts disabled (the cpuhp thread is
	 * bound to @cpu anyway).
	 */
	preempt_disable();
	local_irq_save(flags);
	err = vml_window(c);
	local_irq_restore(flags);
	preempt_enable();

	if (c->roundtrips) {
		sort(c->cycles, c->roundtrips, sizeof(u64), vml_cmp_u64, NULL);
		c->cycles_min = c->cycles[0];
		c->cycles_median = c->cycles[c->roundtrips / 2];
	}
	kvfree(c->cycles);
	c->cycles = NULL;
	return err;
}

/* ---- reporting (after the window, IRQs on) ---- */

static void vml_report_check(unsigned int cpu, const struct vml_cpu *c)
{
	const struct vml_caps *k = &c->caps;

	pr_info("cpu=%u check ok vmx_basic=0x%llx rev=0x%x true_ctls=%d region_size=%u memtype=%u feature_control=0x%llx cr4_mode=%s\n",
		cpu, k->basic, k->revision, k->true_ctls, k->region_size,
		k->memtype, k->feature_control, vml_cr4_mode());
}

static void vml_report_vmx_fail(unsigned int cpu, const struct vml_cpu *c,
				const char *insn)
{
	if (c->rc == VML_RC_FAIL_VALID)
		pr_err("cpu=%u %s FAIL errno=%d kind=VMfailValid error=%u insn=%s -- FAIL: VM-instruction error %u: %s\n",
		       cpu, vml_stage_name(c->stage), c->err, c->insn_error,
		       insn, c->insn_error, vml_insn_error_name(c->insn_error));
	else if (c->rc == VML_RC_FAIL_INVALID)
		pr_err("cpu=%u %s FAIL errno=%d kind=VMfailInvalid insn=%s -- FAIL: %s: VMfailInvalid (no valid current VMCS / invalid pointer)\n",
		       cpu, vml_stage_name(c->stage), c->err, insn, insn);
	else
		pr_err("cpu=%u %s FAIL errno=%d kind=fault insn=%s -- FAIL: %s raised #UD/#GP\n",
		       cpu, vml_stage_name(c->stage), c->err, insn, insn);
}

static void vml_report_exit(unsigned int cpu, const struct vml_cpu *c)
{
	u32 basic = c->exit_reason & VMX_EXIT_REASON_BASIC_MASK;

	if (!(c->exit_reason & VMX_EXIT_REASON_ENTRY_FAILURE) &&
	    basic == VMX_EXIT_BASIC_VMCALL && !(c->err && c->stage == VML_ST_EXIT)) {
		pr_info("cpu=%u exit ok reason=0x%x basic=%u qual=0x%llx len=%u rip_off=0x%lx -- exit reason 0x%x (%s)\n",
			cpu, c->exit_reason, basic, c->qual, c->insn_len,
			c->rip_off, c->exit_reason, vml_exit_reason_name(basic));
		if (vml_roundtrips)
			pr_info("cpu=%u exit info roundtrips=%u cycles_min=%llu cycles_median=%llu -- VMRESUME/VMCALL round trips (entry to exit, TSC cycles)\n",
				cpu, c->roundtrips, c->cycles_min,
				c->cycles_median);
	} else if (c->exit_reason & VMX_EXIT_REASON_ENTRY_FAILURE) {
		pr_err("cpu=%u exit FAIL errno=%d reason=0x%x basic=%u qual=0x%llx insn=%s -- FAIL: VM-entry failure, exit reason %u: %s\n",
		       cpu, c->err, c->exit_reason, basic, c->qual, c->insn,
		       basic, vml_exit_reason_name(basic));
	} else {
		pr_err("cpu=%u exit FAIL errno=%d reason=0x%x basic=%u qual=0x%llx intr_info=0x%x rip_off=0x%lx insn=%s roundtrips=%u -- FAIL: unexpected exit reason %u (%s), expected 18 (VMCALL)\n",
		       cpu, c->err, c->exit_reason, basic, c->qual, c->intr_info,
		       c->rip_off, c->insn, c->roundtrips, basic,
		       vml_exit_reason_name(basic));
	}
}

/*
 * Print one line per stage reached, in stage order: "ok" for the stages
 * passed, the decoded FAIL/declined line for the stage that stopped us,
 * then the vmxoff line of the window's teardown.
 */
void vml_cpu_report(unsigned int cpu, const struct vml_cpu *c)
{
	const struct vml_controls *t = &c->ctl;
	enum vml_stage last = c->stage;
	bool failed = c->result != VML_RES_OK;
	enum vml_stage s;

	if (c->result == VML_RES_DECLINED &&
	    (c->err == VML_E_FC_VMX_OFF || c->err == VML_E_FC_UNLOCKED)) {
		pr_warn("cpu=%u %s declined errno=%d why=%s feature_control=0x%llx -- CPU %u declined: %s\n",
			cpu, vml_stage_name(c->stage), c->err, c->why,
			c->caps.feature_control, cpu, c->why);
		return;
	}
	if (c->result == VML_RES_DECLINED) {
		pr_warn("cpu=%u %s declined errno=%d why=%s -- CPU %u declined: %s\n",
			cpu, vml_stage_name(c->stage), c->err, c->why, cpu, c->why);
		if (c->stage <= VML_ST_CHECK)
			return;
	}
	if (c->result == VML_RES_FAIL && c->stage == VML_ST_CHECK) {
		pr_err("cpu=%u check FAIL errno=%d msr=0x%x -- FAIL: reading capability MSR 0x%x faulted\n",
		       cpu, c->err, c->field, c->field);
		return;
	}

	for (s = VML_ST_CHECK; s <= VML_ST_VMXOFF; s++) {
		bool here = failed && s == last;

		if (s > last)
			break;
		switch (s) {
		case VML_ST_CHECK:
			vml_report_check(cpu, c);
			break;
		case VML_ST_ALLOC:
			if (here) {
				pr_err("cpu=%u alloc FAIL errno=%d -- FAIL: out of memory\n",
				       cpu, c->err);
				return;
			}
			pr_info("cpu=%u alloc ok pages=%d dma32=%d\n", cpu,
				VML_NPAGES, c->caps.physaddr_32bit);
			break;
		case VML_ST_VMXON:
			if (here) {
				vml_report_vmx_fail(cpu, c, "vmxon");
				goto teardown;
			}
			pr_info("cpu=%u vmxon ok -- vmxon succeeded\n", cpu);
			break;
		case VML_ST_VMCLEAR:
			if (here) {
				vml_report_vmx_fail(cpu, c, "vmclear");
				goto teardown;
			}
			pr_info("cpu=%u vmclear ok\n", cpu);
			break;
		case VML_ST_VMPTRLD:
			if (here) {
				vml_report_vmx_fail(cpu, c, "vmptrld");
				goto teardown;
			}
			pr_info("cpu=%u vmptrld ok\n", cpu);
			break;
		case VML_ST_VMCS:
			if (here) {
				if (c->rc == VML_RC_FAIL_VALID)
					pr_err("cpu=%u vmcs FAIL errno=%d kind=VMfailValid error=%u field=0x%x -- FAIL: VMWRITE %s: VM-instruction error %u: %s\n",
					       cpu, c->err, c->insn_error, c->field,
					       vml_field_name(c->field), c->insn_error,
					       vml_insn_error_name(c->insn_error));
				else
					pr_err("cpu=%u vmcs FAIL errno=%d kind=%s field=0x%x -- FAIL: VMWRITE %s failed\n",
					       cpu, c->err, vml_rc_kind(c->rc), c->field,
					       vml_field_name(c->field));
				goto teardown;
			}
			pr_info("cpu=%u vmcs ok pin=0x%x proc=0x%x exit=0x%x entry=0x%x efer_ctls=%d msr_bitmap=%d break=%s\n",
				cpu, t->pin, t->proc, t->exit, t->entry, t->efer,
				t->msr_bitmap, vml_break_name(vml_break_field));
			break;
		case VML_ST_VMLAUNCH:
			if (here) {
				vml_report_vmx_fail(cpu, c, c->insn);
				goto teardown;
			}
			pr_info("cpu=%u vmlaunch ok -- vmlaunch entered the guest\n", cpu);
			break;
		case VML_ST_EXIT:
			vml_report_exit(cpu, c);
			break;
		default:
			break;
		}
	}

teardown:
	if (c->vmx_on && !failed) {
		/* Hold mode: no VMXOFF at launch; it happens at release. */
		pr_info("cpu=%u status info held=1 cr4.vmxe=%d -- VMX kept on: VMXON held, VMCS current, until rmmod, CPU offline, suspend or reboot\n",
			cpu, c->vmxe_after);
		return;
	}
	if (c->teardown_insn && c->teardown_rc != VML_RC_OK)
		pr_err("cpu=%u vmxoff FAIL errno=%d kind=%s insn=%s cr4.vmxe=%d at=launch -- FAIL: %s during teardown\n",
		       cpu, VML_E_VMXOFF, vml_rc_kind(c->teardown_rc),
		       c->teardown_insn, c->vmxe_after, c->teardown_insn);
	else if (last >= VML_ST_VMCLEAR)
		pr_info("cpu=%u vmxoff ok cr4.vmxe=%d at=launch -- vmclear+vmxoff done, cr4.vmxe cleared\n",
			cpu, c->vmxe_after);
	else
		pr_info("cpu=%u vmxoff ok cr4.vmxe=%d at=launch -- cr4.vmxe cleared (vmxon had failed, nothing to vmxoff)\n",
			cpu, c->vmxe_after);
}
