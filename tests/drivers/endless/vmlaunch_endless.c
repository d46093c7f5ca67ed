// SPDX-License-Identifier: GPL-2.0
/*
 * Deliberately broken driver for the rig's own tests: prints a load line
 * in the vmlaunch format, then prints kernel lines without end from init
 * (a driver stuck in a printk loop).  With the console at loglevel 8 (the
 * agent's runs) every line goes out on the serial port, as fast as the
 * emulator takes it: given the time it would write gigabytes.  Expected
 * verdict: the rig stops the guest when a channel passes its cap, an
 * infrastructure error in bounded memory and time.
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/sched.h>

static int printing = 1;

static int __init vml_endless_init(void)
{
	unsigned long n = 0;

	pr_info("cpu=- load info version=1 break=none variant=endless -- deliberately broken test driver: prints without end\n");
	while (READ_ONCE(printing)) {
		pr_info("cpu=- endless info n=%lu -- 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n",
			n++);
		cond_resched();
	}
	return 0;
}
module_init(vml_endless_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test driver: prints a vmlaunch load line, then prints without end");
