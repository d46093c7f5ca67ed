/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bottom layer: VMCS accessors whose width is checked at compile time.
 *
 * The width of a VMCS field is part of its encoding (bits 14:13; bit 0 set
 * selects the high half of a 64-bit field, SDM B.1).  A VMWRITE of a 32-bit
 * value to a natural-width field, or of a 64-bit value through a 16-bit
 * accessor, assembles and runs, and only misbehaves at VM entry; here it
 * does not build:
 *   - vml_vmcs_write16/32/64/nat() and vml_vmcs_read*() reject, with
 *     BUILD_BUG_ON, a constant field whose width is not the accessor's;
 *   - VMCS_F16/F32/F64/FNAT(field) are the same check as a constant
 *     expression (BUILD_BUG_ON_ZERO), for the field tables of vmcs_setup.c;
 *     each table entry also records the width, and the table writer checks
 *     at run time that the value fits it.
 */
#ifndef VMLAUNCH_VMCS_ACCESS_H
#define VMLAUNCH_VMCS_ACCESS_H

#include <linux/build_bug.h>
#include <linux/types.h>

#include "vmx_sdm.h"
#include "vmx_ops.h"

#define VMCS_BAD_WIDTH(f, w) \
	(VMCS_FIELD_WIDTH(f) != (w) || \
	 ((w) == VMCS_WIDTH_64 && VMCS_FIELD_ACCESS_HIGH(f)))

#define VMCS_F16(f)	((f) + BUILD_BUG_ON_ZERO(VMCS_BAD_WIDTH(f, VMCS_WIDTH_16)))
#define VMCS_F32(f)	((f) + BUILD_BUG_ON_ZERO(VMCS_BAD_WIDTH(f, VMCS_WIDTH_32)))
#define VMCS_F64(f)	((f) + BUILD_BUG_ON_ZERO(VMCS_BAD_WIDTH(f, VMCS_WIDTH_64)))
#define VMCS_FNAT(f)	((f) + BUILD_BUG_ON_ZERO(VMCS_BAD_WIDTH(f, VMCS_WIDTH_NATURAL)))

#define VMCS_CHECK_WIDTH(f, w) \
	BUILD_BUG_ON_MSG(__builtin_constant_p(f) && VMCS_BAD_WIDTH(f, w), \
			 "VMCS field accessed with the wrong width")

static __always_inline int vml_vmcs_write16(unsigned long f, u16 v)
{
	VMCS_CHECK_WIDTH(f, VMCS_WIDTH_16);
	return vml_vmwrite(f, v);
}

static __always_inline int vml_vmcs_write32(unsigned long f, u32 v)
{
	VMCS_CHECK_WIDTH(f, VMCS_WIDTH_32);
	return vml_vmwrite(f, v);
}

static __always_inline int vml_vmcs_write64(unsigned long f, u64 v)
{
	VMCS_CHECK_WIDTH(f, VMCS_WIDTH_64);
	return vml_vmwrite(f, v);	/* x86-64: one VMWRITE covers both halves */
}

static __always_inline int vml_vmcs_writenat(unsigned long f, unsigned long v)
{
	VMCS_CHECK_WIDTH(f, VMCS_WIDTH_NATURAL);
	return vml_vmwrite(f, v);
}

static __always_inline int vml_vmcs_read32(unsigned long f, u32 *v)
{
	unsigned long x = 0;
	int rc;

	VMCS_CHECK_WIDTH(f, VMCS_WIDTH_32);
	rc = vml_vmread(f, &x);
	*v = rc == VML_RC_OK ? (u32)x : 0;
	return rc;
}

static __always_inline int vml_vmcs_readnat(unsigned long f, unsigned long *v)
{
	int rc;

	VMCS_CHECK_WIDTH(f, VMCS_WIDTH_NATURAL);
	*v = 0;
	rc = vml_vmread(f, v);
	if (rc != VML_RC_OK)
		*v = 0;
	return rc;
}

/* Largest value a field of width @w holds (natural width: 64 bits here). */
static inline u64 vml_vmcs_width_max(unsigned int w)
{
	switch (w) {
	case VMCS_WIDTH_16:	return 0xffffull;
	case VMCS_WIDTH_32:	return 0xffffffffull;
	default:		return ~0ull;
	}
}

#endif /* VMLAUNCH_VMCS_ACCESS_H */
