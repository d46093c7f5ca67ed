// SPDX-License-Identifier: GPL-2.0
/*
 * Fixture for the rig's own tests: a guest that hangs right after the
 * driver's teardown, the way a teardown that wedges the CPU would look.
 * Loaded before the driver and left loaded, it watches for the module
 * "vmlaunch" going away after it was live (rmmod; a load that failed does
 * not count) and, moments later, stops the CPU: interrupts off, spinning
 * forever.  rmmod itself returns
 * and the driver's teardown lines are all there; the guest never prints
 * RIG-END.  The rig must fail `teardown` ("guest hung after rmmod").
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/string.h>
#include <linux/workqueue.h>
#include <linux/irqflags.h>

static void wedge(struct work_struct *unused)
{
	/* pr_err: above the console log level the agent leaves after its runs */
	pr_err("righangafter: vmlaunch is gone: stopping this CPU now\n");
	local_irq_disable();
	for (;;)
		cpu_relax();
}
static DECLARE_DELAYED_WORK(wedge_work, wedge);

static bool was_live;

static int watch(struct notifier_block *nb, unsigned long state, void *data)
{
	struct module *mod = data;

	if (strcmp(mod->name, "vmlaunch"))
		return NOTIFY_OK;
	if (state == MODULE_STATE_LIVE)
		was_live = true;
	else if (state == MODULE_STATE_GOING && was_live)
		schedule_delayed_work(&wedge_work, msecs_to_jiffies(50));
	return NOTIFY_OK;
}
static struct notifier_block watcher = { .notifier_call = watch };

static int __init righangafter_init(void)
{
	return register_module_notifier(&watcher);
}

static void __exit righangafter_exit(void)
{
	unregister_module_notifier(&watcher);
	cancel_delayed_work_sync(&wedge_work);
}

module_init(righangafter_init);
module_exit(righangafter_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test fixture: hangs the guest right after vmlaunch is unloaded");
