// SPDX-License-Identifier: GPL-2.0
/*
 * Top layer: print a CPU's record as the lines of docs/contract.md
 * section 1 (one decoded line per failure path), and format its sysfs line.
 * Reads the records; never changes what the state machine decided.
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/kernel.h>
#include <linux/printk.h>

#include "vmlaunch_report.h"
#include "vmx_errors.h"
#include "vmx_sdm.h"
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

/* The kind= values: VMfailInvalid | VMfailValid | fault (none: no failure). */
const char *vml_rc_kind(int rc)
{
	switch (rc & VML_RC_MASK) {
	case VML_RC_OK:			return "none";
	case VML_RC_FAIL_INVALID:	return "VMfailInvalid";
	case VML_RC_FAIL_VALID:		return "VMfailValid";
	case VML_RC_FAULT:		return "fault";
	default:			return "none";
	}
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

static const char *const break_names[] = {
	[VML_BREAK_NONE] = "none",
	[VML_BREAK_HOST_ADDR_SPACE_SIZE] = "host_addr_space_size",
	[VML_BREAK_GUEST_RFLAGS_BIT1] = "guest_rflags_bit1",
};

const char *vml_break_name(enum vml_break b)
{
	return b < ARRAY_SIZE(break_names) ? break_names[b] : "none";
}

/* ---- per-CPU run ---- */

static void vml_report_check(unsigned int cpu, const struct vml_cpu *c)
{
	const struct vml_caps *k = &c->caps;

	pr_info("cpu=%u check ok vmx_basic=0x%llx rev=0x%x true_ctls=%d region_size=%u memtype=%u feature_control=0x%llx cr4_mode=%s smx=%d\n",
		cpu, k->basic, k->revision, k->true_ctls, k->region_size,
		k->memtype, k->feature_control, vml_cr4_mode_name(), k->smx);
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

static void vml_report_exit(const struct vml_module *m, unsigned int cpu,
			    const struct vml_cpu *c)
{
	u32 basic = c->exit_reason & VMX_EXIT_REASON_BASIC_MASK;

	if (!c->err || c->stage != VML_ST_EXIT) {
		pr_info("cpu=%u exit ok reason=0x%x basic=%u qual=0x%llx len=%u rip_off=0x%lx nmis=%u mces=%u -- exit reason 0x%x (%s)\n",
			cpu, c->exit_reason, basic, c->qual, c->insn_len,
			c->rip_off, c->nmis, c->mces, c->exit_reason,
			vml_exit_reason_name(basic));
		if (m->cfg.roundtrips)
			pr_info("cpu=%u exit info roundtrips=%u cycles_min=%llu cycles_median=%llu -- VMRESUME/VMCALL round trips (entry to exit, TSC cycles)\n",
				cpu, c->roundtrips, c->cycles_min,
				c->cycles_median);
	} else if (c->exit_reason & VMX_EXIT_REASON_ENTRY_FAILURE) {
		pr_err("cpu=%u exit FAIL errno=%d reason=0x%x basic=%u qual=0x%llx insn=%s nmis=%u mces=%u -- FAIL: VM-entry failure, exit reason %u: %s%s%s\n",
		       cpu, c->err, c->exit_reason, basic, c->qual, c->insn,
		       c->nmis, c->mces, basic, vml_exit_reason_name(basic),
		       basic == VMX_EXIT_BASIC_MACHINE_CHECK ? "; handed to " : "",
		       basic == VMX_EXIT_BASIC_MACHINE_CHECK ? vml_mce_path_name() : "");
	} else {
		pr_err("cpu=%u exit FAIL errno=%d reason=0x%x basic=%u qual=0x%llx intr_info=0x%x rip_off=0x%lx insn=%s roundtrips=%u nmis=%u mces=%u -- FAIL: unexpected exit reason %u (%s), expected 18 (VMCALL)%s\n",
		       cpu, c->err, c->exit_reason, basic, c->qual, c->intr_info,
		       c->rip_off, c->insn, c->roundtrips, c->nmis, c->mces,
		       basic, vml_exit_reason_name(basic),
		       c->nmis + c->mces > VML_MAX_EVENT_EXITS ?
		       "; too many NMI/#MC exits in a row" : "");
	}
}

static void vml_report_teardown(unsigned int cpu, const struct vml_cpu *c,
				enum vml_stage last, bool failed)
{
	if (c->vmx_on && !failed) {
		/* Hold mode: no VMXOFF at launch; it happens at release. */
		pr_info("cpu=%u status info held=1 cr4.vmxe=%d -- VMX kept on: VMXON held, VMCS current, until rmmod, CPU offline, suspend or reboot\n",
			cpu, c->vmxe_after);
		return;
	}
	if (last == VML_ST_VMXON && c->rc == VML_RC_FAIL_VALID) {
		pr_err("cpu=%u vmxoff info cr4.vmxe=%d at=launch -- VMXON found the CPU in another agent's VMX operation: not ours to VMXOFF, and CR4.VMXE stays set (clearing it in VMX operation is #GP)\n",
		       cpu, c->vmxe_after);
		return;
	}
	if (c->teardown_insn && c->teardown_rc != VML_RC_OK) {
		if (c->teardown_rc == VML_RC_FAIL_VALID)
			pr_err("cpu=%u vmxoff FAIL errno=%d kind=VMfailValid error=%u insn=%s cr4.vmxe=%d at=launch -- FAIL: %s during teardown: VM-instruction error %u: %s%s\n",
			       cpu, VML_E_VMXOFF, c->teardown_error,
			       c->teardown_insn, c->vmxe_after, c->teardown_insn,
			       c->teardown_error, vml_insn_error_name(c->teardown_error),
			       c->vmx_on ? "; still in VMX operation, CR4.VMXE left set, VMXON region and VMCS kept allocated" : "");
		else
			pr_err("cpu=%u vmxoff FAIL errno=%d kind=%s insn=%s cr4.vmxe=%d at=launch -- FAIL: %s during teardown%s\n",
			       cpu, VML_E_VMXOFF, vml_rc_kind(c->teardown_rc),
			       c->teardown_insn, c->vmxe_after, c->teardown_insn,
			       c->vmx_on ? "; still in VMX operation, CR4.VMXE left set, VMXON region and VMCS kept allocated" :
			       "; the CPU was not in VMX operation any more, CR4.VMXE cleared");
	} else if (last >= VML_ST_VMCLEAR) {
		pr_info("cpu=%u vmxoff ok cr4.vmxe=%d at=launch -- vmclear+vmxoff done, cr4.vmxe cleared\n",
			cpu, c->vmxe_after);
	} else {
		pr_info("cpu=%u vmxoff ok cr4.vmxe=%d at=launch -- cr4.vmxe cleared (vmxon had failed, nothing to vmxoff)\n",
			cpu, c->vmxe_after);
	}
}

/*
 * Print one line per stage reached, in stage order: "ok" for the stages
 * passed, the decoded FAIL/declined line for the stage that stopped us,
 * then the vmxoff line of the window's teardown.  "vmlaunch ok" is printed
 * only when a VM entry completed: after a VM-entry failure the exit FAIL
 * line (reason bit 31) is that stage's one decoded line.
 */
void vml_report_cpu(const struct vml_module *m, unsigned int cpu,
		    const struct vml_cpu *c)
{
	const struct vml_controls *t = &c->ctl;
	enum vml_stage last = c->stage;
	bool failed = c->result != VML_RES_OK;
	enum vml_stage s;

	if (c->result == VML_RES_DECLINED &&
	    (c->err == VML_E_FC_VMX_OFF || c->err == VML_E_FC_UNLOCKED ||
	     c->err == VML_E_FC_SMX_OFF)) {
		pr_warn("cpu=%u %s declined errno=%d why=%s feature_control=0x%llx smx=%d -- CPU %u declined: %s\n",
			cpu, vml_stage_name(c->stage), c->err, c->why,
			c->caps.feature_control, c->caps.smx, cpu, c->why);
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
			/* the VMCS's address: a witness beneath tells our launches from others' */
			pr_info("cpu=%u vmptrld ok vmcs=0x%llx\n", cpu, c->vmcs_pa);
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
			pr_info("cpu=%u vmcs ok pin=0x%x proc=0x%x exit=0x%x entry=0x%x efer_ctls=%d msr_bitmap=%d nmi_exit=%d break=%s\n",
				cpu, t->pin, t->proc, t->exit, t->entry, t->efer,
				t->msr_bitmap, t->nmi_exiting,
				vml_break_name(m->cfg.brk));
			break;
		case VML_ST_VMLAUNCH:
			if (here) {
				vml_report_vmx_fail(cpu, c, c->insn);
				goto teardown;
			}
			if (c->entered)
				pr_info("cpu=%u vmlaunch ok -- vmlaunch entered the guest\n", cpu);
			break;
		case VML_ST_EXIT:
			vml_report_exit(m, cpu, c);
			break;
		default:
			break;
		}
	}

teardown:
	vml_report_teardown(cpu, c, last, failed);
}

void vml_report_cpu_status(unsigned int cpu, const struct vml_cpu *c)
{
	if (c->attempted)
		pr_info("cpu=%u status info stage=%s result=%s errno=%d reason=0x%x roundtrips=%u held=%d nmis=%u mces=%u\n",
			cpu, vml_stage_name(c->stage), vml_result_name(c->result),
			c->err, c->exit_reason, c->roundtrips, c->vmx_on,
			c->nmis, c->mces);
}

/* ---- release ---- */

/* Why a CPU that holds nothing has nothing to turn off (free text). */
static void vml_not_held_why(const struct vml_module *m, unsigned int cpu,
			     const struct vml_cpu *c, char *buf, size_t size)
{
	switch (c->left_at) {
	case VML_AT_LAUNCH:
		if (c->err)
			scnprintf(buf, size, "VMX was left at load (the launch failed, errno=%d)",
				  c->err);
		else
			scnprintf(buf, size, "VMX was left at load (%s)",
				  m->window_why ? m->window_why : "window mode");
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

void vml_report_release(const struct vml_module *m, unsigned int cpu,
			struct vml_cpu *c)
{
	struct vml_release *r = &c->rel;
	const char *at = vml_at_name(r->at);
	const char *still = c->vmx_on ?
		"; still in VMX operation, CR4.VMXE left set, VMXON region and VMCS kept allocated" : "";
	char why[112];

	if (!r->unreported)
		return;
	r->unreported = false;

	if (r->ipi_err) {
		pr_err("cpu=%u vmxoff FAIL errno=%d held=%d at=%s -- FAIL: could not run the teardown on CPU %u (errno=%d)\n",
		       cpu, VML_E_VMXOFF, r->held, at, cpu, r->ipi_err);
	} else if (r->lost) {
		pr_err("cpu=%u vmxoff FAIL errno=%d cr4.vmxe=%d held=1 at=%s -- FAIL: CPU %u held VMX since load but CR4.VMXE was clear: another agent left VMX operation\n",
		       cpu, VML_E_VMXOFF, r->vmxe, at, cpu);
	} else if (r->held && r->insn && r->rc == VML_RC_FAIL_VALID) {
		pr_err("cpu=%u vmxoff FAIL errno=%d kind=VMfailValid error=%u insn=%s cr4.vmxe=%d at=%s -- FAIL: %s during teardown: VM-instruction error %u: %s%s\n",
		       cpu, VML_E_VMXOFF, r->insn_error, r->insn, r->vmxe, at,
		       r->insn, r->insn_error, vml_insn_error_name(r->insn_error),
		       still);
	} else if (r->held && r->insn) {
		pr_err("cpu=%u vmxoff FAIL errno=%d kind=%s insn=%s cr4.vmxe=%d at=%s -- FAIL: %s during teardown%s\n",
		       cpu, VML_E_VMXOFF, vml_rc_kind(r->rc), r->insn, r->vmxe,
		       at, r->insn, still);
	} else if (r->held) {
		pr_info("cpu=%u vmxoff ok cr4.vmxe=%d at=%s -- vmclear+vmxoff done now, cr4.vmxe cleared (VMX was held since load)\n",
			cpu, r->vmxe, at);
	} else if (r->vmxe) {
		pr_info("cpu=%u vmxoff info cr4.vmxe=1 at=%s held=0 owner=other -- CR4.VMXE is set by another VMX user now, not by vmlaunch; left alone\n",
			cpu, at);
	} else {
		vml_not_held_why(m, cpu, c, why, sizeof(why));
		pr_info("cpu=%u vmxoff info cr4.vmxe=0 at=%s held=0 -- %s: nothing to turn off\n",
			cpu, at, why);
	}
}

/* ---- sysfs ---- */

int vml_format_cpu(char *buf, size_t size, unsigned int cpu,
		   const struct vml_cpu *c, bool online)
{
	return scnprintf(buf, size,
			 "cpu=%u online=%d stage=%s result=%s errno=%d why=%s kind=%s error=%u reason=0x%x basic=%u qual=0x%llx roundtrips=%u cycles_min=%llu cycles_median=%llu held=%d nmis=%u mces=%u\n",
			 cpu, online, vml_stage_name(c->stage),
			 vml_result_name(c->result), c->err,
			 c->why ? c->why : "none",
			 c->result == VML_RES_FAIL ? vml_rc_kind(c->rc) : "none",
			 c->insn_error, c->exit_reason,
			 c->exit_reason & VMX_EXIT_REASON_BASIC_MASK, c->qual,
			 c->roundtrips, c->cycles_min, c->cycles_median,
			 c->vmx_on, c->nmis, c->mces);
}
