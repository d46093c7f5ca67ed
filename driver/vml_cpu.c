// SPDX-License-Identifier: GPL-2.0
/*
 * Middle layer: one CPU's run, as a state machine.
 *
 *   check -> alloc -> [IRQs off] CR4.VMXE -> VMXON -> VMCLEAR -> VMPTRLD
 *   -> VMCS -> VMLAUNCH -> exit (NMI / #MC exits handled, guest resumed)
 *   -> VMCALL exit [-> VMRESUME round trips] -> then either
 *     - hold mode (cfg->hold): nothing more; VMX stays on (VMXON held, our
 *       VMCS current) until vml_cpu_release() runs on the CPU; or
 *     - window mode, and every failure path: VMCLEAR -> VMXOFF -> CR4.VMXE
 *       cleared before the window ends.
 *
 * Here: the checks, the allocation and freeing of the CPU's pages, the
 * call of the IRQs-off window (vml_window.c: VMXON ... teardown), the
 * round-trip statistics, and the release of VMX held since the launch.
 *
 * Nothing is printed here: the outcome goes to struct vml_cpu and the top
 * layer prints it.  Everything comes in as arguments; no globals.
 */
#include <linux/kernel.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/io.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>
#include <linux/irqflags.h>
#include <linux/preempt.h>
#include <linux/topology.h>
#include <asm/processor-flags.h>

#include "vml_cpu.h"
#include "vml_window.h"
#include "vmx_caps.h"
#include "compat.h"

static int vml_alloc(unsigned int cpu, struct vml_cpu *c, u32 roundtrips)
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
	if (roundtrips) {
		c->cycles = kvmalloc_array(roundtrips, sizeof(u64), GFP_KERNEL);
		if (!c->cycles) {
			c->result = VML_RES_FAIL;
			c->err = VML_E_NOMEM;
			return VML_E_NOMEM;
		}
	}
	/* Revision identifier in the first 31 bits, bit 31 (shadow VMCS) 0. */
	*(u32 *)page_address(c->pages[VML_PAGE_VMXON]) = c->caps.revision;
	*(u32 *)page_address(c->pages[VML_PAGE_VMCS]) = c->caps.revision;
	c->vmcs_pa = page_to_phys(c->pages[VML_PAGE_VMCS]);
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
		 * Still in VMX operation (a VMXOFF failed, or hold mode): the
		 * processor may still use the VMXON region and the VMCS.
		 * Leak them rather than hand them back to the page allocator.
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

/*
 * Leave the VMX operation held since the launch (hold mode): VMCLEAR our
 * VMCS (writes any processor-cached VMCS data back and makes it not current),
 * VMXOFF, CR4.VMXE cleared, intel_pt_handle_vmx(0).  Must run on the CPU
 * concerned with IRQs off.  On a CPU that holds nothing it only reads CR4.
 * The outcome goes to c->rel.
 */
void vml_cpu_release(struct vml_cpu *c, enum vml_at at)
{
	struct vml_release *r = &c->rel;
	u64 vmcs_pa;
	u32 e = 0;
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
		if (rc == VML_RC_FAIL_VALID)
			r->insn_error = vml_insn_error();
	}
	rc = vml_vmxoff_clear_vmxe(c, &e);
	if (rc != VML_RC_OK && !r->insn) {
		r->insn = "vmxoff";
		r->rc = rc;
		r->insn_error = e;
	}
	if (!c->vmx_on) {
		vml_pt_handle_vmx(0);
		c->left_at = at;
	}
out:
	r->vmxe = !!(vml_read_cr4() & X86_CR4_VMXE);
}

static int vml_cmp_u64(const void *a, const void *b)
{
	u64 x = *(const u64 *)a, y = *(const u64 *)b;

	return x < y ? -1 : x > y;
}

int vml_cpu_run(unsigned int cpu, struct vml_cpu *c, const struct vml_config *cfg)
{
	unsigned long flags;
	int err;

	c->attempted = true;
	c->teardown_rc = VML_RC_OK;
	c->teardown_insn = NULL;

	err = vml_caps_check(c);
	if (err)
		return err;
	err = vml_controls_compute(c, cfg->brk);
	if (err)
		return err;
	err = vml_alloc(cpu, c, cfg->roundtrips);
	if (err)
		return err;

	/*
	 * Everything from CR4.VMXE to its clearing happens on this CPU with
	 * preemption and local interrupts disabled (the cpuhp thread is
	 * bound to @cpu anyway).
	 */
	preempt_disable();
	local_irq_save(flags);
	err = vml_window(c, cfg);
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
