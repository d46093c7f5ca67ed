// SPDX-License-Identifier: GPL-2.0
/*
 * The module of tests/drivers/escape: trivial on purpose. What matters is its build, which
 * attacks the build sandbox (Kbuild, attempts.sh, esc.c) and must still produce this module.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>

static int __init rig_escape_init(void)
{
	pr_info("rig_escape: loaded (a build-sandbox fixture; it does nothing)\n");
	return 0;
}
module_init(rig_escape_init);

static void __exit rig_escape_exit(void)
{
}
module_exit(rig_escape_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig fixture: its build attacks the build sandbox; the module does nothing");
