// SPDX-License-Identifier: GPL-2.0
/*
 * Deliberately broken driver for the rig's own tests: prints a load line in
 * the vmlaunch format, then, with interrupts off, loads an empty IDT (limit 0)
 * and executes ud2 (BUG). The #UD cannot be delivered, nor the #GP that
 * follows, nor the #DF: the CPU triple-faults and shuts down. That is what a
 * VMX driver with a broken host state looks like at its first VM exit.
 * Bochs (reset_on_triple_fault=0) stops with "3rd (..) exception with no
 * resolution". Expected verdict: FAILED "guest triple-faulted" (the driver
 * was running), not an infrastructure error.
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/irqflags.h>
#include <asm/desc.h>

static int __init vml_triplefault_init(void)
{
	struct desc_ptr empty = { .size = 0, .address = 0 };

	pr_info("cpu=- load info version=1 break=none variant=triplefault -- deliberately broken test driver: triple fault now\n");
	local_irq_disable();
	load_idt(&empty);
	BUG();
	return 0;
}
module_init(vml_triplefault_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test driver: prints a vmlaunch load line, then triple-faults the CPU");
