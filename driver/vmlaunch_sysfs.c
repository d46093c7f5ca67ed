// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/vmlaunch/status       summary line + one line per CPU
 * /sys/kernel/vmlaunch/cpuN/status  the line of CPU N alone
 *
 * Lines use the key=value style of the dmesg lines (README "sysfs").
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/sysfs.h>
#include <linux/slab.h>
#include <linux/cpumask.h>
#include <linux/mutex.h>

#include "vmlaunch.h"

static struct kobject *vml_kobj;
static struct kobject **vml_cpu_kobjs;	/* indexed by CPU, possible CPUs only */

/* Format CPU @cpu's record into @buf (at most @size bytes incl. NUL). */
static int vml_format_cpu(char *buf, size_t size, unsigned int cpu)
{
	const struct vml_cpu *c = vml_cpu_state(cpu);

	return scnprintf(buf, size,
			 "cpu=%u online=%d stage=%s result=%s errno=%d why=%s kind=%s error=%u reason=0x%x basic=%u qual=0x%llx roundtrips=%u cycles_min=%llu cycles_median=%llu held=%d\n",
			 cpu, cpu_online(cpu), vml_stage_name(c->stage),
			 vml_result_name(c->result), c->err,
			 c->why ? c->why : "none",
			 c->result == VML_RES_FAIL ? vml_rc_kind(c->rc) : "none",
			 c->insn_error, c->exit_reason,
			 c->exit_reason & 0xffff, c->qual, c->roundtrips,
			 c->cycles_min, c->cycles_median, c->vmx_on);
}

static ssize_t status_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	unsigned int cpu;
	size_t len;

	mutex_lock(&vml_lock);
	len = scnprintf(buf, PAGE_SIZE,
			"version=%d break=%s roundtrips=%u cr4_mode=%s hold=%d shutting_down=%d\n",
			VML_FORMAT_VERSION, vml_break_name(vml_break_field),
			vml_roundtrips, vml_cr4_mode(), vml_hold, vml_shutting_down);
	for_each_possible_cpu(cpu) {
		if (!vml_cpu_state(cpu)->attempted)
			continue;
		len += vml_format_cpu(buf + len, PAGE_SIZE - len, cpu);
	}
	mutex_unlock(&vml_lock);
	return len;
}

static struct kobj_attribute vml_status_attr = __ATTR_RO(status);

static ssize_t cpu_status_show(struct kobject *kobj, struct kobj_attribute *attr,
			       char *buf)
{
	unsigned int cpu;
	ssize_t len = -ENODEV;

	mutex_lock(&vml_lock);
	for_each_possible_cpu(cpu) {
		if (vml_cpu_kobjs[cpu] == kobj) {
			len = vml_format_cpu(buf, PAGE_SIZE, cpu);
			break;
		}
	}
	mutex_unlock(&vml_lock);
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
}

int vml_sysfs_init(void)
{
	char name[16];
	unsigned int cpu;
	int err;

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
