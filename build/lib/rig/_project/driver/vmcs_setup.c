// SPDX-License-Identifier: GPL-2.0
/*
 * Middle layer.  Host state and guest state of the VMCS.  The guest mirrors the host: same
 * CR0/CR3/CR4, same GDT/IDT, same segments as loaded right now, its own
 * stack page, RIP at vml_guest_entry (VMCALL), RFLAGS = 0x2 (IF=0).
 */
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/io.h>
#include <linux/string.h>

#include "vmcs_setup.h"
#include "vmx_sdm.h"
#include "vmcs_access.h"
#include "compat.h"

#define VML_AR_UNUSABLE		(1u << 16)
#define VML_AR_TYPE_MASK	0xfu
#define VML_AR_TYPE_ACCESSED	0x1u
#define VML_AR_S		(1u << 4)
#define VML_AR_P		(1u << 7)
#define VML_TYPE_TSS64_BUSY	0xbu
#define VML_DESC_TSS_BUSY_BIT	0x2u	/* in the type nibble of byte 5 */
#define VML_RFLAGS_FIXED	0x2ul	/* bit 1 is always 1 */
#define VML_DR7_RESET		0x400ul	/* DR7 after a VM exit (SDM 28.5.1) */

struct vml_seg {
	u16 sel;
	u64 base;
	u32 limit;
	u32 ar;
};

/*
 * Decode the descriptor that @sel selects in the GDT described by @gdt into
 * the VMCS base/limit/access-rights format (SDM 25.4.1, table 25-2).  A null
 * selector, an LDT selector or a descriptor outside the GDT limit yields an
 * unusable segment.  @system: 16-byte system descriptor (TSS, LDT).
 */
static void vml_seg_decode(const struct vml_dtr *gdt, u16 sel, bool system,
			   struct vml_seg *s)
{
	unsigned int off = sel & ~7u;
	u64 d, hi = 0;

	s->sel = sel;
	s->base = 0;
	s->limit = 0;
	s->ar = VML_AR_UNUSABLE;

	if (off == 0 || (sel & 4) || off + (system ? 15 : 7) > gdt->limit)
		return;

	memcpy(&d, (const void *)(unsigned long)(gdt->base + off), sizeof(d));
	if (system)
		memcpy(&hi, (const void *)(unsigned long)(gdt->base + off + 8),
		       sizeof(hi));

	if (!(d & (1ull << 47)))		/* not present */
		return;

	s->limit = (d & 0xffff) | ((d >> 32) & 0xf0000);
	if (d & (1ull << 55))			/* G: 4 KiB granularity */
		s->limit = (s->limit << 12) | 0xfff;
	s->base = ((d >> 16) & 0xffffff) | ((d >> 32) & 0xff000000);
	if (system)
		s->base |= (hi & 0xffffffffull) << 32;
	/* type, S, DPL, P from bits 47:40; AVL, L, D/B, G from bits 55:52 */
	s->ar = (d >> 40) & 0xf0ff;

	/*
	 * The CPU sets the accessed bit when it loads a code/data segment,
	 * so a loaded segment's hidden access rights have it set.
	 */
	if (s->ar & VML_AR_S)
		s->ar |= VML_AR_TYPE_ACCESSED;
}

void vml_host_capture(struct vml_cpu *c)
{
	struct vml_host_state *h = &c->host;
	struct vml_seg tr;
	unsigned int len;
	u8 *copy;

	vml_store_host_tables(&h->tables);
	h->cr0 = vml_read_cr0();
	h->cr3 = vml_read_cr3();
	h->cr4 = vml_read_cr4();
	h->dr7 = vml_read_dr7();
	vml_rdmsr(VML_MSR_IA32_EFER, &h->efer);
	vml_rdmsr(VML_MSR_IA32_DEBUGCTL, &h->debugctl);
	vml_rdmsr(VML_MSR_IA32_FS_BASE, &h->fs_base);
	vml_rdmsr(VML_MSR_IA32_GS_BASE, &h->gs_base);
	vml_rdmsr(VML_MSR_IA32_SYSENTER_CS, &h->sysenter_cs);
	vml_rdmsr(VML_MSR_IA32_SYSENTER_ESP, &h->sysenter_esp);
	vml_rdmsr(VML_MSR_IA32_SYSENTER_EIP, &h->sysenter_eip);

	vml_seg_decode(&h->tables.gdt, h->tables.tr, true, &tr);
	h->tr_base = tr.base;

	/*
	 * Writable copy of the GDT with the TSS descriptor marked available,
	 * for the LTR in vml_restore_host_tables() (the real GDT is mapped
	 * read-only and its TSS descriptor is busy).
	 */
	copy = page_address(c->pages[VML_PAGE_GDT_COPY]);
	len = min_t(unsigned int, h->tables.gdt.limit + 1u, PAGE_SIZE);
	memcpy(copy, (const void *)(unsigned long)h->tables.gdt.base, len);
	h->tables.tmp_gdt.base = (unsigned long)copy;
	h->tables.tmp_gdt.limit = len - 1;
}

