// SPDX-License-Identifier: GPL-2.0
/*
 * Deliberately broken driver for the rig's own tests: prints a load line
 * in the vmlaunch format, then dereferences NULL in init.  The kernel oopses
 * (insmod is killed, the guest lives on unless panic_on_oops is set).
 * Expected verdict: oops ("BUG: kernel NULL pointer dereference" / "Oops:").
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>

/* volatile: the compiler must really perform the store. */
static int *volatile vml_null;

static int __init vml_oops_init(void)
{
	pr_info("cpu=- load info version=1 break=none variant=oops -- deliberately broken test driver: NULL dereference now\n");
	*vml_null = 1;
	return 0;
}
module_init(vml_oops_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test driver: prints a vmlaunch load line, then oopses on a NULL dereference");
