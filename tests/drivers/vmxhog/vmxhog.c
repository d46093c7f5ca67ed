// SPDX-License-Identifier: GPL-2.0
/*
 * Test fixture, not a broken driver: it plays "another hypervisor". On load it
 * sets CR4.VMXE on every online CPU (what kvm_intel does before its VMXON),
 * through the kernel's CR4 helpers so the kernel's CR4 shadow stays true, and
 * keeps it set until it is unloaded.
 *
 * The rig preloads it (rig run --preload tests/drivers/vmxhog) to prove that
 * vmlaunch.ko then declines with why=vmx_busy (-EBUSY) and never touches VMX.
 */
#define pr_fmt(fmt) "vmxhog: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/smp.h>
#include <linux/atomic.h>
#include <asm/processor-flags.h>
#include <asm/tlbflush.h>

#ifdef VMXHOG_CR4_HELPERS
static atomic_t vmxhog_cpus = ATOMIC_INIT(0);

static void vmxhog_take(void *unused)
{
	cr4_set_bits(X86_CR4_VMXE);
	atomic_inc(&vmxhog_cpus);
}

static void vmxhog_give(void *unused)
{
	cr4_clear_bits(X86_CR4_VMXE);
}

static int __init vmxhog_init(void)
{
	on_each_cpu(vmxhog_take, NULL, 1);
	pr_info("CR4.VMXE set on %d CPU(s): VMX now looks owned by another hypervisor\n",
		atomic_read(&vmxhog_cpus));
	return 0;
}

static void __exit vmxhog_exit(void)
{
	on_each_cpu(vmxhog_give, NULL, 1);
	pr_info("CR4.VMXE cleared\n");
}
module_exit(vmxhog_exit);
#else
static int __init vmxhog_init(void)
{
	pr_err("this kernel exports no CR4 helpers to modules: the fixture cannot set CR4.VMXE\n");
	return -EOPNOTSUPP;
}
#endif
module_init(vmxhog_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rig test fixture: sets CR4.VMXE on every CPU, as another hypervisor would");