void vml_host_restore(const struct vml_cpu *c)
{
	const struct vml_host_state *h = &c->host;
	u8 *copy = (u8 *)(unsigned long)h->tables.tmp_gdt.base;
	unsigned int off = (h->tables.tr & ~7u) + 5;

	/*
	 * LTR needs the TSS descriptor "available" and marks it busy again:
	 * clear the busy bit in the private copy before every reload.
	 */
	if (off <= h->tables.tmp_gdt.limit)
		copy[off] &= ~VML_DESC_TSS_BUSY_BIT;
	/* GDTR/IDTR limits (0xffff after an exit), TR limit (0x67), LDTR. */
	vml_restore_host_tables(&h->tables);
	/* A VM exit sets DR7 to 0x400 and clears IA32_DEBUGCTL. */
	if (h->dr7 != VML_DR7_RESET)
		vml_write_dr7(h->dr7);
	if (h->debugctl)
		vml_wrmsr(VML_MSR_IA32_DEBUGCTL, h->debugctl);
}

struct vml_seg_fields {
	u32 sel, base, limit, ar;
};

static const struct vml_seg_fields seg_fields[] = {
	{ VMCS_F16(VMCS_GUEST_ES_SELECTOR), VMCS_FNAT(VMCS_GUEST_ES_BASE), VMCS_F32(VMCS_GUEST_ES_LIMIT), VMCS_F32(VMCS_GUEST_ES_ACCESS_RIGHTS) },
	{ VMCS_F16(VMCS_GUEST_CS_SELECTOR), VMCS_FNAT(VMCS_GUEST_CS_BASE), VMCS_F32(VMCS_GUEST_CS_LIMIT), VMCS_F32(VMCS_GUEST_CS_ACCESS_RIGHTS) },
	{ VMCS_F16(VMCS_GUEST_SS_SELECTOR), VMCS_FNAT(VMCS_GUEST_SS_BASE), VMCS_F32(VMCS_GUEST_SS_LIMIT), VMCS_F32(VMCS_GUEST_SS_ACCESS_RIGHTS) },
	{ VMCS_F16(VMCS_GUEST_DS_SELECTOR), VMCS_FNAT(VMCS_GUEST_DS_BASE), VMCS_F32(VMCS_GUEST_DS_LIMIT), VMCS_F32(VMCS_GUEST_DS_ACCESS_RIGHTS) },
	{ VMCS_F16(VMCS_GUEST_FS_SELECTOR), VMCS_FNAT(VMCS_GUEST_FS_BASE), VMCS_F32(VMCS_GUEST_FS_LIMIT), VMCS_F32(VMCS_GUEST_FS_ACCESS_RIGHTS) },
	{ VMCS_F16(VMCS_GUEST_GS_SELECTOR), VMCS_FNAT(VMCS_GUEST_GS_BASE), VMCS_F32(VMCS_GUEST_GS_LIMIT), VMCS_F32(VMCS_GUEST_GS_ACCESS_RIGHTS) },
	{ VMCS_F16(VMCS_GUEST_LDTR_SELECTOR), VMCS_FNAT(VMCS_GUEST_LDTR_BASE), VMCS_F32(VMCS_GUEST_LDTR_LIMIT), VMCS_F32(VMCS_GUEST_LDTR_ACCESS_RIGHTS) },
	{ VMCS_F16(VMCS_GUEST_TR_SELECTOR), VMCS_FNAT(VMCS_GUEST_TR_BASE), VMCS_F32(VMCS_GUEST_TR_LIMIT), VMCS_F32(VMCS_GUEST_TR_ACCESS_RIGHTS) },
};

enum { SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS, SEG_LDTR, SEG_TR, SEG_COUNT };

struct vml_write {
	u32 field;
	u32 width;		/* VMCS_WIDTH_*, as the writer meant it */
	u64 value;
};

/* Table entries; VMCS_F*() fails the build if the field has another width. */
#define W16(f, v)	((struct vml_write){ VMCS_F16(f), VMCS_WIDTH_16, (v) })
#define W32(f, v)	((struct vml_write){ VMCS_F32(f), VMCS_WIDTH_32, (v) })
#define W64(f, v)	((struct vml_write){ VMCS_F64(f), VMCS_WIDTH_64, (v) })
#define WNAT(f, v)	((struct vml_write){ VMCS_FNAT(f), VMCS_WIDTH_NATURAL, (v) })

