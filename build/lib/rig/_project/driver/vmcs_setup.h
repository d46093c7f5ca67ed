/* SPDX-License-Identifier: GPL-2.0 */
#ifndef VMLAUNCH_VMCS_SETUP_H
#define VMLAUNCH_VMCS_SETUP_H

#include "vml_cpu.h"

/* Middle layer: VMCS host/guest state (vmcs_setup.c). */

/* All of these run with IRQs off, on the CPU being launched. */
void vml_host_capture(struct vml_cpu *c);
int vml_vmcs_fill(struct vml_cpu *c, enum vml_break brk);
void vml_host_restore(const struct vml_cpu *c);

#endif /* VMLAUNCH_VMCS_SETUP_H */
