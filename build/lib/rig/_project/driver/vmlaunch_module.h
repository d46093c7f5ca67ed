/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Top layer (Linux glue): the module's state, owned by vmlaunch_main.c and
 * handed explicitly to vmlaunch_sysfs.c and vmlaunch_report.c (they get a
 * pointer at init or per call; there are no shared globals).
 */
#ifndef VMLAUNCH_MODULE_H
#define VMLAUNCH_MODULE_H

#include <linux/mutex.h>
#include <linux/percpu.h>

#include "vml_cpu.h"

struct vml_module {
	struct mutex lock;		/* per-CPU records, launches, shutting_down */
	struct vml_config cfg;		/* fixed after parameter parsing */
	const char *window_why;		/* why window mode, NULL in hold mode */
	bool shutting_down;		/* reboot notifier ran: no new launches */
	struct vml_cpu __percpu *cpus;
};

static inline struct vml_cpu *vml_mod_cpu(const struct vml_module *m,
					  unsigned int cpu)
{
	return per_cpu_ptr(m->cpus, cpu);
}

#endif /* VMLAUNCH_MODULE_H */
