/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Top layer: the machine-readable lines (docs/contract.md section 1,
 * README "dmesg format") printed from a CPU's record, and the names used
 * in them and in sysfs.
 */
#ifndef VMLAUNCH_REPORT_H
#define VMLAUNCH_REPORT_H

#include <linux/types.h>

#include "vml_cpu.h"
#include "vmlaunch_module.h"

const char *vml_stage_name(enum vml_stage s);
const char *vml_result_name(enum vml_result r);
const char *vml_rc_kind(int rc);
const char *vml_at_name(enum vml_at at);
const char *vml_break_name(enum vml_break b);

/* After vml_cpu_run(): one line per stage reached, then the vmxoff line. */
void vml_report_cpu(const struct vml_module *m, unsigned int cpu,
		    const struct vml_cpu *c);
/* Before a release: "status info stage=... held=" (offline callback). */
void vml_report_cpu_status(unsigned int cpu, const struct vml_cpu *c);
/* After vml_cpu_release() (IRQs may be off: printk only). */
void vml_report_release(const struct vml_module *m, unsigned int cpu,
			struct vml_cpu *c);
/* The sysfs line of one CPU. */
int vml_format_cpu(char *buf, size_t size, unsigned int cpu,
		   const struct vml_cpu *c, bool online);

#endif /* VMLAUNCH_REPORT_H */
