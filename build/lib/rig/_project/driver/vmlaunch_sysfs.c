// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/vmlaunch/status       summary line + one line per CPU
 * /sys/kernel/vmlaunch/cpuN/status  the line of CPU N alone
 *
 * Lines use the key=value style of the dmesg lines (README "sysfs").
 * Top layer: reads the module state it is handed at init (struct
 * vml_module), formats lines with vmlaunch_report.c; calls nothing above.
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/sysfs.h>
#include <linux/slab.h>
#include <linux/cpumask.h>
#include <linux/mutex.h>

#include "vmlaunch_sysfs.h"
#include "vmlaunch_report.h"
#include "compat.h"

static struct vml_module *vml_m;	/* handed over by vml_sysfs_init() */
static struct kobject *vml_kobj;
static struct kobject **vml_cpu_kobjs;	/* indexed by CPU, possible CPUs only */

static ssize_t status_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	unsigned int cpu;
	size_t len;

	mutex_lock(&vml_m->lock);
	len = scnprintf(buf, PAGE_SIZE,
			"version=%d break=%s roundtrips=%u cr4_mode=%s hold=%d shutting_down=%d emergency=%s\n",
			VML_FORMAT_VERSION, vml_break_name(vml_m->cfg.brk),
			vml_m->cfg.roundtrips, vml_cr4_mode_name(),
			vml_m->cfg.hold, vml_m->shutting_down,
			vml_emergency_name());
	for_each_possible_cpu(cpu) {
		const struct vml_cpu *c = vml_mod_cpu(vml_m, cpu);

		if (!c->attempted)
			continue;
		len += vml_format_cpu(buf + len, PAGE_SIZE - len, cpu, c,
				      cpu_online(cpu));
	}
	mutex_unlock(&vml_m->lock);
	return len;
}

static struct kobj_attribute vml_status_attr = __ATTR_RO(status);

static ssize_t cpu_status_show(struct kobject *kobj, struct kobj_attribute *attr,
			       char *buf)
{
	unsigned int cpu;
	ssize_t len = -ENODEV;

	mutex_lock(&vml_m->lock);
	for_each_possible_cpu(cpu) {
		if (vml_cpu_kobjs[cpu] == kobj) {
			len = vml_format_cpu(buf, PAGE_SIZE, cpu,
					     vml_mod_cpu(vml_m, cpu),
					     cpu_online(cpu));
			break;
		}
	}
	mutex_unlock(&vml_m->lock);
	return len;
}

static struct kobj_attribute vml_cpu_status_attr =
	__ATTR(status, 0444, cpu_status_show, NULL);

void vml_sysfs_exit(void)
{
	unsigned int cpu;

	if (vml_cpu_kobjs) {
		for_each_possible_cpu(cpu)
			kobject_put(vml_cpu_kobjs[cpu]);
		kfree(vml_cpu_kobjs);
		vml_cpu_kobjs = NULL;
	}
	kobject_put(vml_kobj);
	vml_kobj = NULL;
	vml_m = NULL;
}

int vml_sysfs_init(struct vml_module *m)
{
	char name[16];
	unsigned int cpu;
	int err;

	vml_m = m;
	vml_kobj = kobject_create_and_add("vmlaunch", kernel_kobj);
	if (!vml_kobj)
		return -ENOMEM;
	err = sysfs_create_file(vml_kobj, &vml_status_attr.attr);
	if (err)
		goto fail;

	vml_cpu_kobjs = kcalloc(nr_cpu_ids, sizeof(*vml_cpu_kobjs), GFP_KERNEL);
	if (!vml_cpu_kobjs) {
		err = -ENOMEM;
		goto fail;
	}
	for_each_possible_cpu(cpu) {
		snprintf(name, sizeof(name), "cpu%u", cpu);
		vml_cpu_kobjs[cpu] = kobject_create_and_add(name, vml_kobj);
		if (!vml_cpu_kobjs[cpu]) {
			err = -ENOMEM;
			goto fail;
		}
		err = sysfs_create_file(vml_cpu_kobjs[cpu], &vml_cpu_status_attr.attr);
		if (err)
			goto fail;
	}
	return 0;

fail:
	vml_sysfs_exit();
	return err;
}
