// SPDX-License-Identifier: GPL-2.0
/*
 * Fixture for the rig's own tests: a chatty module.  Loaded before the
 * driver (rig run --preload tests/drivers/flood) and left loaded, it prints
 * kernel lines as fast as a noisy driver would while the test runs: whole
 * lines, and lines split in two printk calls with a sleep between (other
 * lines, the driver's among them, land between the halves).  It proves
 * that no kernel line can change a verdict: the rig's protocol has its own
 * channel, and the driver's lines are read whole from the kernel log.
 * It arranges no refusal of the driver (no ARRANGES file).
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/kthread.h>
#include <linux/delay.h>

static unsigned int period_ms = 20;
module_param(period_ms, uint, 0444);
MODULE_PARM_DESC(period_ms, "pause between bursts (ms)");

static struct task_struct *flood_task;

static int flood_fn(void *unused)
{
	unsigned int n = 0;

	while (!kthread_should_stop()) {
		pr_info("rigflood: noise line %u, whole\n", n);
		pr_info("rigflood: noise line %u, split: first half ", n);
		msleep(1);
		pr_cont("and second half\n");
		n++;
		msleep_interruptible(period_ms);
	}
	return 0;
}

static int __init rigflood_init(void)
{
	flood_task = kthread_run(flood_fn, NULL, "rigflood");
	if (IS_ERR(flood_task))
		return PTR_ERR(flood_task);
	pr_info("rigflood: flooding the console every %u ms\n", period_ms);
	return 0;
}

static void __exit rigflood_exit(void)
{
	kthread_stop(flood_task);
}

module_init(rigflood_init);
module_exit(rigflood_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test fixture: floods the kernel console with whole and split lines");
