// SPDX-License-Identifier: GPL-2.0
/*
 * vmlaunch.ko: launch a guest that mirrors the host on every online CPU,
 * take its VMCALL exit, report each step on the kernel log.
 *
 * Module init/exit, parameters, CPU hotplug and reboot notifier.
 * See README.md for the design and the exact dmesg format.
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/cpu.h>
#include <linux/cpuhotplug.h>
#include <linux/percpu.h>
#include <linux/reboot.h>
#include <linux/notifier.h>
#include <linux/string.h>
#include <linux/mutex.h>

#include "vmlaunch.h"
#include "compat.h"

static char break_field[32] = "none";
module_param_string(break_field, break_field, sizeof(break_field), 0444);
MODULE_PARM_DESC(break_field,
		 "Deliberately break one VMCS field: none (default), host_addr_space_size (VMfailValid, error 8), guest_rflags_bit1 (VM-entry failure, exit reason 0x80000021)");

unsigned int vml_roundtrips;
module_param_named(roundtrips, vml_roundtrips, uint, 0444);
MODULE_PARM_DESC(roundtrips,
		 "After the first VMCALL exit, VMRESUME the guest N more times (0..10000) and report min/median cycles per round trip");

enum vml_break vml_break_field = VML_BREAK_NONE;

DEFINE_MUTEX(vml_lock);		/* per-CPU records, launches, shutdown flag */
bool vml_shutting_down;

static DEFINE_PER_CPU(struct vml_cpu, vml_cpus);
static bool vml_in_init;	/* cpuhp_setup_state() running */
static bool vml_unloading;	/* cpuhp_remove_state() running */
static unsigned int vml_pages_freed;
static int vml_hp_state = -1;

static const char *const break_names[] = {
	[VML_BREAK_NONE] = "none",
	[VML_BREAK_HOST_ADDR_SPACE_SIZE] = "host_addr_space_size",
	[VML_BREAK_GUEST_RFLAGS_BIT1] = "guest_rflags_bit1",
};

const char *vml_break_name(enum vml_break b)
{
	return b < ARRAY_SIZE(break_names) ? break_names[b] : "none";
}

struct vml_cpu *vml_cpu_state(unsigned int cpu)
{
	return per_cpu_ptr(&vml_cpus, cpu);
}

/* cpuhp "online" callback: runs on @cpu, in its hotplug thread. */
static int vml_cpu_online(unsigned int cpu)
{
	struct vml_cpu *c = vml_cpu_state(cpu);
	unsigned int n;
	int err;

	mutex_lock(&vml_lock);
	vml_cpu_free(c);		/* nothing left normally; be sure */
	memset(c, 0, sizeof(*c));

	if (vml_shutting_down) {
		c->attempted = true;
		c->stage = VML_ST_CHECK;
		c->result = VML_RES_DECLINED;
		c->err = VML_E_SHUTDOWN;
		c->why = "shutting_down";
		err = c->err;
	} else {
		err = vml_cpu_run(cpu, c);
	}
	vml_cpu_report(cpu, c);

	if (err) {
		/* A failed or declined CPU keeps nothing. */
		n = vml_cpu_free(c);
		vml_pages_freed += n;
		if (!vml_in_init) {
			pr_info("cpu=%u freed ok pages=%u -- CPU %u came online but did not launch (errno=%d); freed its pages\n",
				cpu, n, cpu, err);
			/* Never keep a CPU from coming online. */
			err = 0;
		}
	}
	mutex_unlock(&vml_lock);
	return err;
}

/*
 * cpuhp "offline" callback: runs on @cpu at rmmod, at CPU hot-unplug, and
 * for the CPUs already done when a later CPU fails during init (rollback).
 * VMX was already left inside the launch window, so there is no VMXOFF to
 * execute: we verify CR4.VMXE and free the CPU's pages.
 */
static int vml_cpu_offline(unsigned int cpu)
{
	struct vml_cpu *c = vml_cpu_state(cpu);
	const char *at = vml_unloading ? "unload" : vml_in_init ? "rollback" : "hotplug";
	bool vmxe;
	unsigned int n;

	mutex_lock(&vml_lock);
	if (c->attempted)
		pr_info("cpu=%u status info stage=%s result=%s errno=%d reason=0x%x roundtrips=%u\n",
			cpu, vml_stage_name(c->stage), vml_result_name(c->result),
			c->err, c->exit_reason, c->roundtrips);

	vmxe = !!(vml_read_cr4() & X86_CR4_VMXE);
	if (vmxe)
		pr_info("cpu=%u vmxoff info cr4.vmxe=1 at=%s owner=other -- CR4.VMXE is set by another VMX user now, not by vmlaunch; left alone\n",
			cpu, at);
	else
		pr_info("cpu=%u vmxoff ok cr4.vmxe=0 at=%s -- VMX was left inside the launch window (vmxoff at load); nothing held\n",
			cpu, at);

	n = vml_cpu_free(c);
	vml_pages_freed += n;
	if (!vml_unloading && !vml_in_init)
		pr_info("cpu=%u freed ok pages=%u -- CPU %u going offline\n", cpu, n, cpu);
	mutex_unlock(&vml_lock);
	return 0;
}

