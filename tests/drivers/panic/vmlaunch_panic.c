// SPDX-License-Identifier: GPL-2.0
/*
 * Deliberately broken driver for the rig's own tests: prints a load line
 * in the vmlaunch format, then panics the guest.  Expected verdict: the
 * guest died (RIG-BEGIN without RIG-END, "Kernel panic" on the console).
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>

static int __init vml_panic_init(void)
{
	pr_info("cpu=- load info version=1 break=none variant=panic -- deliberately broken test driver: panics now\n");
	panic("vmlaunch_panic: deliberate panic (rig test driver)");
	return 0;
}
module_init(vml_panic_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test driver: prints a vmlaunch load line, then panics");
