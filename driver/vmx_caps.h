/* SPDX-License-Identifier: GPL-2.0 */
#ifndef VMLAUNCH_VMX_CAPS_H
#define VMLAUNCH_VMX_CAPS_H

#include "vmlaunch.h"

/* Extra errno of vmx_caps.c: a control we cannot run without is not allowed. */
#define VML_E_CTLS		(-ENOPROTOOPT)

int vml_caps_check(struct vml_cpu *c);
int vml_controls_compute(struct vml_cpu *c, enum vml_break brk);
bool vml_cr_fixed_ok(u64 val, u64 fixed0, u64 fixed1);

#endif /* VMLAUNCH_VMX_CAPS_H */