/*
 * Reboot/halt/power-off.  VMX is only ever on inside a launch window, which
 * runs with IRQs off under vml_lock; taking the lock waits for a window in
 * progress to end, and the flag stops new ones.  No CPU can be left in VMX
 * operation afterwards, so there is nothing to VMXOFF on other CPUs.
 */
static int vml_reboot(struct notifier_block *nb, unsigned long code, void *unused)
{
	mutex_lock(&vml_lock);
	vml_shutting_down = true;
	mutex_unlock(&vml_lock);
	pr_info("cpu=- status info event=reboot -- launches blocked; no CPU holds VMX (vmxoff is done inside each launch window)\n");
	return NOTIFY_DONE;
}

static struct notifier_block vml_reboot_nb = {
	.notifier_call = vml_reboot,
};

/* Returns the errno; *param names the offending parameter. */
static int vml_parse_params(const char **param)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(break_names); i++) {
		if (sysfs_streq(break_field, break_names[i])) {
			vml_break_field = i;
			break;
		}
	}
	if (i == ARRAY_SIZE(break_names)) {
		*param = "break_field";
		return VML_E_PARAM;
	}
	if (vml_roundtrips > VML_MAX_ROUNDTRIPS) {
		*param = "roundtrips";
		return VML_E_PARAM;
	}
	return 0;
}

static int __init vml_init(void)
{
	const char *param = NULL;
	int ret;

	BUILD_BUG_ON(offsetof(struct vml_host_tables, gdt.limit) != VML_HT_GDT + VML_HT_DT_LIMIT);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, idt.limit) != VML_HT_IDT + VML_HT_DT_LIMIT);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, tmp_gdt.limit) != VML_HT_TMP_GDT + VML_HT_DT_LIMIT);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, cs) != VML_HT_CS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, ss) != VML_HT_SS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, ds) != VML_HT_DS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, es) != VML_HT_ES);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, fs) != VML_HT_FS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, gs) != VML_HT_GS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, tr) != VML_HT_TR);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, ldtr) != VML_HT_LDTR);
	BUILD_BUG_ON(sizeof(struct vml_host_tables) != VML_HT_SIZE);

	ret = vml_parse_params(&param);
	pr_info("cpu=- load info version=%d break=%s roundtrips=%u cr4_mode=%s cpus=%u -- vmlaunch loading\n",
		VML_FORMAT_VERSION,
		param && !strcmp(param, "break_field") ? "invalid" : vml_break_name(vml_break_field),
		vml_roundtrips, vml_cr4_mode(), num_online_cpus());
	if (ret) {
		pr_err("cpu=- load FAIL errno=%d param=%s -- FAIL: invalid value for %s (break_field: none|host_addr_space_size|guest_rflags_bit1; roundtrips: 0..%u)\n",
		       ret, param, param, VML_MAX_ROUNDTRIPS);
		goto out_freed;
	}

	ret = vml_sysfs_init();
	if (ret) {
		pr_err("cpu=- load FAIL errno=%d -- FAIL: cannot create /sys/kernel/vmlaunch\n", ret);
		goto out_freed;
	}
	register_reboot_notifier(&vml_reboot_nb);

	vml_in_init = true;
	ret = cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, "vmlaunch:online",
				vml_cpu_online, vml_cpu_offline);
	vml_in_init = false;
	if (ret < 0) {
		unregister_reboot_notifier(&vml_reboot_nb);
		vml_sysfs_exit();
		goto out_freed;
	}
	vml_hp_state = ret;
	return 0;

out_freed:
	pr_info("cpu=- freed ok pages=%u errno=%d -- load failed, freed %u pages, nothing left behind\n",
		vml_pages_freed, ret, vml_pages_freed);
	return ret;
}

static void __exit vml_exit(void)
{
	mutex_lock(&vml_lock);
	vml_unloading = true;
	vml_pages_freed = 0;	/* count what the unload itself frees */
	mutex_unlock(&vml_lock);
	cpuhp_remove_state(vml_hp_state);
	unregister_reboot_notifier(&vml_reboot_nb);
	vml_sysfs_exit();
	pr_info("cpu=- freed ok pages=%u -- freed %u pages\n", vml_pages_freed,
		vml_pages_freed);
	pr_info("cpu=- unload ok\n");
}

module_init(vml_init);
module_exit(vml_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Launch a host-mirroring VMX guest on each CPU, take its VMCALL exit and report every step");
MODULE_AUTHOR("vmlaunch project");