/*
 * VMWRITE a list; on failure record the field and the instruction error.
 * A value wider than its field is a bug of ours: VMWRITE would silently
 * drop the high bits, so refuse it as a failed write of that field.
 */
static int vml_write_list(struct vml_cpu *c, const struct vml_write *w, size_t n)
{
	unsigned long err;
	size_t i;
	int rc;

	for (i = 0; i < n; i++) {
		if (w[i].value > vml_vmcs_width_max(w[i].width)) {
			c->rc = VML_RC_FAIL_INVALID;
			c->field = w[i].field;
			return VML_E_VMWRITE;
		}
		rc = vml_vmwrite(w[i].field, w[i].value);
		if (rc == VML_RC_OK)
			continue;
		c->rc = rc;
		c->field = w[i].field;
		if (rc == VML_RC_FAIL_VALID &&
		    vml_vmread(VMCS_VM_INSTRUCTION_ERROR, &err) == VML_RC_OK)
			c->insn_error = err;
		return rc == VML_RC_FAULT ? VML_E_FAULT : VML_E_VMWRITE;
	}
	return 0;
}

int vml_vmcs_fill(struct vml_cpu *c, enum vml_break brk)
{
	const struct vml_host_state *h = &c->host;
	const struct vml_host_tables *t = &h->tables;
	const struct vml_controls *ctl = &c->ctl;
	struct vml_seg seg[SEG_COUNT];
	u16 sels[SEG_COUNT] = {
		t->es, t->cs, t->ss, t->ds, t->fs, t->gs, t->ldtr, t->tr,
	};
	struct vml_write w[48];
	size_t n = 0;
	unsigned long guest_rsp;
	int i, err;

	for (i = 0; i < SEG_COUNT; i++)
		vml_seg_decode(&t->gdt, sels[i], i >= SEG_LDTR, &seg[i]);
	/* 64-bit mode: FS/GS bases live in MSRs, not in the descriptors. */
	seg[SEG_FS].base = h->fs_base;
	seg[SEG_GS].base = h->gs_base;
	/* TR is loaded, so its hidden type is "busy 64-bit TSS". */
	seg[SEG_TR].ar = (seg[SEG_TR].ar & ~VML_AR_TYPE_MASK) | VML_TYPE_TSS64_BUSY;

	/* ---- VM-execution, VM-exit and VM-entry controls ---- */
	w[n++] = W32(VMCS_PIN_BASED_VM_EXEC_CONTROL, ctl->pin);
	w[n++] = W32(VMCS_PRIMARY_PROC_BASED_VM_EXEC_CONTROL, ctl->proc);
	w[n++] = W32(VMCS_VM_EXIT_CONTROLS, ctl->exit);
	w[n++] = W32(VMCS_VM_ENTRY_CONTROLS, ctl->entry);
	w[n++] = W32(VMCS_EXCEPTION_BITMAP, 0xffffffffu);
	w[n++] = W32(VMCS_PAGE_FAULT_ERROR_CODE_MASK, 0);
	w[n++] = W32(VMCS_PAGE_FAULT_ERROR_CODE_MATCH, 0);
	w[n++] = W32(VMCS_CR3_TARGET_COUNT, 0);
	w[n++] = W32(VMCS_VM_EXIT_MSR_STORE_COUNT, 0);
	w[n++] = W32(VMCS_VM_EXIT_MSR_LOAD_COUNT, 0);
	w[n++] = W32(VMCS_VM_ENTRY_MSR_LOAD_COUNT, 0);
	w[n++] = W32(VMCS_VM_ENTRY_INTR_INFO, 0);
	w[n++] = WNAT(VMCS_CR0_GUEST_HOST_MASK, 0);
	w[n++] = WNAT(VMCS_CR4_GUEST_HOST_MASK, 0);
	w[n++] = WNAT(VMCS_CR0_READ_SHADOW, h->cr0);
	w[n++] = WNAT(VMCS_CR4_READ_SHADOW, h->cr4);
	if (ctl->msr_bitmap)	/* all-zero bitmap: no RDMSR/WRMSR exits */
		w[n++] = W64(VMCS_MSR_BITMAP,
			     page_to_phys(c->pages[VML_PAGE_MSR_BITMAP]));

	/* ---- host state ---- */
	w[n++] = WNAT(VMCS_HOST_CR0, h->cr0);
	w[n++] = WNAT(VMCS_HOST_CR3, h->cr3);
	w[n++] = WNAT(VMCS_HOST_CR4, h->cr4);
	/* Host selectors must have RPL = 0 and TI = 0 (SDM 26.2.3). */
	w[n++] = W16(VMCS_HOST_ES_SELECTOR, t->es & ~7u);
	w[n++] = W16(VMCS_HOST_CS_SELECTOR, t->cs & ~7u);
	w[n++] = W16(VMCS_HOST_SS_SELECTOR, t->ss & ~7u);
	w[n++] = W16(VMCS_HOST_DS_SELECTOR, t->ds & ~7u);
	w[n++] = W16(VMCS_HOST_FS_SELECTOR, t->fs & ~7u);
	w[n++] = W16(VMCS_HOST_GS_SELECTOR, t->gs & ~7u);
	w[n++] = W16(VMCS_HOST_TR_SELECTOR, t->tr & ~7u);
	w[n++] = WNAT(VMCS_HOST_FS_BASE, h->fs_base);
	w[n++] = WNAT(VMCS_HOST_GS_BASE, h->gs_base);
	w[n++] = WNAT(VMCS_HOST_TR_BASE, h->tr_base);
	w[n++] = WNAT(VMCS_HOST_GDTR_BASE, t->gdt.base);
	w[n++] = WNAT(VMCS_HOST_IDTR_BASE, t->idt.base);
	w[n++] = W32(VMCS_HOST_IA32_SYSENTER_CS, (u32)h->sysenter_cs);
	w[n++] = WNAT(VMCS_HOST_IA32_SYSENTER_ESP, h->sysenter_esp);
	w[n++] = WNAT(VMCS_HOST_IA32_SYSENTER_EIP, h->sysenter_eip);
	if (ctl->efer)
		w[n++] = W64(VMCS_HOST_IA32_EFER, h->efer);
	w[n++] = WNAT(VMCS_HOST_RIP, (unsigned long)vml_host_rip);
	/* HOST_RSP is written by vml_enter_guest() itself. */

	err = vml_write_list(c, w, n);
	if (err)
		return err;
	n = 0;

	/* ---- guest state: segments ---- */
	for (i = 0; i < SEG_COUNT; i++) {
		w[n++] = (struct vml_write){ seg_fields[i].sel, VMCS_WIDTH_16, seg[i].sel };
		w[n++] = (struct vml_write){ seg_fields[i].base, VMCS_WIDTH_NATURAL, seg[i].base };
		w[n++] = (struct vml_write){ seg_fields[i].limit, VMCS_WIDTH_32, seg[i].limit };
		w[n++] = (struct vml_write){ seg_fields[i].ar, VMCS_WIDTH_32, seg[i].ar };
	}
	err = vml_write_list(c, w, n);
	if (err)
		return err;
	n = 0;

	/* ---- guest state: the rest ---- */
	guest_rsp = (unsigned long)page_address(c->pages[VML_PAGE_GUEST_STACK]) +
		    PAGE_SIZE;
	w[n++] = WNAT(VMCS_GUEST_CR0, h->cr0);
	w[n++] = WNAT(VMCS_GUEST_CR3, h->cr3);
	w[n++] = WNAT(VMCS_GUEST_CR4, h->cr4);
	w[n++] = WNAT(VMCS_GUEST_GDTR_BASE, t->gdt.base);
	w[n++] = W32(VMCS_GUEST_GDTR_LIMIT, t->gdt.limit);
	w[n++] = WNAT(VMCS_GUEST_IDTR_BASE, t->idt.base);
	w[n++] = W32(VMCS_GUEST_IDTR_LIMIT, t->idt.limit);
	w[n++] = WNAT(VMCS_GUEST_DR7, h->dr7);
	w[n++] = W64(VMCS_GUEST_IA32_DEBUGCTL, h->debugctl);
	w[n++] = WNAT(VMCS_GUEST_RSP, guest_rsp);
	w[n++] = WNAT(VMCS_GUEST_RIP, (unsigned long)vml_guest_entry);
	w[n++] = WNAT(VMCS_GUEST_RFLAGS,
		      brk == VML_BREAK_GUEST_RFLAGS_BIT1 ? 0 : VML_RFLAGS_FIXED);
	w[n++] = W32(VMCS_GUEST_IA32_SYSENTER_CS, (u32)h->sysenter_cs);
	w[n++] = WNAT(VMCS_GUEST_IA32_SYSENTER_ESP, h->sysenter_esp);
	w[n++] = WNAT(VMCS_GUEST_IA32_SYSENTER_EIP, h->sysenter_eip);
	if (ctl->efer)
		w[n++] = W64(VMCS_GUEST_IA32_EFER, h->efer);
	w[n++] = W64(VMCS_VMCS_LINK_POINTER, ~0ull);
	w[n++] = W32(VMCS_GUEST_ACTIVITY_STATE, 0);	/* active */
	w[n++] = W32(VMCS_GUEST_INTERRUPTIBILITY_STATE, 0);
	w[n++] = WNAT(VMCS_GUEST_PENDING_DBG_EXCEPTIONS, 0);

	return vml_write_list(c, w, n);
}
