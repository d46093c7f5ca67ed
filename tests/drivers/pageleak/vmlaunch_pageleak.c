// SPDX-License-Identifier: GPL-2.0
/*
 * Fixture for the rig's allocation witness (docs/contract.md section 2,
 * RIG-ALLOC): init allocates three pages with alloc_pages() (from a helper
 * in the module's core text) and 4096 bytes with kmalloc() (straight from
 * its __init function, whose code is gone by the time anyone reads the
 * trace), prints a load line in the vmlaunch format; exit hands all four
 * back unless leak=1, and says `freed ok pages=3` either way.
 * Expected witness: allocated=4 freed=4 held=0 (leak=0), held=4 (leak=1).
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/slab.h>

#define NPAGES 3

static bool leak;
module_param(leak, bool, 0444);
MODULE_PARM_DESC(leak, "keep the allocations at rmmod (and still say freed ok)");

static struct page *pages[NPAGES];
static void *buf;

static noinline int pageleak_alloc_pages(void)
{
	int i;

	for (i = 0; i < NPAGES; i++) {
		pages[i] = alloc_pages(GFP_KERNEL | __GFP_ZERO, 0);
		if (!pages[i])
			return -ENOMEM;
	}
	return 0;
}

static void pageleak_free(void)
{
	int i;

	for (i = 0; i < NPAGES; i++) {
		if (pages[i])
			__free_page(pages[i]);
		pages[i] = NULL;
	}
	kfree(buf);
	buf = NULL;
}

static int __init pageleak_init(void)
{
	int err;

	pr_info("cpu=- load info version=1 break=none variant=pageleak -- test driver: %d pages and a kmalloc, %s at rmmod\n",
		NPAGES, leak ? "kept" : "handed back");
	buf = kmalloc(4096, GFP_KERNEL);
	err = buf ? pageleak_alloc_pages() : -ENOMEM;
	if (err) {
		pageleak_free();
		return err;
	}
	pr_info("cpu=- alloc ok pages=%d\n", NPAGES);
	return 0;
}

static void __exit pageleak_exit(void)
{
	if (!leak)
		pageleak_free();
	pr_info("cpu=- freed ok pages=%d\n", NPAGES);
	pr_info("cpu=- unload ok\n");
}

module_init(pageleak_init);
module_exit(pageleak_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test fixture: allocates pages and a kmalloc, hands them back at rmmod unless leak=1");
