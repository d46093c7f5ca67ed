// SPDX-License-Identifier: GPL-2.0
/*
 * Deliberately broken driver for the rig's own tests: prints a load line
 * in the vmlaunch format, then never returns from init.  It sleeps in a
 * loop (TASK_IDLE: no load, no hung-task report, not woken by signals), so
 * the guest's insmod hangs while the kernel and the console stay alive.
 * Expected verdict: hang (RIG-BEGIN without RIG-END, no panic/oops).
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/sched.h>
#include <linux/jiffies.h>

static int __init vml_hang_init(void)
{
	pr_info("cpu=- load info version=1 break=none variant=hang -- deliberately broken test driver: init never returns\n");
	for (;;)
		schedule_timeout_idle(HZ);
	return 0;
}
module_init(vml_hang_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test driver: prints a vmlaunch load line, then hangs in init");
