/* SPDX-License-Identifier: GPL-2.0 */
/* Top layer: /sys/kernel/vmlaunch (vmlaunch_sysfs.c). */
#ifndef VMLAUNCH_SYSFS_H
#define VMLAUNCH_SYSFS_H

#include "vmlaunch_module.h"

/* @m must outlive the files: it is read (under m->lock) by every show(). */
int vml_sysfs_init(struct vml_module *m);
void vml_sysfs_exit(void);

#endif /* VMLAUNCH_SYSFS_H */
