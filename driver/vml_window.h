/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Middle layer, inside the per-CPU state machine: the interface between
 * vml_cpu.c (run, release, free) and vml_window.c (the IRQs-off launch
 * window).  vml_cpu.c calls vml_window() and nothing else there; the window
 * calls nothing in vml_cpu.c.  Both leave VMX operation the same way (the
 * window's teardown; the release of a CPU held since its launch), so the
 * two teardown primitives live here, as static inlines.
 * Includes only this layer's vml_cpu.h and the bottom layer (and compat.h).
 */
#ifndef VMLAUNCH_VML_WINDOW_H
#define VMLAUNCH_VML_WINDOW_H

#include "vml_cpu.h"
#include "vmx_sdm.h"
#include "vmcs_access.h"
#include "compat.h"

/*
 * vml_window.c.  Runs on the CPU of @c with preemption and local interrupts
 * disabled, after vml_caps_check(), vml_controls_compute() and the page
 * allocation; @c->cycles holds cfg->roundtrips entries.  Returns 0 or the
 * errno of the failure path (recorded in @c as well).
 */
int vml_window(struct vml_cpu *c, const struct vml_config *cfg);

/*
 * VM-instruction error of the VMfailValid just seen (VMfailValid means
 * there is a current VMCS, so VMREAD works; 0 if it does not).
 */
static inline u32 vml_insn_error(void)
{
	u32 e = 0;

	vml_vmcs_read32(VMCS_VM_INSTRUCTION_ERROR, &e);
	return e;
}

/*
 * VMXOFF, then CR4.VMXE cleared if the CPU is out of VMX operation.
 * VMXOFF fails only (a) with #UD when the CPU is not in VMX operation
 * (someone else left it): VMXE can be cleared safely; or (b) with
 * VMfailValid 23 under the dual-monitor treatment of SMM, which only a
 * VMCALL in VMX root operation activates, and we never execute one: then
 * VMXE must stay set (clearing it in VMX operation is #GP).
 * Returns the VML_RC_* of the VMXOFF; *error gets a VMfailValid's number.
 */
static inline int vml_vmxoff_clear_vmxe(struct vml_cpu *c, u32 *error)
{
	int rc = vml_vmxoff();

	if (rc == VML_RC_FAIL_VALID)
		*error = vml_insn_error();
	if (rc == VML_RC_OK || rc == VML_RC_FAULT) {
		c->vmx_on = false;
		vml_cr4_clear_vmxe(vml_read_cr4());
	}
	return rc;
}

#endif /* VMLAUNCH_VML_WINDOW_H */
