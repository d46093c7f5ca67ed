/* SPDX-License-Identifier: GPL-2.0 */
/* Middle layer: capability checks and control adjustment (vmx_caps.c). */
#ifndef VMLAUNCH_VMX_CAPS_H
#define VMLAUNCH_VMX_CAPS_H

#include "vml_cpu.h"

int vml_caps_check(struct vml_cpu *c);
int vml_controls_compute(struct vml_cpu *c, enum vml_break brk);

#endif /* VMLAUNCH_VMX_CAPS_H */
